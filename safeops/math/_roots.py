"""Placeholder: being written. Every function here raises NotImplementedError until then."""

def sqrt(x, name=None):
    raise NotImplementedError("sqrt is not written yet")


def norm(tensor, ord='euclidean', axis=None, keepdims=None, name=None):
    raise NotImplementedError("norm is not written yet")


def l2_normalize(x, axis=None, epsilon=1e-12, name=None, dim=None):
    raise NotImplementedError("l2_normalize is not written yet")


def divide_no_nan(x, y, name=None):
    raise NotImplementedError("divide_no_nan is not written yet")



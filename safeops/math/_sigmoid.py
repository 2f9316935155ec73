"""Placeholder: being written. Every function here raises NotImplementedError until then."""

def sigmoid(x, name=None):
    raise NotImplementedError("sigmoid is not written yet")


def log_sigmoid(x, name=None):
    raise NotImplementedError("log_sigmoid is not written yet")


def softplus(features, name=None):
    raise NotImplementedError("softplus is not written yet")


def softplus_inverse(x, name=None):
    raise NotImplementedError("softplus_inverse is not written yet")



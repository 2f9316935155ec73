"""Placeholder: being written. Every function here raises NotImplementedError until then."""

def reduce_logsumexp(input_tensor, axis=None, keepdims=False, name=None, *, weights=None, return_sign=False):
    raise NotImplementedError("reduce_logsumexp is not written yet")


def softmax(logits, axis=None, name=None):
    raise NotImplementedError("softmax is not written yet")


def log_softmax(logits, axis=None, name=None):
    raise NotImplementedError("log_softmax is not written yet")



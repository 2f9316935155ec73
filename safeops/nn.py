"""Placeholder: being written. Drop-in for tf.nn cross-entropies."""

from safeops.math import log_sigmoid, log_softmax, sigmoid, softmax  # noqa: F401


def softmax_cross_entropy_with_logits(labels, logits, axis=-1, name=None):
    raise NotImplementedError("softmax_cross_entropy_with_logits is not written yet")


def sparse_softmax_cross_entropy_with_logits(labels, logits, name=None):
    raise NotImplementedError("sparse_softmax_cross_entropy_with_logits is not written yet")


def sigmoid_cross_entropy_with_logits(labels=None, logits=None, name=None):
    raise NotImplementedError("sigmoid_cross_entropy_with_logits is not written yet")


def weighted_cross_entropy_with_logits(labels, logits, pos_weight, name=None):
    raise NotImplementedError("weighted_cross_entropy_with_logits is not written yet")

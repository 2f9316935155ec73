"""The textbook formulas people write, in plain TensorFlow ops.

These are what safeops replaces: each is the formula as it appears in a
paper or a first implementation, evaluated in the input's dtype with no
shift, clamp or rewrite, and TensorFlow's own gradients. The property tests
require safeops to agree with them wherever they are finite and accurate;
the accuracy benchmark shows where they are not. Signatures mirror
``safeops.math`` (the first arguments only).
"""

from __future__ import annotations

import tensorflow as tf


def log(x):
    return tf.math.log(x)


def log1p(x):
    return tf.math.log(1.0 + x)


def logit(x):
    return tf.math.log(x / (1.0 - x))


def xlogy(x, y):
    return x * tf.math.log(y)


def xlog1py(x, y):
    return x * tf.math.log(1.0 + y)


def log1mexp(x):
    return tf.math.log(1.0 - tf.exp(-tf.abs(x)))


def logaddexp(x1, x2):
    return tf.math.log(tf.exp(x1) + tf.exp(x2))


def sigmoid(x):
    return 1.0 / (1.0 + tf.exp(-x))


def log_sigmoid(x):
    return tf.math.log(sigmoid(x))


def softplus(features):
    return tf.math.log(1.0 + tf.exp(features))


def softplus_inverse(x):
    return tf.math.log(tf.exp(x) - 1.0)


def reduce_logsumexp(input_tensor, axis=None, keepdims=False, weights=None):
    terms = tf.exp(input_tensor) if weights is None else weights * tf.exp(input_tensor)
    return tf.math.log(tf.reduce_sum(terms, axis=axis, keepdims=keepdims))


def cumulative_logsumexp(x, axis=0, exclusive=False, reverse=False):
    return tf.math.log(tf.math.cumsum(tf.exp(x), axis=axis, exclusive=exclusive, reverse=reverse))


def softmax(logits, axis=-1):
    e = tf.exp(logits)
    return e / tf.reduce_sum(e, axis=axis, keepdims=True)


def log_softmax(logits, axis=-1):
    return tf.math.log(softmax(logits, axis=axis))


def sqrt(x):
    return tf.sqrt(x)


def rsqrt(x):
    return tf.math.rsqrt(x)


def norm(tensor, axis=None, keepdims=False):
    return tf.sqrt(tf.reduce_sum(tensor * tensor, axis=axis, keepdims=keepdims))


def l2_normalize(x, axis=None):
    return x / norm(x, axis=axis, keepdims=True)


def reduce_euclidean_norm(input_tensor, axis=None, keepdims=False):
    return tf.math.reduce_euclidean_norm(input_tensor, axis=axis, keepdims=keepdims)


def reduce_std(input_tensor, axis=None, keepdims=False):
    return tf.math.reduce_std(input_tensor, axis=axis, keepdims=keepdims)


def divide_no_nan(x, y):
    return x / y


def acos(x):
    return tf.math.acos(x)


def asin(x):
    return tf.math.asin(x)


def atanh(x):
    return 0.5 * tf.math.log((1.0 + x) / (1.0 - x))


def cumprod(x, axis=0, exclusive=False, reverse=False):
    return tf.math.cumprod(x, axis=axis, exclusive=exclusive, reverse=reverse)


def acosh(x):
    return tf.math.log(x + tf.math.sqrt(x * x - 1.0))


def _in_float32(fn, x):
    """TensorFlow's CPU kernel has no float16 or bfloat16 version: what people write then."""
    if x.dtype in (tf.float16, tf.bfloat16):
        return tf.cast(fn(tf.cast(x, tf.float32)), x.dtype)
    return fn(x)


def erfinv(x):
    return _in_float32(tf.math.erfinv, x)


def ndtri(x):
    return _in_float32(tf.math.ndtri, x)


def atan2(y, x):
    return tf.math.atan2(y, x)


def pow(x, y):  # noqa: A001 - tf.math.pow's name
    return tf.math.pow(x, y)

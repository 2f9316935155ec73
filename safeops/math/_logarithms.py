"""Logarithms with clamped domains: ``log``, ``log1p``, ``logit``, ``xlogy``,
``xlog1py``, ``log1mexp``, ``logaddexp``.

Each op that clamps its domain follows contract C4: at a clamped point the
value is the value at the clamp boundary and the gradient is the gradient at
the boundary: finite, nonzero, pointing back into the domain. The bounds come
from :mod:`safeops._dtypes`.
"""

from __future__ import annotations

import tensorflow as tf

from safeops import _dtypes, _validate
from safeops._gradient import custom_op


def log(x, name=None):
    r"""Natural logarithm with a clamped domain and a live gradient at 0.

    Formula: :math:`\log x`.

    Stable rewrite: :math:`\log(\max(x, t))` where :math:`t` is the smallest
    normal number of ``x.dtype`` (``finfo.tiny``), with the gradient
    :math:`1/\max(x, t)`. The naive ``tf.math.log`` returns ``-inf`` at 0
    (and NaN gradients downstream, from ``0 * inf``); the usual patch
    ``log(clip_by_value(x, eps, 1))`` has a gradient of exactly 0 below
    ``eps``, so an optimizer can never move ``x`` up again. Here every
    normal number is unchanged and the gradient never dies.

    Edges:
      * ``x`` in ``[0, tiny)``, subnormals and ``x < 0``: value ``log(tiny)``
        (-87.34 in float32 and bfloat16, -9.70 in float16, -708.40 in
        float64), gradient ``1/tiny`` (8.5e37, 16384, 4.5e307): finite,
        positive, pointing back into the domain. TensorFlow on CPU flushes
        subnormals to zero, so they are treated as 0.
      * ``+inf``: value ``+inf``, gradient 0. ``NaN``: NaN value and gradient.
      * Second derivative ``-1/x**2``, saturated at the dtype's largest
        finite value where it overflows; 0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.log([0.0, 1.0]).numpy()
    array([-87.33655,   0.     ], dtype=float32)
    """
    op = "safeops.math.log"
    with _validate.op_scope(op, name):
        x = _validate.float_tensor(x, op, "x")
        floor = _dtypes.tiny(x.dtype)
        y = _clamped_log(floor, x.dtype)(_dtypes.to_compute(x))
        return _dtypes.from_compute(y, x.dtype)


def _clamped_log(floor: float, dtype: tf.DType):
    """``log(max(x, floor))`` whose gradient below ``floor`` is ``1/floor``."""
    return custom_op(
        lambda x: tf.math.log(tf.maximum(x, floor)),
        lambda dy, y, x: (dy / tf.maximum(x, floor),),
        dtype,
    )


# Placeholders, being written: each raises NotImplementedError until then.
def log1p(x, name=None):
    raise NotImplementedError("log1p is not written yet")


def logit(x, name=None):
    raise NotImplementedError("logit is not written yet")


def xlogy(x, y, name=None):
    raise NotImplementedError("xlogy is not written yet")


def xlog1py(x, y, name=None):
    raise NotImplementedError("xlog1py is not written yet")


def log1mexp(x, name=None):
    raise NotImplementedError("log1mexp is not written yet")


def logaddexp(x1, x2, name=None):
    raise NotImplementedError("logaddexp is not written yet")

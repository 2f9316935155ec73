"""Log-sum-exp and the softmax family: ``reduce_logsumexp``, ``softmax``,
``log_softmax``.

All three shift by the slice maximum before exponentiating, so ``exp`` never
overflows, and sum the shifted exponentials without the maximum's own term so
that a slice dominated by one entry keeps its tiny remainder:

.. math::
   \\operatorname{lse}(x) = m + \\operatorname{log1p}\\Bigl(\\sum_{i \\ne k} e^{x_i - m}\\Bigr),
   \\qquad m = x_k = \\max_i x_i .

This is Algorithm 4.2 of Blanchard, Higham and Higham (2021), "Accurately
computing the log-sum-exp and softmax functions", IMA J. Numer. Anal. 41(4),
2311-2330: ``log(sum)`` of a sum that rounds to 1 loses every digit of
``lse(x) - m``; ``log1p`` of the remainder keeps them. A non-finite maximum
is replaced by 0 (as JAX's ``logsumexp`` does), so an all ``-inf`` slice sums
to 0 and gives ``-inf`` instead of ``-inf - (-inf) = NaN``.

The gradients are the softmax weights ``w * exp(x - lse)``, written with
differentiable ops from the saved output, so second derivatives work.
"""

from __future__ import annotations

import tensorflow as tf

from safeops import _dtypes, _validate
from safeops._gradient import custom_op

_INF = float("inf")


def reduce_logsumexp(input_tensor, axis=None, keepdims=False, name=None, *, weights=None, return_sign=False):
    r"""Log of the (weighted) sum of exponentials over ``axis``.

    Formula: :math:`\log \sum_i w_i e^{x_i}` over the reduced axes
    (:math:`w_i = 1` without ``weights``), as ``tf.math.reduce_logsumexp``
    and ``scipy.special.logsumexp(a, b=weights, return_sign=...)``.

    Stable rewrite: :math:`m + \operatorname{log1p}(\sum_i w_i e^{x_i - m} - 1)`
    with :math:`m` the slice maximum (over entries of nonzero weight), the
    terms equal to :math:`w_k e^0` at the maximum summed apart so the
    remainder is exact (Blanchard, Higham & Higham 2021, IMA J. Numer. Anal.,
    Algorithm 4.2). The naive ``log(reduce_sum(exp(x)))`` overflows for
    ``x > 88`` in float32 and gives ``log 0 = -inf`` for ``x < -104``; the
    usual max shift with ``log`` instead of ``log1p`` returns 0 for
    ``[0, -20]`` where the answer is ``2.06e-9``. The gradient is the softmax
    ``w * exp(x - lse)`` (the max shift is taken out of it).

    Edges:
      * all ``-inf`` slice (or all weights 0, or an empty slice): value
        ``-inf``, gradient 0 (TensorFlow's gradient is NaN there).
      * ``-inf`` entries: contribute nothing, gradient 0.
      * ``+inf`` entry: value ``+inf``; gradient 1 at each ``+inf`` entry
        (times its weight) and 0 elsewhere.
      * ``NaN`` anywhere in a slice: that slice's value and gradient are NaN.
      * ``weights``: broadcast against ``input_tensor``; a zero weight drops
        its entry (even a ``+inf`` or ``-inf`` one, but not a NaN one).
        Negative weights: without ``return_sign`` a negative sum gives NaN
        (as SciPy), a zero sum ``-inf`` with gradient 0; with
        ``return_sign=True`` the result is ``(log|sum|, sign(sum))``,
        ``sign`` in ``{-1, 0, 1}`` and ``log|0| = -inf``.
      * Second derivative: autodiff of the softmax gradient, finite for
        finite inputs.

    Args:
      input_tensor: A float tensor (float16, bfloat16, float32 or float64).
      axis: The axes to reduce: ``None`` (all), an int, or a list or tuple of
        ints; negative axes count from the end.
      keepdims: If true, keeps the reduced axes with length 1.
      name: Optional name scope.
      weights: Optional float tensor broadcastable against
        ``input_tensor`` (SciPy's ``b``). Keyword-only.
      return_sign: If true, returns ``(log|sum|, sign)``. Keyword-only.

    Returns:
      The reduced tensor, of the dtype of ``input_tensor``; with
      ``return_sign=True`` a pair of such tensors.

    Raises:
      TypeError: ``input_tensor`` or ``weights`` is not a float tensor.
      ValueError: ``axis`` is out of range, or the shapes do not broadcast.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.reduce_logsumexp([0.0, -20.0]).numpy()
    np.float32(2.0611537e-09)
    >>> tfm.reduce_logsumexp([-float("inf"), -float("inf")]).numpy()
    np.float32(-inf)
    >>> lse, sign = tfm.reduce_logsumexp([0.0, 0.0], weights=[1.0, -2.0], return_sign=True)
    >>> float(lse), float(sign)
    (0.0, -1.0)
    """
    op = "safeops.math.reduce_logsumexp"
    with _validate.op_scope(op, name):
        if weights is None:
            x = _validate.float_tensor(input_tensor, op, "input_tensor")
            w = None
        else:
            x, w = _validate.float_tensors(op, input_tensor=input_tensor, weights=weights)
            x, w = _broadcast_pair(op, x, w)
        _validate.axis_in_range(op, axis, x.shape.rank)
        dtype = x.dtype
        xc = _dtypes.to_compute(x)
        if w is None:
            y = _unweighted_logsumexp(axis, dtype)(xc)
            sign = _sign_of_sum(y) if return_sign else None
        else:
            wc = _dtypes.to_compute(w)
            packed = _weighted_logsumexp(axis, dtype, return_sign)(xc, wc)
            y, sign = (packed[0], packed[1]) if return_sign else (packed, None)
        if not keepdims:
            y = _drop_reduced(y, axis)
        y = _dtypes.from_compute(y, dtype)
        if not return_sign:
            return y
        sign = tf.stop_gradient(sign)
        if not keepdims:
            sign = _drop_reduced(sign, axis)
        return y, _dtypes.from_compute(sign, dtype)


def softmax(logits, axis=None, name=None):
    r"""Softmax with fully masked rows mapped to zeros, not NaN.

    Formula: :math:`y_i = e^{x_i} / \sum_j e^{x_j}` along ``axis``
    (``None`` means the last axis, as in ``tf.nn.softmax``).

    Stable rewrite: TensorFlow's fused softmax kernel (which shifts by the
    row maximum) applied to ``max(x, lowest)``, so a ``-inf`` entry becomes
    the most negative finite number and its exponential underflows to 0, and
    multiplied by 0 on rows whose maximum is ``-inf``. The naive
    ``exp(x) / sum(exp(x))`` overflows for ``x > 88`` (float32); TensorFlow's
    kernel returns NaN for a row that is entirely ``-inf`` (a fully masked
    row), and its gradient there is NaN. See Blanchard, Higham & Higham
    (2021), IMA J. Numer. Anal., for the shifted algorithm and its error
    bounds. The gradient ``y * (dy - sum(dy * y))`` is computed from the
    saved output, as TensorFlow's.

    Edges:
      * row entirely ``-inf`` (fully masked): zeros, gradient 0.
      * ``-inf`` entry in a partly masked row: 0, gradient 0.
      * ``+inf`` entry: the whole row is NaN (``inf / inf``), as in
        TensorFlow, and so is its gradient.
      * ``NaN`` in a row: the whole row and its gradient are NaN.
      * Second derivative: autodiff of the gradient, finite for finite
        inputs.

    Args:
      logits: A float tensor (float16, bfloat16, float32 or float64) of
        rank >= 1.
      axis: The int axis of the classes; ``None`` means -1.
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``logits``.

    Raises:
      TypeError: ``logits`` is not a float tensor.
      ValueError: ``logits`` is a scalar or ``axis`` is out of range.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.softmax([[0.0, -float("inf")], [-float("inf"), -float("inf")]]).numpy()
    array([[1., 0.],
           [0., 0.]], dtype=float32)
    """
    op = "safeops.math.softmax"
    with _validate.op_scope(op, name):
        x, axis = _class_axis(op, logits, axis)
        y = _masked_softmax(axis, x.dtype)(_dtypes.to_compute(x))
        return _dtypes.from_compute(y, x.dtype)


def log_softmax(logits, axis=None, name=None):
    r"""Log-softmax, accurate near 0, with fully masked rows mapped to ``-inf``.

    Formula: :math:`y_i = x_i - \log \sum_j e^{x_j}` along ``axis``
    (``None`` means the last axis, as in ``tf.nn.log_softmax``).

    Stable rewrite: :math:`y_i = (x_i - m) - \operatorname{log1p}(\sum_j
    e^{x_j - m} - 1)` with :math:`m` the row maximum and the maximum's own
    term summed apart (Blanchard, Higham & Higham 2021, IMA J. Numer. Anal.).
    The naive ``log(softmax(x))`` gives ``log 0 = -inf`` as soon as a
    probability underflows (``x_i - m < -104`` in float32); the kernel
    formula ``(x - m) - log(sum)`` returns exactly 0 for the top entry of a
    row like ``[0, -20]``, whose log-probability is ``-2.06e-9``. The
    gradient ``dy - exp(y) * sum(dy)`` is computed from the saved output.

    Edges:
      * row entirely ``-inf`` (fully masked): ``-inf`` everywhere, gradient 0
        (TensorFlow returns NaN).
      * ``-inf`` entry in a partly masked row: ``-inf``, gradient 0 (the
        output is the constant ``-inf`` for any finite change of the row).
      * ``+inf`` entry: the row is NaN, as in TensorFlow.
      * ``NaN`` in a row: the whole row and its gradient are NaN.
      * Second derivative: autodiff of the gradient, finite for finite
        inputs.

    Args:
      logits: A float tensor (float16, bfloat16, float32 or float64) of
        rank >= 1.
      axis: The int axis of the classes; ``None`` means -1.
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``logits``.

    Raises:
      TypeError: ``logits`` is not a float tensor.
      ValueError: ``logits`` is a scalar or ``axis`` is out of range.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.log_softmax([0.0, -20.0]).numpy()
    array([-2.0611537e-09, -2.0000000e+01], dtype=float32)
    """
    op = "safeops.math.log_softmax"
    with _validate.op_scope(op, name):
        x, axis = _class_axis(op, logits, axis)
        y = _masked_log_softmax(axis, x.dtype)(_dtypes.to_compute(x))
        return _dtypes.from_compute(y, x.dtype)


# ----------------------------------------------------------------------------
# Shared pieces.


def _broadcast_pair(op, x, w):
    """Broadcasts ``input_tensor`` and ``weights`` to one shape (gradients reduce back)."""
    _validate.broadcast_shape(op, "input_tensor", x, "weights", w)
    if x.shape.is_fully_defined() and w.shape.is_fully_defined() and x.shape == w.shape:
        return x, w
    shape = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(w))
    return tf.broadcast_to(x, shape), tf.broadcast_to(w, shape)


def _class_axis(op, logits, axis):
    x = _validate.float_tensor(logits, op, "logits")
    rank = x.shape.rank
    if rank == 0:
        raise ValueError(_validate.message(op, "logits", "a tensor of rank >= 1", "a scalar"))
    axis = -1 if axis is None else axis
    if not isinstance(axis, (int, tf.Tensor)) or isinstance(axis, bool):
        raise ValueError(_validate.message(op, "axis", "an int", repr(axis)))
    _validate.axis_in_range(op, axis, rank)
    return x, axis


def _drop_reduced(y, axis):
    """Removes the length-1 reduced axes of a ``keepdims=True`` result."""
    if axis is None:
        return tf.reshape(y, [])
    return tf.reduce_sum(y, axis=axis)


def _finite_or_zero(m):
    """The shift: the maximum where it is finite, else 0 (all ``-inf``, ``+inf``, NaN)."""
    return tf.where(tf.math.is_finite(m), m, tf.zeros_like(m))


def _log1p_or_minus_inf(t):
    """``log1p(t)`` with ``-inf`` and a zero (not NaN) gradient at ``t = -1``."""
    empty = tf.equal(t, -1.0)
    safe = tf.where(empty, tf.zeros_like(t), t)
    return tf.where(empty, tf.fill(tf.shape(t), tf.constant(-_INF, t.dtype)), tf.math.log1p(safe))


def _sum_minus_one(z, axis):
    """``sum(exp(z)) - 1`` along ``axis`` for ``z = x - max``, without rounding 1 + tiny.

    ``e - floor(e)`` is ``e`` for ``e < 1`` and 0 at the maximum (``e = 1``
    exactly), so the remainder is summed without the 1. When the sum is 2 or
    more, or 0 (all ``-inf``), ``sum - 1`` itself is accurate.
    """
    e = tf.exp(z)
    total = tf.reduce_sum(e, axis, keepdims=True)
    remainder = tf.reduce_sum(e - tf.floor(e), axis, keepdims=True)
    dominated = (total >= 1.0) & (total < 2.0)
    return tf.where(dominated, remainder, total - 1.0)


# ----------------------------------------------------------------------------
# reduce_logsumexp.


def _unweighted_logsumexp(axis, dtype):
    """``lse(x)`` with ``keepdims=True``; gradient ``exp(x - lse)``, 0 in an all ``-inf`` slice."""

    def forward(x):
        m = tf.stop_gradient(_finite_or_zero(tf.reduce_max(x, axis, keepdims=True)))
        return m + _log1p_or_minus_inf(_sum_minus_one(x - m, axis))

    def backward(dy, y, x):
        return (dy * _softmax_weights(x, y),)

    return custom_op(forward, backward, dtype)


def _softmax_weights(x, y):
    """``exp(x - y)`` with 0 where ``y = -inf`` and 1 at ``+inf`` entries of a ``+inf`` slice."""
    # y = -inf only for an all -inf slice: shift by +inf so every weight is 0.
    shift = tf.where(tf.equal(y, -_INF), tf.fill(tf.shape(y), tf.constant(_INF, y.dtype)), y)
    gap = x - shift
    gap = tf.where(tf.equal(x, shift), tf.zeros_like(gap), gap)  # +inf - (+inf) -> 0
    return tf.exp(gap)


def _weighted_logsumexp(axis, dtype, return_sign):
    """``log|sum w exp x|`` (and, packed on a new leading axis, its sign) with ``keepdims=True``."""

    def forward(x, w):
        live = tf.not_equal(w, 0.0) | tf.math.is_nan(x)
        x = tf.where(live, x, tf.fill(tf.shape(x), tf.constant(-_INF, x.dtype)))
        m = tf.stop_gradient(_finite_or_zero(tf.reduce_max(x, axis, keepdims=True)))
        z = x - m
        top = tf.equal(z, 0.0)
        terms = w * tf.exp(z)
        # sum - 1 = (sum of the weights at the maximum - 1) + the rest, exactly.
        top_weight = tf.reduce_sum(tf.where(top, w, tf.zeros_like(w)), axis, keepdims=True)
        rest = tf.reduce_sum(tf.where(top, tf.zeros_like(terms), terms), axis, keepdims=True)
        t = (top_weight - 1.0) + rest
        if not return_sign:
            return m + _log1p_or_minus_inf(t)
        total = top_weight + rest
        sign = tf.sign(total)
        # |sum| - 1 is t for a positive sum and -t - 2 for a negative one.
        magnitude = tf.where(total < 0.0, -t - 2.0, t)
        return tf.stack([m + _log1p_or_minus_inf(magnitude), tf.stop_gradient(sign)])

    def backward(dy, y, x, w):
        if return_sign:
            dy, y, sign = dy[0] * y[1], y[0], y[1]
        else:
            sign = None
        del sign  # folded into dy: d log|s| / dx = sign(s) * w * exp(x - log|s|)
        live = tf.not_equal(w, 0.0) | tf.math.is_nan(x)
        p = _softmax_weights(x, y)
        dx = tf.where(live, dy * w * p, tf.zeros_like(p))
        dw = dy * p
        return dx, dw

    return custom_op(forward, backward, dtype)


def _sign_of_sum(y):
    """Sign of ``sum(exp(x))`` from its log: 0 at ``-inf``, NaN at NaN, else 1."""
    one = tf.ones_like(y)
    return tf.where(tf.equal(y, -_INF), tf.zeros_like(y), tf.where(tf.math.is_nan(y), y, one))


# ----------------------------------------------------------------------------
# softmax and log_softmax.


def _masked_softmax(axis, dtype):
    """Fused softmax on ``max(x, lowest)``, zeroed on rows whose maximum is ``-inf``."""
    lowest = -_dtypes.max_value(_dtypes.compute_dtype(dtype))

    def forward(x):
        # Row factor: 0 for an all -inf row, NaN for a row with NaN or +inf
        # (m - m), else 1; the kernel alone ignores a NaN next to larger entries.
        m = tf.stop_gradient(tf.reduce_max(x, axis, keepdims=True))
        factor = tf.where(tf.equal(m, -_INF), tf.zeros_like(m), m - m + 1.0)
        return tf.nn.softmax(tf.maximum(x, lowest), axis=axis) * factor

    def backward(dy, y, x):
        return (y * (dy - tf.reduce_sum(dy * y, axis, keepdims=True)),)

    return custom_op(forward, backward, dtype)


def _masked_log_softmax(axis, dtype):
    """``(x - m) - log1p(sum - 1)``; gradient ``dy - exp(y) sum(dy)`` with ``-inf`` outputs frozen."""

    def forward(x):
        m = tf.stop_gradient(_finite_or_zero(tf.reduce_max(x, axis, keepdims=True)))
        z = x - m
        return z - _log_sum_or_zero(_sum_minus_one(z, axis))

    def backward(dy, y, x):
        dy = tf.where(y > -_INF, dy, tf.zeros_like(dy))  # NaN rows stay NaN via exp(y)
        return (dy - tf.exp(y) * tf.reduce_sum(dy, axis, keepdims=True),)

    return custom_op(forward, backward, dtype)


def _log_sum_or_zero(t):
    """``log1p(t)``, or 0 for an all ``-inf`` row (``t = -1``) so ``-inf - 0`` stays ``-inf``."""
    empty = tf.equal(t, -1.0)
    return tf.where(empty, tf.zeros_like(t), tf.math.log1p(tf.where(empty, tf.zeros_like(t), t)))

"""The standard deviation: ``reduce_std``.

``tf.math.reduce_std`` is ``sqrt(reduce_variance(x))``, and the square
root's derivative is infinite at 0: for a slice whose entries are all
equal (a constant feature, a padded row, a layer input that collapsed) the
gradient is ``inf * 0 = NaN`` at every entry, whatever comes after it. The
slice's spread is the Euclidean norm of the centred values over
``sqrt(n)``, and safeops writes its gradient as the norm's (:mod:`._norms`):
0 at a zero spread, a subgradient.

Its value is also where float32 loses digits: the mean is off by the
rounding of a long float32 sum, and for data whose mean is large against
its spread (raw, unstandardised features: timestamps, prices) that error
is of the order of the spread itself. safeops centres and sums in float64.
"""

from __future__ import annotations

import tensorflow as tf

from safeops import _dtypes, _ragged, _validate, _xla
from safeops._gradient import custom_op_with_residuals
from safeops.math import _roots
from safeops.math._norms import _power_of_two_scale


def reduce_std(input_tensor, axis=None, keepdims=False, name=None):
    r"""Standard deviation over ``axis`` (``tf.math.reduce_std``) with a zero, not NaN, gradient at no spread.

    Formula: :math:`\sigma = \sqrt{\tfrac1n \sum_i (x_i - \bar x)^2}`,
    :math:`\bar x = \tfrac1n \sum_i x_i`, over the ``n`` entries of each
    reduced slice (the population deviation, as TensorFlow's); derivative
    :math:`\partial \sigma / \partial x_i = (x_i - \bar x) / (n \sigma)`.

    Stable rewrite: TensorFlow takes ``sqrt`` of the variance, whose
    derivative :math:`1 / (2 \sqrt v)` is infinite at ``v = 0``; times the
    variance's gradient, 0 there, it gives NaN at every entry of a slice
    whose entries are all equal. Here the gradient is formed directly as
    :math:`(x_i - \bar x) / (n \sigma)`, and as 0 where :math:`\sigma = 0`
    (a subgradient, the Euclidean norm's choice at 0:
    :func:`safeops.math.norm`). The value is computed in float64 for inputs
    of float32 or narrower (the float32 mean of a long row, or of data whose
    mean is large against its spread, is off by as much as the spread: the
    deviation of ``1e4 + [0, 1, 2, 3]`` keeps every digit). The mean is
    taken twice, :math:`\bar x \leftarrow \bar x + \operatorname{mean}(x -
    \bar x)` (one refinement step), so that a slice of equal entries has
    exactly zero deviations, and float64 inputs are scaled by a power of two
    near their largest magnitude first (exact, as :func:`norm` does), so
    neither the sum nor the squares overflow or underflow: float32
    ``[1e30, -1e30, 3e38]`` gives ``1.41e38``, where TensorFlow's squares
    overflow to ``inf``.

    Edges:
      * A slice of equal entries: value 0, gradient 0 (TensorFlow's is
        NaN); second derivative finite (0).
      * ``NaN`` in a slice: NaN value, NaN gradient over that slice (C2).
      * ``+inf`` or ``-inf`` in a slice: NaN value and gradient over it
        (``inf - inf`` in the centring; TensorFlow's is NaN too).
      * An empty slice: NaN (the mean of no entries), as TensorFlow's.
      * ``axis=[]``: every slice has one entry, value 0 and gradient 0.
      * A ``tf.RaggedTensor`` takes TensorFlow's ragged reductions for the
        mean and the sum of squares (in float64 for float32 values) and
        :func:`safeops.math.sqrt`: same value, gradient 0 at no spread.

    Args:
      input_tensor: A float tensor (float16, bfloat16, float32 or float64)
        or a ``tf.RaggedTensor``.
      axis: The axes to reduce: ``None`` (all), an int, a list of ints or an
        integer tensor.
      keepdims: If true, the reduced axes are kept with length 1.
      name: Optional name scope.

    Returns:
      The reduced tensor, of the dtype of ``input_tensor``.

    Raises:
      TypeError: ``input_tensor`` is not a float tensor, or ``axis`` is not
        an int or a list of ints.
      ValueError: ``axis`` is out of range.

    Example:

    >>> import safeops.math as tfm
    >>> x = tf.constant([[2.0, 2.0, 2.0], [1.0, 2.0, 3.0]])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     s = tfm.reduce_std(x, axis=-1)
    >>> s.numpy()
    array([0.       , 0.8164966], dtype=float32)
    >>> tape.gradient(s, x).numpy()
    array([[ 0.       ,  0.       ,  0.       ],
           [-0.4082483,  0.       ,  0.4082483]], dtype=float32)
    """
    op = "safeops.math.reduce_std"
    if _ragged.any_ragged(input_tensor):
        return _ragged_std(op, input_tensor, axis, keepdims, name)
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(input_tensor, op, "input_tensor")
        _validate.axis_in_range(op, axis, x.shape.rank)
        dtype = x.dtype
        y = _deviation(axis, dtype)(_dtypes.to_compute(x))
        if not keepdims:  # a sum over the kept axes of length 1: exact, and any axis form works
            y = tf.reshape(y, []) if axis is None else tf.reduce_sum(y, axis)
        return scope.output(_dtypes.from_compute(y, dtype))


@_xla.per_axis
def _deviation(axis, dtype: tf.DType, xla: bool):
    """``reduce_std(x, axis, keepdims=True)``: float64 centring and sums; gradient ``(x - mean) / (n std)``.

    The residuals are the float64 mean of the (scaled) slice, the scale,
    the scaled deviation and the slice length: the backward recentres ``x``
    from them, in float64, so its centred values are those of the forward
    pass.
    """
    wide = _dtypes.sum_dtype(dtype)
    native = _dtypes.compute_dtype(dtype) == wide   # float64: no wider type, so scale instead

    def sums(v):
        return _xla.cascaded_sums(v, axis) if native else _xla.wide_sums(v, axis, wide)

    def forward(x):
        v = tf.cast(x, wide)
        # A float32 value's square and any sum of them fits float64; a float64 one's may not.
        if native:
            scale = _power_of_two_scale(tf.reduce_max(tf.abs(v), axis, keepdims=True))
        else:
            scale = tf.ones([], wide)
        v = v * scale
        n = tf.cast(tf.size(v), wide) / tf.cast(tf.size(tf.reduce_sum(v, axis, keepdims=True)), wide)
        mean = sums(v) / n
        mean = mean + sums(v - mean) / n   # equal entries: exactly their value (see reduce_std)
        spread, shift = _corrected_variance(sums, v - mean, n)
        positive = tf.not_equal(spread, 0.0)  # NaN counts as positive: NaN kept
        # sqrt only of nonzero variances, so no sqrt'(0) = inf when the second order recomputes this.
        scaled = tf.where(positive, tf.sqrt(tf.where(positive, spread, tf.ones_like(spread))),
                          tf.zeros_like(spread))
        return tf.cast(scaled / scale, x.dtype), (mean, shift, scale, scaled, n)

    def backward(dy, y, residuals, x):
        mean, shift, scale, scaled, n = residuals
        positive = tf.not_equal(scaled, 0.0)
        # (x - mean) / (n std) = (s x - s mean) / (n s std): every factor scaled, none near tiny or max.
        ratio = tf.cast(dy, wide) / (n * tf.where(positive, scaled, tf.ones_like(scaled)))
        ratio = tf.where(positive, ratio, tf.zeros_like(ratio))
        return (tf.cast(ratio * ((tf.cast(x, wide) * scale - mean) - shift), x.dtype),)

    # As inner XLA functions (with ``xla``) the float64 passes fuse into a few loops over x: as
    # TensorFlow kernels, one kernel and one float64 buffer each.
    return custom_op_with_residuals(_xla.compiled(forward, xla), _xla.compiled(backward, xla), dtype)


def _corrected_variance(sums, c, n):
    """``(sum((c - mean(c))**2) / n, mean(c))``, the first as ``(sum(c**2) - sum(c)**2 / n) / n``, at least 0.

    ``c`` is ``x`` minus its computed mean, which is off by a rounding: for
    two neighbouring floats the midpoint is not representable, and the plain
    ``sum(c**2) / n`` was ``sqrt(2)`` times the deviation. The second term
    removes the mean's error to first order (the corrected two-pass
    algorithm: Chan, Golub and LeVeque 1983, "Algorithms for computing the
    sample variance", The American Statistician 37(3)); rounding can leave
    it a hair below 0, hence the floor. The gradient's centred values take
    the same correction, ``c - mean(c)``: for those two neighbours ``c``
    is ``[-ulp, 0]`` and ``mean(c)`` the half ULP that makes them ``±ulp/2``.
    """
    first = sums(c)
    shift = first / n
    return tf.maximum((sums(tf.square(c)) - first * shift) / n, 0.0), shift


def _ragged_std(op, rt, axis, keepdims, name):
    """``reduce_std`` of a ``tf.RaggedTensor``: TensorFlow's ragged reductions, safeops' ``sqrt``."""
    with _validate.op_scope(op, name) as scope:
        values = _validate.float_tensor(rt.flat_values, op, "input_tensor")
        _validate.axis_in_range(op, axis, rt.shape.rank)
        wide = tf.float64 if values.dtype != tf.float64 else values.dtype
        x = rt.with_flat_values(tf.cast(values, wide))
        n = tf.reduce_sum(tf.ones_like(x), axis, keepdims=True)
        mean = tf.reduce_sum(x, axis, keepdims=True) / n
        mean = mean + tf.reduce_sum(x - mean, axis, keepdims=True) / n
        variance, _ = _corrected_variance(lambda v: tf.reduce_sum(v, axis, keepdims=True), x - mean, n)
        if not keepdims:
            variance = tf.reduce_sum(variance, axis) if axis is not None else tf.reshape(variance, [])
        return scope.output(tf.cast(_roots.sqrt(variance), values.dtype))

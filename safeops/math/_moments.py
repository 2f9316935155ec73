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

import functools

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _ragged, _validate, _xla
from safeops._gradient import custom_op, custom_op_with_residuals
from safeops.math._logsumexp import _drop_reduced
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
      * A ``tf.RaggedTensor``: over all axes or a uniform last axis as a
        dense tensor; over a ragged last axis (one value per row) by the
        same formulas with segment sums, gradient 0 at a row of equal
        entries. Other axes of a ragged tensor raise ``TypeError``.
      * A float64 sum over leading axes is a tree of short sums (within 2
        ULP) for an axis known while tracing; an axis tensor known only
        when the graph runs, or an input of unknown rank, takes
        TensorFlow's float64 reduction, whose rounding grows with the
        length (hundreds of ULP over 1e5 rows of 16).

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
        axis = _axes(op, axis, x.shape.rank)
        dtype = x.dtype
        y = _deviation(axis, dtype)(_dtypes.to_compute(x))
        if not keepdims:
            y = _drop_reduced(y, axis)
        return scope.output(_dtypes.from_compute(y, dtype))


@_xla.per_axis
def _deviation(axis, dtype: tf.DType, xla: bool):
    """``reduce_std(x, axis, keepdims=True)``: float64 centring and sums; gradient ``(x - mean) / (n std)``.

    The residuals are the float64 mean of the (scaled) slice, the mean of
    its centred values (:func:`_corrected_variance`'s shift), the scale,
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
    """``reduce_std`` of a ``tf.RaggedTensor`` over all axes or the last one.

    All axes: the dense op on the flat values. A uniform last axis (the
    flat values have it): the dense op over it, the row partition kept. A
    ragged last axis: :func:`_segment_deviation` over the innermost rows.
    Other axes, which TensorFlow also takes, are refused naming ``axis``.
    """
    with _validate.op_scope(op, name) as scope:
        values = _validate.float_tensor(rt.flat_values, op, "input_tensor")
        rank = rt.shape.rank
        axis = _axes(op, axis, rank)
        axes = None if isinstance(axis, (tf.Tensor, tf.Variable)) else (
            list(range(rank)) if axis is None else sorted({int(a) % rank for a in np.ravel(axis)}))
        if axes == list(range(rank)):
            y = reduce_std(values)
            return scope.output(tf.reshape(y, [1] * rank) if keepdims else y)
        if axes == [rank - 1] and values.shape.rank >= 2:   # a uniform last axis
            return scope.output(rt.with_flat_values(reduce_std(values, -1, keepdims)))
        if axes == [rank - 1]:
            splits = rt.nested_row_splits
            y = _segment_deviation(values, splits[-1])
            if keepdims:
                y = y[:, None]
            outer = splits[:-1]
            return scope.output(tf.RaggedTensor.from_nested_row_splits(y, outer) if outer else y)
        raise TypeError(_validate.message(
            op, "axis", "None, every axis, or the last axis for a RaggedTensor",
            f"{axis!r} for a ragged tensor of shape {rt.shape}"))


def _axes(op, axis, rank):
    """``axis`` checked and read as Python ints (:func:`safeops._validate.static_axis`).

    An integer tensor known only when the graph runs is returned as it is,
    as TensorFlow's reductions take it; one known while tracing
    (``tf.constant([0, 1])``) is read, so that float64 sums over leading
    axes take their static (tree) form.
    """
    runtime = isinstance(axis, (tf.Tensor, tf.Variable)) and axis.dtype.is_integer
    if runtime and tf.get_static_value(axis) is None:
        return axis
    return _validate.static_axis(op, axis, rank, many=True)


def _segment_deviation(values, splits):
    """The deviation of each row of ``values`` (1-d) cut at ``splits``, as :func:`_deviation` computes it.

    The same float64 centring, refined mean, corrected variance and, for
    float64 values, per-row power-of-two scale, with segment sums; the
    gradient by autodiff through them, the square root by :func:`_root`
    (derivative 0 at 0, so 0 at a row of equal entries, second derivative
    finite). An empty row gives NaN, as TensorFlow's.
    """
    wide = _dtypes.sum_dtype(values.dtype)
    ids = tf.ragged.row_splits_to_segment_ids(splits)
    rows = tf.shape(splits, out_type=ids.dtype)[0] - 1

    def sums(v):
        return tf.math.unsorted_segment_sum(v, ids, rows)

    v = tf.cast(values, wide)
    scale = tf.ones([rows], wide)
    if _dtypes.compute_dtype(values.dtype) == wide:
        scale = _power_of_two_scale(tf.math.unsorted_segment_max(tf.abs(v), ids, rows))
        v = v * tf.gather(scale, ids)
    n = tf.cast(splits[1:] - splits[:-1], wide)
    mean = sums(v) / n
    mean = mean + sums(v - tf.gather(mean, ids)) / n
    variance, _ = _corrected_variance(sums, v - tf.gather(mean, ids), n)
    return tf.cast(_root(values.dtype)(variance) / scale, values.dtype)


@functools.lru_cache(maxsize=None)
def _root(dtype: tf.DType):
    """``sqrt(v)`` for ``v >= 0``, derivative 0 at 0 (a subgradient): a finite second derivative there."""

    def forward(v):
        positive = tf.not_equal(v, 0.0)  # NaN counts as positive: NaN kept (C2)
        return tf.where(positive, tf.sqrt(tf.where(positive, v, tf.ones_like(v))), tf.zeros_like(v))

    def backward(dy, y, v):
        positive = tf.not_equal(y, 0.0)
        return (dy * tf.where(positive, 0.5 / tf.where(positive, y, tf.ones_like(y)), tf.zeros_like(y)),)

    return custom_op(forward, backward, dtype)

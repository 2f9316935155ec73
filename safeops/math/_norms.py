"""Norms: ``norm``, ``reduce_euclidean_norm`` and ``l2_normalize``.

Two failure modes recur here. At 0 the derivative of the square root is
infinite, so ``tf.norm`` of a zero vector has a NaN gradient (``inf * 0``);
safeops writes the gradients out so that it is 0 there (a subgradient)
and the second derivative finite. And the sum
of squares overflows for entries above ``sqrt(max)`` (1.8e19 in float32)
and underflows below ``sqrt(tiny)`` (1.1e-19); safeops scales by a power of
two near the largest magnitude first, as the reference BLAS ``nrm2`` does
(Anderson 2017, "Algorithm 978: Safe scaling in the Level 1 BLAS", ACM TOMS
44(1); Blue 1978, ACM TOMS 4(1)). A power-of-two scale is exact, so it adds
no rounding error.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _validate, _xla
from safeops._gradient import custom_op, custom_op_with_residuals
from safeops.math import _logsumexp

_VECTOR_ORDS = ("euclidean", 1, 2, np.inf)
_MATRIX_ORDS = ("euclidean", "fro", 1, 2, np.inf)


def norm(tensor, ord="euclidean", axis=None, keepdims=None, name=None):
    r"""Vector and matrix norms (``tf.norm``) without overflow or NaN gradients.

    Formula: vector p-norms :math:`(\sum_i |x_i|^p)^{1/p}` (``'euclidean'``
    and 2 give :math:`p = 2`, ``np.inf`` the largest magnitude); matrix
    norms over a 2-tuple ``axis``: Frobenius (``'euclidean'``, ``'fro'``),
    1 (largest column sum), ``np.inf`` (largest row sum) and 2 (largest
    singular value). ``axis=None`` treats the whole tensor as one vector.

    Stable rewrite: :math:`\lVert x \rVert_p = \lVert s x \rVert_p / s` with
    :math:`s` the power of two that brings the largest magnitude into
    ``[1, 2)`` (exact, as the reference BLAS ``nrm2`` scales; Anderson 2017,
    ACM TOMS 44(1), Algorithm 978), with gradients written out so that a
    zero vector's is 0 (below). For the 2-norm, when no plain sum of
    squares overflows, comes near underflow or is 0 (one reduction
    decides), :math:`s = 1` for the whole input: the same bits, without the
    max reduction. The naive ``sqrt(sum(x**2))`` returns ``inf`` for
    float32 entries of 1e20 and 0 for entries of 1e-20, and its gradient at
    a zero vector is ``0 * inf = NaN``.

    The gradient of the 2-norm is formed in the scaled domain,
    :math:`(s x) / \lVert s x \rVert`, both factors O(1): the autodiff
    form passes through ``1/s``, which for entries near the smallest normal
    number makes the product subnormal, flushed to 0.

    Edges:
      * zero vector / matrix: value 0, gradient 0 (a subgradient), second
        derivative finite.
      * ``x_i = 0`` in a p-norm with ``p < 1``: gradient 0 there (the exact
        one is infinite).
      * p-norms (``ord`` other than 1, 2, ``inf``) over the whole range:
        for ``p < 2`` float32 and the half dtypes are summed in float64 and
        rounded once (for ``p >= 2`` and ``ord=1`` float32 terms are
        accumulated in float64: 159 ULP at ``p = 3`` over 1e5 entries
        before; the Euclidean norm keeps TensorFlow's float32 sum, 12 ULP
        there),
        so entries far below the largest one still count (``(1e-40)**0.1``
        is ``1e-4``); the gradient :math:`\operatorname{sign}(x_i)
        (|x_i| / \lVert x \rVert)^{p-1}` is formed from that ratio, never
        through ``1/s``, and for ``p < 1`` saturates at the dtype's largest
        finite number where the exact one overflows. A value whose exact
        result overflows is ``inf``, with a finite gradient. In float64 the
        root multiplies the sum's rounding error by ``1/p``: for ``p < 1``
        expect a few ULP more than for the 2-norm (12 to 14 ULP measured at
        ``ord=0.1``, 37 over 1e5 entries).
      * ``±inf`` entry: value ``+inf``; the gradient at the infinite entries
        is NaN (``inf / inf``) for ``p`` other than 1 and ``inf``. ``ord=1``
        gives ``sign(x)`` there (as at every entry), ``ord=inf`` shares
        ``sign(x)`` among the entries of largest magnitude, the infinite
        ones.
      * ``NaN``: NaN value and gradient in the affected norms.
      * The matrix 2-norm uses ``tf.linalg.svd`` and its gradient as is
        (not guarded at repeated singular values).

    Args:
      tensor: A float tensor (float16, bfloat16, float32 or float64).
      ord: ``'euclidean'``, ``'fro'`` (matrices only), 1, 2, ``np.inf`` or
        any positive real number (vectors only).
      axis: ``None``, an int, or a 2-tuple of distinct ints (a matrix norm).
      keepdims: If true, keeps the reduced axes with length 1.
      name: Optional name scope.

    Returns:
      The norms, of the dtype of ``tensor``.

    Raises:
      TypeError: ``tensor`` is not a float tensor.
      ValueError: ``ord`` or ``axis`` is not supported, or ``axis`` is out of
        range.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.norm([3e30, 4e30]).numpy()
    np.float32(5e+30)
    """
    op = "safeops.math.norm"
    keepdims = bool(keepdims)
    is_matrix = isinstance(axis, (tuple, list)) and len(axis) == 2
    if is_matrix:
        axis = tuple(axis)
        if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axis) or axis[0] == axis[1]:
            raise ValueError(_validate.message(op, "axis", "None, an int or a tuple of 2 distinct ints", axis))
        if not _is_one_of(ord, _MATRIX_ORDS):
            raise ValueError(_validate.message(op, "ord", f"a matrix norm in {list(_MATRIX_ORDS)}", ord))
    else:
        if not (axis is None or (isinstance(axis, (int, np.integer)) and not isinstance(axis, bool))):
            raise ValueError(_validate.message(op, "axis", "None, an int or a tuple of 2 distinct ints", axis))
        if not _is_one_of(ord, _VECTOR_ORDS) and not _is_positive_real(ord):
            raise ValueError(_validate.message(op, "ord", "'euclidean', 1, 2, np.inf or a positive real", ord))
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(tensor, op, "tensor")
        rank = x.shape.rank
        if is_matrix and rank is not None:
            _validate.axis_in_range(op, list(axis), rank)
            if rank < 2 or (axis[0] - axis[1]) % rank == 0:
                raise ValueError(_validate.message(op, "axis", f"two distinct axes of a rank-{rank} tensor", axis))
        else:
            _validate.axis_in_range(op, axis, rank)
        dtype = x.dtype
        xc = _dtypes.to_compute(x)
        if is_matrix and _is_one_of(ord, (1, np.inf)):
            sum_axis, max_axis = (axis[0], axis[1]) if ord == 1 else (axis[1], axis[0])
            y = _nan_max(_accumulated(tf.abs(xc), sum_axis), max_axis)
        elif is_matrix and _is_one_of(ord, (2,)):
            y = _matrix_two_norm(xc, axis)
        elif _is_one_of(ord, (np.inf,)):
            y = _nan_max(tf.abs(xc), axis)
        elif _is_one_of(ord, (1,)):
            y = _accumulated(tf.abs(xc), axis)
        elif _is_one_of(ord, ("euclidean", "fro", 2)):
            y = _euclidean_norm(axis, dtype)(xc)
        else:
            y = _p_norm(axis, float(ord), dtype)(xc)
        if not keepdims:
            y = tf.reshape(y, []) if axis is None else tf.squeeze(y, list(axis) if is_matrix else [axis])
        return scope.output(_dtypes.from_compute(y, dtype))


def l2_normalize(x, axis=None, epsilon=1e-12, name=None, dim=None):
    r"""``x / ||x||`` along ``axis``, with TensorFlow's ``epsilon`` floor and no overflow.

    Formula: :math:`x / \sqrt{\max(\sum x^2, \epsilon)}` over ``axis``
    (``None``: all axes), as ``tf.math.l2_normalize``.

    Stable rewrite: with :math:`s` the power of two that brings
    :math:`\max |x|` into ``[1, 2)`` (exact scaling, as the BLAS ``nrm2``;
    Anderson 2017, ACM TOMS 44(1)),
    :math:`(s x) / \sqrt{\max(\sum (s x)^2, \epsilon s^2)}`,
    which is the same number, computed without squaring ``x``. When no
    row's plain sum of squares overflows or comes near underflow (one
    reduction decides), :math:`s = 1` is used for the whole input: the same
    bits as the scaled formula (powers of two scale through a correctly
    rounded root and division exactly), without the max reduction and the
    scaling pass. The naive formula
    gives 0 for float32 entries of 1e20 (the sum of squares is ``inf``) and
    returns ``x * rsqrt(epsilon)`` (far from unit length) for entries of
    1e-20, whose squares underflow.

    Edges:
      * ``sum(x**2) < epsilon``, the zero vector included: value
        ``x * rsqrt(epsilon)``, gradient ``rsqrt(epsilon)`` times the upstream
        gradient (TensorFlow's, finite: 1e6 for the default). ``epsilon`` is
        raised to at least the smallest normal number (so ``epsilon=0``
        never gives ``0 * inf``) and, in float16, to 9.3e-10 (so the
        gradient ``rsqrt(epsilon)`` stays finite: 32752); a gradient that
        the upstream gradient scales past the dtype's range (``3 * 32752``
        in float16) saturates at its largest finite value.
      * ``±inf`` entry: NaN (``inf / inf``), as in TensorFlow.
      * ``NaN``: NaN in the slice, value and gradient.
      * Gradient ``(dy - y sum(dy y)) / ||x||``, with the norm formed in the
        scaled domain; second derivatives are computed in float64 and
        saturate at the dtype's largest finite value (float16: 65504).

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      axis: ``None``, an int, or a list or tuple of ints.
      epsilon: Lower bound of the sum of squares (TensorFlow's argument): a
        number, a constant tensor, or (eager) a ``tf.Variable``. Inside a
        ``tf.function`` it must be known when the function is traced (it is
        a constant of the compiled op); TensorFlow also takes a runtime
        tensor there.
      name: Optional name scope.
      dim: Deprecated alias of ``axis``.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor, or ``epsilon`` is not a number
        or is a tensor known only when the graph runs.
      ValueError: ``axis`` is out of range, both ``axis`` and ``dim`` are
        given, or ``epsilon`` is negative, infinite or NaN.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.l2_normalize([3e30, 4e30]).numpy().round(6)
    array([0.6, 0.8], dtype=float32)
    """
    op = "safeops.math.l2_normalize"
    if dim is not None:
        if axis is not None:
            raise ValueError(_validate.message(op, "axis", "given once (axis or its alias dim)", "both"))
        axis = dim
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        _validate.axis_in_range(op, axis, x.shape.rank)
        dtype = x.dtype
        xc = _dtypes.to_compute(x)
        floor = max(_epsilon_value(op, epsilon), _dtypes.tiny(xc.dtype), _dtypes.rsqrt_floor(dtype))
        y = _unit_vector(axis, floor, dtype)(xc)
        return scope.output(_dtypes.from_compute(y, dtype))


def _epsilon_value(op: str, epsilon) -> float:
    """``epsilon`` as a Python float: a number, a tensor known while tracing, or (eager) a variable.

    The floor is a constant of the compiled op (one per value). Eager, a
    ``tf.Variable`` is read at each call. Inside a ``tf.function`` a tensor
    known only when the graph runs (an argument, a variable) is refused with
    a ``TypeError``: the value would be frozen at its first trace. A
    negative, infinite or NaN one is refused with a ``ValueError``. Both
    name the argument.
    """
    value = epsilon
    if isinstance(epsilon, tf.Variable) and tf.executing_eagerly():
        value = epsilon.numpy()
    elif isinstance(epsilon, (tf.Tensor, tf.Variable)):
        value = tf.get_static_value(epsilon)
        if value is None:
            raise TypeError(_validate.message(
                op, "epsilon", "a number (a constant of the compiled op), or a tensor whose value is known "
                "when the tf.function is traced", "a tensor known only when the graph runs"))
    try:
        value = float(np.asarray(value))
    except (TypeError, ValueError):
        raise TypeError(_validate.message(op, "epsilon", "a number", repr(epsilon))) from None
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(_validate.message(op, "epsilon", "a finite number >= 0", value))
    return value


def reduce_euclidean_norm(input_tensor, axis=None, keepdims=False, name=None):
    r"""``sqrt(sum x**2)`` over ``axis`` (``tf.math.reduce_euclidean_norm``), finite at 0 and near overflow.

    Formula: :math:`\lVert x \rVert_2 = \sqrt{\sum_i x_i^2}` over the
    reduced axes; derivative :math:`x_i / \lVert x \rVert_2`.

    Stable rewrite: the Euclidean :func:`norm` over any set of axes.
    TensorFlow's kernel differentiates as :math:`x / \lVert x \rVert`,
    which is ``0 / 0 = NaN`` at every entry of a zero slice (a padded row,
    an embedding that collapsed), and squares the entries as they are, so
    the sum overflows from ``1.8e19`` in float32 (``[3e30, 4e30]`` gives
    ``inf``). Here the gradient is written out, 0 at a zero slice (a
    subgradient), and the entries are scaled by a power of two near the
    largest magnitude when the plain sum of squares would overflow or
    underflow (exact, so the value keeps its bits where TensorFlow's is
    finite); float32 sums are accumulated in float32 blocks added in
    float64 (see :func:`norm`).

    Edges:
      * A zero slice: value 0, gradient 0, second derivative 0.
      * ``+inf`` or ``-inf`` in a slice: value ``+inf``, gradient NaN at
        the infinite entries (``inf / inf``) and 0 elsewhere, as ``norm``.
      * ``NaN`` in a slice: NaN value, NaN gradient over that slice (C2).
      * ``axis=[]``: ``|x|``, gradient ``sign(x)`` (0 at 0).

    Args:
      input_tensor: A float tensor (float16, bfloat16, float32 or float64).
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
    >>> x = tf.constant([[0.0, 0.0], [3.0, 4.0]])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     n = tfm.reduce_euclidean_norm(x, axis=-1)
    >>> n.numpy()
    array([0., 5.], dtype=float32)
    >>> tape.gradient(n, x).numpy()
    array([[0. , 0. ],
           [0.6, 0.8]], dtype=float32)
    >>> tfm.reduce_euclidean_norm([3e30, 4e30]).numpy()
    np.float32(5e+30)
    """
    op = "safeops.math.reduce_euclidean_norm"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(input_tensor, op, "input_tensor")
        _validate.axis_in_range(op, axis, x.shape.rank)
        dtype = x.dtype
        y = _euclidean_norm(axis, dtype)(_dtypes.to_compute(x))
        if not keepdims:
            y = _logsumexp._drop_reduced(y, axis)
        return scope.output(_dtypes.from_compute(y, dtype))


# ----------------------------------------------------------------------------
# Private helpers.


@_xla.per_axis(xla=False)
def _euclidean_norm(axis, dtype: tf.DType):
    """``sqrt(sum x**2)`` over ``axis`` (kept, length 1), scaled by a power of two.

    Value ``||s x|| / s``; gradient ``dy * (s x) / ||s x||``, formed in the
    scaled domain where both factors are O(1): the autodiff form
    ``(1/s) * sqrt'(...) * s x`` passes through ``1/s``, which is near
    ``tiny`` for entries near ``tiny`` and makes the product subnormal
    (flushed to 0). Zero vector: gradient 0, second derivative 0.
    """

    safe_min = _safe_sum_of_squares(dtype)

    def scaled_parts(x):
        scale = _power_of_two_scale(tf.reduce_max(tf.abs(x), axis, keepdims=True))
        sum_sq = _sum_of_squares(x * scale, axis)
        positive = tf.not_equal(sum_sq, 0.0)  # NaN counts as positive: NaN kept
        # sqrt only of nonzero sums, so no sqrt'(0) = inf at second order.
        scaled_norm = tf.where(positive, tf.sqrt(tf.where(positive, sum_sq, tf.ones_like(sum_sq))),
                               tf.zeros_like(sum_sq))
        return scaled_norm, scale

    def from_parts(scaled_norm, scale):
        # The value is formed after the tf.cond, whose branches return two
        # different tensors: the plain branch's (norm, norm) pair, one tensor
        # twice, came out of TensorFlow Lite's converter (TF 2.21) as
        # garbage (1e-45 for the norm of [3, 4]). Dividing by a scale of 1
        # is exact, so the plain value keeps its bits.
        return scaled_norm / scale, (scale, scaled_norm)

    def scaled_forward(x):
        return from_parts(*scaled_parts(x))

    def forward(x):
        # As in _unit_vector: with no plain sum of squares near overflow or
        # underflow, the scale 1 gives the same bits without the max
        # reduction. A zero sum takes the scaled path: it may be an
        # underflowed one ([1e-25, 1e-25] in float32).
        sum_sq = _sum_of_squares(x, axis)
        ordinary = tf.reduce_all((sum_sq >= safe_min) & (sum_sq <= _dtypes.max_value(sum_sq.dtype)))
        if _xla.in_xla():
            # No differentiable path into the tf.cond (see below): its
            # branches see a frozen x, and the plain root's derivative (for
            # forward-mode autodiff, which reads this formula) rides along
            # as plain - stop_gradient(plain), 0 in value. The scaled branch
            # then costs nothing where it is not taken.
            norm_ = tf.sqrt(sum_sq)
            frozen, still = tf.stop_gradient(x), tf.stop_gradient(norm_)
            y, residuals = from_parts(*tf.cond(ordinary, lambda: (still, tf.ones_like(still)),
                                               lambda: scaled_parts(frozen)))
            tangent = tf.where(tf.math.is_finite(norm_), norm_ - still, tf.zeros_like(norm_))
            return y + tangent, residuals

        def plain():
            return tf.sqrt(sum_sq), tf.ones_like(sum_sq)

        return from_parts(*tf.cond(ordinary, plain, lambda: scaled_parts(x)))

    # A tf.cond in a pass that is differentiated (this forward, under a tape
    # outside a jit_compile function; the second-order pass, which
    # recomputes the forward) fails to compile: the gradient is built
    # outside the XLA context and cond_v2 hands its intermediates over as
    # Optional ops, which XLA lacks. Under XLA the cond is cut from x
    # (above); the second-order pass takes the scaled path alone, valid
    # everywhere and, as scaling by a power of two is exact, the same bits
    # as the plain one where that applies.
    forward.python_function = scaled_forward

    def backward(dy, y, residuals, x):
        scale, scaled_norm = residuals
        positive = tf.not_equal(scaled_norm, 0.0)
        ratio = dy / tf.where(positive, scaled_norm, tf.ones_like(scaled_norm))
        # s x as MulNoNan (s is never 0): with a plain Mul, Grappler's
        # broadcast minimisation regroups ratio * (x * s) into (ratio * s) * x,
        # and ratio * s is subnormal (flushed to 0) for rows near the float32
        # maximum.
        return (tf.where(positive, ratio, tf.zeros_like(ratio)) * tf.math.multiply_no_nan(x, scale),)

    return custom_op_with_residuals(forward, backward, dtype)


@_xla.per_axis
def _unit_vector(axis, floor: float, dtype: tf.DType, xla: bool):
    """``x / sqrt(max(sum x**2, floor))`` over ``axis``, scaled by a power of two.

    Backward ``(dy - y sum(dy y)) * s / ||s x||`` (the projection of ``dy``
    orthogonal to ``y``, over the norm formed in the scaled domain), or
    ``dy * rsqrt(floor)`` where ``sum(x**2) < floor``. On :func:`custom_op`,
    so second derivatives run in float64 and saturate at the output dtype.

    The forward runs as plain TensorFlow ops in a graph: on the usual input
    it is TensorFlow's own five kernels plus a check on one value per row,
    and a launch of an inner XLA function costs more than those kernels at
    1e5 elements. Eager, where each op is a dispatch, it is the inner XLA
    function. The residuals the backward needs are computed outside the
    ``tf.cond``, so a forward-only graph prunes them. The backward is about
    ten kernels as plain ops (1.6x ``tf.math.l2_normalize``'s gradient): with
    ``xla`` it runs as an inner XLA function (:mod:`safeops._xla`), two fused
    loops.
    """
    inverse_root = 1.0 / float(np.sqrt(floor))
    safe_min = _safe_sum_of_squares(dtype)

    def forward(x):
        # The scaling only matters where the plain sum of squares overflows
        # or underflows. When no row's does (one reduction decides), the
        # scale is 1 and the plain formula is the same computation on an
        # exactly scaled input; this skips the max reduction and the scaling
        # pass.
        if _xla.in_xla():
            # The scaled path alone (XLA fuses its extra max pass): a tf.cond
            # here would be differentiated, see _euclidean_norm.
            return with_residuals(*scaled_forward(x))
        sum_sq = _sum_of_squares(x, axis)
        ordinary = tf.reduce_all((sum_sq >= safe_min) & (sum_sq <= _dtypes.max_value(sum_sq.dtype)))

        def plain():
            # TensorFlow's formula, x * rsqrt(max(sum, epsilon)), with a
            # correctly rounded root and division: 2 ULP on the accuracy
            # sample, against 3 for the product with the reciprocal, at the
            # same speed here; where sum(x**2) < epsilon too.
            return x / tf.sqrt(tf.maximum(sum_sq, floor)), tf.ones_like(sum_sq), sum_sq

        return with_residuals(*tf.cond(ordinary, plain, lambda: scaled_forward(x)))

    def scaled_forward(x):
        scale = _power_of_two_scale(tf.reduce_max(tf.abs(x), axis, keepdims=True))
        scaled_x = x * scale
        scaled_sum = _sum_of_squares(scaled_x, axis)
        # sum(x**2) < epsilon, tested in scaled form (floor * s**2 may be
        # inf for a tiny x: then the row is below); there TF's value.
        below = scaled_sum < floor * tf.square(scale)
        safe_sum = tf.where(below, tf.ones_like(scaled_sum), scaled_sum)
        floor_root = tf.sqrt(tf.constant(floor, x.dtype))  # the plain branch's root where below
        return tf.where(below, x / floor_root, scaled_x / tf.sqrt(safe_sum)), scale, scaled_sum

    def with_residuals(y, scale, scaled_sum):
        below = scaled_sum < floor * tf.square(scale)
        scaled_norm = tf.sqrt(tf.where(below, tf.ones_like(scaled_sum), scaled_sum))
        return y, (scale, scaled_norm, below)

    def backward(dy, y, residuals, x):
        scale, scaled_norm, below = residuals
        along, = _xla.last_axis_sums([dy * y], axis)
        projected = dy - y * along
        # Saturated at the output dtype's largest finite value (C1): in float16
        # rsqrt(epsilon) is 32752, and an upstream gradient of 3 makes it inf.
        grad = tf.where(below, dy * inverse_root, projected / scaled_norm * scale)
        return (_dtypes.saturate(grad, dtype),)

    compiled_forward = _xla.compiled(forward, xla)

    def forward_here(x):
        # Eager, one inner XLA call costs less than the dozen eager ops of the
        # plain forward (about 0.5 ms for a small tensor here).
        return compiled_forward(x) if xla and tf.executing_eagerly() else forward(x)

    # The second-order pass recomputes the forward as plain ops and
    # differentiates it: the scaled path alone (see _euclidean_norm).
    forward_here.python_function = lambda x: with_residuals(*scaled_forward(x))
    return custom_op_with_residuals(forward_here, _xla.compiled(backward, xla), dtype)


def _safe_sum_of_squares(dtype: tf.DType) -> float:
    """The smallest plain sum of squares that loses nothing to underflow: ``tiny / eps**2``.

    Each square flushed to 0 is below ``tiny``, and ``n * tiny <= eps * sum``
    for any row shorter than ``1 / eps``; above it the unscaled formula
    rounds exactly as the power-of-two scaled one.
    """
    compute = _dtypes.compute_dtype(dtype)
    return _dtypes.tiny(compute) / _dtypes.eps(compute) ** 2


def _power_of_two_scale(largest: tf.Tensor) -> tf.Tensor:
    """``2**-e`` with ``2**e <= largest < 2**(e+1)``: exact scaling into ``[1, 2)``.

    ``e`` is clipped so that the scale stays a normal number (``2**-126`` for
    float32 ``largest`` of ``2**127`` and above); 1 where ``largest`` is 0,
    subnormal, ``inf`` or NaN. ``e`` comes from a logarithm, which can land
    one off next to a power of two; the product with the scale, exact, then
    says which, and one step corrects it. No bit casts: ``tf.vectorized_map``
    has no rule for ``Bitcast`` (it fell back to a loop over the examples).
    """
    info = _dtypes.finfo(largest.dtype)
    top = int(info.maxexp) - 2          # 126 (float32), 1022 (float64): 2**±top is normal
    ordinary = (largest >= float(info.tiny)) & (largest <= float(info.max))   # NaN compares false
    safe = tf.where(ordinary, largest, tf.ones_like(largest))
    e = tf.clip_by_value(tf.floor(tf.math.log(safe) * (1.0 / math.log(2.0))), -top, top)
    t = safe * _exact_power_of_two(-e, top)
    e = tf.clip_by_value(tf.where(t >= 2.0, e + 1.0, tf.where(t < 1.0, e - 1.0, e)), -top, top)
    return tf.stop_gradient(tf.where(ordinary, _exact_power_of_two(-e, top), tf.ones_like(safe)))


def _exact_power_of_two(k: tf.Tensor, top: int) -> tf.Tensor:
    """``2**k`` for integer-valued ``k`` in ``[-top, top]``, exactly: ``2**(±2**i)`` for each bit of ``k``.

    Every factor and partial product is a power of two between ``2**-top``
    and ``2**top``, so no product rounds (``tf.pow`` promises no such thing).
    """
    magnitude = tf.abs(k)
    result = tf.ones_like(k)
    i = 0
    while (1 << i) <= top:
        bit = tf.math.floormod(tf.floor(magnitude / float(1 << i)), 2.0)
        up, down = tf.constant(2.0 ** (1 << i), k.dtype), tf.constant(2.0 ** -(1 << i), k.dtype)
        factor = tf.where(k < 0, down, up)
        result = result * tf.where(tf.equal(bit, 1.0), factor, tf.ones_like(result))
        i += 1
    return result


def _nan_max(v: tf.Tensor, axis) -> tf.Tensor:
    """``reduce_max(v, axis, keepdims=True)``, NaN where the slice holds a NaN (C2), value and gradient.

    XLA's maximum skips NaN (``jit_compile``: the inf-norm of ``[nan, 0, 1]``
    was 1), TensorFlow's kernel propagates it. So a NaN slice takes its
    value from ``sum(v * nan)`` instead (NaN), whose gradient is NaN at every
    entry of the slice, as TensorFlow's ``reduce_max`` gradient is there (no
    entry equals a NaN maximum); under XLA the gradient was NaN at the NaN
    entry only and 0 elsewhere.
    """
    top = tf.reduce_max(v, axis, keepdims=True)
    has_nan = tf.reduce_any(tf.math.is_nan(v), axis, keepdims=True)
    nan = tf.stop_gradient(_dtypes.nan_or_zero(has_nan, v.dtype))
    nan_slice = tf.reduce_sum(tf.where(has_nan, v, tf.zeros_like(v)) * nan, axis, keepdims=True)
    return tf.where(has_nan, nan_slice, top)


def _power(u: tf.Tensor, p: float) -> tf.Tensor:
    """``u**p`` for ``u >= 0``; ``p = 1/2`` and ``-1/2`` as square roots, 2 as a square.

    ``pow`` is a logarithm and an exponential (in float64 on this CPU,
    where the p-norms with ``p < 2`` compute, the two cost most of
    ``norm(x, ord=0.5)``); ``sqrt`` is one correctly rounded instruction,
    so these exponents are faster and more accurate as roots.
    """
    if p == 0.5:
        return tf.sqrt(u)
    if p == -0.5:
        return 1.0 / tf.sqrt(u)
    if p == 2.0:
        return tf.square(u)
    return tf.pow(u, p)


def _zero_safe_pow(u: tf.Tensor, p: float) -> tf.Tensor:
    """``u**p`` for ``u >= 0`` with value and gradient 0 at ``u = 0`` (no ``0**(p-1)``)."""
    zero = tf.equal(u, 0.0)
    return tf.where(zero, tf.zeros_like(u), _power(tf.where(zero, tf.ones_like(u), u), p))


def _accumulated(v: tf.Tensor, axis) -> tf.Tensor:
    """``reduce_sum(v, axis, keepdims=True)``, accumulated in float64 for float32 ``v`` and rounded once.

    A float32 sum's rounding grows with the row's length: the 1-norm of
    1e5 entries of 1.1 was 22 ULP off, the 3-norm 159 (the root divides the
    sum's error by 3; XLA's CPU reduction accumulates in a few float32
    partial sums). In float64 the error stays below half a float32 ULP for
    any row TensorFlow can hold, and the widening costs a cast, no
    transcendental (under XLA it is fused into the dot of
    :func:`safeops._xla.wide_sums`). A sum past float32's range is ``inf``
    either way.
    """
    if v.dtype != tf.float32:
        return _xla.cascaded_sums(v, axis)  # float64: a tree of short sums; other dtypes as they are
    return tf.cast(_xla.wide_sums(v, axis, _dtypes.sum_dtype(v.dtype)), v.dtype)


def _sum_of_squares(x: tf.Tensor, axis) -> tf.Tensor:
    """``reduce_sum(x**2, axis, keepdims=True)``: float64 squares and sum under XLA for float32 ``x``.

    Under XLA (an outer ``jit_compile``, the inner XLA functions) the sum
    is :func:`safeops._xla.wide_sums`, rounded once: XLA's float32
    reduction left the Euclidean norm of 1e7 entries of 1.1 1545 ULP off
    (3.8 at 1e5), and the dot it takes is faster than that reduction. In a
    graph or eagerly it is :func:`safeops._xla.blocked_sums`: TensorFlow's
    float32 kernel, as ``tf.norm``, over blocks short enough to keep its
    rounding within 2.6 ULP of the sum, the block sums in float64 (rows of
    at most 1024 entries, within C3 as they are, keep the one reduction).
    ``tf.norm``'s one float32 reduction left the norm of 1e5 equal entries
    12.2 ULP off, and over the leading axis of 1e5 rows of 16 2264; a
    float64 sum as TensorFlow kernels cost 1.24 to 1.67 times
    ``tf.norm``'s forward at 1e5 to 1e7 (hand-measured), the blocks 0.88
    to 1.01.
    """
    if x.dtype != tf.float32 or not _xla.in_xla():
        return _xla.blocked_sums(tf.square(x), axis)
    wide = _dtypes.sum_dtype(x.dtype)
    return tf.cast(_xla.wide_sums(tf.square(tf.cast(x, wide)), axis, wide), x.dtype)


@_xla.per_axis
def _p_norm(axis, p: float, dtype: tf.DType, xla: bool):
    """``(sum |x|**p)**(1/p)`` over ``axis`` (kept, length 1) for a real ``p`` other than 1, 2 and inf.

    Value ``(sum |s x|**p)**(1/p) / s`` with ``s`` the power of two that
    brings the largest magnitude into ``[1, 2)``. For ``p < 2`` a float32
    input is summed in float64 and rounded once: in float32 the scaled terms of
    entries below ``2**-126`` times the largest one underflow, and for
    ``p < 1`` such terms are not negligible (``(1e-40)**0.1`` is ``1e-4``);
    the root also multiplies the relative error of the sum by ``1/p``.
    There float64's range holds every term unscaled (``s = 1``, for ``p >= 1/4``). In
    float64, ``p < 1`` forms each term as ``|x|**p * s**p`` so that it
    underflows only when it is below the smallest normal number itself.
    ``p = 1/2`` takes square roots (:func:`_power`).

    Gradient ``dy * sign(x) * (|x| / ||x||)**(p - 1)``, formed from the
    ratio of the scaled quantities ``|s x| / ||s x||`` (in ``[0, 1]``, no
    overflow): autodiff of the value passes through ``1/s`` and
    ``|s x|**(p-1)``, whose product overflows for ``p < 1`` (``inf`` for
    ``[1e30, 1e20, 1]``, exact ``1e15``). Where the ratio underflows in
    float64 it is taken through logarithms. For ``p < 1`` the exact
    gradient at a small entry can exceed the dtype's range: it saturates at
    the largest finite number. Gradient 0 at ``x = 0`` (exact: 0 for
    ``p > 1``, infinite for ``p < 1``) and at the finite entries of a
    norm that is infinite because an entry is; NaN at the infinite entries.
    """

    def terms(a, scale):
        if a.dtype == tf.float64 and p < 1.0:
            return _zero_safe_pow(a, p) * _power(scale, p)
        return _zero_safe_pow(a * scale, p)

    def working_dtype(x):
        # For p >= 2 a float32 input stays float32 (float64 pow costs several
        # times more): a term or ratio that underflows there is below
        # 2**-126 relative, and so is its share of the value and its
        # gradient (ratio**(p - 1) <= ratio).
        return x.dtype if p >= 2.0 else tf.float64

    def magnitudes(x):
        # Subnormal entries are 0 here explicitly (C3), in both passes: inside
        # one XLA loop on this CPU a float32 subnormal widened to float64
        # compared above 0 while the arithmetic flushed it, so a zero norm
        # met "live" entries of ratio 0**(p - 1) = inf (NaN gradients).
        a = tf.abs(tf.cast(x, working_dtype(x)))
        return tf.where(a < _dtypes.tiny(x.dtype), tf.zeros_like(a), a)

    def forward(x):
        a = magnitudes(x)
        if a.dtype != x.dtype and p >= 0.25:
            # float32 in float64: |x|**p of a normal float32 lies in [2**-252,
            # 2**256] for 0 < p < 2, its sum over n < 2**31 entries below
            # 2**287, the norm below 2**(128 + 31 / p) <= 2**252 for p >=
            # 1/4, and the gradient's ratio |x| / norm above 2**-378: nothing
            # leaves float64's range, so no scaling, and no pass for the
            # largest magnitude. (For p below 1/4 the unscaled norm of a
            # long row could overflow float64 where the scaled one does not.)
            total = tf.reduce_sum(_zero_safe_pow(a, p), axis, keepdims=True)
            scale = tf.ones_like(total)
            scaled_norm = _zero_safe_pow(total, 1.0 / p)
        else:
            largest = tf.reduce_max(a, axis, keepdims=True)
            scale = _power_of_two_scale(largest)
            total = _accumulated(terms(a, scale), axis)
            scaled_norm = _zero_safe_pow(total, 1.0 / p)
            # Next to the largest float the root of the rounded sum can land
            # one ULP high and overflow after the scale-back: the norm of
            # [largest float] was inf for p = 2.5, 3, 7 and 12 in float32, 10
            # in float64. There the root is taken as m (total / t)**(1/p),
            # with m = |s x|_max and t its own term, computed as the sum
            # computed it: a row with one nonzero entry gives total / t = 1
            # exactly and the norm is m. Only there: its two more roundings
            # cost a fraction of an ULP elsewhere. A zero, infinite or NaN
            # row keeps the plain root.
            top_term = terms(largest, scale)
            rescue = ((top_term > 0.0) & tf.math.is_finite(total) & tf.math.is_finite(top_term)
                      & tf.math.is_inf(scaled_norm / scale))
            safe_term = tf.where(rescue, top_term, tf.ones_like(top_term))
            scaled_norm = tf.where(rescue, (largest * scale) * _power(total / safe_term, 1.0 / p),
                                   scaled_norm)
        return tf.cast(scaled_norm / scale, x.dtype), (scale, scaled_norm)

    def backward(dy, y, residuals, x):
        scale, scaled_norm = residuals
        work = scaled_norm.dtype
        a = magnitudes(x)
        # The entries with a finite, nonzero ratio; a NaN norm passes through (C2).
        live = (((a > 0.0) & tf.math.is_finite(a) & tf.math.is_finite(scaled_norm))
                | tf.math.is_nan(scaled_norm))
        safe_a = tf.where(live, a, tf.ones_like(a))
        empty = tf.equal(scaled_norm, 0.0) | tf.math.is_inf(scaled_norm)
        safe_norm = tf.where(empty, tf.ones_like(scaled_norm), scaled_norm)
        scaled = safe_a * scale
        if x.dtype == tf.float64:
            # A ratio |s x| / ||s x|| below the smallest normal number
            # (flushed to 0): from logarithms instead, within a few ULP of
            # log|x| (about 700) relative. Both branches see safe inputs, so neither
            # sends 0 * inf into the second derivative.
            underflow = scaled / safe_norm < _dtypes.tiny(tf.float64)
            ratio = _power(tf.where(underflow, tf.ones_like(scaled), scaled) / safe_norm, p - 1.0)
            logs = tf.math.log(safe_a) + tf.math.log(scale) - tf.math.log(safe_norm)
            ratio = tf.where(underflow, tf.exp((p - 1.0) * logs), ratio)
        else:
            ratio = _power(scaled / safe_norm, p - 1.0)
        g = tf.where(live, ratio, tf.zeros_like(ratio)) * tf.sign(tf.cast(x, work))
        g = tf.where(tf.math.is_inf(a), _dtypes.nan_or_zero(tf.math.is_inf(a), work), g)
        g = _dtypes.saturate(g, dtype) * tf.cast(dy, work)
        return (tf.cast(g, x.dtype),)

    # Inner XLA functions (xla): a dozen elementwise kernels each way, fused.
    return custom_op_with_residuals(_xla.compiled(forward, xla), _xla.compiled(backward, xla), dtype)


def _matrix_two_norm(x: tf.Tensor, axis) -> tf.Tensor:
    """Largest singular value over the two ``axis`` dims, with both kept (length 1).

    The two dims are moved last for ``svd``; the permutation is built in the
    graph when the rank is known only when it runs.
    """
    rank = x.shape.rank
    if rank is not None:
        rows, cols = (a % rank for a in axis)
        perm = [i for i in range(rank) if i not in (rows, cols)] + [rows, cols]
        inverse = np.argsort(perm)
    else:
        dims = tf.range(tf.rank(x))
        rows, cols = (tf.math.floormod(a, tf.rank(x)) for a in axis)
        rest = tf.boolean_mask(dims, tf.not_equal(dims, rows) & tf.not_equal(dims, cols))
        perm = tf.concat([rest, tf.stack([rows, cols])], 0)
        inverse = tf.math.invert_permutation(perm)
    moved = tf.transpose(x, perm)
    top = tf.reduce_max(tf.linalg.svd(moved, compute_uv=False), axis=-1)
    out = tf.reshape(top, tf.concat([tf.shape(top), [1, 1]], 0))
    return tf.transpose(out, inverse)


def _is_one_of(ord, choices) -> bool:
    for choice in choices:
        if isinstance(choice, str) or isinstance(ord, str):
            if ord == choice:
                return True
        elif not isinstance(ord, bool) and isinstance(ord, (int, float, np.number)) and float(ord) == float(choice):
            return True
    return False


def _is_positive_real(ord) -> bool:
    return (not isinstance(ord, (bool, str)) and isinstance(ord, (int, float, np.number))
            and np.isreal(ord) and np.isfinite(ord) and ord > 0)

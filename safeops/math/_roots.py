"""Square roots and safe division: ``sqrt``, ``rsqrt`` and ``divide_no_nan``.

At 0 the derivative of the square root is infinite, so ``tf.sqrt``'s
gradient is ``inf`` there and ``tf.norm`` of a zero vector has a NaN
gradient (``inf * 0``); safeops clamps the square root's gradient at the
smallest normal number (contract C4); ``rsqrt``, infinite at 0, takes its
value there. ``divide_no_nan``'s gradients stay
finite where its denominator is 0 or tiny. The norms, which build on the
same clamped root, live in :mod:`safeops.math._norms`.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _ragged, _validate, _xla
from safeops._gradient import custom_op, sum_to_shape

def sqrt(x, name=None):
    r"""Square root whose gradient at 0 is finite.

    Formula: :math:`\sqrt{x}`, gradient :math:`1 / (2\sqrt{x})`.

    Stable rewrite: value :math:`\sqrt{\max(x, 0)}`, gradient
    :math:`1 / (2\sqrt{\max(x, t)})` with :math:`t` the smallest normal
    number of ``x.dtype``. The naive ``tf.sqrt`` has gradient ``inf`` at 0,
    which becomes NaN as soon as it meets a zero upstream (``norm`` of a
    zero vector) and NaN value and gradient below 0, where a rounding error
    (``1 - cos**2 - sin**2``) often lands; clamping the *input* with
    ``tf.maximum(x, eps)`` instead kills the gradient below ``eps``.

    Edges:
      * ``x`` in ``[0, tiny)``: gradient ``1/(2 sqrt(tiny))`` with ``tiny``
        the smallest normal number of ``x.dtype``: 4.6e18 in float32 and
        bfloat16, 64 in float16, 3.4e153 in float64; finite, positive,
        pointing into the domain. Value: float32 and float64 subnormals are
        flushed to 0 by TensorFlow on CPU, and so are bfloat16 ones (they
        widen to float32 subnormals), so the value is 0. A float16
        subnormal is *not* flushed: it widens to a normal float32 number,
        and the value is its true square root (``sqrt(6e-8)`` = 2.4e-4 in
        float16), while the gradient is still the clamped 64.
      * ``x < 0``: clamped to 0: value 0, the same boundary gradient.
      * ``+inf``: value ``+inf``, gradient 0. ``NaN``: NaN value and gradient.
      * Second derivative ``-1/(4 x**1.5)``, saturated where it overflows;
        0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.sqrt([0.0, 4.0, -1.0]).numpy()
    array([0., 2., 0.], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(sqrt, x, name=name)
    if isinstance(x, tf.SparseTensor):  # as tf.math.sqrt: sqrt(0) = 0 keeps the sparsity
        return x.with_values(sqrt(x.values, name=name))
    op = "safeops.math.sqrt"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        y = _clamped_sqrt(_dtypes.tiny(x.dtype), x.dtype, _xla.enabled())(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def rsqrt(x, name=None):
    r"""Reciprocal square root that stays finite at 0, with a finite gradient there.

    Formula: :math:`1 / \sqrt{x}`, gradient :math:`-1 / (2 x^{3/2}) =
    -y^3 / 2`.

    Stable rewrite: :math:`1 / \sqrt{\max(x, t)}` with :math:`t` the
    smallest normal number of the dtype (the pole clamp of
    :func:`safeops.math.pow`, whose ``pow(x, -0.5)`` it equals), and the
    gradient :math:`-y^3 / 2` saturated at the largest finite value. The
    naive ``tf.math.rsqrt`` is ``inf`` at 0 (``x * rsqrt(sum(x**2))`` of a
    zero vector, a padding row through a hand-written RMS norm without an
    epsilon: ``0 * inf = NaN``), ``-inf`` at ``-0``, NaN below 0 where a
    rounding error lands, and its gradient ``-inf`` at 0.
    ``rsqrt(x + eps)`` moves every value; the clamp moves none above
    :math:`t`.

    Edges:
      * ``x`` in ``[-inf, tiny)`` (0, ``-0``, subnormal, negative): the
        value at ``tiny``, a power of two: 2**63 = 9.2e18 in float32 and
        bfloat16, 128 in float16, 2**511 = 6.7e153 in float64; a zero
        times it is 0. Gradient there: the boundary's,
        ``-1/(2 tiny**1.5)``, which overflows every dtype and saturates:
        -3.4e38 in float32 and bfloat16, -65504 in float16, -1.8e308 in
        float64 (a step against it raises ``x`` into the domain).
      * ``x`` below about ``2**-86`` (float32; ``2**-683`` in float64,
        ``2**-11.3`` in float16): the exact gradient overflows and
        saturates at the same value. Second derivative :math:`3 / (4 x^{5/2})`,
        saturated; 0 where the gradient saturates (a constant there) and
        at clamped points.
      * ``+inf``: value 0, gradient 0. NaN: NaN value and gradient.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.rsqrt([0.0, 4.0, -1.0]).numpy()
    array([9.223372e+18, 5.000000e-01, 9.223372e+18], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(rsqrt, x, name=name)
    op = "safeops.math.rsqrt"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        compute = _dtypes.compute_dtype(x.dtype)
        y = _clamped_rsqrt(_dtypes.tiny(x.dtype), compute, x.dtype, _xla.enabled())(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def divide_no_nan(x, y, name=None):
    r"""``x / y``, 0 where ``y == 0``, with finite gradients there.

    Formula: :math:`x / y` where :math:`y \ne 0`, else 0
    (``tf.math.divide_no_nan``).

    Stable rewrite: TensorFlow's fused ``DivNoNan`` kernel, which never
    forms ``0/0``, and one select that puts a NaN ``x`` back (the kernel
    returns 0 for it). The gradient is :math:`(dq \oslash y,\; -(dq \oslash y)
    \cdot q)` with :math:`\oslash` the same no-NaN division: it never
    forms ``y**2``, which underflows in float32 at ``y = 1e-20`` and turns
    ``x/y**2`` into ``inf``; where even ``-x/y**2`` overflows (``x = 1``,
    ``y = 1e-20``) it saturates at the dtype's largest finite value.
    TensorFlow's own gradient at ``y = 0`` is NaN or ``inf``.

    Edges:
      * ``y == 0``: value 0, gradient 0 with respect to both ``x`` and
        ``y``; also for ``x = ±inf``. A NaN ``x`` gives a NaN value even
        there (TensorFlow returns 0; safeops never hides a NaN) and a NaN
        gradient with respect to ``y`` (``-(dq/y) q`` with ``q`` NaN); the
        gradient with respect to ``x``, ``dq/y``, does not depend on ``x``
        and stays finite (0 at ``y == 0``).
      * Subnormal ``y``: float32 and float64 subnormals are flushed to 0 by
        TensorFlow on CPU, and bfloat16 ones are flushed explicitly (they
        widen to float32 subnormals, which XLA would otherwise divide by),
        so they act as ``y == 0``. A float16 subnormal widens to a normal
        float32 number and is divided by: ``divide_no_nan(1, 6e-8)`` is
        ``inf`` in float16 (1.7e7 exceeds 65504), with both gradients
        saturated at ``±65504``.
      * Gradients that overflow the dtype (``x/y**2`` at ``x = 1``,
        ``y = 1e-20`` in float32) saturate at its largest finite value.
      * ``y = ±inf``, finite ``x``: value 0, gradient 0 w.r.t. ``y``.
      * ``x = ±inf``, ``y`` nonzero: value ``±inf`` (NaN at ``y = ±inf``);
        the ``y``-gradient ``-x/y**2`` is NaN there (``inf / inf`` inside),
        not saturated.
      * ``NaN`` in ``y``: NaN value and gradients.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      y: A float tensor of the same dtype, broadcastable against ``x``.
      name: Optional name scope.

    Returns:
      A tensor of the broadcast shape and the dtype of ``x``.

    Raises:
      TypeError: ``x`` or ``y`` is not a float tensor, or their dtypes differ.
      ValueError: the shapes do not broadcast.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.divide_no_nan([1.0, 1.0], [0.0, 4.0]).numpy()
    array([0.  , 0.25], dtype=float32)
    """
    if _ragged.any_ragged(x, y):
        return _ragged.elementwise(divide_no_nan, x, y, name=name)
    op = "safeops.math.divide_no_nan"
    with _validate.op_scope(op, name) as scope:
        x, y = _validate.float_tensors(op, x=x, y=y)
        _validate.broadcast_shape(op, "x", x, "y", y)
        dtype = x.dtype
        q = _guarded_quotient(dtype, _xla.enabled())(_dtypes.to_compute(x), _dtypes.to_compute(y))
        return scope.output(_dtypes.from_compute(q, dtype))


# ----------------------------------------------------------------------------
# Private helpers.


@functools.lru_cache(maxsize=None)
def _clamped_sqrt(floor: float, dtype: tf.DType, xla: bool):
    """``sqrt(max(x, 0))`` whose gradient below ``floor`` is ``1/(2 sqrt(floor))``.

    The backward is TensorFlow's fused ``SqrtGrad`` (``dy * 0.5 / y``) of the
    output clamped at ``sqrt(floor)``: ``floor`` is a power of two with an
    even exponent (the smallest normal number), so its root is exact, and
    since the rounded square root is monotone, ``max(y, sqrt(floor))``
    equals ``sqrt(max(x, floor))`` bit for bit. Two kernels instead of four
    (``rsqrt`` of a clamped input, two products), and one transcendental
    under XLA, as TensorFlow's own gradient. A NaN ``y`` stays NaN
    (``tf.maximum`` propagates it).

    With ``xla`` each pass is one inner XLA function, except where its
    shapes are static and small, or in a small eager call
    (``graph_plain``, ``eager_plain``; see :func:`safeops._xla.compiled`):
    the two kernels of each pass were
    1.5 times TensorFlow's one in a ``tf.function`` at 1e7 elements
    (forward and forward+backward); fused, 1.05 and 1.3 (``python -m
    benchmarks --filter sqrt --modes graph``, this 2-core CPU).
    """
    root_floor = float(np.sqrt(floor))

    def forward(x):
        return tf.sqrt(tf.maximum(x, 0.0))

    def backward(dy, y, x):
        return (tf.raw_ops.SqrtGrad(y=tf.maximum(y, root_floor), dy=dy),)

    return custom_op(_xla.compiled(forward, xla, eager_plain=True, graph_plain=True),
                     _xla.compiled(backward, xla, eager_plain=True, graph_plain=True), dtype)


@functools.lru_cache(maxsize=None)
def _clamped_rsqrt(floor: float, compute: tf.DType, dtype: tf.DType, xla: bool):
    """``1 / sqrt(max(x, floor))`` whose gradient, ``-y**3 / 2``, saturates where it overflows.

    ``floor`` is the smallest normal number of ``dtype``, a power of two with
    an even exponent: its reciprocal root is exact, and ``tf.maximum``
    propagates NaN. The backward is ``-0.5 y**3 dy`` of ``c = min(y, cap)``:
    ``cap``, just below the cube root of twice the largest value of
    ``compute``, is where ``y**3 / 2`` would overflow (``y`` above 2**43 in
    float32), so no ``inf`` is formed for ``|dy| <= 1``
    (``enable_check_numerics`` would stop at one) and the gradient there is
    the largest value, less 2**-18 of it, before the saturation to
    ``dtype``. Under XLA the product is written out, halved first: XLA
    lowers ``RsqrtGrad`` as ``c**3 * (-0.5 dy)``, whose ``c**3`` overflows
    from the cube root of the largest value on (float64 ``x = 2.5e-206``:
    ``-inf`` where the gradient is ``-1.27e308``); as plain ops it is
    TensorFlow's fused ``RsqrtGrad`` kernel, which halves ``c`` first.

    With ``xla`` each pass is one inner XLA function (small static shapes
    and small eager calls run as plain ops, as :func:`_clamped_sqrt`'s): as
    plain kernels the forward was two passes over the tensor and the
    backward three where TensorFlow's are one each, 1.75 times
    ``tf.math.rsqrt`` forward+backward in a ``tf.function`` at 1e7
    elements; fused, 1.25 (``python -m benchmarks --filter rsqrt``, this
    2-core CPU).
    """
    # (2 max) ** (1/3) as a product: 2 max overflows float64.
    cap = 2.0 ** (1.0 / 3.0) * _dtypes.max_value(compute) ** (1.0 / 3.0) * (1.0 - 2.0 ** -20)

    def backward(dy, y, x):
        c = tf.minimum(y, cap)
        g = (-0.5 * c) * (c * c) * dy if _xla.in_xla() else tf.raw_ops.RsqrtGrad(y=c, dy=dy)
        return (_dtypes.saturate(g, dtype),)

    def forward(x):
        return tf.math.rsqrt(tf.maximum(x, floor))

    return custom_op(_xla.compiled(forward, xla, eager_plain=True, graph_plain=True),
                     _xla.compiled(backward, xla, eager_plain=True, graph_plain=True), dtype)


@functools.lru_cache(maxsize=None)
def _guarded_quotient(dtype: tf.DType, xla: bool):
    """``x / y`` with 0 (NaN for a NaN ``x``) where ``y == 0``; gradient 0 there.

    The NaN select after ``DivNoNan`` and the backward's divisions, products
    and saturating clips are separate kernels as plain ops (1.3-1.5x
    ``tf.math.divide_no_nan``); with ``xla`` each pass is one fused loop.
    Eager calls on small tensors run as plain ops (``eager_plain``).
    """

    # A bfloat16 subnormal widens to a float32 subnormal: the eager CPU kernel
    # flushes it, XLA does not (its reciprocal returns inf); flush it here, in
    # both passes, so the y-gradient still comes from ``backward`` (NaN kept).
    flush = dtype == tf.bfloat16

    def flushed(y):
        return _dtypes.flush_subnormals(y, dtype) if flush else y

    def forward(x, y):
        y = flushed(y)
        return tf.where(tf.math.is_nan(x), x, tf.math.divide_no_nan(x, y))

    def backward(dq, q, x, y):
        y = flushed(y)
        # -x/y**2 as (-dq/y) * q: overflows only where the exact gradient is
        # not representable (x = 1, y = 1e-20 in float32); it saturates (C1).
        # -dq/y is formed on its own, not as the negation of dx's dq/y: a
        # quotient shared by two outputs is written to memory by XLA (a
        # divide is too costly to duplicate), an extra pass over the tensor.
        # Where q = 0 (x = 0) the exact gradient is 0, but -dq/y can still
        # overflow (dq = 1e4, y = 1e-35) and inf * 0 is NaN: there the
        # quotient is saturated first (0, or NaN for a NaN dq). Still a
        # product with q: its derivative in x, -dq/y**2, is the mixed second
        # derivative (q * dq there gave dq/y: -1/30 for y = -30, exact -1/900).
        minus_dq_over_y = tf.math.divide_no_nan(-dq, y)
        dy = _dtypes.saturate(tf.where(tf.equal(q, 0.0), q * _dtypes.saturate(minus_dq_over_y, dtype),
                                       minus_dq_over_y * q), dtype)
        # dq/y itself overflows the output dtype for a float16 y that was
        # subnormal (6e-8 -> 1.7e7 > 65504) but is normal after widening.
        dx = _dtypes.saturate(tf.math.divide_no_nan(dq, y), dtype)
        return sum_to_shape(dx, x), sum_to_shape(dy, y)

    return custom_op(_xla.compiled(forward, xla, eager_plain=True),
                     _xla.compiled(backward, xla, eager_plain=True), dtype)

"""Inverse trigonometric and hyperbolic functions: ``acos``, ``asin``, ``atanh``, ``acosh``, ``atan2``.

Each is finite, with a finite derivative, at the points where
TensorFlow's is not, and those points are where real models land:

* ``acos``/``asin`` of a cosine similarity (angular and ArcFace-style
  margins, geodesic distances on the sphere). A similarity of two equal
  vectors is 1 only up to rounding: ``1.0000001`` gives NaN, and exactly 1
  gives the derivative ``-1/sqrt(1 - x**2) = -inf``, NaN after the next
  product with 0.
* ``atanh`` of a ``tanh``-squashed action (the log-likelihood correction of
  SAC-style policies), of a correlation (Fisher's z), of a norm in the
  Poincare ball: ``tanh`` rounds to exactly 1 in float32 from 9.01 on, and
  ``atanh(1)`` is ``inf`` with an ``inf`` derivative.
* ``acosh`` of a hyperbolic distance's argument: the distance between
  points ``u``, ``v`` of the Poincare ball is ``acosh(1 + 2|u - v|**2 /
  ((1 - |u|**2)(1 - |v|**2)))``, in the Lorentz model ``acosh(-<u, v>)``
  (Nickel and Kiela, NeurIPS 2017 and ICML 2018). A point's distance to
  itself (the diagonal of a pairwise matrix) has the argument exactly 1,
  where the derivative ``1/sqrt(x**2 - 1)`` is ``inf``, and in the Lorentz
  model the rounded argument lands below 1: NaN.
* ``atan2`` of a zero vector (the angle of a 2-d offset, a phase): its
  value is 0, but its gradient ``(x, -y) / (x**2 + y**2)`` is ``0/0``;
  and ``x**2 + y**2`` underflows to 0 in float32 for a vector of length
  1e-20, where the exact gradient (1e20) is finite.

Each op that clamps its domain follows contract C4, as ``sqrt`` does at 0
(:mod:`safeops.math._roots`): the value is taken at the input clamped to
the closed domain, where it is finite (``acos(1) = 0``), and the gradient
at the input clamped to the numbers of the dtype strictly inside nearest
to its ends (``±below_one``, ``1 - eps/2``; ``above_one``, ``1 + eps``, for
``acosh``), where the derivative is finite. Every bound comes from
:mod:`safeops._dtypes`.

Accuracy with TF 2.21 on CPU. TensorFlow's own float32 ``acos`` and
``asin`` kernels are up to 4.3 and 4.5 ULP off (every float32 in
``[0.5, 1]``, against float64), over C3's 4, while XLA's expansions of the
same functions are within 2.3 and 2.4 ULP. safeops keeps TensorFlow's
kernels outside ``jit_compile`` all the same: with XLA's expansions
TensorFlow's own ``acos`` forward+backward took 6.6 times as long at 1e7
entries (111.7 ms against 16.9 ms in a ``tf.function``, one run of
``python -m benchmarks --filter 'math.(acos|asin)$' --modes graph,xla
--passes fwdbwd``; ``asin`` 7.0), and a float64 evaluation is slower still;
the contract tests accept 4.5 ULP for these two ops in float32, one of
their two allowances wider than C3. XLA's float64
``atanh`` is up to 125 ULP off near ``-0.41`` (its ``log1p``, see
``safeops.math._logarithms._log1p``); float64 ``atanh`` is computed as
``log1p`` of a nonnegative argument instead (within 3 ULP against mpmath).
float32, 2 million random points per op in eager, graph and XLA modes
(``python -m benchmarks.sweep --gradients``): ``acos`` and ``asin`` within
4 ULP (2 under XLA), ``atanh`` 3, ``acosh`` 2 (4 under XLA: 4.0 at
1.0866), ``atan2`` 1; gradients within 2.2e-7 relative.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from safeops import _dtypes, _ragged, _validate, _xla
from safeops._gradient import custom_op, sum_to_shape


def acos(x, name=None):
    r"""Arc cosine with the domain clamped to [-1, 1] and a finite gradient at ±1.

    Formula: :math:`\arccos x`, gradient :math:`-1/\sqrt{1 - x^2}`.

    Stable rewrite: value :math:`\arccos(\operatorname{clip}(x, -1, 1))`,
    gradient :math:`-1/\sqrt{(1 - c)(1 + c)}` with
    :math:`c = \operatorname{clip}(x, -b, b)` and :math:`b` the largest
    number of ``x.dtype`` below 1 (``1 - eps/2``). The factored
    :math:`(1 - c)(1 + c)` is within two roundings at every ``c``, where
    ``1 - c*c``, which TensorFlow's gradient forms, rounds ``c*c`` first
    and is up to about 1e-4 off (relative) near ±1: TensorFlow's float32
    gradient is 4.3e-5 off in the README's accuracy table, over C3's 1e-5.
    The naive ``tf.math.acos`` is NaN for
    ``|x| > 1`` (a cosine similarity of two equal vectors is often
    ``1.0000001``) and its gradient is ``-inf`` at ±1, NaN after the
    next product with 0; clipping the input to ``[-1 + eps, 1 - eps]``
    instead moves every value near ±1 (``acos(1)`` becomes ``3.5e-4`` in
    float32 with ``eps = 6e-8``) and kills the gradient beyond.

    Edges:
      * ``|x| >= 1`` (``±inf`` included): value ``acos(±1)`` (0 or
        ``pi``), gradient ``-1/sqrt((1 - b)(1 + b))``, about
        ``-1/sqrt(eps)``: -2896 in float32, -6.7e7 in float64, -32 in
        float16, -11.3 in bfloat16. It is negative at both ends: a step
        that lowers ``acos`` raises ``x``, back into the domain from below
        -1, and one that raises it lowers ``x``, back from above 1.
      * ``NaN``: NaN value and gradient.
      * Second derivative :math:`-x/(1 - x^2)^{3/2}`; 0 at clamped points.
      * float32 values are TensorFlow's kernel, up to 4.3 ULP off (XLA's
        expansion under ``jit_compile``: 2.3), over C3's 4: see the module
        docstring.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.acos([1.0000001, 0.0, -1.0]).numpy()
    array([0.       , 1.5707964, 3.1415927], dtype=float32)
    """
    return _unary(acos, "safeops.math.acos", _acos, x, name)


def asin(x, name=None):
    r"""Arc sine with the domain clamped to [-1, 1] and a finite gradient at ±1.

    Formula: :math:`\arcsin x`, gradient :math:`1/\sqrt{1 - x^2}`.

    Stable rewrite: value :math:`\arcsin(\operatorname{clip}(x, -1, 1))`,
    gradient :math:`1/\sqrt{(1 - c)(1 + c)}` with
    :math:`c = \operatorname{clip}(x, -b, b)`, ``b = 1 - eps/2`` as for
    :func:`acos`, whose failure modes ``tf.math.asin`` shares: NaN past ±1
    and an infinite gradient at ±1.

    Edges:
      * ``|x| >= 1`` (``±inf`` included): value ``±pi/2``, gradient
        ``1/sqrt((1 - b)(1 + b))``: 2896 in float32, 6.7e7 in float64, 32
        in float16, 11.3 in bfloat16; positive at both ends, so a step
        that lowers ``asin`` lowers ``x``, back into the domain from above
        1, and one that raises it raises ``x``, back from below -1.
      * ``asin(±0)`` is ``±0``. ``NaN``: NaN value and gradient.
      * Second derivative :math:`x/(1 - x^2)^{3/2}`; 0 at clamped points.
      * float32 values are TensorFlow's kernel, up to 4.5 ULP off (XLA's
        expansion under ``jit_compile``: 2.4), over C3's 4, as for
        :func:`acos`.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.asin([1.0000001, 0.5, -2.0]).numpy()
    array([ 1.5707964,  0.5235988, -1.5707964], dtype=float32)
    """
    return _unary(asin, "safeops.math.asin", _asin, x, name)


def atanh(x, name=None):
    r"""Inverse hyperbolic tangent with the domain clamped inside (-1, 1).

    Formula: :math:`\operatorname{artanh} x = \tfrac12 \log\frac{1 + x}{1 - x}`,
    gradient :math:`1/(1 - x^2)`.

    Stable rewrite: ``x`` is clamped to :math:`[-b, b]` with ``b`` the
    largest number of the dtype below 1 (``1 - eps/2``), value and gradient
    both: the value at ±1 is infinite, so unlike :func:`acos` the value
    clamps too, as :func:`~safeops.math.logit` does (``atanh(x)`` is
    ``logit((1 + x)/2)/2``). The gradient is :math:`1/((1 - c)(1 + c))`,
    factored as in :func:`acos`. float64 values are
    :math:`\operatorname{sign}(x)\,\tfrac12\operatorname{log1p}(2|x|/(1 - |x|))`,
    a ``log1p`` of a nonnegative number (``1 - |x|`` is exact for
    ``|x| >= 1/2``); float32 values are TensorFlow's ``atanh`` (within 3
    ULP). The naive ``tf.math.atanh`` is ``±inf`` at ±1 with an infinite
    gradient and NaN beyond: ``atanh(tanh(u))`` for a float32 ``u`` above
    9.01, where ``tanh`` rounds to 1.

    Edges:
      * ``|x| >= b`` (±1, beyond, ``±inf``): value ``±atanh(b)`` (±8.66 in
        float32, ±18.71 in float64, ±4.16 in float16, ±3.12 in bfloat16),
        gradient ``1/((1 - b)(1 + b))``, about ``1/eps``: 8.4e6 in float32,
        4.5e15 in float64, 1024 in float16, 128 in bfloat16; positive, so a
        step that lowers ``|atanh|`` moves ``x`` back inside.
      * ``atanh(±0)`` is ``±0``. ``NaN``: NaN value and gradient.
      * Second derivative :math:`2x/(1 - x^2)^2`; 0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.atanh([1.0, 0.5, -2.0]).numpy()
    array([ 8.66434   ,  0.54930615, -8.66434   ], dtype=float32)
    """
    return _unary(atanh, "safeops.math.atanh", _clamped_atanh, x, name)


def acosh(x, name=None):
    r"""Inverse hyperbolic cosine with the domain clamped to [1, inf) and a finite gradient at 1.

    Formula: :math:`\operatorname{arcosh} x = \log(x + \sqrt{x^2 - 1})`,
    gradient :math:`1/\sqrt{x^2 - 1}`.

    Stable rewrite: value :math:`\operatorname{arcosh}(\max(x, 1))`
    (TensorFlow's kernel, within 2 ULP in float32 and float64 on this CPU;
    XLA's expansion under ``jit_compile``, within 4, C3's bound), gradient
    :math:`1/(\sqrt{c - 1}\,\sqrt{c + 1})` with :math:`c = \max(x, a)` and
    :math:`a` the smallest number of ``x.dtype`` above 1 (``1 + eps``):
    ``c - 1`` is exact for ``c <= 2``, and the two square roots never
    overflow, where ``c*c - 1`` does from ``c = 1.8e19`` in float32 (a
    gradient of 0 where the exact one, ``1/c``, is a normal number).
    TensorFlow's gradient is ``1/sinh(acosh(x))``: ``inf`` at 1, NaN below
    (as its value), so a hyperbolic distance of a point to itself, or
    an argument that rounded below 1, turns a whole step NaN.

    Edges:
      * ``x <= 1`` (``-inf`` included): value 0, gradient
        ``1/sqrt((a - 1)(a + 1))``, about ``1/sqrt(2 eps)``: 2048 in
        float32, 4.7e7 in float64, 22.6 in float16, 8 in bfloat16;
        positive, so a step that raises ``acosh`` raises ``x``, back into
        the domain.
      * ``+inf``: value ``inf``, gradient 0 (the limit of ``1/x``).
      * ``NaN``: NaN value and gradient.
      * Second derivative :math:`-x/(x^2 - 1)^{3/2}`; 0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.acosh([0.9999999, 1.0, 2.0]).numpy()
    array([0.      , 0.      , 1.316958], dtype=float32)
    """
    return _unary(acosh, "safeops.math.acosh", _clamped_acosh, x, name)


def atan2(y, x, name=None):
    r"""Angle of the vector ``(x, y)``, with a finite gradient at the origin.

    Formula: :math:`\operatorname{atan2}(y, x)`, the angle in
    :math:`[-\pi, \pi]` of :math:`(x, y)` (``tf.math.atan2``: ``y``
    first); gradient :math:`(x, -y)/(x^2 + y^2)` with respect to
    :math:`(y, x)`.

    Stable rewrite: the value is TensorFlow's ``atan2`` of the inputs with
    subnormals flushed (below). The gradient is formed from the vector
    scaled by a power of two :math:`c` (exact): 1 where
    :math:`s = \max(|x|, |y|)` is within :math:`2^{\pm 48}` (float32;
    :math:`2^{\pm 384}` in float64), :math:`2^{\mp 80}`
    (:math:`2^{\mp 640}`) beyond,

    .. math:: \frac{\partial}{\partial y} = \frac{c\,u}{u^2 + v^2}, \quad
              \frac{\partial}{\partial x} = \frac{-c\,v}{u^2 + v^2}, \quad
              u = c x,\; v = c y,

    so that :math:`u^2 + v^2` stays between :math:`2^{-96}` and
    :math:`2^{97}` in float32: it never overflows, and a square that
    underflows is negligible in it; 0 where :math:`s` is 0.
    TensorFlow's gradient divides by :math:`x^2 + y^2`, which is 0 at the
    origin (``0/0``: NaN), underflows to 0 in float32 below a length of
    about ``1e-19`` (``inf`` where the exact gradient, ``1/length``, is
    finite), and is ``inf`` for an infinite entry (``inf/inf``: NaN).

    Edges:
      * ``x = y = 0``: value as TensorFlow's (``±0``, ``±pi`` for
        ``x = -0``), gradient 0 for both: the angle of a zero vector has no
        derivative, and 0 leaves the other terms of a loss in charge, as
        ``norm``'s gradient at 0 does.
      * Subnormal ``x`` or ``y``: a zero of its sign (C3), in every mode
        (float16's too, which float32 could hold). TensorFlow's CPU kernel
        takes them as numbers in its vector loop, not always rightly
        (``atan2(0, 1e-45)`` is ``pi/4``), and flushes them in its scalar
        loop (tensors under 8 entries, a loop's tail), where two subnormals
        give NaN; its XLA kernel flushes them, NaN again for two float32
        subnormals and ``-pi`` for float64 ``atan2(5e-324, -1)``. A pair
        of them is the origin: gradient 0. (float32 and float64 ones are
        flushed by the CPU kernels' flush-to-zero mode, outside
        ``jit_compile``; a GPU kernel, which keeps them, takes them as
        numbers there.)
      * ``±inf`` in ``x`` or ``y``: value as TensorFlow's, gradient 0 for
        both (the limit of ``x/(x**2 + y**2)`` along any finite partner;
        TensorFlow's is NaN). ``NaN`` in either: NaN value and gradients.
      * Second derivatives :math:`\mp 2xy/(x^2 + y^2)^2` and
        :math:`(y^2 - x^2)/(x^2 + y^2)^2`, formed from the same scaled
        vector; 0 at the origin; they overflow, saturated, only where the
        exact ones do.

    Args:
      y: A float tensor (float16, bfloat16, float32 or float64).
      x: A float tensor of the same dtype, broadcastable against ``y``.
      name: Optional name scope.

    Returns:
      A tensor of the broadcast shape and the dtype of ``y``.

    Raises:
      TypeError: ``y`` or ``x`` is not a float tensor, or their dtypes differ.
      ValueError: the shapes do not broadcast.

    Example:

    >>> import tensorflow as tf
    >>> import safeops.math as tfm
    >>> y, x = tf.constant([0.0, 1.0]), tf.constant([0.0, 1.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch([y, x])
    ...     angle = tfm.atan2(y, x)
    >>> angle.numpy()
    array([0.       , 0.7853982], dtype=float32)
    >>> [g.numpy() for g in tape.gradient(angle, [y, x])]
    [array([0. , 0.5], dtype=float32), array([ 0. , -0.5], dtype=float32)]
    """
    if _ragged.any_ragged(y, x):
        return _ragged.elementwise(atan2, y, x, name=name)
    op = "safeops.math.atan2"
    with _validate.op_scope(op, name) as scope:
        y, x = _validate.float_tensors(op, y=y, x=x)
        _validate.broadcast_shape(op, "y", y, "x", x)
        dtype = y.dtype
        angle = _angle(dtype, _xla.enabled())(_dtypes.to_compute(y), _dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(angle, dtype))


# ----------------------------------------------------------------------------
# Private helpers.


def _unary(public, op, build, x, name):
    """The shared body of the clamped unary ops: ragged rows, validation, half-precision widening."""
    if _ragged.any_ragged(x):
        return _ragged.elementwise(public, x, name=name)
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        y = build(x.dtype, _xla.enabled())(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def _arc(value_fn, sign):
    """``build(dtype, xla)`` of ``acos`` (``sign`` -1) or ``asin`` (+1): see :func:`acos`."""

    @functools.lru_cache(maxsize=None)
    def build(dtype: tf.DType, xla: bool):
        bound = _dtypes.below_one(dtype)

        def forward(x):
            # TensorFlow's fused ClipByValue: one kernel (tf.clip_by_value is two).
            x = tf.raw_ops.ClipByValue(t=x, clip_value_min=-1.0, clip_value_max=1.0)
            angle = value_fn(x)
            if sign > 0 and _xla.in_xla():
                # XLA expands asin as 2 atan2(x, 1 + sqrt(1 - x**2)): for |x|
                # below 2 tiny the half angle is subnormal and flushed, and
                # asin(x) came out 0. Below sqrt(eps) asin(x) = x (1 + x**2/6)
                # rounds to x itself.
                angle = tf.where(tf.abs(x) < math.sqrt(_dtypes.eps(x.dtype)), x, angle)
            return angle

        def backward(dy, y, x):
            c = tf.raw_ops.ClipByValue(t=x, clip_value_min=-bound, clip_value_max=bound)
            return (sign * dy / tf.sqrt((1.0 - c) * (1.0 + c)),)

        # The forward is TensorFlow's kernel, not an inner XLA function: XLA's
        # float32 acos and asin are more accurate (2.4 ULP against 4.5) but
        # several times slower on this CPU (see the module docstring).
        return custom_op(forward, _xla.compiled(backward, xla, eager_plain=True), dtype)

    return build


# Built once: each call of _arc has a cache of its own (called per op call, it rebuilt the op, and its
# inner XLA functions compiled again, at every eager call).
_acos = _arc(tf.math.acos, -1.0)
_asin = _arc(tf.math.asin, 1.0)


@functools.lru_cache(maxsize=None)
def _clamped_atanh(dtype: tf.DType, xla: bool):
    """``atanh(clip(x, -b, b))`` with the gradient of the clipped point: see :func:`atanh`."""
    bound = _dtypes.below_one(dtype)

    def forward(x):
        x = tf.raw_ops.ClipByValue(t=x, clip_value_min=-bound, clip_value_max=bound)
        if x.dtype != tf.float64:
            return tf.math.atanh(x)
        # |x| as a select, not abs, so that forward-mode autodiff (taken from
        # this formula) has derivative 1 at x = 0, as logit's does at 1/2.
        a = tf.where(x < 0.0, -x, x)
        r = 0.5 * tf.math.log1p(2.0 * a / (1.0 - a))
        return tf.where(x < 0.0, -r, r)

    def backward(dy, y, x):
        c = tf.raw_ops.ClipByValue(t=x, clip_value_min=-bound, clip_value_max=bound)
        return (dy / ((1.0 - c) * (1.0 + c)),)

    # float64's formula is six kernels as plain ops, one loop in XLA.
    return custom_op(_xla.compiled(forward, xla and dtype == tf.float64, eager_plain=True),
                     _xla.compiled(backward, xla, eager_plain=True), dtype)


@functools.lru_cache(maxsize=None)
def _clamped_acosh(dtype: tf.DType, xla: bool):
    """``acosh(max(x, 1))`` with the gradient at ``max(x, 1 + eps)``: see :func:`acosh`."""
    bound = _dtypes.above_one(dtype)

    def forward(x):
        # NaN stays NaN: TensorFlow's Maximum and XLA's keep a NaN first operand.
        return tf.math.acosh(tf.maximum(x, 1.0))

    def backward(dy, y, x):
        c = tf.maximum(x, bound)
        return (dy / (tf.sqrt(c - 1.0) * tf.sqrt(c + 1.0)),)

    return custom_op(forward, _xla.compiled(backward, xla, eager_plain=True), dtype)


@functools.lru_cache(maxsize=None)
def _angle(dtype: tf.DType, xla: bool):
    """``atan2(y, x)`` with the scaled gradient of :func:`atan2`."""
    tiny = _dtypes.tiny(dtype)

    def flushed(y, x):
        return _dtypes.flush_subnormals(y, dtype), _dtypes.flush_subnormals(x, dtype)

    # A subnormal input is made a zero of its own sign before TensorFlow's
    # atan2 kernel: that kernel takes subnormals as numbers in its vector loop
    # but not always rightly (atan2(0, 1e-45) came out pi/4, not 0) and
    # flushes them in its scalar loop (tensors under 8 entries, a loop's
    # tail), where two subnormals gave 0/0 = NaN; XLA's atan2 flushes them
    # too, with NaN for two float32 subnormals and -pi for float64
    # atan2(5e-324, -1) (the zero lost its sign). Outside XLA a float32 or
    # float64 input is flushed by a product with 1 (_dtypes.times_one: one
    # kernel each); as an inner XLA call the flush made the forward 1.45
    # times TensorFlow's atan2 at 1e5 entries in a tf.function, 1.28 with
    # the products (hand-measured, interleaved, on a 2-core Intel Xeon). Half
    # dtypes, widened to float32, and XLA take the select of
    # _dtypes.flush_subnormals (fused there). XLA's own atan2 is not used
    # outside jit_compile: on this CPU it is several times slower than
    # TensorFlow's kernel, as its acos is.
    flush = _xla.compiled(flushed, xla, eager_plain=True)
    by_kernel = dtype in (tf.float32, tf.float64)

    def forward(y, x):
        if by_kernel and not _xla.in_xla():
            return tf.math.atan2(_dtypes.times_one(y), _dtypes.times_one(x))
        return tf.math.atan2(*flush(y, x))

    def backward(da, a, y, x):
        s = tf.maximum(tf.abs(x), tf.abs(y))
        # Where s is 0 (or below tiny: flushed) or infinite, the gradient is 0,
        # and the formula below sees the vector (1, 0) instead (the double
        # where keeps the second derivative free of 0/0 too); NaN where x or y
        # is NaN (tf.maximum may drop a NaN operand, so s may be finite, even
        # tiny, there; x + y is NaN exactly there, with no NaN constant).
        live = ~((s < tiny) | _dtypes.is_plus_inf(s))
        nan = tf.math.is_nan(x) | tf.math.is_nan(y)
        dead = tf.where(nan, x + y, tf.zeros_like(s))
        ones = tf.ones_like(s)
        xs, ys, s = tf.where(live, x, ones), tf.where(live, y, 0.0 * ones), tf.where(live, s, ones)
        # The scale c is a power of two (products with it are exact): 1 for s
        # within 2**(±3/8 of the exponent range), 2**(∓5/8 of it) beyond, which
        # brings u**2 + v**2 between 2**-96 and 2**97 in float32 (2**-768 and
        # 2**769 in float64): no overflow, and a square that underflows (below
        # 2**-126) is under 2**-30 of the sum, where with s up to 2**60 unscaled
        # it was 1% of it (the gradient sweep found that). One division, where
        # scaling by s itself takes five (x/s, y/s, /s twice: twice
        # TensorFlow's time under XLA on this CPU).
        span = _dtypes.finfo(x.dtype).maxexp
        edge, shift = 2.0 ** (span * 3 // 8), 2.0 ** (span * 5 // 8)
        c = tf.where(s < 1.0 / edge, shift * ones, tf.where(s > edge, ones / shift, ones))
        u, v = xs * c, ys * c
        # da / (u**2 + v**2) saturated: past the largest float (an upstream
        # gradient above 2**32 at the smallest s) a u or v of 0 made 0 * inf.
        q = _dtypes.saturate(da / (u * u + v * v), x.dtype)   # the compute dtype's bound
        dy = tf.where(live, _dtypes.saturate(u * q * c, dtype), dead)
        dx = tf.where(live, _dtypes.saturate(-v * q * c, dtype), dead)
        return sum_to_shape(dy, y), sum_to_shape(dx, x)

    return custom_op(forward, _xla.compiled(backward, xla, eager_plain=True), dtype)

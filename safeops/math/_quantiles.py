r"""The inverse error function and the standard normal quantile: ``erfinv``, ``ndtri``.

Both turn a probability-like number into a Gaussian one: the quantile
transform of a copula or a Gaussianizing flow (``ndtri(cdf(x))``), inverse
transform sampling of a truncated normal (``ndtri(Phi(a) + u (Phi(b) -
Phi(a)))``), a probit link, ``sqrt(2) erfinv(2u - 1)`` of a uniform. And
both of TensorFlow's kernels (TF 2.21, CPU) fail inside their domain, where
those uses land (``python -m benchmarks.sweep --ops erfinv ndtri``, and the
tests of ``tests/test_quantiles.py``):

* ``tf.math.erfinv`` is ``inf`` at the float32 number below 1
  (``0.99999994``, where ``erfinv`` is 3.83) and at float64's
  (``1 - 2**-53``, 5.86), and beyond 4 ULP over much of ``[-0.72, 1)``
  in float32 and from ``1e-30`` on in float64; under ``jit_compile`` XLA's
  expansion is up to 63 ULP off in float32 and 470959 in float64.
* ``tf.math.ndtri`` is accurate outside XLA (within 4 ULP), but under
  ``jit_compile`` XLA's expansion returns ``-inf`` for float32 probabilities
  around ``1e-8`` (``ndtri(1.43e-8)`` is -5.55) and beyond 4 ULP over most
  of ``(0, 1)`` in both dtypes.
* Both are ``±inf`` at the ends of their domains (``erfinv(±1)``,
  ``ndtri(0)``, ``ndtri(1)``) with an infinite derivative; a probability
  that rounded to 1 (``Phi(x)`` of a float32 ``x`` above 5.3) turns a
  whole step NaN.

Stable rewrite, the same in every mode: both are :math:`\pm y` with
:math:`y \ge 0` the root of :math:`\operatorname{erf} y = a` (equivalently
:math:`\operatorname{erfc} y = u`, :math:`u = 1 - a`), with ``a`` and ``u``
passed exactly (``ndtri(p) = sign(p - 1/2) sqrt(2) y`` at
:math:`a = |2p - 1|`, :math:`u = 2 \min(p, 1 - p)`: both exact in binary
floating point where they are used). In float64 for every input dtype:

* a first guess: below :math:`a = 1/2` the Maclaurin series of
  :math:`\operatorname{erfinv}` to degree 7 (:math:`\tfrac{\sqrt\pi}{2}(a +
  \tfrac{\pi}{12}a^3 + \tfrac{7\pi^2}{480}a^5 + \tfrac{127\pi^3}{40320}a^7)`,
  within 2e-4), above it Abramowitz and Stegun's rational approximation
  26.2.23 of the normal quantile at :math:`u/2` (absolute error below
  4.5e-4);
* Halley steps on :math:`f(y) = \operatorname{erf}(y) - a` or
  :math:`u - \operatorname{erfc}(y)`: :math:`t = f/f'`, :math:`y \leftarrow
  y - t/(1 + y t)`, since :math:`f''/f' = -2y`. The ``erfc`` residual is
  taken relative, :math:`t = \tfrac{\sqrt\pi}{2}(1 -
  \operatorname{erfc}(y)/u)\,e^{y^2 + \log u}`, so that near float64's
  ``tiny`` the difference is not a subnormal that the CPU flushes to 0.
  Convergence is cubic: one step brings the first guess within about 1e-9
  relative. float32 and narrower outputs take that one step, on ``erfc``
  alone (below :math:`a = 0.05` the series alone), and are rounded once;
  float64 takes two, on ``erf`` up to :math:`a = 0.9` and ``erfc``
  beyond: the error of :math:`y` is the function's relative error times
  :math:`a/(f'y)` or :math:`u/(f'y)`, and TensorFlow's float64 ``erfc`` is
  up to 9 ULP off for :math:`y` in ``[0.45, 3]`` (``erf`` 1 under XLA, 2
  as a plain kernel): the two meet near :math:`a = 0.9`.

Accuracy against mpmath (``tests/test_quantiles.py``, the contract tests):
float32 and narrower within 1 ULP in every mode; float64 within 2 ULP
through XLA (inside a ``tf.function``, eager calls of 65536 entries or
more, an outer ``jit_compile``), within 5 as plain TensorFlow ops (eager
calls on fewer entries, inner XLA off, ``enable_check_numerics``). Speed: float64 ``erfc`` and ``exp`` per
entry, several times TensorFlow's float32 kernels (README, Known gaps).

The ends are clamped as in :mod:`safeops._dtypes`' policy (contract C4):
``erfinv`` at :math:`\pm b`, ``ndtri`` at ``[tiny, b]``, with :math:`b`
the largest number below 1 of the input's dtype. The value there is the
finite value at the clamp and the gradient the derivative there,
:math:`\tfrac{\sqrt\pi}{2}e^{y^2}` and :math:`\sqrt{2\pi}e^{y^2/2}`,
computed from the output :math:`y`.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from safeops import _dtypes, _xla
from safeops._gradient import custom_op
# The shared body of the clamped unary ops: ragged rows, validation, half-precision widening.
from safeops.math._inverse_trig import _unary

_HALF_SQRT_PI = math.sqrt(math.pi) / 2.0
_SQRT_TWO = math.sqrt(2.0)
_SQRT_TWO_PI = math.sqrt(2.0 * math.pi)
# Maclaurin coefficients of erfinv(a) / (sqrt(pi)/2 a) in powers of a**2.
_SERIES = (math.pi / 12.0, 7.0 * math.pi ** 2 / 480.0, 127.0 * math.pi ** 3 / 40320.0)
# Abramowitz and Stegun 26.2.23: the normal quantile of a lower tail q is
# -(t - (c0 + c1 t + c2 t^2) / (1 + d1 t + d2 t^2 + d3 t^3)), t = sqrt(-2 log q).
_AS_NUMERATOR = (2.515517, 0.802853, 0.010328)
_AS_DENOMINATOR = (1.432788, 0.189269, 0.001308)
# The residual is erf(y) - a below this a, u - erfc(y) above. The error of y from the residual's is
# (the function's relative error) times a / (f' y) for erf, u / (f' y) for erfc; TensorFlow's float64
# erfc is up to 9 ULP off for y in [0.45, 3] (erf within 1 under XLA, 2 outside), so the two
# products meet at a = 0.9 (y = 1.16), about 2.7 ULP each.
_ERF_RESIDUAL_BELOW = 0.9
# Below this a the series is the float32 (and narrower) result itself.
_SERIES_BELOW = 0.05


def erfinv(x, name=None):
    r"""Inverse error function with the domain clamped inside (-1, 1), correct where TensorFlow's is not.

    Formula: :math:`y = \operatorname{erfinv} x` solves
    :math:`\operatorname{erf} y = x`; gradient
    :math:`\tfrac{\sqrt\pi}{2}e^{y^2}`.

    Stable rewrite: the root of :math:`\operatorname{erf} y = |x|` (or of
    :math:`\operatorname{erfc} y = 1 - |x|`, exact for :math:`|x| \ge 1/2`)
    by a first guess and Halley steps in float64, for every dtype and mode
    (see :mod:`safeops.math._quantiles`); the input clamped to :math:`[-b,
    b]`, :math:`b` the largest number of the dtype below 1. TensorFlow's
    ``erfinv`` is ``inf`` at ``0.99999994`` in float32 (3.83), more than 4
    ULP off over much of ``[-0.72, 1)``, and 63 ULP off under XLA.

    Edges:
      * ``|x| >= b`` (±1, beyond, ``±inf``): value ``±erfinv(b)`` (±3.83 in
        float32, ±5.86 in float64, ±2.46 in float16, ±2.05 in bfloat16),
        gradient :math:`\tfrac{\sqrt\pi}{2}e^{y^2}` there (2.1e6 in float32,
        7.6e14 in float64, 387 in float16, 57 in bfloat16), positive, so a
        step that lowers ``|erfinv|`` moves ``x`` back inside.
      * ``erfinv(±0)`` is ``±0``; subnormal inputs are 0 (C3). NaN: NaN
        value and gradient.
      * Second derivative :math:`2y\,y'^2`; 0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.erfinv([0.5, 0.99999994, 1.0]).numpy()
    array([0.47693628, 3.832507  , 3.832507  ], dtype=float32)
    """
    return _unary(erfinv, "safeops.math.erfinv", _erfinv, x, name)


def ndtri(x, name=None):
    r"""Standard normal quantile with the domain clamped to [tiny, 1), correct under XLA too.

    Formula: :math:`y = \Phi^{-1}(p)` solves :math:`\Phi(y) = p`;
    gradient :math:`\sqrt{2\pi}e^{y^2/2}`.

    Stable rewrite: :math:`\operatorname{sign}(p - \tfrac12)\sqrt2\,y` with
    :math:`y` the root of :math:`\operatorname{erfc} y = 2\min(p, 1 - p)`
    (or of :math:`\operatorname{erf} y = |2p - 1|` near :math:`p = 1/2`;
    both arguments exact) as in :func:`erfinv`, in float64; the input
    clamped to :math:`[tiny, b]`, :math:`b` the largest number of the dtype
    below 1. TensorFlow's ``ndtri`` is accurate outside XLA, but under
    ``jit_compile`` it returns ``-inf`` for float32 probabilities near
    ``1e-8`` and is beyond 4 ULP over most of ``(0, 1)``.

    Edges:
      * ``p <= tiny`` (0, subnormals, negatives, ``-inf``): value
        ``ndtri(tiny)`` (-12.95 in float32, -12.94 in bfloat16, -37.52 in
        float64, -3.84 in float16), gradient :math:`\sqrt{2\pi}e^{y^2/2}`
        there (6.5e36 in float32 and bfloat16, 1.2e306 in float64, 4020 in
        float16), positive: a step that raises ``ndtri`` raises ``p`` into
        the domain.
      * ``p >= b`` (1, beyond, ``+inf``): value ``ndtri(b)`` (5.29 in
        float32, 8.21 in float64, 3.30 in float16, 2.66 in bfloat16),
        gradient there (3.1e6, 1.1e15, 575, 86), positive.
      * NaN: NaN value and gradient.
      * Second derivative :math:`y\,y'^2`; 0 at clamped points.

    Args:
      x: A float tensor of probabilities (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.ndtri([0.975, 0.0, 1.0]).numpy()
    array([  1.9599644, -12.949953 ,   5.294704 ], dtype=float32)
    """
    return _unary(ndtri, "safeops.math.ndtri", _ndtri, x, name)


def _root_of_erf(a: tf.Tensor, u: tf.Tensor, float64_output: bool) -> tf.Tensor:
    """``y >= 0`` with ``erf(y) = a`` and ``erfc(y) = u`` (float64; ``a`` in ``[0, 1)``, ``u = 1 - a``).

    ``u`` must be exact where ``a >= 1/2`` (it is: ``1 - a`` by Sterbenz,
    or ``2q`` of a tail probability); ``a`` where ``a < 1/2``.

    ``float64_output``: two Halley steps, on ``erf`` up to ``a = 0.9``. Else
    (float32 and narrower outputs) one step on ``erfc`` alone, which is
    within a thousandth of a float32 ULP there (``erfc``'s 9 ULP times
    ``u / (f' y)``, at most 1.1e-13 relative for ``a >= 0.05``), and below
    ``a = 0.05`` the series alone (its first omitted term is
    ``0.073 a**8`` relative, 3e-12): XLA's float64 ``erf`` and ``erfc``
    together cost three times ``erfc`` alone.
    """
    central = a < 0.5
    a2 = a * a
    series = _HALF_SQRT_PI * a * (1.0 + a2 * (_SERIES[0] + a2 * (_SERIES[1] + a2 * _SERIES[2])))
    # The log of the tail's u, also for its Halley steps; 0 in the centre (u there is only a guard).
    log_u = tf.math.log(tf.where(central, tf.ones_like(u), u))
    t = tf.sqrt(-2.0 * (log_u - math.log(2.0)))
    c, d = _AS_NUMERATOR, _AS_DENOMINATOR
    z = t - (c[0] + t * (c[1] + t * c[2])) / (1.0 + t * (d[0] + t * (d[1] + t * d[2])))
    y = tf.where(central, series, z / _SQRT_TWO)
    if not float64_output:
        # u - erfc(y) relative to u where u is the tail's, absolute in the centre (u there is 1 - a).
        u = tf.where(central, 1.0 - a, u)
        newton = _HALF_SQRT_PI * (1.0 - tf.math.erfc(y) / u) * tf.exp(y * y + tf.math.log(u))
        return tf.where(a < _SERIES_BELOW, series, y - newton / (1.0 + y * newton))
    by_erf = a < _ERF_RESIDUAL_BELOW
    exponent_shift = tf.where(by_erf, tf.zeros_like(log_u), log_u)
    for _ in range(2):
        residual = tf.where(by_erf, tf.math.erf(y) - a, 1.0 - tf.math.erfc(y) / u)
        newton = _HALF_SQRT_PI * residual * tf.exp(y * y + exponent_shift)
        y = y - newton / (1.0 + y * newton)
    return y


def _joined(forward, backward, dtype: tf.DType, xla: bool):
    """The op of ``forward`` and ``backward``, each an inner XLA function (plain ops eagerly below 65536 entries).

    Through TensorFlow's own float64 ``erf`` kernel, 2 ULP off where XLA's
    is 1, float64 results come out up to 5 ULP off (2 through XLA's). The
    forward was an XLA call in eager mode at every size for that, but each
    new input shape is a compile, and the contract tests' eager calls of
    many lengths took the process to Linux's limit of memory mappings
    (``vm.max_map_count``; a worker crashed): eager calls below
    :data:`safeops._xla.EAGER_PLAIN_BELOW` entries run plain ops, as the
    other few-kernel ops' do.
    """
    return custom_op(_xla.compiled(forward, xla, eager_plain=True),
                     _xla.compiled(backward, xla, eager_plain=True), dtype)


@functools.lru_cache(maxsize=None)
def _erfinv(dtype: tf.DType, xla: bool):
    """``erfinv(clip(x, -b, b))`` with the derivative at the clipped point: see :func:`erfinv`."""
    bound = _dtypes.below_one(dtype)
    wide = dtype == tf.float64

    def forward(x):
        x64 = tf.cast(x, tf.float64)
        a = tf.minimum(tf.abs(x64), bound)   # NaN stays NaN
        y = _root_of_erf(a, 1.0 - a, wide)
        # erfinv(-0) is -0: x itself where it is zero (and where it is NaN).
        return tf.cast(tf.where(x64 < 0.0, -y, tf.where(x64 > 0.0, y, x64)), x.dtype)

    def backward(dy, y, x):
        return (dy * _HALF_SQRT_PI * tf.exp(y * y),)

    return _joined(forward, backward, dtype, xla)


@functools.lru_cache(maxsize=None)
def _ndtri(dtype: tf.DType, xla: bool):
    """``ndtri(clip(p, tiny, b))`` with the derivative at the clipped point: see :func:`ndtri`."""
    low, high = _dtypes.tiny(dtype), _dtypes.below_one(dtype)
    wide = dtype == tf.float64

    def forward(p):
        p64 = tf.raw_ops.ClipByValue(t=tf.cast(p, tf.float64), clip_value_min=low, clip_value_max=high)
        q = tf.where(p64 > 0.5, 1.0 - p64, p64)   # exact: Sterbenz
        y = _SQRT_TWO * _root_of_erf(tf.abs(2.0 * p64 - 1.0), 2.0 * q, wide)
        return tf.cast(tf.where(p64 < 0.5, -y, y), p.dtype)   # ndtri(1/2) is +0

    def backward(dy, y, p):
        # exp(y**2 / 2) in float64: at y = -12.95 (p = tiny) float32's rounding of y**2 / 2 alone is
        # 5e-6 relative in the gradient, and with y's own rounding the sweep found 9.9e-6 (C3: 1e-5).
        y64 = tf.cast(y, tf.float64)
        return (dy * tf.cast(_SQRT_TWO_PI * tf.exp(0.5 * y64 * y64), dy.dtype),)

    return _joined(forward, backward, dtype, xla)

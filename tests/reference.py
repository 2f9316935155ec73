"""High-precision reference values and derivatives for every op of ``safeops.math`` (mpmath).

Each op is evaluated in a private mpmath context at 320 bits (96 digits;
the contract asks for 50+) and rounded *once*, directly from the mpmath
number, to the target format with round-to-nearest-even, gradual underflow
and overflow to infinity (:func:`round_to`). Rounding first to float64 and
then to float32 or float16 would round twice and can miss the correctly
rounded result by one ULP when the float64 value lands exactly on a
midpoint of the narrower format; going straight from the 320-bit value
avoids that.

What the reference computes is the op *as documented*, contract C3
included:

* **subnormal inputs are treated as 0** (TensorFlow on CPU flushes them):
  with ``flush=True`` (the default) every subnormal input of the dtype is
  replaced by 0 before anything else. ``flush=False`` evaluates the inputs
  as given; tests accept either where an input is subnormal, because
  float16 and bfloat16 subnormals become normal float32 numbers when an op
  widens them and are then not flushed.
* **the documented clamp** is applied to the (flushed) input, so clamped
  points have the value and gradient of the clamp boundary (contract C4).
  The bounds follow the dtype policy's definitions: ``tiny`` (smallest
  normal number), ``below_one`` (``1 - eps/2``) and ``above_one`` (``1 + eps``)
  of the *input* dtype.

Non-finite inputs get a NaN reference and ``defined = False`` (their
behaviour is named edge by edge in the per-op tests), except ``-inf``
entries of the log-sum-exp family, which are masks with exact results.

Two entry points: :func:`elementwise` for the unary and binary ops, and
:func:`rowwise` for the reductions and the softmax family over the last
axis of a matrix. Both return a :class:`Reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mpmath
import numpy as np

from tests.ulp import finfo, numpy_dtype

#: Private context, so the global ``mpmath.mp`` of other tests is untouched.
CTX = mpmath.MPContext()
CTX.prec = 320
#: Precision of weighted log-sum-exp sums (see ``_lse_parts``).
WEIGHTED_PREC = 2400

ZERO = CTX.mpf(0)
ONE = CTX.mpf(1)
NEG_INF = CTX.mpf("-inf")
_NAN = CTX.mpf("nan")


# ----------------------------------------------------------------------------
# Formats and correct rounding.


@dataclass(frozen=True)
class Format:
    """The parameters of a binary float format that rounding needs."""

    name: str
    precision: int  # significand bits, hidden bit included
    min_exponent: int  # tiny = 2**min_exponent
    max_value: float
    tiny: float
    eps: float

    @property
    def below_one(self) -> float:
        """Largest number below 1: ``1 - eps/2`` (the upper clamp of (0, 1))."""
        return 1.0 - self.eps / 2.0

    @property
    def above_one(self) -> float:
        """Smallest number above 1: ``1 + eps`` (the lower clamp of (1, inf))."""
        return 1.0 + self.eps


_FORMATS: dict[str, Format] = {}


def fmt(dtype) -> Format:
    """The :class:`Format` of a dtype given as name, NumPy or TensorFlow dtype."""
    name = numpy_dtype(dtype).name
    if name not in _FORMATS:
        info = finfo(name)
        tiny = float(info.tiny)
        _FORMATS[name] = Format(
            name=name, precision=int(info.nmant) + 1, min_exponent=int(round(math.log2(tiny))),
            max_value=float(info.max), tiny=tiny, eps=float(info.eps))
    return _FORMATS[name]


def round_to(value, f: Format) -> float:
    """``value`` (mpf) rounded to nearest-even in format ``f``, returned as an exact Python float.

    Subnormal results are rounded at the fixed quantum of the subnormal
    range (gradual underflow), results beyond ``max`` rounding up become
    ``±inf``. The returned float is exactly representable in ``f``, so
    casting it to the NumPy dtype of ``f`` rounds no further.
    """
    if CTX.isnan(value):
        return math.nan
    if CTX.isinf(value):
        return math.inf if value > 0 else -math.inf
    if value == 0:
        return 0.0
    _, e = CTX.frexp(value)  # value = m * 2**e, 1/2 <= |m| < 1
    leading = max(int(e) - 1, f.min_exponent)
    quantum = leading - (f.precision - 1)
    scaled = CTX.ldexp(value, -quantum)  # exact: a change of exponent only
    n = int(CTX.floor(scaled))
    frac = scaled - n  # exact: n has at most precision + 1 bits
    if frac > 0.5 or (frac == 0.5 and n % 2 == 1):
        n += 1
    try:
        out = math.ldexp(n, quantum)
    except OverflowError:
        return math.copysign(math.inf, n)
    if abs(out) > f.max_value:
        return math.copysign(math.inf, out)
    return out


def to_dtype(values, dtype) -> np.ndarray:
    """A nested list or object array of mpf, correctly rounded into a NumPy array of ``dtype``."""
    f = fmt(dtype)
    arr = np.asarray(values, dtype=object)
    out = np.array([round_to(v, f) for v in arr.ravel()], dtype=np.float64).reshape(arr.shape)
    return out.astype(numpy_dtype(dtype))


def _to_float64(values) -> np.ndarray:
    return to_dtype(values, "float64").astype(np.float64)


def _input(value: float, f: Format, flush: bool):
    """An input float as mpf, subnormals flushed to 0 under contract C3."""
    if flush and value != 0 and abs(value) < f.tiny:
        return ZERO
    return CTX.mpf(value)


# ----------------------------------------------------------------------------
# Results.


@dataclass
class Reference:
    """Correctly rounded values and derivatives of one op at a batch of inputs.

    ``value``: results in the op's dtype (NumPy, bfloat16 from ml_dtypes).
    ``grads``: one float64 array per differentiated input (``input_tensor``
    and ``weights`` for weighted log-sum-exp): the exact vector-Jacobian
    product for the op's cotangent (ones for elementwise ops and
    ``reduce_logsumexp``; ``cotangent`` for the softmax family and
    ``l2_normalize``), rounded to float64. ``scales``: per gradient entry,
    the magnitude of the terms that form it (``|exact|`` where nothing
    cancels): an error is judged relative to ``max(|exact|, scale)``.
    ``defined``: where the reference applies (finite inputs, masks).
    """

    value: np.ndarray
    grads: tuple[np.ndarray, ...]
    scales: tuple[np.ndarray, ...]
    defined: np.ndarray
    value_defined: np.ndarray = field(default=None)  # shape of value (rows for reductions)

    def __post_init__(self):
        if self.value_defined is None:
            self.value_defined = self.defined


# ----------------------------------------------------------------------------
# Elementwise ops: f(*xs, fmt) -> (value, (d/dx1, ...)) on flushed mpf inputs.


def _exp_neg(a):
    return CTX.exp(-a)


def _log(x, f):
    x = max(x, CTX.mpf(f.tiny))
    return CTX.log(x), (1 / x,)


def _log1p(x, f):
    x = max(x, CTX.mpf(-f.below_one))
    return CTX.log1p(x), (1 / (1 + x),)


def _logit(x, f):
    x = min(max(x, CTX.mpf(f.tiny)), CTX.mpf(f.below_one))
    return CTX.log(x) - CTX.log1p(-x), (1 / (x * (1 - x)),)


def _log1mexp(x, f):
    a = max(abs(x), CTX.mpf(f.tiny))
    if a <= 1:
        value = CTX.log(-CTX.expm1(-a))
    else:
        value = CTX.log1p(-_exp_neg(a))
    slope = 1 / CTX.expm1(a)
    return value, (-slope if x < 0 else slope,)


def _sigmoid_mp(x):
    return 1 / (1 + CTX.exp(-x))


def _sigmoid(x, f):
    s = _sigmoid_mp(x)
    return s, (s * _sigmoid_mp(-x),)


def _log_sigmoid(x, f):
    return -CTX.log1p(CTX.exp(-x)), (_sigmoid_mp(-x),)


def _softplus(x, f):
    return CTX.log1p(CTX.exp(x)), (_sigmoid_mp(x),)


def _softplus_inverse(x, f):
    x = max(x, CTX.mpf(f.tiny))
    return x + CTX.log(-CTX.expm1(-x)), (-1 / CTX.expm1(-x),)


def _sqrt(x, f):
    value = CTX.sqrt(max(x, ZERO))
    return value, (1 / (2 * CTX.sqrt(max(x, CTX.mpf(f.tiny)))),)


def _rsqrt(x, f):
    base = max(x, CTX.mpf(f.tiny))
    return 1 / CTX.sqrt(base), (-1 / (2 * base * CTX.sqrt(base)),)


def _xlogy(x, y, f):
    y = max(y, CTX.mpf(f.tiny))
    log_y = CTX.log(y)
    return (ZERO if x == 0 else x * log_y), (log_y, x / y)


def _xlog1py(x, y, f):
    y = max(y, CTX.mpf(-f.below_one))
    log_y = CTX.log1p(y)
    return (ZERO if x == 0 else x * log_y), (log_y, x / (1 + y))


def _logaddexp(a, b, f):
    m = max(a, b)
    d = abs(a - b)
    value = m + CTX.log1p(_exp_neg(d))
    return value, (_sigmoid_mp(a - b), _sigmoid_mp(b - a))


def _divide_no_nan(x, y, f):
    if y == 0:
        return ZERO, (ZERO, ZERO)
    return x / y, (1 / y, -x / (y * y))


def _acos(x, f):
    c = min(max(x, CTX.mpf(-f.below_one)), CTX.mpf(f.below_one))
    return CTX.acos(min(max(x, -ONE), ONE)), (-1 / CTX.sqrt((1 - c) * (1 + c)),)


def _asin(x, f):
    c = min(max(x, CTX.mpf(-f.below_one)), CTX.mpf(f.below_one))
    return CTX.asin(min(max(x, -ONE), ONE)), (1 / CTX.sqrt((1 - c) * (1 + c)),)


def _atanh(x, f):
    x = min(max(x, CTX.mpf(-f.below_one)), CTX.mpf(f.below_one))
    return CTX.atanh(x), (1 / ((1 - x) * (1 + x)),)


def _acosh(x, f):
    c = max(x, CTX.mpf(f.above_one))
    return CTX.acosh(max(x, ONE)), (1 / CTX.sqrt((c - 1) * (c + 1)),)


def _erfc_root(u):
    """``y`` with ``erfc(y) = u`` for ``u`` in ``(0, 1]``; the root of ``log erfc(y) = log u`` for the tails.

    ``erfinv(1 - u)`` needs ``1 - u`` itself, which 320 bits cannot hold for
    ``u`` below about ``1e-96`` (``ndtri`` reaches ``u = 2 tiny``).
    """
    if u > 0.5:
        return CTX.erfinv(1 - u)
    start = CTX.sqrt(-CTX.log(u))   # erfc(y) ~ exp(-y**2) / (y sqrt(pi))
    log_u = CTX.log(u)
    return CTX.findroot(lambda y: CTX.log(CTX.erfc(y)) - log_u, start)


def _erfinv(x, f):
    b = CTX.mpf(f.below_one)
    c = min(max(x, -b), b)
    a = abs(c)
    y = CTX.erfinv(a) if a < 0.5 else _erfc_root(1 - a)
    y = -y if c < 0 else y
    return y, (CTX.sqrt(CTX.pi) / 2 * CTX.exp(y * y),)


def _ndtri(p, f):
    c = min(max(p, CTX.mpf(f.tiny)), CTX.mpf(f.below_one))
    q = min(c, 1 - c)
    y = CTX.sqrt(2) * _erfc_root(2 * q)
    y = -y if c < 0.5 else y
    return y, (CTX.sqrt(2 * CTX.pi) * CTX.exp(y * y / 2),)


def _atan2(y, x, f):
    """The angle of ``(x, y)``, gradient 0 at the origin; signed zeros are :func:`elementwise`'s."""
    r2 = x * x + y * y
    if r2 == 0:
        return ZERO, (ZERO, ZERO)
    return CTX.atan2(y, x), (x / r2, -y / r2)


def _pow(x, y, f, negative_zero=False):
    """``x ** y`` with :func:`safeops.math.pow`'s clamps; ``negative_zero``: ``x`` is ``-0`` (flushed or not).

    mpmath has no signed zero: at the pole of an integer ``y`` the base is
    ``-tiny`` for a negative zero, as the op takes it.
    """
    tiny = CTX.mpf(f.tiny)
    integer = y == CTX.floor(y)
    base = x if integer else max(x, ZERO)
    pole = base == 0 and y < 0
    if pole:
        base = -tiny if (integer and negative_zero) else tiny
    value = (ONE if y == 0 else ZERO) if base == 0 else CTX.power(base, y)
    if pole and abs(value) > f.max_value:
        value = CTX.mpf(math.copysign(f.max_value, value))
    b = base if integer else max(base, tiny)
    # b**(y - 1) as b**y / b: y - 1 is not exact at 320 bits for |y| near 1e308, and its
    # rounding changed the parity of an integer exponent (the sign for a negative b).
    dx = ZERO if y == 0 else (y if y == 1 else y * CTX.power(b, y) / b) if b != 0 else ZERO
    dy = value * CTX.log(base) if base > 0 else ZERO
    return value, (dx, dy)


ELEMENTWISE = {
    "log": _log, "log1p": _log1p, "logit": _logit, "log1mexp": _log1mexp,
    "sigmoid": _sigmoid, "log_sigmoid": _log_sigmoid, "softplus": _softplus,
    "softplus_inverse": _softplus_inverse, "sqrt": _sqrt, "rsqrt": _rsqrt,
    "xlogy": _xlogy, "xlog1py": _xlog1py, "logaddexp": _logaddexp, "divide_no_nan": _divide_no_nan,
    "acos": _acos, "asin": _asin, "atanh": _atanh, "acosh": _acosh, "atan2": _atan2, "pow": _pow,
    "erfinv": _erfinv, "ndtri": _ndtri,
}


def _atan2_of_zero(y: float, x: float, f: Format, flush: bool) -> float:
    """``atan2(±0, x)`` by IEEE 754's signed zeros: ``±0`` for ``x >= +0``, ``±pi`` for ``x <= -0``.

    mpmath has no signed zero; the result is exact (0) or ``pi`` rounded to
    float64, whose rounding to the narrower formats is not a midpoint case.
    """
    def signed(v):
        return math.copysign(0.0, v) if (v == 0 or (flush and abs(v) < f.tiny)) else v
    return math.atan2(signed(y), signed(x))


def elementwise(name: str, *arrays, dtype, flush: bool = True) -> Reference:
    """Reference for a unary or binary elementwise op at equally shaped ``arrays``.

    Gradients are the partial derivatives (the cotangent is 1), one array
    per input; ``scales`` equal ``|exact|`` (nothing cancels in them).
    """
    f = fmt(dtype)
    fn = ELEMENTWISE[name]
    arrays = [np.asarray(a, dtype=numpy_dtype(dtype)).astype(np.float64) for a in arrays]
    shape = arrays[0].shape
    flat = [a.ravel() for a in arrays]
    values, grads = [], [[] for _ in arrays]
    defined = np.ones(flat[0].size, dtype=bool)
    for i in range(flat[0].size):
        xs = [a[i] for a in flat]
        if not all(math.isfinite(x) for x in xs):
            defined[i] = False
            values.append(_NAN)
            for g in grads:
                g.append(_NAN)
            continue
        inputs = [_input(x, f, flush) for x in xs]
        if name == "pow":
            v, gs = fn(*inputs, f, negative_zero=math.copysign(1.0, xs[0]) < 0 and inputs[0] == 0)
        else:
            v, gs = fn(*inputs, f)
        if name == "atan2" and _input(xs[0], f, flush) == 0:
            v = CTX.mpf(_atan2_of_zero(*xs, f, flush))
        values.append(v)
        for g, gi in zip(grads, gs):
            g.append(gi)
    grads64 = tuple(_to_float64(g).reshape(shape) for g in grads)
    return Reference(
        value=to_dtype(values, dtype).reshape(shape),
        grads=grads64,
        scales=tuple(np.abs(g) for g in grads64),
        defined=defined.reshape(shape),
    )


# ----------------------------------------------------------------------------
# Row ops over the last axis of a matrix.


def _lse_parts(row, weights):
    """``(m, t, total)`` with ``sum w e^x = e^m total`` and ``t = total - 1`` formed without the 1 (Blanchard et al. 2021).

    Returns ``None`` for an empty sum (all ``-inf`` or all weights 0).
    """
    live = [(x, w) for x, w in zip(row, weights) if w != 0 and x != NEG_INF]
    if not live:
        return None
    m = max(x for x, _ in live)
    # Weights move the remainder out of 320 bits' reach: at x = [-1.5e-154,
    # -2.2e-308] with weights [1, 1.8e-283] the maximum's own term vanishes
    # and the result, -1.5e-154, is carried by 1 - exp(-1.5e-154), which
    # 320 bits round to 0. Precision enough for any two float64 numbers'
    # ratio (2**-1074 next to 1) keeps it.
    with CTX.workprec(WEIGHTED_PREC if any(w != ONE for _, w in live) else CTX.prec):
        top = sum((w for x, w in live if x == m), ZERO)
        rest = sum((w * CTX.exp(x - m) for x, w in live if x != m), ZERO)
        return m, (top - 1) + rest, top + rest


def _lse(row, weights):
    parts = _lse_parts(row, weights)
    if parts is None:
        return NEG_INF
    return parts[0] + _log_of_parts(parts)


def _log_of_parts(parts):
    """``log(top + rest)``: by ``log1p(t)`` where ``top`` is near 1 (``t`` then exact), else directly.

    A tiny ``top`` (a weight of 2.2e-308 at the maximum) vanishes in
    ``top - 1`` even at 320 bits, so ``t`` would be exactly -1.
    """
    _, t, total = parts
    return CTX.log1p(t) if 0.5 <= total <= 2 and t > -0.5 else CTX.log(total)


def _shifted_probabilities(row, weights):
    """``(lse, p)`` with ``p_i = w_i e^{x_i - lse}`` formed as ``w_i e^{x_i - m} / total``.

    Never as ``exp(x - lse)``: at ``|x| ~ 1e308`` the 320-bit ``lse`` cannot
    hold ``x + log w`` exactly, while ``x - m`` and ``total`` are exact enough.
    ``None`` for an empty sum.
    """
    parts = _lse_parts(row, weights)
    if parts is None:
        return None
    m, _, denominator = parts
    p = [CTX.exp(x - m) / denominator if x != NEG_INF else ZERO for x in row]
    return m + _log_of_parts(parts), p


def _row_logsumexp(row, f, weights, cotangent, epsilon):
    weights = weights if weights is not None else [ONE] * len(row)
    found = _shifted_probabilities(row, weights)
    if found is None:
        zeros = [ZERO] * len(row)
        return [NEG_INF], (zeros, zeros), (zeros, zeros)
    lse, p = found  # p without the weight: d lse / d w_i
    gx = [w * pi for w, pi in zip(weights, p)]
    return [lse], (gx, p), ([abs(g) for g in gx], p)


def _row_cumulative_logsumexp(row, f, weights, cotangent, epsilon):
    """Running log-sum-exp ``y_j`` over ``row[:j + 1]``; gradient ``sum_j v_j p_ij`` over the live ``y_j``.

    ``p_ij = e^{x_i - y_j}`` is the prefix's own softmax, formed from its
    exact shift (:func:`_shifted_probabilities`); an all ``-inf`` prefix has
    value ``-inf`` and takes no part in the gradient. Scale: the same sum
    with ``|v_j|``.
    """
    values, grad, scale = [], [ZERO] * len(row), [ZERO] * len(row)
    for j in range(len(row)):
        found = _shifted_probabilities(row[:j + 1], [ONE] * (j + 1))
        if found is None:
            values.append(NEG_INF)
            continue
        lse, p = found
        values.append(lse)
        for i, pi in enumerate(p):
            grad[i] += cotangent[j] * pi
            scale[i] += abs(cotangent[j]) * pi
    return values, (grad,), (scale,)


def _row_cumprod(row, f, weights, cotangent, epsilon):
    """Running product ``y_j`` of ``row[:j + 1]``; gradient ``sum_{j >= i} v_j prod_{k <= j, k != i} x_k``.

    Scale: the same sum of absolute values (the terms cancel for mixed
    signs of ``v``).
    """
    values, product = [], ONE
    for x in row:
        product *= x
        values.append(product)
    grad, scale = [], []
    for i in range(len(row)):
        others, g, s = ONE, ZERO, ZERO
        for j in range(len(row)):
            if j != i:
                others *= row[j]
            if j >= i:
                g += cotangent[j] * others
                s += abs(cotangent[j] * others)
        grad.append(g)
        scale.append(s)
    return values, (grad,), (scale,)


def cumprod_leaves_float64(row) -> bool:
    """Whether a running product of ``row`` (mpf) leaves float64's normal range.

    ``safeops.math.cumprod`` keeps the float64 kernel's products there (an
    ``inf`` or 0 that later factors do not bring back, as TensorFlow's),
    as documented: such rows have no reference. No row of fewer than eight
    normal float32 factors gets here.
    """
    info = np.finfo(np.float64)
    product = ONE
    for x in row:
        product *= x
        if product != 0 and not (float(info.tiny) <= abs(product) <= float(info.max)):
            return True
    return False


def _row_softmax(row, f, weights, cotangent, epsilon):
    found = _shifted_probabilities(row, [ONE] * len(row))
    if found is None:
        zeros = [ZERO] * len(row)
        return zeros, (zeros,), (zeros,)
    _, p = found
    pv = sum((pi * v for pi, v in zip(p, cotangent)), ZERO)
    p_abs_v = sum((pi * abs(v) for pi, v in zip(p, cotangent)), ZERO)
    grad = [pi * (v - pv) for pi, v in zip(p, cotangent)]
    scale = [pi * (abs(v) + p_abs_v) for pi, v in zip(p, cotangent)]
    return p, (grad,), (scale,)


def _row_log_softmax(row, f, weights, cotangent, epsilon):
    parts = _lse_parts(row, [ONE] * len(row))
    if parts is None:
        zeros = [ZERO] * len(row)
        return [NEG_INF] * len(row), (zeros,), (zeros,)
    m, t, total_weight = parts
    log_sum = _log_of_parts(parts)
    y = [(x - m) - log_sum if x != NEG_INF else NEG_INF for x in row]
    live_v = [v if x != NEG_INF else ZERO for x, v in zip(row, cotangent)]
    total = sum(live_v, ZERO)
    total_abs = sum((abs(v) for v in live_v), ZERO)
    p = [CTX.exp(x - m) / total_weight if x != NEG_INF else ZERO for x in row]
    grad = [v - pi * total for v, pi in zip(live_v, p)]
    scale = [abs(v) + pi * total_abs for v, pi in zip(live_v, p)]
    return y, (grad,), (scale,)


def _row_norm(row, f, weights, cotangent, epsilon):
    sum_sq = CTX.fsum(x * x for x in row)
    n = CTX.sqrt(sum_sq)
    grad = [x / n for x in row] if n != 0 else [ZERO] * len(row)
    return [n], (grad,), ([abs(g) for g in grad],)


def _row_std(row, f, weights, cotangent, epsilon):
    n = len(row)
    m = CTX.fsum(row) / n
    s = CTX.sqrt(CTX.fsum((x - m) ** 2 for x in row) / n)
    grad = [(x - m) / (n * s) for x in row] if s != 0 else [ZERO] * n
    # Scale: the terms whose cancellation forms x - m, the entry and the mean's sum of |x_j| / n.
    spread = CTX.fsum(abs(x) for x in row) / n
    scale = [(abs(x) + spread) / (n * s) for x in row] if s != 0 else [ZERO] * n
    return [s], (grad,), (scale,)


def l2_floor(dtype, epsilon: float = 1e-12) -> float:
    """The documented floor of ``l2_normalize``'s sum of squares.

    ``max(epsilon, tiny of the compute dtype, (2 / max)**2)``: the last term
    keeps ``rsqrt(floor)`` finite in float16 (5.6e-10).
    """
    name = numpy_dtype(dtype).name
    compute = "float32" if name in ("float16", "bfloat16") else name
    return max(float(epsilon), fmt(compute).tiny, (2.0 / fmt(name).max_value) ** 2)


def _row_l2_normalize(row, f, weights, cotangent, epsilon):
    floor = CTX.mpf(epsilon)
    sum_sq = CTX.fsum(x * x for x in row)
    if sum_sq < floor:
        r = 1 / CTX.sqrt(floor)
        return [x * r for x in row], ([v * r for v in cotangent],), ([abs(v) * r for v in cotangent],)
    n = CTX.sqrt(sum_sq)
    u = [x / n for x in row]
    uv = CTX.fsum(ui * v for ui, v in zip(u, cotangent))
    uv_abs = CTX.fsum(abs(ui * v) for ui, v in zip(u, cotangent))
    grad = [(v - ui * uv) / n for ui, v in zip(u, cotangent)]
    scale = [(abs(v) + abs(ui) * uv_abs) / n for ui, v in zip(u, cotangent)]
    return u, (grad,), (scale,)


ROWWISE = {
    "reduce_logsumexp": _row_logsumexp, "cumulative_logsumexp": _row_cumulative_logsumexp,
    "cumprod": _row_cumprod,
    "softmax": _row_softmax, "log_softmax": _row_log_softmax,
    "norm": _row_norm, "l2_normalize": _row_l2_normalize, "reduce_std": _row_std,
    "reduce_euclidean_norm": _row_norm,
}

#: Row ops whose value has one entry per row (the others keep the row's shape).
REDUCING = ("reduce_logsumexp", "norm", "reduce_std", "reduce_euclidean_norm")

#: Row ops that take ``-inf`` entries as masks (the others need finite rows).
MASKING = ("reduce_logsumexp", "cumulative_logsumexp", "softmax", "log_softmax")


def rowwise(name: str, x, dtype, *, weights=None, cotangent=None, epsilon: float = 1e-12,
            flush: bool = True) -> Reference:
    """Reference for a row op over the last axis of the matrix ``x``.

    ``weights`` (``reduce_logsumexp`` only) must be finite and nonnegative.
    ``cotangent`` is the upstream gradient for the ops whose output has the
    row's shape (default: ones). Rows with NaN or ``+inf`` (and, except for
    the log-sum-exp family, ``-inf``) are undefined. ``l2_normalize`` rows
    whose sum of squares lies within 1e-3 (relative) of the floor are
    undefined too: the op switches formulas there and rounding decides the
    side; so are ``cumprod`` rows whose running product leaves float64's
    range (:func:`cumprod_leaves_float64`).
    """
    f = fmt(dtype)
    fn = ROWWISE[name]
    x = np.asarray(x, dtype=numpy_dtype(dtype)).astype(np.float64)
    rows, cols = x.shape
    if cotangent is None:
        cotangent = np.ones_like(x)
    cotangent = np.broadcast_to(np.asarray(cotangent, dtype=numpy_dtype(dtype)).astype(np.float64), x.shape)
    if weights is not None:
        weights = np.broadcast_to(np.asarray(weights, dtype=numpy_dtype(dtype)).astype(np.float64), x.shape)
    floor = l2_floor(dtype, epsilon)
    n_grads = 2 if (name == "reduce_logsumexp" and weights is not None) else 1
    out_cols = 1 if name in REDUCING else cols
    values, grads, scales = [], [[] for _ in range(n_grads)], [[] for _ in range(n_grads)]
    row_ok = np.ones(rows, dtype=bool)
    for r in range(rows):
        xr = x[r]
        bad = np.isnan(xr) | (xr == np.inf) | ((xr == -np.inf) & (name not in MASKING))
        if weights is not None:
            bad |= ~np.isfinite(weights[r]) | (weights[r] < 0)
        mp_row = [NEG_INF if v == -np.inf else _input(v, f, flush) for v in xr] if not bad.any() else None
        if mp_row is not None and name == "l2_normalize":
            s = CTX.fsum(v * v for v in mp_row)
            if abs(s / CTX.mpf(floor) - 1) < 1e-3:
                mp_row = None
        if mp_row is not None and name == "cumprod" and cumprod_leaves_float64(mp_row):
            mp_row = None
        if mp_row is None:
            row_ok[r] = False
            values.append([_NAN] * out_cols)
            for g, s in zip(grads, scales):
                g.append([_NAN] * cols)
                s.append([_NAN] * cols)
            continue
        # Subnormal weights count as 0, like subnormal inputs (contract C3).
        w = [CTX.mpf(_input(v, f, flush)) for v in weights[r]] if weights is not None else None
        v_row = [CTX.mpf(v) for v in cotangent[r]]
        val, gs, ss = fn(mp_row, f, w, v_row, floor)
        values.append(val)
        for k in range(n_grads):
            grads[k].append(gs[k])
            scales[k].append(ss[k])
    defined = np.repeat(row_ok[:, None], cols, axis=1)
    return Reference(
        value=to_dtype(values, dtype).reshape(rows, out_cols)[:, 0] if name in REDUCING
        else to_dtype(values, dtype),
        grads=tuple(_to_float64(g) for g in grads),
        scales=tuple(_to_float64(s) for s in scales),
        defined=defined,
        value_defined=row_ok if name in REDUCING else defined,
    )

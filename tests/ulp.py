"""Distances between floating-point results: ULP steps for values, relative error for gradients.

``ulp_distance(a, b, dtype)`` counts the representable numbers of ``dtype``
between ``a`` and ``b``: it maps each float to an integer that increases with
the float (the bit pattern, mirrored for negatives) and subtracts. So

* ``+0`` and ``-0`` are at distance 0 (they map to the same integer);
* a subnormal counts its steps like any other number (the helpers that apply
  contract C3 flush subnormals to 0 first, see :func:`flush_subnormal`);
* ``inf`` is one step beyond the largest finite number, so a finite result
  where the reference is ``inf`` is not "close";
* NaN against NaN is 0, NaN against anything else is infinitely far.

Both arguments must already be values of ``dtype`` (the reference rounds
correctly to ``dtype``, see ``tests/reference.py``). Against a correctly
rounded reference an integer distance of ``k`` means a true error of at
most ``k + 1/2`` ULP, and a true error of at most ``k`` ULP gives a distance
of at most ``k``: so ``distance <= 4`` is exactly the test of C3's "at most
4 ULP" at the resolution of the dtype.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

#: Unsigned integer type of the same width as each float type, for bit views.
_BITS = {
    np.dtype(np.float16): (np.uint16, 16),
    np.dtype(ml_dtypes.bfloat16): (np.uint16, 16),
    np.dtype(np.float32): (np.uint32, 32),
    np.dtype(np.float64): (np.uint64, 64),
}

#: Contract C3 value bounds, in ULP of the output dtype.
VALUE_ULP = {"float16": 1, "bfloat16": 1, "float32": 4, "float64": 4}

#: Contract C3 gradient bounds (relative error). float16 and bfloat16 round
#: a float32 gradient once: at most one ULP of the output, ``eps`` relative.
GRAD_RTOL = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 1e-5, "float64": 1e-12}


def numpy_dtype(dtype) -> np.dtype:
    """``np.dtype`` for a name, NumPy dtype or ``tf.DType`` (bfloat16 from ml_dtypes)."""
    name = getattr(dtype, "name", None) or np.dtype(dtype).name
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def finfo(dtype):
    dt = numpy_dtype(dtype)
    return ml_dtypes.finfo(dt) if dt == np.dtype(ml_dtypes.bfloat16) else np.finfo(dt)


def ordered(values, dtype) -> np.ndarray:
    """int64 integers that order like the floats of ``dtype``; +0 and -0 both map to 0."""
    dt = numpy_dtype(dtype)
    uint, width = _BITS[dt]
    bits = np.ascontiguousarray(np.asarray(values, dtype=dt)).view(uint).astype(np.uint64)
    sign = np.uint64(1 << (width - 1))
    magnitude = (bits & (sign - np.uint64(1))).astype(np.int64)
    return np.where((bits & sign) != 0, -magnitude, magnitude)


def _step_count(oa: np.ndarray, ob: np.ndarray) -> np.ndarray:
    """``|oa - ob|`` as float64 without int64 overflow (opposite signs add magnitudes)."""
    same_side = (oa >= 0) == (ob >= 0)
    near = np.abs(np.where(same_side, oa - ob, 0)).astype(np.float64)
    far = np.abs(oa).astype(np.float64) + np.abs(ob).astype(np.float64)
    return np.where(same_side, near, far)


def ulp_distance(a, b, dtype) -> np.ndarray:
    """Number of representable ``dtype`` values between ``a`` and ``b`` (float64 array).

    NaN vs NaN is 0, NaN vs a number ``inf``; ``inf`` vs ``inf`` of the same
    sign is 0.
    """
    dt = numpy_dtype(dtype)
    a = np.asarray(a, dtype=dt)
    b = np.asarray(b, dtype=dt)
    a, b = np.broadcast_arrays(a, b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    safe_a = np.where(nan_a, 0.0, a64).astype(dt)
    safe_b = np.where(nan_b, 0.0, b64).astype(dt)
    d = _step_count(ordered(safe_a, dt), ordered(safe_b, dt))
    d = np.where(nan_a & nan_b, 0.0, d)
    return np.where(nan_a ^ nan_b, np.inf, d)


def flush_subnormal(values, dtype) -> np.ndarray:
    """``values`` with every subnormal of ``dtype`` replaced by a zero of the same sign (C3)."""
    dt = numpy_dtype(dtype)
    v = np.asarray(values, dtype=dt)
    v64 = v.astype(np.float64)
    tiny = float(finfo(dt).tiny)
    sub = (np.abs(v64) < tiny) & (v64 != 0)
    return np.where(sub, np.copysign(0.0, v64), v64).astype(dt)


def value_ulps(got, exact, dtype) -> np.ndarray:
    """C3's value error: ULP distance after flushing subnormals of both sides to 0."""
    return ulp_distance(flush_subnormal(got, dtype), flush_subnormal(exact, dtype), dtype)


def ulp_of(values, dtype) -> np.ndarray:
    """Spacing of ``dtype`` at ``values`` (float64), ``tiny * eps`` in the subnormal range."""
    info = finfo(dtype)
    mag = np.maximum(np.abs(np.asarray(values, dtype=np.float64)), float(info.tiny))
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log2(mag))
    return np.exp2(exponent - int(info.nmant))


def relative_error(got, exact, floor=0.0) -> np.ndarray:
    """``|got - exact| / max(|exact|, floor)`` elementwise, as float64.

    ``floor`` is the magnitude below which an error is judged in absolute
    terms (a gradient that is "tiny in absolute terms", or the size of the
    terms whose cancellation formed ``exact``). Equal infinities and NaN
    against NaN count as 0; any other non-finite mismatch as ``inf``.
    """
    g = np.asarray(got, dtype=np.float64)
    e = np.asarray(exact, dtype=np.float64)
    g, e = np.broadcast_arrays(g, e)
    floor = np.broadcast_to(np.asarray(floor, dtype=np.float64), e.shape)
    same = (g == e) | (np.isnan(g) & np.isnan(e))
    finite = np.isfinite(g) & np.isfinite(e)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        denom = np.maximum(np.abs(e), floor)
        err = np.where(denom > 0, np.abs(g - e) / np.where(denom > 0, denom, 1.0), np.abs(g - e) * np.inf)
    err = np.where(finite, err, np.inf)
    return np.where(same, 0.0, err)


#: The float64 ULPs of a row's largest ``|x|`` that the exponent of a
#: ``cumulative_logsumexp`` gradient term may carry in a row that spans more
#: than :data:`LINEAR_SPAN`: there ``exp(x_i - y_j)`` is formed from the output
#: ``y_j``, rounded in float64, and the running log-sum-exp of a short row
#: rounds a few times (tests/test_contract.py).
EXPONENT_ULPS = 8


#: A row whose finite entries span more than this takes the rounded exponent
#: (``safeops.math._logsumexp._LINEAR_SPAN``); narrower rows get no slack.
LINEAR_SPAN = 500.0


def exponent_slack(x) -> np.ndarray:
    """Per row of ``x`` (kept as a column), the absolute exponent error :data:`EXPONENT_ULPS` allows.

    0 for rows whose finite entries all lie within :data:`LINEAR_SPAN` of the
    row's maximum (``cumulative_logsumexp``'s gradient does not form
    ``x_i - y_j`` there).
    """
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    a = np.where(finite, np.abs(x), 0.0)
    top = np.max(a, axis=-1, keepdims=True) + np.log(a.shape[-1])
    # The op's own test, rounding included: an entry below the row's maximum minus the span.
    with np.errstate(invalid="ignore"):
        m = np.max(np.where(finite, x, -np.inf), axis=-1, keepdims=True)
        wide = np.any(finite & (x < m - LINEAR_SPAN), axis=-1, keepdims=True)
    unusual = np.any(np.isnan(x) | (x == np.inf), axis=-1, keepdims=True)
    with np.errstate(over="ignore"):  # NumPy's spacing of the largest float64 is inf (no next number)
        slack = EXPONENT_ULPS * np.spacing(np.minimum(top, np.finfo(np.float64).max))
    return np.where(wide | unusual, slack, 0.0)


def beyond_exponent_slack(got, exact, scale, slack) -> np.ndarray:
    """:func:`relative_error` of the part of ``|got - exact|`` beyond ``slack`` times the terms' ``scale``."""
    g, e = np.broadcast_arrays(np.asarray(got, dtype=np.float64), np.asarray(exact, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        excess = np.maximum(np.abs(g - e) - slack * np.asarray(scale, dtype=np.float64), 0.0)
    return np.where(np.isfinite(g - e), relative_error(e + np.sign(g - e) * excess, e, scale),
                    relative_error(g, e, scale))


def ftz_ulps(got, exact, dtype) -> np.ndarray:
    """C3's value error under flush-to-zero: :func:`value_ulps`, or ``|got - exact| / tiny`` if smaller.

    TensorFlow on CPU flushes every subnormal intermediate to 0, so near 0
    the resolution of a computation is ``tiny``, not the subnormal spacing:
    a softmax probability of 2.1e-38 formed as a quotient whose intermediate
    underflows comes back as 0. Measuring the error in units of ``tiny``
    where that is the larger unit applies C3's "subnormals are 0" rule to
    results as it applies to inputs; away from the underflow threshold it
    changes nothing.
    """
    tiny = float(finfo(dtype).tiny)
    g = np.asarray(got, dtype=numpy_dtype(dtype)).astype(np.float64)
    e = np.asarray(exact, dtype=numpy_dtype(dtype)).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        absolute = np.abs(g - e) / tiny
    absolute = np.where(np.isfinite(absolute), absolute, np.inf)
    return np.minimum(value_ulps(got, exact, dtype), absolute)

"""Edge-case regression tests for the sigmoid family of ``safeops.math``.

One class per op; every edge named in an op's docstring has a test named
after it, in eager mode, under ``tf.function`` and under
``tf.function(jit_compile=True)``, in all four float dtypes: value,
gradient and second derivative (nested ``GradientTape``). All edge points of
one op are evaluated together, once per (dtype, mode), and cached for the
module. Spot values and derivatives come from mpmath at 50 digits, at
``|x|`` of 20, 50, 100 and 1e4 where TensorFlow's own kernels lose digits.
The generic property and ULP tests live in ``tests/test_contract.py``.
"""

from __future__ import annotations

import functools
import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops import _dtypes

mpmath.mp.dps = 50

INF, NAN = math.inf, math.nan
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
MODES = ["eager", "function", "jit"]
WIDE = [tf.float32, tf.float64]


@pytest.fixture(params=DTYPES, ids=lambda d: d.name)
def dtype(request):
    return request.param


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


# ----------------------------------------------------------------------------
# Evaluation: value, gradient(s) and second derivatives at named points.


def _in_mode(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "jit"), autograph=False)


def _unary_derivatives(op):
    def run(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = op(x)
            g = inner.gradient(y, x)
        return y, g, outer.gradient(g, x)

    return run


def _numpy(t):
    return tf.cast(t, tf.float64).numpy()


@functools.lru_cache(maxsize=None)
def _unary(op_name, dtype_name, mode):
    """``{point: (y, g, h)}`` as float64 numbers for the op's POINTS."""
    points = UNARY_POINTS[op_name]
    x = tf.constant(list(points.values()), dtype=tf.as_dtype(dtype_name))
    out = _in_mode(_unary_derivatives(getattr(tfm, op_name)), mode)(x)
    arrays = [_numpy(t) for t in out]
    return {name: tuple(a[i] for a in arrays) for i, name in enumerate(points)}


def at(op_name, dtype, mode, point):
    return _unary(op_name, dtype.name, mode)[point]


def rounded(value, dtype):
    """``value`` rounded to ``dtype`` (as TensorFlow would), back as a float."""
    return float(_numpy(tf.constant(value, dtype=tf.float64) if dtype == tf.float64
                        else tf.cast(tf.constant(value, tf.float64), dtype)))


def ulp(value, dtype):
    """One unit in the last place of ``value`` in ``dtype`` (normal range)."""
    info = _dtypes.finfo(dtype)
    mag = max(abs(float(value)), float(info.tiny))
    return 2.0 ** (math.floor(math.log2(mag)) - int(info.nmant))


def assert_ulps(got, exact, dtype, limit=None):
    """``got`` within ``limit`` ULP of the mpmath ``exact`` (4, or 1 for half dtypes)."""
    limit = limit if limit is not None else (1 if dtype in (tf.float16, tf.bfloat16) else 4)
    exact = float(exact)
    if abs(exact) < _dtypes.tiny(dtype):  # subnormal results are flushed: 0 is exact
        assert abs(got) <= _dtypes.tiny(dtype)
        return
    err = abs(got - exact) / ulp(exact, dtype)
    assert err <= limit, f"{got!r} vs {exact!r}: {err:.2f} ULP"


def grad_rtol(dtype):
    return {tf.float16: 2e-3, tf.bfloat16: 1.6e-2, tf.float32: 1e-5, tf.float64: 1e-12}[dtype]


def assert_grad(got, exact, dtype):
    """Relative error within the contract's gradient tolerance (halves: 2 ULP).

    Exact values beyond the dtype's range must come back saturated at its
    largest finite value (second derivatives); tiny ones as tiny.
    """
    exact = float(exact)
    if abs(exact) > _dtypes.max_value(dtype):
        assert got == math.copysign(_dtypes.max_value(dtype), exact), (got, exact)
        return
    if abs(exact) < _dtypes.tiny(dtype) * 2 ** 8:  # tiny in absolute terms
        assert abs(got) <= _dtypes.tiny(dtype) * 2 ** 8
        return
    assert got == pytest.approx(exact, rel=grad_rtol(dtype)), (got, exact)


def assert_all_nan(*values):
    assert all(math.isnan(v) for v in values), values


def input_of(value, dtype):
    """The float ``dtype`` actually receives for the literal ``value``."""
    return rounded(value, dtype)


# ----------------------------------------------------------------------------
# Points and mpmath references (value, first and second derivative).

LARGE = {"twenty": 20.0, "fifty": 50.0, "hundred": 100.0, "ten_thousand": 1e4}
SIGNED_LARGE = {**LARGE, **{f"minus_{k}": -v for k, v in LARGE.items()}}


def _sigma(x):
    return 1 / (1 + mpmath.exp(-x))


REFERENCE = {
    "sigmoid": (_sigma,
                lambda x: _sigma(x) * _sigma(-x),
                lambda x: _sigma(x) * _sigma(-x) * (1 - 2 * _sigma(x))),
    "log_sigmoid": (lambda x: -mpmath.log1p(mpmath.exp(-x)),
                    lambda x: _sigma(-x),
                    lambda x: -_sigma(x) * _sigma(-x)),
    "softplus": (lambda x: mpmath.log1p(mpmath.exp(x)),
                 _sigma,
                 lambda x: _sigma(x) * _sigma(-x)),
    "softplus_inverse": (lambda x: mpmath.log(mpmath.expm1(x)),
                         lambda x: -1 / mpmath.expm1(-x),
                         lambda x: -mpmath.exp(-x) / mpmath.expm1(-x) ** 2),
}

UNARY_POINTS = {
    "sigmoid": {
        "zero": 0.0, "one": 1.0, "minus_one": -1.0, "plus_inf": INF, "minus_inf": -INF,
        "nan": NAN, "tf_saturates": 17.5, **SIGNED_LARGE,
    },
    "log_sigmoid": {
        "zero": 0.0, "one": 1.0, "minus_one": -1.0, "plus_inf": INF, "minus_inf": -INF,
        "nan": NAN, "tf_switch": 13.943141, "switch": 15.9375, **SIGNED_LARGE,
    },
    "softplus": {
        "zero": 0.0, "one": 1.0, "minus_one": -1.0, "plus_inf": INF, "minus_inf": -INF,
        "nan": NAN, "tf_switch": -13.942852, "switch": 15.9375, **SIGNED_LARGE,
    },
    "softplus_inverse": {
        "zero": 0.0, "negative": -1.0, "minus_inf": -INF, "plus_inf": INF, "nan": NAN,
        "small": 2.0 ** -10, "below_log_4_3": 0.28515625, "above_log_4_3": 0.2890625,
        "half": 0.5, "log2": math.log(2.0), "one": 1.0, "tiny_32": 1e-6, **LARGE,
    },
}

FINITE = [name for name, v in UNARY_POINTS["sigmoid"].items() if math.isfinite(v)]


def check_against_mpmath(op_name, dtype, mode, point):
    value, first, second = REFERENCE[op_name]
    x = mpmath.mpf(input_of(UNARY_POINTS[op_name][point], dtype))
    y, g, h = at(op_name, dtype, mode, point)
    assert_ulps(y, value(x), dtype)
    assert_grad(g, first(x), dtype)
    assert_grad(h, second(x), dtype)


def check_finite(op_name, dtype, mode):
    for name, v in UNARY_POINTS[op_name].items():
        if math.isfinite(v):
            assert all(math.isfinite(t) for t in at(op_name, dtype, mode, name)), name


# ----------------------------------------------------------------------------
# sigmoid


class TestSigmoid:
    @pytest.mark.parametrize("point", ["zero", "one", "minus_one", *SIGNED_LARGE])
    def test_matches_mpmath_value_gradient_and_second_derivative(self, dtype, mode, point):
        check_against_mpmath("sigmoid", dtype, mode, point)

    def test_value_gradient_and_second_derivative_are_finite(self, dtype, mode):
        check_finite("sigmoid", dtype, mode)

    @pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=lambda d: d.name)
    def test_gradient_does_not_cancel_where_one_minus_sigmoid_is_zero(self, dtype, mode):
        # y * (1 - y) is 0 in float32 from x = 17, in float64 from x = 37.
        point = "twenty" if dtype == tf.float32 else "fifty"
        x = mpmath.mpf(UNARY_POINTS["sigmoid"][point])
        g = at("sigmoid", dtype, mode, point)[1]
        assert g > 0
        assert_grad(g, _sigma(x) * _sigma(-x), dtype)

    def test_plus_inf_is_one_with_zero_gradient(self, dtype, mode):
        assert at("sigmoid", dtype, mode, "plus_inf")[:2] == (1.0, 0.0)

    def test_minus_inf_is_zero_with_zero_gradient(self, dtype, mode):
        assert at("sigmoid", dtype, mode, "minus_inf")[:2] == (0.0, 0.0)

    def test_ten_thousand_saturates_exactly(self, dtype, mode):
        assert at("sigmoid", dtype, mode, "ten_thousand")[:2] == (1.0, 0.0)
        assert at("sigmoid", dtype, mode, "minus_ten_thousand")[:2] == (0.0, 0.0)

    def test_nan_propagates(self, dtype, mode):
        assert_all_nan(*at("sigmoid", dtype, mode, "nan"))

    def test_gradient_is_even(self, dtype, mode):
        for name in ("one", "twenty", "fifty"):
            g_plus = at("sigmoid", dtype, mode, name)[1]
            g_minus = at("sigmoid", dtype, mode, "minus_" + name)[1]
            # not bit-equal: Eigen's vectorised and scalar tails may differ
            assert g_plus == pytest.approx(g_minus, rel=grad_rtol(dtype)), name


# ----------------------------------------------------------------------------
# log_sigmoid


class TestLogSigmoid:
    @pytest.mark.parametrize("point", ["zero", "one", "minus_one", "tf_switch", "switch", *SIGNED_LARGE])
    def test_matches_mpmath_value_gradient_and_second_derivative(self, dtype, mode, point):
        check_against_mpmath("log_sigmoid", dtype, mode, point)

    def test_value_gradient_and_second_derivative_are_finite(self, dtype, mode):
        check_finite("log_sigmoid", dtype, mode)

    @pytest.mark.parametrize("point", ["twenty", "fifty"])
    def test_gradient_is_sigmoid_of_minus_x_not_one_minus_sigmoid(self, dtype, mode, point):
        x = UNARY_POINTS["log_sigmoid"][point]
        g = at("log_sigmoid", dtype, mode, point)[1]
        assert_grad(g, _sigma(-mpmath.mpf(x)), dtype)
        if float(_sigma(-mpmath.mpf(x))) > _dtypes.tiny(dtype):
            assert g > 0

    def test_large_negative_is_x_with_unit_gradient(self, dtype, mode):
        y, g, h = at("log_sigmoid", dtype, mode, "minus_ten_thousand")
        assert (y, g) == (input_of(-1e4, dtype), 1.0) and h == 0.0

    def test_minus_inf_is_minus_inf_with_unit_gradient(self, dtype, mode):
        y, g, h = at("log_sigmoid", dtype, mode, "minus_inf")
        assert (y, g) == (-INF, 1.0) and not math.isnan(h)

    def test_plus_inf_is_zero_with_zero_gradient(self, dtype, mode):
        y, g, h = at("log_sigmoid", dtype, mode, "plus_inf")
        assert (y, g) == (0.0, 0.0) and not math.isnan(h)

    def test_nan_propagates(self, dtype, mode):
        assert_all_nan(*at("log_sigmoid", dtype, mode, "nan"))


# ----------------------------------------------------------------------------
# softplus


class TestSoftplus:
    @pytest.mark.parametrize("point", ["zero", "one", "minus_one", "tf_switch", "switch", *SIGNED_LARGE])
    def test_matches_mpmath_value_gradient_and_second_derivative(self, dtype, mode, point):
        check_against_mpmath("softplus", dtype, mode, point)

    def test_value_gradient_and_second_derivative_are_finite(self, dtype, mode):
        check_finite("softplus", dtype, mode)

    def test_large_positive_is_x_with_unit_gradient(self, dtype, mode):
        y, g, h = at("softplus", dtype, mode, "ten_thousand")
        assert (y, g) == (input_of(1e4, dtype), 1.0) and h == 0.0

    def test_large_negative_underflows_to_zero(self, dtype, mode):
        assert at("softplus", dtype, mode, "minus_ten_thousand")[:2] == (0.0, 0.0)

    def test_plus_inf_is_inf_with_unit_gradient(self, dtype, mode):
        y, g, h = at("softplus", dtype, mode, "plus_inf")
        assert (y, g) == (INF, 1.0) and not math.isnan(h)

    def test_minus_inf_is_zero_with_zero_gradient(self, dtype, mode):
        y, g, h = at("softplus", dtype, mode, "minus_inf")
        assert (y, g) == (0.0, 0.0) and not math.isnan(h)

    def test_nan_propagates(self, dtype, mode):
        assert_all_nan(*at("softplus", dtype, mode, "nan"))

    def test_takes_tensorflows_argument_name(self):
        np.testing.assert_allclose(tfm.softplus(features=[0.0]).numpy(), [math.log(2.0)], rtol=1e-7)


# ----------------------------------------------------------------------------
# softplus_inverse


class TestSoftplusInverse:
    @pytest.mark.parametrize("point", ["zero", "negative", "minus_inf"])
    def test_at_or_below_zero_is_clamped_at_tiny_with_positive_gradient(self, dtype, mode, point):
        t = _dtypes.tiny(dtype)
        y, g, h = at("softplus_inverse", dtype, mode, point)
        assert y == pytest.approx(math.log(t), rel=grad_rtol(dtype))
        assert g == pytest.approx(1.0 / t, rel=grad_rtol(dtype))
        assert g > 0 and math.isfinite(g) and h == 0.0

    @pytest.mark.parametrize(
        "point", ["small", "below_log_4_3", "above_log_4_3", "half", "log2", "one", *LARGE])
    def test_matches_mpmath_value_gradient_and_second_derivative(self, dtype, mode, point):
        check_against_mpmath("softplus_inverse", dtype, mode, point)

    @pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=lambda d: d.name)
    def test_tiny_argument_is_accurate(self, dtype, mode):
        check_against_mpmath("softplus_inverse", dtype, mode, "tiny_32")

    def test_zero_crossing_at_log2_keeps_relative_accuracy(self, dtype, mode):
        # The nearest float to log 2 maps to a tiny nonzero number (about
        # 2 (x - log 2)), not to 0 or to rounding noise.
        x = mpmath.mpf(input_of(math.log(2.0), dtype))
        y = at("softplus_inverse", dtype, mode, "log2")[0]
        exact = mpmath.log(mpmath.expm1(x))
        assert y != 0.0 and math.copysign(1.0, y) == math.copysign(1.0, float(exact))
        assert_ulps(y, exact, dtype)

    def test_value_gradient_and_second_derivative_are_finite(self, dtype, mode):
        check_finite("softplus_inverse", dtype, mode)

    def test_plus_inf_is_inf_with_unit_gradient(self, dtype, mode):
        y, g, h = at("softplus_inverse", dtype, mode, "plus_inf")
        # graph-mode float32 division on CPU may return 1/1 as 0.99999994
        assert y == INF and g == pytest.approx(1.0, rel=grad_rtol(dtype)) and not math.isnan(h)

    def test_nan_propagates(self, dtype, mode):
        assert_all_nan(*at("softplus_inverse", dtype, mode, "nan"))

    def test_inverts_softplus(self, mode):
        x = tf.constant([1e-3, 0.5, math.log(2.0), 3.0, 30.0], tf.float64)
        roundtrip = _in_mode(lambda v: tfm.softplus_inverse(tfm.softplus(v)), mode)(x)
        np.testing.assert_allclose(roundtrip.numpy(), x.numpy(), rtol=1e-13)


# ----------------------------------------------------------------------------
# Errors and names.

ARGS = {"sigmoid": "x", "log_sigmoid": "x", "softplus": "features", "softplus_inverse": "x"}


@pytest.mark.parametrize("op_name", sorted(ARGS))
@pytest.mark.parametrize("bad", [tf.constant([1, 2]), np.array([1, 2], np.int64), "a"], ids=["int32", "int64", "str"])
def test_non_float_input_raises_type_error_naming_the_argument(op_name, bad):
    with pytest.raises(TypeError, match=rf"safeops\.math\.{op_name}: {ARGS[op_name]} must be a floating-point"):
        getattr(tfm, op_name)(bad)


@pytest.mark.parametrize("op_name", sorted(ARGS))
def test_output_keeps_shape_and_dtype(op_name, dtype):
    x = tf.zeros([2, 3], dtype) + tf.constant(0.5, dtype)
    y = getattr(tfm, op_name)(x)
    assert y.shape == x.shape and y.dtype == dtype


@pytest.mark.parametrize("op_name", sorted(ARGS))
def test_name_scope_is_safeops_op_name(op_name):
    graph = tf.function(getattr(tfm, op_name)).get_concrete_function(
        tf.TensorSpec([2], tf.float32)).graph
    assert any(op.name.startswith(f"safeops/{op_name}/") for op in graph.get_operations())


@functools.lru_cache(maxsize=None)
def _softplus_sample():
    """Two points found at 5 ULP and 400 random ones in [-16, -1/4], with their reference values."""
    from tests import reference

    points = [float.fromhex("-0x1.0a05e0p+2"), float.fromhex("-0x1.038026p+1")]
    x = np.concatenate([points, np.random.default_rng(3).uniform(-16.0, -0.25, 400)]).astype(np.float32)
    return x, reference.elementwise("softplus", x, dtype=tf.float32).value


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
def test_softplus_family_within_four_ulp_where_tensorflows_float32_log1p_is_not(mode):
    """C3: TensorFlow's float32 log1p kernel is 4 ULP off on (0, 1/2); log1p(exp(x)) reached 5 ULP
    for x in [-16, -2] on tensors of 8 or more entries (its vectorised code)."""
    from tests.ulp import ftz_ulps

    x, exact = _softplus_sample()
    ops = {"softplus": tfm.softplus, "log_sigmoid": lambda t: -tfm.log_sigmoid(-t),
           "logaddexp": lambda t: tfm.logaddexp(tf.zeros_like(t), t)}
    fn = (lambda f: f) if mode == "eager" else (lambda f: tf.function(f, jit_compile=mode == "jit"))
    for name, op in ops.items():
        for size in (len(x), 8):      # a large call (inner XLA) and small eager ones (plain ops)
            got = np.concatenate([fn(op)(tf.constant(x[i:i + size])).numpy() for i in range(0, len(x), size)])
            assert np.max(ftz_ulps(got, exact, "float32")) <= 4, (name, size)

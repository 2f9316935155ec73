"""Edge-case regression tests for the clamped logarithms of ``safeops.math``.

One class per op; every edge named in an op's docstring has a test named
after it. Each edge is checked in eager mode, under ``tf.function`` and
under ``tf.function(jit_compile=True)``, in all four float dtypes: value,
gradient and second derivative (nested ``GradientTape``). All edge points of
one op are evaluated together, once per (dtype, mode), and cached for the
module, so the many small tests cost one trace each.

Spot values come from mpmath at 50 digits. The generic property, ULP and
Hypothesis tests live in ``tests/test_contract.py``; this file names edges.
"""

from __future__ import annotations

import functools
import math

import keras
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


def _binary_derivatives(op):
    def run(a, b):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([a, b])
            with tf.GradientTape() as inner:
                inner.watch([a, b])
                y = op(a, b)
            ga, gb = inner.gradient(y, [a, b])
        haa, hab = outer.gradient(ga, [a, b])
        hba, hbb = outer.gradient(gb, [a, b])
        return y, ga, gb, haa, hab, hba, hbb

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


@functools.lru_cache(maxsize=None)
def _binary(op_name, dtype_name, mode):
    """``{point: (y, ga, gb, haa, hab, hba, hbb)}`` for the op's PAIRS."""
    pairs = BINARY_POINTS[op_name]
    dt = tf.as_dtype(dtype_name)
    a = tf.constant([p[0] for p in pairs.values()], dtype=dt)
    b = tf.constant([p[1] for p in pairs.values()], dtype=dt)
    out = _in_mode(_binary_derivatives(getattr(tfm, op_name)), mode)(a, b)
    arrays = [_numpy(t) for t in out]
    return {name: tuple(arr[i] for arr in arrays) for i, name in enumerate(pairs)}


def at(op_name, dtype, mode, point):
    return _unary(op_name, dtype.name, mode)[point]


def at2(op_name, dtype, mode, point):
    return _binary(op_name, dtype.name, mode)[point]


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
# Points.

UNARY_POINTS = {
    "log1p": {
        "minus_one": -1.0, "below_minus_one": -3.0, "minus_inf": -INF, "plus_inf": INF,
        "nan": NAN, "zero": 0.0, "small": 2.0 ** -12, "near_minus_one": -0.99609375,
        "xla_float64_band": -0.4, "large": 1e4, "tiny_32": 1e-10,
    },
    "logit": {
        "zero": 0.0, "negative": -0.5, "minus_inf": -INF, "one": 1.0, "above_one": 2.0,
        "plus_inf": INF, "nan": NAN, "half": 0.5, "just_above_half": 0.50390625,
        "just_below_half": 0.49609375, "small": 2.0 ** -10, "near_one": 0.99609375,
        "quarter": 0.25, "tiny_32": 1e-30,
    },
    "log1mexp": {
        "zero": 0.0, "negative_zero": -0.0, "plus_inf": INF, "minus_inf": -INF, "nan": NAN,
        "small": 2.0 ** -10, "below_log2": 0.6875, "above_log2": 0.703125,
        "xla_float64_band": 1.0, "two": 2.0, "minus_two": -2.0, "twenty": 20.0,
        "minus_twenty": -20.0, "fifty": 50.0,
        "hundred": 100.0, "tiny_32": 1e-6,
    },
}

BINARY_POINTS = {
    "xlogy": {
        "x0_y0": (0.0, 0.0), "x0_negative_y": (0.0, -1.0), "x0_y_plus_inf": (0.0, INF),
        "x0_y_nan": (0.0, NAN), "x0_y_regular": (0.0, 3.0), "x_y0": (1.0, 0.0),
        "x_negative_y": (2.0, -3.0), "x_y_minus_inf": (2.0, -INF), "x_y_plus_inf": (1.0, INF),
        "x_nan": (NAN, 1.0), "x_inf_y1": (INF, 1.0), "regular": (0.75, 3.0),
        "regular_small_y": (-1.5, 2.0 ** -10), "x_nan_y0": (NAN, 0.0),
    },
    "xlog1py": {
        "x0_y_minus_one": (0.0, -1.0), "x0_y_below": (0.0, -5.0), "x0_y_plus_inf": (0.0, INF),
        "x0_y_nan": (0.0, NAN), "x_y_minus_one": (1.0, -1.0), "x_y_below": (2.0, -5.0),
        "x_y_minus_inf": (2.0, -INF), "x_y_plus_inf": (1.0, INF), "x_nan": (NAN, 0.5),
        "regular": (0.75, 2.0 ** -12), "xla_float64_band": (0.75, -0.4),
        "x_nan_y_minus_one": (NAN, -1.0),
    },
    "logaddexp": {
        "both_minus_inf": (-INF, -INF), "minus_inf_and_finite": (-INF, 2.0),
        "finite_and_minus_inf": (2.0, -INF), "plus_inf_and_finite": (INF, 2.0),
        "both_plus_inf": (INF, INF), "plus_inf_and_minus_inf": (INF, -INF),
        "nan_and_finite": (NAN, 1.0), "finite_and_nan": (1.0, NAN),
        "equal_large": (1000.0, 1000.0), "equal_very_negative": (-1e4, -1e4),
        "far_apart": (0.0, -50.0), "regular": (0.5, -0.25), "large_mixed": (100.0, 101.0),
        "near_zero_result": (-2.300344, -0.10560658),
    },
}


# ----------------------------------------------------------------------------
# log of a softmax or sigmoid output: taken from the logits


# Where each producer's logits are found: everywhere (a record, Keras' checked attribute) or
# only in a traced function (TensorFlow's Softmax/Sigmoid op; in eager mode a value has no op).
ACTIVATIONS = {
    "safeops_softmax": (tfm.softmax, "softmax", True),
    "safeops_softmax_axis0": (lambda z: tfm.softmax(tf.transpose(z), axis=0), "softmax_t", True),
    "keras_softmax": (keras.activations.softmax, "softmax", True),
    "tf_softmax": (tf.nn.softmax, "softmax", False),
    "tf_softmax_as_float16": (lambda z: tf.cast(tf.nn.softmax(tf.cast(z, tf.float16)), tf.float32),
                              "softmax16", False),
    "safeops_sigmoid": (tfm.sigmoid, "sigmoid", True),
    "keras_sigmoid": (keras.activations.sigmoid, "sigmoid", True),
    "tf_sigmoid": (tf.sigmoid, "sigmoid", False),
}


def _log_of_activation_reference(kind, z):
    """Exact log(activation(z)) and d sum(log(activation(z)) * w) / dz, in float64."""
    z = np.asarray(z, np.float64)
    w = np.array([1.0, 0.25, 0.5])
    if kind.startswith("sigmoid"):
        value = -np.logaddexp(0.0, -z)
        return value, w * np.exp(-np.logaddexp(0.0, z))   # sigmoid(-z)
    if kind == "softmax_t":
        z, w = z.T, w[:, None]
    if kind == "softmax16":
        z = z.astype(np.float16).astype(np.float64)
    value = z - np.logaddexp.reduce(z, axis=-1 if kind != "softmax_t" else 0, keepdims=True)
    p = np.exp(value)
    grad = w - p * np.sum(w * np.ones_like(p), axis=-1 if kind != "softmax_t" else 0, keepdims=True)
    return value, grad.T if kind == "softmax_t" else grad


@pytest.mark.parametrize("producer", sorted(ACTIVATIONS))
def test_log_of_an_activation_output_is_taken_from_the_logits(producer, mode):
    """log(softmax(z)) was log(tiny) with gradient 0 where a probability underflowed (C4 lost)."""
    activation, kind, everywhere = ACTIVATIONS[producer]
    z = tf.constant([[0.0, 200.0, -10.0]] if kind != "sigmoid" else [[-100.0, 0.0, 30.0]])
    w = tf.constant([1.0, 0.25, 0.5])

    def body(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = tfm.log(activation(z))
            total = tf.reduce_sum(value * (w if kind != "softmax_t" else w[:, None]))
        return value, tape.gradient(total, z)

    value, grad = (t.numpy().astype(np.float64) for t in _in_mode(body, mode)(z))
    want, want_grad = _log_of_activation_reference(kind, z.numpy())
    if mode == "eager" and not everywhere:
        # A value in eager mode: the clamp, as documented; the underflowed entry's gradient is lost.
        assert value.min() == pytest.approx(np.log(np.finfo(np.float32).tiny))
        return
    rtol = 1e-3 if kind == "softmax16" else 1e-6
    np.testing.assert_allclose(value, want, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=1e-6)


def test_log_of_an_activation_keeps_the_gradient_off_the_probabilities():
    """The gradient reaches the logits; a tape that watches the probabilities sees none (documented)."""
    z = tf.constant([[0.0, 200.0]])
    p = tfm.softmax(z)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([z, p])
        value = tfm.log(p)[:, 0]
    assert tape.gradient(value, p) is None
    np.testing.assert_allclose(tape.gradient(value, z).numpy(), [[1.0, -1.0]])   # e_0 - p
    # Anything else is a plain tensor: the clamp, with its live gradient 1/x.
    q = tf.identity(p)
    with tf.GradientTape() as tape:
        tape.watch(q)
        value = tfm.log(q)
    np.testing.assert_allclose(tape.gradient(value, q).numpy(), [[1 / np.finfo(np.float32).tiny, 1.0]])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("producer", ["safeops_softmax", "keras_softmax", "tf_softmax", "safeops_sigmoid"])
def test_log_of_an_activation_with_a_masked_logit_stays_finite(producer, mode):
    """log(softmax(z)) at a -inf (mask) logit was -inf once taken from the logits: y * log(p) NaN at 0."""
    activation, kind, everywhere = ACTIVATIONS[producer]
    z = tf.constant([[0.0, 2.0, -np.inf]])
    y = tf.constant([[1.0, 0.0, 0.0]] if kind == "softmax" else [[1.0, 1.0, 0.0]])

    def body(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = tfm.log(activation(z))
            loss = -tf.reduce_sum(y * value) - tf.reduce_sum(tfm.xlogy(y, activation(z)))
        return value, loss, tape.gradient(loss, z)

    value, loss, grad = (t.numpy().astype(np.float64) for t in _in_mode(body, mode)(z))
    assert value[0, 2] == pytest.approx(np.log(np.finfo(np.float32).tiny))   # the clamp's value at 0
    want, want_grad = _log_of_activation_reference(kind, [[0.0, 2.0, -1e4]])
    if mode != "eager" or everywhere:
        np.testing.assert_allclose(value[0, :2], want[0, :2], rtol=1e-6)
    y = y.numpy()
    np.testing.assert_allclose(loss, -2 * np.sum((y * want)[0, :2]), rtol=1e-6)
    grad_want = -2 * (y - np.exp(want) * y.sum() if kind == "softmax" else y * np.exp(-np.logaddexp(0, z)))
    np.testing.assert_allclose(grad, np.where(np.isfinite(z.numpy()), grad_want, 0.0), rtol=1e-6, atol=1e-7)


def test_log_of_an_activation_below_the_narrow_range_saturates():
    """float32 logits 1e5 apart, softmax cast to float16: log p is below float16's range: its lowest."""

    @tf.function
    def body(z):
        return tfm.log(tf.cast(tf.nn.softmax(z), tf.float16))

    value = body(tf.constant([[0.0, 1e5]])).numpy()
    np.testing.assert_array_equal(value, np.array([[np.finfo(np.float16).min, 0.0]], np.float16))


# The hand-written binary cross-entropy, four ways; only a sigmoid's complement is recovered.
_BINARY_FORMS = {
    "log": lambda y, p: -(y * tfm.log(p) + (1 - y) * tfm.log(1 - p)),
    "log1p": lambda y, p: -(y * tfm.log(p) + (1 - y) * tfm.log1p(-p)),
    "xlogy": lambda y, p: -(tfm.xlogy(y, p) + tfm.xlogy(1 - y, 1.0 - p)),
    "xlog1py": lambda y, p: -(tfm.xlogy(y, p) + tfm.xlog1py(1 - y, -p)),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", sorted(_BINARY_FORMS))
@pytest.mark.parametrize("producer", ["safeops_sigmoid", "keras_sigmoid", "tf_sigmoid"])
def test_a_hand_written_binary_crossentropy_is_taken_from_the_logits(producer, form, mode):
    """log(1 - sigmoid(z)) was 87.34 (the clamp) with gradient 0 once sigmoid(z) rounded to 1."""
    activation = ACTIVATIONS[producer][0]
    z = tf.constant([-200.0, -30.0, -1.0, 0.0, 2.0, 30.0, 200.0])
    y = tf.constant([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.75])

    def body(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = _BINARY_FORMS[form](y, activation(z))
        return loss, tape.gradient(loss, z)

    loss, grad = (t.numpy().astype(np.float64) for t in _in_mode(body, mode)(z))
    z64, y64 = z.numpy().astype(np.float64), y.numpy().astype(np.float64)
    want = y64 * np.logaddexp(0.0, -z64) + (1 - y64) * np.logaddexp(0.0, z64)
    want_grad = np.exp(-np.logaddexp(0.0, -z64)) - y64   # sigmoid(z) - y
    if mode == "eager":
        # A value has no op: 1 - p is a plain tensor, and its log the clamp (documented).
        floor = _dtypes.tiny(tf.float32) if form in ("log", "xlogy") else 1 - _dtypes.below_one(tf.float32)
        assert loss[5] == pytest.approx(-np.log(floor), rel=1e-6)
        if producer == "safeops_sigmoid":   # the boundary gradient 1/floor times sigmoid'(30) (README)
            assert grad[5] == pytest.approx(np.exp(-30.0) / floor, rel=1e-5)
        return
    np.testing.assert_allclose(loss, want, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-30)


def test_xlogy_of_an_activation_has_the_log_as_its_x_gradient():
    """xlogy(x, softmax(z)): d/dx is log p everywhere (x == 0 included), d/dz reaches the logits."""
    z = tf.constant([[0.0, 200.0, -np.inf]])
    x = tf.constant([[1.0, 0.0, 0.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, z])
        value = tfm.xlogy(x, tfm.softmax(z))
    np.testing.assert_allclose(value.numpy(), [[-200.0, 0.0, 0.0]])
    log_tiny = np.log(np.finfo(np.float32).tiny)
    np.testing.assert_allclose(tape.gradient(value, x).numpy(), [[-200.0, 0.0, log_tiny]], rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(value, z).numpy(), [[1.0, -1.0, 0.0]])


# ----------------------------------------------------------------------------
# log1p


class TestLog1p:
    def test_minus_one_is_clamped_with_boundary_gradient(self, dtype, mode):
        c = -_dtypes.below_one(dtype)
        y, g, h = at("log1p", dtype, mode, "minus_one")
        assert y == pytest.approx(math.log1p(c), rel=grad_rtol(dtype))
        assert g == pytest.approx(2.0 / _dtypes.eps(dtype), rel=grad_rtol(dtype))
        assert g > 0 and math.isfinite(g) and math.isfinite(h)

    @pytest.mark.parametrize("point", ["below_minus_one", "minus_inf"])
    def test_below_minus_one_is_clamped_with_boundary_gradient(self, dtype, mode, point):
        y, g, h = at("log1p", dtype, mode, point)
        y1, g1, _ = at("log1p", dtype, mode, "minus_one")
        assert (y, g) == (y1, g1)
        assert h == 0.0

    def test_plus_inf_is_inf_with_zero_gradient(self, dtype, mode):
        y, g, h = at("log1p", dtype, mode, "plus_inf")
        assert y == INF and g == 0.0 and math.isfinite(h)

    def test_nan_propagates(self, dtype, mode):
        assert_all_nan(*at("log1p", dtype, mode, "nan"))

    def test_second_derivative_is_finite(self, dtype, mode):
        for name in ("minus_one", "near_minus_one", "zero", "small", "large"):
            assert all(math.isfinite(v) for v in at("log1p", dtype, mode, name)), name

    @pytest.mark.parametrize("point", ["zero", "small", "near_minus_one", "xla_float64_band", "large"])
    def test_matches_mpmath(self, dtype, mode, point):
        x = input_of(UNARY_POINTS["log1p"][point], dtype)
        y, g, h = at("log1p", dtype, mode, point)
        assert_ulps(y, mpmath.log1p(x), dtype)
        assert_grad(g, 1 / (1 + mpmath.mpf(x)), dtype)
        assert_grad(h, -1 / (1 + mpmath.mpf(x)) ** 2, dtype)

    @pytest.mark.parametrize("dtype", WIDE, ids=lambda d: d.name)
    def test_tiny_argument_keeps_its_digits(self, dtype, mode):
        x = input_of(1e-10, dtype)
        y, g, _ = at("log1p", dtype, mode, "tiny_32")
        assert_ulps(y, mpmath.log1p(x), dtype)

    def test_subnormal_argument_is_flushed_as_documented(self, dtype, mode):
        # C3: TensorFlow's CPU arithmetic flushes subnormals, so log1p of one
        # is 0 (with gradient 1) where the exact result, x, is below tiny;
        # float16 ones are normal once widened to float32 and are kept. The
        # docstring said nothing about it.
        assert "Subnormal ``x``" in tfm.log1p.__doc__ and "flushed to zero" in tfm.log1p.__doc__
        x = tf.constant([_dtypes.tiny(dtype) / 4, -_dtypes.tiny(dtype) / 4], dtype)
        y, g, _ = (_numpy(t) for t in _in_mode(_unary_derivatives(tfm.log1p), mode)(x))
        np.testing.assert_array_equal(g, [1.0, 1.0])
        if dtype == tf.float16:
            np.testing.assert_array_equal(y, _numpy(x))
        else:
            np.testing.assert_array_equal(y, [0.0, 0.0])
            assert list(np.signbit(y)) == [False, True]


# ----------------------------------------------------------------------------
# logit


class TestLogit:
    @pytest.mark.parametrize("point", ["zero", "negative", "minus_inf"])
    def test_at_or_below_zero_is_clamped_at_tiny_with_positive_gradient(self, dtype, mode, point):
        t = _dtypes.tiny(dtype)
        y, g, h = at("logit", dtype, mode, point)
        assert y == pytest.approx(math.log(t) - math.log1p(-t), rel=grad_rtol(dtype))
        assert g == pytest.approx(1.0 / t, rel=grad_rtol(dtype))
        assert g > 0 and math.isfinite(g) and h == 0.0

    @pytest.mark.parametrize("point", ["one", "above_one", "plus_inf"])
    def test_at_or_above_one_is_clamped_below_one_with_positive_gradient(self, dtype, mode, point):
        b = _dtypes.below_one(dtype)
        y, g, h = at("logit", dtype, mode, point)
        assert y == pytest.approx(math.log(b / (1 - b)), rel=grad_rtol(dtype))
        assert g == pytest.approx(1.0 / (b * (1 - b)), rel=grad_rtol(dtype))
        assert g > 0 and math.isfinite(g) and math.isfinite(h)

    def test_half_is_exactly_zero_with_gradient_four(self, dtype, mode):
        y, g, h = at("logit", dtype, mode, "half")
        # graph-mode float32 division is not always correctly rounded on CPU
        # (1/0.25 gives 3.9999998 for tensors of 14+ elements, TF 2.21)
        assert y == 0.0 and g == pytest.approx(4.0, rel=grad_rtol(dtype)) and h == 0.0

    def test_nan_propagates(self, dtype, mode):
        assert_all_nan(*at("logit", dtype, mode, "nan"))

    @pytest.mark.parametrize(
        "point", ["just_above_half", "just_below_half", "small", "near_one", "quarter"])
    def test_matches_mpmath_near_half_zero_and_one(self, dtype, mode, point):
        x = mpmath.mpf(input_of(UNARY_POINTS["logit"][point], dtype))
        y, g, h = at("logit", dtype, mode, point)
        assert_ulps(y, mpmath.log(x / (1 - x)), dtype)
        assert_grad(g, 1 / (x * (1 - x)), dtype)
        assert math.isfinite(h)

    @pytest.mark.parametrize("dtype", WIDE, ids=lambda d: d.name)
    def test_tiny_probability_is_not_clamped(self, dtype, mode):
        x = mpmath.mpf(input_of(1e-30, dtype))
        y, g, _ = at("logit", dtype, mode, "tiny_32")
        assert_ulps(y, mpmath.log(x / (1 - x)), dtype)
        assert_grad(g, 1 / (x * (1 - x)), dtype)


# ----------------------------------------------------------------------------
# xlogy / xlog1py


class TestXlogy:
    @pytest.mark.parametrize("point", ["x0_y0", "x0_negative_y", "x0_y_plus_inf", "x0_y_regular"])
    def test_x_zero_gives_zero_and_zero_gradient_wrt_y(self, dtype, mode, point):
        y, gx, gy, *second = at2("xlogy", dtype, mode, point)
        assert y == 0.0 and gy == 0.0
        yv = input_of(BINARY_POINTS["xlogy"][point][1], dtype)
        expected_gx = math.log(max(yv, _dtypes.tiny(dtype))) if yv < INF else INF
        assert gx == pytest.approx(expected_gx, rel=grad_rtol(dtype))

    def test_x_zero_and_nan_y_is_nan(self, dtype, mode):
        y, gx, gy, *_ = at2("xlogy", dtype, mode, "x0_y_nan")
        assert_all_nan(y, gx, gy)

    @pytest.mark.parametrize("point", ["x_y0", "x_negative_y", "x_y_minus_inf"])
    def test_y_at_or_below_zero_is_clamped_with_live_gradient(self, dtype, mode, point):
        t = _dtypes.tiny(dtype)
        x = BINARY_POINTS["xlogy"][point][0]
        y, gx, gy, haa, hab, hba, hbb = at2("xlogy", dtype, mode, point)
        assert y == pytest.approx(x * math.log(t), rel=grad_rtol(dtype))
        assert gx == pytest.approx(math.log(t), rel=grad_rtol(dtype))
        assert gy == pytest.approx(x / t, rel=grad_rtol(dtype)) and gy > 0
        assert all(math.isfinite(v) for v in (haa, hab, hba, hbb))

    def test_y_plus_inf_is_inf_with_zero_gradient_wrt_y(self, dtype, mode):
        y, gx, gy, *_ = at2("xlogy", dtype, mode, "x_y_plus_inf")
        assert y == INF and gy == 0.0 and gx == INF

    @pytest.mark.parametrize("point", ["x_nan", "x_nan_y0"])
    def test_nan_x_propagates(self, dtype, mode, point):
        # C2: the NaN reaches the value and d/dy = x / y; d/dx = log(y) does
        # not depend on x and stays log(y) at the clamp, as documented.
        y, gx, gy, *_ = at2("xlogy", dtype, mode, point)
        assert_all_nan(y, gy)
        yv = max(input_of(BINARY_POINTS["xlogy"][point][1], dtype), _dtypes.tiny(dtype))
        assert gx == pytest.approx(math.log(yv), rel=grad_rtol(dtype))

    def test_inf_x_at_y_one_is_nan_like_tensorflow(self, dtype, mode):
        assert math.isnan(at2("xlogy", dtype, mode, "x_inf_y1")[0])

    @pytest.mark.parametrize("point", ["regular", "regular_small_y"])
    def test_matches_mpmath(self, dtype, mode, point):
        xa, ya = (mpmath.mpf(input_of(v, dtype)) for v in BINARY_POINTS["xlogy"][point])
        y, gx, gy, haa, hab, hba, hbb = at2("xlogy", dtype, mode, point)
        assert_ulps(y, xa * mpmath.log(ya), dtype)
        assert_grad(gx, mpmath.log(ya), dtype)
        assert_grad(gy, xa / ya, dtype)
        assert haa == 0.0
        assert_grad(hab, 1 / ya, dtype)
        assert_grad(hbb, -xa / ya ** 2, dtype)


class TestXlog1py:
    @pytest.mark.parametrize("point", ["x0_y_minus_one", "x0_y_below", "x0_y_plus_inf"])
    def test_x_zero_gives_zero_and_zero_gradient_wrt_y(self, dtype, mode, point):
        y, gx, gy, *_ = at2("xlog1py", dtype, mode, point)
        assert y == 0.0 and gy == 0.0
        c = -_dtypes.below_one(dtype)
        yv = BINARY_POINTS["xlog1py"][point][1]
        expected_gx = math.log1p(max(yv, c)) if yv < INF else INF
        assert gx == pytest.approx(expected_gx, rel=grad_rtol(dtype))

    def test_x_zero_and_nan_y_is_nan(self, dtype, mode):
        y, gx, gy, *_ = at2("xlog1py", dtype, mode, "x0_y_nan")
        assert_all_nan(y, gx, gy)

    @pytest.mark.parametrize("point", ["x_y_minus_one", "x_y_below", "x_y_minus_inf"])
    def test_y_at_or_below_minus_one_is_clamped_with_live_gradient(self, dtype, mode, point):
        c = -_dtypes.below_one(dtype)
        x = BINARY_POINTS["xlog1py"][point][0]
        y, gx, gy, haa, hab, hba, hbb = at2("xlog1py", dtype, mode, point)
        assert y == pytest.approx(x * math.log1p(c), rel=grad_rtol(dtype))
        assert gy == pytest.approx(x * 2.0 / _dtypes.eps(dtype), rel=grad_rtol(dtype)) and gy > 0
        assert all(math.isfinite(v) for v in (gx, haa, hab, hba, hbb))

    def test_y_plus_inf_is_inf_with_zero_gradient_wrt_y(self, dtype, mode):
        y, gx, gy, *_ = at2("xlog1py", dtype, mode, "x_y_plus_inf")
        assert y == INF and gy == 0.0

    @pytest.mark.parametrize("point", ["x_nan", "x_nan_y_minus_one"])
    def test_nan_x_propagates(self, dtype, mode, point):
        y, gx, gy, *_ = at2("xlog1py", dtype, mode, point)
        assert_all_nan(y, gy)
        assert math.isfinite(gx)

    @pytest.mark.parametrize("point", ["regular", "xla_float64_band"])
    def test_matches_mpmath(self, dtype, mode, point):
        xa, ya = (mpmath.mpf(input_of(v, dtype)) for v in BINARY_POINTS["xlog1py"][point])
        y, gx, gy, haa, hab, hba, hbb = at2("xlog1py", dtype, mode, point)
        assert_ulps(y, xa * mpmath.log1p(ya), dtype)
        assert_grad(gx, mpmath.log1p(ya), dtype)
        assert_grad(gy, xa / (1 + ya), dtype)
        assert_grad(hbb, -xa / (1 + ya) ** 2, dtype)


# ----------------------------------------------------------------------------
# log1mexp


class TestLog1mexp:
    @pytest.mark.parametrize("point", ["zero", "negative_zero"])
    def test_zero_is_clamped_at_tiny_with_positive_gradient(self, dtype, mode, point):
        t = _dtypes.tiny(dtype)
        y, g, h = at("log1mexp", dtype, mode, point)
        assert y == pytest.approx(math.log(t), rel=grad_rtol(dtype))
        assert g == pytest.approx(1.0 / t, rel=grad_rtol(dtype))
        assert g > 0 and math.isfinite(g) and math.isfinite(h)

    @pytest.mark.parametrize("point", ["plus_inf", "minus_inf"])
    def test_infinities_give_zero_value_and_gradient(self, dtype, mode, point):
        y, g, h = at("log1mexp", dtype, mode, point)
        assert y == 0.0 and g == 0.0 and math.isfinite(h)

    def test_nan_propagates(self, dtype, mode):
        assert_all_nan(*at("log1mexp", dtype, mode, "nan"))

    def test_gradient_sign_follows_x(self, dtype, mode):
        plus, minus = at("log1mexp", dtype, mode, "two"), at("log1mexp", dtype, mode, "minus_two")
        assert plus[0] == minus[0] and plus[1] == -minus[1] > 0

    @pytest.mark.parametrize(
        "point", ["small", "below_log2", "above_log2", "xla_float64_band", "twenty",
                  "minus_twenty", "fifty", "hundred"])
    def test_matches_mpmath_on_both_sides_of_the_log2_switch(self, dtype, mode, point):
        x = mpmath.mpf(input_of(UNARY_POINTS["log1mexp"][point], dtype))
        a = abs(x)
        y, g, h = at("log1mexp", dtype, mode, point)
        # log1p form: at 50 digits log(1 - 3.7e-44) would itself cancel
        assert_ulps(y, mpmath.log1p(-mpmath.exp(-a)), dtype)
        assert_grad(g, mpmath.sign(x) / mpmath.expm1(a), dtype)
        assert math.isfinite(h)

    @pytest.mark.parametrize("dtype", WIDE, ids=lambda d: d.name)
    def test_tiny_argument_is_accurate(self, dtype, mode):
        x = mpmath.mpf(input_of(1e-6, dtype))
        y, g, _ = at("log1mexp", dtype, mode, "tiny_32")
        assert_ulps(y, mpmath.log(-mpmath.expm1(-x)), dtype)
        assert_grad(g, 1 / mpmath.expm1(x), dtype)


# ----------------------------------------------------------------------------
# logaddexp


class TestLogaddexp:
    def test_both_minus_inf_is_minus_inf_with_zero_gradient(self, dtype, mode):
        y, g1, g2, *second = at2("logaddexp", dtype, mode, "both_minus_inf")
        assert y == -INF and g1 == 0.0 and g2 == 0.0
        assert all(math.isfinite(v) for v in second)

    @pytest.mark.parametrize("point, order", [("minus_inf_and_finite", (0, 1)),
                                              ("finite_and_minus_inf", (1, 0))])
    def test_one_minus_inf_gives_the_other(self, dtype, mode, point, order):
        y, g1, g2, *_ = at2("logaddexp", dtype, mode, point)
        assert y == 2.0 and (g1, g2) == order

    @pytest.mark.parametrize("point", ["plus_inf_and_finite", "plus_inf_and_minus_inf"])
    def test_plus_inf_gives_plus_inf_with_unit_gradient(self, dtype, mode, point):
        y, g1, g2, *_ = at2("logaddexp", dtype, mode, point)
        assert y == INF and (g1, g2) == (1.0, 0.0)

    def test_both_plus_inf_split_the_gradient(self, dtype, mode):
        y, g1, g2, *_ = at2("logaddexp", dtype, mode, "both_plus_inf")
        assert y == INF and (g1, g2) == (0.5, 0.5)

    @pytest.mark.parametrize("point", ["nan_and_finite", "finite_and_nan"])
    def test_nan_propagates(self, dtype, mode, point):
        y, g1, g2, *_ = at2("logaddexp", dtype, mode, point)
        assert_all_nan(y, g1, g2)

    def test_near_zero_result_has_small_absolute_error(self, dtype, mode):
        # exp(x1) + exp(x2) ~ 1: ill-conditioned, so the documented bound is
        # a few ULP of max(|x1|, |x2|), not of the result.
        a, b = (mpmath.mpf(input_of(v, dtype)) for v in BINARY_POINTS["logaddexp"]["near_zero_result"])
        y, g1, g2, *_ = at2("logaddexp", dtype, mode, "near_zero_result")
        exact = mpmath.log(mpmath.exp(a) + mpmath.exp(b))
        assert abs(y - float(exact)) <= 4 * ulp(max(abs(a), abs(b)), dtype)
        assert_grad(g1, mpmath.exp(a - exact), dtype)
        assert_grad(g2, mpmath.exp(b - exact), dtype)

    @pytest.mark.parametrize(
        "point", ["equal_large", "equal_very_negative", "far_apart", "regular", "large_mixed"])
    def test_matches_mpmath(self, dtype, mode, point):
        a, b = (mpmath.mpf(input_of(v, dtype)) for v in BINARY_POINTS["logaddexp"][point])
        y, g1, g2, h11, h12, h21, h22 = at2("logaddexp", dtype, mode, point)
        exact = mpmath.log(mpmath.exp(a) + mpmath.exp(b))
        assert_ulps(y, exact, dtype)
        assert_grad(g1, mpmath.exp(a - exact), dtype)
        assert_grad(g2, mpmath.exp(b - exact), dtype)
        s = mpmath.exp(a - exact) * mpmath.exp(b - exact)
        assert_grad(h11, s, dtype)
        assert_grad(h12, -s, dtype)


# ----------------------------------------------------------------------------
# Broadcasting, errors, and the seed failure.

BINARY_OPS = {
    "xlogy": (tfm.xlogy, tf.math.xlogy),
    "xlog1py": (tfm.xlog1py, tf.math.xlog1py),
    "logaddexp": (tfm.logaddexp, tf.experimental.numpy.logaddexp),
}


@pytest.mark.parametrize("op_name", sorted(BINARY_OPS))
@pytest.mark.parametrize("shapes", [((3, 1), (1, 4)), ((4,), ()), ((), (2, 3)), ((2, 3), (2, 3))],
                         ids=str)
def test_broadcast_gradients_are_summed_to_each_input_shape(op_name, shapes, mode):
    ours, theirs = BINARY_OPS[op_name]
    rng = np.random.default_rng(0)
    a = tf.constant(rng.uniform(0.5, 2.0, shapes[0]), tf.float64)
    b = tf.constant(rng.uniform(0.5, 2.0, shapes[1]), tf.float64)

    def grads(op):
        def run(a, b):
            with tf.GradientTape() as tape:
                tape.watch([a, b])
                y = op(a, b)
            return (y, *tape.gradient(y, [a, b]))
        return run

    got = _in_mode(grads(ours), mode)(a, b)
    want = grads(theirs)(a, b)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12)


@pytest.mark.parametrize("op_name", sorted(BINARY_OPS))
def test_broadcast_gradients_with_unknown_static_shapes(op_name):
    ours, theirs = BINARY_OPS[op_name]
    spec = [tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None], tf.float32)]

    @tf.function(input_signature=spec)
    def run(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            y = ours(a, b)
        return tape.gradient(y, [a, b])

    a, b = tf.fill([2, 3], 0.75), tf.constant([0.5, 1.0, 2.0])
    ga, gb = run(a, b)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        y = theirs(a, b)
    wa, wb = tape.gradient(y, [a, b])
    np.testing.assert_allclose(ga.numpy(), wa.numpy(), rtol=1e-5)
    np.testing.assert_allclose(gb.numpy(), wb.numpy(), rtol=1e-5)


UNARY_ARGS = {"log1p": "x", "logit": "x", "log1mexp": "x"}


@pytest.mark.parametrize("op_name", sorted(UNARY_ARGS))
def test_integer_input_raises_type_error_naming_the_argument(op_name):
    with pytest.raises(TypeError, match=rf"safeops\.math\.{op_name}: x must be a floating-point"):
        getattr(tfm, op_name)(tf.constant([1, 2]))


@pytest.mark.parametrize("op_name, args", [("xlogy", ("x", "y")), ("xlog1py", ("x", "y")),
                                           ("logaddexp", ("x1", "x2"))])
def test_binary_integer_input_raises_type_error_naming_the_argument(op_name, args):
    op = getattr(tfm, op_name)
    with pytest.raises(TypeError, match=rf"{op_name}: {args[0]} must be"):
        op(tf.constant([1, 2]), tf.constant([1.0, 2.0]))
    with pytest.raises(TypeError, match=rf"{op_name}: {args[1]} must be"):
        op(tf.constant([1.0, 2.0]), tf.constant([1, 2]))
    with pytest.raises(TypeError, match=rf"{op_name}: {args[1]} must be"):
        op(tf.constant([1.0], tf.float32), tf.constant([1.0], tf.float64))


@pytest.mark.parametrize("op_name, args", [("xlogy", "x and y"), ("xlog1py", "x and y"),
                                           ("logaddexp", "x1 and x2")])
def test_shapes_that_do_not_broadcast_raise_value_error(op_name, args):
    with pytest.raises(ValueError, match=rf"{op_name}: {args} must be broadcast-compatible"):
        getattr(tfm, op_name)(tf.ones([3]), tf.ones([2]))


def test_name_scope_is_safeops_op_name():
    @tf.function
    def run(x):
        return tfm.log1mexp(x)

    graph = run.get_concrete_function(tf.TensorSpec([2], tf.float32)).graph
    assert any(op.name.startswith("safeops/log1mexp/") for op in graph.get_operations())


def test_seed_failure_clipped_log_is_stuck_while_safeops_log_moves():
    """Minimising ``-log(p)`` from ``p = 0`` with SGD.

    Through ``log(clip_by_value(p, 1e-8, 1))`` the gradient is exactly 0 below
    the clip, so SGD never moves ``p`` (the loss is stuck at 18.4); through
    ``safeops.math.log`` the gradient at 0 is the boundary gradient
    ``-1/tiny`` and the (value-clipped) SGD step moves ``p`` up at once.
    """

    def train(loss_fn, steps=3):
        p = tf.Variable(0.0)
        optimizer = tf.keras.optimizers.SGD(learning_rate=0.1, clipvalue=1.0)
        history = []
        for _ in range(steps):
            with tf.GradientTape() as tape:
                loss = loss_fn(p)
            g = tape.gradient(loss, p)
            history.append((float(p.numpy()), float(loss.numpy()), float(g.numpy())))
            optimizer.apply_gradients([(g, p)])
        return float(p.numpy()), history

    p_clip, clip_history = train(lambda p: -tf.math.log(tf.clip_by_value(p, 1e-8, 1.0)))
    assert p_clip == 0.0
    assert all(g == 0.0 for _, _, g in clip_history)
    assert all(loss == pytest.approx(-math.log(1e-8), rel=1e-6) for _, loss, _ in clip_history)

    p_safe, safe_history = train(lambda p: -tfm.log(p))
    assert safe_history[0][2] < 0 and math.isfinite(safe_history[0][2])
    assert p_safe == pytest.approx(0.3, rel=1e-6)  # three clipped steps of 0.1
    assert safe_history[-1][1] < safe_history[0][1]


@pytest.mark.parametrize("name", ["xlogy", "xlog1py"])
def test_y_gradient_at_y_plus_inf_is_zero_for_finite_x_and_nan_for_infinite_x(name):
    """The documented edge: x / y at y = +inf is 0 for finite x and inf / inf = NaN for x = ±inf."""
    x = tf.constant([2.0, -3.0, np.inf, -np.inf])
    y = tf.constant([np.inf] * 4)
    with tf.GradientTape() as tape:
        tape.watch(y)
        value = getattr(tfm, name)(x, y)
    grad = tape.gradient(value, y).numpy()
    np.testing.assert_array_equal(value.numpy(), [np.inf, -np.inf, np.inf, -np.inf])
    np.testing.assert_array_equal(grad[:2], [0.0, 0.0])
    assert np.all(np.isnan(grad[2:]))


def test_logit_forward_mode_at_one_half():
    """TensorFlow's forward mode differentiates the forward formula: |2x - 1| gave a JVP of 0 at x = 1/2."""
    x = tf.constant([0.5, 0.25, 0.75])
    with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)) as acc:
        y = tfm.logit(x)
    np.testing.assert_allclose(acc.jvp(y).numpy(), [4.0, 16.0 / 3.0, 16.0 / 3.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["log", "log1p"])
def test_gradient_of_a_summed_log_of_huge_entries_in_a_tf_function(name):
    # The upstream gradient of reduce_sum is constant ones; with a plain
    # ones / x Grappler substitutes Reciprocal(x), whose vectorized CPU
    # kernel is 2.9e-4 off at x = 3.7e34 (tf.math.log's gradient is). C3: 1e-5.
    x = np.full(32, 3.6989836540733134e34, np.float32)
    fn = getattr(tfm, name)

    @tf.function
    def gradient(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            total = tf.reduce_sum(fn(v))
        return tape.gradient(total, v)

    got = gradient(tf.constant(x)).numpy().astype(np.float64)
    exact = 1.0 / (x.astype(np.float64) + (1.0 if name == "log1p" else 0.0))
    np.testing.assert_allclose(got, exact, rtol=1e-5)

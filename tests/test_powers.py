"""Edge tests for safeops.math.pow (the contract tests cover the rest).

Each test starts from a place where a model meets the edge: a root of a
norm or of a focal weight at 0, an exponent scheduled to 0, the degree
normalization of a graph node without edges, a rounding error below 0.
"""

import functools
import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf

from hypothesis import given, settings
from hypothesis import strategies as st

import safeops.debug as debug
import safeops.math as tfm

from tests import reference, strategies
from tests._modes import DTYPES, INF, MODES, NAN, derivatives, run
from tests.test_contract import SPECS, gradient_errors, has_subnormal, value_errors

mpmath.mp.dps = 50


def tiny(dtype) -> float:
    return float(tf.as_dtype(dtype).as_numpy_dtype(np.finfo(np.float32).tiny)) if dtype == tf.bfloat16 \
        else float(np.finfo(dtype.as_numpy_dtype).tiny)


def largest(dtype) -> float:
    return float(dtype.max)


def value_and_gradients(x, y):
    """``pow(x, y)`` and its gradients with respect to both arguments."""
    with tf.GradientTape() as tape:
        tape.watch([x, y])
        z = tfm.pow(x, y)
    return z, tape.gradient(z, [x, y])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_root_at_and_below_zero_has_sqrts_boundary_gradient(dtype, mode):
    x = tf.constant([0.0, -0.0, -3.0, 4.0], dtype)
    z, g, h = derivatives(lambda t: tfm.pow(t, 0.5), x, mode)
    _, g_sqrt, _ = derivatives(tfm.sqrt, x, mode)
    np.testing.assert_array_equal(z, [0.0, 0.0, 0.0, 2.0])
    # 1/(2 sqrt(tiny)) at the clamped points, as safeops.math.sqrt; TensorFlow's is inf, and NaN below 0.
    np.testing.assert_allclose(g, g_sqrt, rtol=1e-2)
    np.testing.assert_allclose(g[:3], 0.5 / math.sqrt(tiny(dtype)), rtol=1e-2)
    assert np.isfinite(h).all() and (h[:3] == 0).all()
    tf_g = derivatives(lambda t: tf.pow(t, 0.5), x, mode)[1]
    assert not np.isfinite(tf_g[:3]).any()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_exponent_zero_has_gradient_zero_at_zero(dtype, mode):
    x = tf.constant([0.0, -2.0, 3.0], dtype)
    y = tf.zeros_like(x)

    z, (gx, gy) = run(mode, value_and_gradients)(x, y)
    np.testing.assert_array_equal(z.numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(gx.numpy(), [0.0, 0.0, 0.0])   # TensorFlow's: NaN at 0
    # d/dy x**y = log(x) at y = 0 for x > 0; 0 at base 0 and for a negative base (TensorFlow's convention).
    np.testing.assert_allclose(gy.numpy().astype(np.float64), [0.0, 0.0, math.log(3.0)], rtol=1e-2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pole_takes_the_base_as_tiny(dtype, mode):
    # deg ** -0.5 of a node without edges; 1 / x; 1 / x**2, whose tiny ** -2 overflows and saturates.
    x = tf.constant([0.0, 0.0, -0.0, 0.0], dtype)
    y = tf.constant([-0.5, -1.0, -1.0, -2.0], dtype)

    z, (gx, gy) = run(mode, value_and_gradients)(x, y)
    z, gx, gy = (t.numpy().astype(np.float64) for t in (z, gx, gy))
    t, top = tiny(dtype), largest(dtype)
    want = [min(t ** -0.5, top), min(t ** -1.0, top), -min(t ** -1.0, top), top]
    np.testing.assert_allclose(z, want, rtol=1e-2)
    assert np.isfinite(gx).all() and np.isfinite(gy).all()
    assert (gx < 0).all()   # -y t**(y-1): saturated where it overflows
    # d/dy = z log(t) (saturated) at +0; 0 at the negative zero (a negative base).
    assert (gy[[0, 1, 3]] < 0).all() and gy[2] == 0


@pytest.mark.parametrize("naive, safe", [
    (lambda d: tf.pow(d, -0.5), lambda d: tfm.pow(d, -0.5)),
    (tf.math.rsqrt, tfm.rsqrt),   # the same normalization written with rsqrt
], ids=["pow", "rsqrt"])
def test_graph_normalization_with_an_isolated_node_trains(naive, safe):
    # D**-1/2 A D**-1/2 of a graph with an isolated node (degree 0): TensorFlow's inf * 0 is NaN.
    a = tf.constant([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    features = tf.constant(np.random.default_rng(0).standard_normal([4, 3]).astype(np.float32))
    w = tf.Variable(tf.ones([3, 2]))

    def loss(power):
        d = power(tf.reduce_sum(a, -1))
        h = (d[:, None] * a * d[None, :]) @ features @ w
        return tf.reduce_sum(h * h)

    for power, finite in ((naive, False), (safe, True)):
        with tf.GradientTape() as tape:
            value = loss(power)
        g = tape.gradient(value, w)
        assert bool(np.isfinite(value.numpy()) and np.isfinite(g.numpy()).all()) == finite, power
    # The isolated node adds nothing: the loss is that of the graph without it.
    d = tf.constant([2.0 ** -0.5, 1.0, 1.0])
    h = (d[:, None] * a[:3, :3] * d[None, :]) @ features[:3] @ w
    np.testing.assert_allclose(loss(safe).numpy(), tf.reduce_sum(h * h).numpy(), rtol=1e-6)


def test_focal_weight_with_gamma_below_one_at_a_confident_prediction_trains():
    # (1 - p) ** gamma, gamma = 0.5, at p = 1 (a sigmoid saturated in float32).
    logits = tf.Variable([20.0, 0.0, -3.0])
    for power, finite in ((tf.pow, False), (tfm.pow, True)):
        with tf.GradientTape() as tape:
            p = tf.sigmoid(logits)
            loss = tf.reduce_sum(power(1.0 - p, 0.5) * -tfm.log(p))
        g = tape.gradient(loss, logits).numpy()
        assert np.isfinite(g).all() == finite, (power, g)


@pytest.mark.parametrize("mode", MODES)
def test_negative_bases_with_integer_exponents_are_tensorflows(mode):
    x = tf.constant([-3.0, -0.5, 2.0, -1.25, 0.0, -2.0])
    for p in (2.0, 3.0, -1.0, -2.0):
        y = tf.fill([4], p)
        got = derivatives(lambda t: tfm.pow(t, y), x[:4], mode)
        want = derivatives(lambda t: tf.pow(t, y), x[:4], mode)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=2e-7)
    # A fractional exponent of a negative base: the base is clamped at 0.
    z, g, _ = derivatives(lambda t: tfm.pow(t, 1.5), x, mode)
    np.testing.assert_allclose(z, [0.0, 0.0, 2.0 ** 1.5, 0.0, 0.0, 0.0], rtol=1e-6)
    assert (g[[0, 1, 3, 4, 5]] >= 0).all() and np.isfinite(g).all()


@pytest.mark.parametrize("mode", MODES)
def test_huge_integer_exponent_keeps_the_gradients_sign(mode):
    # y = 2**24 + 2 is even; y - 1 rounds to an even float32, so pow(-1, y - 1) had the wrong sign.
    y = tf.constant([2.0 ** 24 + 2.0, 2.0 ** 24 + 2.0])
    x = tf.constant([-1.0, 1.0])
    _, g, _ = derivatives(lambda t: tfm.pow(t, y), x, mode)
    np.testing.assert_array_equal(g, [-(2.0 ** 24 + 2.0), 2.0 ** 24 + 2.0])


@pytest.mark.parametrize("mode", MODES)
def test_float64_values_within_four_ulp_where_tensorflows_kernel_is_not(mode):
    # TensorFlow's float64 pow kernel loses digits as |y log x| grows (76 ULP at 280): safeops takes
    # XLA's also for small eager tensors.
    x = np.array([0.33931304, 2.69497063, 0.66329368, 0.17346544, 1.5])
    y = np.array([275.18582512, 284.50363744, -288.66275864, 269.49265934, -1500.0])
    exact = np.array([float(mpmath.power(mpmath.mpf(a), mpmath.mpf(b))) for a, b in zip(x, y)])
    got = run(mode, tfm.pow)(tf.constant(x), tf.constant(y)).numpy()
    assert np.max(np.abs(got - exact) / np.spacing(np.abs(exact))) <= 4
    theirs = tf.pow(tf.constant(x), tf.constant(y)).numpy()
    assert np.max(np.abs(theirs - exact) / np.spacing(np.abs(exact))) > 4


@pytest.mark.parametrize("mode", MODES)
def test_nan_and_infinities(mode):
    x = tf.constant([NAN, 1.0, 0.5, 2.0, INF, INF, -INF])
    y = tf.constant([0.0, NAN, INF, INF, -1.0, 0.5, 2.0])

    z, (gx, gy) = run(mode, value_and_gradients)(x, y)
    z, gx, gy = z.numpy(), gx.numpy(), gy.numpy()
    # pow(NaN, 0) and pow(1, NaN) are 1 by IEEE 754 and in TensorFlow: NaN here, gradients too.
    assert np.isnan(z[:2]).all() and np.isnan(gx[:2]).all() and np.isnan(gy[:2]).all()
    np.testing.assert_array_equal(z[2:], [0.0, INF, 0.0, INF, INF])
    assert np.isfinite(gx[2:]).all() and np.isfinite(gy[2:]).all()
    assert gx[2] == 0 and gy[2] == 0   # pow(0.5, y) -> 0 as y -> inf: inf * 0 made 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [3, 40])   # TensorFlow's scalar loop and its vector loop
def test_subnormals_are_zero(mode, n):
    x = tf.constant(np.resize(np.float32([1e-45, 2.0, 1e-40]), n))
    y = tf.constant(np.resize(np.float32([0.5, 1e-45, -1.0]), n))
    z = run(mode, tfm.pow)(x, y).numpy()
    # 1e-45 ** 0.5 is 0 (TensorFlow's kernel: 2.6e-23); 2 ** 1e-45 is 1; 1e-40 ** -1 is the pole.
    np.testing.assert_array_equal(z, np.resize(np.float32([0.0, 1.0, 2.0 ** 126]), n))


def test_broadcasts_and_sums_gradients_back():
    x = tf.constant([[1.0], [4.0]])
    y = tf.constant([0.5, 2.0, -1.0])
    with tf.GradientTape() as tape:
        tape.watch([x, y])
        z = tfm.pow(x, y)
    gx, gy = tape.gradient(z, [x, y])
    assert z.shape == (2, 3) and gx.shape == (2, 1) and gy.shape == (3,)
    np.testing.assert_allclose(z.numpy(), tf.pow(x, y).numpy(), rtol=1e-6)
    np.testing.assert_allclose(gx.numpy(), [[0.5 + 2.0 - 1.0], [0.25 + 8.0 - 1 / 16]], rtol=1e-6)
    np.testing.assert_allclose(gy.numpy(), [0.0 + 2.0 * math.log(4.0), 16.0 * math.log(4.0),
                                            0.25 * math.log(4.0)], rtol=1e-6)
    # A Python exponent takes the base's dtype, as in tf.math.pow.
    assert tfm.pow(tf.constant([4.0], tf.float64), 0.5).dtype == tf.float64


def test_second_derivatives_at_ordinary_points():
    x = tf.constant([2.0, 3.0, 0.5], tf.float64)
    for p in (0.5, 3.0, -1.5):
        _, g, h = derivatives(lambda t: tfm.pow(t, p), x)
        xs = x.numpy()
        np.testing.assert_allclose(g, p * xs ** (p - 1), rtol=1e-14)
        np.testing.assert_allclose(h, p * (p - 1) * xs ** (p - 2), rtol=1e-13)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"safeops\.math\.pow: x must be"):
        tfm.pow(tf.constant([1, 2]), 2.0)
    with pytest.raises(TypeError, match=r"safeops\.math\.pow"):
        tfm.pow(tf.constant([1.0]), tf.constant([1.0], tf.float64))
    with pytest.raises(ValueError, match=r"safeops\.math\.pow"):
        tfm.pow(tf.zeros([2]), tf.zeros([3]))


def test_ragged_rows():
    x = tf.ragged.constant([[4.0, 0.0], [-1.0]])
    np.testing.assert_allclose(tfm.pow(x, 0.5).flat_values.numpy(), [2.0, 0.0, 0.0])


def test_locate_and_lint_name_safeops_pow():
    x = np.array([[0.0, 1.0, 2.0]], np.float32)
    report = debug.locate_nonfinite(lambda t: tf.reduce_sum(tf.pow(t, 0.3)), x)
    assert report.found and "safeops.math.pow" in report.fix, report
    assert not debug.locate_nonfinite(lambda t: tf.reduce_sum(tfm.pow(t, 0.3)), x).found
    findings = debug.lint(lambda t: tf.pow(tf.nn.relu(t), 0.3), x, print=False)
    assert [f.pattern for f in findings] == ["fractional-pow-at-zero"]
    assert findings[0].fix.startswith("safeops.math.pow(")
    assert debug.lint(lambda t: tfm.pow(tf.nn.relu(t), 0.3), x, print=False) == []


# ----------------------------------------------------------------------------
# A Python exponent: the constant-exponent path, checked as the contract tests check the tensor one.

CONSTANT = settings(max_examples=max(4, settings.default.max_examples // 3), deadline=None)


@functools.lru_cache(maxsize=None)
def _constant_evaluator(dtype: str, mode: str, exponent: float):
    def body(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                z = tfm.pow(x, exponent)   # a Python float: _constant_power (sqrt for 0.5)
            g = inner.gradient(z, x)
        return z, g, outer.gradient(g, x)

    return run(mode, body)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", strategies.DTYPES)
@CONSTANT
@given(data=st.data())
def test_python_exponent_within_c3_and_finite(dtype, mode, data):
    x = data.draw(strategies.vectors("pow", dtype), label="x")
    exponent = data.draw(st.sampled_from(strategies.POW_EXPONENTS + (-0.25, 0.75, 7.0, -3.5)), label="y")
    z, g, h = (t.numpy() for t in _constant_evaluator(dtype, mode, exponent)(tf.constant(x)))
    y = strategies.cast(np.full(x.shape, exponent), dtype)
    spec = SPECS["pow"]
    refs = [reference.elementwise("pow", x, y, dtype=dtype)]
    if has_subnormal([x], dtype) and dtype in ("float16", "bfloat16"):
        refs.append(reference.elementwise("pow", x, y, dtype=dtype, flush=False))
    failures = value_errors(spec, (x, y), dtype, z, refs)
    failures += gradient_errors(spec, (x, y), dtype, (g.astype(np.float64),), refs)
    assert not failures, "\n".join(failures)
    exact_inf = np.zeros(z.shape, bool)
    for ref in refs:
        exact = ref.value.astype(np.float64)
        exact_inf |= np.isinf(exact) & (exact == z.astype(np.float64))
    assert (np.isfinite(z.astype(np.float64)) | exact_inf).all(), (z, x)
    assert np.isfinite(g.astype(np.float64)).all() and np.isfinite(h.astype(np.float64)).all(), (g, h, x)

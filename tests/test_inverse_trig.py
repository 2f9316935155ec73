"""Edge tests for safeops.math's acos, asin, atanh, acosh and atan2 (the contract tests cover the rest).

Each test starts from a place where a model meets the edge: a cosine
similarity that rounds past 1, a tanh-squashed action that rounds to 1, a
hyperbolic distance of a point to itself, the angle of a zero or very short
vector.
"""

import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops.debug as debug
import safeops.math as tfm

from tests._modes import DTYPES, INF, MODES, NAN, derivatives, run

mpmath.mp.dps = 50

ARCS = {"acos": (tfm.acos, -1.0), "asin": (tfm.asin, 1.0)}


def below_one(dtype) -> float:
    return 1.0 - float(np.finfo(dtype.as_numpy_dtype).eps) / 2.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ARCS))
def test_arcs_at_and_past_one_are_finite_with_the_boundary_gradient(name, dtype, mode):
    fn, sign = ARCS[name]
    x = tf.constant([-INF, -2.0, -1.0, 1.0, 2.0, INF], dtype)
    y, g, h = derivatives(fn, x, mode)
    exact = np.array([getattr(math, name)(v) for v in (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)])
    np.testing.assert_allclose(y, exact, rtol=1e-2)
    b = below_one(dtype)
    boundary = sign / math.sqrt((1.0 - b) * (1.0 + b))   # about 1/sqrt(eps)
    np.testing.assert_allclose(g, boundary, rtol=1e-2)
    assert np.isfinite(h).all() and (h == 0).all()
    # One step inside the clamp the derivative is TensorFlow's own (finite there).
    inside = tf.constant([-b, b], dtype)
    _, g_inside, _ = derivatives(fn, inside, mode)
    np.testing.assert_allclose(g_inside, boundary, rtol=1e-2)


@pytest.mark.parametrize("mode", MODES)
def test_angle_between_equal_vectors_trains(mode):
    # ArcFace-style: the angle between an embedding and itself. The cosine
    # similarity of normalised equal vectors rounds to 1 or just past it:
    # TensorFlow's acos gives NaN there (past 1) and an inf gradient (at 1).
    v = np.random.default_rng(0).standard_normal([256, 7]).astype(np.float32)
    w = tf.Variable(v)

    def angles(u, acos):
        n = tf.math.l2_normalize(u, -1)
        return acos(tf.reduce_sum(n * tf.math.l2_normalize(tf.constant(v), -1), -1))

    cos = tf.reduce_sum(tf.math.l2_normalize(v, -1) * tf.math.l2_normalize(v, -1), -1).numpy()
    assert (cos > 1).any(), "the sample must contain similarities past 1"

    def loss_and_grad(acos):
        def body():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(angles(w, acos))
            return loss, tape.gradient(loss, w)
        return [t.numpy() for t in run(mode, body)()]

    naive_loss, naive_grad = loss_and_grad(tf.math.acos)
    assert not (np.isfinite(naive_loss) and np.isfinite(naive_grad).all())
    loss, grad = loss_and_grad(tfm.acos)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert 0.0 <= loss < 256 * 1e-2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_atanh_of_a_saturated_tanh_is_finite(dtype, mode):
    # The log-likelihood correction of a tanh-squashed policy takes atanh of
    # the action: tanh(10) is exactly 1 in float32 (and tanh(4) in float16).
    u = tf.constant([-30.0, -10.0, 0.0, 0.5, 10.0, 30.0], dtype)
    y, g, h = derivatives(lambda t: tfm.atanh(tf.math.tanh(t)), u, mode)
    assert np.isfinite(y).all() and np.isfinite(g).all() and np.isfinite(h).all()
    b = below_one(dtype)
    np.testing.assert_allclose(y[[0, 5]], [-math.atanh(b), math.atanh(b)], rtol=1e-2)
    np.testing.assert_allclose(y[3], 0.5, rtol=1e-2)
    # The chain through tanh: atanh'(tanh u) tanh'(u) is 1 inside the domain.
    np.testing.assert_allclose(g[2:4], 1.0, rtol=1e-2)
    x = tf.constant([-INF, -1.0, 1.0, 2.0], dtype)
    _, gx, _ = derivatives(tfm.atanh, x, mode)
    np.testing.assert_allclose(gx, 1.0 / ((1.0 - b) * (1.0 + b)), rtol=1e-2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_acosh_at_and_below_one_is_finite_with_the_boundary_gradient(dtype, mode):
    x = tf.constant([-INF, -2.0, 0.0, 0.5, 1.0, 2.0, INF], dtype)
    y, g, h = derivatives(tfm.acosh, x, mode)
    a = 1.0 + float(np.finfo(dtype.as_numpy_dtype).eps)   # the smallest number above 1
    boundary = 1.0 / math.sqrt((a - 1.0) * (a + 1.0))     # about 1/sqrt(2 eps): 2048 in float32
    assert (y[:5] == 0).all() and (g[:5] > 0).all() and (h[:5] == 0).all()
    np.testing.assert_allclose(g[:5], boundary, rtol=1e-2)
    np.testing.assert_allclose([y[5], g[5], h[5]], [math.acosh(2.0), 1 / math.sqrt(3.0), -2 / 3 ** 1.5],
                               rtol=1e-2)
    assert y[6] == INF and g[6] == 0 and h[6] == 0     # the limits of 1/x and -1/x**2
    # One step inside the clamp the derivative is the exact one, the boundary's.
    _, g_inside, _ = derivatives(tfm.acosh, tf.constant([a], dtype), mode)
    np.testing.assert_allclose(g_inside, boundary, rtol=1e-2)


def _poincare_distances(u, acosh):
    """All pairwise distances of the rows of ``u`` in the Poincare ball (Nickel and Kiela, 2017)."""
    sq = tf.reduce_sum(u * u, -1)
    d2 = tf.reduce_sum(tf.square(u[:, None, :] - u[None, :, :]), -1)
    return acosh(1.0 + 2.0 * d2 / ((1.0 - sq)[:, None] * (1.0 - sq)[None, :]))


def _lorentz_distances(u, acosh):
    """Pairwise distances of the hyperboloid's points ``(sqrt(1 + |u|**2), u)``: ``acosh(-<x, y>)``."""
    x0 = tf.sqrt(1.0 + tf.reduce_sum(u * u, -1, keepdims=True))
    return acosh(x0 * tf.transpose(x0) - tf.matmul(u, u, transpose_b=True))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("distances", [_poincare_distances, _lorentz_distances])
def test_hyperbolic_distances_of_points_to_themselves_train(distances, mode):
    # The diagonal of a pairwise distance matrix: the argument is exactly 1 (Poincare; TensorFlow's
    # gradient inf there) or rounds below 1 (Lorentz: TensorFlow's value NaN).
    v = (0.3 * np.random.default_rng(0).standard_normal([64, 5]) / math.sqrt(5.0)).astype(np.float32)
    w = tf.Variable(v)

    def loss_and_grad(acosh):
        def body():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(distances(w, acosh))
            return loss, tape.gradient(loss, w)
        return [t.numpy() for t in run(mode, body)()]

    naive_loss, naive_grad = loss_and_grad(tf.math.acosh)
    assert not np.isfinite(naive_grad).all()
    loss, grad = loss_and_grad(tfm.acosh)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    if np.isfinite(naive_loss):
        np.testing.assert_allclose(loss, naive_loss, rtol=1e-6)
    # The gradient of the off-diagonal distances, each pair once: TensorFlow's wherever it is finite.
    off = 1.0 - tf.eye(64)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(distances(w, tfm.acosh) * off)
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), _off_diagonal_gradient(distances, w),
                               rtol=1e-4, atol=1e-5)


def _off_diagonal_gradient(distances, w):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.where(tf.eye(64) > 0, 0.0, distances(w, lambda z: tf.math.acosh(
            tf.where(tf.eye(64) > 0, 2.0, z)))))
    return tape.gradient(loss, w).numpy()


@pytest.mark.parametrize("mode", MODES)
def test_acosh_gradient_of_large_inputs_is_one_over_x(mode):
    # (x - 1)(x + 1) overflows float32 from x = 1.8e19 on, float64's from 1.3e154: the exact derivative,
    # about 1/x, is a normal number there.
    for dtype, x in ((tf.float32, [1e19, 1e20, 1e30, 3e37]), (tf.float64, [1e154, 1e160, 1e300])):
        y, g, _ = derivatives(tfm.acosh, tf.constant(x, dtype), mode)
        np.testing.assert_allclose(g, 1.0 / np.array(x), rtol=1e-6)
        np.testing.assert_allclose(y, np.log(2.0 * np.array(x)), rtol=1e-6)


def _acosh_ulps(got, x):
    exact = np.array([float(mpmath.acosh(mpmath.mpf(float(v)))) for v in x])
    spacing = np.spacing(np.abs(exact).astype(got.dtype)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


def test_acosh_values_near_one_and_far():
    # Every float32 in [1, 1.001] (where acosh(x) is about sqrt(2(x - 1))) and a log-spaced sweep:
    # TensorFlow's kernel within 2 ULP, XLA's expansion within C3's 4 (the docstring's figures; the
    # float32 sweep, benchmarks.sweep, found XLA's 4.0 at 1.0866).
    lo, hi = np.float32(1.0).view(np.int32), np.float32(1.001).view(np.int32)
    x = np.concatenate([np.arange(lo, hi, dtype=np.int32).view(np.float32),
                        np.geomspace(1.001, 3e38, 4000, dtype=np.float32)])
    xla = tf.function(tfm.acosh, jit_compile=True)
    assert _acosh_ulps(tfm.acosh(tf.constant(x)).numpy(), x).max() <= 2.0
    assert _acosh_ulps(xla(tf.constant(x)).numpy(), x).max() <= 4.0
    x64 = np.concatenate([1.0 + np.geomspace(1e-15, 1.0, 1500), np.geomspace(2.0, 1e300, 1500)])
    assert _acosh_ulps(tfm.acosh(tf.constant(x64)).numpy(), x64).max() <= 2.0
    assert _acosh_ulps(xla(tf.constant(x64)).numpy(), x64).max() <= 4.0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["acos", "asin", "atanh", "acosh"])
def test_nan_stays_nan(name, mode):
    fn = getattr(tfm, name)
    y, g, _ = derivatives(fn, tf.constant([NAN, 0.5]), mode)
    assert np.isnan(y[0]) and np.isnan(g[0]) and np.isfinite(y[1]) and np.isfinite(g[1])


def test_float64_atanh_within_three_ulp_under_xla():
    # XLA's own float64 atanh is up to 125 ULP off near -0.41 (its log1p).
    x = np.linspace(-0.45, -0.35, 2001)
    exact = np.array([float(mpmath.atanh(mpmath.mpf(float(v)))) for v in x])
    for fn in (tfm.atanh, tf.function(tfm.atanh, jit_compile=True)):
        got = fn(tf.constant(x)).numpy()
        assert (np.abs(got - exact) / np.spacing(np.abs(exact))).max() <= 3
    got = tf.function(tf.math.atanh, jit_compile=True)(tf.constant(x)).numpy()
    assert (np.abs(got - exact) / np.spacing(np.abs(exact))).max() > 4, "TensorFlow's XLA atanh was fixed"


@pytest.mark.parametrize("name", sorted(ARCS))
def test_float32_arcs_are_tensorflows_kernel_inside_the_domain(name):
    # Every float32 in [0.5, 0.6], where TensorFlow's kernels are worst, against float64: safeops'
    # value is that kernel's (4.5 ULP, the contract tests' one wider allowance), XLA's is within 2.4.
    lo, hi = np.float32(0.5).view(np.int32), np.float32(0.6).view(np.int32)
    x = np.arange(lo, hi, dtype=np.int32).view(np.float32)
    exact = getattr(np, "arc" + name[1:])(x.astype(np.float64))
    spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)

    def worst(fn):
        return (np.abs(fn(tf.constant(x)).numpy().astype(np.float64) - exact) / spacing).max()

    fn = ARCS[name][0]
    np.testing.assert_array_equal(fn(tf.constant(x)).numpy(), getattr(tf.math, name)(tf.constant(x)).numpy())
    assert 4.0 < worst(fn) <= 4.5
    assert worst(tf.function(fn, jit_compile=True)) <= 2.5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_atan2_at_the_origin_has_gradient_zero(dtype, mode):
    y = tf.constant([0.0, 0.0, -0.0, 1.0, 0.0], dtype)
    x = tf.constant([0.0, -0.0, -0.0, 0.0, 2.0], dtype)

    def body(y, x):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([y, x])
            with tf.GradientTape() as inner:
                inner.watch([y, x])
                a = tfm.atan2(y, x)
            gy, gx = inner.gradient(a, [y, x])
        return a, gy, gx, outer.gradient(gy, y), outer.gradient(gx, x)

    a, gy, gx, hyy, hxx = [t.numpy().astype(np.float64) for t in run(mode, body)(y, x)]
    np.testing.assert_allclose(a, [0.0, math.pi, -math.pi, math.pi / 2, 0.0], rtol=1e-2)
    np.testing.assert_array_equal(gy, [0.0, 0.0, 0.0, 0.0, 0.5])
    np.testing.assert_array_equal(gx, [0.0, 0.0, 0.0, -1.0, 0.0])
    assert np.isfinite(hyy).all() and np.isfinite(hxx).all() and hyy[0] == 0 and hxx[0] == 0
    # TensorFlow's gradient is 0/0 there.
    with tf.GradientTape() as tape:
        tape.watch([y, x])
        naive = tf.math.atan2(y, x)
    assert np.isnan(tape.gradient(naive, y).numpy()[0])


@pytest.mark.parametrize("mode", MODES)
def test_atan2_gradient_of_short_and_long_vectors(mode):
    # x**2 + y**2 underflows below a length of 1e-19 and overflows above 1.8e19 in float32.
    # (1e-19, -1e-18): y**2 is 1% of the sum and subnormal (found by benchmarks.sweep --gradients).
    y = np.array([3e-30, -2e-38, 3e20, 1e-30, 2e38, 1.00488473e-19, 1e-44], np.float32)
    x = np.array([4e-30, 2e-38, -4e20, -1e30, 1.0, -9.95116268e-19, 1.0], np.float32)

    def grads(y, x):
        with tf.GradientTape() as tape:
            tape.watch([y, x])
            a = tfm.atan2(y, x)
        return tape.gradient(a, [y, x])

    gy, gx = [g.numpy().astype(np.float64) for g in run(mode, grads)(tf.constant(y), tf.constant(x))]
    for i in range(len(y)):
        yi, xi = (mpmath.mpf(float(v)) for v in (y[i], x[i]))
        if i == len(y) - 1:
            yi = mpmath.mpf(0)   # a subnormal y is 0 (C3)
        r2 = xi * xi + yi * yi
        for got, want in ((gy[i], xi / r2), (gx[i], -yi / r2)):
            want = float(want)
            assert got == pytest.approx(want, rel=1e-5, abs=1e-37), (i, got, want)


@pytest.mark.parametrize("mode", MODES)
def test_atan2_infinities_and_nan(mode):
    y = tf.constant([INF, 1.0, -INF, NAN, 1.0])
    x = tf.constant([1.0, -INF, INF, 1.0, NAN])

    def body(y, x):
        with tf.GradientTape() as tape:
            tape.watch([y, x])
            a = tfm.atan2(y, x)
        return (a, *tape.gradient(a, [y, x]))

    a, gy, gx = [t.numpy() for t in run(mode, body)(y, x)]
    np.testing.assert_allclose(a[:3], [math.pi / 2, math.pi, -math.pi / 4], rtol=1e-6)
    np.testing.assert_array_equal(gy[:3], 0.0)
    np.testing.assert_array_equal(gx[:3], 0.0)
    assert np.isnan(a[3:]).all() and np.isnan(gy[3:]).all() and np.isnan(gx[3:]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("n", [4, 40])
@pytest.mark.parametrize("mode", MODES + ["dataset"])
def test_atan2_subnormals_are_zeros_of_their_sign(mode, n, dtype):
    # TensorFlow's kernel is NaN at pairs of float32 subnormals in its scalar
    # loop (4 entries; a vector loop's tail) and pi/4 at (0, 1e-45) in its
    # vector loop; its XLA kernel is NaN at such pairs too. Outside XLA
    # float32 and float64 are flushed by a product with 1 in the CPU kernels'
    # flush-to-zero mode (_dtypes.times_one), which holds on tf.data's
    # threads too ("dataset"); float16 subnormals are normal once widened.
    small = np.finfo(dtype).smallest_subnormal
    y = np.resize(np.array([small, small, -small, 0.0, -7 * small], dtype), n)
    x = np.resize(np.array([small, -small, -small, small, 1.0], dtype), n)
    if mode == "dataset":
        data = tf.data.Dataset.from_tensors((tf.constant(y), tf.constant(x))).map(tfm.atan2)
        a = next(iter(data)).numpy()
    else:
        a = run(mode, tfm.atan2)(tf.constant(y), tf.constant(x)).numpy()
    want = np.resize(np.array([0.0, math.pi, -math.pi, 0.0, -0.0], dtype), n)
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(np.signbit(a), np.signbit(want))
    if dtype == "float32":
        assert np.isnan(tf.math.atan2(y[:4], x[:4]).numpy()).any(), "TensorFlow's atan2 was fixed"
    if dtype == "float32" and n == 40:   # the vector loop's atan2(0, 1e-45)
        assert tf.math.atan2(y, x).numpy()[3] != 0, "TensorFlow's atan2 was fixed"


def test_atan2_saved_model_keeps_the_flush(tmp_path):
    # The flush's 1 is a PlaceholderWithDefault inside the function's graph
    # (_dtypes.times_one): it survives export and reload, as does the gradient.
    class Angle(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None])] * 2)
        def angle(self, y, x):
            with tf.GradientTape() as tape:
                tape.watch([y, x])
                a = tfm.atan2(y, x)
            return a, tape.gradient(a, [y, x])

    tf.saved_model.save(Angle(), str(tmp_path))
    reloaded = tf.saved_model.load(str(tmp_path))
    y = np.resize(np.float32([0.0, 1e-45, 1.0]), 40)
    x = np.resize(np.float32([1e-45, -1e-45, 1.0]), 40)
    a, (gy, gx) = reloaded.angle(tf.constant(y), tf.constant(x))
    np.testing.assert_array_equal(a.numpy()[:2], np.float32([0.0, math.pi]))
    np.testing.assert_allclose(a.numpy()[2], math.pi / 4, rtol=1e-6)
    np.testing.assert_array_equal(gy.numpy()[:3], [0.0, 0.0, 0.5])
    np.testing.assert_array_equal(gx.numpy()[:3], [0.0, 0.0, -0.5])


def test_atan2_broadcasts_and_sums_gradients_back():
    y = tf.constant([[0.0], [2.0]])
    x = tf.constant([0.0, 1.0, 3.0])
    with tf.GradientTape() as tape:
        tape.watch([y, x])
        a = tfm.atan2(y, x)
    gy, gx = tape.gradient(a, [y, x])
    assert a.shape == (2, 3) and gy.shape == (2, 1) and gx.shape == (3,)
    np.testing.assert_allclose(a.numpy(), tf.math.atan2(y, x).numpy())
    # x / r2 and -y / r2 summed over the broadcast axis; 0 at the origin (row 0, column 0).
    np.testing.assert_allclose(gy.numpy(), [[1.0 + 1 / 3], [1 / 5 + 3 / 13]], rtol=1e-6)
    np.testing.assert_allclose(gx.numpy(), [-2 / 4, -2 / 5, -2 / 13], rtol=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"safeops\.math\.acos: x must be"):
        tfm.acos(tf.constant([1, 2]))
    with pytest.raises(TypeError, match=r"safeops\.math\.acosh: x must be"):
        tfm.acosh(tf.constant([1, 2]))
    with pytest.raises(TypeError, match=r"safeops\.math\.atan2: x must be"):
        tfm.atan2(tf.constant([1.0]), tf.constant([1]))
    with pytest.raises(TypeError, match=r"safeops\.math\.atan2"):
        tfm.atan2(tf.constant([1.0]), tf.constant([1.0], tf.float64))
    with pytest.raises(ValueError, match=r"safeops\.math\.atan2"):
        tfm.atan2(tf.zeros([2]), tf.zeros([3]))


def test_ragged_rows():
    x = tf.ragged.constant([[1.0000001, 0.5], [-2.0]])
    np.testing.assert_allclose(tfm.acos(x).flat_values.numpy(), [0.0, math.acos(0.5), math.pi], rtol=1e-6)
    first = math.acosh(float(np.float32(1.0000001)))
    np.testing.assert_allclose(tfm.acosh(x).flat_values.numpy(), [first, 0.0, 0.0], rtol=1e-6)
    a = tfm.atan2(x, x)
    np.testing.assert_allclose(a.flat_values.numpy(), [math.pi / 4, math.pi / 4, -3 * math.pi / 4], rtol=1e-6)


def test_locate_and_lint_name_the_safeops_ops():
    # Past 1 (NaN value), at 1 after a clip (inf gradient), at 1 (inf value), at 1 after a clip (inf
    # gradient), the origin (0/0 gradient).
    x = np.array([[np.nextafter(np.float32(1), np.float32(2)), 1.0, 0.0]], np.float32)
    cases = {"acos": lambda t: tf.reduce_sum(tf.math.acos(t)),
             "asin": lambda t: tf.reduce_sum(tf.math.asin(tf.clip_by_value(t, -1.0, 1.0))),
             "atanh": lambda t: tf.reduce_sum(tf.math.atanh(tf.clip_by_value(t, -1.0, 1.0))),
             "acosh": lambda t: tf.reduce_sum(tf.math.acosh(tf.maximum(t, 1.0))),
             "atan2": lambda t: tf.reduce_sum(tf.math.atan2(t[:, 2], t[:, 2]))}
    for name, fn in cases.items():
        report = debug.locate_nonfinite(fn, x)
        assert report.found and report.fix.startswith(f"safeops.math.{name}("), (name, report)
        safe = getattr(tfm, name)
        arg = (lambda t: safe(t[:, 2], t[:, 2])) if name == "atan2" else safe
        assert not debug.locate_nonfinite(lambda t: tf.reduce_sum(arg(t)), x).found
    findings = debug.lint(lambda t: tf.math.acos(tf.reduce_sum(t * t, -1)), x, print=False)
    assert [f.pattern for f in findings] == ["inverse-trig-at-one"]
    assert findings[0].fix.startswith("safeops.math.acos(")
    assert debug.lint(lambda t: tfm.acos(tf.reduce_sum(t * t, -1)), x, print=False) == []

"""Edge and reference tests for safeops.math.sqrt, rsqrt, norm, l2_normalize, divide_no_nan."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops import _dtypes

from tests._modes import DTYPES, INF, MODES, NAN, derivatives, run  # noqa: F401

mpmath.mp.dps = 50


def rtol(dtype):
    return {tf.float16: 2e-3, tf.bfloat16: 1e-2, tf.float32: 1e-6, tf.float64: 1e-14}[dtype]


class TestSqrt:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_finite_everywhere_including_zero(self, dtype, mode):
        x = tf.constant([0.0, -1.0, 0.25, 4.0], dtype)
        y, g, h = derivatives(tfm.sqrt, x, mode)
        assert all(np.isfinite(a).all() for a in (y, g, h))
        np.testing.assert_allclose(y, [0, 0, 0.5, 2], rtol=rtol(dtype))
        boundary = 0.5 / np.sqrt(_dtypes.tiny(dtype))
        np.testing.assert_allclose(g, [boundary, boundary, 1.0, 0.25], rtol=rtol(dtype))
        assert h[2] == pytest.approx(-0.25 * 0.25 ** -1.5, rel=1e-2) and h[0] == 0

    def test_subnormal_is_a_clamped_point(self):
        y, g, _ = derivatives(tfm.sqrt, tf.constant([1e-40], tf.float32))
        assert g[0] == pytest.approx(0.5 / np.sqrt(np.finfo(np.float32).tiny), rel=1e-6)

    @pytest.mark.parametrize("mode", MODES)
    def test_float16_subnormal_widens_to_a_normal_number(self, mode):
        y, g, _ = derivatives(tfm.sqrt, tf.constant([6e-8], tf.float16), mode)
        assert y[0] == pytest.approx(np.sqrt(np.float64(np.float16(6e-8))), rel=1e-3)
        assert g[0] == pytest.approx(0.5 / np.sqrt(np.finfo(np.float16).tiny), rel=1e-3)

    def test_inf_and_nan(self):
        y, g, _ = derivatives(tfm.sqrt, [INF, NAN])
        assert y[0] == INF and g[0] == 0 and np.isnan(y[1]) and np.isnan(g[1])

    @pytest.mark.parametrize("v", [2.0, 3.0, 1e-30, 1e30, 0.7])
    def test_against_mpmath(self, v):
        for dtype in (np.float32, np.float64):
            got = tfm.sqrt(np.array([v], dtype)).numpy()[0]
            want = float(mpmath.sqrt(mpmath.mpf(float(dtype(v)))))
            assert abs(got - want) <= np.spacing(dtype(want))

    def test_errors(self):
        with pytest.raises(TypeError, match="x"):
            tfm.sqrt(tf.constant([1, 2]))


class TestRsqrt:
    """``rsqrt``: ``pow(x, -0.5)``'s pole clamp, TensorFlow's kernel elsewhere."""

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_finite_at_and_below_zero(self, dtype, mode):
        x = tf.constant([0.0, -0.0, -1.0, 0.25, 4.0, -INF], dtype)
        y, g, h = derivatives(tfm.rsqrt, x, mode)
        assert all(np.isfinite(a).all() for a in (y, g, h))
        tiny, largest = _dtypes.tiny(dtype), _dtypes.max_value(dtype)
        at_tiny = tiny ** -0.5  # a power of two: exact
        np.testing.assert_array_equal(y[[0, 1, 2, 5]], at_tiny)
        np.testing.assert_allclose(y[3:5], [2.0, 0.5], rtol=rtol(dtype))
        # The boundary gradient -tiny**-1.5 / 2 overflows every dtype: saturated, pointing up.
        np.testing.assert_allclose(g[[0, 1, 2, 5]], -largest, rtol=1e-5)
        np.testing.assert_allclose(g[3:5], [-4.0, -1.0 / 16], rtol=rtol(dtype))
        np.testing.assert_allclose(h[3:5], [24.0, 0.75 / 32], rtol=rtol(dtype))
        assert (h[[0, 1, 2, 5]] == 0).all()

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
    def test_gradient_where_the_cube_overflows_but_the_gradient_does_not(self, dtype, mode):
        # -y**3 / 2 with y**3 above the largest value: XLA's RsqrtGrad formed -inf here.
        x = {tf.float32: 2.0 ** -85.5, tf.float64: 2.5e-206}[dtype]
        _, g, h = derivatives(tfm.rsqrt, tf.constant([x], dtype), mode)
        want = float(-mpmath.mpf(float(np.array(x, dtype.as_numpy_dtype))) ** -1.5 / 2)
        assert abs(want) < _dtypes.max_value(dtype)
        assert g[0] == pytest.approx(want, rel=1e-5) and np.isfinite(h).all()

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
    def test_is_pow_of_minus_one_half(self, dtype, mode):
        low, high = {tf.float32: (-100.0, 88.0), tf.float64: (-750.0, 709.0)}[dtype]  # subnormals too
        x = np.exp(np.random.default_rng(1).uniform(low, high, 200))
        x = tf.constant(np.concatenate([x, [0.0, -2.0, 1e-45, 3e-39]]), dtype)
        y, g, _ = derivatives(tfm.rsqrt, x, mode)
        z, gz, _ = derivatives(lambda t: tfm.pow(t, -0.5), x, mode)
        np.testing.assert_allclose(y, z, rtol=8 * np.finfo(dtype.as_numpy_dtype).eps)
        np.testing.assert_allclose(g, gz, rtol=1e-5)

    @pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
    def test_long_eager_tensor_runs_the_xla_function_with_the_same_results(self, dtype):
        # From 2**16 elements an eager call runs the inner XLA function, below it plain kernels.
        x = np.exp(np.random.default_rng(2).uniform(-90.0, 40.0, 1 << 17))
        x[::1000] = 0.0
        x = tf.constant(x, dtype)
        long = derivatives(tfm.rsqrt, x)[:2]
        short = [np.concatenate(parts) for parts in zip(*(derivatives(tfm.rsqrt, x[i:i + 4096])[:2]
                                                          for i in range(0, 1 << 17, 4096)))]
        # Two rsqrt kernels, each within 2 ULP: values within 4, gradients (-y**3 / 2) within C3.
        for got, want, tolerance in zip(long, short, (4 * np.finfo(dtype.as_numpy_dtype).eps,
                                                      {tf.float32: 1e-5, tf.float64: 1e-12}[dtype])):
            np.testing.assert_allclose(got, want, rtol=tolerance)
        assert np.isfinite(long[1]).all()

    def test_rms_norm_of_a_padding_row_without_epsilon(self):
        # x / rms(x): a zero (padding) row is inf * 0 = NaN through tf.math.rsqrt (its gradient
        # inf), 0 here.
        x = tf.constant([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0]])
        w = tf.constant([[1.0, 2.0, 3.0]])
        results = {}
        for rsqrt in (tf.math.rsqrt, tfm.rsqrt):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = x * rsqrt(tf.reduce_mean(x * x, -1, keepdims=True))
                loss = tf.reduce_sum(w * y)
            results[rsqrt] = y.numpy(), tape.gradient(loss, x).numpy()
        y, g = results[tf.math.rsqrt]
        assert np.isnan(y[1]).all() and not np.isfinite(g[1]).any()
        y, g = results[tfm.rsqrt]
        assert np.isfinite(g).all() and (y[1] == 0).all()
        np.testing.assert_allclose(y[0], results[tf.math.rsqrt][0][0], rtol=1e-6)
        np.testing.assert_allclose(g[0], results[tf.math.rsqrt][1][0], rtol=1e-5, atol=1e-7)

    @pytest.mark.parametrize("mode", MODES)
    def test_inf_and_nan(self, mode):
        y, g, _ = derivatives(tfm.rsqrt, tf.constant([INF, NAN]), mode)
        assert y[0] == 0 and g[0] == 0 and np.isnan(y[1]) and np.isnan(g[1])

    def test_errors(self):
        with pytest.raises(TypeError, match="x"):
            tfm.rsqrt(tf.constant([1, 2]))
        with pytest.raises(TypeError, match="x"):
            tfm.rsqrt(tf.constant(["a"]))


class TestNorm:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_zero_vector(self, dtype, mode):
        y, g, h = derivatives(lambda t: tfm.norm(t, axis=-1), tf.zeros([2, 3], dtype), mode)
        assert (y == 0).all() and (g == 0).all() and np.isfinite(h).all()

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_tf(self, dtype, mode):
        x = tf.constant([[3.0, -4.0, 0.0], [1.0, 2.0, 2.0]], dtype)
        y, g, h = derivatives(lambda t: tfm.norm(t, axis=1), x, mode)
        assert all(np.isfinite(a).all() for a in (y, g, h))
        np.testing.assert_allclose(y, [5, 3], rtol=rtol(dtype))
        np.testing.assert_allclose(g, x.numpy().astype(np.float64) / [[5], [3]], rtol=10 * rtol(dtype), atol=1e-7)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float32, tf.float64])
    def test_gradient_near_tiny_is_not_flushed(self, dtype, mode):
        x = tf.constant([1.2e-38] * 3, dtype)
        y, g, h = derivatives(tfm.norm, x, mode)
        np.testing.assert_allclose(g, [3 ** -0.5] * 3, rtol=rtol(dtype))
        assert np.isfinite(h).all()

    @pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
    def test_gradient_against_float64(self, scale):
        x = np.random.default_rng(1).standard_normal((50, 5)) * scale
        grads = []
        for dtype in (tf.float32, tf.float64):
            xt = tf.constant(x, dtype)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                n = tfm.norm(xt, axis=1)
            grads.append(tape.gradient(n, xt).numpy().astype(np.float64))
        np.testing.assert_allclose(grads[0], x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(grads[1], x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-12)

    @pytest.mark.parametrize("scale", [1e30, 1e-30, 1e19, 1e-19])
    def test_huge_and_tiny_entries_float32(self, scale):
        x = tf.constant([3 * scale, 4 * scale], tf.float32)
        y, g, _ = derivatives(tfm.norm, x)
        assert y == pytest.approx(5 * scale, rel=1e-6)
        np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-6)
        want = float(mpmath.sqrt(sum(mpmath.mpf(float(v)) ** 2 for v in x.numpy())))
        assert abs(y - want) <= 2 * np.spacing(np.float32(want))

    def test_inf_and_nan(self):
        assert tfm.norm([INF, 1.0]).numpy() == INF
        y, g, _ = derivatives(tfm.norm, [NAN, 1.0])
        assert np.isnan(y) and np.isnan(g).all()

    @pytest.mark.parametrize("ord", ["euclidean", 1, 2, np.inf, 3, 0.5, 2.5])
    @pytest.mark.parametrize("axis", [None, 0, -1])
    @pytest.mark.parametrize("keepdims", [False, True])
    def test_vector_ords_match_tf(self, ord, axis, keepdims):
        x = tf.random.stateless_normal([3, 4], seed=[7, 8], dtype=tf.float64)
        got = tfm.norm(x, ord=ord, axis=axis, keepdims=keepdims)
        want = tf.norm(x, ord=ord, axis=axis, keepdims=keepdims)
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)

    @pytest.mark.parametrize("ord", ["euclidean", "fro", 1, 2, np.inf])
    @pytest.mark.parametrize("axis", [(0, 1), (-1, -2), [1, 2]])
    @pytest.mark.parametrize("keepdims", [False, True])
    def test_matrix_ords_match_tf(self, ord, axis, keepdims):
        x = tf.random.stateless_normal([2, 3, 4], seed=[9, 10], dtype=tf.float64)
        got = tfm.norm(x, ord=ord, axis=axis, keepdims=keepdims)
        want = tf.norm(x, ord=ord, axis=axis, keepdims=keepdims)
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)

    @pytest.mark.parametrize("ord", [3, 0.5])
    def test_p_norm_zero_entries_finite_gradient(self, ord):
        y, g, h = derivatives(lambda t: tfm.norm(t, ord=ord, axis=-1), [[0.0, 0.0], [0.0, 2.0]])
        assert np.isfinite(g).all() and np.isfinite(h).all()
        np.testing.assert_allclose(y, [0, 2])
        np.testing.assert_allclose(g, [[0, 0], [0, 1]])

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("ord", [0.3, 0.5, 1.5, 3.0])
    @pytest.mark.parametrize("dtype,rows", [
        (tf.float32, [[3e38, 1e-3], [1e30, 1e20], [1.0, 1e-20], [1e-35, 2e-38], [3e38, 3e38], [2e-38, 1.2e-38]]),
        (tf.float64, [[1e308, 1e-3], [1e-300, 1e-307], [1.0, 1e-200], [1e300, 1e-300],
                      [2.0**1022, 1.0], [2e-38, 1e-38]]),
    ])
    def test_p_norm_over_the_whole_range_against_mpmath(self, dtype, rows, ord, mode):
        """Entries 1e-41 times the largest: their scaled terms underflowed (value and gradient
        0 where the exact gradient is 5e20), and for p < 1 autodiff overflowed (inf where
        the exact gradient is 1e15); second derivatives were -inf or NaN."""
        y, g, h = derivatives(lambda t: tfm.norm(t, ord=ord, axis=-1), tf.constant(rows, dtype), mode)
        assert np.isfinite(g).all() and np.isfinite(h).all()
        big = float(dtype.max)
        for row, y_row, g_row in zip(rows, y, g):
            entries = [mpmath.mpf(float(dtype.as_numpy_dtype(v))) for v in row]
            exact = mpmath.fsum(abs(v) ** ord for v in entries) ** (1 / mpmath.mpf(ord))
            if exact > big:
                assert y_row == INF
            else:
                assert abs(y_row - float(exact)) <= 4 * np.spacing(dtype.as_numpy_dtype(exact))
            for v, got in zip(entries, g_row):
                want = min((abs(v) / exact) ** (ord - 1), big)
                assert got == pytest.approx(float(want), rel=1e-5 if dtype == tf.float32 else 1e-12)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("ord", [2.5, 3.0, 7.0, 10.0, 12.0])
    @pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
    def test_p_norm_at_the_largest_float(self, dtype, ord, mode):
        """The norm of [largest float] is that float within C3: the root of the rounded sum landed
        one ULP high and overflowed after the scale-back (inf for p = 2.5, 3, 7, 12 in float32, 10 in
        float64). A row whose exact norm overflows is still inf, with its finite gradient."""
        big = float(dtype.max)
        rows = [[big, 0.0], [-big, 0.0], [big, 1.0], [big, big]]
        y, g, h = derivatives(lambda t: tfm.norm(t, ord=ord, axis=-1), tf.constant(rows, dtype), mode)
        assert y[3] == INF
        ulp = float(np.spacing(dtype.as_numpy_dtype(big)))
        np.testing.assert_array_less(np.abs(y[:3] - big), 4 * ulp + 0.5)   # finite, C3's 4 ULP
        np.testing.assert_allclose(g[:3], [[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]], rtol=1e-12)
        rtol = 1e-5 if dtype == tf.float32 else 1e-12
        np.testing.assert_allclose(g[3], 2.0 ** ((1 - ord) / ord), rtol=rtol)
        assert np.isfinite(h).all()

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("ord", [1, 3.0, 7.0])
    def test_long_rows_are_summed_within_c3(self, ord, mode):
        """A float32 sum's rounding grew with the row: 22 ULP for the 1-norm of 1e5 entries of 1.1,
        159 for the 3-norm. Accumulated in float64 and rounded once, within C3."""
        x = np.full([2, 100_000], 1.1, np.float32)
        x[1, ::3] = 3.3
        y = run(mode, lambda t: tfm.norm(t, ord=ord, axis=-1))(tf.constant(x))
        for row, got in zip(x, y.numpy()):
            with mpmath.workdps(40):
                values, counts = np.unique(row, return_counts=True)
                total = mpmath.fsum(int(c) * mpmath.mpf(float(v)) ** ord for v, c in zip(values, counts))
                want = float(mpmath.root(total, ord))
            assert abs(float(got) - want) <= 4 * float(np.spacing(np.float32(want))), (got, want)

    @pytest.mark.parametrize("op, shape, axis", [(op, shape, axis) for op in ("norm", "l2_normalize")
                                                 for shape, axis in [((10**7,), None), ((2, 100_000), -1),
                                                                     ((100_000, 2), 0)]]
                             + [("norm", (2, 700, 1500), (1, 2))])
    def test_euclidean_long_rows_under_xla_within_c3(self, op, shape, axis):
        """XLA's float32 reduction left the Euclidean norm of 1e7 entries of 1.1 1545 ULP off (a few
        float32 partial sums): under XLA the squares are summed in float64 (a dot, in chunks for long
        rows) and rounded once, within C3 for trailing and other axes, the norm and the unit vector."""
        x = np.full(shape, 1.1, np.float32)
        x.reshape(-1)[::3] = 3.3
        total = np.sum(np.square(x.astype(np.float64)), axis=axis, keepdims=True)  # float64 pairwise
        if op == "norm":
            got = run("jit", lambda t: tfm.norm(t, axis=axis, keepdims=True))(tf.constant(x)).numpy()
            want = np.sqrt(total)
        else:
            got = run("jit", lambda t: tfm.l2_normalize(t, axis=axis))(tf.constant(x)).numpy()
            want = x / np.sqrt(total)
        ulps = np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(want).astype(np.float32))
        assert ulps.max() <= 4, ulps.max()

    @pytest.mark.parametrize("mode", ["eager", "function"])
    @pytest.mark.parametrize("op, shape, axis", [
        (op, shape, axis) for op in ("norm", "l2_normalize")
        for shape, axis in [((100_000,), None), ((4, 8192), -1), ((100_000, 16), 0), ((16, 5000, 3), 1),
                            ((30, 7, 1000), (1, 2)), ((1000, 64), 0), ((100_003,), None),
                            ((20, 2, 9), (0, 2))]])
    def test_euclidean_long_rows_in_a_graph_within_c3(self, op, shape, axis, mode):
        """TensorFlow's float32 reduction left the norm of 1e5 equal entries 12 ULP off, and over a
        leading axis, which it sums as running sums, up to 2264 (1e5 rows of 16): outside XLA the squares
        are summed in float32 blocks of at most 256 entries (16 over a leading axis), the block sums in
        float64. A prime length and non-contiguous axes take a float64 sum."""
        x = np.full(shape, 1.1, np.float32)
        x.reshape(-1)[::3] = 3.3
        total = np.sum(np.square(x.astype(np.float64)), axis=axis, keepdims=True)  # float64 pairwise
        if op == "norm":
            got = run(mode, lambda t: tfm.norm(t, axis=axis, keepdims=True))(tf.constant(x)).numpy()
            want = np.sqrt(total)
        else:
            got = run(mode, lambda t: tfm.l2_normalize(t, axis=axis))(tf.constant(x)).numpy()
            want = x / np.sqrt(total)
        ulps = np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(want).astype(np.float32))
        assert ulps.max() <= 4, ulps.max()

    @pytest.mark.parametrize("ord", [0.01, 0.1, 0.25, 0.5, 1.5])
    def test_p_norm_beyond_every_range_keeps_its_gradient(self, ord):
        """A float32 row of 1000 entries 3e37: the norm overflows float32 (inf), the exact gradient
        ``(|x| / norm)**(p - 1) = 1000**((1 - p) / p)`` does not (or saturates). Unscaled, the float64
        norm itself overflows for p = 0.01 (3e337) and the gradient came out 0: small p keep the scaling."""
        x = tf.constant(np.full((1, 1000), 3e37, np.float32))
        y, g, _ = derivatives(lambda t: tfm.norm(t, ord=ord, axis=-1), x)
        assert y[0] == INF
        exact = min(float(mpmath.mpf(1000) ** ((1 - mpmath.mpf(ord)) / ord)), float(np.finfo(np.float32).max))
        np.testing.assert_allclose(g, exact, rtol=1e-5)

    @pytest.mark.parametrize("ord,axis", [("fro", None), ("fro", 0), (0, None), (-1, 0), ("nuc", (0, 1)), (3, (0, 1))])
    def test_bad_ord(self, ord, axis):
        with pytest.raises(ValueError, match="ord"):
            tfm.norm(tf.ones([2, 2]), ord=ord, axis=axis)

    @pytest.mark.parametrize("axis", [(0, 0), (0, 1, 2), 2, (0, -2), 1.5])
    def test_bad_axis(self, axis):
        with pytest.raises(ValueError, match="axis"):
            tfm.norm(tf.ones([2, 2]), axis=axis)

    def test_type_error(self):
        with pytest.raises(TypeError, match="tensor"):
            tfm.norm(tf.constant([1, 2]))


class TestL2Normalize:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_zero_vector(self, dtype, mode):
        y, g, h = derivatives(lambda t: tfm.l2_normalize(t, axis=-1), tf.zeros([2, 3], dtype), mode)
        assert (y == 0).all() and np.isfinite(g).all() and np.isfinite(h).all()
        want = 32752.0 if dtype == tf.float16 else 1e6  # TF's rsqrt(epsilon), kept finite
        np.testing.assert_allclose(g, want, rtol=rtol(dtype))

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_tf(self, dtype, mode):
        x = tf.constant([[3.0, -4.0, 0.0], [1.0, 2.0, 2.0]], dtype)
        y, g, h = derivatives(lambda t: tfm.l2_normalize(t, axis=1) * tf.constant([1.0, 2.0, 3.0], dtype), x, mode)
        assert all(np.isfinite(a).all() for a in (y, g, h))
        want = tf.math.l2_normalize(tf.cast(x, tf.float64), axis=1).numpy() * [1, 2, 3]
        np.testing.assert_allclose(y, want, rtol=rtol(dtype), atol=1e-30)

    @pytest.mark.parametrize("scale", [1e30, 1e20, 1e-5])
    def test_huge_entries_float32(self, scale):
        y = tfm.l2_normalize(tf.constant([3 * scale, 4 * scale], tf.float32)).numpy()
        np.testing.assert_allclose(y, [0.6, 0.8], rtol=1e-6)
        assert tf.math.l2_normalize(tf.constant([3e20, 4e20])).numpy().tolist() == [0.0, 0.0]

    def test_below_epsilon_is_tf_semantics(self):
        x = tf.constant([3e-30, 4e-30], tf.float32)
        np.testing.assert_allclose(tfm.l2_normalize(x).numpy(), tf.math.l2_normalize(x).numpy(), rtol=1e-6)

    def test_epsilon_zero_zero_vector_is_finite(self):
        y, g, _ = derivatives(lambda t: tfm.l2_normalize(t, epsilon=0.0), [0.0, 0.0])
        assert (y == 0).all() and np.isfinite(g).all()

    @pytest.mark.parametrize("mode", MODES)
    def test_tensor_epsilon_known_while_tracing(self, mode):
        x = tf.constant([3e-4, 4e-4], tf.float32)
        for epsilon in (tf.constant(1e-4), np.float64(1e-4), tf.constant(1e-4, tf.float64)):
            got = run(mode, lambda t: tfm.l2_normalize(t, epsilon=epsilon))(x).numpy()
            np.testing.assert_allclose(got, tf.math.l2_normalize(x, epsilon=1e-4).numpy(), rtol=1e-6)

    def test_eager_variable_epsilon_is_read_at_each_call(self):
        """A tf.Variable epsilon, which TensorFlow takes, was refused as 'a runtime tensor' even eager."""
        x = tf.constant([[3.0, 4.0], [1e-7, 0.0]])
        epsilon = tf.Variable(1e-12)
        np.testing.assert_allclose(tfm.l2_normalize(x, axis=1, epsilon=epsilon),
                                   tf.math.l2_normalize(x, axis=1, epsilon=epsilon), rtol=1e-6)
        epsilon.assign(1.0)
        np.testing.assert_allclose(tfm.l2_normalize(x, axis=1, epsilon=epsilon),
                                   tf.math.l2_normalize(x, axis=1, epsilon=1.0), rtol=1e-6)

    def test_epsilon_errors_name_it(self):
        fn = tf.function(lambda t, e: tfm.l2_normalize(t, epsilon=e),
                         input_signature=[tf.TensorSpec([2]), tf.TensorSpec([])])
        with pytest.raises(TypeError, match="l2_normalize: epsilon must be a number .*or a tensor "
                                            "whose value is known when the tf.function is traced"):
            fn(tf.ones([2]), tf.constant(1e-4))
        variable = tf.Variable(1e-4)
        with pytest.raises(TypeError, match="epsilon must be a number .*got a tensor known only when"):
            tf.function(lambda t: tfm.l2_normalize(t, epsilon=variable))(tf.ones([2]))
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
                tfm.l2_normalize(tf.ones([2]), epsilon=bad)
        with pytest.raises(TypeError, match="epsilon must be a number"):
            tfm.l2_normalize(tf.ones([2]), epsilon="small")

    @pytest.mark.parametrize("axis", [None, 0, 1, [0, 1]])
    def test_axis_and_dim(self, axis):
        x = tf.random.stateless_normal([3, 4], seed=[11, 12], dtype=tf.float64)
        want = tf.math.l2_normalize(x, axis=axis)
        np.testing.assert_allclose(tfm.l2_normalize(x, axis=axis), want, rtol=1e-13)
        np.testing.assert_allclose(tfm.l2_normalize(x, dim=axis), want, rtol=1e-13)

    @pytest.mark.parametrize("mode", MODES)
    def test_float16_second_derivative_saturates(self, mode):
        x = tf.constant([[-(2.0 ** -10), -(2.0 ** -10)]], tf.float16)
        v = tf.constant([[1.0, -1.0]], tf.float16)
        y, g, h = derivatives(lambda t: tfm.l2_normalize(t, axis=1) * v, x, mode)
        assert np.isfinite(g).all() and np.isfinite(h).all()
        np.testing.assert_allclose(g, [[1024 / np.sqrt(2), -1024 / np.sqrt(2)]], rtol=2e-3)

    @pytest.mark.parametrize("mode", MODES)
    def test_float16_gradient_below_epsilon_saturates(self, mode):
        # Found by the thorough Hypothesis profile: below epsilon the gradient
        # is the upstream gradient times rsqrt(epsilon) = 32752 in float16,
        # -inf for an upstream gradient of -3.
        x = tf.constant([[-5.96e-08, -5.96e-08]], tf.float16)
        v = tf.constant([[1.0, -3.0]], tf.float16)
        y, g, h = derivatives(lambda t: tfm.l2_normalize(t, axis=1) * v, x, mode)
        assert np.isfinite(g).all() and np.isfinite(h).all()
        np.testing.assert_array_equal(g, [[32752.0, -65504.0]])

    def test_gradient_against_float64(self):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((200, 6)) * np.exp(rng.uniform(-30, 30, (200, 1)))
        v = rng.standard_normal((200, 6))
        grads = []
        for dtype in (tf.float32, tf.float64):
            xt = tf.constant(x, dtype)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                loss = tf.reduce_sum(tfm.l2_normalize(xt, axis=1, epsilon=0.0) * tf.constant(v, dtype))
            grads.append(tape.gradient(loss, xt).numpy().astype(np.float64))
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        exact = (v - u * np.sum(v * u, axis=1, keepdims=True)) / np.linalg.norm(x, axis=1, keepdims=True)
        np.testing.assert_allclose(grads[1], exact, rtol=1e-10, atol=1e-12 * np.abs(exact).max())
        row = np.abs(exact).max(axis=1, keepdims=True)
        assert (np.abs(grads[0] - exact) / row).max() < 1e-5

    def test_nan(self):
        y, g, _ = derivatives(lambda t: tfm.l2_normalize(t, axis=-1), [[NAN, 1.0], [1.0, 1.0]])
        assert np.isnan(y[0]).all() and np.isnan(g[0]).all() and np.isfinite(y[1]).all()

    def test_errors(self):
        with pytest.raises(TypeError, match="x"):
            tfm.l2_normalize(tf.constant([1, 2]))
        with pytest.raises(ValueError, match="axis"):
            tfm.l2_normalize(tf.zeros([2]), axis=1)


class TestUnscaledFastPath:
    """``l2_normalize`` and ``norm`` skip the scaling when no plain sum of squares overflows or underflows.

    One extreme row sends the whole batch through the scaled path, so the
    ordinary rows of such a batch must come out bit for bit as without it.
    """

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
    @pytest.mark.parametrize("op", ["l2_normalize", "norm"])
    def test_same_bits_as_the_scaled_path(self, op, mode, dtype):
        rng = np.random.default_rng(11)
        x = (rng.normal(size=(6, 33)) * rng.uniform(1e-3, 1e3, (6, 1))).astype(dtype.as_numpy_dtype)
        extreme = np.full((1, 33), 1e30 if dtype == tf.float32 else 1e300, dtype.as_numpy_dtype)
        cotangent = tf.constant(rng.normal(size=(7, 33)), dtype)

        def value_and_grad(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                if op == "norm":
                    y = tfm.norm(x, axis=-1)
                    loss = tf.reduce_sum(y * cotangent[: tf.shape(x)[0], 0])
                else:
                    y = tfm.l2_normalize(x, axis=-1)
                    loss = tf.reduce_sum(y * cotangent[: tf.shape(x)[0]])
            return y, tape.gradient(loss, x)

        fast = [t.numpy() for t in run(mode, value_and_grad)(tf.constant(x))]
        scaled = [t.numpy()[:6] for t in run(mode, value_and_grad)(tf.constant(np.concatenate([x, extreme])))]
        for f, s in zip(fast, scaled):
            np.testing.assert_array_equal(f, s)


class TestDivideNoNan:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_y_zero(self, dtype, mode):
        def both(x, y):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch([x, y])
                q = tfm.divide_no_nan(x, y)
            return q, tape.gradient(q, x), tape.gradient(q, y)

        x = tf.constant([1.0, 0.0, -2.0, 6.0], dtype)
        y = tf.constant([0.0, 0.0, 0.0, 3.0], dtype)
        q, gx, gy = [t.numpy().astype(np.float64) for t in run(mode, both)(x, y)]
        np.testing.assert_array_equal(q, [0, 0, 0, 2])
        np.testing.assert_allclose(gx, [0, 0, 0, 1 / 3], rtol=rtol(dtype))
        np.testing.assert_allclose(gy, [0, 0, 0, -6 / 9], rtol=rtol(dtype))

    @pytest.mark.parametrize("mode", MODES)
    def test_second_derivative_finite(self, mode):
        y, g, h = derivatives(lambda t: tfm.divide_no_nan(tf.constant([1.0, 2.0]), t), [0.0, 2.0], mode)
        assert np.isfinite(g).all() and np.isfinite(h).all()
        np.testing.assert_allclose(h, [0, 2 * 2 / 8])

    def test_gradient_without_overflow(self):
        x = tf.constant([1e-20], tf.float32)
        y = tf.constant([1e-20], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(y)
            q = tfm.divide_no_nan(x, y)
        assert tape.gradient(q, y).numpy()[0] == pytest.approx(-1e20, rel=1e-6)

    @pytest.mark.parametrize("mode", MODES)
    def test_zero_x_with_a_large_upstream_gradient(self, mode):
        """x = 0: the y-gradient is 0 even where dq / y overflows (inf * 0 was NaN); NaN dq stays NaN."""
        def grad_y(x, y, scale):
            with tf.GradientTape() as tape:
                tape.watch(y)
                loss = scale * tf.reduce_sum(tfm.divide_no_nan(x, y))
            return tape.gradient(loss, y)

        x, y = tf.constant([0.0, 0.0, 2.0]), tf.constant([1e-35, 3.0, 4.0])
        np.testing.assert_array_equal(run(mode, grad_y)(x, y, tf.constant(1e4)), [0.0, 0.0, -1250.0])
        assert np.isnan(run(mode, grad_y)(x, y, tf.constant(NAN)).numpy()).all()

    def test_broadcasting_reduces_gradients(self):
        x = tf.constant([[1.0], [2.0]])
        y = tf.constant([0.0, 2.0, 4.0])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, y])
            q = tfm.divide_no_nan(x, y)
        assert q.shape == (2, 3)
        np.testing.assert_allclose(q, tf.math.divide_no_nan(x, y))
        assert tape.gradient(q, x).shape == x.shape and tape.gradient(q, y).shape == y.shape
        np.testing.assert_allclose(tape.gradient(q, x).numpy().ravel(), [0.75, 0.75])

    def test_nan_and_inf(self):
        q = tfm.divide_no_nan([NAN, INF, 1.0, 1.0], [0.0, 0.0, NAN, INF]).numpy()
        assert np.isnan(q[0]) and q[1] == 0 and np.isnan(q[2]) and q[3] == 0

    def test_errors(self):
        with pytest.raises(TypeError, match="y"):
            tfm.divide_no_nan(tf.constant([1.0]), tf.constant([1]))
        with pytest.raises(TypeError, match="x"):
            tfm.divide_no_nan(tf.constant([1]), [1.0])
        with pytest.raises(ValueError, match="broadcast"):
            tfm.divide_no_nan(tf.zeros([2]), tf.zeros([3]))

    @pytest.mark.parametrize("mode", MODES)
    def test_float16_subnormal_y_saturates_gradients(self, mode):
        def both(x, y):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch([x, y])
                q = tfm.divide_no_nan(x, y)
            return q, tape.gradient(q, x), tape.gradient(q, y)

        q, gx, gy = run(mode, both)(tf.constant([1.0], tf.float16), tf.constant([6e-8], tf.float16))
        assert q.numpy()[0] == INF
        assert gx.numpy()[0] == 65504 and gy.numpy()[0] == -65504

    @pytest.mark.parametrize("mode", MODES)
    def test_bfloat16_subnormal_y_acts_as_zero(self, mode):
        def both(x, y):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch([x, y])
                q = tfm.divide_no_nan(x, y)
            return q, tape.gradient(q, x), tape.gradient(q, y)

        x = tf.constant([-1.0, NAN], tf.bfloat16)
        y = tf.constant([1.1663108012064884e-38, -1.1663108012064884e-38], tf.bfloat16)
        q, gx, gy = [t.numpy().astype(np.float64) for t in run(mode, both)(x, y)]
        assert q[0] == 0 and gx[0] == 0 and gy[0] == 0
        assert np.isnan(q[1]) and gx[1] == 0 and np.isnan(gy[1])

    def test_second_derivative_finite_at_float64_extremes(self):
        y, g, h = derivatives(lambda t: tfm.divide_no_nan(tf.constant([-1.7976931348623157e308], tf.float64), t),
                              tf.constant([-0.9999999999999999], tf.float64))
        assert np.isfinite(g).all() and not np.isnan(h).any()


@pytest.mark.parametrize("axis", [(-2, -1), (-1, -2), (0, 2), (2, 0)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_matrix_two_norm_of_unknown_rank_matches_tensorflow(axis, keepdims):
    # The permutation that moves the two axes last is built in the graph when
    # the rank is unknown at trace time (a TypeError on `% None` before).
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    fn = tf.function(lambda t: tfm.norm(t, ord=2, axis=axis, keepdims=keepdims),
                     input_signature=[tf.TensorSpec(None, tf.float32)])
    expected = tf.norm(x, ord=2, axis=axis, keepdims=keepdims).numpy()
    got = fn(x).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ord, axis", [(np.inf, -1), (1, (0, 1)), (np.inf, (0, 1))])
def test_max_norms_keep_nan(ord, axis, mode):
    """C2: XLA's maximum skips NaN (the inf-norm of [nan, 0, 1] was 1 under jit_compile)."""
    def value_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tfm.norm(x, ord, axis)
        return y, tape.gradient(y, x)

    for position in range(3):
        row = [0.0, 1.0, 0.5]
        row[position] = np.nan
        got, grad = (t.numpy() for t in run(mode, value_and_gradient)(tf.constant([row])))
        assert np.all(np.isnan(got)), (position, got)
        # The same gradient in every mode: NaN at every entry (under XLA it was 0 off the NaN).
        assert np.all(np.isnan(grad)), (position, grad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ord", [0.25, 0.3, 0.5, 1.5])
@pytest.mark.parametrize("row", [[1e-38, 5e-39], [1e-38, 0.0], [3.0, 1e-39]])
def test_p_norm_of_subnormal_entries_under_nested_tapes(row, ord, mode):
    """Subnormals are 0 (C3): a zero norm's gradient is 0, not NaN, also while an outer tape records.

    Under nested eager tapes the inner XLA backward compared a widened float32
    subnormal above 0 but flushed it in the arithmetic: ratio 0**(p - 1).
    """
    def value_and_gradient(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tfm.norm(x, ord=ord)
            g = inner.gradient(y, x)
        return y, g

    x = tf.constant(row)
    y, g = (t.numpy() for t in run(mode, value_and_gradient)(x))
    flushed = np.where(np.abs(row) < np.finfo(np.float32).tiny, 0.0, row)
    assert y == pytest.approx(np.sum(np.abs(flushed) ** ord) ** (1 / ord), rel=1e-6)
    safe = np.where(flushed != 0, np.abs(flushed), 1.0)
    expected = np.where(flushed != 0, (safe / (y if y > 0 else 1.0)) ** (ord - 1), 0.0)
    np.testing.assert_allclose(g, expected, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_divide_no_nan_mixed_second_derivative_at_a_zero_numerator(dtype, mode):
    """d2(x/y)/dxdy = -1/y**2 from both sides, at x = 0 too (a dice loss with no overlap):
    the y-gradient's x-derivative there was 1/y (-1/30 for y = -30); 0 at y = 0."""
    x0 = tf.constant([0.0, 0.0, 2.0, 0.0], dtype)
    y0 = tf.constant([-30.0, 4.0, 4.0, 0.0], dtype)

    def mixed(x, y):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([x, y])
            with tf.GradientTape() as inner:
                inner.watch([x, y])
                q = tf.reduce_sum(tfm.divide_no_nan(x, y))
            gx, gy = inner.gradient(q, [x, y])
        return outer.gradient(gy, x), outer.gradient(gx, y)

    yx, xy = (t.numpy() for t in run(mode, mixed)(x0, y0))
    want = [-1 / 900, -1 / 16, -1 / 16, 0.0]
    np.testing.assert_allclose(yx, want, rtol=1e-6)
    np.testing.assert_allclose(xy, want, rtol=1e-6)


def test_divide_no_nan_of_an_infinite_x():
    """The documented edge: value ±inf (NaN at y = ±inf), y-gradient NaN where -x/y**2 is inf/inf."""
    big = float(np.finfo(np.float32).max)
    x = tf.constant([np.inf, -np.inf, np.inf])
    y = tf.constant([big, 2.0, np.inf])
    with tf.GradientTape() as tape:
        tape.watch(y)
        value = tfm.divide_no_nan(x, y)
    got = value.numpy()
    assert got[0] == np.inf and got[1] == -np.inf and np.isnan(got[2])
    assert np.isnan(tape.gradient(value, y).numpy()[[0, 2]]).all()


def test_float16_subnormal_keeps_its_value_in_l2_normalize():
    """README (Subnormals): float16 subnormals widen to normal float32 numbers, so
    l2_normalize([1e-6, 0, 0, 0]) is 0.0332 in float16, not 0; the floor is float16's."""
    x = np.float16(1e-6)
    assert 0 < x < np.finfo(np.float16).tiny
    floor = max(1e-12, float(np.finfo(np.float32).tiny), _dtypes.rsqrt_floor(tf.float16))
    want = float(x) / np.sqrt(max(float(x) ** 2, floor))
    got = tfm.l2_normalize(tf.constant([x, 0, 0, 0], tf.float16)).numpy()
    assert got[0] == pytest.approx(want, rel=1e-3) and got[0] == pytest.approx(0.0332, abs=5e-5)
    assert not got[1:].any()


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("op, ref", [
    (lambda r: tfm.norm(r), lambda r: tf.norm(r)),
    (lambda r: tfm.norm(r, ord=3), lambda r: tf.norm(r, ord=3)),
    (lambda r: tfm.norm(r, ord=0.5), lambda r: tf.norm(r, ord=0.5)),
    (lambda r: tfm.l2_normalize(r, 0), lambda r: tf.math.l2_normalize(r, 0)),
], ids=["norm", "ord3", "ord0.5", "l2_normalize"])
def test_norms_vectorize_under_vectorized_map(op, ref, jit):
    """C6: the power-of-two scale read exponent bits (tf.bitcast), which pfor cannot vectorize: it
    fell back to a loop, refused fallback_to_while_loop=False, and failed to compile under XLA."""
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32))
    w = tf.constant(np.random.default_rng(1).normal(size=(5,)).astype(np.float32))

    def per_example(fn, v, **options):
        """Per-example value and gradient with respect to ``w`` of ``sum(fn(r * w))``."""
        def one(r):
            with tf.GradientTape() as tape:
                tape.watch(w)
                y = tf.reduce_sum(fn(r * w))
            return y, tape.gradient(y, w)
        return tf.vectorized_map(one, v, **options)

    def vectorized(v):
        return per_example(op, v, fallback_to_while_loop=False)

    got = tf.function(vectorized, jit_compile=True)(x) if jit else vectorized(x)
    for a, b in zip(got, per_example(ref, x)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


class TestReduceEuclideanNorm:
    """``tf.math.reduce_euclidean_norm``'s drop-in: the Euclidean norm over any axes."""

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_zero_slice_has_zero_gradient(self, dtype, mode):
        # TensorFlow's kernel gives 0/0 = NaN at every entry of a zero slice.
        x = tf.constant([[0.0, 0.0], [3.0, 4.0]], dtype)
        y, g, h = derivatives(lambda t: tfm.reduce_euclidean_norm(t, axis=-1), x, mode)
        np.testing.assert_allclose(y, [0.0, 5.0], rtol=rtol(dtype))
        np.testing.assert_allclose(g, [[0.0, 0.0], [0.6, 0.8]], rtol=rtol(dtype))
        assert np.isfinite(h).all() and (h[0] == 0).all()

    @pytest.mark.parametrize("mode", MODES)
    def test_no_overflow_where_tensorflow_squares_overflow(self, mode):
        x = tf.constant([[3e30, 4e30], [3e-30, 4e-30]], tf.float32)
        y = run(mode, lambda t: tfm.reduce_euclidean_norm(t, axis=-1))(x).numpy()
        np.testing.assert_allclose(y, [5e30, 5e-30], rtol=1e-7)

    def test_axes_and_keepdims_match_tensorflow(self):
        x = tf.constant(np.random.default_rng(7).standard_normal([2, 3, 4]), tf.float32)
        for kwargs in ({}, {"axis": 1}, {"axis": [0, 2]}, {"axis": (0, 1, 2), "keepdims": True}, {"axis": []},
                       {"axis": -1, "keepdims": True}, {"axis": tf.constant([1, 2])}):
            ours, theirs = tfm.reduce_euclidean_norm(x, **kwargs), tf.math.reduce_euclidean_norm(x, **kwargs)
            assert ours.shape == theirs.shape, kwargs
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, err_msg=str(kwargs))

    def test_lint_and_locate_name_it_for_tensorflows_op(self):
        import keras

        from safeops import debug

        inputs = keras.Input([4])
        hidden = keras.layers.Dense(4, kernel_initializer="zeros")(inputs)   # a zero vector per row
        norm = keras.layers.Lambda(lambda t: tf.math.reduce_euclidean_norm(t, axis=-1, keepdims=True))(hidden)
        model = keras.Model(inputs, keras.layers.Dense(1)(norm))
        model.compile(loss="mse")
        x, y = np.ones([8, 4], np.float32), np.ones([8, 1], np.float32)
        findings = [f for f in debug.lint(model, x, y) if f.op_type == "EuclideanNorm"]
        assert findings and findings[0].fix.startswith("safeops.math.reduce_euclidean_norm"), findings
        report = debug.locate_nonfinite(model, x, y)
        assert report.fix == "safeops.math.reduce_euclidean_norm", report

"""Edge and reference tests for safeops.math.reduce_logsumexp, cumulative_logsumexp, softmax, log_softmax."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm

from tests._modes import DTYPES, INF, MODES, NAN, derivatives, run  # noqa: F401
from tests.ulp import ftz_ulps

mpmath.mp.dps = 50


def mp_lse(row):
    return float(mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row)))


class TestReduceLogSumExp:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_finite_value_gradient_second_derivative(self, dtype, mode):
        x = tf.constant([[0.0, -3.0, 2.0], [50.0, 49.0, -60.0]], dtype)
        y, g, h = derivatives(lambda t: tfm.reduce_logsumexp(t, axis=1), x, mode)
        assert all(np.isfinite(a).all() for a in (y, g, h))
        want = tf.reduce_logsumexp(tf.cast(x, tf.float64), axis=1).numpy()
        np.testing.assert_allclose(y, want, rtol=1e-2 if dtype in (tf.float16, tf.bfloat16) else 1e-6)
        np.testing.assert_allclose(g.sum(axis=1), [1.0, 1.0], rtol=1e-2)
        assert y.dtype == np.float64 and tfm.reduce_logsumexp(x).dtype == dtype

    @pytest.mark.parametrize("row", [[0.0, -20.0], [1.0, 2.0, 3.0], [-1e3, -1e3 + 1.0], [88.0, 89.0, 0.0], [0.0, -30.0, -40.0]])
    def test_against_mpmath(self, row):
        for dtype, ulp in ((np.float64, 4), (np.float32, 4)):
            got = tfm.reduce_logsumexp(np.array(row, dtype)).numpy()
            want = mp_lse(np.array(row, dtype))
            assert abs(got - want) <= ulp * np.spacing(dtype(abs(want))), (row, got, want)

    def test_dominated_slice_keeps_tiny_remainder(self):
        # naive max shift + log returns exactly 0 here (Blanchard, Higham & Higham 2021)
        got = tfm.reduce_logsumexp(tf.constant([0.0, -20.0])).numpy()
        assert got == pytest.approx(2.0611536e-09, rel=1e-6)
        assert tf.reduce_logsumexp(tf.constant([0.0, -20.0])).numpy() == 0.0

    @pytest.mark.parametrize("mode", MODES)
    def test_all_minus_inf_slice(self, mode):
        y, g, h = derivatives(lambda t: tfm.reduce_logsumexp(t, axis=-1), [[-INF, -INF], [0.0, -INF]], mode)
        assert y[0] == -INF and y[1] == 0.0
        np.testing.assert_array_equal(g, [[0, 0], [1, 0]])
        np.testing.assert_array_equal(h, np.zeros((2, 2)))

    def test_plus_inf(self):
        y, g, _ = derivatives(lambda t: tfm.reduce_logsumexp(t, axis=-1), [[INF, 1.0, -INF]])
        assert y[0] == INF
        np.testing.assert_array_equal(g, [[1, 0, 0]])

    def test_nan_propagates_to_its_slice_only(self):
        y, g, _ = derivatives(lambda t: tfm.reduce_logsumexp(t, axis=-1), [[NAN, 1.0], [1.0, 2.0]])
        assert np.isnan(y[0]) and np.isfinite(y[1])
        assert np.isnan(g[0]).all() and np.isfinite(g[1]).all()

    def test_empty_input(self):
        assert tfm.reduce_logsumexp(tf.zeros([0])).numpy() == -INF
        assert tfm.reduce_logsumexp(tf.zeros([2, 0]), axis=1).numpy().tolist() == [-INF, -INF]

    @pytest.mark.parametrize("axis", [None, 0, 1, -1, -3, [0, 2], (1, -1)])
    @pytest.mark.parametrize("keepdims", [False, True])
    def test_axis_keepdims_match_tf(self, axis, keepdims):
        x = tf.random.stateless_normal([2, 3, 4], seed=[1, 2], dtype=tf.float64) * 5
        got = tfm.reduce_logsumexp(x, axis=axis, keepdims=keepdims)
        want = tf.reduce_logsumexp(x, axis=axis, keepdims=keepdims)
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-13)

    def test_zero_weights_drop_entries(self):
        y, g, _ = derivatives(lambda t: tfm.reduce_logsumexp(t, weights=[0.0, 1.0, 0.0]), [1e3, 0.0, -INF])
        assert y == 0.0
        np.testing.assert_array_equal(g, [0, 1, 0])

    def test_weights_match_scipy_formula(self):
        x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
        w = np.array([0.5, 2.0, 1.5])
        got = tfm.reduce_logsumexp(x, axis=1, weights=w).numpy()
        np.testing.assert_allclose(got, np.log((w * np.exp(x)).sum(axis=1)), rtol=1e-13)

    def test_weight_gradient(self):
        x = tf.constant([1.0, 2.0], tf.float64)
        w = tf.Variable([0.5, 2.0], dtype=tf.float64)
        with tf.GradientTape() as tape:
            y = tfm.reduce_logsumexp(x, weights=w)
        np.testing.assert_allclose(tape.gradient(y, w).numpy(), np.exp(x.numpy()) / np.exp(y.numpy()), rtol=1e-13)

    def test_negative_weights_without_sign_give_nan(self):
        assert np.isnan(tfm.reduce_logsumexp([0.0, 0.0], weights=[1.0, -2.0]).numpy())

    @pytest.mark.parametrize("mode", MODES)
    def test_return_sign(self, mode):
        f = run(mode, lambda x, w: tfm.reduce_logsumexp(x, axis=1, weights=w, return_sign=True))
        x = tf.constant([[0.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]], tf.float64)
        w = tf.constant([[1.0, -2.0], [1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]], tf.float64)
        lse, sign = f(x, w)
        np.testing.assert_array_equal(sign.numpy(), [-1, 0, 1, -1])
        np.testing.assert_allclose(lse.numpy(), [0.0, -INF, np.log(1 + np.e), 1 + np.log(2)], rtol=1e-14)

    def test_return_sign_gradient(self):
        x = tf.constant([0.0, 1.0], tf.float64)
        y, g, _ = derivatives(lambda t: tfm.reduce_logsumexp(t, weights=[1.0, -1.0], return_sign=True)[0], x)
        s = 1 - np.e
        np.testing.assert_allclose(g, [1 / s, -np.e / s], rtol=1e-13)
        y0, g0, _ = derivatives(lambda t: tfm.reduce_logsumexp(t, weights=[1.0, -1.0], return_sign=True)[0], [0.0, 0.0])
        assert y0 == -INF and (g0 == 0).all()

    def test_tiny_weight_at_the_maximum(self):
        # weights folded into the exponent: (w_top - 1) + rest lost these
        assert tfm.reduce_logsumexp([0.0], weights=[1e-30]).numpy() == pytest.approx(np.log(1e-30), rel=1e-6)
        want = np.log(np.exp(-1.0) + 1e-10 * np.exp(16.0))
        assert tfm.reduce_logsumexp([-1.0, 16.0], weights=[1.0, 1e-10]).numpy() == pytest.approx(want, rel=1e-6)
        lse, sign = tfm.reduce_logsumexp([0.0, -20.0], weights=[-1.0, 1.0], return_sign=True)
        assert sign.numpy() == -1 and lse.numpy() == pytest.approx(np.log1p(-np.exp(-20.0)), rel=1e-6)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("x, w", [
        ([-1.7976931348623157e308, -30.0], [0.0, 334118513894268.0]),  # x_k cancels log w_k: 3.44
        # the error of log(2.2e-16), then an x_k that carries the whole result
        ([-1.4916681462400413e-154, -2.220446049250313e-16], [1.0, 2.220446049250313e-16]),
        ([-1.4916681462400413e-154, -2.225073858507202e-308], [1.0, 1.7587890653996732e-283]),
    ])
    def test_rounding_of_log_weights_is_added_back(self, mode, x, w):
        # Found by the thorough Hypothesis profile: 8 to 23 ULP before the
        # logs' and the exponent's rounding errors were added back.
        with mpmath.workdps(800):
            exact = float(mpmath.log(sum(mpmath.mpf(b) * mpmath.exp(mpmath.mpf(a)) for a, b in zip(x, w))))
        got = run(mode, lambda x, w: tfm.reduce_logsumexp(x, weights=w))(
            tf.constant(x, tf.float64), tf.constant(w, tf.float64)).numpy()
        assert ftz_ulps(np.array([got]), np.array([exact]), "float64")[0] <= 1, (got, exact)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("x, w", [
        # weights 54 decades apart, beyond float32's range
        ([-36.0, -88.72283935546875], [1.1754943508222875e-38, 4.368339510807757e16]),
        ([15.942384719848633, -88.72283935546875], [1.1754943508222875e-38, 4.368339510807757e16]),
        ([-1.0000001192092896, -1.0000001192092896], [1.0, 1.1754943508222875e-38]),  # w * 1 = tiny
    ])
    def test_float32_gradients_with_extreme_weights(self, mode, x, w):
        def body(x, w):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = tfm.reduce_logsumexp(x, weights=w)
            return tape.gradient(y, [x, w])

        gx, gw = run(mode, body)(tf.constant(x, tf.float32), tf.constant(w, tf.float32))
        x64, w64 = np.array(x, np.float64), np.array(w, np.float64)  # float32 values, exactly
        with mpmath.workdps(60):
            terms = [mpmath.mpf(b) * mpmath.exp(mpmath.mpf(a)) for a, b in zip(x64, w64)]
            total = sum(terms)
            want_x = np.array([float(t / total) for t in terms])
            want_w = np.array([float(mpmath.exp(mpmath.mpf(a)) / total) for a in x64])
        np.testing.assert_allclose(gx.numpy(), want_x, rtol=1e-5)
        np.testing.assert_allclose(gw.numpy(), want_w, rtol=1e-5)

    def test_overflowing_weight_gradient_is_not_nan(self):
        # exp(x - y) overflows for the zero-weight entry: saturated, not inf * (-c) + inf = NaN.
        x = tf.constant([-3.3762391092936863e38, -3.3895313892515355e38], tf.float32)
        w = tf.constant([0.0, 2.0], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(w)
            y = tfm.reduce_logsumexp(x, weights=w)
        gw = tape.gradient(y, w).numpy()
        assert gw[0] == np.finfo(np.float32).max and np.isfinite(gw[1])

    @pytest.mark.parametrize("mode", MODES)
    def test_zero_weight_gradient_saturates(self, mode):
        def body(x, w):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = tfm.reduce_logsumexp(x, weights=w)
            return tape.gradient(y, [x, w])

        gx, gw = run(mode, body)(tf.constant([0.0, 100.0]), tf.constant([1.0, 0.0]))
        np.testing.assert_array_equal(gx.numpy(), [1.0, 0.0])
        assert gw.numpy()[0] == 1.0 and gw.numpy()[1] == np.finfo(np.float32).max

    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("mode", MODES)
    def test_gradient_exact_at_large_x(self, mode, weighted):
        # exp(x - y) from the rounded y gave 0.49989 at [1e4, 1e4] (float32)
        kw = {"weights": [1.0, 1.0]} if weighted else {}
        _, g, _ = derivatives(lambda t: tfm.reduce_logsumexp(t, **kw), tf.constant([1e4, 1e4]), mode)
        np.testing.assert_allclose(g, [0.5, 0.5], rtol=1e-6)

    def test_errors(self):
        with pytest.raises(TypeError, match="input_tensor"):
            tfm.reduce_logsumexp(tf.constant([1, 2]))
        with pytest.raises(TypeError, match="weights"):
            tfm.reduce_logsumexp([1.0, 2.0], weights=tf.constant([1, 2]))
        with pytest.raises(ValueError, match="axis"):
            tfm.reduce_logsumexp(tf.zeros([2, 3]), axis=2)
        # TensorFlow raises InvalidArgumentError for it eagerly: code catching either works.
        for fn in (tfm.reduce_logsumexp, tfm.softmax, tfm.log_softmax):
            with pytest.raises(tf.errors.InvalidArgumentError, match="axis must be in"):
                fn(tf.zeros([2, 3]), axis=-3)
        with pytest.raises(ValueError, match="broadcast"):
            tfm.reduce_logsumexp(tf.zeros([2, 3]), weights=tf.zeros([4]))


class TestSoftmax:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_tf_and_finite(self, dtype, mode):
        x = tf.constant([[1.0, -2.0, 3.0], [100.0, 99.0, -100.0]], dtype)
        y, g, h = derivatives(lambda t: tfm.softmax(t) * tf.constant([1.0, 2.0, 3.0], dtype), x, mode)
        assert all(np.isfinite(a).all() for a in (y, g, h))
        want = tf.nn.softmax(tf.cast(x, tf.float64)).numpy() * [1, 2, 3]
        np.testing.assert_allclose(y, want, rtol=1e-2 if dtype in (tf.float16, tf.bfloat16) else 1e-6, atol=1e-30)

    @pytest.mark.parametrize("mode", MODES)
    def test_all_minus_inf_row(self, mode):
        y, g, h = derivatives(lambda t: tfm.softmax(t) * [1.0, 2.0], [[-INF, -INF]], mode)
        np.testing.assert_array_equal(y, [[0, 0]])
        np.testing.assert_array_equal(g, [[0, 0]])
        np.testing.assert_array_equal(h, [[0, 0]])

    def test_partly_masked_row(self):
        y, g, h = derivatives(lambda t: tfm.softmax(t) * [1.0, 2.0, 3.0], [[0.0, -INF, 0.0]])
        np.testing.assert_allclose(y, [[0.5, 0, 1.5]])
        assert g[0, 1] == 0 and np.isfinite(g).all() and np.isfinite(h).all()

    def test_nan_and_inf_rows(self):
        y = tfm.softmax([[NAN, 1.0], [INF, 1.0], [1.0, 2.0]]).numpy()
        assert np.isnan(y[:2]).all() and np.isfinite(y[2]).all()

    @pytest.mark.parametrize("axis", [0, 1, -2])
    def test_axis(self, axis):
        x = tf.random.stateless_normal([3, 4], seed=[3, 4])
        np.testing.assert_allclose(tfm.softmax(x, axis=axis), tf.nn.softmax(x, axis=axis), rtol=1e-6)

    def test_errors(self):
        with pytest.raises(TypeError, match="logits"):
            tfm.softmax(tf.constant([1, 2]))
        with pytest.raises(ValueError, match="axis"):
            tfm.softmax(tf.zeros([2, 3]), axis=2)
        with pytest.raises(ValueError, match="logits"):
            tfm.softmax(tf.constant(1.0))


class TestLogSoftmax:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_tf_and_finite(self, dtype, mode):
        x = tf.constant([[1.0, -2.0, 3.0], [100.0, 99.0, -100.0]], dtype)
        y, g, h = derivatives(lambda t: tfm.log_softmax(t) * tf.constant([1.0, 2.0, 3.0], dtype), x, mode)
        assert all(np.isfinite(a).all() for a in (y, g, h))
        want = tf.nn.log_softmax(tf.cast(x, tf.float64)).numpy() * [1, 2, 3]
        np.testing.assert_allclose(y, want, rtol=1e-2 if dtype in (tf.float16, tf.bfloat16) else 1e-6)

    @pytest.mark.parametrize("row", [[0.0, -20.0], [0.0, -30.0, -40.0], [1.0, 2.0, 3.0], [5.0, 5.0, -1.0]])
    def test_against_mpmath(self, row):
        for dtype in (np.float32, np.float64):
            got = tfm.log_softmax(np.array(row, dtype)).numpy()
            lse = mp_lse(np.array(row, dtype))
            for v, gv in zip(np.array(row, dtype), got):
                want = float(mpmath.mpf(float(v)) - lse)
                assert abs(gv - want) <= 4 * np.spacing(dtype(abs(want))), (row, gv, want)

    @pytest.mark.parametrize("mode", MODES)
    def test_all_minus_inf_row(self, mode):
        y, g, h = derivatives(lambda t: tfm.log_softmax(t)[:, :1] * 2.0, [[-INF, -INF]], mode)
        assert y[0, 0] == -INF
        np.testing.assert_array_equal(g, [[0, 0]])
        np.testing.assert_array_equal(h, [[0, 0]])

    def test_partly_masked_row(self):
        def loss(t):  # weight only on the live entries
            return tf.reduce_sum(tfm.log_softmax(t) * tf.constant([1.0, 0.0, 1.0]) * tf.cast(t > -INF, t.dtype))
        x = tf.constant([[0.0, -INF, 1.0]])
        y = tfm.log_softmax(x).numpy()
        assert y[0, 1] == -INF and np.isfinite(y[0, [0, 2]]).all()
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tfm.log_softmax(x)
        g = tape.gradient(out, x).numpy()  # dy = 1 everywhere, also on the -inf output
        assert g[0, 1] == 0 and np.isfinite(g).all()
        assert np.isfinite(derivatives(loss, x)[1]).all()

    @pytest.mark.parametrize("mode", MODES)
    def test_overflowing_shift_keeps_gradient(self, mode):
        # x - max = -inf by overflow is not a mask: d y_0 / d x_0 = 1 - p_0 = 1
        big = float(np.finfo(np.float32).max)
        y, g, h = derivatives(lambda t: tfm.log_softmax(t) * [1.0, 2.0], tf.constant([[-big, big]]), mode)
        assert y[0, 0] == -INF and y[0, 1] == 0.0
        np.testing.assert_array_equal(g, [[1.0, -1.0]])
        assert np.isfinite(h).all()

    def test_nan_row(self):
        y, g, _ = derivatives(tfm.log_softmax, [[NAN, 1.0], [1.0, 2.0]])
        assert np.isnan(y[0]).all() and np.isnan(g[0]).all() and np.isfinite(y[1]).all()

    @pytest.mark.parametrize("axis", [None, 0, -1])
    def test_axis(self, axis):
        x = tf.random.stateless_normal([3, 4], seed=[5, 6], dtype=tf.float64)
        want = tf.nn.log_softmax(x, axis=-1 if axis is None else axis)
        np.testing.assert_allclose(tfm.log_softmax(x, axis=axis), want, rtol=1e-13)

    def test_errors(self):
        with pytest.raises(TypeError, match="logits"):
            tfm.log_softmax(tf.constant([1, 2]))
        with pytest.raises(ValueError, match="axis"):
            tfm.log_softmax(tf.zeros([2, 3]), axis=-3)


class TestInnerXlaSwitch:
    """The inner XLA compilation is an optimisation only: off, the results are the same."""

    @pytest.mark.parametrize("mode", MODES)
    def test_same_results_with_inner_xla_off(self, mode):
        from safeops.math import _logsumexp

        x = np.array([[0.0, -20.0, -INF], [-INF, -INF, -INF], [3.0, 1.0, -2.0]], np.float32)
        fns = [
            lambda t: tfm.reduce_logsumexp(t, axis=-1),
            lambda t: tfm.log_softmax(t),
            lambda t: tfm.softmax(t),
        ]
        for fn in fns:
            on = derivatives(fn, x, mode)
            old = _logsumexp.set_inner_xla(False)
            try:
                off = derivatives(fn, x, mode)
            finally:
                _logsumexp.set_inner_xla(old)
            for a, b in zip(on, off):
                np.testing.assert_allclose(a, b, rtol=4e-7, atol=1e-12)

    def test_masked_rows_in_softmax(self):
        # Masked entries 0 with gradient 0, a fully masked row all 0, no NaN.
        x = np.array([[1.0, -INF, 0.0], [-INF, -INF, -INF]], np.float32)
        y, g, h = derivatives(lambda t: tfm.softmax(t) * tf.constant([[1.0, 2.0, 3.0]]), x, "function")
        e = np.exp([1.0, 0.0])
        np.testing.assert_allclose(y[0], [e[0] / e.sum(), 0.0, 3.0 * e[1] / e.sum()], rtol=1e-6)
        np.testing.assert_array_equal(y[1], 0.0)
        assert np.all(np.isfinite(g)) and np.all(np.isfinite(h))
        assert g[0, 1] == 0.0 and np.all(g[1] == 0.0)


class TestExactShift:
    """``x - max`` is rounded once; TwoSum recovers that error exactly, in every mode.

    Rows whose shifted logits ``x - m`` are far from 0 and not exact
    (``m = 0.3``, ``x = -86.7``): TensorFlow's kernels are 30-70 ULP off
    there (``exp`` turns the absolute rounding error of ``x - m`` into a
    relative one); safeops must stay within C3's 4 ULP.
    """

    ROWS = np.array([[0.3, -86.7, -1.1, -40.3], [1e3 + 0.1, 1e3 - 80.7, 1e3 - 33.3, 1e3 - 0.9],
                     [-0.7, -80.05, -INF, -60.3]])

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_error_term_is_exact(self, dtype, mode):
        from safeops.math._logsumexp import exact_shift

        x = np.array([0.3, -86.7, 1e3 - 80.7, 2.5e-8, -1e30, 7.0], dtype)
        m = np.full_like(x, dtype(1e3 + 0.1) if dtype == np.float32 else 0.3)
        z, err = run(mode, lambda a, b: exact_shift(a, b))(tf.constant(x), tf.constant(m))
        z, err = np.asarray(z), np.asarray(err)
        # (x - m) - z computed exactly: in float64 for float32, in mpmath for float64.
        for xi, mi, zi, ei in zip(x, m, z, err):
            exact = mpmath.mpf(float(xi)) - mpmath.mpf(float(mi)) - mpmath.mpf(float(zi))
            assert float(exact) == float(ei), (xi, mi, zi, ei)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("inner_xla", [True, False])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_softmax_family_within_4_ulp(self, dtype, inner_xla, mode):
        from safeops.math import _logsumexp

        x = self.ROWS.astype(dtype)
        old = _logsumexp.set_inner_xla(inner_xla)
        try:
            got = {name: np.asarray(run(mode, getattr(tfm, name))(tf.constant(x)))
                   for name in ("softmax", "log_softmax")}
            got["reduce_logsumexp"] = np.asarray(run(mode, lambda t: tfm.reduce_logsumexp(t, axis=-1))(
                tf.constant(x)))
        finally:
            _logsumexp.set_inner_xla(old)
        for r, row in enumerate(x):
            mp = [mpmath.mpf(float(v)) for v in row]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in mp))
            checks = [("reduce_logsumexp", got["reduce_logsumexp"][r], lse)]
            for i, v in enumerate(mp):
                if v == -mpmath.inf:
                    assert got["softmax"][r, i] == 0.0 and got["log_softmax"][r, i] == -INF
                    continue
                checks += [("softmax", got["softmax"][r, i], mpmath.exp(v - lse)),
                           ("log_softmax", got["log_softmax"][r, i], v - lse)]
            for name, value, exact in checks:
                # C3 under flush-to-zero: near the underflow threshold the
                # resolution is tiny (a correction term below it is flushed).
                ulps = float(np.ravel(ftz_ulps(value, float(exact), np.dtype(dtype).name))[0])
                assert ulps <= 4, (name, mode, inner_xla, row, value, float(exact), ulps)

    def test_tensorflow_kernels_are_off_here(self):
        # The rows really exercise the shift: TF's softmax is far beyond 4 ULP.
        x = self.ROWS[:2].astype(np.float32)
        got = tf.nn.softmax(x).numpy()
        worst = 0.0
        for r, row in enumerate(x):
            mp = [mpmath.mpf(float(v)) for v in row]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in mp))
            for i, v in enumerate(mp):
                exact = np.float32(float(mpmath.exp(v - lse)))
                worst = max(worst, abs(float(got[r, i]) - float(exact)) / float(np.spacing(exact)))
        assert worst > 8


class TestComputedInputUnderXla:
    """The input computed inside the same XLA cluster (a regression found by InfoNCE).

    XLA may recompute ``x`` inside a fusion and round it differently from the
    copy the maximum was taken of; the maximum's term must still be counted
    once (an exact-equality test with 1 counted it twice: off by log 2).
    """

    @pytest.mark.parametrize("fn_name", ["reduce_logsumexp", "log_softmax"])
    def test_matches_eager_when_input_is_computed_in_the_cluster(self, fn_name):
        rng = np.random.default_rng(0)
        a = tf.constant(rng.normal(size=(16, 6)).astype("float32"))
        b = tf.constant(rng.normal(size=(16, 6)).astype("float32"))

        def f(a, b):
            s = tf.matmul(tfm.l2_normalize(a, axis=-1), tfm.l2_normalize(b, axis=-1), transpose_b=True) / 0.1
            out = getattr(tfm, fn_name)(s, axis=-1)
            return out, s

        eager_out, s = f(a, b)
        xla_out, _ = tf.function(f, jit_compile=True)(a, b)
        reference = np.array([[mp_lse(row)] for row in s.numpy().astype(np.float64)])[:, 0]
        if fn_name == "log_softmax":
            reference = s.numpy().astype(np.float64) - reference[:, None]
        np.testing.assert_allclose(eager_out.numpy(), reference, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(xla_out.numpy(), reference, rtol=2e-6, atol=2e-6)


class TestSoftmaxLargeFiniteRowNextToMaskedRow:
    """Regression: graph mode reassociated the row factor ``m - m + 1`` to ``m + (1 - m)`` = 0."""

    @pytest.mark.parametrize("mode", MODES)
    def test_large_finite_row_is_not_zeroed(self, mode):
        x = tf.constant([[-INF, -INF], [0.0, 1e8], [-3.39e38, -3.39e38]], tf.float32)
        y = run(mode, tfm.softmax)(x).numpy()
        np.testing.assert_array_equal(y, [[0.0, 0.0], [0.0, 1.0], [0.5, 0.5]])


@pytest.mark.parametrize("mode", MODES)
def test_log_softmax_plus_inf_entry_is_nan_there_and_minus_inf_elsewhere(mode):
    # As the docstring states: inf - inf at the +inf entry; the finite entries'
    # limit -inf elsewhere (TensorFlow gives a NaN row).
    got = run(mode, lambda t: tfm.log_softmax(t))(tf.constant([[0.0, INF], [-INF, INF], [1.0, 2.0]])).numpy()
    assert got[0, 0] == -INF and np.isnan(got[0, 1])
    assert got[1, 0] == -INF and np.isnan(got[1, 1])
    assert np.isfinite(got[2]).all()


@pytest.mark.parametrize("axis", [1.0, True, [0.0, 1.0], [[0]], [[0], 1], tf.constant(1.0), [None]])
def test_float_or_bool_axis_raises_type_error_naming_it(axis):
    """C7: it was TensorFlow's 'Cannot convert 1.0 to EagerTensor of dtype int32' (a nested list: NumPy's
    'only 0-dimensional arrays can be converted'; a float tensor: 'Value for attr 'Tidx' of float')."""
    with pytest.raises(TypeError, match="reduce_logsumexp: axis must be an int"):
        tfm.reduce_logsumexp(tf.ones([2, 3]), axis)
    with pytest.raises(TypeError, match="l2_normalize: axis must be an int"):
        tfm.l2_normalize(tf.ones([2, 3]), axis)


@pytest.mark.parametrize("op", ["reduce_logsumexp", "norm", "l2_normalize"])
@pytest.mark.parametrize("axis", [0, -1])
def test_axis_of_a_scalar_is_refused_naming_it(op, axis):
    """C7: axis 0 of a rank-0 input passed the check and met TensorFlow's 'Invalid reduction dimension'."""
    with pytest.raises(ValueError, match=rf"{op}: axis must be an axis of the input, but a rank-0 input "
                                         "has none, got (0|-1)"):
        getattr(tfm, op)(tf.constant(2.0), axis=axis)
    assert np.isfinite(getattr(tfm, op)(tf.constant(2.0)).numpy())   # no axis: the whole scalar


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, below", [(tf.float32, -17.0), (tf.float64, -37.0)])
def test_softmax_of_one_dominant_entry_and_many_below_half_an_ulp(dtype, below, mode):
    """C3: the row sum held the maximum's 1, and 255 terms below half its ULP were rounded away
    one by one (23 ULP in float32, 28 in float64); summed as 1 + (sum - 1) they count."""
    from tests import reference

    x = np.array([[0.0] + [below] * 255, [0.0] + [below] * 127 + [below + 0.5] * 128])
    exact = reference.rowwise("softmax", x, dtype)
    got = run(mode, lambda t: tfm.softmax(t))(tf.constant(x, dtype)).numpy()
    assert np.max(ftz_ulps(got, exact.value, dtype.name)) <= 4


def test_weighted_logsumexp_with_a_negative_weight_under_xla():
    """C3: sum - 1 < 0 met XLA's float64 log1p (50 ULP at weights [1, -0.4]; 109 nearby)."""
    x = tf.constant([0.0, 0.0], tf.float64)
    fn = tf.function(lambda t, w: tfm.reduce_logsumexp(t, weights=w), jit_compile=True)
    for w2 in ("-0.4", "-0.38", "-0.41"):
        got = float(fn(x, tf.constant([1.0, float(w2)], tf.float64)))
        with mpmath.workdps(60):
            exact = float(mpmath.log(1 + mpmath.mpf(float(w2))))
        assert ftz_ulps(np.array([got]), np.array([exact]), "float64")[0] <= 4, (w2, got, exact)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_weighted_live_entry_at_the_lowest_value_next_to_a_zero_weight(dtype, mode):
    """x = [-max, -max], weights [0, 0.5]: the live score -max + log 0.5 rounds to -max, the score a
    zero weight's entry is given, and the tie took the dead entry for the top: the slice read as
    dead (value -inf, gradients 0). Exactly: -max + log 0.5 (which rounds to -max), d/dx = [0, 1],
    d/dw = exp(x - y) = [2, 2]."""
    lowest = -np.finfo(dtype.as_numpy_dtype).max
    x = tf.constant([[lowest, lowest], [lowest, -1.0]], dtype)
    w = tf.constant([[0.0, 0.5], [0.0, 0.5]], dtype)

    def value_and_gradients(t, v):
        with tf.GradientTape() as tape:
            tape.watch([t, v])
            y = tfm.reduce_logsumexp(t, axis=-1, weights=v)
        return (y, *tape.gradient(y, [t, v]))

    y, dx, dw = (v.numpy() for v in run(mode, value_and_gradients)(x, w))
    assert y[0] == lowest
    want = np.log(0.5) - 1.0  # the second row: the zero weight's entry at -max is dropped as ever
    assert abs(y[1] - want) <= 4 * np.spacing(dtype.as_numpy_dtype(abs(want)))
    np.testing.assert_array_equal(dx, [[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(dw[0], [2.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_weight_gradient_of_an_entry_far_above_the_top(dtype, mode):
    """d/dw = dy exp(x - y) where exp(x - y) overflows (a zero weight's entry far above the live one;
    a normal weight there would make it the top): it was formed as dy * inf, NaN for dy = 0 (a row
    the loss does not use) and the largest value for any dy, however small. Now dy exp(x - y) where
    that fits, else the largest value."""
    big = np.finfo(dtype.as_numpy_dtype).max
    far, small = (200.0, 1e-30) if dtype == tf.float32 else (800.0, 1e-300)   # exp(far) overflows
    x = tf.constant([[0.0, far]] * 3 + [[0.0, 1e4]], dtype)
    w = tf.constant([[1.0, 0.0]] * 4, dtype)
    dy = tf.constant([0.0, small, 1.0, 1.0], dtype)

    def weight_gradient(t, v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = tfm.reduce_logsumexp(t, axis=-1, weights=v)
        return tape.gradient(y, v, output_gradients=dy)

    dw = run(mode, weight_gradient)(x, w).numpy()
    assert dw[0, 1] == 0.0
    if dtype == tf.float64:   # 1e-300 exp(800) = exp(109.2) fits
        np.testing.assert_allclose(dw[1, 1], np.exp(far + np.log(small)), rtol=1e-12)
    else:   # 1e-30 exp(200) is beyond float32
        assert dw[1, 1] == big
    np.testing.assert_array_equal(dw[2:, 1], [big, big])
    np.testing.assert_allclose(dw[:, 0], dy.numpy(), rtol=1e-6)


@pytest.mark.parametrize("axis", [1, -1, [0, 1]])
def test_variable_axis_inside_tf_function(axis):
    """A tf.Variable axis read inside the custom-gradient function made TensorFlow ask for a
    ``variables`` gradient (an internal TypeError); TensorFlow's ops take it."""
    variable = tf.Variable(axis)
    x = tf.reshape(tf.range(6.0), [2, 3])
    pairs = [(tfm.reduce_logsumexp, tf.math.reduce_logsumexp), (tfm.l2_normalize, tf.math.l2_normalize)]
    for ours, theirs in pairs:
        def value_and_gradient(op):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = op(x, axis=variable)
            return y, tape.gradient(y, x)

        got = tf.function(lambda: value_and_gradient(ours))()
        want = tf.function(lambda: value_and_gradient(theirs))()
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    if isinstance(axis, int):  # TensorFlow's softmax refuses a variable axis in a graph; safeops takes it
        got = tf.function(lambda: tfm.softmax(x, axis=variable))()
        np.testing.assert_allclose(got, tf.nn.softmax(x, axis=axis), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype, top", [(tf.float32, 20.0), (tf.float64, 37.42994775023705)])
def test_gradient_keeps_the_small_entry_of_a_confident_row(op, dtype, top, mode):
    """d y_0 / dx of a row [top, 0] is [t, -t], t = p_1 (1 - p_1) or p_1 (about e^-top): 1 - p_0 rounded
    to 0 gave [0, -t] (TensorFlow 2.21's kernels too), a gradient that no longer sums to 0."""
    x = tf.constant([[top, 0.0], [0.0, top], [1.0, 0.5]], dtype)
    cotangent = tf.constant([[1.0, 0.0], [0.0, 1.0], [1.0, -2.0]], dtype)

    def gradient(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = tf.reduce_sum(getattr(tfm, op)(t) * cotangent)
        return tape.gradient(y, t)

    got = run(mode, gradient)(x).numpy()
    p1 = 1.0 / (1.0 + np.exp(np.float64(top)))
    tail = p1 * (1.0 - p1) if op == "softmax" else p1
    np.testing.assert_allclose(got[0], [tail, -tail], rtol=1e-6)
    np.testing.assert_allclose(got[1], [-tail, tail], rtol=1e-6)
    # An ordinary row: the plain formula, in float64 by hand.
    row = np.array([1.0, 0.5])
    p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    dy = np.array([1.0, -2.0])
    want = p * (dy - (dy * p).sum()) if op == "softmax" else dy - p * dy.sum()
    np.testing.assert_allclose(got[2], want, rtol=1e-6)


class TestLongRows:
    """C3 over long float32 rows: the row sums accumulate in float64 (``safeops._dtypes.sum_dtype``).

    In float32 a sum's rounding grows with the row's length, and equal terms
    round the same way in every partial sum: ``softmax`` was 9.6 ULP off
    over ``[0, log 0.1 x 3999]`` and 5.1 over rows of 1000 standard normal
    entries; ``log_softmax`` of a confident row ``[0, -15.3 x 3999]``, whose
    top entry is ``-log1p`` of the other terms' sum, 23 ULP.
    """

    ROWS = {
        "equal_terms": np.array([[0.0] + [np.log(0.1)] * 3999], np.float32),
        "confident": np.array([[0.0] + [-15.3] * 3999], np.float32),
        "normal": np.random.default_rng(7).standard_normal((2, 1000)).astype(np.float32),
        "long": np.random.default_rng(8).standard_normal((1, 32000)).astype(np.float32),
    }

    @pytest.fixture(scope="class")
    def exact(self):
        from tests import reference

        return {(op, name): reference.rowwise(op, x, tf.float32).value
                for name, x in self.ROWS.items() for op in ("softmax", "log_softmax", "reduce_logsumexp")}

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("inner_xla", [True, False])
    @pytest.mark.parametrize("op", ["softmax", "log_softmax", "reduce_logsumexp"])
    def test_within_4_ulp(self, exact, op, inner_xla, mode):
        from safeops.math import _logsumexp

        old = _logsumexp.set_inner_xla(inner_xla)
        try:
            fn = run(mode, lambda t: getattr(tfm, op)(t, axis=-1))
            for name, x in self.ROWS.items():
                got = np.asarray(fn(tf.constant(x)))
                ulps = np.max(ftz_ulps(got, exact[op, name], "float32"))
                assert ulps <= 4, (op, name, mode, inner_xla, ulps)
        finally:
            _logsumexp.set_inner_xla(old)

    @pytest.mark.parametrize("mode", MODES)
    def test_log_softmax_gradient_over_a_leading_axis(self, mode):
        """``dy - softmax * sum(dy)`` over axis 0 of 1e5 rows: TensorFlow's kernels and XLA sum a
        leading axis as running sums, and the float32 ``sum(dy)`` left the gradient 1.3e-5 relative off
        (over C3's 1e-5; 4.4e-6 over the last axis of the transpose). The backward's sums over such an
        axis are float64 (``safeops._xla.last_axis_sums``)."""
        x = np.full((100_000, 16), 1.1, np.float32)
        x[::3] = 3.3
        dy = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)

        def gradient(v, w):
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = tfm.log_softmax(v, axis=0)
            return tape.gradient(y, v, output_gradients=w)

        got = run(mode, gradient)(tf.constant(x), tf.constant(dy)).numpy().astype(np.float64)
        e = np.exp(x.astype(np.float64) - x.max(0))
        want = dy - e / e.sum(0) * dy.astype(np.float64).sum(0)
        large = np.abs(want) > 1e-3 * np.abs(want).max()
        assert np.max(np.abs(got - want)[large] / np.abs(want)[large]) <= 1e-5

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("return_sign", [False, True])
    def test_weighted_within_4_ulp(self, exact, return_sign, mode):
        """The weighted form's float32 rest: 23 ULP off with weights 1 on the confident row."""
        fn = run(mode, lambda t, w: tfm.reduce_logsumexp(t, axis=-1, weights=w, return_sign=return_sign))
        for name, x in self.ROWS.items():
            got = fn(tf.constant(x), tf.ones_like(tf.constant(x)))
            value = np.asarray(got[0] if return_sign else got)
            if return_sign:
                np.testing.assert_array_equal(np.asarray(got[1]), 1.0)
            ulps = np.max(ftz_ulps(value, exact["reduce_logsumexp", name], "float32"))
            assert ulps <= 4, (name, mode, return_sign, ulps)


def mp_running_lse(row, exclusive=False, reverse=False):
    """The running log-sum-exp of ``row`` in mpmath (``-inf`` for an empty prefix)."""
    row = [float(v) for v in row][::-1] if reverse else [float(v) for v in row]
    out, total = [], mpmath.mpf(0)
    for v in row:
        before = total
        total += mpmath.exp(mpmath.mpf(v)) if v != -INF else 0
        s = before if exclusive else total
        out.append(float(mpmath.log(s)) if s > 0 else -INF)
    return out[::-1] if reverse else out


def mp_running_lse_gradient(row, cotangent):
    """``sum_j v_j exp(x_i - y_j)`` over the nonempty prefixes ``j >= i``, in mpmath."""
    x = [mpmath.mpf(float(v)) if v != -INF else None for v in row]
    prefixes = []  # (max, sum of exp(x - max)) of x[:j + 1], None while empty
    m, total = None, mpmath.mpf(0)
    for v in x:
        if v is not None:
            if m is None or v > m:
                total = total * mpmath.exp(m - v) if m is not None else total
                m = v
            total += mpmath.exp(v - m)
        prefixes.append(None if m is None else (m, total))
    grad = []
    for i in range(len(x)):
        g = mpmath.mpf(0)
        for j in range(i, len(x)):
            if x[i] is not None and prefixes[j] is not None:
                m, total = prefixes[j]
                g += mpmath.mpf(float(cotangent[j])) * mpmath.exp(x[i] - m) / total
        grad.append(float(g))
    return np.array(grad)


class TestCumulativeLogSumExp:
    # Padded lists: ListMLE (leading padding after sorting) and Cox partial
    # likelihoods (reverse=True over sorted times, trailing padding).
    PADDED = [([-INF, 0.0, 1.0], {}), ([-INF, -INF, 2.0, 0.5], {}), ([0.0, 1.0, -INF], {"reverse": True}),
              ([-INF, 1.0, 0.0], {"exclusive": True}), ([-INF, -INF], {}), ([-INF, -INF], {"reverse": True})]

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("row, kwargs", PADDED, ids=repr)
    def test_padding_gets_gradient_zero_where_tensorflow_gives_nan(self, row, kwargs, mode):
        x = tf.constant(row, tf.float32)
        v = tf.constant([1.0, -0.5, 2.0, 0.75][:len(row)], tf.float32)

        def grad(op):
            def body(t):
                with tf.GradientTape() as tape:
                    tape.watch(t)
                    y = op(t, **kwargs)
                    loss = tf.reduce_sum(tf.where(tf.math.is_finite(y), y, 0.0) * v)
                return y, tape.gradient(loss, t)
            return [a.numpy() for a in run(mode, body)(x)]

        y, g = grad(tfm.cumulative_logsumexp)
        ty, tg = grad(tf.math.cumulative_logsumexp)
        if mode == "eager":
            assert np.isnan(tg).any(), "TensorFlow's gradient is no longer NaN here"
        assert np.isfinite(g).all(), g
        np.testing.assert_array_equal(g[np.isinf(np.array(row))], 0.0)
        np.testing.assert_allclose(y, ty, rtol=1e-6)
        want = mp_running_lse_gradient(row, v.numpy()) if not kwargs else None
        if want is not None:
            np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-7)
        ok = np.isfinite(tg)
        np.testing.assert_allclose(g[ok], tg[ok], rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("mode", MODES)
    def test_listmle_of_a_padded_list_has_the_gradient_of_the_unpadded_one(self, mode):
        # ListMLE: sum_j (logsumexp of the scores ranked at j or below) - s_j, scores in rank order.
        scores = tf.constant([[2.0, 0.5, -1.0, 3.0, -INF, -INF], [1.0, 1.0, 0.0, -2.0, 4.0, 0.5]])
        valid = tf.math.is_finite(scores)

        def loss(s):
            lse = tfm.cumulative_logsumexp(s, axis=1, reverse=True)
            return tf.reduce_sum(tf.where(valid, lse - tf.where(valid, s, 0.0), 0.0))

        def body(s):
            with tf.GradientTape() as tape:
                tape.watch(s)
                value = loss(s)
            return value, tape.gradient(value, s)

        value, grad = (a.numpy() for a in run(mode, body)(scores))
        assert np.isfinite(value) and np.isfinite(grad).all()
        short = tf.constant([[2.0, 0.5, -1.0, 3.0]])
        with tf.GradientTape() as tape:
            tape.watch(short)
            lse = tf.math.cumulative_logsumexp(short, axis=1, reverse=True)
            want = tf.reduce_sum(lse - short)
        np.testing.assert_allclose(grad[0, :4], tape.gradient(want, short).numpy()[0], rtol=1e-6)
        np.testing.assert_array_equal(grad[0, 4:], 0.0)

    @pytest.mark.parametrize("exclusive", [False, True])
    @pytest.mark.parametrize("reverse", [False, True])
    def test_long_float32_rows_within_one_ulp_where_tensorflow_is_not(self, exclusive, reverse):
        x = (np.random.default_rng(7).standard_normal((3, 1000)) * 3).astype(np.float32)
        want = np.array([mp_running_lse(r, exclusive, reverse) for r in x]).astype(np.float32)
        got = tfm.cumulative_logsumexp(x, axis=1, exclusive=exclusive, reverse=reverse).numpy()
        theirs = tf.math.cumulative_logsumexp(x, axis=1, exclusive=exclusive, reverse=reverse).numpy()
        assert ftz_ulps(got, want, "float32").max() <= 1.0
        assert ftz_ulps(theirs, want, "float32").max() > 4.0, "TensorFlow's float32 kernel became accurate"

    def test_float64_is_tensorflows_kernel_and_its_rounding(self):
        # Documented (README, Where C3's 4 ULP is not met): float64 has the kernel's own
        # rounding, beyond 4 ULP over rows of 1000 (no wider type to run it in).
        x = np.random.default_rng(7).standard_normal((3, 1000)) * 3
        for kwargs in ({}, {"exclusive": True, "reverse": True}):
            np.testing.assert_array_equal(tfm.cumulative_logsumexp(x, axis=1, **kwargs).numpy(),
                                          tf.math.cumulative_logsumexp(x, axis=1, **kwargs).numpy())
        want = np.array([mp_running_lse(r) for r in x])
        assert ftz_ulps(tfm.cumulative_logsumexp(x, axis=1).numpy(), want, "float64").max() > 4.0

    @pytest.mark.parametrize("mode", MODES)
    def test_gradient_at_a_large_offset(self, mode):
        # TensorFlow's float32 gradient forms exp(x_i - y_j) as exp(c_i + x_i), c_i ~ -1e4: up to 1.2e-3
        # off here, relative.
        row = [1e4, 1e4 + 1.0, 1e4 + 2.0, 1e4 - 3.0]
        v = np.array([1.0, -0.5, 2.0, 1.5], np.float32)
        x = tf.constant(row, tf.float32)

        def body(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                loss = tf.reduce_sum(tfm.cumulative_logsumexp(t) * v)
            return tape.gradient(loss, t)

        got = run(mode, body)(x).numpy()
        np.testing.assert_allclose(got, mp_running_lse_gradient(row, v), rtol=2e-6)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_plus_inf_and_nan_entries(self, dtype, mode):
        def body(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                ys = [tfm.cumulative_logsumexp(t, axis=1, **kw) for kw in
                      ({}, {"reverse": True}, {"exclusive": True})]
                loss = tf.reduce_sum(tf.where(tf.math.is_inf(ys[0]), tf.zeros_like(ys[0]), ys[0]))
            return ys, tape.gradient(loss, t)

        x = tf.constant([[INF, 0.0, INF, 1.0], [0.0, NAN, 1.0, 2.0]], dtype)
        (y, rev, exc), g = run(mode, body)(x)
        y, rev, exc, g = (tf.cast(a, tf.float64).numpy() for a in (y, rev, exc, g))
        # TensorFlow's kernel: NaN from the second +inf on, and the NaN dropped.
        np.testing.assert_array_equal(y[0], [INF] * 4)
        np.testing.assert_array_equal(rev[0], [INF, INF, INF, 1.0])
        np.testing.assert_array_equal(exc[0], [-INF, INF, INF, INF])
        assert y[1, 0] == 0.0 and np.isnan(y[1, 1:]).all()
        assert np.isnan(rev[1, :2]).all() and np.isfinite(rev[1, 2:]).all()
        assert exc[1, 0] == -INF and exc[1, 1] == 0.0 and np.isnan(exc[1, 2:]).all()
        # The +inf row has no finite output, so its loss (finite outputs only) is 0 and so is its gradient;
        # every entry of the NaN row enters a NaN output.
        np.testing.assert_array_equal(g[0], 0.0)
        assert np.isnan(g[1]).all()

    @pytest.mark.parametrize("mode", MODES)
    def test_gradient_at_plus_inf_entries_is_the_sum_of_their_outputs_gradients(self, mode):
        x = tf.constant([INF, 0.0, INF, 1.0])
        v = tf.constant([1.0, -0.5, 2.0, 0.25])

        def body(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                loss = tf.reduce_sum(tfm.cumulative_logsumexp(t) * v)
            return tape.gradient(loss, t)

        np.testing.assert_array_equal(run(mode, body)(x).numpy(), [2.75, 0.0, 2.25, 0.0])

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_finite_value_gradient_second_derivative_with_masks(self, dtype, mode):
        x = tf.constant([[-INF, 0.0, 1.0, 3.0], [1.0, 2.0, -INF, 0.5], [-INF, -INF, -INF, -INF]], dtype)
        for kwargs in ({}, {"reverse": True}, {"exclusive": True}):
            y, g, h = derivatives(lambda t: tfm.cumulative_logsumexp(t, axis=1, **kwargs), x, mode)
            assert np.isfinite(g).all() and np.isfinite(h).all(), kwargs
            masked = np.isinf(tf.cast(x, tf.float64).numpy())
            np.testing.assert_array_equal(g[masked], 0.0)
            np.testing.assert_array_equal(h[masked], 0.0)
            # Each finite output's softmax weights sum to 1: the gradient of sum(y) sums to their count.
            np.testing.assert_allclose(g.sum(axis=1), np.isfinite(y).sum(axis=1),
                                       rtol=1e-2 if dtype in (tf.float16, tf.bfloat16) else 1e-6)

    @pytest.mark.parametrize("axis", [0, 1, -1, 2])
    @pytest.mark.parametrize("exclusive", [False, True])
    @pytest.mark.parametrize("reverse", [False, True])
    def test_equals_tensorflow_on_finite_inputs(self, axis, exclusive, reverse):
        rng = np.random.default_rng(axis + 3)
        x = tf.constant(rng.standard_normal((3, 4, 5)) * 2, tf.float32)
        v = tf.constant(rng.standard_normal((3, 4, 5)), tf.float32)  # both signs
        kwargs = dict(axis=axis, exclusive=exclusive, reverse=reverse)
        out = []
        for op in (tfm.cumulative_logsumexp, tf.math.cumulative_logsumexp):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = op(x, **kwargs)
                loss = tf.reduce_sum(tf.where(tf.math.is_finite(y), y, 0.0) * v)
            g = tape.gradient(loss, x)
            out.append((y.numpy(), np.nan_to_num(g.numpy())))
        (y, g), (ty, tg) = out
        np.testing.assert_allclose(y, ty, rtol=2e-6, atol=1e-6)  # TensorFlow's float32 kernel rounds near 0
        np.testing.assert_allclose(g, tg, rtol=1e-4, atol=1e-5)

    def test_axis_as_a_tensor_inside_tf_function(self):
        x = tf.constant([[0.0, 1.0], [2.0, -1.0]])
        f = tf.function(lambda t, a: tfm.cumulative_logsumexp(t, axis=a))
        for a in (0, 1):
            np.testing.assert_allclose(f(x, tf.constant(a)).numpy(),
                                       tf.math.cumulative_logsumexp(x, axis=a).numpy(), rtol=1e-6)

    def test_ragged_rows(self):
        rt = tf.ragged.constant([[0.0, 1.0, 2.0], [3.0], [-1.0, 4.0]])
        for kwargs in ({}, {"reverse": True}, {"exclusive": True}):
            got = tfm.cumulative_logsumexp(rt, axis=1, **kwargs)
            for row, want in zip(got.to_list(), rt.to_list()):
                np.testing.assert_allclose(row, mp_running_lse(want, **kwargs), rtol=1e-6)

    def test_errors_name_the_argument(self):
        op = r"safeops\.math\.cumulative_logsumexp: "
        with pytest.raises(TypeError, match=op + "exclusive must be a bool"):
            tfm.cumulative_logsumexp([1.0, 2.0], exclusive=1)
        with pytest.raises(TypeError, match=op + "reverse must be a bool"):
            tfm.cumulative_logsumexp([1.0, 2.0], reverse="yes")
        with pytest.raises(TypeError, match=op + "x must be a floating"):
            tfm.cumulative_logsumexp([1, 2])
        with pytest.raises(ValueError, match=op + "x must be a tensor of rank"):
            tfm.cumulative_logsumexp(1.0)
        with pytest.raises(ValueError, match=op + r"axis must be in \[-2, 2\)"):
            tfm.cumulative_logsumexp([[1.0, 2.0]], axis=2)

    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("offset", [0.0, 1e6, 1e30])
    def test_gradient_exact_at_any_magnitude_in_linear_form(self, offset, mode):
        # A slice spanning at most 500: exp(x_i - y_j) as w_i / S_j from the exact shift by the
        # slice maximum, no y_j (whose float64 rounding at 1e30 is 1.4e14).
        row = offset + np.array([0.0, -1.0, 2.5, 2.5, -30.0, 1.0])
        v = np.array([1.0, -0.5, 2.0, -1.5, 0.75, -3.0])
        x = tf.constant(row, tf.float64)

        def body(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                loss = tf.reduce_sum(tfm.cumulative_logsumexp(t, reverse=True) * v)
            return tape.gradient(loss, t)

        got = run(mode, body)(x).numpy()
        want = mp_running_lse_gradient(row[::-1], v[::-1])[::-1]
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)

    @pytest.mark.parametrize("mode", MODES)
    def test_a_wide_row_takes_the_scan_without_changing_the_others(self, mode):
        # -1e9 masks (scores + (1 - mask) * -1e9) span more than 500: that row's gradient comes from
        # the scan's outputs, the other rows' from the linear form, as when computed alone.
        rows = np.array([[0.5, 2.0, -1.0, 3.0], [1.0, -1e9, -1e9, -1e9]], np.float32)
        v = np.array([[1.0, -0.5, 2.0, 0.25]] * 2, np.float32)

        def body(t, w):
            with tf.GradientTape() as tape:
                tape.watch(t)
                loss = tf.reduce_sum(tfm.cumulative_logsumexp(t, axis=1) * w)
            return tape.gradient(loss, t)

        both = run(mode, body)(tf.constant(rows), tf.constant(v)).numpy()
        alone = run(mode, body)(tf.constant(rows[:1]), tf.constant(v[:1])).numpy()
        np.testing.assert_array_equal(both[0], alone[0])
        np.testing.assert_allclose(both[1], mp_running_lse_gradient(rows[1], v[1]), rtol=1e-6, atol=1e-30)

    def test_float64_gradient_over_a_long_row(self):
        # The running sums S_j are compensated in float64 (their rounding would grow with the row).
        x = np.random.default_rng(9).standard_normal(300) * 4
        v = np.resize([1.0, -0.5, 2.0, -1.5, 0.75], 300)
        t = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(t)
            loss = tf.reduce_sum(tfm.cumulative_logsumexp(t) * v)
        np.testing.assert_allclose(tape.gradient(loss, t).numpy(), mp_running_lse_gradient(x, v), rtol=1e-12)

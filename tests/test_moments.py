"""Edge and reference tests for safeops.math.reduce_std (the generic contract tests cover the rest)."""

import mpmath
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
import safeops.debug as debug

from tests._modes import DTYPES, INF, MODES, NAN, derivatives, run

mpmath.mp.dps = 50


def exact_std(row) -> float:
    """The population standard deviation of ``row`` (float64 values), correctly rounded to float64."""
    xs = [mpmath.mpf(float(v)) for v in row]
    m = mpmath.fsum(xs) / len(xs)
    return float(mpmath.sqrt(mpmath.fsum((x - m) ** 2 for x in xs) / len(xs)))


def ulps(got, want, dtype) -> float:
    return abs(float(got) - want) / float(np.spacing(np.asarray(abs(want), dtype)))


def std_last(x):
    return tfm.reduce_std(x, axis=-1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_equal_entries_have_zero_deviation_and_gradient(dtype, mode):
    # A constant feature or a collapsed layer input: TensorFlow's gradient is NaN at every entry.
    x = tf.constant([[0.1, 0.1, 0.1], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]], dtype)
    y, g, h = derivatives(std_last, x, mode)
    assert y[0] == 0 and y[1] == 0
    assert y[2] == pytest.approx(np.sqrt(2 / 3), rel=1e-2)
    np.testing.assert_array_equal(g[:2], 0.0)
    np.testing.assert_allclose(g[2], [-1 / np.sqrt(6), 0, 1 / np.sqrt(6)], rtol=1e-2, atol=1e-6)
    assert np.isfinite(h).all()
    np.testing.assert_array_equal(h[:2], 0.0)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_second_derivative_matches_autodiff_of_the_formula(dtype):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal([3, 5]), dtype)
    v = tf.constant(rng.standard_normal([3, 5]), dtype)

    def hvp(fn):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = tf.reduce_sum(fn(x))
            g = inner.gradient(y, x)
            gv = tf.reduce_sum(g * v)
        return g.numpy(), outer.gradient(gv, x).numpy()

    g, h = hvp(std_last)
    # The formula in float64 by TensorFlow's autodiff, finite away from a zero deviation.
    wide = lambda t: tf.cast(tf.math.reduce_std(tf.cast(t, tf.float64), axis=-1), dtype)  # noqa: E731
    g_ref, h_ref = hvp(wide)
    tol = 1e-5 if dtype == tf.float32 else 1e-12
    np.testing.assert_allclose(g, g_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(h, h_ref, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("mode", MODES)
def test_unstandardised_float32_features_keep_their_digits(mode):
    # A large mean against a small spread: the float32 mean's rounding is of the spread's size.
    rng = np.random.default_rng(0)
    rows = np.stack([1e4 + np.arange(4.0).repeat(25), 1e3 + 3 * rng.standard_normal(100),
                     86400 * 365 + rng.standard_normal(100)]).astype(np.float32)
    got = run(mode, std_last)(tf.constant(rows)).numpy()
    for row, value in zip(rows, got):
        assert ulps(value, exact_std(row.astype(np.float64)), np.float32) <= 1


@pytest.mark.parametrize("mode", MODES)
def test_long_rows_within_one_ulp(mode):
    rng = np.random.default_rng(1)
    x32 = (1e3 + 3 * rng.standard_normal([2, 100_000])).astype(np.float32)
    x64 = 0.1 + 1e-9 * rng.standard_normal([2, 100_000])
    for x, dtype in ((x32, np.float32), (x64, np.float64)):
        got = run(mode, std_last)(tf.constant(x)).numpy()
        for row, value in zip(x, got):
            assert ulps(value, exact_std(row.astype(np.float64)), dtype) <= 1


@pytest.mark.parametrize("mode", MODES)
def test_no_overflow_near_the_largest_float(mode):
    x32 = tf.constant([[1e30, -1e30, 3e38]], tf.float32)
    assert run(mode, std_last)(x32).numpy()[0] == pytest.approx(exact_std([1e30, -1e30, np.float32(3e38)]),
                                                                rel=1e-7)
    x64 = tf.constant([[1.7e308, -1.7e308], [-1.7976931348623157e308, -1.7976931348623155e308]], tf.float64)
    y, g, _ = derivatives(std_last, x64, mode)
    assert y[0] == 1.7e308 and ulps(y[1], exact_std(x64.numpy()[1]), np.float64) <= 1   # neighbours
    np.testing.assert_allclose(g, [[0.5, -0.5], [-0.5, 0.5]], rtol=1e-15)


@pytest.mark.parametrize("mode", MODES)
def test_nan_inf_and_empty_slices(mode):
    y, g, _ = derivatives(std_last, tf.constant([[NAN, 1.0, 2.0], [INF, 1.0, 2.0], [1.0, 2.0, 4.0]]), mode)
    assert np.isnan(y[:2]).all() and np.isnan(g[:2]).all()
    assert np.isfinite(y[2]) and np.isfinite(g[2]).all()
    assert np.isnan(run(mode, lambda x: tfm.reduce_std(x))(tf.zeros([0])).numpy())


@pytest.mark.parametrize("mode", MODES)
def test_axis_forms_and_keepdims_match_tensorflow(mode):
    x = tf.constant(np.random.default_rng(2).standard_normal([2, 3, 4]), tf.float32)
    for kwargs in ({}, {"axis": 0}, {"axis": -1, "keepdims": True}, {"axis": [0, 2]}, {"axis": (1, 2)},
                   {"axis": [0, 2], "keepdims": True}, {"axis": []}, {"axis": None, "keepdims": True}):
        ours = run(mode, lambda t: tfm.reduce_std(t, **kwargs))(x)
        theirs = tf.math.reduce_std(x, **kwargs)
        assert ours.shape == theirs.shape, kwargs
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7, err_msg=str(kwargs))


def test_axis_as_a_tensor_known_only_when_the_graph_runs():
    x = tf.constant(np.random.default_rng(4).standard_normal([3, 4]), tf.float32)
    fn = tf.function(lambda t, a: tfm.reduce_std(t, axis=a),
                     input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([], tf.int32)])
    for axis in (0, 1, -1):
        np.testing.assert_allclose(fn(x, axis).numpy(), tf.math.reduce_std(x, axis=axis).numpy(), rtol=1e-6)


def test_unknown_shape_and_rank():
    x = tf.constant([[2.0, 2.0], [1.0, 3.0]])
    for spec in (tf.TensorSpec([None, None], tf.float32), tf.TensorSpec(None, tf.float32)):
        @tf.function(input_signature=[spec])
        def fn(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = tfm.reduce_std(t, axis=-1)
            return y, tape.gradient(y, t)

        y, g = fn(x)
        np.testing.assert_allclose(y.numpy(), [0.0, 1.0])
        np.testing.assert_allclose(g.numpy(), [[0.0, 0.0], [-0.5, 0.5]])


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_ragged_rows(mode):
    rt = tf.ragged.constant([[1.0, 2.0, 3.0], [4.0, 4.0], [5.0]])

    def body(values):
        r = rt.with_flat_values(values)
        with tf.GradientTape() as outer:
            outer.watch(values)
            with tf.GradientTape() as inner:
                inner.watch(values)
                y = tfm.reduce_std(r, axis=1)
            g = tf.convert_to_tensor(inner.gradient(y, values))
            gv = tf.reduce_sum(g * tf.constant([1.0, -2.0, 0.5, 1.0, -1.0, 3.0]))
        return y, g, tf.convert_to_tensor(outer.gradient(gv, values))

    y, g, h = run(mode, body)(rt.flat_values)
    np.testing.assert_allclose(y.numpy(), tf.math.reduce_std(rt, axis=1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(g.numpy(), [-1 / np.sqrt(6), 0, 1 / np.sqrt(6), 0, 0, 0], atol=1e-7, rtol=1e-6)
    # A row of equal entries: finite second derivative (0), as the dense op's.
    assert np.isfinite(h.numpy()).all() and (h.numpy()[3:] == 0).all()
    dense = derivatives(lambda t: tfm.reduce_std(t), tf.constant([1.0, 2.0, 3.0]))
    assert np.isfinite(dense[2]).all()


def test_ragged_nan_and_empty_rows():
    rt = tf.ragged.constant([[NAN, 1.0], [2.0, 2.0, 2.0], [], [1.0, 3.0]])
    with tf.GradientTape() as tape:
        tape.watch(rt.flat_values)
        y = tfm.reduce_std(rt, axis=1)
    g = tf.convert_to_tensor(tape.gradient(y, rt.flat_values)).numpy()
    assert np.isnan(y.numpy()[[0, 2]]).all() and y.numpy()[1] == 0 and y.numpy()[3] == 1
    assert np.isnan(g[:2]).all() and (g[2:5] == 0).all() and (g[5:] == [-0.5, 0.5]).all()


def test_ragged_axes_keepdims_and_dtypes_match_tensorflow():
    r2 = tf.ragged.constant([[1.0, 2.0, 3.0], [4.0, 4.0], [5.0]])
    r3 = tf.ragged.constant([[[1.0, 2.0], [3.0]], [[4.0, 4.0, 4.0]]])
    uniform = tf.RaggedTensor.from_row_lengths(tf.constant([[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]]), [2, 1])
    cases = [(r2, {"axis": 1}), (r2, {"axis": -1, "keepdims": True}), (r2, {}),
             (r2, {"axis": [0, 1], "keepdims": True}), (r3, {"axis": -1}),
             (r3, {"axis": 2, "keepdims": True}),
             (r3, {"axis": None}), (uniform, {"axis": -1}), (uniform, {"axis": 2, "keepdims": True})]
    for rt, kwargs in cases:
        ours, theirs = tfm.reduce_std(rt, **kwargs), tf.math.reduce_std(rt, **kwargs)
        assert type(ours) is type(theirs) and ours.shape.as_list() == theirs.shape.as_list(), kwargs
        flat = (lambda t: t.flat_values if isinstance(t, tf.RaggedTensor) else t)
        np.testing.assert_allclose(flat(ours).numpy(), flat(theirs).numpy(), rtol=1e-6, err_msg=str(kwargs))
    with pytest.raises(TypeError, match=r"reduce_std: axis must be None, every axis, or the last axis"):
        tfm.reduce_std(r2, axis=0)


def test_ragged_float64_rows_are_scaled_as_dense_ones():
    rt = tf.ragged.constant([[1e200, 3e200], [1e-200, 3e-200, 2e-200]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(rt.flat_values)
        y = tfm.reduce_std(rt, axis=1)
    g = tf.convert_to_tensor(tape.gradient(y, rt.flat_values)).numpy()
    want = [tfm.reduce_std(tf.constant(row, tf.float64)).numpy() for row in rt.to_list()]
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-15)
    np.testing.assert_allclose(g, [-0.5, 0.5, -1 / np.sqrt(6), 1 / np.sqrt(6), 0.0], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("mode", ["function", "jit"])
def test_float64_leading_axis_as_a_constant_tensor_is_summed_as_a_tree(mode):
    # A leading-axis float64 sum by TensorFlow's kernel is a running sum: 50 to 350 ULP at 1e5 rows.
    x = 0.1 + 1e-3 * np.random.default_rng(8).standard_normal([100_000, 2])
    got = run(mode, lambda t: tfm.reduce_std(t, axis=tf.constant(0)))(tf.constant(x)).numpy()
    for column, value in zip(x.T, got):
        assert ulps(value, exact_std(column), np.float64) <= 2


def test_standardising_a_constant_feature_trains():
    # (x - mean) / (std + eps) with a constant column: one NaN gradient poisons every weight.
    x = np.random.default_rng(5).standard_normal([32, 3]).astype(np.float32)
    x[:, 1] = 7.0
    w = tf.Variable(tf.ones([3, 1]))

    def step(std):
        with tf.GradientTape() as tape:
            z = (x - tf.reduce_mean(x, 0)) / (std(x, axis=0) + 1e-3)
            loss = tf.reduce_mean((z @ w - 1.0) ** 2)
        return tape.gradient(loss, w).numpy()

    assert np.isfinite(step(tfm.reduce_std)).all()
    with tf.GradientTape() as tape:
        tape.watch(w)
        xt = tf.constant(x) * w[:, 0]
        loss = tf.reduce_sum(tfm.reduce_std(xt, axis=0))
    assert np.isfinite(tape.gradient(loss, w).numpy()).all()


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"safeops\.math\.reduce_std: input_tensor must be"):
        tfm.reduce_std(tf.constant([1, 2]))
    with pytest.raises(ValueError, match=r"safeops\.math\.reduce_std: axis"):
        tfm.reduce_std(tf.zeros([2, 3]), axis=2)
    with pytest.raises(TypeError, match=r"safeops\.math\.reduce_std: axis"):
        tfm.reduce_std(tf.zeros([2, 3]), axis=1.0)


def test_locate_names_a_deviation_of_equal_entries():
    import keras

    inputs = keras.Input([4])
    hidden = keras.layers.Dense(4, kernel_initializer="ones")(inputs)   # every entry of a row equal
    spread = keras.layers.Lambda(lambda t: tf.math.reduce_std(t, axis=-1, keepdims=True))(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(spread))
    model.compile(loss="mse")
    report = debug.locate_nonfinite(model, np.ones([8, 4], np.float32), np.ones([8, 1], np.float32))
    assert report.op_type == "SqrtGrad", report
    assert "standard deviation" in report.cause and report.fix.startswith("safeops.math.reduce_std"), report


def test_lint_points_a_tensorflow_deviation_to_reduce_std():
    import keras

    x = np.random.default_rng(6).standard_normal([8, 4]).astype(np.float32)
    for std, fix in ((tf.math.reduce_std, "safeops.math.reduce_std"), (tfm.reduce_std, None)):
        inputs = keras.Input([4])
        hidden = keras.layers.Dense(4)(inputs)   # a deviation that training differentiates
        spread = keras.layers.Lambda(lambda t: std(t, axis=-1, keepdims=True))(hidden)
        model = keras.Model(inputs, keras.layers.Dense(1)(spread))
        model.compile(loss="mse")
        findings = debug.lint(model, x, np.ones([8, 1], np.float32))
        findings = [f for f in findings if f.pattern == "sqrt-at-zero"]
        if fix is None:
            assert not findings, findings
        else:
            assert findings and all(f.fix.startswith(fix) for f in findings), findings

"""Edge tests for safeops.math.cumprod (the contract tests cover the rest).

Each starts where a model meets the edge: a factor that is exactly 0 (an
opaque sample of volume rendering, a stick broken off whole), a long
axis of factors near 1, products beyond float32's range, NaN and inf.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm

from tests._modes import DTYPES, INF, MODES, NAN, run

FLAGS = [dict(exclusive=e, reverse=r) for e, r in itertools.product([False, True], repeat=2)]
FLAG_IDS = [f"exclusive={f['exclusive']}-reverse={f['reverse']}" for f in FLAGS]
ROWS = np.array([[0.5, 0.0, 3.0, 0.25, 2.0],    # one zero
                 [0.0, 2.0, 0.0, 4.0, 0.5],     # zeros first and again
                 [1.5, 2.0, 0.5, -3.0, 0.0],    # a zero last
                 [1.5, -2.0, 0.5, 4.0, 0.75]])  # none
COTANGENT = np.array([1.0, -0.5, 2.0, -1.5, 0.75])


def exact_products(row, exclusive=False, reverse=False):
    """Values and the gradient of ``sum(COTANGENT * cumprod(row))``, by products of the other factors."""
    x = row[::-1] if reverse else row
    v = COTANGENT[::-1] if reverse else COTANGENT
    n = len(x)
    members = [range(j) if exclusive else range(j + 1) for j in range(n)]
    values = np.array([np.prod([x[k] for k in ks]) for ks in members])
    grad = np.array([sum(v[j] * np.prod([x[k] for k in members[j] if k != i])
                         for j in range(n) if i in members[j]) for i in range(n)])
    return (values[::-1], grad[::-1]) if reverse else (values, grad)


def value_and_gradient(op, x, mode, **kwargs):
    def body(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = op(t, axis=-1, **kwargs)
            loss = tf.reduce_sum(tf.cast(y, tf.float64) * COTANGENT[: t.shape[-1]])
        return y, tape.gradient(loss, t)
    return [a.numpy().astype(np.float64) for a in run(mode, body)(x)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", FLAGS, ids=FLAG_IDS)
def test_gradient_with_zero_factors_is_the_product_of_the_others(kwargs, dtype, mode):
    y, g = value_and_gradient(tfm.cumprod, tf.constant(ROWS, dtype), mode, **kwargs)
    for r, row in enumerate(ROWS):
        values, grad = exact_products(row, **kwargs)
        np.testing.assert_allclose(y[r], values, rtol=1e-2)
        np.testing.assert_allclose(g[r], grad, rtol=1e-2, err_msg=f"row {row}")


def test_tensorflows_gradient_is_zero_at_the_first_zero():
    # TensorFlow's div_no_nan(cumsum(g * y, reverse), x) makes the factor that zeroed the products
    # 0/0 = 0, where the exact gradient (the products of the others) is not.
    _, g = value_and_gradient(tf.math.cumprod, tf.constant(ROWS[:1]), "eager")
    _, exact = exact_products(ROWS[0])
    assert g[0, 1] == 0.0
    assert exact[1] == 0.5 * (-0.5 + 2.0 * 3.0 - 1.5 * 3.0 * 0.25 + 0.75 * 3.0 * 0.25 * 2.0)
    _, g = value_and_gradient(tfm.cumprod, tf.constant(ROWS[:1]), "eager")
    np.testing.assert_allclose(g[0], exact, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_stick_breaking_reaches_a_saturated_stick(mode):
    # w_i = v_i prod_{k < i} (1 - v_k) with v = sigmoid(z): at z = 20, 1 - v is exactly 0 in float32,
    # and safeops' sigmoid keeps its derivative (2.1e-9); the weights after it still depend on z.
    z = tf.Variable([0.5, 20.0, -1.0, 0.3])

    def grad(cumprod):
        def body():
            with tf.GradientTape() as tape:
                v = tfm.sigmoid(z)
                weights = v * cumprod(1.0 - v, exclusive=True)
                loss = tf.reduce_sum(weights * tf.constant([1.0, 2.0, 3.0, 4.0]))
            return tape.gradient(loss, z)
        return run(mode, body)().numpy()

    # d/dz_1: its own weight's 2 (1 - v_0) v', and through the later weights
    # -v' (1 - v_0) (3 v_2 + 4 v_3 (1 - v_2)), which TensorFlow's gradient loses (0 at the zero factor).
    s = 1.0 / (1.0 + np.exp(-np.array([0.5, 20.0, -1.0, 0.3])))
    d = np.exp(-20.0) * s[1]   # sigmoid'(20) = sigmoid(20) sigmoid(-20)
    own, later = 2 * (1 - s[0]) * d, -d * (1 - s[0]) * (3 * s[2] + 4 * s[3] * (1 - s[2]))
    np.testing.assert_allclose(grad(tf.math.cumprod)[1], own, rtol=1e-4)
    np.testing.assert_allclose(grad(tfm.cumprod)[1], own + later, rtol=1e-4)


def test_long_float32_rows_within_one_ulp():
    # 4000 factors near 1: TensorFlow's float32 kernel rounds at every step.
    rng = np.random.default_rng(0)
    x = rng.uniform(0.999, 1.001, (8, 4000)).astype(np.float32)
    exact = np.cumprod(x.astype(np.float64), axis=-1)   # 4000 float64 roundings: 1e-12 relative
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    ours = np.abs(tfm.cumprod(x, axis=-1).numpy() - exact) / spacing
    theirs = np.abs(tf.math.cumprod(x, axis=-1).numpy() - exact) / spacing
    assert ours.max() <= 0.51 and theirs.max() > 4


@pytest.mark.parametrize("mode", MODES)
def test_products_beyond_float32_come_back(mode):
    # 1e30 * 1e30 overflows float32 (TensorFlow's kernel then stays inf), not float64.
    x = tf.constant([1e30, 1e30, 1e-30, 1e-30, 0.5], tf.float32)
    y, g = value_and_gradient(tfm.cumprod, x[None], mode)
    values, grad = exact_products(np.array([1e30, 1e30, 1e-30, 1e-30, 0.5]))
    assert y[0, 1] == INF and np.isfinite(y[0, [0, 2, 3, 4]]).all()
    np.testing.assert_allclose(y[0, [0, 2, 3, 4]], values[[0, 2, 3, 4]], rtol=1e-6)
    f32_max = float(np.finfo(np.float32).max)
    np.testing.assert_allclose(g[0], np.clip(grad, -f32_max, f32_max), rtol=1e-6)
    assert tf.math.cumprod(x).numpy()[4] == INF


@pytest.mark.parametrize("mode", MODES)
def test_overflow_then_zero_is_zero_not_nan(mode):
    x = tf.constant([[1e200, 1e200, 0.0, 2.0]], tf.float64)
    y, g = value_and_gradient(tfm.cumprod, x, mode)
    np.testing.assert_array_equal(y, [[1e200, INF, 0.0, 0.0]])
    assert np.isfinite(g).all()
    assert np.isnan(tf.math.cumprod(x, axis=-1).numpy()[0, 2])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf(dtype, mode):
    x = tf.constant([[0.5, NAN, 2.0, 0.5], [0.5, 2.0, 0.0, NAN], [2.0, INF, 0.5, 0.0]], dtype)
    y, g = value_and_gradient(tfm.cumprod, x, mode)
    assert np.isfinite(y[0, 0]) and np.isnan(y[0, 1:]).all() and np.isnan(g[0]).all()
    # After a zero the products are 0 (0 * NaN is NaN: the NaN entry's own) and the gradient 0,
    # except at the NaN entry.
    np.testing.assert_array_equal(y[1, :3], [0.5, 1.0, 0.0])
    assert np.isnan(y[1, 3]) and np.isnan(g[1, 3]) and np.isnan(g[1, 2]) and g[1, 0] != 0
    # inf: IEEE products, inf * 0 = NaN.
    assert y[2, 1] == INF and y[2, 2] == INF and np.isnan(y[2, 3])


@pytest.mark.parametrize("mode", MODES)
def test_second_derivatives_finite_with_zeros(mode):
    x = tf.constant(ROWS)

    def body(t):
        with tf.GradientTape() as outer:
            outer.watch(t)
            with tf.GradientTape() as inner:
                inner.watch(t)
                loss = tf.reduce_sum(tfm.cumprod(t, axis=-1, exclusive=True) * COTANGENT)
            g = inner.gradient(loss, t)
        return g, outer.gradient(g, t)

    g, h = (a.numpy() for a in run(mode, body)(x))
    np.testing.assert_allclose(g, np.stack([exact_products(r, exclusive=True)[1] for r in ROWS]), rtol=1e-12)
    assert np.isfinite(h).all()


@pytest.mark.parametrize("axis", [0, 1, -1, 2])
@pytest.mark.parametrize("kwargs", FLAGS, ids=FLAG_IDS)
def test_equals_tensorflow_without_zeros(axis, kwargs):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(0.5, 1.5, (3, 4, 5)), tf.float32)
    v = tf.constant(rng.standard_normal((3, 4, 5)), tf.float32)
    out = []
    for op in (tfm.cumprod, tf.math.cumprod):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(op(x, axis=axis, **kwargs) * v)
        out.append((op(x, axis=axis, **kwargs).numpy(), tape.gradient(loss, x).numpy()))
    (y, g), (ty, tg) = out
    np.testing.assert_allclose(y, ty, rtol=1e-6)
    np.testing.assert_allclose(g, tg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axis", [((4, 1000), -1), ((130, 3), 0), ((2, 97, 3), 1)])
@pytest.mark.parametrize("kwargs", FLAGS, ids=FLAG_IDS)
def test_long_axes_gradient_equals_the_scan(shape, axis, kwargs):
    # Axes of 64 entries or more take the running sum of the gradient by blocked matrix products
    # (safeops.math._products._blocked_running_sum); without zero factors it is TensorFlow's formula.
    rng = np.random.default_rng(2)
    x = tf.constant(rng.uniform(0.98, 1.02, shape))
    v = tf.constant(rng.standard_normal(shape))
    grads = []
    for op in (tfm.cumprod, tf.math.cumprod):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(op(x, axis=axis, **kwargs) * v)
        grads.append(tape.gradient(loss, x).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-11, atol=1e-12)


def test_axis_as_a_tensor_inside_tf_function():
    x = tf.constant([[0.5, 0.0], [2.0, 3.0]])
    f = tf.function(lambda t, a: tfm.cumprod(t, axis=a))
    for a in (0, 1):
        np.testing.assert_array_equal(f(x, tf.constant(a)).numpy(), tf.math.cumprod(x, axis=a).numpy())


def test_ragged_rows():
    rt = tf.ragged.constant([[0.5, 2.0, 3.0], [3.0], [0.0, 4.0]])
    for kwargs in ({}, {"reverse": True}, {"exclusive": True}, {"exclusive": True, "reverse": True}):
        got = tfm.cumprod(rt, axis=1, **kwargs)
        for row, want in zip(got.to_list(), rt.to_list()):
            x = np.array(want)
            expected = tf.math.cumprod(x, **kwargs).numpy()
            np.testing.assert_allclose(row, expected, rtol=1e-6)


def test_errors_name_the_argument():
    op = r"safeops\.math\.cumprod: "
    with pytest.raises(TypeError, match=op + "exclusive must be a bool"):
        tfm.cumprod([1.0, 2.0], exclusive=1)
    with pytest.raises(TypeError, match=op + "reverse must be a bool"):
        tfm.cumprod([1.0, 2.0], reverse="yes")
    with pytest.raises(TypeError, match=op + "x must be a floating"):
        tfm.cumprod([1, 2])
    with pytest.raises(ValueError, match=op + "x must be a tensor of rank"):
        tfm.cumprod(1.0)
    with pytest.raises(ValueError, match=op + r"axis must be in \[-2, 2\)"):
        tfm.cumprod([[1.0, 2.0]], axis=2)

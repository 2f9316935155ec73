"""The focal losses: the fused ops on logits (values and both gradients against mpmath, the
edges (infinite logits, masks, NaN, labels outside [0, 1]), every mode, the inner
XLA switch, second order, agreement with the unfused path a tensor gamma takes) and the
probability paths."""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest
import tensorflow as tf

from safeops import _xla, losses
from tests._modes import MODES, derivatives, run

GAMMAS = [0.5, 2.0, 3.7]
ZS = [-1e4, -200.0, -50.0, -20.0, -3.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 3.0, 20.0, 50.0, 200.0, 1e4]
YS = [0.0, 1e-3, 0.25, 0.5, 0.9, 1.0]
# Relative bounds: values are conditioned by gamma (q**gamma), so gamma + 1
# roundings of a few ULP; gradients as contract C3. Below ATOL the exact
# gradient is "tiny in absolute terms" (C3) and only absolute error counts.
VALUE_RTOL = {"float32": 4 * 2.0**-24, "float64": 4 * 2.0**-53}
GRAD_RTOL = {"float32": 1e-5, "float64": 1e-12}
ATOL = {"float32": 1e-20, "float64": 1e-100}


def _binary_reference(y, z, gamma):
    """mpmath (60 digits): ``L = q**gamma * BCE`` with ``q = 1 - p_t``, and its derivatives in ``z`` and ``y``.

    The derivatives are the chain rule written out (``dq/dz = (1 - 2y) p (1 - p)``,
    ``dq/dy = 1 - 2p``, ``dBCE/dz = p - y``, ``dBCE/dy = -z``); a numerical
    derivative is wrong at ``y = 0`` and ``1``, where ``L`` is not smooth in
    ``y`` for ``gamma < 1``.
    """
    with mp.workdps(60):
        y, z = mp.mpf(y), mp.mpf(z)
        p, pm = 1 / (1 + mp.exp(-z)), 1 / (1 + mp.exp(z))
        q = y * pm + (1 - y) * p
        bce = max(z, 0) - y * z + mp.log1p(mp.exp(-abs(z)))
        value = q**gamma * bce
        dz = gamma * q**(gamma - 1) * (1 - 2 * y) * p * pm * bce + q**gamma * (p - y)
        dy = gamma * q**(gamma - 1) * (pm - p) * bce - q**gamma * z
        return float(value), float(dz), float(dy)


def test_binary_reference_agrees_with_a_numerical_derivative():
    for y, z, gamma in ((0.3, -2.0, 2.0), (0.9, 5.0, 0.5), (0.5, 1e-3, 3.7)):
        def loss(y, z):
            p, pm = 1 / (1 + mp.exp(-z)), 1 / (1 + mp.exp(z))
            return (y * pm + (1 - y) * p)**gamma * (max(z, 0) - y * z + mp.log1p(mp.exp(-abs(z))))

        _, dz, dy = _binary_reference(y, z, gamma)
        with mp.workdps(60):
            assert abs(mp.diff(lambda t: loss(mp.mpf(y), t), mp.mpf(z)) - dz) <= 1e-14 * abs(dz)
            assert abs(mp.diff(lambda t: loss(t, mp.mpf(z)), mp.mpf(y)) - dy) <= 1e-14 * abs(dy)


def _binary(y, z, gamma, mode="eager", **kwargs):
    """Elementwise loss (axis of size 1) and gradients in ``y`` and ``z``."""

    def body(y, z):
        with tf.GradientTape() as tape:
            tape.watch([y, z])
            loss = losses.binary_focal_crossentropy(y, z, gamma=gamma, from_logits=True, **kwargs)
        return (loss, *tape.gradient(loss, [y, z]))

    out = run(mode, body)(tf.convert_to_tensor(y), tf.convert_to_tensor(z))
    return [t.numpy().astype(np.float64).reshape(-1) for t in out]


def _close(got, want, rtol, atol):
    return abs(got - want) <= rtol * abs(want) + atol


@pytest.mark.parametrize("tensor_gamma", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_binary_matches_mpmath(dtype, gamma, tensor_gamma):
    """Value and both gradients, the labels' at y = 0 and 1 included; a tensor gamma takes its own op."""
    y_grid, z_grid = np.meshgrid(np.array(YS, dtype), np.array(ZS, dtype))
    y, z = y_grid.reshape(-1, 1), z_grid.reshape(-1, 1)
    value, grad_y, grad_z = _binary(y, z, tf.constant(gamma, dtype) if tensor_gamma else gamma)
    bad = []
    for i in range(len(value)):
        want = _binary_reference(float(y[i, 0]), float(z[i, 0]), gamma)
        scale = (1 + gamma) * VALUE_RTOL[dtype]
        for name, got, ref, rtol in (("value", value[i], want[0], scale), ("dz", grad_z[i], want[1], GRAD_RTOL[dtype]),
                                     ("dy", grad_y[i], want[2], GRAD_RTOL[dtype])):
            if not _close(got, ref, rtol, ATOL[dtype]):
                bad.append((name, float(y[i, 0]), float(z[i, 0]), got, ref))
    assert not bad, bad[:10]


@pytest.mark.parametrize("mode", MODES)
def test_binary_infinite_logits_give_the_limits_and_finite_gradients(mode):
    y = np.array([[1.0], [0.0], [0.5], [0.0], [1.0], [0.5]], "float32")
    z = np.array([[np.inf], [np.inf], [np.inf], [-np.inf], [-np.inf], [-np.inf]], "float32")
    value, grad_y, grad_z = _binary(y, z, 2.0, mode)
    # Confidently right (and a -inf mask with label 0): exactly 0, gradient 0.
    assert value[0] == 0 and value[3] == 0 and grad_z[0] == 0 and grad_z[3] == 0
    # Confidently wrong at infinity: the exact +inf, with the limit slope.
    assert value[1] == np.inf and value[4] == np.inf and value[2] == np.inf
    np.testing.assert_allclose(grad_z[[1, 4, 2, 5]], [1.0, -1.0, 0.125, -0.125], rtol=1e-6)
    assert not np.isnan(grad_z).any()


@pytest.mark.parametrize("mode", MODES)
def test_binary_nan_and_labels_outside_give_nan(mode):
    y = np.array([[np.nan], [0.5], [1.5], [-0.5]], "float32")
    z = np.array([[1.0], [np.nan], [1.0], [1.0]], "float32")
    value, grad_y, grad_z = _binary(y, z, 2.0, mode)
    assert np.isnan(value).all()
    assert np.isnan(grad_z[:2]).all() and np.isnan(grad_y[:2]).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inner_xla", [True, False])
def test_binary_same_in_every_mode_and_without_inner_xla(mode, inner_xla):
    rng = np.random.default_rng(5)
    y = rng.uniform(0, 1, (16, 7)).astype("float32")
    z = (rng.normal(size=(16, 7)) * 10).astype("float32")
    want = _binary(y, z, 2.0, "eager", apply_class_balancing=True, label_smoothing=0.1)
    old = _xla.set_inner_xla(inner_xla)
    try:
        got = _binary(y, z, 2.0, mode, apply_class_balancing=True, label_smoothing=0.1)
    finally:
        _xla.set_inner_xla(old)
    for g, w in zip(got, want):
        # Gradients near sigma(z) = y are ill-conditioned in z: modes that
        # fuse differently differ there by rounding, relative to the largest.
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6 * np.abs(w).max())


def test_binary_fused_equals_the_unfused_tensor_gamma_path():
    rng = np.random.default_rng(6)
    y = rng.uniform(0, 1, (32, 5)).astype("float64")
    z = (rng.normal(size=(32, 5)) * 30).astype("float64")
    for gamma in GAMMAS:
        fused = _binary(y, z, gamma)
        unfused = _binary(y, z, tf.constant(gamma, tf.float64))
        for f, u in zip(fused, unfused):
            np.testing.assert_allclose(f, u, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("mode", MODES)
def test_binary_second_order_finite(mode):
    y = tf.constant([[1.0, 0.0, 0.5, 1.0, 0.0]])
    for z in ([[1e4, -1e4, 0.0, -3.0, 20.0]], [[200.0, -200.0, 1e-3, 88.0, -88.0]]):
        _, g, h = derivatives(lambda z: losses.binary_focal_crossentropy(y, z, gamma=0.5, from_logits=True),
                              tf.constant(z), mode)
        assert np.isfinite(g).all() and np.isfinite(h).all(), (z, g, h)



@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float32, tf.float64])
@pytest.mark.parametrize("gamma", [1.5, 2.0, "tensor"])
def test_binary_probability_second_order_finite(gamma, dtype, mode):
    """At p = 0 under the label 1 the second derivative was inf (NaN under a cotangent of 3),
    also at the correct neighbour p = 1: the chain of clamped ops multiplied two 1/tiny factors."""
    y = tf.constant([[1.0, 1.0, 0.0, 0.0, 0.3]], dtype)
    gamma_ = tf.constant(1.5, dtype) if gamma == "tensor" else gamma

    def body(p):
        with tf.GradientTape() as outer:
            outer.watch(p)
            with tf.GradientTape() as inner:
                inner.watch(p)
                loss = losses.binary_focal_crossentropy(y, p, gamma=gamma_)
            g = inner.gradient(loss, p)
        return loss, g, outer.gradient(g, p, output_gradients=tf.constant([[3.0, 3.0, 4.0, 4.0, 1.0]], dtype))

    p = tf.constant([[0.0, 1.0, 1.0, 0.0, 0.6]], dtype)
    loss, g, h = [t.numpy().astype(np.float64) for t in run(mode, body)(p)]
    assert np.isfinite(loss).all() and np.isfinite(g).all() and np.isfinite(h).all(), (g, h)
    assert g[0, 0] < 0 and g[0, 2] > 0  # the boundary gradients point back into the domain (C4)
    # The interior entry agrees with the plain formula's derivatives.
    p64 = tf.constant(0.6, tf.float64)
    with tf.GradientTape() as outer:
        outer.watch(p64)
        with tf.GradientTape() as inner:
            inner.watch(p64)
            q = 0.3 * (1 - p64) + 0.7 * p64
            power = 2.0 if gamma == 2.0 else 1.5
            plain = -q ** power * (0.3 * tf.math.log(p64) + 0.7 * tf.math.log(1 - p64)) / 5
        g64 = inner.gradient(plain, p64)
    h64 = outer.gradient(g64, p64)
    rtol = 1e-2 if dtype == tf.bfloat16 else 1e-5
    np.testing.assert_allclose([g[0, 4], h[0, 4]], [g64.numpy(), h64.numpy()], rtol=rtol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_probability_values_match_mpmath(dtype, mode):
    """C3 on probabilities: q was rebuilt as exp(log p) and raised as exp(gamma log q), each exp turning
    its argument's rounding into |gamma log q| ULP (91 ULP in float32 at p = 2.6e-13, 636 in float64 near
    p = 1e-49), and a Python gamma reached a float64 loss rounded to float32 (7e-6 at p = 1e-60)."""
    tiny = 1e-30 if dtype == np.float32 else 1e-60
    ps = np.array([2.6e-13, 1e-5, 0.0024, 0.3, 0.92560893, 0.99988705, tiny, 8.3e-50, 1e-200], np.float64)
    ps = ps[ps >= tiny].astype(dtype)
    cases = [(y, p, g) for y in (0.0, 1.0, 0.3) for p in ps for g in (2.0, 5.0)]
    gammas = sorted({g for _, _, g in cases})
    for gamma in gammas:
        y = np.array([[c[0]] for c in cases if c[2] == gamma], dtype)
        p = np.array([[c[1]] for c in cases if c[2] == gamma], dtype)
        got = run(mode, lambda a, b: losses.binary_focal_crossentropy(a, b, gamma=gamma))(
            tf.constant(y), tf.constant(p)).numpy().astype(np.float64)
        with mp.workdps(120):
            want = []
            for (yy,), (pp,) in zip(y, p):
                yy, pp = mp.mpf(float(yy)), mp.mpf(float(pp))
                q = yy * (1 - pp) + (1 - yy) * pp
                want.append(float(q ** gamma * (-yy * mp.log(pp) - (1 - yy) * mp.log1p(-pp))))
        want = np.array(want)
        ok = np.abs(want) >= np.finfo(dtype).tiny
        ulps = np.abs(got - want)[ok] / np.spacing(np.abs(want[ok]).astype(dtype)).astype(np.float64)
        assert ulps.max() <= 4, (gamma, ulps.max(), np.argmax(ulps))


def test_a_python_gamma_reaches_a_float64_loss_unrounded():
    """tf.cast of a Python float goes through float32: gamma 1.7 became 1.7000000476837158, 6.5e-6
    relative in p**gamma at p = 6.25e-60 (the focal factor of a float64 loss)."""
    p = 6.251590035740294e-60
    got = float(losses.binary_focal_crossentropy(np.array([[0.0]]), np.array([[p]]), gamma=1.7)[0])
    with mp.workdps(60):
        want = float(mp.mpf(p) ** mp.mpf(1.7) * -mp.log1p(-mp.mpf(p)))
    assert abs(got - want) <= 4 * np.spacing(want), (got, want)


# ----------------------------------------------------------------------------
# Categorical.


def _categorical_reference(y, z, alpha, gamma):
    """mpmath value and gradient in ``z`` of ``sum_j alpha_j (1 - p_j)**gamma (-y_j log p_j)``."""
    with mp.workdps(60):
        def loss(zs):
            top = max(zs)
            lse = top + mp.log(mp.fsum(mp.exp(v - top) for v in zs))
            total = 0
            for a, yj, zj in zip(alpha, y, zs):
                log_p = zj - lse
                total += a * (-mp.expm1(log_p))**gamma * (-yj * log_p)
            return total

        zs = [mp.mpf(v) for v in z]
        grads = [mp.diff(lambda t, i=i: loss(zs[:i] + [t] + zs[i + 1:]), zs[i]) for i in range(len(zs))]
        # The gradient is a difference of per-class terms alpha_j y_j (1 - p_j)**gamma
        # (times O(1) factors): its absolute error is relative to the largest.
        lse = max(zs) + mp.log(mp.fsum(mp.exp(v - max(zs)) for v in zs))
        scale = max(abs(a * yj * (-mp.expm1(zj - lse))**gamma) for a, yj, zj in zip(alpha, y, zs))
        return float(loss(zs)), [float(g) for g in grads], float(scale)


ROWS = [[1e4, 0.0, -1e4, 0.0], [0.0, 0.0, 0.0, 0.0], [30.0, 0.0, -5.0, 1.0], [100.0, -100.0, 0.0, 50.0],
        [1e-3, -1e-3, 0.0, 2e-3], [88.0, 87.0, -87.0, 0.0], [3.0, 2.0, 1.0, 0.0]]
LABELS = [[0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]]


def _categorical(y, z, mode="eager", **kwargs):
    def body(y, z):
        with tf.GradientTape() as tape:
            tape.watch([y, z])
            loss = losses.categorical_focal_crossentropy(y, z, from_logits=True, **kwargs)
        return (loss, *tape.gradient(loss, [y, z]))

    out = run(mode, body)(tf.convert_to_tensor(y), tf.convert_to_tensor(z))
    return [t.numpy().astype(np.float64) for t in out]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gamma, alpha", [(2.0, 0.25), (0.5, [0.1, 0.2, 0.3, 0.4]), (3.7, 1.0)])
def test_categorical_matches_mpmath(dtype, gamma, alpha):
    z = np.array([r for r in ROWS for _ in LABELS], dtype)
    y = np.array([lab for _ in ROWS for lab in LABELS], dtype)
    value, _, grad_z = _categorical(y, z, gamma=gamma, alpha=alpha)
    weights = alpha if isinstance(alpha, list) else [alpha] * 4
    bad = []
    for i in range(len(z)):
        want, want_grad, scale = _categorical_reference([float(v) for v in y[i]], [float(v) for v in z[i]], weights,
                                                        gamma)
        if not _close(value[i], want, (1 + gamma) * 2 * VALUE_RTOL[dtype], ATOL[dtype]):
            bad.append(("value", z[i], y[i], value[i], want))
        for j in range(4):
            atol = GRAD_RTOL[dtype] * scale + ATOL[dtype]
            if not _close(grad_z[i, j], want_grad[j], GRAD_RTOL[dtype], atol):
                bad.append(("dz", z[i], y[i], j, grad_z[i, j], want_grad[j]))
    assert not bad, bad[:10]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, gamma", [(np.float32, 2.0), (np.float32, 5.0), (np.float64, 2.0)])
def test_categorical_probability_values_match_mpmath(dtype, gamma, mode):
    """C3 on probabilities: p came from the log-softmax of log c, carrying the rounding of log c_j
    (|log c_j| eps/2 relative): 35 ULP in float32 at a dominant class beside 1e-10, 136 in float64."""
    rng = np.random.default_rng(5)
    lo = 1e-30 if dtype == np.float32 else 1e-60
    small = 9.25e-29 if dtype == np.float64 else 1e-20
    rows, labels = [[1.42e-10, 1.0, 0.0], [1.0, small, 0.3]], [[0, 1, 0], [1, 0, 0]]
    for k in range(40):
        p = np.exp(rng.uniform(np.log(lo), 0, 3))
        p[rng.integers(3)] = 1.0
        y = np.eye(3)[rng.integers(3)] if k % 2 else rng.dirichlet(np.ones(3))
        rows.append(p), labels.append(y)
    p, y = np.array(rows, dtype), np.array(labels, dtype)
    got = run(mode, lambda a, b: losses.categorical_focal_crossentropy(a, b, gamma=gamma))(
        tf.constant(y), tf.constant(p)).numpy().astype(np.float64)
    with mp.workdps(120):
        want = []
        for yy, pp in zip(y, p):
            c = [mp.mpf(float(v)) for v in pp]
            total = mp.fsum(c)
            terms = [mp.mpf(0.25) * (1 - v / total) ** gamma * -mp.mpf(float(w)) * mp.log(v / total)
                     for w, v in zip(yy, c) if w != 0]
            want.append(float(mp.fsum(terms)))
    want = np.array(want)
    ok = np.abs(want) >= np.finfo(dtype).tiny
    ulps = np.abs(got - want)[ok] / np.spacing(np.abs(want[ok]).astype(dtype)).astype(np.float64)
    assert ulps.max() <= 4, (ulps.max(), p[ok][np.argmax(ulps)])


@pytest.mark.parametrize("mode", MODES)
def test_categorical_masks_nan_and_modes(mode):
    z = np.array([[-np.inf, 0.0, 1.0, 2.0], [-np.inf] * 4, [np.nan, 0.0, 1.0, 2.0], [3.0, 2.0, 1.0, 0.0]], "float32")
    y = np.array([[0.0, 0.5, 0.5, 0.0], [0.0] * 4, [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], "float32")
    value, grad_y, grad_z = _categorical(y, z, mode)
    want_value, _, want_grad = _categorical(y, z, "eager")
    assert np.isfinite(value[[0, 1, 3]]).all() and np.isnan(value[2])
    assert np.isfinite(grad_z[[0, 1, 3]]).all() and np.isnan(grad_z[2]).all()
    assert grad_z[0, 0] == 0 and (grad_z[1] == 0).all() and value[1] == 0  # masks: no contribution
    np.testing.assert_allclose(value[[0, 1, 3]], want_value[[0, 1, 3]], rtol=2e-6)
    np.testing.assert_allclose(grad_z[[0, 1, 3]], want_grad[[0, 1, 3]], rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("inner_xla", [True, False])
def test_categorical_fused_equals_the_unfused_tensor_alpha_path(inner_xla):
    rng = np.random.default_rng(7)
    z = (rng.normal(size=(16, 6)) * 20).astype("float64")
    y = rng.uniform(0, 1, (16, 6))
    y /= y.sum(-1, keepdims=True)
    alpha = [0.1, 0.3, 0.2, 0.1, 0.2, 0.1]
    old = _xla.set_inner_xla(inner_xla)
    try:
        for gamma in GAMMAS:
            fused = _categorical(y, z, gamma=gamma, alpha=alpha, label_smoothing=0.05)
            unfused = _categorical(y, z, gamma=gamma, alpha=tf.constant(alpha, tf.float64), label_smoothing=0.05)
            # The unfused composite forms the factor as exp(gamma * log1mexp(log p)):
            # about 1e-9 relative in float64 where the fused op (checked
            # against mpmath above) is within 1e-15.
            for f, u in zip(fused, unfused):
                np.testing.assert_allclose(f, u, rtol=1e-7, atol=1e-15)
    finally:
        _xla.set_inner_xla(old)


@pytest.mark.parametrize("mode", MODES)
def test_categorical_second_order_finite(mode):
    y = tf.constant([[0.0, 1.0, 0.0, 0.0], [0.2, 0.3, 0.5, 0.0]])
    _, g, h = derivatives(lambda z: losses.categorical_focal_crossentropy(y, z, gamma=0.5, from_logits=True),
                          tf.constant([[1e4, 0.0, -1e4, 0.0], [30.0, 0.0, -5.0, 88.0]]), mode)
    assert np.isfinite(g).all() and np.isfinite(h).all(), (g, h)


def _categorical_probability_gradient(y, p, alpha, gamma, tiny):
    """d/dp of sum_j alpha (1 - u_j)**gamma (-y_j log u_j), u = c / sum(c), c = max(p, tiny), in float64.

    Below ``tiny`` the derivative in ``c`` (the clamp's boundary gradient, C4).
    """
    c = np.maximum(p, tiny)
    s = c.sum(-1, keepdims=True)
    u = c / s
    with np.errstate(divide="ignore", invalid="ignore"):
        d_u = alpha * y * (gamma * (1 - u) ** (gamma - 1) * np.log(u) - (1 - u) ** gamma / u)
    d_u = np.where(y == 0, 0.0, d_u)
    # du_j/dc_i = delta_ij / S - c_j / S**2.
    return d_u / s - (d_u * c).sum(-1, keepdims=True) / s ** 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tensor_gamma", [False, True])
def test_categorical_probability_gradient_at_a_zero_probability(tensor_gamma, dtype, mode):
    """C4 on probabilities: a class of probability 0 keeps the normaliser's pull.

    The loss took log(max(p, tiny)) as logits, and the logits' gradient
    p_i * (...) had p_i = c_i / S below tiny, flushed to 0: at p = [0.5,
    0.5, 0], y = [1, 0, 0] the third class got 0 in float32 and float64
    (exact 0.1491), through the fused op and the tensor-gamma path alike.
    """
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.0, 0.8], [0.0, 0.0, 1.0], [0.3, 0.3, 0.4]])
    y = np.eye(3)[[0, 2, 2, 1]]
    tiny = float(np.finfo(dtype).tiny)
    gamma = tf.constant(2.0, dtype) if tensor_gamma else 2.0

    def loss(q):
        return losses.categorical_focal_crossentropy(tf.constant(y, dtype), q, gamma=gamma)

    q = tf.constant(p, dtype)

    def value_and_gradient(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            value = loss(q)
        return value, tape.gradient(value, q)

    value, grad = run(mode, value_and_gradient)(q)
    expected = _categorical_probability_gradient(y, p, 0.25, 2.0, tiny)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(grad.numpy(), expected, rtol=rtol, atol=1e-300)
    assert grad.numpy()[0, 2] > 0.14 and grad.numpy()[1, 1] > 0
    c = np.maximum(p, tiny)
    u = c / c.sum(-1, keepdims=True)
    want = (0.25 * y * (1 - u) ** 2 * -np.log(u)).sum(-1)
    np.testing.assert_allclose(value.numpy(), want, rtol=rtol, atol=1e-30)


# ----------------------------------------------------------------------------
# Binary, tensor gamma: the fused op with gamma as an input.

EDGE_ZS = ZS + [np.inf, -np.inf]
EDGE_YS = [0.0, 1e-3, 0.5, 0.9, 1.0]


def _edge_grid(dtype):
    y_grid, z_grid = np.meshgrid(np.array(EDGE_YS, dtype), np.array(EDGE_ZS, dtype))
    return y_grid.reshape(-1, 1), z_grid.reshape(-1, 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_tensor_gamma_equals_python_gamma(dtype, mode):
    """Value and both gradients as the fused Python-gamma op, hard and soft labels, large and infinite logits.

    The unfused chain took log(1 - p_t) as a log-sum-exp with log(1 - y)
    exactly -inf (gradient 0) at y = 1: its label gradient at y = 1, z = 3,
    gamma = 2 was -0.00653 for -0.0109; and at z = +inf, y = 0 (z = -inf,
    y = 1) its logit gradient was NaN for the limit slope.
    """
    y, z = _edge_grid(dtype)
    for gamma in GAMMAS:
        fused = _binary(y, z, gamma, mode)
        tensor = _binary(y, z, tf.constant(gamma, dtype), mode)
        for name, f, t in zip(("value", "dy", "dz"), fused, tensor):
            assert not np.isnan(t).any(), (name, gamma, y[np.isnan(t)], z[np.isnan(t)])
            rtol = 8 * float(np.finfo(dtype).eps)
            np.testing.assert_allclose(t, f, rtol=rtol, atol=0, err_msg=f"{name} {gamma}")


@pytest.mark.parametrize("mode", MODES)
def test_binary_tensor_gamma_infinite_logits(mode):
    y = np.array([[1.0], [0.0], [0.5], [0.0], [1.0], [0.5]], "float32")
    z = np.array([[np.inf], [np.inf], [np.inf], [-np.inf], [-np.inf], [-np.inf]], "float32")
    value, grad_y, grad_z = _binary(y, z, tf.constant(2.0), mode)
    assert value[0] == 0 and value[3] == 0 and grad_z[0] == 0 and grad_z[3] == 0
    assert grad_y[0] == 0 and grad_y[3] == 0  # -inf mask with label 0: no gradient at all
    assert value[1] == np.inf and value[4] == np.inf and value[2] == np.inf
    np.testing.assert_allclose(grad_z[[1, 4, 2, 5]], [1.0, -1.0, 0.125, -0.125], rtol=1e-6)
    assert not np.isnan(grad_z).any() and not np.isnan(grad_y).any()


def _gamma_gradient(y, z, gamma, mode="eager"):
    def body(y, z, g):
        with tf.GradientTape() as tape:
            tape.watch(g)
            loss = losses.binary_focal_crossentropy(y, z, gamma=g, from_logits=True, axis=None)
        return tape.gradient(loss, g)

    y, z, gamma = (tf.convert_to_tensor(v) for v in (y, z, gamma))
    return run(mode, body)(y, z, gamma).numpy()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_gradient_in_a_tensor_gamma(dtype, mode):
    """d/dgamma of mean(q**gamma BCE) is mean(log(q) q**gamma BCE), per element too; 0 where that is 0."""
    y = np.array([[1.0, 0.0, 0.5, 0.9, 1e-3, 1.0, 0.0]], dtype)
    z = np.array([[3.0, -2.0, 1e-3, -20.0, 50.0, 200.0, -1e4]], dtype)
    rtol = GRAD_RTOL[dtype]
    for gamma in GAMMAS:
        per_element = []
        with mp.workdps(60):
            for yi, zi in zip(y[0], z[0]):
                yi, zi = mp.mpf(float(yi)), mp.mpf(float(zi))
                p, pm = 1 / (1 + mp.exp(-zi)), 1 / (1 + mp.exp(zi))
                q = yi * pm + (1 - yi) * p
                bce = max(zi, 0) - yi * zi + mp.log1p(mp.exp(-abs(zi)))
                per_element.append(float(mp.log(q) * q**gamma * bce / len(z[0])))
        got = _gamma_gradient(y, z, np.array(gamma, dtype), mode)
        np.testing.assert_allclose(got, sum(per_element), rtol=rtol)
        got = _gamma_gradient(y, z, np.full(z.shape, gamma, dtype), mode)
        np.testing.assert_allclose(got.reshape(-1), per_element, rtol=rtol, atol=ATOL[dtype])
    # Confidently right, a -inf mask with label 0, and z = +inf with label 0
    # (log q = 0 times an infinite loss, the limit of -z e^-z): exactly 0.
    y = np.array([[1.0, 0.0, 0.0]], dtype)
    z = np.array([[np.inf, -np.inf, np.inf]], dtype)
    got = _gamma_gradient(y, z, np.full(z.shape, 2.0, dtype), mode)
    np.testing.assert_array_equal(got, [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("mode", MODES)
def test_binary_tensor_gamma_second_order_finite(mode):
    y = tf.constant([[1.0, 0.0, 0.5, 1.0, 0.0]])
    rows = [[1e4, -1e4, 0.0, -3.0, 20.0], [200.0, -200.0, 1e-3, 88.0, -88.0], [3.0, 80.0, -100.0, 1e-3, 0.0]]
    for z in ([row] for row in rows):
        z = tf.constant(z)
        for gamma in (0.5, 2.0):
            g = tf.constant(gamma)
            for fn, x in ((lambda z: losses.binary_focal_crossentropy(y, z, gamma=g, from_logits=True), z),
                          (lambda y: losses.binary_focal_crossentropy(y, z, gamma=g, from_logits=True), y),
                          (lambda g: losses.binary_focal_crossentropy(y, z, gamma=g, from_logits=True), g)):
                _, first, second = derivatives(fn, x, mode)
                assert np.isfinite(first).all() and np.isfinite(second).all(), (z, gamma, first, second)


@pytest.mark.parametrize("mode", MODES)
def test_binary_tensor_gamma_zero_is_the_cross_entropy(mode):
    y = np.array([[1.0, 0.0, 0.5, 0.0, 0.3]], "float32")
    z = np.array([[3.0, np.inf, -2.0, -np.inf, 1e4]], "float32")
    tensor = _binary(y, z, tf.constant(0.0), mode)
    plain = _binary(y, z, 0.0, mode)
    for t, p in zip(tensor, plain):
        assert not np.isnan(t).any()
        # The labels' gradient at an infinite logit is -z, saturated (to
        # different finite magnitudes): the same sign.
        saturated = np.abs(p) > 1e30
        np.testing.assert_array_equal(np.sign(t[saturated]), np.sign(p[saturated]))
        np.testing.assert_allclose(t[~saturated], p[~saturated], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_categorical_probability_tensor_gamma_second_order_as_the_fused_op(dtype, mode):
    """C1: a tensor gamma's second derivative at a labelled zero probability was -inf (NaN at [0, 1, 0]).

    It now equals the fused (Python gamma) op's, value, gradient and
    second derivative, and is finite; a tensor alpha takes the same path.
    """
    p = np.array([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]], dtype)
    y = tf.constant(np.eye(3)[[0, 0, 2]], dtype)

    def loss_with(gamma, alpha):
        return lambda q: losses.categorical_focal_crossentropy(y, q, gamma=gamma, alpha=alpha)

    fused = derivatives(loss_with(2.0, 0.25), tf.constant(p), mode)
    for gamma, alpha in ((tf.constant(2.0, dtype), 0.25), (2.0, tf.constant(0.25, dtype))):
        got = derivatives(loss_with(gamma, alpha), tf.constant(p), mode)
        rtol = 1e-5 if dtype == "float32" else 1e-12
        for g, f in zip(got[:2], fused[:2]):
            np.testing.assert_allclose(g, f, rtol=rtol, atol=1e-30)
        # Second order: finite everywhere; equal off the clamp (where both
        # saturate, float64's 1/tiny**2 overflows even the wide pass, and the
        # fused op's artifact rule gives 0 where the chain saturates).
        assert np.all(np.isfinite(got[2]))
        np.testing.assert_allclose(got[2][2], fused[2][2], rtol=rtol)
        if dtype == "float32":
            np.testing.assert_allclose(got[2], fused[2], rtol=rtol, atol=1e-30)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gamma", [2.0, "tensor"])
def test_categorical_focal_over_many_equal_classes_within_c3(gamma, mode):
    """The loss sums its class terms in float64, rounded once: with a float32 sum, 1e5 uniform classes
    under uniform labels (equal terms, whose partial sums all round alike) left it 11.6 ULP off. Both
    the fused op and the composite a tensor ``gamma`` takes."""
    n = 100_000
    p = np.full((2, n), 1 / n, np.float32)
    g = tf.constant(2.0) if gamma == "tensor" else gamma
    got = run(mode, lambda t, q: losses.categorical_focal_crossentropy(t, q, gamma=g))(
        tf.constant(p), tf.constant(p)).numpy()
    p64 = p.astype(np.float64)
    q = p64 / p64.sum(-1, keepdims=True)
    want = np.sum(-0.25 * p64 * (1 - q) ** 2 * np.log(q), -1)
    ulps = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32))
    assert ulps.max() <= 4, ulps.max()

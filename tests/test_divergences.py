"""``kl_divergence`` on probabilities: accuracy where the terms cancel, and its clamps in float16."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from safeops import _xla, losses
from tests._modes import MODES, run


def _reference(y, p, tiny):
    """``sum y log(max(y, tiny) / max(p, tiny))`` of exact inputs, mpmath at 50 digits."""
    with mpmath.workdps(50):
        tiny = mpmath.mpf(tiny)
        return float(mpmath.fsum(
            mpmath.mpf(float(a)) * (mpmath.log(max(mpmath.mpf(float(a)), tiny))
                                    - mpmath.log(max(mpmath.mpf(float(b)), tiny)))
            for a, b in zip(y, p) if a != 0))


def _rows(rng):
    rows = [([0.3, 0.3, 0.4], [0.3, 0.3001, 0.3999]), ([1.0, 0.0, 0.0], [0.5, 0.25, 0.25]),
            ([0.2, 0.8, 0.0], [0.0, 1.0, 0.0]), ([0.5, 0.25, 0.25], [0.5, 0.25, 0.25])]
    for _ in range(8):
        y = rng.dirichlet(np.ones(3))
        rows.append((y, y * (1 + rng.normal(size=3) * 10 ** rng.uniform(-6, -1))))
    for _ in range(4):
        rows.append((rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(3))))
    return rows


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kl_divergence_within_c3_where_the_terms_cancel(dtype, mode):
    """C3: within 4 ULP of mpmath; the plain sum was 50% off in float32 at the first row.

    Close distributions (normalised or not), a zero prediction (the clamp)
    and unrelated ones. The gradient is the plain form's: -y / max(p, tiny).
    """
    rows = _rows(np.random.default_rng(5))
    y = np.array([r[0] for r in rows], dtype)
    p = np.array([r[1] for r in rows], dtype)
    tiny = float(np.finfo(dtype).tiny)

    def value_and_gradient(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            value = losses.kl_divergence(tf.constant(y), q)
        return value, tape.gradient(value, q)

    value, grad = run(mode, value_and_gradient)(tf.constant(p))
    want = np.array([_reference(a, b, tiny) for a, b in zip(y, p)])
    scale = np.spacing(np.abs(want.astype(dtype))).astype(np.float64)
    ulps = np.abs(value.numpy().astype(np.float64) - want) / np.where(want == 0, 1.0, scale)
    assert ulps.max() <= 4, ulps
    expected = -y.astype(np.float64) / np.maximum(p.astype(np.float64), tiny)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_kl_divergence_float16_clamps_both_logarithms_alike():
    """A label below float16's tiny next to p = 0 made the divergence negative (-1.8e-5).

    The label's log was clamped at float32's tiny, the prediction's at
    float16's; and the label gradient at y = p = [0, 1, 0] was -77.6 at the
    zero classes, where it is 0 in float32 (log tiny - log tiny).
    """
    y = tf.constant([[1 - 1e-5, 1e-5]], tf.float16)
    p = tf.constant([[1.0, 0.0]], tf.float16)
    assert float(losses.kl_divergence(y, p)[0]) >= 0
    for dtype in (tf.float16, tf.float32):
        y = tf.constant([[0.0, 1.0, 0.0]], dtype)
        with tf.GradientTape() as tape:
            tape.watch(y)
            value = losses.kl_divergence(y, tf.constant([[0.0, 1.0, 0.0]], dtype))
        np.testing.assert_array_equal(tape.gradient(value, y).numpy(), [[0.0, 1.0, 0.0]])


@pytest.mark.parametrize("mode", ["eager", "jit", "plain"])
def test_kl_divergence_float32_at_a_float32_ulp_of_difference(mode):
    """float32 inputs (float32 logarithms, a float64 Newton step) within C3's 4 ULP: rows whose
    predictions differ from the labels by one to a few float32 ULP, normalised or not, and rows of
    1000 classes, where the float64 rounding is amplified most."""
    rng = np.random.default_rng(11)
    tiny = float(np.finfo(np.float32).tiny)
    rows = []
    for n, rel, count in [(3, 1e-7, 12), (3, 1e-6, 6), (10, 3e-7, 6), (1000, 1e-7, 2), (1000, 1e-2, 1)]:
        for i in range(count):
            y = rng.dirichlet(np.ones(n)).astype(np.float32)
            p = np.clip(y.astype(np.float64) * (1 + rng.normal(size=n) * rel), 0, 1)
            rows.append((y, (p / p.sum() if i % 2 else p).astype(np.float32)))
    fn = run("jit" if mode == "jit" else "eager", losses.kl_divergence)
    old = _xla.set_inner_xla(mode != "plain")  # plain: TensorFlow kernels, the float64 form
    try:
        for y, p in rows:
            got = float(fn(y[None], p[None]).numpy()[0])
            want = _reference(y, p, tiny)
            assert abs(got - want) <= 4 * np.spacing(np.float32(abs(want))), (len(y), got, want)
    finally:
        _xla.set_inner_xla(old)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("inner_xla", [False, True])
def test_kl_divergence_range_checks_name_the_argument_and_value(mode, inner_xla):
    """The range checks of both arguments ride in the float64 pass (per row); each still names its own
    argument and first bad value, in any row, and NaN passes through to the output."""
    old = _xla.set_inner_xla(inner_xla)
    try:
        _range_checks(run(mode, losses.kl_divergence))
    finally:
        _xla.set_inner_xla(old)


def _range_checks(fn):
    ok = [[0.5, 0.5], [0.25, 0.75]]
    for y, p, arg, bad in [(ok, [[0.5, 0.5], [1.25, 0.75]], "y_pred", "1.25"),
                           ([[0.5, 0.5], [0.25, -0.5]], ok, "y_true", "-0.5"),
                           # a NaN beside it (under XLA the flags ride in a float64 sum of their own)
                           ([[np.nan, 0.5], [0.25, 0.75]], [[0.5, 2.0], [0.5, 0.5]], "y_pred", "2"),
                           ([[0.5, np.inf], [0.25, 0.75]], [[0.5, 0.5], [0.5, np.nan]], "y_true", "inf")]:
        message = rf"(?s){arg} must be probabilities.*got.*{bad}"
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            fn(tf.constant(y), tf.constant(p))
    value = fn(tf.constant([[0.5, np.nan], [0.25, 0.75]]), tf.constant([[0.5, 0.5], [0.5, 0.5]])).numpy()
    assert np.isnan(value[0]) and value[1] == pytest.approx(0.1308, abs=1e-4)


def _f32_rows(rng, kind, rows, n):
    """``(y, p)`` float64 arrays of one family: rows whose terms cancel little, or much (``close``)."""
    def softmax(scale):
        z = rng.normal(size=(rows, n)) * scale
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    hot = np.eye(n)[rng.integers(0, n, rows)]
    if kind == "unrelated":
        return softmax(rng.uniform(0.5, 3)), softmax(rng.uniform(0.5, 3))
    if kind == "one_hot":
        return hot, softmax(rng.uniform(0.5, 3))
    if kind == "smoothed":
        eps = rng.uniform(0.01, 0.2)
        return hot * (1 - eps) + eps / n, softmax(rng.uniform(0.5, 3))
    y = softmax(1.0)  # "close": the prediction a relative 10**-k from the label, normalised or not
    p = np.clip(y * (1 + rng.normal(size=y.shape) * 10.0 ** rng.uniform(-7, -1)), 0, 1)
    return y, (p / p.sum(-1, keepdims=True) if rng.integers(2) else p)


def _ulps(got, y, p, dtype):
    tiny = float(np.finfo(np.float32).tiny) if dtype != tf.float16 else float(np.finfo(np.float16).tiny)
    want = np.array([_reference(a, b, tiny) for a, b in zip(y, p)])
    spacing = tf.constant(np.abs(want), tf.float32)
    spacing = (tf.cast(tf.cast(spacing, dtype), tf.float32) if dtype != tf.float32 else spacing).numpy()
    ulp = {tf.float32: np.spacing(spacing.astype(np.float32)).astype(np.float64),
           tf.float16: np.spacing(spacing.astype(np.float16)).astype(np.float64),
           tf.bfloat16: np.exp2(np.floor(np.log2(np.maximum(spacing, 1e-38))) - 7)}[dtype]
    return np.abs(got - want) / np.where(want == 0, 1.0, ulp)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["unrelated", "one_hot", "smoothed", "close"]),
       n=st.sampled_from([2, 3, 10, 200]), dtype=st.sampled_from([tf.float32, tf.float16, tf.bfloat16]),
       inner_xla=st.booleans())
def test_kl_divergence_float32_inputs_within_c3(seed, kind, n, dtype, inner_xla):
    """Inputs of float32 or narrower: float32 logarithms with a float64 Newton step (``_corrected_kl``).

    Within 4 ULP of mpmath on rows that cancel little (unrelated
    distributions, a one-hot or smoothed label against a softmax output)
    and on ``close`` ones (the prediction a relative 1e-7 to 1e-1 from
    the label, normalised or not), in a ``tf.function`` (the inner XLA
    function; with it off, TensorFlow kernels of the float64 form) and
    under an outer ``jit_compile`` (the Newton step either way). Inputs
    are rounded to ``dtype`` first; the reference sees the rounded ones.
    """
    rng = np.random.default_rng(seed)
    y, p = _f32_rows(rng, kind, 8, n)
    y = tf.cast(tf.constant(y, tf.float32), dtype)
    p = tf.cast(tf.constant(p, tf.float32), dtype)
    y64, p64 = (tf.cast(v, tf.float64).numpy() for v in (y, p))
    old = _xla.set_inner_xla(inner_xla)
    try:
        for mode in ("function", "jit"):
            got = tf.cast(run(mode, losses.kl_divergence)(y, p), tf.float64).numpy()
            assert _ulps(got, y64, p64, dtype).max() <= 4, mode
    finally:
        _xla.set_inner_xla(old)

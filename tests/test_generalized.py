"""safeops.losses.categorical_generalized_cross_entropy: Keras' values where they are finite,
live gradients where Keras' are NaN, C3 against mpmath, labels, errors, modes and dtypes."""

from __future__ import annotations

import inspect

import keras
import mpmath
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops
from safeops import losses
from tests._modes import value_and_grad
from ulp import GRAD_RTOL, VALUE_ULP, finfo, ulp_distance

MODES = ["eager", "function", "xla"]
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
gce = losses.categorical_generalized_cross_entropy
GCE = losses.CategoricalGeneralizedCrossEntropy
#: A private mpmath context (the global one is other tests' business).
MP = mpmath.MPContext()
MP.dps = 50


def _run(mode, fn, *args):
    if mode != "eager":
        fn = tf.function(fn, jit_compile=(mode == "xla"), autograph=False)
    return fn(*args)


def _exact(p, q):
    """``(1 - p**q) / q`` and its derivative ``-p**(q - 1)`` in mpmath (``p`` as the float it is)."""
    p, q = MP.mpf(float(p)), MP.mpf(float(q))
    return (1 - p ** q) / q, (-(p ** (q - 1)) if p > 0 else -MP.inf)


# ----------------------------------------------------------------------------
# Drop-in: Keras 3's names, arguments, values and config.


def test_signatures_are_keras_with_from_logits_keyword_only():
    for name in ("categorical_generalized_cross_entropy", "CategoricalGeneralizedCrossEntropy"):
        ours = inspect.signature(getattr(losses, name)).parameters.values()
        theirs = inspect.signature(getattr(keras.losses, name)).parameters.values()
        assert [(p.name, p.default) for p in ours if p.kind != p.KEYWORD_ONLY] == [
            (p.name, p.default) for p in theirs]
        keyword_only = [p.name for p in ours if p.kind == p.KEYWORD_ONLY]
        assert keyword_only[0] == "from_logits"
    assert losses.get("categorical_generalized_cross_entropy") is gce
    assert type(losses.get("CategoricalGeneralizedCrossEntropy")) is GCE
    ours, theirs = GCE(), keras.losses.CategoricalGeneralizedCrossEntropy()
    assert ours.name == theirs.name and ours.q == theirs.q == 0.5
    assert set(theirs.get_config()) <= set(ours.get_config())


def test_config_round_trips_q_and_from_logits():
    loss = GCE(q=0.3, reduction="sum", name="g", dtype="float64", from_logits=True, check_finite=True)
    config = loss.get_config()
    assert config["q"] == 0.3 and config["from_logits"] is True
    for again in (GCE.from_config(config), losses.get(keras.losses.serialize(loss)),
                  keras.losses.deserialize(keras.losses.serialize(loss))):
        assert type(again) is GCE and again.get_config() == config


@pytest.mark.parametrize("q", [0.05, 0.3, 0.7, 1.0, 1.5])
def test_equals_keras_where_keras_is_finite(q):
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(6), size=64).astype("float32")
    labels = rng.integers(0, 6, size=64).astype("int32")
    ours = gce(labels, p, q).numpy()
    theirs = keras.losses.categorical_generalized_cross_entropy(labels, p, q).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-6)
    # Float labels (Keras casts them) and bools give the same.
    np.testing.assert_array_equal(gce(labels.astype("float32"), p, q).numpy(), ours)
    assert ours.dtype == np.float32 and ours.shape == (64,)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight", None])
def test_class_reduces_and_weights_as_keras(reduction):
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(4), size=8).astype("float32")
    labels = rng.integers(0, 4, size=8)
    weights = np.linspace(0.0, 2.0, 8).astype("float32")
    ours, theirs = GCE(q=0.6, reduction=reduction), keras.losses.CategoricalGeneralizedCrossEntropy(
        q=0.6, reduction=reduction)
    np.testing.assert_allclose(ours(labels, p), theirs(labels, p), rtol=1e-5)
    np.testing.assert_allclose(ours(labels, p, sample_weight=weights),
                               theirs(labels, p, sample_weight=weights), rtol=1e-5)


def test_labels_with_a_trailing_axis_of_one_are_squeezed():
    """Keras 3.15 broadcasts a [b, 1, C] one-hot against [b, C]: a [b, b] loss ([b, 1] is documented)."""
    p = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]], "float32")
    keras_value = keras.losses.categorical_generalized_cross_entropy(tf.constant([[0], [2], [1]]),
                                                                     tf.constant(p), 0.5)
    assert keras_value.shape == (3, 3)
    ours = gce(np.array([[0], [2], [1]]), p, 0.5)
    np.testing.assert_array_equal(ours.numpy(), gce([0, 2, 1], p, 0.5).numpy())
    np.testing.assert_array_equal(GCE()(np.array([[0], [2], [1]]), p).numpy(),
                                  GCE()(np.array([0, 2, 1]), p).numpy())


def test_higher_rank_predictions_take_labels_of_their_leading_shape():
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(3), size=(2, 4)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 4))
    value = gce(labels, p, 0.5).numpy()
    expected = (1 - np.take_along_axis(p, labels[..., None], -1)[..., 0].astype(np.float64) ** 0.5) / 0.5
    np.testing.assert_allclose(value, expected, rtol=1e-6)


# ----------------------------------------------------------------------------
# Where Keras fails: an underflowed labelled probability.


@pytest.mark.parametrize("mode", MODES)
def test_underflowed_softmax_gives_keras_nan_and_safeops_the_exact_gradient(mode):
    """A noisy label the model is sure is wrong: p = 0 in float32 at a logit gap of 120.

    Keras: ``-p**(q-1)`` is ``-inf`` and the softmax's backward multiplies it
    by 0, NaN for the whole row. safeops: in graphs the logits are recovered
    from the softmax (exact: ``-p**q (onehot - softmax)``, 3.3e-37 here); in
    eager mode the probability path's boundary gradient times 0 gives 0.
    """
    z = tf.constant([[0.0, 120.0, 0.0], [0.0, 20.0, 0.0]])
    labels = tf.constant([0, 0])
    # The gaps the docs quote: TensorFlow's softmax is 0 from about 87 in float32, 18 in float16.
    assert float(tf.nn.softmax([0.0, 88.0])[0]) == 0.0 < float(tf.nn.softmax([0.0, 86.0])[0])
    assert float(tf.nn.softmax(tf.constant([0.0, 18.0], tf.float16))[0]) == 0.0

    def keras_loss(z):
        return keras.losses.categorical_generalized_cross_entropy(labels, tf.nn.softmax(z), 0.7)

    _, keras_grad = value_and_grad(keras_loss, z, mode)
    assert np.all(np.isnan(keras_grad[0])) and np.all(np.isfinite(keras_grad[1]))
    value, grad = value_and_grad(lambda z: gce(labels, tf.nn.softmax(z), 0.7), z, mode)
    assert np.all(np.isfinite(grad))
    p = np.exp(np.float64(-120.0)) / (1 + 2 * np.exp(np.float64(-120.0)))
    np.testing.assert_allclose(value[0], (1 - p ** 0.7) / 0.7, rtol=1e-7)
    exact_row = -(p ** 0.7) * np.array([1 - p, -(1 - 2 * p), -p])
    if mode == "eager":
        np.testing.assert_allclose(grad[0], 0.0, atol=1e-36)
    else:
        np.testing.assert_allclose(grad[0], exact_row, rtol=1e-5, atol=1e-44)  # the last underflows
    # The other row, where Keras is finite: the same gradient as Keras'.
    np.testing.assert_allclose(grad[1], keras_grad[1], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_from_logits_is_exact_where_the_probability_underflows(mode):
    z = np.array([[0.0, 1e4, -1e4], [3.0, -1.0, 0.5]], "float32")
    value, grad = value_and_grad(lambda z: gce([2, 0], z, 0.5, from_logits=True), z, mode)
    np.testing.assert_allclose(value[0], 2.0, rtol=1e-7)   # p = exp(-2e4): 1/q
    np.testing.assert_array_equal(grad[0], 0.0)           # p**q = exp(-1e4) underflows in float64 too
    log_p = z[1].astype(np.float64) - np.log(np.exp(z[1].astype(np.float64)).sum())
    softmax = np.exp(log_p)
    np.testing.assert_allclose(value[1], -np.expm1(0.5 * log_p[0]) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(grad[1], -np.exp(0.5 * log_p[0]) * (np.eye(3)[0] - softmax), rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_from_logits_with_a_minus_inf_mask(mode):
    """A label on a masked class costs 1/q with zero gradient; a mask elsewhere costs nothing."""
    z = np.array([[-np.inf, 1.0, 2.0], [0.5, -np.inf, 1.5]], "float32")
    value, grad = value_and_grad(lambda z: gce([0, 2], z, 0.25, from_logits=True), z, mode)
    assert value[0] == 4.0 and np.all(grad[0] == 0.0)
    p = np.exp(1.5) / (np.exp(0.5) + np.exp(1.5))
    np.testing.assert_allclose(value[1], (1 - p ** 0.25) / 0.25, rtol=1e-6)
    assert grad[1, 1] == 0.0 and np.all(np.isfinite(grad))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q", [0.2, 0.7, 1.0, 2.0])
def test_boundary_gradient_at_a_zero_probability_in_every_dtype(q, dtype, mode):
    """C4: at p = 0 the gradient is the one at the clamp ``tiny``: finite, negative; value 1/q."""
    p = tf.constant([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]], dtype)
    value, grad = value_and_grad(lambda p: gce([0, 1, 0], p, q), p, mode)
    info = finfo(dtype)
    exact = tf.cast(np.array([1.0 / q, (1 - 0.5 ** q) / q, 0.0]), dtype).numpy().astype(np.float64)
    np.testing.assert_allclose(value, exact, rtol=float(info.eps) * (4 if dtype == tf.float64 else 1))
    assert np.all(np.isfinite(grad)) and grad[0, 0] < 0
    np.testing.assert_allclose(grad[0, 0], -min(float(info.tiny) ** (q - 1.0), float(info.max)),
                               rtol=GRAD_RTOL[dtype.name] * 4)
    np.testing.assert_allclose(grad[1, 1], -(0.5 ** (q - 1.0)), rtol=GRAD_RTOL[dtype.name] * 4)
    np.testing.assert_allclose(grad[2, 0], -1.0, rtol=GRAD_RTOL[dtype.name])
    assert grad[0, 1] == grad[1, 0] == grad[2, 1] == 0.0   # unlabelled classes


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_mixed_float16_training_step_stays_finite_where_keras_turns_nan(mode):
    """A float16 softmax underflows at a logit gap of about 17: Keras' gradient is NaN for that row."""
    z = tf.constant([[0.0, 20.0, 0.0, 0.0]], tf.float16)

    def step(loss_fn, z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = loss_fn(tf.constant([0]), tf.nn.softmax(z))
        return loss, tape.gradient(loss, z)

    _, keras_grad = _run(mode, lambda z: step(keras.losses.CategoricalGeneralizedCrossEntropy(q=0.7), z), z)
    assert np.all(np.isnan(keras_grad.numpy()))
    loss, grad = _run(mode, lambda z: step(GCE(q=0.7, dtype="mixed_float16"), z), z)
    assert loss.dtype == tf.float16 and np.isfinite(float(loss))
    assert np.all(np.isfinite(grad.numpy()))


# ----------------------------------------------------------------------------
# C3 against mpmath.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_losses_keep_their_digits_where_the_naive_formula_cancels(dtype, mode):
    """``1 - p**q`` near p = 1 and small q: the float32 naive formula keeps about two digits."""
    p = (1 - np.logspace(-7 if dtype == np.float32 else -15, -1, 40)).astype(dtype)
    rows = np.stack([p, 1 - p], -1)
    for q in (0.01, 0.1, 0.7):
        value = _run(mode, lambda r: gce(tf.zeros([40], tf.int32), r, q), tf.constant(rows)).numpy()
        exact = np.array([float(_exact(v, q)[0]) for v in p], dtype)
        assert np.max(ulp_distance(value, exact, dtype)) <= VALUE_ULP[np.dtype(dtype).name], q
    if dtype == np.float32:
        naive = (1 - p ** np.float32(0.01)) / np.float32(0.01)
        exact = np.array([float(_exact(v, 0.01)[0]) for v in p], np.float32)
        assert np.max(np.abs(naive / exact - 1)) > 1e-3


@settings(max_examples=60, deadline=None)
@given(p=st.lists(st.floats(0.0, 1.0, width=32), min_size=1, max_size=6),
       q=st.floats(0.01, 2.0), dtype=st.sampled_from([np.float32, np.float64]))
def test_property_value_and_gradient_against_mpmath(p, q, dtype):
    """Each labelled probability alone in its row: value within C3's ULP bound, gradient within its rtol."""
    p = np.asarray(p, dtype)
    p = np.where(p < np.finfo(dtype).tiny, 0.0, p).astype(dtype)   # subnormals are 0 (C3)
    rows = np.stack([p, 1 - p], -1).astype(dtype)
    value, grad = value_and_grad(lambda r: gce(tf.zeros([len(p)], tf.int32), r, q), rows)
    exact = [_exact(v, q) for v in p]
    exact_value = np.array([float(e[0]) for e in exact], dtype)
    assert np.max(ulp_distance(value.astype(dtype), exact_value, dtype)) <= VALUE_ULP[np.dtype(dtype).name]
    tiny = float(np.finfo(dtype).tiny)
    exact_grad = np.array([float(e[1]) if v > 0 else -(tiny ** (q - 1.0)) for e, v in zip(exact, p)])
    exact_grad = np.clip(exact_grad, -float(np.finfo(dtype).max), 0)
    np.testing.assert_allclose(grad[:, 0], exact_grad, rtol=GRAD_RTOL[np.dtype(dtype).name])


@pytest.mark.parametrize("mode", MODES)
def test_gradient_with_respect_to_a_tensor_q(mode):
    p = np.array([[0.3, 0.7], [0.0, 1.0], [1.0, 0.0]], "float64")
    q = tf.constant(0.4, tf.float64)

    def step(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            loss = tf.reduce_sum(gce([0, 0, 0], p, q))
        return loss, tape.gradient(loss, q)

    loss, dq = _run(mode, step, q)
    mq = MP.mpf(0.4)
    exact = MP.diff(lambda t: (1 - MP.mpf(0.3) ** t) / t + 1 / t, mq)
    # p = 0 contributes d(1/q)/dq = -1/q**2 (the clamp's c**q log c is below 1e-300); p = 1 nothing.
    np.testing.assert_allclose(float(dq), float(exact), rtol=1e-12)
    assert float(loss) == pytest.approx((1 - 0.3 ** 0.4) / 0.4 + 2.5, rel=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_second_derivatives_are_finite(mode):
    p = tf.constant([[0.0, 1.0], [0.3, 0.7], [1e-30, 1.0]], tf.float32)

    def hessian_diagonal(p):
        with tf.GradientTape() as outer:
            outer.watch(p)
            with tf.GradientTape() as inner:
                inner.watch(p)
                loss = tf.reduce_sum(gce([0, 0, 0], p, 0.5))
            g = inner.gradient(loss, p)
        return outer.gradient(g, p)

    h = _run(mode, hessian_diagonal, p).numpy()
    assert np.all(np.isfinite(h))
    np.testing.assert_allclose(h[1, 0], 0.5 * 0.3 ** -1.5, rtol=1e-5)   # -(q - 1) p**(q - 2)


# ----------------------------------------------------------------------------
# NaN, bad input and modes.


@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_from_the_labelled_probability_and_from_q(mode):
    p = tf.constant([[np.nan, 0.5], [0.5, np.nan]])
    value, grad = value_and_grad(lambda p: gce([0, 0], p, 0.5), p, mode)
    assert np.isnan(value[0]) and np.isnan(grad[0, 0])
    # A NaN at an unlabelled class does not enter the loss (Keras: NaN * 0 makes the row NaN).
    assert value[1] == pytest.approx(2 - 2 * np.sqrt(0.5)) and grad[1, 1] == 0.0
    if mode != "xla":
        safeops.set_validation(False)
        try:
            assert np.isnan(_run(mode, lambda q: gce([0], [[0.5, 0.5]], q), tf.constant(np.nan)).numpy()[0])
        finally:
            safeops.set_validation(True)


@pytest.mark.parametrize("q", [0.0, -0.5, float("nan"), float("inf"), np.float32(-1.0)])
def test_a_bad_number_q_is_refused_naming_it(q):
    with pytest.raises(ValueError, match=r"cross_entropy: q must be a finite number > 0, got"):
        gce([0], [[1.0]], q)


@pytest.mark.parametrize("q", ["0.5", True, None, [0.5]])
def test_a_q_that_is_no_number_is_refused_naming_it(q):
    with pytest.raises(TypeError, match=r": q must be a number or a numeric tensor"):
        gce([0], [[1.0]], q)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5, "a", None])
def test_the_class_takes_q_in_the_open_unit_interval_as_keras(q):
    with pytest.raises(ValueError, match=r"q must be a number in the interval \(0, 1\)"):
        GCE(q=q)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_a_bad_tensor_q_fails_when_the_graph_runs(mode):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"q must be finite and > 0"):
        _run(mode, lambda q: gce([0], [[0.5, 0.5]], q), tf.constant(-0.5))


def test_a_bad_tensor_q_is_nan_under_xla():
    value = _run("xla", lambda q: gce([0, 1], [[0.5, 0.5], [0.2, 0.8]], q), tf.constant(0.0)).numpy()
    assert np.all(np.isnan(value))


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_a_label_out_of_range_is_refused_naming_y_true(mode, from_logits):
    """Keras returns 1/q for it (a one-hot row of zeros)."""
    keras_value = keras.losses.categorical_generalized_cross_entropy(
        tf.constant([3]), tf.constant([[0.5, 0.5]]), 0.5)
    assert float(keras_value[0]) == 2.0
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_true must be in \[0, 2\)\. Received a label "
                                                             r"value of\W+3"):
        _run(mode, lambda p: gce(tf.constant([0, 3]), p, 0.5, from_logits=from_logits),
             tf.constant([[0.5, 0.5], [0.5, 0.5]]))


@pytest.mark.parametrize("from_logits", [False, True])
def test_a_label_out_of_range_is_nan_under_xla(from_logits):
    value = _run("xla", lambda p: gce(tf.constant([0, -1]), p, 0.5, from_logits=from_logits),
                 tf.constant([[0.5, 0.5], [0.5, 0.5]])).numpy()
    assert np.isfinite(value[0]) and np.isnan(value[1])


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_probabilities_outside_the_unit_interval_are_refused(mode):
    expected = r"y_pred must be probabilities in \[0, 1\] \(pass from_logits=True for logits\)"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        _run(mode, lambda p: gce([0], p, 0.5), tf.constant([[1.5, -0.5]]))
    safeops.set_validation(False)
    try:
        assert np.isfinite(_run(mode, lambda p: gce([1], p, 0.5), tf.constant([[1.5, 0.5]])).numpy()).all()
    finally:
        safeops.set_validation(True)


def test_bad_operands_are_refused_naming_them():
    with pytest.raises(TypeError, match=r"y_pred must be"):
        gce([0], [[1, 0]], 0.5)
    with pytest.raises(TypeError, match=r"y_true must be integer class indices"):
        gce(["a"], [[1.0, 0.0]], 0.5)
    with pytest.raises(ValueError, match=r"y_true and y_pred must be shapes"):
        gce([0, 1, 0], [[1.0, 0.0], [0.0, 1.0]], 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_has_the_dtype_of_y_pred_and_is_rounded_once(dtype):
    """float16, bfloat16 and float32 round a float64 value once; float64 is within C3 of mpmath."""
    p = tf.constant([[0.25, 0.75], [0.9, 0.1]], dtype)
    value = gce([1, 0], p, 0.3)
    assert value.dtype == dtype
    p64 = tf.cast(p, tf.float64).numpy()
    if dtype != tf.float64:
        exact = (1 - np.array([p64[0, 1], p64[1, 0]]) ** 0.3) / 0.3
        np.testing.assert_array_equal(value.numpy(), tf.cast(exact, dtype).numpy())
    else:
        exact = np.array([float(_exact(p64[0, 1], 0.3)[0]), float(_exact(p64[1, 0], 0.3)[0])])
        assert np.max(ulp_distance(value.numpy(), exact, np.float64)) <= VALUE_ULP["float64"]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_through_a_confidently_wrong_label_keeps_the_weights_finite(jit_compile):
    """One SGD step on a softmax head sure (logit gap 120) that the first example's label is wrong.

    Keras' loss makes the step's gradient NaN, and every weight with it.
    """
    x = np.array([[1.0, 1.0], [0.01, 0.0], [0.0, 0.01], [0.01, 0.01]], "float32")
    y = np.array([0, 1, 1, 1])
    weights = []
    for loss in (keras.losses.CategoricalGeneralizedCrossEntropy(q=0.7), GCE(q=0.7)):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
        model.layers[0].set_weights([np.array([[0.0, 60.0, 0.0], [0.0, 60.0, 0.0]], "float32"),
                                     np.zeros(3, "float32")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=jit_compile)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        weights.append(model.layers[0].get_weights()[0])
    assert np.all(np.isnan(weights[0]))
    assert np.all(np.isfinite(weights[1]))
    # The wrong label's pull is p**q (softmax - onehot) ~ 1e-37; the other examples' move the weights.
    assert not np.array_equal(weights[1], [[0.0, 60.0, 0.0], [0.0, 60.0, 0.0]])

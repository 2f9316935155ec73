"""The custom-loss helper (loss_class, LossFunctionWrapper) and its two worked examples."""

from __future__ import annotations

import functools
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops import losses


def mean_abs_log_error(y_true, y_pred, scale=1.0):
    """A small custom loss for the tests."""
    return scale * tf.reduce_mean(tf.abs(tfm.log(y_pred) - tfm.log(y_true)), -1)


MeanAbsLogError = losses.loss_class(mean_abs_log_error, package="safeops_tests")


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(5)
    y = rng.uniform(0.1, 2.0, size=(6, 3)).astype("float32")
    p = rng.uniform(0.1, 2.0, size=(6, 3)).astype("float32")
    w = rng.uniform(0.0, 1.0, size=(6,)).astype("float32")
    return y, p, w


def test_loss_class_builds_a_registered_keras_loss():
    loss = MeanAbsLogError(scale=2.0)
    assert isinstance(loss, keras.losses.Loss) and isinstance(loss, losses.LossFunctionWrapper)
    assert loss.name == "mean_abs_log_error" and loss.reduction == "sum_over_batch_size"
    assert keras.saving.get_registered_name(MeanAbsLogError) == "safeops_tests>MeanAbsLogError"
    config = loss.get_config()
    assert config["scale"] == 2.0 and config["check_finite"] is False
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(again) is MeanAbsLogError and again.get_config() == config
    assert "A small custom loss" in MeanAbsLogError.__doc__


def test_loss_class_as_a_decorator(batch):
    y, p, _ = batch

    @losses.loss_class(package="safeops_tests", name="DecoratedLogError")
    def decorated(y_true, y_pred, scale=1.0):
        return mean_abs_log_error(y_true, y_pred, scale)

    @losses.loss_class
    def bare_log_error(y_true, y_pred, scale=1.0):
        return mean_abs_log_error(y_true, y_pred, scale)

    assert keras.saving.get_registered_name(decorated) == "safeops_tests>DecoratedLogError"
    assert bare_log_error.__name__ == "BareLogError"
    expected = MeanAbsLogError(scale=3.0)(y, p)
    for cls in (decorated, bare_log_error):
        np.testing.assert_array_equal(cls(scale=3.0)(y, p), expected)


def test_loss_class_refuses_a_function_that_cannot_take_y_true_and_y_pred():
    """C7: the class was built and failed at its first call with a bare TypeError."""
    expected = r"loss_class: fn must be a callable fn\(y_true, y_pred, \*\*options\), got <lambda>\(y\)"
    with pytest.raises(TypeError, match=expected):
        losses.loss_class(lambda y: y, package="safeops_tests")
    with pytest.raises(TypeError, match=r"got keyword_only\(y_true, \*, y_pred\)"):
        def keyword_only(y_true, *, y_pred):
            return y_pred
        losses.loss_class(keyword_only, package="safeops_tests")


def test_loss_class_of_a_partial_takes_its_function_name(batch):
    """A functools.partial has no __name__ (AttributeError before); its options keep the partial's values."""
    y, p, _ = batch
    cls = losses.loss_class(functools.partial(mean_abs_log_error, scale=3.0), package="safeops_tests",
                            name="PartialLogError")
    loss = cls()
    assert loss.name == "mean_abs_log_error" and loss.get_config()["scale"] == 3.0
    np.testing.assert_array_equal(loss(y, p), MeanAbsLogError(scale=3.0)(y, p))


def test_saving_a_wrapper_of_an_unregistered_function_warns_once():
    """Such a model saves silently but does not load without custom_objects."""
    def unregistered_loss(y_true, y_pred):
        return tf.reduce_mean(tf.square(y_true - y_pred), -1)

    loss = losses.LossFunctionWrapper(unregistered_loss)
    with pytest.warns(UserWarning, match="'unregistered_loss' is not registered") as record:
        loss.get_config()
        loss.get_config()
    assert len([r for r in record if "is not registered" in str(r.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses.LossFunctionWrapper(losses.binary_crossentropy).get_config()   # registered: silent


def test_readme_custom_loss_block_runs(tmp_path):
    """README's "Your own loss" block, as a user copies it, with a model to compile."""
    readme = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md")).read()
    block = readme.split("### Your own loss", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="sigmoid")])
    scope = {"model": model}
    exec(compile(block.replace('name="dice"', 'name="dice", package="safeops_readme"'), "README", "exec"),
         scope)
    y = np.random.default_rng(0).uniform(size=(8, 4)).astype("float32")
    history = model.fit(y, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    model.save(tmp_path / "dice.keras")
    assert type(keras.models.load_model(tmp_path / "dice.keras").loss).__name__ == "dice"


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None])
def test_reduction_and_sample_weight_match_keras_loss_semantics(batch, reduction):
    y, p, w = batch

    class KerasReference(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return mean_abs_log_error(y_true, y_pred, scale=3.0)

    ours, ref = MeanAbsLogError(reduction=reduction, scale=3.0), KerasReference(reduction=reduction)
    np.testing.assert_allclose(ours(y, p), ref(y, p), rtol=1e-6)
    np.testing.assert_allclose(ours(y, p, sample_weight=w), ref(y, p, sample_weight=w), rtol=1e-6)
    np.testing.assert_allclose(ours(y, p, sample_weight=w[:, None]), ref(y, p, sample_weight=w[:, None]),
                               rtol=1e-6)


def test_options_are_checked():
    with pytest.raises(TypeError, match="MeanAbsLogError: options must be among"):
        MeanAbsLogError(sclae=2.0)

    def needs_option(y_true, y_pred, margin):
        return y_pred

    with pytest.raises(TypeError, match="option 'margin'"):
        losses.loss_class(needs_option)
    with pytest.raises(TypeError, match="fn must be a callable"):
        losses.loss_class(3)


def test_half_precision_policies_compute_in_float32_and_round_once(batch):
    # Keras' loss returns its policy's compute dtype; safeops computes in
    # float32 and rounds the result once to it.
    y, p, _ = batch
    p16 = tf.constant(p, tf.float16)
    policies = (("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16"), ("float16", "float16"))
    for policy, result in policies:
        loss = MeanAbsLogError(dtype=policy)
        assert loss.dtype == "float32"
        value = loss(y, p16)
        assert value.dtype == result
        wide = MeanAbsLogError()(y, tf.cast(p16, tf.float32))
        assert wide.dtype == tf.float32
        np.testing.assert_array_equal(value.numpy(), tf.cast(wide, result).numpy())
        per_example = MeanAbsLogError(dtype=policy, reduction=None)(y, p16)
        assert per_example.dtype == result and per_example.shape == (len(p),)
    assert MeanAbsLogError(dtype="float64").dtype == "float64"


def test_check_finite_names_the_loss_in_eager_and_tf_function():
    def exploding(y_true, y_pred):
        return tf.reduce_sum(y_pred / y_true, -1)

    Exploding = losses.loss_class(exploding, package="safeops_tests", check_finite=True)
    loss = Exploding()
    assert loss.check_finite
    np.testing.assert_allclose(loss(np.array([[1.0, 2.0]]), np.array([[1.0, 1.0]])), 1.5)
    for run in (loss, tf.function(loss)):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"exploding \(Exploding\): per-example loss must be finite"):
            run(tf.constant([[0.0, 1.0]]), tf.constant([[1.0, 1.0]]))
    assert not Exploding(check_finite=False).check_finite
    assert np.isinf(Exploding(check_finite=False)(np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]])).numpy())


def test_check_finite_keeps_the_ignore_class_mask():
    labels, logits = np.array([0, -1, 1]), np.array([[1.0, 0.0], [5.0, 5.0], [0.0, 2.0]], "float32")
    plain = losses.SparseCategoricalCrossentropy(True, ignore_class=-1)
    checked = losses.SparseCategoricalCrossentropy(True, ignore_class=-1, check_finite=True)
    np.testing.assert_allclose(checked(labels, logits), plain(labels, logits), rtol=1e-6)
    np.testing.assert_allclose(plain(labels, logits), keras.losses.SparseCategoricalCrossentropy(
        True, ignore_class=-1)(labels, logits), rtol=1e-6)


def test_wrapper_with_a_registered_function_serialises():
    fn = keras.saving.register_keras_serializable(package="safeops_tests")(mean_abs_log_error)
    loss = losses.LossFunctionWrapper(fn, name="wrapped", scale=0.5)
    again = losses.LossFunctionWrapper.from_config(loss.get_config())
    assert again.fn is fn and again.get_config()["scale"] == 0.5
    np.testing.assert_allclose(again(np.array([[1.0]]), np.array([[np.e]])), 0.5, rtol=1e-6)


# ----------------------------------------------------------------------------
# Worked example 1: Tversky / Dice with safe division.


def test_tversky_matches_formula_and_dice_matches_keras():
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(4, 3, 3)) > 0.5).astype("float32")
    p = rng.uniform(size=(4, 3, 3)).astype("float32")
    tp = (y * p).sum((1, 2))
    fp = ((1 - y) * p).sum((1, 2))
    fn = (y * (1 - p)).sum((1, 2))
    np.testing.assert_allclose(losses.tversky_loss(y, p, alpha=0.3, beta=0.7),
                               1 - tp / (tp + 0.3 * fp + 0.7 * fn), rtol=1e-5)
    for i in range(4):
        np.testing.assert_allclose(losses.tversky_loss(y[i:i + 1], p[i:i + 1]),
                                   keras.losses.dice(y[i:i + 1], p[i:i + 1]), rtol=1e-4, atol=1e-5)


def test_tversky_empty_mask_and_prediction_is_perfect_not_nan():
    y, p = tf.zeros([2, 4]), tf.constant([[0.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(p)
        value = losses.tversky_loss(y, p)
    grad = tape.gradient(value, p).numpy()
    np.testing.assert_allclose(value, [0.0, 1.0])
    assert np.all(np.isfinite(grad)) and np.all(grad[0] == 0)
    naive = 1 - tf.reduce_sum(y * p, -1) / tf.reduce_sum(y * p + 0.5 * (1 - y) * p + 0.5 * y * (1 - p), -1)
    assert np.isnan(naive.numpy()[0])
    loss = losses.TverskyLoss(alpha=0.5, beta=0.5)
    np.testing.assert_allclose(loss(y, p), 0.5)
    assert loss.get_config()["alpha"] == 0.5


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
@pytest.mark.parametrize("shape", [(2, 512, 512), (2, 64, 64, 3)])
def test_tversky_over_whole_images_within_c3(shape, mode):
    """The soft counts are summed in float64: with float32 sums the loss over 512x512 pixels of two
    values was 107 ULP off under XLA and 16 in a graph. Reference: the float64 formula."""
    y = np.full(shape, 0.7, np.float32)
    p = np.full(shape, 0.6, np.float32)
    p.reshape(-1)[::5] = 0.2
    fn = losses.tversky_loss
    if mode != "eager":
        fn = tf.function(fn, jit_compile=mode == "jit")
    got = fn(tf.constant(y), tf.constant(p)).numpy().astype(np.float64)
    y64, p64 = y.astype(np.float64), p.astype(np.float64)
    axes = tuple(range(1, len(shape)))
    tp, fp, fn_ = ((y64 * p64).sum(axes), ((1 - y64) * p64).sum(axes), (y64 * (1 - p64)).sum(axes))
    want = (0.5 * fp + 0.5 * fn_) / (tp + 0.5 * fp + 0.5 * fn_)
    ulps = np.abs(got - want) / np.spacing(want.astype(np.float32))
    assert ulps.max() <= 4, ulps


# ----------------------------------------------------------------------------
# Worked example 2: InfoNCE on reduce_logsumexp.


def _naive_info_nce(e, temperature):
    a, b = np.split(e.astype(np.float64), 2, -1)
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    s = a @ b.T / temperature
    return np.logaddexp.reduce(s, -1) - np.diag(s)


def test_info_nce_matches_naive_and_stays_finite_where_naive_overflows():
    rng = np.random.default_rng(2)
    e = rng.normal(size=(5, 8)).astype("float32")
    np.testing.assert_allclose(losses.info_nce(None, e, temperature=0.5), _naive_info_nce(e, 0.5), rtol=1e-5)
    np.testing.assert_allclose(losses.info_nce(None, e, temperature=0.01), _naive_info_nce(e, 0.01),
                               rtol=1e-4, atol=1e-4)
    scores = np.float32(100.0 / 0.001)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.log(np.exp(np.float32(scores))))  # the naive exp overflows
    zero_row = np.concatenate([np.zeros((1, 8), "float32"), e[1:]])
    for dtype, temperature in ((tf.float32, 0.001), (tf.float16, 0.1)):
        x = tf.constant(zero_row, dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = losses.InfoNCE(temperature=temperature)(tf.zeros([5]), x)
        grad = tape.gradient(value, x)
        assert value.dtype == tf.float32 and np.isfinite(value.numpy())
        assert np.all(np.isfinite(grad.numpy().astype(np.float32))), dtype
    # The function on float16 (the class widens first): the float32 boundary
    # gradient at the zero embedding (5e6 here) overflowed float16 to inf.
    x = tf.constant(zero_row, tf.float16)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = tf.reduce_sum(losses.info_nce(None, x, temperature=0.1))
    grad = tape.gradient(value, x).numpy().astype(np.float32)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() == np.finfo(np.float16).max


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_a_float16_gradient_saturates_at_unit_scale_and_overflows_under_a_loss_scale(mode):
    """Saturated under a loss scale too, a loss-scale optimizer never saw the overflow that lowers it."""
    zero_row = np.concatenate([np.zeros((1, 8)), np.random.default_rng(2).normal(size=(4, 8))])
    x = tf.constant(zero_row, tf.float16)
    z = tf.constant([[-3.0, 0.5]], tf.float16)

    def body(x, z, scale):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, z])
            nce = losses.InfoNCE(temperature=0.1)(tf.zeros([5]), x) * scale
            # Logits recovered through the cast: their path does not pass the saturation at all.
            bce = losses.BinaryCrossentropy()(tf.ones([1, 2]), tf.sigmoid(z)) * scale
        return tape.gradient(nce, x), tape.gradient(bce, z)

    run = body if mode == "eager" else tf.function(body)
    unit, unit_z = (g.numpy().astype(np.float64) for g in run(x, z, 1.0))
    scaled, scaled_z = (g.numpy().astype(np.float64) for g in run(x, z, 1024.0))
    # The zero embedding's boundary gradient (5e6 in float32) saturates at unit scale (C1)...
    assert np.all(np.isfinite(unit)) and np.abs(unit).max() == np.finfo(np.float16).max
    # ...and overflows under a scale, where it is the scale's doing; the other entries are scaled.
    assert np.isinf(scaled).any()
    finite = np.isfinite(scaled) & (np.abs(unit) < np.finfo(np.float16).max / 1024)
    np.testing.assert_allclose(scaled[finite], 1024 * unit[finite], rtol=2e-3, atol=1e-3)
    # d/dz of the mean BCE at label 1: (sigmoid(z) - 1) / 2, exact through the logits at any scale.
    np.testing.assert_allclose(scaled_z, 1024 * unit_z, rtol=1e-3)
    np.testing.assert_allclose(unit_z, (1 / (1 + np.exp(-z.numpy().astype(np.float64))) - 1) / 2, rtol=2e-3)


def test_info_nce_class_config_round_trip():
    loss = losses.InfoNCE(temperature=0.2, reduction="sum")
    again = losses.InfoNCE.from_config(loss.get_config())
    assert again.get_config() == loss.get_config()
    assert keras.saving.get_registered_name(losses.InfoNCE) == "safeops>InfoNCE"


def test_info_nce_same_under_xla():
    e = tf.constant(np.random.default_rng(0).normal(size=(16, 6)).astype("float32"))
    fn = lambda e: losses.info_nce(None, e)  # noqa: E731
    np.testing.assert_allclose(tf.function(fn, jit_compile=True)(e), fn(e), rtol=1e-5)

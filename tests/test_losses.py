"""safeops.losses functions: Keras' signatures and values, the edges where Keras fails,
the logit-recovery rules per mode and precision, errors, and Hypothesis properties."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops
import safeops.math as tfm
from safeops import losses
from tests._modes import run as in_mode, value_and_grad

MODES = ["eager", "function", "xla"]
PAIRS = [
    ("binary_crossentropy", "BinaryCrossentropy"),
    ("categorical_crossentropy", "CategoricalCrossentropy"),
    ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy"),
    ("binary_focal_crossentropy", "BinaryFocalCrossentropy"),
    ("categorical_focal_crossentropy", "CategoricalFocalCrossentropy"),
    ("kl_divergence", "KLDivergence"),
    ("poisson", "Poisson"),
]
TINY32 = float(np.finfo(np.float32).tiny)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(8, 5)) * 3).astype("float32")
    soft = rng.uniform(0.05, 1, size=(8, 5)).astype("float32")
    soft /= soft.sum(-1, keepdims=True)
    onehot = np.eye(5, dtype="float32")[rng.integers(0, 5, 8)]
    binary = rng.integers(0, 2, size=(8, 5)).astype("float32")
    probs = rng.uniform(0.01, 0.99, size=(8, 5)).astype("float32")
    return dict(logits=logits, soft=soft, onehot=onehot, binary=binary, probs=probs,
                classes=np.argmax(onehot, -1).astype("int32"))


# ----------------------------------------------------------------------------
# Drop-in: Keras 3's names, arguments and defaults.


@pytest.mark.parametrize("function, cls", PAIRS)
def test_signatures_match_keras(function, cls):
    for name in (function, cls):
        ours = inspect.signature(getattr(losses, name))
        theirs = inspect.signature(getattr(keras.losses, name))
        positional = [p for p in ours.parameters.values() if p.kind != p.KEYWORD_ONLY]
        assert [(p.name, p.default) for p in positional] == [
            (p.name, p.default) for p in theirs.parameters.values()], name


@pytest.mark.parametrize("function, cls", PAIRS)
def test_classes_are_keras_losses_with_keras_config_keys(function, cls):
    ours, theirs = getattr(losses, cls)(), getattr(keras.losses, cls)()
    assert isinstance(ours, keras.losses.Loss)
    assert ours.name == theirs.name and ours.reduction == theirs.reduction
    assert set(theirs.get_config()) <= set(ours.get_config())


# Every Loss class with every argument away from its default.
_COMMON = dict(reduction="sum", dtype="float64", check_finite=True)
NON_DEFAULT = {
    "BinaryCrossentropy": dict(from_logits=True, label_smoothing=0.1, axis=0, name="bce", **_COMMON),
    "CategoricalCrossentropy": dict(from_logits=True, label_smoothing=0.2, axis=0, name="cce", **_COMMON),
    "SparseCategoricalCrossentropy": dict(from_logits=True, ignore_class=-1, axis=1, name="scce", **_COMMON),
    "BinaryFocalCrossentropy": dict(apply_class_balancing=True, alpha=0.4, gamma=3.0, from_logits=True,
                                    label_smoothing=0.1, axis=0, name="bfce", **_COMMON),
    "CategoricalFocalCrossentropy": dict(alpha=[0.1, 0.2, 0.7], gamma=1.0, from_logits=True,
                                         label_smoothing=0.1, axis=0, name="cfce", reduction=None,
                                         dtype="mixed_bfloat16", check_finite=True),
    "KLDivergence": dict(name="kl", **_COMMON),
    "Poisson": dict(name="p", reduction="mean_with_sample_weight", dtype="mixed_float16", check_finite=True),
    "GaussianNLL": dict(min_variance=1e-3, name="g", **_COMMON),
    "CategoricalGeneralizedCrossEntropy": dict(q=0.3, from_logits=True, name="gce", **_COMMON),
    "KLDivergenceWithLogits": dict(axis=0, name="kd", **_COMMON),
    "TverskyLoss": dict(alpha=0.3, beta=0.7, name="t", **_COMMON),
    "InfoNCE": dict(temperature=0.05, name="n", **_COMMON),
    "LossFunctionWrapper": dict(fn=losses.binary_crossentropy, label_smoothing=0.1, name="w", **_COMMON),
}


@pytest.mark.parametrize("cls", sorted(NON_DEFAULT))
def test_config_round_trips_every_argument(cls):
    """get_config/from_config, keras.losses.serialize and Keras' short dict all rebuild the same loss.

    Keras' own get_config has no dtype (nor axis, for the sparse loss), and
    get(dict) used to build Keras' class first: both were lost on the way.
    """
    arguments = NON_DEFAULT[cls]
    loss = getattr(losses, cls)(**arguments)
    config = loss.get_config()
    for key, value in arguments.items():
        if key != "fn":
            assert config[key] == value, key
    rebuilt = [
        type(loss).from_config(config),
        losses.get(keras.losses.serialize(loss)),
        keras.losses.deserialize(keras.losses.serialize(loss)),
        losses.get({"class_name": cls, "config": config}),
    ]
    for again in rebuilt:
        assert type(again) is type(loss)
        assert again.get_config() == config
        assert again.fn is loss.fn  # for the wrapper: safeops' binary_crossentropy, not Keras'


@pytest.mark.parametrize("alpha", [np.float32(0.3), np.array(0.3), np.array([0.2, 0.5, 0.3]),
                                   np.array([0.2, 0.5, 0.3], np.float16)])
def test_categorical_focal_takes_numpy_alpha_as_keras_does(alpha):
    """A numpy alpha once met ``shape.rank`` on a tuple (AttributeError); Keras takes it."""
    y, p = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], [[0.2, 0.7, 0.1], [0.5, 0.3, 0.2]]
    expected = keras.losses.CategoricalFocalCrossentropy(alpha=alpha)(y, p)
    np.testing.assert_allclose(losses.CategoricalFocalCrossentropy(alpha=alpha)(y, p), expected, rtol=1e-5)
    as_list = losses.categorical_focal_crossentropy(y, p, alpha=np.asarray(alpha).tolist())
    np.testing.assert_allclose(losses.categorical_focal_crossentropy(y, p, alpha=alpha), as_list, rtol=1e-6)


@pytest.mark.parametrize("identifier,expected", [
    ("categorical_crossentropy", "categorical_crossentropy"), ("kl_divergence", "kl_divergence"),
    ("CategoricalCrossentropy", "CategoricalCrossentropy"),
    ("BinaryFocalCrossentropy", "BinaryFocalCrossentropy"),
    ("gaussian_nll", "gaussian_nll"), ("GaussianNLL", "GaussianNLL"), ("safeops>GaussianNLL", "GaussianNLL"),
    ({"class_name": "BinaryCrossentropy", "config": {"from_logits": True}}, "BinaryCrossentropy"),
])
def test_deserialize_resolves_to_safeops_as_get_does(identifier, expected):
    """``losses.deserialize`` was Keras' own: a switched import still got Keras' clipped loss from it."""
    obj = losses.deserialize(identifier)
    if expected[0].islower():
        assert obj is getattr(losses, expected)
    else:
        assert type(obj) is getattr(losses, expected)
    if isinstance(identifier, dict):
        assert obj.get_config()["from_logits"] is True


def test_deserialize_leaves_the_rest_to_keras():
    assert losses.deserialize(None) is None
    assert losses.deserialize("mean_squared_error") is keras.losses.mean_squared_error
    assert type(losses.deserialize("MeanSquaredError")) is keras.losses.MeanSquaredError

    def mine(y_true, y_pred):
        return y_pred

    mapping = {"categorical_crossentropy": mine}
    assert losses.deserialize("categorical_crossentropy", custom_objects=mapping) is mine


def test_get_keeps_dtype_and_axis_of_a_keras_config():
    config = {"from_logits": True, "ignore_class": -1, "reduction": "sum", "name": "s", "dtype": "float64",
              "axis": 1}
    loss = losses.get({"class_name": "SparseCategoricalCrossentropy", "config": config})
    assert type(loss) is losses.SparseCategoricalCrossentropy
    assert {k: loss.get_config()[k] for k in config} == config
    labels, logits = np.array([[0, 2]]), np.array([[[3.0, 0.0], [0.0, 0.0], [-1.0, 2.0]]])
    assert loss(labels, logits).dtype == tf.float64
    expected = losses.sparse_categorical_crossentropy(labels, np.moveaxis(logits, 1, -1), from_logits=True)
    np.testing.assert_allclose(loss(labels, logits), np.sum(expected), rtol=1e-12)


# ----------------------------------------------------------------------------
# Same values as Keras where Keras is finite and its clip inactive.


def _keras_and_ours(name, y, p, **kw):
    return (getattr(keras.losses, name)(y, p, **kw).numpy(), getattr(losses, name)(y, p, **kw).numpy())


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_binary_crossentropy_equals_keras(data, from_logits, label_smoothing):
    p = data["logits"] if from_logits else data["probs"]
    k, o = _keras_and_ours("binary_crossentropy", data["binary"], p, from_logits=from_logits,
                           label_smoothing=label_smoothing)
    np.testing.assert_allclose(o, k, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("labels", ["onehot", "soft"])
def test_categorical_crossentropy_equals_keras(data, from_logits, labels):
    p = data["logits"] if from_logits else data["soft"]
    for smoothing in (0.0, 0.1):
        k, o = _keras_and_ours("categorical_crossentropy", data[labels], p, from_logits=from_logits,
                               label_smoothing=smoothing)
        np.testing.assert_allclose(o, k, rtol=1e-5, atol=1e-6)


def test_categorical_crossentropy_axis_0_equals_keras(data):
    k, o = _keras_and_ours("categorical_crossentropy", data["onehot"].T, data["logits"].T,
                           from_logits=True, axis=0)
    # Keras' float32 log-softmax is 1.006e-5 off (relative) in the first row, whose loss is
    # 0.0086: ours is the correctly rounded 0.008612072 (mpmath), and the last axis gives its bits.
    np.testing.assert_allclose(o, k, rtol=2e-5)
    last = losses.categorical_crossentropy(data["onehot"], data["logits"], from_logits=True).numpy()
    np.testing.assert_array_equal(o, last)


@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_categorical_crossentropy_equals_keras(data, from_logits):
    p = data["logits"] if from_logits else data["soft"]
    k, o = _keras_and_ours("sparse_categorical_crossentropy", data["classes"], p, from_logits=from_logits)
    np.testing.assert_allclose(o, k, rtol=1e-5, atol=1e-6)


def test_sparse_ignore_class_equals_keras_with_its_mask(data):
    labels = data["classes"].copy()
    labels[::3] = -1
    for reduction in ("sum_over_batch_size", "sum", None):
        k = keras.losses.SparseCategoricalCrossentropy(True, ignore_class=-1, reduction=reduction)
        o = losses.SparseCategoricalCrossentropy(True, ignore_class=-1, reduction=reduction)
        np.testing.assert_allclose(o(labels, data["logits"]), k(labels, data["logits"]), rtol=1e-5)


def test_sparse_class_axis_not_last(data):
    ours = losses.sparse_categorical_crossentropy(data["classes"], data["logits"].T, from_logits=True, axis=0)
    last = losses.sparse_categorical_crossentropy(data["classes"], data["logits"], from_logits=True)
    np.testing.assert_allclose(ours, last, rtol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("balancing", [False, True])
def test_binary_focal_equals_keras(data, from_logits, balancing):
    p = np.clip(data["logits"], -8, 8) if from_logits else data["probs"]
    for gamma, smoothing in ((2.0, 0.0), (0.5, 0.1), (0.0, 0.0)):
        k, o = _keras_and_ours("binary_focal_crossentropy", data["binary"], p, apply_class_balancing=balancing,
                               gamma=gamma, from_logits=from_logits, label_smoothing=smoothing)
        np.testing.assert_allclose(o, k, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
def test_categorical_focal_equals_keras(data, from_logits):
    p = np.clip(data["logits"], -6, 6) if from_logits else data["soft"]
    for alpha, gamma in ((0.25, 2.0), ([0.1, 0.2, 0.3, 0.2, 0.2], 1.0), (1.0, 0.0)):
        k, o = _keras_and_ours("categorical_focal_crossentropy", data["soft"], p, alpha=alpha, gamma=gamma,
                               from_logits=from_logits)
        np.testing.assert_allclose(o, k, rtol=2e-5, atol=1e-6)


def test_kl_divergence_and_poisson_equal_keras_away_from_epsilon(data):
    k, o = _keras_and_ours("kl_divergence", data["soft"], data["soft"][::-1])
    np.testing.assert_allclose(o, k, rtol=1e-4, atol=1e-5)
    counts = np.round(data["probs"] * 4)
    k, o = _keras_and_ours("poisson", counts, data["probs"] * 3)
    np.testing.assert_allclose(o, k, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None])
@pytest.mark.parametrize("function, cls", PAIRS)
def test_reduction_and_sample_weight_as_keras(data, function, cls, reduction):
    y, p = {
        "BinaryCrossentropy": (data["binary"], data["probs"]),
        "BinaryFocalCrossentropy": (data["binary"], data["probs"]),
        "SparseCategoricalCrossentropy": (data["classes"], data["soft"]),
        "Poisson": (np.round(data["probs"] * 3), data["probs"] + 0.5),
    }.get(cls, (data["soft"], data["soft"][::-1]))
    weights = np.linspace(0.0, 2.0, 8).astype("float32")
    k = getattr(keras.losses, cls)(reduction=reduction)
    o = getattr(losses, cls)(reduction=reduction)
    np.testing.assert_allclose(o(y, p), k(y, p), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(o(y, p, sample_weight=weights), k(y, p, sample_weight=weights), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Where Keras fails: exact values and live gradients.


def test_focal_with_logits_is_exact_where_keras_is_not():
    y, z = [[0.0, 1.0, 0.0, 0.0]], [[1e4, 0.0, -1e4, 0.0]]
    keras_value = float(keras.losses.categorical_focal_crossentropy(y, z, from_logits=True)[0])
    assert keras_value < 5.0  # measured 3.99-4.03: Keras' clip at 1e-7
    value, grad = value_and_grad(lambda z: losses.categorical_focal_crossentropy(y, z, from_logits=True), z)
    np.testing.assert_allclose(value, [2500.0], rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.25, -0.25, 0.0, 0.0]], atol=1e-6)
    value, grad = value_and_grad(lambda z: losses.binary_focal_crossentropy([[1.0]], z, from_logits=True),
                                  [[-1e4]])
    np.testing.assert_allclose(value, [1e4], rtol=1e-6)
    np.testing.assert_allclose(grad, [[-1.0]], atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_logit_paths_exact_at_huge_logits(mode):
    for name, y, z, exact in [
        ("binary_crossentropy", [[1.0]], [[-100.0]], 100.0),
        ("categorical_crossentropy", [[0.0, 1.0]], [[1e4, -1e4]], 2e4),
        ("sparse_categorical_crossentropy", [1], [[1e4, -1e4]], 2e4),
    ]:
        fn = getattr(losses, name)
        value, grad = value_and_grad(lambda z: fn(y, z, from_logits=True), z, mode)
        np.testing.assert_allclose(value, [exact], rtol=1e-6)
        assert np.all(np.isfinite(grad)) and np.abs(grad).max() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
@pytest.mark.parametrize("function, cls", PAIRS)
def test_probability_path_is_finite_with_live_gradient_at_saturation(function, cls, dtype):
    """C4: at probabilities 0 and 1 (and rates 0) the gradient is finite and nonzero, in every dtype."""
    fn = getattr(losses, function)
    if function == "sparse_categorical_crossentropy":
        y, p = [0, 1], [[0.0, 1.0], [1.0, 0.0]]
    elif function == "poisson":
        y, p = [[1.0, 3.0]], [[0.0, 0.0]]
    elif function.startswith("binary"):
        y, p = [[1.0, 0.0, 1.0, 0.0]], [[0.0, 1.0, 1.0, 0.0]]
    else:
        y, p = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]
    y = np.asarray(y)
    value, grad = value_and_grad(lambda p: fn(y, p), tf.constant(p, dtype))
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (value, grad)
    assert np.any(grad != 0)
    if function in ("sparse_categorical_crossentropy", "binary_focal_crossentropy",
                    "categorical_focal_crossentropy"):
        return
    y, p = np.asarray(y, "float32"), np.asarray(p, "float32")
    # Where the loss still depends on the probability and the prediction is
    # wrong, the gradient must be live; Keras' clip makes it exactly 0 there.
    live = (y != p) if function in ("binary_crossentropy", "poisson") else (y > 0) & (p == 0)
    assert np.all(grad[live] != 0), grad
    if function != "poisson":
        keras_grad = value_and_grad(lambda p: getattr(keras.losses, function)(y, p), p)[1]
        assert np.any(keras_grad[live] == 0) or not np.all(np.isfinite(keras_grad))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_zeros_at_unlabelled_classes_leave_the_normaliser(dtype, mode):
    """A float16 softmax that underflowed to exact zeros: each unlabelled 0 was clamped at
    float16's smallest normal (6.1e-5) inside the normaliser, and the loss 1.7e-4 came out
    3.5e-4. Now within 1 ULP of -log(p_k / sum p); a row of zeros stays uniform (log 3)."""
    probs = np.array([[0.0, 0.0, 1.687e-4, 0.9998, 0.0], [0.0, 1.234e-4, 0.9998, 0.0, 0.0]])
    p = tf.constant(probs, dtype)
    labels = np.array([3, 2])
    onehot = tf.constant(np.eye(5)[labels], tf.float32)
    fns = [lambda p: losses.categorical_crossentropy(onehot, p),
           lambda p: losses.sparse_categorical_crossentropy(tf.constant(labels), p),
           lambda p: losses.categorical_focal_crossentropy(onehot, p, alpha=1.0, gamma=0.0),
           lambda p: losses.categorical_focal_crossentropy(onehot, p, alpha=tf.constant(1.0), gamma=0.0)]
    rounded = p.numpy().astype(np.float64)
    exact = -np.log(rounded[[0, 1], labels] / rounded.sum(-1))
    ulp = np.spacing(exact.astype(dtype.as_numpy_dtype)).astype(np.float64)
    for fn in fns:
        got = in_mode(mode, fn)(p).numpy().astype(np.float64)
        np.testing.assert_array_less(np.abs(got - exact), ulp * 1.01)
    zeros = tf.zeros([1, 3], dtype)
    uniform = in_mode(mode, lambda p: losses.categorical_crossentropy([[0.0, 1.0, 0.0]], p))(zeros)
    assert float(uniform[0]) == pytest.approx(np.log(3), rel=1e-2)


def test_probability_path_values_at_the_clamp():
    y, p = [[1.0, 0.0]], [[0.0, 1.0]]
    value, grad = value_and_grad(lambda p: losses.binary_crossentropy(y, p), p)
    log_tiny, log_half_eps = -np.log(TINY32), -np.log(np.finfo(np.float32).eps / 2)
    np.testing.assert_allclose(value, [(log_tiny + log_half_eps) / 2], rtol=1e-6)
    np.testing.assert_allclose(grad, [[-0.5 / TINY32, 0.5 * 2 / np.finfo(np.float32).eps]], rtol=1e-5)
    assert float(losses.binary_crossentropy([[1.0]], tf.constant([[0.0]], tf.float16))[0]) == pytest.approx(
        -np.log(np.finfo(np.float16).tiny), rel=1e-3)


def test_nan_propagates():
    for name, y, p in [("binary_crossentropy", [[1.0]], [[np.nan]]),
                       ("categorical_crossentropy", [[1.0, 0.0]], [[np.nan, 0.5]]),
                       ("kl_divergence", [[1.0, 0.0]], [[np.nan, 0.5]]),
                       ("poisson", [[1.0]], [[np.nan]])]:
        assert np.isnan(getattr(losses, name)(y, np.asarray(p, "float32")).numpy()).all(), name


# ----------------------------------------------------------------------------
# Logit recovery: which path, per mode and precision (see _probabilities).


def _bce_from(activation, dtype, mode):
    """Loss and d loss / d logits for label 1 at logit -100 through ``activation`` in ``dtype``."""

    def loss(z):
        return losses.binary_crossentropy([[1.0]], activation(tf.cast(z, dtype)))

    return value_and_grad(loss, tf.constant([[-100.0]]), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_keras_activation_outputs_are_recovered_in_every_mode_and_precision(mode, dtype):
    value, grad = _bce_from(keras.activations.sigmoid, dtype, mode)
    np.testing.assert_allclose(value, [100.0], rtol=1e-2)
    np.testing.assert_allclose(grad, [[-1.0]], rtol=1e-2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float16, tf.float32])
def test_with_logits_record_is_recovered_in_every_mode(mode, dtype):
    value, grad = _bce_from(lambda z: losses.with_logits(tfm.sigmoid(z), z, "sigmoid"), dtype, mode)
    np.testing.assert_allclose(value, [100.0], rtol=1e-2)
    np.testing.assert_allclose(grad, [[-1.0]], rtol=1e-2)


@pytest.mark.parametrize("dtype", [tf.float16, tf.float32])
def test_raw_tf_sigmoid_recovered_in_graphs_clamped_in_eager(dtype):
    for mode in ("function", "xla"):
        value, _ = _bce_from(tf.sigmoid, dtype, mode)
        np.testing.assert_allclose(value, [100.0], rtol=1e-3)
    # Eager: no op, no attribute. The clamped log of the dtype: finite value,
    # finite nonzero gradient with respect to the probability.
    p = tf.sigmoid(tf.constant([[-100.0]], dtype))
    value, grad = value_and_grad(lambda p: losses.binary_crossentropy([[1.0]], p), p)
    tiny = float(np.finfo(dtype.as_numpy_dtype).tiny)
    np.testing.assert_allclose(value, [-np.log(tiny)], rtol=1e-3)
    assert np.isfinite(grad).all() and grad[0, 0] < 0


@pytest.mark.parametrize("mode", MODES)
def test_safeops_math_outputs_carry_their_logits_and_plain_probabilities_are_clamped(mode):
    """safeops' own softmax and sigmoid outputs were scored as probabilities, even in a graph."""
    z = tf.constant([[-200.0, 0.0]])
    value, grad = value_and_grad(lambda z: losses.categorical_crossentropy([[1.0, 0.0]], tfm.softmax(z)), z,
                                  mode)
    np.testing.assert_allclose(value, [200.0], rtol=1e-6)
    np.testing.assert_allclose(grad, [[-1.0, 1.0]], rtol=1e-6)
    value, grad = value_and_grad(lambda z: losses.binary_crossentropy([[1.0, 0.0]], tfm.sigmoid(z)), z,
                                  mode)
    np.testing.assert_allclose(value, [(200.0 + np.log(2.0)) / 2], rtol=1e-6)
    np.testing.assert_allclose(grad, [[-0.5, 0.25]], rtol=1e-6)
    # Probabilities given as a function's argument carry no logits: the clamped log, live gradient.
    p = tfm.softmax(z)
    value, grad = value_and_grad(lambda p: losses.categorical_crossentropy([[1.0, 0.0]], p),
                                  tf.identity(p), mode)
    np.testing.assert_allclose(value, [-np.log(TINY32)], rtol=1e-5)
    assert np.isfinite(grad).all() and grad[0, 0] < 0


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_float16_output_cast_by_the_caller_is_recovered_in_graphs(mode):
    def loss(z):
        p = tf.cast(tf.sigmoid(tf.cast(z, tf.float16)), tf.float32)
        return losses.binary_crossentropy([[1.0]], p)

    value, grad = value_and_grad(loss, tf.constant([[-100.0]]), mode)
    np.testing.assert_allclose(value, [100.0], rtol=1e-3)
    np.testing.assert_allclose(grad, [[-1.0]], rtol=1e-3)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_loss_class_keeps_float16_logits_that_keras_loses(mode):
    y = tf.constant([[1.0]])

    def run(loss):
        return value_and_grad(lambda z: loss(y, keras.activations.sigmoid(tf.cast(z, tf.float16))),
                               tf.constant([[-100.0]]), mode)

    value, grad = run(losses.BinaryCrossentropy())
    np.testing.assert_allclose(value, 100.0, rtol=1e-3)
    np.testing.assert_allclose(grad, [[-1.0]], rtol=1e-3)
    keras_value, keras_grad = run(keras.losses.BinaryCrossentropy())
    assert keras_value < 20 and keras_grad[0, 0] == 0  # measured: 16.1, gradient 0


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("name, y, p, scale", [
    ("BinaryCrossentropy", 0.3, 0.2, 1e5), ("BinaryCrossentropy", 0.3, 0.2, 6e4),
    ("Poisson", 2.0, 0.9, 32768.0), ("Poisson", 1.0, 0.5, 5e4)])
def test_float16_predictions_under_loss_scaling_keep_their_gradient(name, y, p, scale, mode):
    """A loss-scale optimizer's scaled gradient: each entry's terms are summed before float16.

    Each term's gradient was rounded to float16 on its own and overflowed or
    saturated where the exact sum fits: BinaryCrossentropy gave 0 or NaN,
    Poisson -3.27e4 (exact -4.0e4) and, at larger scales, the wrong sign.
    """
    exact = {"BinaryCrossentropy": -(y / p - (1 - y) / (1 - p)), "Poisson": 1 - y / p}[name] * scale
    assert abs(exact) < 65504
    pred = tf.constant([[p]], tf.float16)
    candidates = [getattr(losses, name)()]          # the class computes and returns float32
    if scale < 65504:   # the function returns float16: a larger scale makes its own gradient inf
        candidates.append(getattr(losses, {"BinaryCrossentropy": "binary_crossentropy",
                                           "Poisson": "poisson"}[name]))
    for loss in candidates:
        def grad(pred, loss=loss):
            with tf.GradientTape() as tape:
                tape.watch(pred)
                value = tf.cast(tf.reduce_sum(loss(tf.constant([[y]]), pred)), tf.float32) * scale
            return tape.gradient(value, pred)

        got = float(in_mode(mode, grad)(pred)[0, 0])
        assert got == pytest.approx(exact, rel=2e-3), (loss, got, exact)


def test_softmax_logits_are_not_taken_for_sigmoid_logits():
    """Keras scores a softmax output given to binary_crossentropy with the softmax logits."""
    y = tf.constant([[1.0, 0.0]])
    p = keras.activations.softmax(tf.constant([[3.0, -2.0]]))
    exact = -np.mean(np.log([p.numpy()[0, 0], 1 - p.numpy()[0, 1]]))
    np.testing.assert_allclose(losses.binary_crossentropy(y, p), [exact], rtol=1e-5)
    assert abs(float(keras.losses.binary_crossentropy(y, p)[0]) - exact) > 0.05


def test_softmax_recovery_requires_the_loss_axis():
    z = tf.constant([[1e3, 0.0], [0.0, 0.0]])

    @tf.function
    def along(axis):
        return losses.categorical_crossentropy(tf.eye(2), tf.nn.softmax(z), axis=axis)

    np.testing.assert_allclose(along(-1), [0.0, np.log(2.0)], atol=1e-6)
    # axis 0 is not the softmax's axis: probabilities, clamped and normalised.
    expected = losses.categorical_crossentropy(tf.eye(2), tf.nn.softmax(z).numpy(), axis=0)
    np.testing.assert_allclose(along(0), expected, rtol=1e-6)


def test_with_logits_rejects_bad_arguments():
    p = tf.zeros([2])
    with pytest.raises(ValueError, match="activation"):
        losses.with_logits(p, p, "tanh")
    with pytest.raises(ValueError, match="logits"):
        losses.with_logits(p, tf.zeros([3]), "sigmoid")
    # The record is an attribute of the tensor object itself (was AttributeError on None's shape).
    with pytest.raises(TypeError, match="with_logits: probabilities must be a tf.Tensor, got ndarray"):
        losses.with_logits(np.zeros([2], "float32"), p, "sigmoid")
    with pytest.raises(TypeError, match="with_logits: logits must be a tf.Tensor, got NoneType"):
        losses.with_logits(p, None, "sigmoid")
    with pytest.raises(ValueError, match="with_logits: axis must be in"):
        losses.with_logits(p, p, "softmax", axis=3)


# ----------------------------------------------------------------------------
# Errors (C7).


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy",
                                  "sparse_categorical_crossentropy", "binary_focal_crossentropy",
                                  "categorical_focal_crossentropy", "kl_divergence",
                                  "kl_divergence_with_logits", "poisson", "gaussian_nll", "tversky_loss"])
@pytest.mark.parametrize("y_true", [None, [[0.0], [1.0, 0.0]]], ids=["none", "ragged"])
def test_labels_that_do_not_convert_raise_type_error_naming_y_true(name, y_true):
    """C7: it was TensorFlow's 'Attempt to convert a value (None) with an unsupported type', unnamed."""
    y_pred = tf.constant([[0.25, 0.75], [0.5, 0.5]])
    with pytest.raises(TypeError, match=rf"safeops.losses.{name}: y_true must be .*, got (NoneType|list)"):
        getattr(losses, name)(y_true, y_pred)


@pytest.mark.parametrize("from_logits", [False, True])
def test_sparse_crossentropy_over_zero_classes_names_y_pred(from_logits):
    """C7: no label indexes an empty class axis; it was the label check's 'y_true must be in [0, 0)'."""
    with pytest.raises(ValueError, match=r"sparse_categorical_crossentropy: y_pred must have at least one "
                                         r"class .*, got shape \(3, 0\)"):
        losses.sparse_categorical_crossentropy(tf.zeros([3], tf.int32), tf.zeros([3, 0]),
                                               from_logits=from_logits)


def test_sparse_crossentropy_of_unknown_rank_in_a_function():
    """It raised TypeError (int % None) while tracing; axis -1 needs no rank, another axis says so."""
    spec = [tf.TensorSpec(None, tf.int32), tf.TensorSpec(None, tf.float32)]
    last = tf.function(lambda y, p: losses.sparse_categorical_crossentropy(y, p), input_signature=spec)
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    labels = np.array([1, 0], np.int32)
    np.testing.assert_allclose(last(labels, probabilities), -np.log([0.8, 0.6]), rtol=1e-6)
    first = tf.function(lambda y, p: losses.sparse_categorical_crossentropy(y, p, axis=0),
                        input_signature=spec)
    with pytest.raises(ValueError, match="y_pred must be a tensor of known rank for axis=0"):
        first(labels, probabilities)


_BROADCAST_CLASSES = {"categorical_focal_crossentropy": "CategoricalFocalCrossentropy",
                      "kl_divergence": "KLDivergence", "poisson": "Poisson"}


@pytest.mark.parametrize("name", sorted(_BROADCAST_CLASSES))
@pytest.mark.parametrize("shapes", [((1, 4), (3, 4)), ((3, 4), (1, 4)), ((3, 4), (3, 1)), ((1, 4), (3, 1)),
                                    ((2, 3, 4), (3, 4)), ((3, 4), (2, 1, 4))], ids=str)
def test_operands_broadcast_against_each_other_as_in_keras(name, shapes):
    """C5: Keras broadcasts both operands of these three losses (not of the cross-entropies).

    Only a label row against a batch was taken before; a prediction row or a
    ``[b, 1]`` rate against a batch of labels raised "must have the same shape".
    """
    rng = np.random.default_rng(3)
    y_true, y_pred = (rng.uniform(0.05, 1.0, shape).astype(np.float32) for shape in shapes)
    y_true, y_pred = y_true / y_true.sum(-1, keepdims=True), y_pred / y_pred.sum(-1, keepdims=True)
    fn, cls = getattr(losses, name), getattr(losses, _BROADCAST_CLASSES[name])()
    if name == "categorical_focal_crossentropy" and shapes[1][-1] == 1:
        # Keras normalises the single class to 1 before broadcasting it (and warns that
        # one class is a misuse): refused, naming y_pred.
        with pytest.raises(ValueError, match=rf"{name}: y_pred must have more than one class along axis -1"):
            fn(y_true, y_pred)
        return
    expected = getattr(keras.losses, name)(y_true, y_pred)
    np.testing.assert_allclose(fn(y_true, y_pred), expected, rtol=2e-6)
    np.testing.assert_allclose(tf.function(fn)(y_true, y_pred), expected, rtol=2e-6)
    np.testing.assert_allclose(cls(y_true, y_pred), getattr(keras.losses, _BROADCAST_CLASSES[name])()(
        y_true, y_pred), rtol=2e-6)
    p = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(p)
        loss = tf.reduce_sum(fn(y_true, p))
    grad = tape.gradient(loss, p)
    assert grad.shape == p.shape and np.isfinite(grad.numpy()).all()


@pytest.mark.parametrize("name", sorted(_BROADCAST_CLASSES))
def test_operands_that_do_not_broadcast_are_refused_naming_both(name):
    y_pred = np.full([3, 4], 0.25, np.float32)
    with pytest.raises(ValueError, match=rf"{name}: y_true and y_pred must have the same shape"):
        getattr(losses, name)(np.ones([3, 3], np.float32), y_pred)
    with pytest.raises(ValueError, match=rf"{name}: y_true and y_pred must have the same shape"):
        getattr(losses, name)(np.ones([2, 4], np.float32), y_pred)


def test_focal_loss_with_a_non_negative_axis_refuses_a_rank_change():
    """A leading dimension added to y_pred would move axis=1 onto another dimension."""
    with pytest.raises(ValueError, match="y_true and y_pred must have the same rank for axis=1"):
        losses.categorical_focal_crossentropy(np.full([2, 3, 4], 0.25, np.float32),
                                              np.full([3, 4], 0.25, np.float32), axis=1)


def test_recovered_logits_follow_a_broadcast_prediction_row():
    """A softmax row broadcast over a batch of labels keeps its logits (exact where p underflowed)."""
    logits = tf.constant([[0.0, -200.0]])
    y_true = tf.constant([[0.5, 0.5], [1.0, 0.0]])
    got = losses.kl_divergence(y_true, losses.with_logits(tf.nn.softmax(logits), logits, "softmax")).numpy()
    # Row 0: 0.5 log(0.5) * 2 - 0.5 (0 - 200) = 100 - log 2, from the logits (p underflowed to 0).
    np.testing.assert_allclose(got, [100.0 - np.log(2.0), 0.0], rtol=1e-6, atol=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="binary_crossentropy: y_pred"):
        losses.binary_crossentropy([[1.0]], tf.constant([[1]]))
    with pytest.raises(ValueError, match="y_true and y_pred"):
        losses.categorical_crossentropy(tf.zeros([2, 3]), tf.zeros([2, 4]))
    # Keras' wording is kept, for code (and Keras' own tests) matching it.
    with pytest.raises(ValueError, match=r"must have the same shape, got \(3, 1\) and \(3, 3\)"):
        losses.BinaryCrossentropy()(tf.zeros([3, 1]), tf.zeros([3, 3]))
    with pytest.raises(TypeError, match="axis"):
        losses.binary_crossentropy([[1.0]], [[0.5]], axis=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_pred must be probabilities in"):
        losses.binary_crossentropy([[1.0]], [[1.5]])
    for from_logits in (False, True):
        message = (r"^safeops.losses.sparse_categorical_crossentropy: "
                   r"y_true must be in \[0, 2\)\. Received a label value of 3$")
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            losses.sparse_categorical_crossentropy([3], [[0.5, 0.5]], from_logits=from_logits)
    with pytest.raises(ValueError, match=r"sparse_categorical_crossentropy: y_true and y_pred must be"):
        losses.sparse_categorical_crossentropy([1, 0, 1], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_pred must be non-negative"):
        losses.poisson([[1.0]], [[-1.0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true must be probabilities"):
        losses.kl_divergence([[2.0, 0.0]], [[0.5, 0.5]])


def test_probability_check_runs_in_tf_function_and_can_be_turned_off():
    fn = tf.function(lambda p: losses.categorical_crossentropy([[1.0, 0.0]], p))
    with pytest.raises(tf.errors.InvalidArgumentError, match="categorical_crossentropy: y_pred"):
        fn(tf.constant([[-0.5, 0.5]]))
    safeops.set_validation(False)
    try:
        assert losses.categorical_crossentropy([[1.0, 0.0]], [[-0.5, 0.5]]).shape == (1,)
    finally:
        safeops.set_validation(True)


_OUT_OF_RANGE = [
    ("categorical_crossentropy", [[1.0, 0.0, 0.0]], [[2.0, -1.0, 0.5]], [0, 1]),
    ("sparse_categorical_crossentropy", [0], [[2.0, -1.0, 0.5]], [0, 1]),
    ("binary_crossentropy", [[1.0, 0.0, 0.0]], [[2.0, -1.0, 0.5]], [0, 1]),
    ("binary_focal_crossentropy", [[1.0, 0.0, 0.0]], [[2.0, -1.0, 0.5]], [0, 1]),
    ("categorical_focal_crossentropy", [[1.0, 0.0, 0.0]], [[2.0, -1.0, 0.5]], [0, 1]),
    ("kl_divergence", [[1.0, 0.0, 0.0]], [[2.0, -1.0, 0.5]], [0, 1]),
    ("kl_divergence", [[1.5, 0.0, 0.0]], [[0.2, 0.3, 0.5]], [0]),
    ("poisson", [[1.0, 0.0, 0.0]], [[-2.0, 1.0, -0.5]], [0, 2]),
    ("tversky_loss", [[1.0, 0.0, 0.0]], [[2.0, -1.0, 0.5]], [0, 1]),
]


@pytest.mark.parametrize("name,y,p,bad", _OUT_OF_RANGE)
def test_out_of_range_probabilities_are_nan_under_xla(name, y, p, bad):
    """Where the range assertion cannot run (XLA drops it), the bad entries' loss and gradient are NaN
    instead of a silent wrong number (logits passed without from_logits=True gave 0.22)."""
    fn = getattr(losses, name)

    def value_and_gradient(y, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = fn(y, p)
        return loss, tape.gradient(loss, p)

    y = tf.constant(y, tf.int32 if name.startswith("sparse") else tf.float32)
    loss, gradient = tf.function(value_and_gradient, jit_compile=True)(y, tf.constant(p))
    assert np.isnan(loss.numpy()).all()
    assert np.isnan(gradient.numpy()[0, bad]).all()
    valid = tf.constant([[0.2, 0.3, 0.5]])
    y_valid = tf.constant([0]) if name.startswith("sparse") else tf.constant([[1.0, 0.0, 0.0]])
    loss, gradient = tf.function(value_and_gradient, jit_compile=True)(y_valid, valid)
    expected, _ = value_and_gradient(y_valid, valid)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert np.isfinite(gradient.numpy()).all()
    safeops.set_validation(False)  # checks off: nothing added, as outside XLA
    try:
        loss, _ = tf.function(value_and_gradient, jit_compile=True)(y, tf.constant(p))
        assert np.isfinite(loss.numpy()).all()
    finally:
        safeops.set_validation(True)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_a_check_finds_the_bad_entry_only_when_it_fails(mode):
    """The offending value is built only on failure (built always, it cost several times the check).

    The ``got`` below reads index 10**6 of a 4-entry tensor: run, it would
    raise an indexing error; the check that passes must not run it, and the
    one that fails reports the value from the lazy branch.
    """
    from safeops import _validate

    calls = []

    def check(x, lazy):
        def got():
            calls.append(1)
            return tf.gather(x, 10**6) if lazy == "bad index" else tf.reduce_min(x)

        deps = _validate.assert_that(tf.reduce_all(x > 0), "op", "x", "positive", got)
        with tf.control_dependencies(deps):
            return tf.identity(x)

    fn = in_mode(mode, check)
    np.testing.assert_array_equal(fn(tf.constant([1.0, 2.0, 3.0, 4.0]), "bad index"), [1, 2, 3, 4])
    if mode == "eager":
        assert not calls
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)op: x must be positive, got.*-5"):
        fn(tf.constant([1.0, -2.0, 3.0, -5.0]), "min")
    # The probability check of a loss names its first bad entry the same way.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"(?s)y_pred must be probabilities.*got.*1\.5"):
        in_mode(mode, losses.binary_crossentropy)(tf.constant([[1.0, 0.0, 1.0]]),
                                                   tf.constant([[0.5, 1.5, 2.5]]))


# ----------------------------------------------------------------------------
# The new losses.


def test_gaussian_nll_formula_floor_and_gradient():
    y = np.array([[0.5, -1.0]], "float32")
    mean, s = np.array([[0.0, 1.0]]), np.array([[0.3, -2.0]])
    expected = np.mean(0.5 * (np.log(2 * np.pi) + s + (y - mean) ** 2 * np.exp(-s)), -1)
    pred = np.concatenate([mean, s], -1).astype("float32")
    np.testing.assert_allclose(losses.gaussian_nll(y, pred), expected, rtol=1e-6)
    # The floor: a log-variance of -inf is the floor, with a finite live gradient.
    value, grad = value_and_grad(lambda p: losses.gaussian_nll([[1.0]], p), [[0.0, -np.inf]])
    floor = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(value, [0.5 * (np.log(2 * np.pi) + np.log(floor) + 1 / floor)], rtol=1e-5)
    np.testing.assert_allclose(grad, [[-1 / floor, 0.5 * (1 - 1 / floor)]], rtol=1e-5)
    value, _ = value_and_grad(lambda p: losses.gaussian_nll([[0.0]], p, min_variance=1e-2), [[0.0, -50.0]])
    np.testing.assert_allclose(value, [0.5 * (np.log(2 * np.pi) + np.log(1e-2))], rtol=1e-5)
    with pytest.raises(ValueError, match="2 d"):
        losses.gaussian_nll(tf.zeros([2, 3]), tf.zeros([2, 3]))


def test_gaussian_nll_half_precision_is_finite_and_second_order_works():
    y, pred = tf.constant([[12.0]], tf.float16), tf.constant([[0.0, -30.0]], tf.float16)
    # The value 0.5 * 144 / 9.8e-4 = 73728 does not fit float16: the function
    # returns float16 (inf), the Loss class computes and returns float32.
    assert np.isinf(losses.gaussian_nll(y, pred).numpy()).all()
    value = losses.GaussianNLL()(y, pred)
    assert value.dtype == tf.float32
    floor = float(np.finfo(np.float16).eps)  # the floor of y_pred's own dtype
    np.testing.assert_allclose(value, 0.5 * (np.log(2 * np.pi) + np.log(floor) + 144 / floor), rtol=1e-5)
    grad = value_and_grad(lambda p: losses.gaussian_nll(tf.constant([[8.0]], tf.float16), p),
                           tf.constant([[0.0, -30.0]], tf.float16))[1]
    assert np.isfinite(grad).all() and np.all(grad != 0)
    x = tf.constant([[0.0, 0.5]], tf.float64)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            loss = losses.gaussian_nll([[1.0]], x)
        g = inner.gradient(loss, x)
    h = outer.jacobian(g, x)
    np.testing.assert_allclose(np.asarray(h).reshape(2, 2)[0, 0], np.exp(-0.5), rtol=1e-10)


def test_kl_divergence_with_logits_matches_naive_and_handles_masks(data):
    t, s = data["logits"], data["logits"][::-1]
    q = tf.nn.softmax(t).numpy().astype(np.float64)
    naive = np.sum(q * (np.log(q) - np.log(tf.nn.softmax(s).numpy().astype(np.float64))), -1)
    np.testing.assert_allclose(losses.kl_divergence_with_logits(t, s), naive, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(losses.kl_divergence_with_logits(t, t), 0.0, atol=1e-6)
    masked = [[0.0, -np.inf, 1.0]]
    value, grad = value_and_grad(lambda s: losses.kl_divergence_with_logits(masked, s), [[0.0, -np.inf, 1.0]])
    np.testing.assert_allclose(value, [0.0], atol=1e-6)
    assert np.all(np.isfinite(grad))
    assert float(losses.kl_divergence_with_logits([[0.0, 0.0]], [[0.0, -np.inf]])[0]) == np.inf


def _kl_reference(t, s):
    """KL(softmax(t) || softmax(s)) of exact inputs, in mpmath at 120 digits (KLs of 1e-33 from O(1) terms)."""
    import mpmath

    with mpmath.workdps(120):
        t = [mpmath.mpf(float(v)) for v in t]
        s = [mpmath.mpf(float(v)) for v in s]
        lt = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in t))
        ls = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in s))
        return float(mpmath.fsum(mpmath.exp(a - lt) * ((a - lt) - (b - ls)) for a, b in zip(t, s)
                                 if a != -mpmath.inf))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kl_divergence_with_logits_of_close_distributions_is_within_c3(dtype, mode):
    """C3 where the terms q_j (log q_j - log p_j) cancel: 20000 ULP (float32) and 6300 (float64) before.

    Close distributions (a student near its teacher, with and without large
    logits) and ordinary ones; the gradient is unchanged (the plain sum's).
    """
    rng = np.random.default_rng(3)
    rows = [([0.0, 0.01, 0.02], [0.0, 0.0, 0.0]), ([1e4, 1e4 + 0.01, 1e4 - 0.03], [0.0, 0.0, 0.01]),
            ([0.0, 1.0, 2.0], [0.5, -1.0, 3.0]), ([0.0, -30.0, 5.0], [0.0, 0.0, 0.0]),
            # Where a test on the terms' cancellation (the earlier gate) kept the plain sum: its
            # log-probabilities' rounding, not cancellation between terms (11% off; 0; -5.6e-17 in
            # float64, a negative KL), and a teacher probability that underflows float32 beside a
            # student log-probability of -1e37 (0 instead of 9.27e-12).
            ([0.0, 0.0, -20.0], [0.0, 0.0, -30.0]), ([1e-8, 0.0, 0.0], [0.0, 0.0, 0.0]),
            ([1e-16, 0.0, 0.0], [0.0, 0.0, 0.0]), ([0.0, -110.6, -200.0], [0.0, -1e37, -200.0]),
            # A class masked in the teacher (the centred form dropped the student's mass there).
            ([-np.inf, 0.3, -0.2], [-9.0, 0.3 + 1e-6, -0.2])]
    for _ in range(6):
        t = rng.normal(size=3) * 10 ** rng.uniform(-1, 1.5)
        rows.append((t, t + rng.normal(size=3) * 10 ** rng.uniform(-5, -1)))
    t = np.array([r[0] for r in rows], dtype)
    s = np.array([r[1] for r in rows], dtype)
    value, grad = value_and_grad(lambda z: losses.kl_divergence_with_logits(tf.constant(t), z),
                                  tf.constant(s), mode)
    want = np.array([_kl_reference(a, b) for a, b in zip(t, s)])
    ulps = np.abs(value.astype(np.float64) - want) / np.spacing(np.abs(want.astype(dtype))).astype(np.float64)
    assert ulps.max() <= 4, ulps
    # Alone in its batch (for float64 inputs, a row away from cancellation keeps the plain sum).
    for i in (0, 2, 4):
        alone, _ = value_and_grad(lambda z: losses.kl_divergence_with_logits(tf.constant(t[i:i + 1]), z),
                                   tf.constant(s[i:i + 1]), mode)
        ulp = np.spacing(abs(want[i].astype(dtype)))
        assert abs(float(alone[0]) - want[i]) <= 4 * ulp, (i, alone, want[i])
    # The student's gradient p - q, against the float64 softmaxes.
    t64, s64 = t.astype(np.float64), s.astype(np.float64)

    def softmax(v):
        e = np.exp(v - v.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    np.testing.assert_allclose(grad, softmax(s64) - softmax(t64), atol=1e-6 if dtype == np.float32 else 1e-14)


def test_kl_divergence_with_logits_teacher_gradient_at_a_masked_class():
    # dKL/dt_k = q_k (log q_k - log p_k - KL): 0 at a masked teacher class, even
    # where the student masks it too; the student's gradient is p - q.
    t = tf.constant([[0.0, -np.inf, 1.0], [0.5, -np.inf, -np.inf]])
    s = tf.constant([[1.0, 2.0, -1.0], [0.0, -np.inf, 3.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([t, s])
        kl = losses.kl_divergence_with_logits(t, s)
    dt, ds = tape.gradient(kl, [t, s])
    q, p = tf.nn.softmax(t).numpy(), tf.nn.softmax(s).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(q > 0, np.log(q) - np.log(p), 0.0)
    expected_dt = q * (gap - np.sum(q * gap, -1, keepdims=True))
    np.testing.assert_allclose(dt.numpy(), expected_dt, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ds.numpy(), p - q, rtol=1e-5, atol=1e-7)
    assert dt.numpy()[0, 1] == 0 and dt.numpy()[1, 1] == 0 and dt.numpy()[1, 2] == 0


@pytest.mark.parametrize("mode", MODES)
def test_kl_divergence_with_logits_gradients_of_confident_rows(mode):
    """C3 for gradients where a probability is near 1: p - q and q (g - KL) lose their small entries.

    Through the plain sum's autodiff the top entries' gradients came out
    with the wrong sign or 0 (student -1.5e-9 for 2.6e-9 at t = [20, 0, 0],
    s = [21, 0, 0]; teacher +2.8e-8 for -2.8e-8 in the second row).
    """
    t = np.array([[20.0, 0.0, 0.0], [0.0, 18.0, 1.0], [30.0, 1.0, -3.0], [0.5, -1.0, 2.0]], np.float32)
    s = np.array([[21.0, 0.0, 0.0], [0.0, 18.5, 1.0], [30.0, 1.0, -2.0], [0.0, 0.0, 1.0]], np.float32)

    def step(t, s):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([t, s])
            kl = losses.kl_divergence_with_logits(t, s)
        return tape.gradient(kl, t), tape.gradient(kl, s)

    run = step if mode == "eager" else tf.function(step, jit_compile=mode == "xla")
    dt, ds = [g.numpy().astype(np.float64) for g in run(tf.constant(t), tf.constant(s))]

    import mpmath

    def reference(a, b):  # (d/dt, d/ds) at 50 digits: float64's p - q at p, q ~ 1 - 1e-13 is 0.1% off
        with mpmath.workdps(50):
            ea = [mpmath.exp(mpmath.mpf(float(v))) for v in a]
            eb = [mpmath.exp(mpmath.mpf(float(v))) for v in b]
            q, p = [v / mpmath.fsum(ea) for v in ea], [v / mpmath.fsum(eb) for v in eb]
            g = [mpmath.log(x) - mpmath.log(y) for x, y in zip(q, p)]
            kl = mpmath.fsum(x * y for x, y in zip(q, g))
            return [float(x * (y - kl)) for x, y in zip(q, g)], [float(y - x) for x, y in zip(q, p)]

    wants = [reference(a, b) for a, b in zip(t, s)]
    for got, want in ((dt, np.array([w[0] for w in wants])), (ds, np.array([w[1] for w in wants]))):
        sizable = np.abs(want) > 1e-20
        np.testing.assert_allclose(got[sizable], want[sizable], rtol=1e-5)


def test_kl_divergence_with_logits_nan_teacher_gives_nan_student_gradient():
    """C2: a NaN teacher row made the loss NaN but the student's gradient 0 (the masked sum dropped it)."""
    t = tf.constant([[np.nan, 0.0, 1.0], [0.0, 1.0, 2.0]])
    s = tf.constant([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(s)
        kl = losses.kl_divergence_with_logits(t, s)
    ds = tape.gradient(kl, s).numpy()
    assert np.isnan(kl.numpy()[0]) and np.all(np.isnan(ds[0]))
    assert np.isfinite(kl.numpy()[1]) and np.all(np.isfinite(ds[1]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["kl_divergence", "kl_divergence_with_logits"])
def test_kl_divergences_under_vectorized_map_with_the_tape_outside(name, mode):
    """C6: TensorFlow's vectorizer drops custom gradients (pfor rewrites their IdentityN), and these
    ops' forwards compute only a value from stopped inputs: the gradient was 0 everywhere. Under jit,
    kl_divergence_with_logits' tf.cond became dynamic shapes that XLA refused."""
    rng = np.random.default_rng(4)
    if name == "kl_divergence":
        a = tf.constant(rng.dirichlet(np.ones(5), size=(4, 3)).astype(np.float32))
        b = tf.constant(rng.dirichlet(np.ones(5), size=(4, 3)).astype(np.float32))
    else:
        t = rng.normal(size=(4, 3, 5)).astype(np.float32)
        t[0, 0, 1] = t[1, 1, :] = -np.inf  # a masked class; an all -inf teacher row (0, gradients 0)
        t[3, 2, 0] = np.nan  # NaN stays NaN in the value and the student's gradient
        a, b = tf.constant(t), tf.constant(rng.normal(size=(4, 3, 5)).astype(np.float32))
    op = getattr(losses, name)

    def step(a, b, mapped):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            kl = tf.vectorized_map(lambda e: op(e[0], e[1]), (a, b)) if mapped else op(a, b)
        return [kl, *tape.gradient(kl, [a, b])]

    run = step if mode == "eager" else tf.function(step, jit_compile=mode == "xla")
    for got, want in zip(run(a, b, True), step(a, b, False)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
        assert np.any(got != 0)


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy", "kl_divergence",
                                  "kl_divergence_with_logits", "poisson", "binary_focal_crossentropy",
                                  "categorical_focal_crossentropy", "tversky_loss", "gaussian_nll"])
def test_losses_take_variables_under_an_eager_tape(name):
    """C6: a tf.Variable y_true under a GradientTape raised SystemError in eager mode (TensorFlow's
    test for a watched tensor, reached through the labels' saturating cast, does not take variables)."""
    rng = np.random.default_rng(5)
    y = rng.uniform(0.05, 0.9, size=(3, 4)).astype(np.float32)
    p = rng.uniform(0.05, 0.9, size=(3, 4)).astype(np.float32)
    args = (y[:, :2], p) if name == "gaussian_nll" else (y, p)
    fn = getattr(losses, name)
    variables = [tf.Variable(a) for a in args]
    with tf.GradientTape() as tape:
        got = fn(*variables)
    got_grads = tape.gradient(got, variables)
    tensors = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        want = fn(*tensors)
    for a, b in zip([got, *got_grads], [want, *tape.gradient(want, tensors)]):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_kl_divergence_recovers_softmax_logits():
    z = tf.constant([[0.0, -200.0]])
    t = tf.constant([[0.5, 0.5]])

    @tf.function
    def run(z):
        return losses.kl_divergence(t, tf.nn.softmax(z))

    exact = float(losses.kl_divergence_with_logits(tf.math.log(t), z)[0])
    np.testing.assert_allclose(run(z), [exact], rtol=1e-5)
    assert exact > 99


# ----------------------------------------------------------------------------
# Hypothesis properties.

_logit = st.floats(-60, 60, width=32)
_prob = st.floats(0.0, 1.0, width=32)


def _naive_bce(y, p):
    p = np.asarray(p, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p), -1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), _logit), min_size=1, max_size=6))
def test_property_bce_from_logits_equals_naive_and_keras_where_finite(pairs):
    y = np.array([[a for a, _ in pairs]], "float32")
    z = np.array([[b for _, b in pairs]], "float32")
    ours = losses.binary_crossentropy(y, z, from_logits=True).numpy()
    naive = np.mean(np.logaddexp(0, -z.astype(np.float64)) * y + np.logaddexp(0, z.astype(np.float64)) * (1 - y), -1)
    np.testing.assert_allclose(ours, naive, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, keras.losses.binary_crossentropy(y, z, from_logits=True), rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0]), _prob), min_size=1, max_size=6))
def test_property_bce_on_probabilities_finite_and_live(pairs):
    y = np.array([[a for a, _ in pairs]], "float32")
    p = np.array([[b for _, b in pairs]], "float32")
    value, grad = value_and_grad(lambda p: losses.binary_crossentropy(y, p), p)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    assert np.all(grad[y != p] != 0)  # live wherever the prediction is not already perfect
    naive = _naive_bce(y, p)
    inside = (p > 1e-7) & (p < 1 - 1e-7)
    if np.isfinite(naive).all() and inside.all():
        np.testing.assert_allclose(value, naive, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(value, keras.losses.binary_crossentropy(y, p), rtol=1e-4, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.lists(_logit, min_size=2, max_size=6), st.data())
def test_property_categorical_and_focal_from_logits(logits, draw):
    z = np.array([logits], "float32")
    k = draw.draw(st.integers(0, len(logits) - 1))
    y = np.eye(len(logits), dtype="float32")[[k]]
    log_p = z.astype(np.float64) - np.logaddexp.reduce(z.astype(np.float64), -1)
    value, grad = value_and_grad(lambda z: losses.categorical_crossentropy(y, z, from_logits=True), z)
    np.testing.assert_allclose(value, -log_p[:, k], rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(grad))
    focal, fgrad = value_and_grad(lambda z: losses.categorical_focal_crossentropy(y, z, from_logits=True), z)
    p_k = np.exp(log_p[0, k])
    np.testing.assert_allclose(focal, [0.25 * (1 - p_k) ** 2 * -log_p[0, k]], rtol=1e-4, atol=1e-6)
    assert np.all(np.isfinite(fgrad))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32])
@pytest.mark.parametrize("name, kwargs", [
    ("categorical_crossentropy", {}),
    ("categorical_focal_crossentropy", {}),
    ("categorical_focal_crossentropy", {"gamma": 1.5, "alpha": [0.2, 0.3, 0.5]}),
    ("binary_crossentropy", {}),
    ("binary_focal_crossentropy", {}),
])
def test_label_gradient_saturates_at_a_mask_logit(name, kwargs, dtype):
    # d loss / d y_j is -log p_j-like: infinite at a -inf logit, and beyond
    # float16's range long before that; a learned target gets it saturated.
    logits = tf.constant([[-np.inf, 2.0, 0.5], [1.0, 2.0, -np.inf], [-20.0, 3.0, 0.0]], dtype)
    labels = tf.constant([[0.0, 0.7, 0.3], [0.2, 0.8, 0.0], [0.1, 0.6, 0.3]], dtype)
    value, grad = value_and_grad(
        lambda y: getattr(losses, name)(y, logits, from_logits=True, **kwargs), labels)
    assert np.isfinite(value).all()
    grad = grad.astype(np.float64)
    assert np.isfinite(grad).all(), grad
    if name == "binary_focal_crossentropy":
        return  # its factor (1 - p_t)**gamma = y**gamma there: the exact slope at y = 0 is 0
    # The -inf logits pull their labels down with the largest finite slope
    # (a third of it after binary_crossentropy's mean over 3 entries).
    biggest = float(tf.experimental.numpy.finfo(dtype.as_numpy_dtype).max)
    assert grad[0, 0] >= biggest / 4 and grad[1, 2] >= biggest / 4


@pytest.mark.parametrize("axis", [(1, 2), [1, 2], None, np.int64(1), np.array([0, 2])])
@pytest.mark.parametrize("name", ["binary_crossentropy", "binary_focal_crossentropy"])
def test_binary_losses_average_over_the_axes_keras_takes(name, axis):
    rng = np.random.default_rng(9)
    y = tf.constant(rng.uniform(size=(2, 3, 4)), tf.float32)
    p = tf.constant(rng.uniform(0.05, 0.95, size=(2, 3, 4)), tf.float32)
    got = getattr(losses, name)(y, p, axis=axis)
    expected = getattr(keras.losses, name)(y, p, axis=axis)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4)


def test_categorical_losses_take_numpy_and_constant_tensor_axes():
    rng = np.random.default_rng(10)
    y = tf.nn.softmax(tf.constant(rng.normal(size=(2, 3, 4)), tf.float32), axis=1)
    z = tf.constant(rng.normal(size=(2, 3, 4)), tf.float32)
    expected = keras.losses.categorical_crossentropy(y, z, from_logits=True, axis=1)
    for axis in (np.int64(1), tf.constant(1), np.int32(-2)):
        got = losses.categorical_crossentropy(y, z, from_logits=True, axis=axis)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5)
    with pytest.raises(TypeError, match="categorical_crossentropy: axis must be an int"):
        losses.categorical_crossentropy(y, z, from_logits=True, axis=(1, 2))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
@pytest.mark.parametrize("name", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_probability_gradient_at_a_zero_probability_is_the_normalisers_in_every_dtype(name, dtype, mode):
    """C4 on the probability path: d/dp_j of -sum y log(c / sum c), c = max(p, tiny), is sum(y)/S - y_j/c_j.

    It went through softmax(log c)_j = c_j / S, flushed to 0 below tiny:
    float32 and bfloat16 p = [1, 0, 0] had the gradient [0, 0, 0] (float64
    [0, 1, 1]), and p = [0.5, 0.5, 0] had 0 at its third class in every
    dtype but float16. Keras' formula gives 1 = 1/S there too.
    """
    p = np.array([[1.0, 0.0, 0.0], [1.0, 1e-30, 0.0], [0.5, 0.5, 0.0], [0.3, 0.0, 0.7], [0.0, 0.0, 0.0]])
    classes = np.array([0, 0, 1, 2, 1])
    y = np.eye(3)[classes]
    fn = getattr(losses, name)
    labels = classes if name.startswith("sparse") else y
    value, grad = value_and_grad(lambda q: fn(labels, q), tf.constant(p, dtype), mode)
    rounded = tf.cast(tf.constant(p, dtype), tf.float64).numpy()
    # Labelled classes clamp at the dtype's tiny, unlabelled ones at the compute dtype's
    # (float32 for the half dtypes), unless the whole row is below tiny.
    floor, low = _dtypes_tiny(dtype), _dtypes_tiny(tf.float64 if dtype == tf.float64 else tf.float32)
    row_low = (rounded < floor).all(-1, keepdims=True)
    c = np.maximum(rounded, np.where((y != 0) | row_low, floor, low))
    s = c.sum(-1, keepdims=True)
    expected = y.sum(-1, keepdims=True) / s - y / c
    rtol = {tf.float16: 2e-3, tf.bfloat16: 1.6e-2, tf.float32: 1e-6, tf.float64: 1e-12}[dtype]
    np.testing.assert_allclose(grad, expected, rtol=rtol, atol=1e-30)
    assert np.all(grad[rounded == 0] != 0)
    # The value is unchanged: log(S / c_k) = log1p(sum of the other c / c_k), one-hot labels.
    # (at p = [1, 0, 0] the exact 2 tiny may be flushed: C3's flush-to-zero resolution).
    np.testing.assert_allclose(value, np.log1p((c * (1 - y)).sum(-1) / (c * y).sum(-1)),
                               rtol=max(rtol, 1e-6), atol=4 * _dtypes_tiny(dtype))


def _dtypes_tiny(dtype):
    return float(tf.experimental.numpy.finfo(dtype.as_numpy_dtype).tiny)


def _info_nce_reference(scores):
    """``log1p(sum_{j != i} exp(s_ij - s_ii))`` per row, in mpmath (50 digits), for exact ``scores``."""
    import mpmath

    with mpmath.workdps(50):
        return [float(mpmath.log1p(mpmath.fsum(mpmath.exp(mpmath.mpf(float(t)) - mpmath.mpf(float(row[i])))
                                               for j, t in enumerate(row) if j != i)))
                for i, row in enumerate(scores)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_info_nce_keeps_the_tiny_loss_of_a_confident_match(dtype, mode):
    """C3: -log_softmax(s)_ii, within 4 ULP of mpmath; logsumexp(s_i) - s_ii gave 0 or 3e-7 off.

    Identical unit embeddings at tau = 0.05 and 0.02 (the loss log1p(exp(-1/tau))
    was 0 in float32, and 0 in float64 at 0.02), and 4-d embeddings of
    entries +-1/2 (norm 1, so normalising is exact) with power-of-two
    temperatures, whose scores, and hence the reference, are exact.
    """
    np_dtype = dtype.as_numpy_dtype
    tiny = float(np.finfo(np_dtype).tiny)
    half = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1], [-1, 1, 1, 1]]) / 2
    axes = np.eye(4)[[0, 1, 2, 3, 0]]
    cases = [(np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]), t) for t in (0.05, 0.02)]
    cases += [(np.concatenate([half, half], -1), t) for t in (2.0 ** -4, 2.0 ** -6)]
    cases += [(np.concatenate([half, axes], -1), t) for t in (2.0 ** -3, 2.0 ** -5)]
    fn = in_mode(mode, lambda e, t: losses.info_nce(None, e, temperature=t))
    for e, t in cases:
        got = fn(tf.constant(e, dtype), t).numpy().astype(np.float64)
        a, b = e[:, : e.shape[1] // 2], e[:, e.shape[1] // 2:]
        a, b = a / np.linalg.norm(a, axis=-1, keepdims=True), b / np.linalg.norm(b, axis=-1, keepdims=True)
        scores = (a @ b.T) / np_dtype(t) if t in (0.05, 0.02) else (a @ b.T) / t
        exact = np.asarray(_info_nce_reference(scores.astype(np_dtype)))
        ulp = np.spacing(np.abs(exact).astype(np_dtype)).astype(np.float64)
        err = np.abs(got - exact)
        ok = (err <= 4 * ulp) | (err <= 4 * tiny)  # C3, with its flush-to-zero resolution
        assert ok.all(), (t, got, exact, err / ulp)


def test_from_logits_none_is_false_as_in_keras_and_a_string_is_refused():
    y, p = [[1.0, 0.0]], [[0.3, 0.6]]
    for name in ("binary_crossentropy", "categorical_crossentropy", "binary_focal_crossentropy"):
        np.testing.assert_array_equal(getattr(losses, name)(y, p, from_logits=None).numpy(),
                                      getattr(losses, name)(y, p, from_logits=False).numpy())
        with pytest.raises(TypeError, match=f"{name}: from_logits must be a Python bool, got 'yes'"):
            getattr(losses, name)(y, p, from_logits="yes")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, residual", [(np.float32, 1e20), (np.float64, 1e160)])
def test_gaussian_nll_gradient_saturates_where_the_loss_overflows(mode, dtype, residual):
    """C1: a residual whose squared scale overflows gave the loss inf (rounded) and the log-variance a
    gradient of -inf, which turns an optimizer step NaN; it saturates at -max now."""
    y = tf.constant([[0.0]], dtype)
    value, grad = value_and_grad(lambda p: losses.gaussian_nll(y, p),
                                  tf.constant([[residual, -50.0]], dtype), mode)
    assert np.isposinf(value).all()
    assert np.isfinite(grad).all() and grad[0, 1] == -np.finfo(dtype).max and grad[0, 0] > 0


# ----------------------------------------------------------------------------
# Errors (C7) of the worked examples: tversky_loss / TverskyLoss, info_nce / InfoNCE.

_TVERSKY = "safeops.losses.tversky_loss"
_INFO_NCE = "safeops.losses.info_nce"
_INFO_NCE_SHAPE = r"info_nce: y_pred must be of shape \[batch, 2 d\].*an even last dimension.*got"


def test_tversky_refuses_bad_dtypes_and_shapes_naming_the_argument():
    """The Loss class converts both to its dtype first, as Keras' Loss.__call__ does: shapes only there."""
    float_names = r"must be a floating-point tensor \(float16, bfloat16, float32 or float64\)"
    with pytest.raises(TypeError, match=rf"{_TVERSKY}: y_pred {float_names}, got int32"):
        losses.tversky_loss([[0.0, 1.0]], tf.constant([[0, 1]]))
    with pytest.raises(TypeError, match=rf"{_TVERSKY}: y_pred {float_names}, got string"):
        losses.tversky_loss([[0.0, 1.0]], tf.constant([["a", "b"]]))
    with pytest.raises(TypeError, match=rf"{_TVERSKY}: y_true must be numeric labels, got a string"):
        losses.tversky_loss(tf.constant([["a", "b"]]), [[0.2, 0.7]])
    for fn in (losses.tversky_loss, losses.TverskyLoss()):
        with pytest.raises(ValueError, match=rf"{_TVERSKY}: y_true and y_pred must have the same shape, "
                                             r"got \(2, 3\) and \(2, 4\)"):
            fn(tf.zeros([2, 3]), tf.zeros([2, 4]))


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("arg, y, p, bad", [
    ("y_pred", [[0.0, 1.0]], [[0.2, 1.3]], "1.3"),
    ("y_pred", [[0.0, 1.0]], [[-0.3, 0.5]], "-0.3"),
    ("y_true", [[0.0, 1.3]], [[0.2, 0.5]], "1.3"),
    ("y_true", [[-0.3, 1.0]], [[0.2, 0.5]], "-0.3"),
])
def test_tversky_refuses_probabilities_outside_the_unit_interval(mode, arg, y, p, bad):
    """A silent value before (a negative loss for y_true = 1.3); eager and inside tf.function."""
    for fn in (losses.tversky_loss, losses.TverskyLoss()):
        run = in_mode(mode, lambda y, p: fn(y, p))  # noqa: B023
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"(?s){_TVERSKY}: {arg} must be probabilities in \[0, 1\].*got.*{bad}"):
            run(tf.constant(y), tf.constant(p))


def test_tversky_check_can_be_turned_off_and_nan_and_edges_pass():
    np.testing.assert_array_equal(losses.tversky_loss([[0.0, 1.0]], [[0.0, 1.0]]).numpy(), [0.0])
    assert np.isnan(losses.tversky_loss([[0.0, 1.0]], [[np.nan, 0.5]]).numpy()[0])
    safeops.set_validation(False)
    try:
        assert losses.tversky_loss([[0.0, 1.0]], [[0.2, 1.3]]).shape == (1,)
    finally:
        safeops.set_validation(True)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
def test_tversky_and_info_nce_keep_the_dtype_of_y_pred(dtype):
    y = tf.constant([[0.0, 1.0, 1.0, 0.0]])
    p = tf.constant([[0.25, 0.5, 0.75, 0.0]], dtype)
    assert losses.tversky_loss(y, p).dtype == dtype
    e = tf.constant([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], dtype)
    assert losses.info_nce(None, e).dtype == dtype
    # Integer masks are labels, as Keras takes them.
    np.testing.assert_allclose(losses.tversky_loss(tf.constant([[0, 1, 1, 0]]), p).numpy().astype(np.float64),
                               losses.tversky_loss(y, p).numpy().astype(np.float64))


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf"), "a", True])
def test_info_nce_refuses_a_bad_temperature(temperature):
    """0 made every score inf and the loss NaN, silently; a negative one inverts the objective."""
    e = tf.constant([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match=rf"{_INFO_NCE}: temperature must be a finite number > 0, got"):
        losses.info_nce(None, e, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        losses.InfoNCE(temperature=temperature)(tf.zeros([2]), e)


@pytest.mark.parametrize("ignore_class", [1.5, -1.5, "1", True, [1]])
def test_sparse_ignore_class_must_be_an_integer(ignore_class):
    """A cast to the labels' dtype rounded 1.5 to 1 and silently ignored class 1."""
    with pytest.raises(TypeError, match=r"sparse_categorical_crossentropy: ignore_class must be None or an "
                                        r"integer label, got"):
        losses.sparse_categorical_crossentropy(tf.constant([0, 1, 2]), tf.zeros([3, 3]), from_logits=True,
                                               ignore_class=ignore_class)
    # Integral values of any number type still work (Keras passes floats through configs).
    for ok in (1, 1.0, np.int64(1)):
        got = losses.sparse_categorical_crossentropy(tf.constant([0, 1, 2]), tf.zeros([3, 3]),
                                                     from_logits=True, ignore_class=ok)
        np.testing.assert_allclose(got, [np.log(3), 0.0, np.log(3)], rtol=1e-6)


def test_eager_value_checks_raise_their_message_alone():
    """Eager checks read "Expected 'tf.Tensor(False, ...)' to be true. Summarized data: b'...'"."""
    cases = [
        (lambda: losses.categorical_crossentropy([[0.0, 1.0]], [[0.5, 1.5]]),
         "safeops.losses.categorical_crossentropy: y_pred must be probabilities in [0, 1] "
         "(pass from_logits=True for logits), got 1.5"),
        (lambda: losses.poisson([[1.0]], [[-1.0]]),
         "safeops.losses.poisson: y_pred must be non-negative, got -1.0"),
        (lambda: losses.CategoricalCrossentropy(check_finite=True)([[1.0, 0.0]] * 9, [[np.nan, 0.0]] * 9),
         "per-example loss must be finite, got [nan nan nan nan nan nan nan nan ...]"),
    ]
    for call, text in cases:
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            call()
        assert caught.value.message.endswith(text) and "Summarized" not in caught.value.message


@pytest.mark.parametrize("fn, kwargs, arg", [
    (losses.binary_crossentropy, {"label_smoothing": "a"}, "label_smoothing"),
    (losses.categorical_crossentropy, {"label_smoothing": True}, "label_smoothing"),
    (losses.binary_focal_crossentropy, {"gamma": "a"}, "gamma"),
    (losses.categorical_focal_crossentropy, {"alpha": "a"}, "alpha"),
    (losses.categorical_focal_crossentropy, {"label_smoothing": [0.1]}, "label_smoothing"),
])
def test_non_numeric_keywords_are_refused_by_name(fn, kwargs, arg):
    """They failed deep inside: "unsupported operand type(s) for -: 'float' and 'str'",
    "Cast string to float"."""
    with pytest.raises(TypeError, match=rf"{fn.__name__}: {arg} must be a number"):
        fn([[0.0, 1.0]], [[0.3, 0.7]], **kwargs)
    with pytest.raises(TypeError, match="gaussian_nll: min_variance must be None or a positive number"):
        losses.gaussian_nll([[0.0]], [[0.0, 0.0]], min_variance="a")
    # Numbers of every kind still pass: Python, NumPy, tensors, per-class lists.
    losses.categorical_focal_crossentropy([[0.0, 1.0]], [[0.3, 0.7]], alpha=[0.5, 1], gamma=np.float32(2),
                                          label_smoothing=tf.constant(0.1))


def test_sparse_losses_take_bool_labels_as_keras_does():
    labels, logits = tf.constant([True, False, True]), tf.constant([[0.1, 2.0], [1.0, -1.0], [0.0, 0.5]])
    ours = losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    keras_value = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    np.testing.assert_allclose(ours, keras_value, rtol=1e-6)


@pytest.mark.parametrize("enabled", ["no", 0, None])
def test_set_validation_takes_only_a_bool(enabled):
    """bool("no") is True: a string left the checks on while its caller meant off."""
    with pytest.raises(TypeError, match="set_validation: enabled must be True or False"):
        safeops.set_validation(enabled)
    assert safeops._validate.validation_enabled()


def test_info_nce_refuses_non_float_and_badly_laid_out_y_pred():
    """An int y_pred was reported as safeops.math.l2_normalize's x, an odd last dimension by tf.split."""
    float_names = r"must be a floating-point tensor \(float16, bfloat16, float32 or float64\)"
    with pytest.raises(TypeError, match=rf"{_INFO_NCE}: y_pred {float_names}, got int32"):
        losses.info_nce(None, tf.constant([[1, 0, 1, 0]]))
    with pytest.raises(TypeError, match=rf"{_INFO_NCE}: y_pred {float_names}, got string"):
        losses.info_nce(None, tf.constant([["a", "b"]]))
    for fn in (lambda e: losses.info_nce(None, e), lambda e: losses.InfoNCE()(tf.zeros([e.shape[0]]), e)):
        with pytest.raises(ValueError, match=_INFO_NCE_SHAPE + r" \(2, 5\)"):
            fn(tf.zeros([2, 5]))
    with pytest.raises(ValueError, match=_INFO_NCE_SHAPE + r" \(2, 3, 4\)"):
        losses.info_nce(None, tf.zeros([2, 3, 4]))
    with pytest.raises(ValueError, match=_INFO_NCE_SHAPE + r" \(6,\)"):
        losses.info_nce(None, tf.zeros([6]))


@pytest.mark.parametrize("mode", MODES)
def test_info_nce_shape_check_runs_at_trace_time_and_spares_unknown_dimensions(mode):
    with pytest.raises(ValueError, match=_INFO_NCE_SHAPE):
        in_mode(mode, lambda e: losses.info_nce(None, e))(tf.zeros([3, 7]))
    spec = [tf.TensorSpec([None, None], tf.float32)]
    unknown = tf.function(lambda e: losses.info_nce(None, e), input_signature=spec,
                          jit_compile=(mode == "xla"))
    e = tf.constant(np.random.default_rng(3).normal(size=(3, 4)).astype("float32"))
    np.testing.assert_allclose(unknown(e), losses.info_nce(None, e), rtol=1e-6)


def test_scalar_predictions_and_wrong_alpha_length_are_named():
    """C7: these met TensorFlow's 'Invalid reduction dimension' or a broadcasting error in a mul node."""
    for name in ("kl_divergence", "poisson"):
        with pytest.raises(ValueError, match=rf"{name}: y_pred must be a tensor of rank >= 1 .*got a scalar"):
            getattr(losses, name)(tf.constant(1.0), tf.constant(0.3))
    for alpha in ([0.1, 0.2, 0.3], tf.constant([0.1, 0.2, 0.3])):
        with pytest.raises(ValueError, match=r"alpha must be a number or one weight per class \(2\), got 3"):
            losses.categorical_focal_crossentropy([[1.0, 0.0]], [[0.5, 0.5]], alpha=alpha)
    for alpha in (np.array([0.1, 0.2, 0.3]), tf.Variable([0.1, 0.2, 0.3])):
        with pytest.raises(ValueError, match=r"alpha must be a number or one weight per class \(2\), got 3"):
            losses.categorical_focal_crossentropy([[1.0, 0.0]], [[0.5, 0.5]], alpha=alpha)
    ok = losses.categorical_focal_crossentropy([[1.0, 0.0]], [[0.5, 0.5]], alpha=[0.25])
    np.testing.assert_allclose(ok, losses.categorical_focal_crossentropy([[1.0, 0.0]], [[0.5, 0.5]]),
                               rtol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_gaussian_nll_batch_shapes_that_do_not_broadcast_name_both_arguments(mode):
    """C7: TensorFlow's Sub raised 'Incompatible shapes: [2,2] vs. [3,2]'; a row of y_pred broadcasts."""
    fn = losses.gaussian_nll if mode == "eager" else tf.function(losses.gaussian_nll)
    with pytest.raises(ValueError, match=r"gaussian_nll: y_true and y_pred must be broadcast-compatible "
                                         r"shapes in every axis but the last, got \(2, 2\) and \(3, 4\)"):
        fn(tf.zeros([2, 2]), tf.zeros([3, 4]))
    np.testing.assert_allclose(fn(tf.zeros([2, 2]), tf.zeros([1, 4])), [0.5 * np.log(2 * np.pi)] * 2,
                               rtol=1e-6)


def test_gaussian_nll_and_tversky_with_shapes_known_only_when_the_graph_runs():
    """gaussian_nll refused a [None, None] signature as a wrong shape; tversky_loss of unknown rank
    met range(1, None) (a raw TypeError)."""
    gaussian = tf.function(losses.gaussian_nll, input_signature=[tf.TensorSpec([None, None])] * 2)
    y, p = tf.constant([[1.0, -1.0]]), tf.constant([[0.5, 0.0, 0.0, -1.0]])
    np.testing.assert_allclose(gaussian(y, p), losses.gaussian_nll(y, p), rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"gaussian_nll: y_pred must be of shape \[\.\.\., 2 d\]"):
        gaussian(y, p[:, :3])
    tversky = tf.function(losses.tversky_loss, input_signature=[tf.TensorSpec(None)] * 2)
    y, p = tf.constant([[[1.0, 0.0], [0.0, 1.0]]]), tf.constant([[[0.8, 0.1], [0.3, 0.6]]])
    np.testing.assert_allclose(tversky(y, p), losses.tversky_loss(y, p), rtol=1e-6)


def _softplus64(x):
    return np.logaddexp(0.0, x)


_LONG_ROW_MEANS = {
    "binary_crossentropy": (lambda y, p: losses.binary_crossentropy(y, p), 0.6,
                            lambda y, p: -(y * np.log(p) + (1 - y) * np.log1p(-p))),
    "binary_crossentropy_logits": (lambda y, z: losses.binary_crossentropy(y, z, from_logits=True), 0.4,
                                   lambda y, z: y * _softplus64(-z) + (1 - y) * _softplus64(z)),
    "binary_focal_crossentropy": (lambda y, p: losses.binary_focal_crossentropy(y, p, gamma=2.0), 0.6,
                                  lambda y, p: (1 - (y * p + (1 - y) * (1 - p))) ** 2
                                  * -(y * np.log(p) + (1 - y) * np.log1p(-p))),
    "poisson": (lambda y, p: losses.poisson(y, p), 0.6, lambda y, p: p - y * np.log(p)),
}


@pytest.mark.parametrize("mode", ["function", "jit"])
@pytest.mark.parametrize("n", [4000, 32000])
@pytest.mark.parametrize("name", sorted(_LONG_ROW_MEANS))
def test_means_over_long_rows_within_c3(name, n, mode):
    """Per-example means over a long last axis are summed in float64: in float32 a row of 4000 equal
    entries was 20 ULP off in a graph (binary cross-entropy) and 8.5 under XLA (poisson). The
    reference is the float64 formula on the same float32 inputs."""
    fn, value, formula = _LONG_ROW_MEANS[name]
    y = np.full([2, n], 0.3, np.float32)
    x = np.full([2, n], value, np.float32)
    x[1, ::7] = value / 2
    got = tf.function(fn, jit_compile=(mode == "jit"))(tf.constant(y), tf.constant(x)).numpy()
    want = np.mean(formula(y.astype(np.float64), x.astype(np.float64)), -1)
    ulps = np.abs(got.astype(np.float64) - want) / np.spacing(want.astype(np.float32))
    assert ulps.max() <= 4, ulps


@pytest.mark.parametrize("mode", ["function", "jit"])
def test_gaussian_nll_over_long_rows_within_c3(mode):
    """gaussian_nll's mean over 4000 targets is summed in float64 (see the test above)."""
    d = 4000
    y = np.full([2, d], 0.3, np.float32)
    pred = np.concatenate([np.full([2, d], 1.7, np.float32), np.full([2, d], 0.25, np.float32)], -1)
    got = tf.function(losses.gaussian_nll, jit_compile=(mode == "jit"))(tf.constant(y), tf.constant(pred))
    mu, s = (v.astype(np.float64) for v in (pred[:, :d], pred[:, d:]))
    want = np.mean(0.5 * (np.log(2 * np.pi) + s + (y - mu) ** 2 * np.exp(-s)), -1)
    ulps = np.abs(got.numpy().astype(np.float64) - want) / np.spacing(want.astype(np.float32))
    assert ulps.max() <= 4, ulps


@pytest.fixture(scope="module")
def leading_axis_batch():
    """``[1e6, 4]`` float32 inputs: periodic logits ``z`` (0.3, every seventh row -1.2), normal ones
    ``t`` and ``3 s``, distributions over axis 0 (``y`` of ``t``, ``p`` of ``z``), uniform labels ``u``."""
    rng = np.random.default_rng(3)

    def distribution(x):
        e = np.exp(x - x.max(0))
        return (e / e.sum(0)).astype(np.float32)

    z = np.full((1_000_000, 4), 0.3, np.float32)
    z[::7] = -1.2
    t = rng.standard_normal(z.shape).astype(np.float32)
    return {"y": distribution(t), "p": distribution(z), "z": z, "t": t,
            "s": 3 * rng.standard_normal(z.shape).astype(np.float32), "u": np.full(z.shape, 1e-6, np.float32)}


LEADING_AXIS_GRADIENTS = {
    # name: (loss over axis 0, its two inputs, which of the two gradients the defect showed in)
    "categorical_crossentropy": (lambda a, b: losses.categorical_crossentropy(a, b, axis=0), "yp", 0),
    "categorical_focal_logits": (
        lambda a, b: losses.categorical_focal_crossentropy(a, b, from_logits=True, axis=0), "uz", 1),
    "categorical_focal_probabilities": (lambda a, b: losses.categorical_focal_crossentropy(a, b, axis=0),
                                        "yp", 1),
    "kl_divergence_with_logits": (lambda a, b: losses.kl_divergence_with_logits(a, b, axis=0), "ts", 0),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(LEADING_AXIS_GRADIENTS))
def test_backward_sums_over_a_leading_axis_within_c3(leading_axis_batch, name, mode):
    """TensorFlow's kernels and XLA sum a leading axis as running sums: float32 sums over axis 0 of
    1e6 x 4 entries in the backward passes left these gradients, where they are at least a tenth of
    the largest, 1.5e-2 relative off (the focal loss' logits under uniform labels), 3.0e-4 (the
    cross-entropy's labels; 3.2e-5 under XLA), 1.7e-4 (the teacher's of the KL with logits) and
    2.0e-5 (the focal loss' probabilities); 4.0e-6 at most now. Against the same op in float64; the
    entries below a tenth of the largest are left out (where the gradient's terms cancel)."""
    loss, args, k = LEADING_AXIS_GRADIENTS[name]

    def gradients(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            value = loss(a, b)
        return tape.gradient(value, [a, b], output_gradients=tf.constant([1.0, 2.0, 3.0, 4.0], a.dtype))

    a, b = (leading_axis_batch[c] for c in args)
    fn = tf.function(gradients, jit_compile=mode == "xla") if mode != "eager" else gradients
    got = fn(tf.constant(a), tf.constant(b))[k].numpy().astype(np.float64)
    want = gradients(tf.constant(a, tf.float64), tf.constant(b, tf.float64))[k].numpy()
    large = np.abs(want) >= 0.1 * np.abs(want).max()
    assert np.max(np.abs(got - want)[large] / np.abs(want)[large]) <= 1e-5

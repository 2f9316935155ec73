"""safeops.losses inside Keras: compile/fit, .keras and SavedModel round trips, mixed
precision, jit_compile, and tf.distribute.MirroredStrategy (in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(11)
X = RNG.normal(size=(32, 4)).astype("float32")
CLASSES = RNG.integers(0, 3, size=32)
ONEHOT = np.eye(3, dtype="float32")[CLASSES]
BINARY = (X[:, :3] > 0).astype("float32")

# Each Loss class with the head and targets it is used with.
CASES = {
    "BinaryCrossentropy": (losses.BinaryCrossentropy, "sigmoid", 3, BINARY),
    "BinaryCrossentropy_logits": (lambda: losses.BinaryCrossentropy(from_logits=True), None, 3, BINARY),
    "CategoricalCrossentropy": (losses.CategoricalCrossentropy, "softmax", 3, ONEHOT),
    "SparseCategoricalCrossentropy": (losses.SparseCategoricalCrossentropy, "softmax", 3, CLASSES),
    "BinaryFocalCrossentropy": (losses.BinaryFocalCrossentropy, "sigmoid", 3, BINARY),
    "CategoricalFocalCrossentropy": (lambda: losses.CategoricalFocalCrossentropy(from_logits=True), None, 3,
                                     ONEHOT),
    "KLDivergence": (losses.KLDivergence, "softmax", 3, ONEHOT * 0.8 + 0.2 / 3),
    "Poisson": (losses.Poisson, "softplus", 3, np.round(np.abs(X[:, :3]) * 2)),
    "GaussianNLL": (losses.GaussianNLL, None, 6, X[:, :3]),
    "KLDivergenceWithLogits": (losses.KLDivergenceWithLogits, None, 3, X[:, :3] * 2),
    "TverskyLoss": (losses.TverskyLoss, "sigmoid", 3, BINARY),
    "InfoNCE": (losses.InfoNCE, None, 6, np.zeros(32, "float32")),
}


# Padded token sequences (0 = padding) for a masked sequence model; the keras twin of each loss.
SEQUENCES = RNG.integers(1, 20, size=(16, 7))
SEQUENCES[:, 5:] = 0
SEQUENCES[::3, 2:] = 0
TOKENS = RNG.integers(0, 5, size=(16, 7))
MASKED_CASES = {
    "SparseCategoricalCrossentropy_logits": (
        lambda m: m.SparseCategoricalCrossentropy(from_logits=True), None, TOKENS),
    "CategoricalCrossentropy": (lambda m: m.CategoricalCrossentropy(), "softmax", np.eye(5)[TOKENS]),
    "BinaryCrossentropy_logits": (lambda m: m.BinaryCrossentropy(from_logits=True), None, np.eye(5)[TOKENS]),
    "KLDivergence": (lambda m: m.KLDivergence(), "softmax", np.eye(5)[TOKENS] * 0.9 + 0.02),
}


def _masked_sequence_model(activation):
    keras.utils.set_random_seed(0)
    tokens = keras.Input((7,), dtype="int32")
    h = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    h = keras.layers.LSTM(8, return_sequences=True)(h)
    return keras.Model(tokens, keras.layers.Dense(5, activation=activation)(h))


@pytest.mark.parametrize("case", sorted(MASKED_CASES))
def test_a_keras_mask_on_the_output_weights_the_loss_as_keras_does(case):
    """Embedding(mask_zero=True) marks the padded steps; Keras reads the mask off y_pred in Loss.__call__
    and in compile's loss. safeops' loss must count the same steps, in evaluate, fit and a direct call."""
    make, activation, y = MASKED_CASES[case]
    results = []
    for module in (keras.losses, losses):
        model = _masked_sequence_model(activation)
        loss = make(module)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        evaluated = model.evaluate(SEQUENCES, y, batch_size=16, verbose=0)
        prediction = model(SEQUENCES)
        assert getattr(prediction, "_keras_mask", None) is not None
        called = float(loss(y, prediction))
        unmasked = float(loss(y, tf.identity(prediction)))    # a new tensor: no mask
        fitted = model.fit(SEQUENCES, y, batch_size=8, epochs=1, verbose=0).history["loss"]
        results.append([evaluated, called, *fitted])
        # the mask changes the loss (little: an untrained model is near uniform; rounding is 1e-7)
        assert abs(called - unmasked) > 1e-6 * abs(unmasked), (called, unmasked)
    np.testing.assert_allclose(results[1], results[0], rtol=2e-5)


def _model(activation, units, seed=0, dtype=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(8, activation="tanh", dtype=dtype),
        keras.layers.Dense(units, activation=activation, dtype=dtype),
    ])


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_loss_class_trains_in_compile_and_fit(case):
    make, activation, units, y = CASES[case]
    model = _model(activation, units)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make())
    history = model.fit(X, y, batch_size=16, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0], history


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A compiled model with a safeops loss, saved as .keras and exported as a SavedModel."""
    path = tmp_path_factory.mktemp("saved")
    model = _model("sigmoid", 3)
    loss = losses.BinaryFocalCrossentropy(gamma=1.5, label_smoothing=0.1, check_finite=True)
    model.compile(optimizer="sgd", loss=loss)
    model.fit(X, BINARY, epochs=1, verbose=0)
    model.save(path / "model.keras")

    class Scorer(tf.Module):
        def __init__(self, model):
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([None, 3])])
        def loss(self, x, y):
            return losses.BinaryCrossentropy()(y, self.model(x))

    tf.saved_model.save(Scorer(model), str(path / "saved_model"))
    return model, path


def test_keras_file_round_trip_keeps_the_loss(saved):
    model, path = saved
    loaded = keras.saving.load_model(path / "model.keras")
    loss = loaded.loss
    assert type(loss) is losses.BinaryFocalCrossentropy
    assert loss.get_config() == model.loss.get_config()
    assert loss.gamma == 1.5 and loss.check_finite
    np.testing.assert_allclose(loaded.evaluate(X, BINARY, verbose=0), model.evaluate(X, BINARY, verbose=0),
                               rtol=1e-5)


# Losses passed to compile as functions (Keras' names and safeops-only ones) or as
# instances, with the head and targets each is used with.
COMPILED = {
    "binary_crossentropy": (losses.binary_crossentropy, "sigmoid", 3, BINARY),
    "categorical_crossentropy": (losses.categorical_crossentropy, "softmax", 3, ONEHOT),
    "sparse_categorical_crossentropy": (losses.sparse_categorical_crossentropy, "softmax", 3, CLASSES),
    "binary_focal_crossentropy": (losses.binary_focal_crossentropy, "sigmoid", 3, BINARY),
    "categorical_focal_crossentropy": (losses.categorical_focal_crossentropy, "softmax", 3, ONEHOT),
    "kl_divergence": (losses.kl_divergence, "softmax", 3, ONEHOT * 0.8 + 0.2 / 3),
    "poisson": (losses.poisson, "softplus", 3, np.round(np.abs(X[:, :3]) * 2)),
    "gaussian_nll": (losses.gaussian_nll, None, 6, X[:, :3]),
    "kl_divergence_with_logits": (losses.kl_divergence_with_logits, None, 3, X[:, :3] * 2),
    "tversky_loss": (losses.tversky_loss, "sigmoid", 3, BINARY),
    "info_nce": (losses.info_nce, None, 6, np.zeros(32, "float32")),
    "LossFunctionWrapper": (losses.LossFunctionWrapper(losses.categorical_crossentropy, label_smoothing=0.1),
                            "softmax", 3, ONEHOT),
    "SparseCategoricalCrossentropy": (
        losses.SparseCategoricalCrossentropy(axis=1, dtype="float64"), "softmax", 3, CLASSES),
    "GaussianNLL": (losses.GaussianNLL(min_variance=1e-2), None, 6, X[:, :3]),
    "CategoricalGeneralizedCrossEntropy": (
        losses.CategoricalGeneralizedCrossEntropy(q=0.7), "softmax", 3, CLASSES),
}


@pytest.mark.parametrize("case", sorted(COMPILED))
def test_keras_file_reloads_the_safeops_loss_without_custom_objects(case, tmp_path):
    """Keras used to reload a function by its bare name: its own loss of that name, or none."""
    loss, activation, units, y = COMPILED[case]
    model = _model(activation, units)
    model.compile(optimizer="sgd", loss=loss)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    if isinstance(loss, keras.losses.Loss):
        assert type(loaded.loss) is type(loss)
        assert loaded.loss.get_config() == loss.get_config()
        assert loaded.loss.fn is loss.fn and loaded.loss.dtype == loss.dtype
    else:
        assert loaded.loss is loss
    np.testing.assert_allclose(loaded.evaluate(X, y, verbose=0), model.evaluate(X, y, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(c for c in COMPILED if c.islower()))
def test_registered_names_resolve_to_the_safeops_function(name):
    fn = getattr(losses, name)
    assert keras.saving.get_registered_name(fn) == f"safeops>{name}"
    assert keras.losses.deserialize(f"safeops>{name}") is fn
    assert keras.losses.get(keras.losses.serialize(fn)) is fn
    assert losses.get(f"safeops>{name}") is fn
    assert losses.get(keras.losses.serialize(fn)) is fn
    assert keras.saving.get_registered_name(losses.LossFunctionWrapper) == "safeops>LossFunctionWrapper"


@pytest.mark.parametrize("op", ["math.softplus", "math.log", "math.l2_normalize", "nn.log_softmax",
                                "math.log_sigmoid"])
def test_a_lambda_layer_saves_and_reloads_the_safeops_op(op, tmp_path):
    """Saved by its bare name, softplus came back as Keras' activation and log did not load at all."""
    import safeops

    module, name = op.split(".")
    fn = getattr(getattr(safeops, module), name)
    assert keras.saving.get_registered_name(fn) == f"safeops>{name}"
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(fn, output_shape=(3,))(inputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=False)
    assert loaded.layers[-1].function is fn
    x = np.array([[0.5, 1.0, 2.0]], "float32")
    np.testing.assert_array_equal(loaded(x), model(x))


def test_saved_model_export_reload_and_call(saved):
    model, path = saved
    reloaded = tf.saved_model.load(str(path / "saved_model"))
    expected = losses.BinaryCrossentropy()(BINARY, model(X))
    np.testing.assert_allclose(reloaded.loss(X, BINARY), expected, rtol=1e-6)


def test_saved_model_keeps_the_recovered_logits_baked_in(tmp_path):
    """Rule 3 runs at trace time, so the exported graph holds the exact loss."""

    class Extreme(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1])])
        def loss(self, z):
            return losses.binary_crossentropy(tf.ones_like(z), tf.sigmoid(z))

    tf.saved_model.save(Extreme(), str(tmp_path))
    reloaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(reloaded.loss(tf.constant([[-100.0]])), [100.0], rtol=1e-6)
    # The outputs of a reloaded model are plain eager tensors: no record, so
    # the loss on them takes the clamped path (documented).
    np.testing.assert_allclose(losses.binary_crossentropy([[1.0]], tf.sigmoid(tf.constant([[-100.0]]))),
                               [-np.log(np.finfo(np.float32).tiny)], rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_policies(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = _model("sigmoid", 3)
        assert model.layers[-1].compute_dtype != "float32"
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=losses.BinaryCrossentropy())
        history = model.fit(X, BINARY, batch_size=16, epochs=3, verbose=0).history["loss"]
        assert np.all(np.isfinite(history)) and history[-1] < history[0]
        # A saturated half-precision sigmoid: safeops recovers the logits
        # through its own widening cast, Keras' class loses them.
        z = tf.constant([[-100.0]], model.layers[-1].compute_dtype)
        p = keras.activations.sigmoid(z)
        ours = float(losses.BinaryCrossentropy()(np.ones((1, 1)), p))
        theirs = float(keras.losses.BinaryCrossentropy()(np.ones((1, 1)), p))
        assert ours == pytest.approx(100.0, rel=1e-2) and theirs < 20
    finally:
        keras.config.set_dtype_policy(previous)
    assert keras.config.dtype_policy().name == previous.name


@pytest.mark.parametrize("make", [lambda: losses.loss_class(_squared_error)(), losses.BinaryCrossentropy],
                         ids=["loss_class", "BinaryCrossentropy"])
def test_mixed_float16_loss_scaling_sees_the_overflow(make):
    """A float16 y_pred's saturated gradient hid the loss scale's overflow: every step clipped, scale kept."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        x = np.ones((1, 1), np.float32)
        # A float16 output far from its target; a tanh-made sigmoid hides its logits from the BCE.
        if make is losses.BinaryCrossentropy:
            y, lr, exact = np.ones((1, 1), np.float32), 0.01, None
            activation = lambda t: 0.5 + 0.5 * tf.tanh(t / 2)  # noqa: E731
        else:
            y, activation, lr, exact = np.full((1, 1), 100.0, np.float32), None, 1e-4, 1e-4 * 2 * 100
        dense = keras.layers.Dense(1, activation=activation, bias_initializer="zeros",
                                   kernel_initializer=keras.initializers.Constant(-4.0))
        model = keras.Sequential([keras.Input((1,)), dense])
        if activation is None:
            dense.kernel.assign([[0.0]])
        model.compile(optimizer=keras.optimizers.SGD(lr), loss=make())
        assert model.layers[-1].compute_dtype == "float16"
        kernels = [float(dense.kernel.numpy()[0, 0])]
        for _ in range(10):
            model.fit(x, y, epochs=1, verbose=0)
            kernels.append(float(dense.kernel.numpy()[0, 0]))
        steps = np.diff(kernels)
        # Keras' loss-scale optimizer skipped the steps that overflowed and lowered its scale...
        assert float(model.optimizer.dynamic_scale) < 2.0 ** 15
        # ...and then took the exact steps (before: a step 100 times too small, every time).
        if exact is None:   # -d/dw -log(sigmoid(w)) at w = -4: sigmoid(4); -1/p = -55 overflowed the scale
            exact = lr / (1 + np.exp(-4.0))
        taken = steps[steps != 0]
        assert len(taken) >= 2 and np.allclose(taken[:2], exact, rtol=2e-2)
    finally:
        keras.config.set_dtype_policy(previous)


def _squared_error(y_true, y_pred):
    return tf.reduce_mean(tf.square(y_true - y_pred), axis=-1)


keras.saving.register_keras_serializable("safeops_tests")(_squared_error)


def test_jit_compile_in_compile():
    for case in ("CategoricalCrossentropy", "BinaryFocalCrossentropy", "GaussianNLL", "TverskyLoss"):
        make, activation, units, y = CASES[case]
        model = _model(activation, units)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=make(), jit_compile=True)
        history = model.fit(X, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"]
        assert np.all(np.isfinite(history)), case
        eager = _model(activation, units)
        eager.compile(optimizer=keras.optimizers.SGD(0.05), loss=make(), jit_compile=False)
        np.testing.assert_allclose(history, eager.fit(X, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"],
                                   rtol=1e-4, err_msg=case)


_MIRRORED = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from safeops import losses

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=losses.CategoricalFocalCrossentropy())
        return model

    single = build()
    single_loss = single.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build()
    mirrored_loss = mirrored.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"]

    # Per-replica losses and gradients of a custom loop, summed across replicas.
    keras.utils.set_random_seed(0)
    with strategy.scope():
        dense = keras.layers.Dense(3, activation="softmax")
        dense.build((None, 4))
    loss_fn = losses.CategoricalFocalCrossentropy()
    dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(16))

    @tf.function
    def step(batch):
        def replica(xb, yb):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb, dense(xb))
            return loss, tape.gradient(loss, dense.trainable_variables)
        loss, grads = strategy.run(replica, args=batch)
        total = strategy.reduce("SUM", loss, axis=None)
        return total, [strategy.reduce("SUM", g, axis=None) for g in grads]

    total, grads = step(next(iter(dist)))
    with tf.GradientTape() as tape:
        reference = loss_fn(y, dense(x))
    reference_grads = tape.gradient(reference, dense.trainable_variables)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "fit_loss": [single_loss[0], mirrored_loss[0]],
        "weights_diff": max(float(np.max(np.abs(a - b)))
                            for a, b in zip(single.get_weights(), mirrored.get_weights())),
        "loop_loss": [float(total), float(reference)],
        "grads_diff": max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(grads, reference_grads)),
    }))
""")


def test_mirrored_strategy_matches_one_device():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True, env=env,
                          timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    np.testing.assert_allclose(*result["fit_loss"], rtol=1e-5)
    assert result["weights_diff"] < 1e-6
    np.testing.assert_allclose(*result["loop_loss"], rtol=1e-5)
    assert result["grads_diff"] < 1e-6

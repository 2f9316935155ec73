"""Drop-in imports (contract C5): switching ``tf.math``, ``tf.nn`` or ``keras.losses`` to safeops
breaks no line of the caller, including the lines that use names safeops does not replace."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops.losses
import safeops.math
import safeops.nn

PACKAGES = [(safeops.math, tf.math, "tf.math"), (safeops.nn, tf.nn, "tf.nn"),
            (safeops.losses, keras.losses, "keras.losses")]


@pytest.mark.parametrize("package, original, label", PACKAGES, ids=[p[2] for p in PACKAGES])
def test_every_public_name_of_the_original_resolves(package, original, label):
    names = [n for n in dir(original) if not n.startswith("_")]
    assert len(names) > 20
    for name in names:
        ours = getattr(package, name)
        if name in package.__all__:
            assert ours is not getattr(original, name), f"{label}.{name} is replaced by safeops"
        else:
            assert ours is getattr(original, name), f"{label}.{name} is not the original's"
    assert set(names) | set(package.__all__) <= set(dir(package))


@pytest.mark.parametrize("package, original, label", PACKAGES, ids=[p[2] for p in PACKAGES])
def test_unknown_and_private_names_raise_attribute_error(package, original, label):
    message = rf"'{package.__name__}' has no attribute 'no_such_op' \(nor has {label}\)"
    with pytest.raises(AttributeError, match=message):
        package.no_such_op  # noqa: B018
    assert not hasattr(package, "_no_such_helper")
    assert getattr(package, "no_such_op", None) is None


def test_forwarded_ops_compute_what_the_original_computes():
    x = tf.constant([[1.0, -2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(safeops.math.reduce_sum(x, axis=1).numpy(), [-1.0, 7.0])
    np.testing.assert_array_equal(safeops.nn.relu(x).numpy(), [[1.0, 0.0], [3.0, 4.0]])
    mse = safeops.losses.MeanSquaredError()
    assert float(mse(tf.zeros([2, 2]), x)) == pytest.approx(7.5)


@pytest.mark.parametrize("identifier, expected", [
    ("binary_crossentropy", safeops.losses.binary_crossentropy),
    ("categorical_crossentropy", safeops.losses.categorical_crossentropy),
    ("sparse_categorical_crossentropy", safeops.losses.sparse_categorical_crossentropy),
    ("kld", safeops.losses.kl_divergence),
    ("poisson", safeops.losses.poisson),
])
def test_get_resolves_a_replaced_function_to_safeops(identifier, expected):
    assert safeops.losses.get(identifier) is expected


def test_get_builds_safeops_classes_from_keras_identifiers():
    loss = safeops.losses.get("CategoricalCrossentropy")
    assert type(loss) is safeops.losses.CategoricalCrossentropy
    config = {"class_name": "BinaryCrossentropy", "config": {"from_logits": True, "label_smoothing": 0.1}}
    loss = safeops.losses.get(config)
    assert type(loss) is safeops.losses.BinaryCrossentropy
    assert loss.get_config()["from_logits"] is True
    assert loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    # Finite where Keras' epsilon clip is inactive and safeops' is not needed, equal to Keras'.
    y, logits = tf.constant([[1.0, 0.0]]), tf.constant([[2.0, -1.0]])
    expected = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1)(y, logits)
    np.testing.assert_allclose(loss(y, logits).numpy(), expected.numpy(), rtol=1e-6)


def test_get_leaves_other_identifiers_to_keras():
    assert safeops.losses.get("mse") is keras.losses.mean_squared_error
    assert type(safeops.losses.get("Huber")) is keras.losses.Huber
    assert safeops.losses.get(None) is None

    def custom(y_true, y_pred):
        return y_pred

    assert safeops.losses.get(custom) is custom
    keras_function = keras.losses.categorical_crossentropy
    assert safeops.losses.get(keras_function) is keras_function  # an explicit callable is the caller's choice
    with pytest.raises(ValueError, match="Could not interpret loss identifier"):
        safeops.losses.get("no_such_loss")

"""The seeds' story on real data: a hand-written cross-entropy goes NaN, safeops does not.

scikit-learn's bundled ``load_digits`` (1797 8x8 images, no download) fed
as raw pixel intensities, a small Keras classifier with a softmax output,
plain SGD at an effectively high learning rate, and the loss everyone
writes first::

    loss = -tf.reduce_sum(y * tf.math.log(p), axis=-1)

A large step pushes some logit gap past ~87, the softmax of some class
underflows to 0, ``log(0) = -inf``, and ``0 * -inf`` turns the loss and the
gradient into NaN (even for a class whose label is 0): every weight is NaN
from then on. The same script with the one-word
drop-in ``safeops.math.log`` (clamped at ``tiny``, with a live gradient) keeps
training and reaches a good accuracy; ``safeops.losses.CategoricalCrossentropy``
would recover the logits from the softmax and be exact.

Run ``python -m examples.digits_nan``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import safeops.math as tfm  # noqa: E402

# Raw pixel intensities (0..16, the classic forgotten normalisation) and
# plain SGD at 0.1: in effect a high learning rate, and logits that grow
# past the float32 range of the softmax within the first epoch.
LEARNING_RATE = 0.1
BATCH_SIZE = 64
PIXEL_SCALE = 1.0


def _data(seed):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype("float32") / PIXEL_SCALE
    y = np.eye(10, dtype="float32")[digits.target]
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def _model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def run(use_safeops: bool, epochs: int = 10, seed: int = 0) -> dict:
    """Trains the digits classifier with the hand-written loss; ``log`` from safeops or TF.

    Args:
      use_safeops: Use ``safeops.math.log`` in the loss instead of ``tf.math.log``.
      epochs: Passes over the training set.
      seed: Seeds the split, the initial weights and the shuffling.

    Returns:
      ``dict(history=[per-epoch mean training loss], final_accuracy=test
      accuracy after training (NaN weights predict nothing: 0.0),
      went_nan=whether the loss became NaN or infinite)``.
    """
    log = tfm.log if use_safeops else tf.math.log

    def handwritten_cross_entropy(y_true, p):
        return -tf.reduce_sum(y_true * log(p), axis=-1)

    (x_train, y_train), (x_test, y_test) = _data(seed)
    model = _model(seed)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=handwritten_cross_entropy)
    history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0)
    losses = [float(v) for v in history.history["loss"]]
    went_nan = not all(np.isfinite(losses))
    p = model.predict(x_test, verbose=0)
    correct = np.argmax(p, -1) == np.argmax(y_test, -1)
    accuracy = float(np.mean(correct & np.all(np.isfinite(p), -1)))
    return {"history": losses, "final_accuracy": accuracy, "went_nan": went_nan}


def main() -> None:
    print("digits (scikit-learn), softmax output, loss -sum(y * log(p)), SGD lr", LEARNING_RATE)
    for use_safeops, label in ((False, "tf.math.log    "), (True, "safeops.math.log")):
        result = run(use_safeops)
        first_nan = next((i + 1 for i, v in enumerate(result["history"]) if not np.isfinite(v)), None)
        story = f"NaN from epoch {first_nan}" if first_nan else "finite throughout"
        print(f"  {label}: {story}; final loss {result['history'][-1]:.4g}, "
              f"test accuracy {result['final_accuracy']:.3f}")


if __name__ == "__main__":
    main()

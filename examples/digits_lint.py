"""Scenario (a): digits, a softmax output and a hand-written log loss.

The pattern ``-sum(y * log(softmax(z)))`` is the commonest NaN in Keras
code: once the network is confident and wrong, a probability underflows to
exactly 0, ``log(0) = -inf`` and the loss (and every gradient) turns NaN.

1. :func:`run_lint`: ``safeops.debug.lint`` flags ``log`` of a softmax output
   before any training, with the file and line, and names the safeops fix.
2. :func:`train` with the naive loss under ``NaNGuard('stop')``: the guard
   stops at the first non-finite step and keeps the offending batch and the
   weights from before it; :func:`run_locate` hands them to
   ``safeops.debug.locate_nonfinite``, which names the op that made the NaN.
3. :func:`train` with the drop-in (``safeops.math.log`` for ``tf.math.log``):
   the same model, seed and learning rate train to a finite loss.

Run ``python -m examples.digits_lint``.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

import safeops.math as tfm

LEARNING_RATE = 0.05
SEED = 1           # with this seed the naive loss goes NaN at the second step
EPOCHS = 5
BATCH_SIZE = 64


def load():
    """The 8x8 digits (1797 x 64, pixels 0..16), one-hot labels, 1400 for training."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = x.astype("float32")
    y = keras.utils.to_categorical(y, 10).astype("float32")
    return x[:1400], x[1400:], y[:1400], y[1400:]


def naive_log_loss(y_true, y_prob):
    """The hand-written cross-entropy on probabilities: NaN once a probability is 0."""
    return -tf.reduce_sum(y_true * tf.math.log(y_prob), axis=-1)


def safeops_log_loss(y_true, y_prob):
    """The same line with the drop-in ``safeops.math.log``: finite value, live gradient at 0."""
    return -tf.reduce_sum(y_true * tfm.log(y_prob), axis=-1)


def build_model(loss, seed: int = SEED) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation="relu", name="hidden"),
        keras.layers.Dense(10, activation="softmax", name="probabilities"),
    ])
    model.compile(keras.optimizers.SGD(LEARNING_RATE), loss=loss, metrics=["accuracy"])
    return model


def run_lint():
    """Lint findings for the naive and the safeops loss on the same model."""
    from safeops.debug import lint
    x_train, _, y_train, _ = load()
    naive = lint(build_model(naive_log_loss), x_train[:8], loss=naive_log_loss, print=False)
    fixed = lint(build_model(safeops_log_loss), x_train[:8], loss=safeops_log_loss, print=False)
    return naive, fixed


def train(loss, epochs: int = EPOCHS, seed: int = SEED) -> dict:
    """Trains under ``NaNGuard('stop')``; returns the run, the guard and the model."""
    from safeops.debug import NaNGuard
    x_train, x_test, y_train, y_test = load()
    model = build_model(loss, seed)
    guard = NaNGuard(policy="stop", verbose=0)
    history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, shuffle=False,
                        verbose=0, callbacks=[guard])
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"model": model, "guard": guard, "epoch_losses": history.history["loss"],
            "stopped": guard.stopped, "test_accuracy": float(accuracy)}


def run_locate(run: dict):
    """``locate_nonfinite`` on the batch the guard stopped at, at the weights from before it."""
    from safeops.debug import locate_nonfinite
    x, y, _ = keras.utils.unpack_x_y_sample_weight(run["guard"].bad_batch)
    return locate_nonfinite(run["model"], x, y)


def main() -> None:
    print("== (a) digits: softmax output + hand-written log loss, SGD at learning rate", LEARNING_RATE)
    naive_findings, fixed_findings = run_lint()
    print(f"1. lint on the naive loss: {len(naive_findings)} finding(s)")
    for f in naive_findings:
        print(f"   - {f.pattern}: {f.op_name} ({f.op_type}) at {f.location}\n"
              f"     {f.message}\n     fix: {f.fix}")
    print(f"   lint on the safeops loss: {len(fixed_findings)} finding(s)")
    naive = train(naive_log_loss)
    event = naive["guard"].events[0]
    print(f"\n2. training with the naive loss: stopped={naive['stopped']} at step {event.step}")
    print(event)
    report = run_locate(naive)
    print(f"   locate_nonfinite: {report.phase} pass, op {report.op_name} ({report.op_type}) at "
          f"{report.location}\n   cause: {report.cause}\n   fix: {report.fix}")
    fixed = train(safeops_log_loss)
    finite = all(math.isfinite(v) for v in fixed["epoch_losses"])
    print(f"\n3. the same line with safeops.math.log: epoch losses "
          f"{', '.join(f'{v:.3g}' for v in fixed['epoch_losses'])} (all finite: {finite}); "
          f"test accuracy {fixed['test_accuracy']:.3f}")


if __name__ == "__main__":
    main()

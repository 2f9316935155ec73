"""Scenario (b): unnormalised breast-cancer features, a ReLU MLP and a high learning rate.

The story, each step a function that returns data (the tests assert on it):

1. :func:`train_plain`: without a guard the loss goes NaN within a few steps.
2. :func:`train_guarded`: ``NaNGuard(policy='rollback')`` catches the
   divergence, puts back the last finite weights, lowers the learning rate
   and training finishes with a finite, falling loss. It needs a learning
   rate 10^4 times smaller to stay finite on raw features, so it learns
   little: the guard keeps the run alive, the cure is in the data.
3. :func:`diagnose`: ``doctor`` ranks the causes; first comes the input
   scale, with the fix: standardisation fitted on the training split only.
4. :func:`train_standardised`: with that fix the same model at the same
   learning rate trains stably and well.

Run ``python -m examples.breast_cancer_guard``. Everything is seeded; the
whole story takes a few seconds on a CPU.
"""

from __future__ import annotations

import math

import keras
import numpy as np

LEARNING_RATE = 0.01   # fine for standardised inputs, far too high for raw ones
EPOCHS = 10
BATCH_SIZE = 32
SEED = 0


def load(seed: int = SEED):
    """The breast-cancer data (569 x 30, features from 0.001 to 4254), split 75/25, stratified."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    data = load_breast_cancer()
    x = data.data.astype("float32")
    y = data.target.astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_train, x_test, y_train, y_test, list(data.feature_names)


def build_model(seed: int = SEED, learning_rate: float = LEARNING_RATE) -> keras.Model:
    """A 30-32-16-1 ReLU network, squared error on the 0/1 label, plain SGD."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((30,)),
        keras.layers.Dense(32, activation="relu", name="hidden_1"),
        keras.layers.Dense(16, activation="relu", name="hidden_2"),
        keras.layers.Dense(1, name="score"),
    ])
    model.compile(keras.optimizers.SGD(learning_rate), loss="mse", metrics=["accuracy"])
    return model


def _fit(model, x, y, callbacks=(), epochs=EPOCHS):
    losses = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, shuffle=False, verbose=0,
                        callbacks=[*callbacks, record])
    return history.history["loss"], losses


def train_plain(seed: int = SEED) -> dict:
    """Raw features, no guard: returns the epoch losses and the first non-finite step."""
    x_train, _, y_train, _, _ = load(seed)
    model = build_model(seed)
    epoch_losses, batch_losses = _fit(model, x_train, y_train,
                                      callbacks=[keras.callbacks.TerminateOnNaN()])
    first_bad = next((i for i, v in enumerate(batch_losses) if not math.isfinite(v)), None)
    return {"epoch_losses": epoch_losses, "batch_losses": batch_losses, "first_nonfinite_step": first_bad,
            "weights_finite": all(np.isfinite(w).all() for w in model.get_weights())}


def train_guarded(seed: int = SEED) -> dict:
    """Raw features under ``NaNGuard(policy='rollback')``: returns the guard and the run."""
    from safeops.debug import NaNGuard
    x_train, x_test, y_train, y_test, _ = load(seed)
    model = build_model(seed)
    guard = NaNGuard(policy="rollback", factor=0.1, spike_factor=100.0, verbose=0)
    epoch_losses, _ = _fit(model, x_train, y_train, callbacks=[guard])
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"guard": guard, "epoch_losses": epoch_losses, "test_accuracy": float(accuracy),
            "final_learning_rate": float(np.asarray(model.optimizer.learning_rate)),
            "weights_finite": all(np.isfinite(w).all() for w in model.get_weights())}


def diagnose(seed: int = SEED, verbose: bool = False):
    """``doctor`` on the raw data: returns its report (and leaves the model untouched)."""
    from safeops.debug import doctor
    x_train, _, y_train, _, names = load(seed)
    model = build_model(seed)
    return doctor(model, (x_train, y_train), steps=20, feature_names=names, verbose=verbose)


def train_standardised(seed: int = SEED) -> dict:
    """The fix: Normalization adapted on the training split only, same model and learning rate."""
    x_train, x_test, y_train, y_test, _ = load(seed)
    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(x_train)                      # statistics of the training split only
    x_train_n, x_test_n = np.asarray(norm(x_train)), np.asarray(norm(x_test))
    model = build_model(seed)
    epoch_losses, batch_losses = _fit(model, x_train_n, y_train)
    _, accuracy = model.evaluate(x_test_n, y_test, verbose=0)
    return {"epoch_losses": epoch_losses, "batch_losses": batch_losses, "test_accuracy": float(accuracy)}


def main() -> None:
    from safeops.debug import check_inputs
    print("== (b) breast cancer: raw features, ReLU MLP, SGD at learning rate", LEARNING_RATE)
    plain = train_plain()
    # Keras' logs["loss"] after a batch is the epoch's running mean, not that batch's loss.
    print(f"1. no guard: running mean loss after each batch "
          f"{', '.join(f'{v:.3g}' for v in plain['batch_losses'][:4])}"
          f" -> non-finite at step {plain['first_nonfinite_step']}; TerminateOnNaN stops, weights finite: "
          f"{plain['weights_finite']}")
    guarded = train_guarded()
    guard = guarded["guard"]
    print(f"\n2. NaNGuard(policy='rollback'): {len(guard.events)} event(s), "
          f"{guard.rollbacks} rollback(s); first event:")
    print(guard.events[0])
    print(f"   epoch losses: {', '.join(f'{v:.3g}' for v in guarded['epoch_losses'])}")
    print(f"   training finished with finite weights: {guarded['weights_finite']}, learning rate now "
          f"{guarded['final_learning_rate']:.3g}, test accuracy {guarded['test_accuracy']:.3f}:\n"
          f"   the guard keeps the run alive, but at that learning rate it learns little; the cause is "
          f"in the data")
    x_train, x_test, *_, names = load()
    print("\n3. check_inputs, then doctor:")
    report = check_inputs(x_train, x_test, feature_names=names)
    print("\n".join(str(report).splitlines()[:len(report.findings) * 2 + 1]))
    print()
    print(diagnose())
    fixed = train_standardised()
    print(f"\n4. standardised on the training split, same model and learning rate: epoch losses "
          f"{', '.join(f'{v:.3g}' for v in fixed['epoch_losses'])}; test accuracy "
          f"{fixed['test_accuracy']:.3f}")


if __name__ == "__main__":
    main()

"""NaNGuard: detection, the three policies, bitwise restores, learning rates, TensorBoard."""

from __future__ import annotations

import glob
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from safeops.debug import NaNGuard, ScaledSchedule

BATCH = 16


def _data(n_batches=6, seed=0, poison=None, where="x"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_batches * BATCH, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], "float32"))[:, None]
    if poison is not None:
        target = x if where == "x" else y
        target[poison * BATCH + 3, 0] = np.nan
    return x, y


def _model(optimizer=None, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="first"),
                              keras.layers.Dense(1, name="out")])
    model.compile(optimizer or keras.optimizers.Adam(0.01), loss="mse")
    return model


def _state(model):
    return ([v.numpy().copy() for v in model.variables],
            [v.numpy().copy() for v in model.optimizer.variables])


class _Recorder(keras.callbacks.Callback):
    """Placed after the guard: the state every later callback sees at each batch end."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_train_batch_end(self, batch, logs=None):
        self.states.append(_state(self.model))


def _bitwise_equal(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="policy"):
        NaNGuard("retry")
    with pytest.raises(ValueError, match="factor"):
        NaNGuard("rollback", factor=1.5)
    with pytest.raises(ValueError, match="checkpoint_every"):
        NaNGuard("rollback", checkpoint_every=0)
    for arg, bad in [("factor", "0.1"), ("checkpoint_every", True), ("max_rollbacks", -1),
                     ("max_rollbacks", 2.0), ("max_loss", -1.0), ("max_loss", "1e3"),
                     ("spike_factor", 0.5), ("spike_factor", float("nan")),
                     ("log_dir", 5), ("verbose", "yes"), ("verbose", 3)]:
        with pytest.raises(ValueError, match=rf"NaNGuard: {arg} must be .*, got {re.escape(repr(bad))}"):
            NaNGuard("rollback", **{arg: bad})


class _CountingIdentity(keras.layers.Layer):
    """Counts its Python calls: once per trace of the train step (or per eager call)."""

    calls = 0

    def call(self, x):
        type(self).calls += 1
        return x


def test_guarded_fit_traces_the_step_a_bounded_number_of_times():
    """A retrace per batch (a Python value that changes in the step's signature) would make every step
    pay a trace; the guard must leave the step traced a few times, not once per batch (24 here)."""
    _CountingIdentity.calls = 0
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), _CountingIdentity(), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)).astype("float32"), rng.normal(size=(60, 1)).astype("float32")
    guard = NaNGuard(policy="rollback")
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[guard])   # 8 batches
    traced = _CountingIdentity.calls
    assert 1 <= traced <= 4 and not guard.events
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[guard])
    assert _CountingIdentity.calls - traced <= 2


def test_scaled_schedule_refuses_what_fails_at_the_first_step():
    """ScaledSchedule(0.1) was accepted and failed at the optimizer's first step; scale=-1 flipped it."""
    with pytest.raises(TypeError, match=r"ScaledSchedule: schedule must be a learning-rate schedule"):
        ScaledSchedule(0.1)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    for bad in (-1.0, 0.0, float("inf"), "a", True):
        with pytest.raises(ValueError, match=r"ScaledSchedule: scale must be a finite number > 0, got"):
            ScaledSchedule(schedule, bad)
    assert float(ScaledSchedule(schedule, 0.5)(0)) == pytest.approx(0.05)


def test_skip_is_exactly_training_without_the_batch():
    x, y = _data(poison=2)
    guarded = _model()
    guard = NaNGuard("skip", verbose=0)
    history = guarded.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])

    keep = np.r_[0:2 * BATCH, 3 * BATCH:len(x)]
    reference = _model()
    reference.fit(x[keep], y[keep], batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[NaNGuard("skip", verbose=0)])
    assert [e.action for e in guard.events] == ["skip"]
    assert _bitwise_equal(_state(guarded)[0], _state(reference)[0])
    assert _bitwise_equal(_state(guarded)[1], _state(reference)[1])
    # The running loss of the epoch does not contain the skipped batch.
    assert math.isfinite(history.history["loss"][0])


def test_event_names_layer_and_batch_statistics():
    x, y = _data(poison=1)
    model = _model()
    guard = NaNGuard("skip", verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    event = guard.events[0]
    assert (event.epoch, event.batch, event.step) == (0, 1, 1)
    assert "non-finite" in event.trigger
    assert event.nonfinite_weights[0] == "first"          # forward order: first layer first
    assert event.nonfinite_gradients[0] == "out"           # backward order: nearest the loss first
    assert event.batch_stats["x"]["n_nan"] == 1 and event.batch_stats["x"]["shape"] == (BATCH, 4)
    assert event.batch_stats["y"]["n_nan"] == 0
    assert "NaN/inf" in event.cause and "inputs" in event.cause
    assert np.isnan(np.asarray(guard.bad_batch[0])).sum() == 1
    assert "first" in str(event) and "batch x" in str(event)


def test_rollback_restores_checkpoint_bitwise_and_lowers_float_learning_rate():
    x, y = _data(n_batches=6, poison=3)
    model = _model(keras.optimizers.Adam(0.01))
    guard = NaNGuard("rollback", factor=0.5, checkpoint_every=1, verbose=0)
    recorder = _Recorder()
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard, recorder])
    (event,) = guard.events
    assert event.action == "rollback" and event.step == 3 and event.restored_to_step == 3
    weights_ckpt, opt_ckpt = recorder.states[2]      # the state after the last finite batch
    weights_now, opt_now = recorder.states[3]        # what the guard left after the bad batch
    assert _bitwise_equal(weights_now, weights_ckpt)
    lr_index = [i for i, v in enumerate(model.optimizer.variables) if "learning_rate" in v.path]
    others = [i for i in range(len(opt_now)) if i not in lr_index]
    assert _bitwise_equal([opt_now[i] for i in others], [opt_ckpt[i] for i in others])
    # checkpoint_every=1: the guard's checkpoint is the state after the last (finite) batch.
    assert _bitwise_equal(guard.checkpoint_weights(), recorder.states[-1][0])
    assert _bitwise_equal(guard.checkpoint_optimizer_variables(), recorder.states[-1][1])
    assert event.learning_rate_before == pytest.approx(0.01)
    assert event.learning_rate_after == pytest.approx(0.005)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.005)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_rollback_goes_to_epoch_checkpoint_and_gives_up_after_max_rollbacks():
    x, y = _data(n_batches=4)
    y[:] = np.nan                                  # every batch is bad
    model = _model(keras.optimizers.SGD(0.1))
    initial = _state(model)[0]
    guard = NaNGuard("rollback", factor=0.1, max_rollbacks=2, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[guard])
    assert [e.action for e in guard.events] == ["rollback", "rollback", "give_up"]
    assert guard.stopped and model.stop_training
    assert _bitwise_equal(_state(model)[0], initial)   # the checkpoint at the start of training
    assert guard.events[1].learning_rate_after == pytest.approx(0.001)
    assert "NaN/inf" in guard.events[0].cause and "targets" in guard.events[0].cause


def test_stop_restores_pre_batch_weights_and_stops():
    x, y = _data(n_batches=5, poison=2)
    model = _model()
    recorder = _Recorder()
    guard = NaNGuard("stop", verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[guard, recorder])
    assert guard.stopped and len(guard.events) == 1 and len(recorder.states) == 3
    assert _bitwise_equal(recorder.states[2][0], recorder.states[1][0])
    assert guard.diagnosis.startswith("NaNGuard: non-finite")


def test_nan_gradient_with_finite_loss_is_caught():
    # The norm of an all-zero vector: finite loss, NaN gradient (0 * inf).
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(3, kernel_initializer="ones", bias_initializer="zeros", name="proj")(inputs)
    norm = keras.layers.Lambda(lambda t: tf.sqrt(tf.reduce_sum(tf.square(t), -1, keepdims=True)),
                               name="norm")(h)
    model = keras.Model(inputs, norm)
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    x = np.zeros((8, 3), "float32")
    y = np.ones((8, 1), "float32")
    guard = NaNGuard("stop", verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[guard])
    (event,) = guard.events
    assert event.trigger == "non-finite weights"
    assert math.isfinite(event.loss) and math.isfinite(event.loss_before)
    assert event.nonfinite_gradients == ["proj"]
    assert "gradient" in event.cause


def test_rollback_with_schedule_scales_it(tmp_path):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=10, decay_rate=0.9)
    model = _model(keras.optimizers.SGD(schedule))
    x, y = _data(n_batches=4, poison=2)
    guard = NaNGuard("rollback", factor=0.1, checkpoint_every=1, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    wrapped = model.optimizer._learning_rate
    assert isinstance(wrapped, ScaledSchedule)
    assert float(wrapped.scale.numpy()) == pytest.approx(0.1)
    step = model.optimizer.iterations
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1 * float(schedule(step)), rel=1e-6)
    restored = ScaledSchedule.from_config(wrapped.get_config())
    assert float(restored(step)) == pytest.approx(float(wrapped(step)), rel=1e-6)
    # The wrapper stays on the optimizer and survives .keras saving.
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer._learning_rate, ScaledSchedule)
    assert float(loaded.optimizer._learning_rate.scale.numpy()) == pytest.approx(0.1)


def test_train_function_is_put_back_and_clean_runs_have_no_event():
    x, y = _data()
    model = _model()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    original = model.train_function
    guard = NaNGuard("rollback", verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[guard])
    assert guard.events == [] and not guard.stopped
    assert model.train_function is original


def test_events_reach_tensorboard(tmp_path):
    x, y = _data(poison=1)
    model = _model()
    guard = NaNGuard("skip", log_dir=str(tmp_path), verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    tags = {}
    for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                tags[value.tag] = (value.metadata.plugin_data.plugin_name,
                                   tf.make_ndarray(value.tensor), event.step)
    assert tags["safeops.NaNGuard/events"][:2] == ("scalars", 1.0)
    assert tags["safeops.NaNGuard/learning_rate"][0] == "scalars"
    plugin, text, step = tags["safeops.NaNGuard/event"]
    assert plugin == "text" and step == 1 and b"epoch 0, batch 1" in text.item()


def test_loss_spike_counts_as_divergence():
    x, y = _data(n_batches=6)
    y[4 * BATCH:5 * BATCH] *= 1e5                  # batch 4's loss is ~1e10 times the others
    model = _model()
    guard = NaNGuard("skip", spike_factor=100.0, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    assert [(e.step, e.trigger) for e in guard.events] == [(4, "loss spike")]
    assert math.isfinite(guard.events[0].loss) and guard.events[0].loss > 1e6
    # Without the option the same run has no event: spikes are opt-in.
    model = _model()
    quiet = NaNGuard("skip", verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[quiet])
    assert quiet.events == []


def test_guarded_run_computes_what_an_unguarded_one_does():
    """Keras' step called with the kept batches was traced for their concrete shapes, not the
    dataset's: an embedding's weights drifted by 1.5e-8 from the unguarded run's after 8 Adam steps."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, size=(64, 5)).astype("int32")
    y = rng.normal(size=(64, 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)

    def trained(callbacks):
        keras.utils.set_random_seed(2)
        model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(50, 4),
                                  keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(0.01), loss="mse")
        model.fit(data, epochs=2, verbose=0, callbacks=callbacks)
        return model.get_weights()

    assert _bitwise_equal(trained([NaNGuard("skip", verbose=0)]), trained([]))


def test_negative_losses_are_no_spike():
    """A ratio to a negative median flagged 12 of 16 healthy cosine-similarity batches."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = x @ rng.normal(size=(4, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(keras.optimizers.SGD(0.1), loss="cosine_similarity")
    guard = NaNGuard("skip", spike_factor=10.0, verbose=0)
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    assert history.history["loss"][-1] < 0 and guard.events == []


def test_steps_per_execution_above_one():
    x, y = _data(n_batches=6, poison=3)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="first"),
                              keras.layers.Dense(1, name="out")])
    model.compile(keras.optimizers.SGD(0.01), loss="mse", steps_per_execution=2)
    guard = NaNGuard("skip", verbose=0)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    (event,) = guard.events                        # the execution holding batches 2 and 3
    assert event.batch_stats["x"]["shape"] == (2 * BATCH, 4) and event.batch_stats["x"]["n_nan"] == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert math.isfinite(history.history["loss"][0])


# --------------------------------------------------------------------------- audit regressions


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.first = keras.layers.Dense(8, activation="relu", name="first")
        self.out = keras.layers.Dense(1, name="out")

    def call(self, x):
        return self.out(self.first(x))


@pytest.mark.parametrize("kind", ["subclassed", "sequential_without_input"])
def test_model_built_by_fit_is_guarded_from_the_first_batch(kind):
    # Keras builds such a model (and its optimizer) while tracing the first step; the guard used
    # to build the optimizer on the still empty variable list, and fit then failed.
    x, y = _data(n_batches=4, poison=0)
    keras.utils.set_random_seed(0)
    model = SubclassedNet() if kind == "subclassed" else keras.Sequential(
        [keras.layers.Dense(8, activation="relu", name="first"), keras.layers.Dense(1, name="out")])
    model.compile(keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    guard = NaNGuard("skip", verbose=0)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    assert [(e.batch, e.action) for e in guard.events] == [(0, "skip")]    # the very first batch
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert all(math.isfinite(v[0]) for v in history.history.values())


def test_model_that_cannot_be_built_ahead_is_guarded_after_its_first_step(monkeypatch):
    # If Keras' own ahead-of-step build fails, the model builds in its first step as without the
    # guard; guarding starts at the end of that step.
    x, y = _data(n_batches=4, poison=2)
    keras.utils.set_random_seed(0)
    model = SubclassedNet()
    model.compile(keras.optimizers.SGD(0.01), loss="mse")

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot be built symbolically")

    monkeypatch.setattr(model, "_symbolic_build", refuse)
    guard = NaNGuard("skip", verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    assert [(e.batch, e.action) for e in guard.events] == [(2, "skip")]
    assert all(np.isfinite(w).all() for w in model.get_weights())


_MIRRORED_SCRIPT = r"""
import numpy as np, tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from safeops.debug import NaNGuard

def run(x, y, policy):
    keras.utils.set_random_seed(0)
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="h"),
                                  keras.layers.Dense(1, name="out")])
        model.compile(keras.optimizers.SGD(0.01), loss="mse")
    guard = NaNGuard(policy, verbose=0)
    model.fit(x, y, batch_size=16, shuffle=False, epochs=1, verbose=0, callbacks=[guard])
    return model, guard

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 4)).astype("float32"); y = x.sum(1, keepdims=True); x[37, 0] = np.nan
model, guard = run(x, y, "skip")
(event,) = guard.events
assert (event.batch, event.action) == (2, "skip"), str(event)
assert event.nonfinite_gradients == ["out", "h"], str(event)        # the recompute ran
assert event.batch_stats["x"]["shape"] == (16, 4) and event.batch_stats["x"]["n_nan"] == 1
assert "inputs" in event.cause and not event.notes, str(event)
assert np.shape(guard.bad_batch[0]) == (16, 4)
keep = np.r_[0:32, 48:64]
reference, _ = run(x[keep], y[keep], "skip")
for a, b in zip(model.get_weights(), reference.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-6)
for policy in ("rollback",):
    model, guard = run(x, y, policy)
    assert [e.action for e in guard.events] == [policy]
    assert all(np.isfinite(w).all() for w in model.get_weights())
print("MIRRORED OK")
"""


def test_mirrored_strategy_is_diagnosed_not_crashed(tmp_path):
    # Two logical CPUs must be configured before any TF op: a fresh interpreter does it.
    import os
    import subprocess
    import sys

    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "MIRRORED OK" in done.stdout, done.stdout + done.stderr[-3000:]


@pytest.mark.parametrize("case", ["unscaled_column", "huge_learning_rate"])
def test_divergence_within_one_step_is_blamed_on_learning_rate(case):
    # One finite loss, then NaN: too few losses for the loss-history rule; the weights' growth
    # since the start of fit tells a diverged run from a bad op.
    x, y = _data(n_batches=6)
    lr = 0.01
    if case == "unscaled_column":
        x[:, 2] = np.abs(x[:, 2]) * 2e6      # e.g. an income in dollars
    else:
        lr = 1e25
    model = _model(keras.optimizers.SGD(lr))
    guard = NaNGuard("stop", verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    (event,) = guard.events
    assert event.step <= 2 and len(event.recent_losses) <= 2
    assert event.weight_growth > 1e3
    assert event.cause.startswith("training diverged") and "learning rate" in event.cause
    assert "loss itself" not in event.cause and "forward pass" not in event.cause
    if case == "unscaled_column":
        assert "input column #2" in event.cause and "standardise" in event.fix
    else:
        assert "standardise" not in event.fix


def test_log_of_zero_in_the_loss_is_still_blamed_on_the_loss():
    x, y = _data(n_batches=4)
    y = np.abs(y) + 1.0
    y[2 * BATCH + 5] = 0.0                          # log(0) in batch 2 only

    def log_loss(y_true, y_pred):
        return tf.reduce_mean(-tf.math.log(y_true) + 0.0 * y_pred, axis=-1)

    model = _model(keras.optimizers.SGD(0.01))
    model.compile(keras.optimizers.SGD(0.01), loss=log_loss)
    guard = NaNGuard("stop", verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    (event,) = guard.events
    assert event.step == 2 and event.weight_growth < 10
    assert "loss itself" in event.cause


def test_falling_losses_are_not_a_divergence():
    from safeops.debug._guard import GuardEvent, _likely_cause

    event = GuardEvent(step=3, epoch=0, batch=3, action="stop", trigger="non-finite loss", loss=math.inf,
                       recent_losses=[5000.0, 100.0, 4.0], loss_before=math.inf, weight_growth=1.1)
    assert "loss itself" in _likely_cause(event)[0]
    event.recent_losses = [4.0, 100.0, 5000.0]
    assert _likely_cause(event)[0].startswith("training diverged")


def test_losses_below_zero_are_no_rise():
    """value / max(lowest, tiny) made any rise after a negative loss look like a divergence."""
    from safeops.debug._guard import GuardEvent, _likely_cause

    event = GuardEvent(step=3, epoch=0, batch=3, action="stop", trigger="non-finite loss", loss=math.inf,
                       recent_losses=[-0.5, -0.2, 0.1], loss_before=math.inf, weight_growth=1.1)
    assert "loss itself" in _likely_cause(event)[0]
    event.recent_losses = [0.001, 1.0, 5000.0]      # positive losses: the rise still counts
    assert _likely_cause(event)[0].startswith("training diverged")


def test_rollback_lowers_a_callable_learning_rate():
    x, y = _data(n_batches=4, poison=2)
    model = _model(keras.optimizers.SGD(learning_rate=lambda: 0.05))
    guard = NaNGuard("rollback", factor=0.5, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    (event,) = guard.events
    assert event.action == "rollback"
    assert event.learning_rate_before == pytest.approx(0.05)
    assert event.learning_rate_after == pytest.approx(0.025)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.025)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_rollback_refuses_a_learning_rate_it_cannot_lower():
    model = _model(keras.optimizers.SGD(0.01))
    model.optimizer._learning_rate = "0.01"       # what no Keras optimizer accepts, but got there
    x, y = _data(n_batches=2)
    with pytest.raises(ValueError, match=r"NaNGuard: the optimizer's learning_rate .* must be .*, got str"):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[NaNGuard("rollback", verbose=0)])


def test_skip_restores_compiled_metrics_built_in_the_first_step():
    x, y = _data(n_batches=4, poison=2)

    def fitted(xs, ys):
        model = _model(keras.optimizers.SGD(0.01))
        model.compile(keras.optimizers.SGD(0.01), loss="mse", metrics=["mae"])
        history = model.fit(xs, ys, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                            callbacks=[NaNGuard("skip", verbose=0)])
        return history.history

    keep = np.r_[0:2 * BATCH, 3 * BATCH:len(x)]
    guarded, reference = fitted(x, y), fitted(x[keep], y[keep])
    assert all(math.isfinite(v) for v in guarded["mae"])
    np.testing.assert_allclose(guarded["mae"], reference["mae"], rtol=1e-6)
    np.testing.assert_allclose(guarded["loss"], reference["loss"], rtol=1e-6)


class _LogRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batch_logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs.append(dict(logs))


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_no_kept_batch_reads_nan_not_zero(policy):
    x, y = _data(n_batches=2)
    y[:] = np.nan                                   # every batch is bad
    model = _model(keras.optimizers.SGD(0.01))
    recorder = _LogRecorder()
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                        callbacks=[NaNGuard(policy, verbose=0), recorder])
    assert math.isnan(history.history["loss"][0])
    assert all(math.isnan(logs["loss"]) for logs in recorder.batch_logs)


def test_loss_that_cannot_be_recomputed_is_not_read_as_non_finite():
    """A custom train_step compiled without loss=: the recompute fails, and its NaN default
    read as 'the loss itself is non-finite' although the batch's loss was 0."""

    class NormModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2, name="dense_sub", kernel_initializer="zeros")

        def call(self, x):
            return self.dense(x)

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.norm(self(x, training=True) - y, axis=-1))   # NaN gradient at 0
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return {"loss": loss}

    keras.utils.set_random_seed(0)
    model = NormModel()
    model.compile("sgd")
    x = np.random.default_rng(0).standard_normal((8, 3)).astype("float32")
    model(x)
    guard = NaNGuard("skip", verbose=0)
    model.fit(x, np.zeros((8, 2), "float32"), batch_size=4, epochs=1, verbose=0, callbacks=[guard])
    event = guard.events[0]
    assert event.loss_before is None and any("recompute" in note for note in event.notes)
    assert "loss itself" not in event.cause and "dense_sub" in event.cause
    assert "pre-batch weights could not be recomputed" in str(event) and "weights nan" not in str(event)


def test_batch_losses_after_a_huge_batch_are_unknown_not_zero():
    """Keras' float32 running total of 1.6e21 swallows a later batch's 16 * 3: the difference
    of totals read 0, which is no loss, and a median of 0s disables the spike test."""
    x, y = _data(n_batches=6)
    y[:BATCH] = 1e10                               # batch 0: a finite loss of about 1e20
    x[5 * BATCH + 3, 0] = np.nan                   # batch 5: the event that records recent_losses
    model = _model(keras.optimizers.SGD(0.0))
    guard = NaNGuard("skip", spike_factor=10.0, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    (event,) = guard.events
    assert event.batch == 5 and 0.0 not in event.recent_losses
    assert event.recent_losses == [pytest.approx(1e20, rel=1e-3)]     # the others are unknown


def test_batch_loss_is_unknown_only_when_rounding_hides_it():
    from safeops.debug._guard import _LOSS_RTOL

    x, y = _data(n_batches=3)
    model = _model(keras.optimizers.SGD(0.0))
    guard = NaNGuard("skip", spike_factor=10.0, verbose=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[guard])
    assert len(guard._recent) == 3 and all(v > 0 for v in guard._recent)    # ordinary losses are known
    total, count = (guard._before.sources[i] for i in guard._tracker_slots)
    guard._before.save()
    total.assign(np.float32(1.6e21))                 # what one batch of loss 1e20 leaves
    guard._before.save()
    total.assign_add(np.float32(48.0))
    count.assign_add(16.0)
    assert guard._batch_loss({"loss": 1e20}) is None
    total.assign(np.float32(1.6e21))
    guard._before.save()
    total.assign_add(np.float32(1.6e21 * 10 * _LOSS_RTOL))
    count.assign_add(16.0)
    assert guard._batch_loss({}) == pytest.approx(1e21 * _LOSS_RTOL, rel=1e-3)


def test_rollback_falls_back_from_a_checkpoint_that_was_already_diverging():
    """An epoch end saved an exploding but finite state (weights of norm 1e18); every rollback
    to it failed at once, and the events blamed ever lower learning rates down to 1e-7."""
    x = (np.random.default_rng(0).standard_normal((64, 4)) * 30).astype("float32")
    y = x.sum(1, keepdims=True)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, name="h"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    guard = NaNGuard("rollback", factor=0.1, verbose=0)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[guard])
    diverging = [e for e in guard.events if "already diverging" in e.cause]
    assert diverging and not guard.stopped
    first = diverging[0]
    assert "learning rate" not in first.cause.split(":")[0] and "too high" not in first.cause
    assert "previous checkpoint" in first.cause and first.restored_to_step < guard.events[-2].restored_to_step
    norm = math.sqrt(sum(float(np.sum(np.square(w.astype(np.float64)))) for w in guard.checkpoint_weights()))
    assert norm < 1e3 and all(np.isfinite(w).all() for w in model.get_weights())


def test_a_diverging_checkpoint_with_none_before_it_is_blamed_not_the_learning_rate():
    from safeops.debug._guard import GuardEvent

    model = _model(keras.optimizers.SGD(0.01))
    guard = NaNGuard("rollback", verbose=0)
    guard.set_model(model)
    guard.on_train_begin()
    if guard._checkpoint is None:                       # compiled metrics not built yet
        guard._start_guarding()
    guard._restored_step = guard._checkpoint.step       # just rolled back to the only checkpoint
    event = GuardEvent(step=1, epoch=0, batch=1, action="rollback", trigger="non-finite loss", loss=math.inf,
                       learning_rate_before=0.01, fix="lower the learning rate",
                       cause="training diverged: the learning rate 0.01 is too high")
    guard._act(event)
    assert "already diverging" in event.cause and "no earlier checkpoint" in event.cause
    assert "too high" not in event.cause and event.restored_to_step == 0
    guard.on_train_end()


# --------------------------------------------------------------------------- what the audit found


def test_nan_labels_are_named_with_their_rows():
    x, y = _data(n_batches=4, poison=2, where="y")
    model = _model()
    guard = NaNGuard("stop", verbose=0)
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=[guard])
    event = guard.events[0]
    assert event.batch == 2 and event.batch_stats["y"]["nonfinite_rows"] == [3]
    assert "batch 2's labels (y" in event.cause and "rows [3] of the batch" in event.cause, event.cause
    assert event.fix.startswith("clean the labels")


def _float16_model(optimizer, kernel=None):
    keras.utils.set_random_seed(0)
    init = keras.initializers.Constant(kernel) if kernel is not None else "glorot_uniform"
    keras.mixed_precision.set_global_policy("float16")
    try:
        model = keras.Sequential([keras.Input((4,)),
                                  keras.layers.Dense(16, kernel_initializer=init, name="h"),
                                  keras.layers.Dense(1, name="out")])
        model.compile(optimizer, loss="mse")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def test_float16_optimizer_slot_overflow_is_not_blamed_on_the_learning_rate():
    """Adam's second moment g**2 passes 65504 in float16 for |g| > 256, with finite gradients."""
    rng = np.random.default_rng(0)
    x = (rng.random((64, 4)) * 10.0).astype("float32")
    y = (rng.random((64, 1)) * 100.0).astype("float32")
    model = _float16_model(keras.optimizers.Adam(0.01))
    guard = NaNGuard("stop", verbose=0)
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[guard])
    event = guard.events[0]
    assert not event.nonfinite_gradients and math.isfinite(event.loss_before)
    assert event.cause.startswith("float16 overflow, not the learning rate"), event.cause
    assert "float16 variable" in event.cause
    assert "mixed_float16" in event.fix and "LossScaleOptimizer" in event.fix
    assert not event.fix.startswith("lower the learning rate"), event.fix


def test_float16_activation_overflow():
    x = np.random.default_rng(0).random((16, 4)).astype("float32") * 300.0
    model = _float16_model(keras.optimizers.SGD(0.01), kernel=100.0)
    guard = NaNGuard("stop", verbose=0)
    model.fit(x, np.ones((16, 1), "float32"), batch_size=8, shuffle=False, verbose=0, callbacks=[guard])
    event = guard.events[0]
    assert "layer 'h' computes in float16" in event.cause and "65504" in event.cause, event.cause
    assert "mixed_float16" in event.fix


def test_log_of_zero_in_a_float16_layer_is_not_an_overflow():
    keras.mixed_precision.set_global_policy("float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)),
                                  keras.layers.Dense(1, kernel_initializer="zeros", name="d"),
                                  keras.layers.Lambda(lambda t: keras.ops.log(t), name="log")])
        model.compile(keras.optimizers.SGD(0.01), loss="mse")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    guard = NaNGuard("stop", verbose=0)
    model.fit(np.ones((8, 4), "float32"), np.ones((8, 1), "float32"), batch_size=8, verbose=0,
              callbacks=[guard])
    event = guard.events[0]
    assert event.nonfinite_activations == ["log"] and not event.float16_overflow, event.cause

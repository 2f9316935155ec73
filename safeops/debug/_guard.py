"""``NaNGuard``: a Keras callback that catches a non-finite step and keeps training alive.

How it sees a bad step
----------------------
Keras callbacks see neither the gradients nor the batch, so the guard adds
two things while ``fit`` runs and removes them when it ends:

* **The batch.** At ``on_train_begin`` it wraps ``model.train_function``
  (Keras 3, TensorFlow backend): the wrapper takes the next element(s) from
  the data iterator in Python, keeps a reference to them, and hands them to
  Keras' own compiled step (the same ``tf.function``, XLA included when the
  model compiles with ``jit_compile``), traced for the dataset's shapes as
  Keras traces it, so that a guarded step computes bit for bit what an
  unguarded one does. Nothing is copied; the reference is dropped at the
  next batch. ``on_train_end`` puts the original back.
* **The gradients, by their effect.** Every Keras optimizer that applies a
  NaN or infinite gradient leaves a NaN or infinite weight or slot variable
  (SGD: ``w - lr * inf``; Adam: ``inf / sqrt(inf)``; a clipped norm of NaN
  is NaN). The exceptions are harmless: ``clipvalue`` turning an inf into a
  finite value, or a ``LossScaleOptimizer`` skipping the step, means nothing
  non-finite reached the weights. So after each batch one graph call checks
  that every model and optimizer variable is finite, and the batch's own
  loss (from the totals of Keras' loss tracker before and after the batch,
  not the epoch's running mean) is finite. That total is a float32 sum over
  the epoch, so after a far larger batch (a loss of 1e21) the difference of
  an ordinary batch is rounding, not its loss: such a loss is *unknown*
  (``None``), neither checked nor kept for the spike test, rather than read
  as 0 (the running mean in the logs comes from the same total and knows no
  more). Only when a check fails does the
  guard recompute, eagerly, the loss and the gradients at the weights from
  before the batch, on the kept batch, to say which layer's gradients went
  non-finite first and why.

State and what "nothing is lost" means
--------------------------------------
Before each batch the guard copies, on the device, every model variable
(weights, BatchNorm statistics, seed states), every optimizer variable (slots,
``iterations``, the learning rate) and every metric variable. ``skip``
restores that copy: the run continues exactly as if the batch had not been in
the data. ``rollback`` restores the model and optimizer variables of the last
*checkpoint* (taken at the start of training and then every
``checkpoint_every`` finite steps, or at each finite epoch end), bit for bit,
lowers the learning rate by ``factor`` and continues; the running metrics of
the epoch come from the pre-batch copy, so the bad batch does not poison the
epoch's mean loss.

A checkpoint can hold a state that is finite but already exploding (weights
of norm 1e18 at an epoch end): restored, it fails again at once, whatever the
learning rate. So ``rollback`` also keeps the checkpoint before the last one,
and when a run fails within ``_DIVERGING_WITHIN`` (2) steps of restoring a
checkpoint, it drops that checkpoint and restores the previous one; the event
then says the checkpoint itself was diverging rather than blaming the
learning rate (also when no previous checkpoint is left to fall back to).

Variables that Keras creates while tracing the first step (the layers of a
model built without ``keras.Input`` or a subclassed one, the compiled metrics,
the optimizer's slots) are created before that step from the first batch, the
way ``fit`` itself does under a ``tf.distribute`` strategy, so the first batch
is guarded and its state restored like any other. A model that cannot be built
that way is built by Keras in its first step, as without the guard; guarding
then starts after that step, and a bad first step can only stop the run.

Cost: two extra copies of the model and optimizer state in device memory
(three under ``rollback``: the previous checkpoint).
Per step, one copy of the state and one finiteness check, each one graph call
with an op per variable, so the cost grows with the *number* of variables
(linearly: a deep model of many small layers pays more than a wide one of the
same size). Once per ``fit`` the guard traces those two graphs, which for
hundreds of variables takes seconds and dominates fits of a few dozen steps;
rarely made copies (checkpoints, restores) run eagerly until they have been
made 16 times, then as a traced graph.

Learning rates: a float learning rate (a variable in Keras 3) is multiplied
by ``factor``. A ``LearningRateSchedule`` is wrapped, at the start of
training, in :class:`ScaledSchedule` whose scale variable is multiplied by
``factor``, so every later value of the schedule is lowered; the wrapper stays
on the optimizer after ``fit`` (it serialises with the model). A zero-argument
callable (``SGD(learning_rate=lambda: 0.1)``) is wrapped the same way. Any other
learning rate is refused at the start of ``fit``. A rollback also rewinds
``optimizer.iterations`` and so the schedule's step.

Limits: with ``steps_per_execution > 1`` the guard checks once per execution
and a skip drops the whole execution; under a multi-replica
``tf.distribute`` strategy the diagnosis joins the local replicas' parts of the
batch on the host and recomputes the loss and gradients there, eagerly (a part
of the diagnosis that fails is listed in :attr:`GuardEvent.notes`; it never
ends the ``fit``). When no batch of an epoch is kept, the epoch's running
metrics read NaN rather than the 0.0 of an empty mean.

Practice this follows: restarting from an earlier checkpoint with a lower
learning rate or skipping the offending batches is how large runs survive
loss spikes (Chowdhery et al. 2022, "PaLM", sec. 5.1).
"""

from __future__ import annotations

import collections
import itertools
import math
import os

import keras
import numpy as np
import tensorflow as tf

from safeops._validate import is_real_number, message
from safeops.debug._events import (
    _LOWER_THE_LEARNING_RATE,
    _TINY,
    FLOAT16_MAX,
    GuardEvent,
    _likely_cause,
    batch_statistics,
)
from safeops.debug._state import (
    _FLOATS,
    _OP,
    ScaledSchedule,
    _ScaledCallable,
    _StateCopy,
    _dedupe,
    _fully_built,
    _get_learning_rate,
    _global_norm,
    _graph_call,
    _inner_optimizer,
    _layer_names_by_variable,
    _layers,
    _reads_indices,
    _scale_learning_rate,
    _tf_variable,
)

POLICIES = ("stop", "skip", "rollback")
_RMS_FLOOR = 1e-3    # smallest reference root mean square of the weights for weight_growth
_LOSS_RTOL = 1e-2    # a batch loss read off the running total with a larger relative error is unknown
_DIVERGING_WITHIN = 2  # a restored checkpoint that fails again within this many steps was diverging
_NEAR_FLOAT16_MAX = FLOAT16_MAX / 64   # finite values this large beside an inf: float16 ran out of range


# --------------------------------------------------------------------------- the callback


class NaNGuard(keras.callbacks.Callback):
    """Catches a non-finite loss or gradient during ``fit`` and acts by policy.

    Policies:
      * ``'stop'``: put back the weights and optimizer state from before the
        bad batch, print a diagnosis and stop training.
      * ``'skip'``: put back the state from before the batch (weights,
        optimizer, running metrics) and go on with the next batch.
      * ``'rollback'``: put back the weights and optimizer state of the last
        finite checkpoint exactly, multiply the learning rate by ``factor``
        and go on; after ``max_rollbacks`` rollbacks, give up (restore the
        checkpoint and stop).

    Every event is appended to :attr:`events` (a :class:`GuardEvent`: the
    layer whose weights or gradients went non-finite first, the batch's
    statistics, the likely cause) and, with ``log_dir``, written to
    TensorBoard as the scalars ``safeops.NaNGuard/events`` and
    ``safeops.NaNGuard/learning_rate`` and the text ``safeops.NaNGuard/event``
    (written with core ``tf.summary.write``, so the ``tensorboard`` package is
    needed only to view them).
    See the module docstring for how the batch and gradients are observed.

    Args:
      policy: ``'stop'``, ``'skip'`` or ``'rollback'``.
      factor: learning-rate multiplier on each rollback, in (0, 1).
      max_rollbacks: rollbacks allowed in one ``fit`` before giving up.
      checkpoint_every: ``'epoch'`` (checkpoint at the start of training and
        at every epoch end whose state is finite) or a number of consecutive
        finite steps between checkpoints.
      max_loss: optional bound; a batch loss above it counts as divergence
        (catches a run that is blowing up before it reaches inf).
      spike_factor: optional; a batch loss above ``spike_factor`` times the
        median of the last 20 finite batch losses counts as divergence. Only
        while that median is positive: a loss that can be negative (Keras'
        ``cosine_similarity``) is not tested this way (``max_loss`` still
        applies).
      log_dir: optional TensorBoard log directory.
      verbose: print each event's diagnosis when true.

    Example (one NaN in the second batch; ``skip`` drops that batch):

    >>> import keras, numpy as np
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="out")])
    >>> model.compile(keras.optimizers.SGD(0.1), loss="mse")
    >>> x = np.ones((8, 2), "float32"); x[5, 0] = np.nan
    >>> guard = NaNGuard("skip", verbose=0)
    >>> _ = model.fit(x, np.ones((8, 1)), batch_size=4, shuffle=False, verbose=0, callbacks=[guard])
    >>> [(e.batch, e.action, e.nonfinite_weights) for e in guard.events]
    [(1, 'skip', ['out'])]
    >>> bool(np.isfinite(model.get_weights()[0]).all())
    True
    """

    def __init__(self, policy: str = "stop", *, factor: float = 0.1, max_rollbacks: int = 5,
                 checkpoint_every: int | str = "epoch", max_loss: float | None = None,
                 spike_factor: float | None = None, log_dir: str | None = None, verbose: int = 1):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(message(_OP, "policy", f"one of {POLICIES}", repr(policy)))
        if not is_real_number(factor) or not 0.0 < factor < 1.0:
            raise ValueError(message(_OP, "factor", "a number in (0, 1)", repr(factor)))
        every = checkpoint_every
        if every != "epoch" and not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
            raise ValueError(message(_OP, "checkpoint_every", "'epoch' or a positive integer",
                                     repr(checkpoint_every)))
        if isinstance(max_rollbacks, bool) or not isinstance(max_rollbacks, int) or max_rollbacks < 0:
            raise ValueError(message(_OP, "max_rollbacks", "a non-negative integer", repr(max_rollbacks)))
        if max_loss is not None and (not is_real_number(max_loss) or not max_loss > 0):
            raise ValueError(message(_OP, "max_loss", "None or a positive number", repr(max_loss)))
        if spike_factor is not None and (not is_real_number(spike_factor) or not spike_factor > 1):
            raise ValueError(message(_OP, "spike_factor", "None or a number above 1", repr(spike_factor)))
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            # Else a TypeError from the summary writer, inside fit.
            raise ValueError(message(_OP, "log_dir", "None or a directory path", repr(log_dir)))
        if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose not in (0, 1, 2):
            raise ValueError(message(_OP, "verbose", "0, 1 or 2", repr(verbose)))
        self.policy = policy
        self.factor = float(factor)
        self.max_rollbacks = int(max_rollbacks)
        self.checkpoint_every = checkpoint_every
        self.max_loss = max_loss
        self.spike_factor = spike_factor
        self.log_dir = log_dir
        self.verbose = verbose
        self.events: list[GuardEvent] = []
        self.rollbacks = 0
        self.stopped = False
        #: The last offending batch (as the data pipeline yielded it; under a
        #: multi-replica strategy, the replicas' parts joined on the host), for
        #: ``locate_nonfinite(model, *unpack_x_y_sample_weight(guard.bad_batch)[:2])``.
        self.bad_batch = None
        self._writer = None
        self._before: _StateCopy | None = None       # made once the model's variables exist
        self._checkpoint: _StateCopy | None = None
        self._previous: _StateCopy | None = None     # rollback: the checkpoint before the last
        self._n_model_vars = 0

    # ---- what the guard exposes

    @property
    def diagnosis(self) -> str:
        """The text of the last event ('' when none)."""
        return str(self.events[-1]) if self.events else ""

    def checkpoint_weights(self) -> list[np.ndarray]:
        """Copies of the model variables at the last checkpoint (``model.variables`` order)."""
        return self._checkpoint.numpy()[: self._n_model_vars] if self._checkpoint else []

    def checkpoint_optimizer_variables(self) -> list[np.ndarray]:
        """Copies of the optimizer variables at the last checkpoint."""
        return self._checkpoint.numpy()[self._n_model_vars:] if self._checkpoint else []

    # ---- fit hooks

    def on_train_begin(self, logs=None):
        model = self.model
        self._optimizer = model.optimizer
        if self._optimizer is None:
            raise ValueError(message(_OP, "model", "compiled with an optimizer", "no optimizer"))
        self.rollbacks = 0          # per fit; self.events keeps the events of every fit
        self.stopped = False
        if self.policy == "rollback":
            self._install_scaled_learning_rate()
        self._before = self._checkpoint = self._previous = None
        self._restored_step = None  # rollback: the step of the checkpoint last restored
        self._build_tried = False
        self._pre_batch_missing = False
        self._step = 0
        self._good_steps = 0
        self._epoch = 0
        self._kept_in_epoch = 0     # finite batches kept in this epoch
        self._dropped_in_epoch = 0  # batches skipped, stopped on or rolled back in this epoch
        self._recent = collections.deque(maxlen=20)
        self._batches: list = []
        if _fully_built(model):
            self._start_guarding()
        # Otherwise Keras creates some variables (the layers' of a model without keras.Input,
        # the compiled metrics', the optimizer's slots) while tracing the first step; the
        # wrapped train function builds them from the first batch before that step runs.
        self._wrap_train_function()
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _start_guarding(self) -> None:
        """Makes the state copies and the finiteness check; needs every variable to exist."""
        model = self.model
        trainable = model.trainable_variables
        if not getattr(self._optimizer, "built", True) and trainable:
            # Keras builds the slots on the first step; build them now so they are copied too.
            # Never on an empty list: Keras would then refuse the model's weights later.
            self._optimizer.build(trainable)
        model_vars = _dedupe(model.variables)
        opt_vars = _dedupe(v for v in self._optimizer.variables if id(_tf_variable(v)) not in
                           {id(_tf_variable(m)) for m in model_vars})
        metric_vars = _dedupe(v for m in model.metrics for v in m.variables)
        self._n_model_vars = len(model_vars)
        self._before = _StateCopy(model_vars + opt_vars + metric_vars, every_step=True)
        self._checkpoint = _StateCopy(model_vars + opt_vars, every_step=self.checkpoint_every == 1)
        if self.policy == "rollback":
            self._previous = _StateCopy(model_vars + opt_vars, every_step=self.checkpoint_every == 1)
        checked = [_tf_variable(v) for v in model_vars + opt_vars if v.dtype in _FLOATS]

        all_finite = _graph_call(
            lambda: tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in checked])))
        # One graph call and one device-to-host transfer per step.
        self._state_finite = (lambda: bool(all_finite())) if checked else (lambda: True)
        self._layer_of = _layer_names_by_variable(model)
        # Where the loss tracker's total and count sit in the pre-batch copy (see _batch_loss).
        index = {id(s): i for i, s in enumerate(self._before.sources)}
        tracker = getattr(model, "_loss_tracker", None)
        slots = [index.get(id(_tf_variable(v))) for v in getattr(tracker, "variables", [])]
        self._tracker_slots = slots if len(slots) == 2 and None not in slots else None
        # The weights' norm now, for GuardEvent.weight_growth; floored at a root mean square of
        # _RMS_FLOOR so that a model whose weights start at zero does not read as infinite growth.
        norm, size = _global_norm(trainable)
        self._reference_norm = max(norm, math.sqrt(size) * _RMS_FLOOR, _TINY)
        self._save_checkpoint()
        self._before.save(step=self._step)

    def _build_before_first_step(self, batch) -> None:
        """Creates the variables Keras would create while tracing the first step, so that
        the state before that step can be copied; if that fails, Keras builds them in the
        step as it does without the guard, and guarding starts at the end of that step."""
        model = self.model
        build = getattr(model, "_symbolic_build", None)   # what fit itself does under a strategy
        if build is not None and not _fully_built(model):
            try:
                with model.distribute_strategy.scope():
                    build(data_batch=batch)
            except Exception:  # noqa: BLE001 - a model Keras can only build eagerly: see above
                pass
        if _fully_built(model):
            self._start_guarding()

    def on_train_end(self, logs=None):
        fn = getattr(self.model, "train_function", None)
        original = getattr(fn, "_nanguard_original", None)
        if original is not None:
            self.model.train_function = original
        self._batches = []
        if self._writer is not None:
            self._writer.flush()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._kept_in_epoch = self._dropped_in_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        if self._before is None:
            return
        # No finite step since the last checkpoint (or rollback to it): the state is that checkpoint.
        if self.checkpoint_every == "epoch" and self._good_steps and bool(self._state_finite()):
            self._save_checkpoint()
        if logs is not None and self._dropped_in_epoch and not self._kept_in_epoch:
            # No batch of this epoch was kept: the restored trackers are empty and would
            # read 0.0 (a perfect fit) in History and the progress bar.
            self._blank_metric_logs(logs)

    def on_train_batch_begin(self, batch, logs=None):
        if self._before is not None:
            self._before.save(step=self._step)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs if logs is not None else {}
        self._pre_batch_missing = self._before is None
        if self._pre_batch_missing:
            # The model could only be built inside its first step: guarding starts now,
            # with no copy of the state before this batch (see _act).
            self._start_guarding()
        loss = self._batch_loss(logs)
        finite_state = bool(self._state_finite())
        spike = loss is not None and self._is_spike(loss)
        bad_loss = loss is not None and (not math.isfinite(loss) or spike)
        if finite_state and not bad_loss:
            if loss is not None:     # an unknown loss is left out of the spike test's median
                self._recent.append(loss)
            self._step += 1
            self._good_steps += 1
            self._kept_in_epoch += 1
            every = self.checkpoint_every
            if self._pre_batch_missing or (isinstance(every, int) and self._good_steps % every == 0):
                self._save_checkpoint()
            return
        trigger = ", ".join(t for t, bad in (("loss spike" if spike else "non-finite loss", bad_loss),
                                             ("non-finite weights", not finite_state)) if bad)
        event = self._diagnose(batch, trigger, loss)
        self._act(event)
        self.events.append(event)
        self._log_event(event)
        if self.verbose:
            print(str(event))
        self._dropped_in_epoch += 1
        self._refresh_logs(logs)
        self._step += 1

    def _is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        if self.max_loss is not None and loss > self.max_loss:
            return True
        if self.spike_factor is not None and self._recent:
            # A ratio to the median means something only for a positive median: a loss that
            # can be negative (cosine similarity, a Gaussian log-likelihood) is not tested.
            median = float(np.median(self._recent))
            return median > 0 and loss > self.spike_factor * median
        return False

    # ---- actions

    def _save_checkpoint(self) -> None:
        """Saves the state as the checkpoint; under ``rollback`` the one it replaces becomes
        the previous checkpoint (the two copies swap roles, so nothing is copied twice)."""
        if self._previous is not None and self._checkpoint.step is not None:
            self._checkpoint, self._previous = self._previous, self._checkpoint
        self._checkpoint.save(step=self._step)

    def _drop_diverging_checkpoint(self, event: GuardEvent) -> None:
        """The last checkpoint failed again right after it was restored: blame it, not the
        learning rate, and make the previous checkpoint (if one is kept) the one to restore."""
        bad = self._checkpoint.step
        steps = f"{self._good_steps} finite " + ("step" if self._good_steps == 1 else "steps")
        if self._previous is not None and self._previous.step is not None:
            self._checkpoint, self._previous = self._previous, self._checkpoint
            self._previous.step = None          # dropped: never restored again
            where = f"; it was dropped and the previous checkpoint (step {self._checkpoint.step}) restored"
        else:
            where = "; no earlier checkpoint is kept to fall back to"
        event.cause = (f"the checkpoint of step {bad} was itself already diverging: restored, it failed "
                       f"again after {steps}, which a lower learning rate does not change{where}")
        event.fix = ("checkpoint before the run diverges (a smaller checkpoint_every, or max_loss / "
                     "spike_factor to catch a finite blow-up), or lower the initial learning rate")

    def _act(self, event: GuardEvent) -> None:
        event.learning_rate_after = event.learning_rate_before
        if self._pre_batch_missing:
            # Nothing to put back: the state before the model's first step was never copied.
            event.action = "stop"
            event.notes.append("the model was built inside its first step, so no state from before "
                               "that step exists to restore and the weights were left as they are; "
                               "build the model before fit (keras.Input, or call it on a batch)")
            self._stop()
            return
        if self.policy == "skip":
            self._before.restore()
            event.restored_to_step = self._before.step
            return
        if self.policy == "stop":
            self._before.restore()
            event.restored_to_step = self._before.step
            self._stop()
            return
        if (self._restored_step == self._checkpoint.step and self._good_steps < _DIVERGING_WITHIN
                and event.fix.startswith(_LOWER_THE_LEARNING_RATE)):
            # Blamed on the learning rate, yet the restored checkpoint failed again at once.
            self._drop_diverging_checkpoint(event)
        if self.rollbacks >= self.max_rollbacks:
            event.action = "give_up"
            self._before.restore()
            self._checkpoint.restore()
            event.restored_to_step = self._checkpoint.step
            event.fix = (f"gave up after {self.rollbacks} rollbacks; " + event.fix).strip("; ")
            self._stop()
            return
        self._before.restore()          # running metrics of this epoch, without the bad batch
        self._checkpoint.restore()      # weights and optimizer state, bit for bit
        event.restored_to_step = self._restored_step = self._checkpoint.step
        self.rollbacks += 1
        # The checkpoint holds an older learning rate: lower the one in use.
        event.learning_rate_after = _scale_learning_rate(self._optimizer, self.factor,
                                                         event.learning_rate_before)
        self._good_steps = 0
        self._recent.clear()

    def _stop(self) -> None:
        self.stopped = True
        self.model.stop_training = True

    def _refresh_logs(self, logs: dict) -> None:
        """After a restore, shows the restored running metrics to the callbacks after this one."""
        try:
            results = self.model.get_metrics_result()
        except Exception:  # noqa: BLE001 - best effort, the state is already restored
            return
        for key, value in results.items():
            if key in logs:
                logs[key] = float(np.asarray(value))
        if not self._kept_in_epoch:
            self._blank_metric_logs(logs)

    def _blank_metric_logs(self, logs: dict) -> None:
        """NaN for the running metrics when no batch of the epoch was kept (their trackers
        are empty, and an empty mean reads 0.0, which looks like a perfect fit)."""
        try:
            keys = set(self.model.get_metrics_result())
        except Exception:  # noqa: BLE001 - at least the loss
            keys = {"loss"}
        for key in keys & set(logs):
            logs[key] = math.nan

    # ---- observation

    def _wrap_train_function(self) -> None:
        model = self.model
        fn = model.train_function
        fn = getattr(fn, "_nanguard_original", fn)
        steps = int(getattr(model, "steps_per_execution", 1) or 1)
        guard = self

        def guarded_train_function(iterator):
            if hasattr(iterator, "get_next_as_optional"):
                batches = []
                for _ in range(steps):
                    optional = iterator.get_next_as_optional()
                    if not optional.has_value():
                        break
                    batches.append(optional.get_value())
            else:
                batches = list(itertools.islice(iterator, steps))
            if not batches:
                raise StopIteration
            guard._batches = batches
            if guard._before is None and not guard._build_tried:
                guard._build_tried = True
                guard._build_before_first_step(batches[0])
            _trace_as_iterator_would(fn, iterator, traced)
            return fn(batches)

        traced: list = []   # whether the step was traced for the dataset's shapes
        guarded_train_function._nanguard_original = fn
        model.train_function = guarded_train_function

    def _batch_loss(self, logs: dict) -> float | None:
        """This batch's loss, from the loss tracker's total and count before and after it;
        ``None`` when the total's rounding hides it (see the module docstring)."""
        if self._tracker_slots is not None:
            total, count = (self._before.sources[i] for i in self._tracker_slots)
            t0, c0 = (float(self._before.copies[i].numpy()) for i in self._tracker_slots)
            after = total.numpy()
            t1, c1 = float(after), float(count.numpy())
            if c1 > c0:
                if not math.isfinite(t1):
                    return t1
                # t1 is t0 + (this batch's total) rounded in the tracker's dtype: the difference is
                # off by up to half a spacing of t1 (exact when t0 is 0).
                error = 0.5 * float(np.spacing(np.abs(after)))
                if t0 != 0.0 and error > _LOSS_RTOL * abs(t1 - t0):
                    return None
                return (t1 - t0) / (c1 - c0)
        value = logs.get("loss", math.nan)
        return float(np.asarray(value))

    def _diagnose(self, batch: int, trigger: str, loss: float) -> GuardEvent:
        event = GuardEvent(step=self._step, epoch=self._epoch, batch=batch, action=self.policy,
                           trigger=trigger, loss=loss)
        event.learning_rate_before = _get_learning_rate(self._optimizer)
        event.recent_losses = list(self._recent)
        model = self.model
        event.nonfinite_weights = [
            layer.name for layer in _layers(model)
            if any(not np.all(np.isfinite(np.asarray(w))) for w in layer.weights
                   if tf.as_dtype(w.dtype) in _FLOATS)
        ]
        event.float16_variables = any(tf.as_dtype(v.dtype) == tf.float16 for v in model.trainable_variables)
        # Read before the pre-batch state is put back: a float16 weight or optimizer slot that the update
        # took past 65504 (Adam's g**2 for |g| > 256). It is float16's range, not the learning rate,
        # when the gradients turn out finite (checked after the recompute).
        state_overflow = _float16_state_overflow(model, self._optimizer)
        data = self._batches[0] if len(self._batches) == 1 else _concat_batches(self._batches)
        if data is not None and any(isinstance(leaf, tf.distribute.DistributedValues)
                                    for leaf in tf.nest.flatten(data)):
            # Under a multi-replica strategy each replica holds part of the batch: join the
            # parts on the host, so that statistics and the recompute see the whole batch.
            data = tf.nest.map_structure(_to_numpy, data)
        self.bad_batch = data
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data) if data is not None else (None,) * 3
        for label, part in (("x", x), ("y", y)):
            for i, leaf in enumerate(tf.nest.flatten(part) if part is not None else []):
                name = label if len(tf.nest.flatten(part)) == 1 else f"{label}[{i}]"
                event.batch_stats[name] = stats = batch_statistics(_to_numpy(leaf), columns=label == "x")
                if label == "x" and stats.get("dtype", "").startswith(("int", "uint", "bool")) \
                        and _reads_indices(model):
                    stats["indices"] = True   # ids, not features: no input-scale finding
        if self._pre_batch_missing:
            event.notes.append("no recompute: the weights from before the batch were not kept")
        elif x is not None:
            self._before.restore()
            try:
                self._recompute(event, x, y, sample_weight)
            except Exception as error:  # noqa: BLE001 - a diagnosis must never end the user's fit
                event.notes.append(f"the recompute of the loss and gradients at the pre-batch weights "
                                   f"failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                                   f"the layers and cause below come from the weights and the batch only")
            finally:
                self._before.restore()   # the diagnosis must not move BatchNorm statistics or seeds
        if (not event.float16_overflow and state_overflow and event.loss_before is not None
                and math.isfinite(event.loss_before) and not event.nonfinite_gradients):
            event.float16_overflow = (f"the gradients at the pre-batch weights are finite, but the update "
                                      f"made {state_overflow}")
        event.cause, event.fix = _likely_cause(event)
        return event

    def _recompute(self, event: GuardEvent, x, y, sample_weight) -> None:
        model = self.model
        if isinstance(model, keras.Sequential):
            h = x
            for layer in model.layers:
                h = layer(h, training=True)
                if not np.all(np.isfinite(_to_numpy(h))):
                    if not event.nonfinite_activations:
                        event.float16_overflow = _float16_activation_overflow(layer, h)
                    event.nonfinite_activations.append(layer.name)
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        event.loss_before = float(np.asarray(loss))
        grads = tape.gradient(loss, variables)
        lr = _get_learning_rate(self._optimizer)
        per_layer: dict[str, list] = {}
        for v, g in zip(variables, grads):
            if g is None:
                continue
            per_layer.setdefault(self._layer_of.get(id(_tf_variable(v)), v.path), []).append(
                (np.asarray(v.numpy(), np.float64), np.asarray(tf.convert_to_tensor(g), np.float64)))
        weight_norm = math.sqrt(sum(float(np.sum(w * w)) for pairs in per_layer.values() for w, _ in pairs))
        event.weight_growth = weight_norm / self._reference_norm
        bad = []
        for name, pairs in per_layer.items():
            g_norm = math.sqrt(sum(float(np.sum(g * g)) for _, g in pairs))
            w_norm = math.sqrt(sum(float(np.sum(w * w)) for w, _ in pairs))
            event.gradient_norms[name] = g_norm
            event.update_ratios[name] = lr * g_norm / max(w_norm, _TINY)
            if any(not np.all(np.isfinite(g)) for _, g in pairs):
                bad.append(name)
        order = [layer.name for layer in _layers(model)]
        event.nonfinite_gradients = sorted(bad, key=lambda n: -order.index(n) if n in order else 0)

    def _log_event(self, event: GuardEvent) -> None:
        if self._writer is None:
            return
        with self._writer.as_default():
            _write_summary("safeops.NaNGuard/events", float(len(self.events)), event.step, "scalars")
            _write_summary("safeops.NaNGuard/learning_rate", event.learning_rate_after, event.step, "scalars")
            _write_summary("safeops.NaNGuard/event", str(event), event.step, "text")
        self._writer.flush()

    def _install_scaled_learning_rate(self) -> None:
        """For ``rollback``: makes the learning rate one that can be lowered inside the traced
        step, or refuses the optimizer now rather than at the first bad step."""
        opt = _inner_optimizer(self._optimizer)
        current = getattr(opt, "_learning_rate", None)
        if isinstance(current, (keras.Variable, tf.Variable, ScaledSchedule, _ScaledCallable)):
            return
        if isinstance(current, keras.optimizers.schedules.LearningRateSchedule):
            opt.learning_rate = ScaledSchedule(current)
        elif callable(current):
            opt.learning_rate = _ScaledCallable(current)
        else:
            raise ValueError(message(
                _OP, "the optimizer's learning_rate (policy='rollback' lowers it)",
                "a float, a LearningRateSchedule or a zero-argument callable", type(current).__name__))
        # The compiled step captured the old learning rate: trace it again.
        self.model.make_train_function(force=True)


# --------------------------------------------------------------------------- helpers


def _trace_as_iterator_would(fn, iterator, traced: list) -> None:
    """Traces Keras' one-batch step for the dataset's element spec, once.

    Keras' own step takes the iterator and draws the batch inside its graph,
    so its one-batch step is traced for the dataset's shapes (``[None,
    ...]``). Called with the kept eager batches, that step would be traced
    for their concrete shapes, which changes the rounding of some ops in the
    last bits (an embedding's gradient: 1.5e-8 after a few Adam steps).
    Traced first for the general shapes, the calls with the batches dispatch
    to that graph, and a guarded run computes what an unguarded one does.
    The step is found in the closure of Keras 3's train function (TensorFlow
    backend); anything else (no spec, a distributed iterator, another Keras)
    is left as it is.
    """
    if traced or not isinstance(iterator, tf.data.Iterator):
        return
    traced.append(True)
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
    for step in (getattr(c, "__wrapped__", None) for c in cells
                 if getattr(c, "__name__", "") == "one_step_on_data"):
        if hasattr(step, "get_concrete_function"):
            try:
                step.get_concrete_function(iterator.element_spec)
            except Exception:  # noqa: BLE001 - a step that cannot be traced this way is traced by its call
                pass


def _write_summary(tag: str, value, step: int, plugin: str) -> None:
    """``tf.summary.scalar`` / ``text`` without the ``tensorboard`` package: the same
    record (a tensor tagged with the TensorBoard plugin that shows it), written
    with core TensorFlow's ``tf.summary.write``."""
    metadata = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name=plugin))
    tensor = tf.constant(value, tf.float32) if plugin == "scalars" else tf.constant(value)
    tf.summary.write(tag, tensor, step=step, metadata=metadata.SerializeToString())


def _float16_activation_overflow(layer, output) -> str:
    """Evidence that ``layer``'s float16 output overflowed, or ''.

    Its output (from finite inputs: it is the first non-finite one) holds inf
    while its finite values come near float16's largest value: values that
    outgrew the range, unlike a log(0), whose -inf sits beside small values.
    """
    values = [np.asarray(_to_numpy(t)) for t in tf.nest.flatten(output)]
    v = np.concatenate([t.astype(np.float64).ravel() for t in values if t.dtype == np.float16] or [[]])
    finite = np.abs(v[np.isfinite(v)])
    n_inf = int(np.isinf(v).sum())
    if not n_inf or not finite.size or finite.max() < _NEAR_FLOAT16_MAX:
        return ""
    return (f"layer '{layer.name}' computes in float16 and its output holds {n_inf} inf beside finite "
            f"values up to {finite.max():.4g} (float16's largest value is {FLOAT16_MAX:.0f})")


def _float16_state_overflow(model, optimizer) -> str:
    """'the float16 variable ... hold inf' for the first float16 model or optimizer variable holding inf."""
    for v in itertools.chain(model.variables, getattr(optimizer, "variables", [])):
        if tf.as_dtype(v.dtype) != tf.float16:
            continue
        n_inf = int(np.isinf(np.asarray(v.numpy(), np.float64)).sum())
        if n_inf:
            name = getattr(v, "path", None) or v.name
            return (f"the float16 variable '{name}' hold {n_inf} inf (float16's largest value is "
                    f"{FLOAT16_MAX:.0f})")
    return ""


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "values") and isinstance(getattr(value, "values"), tuple):  # PerReplica
        return np.concatenate([np.asarray(v) for v in value.values])
    return np.asarray(value)


def _concat_batches(batches: list):
    if not batches:
        return None
    return tf.nest.map_structure(lambda *parts: np.concatenate([_to_numpy(p) for p in parts]), *batches)

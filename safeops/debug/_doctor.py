"""``doctor``: one call that lints, checks the inputs, trains a few guarded steps and ranks the causes.

The guarded steps run on the user's own model and are undone: every model,
optimizer and metric variable is copied before and written back after, bit
for bit (the test suite checks this), and the learning rate is put back. So
``doctor`` can be called on the model that is about to be trained.

When the guarded run fails, ``doctor`` tries the two commonest cures on the
same steps, each from the same starting weights: the inputs standardised
with training-split statistics, and the learning rate divided by 10. A cure
that makes the run finite is evidence for its cause, and the ranking uses it.

A model whose training already went NaN usually holds NaN weights. No step
from them can be finite, so the guarded run and both cures would fail
whatever the cause: ``doctor`` says so, and runs them on a freshly
initialised copy (``keras.models.clone_model``, compiled with a copy of
the optimizer's configuration and the same loss). A model that cannot be
cloned (a subclassed model without ``get_config``) is not trained at all.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from safeops._validate import message
from safeops.debug._lint import lint
from safeops.debug._locate import locate_nonfinite
from safeops.debug._events import GuardEvent
from safeops.debug._guard import NaNGuard
from safeops.debug._state import (
    ScaledSchedule,
    _dedupe,
    _inner_optimizer,
    _reads_indices,
    _ScaledCallable,
    _tf_variable,
)
from safeops.debug._preflight import InputReport, check_inputs


@dataclasses.dataclass
class Cause:
    """One likely cause, with the evidence for it and the fix.

    ``score`` orders the report: 90+ confirmed by an experiment or seen in
    the data, 60-89 consistent with what the guarded run showed, below 60 a
    latent hazard that did not fire in the steps run.
    """

    title: str
    score: int
    evidence: str
    fix: str
    source: str   # 'inputs', 'lint', 'training', 'locate', 'weights'

    def __str__(self) -> str:
        return f"{self.title}  [score {self.score}, from {self.source}]\n     evidence: {self.evidence}\n" \
               f"     fix: {self.fix}"


@dataclasses.dataclass
class DoctorReport:
    """What :func:`doctor` found, as data; ``str(report)`` reads as a report.

    Attributes:
      causes: :class:`Cause` list, most likely first.
      lint: the findings of :func:`safeops.debug.lint` on the model and loss.
      inputs: the :class:`~safeops.debug.InputReport` of the training inputs.
      training: the guarded run: ``steps`` run, ``finite`` (no event; None
        when no step was run), ``losses`` (batch losses), ``events``
        (:class:`GuardEvent` list), ``nonfinite_weights`` (names of the
        variables that held NaN or Inf before any step), ``fresh_copy``
        (whether the steps ran on a freshly initialised copy).
      experiments: for a failed run, ``{'standardised inputs': finite?,
        'learning rate / 10': finite?}`` (only those that could be tried).
      located: the :func:`safeops.debug.locate_nonfinite` report on the
        offending batch when an op (not the optimizer) made the NaN.
    """

    causes: list
    lint: list
    inputs: InputReport | None
    training: dict
    experiments: dict
    located: Any = None

    @property
    def top(self) -> Cause | None:
        """The most likely cause, or None when nothing was found."""
        return self.causes[0] if self.causes else None

    def __str__(self) -> str:
        t = self.training
        if t.get("finite") is None:
            lines = ["safeops.debug.doctor: no guarded training step run (the weights are not finite "
                     "and the model could not be cloned)"]
        else:
            state = "stayed finite" if t["finite"] else f"went wrong at step {t['events'][0].step}"
            where = " on a freshly initialised copy" if t.get("fresh_copy") else ""
            steps = t.get("steps", 0)
            lines = [f"safeops.debug.doctor: {steps} guarded training step{'' if steps == 1 else 's'}"
                     f"{where} {state}"]
        if t.get("losses"):
            finite = [v for v in t["losses"] if math.isfinite(v)]
            if finite:
                lines.append(f"  batch loss: first {t['losses'][0]:.4g}, last finite {finite[-1]:.4g}")
        for name, ok in self.experiments.items():
            lines.append(f"  experiment, {name}: {'finite' if ok else 'still non-finite'}")
        if not self.causes:
            lines.append("  no likely cause found")
        else:
            lines.append("Likely causes, most likely first:")
            lines += [f"  {i + 1}. {c}" for i, c in enumerate(self.causes)]
        if self.inputs is not None and self.inputs.fix and any(c.source == "inputs" for c in self.causes):
            lines += ["", self.inputs.fix]
        return "\n".join(lines)


def doctor(model: keras.Model, data: Any, *, loss: Any = None, steps: int = 30, batch_size: int = 32,
           spike_factor: float = 100.0, experiments: bool = True, feature_names=None,
           preflight_rows: int = 10_000, verbose: bool = True) -> DoctorReport:
    """Lints the model, checks its inputs, trains a few guarded steps, and ranks the likely causes.

    Args:
      model: a compiled Keras model (its optimizer and loss are used).
      data: ``(x, y)`` arrays, or a ``tf.data.Dataset`` of ``(x, y)`` batches.
      loss: the loss to lint (default: the compiled one).
      steps: guarded training steps to run.
      batch_size: batch size for array data.
      spike_factor: a batch loss this many times the recent median counts as
        divergence (see :class:`NaNGuard`).
      experiments: when the run fails, retry with standardised inputs and
        with the learning rate / 10 to confirm the cause.
      feature_names: names for :func:`check_inputs`.
      preflight_rows: for a dataset, how many leading rows :func:`check_inputs` reads.
      verbose: print the report.

    Returns:
      A :class:`DoctorReport`. The model's variables, optimizer state and
      learning rate are exactly what they were before the call. Where the
      model or optimizer variables already hold NaN or Inf, the steps and
      the experiments run on a freshly initialised copy of the model (see
      the module docstring) and the report says which variables.
    """
    for arg, value in (("steps", steps), ("batch_size", batch_size), ("preflight_rows", preflight_rows)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(message("safeops.debug.doctor", arg, "a positive integer", repr(value)))
    if getattr(model, "optimizer", None) is None:
        # An uncompiled Keras model has no `optimizer` attribute at all: say so, not AttributeError.
        name = getattr(model, "name", type(model).__name__)
        raise ValueError(message("safeops.debug.doctor", "model", "compiled with an optimizer",
                                 f"model '{name}', which is not compiled"))
    x, y, dataset = _split_data(data, preflight_rows)
    x_sample = _first(x, batch_size) if dataset is None else _first_batch_inputs(dataset)
    loss_fn = loss if loss is not None else getattr(model, "loss", None)

    lint_findings = _run_lint(model, x_sample, loss_fn)
    inputs = check_inputs(x, feature_names=feature_names) if _is_feature_matrix(model, x) else None

    if not model.built:
        model(x_sample)   # create the weights, so that they are saved and restored too
    state = _ModelState(model)
    poisoned = state.nonfinite()
    subject, subject_state, clone_error = model, state, None
    if poisoned:   # no step from these weights can be finite: train a fresh copy instead
        subject, clone_error = _fresh_copy(model, x_sample)
        subject_state = _ModelState(subject) if subject is not None else None
    located = None
    tried: dict = {}
    try:
        if subject is None:
            training = {"steps": 0, "finite": None, "losses": [], "events": []}
        else:
            training = _guarded_run(subject, x, y, dataset, steps, batch_size, spike_factor)
        if training["finite"] is False:
            event = training["events"][0]
            if not _diverged(event):
                located = _run_locate(subject, training["batch"])
            if experiments:
                if inputs is not None and {"scale", "spread"} & inputs.kinds():
                    subject_state.restore()
                    xs = _standardise(x)
                    tried["standardised inputs"] = _guarded_run(
                        subject, xs, y, None, steps, batch_size, spike_factor)["finite"]
                subject_state.restore()
                with _learning_rate_scaled(subject, 0.1) as scaled:
                    if scaled.applied:
                        tried["learning rate / 10"] = _guarded_run(
                            subject, x, y, dataset, steps, batch_size, spike_factor)["finite"]
    finally:
        state.restore()
    training.pop("batch", None)
    training["nonfinite_weights"] = poisoned
    training["fresh_copy"] = bool(poisoned) and subject is not None
    causes = _rank(lint_findings, inputs, training, tried, located)
    if poisoned:
        causes = sorted([_poisoned_cause(poisoned, state.weights, clone_error)] + causes,
                        key=lambda c: -c.score)
    report = DoctorReport(causes=causes,
                          lint=lint_findings, inputs=inputs, training=training, experiments=tried,
                          located=located)
    if verbose:
        print(report)
    return report


# --------------------------------------------------------------------------- the pieces


def _run_lint(model, x_sample, loss_fn) -> list:
    return list(lint(model, x_sample, loss=loss_fn, print=False))


def _run_locate(model, batch):
    if batch is None:
        return None
    x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
    return locate_nonfinite(model, x, y)


class _LossRecorder(keras.callbacks.Callback):
    """Keeps each batch's loss (from the guard's view) and the offending batch."""

    def __init__(self, guard: NaNGuard):
        super().__init__()
        self.guard = guard
        self.losses: list[float] = []
        self.batch = None

    def on_train_batch_end(self, batch, logs=None):
        n = len(self.guard.events)
        if n and self.guard.events[-1].step == len(self.losses):
            self.losses.append(self.guard.events[-1].loss)
            self.batch = self.guard._batches[0] if self.guard._batches else None
        else:
            self.losses.append(self.guard._recent[-1] if self.guard._recent else math.nan)


def _fresh_copy(model, x_sample):
    """``(copy, None)``: ``model`` with fresh weights, compiled alike; ``(None, why)`` if it cannot be.

    ``keras.models.clone_model`` builds new layers from the configuration,
    so their weights come from the initializers; the optimizer is rebuilt
    from its serialized configuration (its state starts empty, as at the
    first ``fit``), and the loss object is shared (it holds no state).
    """
    compiled = model.compiled
    try:
        # Keras compiles a clone of a compiled model from its serialized compile
        # configuration, which fails for a loss function that is not registered
        # ("Could not locate function 'my_loss'"): the copy is compiled here instead.
        model.compiled = False
        try:
            copy = keras.models.clone_model(model)
        finally:
            model.compiled = compiled
        optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
        copy.compile(optimizer=optimizer, loss=model.loss, jit_compile=getattr(model, "jit_compile", "auto"))
        if not copy.built:
            copy(x_sample)
    except Exception as error:  # noqa: BLE001 - any model Keras cannot clone: say why in the report
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return copy, None


def _poisoned_cause(names, total, clone_error) -> Cause:
    shown = ", ".join(f"'{n}'" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    evidence = (f"{len(names)} of {total} model and optimizer variables hold NaN or Inf before any step "
                f"({shown}): an earlier update diverged, and every step from these weights is non-finite")
    if clone_error is None:
        evidence += ("; the guarded steps and experiments above ran on a freshly initialised copy "
                     "(keras.models.clone_model), so the other causes are about training from scratch")
    else:
        evidence += (f"; the model could not be cloned ({clone_error}), so no step and no experiment "
                     "was run: the other causes are from the lint and the inputs only")
    return Cause("the weights are already non-finite", 93, evidence,
                 "restore finite weights (the last good checkpoint, or rebuild the model), then fix the "
                 "cause that made them diverge; during fit, NaNGuard(policy='rollback') keeps the last "
                 "finite weights", "weights")


def _guarded_run(model, x, y, dataset, steps, batch_size, spike_factor) -> dict:
    guard = NaNGuard("stop", spike_factor=spike_factor, verbose=0)
    recorder = _LossRecorder(guard)
    callbacks = [guard, recorder]
    if dataset is None:   # arrays: the first batches in order, cycling, exactly `steps` of them
        # A list of input arrays (a multi-input model) is one structure to tf.data, not a stack.
        dataset = tf.data.Dataset.from_tensor_slices((_as_structure(x), _as_structure(y))).batch(batch_size)
    model.fit(dataset.repeat().take(steps), epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return {"steps": len(recorder.losses), "finite": not guard.events, "losses": recorder.losses,
            "events": guard.events, "batch": recorder.batch}


class _ModelState:
    """Every model, optimizer and metric variable, copied to host once and written back."""

    def __init__(self, model):
        opt = model.optimizer
        if opt is not None and not getattr(opt, "built", True):
            opt.build(model.trainable_variables)   # what fit would do first anyway
        variables = list(model.variables) + (list(opt.variables) if opt is not None else [])
        self.weights = len(_dedupe(variables))   # the first entries; the metrics' come after
        variables = _dedupe(variables + [v for m in model.metrics for v in m.variables])
        self.names = [getattr(v, "path", None) or v.name for v in variables]
        self.variables = [_tf_variable(v) for v in variables]
        self.values = [v.numpy() for v in self.variables]
        self.model = model
        self.history = getattr(model, "history", None)
        self.stop_training = getattr(model, "stop_training", False)

    def nonfinite(self) -> list:
        """Names of the model's and optimizer's float variables whose saved values hold NaN or Inf.

        Metric variables are left out: a NaN loss leaves the loss tracker's
        total NaN until ``fit`` resets it, and no step reads it.
        """
        named = zip(self.names[:self.weights], self.variables, self.values)
        return [name for name, v, value in named
                if tf.as_dtype(v.dtype).is_floating and not np.isfinite(value.astype(np.float64)).all()]

    def restore(self) -> None:
        for v, value in zip(self.variables, self.values):
            v.assign(value)
        self.model.history = self.history
        self.model.stop_training = self.stop_training


class _learning_rate_scaled:
    """Context: the optimizer's learning rate times ``factor``, put back on exit.

    A float rate (a variable) is assigned; so is the scale of a rate that
    :class:`NaNGuard` already wrapped. A ``LearningRateSchedule`` or a
    zero-argument callable is wrapped for the duration (``ScaledSchedule``,
    ``_ScaledCallable``), and the model's train function is retraced on entry
    and on exit, since a traced step holds the rate it was traced with.
    ``applied`` says whether the rate could be scaled (any other kind of rate
    is left alone, and the experiment is not run).
    """

    def __init__(self, model, factor):
        self.model = model
        self.opt = _inner_optimizer(model.optimizer)
        self.factor = factor

    def __enter__(self):
        lr = getattr(self.opt, "_learning_rate", None)
        self.variable = self.value = self.schedule = None
        if isinstance(lr, (keras.Variable, tf.Variable)):
            self.variable = lr
        elif isinstance(lr, (ScaledSchedule, _ScaledCallable)):
            self.variable = lr.scale
        elif isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) or callable(lr):
            self.schedule = lr
            wrapped = ScaledSchedule(lr) if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) \
                else _ScaledCallable(lr)
            wrapped.scale.assign(self.factor)
            self.opt.learning_rate = wrapped
            self.model.make_train_function(force=True)
        if self.variable is not None:
            self.value = self.variable.numpy()
            self.variable.assign(self.value * self.factor)
        self.applied = self.variable is not None or self.schedule is not None
        return self

    def __exit__(self, *exc):
        if self.variable is not None:
            self.variable.assign(self.value)
        if self.schedule is not None:
            self.opt.learning_rate = self.schedule
            self.model.make_train_function(force=True)


def _diverged(event: GuardEvent) -> bool:
    return event.cause.startswith("training diverged") or event.cause.startswith("the optimizer step")


def _split_data(data, preflight_rows):
    if isinstance(data, tf.data.Dataset):
        xs, rows = [], 0
        for batch in data:          # the first `preflight_rows` rows (the dataset may be endless)
            bx, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            xs.append(np.asarray(bx) if not isinstance(bx, (dict, list, tuple)) else None)
            rows += len(bx) if xs[-1] is not None else 0
            if xs[-1] is None or rows >= preflight_rows:
                break
        x = np.concatenate(xs) if xs and all(v is not None for v in xs) else None
        return x, None, data
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return data[0], data[1], None
    raise TypeError(message("safeops.debug.doctor", "data",
                            "(x, y) or a tf.data.Dataset of (x, y) batches", type(data).__name__))


def _first(x, n):
    """The first ``n`` rows of an input array, or of each array of a list, tuple or dict of them."""
    if isinstance(x, dict):
        return {k: v[:n] for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(v[:n] for v in x)
    return x[:n]


def _first_batch_inputs(dataset):
    """The inputs of a dataset's first batch (one array, or the structure of a multi-input model)."""
    for batch in dataset.take(1):
        return keras.utils.unpack_x_y_sample_weight(batch)[0]
    raise ValueError(message("safeops.debug.doctor", "data", "a dataset with at least one batch",
                             "an empty one"))


def _as_structure(value):
    return tuple(value) if isinstance(value, list) else value


def _is_feature_matrix(model, x) -> bool:
    """Whether ``x`` is one array of features that :func:`check_inputs` should read.

    Integer arrays count unless the model reads them as indices (an
    ``Embedding``, an integer input): token ids are not standardised.
    """
    if x is None or isinstance(x, (dict, list, tuple)):
        return False
    kind = np.asarray(x).dtype.kind
    return kind == "f" or (kind in "iub" and not _reads_indices(model))


def _standardise(x):
    """Training-split standardisation with Keras' own layer (the fix the report recommends)."""
    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(np.asarray(x, np.float32))
    return np.asarray(norm(np.asarray(x, np.float32)))


# --------------------------------------------------------------------------- ranking


def _rank(lint_findings, inputs, training, tried, located) -> list:
    failed = training["finite"] is False
    event = training["events"][0] if failed else None
    causes: list[Cause] = []

    if inputs is not None:
        for f in inputs.findings:
            if f.kind == "nonfinite":
                causes.append(Cause("non-finite input values", 98, f.message, f.fix, "inputs"))
            elif f.kind in ("scale", "spread"):
                confirmed = tried.get("standardised inputs")
                score = 95 if confirmed else (75 if failed else 45)
                why = f.message + ("; the same steps on standardised inputs stay finite" if confirmed else "")
                causes.append(Cause(
                    "input features on a large or uneven scale" if f.kind == "scale"
                    else "feature scales differ by orders of magnitude",
                    score - (1 if f.kind == "spread" else 0), why,
                    "standardise: keras.layers.Normalization().adapt(x_train) or StandardScaler()"
                    ".fit(x_train), fitted on the training split only, applied to both splits",
                    "inputs"))
            elif f.kind == "constant":
                causes.append(Cause("constant input columns", 20, f.message, f.fix, "inputs"))

    for finding in lint_findings:
        fired = failed and not _diverged(event)
        where = getattr(finding, "location", "")
        causes.append(Cause(
            f"hazardous op: {getattr(finding, 'pattern', 'pattern')} ({getattr(finding, 'op_type', '')})",
            85 if fired else 50,
            f"{getattr(finding, 'message', '')}" + (f" at {where}" if where else ""),
            str(getattr(finding, "fix", "")), "lint"))

    if located is not None and getattr(located, "found", False):
        name = getattr(located, "input_name", None)
        causes.append(Cause(
            f"non-finite data in {name}" if name else f"first non-finite op: {located.op_name} "
                                                       f"({located.op_type})", 92,
            f"{located.cause} (in the {located.phase} pass" + (f", {located.location})" if
                                                                 located.location else ")"),
            str(located.fix), "locate"))

    if failed:
        lr_cured = tried.get("learning rate / 10")
        if _diverged(event):
            causes.append(Cause(
                "learning rate too high", 90 if lr_cured else 70,
                event.cause + ("; the same steps at a tenth of the learning rate stay finite"
                               if lr_cured else ""),
                "lower the learning rate, or train with NaNGuard(policy='rollback')", "training"))
        else:
            if not any(c.source in ("lint", "locate") and c.score >= 85 for c in causes):
                causes.append(Cause(f"non-finite step ({event.trigger})", 80, event.cause, event.fix,
                                    "training"))
            if lr_cured:
                causes.append(Cause(
                    "learning rate (a contributing factor)", 55,
                    "the same steps at a tenth of the learning rate stay finite, but the weights were finite "
                    "when the loss went NaN: a smaller rate only delays the op that fails",
                    "fix the op first; then lower the learning rate if needed", "training"))

    causes.sort(key=lambda c: -c.score)
    return causes

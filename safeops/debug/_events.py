"""The record of one non-finite step that :class:`NaNGuard` caught, and its diagnosis.

:class:`GuardEvent` holds what the guard saw (the layers whose weights or
gradients went non-finite, the batch's statistics from
:func:`batch_statistics`, the recent losses) and what it did. The helpers below
it turn that evidence into the likely cause and fix in plain words
(:func:`_likely_cause`), from the most specific evidence to the least.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from safeops import _dtypes

_TINY = _dtypes.tiny(tf.float64)
_DIVERGED = 1e3      # recent batch losses (or the weights' norm) that grew this much: a divergence
_NOTABLE_GROWTH = 10.0  # weight growth worth printing in an event
_SHOWN_ROWS = 5     # rows with non-finite entries named in a batch's statistics
_LARGE_INPUT = 1e2   # |x| above this: input scale is a suspect (check_inputs has the full rule)
_LOWER_THE_LEARNING_RATE = "lower the learning rate"   # how the fixes that blame it begin
FLOAT16_MAX = _dtypes.max_value(tf.float16)   # 65504: a float16 value beyond it is inf


#: The fix for an inverse trigonometric function at or past +-1 (lint's finding and locate's cause).
INVERSE_TRIG_FIX = {
    kind: (f"safeops.math.{kind.lower()}(x): {what}, and a finite gradient there (the derivative at the "
           "nearest number inside); a clip to [-1, 1] removes the NaN value but not the inf gradient at +-1")
    for kind, what in (("Acos", "the value at x clipped to [-1, 1]"),
                       ("Asin", "the value at x clipped to [-1, 1]"),
                       ("Atanh", "x clipped to the numbers inside (-1, 1)"))}
INVERSE_TRIG_FIX["Acosh"] = (
    "safeops.math.acosh(x): the value at x clipped to [1, inf), and a finite gradient there (the "
    "derivative at the nearest number above 1); a clip at 1 removes the NaN value but not the inf "
    "gradient at 1")

#: The fix for erfinv or ndtri at the ends of its domain (lint's finding and locate's cause).
QUANTILE_FIX = {
    kind: (f"safeops.math.{kind.lower()}(x): the value at x clipped to the numbers inside {domain}, a finite "
           "gradient there, and correct values in every mode (TensorFlow's erfinv is inf at 0.99999994, "
           "its ndtri -inf near 1e-8 under jit_compile)")
    for kind, domain in (("Erfinv", "(-1, 1)"), ("Ndtri", "(0, 1)"))}


#: The fix for lgamma or digamma at a pole (lint's finding and locate's cause).
LGAMMA_FIX = ("a shape, count or concentration parameter (a Poisson or negative-binomial rate, a Gamma "
              "shape, a Dirichlet concentration) must stay positive: make it safeops.math.softplus(z) plus a "
              "small floor, not the raw output of a linear layer")


def float16_fix(float16_variables: bool) -> str:
    """The fix for a float16 overflow; ``float16_variables``: the variables themselves are float16
    (the ``'float16'`` policy or a layer built with ``dtype='float16'``), not only the activations."""
    layer = ("give the layer that overflows dtype='float32' (or 'bfloat16': float32's range, float16's "
             "size), or keep its activations small (normalise its input)")
    if float16_variables:
        return ("use keras.mixed_precision.set_global_policy('mixed_float16') rather than float16 "
                "variables: variables, optimizer state and loss stay float32, and compile wraps the "
                "optimizer in a keras.optimizers.LossScaleOptimizer, which skips steps whose gradients "
                f"overflow; if an activation still overflows, {layer}. A lower learning rate does not "
                f"widen float16's range (largest value {FLOAT16_MAX:.0f})")
    return (f"{layer}; keep the optimizer a keras.optimizers.LossScaleOptimizer (compile adds one under "
            f"mixed_float16). A lower learning rate does not widen float16's range (largest value "
            f"{FLOAT16_MAX:.0f})")


@dataclasses.dataclass
class GuardEvent:
    """One non-finite step and what the guard did about it.

    Attributes:
      step: index of the training step (counted over the whole ``fit``).
      epoch, batch: where it happened.
      action: ``'stop'``, ``'skip'``, ``'rollback'`` or ``'give_up'``.
      trigger: what went wrong: ``'non-finite loss'``, ``'loss spike'``,
        ``'non-finite weights'`` (the optimizer applied a non-finite gradient),
        or two of them joined by a comma.
      loss: the batch's loss as Keras computed it (NaN/inf, or finite when
        only the weights went bad); ``None`` when it cannot be told apart
        from the rounding of Keras' float32 running total of the epoch's
        losses (a batch after a far larger one, see ``NaNGuard``).
      nonfinite_weights: layers whose weights were non-finite after the
        batch, in layer order; ``nonfinite_weights[0]`` came first.
      nonfinite_gradients: layers whose gradients, recomputed at the
        pre-batch weights on the same batch, are non-finite, nearest the loss
        first (the order back-propagation reaches them).
      nonfinite_activations: layers whose forward output is non-finite
        (Sequential models), in forward order.
      loss_before: the batch's loss recomputed at the pre-batch weights;
        ``None`` when it could not be recomputed (see ``notes``), so that an
        unknown loss is never read as a non-finite one.
      gradient_norms: per layer, the global norm of its gradients there.
      update_ratios: per layer, ``lr * |grad| / |w|``: far above 1 means
        one step rewrote the layer (learning rate too high for the scale).
      batch_stats: statistics of the offending batch (see :func:`batch_statistics`);
        an integer input that the model reads as indices (it has an
        ``Embedding`` or declares integer inputs) is marked ``indices`` and
        left out of the input-scale evidence.
      cause: the likely cause in plain words; ``fix``: what to do.
      learning_rate_before, learning_rate_after: around a rollback.
      restored_to_step: the step of the state that was put back.
      recent_losses: the finite batch losses just before the event (up to 20).
      weight_growth: global norm of the trainable weights before the batch over
        their norm at the start of this ``fit`` (that norm floored at a root mean
        square of 1e-3 per weight, so weights that start at 0 do not read as
        infinite growth); orders of magnitude above 1 mean the run diverged, even
        when too few batch losses were seen to tell.
      float16_overflow: what shows that a float16 tensor overflowed (a
        layer computing in float16 whose output holds inf, a float16 weight,
        optimizer slot or gradient gone infinite); '' when nothing does.
        ``float16_variables``: whether the model's variables are float16.
      notes: parts of the diagnosis that were skipped or are approximate, and why.
    """

    step: int
    epoch: int
    batch: int
    action: str
    trigger: str
    loss: float | None
    nonfinite_weights: list = dataclasses.field(default_factory=list)
    nonfinite_gradients: list = dataclasses.field(default_factory=list)
    nonfinite_activations: list = dataclasses.field(default_factory=list)
    loss_before: float | None = None
    gradient_norms: dict = dataclasses.field(default_factory=dict)
    update_ratios: dict = dataclasses.field(default_factory=dict)
    batch_stats: dict = dataclasses.field(default_factory=dict)
    cause: str = ""
    fix: str = ""
    learning_rate_before: float = math.nan
    learning_rate_after: float = math.nan
    restored_to_step: int | None = None
    recent_losses: list = dataclasses.field(default_factory=list)
    weight_growth: float = math.nan
    float16_overflow: str = ""
    float16_variables: bool = False
    notes: list = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"NaNGuard: {self.trigger} at epoch {self.epoch}, batch {self.batch} "
            f"(step {self.step}); action: {self.action}",
            f"  batch loss {_format_loss(self.loss)}; loss at the pre-batch weights "
            + ("could not be recomputed" if self.loss_before is None else f"{self.loss_before:.4g}"),
        ]
        if self.nonfinite_weights:
            lines.append(f"  weights non-finite after the batch: {', '.join(self.nonfinite_weights)} "
                         f"(first: {self.nonfinite_weights[0]})")
        if self.nonfinite_activations:
            lines.append(f"  forward output non-finite first in: {self.nonfinite_activations[0]}")
        if self.nonfinite_gradients:
            lines.append(f"  gradients non-finite (nearest the loss first): "
                         f"{', '.join(self.nonfinite_gradients)}")
        if self.recent_losses:
            lines.append(f"  recent batch losses: {', '.join(f'{v:.3g}' for v in self.recent_losses[-6:])}")
        finite_ratios = {k: v for k, v in self.update_ratios.items() if math.isfinite(v)}
        if finite_ratios and not self.nonfinite_gradients:
            worst = max(finite_ratios, key=finite_ratios.get)
            lines.append(f"  largest update/weight ratio: {worst} ({self.update_ratios[worst]:.3g}) "
                         f"at learning rate {self.learning_rate_before:.3g}")
        if self.weight_growth > _NOTABLE_GROWTH:
            lines.append(f"  weights grew {self.weight_growth:.3g}x (global norm) since the start of fit")
        for name, stats in self.batch_stats.items():
            lines.append(f"  batch {name}: {_format_stats(stats)}")
        if self.action == "rollback":
            lines.append(f"  restored step {self.restored_to_step}; learning rate "
                         f"{self.learning_rate_before:.3g} -> {self.learning_rate_after:.3g}")
        if self.cause:
            lines.append(f"  likely cause: {self.cause}")
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def _format_loss(loss: float | None) -> str:
    return "unknown (lost to the rounding of the epoch's running total)" if loss is None else f"{loss:.4g}"


def batch_statistics(array: Any, columns: bool = True) -> dict:
    """Summary of one batch tensor: shape, min, max, mean, std, max |x|, counts of NaN, inf, zeros.

    For a 2-D batch and ``columns`` it also names the columns of largest
    magnitude (``top_columns``: ``[(column, max |x|), ...]``). When entries are
    NaN or inf, ``nonfinite_rows`` lists the first rows (index along axis 0,
    within the batch) that hold them, so that the bad examples can be found.
    """
    a = np.asarray(array)
    stats: dict = {"shape": tuple(a.shape), "dtype": str(a.dtype)}
    if a.size == 0 or a.dtype.kind not in "fiub":
        return stats
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    stats.update(
        n_nan=int(np.isnan(a).sum()),
        n_inf=int(np.isinf(a).sum()),
        n_zero=int((a == 0).sum()),
        n_negative=int((a < 0).sum()),
        min=float(finite.min()) if finite.size else math.nan,
        max=float(finite.max()) if finite.size else math.nan,
        mean=float(finite.mean()) if finite.size else math.nan,
        std=float(finite.std()) if finite.size else math.nan,
        abs_max=float(np.abs(finite).max()) if finite.size else math.nan,
    )
    if stats["n_nan"] or stats["n_inf"]:
        bad = ~np.isfinite(a.reshape(a.shape[0], -1)) if a.ndim else ~np.isfinite(a.reshape(1, 1))
        stats["nonfinite_rows"] = [int(i) for i in np.flatnonzero(bad.any(axis=1))[:_SHOWN_ROWS]]
    if columns and a.ndim == 2 and a.shape[1] > 1:
        col_max = np.nanmax(np.where(np.isfinite(a), np.abs(a), np.nan), axis=0)
        col_max = np.nan_to_num(col_max, nan=0.0)
        order = np.argsort(-col_max)[:3]
        stats["top_columns"] = [(int(j), float(col_max[j])) for j in order]
    return stats


def _format_stats(stats: dict) -> str:
    if "min" not in stats:
        return f"shape {stats['shape']}"
    text = (f"shape {stats['shape']}, min {stats['min']:.4g}, max {stats['max']:.4g}, "
            f"mean {stats['mean']:.4g}, std {stats['std']:.4g}, NaN {stats['n_nan']}, inf {stats['n_inf']}, "
            f"zeros {stats['n_zero']}")
    if "top_columns" in stats:
        text += ", largest columns " + ", ".join(f"#{j} ({m:.4g})" for j, m in stats["top_columns"])
    return text


def _likely_cause(event: GuardEvent) -> tuple[str, str]:
    """Plain-words cause and fix, from the most specific evidence to the least."""
    x_stats = [s for k, s in event.batch_stats.items() if k.startswith("x")]
    y_stats = [s for k, s in event.batch_stats.items() if k.startswith("y")]
    bad_inputs = sum(s.get("n_nan", 0) + s.get("n_inf", 0) for s in x_stats)
    bad_targets = sum(s.get("n_nan", 0) + s.get("n_inf", 0) for s in y_stats)
    if bad_inputs or bad_targets:
        where = "inputs (x)" if bad_inputs else "labels (y, the targets the loss compares with)"
        rows = sorted({r for s in (x_stats if bad_inputs else y_stats) for r in s.get("nonfinite_rows", [])})
        at = f" (rows {rows[:_SHOWN_ROWS]} of the batch)" if rows else ""
        return (f"the data is bad, not the model: batch {event.batch}'s {where} contain "
                f"{bad_inputs or bad_targets} NaN/inf entries{at}",
                ("clean the data (safeops.debug.check_inputs flags non-finite columns)" if bad_inputs else
                 "clean the labels: drop or repair the examples whose y is NaN/inf (np.isfinite(y)); "
                 "no change to the model makes a loss on a NaN target finite")
                + "; NaNGuard(policy='skip') drops such batches meanwhile")
    if event.float16_overflow:
        return (f"float16 overflow, not the learning rate: {event.float16_overflow}",
                float16_fix(event.float16_variables))
    # The batch's loss at the pre-batch weights, when finite, extends the record of batch losses:
    # with it a run that diverged within one or two steps still shows the rise.
    known_before = event.loss_before is not None
    losses = event.recent_losses + ([event.loss_before] if known_before and math.isfinite(event.loss_before)
                                    else [])
    rise = _largest_rise(losses)
    exploded = event.weight_growth >= _DIVERGED          # False for NaN (no recompute)
    scale = _input_scale(x_stats)
    if "spike" in event.trigger or rise >= _DIVERGED or exploded:
        evidence = []
        if event.recent_losses:
            path = [min(event.recent_losses), event.recent_losses[-1]]
            path = ([path[0]] if path[0] == path[1] else path)
            path += [event.loss] if event.loss is not None else []
            evidence.append("batch losses " + " -> ".join(f"{v:.3g}" for v in path))
        if exploded:
            evidence.append(f"the weights grew {event.weight_growth:.3g}x in {event.step} "
                            + ("step" if event.step == 1 else "steps"))
        history = f" ({'; '.join(evidence)})" if evidence else ""
        return (f"training diverged: the learning rate {event.learning_rate_before:.3g} is too high "
                f"for this model and data{history}"
                + (f"; {scale}, so gradients and updates are that large too" if scale else ""),
                _lower_the_learning_rate(scale))
    if event.nonfinite_activations:
        return (f"the forward pass turns finite inputs into NaN/inf in layer "
                f"'{event.nonfinite_activations[0]}'",
                "find the op with safeops.debug.locate_nonfinite and replace it by its safeops "
                "equivalent (safeops.debug.lint lists the hazardous patterns)")
    if known_before and not math.isfinite(event.loss_before):
        return ("the loss itself is non-finite at finite weights (log of 0, division by 0, "
                "cross-entropy on probabilities)",
                "run safeops.debug.lint / locate_nonfinite and use the safeops drop-in for the op they name")
    if event.nonfinite_gradients:
        return (f"the loss is finite but its gradient is not, first in layer "
                f"'{event.nonfinite_gradients[0]}' (sqrt or norm at 0, tf.where over a NaN branch)",
                "run safeops.debug.locate_nonfinite; safeops.math.sqrt / norm / divide_no_nan keep "
                "gradients finite")
    if event.loss_before is None:
        # No recompute, so no gradients: the batch's own loss is all there is to go by.
        if event.loss is not None and not math.isfinite(event.loss):
            return ("the batch's loss is non-finite at finite inputs; it could not be recomputed at the "
                    "pre-batch weights to tell which op made it so",
                    "run safeops.debug.lint / locate_nonfinite on guard.bad_batch and use the safeops "
                    "drop-in for the op they name")
        where = f" in layer '{event.nonfinite_weights[0]}'" if event.nonfinite_weights else ""
        return (f"the update made the weights non-finite{where}, but the loss and gradients at the "
                f"pre-batch weights could not be recomputed to tell a non-finite gradient (sqrt or norm "
                f"at 0, tf.where over a NaN branch) from an overflowing step",
                "run safeops.debug.locate_nonfinite on guard.bad_batch; if the gradients are finite, "
                "lower the learning rate")
    worst = max(event.update_ratios.values(), default=0.0)
    return (f"the optimizer step overflowed: the gradients were finite but one update moved the weights "
            f"by up to {worst:.3g}x their norm at learning rate {event.learning_rate_before:.3g}"
            + (f"; {scale}" if scale else ""),
            _lower_the_learning_rate(scale))


def _lower_the_learning_rate(scale: str) -> str:
    """The fix for a divergence or an overflowing step; ``scale``: the input-scale finding, if any."""
    return (_LOWER_THE_LEARNING_RATE + " (policy='rollback' does it for you)"
            + (" and standardise the inputs with statistics of the training split only "
               "(safeops.debug.check_inputs shows how)" if scale else ""))


def _largest_rise(losses: list) -> float:
    """The largest ratio of a loss to an earlier one (1 when the losses only fall).

    Only against a non-negative earlier minimum: once a loss that can be
    negative has gone below 0, a ratio says nothing about a rise.
    """
    rise, lowest = 1.0, math.inf
    for value in losses:
        if 0.0 <= lowest < math.inf:
            rise = max(rise, value / max(lowest, _TINY))
        lowest = min(lowest, value)
    return rise


def _input_scale(x_stats: list) -> str:
    """'input column #3 reaches |x| = 2e+06' when the inputs are large, else ''."""
    x_stats = [st for st in x_stats if not st.get("indices")]   # token or category ids
    largest = max(x_stats, key=lambda st: st.get("abs_max", 0.0), default={})
    x_max = largest.get("abs_max", 0.0)
    if not x_max > _LARGE_INPUT:
        return ""
    columns = largest.get("top_columns")
    if columns and columns[0][1] == x_max:
        return f"input column #{columns[0][0]} reaches |x| = {x_max:.4g}"
    return f"the inputs reach |x| = {x_max:.4g}"

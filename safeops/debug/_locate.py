"""``locate_nonfinite``: run one step and name the op where NaN or Inf was born, and why.

How it works
------------
The function (or a Keras model's training step: ``loss(y, model(x))`` and
its gradient with respect to the trainable variables; for a plain function,
what a training step would differentiate, never the labels) is traced into one
graph together with its gradient (:func:`safeops.debug._trace.trace_step`),
in a variant that returns *every* floating-point intermediate tensor. One
call of that graph computes them all with the very kernels a normal step
uses; the ops are then read in creation order, which is a topological
order with the forward pass first. The first op whose float inputs are all
finite but whose output is not is where the non-finite value was born. Its
inputs' statistics explain it: ``log`` of an input with zeros, ``x / y``
with zeros in ``y``, ``exp`` of an input above ``log(max float)``, the
gradient of ``sqrt`` at 0, ...

A non-finite value that is born and then masked (``tf.where(x > 0,
log(x), 0)`` in the forward pass) is reported only when the loss or a
gradient ends up non-finite; then the first op that made one is named, as
``tf.debugging.enable_check_numerics`` would (it stops at the first
non-finite output in execution order), but with the cause.

Compared with ``enable_check_numerics``: nothing global is switched on, the
run does not stop at the first op, the inputs' statistics and a fix come
with the answer, and a model's variables (including BatchNorm statistics and
seed generators, which a traced step may update) are restored afterwards.
Limits: a nested ``tf.function`` inside the user's code is one call op here
(the report names the call); the values come from one run of the graph, so
an op whose value depends on randomness (dropout) sees one draw.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _validate
from safeops.debug import _trace
from safeops.debug._events import FLOAT16_MAX, INVERSE_TRIG_FIX, LGAMMA_FIX, QUANTILE_FIX, float16_fix
from safeops.debug._patterns import _is_variance

_OP = "safeops.debug.locate_nonfinite"


@dataclasses.dataclass
class TensorStats:
    """Summary of one tensor: range and the counts that explain a NaN."""

    name: str
    shape: tuple
    dtype: str
    min: float
    max: float
    zeros: int
    negatives: int
    pos_inf: int
    neg_inf: int
    nans: int
    size: int

    @property
    def infinities(self) -> int:
        return self.pos_inf + self.neg_inf

    @classmethod
    def of(cls, name: str, value: np.ndarray) -> "TensorStats":
        v = np.asarray(value, dtype=np.float64)
        finite = v[np.isfinite(v)]
        return cls(name=name, shape=tuple(v.shape), dtype=str(getattr(value, "dtype", v.dtype)),
                   min=float(finite.min()) if finite.size else math.nan,
                   max=float(finite.max()) if finite.size else math.nan,
                   zeros=int(np.sum(v == 0)), negatives=int(np.sum(v < 0)),
                   pos_inf=int(np.sum(v == np.inf)), neg_inf=int(np.sum(v == -np.inf)),
                   nans=int(np.sum(np.isnan(v))), size=int(v.size))

    def __str__(self) -> str:
        spread = "no finite values" if math.isnan(self.min) else \
            f"min {self.min:.4g}, max {self.max:.4g} (finite values)"
        return (f"{self.name} {list(self.shape)} {self.dtype}: {spread}; zeros {self.zeros}, "
                f"negatives {self.negatives}, "
                f"+inf {self.pos_inf}, -inf {self.neg_inf}, NaN {self.nans} of {self.size}")


@dataclasses.dataclass
class NonFiniteReport:
    """Where the first NaN or Inf of a step was born, and why.

    ``found`` is False when the loss and every gradient are finite (for a
    model called without ``y``: when every tensor of the forward pass is).
    ``phase`` is ``'forward'`` or ``'backward'``; ``forward_op`` names, for a
    gradient op, the forward op it differentiates. ``input_stats`` describe
    the op's float inputs, ``output_stats`` its outputs; ``nonfinite_outputs``
    lists which of the step's results (the loss, gradients by variable) are
    not finite. ``input_name`` is set when the non-finite values were already
    in the data: the user's name for that input (``'x'``, ``'y'``, a
    function's parameter). ``note`` says what was not checked (no ``y``: the
    loss and gradients).
    """

    found: bool
    phase: str | None = None
    op_name: str | None = None
    op_type: str | None = None
    location: str | None = None
    input_stats: list = dataclasses.field(default_factory=list)
    cause: str = ""
    fix: str = ""
    forward_op: str | None = None
    output_stats: list = dataclasses.field(default_factory=list)
    nonfinite_outputs: list = dataclasses.field(default_factory=list)
    later_sources: int = 0
    input_name: str | None = None
    note: str = ""

    def __str__(self) -> str:
        if not self.found:
            what = "the forward pass is finite" if self.note else "the loss and all gradients are finite"
            return f"safeops.debug.locate_nonfinite: {what}" + (f" ({self.cause})" if self.cause else "") + \
                (f"\n  note: {self.note}" if self.note else "")
        if self.input_name is not None:
            lines = [f"safeops.debug.locate_nonfinite: the data fed as {self.input_name} already holds "
                     f"non-finite values", f"  input {self.input_name} (graph op {self.op_name}) "
                                           f"passed at {self.location}"]
        else:
            lines = [f"safeops.debug.locate_nonfinite: first non-finite value made in the {self.phase} pass "
                     f"by", f"  op {self.op_name} ({self.op_type}) at {self.location}"]
        if self.forward_op:
            lines.append(f"  (part of the gradient of {self.forward_op})")
        lines.append("  inputs:")
        lines += [f"    {s}" for s in self.input_stats] or ["    (none)"]
        lines.append("  outputs:")
        lines += [f"    {s}" for s in self.output_stats]
        lines.append(f"  cause: {self.cause}")
        lines.append(f"  fix: {self.fix}")
        if self.nonfinite_outputs:
            shown = ", ".join(self.nonfinite_outputs[:6]) + (" ..." if len(self.nonfinite_outputs) > 6 else "")
            lines.append(f"  non-finite results of the step: {shown}")
        if self.later_sources:
            lines.append(f"  ({self.later_sources} later op(s) also turned finite inputs non-finite)")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


def locate_nonfinite(fn: Any, *args: Any, loss: Any = None, **kwargs: Any) -> NonFiniteReport:
    """Runs ``fn`` forward and backward once and names the op where NaN or Inf first appeared.

    Args:
      fn: a Python function, a ``tf.function``, or a Keras model. For a
        model, ``args`` are ``x, y`` (and optionally ``sample_weight``): the
        step is ``loss(y, model(x, training=True))`` plus the model's own
        losses, differentiated with respect to its trainable variables.
        With ``x`` alone (or ``y=None``) only the forward pass
        ``model(x, training=True)`` is run, and its first non-finite tensor
        is reported, even one masked before the output: without labels there
        is no loss to differentiate, so the loss and gradients are not
        checked (the report's ``note`` says so).
      *args: the inputs (real values: this runs the step).
      loss: for a model, the loss: a callable ``loss(y_true, y_pred)``, a
        Keras loss or its name, or a dict (by output name) or list (by
        output position) of them. Default: the compiled loss, as training
        runs it. Must be None for a plain function, whose result is the loss.
      **kwargs: keyword arguments for ``fn`` (a plain function only).

    Returns:
      A :class:`NonFiniteReport`. For a plain function the gradient is that
      of the sum of its float outputs with respect to what a training step
      differentiates: the trainable variables it reads, or if it reads none
      its float array arguments except those whose parameter name says they
      hold data (``y``, ``y_true``, ``labels``, ``targets``,
      ``sample_weight``, ``mask``; so ``loss(y, logits)`` is differentiated
      with respect to ``logits`` only). Non-finite data is named by the
      argument that holds it; labels (a model's ``y``, a function's ``y_true``
      or ``labels``) are called labels, with the rows that hold NaN or inf.

    Raises:
      ValueError: a model called without inputs or with an ``x`` it rejects,
        a loss Keras cannot interpret, ``loss`` given with a plain function,
        or a function with no floating-point result.

    Example:
      >>> import tensorflow as tf
      >>> report = locate_nonfinite(lambda x: tf.reduce_sum(tf.math.log(x)), tf.constant([1.0, 0.0]))
      >>> report.phase, report.op_type, report.cause.split(":")[0]
      ('forward', 'Log', 'Log of 0')
    """
    forward_only = False
    if _trace.is_keras_layer(fn):
        if not args:
            raise ValueError(_validate.message(_OP, "args", "x, y (and optionally sample_weight) for a Keras "
                                               "model", "none"))
        # Without labels there is no loss: a made-up one (the sum of the outputs) would have gradients
        # that training never computes, so only the forward pass is run and checked.
        forward_only = len(args) < 2 or args[1] is None
        traced = _trace.trace_step(fn, args[:1] if forward_only else args, {},
                                   loss=_trace.resolve_loss(loss, _OP), gradients=not forward_only,
                                   collect=True, op=_OP)
    else:
        if loss is not None:
            raise ValueError(_validate.message(_OP, "loss", "None for a plain function (what it returns is "
                                               "its loss)", repr(loss)))
        traced = _trace.trace_step(fn, args, kwargs, collect=True, op=_OP)
        if not traced.n_targets:
            raise ValueError(_validate.message(_OP, "fn", "a function that returns a floating-point loss",
                                               "no floating-point result"))
    saved = [(v, v.numpy()) for v in traced.graph.variables]
    try:
        values = traced.concrete(*traced.inputs)
    finally:
        for v, value in saved:
            v.assign(value)
    values = dict(zip(traced.fetch, (np.asarray(v) for v in values)))
    return _diagnose_forward(traced, values) if forward_only else _diagnose(traced, values)


# --------------------------------------------------------------------------- diagnosis


def _finite(value: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))


_NO_Y = ("no y was given, so only the forward pass model(x) was run: the loss and the gradients were "
         "not checked (pass y to check them)")


def _sources(traced, values: dict, ops: list) -> list:
    """``(index, op)`` of each op whose float inputs are all finite but whose output is not."""
    sources = []
    for index, op in enumerate(ops):
        outs = [t for t in op.outputs if t.name in values]
        if not outs or all(_finite(values[t.name]) for t in outs):
            continue
        floats_in = [t for t in op.inputs if t.name in values]
        if op.type == "Const" or (not floats_in and op.type not in ("Placeholder", "ReadVariableOp")):
            continue   # a constant -inf (a mask) is intended, not born here
        if all(_finite(values[t.name]) for t in floats_in):
            sources.append((index, op))
    return sources


def _diagnose(traced, values: dict) -> NonFiniteReport:
    bad_results = [name for name in traced.final if name in values and not _finite(values[name])]
    if not bad_results:
        return NonFiniteReport(found=False)
    ops = traced.graph.get_operations()
    sources = _sources(traced, values, ops)
    if not sources:   # pragma: no cover - every non-finite value has a first op
        return NonFiniteReport(found=True, cause="could not attribute the non-finite values to an op",
                               nonfinite_outputs=_describe_results(traced, bad_results))
    return _report(traced, values, ops, sources, _describe_results(traced, bad_results))


def _diagnose_forward(traced, values: dict) -> NonFiniteReport:
    """A model called without ``y``: the first non-finite tensor of ``model(x)``, masked or not."""
    ops = traced.graph.get_operations()
    sources = _sources(traced, values, ops[:traced.n_model])
    if not sources:
        return NonFiniteReport(found=False, note=_NO_Y)
    bad = [name for name in traced.model_outputs if name in values and not _finite(values[name])]
    report = _report(traced, values, ops, sources, [f"the model's output ({n})" for n in bad])
    report.note = _NO_Y + ("" if bad else "; the model's outputs are finite (the value is masked before "
                                           "them), so it matters only if the loss or a gradient reads it")
    return report


def _report(traced, values: dict, ops: list, sources: list, nonfinite_outputs: list) -> NonFiniteReport:
    index, op = sources[0]
    phase = "forward" if index < traced.n_forward else "backward"
    forward_op = _differentiated_op(op, ops[:traced.n_forward]) if phase == "backward" else None
    name = traced.fed_names.get(op.outputs[0].name) if op.type == "Placeholder" and op.outputs else None
    in_stats = [TensorStats.of(t.name, values[t.name]) for t in op.inputs if t.name in values]
    out_stats = [TensorStats.of(name or t.name, values[t.name]) for t in op.outputs if t.name in values]
    if name is not None:
        cause, fix = _explain_data(name, op.outputs[0].name in traced.labels, values[op.outputs[0].name])
    else:
        cause, fix = _explain(op, in_stats, out_stats, forward_op, traced.variables,
                              _float16_variables(traced.graph))
    where = _trace.location(forward_op if forward_op is not None and _trace.user_frame(op) is None else op)
    return NonFiniteReport(
        found=True, phase=phase, op_name=op.name, op_type=op.type, location=where, input_stats=in_stats,
        cause=cause, fix=fix, output_stats=out_stats,
        forward_op=f"{forward_op.type} '{forward_op.name}'" if forward_op is not None else None,
        nonfinite_outputs=nonfinite_outputs, later_sources=len(sources) - 1, input_name=name)


_SHOWN = 5   # indices of non-finite entries named in a cause


def _explain_data(name: str, is_labels: bool, value: np.ndarray) -> tuple:
    """Cause and fix for data that is already non-finite when the step starts."""
    v = np.asarray(value, dtype=np.float64)
    nans, infs = int(np.sum(np.isnan(v))), int(np.sum(np.isinf(v)))
    at = [tuple(int(i) for i in index) for index in np.argwhere(~np.isfinite(v))[:_SHOWN]]
    where = ""
    if at and v.ndim:
        shown = ", ".join(str(i[0]) if len(i) == 1 else str(i) for i in at)
        where = f" at index {shown}" + (" ..." if nans + infs > len(at) else "")
    if is_labels:
        return (f"the labels {name} (the targets, y_true of the loss) hold non-finite values ({nans} NaN, "
                f"{infs} inf){where}: the data is bad, not the model",
                f"clean the labels: drop or repair the examples whose {name} is NaN/inf (np.isfinite); "
                "no change to the model makes a loss on a NaN target finite")
    return (f"the input {name} already holds non-finite values ({nans} NaN, {infs} inf){where}",
            "clean the data: safeops.debug.check_inputs flags non-finite columns")


def _float16_variables(graph) -> bool:
    """Whether the step reads float16 variables (the 'float16' policy), not only float16 activations."""
    return any(getattr(v, "dtype", None) == tf.float16 for v in getattr(graph, "variables", ()))


def _describe_results(traced, names) -> list:
    return [f"gradient of {traced.gradient_of[n]}" if n in traced.gradient_of else f"the loss/output ({n})"
            for n in names]


_GRAD_OF = {"SqrtGrad": "Sqrt", "RsqrtGrad": "Rsqrt", "ReciprocalGrad": "Reciprocal", "TanhGrad": "Tanh",
            "SigmoidGrad": "Sigmoid", "SoftplusGrad": "Softplus", "ReluGrad": "Relu", "EluGrad": "Elu"}
_HAZARDOUS_FORWARD = ("Log", "Log1p", "Sqrt", "Rsqrt", "RealDiv", "Div", "Reciprocal", "Pow", "Exp",
                      "Xlogy", "Xdivy", "Acos", "Asin", "Atanh", "Acosh", "Atan2", "Softmax", "EuclideanNorm",
                      "Lgamma", "Digamma", "Erfinv", "Ndtri")


def _differentiated_op(op, forward_ops):
    """The forward op whose gradient ``op`` belongs to (best effort, from the tensors it reads)."""
    forward_names = {o.name for o in forward_ops}
    wanted = _GRAD_OF.get(op.type)
    read = [t for t in op.inputs if t.op.name in forward_names]
    for t in read:
        if wanted and t.op.type == wanted:
            return t.op
    for t in read:
        consumers = [c for c in t.consumers() if c.name in forward_names and c.type in _HAZARDOUS_FORWARD]
        if consumers:
            return consumers[0]
    for t in read:
        if t.op.type in _HAZARDOUS_FORWARD:
            return t.op
    if read:
        return read[0].op
    # Reads gradient tensors only (acos' 1/sqrt(1 - x**2) is Reciprocal of
    # Sqrt of Sub of Square(x)): the hazardous consumer of the forward
    # tensors a few gradient ops back, else their hazardous producer (acosh's
    # gradient divides by Sinh of its output).
    frontier, seen = list(op.inputs), set()
    for _ in range(4):
        earlier = []
        for t in frontier:
            if t.name in seen:
                continue
            seen.add(t.name)
            if t.op.name in forward_names:
                hazardous = [c for c in t.consumers()
                             if c.name in forward_names and c.type in _HAZARDOUS_FORWARD]
                if hazardous:
                    return hazardous[0]
                if t.op.type in _HAZARDOUS_FORWARD:
                    return t.op
            else:
                earlier.extend(t.op.inputs)
        frontier = earlier
    return None


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _explain(op, ins: list, outs: list, forward_op, variables: dict | None = None,
             float16_variables: bool = False) -> tuple:
    """The likely cause in plain words, and the fix.

    An inf made in a float16 tensor from finite inputs by anything but a
    log, a division by 0 or the like is float16's narrow range (largest
    value 65504) running out: that is said first, with the mixed-precision
    fix, since a lower learning rate does not widen the range.
    """
    cause, fix = _explain_op(op, ins, outs, forward_op, variables)
    if _float16_overflow(op, ins, outs, forward_op):
        # The generic cause blames the learning rate; an op-specific one (Exp above log(max)) is kept.
        detail = "" if cause.startswith(f"{op.type} overflowed to") else f"; {cause}"
        return (f"float16 overflow: {op.type} made {_count(outs[0].infinities, 'inf')} in a float16 tensor "
                f"from finite inputs (float16's largest value is {FLOAT16_MAX:.0f}){detail}",
                float16_fix(float16_variables))
    return cause, fix


#: Ops whose inf from finite inputs is a domain edge (log 0, 1/0), not a value outgrowing the dtype.
_DOMAIN_EDGE = ("Log", "Log1p", "Xlogy", "Xdivy", "Rsqrt", "Sqrt", "Acos", "Asin", "Atanh", "Reciprocal",
                "Inv", "Lgamma", "Digamma", "Erfinv", "Ndtri")


def _float16_overflow(op, ins: list, outs: list, forward_op) -> bool:
    """Whether ``op`` overflowed float16: its float16 output holds inf, and not at a domain edge."""
    if op.type in ("Placeholder", "ReadVariableOp") or not outs or outs[0].dtype != "float16":
        return False
    if not any(s.infinities for s in outs) or op.type in _DOMAIN_EDGE:
        return False
    if forward_op is not None and op.type in _GRAD_OF:   # SqrtGrad at 0 is 1/0, not an overflow
        return False
    if op.type in ("RealDiv", "Div", "DivNoNan") and ins and ins[-1].zeros:
        return False   # division by 0
    return True


def _explain_op(op, ins: list, outs: list, forward_op, variables: dict | None = None) -> tuple:
    """The likely cause of one op in plain words, and the fix (dtype-independent)."""
    kind = op.type
    nan = any(s.nans for s in outs)
    made = "NaN" if nan else "inf"
    x = ins[0] if ins else None
    fix_log = "safeops.math.log (finite value, live gradient at 0); on a softmax or sigmoid output use " \
              "safeops.math.log_softmax / log_sigmoid or the safeops.nn cross-entropy from logits"
    if kind == "Placeholder":   # no inputs: the counts are those of its output, the data
        data = outs[0] if outs else None
        return (f"an input of the step already holds non-finite values ({data.nans} NaN, "
                f"{data.infinities} inf)" if data else "an input of the step is already non-finite",
                "clean the data: safeops.debug.check_inputs flags non-finite columns")
    if kind == "ReadVariableOp":
        handle = op.inputs[0]
        name = (variables or {}).get(handle.name, handle.op.name)
        return (f"variable '{name}' already holds non-finite values: an earlier update diverged",
                "restart from finite weights (the last good checkpoint); during fit, "
                "safeops.debug.NaNGuard(policy='rollback') does this; in a custom loop, find the diverging "
                "step by running locate_nonfinite on the step before applying its gradients, and skip "
                "updates whose gradients are not finite")
    if forward_op is not None:
        return _explain_gradient(op, ins, outs, forward_op, made)
    if kind == "Log" and x is not None:
        source = op.inputs[0].op
        origin = ""
        if source.type in ("Softmax", "Sigmoid") and x.zeros:
            origin = f"; the input is a {source.type.lower()} output that underflowed to 0"
        elif source.type == "Sub" and source.inputs[1].op.type == "Sigmoid" and x.zeros:
            origin = "; the input is 1 - sigmoid(x), and the sigmoid saturated to 1 (x above about 17 " \
                     "in float32)"
            fix_log = "safeops.math.log_sigmoid(-x) for log(1 - sigmoid(x)), or the safeops.nn " \
                      "cross-entropy from logits"
        if x.zeros and not x.negatives:
            return f"Log of 0: input has {_count(x.zeros, 'zero')} (log(0) = -inf){origin}", fix_log
        return (f"Log of a negative number: input has {_count(x.negatives, 'negative value')} (NaN)"
                + (f" and {_count(x.zeros, 'zero')}" if x.zeros else ""),
                "check why the input is negative (a rate or variance from a linear layer? pass it "
                "through softplus or exp first); safeops.math.log clamps it to log(tiny) and hides the bug")
    if kind == "Log1p" and x is not None:
        return (f"Log1p at or below -1: input min is {x.min:.4g} (log1p(-1) = -inf, NaN below)",
                "safeops.math.log1p")
    if kind in ("RealDiv", "Div", "Reciprocal", "Inv") and ins:
        y = ins[-1]
        if y.zeros:
            return (f"Division by 0: the denominator has {_count(y.zeros, 'zero')} (x/0 = inf, 0/0 = NaN)",
                    "safeops.math.divide_no_nan(x, y), or keep the denominator away from 0")
        return (f"Division overflow: |numerator| up to {max(abs(ins[0].min), abs(ins[0].max)):.4g}, "
                f"|denominator| down to a value too small for {y.dtype}", "safeops.math.divide_no_nan, rescale")
    if kind == "Sqrt" and x is not None:
        return (f"Sqrt of a negative number: input has {_count(x.negatives, 'negative value')} (NaN)",
                "safeops.math.sqrt, and check why the input is negative (a variance from E[x^2] - E[x]^2?)")
    if kind == "Rsqrt" and x is not None:
        return (f"Rsqrt of 0 or a negative number: input has {_count(x.zeros, 'zero')}, "
                f"{_count(x.negatives, 'negative value')}",
                "safeops.math.rsqrt (finite at 0 and below: 1/sqrt(tiny), which a zero times is 0; finite "
                "gradient), or add a positive floor")
    if kind in ("Exp", "Expm1") and x is not None:
        return (f"Exp overflow: input max is {x.max:.4g}, above log(max {x.dtype}) "
                f"= {_dtypes.log_max(x.dtype):.4g}",
                "stay in log space: safeops.math.reduce_logsumexp, softmax, log_softmax, softplus; "
                "or subtract the max before exp")
    if kind in ("Cosh", "Sinh") and x is not None:
        # cosh(x) = exp(|x|) / 2 (1 + exp(-2|x|)): past the dtype's range from |x| = log(2 max) on.
        limit = _dtypes.log_max(x.dtype) + math.log(2.0)
        return (f"{kind} overflow: largest |input| is {max(abs(x.min), abs(x.max)):.4g}, above "
                f"log(2 max {x.dtype}) = {limit:.4g}",
                "for log(cosh(x)) use x + safeops.math.softplus(-2 x) - log(2) (keras.losses.log_cosh's "
                "form); otherwise stay in log space or bound the input")
    if kind in ("Lgamma", "Digamma") and x is not None:
        return (f"{kind} at a pole: input min is {x.min:.6g} ({_count(x.zeros, 'zero')}, "
                f"{_count(x.negatives, 'negative value')}); lgamma is inf and digamma NaN at 0 and at "
                "the negative integers", LGAMMA_FIX)
    if kind == "Pow" and len(ins) == 2:
        base, p = ins
        if base.zeros and p.negatives:
            return f"Pow of 0 to a negative power: base has {_count(base.zeros, 'zero')}", \
                "safeops.math.pow (the base is taken as tiny at the pole: finite value and gradient)"
        if base.negatives:
            return (f"Pow of a negative base to a fractional power: base has "
                    f"{_count(base.negatives, 'negative value')} (NaN)",
                    "safeops.math.pow (the base is clamped at 0 for a fractional power; sqrt for p = 0.5)")
        return f"Pow overflow: base up to {base.max:.4g}", "work in log space: exp(p * safeops.math.log(x))"
    if kind == "Softmax" and x is not None:
        return ("Softmax of a row with +inf or all -inf entries", "safeops.math.softmax (all -inf rows give 0)")
    if kind in ("Acos", "Asin", "Atanh") and x is not None:
        edge = ("at or beyond +-1 (inf at +-1, NaN beyond)" if kind == "Atanh"
                else "outside [-1, 1] (NaN there)")
        return (f"{kind} of an input {edge}: input range [{x.min:.9g}, {x.max:.9g}]; a cosine similarity "
                "or a dot product of normalised vectors lands past +-1 by a rounding error (1.00000012 "
                "in float32)", INVERSE_TRIG_FIX[kind])
    if kind == "Acosh" and x is not None:
        return (f"Acosh of an input below 1 (NaN there): input range [{x.min:.9g}, {x.max:.9g}]; a "
                "hyperbolic distance's argument (1 + 2|u - v|**2 / ..., or -<u, v> in the Lorentz model) "
                "lands below 1 by a rounding error where u = v", INVERSE_TRIG_FIX[kind])
    if kind in ("Erfinv", "Ndtri") and x is not None:
        domain = "(-1, 1)" if kind == "Erfinv" else "(0, 1)"
        return (f"{kind} gave +-inf on input range [{x.min:.9g}, {x.max:.9g}]: at the ends of {domain} "
                "(a probability or CDF value that rounded to 0 or 1: Phi(x) of a float32 x above 5.3 is "
                "1), or just inside them, where TensorFlow's own kernels fail (Erfinv is inf at "
                "0.99999994, Ndtri -inf near 1e-8 under jit_compile)", QUANTILE_FIX[kind])
    if kind in ("ReduceLogSumExp",):
        return "log-sum-exp of an all -inf slice", "safeops.math.reduce_logsumexp"
    biggest = max((max(abs(s.min), abs(s.max)) for s in ins if not math.isnan(s.min)), default=math.nan)
    return (f"{kind} overflowed to {made} on finite inputs (largest |input| {biggest:.4g}): values grew past "
            f"the {ins[0].dtype if ins else 'float'} range, typical of exploding activations or a learning "
            "rate that is too high",
            "lower the learning rate or clip gradients; standardise the inputs (safeops.debug.check_inputs); "
            "train under safeops.debug.NaNGuard")


def _explain_gradient(op, ins, outs, forward_op, made):
    ftype = forward_op.type
    where = f"in the gradient of {ftype}"
    zeros = max((s.zeros for s in ins), default=0)
    if ftype == "Sqrt" or op.type == "SqrtGrad":
        # SqrtGrad is dy / (2 sqrt(x)): a nonzero dy over sqrt(x) = 0 is a plain 1/0 = inf; a zero dy
        # (0 * inf) is NaN.
        what = "0 * inf" if made == "NaN" else "1/0"
        cause = (f"{what} {where} at 0: d sqrt(x)/dx = 1/(2 sqrt(x)) is inf where sqrt(x) = 0 "
                 f"({_count(zeros, 'zero')}); gives {made}")
        if ftype == "Sqrt" and _is_variance(forward_op.inputs[0]):
            return (cause + "; the sqrt is a standard deviation (tf.math.reduce_std), 0 where a slice's "
                    "entries are all equal", "safeops.math.reduce_std(x, axis=...): gradient 0 there")
        return cause, "safeops.math.sqrt / safeops.math.norm: finite gradient at 0"
    if ftype in ("Log", "Log1p", "Reciprocal"):
        return (f"1/x {where} at x = {'0' if ftype == 'Log' else '-1'} ({_count(zeros, 'zero')} in the input of "
                f"the gradient op); gives {made}",
                "safeops.math.log / log1p: finite gradient at the clamp (a tf.where around tf.math.log does not "
                "guard the gradient)")
    if ftype in ("RealDiv", "Div"):
        return (f"division by 0 {where}: d(x/y)/dy = -x/y**2 with {_count(zeros, 'zero')} in the operands; "
                f"gives {made}", "safeops.math.divide_no_nan(x, y)")
    if ftype == "Rsqrt":
        return (f"-1/(2 x**1.5) {where} at x = 0 ({_count(zeros, 'zero')}); gives {made}",
                "safeops.math.rsqrt: finite value and gradient at 0")
    if ftype == "Pow":
        return (f"p x**(p-1) {where} at x = 0 with p < 1; gives {made}",
                "safeops.math.pow(x, p): finite gradient at 0 (safeops.math.sqrt for p = 0.5)")
    if ftype == "EuclideanNorm":
        return f"0/0 {where} at a zero vector; gives {made}", "safeops.math.reduce_euclidean_norm"
    if ftype in ("Lgamma", "Digamma"):
        return (f"{op.type} {where} at a pole (0 or a negative integer in the input of {ftype}); "
                f"gives {made}", LGAMMA_FIX)
    if ftype == "Atan2":
        return (f"division by x**2 + y**2 = 0 {where} at y = x = 0: d atan2(y, x) = (x dy - y dx) / "
                f"(x**2 + y**2), and the angle of a zero vector has no derivative; gives {made}",
                "safeops.math.atan2(y, x): gradient 0 at the origin, and x**2 + y**2 never formed (it "
                "underflows to 0 below a length of 1e-19 in float32)")
    if ftype in ("Acos", "Asin", "Atanh"):
        derivative = "1/(1 - x**2)" if ftype == "Atanh" else "1/sqrt(1 - x**2)"
        return (f"{derivative} {where} at x = +-1 (the input reached +-1, a clip to [-1, 1] included); "
                f"gives {made}", INVERSE_TRIG_FIX[ftype])
    if ftype in ("Erfinv", "Ndtri"):
        derivative = "sqrt(pi)/2 exp(y**2)" if ftype == "Erfinv" else "sqrt(2 pi) exp(y**2 / 2)"
        return (f"the derivative {derivative} {where} at an infinite output y (an input at an end of the "
                f"domain, a clip included); gives {made}", QUANTILE_FIX[ftype])
    if ftype == "Acosh":
        return (f"1/sqrt(x**2 - 1) {where} at x = 1 (a hyperbolic distance of a point to itself, or an "
                f"input clipped at 1); gives {made}", INVERSE_TRIG_FIX[ftype])
    return (f"{op.type} {where} ('{forward_op.name}') made {made} from finite values",
            "replace the forward op by its safeops equivalent (safeops.debug.lint lists them)")

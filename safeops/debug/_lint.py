"""``lint``: find the numerically hazardous ops of a model or function before it runs.

How it works
------------
The function (a Python function, a ``tf.function`` or a Keras model with its
loss; a compiled model's loss as training runs it, through
``model.compute_loss``) is traced once, together with its gradient, into one ``FuncGraph``
(:func:`safeops.debug._trace.trace_step`). Nothing is executed. The forward
ops are walked in creation order and each is matched against the patterns
below; a small *value-range analysis* decides whether an operand "can be
zero" or "is known positive". Each finding names the op, the user's source
line that created it (from ``op.traceback``), why it is hazardous and the
safeops call that replaces it.

The range analysis
------------------
Every float tensor gets an interval ``[lo, hi]`` (either end open or closed)
and a "known non-zero" flag. Graph inputs and variables are unbounded;
constants give their own range; ``exp``, ``softplus``, ``sigmoid``,
``softmax`` are positive (their *mathematical* range: a float32 softmax
output can still underflow to 0, which is why log-of-softmax is its own
pattern); ``abs``, ``square``, ``x * x``, ``relu`` are non-negative; sums,
products, ``maximum``/``minimum``, reductions and the shape-only ops
propagate intervals; ``tf.where(x > c, a, b)`` refines ``x`` inside each
branch. Shapes and sizes are assumed non-empty (at least 1). Ops under a
``safeops/`` name scope are safe by construction and are not reported, nor
are the ops of an optimizer's update rule (``opt.apply_gradients`` in a
custom step: Adam's ``sqrt(v) + epsilon`` is the optimizer's business).

Patterns (``Finding.pattern``)
------------------------------
``crossentropy-on-probabilities``, ``log-of-softmax``, ``log-of-sigmoid``,
``log-of-clip``, ``log-of-nonpositive``, ``division-by-zero``,
``sqrt-at-zero``, ``exp-overflow``, ``fractional-pow-at-zero``,
``double-where``. See :data:`PATTERNS` for the one-line reason of each.
"""

from __future__ import annotations

import builtins
import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow as tf

from safeops import _validate
from safeops.debug import _trace

#: Each pattern with why it is hazardous, in one line.
PATTERNS = {
    "crossentropy-on-probabilities":
        "a probability that underflows to 0 gives log(0) = -inf and a NaN loss and gradient; clipping it "
        "instead (Keras' from_logits=False) makes the gradient exactly 0 below the clip",
    "log-of-softmax": "softmax underflows to exactly 0 once a logit trails the largest by about 104 (float32), "
                      "and log(0) = -inf with gradient inf",
    "log-of-sigmoid": "sigmoid saturates to exactly 0 (x < -104 in float32) or 1 (x > 17), "
                      "and log(0) = -inf with gradient inf",
    "log-of-clip": "below the clip the loss is constant, so its gradient is exactly 0 and the optimizer "
                   "silently stops moving those entries",
    "log-of-nonpositive": "log is -inf at 0 and NaN below, and its gradient 1/x is inf at 0",
    "division-by-zero": "x/0 = inf and 0/0 = NaN, in the value and in the gradient -x/y**2",
    "sqrt-at-zero": "the value is finite but the gradient 1/(2 sqrt(x)) is inf at 0, and backprop's "
                    "0 * inf = NaN",
    "exp-overflow": "exp overflows to inf above about 88.7 (float32) or 11.1 (float16), and inf/inf or "
                    "inf - inf downstream is NaN",
    "fractional-pow-at-zero": "the gradient p x**(p-1) is inf at 0 for p < 1, and the value is NaN for x < 0",
    "double-where": "the where masks the value only: backprop still computes the unselected branch's "
                    "gradient (inf or NaN there) and multiplies it by 0, and 0 * inf = NaN",
}


@dataclasses.dataclass
class Finding:
    """One hazardous op: what, where, why, and what to use instead."""

    pattern: str
    op_name: str
    op_type: str
    location: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.location}: [{self.pattern}] {self.op_type} '{self.op_name}'\n" \
               f"    why: {self.message}\n    fix: {self.fix}"


class LintReport(list):
    """The findings of :func:`lint` (a ``list`` of :class:`Finding`) with a readable ``str``."""

    def __init__(self, findings=(), *, subject: str = "", note: str = ""):
        super().__init__(findings)
        self.subject = subject
        self.note = note

    def __str__(self) -> str:
        head = f"safeops.debug.lint: {len(self)} finding(s) in {self.subject}"
        lines = [head] + [f"{i}. {f}" for i, f in enumerate(self, 1)]
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)


def lint(fn: Any, *example_args: Any, loss: Any = None, gradients: bool = True, print: bool = True,
         **example_kwargs: Any) -> LintReport:
    """Reports the numerically hazardous ops of ``fn`` and the safeops call that replaces each.

    Traces ``fn(*example_args, **example_kwargs)`` and its gradient into a
    graph without running it, walks the ops and matches them against
    :data:`PATTERNS` (see the module docstring for the range analysis that
    decides "can be zero").

    Args:
      fn: a Python function, a ``tf.function`` or a Keras model (or layer).
      *example_args: example inputs; only their shapes and dtypes matter.
        For a model: ``x`` or ``x, y`` (``y`` defaults, per output, to zeros
        shaped like the output, or class indices when its loss wants them;
        a dict or list for a model with several outputs).
      loss: for a model, the loss to include: a callable ``loss(y_true,
        y_pred)``, a Keras loss or its name, or a dict (by output name) or
        list (by output position) of them, each called as ``compile`` calls
        it. Default: the compiled loss as training runs it
        (``model.compute_loss``), if the model is compiled. Must be None for
        a plain function, whose result is the loss.
      gradients: also trace the gradient (to see user-written custom
        gradients). Default True.
      print: print the report. Default True.
      **example_kwargs: keyword arguments for ``fn``.

    Returns:
      A :class:`LintReport`: a list of :class:`Finding` whose ``str`` is the
      printed report. Its ``note`` says when the loss could not be traced
      (then only the forward pass is linted) and why.

    Raises:
      ValueError: a model without an example input, a loss Keras cannot
        interpret or whose dict/list does not match the outputs, an ``x`` the
        model rejects, or ``loss`` given with a plain function.

    The gradient-only patterns (``double-where``, ``sqrt-at-zero``) are
    reported only on values a training step differentiates through: a
    model's trainable variables; for a plain function the trainable variables
    it reads, or if none its float arguments except those named like data
    (``y``, ``y_true``, ``labels``, ``targets``, ``sample_weight``, ``mask``).
    Ops made inside a Keras or TensorFlow optimizer (``apply_gradients``) are
    not reported: their hazards are the optimizer's, guarded by its epsilon.

    Example:
      >>> import tensorflow as tf
      >>> def loss(y, logits):
      ...     return -tf.reduce_sum(y * tf.math.log(tf.nn.softmax(logits)))
      >>> [f.pattern for f in lint(loss, tf.ones([2, 3]), tf.ones([2, 3]), print=False)]
      ['crossentropy-on-probabilities']
    """
    if _trace.is_keras_layer(fn):
        if not example_args:
            raise ValueError(_validate.message(_OP, "example_args", "an example input x (and optionally y, "
                                               "sample_weight) for a Keras model", "none"))
        traced = _trace_model(fn, example_args, _trace.resolve_loss(loss, _OP), gradients)
        subject = f"Keras model '{fn.name}'"
    else:
        if loss is not None:
            raise ValueError(_validate.message(_OP, "loss", "None for a plain function (what it returns is "
                                               "its loss)", repr(loss)))
        traced = _trace.trace_step(fn, example_args, example_kwargs, gradients=gradients, op=_OP)
        subject = f"function '{getattr(fn, '__name__', type(fn).__name__)}'"
    live = _differentiable(traced.graph, traced.differentiated) if traced.differentiated else None
    findings = LintReport(_lint_graph(traced.graph, traced.n_forward, live), subject=subject,
                          note=traced.note)
    if print:
        builtins.print(findings)
    return findings


_OP = "safeops.debug.lint"


def _trace_model(model, example_args, loss, gradients):
    """Traces the model's training step: the explicit ``loss``, else the compiled one (``compute_loss``).

    Without ``y``, example targets are made per output (:func:`_trace.example_targets`).
    When the loss cannot be traced, the forward pass alone is linted and the
    report's note says so and why.
    """
    x, rest = example_args[0], example_args[1:]
    compiled = getattr(model, "compiled", False) and getattr(model, "_compile_loss", None) is not None
    if loss is None and not compiled and not rest:
        return _trace.trace_step(model, (x,), {}, gradients=gradients, op=_OP)
    try:
        if not rest:
            rest = (_trace.example_targets(model, x, loss if loss is not None else model.loss, _OP),)
        return _trace.trace_step(model, (x, *rest), {}, loss=loss, gradients=gradients, op=_OP)
    except _trace.InputError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, tf.errors.InvalidArgumentError) as e:
        if isinstance(e, _trace.LossStructureError) and loss is not None:
            raise   # the user's loss= argument does not fit the model: a bad argument, not a note
        # The last line: autograph prefixes the error with 'in user code:' and the stack.
        reason = str(e).strip().splitlines()[-1].strip()[:300] if str(e).strip() else type(e).__name__
    traced = _trace.trace_step(model, (x,), {}, gradients=gradients, op=_OP)
    traced.note = (f"the loss was not linted: it could not be traced ({reason}); linted the forward pass "
                   "only. Pass example targets: lint(model, x, y)")
    return traced


def _differentiable(graph, sources: set) -> set:
    """Names of the tensors of ``graph`` that depend on a differentiated source (one pass in creation order).

    A hazard that only a label's gradient would see (``tf.where(y > 0, log(y), 0)``
    on labels) is never computed by training, so gradient-only patterns skip it.
    """
    live = set(sources)
    for op in graph.get_operations():
        if any(t.name in live for t in op.inputs):
            live.update(t.name for t in op.outputs)
    return live


# --------------------------------------------------------------------------- the walk


def _lint_graph(graph, n_forward: int, live: set | None = None) -> list:
    """Findings of one graph; ``live`` (None: all) names the tensors the gradient flows through."""
    ranges = _Ranges(graph)
    findings: list[Finding] = []
    reported: set = set()
    ops = graph.get_operations()
    # Selects first: an op inside a tf.where branch is reported as the where's problem, once.
    ordered = [op for op in ops if op.type in ("Select", "SelectV2")] + \
        [op for op in ops if op.type not in ("Select", "SelectV2")]
    position = {op.name: i for i, op in enumerate(ops)}
    for op in ordered:
        if _trace.in_safeops_scope(op) or _trace.in_optimizer(op):
            continue   # safe by construction, or the optimizer's own update rule (Adam's sqrt(v) + eps)
        if position[op.name] >= n_forward and _trace.user_frame(op) is None:
            continue   # a gradient op from TensorFlow's registry, not written by the user
        for finding, culprit in _match(op, ranges, live):
            if culprit in reported:
                continue
            reported.add(culprit)
            if finding is not None:   # None: a where that fully guards its culprit, claimed silently
                findings.append(finding)
        for sub in _function_graphs(op):
            findings.extend(_lint_graph(sub, len(sub.get_operations())))
    order = {op.name: i for i, op in enumerate(ops)}
    return sorted(_dedupe(findings), key=lambda f: order.get(f.op_name, len(order)))


def _dedupe(findings):
    seen, out = set(), []
    for f in findings:
        key = (f.pattern, f.op_name, f.location)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _function_graphs(op):
    """Bodies of control flow and nested function calls (``tf.cond``, a nested ``tf.function``)."""
    graphs = []
    for attr in ("f", "then_branch", "else_branch", "body", "cond"):
        try:
            name = op.get_attr(attr).name
        except (ValueError, AttributeError):
            continue
        try:
            fn = op.graph._get_function(name)   # noqa: SLF001 - the only way to reach a call's body
        except Exception:   # noqa: BLE001 - a function defined elsewhere: skip it
            fn = None
        graph = getattr(fn, "graph", None)
        if graph is not None:
            graphs.append(graph)
    return graphs


_TRANSPARENT = {"Identity", "Reshape", "ExpandDims", "Squeeze", "Transpose", "StridedSlice", "Slice",
                "GatherV2", "Gather", "GatherNd", "Cast", "EnsureShape", "CheckNumerics", "IdentityN",
                "StopGradient", "Tile", "BroadcastTo", "ConcatV2", "Pack", "Unpack", "Split", "SplitV"}


def _producer(t, through=_TRANSPARENT):
    """The op that made ``t``, looking through ops that only move values around."""
    op = t.op
    for _ in range(32):
        if op.type in through and op.inputs:
            op = op.inputs[0].op
        else:
            break
    return op


def _probability_source(t):
    """``('Softmax'|'Sigmoid'|'1-Sigmoid'|None, clip_value or None)`` for the operand of a log."""
    clip = None
    for _ in range(16):
        op = _producer(t)
        if op.type in ("Maximum", "Minimum", "ClipByValue"):
            const = [_const_value(i) for i in op.inputs[1:]]
            if op.type == "Maximum" or op.type == "ClipByValue":
                clip = clip if clip is not None else next((c for c in const if c is not None), None)
            t = op.inputs[0]
            continue
        if op.type in ("RealDiv", "Div") and _producer(op.inputs[1]).type in ("Sum",):
            t = op.inputs[0]    # p / sum(p): Keras renormalises probabilities before clipping
            continue
        if op.type in ("Softmax", "Sigmoid"):
            return op.type, clip
        if op.type == "Sub" and _const_value(op.inputs[0]) == 1.0 and _producer(op.inputs[1]).type == "Sigmoid":
            return "1-Sigmoid", clip
        return None, clip
    return None, clip


def _keras_focal_loss(op):
    """The name of the Keras focal loss function that made ``op``, or None."""
    names = _trace.step_functions(op)
    return next((n for n in ("categorical_focal_crossentropy", "binary_focal_crossentropy") if n in names),
                None)


def _feeds_a_product(op) -> bool:
    """Whether a log's output is multiplied by something (``y * log(p)``: a cross-entropy)."""
    frontier, seen = [op], 0
    while frontier and seen < 32:
        current = frontier.pop()
        seen += 1
        for out in current.outputs:
            for consumer in out.consumers():
                if consumer.type in ("Mul", "MulNoNan", "Xlogy") or consumer.type == "BatchMatMulV2":
                    return True
                if consumer.type in _TRANSPARENT or consumer.type in ("Neg",):
                    frontier.append(consumer)
    return False


def _match(op, ranges, live=None):
    """Yields ``(Finding, culprit op name)`` for each pattern ``op`` matches.

    ``live`` (None: every tensor) names the tensors a gradient flows through:
    the gradient-only patterns (``double-where``, ``sqrt-at-zero``) are not
    reported on values no gradient reaches, such as the labels.
    """
    kind = op.type
    if not op.outputs or not op.outputs[0].dtype.is_floating:
        return
    if kind in ("Select", "SelectV2"):
        yield from _double_where(op, ranges, live)
        return
    if kind in ("Log", "Log1p"):
        arg = op.inputs[0]
        source, clip = _probability_source(arg)
        if kind == "Log" and source is not None:
            what = {"Softmax": "a softmax", "Sigmoid": "a sigmoid", "1-Sigmoid": "1 - sigmoid"}[source]
            clipped = f" (clipped at {clip:g})" if clip is not None else ""
            if _feeds_a_product(op):
                pattern = "crossentropy-on-probabilities"
                msg = (f"cross-entropy on probabilities: labels times log of {what} output{clipped}; "
                       + PATTERNS[pattern])
                fix = ("compute it from the logits: safeops.nn.softmax_cross_entropy_with_logits(labels, logits) "
                       "or safeops.losses.categorical_crossentropy(y, logits, from_logits=True)"
                       if source == "Softmax" else
                       "compute it from the logits: safeops.nn.sigmoid_cross_entropy_with_logits(labels, logits) "
                       "or safeops.losses.binary_crossentropy(y, logits, from_logits=True)")
                focal = _keras_focal_loss(op)
                if focal is not None:   # a plain cross-entropy would drop the focal factor the user chose
                    fix = (f"compute it from the logits: safeops.losses.{focal}(y, logits, "
                           "from_logits=True) (stays in log space; Keras' focal loss turns logits into "
                           "probabilities and clips)")
            else:
                pattern = "log-of-softmax" if source == "Softmax" else "log-of-sigmoid"
                msg = f"log of {what} output{clipped}: " + PATTERNS[pattern]
                fix = ("safeops.math.log_softmax(logits) instead of log(softmax(logits))" if source == "Softmax"
                       else "safeops.math.log_sigmoid(x) for log(sigmoid(x)); log_sigmoid(-x) for "
                            "log(1 - sigmoid(x))")
            yield _finding(pattern, op, msg, fix), op.name
            return
        if clip is not None and clip > 0 and _producer(arg).type in ("Maximum", "ClipByValue", "Minimum"):
            msg = f"log of a value clipped below at {clip:g}: " + PATTERNS["log-of-clip"]
            fix = "safeops.math.log(x): clamps at the smallest normal float with a finite, nonzero boundary gradient"
            yield _finding("log-of-clip", op, msg, fix), op.name
            return
        r = ranges.get(arg)
        bad = not r.positive() if kind == "Log" else not (r.lo > -1 or (r.lo == -1 and r.lo_open))
        if bad:
            fix = "safeops.math.log(x)" if kind == "Log" else "safeops.math.log1p(x)"
            edge = "0" if kind == "Log" else "-1"
            msg = (f"{kind.lower()} of a value not known to be {'positive' if kind == 'Log' else 'above -1'} "
                   f"(range {r}): -inf at {edge}, NaN beyond, gradient inf at {edge}")
            yield _finding("log-of-nonpositive", op, msg,
                           fix + ": finite value and finite, nonzero gradient at the clamp"), op.name
        return
    if kind in ("RealDiv", "Div", "Reciprocal", "Inv") and op.outputs[0].dtype.is_floating:
        denominator = op.inputs[1] if kind in ("RealDiv", "Div") else op.inputs[0]
        if ranges.get(denominator).can_be_zero():
            msg = f"division by a value that can be 0 (range {ranges.get(denominator)}): " \
                  "x/0 = inf, 0/0 = NaN, and the gradient -x/y**2 overflows near 0"
            yield _finding("division-by-zero", op, msg,
                           "safeops.math.divide_no_nan(x, y): 0 where y == 0, with a finite gradient"), op.name
        return
    if kind in ("Sqrt", "Rsqrt", "EuclideanNorm"):
        arg = op.inputs[0]
        if kind != "Rsqrt" and live is not None and arg.name not in live:
            return   # the value is finite; only a gradient training never takes would be inf
        r = ranges.get(arg)
        if kind == "Rsqrt" and _bounded_by_minimum(op):
            return   # rsqrt(x) then minimum(., c): the value is capped (Keras' l2_normalize does this)
        if kind == "EuclideanNorm" or not r.positive():
            is_norm = kind == "EuclideanNorm" or _producer(arg).type == "Sum"
            what = "norm (sqrt of a sum of squares)" if is_norm else "sqrt"
            if kind == "Rsqrt":
                msg = f"rsqrt of a value that can be 0 (range {r}): 1/sqrt(0) = inf"
                fix = "safeops.math.divide_no_nan(1., safeops.math.sqrt(x)), or rsqrt of x plus a positive floor"
            else:
                msg = f"{what} of a value that can be 0 (range {r}): " + PATTERNS["sqrt-at-zero"]
                fix = "safeops.math.norm(x, axis=...)" if is_norm else "safeops.math.sqrt(x)"
                fix += ": finite gradient at 0"
            yield _finding("sqrt-at-zero", op, msg, fix), op.name
        return
    if kind in ("Exp", "Expm1"):
        r = ranges.get(op.inputs[0])
        if r.hi == math.inf:
            msg = f"{kind.lower()} of a value not bounded above (range {r}): " + PATTERNS["exp-overflow"]
            fix = ("work in log space: safeops.math.reduce_logsumexp, safeops.math.softmax / log_softmax, "
                   "safeops.math.softplus for log(1 + exp(x)), or exp(x - reduce_max(x))")
            yield _finding("exp-overflow", op, msg, fix), op.name
        return
    if kind == "Pow":
        p = _const_array(op.inputs[1])
        if p is None or not np.any(p != np.round(p)):
            return
        r = ranges.get(op.inputs[0])
        if not r.positive():
            exponent = f"{float(p.flat[0]):g}" if p.size == 1 else "a fractional exponent"
            msg = f"x ** {exponent} of a value that can be 0 or negative (range {r}): gradient p x**(p-1) " \
                  "is inf at 0 for p < 1, and the value is NaN for x < 0"
            fix = ("safeops.math.sqrt(x)" if p.size == 1 and float(p.flat[0]) == 0.5
                   else "tf.exp(p * safeops.math.log(x)) for x >= 0 (finite gradient at 0)")
            yield _finding("fractional-pow-at-zero", op, msg, fix), op.name


def _bounded_by_minimum(op) -> bool:
    consumers = [c for c in op.outputs[0].consumers() if not c.name.startswith("gradient_tape/")]
    return bool(consumers) and all(c.type == "Minimum" and any(
        _const_value(i) is not None and math.isfinite(_const_value(i)) for i in c.inputs) for c in consumers)


_GRADIENT_HAZARDS = {"Log": 0, "Log1p": 0, "Sqrt": 0, "Rsqrt": 0, "RealDiv": 1, "Div": 1, "Reciprocal": 0,
                     "Inv": 0, "Pow": 0, "Acos": 0, "Asin": 0}


def _double_where(op, ranges, live=None):
    """A ``tf.where`` whose branch holds an op with an inf gradient at the guarded points."""
    guarded = _ancestors(op.inputs[0], depth=6)
    if not guarded:
        return
    for branch in op.inputs[1:]:
        for hazard, operand in _branch_hazards(branch, guarded, ranges):
            if _trace.in_safeops_scope(hazard):
                continue
            if live is not None and operand.name not in live:
                # No gradient flows through the operand (labels): the where guards the value, which is
                # all training sees. The hazard is claimed without a finding so it is not reported alone.
                yield None, hazard.name
                continue
            msg = (f"tf.where guards {hazard.type} '{hazard.name}' of a value in range {ranges.get(operand)}: "
                   + PATTERNS["double-where"])
            fix = {"Sqrt": "safeops.math.sqrt(x) (finite gradient at 0), no tf.where needed",
                   "Log": "safeops.math.log(x) (finite gradient at 0), no tf.where needed",
                   "Log1p": "safeops.math.log1p(x)",
                   "RealDiv": "safeops.math.divide_no_nan(x, y)", "Div": "safeops.math.divide_no_nan(x, y)"}.get(
                hazard.type, "the safeops op")
            fix += "; or make the operand safe too: tf.where(c, f(tf.where(c, x, 1.)), 0.) (the double where)"
            yield _finding("double-where", op, msg, fix), hazard.name


def _ancestors(t, depth: int) -> set:
    """Names of the non-constant tensors ``t`` depends on, up to ``depth`` ops back."""
    out, frontier = set(), [t]
    for _ in range(depth):
        nxt = []
        for x in frontier:
            if x.op.type == "Const" or x.name in out:
                continue
            out.add(x.name)
            nxt.extend(x.op.inputs)
        frontier = nxt
    return out


def _branch_hazards(branch, guarded: set, ranges):
    frontier, seen = [branch], set()
    for _ in range(8):
        nxt = []
        for t in frontier:
            if t.name in seen or t.name in guarded or t.op.type == "Const":
                continue
            seen.add(t.name)
            op = t.op
            position = _GRADIENT_HAZARDS.get(op.type)
            if position is not None and position < len(op.inputs):
                operand = op.inputs[position]
                r = ranges.get(operand)
                unsafe = r.can_be_zero() if op.type in ("RealDiv", "Div", "Reciprocal", "Inv") else \
                    not (r.lo > -1 if op.type == "Log1p" else r.positive())
                if op.type == "Pow":
                    p = _const_array(op.inputs[1])
                    unsafe = unsafe and p is not None and bool(np.any(p < 1))
                if unsafe and _ancestors(operand, depth=6) & guarded:
                    yield op, operand
            nxt.extend(op.inputs)
        frontier = nxt


def _finding(pattern, op, message, fix) -> Finding:
    return Finding(pattern=pattern, op_name=op.name, op_type=op.type, location=_trace.location(op),
                   message=message, fix=fix)


def _const_array(t):
    op = _producer(t, through={"Identity", "Cast"})
    if op.type != "Const":
        return None
    try:
        return np.asarray(tf.make_ndarray(op.get_attr("value")), dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _const_value(t):
    value = _const_array(t)
    if value is None or value.size == 0:
        return None
    return float(value.flat[0]) if np.all(value == value.flat[0]) else None


# --------------------------------------------------------------------------- value ranges


@dataclasses.dataclass(frozen=True)
class _Range:
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    nonzero: bool = False

    def positive(self) -> bool:
        return self.lo > 0 or (self.lo == 0 and self.lo_open)

    def nonneg(self) -> bool:
        return self.lo >= 0

    def negative(self) -> bool:
        return self.hi < 0 or (self.hi == 0 and self.hi_open)

    def can_be_zero(self) -> bool:
        return not (self.nonzero or self.positive() or self.negative())

    def __str__(self) -> str:
        if self.lo == -math.inf and self.hi == math.inf:
            return "unbounded" + (", nonzero" if self.nonzero else "")
        left = "(" if self.lo_open or self.lo == -math.inf else "["
        right = ")" if self.hi_open or self.hi == math.inf else "]"
        return f"{left}{self.lo:g}, {self.hi:g}{right}"


_ANY = _Range()
_NONNEG = _Range(0.0)
_POSITIVE = _Range(0.0, lo_open=True)
_UNIT_OPEN = _Range(0.0, 1.0, True, True)


def _add(a: _Range, b: _Range) -> _Range:
    lo, hi = a.lo + b.lo, a.hi + b.hi
    if math.isnan(lo) or math.isnan(hi):
        return _ANY
    return _Range(lo, hi, a.lo_open or b.lo_open, a.hi_open or b.hi_open)


def _neg(a: _Range) -> _Range:
    return _Range(-a.hi, -a.lo, a.hi_open, a.lo_open, a.nonzero)


def _mul(a: _Range, b: _Range) -> _Range:
    products = []
    for x in (a.lo, a.hi):
        for y in (b.lo, b.hi):
            v = x * y
            if math.isnan(v):   # 0 * inf: the product's bound is unknown
                return _sign_only(a, b)
            products.append(v)
    r = _Range(min(products), max(products))
    if a.positive() and b.positive():
        r = dataclasses.replace(r, lo=max(r.lo, 0.0), lo_open=r.lo == 0)
    return dataclasses.replace(r, nonzero=(a.nonzero or not a.can_be_zero()) and (b.nonzero or not b.can_be_zero()))


def _sign_only(a: _Range, b: _Range) -> _Range:
    if a.nonneg() and b.nonneg():
        return _POSITIVE if a.positive() and b.positive() else _NONNEG
    return _ANY


def _union(*rs: _Range) -> _Range:
    lo = min(r.lo for r in rs)
    hi = max(r.hi for r in rs)
    return _Range(lo, hi, all(r.lo_open for r in rs if r.lo == lo), all(r.hi_open for r in rs if r.hi == hi),
                  all(r.nonzero or not r.can_be_zero() for r in rs))


def _maximum(a: _Range, b: _Range) -> _Range:
    if a.lo > b.lo or (a.lo == b.lo and a.lo_open):
        lo, lo_open = a.lo, a.lo_open
    else:
        lo, lo_open = b.lo, b.lo_open
    return _Range(lo, max(a.hi, b.hi), lo_open, False)


def _intersect(a: _Range, b: _Range) -> _Range:
    lo, lo_open = (a.lo, a.lo_open) if (a.lo, a.lo_open) > (b.lo, b.lo_open) else (b.lo, b.lo_open)
    hi, hi_open = (a.hi, a.hi_open) if (a.hi, not a.hi_open) < (b.hi, not b.hi_open) else (b.hi, b.hi_open)
    return _Range(lo, hi, lo_open, hi_open, a.nonzero or b.nonzero)


def _minimum(a: _Range, b: _Range) -> _Range:
    return _neg(_maximum(_neg(a), _neg(b)))


def _map(a: _Range, f, lo_floor=-math.inf) -> _Range:
    """A monotone increasing ``f`` applied to an interval."""
    lo = f(a.lo) if a.lo > lo_floor else lo_floor
    return _Range(lo, f(a.hi), a.lo_open, a.hi_open)


def _safe_exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def _safe_log(v: float) -> float:
    return -math.inf if v <= 0 else (math.inf if v == math.inf else math.log(v))


_SAME_RANGE = _TRANSPARENT | {"Max", "Min", "Mean", "Relu6Grad", "MaxPool", "AvgPool", "Sort", "TopKV2",
                              "ReverseV2", "Roll", "MirrorPad", "ResizeBilinear", "ResizeNearestNeighbor"}
_CONSTANT_RANGES = {"Sigmoid": _UNIT_OPEN, "Softmax": _UNIT_OPEN, "Tanh": _Range(-1.0, 1.0, True, True),
                    "Softsign": _Range(-1.0, 1.0, True, True), "Erf": _Range(-1.0, 1.0),
                    "Sin": _Range(-1.0, 1.0), "Cos": _Range(-1.0, 1.0), "Sign": _Range(-1.0, 1.0),
                    "LogSoftmax": _Range(-math.inf, 0.0), "LogSigmoid": _Range(-math.inf, 0.0),
                    "Shape": _Range(1.0), "Size": _Range(1.0), "Rank": _Range(0.0), "ShapeN": _Range(1.0),
                    "ZerosLike": _Range(0.0, 0.0), "OnesLike": _Range(1.0, 1.0), "Square": _NONNEG,
                    "SquaredDifference": _NONNEG, "Abs": _NONNEG, "EuclideanNorm": _NONNEG,
                    "Elu": _Range(-1.0, math.inf, True), "Selu": _Range(-1.7581, math.inf),
                    "Softplus": _POSITIVE, "Relu": _NONNEG, "Relu6": _Range(0.0, 6.0)}


class _Ranges:
    """Interval of every float tensor of one graph, computed lazily with an explicit stack."""

    def __init__(self, graph, overrides: dict | None = None, parent: "_Ranges | None" = None):
        self.graph = graph
        self.memo: dict = dict(overrides or {})
        self.parent = parent
        self.overridden = set(self.memo)

    def get(self, t) -> _Range:
        if t.name in self.memo:
            return self.memo[t.name]
        stack = [t]
        while stack:   # post-order without recursion: deep models would blow Python's stack
            top = stack[-1]
            if top.name in self.memo:
                stack.pop()
                continue
            if self.parent is not None and not self._depends(top):
                self.memo[top.name] = self.parent.get(top)
                stack.pop()
                continue
            pending = [i for i in self._needed(top.op) if i.name not in self.memo]
            if pending:
                stack.extend(pending)
                continue
            self.memo[top.name] = self._compute(top)
            stack.pop()
        return self.memo[t.name]

    def _depends(self, t, depth: int = 12) -> bool:
        return bool(_ancestors(t, depth) & self.overridden)

    def _needed(self, op):
        if op.type in ("Select", "SelectV2"):
            return [op.inputs[0]]   # the branches are evaluated under refinement in _select
        if op.type in ("Const", "Placeholder", "VarHandleOp", "ReadVariableOp") or op.type in _CONSTANT_RANGES:
            return []
        return [i for i in op.inputs if i.dtype.is_floating or i.dtype.is_integer]

    def _compute(self, t) -> _Range:
        op = t.op
        kind = op.type
        x = [self.memo.get(i.name, _ANY) for i in op.inputs]
        if kind == "Const":
            value = _const_array(t)
            if value is None or value.size == 0 or np.isnan(value).any():
                return _ANY
            return _Range(float(value.min()), float(value.max()), nonzero=bool(np.all(value != 0)))
        if kind in _CONSTANT_RANGES:
            return _CONSTANT_RANGES[kind]
        if kind in ("Select", "SelectV2"):
            return self._select(op)
        if kind == "Split" and len(x) > 1:
            return x[1]
        if kind in _SAME_RANGE and x:
            return x[0] if kind not in ("ConcatV2", "Pack") else _union(*x[:-1] if kind == "ConcatV2" else x)
        if kind in ("Add", "AddV2", "BiasAdd"):
            return _add(x[0], x[1])
        if kind == "AddN":
            out = x[0]
            for r in x[1:]:
                out = _add(out, r)
            return out
        if kind == "Sub":
            if _is_max_of(op.inputs[1], op.inputs[0]):
                return _Range(-math.inf, 0.0)    # x - reduce_max(x) <= 0
            return _add(x[0], _neg(x[1]))
        if kind == "Neg":
            return _neg(x[0])
        if kind in ("Mul", "MulNoNan"):
            if op.inputs[0].name == op.inputs[1].name:
                return dataclasses.replace(_mul(x[0], x[1]), lo=0.0, lo_open=x[0].nonzero)
            return _mul(x[0], x[1])
        if kind in ("Sum", "Prod"):
            if x[0].positive():
                return _POSITIVE
            return _NONNEG if x[0].nonneg() else _ANY
        if kind in ("RealDiv", "Div", "DivNoNan"):
            if x[1].positive() and x[0].nonneg():
                return _POSITIVE if x[0].positive() else _NONNEG
            return _ANY
        if kind in ("Reciprocal", "Inv", "Rsqrt"):
            return _POSITIVE if x[0].positive() else _ANY
        if kind == "Maximum":
            return _maximum(x[0], x[1])
        if kind == "Minimum":
            return _minimum(x[0], x[1])
        if kind == "ClipByValue":
            return _minimum(_maximum(x[0], x[1]), x[2])
        if kind == "Exp":
            r = _map(x[0], _safe_exp, 0.0)
            return dataclasses.replace(r, lo_open=r.lo == 0 or r.lo_open)
        if kind == "Expm1":
            return _Range(-1.0 if x[0].lo == -math.inf else _safe_exp(x[0].lo) - 1, _safe_exp(x[0].hi) - 1,
                          True, False)
        if kind == "Log":
            return _map(x[0], _safe_log) if x[0].nonneg() else _ANY
        if kind == "Sqrt":
            return _Range(math.sqrt(max(x[0].lo, 0.0)), math.sqrt(x[0].hi) if x[0].hi >= 0 else math.inf,
                          x[0].positive())
        if kind == "Pow":
            return _POSITIVE if x[0].positive() else _ANY
        if kind in ("MatMul", "BatchMatMulV2", "BatchMatMul", "Conv2D"):
            return _NONNEG if x[0].nonneg() and x[1].nonneg() else _ANY
        if kind in ("Cumsum",):
            return _NONNEG if x[0].nonneg() else _ANY
        if kind == "Fill":
            return x[1] if len(x) > 1 else _ANY
        if kind == "Pad" or kind == "PadV2":
            return _union(x[0], _Range(0.0, 0.0))
        return _ANY

    def _select(self, op) -> _Range:
        cond, branches = op.inputs[0], op.inputs[1:]
        refinements = _refine(cond)
        out = []
        for branch, refined in zip(branches, refinements):
            if refined:
                operand = cond.op.inputs[0] if cond.op.inputs[0].name in refined else cond.op.inputs[1]
                child = _Ranges(self.graph, {operand.name: _intersect(self.get(operand), refined[operand.name])},
                                parent=self)
                out.append(child.get(branch))
            else:
                out.append(self.get(branch))
        return _union(*out)


def _is_max_of(candidate, t) -> bool:
    op = _producer(candidate, through={"Identity", "StopGradient", "ExpandDims", "Reshape"})
    return op.type == "Max" and op.inputs[0].name == t.name


def _refine(cond) -> tuple:
    """Intervals a ``tf.where`` condition implies on its operand: ``({name: range} true, {..} false)``."""
    op = cond.op
    if op.type not in ("Greater", "GreaterEqual", "Less", "LessEqual", "NotEqual", "Equal"):
        return ({}, {})
    a, b = op.inputs[0], op.inputs[1]
    ca, cb = _const_value(a), _const_value(b)
    if cb is not None and ca is None:
        x, c, kind = a, cb, op.type
    elif ca is not None and cb is None:
        x, c = b, ca
        kind = {"Greater": "Less", "Less": "Greater", "GreaterEqual": "LessEqual",
                "LessEqual": "GreaterEqual"}.get(op.type, op.type)
    else:
        return ({}, {})
    above_open, above_closed = _Range(c, math.inf, True), _Range(c)
    below_open, below_closed = _Range(-math.inf, c, False, True), _Range(-math.inf, c)
    nz = _Range(nonzero=True) if c == 0 else _ANY
    table = {"Greater": (above_open, below_closed), "GreaterEqual": (above_closed, below_open),
             "Less": (below_open, above_closed), "LessEqual": (below_closed, above_open),
             "NotEqual": (nz, _ANY), "Equal": (_ANY, nz)}
    true_r, false_r = table[kind]
    return tuple({x.name: r} if r is not _ANY else {} for r in (true_r, false_r))

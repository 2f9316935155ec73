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
branch. Shapes and sizes are assumed non-empty (at least 1). The outputs
of safeops' own ops get their op's range (``softplus`` and ``sqrt``
non-negative, ``sigmoid`` and ``softmax`` in ``[0, 1]``, ...: their
forwards are inner XLA calls the analysis cannot read). Ops under a
``safeops/`` name scope are safe by construction and are not reported, nor
are the ops of an optimizer's update rule (``opt.apply_gradients`` in a
custom step: Adam's ``sqrt(v) + epsilon`` is the optimizer's business).

Patterns (``Finding.pattern``)
------------------------------
``crossentropy-on-probabilities``, ``log-of-softmax``, ``log-of-sigmoid``,
``log-of-clip``, ``log-of-nonpositive``, ``division-by-zero``,
``sqrt-at-zero``, ``exp-overflow``, ``fractional-pow-at-zero``,
``double-where``, ``inverse-trig-at-one``, ``lgamma-at-pole``,
``running-logsumexp-of-mask``, ``cumprod-through-zero``,
``quantile-at-the-ends``. See
:data:`PATTERNS` for the one-line reason of each.

Modules
-------
This module holds :func:`lint`, its :class:`LintReport` and the walk over the
traced graph; the pattern catalogue (:data:`PATTERNS`, :class:`Finding` and
the matchers) is in :mod:`safeops.debug._patterns`, and the value-range
analysis in :mod:`safeops.debug._ranges`.
"""

from __future__ import annotations

import builtins
from typing import Any

import tensorflow as tf

from safeops import _validate
from safeops.debug import _trace
from safeops.debug._patterns import PATTERNS, Finding, _match  # noqa: F401 - PATTERNS, Finding re-exported
from safeops.debug._ranges import _Ranges


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

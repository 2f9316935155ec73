"""The catalogue of hazard patterns that :func:`safeops.debug.lint` reports.

:data:`PATTERNS` (each pattern with its one-line reason), the :class:`Finding`
a match produces, and the matchers: :func:`_match` recognises a hazardous op
(log of probabilities, division or sqrt at zero, exp overflow, fractional
pow, the double ``tf.where``, acos/asin/atanh at +-1 and acosh at 1, lgamma at a pole) and
builds the finding with its safeops fix, asking the value ranges of
:mod:`safeops.debug._ranges` whether an operand can be zero.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from safeops.debug import _trace
from safeops.debug._events import INVERSE_TRIG_FIX, LGAMMA_FIX, QUANTILE_FIX
from safeops.debug._ranges import _TRANSPARENT, _ancestors, _const_array, _const_value, _producer

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
    "inverse-trig-at-one": "acos and asin are NaN outside [-1, 1] (atanh inf at +-1), where a cosine "
                           "similarity lands by rounding (1.0000001), and their gradient is inf at +-1; "
                           "acosh is NaN below 1, where a hyperbolic distance's argument lands by "
                           "rounding, and its gradient is inf at 1 (a point's distance to itself)",
    "quantile-at-the-ends": "erfinv is inf at +-1 and ndtri at 0 and 1, with an inf gradient, where a "
                            "probability lands by rounding (Phi(x) of a float32 x above 5.3 is 1); "
                            "TensorFlow's own erfinv is inf already at 0.99999994, and under jit_compile "
                            "its ndtri is -inf near 1e-8",
    "lgamma-at-pole": "lgamma is inf at 0 and at the negative integers, and its gradient digamma NaN there: "
                      "a rate, dispersion or concentration from a linear layer crosses them",
    "running-logsumexp-of-mask": "where an output of tf.math.cumulative_logsumexp sums only -inf entries "
                                 "(padding ahead of every finite entry of a ranked list, or a masked "
                                 "prefix), TensorFlow's gradient is inf - inf = NaN at those entries, "
                                 "whatever that output's own gradient",
    "cumprod-through-zero": "TensorFlow's gradient of tf.math.cumprod divides by each factor (with "
                            "div_no_nan): at the factor that zeroed the running product (an opaque "
                            "sample's 1 - alpha, a stick broken off whole, a hazard of 1) it is 0, where "
                            "the exact gradient, the product of the other factors, is not; a float32 "
                            "product that overflows midway makes it inf",
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


#: A constant added to a probability up to this is an epsilon (log(p + 1e-7)); log(p + 1) is a
#: transform whose gradient is bounded (mean squared logarithmic error), not a guard.
_LARGEST_EPSILON = 1e-3


def _probability_source(t):
    """``('Softmax'|'Sigmoid'|'1-Sigmoid'|None, clip_value or None, epsilon or None)`` for a log's operand.

    ``epsilon``: a positive constant up to :data:`_LARGEST_EPSILON` added to the
    probability (``log(p + 1e-7)``).
    """
    clip, epsilon = None, None
    for _ in range(16):
        op = _producer(t)
        if op.type in ("AddV2", "Add"):
            constants = [_const_value(i) for i in op.inputs]
            known = [(c, other) for c, other in zip(constants, op.inputs[::-1]) if c is not None]
            if len(known) == 1 and 0 < known[0][0] <= _LARGEST_EPSILON:
                epsilon = epsilon if epsilon is not None else known[0][0]
                t = known[0][1]
                continue
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
            return op.type, clip, epsilon
        if op.type == "Sub" and _const_value(op.inputs[0]) == 1.0 and _producer(op.inputs[1]).type == "Sigmoid":
            return "1-Sigmoid", clip, epsilon
        return None, clip, epsilon
    return None, clip, epsilon


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
        source, clip, epsilon = _probability_source(arg)
        if source is not None and epsilon is not None and "poisson" in _trace.step_functions(op):
            return   # Keras' poisson, p - y log(p + eps): a rate, not a cross-entropy, even on a softmax
        if kind == "Log" and source is not None:
            what = {"Softmax": "a softmax", "Sigmoid": "a sigmoid", "1-Sigmoid": "1 - sigmoid"}[source]
            clipped = f" (clipped at {clip:g})" if clip is not None else ""
            # log(p + eps): finite, but d/dz = p'/(p + eps) shrinks by p / (p + eps), to 0 once p underflows.
            why = (f"; the epsilon keeps the value finite, but scales the gradient by p / (p + {epsilon:g}): "
                   "0 once p underflows, so the confidently wrong predictions stop learning"
                   if epsilon is not None else None)
            clipped += f" plus {epsilon:g}" if epsilon is not None else ""
            if _feeds_a_product(op):
                pattern = "crossentropy-on-probabilities"
                msg = (f"cross-entropy on probabilities: labels times log of {what} output{clipped}"
                       + (why or "; " + PATTERNS[pattern]))
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
                msg = f"log of {what} output{clipped}" + (why or ": " + PATTERNS[pattern])
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
    if kind in ("Lgamma", "Digamma"):
        arg = op.inputs[0]
        r = ranges.get(arg)
        if r.positive() or (live is not None and arg.name not in live):
            return   # positive; or labels (lgamma(y + 1) of counts): no gradient, the data's own range
        msg = f"{kind.lower()} of a value not known to be positive (range {r}): " + PATTERNS["lgamma-at-pole"]
        yield _finding("lgamma-at-pole", op, msg, LGAMMA_FIX), op.name
        return
    if kind == "CumulativeLogsumexp":
        arg = op.inputs[0]
        r = ranges.get(arg)
        if r.lo > -math.inf or (live is not None and arg.name not in live):
            return   # bounded below: no -inf entry; or no gradient reaches it
        msg = (f"cumulative_logsumexp of a value not bounded below (range {r}): "
               + PATTERNS["running-logsumexp-of-mask"])
        yield _finding("running-logsumexp-of-mask", op, msg,
                       "safeops.math.cumulative_logsumexp: gradient 0 at -inf entries, TensorFlow's "
                       "value elsewhere"), op.name
        return
    if kind == "Cumprod":
        arg = op.inputs[0]
        if not ranges.get(arg).can_be_zero() or (live is not None and arg.name not in live):
            return   # no zero factor; or no gradient reaches it
        msg = (f"cumprod of a value that can be 0 (range {ranges.get(arg)}): "
               + PATTERNS["cumprod-through-zero"])
        fix = "safeops.math.cumprod: the exact gradient at zero factors, products in float64"
        yield _finding("cumprod-through-zero", op, msg, fix), op.name
        return
    if kind in ("Acos", "Asin", "Atanh"):
        arg = op.inputs[0]
        r = ranges.get(arg)
        inside = (r.lo > -1 or (r.lo == -1 and r.lo_open)) and (r.hi < 1 or (r.hi == 1 and r.hi_open))
        clipped = kind != "Atanh" and r.lo >= -1 and r.hi <= 1
        if inside or (clipped and live is not None and arg.name not in live):
            return   # strictly inside; or clipped to [-1, 1] where no gradient flows (finite value)
        msg = f"{kind.lower()} of a value not known to lie strictly inside (-1, 1) (range {r}): " \
              + PATTERNS["inverse-trig-at-one"]
        yield _finding("inverse-trig-at-one", op, msg, INVERSE_TRIG_FIX[kind]), op.name
        return
    if kind in ("Erfinv", "Ndtri"):
        r = ranges.get(op.inputs[0])
        lo = -1 if kind == "Erfinv" else 0
        if r.lo > lo and r.hi < 1:
            return   # inside, away from the ends (a sigmoid's open (0, 1) still rounds to 0 and 1)
        domain = "(-1, 1)" if kind == "Erfinv" else "(0, 1)"
        msg = (f"{kind.lower()} of a value not known to lie strictly inside {domain} (range {r}): "
               + PATTERNS["quantile-at-the-ends"])
        yield _finding("quantile-at-the-ends", op, msg, QUANTILE_FIX[kind]), op.name
        return
    if kind == "Acosh":
        arg = op.inputs[0]
        r = ranges.get(arg)
        if r.lo > 1 or (r.lo == 1 and r.lo_open) or (r.lo >= 1 and live is not None and arg.name not in live):
            return   # strictly above 1; or clipped at 1 where no gradient flows (finite value)
        msg = (f"acosh of a value not known to lie strictly above 1 (range {r}): "
               + PATTERNS["inverse-trig-at-one"])
        yield _finding("inverse-trig-at-one", op, msg, INVERSE_TRIG_FIX[kind]), op.name
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
            is_std = kind == "Sqrt" and _is_variance(arg)
            what = "norm (sqrt of a sum of squares)" if is_norm else "sqrt"
            what = "standard deviation (sqrt of a variance)" if is_std else what
            if kind == "Rsqrt":
                msg = f"rsqrt of a value that can be 0 (range {r}): 1/sqrt(0) = inf"
                fix = ("safeops.math.rsqrt(x) (finite value and gradient at 0), or rsqrt of x plus a "
                       "positive floor")
            else:
                msg = f"{what} of a value that can be 0 (range {r}): " + PATTERNS["sqrt-at-zero"]
                fix = "safeops.math.norm(x, axis=...)" if is_norm else "safeops.math.sqrt(x)"
                if kind == "EuclideanNorm":   # tf.math.reduce_euclidean_norm: its drop-in
                    fix = "safeops.math.reduce_euclidean_norm(x, axis=...)"
                if is_std:   # tf.math.reduce_std, or a hand-written one: NaN where the entries are equal
                    fix = "safeops.math.reduce_std(x, axis=...)"
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
                   else "safeops.math.pow(x, p): base clamped at 0, finite gradient there")
            if "categorical_generalized_cross_entropy" in _trace.step_functions(op):
                # Keras' (1 - p**q) / q on the labelled probability: NaN for the row once p underflows.
                fix = ("safeops.losses.categorical_generalized_cross_entropy(y, p, q) (or its class "
                       "CategoricalGeneralizedCrossEntropy): finite gradient at p = 0, exact on logits")
            yield _finding("fractional-pow-at-zero", op, msg, fix), op.name


def _is_variance(t) -> bool:
    """Whether ``t`` is a mean of squared deviations (``tf.math.reduce_variance``, ``tf.nn.moments``)."""
    mean = _producer(t)
    if mean.type != "Mean":
        return False
    square = _producer(mean.inputs[0])
    return square.type == "SquaredDifference" or (
        square.type == "Square" and _producer(square.inputs[0]).type == "Sub")


def _bounded_by_minimum(op) -> bool:
    consumers = [c for c in op.outputs[0].consumers() if not c.name.startswith("gradient_tape/")]
    return bool(consumers) and all(c.type == "Minimum" and any(
        _const_value(i) is not None and math.isfinite(_const_value(i)) for i in c.inputs) for c in consumers)


_GRADIENT_HAZARDS = {"Log": 0, "Log1p": 0, "Sqrt": 0, "Rsqrt": 0, "RealDiv": 1, "Div": 1, "Reciprocal": 0,
                     "Inv": 0, "Pow": 0, "Acos": 0, "Asin": 0,
                     "Acosh": 0, "Erfinv": 0, "Ndtri": 0}


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
                   "RealDiv": "safeops.math.divide_no_nan(x, y)", "Div": "safeops.math.divide_no_nan(x, y)",
                   "Pow": "safeops.math.pow(x, p) (finite gradient at 0), no tf.where needed",
                   "Rsqrt": "safeops.math.rsqrt(x) (finite value and gradient at 0), no tf.where needed"}.get(
                hazard.type, "the safeops op")
            fix += "; or make the operand safe too: tf.where(c, f(tf.where(c, x, 1.)), 0.) (the double where)"
            yield _finding("double-where", op, msg, fix), hazard.name


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

"""The value-range analysis behind :func:`safeops.debug.lint`, and the graph helpers it rests on.

:class:`_Ranges` gives every float tensor of a graph an interval (:class:`_Range`)
and a "known non-zero" flag, propagated op by op, with ``tf.where`` conditions
refining their operand inside each branch (see the "range analysis" section of
:mod:`safeops.debug._lint`). The helpers that read the graph (:func:`_producer`,
:func:`_const_array`, :func:`_const_value`, :func:`_ancestors`) are shared with
the pattern matchers of :mod:`safeops.debug._patterns`.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import tensorflow as tf


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
                    "Softplus": _POSITIVE, "Relu": _NONNEG, "Relu6": _Range(0.0, 6.0),
                    "Acosh": _NONNEG}


#: What safeops' own ops return. Their outputs leave through the IdentityN of a custom gradient
#: named ``.../safeops/<op>/IdentityN``, fed by an inner XLA call the analysis cannot see into.
#: (softplus underflows to 0 and sigmoid reaches 0 and 1 in floating point: closed bounds.)
_SAFEOPS_RANGES = {"softplus": _NONNEG, "sqrt": _NONNEG, "rsqrt": _NONNEG, "norm": _NONNEG,
                   "sigmoid": _Range(0.0, 1.0), "softmax": _Range(0.0, 1.0),
                   "log_sigmoid": _Range(-math.inf, 0.0), "log_softmax": _Range(-math.inf, 0.0),
                   "log1mexp": _Range(-math.inf, 0.0),
                   "l2_normalize": _Range(-1.0, 1.0), "reduce_std": _NONNEG,
                   "reduce_euclidean_norm": _NONNEG, "acos": _Range(0.0, math.pi), "acosh": _NONNEG,
                   "asin": _Range(-math.pi / 2, math.pi / 2), "atan2": _Range(-math.pi, math.pi)}
# (pow's range depends on its exponent's sign and parity: not listed.)
_SAFEOPS_OUTPUT = re.compile(r"(?:^|/)safeops(?:_\d+)?/(\w+)/IdentityN(?:_\d+)?$")


def _safeops_range(t) -> "_Range | None":
    """The range of a safeops op's output ``t`` (see :data:`_SAFEOPS_RANGES`), or None."""
    match = _SAFEOPS_OUTPUT.search(t.op.name) if t.value_index == 0 else None
    return _SAFEOPS_RANGES.get(match.group(1)) if match else None


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
        if kind == "IdentityN" and _safeops_range(t) is not None:
            return _safeops_range(t)
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

"""Generic property tests of the numerics contract for every op of ``safeops.math``.

One table, :data:`SPECS`, names each op with its naive formula
(``tests/naive.py``), its mpmath reference (``tests/reference.py``), the
TensorFlow function it replaces, its float arguments and where its domain
is clamped. Parametrized tests run every property for every op and dtype:

(a) equal to the naive formula wherever that is finite and accurate
    (``test_agrees_with_naive_where_naive_is_accurate``);
(b) C3: values within 4 ULP (float32/64) or 1 ULP (float16/bfloat16) of the
    correctly rounded reference, gradients within 1e-5 / 1e-12 relative
    (``test_within_c3_of_reference``);
(c) C1 and C4: finite value, gradient and second derivative for finite
    input; at a clamped point a live gradient pointing into the domain
    (``test_finite_value_gradient_second_derivative``);
(d) C2: NaN in, NaN out (``test_nan_in_nan_out``);
(e) C5: TensorFlow's signature, output shape and dtype;
(f) C7: integer, string and complex inputs raise ``TypeError`` naming the
    argument;
(g) docstrings carry Formula, Stable rewrite, Edges and an Example;
(h) C6: eager, ``tf.function`` and XLA agree and each meets C3.

Hypothesis draws inputs from ``tests/strategies.py`` (the whole range of each
dtype, with weight on each op's edges) under the profile of
``tests/conftest.py``. Each (op, dtype) is traced once as a ``tf.function``
with a length-agnostic signature; XLA compiles once per (op, dtype) on a
fixed sample.

Documented allowances, each narrower than the contract's wording:

* **ill-conditioned log-sum-exp.** ``logaddexp`` and ``reduce_logsumexp``
  near a result of 0 are ill-conditioned (condition number
  ``sum |x_i| p_i / |y|``, Blanchard, Higham & Higham 2021); there an error
  of 4 ULP of the largest ``|x_i|`` is accepted instead of 4 ULP of ``y``.
* **half-precision subnormals.** float16 and bfloat16 subnormal inputs turn
  into normal float32 numbers when an op widens them, and TensorFlow does not
  flush them then; at inputs that contain a subnormal, the reference with
  the subnormal kept is accepted as well as the flushed one.
* **TensorFlow's float32 ``acos`` and ``asin``** (one of the two allowances
  wider than the contract). Their float32 values are TensorFlow's kernels, up to
  4.3 and 4.5 ULP off (every float32 in ``[0.5, 1]`` against float64); XLA's
  expansions are within 2.4 but several times slower on this CPU
  (``safeops.math._inverse_trig``). 4.5 ULP is accepted for them in float32
  (README, Known gaps).
* **rounded exponent of a running log-sum-exp.** In a row whose finite
  entries span more than 500 (or that holds ``+inf`` or NaN), the gradient
  of ``cumulative_logsumexp`` is ``sum_j v_j exp(x_i - y_j)`` with ``y_j``
  the op's float64 output, rounded to a few float64 ULPs of ``|y_j|``; each
  term then carries that error relative to itself, and in those rows an
  error of ``tests.ulp.EXPONENT_ULPS`` float64 ULPs of the row's largest
  ``|x|`` times the terms' magnitude is accepted on top of C3's
  (``tests.ulp.exponent_slack``). It matters beyond about ``|x| = 1e9`` for
  float32 inputs and ``1e3`` for float64 ones; the gradient's condition
  number is about ``2 max |x|`` there. Narrower rows get no slack.
* **float64 ``erfinv`` and ``ndtri`` as plain TensorFlow ops.** Their
  residuals are TensorFlow's float64 ``erf`` and ``erfc``: through XLA's
  (inner XLA functions in a ``tf.function``) the results are within 2 to 3
  ULP, but as plain kernels (eager calls below 65536 entries,
  ``SAFEOPS_INNER_XLA=0``, under check-numerics) within 5
  (3 of 15000 points in ``[0.55, 0.95]``; TensorFlow's ``erf`` kernel is 2
  ULP off where XLA's is 1). 5 ULP is accepted for them in float64 (README,
  Known gaps). The second allowance wider than C3.
* **running products beyond float64.** ``cumprod`` runs TensorFlow's scan
  kernel in float64: a row whose running product leaves float64's range
  midway (``[1e200, 1e200, 1e-200]``) keeps the kernel's ``inf`` or 0
  from there on (README, Known gaps). Such rows have no reference
  (``tests.reference.cumprod_leaves_float64``): their values may be
  ``inf``, their gradients must still be finite. Only float64 inputs
  reach them in these rows of at most six entries.
* **flush-to-zero resolution.** TensorFlow flushes subnormal intermediates,
  so an error of at most 4 (1) times ``tiny`` in absolute terms is within
  C3 too (``tests.ulp.ftz_ulps``); this matters only for results within a
  few ``tiny`` of 0.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops.math as tfm
import safeops.nn
from safeops import _gradient
from tests import naive, reference, strategies
from tests.conftest import MODES, in_mode
from tests.ulp import (GRAD_RTOL, VALUE_ULP, beyond_exponent_slack, exponent_slack, finfo, ftz_ulps,
                       relative_error, ulp_of, value_ulps)

pytestmark = pytest.mark.contract

DTYPES = strategies.DTYPES

#: 124 (op, dtype) cases per property (31 ops): a third of the profile's examples
#: each (10 in ``ci``, 200 in ``thorough``) keeps this file to minutes in ``ci``.
PER_CASE = settings(max_examples=max(6, settings.default.max_examples // 3))


# ----------------------------------------------------------------------------
# The table.


def _positive_below(bound_fn):
    """Clamp rule ``x <= bound``: gradient there must be positive (points up into the domain)."""
    return lambda xs, f: [(xs[0] <= bound_fn(f), 0, +1)]


@dataclass(frozen=True)
class Spec:
    """One op of ``safeops.math`` and everything the generic tests need to know about it."""

    name: str
    # "unary", "binary", "reduce" (one value per row), "row" (value per entry),
    # "scan" (value per entry from the entries up to it)
    kind: str
    args: tuple[str, ...]  # the float arguments, in order
    original: Callable | None  # the TensorFlow function it replaces (C5)
    expected_signature: str | None = None  # when there is no TF original
    # clamp(xs, fmt) -> [(mask, arg index whose gradient is checked, sign)]; sign 0: nonzero.
    clamp: Callable | None = None
    masks: bool = False  # takes -inf entries as masks
    ill_conditioned_near_zero: bool = False
    rounded_exponent: bool = False  # gradient exp(x - y) from the rounded y (see the module docstring)
    float32_ulp: float | None = None  # a float32 value bound wider than C3's (see the module docstring)
    float64_ulp: float | None = None  # a float64 value bound wider than C3's (see the module docstring)
    # Rows without a reference (reference.cumprod_leaves_float64) may hold inf values.
    range_limited: bool = False
    extra_kwargs: dict = field(default_factory=dict)

    @property
    def per_entry(self) -> bool:
        """Whether the value has the input's shape along the row (the cotangent is then not ones)."""
        return self.kind in ("row", "scan")

    @property
    def fn(self):
        return getattr(tfm, self.name)

    @property
    def naive(self):
        return getattr(naive, self.name)

    def __repr__(self):
        return self.name


def _xlog_clamp(bound_fn):
    def clamp(xs, f):
        x, y = xs
        live = np.abs(x) >= f.tiny  # a subnormal x is 0 (C3)
        return [((y <= bound_fn(f)) & live & (x > 0), 1, +1), ((y <= bound_fn(f)) & live & (x < 0), 1, -1)]
    return clamp


def _outside_open_unit(sign):
    """Clamp rule ``|x| >= 1 - eps/2`` (where the gradient is taken): its sign is ``sign`` at both ends."""
    return lambda xs, f: [(np.abs(xs[0]) >= f.below_one, 0, sign)]


def _pow_clamp(x, y, f):
    """``pow``'s clamps: a base below ``tiny`` (0, subnormal, negative) with a fractional exponent.

    The gradient w.r.t. ``x`` there is ``y tiny**(y - 1)``: positive for
    ``0 < y < 1`` (it pushes the base up, into the domain), negative for
    ``y < 0`` (at the pole). For ``y > 1`` it is about 0, the exact
    derivative at 0, and not checked.
    """
    y = np.where(np.abs(y) < f.tiny, 0.0, y)  # a subnormal exponent is 0 (C3)
    fractional = y != np.floor(y)
    below = x < f.tiny
    return [(below & fractional & (y > 0) & (y < 1), 0, +1), (below & fractional & (y < 0), 0, -1)]


SPECS = {s.name: s for s in [
    Spec("log", "unary", ("x",), tf.math.log, clamp=_positive_below(lambda f: f.tiny)),
    Spec("log1p", "unary", ("x",), tf.math.log1p, clamp=_positive_below(lambda f: -f.below_one)),
    Spec("logit", "unary", ("x",), None, "(x, name=None)",
         clamp=lambda xs, f: [(xs[0] <= f.tiny, 0, +1), (xs[0] >= f.below_one, 0, +1)]),
    Spec("xlogy", "binary", ("x", "y"), tf.math.xlogy, clamp=_xlog_clamp(lambda f: f.tiny)),
    Spec("xlog1py", "binary", ("x", "y"), tf.math.xlog1py, clamp=_xlog_clamp(lambda f: -f.below_one)),
    Spec("log1mexp", "unary", ("x",), None, "(x, name=None)",
         clamp=lambda xs, f: [(np.abs(xs[0]) <= f.tiny, 0, 0)]),
    Spec("logaddexp", "binary", ("x1", "x2"), tf.experimental.numpy.logaddexp,
         ill_conditioned_near_zero=True),
    Spec("sigmoid", "unary", ("x",), tf.math.sigmoid),
    Spec("log_sigmoid", "unary", ("x",), tf.math.log_sigmoid),
    Spec("softplus", "unary", ("features",), tf.math.softplus),
    Spec("softplus_inverse", "unary", ("x",), None, "(x, name=None)",
         clamp=_positive_below(lambda f: f.tiny)),
    Spec("reduce_logsumexp", "reduce", ("input_tensor",), tf.math.reduce_logsumexp, masks=True,
         ill_conditioned_near_zero=True),
    Spec("cumulative_logsumexp", "scan", ("x",), tf.math.cumulative_logsumexp, masks=True,
         ill_conditioned_near_zero=True, rounded_exponent=True),
    # Rows whose running product leaves float64's range (float64 inputs) keep the kernel's inf or 0.
    Spec("cumprod", "scan", ("x",), tf.math.cumprod, range_limited=True),
    Spec("softmax", "row", ("logits",), tf.nn.softmax, masks=True),
    Spec("log_softmax", "row", ("logits",), tf.nn.log_softmax, masks=True),
    Spec("sqrt", "unary", ("x",), tf.math.sqrt, clamp=_positive_below(lambda f: 0.0)),
    # Below tiny: the pole's boundary gradient, saturated, negative (into the domain).
    Spec("rsqrt", "unary", ("x",), tf.math.rsqrt, clamp=lambda xs, f: [(xs[0] < f.tiny, 0, -1)]),
    Spec("norm", "reduce", ("tensor",), tf.norm),
    Spec("reduce_euclidean_norm", "reduce", ("input_tensor",), tf.math.reduce_euclidean_norm),
    Spec("l2_normalize", "row", ("x",), tf.math.l2_normalize),
    Spec("divide_no_nan", "binary", ("x", "y"), tf.math.divide_no_nan),
    Spec("reduce_std", "reduce", ("input_tensor",), tf.math.reduce_std),
    Spec("acos", "unary", ("x",), tf.math.acos, clamp=_outside_open_unit(-1), float32_ulp=4.5),
    Spec("asin", "unary", ("x",), tf.math.asin, clamp=_outside_open_unit(+1), float32_ulp=4.5),
    Spec("atanh", "unary", ("x",), tf.math.atanh, clamp=_outside_open_unit(+1)),
    Spec("acosh", "unary", ("x",), tf.math.acosh, clamp=lambda xs, f: [(xs[0] < f.above_one, 0, +1)]),
    Spec("atan2", "binary", ("y", "x"), tf.math.atan2),
    Spec("pow", "binary", ("x", "y"), tf.math.pow, clamp=lambda xs, f: _pow_clamp(*xs, f)),
    Spec("erfinv", "unary", ("x",), tf.math.erfinv, clamp=_outside_open_unit(+1), float64_ulp=5),
    Spec("ndtri", "unary", ("x",), tf.math.ndtri, float64_ulp=5,
         clamp=lambda xs, f: [(xs[0] <= f.tiny, 0, +1), (xs[0] >= f.below_one, 0, +1)]),
]}


def _shard(names: list) -> list:
    """This process's share of the ops: ``SAFEOPS_CONTRACT_SHARD=i/n`` (every op when unset).

    ``make test`` runs this file as three processes. Every XLA program a
    process compiles (each op, dtype and mode) keeps memory mappings for the
    life of the process, and a worker that ran the whole file crashed at
    Linux's ``vm.max_map_count`` (65530) once ``erfinv`` and ``ndtri`` were
    added; run alone it had 42,600 mappings at 40% of the file. Spreading
    its tests over two workers does not help: both compile every op's
    programs.
    """
    text = os.environ.get("SAFEOPS_CONTRACT_SHARD")
    if not text:
        return names
    index, count = (int(v) for v in text.split("/"))
    return [name for k, name in enumerate(names) if k % count == index]


OP_NAMES = _shard(list(SPECS))
CASES = [(name, dtype) for name in OP_NAMES for dtype in DTYPES]
CASE_IDS = [f"{name}-{dtype}" for name, dtype in CASES]


def test_table_covers_the_public_api():
    assert sorted(SPECS) == sorted(tfm.__all__)


# ----------------------------------------------------------------------------
# Evaluation: value, first and second derivatives, traced once per (op, dtype, impl, mode).

_COTANGENT_CYCLE = np.array([1.0, -0.5, 2.0, -1.5, 0.75, -3.0, 0.25])


def cotangent(shape, dtype) -> np.ndarray:
    """The fixed upstream gradient of the row ops: exact in every dtype, mixed signs."""
    n = int(np.prod(shape))
    return strategies.cast(np.resize(_COTANGENT_CYCLE, n).reshape(shape), dtype)


def _call(spec: Spec, impl: str, *xs):
    fn = spec.fn if impl == "safeops" else spec.naive
    if spec.kind in ("unary", "binary"):
        return fn(*xs)
    if spec.name == "reduce_logsumexp" and len(xs) == 2:
        return fn(xs[0], axis=-1, weights=xs[1])
    return fn(xs[0], axis=-1)


@functools.lru_cache(maxsize=None)
def evaluator(name: str, dtype: str, impl: str = "safeops", mode: str = "function", weighted: bool = False):
    """A function ``(*arrays) -> (value, grads, second)`` as NumPy arrays.

    ``grads``: the gradient of ``sum(value * v)`` (``v`` the
    :func:`cotangent` for row ops, ones otherwise) with respect to each
    input, as float64; ``second``: the gradient of the sum of those
    gradients, as float64 (safeops only; naive gets ``()``).
    """
    spec = SPECS[name]
    dt = tf.as_dtype(dtype)
    n_in = 2 if (spec.kind == "binary" or weighted) else 1
    matrix = spec.kind in ("reduce", "row", "scan")
    second_order = impl == "safeops"

    def run(*args):
        xs, v = list(args[:n_in]), args[n_in] if spec.per_entry else None
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(xs)
            with tf.GradientTape() as inner:
                inner.watch(xs)
                y = _call(spec, impl, *xs)
                loss = tf.reduce_sum(y * v) if v is not None else tf.reduce_sum(y)
            grads = inner.gradient(loss, xs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            total = tf.add_n([tf.reduce_sum(tf.cast(g, tf.float64)) for g in grads])
        second = (outer.gradient(total, xs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                  if second_order else [])
        del outer
        return y, tuple(grads), tuple(second)

    shape = [None, None] if matrix else [None]
    n_specs = n_in + (1 if spec.per_entry else 0)  # the cotangent rides along
    signature = tuple([tf.TensorSpec(shape, dt)] * n_specs)
    compiled = in_mode(run, mode, signature if mode != "eager" else None)

    def evaluate(*arrays):
        tensors = [tf.constant(a, dtype=dt) for a in arrays]
        if spec.per_entry:
            tensors.append(tf.constant(cotangent(arrays[0].shape, dtype), dtype=dt))
        y, grads, second = compiled(*tensors)
        as64 = lambda t: tf.cast(t, tf.float64).numpy()  # noqa: E731
        return y.numpy(), tuple(as64(g) for g in grads), tuple(as64(h) for h in second)

    return evaluate


def reference_for(spec: Spec, arrays, dtype, flush=True) -> reference.Reference:
    if spec.kind in ("unary", "binary"):
        return reference.elementwise(spec.name, *arrays, dtype=dtype, flush=flush)
    weights = arrays[1] if len(arrays) == 2 else None
    v = cotangent(arrays[0].shape, dtype) if spec.per_entry else None
    return reference.rowwise(spec.name, arrays[0], dtype, weights=weights, cotangent=v, flush=flush)


def has_subnormal(arrays, dtype) -> bool:
    tiny = finfo(dtype).tiny
    return any(np.any((np.abs(a.astype(np.float64)) < tiny) & (a.astype(np.float64) != 0)) for a in arrays)


def _row_broadcast(mask_rows, shape):
    return np.broadcast_to(np.asarray(mask_rows)[:, None], shape)


# ----------------------------------------------------------------------------
# Checks shared by the properties: each returns a list of failure messages.


def _describe(arrays, idx):
    """The input entry (or row) behind a failure, for the message."""
    if arrays[0].ndim == 2:
        r = idx[0]
        return "row " + "; ".join(repr(a[r].astype(np.float64).tolist()) for a in arrays)
    return ", ".join(repr(float(a.astype(np.float64)[idx])) for a in arrays)


def value_errors(spec: Spec, arrays, dtype, got, refs) -> list[str]:
    """C3 on values: within the ULP bound of one of the references (see the module docstring)."""
    bound = {"float32": spec.float32_ulp, "float64": spec.float64_ulp}.get(dtype) or VALUE_ULP[dtype]
    failing = np.ones(got.shape, dtype=bool)
    for ref in refs:
        d = ftz_ulps(got, ref.value, dtype)
        good = d <= bound
        if spec.ill_conditioned_near_zero:
            scale = _largest_magnitude(spec, arrays)
            with np.errstate(invalid="ignore"):
                err = np.abs(got.astype(np.float64) - ref.value.astype(np.float64))
                good |= np.isfinite(err) & (err <= bound * ulp_of(scale, dtype))
        failing &= ref.value_defined & ~good
    bad = np.argwhere(failing)
    return [f"{spec.name} value {got[tuple(i)]!r} vs exact {refs[0].value[tuple(i)]!r} "
            f"({np.ravel(value_ulps(got[tuple(i)], refs[0].value[tuple(i)], dtype))[0]:.0f} ULP) "
            f"at {_describe(arrays, tuple(i))}"
            for i in bad[:3]]


def _largest_magnitude(spec, arrays):
    """Per output entry, the largest finite ``|x|`` feeding it (conditioning scale).

    With weights, over the entries of nonzero weight, and ``|log w|`` counts
    as well: the sum is ``log sum exp(x + log w)``, and ``log w`` is rounded.
    """
    if spec.kind == "binary":
        a, b = (np.abs(x.astype(np.float64)) for x in arrays)
        return np.maximum(np.where(np.isfinite(a), a, 0), np.where(np.isfinite(b), b, 0))
    x = np.abs(arrays[0].astype(np.float64))
    scale = np.where(np.isfinite(x), x, 0)
    if len(arrays) == 2:
        w = np.abs(np.broadcast_to(arrays[1].astype(np.float64), x.shape))
        with np.errstate(divide="ignore"):
            log_w = np.abs(np.log(np.where(w > 0, w, 1.0)))
        scale = np.where(w > 0, np.maximum(scale, log_w), 0)
    if spec.kind == "scan":
        return np.maximum.accumulate(scale, axis=-1)  # y_j sums the entries up to j
    return np.max(scale, axis=-1)


def gradient_errors(spec: Spec, arrays, dtype, grads, refs) -> list[str]:
    """C3 on gradients, where the exact gradient is representable and not tiny in absolute terms."""
    f = reference.fmt(dtype)
    rtol = GRAD_RTOL[dtype]
    floor = f.tiny * 2.0 ** 8
    out = []
    for k, got in enumerate(grads):
        failing = np.ones(got.shape, dtype=bool)
        for ref in refs:
            exact, scale = ref.grads[k], ref.scales[k]
            with np.errstate(invalid="ignore"):
                applies = (ref.defined & (np.abs(exact) <= f.max_value)
                           & (np.maximum(np.abs(exact), scale) >= floor))
            if spec.rounded_exponent:
                # Each term exp(x_i - y_j) with the exponent off by a few
                # float64 ULPs of the row's largest |x| (module docstring).
                off = beyond_exponent_slack(got, exact, scale, exponent_slack(arrays[0])) > rtol
            else:
                off = relative_error(got, exact, scale) > rtol
            failing &= applies & off
        for i in np.argwhere(failing)[:3]:
            i = tuple(i)
            arg = spec.args[k] if k < len(spec.args) else "weights"
            rel = np.ravel(relative_error(got[i], refs[0].grads[k][i], refs[0].scales[k][i]))[0]
            out.append(f"{spec.name} d/d{arg}"
                       f" {got[i]!r} vs exact {refs[0].grads[k][i]!r} "
                       f"(rel {rel:.2e})"
                       " "
                       f"at {_describe(arrays, i)}")
    return out


def _refs(spec, arrays, dtype):
    refs = [reference_for(spec, arrays, dtype)]
    if has_subnormal(arrays, dtype) and dtype in ("float16", "bfloat16"):
        refs.append(reference_for(spec, arrays, dtype, flush=False))
    return refs


def draw_inputs(data, spec: Spec, dtype: str, weighted: bool = False):
    """Finite inputs (``-inf`` masks for masking ops) drawn for ``spec`` in ``dtype``."""
    if spec.kind == "unary":
        return (data.draw(strategies.vectors(spec.name, dtype), label="x"),)
    if spec.kind == "binary":
        return data.draw(strategies.pairs(spec.name, dtype), label="x, y")
    x = data.draw(strategies.matrices(spec.name, dtype, masks=spec.masks), label="x")
    if weighted:
        return x, data.draw(strategies.weights_for(x.shape, dtype), label="weights")
    return (x,)


def _variants(spec):
    return [False, True] if spec.name == "reduce_logsumexp" else [False]


CASES_W = [(n, d, w) for n, d in CASES for w in _variants(SPECS[n])]
CASE_W_IDS = [f"{n}-{d}" + ("-weighted" if w else "") for n, d, w in CASES_W]


# ----------------------------------------------------------------------------
# (a) Agreement with the naive formula where it is finite and accurate.


@pytest.mark.parametrize("name, dtype, weighted", CASES_W, ids=CASE_W_IDS)
@PER_CASE
@given(data=st.data())
def test_agrees_with_naive_where_naive_is_accurate(name, dtype, weighted, data):
    spec = SPECS[name]
    arrays = draw_inputs(data, spec, dtype, weighted)
    y, grads, _ = evaluator(name, dtype, "safeops", weighted=weighted)(*arrays)
    ny, ngrads, _ = evaluator(name, dtype, "naive", weighted=weighted)(*arrays)
    refs = _refs(spec, arrays, dtype)
    bound = VALUE_ULP[dtype]
    ny64, y64 = ny.astype(np.float64), y.astype(np.float64)
    # Wherever the naive value is finite, so is safeops' (it is never worse).
    worse = np.isfinite(ny64) & ~np.isfinite(y64)
    assert not worse.any(), (
        f"naive finite, safeops not: {y[worse]} at {_describe(arrays, tuple(np.argwhere(worse)[0]))}")
    # Where the naive value is accurate (within C3 of every reference: a half-dtype
    # subnormal input has two), the two agree.
    naive_good = np.isfinite(ny64)
    for ref in refs:
        naive_good &= ref.value_defined & (ftz_ulps(ny, ref.value, dtype) <= bound)
    apart = ftz_ulps(y, ny, dtype)
    off = naive_good & (apart > 2 * bound)
    if spec.ill_conditioned_near_zero:
        # Near a result of 0 the naive formula can land within the bound by
        # luck; the documented allowance (module docstring) applies here too.
        with np.errstate(invalid="ignore"):
            off &= ~(np.abs(y64 - ny64) <= 2 * bound * ulp_of(_largest_magnitude(spec, arrays), dtype))
    assert not off.any(), (
        f"{name}: safeops {y[off][:3]} vs naive {ny[off][:3]} ({apart[off][:3]} ULP apart) "
        f"at {_describe(arrays, tuple(np.argwhere(off)[0]))}")
    rtol = GRAD_RTOL[dtype]
    tiny_floor = reference.fmt(dtype).tiny * 2.0 ** 8
    for k, (g, ng) in enumerate(zip(grads, ngrads)):
        naive_ok = np.isfinite(ng)
        for ref in refs:
            floor = np.maximum(ref.scales[k], tiny_floor)
            with np.errstate(invalid="ignore"):
                naive_ok &= ref.defined & (relative_error(ng, ref.grads[k], floor) <= rtol)
                # As in gradient_errors: C3 leaves a gradient tiny in absolute
                # terms alone (an exact tiny * (1 - 6e-8) is flushed to 0).
                naive_ok &= np.maximum(np.abs(ref.grads[k]), ref.scales[k]) >= tiny_floor
        floor = np.maximum(refs[0].scales[k], tiny_floor)
        assert np.isfinite(g[np.isfinite(ng)]).all(), f"{name}: naive gradient finite, safeops not"
        off = naive_ok & (relative_error(g, ng, floor) > 2 * rtol)
        assert not off.any(), (
            f"{name}: gradient {g[off][:3]} vs naive {ng[off][:3]} "
            f"at {_describe(arrays, tuple(np.argwhere(off)[0]))}")


# ----------------------------------------------------------------------------
# (b) C3 against the mpmath reference.


@pytest.mark.parametrize("name, dtype, weighted", CASES_W, ids=CASE_W_IDS)
@PER_CASE
@given(data=st.data())
def test_within_c3_of_reference(name, dtype, weighted, data):
    spec = SPECS[name]
    arrays = draw_inputs(data, spec, dtype, weighted)
    y, grads, _ = evaluator(name, dtype, weighted=weighted)(*arrays)
    refs = _refs(spec, arrays, dtype)
    failures = value_errors(spec, arrays, dtype, y, refs) + gradient_errors(spec, arrays, dtype, grads, refs)
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------
# (c) C1 finite value, gradient, second derivative; C4 live gradients at clamps.


@pytest.mark.parametrize("name, dtype, weighted", CASES_W, ids=CASE_W_IDS)
@PER_CASE
@given(data=st.data())
def test_finite_value_gradient_second_derivative(name, dtype, weighted, data):
    spec = SPECS[name]
    arrays = draw_inputs(data, spec, dtype, weighted)
    y, grads, second = evaluator(name, dtype, weighted=weighted)(*arrays)
    refs = _refs(spec, arrays, dtype)
    y64 = y.astype(np.float64)
    # Only the exact infinities: where the correctly rounded result itself is that infinity
    # (an all -inf slice, a masked log-probability, a result beyond the dtype's range).
    allowed = np.zeros(y.shape, dtype=bool)
    for ref in refs:
        allowed |= np.isinf(ref.value.astype(np.float64)) & (ref.value.astype(np.float64) == y64)
        if spec.range_limited:
            allowed |= ~ref.value_defined & np.isinf(y64)
    bad = ~np.isfinite(y64) & ~allowed
    assert not bad.any(), f"{name}: value {y[bad][:3]} at {_describe(arrays, tuple(np.argwhere(bad)[0]))}"
    for what, arrays_out in (("gradient", grads), ("second derivative", second)):
        for k, g in enumerate(arrays_out):
            bad = ~np.isfinite(g)
            assert not bad.any(), (
                f"{name}: {what} w.r.t. argument {k} is {g[bad][:3]} "
                f"at {_describe(arrays, tuple(np.argwhere(bad)[0]))}")
    if spec.clamp is not None:
        f = reference.fmt(dtype)
        xs = [a.astype(np.float64) for a in arrays]
        for mask, k, sign in spec.clamp(xs, f):
            g = grads[k][mask]
            dead = (g == 0) if sign == 0 else (np.sign(g) != sign)
            assert not dead.any(), (
                f"{name}: gradient {g[dead][:3]} at a clamped point (C4 wants sign {sign or 'nonzero'}) "
                f"at {_describe(arrays, tuple(np.argwhere(mask)[np.argmax(dead)]))}")


# ----------------------------------------------------------------------------
# (d) C2: NaN in, NaN out.


@pytest.mark.parametrize("name, dtype", CASES, ids=CASE_IDS)
@PER_CASE
@given(data=st.data())
def test_nan_in_nan_out(name, dtype, data):
    spec = SPECS[name]
    arrays = list(draw_inputs(data, spec, dtype))
    which = data.draw(st.integers(0, len(arrays) - 1), label="argument")
    arrays[which], mask = strategies.with_nans(data.draw, arrays[which])
    y, grads, _ = evaluator(name, dtype)(*arrays)
    y64 = y.astype(np.float64)
    if spec.kind in ("unary", "binary"):
        affected = mask
    elif spec.kind == "reduce":
        affected = mask.any(axis=-1)
    elif spec.kind == "scan":
        affected = np.logical_or.accumulate(mask, axis=-1)  # the outputs at and after the NaN
    else:
        affected = _row_broadcast(mask.any(axis=-1), mask.shape)
    hidden = affected & ~np.isnan(y64)
    assert not hidden.any(), (
        f"{name}: NaN in {spec.args[which]} gave {y[hidden][:3]} "
        f"at {_describe(arrays, tuple(np.argwhere(hidden)[0]))}")
    # The NaN reaches the gradient: of its own argument for one-input ops, of at
    # least one argument for two-input ops (d(x log y)/dx = log y does not see x).
    shown = np.zeros(mask.shape, dtype=bool)
    for g in (grads if spec.kind == "binary" else grads[which:which + 1]):
        shown |= np.isnan(g)
    hidden = mask & ~shown
    assert not hidden.any(), (
        f"{name}: NaN in {spec.args[which]} gave gradients "
        f"{[g[hidden][:3] for g in grads]} at {_describe(arrays, tuple(np.argwhere(hidden)[0]))}")


# ----------------------------------------------------------------------------
# (e) C5: signature, output shape and dtype.


def _parameters(fn):
    return list(inspect.signature(fn).parameters.values())


@pytest.mark.parametrize("name", OP_NAMES)
def test_signature_matches_tensorflow(name):
    spec = SPECS[name]
    ours = _parameters(spec.fn)
    if spec.original is None:
        assert str(inspect.signature(spec.fn)) == spec.expected_signature
        return
    theirs = _parameters(spec.original)
    head = ours[:len(theirs)]
    assert [p.name for p in head] == [p.name for p in theirs], f"{name}: {inspect.signature(spec.fn)}"
    for a, b in zip(head, theirs):
        assert a.default == b.default, (
            f"{name}: default of {a.name} is {a.default!r}, TensorFlow's {b.default!r}")
        assert a.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY)
    extras = ours[len(theirs):]
    if "name" not in [p.name for p in theirs] and extras and extras[0].name == "name":
        # A NumPy-API original (logaddexp) has no ``name``; every TF op takes one last.
        assert extras[0].default is None
        extras = extras[1:]
    for p in extras:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"{name}: extra argument {p.name} not keyword-only"


def _shape_calls(name):
    """(args, kwargs) pairs exercising broadcasting, axes and keepdims, in float32."""
    m = np.linspace(0.1, 2.0, 12).reshape(3, 4).astype(np.float32)
    t3 = np.linspace(0.1, 2.0, 24).reshape(2, 3, 4).astype(np.float32)
    col, row = m[:, :1], m[0]
    spec = SPECS[name]
    if spec.kind == "unary":
        return [((m,), {}), ((t3,), {}), ((np.float32(0.5),), {})]
    if spec.kind == "binary":
        return [((m, m), {}), ((col, row), {}), ((m, np.float32(0.5)), {})]
    if name in ("reduce_logsumexp", "reduce_std", "reduce_euclidean_norm"):
        return [((t3,), {}), ((t3,), {"axis": 1}), ((t3,), {"axis": [0, 2], "keepdims": True}),
                ((t3,), {"axis": -1, "keepdims": True})]
    if name == "norm":
        return [((t3,), {}), ((t3,), {"axis": 1}), ((t3,), {"axis": -1, "keepdims": True}),
                ((t3,), {"axis": (1, 2)}), ((t3,), {"ord": 1, "axis": 0})]
    if name == "l2_normalize":
        return [((t3,), {}), ((t3,), {"axis": 1}), ((t3,), {"axis": [0, 2]})]
    return [((t3,), {}), ((t3,), {"axis": 1}), ((m,), {"axis": 0})]


@pytest.mark.parametrize("name", OP_NAMES)
def test_output_shape_and_dtype_match_tensorflow(name):
    spec = SPECS[name]
    original = spec.original or spec.naive
    for args, kwargs in _shape_calls(name):
        ours = spec.fn(*args, **kwargs)
        theirs = original(*args, **kwargs)
        assert ours.shape == theirs.shape, f"{name}{[np.shape(a) for a in args]} {kwargs}"
        assert ours.dtype == tf.float32
    for dtype in DTYPES:
        args = [tf.constant(strategies.cast([[0.25, 0.5], [0.75, 1.5]], dtype))] * len(spec.args)
        ours = spec.fn(*args)
        assert ours.dtype == tf.as_dtype(dtype), f"{name}: {dtype} in, {ours.dtype.name} out"


def _named_calls(names=None):
    """(label, call(name)) for the public ops of safeops.math (``names``, all by default) and safeops.nn
    that take ``name``."""
    m = np.array([[0.25, 0.5], [0.75, 1.5]], np.float32)
    calls = [(n, functools.partial(lambda spec, name: spec.fn(*[m] * len(spec.args), name=name), SPECS[n]))
             for n in (list(SPECS) if names is None else names)]
    calls += [
        ("softmax_cross_entropy_with_logits",
         lambda name: safeops.nn.softmax_cross_entropy_with_logits(labels=m, logits=m, name=name)),
        ("sparse_softmax_cross_entropy_with_logits",
         lambda name: safeops.nn.sparse_softmax_cross_entropy_with_logits(
             labels=np.array([0, 1]), logits=m, name=name)),
        ("sigmoid_cross_entropy_with_logits",
         lambda name: safeops.nn.sigmoid_cross_entropy_with_logits(labels=m * 0.5, logits=m, name=name)),
        ("weighted_cross_entropy_with_logits",
         lambda name: safeops.nn.weighted_cross_entropy_with_logits(m * 0.5, m, 2.0, name=name)),
    ]
    return calls


def test_named_ops_cover_math_and_nn():
    named = {label for label, _ in _named_calls()}
    assert named >= set(tfm.__all__) | {n for n in safeops.nn.__all__ if "cross_entropy" in n}


@pytest.mark.parametrize("label", [label for label, _ in _named_calls(OP_NAMES)])
def test_name_names_the_output_op_in_a_graph_as_tensorflow(label):
    """TensorFlow's tests check ``loss.op.name == "mylogistic"`` (nn_xent_test's testConstructionNamed)."""
    call = dict(_named_calls())[label]
    with tf.Graph().as_default():
        assert call("given").op.name == "given"
        with tf.name_scope("outer"):
            assert call("given").op.name == "outer/given"
        assert call("given").op.name == "given_1"
        assert call(None).op.name.startswith("safeops")


# ----------------------------------------------------------------------------
# (f) C7: integer, string and complex inputs.

_BAD_INPUTS = {
    "int32": lambda: tf.constant([[1, 2]], tf.int32),
    "string": lambda: tf.constant([["a", "b"]]),
    "complex64": lambda: tf.constant([[1 + 1j, 2.0]], tf.complex64),
}


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("bad", list(_BAD_INPUTS))
def test_non_float_input_raises_type_error_naming_the_argument(name, bad):
    spec = SPECS[name]
    good = tf.constant([[0.5, 0.25]], tf.float32)
    for position, arg in enumerate(spec.args):
        args = [good] * len(spec.args)
        args[position] = _BAD_INPUTS[bad]()
        with pytest.raises(TypeError) as info:
            spec.fn(*args)
        text = str(info.value)
        assert text.startswith(f"safeops.math.{name}: {arg} must be"), text
        assert bad in text, text
    if name == "reduce_logsumexp":
        with pytest.raises(TypeError, match=r"safeops\.math\.reduce_logsumexp: weights must be"):
            spec.fn(good, weights=_BAD_INPUTS[bad]())


_SHAPE_AND_AXIS_ERRORS = {
    "softmax axis": lambda v: tfm.softmax(v, axis=5),
    "log_softmax axis": lambda v: tfm.log_softmax(v, axis=-3),
    "reduce_logsumexp axis": lambda v: tfm.reduce_logsumexp(v, axis=2),
    "reduce_std axis": lambda v: tfm.reduce_std(v, axis=[0, 2]),
    "l2_normalize axis": lambda v: tfm.l2_normalize(v, axis=[1, -1]),   # one axis twice
    "reduce_logsumexp axes": lambda v: tfm.reduce_logsumexp(v, axis=[0, 0]),
    "xlogy shapes": lambda v: tfm.xlogy(v, tf.zeros([4, 5])),
    "norm axis": lambda v: tfm.norm(v, axis=3),
    "softmax_cross_entropy_with_logits shapes": lambda v: safeops.nn.softmax_cross_entropy_with_logits(
        tf.zeros([3, 3]), v),
}


@pytest.mark.parametrize("case", sorted(_SHAPE_AND_AXIS_ERRORS))
@pytest.mark.parametrize("autograph", [True, False])
def test_shape_and_axis_errors_keep_their_type_while_tracing(case, autograph):
    """C7: raised while a tf.function traces, the error is still a ValueError and an InvalidArgumentError.

    Autograph re-raises what a traced function raises; an exception type whose
    constructor it cannot call came out as a StagingError, which code catching
    TensorFlow's error types missed.
    """
    fn = tf.function(_SHAPE_AND_AXIS_ERRORS[case], autograph=autograph)
    with pytest.raises(ValueError) as info:
        fn(tf.zeros([2, 3]))
    assert isinstance(info.value, tf.errors.InvalidArgumentError), type(info.value)
    module = "nn" if "cross" in case else "math"
    assert f"safeops.{module}.{case.split()[0]}: " in str(info.value), str(info.value)


@pytest.mark.parametrize("name", ["reduce_logsumexp", "reduce_std", "reduce_euclidean_norm", "l2_normalize"])
@pytest.mark.parametrize("axis", [np.array([1]), np.array([0, 2]), np.arange(1, 3), np.int64(2), np.array(-1),
                                  [np.int64(0), 1]], ids=repr)
def test_numpy_integer_axes_as_in_tensorflow(name, axis):
    # Axes built with NumPy (np.arange, np.where(...)[0]); a 1-d array crashed l2_normalize's sums.
    x = tf.reshape(tf.range(1.0, 25.0), [2, 3, 4])
    want = SPECS[name].original(x, axis=axis)
    for got in (SPECS[name].fn(x, axis=axis), tf.function(lambda t: SPECS[name].fn(t, axis=axis))(x)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)


def test_a_python_int_is_named_int32_as_tensorflow_converts_it():
    for value, text in ((2, "got int32 2"), ([1, 2], "got int32 [1, 2]"), (2**40, "got int64 1099511627776")):
        expected = f"safeops.math.logit: x must be a floating-point tensor (float16, bfloat16, float32 or " \
                   f"float64), {text}"
        with pytest.raises(TypeError, match=re.escape(expected)):
            tfm.logit(value)


@pytest.mark.parametrize("name", _shard([n for n in SPECS if SPECS[n].kind == "binary"]))
def test_python_float_next_to_python_int_is_float32_as_in_tensorflow(name):
    # TensorFlow converts divide_no_nan(1.0, 2) to float32; two ints stay refused (C7).
    fn = SPECS[name].fn
    for args in ((1.5, 2), (2, 1.5), ([1.5, 0.5], [2, 1])):
        got = fn(*args)
        assert got.dtype == tf.float32
        np.testing.assert_array_equal(got.numpy(), fn(*(tf.constant(a, tf.float32) for a in args)).numpy())
    with pytest.raises(TypeError, match=f"safeops.math.{name}: "):
        fn(1, 2)


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_list_of_numpy_scalars_keeps_their_dtype_as_in_tensorflow(name, dtype):
    # tf.convert_to_tensor([np.float64(0.5), ...]) is float64; Python floats alone give float32.
    spec = SPECS[name]
    rows = [[dtype(0.5), dtype(0.25)]]
    args = [rows] * len(spec.args)
    assert _call(spec, "safeops", *args).dtype == tf.as_dtype(dtype)
    assert _call(spec, "safeops", *([[[0.5, 0.25]]] * len(spec.args))).dtype == tf.float32


# ----------------------------------------------------------------------------
# (g) Docstrings carry the numerics.


@pytest.mark.parametrize("name", OP_NAMES)
def test_docstring_has_formula_rewrite_edges_and_example(name):
    doc = inspect.getdoc(SPECS[name].fn) or ""
    for section in ("Formula", "Stable rewrite", "Edges", "Args", "Returns", "Raises", "Example"):
        assert re.search(rf"^\s*{section}\b", doc, re.MULTILINE), f"{name}: no {section} section"
    assert ">>> " in doc, f"{name}: the Example has no doctest"
    summary = doc.splitlines()[0]
    assert summary.strip() and len(summary) <= 110, f"{name}: one-line summary {summary!r}"


# ----------------------------------------------------------------------------
# (h) C6: eager, tf.function and XLA agree, each within C3.


def fixed_sample(spec: Spec, dtype: str, size: int = 48):
    """A deterministic sample for ``spec``: its edges, the specials and seeded random values."""
    rng = np.random.default_rng(sum(map(ord, spec.name + dtype)))
    pool = strategies.edge_points(spec.name, dtype) + strategies.specials(dtype)
    f = reference.fmt(dtype)
    spread = rng.standard_normal(size) * np.exp2(rng.uniform(-30, min(60, math.log2(f.max_value) - 2), size))
    values = np.concatenate([np.resize(np.array(pool), size), spread])
    values = strategies.cast(values, dtype)
    values = np.where(np.isfinite(values.astype(np.float64)), values, strategies.cast([1.0], dtype)[0])
    if spec.kind == "unary":
        return (values,)
    if spec.kind == "binary":
        return values, strategies.cast(rng.permutation(values.astype(np.float64)), dtype)
    x = values.reshape(-1, 8)
    if spec.masks:
        x = x.astype(np.float64)
        x[0, :] = -np.inf
        x[1, ::3] = -np.inf
        x = strategies.cast(x, dtype)
    return (x,)


@pytest.mark.modes
@pytest.mark.parametrize("name, dtype", CASES, ids=CASE_IDS)
def test_same_result_in_eager_function_and_xla(name, dtype):
    spec = SPECS[name]
    arrays = fixed_sample(spec, dtype)
    refs = _refs(spec, arrays, dtype)
    results = {mode: evaluator(name, dtype, "safeops", mode)(*arrays) for mode in MODES}
    for mode, (y, grads, second) in results.items():
        failures = (value_errors(spec, arrays, dtype, y, refs)
                    + gradient_errors(spec, arrays, dtype, grads, refs))
        assert not failures, f"{mode}:\n" + "\n".join(failures)
    base_y, base_g, base_h = results["eager"]
    for mode in ("function", "jit"):
        y, grads, second = results[mode]
        assert np.array_equal(np.isfinite(y.astype(np.float64)), np.isfinite(base_y.astype(np.float64))), mode
        assert np.array_equal(np.isnan(y.astype(np.float64)), np.isnan(base_y.astype(np.float64))), mode
        for g, bg in zip(grads + second, base_g + base_h):
            assert np.array_equal(np.isfinite(g), np.isfinite(bg)), f"{mode}: gradient finiteness differs"


def _bits(t) -> np.ndarray:
    """The raw bits of a tensor's values, so NaN payloads and signed zeros compare too."""
    a = np.ascontiguousarray(t.numpy())
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


@pytest.mark.parametrize("name, dtype", CASES, ids=CASE_IDS)
def test_eager_value_without_a_tape_equals_the_recorded_one(name, dtype):
    # Eager calls that no tape or accumulator can record skip the gradient
    # wrapping (safeops._gradient); the value must be the same bits either way.
    spec = SPECS[name]
    xs = [tf.constant(a, dtype=tf.as_dtype(dtype)) for a in fixed_sample(spec, dtype)]
    plain = _call(spec, "safeops", *xs)
    with tf.GradientTape() as tape:
        tape.watch(xs)
        recorded = _call(spec, "safeops", *xs)
        with tape.stop_recording():
            stopped = _call(spec, "safeops", *xs)
    grads = tape.gradient(recorded, xs)
    assert all(g is not None for g in grads), "the recorded call lost its gradient"
    np.testing.assert_array_equal(_bits(plain), _bits(recorded))
    np.testing.assert_array_equal(_bits(stopped), _bits(recorded))
    if spec.kind == "unary":
        # A ForwardAccumulator records too (through the forward formula: TensorFlow's
        # custom_gradient has no forward-mode rule), so the recorded path runs.
        with tf.autodiff.ForwardAccumulator(xs[0], tf.ones_like(xs[0])) as acc:
            y = _call(spec, "safeops", *xs)
        np.testing.assert_array_equal(_bits(y), _bits(recorded))
        assert acc.jvp(y) is not None


@pytest.mark.parametrize("name, dtype", CASES, ids=CASE_IDS)
def test_a_second_eager_call_builds_nothing(name, dtype, monkeypatch):
    # Ops are built once per dtype (and cached): an op rebuilt at every call
    # pays its construction eagerly each time, and its inner XLA functions,
    # new objects, compile again for every call (acos and asin did so).
    spec = SPECS[name]
    xs = [tf.constant(a, dtype=tf.as_dtype(dtype)) for a in fixed_sample(spec, dtype)]
    with tf.GradientTape() as tape:
        tape.watch(xs)
        _call(spec, "safeops", *xs)
    built = []
    real = tf.function

    def counted(*args, **kwargs):
        built.append(args[0] if args else kwargs.get("func"))
        return real(*args, **kwargs)

    real_op = _gradient.custom_op_with_residuals

    def counted_op(*args, **kwargs):
        built.append(args[0])
        return real_op(*args, **kwargs)

    monkeypatch.setattr(tf, "function", counted)
    monkeypatch.setattr(_gradient, "custom_op_with_residuals", counted_op)
    with tf.GradientTape() as tape:
        tape.watch(xs)
        _call(spec, "safeops", *xs)
    assert built == [], f"{name} built {len(built)} tf.function(s) or custom op(s) again: {built}"


def _empty_calls(spec):
    """(arrays, kwargs) with no entries: an empty batch, and (row ops) an empty axis."""
    half = lambda *shape: np.full(shape, 0.5, np.float32)  # noqa: E731
    if spec.kind == "unary":
        return [((half(0),), {}), ((half(0, 3),), {})]
    if spec.kind == "binary":
        return [((half(0), half(0)), {}), ((half(0, 3), half(3)), {})]
    return [((half(0, 3),), {"axis": -1}), ((half(3, 0),), {"axis": -1}), ((half(3, 0),), {"axis": 0})]


@pytest.mark.parametrize("name", OP_NAMES)
def test_empty_inputs_as_in_tensorflow(name):
    # A batch can be empty (a dataset's last shard under a distribution
    # strategy, a mask that selects nothing): the value is TensorFlow's, in
    # shape and dtype and, for a reduction over an empty axis, in value (-inf
    # for a log-sum-exp, NaN for a standard deviation, 0 for a norm), and the
    # gradient has the input's shape. cumprod's graph path once built an
    # index list that TensorFlow converted to float32 there (a TypeError).
    spec = SPECS[name]
    original = spec.original or spec.naive
    for arrays, kwargs in _empty_calls(spec):
        xs = [tf.constant(a) for a in arrays]
        want = original(*xs, **kwargs)

        def body(*xs):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                y = spec.fn(*xs, **kwargs)
                loss = tf.reduce_sum(y)
            return y, tape.gradient(loss, xs, unconnected_gradients=tf.UnconnectedGradients.ZERO)

        for mode in MODES:
            where = f"{name}{[a.shape for a in arrays]} {kwargs} ({mode})"
            run = body if mode == "eager" else tf.function(body, jit_compile=mode == "jit", autograph=False)
            y, grads = run(*xs)
            assert (y.shape, y.dtype) == (want.shape, want.dtype), where
            np.testing.assert_array_equal(y.numpy(), want.numpy(), err_msg=where)
            for x, g in zip(xs, grads):
                assert g.shape == x.shape and g.dtype == x.dtype, where

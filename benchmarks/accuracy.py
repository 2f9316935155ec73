"""Accuracy of safeops against mpmath, next to the naive formula and TensorFlow's built-in.

Run as ``python -m benchmarks.accuracy [--quick] [--n N] [--out FILE.md] [--json FILE.json]``.

For every op of ``safeops.math`` and every float dtype, a fixed, seeded
sample spanning the whole range of the dtype (the dtype's special numbers,
each op's edges with their neighbours, log-uniform magnitudes over every
binade, moderate values; rows of 8 with ``-inf`` masks for the softmax
family) is evaluated eagerly by three implementations:

* ``safeops``: ``safeops.math.<op>``;
* ``naive``: the textbook formula of ``tests/naive.py``;
* ``tf``: TensorFlow's own op where there is one.

Each is compared with the correctly rounded mpmath reference of
``tests/reference.py`` (320 bits, subnormal inputs treated as 0, the op's
documented clamp applied). Reported per implementation:

* ``max ULP``: the largest distance, in ULP of the dtype, between a finite
  result and the reference, over points where the reference is finite.
  For ``logaddexp`` and ``reduce_logsumexp`` the error near a result of 0 is
  measured in ULP of the largest ``|x|`` (the problem is ill-conditioned
  there, Blanchard, Higham & Higham 2021), as in ``tests/test_contract.py``,
  and within a few ``tiny`` of 0 in units of ``tiny`` (flush-to-zero
  resolution, ``tests.ulp.ftz_ulps``); for ``cumulative_logsumexp`` in
  ULP of the largest ``|x|`` up to each entry;
* ``grad rel``: the largest relative error of the gradient where the exact
  gradient is representable and not tiny; an error of at most ``tiny`` (a
  subnormal exact gradient flushed to 0, as TensorFlow on CPU does: contract
  C3) counts 0. For ``cumulative_logsumexp``, in rows that span more than
  500, only the error beyond ``tests.ulp.EXPONENT_ULPS`` float64 ULPs of the
  row's largest ``|x|`` in each term's exponent counts (there its terms
  ``exp(x_i - y_j)`` are formed from the rounded output ``y_j``, as in
  ``tests/test_contract.py``);
* ``non-finite``: results that are ``inf``/NaN where the reference is
  finite, and gradients that are ``inf``/NaN at finite inputs.

Needs mpmath (the ``test`` extra). Writes a Markdown table to stdout (and
``--out``) and the raw numbers as JSON (``--json``, default next to
``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import safeops.math as tfm  # noqa: E402
from tests import naive, reference  # noqa: E402
from tests.strategies import POW_EXPONENTS  # noqa: E402
from tests.ulp import (GRAD_RTOL, VALUE_ULP, beyond_exponent_slack, exponent_slack, finfo,  # noqa: E402
                       ftz_ulps, numpy_dtype, relative_error, ulp_of)

DTYPES = ("float16", "bfloat16", "float32", "float64")

UNARY = ("log", "log1p", "logit", "log1mexp", "sigmoid", "log_sigmoid", "softplus", "softplus_inverse",
         "sqrt", "rsqrt", "acos", "asin", "atanh", "acosh", "erfinv", "ndtri")
BINARY = ("xlogy", "xlog1py", "logaddexp", "divide_no_nan", "atan2", "pow")
#: Ops whose domain is [-1, 1]: three quarters of their sample lies inside it.
UNIT_DOMAIN = ("acos", "asin", "atanh", "erfinv")
#: Ops whose domain is [0, 1]: three quarters of their sample lies inside it, half of it near 0 or 1.
PROBABILITY_DOMAIN = ("ndtri",)
#: Ops whose domain is [1, inf): three quarters of their sample lies above 1, half of it near 1.
ABOVE_ONE = ("acosh",)
ROWS = ("reduce_logsumexp", "cumulative_logsumexp", "cumprod", "softmax", "log_softmax", "norm",
        "l2_normalize",
        "reduce_std",        "reduce_euclidean_norm")
MASKING = ("reduce_logsumexp", "cumulative_logsumexp", "softmax", "log_softmax")
REDUCING = ("reduce_logsumexp", "norm", "reduce_std", "reduce_euclidean_norm")
ILL_CONDITIONED = ("logaddexp", "reduce_logsumexp", "cumulative_logsumexp")
#: Gradients formed from a rounded output in wide rows (``tests.ulp.exponent_slack``).
ROUNDED_EXPONENT = ("cumulative_logsumexp",)

TF_BUILTINS = {
    "log": tf.math.log, "log1p": tf.math.log1p, "xlogy": tf.math.xlogy, "xlog1py": tf.math.xlog1py,
    "sigmoid": tf.math.sigmoid,
    "log_sigmoid": tf.math.log_sigmoid, "softplus": tf.math.softplus,
    "reduce_logsumexp": tf.math.reduce_logsumexp, "cumulative_logsumexp": tf.math.cumulative_logsumexp,
    "cumprod": tf.math.cumprod,
    "softmax": tf.nn.softmax, "log_softmax": tf.nn.log_softmax,
    "sqrt": tf.math.sqrt, "rsqrt": tf.math.rsqrt, "norm": tf.norm, "l2_normalize": tf.math.l2_normalize,
    "divide_no_nan": tf.math.divide_no_nan, "reduce_std": tf.math.reduce_std,
    "reduce_euclidean_norm": tf.math.reduce_euclidean_norm, "acos": tf.math.acos, "asin": tf.math.asin,
    "atanh": tf.math.atanh, "acosh": tf.math.acosh, "atan2": tf.math.atan2, "pow": tf.math.pow,
    "erfinv": tf.math.erfinv, "ndtri": tf.math.ndtri,
}

EDGES = {
    "log1p": (-1.0, -0.5, -0.25), "logit": (0.5, 0.25, 0.75, 1.0), "log1mexp": (math.log(2.0),),
    "softplus_inverse": (math.log(4 / 3), math.log(2.0), 15.9, 36.0), "sigmoid": (15.9, 36.0, 87.3, -87.3),
    "log_sigmoid": (13.9, -13.9, 36.0, -36.0), "softplus": (13.9, -13.9, 36.0, -36.0),
    "acos": (0.5, -0.5), "asin": (0.5, -0.5), "atanh": (0.5, -0.5),
    "acosh": (2.0, 1.5),
}
_COMMON = (0.0, 1.0, -1.0, math.log(2.0), 20.0, -20.0, 50.0, -50.0, 100.0, -100.0, 1e4, -1e4)
_COTANGENT = np.array([1.0, -0.5, 2.0, -1.5, 0.75, -3.0, 0.25])
ROW_LENGTH = 8


def _cast(values, dtype):
    with np.errstate(over="ignore"):
        out = np.asarray(values, dtype=np.float64).astype(numpy_dtype(dtype))
    return out


def _neighbours(values, dtype):
    """Each value and its two representable neighbours in ``dtype``."""
    base = _cast(values, dtype).astype(np.float64)
    info = finfo(dtype)
    step = ulp_of(base, dtype) * np.where(np.abs(base) < float(info.tiny), 1.0, 1.0)
    return np.concatenate([base, base + step, base - step])


def sample(op: str, dtype: str, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The fixed sample of ``op`` in ``dtype``: ``n`` finite points (or rows) over the whole range."""
    rng = np.random.default_rng(seed + sum(map(ord, op + dtype)))
    info = finfo(dtype)
    tiny, big, eps = float(info.tiny), float(info.max), float(info.eps)
    specials = [0.0, tiny, tiny * 0.5, big, math.sqrt(big), math.sqrt(tiny), 1 - eps / 2, eps, math.log(big),
                math.log(tiny), -math.log(eps)]
    specials += [-v for v in specials]
    edges = list(_COMMON) + list(EDGES.get(op, ()))
    lo, hi = math.log2(tiny), math.log2(big)
    m = max(n - 3 * len(edges) - len(specials), n // 2)
    magnitude = np.exp2(rng.uniform(lo - 4, hi, m // 2)) * rng.choice([-1.0, 1.0], m // 2)
    moderate = rng.uniform(-40.0, 40.0, m - m // 2)
    values = np.concatenate([specials, _neighbours(edges, dtype), magnitude, moderate])
    values = _cast(values, dtype)
    values = values[np.isfinite(values.astype(np.float64))][:n]
    if op in UNIT_DOMAIN:
        k = len(values) // 4
        inside = rng.uniform(-1.0, 1.0, k)
        gap = np.exp2(rng.uniform(math.log2(eps) - 1, -1, 2 * k))
        near_one = (1.0 - gap) * rng.choice([-1.0, 1.0], 2 * k)
        values = _cast(np.concatenate([values[:len(values) - 3 * k], inside, near_one]), dtype)
    if op in PROBABILITY_DOMAIN:
        k = len(values) // 4
        inside = rng.uniform(0.0, 1.0, k)
        near_zero = np.exp2(rng.uniform(math.log2(tiny), -1, k))
        near_one = 1.0 - np.exp2(rng.uniform(math.log2(eps) - 1, -1, k))
        values = _cast(np.concatenate([values[:len(values) - 3 * k], inside, near_zero, near_one]), dtype)
    if op in ABOVE_ONE:
        k = len(values) // 4
        inside = rng.uniform(1.0, 4.0, k)
        near_one = 1.0 + np.exp2(rng.uniform(math.log2(eps), -1, 2 * k))
        values = _cast(np.concatenate([values[:len(values) - 3 * k], inside, near_one]), dtype)
    if op in UNARY:
        return (values,)
    if op in BINARY:
        other = _cast(rng.permutation(values.astype(np.float64)), dtype)
        if op == "pow":
            # Exponents over the whole range overflow or underflow almost always: half
            # are the usual ones (square roots, focal gammas, inverse powers), a quarter
            # moderate, a quarter whole-range.
            k = len(other) // 4
            usual = rng.choice(POW_EXPONENTS, 2 * k)
            other = _cast(np.concatenate([usual, rng.uniform(-4.0, 4.0, k), other[3 * k:]]), dtype)
        return values, other
    rows = max(2, len(values) // ROW_LENGTH)
    values = np.resize(values, rows * ROW_LENGTH).astype(np.float64).reshape(rows, ROW_LENGTH)
    if op in ("softmax", "log_softmax", "reduce_logsumexp", "l2_normalize", "norm", "reduce_std",
              "reduce_euclidean_norm"):
        # Most rows at a scale logits have; a quarter keep the whole-range values.
        scale = rng.uniform(-60, 60, values.shape)
        keep = rng.random(rows) < 0.25
        values = np.where(keep[:, None], values, scale)
    if op == "reduce_std":
        # An eighth of the rows constant, an eighth a large mean against a small spread (raw features).
        kind = rng.integers(0, 8, rows)
        values = np.where((kind == 0)[:, None], values[:, :1], values)
        values = np.where((kind == 1)[:, None], 1e4 + rng.standard_normal(values.shape), values)
    if op in MASKING:
        values[0, :] = -np.inf
        masked = rng.random(values.shape) < 0.15
        values = np.where(masked, -np.inf, values)
    return (_cast(values, dtype),)


def _function(op: str, impl: str):
    if impl == "safeops":
        return getattr(tfm, op)
    if impl == "naive":
        return getattr(naive, op)
    return TF_BUILTINS.get(op)


def evaluate(op: str, impl: str, arrays, dtype: str):
    """``(value, grads)`` of ``impl`` at ``arrays`` (eager), gradients as float64; ``None`` if unsupported."""
    fn = _function(op, impl)
    if fn is None:
        return None
    dt = tf.as_dtype(dtype)
    xs = [tf.constant(a, dtype=dt) for a in arrays]
    try:
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = fn(*xs) if op not in ROWS else fn(xs[0], axis=-1)
            if op in ROWS and op not in REDUCING:
                v = np.resize(_COTANGENT, arrays[0].size).reshape(arrays[0].shape)
                v = tf.constant(_cast(v, dtype), dt)
                loss = tf.reduce_sum(y * v)
            else:
                loss = tf.reduce_sum(y)
        grads = tape.gradient(loss, xs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    except (TypeError, ValueError, AttributeError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
        return None  # the built-in does not take this dtype
    return y.numpy(), [tf.cast(g, tf.float64).numpy() for g in grads]


def references(op: str, arrays, dtype: str):
    """The flushed reference and, for half dtypes, the one that keeps subnormal inputs."""
    def one(flush):
        if op in UNARY or op in BINARY:
            return reference.elementwise(op, *arrays, dtype=dtype, flush=flush)
        v = None
        if op not in REDUCING:
            v = np.resize(_COTANGENT, arrays[0].size).reshape(arrays[0].shape)
        return reference.rowwise(op, arrays[0], dtype, cotangent=v, flush=flush)
    refs = [one(True)]
    if dtype in ("float16", "bfloat16"):
        refs.append(one(False))
    return refs


def _value_error(op, arrays, dtype, y, refs):
    """Per output entry, the smallest error (ULP) over the references; NaN where undefined."""
    best = np.full(np.shape(y), np.inf)
    defined = np.zeros(np.shape(y), dtype=bool)
    for ref in refs:
        d = ftz_ulps(y, ref.value, dtype)
        if op in ILL_CONDITIONED:
            x = np.abs(np.stack([a.astype(np.float64) for a in arrays])) if op in BINARY \
                else np.abs(arrays[0].astype(np.float64))
            x = np.where(np.isfinite(x), x, 0.0)
            if op in BINARY:
                scale = x.max(axis=0)
            elif op == "cumulative_logsumexp":
                scale = np.maximum.accumulate(x, axis=-1)  # y_j sums the entries up to j
            else:
                scale = x.max(axis=-1)
            with np.errstate(invalid="ignore"):
                err = np.abs(y.astype(np.float64) - ref.value.astype(np.float64)) / ulp_of(scale, dtype)
            d = np.where(np.isfinite(err), np.minimum(d, err), d)
        finite_ref = ref.value_defined & np.isfinite(ref.value.astype(np.float64))
        best = np.where(finite_ref, np.minimum(best, d), best)
        defined |= finite_ref
    return best, defined


def measure(op: str, dtype: str, n: int) -> list[dict]:
    arrays = sample(op, dtype, n)
    refs = references(op, arrays, dtype)
    rows = []
    f = reference.fmt(dtype)
    for impl in ("safeops", "naive", "tf"):
        out = evaluate(op, impl, arrays, dtype)
        if out is None:
            continue
        y, grads = out
        err, defined = _value_error(op, arrays, dtype, y, refs)
        y64 = y.astype(np.float64)
        finite_both = defined & np.isfinite(y64)
        exact_infinity = np.zeros(y64.shape, dtype=bool)
        for ref in refs:
            exact_infinity |= np.isinf(ref.value.astype(np.float64)) & (ref.value.astype(np.float64) == y64)
        nonfinite_value = int(np.sum(defined & ~np.isfinite(y64) & ~exact_infinity))
        finite_input = np.ones(grads[0].shape, dtype=bool)
        for a in arrays:
            a64 = a.astype(np.float64)
            finite_input &= np.isfinite(a64) | ((a64 == -np.inf) & (op in MASKING))
        nonfinite_grad = int(sum(np.sum(finite_input & ~np.isfinite(g)) for g in grads))
        worst_grad = 0.0
        for k, g in enumerate(grads):
            # Per entry the smallest error over the references; a reference that
            # does not apply there (exact gradient tiny or not representable) counts 0.
            rel = np.full(g.shape, np.inf)
            for ref in refs:
                exact, scale = ref.grads[k], ref.scales[k]
                with np.errstate(invalid="ignore"):
                    applies = (ref.defined & (np.abs(exact) <= f.max_value)
                               & (np.maximum(np.abs(exact), scale) >= f.tiny * 2.0 ** 8) & np.isfinite(g))
                    # Flush-to-zero: a subnormal exact gradient may come out as 0.
                    flushed = np.abs(g - exact) <= f.tiny
                if op in ROUNDED_EXPONENT:
                    off = beyond_exponent_slack(g, exact, scale, exponent_slack(arrays[0]))
                else:
                    off = relative_error(g, exact, scale)
                rel = np.minimum(rel, np.where(applies & ~flushed, off, 0.0))
            if rel.size:
                worst_grad = max(worst_grad, float(np.max(rel)))
        rows.append({
            "op": op, "dtype": dtype, "impl": impl, "points": int(np.size(y)),
            "max_ulp": float(np.max(err[finite_both])) if finite_both.any() else 0.0,
            "max_grad_rel": worst_grad,
            "nonfinite_values": nonfinite_value,
            "nonfinite_grads": nonfinite_grad,
        })
    return rows


def run(n: int, ops=None, dtypes=DTYPES) -> list[dict]:
    results = []
    for op in ops or (UNARY + BINARY + ROWS):
        for dtype in dtypes:
            results.extend(measure(op, dtype, n))
    return results


def _fmt_ulp(x):
    return "inf" if not math.isfinite(x) else (f"{x:.0f}" if x >= 10 else f"{x:.1f}")


def markdown(results: list[dict]) -> str:
    """One row per (op, dtype): max ULP, gradient error and non-finite counts per implementation."""
    by_key: dict = {}
    for r in results:
        by_key.setdefault((r["op"], r["dtype"]), {})[r["impl"]] = r
    lines = [
        "| op | dtype | max ULP safeops | naive | tf | grad rel err safeops | naive | tf "
        "| non-finite value/grad safeops | naive | tf |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (op, dtype), impls in by_key.items():
        def cell(impl, key):
            r = impls.get(impl)
            if r is None:
                return "-"
            if key == "max_ulp":
                return _fmt_ulp(r[key])
            if key == "max_grad_rel":
                return "inf" if not math.isfinite(r[key]) else f"{r[key]:.1e}"
            return f"{r['nonfinite_values']}/{r['nonfinite_grads']}"
        lines.append("| " + " | ".join([op, dtype] + [cell(i, "max_ulp") for i in ("safeops", "naive", "tf")]
                                       + [cell(i, "max_grad_rel") for i in ("safeops", "naive", "tf")]
                                       + [cell(i, "nf") for i in ("safeops", "naive", "tf")]) + " |")
    bounds = ", ".join(f"{d} {VALUE_ULP[d]} ULP / {GRAD_RTOL[d]:.0e}" for d in DTYPES)
    lines.append("")
    lines.append(f"Contract C3 bounds (value / gradient): {bounds}. Non-finite: results `inf`/NaN where the "
                 "exact value is finite / gradients `inf`/NaN at finite inputs.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 points per op and dtype instead of 4000")
    parser.add_argument("--n", type=int, default=None, help="points per op and dtype (overrides --quick)")
    parser.add_argument("--ops", nargs="*", default=None, help="only these ops")
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    parser.add_argument("--json", default=None, help="write the raw results here (default: --out with .json)")
    args = parser.parse_args(argv)
    n = args.n or (256 if args.quick else 4000)
    start = time.perf_counter()
    results = run(n, args.ops)
    table = markdown(results)
    sys.stdout.write(table)
    sys.stdout.write(f"\n{len(results)} measurements, {n} points per op and dtype, "
                     f"{time.perf_counter() - start:.1f} s\n")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table)
    json_path = args.json or (os.path.splitext(args.out)[0] + ".json" if args.out else None)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"points": n, "tensorflow": tf.__version__, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""float32 ULP sweeps of the elementwise ops: millions of random points against float64 references.

Run as ``python -m benchmarks.sweep [--n N] [--ops OP ...] [--modes eager,function,jit] [--out FILE.md]``.

``python -m benchmarks.accuracy`` checks a few thousand chosen points per op
and dtype against mpmath; this script looks for the worst case by brute
force. For each float32 elementwise op of ``safeops.math`` it draws ``N``
seeded random points (default 2 million, spread over a few domains per op:
the whole range log-uniformly, the region where the formula changes branch,
the neighbourhood of the edges), evaluates the op in each mode, and compares
with a float64 reference computed by NumPy from a formula that is
accurate in float64 (relative error about ``1e-16``, nine orders of magnitude
below a float32 ULP, so the float32 rounding of the reference is the
correctly rounded result except in ties too rare to matter).

Reported per op and mode: the largest value error in ULP (C3's measure,
``tests.ulp.ftz_ulps``: distance to the rounded reference in representable
float32 values, subnormals counted as 0), where the reference is finite,
and the number of non-finite results there. For ``logaddexp`` an error near
a result of 0 is measured in ULP of the larger ``|x|`` (the problem is
ill-conditioned there), as in ``benchmarks.accuracy``.

The numbers quoted in the module docstrings of ``safeops.math`` for float32
sweeps come from this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import safeops.math as tfm  # noqa: E402
from tests.ulp import ftz_ulps, ulp_of  # noqa: E402

F32 = np.float32
LN2 = np.log(2.0)


def _log_uniform(rng, n, lo, hi, sign=1.0):
    return (sign * np.exp(rng.uniform(lo, hi, n))).astype(F32)


def _close_pair(rng, n):
    """``(a, a + d)`` with ``|d| < 20``: both terms of ``logaddexp`` matter."""
    a = rng.uniform(-30.0, 30.0, n)
    return a.astype(F32), (a + rng.uniform(-20.0, 20.0, n)).astype(F32)


def _log1mexp64(x):
    a = np.abs(x)
    with np.errstate(divide="ignore"):
        return np.where(a <= LN2, np.log(-np.expm1(-a)), np.log1p(-np.exp(-a)))


def _softplus_inverse64(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return x + np.log(-np.expm1(-x))


# name -> (arity, domains, reference). A domain maps (rng, n) to the op's
# float32 arguments; the reference maps float64 arguments to float64 values.
OPS = {
    "log": (1, [
        lambda r, n: (_log_uniform(r, n, -87.0, 88.0),),
        lambda r, n: (r.uniform(0.5, 2.0, n).astype(F32),),
    ], np.log),
    "log1p": (1, [
        lambda r, n: (r.uniform(-1.0, 1.0, n).astype(F32),),
        lambda r, n: (_log_uniform(r, n, -87.0, 88.0),),
        lambda r, n: (_log_uniform(r, n, -87.0, 0.0, -1.0),),
        lambda r, n: ((-1.0 + np.exp(r.uniform(-16.0, -0.7, n))).astype(F32),),
    ], np.log1p),
    "logit": (1, [
        lambda r, n: (r.uniform(0.0, 1.0, n).astype(F32),),
        lambda r, n: (_log_uniform(r, n, -87.0, 0.0),),
        lambda r, n: ((1.0 - np.exp(r.uniform(-16.6, -0.01, n))).astype(F32),),
    ], lambda p: np.log(p / (1.0 - p))),
    "log1mexp": (1, [
        lambda r, n: (_log_uniform(r, n, -20.0, 4.6),),
        lambda r, n: (r.uniform(0.0, 3.0, n).astype(F32),),
        lambda r, n: (r.uniform(-3.0, 0.0, n).astype(F32),),
    ], _log1mexp64),
    "xlogy": (2, [
        lambda r, n: (r.uniform(-3.0, 3.0, n).astype(F32), _log_uniform(r, n, -87.0, 88.0)),
        lambda r, n: (r.uniform(-3.0, 3.0, n).astype(F32), r.uniform(0.5, 2.0, n).astype(F32)),
    ], lambda x, y: x * np.log(y)),
    "xlog1py": (2, [
        lambda r, n: (r.uniform(-3.0, 3.0, n).astype(F32), r.uniform(-0.99, 2.0, n).astype(F32)),
        lambda r, n: (r.uniform(-3.0, 3.0, n).astype(F32), _log_uniform(r, n, -40.0, 88.0)),
        lambda r, n: (r.uniform(-3.0, 3.0, n).astype(F32), _log_uniform(r, n, -40.0, 0.0, -1.0)),
    ], lambda x, y: x * np.log1p(y)),
    "logaddexp": (2, [
        lambda r, n: (r.uniform(-100.0, 100.0, n).astype(F32), r.uniform(-100.0, 100.0, n).astype(F32)),
        lambda r, n: _close_pair(r, n),
    ], np.logaddexp),
    "sigmoid": (1, [
        lambda r, n: (r.uniform(-110.0, 110.0, n).astype(F32),),
        lambda r, n: (r.uniform(-20.0, 20.0, n).astype(F32),),
    ], lambda x: 1.0 / (1.0 + np.exp(-x))),
    "log_sigmoid": (1, [
        lambda r, n: (r.uniform(-110.0, 110.0, n).astype(F32),),
        lambda r, n: (r.uniform(-20.0, 20.0, n).astype(F32),),
    ], lambda x: -np.logaddexp(0.0, -x)),
    "softplus": (1, [
        lambda r, n: (r.uniform(-110.0, 110.0, n).astype(F32),),
        lambda r, n: (r.uniform(-20.0, 20.0, n).astype(F32),),
    ], lambda x: np.logaddexp(0.0, x)),
    "softplus_inverse": (1, [
        lambda r, n: (_log_uniform(r, n, -20.0, 4.6),),
        lambda r, n: (r.uniform(0.0, 3.0, n).astype(F32),),
    ], _softplus_inverse64),
    "sqrt": (1, [
        lambda r, n: (_log_uniform(r, n, -87.0, 88.0),),
    ], np.sqrt),
}

MODES = ("eager", "function", "jit")


def _runner(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "jit"))


def sweep(name: str, n: int, modes: tuple, seed: int = 0) -> dict:
    """Worst float32 ULP error and non-finite count of ``safeops.math.<name>`` per mode."""
    arity, domains, reference = OPS[name]
    rng = np.random.default_rng(seed)
    per = -(-n // len(domains))
    args = [d(rng, per) for d in domains]
    args = [np.concatenate([a[i] for a in args]) for i in range(arity)]
    with np.errstate(all="ignore"):
        exact = reference(*[a.astype(np.float64) for a in args])
    defined = np.isfinite(exact)
    fn = getattr(tfm, name)
    out = {"points": int(args[0].size)}
    for mode in modes:
        got = _runner(fn, mode)(*[tf.constant(a) for a in args]).numpy()
        ulps = ftz_ulps(got, exact, "float32")
        if name == "logaddexp":
            scale = np.maximum(np.abs(args[0]), np.abs(args[1])).astype(np.float64)
            with np.errstate(invalid="ignore"):
                ulps = np.minimum(ulps, np.abs(got.astype(np.float64) - exact) / ulp_of(scale, "float32"))
        ulps = np.where(defined, ulps, 0.0)
        worst = int(np.argmax(ulps))
        out[mode] = {
            "max_ulp": float(ulps[worst]),
            "at": [float(a[worst]) for a in args],
            "non_finite": int(np.sum(defined & ~np.isfinite(got))),
        }
    return out


def table(results: dict, modes: tuple) -> str:
    lines = ["| op | points | " + " | ".join(f"max ULP {m}" for m in modes) + " | worst at | non-finite |",
             "|---|---:|" + "---:|" * len(modes) + "---|---:|"]
    for name, r in results.items():
        worst_mode = max(modes, key=lambda m: r[m]["max_ulp"])
        at = ", ".join(f"{v:.9g}" for v in r[worst_mode]["at"])
        lines.append(f"| {name} | {r['points']} | " + " | ".join(f"{r[m]['max_ulp']:.1f}" for m in modes)
                     + f" | {at} ({worst_mode}) | {sum(r[m]['non_finite'] for m in modes)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2_000_000, help="points per op (default 2 million)")
    p.add_argument("--ops", nargs="*", default=list(OPS), choices=list(OPS), metavar="OP")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: eager, function, jit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the Markdown table here")
    args = p.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"--modes: expected some of {', '.join(MODES)}, got {', '.join(sorted(unknown))}")
    start = time.time()
    results = {name: sweep(name, args.n, modes, args.seed) for name in args.ops}
    text = (table(results, modes) + f"\n\nfloat32, {args.n} points per op, seed {args.seed}, "
            f"TensorFlow {tf.__version__}, {time.time() - start:.0f} s\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

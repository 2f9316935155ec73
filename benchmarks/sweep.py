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

``python -m benchmarks.sweep export DIR`` writes the same sweep as XLA
programs (the StableHLO of ``jit_compile`` functions: safeops' op,
TensorFlow's where it has one, and for ``logit`` and ``log1mexp`` the
formula safeops widens to float64, kept in float32), and ``python -m
benchmarks.sweep replay DIR`` runs them through jaxlib on whatever device it
sees (no TensorFlow needed) against the same float64 references: C3 on a
GPU, and whether a GPU's float32 kernels would make the widening
unnecessary there. safeops' gradients are exported too (``--gradients``
measures them here).

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
import json
import os
import sys
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tests.ulp import ftz_ulps, ulp_of  # noqa: E402

# TensorFlow and safeops are imported where they are used: ``replay`` runs
# where only jax, jaxlib and NumPy are installed.

F32 = np.float32
LN2 = np.log(2.0)


#: ``pow``'s usual exponents: square and cube roots, focal gammas, inverse powers.
_EXPONENTS = (0.5, -0.5, 1.0 / 3.0, 0.25, 1.5, 2.5, 2.0, -1.0, -2.0, 0.0, 3.0)


def _log_uniform(rng, n, lo, hi, sign=1.0):
    return (sign * np.exp(rng.uniform(lo, hi, n))).astype(F32)


def _close_pair(rng, n):
    """``(a, a + d)`` with ``|d| < 20``: both terms of ``logaddexp`` matter."""
    a = rng.uniform(-30.0, 30.0, n)
    return a.astype(F32), (a + rng.uniform(-20.0, 20.0, n)).astype(F32)


def _near_one(rng, n):
    """Numbers within ``[1e-7, 0.37]`` of 1 or -1: below 1.2e-7 float32 would round some to 1."""
    return (rng.choice([-1.0, 1.0], n) * (1.0 - np.exp(rng.uniform(-16.0, -1.0, n)))).astype(F32)


def _special():
    """SciPy's special functions (float64 erfinv and ndtri): the references of the quantile sweeps."""
    import scipy.special

    return scipy.special


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
    "rsqrt": (1, [
        lambda r, n: (_log_uniform(r, n, -87.0, 88.0),),
    ], lambda x: 1.0 / np.sqrt(x)),
    "acos": (1, [
        lambda r, n: (r.uniform(-1.0, 1.0, n).astype(F32),),
        lambda r, n: (_near_one(r, n),),
    ], np.arccos),
    "asin": (1, [
        lambda r, n: (r.uniform(-1.0, 1.0, n).astype(F32),),
        lambda r, n: (_near_one(r, n),),
        lambda r, n: (_log_uniform(r, n, -87.0, -1.0, r.choice([-1.0, 1.0], n)),),
    ], np.arcsin),
    "atanh": (1, [
        lambda r, n: (r.uniform(-1.0, 1.0, n).astype(F32),),
        lambda r, n: (_near_one(r, n),),
        lambda r, n: (_log_uniform(r, n, -87.0, -1.0, r.choice([-1.0, 1.0], n)),),
    ], np.arctanh),
    "acosh": (1, [
        lambda r, n: (r.uniform(1.0, 4.0, n).astype(F32),),
        lambda r, n: ((1.0 + np.exp(r.uniform(-16.0, -1.0, n))).astype(F32),),
        lambda r, n: (_log_uniform(r, n, 0.0, 88.0),),
    ], np.arccosh),
    "erfinv": (1, [
        lambda r, n: (r.uniform(-1.0, 1.0, n).astype(F32),),
        lambda r, n: (_near_one(r, n),),
        lambda r, n: (_log_uniform(r, n, -87.0, -1.0, r.choice([-1.0, 1.0], n)),),
    ], lambda x: _special().erfinv(x)),
    "ndtri": (1, [
        lambda r, n: (r.uniform(0.0, 1.0, n).astype(F32),),
        lambda r, n: (_log_uniform(r, n, -87.0, -0.7),),
        lambda r, n: ((1.0 - np.exp(r.uniform(-16.6, -0.7, n))).astype(F32),),
    ], lambda p: _special().ndtri(p)),
    "atan2": (2, [
        lambda r, n: (r.normal(0.0, 3.0, n).astype(F32), r.normal(0.0, 3.0, n).astype(F32)),
        lambda r, n: (_log_uniform(r, n, -87.0, 88.0, r.choice([-1.0, 1.0], n)),
                      _log_uniform(r, n, -87.0, 88.0, r.choice([-1.0, 1.0], n))),
    ], np.arctan2),
    "pow": (2, [
        lambda r, n: (_log_uniform(r, n, -20.0, 20.0), r.uniform(-4.0, 4.0, n).astype(F32)),
        lambda r, n: (r.uniform(0.0, 4.0, n).astype(F32), r.choice(_EXPONENTS, n).astype(F32)),
        lambda r, n: (r.uniform(-4.0, 4.0, n).astype(F32), r.integers(-6, 7, n).astype(F32)),
    ], np.power),
}

MODES = ("eager", "function", "jit")


def _sigmoid64(d):
    return np.exp(-np.logaddexp(0.0, -d))


# name -> float64 partial derivatives, one per argument (the gradient sweep).
DERIVATIVES = {
    "log": lambda x: (1.0 / x,),
    "log1p": lambda x: (1.0 / (1.0 + x),),
    "logit": lambda p: (1.0 / (p * (1.0 - p)),),
    "log1mexp": lambda x: (np.sign(x) / np.expm1(np.abs(x)),),
    "xlogy": lambda x, y: (np.log(y), x / y),
    "xlog1py": lambda x, y: (np.log1p(y), x / (1.0 + y)),
    "logaddexp": lambda a, b: (_sigmoid64(a - b), _sigmoid64(b - a)),
    "sigmoid": lambda x: (np.exp(-np.logaddexp(0.0, -x) - np.logaddexp(0.0, x)),),
    "log_sigmoid": lambda x: (_sigmoid64(-x),),
    "softplus": lambda x: (_sigmoid64(x),),
    "softplus_inverse": lambda x: (-1.0 / np.expm1(-x),),
    "sqrt": lambda x: (0.5 / np.sqrt(x),),
    "rsqrt": lambda x: (-0.5 / (x * np.sqrt(x)),),
    "acos": lambda x: (-1.0 / np.sqrt((1.0 - x) * (1.0 + x)),),
    "asin": lambda x: (1.0 / np.sqrt((1.0 - x) * (1.0 + x)),),
    "atanh": lambda x: (1.0 / ((1.0 - x) * (1.0 + x)),),
    "acosh": lambda x: (1.0 / np.sqrt((x - 1.0) * (x + 1.0)),),
    "erfinv": lambda x: (np.sqrt(np.pi) / 2.0 * np.exp(np.square(_special().erfinv(x))),),
    "ndtri": lambda p: (np.sqrt(2.0 * np.pi) * np.exp(0.5 * np.square(_special().ndtri(p))),),
    "atan2": lambda y, x: (x / (x * x + y * y), -y / (x * x + y * y)),
    "pow": lambda x, y: (y * np.power(x, y - 1.0), np.power(x, y) * np.log(np.where(x > 0, x, 1.0))),
}


def _runner(fn, mode):
    import tensorflow as tf

    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "jit"))


def draw(name: str, n: int, seed: int = 0) -> list:
    """The float32 arguments of the sweep of ``name``: ``n`` points over its domains."""
    arity, domains, _ = OPS[name]
    rng = np.random.default_rng(seed)
    per = -(-n // len(domains))
    args = [d(rng, per) for d in domains]
    return [np.concatenate([a[i] for a in args]) for i in range(arity)]


def exact_values(name: str, args: list) -> np.ndarray:
    """The float64 reference values at ``args``."""
    with np.errstate(all="ignore"):
        return OPS[name][2](*[a.astype(np.float64) for a in args])


def worst(name: str, args: list, got: np.ndarray, exact: np.ndarray) -> dict:
    """Largest ULP error (C3's measure) where the reference is finite, where, and the non-finite count."""
    defined = np.isfinite(exact)
    ulps = ftz_ulps(got, exact, "float32")
    if name == "logaddexp":
        scale = np.maximum(np.abs(args[0]), np.abs(args[1])).astype(np.float64)
        with np.errstate(invalid="ignore"):
            ulps = np.minimum(ulps, np.abs(got.astype(np.float64) - exact) / ulp_of(scale, "float32"))
    ulps = np.where(defined, ulps, 0.0)
    at = int(np.argmax(ulps))
    return {
        "max_ulp": float(ulps[at]),
        "at": [float(a[at]) for a in args],
        "non_finite": int(np.sum(defined & ~np.isfinite(got))),
    }


def sweep(name: str, n: int, modes: tuple, seed: int = 0) -> dict:
    """Worst float32 ULP error and non-finite count of ``safeops.math.<name>`` per mode."""
    import tensorflow as tf

    import safeops.math as tfm

    args = draw(name, n, seed)
    exact = exact_values(name, args)
    fn = getattr(tfm, name)
    out = {"points": int(args[0].size)}
    for mode in modes:
        got = _runner(fn, mode)(*[tf.constant(a) for a in args]).numpy()
        out[mode] = worst(name, args, got, exact)
    return out


def gradient_sweep(name: str, n: int, modes: tuple, seed: int = 0) -> dict:
    """Worst relative gradient error (C3: 1e-5 in float32) per argument and mode.

    The gradient of the op's elementwise output under an upstream gradient
    of ones (``tape.gradient`` of a non-scalar target), which is also what
    ``reduce_sum`` passes back. Judged where the exact partial derivative is
    a normal float32 number (a subnormal one may flush to 0, C3), with
    errors below ``tiny * 2**8`` in absolute terms.
    """
    import tensorflow as tf

    args = draw(name, n, seed)
    out = {"points": int(args[0].size)}
    for mode in modes:
        got = _runner(_gradients(name), mode)(*[tf.constant(a) for a in args])
        out[mode] = gradient_errors(name, args, [g.numpy() for g in got])
    return out


def _gradients(name: str):
    """``xs -> d(sum of safeops.math.<name>(xs))/dxs``: the partial derivatives, elementwise."""
    import tensorflow as tf

    import safeops.math as tfm

    fn = getattr(tfm, name)

    def gradients(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = fn(*xs)
        return tape.gradient(y, xs)

    return gradients


def gradient_errors(name: str, args: list, got: list) -> list:
    """Per argument: the worst relative error of ``got`` against :data:`DERIVATIVES`, where, and
    the non-finite count."""
    from tests.ulp import relative_error

    with np.errstate(all="ignore"):
        exact = DERIVATIVES[name](*[a.astype(np.float64) for a in args])
    info = np.finfo(np.float32)
    rows = []
    for g, e in zip(got, exact):
        g = np.asarray(g, dtype=np.float64)
        judged = np.isfinite(e) & (np.abs(e) >= info.tiny) & (np.abs(e) <= info.max)
        err = np.where(judged, relative_error(g, e, float(info.tiny) * 2.0 ** 8), 0.0)
        at = int(np.argmax(err))
        rows.append({"max_rel": float(err[at]), "at": [float(a[at]) for a in args],
                     "non_finite": int(np.sum(judged & ~np.isfinite(g)))})
    return rows


# ------------------------------------------------------------------ on another device

#: TensorFlow's own op, where it has one.
BUILTINS = {"log": "math.log", "log1p": "math.log1p", "xlogy": "math.xlogy", "xlog1py": "math.xlog1py",
            "sigmoid": "math.sigmoid", "log_sigmoid": "math.log_sigmoid", "softplus": "math.softplus",
            "sqrt": "math.sqrt", "rsqrt": "math.rsqrt", "acos": "math.acos", "asin": "math.asin",
            "atanh": "math.atanh", "acosh": "math.acosh", "erfinv": "math.erfinv", "ndtri": "math.ndtri",
            "atan2": "math.atan2", "pow": "math.pow"}


def _logit_float32(x):
    """safeops' ``logit`` formula with its ``log1p`` left in float32 (safeops widens it)."""
    import tensorflow as tf

    d = 2.0 * x - 1.0
    r = tf.math.log1p(tf.where(d < 0.0, -d, d) / tf.minimum(x, 1.0 - x))
    return tf.where(d < 0.0, -r, r)


def _log1mexp_float32(x):
    """Mächler's two branches (safeops' float64 formula) in float32 (safeops widens it)."""
    import tensorflow as tf

    a = tf.abs(x)
    return tf.where(a <= LN2, tf.math.log(-tf.math.expm1(-a)), tf.math.log1p(-tf.exp(-a)))


#: The formula safeops evaluates in float64 for float32 inputs, kept in float32.
FLOAT32_FORMULAS = {"logit": _logit_float32, "log1mexp": _log1mexp_float32}


def variants(name: str) -> dict:
    """variant -> function of the exported sweep programs of ``name``."""
    import tensorflow as tf

    import safeops.math as tfm

    out = {"safeops": getattr(tfm, name)}
    if name in BUILTINS:
        module, attr = BUILTINS[name].split(".")
        out["builtin"] = getattr(getattr(tf, module), attr)
    if name in FLOAT32_FORMULAS:
        out["float32"] = FLOAT32_FORMULAS[name]
    return out


def _positional(fn):
    """``fn`` of its tensor inputs alone: experimental_get_compiler_ir binds every parameter
    (``name`` too)."""

    def call(*xs):
        return fn(*xs)

    return call


def _checksum(args: list) -> int:
    return zlib.crc32(b"".join(np.ascontiguousarray(a).tobytes() for a in args))


def export(directory: str, n: int, ops: list, seed: int = 0) -> dict:
    """Writes each op's variants as StableHLO at the sweep's points, with this CPU's XLA result."""
    import tensorflow as tf

    from benchmarks import runner, xla_export

    os.makedirs(directory, exist_ok=True)
    programs = []
    for name in ops:
        args = draw(name, n, seed)
        exact = exact_values(name, args)
        tensors = [tf.constant(a) for a in args]
        programs_of_op = [(variant, "value", fn) for variant, fn in variants(name).items()]
        programs_of_op.append(("safeops", "gradient", _gradients(name)))
        for variant, kind, fn in programs_of_op:
            compiled = tf.function(_positional(fn), jit_compile=True)
            pid = f"sweep_{name}_{variant}" + ("_gradient" if kind == "gradient" else "")
            with open(os.path.join(directory, pid + ".mlir"), "w") as f:
                f.write(compiled.experimental_get_compiler_ir(*tensors)(stage="stablehlo"))
            outs = compiled(*tensors)
            here = (worst(name, args, outs.numpy(), exact) if kind == "value"
                    else gradient_errors(name, args, [g.numpy() for g in outs]))
            programs.append({"id": pid, "file": pid + ".mlir", "op": name, "variant": variant, "kind": kind,
                             "n": n, "seed": seed, "points": int(args[0].size), "checksum": _checksum(args),
                             "here": here})
    manifest = {"format": "sweep-1", "producer": f"TensorFlow {tf.__version__} (jit_compile StableHLO)",
                "cpu_model": runner.cpu_model(), "source": xla_export.source_version(), "programs": programs}
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def replay(directory: str, platform_name: str | None = None, out_dir: str | None = None) -> dict:
    """Runs the exported sweep through jaxlib and measures it against the float64 references."""
    import jax

    from benchmarks import replay as replay_lib

    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    client, device = replay_lib.backend_and_device(platform_name)
    device_name = f"{device.platform.upper()} {getattr(device, 'device_kind', '')}".strip()
    rows, failures = [], []
    for entry in manifest["programs"]:
        args = draw(entry["op"], entry["n"], entry["seed"])
        try:
            with open(os.path.join(directory, entry["file"])) as f:
                executable = replay_lib.compile_program(client, device, f.read())
            run = replay_lib.Runner(executable, [jax.device_put(a, device) for a in args])
            got = [np.asarray(o) for o in run.first]
        except Exception as error:  # noqa: BLE001 - recorded and reported
            first_line = str(error).splitlines()[0] if str(error) else ""
            failures.append(f"{entry['id']}: {type(error).__name__}: {first_line}")
            continue
        kind = entry.get("kind", "value")
        measured = (worst(entry["op"], args, got[0], exact_values(entry["op"], args)) if kind == "value"
                    else gradient_errors(entry["op"], args, got))
        rows.append({"op": entry["op"], "variant": entry["variant"], "kind": kind, "points": entry["points"],
                     "same_points": _checksum(args) == entry["checksum"], "device": measured,
                     "here": entry["here"]})
    data = {"label": f"float32 ULP sweep replayed through jaxlib on {device_name}",
            "meta": {"device": device_name, "jax": jax.__version__, "exported_on": manifest.get("cpu_model"),
                     "source": manifest.get("source"), "producer": manifest.get("producer")},
            "results": rows, "failures": failures}
    out_dir = out_dir or directory
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "sweep_replay.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out_dir, "sweep_replay.md"), "w") as f:
        f.write(replay_markdown(data))
    return data


def replay_markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [f"# {data['label']}", "",
             f"- Programs: {meta['producer']} on {meta['exported_on']}, safeops at commit {meta['source']}; "
             f"jax {meta['jax']}",
             "- ULP: C3's measure against float64 references (NumPy); `here`: the same program under XLA on "
             "the exporting CPU. `float32`: the formula safeops evaluates in float64, kept in float32.", "",
             f"| op | variant | points | max ULP ({meta['device']}) | worst at | non-finite | max ULP here "
             "| same points |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    values = [r for r in data["results"] if r.get("kind", "value") == "value"]
    gradients = [r for r in data["results"] if r.get("kind") == "gradient"]
    for r in values:
        d = r["device"]
        lines.append(f"| {r['op']} | {r['variant']} | {r['points']} | {d['max_ulp']:.1f} | "
                     + ", ".join(f"{v:.9g}" for v in d["at"]) + f" | {d['non_finite']} | "
                     f"{r['here']['max_ulp']:.1f} | {'yes' if r['same_points'] else 'no'} |")
    if gradients:
        lines += ["", "Gradients of safeops' ops (C3: relative error at most 1e-5 where the exact partial "
                      "derivative is a normal float32 number):", "",
                  f"| op | argument | points | max rel. error ({meta['device']}) | worst at | non-finite "
                  "| max rel. error here |",
                  "|---|---:|---:|---:|---|---:|---:|"]
        for r in gradients:
            for i, (d, h) in enumerate(zip(r["device"], r["here"])):
                lines.append(f"| {r['op']} | {i} | {r['points']} | {d['max_rel']:.1e} | "
                             + ", ".join(f"{v:.9g}" for v in d["at"]) + f" | {d['non_finite']} | "
                             f"{h['max_rel']:.1e} |")
    if data["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in data["failures"]]
    return "\n".join(lines) + "\n"


def table(results: dict, modes: tuple) -> str:
    lines = ["| op | points | " + " | ".join(f"max ULP {m}" for m in modes) + " | worst at | non-finite |",
             "|---|---:|" + "---:|" * len(modes) + "---|---:|"]
    for name, r in results.items():
        worst_mode = max(modes, key=lambda m: r[m]["max_ulp"])
        at = ", ".join(f"{v:.9g}" for v in r[worst_mode]["at"])
        lines.append(f"| {name} | {r['points']} | " + " | ".join(f"{r[m]['max_ulp']:.1f}" for m in modes)
                     + f" | {at} ({worst_mode}) | {sum(r[m]['non_finite'] for m in modes)} |")
    return "\n".join(lines)


def _device_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.sweep {argv[0]}")
    p.add_argument("directory")
    if argv[0] == "export":
        p.add_argument("--n", type=int, default=2_000_000, help="points per op (default 2 million)")
        p.add_argument("--ops", nargs="*", default=list(OPS), choices=list(OPS), metavar="OP")
        p.add_argument("--seed", type=int, default=0)
        args = p.parse_args(argv[1:])
        manifest = export(args.directory, args.n, args.ops, args.seed)
        print(f"wrote {len(manifest['programs'])} sweep programs to {args.directory}", file=sys.stderr)
        return 0
    p.add_argument("--platform", default=None, help="jaxlib platform (cpu, gpu, ...); default: jax's")
    p.add_argument("--out", default=None, help="where sweep_replay.json/.md go (default: DIR)")
    args = p.parse_args(argv[1:])
    data = replay(args.directory, args.platform, args.out)
    print(replay_markdown(data))
    return 1 if data["failures"] else 0


def gradient_table(results: dict, modes: tuple) -> str:
    lines = ["| op | argument | " + " | ".join(f"max rel. error {m}" for m in modes)
             + " | worst at | non-finite |",
             "|---|---:|" + "---:|" * len(modes) + "---|---:|"]
    for name, r in results.items():
        for i in range(len(r[modes[0]])):
            worst_mode = max(modes, key=lambda m: r[m][i]["max_rel"])
            at = ", ".join(f"{v:.9g}" for v in r[worst_mode][i]["at"])
            lines.append(f"| {name} | {i} | " + " | ".join(f"{r[m][i]['max_rel']:.1e}" for m in modes)
                         + f" | {at} ({worst_mode}) | {sum(r[m][i]['non_finite'] for m in modes)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("export", "replay"):
        return _device_main(argv)
    import tensorflow as tf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2_000_000, help="points per op (default 2 million)")
    p.add_argument("--ops", nargs="*", default=list(OPS), choices=list(OPS), metavar="OP")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: eager, function, jit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the Markdown table here")
    p.add_argument("--gradients", action="store_true", help="also sweep the gradients (C3: 1e-5 relative)")
    args = p.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"--modes: expected some of {', '.join(MODES)}, got {', '.join(sorted(unknown))}")
    start = time.time()
    results = {name: sweep(name, args.n, modes, args.seed) for name in args.ops}
    text = table(results, modes)
    if args.gradients:
        text += "\n\n" + gradient_table({name: gradient_sweep(name, args.n, modes, args.seed)
                                         for name in args.ops}, modes)
    text += (f"\n\nfloat32, {args.n} points per op, seed {args.seed}, "
             f"TensorFlow {tf.__version__}, {time.time() - start:.0f} s\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

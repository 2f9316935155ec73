"""``python -m benchmarks export DIR``: the XLA programs of every jit_compile case.

For each case, size, pass (forward, forward+backward, and the second order
where the benchmark measures one: :func:`second_order_wanted`) and variant
(plus the same-I/O trivial program of each forward+backward), writes the StableHLO that
TensorFlow produces for ``tf.function(body, jit_compile=True)``
(``experimental_get_compiler_ir(*args)(stage='stablehlo')``) to
``DIR/<id>.mlir`` and describes it in ``DIR/manifest.json``: the input specs
(shape, dtype, distribution, seed; :mod:`benchmarks._inputs` rebuilds them
without TensorFlow) and the output shapes and dtypes. Exporting again into
the same ``DIR`` first removes the files its old manifest lists, so no
program of an earlier export is left behind to be mistaken for this one's.
For programs whose
inputs are small (``data_limit`` bytes), the inputs and TensorFlow's outputs
are saved too (``<id>.npz``), so the replay can check it computes what
TensorFlow computed.

``python -m benchmarks replay DIR`` (:mod:`benchmarks.replay`) compiles and
times them through jaxlib on another machine (the GPU one has no TensorFlow).
The programs are traced as TensorFlow would trace them on a GPU host: without
safeops' CPU-only row sums as dots (:func:`safeops._xla.last_axis_sums`),
which a GPU could run in TensorFloat-32.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import tensorflow as tf

from benchmarks import _inputs
from benchmarks import cases as cases_lib
from benchmarks import runner
from safeops import _xla

EXPORT_PASSES = ("fwd", "fwdbwd", "2nd")
FORMAT = 1


def _program_id(index: int, case: str, variant: str, pass_: str, size: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{index:04d}_{case}_{variant}_{pass_}_{size}")


def source_version() -> str | None:
    """The commit the programs were traced from (``+changes`` if safeops/ or
    benchmarks/ differ from it), so replayed figures name the code they time."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "safeops", "benchmarks"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if dirty else "")


def second_order_wanted(case, shape) -> bool:
    """The runner's rule (:func:`benchmarks.runner.plan`): second order for
    the cases that declare it, elementwise ones up to 1e6 elements."""
    return case.second_order and (case.group == "crossentropy" or int(np.prod(shape)) <= 10**6)


def _remove_previous(out_dir: str) -> None:
    """Deletes what an earlier export into ``out_dir`` wrote (the files its
    manifest lists, then the manifest); anything else there is left alone."""
    path = os.path.join(out_dir, "manifest.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
        names = [p["file"] for p in old.get("programs", [])]
        names += [n for p in old.get("programs", []) for n in p.get("data", {}).values()]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise SystemExit(f"benchmarks export: {path} is there but is not a manifest this tool wrote "
                         f"({error}); export into an empty directory or remove it") from None
    for name in names:
        target = os.path.join(out_dir, os.path.basename(str(name)))
        if os.path.isfile(target):
            os.remove(target)
    os.remove(path)


def save_arrays(path: str, arrays: list) -> None:
    """npz of arrays; bfloat16 stored as its uint16 bits (npz cannot name it)."""
    np.savez(path, **{f"a{i}": (a.view(np.uint16) if a.dtype.name == "bfloat16" else a)
                      for i, a in enumerate(arrays)})


def export(out_dir: str, cases: list, *, dtype: str = "float32", quick: bool = False, smoke: bool = False,
           sizes: list | None = None, data_limit: int = 256 * 2**10, progress: bool = True) -> dict:
    """Writes the programs and the manifest; returns the manifest."""
    os.makedirs(out_dir, exist_ok=True)
    _remove_previous(out_dir)
    programs, failures = [], []
    if sizes:  # size by size in the order given (a replay cut short keeps the first), where each applies
        jobs = [(case, label, case.shape_for(label)) for label in sizes for case in cases]
        jobs = [job for job in jobs if job[2] is not None]
    else:
        jobs = [(case, label, shape) for case in cases
                for label, shape in case.shapes(quick=quick, smoke=smoke)]
    bar = runner._Progress(len(jobs), progress)
    dot_sums = _xla.set_dot_sums(False)
    try:
        return _export_jobs(out_dir, jobs, dtype, data_limit, bar, programs, failures)
    finally:
        _xla.set_dot_sums(dot_sums)


def _export_jobs(out_dir, jobs, dtype, data_limit, bar, programs, failures):
    with tf.device("/CPU:0"):
        for case, label, shape in jobs:
            tensors, specs = cases_lib.make_tensors(case, label, shape, dtype)
            seeds = [_inputs.seed_for(case.name, label, i) for i in range(len(specs))]
            for pass_ in EXPORT_PASSES:
                if pass_ == "2nd" and not second_order_wanted(case, shape):
                    continue
                bodies = {name: runner.build_body(fn, case.wrt, pass_) for name, fn in case.variants.items()
                          if (name, "xla", pass_) not in case.unsupported}
                if pass_ == "fwdbwd":
                    bodies["roofline"] = runner.roofline_body(case.wrt)
                for variant, body in bodies.items():
                    pid = _program_id(len(programs), case.name, variant, pass_, label)
                    keep_data = sum(_inputs.nbytes(s) for s in specs) <= data_limit
                    try:
                        fn = tf.function(body, jit_compile=True)
                        text = fn.experimental_get_compiler_ir(*tensors)(stage="stablehlo")
                        # Run it only where its outputs are saved; else the traced shapes do.
                        outs = runner._flat(fn(*tensors) if keep_data
                                            else fn.get_concrete_function(*tensors).structured_outputs)
                    except Exception as error:  # noqa: BLE001 - recorded and reported
                        failures.append(f"{case.name} {variant} {pass_} {label}: {type(error).__name__}: {error}"
                                        .splitlines()[0])
                        continue
                    with open(os.path.join(out_dir, pid + ".mlir"), "w") as f:
                        f.write(text)
                    entry = {
                        "id": pid, "file": pid + ".mlir", "case": case.name, "group": case.group,
                        "variant": variant, "pass": pass_, "size": label, "shape": list(shape),
                        "dtype": dtype,
                        "inputs": [dict(s, seed=seed) for s, seed in zip(specs, seeds)],
                        "outputs": [{"shape": [int(n) for n in o.shape], "dtype": o.dtype.name}
                                    for o in outs],
                        "bytes": sum(_inputs.nbytes(s) for s in specs)
                        + sum(int(np.prod(o.shape.as_list() if hasattr(o.shape, "as_list") else o.shape))
                              * o.dtype.size for o in outs),
                    }
                    if keep_data:
                        save_arrays(os.path.join(out_dir, pid + ".inputs.npz"), [t.numpy() for t in tensors])
                        save_arrays(os.path.join(out_dir, pid + ".expected.npz"), [o.numpy() for o in outs])
                        entry["data"] = {"inputs": pid + ".inputs.npz", "expected": pid + ".expected.npz"}
                    programs.append(entry)
            bar.update(f"{case.name} {label}")
    bar.close()
    manifest = {
        "format": FORMAT,
        "producer": f"TensorFlow {tf.__version__} tf.function(jit_compile=True).experimental_get_compiler_ir"
                    "(...)(stage='stablehlo')",
        "cpu_model": runner.cpu_model(),
        "source": source_version(),
        "dtype": dtype,
        "programs": programs,
        "failures": failures,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest

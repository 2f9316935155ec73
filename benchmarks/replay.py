"""``python -m benchmarks replay DIR``: time exported XLA programs through jaxlib.

Runs where TensorFlow is absent (the GPU machine has jax, jaxlib and numpy
only; Python 3.12): this module must not import TensorFlow. For each program
of ``DIR/manifest.json`` (written by :mod:`benchmarks.xla_export`):

1. compile the StableHLO text with the jaxlib backend's ``compile_and_load``
   for the first device jaxlib sees;
2. rebuild the inputs (the saved ones, or from their specs and seeds) and put
   them on the device;
3. if TensorFlow's outputs were saved, run once and compare;
4. time it: the program is wrapped in a device-side loop of a known trip
   count (:func:`looped_program`; ``--no-loop`` times it bare), sized so one
   execution lasts about a quarter of ``min_sample_s``: the host's cost of an
   execution (tens of microseconds through jaxlib) is then spread over many
   runs instead of hiding a GPU kernel's few. Each sample is enough
   back-to-back ``execute_sharded`` calls to last ``min_sample_s``, ended by
   waiting for the last outputs; the programs of one case, size and pass are
   interleaved sample by sample; median, min and max per run.

A copy program (``x * s``, read N and write N) written here in StableHLO gives
the device's copy bandwidth in the same run. Every figure is labelled "XLA
program replayed through jaxlib on <device>".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

from benchmarks import _inputs
from tests.ulp import finfo

COPY_ELEMENTS = 10**7
_COPY_PROGRAM = """module @copy_bandwidth {{
  func.func @main(%arg0: tensor<{n}xf32>, %arg1: tensor<f32>) -> tensor<{n}xf32> {{
    %0 = stablehlo.broadcast_in_dim %arg1, dims = [] : (tensor<f32>) -> tensor<{n}xf32>
    %1 = stablehlo.multiply %arg0, %0 : tensor<{n}xf32>
    return %1 : tensor<{n}xf32>
  }}
}}
"""


# ------------------------------------------------------------------ jaxlib glue

def _xla_client():
    try:
        from jaxlib import xla_client
    except ImportError:  # layouts of older/newer wheels
        from jax._src.lib import xla_client
    return xla_client


def backend_and_device(platform_name: str | None = None):
    """The jaxlib client and its first device (``platform_name``: cpu, gpu, ...)."""
    import jax

    try:
        from jax.extend import backend as jex_backend

        client = jex_backend.get_backend(platform_name)
    except (ImportError, AttributeError):
        client = jax.devices(platform_name)[0].client
    return client, client.local_devices()[0]


def compile_program(client, device, text: str):
    """``compile_and_load`` of StableHLO text for one device (jaxlib 0.4.3x .. 0.12)."""
    xc = _xla_client()
    options = xc.CompileOptions()
    attempts = []
    device_list = getattr(xc, "DeviceList", None)
    if device_list is not None:
        attempts += [lambda: client.compile_and_load(text, device_list((device,)), options),
                     lambda: client.compile_and_load(text.encode(), device_list((device,)), options)]
    attempts += [lambda: client.compile_and_load(text, [device], options),
                 lambda: client.compile(text, options)]
    errors = []
    for attempt in attempts:
        try:
            return attempt()
        except (TypeError, AttributeError) as error:  # signature mismatch: try the next form
            errors.append(str(error).splitlines()[0])
    if device_list is not None:  # jaxlib that takes only a parsed module (its ``computation: object``)
        try:
            return client.compile_and_load(_parse_module(text), device_list((device,)), options)
        except (TypeError, AttributeError, ImportError) as error:
            errors.append(str(error).splitlines()[0])
    raise RuntimeError("no compile entry point of this jaxlib accepted the program: " + " | ".join(errors))


def _parse_module(text: str):
    """The StableHLO text as an MLIR module in jax's own context (dialects registered)."""
    from jax._src.interpreters import mlir

    context = mlir.make_ir_context()
    with context:
        return mlir.ir.Module.parse(text)


class Runner:
    """Executes one compiled program on device buffers, whichever API this jaxlib has."""

    def __init__(self, executable, args: list):
        self.executable, self.args = executable, args
        self._call = None
        for form in (self._arrays, self._lists, self._plain):
            try:
                outs = form()
                self._call = form
                self.first = outs
                break
            except TypeError:
                continue
        if self._call is None:
            raise RuntimeError("execute_sharded accepted neither arrays nor per-device lists")

    def _arrays(self):
        results = self.executable.execute_sharded(self.args)
        return [shards[0] for shards in results.disassemble_into_single_device_arrays()]

    def _lists(self):
        results = self.executable.execute_sharded([[a] for a in self.args])
        return [shards[0] for shards in results.disassemble_into_single_device_arrays()]

    def _plain(self):
        return list(self.executable.execute(self.args))

    def __call__(self):
        return self._call()


def _block(outs) -> None:
    for o in outs:
        if hasattr(o, "block_until_ready"):
            o.block_until_ready()


def load_arrays(path: str, dtypes: list) -> list:
    with np.load(path) as data:
        arrays = [data[f"a{i}"] for i in range(len(data.files))]
    return [a.view(_inputs.np_dtype(d)) if d == "bfloat16" else a.astype(_inputs.np_dtype(d), copy=False)
            for a, d in zip(arrays, dtypes)]


# ------------------------------------------------------------------ looped programs

_MLIR_TYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
               "int32": "i32", "int64": "i64", "bool": "i1"}
_ZERO = {"f32": "0.000000e+00", "f64": "0.000000e+00", "f16": "0.000000e+00", "bf16": "0.000000e+00",
         "i32": "0", "i64": "0", "i1": "false"}


def _tensor_type(spec: dict) -> str:
    dims = "".join(f"{int(n)}x" for n in spec["shape"])
    return f"tensor<{dims}{_MLIR_TYPES[spec['dtype']]}>"


def looped_program(text: str, inputs: list, outputs: list, loops: int) -> str:
    """The program with a new ``main`` that runs the exported one ``loops`` times.

    One execution through jaxlib costs tens of microseconds of host work
    (more under a sandboxed driver): more than a 1e7-element kernel on a
    GPU takes. Back-to-back executions then time that overhead, not the
    program. Here the exported ``main`` becomes ``@__timed_body``, called by
    a ``stablehlo.while`` of a known trip count, so one execution runs it
    ``loops`` times on the device and the per-run time is the execution's
    over ``loops``.

    So that XLA cannot hoist the loop-invariant body out of the loop, every
    numeric input is perturbed by ``i / loops`` (the iteration count divided
    by the trip count, integer division: 0 in every iteration, but not a
    constant XLA can fold); the add fuses into the body's first reads. Each
    iteration's outputs are carried, the last ones returned.
    """
    if text.count("func.func @main(") != 1:
        raise ValueError("the program has no single `func.func @main(`")
    lines = text.replace("func.func @main(", "func.func private @__timed_body(", 1).rstrip().split("\n")
    end = max(i for i, line in enumerate(lines) if line.startswith("}"))  # the module's closing brace
    tin = [_tensor_type(s) for s in inputs]
    tout = [_tensor_type(s) for s in outputs]
    carried = ["tensor<i32>", *tin, *tout]
    args = ", ".join(f"%t_a{k}: {t}" for k, t in enumerate(tin))
    results = tout[0] if len(tout) == 1 else "(" + ", ".join(tout) + ")"
    main = [f"  func.func @main({args}) -> {results} {{",
            "    %t_c0 = stablehlo.constant dense<0> : tensor<i32>"]
    for k, (t, s) in enumerate(zip(tout, outputs)):
        e = _MLIR_TYPES[s["dtype"]]
        main += [f"    %t_z{k}s = stablehlo.constant dense<{_ZERO[e]}> : tensor<{e}>",
                 f"    %t_z{k} = stablehlo.broadcast_in_dim %t_z{k}s, dims = [] : (tensor<{e}>) -> {t}"]

    def block(prefix: str) -> list:
        names = [f"%{prefix}_i"] + [f"%{prefix}_x{k}" for k in range(len(tin))] + \
                [f"%{prefix}_o{k}" for k in range(len(tout))]
        return names, "^bb0(" + ", ".join(f"{n}: {t}" for n, t in zip(names, carried)) + "):"

    cond_names, cond_head = block("t_c")
    body_names, body_head = block("t_b")
    operands = ["%t_c0"] + [f"%t_a{k}" for k in range(len(tin))] + [f"%t_z{k}" for k in range(len(tout))]
    main += [f"    %t_w:{len(carried)} = \"stablehlo.while\"({', '.join(operands)}) ({{",
             f"    {cond_head}",
             f"      %t_c_n = stablehlo.constant dense<{int(loops)}> : tensor<i32>",
             f"      %t_c_lt = stablehlo.compare  LT, {cond_names[0]}, %t_c_n,  SIGNED : "
             "(tensor<i32>, tensor<i32>) -> tensor<i1>",
             "      stablehlo.return %t_c_lt : tensor<i1>",
             "    }, {",
             f"    {body_head}",
             "      %t_b_one = stablehlo.constant dense<1> : tensor<i32>",
             f"      %t_b_n = stablehlo.constant dense<{int(loops)}> : tensor<i32>",
             f"      %t_b_next = stablehlo.add {body_names[0]}, %t_b_one : tensor<i32>",
             f"      %t_b_q = stablehlo.divide {body_names[0]}, %t_b_n : tensor<i32>"]
    fed = []
    for k, (t, s) in enumerate(zip(tin, inputs)):
        e, x = _MLIR_TYPES[s["dtype"]], body_names[1 + k]
        if e == "i1":
            fed.append(x)
            continue
        q = "%t_b_q"
        if e != "i32":
            main.append(f"      %t_b_q{k} = stablehlo.convert %t_b_q : (tensor<i32>) -> tensor<{e}>")
            q = f"%t_b_q{k}"
        main += [f"      %t_b_p{k} = stablehlo.broadcast_in_dim {q}, dims = [] : (tensor<{e}>) -> {t}",
                 f"      %t_b_y{k} = stablehlo.add {x}, %t_b_p{k} : {t}"]
        fed.append(f"%t_b_y{k}")
    call_types = f"({', '.join(tin)}) -> {results}"
    if len(tout) == 1:
        main.append(f"      %t_b_r = func.call @__timed_body({', '.join(fed)}) : {call_types}")
        new_outs = ["%t_b_r"]
    else:
        main.append(f"      %t_b_r:{len(tout)} = func.call @__timed_body({', '.join(fed)}) : {call_types}")
        new_outs = [f"%t_b_r#{k}" for k in range(len(tout))]
    main += [f"      stablehlo.return %t_b_next, {', '.join(body_names[1:1 + len(tin)] + new_outs)} : "
             f"{', '.join(carried)}",
             f"    }}) : ({', '.join(carried)}) -> ({', '.join(carried)})",
             "    return " + ", ".join(f"%t_w#{1 + len(tin) + k}" for k in range(len(tout)))
             + f" : {', '.join(tout)}",
             "  }"]
    return "\n".join(lines[:end] + main + lines[end:]) + "\n"


def loops_for(entry: dict, copy_gbps: float | None, execution_s: float) -> int:
    """Iterations per execution: enough that one lasts about ``execution_s``,
    judged from the bytes the program moves at the measured copy bandwidth
    (an op slower than that only makes the execution longer)."""
    if not copy_gbps:
        return 1
    floor_s = max(entry["bytes"] / (copy_gbps * 1e9), 2e-6)
    return int(min(10000, max(1, execution_s // floor_s)))


# ------------------------------------------------------------------ timing

class _Timed:
    def __init__(self, entry: dict, run: Runner, loops: int = 1):
        self.entry, self.run, self.inner, self.times, self.loops = entry, run, 1, [], loops

    def calibrate(self, min_sample_s: float) -> None:
        _block(self.run())
        start = time.perf_counter()
        _block(self.run())
        once = max(time.perf_counter() - start, 1e-7)
        self.inner = int(min(100000, max(1, math.ceil(min_sample_s / once))))

    def sample(self) -> None:
        run = self.run
        start = time.perf_counter()
        for _ in range(self.inner):
            outs = run()
        _block(outs)
        self.times.append((time.perf_counter() - start) / (self.inner * self.loops))


class _Inputs:
    """The generated (not saved) inputs: drawn on worker threads ahead of use,
    each once, put on the device once per case and size, freed after it.

    At 1e8 elements one input takes seconds to draw; every variant and pass
    of a case and size shares the same arrays (same spec, same seed).
    """

    def __init__(self, programs: list, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self._host, self._device, self._owner = {}, {}, None
        for entry in programs:  # submitted in replay order: the first needed are drawn first
            if "data" not in entry:
                for s in entry["inputs"]:
                    key = self._key(s)
                    if key not in self._host:
                        self._host[key] = self._pool.submit(_inputs.make_array, s, s["seed"])

    @staticmethod
    def _key(s: dict) -> str:
        return json.dumps(s, sort_keys=True)

    def get(self, entry: dict, device) -> list:
        import jax

        owner = (entry["case"], entry["size"])
        if owner != self._owner:  # a new case or size: drop the last one's arrays
            for key in self._device:
                self._host.pop(key, None)
            self._device, self._owner = {}, owner
        out = []
        for s in entry["inputs"]:
            key = self._key(s)
            if key not in self._device:
                self._device[key] = jax.device_put(self._host[key].result(), device)
            out.append(self._device[key])
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _copy_elements(programs: list) -> int:
    """The copy program's size: the largest input of any program, at least
    :data:`COPY_ELEMENTS` (a GPU's L2 cache holds tens of MB: a copy that fits
    in it measures the cache, not the memory)."""
    largest = max((int(np.prod(s["shape"], dtype=np.int64)) for e in programs for s in e["inputs"]),
                  default=0)
    return max(COPY_ELEMENTS, largest)


def replay(directory: str, *, repeats: int = 7, min_sample_s: float = 0.05, platform_name: str | None = None,
           check_only: bool = False, out_dir: str | None = None, progress: bool = True,
           filter_pattern: str | None = None, workers: int | None = None, loop: bool = True) -> dict:
    """Compiles, checks and times every program of ``directory``; writes replay.json/.md.

    The files are rewritten after every case, size and pass, so a run cut
    short (a device lease ending) keeps what it measured.
    """
    import re

    try:
        import jax
    except ImportError as error:
        raise SystemExit(f"benchmarks replay: needs jax and jaxlib ({error}); pip install jax") from None
    manifest_path = os.path.join(directory, "manifest.json")
    if not os.path.exists(manifest_path):
        raise SystemExit(f"benchmarks replay: no {manifest_path} "
                         "(write one with python -m benchmarks export DIR)")
    with open(manifest_path) as f:
        manifest = json.load(f)
    try:
        programs = [e for e in manifest["programs"]
                    if not filter_pattern or re.search(filter_pattern, e["case"])]
    except re.error as error:
        raise SystemExit(f"benchmarks replay: --filter {filter_pattern!r} is not a regular expression "
                         f"({error})")
    if not programs:
        raise SystemExit(f"benchmarks replay: no program in {directory}"
                         + (f" matches --filter {filter_pattern!r}" if filter_pattern else ""))
    client, device = backend_and_device(platform_name)
    device_name = f"{device.platform.upper()} {getattr(device, 'device_kind', '')}".strip()
    label = f"XLA program replayed through jaxlib on {device_name}"

    groups = defaultdict(list)
    for entry in programs:
        groups[(entry["case"], entry["size"], entry["pass"])].append(entry)

    results, checks, failures = [], [], []
    copy_elements = _copy_elements(programs)
    copy_gbps = None if check_only else _copy_bandwidth(client, device, repeats, min_sample_s, copy_elements)
    # --check-only runs only the programs whose inputs were saved: draw none.
    inputs = _Inputs([] if check_only else programs, workers or min(4, os.cpu_count() or 1))
    out_dir = out_dir or directory
    os.makedirs(out_dir, exist_ok=True)
    data = {
        "label": label,
        "meta": {"device": device_name, "platform": device.platform, "jax": jax.__version__,
                 "jaxlib": _jaxlib_version(), "python": platform.python_version(), "host": platform.node(),
                 "producer": manifest.get("producer"), "exported_on": manifest.get("cpu_model"),
                 "source": manifest.get("source"),
                 "repeats": repeats, "min_sample_s": min_sample_s, "copy_elements": copy_elements,
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "programs": len(programs), "looped": loop,
                 "complete": False},
        "copy_bandwidth_gbps": copy_gbps,
        "results": results, "checks": checks, "failures": failures,
    }
    done = 0
    for (case, size, pass_), entries in groups.items():
        timed = []
        for entry in entries:
            try:
                with open(os.path.join(directory, entry["file"])) as f:
                    text = f.read()
                dtypes = [s["dtype"] for s in entry["inputs"]]
                if "data" in entry:
                    arrays = load_arrays(os.path.join(directory, entry["data"]["inputs"]), dtypes)
                    args = [jax.device_put(a, device) for a in arrays]
                    checks.append(_check(entry, Runner(compile_program(client, device, text), args).first,
                                         directory, arrays))
                elif not check_only:
                    args = inputs.get(entry, device)
                if check_only:  # only the programs whose inputs were saved, and no timing
                    continue
                loops = loops_for(entry, copy_gbps, min_sample_s / 4) if loop else 1
                start = time.perf_counter()
                executable = compile_program(
                    client, device, looped_program(text, entry["inputs"], entry["outputs"], loops)
                    if loops > 1 else text)
                run = Runner(executable, args)
                run.compile_s = time.perf_counter() - start
                if "data" in entry and loops > 1:  # the looped program computes what TensorFlow did
                    looped = _check(entry, run.first, directory, arrays)
                    checks.append(dict(looped, id=entry["id"] + ":looped"))
                timed.append(_Timed(entry, run, loops))
            except Exception as error:  # noqa: BLE001 - recorded and reported
                failures.append(f"{entry['id']}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        if not check_only and timed:
            for t in timed:
                t.calibrate(min_sample_s)
            for r in range(repeats):
                for t in timed[r % len(timed):] + timed[:r % len(timed)]:
                    t.sample()
            variants = {}
            for t in timed:
                median = statistics.median(t.times)
                gbps = t.entry["bytes"] / median / 1e9
                variants[t.entry["variant"]] = {
                    "median_s": median, "min_s": min(t.times), "max_s": max(t.times), "samples": len(t.times),
                    "calls_per_sample": t.inner, "bytes": t.entry["bytes"], "gbps": gbps,
                    "copy_fraction": gbps / copy_gbps if copy_gbps else None,
                    "compile_s": t.run.compile_s, "loops": t.loops,
                }
            results.append({"case": case, "size": size, "pass": pass_, "mode": "xla", "group": entries[0]["group"],
                            "shape": entries[0]["shape"], "dtype": entries[0]["dtype"], "variants": variants})
        done += 1
        _write(data, out_dir)
        if progress:
            sys.stderr.write(f"\rreplay {done}/{len(groups)} {case} {pass_} {size:<20}")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    inputs.close()
    data["meta"]["complete"] = True
    data["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write(data, out_dir)
    return data


def _write(data: dict, out_dir: str) -> None:
    with open(os.path.join(out_dir, "replay.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out_dir, "replay.md"), "w") as f:
        f.write(markdown(data))


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return getattr(jaxlib, "__version__", None) or jaxlib.version.__version__
    except Exception:  # noqa: BLE001
        return "unknown"


def _check(entry: dict, outs: list, directory: str, inputs: list | None = None) -> dict:
    """Whether ``outs`` equal TensorFlow's saved outputs (``allclose``).

    A reduction (an output smaller than the largest input) may add in
    another order on another device or inside the timing loop, and a sum
    that cancels then differs by more than its own relative tolerance: with
    ``inputs``, such outputs also pass within ``eps * n * max|input|`` (n
    the largest input's size, eps the output dtype's), the bound on a
    reordered sum of terms the size of the inputs.
    """
    expected = load_arrays(os.path.join(directory, entry["data"]["expected"]),
                           [o["dtype"] for o in entry["outputs"]])
    got = [np.asarray(o) for o in outs]
    worst, equal = 0.0, len(got) == len(expected)
    floats = [np.asarray(a, dtype=np.float64) for a in inputs or []
              if np.issubdtype(np.asarray(a).dtype, np.floating) or np.asarray(a).dtype.name == "bfloat16"]
    largest = max((a.size for a in floats), default=0)
    magnitude = max((float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0)) for a in floats), default=0.0)
    for g, e in zip(got, expected):
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        if g.shape != e.shape:
            equal = False
            continue
        rtol = 1e-5 if e.dtype.itemsize >= 4 else 1e-2
        atol = rtol * 1e-1
        if e.size < largest:
            atol = max(atol, float(finfo(e.dtype).eps) * largest * magnitude)
        equal &= bool(np.allclose(g64, e64, rtol=rtol, atol=atol, equal_nan=True))
        with np.errstate(invalid="ignore"):
            diff = np.abs(g64 - e64)
        diff = diff[np.isfinite(diff)]
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
    return {"id": entry["id"], "allclose": equal, "max_abs_diff": worst}


def _copy_bandwidth(client, device, repeats: int, min_sample_s: float,
                    n: int = COPY_ELEMENTS) -> float | None:
    """GB/s (bytes read plus written) of ``x * s`` over ``n`` float32."""
    import jax

    try:
        executable = compile_program(client, device, _COPY_PROGRAM.format(n=n))
        args = [jax.device_put(np.ones(n, np.float32), device), jax.device_put(np.float32(1.5), device)]
        t = _Timed({}, Runner(executable, args))
        t.calibrate(min_sample_s)
        for _ in range(repeats):
            t.sample()
        return 2 * n * 4 / statistics.median(t.times) / 1e9
    except Exception as error:  # noqa: BLE001 - the report says it is missing
        sys.stderr.write(f"copy bandwidth not measured: {type(error).__name__}: {error}\n")
        return None


def _ratio(variants: dict, a: str, b: str):
    if a in variants and b in variants and variants[b]["median_s"] > 0:
        return variants[a]["median_s"] / variants[b]["median_s"]
    return None


def _fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def _ms(v):
    return "-" if v is None else (f"{v * 1e6:.1f} us" if v < 1e-3 else f"{v * 1e3:.2f} ms")


COPY_TARGET = 0.6


def targets(data: dict) -> list:
    """The benchmark issue's XLA targets, as far as a replay can judge them.

    Per element-wise size: safeops forward+backward no slower than the
    built-in (within :data:`report.NOISE`), and at least 60% of the copy
    bandwidth measured in the same run; over all forward+backward programs,
    the geometric means against the built-in and the naive composite.
    """
    from benchmarks.report import NOISE, _shown, geomean

    fwdbwd = [e for e in data["results"] if e["pass"] == "fwdbwd"]
    out = []

    def add(name, value, ok, detail):
        verdict = "not measured" if ok is None else ("PASS" if ok else "FAIL")
        out.append({"target": name, "value": value, "verdict": verdict, "detail": detail})

    for size in dict.fromkeys(e["size"] for e in fwdbwd if e["group"] == "elementwise"):
        rows = [e for e in fwdbwd if e["group"] == "elementwise" and e["size"] == size]
        ratios = {e["case"]: _ratio(e["variants"], "safeops", "builtin") for e in rows}
        ratios = {c: r for c, r in ratios.items() if r is not None}
        worst = max(ratios.values(), default=None)
        over = sorted((c, r) for c, r in ratios.items() if r > 1 + NOISE)
        add(f"fwd+bwd element-wise at {size}: no op slower than builtin (<= 1 + {NOISE:.2f})",
            _shown(worst, 1 + NOISE),
            None if worst is None else worst <= 1 + NOISE,
            "over: " + ", ".join(f"{c} {r:.2f}" for c, r in over) if over else "none over")
        shares = {e["case"]: e["variants"]["safeops"].get("copy_fraction") for e in rows
                  if "safeops" in e["variants"]}
        shares = {c: f for c, f in shares.items() if f is not None}
        low = min(shares.values(), default=None)
        under = sorted((c, f) for c, f in shares.items() if f < COPY_TARGET)
        add(f"fwd+bwd element-wise at {size}: safeops >= {COPY_TARGET:.0%} of the measured copy bandwidth",
            _shown(low, COPY_TARGET, percent=True), None if low is None else low >= COPY_TARGET,
            "under: " + ", ".join(f"{c} {f:.0%}" for c, f in under) if under else "none under")
    for other, limit in (("builtin", 1.05), ("naive", 1.0)):
        ratios = [_ratio(e["variants"], "safeops", other) for e in fwdbwd]
        g = geomean(r for r in ratios if r is not None)
        add(f"fwd+bwd, every size: geomean safeops/{other} <= {limit:.2f}", _shown(g, limit),
            None if g is None else g <= limit, f"{sum(r is not None for r in ratios)} programs")
    return out


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [
        f"# {data['label']}",
        "",
        f"- jax {meta['jax']}, jaxlib {meta['jaxlib']}, Python {meta['python']}; "
        f"programs from {meta['producer']}"
        + (f" on {meta['exported_on']}" if meta.get("exported_on") else "")
        + (f", safeops at commit {meta['source']}" if meta.get("source") else ""),
        f"- Copy bandwidth (x * s, {meta.get('copy_elements', COPY_ELEMENTS):.0e} float32, "
        "bytes read + written): "
        f"{_fmt(data['copy_bandwidth_gbps'], '{:.1f}')} GB/s; "
        f"{meta['repeats']} interleaved samples per program, each of back-to-back executions lasting "
        f">= {meta['min_sample_s']} s; "
        + ("each execution a device-side loop of the program (see `looped_program`); times are per run"
           if meta.get("looped") else "times are per execution"),
    ]
    if not meta.get("complete", True):
        lines.append(f"- Incomplete: the run stopped after {len(data['results'])} of the program groups")
    if data["results"]:
        lines += ["", "## Targets", "", "| target | value | verdict | detail |", "|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} | {t['verdict']} | {t['detail']} |" for t in targets(data)]
    lines += [
        "",
        "## Every program",
        "",
        "| op | pass | size | safeops | naive | builtin | trivial (roofline) | safeops/builtin | safeops/naive "
        "| safeops/trivial | safeops GB/s | of copy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in data["results"]:
        v = e["variants"]
        s = v.get("safeops", {})
        lines.append("| " + " | ".join([
            e["case"], e["pass"], e["size"],
            *(_ms(v.get(n, {}).get("median_s")) for n in ("safeops", "naive", "builtin", "roofline")),
            _fmt(_ratio(v, "safeops", "builtin")), _fmt(_ratio(v, "safeops", "naive")),
            _fmt(_ratio(v, "safeops", "roofline")), _fmt(s.get("gbps"), "{:.1f}"),
            _fmt(s.get("copy_fraction"), "{:.0%}")]) + " |")
    if data["checks"]:
        bad = [c for c in data["checks"] if not c["allclose"]]
        looped = sum(c["id"].endswith(":looped") for c in data["checks"])
        lines += ["", "Outputs checked against TensorFlow's: "
                      f"{len(data['checks']) - looped} programs as exported "
                      f"and {looped} inside the timing loop; {len(data['checks']) - len(bad)} of "
                      f"{len(data['checks'])} equal (allclose)" + (f"; differ: {bad}" if bad else "")]
    if data["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in data["failures"]]
    return "\n".join(lines) + "\n"


def ratio_plot(data: dict, path: str, pass_: str = "fwdbwd") -> str:
    """PNG of safeops / builtin and safeops / naive per op, at each op's largest size, for one pass."""
    from benchmarks.report import ratio_bars

    largest = {}
    for e in data["results"]:
        elements = int(np.prod(e["shape"]))
        if e["pass"] == pass_ and (e["case"] not in largest or elements > largest[e["case"]][0]):
            largest[e["case"]] = (elements, e)
    rows = [(f"{case} ({e['size']})", {b: _ratio(e["variants"], "safeops", b) for b in ("builtin", "naive")})
            for case, (_, e) in largest.items()]
    title = "forward+backward" if pass_ == "fwdbwd" else "forward"
    return ratio_bars(rows, f"{title}, XLA program replayed through jaxlib on {data['meta']['device']}", path)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks replay", description=__doc__.split("\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-sample", type=float, default=0.05, help="seconds per sample (default 0.05)")
    parser.add_argument("--platform", default=None, help="jaxlib platform (cpu, gpu, cuda, ...); default: jax's")
    parser.add_argument("--check-only", action="store_true", help="compile, run and compare; no timing")
    parser.add_argument("--out", default=None, help="where replay.json/.md go (default: DIR)")
    parser.add_argument("--filter", default=None, metavar="REGEX", help="only the cases matching it")
    parser.add_argument("--workers", type=int, default=None, help="threads drawing the inputs (default: 4)")
    parser.add_argument("--no-loop", action="store_true",
                        help="time one run per execution "
                             "(default: a device-side loop of many, see looped_program)")
    args = parser.parse_args(argv)
    data = replay(args.directory, repeats=max(args.repeats, 1), min_sample_s=args.min_sample,
                  platform_name=args.platform, check_only=args.check_only, out_dir=args.out,
                  filter_pattern=args.filter, workers=args.workers, loop=not args.no_loop)
    print(markdown(data))
    bad = [c for c in data["checks"] if not c["allclose"]]
    return 1 if data["failures"] or bad else 0


if __name__ == "__main__":
    sys.exit(main())

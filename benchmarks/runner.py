"""Timing: modes, passes, interleaved repeats, bandwidth, memory, page faults.

Method (the issue's, and why):

* Each case is measured at each size in each mode (``eager``, ``graph`` =
  ``tf.function``, ``xla`` = ``tf.function(jit_compile=True)``) and pass
  (``fwd``; ``fwdbwd`` = value and gradient taken inside the function, as a
  training step does; ``2nd`` = a second derivative, for a few ops).
* Warm-up (trace/compile plus one call), then a calibration call decides how
  many back-to-back calls make one sample (at least ``min_sample_s``), then
  ``repeats`` samples. The variants of a case are interleaved sample by
  sample, in a rotating order, so a slow phase of a noisy machine hits all of
  them alike and their *ratio* holds; absolute times are only compared within
  one run. A ratio of two variants is the median of their per-round ratios
  (sample i of one over sample i of the other, taken back to back): a slow
  phase lasting a few rounds shifts both samples of a pair, so the paired
  ratio moves less than the ratio of the two medians.
* A sample ends by fetching one element of the last output: on a GPU this
  waits for the queue, on the CPU it is a constant ~20 us per sample (not per
  call). No ``.numpy()`` of a whole output: that would add a full copy the
  user's step does not make.
* Reported per variant: median, min and max seconds per call; GB/s (bytes of
  all inputs and outputs over the median time) and that as a fraction of the
  copy bandwidth (``x * s``, read N and write N, measured at 1e7 elements in
  the same run and the same mode); minor page faults per call (first touch of
  freshly mapped buffers; ``resource.getrusage``); the peak memory of one
  forward+backward call above what was live before it.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import sys
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from benchmarks import cases as cases_lib

MODES = ("eager", "graph", "xla")
PASSES = ("fwd", "fwdbwd", "2nd")

# glibc keeps freed blocks below these for reuse instead of returning them to
# the kernel, so the same buffers are not faulted in again on every call.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}
_MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "MALLOC_TOP_PAD_",
                "LD_PRELOAD")


# ------------------------------------------------------------------ functions

def build_body(fn: Callable, wrt: tuple, pass_: str) -> Callable:
    """The Python function one call of a pass runs: what the user's step does."""
    if pass_ == "fwd":
        def forward(*xs):
            return fn(*xs)
        return forward
    if pass_ == "fwdbwd":
        def forward_backward(*xs):
            watched = [xs[i] for i in wrt]
            with tf.GradientTape() as tape:
                tape.watch(watched)
                loss = tf.reduce_sum(fn(*xs))
            return (loss, *tape.gradient(loss, watched))
        return forward_backward
    if pass_ == "2nd":
        def second_order(*xs):
            x = xs[wrt[0]]
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    loss = tf.reduce_sum(fn(*xs))
                g = tf.reduce_sum(inner.gradient(loss, x))
            return outer.gradient(g, x)
        return second_order
    raise ValueError(f"unknown pass {pass_!r}")


def roofline_body(wrt: tuple) -> Callable:
    """The trivial program with a forward+backward's inputs and outputs.

    Reads every input once, writes one tensor per gradient (``x * 1.5``) and
    a scalar: no op can move less memory, so under XLA it is this machine's
    memory roofline for the case.
    """
    def same_io(*xs):
        grads = [xs[i] * 1.5 for i in wrt]
        return (tf.reduce_sum(grads[0]), *grads)
    return same_io


def compile_body(body: Callable, mode: str) -> Callable:
    if mode == "eager":
        return body
    if mode == "graph":
        return tf.function(body)
    if mode == "xla":
        return tf.function(body, jit_compile=True)
    raise ValueError(f"unknown mode {mode!r}")


def _flat(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def sync(out) -> None:
    """Waits for ``out`` cheaply: fetch one element of the last output."""
    last = _flat(out)[-1]
    tf.reshape(last, [-1])[:1].numpy()


# ------------------------------------------------------------------ timing

class Timed:
    """One variant's compiled function, its samples and its figures."""

    def __init__(self, name: str, fn: Callable, args: tuple):
        self.name = name
        self.fn = fn
        self.args = args
        self.inner = 1
        self.times: list = []
        self.faults: list = []
        self.out_bytes = 0
        self.error: str | None = None

    def warm_up(self, min_sample_s: float, calibrate: bool) -> None:
        out = self.fn(*self.args)          # trace / compile
        sync(out)
        self.out_bytes = sum(int(np.prod(t.shape)) * t.dtype.size for t in _flat(out))
        del out
        if not calibrate:
            return
        start = time.perf_counter()
        out = self.fn(*self.args)
        sync(out)
        once = max(time.perf_counter() - start, 1e-7)
        self.inner = int(min(10000, max(1, np.ceil(min_sample_s / once))))

    def sample(self) -> None:
        fn, args = self.fn, self.args
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(self.inner):
            out = fn(*args)
        sync(out)
        elapsed = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        del out
        self.times.append(elapsed / self.inner)
        self.faults.append(faults / self.inner)


def describe_error(error: BaseException) -> str:
    """One line: the exception type and the cause's line of its message.

    Under ``tf.function`` the message is a traceback of the user's code
    whose cause is the last ``SomeError: ...`` line; a hint can follow it
    (TensorFlow's numpy-behaviour advice), so that line is taken, else the
    last one.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"[A-Za-z_.]*(Error|Exception): ", line)]
    return f"{type(error).__name__}: {causes[-1] if causes else lines[-1] if lines else ''}"


def run_interleaved(timed: list, repeats: int, min_sample_s: float, calibrate: bool = True) -> None:
    """Warm up each variant, then take ``repeats`` samples of all, interleaved."""
    live = []
    for t in timed:
        try:
            t.warm_up(min_sample_s, calibrate)
            live.append(t)
        except Exception as error:  # noqa: BLE001 - recorded, reported, fails --smoke
            t.error = describe_error(error)
    for r in range(repeats):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for t in order:
            t.sample()


def summary(t: Timed, in_bytes: int) -> dict:
    if t.error:
        return {"error": t.error}
    median = statistics.median(t.times)
    moved = in_bytes + t.out_bytes
    return {
        "median_s": median, "min_s": min(t.times), "max_s": max(t.times),
        "samples": len(t.times), "calls_per_sample": t.inner,
        "bytes": moved, "gbps": moved / median / 1e9,
        "faults_per_call": statistics.median(t.faults),
        # Per-call seconds of each sample, in round order: sample i of every
        # variant of a case was taken in the same round (paired ratios).
        "samples_s": list(t.times),
    }


# ------------------------------------------------------------------ memory

class PeakMemory:
    """Peak bytes of one call above what was live before it.

    TF's allocator statistics (``tf.config.experimental.get_memory_info``)
    where the device has them (GPU; CPU in TF >= 2.16 or so); else the
    process's resident high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs``); else ``ru_maxrss`` growth (only ever rises, so
    a lower bound of later calls). ``method`` says which.
    """

    def __init__(self, device: str):
        self.device = device
        try:
            tf.config.experimental.reset_memory_stats(device)
            tf.config.experimental.get_memory_info(device)
            self.method = f"TF allocator stats (tf.config.experimental.get_memory_info('{device}'))"
        except Exception:  # noqa: BLE001
            if _reset_hwm():
                self.method = "process RSS high-water mark (VmHWM after /proc/self/clear_refs reset)"
            else:
                self.method = "ru_maxrss growth (monotonic: a lower bound)"

    def measure(self, fn: Callable, args: tuple) -> int | None:
        if self.method.startswith("TF"):
            tf.config.experimental.reset_memory_stats(self.device)
            before = tf.config.experimental.get_memory_info(self.device)["current"]
            out = fn(*args)
            sync(out)
            peak = tf.config.experimental.get_memory_info(self.device)["peak"]
            del out
            return int(peak - before)
        if self.method.startswith("process"):
            _reset_hwm()
            before = _status_kb("VmRSS")
            out = fn(*args)
            sync(out)
            peak = _status_kb("VmHWM")
            del out
            return int((peak - before) * 1024)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = fn(*args)
        sync(out)
        del out
        return int((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") > 0
    except OSError:
        return False


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ environment

def malloc_setting() -> dict:
    """The allocator environment this process runs under."""
    env = {k: os.environ[k] for k in _MALLOC_VARS if k in os.environ}
    fixed = all(os.environ.get(k) == v for k, v in FIXED_MALLOC.items())
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        libc = platform.libc_ver()[0] or "unknown"
    if fixed:
        label = "fixed: " + ", ".join(f"{k}={v}" for k, v in FIXED_MALLOC.items())
    elif env:
        label = "custom: " + ", ".join(f"{k}={v}" for k, v in env.items())
    else:
        label = "glibc default (dynamic mmap threshold: large freed buffers go back to the kernel)"
    return {"label": label, "fixed": fixed, "env": env, "libc": libc}


def reexec_with_fixed_malloc(argv: list) -> None:
    """Re-runs this command with the fixed allocator setting (no return)."""
    env = dict(os.environ, **FIXED_MALLOC)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *argv], env)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict:
    import keras

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "device": device,
        "malloc": malloc_setting(),
    }
    if device.startswith("/GPU"):
        try:
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            info["gpu"] = details.get("device_name", "GPU")
        except Exception:  # noqa: BLE001
            info["gpu"] = "GPU"
    return info


def resolve_device(name: str) -> str:
    """``cpu`` -> ``/CPU:0``; ``gpu`` -> ``/GPU:0``, or a clear error if TF sees none."""
    if name == "cpu":
        return "/CPU:0"
    if name == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise SystemExit(
                "benchmarks: --device gpu, but TensorFlow sees no GPU "
                f"(tf.config.list_physical_devices('GPU') is empty; TF {tf.__version__}). "
                "Install the GPU-capable `tensorflow` wheel, or export the XLA programs with "
                "`python -m benchmarks export DIR` and replay them with jaxlib: `python -m benchmarks replay DIR`.")
        return "/GPU:0"
    raise SystemExit(f"benchmarks: --device must be cpu or gpu, got {name!r}")


def copy_bandwidth(dtype: str, modes: tuple, repeats: int, min_sample_s: float, n: int = 10**7) -> dict:
    """GB/s of ``x * s`` (read n, write n) per mode, measured now, in this run."""
    x = tf.ones([n], dtype=dtype)
    s = tf.constant(1.5, dtype=dtype)
    moved = 2 * n * x.dtype.size
    result = {"elements": n, "bytes": moved}
    timed = [Timed(mode, compile_body(lambda x, s: x * s, mode), (x, s)) for mode in modes]
    run_interleaved(timed, repeats, min_sample_s)
    for t in timed:
        if not t.error:
            result[t.name] = moved / statistics.median(t.times) / 1e9
    return result


# ------------------------------------------------------------------ the run

class Item:
    """One measurement: a case at one size, in one mode and pass, all variants."""

    def __init__(self, case, label: str, shape: tuple, mode: str, pass_: str):
        self.case, self.label, self.shape, self.mode, self.pass_ = case, label, shape, mode, pass_

    def describe(self) -> str:
        return f"{self.case.name} {self.mode} {self.pass_} {self.label}"


def plan(cases: list, modes: tuple, passes: tuple, quick: bool = False, smoke: bool = False) -> list:
    """The measurements to make, grouped by case and size (inputs are shared).

    Full run: every size in every mode and pass (the second order up to 1e6
    elements). ``quick`` (what the targets need, in under 3 minutes): eager
    per-call overhead at 1e3 elements; ``tf.function`` forward, forward+backward
    and second order at 1e5 elements (cross-entropy at 1024x1000); XLA
    forward+backward at 1e7 elements (cross-entropy 1024x1000) with the
    same-I/O trivial program. ``smoke``: tiny sizes, each case and variant
    once in every mode and every pass (:data:`_SMOKE`).
    """
    items = []
    for case in cases:
        for label, shape in case.shapes(quick=quick, smoke=smoke):
            n = int(np.prod(shape))
            for mode in modes:
                for pass_ in passes:
                    if pass_ == "2nd" and (not case.second_order or mode == "eager"):
                        continue
                    if smoke:
                        if (mode, pass_) in _SMOKE:
                            items.append(Item(case, label, shape, mode, pass_))
                        continue
                    if quick and not _quick_wants(case.group, n, mode, pass_):
                        continue
                    if case.group != "crossentropy" and pass_ == "2nd" and n > 10**6:
                        continue
                    items.append(Item(case, label, shape, mode, pass_))
    return items


# Smoke: every case and variant in every mode and every pass at least once,
# with as few traces and XLA compilations as that takes.
_SMOKE = {("eager", "fwdbwd"), ("graph", "fwd"), ("graph", "fwdbwd"), ("graph", "2nd"), ("xla", "fwdbwd")}


def _quick_wants(group: str, n: int, mode: str, pass_: str) -> bool:
    if group == "crossentropy":
        return (mode == "graph") or (mode == "xla" and pass_ == "fwdbwd")
    if n == 10**3:
        return mode == "eager" and pass_ != "2nd"
    if n == 10**5:
        return mode == "graph"
    if n == 10**7:
        return mode == "xla" and pass_ == "fwdbwd"
    return False


class _Progress:
    """tqdm when installed, else a one-line text bar on stderr."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="case", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {text[:60]:<60}")
        sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


def benchmark(cases: list, *, device: str = "/CPU:0", dtype: str = "float32", modes: tuple = MODES,
              passes: tuple = PASSES, quick: bool = False, smoke: bool = False, repeats: int = 7,
              min_sample_s: float = 0.02, progress: bool = True) -> dict:
    """Runs the plan and returns every figure as a JSON-ready dict."""
    if smoke:
        repeats = 1
    started = time.time()
    items = plan(cases, modes, passes, quick=quick, smoke=smoke)
    results, failures = [], []
    with tf.device(device):
        memory = PeakMemory(device.strip("/"))
        copy_n = 10**4 if smoke else 10**7
        copy_modes = tuple(m for m in modes if m != "eager") or ("graph",)
        copy_start = copy_bandwidth(dtype, copy_modes, max(repeats, 1), min_sample_s, copy_n)
        bar = _Progress(len(items), progress)
        tensors_key, tensors = None, None
        for item in items:
            key = (item.case.name, item.label)
            if key != tensors_key:
                tensors, specs = cases_lib.make_tensors(item.case, item.label, item.shape, dtype)
                in_bytes = sum(int(np.prod(t.shape)) * t.dtype.size for t in tensors)
                tensors_key = key
            results.append(_measure(item, tensors, specs, in_bytes, memory, copy_start, dtype,
                                    repeats, min_sample_s, not smoke))
            for variant, figures in results[-1]["variants"].items():
                if "error" in figures:
                    failures.append(f"{item.describe()} [{variant}]: {figures['error']}")
            bar.update(item.describe())
        bar.close()
        copy_end = copy_bandwidth(dtype, copy_modes, max(repeats, 1), min_sample_s, copy_n)
    return {
        "meta": {
            **machine_info(device), "dtype": dtype, "modes": list(modes), "passes": list(passes),
            "quick": quick, "smoke": smoke, "repeats": repeats, "min_sample_s": min_sample_s,
            "memory_method": memory.method, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "duration_s": time.time() - started,
            "timing": ("median/min/max seconds per call over interleaved samples; a sample is "
                       "calls_per_sample back-to-back calls, then one element of the last output is fetched"),
        },
        "copy_bandwidth": {"start": copy_start, "end": copy_end},
        "results": results,
        "failures": failures,
    }


def _measure(item: Item, tensors: tuple, specs: list, in_bytes: int, memory: PeakMemory, copy: dict,
             dtype: str, repeats: int, min_sample_s: float, calibrate: bool) -> dict:
    case = item.case
    timed = []
    for name, fn in case.variants.items():
        if (name, item.mode, item.pass_) in case.unsupported:
            continue
        timed.append(Timed(name, compile_body(build_body(fn, case.wrt, item.pass_), item.mode), tensors))
    if item.mode == "xla" and item.pass_ == "fwdbwd":
        timed.append(Timed("roofline", compile_body(roofline_body(case.wrt), "xla"), tensors))
    run_interleaved(timed, repeats, min_sample_s, calibrate)
    bandwidth = copy.get(item.mode if item.mode != "eager" else "graph")
    variants = {}
    for t in timed:
        figures = summary(t, in_bytes)
        if "error" not in figures:
            if bandwidth:
                figures["copy_fraction"] = figures["gbps"] / bandwidth
            if item.pass_ == "fwdbwd" and item.mode != "eager":
                figures["peak_bytes"] = memory.measure(t.fn, t.args)
        variants[t.name] = figures
    return {
        "case": case.name, "group": case.group, "mode": item.mode, "pass": item.pass_,
        "size": item.label, "shape": list(item.shape), "elements": int(np.prod(item.shape)),
        "dtype": dtype, "inputs": specs, "variants": variants,
    }

"""``python -m benchmarks``: safeops against the naive composite and TF's built-in.

    python -m benchmarks [--quick | --smoke] [--filter REGEX] [--dtype D] [--device cpu|gpu]
                         [--modes eager,graph,xla] [--passes fwd,fwdbwd,2nd] [--repeats N]
                         [--fixed-malloc] [--compare OLD.json] [--out DIR]
    python -m benchmarks export DIR [--filter REGEX] [--dtype D] [--quick | --smoke] [--sizes 1e5,1e7]
    python -m benchmarks replay DIR [--repeats N] [--min-sample S] [--platform P] [--check-only]

Writes ``DIR/benchmark.json`` (every figure and the machine), ``benchmark.md``
(the table and the targets' verdicts) and PNG plots (default DIR:
``benchmarks/results``). ``replay`` needs only jax, jaxlib and numpy: it is
dispatched before TensorFlow is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="safeops speed benchmarks",
                                epilog="Subcommands: `export DIR` (StableHLO of the jit_compile cases) and "
                                       "`replay DIR` (time them through jaxlib, e.g. on a GPU without TF).")
    p.add_argument("--quick", action="store_true", help="a subset that runs in under 3 minutes")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 sample: every case runs, every file is written")
    p.add_argument("--filter", default=None, metavar="REGEX", help="only cases whose name matches (re.search)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64"))
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--modes", default="eager,graph,xla", help="comma list of eager, graph, xla")
    p.add_argument("--passes", default="fwd,fwdbwd,2nd", help="comma list of fwd, fwdbwd, 2nd")
    p.add_argument("--repeats", type=int, default=7, help="samples per variant (at least 7 for reported figures)")
    p.add_argument("--min-sample", type=float, default=None,
                   help="seconds per sample (default 0.02; 0.005 with --quick)")
    p.add_argument("--fixed-malloc", action="store_true",
                   help="re-run under MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set high (freed buffers reused)")
    p.add_argument("--compare", default=None, metavar="OLD.json", help="flag figures that moved more than 10%%")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output directory")
    p.add_argument("--no-progress", action="store_true")
    return p


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks export")
    p.add_argument("directory")
    p.add_argument("--filter", default=None, metavar="REGEX")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "float64"))
    p.add_argument("--quick", action="store_true", help="sizes 1e5 and 1e7 (cross-entropy 1024x1000) only")
    p.add_argument("--smoke", action="store_true", help="tiny sizes")
    p.add_argument("--sizes", default=None,
                   help="comma list of sizes, in that order (1e7,1e8 element-wise and row-wise; 8192x1000 "
                        "cross-entropy); any size, not only the default plan's")
    p.add_argument("--data-limit", type=int, default=256 * 2**10,
                   help="save inputs and TF's outputs for programs with at most this many input bytes")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list) -> int:
    if argv and argv[0] == "replay":
        from benchmarks import replay  # no TensorFlow on this path

        return replay.main(argv[1:])
    if argv and argv[0] == "export":
        return _export(argv[1:])
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks import runner

    if args.fixed_malloc and not runner.malloc_setting()["fixed"]:
        runner.reexec_with_fixed_malloc(argv)
    from benchmarks import cases, report

    device = runner.resolve_device(args.device)
    modes = tuple(dict.fromkeys(m for m in args.modes.split(",") if m))       # in order, once each
    passes = tuple(dict.fromkeys(p for p in args.passes.split(",") if p))
    for m in modes:
        if m not in runner.MODES:
            raise SystemExit(f"benchmarks: unknown mode {m!r} (eager, graph, xla)")
    for p in passes:
        if p not in runner.PASSES:
            raise SystemExit(f"benchmarks: unknown pass {p!r} (fwd, fwdbwd, 2nd)")
    selected = _selected(cases, args.filter)
    if not runner.plan(selected, modes, passes, quick=args.quick, smoke=args.smoke):
        raise SystemExit(f"benchmarks: nothing to measure: modes {','.join(modes) or '(none)'} and passes "
                         f"{','.join(passes) or '(none)'} select no measurement of these cases"
                         + (" in --smoke" if args.smoke else " in --quick" if args.quick else ""))
    # Paths are checked before the run, not after it: a typo must not cost the measurements.
    _check_out_dir(args.out)
    earlier = _load_compare(args.compare)
    min_sample = args.min_sample if args.min_sample is not None else (0.005 if args.quick else 0.02)
    print(f"benchmarks: {len(selected)} ops on {device}, {args.dtype}, modes {','.join(modes)}, "
          f"passes {','.join(passes)}; allocator: {runner.malloc_setting()['label']}", file=sys.stderr)
    data = runner.benchmark(selected, device=device, dtype=args.dtype, modes=modes, passes=passes,
                            quick=args.quick, smoke=args.smoke, repeats=max(args.repeats, 1),
                            min_sample_s=min_sample, progress=not args.no_progress)
    data["meta"]["filter"] = args.filter   # the targets are judged over these cases only
    paths = report.write_all(data, args.out, args.compare, earlier)
    print(report.markdown(data, data.get("compare", {}).get("lines")))
    print(f"wrote {paths['json']}, {paths['markdown']} and {len(paths['png'])} PNG plots", file=sys.stderr)
    if data["failures"]:
        print(f"benchmarks: {len(data['failures'])} variant(s) failed:", file=sys.stderr)
        for failure in data["failures"]:
            print("  " + failure, file=sys.stderr)
        return 1
    return 0


def _export(argv: list) -> int:
    args = _export_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks import cases, xla_export

    quick_sizes = ["1e5", "1e7", "1024x1000"] if args.quick else None
    sizes = [label for label in args.sizes.split(",") if label] if args.sizes else quick_sizes
    _check_out_dir(args.directory)
    manifest = xla_export.export(args.directory, _selected(cases, args.filter), dtype=args.dtype,
                                 smoke=args.smoke, sizes=sizes, data_limit=args.data_limit,
                                 progress=not args.no_progress)
    print(f"wrote {len(manifest['programs'])} programs and manifest.json to {args.directory}", file=sys.stderr)
    for failure in manifest["failures"]:
        print("  failed: " + failure, file=sys.stderr)
    if not manifest["programs"]:
        print(f"benchmarks export: no program: --sizes {args.sizes!r} names no size of the selected cases"
              if args.sizes else "benchmarks export: no program", file=sys.stderr)
        return 1
    return 1 if manifest["failures"] else 0


def _selected(cases, pattern):
    """The cases matching ``--filter``; a clean exit for a bad regular expression or no match."""
    try:
        selected = cases.select(pattern)
    except re.error as error:
        raise SystemExit(f"benchmarks: --filter {pattern!r} is not a regular expression ({error})")
    if not selected:
        raise SystemExit(f"benchmarks: no case matches --filter {pattern!r}")
    return selected


def _check_out_dir(path: str) -> None:
    """Creates the output directory now, or exits naming it (an existing file, no permission)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"benchmarks: cannot write to {path!r}: {error.strerror or error}")


def _load_compare(path: str | None):
    """The earlier run of ``--compare``, read before this run starts (None without the option)."""
    if not path:
        return None
    try:
        with open(path) as f:
            earlier = json.load(f)
    except (OSError, ValueError) as error:
        raise SystemExit(f"benchmarks: --compare {path!r} cannot be read as JSON: {error}")
    if not isinstance(earlier, dict) or not isinstance(earlier.get("results"), list):
        raise SystemExit(f"benchmarks: --compare {path!r} is not a benchmark.json (no 'results' list)")
    return earlier


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

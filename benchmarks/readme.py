"""Regenerates the README's accuracy and speed sections from the scripts that measure them.

    python -m benchmarks.readme            # three measuring runs (about 11 minutes), then rewrites README.md
    python -m benchmarks.readme --no-run   # rewrites README.md from the last results

The edge table comes from ``examples.edge_table`` (evaluated here), the
accuracy table from ``python -m benchmarks.accuracy``, the
speed tables from ``python -m benchmarks --quick --repeats 11 --min-sample 0.02`` and the row-wise
ops at every size from a second run (:data:`ROWWISE_ARGS`); this script copies
their Markdown between the ``<!-- accuracy:begin/end -->``, ``<!-- benchmark:begin/end -->``,
``<!-- rowwise:begin/end -->`` and ``<!-- edges:begin/end -->`` markers of README.md, and the ratio plot
to ``docs/``. No figure in those sections is typed by hand.

The GPU section (``<!-- gpu:begin/end -->``) is copied from ``docs/gpu/replay.md``, the
report of a replay on a GPU machine (it needs one, so this script never reruns it):

    python -m benchmarks export EXPORT/check --smoke                  # here, with TensorFlow
    python -m benchmarks export EXPORT/full --sizes 1e7,8192x1000,256x32000,1e8
    python -m benchmarks.sweep export EXPORT/sweep                    # C3 there (optional)
    bash benchmarks/gpu_replay.sh EXPORT RESULTS                      # there, jax only
    cp RESULTS/full/replay.{json,md} docs/gpu/ && cp RESULTS/check/replay.md docs/gpu/check.md
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# The quick plan (the sizes the targets need), with longer and more samples
# than --quick's own 5 ms x 7: the README's ratios should not flip with the
# machine's load from one regeneration to the next.
BENCH_ARGS = ("--quick", "--repeats", "11", "--min-sample", "0.02")
BENCH_SECTIONS = ("Targets", "forward+backward, tf.function", "forward, tf.function",
                  "forward+backward, tf.function(jit_compile=True)", "forward, eager")
# The quick plan times tf.function at 1e5 elements only; the row-wise ops'
# ratios depend on the size (an inner XLA call's launch at small sizes, XLA's
# CPU loops against TensorFlow's fused kernels at large ones), so the README
# also shows them at every size, from a second run into its own directory.
ROWWISE = RESULTS / "rowwise"
ROWWISE_ARGS = ("--filter", r"^math\.(softmax|log_softmax|reduce_logsumexp|l2_normalize|norm)$",
                "--modes", "graph", "--passes", "fwd,fwdbwd", "--repeats", "11", "--min-sample", "0.02")
ROWWISE_SECTIONS = ("forward+backward, tf.function", "forward, tf.function")
GPU_REPORT = ROOT / "docs" / "gpu" / "replay.md"


def gpu_section(report: str) -> str:
    """The replay's title and header lines, its targets, and its full table folded."""
    parts = re.split(r"(?m)^## ", report)
    title, *head = [line for line in parts[0].splitlines() if line.startswith(("# ", "- "))]
    sections = {part.splitlines()[0].strip(): part.split("\n", 1)[1].strip() for part in parts[1:]}
    out = [f"**{title[2:]}**", "", *head]
    if "Targets" in sections:
        out += ["", sections["Targets"]]
    if "Every program" in sections:
        out += ["", "<details><summary>Every program (median time per run)</summary>", "",
                sections["Every program"], "", "</details>"]
    return "\n".join(out)


def _run(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)


def _sections(markdown: str, titles: tuple[str, ...]) -> str:
    """The header lines of a report plus the ``## title`` sections named in ``titles``."""
    parts = re.split(r"(?m)^## ", markdown)
    head = [line for line in parts[0].splitlines() if line.startswith("- ")]
    kept = ["\n".join(head)]
    for part in parts[1:]:
        title = part.splitlines()[0].strip()
        if title in titles:
            kept.append("#### " + part.rstrip())
    return "\n\n".join(kept)


def _replace(text: str, marker: str, body: str) -> str:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"README.md has no {begin} ... {end} markers")
    before, rest = text.split(begin, 1)
    _, after = rest.split(end, 1)
    return f"{before}{begin}\n{body.strip()}\n{end}{after}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-run", action="store_true", help="use the last results instead of measuring")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    accuracy_md = RESULTS / "accuracy.md"
    if not args.no_run:
        _run(["-m", "benchmarks.accuracy", "--out", str(accuracy_md)])
        _run(["-m", "benchmarks", *BENCH_ARGS, "--out", str(RESULTS)])
        _run(["-m", "benchmarks", *ROWWISE_ARGS, "--out", str(ROWWISE)])
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = _replace(text, "accuracy", accuracy_md.read_text())
    from examples import edge_table  # imports TensorFlow: only after the subprocess runs

    text = _replace(text, "edges", edge_table.table())
    bench = _sections((RESULTS / "benchmark.md").read_text(), BENCH_SECTIONS)
    text = _replace(text, "benchmark", bench)
    text = _replace(text, "rowwise", _sections((ROWWISE / "benchmark.md").read_text(), ROWWISE_SECTIONS))
    if GPU_REPORT.exists():
        text = _replace(text, "gpu", gpu_section(GPU_REPORT.read_text()))
        from benchmarks import replay

        with open(GPU_REPORT.with_suffix(".json")) as f:
            replay.ratio_plot(json.load(f), str(GPU_REPORT.parent / "ratios_fwdbwd.png"))
    plot = RESULTS / "ratios_graph_fwdbwd.png"
    if plot.exists():
        shutil.copy(plot, ROOT / "docs" / "benchmark_cpu_ratios.png")
    readme.write_text(text)
    print(f"README.md updated from {accuracy_md.name} and benchmark.md")


if __name__ == "__main__":
    main()

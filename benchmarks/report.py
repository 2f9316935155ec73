"""Reports: JSON (every figure), a Markdown table, PNG plots, targets, --compare.

The targets of the benchmark issue are evaluated here and printed (pass or
fail per target); nothing here asserts them. Ratios are always taken between
variants of one run (interleaved in one process): figures from different
runs are never divided, except by ``--compare``, which says so.
"""

from __future__ import annotations

import json
import math
import statistics
import os
from collections import defaultdict

# Interleaved medians of two equal programs differ by up to a few percent on
# this shared 2-core machine: "no slower than" targets count ratios up to
# 1 + NOISE as equal, and say so.
NOISE = 0.05
COMPARE_THRESHOLD = 0.10

MODE_TITLES = {"eager": "eager", "graph": "tf.function", "xla": "tf.function(jit_compile=True)"}
PASS_TITLES = {"fwd": "forward", "fwdbwd": "forward+backward", "2nd": "second order"}


# ------------------------------------------------------------------ helpers

def ratio(entry: dict, a: str, b: str) -> float | None:
    """Time of variant ``a`` over ``b``: the median of the per-round ratios.

    Sample ``i`` of every variant comes from the same interleaved round
    (:func:`benchmarks.runner.run_interleaved`), so ``a_i / b_i`` pairs two
    samples taken back to back; results without per-sample times (older
    JSON) fall back to the ratio of the medians.
    """
    va, vb = entry["variants"].get(a, {}), entry["variants"].get(b, {})
    if "median_s" not in va or "median_s" not in vb or vb["median_s"] <= 0:
        return None
    rounds = round_ratios(entry, a, b)
    return statistics.median(rounds) if rounds else va["median_s"] / vb["median_s"]


def round_ratios(entry: dict, a: str, b: str) -> list:
    """The per-round ratios ``a_i / b_i`` behind :func:`ratio` (empty without per-sample times)."""
    sa = entry["variants"].get(a, {}).get("samples_s")
    sb = entry["variants"].get(b, {}).get("samples_s")
    if sa and sb and len(sa) == len(sb) and min(sb) > 0:
        return [x / y for x, y in zip(sa, sb)]
    return []


def geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def per_op(results: list, mode: str, pass_: str, a: str, b: str, group: str | None = None,
           size: str | None = None) -> dict:
    """case -> geometric mean over its sizes of the ratio a/b (:func:`ratio`)."""
    ratios = defaultdict(list)
    for entry in results:
        if entry["mode"] != mode or entry["pass"] != pass_:
            continue
        if group and entry["group"] != group:
            continue
        if size and entry["size"] != size:
            continue
        r = ratio(entry, a, b)
        if r is not None:
            ratios[entry["case"]].append(r)
    return {case: geomean(rs) for case, rs in ratios.items()}


def rounds_over(results: list, mode: str, pass_: str, a: str, b: str, limit: float,
                group: str | None = None, size: str | None = None) -> dict:
    """case -> (rounds with a/b over ``limit``, rounds), over the case's sizes.

    A median over the band can be one noisy run or a real gap: the share of
    rounds over it tells which (11 of 11 is a gap; 6 of 11 is a coin toss).
    """
    counts = defaultdict(lambda: [0, 0])
    for entry in results:
        if entry["mode"] != mode or entry["pass"] != pass_:
            continue
        if (group and entry["group"] != group) or (size and entry["size"] != size):
            continue
        rs = round_ratios(entry, a, b)
        counts[entry["case"]][0] += sum(r > limit for r in rs)
        counts[entry["case"]][1] += len(rs)
    return {case: tuple(c) for case, c in counts.items() if c[1]}


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def device_label(meta: dict) -> str:
    if meta.get("device", "").startswith("/GPU"):
        return f"GPU {meta.get('gpu', '')}".strip()
    return f"CPU {meta.get('cpu_model', '')} ({meta.get('cpu_count')} cores)"


# ------------------------------------------------------------------ targets

def targets(data: dict) -> list:
    """The issue's targets: one dict per target with value, verdict, detail."""
    results = data["results"]
    out = []

    def add(name, value, ok, detail):
        verdict = "not measured" if ok is None else ok if isinstance(ok, str) else ("PASS" if ok else "FAIL")
        out.append({"target": name, "value": value, "verdict": verdict, "detail": detail})

    fb = per_op(results, "graph", "fwdbwd", "safeops", "builtin")
    g = geomean(fb.values())
    add("fwd+bwd tf.function: geomean safeops/builtin <= 1.05", _shown(g, 1.05),
        None if g is None else g <= 1.05, _worst(fb))
    worst = max(fb.values()) if fb else None
    add("fwd+bwd tf.function: no op safeops/builtin > 1.25", _shown(worst, 1.25),
        None if worst is None else worst <= 1.25,
        _over(fb, 1.25, rounds_over(results, "graph", "fwdbwd", "safeops", "builtin", 1.25)))

    fw = per_op(results, "graph", "fwd", "safeops", "builtin")
    worst = max(fw.values()) if fw else None
    add(f"forward tf.function: no op slower than builtin (ratio <= 1 + {NOISE:.2f} noise band)",
        _shown(worst, 1 + NOISE),
        None if worst is None else worst <= 1 + NOISE,
        _over(fw, 1 + NOISE, rounds_over(results, "graph", "fwd", "safeops", "builtin", 1 + NOISE)))

    fn = per_op(results, "graph", "fwdbwd", "safeops", "naive")
    g = geomean(fn.values())
    add("fwd+bwd tf.function: geomean safeops/naive <= 1.0", _shown(g, 1.0), None if g is None else g <= 1.0,
        _worst(fn))

    big = "1e7"
    xb = per_op(results, "xla", "fwdbwd", "safeops", "builtin", group="elementwise", size=big)
    worst = max(xb.values()) if xb else None
    add(f"XLA fwd+bwd at {big} elementwise: no op slower than builtin (<= 1 + {NOISE:.2f})",
        _shown(worst, 1 + NOISE),
        None if worst is None else worst <= 1 + NOISE,
        _over(xb, 1 + NOISE, rounds_over(results, "xla", "fwdbwd", "safeops", "builtin", 1 + NOISE,
                                         group="elementwise", size=big)))
    xr = per_op(results, "xla", "fwdbwd", "safeops", "roofline", group="elementwise", size=big)
    br = per_op(results, "xla", "fwdbwd", "builtin", "roofline", group="elementwise", size=big)
    detail = ", ".join(f"{c.split('.', 1)[-1]} {v:.2f}" + (f" (builtin {br[c]:.2f})" if c in br else "")
                       for c, v in sorted(xr.items()))
    add(f"XLA fwd+bwd at {big}: safeops / same-I/O trivial program (memory roofline; reported)",
        _num(geomean(xr.values())), None if not xr else "reported", detail or "-")
    if data["meta"].get("device", "").startswith("/GPU"):
        fractions = [e["variants"]["roofline"].get("copy_fraction") for e in results
                     if e["mode"] == "xla" and e["pass"] == "fwdbwd" and e["size"] == big
                     and "roofline" in e["variants"]]
        fractions = [f for f in fractions if f is not None]
        low = min(fractions) if fractions else None
        add("GPU: trivial program >= 60% of measured copy bandwidth", _shown(low, 0.6, percent=True),
            None if low is None else low >= 0.6, "")
    return out


def _shown(value: float | None, limit: float, percent: bool = False) -> str:
    """``value`` to 2 decimals (a percentage to 0), more where that would print the limit it is judged by.

    A verdict is taken on the unrounded value: 1.0015 against ``<= 1.00``
    fails, and printed as "1.00" it read as a contradiction (as did 0.5994
    against ``>= 60%`` printed "60%").
    """
    if value is None:
        return "-"
    for digits in ((0, 1, 2, 4) if percent else (2, 3, 4, 6)):
        text = f"{value:.{digits}%}" if percent else f"{value:.{digits}f}"
        shown = float(text[:-1]) / 100 if percent else float(text)
        if not math.isclose(shown, limit, rel_tol=1e-12) or value == limit:
            return text
    return f"{value:.6%}" if percent else f"{value:.6g}"


def _worst(ratios: dict, n: int = 3) -> str:
    if not ratios:
        return "-"
    ranked = sorted(ratios.items(), key=lambda kv: -kv[1])[:n]
    return "highest: " + ", ".join(f"{c} {v:.2f}" for c, v in ranked)


def _over(ratios: dict, limit: float, rounds: dict | None = None) -> str:
    """The cases over ``limit``, each with the share of its rounds over it where known."""
    if not ratios:
        return "-"     # not measured: nothing to name
    over = sorted((c, v) for c, v in ratios.items() if v > limit)
    if not over:
        return "none over"
    rounds = rounds or {}
    return "over: " + ", ".join(
        f"{c} {v:.2f}" + (f" ({rounds[c][0]}/{rounds[c][1]} rounds)" if c in rounds else "") for c, v in over)


# ------------------------------------------------------------------ markdown

def markdown(data: dict, compare_lines: list | None = None) -> str:
    meta = data["meta"]
    lines = [
        "# safeops benchmark",
        "",
        f"- Device: {device_label(meta)}; TensorFlow {meta['tensorflow']}, Keras {meta['keras']}, "
        f"Python {meta['python']}; dtype {meta['dtype']}",
        f"- Allocator: {meta['malloc']['label']} ({meta['malloc']['libc']}); "
        f"peak memory by {meta['memory_method']}",
        f"- Method: {meta['timing']}; {meta['repeats']} samples per variant after warm-up, variants "
        f"interleaved; load average at start {_load(meta)}; run took {meta['duration_s']:.0f} s"
        + ("; **smoke mode: tiny sizes, 1 sample, figures meaningless**" if meta.get("smoke") else ""),
        f"- Copy bandwidth (x * s, {data['copy_bandwidth']['start']['elements']:.0e} elements), "
        f"start / end of run: " + "; ".join(
            f"{MODE_TITLES[m]} {_num(data['copy_bandwidth']['start'].get(m), '{:.1f}')} / "
            f"{_num(data['copy_bandwidth']['end'].get(m), '{:.1f}')} GB/s"
            for m in ("graph", "xla") if m in data["copy_bandwidth"]["start"]),
        "- Ratios are medians of per-round ratios of variants measured in this run (interleaved); "
        "do not compare figures across runs.",
        "",
        "## Targets",
        "",
    ]
    if meta.get("filter"):
        lines += [f"Over the cases of `--filter {meta['filter']}` only.", ""]
    lines += [
        "| target | value | verdict | detail |",
        "|---|---|---|---|",
    ]
    for t in data.get("targets") or targets(data):
        lines.append(f"| {t['target']} | {t['value']} | {t['verdict']} | {t['detail']} |")
    for mode in ("graph", "xla", "eager"):
        for pass_ in ("fwdbwd", "fwd", "2nd"):
            rows = [e for e in data["results"] if e["mode"] == mode and e["pass"] == pass_]
            if rows:
                lines += ["", f"## {PASS_TITLES[pass_]}, {MODE_TITLES[mode]}", ""] + _table(rows)
    if data.get("failures"):
        lines += ["", "## Failures", ""] + [f"- {f}" for f in data["failures"]]
    if compare_lines:
        lines += ["", *compare_lines]
    return "\n".join(lines) + "\n"


def _load(meta: dict) -> str:
    load = meta.get("load_average")
    return "/".join(f"{v:.1f}" for v in load) if load else "?"


def _table(rows: list) -> list:
    roofline = any("roofline" in e["variants"] for e in rows)
    fwdbwd = rows[0]["pass"] == "fwdbwd" and rows[0]["mode"] != "eager"
    head = ["op", "size", "safeops", "naive", "builtin", "safeops/builtin", "safeops/naive"]
    if roofline:
        head += ["trivial (roofline)", "safeops/trivial", "builtin/trivial"]
    head += ["safeops GB/s", "of copy", "spread", "faults/call (s/n/b)"]
    if fwdbwd:
        head += ["peak MB (s/n/b)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in rows:
        v = e["variants"]
        s = v.get("safeops", {})
        cells = [e["case"], e["size"]]
        for name in ("safeops", "naive", "builtin"):
            fig = v.get(name)
            cells.append("n/a" if fig is None else ("ERROR" if "error" in fig else _time(fig["median_s"])))
        cells += [_num(ratio(e, "safeops", "builtin")), _num(ratio(e, "safeops", "naive"))]
        if roofline:
            cells += [_time(v.get("roofline", {}).get("median_s")), _num(ratio(e, "safeops", "roofline")),
                      _num(ratio(e, "builtin", "roofline"))]
        spread = (s["max_s"] - s["min_s"]) / s["median_s"] if "median_s" in s else None
        cells += [_num(s.get("gbps"), "{:.1f}"), _num(s.get("copy_fraction"), "{:.0%}"),
                  _num(spread, "{:.0%}"),
                  "/".join(_num(v.get(n, {}).get("faults_per_call"), "{:.0f}") for n in ("safeops", "naive", "builtin"))]
        if fwdbwd:
            cells.append("/".join(_num(None if v.get(n, {}).get("peak_bytes") is None
                                       else v[n]["peak_bytes"] / 2**20, "{:.1f}")
                                  for n in ("safeops", "naive", "builtin")))
        out.append("| " + " | ".join(cells) + " |")
    return out


# ------------------------------------------------------------------ compare

def compare(new: dict, old: dict, threshold: float = COMPARE_THRESHOLD) -> list:
    """Markdown lines flagging medians and ratios that moved more than ``threshold``."""
    def index(data):
        out = {}
        for e in data["results"]:
            key = (e["case"], e["mode"], e["pass"], e["size"], e["dtype"])
            for name, fig in e["variants"].items():
                if "median_s" in fig:
                    out[key + (name,)] = fig["median_s"]
            for a, b in (("safeops", "builtin"), ("safeops", "naive")):
                r = ratio(e, a, b)
                if r is not None:
                    out[key + (f"{a}/{b}",)] = r
        return out

    new_i, old_i = index(new), index(old)
    common = sorted(set(new_i) & set(old_i))
    flagged = []
    for key in common:
        change = new_i[key] / old_i[key] - 1 if old_i[key] else 0.0
        if abs(change) > threshold:
            flagged.append((key, old_i[key], new_i[key], change))
    lines = [
        "## Compared with an earlier run",
        "",
        f"{len(common)} figures in common, {len(flagged)} changed by more than {threshold:.0%}. "
        "Absolute times from two runs differ with machine load and page-fault luck: trust the "
        "ratio rows (safeops/builtin, safeops/naive, measured within each run) over the time rows.",
        f"Earlier run: {old['meta'].get('started', '?')} on {device_label(old['meta'])}.",
    ]
    if not common:
        lines[2] += " " + _nothing_in_common(new, old)
    if flagged:
        lines += ["", "| op | mode | pass | size | figure | old | new | change |", "|---|---|---|---|---|---|---|---|"]
        for key, o, n, change in flagged:
            case, mode, pass_, size, _dtype, figure = key
            fmt = _num if "/" in figure else _time
            lines.append(f"| {case} | {mode} | {pass_} | {size} | {figure} | {fmt(o)} | {fmt(n)} | {change:+.0%} |")
    return lines


def _nothing_in_common(new: dict, old: dict) -> str:
    """Why two runs share no figure: the key parts (op, mode, pass, size,
    dtype) whose values do not overlap, each with what either run had."""
    parts = ("case", "mode", "pass", "size", "dtype")
    reasons = []
    for part in parts:
        mine = sorted({str(e[part]) for e in new["results"]})
        theirs = sorted({str(e[part]) for e in old["results"]})
        if not set(mine) & set(theirs):
            reasons.append(f"{part} {', '.join(theirs) or '(none)'} then, {', '.join(mine) or '(none)'} now")
    if reasons:
        return "Nothing to compare: no overlap in " + "; ".join(reasons) + "."
    return ("Nothing to compare: the runs share ops, modes, passes, sizes and dtypes, but no op was "
            "measured at the same mode, pass, size and dtype in both.")


# ------------------------------------------------------------------ plots

def plots(data: dict, out_dir: str) -> list:
    """PNG files: time against size per op, and ratio bars per op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    label = device_label(data["meta"])
    by_mode_pass = defaultdict(list)
    for e in data["results"]:
        by_mode_pass[(e["mode"], e["pass"])].append(e)
    colors = {"safeops": "tab:blue", "naive": "tab:red", "builtin": "tab:green", "roofline": "tab:gray"}
    for (mode, pass_), rows in sorted(by_mode_pass.items()):
        case_names = sorted({e["case"] for e in rows})
        # Time against size, one panel per op.
        cols = 4
        nrows = math.ceil(len(case_names) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
        for ax, case in zip(axes.flat, case_names):
            entries = sorted((e for e in rows if e["case"] == case), key=lambda e: e["elements"])
            for variant, color in colors.items():
                pts = [(e["elements"], e["variants"][variant]["median_s"]) for e in entries
                       if "median_s" in e["variants"].get(variant, {})]
                if pts:
                    xs, ys = zip(*pts)
                    ax.loglog(xs, ys, "o-", color=color, label=variant, markersize=3)
            ax.set_title(case, fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(case_names):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{PASS_TITLES[pass_]}, {MODE_TITLES[mode]}: seconds per call against elements "
                     f"({label}, {data['meta']['dtype']})", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"time_vs_size_{mode}_{pass_}.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)

        # Ratio bars at each op's largest size.
        largest = {}
        for e in rows:
            if e["case"] not in largest or e["elements"] > largest[e["case"]]["elements"]:
                largest[e["case"]] = e
        bars = [(f"{c} ({largest[c]['size']})",
                 {b: ratio(largest[c], "safeops", b) for b in ("builtin", "naive")}) for c in case_names]
        path = os.path.join(out_dir, f"ratios_{mode}_{pass_}.png")
        written.append(ratio_bars(bars, f"{PASS_TITLES[pass_]}, {MODE_TITLES[mode]} ({label})", path))
    return written


def ratio_bars(rows: list, title: str, path: str) -> str:
    """A PNG of horizontal bars: per ``(label, {"builtin": r, "naive": r})`` row, safeops' time ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.5))
    ys = range(len(rows))
    for offset, (other, color) in zip((-0.2, 0.2), (("builtin", "tab:green"), ("naive", "tab:red"))):
        values = [r.get(other) or 0.0 for _, r in rows]
        ax.barh([y + offset for y in ys], values, height=0.4, color=color, label=f"safeops / {other}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([name for name, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    ax.set_xlabel("time ratio (< 1: safeops faster)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ writing

def write_all(data: dict, out_dir: str, compare_with: str | None = None, earlier: dict | None = None) -> dict:
    """Writes benchmark.json, benchmark.md and the PNGs; returns their paths.

    ``earlier``: the run of ``compare_with`` when the caller read it already
    (``python -m benchmarks`` reads it before measuring, so that a bad path
    fails at once rather than after the run).
    """
    os.makedirs(out_dir, exist_ok=True)
    data["targets"] = targets(data)
    compare_lines = None
    if compare_with:
        if earlier is None:
            with open(compare_with) as f:
                earlier = json.load(f)
        compare_lines = compare(data, earlier)
        data["compare"] = {"with": compare_with, "lines": compare_lines}
    paths = {"json": os.path.join(out_dir, "benchmark.json"), "markdown": os.path.join(out_dir, "benchmark.md")}
    with open(paths["json"], "w") as f:
        json.dump(data, f, indent=1, default=str)
    with open(paths["markdown"], "w") as f:
        f.write(markdown(data, compare_lines))
    paths["png"] = plots(data, out_dir)
    return paths

"""The benchmark in smoke mode: every case runs, every report file is written.

No timing is asserted anywhere: the targets are evaluated and printed by the
benchmark's report. Also checked: the StableHLO export of a few cases replays
through jaxlib on the CPU (without TensorFlow in that process) and computes
what TensorFlow computed.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORTED = r"^math\.log$|^nn\.softmax_cross_entropy_with_logits$"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    return env


def _start(args, **kwargs):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The smoke benchmark and an export of two cases, run side by side."""
    smoke_dir = tmp_path_factory.mktemp("bench_smoke")
    export_dir = tmp_path_factory.mktemp("bench_export")
    smoke = _start(["-m", "benchmarks", "--smoke", "--no-progress", "--out", str(smoke_dir)])
    export = _start(["-m", "benchmarks", "export", str(export_dir), "--smoke", "--no-progress",
                     "--filter", EXPORTED])
    export_result = _finish(export)
    smoke_result = _finish(smoke)
    return {"smoke_dir": smoke_dir, "smoke": smoke_result, "export_dir": export_dir, "export": export_result}


@pytest.fixture(scope="module")
def smoke_data(runs):
    code, out, err = runs["smoke"]
    path = runs["smoke_dir"] / "benchmark.json"
    assert path.exists(), f"no benchmark.json; exit {code}\n{err[-4000:]}"
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def registry():
    from benchmarks import cases

    return cases.registry()


def test_smoke_run_exits_cleanly(runs, smoke_data):
    code, out, err = runs["smoke"]
    assert smoke_data["failures"] == [], "\n".join(smoke_data["failures"])
    assert code == 0, err[-4000:]
    assert "## Targets" in out


def test_every_case_ran_in_every_mode_and_pass(smoke_data, registry):
    seen = {}
    for entry in smoke_data["results"]:
        seen.setdefault(entry["case"], set()).add((entry["mode"], entry["pass"]))
        for variant, figures in entry["variants"].items():
            assert "error" not in figures, f"{entry['case']} {entry['mode']} {entry['pass']} {variant}: {figures}"
            assert figures["median_s"] > 0 and figures["samples"] == 1
        if entry["mode"] == "xla" and entry["pass"] == "fwdbwd":
            assert "roofline" in entry["variants"]
    for case in registry:
        assert case.name in seen, f"{case.name} did not run"
        assert {m for m, _ in seen[case.name]} == {"eager", "graph", "xla"}, case.name
        passes = {p for _, p in seen[case.name]}
        assert {"fwd", "fwdbwd"} <= passes, case.name
        assert ("2nd" in passes) == case.second_order, case.name
        names = {v for e in smoke_data["results"] if e["case"] == case.name for v in e["variants"]}
        assert set(case.variants) <= names


def _public_functions(module):
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    return [(n, getattr(module, n)) for n in names if inspect.isfunction(getattr(module, n, None))]


def test_registry_covers_the_public_api(registry):
    import safeops.math
    import safeops.nn

    names = {case.name for case in registry}
    for name in safeops.math.__all__:
        assert f"math.{name}" in names, f"safeops.math.{name} has no benchmark case"
    math_functions = {getattr(safeops.math, n) for n in safeops.math.__all__}
    for name, fn in _public_functions(safeops.nn):
        if fn in math_functions:
            continue  # a re-export of safeops.math, measured there
        assert f"nn.{name}" in names, f"safeops.nn.{name} has no benchmark case"
    import safeops.losses

    for name, fn in _public_functions(safeops.losses):
        if "crossentropy" in name:
            assert f"losses.{name}" in names, f"safeops.losses.{name} has no benchmark case"
    for case in registry:
        assert {"safeops", "naive"} <= set(case.variants), case.name


def test_report_files_are_written_and_well_formed(runs, smoke_data):
    out_dir = runs["smoke_dir"]
    meta = smoke_data["meta"]
    for key in ("cpu_model", "device", "tensorflow", "keras", "malloc", "memory_method", "dtype"):
        assert meta.get(key), key
    assert smoke_data["copy_bandwidth"]["start"]["graph"] > 0
    verdicts = {t["verdict"] for t in smoke_data["targets"]}
    assert verdicts <= {"PASS", "FAIL", "not measured", "reported"} and len(smoke_data["targets"]) >= 5
    markdown = (out_dir / "benchmark.md").read_text()
    assert markdown.startswith("# safeops benchmark") and "## Targets" in markdown
    for case in {e["case"] for e in smoke_data["results"]}:
        assert f"| {case} |" in markdown
    mode_passes = {(e["mode"], e["pass"]) for e in smoke_data["results"]}
    for mode, pass_ in mode_passes:
        for stem in ("time_vs_size", "ratios"):
            png = out_dir / f"{stem}_{mode}_{pass_}.png"
            data = png.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 2000, png


def test_compare_flags_changes_over_ten_percent(smoke_data):
    from benchmarks import report

    old = json.loads(json.dumps(smoke_data))
    entry = old["results"][0]
    entry["variants"]["safeops"]["median_s"] *= 1.5
    lines = report.compare(smoke_data, old)
    flagged = [line for line in lines if line.startswith(f"| {entry['case']} | {entry['mode']} | {entry['pass']}")]
    assert any("| safeops |" in line for line in flagged)
    assert all("| naive |" not in line for line in flagged)
    unchanged = report.compare(smoke_data, smoke_data)
    assert " 0 changed by more than 10%" in unchanged[2] and not any(line.startswith("| ") for line in unchanged)
    assert "Nothing to compare" not in unchanged[2]


def test_compare_says_why_nothing_is_in_common(smoke_data):
    from benchmarks import report

    other = json.loads(json.dumps(smoke_data))
    for entry in other["results"]:
        entry["dtype"] = "float16"
    line = report.compare(smoke_data, other)[2]
    assert line.startswith("0 figures in common")
    assert "no overlap in dtype float16 then, float32 now" in line, line
    # Every part overlaps, no full key does: said as such.
    first, second = (json.loads(json.dumps(e)) for e in smoke_data["results"][:2])
    first.update(mode="graph", size="1e3")
    second.update(mode="xla", size="1e5")
    crossed = [dict(first, mode="xla"), dict(second, mode="graph")]
    line = report.compare(dict(smoke_data, results=[first, second]), dict(smoke_data, results=crossed))[2]
    assert line.startswith("0 figures in common"), line
    assert "share ops, modes, passes, sizes and dtypes" in line, line


def test_ratio_pairs_samples_of_the_same_round(smoke_data):
    from benchmarks import report

    # Round 2 ran in a slow phase for both variants: the paired ratio is 0.5
    # in every round, the ratio of the medians (2.0 / 2.0) says 1.
    entry = {"variants": {
        "safeops": {"median_s": 2.0, "samples_s": [1.0, 2.0, 20.0]},
        "builtin": {"median_s": 2.0, "samples_s": [2.0, 4.0, 40.0]},
    }}
    assert report.ratio(entry, "safeops", "builtin") == 0.5
    # Without samples (older JSON), or with a variant missing: the medians, or None.
    del entry["variants"]["safeops"]["samples_s"]
    assert report.ratio(entry, "safeops", "builtin") == 1.0
    assert report.ratio(entry, "safeops", "naive") is None
    # Every measured variant of the smoke run records its samples, one per round.
    for e in smoke_data["results"]:
        for figures in e["variants"].values():
            if "median_s" in figures:
                assert len(figures["samples_s"]) == figures["samples"] >= 1


def test_targets_count_the_rounds_over_the_band():
    from benchmarks import report

    def entry(case, safeops, builtin):
        return {"case": case, "mode": "graph", "pass": "fwd", "group": "elementwise", "size": "1e5",
                "variants": {"safeops": {"median_s": sorted(safeops)[1], "samples_s": safeops},
                             "builtin": {"median_s": sorted(builtin)[1], "samples_s": builtin}}}

    results = [entry("math.gap", [1.3, 1.2, 1.4], [1.0, 1.0, 1.0]),
               entry("math.noisy", [1.1, 0.9, 1.2], [1.0, 1.0, 1.0]),
               entry("math.fine", [0.9, 0.9, 0.9], [1.0, 1.0, 1.0])]
    counts = report.rounds_over(results, "graph", "fwd", "safeops", "builtin", 1.05)
    assert counts == {"math.gap": (3, 3), "math.noisy": (2, 3), "math.fine": (0, 3)}
    data = {"results": results, "meta": {"device": "/CPU:0"}}
    forward = next(t for t in report.targets(data) if t["target"].startswith("forward tf.function"))
    assert forward["verdict"] == "FAIL"
    assert forward["detail"] == "over: math.gap 1.30 (3/3 rounds), math.noisy 1.10 (2/3 rounds)"


def test_readme_regeneration_finds_its_markers_and_sections():
    """``python -m benchmarks.readme`` rewrites README.md between markers it must find."""
    import re

    from benchmarks import readme

    text = open(os.path.join(ROOT, "README.md")).read()
    written = set(re.findall(r'_replace\(text, "(\w+)"', inspect.getsource(readme.main)))
    assert written == {"accuracy", "edges", "benchmark", "rowwise", "gpu"}
    for marker in written:
        assert text.count(f"<!-- {marker}:begin -->") == 1 and text.count(f"<!-- {marker}:end -->") == 1
    report = "# t\n\n- Device: x\n\n## Targets\n\nT\n\n## forward, tf.function\n\nF\n\n## other\n\nO\n"
    kept = readme._sections(report, ("forward, tf.function",))
    assert kept == "- Device: x\n\n#### forward, tf.function\n\nF"
    replaced = readme._replace("a <!-- m:begin -->\nold\n<!-- m:end --> b", "m", "new")
    assert replaced == "a <!-- m:begin -->\nnew\n<!-- m:end --> b"
    gpu = readme.gpu_section("# XLA program replayed through jaxlib on GPU X\n\n- a\n\n## Targets\n\nT\n\n"
                             "## Every program\n\nE\n")
    assert gpu == ("**XLA program replayed through jaxlib on GPU X**\n\n- a\n\nT\n\n"
                   "<details><summary>Every program (median time per run)</summary>\n\nE\n\n</details>")
    # The README's GPU table is the committed replay report's, not typed by hand.
    assert readme.gpu_section(readme.GPU_REPORT.read_text()) in text


def test_export_sizes_beyond_the_default_plan():
    """``export --sizes`` takes any size: 1e8 for a GPU whose L2 holds 1e7 floats."""
    from benchmarks import cases

    by_group = {c.group: c for c in cases.registry()}
    assert by_group["elementwise"].shape_for("1e8") == (10**8,)
    assert by_group["elementwise"].shape_for("2500") == (2500,)
    assert by_group["rowwise"].shape_for("1e8") == (10**5, 1000)
    assert by_group["rowwise"].shape_for("2500") is None  # not whole rows of 1000
    assert by_group["crossentropy"].shape_for("512x4096") == (512, 4096)
    assert by_group["crossentropy"].shape_for("1e8") is None
    assert by_group["elementwise"].shape_for("8192x1000") is None


def test_export_writes_stablehlo_and_manifest(runs):
    code, out, err = runs["export"]
    assert code == 0, err[-4000:]
    with open(runs["export_dir"] / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["failures"] == []
    # The commit the programs came from, so a replay's figures name the code they time.
    import re

    assert manifest["source"] is None or re.fullmatch(r"[0-9a-f]{4,40}(\+changes)?", manifest["source"])
    programs = manifest["programs"]
    assert {p["case"] for p in programs} == {"math.log", "nn.softmax_cross_entropy_with_logits"}
    # Both cases declare a second order, measured by the runner: exported too.
    cases = ("math.log", "nn.softmax_cross_entropy_with_logits")
    assert {(p["case"], p["pass"]) for p in programs if p["variant"] == "safeops"} == \
        {(c, q) for c in cases for q in ("fwd", "fwdbwd", "2nd")}
    assert {p["variant"] for p in programs} == {"safeops", "naive", "builtin", "roofline"}
    for p in programs:
        text = (runs["export_dir"] / p["file"]).read_text()
        assert "func.func @main" in text and "stablehlo." in text
        assert p["inputs"] and all("seed" in s and "shape" in s for s in p["inputs"])
        assert "data" in p


def test_export_again_removes_the_earlier_programs(tmp_path):
    """A second export into the same directory leaves no program of the first behind."""
    from benchmarks import cases, xla_export

    by_name = {c.name: c for c in cases.registry()}
    out = str(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    first = xla_export.export(out, [by_name["math.sqrt"]], smoke=True, progress=False)
    second = xla_export.export(out, [by_name["math.log1p"]], smoke=True, progress=False)
    kept = {p["file"] for p in second["programs"]}
    kept |= {n for p in second["programs"] for n in p.get("data", {}).values()}
    assert first["programs"] and second["programs"]
    assert set(os.listdir(out)) == kept | {"manifest.json", "notes.txt"}
    (tmp_path / "manifest.json").write_text("not json")
    with pytest.raises(SystemExit, match="is not a manifest this tool wrote"):
        xla_export.export(out, [by_name["math.log1p"]], smoke=True, progress=False)


def test_replay_through_jaxlib_matches_tensorflow(runs, tmp_path):
    pytest.importorskip("jax", reason="jax/jaxlib are test dependencies (pyproject [test])")
    code, _, err = runs["export"]
    assert code == 0, err[-4000:]
    # TensorFlow is made unimportable: the replay must run where it is absent.
    script = ("import sys; sys.modules['tensorflow'] = None; from benchmarks.__main__ import main; "
              f"sys.exit(main(['replay', {str(runs['export_dir'])!r}, '--repeats', '2', '--min-sample', '0.001', "
              f"'--out', {str(tmp_path)!r}]))")
    code, out, err = _finish(_start(["-c", script]), timeout=120)
    assert code == 0, err[-4000:] + out[-2000:]
    with open(tmp_path / "replay.json") as f:
        data = json.load(f)
    with open(runs["export_dir"] / "manifest.json") as f:
        manifest = json.load(f)
    assert data["failures"] == []
    assert data["label"].startswith("XLA program replayed through jaxlib on ")
    # Each program is checked as exported and as timed (inside the device-side loop).
    assert len(data["checks"]) == 2 * len(manifest["programs"])
    assert {c["id"] for c in data["checks"] if c["id"].endswith(":looped")} == \
        {p["id"] + ":looped" for p in manifest["programs"]}
    assert all(c["allclose"] for c in data["checks"]), data["checks"]
    assert data["meta"]["looped"]
    assert all(v["loops"] > 1 for e in data["results"] for v in e["variants"].values())
    for entry in data["results"]:
        assert entry["variants"]["safeops"]["median_s"] > 0 and entry["variants"]["safeops"]["samples"] == 2
    assert (tmp_path / "replay.md").read_text().startswith("# XLA program replayed through jaxlib on ")
    from benchmarks import replay

    png = replay.ratio_plot(data, str(tmp_path / "ratios.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_sweep_export_replays_through_jaxlib_within_c3(tmp_path):
    """``benchmarks.sweep export`` / ``replay``: the ULP sweep as XLA programs, run without TensorFlow."""
    pytest.importorskip("jax", reason="jax/jaxlib are test dependencies (pyproject [test])")
    from benchmarks import sweep

    manifest = sweep.export(str(tmp_path / "sweep"), 3000, ["log", "logit"], seed=3)
    assert {(p["op"], p["variant"], p["kind"]) for p in manifest["programs"]} == {
        ("log", "safeops", "value"), ("log", "builtin", "value"), ("log", "safeops", "gradient"),
        ("logit", "safeops", "value"), ("logit", "float32", "value"), ("logit", "safeops", "gradient")}
    script = ("import sys; sys.modules['tensorflow'] = None; from benchmarks.sweep import main; "
              f"sys.exit(main(['replay', {str(tmp_path / 'sweep')!r}, '--out', {str(tmp_path)!r}]))")
    code, out, err = _finish(_start(["-c", script]), timeout=120)
    assert code == 0, err[-4000:] + out[-2000:]
    with open(tmp_path / "sweep_replay.json") as f:
        data = json.load(f)
    assert data["failures"] == [] and len(data["results"]) == 6
    for row in data["results"]:
        assert row["same_points"] and row["points"] >= 3000
        if row["kind"] == "gradient":
            measured = row["device"] + row["here"]
            assert all(d["non_finite"] == 0 and d["max_rel"] <= 1e-5 for d in measured), row
        else:
            assert row["device"]["non_finite"] == 0
        if row["kind"] == "value" and row["variant"] == "safeops":
            assert row["device"]["max_ulp"] <= 4 and row["here"]["max_ulp"] <= 4, row
    report = (tmp_path / "sweep_replay.md").read_text()
    assert report.startswith("# float32 ULP sweep replayed through jaxlib on ")


def test_replay_check_allows_a_reordered_sum_but_not_a_wrong_one(tmp_path):
    """A cancelling sum added in another order passes; a wrong sum or element-wise output does not."""
    from benchmarks import replay

    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    total, scaled = np.float32(np.sum(x * np.float32(1.5))), x * np.float32(1.5)
    np.savez(tmp_path / "e.npz", a0=total, a1=scaled)
    entry = {"id": "p", "data": {"expected": "e.npz"},
             "outputs": [{"shape": [], "dtype": "float32"}, {"shape": [1000], "dtype": "float32"}]}

    def check(got_total, got_scaled):
        return replay._check(entry, [np.float32(got_total), got_scaled], str(tmp_path), [x])["allclose"]

    assert check(total, scaled)
    assert check(total + np.float32(3.4e-5), scaled)  # within eps * n * max|x|, the H200's looped sum
    assert not check(total + np.float32(1.0), scaled)
    assert not check(total, scaled + np.float32(3.4e-5) * np.abs(scaled).max())


@pytest.mark.parametrize("args, message", [
    (["--filter", "("], "is not a regular expression"),
    (["--filter", "math.sqrt$", "--compare", "{tmp}/missing.json"], "cannot be read as JSON"),
    (["--filter", "math.sqrt$", "--compare", "{tmp}/other.json"], "is not a benchmark.json"),
    (["--filter", "math.sqrt$", "--out", "{tmp}/a_file"], "cannot write to"),
    (["--filter", "math.sqrt$", "--modes", "eager", "--passes", "2nd"], "nothing to measure"),
    (["export", "{tmp}/export", "--filter", "["], "is not a regular expression"),
    (["replay", "{tmp}/no_export"], "no {tmp}/no_export/manifest.json"),
])
def test_bad_arguments_stop_before_the_run_with_a_message(tmp_path, args, message):
    """A typo in a path was found only after the whole run (and lost it); a bad regex was a traceback."""
    (tmp_path / "a_file").write_text("")
    (tmp_path / "other.json").write_text('{"programs": []}')
    from benchmarks.__main__ import main

    argv = [a.format(tmp=tmp_path) for a in args]
    argv = argv if argv[0] in ("export", "replay") else ["--smoke", "--out", str(tmp_path / "out")] + argv
    with pytest.raises(SystemExit, match=message.format(tmp=tmp_path)) as stop:
        main(argv)
    assert stop.value.code != 0
    assert not (tmp_path / "out" / "benchmark.json").exists()


def test_target_values_are_not_rounded_onto_their_limit():
    """1.0015 against <= 1.00 failed but printed "1.00"; a reported figure has no verdict."""
    from benchmarks import report

    assert report._shown(1.0015, 1.0) == "1.002" and report._shown(1.26, 1.25) == "1.26"
    assert report._shown(0.5994, 0.6) == "0.599" and report._shown(1.05, 1.05) == "1.05"
    assert report._shown(0.5994, 0.6, percent=True) == "59.9%"
    assert report._shown(0.72, 0.6, percent=True) == "72%" and report._shown(0.6, 0.6, percent=True) == "60%"
    assert report._over({}, 1.05) == "-" and report._over({"a": 1.0}, 1.05) == "none over"


def test_filtered_targets_say_so(smoke_data):
    from benchmarks import report

    data = dict(smoke_data, meta=dict(smoke_data["meta"], filter="math.sqrt$"))
    assert "Over the cases of `--filter math.sqrt$` only." in report.markdown(data)
    assert "Over the cases of" not in report.markdown(dict(smoke_data, meta=dict(smoke_data["meta"], filter=None)))

"""Smoke test of ``python -m benchmarks.accuracy``: a tiny run, its files, and safeops within C3 on it."""

from __future__ import annotations

import json

import pytest

from benchmarks import accuracy
from tests.ulp import GRAD_RTOL, VALUE_ULP

ALL_OPS = accuracy.UNARY + accuracy.BINARY + accuracy.ROWS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("accuracy") / "accuracy.md"
    assert accuracy.main(["--n", "48", "--out", str(out)]) == 0
    return out, json.loads(out.with_suffix(".json").read_text())


def test_writes_markdown_and_json_for_every_op_and_dtype(tiny_run):
    out, data = tiny_run
    table = out.read_text()
    assert table.startswith("| op | dtype |")
    for op in ALL_OPS:
        assert f"| {op} |" in table
    seen = {(r["op"], r["dtype"], r["impl"]) for r in data["results"]}
    for op in ALL_OPS:
        for dtype in accuracy.DTYPES:
            assert (op, dtype, "safeops") in seen
            assert (op, dtype, "naive") in seen
    assert ("log", "float32", "tf") in seen and ("logit", "float32", "tf") not in seen


def test_naive_formulas_fail_where_safeops_does_not(tiny_run):
    _, data = tiny_run
    naive = [r for r in data["results"] if r["impl"] == "naive"]
    assert sum(r["nonfinite_values"] + r["nonfinite_grads"] for r in naive) > 0


@pytest.mark.parametrize("op", ALL_OPS)
def test_safeops_is_finite_and_within_c3_on_the_sample(tiny_run, op):
    _, data = tiny_run
    for r in data["results"]:
        if r["impl"] != "safeops" or r["op"] != op:
            continue
        where = f"{op} {r['dtype']}"
        assert r["nonfinite_values"] == 0, where
        assert r["nonfinite_grads"] == 0, where
        bound = VALUE_ULP[r["dtype"]]
        assert r["max_ulp"] <= bound, where
        assert r["max_grad_rel"] <= GRAD_RTOL[r["dtype"]], where

"""The float32 ULP sweep (``python -m benchmarks.sweep``): every elementwise op within C3 in every mode.

A smaller sample than the script's 2 million points per op, so a regression
that moves a whole region shows up here; the script finds the worst cases.
"""

import numpy as np
import pytest

from benchmarks import sweep
from tests.ulp import GRAD_RTOL, VALUE_ULP

#: TensorFlow's float32 acos and asin kernels, kept outside XLA (tests/test_contract.py's one allowance).
VALUE_BOUND = {"acos": 4.5, "asin": 4.5}


@pytest.mark.parametrize("name", sorted(sweep.OPS))
def test_float32_sweep_within_c3(name):
    result = sweep.sweep(name, 60_000, sweep.MODES, seed=7)
    assert result["points"] >= 60_000
    for mode in sweep.MODES:
        r = result[mode]
        assert r["non_finite"] == 0, (name, mode, r)
        assert r["max_ulp"] <= VALUE_BOUND.get(name, VALUE_ULP["float32"]), (name, mode, r)


@pytest.mark.parametrize("name", sorted(sweep.OPS))
def test_float32_gradient_sweep_within_c3(name):
    result = sweep.gradient_sweep(name, 60_000, sweep.MODES, seed=7)
    for mode in sweep.MODES:
        for argument, r in enumerate(result[mode]):
            assert r["non_finite"] == 0, (name, mode, argument, r)
            assert r["max_rel"] <= GRAD_RTOL["float32"], (name, mode, argument, r)


def test_sweep_reference_is_checked_against_a_known_error():
    # The measure is not vacuous: TensorFlow's own float32 softplus is
    # several ULP off near |x| = 13.9 (see safeops.math._sigmoid), and
    # float32 rounding of a float64 reference is 0 ULP from itself.
    import tensorflow as tf
    from tests.ulp import ftz_ulps

    x = np.linspace(-15.0, -13.0, 20001, dtype=np.float32)
    exact = np.logaddexp(0.0, x.astype(np.float64))
    assert np.max(ftz_ulps(tf.nn.softplus(x).numpy(), exact, "float32")) > VALUE_ULP["float32"]
    assert np.max(ftz_ulps(exact.astype(np.float32), exact, "float32")) == 0


def test_main_writes_a_table(tmp_path):
    out = tmp_path / "sweep.md"
    assert sweep.main(["--n", "2000", "--ops", "log", "sqrt", "--modes", "eager", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| log | 2000 |" in text and "| sqrt | 2000 |" in text

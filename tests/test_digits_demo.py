"""examples/digits_nan.py: the hand-written loss goes NaN with tf.math.log, learns with safeops."""

from __future__ import annotations

import numpy as np
import pytest

from examples import digits_nan


@pytest.fixture(scope="module")
def naive():
    return digits_nan.run(use_safeops=False, epochs=10, seed=0)


@pytest.fixture(scope="module")
def safe():
    return digits_nan.run(use_safeops=True, epochs=10, seed=0)


def test_naive_loss_diverges_to_nan(naive):
    assert naive["went_nan"]
    assert np.isnan(naive["history"][-1])
    assert naive["final_accuracy"] < 0.2


def test_safeops_loss_stays_finite_and_learns(safe):
    assert not safe["went_nan"]
    assert np.all(np.isfinite(safe["history"]))
    assert safe["history"][-1] < 0.5 * safe["history"][0]
    assert safe["final_accuracy"] > 0.85


def test_run_is_deterministic(safe):
    again = digits_nan.run(use_safeops=True, epochs=10, seed=0)
    np.testing.assert_allclose(again["history"], safe["history"], rtol=1e-5)
    assert again["final_accuracy"] == safe["final_accuracy"]


def test_main_prints_both_halves(capsys):
    digits_nan.main()
    out = capsys.readouterr().out
    assert "NaN from epoch" in out and "finite throughout" in out

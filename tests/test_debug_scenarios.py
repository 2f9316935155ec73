"""The two seeds' scenarios end to end, on data scikit-learn ships; each claim of the examples.

(a) examples/digits_lint.py: digits, softmax output, hand-written log loss.
(b) examples/breast_cancer_guard.py: raw breast-cancer features, ReLU MLP, high learning rate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from examples import breast_cancer_guard as bc
from examples import digits_lint as dl

# --------------------------------------------------------------------------- (b) breast cancer


@pytest.fixture(scope="module")
def plain():
    return bc.train_plain()


@pytest.fixture(scope="module")
def guarded():
    return bc.train_guarded()


@pytest.fixture(scope="module")
def diagnosis():
    return bc.diagnose()


@pytest.fixture(scope="module")
def standardised():
    return bc.train_standardised()


class TestBreastCancer:
    def test_data_is_unnormalised(self):
        x_train, *_ = bc.load()
        assert x_train.shape == (426, 30) and x_train.max() > 1000 and x_train.min() >= 0

    def test_without_guard_the_loss_goes_nonfinite(self, plain):
        step = plain["first_nonfinite_step"]
        assert step is not None and step <= 5
        assert all(math.isfinite(v) for v in plain["batch_losses"][:step])
        assert not plain["weights_finite"]

    def test_guard_catches_the_divergence(self, guarded):
        guard = guarded["guard"]
        first = guard.events[0]
        assert first.action == "rollback" and first.epoch == 0 and first.step <= 2
        assert first.restored_to_step == 0                      # the checkpoint at the start
        assert first.learning_rate_after == pytest.approx(bc.LEARNING_RATE * 0.1, rel=1e-6)
        assert "diverged" in first.cause and "standardise" in first.fix
        assert first.batch_stats["x"]["abs_max"] > 1000

    def test_guard_recovers(self, guarded):
        losses = guarded["epoch_losses"]
        assert len(losses) == bc.EPOCHS and all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[1]                           # falling after the recovery
        assert guarded["weights_finite"]
        assert not guarded["guard"].stopped
        assert guarded["final_learning_rate"] < bc.LEARNING_RATE

    def test_doctor_recommends_training_split_standardisation(self, diagnosis):
        assert not diagnosis.training["finite"]
        assert diagnosis.experiments["standardised inputs"] is True
        top = diagnosis.top
        assert top.source == "inputs" and top.score >= 90
        assert "training split only" in top.fix
        assert {"scale", "spread"} <= diagnosis.inputs.kinds()
        text = str(diagnosis)
        assert "norm.adapt(x_train)" in text and "StandardScaler().fit(x_train)" in text

    def test_after_the_fix_training_is_stable(self, standardised):
        losses = standardised["batch_losses"]
        assert all(math.isfinite(v) for v in losses)
        epoch = standardised["epoch_losses"]
        assert all(b < a for a, b in zip(epoch, epoch[1:]))     # every epoch lower
        assert standardised["test_accuracy"] >= 0.85


# --------------------------------------------------------------------------- (a) digits


@pytest.fixture(scope="module")
def lint_findings():
    return dl.run_lint()


@pytest.fixture(scope="module")
def naive_run():
    return dl.train(dl.naive_log_loss)


@pytest.fixture(scope="module")
def safe_run():
    return dl.train(dl.safeops_log_loss)


class TestDigits:
    def test_lint_flags_log_of_softmax(self, lint_findings):
        naive, _ = lint_findings
        hits = [f for f in naive if f.op_type == "Log" and "softmax" in (f.pattern + f.message).lower()]
        assert hits, [str(f) for f in naive]
        assert "digits_lint.py" in str(hits[0].location)
        assert "safeops" in hits[0].fix

    def test_lint_is_quiet_on_the_safeops_drop_in(self, lint_findings):
        naive, fixed = lint_findings
        raw_logs = [f for f in fixed if f.op_type == "Log" and "safeops" not in f.op_name]
        assert raw_logs == [] and len(fixed) < len(naive)

    def test_naive_loss_goes_nan_and_the_guard_stops(self, naive_run):
        guard = naive_run["guard"]
        assert naive_run["stopped"] and len(guard.events) == 1
        event = guard.events[0]
        assert event.step <= 3 and not math.isfinite(event.loss)
        assert not math.isfinite(event.loss_before)            # the loss op, not the optimizer
        assert "loss itself" in event.cause
        assert all(np.isfinite(w).all() for w in naive_run["model"].get_weights())

    def test_locate_finds_the_log(self, naive_run):
        report = dl.run_locate(naive_run)
        assert report.found and report.phase == "forward"
        assert report.op_type == "Log"
        assert "safeops" in report.fix

    def test_doctor_ranks_the_op_above_the_learning_rate(self):
        from safeops.debug import doctor
        x_train, _, y_train, _ = dl.load()
        report = doctor(dl.build_model(dl.naive_log_loss), (x_train, y_train), steps=10, batch_size=64,
                        verbose=False)
        assert not report.training["finite"]
        assert report.top.source in ("locate", "lint") and "Log" in report.top.title
        assert report.lint and report.located is not None and report.located.op_type == "Log"
        titles = [c.title for c in report.causes]
        assert "learning rate too high" not in titles

    def test_safeops_drop_in_trains(self, safe_run):
        assert not safe_run["guard"].events and not safe_run["stopped"]
        losses = safe_run["epoch_losses"]
        assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
        assert safe_run["test_accuracy"] >= 0.6

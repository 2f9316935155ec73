"""Debugging tools for NaN and Inf in training: find them before, during and after they happen.

* :func:`lint` reads a model or function's graph (forward and gradient)
  without running it and reports each numerically hazardous op, with the
  user's source line and the safeops call that replaces it.
* :func:`locate_nonfinite` runs one forward and backward step and names the
  first op that turned finite inputs into NaN or Inf, with its inputs'
  statistics and the likely cause in plain words.
* :class:`NaNGuard` keeps a Keras training run alive through a non-finite
  step; :func:`check_inputs` flags input columns that will blow up training;
  :func:`doctor` runs all of these on a model and ranks the likely causes.
"""

from safeops.debug._doctor import Cause, DoctorReport, doctor
from safeops.debug._events import GuardEvent
from safeops.debug._guard import NaNGuard
from safeops.debug._state import ScaledSchedule
from safeops.debug._lint import PATTERNS, Finding, LintReport, lint
from safeops.debug._locate import NonFiniteReport, TensorStats, locate_nonfinite
from safeops.debug._preflight import InputFinding, InputReport, check_inputs

__all__ = [
    "lint", "Finding", "LintReport", "PATTERNS",
    "locate_nonfinite", "NonFiniteReport", "TensorStats",
    "NaNGuard", "GuardEvent", "ScaledSchedule",
    "check_inputs", "InputReport", "InputFinding",
    "doctor", "DoctorReport", "Cause",
]

"""TEMPORARY placeholder written by the NaNGuard/doctor helper so its files import.

This file belongs to the lint/locate helper: replace it freely.
"""

from safeops.debug._doctor import Cause, DoctorReport, doctor
from safeops.debug._guard import GuardEvent, NaNGuard, ScaledSchedule
from safeops.debug._preflight import InputFinding, InputReport, check_inputs

__all__ = ["NaNGuard", "GuardEvent", "ScaledSchedule", "check_inputs", "InputReport", "InputFinding",
           "doctor", "DoctorReport", "Cause"]

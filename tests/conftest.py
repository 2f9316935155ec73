"""Shared test configuration: TF logging, Hypothesis profiles, and the execution-mode helper.

Hypothesis profiles (pick with ``SAFEOPS_HYPOTHESIS_PROFILE``):

* ``ci`` (default): few examples per test, derandomized (the same examples
  on every run, so a failure reproduces), no deadline (TensorFlow's first
  call traces), no example database. Keeps the whole suite well inside 10
  minutes on 2 cores.
* ``thorough``: many more examples, random seeds, a local database of
  failures; for a night run: ``SAFEOPS_HYPOTHESIS_PROFILE=thorough make test``.

Execution modes (contract C6): a test that takes the ``mode`` fixture runs
once per mode, ``"eager"``, ``"function"`` (``tf.function``) and ``"jit"``
(``tf.function(jit_compile=True)``); :func:`in_mode` turns a Python function
into the callable for a mode and caches it for the session, so each
(function, mode, signature) is traced once.
"""

from __future__ import annotations

import os
import pathlib
import sys

# Before TensorFlow is imported anywhere: no C++ info/warning logs, no oneDNN banner.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Before safeops is imported: no limit on the input shapes an inner XLA function compiles for.
# The suite calls each op at far more than 32 shapes, and which calls passed the limit would hang
# on which test files a worker ran before (test_xla.py tests the limit itself).
os.environ.setdefault("SAFEOPS_INNER_XLA_SHAPES", "1000000")

_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # ``from tests import naive`` works without PYTHONPATH
    sys.path.insert(0, str(_ROOT))

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True, database=None,
    suppress_health_check=_HEALTH, print_blob=True)
settings.register_profile(
    "thorough", max_examples=600, deadline=None, derandomize=False,
    suppress_health_check=_HEALTH, print_blob=True)
settings.load_profile(os.environ.get("SAFEOPS_HYPOTHESIS_PROFILE", "ci"))

import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")

MODES = ("eager", "function", "jit")

_COMPILED: dict = {}


def in_mode(fn, mode: str, input_signature=None):
    """``fn`` as it runs in ``mode``: itself, ``tf.function`` or ``tf.function(jit_compile=True)``.

    Cached per ``(fn, mode, input_signature)`` for the session, so pass the
    same function object (a module-level function or a cached builder) to
    avoid retracing. ``input_signature`` (a tuple of ``tf.TensorSpec``) lets
    one trace serve every input length; XLA still compiles once per shape.
    """
    if mode == "eager":
        return fn
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    key = (fn, mode, input_signature)
    if key not in _COMPILED:
        _COMPILED[key] = tf.function(
            fn, input_signature=list(input_signature) if input_signature else None,
            jit_compile=(mode == "jit"), autograph=False, reduce_retracing=input_signature is None)
    return _COMPILED[key]


@pytest.fixture(params=MODES, scope="session")
def mode(request):
    """The execution mode: ``"eager"``, ``"function"`` or ``"jit"`` (use with :func:`in_mode`)."""
    return request.param


def pytest_configure(config):
    config.addinivalue_line("markers", "contract: generic numerics-contract property tests (C1-C7)")
    config.addinivalue_line("markers", "modes: runs an op in eager, tf.function and XLA")

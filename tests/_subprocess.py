"""Run a test module's function in a fresh Python process and read back the JSON it prints.

For tests of global TensorFlow state (``tf.debugging.enable_check_numerics``
is switched on per thread and changes every graph traced after it), which
must not leak into the other tests of a pytest worker.
"""

import json
import os
import subprocess
import sys

_TAG = "SUBPROCESS_JSON "


def print_json(out) -> None:
    """Called in the subprocess: prints ``out`` where :func:`run_main` finds it."""
    print(_TAG + json.dumps(out))


def run_main(module: str, function: str, timeout: float):
    """``module.function()`` in a subprocess (tests/, the repo on its path): what it printed by print_json."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, here, os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", f"import {module} as m; m.{function}()"],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=root)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)]
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(line[0][len(_TAG):])

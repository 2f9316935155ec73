"""safeops benchmarks: ``python -m benchmarks`` (speed) and ``python -m benchmarks.accuracy``.

Keep this file import-light (no TensorFlow): ``python -m benchmarks replay DIR``
runs on machines that have only jax, jaxlib and numpy.
"""

import os as _os

# Before safeops is imported: every case is timed at one shape, as a training
# step runs, but one process times each op at many shapes, past the limit after
# which safeops stops compiling new shapes (safeops._xla.compiled): the later
# cases would time the plain formulas.
_os.environ.setdefault("SAFEOPS_INNER_XLA_SHAPES", "1000000")

"""safeops benchmarks: ``python -m benchmarks`` (speed) and ``python -m benchmarks.accuracy``.

Keep this file import-light (no TensorFlow): ``python -m benchmarks replay DIR``
runs on machines that have only jax, jaxlib and numpy.
"""

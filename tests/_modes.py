"""Shared helpers of the per-op edge tests: run a function in a mode, and its derivatives."""

import numpy as np
import tensorflow as tf

INF, NAN = np.inf, np.nan
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
MODES = ["eager", "function", "jit"]


def run(mode, fn):
    """``fn`` as called in ``mode``: eager, ``tf.function`` or ``tf.function(jit_compile=True)``.

    The last is ``"jit"``, or ``"xla"`` as some test files name it.
    """
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode in ("jit", "xla")), reduce_retracing=True)


def value_and_grad(fn, x, mode="eager"):
    """``fn(x)`` and the gradient of its sum with respect to ``x``, as float64 arrays, run in ``mode``."""

    def body(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x)

    y, g = run(mode, body)(tf.convert_to_tensor(x))
    return y.numpy().astype(np.float64), g.numpy().astype(np.float64)


def derivatives(fn, x, mode="eager"):
    """Value, gradient and diagonal second derivative (nested tapes) of sum(fn(x))."""

    def body(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = fn(x)
            g = inner.gradient(y, x)
        return y, g, outer.gradient(g, x)

    return [t.numpy().astype(np.float64) for t in run(mode, body)(tf.convert_to_tensor(x))]

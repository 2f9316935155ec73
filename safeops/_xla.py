"""Inner XLA compilation: one switch and one wrapper for every op that uses it.

Some ops are a chain of ten or more elementwise and reduction kernels when
written as plain TensorFlow ops (the exact-shift softmax family, the fused
focal losses). Their forward and backward functions run as inner
``tf.function(jit_compile=True)`` functions, and XLA fuses each into one or
two loops over the data, even when the caller's function is not compiled
(inside a caller's ``jit_compile=True`` function they are simply inlined).

The price is an XLA compile, tens to a few hundred milliseconds, the first
time each new input shape is seen. Code whose shapes change at every step
(unpadded sequence lengths) should turn it off with ``SAFEOPS_INNER_XLA=0``
in the environment (read at import) or :func:`set_inner_xla`; the same
formulas then run as ordinary TensorFlow ops.
"""

from __future__ import annotations

import functools
import os

import tensorflow as tf

_enabled = os.environ.get("SAFEOPS_INNER_XLA", "1") != "0"


def set_inner_xla(enabled: bool) -> bool:
    """Turns the inner XLA compilation on or off; returns the old setting.

    Off, the same formulas run as ordinary TensorFlow ops (no compile per new
    shape, but several kernels where XLA fuses one loop). Ops built before the call are not affected
    inside an already traced ``tf.function``.
    """
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def enabled() -> bool:
    """Whether ops built now use inner XLA functions."""
    return _enabled


def compiled(fn, xla):
    """``fn`` as an inner XLA function, or ``fn`` itself when ``xla`` is false."""
    if not xla:
        return fn
    return tf.function(fn, jit_compile=True, autograph=False, reduce_retracing=True)


def compiled_gradients(backward, xla, groups):
    """``backward`` as one inner XLA function per group of input gradients.

    ``backward(*args)`` returns one gradient per input; ``groups`` is a
    partition of their indices, for example ``[(1,), (0,)]`` for the logits
    and the labels of a loss. A single XLA function computes every output on
    every call, even the gradients of inputs nobody differentiates (the
    labels, a class-weight tensor): inside a ``tf.function`` Grappler can
    prune a whole call whose outputs are unused, but not some outputs of
    one. One call per group lets it drop the gradients that are not asked
    for; XLA removes the dead code inside each call. A group that is asked
    for recomputes what it shares with the others, so put together
    gradients that are usually wanted together. ``xla`` false returns
    ``backward`` itself (plain ops are pruned one by one).
    """
    if not xla:
        return backward
    count = sum(len(g) for g in groups)
    if count == 0 or sorted(i for g in groups for i in g) != list(range(count)):
        raise ValueError(f"groups must partition range({count}), got {groups!r}")

    def pick(indices):
        def part(*args):
            grads = backward(*args)
            return tuple(grads[i] for i in indices)
        return compiled(part, True)

    calls = [(indices, pick(indices)) for indices in groups]

    def gradients(*args):
        out = [None] * count
        for indices, call in calls:
            for i, g in zip(indices, call(*args)):
                out[i] = g
        return tuple(out)

    # The second-order recompute (safeops._gradient._plain) uses the plain function.
    gradients.python_function = backward
    return gradients


_UNCACHEABLE = object()


def _axis_key(axis):
    """``axis`` as a hashable key (lists become tuples), or ``_UNCACHEABLE`` for a tensor."""
    if axis is None or isinstance(axis, int):
        return axis
    if isinstance(axis, (list, tuple)) and all(isinstance(a, int) for a in axis):
        return tuple(axis)
    return _UNCACHEABLE


def per_axis(build=None, *, xla=True):
    """Caches ``build(axis, *config, xla)`` per axis, configuration and XLA setting.

    Returns ``get(axis, *config)``: one op (and so one inner XLA function,
    one trace per input signature) per configuration, built with the
    current :func:`enabled` setting. A tensor ``axis`` is not hashable and
    gets a fresh, uncompiled op. With ``xla=False`` (as
    ``@per_axis(xla=False)``) ``build(axis, *config)`` takes no XLA
    argument: the cache only saves rebuilding the op at every call.
    """
    if build is None:
        return functools.partial(per_axis, xla=xla)
    cached = functools.lru_cache(maxsize=None)(build)

    def get(axis, *config):
        key = _axis_key(axis)
        if key is _UNCACHEABLE:
            return build(axis, *config, False) if xla else build(axis, *config)
        return cached(key, *config, _enabled) if xla else cached(key, *config)

    return get

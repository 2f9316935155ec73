"""The rest of the module a drop-in replaces: names safeops does not define come from the original.

``import safeops.math as tfm`` where the code said ``tf.math`` must not
break the lines that call ``tfm.reduce_sum`` or ``tfm.abs``: safeops
replaces the ops that turn losses and gradients into NaN and leaves the
others to TensorFlow. :func:`forward_rest` gives a drop-in package a
module-level ``__getattr__`` and ``__dir__`` (PEP 562) that look a name up
in the original module (``tf.math``, ``tf.nn``, ``keras.losses``) when the
package itself does not define it. The object returned is the original's
own, unchanged: the same function, the same errors, the same NaNs. Names
that start with an underscore are never forwarded.
"""

from __future__ import annotations

from typing import Callable


def forward_rest(package: str, namespace: dict, original: Callable[[], object], label: str):
    """Returns ``(__getattr__, __dir__)`` for ``package`` that fall back to ``original()``.

    Args:
      package: the package's dotted name, for error messages.
      namespace: the package's ``globals()``: its own names win.
      original: returns the module forwarded to (called at first use, so
        nothing is imported early).
      label: how the original is named in messages (``"tf.math"``).
    """

    def __getattr__(name: str):
        if not name.startswith("_"):
            try:
                return getattr(original(), name)
            except AttributeError:
                pass
        raise AttributeError(f"module {package!r} has no attribute {name!r} (nor has {label})")

    def __dir__():
        own = set(namespace)
        return sorted(own | {n for n in dir(original()) if not n.startswith("_")})

    return __getattr__, __dir__


def register_with_keras(namespace: dict, names: list) -> None:
    """Registers the package's own functions among ``names`` with Keras as ``"safeops>name"``.

    Keras saves a function held by a layer (``keras.layers.Lambda(fn)``) by
    its registered name when it has one, else by its bare ``__name__``, which
    loads back as Keras' own function of that name (``softplus``) or fails
    (``log``). Registered, a safeops op loads back as itself.
    """
    import inspect

    import keras

    for name in names:
        obj = namespace[name]
        if inspect.isfunction(obj) and obj.__module__.startswith("safeops."):
            keras.saving.register_keras_serializable(package="safeops")(obj)

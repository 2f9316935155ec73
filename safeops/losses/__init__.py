"""Drop-in replacements for ``keras.losses``: ``from safeops import losses``.

Functions and ``Loss`` classes with Keras 3's names, arguments, defaults,
reduction and ``sample_weight`` semantics (binary, categorical and sparse
categorical cross-entropy, both focal cross-entropies, ``kl_divergence``,
``poisson``, the generalized cross-entropy of noisy-label training), the
same values wherever Keras' are finite and its epsilon clip is inactive,
and finite values with live gradients where they are not.
Two losses Keras lacks (``gaussian_nll``, ``kl_divergence_with_logits``), a
helper that turns a per-example function into a Keras ``Loss``
(``loss_class``, ``LossFunctionWrapper``), and two worked examples built
with it (``tversky_loss``/``TverskyLoss``, ``info_nce``/``InfoNCE``).

Which path a loss takes with ``from_logits=False``
---------------------------------------------------
1. Logits recovered (exact loss, value and gradient, for any logit): the
   probabilities carry a record (they are the output of
   ``safeops.math.sigmoid``/``softmax``, or were given one with
   :func:`with_logits`); or they are the output of a Keras sigmoid/softmax
   activation (Keras' ``_keras_logits``,
   checked bit for bit in eager mode); or, in a traced graph
   (``tf.function``, ``jit_compile``, ``model.fit``), their producing op is
   ``Sigmoid``/``Softmax`` (last axis), seen through ``Identity`` and
   ``Cast``, or the probabilities are ``1 - p`` of such a sigmoid output
   (``sigmoid(-z)``). The Loss classes keep the record through their own
   float16 -> float32 cast, so mixed precision does not lose it.
2. Otherwise (raw ``tf.sigmoid``/``tf.nn.softmax`` outputs in eager
   mode, which includes a ``tf.function`` run under
   ``tf.config.run_functions_eagerly(True)``; a tensor the caller cast or
   reshaped; the outputs of a reloaded SavedModel): the clamped
   logarithms of ``safeops.math``, whose value at a probability of 0 is
   ``-log(tiny)`` (87.34 in float32) and whose gradient there is finite
   and nonzero (contract C4), where Keras gives 16.1 and a gradient of
   exactly 0.

The details, and why Keras' own recovery is not trusted as is, are in
:mod:`safeops._probabilities`. Requires Keras 3 with the TensorFlow
backend.

Every other ``keras.losses`` name (``MeanSquaredError``, ``Huber``,
``Loss``, ``serialize``, ...) is Keras' own (:mod:`safeops._dropin`), and
:func:`get` and :func:`deserialize` return safeops' loss for the
identifiers of the losses it replaces. Every loss function and class here is registered with Keras as
``"safeops>name"``, so a model compiled with one saves and loads back with
it (see :mod:`safeops.losses._authoring`).
"""

import inspect as _inspect

import keras as _keras

from safeops import _dropin

from safeops.losses._authoring import LossFunctionWrapper, loss_class
from safeops.losses._crossentropy import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    SparseCategoricalCrossentropy,
    binary_crossentropy,
    categorical_crossentropy,
    sparse_categorical_crossentropy,
)
from safeops.losses._divergence import KLDivergence, Poisson, kl_divergence, poisson
from safeops.losses._examples import InfoNCE, TverskyLoss, info_nce, tversky_loss
from safeops.losses._extra import GaussianNLL, KLDivergenceWithLogits, gaussian_nll, kl_divergence_with_logits
from safeops.losses._generalized import (
    CategoricalGeneralizedCrossEntropy,
    categorical_generalized_cross_entropy,
)
from safeops.losses._focal import (
    BinaryFocalCrossentropy,
    CategoricalFocalCrossentropy,
    binary_focal_crossentropy,
    categorical_focal_crossentropy,
)
from safeops._probabilities import with_logits

__all__ = [
    "binary_crossentropy", "BinaryCrossentropy",
    "categorical_crossentropy", "CategoricalCrossentropy",
    "sparse_categorical_crossentropy", "SparseCategoricalCrossentropy",
    "binary_focal_crossentropy", "BinaryFocalCrossentropy",
    "categorical_focal_crossentropy", "CategoricalFocalCrossentropy",
    "kl_divergence", "KLDivergence",
    "categorical_generalized_cross_entropy", "CategoricalGeneralizedCrossEntropy",
    "poisson", "Poisson",
    "gaussian_nll", "GaussianNLL",
    "kl_divergence_with_logits", "KLDivergenceWithLogits",
    "LossFunctionWrapper", "loss_class",
    "tversky_loss", "TverskyLoss", "info_nce", "InfoNCE",
    "with_logits", "get", "deserialize",
]


def get(identifier):
    """``keras.losses.get``, resolved to safeops' loss where safeops replaces Keras' one.

    A string names a loss function or class as Keras does (with its
    aliases: ``"categorical_crossentropy"``, ``"CategoricalCrossentropy"``,
    ``"kld"``), or by its registered name (``"safeops>gaussian_nll"``); the
    losses only safeops has are found by their bare names too
    (``"gaussian_nll"``, ``"TverskyLoss"``). A dict is a serialized loss
    (``keras.losses.serialize(loss)``, or Keras' short form
    ``{"class_name": ..., "config": {...}}``); ``None`` and callables are
    returned as they are, as in Keras. When Keras resolves the identifier to
    a loss that safeops replaces, the safeops function is returned, or an
    instance of the safeops class built from the same config. Any other
    loss is Keras' own.

    A dict naming a replaced class is built by the safeops class from the
    dict's own config, every key of it, rather than by Keras' class first:
    Keras' ``get_config`` has no ``dtype`` (nor ``axis``, for the sparse
    cross-entropy), so going through a Keras instance would silently reset
    them to their defaults, and Keras' constructor refuses safeops' keyword
    ``check_finite``. So ``get(keras.losses.serialize(loss))`` rebuilds
    ``loss`` with an equal ``get_config()``.

    Raises:
      ValueError: Keras cannot interpret ``identifier``.

    Example:

    >>> from safeops import losses
    >>> losses.get("binary_crossentropy") is losses.binary_crossentropy
    True
    >>> type(losses.get({"class_name": "BinaryCrossentropy", "config": {"from_logits": True}})).__module__
    'safeops.losses._crossentropy'
    >>> losses.get("safeops>gaussian_nll") is losses.gaussian_nll
    True
    """
    if isinstance(identifier, str):
        ours = _own(identifier)
        if ours is not None:
            return ours() if _inspect.isclass(ours) else ours
    if isinstance(identifier, dict):
        ours = _replacing_class(identifier)
        if ours is not None:
            return ours.from_config(dict(identifier.get("config") or {}))
    obj = _keras.losses.get(identifier)
    if not isinstance(identifier, (str, dict)):
        return obj
    if _inspect.isfunction(obj):
        return _REPLACED.get(obj, obj)
    ours = _REPLACED.get(type(obj))
    return obj if ours is None else ours.from_config(obj.get_config())


def deserialize(name, custom_objects=None):
    """``keras.losses.deserialize``, resolved to safeops' loss as :func:`get` resolves it.

    ``name`` is a loss's name or serialized dict, as for Keras: a function's
    name gives the function (safeops' where it replaces Keras' one), a class
    name or a dict gives an instance, built by the safeops class from the
    dict's own config where safeops replaces that class. An entry of
    ``custom_objects`` under the same name wins, as in Keras. Anything else
    (``None``, the losses safeops does not replace) is Keras' answer.

    Example:

    >>> from safeops import losses
    >>> losses.deserialize("kl_divergence") is losses.kl_divergence
    True
    >>> type(losses.deserialize("BinaryCrossentropy")).__module__
    'safeops.losses._crossentropy'
    """
    key = name.get("class_name") if isinstance(name, dict) else name
    if not (isinstance(key, str) and custom_objects and key in custom_objects):
        if isinstance(name, dict) and _replacing_class(name) is not None:
            return get(name)
        if isinstance(name, str):
            ours = _own(name)  # a registered name, or one Keras has not
            if ours is None and _CLASSES.get(name) in _REPLACED.values():
                ours = _CLASSES[name]  # Keras' answer is a wrapper of its function, not its class
            if ours is not None:
                return ours() if _inspect.isclass(ours) else ours
    obj = _keras.losses.deserialize(name, custom_objects)
    return _REPLACED.get(obj, obj) if _inspect.isfunction(obj) else obj


def _own(name):
    """The loss a registered name (``"package>name"``) or the bare name of a safeops-only loss stands for."""
    if ">" not in name:
        return _ONLY_OURS.get(name)
    obj = _keras.saving.get_registered_object(name)
    if _inspect.isfunction(obj) or (_inspect.isclass(obj) and issubclass(obj, _keras.losses.Loss)):
        return obj
    return None  # not a loss: Keras' get says it cannot interpret the name


def _replacing_class(identifier):
    """The safeops class that builds a serialized loss from its config: None to leave it to Keras.

    A dict with a registered name of its own (``"safeops>BinaryFocalCrossentropy"``,
    or a user's ``loss_class``) is left to Keras' registry, which builds
    that class from the whole config. Otherwise ``class_name`` is looked up
    among safeops' classes, whose names are those of the Keras classes they
    replace.
    """
    class_name = identifier.get("class_name")
    registered = identifier.get("registered_name")
    if registered and registered != class_name:
        return None
    return _CLASSES.get(class_name) if isinstance(class_name, str) else None


# Keras' function or class -> safeops' one of the same name.
_REPLACED = {getattr(_keras.losses, _name): globals()[_name]
             for _name in __all__ if hasattr(_keras.losses, _name)}

# safeops' Loss classes by class name (the wrapper included).
_CLASSES = {_name: _obj for _name, _obj in list(globals().items())
            if _inspect.isclass(_obj) and issubclass(_obj, _keras.losses.Loss)}

# The losses Keras' get has no name for, by name (Keras 3.15 exports the
# generalized cross-entropy but its get refuses both names).
_ONLY_OURS = {_name: globals()[_name] for _name in (
    "gaussian_nll", "GaussianNLL", "kl_divergence_with_logits", "KLDivergenceWithLogits",
    "tversky_loss", "TverskyLoss", "info_nce", "InfoNCE",
    "categorical_generalized_cross_entropy", "CategoricalGeneralizedCrossEntropy")}

__getattr__, __dir__ = _dropin.forward_rest(__name__, globals(), lambda: _keras.losses, "keras.losses")

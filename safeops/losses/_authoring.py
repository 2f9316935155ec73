"""Custom-loss authoring: a per-example function in, a well-behaved Keras ``Loss`` out.

Every ``Loss`` class of :mod:`safeops.losses` is a :class:`LossFunctionWrapper`
around its function, as in Keras 3 (``keras/src/losses/losses.py``), and
:func:`loss_class` makes the same kind of class from a user's function. So
one code path decides, for all of them:

* **reduction and ``sample_weight``**: Keras' own ``Loss.__call__`` (the
  wrapper calls it), so ``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
  ``"mean_with_sample_weight"`` and ``None``, sample weights of any
  broadcastable rank and Keras masks (``_keras_mask`` on ``y_pred``, or on
  the per-example losses, as ``ignore_class`` sets it) behave exactly as in
  Keras;
* **precision**: the loss is computed in float32 when its dtype policy says
  float16 or bfloat16 (``dtype="mixed_float16"``) and rounded once to that
  dtype on the way out, the dtype Keras' loss returns (the default,
  ``keras.backend.floatx()``, stays float32 under a global mixed policy, as
  in Keras); a half-precision ``y_pred`` is widened before the function
  sees it; the logits record of
  :mod:`safeops._probabilities` and the Keras mask travel with it,
  and the gradient handed back to it saturates at the half dtype's largest
  value instead of overflowing to ``inf`` while the loss is at unit scale
  (its upstream gradient at most 1). A float16 ``y_pred``'s gradient under
  a larger scale (a loss-scale optimizer's, which ``mixed_float16`` in
  ``compile`` adds) overflows as Keras' own loss's does, so that the
  optimizer sees it, skips the step and lowers its scale
  (:func:`safeops._gradient.loss_scaled_cast`); saturated, it took a
  clipped step every time;
* **tf.distribute**: Keras' reduction divides the mean reductions by the
  number of replicas in sync (``scale_loss_for_distribution``), so the
  per-replica gradients that the strategy sums are those of the global mean
  loss (for equal per-replica batches, as Keras assumes); ``"sum"`` is not
  scaled, and sums across replicas;
* **saving**: ``get_config``/``from_config`` carry the function's keyword
  options and every argument of the class (``reduction``, ``name``,
  ``dtype``, ``check_finite``), and every class, :class:`LossFunctionWrapper`
  itself and every loss function of :mod:`safeops.losses` is registered with
  ``keras.saving.register_keras_serializable`` (package ``"safeops"`` for the
  built-in ones), so a model compiled with any of them, class or function,
  saved as ``.keras`` loads back with that very loss and no
  ``custom_objects``. The registration of the functions matters more than
  it looks: Keras saves an unregistered function by its bare name and, on
  loading, looks that name up among its own losses first, so
  ``safeops.losses.binary_crossentropy`` would come back as Keras'
  ``binary_crossentropy`` (with its clip and dead gradient) without a word,
  and ``gaussian_nll``, which Keras lacks, would not load at all. Registered,
  it is saved as ``"safeops>binary_crossentropy"``, a name Keras looks up in
  its registry, where only safeops' function is;
* **a finite check**, off by default: ``check_finite=True`` adds a graph
  assertion that the per-example losses are finite, failing with
  ``<loss name> (<class>): per-example loss must be finite, got [...]``. It
  runs in eager mode and inside ``tf.function``; TensorFlow 2.21 drops
  assertions under ``jit_compile=True``, and ``safeops.set_validation(False)``
  turns it off.
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings

import keras
import tensorflow as tf
from keras.src.losses.loss import squeeze_or_expand_to_same_rank

from safeops import _dtypes, _gradient, _probabilities, _validate

_REDUCTION = "sum_over_batch_size"


@keras.saving.register_keras_serializable(package="safeops")
class LossFunctionWrapper(keras.losses.Loss):
    """A ``keras.losses.Loss`` computing ``fn(y_true, y_pred, **kwargs)`` per example.

    Keras' ``LossFunctionWrapper`` with three changes: half-precision policies
    compute in float32 (the result is rounded once to the policy's dtype, as
    Keras returns it), the logits record of a ``y_pred`` survives the
    widening cast and the rank alignment, and ``check_finite`` can assert
    that the per-example losses are finite.

    Args:
      fn: ``fn(y_true, y_pred, **kwargs) -> per-example losses`` (one value
        per example, or per example and position, as Keras' losses return).
        It must be registered with ``keras.saving.register_keras_serializable``
        for a model using this wrapper directly to be saved (the functions of
        :mod:`safeops.losses` are). An unregistered function is saved by its
        bare name, which Keras resolves to its own loss of that name if it
        has one.
      reduction: Keras' reduction: ``"sum_over_batch_size"`` (default),
        ``"sum"``, ``"mean"``, ``"mean_with_sample_weight"``, ``"none"`` or
        ``None``.
      name: Name of the loss instance.
      dtype: Dtype or ``keras.DTypePolicy`` of the result; half precision
        is computed in float32 (``self.dtype``) and rounded once. Defaults
        to ``keras.backend.floatx()``.
      check_finite: Keyword-only. If true, a non-finite per-example loss
        raises ``tf.errors.InvalidArgumentError`` naming the loss.
      **kwargs: Keyword options passed to ``fn`` (and saved in the config).
    """

    def __init__(self, fn, reduction=_REDUCTION, name=None, dtype=None, *, check_finite=False, **kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        # Keras' __call__ converts and reduces in self.dtype: the wide one.
        self._result_dtype = self._dtype
        self._dtype = _dtypes.compute_dtype(tf.as_dtype(self._dtype)).name
        self.fn = fn
        self.check_finite = bool(check_finite)
        self._fn_kwargs = kwargs

    def __call__(self, y_true, y_pred, sample_weight=None):
        # A float16 y_pred's gradient saturates at 65504 for the loss at unit
        # scale only; scaled up by a loss-scale optimizer it overflows, as
        # the optimizer needs it to (safeops._gradient.loss_scaled_cast).
        handle = None
        if _loss_scale_aware(y_pred, self.dtype):
            wide, handle = _gradient.loss_scaled_cast(y_pred, self.dtype)
            y_pred = _probabilities.carry(y_pred, wide, identical=True)
        y_pred = keras.tree.map_structure(
            lambda t: _probabilities.cast_keeping_logits(t, self.dtype), y_pred)
        loss = super().__call__(y_true, y_pred, sample_weight)
        if handle is not None:
            loss = _gradient.report_scale(loss, handle)
        if self._result_dtype == self._dtype:
            return loss
        return keras.tree.map_structure(lambda t: _rounded(t, self._result_dtype), loss)

    def call(self, y_true, y_pred):
        if keras.tree.is_nested(y_true) or keras.tree.is_nested(y_pred):
            pairs = keras.tree.map_structure(_aligned, y_true, y_pred)
            y_true = keras.tree.map_structure_up_to(y_true, lambda p: p[0], pairs)
            y_pred = keras.tree.map_structure_up_to(y_pred, lambda p: p[1], pairs)
        else:
            y_true, y_pred = _aligned(y_true, y_pred)
        losses = self.fn(y_true, y_pred, **self._fn_kwargs)
        if self.check_finite:
            losses = _checked_finite(losses, f"{self.name} ({type(self).__name__})")
        return losses

    def get_config(self):
        """Every constructor argument, so that ``from_config(get_config())`` rebuilds this loss.

        Keras' ``Loss.get_config`` leaves ``dtype`` out (a float64 loss comes
        back float32); here it is the name of the dtype policy the loss was
        built with (``"float64"``, ``"mixed_float16"``). The bare wrapper
        also saves ``fn``, through Keras' serializer: a registered function
        (every one of :mod:`safeops.losses`) is saved under its registered
        name, ``"safeops>binary_crossentropy"``, and comes back as itself.
        """
        config = {"name": self.name, "reduction": self.reduction, "dtype": self._dtype_policy.name,
                  "check_finite": self.check_finite}
        config.update(self._fn_kwargs)
        if type(self) is LossFunctionWrapper:
            config["fn"] = keras.saving.serialize_keras_object(self.fn)
            _warn_if_unregistered(self.fn)
        return config

    @classmethod
    def from_config(cls, config):
        """The loss of :meth:`get_config`'s ``config``; ``fn`` (a serialized function) is resolved first."""
        config = dict(config)
        if "fn" in config:
            config["fn"] = keras.saving.deserialize_keras_object(config["fn"])
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__}({getattr(self.fn, '__name__', self.fn)}, kwargs={self._fn_kwargs})>"


_WARNED: set = set()


def _warn_if_unregistered(fn) -> None:
    """Warns, once per function, that a saved wrapper of an unregistered ``fn`` will not load by itself."""
    registered = keras.saving.get_registered_object(keras.saving.get_registered_name(fn))
    if registered is fn or id(fn) in _WARNED:
        return
    _WARNED.add(id(fn))
    warnings.warn(
        f"safeops.losses.LossFunctionWrapper: fn {getattr(fn, '__name__', fn)!r} is not registered with "
        "keras.saving.register_keras_serializable, so it is saved by its bare name: loading the model "
        "needs it in custom_objects (or resolves Keras' own loss of that name). Register it, or build the "
        "loss with safeops.losses.loss_class, which registers it.", UserWarning, stacklevel=3)


def loss_class(fn=None, *, name=None, package="safeops_custom", check_finite=False):
    """Turns ``fn(y_true, y_pred, **options) -> per-example loss`` into a registered Loss class.

    Called as ``loss_class(fn, ...)``, or as a decorator, bare
    (``@loss_class``) or with options (``@loss_class(name="dice")``).

    The class takes Keras' ``reduction``, ``name`` and ``dtype``, the
    keyword-only ``check_finite``, and ``fn``'s own options by keyword (their
    defaults are ``fn``'s); it behaves as described in the module docstring
    (Keras reduction and ``sample_weight``, float32 under mixed precision,
    replica scaling under ``tf.distribute``, ``.keras`` saving). It is
    registered as ``<package>><name>`` with
    ``keras.saving.register_keras_serializable``, so loading a saved model
    only needs the module that defines it to be imported. Options must be
    JSON-serialisable (numbers, strings, lists) to be saved.

    Write ``fn`` with ``safeops.math``/``safeops.nn`` ops so its value and
    gradient stay finite; it receives float32 tensors under mixed precision.

    Args:
      fn: The per-example loss: ``fn(y_true, y_pred, **options)``; every
        parameter after the first two must have a default. None: return the
        decorator that takes it.
      name: The class name; defaults to ``fn``'s name in CamelCase.
      package: The registration package (``"safeops_custom"``).
      check_finite: The default of the class's ``check_finite`` option.

    Returns:
      A subclass of :class:`LossFunctionWrapper`.

    Raises:
      TypeError: ``fn`` is not callable, or an option has no default. The
        class raises ``TypeError`` for an option ``fn`` does not take.

    Example (the two worked examples are :func:`safeops.losses.tversky_loss`
    and :func:`safeops.losses.info_nce`):

    >>> import tensorflow as tf
    >>> from safeops import losses
    >>> import safeops.math as tfm
    >>> def squared_log_ratio(y_true, y_pred, scale=1.0):
    ...     return scale * tf.reduce_mean(tf.square(tfm.log(y_pred) - tfm.log(y_true)), -1)
    >>> SquaredLogRatio = losses.loss_class(squared_log_ratio, package="doctest")
    >>> loss = SquaredLogRatio(scale=2.0)
    >>> round(float(loss([[1.0, 1.0]], [[1.0, 0.0]])), 1)   # log(0) is clamped, not -inf
    7627.7
    >>> SquaredLogRatio.from_config(loss.get_config()).get_config()["scale"]
    2.0
    """
    op = "safeops.losses.loss_class"
    if fn is None:   # @loss_class(name=...): the decorator
        return functools.partial(loss_class, name=name, package=package, check_finite=check_finite)
    if not callable(fn):
        raise TypeError(_validate.message(op, "fn", "a callable fn(y_true, y_pred, **options)", type(fn).__name__))
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):   # some builtins: taken on trust
        signature = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY)
                                       for n in ("y_true", "y_pred")])
    parameters = list(signature.parameters.values())[2:]
    options = {}
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise TypeError(_validate.message(
                op, f"option {p.name!r} of {_name_of(fn)}", "given a default", "none"))
        options[p.name] = p.default
    try:   # with every option defaulted, a fn that cannot take (y_true, y_pred) fails here
        signature.bind(None, None)
    except TypeError:
        raise TypeError(_validate.message(
            op, "fn", "a callable fn(y_true, y_pred, **options)", f"{_name_of(fn)}{signature}")) from None
    fn_name = _name_of(fn)
    class_name = name or _camel_case(fn_name)
    default_check = bool(check_finite)

    def __init__(self, reduction=_REDUCTION, name=fn_name, dtype=None, *, check_finite=default_check,
                 **kwargs):
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            raise TypeError(_validate.message(
                class_name, "options", f"among {sorted(options)}", ", ".join(unknown)))
        LossFunctionWrapper.__init__(self, fn, reduction=reduction, name=name, dtype=dtype,
                                     check_finite=check_finite, **{**options, **kwargs})

    cls = type(class_name, (LossFunctionWrapper,), {
        "__init__": __init__,
        "__doc__": (f"Loss class of ``{fn_name}`` made by ``safeops.losses.loss_class``.\n\n"
                    f"{fn.__doc__ or ''}"),
        "__module__": getattr(fn, "__module__", __name__),
    })
    return keras.saving.register_keras_serializable(package=package, name=class_name)(cls)


def _loss_scale_aware(y_pred, dtype) -> bool:
    """Whether ``y_pred`` is one float16 tensor widened here, whose gradient may be asked for."""
    if not isinstance(y_pred, tf.Tensor) or y_pred.dtype != tf.float16 or tf.as_dtype(dtype) == tf.float16:
        return False
    return not tf.executing_eagerly() or _gradient.watched_eagerly(y_pred)


def _name_of(fn) -> str:
    """``fn``'s name; a ``functools.partial`` (no ``__name__``) goes by its function's."""
    inner = getattr(fn, "func", None)
    return getattr(fn, "__name__", None) or getattr(inner, "__name__", None) or type(fn).__name__


def _aligned(y_true, y_pred):
    """Keras' rank alignment of the pair, with ``y_pred``'s logits record kept."""
    new_true, new_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    return new_true, _probabilities.carry(y_pred, new_pred)


def _rounded(loss, dtype: str):
    """``loss`` rounded once to ``dtype``, keeping a Keras mask (``reduction=None``)."""
    out = tf.cast(loss, dtype)
    mask = getattr(loss, "_keras_mask", None)
    if mask is not None:
        out._keras_mask = mask
    return out


def _checked_finite(losses, who: str):
    checks = _validate.assert_that(
        tf.reduce_all(tf.math.is_finite(losses)), who, "per-example loss", "finite", losses)
    if not checks:
        return losses
    with tf.control_dependencies(checks):
        checked = tf.identity(losses)
    mask = getattr(losses, "_keras_mask", None)
    if mask is not None:
        checked._keras_mask = mask
    return checked


def _camel_case(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"_+", snake) if part)

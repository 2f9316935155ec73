"""The state :class:`NaNGuard` copies and restores, and the learning rate it lowers.

* On-device copies of variables, saved and restored bit for bit in one graph
  call each (:class:`_StateCopy`, :func:`_graph_call`), and the model's
  variables and layers they are made from.
* :class:`ScaledSchedule` and :class:`_ScaledCallable`, which wrap a schedule
  or callable learning rate in a scale variable that a rollback lowers inside
  the traced step, and the helpers that read and lower the learning rate.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from safeops._validate import is_real_number, message

_OP = "safeops.debug.NaNGuard"   # the name in error messages, here and in NaNGuard
_FLOATS = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
_RARE_CALLS = 16     # calls of a rarely made copy that run eagerly before it is traced


# --------------------------------------------------------------------------- schedule


@keras.saving.register_keras_serializable(package="safeops")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule times a scale that :class:`NaNGuard` lowers on rollback.

    ``lr(step) = scale * schedule(step)``; ``scale`` is a variable, so lowering
    it takes effect inside an already traced training step.
    """

    def __init__(self, schedule, scale: float = 1.0):
        if not callable(schedule):
            # Else "'float' object is not callable" at the optimizer's first step.
            raise TypeError(message("safeops.debug.ScaledSchedule", "schedule",
                                    "a learning-rate schedule (callable on the step)", repr(schedule)))
        if not is_real_number(scale) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(message("safeops.debug.ScaledSchedule", "scale", "a finite number > 0",
                                     repr(scale)))
        self.schedule = schedule
        self.scale = keras.Variable(float(scale), dtype="float32", trainable=False,
                                    name="nanguard_lr_scale")

    def __call__(self, step):
        value = self.schedule(step)
        return value * tf.cast(self.scale, value.dtype)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "scale": float(self.scale.numpy())}

    @classmethod
    def from_config(cls, config):
        schedule = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(schedule, config.get("scale", 1.0))


class _ScaledCallable:
    """A zero-argument learning-rate callable (``SGD(learning_rate=lambda: 0.1)``) times a scale.

    ``lr() = scale * fn()``. Keras calls a callable learning rate inside the
    traced step, so, as for :class:`ScaledSchedule`, the scale is a variable
    that a rollback lowers without retracing. A callable is not serialisable
    by Keras, so neither is this wrapper.
    """

    def __init__(self, fn):
        self.fn = fn
        self.scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="nanguard_lr_scale")

    def __call__(self):
        value = tf.convert_to_tensor(self.fn())
        if not value.dtype.is_floating:       # `lambda: 1` would otherwise scale in integers
            value = tf.cast(value, tf.float32)
        return value * tf.cast(self.scale, value.dtype)


def _inner_optimizer(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def _get_learning_rate(optimizer) -> float:
    try:
        return float(np.asarray(_inner_optimizer(optimizer).learning_rate))
    except Exception:  # noqa: BLE001 - an exotic optimizer without a readable rate
        return math.nan


def _scale_learning_rate(optimizer, factor: float, base: float) -> float:
    """Sets the learning rate to ``base * factor`` (a float rate, or the scale of a
    :class:`ScaledSchedule`, which is not an optimizer variable and so was not
    restored); returns the new value."""
    opt = _inner_optimizer(optimizer)
    current = getattr(opt, "_learning_rate", None)
    if isinstance(current, (ScaledSchedule, _ScaledCallable)):
        current.scale.assign(current.scale * factor)
    elif isinstance(current, keras.optimizers.schedules.LearningRateSchedule) or callable(current):
        raise TypeError(message(_OP, "the optimizer's learning_rate",
                                "a float or a LearningRateSchedule to be lowered", type(current).__name__))
    else:
        opt.learning_rate = base * factor
    return _get_learning_rate(optimizer)


# --------------------------------------------------------------------------- state copies


def _tf_variable(v):
    """The ``tf.Variable`` under a Keras variable (TensorFlow backend)."""
    inner = getattr(v, "value", v)
    return inner if isinstance(inner, tf.Variable) else v


def _graph_call(fn, eager_calls: int = 0):
    """``fn`` (no arguments) as one graph call, traced after its first ``eager_calls`` calls.

    Tracing costs about 1.5 ms per variable touched, some 60 eager runs of ``fn`` (measured
    on a shared 2-core CPU over ~600 variables: trace 0.9 s, eager copy 16 ms, graph call
    1.6 ms), so a copy that is rarely made (checkpoints, restores) runs eagerly until it has
    been called ``eager_calls`` times. The traced ``ConcreteFunction`` is then called directly:
    a ``tf.function`` call first looks up its trace by hashing the function type, which holds
    every captured variable, and that was 40% of the cost of a call (2.6 ms instead of 1.6 ms).
    """
    concrete, calls = None, 0

    def call():
        nonlocal concrete, calls
        calls += 1
        if concrete is None and calls <= eager_calls:
            return fn()
        if concrete is None:
            concrete = tf.function(fn, autograph=False).get_concrete_function()
        return concrete()

    return call


class _StateCopy:
    """An on-device copy of a list of variables, saved and restored bit for bit."""

    def __init__(self, variables: list, every_step: bool):
        self.sources = [_tf_variable(v) for v in variables]
        self.copies = [tf.Variable(tf.zeros(s.shape, s.dtype), trainable=False) for s in self.sources]
        self.step: int | None = None
        # One graph call per save (traced at once for a copy made before every step) or restore.
        self._save = _graph_call(lambda: self._assign_all(True), 0 if every_step else _RARE_CALLS)
        self._restore = _graph_call(lambda: self._assign_all(False), _RARE_CALLS)

    def _assign_all(self, to_copies: bool):
        for copy, source in zip(self.copies, self.sources):
            if to_copies:
                copy.assign(source)
            else:
                source.assign(copy)

    def save(self, step: int | None = None) -> None:
        if self.sources:
            self._save()
        self.step = step

    def restore(self) -> None:
        if self.sources:
            self._restore()

    def numpy(self) -> list[np.ndarray]:
        return [c.numpy() for c in self.copies]


def _dedupe(variables) -> list:
    seen, out = set(), []
    for v in variables:
        key = id(_tf_variable(v))
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _global_norm(variables) -> tuple[float, int]:
    """Global norm (in float64, on the device) and size of the floating-point ``variables``."""
    floats = [v for v in variables if tf.as_dtype(v.dtype) in _FLOATS]
    if not floats:
        return 0.0, 0
    squares = tf.add_n([tf.reduce_sum(tf.square(tf.cast(_tf_variable(v), tf.float64))) for v in floats])
    return math.sqrt(float(squares)), sum(int(np.prod(v.shape)) for v in floats)


def _layers(model) -> list:
    """Layers in forward order, nested models flattened."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_layers(layer))
        else:
            out.append(layer)
    return out


def _reads_indices(model) -> bool:
    """Whether the model's integer inputs are indices (token or category ids), not numbers.

    True for a model that declares an integer input or has an ``Embedding``
    layer: the scale of such an input says nothing about its features, and
    standardising it would corrupt it.
    """
    try:
        declared = [tf.as_dtype(t.dtype) for t in tf.nest.flatten(model.inputs)]
    except Exception:  # noqa: BLE001 - a subclassed or unbuilt model declares none
        declared = []
    if any(d.is_integer or d == tf.bool for d in declared):
        return True
    return any(isinstance(layer, keras.layers.Embedding) for layer in _layers(model))


def _layer_names_by_variable(model) -> dict:
    names = {}
    for layer in _layers(model):
        for v in layer.weights:
            names.setdefault(id(_tf_variable(v)), layer.name)
    return names


def _fully_built(model) -> bool:
    """Whether every variable that Keras would otherwise create while tracing the first step
    exists: the layers', the compiled metrics' and losses' (the optimizer's slots the guard
    builds itself, once the weights exist)."""
    if not model.built or not all(layer.built for layer in _layers(model)):
        return False
    compiled = (getattr(model, "_compile_metrics", None), getattr(model, "_compile_loss", None))
    return all(getattr(part, "built", True) for part in compiled if part is not None)

"""Recovering the logits behind probabilities, so a loss can stay in log space.

A loss called with ``from_logits=False`` receives probabilities. When they
came straight from a sigmoid or a softmax, the logits that produced them are
still reachable, and a loss computed from the logits is exact where the
probabilities have already rounded to 0 or 1 (``sigmoid(-100)`` is 0 in
float32: the exact binary cross-entropy at label 1 is 100, any formula on
the probability can only guess). safeops looks for the logits in this order
and takes the first it finds:

1. **The safeops record** (``_safeops_logits``), attached by
   :func:`with_logits` and by ``safeops.math.softmax`` and ``sigmoid`` (and
   so ``safeops.nn``'s) to their outputs: ``(activation, axis, logits)``.
   Trusted as stated; it works in eager mode, inside ``tf.function`` and
   under XLA, because it is a Python attribute of the tensor object that the
   loss receives.
2. **Keras' attribute** (``_keras_logits``), which Keras 3 sets on the
   output of ``keras.activations.sigmoid``/``softmax`` (and so of any layer
   with ``activation="sigmoid"`` or ``"softmax"``), in eager mode and while
   tracing. Keras does not record *which* activation or axis made it, and
   uses it for both (a softmax output given to ``binary_crossentropy`` is
   then scored with sigmoid logits). safeops checks instead: in eager mode
   the attribute is accepted only if recomputing the activation from it
   (``tf.nn.sigmoid``, or ``tf.nn.softmax`` on the last axis, Keras'
   kernels) reproduces the probabilities bit for bit; in a graph the
   producing op (rule 3) decides, which needs no check.
3. **The producing op**, in a graph (``tf.function``, ``jit_compile``,
   Keras ``fit``): ``y_pred.op.type`` is ``"Sigmoid"`` or ``"Softmax"``
   (the fused softmax always works on the last axis), looking through
   ``Identity`` and float ``Cast`` ops on the way, so a float16 sigmoid
   output cast to float32 still yields its logits (Keras loses them).
   ``1 - p`` for such a sigmoid output ``p`` (a ``Sub`` op from a constant
   of ones) is ``sigmoid(-z)``, exactly: the hand-written binary
   cross-entropy's ``log(1 - p)`` is ``log_sigmoid(-z)``, where ``p``
   rounded to 1 (``z`` above 17 in float32) left ``log(0)``.

:func:`find_one_plus` finds the logits behind ``1 + u`` for ``u = -p`` (a
``Neg`` op), for ``log1p(-p)`` and ``xlog1py(y, -p)``.

Otherwise the loss uses the probabilities with the clamped logarithms of
:mod:`safeops.math` (finite value, live gradient, contract C4). That is what
happens, and can only happen, in eager mode to probabilities that carry no
record: the output of a raw ``tf.sigmoid``/``tf.nn.softmax`` call, a tensor
cast or reshaped by the caller, or the outputs of a reloaded SavedModel.
Inside a traced function, rule 3 also covers raw
``tf.sigmoid``/``tf.nn.softmax``. ``safeops.math.log`` and ``xlogy`` take
the logits by the same rules (``log`` of a softmax output is its
``log_softmax``).

When the logits are used, the loss is a function of the logits, not of the
probabilities tensor: its gradient reaches the logits (and the layer's
weights behind them, which is what training differentiates) and not a
``GradientTape`` watching ``y_pred`` itself, for which it is ``None``.

Records survive the casts and reshapes that the Loss classes themselves
apply (:func:`carry`), so a ``mixed_float16`` model whose last layer is a
sigmoid gets the same loss as a float32 one. The Loss classes' widening cast
also saturates the gradient it hands back to a half-precision ``y_pred`` at
that dtype's largest value, so a large float32 gradient never becomes
``inf`` in float16, for the loss at unit scale: under a loss-scale
optimizer's scale a float16 ``y_pred``'s gradient overflows as it must for
the optimizer to lower the scale (:mod:`safeops.losses._authoring`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _validate
from safeops._gradient import custom_op, watched_eagerly

_RECORD = "_safeops_logits"
_KERAS_LOGITS = "_keras_logits"
_KERAS_MASK = "_keras_mask"
_SOURCE_DTYPE = "_safeops_source_dtype"
ACTIVATIONS = ("sigmoid", "softmax")
_PASS_THROUGH = ("Identity", "Cast")


class Logits(NamedTuple):
    """What produced a tensor of probabilities: ``activation(logits)`` along ``axis``."""

    activation: str
    axis: int
    logits: tf.Tensor


def with_logits(probabilities, logits, activation, axis=-1):
    """Attaches the logits that produced ``probabilities``, for the losses to use.

    ``safeops.losses`` read this record (before Keras' ``_keras_logits``
    attribute and the producing op) when called with ``from_logits=False``,
    in eager mode, inside ``tf.function`` and under XLA alike. Use it where
    the probabilities are made by code the losses cannot see through: a raw
    ``tf.nn.softmax`` in an eager loop, a custom layer. The record is a
    Python attribute of the tensor object: it does not survive
    serialisation, ``tf.identity`` or arithmetic, and is not checked (it is
    trusted as given).

    Args:
      probabilities: The tensor the loss will receive (returned as given).
      logits: The tensor with ``probabilities == activation(logits)``, same
        shape.
      activation: ``"sigmoid"`` or ``"softmax"``.
      axis: The softmax axis (ignored for ``"sigmoid"``).

    Returns:
      ``probabilities``, now carrying the record.

    Raises:
      TypeError: ``probabilities`` or ``logits`` is not a ``tf.Tensor``, or
        ``axis`` is not an int.
      ValueError: ``activation`` is not one of the two, or the shapes differ.

    Example:

    >>> import tensorflow as tf
    >>> from safeops import losses
    >>> z = tf.constant([[-100.0]])
    >>> p = losses.with_logits(tf.sigmoid(z), z, "sigmoid")
    >>> float(losses.binary_crossentropy([[1.0]], p)[0])
    100.0
    """
    op = "safeops.losses.with_logits"
    if activation not in ACTIVATIONS:
        raise ValueError(_validate.message(op, "activation", '"sigmoid" or "softmax"', repr(activation)))
    for arg, value in (("probabilities", probabilities), ("logits", logits)):
        if not isinstance(value, tf.Tensor):   # the record is an attribute of this very object
            raise TypeError(_validate.message(op, arg, "a tf.Tensor", type(value).__name__))
    axis = _validate.static_axis(op, axis, probabilities.shape.rank, runtime=False)
    if not probabilities.shape.is_compatible_with(logits.shape):
        raise ValueError(_validate.message(
            op, "logits", f"of the shape of probabilities {probabilities.shape}", logits.shape))
    return record(probabilities, logits, activation, int(axis))


def record(probabilities, logits, activation: str, axis: int):
    """Attaches ``Logits(activation, axis, logits)`` to ``probabilities`` (checked by the caller); returns it.

    A tensor whose attributes cannot be set (none known in TensorFlow 2.21)
    or an axis known only when the graph runs leaves no record: the losses
    then use the values.
    """
    if not isinstance(axis, int):
        return probabilities
    try:
        setattr(probabilities, _RECORD, Logits(activation, axis, logits))
    except AttributeError:
        pass
    return probabilities


def recover_logits(y_pred, activation: str, axis: int):
    """The logits behind ``y_pred`` if ``activation`` along ``axis`` made it, else ``None``."""
    record = find(y_pred)
    if record is None or record.activation != activation:
        return None
    if activation == "softmax" and not _same_axis(record.axis, axis, y_pred.shape.rank):
        return None
    return record.logits


def carry(source, target, identical=False):
    """Moves what is known about ``source`` (logits, Keras mask) onto ``target``.

    ``target`` is ``source`` cast to another float dtype or reshaped (the
    rank alignment of the Loss classes), or (``identical``) an identity of
    it. A sigmoid record follows a reshape (the logits are reshaped alike);
    a softmax record only a shape-keeping cast or an identity. Returns
    ``target``.
    """
    if target is source or not isinstance(target, tf.Tensor):
        return target
    record = find(source)
    if record is not None:
        same_shape = identical or source.shape == target.shape and source.shape.is_fully_defined()
        if same_shape:
            setattr(target, _RECORD, record)
        elif record.activation == "sigmoid":
            logits = tf.reshape(record.logits, tf.shape(target))
            setattr(target, _RECORD, Logits("sigmoid", -1, logits))
    source_dtype = getattr(source, _SOURCE_DTYPE, None)
    if source_dtype is None and source.dtype.is_floating and source.dtype.size < target.dtype.size:
        source_dtype = source.dtype
    if source_dtype is not None:
        setattr(target, _SOURCE_DTYPE, source_dtype)
    mask = getattr(source, _KERAS_MASK, None)
    if mask is not None and getattr(target, _KERAS_MASK, None) is None and source.shape == target.shape:
        setattr(target, _KERAS_MASK, mask)
    return target


def source_dtype(value):
    """The dtype ``value`` had before :func:`carry`'s widening casts (its own if none)."""
    return getattr(value, _SOURCE_DTYPE, None) or value.dtype


def cast_keeping_logits(value, dtype):
    """``tf.cast(value, dtype)`` for float tensors, with :func:`carry` applied.

    A widened tensor also remembers its narrower source dtype, whose clamp
    bounds the probability path uses: a gradient of ``1/tiny(float32)``
    would be ``inf`` once cast back to a float16 ``y_pred``.
    """
    if not isinstance(value, (tf.Tensor, tf.Variable)) or not value.dtype.is_floating:
        return value
    dtype = tf.as_dtype(dtype)
    if value.dtype == dtype:
        return value
    if value.dtype.size < dtype.size:
        return carry(value, _saturating_widen(value.dtype, dtype)(value))
    return carry(value, tf.cast(value, dtype))


def saturating_cast(value: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """``tf.cast(value, dtype)`` (a wider or equal float dtype) whose gradient saturates at ``value``'s range.

    Eager, with no tape watching ``value`` (labels usually), a plain cast:
    the custom gradient's bookkeeping would be most of a small loss's cost.
    A ``tf.Variable`` is read first (a tape that watches it records the
    read); TensorFlow's test for a watched tensor raised ``SystemError`` on
    the variable itself.
    """
    if isinstance(value, tf.Variable):
        value = tf.convert_to_tensor(value)
    if tf.executing_eagerly() and not watched_eagerly(value):
        return tf.cast(value, dtype)
    return _saturating_widen(value.dtype, tf.as_dtype(dtype))(value)


@functools.lru_cache(maxsize=None)
def _saturating_widen(narrow: tf.DType, wide: tf.DType):
    """``tf.cast`` to ``wide`` whose gradient saturates at ``narrow``'s range.

    A loss computed in float32 on a float16 ``y_pred`` can have a finite
    float32 gradient beyond 65504 (a boundary gradient ``1/tiny``, a
    ``1/sqrt(floor)``); cast back to float16 it would be ``inf``. Saturated,
    it keeps its sign and stays finite (C1, C4); NaN passes through. With
    ``narrow == wide`` it is an identity that clips an infinite gradient.
    """
    return custom_op(
        lambda x: tf.cast(x, wide),
        lambda dy, y, x: (tf.cast(_dtypes.saturate(dy, narrow), x.dtype),),
        narrow,
    )


def find(y_pred):
    """The :class:`Logits` behind ``y_pred`` or ``None``: rule 1, then rule 2 (eager) or 3 (graph) above."""
    if not isinstance(y_pred, tf.Tensor):
        return None
    record = getattr(y_pred, _RECORD, None)
    if isinstance(record, Logits):
        return record
    if isinstance(y_pred, tf.__internal__.EagerTensor):
        # A value: no op to inspect. (An eager tensor captured by a traced
        # function has no values to check either.)
        return _checked_keras_logits(y_pred) if tf.executing_eagerly() else None
    return _producing_op(y_pred)


def find_one_plus(u):
    """The :class:`Logits` behind ``1 + u``, for ``u = -p`` (a ``Neg`` op) and ``p`` a sigmoid output.

    ``1 - sigmoid(z) = sigmoid(-z)``: ``log1p(-p)`` is ``log_sigmoid(-z)``.
    ``None`` in eager mode (a value has no op) and for anything else.
    """
    if not isinstance(u, tf.Tensor) or isinstance(u, tf.__internal__.EagerTensor) or u.op.type != "Neg":
        return None
    return _complement(find(u.op.inputs[0]))


def _complement(found):
    """``Logits`` of ``1 - p`` for a sigmoid record of ``p`` (``sigmoid(-z)``), else ``None``."""
    if found is None or found.activation != "sigmoid":
        return None
    return Logits("sigmoid", -1, -found.logits)


def _is_ones_for(ones, p) -> bool:
    """Whether ``ones`` is a constant of ones that ``ones - p`` broadcasts to ``p``'s shape."""
    value = tf.get_static_value(ones)
    if value is None or not np.all(value == 1):
        return False
    return np.size(value) == 1 and np.ndim(value) <= (p.shape.rank or 0) or \
        (p.shape.is_fully_defined() and tuple(np.shape(value)) == tuple(p.shape))


def _checked_keras_logits(y_pred):
    """Keras' ``_keras_logits``, if ``tf.nn.sigmoid``/``softmax`` of it is ``y_pred`` exactly."""
    logits = getattr(y_pred, _KERAS_LOGITS, None)
    if not isinstance(logits, tf.Tensor) or not logits.dtype.is_floating or logits.shape != y_pred.shape:
        return None
    if y_pred.shape.rank is None or y_pred.shape.rank == 0:
        return None
    probabilities = tf.cast(y_pred, logits.dtype)
    if bool(tf.reduce_all(tf.nn.sigmoid(logits) == probabilities)):
        return Logits("sigmoid", -1, logits)
    if bool(tf.reduce_all(tf.nn.softmax(logits, axis=-1) == probabilities)):
        return Logits("softmax", -1, logits)
    return None


def _producing_op(y_pred):
    """Walks back through Identity and float Cast ops to a Sigmoid or Softmax op (or ``1 - sigmoid``)."""
    t = y_pred
    for _ in range(8):
        op = getattr(t, "op", None)
        if op is None:
            return None
        if op.type == "Sigmoid":
            return Logits("sigmoid", -1, op.inputs[0])
        if op.type == "Softmax":
            return Logits("softmax", -1, op.inputs[0])
        if op.type == "Sub" and _is_ones_for(op.inputs[0], op.inputs[1]):
            return _complement(find(op.inputs[1]))
        if op.type not in _PASS_THROUGH or not op.inputs or not op.inputs[0].dtype.is_floating:
            return None
        t = op.inputs[0]
    return None


def _same_axis(a: int, b: int, rank) -> bool:
    if a == b:
        return True
    if rank is None:
        return False
    return a % rank == b % rank

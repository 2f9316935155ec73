"""Cross-entropies with Keras 3's names and arguments: binary, categorical, sparse.

Each function has two paths, and says which it takes:

* **logits** (``from_logits=True``, or ``from_logits=False`` with logits
  recovered as :mod:`safeops.losses._probabilities` describes): the stable
  cross-entropies of :mod:`safeops.nn`, exact for every finite logit;
* **probabilities** (nothing recovered): the clamped logarithms of
  :mod:`safeops.math`, whose value at a probability of 0 (or 1, for
  ``log(1 - p)``) is the value at the clamp and whose gradient there is the
  boundary gradient (contract C4), where Keras clips to
  ``[1e-7, 1 - 1e-7]`` and its gradient below the clip is exactly 0.

Values equal Keras' wherever Keras' clip is inactive (probabilities in
``[1e-7, 1 - 1e-7]``) and wherever it recovers the same logits; elsewhere
they are the exact losses (logits path) or the values at safeops' clamps.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import safeops.math as tfm
from safeops import _validate, nn
from safeops.losses import _common
from safeops.losses._authoring import LossFunctionWrapper

_REDUCTION = "sum_over_batch_size"


@keras.saving.register_keras_serializable(package="safeops")
def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    r"""Binary cross-entropy, averaged over ``axis``, finite with a live gradient.

    Formula: :math:`-\operatorname{mean}_{axis}\,[y \log p + (1 - y)\log(1 - p)]`
    with :math:`p = \sigma(z)` on logits; labels smoothed to
    :math:`y (1 - s) + s/2` (Keras).

    Stable rewrite: on logits (given or recovered),
    :func:`safeops.nn.sigmoid_cross_entropy_with_logits`, exact for every
    finite logit (``sigmoid(-100)`` is 0 in float32, the loss at label 1 is
    still 100). On probabilities, ``-(xlogy(y, p) + xlog1py(1 - y, -p))``
    with safeops' clamped ``log`` and ``log1p``. Keras clips ``p`` to
    ``[1e-7, 1 - 1e-7]``: the loss saturates at 16.1 and its gradient is 0
    beyond the clip (and Keras' eager path misses raw ``tf.sigmoid`` outputs).

    Edges:
      * Probability path, ``p = 0`` with ``y > 0``: value ``87.34 y``
        (float32; ``-log(tiny)``), gradient ``-y/tiny`` (-8.5e37 y);
        ``p = 1`` with ``y < 1``: value ``16.64 (1 - y)`` (``-log(eps/2)``),
        gradient ``(1 - y) 2/eps`` (1.7e7): finite, pointing back inside.
      * Probabilities outside ``[0, 1]``: ``InvalidArgumentError`` naming
        ``y_pred`` (eager and ``tf.function``; not under XLA).
      * Logits ``±inf`` and NaN: as ``safeops.nn.sigmoid_cross_entropy_with_logits``.
        NaN in ``y_pred`` gives NaN.

    Args:
      y_true: Labels in ``[0, 1]``, the shape of ``y_pred`` (any numeric dtype).
      y_pred: Probabilities, or logits with ``from_logits=True``; float16,
        bfloat16, float32 or float64 (half dtypes computed in float32).
      from_logits: Whether ``y_pred`` holds logits.
      label_smoothing: Float in ``[0, 1]``.
      axis: The axis the mean is taken over, a tuple of axes, or None for
        all (as Keras). Defaults to -1.

    Returns:
      The per-example loss, ``y_pred``'s shape without ``axis``, its dtype.

    Raises:
      TypeError: ``y_pred`` is not a float tensor, ``y_true`` not numeric.
      ValueError: the shapes differ or ``axis`` is out of range.

    Example:

    >>> from safeops import losses
    >>> losses.binary_crossentropy([[0.0, 1.0]], [[0.0, 0.5]]).numpy()
    array([0.3465736], dtype=float32)
    >>> losses.binary_crossentropy([[1.0]], [[-100.0]], from_logits=True).numpy()
    array([100.], dtype=float32)
    """
    op = "safeops.losses.binary_crossentropy"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, from_logits, "sigmoid", axis)
        axis = _common.check_axis(op, axis, pred.values.shape.rank, many=True)
        y = _common.labels_like(op, y_true, pred)
        _common.same_shape(op, y, pred.values)
        y = _common.smoothed_binary(y, label_smoothing)
        if pred.logits is not None:
            per_entry = nn.sigmoid_cross_entropy_with_logits(labels=y, logits=pred.logits)
        else:
            p = pred.probabilities()
            per_entry = -(pred.clamped(tfm.xlogy, y, p) + pred.clamped(tfm.xlog1py, 1.0 - y, -p))
        return pred.output(tf.reduce_mean(per_entry, axis))


@keras.saving.register_keras_serializable(package="safeops")
def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    r"""Categorical cross-entropy along ``axis``, finite with a live gradient.

    Formula: :math:`-\sum_j y_j \log(p_j / \sum_k p_k)` on probabilities
    (Keras normalises them), :math:`-\sum_j y_j \log\operatorname{softmax}(z)_j`
    on logits; labels smoothed to :math:`y (1 - s) + s/C` (Keras).

    Stable rewrite: both are :func:`safeops.nn.softmax_cross_entropy_with_logits`,
    on the logits (given or recovered) or on ``safeops.math.log(p)``, since
    ``softmax(log p) = p / sum(p)``. The log is clamped at ``tiny`` (C4), so a
    class whose probability is 0 costs ``87.34`` (float32) with gradient
    ``-y/tiny`` where Keras clips at ``1e-7`` (16.1, gradient 0). ``-inf``
    logits used as masks where the label is 0 cost nothing (``safeops.nn``).

    Edges:
      * Probability 0 at a labelled class: value ``87.34 y_j`` plus the
        normaliser (float32), gradient ``-y_j/tiny``; a row of zeros is a
        uniform distribution. Probabilities outside ``[0, 1]``:
        ``InvalidArgumentError`` naming ``y_pred`` (not under XLA).
      * Logits: as ``safeops.nn.softmax_cross_entropy_with_logits``
        (``-inf`` masks, all ``-inf`` rows, ``+inf`` and NaN).

    Args:
      y_true: Labels (one-hot or soft), the shape of ``y_pred``.
      y_pred: Probabilities, or logits with ``from_logits=True``; any float dtype.
      from_logits: Whether ``y_pred`` holds logits.
      label_smoothing: Float in ``[0, 1]``.
      axis: The class axis. Defaults to -1.

    Returns:
      The per-example loss, ``y_pred``'s shape without ``axis``, its dtype.

    Raises:
      TypeError: ``y_pred`` is not a float tensor, ``axis`` not an int.
      ValueError: the shapes differ or ``axis`` is out of range.

    Example:

    >>> from safeops import losses
    >>> losses.categorical_crossentropy([[0.0, 1.0, 0.0]], [[0.05, 0.95, 0.0]]).numpy()
    array([0.0512933], dtype=float32)
    >>> losses.categorical_crossentropy([[0.0, 1.0]], [[1e4, -1e4]], from_logits=True).numpy()
    array([20000.], dtype=float32)
    """
    op = "safeops.losses.categorical_crossentropy"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, from_logits, "softmax", axis)
        axis = _common.check_axis(op, axis, pred.values.shape.rank)
        y = _common.labels_like(op, y_true, pred)
        _common.same_shape(op, y, pred.values)
        y = _common.smoothed_categorical(y, label_smoothing, axis)
        logits = pred.logits if pred.logits is not None else pred.clamped(tfm.log, pred.probabilities())
        return pred.output(nn.softmax_cross_entropy_with_logits(y, logits, axis=axis))


@keras.saving.register_keras_serializable(package="safeops")
def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    r"""Cross-entropy for class indices, finite, loud on bad labels, with ``ignore_class``.

    Formula: :math:`-\log(p_k / \sum_j p_j)` on probabilities,
    :math:`-\log\operatorname{softmax}(z)_k` on logits, for the class index
    :math:`k` of each example.

    Stable rewrite: :func:`safeops.nn.sparse_softmax_cross_entropy_with_logits`
    on the logits (given or recovered) or on ``safeops.math.log(p)`` (clamped
    at ``tiny``, live gradient; Keras clips at ``1e-7``). A class axis other
    than the last is moved last (Keras refuses it).

    Edges:
      * ``ignore_class``: entries whose label equals it get loss 0 and are
        masked out of the reduction (Keras' ``_keras_mask``, so
        ``"sum_over_batch_size"`` averages over the other entries only),
        with zero gradient, whatever their ``y_pred``.
      * A label outside ``[0, num_classes)``: ``InvalidArgumentError`` naming
        ``labels`` and the range (eager and ``tf.function``); under XLA the
        row is NaN (see ``safeops.nn``).
      * Probability 0 at the labelled class: value ``87.34`` plus the
        normaliser (float32), gradient ``-1/tiny``.

    Args:
      y_true: Class indices (integer, or floats holding integers as Keras
        passes them), of shape ``y_pred.shape`` without ``axis`` (a trailing
        axis of size 1 is squeezed).
      y_pred: Probabilities, or logits with ``from_logits=True``.
      from_logits: Whether ``y_pred`` holds logits.
      ignore_class: Optional int label to ignore (e.g. -1 or 255).
      axis: The class axis. Defaults to -1.

    Returns:
      The per-example loss, the shape of the labels, ``y_pred``'s dtype.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: the shapes do not match or ``axis`` is out of range.

    Example:

    >>> from safeops import losses
    >>> losses.sparse_categorical_crossentropy([1, 2], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]).numpy()
    array([0.0512933, 2.3025851], dtype=float32)
    """
    op = "safeops.losses.sparse_categorical_crossentropy"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, from_logits, "softmax", axis)
        rank = pred.values.shape.rank
        axis = _common.check_axis(op, axis, rank)
        labels = _class_indices(op, y_true)
        if labels.shape.rank == rank and labels.shape[axis] == 1:
            labels = tf.squeeze(labels, axis)
        logits = pred.logits if pred.logits is not None else pred.clamped(tfm.log, pred.probabilities())
        if axis % rank != rank - 1:
            logits = tf.experimental.numpy.moveaxis(logits, axis, -1)
        valid = None
        if ignore_class is not None:
            valid = tf.not_equal(labels, tf.cast(ignore_class, labels.dtype))
            labels = tf.where(valid, labels, tf.zeros_like(labels))
            logits = tf.where(valid[..., None], logits, tf.zeros_like(logits))
        loss = nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        if valid is not None:
            loss = tf.where(valid, loss, tf.zeros_like(loss))
            loss._keras_mask = valid
        out = pred.output(loss)
        if valid is not None and out is not loss:
            out._keras_mask = valid
        return out


def _class_indices(op, y_true):
    """Integer labels: ints kept, floats truncated as Keras does, others refused."""
    y_true = y_true if isinstance(y_true, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(y_true)
    if y_true.dtype.is_integer:
        return _validate.integer_tensor(y_true, op, "y_true")
    if y_true.dtype.is_floating:
        return tf.cast(y_true, tf.int64)
    raise TypeError(_validate.message(op, "y_true", "integer class indices", y_true.dtype.name))


@keras.saving.register_keras_serializable(package="safeops")
class BinaryCrossentropy(LossFunctionWrapper):
    """Loss class of :func:`binary_crossentropy` (Keras 3's arguments and config).

    Args:
      from_logits, label_smoothing, axis: See :func:`binary_crossentropy`.
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction=_REDUCTION,
                 name="binary_crossentropy", dtype=None, *, check_finite=False):
        super().__init__(binary_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         check_finite=check_finite, from_logits=from_logits,
                         label_smoothing=label_smoothing, axis=axis)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


@keras.saving.register_keras_serializable(package="safeops")
class CategoricalCrossentropy(LossFunctionWrapper):
    """Loss class of :func:`categorical_crossentropy` (Keras 3's arguments and config).

    Args:
      from_logits, label_smoothing, axis: See :func:`categorical_crossentropy`.
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1, reduction=_REDUCTION,
                 name="categorical_crossentropy", dtype=None, *, check_finite=False):
        super().__init__(categorical_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         check_finite=check_finite, from_logits=from_logits,
                         label_smoothing=label_smoothing, axis=axis)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


@keras.saving.register_keras_serializable(package="safeops")
class SparseCategoricalCrossentropy(LossFunctionWrapper):
    """Loss class of :func:`sparse_categorical_crossentropy` (Keras 3's arguments).

    Args:
      from_logits, ignore_class, axis: See :func:`sparse_categorical_crossentropy`.
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, from_logits=False, ignore_class=None, reduction=_REDUCTION, axis=-1,
                 name="sparse_categorical_crossentropy", dtype=None, *, check_finite=False):
        super().__init__(sparse_categorical_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         check_finite=check_finite, from_logits=from_logits,
                         ignore_class=ignore_class, axis=axis)
        self.from_logits, self.ignore_class, self.axis = from_logits, ignore_class, axis

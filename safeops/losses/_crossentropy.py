"""Cross-entropies with Keras 3's names and arguments: binary, categorical, sparse.

Each function has two paths, and says which it takes:

* **logits** (``from_logits=True``, or ``from_logits=False`` with logits
  recovered as :mod:`safeops._probabilities` describes): the stable
  cross-entropies of :mod:`safeops.nn`, exact for every finite logit;
* **probabilities** (nothing recovered): logarithms clamped as in
  :mod:`safeops.math` (``xlogy``/``xlog1py`` for the binary loss; for the
  softmax ones, ``log(max(p, tiny))`` with the gradient of the whole loss
  written out, see the end of this module), whose value at a probability
  of 0 (or 1, for ``log(1 - p)``) is the value at the clamp and whose
  gradient there is the boundary gradient (contract C4), where Keras clips
  to ``[1e-7, 1 - 1e-7]`` and its gradient below the clip is exactly 0.

Values equal Keras' wherever Keras' clip is inactive (probabilities in
``[1e-7, 1 - 1e-7]``) and wherever it recovers the same logits; elsewhere
they are the exact losses (logits path) or the values at safeops' clamps.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from safeops import _dtypes, _validate, _xla, nn
from safeops._gradient import custom_op
from safeops.losses import _common
from safeops.nn import _softmax_xent
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
        ``y_pred`` (eager and ``tf.function``); under XLA, which drops the
        assertion, NaN loss and gradient at those entries.
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
        _common.check_number(op, "label_smoothing", label_smoothing, none=True)
        y = _common.smoothed_binary(y, label_smoothing)
        if pred.logits is not None:
            per_entry = nn.sigmoid_cross_entropy_with_logits(labels=y, logits=pred.logits)
        else:
            p = pred.probabilities()
            per_entry = -(pred.xlogy(y, p) + pred.xlog1py(1.0 - y, -p))
        return pred.output(_common.mean(per_entry, axis))


@keras.saving.register_keras_serializable(package="safeops")
def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    r"""Categorical cross-entropy along ``axis``, finite with a live gradient.

    Formula: :math:`-\sum_j y_j \log(p_j / \sum_k p_k)` on probabilities
    (Keras normalises them), :math:`-\sum_j y_j \log\operatorname{softmax}(z)_j`
    on logits; labels smoothed to :math:`y (1 - s) + s/C` (Keras).

    Stable rewrite: both are :func:`safeops.nn.softmax_cross_entropy_with_logits`,
    on the logits (given or recovered) or on :math:`\log c`,
    :math:`c = \max(p, tiny)`, since ``softmax(log c) = c / sum(c)``. The
    clamp at ``tiny`` (C4) makes a class whose probability is 0 cost
    ``87.34`` (float32) with gradient ``-y/tiny`` where Keras clips at
    ``1e-7`` (16.1, gradient 0). On probabilities the gradient is written
    directly, :math:`\partial L/\partial p_j = \sum_k y_k / \sum_k c_k - y_j / c_j`:
    through ``softmax(log c)`` it formed ``c_j / sum(c)``, which TensorFlow
    flushes to 0 below ``tiny``, so the gradient at a probability 0 died (0
    for every class of ``p = [1, 0, 0]`` in float32). ``-inf`` logits used as
    masks where the label is 0 cost nothing (``safeops.nn``).

    Edges:
      * Probability 0 at a labelled class: value ``87.34 y_j`` plus the
        normaliser (float32), gradient ``-y_j/tiny``; a row of zeros is a
        uniform distribution. Probability 0 at an unlabelled class: gradient
        ``sum(y) / sum(c)`` (1 for normalised probabilities, as in Keras),
        the same in every dtype; for float16 and bfloat16 such a class is
        clamped at float32's ``tiny``, not its dtype's, so that zeros do not
        weigh in the normaliser (a float16 softmax that underflowed). Probabilities outside ``[0, 1]``:
        ``InvalidArgumentError`` naming ``y_pred`` (under XLA, which drops
        the assertion: NaN loss and gradient there).
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
    array([0.05129329], dtype=float32)
    >>> losses.categorical_crossentropy([[0.0, 1.0]], [[1e4, -1e4]], from_logits=True).numpy()
    array([20000.], dtype=float32)
    """
    op = "safeops.losses.categorical_crossentropy"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, from_logits, "softmax", axis)
        axis = _common.check_axis(op, axis, pred.values.shape.rank)
        y = _common.labels_like(op, y_true, pred)
        _common.same_shape(op, y, pred.values)
        _common.check_number(op, "label_smoothing", label_smoothing, none=True)
        y = _common.smoothed_categorical(y, label_smoothing, axis)
        if pred.logits is not None:
            return pred.output(nn.softmax_cross_entropy_with_logits(y, pred.logits, axis=axis))
        p = pred.probabilities()
        floor = _dtypes.tiny(pred.clamp_dtype)
        return pred.output(_probability_xent(axis, floor, pred.clamp_dtype)(y, p))


@keras.saving.register_keras_serializable(package="safeops")
def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    r"""Cross-entropy for class indices, finite, loud on bad labels, with ``ignore_class``.

    Formula: :math:`-\log(p_k / \sum_j p_j)` on probabilities,
    :math:`-\log\operatorname{softmax}(z)_k` on logits, for the class index
    :math:`k` of each example.

    Stable rewrite: :func:`safeops.nn.sparse_softmax_cross_entropy_with_logits`
    on the logits (given or recovered) or on ``log(max(p, tiny))`` (clamped
    at ``tiny``, live gradient; Keras clips at ``1e-7``), whose gradient
    ``1 / sum(c) - [j = k] / c_j`` is written directly, as in
    :func:`categorical_crossentropy` (1 at a probability 0 of another
    class, in every dtype). A class axis other than the last is moved last
    (Keras refuses it).

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
    array([0.05129329, 2.3025851 ], dtype=float32)
    """
    op = "safeops.losses.sparse_categorical_crossentropy"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, from_logits, "softmax", axis)
        rank = pred.values.shape.rank
        axis = _common.check_axis(op, axis, rank)
        labels = class_indices(op, y_true)
        if labels.shape.rank == rank and labels.shape[axis] == 1:
            labels = tf.squeeze(labels, axis)
        from_probabilities = pred.logits is None
        # Logits, or probabilities (in the compute dtype) on the probability path.
        values = pred.probabilities() if from_probabilities else pred.logits
        if rank is None and axis != -1:
            raise ValueError(_validate.message(
                op, "y_pred", f"a tensor of known rank for axis={axis} (only -1 works without one)",
                "a tensor of unknown rank"))
        if rank is not None and axis % rank != rank - 1:
            values = tf.experimental.numpy.moveaxis(values, axis, -1)
        valid = None
        if ignore_class is not None:
            if not (_validate.is_real_number(ignore_class) and float(ignore_class).is_integer()):
                # A cast to the labels' integer dtype would round 1.5 to 1 and ignore that class.
                raise TypeError(_validate.message(op, "ignore_class", "None or an integer label",
                                                  repr(ignore_class)))
            valid = tf.not_equal(labels, tf.cast(int(ignore_class), labels.dtype))
            labels = tf.where(valid, labels, tf.zeros_like(labels))
            # Ignored rows get logits 0 (probabilities 1): finite, whatever y_pred holds.
            neutral = tf.ones_like(values) if from_probabilities else tf.zeros_like(values)
            values = tf.where(valid[..., None], values, neutral)
        if from_probabilities:
            floor = _dtypes.tiny(pred.clamp_dtype)
            loss = _sparse_probability_xent(floor, pred.clamp_dtype, (op, "y_true", "y_pred"))(values, labels)
        else:
            loss = _softmax_xent.sparse_xent(labels, values, (op, "y_true", "y_pred"))
        if valid is not None:
            loss = tf.where(valid, loss, tf.zeros_like(loss))
            loss._keras_mask = valid
        out = pred.output(loss)
        if valid is not None and out is not loss:
            out._keras_mask = valid
        return out


def class_indices(op, y_true):
    """Integer labels: ints kept, floats truncated and bools cast as Keras does, others refused."""
    y_true = _validate.converted(y_true, op, "y_true", "integer class indices")
    if y_true.dtype.is_integer:
        return _validate.integer_tensor(y_true, op, "y_true")
    if y_true.dtype.is_floating or y_true.dtype == tf.bool:   # Keras casts bool labels to 0 and 1 too
        return tf.cast(y_true, tf.int64)
    raise TypeError(_validate.message(op, "y_true", "integer class indices", y_true.dtype.name))


# ----------------------------------------------------------------------------
# The probability path of the softmax cross-entropies.
#
# The loss on probabilities p (clamped to c = max(p, tiny), contract C4) is
# the softmax cross-entropy of the logits log c, since softmax(log c) =
# c / S with S = sum_k c_k: the value is taken that way, by safeops.nn
# (shifted log-sum-exp, log1p of the non-maximal terms, so a confident
# correct prediction keeps its small loss). Its gradient is not: through the
# chain rule it is (softmax(log c)_j sum(y) - y_j) / c_j, and softmax_j =
# c_j / S is below tiny, flushed to 0 by TensorFlow's CPU arithmetic, for
# every class with c_j < S tiny. A probability 0 next to others then had
# the gradient 0 (float32 p = [1, 0, 0], y = [1, 0, 0]: [0, 0, 0]; float64
# p = [0.5, 0.5, 0]: [-1, 1, 0]) where the derivative of
# -sum_j y_j log(c_j / S) is
#
#     dL/dp_j = sum(y) / S - y_j / c_j     (1 / S for an unlabelled class),
#
# the normaliser's pull that Keras' formula (p / sum(p), then the log) also
# gives. It is written directly, with no quotient c_j / S formed, so it is
# the same in every dtype (to its precision and to the clamp's saturation
# at 1 / tiny). The labels' gradient is -log(c_j / S) = log S - log c_j,
# finite since c_j >= tiny.


@functools.lru_cache(maxsize=None)
def _probability_xent(axis: int, floor: float, dtype: tf.DType):
    """``softmax_cross_entropy_with_logits(y, log(max(p, floor)))`` with the gradient written directly.

    ``dtype``: the dtype of the caller's probabilities (its clamp), where
    second derivatives saturate.
    """

    def clamped(y, p):
        return tf.maximum(p, _common.class_floors(tf.not_equal(y, 0.0), p, floor, axis))

    def forward(y, p):
        return nn.softmax_cross_entropy_with_logits(y, tf.math.log(clamped(y, p)), axis=axis)

    def backward(dl, loss, y, p):
        c = clamped(y, p)
        s, total = _xla.last_axis_sums([c, y], axis)  # float64 over a leading axis (running sums)
        dl = tf.expand_dims(dl, axis)
        dp = dl * (total / s - y / c)
        dy = dl * (tf.math.log(s) - tf.math.log(c))
        return dy, dp

    return custom_op(forward, backward, dtype)


@functools.lru_cache(maxsize=None)
def _sparse_probability_xent(floor: float, dtype: tf.DType, who: tuple):
    """``op(p, labels)``: :func:`_probability_xent` for class indices along the last axis (``sum(y) = 1``).

    A label out of range gives NaN in the loss (with validation off, or
    under XLA) and, here too, in the gradient of its row. The labels are an
    input of the op, not closed over (see :mod:`safeops._gradient`).
    """

    def clamped(p, labels):
        at_label = tf.equal(tf.range(tf.shape(p)[-1], dtype=labels.dtype), tf.expand_dims(labels, -1))
        return tf.maximum(p, _common.class_floors(at_label, p, floor, -1))

    def forward(p, labels):
        return _softmax_xent.sparse_xent(labels, tf.math.log(clamped(p, labels)), who)

    def backward(dl, loss, p, labels):
        c = clamped(p, labels)
        at_label = tf.one_hot(labels, tf.shape(p)[-1], dtype=p.dtype)
        dp = tf.expand_dims(dl, -1) * (1.0 / tf.reduce_sum(c, -1, keepdims=True) - at_label / c)
        bad_row = tf.expand_dims(tf.math.is_nan(loss), -1)
        return tf.where(bad_row, _dtypes.nan_or_zero(bad_row, dp.dtype), dp), None

    return custom_op(forward, backward, dtype)


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

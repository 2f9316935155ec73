"""Focal cross-entropies (Lin et al. 2017, "Focal Loss for Dense Object
Detection", arXiv:1708.02002) with Keras 3's names and arguments, in log space.

The focal factor :math:`(1 - p_t)^\\gamma` is formed as
:math:`\\exp(\\gamma \\log(1 - p_t))` with :math:`\\log(1 - p_t)` computed
from the logits, never from a rounded probability: Keras turns logits into
probabilities, clips them to ``[1e-7, 1 - 1e-7]`` and multiplies, so its
categorical focal loss at logits ``[1e4, 0, -1e4, 0]`` with the label on
class 1 is 3.99 where the exact loss is 2500 (measured, Keras 3.15), and its
gradient is 0 there. On probabilities the factor and the cross-entropy use
safeops' clamped logarithms (finite, live gradient); logits are recovered
from sigmoid/softmax outputs as in :mod:`safeops.losses._probabilities`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

import safeops.math as tfm
from safeops import _validate, nn
from safeops.losses import _common
from safeops.losses._authoring import LossFunctionWrapper

_REDUCTION = "sum_over_batch_size"


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25, gamma=2.0,
                              from_logits=False, label_smoothing=0.0, axis=-1):
    r"""Binary focal cross-entropy, averaged over ``axis``, in log space.

    Formula: :math:`\operatorname{mean}_{axis}\,[w\,(1 - p_t)^\gamma\,\mathrm{BCE}(y, p)]`
    with :math:`1 - p_t = y (1 - p) + (1 - y) p` and, with
    ``apply_class_balancing``, :math:`w = y\alpha + (1 - y)(1 - \alpha)`
    (else 1); labels smoothed towards 1/2 as in Keras.

    Stable rewrite: on logits :math:`z` (given or recovered), BCE is
    :func:`safeops.nn.sigmoid_cross_entropy_with_logits` and
    :math:`\log(1 - p_t) = \log(y\,\sigma(-z) + (1 - y)\,\sigma(z))` is
    :func:`safeops.math.reduce_logsumexp` of
    :math:`[\log\sigma(-z), \log\sigma(z)]` with weights :math:`[y, 1 - y]`,
    so a confident wrong logit (``z = -1e4``, ``y = 1``) costs the exact
    ``1e4`` where Keras returns 16.1 with gradient 0. On probabilities, BCE is
    ``-(xlogy(y, p) + xlog1py(1 - y, -p))`` and the factor
    ``exp(gamma * log(1 - p_t))`` with safeops' clamped ``log``, so a
    ``gamma < 1`` never meets ``0 ** (gamma - 1) = inf`` in the gradient.

    Edges:
      * ``gamma = 0``: plain (balanced) binary cross-entropy.
      * Probability path: clamps as in :func:`binary_crossentropy`; ``p_t = 1``
        gives factor ``tiny**gamma`` (0 for ``gamma >= 1`` in float32).
      * Labels must lie in ``[0, 1]`` on the logits path (the weights of the
        log-sum-exp): outside, the factor is NaN.
      * NaN in ``y_pred`` gives NaN; probabilities outside ``[0, 1]`` raise.

    Args:
      y_true: Labels in ``[0, 1]``, the shape of ``y_pred``.
      y_pred: Probabilities, or logits with ``from_logits=True``.
      apply_class_balancing: Whether to weight class 1 by ``alpha`` and
        class 0 by ``1 - alpha``.
      alpha: The class-1 weight (used with ``apply_class_balancing``).
      gamma: The focusing parameter, ``>= 0``.
      from_logits: Whether ``y_pred`` holds logits.
      label_smoothing: Float in ``[0, 1]``.
      axis: The axis the mean is taken over. Defaults to -1.

    Returns:
      The per-example loss, ``y_pred``'s shape without ``axis``, its dtype.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: the shapes differ or ``axis`` is out of range.

    Example:

    >>> from safeops import losses
    >>> losses.binary_focal_crossentropy([[1.0]], [[-1e4]], from_logits=True).numpy()
    array([10000.], dtype=float32)
    """
    op = "safeops.losses.binary_focal_crossentropy"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, from_logits, "sigmoid", axis)
        _common.check_axis(op, axis, pred.values.shape.rank)
        y = _common.labels_like(op, y_true, pred)
        _common.same_shape(op, y, pred.values)
        y = _common.smoothed_binary(y, label_smoothing)
        if pred.logits is not None:
            z = pred.logits
            bce = nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)
            # log(1 - p_t) = log(y * sigmoid(-z) + (1 - y) * sigmoid(z)): a
            # two-term log-sum-exp, done elementwise by logaddexp (a stacked
            # weighted reduce_logsumexp cost 6x Keras). A zero label weight
            # must give exactly -inf, not a clamped log.
            log_q = tfm.logaddexp(_log_weight(y) + tfm.log_sigmoid(-z),
                                  _log_weight(1.0 - y) + tfm.log_sigmoid(z))
        else:
            p = pred.probabilities()
            bce = -(pred.clamped(tfm.xlogy, y, p) + pred.clamped(tfm.xlog1py, 1.0 - y, -p))
            p = tf.cast(p, pred.compute_dtype)
            log_q = pred.clamped(tfm.log, y * (1.0 - p) + (1.0 - y) * p)
        loss = _times_focal_factor(bce, log_q, gamma)
        if apply_class_balancing:
            loss = (y * alpha + (1.0 - y) * (1.0 - alpha)) * loss
        return pred.output(tf.reduce_mean(loss, axis))


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1):
    r"""Categorical focal cross-entropy along ``axis``, in log space.

    Formula: :math:`\sum_j \alpha_j (1 - p_j)^\gamma\,(-y_j \log p_j)` with
    :math:`p = \operatorname{softmax}(z)` or the normalised probabilities
    :math:`p / \sum p` (as Keras); labels smoothed to :math:`y (1 - s) + s/C`.

    Stable rewrite: :math:`\log p = ` :func:`safeops.math.log_softmax` of the
    logits (given, recovered, or ``safeops.math.log(p)`` on probabilities,
    since ``log_softmax(log p) = log(p / sum p)``), and
    :math:`\log(1 - p_j) = ` :func:`safeops.math.log1mexp` of it (Mächler
    2012); the cross-entropy term is ``multiply_no_nan(-log p, y)`` so a
    ``-inf`` mask logit with label 0 adds 0. At logits ``[1e4, 0, -1e4, 0]``
    with the label on class 1 this is the exact ``0.25 * 1e4 = 2500``;
    Keras gives 3.99 (its clip) with gradient 0.

    Edges:
      * ``p_j = 1`` exactly (``log p_j = 0``): ``log1mexp`` is clamped, the
        factor is ``tiny**gamma`` (0 for ``gamma >= 1`` in float32) and the
        term ``-y_j log p_j`` is 0: value 0, gradient finite.
      * ``-inf`` logits with label 0: no contribution, gradient 0. With a
        label > 0: ``+inf`` (exact).
      * Probabilities: clamped at ``tiny`` as in :func:`categorical_crossentropy`;
        outside ``[0, 1]`` they raise. NaN gives NaN.

    Args:
      y_true: One-hot or soft labels, the shape of ``y_pred``.
      y_pred: Probabilities, or logits with ``from_logits=True``.
      alpha: Weight, a float or a list of one per class.
      gamma: The focusing parameter, ``>= 0``.
      from_logits: Whether ``y_pred`` holds logits.
      label_smoothing: Float in ``[0, 1]``.
      axis: The class axis. Defaults to -1.

    Returns:
      The per-example loss, ``y_pred``'s shape without ``axis``, its dtype.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: the shapes differ or ``axis`` is out of range.

    Example:

    >>> from safeops import losses
    >>> losses.categorical_focal_crossentropy(
    ...     [[0.0, 1.0, 0.0, 0.0]], [[1e4, 0.0, -1e4, 0.0]], from_logits=True).numpy()
    array([2500.], dtype=float32)
    """
    op = "safeops.losses.categorical_focal_crossentropy"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, from_logits, "softmax", axis)
        _common.check_axis(op, axis, pred.values.shape.rank)
        y = _common.labels_like(op, y_true, pred)
        _common.same_shape(op, y, pred.values)
        y = _common.smoothed_categorical(y, label_smoothing, axis)
        logits = pred.logits if pred.logits is not None else pred.clamped(tfm.log, pred.probabilities())
        log_p = tfm.log_softmax(logits, axis=axis)
        cross = tf.math.multiply_no_nan(-log_p, y)
        loss = _times_focal_factor(cross, tfm.log1mexp(log_p), gamma)
        alpha = tf.cast(alpha, pred.compute_dtype)
        return pred.output(tf.reduce_sum(alpha * loss, axis))


def _times_focal_factor(loss, log_q, gamma):
    """``loss * q**gamma`` as ``loss * exp(gamma * log q)``; ``gamma == 0`` leaves ``loss``."""
    if isinstance(gamma, (int, float)) and gamma == 0:
        return loss
    return tf.exp(tf.cast(gamma, log_q.dtype) * log_q) * loss


@keras.saving.register_keras_serializable(package="safeops")
class BinaryFocalCrossentropy(LossFunctionWrapper):
    """Loss class of :func:`binary_focal_crossentropy` (Keras 3's arguments and config).

    Args:
      apply_class_balancing, alpha, gamma, from_logits, label_smoothing, axis:
        See :func:`binary_focal_crossentropy`.
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, apply_class_balancing=False, alpha=0.25, gamma=2.0, from_logits=False,
                 label_smoothing=0.0, axis=-1, reduction=_REDUCTION, name="binary_focal_crossentropy",
                 dtype=None, *, check_finite=False):
        super().__init__(binary_focal_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         check_finite=check_finite, apply_class_balancing=apply_class_balancing,
                         alpha=alpha, gamma=gamma, from_logits=from_logits,
                         label_smoothing=label_smoothing, axis=axis)
        self.apply_class_balancing, self.alpha, self.gamma = apply_class_balancing, alpha, gamma
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


@keras.saving.register_keras_serializable(package="safeops")
class CategoricalFocalCrossentropy(LossFunctionWrapper):
    """Loss class of :func:`categorical_focal_crossentropy` (Keras 3's arguments and config).

    Args:
      alpha, gamma, from_logits, label_smoothing, axis: See
        :func:`categorical_focal_crossentropy`.
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction=_REDUCTION, name="categorical_focal_crossentropy", dtype=None, *,
                 check_finite=False):
        super().__init__(categorical_focal_crossentropy, reduction=reduction, name=name, dtype=dtype,
                         check_finite=check_finite, alpha=alpha, gamma=gamma, from_logits=from_logits,
                         label_smoothing=label_smoothing, axis=axis)
        self.alpha, self.gamma = alpha, gamma
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


def _log_weight(w):
    """``log(w)`` for a label weight in [0, 1]: exactly ``-inf`` at 0, with a zero (not NaN) gradient there.

    The double-where form: the logarithm only ever sees a positive argument,
    so its gradient in the branch that is not taken is finite.
    """
    positive = w > 0.0
    safe = tf.where(positive, w, tf.ones_like(w))
    return tf.where(positive, tf.math.log(safe), tf.fill(tf.shape(w), tf.constant(-float("inf"), w.dtype)))


r"""The generalized cross-entropy, Keras 3's ``categorical_generalized_cross_entropy``.

Zhang and Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural
Networks with Noisy Labels" (NeurIPS 2018, arXiv:1805.07836), define for the
probability :math:`p` of the labelled class and :math:`q \in (0, 1]`

.. math:: L_q(p) = \frac{1 - p^q}{q},

the cross-entropy :math:`-\log p` as :math:`q \to 0` and the mean absolute
error :math:`1 - p` at :math:`q = 1`. It is meant for labels that are wrong,
and a model that learns the clean labels predicts a probability near 0 for
the wrong one: exactly where Keras' formula (TensorFlow backend, Keras
3.15) loses the gradient. Its derivative :math:`-p^{q-1}` is ``-inf`` at
``p = 0`` (a softmax that underflowed: TensorFlow's float32 kernel gives 0
from a logit gap of about 87, float16 from about 17), and the softmax's
backward multiplies it by ``p = 0``: NaN for every logit of the row, which
the optimizer writes into every weight.

Stable rewrite, in float64 for every input dtype (the per-example values
only, one per row):

* value :math:`-\operatorname{expm1}(q \log p) / q`, where :math:`1 - p^q`
  cancels for small losses (``p = 0.9999``, ``q = 0.1``: the float32
  difference of two numbers near 1 keeps two digits); at ``p = 0`` it is
  :math:`1/q` exactly, Keras' value;
* gradient :math:`-c^{q-1}` at :math:`c = \max(p, tiny)` (contract C4:
  finite, pointing back into the domain, at most :math:`tiny^{q-1} \le
  1/tiny` in size), which the softmax's backward turns into 0 for the
  logits of an underflowed class, and the exact gradient elsewhere.

With logits (``from_logits=True``, or recovered from the softmax that made
``y_pred``, as for the cross-entropies) :math:`\log p` is
:func:`safeops.nn.sparse_softmax_cross_entropy_with_logits`, exact for every
finite logit, and :math:`L_q = -\operatorname{expm1}(q \log p) / q` of it:
the loss and its gradient :math:`p^q (\mathrm{softmax} - \mathrm{onehot})`
are exact where the probability itself underflows.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf

from safeops import _dtypes, _validate, _xla
from safeops._gradient import custom_op, sum_to_shape
from safeops.losses import _common
from safeops.losses._authoring import LossFunctionWrapper
from safeops.losses._crossentropy import class_indices
from safeops.nn import _softmax_xent

_REDUCTION = "sum_over_batch_size"
_OP = "safeops.losses.categorical_generalized_cross_entropy"


@keras.saving.register_keras_serializable(package="safeops")
def categorical_generalized_cross_entropy(y_true, y_pred, q, *, from_logits=False):
    r"""Generalized cross-entropy :math:`(1 - p^q)/q` of the labelled class, with live gradients.

    Formula: :math:`(1 - p_k^q)/q` for the probability :math:`p_k` of the
    class index :math:`k` of each example (Zhang and Sabuncu 2018); Keras 3
    computes ``(1 - p**q) / q``, whose gradient is NaN for every logit of a
    row where :math:`p_k` underflowed to 0.

    Stable rewrite: :math:`-\operatorname{expm1}(q \log p_k)/q` in float64,
    with the gradient :math:`-\max(p_k, tiny)^{q-1}` (C4) on probabilities;
    on logits (given with ``from_logits=True`` or recovered from the
    softmax that made ``y_pred``) :math:`\log p_k` is the exact
    ``-sparse_softmax_cross_entropy_with_logits``. See
    :mod:`safeops.losses._generalized`.

    Edges:
      * ``p_k = 0``: value ``1/q`` (Keras' too), gradient ``-tiny**(q - 1)``
        with respect to ``p_k`` (``-2.4e11`` at ``q = 0.7`` in float32;
        ``-18.4`` in float16, whose ``tiny`` is ``6.1e-5``), and 0 for the
        logits of a softmax that underflowed there. ``p_k = 1``: value 0,
        gradient ``-1``.
      * Probabilities outside ``[0, 1]``: ``InvalidArgumentError`` naming
        ``y_pred`` (under XLA, which drops the assertion: NaN loss and
        gradient there). A label outside ``[0, num_classes)``:
        ``InvalidArgumentError`` naming ``y_true`` (Keras returns ``1/q``
        for it, a one-hot row of zeros); under XLA NaN.
      * ``y_true`` of shape ``[batch, 1]`` is squeezed to ``[batch]``, as
        Keras' docstring describes; Keras 3.15 broadcasts its one-hot
        ``[batch, 1, C]`` against ``y_pred`` into a ``[batch, batch]`` loss.
      * NaN in ``p_k`` or ``q`` gives NaN. The gradient with respect to a
        tensor ``q`` is :math:`-(c^q \log c)/q - L_q/q`.
      * Logits: as ``safeops.nn.sparse_softmax_cross_entropy_with_logits``
        (``-inf`` masks; a label on a ``-inf`` class costs ``1/q``).

    Args:
      y_true: Class indices (integer, or floats holding integers, or bools,
        as Keras casts them), of shape ``y_pred.shape[:-1]`` or with a
        trailing axis of size 1.
      y_pred: Probabilities along the last axis (or logits with
        ``from_logits=True``); any float dtype.
      q: The exponent, a number or numeric tensor ``> 0`` and finite
        (broadcastable to the per-example loss). Keras' class takes ``(0, 1)``.
      from_logits: Keyword-only (Keras' function has no such argument):
        whether ``y_pred`` holds logits.

    Returns:
      The per-example loss, ``y_pred``'s shape without the last axis, its dtype.

    Raises:
      TypeError: ``y_pred`` is not a float tensor, ``y_true`` not numeric,
        ``q`` not a number.
      ValueError: ``q`` is a number ``<= 0``, infinite or NaN; the shapes do not match.

    Example:

    >>> from safeops import losses
    >>> losses.categorical_generalized_cross_entropy([1, 0], [[0.2, 0.8], [0.0, 1.0]], q=0.5).numpy()
    array([0.21114561, 2.        ], dtype=float32)
    """
    with _validate.op_scope(_OP, None):
        pred = _common.Prediction(_OP, y_pred, from_logits, "softmax", -1)
        labels = class_indices(_OP, y_true)
        rank = pred.values.shape.rank
        if rank is not None and labels.shape.rank == rank and labels.shape[-1] == 1:
            labels = tf.squeeze(labels, -1)
        exponent = _checked_q(q, pred.compute_dtype)
        who = (_OP, "y_true", "y_pred")
        if pred.logits is not None:
            log_p = -_softmax_xent.sparse_xent(labels, pred.logits, who)
            loss = _of_log_probability(pred.clamp_dtype)(log_p, exponent)
        else:
            p = pred.probabilities()
            safe_labels, valid = _softmax_xent.checked_class_indices(labels, p, who)
            rows = tf.reshape(p, tf.stack([-1, tf.shape(p)[-1]]))
            p_label = _common.nan_where(tf.logical_not(valid), tf.gather(rows, safe_labels, batch_dims=1))
            loss = tf.reshape(_of_probability(pred.clamp_dtype)(p_label, exponent), tf.shape(labels))
        return pred.output(loss)


def _checked_q(q, dtype: tf.DType) -> tf.Tensor:
    """``q`` as a tensor of ``dtype``: a number must be finite and ``> 0``; a tensor is checked when it runs.

    A tensor ``q`` outside gets a graph assertion naming ``q`` (under XLA,
    which drops it, NaN in its place).
    """
    _common.check_number(_OP, "q", q)
    if _validate.is_real_number(q):
        if not (math.isfinite(q) and q > 0):
            raise ValueError(_validate.message(_OP, "q", "a finite number > 0", repr(q)))
        return _common.number_tensor(q, dtype)
    q = _common.number_tensor(q, dtype)
    bad = tf.logical_not(tf.logical_and(q > 0, q < math.inf))
    if not _validate.validation_enabled():
        return q
    if _xla.in_xla():
        return _common.nan_where(bad, q)
    checks = _validate.assert_that(tf.logical_not(tf.reduce_any(bad)), _OP, "q", "finite and > 0",
                                   lambda: tf.boolean_mask(q, bad)[:1] if q.shape.rank else q)
    if not checks:
        return q
    with tf.control_dependencies(checks):
        return tf.identity(q)


def _loss_of_log(log_p: tf.Tensor, q: tf.Tensor) -> tf.Tensor:
    """:math:`-\\mathrm{expm1}(q \\log p)/q`: ``1/q`` at ``log p = -inf``, no cancellation near ``p = 1``."""
    return -tf.math.expm1(q * log_p) / q


def _q_gradient(dl, loss, log_c, q):
    """:math:`\\partial L/\\partial q = -(c^q \\log c)/q - L/q` times ``dl`` (``log_c`` finite)."""
    return dl * (-(tf.exp(q * log_c) * log_c) - loss) / q


@functools.lru_cache(maxsize=None)
def _of_probability(dtype: tf.DType):
    """``op(p, q)``: the loss of the labelled probabilities ``p``, ``dtype`` that of the caller's ``y_pred``.

    Value and gradients in float64 (one value per example), rounded to
    ``p``'s dtype. The gradient is taken at ``c = max(p, tiny(dtype))``.
    """
    floor = _dtypes.tiny(dtype)

    def forward(p, q):
        p64, q64 = tf.cast(p, tf.float64), tf.cast(q, tf.float64)
        # 1/q at p = 0 by a select, not through log(0) = -inf (tf.debugging.enable_check_numerics
        # stops at any infinite intermediate); below float64's tiny is 0 on this CPU anyway.
        positive = p64 > 0
        log_p = tf.math.log(tf.maximum(p64, _dtypes.tiny(tf.float64)))
        value = tf.where(positive | tf.math.is_nan(p64), _loss_of_log(log_p, q64), 1.0 / q64)
        return tf.cast(value, p.dtype)

    def backward(dl, loss, p, q):
        q64 = tf.cast(q, tf.float64)
        log_c = tf.math.log(tf.maximum(tf.cast(p, tf.float64), floor))
        dl64 = tf.cast(dl, tf.float64)
        dp = -dl64 * tf.exp((q64 - 1.0) * log_c)  # NaN at a NaN p: tf.maximum keeps it
        dq = _q_gradient(dl64, tf.cast(loss, tf.float64), log_c, q64)
        return tf.cast(dp, p.dtype), sum_to_shape(tf.cast(dq, q.dtype), q)

    return custom_op(forward, backward, dtype)


@functools.lru_cache(maxsize=None)
def _of_log_probability(dtype: tf.DType):
    """``op(log_p, q)``: the loss of exact log-probabilities (``-inf`` allowed), in float64.

    ``d L / d log p = -p^q`` (0 at ``log p = -inf``); the gradient with
    respect to ``q`` takes ``log p`` floored at the lowest finite float64,
    where ``p^q log p`` is 0 as its limit.
    """

    def forward(log_p, q):
        value = _loss_of_log(tf.cast(log_p, tf.float64), tf.cast(q, tf.float64))
        return tf.cast(value, log_p.dtype)

    def backward(dl, loss, log_p, q):
        log_p64, q64, dl64 = tf.cast(log_p, tf.float64), tf.cast(q, tf.float64), tf.cast(dl, tf.float64)
        dlog_p = -dl64 * tf.exp(q64 * log_p64)
        log_c = tf.maximum(log_p64, -_dtypes.max_value(tf.float64))
        dq = _q_gradient(dl64, tf.cast(loss, tf.float64), log_c, q64)
        return tf.cast(dlog_p, log_p.dtype), sum_to_shape(tf.cast(dq, q.dtype), q)

    return custom_op(forward, backward, dtype)


@keras.saving.register_keras_serializable(package="safeops")
class CategoricalGeneralizedCrossEntropy(LossFunctionWrapper):
    """Loss class of :func:`categorical_generalized_cross_entropy` (Keras 3's arguments and config).

    Args:
      q: The exponent, in ``(0, 1)`` as Keras' class requires (``ValueError``
        naming ``q`` otherwise). Defaults to 0.5.
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
      from_logits: Keyword-only: see :func:`categorical_generalized_cross_entropy`.
    """

    def __init__(self, q=0.5, reduction=_REDUCTION, name="categorical_generalized_cross_entropy", dtype=None,
                 *, from_logits=False, check_finite=False):
        if not (_validate.is_real_number(q) and 0 < q < 1):
            raise ValueError(_validate.message(_OP, "q", "a number in the interval (0, 1)", repr(q)))
        super().__init__(categorical_generalized_cross_entropy, reduction=reduction, name=name, dtype=dtype,
                         check_finite=check_finite, q=q, from_logits=from_logits)
        self.q, self.from_logits = q, from_logits

"""Two worked examples of :func:`safeops.losses.loss_class`, usable as they are.

Writing a custom loss takes two steps: a function of ``(y_true, y_pred)``
that returns one loss per example, built from ``safeops.math`` so that no
``0/0`` or ``log 0`` can appear, then ``loss_class(fn)`` for the Keras
class (reduction, ``sample_weight``, float32 under mixed precision,
``tf.distribute`` scaling, ``.keras`` saving, an optional finite check).

**Tversky / Dice loss** (Salehi, Erdogmus & Gholipour 2017, "Tversky loss
function for image segmentation", arXiv:1706.05721; Dice is
``alpha = beta = 0.5``). The usual code divides by ``TP + alpha FP + beta FN``
and gets ``0/0 = NaN`` on an image whose mask and prediction are both empty,
or hides that with a ``smooth`` constant that biases every other image::

    def tversky_loss(y_true, y_pred, alpha=0.5, beta=0.5):
        axes = list(range(1, y_pred.shape.rank))       # all but the batch axis
        tp = tf.reduce_sum(y_true * y_pred, axes)
        fp = tf.reduce_sum((1 - y_true) * y_pred, axes)
        fn = tf.reduce_sum(y_true * (1 - y_pred), axes)
        errors = alpha * fp + beta * fn
        return tfm.divide_no_nan(errors, tp + errors)  # 1 - Tversky index; 0 if both empty

    TverskyLoss = losses.loss_class(tversky_loss)

``1 - TP / (TP + E)`` is written ``E / (TP + E)``, so the one point where
the denominator is 0 (nothing predicted, nothing to find) is the perfect
score 0 that ``divide_no_nan`` returns, with a zero gradient there.

**InfoNCE** (van den Oord, Li & Vinyals 2018, "Representation Learning
with Contrastive Predictive Coding", arXiv:1807.03748), with in-batch
negatives: row ``i`` of the anchors should match row ``i`` of the positives
and no other::

    def info_nce(y_true, y_pred, temperature=0.1):
        anchors, positives = tf.split(y_pred, 2, axis=-1)
        anchors = tfm.l2_normalize(anchors, axis=-1)    # finite gradient at 0
        positives = tfm.l2_normalize(positives, axis=-1)
        scores = tf.matmul(anchors, positives, transpose_b=True) / temperature
        return -tf.linalg.diag_part(tfm.log_softmax(scores, axis=-1))

    InfoNCE = losses.loss_class(info_nce)

``-log_softmax(scores)_ii`` never forms ``exp`` of a large score (a
temperature of 0.01 makes scores of 100, ``exp`` of which overflows
float16 and nearly float32) and keeps the tiny loss of a confident match
to full relative accuracy; ``logsumexp(scores) - score_ii`` subtracts two
numbers near ``score_ii`` and loses it (see :func:`info_nce`). Under
``tf.distribute`` the negatives are those of each replica's batch.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

import safeops.math as tfm
from safeops import _validate
from safeops.losses import _common
from safeops.losses._authoring import loss_class


@keras.saving.register_keras_serializable(package="safeops")
def tversky_loss(y_true, y_pred, alpha=0.5, beta=0.5):
    r"""One minus the Tversky index per example; 0 when mask and prediction are both empty.

    Formula: :math:`1 - TP / (TP + \alpha FP + \beta FN)` over all axes but
    the first, with soft counts :math:`TP = \sum y p`,
    :math:`FP = \sum (1 - y) p`, :math:`FN = \sum y (1 - p)`. Dice loss is
    ``alpha = beta = 0.5``.

    Stable rewrite: :math:`E / (TP + E)` with :math:`E = \alpha FP + \beta FN`,
    by :func:`safeops.math.divide_no_nan`: 0 (perfect) with gradient 0 where
    ``TP + E = 0``, never ``0/0``.

    Edges:
      * ``y_true`` or ``y_pred`` outside ``[0, 1]``: ``InvalidArgumentError``
        naming it (eager and ``tf.function``; under XLA, which drops the
        assertion, NaN loss and gradient there). NaN gives NaN.

    Args:
      y_true: Masks in ``[0, 1]``, shape ``[batch, ...]`` (any numeric dtype).
      y_pred: Probabilities, the same shape; float16, bfloat16, float32 or
        float64 (half dtypes computed in float32).
      alpha: Weight of false positives.
      beta: Weight of false negatives.

    Returns:
      The loss per example, shape ``[batch]``, the dtype of ``y_pred``.

    Raises:
      TypeError: ``y_pred`` is not a float tensor, ``y_true`` not numeric.
      ValueError: the shapes differ.

    Example:

    >>> from safeops import losses
    >>> losses.tversky_loss(tf.zeros([2, 4]), tf.constant([[0.0] * 4, [0.0, 0.0, 0.0, 1.0]])).numpy()
    array([0., 1.], dtype=float32)
    """
    op = "safeops.losses.tversky_loss"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, False)
        y_true = _common.labels_like(op, y_true, pred)
        _common.same_shape(op, y_true, pred.values)
        y_true = _common.checked_unit_interval(op, y_true, "y_true")
        y_pred = pred.probabilities()
        rank = y_pred.shape.rank
        axes = list(range(1, rank)) if rank is not None else tf.range(1, tf.rank(y_pred))
        # The soft counts run over whole images: summed in float64 (_common.total).
        tp = _common.total(y_true * y_pred, axes)
        fp = _common.total((1.0 - y_true) * y_pred, axes)
        fn = _common.total(y_true * (1.0 - y_pred), axes)
        errors = alpha * fp + beta * fn
        return pred.output(tfm.divide_no_nan(errors, tp + errors))


@keras.saving.register_keras_serializable(package="safeops")
def info_nce(y_true, y_pred, temperature=0.1):
    r"""InfoNCE contrastive loss with in-batch negatives; ``y_true`` is ignored.

    Formula: for anchors :math:`a_i` and positives :math:`b_i` (L2-normalised),
    :math:`s_{ij} = a_i \cdot b_j / \tau` and
    :math:`L_i = \log \sum_j e^{s_{ij}} - s_{ii}`.

    Stable rewrite: :math:`L_i = -\log\operatorname{softmax}(s_i)_i`, the
    diagonal of :func:`safeops.math.log_softmax`, and
    :func:`safeops.math.l2_normalize` (finite gradient at a zero embedding).
    A confident match has :math:`L_i = \operatorname{log1p}(\sum_{j \ne i}
    e^{s_{ij} - s_{ii}})`, tiny: ``exp(-20)`` for two identical unit
    embeddings at :math:`\tau = 0.05`. ``reduce_logsumexp(s_i) - s_ii``
    rounds the log-sum-exp (about :math:`s_{ii}`, 20 there) before the
    difference, so such a loss came out 0 (float32 at :math:`\tau = 0.05`,
    float64 at 0.02), or 3e-7 off (float64, 0.05). ``log_softmax`` keeps
    it: it shifts by the row maximum (here :math:`s_{ii}`) and recovers the
    rounding error of each shifted score :math:`s_{ij} - s_{ii}` exactly
    (TwoSum, which ``exp`` would otherwise multiply by
    :math:`|s_{ij} - s_{ii}|`), so the :math:`\operatorname{log1p}` of the
    non-maximal terms (Blanchard, Higham & Higham 2021, IMA J. Numer. Anal.
    41(4)) is the loss to a few ULP.

    Args:
      y_true: Unused (Keras passes one); any tensor.
      y_pred: ``[batch, 2 d]``: the anchors' embeddings, then the positives';
        float16, bfloat16, float32 or float64 (half dtypes computed in float32).
      temperature: The softmax temperature :math:`\tau > 0`.

    Returns:
      The loss per example, shape ``[batch]``, the dtype of ``y_pred``.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: ``y_pred`` is not of rank 2 or its last dimension is odd
        (checked where the shape is known when the function is traced).

    Example:

    >>> from safeops import losses
    >>> e = tf.constant([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    >>> losses.info_nce(None, e, temperature=0.05).numpy()   # log1p(exp(-20))
    array([2.0611537e-09, 2.0611537e-09], dtype=float32)
    """
    del y_true
    op = "safeops.losses.info_nce"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, True)
        shape = pred.values.shape
        if shape.rank is not None and (shape.rank != 2 or (shape[-1] is not None and shape[-1] % 2)):
            raise ValueError(_validate.message(
                op, "y_pred", "of shape [batch, 2 d], the anchors' embeddings then the positives' "
                "(rank 2, an even last dimension)", shape))
        if not (tf.is_tensor(temperature) or isinstance(temperature, tf.Variable)):
            ok = _validate.is_real_number(temperature) and math.isfinite(temperature) and temperature > 0
            if not ok:
                # 0 made every score inf and the loss NaN; a negative one inverts the objective.
                raise ValueError(_validate.message(op, "temperature", "a finite number > 0",
                                                   repr(temperature)))
        anchors, positives = tf.split(pred.values, 2, axis=-1)
        anchors = tfm.l2_normalize(anchors, axis=-1)
        positives = tfm.l2_normalize(positives, axis=-1)
        scores = tf.matmul(anchors, positives, transpose_b=True) / temperature
        return pred.output(-tf.linalg.diag_part(tfm.log_softmax(scores, axis=-1)))


TverskyLoss = loss_class(tversky_loss, package="safeops")
InfoNCE = loss_class(info_nce, name="InfoNCE", package="safeops")

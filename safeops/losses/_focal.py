"""Focal cross-entropies (Lin et al. 2017, "Focal Loss for Dense Object
Detection", arXiv:1708.02002) with Keras 3's names and arguments, in log space.

The focal factor :math:`(1 - p_t)^\\gamma` is formed from :math:`1 - p_t`
computed from the logits, never from a rounded probability: Keras turns
logits into probabilities, clips them to ``[1e-7, 1 - 1e-7]`` and
multiplies, so its categorical focal loss at logits ``[1e4, 0, -1e4, 0]``
with the label on class 1 is 3.99 where the exact loss is 2500 (measured,
Keras 3.15), and its gradient is 0 there. On logits with a Python
``gamma`` each loss is one fused custom op (inner XLA, see
:mod:`safeops._xla`): the chain of safeops ops it replaces cost 2-3x Keras
forward+backward; the binary loss takes the same op with a tensor ``gamma``
as a third input. On probabilities the factor and the cross-entropy use
safeops' clamped logarithms (finite, live gradient); logits are recovered
from sigmoid/softmax outputs as in :mod:`safeops._probabilities`.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

import safeops.math as tfm
from safeops import _dtypes, _ragged, _validate, _xla, nn
from safeops.math import _logarithms, _logsumexp
from safeops._gradient import custom_op, custom_op_with_residuals, sum_to_shape
from safeops.losses import _common
from safeops.losses._authoring import LossFunctionWrapper

_REDUCTION = "sum_over_batch_size"


@keras.saving.register_keras_serializable(package="safeops")
def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25, gamma=2.0,
                              from_logits=False, label_smoothing=0.0, axis=-1):
    r"""Binary focal cross-entropy, averaged over ``axis``, in log space.

    Formula: :math:`\operatorname{mean}_{axis}\,[w\,(1 - p_t)^\gamma\,\mathrm{BCE}(y, p)]`
    with :math:`1 - p_t = y (1 - p) + (1 - y) p` and, with
    ``apply_class_balancing``, :math:`w = y\alpha + (1 - y)(1 - \alpha)`
    (else 1); labels smoothed towards 1/2 as in Keras.

    Stable rewrite: on logits :math:`z` (given or recovered) one fused op
    (:func:`_binary_focal_parts`): with :math:`t = e^{-|z|}` and
    :math:`c` the label weight of the unlikely class (``1 - y`` for
    :math:`z \ge 0`, ``y`` below), :math:`\mathrm{BCE} = c|z| + \log(1 + t)`
    and :math:`1 - p_t = (c + (1 - c)\,t) / (1 + t)`, sums of non-negative
    terms, so a confident wrong logit (``z = -1e4``, ``y = 1``) costs the
    exact ``1e4`` where Keras returns 16.1 with gradient 0; the factor is
    ``pow(1 - p_t, gamma)`` and both gradients are written out. On
    probabilities, BCE is ``-(xlogy(y, p) + xlog1py(1 - y, -p))`` and the
    factor ``exp(gamma * log(1 - p_t))`` with safeops' clamped ``log``, so a
    ``gamma < 1`` never meets ``0 ** (gamma - 1) = inf`` in the gradient. On
    logits a tensor ``gamma`` is an input of the same op
    (:func:`_tensor_gamma_binary_focal_op`): the same value and gradients,
    and the gradient :math:`\log(1 - p_t)\,L` in ``gamma``.

    Edges:
      * ``gamma = 0``: plain (balanced) binary cross-entropy.
      * Probability path: clamps as in :func:`binary_crossentropy`; ``p_t = 1``
        gives factor ``tiny**gamma`` (0 for ``gamma >= 1`` in float32).
      * Labels must lie in ``[0, 1]`` on the logits path: outside, the
        factor is NaN.
      * Infinite logits give the limits: 0 with gradient 0 on the likely
        side (a ``-inf`` mask with label 0), ``+inf`` on the wrong side with
        the limit slope ``(1 - y) ** gamma`` (``z = +inf``), never NaN.
      * NaN in ``y_pred`` gives NaN; probabilities outside ``[0, 1]`` raise
        (under XLA, which drops the assertion: NaN loss and gradient there).

    Args:
      y_true: Labels in ``[0, 1]``, the shape of ``y_pred``.
      y_pred: Probabilities, or logits with ``from_logits=True``.
      apply_class_balancing: Whether to weight class 1 by ``alpha`` and
        class 0 by ``1 - alpha``.
      alpha: The class-1 weight (used with ``apply_class_balancing``).
      gamma: The focusing parameter, ``>= 0``.
      from_logits: Whether ``y_pred`` holds logits.
      label_smoothing: Float in ``[0, 1]``.
      axis: The axis the mean is taken over, a tuple of axes, or None for
        all (as Keras). Defaults to -1.

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
        axis = _common.check_axis(op, axis, pred.values.shape.rank, many=True)
        y = _common.labels_like(op, y_true, pred)
        _common.same_shape(op, y, pred.values)
        _common.check_number(op, "label_smoothing", label_smoothing, none=True)
        _common.check_number(op, "gamma", gamma)
        _common.check_number(op, "alpha", alpha, lists=True)
        y = _common.smoothed_binary(y, label_smoothing)
        if pred.logits is not None and _fusable(gamma):
            loss = _fused_binary_focal(float(gamma), pred.dtype)(y, pred.logits)
        elif pred.logits is not None and not _is_zero(gamma):
            # A tensor gamma: the fused formulas with gamma as an input of the op.
            z = pred.logits
            op_ = _tensor_gamma_binary_focal_op(pred.dtype, _xla.enabled())
            loss = op_(y, z, _common.number_tensor(gamma, z.dtype))
        elif pred.logits is not None:
            # gamma = 0: plain binary cross-entropy.
            loss = nn.sigmoid_cross_entropy_with_logits(labels=y, logits=pred.logits)
        else:
            p = pred.probabilities()
            focal = _probability_binary_focal(
                _dtypes.tiny(pred.clamp_dtype), _dtypes.below_one(pred.clamp_dtype), pred.dtype)
            loss = focal(y, p, _common.number_tensor(gamma, p.dtype))
        if apply_class_balancing:
            loss = (y * alpha + (1.0 - y) * (1.0 - alpha)) * loss
        return pred.output(_common.mean(loss, axis))


@keras.saving.register_keras_serializable(package="safeops")
def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1):
    r"""Categorical focal cross-entropy along ``axis``, in log space.

    Formula: :math:`\sum_j \alpha_j (1 - p_j)^\gamma\,(-y_j \log p_j)` with
    :math:`p = \operatorname{softmax}(z)` or the normalised probabilities
    :math:`p / \sum p` (as Keras); labels smoothed to :math:`y (1 - s) + s/C`.

    Stable rewrite: :math:`\log p = ` the exact-shift log-softmax of the
    logits (given, recovered, or ``safeops.math.log(p)`` on probabilities,
    since ``log_softmax(log p) = log(p / sum p)``), :math:`1 - p_j =
    -\operatorname{expm1}(\log p_j)` (accurate as :math:`p_j \to 1`), the
    factor by ``pow``, and the cross-entropy term ``multiply_no_nan(-log p, y)``
    so a ``-inf`` mask logit with label 0 adds 0; all in one fused op with
    its gradients written out (:func:`_fused_categorical_focal_op`). A tensor
    ``gamma`` or ``alpha`` takes the composite of
    :func:`safeops.math.log_softmax` and :func:`safeops.math.log1mexp`
    (Mächler 2012), the same value to about 1e-9 in float64. At logits ``[1e4, 0, -1e4, 0]``
    with the label on class 1 this is the exact ``0.25 * 1e4 = 2500``;
    Keras gives 3.99 (its clip) with gradient 0.

    Edges:
      * ``p_j = 1`` exactly (``log p_j = 0``): ``log1mexp`` is clamped, the
        factor is ``tiny**gamma`` (0 for ``gamma >= 1`` in float32) and the
        term ``-y_j log p_j`` is 0: value 0, gradient finite.
      * ``-inf`` logits with label 0: no contribution, gradient 0. With a
        label > 0: ``+inf`` (exact).
      * Probabilities: clamped at ``tiny`` as in :func:`categorical_crossentropy`;
        outside ``[0, 1]`` they raise (under XLA: NaN there). NaN gives NaN.

    Args:
      y_true: One-hot or soft labels, of a shape that broadcasts with
        ``y_pred``'s (as in Keras), but for a ``y_pred`` of one class
        against several (refused: Keras normalises that class to 1).
      y_pred: Probabilities, or logits with ``from_logits=True``.
      alpha: Weight, a float or a list of one per class.
      gamma: The focusing parameter, ``>= 0``.
      from_logits: Whether ``y_pred`` holds logits.
      label_smoothing: Float in ``[0, 1]``.
      axis: The class axis. Defaults to -1.

    Returns:
      The per-example loss, the broadcast shape without ``axis``, ``y_pred``'s dtype.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: the shapes do not broadcast (or ``y_pred`` has one class
        against several), ``axis`` is out of range, or a list ``alpha`` has
        neither 1 nor one weight per class.

    Example:

    >>> from safeops import losses
    >>> losses.categorical_focal_crossentropy(
    ...     [[0.0, 1.0, 0.0, 0.0]], [[1e4, 0.0, -1e4, 0.0]], from_logits=True).numpy()
    array([2500.], dtype=float32)
    """
    op = "safeops.losses.categorical_focal_crossentropy"
    if _ragged.any_ragged(y_true, y_pred):
        rank = getattr(y_pred, "shape", tf.TensorShape(None)).rank
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            raise TypeError(_validate.message(op, "axis", "-1 (the last axis) for RaggedTensor arguments",
                                              axis))
        # Padded logits are masked classes (-inf): a 0 would take its share of the softmax.
        return _ragged.loss_over_last_axis(
            lambda t, p: categorical_focal_crossentropy(t, p, alpha, gamma, from_logits, label_smoothing),
            op, y_true, y_pred, pred_padding=-_ragged._INF if from_logits else 0.0)
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, from_logits, "softmax", axis)
        axis = _common.check_axis(op, axis, pred.values.shape.rank)
        y = _common.labels_like(op, y_true, pred)
        y = _common.broadcast_labels(op, y, pred, axis, normalised=True)
        _common.check_number(op, "label_smoothing", label_smoothing, none=True)
        _common.check_number(op, "gamma", gamma)
        _common.check_number(op, "alpha", alpha, lists=True)
        y = _common.smoothed_categorical(y, label_smoothing, axis)
        if pred.logits is not None:
            values, floor = pred.logits, None
        else:
            # Probabilities: the logits are log(max(p, tiny)), whose derivative
            # each op below writes out (see _probability_focal_composite).
            values = pred.probabilities()
            floor = _dtypes.tiny(pred.clamp_dtype)
        if isinstance(alpha, (np.ndarray, np.generic)) and alpha.ndim <= 1 and alpha.dtype.kind in "iuf":
            alpha = alpha.tolist()  # numpy numbers as Python ones: the fused path, as for a list
        _check_per_class(op, alpha, pred.values.shape[axis])
        weights = _constant_alpha(alpha)
        if _fusable(gamma) and weights is not None:
            scale, per_class = weights
            fused = _fused_categorical_focal_op(float(gamma), per_class, axis, pred.dtype, _xla.enabled(),
                                                floor)
            loss = fused(y, values)
            if scale != 1.0:
                loss = scale * loss
            return pred.output(loss)
        # A tensor alpha or gamma, or gamma = 0: the same formula from safeops ops.
        alpha = _common.number_tensor(alpha, pred.compute_dtype)
        if floor is not None:
            gamma = _common.number_tensor(gamma, pred.compute_dtype)
            op_ = _probability_focal_composite(axis, floor, pred.clamp_dtype)
            return pred.output(op_(values, y, gamma, alpha))
        log_p = tfm.log_softmax(values, axis=axis)
        return pred.output(_categorical_focal_terms(log_p, y, gamma, alpha, axis))


def _categorical_focal_terms(log_p, y, gamma, alpha, axis):
    """``sum_j alpha_j (1 - p_j)**gamma (-y_j log p_j)`` from ``log p``, by safeops ops."""
    cross = tf.math.multiply_no_nan(-log_p, y)
    return _common.total(alpha * _times_focal_factor(cross, tfm.log1mexp(log_p), gamma), axis)


def _is_zero(gamma):
    """Whether ``gamma`` is the Python number 0 (no focal factor at all)."""
    return isinstance(gamma, (int, float)) and gamma == 0


def _times_focal_factor(loss, log_q, gamma):
    """``loss * q**gamma`` as ``loss * exp(gamma * log q)``; ``gamma == 0`` leaves ``loss``."""
    if _is_zero(gamma):
        return loss
    return tf.exp(_common.number_tensor(gamma, log_q.dtype) * log_q) * loss


@functools.lru_cache(maxsize=None)
def _probability_binary_focal(floor: float, below_one: float, dtype: tf.DType):
    r"""``op(y, p, gamma)``: the elementwise binary focal loss of probabilities.

    Value :math:`-q^\gamma (y a + (1 - y) b)` with the clamped logarithms
    :math:`a = \log c`, :math:`c = \max(p, floor)`, and :math:`b =
    \operatorname{log1p}(-d)`, :math:`d = \min(p, below\_one)` (the clamps
    of ``xlogy`` and ``xlog1py``), and :math:`q = y (1 - d) + (1 - y) c`,
    the probability of the other outcome, taken from ``c`` and ``1 - d``
    themselves and raised by ``pow``, both in float64 (for float64 inputs
    the rounding of a soft label's ``q``, times ``gamma``: 10 ULP measured
    at ``gamma = 5``; hard labels' ``q`` is exact). Rebuilt from the
    logarithms, :math:`e^a`, and raised as :math:`e^{\gamma \log q}`,
    each ``exp`` turned the rounding of its argument into a relative error
    of :math:`|\gamma \log q|` ULP (91 ULP in float32 at ``p = 2.6e-13``,
    636 in float64 at ``p = 1e-49``); TensorFlow's float32 ``pow`` is 40
    ULP off for a non-integer exponent (1.7). The gradient in :math:`(c,
    d, a, b)` comes from an inner tape and is mapped to ``p`` directly,
    :math:`u_c + u_a / c + u_d - u_b / (1 - d)`: below ``floor`` and above
    ``below_one`` it is the gradient at the clamp boundary (C4). As one op,
    the second derivative runs in float64 and saturates at ``dtype`` (C1):
    as a chain of clamped ops it multiplied two first derivatives of size
    :math:`1/\mathrm{tiny}` and was ``inf`` (NaN under a cotangent of 3) at
    ``p = 0`` under the label 1.
    """

    def logs(p):
        # where(), not maximum/minimum: a NaN p stays NaN (XLA's max drops it).
        c = tf.where(p < floor, tf.constant(floor, p.dtype), p)
        d = tf.where(p > below_one, tf.constant(below_one, p.dtype), p)
        return c, d, tf.math.log(c), tf.math.log1p(-d)

    def terms(y, c, d, a, b, gamma):
        # q in float64 too: the pow multiplies its relative error by gamma (a
        # soft label's q carried 1 ULP, 5 after the power). At least floor:
        # the pow's derivative gamma q**(gamma - 1) stays finite.
        wide = tf.float64
        y_, c_, d_ = tf.cast(y, wide), tf.cast(c, wide), tf.cast(d, wide)
        q = tf.maximum(y_ * (1.0 - d_) + (1.0 - y_) * c_, floor)
        factor = tf.cast(tf.pow(q, tf.cast(gamma, wide)), y.dtype)
        return -factor * (y * a + (1.0 - y) * b)

    def forward(y, p, gamma):
        return terms(y, *logs(p), gamma)

    def backward(dl, loss, y, p, gamma):
        del loss
        c, d, a, b = logs(p)
        with tf.GradientTape() as tape:
            tape.watch([y, c, d, a, b, gamma])
            value = terms(y, c, d, a, b, gamma)
        dy, dc, dd, da, db, dgamma = tape.gradient(
            value, [y, c, d, a, b, gamma], output_gradients=dl,
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return dy, dc + da / c + dd - db / (1.0 - d), dgamma

    return custom_op(forward, backward, dtype)


@functools.lru_cache(maxsize=None)
def _probability_focal_composite(axis: int, floor: float, dtype: tf.DType):
    r"""``op(p, y, gamma, alpha)``: the categorical focal loss of probabilities with tensor parameters.

    The value is :func:`_categorical_focal_terms` of :math:`\ell = \log(c /
    S)`, :math:`c = \max(p, floor)`, :math:`S = \sum_k c_k` (the
    log-softmax of the logits :math:`\log c`). The gradient in :math:`\ell`
    (``u``, by an inner tape) is mapped to ``p`` directly, :math:`u_i / c_i
    - \sum_j u_j / S`: through the log-softmax it is :math:`(u_i -
    \operatorname{softmax}_i \sum_j u_j) / c_i`, and
    :math:`\operatorname{softmax}_i = c_i / S` flushes to 0 below ``tiny``
    (TensorFlow's CPU arithmetic), so a probability 0 next to others lost
    the normaliser's pull (C4); below ``floor`` it is the gradient at the
    clamp boundary. As one op, the second order runs in float64 and
    saturates at ``dtype`` (C1): as a chain of ops it multiplied two
    first derivatives of size :math:`1/\mathrm{tiny}`, ``inf`` (NaN at ``p
    = [0, 1, 0]``) at a labelled class of probability 0.
    """

    def clamped(p, y):
        # Unlabelled classes at the compute dtype's floor (_common.class_floors).
        return tf.maximum(p, _common.class_floors(tf.not_equal(y, 0.0), p, floor, axis))

    def log_normalized(p, y):
        return _logsumexp.log_softmax_forward(tf.math.log(clamped(p, y)), axis)

    def forward(p, y, gamma, alpha):
        return _categorical_focal_terms(log_normalized(p, y), y, gamma, alpha, axis)

    def backward(dl, loss, p, y, gamma, alpha):
        del loss
        log_p = log_normalized(p, y)
        with tf.GradientTape() as tape:
            tape.watch([log_p, y, gamma, alpha])
            value = _categorical_focal_terms(log_p, y, gamma, alpha, axis)
        du, dy, dgamma, dalpha = tape.gradient(value, [log_p, y, gamma, alpha], output_gradients=dl,
                                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
        c = clamped(p, y)
        sum_du, total = _xla.last_axis_sums([du, c], axis)  # float64 over a leading axis (running sums)
        dp = du / c - sum_du / total
        return dp, dy, dgamma, dalpha

    return custom_op(forward, backward, dtype)


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


# ----------------------------------------------------------------------------
# The fused binary focal loss on logits.


def _fusable(gamma):
    """Whether ``gamma`` is a positive Python number, which the fused op closes over."""
    return (isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
            and 0.0 < gamma < float("inf"))


def _binary_focal_parts(y, z):
    r"""The shared quantities of the fused binary focal loss, from labels ``y`` and logits ``z``.

    With :math:`a = |z|`, :math:`t = e^{-a}` and, by the sign of ``z``, the
    label :math:`\tilde y` of the likely class and its complement
    :math:`c = 1 - \tilde y` (``y`` and ``1 - y`` for :math:`z \ge 0`,
    swapped for :math:`z < 0`, each taken from ``y`` directly so that ``c``
    keeps its own relative accuracy):

    * :math:`\mathrm{BCE} = c\,a + \log(1 + t)` (softplus of ``z`` minus
      ``y z``, with no cancellation; ``multiply_no_nan`` makes ``c = 0`` at
      ``a = inf`` give 0, the exact limit);
    * :math:`q = 1 - p_t = (c + \tilde y\, t) / (1 + t)`: a sum of two
      non-negative terms, so nothing cancels, and a quotient, so ``q`` keeps
      its relative accuracy down to the underflow threshold (where ``c = 0``,
      a confidently right logit, ``q = t / (1 + t)``).

    The focal factor is then ``q**gamma`` by ``pow``, whose relative error is
    ``gamma`` times that of ``q`` plus one rounding; ``exp(gamma * log q)``
    would add ``gamma * |log q|`` rounding errors of the logarithm (about 46
    ULP at ``q = 1e-10``, ``gamma = 2``).

    Returns ``(sign, a, t, l1p, c, yt, bce, num, q)``.
    """
    positive = z >= 0.0
    sign = tf.where(positive, tf.ones_like(z), -tf.ones_like(z))
    # |z| as sign * z: the same value, with derivative 1 at z = 0 where
    # tf.abs has 0; second derivatives differentiate these parts (they
    # were 0 at a zero logit).
    a = sign * z
    t = tf.exp(-a)
    l1p = tf.math.log1p(t)
    c = tf.where(positive, 1.0 - y, y)
    yt = tf.where(positive, y, 1.0 - y)
    bce = tf.math.multiply_no_nan(a, c) + l1p
    num = c + yt * t
    q = num / (1.0 + t)
    # Labels outside [0, 1] have no focal factor (1 - p_t can be negative):
    # NaN, as documented.
    outside = (y < 0.0) | (y > 1.0)
    q = tf.where(outside, _dtypes.nan_or_zero(outside, q.dtype), q)
    return sign, a, t, l1p, c, yt, bce, num, q


def _binary_focal_gradients(dy, y, z, g):
    r"""The gradients in ``y`` and ``z`` of the elementwise binary focal loss, for ``gamma = g``.

    ``g`` is a Python float (the fused op) or a tensor broadcastable to
    ``z`` (:func:`_tensor_gamma_binary_focal_op`); the formulas are written
    out in :func:`_fused_binary_focal_op`. Returns ``(grad_y, grad_z,
    parts)`` with ``parts`` those of :func:`_binary_focal_parts`, for the
    gradient in a tensor ``gamma``.
    """
    parts = sign, a, t, l1p, c, yt, bce, num, q = _binary_focal_parts(y, z)
    f = tf.pow(q, g)
    one_plus_t = 1.0 + t
    r = t / one_plus_t
    has_c = tf.not_equal(c, 0.0)
    safe_num = tf.where(has_c, num, tf.ones_like(num))
    ratio = tf.where(has_c, r / safe_num, 1.0 / one_plus_t)
    d_log_q = sign * (c - yt)
    # sigma(z) - y = s (c - r) = s (c - yt t) / (1 + t). Near z = 0 (t > 1/2)
    # c - yt t is written (c - yt) + yt (1 - t) with 1 - t = -expm1(-a):
    # at y = 1/2, z = 1e-3 the direct form cancels to 5e-5 relative error
    # in float32; for t <= 1/2 the direct form is the accurate one (at
    # y = 1, z = 20 the other cancels completely).
    near_zero = t > 0.5
    bce_slope = tf.where(near_zero, (c - yt) - yt * tf.math.expm1(-a), c - yt * t) / one_plus_t
    grad_z = g * d_log_q * tf.math.multiply_no_nan(bce, ratio) + sign * bce_slope
    has_t = t > 0.0
    l1p_over_t = tf.where(has_t, l1p / tf.where(has_t, t, tf.ones_like(t)), tf.ones_like(t))
    bce_over_num = tf.where(has_c, bce / safe_num, l1p_over_t)
    # multiply_no_nan: a tensor gamma = 0 at a wrong-side infinite logit
    # (BCE / num = inf) leaves the cross-entropy's -z, not 0 * inf.
    grad_y = -sign * (1.0 - t) * tf.math.multiply_no_nan(bce_over_num, g) - z
    # f = 0 (a confidently right infinite logit) zeroes both; a NaN f stays NaN.
    df = tf.math.multiply_no_nan(dy, f)
    return tf.math.multiply_no_nan(grad_y, df), tf.math.multiply_no_nan(grad_z, df), parts


@functools.lru_cache(maxsize=None)
def _fused_binary_focal_op(gamma, dtype, xla):
    r"""The elementwise binary focal loss ``(1 - p_t)**gamma * BCE`` of ``(y, z)`` as one custom op.

    Forward: :math:`L = f \cdot \mathrm{BCE}` with the factor
    :math:`f = (1 - p_t)^\gamma` (see :func:`_binary_focal_parts`).

    Backward (:func:`_binary_focal_gradients`), written out so that nothing
    is differentiated through a clamp or a ``where`` (with :math:`s =
    \operatorname{sign} z` and :math:`r = t / (1 + t)`, the probability of
    the unlikely class):

    * :math:`\partial\mathrm{BCE}/\partial z = \sigma(z) - y = s\,(c - r)
      = s\,(c - \tilde y t) / (1 + t)`, with :math:`c - \tilde y t` as
      :math:`(c - \tilde y) - \tilde y \operatorname{expm1}(-a)` for
      :math:`t > 1/2` (no cancellation at ``y = 1/2``, ``z`` near 0);
    * :math:`\partial \log(1 - p_t)/\partial z = (1 - 2y)\,\sigma'(z)/(1 - p_t)
      = s\,(c - \tilde y)\, r / (c + \tilde y t)`, where the ratio
      :math:`r / (c + \tilde y t)` is :math:`1 / (1 + t)` at ``c = 0``
      (``t / t``, also after ``t`` underflows);
    * :math:`\partial L/\partial z = f\,(\gamma\,\partial_z \log(1 - p_t)\,
      \mathrm{BCE} + \partial_z \mathrm{BCE})`, the product with BCE formed
      by ``multiply_no_nan`` (0 where the ratio is 0 even at ``BCE = inf``);
    * labels: :math:`\partial L/\partial y = f\,(-\gamma\, s\,(1 - t)\,
      \mathrm{BCE} / (c + \tilde y t) - z)`, with
      :math:`\mathrm{BCE} / (c + \tilde y t) = \log(1 + t) / t` (1 at
      ``t = 0``) where ``c = 0``.

    A factor :math:`f = 0` (``z = \pm\infty`` on the likely side) makes both
    gradients 0, not ``0 * inf``. Every op is differentiable, so second
    derivatives come from the helper.
    """
    g = float(gamma)

    def forward(y, z):
        *_, bce, _, q = _binary_focal_parts(y, z)
        return tf.pow(q, g) * bce

    def backward(dy, loss, y, z):
        del loss
        grad_y, grad_z, _ = _binary_focal_gradients(dy, y, z, g)
        return grad_y, grad_z

    # Logits and labels in separate calls: the labels' gradient is pruned when unused.
    return custom_op(_xla.compiled(forward, xla), _xla.compiled_gradients(backward, xla, [(1,), (0,)]), dtype)


@functools.lru_cache(maxsize=None)
def _tensor_gamma_binary_focal_op(dtype, xla):
    r"""The op of :func:`_fused_binary_focal_op` with ``gamma`` a third input: ``op(y, z, gamma)``.

    A tensor ``gamma`` (a scalar, or broadcastable to ``z``, in ``z``'s
    dtype) gets the fused op's value and gradients in ``y`` and ``z``, the
    same ops in the same order, so the two paths agree to rounding (XLA
    may rewrite a ``pow`` by a constant). The chain of safeops ops this replaces,
    ``exp(gamma * log(1 - p_t)) * BCE`` with :math:`\log(1 - p_t)` a
    log-sum-exp of ``log(y) + log_sigmoid(-z)`` and ``log(1 - y) +
    log_sigmoid(z)``, lost the factor's derivative in the label at hard
    labels (``log(1 - y)`` is ``-inf`` at ``y = 1`` with gradient 0: at
    ``y = 1``, ``z = 3``, ``gamma = 2`` it gave -0.00653 for -0.0109) and
    was NaN in ``z`` at an infinite logit on the wrong side
    (``0 * inf`` through the factor).

    Gradient in ``gamma``: :math:`\partial L/\partial\gamma = \log(1 - p_t)
    \, L` with :math:`\log(1 - p_t) = \log(n) - \log(1 + t)` and
    :math:`n = c + \tilde y t = 1 - \tilde y\,(1 - t)` (see
    :func:`_binary_focal_parts`): ``log1p(-yt * -expm1(-a))`` where
    :math:`n > 1/2`, so that :math:`\log(1 - p_t)` near 0 keeps its relative
    accuracy (``log(c)`` with ``c = 1 - y`` rounded was 1.3e-5 off at
    ``y = 1e-3``, ``z = 50`` in float32), ``log(n)`` below. The product is
    formed by ``multiply_no_nan``: 0 where :math:`\log(1 - p_t) = 0`
    (``z = \pm\infty`` on the wrong side with a hard label, the limit of
    :math:`-|z| e^{-|z|}`, not ``0 * inf``) and where ``L = 0``; at ``n =
    0`` (the right side with a hard label, ``t`` underflowed) ``L`` is 0
    and the logarithm sees 1. Summed to ``gamma``'s shape.
    """

    def forward(y, z, g):
        *_, bce, _, q = _binary_focal_parts(y, z)
        return tf.pow(q, g) * bce

    def backward(dy, loss, y, z, g):
        grad_y, grad_z, (_, a, _, l1p, _, yt, _, num, _) = _binary_focal_gradients(dy, y, z, g)
        # log(num): log1p(-yt (1 - t)) above 1/2, log(num) below; each branch
        # sees a safe argument (1 - yt (1 - t) = 0 at yt = 1, t = 0).
        big = num > 0.5
        # _log1p: XLA's float64 log1p is off by up to 127 ULP on [-0.415, -0.355].
        log1p_part = _logarithms._log1p(tf.where(big, yt * tf.math.expm1(-a), tf.zeros_like(a)))
        log_part = tf.math.log(tf.where(big | tf.equal(num, 0.0), tf.ones_like(num), num))
        log_q = tf.where(big, log1p_part, log_part) - l1p
        grad_g = tf.math.multiply_no_nan(tf.math.multiply_no_nan(loss, log_q), dy)
        return sum_to_shape(grad_y, y), sum_to_shape(grad_z, z), sum_to_shape(grad_g, g)

    # Logits, labels and gamma in separate calls: unused gradients are pruned.
    return custom_op(_xla.compiled(forward, xla), _xla.compiled_gradients(backward, xla, [(1,), (0,), (2,)]),
                     dtype)


def _fused_binary_focal(gamma, dtype):
    """The fused op for ``gamma`` and the compute ``dtype`` (cached, so one inner XLA function each)."""
    return _fused_binary_focal_op(gamma, dtype, _xla.enabled())


# ----------------------------------------------------------------------------
# The fused categorical focal loss.


def _check_per_class(op, alpha, classes):
    """Refuses a per-class ``alpha`` whose static length is neither 1 nor the number of classes."""
    shape = getattr(alpha, "shape", None) if tf.is_tensor(alpha) else tf.TensorShape(np.shape(alpha))
    if shape is None or shape.rank != 1 or shape[0] is None or classes is None:
        return
    if shape[0] not in (1, classes):
        raise _validate.ArgumentError(_validate.message(
            op, "alpha", f"a number or one weight per class ({classes})", f"{shape[0]} weights"))


def _constant_alpha(alpha):
    """``(scale, per_class)`` for a Python number (``per_class = None``) or a list of numbers, else None.

    A scalar multiplies the reduced loss outside the fused op; a per-class
    list is a constant inside it (and part of its cache key). A tensor
    ``alpha`` takes the unfused path, which differentiates through it.
    """
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return float(alpha), None
    if isinstance(alpha, (list, tuple)) and alpha and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) for a in alpha):
        return 1.0, tuple(float(a) for a in alpha)
    return None


@functools.lru_cache(maxsize=None)
def _fused_categorical_focal_op(gamma, per_class, axis, dtype, xla, floor=None):
    r"""``sum_j alpha_j (1 - p_j)**gamma (-y_j log p_j)`` along ``axis`` as one custom op of ``(y, z)``.

    Forward: :math:`\ell = ` the exact-shift log-softmax of ``z``
    (:func:`safeops.math._logsumexp.log_softmax_forward`), :math:`q_j = 1 -
    p_j = -\operatorname{expm1}(\ell_j)` (accurate where ``p_j`` is near 1,
    since :math:`\ell_j` is then accurate in absolute terms), factor
    :math:`f_j = q_j^\gamma` by ``pow`` and term :math:`-y_j \ell_j f_j`
    (``multiply_no_nan``: a ``-inf`` mask logit with label 0 adds 0). The
    unfused composite (``log1mexp`` of ``log_softmax``) gives the same
    value at three times the cost.

    Backward: with :math:`g_j = \partial L/\partial \ell_j = \alpha_j y_j
    f_j (\gamma\, p_j\, \ell_j / q_j - 1)` (from :math:`\partial f_j /
    \partial \ell_j = -\gamma p_j q_j^{\gamma - 1}`; the ratio
    :math:`\ell_j / q_j = \log(1 - q_j) / q_j` is -1 at ``q_j = 0``, where
    :math:`p_j = 1` and the term vanishes, and its product with
    :math:`p_j = 0` is 0 at a ``-inf`` logit), the logits get
    :math:`g_i - p_i \sum_j g_j` (the log-softmax Jacobian), frozen to 0 at
    ``-inf`` (mask) logits as in :func:`safeops.math.log_softmax`, and the
    labels :math:`-\alpha_j \ell_j f_j`.

    With ``floor`` the op takes probabilities ``p`` in place of ``z``: the
    logits are :math:`z = \log c` with :math:`c = \max(p, floor)`, and the
    probabilities' gradient is written out as :func:`_probability_focal_composite`
    explains: :math:`g_i q_i / c_i - \sum_{j \ne i} g_j / S` with
    :math:`S = \sum_k c_k`, the logits' gradient divided by :math:`c_i`
    with :math:`p_i / c_i = 1 / S` taken exactly (the chain through
    :math:`p_i = c_i / S` lost the second term wherever ``p_i`` is below
    ``tiny``).
    """
    g = float(gamma)

    def weights(like):
        if per_class is None:
            return tf.ones([], like.dtype)
        return tf.constant(per_class, like.dtype)

    def factor(log_p):
        q = -tf.math.expm1(log_p)
        return q, tf.pow(q, g)

    def clamped(y, z):
        return tf.maximum(z, _common.class_floors(tf.not_equal(y, 0.0), z, floor, axis))

    def sum_of_others(v, top):
        """``sum_{j != i} v_j`` for each ``i`` along ``axis``, from partial sums over ``top`` and the rest.

        Leaving out a top entry (``p_i`` near 1) from the whole sum would
        cancel; from its own partial sum it is exact.
        """
        zeros = tf.zeros_like(v)
        v_top, v_rest = tf.where(top, v, zeros), tf.where(top, zeros, v)
        # Float32 parts over a leading axis are summed in float64 (last_axis_sums; TensorFlow and
        # XLA add running sums there): over axis 0 of 1e6 x 4 logits under uniform labels the logits'
        # gradient was 1.5e-2 relative off.
        top_sum, rest_sum = _xla.last_axis_sums([v_top, v_rest], axis)
        return (top_sum - v_top) + (rest_sum - v_rest)

    def normalised(y, z):
        """``(log p, q)`` of logits, or (with ``floor``) of probabilities, taken from ``p`` itself.

        As the log-softmax of ``log c``, ``p_j = exp(log c_j - log S)``
        carried the rounding of ``log c_j``, ``|log c_j|`` eps/2 relative:
        ``q`` of the top class (the others' mass) was 11 ULP off at ``c =
        [1.4e-10, 1]`` in float32, and the loss, ``q**(gamma + 1)``, 13
        (136 in float64 at 1e-28). Here ``q_j`` is the others' mass over
        ``S`` (the top entries left out of their own sums exactly, as in
        the backward pass), and ``log p_j = log1p(-q_j)`` where ``q_j <
        1/2``, else ``log c_j - log S``. For float64 inputs ``q``'s own
        rounding, times ``gamma``, remains: 9 ULP measured at ``gamma = 5``.
        """
        if floor is None:
            log_p = _logsumexp.log_softmax_forward(z, axis)
            return log_p, -tf.math.expm1(log_p)
        c = clamped(y, z)
        # The sums and q in float64 for narrower inputs: the factor q**gamma
        # multiplies q's relative error by gamma (8 ULP at gamma = 5).
        wide = tf.float64 if c.dtype != tf.float64 else c.dtype
        c_ = tf.cast(c, wide)
        total = tf.reduce_sum(c_, axis, keepdims=True)
        q = sum_of_others(c_, tf.equal(c_, tf.reduce_max(c_, axis, keepdims=True))) / total
        zeros = tf.zeros_like(q)
        near_one = q < 0.5
        log_p = tf.where(near_one, tf.math.log1p(-tf.cast(tf.where(near_one, q, zeros), c.dtype)),
                         tf.math.log(c) - tf.cast(tf.math.log(total), c.dtype))
        return log_p, q

    def forward(y, z):
        log_p, q = normalised(y, z)
        f = tf.cast(tf.pow(q, tf.constant(g, q.dtype)), z.dtype)
        # Summed in float64 and rounded once (_common.total): in float32 the
        # loss of 1e5 uniform classes under uniform labels was 11.6 ULP off.
        loss = _common.total(weights(z) * tf.math.multiply_no_nan(-log_p, y) * f, axis)
        # log_p is kept for the backward pass: recomputing it costs two more
        # row reductions there.
        return loss, (log_p,)

    def backward(dy, loss, residuals, y, z):
        del loss
        (log_p,) = residuals
        q, f = factor(log_p)
        w = weights(z)
        p = tf.exp(log_p)
        has_q = tf.not_equal(q, 0.0)
        ratio = tf.where(has_q, log_p / tf.where(has_q, q, tf.ones_like(q)), -tf.ones_like(q))
        g_log_p = w * y * f * (g * tf.math.multiply_no_nan(ratio, p) - 1.0)
        # Frozen at -inf (mask) logits before the sum, as log_softmax's backward.
        g_log_p = tf.where(_dtypes.is_minus_inf(z), tf.zeros_like(g_log_p), g_log_p)
        # g_i - p_i sum_j g_j, written g_i q_i - p_i sum_{j != i} g_j: for the
        # top class (p_i near 1) the direct form cancels (relative error
        # eps / q_i, 3e-4 in float64 at logits [30, 0, -5, 1]). The sum over
        # the others is formed from two partial sums, over the top entries
        # and over the rest, so that leaving out the top one is exact.
        others = sum_of_others(g_log_p, tf.equal(log_p, tf.reduce_max(log_p, axis, keepdims=True)))
        dy = tf.expand_dims(dy, axis)
        if floor is None:
            grad_z = dy * (g_log_p * q - p * others)
        else:
            c = clamped(y, z)
            grad_z = dy * (g_log_p * q / c - others / _xla.last_axis_sums([c], axis)[0])
        grad_y = dy * (-w * log_p * f)
        return sum_to_shape(grad_y, y), grad_z

    # Logits and labels in separate calls: the labels' gradient is pruned when unused.
    return custom_op_with_residuals(_xla.compiled(forward, xla, exact=(1,)),
                                    _xla.compiled_gradients(backward, xla, [(1,), (0,)]), dtype)

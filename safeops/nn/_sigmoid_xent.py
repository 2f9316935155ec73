"""Sigmoid cross-entropies from logits: plain and with a positive-class weight.

Both are written in terms of ``a = |x|`` and ``softplus(-a)`` (which lies in
``[0, log 2]``), the rewrite TensorFlow documents for
``sigmoid_cross_entropy_with_logits``, with one change: the term that grows
with ``|x|`` is multiplied by the label weight on the side ``x`` points away
from through ``multiply_no_nan``, so a ``-inf`` logit with label 0 (or
``+inf`` with label 1) adds exactly 0 instead of ``0 * inf = NaN``. The
gradient is written with both ``sigmoid(x)`` and ``sigmoid(-x)``, so its
small tail (``-sigmoid(-x)`` for a confident correct logit) keeps full
relative accuracy instead of being computed as ``sigmoid(x) - 1``.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from safeops import _dtypes, _ragged, _validate, _xla
from safeops._gradient import custom_op, sum_to_shape


def sigmoid_cross_entropy_with_logits(labels=None, logits=None, name=None):
    r"""Binary cross-entropy on logits, safe at ``-inf``/``+inf`` mask logits.

    Formula: :math:`L = -z \log\sigma(x) - (1 - z)\log(1 - \sigma(x))
    = z\,\mathrm{softplus}(-x) + (1 - z)\,\mathrm{softplus}(x)`, with
    gradients :math:`\partial L/\partial x = \sigma(x) - z` and
    :math:`\partial L/\partial z = -x`.

    Stable rewrite: with :math:`a = |x|`,
    :math:`L = w\,a + \mathrm{softplus}(-a)` where :math:`w = 1 - z` for
    :math:`x \ge 0` and :math:`w = z` otherwise, both terms non-negative for
    :math:`z \in [0, 1]`; :math:`w\,a` is 0 whenever :math:`w = 0`. The naive
    ``-z*log(sigmoid(x)) - (1-z)*log(1-sigmoid(x))`` gives ``-inf * 0`` once
    ``sigmoid`` saturates (``|x| > 17`` in float32); TensorFlow's
    ``max(x, 0) - x*z + log1p(exp(-|x|))`` is finite for finite ``x`` but
    NaN at ``x = -inf, z = 0`` and ``x = +inf, z = 1``.

    Edges:
      * ``x = -inf`` with ``z = 0`` or ``x = +inf`` with ``z = 1`` (masks, or
        certain correct predictions): loss 0, logit gradient 0.
      * ``x = -inf`` with ``z > 0`` or ``x = +inf`` with ``z < 1``: loss
        ``+inf`` (exact), logit gradient ``-z`` or ``1 - z`` (the limits).
      * Label gradient ``-x`` is ``∓inf`` at ``x = ±inf``, saturated to the
        dtype's largest finite value. ``NaN`` in ``x`` or ``z``: NaN loss
        and gradients.
      * Labels outside ``[0, 1]`` are accepted (as in TensorFlow); the loss
        may then be negative.

    Args:
      labels: A float tensor of the dtype and shape of ``logits`` (Python
        lists are converted to ``logits.dtype``).
      logits: A float tensor (float16, bfloat16, float32 or float64), or a
        ``tf.RaggedTensor`` (with ``labels`` of its row partition).
        float16 and bfloat16 are computed in float32 and rounded once.
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``logits``: the element-wise loss.

    Raises:
      ValueError: an argument is missing or the shapes differ.
      TypeError: ``logits`` is not a float tensor, or ``labels`` is not one
        of the same dtype.

    Example:

    >>> import numpy as np
    >>> from safeops import nn
    >>> nn.sigmoid_cross_entropy_with_logits([0.0, 1.0], [-np.inf, 0.0]).numpy()
    array([0.       , 0.6931472], dtype=float32)
    """
    if _ragged.any_ragged(labels, logits):
        # As tf.nn's ragged dispatch: on the flat values, one row partition.
        return _ragged.elementwise(sigmoid_cross_entropy_with_logits, labels, logits, name=name)
    op = "safeops.nn.sigmoid_cross_entropy_with_logits"
    with _validate.op_scope(op, name) as scope:
        labels, logits = _labels_and_logits(op, labels, logits)
        loss = _weighted_xent(logits.dtype, weighted=False)(
            _dtypes.to_compute(labels), _dtypes.to_compute(logits))
        return scope.output(_dtypes.from_compute(loss, logits.dtype))


def weighted_cross_entropy_with_logits(labels, logits, pos_weight, name=None):
    r"""Binary cross-entropy with the positive term weighted, safe at mask logits.

    Formula: :math:`L = q\,z\,\mathrm{softplus}(-x) + (1 - z)\,\mathrm{softplus}(x)`
    for ``pos_weight`` :math:`q`, as in TensorFlow
    (:math:`(1 - z)\,x + (1 + (q - 1) z)\,\mathrm{softplus}(-x)`).
    Gradients: :math:`\partial L/\partial x = (1 - z)\,\sigma(x) - q z\,\sigma(-x)`,
    :math:`\partial L/\partial z = q\,\mathrm{softplus}(-x) - \mathrm{softplus}(x)`,
    :math:`\partial L/\partial q = z\,\mathrm{softplus}(-x)`.

    Stable rewrite: with :math:`a = |x|`,
    :math:`L = w\,a + (q z + 1 - z)\,\mathrm{softplus}(-a)` where
    :math:`w = 1 - z` for :math:`x \ge 0` and :math:`w = q z` otherwise;
    :math:`w\,a` is 0 whenever :math:`w = 0`. TensorFlow's formula gives
    ``0 * inf = NaN`` at ``x = -inf, z = 0`` and ``x = +inf, z = 1``.

    Edges:
      * ``x = -inf`` with ``z = 0`` or ``x = +inf`` with ``z = 1``: loss 0,
        logit gradient 0.
      * ``x = -inf`` with ``q z > 0`` or ``x = +inf`` with ``z < 1``: loss
        ``+inf`` (exact), logit gradient ``-q z`` or ``1 - z``.
      * Label and ``pos_weight`` gradients are saturated to the dtype's
        largest finite value where they are infinite (at ``x = ±inf``).
        ``NaN`` anywhere: NaN loss and gradients there.

    Args:
      labels: A float tensor of the dtype and shape of ``logits``.
      logits: A float tensor (float16, bfloat16, float32 or float64).
        float16 and bfloat16 are computed in float32 and rounded once.
      pos_weight: A coefficient (Python number or float tensor of the dtype
        of ``logits``, broadcastable to it) for the positive examples.
      name: Optional name scope.

    Returns:
      A tensor of ``logits.dtype`` and the broadcast shape of ``logits`` and
      ``pos_weight``: the element-wise weighted loss.

    Raises:
      ValueError: the shapes of ``labels`` and ``logits`` differ, or
        ``pos_weight`` does not broadcast to them.
      TypeError: an argument is not a float tensor of ``logits``' dtype.

    Example:

    >>> import numpy as np
    >>> from safeops import nn
    >>> nn.weighted_cross_entropy_with_logits([0.0, 1.0], [-np.inf, 0.0], 3.0).numpy()
    array([0.       , 2.0794415], dtype=float32)
    """
    op = "safeops.nn.weighted_cross_entropy_with_logits"
    with _validate.op_scope(op, name) as scope:
        labels, logits = _labels_and_logits(op, labels, logits)
        pos_weight = _validate.float_tensor(pos_weight, op, "pos_weight", logits.dtype)
        _validate.broadcast_shape(op, "pos_weight", pos_weight, "logits", logits)
        loss = _weighted_xent(logits.dtype, weighted=True)(
            _dtypes.to_compute(labels), _dtypes.to_compute(logits), _dtypes.to_compute(pos_weight))
        return scope.output(_dtypes.from_compute(loss, logits.dtype))


def _weighted_xent(dtype: tf.DType, weighted: bool):
    """The op for ``dtype``, built once per inner-XLA setting (:func:`_weighted_xent_op`)."""
    return _weighted_xent_op(dtype, weighted, _xla.enabled())


@functools.lru_cache(maxsize=None)
def _weighted_xent_op(dtype: tf.DType, weighted: bool, xla: bool):
    """``L(z, x[, q])`` with its gradients; ``q = 1`` when not ``weighted``.

    Nine elementwise kernels forward and a dozen backward as plain ops
    (1.5x TensorFlow's composite forward at 1e5 elements); with ``xla``
    each pass is one fused loop (:mod:`safeops._xla`).
    """

    def forward(z, x, q=None):
        a = tf.abs(x)
        # softplus(-a) from the e of _sigmoid_pair, the very expression the
        # backward forms: under an outer jit_compile XLA then computes one exp
        # for both passes (a separate exp(-a) here cost 1.5 times TensorFlow's
        # composite forward+backward at 1024x1000, against 1.0).
        e, _, _ = _sigmoid_pair(x)
        tail = tf.math.log1p(e)
        pos = z if q is None else q * z
        away = tf.where(x >= 0, 1 - z, pos)
        return tf.math.multiply_no_nan(a, away) + (pos + (1 - z)) * tail

    def backward(dy, loss, z, x, q=None):
        pos = z if q is None else q * z
        e, above, below = _sigmoid_pair(x)
        dx = dy * ((1 - z) * above - pos * below)
        if q is None:
            return dy * _dtypes.saturate(-x, dtype), dx
        tail = tf.math.log1p(e)
        below = tf.nn.relu(-x) + tail  # softplus(-x), +inf at x = -inf
        dz = tf.math.multiply_no_nan(below, q) - (tf.nn.relu(x) + tail)
        dq = tf.math.multiply_no_nan(below, z)
        return (sum_to_shape(dy * _dtypes.saturate(dz, dtype), z),
                sum_to_shape(dx, x),
                sum_to_shape(dy * _dtypes.saturate(dq, dtype), q))

    if weighted:
        def fwd(z, x, q):
            return forward(z, x, q)

        def bwd(dy, y, z, x, q):
            return backward(dy, y, z, x, q)
    else:
        def fwd(z, x):
            return forward(z, x)

        def bwd(dy, y, z, x):
            return backward(dy, y, z, x)
    # The logits' gradient in a call of its own: the labels' (and pos_weight's)
    # are pruned when nobody asks for them (a whole reduction for pos_weight).
    groups = [(1,), (0, 2)] if weighted else [(1,), (0,)]
    return custom_op(_xla.compiled(fwd, xla), _xla.compiled_gradients(bwd, xla, groups), dtype)


def _sigmoid_pair(x: tf.Tensor):
    """``(e, sigmoid(x), sigmoid(-x))`` with ``e = exp(-|x|)``: one ``exp`` and one division.

    With ``r = 1 / (1 + e)``, the sigmoid of ``|x|`` is ``r`` and the one of
    ``-|x|`` is ``e * r``; each keeps its relative accuracy (a couple of
    ULP), the small one included, since nothing is subtracted from 1.
    Two ``tf.sigmoid`` calls would cost two ``exp`` (under XLA, two
    logistic loops: the fwd+bwd of the cross-entropy went from 1.3x to about
    1.1x TensorFlow's composite under ``jit_compile`` at 1e6 elements with
    this form). ``x = +-inf``: ``e = 0``, sigmoids 1 and 0; NaN stays NaN.
    The forward's ``softplus(-|x|)`` is ``log1p(e)`` of the same ``e``
    (TensorFlow's CPU ``softplus`` kernel returns ``e`` itself from
    ``|x| > 13.9`` on, up to 7 ULP off, which shows in the loss of a
    confident correct prediction).

    ``-|x|`` is written as ``-x`` or ``x`` by the sign test that picks the
    sigmoids: the second derivative differentiates this function, and
    ``tf.abs`` has derivative ``sign(0) = 0`` at 0, which made the
    cross-entropies' second derivative 0 at a zero logit (exact: 1/4, the
    point a zero-initialised output layer starts from).
    """
    up = x >= 0
    e = tf.exp(tf.where(up, -x, x))
    r = 1 / (1 + e)
    small = e * r
    return e, tf.where(up, r, small), tf.where(up, small, r)


def _labels_and_logits(op: str, labels, logits):
    """Converts the pair; ``ValueError`` if missing or of different shapes."""
    if labels is None or logits is None:
        missing = "labels" if labels is None else "logits"
        raise ValueError(_validate.message(op, missing, "given", "None"))
    logits = _validate.float_tensor(logits, op, "logits")
    labels = _validate.float_tensor(labels, op, "labels", logits.dtype)
    if not labels.shape.is_compatible_with(logits.shape):
        raise ValueError(_validate.message(
            op, "labels and logits", "the same shape", f"{labels.shape} and {logits.shape}",
            verb="have"))
    return labels, logits

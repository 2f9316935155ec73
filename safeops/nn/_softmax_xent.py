"""Softmax cross-entropies from logits: dense (soft) labels and class indices.

Both are written on one shifted log-sum-exp, computed once in the forward
pass and reused by the custom gradient, so the pair costs less than
TensorFlow's fused kernels (which compute the gradient even when only the
loss is asked for) and never meets ``0 * inf``:

* the shift is the row maximum, replaced by 0 on a row whose every logit is
  ``-inf`` (JAX's ``logsumexp`` does the same), so ``x - max`` is never
  ``-inf - (-inf)``;
* the sum ``s = sum(exp(x - max))`` is split as ``1 + rest`` and its log
  taken as ``log1p(rest)`` (Blanchard, Higham and Higham 2021, "Accurately
  computing the log-sum-exp and softmax functions", IMA J. Numer. Anal.
  41(4), Algorithm 2), so a confident correct prediction keeps its small
  loss to full relative accuracy instead of rounding it against 1;
* each term of ``rest`` is ``exp(d) (1 + err)`` with ``err`` the rounding
  error of ``d = x - max``, recovered exactly by TwoSum
  (:func:`safeops.math._logsumexp.exact_shift`): that rounding is the
  largest error left in a small loss (41 ULP in float32 before);
* a label that puts no weight on a logit never multiplies it
  (``multiply_no_nan``), so ``-inf`` mask logits add 0, not NaN.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from safeops import _dtypes, _validate, _xla
from safeops.math import _logsumexp
from safeops._gradient import custom_op_with_residuals, watched_eagerly


def softmax_cross_entropy_with_logits(labels, logits, axis=-1, name=None):
    r"""Softmax cross-entropy between soft labels and logits, safe with ``-inf`` masks.

    Formula: for each slice along ``axis``,
    :math:`L = -\sum_j y_j \log \mathrm{softmax}(x)_j
    = \sum_j y_j \,(\mathrm{lse}(x) - x_j)`, with gradient
    :math:`\partial L / \partial x = (\sum_j y_j)\,\mathrm{softmax}(x) - y`
    and :math:`\partial L / \partial y = -\log\mathrm{softmax}(x)`.
    Labels need not sum to 1 (TensorFlow accepts that too); the gradient is
    the exact derivative of the loss for any labels. TensorFlow's fused
    kernel returns ``softmax(x) - y`` instead, which is the derivative only
    when the labels sum to 1.

    Stable rewrite: with :math:`m` the slice maximum and :math:`d = x - m`,
    :math:`L = S \log s - \sum_{y_j \ne 0} y_j d_j` where :math:`S = \sum y`
    and :math:`s = \sum e^{d}`; both terms are non-negative for non-negative
    labels, so nothing cancels. :math:`\log s` is :math:`\mathrm{log1p}` of
    the sum of the non-maximal terms (Blanchard, Higham and Higham 2021,
    IMA J. Numer. Anal.), each corrected for the rounding of :math:`d`.
    The gradient at the maximum, :math:`S p_m - y_m` with :math:`p_m` near
    1, is formed as :math:`(S - y_m) - S (1 - p_m)` with :math:`1 - p_m =
    -\mathrm{expm1}(-\log s)`, so a confident row keeps its small entry
    (``[20, 0]`` with label ``[1, 0]``: ``[-2.1e-9, 2.1e-9]``, where
    TensorFlow's kernel gives ``[0, 2.1e-9]``). The naive ``-sum(y *
    log(softmax(x)))`` overflows in ``exp`` for logits above ~88 (float32),
    gives ``log(0) = -inf`` and then NaN for very negative logits, and ``0 * -inf = NaN`` at ``-inf``
    mask logits; TensorFlow's fused kernel shares the last failure.

    Edges:
      * ``-inf`` logit where the label is 0 (a mask): adds 0 to the loss;
        gradient 0 there. Finite loss and gradients for the rest of the row.
      * ``-inf`` logit where the label is nonzero: loss ``+inf`` (exact),
        logit gradient ``-y_j`` there (the limit), finite elsewhere.
      * A slice whose every logit is ``-inf``: loss 0 if every label in it is
        0, else ``+inf``; the softmax is taken as 0, so the logit gradient is
        ``-y`` (0 for an all-zero label slice). Never NaN.
      * ``+inf`` logit: the softmax is undefined (``inf - inf``); loss and
        gradients of that slice are NaN, as in TensorFlow. ``NaN`` in a
        logit: NaN loss and gradients for that slice. ``NaN`` in a label:
        NaN loss and logit gradient for that slice; the label gradient,
        ``-log softmax(x)``, does not read the labels and stays finite.
      * Gradient with respect to the labels is ``-log softmax(x)``: ``+inf``
        at a ``-inf`` logit, saturated to the dtype's largest finite value so
        that a label computed by another op (a teacher's softmax) receives
        ``0 * max = 0``, never NaN.
      * Second derivatives are exact (autodiff of the custom gradient) in
        eager, ``tf.function`` and XLA.

    Args:
      labels: A float, integer or bool tensor, array or list, broadcastable to
        ``logits`` (usually the same shape): a distribution per slice along
        ``axis``. Cast to ``logits.dtype``, as TensorFlow's op does.
      logits: A float tensor (float16, bfloat16, float32 or float64) of
        unscaled log-probabilities. float16 and bfloat16 are computed in
        float32 and rounded once.
      axis: The class dimension. Defaults to -1, the last one (also for ``None``).
      name: Optional name scope.

    Returns:
      A tensor of ``logits.dtype`` with the broadcast shape of ``labels`` and
      ``logits`` without ``axis``.

    Raises:
      TypeError: ``logits`` is not a float tensor, or ``labels`` is not a
        float or integer one.
      ValueError: the shapes do not broadcast, ``logits`` is a scalar, or
        ``axis`` is out of range.

    Example:

    >>> import numpy as np
    >>> from safeops import nn
    >>> logits = [[2.0, 0.5, -np.inf]]          # third class masked out
    >>> nn.softmax_cross_entropy_with_logits([[1.0, 0.0, 0.0]], logits).numpy()
    array([0.20141329], dtype=float32)
    """
    op = "safeops.nn.softmax_cross_entropy_with_logits"
    with _validate.op_scope(op, name) as scope:
        logits = _validate.float_tensor(logits, op, "logits")
        # TensorFlow's kernel casts the labels to the logits' dtype (float32
        # one-hot labels next to mixed_float16 logits, integer one-hots).
        labels = _validate.float_tensor(labels, op, "labels", logits.dtype, cast=True)
        rank = logits.shape.rank
        if rank == 0:
            raise _validate.ArgumentError(
                _validate.message(op, "logits", "a tensor of rank >= 1", "a scalar"))
        _validate.broadcast_shape(op, "labels", labels, "logits", logits)
        if axis is None:    # TensorFlow's op reads None as the last axis
            axis = -1
        axis = _validate.static_axis(op, axis, rank, runtime=False)
        # The axis of the logits, counted from the end: labels of a higher
        # rank add leading axes when they broadcast (a count from the front
        # then named the batch axis).
        if rank is not None and axis >= 0:
            axis -= rank
        labels, logits = _broadcast_pair(labels, logits)
        if logits.shape.rank is not None:
            axis += logits.shape.rank
        loss = _soft_label_xent(axis, logits.dtype)(_dtypes.to_compute(labels), _dtypes.to_compute(logits))
        return scope.output(_dtypes.from_compute(loss, logits.dtype))


def sparse_softmax_cross_entropy_with_logits(labels, logits, name=None):
    r"""Softmax cross-entropy for class indices, safe with masks and loud on bad labels.

    Formula: :math:`L = \mathrm{lse}(x) - x_{k}` for the class index
    :math:`k` of each example, with gradient
    :math:`\partial L / \partial x = \mathrm{softmax}(x) - \mathrm{onehot}(k)`.

    Stable rewrite: :math:`L = \log s - d_k` with :math:`d = x - \max x`
    and :math:`s = \sum e^{d}`, :math:`\log s` taken as ``log1p`` of the
    non-maximal terms (Blanchard, Higham and Higham 2021, IMA J. Numer.
    Anal.); both terms are non-negative, so a confident correct prediction
    keeps its small loss to full relative accuracy. The softmax numerator is
    kept for the gradient; nothing else is materialised. At the labelled
    class, when it is the maximum, :math:`p_k - 1 = \mathrm{expm1}(-\log
    s)`: a confident correct row keeps its small gradient (``[20, 0]`` at
    label 0: ``[-2.1e-9, 2.1e-9]``, where TensorFlow's kernel gives ``[0,
    2.1e-9]``).

    Edges:
      * ``-inf`` logits at other classes (masks): no effect on the loss,
        gradient 0 there.
      * ``-inf`` logit at the labelled class: loss ``+inf`` (exact), gradient
        ``-1`` there. A row whose every logit is ``-inf``: loss ``+inf``, the
        softmax taken as 0, gradient ``-onehot(k)``. Never NaN.
      * ``+inf`` logit: NaN loss and gradient for that row, as in TensorFlow.
        ``NaN`` logit: NaN loss and gradient for that row.
      * A label outside ``[0, num_classes)``: in eager mode and inside
        ``tf.function`` an ``InvalidArgumentError`` naming ``labels``, the
        range and the first bad value, on every device (TensorFlow raises on
        CPU but returns NaN silently on GPU). TensorFlow 2.21 drops assert
        ops inside ``jit_compile=True`` functions, and
        :func:`safeops.set_validation` can turn the check off: in both cases
        the loss and the gradient of that row are NaN, so the error shows in
        the first loss printed instead of training on a wrong class.
      * Second derivatives are exact in eager, ``tf.function`` and XLA.

    Args:
      labels: An integer tensor (int32 or int64; other integer dtypes are
        widened) of class indices in ``[0, num_classes)``, of shape
        ``logits.shape[:-1]``.
      logits: A float tensor (float16, bfloat16, float32 or float64) of shape
        ``[..., num_classes]`` and rank >= 1. float16 and bfloat16 are
        computed in float32 and rounded once.
      name: Optional name scope.

    Returns:
      A tensor of ``logits.dtype`` and the shape of ``labels``.

    Raises:
      TypeError: ``labels`` is not an integer tensor or ``logits`` not a
        float one.
      ValueError: ``labels`` does not have the shape ``logits.shape[:-1]``.
      tf.errors.InvalidArgumentError: a label is out of range (eager and
        ``tf.function``, while validation is on).

    Example:

    >>> import numpy as np
    >>> from safeops import nn
    >>> nn.sparse_softmax_cross_entropy_with_logits([0], [[2.0, 0.5, -np.inf]]).numpy()
    array([0.20141329], dtype=float32)
    """
    op = "safeops.nn.sparse_softmax_cross_entropy_with_logits"
    with _validate.op_scope(op, name) as scope:
        labels = _validate.integer_tensor(labels, op, "labels")
        logits = _validate.float_tensor(logits, op, "logits")
        return scope.output(sparse_xent(labels, logits, (op, "labels", "logits")))


def sparse_xent(labels: tf.Tensor, logits: tf.Tensor, who: tuple[str, str, str]) -> tf.Tensor:
    """The sparse cross-entropy of converted operands; errors name ``who = (op, labels name, logits name)``.

    For the losses, whose users passed ``y_true`` and ``y_pred``.
    """
    if tf.executing_eagerly() and not watched_eagerly(logits):
        # Some thirty small ops (the label check, the flattening, the
        # gathers): eager, each is a dispatch of its own (2 ms a call at
        # [8, 10], TensorFlow's kernel 0.05 ms). With no tape watching
        # the logits the whole loss is one graph call (0.5 ms); under a
        # tape only the label part is (checked_class_indices), since a
        # custom gradient inside a tf.function cannot be differentiated
        # twice eagerly.
        _check_sparse_shapes(who, labels, logits)
        try:
            return _eager_sparse_loss(who, _label_range(logits), _validate.validation_enabled(),
                                      _xla.enabled())(labels, logits)
        except tf.errors.InvalidArgumentError as error:
            raise _validate.eager_failure(error) from None
    safe_labels, valid = checked_class_indices(labels, logits, who)
    return _sparse_loss_of(labels, logits, safe_labels, valid)


def checked_class_indices(labels: tf.Tensor, values: tf.Tensor,
                          who: tuple[str, str, str]) -> tuple[tf.Tensor, tf.Tensor]:
    """``(safe_labels, valid)`` for class indices into the last axis of ``values``, checked as here.

    The shape and label checks of :func:`sparse_xent` for a loss that reads
    ``values`` at the labels itself (the generalized cross-entropy on
    probabilities): ``safe_labels`` flat, the invalid ones set to 0;
    ``valid`` their mask (all true wherever the check ran and passed).
    """
    shape_checks = _check_sparse_shapes(who, labels, values)
    expected, checked = _label_range(values), _validate.validation_enabled()
    if tf.executing_eagerly():
        try:
            return _eager_label_check(who, expected, checked)(labels, tf.shape(values)[-1])
        except tf.errors.InvalidArgumentError as error:
            raise _validate.eager_failure(error) from None
    return _checked_labels(labels, tf.shape(values)[-1], who, expected, shape_checks, checked)


def _label_range(values: tf.Tensor) -> str:
    """The labels' range, for the messages: ``"in [0, 5)"``."""
    num_classes = values.shape[-1]
    return f"in [0, {num_classes})" if num_classes is not None else "in [0, num_classes)"


def _sparse_loss_of(labels, logits, safe_labels, valid):
    """The loss at checked labels, in ``labels``' shape and ``logits``' dtype."""
    flat_logits = tf.reshape(logits, tf.stack([-1, tf.shape(logits)[-1]]))
    loss = _index_xent(logits.dtype)(_dtypes.to_compute(flat_logits), safe_labels, valid)
    return tf.reshape(_dtypes.from_compute(loss, logits.dtype), tf.shape(labels))


@functools.lru_cache(maxsize=None)
def _eager_sparse_loss(who: tuple, expected: str, checked: bool, xla: bool):
    """The whole loss as one ``tf.function``, for eager calls with no tape (``xla``: a cache key only)."""
    del xla  # read by _index_xent while tracing

    def loss(labels, logits):
        safe_labels, valid = _checked_labels(labels, tf.shape(logits)[-1], who, expected, [], checked)
        return _sparse_loss_of(labels, logits, safe_labels, valid)

    return tf.function(loss, autograph=False, reduce_retracing=True)


def _checked_labels(labels, num_classes, who, expected, shape_checks, checked):
    """``(safe_labels, valid)``: flat labels with the invalid ones set to 0, and the mask of valid ones.

    ``checked``: an assertion (after ``shape_checks``) that every label is
    valid, naming the first that is not.
    """
    flat_labels = tf.reshape(labels, [-1])
    valid = tf.logical_and(flat_labels >= 0, flat_labels < tf.cast(num_classes, labels.dtype))
    checks = []
    if checked:
        # The first bad label, or the sentinel 0 after the end when all are
        # valid (also for an empty batch, where argmax alone has nothing to reduce).
        def first_bad():
            return tf.gather(
                tf.concat([flat_labels, tf.zeros([1], labels.dtype)], 0),
                tf.argmax(tf.concat([tf.cast(tf.logical_not(valid), tf.int32), tf.ones([1], tf.int32)], 0)))

        checks = _validate.assert_that(tf.reduce_all(valid), who[0], who[1], expected, first_bad,
                                       received="a label value of")
    with tf.control_dependencies(shape_checks + checks):
        return tf.where(valid, flat_labels, tf.zeros_like(flat_labels)), valid


@functools.lru_cache(maxsize=None)
def _eager_label_check(who: tuple, expected: str, checked: bool):
    """:func:`_checked_labels` as one ``tf.function`` for eager calls (one trace for every batch size)."""

    def check(labels, num_classes):
        return _checked_labels(labels, num_classes, who, expected, [], checked)

    return tf.function(check, autograph=False, reduce_retracing=True)


@_xla.per_axis
def _soft_label_xent(axis: int, dtype: tf.DType, xla: bool):
    """Cross-entropy along ``axis`` with the shifted sum kept for the gradient.

    With ``xla`` the forward pass is one inner XLA function: the exact
    shift (:func:`_shifted_log_sum_exp`) costs nine more elementwise
    kernels as TensorFlow ops, and nothing fused.
    """

    def forward(y, x):
        shift, d, e, s, log_s = _shifted_log_sum_exp(x, axis)
        # The label mass and the label-weighted shifted logits are summed in
        # float64 (safeops._dtypes.sum_dtype) and the loss rounded once
        # where that is a dot (rows shorter than 4096 under XLA on a CPU: the
        # widening is a conversion in its loop, 1.02 to 1.09 times the
        # float32 form's time at 1024x1000 in three A/B runs) or the axis is
        # not the last one (which TensorFlow's kernels and XLA sum as running
        # sums: over axis 0 of 1e5 x 16 logits under labels of 1e-5 the loss
        # was 102 ULP off). Long last-axis rows keep float32 sums: widened
        # they cost 1.15 to 1.2 times as much at 256x32000, where smoothed
        # labels leave the loss 4.2 ULP off (5.3 at 1e5 classes; all
        # hand-measured).
        # A float64 input has no wider type: last_axis_sums takes trees of
        # short sums for it (7 ULP over rows of 1e5 before).
        parts = [y, tf.math.multiply_no_nan(d, y)]
        if y.dtype == tf.float64 or _xla.sums_as_dot(y, axis) or _xla.running_sums(y, axis):
            wide = _dtypes.sum_dtype(y.dtype)
            total, dot = _xla.last_axis_sums(parts, axis, wide)
            log_s_wide = tf.cast(log_s, wide)
        else:
            total, dot = _xla.last_axis_sums(parts, axis)
            log_s_wide = log_s
        # An all -inf slice has s == 0: its loss is |dot|, 0 without label
        # weight, +inf with it (dot is -inf then).
        loss = tf.cast(tf.where(s == 0, tf.abs(dot), total * log_s_wide - dot), y.dtype)
        return tf.squeeze(loss, axis), (shift, e, s, log_s, tf.cast(total, y.dtype))

    def backward(dy, loss, residuals, y, x):
        shift, e, s, log_s, total = residuals
        dy = tf.expand_dims(dy, axis)
        scaled = total * dy
        dx = e * _safe_ratio(scaled, s) - dy * y
        # At the maximum (e = 1), T p - dy y with p = 1/s near 1 rounds
        # 1 - p to 0 ([20, 0], label [1, 0]: the exact -2.1e-9 came out 0):
        # written as (T - dy y) + T (p - 1), with p - 1 = e/s - 1 =
        # e expm1(-log s) + (e - 1) from the accurate log s, it is kept. (The
        # e - 1 is 0 there; it keeps e's derivative for the second order.)
        # Only where p > 1/2 (s < 2): for a small p the split adds two terms
        # of size T whose sum is T p, an error up to eps T, 1/p ULP (the
        # maximum of rows of 32000 normal logits under labels elsewhere was
        # 2e-5 relative off, 6e-5 with one logit 1 above the rest), where
        # the plain T p - dy y is accurate.
        near = (scaled - dy * y) + scaled * (e * tf.math.expm1(-log_s) + (e - 1.0))
        dx = tf.where(tf.equal(e, 1.0) & (s < 2.0), near, dx)
        dlabels = dy * _dtypes.saturate(log_s - (x - shift), dtype)
        return dlabels, dx

    # The backward as inner XLA functions too, one per input's gradient (the
    # labels' is pruned when nobody asks for it): as TensorFlow kernels the
    # select at the maximum above is three more passes over the batch.
    return custom_op_with_residuals(_xla.compiled(forward, xla, exact=(1,)),
                                    _xla.compiled_gradients(backward, xla, [(1,), (0,)]), dtype)


@functools.lru_cache(maxsize=None)
def _index_xent(dtype: tf.DType):
    """``op(x, labels, valid)``: the cross-entropy of ``[n, C]`` logits at ``labels``.

    NaN rows where not ``valid``.

    The labels and the mask are inputs of the op (constants to the gradient
    helper), not closed over: see :func:`safeops._gradient.custom_op_with_residuals`.
    """

    def at_label(labels):
        rows = tf.range(tf.size(labels, out_type=labels.dtype), dtype=labels.dtype)
        return tf.stack([rows, labels], axis=1)

    def forward(x, labels, valid):
        d, e, s, log_s = _last_axis_log_sum_exp(_xla.enabled())(x)
        loss = tf.squeeze(log_s, -1) - tf.gather_nd(d, at_label(labels))
        return tf.where(valid, loss, _dtypes.nan_or_zero(~valid, loss.dtype)), (e, s, log_s)

    def backward(dy, loss, residuals, x, labels, valid):
        e, s, log_s = residuals
        scale = tf.where(valid, dy, _dtypes.nan_or_zero(~valid, dy.dtype))
        dx = e * _safe_ratio(tf.expand_dims(scale, -1), s)
        at = at_label(labels)
        # The label's entry dy (p - 1): where it is the maximum (e = 1),
        # p - 1 = e expm1(-log s) + (e - 1) from the accurate log s (the
        # e - 1, 0 there, keeps e's derivative for the second order), where
        # e / s - 1 rounds to 0 for a confident row ([20, 0] at label 0:
        # -2.1e-9, not 0).
        e_label = tf.gather_nd(e, at)
        p_minus_one = e_label * tf.math.expm1(-tf.squeeze(log_s, -1)) + (e_label - 1.0)  # e - 1: as above
        at_label_grad = tf.where(tf.equal(e_label, 1.0), scale * p_minus_one, tf.gather_nd(dx, at) - dy)
        return tf.tensor_scatter_nd_update(dx, at, at_label_grad), None, None

    return custom_op_with_residuals(forward, backward, dtype)


@functools.lru_cache(maxsize=None)
def _last_axis_log_sum_exp(xla: bool):
    """``(d, e, s, log s)`` of :func:`_shifted_log_sum_exp` on the last axis (one XLA function with ``xla``)."""
    return _xla.compiled(lambda x: _shifted_log_sum_exp(x, -1)[1:], xla, exact=(0,))


def _shifted_log_sum_exp(x: tf.Tensor, axis: int):
    """``(shift, d, e, s, log s)`` with ``d = x - shift``, ``e = exp(d)``, ``s = sum(e)``.

    ``shift`` is the slice maximum, or 0 where the slice is all ``-inf``
    (then ``s = 0`` and ``log s`` is returned as 0, never ``-inf``, so
    nothing downstream meets ``inf - inf``). ``log s`` is
    ``log1p(rest + ties - 1)`` where ``rest`` sums the terms off the
    maximum and ``ties`` counts the terms at it (each exactly 1): the
    accurate variant of Blanchard, Higham and Higham (2021).

    Under XLA on a CPU (:func:`safeops._xla.sums_as_dot`) both sums are one
    fused dot, and ``ties`` must then not need the ``exp``: each tie is
    counted as ``1 + d`` (``d = 0`` there), the exact count with the
    derivative of its term ``e = exp(d)``, and ``s = rest + ties``. With
    TensorFlow's kernels, where every elementwise step is one more pass,
    ``s`` sums ``e`` and ``ties`` is ``s - rest`` rounded, carrying the
    derivative of ``s - rest``. The second derivative (autodiff of the
    gradient) needs the maximum's term in both. A NaN reaches ``log s``
    either way.
    """
    x = _xla.exact_input(x)  # the ties at the maximum are counted by x - shift == 0 (see exact_input)
    shift = tf.reduce_max(x, axis, keepdims=True)
    shift = tf.stop_gradient(tf.where(_dtypes.is_minus_inf(shift), tf.zeros_like(shift), shift))
    d, err = _logsumexp.exact_shift(x, shift)
    e = tf.exp(d)
    # Each term off the maximum is exp(d) (1 + err), err the rounding of
    # x - shift recovered exactly: without it a confident prediction's loss,
    # log1p(rest) ~ rest, carries the relative error |d| eps / 2 of its
    # largest term (up to 41 ULP in float32 and 267 in float64 in a sweep of
    # 240 rows before this; 1.2 and 1.9 after). The correction is itself
    # flushed where e * err is subnormal (a loss below ~1e-31 in float32).
    corrected = e + tf.stop_gradient(tf.math.multiply_no_nan(e, err))
    zero = tf.zeros([], e.dtype)
    # rest is summed in float64 (safeops._dtypes.sum_dtype) and rounded once
    # after 1 is taken off: in float32 the loss of a confident row over many
    # classes, log1p(rest) ~ rest, was 23 ULP off with 3999 terms of
    # exp(-15.3) and 530 ULP with 99999 (equal terms' partial sums all round
    # the same way).
    wide = _dtypes.sum_dtype(e.dtype)
    if _xla.sums_as_dot(e, axis):
        at_max = tf.equal(d, 0.0)
        off_max, at_max_count = tf.where(at_max, zero, corrected), tf.where(at_max, 1.0 + d, zero)
        rest, ties = _xla.last_axis_sums([off_max, at_max_count], axis, wide)
        s = tf.cast(rest + ties, e.dtype)
    else:
        # The count s - rest is rounded to an integer: where many terms tie
        # over an axis other than the last, whose float32 sums TensorFlow's
        # kernels and XLA accumulate as running sums, s is summed in float64
        # too (85714 maxima among 1e5 entries of an axis 0: a float32 s was
        # 4.2 off in a graph, 8.5 under XLA, and the loss over 100 ULP).
        if not _xla.running_sums(e, axis):
            s = tf.reduce_sum(e, axis, keepdims=True)
            s_wide = tf.cast(s, wide)
        else:
            s_wide = tf.reduce_sum(tf.cast(e, wide), axis, keepdims=True)
            s = tf.cast(s_wide, e.dtype)
        rest = tf.reduce_sum(tf.cast(tf.where(d < 0, corrected, zero), wide), axis, keepdims=True)
        ties = _round_with_identity_gradient(s_wide - rest)
    log_s = tf.math.log1p(tf.where(s == 0, tf.zeros_like(s), tf.cast(rest + (ties - 1), e.dtype)))
    return shift, d, e, s, log_s


@tf.custom_gradient
def _round_with_identity_gradient(t: tf.Tensor):
    """``round(t)``, differentiated as ``t`` (a count whose terms each carry a derivative)."""
    return tf.round(t), lambda dy: dy


def _safe_ratio(numerator: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
    """``numerator / s``, 0 where ``s == 0`` (an all ``-inf`` slice), NaN kept.

    The denominator is replaced before dividing so that second derivatives do
    not meet ``0 * inf`` in the branch ``tf.where`` discards. A NaN
    numerator stays NaN where ``s == 0`` too: the sparse op's invalid label
    (validation off) on an all ``-inf`` row had a finite gradient.
    """
    empty = s == 0
    ratio = numerator / tf.where(empty, tf.ones_like(s), s)
    kept = tf.where(tf.math.is_nan(numerator), numerator, tf.zeros_like(numerator))
    return tf.where(empty, kept, ratio)


def _broadcast_pair(labels: tf.Tensor, logits: tf.Tensor):
    """Broadcasts ``labels`` and ``logits`` to one shape (a no-op when equal)."""
    if labels.shape.is_fully_defined() and labels.shape == logits.shape:
        return labels, logits
    shape = tf.broadcast_dynamic_shape(tf.shape(labels), tf.shape(logits))
    return tf.broadcast_to(labels, shape), tf.broadcast_to(logits, shape)


def _check_sparse_shapes(who: tuple, labels: tf.Tensor, logits: tf.Tensor) -> list:
    """``ValueError`` naming both arguments unless ``labels.shape == logits.shape[:-1]``.

    Where a rank or a batch dimension is unknown until the graph runs,
    returns an assertion that checks the shapes then, as TensorFlow's kernel
    does: a scalar label next to ``[1, n]`` logits, or ``[2]`` labels next
    to ``[1, n]`` logits, would otherwise flatten into a plausible loss of
    the wrong length. Else ``[]``. The assertion stays on with
    :func:`safeops.set_validation` off: it reads shapes, not values.
    """
    op, label_name, logit_name = who
    both = f"{label_name} and {logit_name}"
    expected = "shapes [d0, ..., dn] and [d0, ..., dn, num_classes]"
    # Each message ends with TensorFlow's own sentence for the case, which
    # code and tests written against tf.nn match on.
    if logits.shape.rank == 0:
        raise _validate.ArgumentError(
            _validate.message(op, logit_name, "a tensor of rank >= 1", "a scalar")
            + f". `{logit_name}` cannot be a scalar.")
    if logits.shape[-1] == 0:   # no class for any label to index
        raise _validate.ArgumentError(
            _validate.message(op, logit_name, "at least one class (a last dimension >= 1)",
                              f"shape {logits.shape}", verb="have")
            + ". Must have at least one class.")
    known_ranks = labels.shape.rank is not None and logits.shape.rank is not None
    if known_ranks and labels.shape.rank != logits.shape.rank - 1:
        raise _validate.ArgumentError(
            _validate.message(op, both, expected, f"{labels.shape} and {logits.shape}")
            + f". `{label_name}.shape.rank` must equal `{logit_name}.shape.rank - 1`.")
    if known_ranks and not labels.shape.is_compatible_with(logits.shape[:-1]):
        raise _validate.ArgumentError(
            _validate.message(op, both, expected, f"{labels.shape} and {logits.shape}"))
    if not known_ranks or not (labels.shape.is_fully_defined() and logits.shape[:-1].is_fully_defined()):
        labels_shape, logits_shape = tf.shape(labels, out_type=tf.int64), tf.shape(logits, out_type=tf.int64)
        same_rank = tf.equal(tf.size(labels_shape) + 1, tf.size(logits_shape))
        matching = tf.cond(
            same_rank,
            lambda: tf.reduce_all(tf.equal(labels_shape, logits_shape[:-1])),
            lambda: tf.constant(False))
        data = [f"{op}: {both} must be {expected}, got", labels_shape, "and", logits_shape]
        return [tf.debugging.Assert(matching, data)]
    return []

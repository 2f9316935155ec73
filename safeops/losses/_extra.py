"""Losses Keras lacks, in stable form: ``gaussian_nll`` and ``kl_divergence_with_logits``."""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf

from safeops.math import _logarithms, _logsumexp
from safeops import _dtypes, _gradient, _probabilities, _validate, _xla
from safeops._gradient import custom_op
from safeops.losses import _common
from safeops.losses._authoring import LossFunctionWrapper

_REDUCTION = "sum_over_batch_size"
_LOG_2PI = math.log(2.0 * math.pi)


@keras.saving.register_keras_serializable(package="safeops")
def gaussian_nll(y_true, y_pred, *, min_variance=None):
    r"""Gaussian negative log-likelihood of ``y_true`` under a predicted mean and log-variance.

    Formula: with ``y_pred = concat([mean, log_variance], -1)`` (the last
    axis holds ``2 d`` values for ``d`` targets) and :math:`s` the
    log-variance,
    :math:`\operatorname{mean}_{-1}\,\tfrac12\,[\log 2\pi + s + (y - \mu)^2 e^{-s}]`.

    Stable rewrite: the network predicts :math:`s = \log\sigma^2`, so the
    variance is positive by construction, and :math:`s` is floored at
    :math:`\log v_{min}` with a straight-through gradient (the gradient at
    the floor is the gradient of the formula there: finite, live, C4). The
    residual is scaled before squaring, :math:`((y - \mu) e^{-s/2})^2`, so
    it overflows only where the loss itself does. The naive
    ``0.5 * (log(var) + (y - mu)**2 / var)`` on a predicted variance is
    ``-inf``/``inf``/NaN once ``var`` underflows to 0; a predicted
    log-variance without a floor lets the loss run to ``-inf`` on a
    perfectly fitted point (``s -> -inf``) and ``e^{-s}`` overflow for
    ``s < -88`` (float32).

    Edges:
      * ``s <= log(min_variance)`` (``-inf`` included): value at the floor,
        gradient ``0.5 (1 - (y - mu)**2 / min_variance)`` (finite).
      * ``s = +inf``: ``+inf`` (an infinitely wide Gaussian has no density).
      * A residual so large that ``(y - mu)**2 / (2 v)`` overflows: ``inf``
        (rounded), with gradients saturated at the dtype's largest value
        (``-max`` for ``s``), never ``inf``; the second derivative in ``s``
        (``0.5 (y - mu)**2 / v``, beyond the range too) is NaN there.
      * float16: at the default floor (9.8e-4) a residual above about 11
        makes ``(y - mean)**2 / (2 v)`` exceed 65504, and the float16 result
        is ``inf``; the Loss class computes and returns float32.
      * NaN anywhere gives NaN.

    Args:
      y_true: Targets, shape ``[..., d]``.
      y_pred: ``[..., 2 d]``: the means, then the log-variances; float16,
        bfloat16, float32 or float64 (half dtypes computed in float32).
      min_variance: Keyword-only variance floor. Defaults to ``eps`` of
        ``y_pred``'s dtype (1.2e-7 in float32, 9.8e-4 in float16, 2.2e-16 in
        float64; the dtype before a Loss class widened it), where the loss
        and its gradient stay in range (``safeops._dtypes.variance_floor``).
        Pass a value matching the scale of your data.

    Returns:
      The per-example loss, ``y_pred``'s shape without the last axis.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: the last axis of ``y_pred`` is not twice that of ``y_true``
        (``InvalidArgumentError`` when the graph runs, where the traced
        shapes leave it unknown).

    Example:

    >>> from safeops import losses
    >>> losses.gaussian_nll([[0.0]], [[0.0, 0.0]]).numpy()   # 0.5 * log(2 pi)
    array([0.9189385], dtype=float32)
    >>> round(float(losses.gaussian_nll([[0.0]], [[0.0, -1000.0]])[0]), 3)  # floored, not -inf
    -7.052
    """
    op = "safeops.losses.gaussian_nll"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, True)
        y = _common.labels_like(op, y_true, pred)
        d, d2 = y.shape[-1] if y.shape.rank else None, pred.values.shape[-1] if pred.values.shape.rank else None
        expected = "of shape [..., 2 d] (means, then log-variances) for y_true [..., d]"
        if (d is not None and d2 is not None and d2 != 2 * d) or (d2 is not None and d2 % 2):
            raise ValueError(_validate.message(op, "y_pred", expected, f"{pred.values.shape} for {y.shape}"))
        if y.shape.rank and pred.values.shape.rank:   # the batch axes: TensorFlow's Sub said it first
            try:
                tf.broadcast_static_shape(y.shape[:-1], pred.values.shape[:-1])
            except ValueError:
                raise _validate.ArgumentError(_validate.message(
                    op, "y_true and y_pred", "broadcast-compatible shapes in every axis but the last",
                    f"{y.shape} and {pred.values.shape}")) from None
        values = pred.values
        if d is None or d2 is None:  # a last axis known only when the graph runs: checked there
            d = tf.shape(y)[-1] if d is None else d
            checks = _validate.assert_that(tf.equal(tf.shape(values)[-1], 2 * d), op, "y_pred", expected,
                                           lambda: tf.shape(values)[-1], "last dimension")
            if checks:
                with tf.control_dependencies(checks):
                    values = tf.identity(values)
        # The loss overflows to inf for a residual beyond about sqrt(max) times
        # the deviation (1.8e19 at unit variance in float32), a rounded
        # overflow; its gradient for s, 0.5 (1 - z**2), would be -inf there and
        # turn an optimizer step NaN. Saturated at the dtype's largest value
        # (an identity forward), it keeps its sign and stays finite (C1).
        values = _probabilities.saturating_cast(values, values.dtype)
        mean, log_variance = values[..., :d], values[..., d:]
        if min_variance is not None and not _validate.is_real_number(min_variance):
            raise TypeError(_validate.message(op, "min_variance", "None or a positive number",
                                              repr(min_variance)))
        floor = _dtypes.variance_floor(pred.clamp_dtype) if min_variance is None else float(min_variance)
        if not floor > 0:
            raise ValueError(_validate.message(op, "min_variance", "a positive number", min_variance))
        s = _floored(math.log(floor), pred.compute_dtype)(log_variance)
        z = (y - mean) * tf.exp(-0.5 * s)
        return pred.output(_common.mean(0.5 * (_LOG_2PI + s + tf.square(z)), -1))


@keras.saving.register_keras_serializable(package="safeops")
def kl_divergence_with_logits(y_true, y_pred, axis=-1):
    r"""KL divergence between two categorical distributions given by their logits.

    Formula: :math:`\mathrm{KL}(\operatorname{softmax}(t)\,\|\,\operatorname{softmax}(s))
    = \sum_j q_j (\log q_j - \log p_j)` with :math:`q = \operatorname{softmax}(t)`
    from ``y_true`` (a teacher's logits) and :math:`\log p =`
    ``log_softmax(y_pred)``, along ``axis`` (knowledge distillation, Hinton,
    Vinyals & Dean 2015, arXiv:1503.02531).

    Stable rewrite: both log-probabilities by :func:`safeops.math.log_softmax`
    (Blanchard, Higham & Higham 2021), their difference taken elementwise,
    and set to 0 where ``q_j = 0`` before
    the weighting by ``q``, so a class masked in the teacher
    (``t_j = -inf``) adds 0 and passes no gradient, even where the student
    masks it too. The naive
    ``sum(softmax(t) * (log(softmax(t)) - log(softmax(s))))`` is NaN at any
    ``-inf`` logit and loses every probability that underflows. That sum
    still loses its value's digits: its terms have both signs and cancel for
    two close distributions (the end of a distillation run), and each
    log-probability carries a rounding of about ``eps |log q_j|``, which
    can exceed a small KL (11% off at ``t = [0, 0, -20]``, ``s = [0, 0,
    -30]`` in float32). The op's forward computes only a value from
    float64: for float32 and narrower inputs the same sum in float64, and a
    centred form without cancellation (see ``_centred_kl``) only where that
    would not do (a KL below about 1e-6): within 1 ULP of mpmath in float32
    where the plain sum was 20000 ULP off at ``t = [0, 0.01, 0.02]``, ``s =
    0``. For float64 inputs the centred form has rounding of its own:
    within 5 ULP measured on random and masked rows (the plain sum is kept
    where it is the more accurate). The backward computes the plain sum's
    gradient directly (``_kl_gradients``), keeping the small entries of a
    confident row.

    Edges:
      * ``t_j = -inf``: no contribution, gradient 0 (also if ``s_j = -inf``).
      * ``s_j = -inf`` with ``q_j > 0``: ``+inf`` (exact).
      * A teacher row all ``-inf``: 0, gradients 0. NaN in either gives NaN,
        and NaN gradients for both.
      * Student logits so far apart that ``log_softmax`` overflows (a spread
        near the dtype's largest value): float64 inputs give ``inf``, as
        ``log_softmax`` does; narrower ones the value computed in float64
        (``1.27e38`` at ``t = [0, 1, 0]``, ``s = [-2e38, 2e38, 0]``), ``inf``
        only beyond their range.
      * float64 inputs: a teacher probability below float64's ``tiny`` (a
        teacher gap above 708) is dropped with its term; float32 and
        narrower inputs keep it (their value is computed in float64).
      * Gradients flow to both arguments (wrap ``y_true`` in
        ``tf.stop_gradient`` for a fixed teacher).

    Args:
      y_true: Teacher logits, the shape of ``y_pred``.
      y_pred: Student logits; float16, bfloat16, float32 or float64.
      axis: The class axis. Defaults to -1.

    Returns:
      The per-example divergence, ``y_pred``'s shape without ``axis``.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: the shapes differ or ``axis`` is out of range.

    Example:

    >>> from safeops import losses
    >>> losses.kl_divergence_with_logits([[0.0, float("-inf")]], [[0.0, 0.0]]).numpy()
    array([0.6931472], dtype=float32)
    """
    op = "safeops.losses.kl_divergence_with_logits"
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, True)
        axis = _common.check_axis(op, axis, pred.values.shape.rank)
        t = _common.labels_like(op, y_true, pred)
        _common.same_shape(op, t, pred.values)
        kl = _kl_with_logits(axis, pred.dtype)(t, pred.values)
        if _gradient.in_vectorized_map():  # the op's gradient is dropped there (see _gradient)
            kl = _gradient.with_plain_gradient(kl, _plain_kl_with_logits(t, pred.values, axis))
        return pred.output(kl)


@_xla.per_axis
def _kl_with_logits(axis, dtype, xla: bool):
    r"""The op along ``axis``: its value from float64, its gradient from the plain sum.

    Forward, only the value (no gradient is formed through it). The sum
    :math:`\sum_j q_j (\log q_j - \log p_j)` of rounded log-probabilities
    loses its value's digits: each :math:`\log q_j` is off by about
    :math:`\epsilon |\log q_j|`, which the difference keeps, so the sum is
    off by up to :math:`\epsilon \sum_j q_j (|\log q_j| + |\log p_j|)`, an
    entropy's worth of ULP whatever the KL. Where the KL is small against
    that (two close distributions, or a few classes that differ far out in
    the tail: 11% off at ``t = [0, 0, -20]``, ``s = [0, 0, -30]`` in
    float32) its digits are gone, and a test on the terms' cancellation (an
    earlier gate) let rows 12 ULP off through on random logits.

    * float32 and narrower inputs: the same sum in float64
      (:func:`_wide_kl`), which has 29 bits to spare: its error is below
      :math:`\epsilon_{64}` (bound + 64), within half a float32 ULP unless
      that exceeds :math:`2^{-26}` times the KL. Only a batch with such a
      row (a KL below about 1e-6: two close distributions) pays for the
      centred form (:func:`_centred_kl`), twice the float64 sum.
    * float64 inputs: the centred form has errors of its own (its
      :math:`e^{-x_j}` amplifies the rounding of :math:`x_j` by
      :math:`|x_j|`: 5 ULP at ``t = [0, -30, 5]``, ``s = 0``, up to 59
      where the KL is large). The plain sum is kept where its rounding
      bound is below 3 times the KL: on 2400 random rows (against mpmath at
      150 digits) it was within 3.1 ULP there, and the centred form within
      4.6 ULP above (the plain one up to 1e17 ULP).

    Backward: the plain sum's gradient (:func:`_kl_gradients`), in the
    input's dtype, one inner XLA call per argument. The plain sum itself is
    never formed: it was, forward, only to carry this gradient.
    """
    wide = tf.float64

    wide_kl = _xla.compiled(functools.partial(_wide_kl, axis=axis), xla, exact=(0, 1))
    centred_kl = _xla.compiled(functools.partial(_centred_kl, axis=axis), xla, exact=(0, 1))

    def narrow_value(t, s):
        # Stopped: a tf.function differentiated from outside (twice, under
        # jit_compile) otherwise builds the tf.cond's gradient, which needs
        # Optional ops that XLA lacks, although the custom gradient never
        # differentiates this pass.
        t, s = tf.stop_gradient(t), tf.stop_gradient(s)
        kl, bound = wide_kl(t, s)
        close = bound + 64.0 > 2.0**26 * tf.abs(kl)

        def centred_value():
            centred = centred_kl(t, s)
            return tf.where(close & tf.math.is_finite(centred), centred, kl)

        if _gradient.in_vectorized_map():  # its tf.cond becomes dynamic shapes there, which XLA refuses
            return tf.cast(centred_value(), t.dtype)
        return tf.cast(tf.cond(tf.reduce_any(close), centred_value, lambda: kl), t.dtype)

    def wide_value(t, s):
        kl, bound = _exact_kl(t, s, axis)
        centred = _centred_kl(t, s, axis)
        plain = (bound < 3.0 * tf.abs(kl)) | ~tf.math.is_finite(kl) | ~tf.math.is_finite(centred)
        return tf.where(plain, kl, centred)

    if _dtypes.compute_dtype(dtype) == wide:
        forward = _xla.compiled(wide_value, xla, exact=(0, 1))
    else:
        def forward(t, s):
            return narrow_value(t, s)

        # The second-order pass recomputes the forward as plain ops; the
        # gradient does not read the value, so the float64 sum alone will do.
        forward.python_function = lambda t, s: tf.cast(_wide_kl(t, s, axis)[0], t.dtype)

    def backward(dy, kl, t, s):
        return _kl_gradients(dy, t, s, axis)

    # The backward's arguments: dy, the value, t, s (whose maxima it takes again).
    return custom_op(forward, _xla.compiled_gradients(backward, xla, [(0,), (1,)], exact=(2, 3)), dtype)


def _plain_kl_with_logits(t, s, axis):
    """The plain sum in TensorFlow's ops, for its gradient where a vectorizer dropped the op's.

    The difference is set to 0 where ``q_j = 0`` before the product, so a
    masked teacher class passes no ``0 * inf`` into the gradient, and an all
    ``-inf`` teacher row (a NaN softmax in TensorFlow) is read as zeros and
    contributes 0.
    """
    empty = tf.reduce_all(_dtypes.is_minus_inf(t), axis, keepdims=True)
    t = tf.where(empty, tf.zeros_like(t), t)
    q = tf.nn.softmax(t, axis)
    live = tf.not_equal(q, 0.0) & ~empty  # NaN kept
    gap = tf.where(live, tf.nn.log_softmax(t, axis) - tf.nn.log_softmax(s, axis), tf.zeros_like(q))
    return tf.reduce_sum(gap * q, axis)


def _kl_gradients(dy, t, s, axis):
    r"""``(d/dt, d/ds)`` of :math:`\sum_j [q_j > 0]\, q_j (\log q_j - \log p_j)` times ``dy``.

    With :math:`g_j = \log q_j - \log p_j` (0 where :math:`q_j = 0`) and
    :math:`K = \sum_j q_j g_j`: :math:`\partial/\partial t_k = q_k (g_k -
    K)` and :math:`\partial/\partial s_k = p_k Q - q_k` with :math:`Q =
    \sum_j q_j = 1`, both computed so that a confident row keeps its small
    entries:

    * teacher: :math:`g_k - K = (g_k - c) - \sum_j q_j (g_j - c)` for any
      :math:`c`; with :math:`c = g_m` of the entry above 1/2 (at most one; 0
      if none) the sum runs over the small entries only, and the top
      entry's :math:`g_m - K` is formed without rounding :math:`1 - q_m`.
    * student: where both :math:`p_k` and :math:`q_k` exceed 1/2,
      :math:`p_k Q - q_k = (1 - q_k) - Q (1 - p_k) - (1 - Q)` from the exact
      complements (:func:`safeops.math._logsumexp.softmax_parts`): at
      ``t = [20, 0]``, ``s = [21, 0]`` in float32, ``p - q`` rounds to 0 at
      the top entry.

    Masks, as :func:`safeops.math.log_softmax`'s and :func:`safeops.math.softmax`'s
    gradients gave through the plain sum: a class the teacher masks
    (:math:`q_k = 0`) gets no teacher gradient; a class the student masks
    (:math:`s_k = -\infty`) gets no student gradient, and :math:`Q` is the
    teacher's mass on the other classes (0 for an all ``-inf`` teacher row,
    whose gradients are 0). NaN rows give NaN.
    """
    log_q, q, q_rest, q_mass = _logsumexp.softmax_parts(t, axis)
    log_p, p, p_rest, _ = _logsumexp.softmax_parts(s, axis)
    dy = tf.expand_dims(dy, axis)
    zeros = tf.zeros_like(q)
    gap = tf.where(tf.not_equal(q, 0.0), log_q - log_p, zeros)
    big = q > 0.5
    c = tf.reduce_sum(tf.where(big, gap, zeros), axis, keepdims=True)
    others, = _xla.last_axis_sums([tf.where(big, zeros, q * (gap - c))], axis)  # float64 over a leading axis
    d_t = dy * (q * ((gap - c) - others))
    masked = _dtypes.is_minus_inf(s)
    dead, = _xla.last_axis_sums([tf.where(masked, q, zeros)], axis)
    kept = q_mass - dead
    # Both above 1/2: the rows' maxima, whose complements the rows hold.
    confident = (q > 0.5) & (p > 0.5)
    d_s = tf.where(confident, (q_rest - kept * p_rest) - dead, kept * p - q)
    return d_t, tf.where(masked, zeros, dy * d_s)


def _wide_kl(t, s, axis):
    r"""``(kl, bound)`` in float64 along ``axis``: the plain sum and its rounding bound.

    With the shifted logits :math:`z = t - \max t`, :math:`w = s - \max s`
    (one float64 rounding at most), :math:`A = \sum_j e^{z_j}` and
    :math:`D = \sum_j e^{w_j}`, :math:`\log q_j = z_j - \log A` and
    :math:`\log p_j = w_j - \log D`, so (with :math:`\sum_j q_j = 1`)

    .. math:: \mathrm{KL} = \frac{1}{A} \sum_j e^{z_j} (z_j - w_j) - \log A + \log D,

    and since :math:`z_j \le 0 \le \log A`, :math:`|\log q_j| = |z_j| +
    \log A` exactly: ``bound`` :math:`= \sum_j q_j (|\log q_j| + |\log
    p_j|) = \frac{1}{A} \sum_j e^{z_j} (|z_j| + |w_j|) + \log A + \log D`.
    ``kl`` is off by about float64's ``eps`` times ``bound``, plus a few
    ``eps`` from the two logarithms. The four row sums are one pass
    (:func:`safeops._xla.last_axis_sums`) with no elementwise quotient.
    Entries with :math:`e^{z_j} = 0` (masked, or below float64's range) are
    left out; an all ``-inf`` teacher row gives 0, an all ``-inf`` student
    row (:math:`\log p = -\infty`) ``inf``; NaN gives NaN.
    """
    t, s = tf.cast(_xla.exact_input(t), tf.float64), tf.cast(_xla.exact_input(s), tf.float64)
    z = t - _logsumexp._finite_or_zero(tf.reduce_max(t, axis, keepdims=True))
    w = s - _logsumexp._finite_or_zero(tf.reduce_max(s, axis, keepdims=True))
    e = tf.exp(z)
    live = tf.not_equal(e, 0.0)
    zeros = tf.zeros_like(e)
    cross = tf.where(live, e * (z - w), zeros)
    spread = tf.where(live, e * (tf.abs(z) + tf.abs(w)), zeros)
    a, cross, spread, d = _xla.last_axis_sums([e, cross, spread, tf.exp(w)], axis)
    empty = tf.equal(a, 0.0)
    log_a = tf.math.log(tf.where(empty, tf.ones_like(a), a))
    log_d = tf.math.log(tf.where(tf.equal(d, 0.0), tf.ones_like(d), d))
    kl = tf.where(empty, tf.zeros_like(a), (cross / a - log_a) + log_d)
    bound = (spread / a + log_a) + log_d
    return tf.squeeze(kl, axis), tf.squeeze(bound, axis)


def _exact_kl(t, s, axis):
    """``(kl, bound)`` as :func:`_wide_kl`, for float64 inputs: the shifts' roundings kept.

    The log-probabilities of :func:`safeops.math.log_softmax` (the exact
    shift, the row sum as ``1 + (sum - 1)``) and the probabilities of
    :func:`safeops.math.softmax`: in float64, ``t - max t`` rounds.
    """
    log_q, q, _, _ = _logsumexp.softmax_parts(t, axis)
    log_p = _logsumexp.softmax_parts(s, axis)[0]
    live = tf.not_equal(q, 0.0)
    zeros = tf.zeros_like(q)
    # Trees of short sums (safeops._xla.cascaded_sums), as in _centred_kl.
    terms = [tf.where(live, q * (log_q - log_p), zeros),
             tf.where(live, q * (tf.abs(log_q) + tf.abs(log_p)), zeros)]
    kl, bound = (tf.squeeze(_xla.cascaded_sums(v, axis), axis) for v in terms)
    return kl, bound


def _centred_kl(t, s, axis):
    r"""``KL(softmax(t) || softmax(s))`` along ``axis`` without cancellation, in float64.

    The sum :math:`\sum_j q_j g_j` with :math:`g_j = \log q_j - \log p_j`
    has terms of both signs: for two close distributions (``t = [0, 0.01,
    0.02]``, ``s = 0``) they cancel to ``3.3e-5`` and its float32 value was
    20000 ULP off (6300 in float64). Since
    :math:`\sum_j q_j e^{-g_j} = \sum_j p_j = 1`, for any :math:`c`

    .. math:: \mathrm{KL} = m + \log\Bigl(1 + \sum_j q_j \varphi(x_j) - m\Bigr),
       \quad x_j = \delta_j - c,\ m = \sum_j q_j x_j,\ \varphi(x) = e^{-x} - 1 + x \ge 0,

    with :math:`\delta_j = t_j - s_j` (``g`` up to a constant per row, which
    cancels). With :math:`c = \sum_j q_j \delta_j` rounded, ``m`` is the
    rounding residue and the sum of ``phi`` has no cancellation; the result
    is taken as :math:`\log1p(A) + m A / (1 + A)`, ``A`` that sum, to first
    order in ``m``; :math:`\varphi` is :func:`safeops.losses._common.exp_gap`.
    The rows are shifted by their maxima with the rounding kept (TwoSum,
    :func:`safeops.math._logsumexp.exact_shift`), so that logits far from 0
    lose nothing in ``t - s``. Entries with :math:`q_j = 0` are left out of
    the sums, and the student's mass :math:`d` on them adds
    :math:`-\log(1 - d)` (the sum of :math:`q_j e^{-g_j}` over the others
    is :math:`1 - d`).
    Non-finite results (an infinite KL, NaN, an overflowing ``exp(-x)``)
    are left to the caller's plain sum.
    """
    wide = tf.float64
    # A float64 input's sums as trees of short sums (safeops._xla.cascaded_sums): plain float64 sums
    # left the KL over rows of 1e6 entries 32 ULP off. For narrower inputs float64 has bits to spare.
    cascade = t.dtype == wide
    t = tf.cast(_xla.exact_input(t), wide)  # exact shifts (see safeops._xla.exact_input)
    s = tf.cast(_xla.exact_input(s), wide)

    def row_sum(v, keepdims=False):
        sums = _xla.cascaded_sums(v, axis) if cascade else tf.reduce_sum(v, axis, keepdims=True)
        return sums if keepdims else tf.squeeze(sums, axis)

    def shifted(v):
        return _logsumexp.exact_shift(v, _logsumexp._finite_or_zero(tf.reduce_max(v, axis, keepdims=True)))

    (dt, et), (ds, es) = shifted(t), shifted(s)
    # q from the shifted logits with their rounding put back, exp(dt + et) =
    # exp(dt) (1 + et): the rounding of dt alone is a relative error of
    # |dt| eps in q_j (54 eps at dt = -54: 22 ULP in the KL).
    def probabilities(d, err):
        e = tf.exp(d) * (1.0 + err)
        return e / row_sum(e, keepdims=True)

    q, p = probabilities(dt, et), probabilities(ds, es)
    live = q > 0
    zeros = tf.zeros_like(q)
    delta = tf.where(live, (dt - ds) + (et - es), zeros)
    x = delta - row_sum(q * delta, keepdims=True)
    a = row_sum(tf.where(live, q * _common.exp_gap(x), zeros))
    m = row_sum(q * x)
    # The student's mass on the classes the teacher leaves out (masks, or
    # q_j below float64's range): sum_live q_j e^(-g_j) is the student's
    # mass on the others, 1 - dead, not 1, which adds -log(1 - dead) (it was
    # dropped: 1.3e-16 for an exact 1.1e-10 with 5 masked classes of 200).
    dead = row_sum(tf.where(live, zeros, p))
    kept = row_sum(tf.where(live, p, zeros))
    # Each branch on its own side (a kept mass of 0, where the centred form is
    # not selected, gave log(0) = -inf for enable_check_numerics to stop at).
    tiny = _dtypes.tiny(kept.dtype)
    lost = tf.where(dead < 0.5, -_logarithms._log1p(-tf.minimum(dead, 0.5)),
                    -tf.math.log(tf.maximum(kept, tiny)))
    return (_logarithms._log1p(a) + m * (a / (1.0 + a))) + lost


@functools.lru_cache(maxsize=None)
def _floored(floor: float, dtype: tf.DType):
    """``max(s, floor)`` with the identity gradient (straight through the floor; NaN kept)."""

    def forward(s):
        return tf.where(tf.math.is_nan(s), s, tf.maximum(s, floor))

    return custom_op(forward, lambda dy, y, s: (dy,), dtype)


@keras.saving.register_keras_serializable(package="safeops")
class GaussianNLL(LossFunctionWrapper):
    """Loss class of :func:`gaussian_nll`.

    Args:
      min_variance: See :func:`gaussian_nll` (``None``: the dtype default).
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, reduction=_REDUCTION, name="gaussian_nll", dtype=None, *, min_variance=None,
                 check_finite=False):
        super().__init__(gaussian_nll, reduction=reduction, name=name, dtype=dtype,
                         check_finite=check_finite, min_variance=min_variance)
        self.min_variance = min_variance


@keras.saving.register_keras_serializable(package="safeops")
class KLDivergenceWithLogits(LossFunctionWrapper):
    """Loss class of :func:`kl_divergence_with_logits` (``y_true`` holds the teacher's logits).

    Args:
      axis: See :func:`kl_divergence_with_logits`.
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, axis=-1, reduction=_REDUCTION, name="kl_divergence_with_logits", dtype=None, *,
                 check_finite=False):
        super().__init__(kl_divergence_with_logits, reduction=reduction, name=name, dtype=dtype,
                         check_finite=check_finite, axis=axis)
        self.axis = axis

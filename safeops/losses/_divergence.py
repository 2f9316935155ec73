"""``kl_divergence`` and ``poisson`` with Keras 3's names, on safeops' clamped logarithms.

Keras clips both arguments of ``kl_divergence`` to ``[1e-7, 1]`` (so a label
of 0 still contributes ``1e-7 log(1e-7 / p)``) and adds ``1e-7`` inside the
``log`` of ``poisson``. safeops computes the exact formulas with ``xlogy``
(0 where the label is 0, a clamped ``log`` with a live gradient where the
prediction is 0), so the values agree with Keras to about ``1e-7`` relative
away from those points and are exact at them.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf

import safeops.math as tfm
from safeops import _dtypes, _gradient, _ragged, _validate, _xla
from safeops.losses import _common
from safeops.losses._authoring import LossFunctionWrapper

_REDUCTION = "sum_over_batch_size"


@keras.saving.register_keras_serializable(package="safeops")
def kl_divergence(y_true, y_pred):
    r"""Kullback-Leibler divergence :math:`\sum y \log(y / p)` over the last axis.

    Formula: :math:`\sum_j y_j (\log y_j - \log p_j)`, with
    :math:`0 \log 0 = 0`.

    Stable rewrite: ``xlogy(y, y) - xlogy(y, p)`` elementwise (safeops'
    ``xlogy``: 0 where ``y == 0``, the logs clamped at ``tiny`` of
    ``y_pred``'s dtype with a live gradient where ``p == 0``). Its value
    is summed in float64 from terms accurate to a few float64 roundings:
    for inputs of float32 or narrower, ``y_j log(y_j / p_j)`` from a
    float32 logarithm and one float64 Newton step (``_corrected_kl``, in
    XLA); for float64 inputs, where ``y_j`` is near ``p_j``, as ``y_j phi(L_j) + (y_j
    - p_j)``, ``phi(x) = exp(-x) - 1 + x`` (``_one_signed_kl``). Two close
    distributions keep their small KL (at ``y = [.3, .3, .4]``, ``p = [.3,
    .3001, .3999]`` the plain float32 sum was 50% off); the gradient is the
    plain form's. When ``y_pred`` came from a softmax on the
    last axis, the recovered logits give :math:`\log p` as
    :func:`safeops.math.log_softmax` (exact where ``p`` underflowed). Keras
    clips ``y`` and ``p`` to ``[1e-7, 1]``: a zero label then adds
    ``1e-7 log(1e-7/p)`` and a zero prediction costs at most ``16.1 y``
    with gradient 0.

    Edges:
      * ``y_j = 0``: contributes 0, gradient 0 with respect to ``p_j``.
      * ``p_j = 0`` with ``y_j > 0``: ``y_j (log y_j + 87.34)`` in float32,
        gradient ``-y_j/tiny`` (finite); with recovered logits, the exact value.
      * ``y_true`` or ``y_pred`` outside ``[0, 1]``: ``InvalidArgumentError``
        naming it (under XLA, which drops the assertion: NaN loss and
        gradient there). NaN gives NaN.

    Args:
      y_true: Target distribution, of a shape that broadcasts with
        ``y_pred``'s (as in Keras: either may be one row against a batch).
      y_pred: Predicted distribution (probabilities); any float dtype.

    Returns:
      The per-example divergence: the broadcast shape without the last axis.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: ``y_pred`` is a scalar, or the shapes do not broadcast.

    Example:

    >>> from safeops import losses
    >>> losses.kl_divergence([[1.0, 0.0]], [[0.5, 0.5]]).numpy()
    array([0.6931472], dtype=float32)
    """
    op = "safeops.losses.kl_divergence"
    if _ragged.any_ragged(y_true, y_pred):
        return _ragged.loss_over_last_axis(kl_divergence, op, y_true, y_pred)
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, False, "softmax", -1)
        _common.over_last_axis(op, pred)
        y = _common.labels_like(op, y_true, pred)
        y = _common.broadcast_labels(op, y, pred)
        if pred.logits is not None:
            y = _common.checked_unit_interval(op, y, "y_true")
            cross = tf.math.multiply_no_nan(tfm.log_softmax(pred.logits, axis=-1), y)
            return pred.output(tf.reduce_sum(tfm.xlogy(y, y) - cross, -1))
        # Both logarithms clamped at the same tiny (y_pred's dtype): a label
        # below float16's tiny next to p = 0 made y (log y - log tiny) < 0.
        p = pred.values
        if _xla.in_xla():  # the asserts below are dropped there: NaN outside [0, 1] instead
            y = _common.checked_unit_interval(op, y, "y_true")
            p = _common.checked_unit_interval(op, p, "y_pred")
        floor = _dtypes.tiny(pred.clamp_dtype)
        # In a vectorized map the row sums of _corrected_kl (a dot with a ones vector) took a shape
        # XLA could not read; the float64 form's reductions vectorize.
        wide = pred.clamp_dtype == tf.float64
        accurate = _accurate_kl(floor, wide or _gradient.in_vectorized_map(), wide, _xla.enabled())
        value, y_outside, p_outside = accurate(tf.stop_gradient(y), tf.stop_gradient(p))
        kl = _with_kl_gradient(floor, pred.clamp_dtype, _xla.enabled())(value, y, p)
        if _gradient.in_vectorized_map():  # the op's gradient is dropped there (see _gradient)
            kl = _gradient.with_plain_gradient(kl, _plain_kl(y, p, floor))
        checks = (_common.unit_interval_check(op, y, "y_true", y_outside)
                  + _common.unit_interval_check(op, p, "y_pred", p_outside))
        if checks:
            with tf.control_dependencies(checks):
                kl = tf.identity(kl)
        return pred.output(kl)


@functools.lru_cache(maxsize=None)
def _accurate_kl(floor: float, plain: bool, split: bool, xla: bool):
    """``(value, y_outside, p_outside)``: :func:`_one_signed_kl`; whether a row of ``y``, ``p`` leaves [0, 1].

    One inner XLA function (with ``xla``): some twenty float64 kernels
    fused, and the range checks of both arguments read in the same pass
    (as separate TensorFlow kernels they were two more passes over each).
    Compiled by XLA, inputs of float32 or narrower take
    :func:`_corrected_kl` (float32 logarithms made exact in float64 without
    a float64 logarithm); float64 inputs, all inputs outside XLA, and with
    ``plain``, :func:`_one_signed_kl` (``split`` for float64).
    """

    def value_and_checks(y, p):
        # As TensorFlow kernels (no XLA), _corrected_kl's series is some thirty more passes over the
        # batch: 1.4 times _one_signed_kl's time with its float64 logarithm (1024x1000, hand-measured).
        if plain or not _xla.in_xla():
            rows = [tf.reduce_any(_common.outside_unit_interval(v), -1) for v in (y, p)]
            return (tf.cast(_one_signed_kl(y, p, floor, split), y.dtype), *rows)
        value, *rows = _corrected_kl(y, p, floor)
        return (tf.cast(value, y.dtype), *rows)

    return _xla.compiled(value_and_checks, xla)


@functools.lru_cache(maxsize=None)
def _with_kl_gradient(floor: float, dtype: tf.DType, xla: bool):
    r"""``op(value, y, p)``: ``value`` with the gradient of ``sum(xlogy(y, y) - xlogy(y, p))``.

    The logarithms of the plain terms cancel where ``y_j`` is near ``p_j``
    (50% off in float32 at ``y = [.3, .3, .4]``, ``p = [.3, .3001,
    .3999]``), their derivatives do not: with :math:`c = \max(p, floor)`,
    :math:`\partial/\partial p = -y / c` (the clamp's boundary gradient
    below ``floor``, 0 where ``y = 0``) and :math:`\partial/\partial y =
    \log \max(y, floor) + [y \ne 0] \, y / \max(y, floor) - \log c`
    (``xlogy``'s two gradients); ``value`` (from stopped inputs) gets none.
    The plain terms are never formed (they were, forward, only to carry
    this gradient). ``dtype``: the caller's, at whose range second
    derivatives saturate. With ``xla``, each gradient is one inner XLA
    call (a fixed ``y_true`` prunes its own): as TensorFlow kernels the
    prediction's was four passes over the batch.
    """

    def backward(dy, kl, value, y, p):
        dy = dy[..., None]
        zeros = tf.zeros_like(y)
        c = tf.maximum(p, floor)
        y_ = tf.maximum(y, floor)
        d_y = tf.math.log(y_) + tf.where(tf.equal(y, 0.0), zeros, y / y_) - tf.math.log(c)
        return tf.zeros_like(value), dy * d_y, -dy * (y / c)

    return _gradient.custom_op(lambda value, y, p: tf.identity(value),
                               _xla.compiled_gradients(backward, xla, [(0,), (1,), (2,)]), dtype)


def _plain_kl(y, p, floor):
    """``sum(y log y' - y log c)``, clamps straight through: :func:`_with_kl_gradient`'s gradient by autodiff.

    For a vectorizer that dropped the op's gradient. ``max(v, floor)`` is
    taken as ``v + stop_gradient(max(v, floor) - v)``, whose derivative is 1
    below the floor too, so the boundary gradient ``-y / floor`` stays
    (not ``_extra._floored``, a custom op whose gradient the vectorizer
    would drop as well). The terms' cancellation does not matter here: only
    the gradient is read.
    """
    def clamped(v):
        return v + tf.stop_gradient(tf.maximum(v, floor) - v)

    return tf.reduce_sum(y * tf.math.log(clamped(y)) - y * tf.math.log(clamped(p)), -1)


def _one_signed_kl(y, p, floor, split=True):
    r"""``sum_j y_j log(y'_j / c_j)`` over the last axis without cancellation inside a term, in float64.

    With :math:`c = \max(p, floor)`, :math:`y' = \max(y, floor)` (the
    clamps of :func:`kl_divergence`) and :math:`L_j = \log(y'_j / c_j)`.
    Where :math:`y_j` and :math:`c_j` are within a factor 2, :math:`L_j`
    is small and :math:`\log y_j - \log c_j` would cancel (relative error
    :math:`\epsilon |\log y_j| / |L_j|`); there :math:`L_j =
    \operatorname{log1p}((y_j - c_j) / c_j)` (an exact difference) and
    :math:`y_j L_j = y_j \varphi(L_j) + (y_j - c_j)` with
    :math:`\varphi(x) = e^{-x} - 1 + x \ge 0`
    (:func:`safeops.losses._common.exp_gap`), summed separately: a sum of
    non-negative terms, and the exact difference of the two masses (0 up
    to the inputs' rounding for normalised distributions), so two close
    distributions keep their small KL. Elsewhere :math:`|L_j| > \log 2`
    and :math:`y_j L_j`, with :math:`L_j = \log(y'_j / c_j)` (one rounding
    of the ratio, not two logarithms), is accurate as it is (the split
    would cancel there: :math:`y \varphi(L) \approx c` for :math:`y \ll c`).
    Labels 0 add 0.

    ``split=False`` (inputs of float32 or narrower; under XLA the op
    takes :func:`_corrected_kl` for them instead) sums :math:`y_j L_j`
    as they are, in float64: two float32 numbers that differ differ by at
    least a float32 ULP, so the cancellation between terms of opposite
    sign amplifies their float64 rounding (1e-16) by at most about
    :math:`c / (y - c) \le 2^{24}`, to 1e-9 relative, far below a float32
    ULP. It skips the series of :math:`\varphi`, most of this function's
    cost (about 50 kernels in a graph). Float64 inputs need the split:
    there :math:`y - c` can be a float64 ULP.
    """
    wide = tf.float64
    y, p = tf.cast(y, wide), tf.cast(p, wide)
    c = tf.maximum(p, floor)
    y_ = tf.maximum(y, floor)
    close = (y >= floor) & (y <= 2.0 * c) & (c <= 2.0 * y)
    zeros = tf.zeros_like(y)
    # One logarithm per entry: log(u) of u = 1 + r where close (r = (y - c) / c,
    # an exact difference, in [-1/2, 1]), of the ratio y_ / c elsewhere (y_, c
    # in [floor, 1]: finite). Where close, the rounding of 1 + r is added back,
    # log1p(r) = log(u) + (r - (u - 1)) / u to first order (u - 1 is exact for
    # u in [1/2, 2]); log1p itself would be a second transcendental pass, and
    # XLA's float64 log1p is off by up to 127 ULP on [-0.415, -0.355].
    r = tf.where(close, (y - c) / c, zeros)
    u = tf.where(close, 1.0 + r, y_ / c)
    log_ratio = tf.math.log(u) + tf.where(close, (r - (u - 1.0)) / u, zeros)
    if not split:
        return tf.reduce_sum(tf.where(tf.equal(y, 0.0), zeros, y * log_ratio), -1)
    # Float64 inputs: the sums as trees of short sums (_common.total; with float64 reductions the KL
    # of rows of 1e6 periodic entries was 26 ULP off in a graph, 17 under XLA).
    one_signed = _common.total(tf.where(close, y * _common.exp_gap(log_ratio), zeros), -1)
    mass = _common.total(tf.where(close, y - c, zeros), -1)
    far = _common.total(tf.where(close | tf.equal(y, 0.0), zeros, y * log_ratio), -1)
    return (one_signed + mass) + far


#: 1/k! for k = 1..6: expm1's Taylor series at |x| < _NEAR, cut where the next term is below
#: 2**-60 of the sum (2**-48 / 7! = 2**-60.3).
_EXPM1_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(1, 7))
#: Where |log(y / c)| is below it, _corrected_kl forms e**-x from the series above, else by exp.
_NEAR = 2.0 ** -8
#: Row counts of entries outside [0, 1] ride in one float64 sum: y_true's in units of 2**600,
#: y_pred's of 2**627; exact for rows shorter than 2**26.
_Y_FLAG, _P_FLAG, _MAX_FLAGGED = 2.0 ** 600, 2.0 ** 627, 2 ** 26


def _corrected_kl(y, p, floor):
    r"""``(value, y_outside, p_outside)``: :func:`_one_signed_kl` of float32 inputs without a float64 log.

    With :math:`c = \max(p, floor)`, :math:`y' = \max(y, floor)` (the
    clamps of :func:`kl_divergence`), :math:`L_j = \log(y'_j / c_j)` is
    taken first from float32: :math:`x = \log(y' \cdot \mathrm{fl}(1 / c))`,
    reciprocal, product and logarithm in float32, within about
    :math:`2^{-23} (1 + |L|)`. One Newton step in float64 makes it exact
    to a few float64 roundings: :math:`L = x + \operatorname{log1p}(z)`,
    :math:`z = y' e^{-x} / c - 1 \approx L - x`, and
    :math:`\operatorname{log1p}(z) = z - z^2/2` to :math:`z^3/3`, below
    :math:`2^{-60} |L|`. Under XLA on this CPU float64's exponential
    costs about an eighth of its logarithm, which was most of
    :func:`_one_signed_kl`; and no float64 division is needed:

    * :math:`1/c` is the float32 reciprocal :math:`r_0` refined once,
      :math:`r = r_0 (2 - c r_0)` in float64 (:math:`c r_0` is exact
      there), relative error :math:`2^{-48}`, of which ``z`` (itself about
      :math:`2^{-23}`) keeps a negligible part;
    * where :math:`|x| <` :data:`_NEAR` (:math:`y_j` near :math:`c_j`,
      :math:`L_j` as small as :math:`2^{-24}`), :math:`e^{-x} = 1 + m`
      with :math:`m = \operatorname{expm1}(-x)` from its Taylor series
      (:data:`_EXPM1_TAYLOR`; XLA's float64 ``expm1`` took more time than
      the logarithm), and the numerator :math:`y' e^{-x} - c = (y' - c)
      + y' m`: :math:`y' - c` is exact, so its absolute error is a float64
      rounding of :math:`y' m \approx c L`, relative :math:`2^{-52}` to
      :math:`L` however small;
    * elsewhere it is :math:`y' e^{-x} - c` with float64's ``exp``, an
      absolute error of about :math:`2^{-52} c`: at :math:`|L| \ge 2^{-8}`
      each term's error stays below :math:`2^{-34}` of its share
      :math:`c_j \tilde\varphi(y_j / c_j) \ge 2^{-17} c_j` of the
      divergence (:math:`\tilde\varphi(t) = t \log t - t + 1`; the shares
      sum to the divergence for normalised inputs).

    So each term :math:`y_j L_j` is within a few float64 roundings of
    :math:`L_j` where it matters, the accuracy :func:`_one_signed_kl`
    argues is enough without its split for float32 inputs (and its tests at
    a float32 ULP of difference hold). Hand-measured here (forward of this
    function alone at 1024x1000 under XLA, interleaved): 0.7 to 0.8 of the
    time of the form before, which took the series at :math:`|x| < 1/2`
    (sixteen terms), divided in float64 and refined ``x`` from
    :math:`y' / c`.

    Edges: labels 0 add 0 (``y' = floor`` keeps ``x`` finite); a zero
    prediction is ``c = floor``, ``x`` up to ``log(1/tiny)`` (87.3 in
    float32), whose ``exp`` is finite in float64; ``y' = c`` gives ``x =
    m = z = 0``; NaN gives NaN (an infinite entry, outside ``[0, 1]``,
    gives NaN too and is flagged). ``y_outside``, ``p_outside``: whether a row of ``y``,
    ``p`` has an entry outside ``[0, 1]``, counted in the same pass as a
    second float64 sum (:data:`_Y_FLAG`; a separate reduction of each
    range check was a tenth of the forward's time at 1024x1000,
    hand-measured), or by two reductions for longer rows.
    """
    narrow, wide = tf.float32, tf.float64
    y, p = tf.cast(y, narrow), tf.cast(p, narrow)
    c = tf.maximum(p, floor)
    y_ = tf.maximum(y, floor)
    reciprocal = 1.0 / c  # c in [tiny, 1]: finite
    x_narrow = tf.math.log(y_ * reciprocal)  # y_ / c in [tiny, 1 / tiny]: finite
    x = tf.cast(x_narrow, wide)
    y_wide, c_wide, r = tf.cast(y_, wide), tf.cast(c, wide), tf.cast(reciprocal, wide)
    r = r * (2.0 - c_wide * r)
    near = tf.abs(x_narrow) < _NEAR
    zeros = tf.zeros_like(x)
    t = tf.where(near, -x, zeros)
    m = tf.zeros_like(t) + _EXPM1_TAYLOR[-1]
    for coefficient in reversed(_EXPM1_TAYLOR[:-1]):
        m = m * t + coefficient
    m = m * t  # expm1(-x) where near
    numerator = tf.where(near, (y_wide - c_wide) + y_wide * m,
                         y_wide * tf.exp(tf.where(near, zeros, -x)) - c_wide)  # y' e**-x - c
    z = numerator * r
    terms = tf.cast(y, wide) * (x + (z - 0.5 * z * z))
    y_out, p_out = _common.outside_unit_interval(y), _common.outside_unit_interval(p)
    classes = y.shape[-1]
    if classes is None or classes >= _MAX_FLAGGED:
        value = tf.reduce_sum(terms, -1)
        return value, tf.reduce_any(y_out, -1), tf.reduce_any(p_out, -1)
    flags = tf.where(y_out, zeros + _Y_FLAG, zeros) + tf.where(p_out, zeros + _P_FLAG, zeros)
    value, counts = (tf.squeeze(v, -1) for v in _xla.last_axis_sums([terms, flags], -1))
    y_outside = tf.math.floormod(tf.math.floor(counts / _Y_FLAG), float(2 * _MAX_FLAGGED)) > 0
    return value, y_outside, counts >= _P_FLAG


@keras.saving.register_keras_serializable(package="safeops")
def poisson(y_true, y_pred):
    r"""Poisson negative log-likelihood (without :math:`\log y!`), averaged over the last axis.

    Formula: :math:`\operatorname{mean}(p - y \log p)` for rates :math:`p`.

    Stable rewrite: ``p - xlogy(y, p)`` with safeops' ``xlogy``: 0 where
    ``y == 0`` (so a rate of 0 with count 0 costs 0), and the log clamped at
    ``tiny`` with a live gradient where ``p == 0 < y``. Keras computes
    ``log(p + 1e-7)``, which shifts every value by about ``1e-7 y / p`` and
    bounds the gradient at a zero rate by ``1e7 y``.

    Edges:
      * ``p = 0``, ``y > 0``: value ``87.34 y`` (float32), gradient ``1 - y/tiny``.
      * ``p = 0``, ``y = 0``: value 0, gradient 1.
      * Negative rates: ``InvalidArgumentError`` naming ``y_pred`` (under
        XLA, which drops the assertion: NaN loss and gradient there). NaN
        gives NaN.

    Args:
      y_true: Observed counts, of a shape that broadcasts with ``y_pred``'s
        (as in Keras: a ``[b, 1]`` rate against ``[b, n]`` counts too).
      y_pred: Predicted rates, ``>= 0``; any float dtype.

    Returns:
      The per-example loss: the broadcast shape without the last axis.

    Raises:
      TypeError: ``y_pred`` is not a float tensor.
      ValueError: ``y_pred`` is a scalar, or the shapes do not broadcast.

    Example:

    >>> from safeops import losses
    >>> losses.poisson([[0.0, 2.0]], [[0.0, 2.0]]).numpy()
    array([0.30685282], dtype=float32)
    """
    op = "safeops.losses.poisson"
    if _ragged.any_ragged(y_true, y_pred):
        return _ragged.loss_over_last_axis(poisson, op, y_true, y_pred, mean=True)
    with _validate.op_scope(op, None):
        pred = _common.Prediction(op, y_pred, False)
        _common.over_last_axis(op, pred)
        y = _common.labels_like(op, y_true, pred)
        y = _common.broadcast_labels(op, y, pred)
        rate = _common.checked_non_negative(op, pred.values, "y_pred")
        return pred.output(_common.mean(rate - pred.xlogy(y, rate), -1))


@keras.saving.register_keras_serializable(package="safeops")
class KLDivergence(LossFunctionWrapper):
    """Loss class of :func:`kl_divergence` (Keras 3's arguments and config).

    Args:
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, reduction=_REDUCTION, name="kl_divergence", dtype=None, *, check_finite=False):
        super().__init__(kl_divergence, reduction=reduction, name=name, dtype=dtype, check_finite=check_finite)


@keras.saving.register_keras_serializable(package="safeops")
class Poisson(LossFunctionWrapper):
    """Loss class of :func:`poisson` (Keras 3's arguments and config).

    Args:
      reduction, name, dtype, check_finite: See :class:`LossFunctionWrapper`.
    """

    def __init__(self, reduction=_REDUCTION, name="poisson", dtype=None, *, check_finite=False):
        super().__init__(poisson, reduction=reduction, name=name, dtype=dtype, check_finite=check_finite)

"""Argument handling shared by the loss functions: one way in for every loss.

Each loss converts ``y_pred`` once (a float tensor, ``TypeError`` naming
``y_pred`` otherwise), widens float16/bfloat16 to float32 for the whole
computation and rounds the per-example loss once on the way out, converts
``y_true`` to that compute dtype, and, on the probability path, checks that
the probabilities lie in ``[0, 1]`` with a graph assertion (NaN passes, so
that it reaches the output: contract C2).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _probabilities, _validate, _xla
from safeops.math import _logarithms


class Prediction:
    """``y_pred`` converted: its ``dtype``, the compute-dtype ``values`` and recovered ``logits``.

    ``logits`` is ``values`` itself when ``from_logits`` is true, the
    recovered logits (cast to the compute dtype) when ``y_pred`` came from
    ``activation``, else ``None`` (the probability path).
    """

    def __init__(self, op, y_pred, from_logits, activation=None, axis=-1):
        # None is taken as False, as Keras' ``if from_logits`` does.
        if from_logits is not None and from_logits not in (True, False, 0, 1):
            raise TypeError(_validate.message(op, "from_logits", "a Python bool", repr(from_logits)))
        from_logits = bool(from_logits)
        recovered = None
        if not from_logits and activation is not None:
            recovered = _probabilities.recover_logits(y_pred, activation, axis)
        y_pred = _validate.float_tensor(y_pred, op, "y_pred")
        #: The dtype whose clamp bounds the probability path uses: y_pred's
        #: own, or the half dtype a Loss class widened it from.
        self.clamp_dtype = _probabilities.source_dtype(y_pred)
        self.dtype = y_pred.dtype
        self.compute_dtype = _dtypes.compute_dtype(y_pred.dtype)
        # A half y_pred's gradient saturates at its range (a float32 boundary
        # gradient, such as l2_normalize's at a zero embedding, overflowed it).
        widen = y_pred.dtype in _dtypes.HALF_DTYPES
        self.values = _probabilities.saturating_cast(y_pred, self.compute_dtype) if widen else y_pred
        if from_logits:
            self.logits = self.values
        elif recovered is not None:
            self.logits = tf.cast(recovered, self.compute_dtype)
        else:
            self.logits = None
        self.op = op

    def probabilities(self, name="y_pred"):
        """The values (compute dtype), asserted to lie in ``[0, 1]`` (NaN allowed through).

        Not rounded to :attr:`clamp_dtype`: values widened from it are exact
        in the compute dtype, and a gradient that passed through that
        rounding per entry would overflow it before the terms of an entry
        are summed (see :func:`safeops.math._logarithms.xlogy_clamped_as`).
        """
        return checked_unit_interval(self.op, self.values, name)

    def xlogy(self, x, y):
        """``safeops.math.xlogy(x, y)`` in the compute dtype, clamped as :attr:`clamp_dtype` is."""
        return _logarithms.xlogy_clamped_as(tf.cast(x, self.compute_dtype), tf.cast(y, self.compute_dtype),
                                            self.clamp_dtype)

    def xlog1py(self, x, y):
        """``safeops.math.xlog1py(x, y)`` in the compute dtype, clamped as :attr:`clamp_dtype` is."""
        return _logarithms.xlog1py_clamped_as(tf.cast(x, self.compute_dtype), tf.cast(y, self.compute_dtype),
                                              self.clamp_dtype)

    def output(self, loss):
        """Rounds a compute-dtype loss to the dtype of ``y_pred`` (once)."""
        return _dtypes.from_compute(loss, self.dtype)


#: The losses whose y_pred is always probabilities (no ``from_logits`` to point to).
_NO_FROM_LOGITS = ("safeops.losses.kl_divergence", "safeops.losses.tversky_loss")


def checked_unit_interval(op, p, name):
    """``p`` with a graph assertion that every non-NaN entry is in ``[0, 1]``.

    Under XLA, which drops assertions (TensorFlow 2.21), an entry outside is
    made NaN instead (:func:`nan_where`), so its loss and gradient are NaN
    rather than a silent wrong number, as for an out-of-range sparse label.
    """
    if _validate.validation_enabled() and _xla.in_xla():
        return nan_where(outside_unit_interval(p), p)
    checks = unit_interval_check(op, p, name)
    if not checks:
        return p
    with tf.control_dependencies(checks):
        return tf.identity(p)


def outside_unit_interval(p):
    """Where ``p`` is outside ``[0, 1]``.

    NaN compares false both ways, so it is not (and reaches the output).
    """
    return tf.logical_or(p < 0, p > 1)


def unit_interval_check(op, p, name, outside=None):
    """The control dependencies of an assertion that every non-NaN entry of ``p`` is in ``[0, 1]``.

    ``outside``: :func:`outside_unit_interval` of ``p`` or a reduction of it
    (any entry of a row), when a pass over ``p`` that runs anyway computed
    it (:func:`safeops.losses.kl_divergence` does, inside its float64
    function); else it is computed here. ``[]`` when checks are off.
    """
    if not _validate.validation_enabled():
        return []
    if outside is None:
        outside = outside_unit_interval(p)
    expected = "probabilities in [0, 1]"
    if name == "y_pred" and op not in _NO_FROM_LOGITS:
        expected += " (pass from_logits=True for logits)"
    return _validate.assert_that(tf.logical_not(tf.reduce_any(outside)), op, name, expected,
                                 lambda: _first_bad(p, outside_unit_interval(p)))


def nan_where(bad, x):
    """``x`` with NaN where ``bad``: ``x + (NaN or 0)``, so the gradient through it is NaN there too.

    For the value checks that cannot raise under XLA (TensorFlow 2.21
    drops ``tf.debugging.assert_*`` inside ``jit_compile=True``). Adding 0
    leaves every other entry as it was (``-0.0`` becomes ``+0.0``).
    """
    return x + _dtypes.nan_or_zero(bad, x.dtype)


def checked_non_negative(op, x, name):
    """``x`` with a graph assertion that every non-NaN entry is ``>= 0``; under XLA, NaN there instead."""
    if not _validate.validation_enabled():
        return x
    outside = x < 0
    if _xla.in_xla():
        return nan_where(outside, x)
    checks = _validate.assert_that(tf.logical_not(tf.reduce_any(outside)), op, name, "non-negative",
                                   lambda: _first_bad(x, outside))
    if not checks:
        return x
    with tf.control_dependencies(checks):
        return tf.identity(x)


def labels_like(op, y_true, prediction, name="y_true"):
    """``y_true`` in the compute dtype of ``prediction`` (numbers, bools and ints accepted, as Keras).

    Float labels pass through a cast whose gradient saturates at their own
    dtype's largest finite value: the gradient of a loss with respect to a
    label is ``-log p``-like and infinite where ``p = 0`` (a ``-inf`` mask
    logit), or finite in float32 but beyond float16's range; saturated, it
    stays finite with its sign (C1), as the logits' gradients do, for a
    label that is itself learned (a teacher, a soft target). NaN passes
    through.
    """
    if isinstance(y_true, str) or getattr(getattr(y_true, "dtype", None), "name", "") == "string":
        raise TypeError(_validate.message(op, name, "numeric labels", "a string"))
    y_true = _validate.converted(y_true, op, name, "numeric labels")
    if not (y_true.dtype.is_floating or y_true.dtype.is_integer or y_true.dtype == tf.bool):
        raise TypeError(_validate.message(op, name, "numeric labels", y_true.dtype.name))
    if y_true.dtype.is_floating and y_true.dtype.size <= prediction.compute_dtype.size:
        return _probabilities.saturating_cast(y_true, prediction.compute_dtype)
    return tf.cast(y_true, prediction.compute_dtype)


def same_shape(op, y_true, y_pred):
    """``ValueError`` naming both unless the static shapes are compatible (Keras requires equal)."""
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(_validate.message(
            op, "y_true and y_pred", "the same shape", f"{y_true.shape} and {y_pred.shape}", verb="have"))


def broadcast_labels(op, y_true, pred, axis=-1, normalised=False):
    """``y_true`` and ``pred``'s values broadcast together, else :func:`same_shape`'s ``ValueError``.

    For the losses whose Keras versions broadcast their operands
    (``categorical_focal_crossentropy``, ``kl_divergence``, ``poisson``: one
    label row ``[1, n]`` against a batch ``[b, n]``, one prediction row
    against a batch of labels, a ``[b, 1]`` rate against ``[b, n]`` counts,
    leading dimensions added to either). Keras' cross-entropies refuse such
    shapes, and so do safeops' (:func:`same_shape`). Returns the labels;
    where ``y_pred`` grows, ``pred.values`` (and ``pred.logits``, which a
    softmax along ``axis`` commutes with) are replaced by broadcast ones,
    whose gradient sums back to ``y_pred``'s shape. ``y_pred`` growing
    along ``axis`` itself (one class against several) drops the recovered
    logits (the log-softmax of broadcast logits is not the log of the
    broadcast probabilities), and is refused with ``normalised`` (a loss
    that normalises ``y_pred`` along ``axis``: Keras' focal loss normalises
    the single class to a constant 1 before broadcasting it).
    """
    values = pred.values
    if y_true.shape.is_compatible_with(values.shape) or not isinstance(y_true, tf.Tensor):
        return y_true
    try:
        joint = tf.broadcast_static_shape(y_true.shape, values.shape)
    except ValueError:
        joint = None
    if joint is None or joint.rank is None:
        same_shape(op, y_true, values)
    if joint.rank == values.shape.rank and joint.is_compatible_with(values.shape):
        return tf.broadcast_to(y_true, tf.shape(values))    # the labels alone grow
    if axis >= 0 and joint.rank != values.shape.rank:
        # A leading dimension added to y_pred would move a non-negative class axis.
        raise ValueError(_validate.message(
            op, "y_true and y_pred", f"the same rank for axis={axis}", f"{y_true.shape} and {values.shape}",
            verb="have"))
    shape = tf.broadcast_dynamic_shape(tf.shape(y_true), tf.shape(values))
    if values.shape[axis] == 1 and joint[axis] != 1:
        if normalised:
            raise ValueError(_validate.message(
                op, "y_pred", f"more than one class along axis {axis} to broadcast against y_true",
                f"{values.shape} against {y_true.shape}", verb="have"))
        pred.logits = None     # the log-softmax of broadcast logits is not the log of broadcast values
    from_logits = pred.logits is values
    pred.values = tf.broadcast_to(values, shape)
    if from_logits:
        pred.logits = pred.values
    elif pred.logits is not None:
        pred.logits = tf.broadcast_to(pred.logits, shape)
    return tf.broadcast_to(y_true, shape)


def number_tensor(value, dtype):
    """A number option (``gamma``, ``alpha``) as a tensor of ``dtype``, converted in ``dtype`` itself.

    ``tf.cast`` of a Python float converts it to float32 first: a float64
    loss got ``gamma = 1.7`` as 1.7000000476837158 (7e-6 relative in the
    focal factor ``p**gamma`` at ``p = 1e-60``). Tensors and variables are cast.
    """
    if isinstance(value, (int, float, list, tuple, np.ndarray, np.generic)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def check_number(op, name, value, *, lists=False, none=False):
    """Refuses a keyword that is not a number (a float or integer tensor also passes), naming it.

    A string ``label_smoothing`` or ``gamma`` failed deep inside with
    "unsupported operand type(s) for -: 'float' and 'str'" or "Cast string
    to float"; a bool is no number here either. ``lists``: a list of numbers
    also passes (per-class ``alpha``); ``none``: so does ``None``.
    """
    if value is None and none:
        return
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iuf":
            return
    elif _validate.is_real_number(value):
        return
    elif lists and isinstance(value, (list, tuple)) and all(_validate.is_real_number(v) for v in value):
        return
    elif hasattr(value, "dtype"):     # tensors and variables, TensorFlow's and Keras'
        try:
            dtype = tf.as_dtype(value.dtype)
        except TypeError:
            dtype = None
        if dtype is not None and (dtype.is_floating or dtype.is_integer):
            return
    expected = "a number" + (", a list of numbers" if lists else "") + " or a numeric tensor"
    raise TypeError(_validate.message(op, name, expected, repr(value)))


def smoothed_binary(y_true, label_smoothing):
    """Keras' binary label smoothing: labels squeezed towards 1/2."""
    if not label_smoothing:
        return y_true
    return y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing


def smoothed_categorical(y_true, label_smoothing, axis):
    """Keras' categorical smoothing: ``y (1 - s) + s / num_classes`` along ``axis``.

    ``num_classes`` is the length of ``axis``, the class axis; Keras takes
    the length of the last axis whatever ``axis`` is, which differs only for
    ``axis != -1`` (there safeops' labels still sum to what they summed to).
    """
    if not label_smoothing:
        return y_true
    num_classes = tf.cast(tf.shape(y_true)[axis], y_true.dtype)
    return y_true * (1.0 - label_smoothing) + label_smoothing / num_classes


def over_last_axis(op, pred, name="y_pred"):
    """Refuses a scalar ``y_pred`` for a loss that reduces its last axis (no ``axis`` argument to name)."""
    if pred.values.shape.rank == 0:
        raise _validate.ArgumentError(_validate.message(
            op, name, "a tensor of rank >= 1 (the loss reduces its last axis)", "a scalar"))


def check_axis(op, axis, rank, many=False):
    """``axis`` as Python ints, in range (:func:`safeops._validate.static_axis`; Keras refuses bools too).

    ``many``: the losses that average over ``axis`` (the binary ones), which
    take a tuple of axes or ``None`` as Keras' ``mean`` does.
    """
    return _validate.static_axis(op, axis, rank, many=many, runtime=False)


def total(v, axis):
    """``reduce_sum(v, axis)``: a float32 ``v`` summed in float64 and rounded once, a float64 one as a tree.

    For sums over many entries, as :func:`mean` (the soft counts of
    ``tversky_loss`` over an image: with float32 sums, the loss over
    512x512 pixels of two values was 107 ULP off under XLA, 16 in a
    graph). ``axis``: an int, a list of ints, ``None`` or an int tensor
    (a rank known only at run time: TensorFlow's float64 sum).
    """
    if v.dtype not in (tf.float32, tf.float64):
        return tf.reduce_sum(v, axis)
    return tf.cast(_wide_sum(v, axis), v.dtype)  # float64: a tree of short sums (_wide_sum)


def mean(v, axis):
    """``reduce_mean(v, axis)``: a float32 ``v`` summed in float64 and rounded once, a float64 one as a tree.

    The per-example means of the losses (``binary_crossentropy``, the binary
    focal loss, ``poisson``, ``gaussian_nll``) over a long last axis: a
    float32 sum's rounding grows with the row's length, most where the
    terms are equal (binary cross-entropy of rows of 4000 equal entries: 20
    ULP in a graph, ``poisson`` 8.5 under XLA). In float64 it stays below
    half a float32 ULP; under XLA the sum is the dot of
    :func:`safeops._xla.wide_sums`. Hand-measured here at 1024x1000 in a
    graph: a sigmoid cross-entropy's forward+backward with this mean
    within noise of the float32 mean's time. Its gradient is the autodiff
    one (the float32 cotangent spread over the row). ``axis``: as
    :func:`total`'s. An empty row gives NaN, as ``reduce_mean``.
    """
    if v.dtype not in (tf.float32, tf.float64):
        return tf.reduce_mean(v, axis)
    sums = _wide_sum(v, axis)  # float64: a tree of short sums (_wide_sum)
    count = (tf.cast(tf.size(v, out_type=tf.int64), sums.dtype)
             / tf.cast(tf.maximum(tf.size(sums, out_type=tf.int64), 1), sums.dtype))
    return tf.cast(sums / count, v.dtype)


def _wide_sum(v, axis):
    """``reduce_sum(v, axis)`` in the sum dtype, the summed axes dropped.

    :func:`safeops._xla.wide_sums`, or for a float64 ``v`` (no wider
    type) :func:`safeops._xla.cascaded_sums`.

    ``wide_sums`` keeps the summed axes with length 1; a sum over them with
    the same ``axis`` drops them (one entry each: exact), for every form
    ``reduce_sum`` takes (``None``, ints, an empty tuple, an int tensor).
    """
    if v.dtype == tf.float64:  # no wider type: a float64 input is summed as a tree of short sums
        return tf.reduce_sum(_xla.cascaded_sums(v, axis), axis)
    return tf.reduce_sum(_xla.wide_sums(v, axis, _dtypes.sum_dtype(v.dtype)), axis)


def _first_bad(x, outside):
    """The first entry outside the domain (an appended 0 keeps an empty input gatherable)."""
    flat_outside = tf.concat([tf.reshape(outside, [-1]), [False]], 0)
    flat = tf.concat([tf.reshape(x, [-1]), tf.zeros([1], x.dtype)], 0)
    return tf.gather(flat, tf.argmax(tf.cast(flat_outside, tf.int32)))


def class_floors(labelled: tf.Tensor, p: tf.Tensor, floor: float, axis: int):
    """The clamp of each class's probability in a categorical loss: ``floor`` where labelled.

    The clamp ``max(p, floor)`` is for the logarithm of a labelled class
    (C4: finite, live gradient). Every clamped class also enters the
    normaliser ``sum(max(p, floor))``, and with a half-precision ``floor``
    (float16's smallest normal, 6.1e-5, while the loss computes in float32)
    each unlabelled class of probability 0 added 6.1e-5 to it: a float16
    softmax that underflowed to ``[1 - 1.7e-4, 1.7e-4, 0, 0, 0]`` lost twice
    its loss. Unlabelled classes are clamped at the compute dtype's smallest
    normal instead (their share of the normaliser is then below its
    rounding), except in a row where every probability is below ``floor``,
    which stays the uniform distribution it was. For float32 and float64
    the two floors are equal and ``floor`` itself is returned.
    """
    low = _dtypes.tiny(p.dtype)
    if floor <= low:
        return floor
    row_low = tf.reduce_all(p < floor, axis, keepdims=True)
    return tf.where(labelled | row_low, tf.constant(floor, p.dtype), tf.constant(low, p.dtype))


# The 2nd to 24th Taylor coefficients of exp(u) - 1 - u, 1 / k!, highest first (Horner).
_EXP_GAP_COEFFICIENTS = [1.0 / math.factorial(k) for k in range(24, 1, -1)]


def exp_gap(x: tf.Tensor) -> tf.Tensor:
    r""":math:`\varphi(x) = e^{-x} - 1 + x \ge 0` without cancellation (float64 intended).

    The divergences' terms of one sign: :math:`\mathrm{KL} = \sum_j y_j
    \varphi(\log(y_j / p_j)) + \sum_j (y_j - p_j)`. ``expm1(-x) + x``
    cancels for small ``|x|`` (relative error ``2 eps / |x|``); below
    ``|x| = 1.3`` the Taylor series to degree 24 is used (truncation below
    1e-17 relative there), beyond it ``expm1(-x) + x``, which then loses
    at most a factor 2. Below ``x = 1 - log(max)`` (-708.8 in float64) it
    saturates at about ``max / e`` instead of overflowing (the callers
    discard those rows: no ``inf`` for ``enable_check_numerics`` to stop at).
    """
    near = tf.abs(x) < 1.3
    u = -tf.where(near, x, tf.zeros_like(x))
    series = tf.zeros_like(u)
    for coefficient in _EXP_GAP_COEFFICIENTS:
        series = series * u + coefficient
    far = tf.maximum(x, 1.0 - _dtypes.log_max(x.dtype))
    return tf.where(near, series * tf.square(u), tf.math.expm1(-far) + far)

"""Logarithms with clamped domains: ``log``, ``log1p``, ``logit``, ``xlogy``,
``xlog1py``, ``log1mexp``, ``logaddexp``.

Each op that clamps its domain follows contract C4: at a clamped point the
value is the value at the clamp boundary and the gradient is the gradient at
the boundary: finite, nonzero, pointing back into the domain. The bounds come
from :mod:`safeops._dtypes`.

Accuracy with TF 2.21 on CPU. float64: within 3 ULP in eager, graph and
XLA modes (mpmath references, 2 million random points per op). float32,
2 million random points per op against float64 references
(``python -m benchmarks.sweep``, C3's ULP measure), eager/graph and XLA:
``log`` 3 and 1, ``log1p`` 4 and 2, ``xlogy`` 2, ``xlog1py`` 4,
``logaddexp`` 2.8. TensorFlow's float32 ``log1p`` and ``expm1`` kernels are
4 to 5 ULP off, and formulas that chain them landed at 5 ULP, over C3:
``logit`` therefore takes its ``log1p`` in float64 (1 ULP), and
``log1mexp`` evaluates its whole value in float64
(:func:`safeops._dtypes.wide_forward`, 1 ULP). XLA's float64 ``log1p`` is
off by up to 127 ULP on ``[-0.415, -0.355]``; :func:`_log1p` routes around
it.
Gradients: relative error below 5e-7 (float32) and 5e-16 (float64).
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from safeops import _dtypes, _probabilities, _ragged, _validate, _xla
from safeops._gradient import custom_op, sum_to_shape


def log(x, name=None):
    r"""Natural logarithm with a clamped domain and a live gradient at 0.

    Formula: :math:`\log x`.

    Stable rewrite: :math:`\log(\max(x, t))` where :math:`t` is the smallest
    normal number of ``x.dtype`` (``finfo.tiny``), with the gradient
    :math:`1/\max(x, t)`. The naive ``tf.math.log`` returns ``-inf`` at 0
    (and NaN gradients downstream, from ``0 * inf``); the usual patch
    ``log(clip_by_value(x, eps, 1))`` has a gradient of exactly 0 below
    ``eps``, so an optimizer can never move ``x`` up again. Here every
    normal number is unchanged and the gradient never dies.

    ``log`` of a softmax or sigmoid output is taken from its logits, as
    ``log_softmax`` (along the softmax's axis) or ``log_sigmoid``: the
    output of ``safeops.math.softmax``/``sigmoid`` (or ``safeops.nn``'s)
    anywhere, of TensorFlow's ``Softmax``/``Sigmoid`` op inside a traced
    function (through ``Identity`` and float casts), of a Keras activation,
    or a tensor given logits with ``safeops.losses.with_logits``
    (:mod:`safeops._probabilities`). Where a probability underflowed to 0
    the clamp can only give ``log(tiny)``, and the softmax's Jacobian, a
    multiple of the probability, is 0 there: ``log(softmax([0, 200]))[0]``
    was -87.34 with gradient ``[0, 0]``; from the logits it is -200 with
    gradient ``[1, -1]``. The gradient then reaches the logits, not a tape
    watching the probabilities themselves (for which it is ``None``).
    Inside a traced function ``log(1 - p)`` of a sigmoid output ``p`` is
    ``log_sigmoid(-z)`` (``1 - sigmoid(z) = sigmoid(-z)``): where ``p``
    rounded to 1 (``z`` above 17 in float32) the clamp gave 87.34 with
    gradient 0 (TensorFlow's sigmoid) or ``-1/tiny`` times
    ``safeops.math.sigmoid``'s exact derivative (``-3.5e30`` at
    ``z = 17``). In eager mode ``1 - p`` is a value with no op and still
    takes the clamp: write ``log_sigmoid(-z)``. A ``-inf`` logit (a mask)
    gives ``log(tiny)``, the clamp's value at 0, with gradient 0, so that
    ``y * log(p)`` is 0 at label 0.

    Edges:
      * ``x`` in ``[0, tiny)``, subnormals and ``x < 0``: value ``log(tiny)``
        (-87.34 in float32 and bfloat16, -9.70 in float16, -708.40 in
        float64), gradient ``1/tiny`` (8.5e37, 16384, 4.5e307): finite,
        positive, pointing back into the domain. TensorFlow on CPU flushes
        subnormals to zero, so they are treated as 0.
      * ``+inf``: value ``+inf``, gradient 0. ``NaN``: NaN value and gradient.
      * Second derivative ``-1/x**2``, saturated at the dtype's largest
        finite value where it overflows; 0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.log([0.0, 1.0]).numpy()
    array([-87.33655,   0.     ], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(log, x, name=name)
    op = "safeops.math.log"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        found = _probabilities.find(x)
        if found is not None and found.logits.shape == x.shape:
            return scope.output(_log_of_activation(found, x.dtype))
        floor = _dtypes.tiny(x.dtype)
        y = _clamped_log(floor, x.dtype)(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def _log_of_activation(found, dtype):
    """``log(activation(logits))`` of a :class:`safeops._probabilities.Logits` record, in ``dtype``.

    Computed in the wider of ``dtype`` and the logits' dtype (a float16
    softmax cast to float32 is scored in float32), then cast to ``dtype``.

    A ``-inf`` logit (a mask) has probability exactly 0 and log ``-inf``;
    ``y * log(p)`` would then be ``0 * -inf = NaN`` at label 0. Such an
    entry gets the clamp's value ``log(tiny)``, as :func:`log` gives at 0,
    and a value below ``dtype``'s range (float32 logits 70000 apart, cast to
    float16) its lowest finite number; their gradient is 0 (a ``-inf``
    logit's is 0 in any case: the softmax's Jacobian is a multiple of ``p``).
    """
    # Imported here: both modules import this one.
    from safeops.math._logsumexp import log_softmax
    from safeops.math._sigmoid import log_sigmoid

    logits = found.logits
    if dtype.size > logits.dtype.size:
        logits = tf.cast(logits, dtype)
    if found.activation == "softmax":
        value = log_softmax(logits, axis=found.axis)
    else:
        value = log_sigmoid(logits)
    lowest = -_dtypes.max_value(dtype)
    fill = tf.where(_dtypes.is_minus_inf(value), tf.constant(math.log(_dtypes.tiny(dtype)), value.dtype),
                    tf.constant(lowest, value.dtype))
    return tf.cast(tf.where(value < lowest, fill, value), dtype)


def _x_times_log_of_activation(x, found):
    """``x * log(activation(logits))`` in ``x``'s dtype, for ``xlogy`` and ``xlog1py``.

    The log (:func:`_log_of_activation`) is finite for finite logits and for
    ``-inf`` ones, so the product is 0 at ``x == 0`` without a select; its
    gradients are those of the product: ``log(p)`` for ``x``, everywhere, as
    the clamped op's.
    """
    log_p = _dtypes.to_compute(_log_of_activation(found, x.dtype))
    return _dtypes.from_compute(_dtypes.to_compute(x) * log_p, x.dtype)


def log1p(x, name=None):
    r"""``log(1 + x)`` with the domain clamped just above -1 and a live gradient there.

    Formula: :math:`\log(1 + x)`.

    Stable rewrite: :math:`\operatorname{log1p}(\max(x, c))` with
    :math:`c = -(1 - \epsilon/2)`, the successor of -1 in ``x.dtype``
    (``-below_one``), and the gradient :math:`1/(1 + \max(x, c))`. Forming
    ``1 + x`` first (``log(1 + x)``) rounds away every digit of a small ``x``
    (``log(1 + 1e-8)`` is 0 in float32); ``tf.math.log1p`` keeps them but is
    ``-inf`` at -1 and NaN below, with a NaN gradient downstream. Every
    normal ``x > -1`` is unchanged by the clamp (subnormals: see Edges).

    Edges:
      * ``x <= -1``, ``-inf`` included: value ``log1p(c)`` (-16.64 in float32,
        -36.74 in float64, -7.62 in float16, -5.55 in bfloat16), gradient
        ``1/(1 + c) = 2/eps`` (1.7e7, 9.0e15, 2048, 256): finite, positive,
        pointing back into the domain.
      * Small ``x``: ``log1p(x) = x (1 - x/2 + ...)``, so for ``|x|`` below
        ``eps`` of the dtype the result is ``x`` to within rounding, for every
        normal ``x``. Subnormal ``x`` (below ``tiny``: 1.2e-38 in float32 and
        bfloat16, 2.2e-308 in float64) is flushed to zero by TensorFlow's CPU
        arithmetic (contract C3) and gives ``±0`` with gradient 1, in eager,
        ``tf.function`` and XLA alike; an absolute error below ``tiny``.
        ``tf.math.log1p`` returns such an ``x`` unchanged in eager and
        ``tf.function`` (its kernel) but flushes it under XLA too; keeping it
        would cost one more select over the input, for a digit no later
        TensorFlow arithmetic keeps. float16 subnormals become normal float32
        numbers when widened and come back unchanged.
      * ``+inf``: value ``+inf``, gradient 0. ``NaN``: NaN value and gradient.
      * ``x = -p`` for a sigmoid output ``p`` inside a traced function (a
        ``Neg`` op; the producers :func:`log` recognises): ``log_sigmoid(-z)``
        of the logits ``z``, exact where ``p`` rounded to 1, as for
        ``log(1 - p)``.
      * Second derivative ``-1/(1 + x)**2``, saturated at the dtype's largest
        finite value where it overflows; 0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.log1p([-1.0, 1e-8, 1.0]).numpy()
    array([-1.6635532e+01,  9.9999999e-09,  6.9314718e-01], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(log1p, x, name=name)
    op = "safeops.math.log1p"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        found = _probabilities.find_one_plus(x)
        if found is not None and found.logits.shape == x.shape:
            return scope.output(_log_of_activation(found, x.dtype))
        floor = -_dtypes.below_one(x.dtype)
        y = _clamped_log1p(floor, x.dtype)(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def logit(x, name=None):
    r"""Log-odds ``log(x / (1 - x))`` with the domain clamped inside (0, 1).

    Formula: :math:`\operatorname{logit}(x) = \log x - \log(1 - x)`, the
    inverse of the sigmoid.

    Stable rewrite: ``x`` is clamped to :math:`[t, 1 - \epsilon/2]`
    (``tiny`` and ``below_one`` of ``x.dtype``), then

    .. math:: \operatorname{logit}(x) = \operatorname{sign}(2x - 1)\,
              \operatorname{log1p}\big(|2x - 1| / \min(x, 1 - x)\big),

    the log of the odds (or of their inverse) written as ``log1p`` of a
    nonnegative number, so it never cancels. ``2x - 1`` is exact for
    ``x >= 1/4`` and ``1 - x`` for ``x >= 1/2`` (Sterbenz), so neither the
    zero at 1/2 nor the pole at 1 loses digits; near 0 the rounding of
    ``1 - 2x`` only perturbs the argument of a large logarithm.

    The naive ``log(x / (1 - x))`` or ``log(x) - log(1 - x)`` cancels
    catastrophically near 1/2 (``logit(0.5 + d)`` is about ``4d``, formed as
    the difference of two numbers near -0.69), and both are ``±inf`` at 0
    and 1 with NaN gradients. The gradient is :math:`1/(x (1 - x))` at the clamped ``x``.

    Edges:
      * ``x <= tiny`` (0, subnormals, negatives, ``-inf``): value
        ``logit(tiny)`` (-87.34 in float32, -708.40 in float64), gradient
        ``1/tiny`` (8.5e37, 4.5e307; 16384 in float16): positive, so a step
        that increases ``logit`` moves ``x`` back into (0, 1).
      * ``x >= 1`` (``+inf`` included): value ``logit(1 - eps/2)`` (16.64 in
        float32, 36.74 in float64), gradient ``2/eps`` (1.7e7, 9.0e15):
        positive, so a step that decreases ``logit`` moves ``x`` back below 1.
      * ``NaN``: NaN value and gradient.
      * Second derivative :math:`(2x - 1)/(x (1 - x))^2`, saturated where it
        overflows; 0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.logit([0.0, 0.5, 0.75, 1.0]).numpy()
    array([-87.33655  ,   0.       ,   1.0986123,  16.635532 ], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(logit, x, name=name)
    op = "safeops.math.logit"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        floor, ceiling = _dtypes.tiny(x.dtype), _dtypes.below_one(x.dtype)
        y = _clamped_logit(floor, ceiling, x.dtype)(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def xlogy(x, y, name=None):
    r"""``x * log(y)``, 0 where ``x == 0``, with a clamped ``log`` and finite gradients.

    Formula: :math:`x \log y`, defined as 0 where :math:`x = 0`, even for
    :math:`y = 0` (``tf.math.xlogy``); ``x`` and ``y`` broadcast.

    Stable rewrite: :math:`x \log(\max(y, t))` with :math:`t` = ``tiny`` of
    the dtype, through TensorFlow's ``xlogy`` kernel (which supplies the 0 at
    ``x == 0``). Gradients: :math:`\partial/\partial x = \log(\max(y, t))`
    and :math:`\partial/\partial y = x / \max(y, t)`, each summed back to its
    input's shape. TensorFlow's own gradient is NaN or ``inf`` with respect
    to ``y`` at ``y = 0`` and 0 with respect to ``x`` at ``x = 0``; a weight
    ``x`` that starts at 0 can then never move. Here the gradient with
    respect to ``x`` is ``log(y)`` everywhere, also at ``x == 0``.

    Edges:
      * ``x == 0``: value 0 for every ``y`` but NaN (``y = 0``, negative
        and ``+inf`` included); gradient with respect to ``y`` is 0, with
        respect to ``x`` is ``log(max(y, tiny))`` (finite unless ``y = +inf``).
      * ``y <= tiny`` with ``x != 0`` (0, subnormals, negatives, ``-inf``):
        ``y`` is clamped to ``tiny``: value ``x * log(tiny)`` (``-87.34 x``
        in float32, ``-708.40 x`` in float64), gradient with respect to
        ``y`` is ``x / tiny``: finite and live, it pushes ``y`` back into the
        domain when ``x > 0`` and the loss decreases with ``x log y``. The
        gradient with respect to ``x`` is ``log(tiny)``.
      * ``y = +inf``: value ``±inf`` (``x != 0``), gradient with respect to
        ``y`` is 0 (for finite ``x``) and with respect to ``x`` is ``+inf``.
        ``x = ±inf``: value ``x * log(y)`` (NaN at ``y == 1``, as in
        TensorFlow), ``y``-gradient ``x / y``: NaN at ``y = +inf``.
      * ``NaN`` in ``y``: NaN value and gradients, also at ``x == 0``
        (TensorFlow returns 0 for ``xlogy(0, NaN)``; safeops never hides a
        NaN). ``NaN`` in ``x``: NaN value and ``y``-gradient; the
        ``x``-gradient is ``log(y)`` (at the clamp for ``y <= 0``), which
        does not depend on ``x``, as in TensorFlow.
      * ``y`` a softmax or sigmoid output (or ``1 - p`` of a sigmoid's),
        found as :func:`log` finds it: ``x * log_softmax(z)`` (or
        ``log_sigmoid``) of the logits, exact where ``y`` underflowed to 0,
        with gradient ``log(p)`` with respect to ``x`` and none with respect
        to ``y`` itself (it reaches the logits); a ``-inf`` logit's log is
        ``log(tiny)``, so ``x == 0`` there still gives 0.
      * Second derivatives saturate at the dtype's largest finite value.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      y: A float tensor of the same dtype, broadcastable against ``x``.
      name: Optional name scope.

    Returns:
      A tensor of the broadcast shape and the dtype of ``x``.

    Raises:
      TypeError: ``x`` or ``y`` is not a float tensor, or their dtypes differ.
      ValueError: the shapes do not broadcast.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.xlogy([0.0, 2.0, 1.0], [0.0, 1.0, 0.0]).numpy()
    array([  0.     ,   0.     , -87.33655], dtype=float32)
    """
    if _ragged.any_ragged(x, y):
        return _ragged.elementwise(xlogy, x, y, name=name)
    op = "safeops.math.xlogy"
    with _validate.op_scope(op, name) as scope:
        x, y = _validate.float_tensors(op, x=x, y=y)
        _validate.broadcast_shape(op, "x", x, "y", y)
        dtype = x.dtype
        found = _probabilities.find(y)
        if found is not None and found.logits.shape == y.shape:
            return scope.output(_x_times_log_of_activation(x, found))
        z = _x_times_clamped_log(tf.math.xlogy, tf.math.log, 0.0, _dtypes.tiny(dtype), dtype)(
            _dtypes.to_compute(x), _dtypes.to_compute(y))
        return scope.output(_dtypes.from_compute(z, dtype))


def xlog1py(x, y, name=None):
    r"""``x * log1p(y)``, 0 where ``x == 0``, with a clamped ``log1p`` and finite gradients.

    Formula: :math:`x \log(1 + y)`, defined as 0 where :math:`x = 0`, even
    for :math:`y = -1` (``tf.math.xlog1py``); ``x`` and ``y`` broadcast.

    Stable rewrite: :math:`x \operatorname{log1p}(\max(y, c))` with
    :math:`c = -(1 - \epsilon/2)`, the successor of -1 (as in :func:`log1p`),
    through TensorFlow's ``xlog1py`` kernel. Gradients:
    :math:`\partial/\partial x = \operatorname{log1p}(\max(y, c))` and
    :math:`\partial/\partial y = x / (1 + \max(y, c))`, each summed back to
    its input's shape. TensorFlow's gradient is NaN or ``inf`` with respect
    to ``y`` at ``y = -1`` and 0 with respect to ``x`` at ``x == 0``.

    Edges:
      * ``x == 0``: value 0 for every ``y`` but NaN (``y = -1``, below and
        ``+inf`` included); gradient with respect to ``y`` is 0, with respect
        to ``x`` is ``log1p(max(y, c))``.
      * ``y <= -1`` with ``x != 0`` (``-inf`` included): ``y`` is clamped to
        ``c``: value ``x * log1p(c)`` (``-16.64 x`` in float32, ``-36.74 x``
        in float64), gradient with respect to ``y`` is ``x * 2/eps``: finite
        and live. The gradient with respect to ``x`` is ``log1p(c)``.
      * ``y = +inf``: value ``±inf`` (``x != 0``), gradient with respect to
        ``y`` is 0 (for finite ``x``; NaN for ``x = ±inf``, ``inf / inf``)
        and with respect to ``x`` is ``+inf``.
      * ``NaN`` in ``y``: NaN value and gradients, also at ``x == 0``
        (TensorFlow returns 0 there). ``NaN`` in ``x``: NaN value and
        ``y``-gradient; the ``x``-gradient is ``log1p(y)``, which does not
        depend on ``x``, as in TensorFlow.
      * ``y = -p`` for a sigmoid output ``p`` inside a traced function (as
        in :func:`log1p`): ``x * log_sigmoid(-z)`` of the logits.
      * Second derivatives saturate at the dtype's largest finite value.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      y: A float tensor of the same dtype, broadcastable against ``x``.
      name: Optional name scope.

    Returns:
      A tensor of the broadcast shape and the dtype of ``x``.

    Raises:
      TypeError: ``x`` or ``y`` is not a float tensor, or their dtypes differ.
      ValueError: the shapes do not broadcast.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.xlog1py([0.0, 2.0, 1.0], [-1.0, 0.0, -1.0]).numpy()
    array([  0.      ,   0.      , -16.635532], dtype=float32)
    """
    if _ragged.any_ragged(x, y):
        return _ragged.elementwise(xlog1py, x, y, name=name)
    op = "safeops.math.xlog1py"
    with _validate.op_scope(op, name) as scope:
        x, y = _validate.float_tensors(op, x=x, y=y)
        _validate.broadcast_shape(op, "x", x, "y", y)
        dtype = x.dtype
        found = _probabilities.find_one_plus(y)
        if found is not None and found.logits.shape == y.shape:
            return scope.output(_x_times_log_of_activation(x, found))
        z = _x_times_clamped_log(_xlog1py, _log1p, 1.0, -_dtypes.below_one(dtype), dtype)(
            _dtypes.to_compute(x), _dtypes.to_compute(y))
        return scope.output(_dtypes.from_compute(z, dtype))


def log1mexp(x, name=None):
    r"""``log(1 - exp(-|x|))``, accurate for every ``|x|``, finite at 0.

    Formula: :math:`\log(1 - e^{-|x|})`, the log of the probability
    complementary to :math:`e^{-|x|}`.

    Stable rewrite (Mächler 2012, "Accurately computing
    :math:`\log(1 - \exp(-|a|))`", CRAN Rmpfr vignette), with
    :math:`a = \max(|x|, t)`, :math:`t` = ``tiny`` of the dtype:

    * :math:`a \le \log 2`: :math:`\log(-\operatorname{expm1}(-a))`;
    * :math:`a > \log 2`: :math:`\operatorname{log1p}(-e^{-a})`.

    The naive ``log(1 - exp(-a))`` loses every digit of ``1 - exp(-a)`` for
    small ``a`` (0 at ``a = 1e-8`` in float32, so ``-inf``) and
    ``log(-expm1(-a))`` loses the tiny ``exp(-a)`` for large ``a`` (0 at
    ``a = 20`` in float32); each form is accurate on its own side of log 2.
    The gradient :math:`\operatorname{sign}(x)/\operatorname{expm1}(a)` is
    computed as :math:`\operatorname{sign}(x)\, e^{-a} / (-\operatorname{expm1}(-a))`,
    which stays finite (and its own derivative NaN-free) where ``expm1(a)``
    overflows.

    Edges:
      * ``|x| <= tiny`` (0 and subnormals): ``|x|`` is clamped to ``tiny``:
        value ``log(-expm1(-tiny))`` = ``log(tiny)`` (-87.34 in float32,
        -708.40 in float64), gradient ``±1/tiny`` with ``sign(0) = +1``
        (8.5e37, 4.5e307): finite, pointing away from the pole at 0.
      * ``±inf``: value 0, gradient 0. ``NaN``: NaN value and gradient.
      * Second derivative :math:`-e^{a}/\operatorname{expm1}(a)^2`,
        saturated where it overflows; 0 at clamped points.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.log1mexp([1e-8, 0.5, 20.0]).numpy()
    array([-1.8420681e+01, -9.3275213e-01, -2.0611537e-09], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(log1mexp, x, name=name)
    op = "safeops.math.log1mexp"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        y = _log1mexp_clamped(_dtypes.tiny(x.dtype), x.dtype)(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def logaddexp(x1, x2, name=None):
    r"""``log(exp(x1) + exp(x2))`` without overflow, exact at infinities.

    Formula: :math:`\log(e^{x_1} + e^{x_2})`; ``x1`` and ``x2`` broadcast
    (``numpy.logaddexp``, ``tf.experimental.numpy.logaddexp``).

    Stable rewrite: :math:`\max(x_1, x_2) + \operatorname{log1p}(e^{-|d|})`
    with :math:`d = x_1 - x_2`, taken as 0 where both are the same infinity
    (so they give no ``inf - inf``). The naive form overflows for
    ``x > 88.7`` in float32 and is ``-inf`` for ``x < -103``; the max shift
    (Blanchard, Higham & Higham 2021, "Accurately computing the log-sum-exp
    and softmax functions", IMA J. Numer. Anal. 41(4)) keeps every term in
    range. The gradients are :math:`\sigma(d)` and :math:`\sigma(-d)` (each
    formed directly, so the small one keeps its digits), summed back to each
    input's shape.

    Accuracy: a few ULP of the result, except where the result is near 0
    (:math:`e^{x_1} + e^{x_2} \approx 1`, both inputs negative): there the
    problem itself is ill-conditioned (condition number
    :math:`\sum |x_i| p_i / |y|`, Blanchard, Higham & Higham 2021) and the
    error is a few ULP of :math:`\max(|x_1|, |x_2|)` instead, as for
    ``numpy.logaddexp``.

    Edges:
      * ``x1 = x2 = -inf``: value ``-inf``, gradient 0 for both (never NaN).
      * one argument ``-inf``, the other finite ``a``: value ``a``, gradient
        1 for ``a`` and 0 for the ``-inf``.
      * ``+inf`` in either: value ``+inf``; gradient 1 for the ``+inf`` and 0
        for a finite other; 1/2 each when both are ``+inf``.
      * ``NaN`` in either: NaN value and gradients.
      * Second derivative :math:`\pm\sigma(d)\sigma(-d)`: finite everywhere.

    Args:
      x1: A float tensor (float16, bfloat16, float32 or float64).
      x2: A float tensor of the same dtype, broadcastable against ``x1``.
      name: Optional name scope.

    Returns:
      A tensor of the broadcast shape and the dtype of ``x1``.

    Raises:
      TypeError: ``x1`` or ``x2`` is not a float tensor, or their dtypes differ.
      ValueError: the shapes do not broadcast.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.logaddexp([1000.0, 0.0, float("-inf")], [1000.0, 0.0, float("-inf")]).numpy()
    array([1.0006932e+03, 6.9314718e-01,          -inf], dtype=float32)
    """
    if _ragged.any_ragged(x1, x2):
        return _ragged.elementwise(logaddexp, x1, x2, name=name)
    op = "safeops.math.logaddexp"
    with _validate.op_scope(op, name) as scope:
        x1, x2 = _validate.float_tensors(op, x1=x1, x2=x2)
        _validate.broadcast_shape(op, "x1", x1, "x2", x2)
        dtype = x1.dtype
        y = _log_add_exp(dtype, _xla.enabled())(_dtypes.to_compute(x1), _dtypes.to_compute(x2))
        return scope.output(_dtypes.from_compute(y, dtype))


# ----------------------------------------------------------------------------
# Private helpers.

_LOG_2 = math.log(2.0)


def _quotient(dy: tf.Tensor, d: tf.Tensor) -> tf.Tensor:
    """``dy / d`` for a backward pass whose ``d`` is positive (clamped), through ``DivNoNan``.

    A plain ``dy / d`` with a ``dy`` of constant ones (the gradient of
    ``reduce_sum(log(x))`` in a ``tf.function``) is turned by Grappler's
    constant folding into ``Reciprocal(d)``, whose vectorized CPU kernel in
    TensorFlow 2.21 is off at some ``d`` between 2e33 and 8.5e37: relative
    errors of 1.7e-5 at 2e33, 2.9e-4 at 3.7e34 and 1.5e-4 at 5e37, against
    C3's 1e-5 (found by the gradient sweep of ``python -m benchmarks.sweep``;
    ``tf.math.log``'s own gradient has the same error). ``DivNoNan`` is not
    rewritten, costs the same, and equals the quotient wherever ``d != 0``.
    """
    return tf.math.divide_no_nan(dy, d)


@functools.lru_cache(maxsize=None)
def _clamped_log(floor: float, dtype: tf.DType):
    """``log(max(x, floor))`` whose gradient below ``floor`` is ``1/floor``."""
    return custom_op(
        lambda x: tf.math.log(tf.maximum(x, floor)),
        lambda dy, y, x: (_quotient(dy, tf.maximum(x, floor)),),
        dtype,
    )


@functools.lru_cache(maxsize=None)
def _clamped_log1p(floor: float, dtype: tf.DType):
    """``log1p(max(x, floor))`` whose gradient below ``floor`` is ``1/(1 + floor)``."""
    return custom_op(
        lambda x: _log1p(tf.maximum(x, floor)),
        lambda dy, y, x: (_quotient(dy, 1.0 + tf.maximum(x, floor)),),
        dtype,
    )


@functools.lru_cache(maxsize=None)
def _clamped_logit(floor: float, ceiling: float, dtype: tf.DType):
    """``logit(clip(x, floor, ceiling))`` with the gradient of the clipped point."""

    def forward(x):
        x = tf.clip_by_value(x, floor, ceiling)
        d = 2.0 * x - 1.0
        # log1p in float64: float32's kernel (4.2 ULP in Eigen) made results
        # up to 5 ULP off (python -m benchmarks.sweep). Its argument is one
        # rounding from exact and log1p damps that error, so one widened
        # kernel brings the result within 1 ULP. The argument is >= 0, away
        # from the interval where XLA's float64 log1p is off (see _log1p).
        # |d| as a select, not abs: its derivative at d = 0 is then 1, not
        # sign(0) = 0, so forward-mode autodiff (which TensorFlow takes from
        # this formula, not from the custom gradient) gets 4 at x = 1/2.
        r = _dtypes.wide_forward(tf.math.log1p)(tf.where(d < 0.0, -d, d) / tf.minimum(x, 1.0 - x))
        return tf.where(d < 0.0, -r, r)

    def backward(dy, y, x):
        x = tf.clip_by_value(x, floor, ceiling)
        return (dy / (x * (1.0 - x)),)

    return custom_op(forward, backward, dtype)


def xlogy_clamped_as(x, y, clamp_dtype: tf.DType):
    """:func:`xlogy` of two compute-dtype tensors, with the clamp of ``clamp_dtype`` (for the losses).

    A loss on a float16 ``y_pred`` computes in float32 and rounds once. Its
    clamp and boundary gradient stay float16's (``1/tiny`` = 16384: finite
    once cast back), while its terms and their gradients are formed and
    summed in float32: rounded to float16 one by one, two terms of a
    gradient scaled by a loss-scale optimizer overflowed (or saturated)
    where their float16-representable sum does not.
    """
    return _x_times_clamped_log(tf.math.xlogy, tf.math.log, 0.0, _dtypes.tiny(clamp_dtype), x.dtype)(x, y)


def xlog1py_clamped_as(x, y, clamp_dtype: tf.DType):
    """:func:`xlog1py` of two compute-dtype tensors, clamped as ``clamp_dtype`` (:func:`xlogy_clamped_as`)."""
    return _x_times_clamped_log(_xlog1py, _log1p, 1.0, -_dtypes.below_one(clamp_dtype), x.dtype)(x, y)


def _x_times_clamped_log(x_log_fn, log_fn, shift: float, floor: float, dtype: tf.DType):
    """The op for these arguments, built once per inner-XLA setting (:func:`_x_times_clamped_log_op`)."""
    return _x_times_clamped_log_op(x_log_fn, log_fn, shift, floor, dtype, _xla.enabled())


@functools.lru_cache(maxsize=None)
def _x_times_clamped_log_op(x_log_fn, log_fn, shift: float, floor: float, dtype: tf.DType, xla: bool):
    """``x * log_fn(max(y, floor))``, 0 where ``x == 0``, NaN of ``y`` kept.

    ``x_log_fn`` is TensorFlow's kernel (``xlogy``/``xlog1py``) that supplies
    the 0 at ``x == 0``; ``log_fn`` is ``log``/``log1p``, whose derivative is
    ``1/(shift + y)``.

    As plain ops the forward pass is four kernels (clamp, kernel, NaN test,
    select) where TensorFlow's is one, 1.1-1.4x its time at 1e5 elements;
    with ``xla`` each pass is one fused loop (:mod:`safeops._xla`), and the
    two gradients are separate calls, so the one of a constant ``x`` (the
    labels of a cross-entropy) is pruned. Eager calls on small tensors run
    as plain ops (``eager_plain``).
    """

    def forward(x, y):
        z = x_log_fn(x, tf.maximum(y, floor))
        return tf.where(tf.math.is_nan(y), y, z)

    def backward(dz, z, x, y):
        clamped = tf.maximum(y, floor)
        # d/dx is log(y) whatever x is: a NaN x does not reach it (it reaches
        # the value and the y-gradient x / y). Selecting x's NaN in here would
        # read x once more in the backward pass, 17% of the fwd+bwd under XLA
        # at 1e7 elements, for a gradient that does not depend on x.
        gx = dz * log_fn(clamped)
        # x / y overflows at the clamp for large x (xlogy(1e10, 0): 1e10 / tiny),
        # and float16's range is smaller still: the exact gradient is not
        # representable there, so it saturates at the output dtype's max (C1).
        gy = _dtypes.saturate(dz * x / (clamped + shift if shift else clamped), dtype)
        return sum_to_shape(gx, x), sum_to_shape(gy, y)

    return custom_op(_xla.compiled(forward, xla, eager_plain=True),
                     _xla.compiled_gradients(backward, xla, [(0,), (1,)], eager_plain=True), dtype)


@functools.lru_cache(maxsize=None)
def _log1mexp_clamped(floor: float, dtype: tf.DType):
    """Mächler's two-branch ``log(1 - exp(-max(|x|, floor)))`` and its gradient."""

    def forward(x):
        a = tf.maximum(tf.abs(x), floor)
        # Each branch on its own side of the switch: log1p(-1) = -inf was made
        # and discarded for small a, which stopped enable_check_numerics.
        near = tf.math.log(-tf.math.expm1(-tf.minimum(a, _LOG_2)))
        return tf.where(a <= _LOG_2, near, _log1p(-tf.exp(-tf.maximum(a, _LOG_2))))

    def float64_for_narrower(x):
        # The value of a float32 (or half) input, evaluated in float64 and
        # rounded once: it needs a relative error well below 2**-24, not
        # float64 accuracy, and so three transcendentals instead of
        # Mächler's five (with _log1p's detour). log(-expm1(-a)) rounds
        # 1 - e^-a to within 2**-53, a relative error of at most
        # 2**-53 / e^-a in the result: 2.4e-8 (0.4 float32 ULP) at the switch
        # a = 18.5. Past it log1p(-e) = -e (1 + e/2 + ...) with e = e^-a below
        # 1e-8, so -e is within e/2 < 5e-9 relative.
        a = tf.maximum(tf.abs(x), floor)
        return tf.where(a > 18.5, -tf.exp(-a), tf.math.log(-tf.math.expm1(-a)))

    def backward(dy, y, x):
        a = tf.maximum(tf.abs(x), floor)
        g = dy * tf.exp(-a) / -tf.math.expm1(-a)
        return (tf.where(x < 0.0, -g, g),)

    if dtype == tf.float64:
        return custom_op(forward, backward, dtype)
    # Narrower dtypes: the value in float64. Through float32's expm1 and
    # log1p kernels it was up to 5 ULP off (python -m benchmarks.sweep); so,
    # 1 ULP.
    return custom_op(_dtypes.wide_forward(float64_for_narrower), backward, dtype)


@functools.lru_cache(maxsize=None)
def _log_add_exp(dtype: tf.DType, xla: bool):
    """Max-shifted ``log(exp(x1) + exp(x2))``; zero gradient where the result is ``-inf``.

    The forward is an inner XLA function (with ``xla``): its ``log1p`` is then
    XLA's, accurate in float32 (:func:`log1p_of_exp`).
    """

    def forward(x1, x2):
        d = _difference(x1, x2)
        return tf.maximum(x1, x2) + log1p_of_exp(tf.exp(-tf.abs(d)), dtype)

    def backward(dy, y, x1, x2):
        d = _difference(x1, x2)
        # The result is -inf exactly where max(x1, x2) is (the log1p term is
        # in [0, log 2]). Testing the inputs, not y, keeps the forward value
        # out of the backward pass, so XLA need not keep y for both the
        # loss's sum and the gradients. With y here, fwd+bwd was 2.26x
        # TensorFlow's at 1e8 elements on the H200 replay (docs/gpu); on
        # this CPU, 0.80x before and 0.70x after (tf.function, two quick
        # benchmark runs, each ratio within its run).
        dy = tf.where(_dtypes.is_minus_inf(tf.maximum(x1, x2)), tf.zeros_like(dy), dy)
        # SoftplusGrad(g, d) is g * sigmoid(d) in one fused, accurate kernel
        # (g / (1 + exp(-d))); both weights are formed directly, so the
        # small one is never 1 minus the large one.
        g1 = tf.raw_ops.SoftplusGrad(gradients=dy, features=d)
        g2 = tf.raw_ops.SoftplusGrad(gradients=dy, features=-d)
        return sum_to_shape(g1, x1), sum_to_shape(g2, x2)

    return custom_op(_xla.compiled(forward, xla, eager_plain=True), backward, dtype)


def _difference(x1: tf.Tensor, x2: tf.Tensor) -> tf.Tensor:
    """``x1 - x2``, with 0 for two equal infinities (not NaN).

    Only the infinite case is replaced: at finite ``x1 == x2`` the
    difference stays ``x1 - x2``, so its derivative (and the second
    derivative of ``logaddexp``) is not cut by the select.
    """
    same_infinity = tf.logical_and(tf.math.is_inf(x1), tf.equal(x1, x2))
    return tf.where(same_infinity, tf.zeros((), x1.dtype), x1 - x2)


def _log1p(u: tf.Tensor) -> tf.Tensor:
    """``tf.math.log1p``, routed around XLA's float64 kernel where it is inaccurate.

    Under ``jit_compile=True`` the float64 ``log1p`` of TF 2.21 (CPU) is off
    by up to 127 ULP on ``[-0.415, -0.355]``. For ``u < -1/4``, ``1 + u``
    rounds by at most half an ULP of a number in ``(0, 3/4)`` and
    ``log(1 + u)`` is accurate to 2 ULP, so float64 uses it there. Other
    dtypes call the kernel directly.
    """
    if u.dtype != tf.float64:
        return tf.math.log1p(u)
    # Each branch only on its own side (no NaN or -inf made and discarded).
    return tf.where(u < -0.25, tf.math.log(1.0 + tf.minimum(u, -0.25)), tf.math.log1p(tf.maximum(u, -0.25)))


def log1p_of_exp(u: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """``log1p(u)`` for ``u = exp(t)``, ``t <= 0``, within C3 when the op's dtype is float32.

    TensorFlow's float32 ``log1p`` kernel (Eigen's) is up to 4 ULP off on
    ``(0, 1/2)``; with the ``exp`` before it, ``softplus``, ``log_sigmoid``
    and ``logaddexp`` reached 5 ULP (every float32 in ``[-16, -2]``). XLA's
    float32 ``log1p`` is accurate: ``softplus`` within 2.97 ULP of float64
    over every float32 in ``[-88, 16]`` under ``jit_compile``. So inside XLA
    (an outer ``jit_compile``, or these ops' own inner XLA forward) the
    kernel is used, and elsewhere (eager calls on small tensors,
    ``SAFEOPS_INNER_XLA=0``) a float32 ``u`` goes through float64: 1.7 ULP,
    but TensorFlow's float64 ``log1p`` is scalar code (about 5x slower at
    1e6 elements), which is why the forward runs as an inner XLA function.
    """
    if dtype == tf.float32 and u.dtype == tf.float32 and not _xla.in_xla():
        return tf.cast(tf.math.log1p(tf.cast(u, tf.float64)), tf.float32)
    return _log1p(u)


def _xlog1py(x: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``tf.math.xlog1py`` (0 where ``x == 0``), routed around XLA's float64 ``log1p`` like :func:`_log1p`."""
    if u.dtype != tf.float64:
        return tf.math.xlog1py(x, u)
    return tf.where(u < -0.25, tf.math.xlogy(x, 1.0 + u), tf.math.xlog1py(x, u))

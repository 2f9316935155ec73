"""The sigmoid family: ``sigmoid``, ``log_sigmoid``, ``softplus``, ``softplus_inverse``.

All four are accurate to a few ULP over the whole real line, values and
gradients, in every dtype. TensorFlow's own float32 kernels are not
(measured with TF 2.21 on CPU against float64/mpmath references):
``tf.math.sigmoid`` is off by up to 6 ULP for every ``x < 0`` (Eigen's fast
rational approximation), ``tf.math.softplus`` and ``tf.math.log_sigmoid`` by
up to 7 ULP near ``|x| = 13.9`` (where their kernel switches from
``log1p(exp(x))`` to ``exp(x)`` too early), and the gradient of
``sigmoid``, ``y * (1 - y)``, is 0 in float32 from ``x = 17`` on although
the exact value (2.1e-9 at ``x = 20``) is a normal number.

Accuracy of safeops' versions in float32, 2 million random points per op
against float64 references (``python -m benchmarks.sweep``, C3's ULP
measure): ``sigmoid`` 3 ULP (XLA 2), ``softplus`` 4 (XLA 3),
``log_sigmoid`` 4 (XLA 3), measured before their ``log1p`` changed: an
exhaustive scan found 5 ULP on the way through TensorFlow's float32
``log1p`` kernel, and they now take XLA's or a float64 one
(:func:`safeops.math._logarithms.log1p_of_exp`; the points found are in
``tests/test_sigmoid.py``); ``softplus_inverse`` evaluates its value in
float64 (:func:`safeops._dtypes.wide_forward`), 0 ULP, because in float32
it inherited XLA's ``expm1`` error and reached 5 ULP near ``x = 0.3``.
float64 within 3 ULP everywhere (mpmath references). Gradients: relative
error below 5e-7 (float32) and 5e-16 (float64), also at ``|x|`` of 20, 50
and 100.

One fused TensorFlow kernel does much of the work: ``SoftplusGrad(g, x)``
is ``g / (1 + exp(-x))``, that is ``g * sigmoid(x)`` formed without
cancellation, with a registered gradient that stays finite; it is the
sigmoid itself and the backward pass of ``softplus`` and ``log_sigmoid``.
"""

from __future__ import annotations

import decimal
import functools
import math

import tensorflow as tf

from safeops import _dtypes, _probabilities, _ragged, _validate, _xla
from safeops._gradient import custom_op
from safeops.math._logarithms import _log1p, log1p_of_exp


def sigmoid(x, name=None):
    r"""Logistic sigmoid ``1 / (1 + exp(-x))``, accurate in both tails, value and gradient.

    Formula: :math:`\sigma(x) = 1 / (1 + e^{-x})`; derivative
    :math:`\sigma(x)\,\sigma(-x)`.

    Stable rewrite: the value is ``1 / (1 + exp(-x))`` as one fused kernel
    (``SoftplusGrad`` with unit gradients): for ``x < 0`` the large
    ``exp(-x)`` is divided into 1, so the tiny result keeps its relative
    accuracy (``tf.math.sigmoid`` loses up to 6 ULP there in float32). The
    gradient is :math:`s (1 - s)` with :math:`s = \sigma(-|x|) \le 1/2` (the
    derivative is even), *not* ``y * (1 - y)``: ``1 - sigmoid(x)`` is 0
    in float32 from ``x = 17`` on (and in float64 from ``x = 37``), so the
    naive gradient ``y * (1 - y)`` dies where the exact one, ``e^{-x}``, is
    still a normal number.

    Edges:
      * Large ``|x|``: values and gradients keep full relative accuracy
        while they are normal numbers; results below ``tiny`` (``x < -87.3``
        in float32, ``x < -708.4`` in float64) are flushed to 0, as
        TensorFlow on CPU flushes subnormals. ``sigmoid(1e4)`` is 1 with
        gradient 0 (the exact ``e^{-10000}`` underflows).
      * ``+inf``: value 1, gradient 0. ``-inf``: value 0, gradient 0.
      * ``NaN``: NaN value and gradient.
      * Second derivative :math:`\sigma'(x)(1 - 2\sigma(x))`, finite
        everywhere.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.sigmoid([-50.0, 0.0, 20.0]).numpy()
    array([1.9287499e-22, 5.0000000e-01, 1.0000000e+00], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(sigmoid, x, name=name)
    op = "safeops.math.sigmoid"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        y = _sigmoid_op(x.dtype)(_dtypes.to_compute(x))
        # The logits ride along for the losses and log (safeops._probabilities).
        return _probabilities.record(scope.output(_dtypes.from_compute(y, x.dtype)), x, "sigmoid", -1)


def log_sigmoid(x, name=None):
    r"""``log(sigmoid(x))`` as ``-softplus(-x)``: finite, accurate, live gradient for every ``x``.

    Formula: :math:`\log \sigma(x) = -\log(1 + e^{-x})`; derivative
    :math:`\sigma(-x)`.

    Stable rewrite: :math:`-\operatorname{log1p}(e^{-x})` for
    :math:`x \ge -c` and :math:`x` itself below, with :math:`c = -\log\epsilon`
    of the compute dtype (15.9 in float32, 36.0 in float64), where
    :math:`e^{x}` no longer changes :math:`x` in the last place. The naive
    ``log(sigmoid(x))`` is ``-inf`` from ``x = -88`` on in float32 (the sigmoid
    underflows) and loses every digit for large positive ``x`` (``log(1)``
    is 0 while the exact value is ``-e^{-x}``). The gradient
    :math:`\sigma(-x)` is formed directly (``1 / (1 + e^{x})``), never as
    ``1 - sigmoid(x)``, so it keeps its digits as ``x`` grows
    (``2.1e-9`` at ``x = 20``).

    Edges:
      * ``x -> -inf``: value ``x`` (exact to rounding), gradient 1;
        ``-inf``: value ``-inf``, gradient 1 (the limit).
      * ``x -> +inf``: value ``-e^{-x}``, flushed to ``-0`` below ``tiny``;
        ``+inf``: value ``-0``, gradient 0.
      * ``NaN``: NaN value and gradient.
      * Second derivative :math:`-\sigma(x)\sigma(-x)`, finite everywhere.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.log_sigmoid([-1000.0, 0.0, 20.0]).numpy()
    array([-1.0000000e+03, -6.9314718e-01, -2.0611537e-09], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(log_sigmoid, x, name=name)
    op = "safeops.math.log_sigmoid"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        y = _log_sigmoid_op(x.dtype, _xla.enabled())(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def softplus(features, name=None):
    r"""``log(1 + exp(features))`` without overflow, accurate in both tails.

    Formula: :math:`\operatorname{softplus}(x) = \log(1 + e^{x})`;
    derivative :math:`\sigma(x)`.

    Stable rewrite: :math:`\operatorname{log1p}(e^{x})` for :math:`x \le c`
    and :math:`x` itself above, with :math:`c = -\log\epsilon` of the
    compute dtype (15.9 in float32, 36.0 in float64), beyond which
    :math:`\log(1 + e^{-x})` is below 1/8 ULP of ``x``. The naive
    ``log(1 + exp(x))`` overflows to ``inf`` for ``x > 88.7`` in float32 and
    rounds ``1 + exp(x)`` to 1 (value 0) for ``x < -17``.
    ``tf.math.softplus`` avoids both but replaces ``log1p(e^x)`` by ``e^x``
    from ``x < -13.9`` on, 7 ULP off in float32 (TF 2.21). The gradient is
    :math:`\sigma(x)`, one fused kernel like TensorFlow's.

    Edges:
      * ``x -> -inf``: value ``e^{x}`` (flushed to 0 below ``tiny``), gradient
        ``e^{x}``; ``-inf``: value 0, gradient 0.
      * ``x -> +inf``: value ``x``, gradient 1; ``+inf``: value ``+inf``,
        gradient 1 (the limit).
      * ``NaN``: NaN value and gradient.
      * Second derivative :math:`\sigma(x)\sigma(-x)`, finite everywhere.

    Args:
      features: A float tensor (float16, bfloat16, float32 or float64).
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``features``.

    Raises:
      TypeError: ``features`` is not a float tensor.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.softplus([-20.0, 0.0, 1000.0]).numpy()
    array([2.0611537e-09, 6.9314718e-01, 1.0000000e+03], dtype=float32)
    """
    if _ragged.any_ragged(features):
        return _ragged.elementwise(softplus, features, name=name)
    op = "safeops.math.softplus"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(features, op, "features")
        y = _softplus_op(x.dtype, _xla.enabled())(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def softplus_inverse(x, name=None):
    r"""``log(exp(x) - 1)``, the inverse of :func:`softplus`, with the domain clamped above 0.

    Formula: :math:`\operatorname{softplus}^{-1}(x) = \log(e^{x} - 1)` for
    :math:`x > 0`; derivative :math:`1/(1 - e^{-x})`.

    Stable rewrite, with ``x`` clamped below at ``tiny``:

    * :math:`x < \log(4/3)`: :math:`\log(\operatorname{expm1}(x))`;
    * up to :math:`c = -\log\epsilon` (15.9 in float32, 36.0 in float64):
      :math:`t + \operatorname{log1p}(-\operatorname{expm1}(-t))` with
      :math:`t = x - \log 2`, since :math:`e^{x} - 1 = e^{t}(2 - e^{-t})`.
      Both terms have the sign of :math:`t`, so nothing cancels at the zero
      :math:`x = \log 2`, and ``t`` is formed exactly from a two-part
      ``log 2`` (Cody & Waite 1980, "Software Manual for the Elementary
      Functions": a head that ``x`` subtracts exactly and a tail, applied
      to first order);
    * above :math:`c`: :math:`x` itself (:math:`\log(1 - e^{-x})` is below
      1/8 ULP of ``x``).

    The switch at :math:`\log(4/3)` is where both forms amplify the error
    of ``expm1`` equally. The naive ``log(exp(x) - 1)`` overflows for
    ``x > 88.7`` in float32, and it and ``x + log(-expm1(-x))`` (TensorFlow
    Probability's form) cancel near ``x = log 2``, where the result crosses
    0. The gradient is :math:`-1/\operatorname{expm1}(-x)`.

    Edges:
      * ``x <= tiny`` (0, subnormals, negatives, ``-inf``): value
        ``log(expm1(tiny)) = log(tiny)`` (-87.34 in float32, -708.40 in
        float64), gradient ``1/tiny`` (8.5e37, 4.5e307; 16384 in float16):
        finite, positive, pointing back into the domain.
      * ``+inf``: value ``+inf``, gradient 1 (the limit). ``NaN``: NaN value
        and gradient.
      * Second derivative :math:`-e^{-x}/\operatorname{expm1}(-x)^2`,
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
    >>> tfm.softplus_inverse([0.0, 0.6931472, 1000.0]).numpy()
    array([-8.7336548e+01,  3.8093084e-09,  1.0000000e+03], dtype=float32)
    """
    if _ragged.any_ragged(x):
        return _ragged.elementwise(softplus_inverse, x, name=name)
    op = "safeops.math.softplus_inverse"
    with _validate.op_scope(op, name) as scope:
        x = _validate.float_tensor(x, op, "x")
        y = _softplus_inverse_op(_dtypes.tiny(x.dtype), x.dtype)(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


# ----------------------------------------------------------------------------
# Private helpers.

# log(2) to 40 digits, split per compute dtype into a head (log 2 rounded to
# the dtype, which an x near log 2 subtracts exactly) and a tail.
_LOG_2 = decimal.Decimal("0.6931471805599453094172321214581765680755")

# Below log(4/3) log(expm1(x)) amplifies the error of expm1 less than the
# log 2-centred form, above it more; both amplify it by 0.91 at the switch.
_LOG_4_3 = math.log(4.0 / 3.0)


def _scaled_sigmoid(scale: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """``scale * sigmoid(x)`` in one fused kernel: ``scale / (1 + exp(-x))``.

    TensorFlow's ``SoftplusGrad`` computes exactly this, on CPU and under
    XLA; for ``x < 0`` the large ``exp(-x)`` is divided into ``scale``, so a
    tiny result keeps its relative accuracy. Its registered gradient,
    ``scale / (exp(-x) + 2 + exp(x))`` with respect to ``x``, is finite
    everywhere, which second derivatives rely on.
    """
    return tf.raw_ops.SoftplusGrad(gradients=scale, features=x)


@functools.lru_cache(maxsize=None)
def _sigmoid_op(dtype: tf.DType):
    """``sigmoid`` with the gradient ``s * (1 - s)``, ``s = sigmoid(-|x|)``.

    The derivative is even, so it is formed from the *small* sigmoid
    ``s <= 1/2``, where ``1 - s`` does not cancel, by TensorFlow's fused
    ``SigmoidGrad`` kernel. ``tf.math.sigmoid`` is off by up to 6 ULP there,
    far inside the 1e-5 relative tolerance of gradients, and it is the
    fastest sigmoid TensorFlow has.
    """
    return custom_op(
        lambda x: _scaled_sigmoid(tf.ones_like(x), x),
        lambda dy, y, x: (tf.raw_ops.SigmoidGrad(y=tf.math.sigmoid(-tf.abs(x)), dy=dy),),
        dtype,
    )


@functools.lru_cache(maxsize=None)
def _softplus_op(dtype: tf.DType, xla: bool):
    """``softplus`` as ``log1p(exp(x))`` up to ``c``, ``x`` above; gradient ``sigmoid(x)``.

    The forward is an inner XLA function (with ``xla``; eager calls on small
    tensors run it as plain ops), for XLA's float32 ``log1p``
    (:func:`safeops.math._logarithms.log1p_of_exp`).
    """
    switch = _dtypes.log_inv_eps(_dtypes.compute_dtype(dtype))

    def forward(x):
        # exp of at most `switch`: the branch not taken never overflows (an
        # inf there, discarded, still stopped enable_check_numerics).
        return tf.where(x > switch, x, log1p_of_exp(tf.exp(tf.minimum(x, switch)), dtype))

    return custom_op(_xla.compiled(forward, xla, eager_plain=True),
                     lambda dy, y, x: (_scaled_sigmoid(dy, x),), dtype)


@functools.lru_cache(maxsize=None)
def _log_sigmoid_op(dtype: tf.DType, xla: bool):
    """``-softplus(-x)`` written out; gradient ``sigmoid(-x)``; the forward as :func:`_softplus_op`'s."""
    switch = _dtypes.log_inv_eps(_dtypes.compute_dtype(dtype))

    def forward(x):
        return tf.where(x < -switch, x, -log1p_of_exp(tf.exp(-tf.maximum(x, -switch)), dtype))

    return custom_op(_xla.compiled(forward, xla, eager_plain=True),
                     lambda dy, y, x: (_scaled_sigmoid(dy, -x),), dtype)


@functools.lru_cache(maxsize=None)
def _softplus_inverse_op(floor: float, dtype: tf.DType):
    """``log(expm1(max(x, floor)))``, evaluated in float64 for every dtype; gradient ``-1/expm1(-x)``.

    float64 inputs take the three-branch ``forward``, accurate to float64;
    narrower ones the two-transcendental ``float64_for_narrower``.
    """
    compute = tf.float64  # the constants of the three-branch forward, used for float64 inputs
    switch = _dtypes.log_inv_eps(compute)
    head = float(compute.as_numpy_dtype(float(_LOG_2)))
    tail = float(_LOG_2 - decimal.Decimal(head))

    def forward(x):
        x = tf.maximum(x, floor)
        # Each branch on its own side of its switch (an expm1 that overflows,
        # a log1p(-1), made and discarded, stopped enable_check_numerics).
        small = tf.math.log(tf.math.expm1(tf.minimum(x, _LOG_4_3)))
        # log(e^x - 1) = t + log(2 - e^-t) with t = x - log 2 = (x - head) - tail:
        # x - head is exact, both terms share the sign of t (no cancellation),
        # and the tail enters to first order, 2 tail / (2 - e^-t), so no chain
        # of constant subtractions is left for graph optimizers to reassociate.
        t = tf.clip_by_value(x, _LOG_4_3, switch) - head
        v = -tf.math.expm1(-t)
        middle = t + (_log1p(v) - 2.0 * tail / (1.0 + v))
        return tf.where(x < _LOG_4_3, small, tf.where(x > switch, x, middle))

    def float64_for_narrower(x):
        # The value of a float32 (or half) input, evaluated in float64 and
        # rounded once, needs a relative error well below 2**-24, not float64
        # accuracy: x + log(1 - e^-x) in two transcendentals does. Its two
        # terms cancel only near x = log 2, where the result is at least
        # about 2**-25 for a float32 x that is not log 2 itself, against an
        # absolute error near 2**-53: a relative 4e-9, under 0.1 ULP.
        x = tf.maximum(x, floor)
        return x + tf.math.log(-tf.math.expm1(-x))

    def backward(dy, y, x):
        return (dy / -tf.math.expm1(-tf.maximum(x, floor)),)

    if dtype == tf.float64:
        return custom_op(forward, backward, dtype)
    # Narrower dtypes: the value in float64. In float32, XLA's expm1 (5.4
    # ULP) made results up to 5 ULP off (python -m benchmarks.sweep); in
    # float64, 0.
    return custom_op(_dtypes.wide_forward(float64_for_narrower), backward, dtype)

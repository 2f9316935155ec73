"""Log-sum-exp and the softmax family: ``reduce_logsumexp``, ``softmax``,
``log_softmax``, and the running log-sum-exp ``cumulative_logsumexp``
(TensorFlow's scan kernel in float64 with a gradient of its own: see
:func:`cumulative_logsumexp`; what follows is about the other three).

All three shift by the slice maximum before exponentiating, so ``exp`` never
overflows, and sum the shifted exponentials without the maximum's own term so
that a slice dominated by one entry keeps its tiny remainder:

.. math::
   \\operatorname{lse}(x) = m + \\operatorname{log1p}\\Bigl(\\sum_{i \\ne k} e^{x_i - m}\\Bigr),
   \\qquad m = x_k = \\max_i x_i .

This is Algorithm 4.2 of Blanchard, Higham and Higham (2021), "Accurately
computing the log-sum-exp and softmax functions", IMA J. Numer. Anal. 41(4),
2311-2330: ``log(sum)`` of a sum that rounds to 1 loses every digit of
``lse(x) - m``; ``log1p`` of the remainder keeps them. A non-finite maximum
is replaced by 0 (as JAX's ``logsumexp`` does), so an all ``-inf`` slice sums
to 0 and gives ``-inf`` instead of ``-inf - (-inf) = NaN``.

The shift itself is exact: ``x - m`` is rounded once, and ``exp`` would
turn that absolute error into a relative one of up to ``|x - m| * eps/2``
(64 ULP at ``x - m = -87`` in float32; TensorFlow's softmax kernels carry
it). TwoSum (:func:`exact_shift`) recovers the rounding error ``err`` of
each shifted logit in five additions, and every op uses
``exp(z) * (1 + err)`` in place of ``exp(x - m)``, so the results are within
a few ULP of the exact ones.

The gradients are the softmax weights ``w * exp(x - lse)``, written with
differentiable ops, so second derivatives work; ``reduce_logsumexp`` forms
them as ``exp(x - m) / s`` from the saved shift ``m`` and sum ``s`` (not from
the rounded output, whose rounding error ``ulp(lse)`` would enter the
exponent: 0.49989 instead of 0.5 at ``[1e4, 1e4]`` in float32).

Speed (contract C8). Written as plain TensorFlow ops, these formulas cost
about ten passes over the tensor where ``tf.math.reduce_logsumexp`` needs
five and ``tf.nn.softmax`` is one fused kernel: 1.7-2.6x TensorFlow's time
forward+backward under ``tf.function`` on CPU. So the forward functions of
all three (and the backward ones of ``reduce_logsumexp`` without
``weights`` and ``log_softmax``) run as inner
``tf.function(jit_compile=True)`` functions, one per axis and dtype, and XLA
fuses each into one or two loops over the data, even when the caller's own
function is not compiled (inside a caller's ``jit_compile=True`` function
they are simply inlined). The price is an XLA compile, tens to a few
hundred milliseconds, the first time each new input shape is seen: code
whose shapes change at every step (unpadded sequence lengths) should turn it
off with ``SAFEOPS_INNER_XLA=0`` in the environment (read at import) or
:func:`set_inner_xla`. ``softmax`` remains 1.1-1.4x TensorFlow's kernel
(measured by ``python -m benchmarks``): the price of the exact shift and of
XLA's CPU code for row reductions, paid for accuracy (C3 before C8).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _probabilities, _ragged, _validate, _xla
from safeops._gradient import custom_op, custom_op_with_residuals, recording
from safeops.math import _logarithms
from safeops._xla import set_inner_xla  # noqa: F401  (re-exported: the switch lives in safeops._xla)

# Terms with x - max >= this are summed as e - 1 (exact: e > 1/2), see _sum_minus_one.
_BIG_SHIFT = -0.69
# log(1/2): a log-probability above it is the row's only one above 1/2.
_LOG_2 = 0.6931471805599453


def reduce_logsumexp(input_tensor, axis=None, keepdims=False, name=None, *, weights=None, return_sign=False):
    r"""Log of the (weighted) sum of exponentials over ``axis``.

    Formula: :math:`\log \sum_i w_i e^{x_i}` over the reduced axes
    (:math:`w_i = 1` without ``weights``), as ``tf.math.reduce_logsumexp``
    and ``scipy.special.logsumexp(a, b=weights, return_sign=...)``.

    Stable rewrite: :math:`m + \operatorname{log1p}(\sum_i \pm e^{x_i + \log|w_i| - m} - 1)`
    with :math:`m` the slice maximum of :math:`x_i + \log|w_i|` (over entries
    of nonzero weight; the weights are folded into the exponent, so a tiny
    weight at the largest ``x`` is not lost in ``w_k - 1``, and the rounding
    errors of ``log|w_i|`` and of the exponent are added back), the terms near
    :math:`\pm 1` summed apart so the remainder is exact (Blanchard, Higham & Higham 2021, IMA J. Numer. Anal.,
    Algorithm 4.2); a float32 remainder accumulates in float64 (in float32
    it was beyond 4 ULP for ``[0, -15.3 x 3999]``, whose 3999 equal terms
    round alike). The naive ``log(reduce_sum(exp(x)))`` overflows for
    ``x > 88`` in float32 and gives ``log 0 = -inf`` for ``x < -104``; the
    usual max shift with ``log`` instead of ``log1p`` returns 0 for
    ``[0, -20]`` where the answer is ``2.06e-9``. The gradient is the softmax
    ``w * exp(x - lse)``, formed as ``exp(x - m) / s`` from the saved shift
    and sum. The weight gradient ``exp(x - lse)`` of a zero-weight entry far
    above the others is saturated at the dtype's largest finite value (C1),
    without forming an infinity on the way (``enable_check_numerics``).

    Accuracy: a few ULP of the result, except where the result is near 0
    (the sum of exponentials near 1 with entries below 0): the problem is
    ill-conditioned there (condition number :math:`\sum |x_i| p_i / |y|`
    with :math:`p` the softmax, Blanchard, Higham & Higham 2021), and the
    error is a few ULP of the largest :math:`|x_i|` instead, as for
    :func:`logaddexp`. With weights of both signs the weighted terms can
    cancel too; the error then grows with the ratio of
    :math:`\sum |w_i| e^{x_i}` to :math:`|\sum w_i e^{x_i}|`, as any
    floating-point sum's does.

    Edges:
      * all ``-inf`` slice (or all weights 0, or an empty slice): value
        ``-inf``, gradient 0 (TensorFlow's gradient is NaN there).
      * ``-inf`` entries: contribute nothing, gradient 0.
      * ``+inf`` entry: value ``+inf``; gradient 1 at each ``+inf`` entry
        (times its weight) and 0 elsewhere.
      * ``NaN`` anywhere in a slice: that slice's value and gradient are NaN.
      * ``weights``: broadcast against ``input_tensor``; a zero weight drops
        its entry (even a ``+inf`` or ``-inf`` one, but not a NaN one).
        Negative weights: without ``return_sign`` a negative sum gives NaN
        (as SciPy), a zero sum ``-inf`` with gradient 0; with
        ``return_sign=True`` the result is ``(log|sum|, sign(sum))``,
        ``sign`` in ``{-1, 0, 1}`` and ``log|0| = -inf``.
      * Second derivative: autodiff of the softmax gradient, finite for
        finite inputs.

    Args:
      input_tensor: A float tensor (float16, bfloat16, float32 or float64),
        or a ``tf.RaggedTensor`` of one reduced over its ragged or first
        axis (padded with ``-inf``; the result is dense).
      axis: The axes to reduce: ``None`` (all), an int, or a list or tuple of
        ints; negative axes count from the end.
      keepdims: If true, keeps the reduced axes with length 1.
      name: Optional name scope.
      weights: Optional float tensor broadcastable against
        ``input_tensor`` (SciPy's ``b``). Keyword-only.
      return_sign: If true, returns ``(log|sum|, sign)``. Keyword-only.

    Returns:
      The reduced tensor, of the dtype of ``input_tensor``; with
      ``return_sign=True`` a pair of such tensors.

    Raises:
      TypeError: ``input_tensor`` or ``weights`` is not a float tensor.
      ValueError: ``axis`` is out of range, or the shapes do not broadcast.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.reduce_logsumexp([0.0, -20.0]).numpy()
    np.float32(2.0611537e-09)
    >>> tfm.reduce_logsumexp([-float("inf"), -float("inf")]).numpy()
    np.float32(-inf)
    >>> lse, sign = tfm.reduce_logsumexp([0.0, 0.0], weights=[1.0, -2.0], return_sign=True)
    >>> float(lse), float(sign)
    (0.0, -1.0)
    """
    op = "safeops.math.reduce_logsumexp"
    if _ragged.any_ragged(input_tensor, weights):
        if weights is not None:
            raise TypeError(_validate.message(
                op, "weights", "None with a RaggedTensor input", type(weights).__name__))
        return _ragged.reduced(
            lambda x, a, k, **kw: reduce_logsumexp(x, a, k, name, **kw), op, "input_tensor", input_tensor,
            axis, keepdims, return_sign=return_sign)
    with _validate.op_scope(op, name) as scope:
        if weights is None:
            x = _validate.float_tensor(input_tensor, op, "input_tensor")
            w = None
        else:
            x, w = _validate.float_tensors(op, input_tensor=input_tensor, weights=weights)
            x, w = _broadcast_pair(op, x, w)
        _validate.axis_in_range(op, axis, x.shape.rank)
        dtype = x.dtype
        xc = _dtypes.to_compute(x)
        if w is None:
            y = _unweighted_logsumexp(axis, dtype)(xc)
            sign = _sign_of_sum(y) if return_sign else None
        else:
            wc = _dtypes.to_compute(w)
            packed = _weighted_logsumexp(axis, dtype, return_sign)(xc, wc)
            y, sign = (packed[0], packed[1]) if return_sign else (packed, None)
        if not keepdims:
            y = _drop_reduced(y, axis)
        y = _dtypes.from_compute(y, dtype)
        if not return_sign:
            return scope.output(y)
        sign = tf.stop_gradient(sign)
        if not keepdims:
            sign = _drop_reduced(sign, axis)
        return scope.output(y), _dtypes.from_compute(sign, dtype)


def softmax(logits, axis=None, name=None):
    r"""Softmax with fully masked rows mapped to zeros, not NaN.

    Formula: :math:`y_i = e^{x_i} / \sum_j e^{x_j}` along ``axis``
    (``None`` means the last axis, as in ``tf.nn.softmax``).

    Stable rewrite: :math:`y_i = e^{z_i} (1 + \epsilon_i) / \sum_j e^{z_j}
    (1 + \epsilon_j)` where :math:`z_i + \epsilon_i = x_i - m` exactly
    (:math:`m` the row maximum, :math:`\epsilon_i` the rounding error of the
    shift, recovered by TwoSum). For float32 (and the half dtypes, computed
    in float32) the row sum accumulates in float64 and each quotient is
    formed with the float64 reciprocal as the sum of two float32 parts, so
    the result carries about one rounding: a float32 row sum's rounding
    grows with the row's length (beyond 4 ULP over ``[0, log 0.1 x 3999]``
    and over rows of 1000 standard normal entries). For float64
    the row sum is formed as ``1 + (sum - 1)`` (:func:`_sum_minus_one`) so
    that the terms below half an ULP of the maximum's 1 keep their share.
    The naive ``exp(x) / sum(exp(x))``
    overflows for ``x > 88`` in float32; the usual max shift (Blanchard,
    Higham & Higham 2021, IMA J. Numer. Anal.), TensorFlow's kernel,
    inherits the rounding of ``x - m``, up to 67 ULP on the accuracy sample,
    and gives NaN for an entirely ``-inf`` (fully masked) row. A fully masked
    row is shifted by 0 and its zero sum divided by 1. The gradient
    ``y * (dy - sum(dy * y))`` is computed from the saved output, as
    TensorFlow's, with ``dy_j - sum(dy * y)`` formed around the entry above
    1/2 when a row has one, so that its ``1 - y_m`` is the sum of the
    other entries rather than rounded to 0 (row ``[20, 0]`` in float32:
    ``[2.1e-9, -2.1e-9]``, where TensorFlow's gives ``[0, -2.1e-9]``).

    Edges:
      * row entirely ``-inf`` (fully masked): zeros, gradient 0.
      * ``-inf`` entry in a partly masked row: 0, gradient 0.
      * ``+inf`` entry: the whole row is NaN (``inf - inf``), and so is
        its gradient (TensorFlow's kernel makes only that entry NaN).
      * ``NaN`` in a row: the whole row and its gradient are NaN.
      * Second derivative: autodiff of the gradient, finite for finite
        inputs.

    Args:
      logits: A float tensor (float16, bfloat16, float32 or float64) of
        rank >= 1, or a ``tf.RaggedTensor`` taken along a uniform axis or a
        ragged one with no ragged axis inside it.
      axis: The int axis of the classes; ``None`` means -1.
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``logits``.

    Raises:
      TypeError: ``logits`` is not a float tensor.
      ValueError: ``logits`` is a scalar or ``axis`` is out of range.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.softmax([[0.0, -float("inf")], [-float("inf"), -float("inf")]]).numpy()
    array([[1., 0.],
           [0., 0.]], dtype=float32)
    """
    op = "safeops.math.softmax"
    if _ragged.any_ragged(logits):
        return _ragged.along_axis(softmax, op, "logits", logits, -1 if axis is None else axis, name=name)
    with _validate.op_scope(op, name) as scope:
        x, axis = _class_axis(op, logits, axis)
        y = _masked_softmax(axis, x.dtype)(_dtypes.to_compute(x))
        # The logits ride along for the losses and log (safeops._probabilities).
        return _probabilities.record(scope.output(_dtypes.from_compute(y, x.dtype)), x, "softmax", axis)


def log_softmax(logits, axis=None, name=None):
    r"""Log-softmax, accurate near 0, with fully masked rows mapped to ``-inf``.

    Formula: :math:`y_i = x_i - \log \sum_j e^{x_j}` along ``axis``
    (``None`` means the last axis, as in ``tf.nn.log_softmax``).

    Stable rewrite: :math:`y_i = (z_i - \operatorname{log1p}(\sum_j
    e^{z_j}(1 + \epsilon_j) - 1)) + \epsilon_i` with :math:`z_i + \epsilon_i
    = x_i - m` exactly (:math:`m` the row maximum, :math:`\epsilon_i` from
    TwoSum) and the maximum's own term summed apart (Blanchard, Higham &
    Higham 2021, IMA J. Numer. Anal.), in float64 for float32 inputs (a
    float32 sum was beyond 4 ULP at the top entry of ``[0, -15.3 x
    3999]``).
    The naive ``log(softmax(x))`` gives ``log 0 = -inf`` as soon as a
    probability underflows (``x_i - m < -104`` in float32); the kernel
    formula ``(x - m) - log(sum)`` returns exactly 0 for the top entry of a
    row like ``[0, -20]``, whose log-probability is ``-2.06e-9``. The
    gradient ``dy - exp(y) * sum(dy)`` is computed from the saved output;
    at an entry whose probability exceeds 1/2 as ``(dy - sum(dy)) -
    sum(dy) expm1(y)``, which keeps its ``1 - p`` (``2.06e-9`` there,
    where ``1 - exp(y)`` rounds to 0).

    Edges:
      * row entirely ``-inf`` (fully masked): ``-inf`` everywhere, gradient 0
        (TensorFlow returns NaN).
      * ``-inf`` entry in a partly masked row: ``-inf``, gradient 0 (the
        output is the constant ``-inf`` for any finite change of the row).
      * finite entry whose ``x - max`` overflows (``[-max, max]``): value
        ``-inf`` (the exact value is beyond the dtype), gradient exact (1).
      * ``+inf`` entry: NaN there (``inf - inf``) and ``-inf`` at the other
        entries (their limit, as at an overflowing ``x - max``);
        TensorFlow makes the whole row NaN.
      * ``NaN`` in a row: the whole row and its gradient are NaN.
      * Second derivative: autodiff of the gradient, finite for finite
        inputs.

    Args:
      logits: A float tensor (float16, bfloat16, float32 or float64) of
        rank >= 1, or a ``tf.RaggedTensor`` taken along a uniform axis or a
        ragged one with no ragged axis inside it.
      axis: The int axis of the classes; ``None`` means -1.
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``logits``.

    Raises:
      TypeError: ``logits`` is not a float tensor.
      ValueError: ``logits`` is a scalar or ``axis`` is out of range.

    Example:

    >>> import safeops.math as tfm
    >>> tfm.log_softmax([0.0, -20.0]).numpy()
    array([-2.0611537e-09, -2.0000000e+01], dtype=float32)
    """
    op = "safeops.math.log_softmax"
    if _ragged.any_ragged(logits):
        return _ragged.along_axis(log_softmax, op, "logits", logits, -1 if axis is None else axis, name=name)
    with _validate.op_scope(op, name) as scope:
        x, axis = _class_axis(op, logits, axis)
        y = _masked_log_softmax(axis, x.dtype)(_dtypes.to_compute(x))
        return scope.output(_dtypes.from_compute(y, x.dtype))


def cumulative_logsumexp(x, axis=0, exclusive=False, reverse=False, name=None):
    r"""Running log-sum-exp along ``axis``, finite gradients at ``-inf`` masks.

    Formula: :math:`y_j = \log \sum_{i \le j} e^{x_i}` along ``axis``
    (:math:`i < j` with ``exclusive``, :math:`i \ge j` or :math:`i > j`
    with ``reverse``), as ``tf.math.cumulative_logsumexp``.

    Stable rewrite: TensorFlow's scan kernel, which adds one entry at a time
    as :math:`\max(a, b) + \operatorname{log1p}(e^{\min(a, b) - \max(a,
    b)})`, run in float64 for every input dtype and rounded once. In float32
    the kernel's rounding accumulates along the axis (beyond 4 ULP over
    rows of 1000 normal entries); in float64 and rounded to float32 the
    result is within 1 ULP there (``tests/test_logsumexp.py``). Where the
    kernel goes wrong it is overruled:
    a ``+inf`` entry makes every output it enters ``+inf`` (the kernel gives
    NaN from a second ``+inf`` on, ``inf - inf``), and a NaN makes them NaN
    (the kernel's maximum drops the NaN and returns finite values: ``[0,
    NaN, 1]`` gave ``[0, 0.69, 1.55]``). The gradient
    :math:`\partial L / \partial x_i = \sum_j g_j e^{x_i - y_j}` over the
    outputs :math:`y_j` that :math:`x_i` enters is formed in linear form,
    :math:`w_i \sum_j g_j / S_j` with :math:`w_i = e^{x_i - m}` (:math:`m`
    the slice maximum, the shift exact as in :func:`softmax`) and
    :math:`S_j` the running sum of the :math:`w` (compensated in float64):
    one reverse running sum, no logarithm, and no :math:`y_j`, whose
    rounding (a few ULP of :math:`|y_j|`, 1.4e14 at ``1e30``) would enter
    the exponent. That needs every finite :math:`w_i` well inside float64
    (:math:`x_i > m - 500`); in a slice that spans further (a ``-1e9``
    mask), or holds ``+inf`` or NaN, the gradient is TensorFlow's formula,
    :math:`e^{x_i + c_i}` with :math:`c_i` the opposite running log-sum-exp
    of :math:`\log g_j - y_j` (positive and negative :math:`g_j` apart, the
    negative part only when some :math:`g_j < 0`), in float64. TensorFlow's
    gradient is NaN at a ``-inf`` entry that precedes every finite one
    (``[-inf, 0, 1]``, a padded list in ListMLE or a Cox partial likelihood
    with ``reverse=True`` and trailing padding) and at the first output of
    ``exclusive``: there :math:`y_j = -\infty`, the term :math:`\log g_j -
    y_j` is ``+inf`` and the sum :math:`c_i + x_i` is ``inf - inf``. Here an
    output :math:`y_j = -\infty` takes no part in the gradient (no finite
    change of the entries it sums moves it), so the ``-inf`` entries get 0.

    Accuracy: values within 1 ULP in float32 and the half dtypes. float64
    has the kernel's own rounding, which grows with the length of the axis
    (beyond 4 ULP over rows of 1000 entries). Gradients within C3 at any
    magnitude in the linear form. In the wide slices that take the scan's
    form, the exponent :math:`x_i - y_j` carries a few float64 ULP of
    :math:`|y_j|`: a relative error below 1e-9 for float32 inputs up to
    :math:`|x| = 10^6`, of order :math:`|x| \cdot 10^{-16}` beyond, and in
    float64 beyond C3's 1e-12 from about :math:`|x| = 10^3`. The gradient's
    condition number is of that order there (about :math:`2 \max |x|`: an
    input rounded to its own dtype moves it by :math:`|x|` ULP).

    Edges:
      * ``-inf`` entries (masks, padding): contribute nothing, gradient 0;
        an output that sums only ``-inf`` entries (or none: the first output
        of ``exclusive``) is ``-inf`` with no gradient.
      * ``+inf`` entry: every output it enters is ``+inf``; its gradient is
        the sum of the upstream gradients of those outputs (1 per ``+inf``
        entry, as :func:`reduce_logsumexp`), 0 at the finite entries there.
      * ``NaN`` entry: every output it enters is NaN, and so is the
        gradient of every entry that enters those outputs.
      * Second derivative: autodiff of the gradient (whose scans are this
        op), finite for finite inputs.

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64) of rank >= 1,
        or a ``tf.RaggedTensor`` taken along a uniform axis or a ragged one
        with no ragged axis inside it.
      axis: The int axis of the scan (default 0, as TensorFlow's), or a
        scalar integer tensor.
      exclusive: If true, each output leaves out its own entry.
      reverse: If true, the scan runs from the end of the axis.
      name: Optional name scope.

    Returns:
      A tensor of the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not a float tensor, or ``exclusive`` or
        ``reverse`` is not a bool.
      ValueError: ``x`` is a scalar or ``axis`` is out of range.

    Example:

    >>> import tensorflow as tf
    >>> import safeops.math as tfm
    >>> x = tf.constant([-float("inf"), 0.0, 1.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = tfm.cumulative_logsumexp(x)
    >>> y.numpy()
    array([     -inf, 0.       , 1.3132616], dtype=float32)
    >>> tape.gradient(y, x).numpy()
    array([0.       , 1.2689414, 0.7310586], dtype=float32)
    """
    op = "safeops.math.cumulative_logsumexp"
    exclusive, reverse = _validate.scan_flags(op, exclusive, reverse)
    if _ragged.any_ragged(x):
        return _ragged.along_axis(cumulative_logsumexp, op, "x", x, axis, exclusive=exclusive,
                                  reverse=reverse, name=name)
    with _validate.op_scope(op, name) as scope:
        t, axis = _validate.scan_input(op, x, axis)
        wide = tf.cast(t, _dtypes.sum_dtype(t.dtype))
        y = _cumulative_logsumexp(axis, exclusive, reverse, t.dtype)(wide)
        return scope.output(tf.cast(y, t.dtype))


def _running_logsumexp(x, axis, exclusive, reverse, branch=True):
    """TensorFlow's scan kernel with ``+inf`` and NaN entries overruled (see :func:`cumulative_logsumexp`).

    The overruling (a running count of ``+inf`` entries, NaN after a NaN)
    runs only when ``x`` holds a ``+inf`` or a NaN (``branch``; always
    without it). Under XLA the kernel is
    XLA's ``reduce-window``, which gets ``+inf`` right but drops a NaN as
    TensorFlow's kernel does (``[0, NaN, 1]`` gave ``[0, 0.69, 1.55]`` on
    this CPU too), so it is overruled there as well.
    """
    def kernel(v):
        return tf.math.cumulative_logsumexp(v, axis, exclusive=exclusive, reverse=reverse)

    # Not logical_not(x <= max): Grappler rewrites that as x > max, false at NaN.
    unusual = _dtypes.is_plus_inf(x) | tf.math.is_nan(x)

    def overruled():
        inf = tf.constant(np.inf, x.dtype)
        marks = tf.where(tf.math.is_nan(x), tf.constant(np.nan, x.dtype),
                         tf.cast(_dtypes.is_plus_inf(x), x.dtype))
        count = tf.math.cumsum(marks, axis, exclusive=exclusive, reverse=reverse)
        y = kernel(tf.where(unusual, tf.fill(tf.shape(x), -inf), x))
        return tf.where(count > 0.0, tf.fill(tf.shape(x), inf), y + 0.0 * count)  # count NaN: y NaN

    if not branch:
        return overruled()
    return tf.cond(tf.reduce_any(unusual), overruled, lambda: kernel(x))


# A slice whose finite entries reach further than this below its maximum
# takes the scan's gradient: e**-500 and the reciprocal of a sum above it
# (the linear gradient's 1 / S_j, times an upstream gradient) stay far
# inside float64's range.
_LINEAR_SPAN = 500.0


@_xla.per_axis(xla=False)
def _cumulative_logsumexp(axis, exclusive, reverse, dtype):
    """The float64 scan; gradient ``sum_j g_j exp(x_i - y_j)`` without the ``-inf`` outputs.

    The gradient in linear form where the slice allows (see
    :func:`cumulative_logsumexp`), else from the scan's outputs.
    """

    def forward(x):
        return _running_logsumexp(x, axis, exclusive, reverse)

    # The second-order pass recomputes the forward as this plain form
    # (safeops._gradient._plain) and differentiates it: XLA failed a shape
    # check on tf.cond's gradient with unknown dimensions
    # (dynamic_dimension_inference, TF 2.21), so the overruling is unconditional there.
    forward.python_function = lambda x: _running_logsumexp(x, axis, exclusive, reverse, branch=False)

    def backward(dy, y, x):
        if not isinstance(axis, int):  # an axis known only when the graph runs
            return scan_backward(dy, y, x)
        m = tf.reduce_max(x, axis, keepdims=True)
        wide = tf.math.is_finite(x) & (x < m - _LINEAR_SPAN)
        unusual = tf.reduce_any(_dtypes.is_plus_inf(x) | tf.math.is_nan(x) | wide, axis, keepdims=True)

        def by_slice():  # the scan's gradient in the unusual slices only (a -1e9 mask in one row)
            return (tf.where(unusual, scan_backward(dy, y, x)[0], linear_backward(dy, x, m)[0]),)

        if recording():
            # Built under a tape (a second derivative will be taken): no
            # tf.cond, whose branches a tape differentiates as they are
            # built; the scan's branch holds this op, without end.
            return by_slice()
        return tf.cond(tf.reduce_any(unusual), by_slice, lambda: linear_backward(dy, x, m))

    def linear_backward(dy, x, m):
        # exp(x_i - y_j) = w_i / S_j with w_i = exp(x_i - m) (m the slice
        # maximum, the shift exact as in softmax) and S_j the running sum of
        # the w: no y_j, so no rounding of |y_j| enters the exponent, and one
        # reverse running sum of g_j / S_j where the scan form takes two
        # scans, two logs and two exps. An output of no finite entry (S_j =
        # 0) is left out. Every finite w is at least e**-500 in the slices
        # this is kept for (elsewhere it is discarded, NaN or not).
        z, err = exact_shift(x, tf.stop_gradient(_finite_or_zero(m)))
        e = tf.exp(z)
        w = e + tf.math.multiply_no_nan(e, err)
        total = _running_sum(w, axis, exclusive, reverse, compensated=dtype == tf.float64)
        live = total > 0.0
        ratio = tf.where(live, dy / tf.where(live, total, tf.ones_like(total)), tf.zeros_like(dy))
        return (w * tf.math.cumsum(ratio, axis, exclusive=exclusive, reverse=not reverse),)

    def scan_backward(dy, y, x):
        opposite = _cumulative_logsumexp(axis, exclusive, not reverse, dtype)
        lowest = tf.constant(-_dtypes.max_value(y.dtype), y.dtype)
        # An output of -inf (only -inf entries, or none) is left out: its
        # log g - y would be +inf. Masked terms are the lowest finite number,
        # not -inf, so that no infinity is formed for finite inputs.
        dead = _dtypes.is_minus_inf(y)
        y_live = tf.where(dead, tf.zeros_like(y), y)
        ones = tf.ones_like(dy)

        def part(g, skip):
            # log g with g = 1 where skipped (the double where: no 1/0 at second order); NaN g stays NaN.
            log_g = tf.math.log(tf.where(skip, ones, g))
            terms = tf.where(skip | dead, tf.fill(tf.shape(y), lowest), log_g - y_live)
            return tf.exp(opposite(terms) + x)

        positive = part(dy, dy <= 0.0)
        negative = dy < 0.0
        # At a +inf entry the exponent is -inf + inf: there the gradient is
        # the sum of the g_j of the outputs it enters.
        at_inf = _dtypes.is_plus_inf(x)

        def with_negative_part():
            return positive - part(-dy, tf.logical_not(negative))

        def at_inf_entries(grad):
            return tf.where(at_inf, tf.math.cumsum(dy, axis, exclusive=exclusive, reverse=not reverse), grad)

        if recording():
            # This pass is being differentiated (a second derivative). A
            # tf.cond built under a tape differentiates its branches as it
            # is built, and the negative part's scan is this op, whose
            # backward would build another tf.cond, without end: every part
            # is computed.
            return (at_inf_entries(with_negative_part()),)
        # The negative part's scan only when some g < 0 (a loss that sums
        # the outputs has none), the +inf entries' sums only when x has one.
        grad = tf.cond(tf.reduce_any(negative), with_negative_part, lambda: positive)
        return (tf.cond(tf.reduce_any(at_inf), lambda: at_inf_entries(grad), lambda: grad),)

    # Differentiated, the backward is the scan form (no tf.cond).
    backward.python_function = scan_backward
    return custom_op(forward, backward, dtype)


def _positions(x, axis):
    """The index along ``axis`` of each entry, shaped to broadcast against ``x``."""
    rank = x.shape.rank
    return tf.reshape(tf.range(tf.shape(x)[axis]), [-1 if d == axis % rank else 1 for d in range(rank)])


def _running_sum(v, axis, exclusive, reverse, compensated):
    """``cumsum(v)`` along the scan; ``compensated``: with each addition's rounding error added back.

    The running sums ``s_j`` of TensorFlow's kernel are corrected by the
    running sum of ``d_j = (s_{j-1} + v_j) - s_j``, formed exactly: TwoSum
    (as in :func:`exact_shift`) gives ``s_{j-1} + v_j = t + e``, and
    ``t - s_j`` is exact where the two are within a factor 2 (Sterbenz).
    The ``d_j`` telescope, so ``s_j + sum_{i <= j} d_i`` is the exact
    running sum whatever order the kernel added in, up to the rounding of
    that (much smaller) correction: float64 sums as accurate as their
    terms, not ``n`` roundings off.
    """
    if not compensated:
        return tf.math.cumsum(v, axis, exclusive=exclusive, reverse=reverse)
    pos = _positions(v, axis)
    first = tf.equal(pos, tf.shape(v)[axis] - 1) if reverse else tf.equal(pos, 0)

    def shifted(t):  # each entry moved one step along the scan, 0 first
        return tf.where(first, tf.zeros_like(t), tf.roll(t, -1 if reverse else 1, axis))

    if exclusive:
        v = shifted(v)
    s = tf.math.cumsum(v, axis, reverse=reverse)
    before = shifted(s)
    t = before + v
    v_part = t - before
    e = (before - (t - v_part)) + (v - v_part)
    return s + tf.math.cumsum((t - s) + e, axis, reverse=reverse)


# ----------------------------------------------------------------------------
# Shared pieces.


def _broadcast_pair(op, x, w):
    """Broadcasts ``input_tensor`` and ``weights`` to one shape (gradients reduce back)."""
    _validate.broadcast_shape(op, "input_tensor", x, "weights", w)
    if x.shape.is_fully_defined() and w.shape.is_fully_defined() and x.shape == w.shape:
        return x, w
    shape = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(w))
    return tf.broadcast_to(x, shape), tf.broadcast_to(w, shape)


def _class_axis(op, logits, axis):
    x = _validate.float_tensor(logits, op, "logits")
    rank = x.shape.rank
    if rank == 0:
        raise _validate.ArgumentError(_validate.message(op, "logits", "a tensor of rank >= 1", "a scalar"))
    axis = _validate.static_axis(op, -1 if axis is None else axis, rank)
    return x, axis


def _drop_reduced(y, axis):
    """Removes the length-1 reduced axes of a ``keepdims=True`` result."""
    if axis is None:
        return tf.reshape(y, [])
    return tf.reduce_sum(y, axis=axis)


def _finite_or_zero(m):
    """The shift: the maximum where it is finite, else 0 (all ``-inf``, ``+inf``, NaN)."""
    return tf.where(tf.math.is_finite(m), m, tf.zeros_like(m))


def _log1p_or_minus_inf(t):
    """``log1p(t)`` with ``-inf`` and a zero (not NaN) gradient at ``t = -1``.

    ``t`` is negative for a weighted sum with negative weights: the
    logarithm goes around XLA's float64 ``log1p`` there
    (:func:`safeops.math._logarithms._log1p`; 50 to 109 ULP under
    ``jit_compile`` for weights ``[1, -0.4]``).
    """
    empty = tf.equal(t, -1.0)
    safe = tf.where(empty, tf.zeros_like(t), t)
    return _logarithms._log1p(safe) + _dtypes.minus_inf_or_zero(empty, t.dtype)


def exact_shift(x, m):
    """``(z, err)`` with ``z = fl(x - m)`` and ``z + err = x - m`` exactly (TwoSum).

    The shifted logits carry the one rounding of ``x - m``, an absolute error
    up to ``ulp(x - m) / 2``, and ``exp`` turns it into a relative error of
    the same size: at ``x - m = -87`` in float32 that is ``3.8e-6``, 64 ULP
    of the result (the error of TensorFlow's softmax kernels). Knuth's
    TwoSum (The Art of Computer Programming, vol. 2, sec. 4.2.2, Theorem B;
    also Ogita, Rump & Oishi 2005, "Accurate sum and dot product", SIAM J.
    Sci. Comput. 26(6), Algorithm 3.1) recovers that rounding error exactly
    in five more additions, without any assumption on the magnitudes, so
    ``exp(x - m) = exp(z) * (1 + err)`` to second order (``err**2 / 2 <
    1e-10`` relative: ``|err| <= ulp(z) / 2`` and ``|z| < 745``). The
    operations must not be reassociated: XLA and Grappler keep
    floating-point order (tested in every mode by ``tests/test_logsumexp.py``).
    Where the shift is not finite (a ``-inf`` entry, an overflowing
    ``x - m``) the error term is 0.
    """
    z = x - m
    m_part = z - x
    x_part = z - m_part
    err = (x - x_part) - (m + m_part)
    return z, tf.where(tf.math.is_finite(err), err, tf.zeros_like(err))


def _sum_minus_one(z, err, axis):
    """``sum(exp(z) * (1 + err)) - 1`` along ``axis`` for ``z + err = x - max``, without rounding 1 + tiny.

    The sum is split by the size of its terms: each term with ``z >= -0.69``
    (so ``e >= 0.5016``) contributes ``(e - 1) + e * err`` (``e - 1`` is
    exact, by Sterbenz's lemma, for ``e`` in ``[1/2, 2]``) and the count of
    such terms, minus one, is added back as an integer; smaller terms are
    summed as they are.
    The maximum's own term (``e = 1``, ``err = 0``) then contributes exactly
    0, so ``log1p`` of the result keeps every remainder down to the
    underflow threshold (``[0, -20]`` gives 2.06e-9, where
    ``log(1 + 2.06e-9)`` rounds to 0 in float32).

    No exact equality with the maximum is needed: under XLA the input can be
    recomputed inside a fusion and round differently from the copy the
    maximum was taken of, so the maximum's term can be ``1 - 1ulp``; it is
    still counted once. An all ``-inf`` slice gives ``0 - 1 = -1``.

    The terms and the count are summed in one pass by
    :func:`safeops._xla.last_axis_sums` (a dot with a ones vector on a CPU,
    where XLA's own row sums of an expression are scalar loops: 1.1-1.4x
    ``tf.reduce_logsumexp``'s forward at 1e6 to 1e7 elements with a complex
    sum, 0.6-0.9x with the dot, in A/B runs), in float64
    (:func:`safeops._dtypes.sum_dtype`) and rounded once: a confident row's
    remainder summed in float32 was 23 ULP off in ``log_softmax`` of ``[0,
    -15.3 x 3999]``. The count is exact.
    """
    e = tf.exp(z)
    # e >= exp(-0.69) > 1/2 (the threshold is on z, not on e: a count that
    # needs no exp is not recomputed with it in the fused dot's loop).
    big = z >= _BIG_SHIFT
    # err is 0 wherever e is not finite (a +inf entry): no inf * 0 = NaN.
    terms = tf.where(big, e - 1.0, e) + tf.math.multiply_no_nan(e, err)
    rest, count = _xla.last_axis_sums([terms, tf.cast(big, e.dtype)], axis, _dtypes.sum_dtype(e.dtype))
    return tf.cast(rest + (count - 1.0), e.dtype)


@_xla.per_axis
def _unweighted_logsumexp(axis, dtype, xla):
    """``lse(x)`` with ``keepdims=True``; gradient ``exp(x - lse)``, 0 in an all ``-inf`` slice."""

    def forward(x):
        x = _xla.exact_input(x)  # x - m exact (see safeops._xla.exact_input), as in the backward
        m = tf.stop_gradient(_finite_or_zero(tf.reduce_max(x, axis, keepdims=True)))
        t = _sum_minus_one(*exact_shift(x, m), axis)
        return m + _log1p_or_minus_inf(t), (m, t)

    def backward(dy, y, residuals, x):
        # exp(x - m) / sum from the saved shift and sum, not exp(x - y) from
        # the rounded y: at x = [1e4, 1e4] (float32) that is 0.49989, not 0.5.
        m, t = residuals
        x = _xla.exact_input(x)
        size = 1.0 + t
        size = tf.where(tf.equal(size, 0.0), tf.ones_like(size), size)  # all -inf: 0 / 1
        z, err = exact_shift(x, m)
        e = tf.exp(z)
        p = (e + e * err) / size
        # A +inf slice (y = +inf): 1 at its +inf entries, 0 elsewhere.
        at_inf = _dtypes.is_plus_inf(x) & _dtypes.is_plus_inf(y)
        p = tf.where(at_inf, tf.ones_like(p), p)
        return (dy * p,)

    # The backward recomputes x - m (args dy, y, residuals, x): x as the forward read it.
    return custom_op_with_residuals(_xla.compiled(forward, xla, exact=(0,)),
                                    _xla.compiled(backward, xla, exact=(3,)), dtype)


def _softmax_weights(x, y, cap):
    """``exp(min(x - y, cap))`` with 0 where ``y = -inf`` and 1 at ``+inf`` entries of a ``+inf`` slice."""
    # y = -inf only for an all -inf slice: shift by +inf so every weight is 0.
    empty = _dtypes.is_minus_inf(y)
    shift = tf.where(empty, -_dtypes.minus_inf_or_zero(empty, y.dtype), y)
    gap = x - shift
    gap = tf.where(tf.equal(x, shift), tf.zeros_like(gap), gap)  # +inf - (+inf) -> 0
    return tf.exp(tf.minimum(gap, cap))


@_xla.per_axis(xla=False)
def _weighted_logsumexp(axis, dtype, return_sign):
    """``log|sum w exp x|`` (and, packed on a new leading axis, its sign) with ``keepdims=True``.

    The weights are folded into the exponent: the shift is the entry of
    largest ``x + log|w|``, kept as the pair ``(x_k, log|w_k|)`` so that
    ``z = (x - x_k) + (log|w| - log|w_k|)`` is 0 exactly at that entry and a
    tiny weight at the maximum (``[0]`` with weight ``1e-30``) does not turn
    ``w_k - 1`` into ``-1``. The exponent carries the rounding errors of
    its three additions and of the two logarithms, each up to half an ulp
    of the number rounded: ``3.5e-15`` for ``log(2.2e-16) = -36.04`` in
    float64, 16 ULP of a result made of that term alone. They are added
    back (:func:`_weighted_exponent`), to the terms and to the shift. Terms
    ``|e| >= 1/2`` contribute ``e - 1`` (exact, Sterbenz) and their signed
    count is added back as an integer, so ``|sum| - 1`` keeps its remainder
    for either sign of the sum.

    An entry of weight 0 is read as ``x = 0``, ``log|w| =`` the lowest
    finite value (not ``-inf``: no infinity is made for finite inputs, which
    ``tf.debugging.enable_check_numerics`` would stop at): its score is
    at most every live entry's but ``-inf`` (equal where a live score
    rounds to the lowest value), it is never the top, and its term
    ``exp(lowest - ...)`` is 0. A slice without a live entry of finite
    score has no top (the shift is then 0, as for an all ``-inf`` slice).
    """

    def forward(x, w):
        x, w = _xla.exact_input(x), _xla.exact_input(w)  # exact shifts (see safeops._xla.exact_input)
        live = tf.not_equal(w, 0.0) | tf.math.is_nan(x)
        lowest = tf.fill(tf.shape(x), tf.constant(-_dtypes.max_value(x.dtype), x.dtype))
        x = tf.where(live, x, tf.zeros_like(x))
        log_w, err_w = _log_abs(w, live)
        score = tf.stop_gradient(x + log_w)
        # Only a live entry is the top: a live score rounds to the lowest value too (x = -max, w =
        # 0.5), and a tie with a dead entry made the slice read as dead (-inf, gradients 0).
        top = tf.equal(score, tf.reduce_max(score, axis, keepdims=True)) & live
        mx = tf.reduce_max(tf.where(top, tf.stop_gradient(x), lowest), axis, keepdims=True)
        top = top & tf.equal(tf.stop_gradient(x), mx)
        mw = tf.reduce_max(tf.where(top, tf.stop_gradient(log_w), lowest), axis, keepdims=True)
        valid = tf.math.is_finite(mx) & tf.math.is_finite(mw) & (mw > -_dtypes.max_value(x.dtype))
        mx = tf.where(valid, mx, tf.zeros_like(mx))
        mw = tf.where(valid, mw, tf.zeros_like(mw))
        # The log's rounding error at the maximum (ties in x and log|w| share it to first order).
        top = top & tf.equal(tf.stop_gradient(log_w), mw)
        ek = tf.reduce_max(tf.where(top, tf.stop_gradient(err_w), lowest), axis, keepdims=True)
        ek = tf.where(valid, ek, tf.zeros_like(ek))
        e = _weighted_exponent(x, log_w, err_w, mx, mw, ek)
        sg = tf.sign(w)
        big = e >= 0.5
        pos, neg = big & (sg > 0.0), big & (sg < 0.0)
        terms = tf.where(pos, e - 1.0, tf.where(neg, 1.0 - e, sg * e))
        # The rest in float64 for float32 inputs (safeops._dtypes.sum_dtype),
        # rounded once: in float32 it was 23 ULP off for [0, -15.3 x 3999]
        # with weights 1, and 530 ULP over 1e5 entries under jit_compile.
        wide = _dtypes.sum_dtype(e.dtype)
        rest = tf.reduce_sum(tf.cast(terms, wide), axis, keepdims=True)
        count = tf.reduce_sum(tf.cast(pos, e.dtype) - tf.cast(neg, e.dtype), axis, keepdims=True)
        count = tf.cast(count, wide)  # exact: an integer below 2**24
        t = tf.cast(rest + (count - 1.0), e.dtype)  # sum - 1, with the integer part exact
        # x_k + log|w_k|: the log's error added back, so a cancelling pair
        # (x_k = -30, w_k = 3.3e14: 3.44) keeps the accuracy of log(w_k e^x_k).
        shift = (mx + mw) + ek
        if not return_sign:
            return shift + _log1p_or_minus_inf(t), (mx, mw, ek, t)
        total = rest + count
        sign = tf.cast(tf.sign(total), e.dtype)
        # |sum| - 1: t for a positive sum, -sum - 1 for a negative one.
        magnitude = tf.where(total < 0.0, tf.cast(-rest + (-count - 1.0), e.dtype), t)
        y = tf.stack([shift + _log1p_or_minus_inf(magnitude), tf.stop_gradient(sign)])
        return y, (mx, mw, ek, magnitude)

    def backward(dy, y, residuals, x, w):
        mx, mw, ek, magnitude = residuals
        x, w = _xla.exact_input(x), _xla.exact_input(w)
        if return_sign:
            dy, y = dy[0] * y[1], y[0]  # d log|s| / dx = sign(s) * w * exp(x - log|s|)
        live = tf.not_equal(w, 0.0) | tf.math.is_nan(x)
        # exp(x - y) = exp(x - shift) / S with S = |sum| / exp(shift): no
        # rounding of y enters (exp(1e4 - y) from a rounded y is 1e-3 off).
        size = 1.0 + magnitude
        size = tf.where(tf.equal(size, 0.0), tf.ones_like(size), size)
        zero = tf.zeros_like(x)
        # exp(x - y) itself overflows for a zero weight's entry far above the
        # top (x = [-1000, -2], w = [1, 0]; a normal weight there would make
        # it the top): its exponent is capped and the overflow kept aside
        # (over), so that no op makes an infinity from finite inputs
        # (enable_check_numerics stops there) and w * p makes no 0 * inf.
        cap = _dtypes.log_max(x.dtype) - 2.0 ** -8
        e, exponent = _weighted_exponent(x, zero, zero, mx, mw, ek, cap=cap)
        over = exponent > cap
        p = e / size
        # w * exp(x - y): the product where both factors are normal (it keeps
        # w = tiny at exp(x - y) = 1, whose folded exponent log(tiny) can
        # round below the range), else with the weight inside the exponent:
        # exp(x - y) alone can underflow where the product is normal (w = 1e4).
        log_w, err_w = _log_abs(w, live)
        folded = tf.sign(w) * _weighted_exponent(x, log_w, err_w, mx, mw, ek) / size
        tiny = _dtypes.tiny(x.dtype)
        wp = w * p
        huge = _dtypes.max_value(x.dtype)
        normal = (p >= tiny) & ~over & (tf.abs(wp) >= tiny) & (tf.abs(wp) <= huge)
        wp = tf.where(normal, wp, folded)
        finite = tf.math.is_finite(y)
        fallback = _softmax_weights(x, y, cap)
        p = tf.where(finite, p, fallback)
        wp = tf.where(finite, wp, w * fallback)
        dx = tf.where(live, dy * wp, tf.zeros_like(p))
        # A zero weight's own gradient dy exp(x - y) is exact but may exceed
        # the dtype ([0, 100] with weights [1, 0]): saturated (contract C1).
        # Where exp(x - y) or the product would overflow, its magnitude is
        # exp(exponent - log S + log|dy|), clipped at the largest finite
        # number: no infinity on the way, and 0 for dy = 0 (0 * inf was NaN).
        ady = tf.abs(dy)
        risky = finite & (over | (p > huge / tf.maximum(ady, 1.0)))
        log_dw = exponent - tf.math.log(size) + tf.math.log(tf.maximum(ady, tiny))
        clipped = tf.where(log_dw > cap, tf.fill(tf.shape(log_dw), tf.constant(huge, x.dtype)),
                           tf.exp(tf.minimum(log_dw, cap)))
        dw = tf.where(risky, tf.sign(dy) * clipped, dy * tf.where(risky, tf.zeros_like(p), p))
        return dx, _dtypes.saturate(dw, dtype)

    return custom_op_with_residuals(forward, backward, dtype)


def _log_abs(w, live):
    """``(L, err)``: ``L = log|w|`` as rounded (the lowest finite value off ``live``), ``err ~ log|w| - L``.

    ``|w| exp(-L) = exp(err) = 1 + err + ...``, and ``exp(-L)`` is within an
    ulp or two of ``1/|w|``, so ``|w| exp(-L) - 1`` is ``err`` with an
    absolute error of a few ulps of 1, where ``err`` itself reaches half an
    ulp of ``L`` (``3.8e-6`` at ``L = -87`` in float32). Where ``exp(-L)``
    leaves the range (``|w|`` near the largest finite number, whose
    reciprocal is subnormal and flushed), ``err`` is taken as 0.
    """
    lowest = tf.fill(tf.shape(w), tf.constant(-_dtypes.max_value(w.dtype), w.dtype))
    a = tf.abs(w)
    log_a = tf.where(live, tf.math.log(a + tf.cast(~live, a.dtype)), lowest)  # log(1) off live
    r = a * tf.exp(-tf.where(live, log_a, tf.zeros_like(a))) - 1.0
    err = tf.where(live & (tf.abs(r) < 2.0 ** -10), r, tf.zeros_like(r))
    return log_a, tf.stop_gradient(err)


def _weighted_exponent(x, log_w, err_w, mx, mw, ek, cap=None):
    """``|w / w_k| exp(x - x_k)`` as ``exp(z) (1 + c)``, ``z + c`` the exact exponent to first order.

    ``z = (x - x_k) + (log|w| - log|w_k|)`` rounds three times; TwoSum
    (:func:`exact_shift`) recovers each rounding error exactly, and the
    logs' own errors (:func:`_log_abs`) are added to them: ``c`` is below
    a few ulps of ``z`` and ``exp(z) c`` its first-order effect (``c**2 / 2``
    is below ``1e-10`` relative). Non-finite parts give ``c = 0``, and an
    overflowed ``exp(z)`` is kept as ``inf``; with ``cap``, ``exp(z)`` is
    taken at ``min(z, cap)`` and ``(value, z)`` returned.
    """
    a, ea = exact_shift(x, mx)
    b, eb = exact_shift(log_w, mw)
    z, ez = exact_shift(a, -b)
    c = (ea + eb) + (ez + (err_w - ek))
    e = tf.exp(z if cap is None else tf.minimum(z, cap))
    # No correction where e overflowed (inf * -c + inf = NaN) or c is not finite.
    value = e + tf.where(tf.math.is_finite(e) & tf.math.is_finite(c), e * c, tf.zeros_like(e))
    return value if cap is None else (value, z)


def _sign_of_sum(y):
    """Sign of ``sum(exp(x))`` from its log: 0 at ``-inf``, NaN at NaN, else 1."""
    one = tf.ones_like(y)
    return tf.where(_dtypes.is_minus_inf(y), tf.zeros_like(y), tf.where(tf.math.is_nan(y), y, one))


# ----------------------------------------------------------------------------
# softmax and log_softmax.


@_xla.per_axis
def _masked_softmax(axis, dtype, xla):
    """``exp(z) (1 + err) / sum`` with the exact shift ``z + err = x - max``; gradient from the output."""

    def forward(x):
        x = _xla.exact_input(x)  # x - m exact (see safeops._xla.exact_input)
        m = tf.stop_gradient(tf.reduce_max(x, axis, keepdims=True))
        # A fully masked row (max -inf) is shifted by 0, so every term is
        # exp(-inf) = 0 and the row sum 0 (divided by 1 below). A +inf or NaN
        # maximum is kept: x - m is then NaN or -inf everywhere in the row
        # and the row sum NaN, so the whole row is NaN.
        m = tf.where(_dtypes.is_minus_inf(m), tf.zeros_like(m), m)
        z, err = exact_shift(x, m)
        e = tf.exp(z)
        if x.dtype == tf.float32:
            # float32 (and the half dtypes): the numerators c = e (1 + err)
            # summed in float64, and each divided by the sum S as c r + c r',
            # r + r' = 1 / S to float64's precision (r the float32 rounding
            # of 1 / S, r' the rest), so the quotient is rounded about once.
            # A float32 sum's rounding grows with the row's length (softmax
            # was 5.1 ULP off over rows of 1000 standard normal entries, 9.6
            # over [0, log 0.1 x 3999]); here the result carries exp's error
            # (XLA's: 1.01 ULP), the rounding of c and that of the product
            # (2.5 ULP at most in sweeps of such rows). float64's digits also
            # keep the terms below half a float32 ULP of the maximum's 1, for
            # which the float64 form below splits its sum as 1 + (sum - 1).
            # Per entry it is float32 arithmetic on c, which XLA writes once
            # and reads in the sum and the quotient: faster than the split
            # sum and its quotient (A/B here: 0.93 against 1.03 times
            # TensorFlow's forward+backward at 100x1000, 0.83 against 0.89
            # under an outer jit_compile at 10000x1000).
            c = e + e * err
            total, = _xla.last_axis_sums([c], axis, _dtypes.sum_dtype(x.dtype))
            total = tf.where(tf.equal(total, 0.0), tf.ones_like(total), total)  # all -inf: 0 / 1
            inv = 1.0 / total
            r = tf.cast(inv, x.dtype)
            r_rest = tf.cast(inv - tf.cast(r, inv.dtype), x.dtype)
            return c * r + c * r_rest
        # The row sum as 1 + (sum - 1): summed with the maximum's 1 in the
        # accumulator, terms below half an ULP of 1 were rounded away one by
        # one ([0, -17 x 255] in float32: 23 ULP at the maximum, 15 elsewhere).
        total = 1.0 + _sum_minus_one(z, err, axis)
        total = tf.where(tf.equal(total, 0.0), tf.ones_like(total), total)
        return (e + e * err) / total

    def backward(dy, y, x):
        # y * (dy - sum(dy * y)) loses the gradient's small entry where one
        # y_m is near 1: dy_m - sum(dy y) is dy_m (1 - y_m) - ..., and 1 - y_m
        # rounds to 0 ([20, 0] in float32: the exact [2.1e-9, -2.1e-9] came
        # out [0, -2.1e-9], no longer summing to 0). With c = dy_m for the
        # entry above 1/2 (at most one; c = 0 if none) and the sums A, B of
        # y dy and y over the other entries, sum(dy y) = c (1 - B) + A, so
        # dy_j - sum(dy y) = (dy_j - c) - (A - c B): at j = m the first term
        # is exactly 0 and the second is formed from the small entries only.
        # Where no entry exceeds 1/2 this is the plain formula.
        big = y > 0.5
        zeros = tf.zeros_like(y)
        small = tf.where(big, zeros, y)
        a, b, c = _xla.last_axis_sums([small * dy, small, tf.where(big, dy, zeros)], axis)
        return (y * ((dy - c) - (a - c * b)),)

    return custom_op(_xla.compiled(forward, xla, exact=(0,)), _xla.compiled(backward, xla), dtype)


@_xla.per_axis
def _masked_log_softmax(axis, dtype, xla):
    """``(x - m) - log1p(sum - 1)``; gradient ``dy - exp(y) sum(dy)`` with ``-inf`` outputs frozen."""

    def forward(x):
        return log_softmax_forward(x, axis)

    def backward(dy, y, x):
        # Frozen where the *input* is -inf (a mask), not where y is: y is also
        # -inf when x - max overflows ([-max, max]), and there the gradient is 1.
        # NaN rows stay NaN via exp(y).
        dy = tf.where(_dtypes.is_minus_inf(x), tf.zeros_like(dy), dy)
        total, = _xla.last_axis_sums([dy], axis)
        # dy - exp(y) sum(dy) at an entry whose probability is near 1 is
        # dy - sum(dy) + sum(dy) (1 - p), and 1 - p = -expm1(y) is kept
        # exactly there rather than rounded away (row [20, 0] in float32:
        # the top entry's gradient of its own log-probability is 2.1e-9,
        # not 0). Only the row's largest y can exceed log(1/2), so expm1 is
        # taken of the row maximum, once per row.
        top = tf.reduce_max(y, axis, keepdims=True)
        near_one = y > -_LOG_2
        return (tf.where(near_one, (dy - total) - total * tf.math.expm1(top), dy - tf.exp(y) * total),)

    return custom_op(_xla.compiled(forward, xla, exact=(0,)), _xla.compiled(backward, xla), dtype)


def log_softmax_forward(x, axis):
    """The value of :func:`log_softmax` in plain TensorFlow ops, for ops that fuse it into their own forward pass."""
    x = _xla.exact_input(x)  # x - m exact (see safeops._xla.exact_input)
    m = tf.stop_gradient(_finite_or_zero(tf.reduce_max(x, axis, keepdims=True)))
    z, err = exact_shift(x, m)
    # (z - L) + err: z <= 0 and L >= 0, so the subtraction does not cancel
    # and the shift's rounding error is added back last.
    return (z - _log_sum_or_zero(_sum_minus_one(z, err, axis))) + err


def _log_sum_or_zero(t):
    """``log1p(t)``, or 0 for an all ``-inf`` row (``t = -1``) so ``-inf - 0`` stays ``-inf``."""
    empty = tf.equal(t, -1.0)
    return tf.where(empty, tf.zeros_like(t), tf.math.log1p(tf.where(empty, tf.zeros_like(t), t)))


def softmax_parts(x, axis):
    """``(log_softmax(x), softmax(x), complement, mass)`` from one exact shift, for ops that fuse them.

    The values of :func:`log_softmax` and :func:`softmax` (the shift by the
    row maximum with its rounding kept, the row sum as ``1 + (sum - 1)``),
    and two per-row values (``keepdims``): ``mass``, the softmax's sum (1,
    or 0 for an all ``-inf`` row), and ``complement``, ``1 - p`` at the
    row's maximum without rounding where ``p`` is near 1. The row sum minus
    1 is held as ``rest``, to which the maximum's own term adds exactly 0,
    so ``1 - p_max = rest / (1 + rest)`` (``[20, 0]`` in float32:
    ``2.06e-9``, where ``1 - p`` is 0). Only the maximum can have ``p >
    1/2``; elsewhere ``1 - p`` is accurate as it is. The maximum and the
    shifts read one ``x`` (:func:`safeops._xla.exact_input`), so the
    maximum's own term is exactly 1 under an outer ``jit_compile`` too. An
    all ``-inf`` row gives ``-inf``, 0, ``complement`` -1 and ``mass`` 0; a
    NaN row NaN.
    """
    x = _xla.exact_input(x)
    m = _finite_or_zero(tf.reduce_max(x, axis, keepdims=True))
    z, err = exact_shift(x, m)
    rest = _sum_minus_one(z, err, axis)
    log_p = (z - _log_sum_or_zero(rest)) + err
    e = tf.exp(z)
    total = 1.0 + rest
    guarded = tf.where(tf.equal(total, 0.0), tf.ones_like(total), total)
    return log_p, (e + tf.math.multiply_no_nan(e, err)) / guarded, rest / guarded, total / guarded

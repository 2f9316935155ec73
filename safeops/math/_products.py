r"""Running products: ``cumprod``, with the gradient at zero factors that TensorFlow's loses.

Running products of factors in ``[0, 1]`` are how models turn per-step
probabilities into the probability of getting that far:

* the transmittance of volume rendering (NeRF; Mildenhall et al., ECCV
  2020): ``T_i = prod_{k < i} (1 - alpha_k)``, ``cumprod(1 - alpha,
  exclusive=True)``, where an opaque sample has ``alpha = 1 - exp(-sigma
  delta)`` exactly 1 in float32 from ``sigma delta = 17.33`` on;
* stick-breaking weights (``w_i = v_i prod_{k < i} (1 - v_k)``) of
  Dirichlet-process and mixture models, with ``v = sigmoid(z)`` exactly 1
  in float32 from ``z = 17.33`` on;
* survival curves of discrete-time hazard models (``S_t = prod_{k <= t}
  (1 - h_k)``).

TensorFlow's gradient of ``tf.math.cumprod`` (TF 2.21,
``tensorflow/python/ops/math_grad.py``, ``_CumprodGrad``) is
``div_no_nan(cumsum(g * y, reverse), x)``, the derivative of
:math:`y_j = \prod_{k \le j} x_k` written as :math:`y_j / x_i`. At a
factor :math:`x_z = 0` that is ``0/0``, which ``div_no_nan`` makes 0: the
gradient with respect to the factor that zeroed the product, which is
:math:`\sum_{j \ge z} g_j \prod_{k \le j, k \ne z} x_k` and nonzero, is
silently 0, and an opaque sample, a broken stick or a certain event can
never learn to be less so (contract C4). The usual guard, ``cumprod(1 -
alpha + 1e-10)``, moves every value and leaves the gradient at the zero
tiny. And in float32 the quotient loses every product that underflowed:
``x = [1e-30, 1e-30, 1]`` has ``y_1 = 0``, so the gradient with respect
to ``x_1`` (exactly ``x_0 (g_1 + g_2)``, a normal number) came out 0.

safeops forms the products in float64 (for float32 and narrower inputs:
no product of normal float32 factors under- or overflows float64 before it
is far outside float32's range) and takes the factor that zeroed a
product out of it explicitly (below), so that every gradient is the exact
one to a few float64 roundings.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _ragged, _validate, _xla
from safeops._gradient import custom_op, recording


def cumprod(x, axis=0, exclusive=False, reverse=False, name=None):
    r"""Running product along ``axis``, with the exact gradient at zero factors.

    Formula: :math:`y_j = \prod_{k \le j} x_k` (``exclusive``: :math:`k <
    j`; ``reverse``: from the end of the axis); gradient
    :math:`\partial L / \partial x_i = \sum_{j \ge i} g_j \prod_{k \le j,
    k \ne i} x_k`.

    Stable rewrite: the value is TensorFlow's scan kernel run in float64
    for every input dtype and rounded once (within 1 ULP in float32; the
    float32 kernel rounds at every step, beyond 4 ULP over long axes).
    The gradient, in float64: before the first zero factor of a slice
    (along the scan), :math:`\sum_{j \ge i} g_j y_j / x_i` (one reverse
    running sum and a division: exact there, :math:`x_i \ne 0`, and no
    float64 product of float32 factors underflows while it matters); at
    the first zero factor :math:`z`, :math:`\sum_{j \ge z} g_j y'_j` with
    :math:`y'` the running product of the slice with :math:`x_z` replaced
    by 1 (no division: the product of the other factors, of which the
    later zeros are part); after it, 0 (every product holds :math:`x_z`).
    Where a slice holds a zero, or a product :math:`g_j y_j` beyond
    :math:`2^{1000}` or below :math:`2^{-960}` (float64 inputs near their
    limits), the products are scaled by a power of two per slice before
    their running sum and the quotient is formed from the exponents (no
    intermediate over- or underflow); a ``tf.cond`` keeps the plain quotient
    for the other calls. TensorFlow's gradient, ``div_no_nan(cumsum(g * y,
    reverse), x)``, is 0 at the first zero (``0/0`` made 0; see the module
    docstring), where the exact gradient is not, and 0 where a float32
    product underflowed. Second derivatives differentiate the general form
    (finite; its quotient cancels, so they are not accurate to C3).

    Edges:
      * A zero factor: value 0 from it on; the gradient with respect to it
        sums, over the outputs it enters, the products of the other
        factors, and is 0 with respect to the factors after it: ``[1, 2,
        0]`` for the sum of ``cumprod([0.5, 0, 3])``, where TensorFlow's is
        ``[1, 0, 0]``.
      * A running product beyond float64's range (above ``1.8e308``, below
        ``2.2e-308``; float64 inputs, or eight float32 factors near their
        largest or smallest) stays ``inf`` or 0 from there on, even where
        later factors would bring it back, as in TensorFlow's kernel; an
        ``inf`` times a later zero factor is 0, not NaN; that slice's
        gradients lose accuracy but stay finite.
      * Gradients beyond the dtype's range saturate at its largest number.
      * ``NaN``: NaN from its entry on; the gradient is NaN at its entry
        and at the entries before it up to the first zero factor. An
        ``inf`` factor: IEEE products (``inf * 0`` is NaN).

    Args:
      x: A float tensor (float16, bfloat16, float32 or float64) of rank at
        least 1, or a ``tf.RaggedTensor`` taken along a uniform axis or a
        ragged one with no ragged axis inside it.
      axis: The int axis of the scan (default 0, as TensorFlow's), or a
        scalar integer tensor.
      exclusive: If true, each output leaves out its own factor.
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
    >>> x = tf.constant([0.5, 0.0, 3.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = tfm.cumprod(x)
    >>> y.numpy()
    array([0.5, 0. , 0. ], dtype=float32)
    >>> tape.gradient(y, x).numpy()
    array([1., 2., 0.], dtype=float32)
    """
    op = "safeops.math.cumprod"
    exclusive, reverse = _validate.scan_flags(op, exclusive, reverse)
    if _ragged.any_ragged(x):
        return _ragged.along_axis(cumprod, op, "x", x, axis, padding=1.0, exclusive=exclusive,
                                  reverse=reverse, name=name)
    with _validate.op_scope(op, name) as scope:
        t, axis = _validate.scan_input(op, x, axis)
        wide = tf.cast(t, _dtypes.sum_dtype(t.dtype))
        y = _cumprod(axis, exclusive, reverse, t.dtype)(wide)
        return scope.output(tf.cast(y, t.dtype))


#: A product ``g_j y_j`` above this magnitude (or an infinite one) sends the gradient to its
#: scaled form, whose running sums cannot overflow (a sum of up to 2**23 of them stays finite).
_SCALE_EXPONENT = 1000
_TERM_BOUND = 2.0 ** _SCALE_EXPONENT
#: A product ``g_j y_j`` below this magnitude sends it there too: near float64's smallest normal
#: number (2**-1022) the product would lose digits, or be flushed to 0.
_TINY_TERM = 2.0 ** -960


#: Running sums along an axis at least this long (static) are taken in blocks by matrix products.
_BLOCKED_FROM = 64


def _blocked_running_sum(t, axis, exclusive, reverse):
    """``tf.math.cumsum(t, axis, exclusive, reverse)`` of finite float64 ``t``, by matrix products.

    The axis, of length ``n``, is cut into blocks of ``b`` about ``sqrt(n)``
    (zero padded): the running sums inside each block are one product with a
    ``b x b`` triangular matrix of ones, the sums of the blocks before (or
    after) each block one product of the block totals with a triangular
    matrix over blocks. On a 2-core AMD EPYC that took 0.3 ms where
    TensorFlow's scan kernel took 0.8 (float64, ``[100, 1000]`` along the
    last axis, hand-measured, interleaved; on a 2-core Intel Xeon the scan
    kernel was the faster there, 0.67 ms against 0.94, and they were even
    at ``[1000, 1000]``); each output is a sum of at most ``b + n/b``
    rounded terms, not ``n``. A NaN or ``inf`` reaches every output of
    its row through the products' zero coefficients: the sums of such terms
    are not used. Short or unknown axes take the kernel.
    """
    n = t.shape[axis] if isinstance(axis, int) else None
    if n is None or n < _BLOCKED_FROM:
        return tf.math.cumsum(t, axis, exclusive=exclusive, reverse=reverse)
    rank = t.shape.rank
    axis %= rank
    perm = [d for d in range(rank) if d != axis] + [axis]
    moved = t if axis == rank - 1 else tf.transpose(t, perm)
    b = max(8, int(round(math.sqrt(n))))
    blocks_n = -(-n // b)
    flat = tf.reshape(moved, [-1, n])
    if blocks_n * b != n:
        flat = tf.pad(flat, [[0, 0], [0, blocks_n * b - n]])
    blocks = tf.reshape(flat, [-1, blocks_n, b])
    # within[k, i] = 1 where entry k enters output i: k <= i (k < i exclusive), reversed k >= i.
    def triangle(size, strict):
        ones = np.ones((size, size))
        m = np.triu(ones, 1 if strict else 0) if not reverse else np.tril(ones, -1 if strict else 0)
        return tf.constant(m, t.dtype)
    within = tf.einsum("mjk,ki->mji", blocks, triangle(b, exclusive))
    offsets = tf.matmul(tf.reduce_sum(blocks, -1), triangle(blocks_n, True))
    sums = tf.reshape(within + offsets[:, :, None], [-1, blocks_n * b])[:, :n]
    sums = tf.reshape(sums, tf.shape(moved))
    return sums if axis == rank - 1 else tf.transpose(sums, np.argsort(perm))


def _last(y, axis, reverse):
    """The outputs at the end of the scan along ``axis`` (none if the axis is empty)."""
    n = y.shape[axis] if isinstance(axis, int) else None
    if n is not None:
        # An empty list of indices would convert to float32: the index dtype is given.
        return tf.gather(y, tf.constant([0 if reverse else n - 1] if n else [], tf.int32), axis=axis)
    n = tf.shape(y)[axis]
    ends = tf.range(0, tf.minimum(n, 1)) if reverse else tf.range(tf.maximum(n - 1, 0), n)
    return tf.gather(y, ends, axis=axis)


def _log_of_largest(v, axis):
    """``log max |v|`` per slice; ``log(tiny)`` for an all-zero slice (no ``-inf`` for check_numerics)."""
    return tf.math.log(tf.maximum(tf.reduce_max(tf.abs(v), axis, keepdims=True), _dtypes.tiny(tf.float64)))


def _power_of_two(k):
    """``2**k`` for integer-valued float64 ``k`` in ``[-1022, 1023]``, exact (from its bits)."""
    bits = tf.bitwise.left_shift(tf.cast(k, tf.int64) + 1023, tf.constant(52, tf.int64))
    return tf.bitcast(bits, tf.float64)


def _times_power_of_two(v, k):
    """``v * 2**k`` for integer-valued float64 ``k`` in ``[-2044, 2046]``: two exact scalings, one rounding.

    (The first keeps ``v`` normal or overflows, as the exact result then
    does; only the second can round, into the subnormal range.)
    """
    first = tf.clip_by_value(k, -1022.0, 1023.0)
    return v * _power_of_two(first) * _power_of_two(tf.clip_by_value(k - first, -1022.0, 1023.0))


def _quotient_times_power_of_two(s, x, k):
    """``s * 2**k / x`` (float64) with no intermediate overflow or underflow.

    ``x = m 2**e`` with ``|m|`` in ``[1, 2)`` (``e`` from its bits; a
    subnormal ``x`` has ``e = -1023``), so ``s / m`` is within a factor 2 of
    ``s`` and the power of two is applied last.
    """
    bits = tf.bitwise.right_shift(tf.bitcast(x, tf.int64), tf.constant(52, tf.int64))
    biased = tf.bitwise.bitwise_and(bits, tf.constant(0x7FF, tf.int64))
    e = tf.cast(biased, tf.float64) - 1023.0
    return _times_power_of_two(s / _times_power_of_two(x, -e), k - e)


@_xla.per_axis
def _cumprod(axis, exclusive, reverse, dtype, xla):
    """The float64 scan; gradient exact at zero factors (see :func:`cumprod`).

    With ``xla``, the usual gradient (no zero factor, no extreme product) is
    one inner XLA function with its range checks (as TensorFlow kernels the
    checks alone were ten passes over the float64 products); its running
    sum is :func:`_blocked_running_sum` (blocked matrix products over long
    axes).
    """

    def kernel(v):
        return tf.math.cumprod(v, axis, exclusive=exclusive, reverse=reverse)

    def overruled(x, y):
        # NaN from finite factors is inf * 0: a product that overflowed
        # float64, then a zero factor. The exact product is 0 there.
        infinite = tf.math.cumsum(tf.cast(tf.logical_not(tf.math.is_finite(x)), x.dtype), axis,
                                  exclusive=exclusive, reverse=reverse)
        return tf.where(tf.math.is_nan(y) & tf.equal(infinite, 0.0), tf.zeros_like(y), y)

    def forward(x):
        y = kernel(x)
        # A NaN output stays NaN to the end of the scan: in a graph the last
        # outputs tell (an eager gather costs more than the whole check).
        nan = tf.reduce_any(tf.math.is_nan(y if tf.executing_eagerly() else _last(y, axis, reverse)))
        return tf.cond(nan, lambda: overruled(x, y), lambda: y)

    # Recomputed for a second derivative without tf.cond (XLA failed a shape
    # check on its gradient with unknown dimensions, as cumulative_logsumexp's).
    forward.python_function = lambda x: overruled(x, kernel(x))

    def over_outputs(dy, y):
        # (S, k): S_i 2**k = sum_j g_j y_j over the outputs each entry enters,
        # each product scaled by a power of two 2**-k first (exact) that brings
        # the slice's largest to about 2**1000: the running sums cannot
        # overflow, and products far below the largest keep their digits (a
        # product below 2**-1022, flushed to 0 on this CPU, is not lost). A
        # product that overflowed float64 is taken as the largest float64
        # (never inf - inf); 0 where g_j = 0.
        y = _dtypes.saturate(y, y.dtype)
        log2_top = (_log_of_largest(y, axis) + _log_of_largest(dy, axis)) / math.log(2.0)
        k = tf.clip_by_value(tf.math.ceil(log2_top) - _SCALE_EXPONENT, -1022.0, 1023.0)
        k = tf.where(tf.math.is_nan(k), tf.zeros_like(k), k)
        terms = tf.math.multiply_no_nan(_times_power_of_two(y, -k), dy)
        return tf.math.cumsum(terms, axis, exclusive=exclusive, reverse=not reverse), k

    def products(dy, y, x):
        # (g y, whether the slices need the general form): a zero factor, a
        # product beyond _TERM_BOUND or below _TINY_TERM, a NaN (kept to the
        # entries it reaches by the general form's scan kernel).
        t = tf.math.multiply_no_nan(y, dy)
        size = tf.abs(t)
        unusual = (tf.equal(x, 0.0) | (size > _TERM_BOUND) | ((size < _TINY_TERM) & (size > 0.0))
                   | tf.math.is_nan(t))
        return t, tf.reduce_any(unusual)

    def quotient(s, x):
        return _dtypes.saturate(s / x, dtype)

    def plain(t, x):
        # No zero factor, no product beyond _TERM_BOUND or below _TINY_TERM:
        # the quotient is exact.
        return quotient(_blocked_running_sum(t, axis, exclusive, not reverse), x)

    def checked_plain(dy, y, x):
        # (the plain gradient, whether a slice needs the general form instead),
        # in one inner XLA call: the plain gradient is formed next to the
        # check, and where the check fails it is formed from zeros over ones
        # and dropped (a zero factor's quotient is inf or NaN, and
        # tf.debugging.enable_check_numerics reads every output). As two inner
        # calls around the running sum's TensorFlow kernels, products and
        # quotient, forward+backward in a tf.function at [100, 1000] took
        # 1.63 to 1.98 times TensorFlow's cumprod (4.1 to 5.0 ms), merged
        # 1.44 to 1.72 (3.3 to 4.0 ms), in four runs of each, alternating
        # (python -m benchmarks --filter cumprod --quick --repeats 15, on a
        # 2-core Intel Xeon: a noisy machine; two of the four before the
        # selects above).
        t, unusual = products(dy, y, x)
        t = tf.where(unusual, tf.zeros_like(t), t)
        x = tf.where(unusual, tf.ones_like(x), x)
        return plain(t, x), unusual

    checked_plain_xla = _xla.compiled(checked_plain, xla, eager_plain=True)

    def gradient(dy, y, x):
        zero = tf.equal(x, 0.0)
        count = tf.math.cumsum(tf.cast(zero, x.dtype), axis, reverse=reverse)  # zeros up to each entry
        before, first = tf.equal(count, 0.0), zero & tf.equal(count, 1.0)
        ones = tf.ones_like(x)
        s, k = over_outputs(dy, y)
        divided = _quotient_times_power_of_two(s, tf.where(before, x, ones), k)
        # The first zero's own factor taken out: the running product of the
        # other factors (0 again from the next zero on).
        others = tf.where(first, ones, x)
        s_first, k_first = over_outputs(dy, overruled(others, kernel(others)))
        at_first = _times_power_of_two(s_first, k_first)
        after = tf.where(tf.math.is_nan(x), x, tf.zeros_like(x))  # 0, NaN at a NaN entry
        return (_dtypes.saturate(tf.where(before, divided, tf.where(first, at_first, after)), dtype),)

    def backward(dy, y, x):
        if recording():
            # Differentiated (a second derivative): no tf.cond, whose
            # branches a tape differentiates as they are built.
            return gradient(dy, y, x)
        if _xla.in_xla():
            # One program already (no launch to save): the plain gradient is
            # formed only in the branch that takes it (76 MB less at 1e7).
            t, unusual = products(dy, y, x)
            return tf.cond(unusual, lambda: gradient(dy, y, x), lambda: (plain(t, x),))
        dx, unusual = checked_plain_xla(dy, y, x)
        return tf.cond(unusual, lambda: gradient(dy, y, x), lambda: (dx,))

    # The second-order pass differentiates the form without tf.cond.
    backward.python_function = gradient
    return custom_op(forward, backward, dtype)

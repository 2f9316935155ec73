"""The dtype policy: the one place that knows about float formats.

Every public op asks this module three things and nothing else:

* which dtypes it accepts (:data:`FLOAT_DTYPES`);
* which dtype it computes in (:func:`compute_dtype`): float16 and bfloat16
  are widened to float32, computed there and rounded once on the way out, so
  their results are within 1 ULP of the output dtype (contract C3). A few
  composite ops evaluate their *value* in float64 (:func:`wide_forward`):
  in float32 it would rest on TensorFlow's float32 ``log1p`` and ``expm1``
  kernels, 4 to 5 ULP off, and land at 5 ULP, over C3's 4
  (``python -m benchmarks.sweep``);
* where its domain is clamped (:func:`tiny`, :func:`below_one`, ...): every
  bound is derived from ``finfo`` of the *input* dtype, never written as a
  literal epsilon anywhere else.

Why the clamp bounds are what they are
--------------------------------------
The lower clamp for ``log`` and its relatives is the smallest *normal* number
of the input dtype, ``finfo(dtype).tiny``:

* every normal number is left unchanged, so ordinary inputs give the exact
  result (there is no ``1e-7`` style floor that shifts ``log(1e-9)``);
* TensorFlow on CPU flushes subnormals to zero, in eager and XLA alike
  (TF 2.21: float32 ``log(1e-40)`` returns -103.97, float64 ``log(1e-310)``
  returns ``-inf``). Treating a subnormal as 0, and so as a clamped point,
  makes every device and mode agree;
* the boundary gradient ``1/tiny`` is finite in every dtype: 16384 for
  float16, about 8.5e37 for float32 and bfloat16, about 4.5e307 for float64.

The upper clamp of the open unit interval is the largest number below 1,
``1 - eps/2``, for the same reason: nothing representable inside (0, 1) moves.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import tensorflow as tf

#: The float dtypes every safeops op accepts, narrowest first.
FLOAT_DTYPES: tuple[tf.DType, ...] = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

#: Dtypes that are computed in float32 and rounded once on output.
HALF_DTYPES: tuple[tf.DType, ...] = (tf.float16, tf.bfloat16)


def finfo(dtype: tf.DType):
    """Machine limits of a float dtype (``numpy.finfo``, or ml_dtypes' for bfloat16)."""
    dtype = tf.as_dtype(dtype)
    if dtype == tf.bfloat16:
        return ml_dtypes.finfo(ml_dtypes.bfloat16)
    return np.finfo(dtype.as_numpy_dtype)


def compute_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype an op computes in: float32 for the half dtypes, else ``dtype``."""
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in HALF_DTYPES else dtype


def sum_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype a row sum of float ``dtype`` terms accumulates in: float64, whatever ``dtype``.

    A float32 sum's rounding grows with the row's length: the loss of a
    confident prediction, ``log1p`` of the sum of the other classes' terms,
    was 23 ULP off over 4000 equal terms and 530 over 1e5 (float32 partial
    sums of equal terms all round the same way). Summed in float64 and
    rounded once, the sum is within half a float32 ULP of the float64 sum
    of its terms for rows up to ``2**28`` entries (the worst-case bound
    ``n 2**-53``), and the widening costs a conversion per term.
    """
    del dtype  # float64 for every float dtype: the call names what is summed
    return tf.float64


def to_compute(x: tf.Tensor) -> tf.Tensor:
    """Widens a half-precision tensor to float32; other tensors pass unchanged."""
    return tf.cast(x, tf.float32) if x.dtype in HALF_DTYPES else x


def wide_forward(forward):
    """``forward`` evaluated in float64 and rounded once to the dtype of its first input.

    For the value of ops whose float32 formula chains kernels that are each
    a few ULP off (``log1p``, ``expm1``): in float64 their errors are far
    below a float32 ULP, so the rounded result is within one. Gradients have
    a looser bound (C3) and stay in the compute dtype: the backward pass is
    not widened, which keeps most of the cost of float64 transcendentals
    off the training step.
    """

    def widened(*xs):
        dtype = xs[0].dtype
        y = forward(*[tf.cast(x, tf.float64) for x in xs])
        return y if dtype == tf.float64 else tf.cast(y, dtype)

    return widened


def from_compute(y: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Rounds a result computed in :func:`compute_dtype` back to ``dtype`` (once)."""
    return y if y.dtype == dtype else tf.cast(y, dtype)


def tiny(dtype: tf.DType) -> float:
    """Smallest positive normal number of ``dtype``: the lower clamp of log-like ops."""
    return float(finfo(dtype).tiny)


def eps(dtype: tf.DType) -> float:
    """Distance from 1 to the next larger number of ``dtype``."""
    return float(finfo(dtype).eps)


def max_value(dtype: tf.DType) -> float:
    """Largest finite number of ``dtype``: the bound gradients saturate at."""
    return float(finfo(dtype).max)


def below_one(dtype: tf.DType) -> float:
    """Largest number of ``dtype`` below 1 (``1 - eps/2``): the upper clamp of (0, 1)."""
    return 1.0 - eps(dtype) / 2.0


def above_one(dtype: tf.DType) -> float:
    """Smallest number of ``dtype`` above 1 (``1 + eps``): the lower clamp of (1, inf)."""
    return 1.0 + eps(dtype)


def log_max(dtype: tf.DType) -> float:
    """``log(max_value(dtype))``: the largest ``x`` whose ``exp(x)`` is finite."""
    return float(np.log(max_value(dtype)))


def flush_subnormals(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """``x`` with every entry below ``tiny(dtype)`` in magnitude made a zero of its own sign.

    C3 treats subnormal inputs as 0, but a kernel does not always flush
    them: a bfloat16 or float16 subnormal widened to float32 is normal
    there, and some kernels take float32 subnormals as numbers (or not, by
    loop). ``x * 0`` keeps the sign (``atan2`` needs it at its branch cut).
    """
    return tf.where(tf.abs(x) < tiny(dtype), x * 0.0, x)


def times_one(x: tf.Tensor) -> tf.Tensor:
    """``x * 1`` as a kernel: ``x`` with its own subnormals made zeros of their sign, on CPU.

    TensorFlow runs its CPU kernels with subnormal operands read as 0 and
    subnormal results flushed (its thread pools and eager calls set the
    x86 DAZ and FTZ flags, or FZ on Arm), so a product with 1 flushes in
    one pass, where :func:`flush_subnormals` takes four kernels (or an XLA
    call, whose launch inside a graph cost more than the whole ``atan2``
    kernel at 1e5 entries, hand-measured on a 2-core Intel Xeon). Exact
    otherwise: ``±0``, ``±inf`` and NaN pass unchanged (tested through
    ``atan2`` in eager calls, graphs and on tf.data's threads). In a graph
    the 1 is a ``PlaceholderWithDefault``, which Grappler does not fold: it
    removes a product with a constant 1, and with it the flush. Only the input's own dtype is flushed (not a
    float16 subnormal widened to float32, which is normal there), and a
    GPU kernel, which keeps subnormals, leaves them as they are; XLA
    simplifies the product away (use :func:`flush_subnormals` there; ops
    that TensorFlow's auto-clustering hands to XLA lose the flush too).
    """
    one = tf.constant(1.0, x.dtype)
    if not tf.executing_eagerly():
        one = tf.raw_ops.PlaceholderWithDefault(input=one, shape=[])
    return x * one


def saturate(g: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Clips ``g`` to the finite range of ``dtype``, keeping NaN.

    Used on second derivatives, whose exact value (``-1/x**2`` for ``log`` at
    ``x = 1e-30``) can overflow a dtype whose first derivative still fits.
    ``tf.clip_by_value`` propagates NaN on CPU, in graph mode and under XLA.
    """
    bound = tf.constant(max_value(dtype), g.dtype)
    return tf.clip_by_value(g, -bound, bound)


# Infinities and NaN without a constant that holds one. tf.debugging's
# enable_check_numerics checks every op's output, a graph's constants and
# fills too: an op that compares with -inf, or selects from a tensor of -inf
# or NaN that it discards, stopped a check_numerics run on finite inputs.
# The tests compare with the largest finite magnitude, and the values come
# from a logarithm that is infinite (or NaN) only where they are selected.


def is_minus_inf(x: tf.Tensor) -> tf.Tensor:
    """``x == -inf`` (false for NaN), against the lowest finite value of ``x``'s dtype."""
    return tf.less(x, tf.constant(-max_value(x.dtype), x.dtype))


def is_plus_inf(x: tf.Tensor) -> tf.Tensor:
    """``x == +inf`` (false for NaN), against the largest finite value of ``x``'s dtype."""
    return tf.greater(x, tf.constant(max_value(x.dtype), x.dtype))


def minus_inf_or_zero(cond: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """``-inf`` where ``cond``, 0 elsewhere: ``log(1 - cond)``, infinite only where it is selected."""
    return tf.math.log(tf.cast(tf.logical_not(cond), dtype))


def nan_or_zero(cond: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """NaN where ``cond``, 0 elsewhere: ``log(1 - 2 cond)``, NaN only where it is selected."""
    return tf.math.log(1.0 - 2.0 * tf.cast(cond, dtype))


def log_inv_eps(dtype: tf.DType) -> float:
    """``-log(eps(dtype))``: beyond it ``exp(-x) < eps``, so ``x + log1p(exp(-x))`` rounds to ``x``.

    The switch point of softplus-like ops (``softplus``, ``log_sigmoid``,
    ``softplus_inverse``): above it they return ``x`` itself (error below
    1/8 ULP) instead of forming an ``exp(x)`` that overflows further on.
    15.9 for float32, 36.0 for float64 (ask with the compute dtype).
    """
    return float(-np.log(eps(dtype)))


def rsqrt_floor(dtype: tf.DType) -> float:
    """Smallest ``s`` whose ``1/sqrt(s)`` (``max_value/2``) is finite in ``dtype``.

    The floor under a sum of squares before ``rsqrt`` (``l2_normalize``'s
    ``epsilon``): TensorFlow's default 1e-12 gives a gradient of 1e6, which
    is ``inf`` in float16. 9.3e-10 for float16; below ``tiny`` (so no
    change) for the wider dtypes.
    """
    return (2.0 / max_value(dtype)) ** 2


def variance_floor(dtype: tf.DType) -> float:
    """``eps(dtype)``: the variance floor of Gaussian likelihoods on predicted log-variances.

    With a variance ``v >= eps`` the likelihood's terms ``(y - mean)**2 / v``
    and its gradient ``(y - mean) / v`` stay finite in ``dtype`` for any
    residual the dtype can usefully carry: up to about 8 in float16 (whose
    largest value is 65504) and far beyond in the wider dtypes. A floor of
    ``eps**2`` would overflow the float16 gradient for residuals above 0.06.
    1.2e-7 for float32 (the order of PyTorch's ``GaussianNLLLoss`` default
    1e-6), 9.8e-4 for float16, 7.8e-3 for bfloat16, 2.2e-16 for float64.
    Used by ``safeops.losses.gaussian_nll`` (ask with the *input* dtype).
    """
    return eps(dtype)

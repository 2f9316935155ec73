"""The custom-gradient helper: the only place that calls ``tf.custom_gradient``.

An op is written as two plain functions of differentiable TensorFlow ops:

* ``forward(*xs) -> y``, the stable rewrite of the formula;
* ``backward(dy, y, *xs) -> (dx1, dx2, ...)``, the vector-Jacobian product
  that the op wants (the boundary gradient at a clamp, zero at a masked
  entry), one gradient per input, each of its input's shape.

:func:`custom_op` joins them. Second derivatives come from differentiating
``backward`` itself (with ``forward`` recomputed inside the tape, so the
dependence of ``y`` on ``xs`` is kept), which is why ``backward`` must use
differentiable ops only. Three things are added at second order:

* **float64**: the pass runs in float64 (see :func:`_second_order`), so an
  intermediate that overflows float32 cannot turn into ``0 * inf = NaN``.
  A float64 op has nothing wider: where its own intermediates overflow (the
  second derivative of ``logit`` below ``x = 1.5e-154``, about ``-1/x**2``)
  the result is the artifact below and comes out 0, not saturated;

* **saturation**: the exact second derivative may overflow where the first
  does not (``log`` at ``x = 1e-30`` in float32 has ``-1/x**2 = -1e60``), so
  it is clipped to the finite range of the *output* dtype (float16's 65504
  for a float16 op computed in float32). NaN passes through the clip;
* **NaN is kept** (contract C2): clamps written with ``tf.maximum`` have a
  zero derivative at a NaN input, so where an input is NaN its second
  derivative is set to NaN. Conversely, a NaN in the second derivative that
  no NaN operand explains can only be ``0 * inf`` from a saturated first
  derivative, and is set to that saturated gradient's derivative, 0 (entry
  by entry, see :func:`_second_order`).

The first-order path costs nothing beyond ``forward`` and ``backward``: the
second-order wrapper is an identity in the graph. The grad closure keeps
``y`` and ``xs`` alive until the backward pass, nothing else.

One place drops every custom gradient: ``tf.vectorized_map`` (and
``pfor``) differentiated by a tape *outside* the map. TensorFlow's
vectorizer rewrites the ``IdentityN`` that carries the custom gradient as a
plain ``IdentityN`` (``_convert_identity_n`` in
``tensorflow/python/ops/parallel_for/pfor.py``, TensorFlow 2.21), so the tape
differentiates ``forward``'s own ops instead. That is the right gradient
away from clamps and masks for ops whose forward is the formula, and 0 for
an op whose forward computes only a value from stopped inputs; such ops
check :func:`in_vectorized_map` and add a differentiable plain form
(:func:`with_plain_gradient`). A tape inside the mapped function (per-example
gradients) builds the custom gradients before the map and is unaffected.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from safeops import _dtypes

try:
    from tensorflow.python.eager import record as _record
except ImportError:  # pragma: no cover - a TensorFlow without the module
    _record = None
try:  # the tape set's count of gradient orders (see backprop_only)
    from tensorflow.python import pywrap_tfe as _pywrap_tfe
except ImportError:  # pragma: no cover
    _pywrap_tfe = None

Forward = Callable[..., tf.Tensor]
Backward = Callable[..., Sequence[tf.Tensor]]


def custom_op(forward: Forward, backward: Backward, output_dtype: tf.DType) -> Callable[..., tf.Tensor]:
    """Returns ``op(*xs)``: value ``forward(*xs)``, gradient ``backward``.

    Args:
      forward: ``forward(*xs) -> y`` in differentiable TensorFlow ops.
      backward: ``backward(dy, y, *xs) -> tuple`` of one gradient per input.
      output_dtype: the dtype the user sees (before any half-precision
        widening); second derivatives saturate at its largest finite value.
    """
    plain_forward, plain_backward = _plain(forward), _plain(backward)

    # Named functions, not lambdas: AutoGraph (tf.map_fn, tf.data) warns that
    # it cannot tell two lambdas on one line apart.
    def with_no_residuals(*xs):
        return forward(*xs), ()

    def plain_with_no_residuals(*xs):
        return plain_forward(*xs), ()

    def backward_of_residuals(dy, y, residuals, *xs):
        return backward(dy, y, *xs)

    def plain_backward_of_residuals(dy, y, residuals, *xs):
        return plain_backward(dy, y, *xs)

    return custom_op_with_residuals(
        _Pair(with_no_residuals, plain_with_no_residuals),
        _Pair(backward_of_residuals, plain_backward_of_residuals),
        output_dtype,
    )


class _Pair:
    """A pass as called at first order, and its plain-op version for the second-order recompute."""

    def __init__(self, fn, plain):
        self.fn, self.python_function = fn, plain

    def __call__(self, *args):
        return self.fn(*args)


def _plain(fn):
    """The Python function behind an inner XLA function (:func:`safeops._xla.compiled`), else ``fn``.

    The second-order pass recomputes ``forward`` and differentiates
    ``backward`` in float64 as ordinary ops: compiling float64 variants of
    every inner XLA function for a rare, already slow pass buys nothing, and
    calling XLA-compiled functions from inside an eager gradient function
    crashed TensorFlow 2.21 once in our CI (a segmentation fault we could
    not reproduce in isolation).
    """
    return getattr(fn, "python_function", fn)


def custom_op_with_residuals(forward, backward, output_dtype: tf.DType) -> Callable[..., tf.Tensor]:
    """Like :func:`custom_op`, with intermediate results handed to ``backward``.

    ``forward(*xs) -> (y, residuals)`` returns the value and a tuple of
    tensors the backward pass reuses (a softmax numerator, a row sum) instead
    of recomputing them; ``backward(dy, y, residuals, *xs)`` returns one
    gradient per input. Only the residuals, ``y`` and ``xs`` are kept alive.
    Second derivatives recompute ``forward`` inside the tape (see
    :func:`_second_order`), with the saturation and NaN rules of the module.
    """

    @tf.custom_gradient
    def recorded(*xs):
        y, residuals = forward(*xs)
        # Integer and boolean inputs (class indices, masks) are constants of
        # the op: no gradient, and not cast for the second-order pass.
        smooth = [i for i, x in enumerate(xs) if x.dtype.is_floating]

        def first_order(dy):
            @tf.custom_gradient
            def gradients(dy, *xs):
                if not tf.executing_eagerly():
                    # A tf.function differentiated twice by tapes outside it
                    # builds this pass in its backward function, where xs
                    # are the forward function's tensors: reached through
                    # this closure by the second-order pass (a third
                    # graph) they are out of scope (TypeError). Local
                    # copies are captured like any input. For the same
                    # reason an op must take every tensor it uses as an
                    # input, never close over one.
                    xs = tuple(tf.identity(x) for x in xs)
                grads = tuple(backward(dy, y, residuals, *xs))

                def second_order(*ddx):
                    return _second_order(_plain(forward), _plain(backward), output_dtype, dy, xs, ddx, smooth)

                return tuple(grads[i] for i in smooth), second_order

            grads = [None] * len(xs)
            for i, g in zip(smooth, gradients(dy, *xs)):
                grads[i] = g
            return grads

        return y, first_order

    def op(*xs):
        # Eager, with no GradientTape or ForwardAccumulator that could record
        # the call, the gradient machinery is pure overhead: tf.custom_gradient
        # inspects signatures, flattens and copies the outputs and records
        # nothing, about three quarters of an eager call on a small tensor.
        # The value is the same either way.
        if tf.executing_eagerly() and not _could_record():
            return forward(*xs)[0]
        return recorded(*xs)

    return op


def _could_record() -> bool:
    """Whether a GradientTape or ForwardAccumulator is active (and not stopped) on this thread.

    TensorFlow's own test before it records an op
    (``tensorflow.python.eager.record.could_possibly_record``); there is no
    public equivalent. Without it (a TensorFlow that moved the module) every
    call takes the recording path.
    """
    return _record is None or _record.could_possibly_record()


def recording() -> bool:
    """Whether a GradientTape or ForwardAccumulator could record the ops built now, eager or in a graph.

    Inside a ``backward``, true when that backward is itself being
    differentiated (a second derivative); see :func:`_could_record`.
    """
    return _could_record()


def backprop_only(tensors) -> bool | None:
    """How the tapes on this thread would record an eager op of ``tensors``.

    ``None``: nothing records it. ``True``: first-order ``GradientTape``s
    only, which differentiate a custom-gradient op through its own gradient
    function, never through the ops of its forward. ``False``: anything else
    (nested tapes, a ``ForwardAccumulator``, whose JVP goes through those
    ops, or a TensorFlow without these tests). TensorFlow's own tests
    (``TFE_Py_TapeSetPossibleGradientTypes``, 0, 1 or 2 orders, counts an
    accumulator as one; ``should_record_backprop`` sees tapes only), as in
    :func:`_could_record`.
    """
    if _record is None or _pywrap_tfe is None:
        return False
    if not _record.could_possibly_record():
        return None
    orders = _pywrap_tfe.TFE_Py_TapeSetPossibleGradientTypes(list(tensors))
    if orders == 0:
        return None
    return orders == 1 and bool(_record.should_record_backprop(list(tensors)))


def watched_eagerly(x: tf.Tensor) -> bool:
    """Whether a GradientTape on this thread watches ``x`` (eager; ``True`` where unknown).

    TensorFlow's own test (``record.should_record_backprop``), as in
    :func:`_could_record`. A ``tf.Variable`` (which that test does not take:
    ``SystemError``) counts as watched.
    """
    if isinstance(x, tf.Variable):
        return True
    return _record is None or _record.should_record_backprop([x])


def _second_order(forward, backward, output_dtype, dy, xs, ddx, smooth):
    """Differentiates ``backward`` once more, in float64, and saturates.

    The pass runs in float64 whatever the op's compute dtype: the
    intermediates of a second derivative overflow float32 long before the
    result does (``2x/y**3`` of ``x / y`` at ``y = 1e-20`` is 2e60), and an
    overflowed intermediate times a zero upstream gradient is NaN. In float64
    they stay finite; the result is then clipped to the output dtype's finite
    range and rounded back. Only second-order gradients pay for this.

    A NaN left in the result is either *owed* (it flows from a NaN input,
    first-order cotangent ``dy`` or second-order cotangent ``ddx``: contract
    C2 keeps it) or an *artifact*: ``0 * inf``, an intermediate that
    overflowed even float64 (``x / y**2`` at ``y = tiny`` in float64) times
    the zero derivative of a first-order gradient that saturated there; the
    derivative of that saturated gradient is 0. With no NaN among the
    operands every NaN is an artifact and becomes 0. Otherwise the pass is
    run a second time with each NaN operand entry replaced by a harmless
    value (0.5 for an input, 0 for a cotangent): a NaN that survives the
    replacement is an artifact (0), one that disappears was owed (NaN). The
    decision is per entry, so one NaN in a batch does not expose the
    artifacts of the other entries, and a row-wise op's NaN row stays NaN.

    ``smooth``: the indices of the float inputs, the ones ``ddx`` and the
    result are for; the others (integer constants) get ``None``.
    """
    wide = tf.float64
    floats = [xs[i] for i in smooth]
    operands = [dy, *floats, *ddx]

    def differentiate(dy, *rest):
        inputs = list(xs)
        for i, x in zip(smooth, rest[:len(smooth)]):
            inputs[i] = x
        return _differentiate_backward(forward, backward, dy, inputs, smooth, rest[len(smooth):])

    dd = differentiate(*[tf.cast(t, wide) for t in operands])
    dirty = tf.reduce_any(tf.stack([tf.reduce_any(tf.math.is_nan(t)) for t in operands]))

    def replaced():
        fills = [0.0] + [0.5] * len(floats) + [0.0] * len(ddx)
        calm = [tf.where(tf.math.is_nan(t), tf.cast(f, wide), tf.cast(t, wide))
                for t, f in zip(operands, fills)]
        return [tf.math.is_nan(d) for d in differentiate(*calm)]

    def all_artifacts():
        return [tf.ones_like(d, tf.bool) for d in dd]

    artifact = tf.cond(dirty, replaced, all_artifacts)

    def tidy(d, spurious, like):
        d = _dtypes.saturate(d, output_dtype)
        d = tf.where(spurious & tf.math.is_nan(d), tf.zeros_like(d), d)
        return tf.cast(d, like.dtype)

    ddy = tidy(dd[0], artifact[0], dy)
    ddxs = [None] * len(xs)
    for i, x, d, a in zip(smooth, floats, dd[1:], artifact[1:]):
        ddxs[i] = tf.where(tf.math.is_nan(x), x, tidy(d, a, x))
    return (ddy, *ddxs)


def _differentiate_backward(forward, backward, dy, xs, smooth, ddx):
    """``backward``'s vector-Jacobian product for cotangents ``ddx``.

    With respect to ``dy`` and the float inputs ``xs[smooth]``.
    """
    floats = [xs[i] for i in smooth]
    with tf.GradientTape() as tape:
        tape.watch([dy, *floats])
        y, residuals = forward(*xs)
        redo = tuple(backward(dy, y, residuals, *xs))
    return tape.gradient([redo[i] for i in smooth], [dy, *floats], output_gradients=list(ddx),
                         unconnected_gradients=tf.UnconnectedGradients.ZERO)


def in_vectorized_map() -> bool:
    """Whether the graph being built is the body of a ``tf.vectorized_map`` (``pfor``) being traced.

    TensorFlow traces the mapped function under the name scope
    ``loop_body`` before it vectorizes the ops (``_pfor_impl`` in
    ``tensorflow/python/ops/parallel_for/control_flow_ops.py``); there is no
    public test. Eager code is never inside one.
    """
    if tf.executing_eagerly():
        return False
    return "loop_body" in tf.compat.v1.get_default_graph().get_name_scope().split("/")


def with_plain_gradient(value: tf.Tensor, plain: tf.Tensor) -> tf.Tensor:
    """``value``, with the autodiff gradient of ``plain`` (0 where ``plain`` is infinite, NaN kept).

    For an op whose custom gradient a vectorizer drops (see the module
    docstring): ``plain`` is a differentiable form of the same quantity
    whose ops have TensorFlow's registered gradients.
    """
    delta = plain - tf.stop_gradient(plain)
    return tf.stop_gradient(value) + tf.where(tf.math.is_inf(plain), tf.zeros_like(delta), delta)


def sum_to_shape(g: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Sums a broadcast gradient ``g`` back to the shape of the input ``like``.

    The reduction a binary op's gradient needs when its inputs were
    broadcast: the axes come from ``BroadcastGradientArgs``, as in
    TensorFlow's own gradients, so unknown shapes work too.
    """
    if like.shape.is_fully_defined() and g.shape.is_fully_defined() and g.shape == like.shape:
        return g
    axes, _ = tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(like), s1=tf.shape(g))
    return tf.reshape(tf.reduce_sum(g, axes), tf.shape(like))


# ----------------------------------------------------------------------------
# Saturation at unit scale, overflow at loss scale
#
# A float16 input of a loss computed in float32 gets its gradient back
# through a widening cast that saturates at 65504
# (safeops._probabilities.saturating_cast): a boundary gradient formed in
# float32 (l2_normalize's at a zero embedding, 5e6 in info_nce) would be inf
# in float16 (C1). But mixed_float16 training multiplies the loss by a loss
# scale (Keras' LossScaleOptimizer starts at 2**15), and an overflow is how
# the scale learns it is too large: the optimizer skips the step and halves
# it. Saturated, the overflow never showed, the scale stayed, and every step
# applied a clipped gradient (a loss error of 100 moved a weight 100 times
# too little, forever; Keras' own loss skipped 7 steps, then took exact ones).
#
# So the cast saturates only for a loss at unit scale: ``loss_scaled_cast``
# marks where the loss starts, ``report_scale`` where it ends. The end's
# backward passes its upstream gradient on unchanged and sends the largest
# finite magnitude in it, ``s``, to the start through a handle (a scalar 0
# the start returns and the end takes). The start saturates where ``s <= 1``
# (C1 holds for the loss's own gradient, the reduced loss's ``dy = 1`` or
# less) and is a plain cast otherwise, so a scaled gradient overflows as
# TensorFlow's own cast makes it, and as the loss-scale optimizer expects.
# Edges: NaN passes through both (C2); an infinite or NaN entry of dy is
# left out of s, so one example's NaN does not change how the others are
# cast; an unconnected handle (a gradient that does not pass the loss's
# end) arrives as 0, and the cast saturates, as before this pair existed.


def loss_scaled_cast(x: tf.Tensor, wide: tf.DType):
    """``(tf.cast(x, wide), handle)``; the gradient saturates at ``x``'s range if the scale is at most 1."""
    narrow = x.dtype

    @tf.custom_gradient
    def start(x):
        def backward(dy, s):
            saturated = tf.where(s <= 1.0, _dtypes.saturate(dy, narrow), dy)
            return tf.cast(saturated, narrow)

        return (tf.cast(x, wide), tf.zeros([], tf.float32)), backward

    return start(x)


def report_scale(loss: tf.Tensor, handle: tf.Tensor) -> tf.Tensor:
    """``loss`` unchanged; its backward sends the largest finite ``|dy|`` to :func:`loss_scaled_cast`."""

    @tf.custom_gradient
    def end(loss, handle):
        def backward(dy):
            magnitude = tf.where(tf.math.is_finite(dy), tf.abs(dy), tf.zeros_like(dy))
            return dy, tf.cast(tf.reduce_max(magnitude), tf.float32)

        return tf.identity(loss), backward

    return end(loss, handle)

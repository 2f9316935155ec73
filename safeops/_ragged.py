"""``tf.RaggedTensor`` inputs, for the ops TensorFlow also accepts them in.

TensorFlow 2.21 dispatches its elementwise ops, ``tf.nn.softmax`` along the
ragged axis and ``reduce_logsumexp`` over all axes to ragged versions; the
drop-ins do the same (and ``log_softmax`` as ``softmax``):

* **elementwise ops** run on the ``flat_values`` (``tf.ragged.map_flat_values``),
  so the result has the input's row partition; ragged operands of a binary
  op must share theirs (as ``map_flat_values`` requires);
* **row ops** (``softmax``, ``log_softmax``) along a ragged axis pad the rows
  with ``-inf`` (a masked entry: value 0 or ``-inf``, gradient 0) and cut
  the padding off again; along a uniform inner axis they run on the values;
* **reductions** (``reduce_logsumexp``) pad with ``-inf``, which adds
  nothing to a sum of exponentials, and return a dense tensor, as
  TensorFlow does when the ragged axis is reduced (where TensorFlow 2.21
  fails, ``axis=0`` of a ragged matrix, the padded result is the natural
  one: each column over the rows that have it).

Gradients flow to the ``flat_values`` through ``map_flat_values`` and
``to_tensor``. Anything else raises a ``TypeError`` that names the argument.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import tensorflow as tf

from safeops import _validate

_INF = float("inf")


def any_ragged(*values: Any) -> bool:
    """Whether any of ``values`` is a ``tf.RaggedTensor``."""
    return any(isinstance(v, tf.RaggedTensor) for v in values)


def elementwise(fn: Callable, *args: Any, **kwargs: Any) -> tf.RaggedTensor:
    """``fn`` applied to the ``flat_values`` of the ragged arguments; the row partition is kept.

    A dense operand of rank >= 1 next to a ragged one is first broadcast
    with it by TensorFlow's ragged broadcasting (a product with ones: exact,
    ``-0``, ``inf`` and NaN kept, differentiable), as ``tf.math`` does: given
    to ``map_flat_values`` as it is, it met the flat values instead of the
    rows (``xlogy(ragged [3, None], dense [3, 1])`` had shape ``[3, None,
    3]``).
    """
    ragged = next(a for a in args if isinstance(a, tf.RaggedTensor))
    dense = [i for i, a in enumerate(args) if not isinstance(a, tf.RaggedTensor) and _rank(a) != 0]
    if dense:
        args = list(args)
        broadcast = []
        for i in dense:
            try:
                value = tf.convert_to_tensor(args[i], dtype_hint=ragged.dtype)
            except (TypeError, ValueError):
                continue  # left to fn, whose check names the argument
            if value.dtype.is_floating:
                args[i] = value * tf.ones_like(ragged, dtype=value.dtype)
                broadcast.append(i)
        if broadcast:
            # The ragged operands to the common shape too (a dense operand may add outer dims).
            common = args[broadcast[0]]
            args = [a * tf.ones_like(common, dtype=a.dtype)
                    if i not in broadcast and isinstance(a, tf.RaggedTensor) and a.dtype.is_floating else a
                    for i, a in enumerate(args)]
    return tf.ragged.map_flat_values(fn, *args, **kwargs)


def _rank(value: Any):
    """The rank of a tensor (None if unknown, as in a graph) or of anything NumPy converts."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.shape.rank
    return np.ndim(value)


def along_axis(fn: Callable, op: str, arg: str, rt: tf.RaggedTensor, axis: int, *, padding: float = -_INF,
               **kwargs: Any):
    """A row op ``fn(x, axis=...)`` (softmax, log_softmax) of a ragged tensor along ``axis``.

    Past the first ragged axis the op is one per outer row, so it recurses
    into ``rt.values`` (the first two axes merged) with ``axis - 1``; along
    the first ragged axis of a tensor with no other ragged axis the rows are
    padded with ``padding`` (``-inf``, the log-sum-exp family's neutral
    entry; 1 for ``cumprod``) and cut back; axis 0, or the first ragged axis
    of a tensor with more, is refused.
    """
    rank = rt.shape.rank
    _validate.axis_in_range(op, axis, rank)
    axis = axis % rank
    if axis >= 2:
        inner = rt.values
        if isinstance(inner, tf.RaggedTensor):
            return rt.with_values(along_axis(fn, op, arg, inner, axis - 1, padding=padding, **kwargs))
        return rt.with_values(fn(inner, axis=axis - 1, **kwargs))
    if axis == 1 and rt.ragged_rank == 1:
        dense = fn(_padded(op, arg, rt, padding), axis=1, **kwargs)
        # boolean_mask, unlike RaggedTensor.from_tensor, passes gradients back.
        kept = tf.sequence_mask(rt.row_lengths(), tf.shape(dense, out_type=rt.row_splits.dtype)[1])
        return rt.with_values(tf.boolean_mask(dense, kept))
    raise TypeError(_validate.message(
        op, arg, "a RaggedTensor taken along a ragged axis with no ragged axis inside it, or a uniform axis",
        f"axis {axis} of a ragged tensor of shape {rt.shape}"))


def reduced(fn: Callable, op: str, arg: str, rt: tf.RaggedTensor, axis, keepdims: bool, **kwargs: Any):
    """A reduction ``fn(x, axis, keepdims)`` of a ragged tensor, returned dense.

    Refused when the result would keep a ragged axis (the row partition of a
    reduced tensor is not defined by padding).
    """
    rank = rt.shape.rank
    _validate.axis_in_range(op, axis, rank)
    if axis is None:
        if keepdims:
            out = fn(rt.flat_values, None, False, **kwargs)
            return tf.nest.map_structure(lambda t: tf.reshape(t, [1] * rank), out)
        return fn(rt.flat_values, None, False, **kwargs)
    axes = {int(a) % rank for a in np.atleast_1d(np.asarray(axis))}
    if 0 not in axes and not set(range(1, rt.ragged_rank + 1)) <= axes:
        raise TypeError(_validate.message(
            op, arg, "a RaggedTensor reduced over its first or its ragged axes",
            f"axis {axis} of a ragged tensor of shape {rt.shape}, which would leave a ragged result"))
    return fn(_padded(op, arg, rt), axis, keepdims, **kwargs)


def _padded(op: str, arg: str, rt: tf.RaggedTensor, padding: float = -_INF) -> tf.Tensor:
    values = _validate.float_tensor(rt.flat_values, op, arg)
    return rt.with_flat_values(values).to_tensor(default_value=tf.constant(padding, values.dtype))


def loss_over_last_axis(fn: Callable, op: str, y_true: Any, y_pred: Any, mean: bool = False,
                        pred_padding: float = 0.0):
    """A per-example loss ``fn(y_true, y_pred)`` reduced over the last axis, of ragged operands.

    For the losses Keras computes on ragged tensors through its ragged ops
    (``kl_divergence``, ``poisson``, ``categorical_focal_crossentropy``).
    Both operands must be ragged with one row partition (asserted in the
    graph). A uniform last axis runs on the ``flat_values`` and the result
    keeps the row partition; a ragged last axis (a ragged matrix) is padded
    with zeros in both, where a label of 0 adds nothing to the sums these
    losses take, and the result is dense, one value per row, as Keras'
    (``y_pred`` is padded with ``pred_padding``: ``-inf`` for logits, a
    masked class). A mean over the row (``mean``, ``poisson``) is rescaled
    from the padded length to the row's own (an empty row gives NaN, as a
    mean of nothing).
    """
    for arg, value in (("y_true", y_true), ("y_pred", y_pred)):
        if not isinstance(value, tf.RaggedTensor):
            raise TypeError(_validate.message(op, arg, "a RaggedTensor like the other argument",
                                              type(value).__name__))
    checks = [tf.debugging.assert_equal(a, b, message=f"{op}: y_true and y_pred must have the same row "
                                                      "partition")
              for a, b in zip(y_true.nested_row_lengths(), y_pred.nested_row_lengths())]
    with tf.control_dependencies(checks):
        if y_pred.flat_values.shape.rank is None or y_pred.flat_values.shape.rank >= 2:
            values = fn(tf.identity(y_true.flat_values), tf.identity(y_pred.flat_values))
            return y_pred.with_flat_values(values)
        if y_pred.ragged_rank != 1:
            raise TypeError(_validate.message(
                op, "y_pred", "a RaggedTensor with a uniform last axis, or a ragged matrix",
                f"a ragged tensor of shape {y_pred.shape}"))
        labels = _validate.float_tensor(y_true.flat_values, op, "y_true")
        values = _validate.float_tensor(y_pred.flat_values, op, "y_pred")
        padded_pred = y_pred.with_flat_values(values).to_tensor(tf.constant(pred_padding, values.dtype))
        padded_true = y_true.with_flat_values(labels).to_tensor(tf.constant(0.0, labels.dtype),
                                                                shape=tf.shape(padded_pred))
        loss = fn(padded_true, padded_pred)
    if not mean:
        return loss
    lengths = tf.cast(y_pred.row_lengths(), loss.dtype)
    return loss * (tf.cast(tf.shape(padded_pred)[1], loss.dtype) / lengths)

"""Shared plumbing of ``lint`` and ``locate_nonfinite``: one training step as one graph.

Both tools look at the same thing: the user's function (or Keras model and
loss) *and its gradient*, traced once into a single ``FuncGraph`` by
:func:`trace_step`. The forward ops come first in the graph's creation order,
the gradient ops after them; ``TracedStep.n_forward`` is the boundary.

Where an op comes from is read from ``op.traceback`` (the Python stack at
op creation, which autograph maps back to the original source lines): the
innermost frame that belongs neither to a library (TensorFlow, Keras, NumPy,
the standard library, safeops itself) nor to this tracing code is the
user's line. Frames *outside* the traced step (the caller of ``lint``) are
ignored, so a gradient op made by TensorFlow's registry has no user frame.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import sysconfig
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from tensorflow.python.util import nest as _nest   # flatten_with_tuple_paths is not in tf.nest

_STEP_FRAME = "_safeops_traced_step"
_SAFEOPS_SCOPE = re.compile(r"(^|/)safeops(_\d+)?/")
_SAFEOPS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARY_DIRS = tuple(
    os.path.abspath(p) + os.sep
    for p in {sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib"),
              sysconfig.get_paths().get("stdlib"), os.path.dirname(os.__file__)}
    if p)


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` is library code rather than the user's."""
    if not filename or filename.startswith("<") or "__autograph_generated" in filename:
        return True
    path = os.path.abspath(filename)
    if path.startswith(_SAFEOPS_DIR + os.sep):
        return True
    return path.startswith(_LIBRARY_DIRS) or os.sep + "site-packages" + os.sep in path


def _display(filename: str, lineno: int) -> str:
    path = os.path.abspath(filename)
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            path = rel
    except ValueError:   # another drive on Windows
        pass
    return f"{path}:{lineno}"


def _step_frames(op: tf.Operation) -> list:
    """The frames of ``op``'s creation stack inside the traced step, outermost first."""
    frames = list(op.traceback or ())
    for i in range(len(frames) - 1, -1, -1):
        if frames[i].name == _STEP_FRAME:
            return frames[i + 1:]
    return frames


def user_frame(op: tf.Operation):
    """The innermost frame of ``op``'s traceback in the user's code, or None."""
    for frame in reversed(_step_frames(op)):
        if not is_library_file(frame.filename):
            return frame
    return None


def location(op: tf.Operation) -> str:
    """``'file:line'`` of the user's line that made ``op``.

    Ops made entirely inside a library (a Keras layer's own ops) have no such
    line: then the innermost non-TensorFlow frame is given, marked as library
    code, with the op's name scope (which names the Keras layer).
    """
    frame = user_frame(op)
    if frame is not None:
        return _display(frame.filename, frame.lineno)
    for frame in reversed(_step_frames(op)):
        if os.sep + "tensorflow" + os.sep in frame.filename or frame.filename.startswith("<"):
            continue
        if os.path.abspath(frame.filename).startswith(_SAFEOPS_DIR + os.sep):
            continue
        return f"{_display(frame.filename, frame.lineno)} (library code, op {op.name})"
    return f"(library code, op {op.name})"


def in_safeops_scope(op: tf.Operation) -> bool:
    """Ops made by a safeops op (under a ``safeops/`` name scope) are numerically safe."""
    return _SAFEOPS_SCOPE.search(op.name) is not None


# --------------------------------------------------------------------------- tracing


@dataclasses.dataclass
class TracedStep:
    """A traced forward + backward step.

    ``graph`` holds both passes; ops ``graph.get_operations()[:n_forward]`` are
    the forward pass. ``final`` are the names of the loss/output tensors and
    the gradients; ``fetch`` the names of the intermediate tensors the
    collecting variant returns (in the order it returns them).
    """

    graph: Any
    n_forward: int
    final: list
    gradient_of: dict
    fetch: list
    concrete: Any
    inputs: list
    note: str = ""


def is_keras_layer(fn: Any) -> bool:
    try:
        import keras
    except ImportError:   # pragma: no cover - keras is a dependency
        return False
    return isinstance(fn, keras.layers.Layer)


def _is_array(value: Any) -> bool:
    if isinstance(value, (tf.Tensor, np.ndarray, np.generic)):
        return not isinstance(value, tf.Variable)
    return False


def _unwrap(fn: Callable) -> Callable:
    """A ``tf.function`` is traced through its Python function, so its ops land in one flat graph."""
    return getattr(fn, "python_function", fn)


def trace_step(fn: Any, args: tuple, kwargs: dict, *, loss: Any = None, gradients: bool = True,
               collect: bool = False) -> TracedStep:
    """Traces ``fn(*args, **kwargs)`` (or a Keras model's step) and its gradient into one graph.

    Arrays and tensors among the arguments become graph inputs; other values
    (Python numbers, variables, objects) are closed over. For a Keras model,
    ``args`` are ``(x,)`` or ``(x, y)`` or ``(x, y, sample_weight)``; the
    scalar is ``loss(y, model(x, training=True))`` plus ``model.losses`` when
    ``loss`` is given, the compiled loss when the model has one, else the sum
    of the outputs. Gradients are taken with respect to the model's trainable
    variables, or for a plain function the float array arguments and every
    trainable variable it reads.
    """
    leaves = tf.nest.flatten((args, kwargs), expand_composites=False)
    feed_index = [i for i, v in enumerate(leaves) if _is_array(v)]
    feeds = [tf.convert_to_tensor(leaves[i]) for i in feed_index]
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in feeds]
    paths = ["/".join(str(k) for k in p) for p, _ in _nest.flatten_with_tuple_paths((args, kwargs))]
    labels = [_argument_label(paths[i]) for i in feed_index]
    model = fn if is_keras_layer(fn) else None
    python_fn = None if model is not None else _unwrap(fn)
    if model is not None and loss is not None and not callable(loss):
        import keras
        loss = keras.losses.get(loss)
    record: dict = {}

    def _safeops_traced_step(*fed):
        values = list(leaves)
        for i, t in zip(feed_index, fed):
            values[i] = t
        call_args, call_kwargs = tf.nest.pack_sequence_as((args, kwargs), values)
        graph = tf.compat.v1.get_default_graph()
        float_fed = [t for t in fed if t.dtype.is_floating]
        label = {t.name: lab for t, lab in zip(fed, labels)}
        with tf.GradientTape(watch_accessed_variables=True) as tape:
            for t in float_fed:
                tape.watch(t)
            if model is not None:
                targets = _model_objective(model, call_args, loss, record)
            else:
                out = python_fn(*call_args, **call_kwargs)
                targets = [t for t in tf.nest.flatten(out)
                           if isinstance(t, tf.Tensor) and t.dtype.is_floating]
        n_forward = len(graph.get_operations())
        grads: list = []
        sources: list = []
        if gradients and targets:
            sources = list(model.trainable_variables) if model is not None else \
                float_fed + [v for v in tape.watched_variables() if v.trainable]
            if sources:
                grads = tape.gradient(targets, sources)
        record["n_forward"] = n_forward
        record["final"] = [t.name for t in targets] + [g.name for g in grads if isinstance(g, tf.Tensor)]
        record["gradient_of"] = {g.name: label.get(getattr(s, "name", None)) or getattr(s, "path", None)
                                 or getattr(s, "name", "input")
                                 for g, s in zip(grads, sources) if isinstance(g, tf.Tensor)}
        if not collect:
            return [t for t in targets] + [g for g in grads if g is not None]
        fetch = [t for op in graph.get_operations() for t in op.outputs if t.dtype.is_floating]
        record["fetch"] = [t.name for t in fetch]
        return fetch

    step = tf.function(_safeops_traced_step, autograph=True)
    concrete = step.get_concrete_function(*specs)
    return TracedStep(graph=concrete.graph, n_forward=record["n_forward"], final=record["final"],
                      gradient_of=record["gradient_of"], fetch=record.get("fetch", []), concrete=concrete,
                      inputs=feeds, note=record.get("note", ""))


def _argument_label(path: str) -> str:
    """``'argument 0'``, ``"argument 'x'"`` or ``'argument 1[2]'`` from a nest path like ``'0/1/2'``."""
    parts = path.split("/")
    if parts[0] == "0" and len(parts) > 1:
        head = f"argument {parts[1]}"
    elif len(parts) > 1:
        head = f"argument '{parts[1]}'"
    else:
        return "input"
    return head + "".join(f"[{p}]" for p in parts[2:])


def _model_objective(model, call_args: tuple, loss, record: dict) -> list:
    x = call_args[0] if call_args else None
    y = call_args[1] if len(call_args) > 1 else None
    sample_weight = call_args[2] if len(call_args) > 2 else None
    y_pred = model(x, training=True)
    if y is not None and loss is not None:
        value = loss(y, y_pred)
        if sample_weight is not None and not hasattr(loss, "reduction"):
            value = value * tf.cast(sample_weight, value.dtype)
        value = tf.reduce_mean(value)
        extra = [tf.cast(v, value.dtype) for v in model.losses]
        return [value + tf.add_n(extra) if extra else value]
    if y is not None and getattr(model, "compiled", False) and getattr(model, "_compile_loss", None) is not None:
        return [model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)]
    record["note"] = "no loss: the gradient is that of the sum of the model's outputs"
    outputs = [t for t in tf.nest.flatten(y_pred) if t.dtype.is_floating]
    return [tf.add_n([tf.reduce_sum(t) for t in outputs])] if outputs else []


def example_targets(model, x, loss) -> list:
    """Candidate example targets for a model linted without ``y``: like its output, then class indices."""
    y_pred = model(x, training=False)
    out = tf.nest.flatten(y_pred)[0]
    like = np.zeros(out.shape, dtype=out.dtype.as_numpy_dtype)
    candidates = [like]
    if out.shape.rank and out.shape.rank >= 2:
        candidates.append(np.zeros(out.shape[:-1], dtype=np.int32))
    return candidates

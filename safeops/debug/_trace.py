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

The step differentiates what training differentiates: a model's trainable
variables (its loss being the compiled one, ``model.compute_loss``, unless
one is given), a plain function's trainable variables, or the float
arguments of a function that reads none, except those named like data
(``loss(y, logits)``: ``logits`` only).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import gc
import inspect
import os
import re
import sysconfig
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from tensorflow.python.util import nest as _nest   # flatten_with_tuple_paths is not in tf.nest

from safeops import _validate

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


def step_functions(op: tf.Operation) -> set:
    """Names of the functions on ``op``'s creation stack inside the traced step."""
    return {frame.name for frame in _step_frames(op)}


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


# Optimizer packages: an op created under one of these (below the user's apply_gradients call) is part of
# the optimizer's update rule (Adam's sqrt(v) + epsilon, ...), guarded by the optimizer, not the user's math.
_OPTIMIZER_DIRS = tuple(os.sep + os.path.join(*parts) + os.sep for parts in (
    ("keras", "src", "optimizers"), ("keras", "optimizers"), ("tf_keras", "src", "optimizers"),
    ("tensorflow", "python", "training"), ("tensorflow", "python", "keras", "optimizer_v2")))


def in_optimizer(op: tf.Operation) -> bool:
    """Whether ``op`` was made inside a Keras or TensorFlow optimizer called from the user's step.

    True when a frame below the user's innermost line (``opt.apply_gradients(...)``)
    is in an optimizer package.
    """
    frames = _step_frames(op)
    user = max((i for i, f in enumerate(frames) if not is_library_file(f.filename)), default=-1)
    return any(d in os.path.abspath(f.filename) for f in frames[user + 1:] for d in _OPTIMIZER_DIRS)


# --------------------------------------------------------------------------- tracing


@dataclasses.dataclass
class TracedStep:
    """A traced forward + backward step.

    ``graph`` holds both passes; ops ``graph.get_operations()[:n_forward]`` are
    the forward pass. ``final`` are the names of the loss/output tensors and
    the gradients; ``fetch`` the names of the intermediate tensors the
    collecting variant returns (in the order it returns them).
    ``differentiated`` names the graph tensors the gradient is taken with
    respect to (fed arguments, and the captured handles of variables);
    ``variables`` maps a captured variable handle's name to the variable's
    readable name (a Keras ``variable.path`` where there is one).
    ``fed_names`` maps each fed placeholder's tensor name to the user's name
    for that input (``'x'``, ``'y'``, ``"y['cls']"``, ``'sample_weight'`` for
    a model; the parameter's name, or ``'argument 0'``, for a function), and
    ``labels`` holds the placeholders that carry labels (a model's ``y``, a
    function's parameter named like ``y_true``): a non-finite value there is
    bad data, not the model's doing. ``n_model`` is the number of ops made by
    the model's call, before the loss (a model only; else ``n_forward``), and
    ``model_outputs`` the names of its float outputs.
    """

    graph: Any
    n_forward: int
    final: list
    gradient_of: dict
    fetch: list
    concrete: Any
    inputs: list
    note: str = ""
    differentiated: set = dataclasses.field(default_factory=set)
    variables: dict = dataclasses.field(default_factory=dict)
    n_targets: int = 0
    fed_names: dict = dataclasses.field(default_factory=dict)
    labels: set = dataclasses.field(default_factory=set)
    n_model: int = 0
    model_outputs: list = dataclasses.field(default_factory=list)


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


#: Parameter names of a plain function that hold data, not parameters: a training step never
#: differentiates with respect to them (``loss(y_true, y_pred)``: only ``y_pred``).
DATA_ARGUMENT_NAMES = frozenset({"y", "y_true", "ytrue", "yt", "label", "labels", "target", "targets",
                                 "sample_weight", "sample_weights", "mask"})
#: Those of :data:`DATA_ARGUMENT_NAMES` that hold the labels (targets, ``y_true`` of a loss).
LABEL_ARGUMENT_NAMES = DATA_ARGUMENT_NAMES - {"sample_weight", "sample_weights", "mask"}

_LOSS_EXPECTED = ("a callable loss(y_true, y_pred), a Keras loss or its name, or a dict (by output name) "
                  "or list (by output position) of them")


def resolve_loss(loss: Any, op: str) -> Any:
    """``loss`` as a training step calls it: each leaf a ``keras.losses.Loss``; dicts and lists kept.

    Keras' ``compile`` wraps a plain function (or a loss name that resolves to
    one) in ``LossFunctionWrapper``, whose ``__call__`` converts ``y_true``
    and ``y_pred`` to the loss dtype and reduces; doing the same here means the
    traced loss is the one training runs (under mixed precision the float16
    prediction is cast to float32, which hides the logits Keras' crossentropy
    would otherwise recover). Raises ``ValueError`` naming ``op`` for a loss
    Keras cannot interpret.
    """
    if loss is None:
        return None
    import keras
    if isinstance(loss, collections.abc.Mapping):
        return {k: resolve_loss(v, op) for k, v in loss.items()}
    if isinstance(loss, collections.abc.Sequence) and not isinstance(loss, str):
        return [resolve_loss(v, op) for v in loss]
    if isinstance(loss, keras.losses.Loss):
        return loss
    resolved = loss
    if not callable(loss):
        try:
            resolved = keras.losses.get(loss)
        except (ValueError, TypeError):
            resolved = None
        if resolved is None:
            raise ValueError(_validate.message(op, "loss", _LOSS_EXPECTED, repr(loss)))
        if isinstance(resolved, keras.losses.Loss):
            return resolved
    name = loss if isinstance(loss, str) else getattr(resolved, "__name__", type(resolved).__name__)
    return _keras_function_wrapper()(resolved, name="loss" if name == "<lambda>" else name)


def _keras_function_wrapper():
    """Keras' own ``LossFunctionWrapper`` (what ``compile`` wraps a function in); not exported by Keras 3."""
    import keras
    wrapper = getattr(keras.losses, "LossFunctionWrapper", None)
    if wrapper is None:
        from keras.src.losses.losses import LossFunctionWrapper as wrapper   # noqa: N813 - Keras' name
    return wrapper


class LossStructureError(ValueError):
    """A dict or list of losses that does not match the model's outputs."""


def output_losses(model, loss, y_pred, op: str = "safeops.debug") -> list:
    """``[(output name, loss or None, position)]`` for each output: a dict by name, a list by position.

    A single loss applies to every output (as in Keras' ``compile``).
    Raises :class:`LossStructureError` when a dict names an unknown output
    or a list's length is not the number of outputs.
    """
    names = _output_names(model, y_pred)
    if isinstance(loss, collections.abc.Mapping):
        unknown = sorted(set(loss) - set(names))
        if unknown:
            raise LossStructureError(_validate.message(
                op, "loss", f"keyed by the model's output names {names}", f"unknown key(s) {unknown}"))
        return [(n, loss.get(n), i) for i, n in enumerate(names)]
    if isinstance(loss, collections.abc.Sequence) and not isinstance(loss, str):
        if len(loss) != len(names):
            raise LossStructureError(_validate.message(op, "loss", f"a list of {len(names)} (one per output "
                                                       f"{names})", f"a list of {len(loss)}"))
        return [(n, l, i) for i, (n, l) in enumerate(zip(names, loss))]
    return [(n, loss, i) for i, n in enumerate(names)]


def _output_names(model, y_pred) -> list:
    if isinstance(y_pred, collections.abc.Mapping):
        declared = list(getattr(model, "output_names", None) or [])
        return declared if set(declared) == set(y_pred) else sorted(y_pred)
    n = len(tf.nest.flatten(y_pred))
    declared = list(getattr(model, "output_names", None) or [])
    if len(declared) == n:
        return declared
    return [model.name] if n == 1 else [f"output_{i}" for i in range(n)]


def _per_output(value, name: str, position: int, n_outputs: int):
    """The part of ``y`` or ``sample_weight`` that belongs to one output (dict by name, list by position)."""
    if value is None:
        return None
    if isinstance(value, collections.abc.Mapping):
        if name not in value:
            raise ValueError(f"y has no entry for output '{name}' (keys {sorted(value)})")
        return value[name]
    if isinstance(value, (list, tuple)) and n_outputs > 1:
        return value[position]
    return value


def _flat_outputs(y_pred, names: list) -> list:
    if isinstance(y_pred, collections.abc.Mapping):
        return [y_pred[n] for n in names]
    return tf.nest.flatten(y_pred)


def trace_step(fn: Any, args: tuple, kwargs: dict, *, loss: Any = None, gradients: bool = True,
               collect: bool = False, op: str = "safeops.debug") -> TracedStep:
    """Traces ``fn(*args, **kwargs)`` (or a Keras model's step) and its gradient into one graph.

    Arrays and tensors among the arguments become graph inputs; other values
    (Python numbers, variables, objects) are closed over. For a Keras model,
    ``args`` are ``(x,)`` or ``(x, y)`` or ``(x, y, sample_weight)``, with
    float arrays cast to ``keras.backend.floatx()`` as ``fit`` does; the
    scalar is the sum over outputs of ``loss(y, model(x, training=True))``
    plus ``model.losses`` when ``loss`` (already :func:`resolve_loss`-ed) is
    given, the compiled loss (``model.compute_loss``, what ``fit`` runs) when
    the model has one, else the sum of the outputs.

    Gradients are taken with respect to what training differentiates: a
    model's trainable variables; for a plain function the trainable variables
    it reads, or when it reads none its float array arguments except those
    whose parameter name says they hold data (:data:`DATA_ARGUMENT_NAMES`).
    """
    if not callable(fn):
        # Else autograph failed inside the trace: "'int' object is not callable", naming no argument.
        raise TypeError(_validate.message(op, "fn", "a function or a Keras model", repr(fn)[:80]))
    if not isinstance(gradients, (bool, np.bool_)):
        raise TypeError(_validate.message(op, "gradients", "True or False", repr(gradients)[:80]))
    model = fn if is_keras_layer(fn) else None
    if model is not None:
        args = _as_fit_feeds(args)
    leaves = tf.nest.flatten((args, kwargs), expand_composites=False)
    feed_index = [i for i, v in enumerate(leaves) if _is_array(v)]
    feeds = [tf.convert_to_tensor(leaves[i]) for i in feed_index]
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in feeds]
    paths = ["/".join(str(k) for k in p) for p, _ in _nest.flatten_with_tuple_paths((args, kwargs))]
    labels = [_argument_label(paths[i]) for i in feed_index]
    python_fn = None if model is not None else _unwrap(fn)
    if model is not None:
        fed_names = [_model_input_label(paths[i]) for i in feed_index]
        label_args = {k for k, i in enumerate(feed_index) if paths[i].split("/")[1:2] == ["1"]}
        data_args: set = set()
    else:
        params = _parameter_names(python_fn, paths, feed_index)
        fed_names = [f"argument '{name}'" if name else label for name, label in zip(params, labels)]
        data_args = {k for k, name in enumerate(params) if name in DATA_ARGUMENT_NAMES}
        label_args = {k for k, name in enumerate(params) if name in LABEL_ARGUMENT_NAMES}
    record: dict = {}

    def _safeops_traced_step(*fed):
        values = list(leaves)
        for i, t in zip(feed_index, fed):
            values[i] = t
        call_args, call_kwargs = tf.nest.pack_sequence_as((args, kwargs), values)
        graph = tf.compat.v1.get_default_graph()
        # The float arguments a plain function may be differentiated with respect to (not y, labels, ...).
        float_fed = [t for k, t in enumerate(fed) if t.dtype.is_floating and k not in data_args]
        label = {t.name: lab for t, lab in zip(fed, labels)}
        with tf.GradientTape(watch_accessed_variables=True) as tape:
            for t in float_fed:
                tape.watch(t)
            if model is not None:
                targets = _model_objective(model, call_args, loss, record, op)
            else:
                out = python_fn(*call_args, **call_kwargs)
                targets = [t for t in tf.nest.flatten(out)
                           if isinstance(t, tf.Tensor) and t.dtype.is_floating]
        n_forward = len(graph.get_operations())
        grads: list = []
        sources: list = []
        if gradients and targets:
            if model is not None:
                sources = list(model.trainable_variables)
            else:   # a training step differentiates the variables; only a pure function its arguments
                sources = [v for v in tape.watched_variables() if v.trainable] or float_fed
            if sources:
                grads = tape.gradient(targets, sources)
        record["n_forward"] = n_forward
        record.setdefault("n_model", n_forward)
        record["fed_names"] = {t.name: name for t, name in zip(fed, fed_names)}
        record["labels"] = {t.name for k, t in enumerate(fed) if k in label_args}
        record["n_targets"] = len(targets)
        record["final"] = [t.name for t in targets] + [g.name for g in grads if isinstance(g, tf.Tensor)]
        # Labelled after tracing: the graph lists the variables it captured only once it is complete.
        record["gradient_of"] = {g.name: label.get(getattr(s, "name", None)) or s
                                 for g, s in zip(grads, sources) if isinstance(g, tf.Tensor)}
        record["differentiated"] = {t.name for t in float_fed if any(t is s for s in sources)} | \
            _captured_handles(graph, [s for s in sources if not isinstance(s, tf.Tensor)])
        if not collect:
            return [t for t in targets] + [g for g in grads if g is not None]
        fetch = [t for op_ in graph.get_operations() for t in op_.outputs if t.dtype.is_floating]
        record["fetch"] = [t.name for t in fetch]
        return fetch

    step = tf.function(_safeops_traced_step, autograph=True)
    try:
        concrete = step.get_concrete_function(*specs)
    except Exception as e:   # noqa: BLE001 - autograph wraps errors in its own type; re-raise the user's
        if "user_error" in record:   # autograph cannot re-create our error types: raise the original
            raise record["user_error"] from e
        raise
    names = _variable_names(concrete.graph)
    gradient_of = _unique_labels({g: s if isinstance(s, str) else _variable_label(s, names)
                                  for g, s in record["gradient_of"].items()})
    return TracedStep(graph=concrete.graph, n_forward=record["n_forward"], final=record["final"],
                      gradient_of=gradient_of, fetch=record.get("fetch", []), concrete=concrete,
                      inputs=feeds, note=record.get("note", ""), differentiated=record["differentiated"],
                      variables=_captured_variable_labels(concrete.graph, names),
                      n_targets=record["n_targets"], fed_names=record["fed_names"], labels=record["labels"],
                      n_model=record["n_model"], model_outputs=record.get("model_outputs", []))


def _as_fit_feeds(args: tuple) -> tuple:
    """Float arrays cast to ``floatx``, as Keras' data adapters do for ``fit`` (float64 labels from
    ``to_categorical`` would otherwise meet a float32 prediction in ``y * log(p)``)."""
    import keras
    floatx = keras.backend.floatx()

    def cast(v):
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.dtype != floatx:
            return v.astype(floatx)
        if isinstance(v, tf.Tensor) and v.dtype.is_floating and v.dtype != floatx:
            return tf.cast(v, floatx)
        return v

    return tuple(tf.nest.map_structure(cast, a) for a in args)


def _parameter_names(python_fn, paths: list, feed_index: list) -> list:
    """For each fed tensor, the name of the parameter of ``python_fn`` it is passed as (None if unknown)."""
    try:
        params = list(inspect.signature(python_fn).parameters.values())
    except (TypeError, ValueError):   # a builtin or C callable: no names to go by
        return [None] * len(feed_index)
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    out = []
    for i in feed_index:
        parts = paths[i].split("/")
        name = None
        if len(parts) >= 2:
            if parts[0] == "0":   # positional: ('0', index, ...)
                name = positional[int(parts[1])] if int(parts[1]) < len(positional) else None
            else:                 # keyword: ('1', name, ...)
                name = parts[1]
        out.append(name)
    return out


def _model_input_label(path: str) -> str:
    """``'x'``, ``'y'``, ``"y['cls']"``, ``'x[0]'`` or ``'sample_weight'`` from a model step's nest path."""
    parts = path.split("/")
    if parts[0] != "0" or len(parts) < 2 or not parts[1].isdigit():
        return _argument_label(path)
    index = int(parts[1])
    head = ("x", "y", "sample_weight")[index] if index < 3 else f"argument {index}"
    return head + "".join(f"[{p}]" if p.isdigit() else f"['{p}']" for p in parts[2:])


def _variable_names(graph) -> dict:
    """``id(tf.Variable) -> Keras variable.path`` for the variables the step captured.

    A Keras 3 variable wraps a ``tf.Variable`` named by the TensorFlow name
    scope at creation ('net/kernel:0' for every Dense of a subclassed model);
    the tape sees only the ``tf.Variable``, which keeps no link back. The
    owners are found among the live Keras variables (one pass over the
    objects the garbage collector tracks), only when the step captured any.
    """
    if not graph.variables:
        return {}
    try:
        import keras
    except ImportError:   # pragma: no cover
        return {}
    wanted = {id(v) for v in graph.variables}
    out = {}
    for obj in gc.get_objects():
        if isinstance(obj, keras.Variable):
            inner = getattr(obj, "_value", None)
            if id(inner) in wanted:
                out[id(inner)] = obj.path
    return out


def _variable_label(v, names: dict) -> str:
    if id(v) in names:
        return names[id(v)]
    label = getattr(v, "path", None) or getattr(v, "name", None) or "input"
    return label[:-2] if label.endswith(":0") else label


def _unique_labels(labels: dict) -> dict:
    """Suffixes ' (2)', ' (3)' to repeated labels, so that no two gradients read alike."""
    seen: dict = {}
    out = {}
    for key, label in labels.items():
        seen[label] = seen.get(label, 0) + 1
        out[key] = label if seen[label] == 1 else f"{label} ({seen[label]})"
    return out


def _captures(graph) -> list:
    try:
        return list(graph.captures)
    except (AttributeError, TypeError):   # pragma: no cover - TensorFlow internals moved
        return []


def _captured_handles(graph, variables: list) -> set:
    """Names of the placeholders through which ``graph`` reads ``variables``."""
    handles = {id(getattr(v, "handle", None)) for v in variables}
    return {internal.name for external, internal in _captures(graph) if id(external) in handles}


def _captured_variable_labels(graph, names: dict) -> dict:
    by_handle = {id(v.handle): v for v in graph.variables if hasattr(v, "handle")}
    return {internal.name: _variable_label(by_handle[id(external)], names)
            for external, internal in _captures(graph) if id(external) in by_handle}


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


def _model_objective(model, call_args: tuple, loss, record: dict, op: str) -> list:
    x = call_args[0] if call_args else None
    y = call_args[1] if len(call_args) > 1 else None
    sample_weight = call_args[2] if len(call_args) > 2 else None
    y_pred = _call_model(model, x, op, record)
    record["n_model"] = len(tf.compat.v1.get_default_graph().get_operations())
    record["model_outputs"] = [t.name for t in tf.nest.flatten(y_pred)
                               if isinstance(t, tf.Tensor) and t.dtype.is_floating]
    if y is not None and loss is not None:
        try:
            pairs = output_losses(model, loss, y_pred, op)
        except LossStructureError as e:
            record["user_error"] = e
            raise
        preds = _flat_outputs(y_pred, [name for name, _, _ in pairs])
        values = []
        for name, loss_i, position in pairs:
            if loss_i is None:
                continue
            y_i = _per_output(y, name, position, len(pairs))
            w_i = _per_output(sample_weight, name, position, len(pairs))
            values.append(loss_i(y_i, preds[position], sample_weight=w_i))
        if not values:
            raise ValueError(_validate.message(op, "loss", "a loss for at least one output", repr(loss)))
        value = tf.add_n(values) if len(values) > 1 else values[0]
        extra = [tf.cast(v, value.dtype) for v in model.losses]
        return [value + tf.add_n(extra) if extra else value]
    compiled = getattr(model, "compiled", False) and getattr(model, "_compile_loss", None) is not None
    if y is not None and compiled:
        return [model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)]
    record["note"] = "no loss: the gradient is that of the sum of the model's outputs"
    outputs = [t for t in tf.nest.flatten(y_pred) if t.dtype.is_floating]
    return [tf.add_n([tf.reduce_sum(t) for t in outputs])] if outputs else []


class InputError(ValueError):
    """The model rejected the user's ``x``: the user's argument, not the loss, is wrong."""


def _call_model(model, x, op: str, record: dict):
    """``model(x, training=True)``, with Keras' shape error turned into one about the user's ``x``."""
    try:
        return model(x, training=True)
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        shapes = tf.nest.map_structure(
            lambda t: tuple(t.shape) if hasattr(t, "shape") else type(t).__name__, x)
        try:
            wanted = model.input_shape
        except (AttributeError, ValueError):
            wanted = None
        expected = "an input the model accepts" + (f" (shape {wanted})" if wanted is not None else "")
        # Keras' first line is "Exception encountered when calling ..."; the line saying what was expected
        # is the readable one.
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))   # Keras colours its messages for terminals
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()] or [type(e).__name__]
        detail = next((ln for ln in lines if "expected" in ln or "incompatible" in ln), lines[0])[:300]
        record["user_error"] = InputError(_validate.message(op, "x", expected, f"shape {shapes}: {detail}"))
        raise record["user_error"] from e


def example_targets(model, x, loss, op: str = "safeops.debug") -> Any:
    """Example targets for a model linted without ``y``, one per output with a loss, shaped like ``y_pred``.

    For each output, zeros like the output are tried first, then class
    indices (``int32``, the output's shape without its last axis); the first
    that the output's loss accepts is used. ``loss`` is the explicit loss or
    the model's compiled ``model.loss``. Raises ``ValueError`` saying which
    output's loss accepted neither.
    """
    import keras
    y_pred = model(x, training=False)
    pairs = output_losses(model, loss, y_pred, op)
    preds = _flat_outputs(y_pred, [name for name, _, _ in pairs])
    targets = []
    for name, loss_i, position in pairs:
        out = preds[position]
        candidates = [np.zeros(out.shape, dtype=keras.backend.floatx())]
        if out.shape.rank and out.shape.rank >= 2:
            candidates.append(np.zeros(out.shape[:-1], dtype=np.int32))
        if loss_i is None:
            targets.append(candidates[0])
            continue
        try:
            loss_i = resolve_loss(loss_i, "safeops.debug")
        except ValueError:   # a name only Keras' compile resolves ('crossentropy'): let compute_loss try
            targets.append(candidates[0])
            continue
        errors = []
        for candidate in candidates:
            try:
                tf.function(lambda p, c=candidate, l=loss_i: l(c, p)).get_concrete_function(
                    tf.TensorSpec(out.shape, out.dtype))
            except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
                errors.append(str(e).strip().splitlines()[-1].strip()[:200] if str(e).strip() else repr(e))
                continue
            targets.append(candidate)
            break
        else:
            raise ValueError(f"the loss of output '{name}' accepted neither zeros shaped like the output "
                             f"nor class indices ({errors[-1]})")
    if isinstance(y_pred, collections.abc.Mapping):
        return {name: t for (name, _, _), t in zip(pairs, targets)}
    return targets[0] if len(targets) == 1 else targets

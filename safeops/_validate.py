"""The validation helper: one way to take arguments in, one message shape out.

Every public op converts its arguments here and every error it raises is
built by :func:`message`, so they all read the same way::

    safeops.math.log: x must be a floating-point tensor (float16, bfloat16,
    float32 or float64), got int32

Checks that need only shapes and dtypes run in Python at trace time, so they
also fire inside ``tf.function(jit_compile=True)``. Checks that need values
are graph ops (``tf.debugging.assert_*``): they run in eager mode and inside
``tf.function``. TensorFlow 2.21 drops assert ops inside ``jit_compile=True``
functions, so value checks are silent there; :func:`set_validation` turns them
off everywhere for speed.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from safeops import _dtypes

_FLOAT_NAMES = "a floating-point tensor (float16, bfloat16, float32 or float64)"

_validation = {"enabled": True}


def set_validation(enabled: bool) -> None:
    """Turns the value checks (graph assertions) of every op on or off.

    Shape and dtype checks always run; they cost nothing at run time. The
    setting is read when an op is traced: a ``tf.function`` already traced
    keeps the checks it was traced with until it traces again.
    """
    if not isinstance(enabled, (bool, np.bool_)):
        # bool("no") is True: a string or number would silently mean "on".
        raise TypeError(message("safeops.set_validation", "enabled", "True or False", repr(enabled)))
    _validation["enabled"] = bool(enabled)


def validation_enabled() -> bool:
    """Whether value checks are currently on (the default)."""
    return _validation["enabled"]


def is_real_number(value: Any) -> bool:
    """A Python or NumPy real number that is not a bool (NaN and inf included: range checks refuse them)."""
    real = isinstance(value, (int, float, np.integer, np.floating))
    return real and not isinstance(value, (bool, np.bool_))


def message(op: str, arg: str, expected: str, got: Any, verb: str = "be") -> str:
    """The one error-message shape: ``'<op>: <arg> must be <expected>, got <got>'``.

    ``verb`` replaces "be" where another reads better or where the wording
    of the API being replaced is kept ("must have the same shape", as Keras).
    """
    return f"{op}: {arg} must {verb} {expected}, got {got}"


@contextlib.contextmanager
def op_scope(op: str, name: str | None) -> Iterator[_Scope]:
    """Opens ``safeops/<name>`` so a user's graph shows which safeops op made what.

    ``op`` is the public name (``'safeops.math.log'``); its last part is the
    default scope name when the user gives none. Yields a :class:`_Scope`
    whose ``output`` gives the op's result the user's ``name``.
    """
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    outer = graph.get_name_scope() if graph is not None else ""
    with tf.name_scope("safeops"), tf.name_scope(name or op.rsplit(".", 1)[-1]):
        yield _Scope(graph, outer, name)


class _Scope:
    """Names an op's result ``name`` in the caller's scope, as TensorFlow names its ops.

    ``tf.nn.sigmoid_cross_entropy_with_logits(..., name="loss").op.name`` is
    ``"loss"`` in a graph (TensorFlow's own tests check it); the safeops op
    builds its ops under ``safeops/loss/``, so its result gets one more op,
    an identity named ``name`` in the scope the call was made from. Only in
    a graph and only when a name is given: eager tensors have no op names,
    and Grappler removes the identity.
    """

    def __init__(self, graph, outer: str, name: str | None):
        self._graph, self._outer, self._name = graph, outer, name

    def output(self, result):
        if self._graph is None or not self._name or not isinstance(result, tf.Tensor):
            return result
        with self._graph.name_scope(self._outer + "/" if self._outer else ""):
            return tf.identity(result, name=self._name)


def _dtype_name(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        return getattr(dtype, "name", str(dtype))
    return type(value).__name__


def float_tensor(value: Any, op: str, arg: str, dtype: tf.DType | None = None,
                 cast: bool = False) -> tf.Tensor:
    """Converts ``value`` to a float tensor, or raises ``TypeError`` naming ``arg``.

    Tensors and variables keep their dtype, which must be one of the four
    float dtypes (``dtype``, when given, the dtype of the other operand of a
    binary op). NumPy arrays and scalars keep theirs too, unless ``dtype``
    is given: then, as TensorFlow converts a non-tensor operand to the
    dtype of the tensor beside it, a float or integer array becomes
    ``dtype`` (``xlogy(np.float64(2), float32_tensor)`` is float32). Python
    floats become ``dtype`` when given, else float32 as in TensorFlow, and
    a list of NumPy scalars keeps their dtype (as ``tf.convert_to_tensor``).
    ``cast=True`` casts float, integer and bool tensors to ``dtype`` as well, for
    the arguments that TensorFlow's kernel casts (the labels of
    ``softmax_cross_entropy_with_logits``). SparseTensors are refused (only
    ``sqrt`` takes one, as TensorFlow's). Integers (but for the conversions
    above), booleans, strings and complex numbers are refused: ``tf.math``
    refuses them too, only with a message that names the kernel.
    """
    if isinstance(value, tf.SparseTensor):
        raise TypeError(message(
            op, arg, "a dense " + _FLOAT_NAMES[2:], "a SparseTensor (tf.sparse.to_dense first)"))
    if isinstance(value, tf.RaggedTensor):   # the ops that take one read its flat values first
        raise TypeError(message(op, arg, "a dense " + _FLOAT_NAMES[2:],
                                "a RaggedTensor, which this op does not take, as TensorFlow's does not"))
    if cast and dtype is not None and isinstance(value, (list, tuple, np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype.kind == "b":     # TensorFlow's op casts bool labels too
            return tf.constant(array.astype(dtype.as_numpy_dtype), dtype=dtype)
    if isinstance(value, (np.ndarray, np.generic)) and dtype is not None and value.dtype.kind in "fiu":
        return tf.constant(value, dtype=dtype)
    if isinstance(value, (tf.Tensor, tf.Variable)) or hasattr(value, "dtype"):
        got = tf.as_dtype(value.dtype) if _is_tf_dtype_like(value.dtype) else None
        if cast and dtype is not None:
            if got is not None and (got.is_floating or got.is_integer or got == tf.bool):
                return tf.cast(value, dtype)
            raise TypeError(message(op, arg, "a float, integer or bool tensor", _dtype_name(value)))
        if got is None or got not in _dtypes.FLOAT_DTYPES:
            raise TypeError(message(op, arg, _FLOAT_NAMES, _dtype_name(value)))
        if dtype is not None and got != dtype:
            raise TypeError(message(op, arg, f"of dtype {dtype.name} like the other operand", got.name))
        return tf.convert_to_tensor(value, dtype=got)
    if isinstance(value, bool) or not isinstance(value, (float, int, list, tuple)):
        raise TypeError(message(op, arg, _FLOAT_NAMES, _dtype_name(value)))
    array = np.asarray(value)
    if array.dtype.kind != "f":
        if array.dtype.kind in "iu" and dtype is not None:
            # A Python int next to a float tensor (``xlogy(0, y)``) is a
            # scalar literal, as TensorFlow treats it.
            return tf.constant(array, dtype=dtype)
        raise TypeError(message(op, arg, _FLOAT_NAMES, f"{_converted_dtype_name(value, array)} {value!r}"))
    if dtype is None and isinstance(value, (list, tuple)):
        # As tf.convert_to_tensor: Python floats give float32, NumPy scalars
        # keep their dtype ([np.float64(1.0)] is float64).
        try:
            converted = tf.convert_to_tensor(value)
        except (TypeError, ValueError):
            converted = None
        if converted is not None and converted.dtype in _dtypes.FLOAT_DTYPES:
            return converted
    return tf.constant(array, dtype=dtype or tf.float32)


def _converted_dtype_name(value: Any, array: np.ndarray) -> str:
    """The dtype TensorFlow gives ``value`` (a Python int is int32, NumPy's int64), else NumPy's name."""
    try:
        return tf.convert_to_tensor(value).dtype.name
    except (TypeError, ValueError):
        return array.dtype.name


def _is_tf_dtype_like(dtype: Any) -> bool:
    try:
        tf.as_dtype(dtype)
    except TypeError:
        return False
    return True


def _holds_python_floats(value: Any) -> bool:
    """Whether ``value`` is a Python float, or a (nested) list or tuple that NumPy reads as floats."""
    if isinstance(value, bool) or not isinstance(value, (float, int, list, tuple)):
        return False
    try:
        return np.asarray(value).dtype.kind == "f"
    except ValueError:  # ragged nesting: float_tensor reports it
        return False


def float_tensors(op: str, **named: Any) -> list[tf.Tensor]:
    """Converts several operands that must share one float dtype.

    Tensors fix the dtype; NumPy arrays, Python scalars and lists adopt it
    (a NumPy array sets it only where no operand is a tensor). Mismatched
    tensor dtypes raise ``TypeError`` naming the second argument.
    """
    dtype = None
    arrays = [(arg, v) for arg, v in named.items() if isinstance(v, (np.ndarray, np.generic))]
    tensors = [(arg, v) for arg, v in named.items()
               if hasattr(v, "dtype") and not isinstance(v, (np.ndarray, np.generic))]
    if tensors or arrays:
        arg, value = (tensors or arrays)[0]
        dtype = float_tensor(value, op, arg).dtype
    else:
        # Only Python numbers and lists: the first that holds floats sets the
        # dtype for the others, as TensorFlow converts ``divide_no_nan(1.0, 1)``
        # (float32; float64 for a list of np.float64 scalars).
        for arg, value in named.items():
            if _holds_python_floats(value):
                dtype = float_tensor(value, op, arg).dtype
                break
    return [float_tensor(value, op, arg, dtype) for arg, value in named.items()]


def broadcast_shape(op: str, a_name: str, a: tf.Tensor, b_name: str, b: tf.Tensor) -> tf.TensorShape:
    """Static broadcast check of two operands; :class:`ArgumentError` naming both if they cannot."""
    try:
        return tf.broadcast_static_shape(a.shape, b.shape)
    except ValueError:
        raise ArgumentError(
            message(op, f"{a_name} and {b_name}", "broadcast-compatible shapes",
                    f"{a.shape} and {b.shape}")
        ) from None


class ArgumentError(tf.errors.InvalidArgumentError, ValueError):
    """A shape, rank or axis that cannot work: a ``ValueError`` and a ``tf.errors.InvalidArgumentError``.

    TensorFlow raises either for the same mistake, depending on the op and on
    whether it runs eagerly (``tf.nn.softmax(x, axis=5)`` eagerly raises
    ``InvalidArgumentError``, ``tf.reduce_sum`` while tracing a function
    ``ValueError``; shapes that do not broadcast are an
    ``InvalidArgumentError`` eagerly and a ``ValueError`` while tracing);
    safeops raises at once in every mode, and code written to catch either
    keeps working.

    Raised as ``ArgumentError(text)``. The signature is that of TensorFlow's
    errors because autograph, when a traced function raises, re-creates an
    ``OpError`` as ``type(e)(node_def, op, message, payloads)`` if its
    ``__init__`` takes exactly those arguments (``create_exception`` in
    ``tensorflow/python/autograph/impl/api.py``, TensorFlow 2.21), and
    raises a ``StagingError`` otherwise: with ``__init__(self, text)``,
    ``tf.function(lambda x: softmax(x, axis=5))`` raised neither a
    ``ValueError`` nor an ``InvalidArgumentError``.
    """

    def __init__(self, node_def, op=None, message=None, *args):
        text = node_def if message is None else message
        tf.errors.InvalidArgumentError.__init__(self, None, None, text)
        self.args = (text,)

    def __reduce__(self):
        return type(self), (self.message,)


class AxisError(ArgumentError):
    """An axis out of range (see :class:`ArgumentError`)."""


def axis_in_range(op: str, axis: Any, rank: int | None, arg: str = "axis") -> None:
    """Checks static integer axes against a known rank; :class:`AxisError` if out of range.

    A float or bool axis raises ``TypeError`` naming ``arg`` (whatever the rank).
    """
    if isinstance(axis, (tf.Tensor, tf.Variable)) and not axis.dtype.is_integer:
        raise TypeError(message(op, arg, "an int or a list of ints", f"a {axis.dtype.name} tensor"))
    if axis is None or isinstance(axis, (tf.Tensor, tf.Variable)):
        return
    try:
        array = np.asarray(axis)
    except ValueError:   # ragged nesting such as [[0], 1]
        array = np.asarray(None)
    # () and [] are "no axes", float64 to NumPy; nested lists: TensorFlow's graph mode refuses them too
    if (array.size and array.dtype.kind in "fbcUSO") or array.ndim > 1:
        raise TypeError(message(op, arg, "an int or a list of ints", repr(axis)))
    if rank is None:
        return
    for a in np.atleast_1d(array):
        if rank == 0:   # as TensorFlow's reductions: a scalar has no axis 0
            raise AxisError(message(op, arg, "an axis of the input, but a rank-0 input has none", int(a)))
        if not -rank <= int(a) < rank:
            raise AxisError(message(op, arg, f"in [-{rank}, {rank}) for a rank-{rank} input", int(a)))
    listed = [int(a) % rank for a in np.atleast_1d(array)]
    if len(set(listed)) < len(listed):   # TensorFlow's reductions refuse them too, from their kernel
        raise AxisError(message(op, arg, f"distinct axes of a rank-{rank} input", repr(axis)))


def static_axis(op: str, axis: Any, rank: int | None, arg: str = "axis", many: bool = False,
                runtime: bool = True) -> Any:
    """An axis argument as Python ints, checked against ``rank``.

    Takes what TensorFlow and Keras take: Python and NumPy integers, and
    integer tensors whose value is known while tracing (``tf.constant(1)``);
    with ``many`` also lists, tuples and arrays of them (a tuple comes back)
    and ``None`` (every axis). A scalar integer tensor known only when the
    graph runs is returned as it is (the op's kernels check it then), or
    refused with ``runtime=False`` (an op compiled per axis).
    Bools, floats and several axes where one is expected raise ``TypeError``
    naming ``arg``; an axis out of range raises :class:`AxisError`.
    """
    one = "an int" if not many else "an int, a list of ints or None"
    if axis is None and many:
        return None
    if isinstance(axis, (tf.Tensor, tf.Variable)):
        if not axis.dtype.is_integer:
            raise TypeError(message(op, arg, one, f"a {axis.dtype.name} tensor"))
        known = tf.get_static_value(axis)
        if known is None:
            if axis.shape.rank == 0 and runtime:
                return axis
            if axis.shape.rank != 0 and not many:
                raise TypeError(message(op, arg, one, f"a tensor of shape {axis.shape}"))
            raise TypeError(message(op, arg, f"{one}, known when the function is traced", "a runtime tensor"))
        axis = known
    if isinstance(axis, (np.ndarray, list, tuple)):
        try:
            values = np.asarray(axis)
        except ValueError:   # ragged nesting such as [[0], 1]
            raise TypeError(message(op, arg, one, repr(axis))) from None
        if values.ndim == 0:
            axis = values[()]
        elif not many or values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
            raise TypeError(message(op, arg, one, repr(axis)))
        else:
            axes = tuple(int(a) for a in values)
            axis_in_range(op, axes, rank, arg)
            return axes
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(message(op, arg, one, repr(axis)))
    axis_in_range(op, int(axis), rank, arg)
    return int(axis)


def scan_flags(op: str, exclusive: Any, reverse: Any) -> tuple[bool, bool]:
    """``exclusive`` and ``reverse`` of a running scan (``cumprod``, ``cumulative_logsumexp``) as bools."""
    for arg, flag in (("exclusive", exclusive), ("reverse", reverse)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(message(op, arg, "a bool", repr(flag)))
    return bool(exclusive), bool(reverse)


def scan_input(op: str, x: Any, axis: Any) -> tuple[tf.Tensor, Any]:
    """``(x, axis)`` of a running scan: a float tensor of rank >= 1 and its axis (see :func:`static_axis`)."""
    t = float_tensor(x, op, "x")
    if t.shape.rank == 0:
        raise ArgumentError(message(op, "x", "a tensor of rank >= 1", "a scalar"))
    return t, static_axis(op, axis, t.shape.rank)


def assert_that(condition: tf.Tensor, op: str, arg: str, expected: str,
                got: tf.Tensor | Callable[[], tf.Tensor] | None = None, received: str | None = None) -> list:
    """A graph assertion with the standard message, or ``[]`` when checks are off.

    Returns a list of control dependencies for ``tf.control_dependencies``.
    In eager mode a failed check raises ``tf.errors.InvalidArgumentError``
    at once; in a ``tf.function`` it raises when the graph runs.
    ``received``: the words before ``got`` in TensorFlow's own message for
    the case (``"a label value of"``), which then reads
    ``'<op>: <arg> must be <expected>. Received <received> <got>'``.

    ``got`` may be a function of no arguments that builds the offending
    value: it then runs only when ``condition`` is false, inside the false
    branch of a ``tf.cond`` (in eager mode, only after the check failed).
    Finding the first bad entry is a mask, a concatenation, an ``argmax``
    and a gather over the whole tensor, several times the cost of the check
    itself, and ``tf.debugging.Assert`` evaluates its data even when the
    check passes.
    """
    if not validation_enabled():
        return []
    data = [f"{op}: {arg} must be {expected}" + (f". Received {received}" if received else ", got")]
    if tf.executing_eagerly():
        # Raised here with the message alone: an eager tf.debugging.Assert wraps it as
        # "Expected 'tf.Tensor(False, ...)' to be true. Summarized data: b'...'".
        if bool(condition):
            return []
        value = got() if callable(got) else got
        raise tf.errors.InvalidArgumentError(
            None, None, data[0] + ("" if value is None else " " + _shown(value)))
    if not callable(got):
        return [tf.debugging.Assert(condition, data + ([] if got is None else [got]), summarize=8)]

    def failed():
        # The raw op: tf.debugging.Assert would wrap it in a second cond.
        return tf.raw_ops.Assert(condition=condition, data=data + [got()], summarize=8)

    # The branches return operations: the cond is the control dependency.
    return [tf.cond(condition, tf.no_op, failed)]


def _shown(value) -> str:
    """An offending value as a failed graph assertion shows it: a scalar, or the first 8 entries."""
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    if array.ndim == 0:
        return str(array[()])   # in its own dtype: float32 1.3, not 1.2999999523162842
    flat = array.reshape(-1)
    return np.array2string(flat[:8], separator=" ")[:-1] + (" ...]" if flat.size > 8 else "]")


def eager_failure(error: tf.errors.InvalidArgumentError) -> tf.errors.InvalidArgumentError:
    """The failure of an :func:`assert_that` inside a graph called eagerly, as its message alone.

    A ``tf.function`` called eagerly reports a failed assertion with the
    graph's whole traceback around ``assertion failed: [message] [value]``;
    the user called an op, not a graph, and gets ``message value`` as an
    eager op reports it. Other errors are returned as they are.
    """
    found = re.search(r"assertion failed: \[(.*?)\] \[([^\[\]]*)\]", error.message, re.S)
    if found is None:
        return error
    return tf.errors.InvalidArgumentError(error.node_def, error.op, f"{found.group(1)} {found.group(2)}")


_INTEGER_NAMES = "an integer tensor (int32 or int64)"


def converted(value: Any, op: str, arg: str, expected: str) -> tf.Tensor:
    """``tf.convert_to_tensor(value)``, or ``TypeError`` naming ``arg`` where it cannot convert.

    For arguments of any dtype checked after conversion (labels): ``None``,
    ragged lists and objects got TensorFlow's "Attempt to convert a value
    (None)" without the argument's name.
    """
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value
    try:
        return tf.convert_to_tensor(value)
    except (TypeError, ValueError):
        raise TypeError(message(op, arg, expected, f"{type(value).__name__} {value!r:.80}")) from None


def integer_tensor(value: Any, op: str, arg: str) -> tf.Tensor:
    """Converts class indices to an int32/int64 tensor, or raises ``TypeError`` naming ``arg``.

    Tensors and arrays of any integer dtype are accepted (the narrow and
    unsigned ones are widened to int64); Python ints and lists of them
    become int32, as in TensorFlow. Floats, booleans, strings and
    SparseTensors are refused.
    """
    if isinstance(value, tf.SparseTensor):
        raise TypeError(message(
            op, arg, "a dense " + _INTEGER_NAMES[3:], "a SparseTensor (tf.sparse.to_dense first)"))
    if hasattr(value, "dtype"):
        got = tf.as_dtype(value.dtype) if _is_tf_dtype_like(value.dtype) else None
        if got is None or not got.is_integer:
            raise TypeError(message(op, arg, _INTEGER_NAMES, _dtype_name(value)))
        tensor = tf.convert_to_tensor(value, dtype=got)
        if got == tf.uint64:
            # Past int64's range the cast would wrap to negative labels (and
            # messages quoting them); such labels are out of range anyway.
            tensor = tf.minimum(tensor, tf.constant(2**63 - 1, tf.uint64))
        return tensor if got in (tf.int32, tf.int64) else tf.cast(tensor, tf.int64)
    array = np.asarray(value)
    if isinstance(value, bool) or array.dtype.kind not in "iu":
        raise TypeError(message(op, arg, _INTEGER_NAMES, f"{array.dtype.name} {value!r}"))
    fits = array.size == 0 or (array.min() >= -(2**31) and array.max() < 2**31)
    return tf.constant(array, dtype=tf.int32 if fits else tf.int64)

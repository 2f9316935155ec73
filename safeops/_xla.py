"""Inner XLA compilation: one switch and one wrapper for every op that uses it.

Some ops are a chain of ten or more elementwise and reduction kernels when
written as plain TensorFlow ops (the exact-shift softmax family, the fused
focal losses). Their forward and backward functions run as inner
``tf.function(jit_compile=True)`` functions, and XLA fuses each into one or
two loops over the data, even when the caller's function is not compiled
(inside a caller's ``jit_compile=True`` function they are simply inlined).

The price is an XLA compile, tens to a few hundred milliseconds, the first
time each new input shape is seen. Code whose shapes change at every step
(unpadded sequence lengths) should turn it off with ``SAFEOPS_INNER_XLA=0``
in the environment (read at import) or :func:`set_inner_xla`; the same
formulas then run as ordinary TensorFlow ops.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import tensorflow as tf

from safeops import _dtypes, _gradient

try:  # TensorFlow's test for an XLA-compiled graph (see in_xla)
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover
    _control_flow_util = None
try:  # the op callbacks of tf.debugging.enable_check_numerics and tfdbg (see enabled), function options
    from tensorflow.python.eager import context as _context
except ImportError:  # pragma: no cover
    _context = None
try:  # Grappler's switch in a function call's options (see _unoptimized)
    from tensorflow.core.protobuf import config_pb2 as _config_pb2
except ImportError:  # pragma: no cover
    _config_pb2 = None

_enabled = os.environ.get("SAFEOPS_INNER_XLA", "1") != "0"


def _shape_limit_from_environment() -> int:
    text = os.environ.get("SAFEOPS_INNER_XLA_SHAPES", "32")
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ValueError(f"safeops: SAFEOPS_INNER_XLA_SHAPES must be a non-negative integer, got {text!r}")
    return limit


#: Input shapes (with dtypes) one inner XLA function compiles for before new ones run as plain ops.
_shape_limit = _shape_limit_from_environment()
_shape_limit_warned = False


def set_shape_limit(limit: int) -> int:
    """Sets how many input shapes each inner XLA function compiles for (:func:`compiled`); returns the old."""
    global _shape_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"safeops: the shape limit must be a non-negative int, got {limit!r}")
    old, _shape_limit = _shape_limit, limit
    return old


def set_inner_xla(enabled: bool) -> bool:
    """Turns the inner XLA compilation on or off; returns the old setting.

    Off, the same formulas run as ordinary TensorFlow ops (no compile per new
    shape, but several kernels where XLA fuses one loop). Ops built before the call are not affected
    inside an already traced ``tf.function``.
    """
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def enabled() -> bool:
    """Whether ops built now use inner XLA functions.

    Not while an op callback is registered: ``tf.debugging.enable_check_numerics``
    and ``tf.debugging.experimental.enable_dump_debug_info`` instrument every
    graph traced after them, an inner XLA function's too, with ops that XLA
    cannot compile (``DebugNumericSummaryV2``, ``DebugIdentityV2``): every
    call of an op with an inner XLA function failed there. The same formulas
    run as TensorFlow ops, which the callback then checks one by one.
    """
    return _enabled and not _op_callbacks()


def _op_callbacks() -> bool:
    """Whether an op callback is registered in this thread (TensorFlow's own test, without its import)."""
    return _context is not None and bool(getattr(_context.context(), "op_callbacks", None))


#: Eager calls of a few-kernel op on fewer elements than this run as plain ops
#: (see :func:`compiled`'s ``eager_plain``).
EAGER_PLAIN_BELOW = 1 << 16
#: Inside a tf.function, a ``graph_plain`` op on static shapes below this runs as plain ops.
GRAPH_PLAIN_BELOW = 1 << 18


def compiled(fn, xla, eager_plain=False, exact=(), graph_plain=False, eager_graph=False):
    """``fn`` as an inner XLA function, or ``fn`` itself when ``xla`` is false.

    ``eager_plain``: for ops of a few kernels (``xlogy``, ``divide_no_nan``),
    an eager call whose largest input has fewer than
    :data:`EAGER_PLAIN_BELOW` elements runs ``fn`` as plain ops. Calling an
    XLA function eagerly has a fixed cost of its own, larger there than the
    few kernels it fuses (``python -m benchmarks --modes eager``, 1e3
    elements); on large tensors the fused loop wins (no buffer per
    intermediate). Inside a ``tf.function`` the XLA function is used, except
    with ``graph_plain`` (ops of two kernels, ``sqrt`` and ``rsqrt``) where
    every input's shape is static and the largest has fewer than
    :data:`GRAPH_PLAIN_BELOW` elements: there too the call of an XLA
    function costs more than the kernels it fuses (``sqrt`` forward+backward
    1.2 to 1.3 times ``tf.math.sqrt`` at 1e3 elements, 1.0 as plain ops;
    ``rsqrt`` forward 1.22 to 1.29 times ``tf.math.rsqrt`` at 1e5, 1.03 as
    plain ops), while from 1e6 elements on the fused loop was the faster
    (``rsqrt`` forward 1.03 against 1.29 at 1e6; ``sqrt`` forward+backward
    1.26 against 1.50 at 1e7). Hand-measured with ``python -m benchmarks
    --filter sqrt --modes graph``, interleaved, on this 2-core CPU.

    ``eager_graph``: with ``eager_plain``, those small eager calls run ``fn``
    as one uncompiled graph function (:func:`graph_call`) instead of op by
    op. Only for functions of many kernels: the call of a one-op graph
    function costs about 170 us here (0.05 ms for ``sqrt`` op by op), and
    an eager op about 25 us (``erfinv``'s forward, some ninety ops: 2.2 ms
    op by op on 1000 entries, 0.22 ms as a graph); for functions of a few
    kernels (``softplus``, ``xlogy``, ``divide_no_nan``) it was the slower
    path (hand-measured medians on a 2-core AMD EPYC).

    ``exact``: the positions of the arguments whose row maxima the
    function takes (the logits of the row-wise ops); each passes through
    :func:`exact_input` where the caller is itself compiled by XLA (inside,
    the function sees its parameters only, and the producer it will be
    fused with is the caller's). The other arguments (an upstream gradient,
    a forward output) are left alone: guarded, they cost a pass.

    Shapes that keep changing. XLA compiles once per input shape (a tenth
    of a second or more), and every compiled program keeps memory mappings
    for the life of the process: fed a new shape at every step, a training
    step reaches Linux's default ``vm.max_map_count`` (65530), where
    TensorFlow crashes. So ``fn`` runs as plain TensorFlow ops (the same formulas,
    no compile) for a call whose shapes would be the function's
    ``_shape_limit + 1``-th (``SAFEOPS_INNER_XLA_SHAPES``, default 32, read
    at import; one warning per process), and in a graph whose inputs have
    an unknown dimension other than the first (a ``padded_batch`` of
    sequences, an ``input_signature`` of ``[None, None]``), where XLA
    would compile at run time for every shape that comes, out of sight of
    any count here, and where that first dimension varies with the data
    (the rows kept by ``tf.boolean_mask``, padded sequences reshaped to
    rows: :func:`_data_dependent_rows`).
    Another unknown first dimension (Keras' batch) keeps the inner XLA
    function: it usually takes one or two sizes. Under an outer
    ``jit_compile`` the function is inlined into the caller's program and
    none of this applies.
    """
    if not xla:
        return fn
    seen = set()

    def fits(key) -> bool:
        global _shape_limit_warned
        if key in seen:
            return True
        if len(seen) >= _shape_limit:
            if not _shape_limit_warned:
                _shape_limit_warned = True
                warnings.warn(
                    f"safeops: an inner XLA function has compiled for {_shape_limit} input shapes; calls "
                    "with new shapes now run as plain TensorFlow ops. If your shapes change at every step, "
                    "set SAFEOPS_INNER_XLA=0; to allow more compiled shapes, SAFEOPS_INNER_XLA_SHAPES.",
                    RuntimeWarning, stacklevel=4)
            return False
        seen.add(key)
        return True

    # Eager calls of many shapes share a relaxed trace (XLA compiles per shape
    # either way). Inside a tf.function a relaxed trace would hand the caller
    # outputs of unknown shape ([None, None] after a few eager shapes): its
    # later ops lose their static shapes, and under an outer jit_compile a
    # reduction's gradient then needs a shape XLA cannot infer (a kl_divergence
    # in a tf.cond failed so). There each trace keeps the caller's shapes.
    eager_function = tf.function(fn, jit_compile=True, autograph=False, reduce_retracing=True)

    # The static shapes are part of the key: TensorFlow otherwise reuses any
    # earlier trace whose signature is more general (one from a tf.data map,
    # [None, C]), and its outputs' unknown shapes then reached a
    # tf.while_loop's gradient under jit_compile, which XLA refused ("must be
    # a compile-time constant").
    def keyed(shapes, *args):
        del shapes
        return fn(*args)

    keyed_function = tf.function(keyed, jit_compile=True, autograph=False)

    def graph_function(*args):
        return keyed_function(_shape_key(args), *args)

    def jit(*args):
        if tf.executing_eagerly():
            return eager_function(*args) if fits(_shape_key(args)) else fn(*args)
        args = _local(args)
        if not in_xla():
            key = _shape_key(args)
            if not _settled(key) or _data_dependent_rows(args) or not fits(key):
                return fn(*args)
        if exact:
            args = tuple(exact_input(a) if i in exact and isinstance(a, tf.Tensor) else a
                         for i, a in enumerate(args))
        return graph_function(*args)

    small = graph_call(fn) if eager_graph else fn

    def call(*args):
        if eager_plain and tf.executing_eagerly() and _largest_size(args) < EAGER_PLAIN_BELOW:
            return small(*args)
        if graph_plain and not tf.executing_eagerly() and _all_static(args) and (
                _largest_size(args) < GRAPH_PLAIN_BELOW):
            return fn(*args)
        return jit(*args)

    # The second-order recompute (safeops._gradient._plain) uses the plain function.
    call.python_function = fn
    return call


def graph_call(fn):
    """``fn`` (of tensors only, returning tensors) as a graph function, not compiled, for eager calls.

    For the forward of a custom-gradient op only (:func:`compiled`'s
    ``eager_graph``). One trace per dtype and rank of the arguments, every
    dimension unknown, so that no new shape retraces (the formulas here are
    elementwise, and with no XLA compile no memory mappings pile up per
    shape: see :func:`compiled`). The values are those of ``fn`` run op by
    op: the same TensorFlow kernels.

    The tapes (:func:`safeops._gradient.backprop_only`): under first-order
    ``GradientTape``s the call takes stopped inputs and is not recorded.
    Recorded, the call builds and keeps a forward and backward function
    each time (``erfinv``'s forward and backward on 1000 entries: 1.5 ms
    recorded, 0.87 ms not, 3.4 ms op by op), and those tapes differentiate the
    custom-gradient op through its gradient function, never through its
    forward's ops. Under a ``ForwardAccumulator`` or nested tapes ``fn``
    runs op by op as before (an accumulator's JVP goes through those ops).

    The call goes through the concrete function's ``_call_flat``
    (``tensorflow/python/eager/polymorphic_function/concrete_function.py``,
    TensorFlow 2.21): a public ``tf.function`` call binds its arguments to
    the signature in Python first (a function of one op on 1000 entries:
    200 us a call, 60 through ``_call_flat``, and 170 with the options of
    :func:`_unoptimized`). Where that method is gone the public call runs.
    """
    traced = {}

    def call(*args):
        args = [tf.convert_to_tensor(a) for a in args]
        recorded = _gradient.backprop_only(args)
        if recorded is False:
            return fn(*args)
        if recorded:
            args = [tf.stop_gradient(a) for a in args]
        key = tuple((a.dtype, a.shape.rank) for a in args)
        concrete = traced.get(key)
        if concrete is None:
            specs = [tf.TensorSpec(None if rank is None else [None] * rank, dtype) for dtype, rank in key]
            concrete = traced[key] = tf.function(fn, autograph=False).get_concrete_function(*specs)
        flat = getattr(concrete, "_call_flat", None)
        if flat is None:  # pragma: no cover
            return _unoptimized(lambda: concrete(*args))
        return _unoptimized(lambda: flat(args, concrete.captured_inputs))

    call.python_function = fn
    return call


_UNOPTIMIZED = {}


def _unoptimized(call):
    """``call()`` with Grappler off for the functions it runs eagerly (the graph as written).

    Grappler's arithmetic optimizer and constant folding reassociate
    products and sums with a constant (``(c * x) * y`` to ``c * (x * y)``,
    and back in other forms) and turn a quotient by a constant into a
    product: float64 ``erfinv`` came out up to 7 ULP from the same ops run
    one by one, which the tests require it to equal. The options are the
    context's own, with ``disable_meta_optimizer`` set, for this call (the
    runtime keys each function's instantiation by them); where the context's
    ``function_call_options`` are missing, ``call()`` as it is.
    """
    if _context is None or _config_pb2 is None:  # pragma: no cover
        return call()
    ctx = _context.context()
    current = getattr(ctx, "function_call_options", None)
    serialized = getattr(current, "config_proto_serialized", None)
    if serialized is None:  # pragma: no cover
        return call()
    options = _UNOPTIMIZED.get(serialized)
    if options is None:
        config = _config_pb2.ConfigProto.FromString(serialized)
        config.graph_options.rewrite_options.disable_meta_optimizer = True
        options = _UNOPTIMIZED[serialized] = _context.FunctionCallOptions(
            executor_type=current.executor_type, config_proto=config)
    ctx.function_call_options = options
    try:
        return call()
    finally:
        ctx.function_call_options = current


def _local(args):
    """``args`` (nested), each tensor of another graph copied into the current one first (``tf.identity``).

    A ``jit_compile`` function called in a graph enters an XLA context there
    while it captures its arguments. An argument from another graph (the
    forward branch of a ``tf.cond``, read by its gradient) is then captured
    as an XLA intermediate, which ``tf.cond``'s gradient outside XLA cannot
    resolve ("Could not find external tensor capture"). Copied first, it is
    captured outside that context, as any plain op's input is.
    """
    graph = tf.compat.v1.get_default_graph()
    # An eager tensor (a forward-mode accumulator traces the backward pass
    # in a graph with eager inputs) has no graph: it is captured as a constant.
    return tf.nest.map_structure(
        lambda a: tf.identity(a) if tf.is_symbolic_tensor(a) and a.graph is not graph else a, args)


def _shape_key(args) -> tuple:
    """Each tensor's static shape and dtype among ``args`` (``None`` for an unknown rank), hashable."""
    return tuple((tuple(a.shape.as_list()) if a.shape.rank is not None else None, a.dtype.name)
                 if isinstance(a, tf.Tensor) else None for a in tf.nest.flatten(args))


def _settled(key) -> bool:
    """Whether every tensor of a :func:`_shape_key` has a known rank and known dimensions after the first."""
    return all(entry is None or (entry[0] is not None and None not in entry[0][1:]) for entry in key)


#: Ops whose output's length depends on the values of their input (tf.boolean_mask's Where).
_DATA_DEPENDENT = frozenset({"Where", "Unique", "UniqueV2", "UniqueWithCounts", "DynamicPartition"})


def _data_dependent_rows(args, depth: int = 8, budget: int = 64) -> bool:
    """Whether a tensor among ``args`` of unknown first dimension has rows that vary with the data.

    Two sources, looked for ``depth`` ops back (at most ``budget`` ops in
    all): a data-dependent count (the rows that ``tf.boolean_mask``, a
    ``Where``, keeps), and an earlier tensor with an unknown dimension after
    its first, folded into the rows (``tf.reshape(logits, [-1, classes])``
    of padded sequences). Either changes at every step, and an inner XLA
    function would compile for each size.
    """
    frontier = [a for a in tf.nest.flatten(args)
                if isinstance(a, tf.Tensor) and a.shape.rank and a.shape[0] is None and hasattr(a, "op")]
    seen = set()
    for _ in range(depth):
        earlier = []
        for t in frontier:
            if t.shape.rank is None or None in t.shape[1:]:
                return True
            op = t.op
            if op.name in seen or len(seen) >= budget:
                continue
            seen.add(op.name)
            if op.type in _DATA_DEPENDENT:
                return True
            earlier.extend(op.inputs)
        frontier = earlier
    return False


def _all_static(args) -> bool:
    """Whether every tensor among ``args`` has a fully known shape."""
    shapes = [getattr(a, "shape", None) for a in args]
    return all(s.is_fully_defined() for s in shapes if isinstance(s, tf.TensorShape))


def _largest_size(args) -> int:
    """The element count of the largest tensor (or variable) among ``args`` (eager shapes are static)."""
    sizes = [a.shape.num_elements() for a in args if isinstance(getattr(a, "shape", None), tf.TensorShape)]
    return max([s for s in sizes if s is not None], default=0)


def compiled_gradients(backward, xla, groups, eager_plain=False, exact=()):
    """``backward`` as one inner XLA function per group of input gradients.

    ``backward(*args)`` returns one gradient per input; ``groups`` is a
    partition of their indices, for example ``[(1,), (0,)]`` for the logits
    and the labels of a loss. A single XLA function computes every output on
    every call, even the gradients of inputs nobody differentiates (the
    labels, a class-weight tensor): inside a ``tf.function`` Grappler can
    prune a whole call whose outputs are unused, but not some outputs of
    one. One call per group lets it drop the gradients that are not asked
    for; XLA removes the dead code inside each call. A group that is asked
    for recomputes what it shares with the others, so put together
    gradients that are usually wanted together. ``xla`` false returns
    ``backward`` itself (plain ops are pruned one by one); ``eager_plain``
    and ``exact`` as in :func:`compiled`.
    """
    if not xla:
        return backward
    count = sum(len(g) for g in groups)
    if count == 0 or sorted(i for g in groups for i in g) != list(range(count)):
        raise ValueError(f"groups must partition range({count}), got {groups!r}")

    def pick(indices):
        def part(*args):
            grads = backward(*args)
            return tuple(grads[i] for i in indices)
        return compiled(part, True, exact=exact)

    calls = [(indices, pick(indices)) for indices in groups]

    def gradients(*args):
        if eager_plain and tf.executing_eagerly() and _largest_size(args) < EAGER_PLAIN_BELOW:
            return tuple(backward(*args))
        out = [None] * count
        for indices, call in calls:
            for i, g in zip(indices, call(*args)):
                out[i] = g
        return tuple(out)

    # The second-order recompute (safeops._gradient._plain) uses the plain function.
    gradients.python_function = backward
    return gradients


_UNCACHEABLE = object()


def _axis_key(axis):
    """``axis`` as a hashable key of Python ints (lists and arrays become tuples), or ``_UNCACHEABLE``.

    NumPy integers and integer arrays (``np.arange(1, 3)``, ``np.where(...)[0]``), which TensorFlow's
    reductions take, become Python ints here, so the op built for them reads Python axes (a 1-d
    array reached ``int(a)`` of a whole array). A tensor is ``_UNCACHEABLE``.
    """
    if isinstance(axis, (np.integer, np.ndarray)) and not isinstance(axis, bool):
        array = np.asarray(axis)
        if array.dtype.kind in "iu" and array.ndim <= 1:
            axis = int(array) if array.ndim == 0 else [int(a) for a in array]
    if axis is None or (isinstance(axis, int) and not isinstance(axis, bool)):
        return axis
    if isinstance(axis, (list, tuple)) and all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                                               for a in axis):
        return tuple(int(a) for a in axis)
    return _UNCACHEABLE


def per_axis(build=None, *, xla=True):
    """Caches ``build(axis, *config, xla)`` per axis, configuration and XLA setting.

    Returns ``get(axis, *config)``: one op (and so one inner XLA function,
    one trace per input signature) per configuration, built with the
    current :func:`enabled` setting. A tensor ``axis`` is not hashable and
    gets a fresh, uncompiled op. With ``xla=False`` (as
    ``@per_axis(xla=False)``) ``build(axis, *config)`` takes no XLA
    argument: the cache only saves rebuilding the op at every call.
    """
    if build is None:
        return functools.partial(per_axis, xla=xla)
    cached = functools.lru_cache(maxsize=None)(build)

    def get(axis, *config):
        key = _axis_key(axis)
        if key is _UNCACHEABLE:
            if isinstance(axis, tf.Variable):
                # Read here, outside the custom-gradient function: a variable
                # read inside it makes tf.custom_gradient demand a gradient
                # for the variable (an int axis has none).
                axis = tf.convert_to_tensor(axis)
            return build(axis, *config, False) if xla else build(axis, *config)
        return cached(key, *config, enabled()) if xla else cached(key, *config)

    return get


# ----------------------------------------------------------------------------
# Sums along the last axis.

_dot_sums_override = None
# The longest row summed as a dot (see last_axis_sums).
_DOT_SUM_MAX = 4096


def set_dot_sums(enabled):
    """Forces :func:`last_axis_sums` onto the dot (``True``) or off it (``False``); ``None``: per host.

    For the benchmark's StableHLO export, which traces here for a GPU that
    this host does not have. Read when an op is traced: functions traced
    before the call keep what they traced. Returns the old setting.
    """
    global _dot_sums_override
    old, _dot_sums_override = _dot_sums_override, enabled
    return old


def _dot_sums_allowed() -> bool:
    """Whether a product with a ones vector sums exactly as a reduction does here.

    On a GPU a float32 dot may run in TensorFloat-32 (10 mantissa bits), and
    with ``TF_SET_ONEDNN_FPMATH_MODE`` set oneDNN may run it in bfloat16: the
    sum would lose most of its digits. Neither happens on a CPU-only host in
    the default mode, the only place the dot is used.
    """
    if _dot_sums_override is not None:
        return bool(_dot_sums_override)
    if os.environ.get("TF_SET_ONEDNN_FPMATH_MODE"):
        return False
    return not tf.config.list_logical_devices("GPU") and not tf.config.list_logical_devices("TPU")


def computed_once(y: tf.Tensor) -> tf.Tensor:
    """``y`` (finite or NaN), ending in a division so that XLA computes it once where several loops read it.

    XLA fuses an elementwise producer into each loop that reads it and
    computes it there again, unless the producer ends in an op it counts as
    expensive (a division, ``exp``, ``log``, ``sqrt``): that one it writes
    to a buffer once. Under an outer ``jit_compile`` an op whose gradient
    reads its output (``erfinv``'s :math:`e^{y^2}`) had its whole forward
    computed twice, once for the output and once inside the gradient's
    loop: ``erfinv`` forward+backward took 20 ms on 1e6 float32 entries
    against TensorFlow's 8.3, and 12 against 7.9 with ``y / (1 + 0 y)``
    (two hand-measured runs, each interleaved with TensorFlow's kernel).
    The quotient is ``y`` bit for bit (a division by exactly 1; NaN stays
    NaN), except a subnormal ``y``, which XLA's CPU division flushes to 0
    (C3 allows it). An infinite ``y`` would turn NaN, hence finite ``y``
    only; XLA does not fold ``0 * y`` (NaN for an infinite ``y``). Outside
    XLA, ``y`` itself.
    """
    if not in_xla():
        return y
    return y / (1.0 + 0.0 * y)


def exact_input(x: tf.Tensor) -> tf.Tensor:
    """``x`` with the same bits in every loop that reads it, where XLA compiles the graph.

    The row-wise ops take a row's maximum ``m`` and then rely on exact
    relations between ``x`` and ``m``: ``x - m`` is 0 at the maximum (the
    cross-entropies count the ties there), and TwoSum recovers the rounding
    of ``x - m``. Under an outer ``jit_compile`` XLA fuses the producer of
    ``x`` into each loop that reads it, and on this CPU contracts a product
    followed by the subtraction into one fused multiply-add: with ``x = v
    c`` (logits scaled by a temperature), the maximum's loop sees ``fl(v
    c)`` and another loop computes ``fma(v, c, -m)``, so ``x - m`` at the
    maximum is ``1e-8``, not 0. The softmax cross-entropy then counted no
    tie and dropped the maximum's term from its row sum: losses 18% to 100
    times off and wrong gradients, measured with logits ``x * 1.3``, ``x /
    0.7`` and ``tanh(x) * 5``. ``nextafter(x, x)`` is ``x`` (NaN and
    infinities included) but not a product, so nothing contracts across it;
    XLA does not fold it away (its optimization barrier, tried first, is
    removed before fusion on the CPU). Its gradient is the identity. Outside
    XLA, and for dtypes other than float32 and float64 (half dtypes are
    computed in float32), ``x`` is returned as it is.
    """
    if x.dtype not in (tf.float32, tf.float64) or not in_xla() or not _fusible(x):
        return x
    return tf.math.nextafter(x, x)


#: Producers whose output XLA keeps in a buffer of its own (parameters,
#: constants, variables, products of matrices): nothing is recomputed.
_MATERIALIZED = frozenset({"Placeholder", "Const", "ReadVariableOp", "MatMul", "BatchMatMul",
                           "BatchMatMulV2", "BatchMatMulV3", "Conv1D", "Conv2D", "Conv3D", "Einsum"})
#: Producers without a product of their own: they are recomputed exactly unless an input is (a
#: float16 matmul cast to float32, as the mixed-precision policies compute, is left as it is).
_ADDITIVE = frozenset({"BiasAdd", "Add", "AddV2", "Sub", "Neg", "Identity", "StopGradient", "Reshape",
                       "ExpandDims", "Squeeze", "Transpose", "Cast"})


def _fusible(x, depth=4) -> bool:
    """Whether XLA may compute ``x`` differently in two loops (:func:`exact_input`); ``True`` if unknown."""
    op = getattr(x, "op", None)
    if op is None or op.type in _MATERIALIZED:
        return False
    if op.type in _ADDITIVE and depth > 0:
        return any(_fusible(t, depth - 1) for t in op.inputs if t.dtype.is_floating)
    return True


def in_xla() -> bool:
    """Whether the graph being traced (or one it is nested in) is compiled by XLA.

    TensorFlow's own test (``control_flow_util.GraphOrParentsInXlaContext``,
    true inside ``tf.function(jit_compile=True)`` and anything it calls);
    there is no public equivalent. Without it, false (the non-XLA forms).
    """
    if _control_flow_util is None:
        return False
    try:
        return bool(_control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # noqa: BLE001  (a TensorFlow that changed the helper)
        return False


def running_sums(x, axis) -> bool:
    """Whether ``reduce_sum(x, axis)`` keeps an axis after a summed one (``False`` for an unknown rank).

    TensorFlow's CPU kernels and XLA then add the summed entries into one
    accumulator per kept position, a running sum whose rounding grows with
    the summed length: the sum of squares of 1e5 rows of 16 equal entries
    over axis 0 was 5250 ULP off in a graph (over a last axis its blocked
    sum stays within a few dozen ULP).
    """
    rank = x.shape.rank
    if rank is None or axis is None or isinstance(axis, (tf.Tensor, tf.Variable)):
        return False
    summed = _summed_axes(axis, rank)
    return bool(summed) and summed != list(range(summed[0], rank))


def _summed_axes(axis, rank: int) -> list:
    """The axes ``reduce_sum(axis=axis)`` sums over a rank-``rank`` tensor: sorted, non-negative, distinct."""
    listed = range(rank) if axis is None else np.ravel(axis).tolist()
    return sorted({int(a) % rank for a in listed}) if rank else []


def sums_as_dot(x, axis) -> bool:
    """Whether :func:`last_axis_sums` of tensors shaped as ``x`` along ``axis`` is a dot here.

    For an op that would write its summed parts differently for a dot than
    for TensorFlow's reduction kernels.
    """
    rank = x.shape.rank
    last = (isinstance(axis, int) and not isinstance(axis, bool) and rank is not None and rank >= 1
            and axis in (-1, rank - 1) and x.shape[-1] is not None and x.shape[-1] < _DOT_SUM_MAX)
    return last and x.dtype in (tf.float32, tf.float64) and in_xla() and _dot_sums_allowed()


def last_axis_sums(parts, axis, dtype=None):
    """``reduce_sum(p, axis, keepdims=True)`` for each of the same-shape tensors ``parts``.

    XLA's CPU backend sums a row of a fused expression with a scalar loop,
    and a reduction it cannot fuse (two sums of one expression, a sum of a
    complex number) costs a full-size temporary and a pass over it. A dot
    with a ones vector has none of these costs: XLA fuses the expression
    into its vectorized matrix-vector loop, and stacked parts are summed in
    the same pass. ``reduce_logsumexp`` forward at 1e6 and 1e7 elements in
    rows of 1000, in an A/B run here: 1.1-1.4x ``tf.reduce_logsumexp``'s
    time with one complex sum, 0.6-0.9x with the dot. A part should not need
    an expensive operation that the others do not (an ``exp``): each element
    of the stacked operand is computed on its own, and such an operation is
    computed once per part.

    Each term is multiplied by exactly 1 and the products are added in
    float32 or float64 (FMA), so the sum is an ordinary floating-point sum
    (integers exact up to ``2**24`` in float32), ``inf`` and NaN included.

    The dot is used when XLA compiles the caller, ``axis`` is the last axis
    of a float32 or float64 tensor and shorter (statically) than
    :data:`_DOT_SUM_MAX`, and the host has no GPU
    (:func:`_dot_sums_allowed`). From rows of 4096 on, XLA writes the
    expression out before its dot here: ``reduce_logsumexp`` forward at
    8.2e6 elements is 0.61x TensorFlow's with rows of 4095, 1.06-1.17x with
    rows of 4096 to 32000, where one complex sum gives 0.96-1.04x (same
    run). Otherwise, under XLA, two parts are summed as one complex number
    (one temporary and one pass instead of two), and outside XLA each part
    by TensorFlow's reduction kernel.

    With ``dtype`` (``tf.float64``) the parts are widened to it and summed
    and returned in it: a float32 sum's rounding grows with the row's
    length (5.6 ULP of a softmax over 32000 entries), a float64 one stays
    below half a float32 ULP for rows up to ``2**28`` entries. In the dot the
    widening is a conversion in its loop, no pass of its own. Without
    ``dtype``, float32 parts summed as running sums (:func:`running_sums`)
    are summed in float64 and rounded back: ``log_softmax``'s gradient over
    axis 0 of 1e5 x 16 entries was 1.3e-5 relative off (4.4e-6 over the
    last axis of the transpose). Float64 parts with ``dtype`` float64 (a
    float64 input: narrower ones pass narrower parts) are summed by
    :func:`cascaded_sums`, as trees of short sums: plain float64 sums
    left ``softmax`` 36 ULP off over rows of 1e6 entries under XLA.
    Float64 parts without ``dtype`` are a caller's widened float32 values,
    summed as they are.
    """
    if parts[0].dtype == tf.float64 and dtype == tf.float64:
        return [cascaded_sums(p, axis) for p in parts]  # a float64 input: no wider type to sum in
    if dtype is None and parts[0].dtype == tf.float32 and running_sums(parts[0], axis):
        return [tf.cast(v, tf.float32) for v in last_axis_sums(parts, axis, _dtypes.sum_dtype(tf.float32))]
    if dtype is not None:
        parts = [tf.cast(p, dtype) for p in parts]
    x = parts[0]
    if sums_as_dot(x, axis):
        ones = tf.ones(tf.shape(x)[-1:], x.dtype)
        if len(parts) == 1:
            return [tf.expand_dims(tf.einsum("...n,n->...", x, ones), -1)]
        sums = tf.einsum("...kn,n->...k", tf.stack(parts, axis=-2), ones)
        return [sums[..., i:i + 1] for i in range(len(parts))]
    if len(parts) == 2 and x.dtype in (tf.float32, tf.float64) and in_xla():
        both = tf.reduce_sum(tf.complex(parts[0], parts[1]), axis, keepdims=True)
        return [tf.math.real(both), tf.math.imag(both)]
    return [tf.reduce_sum(p, axis, keepdims=True) for p in parts]


#: Chunk length of :func:`wide_sums`' dot over a long reduction (a row below :data:`_DOT_SUM_MAX`).
_DOT_CHUNK = 1024


def wide_sums(v, axis, dtype):
    """``reduce_sum(v, axis, keepdims=True)`` with ``v`` widened to ``dtype`` and summed in it.

    For sums whose rounding grows with their length in float32: XLA's CPU
    reduction accumulates a long axis in a few float32 partial sums (the
    sum of squares of 1e7 entries of 1.1 came out 1.8e-4 relative off,
    1545 ULP of the norm), TensorFlow's kernels in blocks (a dozen ULP).
    ``axis``: ``None``, an int or a tuple of ints; ``dtype``: float64
    (:func:`safeops._dtypes.sum_dtype`).

    Where :func:`last_axis_sums` would take a dot (XLA compiles the
    caller, the host has no GPU) and the summed axes are the trailing ones
    of a static shape (``None``, the last axis, the last two), they are
    flattened to one axis and summed as a dot with a ones vector, in
    chunks of :data:`_DOT_CHUNK` (zero-padded) when that axis is not
    statically shorter than :data:`_DOT_SUM_MAX`, the chunk sums then by a
    reduction: the widening and the expression before it are fused into
    the dot's loop. Sum of squares of 1e7 float32 entries under
    ``jit_compile``, hand-measured here: 0.46 times the float32
    reduction's time, 1.64 for a float64 reduction. Elsewhere the widened
    tensor is reduced by ``reduce_sum``.
    """
    wide = tf.cast(v, dtype)
    shape = v.shape.as_list() if v.shape.is_fully_defined() else None
    plain = (not shape or isinstance(axis, (tf.Tensor, tf.Variable)) or dtype not in (tf.float32, tf.float64)
             or not in_xla() or not _dot_sums_allowed() or _gradient.in_vectorized_map())
    if plain:  # in a vectorized map the reshapes below took a shape XLA could not read
        return tf.reduce_sum(wide, axis, keepdims=True)
    rank = len(shape)
    axes = _summed_axes(axis, rank)
    kept = rank - len(axes)
    if not axes or axes != list(range(kept, rank)):
        return tf.reduce_sum(wide, axis, keepdims=True)
    length = int(np.prod(shape[kept:]))
    if length < _DOT_SUM_MAX:
        sums = tf.einsum("...n,n->...", tf.reshape(wide, shape[:kept] + [length]), tf.ones([length], dtype))
    else:
        padding = -length % _DOT_CHUNK
        padded = tf.pad(tf.reshape(wide, shape[:kept] + [length]), [[0, 0]] * kept + [[0, padding]])
        chunks = tf.reshape(padded, shape[:kept] + [(length + padding) // _DOT_CHUNK, _DOT_CHUNK])
        sums = tf.reduce_sum(tf.einsum("...cn,n->...c", chunks, tf.ones([_DOT_CHUNK], dtype)), -1)
    return tf.reshape(sums, shape[:kept] + [1] * len(axes))


#: blocked_sums: a float32 sum of at most this many entries is left to TensorFlow's kernel as it is.
_BLOCKED_MIN_INNER, _BLOCKED_MIN_OUTER = 1024, 16
#: blocked_sums: the block lengths tried, longest first (a divisor of the summed length).
_BLOCKS_INNER, _BLOCKS_OUTER = range(256, 31, -1), range(16, 7, -1)


def blocked_sums(v, axis):
    """``reduce_sum(v, axis, keepdims=True)`` of float32 ``v`` in float32 blocks whose sums add in float64.

    For a graph, where :func:`wide_sums`' float64 ``reduce_sum`` is a cast
    kernel and a float64 pass (1.4 to 1.8 times ``tf.norm``'s forward,
    hand-measured at 1e5 to 1e7 entries), and TensorFlow's float32
    reduction is not accurate enough: its error grows with the summed
    length, for equal entries most. Measured here on sums of squares of
    equal entries (in ULP of the sum): over the last axis 5 at 1024
    entries, 25 at 4096, 33 at 1e5; over a leading axis, which the kernel
    accumulates as running sums, 3 at 16 rows of 3 columns, 20 at 1000 rows
    of 64, 5250 at 1e5 rows of 16.

    The summed axes (contiguous, of static length ``n``) are reshaped, at
    no cost, into ``n / b`` blocks of ``b`` entries, ``b`` a divisor of
    ``n``: 32 to 256 where they are the trailing axes and ``n > 1024``, 8
    to 16 elsewhere and ``n > 16`` (blocks of 32 rows of 3 columns left
    the sum 6.7 ULP off), the largest that divides. The blocks are summed by TensorFlow's float32
    kernel, their sums in float64, rounded once: within 2.6 ULP of the sum
    at every shape tried (equal, uniform, normal and sorted entries), 0.9
    to 1.0 times the float32 reduction's time at 1e6 entries and above, up
    to 1.15 at 1000x1000 over the leading axis (hand-measured). Where no
    such divisor exists (a prime length), the axes are not contiguous
    (where TensorFlow's kernel was 29 ULP off over axes 0 and 2 of 20x2x9
    entries) or their length is unknown until the graph runs, ``v`` takes
    :func:`wide_sums` (a float64 sum). A float64 ``v`` takes :func:`cascaded_sums`; other dtypes, a
    tensor ``axis`` and an unknown rank take ``reduce_sum`` as it is.
    """
    shape = v.shape
    if v.dtype == tf.float64:
        return cascaded_sums(v, axis)
    if v.dtype != tf.float32 or isinstance(axis, (tf.Tensor, tf.Variable)) or shape.rank is None:
        return tf.reduce_sum(v, axis, keepdims=True)
    rank, wide = shape.rank, _dtypes.sum_dtype(v.dtype)
    axes = _summed_axes(axis, rank)
    if not axes:
        return tf.reduce_sum(v, axis, keepdims=True)
    first, last = axes[0], axes[-1]
    lengths = shape.as_list()[first:last + 1]
    trailing = last == rank - 1
    contiguous = axes == list(range(first, last + 1)) and None not in lengths
    length = int(np.prod(lengths)) if contiguous else None
    if contiguous and length <= (_BLOCKED_MIN_INNER if trailing else _BLOCKED_MIN_OUTER):
        return tf.reduce_sum(v, axis, keepdims=True)
    block = next((b for b in (_BLOCKS_INNER if trailing else _BLOCKS_OUTER) if length % b == 0),
                 None) if contiguous else None
    if block is None:
        return tf.cast(wide_sums(v, axis, wide), v.dtype)
    dims = shape.as_list() if shape.is_fully_defined() else tf.unstack(tf.shape(v))
    before, after = list(dims[:first]), list(dims[last + 1:])
    blocks = tf.reduce_sum(tf.reshape(v, before + [length // block, block] + after), first + 1)
    total = tf.cast(tf.reduce_sum(tf.cast(blocks, wide), first), v.dtype)
    return tf.reshape(total, before + [1] * len(axes) + after)


#: cascaded_sums: a float64 sum of at most this many entries is left to one reduction (trailing
#: axes, which the kernels sum in blocks: within 3 ULP up to 256 entries here; other axes).
_CASCADE_MIN_INNER, _CASCADE_MIN_OUTER = 256, 16
#: cascaded_sums: entries per partial sum at each level, in a graph (reductions) and under XLA (dots).
_CASCADE_BLOCK, _CASCADE_BLOCK_XLA = 4, 8
#: cascaded_sums: the levels of 8 taken for a summed length unknown when traced.
_CASCADE_LEVELS = 11


def cascaded_sums(v, axis):
    """``reduce_sum(v, axis, keepdims=True)`` of float64 ``v`` as a tree of short sums.

    A float64 input has no wider type to sum in, and the float64 sums of
    TensorFlow's kernels and of XLA grow their rounding with the summed
    length, most for equal terms: sums of 1e3 to 1e7 such terms were 3 to
    29 ULP off over a last axis and up to 1.1e6 over a leading one (running
    sums). Here the summed axes are flattened to one of length ``n``,
    which is cut into blocks of 4 entries (at the first level the longest
    divisor of ``n`` up to 8, where padding would copy the tensor; zero
    padding after it), the blocks are summed, and so on until one entry is
    left: about ``log4(n)`` levels, and each entry's rounding enters as
    many sums of at most 8 terms (pairwise summation's argument, Higham,
    Accuracy and Stability of Numerical Algorithms, 2002, section 4.2).
    Under XLA, which merges a reduction of a reduction back into one, each
    level is a dot of blocks of 8 with a ones vector, the summed axes moved
    last; in a graph the levels are reductions in place (a leading axis is
    reshaped, not moved). Measured on sums of equal, periodic, uniform,
    squared normal, log-normal and sorted entries of 17 to 3e6 terms over
    the last, a leading, a middle and all axes: within 2 ULP of the sum
    eagerly and in a graph, 1 under XLA. The sum alone costs 1.2 to 2.3
    times one float64 reduction in a graph and 1.2 to 2.9 under XLA
    (hand-measured here at 1e5 to 1e7 entries); forward+backward of
    float64 ops over 1024 rows of 1000, 0.8 to 1.1 times the plain sums'
    time for the norm and the binary cross-entropy, 1.2 to 1.9 for
    ``softmax``, the softmax cross-entropy and ``kl_divergence``, whose
    several row sums each become a tree (plain float64 sums of rows of
    1000 periodic entries were 5 to 6 ULP off).

    A summed length unknown when traced (the relaxed trace that an inner
    XLA function takes for its eager calls from the second shape on, an
    ``input_signature`` of ``None``) takes eleven levels of 8, enough for
    ``8**11`` entries. Other dtypes, short sums (at most 256 entries over
    the trailing axes, within 3 ULP as they are; 16 over others, which the
    kernels add as running sums: 38 ULP at 1000 rows), a tensor ``axis``,
    an unknown rank and a vectorized map take ``reduce_sum`` as it is.
    """
    shape = v.shape
    plain = (v.dtype != tf.float64 or isinstance(axis, (tf.Tensor, tf.Variable)) or shape.rank is None
             or _gradient.in_vectorized_map())
    if plain:
        return tf.reduce_sum(v, axis, keepdims=True)
    rank, dims = shape.rank, shape.as_list()
    axes = _summed_axes(axis, rank)
    if not axes:
        return tf.reduce_sum(v, axis, keepdims=True)
    known = all(dims[a] is not None for a in axes)
    n = int(np.prod([dims[a] for a in axes])) if known else None
    contiguous = axes == list(range(axes[0], axes[-1] + 1))
    trailing = contiguous and axes[-1] == rank - 1
    if known and n <= (_CASCADE_MIN_INNER if trailing else _CASCADE_MIN_OUTER):
        return tf.reduce_sum(v, axis, keepdims=True)
    runtime = tf.unstack(tf.shape(v)) if None in dims else dims
    out_shape = [1 if a in axes else runtime[a] for a in range(rank)]
    xla = in_xla()
    if xla or not contiguous:
        kept = [a for a in range(rank) if a not in axes]
        if kept + axes != list(range(rank)):
            v = tf.transpose(v, kept + axes)
        before, after = [runtime[a] for a in kept], []
    else:
        before, after = runtime[:axes[0]], runtime[axes[-1] + 1:]
    at = len(before)

    def level(v, length, size):
        """One level: ``length`` entries zero-padded to blocks of ``size``, each block summed."""
        padding = -length % size
        if not isinstance(padding, int) or padding:
            v = tf.pad(v, [[0, 0]] * at + [[0, padding]] + [[0, 0]] * len(after))
        length = (length + padding) // size
        v = tf.reshape(v, before + [length, size] + after)
        if xla:
            return tf.einsum("...b,b->...", v, tf.ones([size], v.dtype)), length
        return tf.reduce_sum(v, at + 1), length

    if not known:
        # A length known only at run time (an eager call's relaxed trace, which an inner XLA function
        # gets from its second shape on; an input_signature of None): a fixed number of levels of 8,
        # enough for 8**11 entries (a level over one entry adds 7 zeros to it).
        length = tf.reduce_prod(tf.stack([runtime[a] for a in axes]))
        v = tf.reshape(v, before + [length] + after)
        for _ in range(_CASCADE_LEVELS):
            v, length = level(v, length, _CASCADE_BLOCK_XLA)
        return tf.reshape(v, out_shape)
    v = tf.reshape(v, before + [n] + after)
    # In a graph the first level takes the longest divisor up to 8 (padding would copy the tensor).
    block = _CASCADE_BLOCK_XLA if xla else next((b for b in range(8, 1, -1) if n % b == 0), _CASCADE_BLOCK)
    while n > 1:
        v, n = level(v, n, min(block, n))
        block = _CASCADE_BLOCK_XLA if xla else _CASCADE_BLOCK
    return tf.reshape(v, out_shape)

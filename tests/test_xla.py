"""The inner-XLA helpers of ``safeops._xla``: one call per gradient group, same results."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops import _xla, losses, nn
from tests._modes import MODES, derivatives, run


def _backward(dy, x, y):
    # Two gradients that share work, as a loss's logits and labels do.
    s = tf.sin(x) * y
    return dy * s * 2.0, dy * (s + tf.cos(y))


def test_off_returns_the_function_itself():
    assert _xla.compiled_gradients(_backward, False, [(0,), (1,)]) is _backward


@pytest.mark.parametrize("groups", [[(0,), (0, 1)], [(0,), (2,)], [(1, 2)], []])
def test_groups_must_partition_the_gradients(groups):
    with pytest.raises(ValueError, match="partition"):
        _xla.compiled_gradients(_backward, True, groups)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("groups", [[(0,), (1,)], [(1,), (0,)], [(0, 1)]])
def test_split_calls_return_every_gradient_in_place(mode, groups):
    split = _xla.compiled_gradients(_backward, True, groups)
    assert split.python_function is _backward
    args = [tf.constant([1.5, -2.0]), tf.constant([0.3, 4.0]), tf.constant([2.0, -1.0])]
    got = run(mode, split)(*args)
    want = _backward(*args)
    assert len(got) == 2
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wrt", [(1,), (0, 1, 2)])
def test_weighted_cross_entropy_gradients_with_and_without_inner_xla(mode, wrt):
    # The logits' gradient comes from one XLA call and the labels' and
    # pos_weight's from another; asking for some or all of them gives the
    # same numbers as the plain ops.
    rng = np.random.default_rng(3)
    args = [tf.constant(rng.uniform(0, 1, (6, 5)).astype("float32")),
            tf.constant((rng.normal(size=(6, 5)) * 5).astype("float32")),
            tf.constant(rng.uniform(0.5, 3, (5,)).astype("float32"))]

    def body(*xs):
        with tf.GradientTape() as tape:
            watched = [xs[i] for i in wrt]
            tape.watch(watched)
            loss = tf.reduce_sum(nn.weighted_cross_entropy_with_logits(*xs))
        return [loss, *tape.gradient(loss, watched)]

    results = {}
    for inner in (True, False):
        old = _xla.set_inner_xla(inner)
        try:
            results[inner] = [t.numpy() for t in run(mode, body)(*args)]
        finally:
            _xla.set_inner_xla(old)
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)
    assert all(np.isfinite(t).all() for t in results[True])


# ----------------------------------------------------------------------------
# last_axis_sums: a dot under XLA on a CPU, the reduction elsewhere.


def _sums(parts, axis=-1):
    return _xla.last_axis_sums(list(parts), axis)


def _hlo(fn, *args):
    return tf.function(fn, jit_compile=True).experimental_get_compiler_ir(*args)(stage="hlo")


def _sum_parts(n, dtype=tf.float32):
    rng = np.random.default_rng(5)
    terms = rng.normal(size=(3, 2, n))
    terms[0, 0, 3] = np.inf
    terms[1, 1, 0] = np.nan
    terms[2, 0, :] = rng.normal(size=n) * 1e-30  # tiny, not added to anything large
    flags = (rng.uniform(size=(3, 2, n)) < 0.5).astype(np.float64)
    return tf.constant(terms, dtype), tf.constant(flags, dtype)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("mode", MODES)
def test_sums_match_the_reduction_with_inf_nan_and_an_exact_count(mode, dtype):
    terms, flags = _sum_parts(4095, dtype)
    got = run(mode, lambda t, f: tuple(_sums([t * 1.0, f * 1.0])))(terms, flags)
    want = [tf.reduce_sum(terms, -1, keepdims=True), tf.reduce_sum(flags, -1, keepdims=True)]
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5 if dtype == tf.float32 else 1e-12)
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())  # integers: exact
    assert got[0].shape == (3, 2, 1) and np.isinf(got[0][0, 0, 0]) and np.isnan(got[0][1, 1, 0])
    (single,) = run(mode, lambda t: tuple(_sums([t])))(terms)
    np.testing.assert_allclose(single.numpy(), want[0].numpy(), rtol=1e-5 if dtype == tf.float32 else 1e-12)


def test_a_dot_under_xla_on_a_cpu_only_for_rows_shorter_than_4096():
    cpu_only = not tf.config.list_logical_devices("GPU") and not tf.config.list_logical_devices("TPU")
    short, flags = _sum_parts(4095)
    assert ("dot(" in _hlo(lambda t, f: tuple(_sums([t * 2.0, f])), short, flags)) == cpu_only
    assert ("dot(" in _hlo(lambda t: _sums([tf.exp(t)])[0], short)) == cpu_only
    long_rows, long_flags = _sum_parts(4096)
    assert "dot(" not in _hlo(lambda t, f: tuple(_sums([t * 2.0, f])), long_rows, long_flags)
    assert "dot(" not in _hlo(lambda t, f: tuple(_sums([t * 2.0, f], axis=1)), short, flags)
    old = _xla.set_dot_sums(False)
    try:
        assert "dot(" not in _hlo(lambda t, f: tuple(_sums([t * 2.0, f])), short, flags)
    finally:
        _xla.set_dot_sums(old)


def test_outside_xla_the_parts_are_reduced_by_tensorflow():
    terms, flags = _sum_parts(100)
    graph = tf.function(lambda t, f: tuple(_sums([t, f]))).get_concrete_function(terms, flags).graph
    ops = {op.type for op in graph.get_operations()}
    assert "Sum" in ops and not ops & {"Einsum", "BatchMatMulV2", "MatMul", "Complex"}


def test_sums_in_a_non_last_axis_and_of_complex_dtype_fall_back():
    terms, flags = _sum_parts(7)
    got = tf.function(lambda t, f: tuple(_sums([t, f], axis=1)), jit_compile=True)(terms, flags)
    np.testing.assert_allclose(got[1].numpy(), tf.reduce_sum(flags, 1, keepdims=True).numpy())
    z = tf.complex(terms, flags)
    (zs,) = tf.function(lambda z: tuple(_sums([z])), jit_compile=True)(z)
    np.testing.assert_allclose(zs.numpy(), tf.reduce_sum(z, -1, keepdims=True).numpy(), rtol=1e-5)


def test_eager_plain_runs_small_eager_calls_as_plain_ops():
    """``eager_plain``: an eager call below EAGER_PLAIN_BELOW elements runs the Python function eagerly;
    a larger one, and any call inside a tf.function, goes through the XLA function (a trace)."""
    seen = []

    def fn(x):
        seen.append(tf.executing_eagerly())
        return x * 2.0

    def gradients(dy, x, y):
        seen.append(tf.executing_eagerly())
        return dy * x, dy * y

    op = _xla.compiled(fn, True, eager_plain=True)
    np.testing.assert_array_equal(op(tf.ones([10])), np.full([10], 2.0))
    assert seen == [True]
    op(tf.ones([_xla.EAGER_PLAIN_BELOW]))
    assert seen == [True, False]
    tf.function(op)(tf.ones([10]))
    assert seen == [True, False, False]
    assert op.python_function is fn
    split = _xla.compiled_gradients(gradients, True, [(0,), (1,)], eager_plain=True)
    seen.clear()
    split(tf.ones([3]), tf.ones([3]), tf.ones([3]))
    assert seen == [True]
    split(*[tf.ones([_xla.EAGER_PLAIN_BELOW])] * 3)
    assert seen == [True, False, False]



def test_graph_plain_runs_small_static_shapes_in_a_tf_function_as_plain_ops():
    """``graph_plain``: in a tf.function, static shapes below GRAPH_PLAIN_BELOW elements run plain ops;
    a larger static shape, or one not fully known, goes through the XLA function."""
    def fn(x):
        return tf.sqrt(x)

    op = _xla.compiled(fn, True, eager_plain=True, graph_plain=True)

    def called(spec):
        graph = tf.function(op).get_concrete_function(spec).graph
        types = {o.type for o in graph.get_operations()}
        return "Sqrt" not in types and bool(types & {"PartitionedCall", "StatefulPartitionedCall"})

    assert not called(tf.TensorSpec([10]))
    assert not called(tf.TensorSpec([_xla.GRAPH_PLAIN_BELOW - 1]))
    assert called(tf.TensorSpec([_xla.GRAPH_PLAIN_BELOW]))
    assert called(tf.TensorSpec([None]))
    plain = _xla.compiled(fn, True, eager_plain=True)
    assert "Sqrt" not in {o.type for o in tf.function(plain).get_concrete_function(
        tf.TensorSpec([10])).graph.get_operations()}


_LABELS = tf.constant([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])


def _in_cond_cases():
    import safeops.math as tfm
    from safeops import losses

    y = _LABELS
    return {
        "log_softmax": tfm.log_softmax,
        "softmax": tfm.softmax,
        "reduce_logsumexp": lambda v: tfm.reduce_logsumexp(v, -1),
        "l2_normalize": lambda v: tfm.l2_normalize(v, -1),
        "norm": lambda v: tfm.norm(v, axis=-1),
        "xlogy": lambda v: tfm.xlogy(y, tf.abs(v) + 0.1),
        "xlog1py": lambda v: tfm.xlog1py(y, tf.abs(v)),
        "divide_no_nan": lambda v: tfm.divide_no_nan(y, v),
        "logaddexp": lambda v: tfm.logaddexp(v, -v),
        "softplus": tfm.softplus,
        "sigmoid_cross_entropy": lambda v: nn.sigmoid_cross_entropy_with_logits(y, v),
        "softmax_cross_entropy": lambda v: nn.softmax_cross_entropy_with_logits(y, v),
        "sparse_softmax_cross_entropy": lambda v: nn.sparse_softmax_cross_entropy_with_logits([2, 1], v),
        "binary_crossentropy": lambda v: losses.binary_crossentropy(y, v, from_logits=True),
        "categorical_focal": lambda v: losses.categorical_focal_crossentropy(y, v, from_logits=True),
        "kl_divergence": lambda v: losses.kl_divergence(y, tf.abs(v) / 10),
        "kl_divergence_with_logits": lambda v: losses.kl_divergence_with_logits(y, v),
        "info_nce": lambda v: losses.info_nce(None, tf.concat([v, v + 0.1], 1)),
    }


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_through_tf_cond_in_a_tf_function(jit):
    """An inner XLA function called by a tf.cond's gradient captured the branch's tensors inside its XLA
    context, which tf.cond's gradient then could not find ("Could not find external tensor capture")."""
    x = tf.constant([[0.5, 2.0, -1.0], [1.0, -3.0, 0.2]])
    failures = []
    for name, op in _in_cond_cases().items():
        def step(v, op=op):
            with tf.GradientTape() as tape:
                tape.watch(v)
                y = tf.cond(tf.reduce_sum(v) > 0.0, lambda: op(v), lambda: op(2.0 * v))
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, v)

        want = step(x)
        try:
            got = tf.function(step, autograph=False, jit_compile=jit)(x)
        except Exception as error:  # noqa: BLE001 - collected and reported
            failures.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
            continue
        if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
            failures.append(f"{name}: {got} != {want}")
    assert not failures, "\n".join(failures)


def test_eager_calls_of_other_shapes_leave_a_tf_function_compilable():
    """The inner XLA functions' relaxed traces (reduce_retracing, after eager calls of a few shapes) were
    used inside tf.functions too, where their outputs of unknown shape reached a kl_divergence gradient in
    a tf.cond under jit_compile whose reduction XLA could then not compile ("must be a compile-time
    constant"). Inside a tf.function each trace now keeps the caller's shapes."""
    from safeops import losses

    losses.kl_divergence(tf.constant([[1 - 1e-5, 1e-5]], tf.float16), tf.constant([[1.0, 0.0]], tf.float16))
    for dtype in (tf.float16, tf.float32):
        y = tf.constant([[0.0, 1.0, 0.0]], dtype)
        with tf.GradientTape() as tape:
            tape.watch(y)
            value = losses.kl_divergence(y, tf.constant([[0.0, 1.0, 0.0]], dtype))
        tape.gradient(value, y)
    labels = tf.constant([[0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])

    def step(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = tf.cond(tf.reduce_sum(v) > 0.0, lambda: losses.kl_divergence(labels, tf.abs(v) / 10),
                        lambda: losses.kl_divergence(labels, tf.abs(2.0 * v) / 10))
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, v)

    x = tf.constant([[0.5, 2.0, -1.0], [1.0, -3.0, 0.2]])
    np.testing.assert_allclose(tf.function(step, autograph=False, jit_compile=True)(x), step(x), rtol=1e-5)


def _fused_input_cases():
    from safeops import losses
    import safeops.math as tfm

    rng = np.random.default_rng(6)
    y = rng.uniform(0.05, 0.9, size=(64, 10)).astype(np.float32)
    y /= y.sum(-1, keepdims=True)
    labels = tf.argmax(y, -1)
    return {
        "softmax_xent": lambda v: nn.softmax_cross_entropy_with_logits(y, v),
        "sparse_xent": lambda v: nn.sparse_softmax_cross_entropy_with_logits(labels, v),
        "cce_logits": lambda v: losses.categorical_crossentropy(y, v, from_logits=True),
        "scce_logits": lambda v: losses.sparse_categorical_crossentropy(labels, v, from_logits=True),
        "cce_of_softmax": lambda v: losses.categorical_crossentropy(y, tf.nn.softmax(v)),
        "focal_logits": lambda v: losses.categorical_focal_crossentropy(y, v, from_logits=True),
        "kl_with_logits": lambda v: losses.kl_divergence_with_logits(y * 3.0, v),
        "log_softmax": lambda v: tfm.log_softmax(v) * y,
        "softmax": lambda v: tfm.softmax(v) * y,
        "reduce_logsumexp": lambda v: tfm.reduce_logsumexp(v, -1),
        "weighted_logsumexp": lambda v: tfm.reduce_logsumexp(v, -1, weights=y),
    }


@pytest.mark.parametrize("scale", ["times_c", "over_t", "tanh"])
@pytest.mark.parametrize("name", sorted(_fused_input_cases()))
def test_row_ops_of_a_fused_expression_under_jit_compile(name, scale):
    """Logits XLA fuses into the op (x * 1.3, x / 0.7, tanh(x) * 5): XLA contracted the product and the
    shift x - max into one fused multiply-add in some loops, so x - max was 1e-8, not 0, at the maximum;
    the softmax cross-entropies counted no tie and lost the maximum's term (losses 18% to 100 times off,
    gradients wrong). Against the same function run eagerly."""
    op = _fused_input_cases()[name]
    expr = {"times_c": lambda v: v * 1.3, "over_t": lambda v: v / 0.7,
            "tanh": lambda v: tf.tanh(v) * 5.0}[scale]
    x = tf.constant(np.random.default_rng(7).normal(size=(64, 10)).astype(np.float32))

    def value_and_grad(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = op(expr(v))
        return out, tape.gradient(out, v)

    for got, want in zip(tf.function(value_and_grad, jit_compile=True)(x), value_and_grad(x)):
        got, want = got.numpy(), want.numpy()
        # Relative to the largest entry: XLA rounds x / 0.7 as x * (1 / 0.7), a 1-ULP different input.
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want)), (got, want)


def test_softmax_xent_in_a_while_loop_under_jit_compile():
    """The same contraction in a loop body: tf.while_loop's gradient under jit_compile was 2.2 times off."""
    rng = np.random.default_rng(8)
    x = tf.constant(rng.normal(size=(6, 4)).astype(np.float32))
    y = tf.constant(rng.dirichlet(np.ones(4), size=6).astype(np.float32))

    def loss(v):
        def body(i, acc):
            scale = tf.cast(i + 1, tf.float32) / 3.0
            return i + 1, acc + tf.reduce_sum(nn.softmax_cross_entropy_with_logits(y, v * scale))
        return tf.while_loop(lambda i, acc: i < 3, body, (0, 0.0), maximum_iterations=3)[1]

    def grad(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            total = loss(v)
        return total, tape.gradient(total, v)

    for got, want in zip(tf.function(grad, jit_compile=True)(x), grad(x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_exact_input_guards_only_what_xla_may_recompute():
    """The guard (nextafter) goes only where the producer is fused: not on parameters or matmuls."""
    seen = {}

    def f(v, w):
        product = tf.matmul(v, w)
        half = tf.cast(tf.matmul(tf.cast(v, tf.float16), tf.cast(w, tf.float16)), tf.float32)
        cases = {"parameter": v, "matmul": product, "bias": tf.nn.bias_add(product, [1.0, 2.0]),
                 "scaled": v * 1.3, "bias_of_scaled": tf.nn.bias_add(v * 1.3, [1.0, 2.0]),
                 "half_matmul": half, "half_scaled": tf.cast(tf.cast(v, tf.float16) * 1.5, tf.float32)}
        out = {}
        for name, t in cases.items():
            guarded = _xla.exact_input(t)
            seen[name] = guarded.op.type
            out[name] = guarded
        return out

    v, w = tf.constant([[1.0, 2.0], [3.0, 4.0]]), tf.constant([[0.5, 0.0], [0.0, 0.5]])
    got = tf.function(f, jit_compile=True)(v, w)
    assert seen == {"parameter": "Placeholder", "matmul": "MatMul", "bias": "BiasAdd",
                    "scaled": "NextAfter", "bias_of_scaled": "NextAfter", "half_matmul": "Cast",
                    "half_scaled": "NextAfter"}
    np.testing.assert_array_equal(got["scaled"], v.numpy() * np.float32(1.3))
    plain = tf.function(f)(v, w)  # outside XLA nothing is guarded
    assert seen["scaled"] == "Mul"
    np.testing.assert_array_equal(plain["bias_of_scaled"], got["bias_of_scaled"])


def test_an_earlier_trace_of_unknown_shape_leaves_static_shapes():
    """TensorFlow reused the [None, 4] trace of an inner XLA function for a [6, 4] call: the unknown
    shapes of its outputs reached a tf.while_loop's gradient under jit_compile, which XLA refused."""
    from safeops import losses

    rng = np.random.default_rng(9)
    x = tf.constant(rng.uniform(0.05, 0.9, size=(6, 4)).astype(np.float32))
    y = tf.constant(rng.uniform(0.05, 0.9, size=(6, 4)).astype(np.float32))
    general = tf.function(losses.kl_divergence, input_signature=[tf.TensorSpec([None, 4])] * 2)
    general(y, x)

    def grad(v):
        with tf.GradientTape() as tape:
            tape.watch(v)

            def body(i, acc):
                scaled = v * tf.cast(i + 1, tf.float32) / 3.0
                return i + 1, acc + tf.reduce_sum(losses.kl_divergence(y, scaled))
            total = tf.while_loop(lambda i, acc: i < 3, body, (0, 0.0), maximum_iterations=3)[1]
        return tape.gradient(total, v)

    np.testing.assert_allclose(tf.function(grad, jit_compile=True)(x), grad(x), rtol=1e-5)


def _xla_calls(fn, *specs) -> int:
    """How many inner XLA calls (``_XlaMustCompile`` function calls) ``fn`` traced for ``specs`` holds."""
    graph = tf.function(fn).get_concrete_function(*specs).graph
    count = 0
    for op in graph.get_operations():
        try:
            count += bool(op.get_attr("_XlaMustCompile"))
        except ValueError:
            pass
    return count


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "reduce_logsumexp"])
def test_an_unknown_dimension_after_the_first_runs_plain_ops(op):
    """XLA would compile at run time for every shape that comes (padded_batch sequences), unseen."""
    def fn(x):
        return getattr(tfm, op)(x, axis=-1)
    assert _xla_calls(fn, tf.TensorSpec([None, 5])) == 1      # Keras' unknown batch: compiled
    assert _xla_calls(fn, tf.TensorSpec([3, 5])) == 1
    assert _xla_calls(fn, tf.TensorSpec([None, None])) == 0   # plain ops
    assert _xla_calls(fn, tf.TensorSpec([4, None, 5])) == 0
    assert _xla_calls(fn, tf.TensorSpec(None)) == 0
    x = tf.constant([[1.0, -2.0, 30.0], [0.5, 0.25, -1.0]])
    plain = tf.function(fn, input_signature=[tf.TensorSpec([None, None])])(x)
    np.testing.assert_allclose(plain.numpy(), fn(x).numpy(), rtol=1e-6)


def test_rows_kept_by_a_boolean_mask_run_plain_ops():
    """Their count changes at every step (a Where): XLA would compile for each; a gather keeps XLA."""
    def masked(logits, labels, mask):
        return nn.sparse_softmax_cross_entropy_with_logits(tf.boolean_mask(labels, mask),
                                                           tf.boolean_mask(logits, mask))

    specs = (tf.TensorSpec([4, 6, 5]), tf.TensorSpec([4, 6], tf.int32), tf.TensorSpec([4, 6], tf.bool))
    assert _xla_calls(masked, *specs) == 0
    gathered = tf.TensorSpec([4, 5]), tf.TensorSpec([None], tf.int32)
    assert _xla_calls(lambda x, i: tfm.log_softmax(tf.gather(x, i)), *gathered) == 1
    logits = tf.reshape(tf.range(120, dtype=tf.float32) * 0.37 % 5.0, [4, 6, 5])
    labels = tf.reshape(tf.range(24) % 5, [4, 6])
    mask = tf.reshape(tf.range(24) % 3 > 0, [4, 6])
    np.testing.assert_allclose(tf.function(masked)(logits, labels, mask).numpy(),
                               tf.nn.sparse_softmax_cross_entropy_with_logits(
                                   tf.boolean_mask(labels, mask), tf.boolean_mask(logits, mask)).numpy(),
                               rtol=1e-5)


def test_padded_sequences_reshaped_to_rows_run_plain_ops():
    """[batch, time, classes] -> [-1, classes] with an unknown time: the row count changes with each batch."""
    def flattened(logits):
        return tfm.log_softmax(tf.reshape(logits, [-1, 3]))

    assert _xla_calls(flattened, tf.TensorSpec([None, None, 3])) == 0
    assert _xla_calls(flattened, tf.TensorSpec([None, 4, 3])) == 1     # only the batch unknown
    weights = tf.Variable(tf.ones([7, 3]))
    assert _xla_calls(lambda x: tfm.log_softmax(tf.matmul(x, weights)), tf.TensorSpec([None, 7])) == 1


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_past_the_shape_limit_new_shapes_run_plain_ops_with_one_warning(mode, monkeypatch):
    """Each compiled shape keeps memory mappings for good: a shape per step crashed TensorFlow."""
    monkeypatch.setattr(_xla, "_shape_limit", 3)
    monkeypatch.setattr(_xla, "_shape_limit_warned", False)
    gamma = 2.37 if mode == "eager" else 2.41   # a configuration of its own: a fresh inner function
    def loss(y, x):
        return losses.categorical_focal_crossentropy(y, x, gamma=gamma, from_logits=True)
    calls = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(2, 8):
            x = tf.constant(np.linspace(-3.0, 3.0, 2 * n).reshape(2, n), tf.float32)
            y = tf.one_hot([0, n - 1], n)
            if mode == "graph":
                calls.append(_xla_calls(lambda x, y=y: loss(y, x), tf.TensorSpec(x.shape)))
            got = loss(y, x) if mode == "eager" else tf.function(loss)(y, x)
            np.testing.assert_allclose(got.numpy(), keras.losses.categorical_focal_crossentropy(
                y, x, gamma=gamma, from_logits=True).numpy(), rtol=1e-5)
    limit_warnings = [w for w in caught if "SAFEOPS_INNER_XLA_SHAPES" in str(w.message)]
    assert len(limit_warnings) == 1 and limit_warnings[0].category is RuntimeWarning
    if mode == "graph":
        assert min(calls[:3]) > 0 and calls[3:] == [0, 0, 0], calls


def test_the_shape_limit_is_checked():
    with pytest.raises(ValueError, match="shape limit must be a non-negative int, got -1"):
        _xla.set_shape_limit(-1)
    old = _xla.set_shape_limit(5)
    assert _xla.set_shape_limit(old) == 5



@pytest.mark.parametrize("shape, axis", [
    ((100_000,), None), ((3, 4096), -1), ((3, 4096), 1), ((50_000, 3), 0), ((4, 1000, 5), (1, 2)),
    ((6, 3000, 2), 1), ((20, 2, 9), (0, 2)), ((2, 4099), -1), ((5, 7), None), ((), None), ((4, 3), [])])
@pytest.mark.parametrize("known", [True, False])
def test_blocked_sums_are_float64_sums_of_float32_blocks(shape, axis, known):
    """Same shape as ``reduce_sum(keepdims=True)`` and within 3 ULP of the float64 sum, for trailing,
    leading and non-contiguous axes, a prime length (4099) and a leading axis of unknown length."""
    rng = np.random.default_rng(len(shape))
    x = np.full(shape, 1.21, np.float32)
    x.reshape(-1)[::5] = rng.uniform(0, 10, size=x.reshape(-1)[::5].shape)
    spec = tf.TensorSpec([d if known or i else None for i, d in enumerate(shape)], tf.float32)
    got = tf.function(lambda v: _xla.blocked_sums(v, axis), input_signature=[spec])(tf.constant(x)).numpy()
    want = np.sum(x.astype(np.float64), axis=tuple(axis) if isinstance(axis, list) else axis, keepdims=True)
    assert got.shape == want.shape and got.dtype == np.float32
    ulps = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32))
    assert ulps.max() <= 3, ulps.max()


def _float64_rows(n):
    """Two float64 rows of ``n`` entries: periodic (equal terms, the worst case of a running sum) and
    their reverse order."""
    v = np.where(np.arange(n) % 7 == 0, 1.44, 0.09) * 1.1
    return np.stack([v, v[::-1]])


def _exact_sums(rows):
    return np.array([math.fsum(r.tolist()) for r in rows])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["last", "leading", "middle", "all", "unknown_kept", "unknown_length"])
@pytest.mark.parametrize("n", [17, 1000, 100_003])
def test_cascaded_sums_of_float64_within_2_ulp(n, layout, mode):
    """Float64 has no wider type to sum in: TensorFlow's and XLA's float64 sums of these rows were up
    to 29 ULP off over the last axis, up to 48588 over a leading one (running sums). As a tree of
    short sums: within 2 ULP, the shape of ``reduce_sum(keepdims=True)``, for every layout."""
    rows = _float64_rows(n)
    want = _exact_sums(rows)
    x, axis = {"last": (rows, -1), "leading": (rows.T, 0), "middle": (rows.T[None], 1),
               "all": (rows[:1], None), "unknown_kept": (rows, 1), "unknown_length": (rows, 1)}[layout]
    fn = lambda v: _xla.cascaded_sums(v, axis)  # noqa: E731
    if layout.startswith("unknown"):
        spec = [None, n] if layout == "unknown_kept" else [2, None]
        fn = tf.function(fn, input_signature=[tf.TensorSpec(spec, tf.float64)], jit_compile=mode == "jit")
        got = fn(tf.constant(x)).numpy()
    else:
        got = run(mode, fn)(tf.constant(x)).numpy()
    assert got.shape == np.sum(x, axis=axis, keepdims=True).shape and got.dtype == np.float64
    got = got.reshape(-1)
    want = want[:got.size]
    ulps = np.abs(got - want) / np.spacing(want)
    assert ulps.max() <= 2, ulps.max()


def test_cascaded_sums_leave_other_dtypes_and_short_rows_to_one_reduction():
    x = tf.constant(_float64_rows(16))
    np.testing.assert_array_equal(_xla.cascaded_sums(x, -1), tf.reduce_sum(x, -1, keepdims=True))
    x32 = tf.cast(tf.constant(_float64_rows(1000)), tf.float32)
    np.testing.assert_array_equal(_xla.cascaded_sums(x32, -1), tf.reduce_sum(x32, -1, keepdims=True))


_LD = np.longdouble


def _log_softmax_ld(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), -1, keepdims=True))


def _float64_long_row_cases(n):
    """``name: (op of (a, b), a, b, reference per output entry)`` over rows of ``n`` float64 entries."""
    i = np.arange(2 * n).reshape(2, n)
    x = np.where(i % 7 == 0, -1.2, 0.3)
    t = np.where(i % 5 == 0, 0.7, -0.4)
    yb = np.where(i % 3 == 0, 1.0, 0.0)
    pat = np.where(i % 7 == 0, 0.8, 0.3)
    yk, pk = pat / pat.sum(-1, keepdims=True), np.abs(x) / np.abs(x).sum(-1, keepdims=True)
    X, T, Y, P = (v.astype(_LD) for v in (x, t, yk, pk))
    lp, lq = _log_softmax_ld(X), _log_softmax_ld(T)
    sig = 1 / (1 + np.exp(-X))
    return {
        "norm": (lambda a, b: tfm.norm(b, axis=-1), x, x, np.sqrt(np.sum(X * X, -1))),
        "norm_ord1": (lambda a, b: tfm.norm(b, ord=1, axis=-1), x, x, np.sum(np.abs(X), -1)),
        "norm_leading": (lambda a, b: tfm.norm(b, axis=0), x, x.T.copy(), np.sqrt(np.sum(X * X, -1))),
        "l2_normalize": (lambda a, b: tfm.l2_normalize(b, axis=-1)[:, :4], x, x,
                         (X / np.sqrt(np.sum(X * X, -1, keepdims=True)))[:, :4]),
        "softmax": (lambda a, b: tfm.softmax(b, axis=-1)[:, :4], x, x, np.exp(lp)[:, :4]),
        "softmax_cross_entropy": (lambda a, b: nn.softmax_cross_entropy_with_logits(a, b), yk, x,
                                  np.sum(Y * -lp, -1)),
        "categorical_crossentropy": (lambda a, b: losses.categorical_crossentropy(a, b), yk, pk,
                                     np.sum(Y * -np.log(P), -1)),
        "binary_crossentropy": (lambda a, b: losses.binary_crossentropy(a, b, from_logits=True), yb, x,
                                np.mean(np.logaddexp(0, X) - yb * X, -1)),
        "binary_focal": (lambda a, b: losses.binary_focal_crossentropy(a, b, from_logits=True), yb, x,
                         np.mean(np.where(yb == 1, -(1 - sig) ** 2 * np.log(sig),
                                          -sig ** 2 * np.log(1 - sig)), -1)),
        "poisson": (lambda a, b: losses.poisson(a, b), yb, pat,
                    np.mean(pat - yb * np.log(pat.astype(_LD)), -1)),
        "kl_divergence": (lambda a, b: losses.kl_divergence(a, b), yk, pk, np.sum(Y * np.log(Y / P), -1)),
        "kl_divergence_with_logits": (lambda a, b: losses.kl_divergence_with_logits(a, b), t, x,
                                      np.sum(np.exp(lq) * (lq - lp), -1)),
    }


@pytest.fixture(scope="module")
def float64_long_rows():
    assert np.finfo(_LD).eps < 1e-18, "the reference needs an extended long double"
    return _float64_long_row_cases(100_000), _float64_long_row_cases(300)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(_float64_long_row_cases(8)))
def test_float64_long_rows_within_c3(float64_long_rows, name, mode):
    """C3 for float64 inputs over rows of 1e5 periodic entries: their float64 sums, as TensorFlow's
    kernels and XLA add them, left all but ``softmax`` 5 to 15 ULP off in some mode (the norm over a
    leading axis 508; ``softmax`` was 36 ULP off over rows of 1e6 under XLA); as trees of short sums
    (``safeops._xla.cascaded_sums``) within 3. Against the same formulas in extended precision.
    Eagerly after a call of another shape: an inner XLA function's relaxed trace, whose summed
    length is unknown, left the softmax cross-entropy 7 ULP off (one reduction)."""
    op, a, b, want = float64_long_rows[0][name]
    if mode == "eager":  # a first shape, so that an inner XLA function takes its relaxed trace for these
        _, short_a, short_b, _ = float64_long_rows[1][name]
        op(tf.constant(short_a), tf.constant(short_b))
    got = run(mode, op)(tf.constant(a), tf.constant(b)).numpy()
    want = np.asarray(want, dtype=np.float64)
    ulps = np.abs(got - want) / np.spacing(np.abs(want))
    assert ulps.max() <= 4, ulps.max()


def test_computed_once_is_the_value_bit_for_bit_and_the_gradient_reads_it():
    """``_xla.computed_once``: ``y / (1 + 0 y)`` under XLA, the same bits (signed zeros, NaN; a
    subnormal may be flushed); under an outer jit_compile ``erfinv``'s gradient loop then reads the
    forward's output."""
    import re

    tiny = np.finfo(np.float32).tiny
    y = tf.constant([0.0, -0.0, tiny / 4, -3.4e38, 1.5, np.nan], tf.float32)
    got = tf.function(_xla.computed_once, jit_compile=True, autograph=False)(y).numpy()
    keep = [0, 1, 3, 4]
    np.testing.assert_array_equal(got.view(np.int32)[keep], y.numpy().view(np.int32)[keep])
    assert got[2] in (0.0, tiny / 4)   # XLA's CPU division flushes a subnormal (C3 allows it)
    assert np.isnan(got[5])
    assert tf.function(_xla.computed_once)(y).numpy().view(np.int32)[1] == y.numpy().view(np.int32)[1]

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tfm.erfinv(x)
        return out, tape.gradient(out, x)

    x = tf.constant(np.linspace(-0.99, 0.99, 4096, dtype=np.float32))
    hlo = tf.function(step, jit_compile=True).experimental_get_compiler_ir(x)(stage="optimized_hlo")
    entry = hlo[hlo.index("ENTRY"):]
    value, gradient = re.search(r"ROOT \S+ = .*tuple\((%\S+), (%\S+)\)", entry).groups()
    producer = re.search(re.escape(gradient) + r" = [^\n]*fusion\(([^)]*)\)", entry).group(1)
    assert value in [operand.strip() for operand in producer.split(",")], entry


def test_eager_graph_traces_once_per_dtype_and_rank_and_leaves_accumulators_the_ops():
    """``eager_graph``: small eager calls run one uncompiled trace per dtype and rank, every dimension
    unknown; a first-order tape does not record the call (the op's custom gradient stands for it); under
    a ForwardAccumulator or nested tapes the function runs op by op, so the JVP goes through it."""
    seen = []

    def fn(x):
        seen.append((tf.executing_eagerly(), x.shape.as_list()))
        return x * x

    op = _xla.compiled(fn, True, eager_plain=True, eager_graph=True)
    for n in (3, 5, 7):
        np.testing.assert_array_equal(op(tf.fill([n], 3.0)), np.full([n], 9.0))
    op(tf.ones([2, 3]))
    op(tf.ones([4], tf.float64))
    op(tf.constant(2.0))
    assert seen == [(False, [None]), (False, [None, None]), (False, [None]), (False, [])]
    assert op.python_function is fn
    x = tf.constant([1.0, 2.0])
    seen.clear()
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = op(x)
    np.testing.assert_array_equal(y, [1.0, 4.0])
    assert tape.gradient(y, x) is None and seen == []
    with tf.autodiff.ForwardAccumulator(x, tf.constant([1.0, 1.0])) as accumulator:
        y = op(x)
    np.testing.assert_array_equal(accumulator.jvp(y), [2.0, 4.0])
    _, dx, second = derivatives(op, x)   # nested tapes, eagerly
    np.testing.assert_array_equal(dx, [2.0, 4.0])
    np.testing.assert_array_equal(second, [2.0, 2.0])
    assert seen == [(True, [2]), (True, [2])]
    op(tf.ones([_xla.EAGER_PLAIN_BELOW]))   # the XLA function: a trace of the static shape
    assert seen[-1] == (False, [_xla.EAGER_PLAIN_BELOW])


@pytest.mark.parametrize("name", ["erfinv", "ndtri"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_quantiles_eager_graph_calls_equal_their_ops_one_by_one(name, dtype):
    """Small eager calls of erfinv/ndtri (one graph function) give the bits of their ops run one by one
    (under a ForwardAccumulator), and a first-order tape's gradient is the op's own."""
    op = getattr(tfm, name)
    rng = np.random.default_rng(7)
    low = -1.0 if name == "erfinv" else 0.0
    # Both ends too: float64 erfinv's series below 1e-4 and its erfc residual near 1.
    ends = [10.0 ** -rng.uniform(4.0, 30.0, 100), 1.0 - 10.0 ** -rng.uniform(1.0, 15.0, 100)]
    x = tf.constant(np.concatenate([rng.uniform(low, 1.0, 797), *ends, [low, 1.0, np.nan]]), dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = op(x)
    dx = tape.gradient(y, x)
    with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)):
        one_by_one = op(x)
    bits = "u8" if dtype == tf.float64 else "u4"
    np.testing.assert_array_equal(y.numpy().view(bits), one_by_one.numpy().view(bits))
    y64 = tf.cast(y, tf.float64)
    scale = math.sqrt(math.pi) / 2 if name == "erfinv" else math.sqrt(2 * math.pi)
    exponent = y64 * y64 if name == "erfinv" else y64 * y64 / 2
    np.testing.assert_allclose(dx[:-1], (scale * tf.exp(exponent))[:-1], rtol=1e-5)
    assert np.isnan(dx[-1])

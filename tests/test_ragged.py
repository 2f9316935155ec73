"""``tf.RaggedTensor`` (``safeops._ragged``) and ``tf.SparseTensor`` inputs, where TensorFlow takes them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops import nn

ROWS = [[1.0, 2.0], [], [3.0, -4.0, 5.0]]
UNARY = ["log", "log1p", "sigmoid", "log_sigmoid", "softplus", "sqrt", "rsqrt"]


@pytest.fixture(scope="module")
def rt():
    return tf.ragged.constant(ROWS)


@pytest.mark.parametrize("name", UNARY)
def test_elementwise_ops_keep_the_row_partition(rt, name):
    got = getattr(tfm, name)(rt)
    assert isinstance(got, tf.RaggedTensor)
    np.testing.assert_array_equal(got.row_splits.numpy(), rt.row_splits.numpy())
    np.testing.assert_array_equal(got.flat_values.numpy(), getattr(tfm, name)(rt.flat_values).numpy())


@pytest.mark.parametrize("name", ["xlogy", "xlog1py", "logaddexp", "divide_no_nan"])
def test_binary_ops_take_two_ragged_operands_or_a_scalar(rt, name):
    fn = getattr(tfm, name)
    np.testing.assert_array_equal(fn(rt, rt).flat_values.numpy(), fn(rt.flat_values, rt.flat_values).numpy())
    np.testing.assert_array_equal(fn(rt, 2.0).flat_values.numpy(), fn(rt.flat_values, 2.0).numpy())


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_row_ops_along_the_ragged_axis_match_tensorflow(rt, name, mode):
    # tf.nn.softmax dispatches ragged input; tf.nn.log_softmax does not (TF 2.21), so row by row.
    fn = getattr(tfm, name)
    run = fn if mode == "eager" else tf.function(fn)
    got = run(rt)
    assert isinstance(got, tf.RaggedTensor)
    np.testing.assert_array_equal(got.row_splits.numpy(), rt.row_splits.numpy())
    rows = [np.array(r, np.float64) - np.log(np.sum(np.exp(r))) for r in ROWS if r]
    expected = np.concatenate(rows)
    if name == "softmax":
        expected = np.exp(expected)
    np.testing.assert_allclose(got.flat_values.numpy(), expected, rtol=1e-6)
    if name == "softmax":
        np.testing.assert_allclose(got.flat_values.numpy(), tf.nn.softmax(rt).flat_values.numpy(), rtol=1e-6)
    assert getattr(nn, name)(rt).flat_values.shape == (5,)


@pytest.mark.parametrize("rows, ragged_rank, axis", [
    ([[[1.0, 2.0], [3.0, 4.0]], [], [[5.0, 7.0]]], 1, -1),  # a uniform inner axis
    ([[[1.0, 2.0], [3.0, 4.0]], [], [[5.0, 7.0]]], 1, 1),  # the ragged axis, uniform inside
    ([[[1.0, 2.0], [3.0]], [], [[5.0, 6.0, 7.0], []]], 2, -1),  # the inner of two ragged axes
])
def test_row_ops_along_other_axes_match_tensorflow(rows, ragged_rank, axis):
    x = tf.ragged.constant(rows, ragged_rank=ragged_rank)
    got, expected = tfm.softmax(x, axis=axis), tf.nn.softmax(x, axis=axis)
    np.testing.assert_array_equal(got.nested_row_splits[-1].numpy(), expected.nested_row_splits[-1].numpy())
    np.testing.assert_allclose(got.flat_values.numpy(), expected.flat_values.numpy(), rtol=1e-6)


def test_reduce_logsumexp_over_ragged_axes_is_dense(rt):
    flat = np.array([1.0, 2.0, 3.0, -4.0, 5.0])
    lse = lambda v: float(np.log(np.sum(np.exp(v))))  # noqa: E731
    np.testing.assert_allclose(tfm.reduce_logsumexp(rt).numpy(), lse(flat), rtol=1e-6)
    np.testing.assert_allclose(tfm.reduce_logsumexp(rt, keepdims=True).numpy(), [[lse(flat)]], rtol=1e-6)
    np.testing.assert_allclose(tfm.reduce_logsumexp(rt, axis=1).numpy(),
                               [lse([1, 2]), -np.inf, lse([3, -4, 5])], rtol=1e-6)
    # axis 0 (TensorFlow 2.21 fails here): each column over the rows that have it.
    np.testing.assert_allclose(tfm.reduce_logsumexp(rt, axis=0).numpy(),
                               [lse([1, 3]), lse([2, -4]), 5.0], rtol=1e-6)
    np.testing.assert_allclose(tfm.reduce_logsumexp(rt, axis=-1).numpy(),
                               tf.math.reduce_logsumexp(rt, -1).numpy(), rtol=1e-6)


def test_gradients_reach_the_flat_values():
    values = tf.constant([1.0, 2.0, 3.0, -4.0, 5.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(values)
        r = tf.RaggedTensor.from_row_lengths(values, [2, 0, 3])
        lse = tfm.reduce_logsumexp(r, axis=1)
        weighted = tf.reduce_sum(tfm.softmax(r).flat_values * tf.range(5.0))
        tf_weighted = tf.reduce_sum(tf.nn.softmax(r).flat_values * tf.range(5.0))
        logs = tf.reduce_sum(tfm.log(r).flat_values)
        dense_logs = tf.reduce_sum(tfm.log(values))
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(lse, values)).numpy(),
                               tf.nn.softmax(r).flat_values.numpy(), rtol=1e-6)
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(weighted, values)).numpy(),
                               tf.convert_to_tensor(tape.gradient(tf_weighted, values)).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(tf.convert_to_tensor(tape.gradient(logs, values)).numpy(),
                                  tape.gradient(dense_logs, values).numpy())  # -4: the clamped log's gradient


def test_unsupported_ragged_uses_raise_type_errors_naming_the_argument(rt):
    r3 = tf.ragged.constant([[[1.0, 2.0]], [], [[5.0, 6.0]]], ragged_rank=1)
    with pytest.raises(TypeError, match="reduce_logsumexp: input_tensor must be a RaggedTensor reduced"):
        tfm.reduce_logsumexp(r3, axis=2)
    with pytest.raises(TypeError, match="softmax: logits must be a RaggedTensor taken along"):
        tfm.softmax(rt, axis=0)
    with pytest.raises(TypeError, match="log_softmax: logits must be a RaggedTensor taken along"):
        tfm.log_softmax(tf.ragged.constant([[[1.0], [2.0, 3.0]], [[4.0]]]), axis=1)
    with pytest.raises(TypeError, match="reduce_logsumexp: weights must be None"):
        tfm.reduce_logsumexp(rt, weights=tf.ones([3]))
    with pytest.raises(TypeError, match="log: x must be a floating-point tensor"):
        tfm.log(tf.ragged.constant([[1, 2], [3]]))


def test_sqrt_of_a_sparse_tensor_is_sparse_as_in_tensorflow():
    st = tf.sparse.SparseTensor([[0, 1], [1, 0]], [4.0, 0.25], [2, 2])
    got = tfm.sqrt(st)
    assert isinstance(got, tf.SparseTensor)
    np.testing.assert_array_equal(got.indices.numpy(), st.indices.numpy())
    np.testing.assert_array_equal(got.values.numpy(), [2.0, 0.5])


@pytest.mark.parametrize("name", ["log", "sigmoid", "softmax", "reduce_logsumexp"])
def test_other_ops_refuse_a_sparse_tensor_naming_the_argument(name):
    st = tf.sparse.SparseTensor([[0, 1]], [4.0], [2, 2])
    with pytest.raises(TypeError, match=f"{name}: .* must be a dense floating-point tensor .*a SparseTensor"):
        getattr(tfm, name)(st)


@pytest.mark.parametrize("call", [lambda r: tfm.norm(r), lambda r: tfm.l2_normalize(r, axis=-1),
                                  lambda r: tfm.reduce_euclidean_norm(r, axis=1),
                                  lambda r: nn.weighted_cross_entropy_with_logits(r, r, 2.0)],
                         ids=["norm", "l2_normalize", "reduce_euclidean_norm", "weighted_cross_entropy"])
def test_ops_tensorflow_refuses_ragged_for_refuse_it_naming_the_argument(rt, call):
    with pytest.raises(TypeError, match=r"must be a dense floating-point tensor .*got a RaggedTensor"):
        call(rt)


@pytest.mark.parametrize("name", ["xlogy", "xlog1py", "divide_no_nan"])
def test_binary_ops_broadcast_a_dense_operand_against_the_rows(name):
    """``op(ragged [3, None], dense [3, 1])`` is row-wise, as in tf.math.

    The dense operand went to ``map_flat_values`` as it was and broadcast
    against the flat values: shape ``[3, None, 3]`` when the lengths
    matched, an error naming no argument otherwise.
    """
    for rt in (tf.ragged.constant([[1.0], [2.0], [3.0]]), tf.ragged.constant([[1.0, 2.0, 3.0], [0.5], []])):
        y = tf.constant([[2.0], [3.0], [4.0]])
        for a, b in ((rt, y), (y, rt)):
            want = getattr(tf.math, name)(a, b)
            got = getattr(tfm, name)(a, b)
            assert got.shape.as_list() == want.shape.as_list()
            np.testing.assert_allclose(got.flat_values.numpy(), want.flat_values.numpy(), rtol=1e-6)
    rt = tf.ragged.constant([[1.0, 2.0, 3.0], [0.5], []])
    y = tf.constant([[2.0], [3.0], [4.0]])
    with tf.GradientTape() as tape:
        tape.watch(y)
        value = getattr(tfm, name)(rt, y)
    grad = tape.gradient(value, y).numpy().ravel()
    mask = tf.sequence_mask(rt.row_lengths(), 3, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(y)
        dense = getattr(tf.math, name)(rt.to_tensor(), y) * mask
    np.testing.assert_allclose(grad, tape.gradient(dense, y).numpy().ravel(), rtol=1e-6)


def test_logaddexp_broadcasts_a_dense_operand_against_the_rows():
    rt = tf.ragged.constant([[1.0, 2.0, 3.0], [0.5], []])
    got = tfm.logaddexp(rt, tf.constant([[2.0], [3.0], [4.0]]))
    want = [[np.logaddexp(v, w) for v in row] for row, w in zip(rt.to_list(), [2.0, 3.0, 4.0])]
    assert got.shape.as_list() == [3, None]
    for g, w in zip(got.to_list(), want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_sigmoid_cross_entropy_takes_ragged_tensors_as_tensorflow_does():
    """TensorFlow dispatches it to the flat values; it raised 'object of type RaggedTensor has no len()'."""
    logits = tf.ragged.constant([[1.0, -2.0, 3.0], [0.5], []])
    labels = tf.ragged.constant([[1.0, 0.0, 0.5], [1.0], []])
    want = tf.nn.sigmoid_cross_entropy_with_logits(labels, logits)
    with tf.GradientTape() as tape:
        tape.watch(logits.flat_values)
        got = nn.sigmoid_cross_entropy_with_logits(labels, logits)
    assert got.shape.as_list() == want.shape.as_list()
    np.testing.assert_allclose(got.flat_values.numpy(), want.flat_values.numpy(), rtol=1e-6)
    grad = tape.gradient(got.flat_values, logits.flat_values).numpy()
    expected = tf.sigmoid(logits.flat_values).numpy() - labels.flat_values.numpy()
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_binary_op_of_a_ragged_and_a_dense_operand_inside_tf_function():
    rt = tf.ragged.constant([[1.0, 2.0, 3.0], [0.5], []])
    y = tf.constant([[2.0], [3.0], [4.0]])
    got = tf.function(lambda a, b: tfm.xlogy(a, b))(rt, y)
    want = tf.math.xlogy(rt, y)
    np.testing.assert_allclose(got.flat_values.numpy(), want.flat_values.numpy(), rtol=1e-6)


_LAST_AXIS_LOSSES = ["kl_divergence", "poisson", "categorical_focal_crossentropy"]


@pytest.mark.parametrize("name", _LAST_AXIS_LOSSES)
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_losses_over_a_ragged_last_axis_match_keras(name, mode):
    # Keras computes these three through its ragged ops; one value per row, dense.
    import keras

    from safeops import losses

    y_true = tf.ragged.constant([[0.4, 0.6], [1.0], [0.2, 0.3, 0.5]])
    y_pred = tf.ragged.constant([[0.3, 0.7], [0.9], [0.1, 0.1, 0.8]])

    def call(t, p):
        with tf.GradientTape() as tape:
            tape.watch(p.flat_values)
            loss = getattr(losses, name)(t, p)
        return loss, tf.convert_to_tensor(tape.gradient(loss, p.flat_values))

    loss, grad = (call if mode == "eager" else tf.function(call))(y_true, y_pred)
    want = getattr(keras.losses, name)(y_true, y_pred)
    assert not isinstance(loss, tf.RaggedTensor) and loss.shape == want.shape == [3]
    # Keras clips to [1e-7, 1] and adds 1e-7 (see safeops.losses); the focal loss of the exact row [1.0]
    # against 0.9 is 0 up to Keras' 4e-22.
    np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=2e-6, atol=1e-20)
    # The gradient reaches each row's own entries: the row's formula on its dense values.
    for r, (t, p) in enumerate(zip(y_true.to_list(), y_pred.to_list())):
        start = int(y_pred.row_splits[r])
        _, dense_grad = call(tf.ragged.constant([t]), tf.ragged.constant([p]))
        np.testing.assert_allclose(grad.numpy()[start:start + len(p)], dense_grad.numpy(), rtol=1e-6)


def test_categorical_focal_logits_are_padded_as_masked_classes():
    from safeops import losses

    y_true = tf.ragged.constant([[0.0, 1.0], [1.0], [0.0, 0.0, 1.0]])
    logits = tf.ragged.constant([[0.3, 0.7], [0.9], [0.1, 0.1, 0.8]])
    got = losses.categorical_focal_crossentropy(y_true, logits, from_logits=True).numpy()
    for r, (t, z) in enumerate(zip(y_true.to_list(), logits.to_list())):
        want = losses.categorical_focal_crossentropy([t], [z], from_logits=True).numpy()[0]
        assert got[r] == pytest.approx(want, rel=1e-6, abs=1e-30)


@pytest.mark.parametrize("name", _LAST_AXIS_LOSSES)
def test_losses_over_a_uniform_last_axis_keep_the_row_partition(name):
    import keras

    from safeops import losses

    y_true = tf.RaggedTensor.from_row_lengths(tf.constant([[0.5, 0.5], [0.1, 0.9], [1.0, 0.0]]), [2, 1])
    y_pred = tf.RaggedTensor.from_row_lengths(tf.constant([[0.4, 0.6], [0.2, 0.8], [0.7, 0.3]]), [2, 1])
    got, want = getattr(losses, name)(y_true, y_pred), getattr(keras.losses, name)(y_true, y_pred)
    assert isinstance(got, tf.RaggedTensor)
    np.testing.assert_array_equal(got.row_splits.numpy(), want.row_splits.numpy())
    np.testing.assert_allclose(got.flat_values.numpy(), want.flat_values.numpy(), rtol=1e-5)


def test_ragged_losses_refuse_a_dense_partner_or_another_partition():
    from safeops import losses

    y_true = tf.ragged.constant([[0.4, 0.6], [1.0]])
    with pytest.raises(TypeError, match=r"safeops\.losses\.kl_divergence: y_pred must be a RaggedTensor"):
        losses.kl_divergence(y_true, tf.constant([[0.3, 0.7], [0.9, 0.1]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same row partition"):
        losses.poisson(y_true, tf.ragged.constant([[0.3], [0.7, 0.9]]))

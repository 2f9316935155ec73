"""safeops.nn cross-entropies: against tf.nn where TF is finite, the edges where it is not."""

from __future__ import annotations

import inspect

import mpmath
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import safeops
import safeops.losses
import safeops.math
from safeops import nn

INF, NAN = np.inf, np.nan
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
# Value and gradient tolerances per dtype (relative, absolute) against TF's
# kernels, which compute the half dtypes in the half dtype itself.
TOL = {tf.float16: (1e-2, 1e-2), tf.bfloat16: (4e-2, 4e-2), tf.float32: (1e-5, 1e-6),
       tf.float64: (1e-12, 1e-13)}
MODES = ["eager", "function", "xla"]

DENSE = nn.softmax_cross_entropy_with_logits
SPARSE = nn.sparse_softmax_cross_entropy_with_logits
SIGMOID = nn.sigmoid_cross_entropy_with_logits
WEIGHTED = nn.weighted_cross_entropy_with_logits


def _in_mode(mode, fn):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"))


def _value_and_grad(loss_fn, labels, logits, mode="eager"):
    """Loss and d(sum loss)/d logits, run in ``mode``."""

    def run(labels, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = loss_fn(labels, logits)
        return loss, tape.gradient(loss, logits)

    loss, grad = _in_mode(mode, run)(labels, logits)
    return loss.numpy().astype(np.float64), grad.numpy().astype(np.float64)


def _close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(6, 5)) * 3
    soft = rng.uniform(size=(6, 5))
    soft /= soft.sum(-1, keepdims=True)
    return {"logits": logits, "soft": soft, "index": rng.integers(0, 5, size=6),
            "binary": rng.uniform(size=(6, 5)), "wide": rng.normal(size=(6, 5)) * 30}


# --------------------------------------------------------------------------- drop-in


@pytest.mark.parametrize("name", ["softmax_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits",
                                  "sigmoid_cross_entropy_with_logits", "weighted_cross_entropy_with_logits"])
def test_signature_is_tensorflows(name):
    assert inspect.signature(getattr(nn, name)) == inspect.signature(getattr(tf.nn, name))


def test_activations_are_safeops_math():
    for name in ["softmax", "log_softmax", "sigmoid", "log_sigmoid", "softplus", "l2_normalize"]:
        assert getattr(nn, name) is getattr(safeops.math, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
class TestMatchesTensorFlow:
    def test_dense(self, batch, dtype):
        labels, logits = tf.constant(batch["soft"], dtype), tf.constant(batch["logits"], dtype)
        got = _value_and_grad(DENSE, labels, logits)
        want = _value_and_grad(tf.nn.softmax_cross_entropy_with_logits, labels, logits)
        assert got[0].shape == (6,)
        _close(got[0], want[0], dtype)
        _close(got[1], want[1], dtype)

    def test_dense_other_axis(self, batch, dtype):
        labels, logits = tf.constant(batch["soft"].T, dtype), tf.constant(batch["logits"].T, dtype)
        got = DENSE(labels, logits, axis=0)
        assert got.dtype == dtype and got.shape == (6,)
        _close(got.numpy().astype(float), tf.nn.softmax_cross_entropy_with_logits(labels, logits, 0).numpy(), dtype)

    def test_sparse(self, batch, dtype):
        labels, logits = tf.constant(batch["index"]), tf.constant(batch["logits"], dtype)
        got = _value_and_grad(SPARSE, labels, logits)
        want = _value_and_grad(tf.nn.sparse_softmax_cross_entropy_with_logits, labels, logits)
        _close(got[0], want[0], dtype)
        _close(got[1], want[1], dtype)

    def test_sigmoid(self, batch, dtype):
        labels, logits = tf.constant(batch["binary"], dtype), tf.constant(batch["wide"], dtype)
        got = _value_and_grad(SIGMOID, labels, logits)
        want = _value_and_grad(lambda z, x: tf.nn.sigmoid_cross_entropy_with_logits(z, x), labels, logits)
        _close(got[0], want[0], dtype)
        _close(got[1], want[1], dtype)

    def test_weighted(self, batch, dtype):
        labels, logits = tf.constant(batch["binary"], dtype), tf.constant(batch["wide"], dtype)
        got = _value_and_grad(lambda z, x: WEIGHTED(z, x, 2.5), labels, logits)
        want = _value_and_grad(lambda z, x: tf.nn.weighted_cross_entropy_with_logits(z, x, 2.5), labels, logits)
        _close(got[0], want[0], dtype)
        _close(got[1], want[1], dtype)


def test_sparse_higher_rank_and_scalar_label(batch):
    logits = tf.constant(batch["logits"].reshape(2, 3, 5))
    labels = tf.constant(batch["index"].reshape(2, 3))
    np.testing.assert_allclose(SPARSE(labels, logits), tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    assert SPARSE(2, [1.0, 2.0, 3.0]).shape == ()


def test_dense_broadcasts_labels_like_tensorflow(batch):
    logits = tf.constant(batch["logits"])
    labels = tf.constant(batch["soft"][:1])
    np.testing.assert_allclose(DENSE(labels, logits), tf.nn.softmax_cross_entropy_with_logits(labels, logits))


@pytest.mark.parametrize("axis", [None, -1, 1, 0])
def test_dense_labels_of_a_higher_rank_than_the_logits(axis):
    """The axis was made non-negative against the logits' rank before the labels broadcast them to a
    higher one, so the sum ran over the batch: [0.21, 0.28, 0.90] for a [2, 3] batch."""
    # [2, 2, 3] labels, [2, 3] logits
    labels = tf.constant([[[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])
    logits = tf.constant([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])  # [2, 3]
    if axis == 0:  # classes first in the logits
        labels, logits = tf.transpose(labels, [0, 2, 1]), tf.transpose(logits)
    kwargs = {} if axis is None else {"axis": axis}
    got = DENSE(labels, logits, **kwargs)
    full = tf.broadcast_to(logits, labels.shape)
    want = DENSE(labels, full, axis=-1 if axis in (None, -1, 1) else 1)
    assert got.shape == want.shape == (2, 2)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_weighted_with_per_class_pos_weight_gradient(batch):
    labels, logits = tf.constant(batch["binary"]), tf.constant(batch["wide"])
    q = tf.constant(np.linspace(0.5, 3.0, 5))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(q)
        ours = tf.reduce_sum(WEIGHTED(labels, logits, q))
        theirs = tf.reduce_sum(tf.nn.weighted_cross_entropy_with_logits(labels, logits, q))
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(ours, q), tape.gradient(theirs, q), rtol=1e-10)


def test_weighted_gradient_at_a_zero_logit_is_exact():
    """(1 - z) sigmoid(0) - q z sigmoid(0); TensorFlow's subgradients of relu(-x), |x| at 0 give 0, +0.5."""
    x = tf.zeros([3])
    z = tf.constant([1.0, 0.5, 0.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = WEIGHTED(z, x, 2.0)
    np.testing.assert_allclose(tape.gradient(loss, x), (1 - z) / 2 - 2.0 * z / 2, rtol=1e-7)


def test_dense_label_gradient_is_minus_log_softmax(batch):
    labels, logits = tf.constant(batch["soft"]), tf.constant(batch["logits"])
    with tf.GradientTape() as tape:
        tape.watch(labels)
        loss = DENSE(labels, logits)
    np.testing.assert_allclose(tape.gradient(loss, labels), -tf.nn.log_softmax(logits), rtol=1e-12)


def test_dense_unnormalised_labels_get_the_exact_gradient():
    # TF's fused kernel returns softmax - y, the derivative only when sum(y) == 1.
    labels, logits = tf.constant([[0.2, 0.3, 0.9]], tf.float64), tf.constant([[1.0, 2.0, 3.0]], tf.float64)
    loss, grad = _value_and_grad(DENSE, labels, logits)
    np.testing.assert_allclose(loss, tf.nn.softmax_cross_entropy_with_logits(labels, logits), rtol=1e-14)
    np.testing.assert_allclose(grad, 1.4 * tf.nn.softmax(logits) - labels, rtol=1e-13)


# --------------------------------------------------------------------------- accuracy


def _mp_xent(labels, logits):
    mpmath.mp.dps = 50
    lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in logits))
    return float(mpmath.fsum(mpmath.mpf(y) * (lse - mpmath.mpf(v)) for y, v in zip(labels, logits) if y))


@pytest.mark.parametrize("logits", [[20.0, 0.0, 0.0], [30.0, 1.0, -5.0, 2.0], [1.0, 1.0, 40.0]])
def test_confident_prediction_keeps_its_small_loss(logits):
    dtype = tf.float32
    labels = np.eye(len(logits))[int(np.argmax(logits))]
    want = _mp_xent(labels, logits)
    got = DENSE(tf.constant([labels], dtype), tf.constant([logits], dtype)).numpy()[0]
    got_sparse = SPARSE([int(np.argmax(logits))], tf.constant([logits], dtype)).numpy()[0]
    ulp = np.spacing(np.float32(want))
    assert abs(got - want) <= 4 * ulp and abs(got_sparse - want) <= 4 * ulp


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inner_xla", [True, False])
@pytest.mark.parametrize("classes", [4000, 100000])
def test_confident_prediction_over_many_classes_keeps_its_small_loss(classes, inner_xla, mode):
    """C3: the loss ``log1p(sum of the other terms)`` summed them in float32: 23 ULP off over 4000
    classes (the fused dot's partial sums) and 530 over 1e5, where every term is ``exp(-15.3)``."""
    logits = np.array([[0.0] + [-15.3] * (classes - 1)], np.float32)
    mpmath.mp.dps = 50
    want = float(mpmath.log1p((classes - 1) * mpmath.exp(mpmath.mpf(float(logits[0, 1])))))
    labels = np.zeros_like(logits)
    labels[0, 0] = 1.0
    old = safeops.set_inner_xla(inner_xla)
    try:
        got = _in_mode(mode, DENSE)(tf.constant(labels), tf.constant(logits)).numpy()[0]
        got_sparse = _in_mode(mode, SPARSE)(tf.constant([0]), tf.constant(logits)).numpy()[0]
    finally:
        safeops.set_inner_xla(old)
    ulp = np.spacing(np.float32(want))
    assert abs(got - want) <= 4 * ulp and abs(got_sparse - want) <= 4 * ulp, (got, got_sparse, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inner_xla", [True, False])
@pytest.mark.parametrize("classes", [4000, 32000])
def test_gradient_at_an_unconfident_maximum_within_c3(classes, inner_xla, mode):
    """C3: at the row's maximum the gradient ``T p - y`` was formed as ``(T - y) + T (p - 1)`` for any
    ``p``; with ``p`` small and the label elsewhere that adds two terms near 1 whose sum is ``p``:
    up to ``eps / p`` relative: 3.6e-5 at 4000 classes (one logit 1 above the rest), 6.0e-5 at 32000."""
    logits = np.zeros((1, classes), np.float32)
    logits[0, 0] = 1.0
    labels = np.zeros_like(logits)
    labels[0, 1] = 1.0
    x = logits.astype(np.float64)
    p = np.exp(x - x.max()) / np.sum(np.exp(x - x.max()))
    want = p - labels
    old = safeops.set_inner_xla(inner_xla)
    try:
        _, grad = _value_and_grad(DENSE, tf.constant(labels), tf.constant(logits), mode)
    finally:
        safeops.set_inner_xla(old)
    rel = np.abs(grad - want) / np.abs(want)
    assert rel.max() <= 1e-5, (rel.max(), int(np.argmax(rel)))


def test_ties_at_the_maximum_are_exact():
    want = _mp_xent([0.5, 0.5, 0.0], [3.0, 3.0, -2.0])
    got = DENSE([[0.5, 0.5, 0.0]], tf.constant([[3.0, 3.0, -2.0]], tf.float64)).numpy()[0]
    assert abs(got - want) <= 4 * np.spacing(want)


# --------------------------------------------------------------------------- masks and infinities


@pytest.mark.parametrize("mode", MODES)
class TestMasks:
    def test_dense_masked_logits_are_finite_with_zero_gradient(self, mode):
        logits = tf.constant([[2.0, -INF, 0.5, -INF], [-INF, 1.0, 1.0, 0.0]])
        labels = tf.constant([[0.7, 0.0, 0.3, 0.0], [0.0, 0.5, 0.25, 0.25]])
        loss, grad = _value_and_grad(DENSE, labels, logits, mode)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        assert (grad[0, [1, 3]] == 0).all() and grad[1, 0] == 0
        unmasked = _value_and_grad(DENSE, tf.constant([[0.7, 0.3]]), tf.constant([[2.0, 0.5]]), mode)
        np.testing.assert_allclose(loss[0], unmasked[0][0], rtol=1e-6)
        np.testing.assert_allclose(grad[0, [0, 2]], unmasked[1][0], rtol=1e-6)

    def test_tensorflow_gives_nan_at_the_mask(self, mode):
        tf_loss = tf.nn.softmax_cross_entropy_with_logits([[1.0, 0.0]], [[0.0, -INF]])
        assert np.isnan(tf_loss.numpy()).all()

    def test_sparse_masked_logits(self, mode):
        loss, grad = _value_and_grad(SPARSE, tf.constant([0, 2]),
                                     tf.constant([[2.0, -INF, 0.5], [-INF, -INF, 1.0]]), mode)
        np.testing.assert_allclose(loss[0], tf.nn.sparse_softmax_cross_entropy_with_logits([0], [[2.0, 0.5]])[0],
                                   rtol=1e-6)
        assert loss[1] == 0 and grad[0, 1] == 0 and (grad[1] == 0).all()

    def test_all_masked_row(self, mode):
        logits = tf.fill([3, 4], -INF)
        labels = tf.constant([[0.0] * 4, [1.0, 0, 0, 0], [0.5, 0.5, 0, 0]])
        loss, grad = _value_and_grad(DENSE, labels, logits, mode)
        assert list(loss) == [0.0, INF, INF]
        np.testing.assert_array_equal(grad, -labels.numpy())
        loss, grad = _value_and_grad(SPARSE, tf.constant([0, 3, 1]), logits, mode)
        assert (loss == INF).all()
        np.testing.assert_array_equal(grad, -np.eye(4)[[0, 3, 1]])

    def test_weight_on_a_masked_logit_is_an_infinite_loss(self, mode):
        logits = tf.constant([[1.0, -INF, 0.0]])
        loss, grad = _value_and_grad(DENSE, tf.constant([[0.5, 0.5, 0.0]]), logits, mode)
        assert loss[0] == INF and np.isfinite(grad).all() and grad[0, 1] == -0.5
        loss, grad = _value_and_grad(SPARSE, tf.constant([1]), logits, mode)
        assert loss[0] == INF and grad[0, 1] == -1.0

    def test_sigmoid_masks(self, mode):
        logits = tf.constant([-INF, INF, -INF, INF, 5.0])
        labels = tf.constant([0.0, 1.0, 1.0, 0.0, 1.0])
        for fn in (SIGMOID, lambda z, x: WEIGHTED(z, x, 3.0)):
            loss, grad = _value_and_grad(fn, labels, logits, mode)
            assert loss[0] == 0 and loss[1] == 0 and grad[0] == 0 and grad[1] == 0
            assert loss[2] == INF and loss[3] == INF and np.isfinite(grad).all()
        assert _value_and_grad(SIGMOID, labels, logits, mode)[1][2] == -1.0
        assert _value_and_grad(lambda z, x: WEIGHTED(z, x, 3.0), labels, logits, mode)[1][2] == -3.0


def test_tensorflow_sigmoid_is_nan_at_masks():
    assert np.isnan(tf.nn.sigmoid_cross_entropy_with_logits([0.0, 1.0], [-INF, INF]).numpy()).all()


def test_label_gradients_saturate_at_masks():
    logits = tf.constant([[1.0, -INF, 0.0]])
    labels = tf.constant([[1.0, 0.0, 0.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(labels)
        dense, sig = DENSE(labels, logits), SIGMOID(labels, logits)
    for g in (tape.gradient(dense, labels), tape.gradient(sig, labels)):
        assert np.isfinite(g.numpy()).all()
    assert tape.gradient(dense, labels).numpy()[0, 1] == np.finfo(np.float32).max


@pytest.mark.parametrize("bad", [INF, NAN])
def test_plus_inf_and_nan_logits_make_their_row_nan(bad):
    logits = tf.constant([[1.0, bad, 0.0], [1.0, 2.0, 3.0]])
    for fn, labels in ((DENSE, tf.constant([[1.0, 0, 0], [1.0, 0, 0]])), (SPARSE, tf.constant([0, 0]))):
        loss, grad = _value_and_grad(fn, labels, logits)
        assert np.isnan(loss[0]) and np.isnan(grad[0]).all()
        assert np.isfinite(loss[1]) and np.isfinite(grad[1]).all()


def test_nan_propagates_in_sigmoid_family():
    for labels, logits in (([0.0], [NAN]), ([NAN], [1.0]), ([NAN], [-INF])):
        for fn in (SIGMOID, lambda z, x: WEIGHTED(z, x, 2.0)):
            loss, grad = _value_and_grad(fn, tf.constant(labels), tf.constant(logits))
            assert np.isnan(loss).all() and np.isnan(grad).all()


def test_nan_label_propagates_in_dense():
    loss, grad = _value_and_grad(DENSE, tf.constant([[NAN, 0.0]]), tf.constant([[1.0, 0.0]]))
    assert np.isnan(loss).all() and np.isnan(grad).all()


# --------------------------------------------------------------------------- labels out of range


def test_sparse_logits_without_a_class_are_refused_naming_them():
    """C7, as TensorFlow's kernel ('Must have at least one class'); it was the label check's '[0, 0)'."""
    with pytest.raises(ValueError, match=r"logits must have at least one class .*\(3, 0\)\. Must have"):
        nn.sparse_softmax_cross_entropy_with_logits(labels=tf.zeros([3], tf.int32), logits=tf.zeros([3, 0]))



@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("bad", [3, -1])
def test_out_of_range_label_raises(mode, bad):
    pattern = rf"(?s)labels must be in \[0, 3\)\. Received a label value of.*{bad}"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        _in_mode(mode, SPARSE)(tf.constant([0, bad]), tf.ones([2, 3]))


@pytest.mark.parametrize("labels, logits, pattern", [
    (0, 1.0, "`logits` cannot be a scalar"),
    ([[0, 2]], np.ones([3, 2], np.float32), r"`labels.shape.rank` must equal `logits.shape.rank - 1`"),
])
def test_shape_errors_carry_tensorflows_sentence(labels, logits, pattern):
    """TensorFlow's sparse_xent tests (testScalar, testShapeMismatch) match these sentences."""
    with pytest.raises(ValueError, match=rf"sparse_softmax_cross_entropy_with_logits: .*\. {pattern}"):
        SPARSE(labels=tf.constant(labels), logits=tf.constant(logits))
    with pytest.raises(ValueError, match=pattern):
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.constant(labels), logits=tf.constant(logits))


@pytest.mark.parametrize("bad", [3, -1, 1000])
def test_out_of_range_label_under_xla_is_a_nan_row(bad):
    loss, grad = _value_and_grad(SPARSE, tf.constant([0, bad]), tf.ones([2, 3]), "xla")
    assert np.isfinite(loss[0]) and np.isfinite(grad[0]).all()
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()


@pytest.mark.parametrize("mode", MODES)
def test_out_of_range_label_on_an_all_masked_row_is_a_nan_row(mode):
    """The row's gradient is NaN too where its logits are all -inf (it was [-1, 0, 0])."""
    logits = tf.constant([[-np.inf] * 3, [1.0, 2.0, 3.0]])
    safeops.set_validation(False)
    try:
        loss, grad = _value_and_grad(SPARSE, tf.constant([7, 1]), logits, mode)
    finally:
        safeops.set_validation(True)
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all()
    assert np.isfinite(loss[1]) and np.isfinite(grad[1]).all()


def test_out_of_range_label_without_validation_is_a_nan_row():
    safeops.set_validation(False)
    try:
        loss, grad = _value_and_grad(SPARSE, tf.constant([7, 1]), tf.ones([2, 3]))
    finally:
        safeops.set_validation(True)
    assert np.isnan(loss[0]) and np.isnan(grad[0]).all() and np.isfinite(loss[1])


# --------------------------------------------------------------------------- errors


def test_sparse_labels_must_be_integers():
    with pytest.raises(TypeError, match=r"sparse_softmax_cross_entropy_with_logits: labels must be an integer"):
        SPARSE(tf.constant([0.0, 1.0]), tf.ones([2, 3]))
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor"):
        SPARSE([0, 1], tf.ones([2, 3], tf.int32))
    assert SPARSE(tf.constant([0, 1], tf.uint8), tf.ones([2, 3])).shape == (2,)
    with pytest.raises(TypeError, match=r"labels must be a dense integer tensor .*got a SparseTensor"):
        SPARSE(tf.sparse.from_dense(tf.constant([0, 1])), tf.ones([2, 3]))


def test_shape_errors_name_both_arguments():
    with pytest.raises(ValueError, match=r"sparse_softmax.*labels and logits must be shapes.*\(3,\) and \(2, 3\)"):
        SPARSE([0, 1, 2], tf.ones([2, 3]))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy_with_logits: labels and logits"):
        DENSE(tf.ones([2, 4]), tf.ones([2, 3]))
    with pytest.raises(ValueError, match=r"sigmoid_cross_entropy_with_logits: labels and logits must have"):
        SIGMOID(tf.ones([1, 3]), tf.ones([2, 3]))
    with pytest.raises(ValueError, match=r"weighted_cross_entropy_with_logits: pos_weight and logits"):
        WEIGHTED(tf.ones([2, 3]), tf.ones([2, 3]), tf.ones([4]))
    with pytest.raises(ValueError, match=r"axis must be in \[-2, 2\)"):
        DENSE(tf.ones([2, 3]), tf.ones([2, 3]), axis=2)
    with pytest.raises(ValueError, match=r"logits must be given"):
        SIGMOID(labels=tf.ones([2]))


@pytest.mark.parametrize("labels", [
    tf.constant([[0.0, 1.0, 0.0]], tf.float64),  # numpy-made one-hots
    tf.constant([[0.0, 1.0, 0.0]], tf.float32),  # float32 one-hots next to mixed_float16 logits
    tf.constant([[0, 1, 0]], tf.int32),
    np.array([[0.0, 1.0, 0.0]]),
])
@pytest.mark.parametrize("dtype", [tf.float16, tf.float32])
def test_dense_labels_are_cast_to_the_logits_dtype_as_in_tensorflow(labels, dtype):
    logits = tf.constant([[1.0, 2.0, -1.0]], dtype)
    got = DENSE(labels, logits)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.numpy(), tf.nn.softmax_cross_entropy_with_logits(labels, logits).numpy(),
                               rtol=1e-3 if dtype == tf.float16 else 1e-6)


@pytest.mark.parametrize("name", ["xlogy", "xlog1py", "divide_no_nan"])
@pytest.mark.parametrize("other", [np.float64(0.5), np.array([0.5, 2.0]), np.array([1, 2]), np.float16(0.5)])
def test_numpy_operand_next_to_a_tensor_takes_its_dtype_as_in_tensorflow(name, other):
    x = tf.constant([0.25, 3.0])
    for args in ((other, x), (x, other)):
        got = getattr(safeops.math, name)(*args)
        assert got.dtype == tf.float32
        np.testing.assert_array_equal(got.numpy(), getattr(tf.math, name)(*args).numpy())
    got = WEIGHTED(x, x, other)
    np.testing.assert_allclose(got.numpy(), tf.nn.weighted_cross_entropy_with_logits(x, x, other).numpy(),
                               rtol=1e-6)


def test_dense_dtype_errors_name_the_argument():
    with pytest.raises(TypeError,
                       match=r"softmax_cross_entropy_with_logits: labels must be a float, integer or bool"):
        DENSE(tf.constant([["a", "b", "c"]]), tf.ones([1, 3]))
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor"):
        DENSE(tf.ones([2, 3]), tf.ones([2, 3], tf.int32))
    with pytest.raises(TypeError, match=r"sigmoid_cross_entropy_with_logits: labels must be a floating-point"):
        SIGMOID(tf.ones([3], tf.int32), tf.ones([3]))
    with pytest.raises(TypeError, match=r"pos_weight must be"):
        WEIGHTED(tf.ones([3]), tf.ones([3]), "2")


# --------------------------------------------------------------------------- second derivatives


def _hessian_vector(loss_fn, labels, logits, v, mode, first="logits"):
    """d/dlogits of ``sum(v * dloss/d<first>)``; ``first`` is ``"logits"`` or ``"labels"``."""
    def run(labels, logits):
        with tf.GradientTape() as outer:
            outer.watch(logits)
            with tf.GradientTape() as inner:
                wrt = logits if first == "logits" else labels
                inner.watch(wrt)
                loss = tf.reduce_sum(loss_fn(labels, logits))
            g = inner.gradient(loss, wrt)
            gv = tf.reduce_sum(g * v)
        return outer.gradient(gv, logits)

    return _in_mode(mode, run)(labels, logits).numpy()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ties", [False, True])
def test_mixed_second_derivative_labels_logits(batch, mode, ties):
    """d/dlogits of the labels' gradient ``-log_softmax``, at the row maximum (and ties) too."""
    logits = np.array(batch["logits"])
    if ties:
        logits[:, 1] = logits.max(axis=1)
    logits, labels = tf.constant(logits), tf.constant(batch["soft"])
    v = tf.constant(np.random.default_rng(2).normal(size=(6, 5)))
    got = _hessian_vector(DENSE, labels, logits, v, mode, first="labels")
    naive = lambda y, x: -tf.reduce_sum(y * tf.nn.log_softmax(x), -1)  # noqa: E731
    want = _hessian_vector(naive, labels, logits, v, "eager", first="labels")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_second_derivatives_match_tensorflow(batch, mode):
    logits = tf.constant(batch["logits"])
    v = tf.constant(np.random.default_rng(1).normal(size=(6, 5)))
    cases = [
        (DENSE, tf.nn.softmax_cross_entropy_with_logits, tf.constant(batch["soft"])),
        (SPARSE, tf.nn.sparse_softmax_cross_entropy_with_logits, tf.constant(batch["index"])),
        (SIGMOID, lambda z, x: tf.nn.sigmoid_cross_entropy_with_logits(z, x), tf.constant(batch["binary"])),
        (lambda z, x: WEIGHTED(z, x, 2.0), lambda z, x: tf.nn.weighted_cross_entropy_with_logits(z, x, 2.0),
         tf.constant(batch["binary"])),
    ]
    for ours, theirs, labels in cases:
        np.testing.assert_allclose(_hessian_vector(ours, labels, logits, v, mode),
                                   _hessian_vector(theirs, labels, logits, v, "eager"), rtol=1e-9, atol=1e-12)


def test_dense_labels_and_axis_as_tensorflow_takes_them():
    """TensorFlow's op casts bool labels and reads axis=None as -1; both were refused."""
    logits = tf.constant([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    onehot = [[True, False, False], [False, False, True]]
    want = tf.nn.softmax_cross_entropy_with_logits(tf.constant(onehot), logits, axis=None).numpy()
    for labels in (tf.constant(onehot), np.array(onehot), onehot):
        np.testing.assert_allclose(DENSE(labels, logits).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(DENSE(tf.cast(onehot, tf.float32), logits, axis=None).numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_second_derivatives_at_a_zero_logit(mode):
    """The point a zero-initialised output layer starts from: the sigmoid losses'
    second derivative there was 0 (``tf.abs``'s derivative at 0), exact 1/4 times the
    label weight, against TensorFlow's sigmoid op, smooth forms and Keras' focal loss."""
    logits = tf.constant([[0.0, 1e-300, -1e-300, 0.5]], tf.float64)
    labels = tf.constant([[1.0, 0.0, 0.5, 0.3]], tf.float64)
    v = tf.constant([[1.0, -2.0, 0.5, 1.0]], tf.float64)
    focal = lambda z, x: safeops.losses.binary_focal_crossentropy(z, x, from_logits=True)  # noqa: E731
    keras_focal = lambda z, x: keras.losses.binary_focal_crossentropy(z, x, from_logits=True)  # noqa: E731
    cases = [
        (SIGMOID, tf.nn.sigmoid_cross_entropy_with_logits),
        # TensorFlow's weighted op has 0 at x = 0 as well: the exact form, a
        # (1 - z) x + (1 + 2 z) softplus(-x) of smooth ops, instead.
        (lambda z, x: WEIGHTED(z, x, 3.0),
         lambda z, x: (1 - z) * x + (1 + 2 * z) * tf.math.softplus(-x)),
        (focal, keras_focal),
    ]
    for ours, theirs in cases:
        got = _hessian_vector(ours, labels, logits, v, mode)
        assert got[0, 0] != 0
        np.testing.assert_allclose(got, _hessian_vector(theirs, labels, logits, v, "eager"), rtol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_second_derivatives_are_finite_at_masks(mode):
    logits = tf.constant([[2.0, -INF, 0.5], [-INF, -INF, -INF]], tf.float64)
    v = tf.ones_like(logits)
    dense = _hessian_vector(DENSE, tf.constant([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], tf.float64), logits, v, mode)
    sparse = _hessian_vector(SPARSE, tf.constant([0, 1]), logits, v, mode)
    sig = _hessian_vector(SIGMOID, tf.constant([[0.0] * 3, [0.0] * 3], tf.float64), logits, v, mode)
    for h in (dense, sparse, sig):
        assert np.isfinite(h).all()
        assert h[0, 1] == 0 and (h[1] == 0).all()


# --------------------------------------------------------------------------- properties

_finite_logits = st.lists(st.floats(-1e4, 1e4, width=32), min_size=2, max_size=6)


@settings(max_examples=40, deadline=None)
@given(logits=_finite_logits, data=st.data())
def test_property_finite_and_equal_to_naive(logits, data):
    n = len(logits)
    weights = data.draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n))
    labels = np.asarray(weights, np.float64)
    labels = labels / labels.sum() if labels.sum() > 0 else np.eye(n)[0]
    index = data.draw(st.integers(0, n - 1))
    x = tf.constant([logits], tf.float64)
    for fn, y in ((DENSE, tf.constant([labels])), (SPARSE, tf.constant([index]))):
        loss, grad = _value_and_grad(fn, y, x)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        shifted = np.asarray(logits, np.float64) - np.max(logits)
        log_probs = shifted - np.log(np.sum(np.exp(shifted)))
        probs = np.exp(log_probs)
        target = labels if fn is DENSE else np.eye(n)[index]
        naive = -np.sum(np.where(target > 0, target * log_probs, 0.0))
        if np.isfinite(naive) and naive > 1e-6:
            np.testing.assert_allclose(loss[0], naive, rtol=1e-9)
        np.testing.assert_allclose(grad[0], probs - target, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(logits=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=6), data=st.data())
def test_property_sigmoid_finite_and_equal_to_naive(logits, data):
    n = len(logits)
    labels = np.asarray(data.draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n)), np.float32)
    x = tf.constant(logits, tf.float32)
    for fn in (SIGMOID, lambda z, x: WEIGHTED(z, x, 0.5)):
        loss, grad = _value_and_grad(fn, tf.constant(labels), x)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
    x64 = np.asarray(logits, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sig = 1 / (1 + np.exp(-x64))
        naive = -(labels * np.log(sig) + (1 - labels) * np.log1p(-sig))
    loss, grad = _value_and_grad(SIGMOID, tf.constant(labels), x)
    ok = np.isfinite(naive) & (naive > 1e-3) & (np.abs(x64) < 30)
    np.testing.assert_allclose(loss[ok], naive[ok], rtol=1e-5)
    np.testing.assert_allclose(grad, sig - labels, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(logits=st.lists(st.one_of(st.floats(-50, 50, width=32), st.just(-INF)), min_size=2, max_size=6),
       data=st.data())
def test_property_masked_rows_never_nan(logits, data):
    n = len(logits)
    x = tf.constant([logits], tf.float32)
    allowed = [i for i, v in enumerate(logits) if v != -INF] or [0]
    index = data.draw(st.sampled_from(allowed))
    for fn, y in ((DENSE, tf.constant([np.eye(n)[index]], tf.float32)), (SPARSE, tf.constant([index]))):
        loss, grad = _value_and_grad(fn, y, x)
        assert not np.isnan(loss).any() and np.isfinite(grad).all()
        assert (grad[0][np.asarray(logits) == -INF][: n - 1] <= 0).all()


def test_sparse_empty_batch_gives_an_empty_loss_and_gradient():
    logits = tf.zeros([0, 3])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = SPARSE(tf.zeros([0], tf.int32), logits)
    assert loss.shape == (0,)
    assert tape.gradient(loss, logits).shape == (0, 3)


def test_sparse_shapes_of_unknown_rank_are_checked_when_the_graph_runs():
    spec = [tf.TensorSpec(None, tf.int32), tf.TensorSpec(None, tf.float32)]
    fn = tf.function(lambda labels, logits: SPARSE(labels, logits), input_signature=spec)
    np.testing.assert_allclose(fn(tf.constant([1, 0]), tf.zeros([2, 3])).numpy(), [np.log(3.0)] * 2,
                               rtol=1e-6)
    # A scalar label next to [1, 3] logits would reshape into a plausible loss; TF's kernel refuses it.
    for labels in (tf.constant(1), tf.constant([[1]])):
        with pytest.raises(tf.errors.InvalidArgumentError, match="labels and logits must be shapes"):
            fn(labels, tf.zeros([1, 3]))


def test_sparse_batch_sizes_unknown_until_the_graph_runs_are_checked():
    # Known ranks, unknown dimensions: [2] labels next to [4, 3] logits used to
    # flatten into a loss of length 2 (rows 0 and 1 only) without a word.
    spec = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, None], tf.float32)]
    fn = tf.function(lambda labels, logits: SPARSE(labels, logits), input_signature=spec)
    np.testing.assert_allclose(fn(tf.constant([2, 0]), tf.zeros([2, 3])).numpy(), [np.log(3.0)] * 2,
                               rtol=1e-6)
    for rows in (1, 4):
        with pytest.raises(tf.errors.InvalidArgumentError, match="labels and logits must be shapes"):
            fn(tf.constant([0, 1]), tf.zeros([rows, 3]))


# --------------------------------------------------------------------------- axis forms


@pytest.mark.parametrize("axis", [np.int64(1), np.int32(-2), tf.constant(1), tf.constant(-2, tf.int64)])
def test_numpy_and_constant_tensor_axes_are_taken_as_by_tensorflow(axis):
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 3, 4)), tf.float32)
    labels = tf.nn.softmax(tf.reverse(x, [1]), axis=1)
    # (TensorFlow's own xent fails on a negative NumPy or int64 tensor axis; it is given a plain 1.)
    for ours, theirs in ((safeops.math.softmax, tf.nn.softmax),
                         (safeops.math.log_softmax, tf.nn.log_softmax)):
        np.testing.assert_allclose(ours(x, axis).numpy(), theirs(x, 1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(DENSE(labels, x, axis).numpy(),
                               tf.nn.softmax_cross_entropy_with_logits(labels, x, 1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("axis", [tf.constant([0, 2]), [1], (0, 2), 1.0, True])
def test_several_or_non_integer_axes_are_refused_where_one_is_expected(axis):
    # safeops.math.softmax(x, tf.constant([0, 2])) once gave a softmax over
    # both axes jointly; TensorFlow refuses it.
    x = tf.ones([2, 3, 4])
    for fn in (safeops.math.softmax, safeops.math.log_softmax, lambda x, a: DENSE(x, x, a)):
        with pytest.raises(TypeError, match="axis must be an int"):
            fn(x, axis)


def test_a_runtime_scalar_axis_still_works_in_softmax():
    fn = tf.function(lambda x, a: safeops.math.softmax(x, a),
                     input_signature=[tf.TensorSpec(None), tf.TensorSpec([], tf.int32)])
    x = tf.constant(np.random.default_rng(6).normal(size=(2, 3)), tf.float32)
    np.testing.assert_allclose(fn(x, tf.constant(0)).numpy(), tf.nn.softmax(x, 0).numpy(), rtol=1e-6)


# --------------------------------------------------------------------------- C3 for confident predictions


def _xent_reference(row, k):
    """``log(sum exp(row)) - row[k]`` by mpmath, as ``log1p`` of the terms off the maximum (no 1 + tiny)."""
    with mpmath.workdps(60):
        r = [mpmath.mpf(float(v)) for v in row]
        top = int(np.argmax(row))
        return float(mpmath.log1p(mpmath.fsum(mpmath.exp(v - r[top]) for j, v in enumerate(r) if j != top))
                     - (r[k] - r[top]))


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_cross_entropies_keep_c3_for_confident_predictions(dtype, mode):
    # The loss of a confident correct prediction is ~ the sum of the small
    # terms exp(x_j - max): the rounding of x_j - max must be put back (it
    # was 41 ULP in float32 and 267 in float64 on rows like the first two).
    npdt = dtype.as_numpy_dtype
    rng = np.random.default_rng(21)
    rows = [[4.89732027053833, -24.922557830810547, 70.3742446899414, -21.124187469482422, -13.5922336578],
            [-111.61537437537946, -101.06833980528027, 575.3563506812295, -294.5458089225693, -84.4817128254]]
    rows += (rng.normal(size=(120, 5)) * rng.choice([1, 10, 30, 300], size=(120, 1))).tolist()
    x = np.asarray(rows, npdt)
    k = np.where(np.arange(len(x)) % 2 == 0, np.argmax(x, 1), rng.integers(0, 5, len(x)))
    ref = np.array([_xent_reference(row, kk) for row, kk in zip(x, k)])
    fn = _in_mode(mode, lambda labels, logits: DENSE(tf.one_hot(labels, 5, dtype=dtype), logits))
    sparse = _in_mode(mode, lambda labels, logits: SPARSE(labels, logits))
    # Losses below 2**24 tiny: the correction itself is flushed to zero there.
    checked = np.abs(ref) > np.finfo(npdt).tiny * 2.0 ** 24
    for got in (fn(tf.constant(k), tf.constant(x)), sparse(tf.constant(k), tf.constant(x))):
        spacing = np.spacing(np.abs(ref).astype(npdt)).astype(np.float64)
        ulps = np.abs(got.numpy().astype(np.float64) - ref) / spacing
        assert ulps[checked].max() <= 4, (ulps[checked].max(), x[checked][np.argmax(ulps[checked])])


def test_sparse_eager_paths_with_and_without_a_tape_agree():
    # Eager without a tape the loss is one graph call; under a tape only the
    # label check is. Same values, same errors.
    logits = tf.constant(np.random.default_rng(22).normal(size=(6, 5)) * 20, tf.float32)
    labels = tf.constant([0, 4, 2, 1, 3, 3])
    plain = SPARSE(labels, logits).numpy()
    with tf.GradientTape() as tape:
        tape.watch(logits)
        recorded = SPARSE(labels, logits)
    np.testing.assert_array_equal(plain, recorded.numpy())
    assert tape.gradient(recorded, logits).shape == (6, 5)
    for watch in (False, True):
        with tf.GradientTape() as tape:
            if watch:
                tape.watch(logits)
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=r"labels must be in \[0, 5\)\. Received a label value of.*7"):
                SPARSE(tf.constant([0, 7, 1, 1, 1, 1]), logits)


def test_a_runtime_axis_is_refused_where_the_op_is_built_per_axis():
    spec = [tf.TensorSpec([2, 3]), tf.TensorSpec([], tf.int32)]
    dense = tf.function(lambda x, a: DENSE(x, x, a), input_signature=spec)
    loss = tf.function(lambda x, a: safeops.losses.binary_crossentropy(x, x, axis=a), input_signature=spec)
    for fn, op in ((dense, "softmax_cross_entropy_with_logits"), (loss, "binary_crossentropy")):
        with pytest.raises(TypeError, match=rf"{op}: axis must be an int.*known when the function is traced"):
            fn(tf.ones([2, 3]), tf.constant(1))


def test_uint64_label_past_int64_is_reported_without_wrapping():
    """C7: a uint64 label >= 2**63 was quoted as a negative number (the wrapped cast)."""
    with pytest.raises(tf.errors.InvalidArgumentError, match="Received a label value of 9223372036854775807"):
        nn.sparse_softmax_cross_entropy_with_logits(tf.constant([2**63 + 5], tf.uint64), tf.ones([1, 3]))


@pytest.mark.parametrize("call", [
    lambda: DENSE(tf.ones([2, 3]), tf.ones([2, 4])),
    lambda: DENSE(tf.ones([]), tf.ones([])),
    lambda: SPARSE(labels=tf.constant([[0, 2]]), logits=tf.ones([3, 2])),
    lambda: SPARSE(labels=tf.constant(0), logits=tf.constant(1.0)),
    lambda: safeops.math.softmax(tf.constant(1.0)),
    lambda: safeops.math.xlogy(tf.ones([2]), tf.ones([3])),
], ids=["dense-shapes", "dense-scalar", "sparse-ranks", "sparse-scalar", "softmax-scalar", "xlogy-shapes"])
def test_shape_errors_are_both_value_and_invalid_argument_errors(call):
    """TensorFlow raises InvalidArgumentError eagerly and ValueError while tracing for these;
    code (and TensorFlow's own tests) catching either must catch safeops' error."""
    for kind in (ValueError, tf.errors.InvalidArgumentError):
        with pytest.raises(kind, match="must"):
            call()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, top", [(tf.float32, 20.0), (tf.float64, 37.42994775023705)])
def test_cross_entropy_gradient_keeps_the_small_entry_of_a_confident_row(dtype, top, mode):
    """The gradient of a confident, correct row is [-t, t] with t = 1 - p (about e^-top); p - 1 rounded to
    0 gave [0, t] (TensorFlow 2.21's kernels too)."""
    logits = tf.constant([[top, 0.0], [0.0, top], [0.3, -0.2]], dtype)
    dense = tf.constant([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]], dtype)
    sparse = tf.constant([0, 1, 1])
    t = 1.0 / (1.0 + np.exp(np.float64(top)))
    p = np.exp([0.3, -0.2]) / np.exp([0.3, -0.2]).sum()
    for op, labels, last in ((DENSE, dense, p - [0.3, 0.7]), (SPARSE, sparse, p - [0.0, 1.0])):
        def gradient(x, op=op, labels=labels):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(op(labels, x))
            return tape.gradient(loss, x)

        got = _in_mode(mode, gradient)(logits).numpy()
        np.testing.assert_allclose(got[:2], [[-t, t], [t, -t]], rtol=1e-6)
        np.testing.assert_allclose(got[2], last, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["uniform_labels", "ties_on_a_leading_axis"])
def test_soft_label_sums_within_c3(case, mode):
    """The label mass and the label-weighted logits are summed in float64 where that is a dot (rows
    below 4096 under XLA on a CPU) and over axes other than the last, and so is the softmax sum whose
    difference with the off-maximum terms counts the ties there. In float32 uniform labels over a row
    of 2000 left the loss 9.3 ULP off, and 85714 ties among 1e5 entries of axis 0 over 100 ULP."""
    if case == "uniform_labels":
        logits = np.full((2, 2000), -5.0, np.float32)
        logits[:, 0] = 0.0
        labels, axis = np.full(logits.shape, 1 / 2000, np.float32), -1
    else:
        logits = np.full((100_000, 16), 0.3, np.float32)
        logits[::7] = -1.2
        labels, axis = np.full(logits.shape, 1e-5, np.float32), 0
    x = logits.astype(np.float64)
    shifted = x - x.max(axis, keepdims=True)
    log_p = shifted - np.log(np.sum(np.exp(shifted), axis, keepdims=True))
    want = -np.sum(labels.astype(np.float64) * log_p, axis)
    got = _in_mode(mode, lambda y, v: DENSE(labels=y, logits=v, axis=axis))(labels, logits).numpy()
    ulps = np.abs(got - want) / np.spacing(np.abs(want).astype(np.float32))
    assert ulps.max() <= 4, ulps.max()

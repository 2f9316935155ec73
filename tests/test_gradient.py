"""The second-order rules of the custom-gradient helper (``safeops._gradient``).

A NaN operand must not change the second derivatives of the other entries
(the artifact rule decides entry by entry), and a NaN cotangent, first or
second order, must reach the result (contract C2).
"""

import numpy as np
import pytest
import tensorflow as tf

import safeops.math as sm
import safeops.nn as sn

from tests import _modes

OPS = {
    "sqrt": sm.sqrt,
    "log": sm.log,
    "logit": sm.logit,
    "sigmoid": sm.sigmoid,
    "log_sigmoid": sm.log_sigmoid,
}

# Entries where a first derivative saturates (the artifact ``0 * inf`` lives
# there) next to ordinary ones.
POINTS = {
    "sqrt": [0.0, 1e-30, 4.0],
    "log": [0.0, 1e-30, 2.0],
    "logit": [0.0, 1e-30, 0.25],
    "sigmoid": [-200.0, 0.0, 30.0],
    "log_sigmoid": [-1e30, 0.0, 5.0],
}


def _hvp(op, x, v, dy=None):
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = op(x)
        g = inner.gradient(y, x, output_gradients=dy)
        gv = tf.reduce_sum(g * v)
    return outer.gradient(gv, x)


@pytest.mark.parametrize("mode", _modes.MODES)
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("name", sorted(OPS))
def test_one_nan_entry_leaves_the_other_second_derivatives_alone(name, dtype, mode):
    run = _modes.run(mode, lambda x, v: _hvp(OPS[name], x, v))
    points = POINTS[name] + ([1e-200] if dtype == tf.float64 and POINTS[name][1] == 1e-30 else [])
    x = tf.constant(points, dtype)
    v = tf.ones_like(x)
    alone = run(x, v).numpy()
    assert not np.isnan(alone).any(), alone
    with_nan = run(tf.concat([x, tf.constant([np.nan], dtype)], 0),
                   tf.concat([v, tf.ones([1], dtype)], 0)).numpy()
    np.testing.assert_array_equal(with_nan[:-1], alone)
    assert np.isnan(with_nan[-1])


@pytest.mark.parametrize("mode", _modes.MODES)
def test_nan_cotangents_reach_the_second_derivative(mode):
    x = tf.constant([1.0, 2.0, 3.0])
    nan_v = tf.constant([1.0, np.nan, 1.0])
    h = _modes.run(mode, lambda x, v: _hvp(sm.log, x, v))(x, nan_v).numpy()
    np.testing.assert_allclose(h[[0, 2]], [-1.0, -1.0 / 9.0], rtol=1e-6)
    assert np.isnan(h[1])
    nan_dy = tf.constant([1.0, np.nan, 1.0])
    h = _modes.run(mode, lambda x, dy: _hvp(sm.log, x, tf.ones_like(x), dy))(x, nan_dy).numpy()
    np.testing.assert_allclose(h[[0, 2]], [-1.0, -1.0 / 9.0], rtol=1e-6)
    assert np.isnan(h[1])


@pytest.mark.parametrize("mode", _modes.MODES)
def test_a_nan_logit_makes_its_row_of_second_derivatives_nan_only(mode):
    logits = tf.constant([[0.0, 1.0, -1.0], [0.5, np.nan, 2.0]])
    run = _modes.run(mode, lambda x, v: _hvp(lambda z: sn.log_softmax(z), x, v))
    v = tf.constant([[1.0, -1.0, 0.5], [1.0, 1.0, 1.0]])
    h = run(logits, v).numpy()
    alone = run(logits[:1], v[:1]).numpy()
    np.testing.assert_array_equal(h[0], alone[0])
    assert np.isnan(h[1]).all()


# ----------------------------------------------------------------------------
# A tf.function differentiated twice by tapes outside it (C6).


def _outside_cases():
    import safeops.losses as sl

    y = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]])
    classes = tf.constant([0, 1, 2])
    return {
        "log": sm.log,
        "norm": lambda x: sm.norm(x, axis=-1),
        "norm_all": sm.norm,
        "l2_normalize": lambda x: sm.l2_normalize(x, axis=-1),
        "softmax_xent": lambda x: sn.softmax_cross_entropy_with_logits(y, x),
        "sparse_xent": lambda x: sn.sparse_softmax_cross_entropy_with_logits(classes, x),
        "sparse_cce_probabilities": lambda x: sl.sparse_categorical_crossentropy(classes, x),
        "sparse_cce_logits": lambda x: sl.sparse_categorical_crossentropy(classes, x, from_logits=True),
        "focal_probabilities": lambda x: sl.categorical_focal_crossentropy(y, x),
        "binary_focal_probabilities": lambda x: sl.binary_focal_crossentropy(y, x),
        "p_norm": lambda x: sm.norm(x, ord=3, axis=-1),
        "kl_divergence": lambda x: sl.kl_divergence(y, x),
        "generalized_xent_probabilities": lambda x: sl.categorical_generalized_cross_entropy(classes, x, 0.6),
        "generalized_xent_logits": lambda x: sl.categorical_generalized_cross_entropy(
            classes, x, 0.6, from_logits=True),
        "kl_divergence_with_logits": lambda x: sl.kl_divergence_with_logits(y, x),
    }


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", sorted(_outside_cases()))
def test_second_order_of_a_function_differentiated_from_outside(name, jit):
    """Both tapes outside a (jit-compiled) tf.function: the same Hessian-vector product as eager.

    Failed before: the sparse ops closed over their labels, which the
    second-order pass then reached from a third graph (TypeError, out of
    scope); norm and l2_normalize differentiated a tf.cond, which under
    jit_compile needs Optional ops that XLA lacks (InvalidArgumentError).
    """
    op = _outside_cases()[name]

    x = tf.constant([[0.5, 0.25, 0.1], [0.9, 0.2, 0.3], [0.2, 0.1, 0.7]])
    # A weighted loss and a direction that no invariance annihilates (the
    # rows of l2_normalize have unit norm, a softmax is shift-invariant).
    v = tf.constant([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0], [-0.5, 0.75, 2.0]])

    def loss(x):
        y = op(x)
        return tf.reduce_sum(tf.reshape(v, [-1])[:tf.size(y)] * tf.reshape(y, [-1]) ** 2)

    def hvp(fn):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                value = fn(x)
            g = inner.gradient(value, x)
        return outer.gradient(g, x, output_gradients=v).numpy()

    expected = hvp(loss)
    assert np.all(np.isfinite(expected)) and np.any(expected != 0)
    np.testing.assert_allclose(hvp(tf.function(loss, jit_compile=jit)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "reduce_logsumexp", "softmax_xent"])
def test_eager_forward_mode_through_an_inner_xla_function(name):
    """An eager ForwardAccumulator traces the backward pass in a graph with eager inputs, which the
    inner XLA call read .graph of (AttributeError); the JVP is now the forward formula's (the Jacobian's)."""
    x = tf.constant([[0.5, -1.0, 2.0], [0.1, 0.2, -0.3]])
    v = tf.constant([[1.0, 0.5, -2.0], [0.3, -0.1, 0.7]])
    labels = tf.constant([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    fn = {"softmax": sm.softmax, "log_softmax": sm.log_softmax,
          "reduce_logsumexp": lambda z: sm.reduce_logsumexp(z, -1),
          "softmax_xent": lambda z: sn.softmax_cross_entropy_with_logits(labels, z)}[name]
    with tf.autodiff.ForwardAccumulator(x, v) as acc:
        y = fn(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y2 = fn(x)
    jacobian = tape.jacobian(y2, x).numpy().reshape(y2.shape.num_elements(), -1)
    want = (jacobian @ v.numpy().reshape(-1)).reshape(y2.shape)
    np.testing.assert_allclose(acc.jvp(y).numpy(), want, rtol=1e-5, atol=1e-7)

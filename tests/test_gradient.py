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

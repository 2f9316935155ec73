"""The inner-XLA helpers of ``safeops._xla``: one call per gradient group, same results."""

import numpy as np
import pytest
import tensorflow as tf

from safeops import _xla, nn
from tests._modes import MODES, run


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

"""Every public op under ``tf.debugging.enable_check_numerics``, on finite inputs at its edges.

A user who hunts a NaN switches ``enable_check_numerics`` on: it checks the
output of every op, a graph's constants too, and stops at the first
``inf`` or NaN. safeops must not stop it on finite inputs it handles: its
inner XLA functions (which the callback's ``DebugNumericSummaryV2`` broke:
every call failed to compile) are off while a callback is registered, and
no branch that a ``tf.where`` discards may overflow, nor a constant hold an
infinity. The values must be those of the ordinary run.

Not covered, as documented: second derivatives (TensorFlow's own gradients
of ``SoftplusGrad`` and ``Pow``, and exact second derivatives that overflow
before they saturate, form infinities) and ``-inf`` mask logits (the
caller's own input).

``enable_check_numerics`` is global to the thread, so the checked run is a
subprocess (:func:`main`) that prints its results as JSON.
"""

from __future__ import annotations


import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops import losses, nn
from _subprocess import print_json, run_main

PROBS = [[0.0, 1.0, 0.5, 1e-30], [0.25, 0.25, 0.5, 0.0]]        # exact 0 and 1, a tiny one
LABELS = [[0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]]
ZEROS = [[0.0, 0.0, 0.0, 0.0], [0.0, 3.0, -4.0, 0.0]]           # a zero row: norms, sqrt
LOGITS = [[-100.0, 100.0, 0.0, 80.0], [-1e4, 1e4, 50.0, -50.0]]  # saturated logits
MODERATE = [[-10.0, 10.0, 0.0, 8.0], [-30.0, 30.0, 5.0, -5.0]]
NEGATIVE = [[-0.0, -1e-30, -100.0, -1e4], [-1.0, -0.5, -30.0, 0.0]]
UNIT = [[1.0, -1.0, 0.5, 1.0000001], [-2.0, 0.0, 0.999, -0.5]]    # at and past +-1
AT_ONE = [[1.0, 0.9999999, 2.0, 1e4], [-2.0, 0.0, 1.0000001, 100.0]]  # at and below 1


def _labels(x):
    return tf.constant(LABELS, x.dtype)


#: name -> (function of one tensor, input)
CASES = {
    "log": (tfm.log, PROBS),
    "log1p": (lambda x: tfm.log1p(x - 1.0), PROBS),
    "sqrt": (tfm.sqrt, PROBS),
    "xlogy": (lambda x: tfm.xlogy(_labels(x), x), PROBS),
    "xlog1py": (lambda x: tfm.xlog1py(_labels(x), x - 1.0), PROBS),
    "logit": (tfm.logit, PROBS),
    "log1mexp": (tfm.log1mexp, NEGATIVE),
    "softplus": (tfm.softplus, LOGITS),
    "softplus_inverse": (tfm.softplus_inverse, PROBS),
    "log_sigmoid": (tfm.log_sigmoid, LOGITS),
    "sigmoid": (tfm.sigmoid, LOGITS),
    "logaddexp": (lambda x: tfm.logaddexp(x, -x), LOGITS),
    "divide_no_nan": (lambda x: tfm.divide_no_nan(_labels(x), x), ZEROS),
    "acos": (tfm.acos, UNIT),
    "asin": (tfm.asin, UNIT),
    "atanh": (tfm.atanh, UNIT),
    "acosh": (tfm.acosh, AT_ONE),
    "erfinv": (tfm.erfinv, UNIT),
    "ndtri": (tfm.ndtri, PROBS),
    "atan2": (lambda x: tfm.atan2(x, tf.reverse(x, [-1])), ZEROS),   # the origin
    # Angles in [0, pi]: their sum does not cancel (test_tflite compares it to 1e-5).
    "atan2_large": (lambda x: tfm.atan2(tf.abs(x), tf.reverse(x, [-1])), LOGITS),
    "pow_root": (lambda x: tfm.pow(x, 0.5), ZEROS),             # 0 and a negative base
    "pow_zero_exponent": (lambda x: tfm.pow(x, 0.0), ZEROS),     # d/dx 0 at x = 0
    # tiny ** -1.5 overflows (the gradient); the log keeps float64's 6.7e153 within float32.
    "pow_pole": (lambda x: tfm.log(tfm.pow(x, -0.5)), ZEROS),
    "pow_odd": (lambda x: tfm.pow(x, 3.0), MODERATE),
    # The saturated gradient at 0; the log keeps float64's 6.7e153 within float32, as for pow_pole.
    "rsqrt": (lambda x: tfm.log(tfm.rsqrt(x)), ZEROS),
    "softmax": (tfm.softmax, LOGITS),
    "log_softmax": (tfm.log_softmax, LOGITS),
    "reduce_logsumexp": (lambda x: tfm.reduce_logsumexp(x, -1), LOGITS),
    # Not exclusive=True: its first output is the sum of no entries, -inf (as TensorFlow's).
    "cumulative_logsumexp": (lambda x: tfm.cumulative_logsumexp(x, -1), LOGITS),
    "cumulative_logsumexp_reverse": (lambda x: tfm.cumulative_logsumexp(x, -1, reverse=True), LOGITS),
    # Zero factors (the general form of the gradient), and none.
    "cumprod": (lambda x: tfm.cumprod(x, -1), PROBS),
    "cumprod_exclusive_reverse": (lambda x: tfm.cumprod(x, -1, exclusive=True, reverse=True), MODERATE),
    "reduce_logsumexp_zero_weights": (lambda x: tfm.reduce_logsumexp(x, -1, weights=_labels(x)), MODERATE),
    # Zero weights on entries 200 and 2e4 above the live one: exp(x - y) overflowed in the backward.
    "reduce_logsumexp_zero_weights_far_above": (
        lambda x: tfm.reduce_logsumexp(x, -1, weights=tf.constant([[1.0, 0, 0, 0]] * 2, x.dtype)), LOGITS),
    "reduce_logsumexp_sign": (
        lambda x: tfm.reduce_logsumexp(x, -1, weights=_labels(x) - 0.25, return_sign=True)[0], LOGITS),
    "norm": (lambda x: tfm.norm(x, axis=-1), ZEROS),
    "norm_large": (lambda x: tfm.norm(x, axis=-1), LOGITS),
    "norm_ord0.5": (lambda x: tfm.norm(x, ord=0.5, axis=-1), ZEROS),
    "norm_ord1.5": (lambda x: tfm.norm(x, ord=1.5, axis=-1), ZEROS),
    "norm_ord3": (lambda x: tfm.norm(x, ord=3, axis=-1), ZEROS),
    "l2_normalize": (lambda x: tfm.l2_normalize(x, -1), ZEROS),
    "softmax_cross_entropy_with_logits": (
        lambda x: nn.softmax_cross_entropy_with_logits(_labels(x), x), LOGITS),
    "sparse_softmax_cross_entropy_with_logits": (
        lambda x: nn.sparse_softmax_cross_entropy_with_logits(tf.constant([1, 3]), x), LOGITS),
    "sigmoid_cross_entropy_with_logits": (
        lambda x: nn.sigmoid_cross_entropy_with_logits(_labels(x), x), LOGITS),
    "weighted_cross_entropy_with_logits": (
        lambda x: nn.weighted_cross_entropy_with_logits(_labels(x), x, 2.0), LOGITS),
    "binary_crossentropy": (lambda x: losses.binary_crossentropy(_labels(x), x), PROBS),
    "binary_crossentropy_logits": (
        lambda x: losses.binary_crossentropy(_labels(x), x, from_logits=True), LOGITS),
    "categorical_crossentropy": (lambda x: losses.categorical_crossentropy(_labels(x), x), PROBS),
    "categorical_crossentropy_softmax": (
        lambda x: losses.categorical_crossentropy(_labels(x), tf.nn.softmax(x)), LOGITS),
    "categorical_crossentropy_logits": (
        lambda x: losses.categorical_crossentropy(_labels(x), x, from_logits=True, label_smoothing=0.1),
        LOGITS),
    "sparse_categorical_crossentropy": (
        lambda x: losses.sparse_categorical_crossentropy(tf.constant([1, 3]), x), PROBS),
    "sparse_categorical_crossentropy_logits": (
        lambda x: losses.sparse_categorical_crossentropy(tf.constant([1, 3]), x, from_logits=True), LOGITS),
    "kl_divergence": (lambda x: losses.kl_divergence(_labels(x), x), PROBS),
    "categorical_generalized_cross_entropy": (
        lambda x: losses.categorical_generalized_cross_entropy(tf.constant([1, 3]), x, 0.7), PROBS),
    "categorical_generalized_cross_entropy_logits": (
        lambda x: losses.categorical_generalized_cross_entropy(tf.constant([1, 3]), x, 0.7, from_logits=True),
        LOGITS),
    "kl_divergence_with_logits": (lambda x: losses.kl_divergence_with_logits(tf.reverse(x, [-1]), x), LOGITS),
    "poisson": (lambda x: losses.poisson(_labels(x), x), PROBS),
    "binary_focal_crossentropy": (lambda x: losses.binary_focal_crossentropy(_labels(x), x), PROBS),
    "binary_focal_crossentropy_logits": (
        lambda x: losses.binary_focal_crossentropy(_labels(x), x, from_logits=True,
                                                   apply_class_balancing=True),
        LOGITS),
    "categorical_focal_crossentropy": (lambda x: losses.categorical_focal_crossentropy(_labels(x), x), PROBS),
    "categorical_focal_crossentropy_logits": (
        lambda x: losses.categorical_focal_crossentropy(_labels(x), x, from_logits=True), LOGITS),
    "gaussian_nll": (lambda x: losses.gaussian_nll(_labels(x)[:, :2], x[:, :4] * 0.01), LOGITS),
    "tversky_loss": (lambda x: losses.tversky_loss(_labels(x), x), PROBS),
    "info_nce": (lambda x: losses.info_nce(_labels(x), x), ZEROS),
}

#: (mode, dtype) pairs that are run; graph mode traces every case once more.
RUNS = [("eager", "float32"), ("eager", "float64"), ("eager", "float16"), ("eager", "bfloat16"),
        ("graph", "float32"), ("graph", "float64")]


def _value_and_gradient(fn, mode, x):
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.cast(fn(x), tf.float32))
        return y, tape.gradient(y, x)

    y, g = (step if mode == "eager" else tf.function(step))(x)
    return [float(y), tf.cast(g, tf.float64).numpy().tolist()]


def _fit_model() -> list:
    """Keras ``fit`` (a graph) of a small classifier with a safeops loss: its per-epoch losses."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32) * 30.0  # features never standardised
    y = keras.utils.to_categorical(rng.integers(0, 3, 64), 3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
    return model.fit(x, y, batch_size=16, epochs=2, verbose=0).history["loss"]


def results() -> dict:
    """Every case's value and gradient (or the error it raised), per run."""
    out = {}
    for mode, dtype in RUNS:
        for name, (fn, x) in CASES.items():
            try:
                x = tf.constant(x, getattr(tf, dtype))
                out[f"{mode}/{dtype}/{name}"] = _value_and_gradient(fn, mode, x)
            except Exception as e:  # noqa: BLE001 (reported, as the test's message)
                out[f"{mode}/{dtype}/{name}"] = f"{type(e).__name__}: {str(e)[:300]}"
    try:
        out["fit"] = _fit_model()
    except Exception as e:  # noqa: BLE001
        out["fit"] = f"{type(e).__name__}: {str(e)[:300]}"
    return out


def main() -> None:
    """Runs in a subprocess: :func:`results` with ``enable_check_numerics`` on, as JSON."""
    from safeops import _xla

    tf.debugging.enable_check_numerics()
    out = results()
    out["inner_xla"] = _xla.enabled()
    print_json(out)


@pytest.fixture(scope="module")
def checked():
    return run_main("test_check_numerics", "main", timeout=600)


@pytest.fixture(scope="module")
def unchecked():
    return results()


def test_inner_xla_is_off_while_a_callback_is_registered(checked):
    from safeops import _xla

    assert checked["inner_xla"] is False
    assert _xla.enabled() is True  # this process registered none


@pytest.mark.parametrize("mode, dtype", RUNS)
@pytest.mark.parametrize("name", list(CASES))
def test_op_passes_check_numerics(checked, unchecked, name, mode, dtype):
    key = f"{mode}/{dtype}/{name}"
    got, want = checked[key], unchecked[key]
    assert not isinstance(got, str), got  # the error check_numerics raised
    assert not isinstance(want, str), want
    tol = {"float16": 1e-3, "bfloat16": 1e-2}.get(dtype, 1e-6)
    np.testing.assert_allclose(got[0], want[0], rtol=tol)
    np.testing.assert_allclose(np.array(got[1]), np.array(want[1]), rtol=tol, atol=0)


def test_keras_fit_passes_check_numerics(checked, unchecked):
    assert not isinstance(checked["fit"], str), checked["fit"]
    np.testing.assert_allclose(checked["fit"], unchecked["fit"], rtol=1e-4)

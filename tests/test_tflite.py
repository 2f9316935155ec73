"""TensorFlow Lite conversion of the public ops: TensorFlow's value, or a loud failure.

A model trained with safeops ops inside it (an embedding layer that
normalises, a head that takes a ``log_softmax``) may be converted for
deployment with ``tf.lite.TFLiteConverter``. Conversion is not part of the
contract, but a silently wrong value is never acceptable: TensorFlow
2.21's converter turned ``norm`` (a ``tf.cond`` branch that returned one
tensor twice) into garbage, 1e-45 for the norm of ``[3, 4]``. Each case of
``test_check_numerics`` (forward only: TFLite runs inference) either gives
TensorFlow's value or fails to convert or to run; the ops that need ops
outside TFLite's builtins (float64 evaluation, ``SoftplusGrad``, ...) are
the named exceptions, and every other op must convert and match.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from test_check_numerics import CASES

#: Cases whose graphs need ops TFLite's builtins lack (the Flex delegate, not
#: linked into the Python interpreter) or that the converter refuses.
NEEDS_FLEX_OR_REFUSED = {
    "logit", "log1mexp", "softplus_inverse", "sigmoid", "norm_ord0.5", "norm_ord1.5", "norm_ord3",
    "kl_divergence", "kl_divergence_with_logits", "binary_focal_crossentropy",
    "categorical_focal_crossentropy", "info_nce",
    # Row sums in float64 for float32 inputs (C3 over long rows): float64 ops are not builtins.
    "softmax", "log_softmax", "reduce_logsumexp", "softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits", "categorical_crossentropy", "categorical_crossentropy_logits",
    "categorical_crossentropy_softmax", "sparse_categorical_crossentropy",
    "sparse_categorical_crossentropy_logits", "categorical_focal_crossentropy_logits",
    "categorical_generalized_cross_entropy_logits",
    "reduce_logsumexp_sign", "reduce_logsumexp_zero_weights", "reduce_logsumexp_zero_weights_far_above",
    # A float64 scan.
    "cumulative_logsumexp", "cumulative_logsumexp_reverse",
    # A float64 running product.
    "cumprod", "cumprod_exclusive_reverse",
    # Per-example means and sums in float64 for float32 inputs (C3 over long rows).
    "binary_crossentropy", "binary_crossentropy_logits", "binary_focal_crossentropy_logits", "gaussian_nll",
    "poisson", "tversky_loss",
    # The per-example generalized cross-entropy in float64 (C3 where 1 - p**q cancels).
    "categorical_generalized_cross_entropy",
    # TensorFlow's own Acos, Asin, Atanh and Acosh are not TFLite builtins either (Flex ops).
    "acos", "asin", "atanh", "acosh",
    # Float64 evaluation.
    "erfinv", "ndtri",
}


def _tflite_value(fn, x: tf.Tensor) -> np.ndarray:
    """``fn(x)`` (reduced to a scalar) converted by TFLiteConverter and run by its interpreter."""
    traced = tf.function(lambda v: tf.reduce_sum(tf.cast(fn(v), tf.float32)),
                         input_signature=[tf.TensorSpec(x.shape, x.dtype)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([traced.get_concrete_function()], traced)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x.numpy())
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_tflite_gives_tensorflows_value_or_fails_loudly(name):
    fn, data = CASES[name]
    x = tf.constant(data, tf.float32)
    # Traced, as the converted function is (a softmax output's logits are
    # recovered from the graph, not in eager mode).
    want = float(tf.function(lambda v: tf.reduce_sum(tf.cast(fn(v), tf.float32)))(x))
    try:
        got = float(_tflite_value(fn, x))
    except Exception as e:  # noqa: BLE001  (a converter or interpreter error is loud: allowed where named)
        assert name in NEEDS_FLEX_OR_REFUSED, f"{name} failed in TFLite: {type(e).__name__}: {str(e)[-500:]}"
        return
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)


def test_norm_of_an_ordinary_row_converts_exactly():
    """The plain branch of the Euclidean norm, the one TFLite broke: [3, 4] and [-100, 100, 0, 80]."""
    x = tf.constant([[3.0, 4.0, 0.0, 0.0], [-100.0, 100.0, 0.0, 80.0]])
    np.testing.assert_allclose(_tflite_value(lambda v: tfm.norm(v, axis=-1), x),
                               5.0 + float(np.sqrt(26400.0)), rtol=1e-6)


@pytest.mark.parametrize("op", ["norm", "l2_normalize"])
def test_long_euclidean_rows_give_tensorflows_value_or_fail_loudly(op):
    """Rows past 1024 entries sum their squares in float32 blocks added in float64 (C3): a float64 sum
    is not a TFLite builtin, so without the Flex delegate the interpreter refuses the model."""
    x = tf.constant(np.random.default_rng(0).normal(size=(2, 2048)), tf.float32)
    fn = (lambda v: tfm.norm(v, axis=-1)) if op == "norm" else (lambda v: tfm.l2_normalize(v, axis=-1))
    want = float(tf.function(lambda v: tf.reduce_sum(fn(v)))(x))
    try:
        got = float(_tflite_value(fn, x))
    except RuntimeError as e:
        assert "Flex" in str(e), str(e)[-500:]
        return
    np.testing.assert_allclose(got, want, rtol=1e-5)

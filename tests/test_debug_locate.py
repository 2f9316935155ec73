"""Tests of ``safeops.debug.locate_nonfinite``, checked against ``tf.debugging.enable_check_numerics``.

``enable_check_numerics`` is global, so it runs in a subprocess
(:func:`check_numerics_main`) on the very same cases; ``locate_nonfinite``
must name the same op (or an earlier one) and add the cause.
"""

from __future__ import annotations

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops.debug import NonFiniteReport, TensorStats, locate_nonfinite
from _subprocess import print_json, run_main


def log_of_zero(x):
    return tf.reduce_sum(tf.math.log(x))  # locate: log_of_zero


def masked_log(x):
    return tf.reduce_sum(tf.where(x > 0.0, tf.math.log(x), 0.0))  # locate: masked_log


def division_by_zero(x):
    return tf.reduce_sum(x / (x - 1.0))  # locate: division_by_zero


def exp_overflow(x):
    return tf.reduce_sum(tf.exp(x))  # locate: exp_overflow


def norm_of_zero(x):
    return tf.reduce_sum(tf.norm(x, axis=-1))  # locate: norm_of_zero


def sqrt_of_negative(x):
    return tf.reduce_sum(tf.sqrt(x - 2.0))  # locate: sqrt_of_negative


def acos_past_one(x):
    return tf.reduce_sum(tf.math.acos(x))  # locate: acos_past_one


def asin_at_one(x):
    return tf.reduce_sum(tf.math.asin(tf.clip_by_value(x, -1.0, 1.0)))  # locate: asin_at_one


def lgamma_at_zero(x):
    return tf.reduce_sum(tf.math.lgamma(x))  # locate: lgamma_at_zero


def angle_of_zero_vector(x):
    return tf.reduce_sum(tf.math.atan2(x[:, 0], x[:, 1]))  # locate: angle_of_zero_vector


def root_at_zero(x):
    return tf.reduce_sum(tf.pow(x, 0.5))  # locate: root_at_zero


def root_of_negative(x):
    return tf.reduce_sum(tf.pow(x - 2.0, 0.5))  # locate: root_of_negative


def rsqrt_of_zero_row(x):
    squares = tf.reduce_sum(x * x, -1, keepdims=True)
    return tf.reduce_sum(x * tf.math.rsqrt(squares))  # locate: rsqrt_of_zero_row


def log_cosh(x):
    return tf.reduce_sum(tf.math.log(tf.math.cosh(x)))  # locate: log_cosh


X = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)
X_BIG = np.array([[1.0, 100.0, 2.0]], dtype=np.float32)
#: A cosine similarity one float32 ULP past 1 (what rounding makes of aligned unit vectors).
X_COS = np.array([[np.nextafter(np.float32(1), np.float32(2)), 0.5, -1.0]], dtype=np.float32)

#: name -> (function, input, expected phase, op type, words the cause must contain)
CASES = {
    "log_of_zero": (log_of_zero, X, "forward", "Log", ["Log of 0", "4 zeros"]),
    "masked_log": (masked_log, X, "forward", "Log", ["Log of 0"]),
    "division_by_zero": (division_by_zero, X, "forward", "RealDiv", ["Division by 0", "1 zero"]),
    "exp_overflow": (exp_overflow, X_BIG, "forward", "Exp", ["Exp overflow", "input max is 100"]),
    "norm_of_zero": (norm_of_zero, X, "backward", "SqrtGrad", ["gradient of Sqrt", "1/0", "gives inf"]),
    "sqrt_of_negative": (sqrt_of_negative, X, "forward", "Sqrt", ["negative", "5 negative values"]),
    "acos_past_one": (acos_past_one, X_COS, "forward", "Acos",
                      ["Acos of an input outside [-1, 1]", "[-1, 1.00000012]", "cosine similarity"]),
    "asin_at_one": (asin_at_one, X_COS, "backward", "Reciprocal",
                    ["1/sqrt(1 - x**2) in the gradient of Asin at x = +-1", "clip to [-1, 1]"]),
    "lgamma_at_zero": (lgamma_at_zero, X, "forward", "Lgamma", ["Lgamma at a pole", "4 zeros"]),
    "angle_of_zero_vector": (angle_of_zero_vector, X, "backward", "RealDiv",
                             ["in the gradient of Atan2 at y = x = 0"]),
    "log_cosh": (log_cosh, X_BIG, "forward", "Cosh", ["Cosh overflow", "largest |input| is 100", "89.42"]),
    "root_at_zero": (root_at_zero, X, "backward", "Pow", ["in the gradient of Pow at x = 0", "gives inf"]),
    "root_of_negative": (root_of_negative, X, "forward", "Pow",
                         ["negative base to a fractional power", "5 negative values"]),
    "rsqrt_of_zero_row": (rsqrt_of_zero_row, X, "forward", "Rsqrt", ["Rsqrt of 0 or a negative", "1 zero"]),
}
#: Causes with no safeops op to name (the fix is the user's own clip or mask): none since safeops.math
#: has acos, asin, atanh and atan2; the fix of each case names its op.
NO_SAFEOPS_OP: dict = {}


def _marker_line(name: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# locate: {name}"):
                return number
    raise AssertionError(name)


def build_model(seed: int = 0) -> keras.Model:
    """A softmax classifier whose weights make one probability underflow to exactly 0."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", name="hidden"),
                              keras.layers.BatchNormalization(name="bn"),
                              keras.layers.Dense(3, activation="softmax", name="probabilities")])
    kernel, bias = model.get_layer("probabilities").get_weights()
    model.get_layer("probabilities").set_weights([kernel * 300.0, bias])
    return model


def naive_log_loss(y_true, y_prob):
    return -tf.reduce_sum(y_true * tf.math.log(y_prob), axis=-1)  # locate: model


MODEL_X = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
MODEL_Y = keras.utils.to_categorical(np.arange(16) % 3, 3).astype(np.float32)


# --------------------------------------------------------------------------- the check_numerics side


def check_numerics_main() -> None:
    """Runs in a subprocess: what ``enable_check_numerics`` names on every case, as JSON."""
    tf.debugging.enable_check_numerics()
    out = {}

    def first_bad(step, *args):
        try:
            step(*args)
        except tf.errors.InvalidArgumentError as e:
            text = str(e)
            node = re.search(r"node (\S+?)/CheckNumerics", text)
            kind = re.search(r'graph op "([^"]+)"', text)
            return {"op_name": node and node.group(1), "op_type": kind and kind.group(1)}
        return None

    for name, (fn, x, *_rest) in CASES.items():
        @tf.function
        def step(x, fn=fn):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
            return y, tape.gradient(y, x)

        out[name] = first_bad(step, tf.constant(x))

    model = build_model()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(naive_log_loss(y, model(x, training=True)))
        return loss, tape.gradient(loss, model.trainable_variables)

    out["model"] = first_bad(train_step, tf.constant(MODEL_X), tf.constant(MODEL_Y))
    print_json(out)


@pytest.fixture(scope="module")
def check_numerics():
    return run_main("test_debug_locate", "check_numerics_main", timeout=240)


@pytest.fixture(scope="module")
def reports():
    return {name: locate_nonfinite(fn, x) for name, (fn, x, *_rest) in CASES.items()}


@pytest.fixture(scope="module")
def model_report():
    model = build_model()
    before = [v.numpy().copy() for v in model.variables]
    report = locate_nonfinite(model, MODEL_X, MODEL_Y, loss=naive_log_loss)
    return report, model, before


# --------------------------------------------------------------------------- tests


class TestCases:
    @pytest.mark.parametrize("name", sorted(CASES))
    def test_names_the_op_the_phase_and_the_cause(self, reports, name):
        _fn, _x, phase, op_type, words = CASES[name]
        report = reports[name]
        assert report.found and report.phase == phase and report.op_type == op_type, str(report)
        for word in words:
            assert word in report.cause, report.cause
        assert "safeops" in report.fix or NO_SAFEOPS_OP.get(name, "safeops") in report.fix, report.fix

    @pytest.mark.parametrize("name", sorted(CASES))
    def test_points_at_the_users_line(self, reports, name):
        path, line = reports[name].location.rsplit(":", 1)
        assert os.path.abspath(path) == os.path.abspath(__file__) and int(line) == _marker_line(name)

    @pytest.mark.parametrize("name", sorted(CASES))
    def test_agrees_with_enable_check_numerics(self, reports, check_numerics, name):
        theirs = check_numerics[name]
        assert theirs is not None and theirs["op_type"], theirs
        assert (reports[name].op_name, reports[name].op_type) == (theirs["op_name"], theirs["op_type"])

    def test_input_statistics(self, reports):
        (stats,) = reports["log_of_zero"].input_stats
        assert (stats.zeros, stats.negatives, stats.nans, stats.infinities, stats.size) == (4, 0, 0, 0, 6)
        assert (stats.min, stats.max) == (0.0, 2.0)
        (out,) = reports["log_of_zero"].output_stats
        assert out.neg_inf == 4

    def test_backward_op_is_tied_to_its_forward_op(self, reports):
        report = reports["norm_of_zero"]
        assert report.forward_op is not None and "Sqrt" in report.forward_op
        assert any(s.zeros == 1 for s in report.input_stats)

    def test_masked_nan_is_reported_with_the_nan_gradient(self, reports):
        report = reports["masked_log"]
        assert report.nonfinite_outputs == ["gradient of argument 0"]    # the loss itself is finite

    def test_str(self, reports):
        text = str(reports["division_by_zero"])
        assert "forward pass" in text and "RealDiv" in text and "Division by 0" in text and "fix:" in text


class TestFinite:
    def test_finite_step_reports_nothing(self):
        report = locate_nonfinite(log_of_zero, np.array([1.0, 2.0], np.float32))
        assert not report.found and "finite" in str(report)

    @pytest.mark.parametrize("name", ["log_of_zero", "norm_of_zero", "division_by_zero", "rsqrt_of_zero_row"])
    def test_safeops_drop_in_is_finite(self, name):
        safe = {"log_of_zero": lambda x: tf.reduce_sum(tfm.log(x)),
                "norm_of_zero": lambda x: tf.reduce_sum(tfm.norm(x, axis=-1)),
                "division_by_zero": lambda x: tf.reduce_sum(tfm.divide_no_nan(x, x - 1.0)),
                "rsqrt_of_zero_row": lambda x: tf.reduce_sum(
                    x * tfm.rsqrt(tf.reduce_sum(x * x, -1, keepdims=True)))}[name]
        assert not locate_nonfinite(safe, X).found

    def test_constant_masks_are_not_causes(self):
        def masked_logsumexp(x):
            mask = tf.constant([0.0, -np.inf, 0.0])
            return tf.reduce_sum(tf.math.log(x[0])) + tf.reduce_sum(tfm.reduce_logsumexp(x + mask, axis=-1))

        report = locate_nonfinite(masked_logsumexp, X)
        assert report.op_type == "Log"


class TestKerasTrainingStep:
    def test_names_the_log_of_the_loss(self, model_report):
        report, _model, _before = model_report
        assert report.found and report.phase == "forward" and report.op_type == "Log", str(report)
        assert "Log of 0" in report.cause and "safeops" in report.fix
        path, line = report.location.rsplit(":", 1)
        assert int(line) == _marker_line("model")

    def test_agrees_with_enable_check_numerics(self, model_report, check_numerics):
        report, _model, _before = model_report
        theirs = check_numerics["model"]
        assert theirs is not None and theirs["op_type"] == report.op_type == "Log"

    def test_model_variables_are_restored(self, model_report):
        """The traced step updates BatchNorm statistics; locate_nonfinite puts them back."""
        _report, model, before = model_report
        for v, b in zip(model.variables, before):
            np.testing.assert_array_equal(v.numpy(), b)

    def test_compiled_loss_and_gradients_by_variable(self):
        model = build_model()
        model.compile("sgd", loss=naive_log_loss)
        report = locate_nonfinite(model, MODEL_X, MODEL_Y)
        assert report.op_type == "Log"
        assert any("probabilities" in name for name in report.nonfinite_outputs)

    def test_already_nonfinite_weights(self):
        model = build_model()
        kernel, bias = model.get_layer("hidden").get_weights()
        kernel[0, 0] = np.nan
        model.get_layer("hidden").set_weights([kernel, bias])
        report = locate_nonfinite(model, MODEL_X, MODEL_Y, loss="categorical_crossentropy")
        assert report.op_type == "ReadVariableOp" and "already holds non-finite" in report.cause

    def test_nonfinite_data_is_counted(self):
        x = MODEL_X.copy()
        x[0, 0], x[1, 1], x[2, 0] = np.nan, np.inf, np.nan
        report = locate_nonfinite(build_model(), x, MODEL_Y, loss="categorical_crossentropy")
        assert report.op_type == "Placeholder"
        assert "already holds non-finite values (2 NaN, 1 inf)" in report.cause

    def test_keras_loss_with_logits_recovered_is_finite(self):
        report = locate_nonfinite(build_model(), MODEL_X, MODEL_Y, loss="categorical_crossentropy")
        assert not report.found


def test_tensor_stats():
    s = TensorStats.of("t", np.array([0.0, -1.0, np.inf, -np.inf, np.nan, 3.0], np.float32))
    assert (s.zeros, s.negatives, s.pos_inf, s.neg_inf, s.nans, s.min, s.max) == (1, 2, 1, 1, 1, -1.0, 3.0)
    assert "NaN 1 of 6" in str(s) and isinstance(NonFiniteReport(found=False).__str__(), str)


# --------------------------------------------------------------------------- what training differentiates


def kl_masked_on_labels(y, logits):
    return tf.reduce_sum(tf.where(y > 0, y * (tf.math.log(y) - tf.nn.log_softmax(logits)), 0.0))


class TestDifferentiatedArguments:
    Y = np.array([[0.5, 0.5, 0.0]], np.float32)
    LOGITS = np.array([[1.0, 2.0, 3.0]], np.float32)

    def test_labels_are_not_differentiated(self):
        """log(0) of a masked label makes only d/d labels NaN, which training never computes."""
        report = locate_nonfinite(kl_masked_on_labels, self.Y, self.LOGITS)
        assert not report.found, str(report)

    def test_the_prediction_still_is(self):
        report = locate_nonfinite(lambda y, logits: tf.reduce_sum(y * tf.sqrt(logits)), self.Y,
                                  np.zeros((1, 3), np.float32))
        assert report.found and report.op_type == "SqrtGrad"
        assert report.nonfinite_outputs == ["gradient of argument 1"]

    def test_a_step_reading_variables_is_differentiated_by_them_only(self):
        keras.utils.set_random_seed(0)
        dense = keras.layers.Dense(3)
        dense.build((None, 3))
        report = locate_nonfinite(lambda x, y: kl_masked_on_labels(y, dense(x)), self.LOGITS, self.Y)
        assert not report.found, str(report)


class Net(keras.Model):
    def __init__(self):
        super().__init__(name="net")
        self.h = keras.layers.Dense(4, name="h")
        self.o = keras.layers.Dense(1, name="o")

    def call(self, x):
        return self.o(self.h(x))


class TestCustomLoopNames:
    def test_variables_are_named_by_their_keras_path(self):
        net = Net()
        net(MODEL_X[:1])
        kernel = net.h.kernel.numpy()
        kernel[:] = np.nan
        net.h.kernel.assign(kernel)
        report = locate_nonfinite(lambda x: tf.reduce_mean(net(x)), MODEL_X)
        assert report.op_type == "ReadVariableOp" and "variable 'net/h/kernel'" in report.cause, report.cause
        # NaN in h's kernel reaches the gradient of o's kernel (through h's output) only. TensorFlow
        # names both kernels 'net/kernel:0'.
        assert report.nonfinite_outputs[1:] == ["gradient of net/o/kernel"], report.nonfinite_outputs
        assert "no finite values" in str(report) and "min nan" not in str(report)


class TestCauses:
    def test_log_of_one_minus_a_saturated_sigmoid(self):
        report = locate_nonfinite(lambda x: tf.reduce_sum(tf.math.log(1.0 - tf.sigmoid(x))),
                                  np.array([1.0, 40.0], np.float32))
        assert "sigmoid saturated to 1" in report.cause and "log_sigmoid(-x)" in report.fix

    def test_float64_labels_of_a_compiled_model(self):
        model = build_model()
        model.compile("sgd", loss=naive_log_loss)
        report = locate_nonfinite(model, MODEL_X, MODEL_Y.astype(np.float64))
        assert report.op_type == "Log"

    def test_multi_output_model_with_a_dict_of_losses(self):
        keras.utils.set_random_seed(0)
        inp = keras.Input((4,))
        model = keras.Model(inp, {"cls": keras.layers.Dense(3, name="cls")(inp),
                                  "reg": keras.layers.Dense(1, name="reg")(inp)})
        model.compile("sgd", loss={"cls": lambda y, z: tf.math.log(z), "reg": "mse"})
        report = locate_nonfinite(model, MODEL_X, {"cls": MODEL_Y, "reg": np.zeros((16, 1), np.float32)})
        assert report.found and report.op_type == "Log"


class TestArguments:
    def test_model_without_input(self):
        with pytest.raises(ValueError, match=r"^safeops.debug.locate_nonfinite: args must be .*, got none"):
            locate_nonfinite(build_model())

    def test_input_of_the_wrong_width(self):
        with pytest.raises(ValueError, match=r"^safeops.debug.locate_nonfinite: x must be an input the model "
                                             r"accepts \(shape \(None, 4\)\), got shape \(16, 5\)"):
            locate_nonfinite(build_model(), np.ones((16, 5), np.float32), MODEL_Y)

    def test_unknown_loss_name(self):
        with pytest.raises(ValueError, match=r"loss must be .*, got 'nonexistent'"):
            locate_nonfinite(build_model(), MODEL_X, MODEL_Y, loss="nonexistent")

    def test_loss_with_a_plain_function(self):
        with pytest.raises(ValueError, match=r"loss must be None for a plain function"):
            locate_nonfinite(log_of_zero, X, loss="mse")

    def test_function_without_a_float_result(self):
        with pytest.raises(ValueError, match=r"fn must be a function that returns a floating-point loss"):
            locate_nonfinite(lambda x: tf.cast(x, tf.int32), X)


def test_exp_overflow_names_the_dtype_threshold():
    report = locate_nonfinite(lambda x: tf.reduce_sum(tf.exp(x)), tf.constant([1.0, 100.0]))
    assert "Exp overflow" in report.cause and "above log(max float32) = 88.72" in report.cause, report.cause


# --------------------------------------------------------------------------- what the audit found


def _regression_model(dtype=None, kernel=None) -> keras.Model:
    keras.utils.set_random_seed(0)
    init = keras.initializers.Constant(kernel) if kernel is not None else "glorot_uniform"
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, kernel_initializer=init, name="big",
                                                                     dtype=dtype),
                              keras.layers.Dense(1, name="out")])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    return model


class TestLabels:
    """A NaN in the labels is named as the labels, not as TensorFlow's placeholder ('fed_1')."""

    def test_model_labels(self):
        y = np.ones((16, 1), np.float32)
        y[5, 0] = np.nan
        report = locate_nonfinite(_regression_model(), MODEL_X, y)
        assert report.found and report.op_type == "Placeholder" and report.input_name == "y"
        assert "the labels y" in report.cause, report.cause
        assert "(1 NaN, 0 inf) at index (5, 0)" in report.cause, report.cause
        assert "clean the labels" in report.fix and "fed_" not in report.cause + report.fix
        assert str(report).startswith("safeops.debug.locate_nonfinite: the data fed as y already holds")

    def test_labels_of_a_plain_loss_function(self):
        y_true = np.array([0.0, np.inf, 1.0], np.float32)
        report = locate_nonfinite(lambda y_true, y_pred: tf.reduce_sum((y_true - y_pred) ** 2), y_true,
                                  np.zeros(3, np.float32))
        assert report.input_name == "argument 'y_true'"
        assert "the labels argument 'y_true'" in report.cause and "(0 NaN, 1 inf) at index 1" in report.cause

    def test_inputs_are_not_called_labels(self):
        x = MODEL_X.copy()
        x[2, 1] = np.nan
        report = locate_nonfinite(_regression_model(), x, np.ones((16, 1), np.float32))
        assert report.input_name == "x" and report.cause.startswith("the input x already holds")
        assert "labels" not in report.cause


class TestFloat16Overflow:
    """An activation beyond float16's 65504 is a range problem: the fix is the dtype, not the learning
    rate."""

    def test_float16_layer(self):
        report = locate_nonfinite(_regression_model(dtype="float16", kernel=100.0), MODEL_X * 300.0,
                                  np.ones((16, 1), np.float32))
        assert report.phase == "forward" and report.op_type == "MatMul"
        assert report.cause.startswith("float16 overflow: MatMul made") and "65504" in report.cause
        assert "learning rate" not in report.cause, report.cause
        assert "mixed_float16" in report.fix and "LossScaleOptimizer" in report.fix
        assert not report.fix.startswith("lower the learning rate"), report.fix

    def test_mixed_float16_names_the_layer_dtype(self):
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            model = _regression_model(kernel=100.0)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        report = locate_nonfinite(model, MODEL_X * 300.0, np.ones((16, 1), np.float32))
        assert report.cause.startswith("float16 overflow"), report.cause
        assert report.fix.startswith("give the layer that overflows dtype='float32'"), report.fix

    def test_float32_overflow_keeps_its_advice(self):
        report = locate_nonfinite(lambda x: tf.reduce_sum(x * x), np.array([1e30], np.float32))
        assert "float16" not in report.cause and "lower the learning rate" in report.fix

    def test_log_of_zero_in_float16_is_not_an_overflow(self):
        report = locate_nonfinite(lambda x: tf.reduce_sum(tf.math.log(x)), np.array([0.0, 1.0], np.float16))
        assert report.cause.startswith("Log of 0"), report.cause


def _argmax_of_a_nan_model() -> keras.Model:
    """The forward pass makes NaN (log of a negative number), but the output (class ids) is finite."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                              keras.layers.Lambda(lambda t: keras.ops.log(t - 100.0)),
                              keras.layers.Lambda(lambda t: keras.ops.argmax(t, -1))])
    model.compile("sgd", "mse")
    return model


class TestWithoutLabels:
    """Without y only the forward pass runs; its first NaN is reported, and the report says what was not
    checked."""

    def test_nan_in_the_forward_pass(self):
        report = locate_nonfinite(_argmax_of_a_nan_model(), MODEL_X)
        assert report.found and report.phase == "forward" and report.op_type == "Log", str(report)
        assert "no y was given" in report.note and "loss and the gradients were not checked" in report.note
        assert "the model's outputs are finite" in report.note and "note: no y was given" in str(report)

    def test_y_none_is_no_y(self):
        report = locate_nonfinite(_argmax_of_a_nan_model(), MODEL_X, None)
        assert report.found and report.op_type == "Log" and "no y was given" in report.note

    def test_nonfinite_output_is_listed(self):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: keras.ops.sqrt(t))])
        report = locate_nonfinite(model, MODEL_X)
        assert report.op_type == "Sqrt" and report.nonfinite_outputs and not report.later_sources
        assert "the model's outputs are finite" not in report.note

    def test_finite_forward_pass(self):
        report = locate_nonfinite(build_model(), MODEL_X)
        assert not report.found and "no y was given" in report.note
        assert str(report).startswith("safeops.debug.locate_nonfinite: the forward pass is finite")

"""Tests of ``safeops.debug.lint``: each pattern fires on the naive code and not on the safeops code.

Every hazardous line below carries a ``# lint: <pattern>`` marker; the tests
check that the finding's ``location`` is exactly that line of this file.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops import nn as snn
from safeops import losses
from safeops.debug import PATTERNS, Finding, lint

X = tf.ones([4, 3])
Y = tf.ones([4, 3])


def _marker_line(pattern: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# lint: {pattern}"):
                return number
    raise AssertionError(f"no marker for {pattern}")


def _at_marker(finding: Finding, pattern: str) -> bool:
    path, line = finding.location.rsplit(":", 1)
    return os.path.abspath(path) == os.path.abspath(__file__) and int(line) == _marker_line(pattern)


# --------------------------------------------------------------------------- naive code, one pattern each


def log_of_softmax(z):
    return tf.math.log(tf.nn.softmax(z))  # lint: log-of-softmax


def log_of_sigmoid(z):
    return tf.math.log(1.0 - tf.sigmoid(z))  # lint: log-of-sigmoid


def crossentropy_on_probabilities(y, z):
    return -tf.reduce_sum(y * tf.math.log(tf.nn.softmax(z)), axis=-1)  # lint: crossentropy-on-probabilities


def log_of_clip(p):
    return tf.math.log(tf.clip_by_value(p, 1e-7, 1.0))  # lint: log-of-clip


def log_of_nonpositive(p):
    return tf.math.log(p)  # lint: log-of-nonpositive


def division_by_zero(a, b):
    return a / tf.reduce_sum(b, axis=-1, keepdims=True)  # lint: division-by-zero


def sqrt_at_zero(a):
    return tf.norm(a, axis=-1)  # lint: sqrt-at-zero


def exp_overflow(a):
    return tf.exp(a) / 2.0  # lint: exp-overflow


def fractional_pow_at_zero(a):
    return tf.pow(tf.nn.relu6(a), 0.3)  # lint: fractional-pow-at-zero


def double_where(a):
    return tf.where(a > 0.0, tf.math.log(a), 0.0)  # lint: double-where


def lgamma_at_pole(a):
    return tf.reduce_sum(tf.math.lgamma(a * 2.0 - 1.0))  # lint: lgamma-at-pole


def running_logsumexp_of_mask(a):
    padded = tf.where(a > 0.5, a, -float("inf"))
    return tf.math.cumulative_logsumexp(padded, axis=1, reverse=True)  # lint: running-logsumexp-of-mask


def cumprod_through_zero(a):
    hazard = tf.clip_by_value(a, 0.0, 1.0)   # a discrete-time hazard: the survival factor can be 0
    return tf.math.cumprod(1.0 - hazard, axis=1)  # lint: cumprod-through-zero


def quantile_at_the_ends(a):
    u = tf.sigmoid(a)   # a probability (a CDF value): float32 rounds it to 1 from 17 on
    return tf.math.ndtri(u)  # lint: quantile-at-the-ends


def inverse_trig_at_one(a):
    u = tfm.l2_normalize(a, -1)
    return tf.math.acos(tf.reduce_sum(u * u[::-1], -1))  # lint: inverse-trig-at-one


NAIVE = {
    "log-of-softmax": (log_of_softmax, (X,)),
    "log-of-sigmoid": (log_of_sigmoid, (X,)),
    "crossentropy-on-probabilities": (crossentropy_on_probabilities, (Y, X)),
    "log-of-clip": (log_of_clip, (X,)),
    "log-of-nonpositive": (log_of_nonpositive, (X,)),
    "division-by-zero": (division_by_zero, (X, X)),
    "sqrt-at-zero": (sqrt_at_zero, (X,)),
    "exp-overflow": (exp_overflow, (X,)),
    "fractional-pow-at-zero": (fractional_pow_at_zero, (X,)),
    "double-where": (double_where, (X,)),
    "inverse-trig-at-one": (inverse_trig_at_one, (X,)),
    "lgamma-at-pole": (lgamma_at_pole, (X,)),
    "running-logsumexp-of-mask": (running_logsumexp_of_mask, (X,)),
    "cumprod-through-zero": (cumprod_through_zero, (X,)),
    "quantile-at-the-ends": (quantile_at_the_ends, (X,)),
}

#: Patterns with no safeops op to name (the fix is the user's own clip): none since safeops.math has
#: acos, asin and atanh.
NO_SAFEOPS_OP: set = set()

# --------------------------------------------------------------------------- the safeops equivalents


SAFE = {
    "log-of-softmax": (lambda z: tfm.log_softmax(z), (X,)),
    "log-of-sigmoid": (lambda z: tfm.log_sigmoid(-z), (X,)),
    "crossentropy-on-probabilities": (lambda y, z: snn.softmax_cross_entropy_with_logits(y, z), (Y, X)),
    "log-of-clip": (lambda p: tfm.log(p), (X,)),
    "log-of-nonpositive": (lambda p: tfm.log(p), (X,)),
    "division-by-zero": (lambda a, b: tfm.divide_no_nan(a, tf.reduce_sum(b, axis=-1, keepdims=True)), (X, X)),
    "sqrt-at-zero": (lambda a: tfm.norm(a, axis=-1), (X,)),
    "exp-overflow": (lambda a: tfm.softmax(a) + tfm.reduce_logsumexp(a), (X,)),
    "fractional-pow-at-zero": (lambda a: tfm.pow(tf.nn.relu6(a), 0.3), (X,)),
    "double-where": (lambda a: tf.where(a > 0.0, tfm.log(a), 0.0), (X,)),
    "inverse-trig-at-one": (lambda a: tfm.acos(tf.reduce_sum(
        tfm.l2_normalize(a, -1) * tfm.l2_normalize(a, -1)[::-1], -1)), (X,)),
    "lgamma-at-pole": (lambda a: tf.reduce_sum(tf.math.lgamma(tfm.softplus(a * 2.0 - 1.0) + 1e-3)), (X,)),
    "running-logsumexp-of-mask": (
        lambda a: tfm.cumulative_logsumexp(tf.where(a > 0.5, a, -float("inf")), axis=1, reverse=True), (X,)),
    "cumprod-through-zero": (lambda a: tfm.cumprod(1.0 - tf.clip_by_value(a, 0.0, 1.0), axis=1), (X,)),
    "quantile-at-the-ends": (lambda a: tfm.ndtri(tf.sigmoid(a)) + tfm.erfinv(tf.tanh(a)), (X,)),
}

# Hand-written code that is safe without safeops: the range analysis must know it.
KNOWN_SAFE = {
    "log of x*x + c": lambda a: tf.math.log(a * a + 1.0),
    "cumprod of positive factors": lambda a: tf.math.cumprod(tf.sigmoid(a), axis=1),
    "log of abs + c": lambda a: tf.math.log(tf.abs(a) + 1e-3),
    "log of softplus and exp": lambda a: tf.math.log(tf.nn.softplus(a)) + tf.math.log(tf.exp(-tf.abs(a))),
    "division by maximum(x, c)": lambda a: a / tf.maximum(tf.reduce_sum(a * a), 1e-6),
    "sqrt of x*x + c": lambda a: tf.sqrt(a * a + 1e-6),
    "exp of x - max(x)": lambda a: tf.exp(a - tf.reduce_max(a, axis=-1, keepdims=True)),
    "exp of -softplus": lambda a: tf.exp(-tf.nn.softplus(a)),
    "pow of a positive value": lambda a: tf.pow(tf.nn.softplus(a), 0.5),
    "integer pow": lambda a: tf.pow(a, 2.0),
    "the double where": lambda a: tf.where(a > 0.0, tf.math.log(tf.where(a > 0.0, a, 1.0)), 0.0),
    "where on a safe branch": lambda a: tf.where(a > 0.0, tf.math.log(a * a + 1.0), 0.0),
    "divide_no_nan": lambda a: tf.math.divide_no_nan(a, a),
    "cumulative_logsumexp of a bounded value": lambda a: tf.math.cumulative_logsumexp(tf.tanh(a), axis=1),
    "log of softmax + 1": lambda a: tf.math.log(tf.nn.softmax(a) + 1.0),
    # safeops outputs have known ranges (their forward is an inner XLA call the analysis cannot read)
    "log of safeops softplus + eps": lambda a: tf.math.log(tfm.softplus(a) + 1e-6),
    "log of 1 + safeops sigmoid": lambda a: tf.math.log(1.0 + tfm.sigmoid(a)),
    "keras poisson on a softmax": lambda a: keras.losses.poisson(a, tf.nn.softmax(a)),
}


def _patterns(findings) -> list:
    return [f.pattern for f in findings]


class TestEachPattern:
    @pytest.mark.parametrize("pattern", sorted(NAIVE))
    def test_naive_code_triggers_it_at_the_users_line(self, pattern):
        fn, args = NAIVE[pattern]
        findings = lint(fn, *args, print=False)
        hits = [f for f in findings if f.pattern == pattern]
        assert hits, [str(f) for f in findings]
        assert _at_marker(hits[0], pattern), hits[0].location
        assert ("safeops" in hits[0].fix or pattern in NO_SAFEOPS_OP) and hits[0].message and hits[0].op_type

    @pytest.mark.parametrize("pattern", sorted(SAFE))
    def test_safeops_equivalent_does_not(self, pattern):
        fn, args = SAFE[pattern]
        assert lint(fn, *args, print=False) == []

    @pytest.mark.parametrize("case", sorted(KNOWN_SAFE))
    def test_known_safe_code_does_not(self, case):
        assert lint(KNOWN_SAFE[case], X, print=False) == []

    def test_every_pattern_has_a_case(self):
        assert set(NAIVE) == set(SAFE) == set(PATTERNS)


class TestDetails:
    def test_op_names_and_types(self):
        (finding,) = lint(division_by_zero, X, X, print=False)
        assert finding.op_type == "RealDiv" and finding.op_name == "truediv"
        (finding,) = lint(double_where, X, print=False)
        assert finding.op_type == "SelectV2" and "Log" in finding.message

    def test_a_where_guard_hides_the_inner_finding(self):
        """The log inside the where is reported once, as the where's problem."""
        assert _patterns(lint(double_where, X, print=False)) == ["double-where"]

    def test_sqrt_and_norm_messages(self):
        (finding,) = lint(sqrt_at_zero, X, print=False)
        assert "norm" in finding.message and "safeops.math.norm" in finding.fix

    def test_rsqrt_of_a_sum_of_squares_names_safeops_rsqrt(self):
        """x * rsqrt(sum(x**2)) without a floor (a hand-written RMS or L2 norm): inf * 0 at a zero row."""
        def rms(rsqrt):
            return lambda a: a * rsqrt(tf.reduce_sum(a * a, -1, keepdims=True))

        (finding,) = lint(rms(tf.math.rsqrt), X, print=False)
        assert finding.op_type == "Rsqrt" and finding.fix.startswith("safeops.math.rsqrt(x)")
        assert lint(rms(tfm.rsqrt), X, print=False) == []

    @pytest.mark.parametrize("op", [tf.math.acos, tf.math.asin, tf.math.atanh])
    def test_inverse_trig_clipped_to_the_closed_interval_is_still_reported(self, op):
        """A clip to [-1, 1] makes the value finite but not the gradient at +-1 (inf there)."""
        findings = lint(lambda a: op(tf.clip_by_value(a, -1.0, 1.0)), X, print=False)
        assert _patterns(findings) == ["inverse-trig-at-one"], [str(f) for f in findings]
        assert "[-1, 1]" in findings[0].message and findings[0].fix.startswith(f"safeops.math.{op.__name__}(")

    def test_erfinv_and_ndtri_at_their_ends_are_reported_inside_is_quiet(self):
        for fn in (lambda a: tf.math.erfinv(tf.tanh(a)),
                   lambda a: tf.math.ndtri(tf.clip_by_value(a, 0.0, 1.0))):
            findings = lint(fn, X, print=False)
            assert _patterns(findings) == ["quantile-at-the-ends"], [str(f) for f in findings]
            assert findings[0].fix.startswith("safeops.math.")
        assert lint(lambda a: tf.math.erfinv(0.5 * tf.tanh(a)), X, print=False) == []
        assert lint(lambda a: tf.math.ndtri(tf.clip_by_value(a, 0.01, 0.99)), X, print=False) == []

    def test_acosh_not_known_above_one_is_reported(self):
        """acosh at 1 (a hyperbolic distance of a point to itself): inf gradient, even after a clip at 1."""
        for arg in (lambda a: a, lambda a: tf.maximum(a, 1.0), lambda a: 1.0 + tf.square(a)):
            findings = lint(lambda a: tf.math.acosh(arg(a)), X, print=False)
            assert _patterns(findings) == ["inverse-trig-at-one"], [str(f) for f in findings]
            assert "acosh of a value" in findings[0].message
            assert findings[0].fix.startswith("safeops.math.acosh(")
        assert lint(lambda a: tf.math.acosh(2.0 + tf.square(a)), X, print=False) == []
        assert lint(lambda a: tfm.acosh(a), X, print=False) == []
        # safeops' acosh and TensorFlow's are non-negative: a log of 1 plus either is not reported.
        assert lint(lambda a: tf.math.log(1.0 + tfm.acosh(a)), X, print=False) == []
        findings = lint(lambda a: tf.math.log(1.0 + tfm.atanh(a)), X, print=False)
        assert _patterns(findings) == ["log-of-nonpositive"]
        assert _patterns(lint(lambda a: tf.math.log(1.0 + tf.math.acosh(2.0 + tf.square(a))), X,
                              print=False)) == []

    def test_an_epsilon_added_to_probabilities_is_seen_through(self):
        """log(p + 1e-7), the usual hand-written guard: finite, but the gradient shrinks by p / (p + eps)."""
        findings = lint(lambda y, z: -tf.reduce_sum(y * tf.math.log(tf.nn.softmax(z) + 1e-7), -1), Y, X,
                        print=False)
        assert _patterns(findings) == ["crossentropy-on-probabilities"], [str(f) for f in findings]
        assert "softmax output plus 1e-07" in findings[0].message
        assert "p / (p + 1e-07)" in findings[0].message and "from_logits=True" in findings[0].fix
        findings = lint(lambda z: tf.math.log(1e-8 + tf.sigmoid(z)), X, print=False)
        assert _patterns(findings) == ["log-of-sigmoid"] and "plus 1e-08" in findings[0].message

    def test_inverse_trig_of_a_clip_strictly_inside_is_quiet(self):
        assert lint(lambda a: tf.math.acos(tf.clip_by_value(a, -0.999, 0.999)), X, print=False) == []

    def test_tf_function_is_traced_through(self):
        assert _patterns(lint(tf.function(log_of_nonpositive), X, print=False)) == ["log-of-nonpositive"]

    def test_cond_branches_are_linted(self):
        @tf.function
        def branchy(a, flag):
            if flag:
                return tf.math.log(a)  # lint: log-in-a-cond
            return a

        findings = lint(branchy, X, tf.constant(True), print=False)
        assert _patterns(findings) == ["log-of-nonpositive"]
        path, line = findings[0].location.rsplit(":", 1)
        assert int(line) == _marker_line("log-in-a-cond")

    def test_report_prints_and_is_a_list(self, capsys):
        findings = lint(crossentropy_on_probabilities, Y, X)
        out = capsys.readouterr().out
        assert isinstance(findings, list) and len(findings) == 1
        assert "1 finding(s)" in out and "crossentropy-on-probabilities" in out and str(findings[0]) in out
        assert f"test_debug_lint.py:{_marker_line('crossentropy-on-probabilities')}" in out

    def test_finding_str(self):
        f = Finding("log-of-clip", "Log", "Log", "a.py:3", "why", "safeops.math.log(x)")
        assert str(f).startswith("a.py:3: [log-of-clip] Log 'Log'") and "fix: safeops.math.log(x)" in str(f)


# --------------------------------------------------------------------------- Keras models


@pytest.fixture(scope="module")
def softmax_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.LayerNormalization(),
        keras.layers.Dropout(0.1),
        keras.layers.Dense(3, activation="softmax"),
    ])


X6 = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
Y3 = keras.utils.to_categorical(np.arange(8) % 3, 3).astype("float32")


def naive_log_loss(y_true, y_prob):
    return -tf.reduce_sum(y_true * tf.math.log(y_prob), axis=-1)  # lint: model-loss


class TestKerasModel:
    def test_hand_written_loss_on_a_softmax_output(self, softmax_model):
        findings = lint(softmax_model, X6, Y3, loss=naive_log_loss, print=False)
        assert _patterns(findings) == ["crossentropy-on-probabilities"]
        assert "softmax" in findings[0].message
        path, line = findings[0].location.rsplit(":", 1)
        assert int(line) == _marker_line("model-loss")

    def test_targets_are_made_up_when_missing(self, softmax_model):
        findings = lint(softmax_model, X6, loss=naive_log_loss, print=False)
        assert _patterns(findings) == ["crossentropy-on-probabilities"]

    @pytest.mark.parametrize("loss", ["categorical_crossentropy", "mse", "binary_crossentropy",
                                      "sparse_categorical_crossentropy", "kl_divergence", "huber",
                                      "cosine_similarity"])
    def test_standard_layers_and_keras_losses_are_quiet(self, softmax_model, loss):
        """Keras recovers the logits of a Softmax op (from_logits=False is safe here) and its layers are safe."""
        assert lint(softmax_model, X6, loss=loss, print=False) == []

    def test_keras_probability_loss_that_clips(self, softmax_model):
        """Focal cross-entropy on probabilities clips and logs them: flagged, located in Keras."""
        findings = lint(softmax_model, X6, Y3, loss=keras.losses.CategoricalFocalCrossentropy(), print=False)
        assert _patterns(findings) == ["crossentropy-on-probabilities"]
        assert "clipped" in findings[0].message and "library code" in findings[0].location

    def test_compiled_loss_is_used_by_default(self):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
        model.compile("sgd", loss=naive_log_loss)
        assert _patterns(lint(model, X6, Y3, print=False)) == ["crossentropy-on-probabilities"]

    def test_safeops_loss_is_quiet(self, softmax_model):
        def safe_log_loss(y_true, y_prob):
            return -tf.reduce_sum(y_true * tfm.log(y_prob), axis=-1)

        assert lint(softmax_model, X6, Y3, loss=safe_log_loss, print=False) == []


# --------------------------------------------------------------------------- what training runs


def probs_log_loss(y_true, y_prob):
    return -tf.reduce_sum(y_true * tf.math.log(y_prob), axis=-1)  # lint: multi-output


def _two_head_model(as_dict: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = keras.layers.Dense(4, activation="relu")(inp)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    reg = keras.layers.Dense(1, name="reg")(h)
    return keras.Model(inp, {"cls": cls, "reg": reg} if as_dict else [cls, reg])


class TestCompiledLoss:
    @pytest.mark.parametrize("as_dict", [True, False], ids=["dict", "list"])
    @pytest.mark.parametrize("with_y", [True, False], ids=["y", "no-y"])
    def test_multi_output_losses_are_linted_per_output(self, as_dict, with_y):
        model = _two_head_model(as_dict)
        if as_dict:
            model.compile("sgd", loss={"cls": probs_log_loss, "reg": "mse"})
            y = {"cls": Y3, "reg": np.zeros((8, 1), "float32")}
        else:
            model.compile("sgd", loss=[probs_log_loss, "mse"])
            y = [Y3, np.zeros((8, 1), "float32")]
        findings = lint(model, X6, *([y] if with_y else []), print=False)
        assert _patterns(findings) == ["crossentropy-on-probabilities"], (str(findings), findings.note)
        assert int(findings[0].location.rsplit(":", 1)[1]) == _marker_line("multi-output")

    def test_explicit_loss_list_by_position(self):
        findings = lint(_two_head_model(False), X6, loss=["mse", probs_log_loss], print=False)
        assert _patterns(findings) == ["log-of-nonpositive"]   # the log now meets the linear head

    def test_a_loss_that_cannot_be_traced_is_said_in_the_note(self, softmax_model):
        def broken(y_true, y_pred):
            raise ValueError("this loss wants something else")

        findings = lint(softmax_model, X6, loss=broken, print=False)
        assert findings == [] and "the loss was not linted" in findings.note
        assert "this loss wants something else" in findings.note and "forward pass only" in str(findings)

    def test_float64_labels_as_keras_gives_them(self, softmax_model):
        """to_categorical gives float64; fit casts them to floatx, and so does lint."""
        y64 = keras.utils.to_categorical(np.arange(8) % 3, 3)
        assert y64.dtype == np.float64
        assert _patterns(lint(softmax_model, X6, y64, loss=naive_log_loss, print=False)) == \
            ["crossentropy-on-probabilities"]

    def test_mixed_precision_softmax_head_takes_keras_clip_path(self):
        """A float16 softmax is cast to float32 by the compiled loss, which loses the logits Keras would
        recover: training clips the probabilities. lint must see that path, not the raw loss function."""
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
            model.compile("sgd", "categorical_crossentropy")
            assert _patterns(lint(model, X6, Y3, print=False)) == ["crossentropy-on-probabilities"]
            assert _patterns(lint(model, X6, print=False)) == ["crossentropy-on-probabilities"]
        finally:
            keras.mixed_precision.set_global_policy("float32")

    def test_keras_focal_loss_fix_keeps_the_focal_loss(self, softmax_model):
        (finding,) = lint(softmax_model, X6, Y3, loss="categorical_focal_crossentropy", print=False)
        assert "safeops.losses.categorical_focal_crossentropy(y, logits, from_logits=True)" in finding.fix

    def test_keras_generalized_cross_entropy_points_to_safeops_loss(self, softmax_model):
        """Keras' (1 - p**q) / q: its gradient is NaN for the row once the labelled probability underflows."""
        loss = keras.losses.CategoricalGeneralizedCrossEntropy(q=0.7)
        (finding,) = lint(softmax_model, X6, np.arange(8) % 3, loss=loss, print=False)
        assert finding.pattern == "fractional-pow-at-zero" and "library code" in finding.location
        assert "safeops.losses.categorical_generalized_cross_entropy(y, p, q)" in finding.fix
        ours = losses.CategoricalGeneralizedCrossEntropy(q=0.7)
        assert lint(softmax_model, X6, np.arange(8) % 3, loss=ours, print=False) == []


class TestTrainingStep:
    def test_optimizer_internals_are_not_reported(self):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"),
                                  keras.layers.Dense(1)])
        opt = keras.optimizers.Adam(1e-3)

        @tf.function
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(y - model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        assert lint(train_step, X6, np.ones((8, 1), "float32"), print=False) == []

    def test_user_math_in_a_training_step_is_still_reported(self):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
        opt = keras.optimizers.SGD(0.1)

        def train_step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.sqrt(tf.abs(model(x))))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        assert _patterns(lint(train_step, X6, print=False)) == ["sqrt-at-zero"]


def kl_masked_on_labels(y, logits):
    return tf.reduce_sum(tf.where(y > 0, y * (tf.math.log(y) - tf.nn.log_softmax(logits)), 0.0), axis=-1)


class TestLabelOnlyHazards:
    """A where around log(labels) guards the value; only d/d labels would be NaN: training never takes it."""

    def test_plain_function(self):
        assert lint(kl_masked_on_labels, Y3, X6[:, :3], print=False) == []

    def test_keras_model(self):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
        assert lint(model, X6, Y3, loss=kl_masked_on_labels, print=False) == []

    def test_lgamma_of_count_labels_is_quiet(self):
        """lgamma(y + 1) of the labels (a Poisson log-likelihood's constant): no gradient reaches it."""
        def nll(y, rate):
            return tf.reduce_sum(rate - y * tf.math.log(rate) + tf.math.lgamma(y + 1.0), -1)

        findings = lint(nll, Y3, tf.nn.softplus(X6[:, :3]) + 1.0, print=False)
        assert "lgamma-at-pole" not in _patterns(findings), [str(f) for f in findings]

    def test_acos_of_clipped_labels_is_quiet_and_of_the_prediction_is_not(self):
        """acos of labels clipped to [-1, 1]: finite value, and no gradient reaches the labels."""
        def angle_loss(y, logits):
            return tf.reduce_sum(tf.math.acos(tf.clip_by_value(y, -1.0, 1.0)) * logits, axis=-1)

        assert lint(angle_loss, Y3, X6[:, :3], print=False) == []
        assert _patterns(lint(lambda y, logits: angle_loss(logits, y), Y3, X6[:, :3], print=False)) \
            == ["inverse-trig-at-one"]

    def test_the_same_where_on_the_prediction_is_reported(self):
        assert _patterns(lint(lambda y, logits: kl_masked_on_labels(logits, y), Y3, X6[:, :3], print=False)) \
            == ["double-where"]


class TestArguments:
    def test_model_without_input(self, softmax_model):
        with pytest.raises(ValueError, match=r"^safeops.debug.lint: example_args must be .*, got none"):
            lint(softmax_model, print=False)

    def test_unknown_loss_name(self, softmax_model):
        with pytest.raises(ValueError, match=r"^safeops.debug.lint: loss must be .*, got 'nonexistent'"):
            lint(softmax_model, X6, loss="nonexistent", print=False)

    def test_loss_list_of_the_wrong_length(self):
        with pytest.raises(ValueError, match=r"loss must be a list of 2 .*, got a list of 1"):
            lint(_two_head_model(False), X6, loss=["mse"], print=False)

    def test_loss_with_a_plain_function(self):
        with pytest.raises(ValueError, match=r"^safeops.debug.lint: loss must be None for a plain function"):
            lint(log_of_softmax, X, loss="mse", print=False)


def test_fn_and_gradients_are_checked_by_name():
    """lint(42, x) raised autograph's "'int' object is not callable"; gradients="no" read as True."""
    from safeops.debug import locate_nonfinite

    x = tf.ones([2])
    with pytest.raises(TypeError, match=r"debug.lint: fn must be a function or a Keras model, got 42"):
        lint(42, x, print=False)
    with pytest.raises(TypeError, match=r"locate_nonfinite: fn must be a function or a Keras model"):
        locate_nonfinite("notfn", x)
    with pytest.raises(TypeError, match=r"lint: gradients must be True or False, got 'no'"):
        lint(lambda t: tf.reduce_sum(t), x, gradients="no", print=False)

"""check_inputs (data preflight) and doctor (the one-call report)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from safeops.debug import check_inputs, doctor


def _clean(n=200, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


class TestCheckInputs:
    def test_clean_standardised_data_passes(self):
        report = check_inputs(_clean(), _clean(seed=1))
        assert report.ok and report.findings == [] and report.fix == ""
        assert "no problem found" in str(report)

    def test_each_problem_is_flagged_on_its_columns(self):
        x = _clean()
        x[:, 1] *= 5000.0          # large scale
        x[:, 3] = 7.0              # constant
        x[10, 4] = np.nan          # non-finite
        report = check_inputs(x, feature_names=list("abcde"))
        by_kind = {f.kind: f for f in report.findings}
        assert set(by_kind) == {"nonfinite", "scale", "spread", "constant"}
        assert by_kind["scale"].columns == [1] and by_kind["scale"].names == ["b"]
        assert by_kind["constant"].columns == [3]
        assert by_kind["nonfinite"].columns == [4]
        assert by_kind["spread"].columns[0] == 1
        assert [f.kind for f in report.findings][0] == "nonfinite"   # most severe first
        assert report.column_stats["n_nan"][4] == 1

    def test_fix_is_leak_free_and_printed(self):
        x = _clean()
        x[:, 0] *= 1e4
        report = check_inputs(x, _clean(seed=1))
        text = str(report)
        assert "adapt(x_train)" in text and "StandardScaler().fit(x_train)" in text
        assert "scaler.transform(x_test)" in text and "training split only" in text

    def test_test_split_is_checked_but_never_used_for_statistics(self):
        x_train = _clean()
        x_test = _clean(seed=1) * 1e6
        x_test[0, 2] = np.inf
        with_test = check_inputs(x_train, x_test)
        alone = check_inputs(x_train)
        for key in ("mean", "std", "scale"):
            np.testing.assert_array_equal(with_test.column_stats[key], alone.column_stats[key])
        assert with_test.kinds() == {"nonfinite"}
        assert "test split" in str(with_test)

    def test_nearly_constant_mean_rounding_is_still_constant(self):
        x = _clean(n=401)
        x[:, 2] = 0.1              # sum of 401 copies of 0.1 is not 40.1 exactly
        assert check_inputs(x).kinds() == {"constant"}

    def test_shapes_and_types_are_checked(self):
        with pytest.raises(ValueError, match="x_test must be of 5 features"):
            check_inputs(_clean(), _clean(d=4))
        with pytest.raises(TypeError, match="x_train must be numeric"):
            check_inputs(np.array([["a", "b"]]))
        assert check_inputs(np.arange(10.0)).n_features == 1                 # 1-D: one feature
        assert check_inputs(np.zeros((4, 2, 3)) + np.arange(6).reshape(2, 3)).n_features == 6

    @pytest.mark.parametrize("kwargs, arg", [({"max_scale": -1.0}, "max_scale"),
                                             ({"max_scale": "big"}, "max_scale"),
                                             ({"max_scale": True}, "max_scale"),
                                             ({"max_spread": float("nan")}, "max_spread"),
                                             ({"feature_names": ["a", "b"]}, "feature_names")])
    def test_bad_thresholds_and_names_are_refused(self, kwargs, arg):
        """A negative max_scale flagged every column, a string one raised a ufunc error, and names
        of the wrong length were silently replaced by x[j]."""
        with pytest.raises(ValueError, match=rf"check_inputs: {arg} must be"):
            check_inputs(_clean(d=3), **kwargs)

    @settings(max_examples=25, deadline=None)
    @given(st.floats(min_value=-3, max_value=6))
    def test_scale_flag_follows_the_threshold(self, log_scale):
        x = _clean(n=64, d=3)
        x[:, 0] *= 10.0 ** log_scale
        report = check_inputs(x, max_scale=100.0)
        rms = float(np.sqrt(np.mean(x[:, 0] ** 2)))
        assert ("scale" in report.kinds() and 0 in report.findings[0].columns) == (rms > 100.0)


def _model(lr=0.01, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(lr), loss="mse", metrics=["mae"])
    return model


def _state(model):
    return [v.numpy().tobytes() for v in model.variables] + \
           [v.numpy().tobytes() for v in model.optimizer.variables]


class TestDoctor:
    def test_healthy_model_healthy_data(self):
        x = _clean(n=128, d=6)
        y = x[:, :1] * 2.0
        report = doctor(_model(), (x, y), steps=6, verbose=False)
        assert report.training["finite"] and report.training["steps"] == 6
        assert report.experiments == {}
        assert not [c for c in report.causes if c.source == "training"]
        assert "stayed finite" in str(report)

    def test_model_state_is_untouched(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(128, 6)) * np.array([1, 1, 1, 1, 1, 3e4])
        y = rng.normal(size=(128, 1))
        model = _model(lr=1.0)
        model.fit(x[:32], y[:32], verbose=0, epochs=1)       # a used optimizer, with state
        before = _state(model)
        lr = float(model.optimizer.learning_rate.numpy())
        report = doctor(model, (x, y), steps=8, verbose=False)
        assert _state(model) == before
        assert float(model.optimizer.learning_rate.numpy()) == lr
        assert report.inputs is not None and "scale" in report.inputs.kinds()

    def test_fresh_optimizer_is_left_as_fit_would_find_it(self):
        x = _clean(n=64, d=6)
        model = _model()
        weights = [w.copy() for w in model.get_weights()]
        doctor(model, (x, x[:, :1]), steps=3, verbose=False)
        assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
        assert int(model.optimizer.iterations.numpy()) == 0
        assert all(not np.any(v.numpy()) for v in model.optimizer.variables if "momentum" in v.path)

    def test_input_scale_ranks_first_when_standardising_cures_it(self):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(256, 6)) * np.array([1e4, 1, 1e-3, 1, 1, 1]) + np.array([3e4, 0, 0, 0, 0, 0])
        y = (x[:, 1:2] > 0).astype("float64")
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.01), loss="mse")
        report = doctor(model, (x, y), steps=10, verbose=False)
        assert not report.training["finite"]
        assert report.experiments["standardised inputs"] is True
        assert report.top.source == "inputs" and report.top.score >= 90
        assert "training split only" in report.top.fix
        text = str(report)
        assert text.index("input features") < text.index("learning rate too high")

    def test_dataset_input(self):
        x = _clean(n=96, d=6).astype("float32")
        ds = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(16)
        report = doctor(_model(), ds, steps=4, verbose=False)
        assert report.training["steps"] == 4 and report.training["finite"]
        assert report.inputs is not None and report.inputs.n_train == 96

    def test_token_ids_are_not_input_features(self):
        """doctor told users to standardise the integer ids going into an Embedding."""
        rng = np.random.default_rng(0)
        x = rng.integers(0, 5000, (128, 10)).astype("int32")
        y = rng.integers(0, 2, 128).astype("float32")
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((10,), dtype="int32"), keras.layers.Embedding(5000, 8),
                                  keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(1e6), loss=keras.losses.BinaryCrossentropy(from_logits=True))
        report = doctor(model, (x, y), steps=6, verbose=False)
        assert report.inputs is None and "standardised inputs" not in report.experiments
        assert not [c for c in report.causes if c.source == "inputs"]
        assert not report.training["finite"] and report.top.title == "learning rate too high"
        assert "reaches |x|" not in report.training["events"][0].cause
        # The same integers read as numbers by a Dense model are features.
        keras.utils.set_random_seed(0)
        dense = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1)])
        dense.compile(keras.optimizers.SGD(0.01), loss="mse")
        assert doctor(dense, (x, y), steps=2, experiments=False, verbose=False).inputs is not None

    @pytest.mark.parametrize("as_dataset", [False, True])
    def test_multi_input_model(self, as_dataset):
        """A list of input arrays failed in tf.data; a dataset of input tuples in the sample."""
        rng = np.random.default_rng(0)
        x1, x2 = rng.normal(size=(64, 3)).astype("float32"), rng.normal(size=(64, 2)).astype("float32")
        y = rng.normal(size=(64, 1)).astype("float32")
        keras.utils.set_random_seed(0)
        a, b = keras.Input((3,)), keras.Input((2,))
        model = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
        model.compile(keras.optimizers.SGD(0.01), loss="mse")
        data = tf.data.Dataset.from_tensor_slices(((x1, x2), y)).batch(16) if as_dataset else ([x1, x2], y)
        before = _state(model)
        report = doctor(model, data, steps=3, verbose=False)
        assert report.training["finite"] and report.training["steps"] == 3
        assert _state(model) == before

    def test_learning_rate_experiment_scales_a_schedule(self):
        """With a schedule the "/ 10" run left the rate as it was and reported the result."""
        rng = np.random.default_rng(0)
        x = rng.normal(size=(128, 6)).astype("float32")
        y = x[:, :1] * 3.0
        results = {}
        for kind in ("float", "schedule"):
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(1)])
            lr = 0.3 if kind == "float" else keras.optimizers.schedules.ExponentialDecay(0.3, 1000, 0.99)
            model.compile(keras.optimizers.SGD(lr), loss="mse")
            report = doctor(model, (x, y), steps=20, verbose=False)
            assert not report.training["finite"]
            results[kind] = report.experiments["learning rate / 10"]
            if kind == "schedule":
                assert model.optimizer._learning_rate.__class__.__name__ == "ExponentialDecay"
        assert results == {"float": True, "schedule": True}

    def test_a_model_that_already_went_nan_is_diagnosed_on_a_fresh_copy(self):
        """On NaN weights every step failed, so both cures read "still non-finite" whatever the cause."""
        rng = np.random.default_rng(1)
        x = rng.normal(size=(256, 6)) * np.array([1e4, 1, 1e-3, 1, 1, 1]) + np.array([3e4, 0, 0, 0, 0, 0])
        y = (x[:, 1:2] > 0).astype("float64")

        def my_mse(y_true, y_pred):   # not registered with Keras: its clone is compiled here, not by Keras
            return tf.reduce_mean(tf.square(y_pred - tf.cast(y_true, y_pred.dtype)), -1)

        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.01), loss=my_mse)
        model.fit(x, y, batch_size=32, epochs=2, verbose=0)
        assert not np.isfinite(model.layers[0].kernel.numpy()).all()   # training went NaN
        before = _state(model)
        report = doctor(model, (x, y), steps=10, verbose=False)
        assert _state(model) == before   # NaN bits included
        assert report.training["fresh_copy"]
        assert model.layers[0].kernel.path in report.training["nonfinite_weights"]
        assert not [n for n in report.training["nonfinite_weights"] if n.startswith("loss")]   # metrics
        assert report.experiments["standardised inputs"] is True
        assert report.top.source == "inputs" and report.top.score >= 90
        weights = [c for c in report.causes if c.source == "weights"]
        assert len(weights) == 1 and "freshly initialised copy" in weights[0].evidence
        assert "on a freshly initialised copy went wrong" in str(report)

    def test_a_nan_model_that_cannot_be_cloned_is_not_trained(self):
        class Net(keras.Model):   # subclassed, without get_config: clone_model cannot rebuild it
            def __init__(self, width):
                super().__init__()
                self.dense = keras.layers.Dense(width)

            def call(self, x):
                return self.dense(x)

        x = _clean(n=64, d=3).astype("float32")
        model = Net(1)
        model.compile(keras.optimizers.SGD(0.01), loss="mse")
        model(x[:1])
        model.dense.bias.assign([np.nan])
        before = _state(model)
        report = doctor(model, (x, x[:, :1]), steps=4, verbose=False)
        assert _state(model) == before
        assert report.training["finite"] is None and report.training["steps"] == 0
        assert not report.training["fresh_copy"] and report.experiments == {}
        assert report.top.source == "weights" and "could not be cloned" in report.top.evidence
        assert not [c for c in report.causes if c.source in ("training", "locate")]
        assert "no guarded training step run" in str(report)

    def test_bad_data_argument(self):
        with pytest.raises(TypeError, match="data must be"):
            doctor(_model(), "nope", verbose=False)

    def test_uncompiled_model_is_refused_by_name(self):
        """An uncompiled model failed deep inside with an AttributeError on `optimizer`."""
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="my_net")
        x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
        with pytest.raises(ValueError, match=r"doctor: model must be compiled .*'my_net'"):
            doctor(model, (x, x[:, :1]), verbose=False)

    @pytest.mark.parametrize("arg, bad", [("steps", -5), ("steps", 0), ("batch_size", 0), ("steps", 2.5),
                                          ("preflight_rows", True)])
    def test_bad_counts_are_refused(self, arg, bad):
        """steps=-5 read a repeated dataset forever (take(-5))."""
        x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
        with pytest.raises(ValueError, match=rf"doctor: {arg} must be a positive integer, got {bad!r}"):
            doctor(_model(), (x, x[:, :1]), verbose=False, **{arg: bad})

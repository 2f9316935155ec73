"""safeops.math.erfinv and ndtri: where TensorFlow's kernels fail inside the domain, the clamped
ends in every dtype and mode, dense samples against mpmath, the uses that reach the ends, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import safeops.math as tfm
from safeops import debug
from tests import reference
from tests._modes import run as in_mode, value_and_grad
from tests.ulp import GRAD_RTOL, finfo, ulp_distance

MODES = ["eager", "function", "xla"]
DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]


def _reference(name, xs, dtype):
    ref = reference.elementwise(name, np.asarray(xs), dtype=dtype)
    return ref.value.astype(np.float64), ref.grads[0]


# ----------------------------------------------------------------------------
# TensorFlow's kernels fail inside the domain; safeops' do not.


@pytest.mark.parametrize("mode", MODES)
def test_tensorflow_erfinv_is_inf_below_one_and_safeops_is_exact(mode):
    x = np.array([np.nextafter(np.float32(1), np.float32(0)), -0.72213662, 0.9998297], np.float32)
    theirs = in_mode(mode, tf.math.erfinv)(tf.constant(x)).numpy()
    exact = reference.elementwise("erfinv", x, dtype="float32").value
    if mode != "xla":
        assert theirs[0] == np.inf   # erfinv(0.99999994) = 3.83
    assert np.max(ulp_distance(theirs, exact, np.float32)) > 4
    ours = in_mode(mode, tfm.erfinv)(tf.constant(x)).numpy()
    assert np.max(ulp_distance(ours, exact, np.float32)) <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tensorflow_ndtri_under_xla_is_minus_inf_near_1e_8_and_safeops_is_exact(dtype):
    p = np.array([1.43e-8, 1.3484323951145503e-17, 0.3], dtype)
    theirs = in_mode("xla", tf.math.ndtri)(tf.constant(p)).numpy()
    assert not np.all(np.isfinite(theirs))
    exact = reference.elementwise("ndtri", p, dtype=dtype).value
    for mode in MODES:
        ours = in_mode(mode, tfm.ndtri)(tf.constant(p)).numpy()
        assert np.max(ulp_distance(ours, exact, dtype)) <= 2, mode


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_samples_against_mpmath(dtype, mode):
    """Log-spaced to both ends and uniform inside: float32 within 1 ULP, float64 within C3's 4."""
    info = np.finfo(dtype)
    near_one = 1 - np.logspace(math.log10(info.eps / 2), -0.4, 300)
    tiny_side = np.logspace(math.log10(info.tiny * 2), -0.4, 300)   # erfinv's results stay normal
    rng = np.random.default_rng(11)
    x = np.concatenate([near_one, -near_one, tiny_side, -tiny_side, rng.uniform(-1, 1, 300)]).astype(dtype)
    p = np.concatenate([near_one, tiny_side, rng.uniform(0, 1, 300)]).astype(dtype)
    bound = 1 if dtype == np.float32 else 4
    for name, xs in (("erfinv", x), ("ndtri", p)):
        value, grad = value_and_grad(getattr(tfm, name), xs, mode)
        exact, exact_grad = _reference(name, xs, dtype)
        assert np.max(ulp_distance(value.astype(dtype), exact.astype(dtype), dtype)) <= bound, name
        np.testing.assert_allclose(grad, exact_grad, rtol=GRAD_RTOL[np.dtype(dtype).name], err_msg=name)


# ----------------------------------------------------------------------------
# The clamped ends (C4), in every dtype and mode.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ends_have_the_clamps_value_and_a_finite_positive_gradient(dtype, mode):
    info = finfo(dtype)
    b = 1.0 - float(info.eps) / 2
    x = tf.constant([1.0, -1.0, 2.0, -np.inf, np.inf, b, -b], dtype)
    value, grad = value_and_grad(tfm.erfinv, x, mode)
    at_b, grad_b = _reference("erfinv", np.array([b]), dtype)
    np.testing.assert_array_equal(value, [at_b[0], -at_b[0], at_b[0], -at_b[0], at_b[0], at_b[0], -at_b[0]])
    assert np.all(np.isfinite(grad)) and np.all(grad > 0)
    np.testing.assert_allclose(grad, grad_b[0], rtol=GRAD_RTOL[dtype.name] * 2)

    p = tf.constant([0.0, -1.0, -np.inf, float(info.tiny), 1.0, 2.0, np.inf, b], dtype)
    value, grad = value_and_grad(tfm.ndtri, p, mode)
    low, grad_low = _reference("ndtri", np.array([float(info.tiny)]), dtype)
    high, grad_high = _reference("ndtri", np.array([b]), dtype)
    np.testing.assert_array_equal(value, [low[0]] * 4 + [high[0]] * 4)
    assert np.all(np.isfinite(grad)) and np.all(grad > 0)
    np.testing.assert_allclose(grad[:4], grad_low[0], rtol=GRAD_RTOL[dtype.name] * 2)
    np.testing.assert_allclose(grad[4:], grad_high[0], rtol=GRAD_RTOL[dtype.name] * 2)


@pytest.mark.parametrize("mode", MODES)
def test_signed_zeros_nan_and_the_centre(mode):
    value, grad = value_and_grad(tfm.erfinv, tf.constant([0.0, -0.0, np.nan]), mode)
    assert value[0] == 0 and math.copysign(1, value[0]) == 1
    assert value[1] == 0 and math.copysign(1, value[1]) == -1
    assert np.isnan(value[2]) and np.isnan(grad[2])
    np.testing.assert_allclose(grad[:2], math.sqrt(math.pi) / 2, rtol=1e-7)
    value, grad = value_and_grad(tfm.ndtri, tf.constant([0.5, np.nan]), mode)
    assert value[0] == 0 and math.copysign(1, value[0]) == 1
    assert np.isnan(value[1]) and np.isnan(grad[1])
    np.testing.assert_allclose(grad[0], math.sqrt(2 * math.pi), rtol=1e-7)


# ----------------------------------------------------------------------------
# The uses that reach the ends.


@pytest.mark.parametrize("mode", MODES)
def test_gaussian_copula_of_a_saturated_cdf_keeps_a_finite_gradient(mode):
    """``ndtri(Phi(x))`` is x; Phi rounds to 1 in float32 above 5.3, where TensorFlow's ndtri is inf."""
    x = tf.constant([-3.0, 0.5, 4.0, 6.0, 9.0])

    def copula(ndtri):
        return lambda x: ndtri(0.5 * tf.math.erfc(-x / math.sqrt(2.0)))

    theirs, their_grad = value_and_grad(copula(tf.math.ndtri), x, mode)
    assert np.isinf(theirs[-1]) and not np.all(np.isfinite(their_grad))
    value, grad = value_and_grad(copula(tfm.ndtri), x, mode)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value[:3], [-3.0, 0.5, 4.0], rtol=1e-4)   # Phi(4) rounded: 6e-8 / phi(4)
    np.testing.assert_allclose(grad[:3], 1.0, rtol=2e-3)   # Phi's own float32 rounding, amplified
    assert value[3] == value[4] == pytest.approx(5.294704, rel=1e-6)   # the clamp, b = 1 - 2**-24


@pytest.mark.parametrize("mode", MODES)
def test_gaussian_from_a_uniform_through_erfinv(mode):
    """``sqrt(2) erfinv(2u - 1)`` of a uniform ``u`` that reaches 1: TensorFlow's value and gradient inf."""
    u = tf.constant([0.25, 0.5, 0.999, 0.99999994, 1.0])

    def gaussian(erfinv):
        return lambda u: math.sqrt(2.0) * erfinv(2.0 * u - 1.0)

    value, grad = value_and_grad(gaussian(tfm.erfinv), u, mode)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)) and np.all(grad > 0)
    exact = [float(reference.CTX.sqrt(2) * reference.CTX.erfinv(2 * reference.CTX.mpf(float(v)) - 1))
             for v in u.numpy()[:4]]
    np.testing.assert_allclose(value[:4], exact, rtol=1e-6)
    theirs, their_grad = value_and_grad(gaussian(tf.math.erfinv), u, mode)
    assert np.isinf(theirs[-1]) and np.isinf(their_grad[-1])


# ----------------------------------------------------------------------------
# Errors, ragged rows, the debugging tools.


@pytest.mark.parametrize("name", ["erfinv", "ndtri"])
@pytest.mark.parametrize("bad", [[1, 2], ["a"], [1 + 2j]])
def test_non_float_input_raises_naming_x(name, bad):
    with pytest.raises(TypeError, match=rf"safeops.math.{name}: x must be"):
        getattr(tfm, name)(bad)


@pytest.mark.parametrize("name", ["erfinv", "ndtri"])
def test_ragged_rows_are_elementwise(name):
    x = tf.ragged.constant([[0.25, 0.5], [0.75]])
    out = getattr(tfm, name)(x)
    assert isinstance(out, tf.RaggedTensor)
    np.testing.assert_array_equal(out.flat_values.numpy(), getattr(tfm, name)(x.flat_values).numpy())


@pytest.mark.parametrize("name", ["erfinv", "ndtri"])
def test_locate_names_the_safeops_op_and_is_quiet_on_it(name):
    x = np.array([[1.0, 0.5, 0.0]], np.float32)
    report = debug.locate_nonfinite(lambda t: tf.reduce_sum(getattr(tf.math, name)(t)), x)
    assert report.found and report.fix.startswith(f"safeops.math.{name}(x)"), report
    assert not debug.locate_nonfinite(lambda t: tf.reduce_sum(getattr(tfm, name)(t)), x).found


# ----------------------------------------------------------------------------
# The first guess: its fitted polynomials and the seams between them.


def _fit_script():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "fit_quantiles.py"
    spec = importlib.util.spec_from_file_location("fit_quantiles", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_first_guess_coefficients_are_the_fit_scripts_and_within_1e_9():
    from safeops.math import _quantiles

    script = _fit_script()
    for name, variable, lower, upper, degree, divided in script.REGIONS:
        powers, error = script.fit(variable, lower, upper, degree, divided)
        stored = np.array(getattr(_quantiles, name))
        assert stored.shape == (degree + 1,), name
        # A least-squares solve: other BLAS builds may move the last digits.
        np.testing.assert_allclose(stored, powers, rtol=0, atol=1e-13, err_msg=name)
        assert error < 1e-9, (name, error)


def _seams(dtype):
    """``(name, inputs)`` on both sides of each seam between the fits: ``w = 6.25`` and ``s = 9.4``.

    ``w = 6.25`` as ``erfinv(1 - u)`` and ``ndtri(u / 2)``; the tails as
    ``ndtri(u / 2)`` where the dtype reaches it (float32's ``tiny`` stops
    at ``s = 9.27``; float64's at 26.6, inside the last fit).
    """
    step = 1e-4 if dtype == np.float32 else 1e-11   # relative, in u: above an input's rounding
    k = np.arange(-40, 41)
    out = []
    for w, names in ((6.25, ("erfinv", "ndtri")), (9.4 ** 2, ("ndtri",))):
        u = math.exp(-w) / (1 + math.sqrt(-math.expm1(-w)))   # 1 - a, for a = sqrt(1 - exp(-w))
        us = u * (1 + k * step)
        if us.min() / 2 < np.finfo(dtype).tiny:
            continue
        for name in names:
            inputs = (1 - us) if name == "erfinv" else us / 2
            out.append((name, np.sort(inputs.astype(dtype))))
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_seams_between_the_fits_are_exact_and_monotone(dtype, mode):
    """81 inputs around each seam: float32 within 1 ULP, float64 within 4, non-decreasing."""
    bound = 1 if dtype == np.float32 else 4
    seams = _seams(dtype)
    assert [name for name, _ in seams] == (
        ["erfinv", "ndtri"] + ([] if dtype == np.float32 else ["ndtri"]))
    for name, inputs in seams:
        value, _ = value_and_grad(getattr(tfm, name), inputs, mode)
        exact, _ = _reference(name, inputs, dtype)
        assert np.max(ulp_distance(value.astype(dtype), exact.astype(dtype), dtype)) <= bound, name
        assert np.all(np.diff(value) >= 0), name


def test_float64_erfinv_of_tiny_inputs_is_the_series():
    """Down to float64's tiny the step's correction would be subnormal; the series is used there."""
    a = np.logspace(-307, -4.5, 200)
    value, _ = value_and_grad(tfm.erfinv, np.concatenate([a, -a]))
    exact, _ = _reference("erfinv", np.concatenate([a, -a]), np.float64)
    assert np.max(ulp_distance(value, exact, np.float64)) <= 1


def test_the_float64_log_under_xla_is_within_1e_13_relative_and_keeps_nan():
    """``_quantiles._log``, which replaces XLA's slow float64 ``log``, over the first guess's range."""
    from safeops.math import _quantiles

    rng = np.random.default_rng(5)
    q = np.concatenate([np.logspace(-307.6, 0, 20000), rng.uniform(0.5, 2.0, 20000),
                        [np.finfo(np.float64).tiny, 1.0, np.sqrt(2.0), np.nextafter(np.sqrt(2.0), 0), 2.0]])
    got = tf.function(_quantiles._log, jit_compile=True, autograph=False)(tf.constant(q)).numpy()
    exact = np.log(q)     # numpy's log is correctly rounded or within 1 ULP
    assert np.max(np.abs(got - exact) / np.maximum(np.abs(exact), 1e-300)) < 1e-13
    assert got[q == 1.0][0] == 0.0
    log = tf.function(_quantiles._log, jit_compile=True, autograph=False)
    nan = log(tf.constant([np.nan, 0.5], tf.float64))
    assert np.isnan(nan[0].numpy()) and nan[1].numpy() == np.log(0.5)

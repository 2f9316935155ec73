"""Naive formulas against safeops on the inputs that turn training into NaN.

Each row evaluates a value and its gradient with ``tf.GradientTape`` in
eager mode, for the formula people write and for the safeops drop-in, and
prints what came back. Nothing here is hard-coded: run it and see.

    python -m examples.edge_table
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf
import keras

import safeops
import safeops.math as tfm
from safeops import nn


@dataclass
class Case:
    """One edge: a formula written two ways, evaluated at one input."""

    what: str
    at: str
    x: list
    naive: Callable[[tf.Tensor], tf.Tensor]
    safe: Callable[[tf.Tensor], tf.Tensor]


def _value_and_grad(fn, x):
    x = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(fn(x))
    g = tape.gradient(y, x)
    return float(y), (np.zeros(x.shape, np.float32) if g is None else g.numpy())


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


def _fmt_grad(g: np.ndarray) -> str:
    flat = g.ravel()
    if not np.all(np.isfinite(flat)):
        bad = "NaN" if np.isnan(flat).any() else "inf"
        return f"{bad} ✗"
    if np.all(flat == 0):
        return "0"
    return "[" + ", ".join(_fmt(float(v)) for v in flat[:3]) + (", …]" if flat.size > 3 else "]")


def _bce_on_probabilities(p):
    y = tf.zeros_like(p)
    return keras.losses.binary_crossentropy(y[:, None], p[:, None])


def _safe_bce_on_probabilities(p):
    y = tf.zeros_like(p)
    return safeops.losses.binary_crossentropy(y[:, None], p[:, None])


def _generalized_on_softmax(module):
    # A noisy label the model is sure is wrong: its probability underflows to 0.
    loss = module.categorical_generalized_cross_entropy
    return lambda x: loss(tf.constant([0]), tf.nn.softmax(x)[None], 0.7)


CASES = [
    Case("log(p)", "p = 0", [0.0],
         tf.math.log, tfm.log),
    Case("log(clip(p, 1e-8, 1)): gradient 0, p is stuck", "p = 0", [0.0],
         lambda p: tf.math.log(tf.clip_by_value(p, 1e-8, 1.0)), tfm.log),
    Case("log(softmax(x))[1]", "x = [0, -200]", [0.0, -200.0],
         lambda x: tf.math.log(tf.nn.softmax(x))[1], lambda x: tfm.log_softmax(x)[1]),
    Case("log(sigmoid(x))", "x = -200", [-200.0],
         lambda x: tf.math.log(tf.math.sigmoid(x)), tfm.log_sigmoid),
    Case("log(1 - sigmoid(x))", "x = 40", [40.0],
         lambda x: tf.math.log(1.0 - tf.math.sigmoid(x)), lambda x: tfm.log_sigmoid(-x)),
    Case("reduce_logsumexp", "all -inf row", [-math.inf, -math.inf],
         tf.math.reduce_logsumexp, tfm.reduce_logsumexp),
    Case("cumulative_logsumexp(x)[-1] (a padded list)", "x = [-inf, 0, 1]", [-math.inf, 0.0, 1.0],
         lambda x: tf.math.cumulative_logsumexp(x)[-1], lambda x: tfm.cumulative_logsumexp(x)[-1]),
    Case("cumprod(x): gradient 0 at the zero factor, x is stuck", "x = [0.5, 0, 3]", [0.5, 0.0, 3.0],
         tf.math.cumprod, tfm.cumprod),
    Case("softmax", "all -inf row", [-math.inf, -math.inf],
         lambda x: tf.nn.softmax(x)[0], lambda x: tfm.softmax(x)[0]),
    Case("softmax_cross_entropy", "masked logit -inf", [0.0, -math.inf],
         lambda x: tf.nn.softmax_cross_entropy_with_logits([1.0, 0.0], x),
         lambda x: nn.softmax_cross_entropy_with_logits([1.0, 0.0], x)),
    Case("sqrt(x)", "x = 0", [0.0],
         tf.math.sqrt, tfm.sqrt),
    Case("norm(x)", "x = [0, 0]", [0.0, 0.0],
         tf.norm, tfm.norm),
    Case("reduce_euclidean_norm(x)", "x = [0, 0]", [0.0, 0.0],
         tf.math.reduce_euclidean_norm, tfm.reduce_euclidean_norm),
    Case("reduce_std(x)", "x = [2, 2, 2]", [2.0, 2.0, 2.0],
         tf.math.reduce_std, tfm.reduce_std),
    Case("x / y", "x = 1, y = 0", [0.0],
         lambda y: 1.0 / y, lambda y: tfm.divide_no_nan(1.0, y)),
    Case("logit(p)", "p = 1", [1.0],
         lambda p: tf.math.log(p / (1.0 - p)), tfm.logit),
    Case("acos(cosine similarity)", "c = 1.0000001", [1.0000001],
         tf.math.acos, tfm.acos),
    Case("atanh(a), a = tanh(u) stored", "a = 1", [1.0],
         tf.math.atanh, tfm.atanh),
    Case("acosh(a) (a hyperbolic distance, u to itself)", "a = 1", [1.0],
         tf.math.acosh, tfm.acosh),
    Case("erfinv(x) (a uniform turned Gaussian)", "x = 0.99999994", [0.99999994],
         tf.math.erfinv, tfm.erfinv),
    Case("ndtri(Phi(x)) (a Gaussian copula)", "x = 6, Phi(x) = 1", [6.0],
         lambda x: tf.math.ndtri(0.5 * tf.math.erfc(-x / math.sqrt(2.0))),
         lambda x: tfm.ndtri(0.5 * tf.math.erfc(-x / math.sqrt(2.0)))),
    Case("atan2(y, x)", "y = x = 0", [0.0],
         lambda y: tf.math.atan2(y, y), lambda y: tfm.atan2(y, y)),
    Case("x ** 0.5 (a norm)", "x = 0", [0.0],
         lambda x: tf.pow(x, 0.5), lambda x: tfm.pow(x, 0.5)),
    Case("x ** 0 (an exponent scheduled to 0)", "x = 0", [0.0],
         lambda x: tf.pow(x, 0.0), lambda x: tfm.pow(x, 0.0)),
    Case("deg ** -0.5 (graph normalization)", "deg = 0", [0.0],
         lambda d: tf.pow(d, -0.5), lambda d: tfm.pow(d, -0.5)),
    Case("x * rsqrt(x**2) (an RMS norm, no epsilon)", "x = 0", [0.0],
         lambda x: x * tf.math.rsqrt(x * x), lambda x: x * tfm.rsqrt(x * x)),
    Case("keras binary_crossentropy", "p = 1, label 0", [1.0],
         _bce_on_probabilities, _safe_bce_on_probabilities),
    Case("keras categorical_generalized_cross_entropy (q = 0.7) of softmax(x)", "x = [0, 120], label 0",
         [0.0, 120.0], _generalized_on_softmax(keras.losses), _generalized_on_softmax(safeops.losses)),
]


def rows() -> list[tuple[str, str, str, str, str, str]]:
    """Evaluates every case: (formula, input, naive value, naive grad, safeops value, safeops grad)."""
    out = []
    for case in CASES:
        nv, ng = _value_and_grad(case.naive, case.x)
        sv, sg = _value_and_grad(case.safe, case.x)
        out.append((case.what, case.at, _fmt(nv), _fmt_grad(ng), _fmt(sv), _fmt_grad(sg)))
    return out


def table() -> str:
    """The rows as a Markdown table."""
    head = ("formula", "input", "naive value", "naive gradient", "safeops value", "safeops gradient")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows()]
    return "\n".join(lines)


def main() -> None:
    print("Naive TensorFlow against safeops on edge inputs (float32, eager):\n")
    print(table())


if __name__ == "__main__":
    main()

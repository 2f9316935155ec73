"""The benchmark registry: every public op, its naive composite and TF's built-in.

One :class:`Case` per public op of ``safeops.math``, ``safeops.nn`` (the
cross-entropies; ``nn.softmax`` and friends are the ``safeops.math`` functions
re-exported, measured once) and the cross-entropy losses of
``safeops.losses``. Each case has up to three variants, all with the same
inputs:

* ``safeops``: the public function (looked up when called, so a case of an op
  that has not landed fails loudly instead of disappearing);
* ``naive``: the composite people write (the textbook formula, or the usual
  ``clip_by_value``/``+ eps`` patch), with Keras' default epsilon ``1e-7``
  where the patch needs one;
* ``builtin``: TensorFlow's or Keras' own op, where one exists.

Inputs are specs (:mod:`benchmarks._inputs`) drawn inside each op's natural
domain (probabilities for ``log``, logits of scale 3 for the softmax family),
so that no variant spends its time on NaN or inf.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from typing import Callable, Sequence

import tensorflow as tf

from benchmarks import _inputs

# Keras' default epsilon: the constant the usual "+ eps" / clip patches use.
NAIVE_EPS = 1e-7

ELEMENTWISE_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7)
ROW_LENGTH = 1000
CROSS_ENTROPY_SHAPES = ((1024, 1000), (8192, 1000), (256, 32000))

VARIANTS = ("safeops", "naive", "builtin")


@dataclasses.dataclass(frozen=True)
class Case:
    """One op under test.

    Attributes:
      name: ``"math.log"``, ``"nn.softmax_cross_entropy_with_logits"``, ...
      group: ``"elementwise"`` (shape ``[n]``), ``"rowwise"`` (reductions and
        the softmax family over rows of 1000, shape ``[n/1000, 1000]``) or
        ``"crossentropy"`` (``[batch, classes]``).
      inputs: ``inputs(shape, dtype) -> list of specs``.
      variants: variant name -> ``fn(*tensors) -> tensor``.
      wrt: positions of the inputs the gradient is taken with respect to.
      second_order: whether the second-order pass is measured.
      unsupported: ``(variant, mode, pass)`` triples not measured, where
        TensorFlow's own op cannot run (the report shows them as n/a).
    """

    name: str
    group: str
    inputs: Callable[[Sequence[int], str], list]
    variants: dict
    wrt: tuple = (0,)
    second_order: bool = False
    unsupported: tuple = ()

    def shapes(self, quick: bool = False, smoke: bool = False) -> list:
        """(label, shape) of the sizes measured for this case."""
        if self.group == "crossentropy":
            if smoke:
                return [("8x10", (8, 10))]
            shapes = CROSS_ENTROPY_SHAPES[:1] if quick else CROSS_ENTROPY_SHAPES
            return [(f"{b}x{c}", (b, c)) for b, c in shapes]
        if smoke:
            sizes = (ROW_LENGTH,) if self.group == "rowwise" else (64,)
        else:
            sizes = ELEMENTWISE_SIZES
        out = []
        for n in sizes:
            shape = (n // ROW_LENGTH, ROW_LENGTH) if self.group == "rowwise" else (n,)
            out.append((size_label(n), shape))
        return out


    def shape_for(self, label: str):
        """The shape of a size label for this case (``1e8`` or ``100000`` for the
        element-wise and row-wise ops, ``BxC`` for the cross-entropies), None if
        the label does not apply to its group. Lets ``export --sizes`` ask for
        sizes beyond the default plan (a GPU wants data several times its L2).
        """
        if self.group == "crossentropy":
            match = re.fullmatch(r"(\d+)x(\d+)", label)
            return (int(match[1]), int(match[2])) if match else None
        match = re.fullmatch(r"1e(\d+)|(\d+)", label)
        if not match:
            return None
        n = 10 ** int(match[1]) if match[1] else int(match[2])
        if self.group == "rowwise":
            return (n // ROW_LENGTH, ROW_LENGTH) if n % ROW_LENGTH == 0 and n >= ROW_LENGTH else None
        return (n,)


def size_label(n: int) -> str:
    """``1e3`` ... ``1e7`` for powers of ten, else the number."""
    exponent = len(str(n)) - 1
    return f"1e{exponent}" if n == 10**exponent else str(n)


@tf.autograph.experimental.do_not_convert
def _lookup(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(f"safeops.{module}"), name)


def _safeops(module: str, name: str, **kwargs) -> Callable:
    """The public safeops function, looked up at call time."""

    def call(*args):
        return _lookup(module, name)(*args, **kwargs)

    call.__name__ = f"safeops.{module}.{name}"
    return call


# ---------------------------------------------------------------- input makers

def _unary(kind: str, **params):
    return lambda shape, dtype: [_inputs.spec(kind, shape, dtype, **params)]


def _binary(first: dict, second: dict):
    return lambda shape, dtype: [
        _inputs.spec(first["kind"], shape, dtype, **{k: v for k, v in first.items() if k != "kind"}),
        _inputs.spec(second["kind"], shape, dtype, **{k: v for k, v in second.items() if k != "kind"}),
    ]


_PROBABILITY = {"kind": "uniform", "low": 0.0, "high": 1.0}
_LOGIT = {"kind": "normal", "scale": 3.0}


def _soft_labels_and_logits(shape, dtype):
    return [_inputs.spec("one_hot", shape, dtype), _inputs.spec("normal", shape, dtype, scale=3.0)]


def _sparse_labels_and_logits(shape, dtype):
    return [_inputs.spec("classes", shape[:-1], "int32", classes=shape[-1]),
            _inputs.spec("normal", shape, dtype, scale=3.0)]


def _binary_labels_and_logits(shape, dtype):
    return [_inputs.spec("binary", shape, dtype), _inputs.spec("normal", shape, dtype, scale=3.0)]


# ------------------------------------------------------------ naive composites

def _naive_log_softmax(x, axis=-1):
    return tf.math.log(tf.exp(x) / tf.reduce_sum(tf.exp(x), axis=axis, keepdims=True))


def _naive_softmax_ce(labels, logits):
    return -tf.reduce_sum(labels * _naive_log_softmax(logits), axis=-1)


def _naive_sparse_ce(labels, logits):
    one_hot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=logits.dtype)
    return _naive_softmax_ce(one_hot, logits)


def _naive_sigmoid_ce(labels, logits):
    p = tf.sigmoid(logits)
    return -(labels * tf.math.log(p) + (1 - labels) * tf.math.log(1 - p))


def _naive_weighted_ce(labels, logits, pos_weight=2.0):
    p = tf.sigmoid(logits)
    return -(pos_weight * labels * tf.math.log(p) + (1 - labels) * tf.math.log(1 - p))


def _naive_binary_focal(labels, logits, gamma=2.0):
    p = tf.sigmoid(logits)
    p_t = labels * p + (1 - labels) * (1 - p)
    return tf.reduce_mean(-((1 - p_t) ** gamma) * tf.math.log(p_t), axis=-1)


def _naive_categorical_focal(labels, logits, alpha=0.25, gamma=2.0):
    p = tf.nn.softmax(logits)
    return tf.reduce_sum(-alpha * labels * (1 - p) ** gamma * tf.math.log(p), axis=-1)


def _naive_generalized_ce(labels, p, q=0.7):
    p_label = tf.gather(p, labels, batch_dims=1)
    return (1.0 - p_label ** q) / q


def _on_softmax(fn):
    return lambda labels, logits: fn(labels, tf.nn.softmax(logits))


def _two_distributions(shape, dtype):
    return [_inputs.spec("simplex", shape, dtype, scale=1.0), _inputs.spec("simplex", shape, dtype, scale=2.0)]


def _close_distributions(shape, dtype):
    # A prediction near its label (a distillation late in training): the terms cancel, and
    # kl_divergence must keep its digits there at no extra cost.
    return [_inputs.spec("simplex", shape, dtype, scale=1.0, base_seed=5),
            _inputs.spec("simplex", shape, dtype, scale=1.0, base_seed=5, jitter=0.01)]


def _naive_kl(y, p):
    return tf.reduce_sum(y * tf.math.log(y / p), axis=-1)


def _two_logits(shape, dtype):
    return [_inputs.spec("normal", shape, dtype, scale=3.0), _inputs.spec("normal", shape, dtype, scale=3.0)]


def _naive_kl_with_logits(t, s):
    return tf.reduce_sum(tf.nn.softmax(t) * (tf.nn.log_softmax(t) - tf.nn.log_softmax(s)), axis=-1)


def _naive_norm(x):
    return tf.sqrt(tf.reduce_sum(x * x, axis=-1))


def _naive_std(x):
    return tf.sqrt(tf.reduce_mean(tf.square(x - tf.reduce_mean(x, axis=-1, keepdims=True)), axis=-1))


def _naive_atan2(y, x):
    nonzero = x * x + y * y > 0
    return tf.where(nonzero, tf.math.atan2(y, tf.where(nonzero, x, tf.ones_like(x))), tf.zeros_like(x))


# --------------------------------------------------------------------- registry

def _math(name, group, inputs, naive, builtin=None, wrt=(0,), second_order=False, **kwargs):
    variants = {"safeops": _safeops("math", name, **kwargs), "naive": naive}
    if builtin is not None:
        variants["builtin"] = builtin
    return Case(f"math.{name}", group, inputs, variants, wrt, second_order)


def _numpy_logaddexp(a, b):
    """TensorFlow's own ``logaddexp`` (``tf.experimental.numpy``); for bfloat16, which it refuses
    (it calls ``astype`` on the tensors), on their float32 values, rounded back."""
    if a.dtype == tf.bfloat16:
        wide = tf.experimental.numpy.logaddexp(tf.cast(a, tf.float32), tf.cast(b, tf.float32))
        return tf.cast(wide, a.dtype)
    return tf.experimental.numpy.logaddexp(a, b)


def _build_registry() -> list:
    log = tf.math.log
    cases = [
        _math("log", "elementwise", _unary(**_PROBABILITY),
              lambda x: log(tf.clip_by_value(x, NAIVE_EPS, 1.0)), tf.math.log, second_order=True),
        _math("log1p", "elementwise", _unary("uniform", low=-0.5, high=2.0),
              lambda x: log(1 + x), tf.math.log1p),
        _math("logit", "elementwise", _unary(**_PROBABILITY),
              lambda x: log(x / (1 - x))),
        _math("xlogy", "elementwise", _binary(_PROBABILITY, _PROBABILITY),
              lambda x, y: x * log(y), tf.math.xlogy, wrt=(0, 1)),
        _math("xlog1py", "elementwise", _binary(_PROBABILITY, _PROBABILITY),
              lambda x, y: x * tf.math.log1p(y), tf.math.xlog1py, wrt=(0, 1)),
        _math("log1mexp", "elementwise", _unary("uniform", low=0.01, high=10.0),
              lambda x: log(1 - tf.exp(-tf.abs(x)))),
        _math("logaddexp", "elementwise", _binary(_LOGIT, _LOGIT),
              lambda a, b: log(tf.exp(a) + tf.exp(b)), _numpy_logaddexp, wrt=(0, 1)),
        _math("sigmoid", "elementwise", _unary(**_LOGIT),
              lambda x: 1 / (1 + tf.exp(-x)), tf.math.sigmoid),
        _math("log_sigmoid", "elementwise", _unary(**_LOGIT),
              lambda x: log(1 / (1 + tf.exp(-x))), tf.math.log_sigmoid, second_order=True),
        _math("softplus", "elementwise", _unary(**_LOGIT),
              lambda x: log(1 + tf.exp(x)), tf.math.softplus),
        _math("softplus_inverse", "elementwise", _unary("uniform", low=0.01, high=10.0),
              lambda x: log(tf.exp(x) - 1)),
        _math("sqrt", "elementwise", _unary("uniform", low=0.0, high=4.0),
              lambda x: tf.sqrt(x + NAIVE_EPS), tf.math.sqrt),
        _math("rsqrt", "elementwise", _unary("uniform", low=0.0, high=4.0),
              lambda x: tf.math.rsqrt(x + NAIVE_EPS), tf.math.rsqrt),
        _math("divide_no_nan", "elementwise", _binary(_LOGIT, _LOGIT),
              lambda x, y: tf.where(tf.equal(y, 0), tf.zeros_like(x), x / y), tf.math.divide_no_nan,
              wrt=(0, 1)),
        _math("reduce_logsumexp", "rowwise", _unary(**_LOGIT),
              lambda x: log(tf.reduce_sum(tf.exp(x), axis=-1)),
              lambda x: tf.math.reduce_logsumexp(x, axis=-1), second_order=True, axis=-1),
        _math("cumulative_logsumexp", "rowwise", _unary(**_LOGIT),
              lambda x: log(tf.math.cumsum(tf.exp(x), axis=-1)),
              lambda x: tf.math.cumulative_logsumexp(x, axis=-1), axis=-1),
        # Transmittance-like factors (1 - alpha of volume rendering); the naive form is its usual guard.
        _math("cumprod", "rowwise", _unary("uniform", low=0.99, high=1.0),
              lambda x: tf.math.cumprod(x + 1e-10, axis=-1), lambda x: tf.math.cumprod(x, axis=-1), axis=-1),
        _math("softmax", "rowwise", _unary(**_LOGIT),
              lambda x: tf.exp(x) / tf.reduce_sum(tf.exp(x), axis=-1, keepdims=True), tf.nn.softmax),
        _math("log_softmax", "rowwise", _unary(**_LOGIT), _naive_log_softmax, tf.nn.log_softmax),
        _math("norm", "rowwise", _unary(**_LOGIT), _naive_norm,
              lambda x: tf.norm(x, axis=-1), axis=-1),
        # p-norms: p >= 2 in the input's dtype, p < 2 in float64 (see safeops.math.norm);
        # p = 1/2 takes square roots, p = 1.5 stands for the other p < 2 (float64 pow).
        Case("math.norm_ord3", "rowwise", _unary(**_LOGIT),
             {"safeops": _safeops("math", "norm", ord=3, axis=-1),
              "naive": lambda x: tf.reduce_sum(tf.abs(x) ** 3, axis=-1) ** (1 / 3),
              "builtin": lambda x: tf.norm(x, ord=3, axis=-1)}),
        Case("math.norm_ord0.5", "rowwise", _unary(**_LOGIT),
             {"safeops": _safeops("math", "norm", ord=0.5, axis=-1),
              "naive": lambda x: tf.reduce_sum(tf.sqrt(tf.abs(x)), axis=-1) ** 2,
              "builtin": lambda x: tf.norm(x, ord=0.5, axis=-1)}),
        Case("math.norm_ord1.5", "rowwise", _unary(**_LOGIT),
             {"safeops": _safeops("math", "norm", ord=1.5, axis=-1),
              "naive": lambda x: tf.reduce_sum(tf.abs(x) ** 1.5, axis=-1) ** (1 / 1.5),
              "builtin": lambda x: tf.norm(x, ord=1.5, axis=-1)}),
        _math("l2_normalize", "rowwise", _unary(**_LOGIT),
              lambda x: x / _naive_norm(x)[..., None], lambda x: tf.math.l2_normalize(x, axis=-1), axis=-1),
        # TensorFlow's EuclideanNorm has no XLA kernel (TF 2.21): its builtin is not measured there.
        dataclasses.replace(_math("reduce_euclidean_norm", "rowwise", _unary(**_LOGIT), _naive_norm,
                                  lambda x: tf.math.reduce_euclidean_norm(x, axis=-1), axis=-1),
                            unsupported=tuple(("builtin", "xla", p) for p in ("fwd", "fwdbwd", "2nd"))),
        _math("reduce_std", "rowwise", _unary(**_LOGIT), _naive_std,
              lambda x: tf.math.reduce_std(x, axis=-1), axis=-1),
        # The naive forms are the usual guards: a clip into the open interval, a double where.
        _math("acos", "elementwise", _unary("uniform", low=-1.0, high=1.0),
              lambda x: tf.math.acos(tf.clip_by_value(x, -1.0 + NAIVE_EPS, 1.0 - NAIVE_EPS)), tf.math.acos),
        _math("asin", "elementwise", _unary("uniform", low=-1.0, high=1.0),
              lambda x: tf.math.asin(tf.clip_by_value(x, -1.0 + NAIVE_EPS, 1.0 - NAIVE_EPS)), tf.math.asin),
        _math("atanh", "elementwise", _unary("uniform", low=-1.0, high=1.0),
              lambda x: tf.math.atanh(tf.clip_by_value(x, -1.0 + NAIVE_EPS, 1.0 - NAIVE_EPS)), tf.math.atanh),
        # Hyperbolic distances' arguments: 1 and above.
        _math("acosh", "elementwise", _unary("uniform", low=1.0, high=4.0),
              lambda x: tf.math.acosh(tf.maximum(x, 1.0 + NAIVE_EPS)), tf.math.acosh),
        # Uniforms and probabilities; the naive forms clip into the open interval.
        _math("erfinv", "elementwise", _unary("uniform", low=-1.0, high=1.0),
              lambda x: tf.math.erfinv(tf.clip_by_value(x, -1.0 + NAIVE_EPS, 1.0 - NAIVE_EPS)),
              tf.math.erfinv),
        _math("ndtri", "elementwise", _unary("uniform", low=0.0, high=1.0),
              lambda x: tf.math.ndtri(tf.clip_by_value(x, NAIVE_EPS, 1.0 - NAIVE_EPS)), tf.math.ndtri),
        _math("atan2", "elementwise", _binary(_LOGIT, _LOGIT), _naive_atan2, tf.math.atan2, wrt=(0, 1)),
        # A tensor exponent, and the usual constant one (x ** 0.5, a focal gamma); the naive
        # guard keeps the base off 0.
        _math("pow", "elementwise", _binary({"kind": "uniform", "low": 0.0, "high": 4.0},
                                            {"kind": "uniform", "low": -2.0, "high": 2.0}),
              lambda x, y: tf.pow(tf.maximum(x, NAIVE_EPS), y), tf.math.pow, wrt=(0, 1)),
        Case("math.pow_0.5", "elementwise", _unary("uniform", low=0.0, high=4.0),
             {"safeops": _safeops("math", "pow", y=0.5),
              "naive": lambda x: tf.pow(tf.maximum(x, NAIVE_EPS), 0.5),
              "builtin": lambda x: tf.pow(x, 0.5)}),
        Case("math.pow_2.5", "elementwise", _unary("uniform", low=0.0, high=4.0),
             {"safeops": _safeops("math", "pow", y=2.5),
              "naive": lambda x: tf.pow(tf.maximum(x, NAIVE_EPS), 2.5),
              "builtin": lambda x: tf.pow(x, 2.5)}),
    ]

    def nn(name, inputs, naive, builtin, second_order=False, **kwargs):
        return Case(f"nn.{name}", "crossentropy", inputs,
                    {"safeops": _safeops("nn", name, **kwargs), "naive": naive, "builtin": builtin},
                    (1,), second_order)

    cases += [
        nn("softmax_cross_entropy_with_logits", _soft_labels_and_logits, _naive_softmax_ce,
           tf.nn.softmax_cross_entropy_with_logits, second_order=True),
        nn("sparse_softmax_cross_entropy_with_logits", _sparse_labels_and_logits, _naive_sparse_ce,
           tf.nn.sparse_softmax_cross_entropy_with_logits),
        nn("sigmoid_cross_entropy_with_logits", _binary_labels_and_logits, _naive_sigmoid_ce,
           tf.nn.sigmoid_cross_entropy_with_logits),
        Case("nn.weighted_cross_entropy_with_logits", "crossentropy", _binary_labels_and_logits,
             {"safeops": _weighted(_safeops("nn", "weighted_cross_entropy_with_logits")),
              "naive": _naive_weighted_ce,
              "builtin": _weighted(tf.nn.weighted_cross_entropy_with_logits)}, (1,)),
    ]

    import keras

    def loss(name, inputs, naive, **kwargs):
        builtin = getattr(keras.losses, name)
        return Case(f"losses.{name}", "crossentropy", inputs,
                    {"safeops": _safeops("losses", name, from_logits=True, **kwargs),
                     "naive": naive,
                     "builtin": lambda y, x: builtin(y, x, from_logits=True, **kwargs)}, (1,))

    cases += [
        loss("categorical_crossentropy", _soft_labels_and_logits, _naive_softmax_ce),
        loss("sparse_categorical_crossentropy", _sparse_labels_and_logits, _naive_sparse_ce),
        loss("binary_crossentropy", _binary_labels_and_logits,
             lambda y, x: tf.reduce_mean(_naive_sigmoid_ce(y, x), axis=-1)),
        loss("binary_focal_crossentropy", _binary_labels_and_logits, _naive_binary_focal),
        loss("categorical_focal_crossentropy", _soft_labels_and_logits, _naive_categorical_focal),
        # On probabilities (there is no from_logits): the builtin is Keras' clipped formula.
        Case("losses.kl_divergence", "crossentropy", _two_distributions,
             {"safeops": _safeops("losses", "kl_divergence"), "naive": _naive_kl,
              "builtin": keras.losses.kl_divergence}, (1,)),
        Case("losses.kl_divergence_close", "crossentropy", _close_distributions,
             {"safeops": _safeops("losses", "kl_divergence"), "naive": _naive_kl,
              "builtin": keras.losses.kl_divergence}, (1,)),
        # A softmax head and class indices, as compile(loss=CategoricalGeneralizedCrossEntropy(q)) runs it:
        # safeops recovers the logits from the Softmax op; Keras (and the naive formula) use p ** q.
        Case("losses.categorical_generalized_cross_entropy", "crossentropy", _sparse_labels_and_logits,
             {"safeops": _on_softmax(_safeops("losses", "categorical_generalized_cross_entropy", q=0.7)),
              "naive": _on_softmax(_naive_generalized_ce),
              "builtin": _on_softmax(functools.partial(keras.losses.categorical_generalized_cross_entropy,
                                                       q=0.7))},
             (1,)),
        # Keras has none: teacher and student logits, unrelated (no row cancels, the float64 pass is skipped).
        Case("losses.kl_divergence_with_logits", "crossentropy", _two_logits,
             {"safeops": _safeops("losses", "kl_divergence_with_logits"),
              "naive": _naive_kl_with_logits}, (1,)),
    ]
    return cases


def _weighted(fn, pos_weight=2.0):
    return lambda labels, logits: fn(labels, logits, pos_weight)


_REGISTRY: list | None = None


def registry() -> list:
    """Every case, in a fixed order."""
    global _REGISTRY
    if _REGISTRY is None:
        # The naive composites and built-in calls are straight-line TF code: keep
        # AutoGraph away from them (it cannot read the source of some lambdas).
        # safeops variants are converted as a user's code would be.
        _REGISTRY = [
            dataclasses.replace(case, variants={
                name: fn if name == "safeops" else tf.autograph.experimental.do_not_convert(fn)
                for name, fn in case.variants.items()})
            for case in _build_registry()
        ]
    return list(_REGISTRY)


def select(pattern: str | None = None) -> list:
    """The cases whose name matches ``pattern`` (``re.search``), all if None."""
    cases = registry()
    if pattern:
        regex = re.compile(pattern)
        cases = [case for case in cases if regex.search(case.name)]
    return cases


def make_tensors(case: Case, size_label_: str, shape, dtype: str) -> tuple:
    """The TF tensors of a case at one size (the same for every variant and mode)."""
    specs = case.inputs(shape, dtype)
    return tuple(
        tf.constant(_inputs.make_array(s, _inputs.seed_for(case.name, size_label_, i)))
        for i, s in enumerate(specs)
    ), specs

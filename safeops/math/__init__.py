"""Drop-in replacements for ``tf.math``: ``import safeops.math as tfm``.

Same names, argument names, order and defaults as ``tf.math``; results equal
wherever TensorFlow's are finite, finite results and live gradients where
they are not. Ops that TensorFlow lacks (``logit``, ``log1mexp``,
``logaddexp``, ``softplus_inverse``) follow NumPy/SciPy/TFP naming.

The ops live in topic modules: logarithms with clamped domains
(``_logarithms``), the sigmoid family (``_sigmoid``), log-sum-exp and the
softmax family (``_logsumexp``), square roots and safe division
(``_roots``), norms (``_norms``), the standard deviation (``_moments``),
the inverse trigonometric functions (``_inverse_trig``), powers
(``_powers``), running products (``_products``) and the inverse error
function and normal quantile (``_quantiles``).

Every other ``tf.math`` name (``reduce_sum``, ``exp``, ``abs``, ...) is
TensorFlow's own, looked up on first use (:mod:`safeops._dropin`), so that
switching the import does not break the lines safeops has nothing to add to.
"""

import tensorflow as _tf

from safeops import _dropin

from safeops.math._inverse_trig import acos, acosh, asin, atan2, atanh
from safeops.math._logarithms import log, log1mexp, log1p, logaddexp, logit, xlog1py, xlogy
from safeops.math._logsumexp import cumulative_logsumexp, log_softmax, reduce_logsumexp, softmax
from safeops.math._moments import reduce_std
from safeops.math._norms import l2_normalize, norm, reduce_euclidean_norm
from safeops.math._powers import pow
from safeops.math._products import cumprod
from safeops.math._quantiles import erfinv, ndtri
from safeops.math._roots import divide_no_nan, rsqrt, sqrt
from safeops.math._sigmoid import log_sigmoid, sigmoid, softplus, softplus_inverse

__all__ = [
    "log", "log1p", "logit", "xlogy", "xlog1py", "log1mexp", "logaddexp",
    "sigmoid", "log_sigmoid", "softplus", "softplus_inverse",
    "reduce_logsumexp", "cumulative_logsumexp", "softmax", "log_softmax", "cumprod",
    "sqrt", "rsqrt", "norm", "reduce_euclidean_norm", "l2_normalize", "divide_no_nan", "reduce_std",
    "acos", "asin", "atanh", "acosh", "atan2", "pow", "erfinv", "ndtri",
]

# Registered with Keras as "safeops>name", as the losses are: a Keras layer
# that holds one (``keras.layers.Lambda(tfm.softplus)``) saves it by that
# name and loads it back as safeops' op, where the bare name came back as
# Keras' own function of that name, or not at all.
_dropin.register_with_keras(globals(), __all__)

__getattr__, __dir__ = _dropin.forward_rest(__name__, globals(), lambda: _tf.math, "tf.math")

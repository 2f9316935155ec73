"""Drop-in replacements for ``tf.nn`` cross-entropies: ``from safeops import nn``.

Same names, argument names, order and defaults as TensorFlow 2.21's
``tf.nn``; the same values and gradients wherever TensorFlow's are finite,
and finite ones where they are not (``-inf`` logits used as masks). The
cross-entropies live in two topic modules: the softmax family
(:mod:`safeops.nn._softmax_xent`) and the sigmoid family
(:mod:`safeops.nn._sigmoid_xent`). The activations are the ones of
:mod:`safeops.math`, re-exported so that ``nn.softmax`` works as
``tf.nn.softmax`` does. Every other ``tf.nn`` name (``relu``, ``dropout``,
``moments``, ...) is TensorFlow's own (:mod:`safeops._dropin`).
"""

import tensorflow as _tf

from safeops import _dropin

from safeops.math import l2_normalize, log_sigmoid, log_softmax, sigmoid, softmax, softplus
from safeops.nn._sigmoid_xent import sigmoid_cross_entropy_with_logits, weighted_cross_entropy_with_logits
from safeops.nn._softmax_xent import (
    softmax_cross_entropy_with_logits,
    sparse_softmax_cross_entropy_with_logits,
)

__all__ = [
    "softmax_cross_entropy_with_logits",
    "sparse_softmax_cross_entropy_with_logits",
    "sigmoid_cross_entropy_with_logits",
    "weighted_cross_entropy_with_logits",
    "softmax", "log_softmax", "sigmoid", "log_sigmoid", "softplus", "l2_normalize",
]

# Registered with Keras as "safeops>name", as the losses are: a Keras layer
# that holds one (``keras.layers.Lambda(tfm.softplus)``) saves it by that
# name and loads it back as safeops' op, where the bare name came back as
# Keras' own function of that name, or not at all.
_dropin.register_with_keras(globals(), __all__)

__getattr__, __dir__ = _dropin.forward_rest(__name__, globals(), lambda: _tf.nn, "tf.nn")

"""Drop-in replacements for ``tf.math``: ``import safeops.math as tfm``.

Same names, argument names, order and defaults as ``tf.math``; results equal
wherever TensorFlow's are finite, finite results and live gradients where
they are not. Ops that TensorFlow lacks (``logit``, ``log1mexp``,
``logaddexp``, ``softplus_inverse``) follow NumPy/SciPy/TFP naming.
"""

from safeops.math._logarithms import log

__all__ = ["log"]

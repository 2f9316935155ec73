"""safeops: numerically stable TensorFlow ops that keep training out of NaN."""

from safeops import losses, math, nn
from safeops._validate import set_validation
from safeops._xla import set_inner_xla
from safeops import debug

__version__ = "0.1.0"

__all__ = ["debug", "math", "nn", "losses", "set_inner_xla", "set_validation", "__version__"]

"""Fit the first guesses of ``safeops.math.erfinv`` and ``ndtri`` (``safeops/math/_quantiles.py``).

Usage: ``python tools/fit_quantiles.py`` (numpy and mpmath; a few seconds).
It prints the three coefficient tuples the module holds and each fit's
largest relative error against mpmath on a grid five times denser than the
fit's nodes.

The unknown is ``y = erfinv(a)``, ``a`` in ``[0, 1)``, written through
``w = -log(1 - a**2)`` (``a = sqrt(1 - exp(-w))``), the variable of
Giles' approximations (M. Giles, "Approximating the erfinv function", GPU
Computing Gems Jade Edition, 2011): ``erfinv(a) / a`` is analytic in ``w``
near 0, ``erfinv(a)`` smooth in ``s = sqrt(w)`` away from it. Three
regions, each a Chebyshev least-squares fit on its Chebyshev points,
converted to powers of the region's variable mapped onto ``[-1, 1]``:

* ``w`` in ``[0, 6.25]`` (``a`` up to 0.9981): ``erfinv(a) / a``, degree 13;
* ``s`` in ``[2.5, 9.4]`` (``1 - a`` down to 1.6e-39, below twice float32's
  ``tiny``, where ``ndtri``'s float32 tail ends): ``erfinv(a)``, degree 17;
* ``s`` in ``[9.4, 26.7]`` (down to twice float64's ``tiny``, ``ndtri``'s
  float64 tail): ``erfinv(a)``, degree 12.

The degrees are the smallest that put each region's relative error near or
below 1e-9, a sixtieth of a float32 ULP.
"""

from __future__ import annotations

import mpmath
import numpy as np

CTX = mpmath.MPContext()
CTX.dps = 40

# (name, variable, lower, upper, degree, divided by a)
REGIONS = (
    ("_CENTRAL", "w", 0.0, 6.25, 13, True),
    ("_TAIL", "s", 2.5, 9.4, 17, False),
    ("_FAR_TAIL", "s", 9.4, 26.7, 12, False),
)


def erfinv_of_w(w: float) -> tuple[float, float]:
    """``(erfinv(a), a)`` for ``a = sqrt(1 - exp(-w))``; tails: the root of ``log erfc(y) = log(1 - a)``."""
    w = CTX.mpf(w)
    a = CTX.sqrt(-CTX.expm1(-w))
    if a < 0.5:
        return float(CTX.erfinv(a)), float(a)
    log_u = -w - CTX.log1p(a)          # 1 - a = exp(-w) / (1 + a)
    y = CTX.findroot(lambda t: CTX.log(CTX.erfc(t)) - log_u, CTX.sqrt(-log_u))
    return float(y), float(a)


def target(variable: str, divided: bool, v: float) -> float:
    """The fitted function at ``v`` (``w``, or ``s`` with ``w = s**2``): ``erfinv(a)``, or over ``a``."""
    w = v if variable == "w" else v * v
    if divided and w == 0.0:
        return float(CTX.sqrt(CTX.pi) / 2)
    y, a = erfinv_of_w(w)
    return y / a if divided else y


def fit(variable, lower, upper, degree, divided, nodes=300):
    """``(coefficients, largest relative error)`` of one region, in powers of its variable on [-1, 1]."""
    k = np.arange(nodes)
    v = lower + (np.cos(np.pi * (k + 0.5) / nodes) + 1.0) / 2.0 * (upper - lower)
    f = np.array([target(variable, divided, x) for x in v])
    series = np.polynomial.chebyshev.Chebyshev.fit(v, f, degree, domain=[lower, upper])
    powers = np.polynomial.chebyshev.cheb2poly(series.coef)
    dense = np.linspace(lower, upper, 5 * nodes)
    t = (dense - (upper + lower) / 2.0) / ((upper - lower) / 2.0)
    value = np.zeros_like(t)
    for c in powers[::-1]:       # Horner, as the module evaluates it
        value = value * t + c
    reference = np.array([target(variable, divided, x) for x in dense])
    return powers, float(np.max(np.abs(value / reference - 1.0)))


def main() -> None:
    for name, variable, lower, upper, degree, divided in REGIONS:
        powers, error = fit(variable, lower, upper, degree, divided)
        print(f"# {variable} in [{lower}, {upper}], degree {degree}: relative error {error:.2g}")
        print(f"{name} = (" + ", ".join(repr(float(c)) for c in powers) + ")")


if __name__ == "__main__":
    main()

"""Hypothesis strategies per dtype: the whole float range, with weight on the edges.

Every strategy yields NumPy arrays of the requested dtype (``bfloat16`` from
ml_dtypes), so a drawn value is exactly what the op receives. Elements come
from four sources, mixed by :func:`elements`:

* the **specials** of the dtype: ``±0``, the smallest and largest
  subnormals, the smallest normal number (``tiny``) and its neighbours,
  ``±1``, the numbers next to 1, ``±max``;
* values **near an op's edges** (:data:`EDGES`): the edge itself and up to
  three representable steps either side, e.g. ``log 2`` for ``log1mexp``,
  1/2 and 1 for ``logit``, the switch points of the sigmoid family, the
  points where ``exp`` overflows or underflows;
* the **whole finite range** (``st.floats`` of the dtype's width,
  subnormals included; bfloat16 by rounding float32 draws);
* **moderate values** in ``[-30, 30]``, where most arithmetic happens.

Matrices for the row ops add ``-inf`` entries (masks) and rows that are
entirely ``-inf`` where the op accepts masks.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from tests.ulp import finfo, numpy_dtype, ordered

DTYPES = ("float16", "bfloat16", "float32", "float64")

_LOG2 = math.log(2.0)

#: Edges shared by every op: where exponentials and logarithms change regime.
COMMON_EDGES = (0.0, 1.0, -1.0, _LOG2, -_LOG2, 20.0, -20.0, 50.0, -50.0, 100.0, -100.0, 1e4, -1e4)

#: Op-specific edges (added to :data:`COMMON_EDGES`); dtype-dependent ones
#: (``tiny``, ``1 - eps/2``, ``log(max)``) come from :func:`dtype_edges`.
EDGES = {
    "log": (0.5, 2.0),
    "log1p": (-0.25, -0.4, -0.5, -0.999, 1e-8, -1e-8),
    "logit": (0.5, 0.25, 0.75, 1e-8, 0.999),
    "log1mexp": (math.log(4 / 3), 1e-8, -1e-8, 36.0, 745.0),
    "sigmoid": (15.9, -15.9, 17.0, -17.0, 36.0, -36.0, 87.3, -87.3, 88.8, -103.9, 708.4, -745.2),
    "log_sigmoid": (15.9, -15.9, 13.9, -13.9, 36.0, -36.0, 88.8, -103.9, 709.8, -745.2),
    "softplus": (15.9, -15.9, 13.9, -13.9, 36.0, -36.0, 88.8, -103.9, 709.8, -745.2),
    "softplus_inverse": (math.log(4 / 3), 15.9, 36.0, 1e-8, 88.8, 709.8),
    "sqrt": (4.0, 1e-30, 1e-300),
    "rsqrt": (4.0, 1e-30, 1e-300, 2.0 ** -86, 2.0 ** -683),
    "xlogy": (0.5, 2.0),
    "xlog1py": (-0.25, -0.4, -0.999, 1e-8),
    "logaddexp": (15.9, -15.9, 36.0, 88.8, -103.9, 709.8, -745.2),
    "divide_no_nan": (0.5, 2.0, 1e-20, 1e20),
    "reduce_logsumexp": (-15.9, -36.0, 88.8, -103.9),
    "cumulative_logsumexp": (-15.9, -36.0, 88.8, -103.9),
    "cumprod": (0.5, -0.5, 2.0, 1e-20, 1e20, 1e-30, 1e30, 1e-160, 1e160),
    "softmax": (-15.9, -36.0, 88.8, -103.9),
    "log_softmax": (-15.9, -36.0, 88.8, -103.9),
    "norm": (1e-20, 1e20, 1e-160, 1e160),
    "reduce_euclidean_norm": (1e-20, 1e20, 1e-160, 1e160),
    "l2_normalize": (1e-6, 1e-7, 1e-20, 1e20, 1e-160, 1e160),
    "reduce_std": (1e4, 0.1, 1e-20, 1e20, 1e-160, 1e160),
    "acos": (0.5, -0.5, 0.999, -0.999, 1e-8, 2.0, -2.0),
    "asin": (0.5, -0.5, 0.999, -0.999, 1e-8, 2.0, -2.0),
    "atanh": (0.5, -0.5, 0.999, -0.999, 1e-8, 2.0, -2.0),
    "acosh": (0.999, 1.0000001, 1.001, 2.0, 1e-8, 1e19, 1e20, 1e154, 1e160),
    "atan2": (0.5, 2.0, 1e-20, 1e20, 1e-30, 1e30, 1e-160, 1e160),
    "pow": (0.5, 2.0, 1e-20, 1e20, 1e-30, 1e-160),
    # TensorFlow's float32 erfinv is inf at 0.99999994 and 6 ULP off at -0.72; XLA's ndtri -inf at 1.43e-8.
    "erfinv": (0.5, -0.5, 0.99999994, -0.7221366, 0.9999, 1e-8, 1e-30, 2.0, -2.0),
    "ndtri": (0.5, 0.25, 0.75, 1.43e-8, 0.975, 0.025, 1e-30, 1e-300, 0.99999994, 2.0, -1.0),
}

#: Exponents people write (``x ** 0.5``, focal ``gamma``, ``deg ** -0.5``), drawn often for ``pow``'s ``y``.
POW_EXPONENTS = (0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 1.5, 0.25, 2.5, -1.5, 4.0, 1.0 / 3.0)


def cast(values, dtype) -> np.ndarray:
    """``values`` rounded to ``dtype`` (overflow to ``inf`` allowed)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(numpy_dtype(dtype))


def step(value: float, k: int, dtype) -> float:
    """The number ``k`` representable steps from ``value`` in ``dtype`` (``value`` itself at ``±inf``)."""
    dt = numpy_dtype(dtype)
    width = dt.itemsize * 8
    o = int(ordered(cast([value], dt), dt)[0]) + k
    bits = o if o >= 0 else (1 << (width - 1)) | (-o)
    uint = {16: np.uint16, 32: np.uint32, 64: np.uint64}[width]
    out = float(np.array([bits], dtype=uint).view(dt)[0])
    return out if math.isfinite(out) else float(cast([value], dt)[0])


def specials(dtype) -> list[float]:
    """The structurally special numbers of ``dtype``, both signs."""
    info = finfo(dtype)
    tiny, big, eps = float(info.tiny), float(info.max), float(info.eps)
    smallest_sub = float(info.smallest_subnormal)
    largest_sub = step(tiny, -1, dtype)
    base = [0.0, smallest_sub, largest_sub, tiny, step(tiny, 1, dtype), 1.0, step(1.0, -1, dtype),
            step(1.0, 1, dtype), eps, 1.0 - eps / 2, big, step(big, -1, dtype), math.sqrt(big),
            math.sqrt(tiny), math.log(big), math.log(tiny)]
    out = sorted({float(v) for b in base for v in cast([b, -b], dtype)} | {-0.0})
    return [v for v in out if math.isfinite(v)]


def dtype_edges(dtype) -> list[float]:
    """Edges that depend on the dtype: ``log(max)``, ``log(tiny)``, ``-log(eps)``, ``1 - eps/2``."""
    info = finfo(dtype)
    eps = float(info.eps)
    return [math.log(float(info.max)), math.log(float(info.tiny)), -math.log(eps), math.log(eps),
            1.0 - eps / 2, -(1.0 - eps / 2), float(info.tiny)]


def edge_points(op: str, dtype) -> list[float]:
    """Every edge of ``op`` in ``dtype``, rounded to the dtype, finite ones only."""
    points = list(COMMON_EDGES) + list(EDGES.get(op, ())) + dtype_edges(dtype)
    return sorted({float(v) for v in cast(points, dtype) if math.isfinite(float(v))})


def full_range(dtype) -> st.SearchStrategy[float]:
    """Any finite number of ``dtype``, subnormals included."""
    name = numpy_dtype(dtype).name
    if name == "bfloat16":
        return (st.floats(width=32, allow_nan=False, allow_infinity=False)
                .map(lambda v: float(cast([v], name)[0]))
                .filter(math.isfinite))
    width = {"float16": 16, "float32": 32, "float64": 64}[name]
    return st.floats(width=width, allow_nan=False, allow_infinity=False, allow_subnormal=True)


def near(points, dtype, steps: int = 3) -> st.SearchStrategy[float]:
    """A point of ``points`` moved by up to ``steps`` representable numbers either way."""
    return st.builds(lambda p, k: step(p, k, dtype), st.sampled_from(points), st.integers(-steps, steps))


def elements(op: str, dtype) -> st.SearchStrategy[float]:
    """Finite inputs of ``op`` in ``dtype``: specials, edges, the whole range, moderate values."""
    moderate = st.floats(-30.0, 30.0).map(lambda v: float(cast([v], dtype)[0]))
    return st.one_of(
        st.sampled_from(specials(dtype)),
        near(edge_points(op, dtype), dtype),
        full_range(dtype),
        moderate,
    )


def vectors(op: str, dtype, min_size: int = 1, max_size: int = 12) -> st.SearchStrategy[np.ndarray]:
    """1-D arrays of finite inputs of ``op``."""
    return st.lists(elements(op, dtype), min_size=min_size, max_size=max_size).map(
        lambda xs: cast(xs, dtype))


@st.composite
def pairs(draw, op: str, dtype, max_size: int = 12):
    """Two equally long 1-D arrays for a binary op; ``x`` often 0 for ``xlogy``/``xlog1py``, ``y`` often a
    common exponent for ``pow``."""
    n = draw(st.integers(1, max_size))
    first = elements(op, dtype)
    if op in ("xlogy", "xlog1py"):
        first = st.one_of(st.just(0.0), st.just(-0.0), first)
    x = draw(st.lists(first, min_size=n, max_size=n))
    second = elements(op, dtype)
    if op == "pow":
        second = st.one_of(st.sampled_from(POW_EXPONENTS), st.sampled_from(POW_EXPONENTS), second)
    y = draw(st.lists(second, min_size=n, max_size=n))
    return cast(x, dtype), cast(y, dtype)


@st.composite
def matrices(draw, op: str, dtype, masks: bool = False, max_rows: int = 4, max_cols: int = 6):
    """A small matrix of inputs of ``op``; with ``masks``, ``-inf`` entries and all ``-inf`` rows."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    entry = elements(op, dtype)
    if masks:
        entry = st.one_of(entry, entry, entry, st.just(-math.inf))
    data = []
    for _ in range(rows):
        if masks and draw(st.integers(0, 5)) == 0:
            data.append([-math.inf] * cols)
        elif op == "reduce_std" and draw(st.integers(0, 2)) == 0:
            # No or little spread: equal entries, or entries a few representable steps apart.
            v = float(cast([draw(entry)], dtype)[0])
            data.append([step(v, k, dtype) for k in draw(st.lists(st.integers(-2, 2), min_size=cols,
                                                                    max_size=cols))])
        else:
            data.append(draw(st.lists(entry, min_size=cols, max_size=cols)))
    return cast(data, dtype)


def weights_for(shape, dtype) -> st.SearchStrategy[np.ndarray]:
    """Nonnegative finite weights of ``shape`` (zeros included) for ``reduce_logsumexp``."""
    info = finfo(dtype)
    positive = st.one_of(
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, float(info.tiny), float(info.eps), 1e4]),
        full_range(dtype).map(abs),
    )
    size = int(np.prod(shape))
    return st.lists(positive, min_size=size, max_size=size).map(
        lambda ws: cast(ws, dtype).reshape(shape))


def with_nans(draw, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` with NaN at a nonempty random subset of entries, and that subset's mask."""
    flat = array.astype(np.float64).ravel().copy()
    picks = draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=max(1, flat.size // 2),
                          unique=True))
    mask = np.zeros(flat.size, dtype=bool)
    mask[picks] = True
    flat[mask] = np.nan
    return cast(flat, array.dtype).reshape(array.shape), mask.reshape(array.shape)

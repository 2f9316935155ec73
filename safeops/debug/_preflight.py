"""``check_inputs``: find the input columns that will blow up training, before training.

A dense layer's weight gradient is its input times the back-propagated
error, so a feature of magnitude 4000 gives that layer a gradient about 4000
times larger than a feature of magnitude 1, and its curvature grows with the
*square* of the scale: plain gradient descent is stable only for learning
rates below ``2 / lambda_max`` of the input's second-moment matrix, which
scales as ``|x|**2`` (LeCun, Bottou, Orr and Müller, "Efficient BackProp",
1998, sec. 4.3, which recommends zero-mean, unit-variance inputs). Features of
very different scales make the problem ill-conditioned: the learning rate
that moves the small features at all makes the large ones overshoot.

The fix is standardisation whose statistics come from the training split
only; statistics computed on all the data leak the test split into training
(scikit-learn user guide, "Common pitfalls: data leakage").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from safeops._validate import is_real_number, message

_OP = "safeops.debug.check_inputs"

#: A column whose root-mean-square exceeds this is flagged as large.
DEFAULT_MAX_SCALE = 100.0
#: Largest to smallest column scale above this is flagged as a spread.
DEFAULT_MAX_SPREAD = 1e3

SEVERITY = {"nonfinite": 3, "scale": 2, "spread": 2, "constant": 1}

LEAK_FREE_FIX = """\
Standardise with statistics of the training split only, then apply them to both splits:

    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(x_train)                 # mean and variance of the TRAINING split only
    x_train, x_test = norm(x_train), norm(x_test)
    # (or put `norm` as the model's first layer, after adapt)

    # or with scikit-learn:
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(x_train)    # fit on the training split only
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)

Fitting on the whole data set (or on x_test) leaks test statistics into training."""


@dataclasses.dataclass
class InputFinding:
    """One problem in the inputs.

    Attributes:
      kind: ``'nonfinite'``, ``'scale'``, ``'spread'`` or ``'constant'``.
      columns: the column indices concerned.
      names: their feature names.
      message: what is wrong and why it matters.
      fix: what to do.
      severity: 3 (breaks training) .. 1 (wasteful).
    """

    kind: str
    columns: list
    names: list
    message: str
    fix: str
    severity: int

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}\n    fix: {self.fix}"


@dataclasses.dataclass
class InputReport:
    """What :func:`check_inputs` found, as data; ``str(report)`` reads as a report.

    Attributes:
      n_train, n_test, n_features: sizes (``n_test`` is 0 without ``x_test``).
      feature_names: one name per column.
      findings: :class:`InputFinding` list, most severe first.
      column_stats: per-column arrays computed on the *training* split:
        ``mean``, ``std``, ``min``, ``max``, ``scale`` (root mean square),
        ``n_nan``, ``n_inf`` (finite values only for the moments).
      fix: the leak-free standardisation recipe (text with code) when the
        scale or spread of the features is flagged, else ''.
    """

    n_train: int
    n_test: int
    n_features: int
    feature_names: list
    findings: list
    column_stats: dict
    fix: str

    @property
    def ok(self) -> bool:
        """True when nothing was flagged."""
        return not self.findings

    def kinds(self) -> set:
        """The kinds of findings, e.g. ``{'scale', 'spread'}``."""
        return {f.kind for f in self.findings}

    def __str__(self) -> str:
        head = (f"safeops.debug.check_inputs: {self.n_train} training rows"
                + (f", {self.n_test} test rows" if self.n_test else "")
                + f", {self.n_features} features")
        if self.ok:
            return head + "\n  no problem found"
        lines = [head] + [f"  {i + 1}. {f}" for i, f in enumerate(self.findings)]
        if self.fix:
            lines += ["", self.fix]
        return "\n".join(lines)


def check_inputs(x_train: Any, x_test: Any = None, *, feature_names: Sequence[str] | None = None,
                 max_scale: float = DEFAULT_MAX_SCALE, max_spread: float = DEFAULT_MAX_SPREAD,
                 show: int = 5) -> InputReport:
    """Flags input features that will explode gradients, constant columns and non-finite entries.

    Rules, on the training split (the test split is checked for non-finite
    entries only, and never used for statistics):

    * **nonfinite**: a column holds NaN or inf (train or test).
    * **scale**: a column's root mean square exceeds ``max_scale``; its
      gradients are that many times larger than a unit-scale feature's.
    * **spread**: the largest column scale is more than ``max_spread`` times
      the smallest non-constant one (ill-conditioned: no single learning rate
      suits all features).
    * **constant**: a column has zero variance: it carries no information,
      and a hand-written ``(x - mean) / std`` divides by zero on it.

    Args:
      x_train: the training inputs, ``[n, features]`` (array-like, DataFrame
        or tensor; higher ranks are flattened to ``[n, -1]``, 1-D is one feature).
      x_test: optional test inputs with the same features.
      feature_names: optional names (a DataFrame's columns by default).
      max_scale, max_spread: the thresholds above.
      show: how many columns each finding names in its message.

    Returns:
      An :class:`InputReport`; ``print(report)`` shows the findings and the
      leak-free fix (fit the normalisation on the training split only).

    Example:

    >>> import numpy as np
    >>> report = check_inputs(np.array([[1.0, 5000.0, 3.0], [2.0, 7000.0, 3.0]]))
    >>> sorted(report.kinds())
    ['constant', 'scale', 'spread']
    """
    for arg, value in (("max_scale", max_scale), ("max_spread", max_spread)):
        # A bool is no threshold; NaN fails `> 0` as every comparison with it does.
        if not is_real_number(value) or not value > 0:
            raise ValueError(message(_OP, arg, "a positive number", repr(value)))
    names = list(feature_names) if feature_names is not None else _column_names(x_train)
    train = _as_matrix(x_train, "x_train")
    test = _as_matrix(x_test, "x_test") if x_test is not None else None
    n, d = train.shape
    if test is not None and test.shape[1] != d:
        raise ValueError(message(_OP, "x_test", f"of {d} features like x_train", test.shape[1]))
    if feature_names is not None and len(names) != d:
        # Only the names given: a DataFrame's own columns may not survive flattening to [n, -1].
        raise ValueError(message(_OP, "feature_names", f"one name per column of x_train ({d})", len(names)))
    if names is None or len(names) != d:
        names = [f"x[{j}]" for j in range(d)]

    stats = _column_stats(train)
    findings: list[InputFinding] = []

    def named(cols):
        cols = [int(c) for c in cols]
        return cols, [names[c] for c in cols]

    def listing(cols, value=None):
        shown = ", ".join(f"{names[c]}" + (f" ({value[c]:.4g})" if value is not None else "")
                          for c in cols[:show])
        return shown + (f" and {len(cols) - show} more" if len(cols) > show else "")

    bad_train = np.flatnonzero(stats["n_nan"] + stats["n_inf"])
    bad_test = np.flatnonzero((~np.isfinite(test)).sum(axis=0)) if test is not None else np.array([], int)
    bad = np.union1d(bad_train, bad_test)
    if bad.size:
        total = int(stats["n_nan"].sum() + stats["n_inf"].sum())
        where = "training" if bad_train.size and not bad_test.size else (
            "test" if not bad_train.size else "training and test")
        cols, nm = named(bad)
        findings.append(InputFinding(
            "nonfinite", cols, nm,
            f"{len(cols)} column(s) hold NaN or inf in the {where} split ({total} in training): "
            f"{listing(cols)}; one such entry makes the loss and every gradient NaN",
            "drop those rows, or impute with statistics of the training split only "
            "(sklearn.impute.SimpleImputer().fit(x_train))", SEVERITY["nonfinite"]))

    varying = stats["max"] > stats["min"]     # exact: no rounding of a mean involved
    constant = np.flatnonzero(~varying & (stats["n_finite"] > 0))
    large = np.flatnonzero(stats["scale"] > max_scale)
    large = large[np.argsort(-stats["scale"][large])]
    if large.size:
        cols, nm = named(large)
        findings.append(InputFinding(
            "scale", cols, nm,
            f"{len(cols)} column(s) have a scale (root mean square) above {max_scale:g}: "
            f"{listing(cols, stats['scale'])}; a dense layer's gradient grows with the input's scale "
            f"and its curvature with the square, so a learning rate that suits unit-scale inputs diverges",
            "standardise with statistics fitted on the training split only (see below)",
            SEVERITY["scale"]))

    scales = stats["scale"][varying]
    if scales.size >= 2 and scales.min() > 0:
        spread = float(scales.max() / scales.min())
        if spread > max_spread:
            j_max = int(np.flatnonzero(varying)[np.argmax(scales)])
            j_min = int(np.flatnonzero(varying)[np.argmin(scales)])
            cols, nm = named([j_max, j_min])
            findings.append(InputFinding(
                "spread", cols, nm,
                f"feature scales span a factor {spread:.3g} (largest {names[j_max]} "
                f"{stats['scale'][j_max]:.4g}, smallest {names[j_min]} {stats['scale'][j_min]:.4g}); "
                f"no single learning rate suits both",
                "standardise with statistics fitted on the training split only (see below)",
                SEVERITY["spread"]))

    if constant.size:
        cols, nm = named(constant)
        findings.append(InputFinding(
            "constant", cols, nm,
            f"{len(cols)} column(s) are constant on the training split: {listing(cols)}; they carry no "
            f"information and a hand-written (x - mean) / std divides by zero on them",
            "drop them (keep = x_train.std(axis=0) > 0); Normalization and StandardScaler "
            "leave them finite", SEVERITY["constant"]))

    findings.sort(key=lambda f: -f.severity)
    fix = LEAK_FREE_FIX if {"scale", "spread"} & {f.kind for f in findings} else ""
    return InputReport(n_train=n, n_test=0 if test is None else test.shape[0], n_features=d,
                       feature_names=names, findings=findings, column_stats=stats, fix=fix)


def _column_names(x: Any):
    columns = getattr(x, "columns", None)
    return [str(c) for c in columns] if columns is not None else None


def _as_matrix(x: Any, arg: str) -> np.ndarray:
    values = getattr(x, "values", None) if hasattr(x, "columns") else None
    a = np.asarray(values if values is not None else x)
    if a.dtype.kind not in "fiub":
        raise TypeError(message(_OP, arg, "numeric", a.dtype))
    a = a.astype(np.float64)
    if a.ndim == 0:
        raise ValueError(message(_OP, arg, "an array with a batch axis", "a scalar"))
    if a.ndim == 1:
        a = a[:, None]
    return a.reshape(a.shape[0], -1)


def _column_stats(a: np.ndarray) -> dict:
    finite = np.isfinite(a)
    n_finite = finite.sum(axis=0)
    filled = np.where(finite, a, 0.0)
    count = np.maximum(n_finite, 1)
    mean = filled.sum(axis=0) / count
    centred = np.where(finite, a - mean, 0.0)
    std = np.sqrt((centred ** 2).sum(axis=0) / count)
    scale = np.sqrt((filled ** 2).sum(axis=0) / count)
    lo = np.where(finite, a, np.inf).min(axis=0)
    hi = np.where(finite, a, -np.inf).max(axis=0)
    none = n_finite == 0
    return {
        "mean": np.where(none, math.nan, mean),
        "std": np.where(none, math.nan, std),
        "min": np.where(none, math.nan, lo),
        "max": np.where(none, math.nan, hi),
        "scale": np.where(none, math.nan, scale),
        "n_nan": np.isnan(a).sum(axis=0),
        "n_inf": np.isinf(a).sum(axis=0),
        "n_finite": n_finite,
    }

"""Benchmark inputs as data: a spec per input, turned into a NumPy array.

A spec is a plain dict, so that it can be written into the export manifest and
the replay (which runs without TensorFlow) can rebuild the very same arrays:

* ``{"kind": "uniform", "low": a, "high": b}``
* ``{"kind": "normal", "scale": s}``
* ``{"kind": "one_hot"}`` (one 1 per row of the last axis)
* ``{"kind": "binary"}`` (0 or 1 with probability 1/2)
* ``{"kind": "classes", "classes": c}`` (integers in ``[0, c)``)

plus ``"shape"`` (a list of ints) and ``"dtype"`` (a NumPy name:
``float32``, ``float16``, ``bfloat16``, ``float64``, ``int32``, ``int64``).
Values are drawn in float64 from a seeded generator and rounded once, so every
variant of a case, and the replay, see identical inputs.

Only NumPy (and ``ml_dtypes`` for bfloat16) may be imported here.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype for a dtype name, bfloat16 included (via ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def spec(kind: str, shape, dtype: str, **params: Any) -> dict:
    """A JSON-serialisable input spec."""
    return {"kind": kind, "shape": [int(n) for n in shape], "dtype": dtype, **params}


def make_array(input_spec: dict, seed: int) -> np.ndarray:
    """The array an input spec describes, drawn from ``seed``."""
    # "base_seed": inputs that share it share their draw (a distribution and one near it).
    rng = np.random.default_rng(input_spec.get("base_seed", seed))
    shape = tuple(input_spec["shape"])
    kind = input_spec["kind"]
    if kind == "uniform":
        values = rng.uniform(input_spec["low"], input_spec["high"], size=shape)
    elif kind == "normal":
        values = rng.standard_normal(size=shape) * input_spec["scale"]
    elif kind == "binary":
        values = rng.integers(0, 2, size=shape)
    elif kind == "classes":
        values = rng.integers(0, input_spec["classes"], size=shape)
    elif kind == "simplex":  # rows of probabilities: the softmax of normal logits of ``scale``
        logits = rng.standard_normal(size=shape) * input_spec["scale"]
        if input_spec.get("jitter"):  # each logit moved by jitter * N(0, 1), drawn from the input's own seed
            logits = logits + np.random.default_rng(seed).standard_normal(size=shape) * input_spec["jitter"]
        values = np.exp(logits - logits.max(-1, keepdims=True))
        values /= values.sum(-1, keepdims=True)
    elif kind == "one_hot":
        classes = shape[-1]
        hot = rng.integers(0, classes, size=shape[:-1])
        values = np.zeros(shape, dtype=np.float32)
        np.put_along_axis(values, hot[..., None], 1.0, axis=-1)
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    return np.asarray(values).astype(np_dtype(input_spec["dtype"]))


def seed_for(case: str, size_label: str, index: int) -> int:
    """A stable seed per (case, size, input position): same in export and replay."""
    return zlib.crc32(f"{case}|{size_label}|{index}".encode()) & 0x7FFFFFFF


def nbytes(input_spec: dict) -> int:
    """Bytes the array of a spec occupies."""
    return int(np.prod(input_spec["shape"], dtype=np.int64)) * np_dtype(input_spec["dtype"]).itemsize

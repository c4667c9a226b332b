"""Input checks for the estimators: one helper per kind of argument.

Every message names the argument, the problem and, for arrays, the first offending index.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .._array import check_measure_base

__all__ = [
    "check_labels",
    "check_level",
    "check_measure_base",
    "check_method",
    "check_model",
    "count_array",
]


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


# Row totals below this are exact in float64 (and in int64): counts are then int64.
EXACT_TOTAL = 2**53


def count_array(values: Any, name: str = "counts") -> np.ndarray:
    """``values`` as an array of counts along the last axis, checked.

    Counts are finite, non-negative whole numbers; there is at least one axis, the last
    axis is not empty, and every row has at least one sample. The result is int64 when
    every row totals less than 2**53 (every sum of counts is then exact, in int64 and in
    float64), and float64 otherwise: int64 sums would overflow at 2**63 and uint64 counts
    above 2**63 - 1 do not fit, while the estimators only need the counts to about 16
    digits, which float64 keeps (the plug-in entropy of [2**62, 2**62] is still log 2).
    """
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:  # ragged lists and the like
        raise ValueError(f"{name} must be an array of counts: {error}") from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.floating)
        or array.dtype == np.bool_
    ):
        raise ValueError(f"{name} must be an array of whole-number counts, got dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"{name} must have at least one axis (the symbols), got a scalar")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}): there is nothing to estimate")
    if np.issubdtype(array.dtype, np.floating):
        nan = np.isnan(array)
        if nan.any():
            raise ValueError(f"{name} contain NaN at index {_first(nan)}")
        infinite = np.isinf(array)
        if infinite.any():
            raise ValueError(f"{name} contain an infinite value at index {_first(infinite)}")
    negative = array < 0
    if negative.any():
        index = _first(negative)
        raise ValueError(
            f"{name} contain a negative value {array[index].item()!r} at index {index}"
        )
    if np.issubdtype(array.dtype, np.floating):
        fractional = array != np.floor(array)
        if fractional.any():
            index = _first(fractional)
            raise ValueError(
                f"{name} must be whole numbers: found {array[index].item()!r} at index {index}"
            )
        if array.max() > 2.0**53:
            raise ValueError(f"{name} are too large to be exact counts (above 2**53)")
    # Summed in float64, a total is exact while below 2**53 and otherwise within a
    # rounding of the truth: enough to tell which side of 2**53 it lies on.
    totals = array.sum(axis=-1, dtype=np.float64)
    empty = totals == 0
    if np.any(empty):
        where = f" in row {_first(np.atleast_1d(empty))}" if array.ndim > 1 else ""
        raise ValueError(f"{name} sum to 0{where}: an estimate needs at least one sample")
    if np.max(totals) < EXACT_TOTAL:
        return array.astype(np.int64, copy=False)
    return array.astype(np.float64, copy=False)


def check_method(method: Any, allowed: tuple[str, ...], name: str = "method") -> str:
    if not isinstance(method, str) or method not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {method!r}")
    return method


def check_level(level: Any) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < float(level) < 1:
        raise ValueError(f"level must be a number strictly between 0 and 1, got {level!r}")
    return float(level)


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _row(index: tuple[int, ...]) -> str:
    return f" in row {index}" if index else ""


def check_model(values: np.ndarray, form: str) -> None:
    """The model q along the last axis: ``form`` is probabilities, logits or log-probabilities.

    No NaN; no +inf; probabilities non-negative and summing to 1, log-probabilities
    exponentiating to a sum of 1 (within (4 + log2 K) float32 roundings), logits with a
    finite entry in every row.
    """
    what = f"q ({form})"
    nan = np.isnan(values)
    if nan.any():
        raise ValueError(f"{what} contain NaN at index {_first(nan)}")
    plus_inf = values == np.inf
    if plus_inf.any():
        raise ValueError(f"{what} contain +inf at index {_first(plus_inf)}")
    K = values.shape[-1]
    tol = (4 + np.log2(K)) * float(np.finfo(np.float32).eps)
    if form == "logits":
        dead = np.all(values == -np.inf, axis=-1)
        if np.any(dead):
            raise ValueError(f"{what} are -inf everywhere{_row(_first(np.atleast_1d(dead)))}")
        return
    if form == "probabilities":
        negative = values < 0
        if negative.any():
            index = _first(negative)
            value = values[index].item()
            raise ValueError(f"{what} contain a negative value {value:g} at index {index}")
        sums = values.sum(axis=-1)
    else:
        sums = np.exp(values).sum(axis=-1)
    bad = np.abs(sums - 1) > tol
    if np.any(bad):
        index = _first(np.atleast_1d(bad))
        total = np.atleast_1d(sums)[index].item()
        raise ValueError(
            f"q does not sum to 1 along its last axis: the sum is {total:.9g}"
            f"{_row(index) if np.ndim(sums) else ''} (tolerance {tol:.2g})"
        )


def check_labels(y: np.ndarray, name: str, num_classes: int) -> None:
    """Integer class indices in [0, num_classes)."""
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        index = _first(bad)
        raise ValueError(
            f"{name} (labels) must lie in [0, {num_classes}): found {y[index].item()} "
            f"at index {index}"
        )

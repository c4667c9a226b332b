"""Data checks behind ``validate=True``: one helper per kind of input.

``axis`` is the event axis of the array checked; ``shown_axis`` is the one the caller
wrote, for the message (``axis`` itself by default).

Each helper runs one cheap combined test (a min and a sum, reduced to one flag, so one
host synchronisation) and only when it fails looks for the first offending entry to name
it in the message.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from ._array import dtype_name, is_concrete_true, to_numpy

_EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}


def sum_tolerance(dtype: Any, num_classes: int) -> float:
    """How far from 1 a row of ``num_classes`` probabilities in ``dtype`` may sum.

    ``(4 + log2 K)`` units of rounding: what normalising in that dtype and summing
    pairwise can cost.  Never stricter than float32's, since probabilities stored as
    float64 were often computed in float32.
    """
    eps = max(_EPS.get(dtype_name(dtype), _EPS["float32"]), _EPS["float32"])
    return (4 + math.log2(max(num_classes, 1))) * eps


def _is_empty(x: Any) -> bool:
    return math.prod(x.shape) == 0  # torch's .size is a method, not a number


def _first(mask: Any) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(to_numpy(mask))[0])


def _shown(axis: int, shown_axis: int | None) -> int:
    return axis if shown_axis is None else shown_axis


def _row(index: tuple[int, ...]) -> str:
    return f" in row {index}" if index else ""


def _check_finite_entries(xp: Any, x: Any, what: str, *, allow_neg_inf: bool) -> None:
    if xp.any(xp.isnan(x)):
        raise ValueError(f"{what} contain NaN at index {_first(xp.isnan(x))}")
    bad = xp.isinf(x) if not allow_neg_inf else x == math.inf
    if xp.any(bad):
        sign = "+inf" if allow_neg_inf else "infinite values"
        raise ValueError(f"{what} contain {sign} at index {_first(bad)}")


def _row_sums(xp: Any, x: Any, axis: int) -> Any:
    """Row sums accurate to far below :func:`sum_tolerance`, along any axis.

    NumPy sums pairwise only along the contiguous axis; along another it adds one term
    after another, and in float32 a correctly normalised row of 65,536 classes came out
    0.99999267.  Accumulating in float64 costs NumPy nothing that matters.  Torch and JAX
    reduce as a tree along every axis, so float32 accumulation stays (float64 is slow or
    missing on GPUs and under JAX's default config).
    """
    if array_api_compat.is_numpy_namespace(xp) or x.dtype == xp.float64:
        return xp.sum(x, axis=axis, dtype=xp.float64)
    return xp.sum(x, axis=axis, dtype=xp.float32)


def probabilities(xp: Any, x: Any, name: str, axis: int, shown_axis: int | None = None) -> None:
    """Finite, non-negative, each row summing to 1 within :func:`sum_tolerance`."""
    if _is_empty(x):
        return
    num_classes = x.shape[axis]
    tol = sum_tolerance(x.dtype, num_classes)
    sums = _row_sums(xp, x, axis)
    ok = (xp.min(x) >= 0) & xp.all(xp.abs(sums - 1) <= tol)
    if is_concrete_true(ok):
        return
    what = f"{name} (probabilities)"
    _check_finite_entries(xp, x, what, allow_neg_inf=False)
    negative = x < 0
    if xp.any(negative):
        index = _first(negative)
        value = float(to_numpy(x)[index])
        raise ValueError(f"{what} contain a negative value {value:g} at index {index}")
    bad = xp.abs(sums - 1) > tol
    index = _first(bad)
    value = float(to_numpy(sums)[index])
    raise ValueError(
        f"{name} does not sum to 1 along axis {_shown(axis, shown_axis)}: "
        f"the sum is {value:.9g}{_row(index)} (tolerance {tol:.2g}); "
        "normalise it, or pass Logits/LogProbs"
    )


def logits(xp: Any, z: Any, name: str, axis: int, shown_axis: int | None = None) -> None:
    """No NaN or +inf; each row has at least one finite entry (-inf masks a class)."""
    if _is_empty(z):
        return
    row_max = xp.max(z, axis=axis)
    ok = xp.all(z < math.inf) & xp.all(row_max > -math.inf)
    if is_concrete_true(ok):
        return
    what = f"{name} (logits)"
    _check_finite_entries(xp, z, what, allow_neg_inf=True)
    index = _first(row_max == -math.inf)
    raise ValueError(
        f"{what} are -inf everywhere along axis {_shown(axis, shown_axis)}{_row(index)}: "
        "a distribution needs at least one possible class"
    )


def log_probabilities(
    xp: Any, lp: Any, name: str, axis: int, shown_axis: int | None = None
) -> None:
    """No NaN or +inf; ``exp`` of each row sums to 1 within :func:`sum_tolerance`."""
    if _is_empty(lp):
        return
    tol = sum_tolerance(lp.dtype, lp.shape[axis])
    wide = lp if lp.dtype == xp.float64 else xp.astype(lp, xp.float32)
    sums = xp.sum(xp.exp(wide), axis=axis)
    ok = xp.all(lp < math.inf) & xp.all(xp.abs(sums - 1) <= tol)
    if is_concrete_true(ok):
        return
    what = f"{name} (log-probabilities)"
    _check_finite_entries(xp, lp, what, allow_neg_inf=True)
    index = _first(xp.abs(sums - 1) > tol)
    value = float(to_numpy(sums)[index])
    raise ValueError(
        f"{what} are not normalised along axis {_shown(axis, shown_axis)}: exp sums to {value:.9g}"
        f"{_row(index)} (tolerance {tol:.2g}); pass Logits for unnormalised scores"
    )


def label_range(xp: Any, y: Any, num_classes: int) -> Any:
    """Where the integer labels ``y`` lie in ``[0, num_classes)``, compared without wrapping.

    A Python int beyond the range of ``y``'s dtype could be cast into it (300 as uint8 is
    44): compare only against bounds the dtype holds, and skip a test no value can fail.
    """
    info = np.iinfo(dtype_name(y.dtype))
    ok = xp.ones(y.shape, dtype=xp.bool, device=array_api_compat.device(y))
    if info.min < 0:
        ok = ok & (y >= 0)
    if num_classes <= info.max:
        ok = ok & (y < num_classes)
    return ok


def labels(xp: Any, y: Any, name: str, num_classes: int) -> None:
    """Integer class indices in ``[0, num_classes)``."""
    if _is_empty(y):
        return
    bad = ~label_range(xp, y, num_classes)
    if is_concrete_true(~xp.any(bad)):
        return
    index = _first(bad)
    value = int(to_numpy(y)[index])
    raise ValueError(
        f"{name} (labels) must lie in [0, {num_classes}): found {value} at index {index}"
    )

"""The result of an estimate: the value, the method that produced it, and its uncertainty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Estimate"]


def _show(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, str):
        return repr(x)
    array = np.asarray(x)
    if array.ndim == 0:
        return f"{array.item():.6g}" if array.dtype.kind == "f" else repr(array.item())
    return f"array(shape={array.shape})"


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(frozen=True, eq=False)
class Estimate:
    """An estimate with its method and uncertainty, for a single row or a batch.

    Attributes
    ----------
    value : float or numpy.ndarray
        The estimate; a float for one count vector, an array of the batch shape otherwise.
    method : str or numpy.ndarray
        The estimator that produced ``value``. With ``method="auto"`` this is the one
        chosen: a string when every row used the same one, else an array of names.
    std_error : float, numpy.ndarray or None
        The standard error (for NSB: the posterior standard deviation); None where the
        method gives none (use :func:`~crossentropy.estimate.entropy_interval`).
    low, high : float, numpy.ndarray or None
        The interval at ``level``, when one was asked for.
    level : float or None
        The interval's nominal coverage.

    Notes
    -----
    ``float(estimate)`` and ``numpy.asarray(estimate)`` give ``value``. Two estimates
    are equal when every field is (arrays element by element, NaN equal to NaN). With
    ``method="auto"`` over a batch that mixes methods, ``std_error`` is NaN in the rows
    whose method gives none.
    """

    value: Any
    method: Any
    std_error: Any = None
    low: Any = None
    high: Any = None
    level: float | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Estimate):
            return NotImplemented
        return all(
            _same(getattr(self, name), getattr(other, name)) for name in self.__dataclass_fields__
        )

    __hash__ = None  # type: ignore[assignment]

    def __float__(self) -> float:
        return float(self.value)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        array = np.asarray(self.value)
        return array if dtype is None else array.astype(dtype)

    def __repr__(self) -> str:
        parts = [f"value={_show(self.value)}", f"method={_show(self.method)}"]
        if self.std_error is not None:
            parts.append(f"std_error={_show(self.std_error)}")
        if self.low is not None:
            parts += [f"low={_show(self.low)}", f"high={_show(self.high)}", f"level={self.level:g}"]
        return f"Estimate({', '.join(parts)})"

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


@dataclass(frozen=True)
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
    ``float(estimate)`` and ``numpy.asarray(estimate)`` give ``value``.
    """

    value: Any
    method: Any
    std_error: Any = None
    low: Any = None
    high: Any = None
    level: float | None = None

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

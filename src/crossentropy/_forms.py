"""Input forms: how an argument says what its numbers mean.

A plain array is a probability vector along the event axis.  Wrapping it says otherwise:
``Logits(z)`` (unnormalised log-probabilities, normalised with a stable log-softmax),
``LogProbs(lp)`` (normalised log-probabilities) and, for the data side only,
``Labels(y)`` (integer class indices, a point mass on each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Labels", "LogProbs", "Logits"]


@dataclass(frozen=True, repr=False)
class _Form:
    values: Any

    def __repr__(self) -> str:
        shape = getattr(self.values, "shape", None)
        inner = f"shape={tuple(shape)}" if shape is not None else repr(self.values)
        return f"{type(self).__name__}({inner})"


class Logits(_Form):
    """Unnormalised log-probabilities: ``softmax(values)`` along the event axis.

    ``-inf`` marks a masked (impossible) class.  Every row needs at least one finite
    entry; NaN and ``+inf`` are rejected.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.entropy(ce.Logits([0.0, 0.0])))  # log 2
    0.6931471805599453
    """


class LogProbs(_Form):
    """Normalised log-probabilities: ``exp(values)`` sums to 1 along the event axis.

    ``-inf`` is probability 0.

    Examples
    --------
    >>> import math, crossentropy as ce
    >>> float(ce.entropy(ce.LogProbs([math.log(0.5), math.log(0.5)])))
    0.6931471805599453
    """


class Labels(_Form):
    """Integer class indices: a point mass on class ``values[...]`` (data side only).

    The array has the shape of the other argument without its event axis; the number of
    classes comes from the other argument.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.cross_entropy(ce.Labels([1]), [[0.5, 0.5]])[0])  # -log 0.5
    0.6931471805599453
    """

"""The floor of a loss with its uncertainty: the truth's H(y | x) from counted data.

The data's S(D) is the plug-in entropy of a sample and is biased low; the demo and the
report show beside it an estimate of the truth's conditional entropy from
:mod:`crossentropy.estimate`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Above this many contexts the per-context bootstrap costs more than a report should.
MAX_CONTEXTS = 10_000


def truth_entropy(
    table: np.ndarray, *, seed: int = 0, n_boot: int = 200, level: float = 0.95
) -> dict[str, Any] | None:
    """H(y | x) of the truth, in nats, from a (contexts, classes) table of counts.

    Each context's entropy is estimated bias-corrected (``method="auto"``), with a
    bootstrap standard error; contexts are weighted by their share of the samples and
    their errors added in quadrature (contexts are counted independently).  None when
    there are more than :data:`MAX_CONTEXTS` contexts.

    Returns
    -------
    dict
        ``value``, ``low``, ``high``, ``level`` and ``method`` (what ``auto`` chose,
        joined with ``+`` where contexts differ).
    """
    from ..estimate import entropy_interval

    table = np.asarray(table)
    seen = table.sum(axis=1) > 0
    if not seen.any() or seen.sum() > MAX_CONTEXTS:
        return None
    rows = entropy_interval(table[seen], seed=seed, n_boot=n_boot, level=level)
    weights = table[seen].sum(axis=1) / table.sum()
    value = float(weights @ np.asarray(rows.value, dtype=np.float64))
    error = float(np.sqrt(weights**2 @ np.asarray(rows.std_error, dtype=np.float64) ** 2))
    from scipy.special import ndtri

    z = float(ndtri(0.5 + level / 2))
    methods = sorted(set(np.atleast_1d(np.asarray(rows.method)).tolist()))
    return {
        "value": value,
        "low": value - z * error,
        "high": value + z * error,
        "level": level,
        "method": "+".join(methods),
    }

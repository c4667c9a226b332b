"""The NumPy float64 road: row sums of ``p log x`` in cache-sized blocks.

Entropy is bound by its logarithms, not by memory, so the work is one ``log`` per element
and one multiply-add.  Doing both a block at a time through one small scratch buffer
avoids allocating (and page-faulting) a full-size array for ``log p``, and
``np.einsum`` keeps the products off a threaded BLAS ``ddot``, which on long rows and busy
cores costs more than it gives.  Terms ``0 * log 0`` come out NaN here; the caller redoes
those rows with the masked formula.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# Elements per block: the scratch buffer (512 KiB) stays in the L2 cache.
_BLOCK = 1 << 16

Kind = Literal["self", "cross", "ratio"]


def applies(*arrays: np.ndarray) -> bool:
    """True for float64 NumPy arrays of one shape (no broadcasting to unroll)."""
    first = arrays[0]
    return (
        all(
            isinstance(a, np.ndarray) and a.dtype == np.float64 and a.shape == first.shape
            for a in arrays
        )
        and first.ndim >= 1
    )


def weighted_log_sums(kind: Kind, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Over the last axis: ``sum p log p`` (self), ``sum p log q`` (cross) or
    ``sum p log(p / q)`` (ratio, as ``log1p((p - q) / q)``: exact where p and q are close).
    ``q`` is not read for ``self``.
    Call inside ``np.errstate`` that ignores log 0 and 0 / 0."""
    k = p.shape[-1]
    batch = p.shape[:-1]
    p2 = p.reshape(-1, k)
    q2 = q.reshape(-1, k)
    out = np.zeros(p2.shape[0])
    span = min(k, _BLOCK)
    rows = max(1, _BLOCK // k)
    scratch = np.empty(rows * span)
    for r in range(0, p2.shape[0], rows):
        for c in range(0, k, span):
            pb = p2[r : r + rows, c : c + span]
            logs = scratch[: pb.size].reshape(pb.shape)
            if kind == "self":
                np.log(pb, out=logs)
            elif kind == "cross":
                np.log(q2[r : r + rows, c : c + span], out=logs)
            else:
                qb = q2[r : r + rows, c : c + span]
                np.subtract(pb, qb, out=logs)
                np.divide(logs, qb, out=logs)
                np.log1p(logs, out=logs)
            out[r : r + rows] += np.einsum("ij,ij->i", pb, logs)
    return out.reshape(batch)

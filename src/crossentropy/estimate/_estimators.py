"""The entropy estimators as row reductions over an int64 array of counts (rows, K).

Every function returns nats, one value per row. Functions of a single count n (n log n,
digamma, Grassberger's G) are evaluated once per distinct count value and gathered, so a
batch costs a few passes over the counts whatever its size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import psi, xlogy

from ._nsb import nsb

__all__ = ["ESTIMATORS"]


def _per_count(f: Callable[[np.ndarray], np.ndarray], c: np.ndarray) -> np.ndarray:
    """``f(c)`` elementwise, computing ``f`` once per distinct count value."""
    top = int(c.max())
    if top < max(1024, c.size):
        return f(np.arange(top + 1, dtype=np.float64))[c]
    values, inverse = np.unique(c, return_inverse=True)
    return f(values.astype(np.float64))[inverse].reshape(c.shape)


def _nlogn(n: np.ndarray) -> np.ndarray:
    return xlogy(n, n)


def _totals(c: np.ndarray) -> np.ndarray:
    return c.sum(axis=-1).astype(np.float64)


def plugin(c: np.ndarray) -> np.ndarray:
    """Plug-in (maximum likelihood): log N - (1/N) sum n log n.

    The entropy of the observed frequencies; biased low, by about (K - 1)/2N nats when
    well sampled and by far more when N is below K.
    """
    N = _totals(c)
    # Rounding can leave log N - N log N / N a hair below 0 for a single symbol.
    return np.maximum(np.log(N) - _per_count(_nlogn, c).sum(axis=-1) / N, 0.0)


def miller_madow(c: np.ndarray) -> np.ndarray:
    """Miller-Madow (Miller 1955): plug-in + (m - 1)/2N, m the observed symbols.

    Removes the first-order bias; still low when many symbols are unseen (m < K).
    """
    N = _totals(c)
    observed = np.count_nonzero(c, axis=-1)
    return plugin(c) + (observed - 1) / (2 * N)


def jackknife(c: np.ndarray) -> np.ndarray:
    """Delete-one jackknife (Zahl 1977): N H - (N - 1)/N sum_j H_(-j), in closed form.

    Cancels the 1/N bias term; low when much of the mass is unseen. 0 for N = 1.
    """
    N = _totals(c)
    nlogn = _per_count(_nlogn, c)
    S = nlogn.sum(axis=-1)
    # Leaving out one sample of a symbol seen n times changes sum n log n by
    # d(n) = n log n - (n - 1) log(n - 1); the mean leave-one-out plug-in entropy is
    # log(N - 1) - (N S - sum_i n_i d(n_i)) / (N (N - 1)).
    d = nlogn - _per_count(lambda n: _nlogn(np.maximum(n - 1, 0)), c)
    weighted = np.sum(c * d, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = np.log(N - 1) - (N * S - weighted) / (N * (N - 1))
        estimate = N * (np.log(N) - S / N) - (N - 1) * loo
    return np.where(N > 1, estimate, 0.0)


def _grassberger_nG(n: np.ndarray) -> np.ndarray:
    safe = np.maximum(n, 1.0)
    sign = np.where(np.mod(safe, 2) == 0, 1.0, -1.0)
    G = psi(safe) + 0.5 * sign * (psi((safe + 1) / 2) - psi(safe / 2))
    return np.where(n > 0, n * G, 0.0)


def grassberger(c: np.ndarray) -> np.ndarray:
    """Grassberger (2003, eq. 35): log N - (1/N) sum n G(n),
    G(n) = psi(n) + (-1)^n / 2 (psi((n + 1)/2) - psi(n/2)).

    Less biased than Miller-Madow for small counts; still low when mass is unseen.
    """
    N = _totals(c)
    return np.log(N) - _per_count(_grassberger_nG, c).sum(axis=-1) / N


def _observed(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row index and count of every non-zero cell: most cells of a large K are zero."""
    flat = c.reshape(-1)
    index = np.flatnonzero(flat)
    return index // c.shape[-1], flat[index].astype(np.float64)


def _row_sums(rows: np.ndarray, terms: np.ndarray, n_rows: int) -> np.ndarray:
    return np.bincount(rows, weights=terms, minlength=n_rows)


def _per_row_count(
    f: Callable[..., np.ndarray], c: np.ndarray, *row_params: np.ndarray
) -> np.ndarray | None:
    """``f(n, *params)`` for every cell, from a (rows, max count + 1) table of its values.

    None when that table would be larger than the counts themselves.
    """
    top = int(c.max())
    if c.shape[0] * (top + 1) > max(c.size, 1 << 16):
        return None
    n = np.arange(top + 1, dtype=np.float64)[None, :]
    table = f(n, *(p[:, None] for p in row_params))
    return np.take_along_axis(table, c, axis=1)


def _chao_shen_terms(n: np.ndarray, coverage: np.ndarray, N: np.ndarray) -> np.ndarray:
    pa = coverage * n / N
    # 1 - (1 - pa)^N, the chance a symbol is seen at all (Horvitz-Thompson weight).
    # pa = 1: a single symbol, seen for certain. pa > 1 only in table cells for counts
    # above a row's N, which no cell looks up.
    with np.errstate(divide="ignore", invalid="ignore"):
        seen = -np.expm1(N * np.log1p(-pa))
    return np.divide(xlogy(pa, pa), seen, out=np.zeros(np.broadcast(pa, seen).shape), where=n > 0)


def chao_shen(c: np.ndarray) -> np.ndarray:
    """Chao-Shen (2003): -sum C p log(C p) / (1 - (1 - C p)^N), coverage C = 1 - f1/N.

    Horvitz-Thompson over coverage-adjusted frequencies; needs no K. Small bias down to
    N near K; with no singletons it is the plug-in estimate (and keeps its bias).
    """
    c = c.reshape(-1, c.shape[-1])
    N = _totals(c)
    singletons = np.count_nonzero(c == 1, axis=-1).astype(np.float64)
    # Chao & Shen: when every symbol is a singleton the coverage would be 0; use N - 1.
    singletons = np.where(singletons == N, N - 1, singletons)
    coverage = 1 - singletons / N
    terms = _per_row_count(_chao_shen_terms, c, coverage, N)
    if terms is not None:
        return -terms.sum(axis=-1)
    rows, n = _observed(c)
    return -_row_sums(rows, _chao_shen_terms(n, coverage[rows], N[rows]), c.shape[0])


def _shrinkage_terms(n: np.ndarray, lam: np.ndarray, N: np.ndarray, K: int) -> np.ndarray:
    p = lam / K + (1 - lam) * (n / N)
    return xlogy(p, p)


def shrinkage(c: np.ndarray, K: int | None = None) -> np.ndarray:
    """James-Stein shrinkage (Hausser & Strimmer 2009) towards the uniform 1/K.

    Plug-in entropy of lambda/K + (1 - lambda) n/N, lambda = (1 - sum u^2) /
    ((N - 1) sum (1/K - u)^2) clipped to [0, 1]. Biased towards log K: excellent for
    near-uniform truths, poor for skewed ones.
    """
    c = c.reshape(-1, c.shape[-1])
    N = _totals(c)
    K = c.shape[-1] if K is None else K
    sum_u2 = np.einsum("ij,ij->i", c, c).astype(np.float64) / N**2
    spread = np.maximum(sum_u2 - 1.0 / K, 0.0)  # sum_k (u_k - 1/K)^2 over all K cells
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = (1 - sum_u2) / ((N - 1) * spread)
    lam = np.where((N == 1) | (spread <= 1e-15 * sum_u2), 1.0, lam)
    lam = np.clip(lam, 0.0, 1.0)
    terms = _per_row_count(
        lambda n, weight, total: _shrinkage_terms(n, weight, total, K), c, lam, N
    )
    if terms is not None:
        # Cells beyond the width (an alphabet larger than the counts listed) are unseen.
        beyond = (K - c.shape[-1]) * xlogy(lam / K, lam / K)
        return -terms.sum(axis=-1) - beyond
    rows, n = _observed(c)
    unseen = K - np.bincount(rows, minlength=c.shape[0])
    # Every unseen cell gets the same lambda / K.
    seen = _row_sums(rows, _shrinkage_terms(n, lam[rows], N[rows], K), c.shape[0])
    return -seen - unseen * xlogy(lam / K, lam / K)


def zhang(c: np.ndarray) -> np.ndarray:
    """Zhang (2012): sum_v (1/v) Z_v, computed as psi(N) - (1/N) sum n psi(n).

    Bias decays exponentially in N for fixed K; low when much of the mass is unseen.
    """
    # Zhang's (2012) series sum_{v=1}^{N-n} (1/v) prod_{j=1}^{v} (1 - (n - 1)/(N - j))
    # equals psi(N) - psi(n) (Schurmann 2015), which is summed here in closed form.
    N = _totals(c)
    n_psi = _per_count(lambda n: np.where(n > 0, n * psi(np.maximum(n, 1.0)), 0.0), c)
    return psi(N) - n_psi.sum(axis=-1) / N


def nsb_mean(c: np.ndarray, K: int | None = None) -> np.ndarray:
    """NSB (Nemenman, Shafee & Bialek 2002) posterior mean; see :mod:`._nsb`."""
    return nsb(c, K)[0]


def _ignores_K(f: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def estimator(c: np.ndarray, K: int | None = None) -> np.ndarray:
        return f(c)

    return estimator


# Each maps counts (rows, width) to nats per row. K, when given, is the alphabet size for
# counts that list only some of the zero cells (the bootstrap draws observed cells only);
# only shrinkage and NSB depend on it.
ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {
    "plugin": _ignores_K(plugin),
    "miller_madow": _ignores_K(miller_madow),
    "jackknife": _ignores_K(jackknife),
    "grassberger": _ignores_K(grassberger),
    "chao_shen": _ignores_K(chao_shen),
    "shrinkage": shrinkage,
    "nsb": nsb_mean,
    "zhang": _ignores_K(zhang),
}

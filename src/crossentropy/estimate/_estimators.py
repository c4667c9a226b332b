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
    """``f(c)`` elementwise, computing ``f`` once per distinct count value.

    ``c`` is int64, or float64 when a row's total reaches 2**53 (see ``count_array``).
    """
    if c.dtype.kind in "iu" and int(c.max()) < max(1024, c.size):
        return f(np.arange(int(c.max()) + 1, dtype=np.float64))[c]
    values, inverse = np.unique(c, return_inverse=True)
    return f(values.astype(np.float64))[inverse].reshape(c.shape)


def _nlogn(n: np.ndarray) -> np.ndarray:
    return xlogy(n, n)


def _totals(c: np.ndarray) -> np.ndarray:
    # Summed in float64: an int64 sum would wrap at 2**63 (counts [2**62, 2**62]).
    return c.sum(axis=-1, dtype=np.float64)


def _nonnegative(x: np.ndarray) -> np.ndarray:
    """``x`` clipped below at +0.0 (NaN stays NaN; -0.0 becomes +0.0).

    For estimators that are non-negative in exact arithmetic, whose float evaluation
    (a difference of nearly equal sums for a single symbol) can land a rounding below 0;
    clipping to the bound that holds can only bring such a value closer to the truth.
    """
    return np.maximum(x, 0.0) + 0.0


def plugin(c: np.ndarray) -> np.ndarray:
    """Plug-in (maximum likelihood): log N - (1/N) sum n log n.

    The entropy of the observed frequencies; biased low, by about (K - 1)/2N nats when
    well sampled and by far more when N is below K.
    """
    N = _totals(c)
    if c.dtype.kind == "f":
        # Totals of 2**53 and more: log N - S / N would cancel about log10(N) of the 16
        # digits, so sum -p log p directly ([2**62, 2**62] gives log 2 exactly).
        p = c / N[:, None] if c.ndim > 1 else c / N
        return _nonnegative(-xlogy(p, p).sum(axis=-1))
    # Rounding can leave log N - N log N / N a hair below 0 for a single symbol.
    return _nonnegative(np.log(N) - _per_count(_nlogn, c).sum(axis=-1) / N)


def miller_madow(c: np.ndarray) -> np.ndarray:
    """Miller-Madow (Miller 1955): plug-in + (m - 1)/2N, m the observed symbols.

    Removes the first-order bias; still low when many symbols are unseen (m < K).
    """
    N = _totals(c)
    observed = np.count_nonzero(c, axis=-1)
    return plugin(c) + (observed - 1) / (2 * N)


def _log_ratio(n: np.ndarray) -> np.ndarray:
    """``log(n / (n - 1))`` = ``-log1p(-1 / n)``, accurate for large n (inf at n = 1)."""
    with np.errstate(divide="ignore"):
        return -np.log1p(-1.0 / np.maximum(n, 1.0))


def _jackknife_term(n: np.ndarray) -> np.ndarray:
    # n (n - 1) log(n / (n - 1)), 0 for n <= 1 (a singleton left out leaves no term).
    return np.where(n > 1, n * (n - 1) * _log_ratio(np.maximum(n, 2.0)), 0.0)


def jackknife(c: np.ndarray) -> np.ndarray:
    """Delete-one jackknife (Zahl 1977): N H - (N - 1)/N sum_j H_(-j), in closed form.

    Cancels the 1/N bias term; low when much of the mass is unseen. 0 for N = 1.
    """
    # Leaving out one sample of a symbol seen n times gives the plug-in entropy
    # H_(-i) = H + log1p(-1/N) - S / (N (N - 1)) + d(n_i) / (N - 1), S = sum n log n,
    # d(n) = n log n - (n - 1) log(n - 1). Averaged over the N samples and put into
    # H + (N - 1)(H - mean H_(-j)), the S and log n terms cancel exactly, leaving
    #     H_JK = H + (N - 1) r(N) - (1/N) sum_i n_i (n_i - 1) r(n_i),
    # r(n) = log(n / (n - 1)). Written so, nothing cancels catastrophically: the plain
    # form N H - (N - 1) mean H_(-j) loses every digit for one symbol seen 4e10 times.
    # For one symbol (n = N) the two correction terms are the same float expression,
    # so the estimate is exactly 0.
    N = _totals(c)
    correction = np.where(N > 1, (N - 1) * _log_ratio(np.maximum(N, 2.0)), 0.0)
    terms = _per_count(_jackknife_term, c).sum(axis=-1)
    estimate = plugin(c) + (correction - terms / N)
    # An entropy is never negative, so neither is its estimate: clipped at 0 (for one
    # symbol the closed form above is exactly 0 already).
    return np.where(N > 1, _nonnegative(estimate), 0.0)


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
    # Eq. 35 can fall below 0 where the entropy is small: one symbol seen twice gives
    # log 2 - G(2) = -0.036. An entropy is never negative, so the estimate is clipped to
    # 0, which is nearer the truth than any negative value.
    return _nonnegative(np.log(N) - _per_count(_grassberger_nG, c).sum(axis=-1) / N)


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
    if c.dtype.kind not in "iu":  # float64 counts (totals of 2**53 and more): no table
        return None
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
    # Every term is -x log x / w with x in (0, 1], w in (0, 1]: non-negative, but the sum
    # of zeros (one symbol) negates to -0.0, which _nonnegative makes +0.0.
    if terms is not None:
        return _nonnegative(-terms.sum(axis=-1))
    rows, n = _observed(c)
    return _nonnegative(-_row_sums(rows, _chao_shen_terms(n, coverage[rows], N[rows]), c.shape[0]))


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
    # In float64: the int64 square of a count above 3e9 would wrap.
    sum_u2 = np.einsum("ij,ij->i", c, c, dtype=np.float64) / N**2
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
        # A plug-in entropy of a distribution: >= 0 (and +0.0, not -0.0, for one symbol).
        return _nonnegative(-terms.sum(axis=-1) - beyond)
    rows, n = _observed(c)
    unseen = K - np.bincount(rows, minlength=c.shape[0])
    # Every unseen cell gets the same lambda / K.
    seen = _row_sums(rows, _shrinkage_terms(n, lam[rows], N[rows], K), c.shape[0])
    return _nonnegative(-seen - unseen * xlogy(lam / K, lam / K))


def zhang(c: np.ndarray) -> np.ndarray:
    """Zhang (2012): sum_v (1/v) Z_v, computed as psi(N) - (1/N) sum n psi(n).

    Bias decays exponentially in N for fixed K; low when much of the mass is unseen.
    """
    # Zhang's (2012) series sum_{v=1}^{N-n} (1/v) prod_{j=1}^{v} (1 - (n - 1)/(N - j))
    # equals psi(N) - psi(n) (Schurmann 2015), which is summed here in closed form.
    N = _totals(c)
    n_psi = _per_count(lambda n: np.where(n > 0, n * psi(np.maximum(n, 1.0)), 0.0), c)
    # A sum of non-negative terms (Zhang's series): only rounding takes it below 0.
    return _nonnegative(psi(N) - n_psi.sum(axis=-1) / N)


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

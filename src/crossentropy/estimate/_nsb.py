"""The Nemenman-Shafee-Bialek (NSB) entropy estimator, vectorised over a batch.

NSB puts a Dirichlet(beta, ..., beta) prior on the K probabilities and a hyperprior on
beta that makes the prior expected entropy xi(beta) = psi(K beta + 1) - psi(beta + 1)
uniform on [0, ln K]. The estimate is the posterior mean of the entropy,

    E[S | n] = int dxi rho(xi | n) E[S | n, beta(xi)] / int dxi rho(xi | n),
    rho = Gamma(K beta) / Gamma(N + K beta) prod_i Gamma(n_i + beta) / Gamma(beta),

a one-dimensional integral, done here in u = log(K beta) for every row at once: coarse
Gauss-Legendre nodes narrow the interval pass by pass to where the integrand is within
e**-36 of its peak, then the trapezoid rule on a uniform grid there integrates it. Sums
over the K cells are sums over the distinct count values weighted by how many cells hold
each (zero cells included), so a row costs O(distinct counts) per node, not O(K).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, psi

__all__ = ["nsb", "trigamma"]

# Coarse Gauss-Legendre nodes narrow the interval; a uniform grid integrates on it.
_COARSE = np.polynomial.legendre.leggauss(24)[0]
_UNIFORM = np.linspace(0.0, 1.0, 97)
_U_RANGE = (-50.0, 50.0)  # log(K beta): far past where any posterior has mass
_PASSES = 5
_DROP = 36.0  # nodes whose log integrand is this far below the peak carry no weight
_BUDGET = 1 << 21  # elements per (rows, nodes, distinct counts) temporary


_SHIFT = 10.0  # trigamma: recur up to here, then the asymptotic series
_SERIES = (
    1.0,
    1 / 2,
    1 / 6,
    0.0,
    -1 / 30,
    0.0,
    1 / 42,
    0.0,
    -1 / 30,
    0.0,
    5 / 66,
    0.0,
    -691 / 2730,
)


def trigamma(x: np.ndarray) -> np.ndarray:
    """psi_1(x) for x > 0, about 10x faster than ``scipy.special.polygamma(1, x)``.

    psi_1(x) = psi_1(x + 1) + 1 / x**2 carries x up to 10, where the asymptotic series
    sum_k B_k / x**(k+1) (Bernoulli numbers, B_1 = +1/2) is accurate to 1e-16.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros(x.shape)
    small = x < _SHIFT
    if small.any():
        xs = x[small]
        acc = np.zeros(xs.shape)
        for k in range(int(np.ceil(_SHIFT - xs.min()))):
            y = xs + k
            acc += np.where(y < _SHIFT, 1.0 / (y * y), 0.0)
        out[small] = acc
        x = x.copy()
        x[small] = xs + np.ceil(_SHIFT - xs)
    inv = 1.0 / x
    series = np.zeros(x.shape)
    for coefficient in _SERIES[::-1]:
        series = series * inv + coefficient
    return out + series * inv


def _lgamma_ratio(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``log Gamma(x + v) - log Gamma(x)`` without cancellation at large ``x``."""
    x, v = np.broadcast_arrays(x, v)
    big = x >= 1e5
    if not big.any():
        return gammaln(x + v) - gammaln(x)
    out = np.empty(x.shape)
    small = ~big
    out[small] = gammaln(x[small] + v[small]) - gammaln(x[small])
    xb, vb = x[big], v[big]
    # Stirling's series for both terms, with log(x + v) = log x + log1p(v / x).
    out[big] = (
        vb * np.log(xb)
        + (xb + vb - 0.5) * np.log1p(vb / xb)
        - vb
        - vb / (12.0 * xb * (xb + vb))
        - (1.0 / (xb + vb) ** 3 - 1.0 / xb**3) / 360.0
    )
    return out


def _log_dxi_dbeta(beta: np.ndarray, K: int) -> np.ndarray:
    """``log d xi / d beta`` = ``log(K psi1(K beta + 1) - psi1(beta + 1))``."""
    out = np.empty(beta.shape)
    big = beta >= 100.0
    small = ~big
    b = beta[small]
    out[small] = np.log(K * trigamma(K * b + 1.0) - trigamma(b + 1.0))
    # The two trigammas cancel to leading order; their asymptotic series difference.
    b = beta[big]
    out[big] = np.log(
        (1 - 1 / K) / (2 * b**2) - (1 - 1 / K**2) / (6 * b**3) + (1 - 1 / K**4) / (30 * b**5)
    )
    return out


def _log_integrand(
    u: np.ndarray, values: np.ndarray, hist: np.ndarray, N: np.ndarray, K: int
) -> np.ndarray:
    """log of rho(beta | n) (d xi / d beta) (d beta / d u) at nodes ``u`` (rows, nodes)."""
    kappa = np.exp(u)
    beta = kappa / K
    log_rho = -_lgamma_ratio(kappa, N[:, None])
    terms = _lgamma_ratio(beta[:, :, None], values[:, None, :])
    log_rho += np.einsum("rgv,rv->rg", terms, hist)
    return log_rho + _log_dxi_dbeta(beta, K) + np.log(beta)


def _moments(
    u: np.ndarray, values: np.ndarray, hist: np.ndarray, N: np.ndarray, K: int
) -> tuple[np.ndarray, np.ndarray]:
    """E[S | n, beta] and E[S^2 | n, beta] at nodes ``u`` (Wolpert & Wolf 1995)."""
    beta = np.exp(u) / K
    A = N[:, None] + K * beta  # (rows, nodes)
    a = values[:, None, :] + beta[:, :, None]  # (rows, nodes, distinct)
    h = hist[:, None, :]
    psi_a1 = psi(a + 1.0)
    psi_A1 = psi(A + 1.0)
    psi_A2 = psi_A1 + 1.0 / (A + 1.0)
    ha = h * a
    first = psi_A1 - np.sum(ha * psi_a1, axis=-1) / A
    d = psi_a1 - psi_A2[:, :, None]
    had = ha * d
    trig_A2 = trigamma(A + 2.0)
    e = d + 1.0 / (a + 1.0)  # psi(a + 2) - psi(A + 2)
    cross = np.sum(had, axis=-1) ** 2 - np.sum(had * a * d, axis=-1)
    cross -= (A**2 - np.sum(ha * a, axis=-1)) * trig_A2
    diagonal = np.sum(ha * (a + 1.0) * (e**2 + trigamma(a + 2.0) - trig_A2[:, :, None]), axis=-1)
    second = (cross + diagonal) / (A * (A + 1.0))
    return first, second


def _integrate(values: np.ndarray, hist: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    rows = hist.shape[0]
    N = np.sum(hist * values, axis=1)
    lo = np.full(rows, _U_RANGE[0])
    hi = np.full(rows, _U_RANGE[1])
    for step in range(_PASSES):
        if step == _PASSES - 1:
            # The integrand is smooth and negligible at both ends: the trapezoid rule
            # on a uniform grid converges geometrically there, also for the slowly
            # decaying (exponential) tails that defeat a single Gauss-Legendre rule.
            u = lo[:, None] + (hi - lo)[:, None] * _UNIFORM[None, :]
            log_f = _log_integrand(u, values, hist, N, K)
            peak = log_f.max(axis=1, keepdims=True)
            break
        nodes = _COARSE
        G = nodes.size
        u = (lo + hi)[:, None] / 2 + (hi - lo)[:, None] / 2 * nodes[None, :]
        log_f = _log_integrand(u, values, hist, N, K)
        peak = log_f.max(axis=1, keepdims=True)
        keep = log_f > peak - _DROP
        first = np.argmax(keep, axis=1)
        last = G - 1 - np.argmax(keep[:, ::-1], axis=1)
        index = np.arange(rows)
        lo = np.where(first > 0, u[index, np.maximum(first - 1, 0)], lo)
        hi = np.where(last < G - 1, u[index, np.minimum(last + 1, G - 1)], hi)
    weights = np.exp(log_f - peak)
    weights /= weights.sum(axis=1, keepdims=True)
    first, second = _moments(u, values, hist, N, K)
    mean = np.sum(weights * first, axis=1)
    variance = np.sum(weights * second, axis=1) - mean**2
    return mean, np.sqrt(np.maximum(variance, 0.0))


def _compact(
    rows: np.ndarray, values: np.ndarray, hist: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row lists of (count value, cells holding it), padded with (0, 0) entries."""
    order = np.lexsort((values, rows))
    rows, values, hist = rows[order], values[order], hist[order]
    per_row = np.bincount(rows, minlength=n_rows)
    width = int(per_row.max())
    starts = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    rank = np.arange(rows.size) - starts[rows]
    out_values = np.zeros((n_rows, width))
    out_hist = np.zeros((n_rows, width))
    out_values[rows, rank] = values
    out_hist[rows, rank] = hist
    return out_values, out_hist


def _histogram(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct count values (zero included) of each row and how many cells hold each.

    Two (rows, width) arrays, ``width`` the most distinct values in any row.
    """
    n_rows = c.shape[0]
    top = int(c.max())
    if c.dtype.kind in "iu" and top < 4096 and n_rows * (top + 1) <= 1 << 26:
        offsets = (np.arange(n_rows, dtype=np.int64) * (top + 1))[:, None]
        dense = np.bincount((c + offsets).ravel(), minlength=n_rows * (top + 1))
        rows, values = np.divmod(np.flatnonzero(dense), top + 1)
        return _compact(rows, values, dense[rows * (top + 1) + values], n_rows)
    ordered = np.sort(c, axis=1)
    new = np.ones(ordered.shape, dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    rows, cols = np.nonzero(new)
    ends = np.append(cols[1:], 0)
    ends[np.append(rows[1:] != rows[:-1], True)] = c.shape[1]
    return _compact(rows, ordered[rows, cols], ends - cols, n_rows)


def nsb(c: np.ndarray, K: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NSB posterior mean and standard deviation (nats) of every row of counts ``c``.

    ``c`` is an int64 array of shape (rows, width). K, the alphabet size, is the width
    unless given: then the cells beyond the width are zeros.
    """
    n_rows, width = c.shape
    K = width if K is None else K
    if K == 1:  # one possible symbol: the entropy is 0, and the prior is a point
        return np.zeros(n_rows), np.zeros(n_rows)
    extra = K - width
    if extra > 0:  # a zero column gives every row an entry for the count 0
        c = np.pad(c, ((0, 0), (0, 1)))
        extra -= 1
    values, hist = _histogram(c)
    if extra > 0:
        hist[(values == 0) & (hist > 0)] += extra
    mean = np.empty(n_rows)
    std = np.empty(n_rows)
    size = max(1, _BUDGET // (_UNIFORM.size * values.shape[1]))
    for start in range(0, n_rows, size):
        block = slice(start, start + size)
        mean[block], std[block] = _integrate(values[block], hist[block], K)
    # A posterior mean of the entropy lies in [0, log K]; for one symbol seen very often
    # (1e15 times) E[S | n, beta] is a difference of digammas of about 35 that rounds a
    # hair outside. Clipping (and +0.0 for -0.0) only brings it nearer the exact value.
    return np.clip(mean, 0.0, np.log(K)) + 0.0, std

"""entropy and entropy_interval: the estimators' public face, batched over rows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import ndtri

from ._counts import Counts, count_vector
from ._estimators import ESTIMATORS
from ._nsb import nsb
from ._result import Estimate
from ._validate import (
    check_level,
    check_measure_base,
    check_method,
    check_positive_int,
    count_array,
)

__all__ = ["METHODS", "entropy", "entropy_interval"]

METHODS: tuple[str, ...] = (
    "plugin",
    "miller_madow",
    "jackknife",
    "grassberger",
    "chao_shen",
    "shrinkage",
    "nsb",
    "zhang",
)
_ALLOWED = ("auto", *METHODS)

# "auto" calls a row well sampled when it has this many samples per observed symbol...
_SAMPLES_PER_SYMBOL = 10
# ...and at most this fraction of its samples are singletons (Good-Turing: the
# probability mass of the unseen symbols is about f1 / N).
_SINGLETON_FRACTION = 0.01


def as_counts(counts: Any, name: str = "counts") -> tuple[np.ndarray, tuple[int, ...], bool]:
    """Counts as a checked (rows, K) int64 array, the batch shape, and whether K is known.

    K is known for an array (its last axis) and for a :class:`Counts` with an
    ``alphabet_size``; a ``Counts`` without one only knows its observed symbols.
    """
    known = True
    if isinstance(counts, Counts):
        known = counts.alphabet_size is not None
        if counts.total == 0:
            raise ValueError(f"{name} is empty: no samples have been counted")
        counts = count_vector(counts, name)
    array = count_array(counts, name)
    batch = array.shape[:-1]
    return array.reshape(-1, array.shape[-1]), batch, known


def choose(c: np.ndarray, alphabet_known: bool) -> np.ndarray:
    """The method ``auto`` uses for every row of ``c``; see :func:`entropy`."""
    N = c.sum(axis=-1, dtype=np.float64)  # int64 would wrap at 2**63
    observed = np.count_nonzero(c, axis=-1)
    singletons = np.count_nonzero(c == 1, axis=-1)
    well = (_SAMPLES_PER_SYMBOL * observed <= N) & (singletons <= _SINGLETON_FRACTION * N)
    return np.where(well, "miller_madow", "nsb" if alphabet_known else "chao_shen")


def _shape(x: np.ndarray, batch: tuple[int, ...]) -> Any:
    x = x.reshape(batch)
    return x.item() if x.ndim == 0 else x


def _method_out(names: np.ndarray, batch: tuple[int, ...]) -> Any:
    distinct = np.unique(names)
    return str(distinct[0]) if distinct.size == 1 else names.reshape(batch)


def estimate_rows(c: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Every row's estimate (nats) by its method, and NSB's posterior sd (NaN elsewhere)."""
    value = np.empty(c.shape[0])
    std = None
    for name in np.unique(names):
        rows = names == name
        if name == "nsb":
            std = np.full(c.shape[0], np.nan)
            value[rows], std[rows] = nsb(c[rows])
        else:
            value[rows] = ESTIMATORS[str(name)](c[rows])
    return value, std


def resolve(c: np.ndarray, method: str, known: bool) -> np.ndarray:
    if method == "auto":
        return choose(c, known)
    return np.full(c.shape[0], method)


def entropy(counts: Any, *, method: str = "auto", base: float | None = None) -> Estimate:
    r"""Estimate the entropy of the distribution that produced ``counts``.

    The plug-in entropy of a sample, :math:`-\sum_i \hat p_i \log \hat p_i` with
    :math:`\hat p_i = n_i / N`, is biased low, by about :math:`(K - 1) / 2N` nats when
    the sample is large and by much more when it is not. The other methods correct it.

    Parameters
    ----------
    counts : array_like of int, shape (..., K), or Counts
        How often each of K symbols was seen; the last axis is the alphabet, zeros
        included (only ``nsb`` and ``shrinkage`` depend on K, the length). Leading axes
        are a batch. Counts are non-negative whole numbers, at least one per row.
    method : str, default "auto"
        One of ``"auto"``, ``"plugin"``, ``"miller_madow"``, ``"jackknife"``,
        ``"grassberger"``, ``"chao_shen"``, ``"shrinkage"``, ``"nsb"``, ``"zhang"``
        (see Methods). ``"auto"`` calls a row *well sampled* when it has at least 10
        samples per observed symbol (:math:`N \ge 10 m`) and at most 1% singletons
        (:math:`f_1 \le N / 100`) and uses ``miller_madow`` there, where all corrections
        agree; elsewhere ``nsb`` when the alphabet size K is known (an array; a
        :class:`Counts` with ``alphabet_size``), else ``chao_shen``, which needs no K.
        The result's ``method`` says which was used.
    base : float, optional
        Logarithm base: None for nats, 2 for bits; a finite number > 1.

    Returns
    -------
    Estimate
        ``value`` (float, or an array of the batch shape), ``method`` (the method used)
        and ``std_error`` (the posterior standard deviation for ``nsb``, else None).

    Raises
    ------
    ValueError
        For counts that are negative, not whole numbers, NaN, empty, or all zero in a
        row; for an unknown ``method``.

    See Also
    --------
    entropy_interval : the estimate with a bootstrap or posterior interval.
    crossentropy.entropy : the entropy of a known distribution.

    Notes
    -----
    Below, :math:`n_i` are the counts, :math:`N = \sum_i n_i`, :math:`m` the number of
    observed symbols (:math:`n_i > 0`), :math:`f_1` the number of singletons,
    :math:`\psi` the digamma function; sums run over observed symbols.

    Methods

    ``plugin``
        :math:`\hat H = \log N - \frac1N \sum_i n_i \log n_i`, the maximum-likelihood
        estimate. Biased low, :math:`-(K - 1) / 2N + O(N^{-2})` when well sampled, and
        badly so when N is below K.
    ``miller_madow``
        :math:`\hat H_{MM} = \hat H + (m - 1) / 2N` (Miller 1955, "Note on the bias of
        information estimates"). Removes the first-order bias; still low when many
        symbols are unseen, since m < K.
    ``jackknife``
        :math:`\hat H_{JK} = N \hat H - \frac{N - 1}{N} \sum_j \hat H_{-j}`, with
        :math:`\hat H_{-j}` the plug-in entropy without sample j (Zahl 1977, Ecology
        58). Removes the :math:`1/N` bias term; lower variance than Chao-Shen, more bias.
    ``grassberger``
        :math:`\hat H_G = \log N - \frac1N \sum_i n_i G(n_i)`,
        :math:`G(n) = \psi(n) + \frac{(-1)^n}{2}\,(\psi(\frac{n+1}{2}) - \psi(\frac n2))`
        (Grassberger 2003, "Entropy estimates from insufficient samplings",
        arXiv:physics/0307138, eq. 35). Less biased than Miller-Madow for small counts;
        still low when most of the mass is unseen.
    ``chao_shen``
        :math:`\hat H_{CS} = -\sum_i \frac{C \hat p_i \log(C \hat p_i)}
        {1 - (1 - C \hat p_i)^N}`, coverage :math:`C = 1 - f_1 / N` (:math:`f_1 = N - 1`
        if all samples are singletons): a Horvitz-Thompson sum over coverage-adjusted
        probabilities (Chao & Shen 2003, Environ. Ecol. Stat. 10). Needs no K; small
        bias down to N near K, low when N is far below K. With no singletons it is
        the plug-in estimate, so a well-sampled large alphabet keeps plug-in's
        :math:`-(K - 1)/2N`.
    ``shrinkage``
        The plug-in entropy of :math:`\lambda / K + (1 - \lambda)\hat p_i` with the
        James-Stein intensity :math:`\lambda = \frac{1 - \sum \hat p_i^2}{(N - 1)
        \sum (1/K - \hat p_i)^2}` clipped to [0, 1] (Hausser & Strimmer 2009, JMLR 10).
        Pulls towards the uniform: excellent when the truth is near uniform, biased
        (either way) when it is far from it, such as Zipf.
    ``nsb``
        The posterior mean of the entropy under a mixture of symmetric Dirichlet priors
        whose hyperprior makes the prior entropy uniform on :math:`[0, \log K]`
        (Nemenman, Shafee & Bialek 2002, NIPS 14), integrated numerically over
        :math:`\beta`; ``std_error`` is the posterior standard deviation. Needs K. The
        least biased here in undersampled regimes, unless the truth is heavy-tailed
        with K far above N.
    ``zhang``
        :math:`\hat H_Z = \sum_{v=1}^{N-1} \frac1v \frac{N^{v+1} (N-v-1)!}{N!}
        \sum_i \hat p_i \prod_{j=0}^{v-1} (1 - \hat p_i - \frac jN)`, Zhang's (2012,
        Neural Comput. 24)
        series, whose bias decays exponentially in N for fixed K; it equals
        :math:`\psi(N) - \frac1N \sum_i n_i \psi(n_i)` exactly (Schurmann 2015, Neural
        Comput. 27), which is what is computed.

    Examples
    --------
    >>> import numpy as np
    >>> from crossentropy.estimate import entropy
    >>> c = np.array([4, 2, 1, 1, 0])
    >>> entropy(c, method="plugin").value       # log 8 - (4 log 4 + 2 log 2) / 8
    1.21300756598
    >>> entropy(c, method="miller_madow").value  # + (4 - 1) / 16
    1.40050756598
    >>> est = entropy(c)                    # N = 8 < 10 m: undersampled
    >>> est.method, round(est.value, 4), round(est.std_error, 4)
    ('nsb', 1.3604, 0.1859)
    >>> entropy(np.array([[5, 5], [9, 1]]), method="plugin", base=2).value
    array([1.       , 0.4689956])
    """
    check_method(method, _ALLOWED)
    log_base = check_measure_base(base)
    c, batch, known = as_counts(counts)
    names = resolve(c, method, known)
    value, std = estimate_rows(c, names)
    if log_base is not None:
        value = value / log_base
        std = None if std is None else std / log_base
    return Estimate(
        value=_shape(value, batch),
        method=_method_out(names, batch),
        std_error=None if std is None else _shape(std, batch),
    )


def rng_from(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as error:
        raise ValueError(f"seed must be None, an integer or a numpy Generator: {error}") from None


def check_resamplable(c: np.ndarray, name: str) -> None:
    """Refuse rows of 2**63 samples or more: a multinomial resample takes an int64 N."""
    totals = c.sum(axis=-1, dtype=np.float64)
    too_many = totals >= 2.0**63
    if np.any(too_many):
        row = int(np.flatnonzero(too_many)[0])
        where = f" in row {row}" if c.shape[0] > 1 else ""
        raise ValueError(
            f"{name} sum to {totals[row]:.4g}{where}: the bootstrap resamples at most "
            "2**63 - 1 samples (an int64); use entropy() for the value alone"
        )


# Elements per block of resampled counts (int64): 64 MiB.
_BOOT_BUDGET = 1 << 23


def _resample(rng: np.random.Generator, n: np.ndarray, size: int) -> np.ndarray:
    """``size`` resamples of the observed counts ``n``: shape (size, len(n))."""
    N = int(n.sum())
    if n.size > N:  # index sampling: O(N) per resample instead of O(len(n))
        picks = rng.choice(n.size, size=(size, N), p=n / N)
        offsets = (np.arange(size) * n.size)[:, None]
        draws = np.bincount((picks + offsets).ravel(), minlength=size * n.size)
        return draws.reshape(size, n.size)
    return rng.multinomial(N, n / N, size=size)


def replicate(
    c: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    statistic: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """``statistic`` on ``n_boot`` bootstrap resamples of every row: shape (rows, n_boot).

    A resample draws the row's N samples with replacement, so only its observed cells can
    be non-zero; resamples are laid out over those cells plus one zero column, in blocks
    of at most ``_BOOT_BUDGET`` counts. ``statistic(draws, columns, row)`` gets the
    resampled counts (m, width), the original column of each (m, width) and the row each
    resample came from (m,).
    """
    n_rows = c.shape[0]
    width = int(np.count_nonzero(c, axis=1).max()) + 1
    out = np.empty((n_rows, n_boot))
    step = max(1, _BOOT_BUDGET // (n_boot * width))
    per_block = max(1, _BOOT_BUDGET // width)
    for start in range(0, n_rows, step):
        rows = np.arange(start, min(n_rows, start + step))
        columns = np.zeros((rows.size, width), dtype=np.int64)  # pad: a zero-count cell
        seen_counts = []
        for j, row in enumerate(rows):
            seen = np.flatnonzero(c[row])
            columns[j, : seen.size] = seen
            seen_counts.append(c[row, seen])
        if n_boot * width <= _BOOT_BUDGET or rows.size > 1:
            draws = np.zeros((rows.size, n_boot, width), dtype=np.int64)
            for j, n in enumerate(seen_counts):
                draws[j, :, : n.size] = _resample(rng, n, n_boot)
            values = statistic(
                draws.reshape(-1, width),
                np.repeat(columns, n_boot, axis=0),
                np.repeat(rows, n_boot),
            )
            out[rows] = values.reshape(rows.size, n_boot)
            continue
        # One row too large for a block: resample it a block at a time.
        n = seen_counts[0]
        for first in range(0, n_boot, per_block):
            size = min(per_block, n_boot - first)
            draws = np.zeros((size, width), dtype=np.int64)
            draws[:, : n.size] = _resample(rng, n, size)
            out[rows[0], first : first + size] = statistic(
                draws, np.repeat(columns, size, axis=0), np.full(size, rows[0])
            )
    return out


def entropy_interval(
    counts: Any,
    *,
    method: str = "auto",
    level: float = 0.95,
    n_boot: int = 1000,
    seed: Any = None,
    base: float | None = None,
) -> Estimate:
    r"""Estimate the entropy with an interval: bootstrap, or for NSB its posterior.

    Parameters
    ----------
    counts : array_like of int, shape (..., K), or Counts
        As for :func:`entropy`.
    method : str, default "auto"
        As for :func:`entropy`; ``auto`` chooses once per row, from the observed counts.
    level : float, default 0.95
        The nominal coverage, in (0, 1).
    n_boot : int, default 1000
        Bootstrap resamples (not used for ``nsb``).
    seed : int, numpy.random.Generator or None
        Seeds the bootstrap; the same seed gives the same interval.
    base : float, optional
        Logarithm base: None for nats, 2 for bits; a finite number > 1.

    Returns
    -------
    Estimate
        ``value`` and ``method`` as from :func:`entropy`; ``std_error`` (the bootstrap
        or posterior standard deviation); ``low``, ``high`` and ``level``.

    Notes
    -----
    For every method but ``nsb`` the interval is the normal bootstrap interval
    :math:`\hat H \pm z_{(1+\mathrm{level})/2}\, s^*`: resample the N samples with
    replacement (a multinomial draw from :math:`\hat p`) ``n_boot`` times, estimate on
    each resample, and take their standard deviation :math:`s^*` as the standard error.
    It is centred on the estimate, so it covers as well as the estimator's bias is small
    against its spread. Percentile and reflected ("basic") bootstrap intervals were
    measured and rejected: resamples from :math:`\hat p` re-apply a bias correction to
    an already corrected estimate and cover worse. No resample contains a symbol the
    sample lacks, so when much of the mass is unseen (N well below K for a heavy-tailed
    truth) the bias dominates and coverage falls short; ``benchmarks/RESULTS.md``
    measures it.

    For ``nsb`` the interval is the posterior mean :math:`\pm z_{(1+\mathrm{level})/2}`
    posterior standard deviations (a normal approximation to the NSB posterior),
    clipped to :math:`[0, \log K]`; it is deterministic.

    Examples
    --------
    >>> import numpy as np
    >>> from crossentropy.estimate import entropy_interval
    >>> c = np.array([30, 20, 10, 5, 5])
    >>> est = entropy_interval(c, method="miller_madow", seed=0)
    >>> round(est.value, 3), round(est.low, 3), round(est.high, 3)
    (1.405, 1.258, 1.552)
    >>> est == entropy_interval(c, method="miller_madow", seed=0)
    True
    """
    check_method(method, _ALLOWED)
    level = check_level(level)
    n_boot = check_positive_int(n_boot, "n_boot")
    log_base = check_measure_base(base)
    rng = rng_from(seed)
    c, batch, known = as_counts(counts)
    names = resolve(c, method, known)
    if np.any(names != "nsb"):
        check_resamplable(c[names != "nsb"], "counts")
    value, nsb_std = estimate_rows(c, names)
    std = np.zeros_like(value) if nsb_std is None else nsb_std
    low = np.empty_like(value)
    high = np.empty_like(value)
    spread = np.empty_like(value)
    z = float(ndtri((1 + level) / 2))
    K = c.shape[-1]
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        if name == "nsb":
            spread[rows] = std[rows]
            low[rows] = np.maximum(value[rows] - z * std[rows], 0.0)
            high[rows] = np.minimum(value[rows] + z * std[rows], math.log(K))
            continue
        estimator = ESTIMATORS[str(name)]

        def statistic(draws: np.ndarray, columns: Any, row: Any, f: Any = estimator) -> Any:
            return f(draws, K=K)

        replicas = replicate(c[rows], n_boot, rng, statistic)
        spread[rows] = replicas.std(axis=1, ddof=1) if n_boot > 1 else 0.0
        low[rows] = np.maximum(value[rows] - z * spread[rows], 0.0)
        high[rows] = np.maximum(value[rows] + z * spread[rows], low[rows])
    scale = 1.0 if log_base is None else 1.0 / log_base
    return Estimate(
        value=_shape(value * scale, batch),
        method=_method_out(names, batch),
        std_error=_shape(spread * scale, batch),
        low=_shape(low * scale, batch),
        high=_shape(high * scale, batch),
        level=level,
    )

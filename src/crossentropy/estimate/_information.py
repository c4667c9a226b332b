"""Held-out cross-entropy, KL divergence, conditional entropy and mutual information."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp, ndtri

from .._forms import Labels, Logits, LogProbs
from ._counts import Counts, count_vector
from ._entropy import (
    _ALLOWED,
    _method_out,
    _shape,
    check_resamplable,
    choose,
    estimate_rows,
    replicate,
    resolve,
    rng_from,
)
from ._estimators import ESTIMATORS
from ._result import Estimate
from ._validate import (
    check_labels,
    check_level,
    check_measure_base,
    check_method,
    check_model,
    check_positive_int,
    count_array,
)

__all__ = ["conditional_entropy", "cross_entropy", "kl_divergence", "mutual_information"]

_NAME = "samples_or_counts"


def _log_q(q: Any) -> np.ndarray:
    """The model's log-probabilities over the last axis, checked, float64."""
    if isinstance(q, (Logits, LogProbs)):
        values = np.asarray(q.values, dtype=np.float64)
        if values.ndim == 0 or values.shape[-1] == 0:
            raise ValueError("q must have a non-empty class axis")
        if isinstance(q, Logits):
            check_model(values, "logits")
            return values - logsumexp(values, axis=-1, keepdims=True)
        check_model(values, "log-probabilities")
        return values
    if isinstance(q, Labels):
        raise TypeError("q cannot be Labels: give the model as probabilities, Logits or LogProbs")
    values = np.asarray(q)
    if values.dtype.kind != "f":
        raise TypeError(f"q (probabilities) must be a floating-point array, got {values.dtype}")
    values = values.astype(np.float64)
    if values.ndim == 0 or values.shape[-1] == 0:
        raise ValueError("q must have a non-empty class axis")
    check_model(values, "probabilities")
    with np.errstate(divide="ignore"):
        return np.log(values)


def _class_counts(data: Any, K: int) -> np.ndarray:
    """Counts over the K classes of q, from Labels, a Counts or an array of counts."""
    if isinstance(data, Labels):
        y = np.asarray(data.values)
        if y.dtype.kind not in "iu":
            raise TypeError(f"{_NAME} labels must be integers, got dtype {y.dtype}")
        if y.ndim == 0 or y.shape[-1] == 0:
            raise ValueError(f"{_NAME} is empty: there are no samples")
        check_labels(y, _NAME, K)
        rows = y.reshape(-1, y.shape[-1]).astype(np.int64)
        offsets = (np.arange(rows.shape[0]) * K)[:, None]
        flat = np.bincount((rows + offsets).ravel(), minlength=rows.shape[0] * K)
        return flat.reshape(*y.shape[:-1], K)
    if isinstance(data, Counts):
        if data.total == 0:
            raise ValueError(f"{_NAME} is empty: no samples have been counted")
        outside = [s for s in data if not (isinstance(s, (int, np.integer)) and 0 <= s < K)]
        if outside:
            raise ValueError(
                f"{_NAME} counts symbol {outside[0]!r}, which is not a class index of q in [0, {K})"
            )
        dense = Counts(alphabet_size=K)
        dense.update(data)
        return count_vector(dense, _NAME)
    c = count_array(data, _NAME)
    if c.shape[-1] != K:
        raise ValueError(
            f"{_NAME} has {c.shape[-1]} classes along its last axis but q has {K}; "
            "pass samples as Labels(y)"
        )
    return c


def _held_out(c: np.ndarray, log_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the per-sample loss -log q(x) over counts ``c``."""
    c, log_q = np.broadcast_arrays(c, log_q)
    N = c.sum(axis=-1, dtype=np.float64)  # int64 would wrap at 2**63
    loss = np.where(c > 0, -log_q, 0.0)  # 0 * inf = 0 where a class was never seen
    mean = np.sum(c * loss, axis=-1) / N
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.where(c > 0, loss - mean[..., None], 0.0)
        variance = np.sum(c * spread**2, axis=-1) / (N - 1)
        se = np.sqrt(variance / N)
    se = np.where(np.isinf(mean), np.inf, np.where(N > 1, se, np.nan))
    return mean, se


def cross_entropy(
    samples_or_counts: Any, q: Any, *, base: float | None = None, level: float = 0.95
) -> Estimate:
    r"""The held-out loss of a model ``q`` on samples from the truth, with its error.

    .. math::
        \hat H(P, q) = -\frac1N \sum_{j=1}^N \log q(x_j) = -\frac1N \sum_k n_k \log q_k

    is an unbiased estimate of the cross-entropy :math:`H(P, q)` of the truth P that
    drew the samples :math:`x_j` and the model q (held out: q was not fitted on them).
    Its standard error is the sample standard deviation of the per-sample losses over
    :math:`\sqrt N`, and the interval is the normal one,
    :math:`\hat H \pm z_{(1+\mathrm{level})/2}\,\mathrm{se}`.

    Parameters
    ----------
    samples_or_counts : Labels, Counts or array_like of int, shape (..., K)
        The held-out samples: ``Labels(y)`` wrapping integer class indices in [0, K)
        (the last axis of ``y`` is the samples, leading axes a batch), a :class:`Counts`
        of class indices, or an array of counts over the K classes of ``q``.
    q : array_like, shape (..., K), or Logits / LogProbs
        The model's distribution over K classes; broadcasts against the counts' batch.
    base : float, optional
        Logarithm base: None for nats, 2 for bits; a finite number > 1.
    level : float, default 0.95
        Coverage of the interval.

    Returns
    -------
    Estimate
        ``value``, ``std_error``, ``low``, ``high``, ``level``; ``method`` is
        ``"held_out"``. The value is ``inf`` when a sample has probability 0 under q.

    Examples
    --------
    >>> import numpy as np
    >>> from crossentropy import Labels
    >>> from crossentropy.estimate import cross_entropy
    >>> q = np.array([0.5, 0.25, 0.25])
    >>> est = cross_entropy(Labels(np.array([0, 0, 1, 2])), q, base=2)
    >>> round(est.value, 12), round(est.std_error, 4)
    (1.5, 0.2887)
    >>> cross_entropy(np.array([2, 1, 1]), q, base=2).value
    1.5
    """
    level = check_level(level)
    log_base = check_measure_base(base)
    log_q = _log_q(q)
    c = _class_counts(samples_or_counts, log_q.shape[-1])
    mean, se = _held_out(c, log_q)
    z = float(ndtri((1 + level) / 2))
    finite = np.isfinite(mean)
    low = np.where(finite, np.maximum(mean - z * np.where(finite, se, 0.0), 0.0), mean)
    scale = 1.0 if log_base is None else 1.0 / log_base
    batch = mean.shape
    return Estimate(
        value=_shape(mean * scale, batch),
        method="held_out",
        std_error=_shape(se * scale, batch),
        low=_shape(low * scale, batch),
        high=_shape((mean + z * se) * scale, batch),
        level=level,
    )


def kl_divergence(
    samples_or_counts: Any,
    q: Any,
    *,
    method: str = "auto",
    base: float | None = None,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: Any = None,
) -> Estimate:
    r"""Estimate :math:`D(P \| q)` from samples of the truth P: cross-entropy minus entropy.

    .. math::
        \hat D = \hat H(P, q) - \hat S(P)

    with :math:`\hat H(P, q)` the held-out loss (:func:`cross_entropy`, unbiased) and
    :math:`\hat S(P)` the entropy estimate of ``method`` (:func:`entropy`). This is the
    part of a model's loss that better modelling could still remove. With the plug-in
    entropy this is the plug-in KL divergence, biased high by the plug-in entropy's bias;
    a bias-corrected entropy removes most of that. The estimate is not clipped and can be
    slightly negative when q is close to P.

    Parameters
    ----------
    samples_or_counts : Labels, Counts or array_like of int, shape (..., K)
        As for :func:`cross_entropy`; the K classes of ``q`` are the alphabet.
    q : array_like, shape (..., K), or Logits / LogProbs
        The model's distribution.
    method : str, default "auto"
        The entropy estimator (see :func:`entropy`).
    base : float, optional
        Logarithm base: None for nats, 2 for bits; a finite number > 1.
    level : float, default 0.95
        Coverage of the interval.
    n_boot : int, default 1000
        Bootstrap resamples for the interval. Each resample runs the entropy estimator
        again: with ``nsb`` (about 2 ms a row) lower it for large batches.
    seed : int, numpy.random.Generator or None
        Seeds the bootstrap; the same seed gives the same interval.

    Returns
    -------
    Estimate
        ``value``, ``method`` (the entropy estimator used), ``std_error`` (bootstrap),
        ``low``, ``high`` (the normal bootstrap interval :math:`\hat D \pm z s^*`, as in
        :func:`entropy_interval`; resampling the samples keeps the two terms'
        correlation), ``level``.

    Examples
    --------
    >>> import numpy as np
    >>> from crossentropy.estimate import kl_divergence
    >>> c = np.array([40, 30, 20, 10])
    >>> q = np.array([0.25, 0.25, 0.25, 0.25])
    >>> est = kl_divergence(c, q, method="miller_madow", seed=0)
    >>> round(est.value, 4), est.method
    (0.0914, 'miller_madow')
    """
    check_method(method, _ALLOWED)
    level = check_level(level)
    n_boot = check_positive_int(n_boot, "n_boot")
    log_base = check_measure_base(base)
    rng = rng_from(seed)
    log_q = _log_q(q)
    K = log_q.shape[-1]
    c = _class_counts(samples_or_counts, K)
    c, log_q = np.broadcast_arrays(c, log_q)
    batch = c.shape[:-1]
    c = c.reshape(-1, K)
    log_q = log_q.reshape(-1, K)
    names = resolve(c, method, True)
    check_resamplable(c, _NAME)
    held, _ = _held_out(c, log_q)
    entropy_value, _ = estimate_rows(c, names)
    value = held - entropy_value
    z = float(ndtri((1 + level) / 2))

    def statistic(draws: np.ndarray, columns: np.ndarray, row: np.ndarray) -> np.ndarray:
        held_out, _ = _held_out(draws, log_q[row[:, None], columns])
        entropy_value = np.empty(draws.shape[0])
        for name in np.unique(names[row]):
            pick = names[row] == name
            entropy_value[pick] = ESTIMATORS[str(name)](draws[pick], K=K)
        return held_out - entropy_value

    replicas = replicate(c, n_boot, rng, statistic)
    with np.errstate(invalid="ignore"):
        spread = replicas.std(axis=1, ddof=min(1, n_boot - 1))
    finite = np.isfinite(value)
    spread = np.where(finite, spread, np.inf)
    # An infinite value means a sample the model gives probability 0: then D(P || q) is
    # +inf for certain (P puts mass there), so the interval is [+inf, +inf], not
    # inf - inf = NaN.
    low = np.where(finite, value - z * np.where(finite, spread, 0.0), value)
    high = np.where(finite, value + z * np.where(finite, spread, 0.0), value)
    scale = 1.0 if log_base is None else 1.0 / log_base
    return Estimate(
        value=_shape(value * scale, batch),
        method=_method_out(names, batch),
        std_error=_shape(spread * scale, batch),
        low=_shape(low * scale, batch),
        high=_shape(high * scale, batch),
        level=level,
    )


# ------------------------------------------------------------------- paired samples


def _codes(values: Any, name: str) -> tuple[np.ndarray, int]:
    """Integer codes 0..k-1 for the distinct values of a 1-D sequence of samples."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be a sequence of samples, got a single string")
    array = None
    try:
        candidate = np.asarray(values)
        if candidate.dtype.kind in "biufUS" and candidate.ndim == 1:
            if not isinstance(values, np.ndarray) and candidate.dtype.kind in "US":
                # np.asarray turns mixed lists into strings; keep only true string lists.
                if all(isinstance(v, str) for v in values):
                    array = candidate
            else:
                array = candidate
        elif candidate.ndim > 1 and isinstance(values, np.ndarray):
            raise ValueError(f"{name} must be one-dimensional, got shape {candidate.shape}")
    except (TypeError, ValueError) as error:
        if "one-dimensional" in str(error):
            raise
    if array is not None:
        if array.size == 0:
            raise ValueError(f"{name} is empty: there are no samples")
        if array.dtype.kind == "f" and np.isnan(array).any():
            raise ValueError(f"{name} contain NaN: drop missing values before estimating")
        distinct, inverse = np.unique(array, return_inverse=True)
        return inverse.reshape(-1).astype(np.int64), int(distinct.size)
    table: dict[Any, int] = {}
    try:
        codes = np.fromiter((table.setdefault(v, len(table)) for v in values), dtype=np.int64)
    except TypeError as error:
        raise ValueError(f"{name} must be a sequence of hashable samples: {error}") from None
    if codes.size == 0:
        raise ValueError(f"{name} is empty: there are no samples")
    return codes, len(table)


def _joint(x: Any, y: Any) -> np.ndarray:
    """The contingency table of paired samples: (distinct x, distinct y) counts."""
    xc, kx = _codes(x, "x")
    yc, ky = _codes(y, "y")
    if xc.size != yc.size:
        raise ValueError(
            f"x and y must be paired samples of the same length: got {xc.size} and {yc.size}"
        )
    return np.bincount(xc * ky + yc, minlength=kx * ky).reshape(kx, ky)


def _pooled_method(table: np.ndarray, method: str) -> str:
    if method != "auto":
        return method
    return str(choose(table.reshape(1, -1), True)[0])


def _conditional(table: np.ndarray, method: str) -> float:
    n_x = table.sum(axis=1)
    per_context, _ = estimate_rows(table, np.full(table.shape[0], method))
    return float(np.sum(n_x * per_context) / n_x.sum())


def conditional_entropy(
    x: Any, y: Any, *, method: str = "auto", base: float | None = None
) -> Estimate:
    r"""Estimate :math:`H(Y \mid X)` from paired samples, bias-corrected per context.

    .. math::
        \hat H(Y \mid X) = \sum_x \frac{n_x}{N}\, \hat H(Y \mid X = x)

    where each context's entropy :math:`\hat H(Y \mid X = x)` is estimated with
    ``method`` from the counts of y among the :math:`n_x` samples with that x, over the
    alphabet of all distinct y values. The plug-in version is biased low by about
    :math:`(K_y - 1)` / 2N *per context*, which is why the correction is made in each.

    Parameters
    ----------
    x, y : array_like or sequence of hashable, shape (N,)
        Paired samples: ``(x[j], y[j])`` is one observation.
    method : str, default "auto"
        The entropy estimator (see :func:`entropy`). ``auto`` chooses once, by the rule
        of :func:`entropy` applied to the pooled (x, y) table.
    base : float, optional
        Logarithm base: None for nats, 2 for bits; a finite number > 1.

    Returns
    -------
    Estimate
        ``value`` and ``method``.

    Examples
    --------
    >>> from crossentropy.estimate import conditional_entropy
    >>> x = [0, 0, 0, 0, 1, 1, 1, 1]
    >>> y = ["a", "a", "b", "b", "c", "c", "c", "c"]
    >>> conditional_entropy(x, y, method="plugin", base=2).value
    0.5
    """
    check_method(method, _ALLOWED)
    log_base = check_measure_base(base)
    table = _joint(x, y)
    method = _pooled_method(table, method)
    value = _conditional(table, method)
    return Estimate(value=value if log_base is None else value / log_base, method=method)


def mutual_information(
    x: Any, y: Any, *, method: str = "auto", base: float | None = None
) -> Estimate:
    r"""Estimate the mutual information :math:`I(X; Y)` from paired samples.

    .. math::
        \hat I(X; Y) = \hat H(Y) - \hat H(Y \mid X)

    with both terms estimated by ``method`` (:func:`entropy`,
    :func:`conditional_entropy`). The plug-in estimate is biased high, by about
    :math:`(K_x - 1)(K_y - 1) / 2N` nats for independent variables; bias-corrected
    entropies remove most of it. Not clipped: it can be slightly negative.

    Parameters
    ----------
    x, y : array_like or sequence of hashable, shape (N,)
        Paired samples.
    method : str, default "auto"
        The entropy estimator; ``auto`` chooses once from the pooled (x, y) table.
    base : float, optional
        Logarithm base: None for nats, 2 for bits; a finite number > 1.

    Returns
    -------
    Estimate
        ``value`` and ``method``.

    Examples
    --------
    >>> from crossentropy.estimate import mutual_information
    >>> x = [0, 0, 0, 0, 1, 1, 1, 1]
    >>> y = ["a", "a", "b", "b", "c", "c", "c", "c"]
    >>> mutual_information(x, y, method="plugin", base=2).value
    1.0
    """
    check_method(method, _ALLOWED)
    log_base = check_measure_base(base)
    table = _joint(x, y)
    method = _pooled_method(table, method)
    marginal, _ = estimate_rows(table.sum(axis=0, keepdims=True), np.array([method]))
    value = float(marginal[0]) - _conditional(table, method)
    return Estimate(value=value if log_base is None else value / log_base, method=method)

"""Entropy, cross-entropy, KL and Jensen-Shannon divergence, and the identity H = D + S.

Every measure follows one path: :func:`_prepare` turns the arguments into
:class:`_Distribution` objects (event axis last, compute dtype, checked), and the measure
is a row reduction over their probabilities and log-probabilities.  Terms whose weight is
0 are 0 whatever the logarithm beside them (0 log 0 = 0, 0 log(0/q) = 0), and are written
so that their gradients are 0 too rather than NaN.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from functools import cached_property
from typing import Any, NamedTuple, TypeVar, cast

import array_api_compat
import numpy as np

from . import _checks, _fastpath
from ._array import (
    as_array,
    broadcast_shapes,
    check_axis,
    check_flag,
    check_measure_base,
    check_validate,
    checks_are_free,
    compute_dtype,
    dtype_name,
    namespace,
    refuse_masked,
)
from ._forms import Labels, Logits, LogProbs

__all__ = [
    "Decomposition",
    "cross_entropy",
    "decompose",
    "entropy",
    "js_divergence",
    "kl_divergence",
]


class Decomposition(NamedTuple):
    """``H(p, q) = D(p || q) + S(p)``: the three parts of a cross-entropy."""

    cross_entropy: Any
    entropy: Any
    kl_divergence: Any


_F = TypeVar("_F", bound=Callable[..., Any])
_FORMS = {Logits: "logits", LogProbs: "log-probabilities", Labels: "labels"}


class _Distribution:
    """One argument, ready to compute with: event axis last, compute dtype.

    ``prob`` and ``logprob`` are derived on first use; ``logprob`` is ``-inf`` exactly
    where ``prob`` is 0.  For labels, ``values`` holds the class indices (the batch shape,
    the indexing dtype, 0 where a label is out of range), ``valid`` where the label given
    lay in ``[0, num_classes)``, and ``num_classes`` the length of the event axis.
    """

    def __init__(
        self, xp: Any, form: str, values: Any, dtype: Any, num_classes: int = 0, valid: Any = None
    ) -> None:
        self.xp, self.form, self.values, self.dtype = xp, form, values, dtype
        self.num_classes, self.valid = num_classes, valid

    def rows(self, mask: Any) -> _Distribution:
        """The rows where ``mask`` (batch-shaped, NumPy) is true (probabilities only)."""
        return _Distribution(self.xp, self.form, self.values[mask], self.dtype, self.num_classes)

    @cached_property
    def one_hot(self) -> Any:
        xp = self.xp
        classes = xp.arange(self.num_classes, device=array_api_compat.device(self.values))
        return xp.expand_dims(self.values, axis=-1) == classes

    @cached_property
    def prob(self) -> Any:
        if self.form == "probabilities":
            return self.values
        if self.form == "labels":
            return self.xp.astype(self.one_hot, self.dtype)
        return self.xp.exp(self.logprob)

    @cached_property
    def logprob(self) -> Any:
        xp = self.xp
        if self.form == "probabilities":
            return _log(xp, self.values)
        if self.form == "logits":
            return _log_softmax(xp, self.values)
        if self.form == "labels":
            return _log(xp, self.prob)  # 0 and -inf, in the compute dtype
        return self.values


def _is_numpy(xp: Any) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def _log(xp: Any, x: Any) -> Any:
    """``log(x)`` with ``log 0 = -inf`` and a zero (not NaN) gradient at 0."""
    if _is_numpy(xp):
        return np.log(x)
    if array_api_compat.is_torch_array(x) and not x.requires_grad:
        return xp.log(x)
    positive = x > 0
    return xp.where(positive, xp.log(xp.where(positive, x, 1.0)), -math.inf)


def _log_softmax(xp: Any, z: Any) -> Any:
    """Stable log-softmax over the last axis; the library's own where it has one."""
    if array_api_compat.is_torch_array(z):
        import torch

        return torch.log_softmax(z, dim=-1)
    if array_api_compat.is_jax_array(z):
        import jax

        return jax.nn.log_softmax(z, axis=-1)
    shift = xp.max(z, axis=-1, keepdims=True)
    shift = xp.where(xp.isfinite(shift), shift, 0.0)
    shifted = z - shift
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def _sum_p_log(
    kind: _fastpath.Kind,
    p: _Distribution,
    q: _Distribution,
    logs: Callable[[_Distribution, _Distribution], Any],
) -> Any:
    """``sum_i p_i logs(p, q)_i`` over the last axis, where ``logs`` gives ``log p`` (self;
    ``q`` is then ``p``), ``log q`` (cross) or ``log(p / q)`` (ratio).

    NumPy float64 probabilities go through :mod:`._fastpath`; rows that met ``0 * log 0``
    there (NaN), or an overflowing ratio (inf), are redone with :func:`_weighted_sum`.
    """
    fast = p.form == q.form == "probabilities" and _fastpath.applies(p.values, q.values)
    if not fast:
        return _weighted_sum(p.xp, p.prob, logs(p, q))
    rows = _fastpath.weighted_log_sums(kind, p.values, q.values)
    redo = ~np.isfinite(rows) if kind == "ratio" else np.isnan(rows)
    if redo.any():
        p_redo, q_redo = p.rows(redo), q.rows(redo)
        rows[redo] = _weighted_sum(np, p_redo.prob, logs(p_redo, q_redo))
    return rows[()]


def _weighted_sum(xp: Any, w: Any, v: Any) -> Any:
    """``sum_i w_i v_i`` over the last axis, taking ``0 * v_i = 0`` for any ``v_i``.

    That is the limit of ``x log x`` and ``x log(x/y)`` at ``x = 0``.  Only
    ``0 * (+-inf or NaN)`` is replaced, so gradients stay finite (d/dw at w = 0 is the
    finite v where there is one) and the expression stays traceable.
    """
    if array_api_compat.is_torch_array(w) and not (w.requires_grad or v.requires_grad):
        # No gradient to keep finite: zero the products at w = 0 in place, two passes
        # fewer (about twice as fast on the CPU).
        products = w * v
        products.masked_fill_(w == 0, 0.0)
        return products.sum(dim=-1)
    v = xp.where((w == 0) & ~xp.isfinite(v), 0.0, v)
    return xp.sum(w * v, axis=-1)


def _log_ratio(p: _Distribution, q: _Distribution) -> Any:
    """``log(p / q)``, accurate where ``p`` and ``q`` are close.

    There ``log p - log q`` cancels (D ~ 1e-15 came out 5% off), while
    ``log1p((p - q) / q)`` keeps every digit: ``p - q`` is exact.  Where either is 0 the
    limits come from the logs (-inf, +inf, or NaN for 0/0, which the weight 0 masks); the
    double ``where`` keeps gradients finite.
    """
    if not p.form == q.form == "probabilities":
        return p.logprob - q.logprob
    xp = p.xp
    both = (p.values > 0) & (q.values > 0)
    q_safe = xp.where(both, q.values, 1.0)
    close = xp.log1p((xp.where(both, p.values, 1.0) - q_safe) / q_safe)
    # (p - q) / q overflows for subnormal q: the difference of logs is exact enough there.
    return xp.where(both & xp.isfinite(close), close, p.logprob - q.logprob)


def _log_q_at_labels(p: _Distribution, q: _Distribution) -> Any:
    """``log q[y]`` for labels ``y``: a gather instead of a sum over one-hot rows; NaN
    where a label is out of range (only reachable with ``validate=False``)."""
    xp = q.xp
    logq = q.logprob
    batch = np.broadcast_shapes(tuple(p.values.shape), tuple(logq.shape[:-1]))
    y = xp.broadcast_to(p.values, batch)
    logq = xp.broadcast_to(logq, (*batch, logq.shape[-1]))
    gathered = xp.take_along_axis(logq, xp.expand_dims(y, axis=-1), axis=-1)[..., 0]
    return _nan_where_invalid(p, gathered)


def _nan_where_invalid(p: _Distribution, rows: Any) -> Any:
    """``rows`` with NaN where the label ``p`` is out of range; a no-op for other forms.

    An elementwise ``where`` over the batch, not a check: it needs no host
    synchronisation, so it runs under ``validate=False`` and ``jit`` too.
    """
    if p.form != "labels":
        return rows
    xp = p.xp
    valid = xp.broadcast_to(p.valid, tuple(rows.shape))
    return xp.where(valid, rows, math.nan)


def _kl_rows(p: _Distribution, q: _Distribution) -> Any:
    xp = p.xp
    if p.form == "labels":  # a point mass has entropy 0: D(p || q) = H(p, q) = -log q[y]
        kl = 0.0 - _log_q_at_labels(p, q)
    else:
        kl = _sum_p_log("ratio", p, q, _log_ratio)
    # Rounding can leave a sum of terms a hair below 0; D(p || q) >= 0 (Gibbs).
    return xp.where(kl < 0, 0.0, kl)


# 0.0 - x, not -x: a certain outcome has entropy 0.0, not -0.0.
def _entropy_rows(p: _Distribution) -> Any:
    return 0.0 - _sum_p_log("self", p, p, lambda p, _: p.logprob)


def _cross_entropy_rows(p: _Distribution, q: _Distribution) -> Any:
    if p.form == "labels":
        return 0.0 - _log_q_at_labels(p, q)
    return 0.0 - _sum_p_log("cross", p, q, lambda _, q: q.logprob)


# ----------------------------------------------------------------------------- preparation


def _unwrap(value: Any, name: str) -> tuple[str, Any]:
    form = _FORMS.get(type(value), "probabilities")
    if form == "labels" and name != "p":
        raise TypeError(
            f"{name} cannot be Labels: labels are a point mass on the data side p; "
            "give the model side as probabilities, Logits or LogProbs"
        )
    inner = value.values if form != "probabilities" else value
    refuse_masked(inner, name)
    return form, inner


def _check_dtype(xp: Any, x: Any, name: str, form: str) -> None:
    if form == "labels":
        if not xp.isdtype(x.dtype, "integral"):
            raise TypeError(
                f"{name} labels must be an integer array, got dtype {dtype_name(x.dtype)}"
            )
    elif not xp.isdtype(x.dtype, "real floating"):
        hint = "; wrap class indices as Labels(...)" if name == "p" else ""
        raise TypeError(
            f"{name} ({form}) must be a real floating-point array, "
            f"got dtype {dtype_name(x.dtype)}{hint}"
        )


class _Prepared(NamedTuple):
    xp: Any
    dists: tuple[_Distribution, ...]
    axis: int  # in the broadcast input, for keepdims


def _prepare(named: dict[str, Any], axis: Any, validate: bool | None) -> _Prepared:
    forms, raw = {}, {}
    for name, value in named.items():
        forms[name], raw[name] = _unwrap(value, name)
    xp = namespace(*raw.values())
    like = next((v for v in raw.values() if array_api_compat.is_array_api_obj(v)), None)
    arrays = {
        name: as_array(xp, v, like=like, floating=forms[name] != "labels", name=name)
        for name, v in raw.items()
    }
    for name, x in arrays.items():
        _check_dtype(xp, x, name, forms[name])
        if forms[name] != "labels" and x.ndim == 0:
            raise ValueError(f"{name} must have an event axis: got a 0-dimensional array")

    # Shapes align from the right like NumPy broadcasting; labels lack the event axis.
    ndims = {n: x.ndim + (forms[n] == "labels") for n, x in arrays.items()}
    ndim = max(ndims.values())
    axis_index = check_axis(axis, ndim)
    own_axis = {}
    for name, x in arrays.items():
        own_axis[name] = axis_index - (ndim - ndims[name])
        if own_axis[name] < 0:
            raise ValueError(f"axis {axis} is out of range for {name} with shape {tuple(x.shape)}")
    event = {n: arrays[n].shape[own_axis[n]] for n in arrays if forms[n] != "labels"}
    sizes = set(event.values())
    if len(sizes) > 1:
        described = ", ".join(f"{n} has {k}" for n, k in event.items())
        raise ValueError(
            f"p and q differ in their number of classes along axis {axis}: {described}"
        )
    num_classes = sizes.pop() if sizes else 0
    for name, k in event.items():
        if k == 0:
            raise ValueError(f"{name} has an empty event axis (length 0 along axis {axis})")
    batch = {
        n: tuple(x.shape)
        if forms[n] == "labels"
        else tuple(s for i, s in enumerate(x.shape) if i != own_axis[n])
        for n, x in arrays.items()
    }
    if len(batch) == 2:
        broadcast_shapes("p", batch["p"], "q", batch["q"])

    if validate is None:
        validate = checks_are_free(*arrays.values())
    if validate:
        check = {
            "probabilities": _checks.probabilities,
            "logits": _checks.logits,
            "log-probabilities": _checks.log_probabilities,
        }
        for name, x in arrays.items():
            if forms[name] == "labels":
                if num_classes:
                    _checks.labels(xp, x, name, num_classes)
            else:
                check[forms[name]](xp, x, name, own_axis[name], axis)

    floats = [x for n, x in arrays.items() if forms[n] != "labels"]
    dtype = compute_dtype(xp, *floats) if floats else xp.float64
    dists = []
    for name, x in arrays.items():
        if forms[name] == "labels":
            dists.append(_labels(xp, x, dtype, num_classes))
            continue
        x = xp.astype(xp.moveaxis(x, own_axis[name], -1), dtype, copy=False)
        if _is_numpy(xp):
            # NumPy sums pairwise only along a contiguous axis; along a strided one it
            # adds term after term (float32 entropy of 70,000 classes was 5e-6 off).
            x = np.ascontiguousarray(x)
        dists.append(_Distribution(xp, forms[name], x, dtype, num_classes))
    return _Prepared(xp, tuple(dists), axis_index)


def _labels(xp: Any, y: Any, dtype: Any, num_classes: int) -> _Distribution:
    """Labels of any integer dtype as indexing-dtype indices (torch gathers only int64).

    The range is found on the values as given, before the cast could wrap them (a uint64
    beyond int64); out-of-range labels gather class 0 and their rows are set to NaN.
    """
    valid = _checks.label_range(xp, y, num_classes)
    device = array_api_compat.device(y)
    index = xp.__array_namespace_info__().default_dtypes(device=device)["indexing"]
    zero = xp.zeros((), dtype=index, device=device)
    y = xp.where(valid, xp.astype(y, index, copy=False), zero)
    return _Distribution(xp, "labels", y, dtype, num_classes, valid)


def _finish(prep: _Prepared, rows: Any, base: float | None, keepdims: bool) -> Any:
    xp = prep.xp
    if base is not None:
        rows = rows / base
    if _is_numpy(xp):
        rows = np.asarray(rows)
    if keepdims:
        rows = xp.expand_dims(rows, axis=prep.axis)
    # NumPy's own reductions give scalars for 0-d results; so do we.
    return rows[()] if _is_numpy(xp) else rows


# ----------------------------------------------------------------------------- public API


def _options(base: Any, keepdims: Any, validate: Any) -> tuple[float | None, bool, bool | None]:
    """The shared options checked: ``log(base)`` (None for nats) and the two flags."""
    return (
        check_measure_base(base),
        check_flag(keepdims, "keepdims"),
        check_validate(validate),
    )


def _quiet(function: _F) -> _F:
    """Silence NumPy's warnings for log 0, inf - inf and 0 * inf: every such value is
    either the intended limit or masked out before it reaches a result."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return function(*args, **kwargs)

    return cast(_F, wrapper)


@_quiet
def entropy(
    p: Any,
    *,
    axis: int = -1,
    base: float | None = None,
    keepdims: bool = False,
    validate: bool | None = None,
) -> Any:
    r"""Shannon entropy of ``p`` along ``axis``.

    .. math:: S(p) = -\sum_i p_i \log p_i

    Parameters
    ----------
    p : array_like, Logits, LogProbs or Labels
        Probabilities along ``axis`` (shape ``(..., K, ...)``), or a wrapped form.
        ``Labels`` are point masses: their entropy is 0.
    axis : int, optional
        The event axis. Default ``-1``.
    base : float, optional
        Logarithm base, a real number > 1: ``None`` for nats, ``2`` for bits.
    keepdims : bool, optional
        Keep the event axis with length 1.
    validate : bool or None, optional
        Check the data (NaN, negative values, normalisation, labels in range).  The
        default ``None`` checks wherever that costs no host synchronisation -- NumPy
        arrays and lists, CPU torch tensors outside ``torch.compile``, concrete JAX arrays
        on the CPU -- and skips it on accelerators and under ``jax.jit`` or
        ``torch.compile``; ``True`` always checks (a host synchronisation on a GPU),
        ``False`` never: the formula then runs on the data as given, unchecked, except
        that a row whose label lies outside ``[0, K)`` comes out NaN (on every backend;
        never another class's value, never an ``IndexError``).  The same rule as the
        losses of :mod:`crossentropy.torch`.

    Returns
    -------
    array
        Shape of ``p`` without ``axis``; float32 for half-precision input.

    Notes
    -----
    ``0 log 0 = 0``: zero probabilities contribute nothing, and their gradient is finite.
    Unlike ``scipy.stats.entropy``, ``p`` is not silently renormalised: a row that does
    not sum to 1 raises ``ValueError``.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.entropy([0.5, 0.5], base=2))
    1.0
    >>> float(ce.entropy([1.0, 0.0]))
    0.0
    """
    log_base, keepdims, validate = _options(base, keepdims, validate)
    if isinstance(p, Labels):
        return _labels_entropy(p, axis=axis, base=log_base, keepdims=keepdims)
    prep = _prepare({"p": p}, axis, validate)
    return _finish(prep, _entropy_rows(prep.dists[0]), log_base, keepdims)


def _labels_entropy(p: Labels, *, axis: Any, base: float | None, keepdims: bool) -> Any:
    # A point mass has entropy 0; the number of classes is irrelevant.
    refuse_masked(p.values, "p")
    xp = namespace(p.values)
    y = as_array(xp, p.values, like=None, floating=False, name="p")
    _check_dtype(xp, y, "p", "labels")
    axis_index = check_axis(axis, y.ndim + 1)
    zeros = xp.zeros(y.shape, dtype=_default_float(xp, y), device=array_api_compat.device(y))
    return xp.expand_dims(zeros, axis=axis_index) if keepdims else zeros


def _default_float(xp: Any, y: Any) -> Any:
    info = xp.__array_namespace_info__()
    return info.default_dtypes(device=array_api_compat.device(y))["real floating"]


@_quiet
def cross_entropy(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    base: float | None = None,
    keepdims: bool = False,
    validate: bool | None = None,
) -> Any:
    r"""Cross-entropy of the model ``q`` under the data ``p``.

    .. math:: H(p, q) = -\sum_i p_i \log q_i = D(p \,\|\, q) + S(p)

    Parameters
    ----------
    p : array_like, Logits, LogProbs or Labels
        The data (target, reference) side, shape ``(..., K, ...)``; ``Labels`` has the
        shape without the event axis.
    q : array_like, Logits or LogProbs
        The model side, broadcastable with ``p`` over the non-event axes.
    axis, base, keepdims, validate
        As in :func:`entropy`.

    Returns
    -------
    array
        The broadcast shape without ``axis``.

    Notes
    -----
    ``0 log 0 = 0`` wherever ``p_i = 0`` (so ``-inf`` logits for classes the data never
    takes are fine); ``p_i > 0`` where ``q_i = 0`` gives ``+inf``.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.cross_entropy([0.5, 0.5], [0.25, 0.75], base=2))  # -(log2 1/4 + log2 3/4)/2
    1.207518749639422
    >>> float(ce.cross_entropy(ce.Labels(0), ce.Logits([0.0, 0.0])))
    0.6931471805599453
    """
    log_base, keepdims, validate = _options(base, keepdims, validate)
    prep = _prepare({"p": p, "q": q}, axis, validate)
    return _finish(prep, _cross_entropy_rows(*prep.dists), log_base, keepdims)


@_quiet
def kl_divergence(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    base: float | None = None,
    keepdims: bool = False,
    validate: bool | None = None,
) -> Any:
    r"""Kullback-Leibler divergence of the model ``q`` from the data ``p``.

    .. math:: D(p \,\|\, q) = \sum_i p_i \log \frac{p_i}{q_i}

    Arguments in the mathematical order: ``kl_divergence(p, q)`` is D(p || q).
    (``torch.nn.functional.kl_div(input, target)`` takes them the other way round, with
    ``input`` in log space.)

    Parameters
    ----------
    p : array_like, Logits, LogProbs or Labels
        The data side, shape ``(..., K, ...)``.
    q : array_like, Logits or LogProbs
        The model side.
    axis, base, keepdims, validate
        As in :func:`entropy`.

    Returns
    -------
    array
        The broadcast shape without ``axis``; never negative.

    Notes
    -----
    Summed from its own terms, never as ``H - S`` (which cancels catastrophically and
    can go negative), then clamped at 0 against rounding.  ``0 log(0/q) = 0``;
    ``p_i > 0`` with ``q_i = 0`` gives ``+inf``.  The gradient with respect to logits
    ``z`` in ``kl_divergence(p, Logits(z))`` is ``softmax(z) - p``.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.kl_divergence([0.5, 0.5], [0.9, 0.1], base=2))  # doctest: +NUMBER
    0.736965594166
    >>> float(ce.kl_divergence([1.0, 0.0], [0.5, 0.5]))  # log 2
    0.6931471805599453
    """
    log_base, keepdims, validate = _options(base, keepdims, validate)
    prep = _prepare({"p": p, "q": q}, axis, validate)
    return _finish(prep, _kl_rows(*prep.dists), log_base, keepdims)


@_quiet
def js_divergence(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    base: float | None = None,
    keepdims: bool = False,
    validate: bool | None = None,
) -> Any:
    r"""Jensen-Shannon divergence between ``p`` and ``q``.

    .. math:: \mathrm{JS}(p, q) = \tfrac12 D(p \,\|\, m) + \tfrac12 D(q \,\|\, m),
              \quad m = \tfrac12 (p + q)

    Symmetric, finite, between 0 and ``log 2`` (1 bit).

    Parameters
    ----------
    p : array_like, Logits, LogProbs or Labels
    q : array_like, Logits or LogProbs
    axis, base, keepdims, validate
        As in :func:`entropy`.

    Returns
    -------
    array
        The broadcast shape without ``axis``.

    Notes
    -----
    The divergence, not its square root: ``scipy.spatial.distance.jensenshannon``
    returns the Jensen-Shannon *distance*, ``sqrt(js_divergence)``.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.js_divergence([1.0, 0.0], [0.0, 1.0], base=2))
    1.0
    """
    log_base, keepdims, validate = _options(base, keepdims, validate)
    prep = _prepare({"p": p, "q": q}, axis, validate)
    return _finish(prep, _js_rows(*prep.dists), log_base, keepdims)


def _js_rows(p: _Distribution, q: _Distribution) -> Any:
    """``JS(p, q)`` over the last axis, one term per class, without forming ``m``.

    ``m = (p + q) / 2`` underflows: halving a subnormal ``q`` next to ``p = 0`` gives 0,
    and ``q log(q / 0) = inf`` made nearly identical rows come out at the maximum
    ``log 2``.  With ``s = p + q`` (0 only where both are) and ``d = (p - q) / s``, the
    class's term ``p log(p/m) + q log(q/m)`` is

        s/2 * (2 d atanh(d) + log1p(-d^2))          (= s/2 * (d^2 + d^4/6 + ...))

    which is positive and accurate to a few units of rounding however close ``p`` and
    ``q`` are (summing ``p log(p/m)`` and ``q log(q/m)`` apart cancels to first order in
    ``p - q``).  Where they are far apart (``|d| > 1/2``, and always where one is 0) there
    is no cancellation, and ``log m = logaddexp(log p, log q) - log 2`` in log space
    cannot underflow.  The double ``where`` keeps gradients finite.
    """
    xp = p.xp
    pp, qq, lp, lq = p.prob, q.prob, p.logprob, q.logprob
    total = pp + qq
    diff = pp - qq
    close = (2 * xp.abs(diff) <= total) & (total > 0)  # |d| <= 1/2
    # d is scale-free: tiny pairs are scaled by 2**100 and the rest of ``close`` divided
    # by 1, since the derivative of (p - q) / s has a 1 / s that overflows for a subnormal s
    # (float32 softmax rows hold many) and turned the gradient into NaN.
    scale = xp.where(close & (total < 2.0**-60), 2.0**100, xp.ones_like(total))
    scaled_total = total * scale
    dc = xp.where(close, diff * scale, 0.0) / xp.where(close, scaled_total, 1.0)
    near = scaled_total / 2 * (2 * dc * xp.atanh(dc) + xp.log1p(-dc * dc)) / scale
    both_zero = (lp == -math.inf) & (lq == -math.inf)
    log_m = xp.logaddexp(xp.where(both_zero, 0.0, lp), xp.where(both_zero, 0.0, lq)) - math.log(2.0)
    far = _weighted(xp, pp, lp - log_m) + _weighted(xp, qq, lq - log_m)
    js = xp.sum(xp.where(close, near, far), axis=-1) / 2
    return _nan_where_invalid(p, xp.clip(js, 0.0, math.log(2.0)))


def _weighted(xp: Any, w: Any, v: Any) -> Any:
    """``w * v`` elementwise with ``0 * v = 0`` for any ``v`` (see :func:`_weighted_sum`)."""
    return w * xp.where((w == 0) & ~xp.isfinite(v), 0.0, v)


@_quiet
def decompose(
    p: Any,
    q: Any,
    *,
    axis: int = -1,
    base: float | None = None,
    keepdims: bool = False,
    validate: bool | None = None,
) -> Decomposition:
    r"""Split the cross-entropy into the data's entropy and the KL divergence.

    .. math:: H(p, q) = D(p \,\|\, q) + S(p)

    In learning, ``p`` is the data distribution P(D) and ``q`` the model's: S(P(D)) is
    fixed by the data, so minimising the cross-entropy minimises the divergence.

    Parameters
    ----------
    p, q, axis, base, keepdims, validate
        As in :func:`cross_entropy`.

    Returns
    -------
    Decomposition
        ``(cross_entropy, entropy, kl_divergence)``; the entropy and the divergence are
        each summed from their own terms and ``cross_entropy`` is their sum, so the
        identity holds to rounding of one addition.

    Examples
    --------
    >>> import crossentropy as ce
    >>> h, s, d = ce.decompose([0.5, 0.5], [0.9, 0.1])
    >>> round(float(h), 6), round(float(s), 6), round(float(d), 6)
    (1.203973, 0.693147, 0.510826)
    """
    log_base, keepdims, validate = _options(base, keepdims, validate)
    prep = _prepare({"p": p, "q": q}, axis, validate)
    dp, dq = prep.dists
    kl_rows = _kl_rows(dp, dq)
    # S(p) has p's batch shape; the three parts share the broadcast one.
    entropy_rows = prep.xp.broadcast_to(_entropy_rows(dp), kl_rows.shape)
    s = _finish(prep, entropy_rows, log_base, keepdims)
    d = _finish(prep, kl_rows, log_base, keepdims)
    return Decomposition(s + d, s, d)

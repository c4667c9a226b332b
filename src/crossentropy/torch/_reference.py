"""Plain-PyTorch losses: the definition, the dense implementation and the test oracle.

Everything here is ordinary differentiable PyTorch, so autograd, double backward,
``gradcheck`` and ``torch.compile`` work on it unchanged.  The public functions in
:mod:`crossentropy.torch` check their arguments and then call these; the fused
:func:`~crossentropy.torch.linear_cross_entropy` is tested against them in float64.

Conventions shared by every loss (``C`` classes, class dimension last):

* ``z = softcap * tanh(logits / softcap) / temperature`` first (the softcap when it is
  given, the temperature ``T`` always, 1 by default); ``lse = logsumexp(z)`` and
  ``log q = z - lse``.  Everything below, the z-loss included, sees this ``z``.
* The smoothed target is ``t' = (1 - eps) t + eps / C`` (``t`` one-hot for labels).
* Per token, with class weights ``w`` (ones when not given):
  ``H = -sum_c w_c t'_c log q_c`` (for labels exactly ``F.cross_entropy``'s
  ``(1 - eps) w_y (-log q_y) + eps / C sum_c w_c (-log q_c)``), and
  ``D = H - S`` with ``S = -sum_c w_c t'_c log t'_c`` the weighted entropy of ``t'``.
* ``0 * log 0 = 0``: a class of zero target weight contributes nothing even where its
  logit is ``-inf`` (:func:`times`), in the loss and in the gradient.
* A token's weight ``omega`` is ``w[y]`` for labels (0 when ignored) and 1 for
  probabilities.  The z-loss adds ``z_loss * lse**2`` to every counted token, whatever
  its class weight (as Liger-Kernel and PaLM weight every token alike).
* The reductions are :mod:`._reduction`'s: ``mean`` divides the cross-entropy part by
  ``sum omega`` (``F.cross_entropy``'s rule; the number of tokens for probability
  targets) and the z-loss part by the number of counted tokens, or both by
  ``normalize_by``; a zero divisor gives 0, not NaN.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from . import _reduction
from ._options import Options, compute_dtype

__all__ = [
    "TokenLosses",
    "cross_entropy",
    "entropy_loss",
    "loss",
    "times",
    "token_losses",
    "transformed",
]


class TokenLosses(NamedTuple):
    """Per-token parts of a loss, each of the batch shape.

    ``loss`` the cross-entropy (or divergence) part, ``omega`` its token weight,
    ``z`` the z-loss part ``z_loss * lse**2`` (0 for ignored tokens; None without
    z-loss) and ``counted`` 1.0 for counted tokens, 0.0 for ignored ones.
    """

    loss: torch.Tensor
    omega: torch.Tensor
    z: torch.Tensor | None
    counted: torch.Tensor


def transformed(logits: torch.Tensor, opts: Options) -> torch.Tensor:
    """``z = softcap(logits) / temperature`` in the compute dtype."""
    z = logits.to(compute_dtype(logits.dtype))
    if opts.softcap is not None:
        z = opts.softcap * torch.tanh(z / opts.softcap)
    if opts.temperature != 1.0:
        z = z / opts.temperature
    return z


def times(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u * v`` with ``0 * inf = 0`` (as ``0 log 0 = 0``), differentiable in both.

    Where ``u == 0`` and ``v`` is infinite the product and both derivatives are 0, so a
    zero target probability at a ``-inf`` logit (``log q = -inf``) gives neither a NaN
    loss nor a NaN gradient.
    """
    return u * torch.where((u == 0) & torch.isinf(v), 0.0, v)


def _label_entropy(
    eps: float, num_classes: int, w_y: torch.Tensor, w_total: torch.Tensor | float
) -> torch.Tensor:
    """Weighted entropy of the smoothed one-hot target, in closed form (no (N, C) tensor)."""
    on = 1.0 - eps + eps / num_classes
    off = eps / num_classes
    on_term = torch.special.xlogy(torch.tensor(on, dtype=w_y.dtype), on)
    off_term = torch.special.xlogy(torch.tensor(off, dtype=w_y.dtype), off)
    return -(on_term * w_y + off_term * (w_total - w_y))


def token_losses(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: Options,
    divergence: bool = False,
) -> TokenLosses:
    """Per-token losses, token weights ``omega`` and z-loss terms (:class:`TokenLosses`).

    ``divergence=False`` gives the cross-entropy ``H``, ``True`` the KL divergence
    ``D = H - S``.  The ``S`` term never involves the logits, so the two have the same
    gradient with respect to them, to the bit.  Labels outside ``[0, C)`` that are not
    ``ignore_index`` give NaN.
    """
    z = transformed(logits, opts)
    dtype = z.dtype
    num_classes = z.shape[-1]
    eps = opts.label_smoothing
    lse = torch.logsumexp(z, dim=-1)
    logq = z - lse.unsqueeze(-1)
    w = None if weight is None else weight.to(dtype)
    if target.dtype.is_floating_point:
        t = target.to(dtype)
        if eps:
            t = (1.0 - eps) * t + eps / num_classes
        wt = t if w is None else t * w
        loss = -times(wt, logq).sum(-1)
        if divergence:
            loss = loss + (wt * torch.log(torch.where(t > 0, t, 1.0))).sum(-1)
        omega = torch.ones_like(lse)
        counted_f = omega
    else:
        y = target.long()
        counted = y != opts.ignore_index
        valid = (y >= 0) & (y < num_classes)
        safe = torch.where(counted & valid, y, 0)
        nll = -logq.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        w_y = torch.ones_like(nll) if w is None else w[safe]
        omega = torch.where(counted, w_y, 0.0)
        # times: a token of weight 0 (ignored, or w_y = 0) adds 0 even at a -inf logit.
        loss = times((1.0 - eps) * omega, nll)
        if eps:
            smooth = -logq.sum(-1) if w is None else -times(w, logq).sum(-1)
            loss = loss + torch.where(counted, (eps / num_classes) * smooth, 0.0)
        if divergence:
            w_total = float(num_classes) if w is None else w.sum()
            entropy = _label_entropy(eps, num_classes, w_y, w_total)
            loss = loss - torch.where(counted, entropy, 0.0)
        loss = torch.where(counted & ~valid, torch.nan, loss)
        counted_f = counted.to(dtype)
    return TokenLosses(loss, omega, _reduction.z_terms(lse, counted_f, opts), counted_f)


def reduced(parts: TokenLosses, opts: Options) -> torch.Tensor:
    """The reduction of :func:`token_losses`' parts under ``opts``."""
    divs = _reduction.divisors(parts.omega, parts.counted, opts)
    return _reduction.reduce(parts.loss, parts.z, opts, divs)


def loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: Options,
    divergence: bool = False,
) -> torch.Tensor:
    """Cross-entropy ``H(t', softmax(z))`` (or ``divergence``: ``D``), reduced, unchecked."""
    return reduced(token_losses(logits, target, weight, opts, divergence), opts)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    **options: Any,
) -> torch.Tensor:
    """:func:`loss` with flat keywords (those of :class:`Options`), for the tests' oracle."""
    return loss(logits, target, weight, Options(**options))


def entropy_loss(logits: torch.Tensor, mask: torch.Tensor | None, opts: Options) -> torch.Tensor:
    """The model's entropy ``-sum_c q_c log q_c`` per token, ``mask`` selecting tokens."""
    logq = torch.log_softmax(transformed(logits, opts), dim=-1)
    out = -times(logq.exp(), logq).sum(-1)
    if mask is None:
        omega = torch.ones_like(out)
    else:
        omega = mask.to(out.dtype)
        out = torch.where(mask, out, 0.0)
    return _reduction.reduce(out, None, opts, _reduction.divisors(omega, omega, opts))


def token_stats(
    logits: torch.Tensor, target: torch.Tensor | None, opts: Options
) -> tuple[torch.Tensor, ...]:
    """The eight per-token statistics of :func:`crossentropy.torch.token_stats` on flat
    ``logits`` (N, V), by ordinary autograd (``log_prob``/``correct`` 0/False without a
    target)."""
    z = transformed(logits, opts)
    lse = torch.logsumexp(z, -1)
    logq = z - lse.unsqueeze(-1)
    q = logq.exp()
    entropy = -times(q, logq).sum(-1)
    collision = q.square().sum(-1)
    argmax = z.detach().argmax(-1)
    top_log_probs, top_indices = logq.detach().topk(opts.top_k, dim=-1)
    if target is None:
        log_prob = torch.zeros_like(lse)
        correct = torch.zeros(lse.shape, dtype=torch.bool, device=lse.device)
    else:
        counted = target != opts.ignore_index
        valid = (target >= 0) & (target < z.shape[-1])
        safe = torch.where(counted & valid, target, 0)
        picked = logq.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        log_prob = torch.where(counted, picked, 0.0)
        log_prob = torch.where(counted & ~valid, torch.nan, log_prob)
        correct = counted & (argmax == target)
    return log_prob, entropy, lse, collision, argmax, correct, top_indices, top_log_probs

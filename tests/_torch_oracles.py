"""Float64 oracles shared by the torch tests, written from ``F.log_softmax(softcap(x) / T)``.

A plain module, like ``_measures_support.py``: the test modules import it by name
(``tests/conftest.py`` puts this folder on ``sys.path`` for the ones in subfolders, and
the spawned workers of ``tests/torch_distributed`` inherit that path).  Nothing here is
built from ``crossentropy.torch._reference`` or the library's chunk maths: each oracle
materialises the logits ``z = c tanh(x / c) / T`` (softcap ``c`` optional) in float64 and
takes its gradients from autograd.

* :func:`oracle`, the losses: the smoothed target ``t' = (1 - eps) t + eps / C``, per token
  ``H = -sum_c w_c t'_c log q_c`` (0 log 0 = 0), the divergence ``D = sum_c w_c t'_c log
  t'_c - sum_c w_c t'_c log q_c``, the z-loss ``lambda (logsumexp z)^2`` on every counted
  token (not class-weighted), and ``mean`` = ``sum H / sum omega + sum zloss / n``
  (``omega = w_y``, 0 when ignored, 1 for a probability row; ``n`` the counted tokens),
  or ``(sum H + sum zloss) / normalize_by``;
* :func:`entropy_oracle`, the entropy ``-sum_c q_c log q_c`` of each (unmasked) token;
* :func:`token_stats_oracle`, the eight per-token statistics of ``token_stats``;
* :func:`distillation_oracle`, a distillation loss with both distributions materialised.

The ``linear_*`` forms take the hidden states, the weight and a bias instead of logits.
Tests whose oracles follow another convention (the fuzz tests' handling of ``-inf``
logits and zero divisors, the distillation tests' TopK teachers) keep their own.
"""

from __future__ import annotations

import pytest

# pytest collects this module for doctests too: without torch it is skipped, not an error.
torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

F64 = torch.float64


def softcapped(x, cap):
    """``c tanh(x / c)``, or ``x`` without a softcap."""
    return x if cap is None else cap * torch.tanh(x / cap)


def linear_logits(hidden, weight, bias=None):
    """``h W^T + b`` in float64."""
    logits = hidden.double() @ weight.double().T
    return logits if bias is None else logits + bias.double()


def oracle(
    logits,
    target,
    *,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    temperature=1.0,
    normalize_by=None,
    divergence=False,
):
    """The loss (``divergence``: ``kl_loss``'s), in float64, from ``F.log_softmax`` alone."""
    x = logits.double()
    z = softcapped(x, softcap) / temperature
    logq = F.log_softmax(z, dim=-1)
    lse = torch.logsumexp(z, dim=-1)
    classes = z.shape[-1]
    w = torch.ones(classes, dtype=F64, device=x.device) if weight is None else weight.double()
    if target.dtype.is_floating_point:
        t = target.double()
        counted = torch.ones(z.shape[:-1], dtype=torch.bool, device=x.device)
        omega = counted.double()
    else:
        counted = target != ignore_index
        safe = torch.where(counted, target, 0)
        t = F.one_hot(safe, classes).double()
        omega = torch.where(counted, w[safe], 0.0)
    t = (1.0 - label_smoothing) * t + label_smoothing / classes
    wt = w * t
    token = -torch.where(wt == 0, 0.0, wt * logq).sum(-1)  # 0 log 0 = 0
    if divergence:
        token = token + (w * torch.special.xlogy(t, t)).sum(-1)
    token = torch.where(counted, token, 0.0)
    zterm = torch.where(counted, z_loss * lse.square(), 0.0)
    if reduction == "none":
        return token + zterm
    if reduction == "sum":
        return token.sum() + zterm.sum()
    if normalize_by is not None:
        return (token.sum() + zterm.sum()) / normalize_by
    return token.sum() / omega.sum() + zterm.sum() / counted.sum()


def linear_oracle(hidden, weight, target, *, bias=None, class_weight=None, **options):
    """:func:`oracle` of the logits ``h W^T + b`` (``class_weight`` its ``weight``)."""
    return oracle(linear_logits(hidden, weight, bias), target, weight=class_weight, **options)


def entropy_oracle(logits, *, mask=None, reduction="mean", softcap=None, temperature=1.0):
    """``entropy_loss`` in float64: per token ``-sum_c q_c log q_c``, masked tokens 0;
    ``mean`` over the unmasked tokens."""
    z = softcapped(logits.double(), softcap) / temperature
    logq = F.log_softmax(z, dim=-1)
    q = logq.exp()
    ent = -torch.where(q == 0, 0.0, q * logq).sum(-1)
    keep = torch.ones(ent.shape, dtype=torch.bool, device=ent.device) if mask is None else mask
    ent = torch.where(keep, ent, 0.0)
    if reduction == "none":
        return ent
    if reduction == "sum":
        return ent.sum()
    return ent.sum() / keep.sum()


def token_stats_oracle(
    logits, target=None, *, temperature=1.0, softcap=None, ignore_index=-100, top_k=0
):
    """The eight statistics of ``token_stats``, in float64; a dict by field name.

    Differentiable in ``logits``; ``0 log 0 = 0`` without a NaN gradient at ``-inf``.
    ``log_prob`` and ``correct`` are None without a target, the top-k fields without
    ``top_k``.
    """
    z = softcapped(logits.double(), softcap) / temperature
    logq = F.log_softmax(z, dim=-1)
    q = logq.exp()
    finite = torch.isfinite(logq)
    plogp = q * torch.where(finite, logq, torch.zeros_like(logq))
    out = {
        "entropy": -plogp.sum(-1),
        "logsumexp": torch.logsumexp(z, dim=-1),
        "collision": q.square().sum(-1),
        "argmax": z.detach().argmax(-1),
        "log_prob": None,
        "correct": None,
        "top_k_indices": None,
        "top_k_log_probs": None,
    }
    if target is not None:
        counted = target != ignore_index
        safe = torch.where(counted, target, torch.zeros_like(target))
        picked = logq.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        out["log_prob"] = torch.where(counted, picked, torch.zeros_like(picked))
        out["correct"] = counted & (out["argmax"] == target)
    if top_k:
        values, indices = logq.detach().topk(top_k, dim=-1)
        out["top_k_log_probs"], out["top_k_indices"] = values, indices
    return out


def linear_token_stats_oracle(hidden, weight, target=None, *, bias=None, **options):
    """:func:`token_stats_oracle` of the logits ``h W^T + b``."""
    return token_stats_oracle(linear_logits(hidden, weight, bias), target, **options)


def distillation_oracle(
    x, t, y, *, divergence, beta, temperature, cap, lam, reduction, teacher_cap=None
):
    """A distillation loss with both distributions materialised (``F.log_softmax``).

    ``x`` the student's and ``t`` the teacher's logits, each softcapped (``cap``,
    ``teacher_cap``), then divided by ``T``: ``q`` and ``p``.  Per token the divergence
    (``jsd`` with ``beta`` 0 is the forward KL and with 1 the reverse KL), then ``(1 - lam)
    D + lam CE(softcap(x), y)``; ignored tokens (-100) 0; ``mean`` over the counted ones.
    """
    z = softcapped(x, cap)
    t = softcapped(t, teacher_cap)
    lq, lp = F.log_softmax(z / temperature, -1), F.log_softmax(t / temperature, -1)
    q, p = lq.exp(), lp.exp()

    def kl(a, la, lb):
        return (a * (la - lb)).sum(-1)

    kind = {("jsd", 0.0): "forward_kl", ("jsd", 1.0): "reverse_kl"}.get((divergence, beta))
    kind = kind or divergence
    if kind == "forward_kl":
        d = kl(p, lp, lq)
    elif kind == "reverse_kl":
        d = kl(q, lq, lp)
    elif kind == "jsd":
        lm = (beta * p + (1 - beta) * q).log()
        d = beta * kl(p, lp, lm) + (1 - beta) * kl(q, lq, lm)
    elif kind == "skew_kl":
        d = kl(p, lp, (beta * p + (1 - beta) * q).log())
    elif kind == "skew_reverse_kl":
        d = kl(q, lq, (beta * q + (1 - beta) * p).log())
    else:
        d = 0.5 * (p - q).abs().sum(-1)
    counted = y != -100
    if lam:
        d = (1 - lam) * d + lam * F.cross_entropy(z, torch.where(counted, y, 0), reduction="none")
    d = torch.where(counted, d, 0.0)
    if reduction == "none":
        return d
    return d.sum() if reduction == "sum" else d.sum() / counted.sum()

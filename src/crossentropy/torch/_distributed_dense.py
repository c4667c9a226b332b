"""Vocabulary-parallel cross-entropy of a logits shard: the ``torch.autograd.Function``.

Forward walks the ``(N, V_r)`` shard a chunk of tokens at a time, gathering per-token
local statistics, then makes the two collectives of :func:`._distributed_core.combine`
and forms the per-token losses.  It saves the logits shard itself (the caller's tensor,
in its own dtype, not a copy) and ``O(N)`` statistics -- never a softmax.  Backward
recomputes ``softmax = exp(z - lse)`` chunk by chunk straight into the gradient buffer;
it needs no collective, since every term of ``dloss/dz_c`` is local once the per-token
``lse`` is known.

The Function returns per-token losses; the reduction is ordinary autograd outside it, so
backward always receives a per-token upstream gradient and is exact for any of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from . import _distributed_core as core
from ._reference import times

__all__ = ["Options", "apply"]


@dataclasses.dataclass(frozen=True)
class Options:
    layout: core.Layout
    group: Any
    soft: bool
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    chunk_size: int = 1024


def _capped(logits, a, b, buf, cap, keep=None):
    """The soft-capped compute-dtype logits of rows ``a:b``, in ``buf``."""
    z = buf[: b - a]
    z.copy_(logits[a:b])
    core.soft_cap_(z, cap, None if keep is None else keep[: b - a])
    return z


def _forward_stats(logits, target, weight, opts):
    """Per-token losses, token weights and what backward needs."""
    n_tok, width = logits.shape
    compute = core.compute_dtype(logits.dtype)
    rows = min(opts.chunk_size, max(n_tok, 1))
    buf = torch.empty(rows, width, dtype=compute, device=logits.device)
    return forward_stats(
        lambda a, b: _capped(logits, a, b, buf, opts.softcap),
        rows,
        n_tok,
        target,
        weight,
        opts,
        compute,
        logits.device,
    )


def forward_stats(logits_of, rows, n_tok, target, weight, opts, compute, device):
    """Per-token losses (without the z-loss), z-losses (0 for ignored tokens), token
    weights and what backward needs (``saved``).

    ``logits_of(a, b)`` gives the capped compute-dtype logits of tokens ``a:b`` in a
    reusable block (overwritten here); chunks are ``rows`` tokens.  Shared by the dense
    loss (a copy of the logits shard) and the fused one (a matrix product).
    """
    layout = opts.layout
    eps = opts.label_smoothing
    vocab = layout.vocab
    w = None if weight is None else weight.to(compute)
    zmax = torch.empty(n_tok, dtype=compute, device=device)
    sumexp = torch.empty_like(zmax)
    if opts.soft:
        total_t = torch.empty_like(zmax)
        dot = torch.empty_like(zmax)
        for a in range(0, n_tok, rows):
            b = min(a + rows, n_tok)
            z = logits_of(a, b)
            wt = _soft_weights(target[a:b], w, eps, vocab, compute)
            total_t[a:b] = wt.sum(1)
            dot[a:b] = times(wt, z).sum(1)  # 0 * -inf = 0: no mass, no term
            zmax[a:b], sumexp[a:b] = core.local_max_and_sumexp(z)
        shift, (s, t_sum, u_sum) = core.combine(zmax, [sumexp, total_t, dot], opts.group)
        lse = shift + s.log()
        loss = t_sum * lse - u_sum
        omega = torch.ones_like(lse)
        return loss, _z_terms(lse, None, opts), omega, (lse, t_sum)

    counted, valid, hit, local = core.label_positions(target, layout, opts.ignore_index)
    cols = [torch.empty_like(zmax)]
    if w is not None:
        cols.append(torch.empty_like(zmax))
    if eps:
        cols.append(torch.empty_like(zmax))
    for a in range(0, n_tok, rows):
        b = min(a + rows, n_tok)
        z = logits_of(a, b)
        stats = core.label_stats(z, hit[a:b], local[a:b], w, bool(eps))
        zmax[a:b], sumexp[a:b] = stats[0], stats[1]
        for col, value in zip(cols, stats[2:], strict=True):
            col[a:b] = value
    sums = [sumexp, *cols]
    if eps and w is not None:
        sums.append(w.sum().reshape(1))
    shift, sums = core.combine(zmax, sums, opts.group)
    lse = shift + sums[0].log()
    z_y = sums[1]
    pos = 2
    if w is not None:
        omega = torch.where(counted, sums[pos], 0.0)
        pos += 1
    else:
        omega = counted.to(compute)
    smooth_sum = None
    w_total: torch.Tensor | float = float(vocab)
    if eps:
        smooth_sum = sums[pos]
        if w is not None:
            w_total = sums[pos + 1]
    loss = core.label_loss(
        lse,
        z_y,
        omega,
        smooth_sum,
        w_total,
        counted,
        valid,
        eps=eps,
        vocab=vocab,
    )
    return loss, _z_terms(lse, counted, opts), omega, (lse, omega, w_total)


def _z_terms(lse, counted, opts):
    """``z_loss * lse^2`` per counted token, the same whatever its class weight."""
    if not opts.z_loss:
        return torch.zeros_like(lse)
    z = opts.z_loss * lse.square()
    return z if counted is None else torch.where(counted, z, 0.0)


def _soft_weights(t, w, eps, vocab, compute):
    """``w * ((1 - eps) t + eps / C)`` for a block of probability targets."""
    wt = t.to(compute)
    if eps:
        wt = (1.0 - eps) * wt + eps / vocab
    if w is not None:
        wt = wt * w
    return wt


class GradientOfChunk:
    """``G = dloss/dz`` of a chunk of capped logits, written over them in place.

    Built once per backward from what :func:`forward_stats` saved; shared by the dense
    and the fused loss.
    """

    def __init__(self, target, w, saved, w_total, opts, compute):
        self.target, self.w, self.opts, self.compute = target, w, opts, compute
        if opts.soft:
            self.lse, self.t_sum = saved
            self.counted = None
        else:
            self.lse, self.omega = saved[0], saved[1]
            self.w_total = saved[2] if len(saved) > 2 else w_total
            self.counted, _, self.hit, self.local = core.label_positions(
                target, opts.layout, opts.ignore_index
            )

    def mask(self, scale: torch.Tensor) -> torch.Tensor:
        """The per-token upstream gradient, 0 for ignored tokens."""
        return scale if self.counted is None else torch.where(self.counted, scale, 0.0)

    def __call__(self, z: torch.Tensor, a: int, b: int, s: torch.Tensor, sz: torch.Tensor) -> None:
        """``z`` becomes ``s dloss/dz + sz dzl/dz`` (loss and z-loss upstream gradients)."""
        opts = self.opts
        eps, vocab = opts.label_smoothing, opts.layout.vocab
        if opts.soft:
            wt = _soft_weights(self.target[a:b], self.w, eps, vocab, self.compute)
            lse = self.lse[a:b]
            coef = s * self.t_sum[a:b]
            if opts.z_loss:
                coef = coef + (2.0 * opts.z_loss) * sz * lse
            z.sub_(lse.unsqueeze(1)).exp_().mul_(coef.unsqueeze(1))
            z.sub_(wt * s.unsqueeze(1))
            return
        core.label_grad_(
            z,
            self.lse[a:b],
            s,
            sz,
            self.omega[a:b],
            self.counted[a:b],
            self.hit[a:b],
            self.local[a:b],
            self.w,
            self.w_total,
            eps=eps,
            vocab=vocab,
            z_loss=opts.z_loss,
        )


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, opts):  # type: ignore[override]
        loss, zl, omega, saved = _forward_stats(logits, target, weight, opts)
        ctx.opts = opts
        ctx.mark_non_differentiable(omega)
        w_total = saved[-1] if isinstance(saved[-1], torch.Tensor) else None
        ctx.w_total = None if w_total is not None else saved[-1]
        tensors = [t for t in saved if isinstance(t, torch.Tensor)]
        ctx.n_saved = len(tensors)
        ctx.save_for_backward(logits, target, weight, *tensors)
        return loss, zl, omega

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_z, _grad_omega):  # type: ignore[override]
        opts = ctx.opts
        logits, target, weight, *saved = ctx.saved_tensors
        compute = core.compute_dtype(logits.dtype)
        n_tok, width = logits.shape
        eps = opts.label_smoothing
        w = None if weight is None else weight.to(compute)
        scale = grad.to(compute)
        need_logits, need_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dlogits = torch.empty_like(logits) if need_logits else None
        dtarget = torch.empty_like(target) if need_target else None
        rows = min(opts.chunk_size, max(n_tok, 1))
        direct = logits.dtype == compute
        buf = None
        if not direct or opts.softcap is not None:
            buf = logits.new_empty(rows, width, dtype=compute)
        keep = None
        if opts.softcap is not None:
            keep = logits.new_empty(rows, width, dtype=compute)
        grad_ = GradientOfChunk(target, w, saved, ctx.w_total, opts, compute)
        scale = grad_.mask(scale)
        zscale = grad_.mask(grad_z.to(compute))
        lse = grad_.lse
        for a in range(0, n_tok, rows):
            b = min(a + rows, n_tok)
            s = scale[a:b]
            if buf is None:
                # float32/float64 logits without softcap: build the gradient in its own buffer.
                z = dlogits[a:b] if dlogits is not None else logits[a:b].clone()
                z.copy_(logits[a:b])
            else:
                z = _capped(logits, a, b, buf, opts.softcap, keep)
            if opts.soft and dtarget is not None:
                dt = (lse[a:b].unsqueeze(1) - z) * ((1.0 - eps) * s).unsqueeze(1)
                if w is not None:
                    dt = dt * w
                dtarget[a:b] = dt
            if dlogits is None:
                continue
            grad_(z, a, b, s, zscale[a:b])
            if keep is not None:
                z.mul_(keep[: b - a].square_().neg_().add_(1.0))
            if buf is not None:
                dlogits[a:b] = z
        return dlogits, dtarget, None, None


@torch.compiler.disable
def apply(logits, target, weight, opts):
    """Per-token losses, z-losses and token weights ``omega`` (N,) for the flat ``(N, V_r)``
    shard."""
    return _VocabParallelCrossEntropy.apply(logits, target, weight, opts)

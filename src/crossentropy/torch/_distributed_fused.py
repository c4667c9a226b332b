"""Vocabulary-parallel fused linear + cross-entropy: the ``torch.autograd.Function``.

Forward, chunk by chunk of tokens: ``z = h W_r^T + b_r`` (one ``(chunk, V_r)`` block,
reused), soft-capped, reduced to per-token local statistics; then the two collectives of
:func:`._distributed_core.combine`, and the per-token losses.  Only ``hidden``,
``weight``, ``bias``, ``target`` (all the caller's tensors) and the per-token ``lse`` are
saved.

Backward recomputes each block, turns it into ``G = dloss/dz`` with the global ``lse``,
and accumulates ``dh = G W_r`` (a partial sum over this slice), ``dW_r += G^T h`` and
``db_r += sum G``; one ``all_reduce`` SUM of ``dh`` over the group completes the hidden
gradient.  The gradient cannot be formed in the forward pass as the single-process
:func:`~crossentropy.torch.linear_cross_entropy` does, because ``G`` needs the global
``lse`` of every token of the chunk, known only after the collectives; doing them per
chunk would multiply their number.  So the price of two collectives in all is one
recomputed logits product: ``8 N D V_r`` FLOPs per rank instead of ``6 N D V_r``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from . import _distributed_core as core

__all__ = ["Options", "apply"]

#: Vocabulary rows per block when accumulating a half-precision weight gradient in float32.
_VOCAB_BLOCK = 4096


@dataclasses.dataclass(frozen=True)
class Options:
    layout: core.Layout
    group: Any
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    chunk_size: int = 1024
    reduce_hidden_grad: bool = True


class _Blocks:
    """The reused ``(chunk, V_r)`` buffers and the logits of one chunk."""

    def __init__(self, hidden, weight, bias, rows, softcap, keep_tanh):
        self.hidden, self.weight, self.bias, self.cap = hidden, weight, bias, softcap
        width = weight.shape[0]
        compute = core.compute_dtype(hidden.dtype)
        new = hidden.new_empty
        self.z = new(rows, width, dtype=compute)
        self.raw = new(rows, width) if compute != hidden.dtype else None
        self.tanh = new(rows, width, dtype=compute) if keep_tanh and softcap else None
        self.wt = weight.t()

    def logits(self, a: int, b: int) -> torch.Tensor:
        n = b - a
        z = self.z[:n]
        raw = z if self.raw is None else self.raw[:n]
        h = self.hidden[a:b]
        if self.bias is None:
            torch.mm(h, self.wt, out=raw)
        else:
            torch.addmm(self.bias, h, self.wt, out=raw)
        if self.raw is not None:
            z.copy_(raw)
        core.soft_cap_(z, self.cap, None if self.tanh is None else self.tanh[:n])
        return z


def _forward(hidden, weight, bias, target, opts):
    layout = opts.layout
    n_tok = hidden.shape[0]
    compute = core.compute_dtype(hidden.dtype)
    eps = opts.label_smoothing
    rows = min(opts.chunk_size, max(n_tok, 1))
    blocks = _Blocks(hidden, weight, bias, rows, opts.softcap, keep_tanh=False)
    counted, valid, hit, local = core.label_positions(target, layout, opts.ignore_index)
    new = hidden.new_empty
    zmax, sumexp, z_y = (new(n_tok, dtype=compute) for _ in range(3))
    zsum = new(n_tok, dtype=compute) if eps else None
    for a in range(0, n_tok, rows):
        b = min(a + rows, n_tok)
        z = blocks.logits(a, b)
        stats = core.label_stats(z, hit[a:b], local[a:b], None, bool(eps))
        zmax[a:b], sumexp[a:b], z_y[a:b] = stats[:3]
        if zsum is not None:
            zsum[a:b] = stats[3]
    sums = [sumexp, z_y] + ([zsum] if zsum is not None else [])
    shift, sums = core.combine(zmax, sums, opts.group)
    lse = shift + sums[0].log()
    omega = counted.to(compute)
    loss = core.label_loss(
        lse,
        sums[1],
        omega,
        sums[2] if eps else None,
        float(layout.vocab),
        counted,
        valid,
        eps=eps,
        vocab=layout.vocab,
        z_loss=opts.z_loss,
    )
    return loss, omega, lse


def _backward(hidden, weight, bias, target, lse, scale, opts, needs):
    layout = opts.layout
    n_tok, dim = hidden.shape
    width = weight.shape[0]
    dtype = hidden.dtype
    compute = core.compute_dtype(dtype)
    eps = opts.label_smoothing
    rows = min(opts.chunk_size, max(n_tok, 1))
    blocks = _Blocks(hidden, weight, bias, rows, opts.softcap, keep_tanh=True)
    counted, _, hit, local = core.label_positions(target, layout, opts.ignore_index)
    scale = torch.where(counted, scale.to(compute), 0.0)
    omega = counted.to(compute)
    new = hidden.new_zeros
    # The hidden gradient is a sum over the slices: accumulate and all-reduce it in the
    # compute dtype, so that half inputs are not summed across ranks in half precision.
    dh = new(n_tok, dim, dtype=compute) if needs[0] else None
    dw = new(width, dim, dtype=compute) if needs[1] else None
    db = new(width, dtype=compute) if needs[2] else None
    block = None
    if dw is not None and compute != dtype and width:
        block = hidden.new_empty(min(_VOCAB_BLOCK, width), dim)
    for a in range(0, n_tok, rows):
        b = min(a + rows, n_tok)
        z = blocks.logits(a, b)
        core.label_grad_(
            z,
            lse[a:b],
            scale[a:b],
            omega[a:b],
            counted[a:b],
            hit[a:b],
            local[a:b],
            None,
            float(layout.vocab),
            eps=eps,
            vocab=layout.vocab,
            z_loss=opts.z_loss,
        )
        if blocks.tanh is not None:
            z.mul_(blocks.tanh[: b - a].square_().neg_().add_(1.0))
        if db is not None:
            db += z.sum(0)
        g = z if blocks.raw is None else blocks.raw[: b - a].copy_(z)
        h = hidden[a:b]
        if dh is not None:
            if g.dtype == compute:
                torch.mm(g, weight, out=dh[a:b])
            else:
                dh[a:b] = torch.mm(g, weight)
        if dw is None:
            continue
        if block is None:
            dw.addmm_(g.t(), h)
            continue
        for v0 in range(0, width, block.shape[0]):
            v1 = min(v0 + block.shape[0], width)
            part = block[: v1 - v0]
            torch.mm(g[:, v0:v1].t(), h, out=part)
            dw[v0:v1] += part
    if dh is not None:
        if opts.reduce_hidden_grad:
            dist.all_reduce(dh, op=dist.ReduceOp.SUM, group=opts.group)
        dh = dh.to(dtype)
    if dw is not None:
        dw = dw.to(weight.dtype)
    if db is not None:
        db = db.to(bias.dtype)
    return dh, dw, db


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, opts):  # type: ignore[override]
        loss, omega, lse = _forward(hidden, weight, bias, target, opts)
        ctx.opts = opts
        ctx.mark_non_differentiable(omega)
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        return loss, omega

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_omega):  # type: ignore[override]
        hidden, weight, bias, target, lse = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        dh, dw, db = _backward(hidden, weight, bias, target, lse, grad, ctx.opts, needs)
        return dh, dw, db, None, None


@torch.compiler.disable
def apply(hidden, weight, bias, target, opts):
    """Per-token losses and token weights (N,) for flat ``hidden`` (N, D)."""
    return _VocabParallelLinearCrossEntropy.apply(hidden, weight, bias, target, opts)

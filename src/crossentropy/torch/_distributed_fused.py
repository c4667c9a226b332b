"""Vocabulary-parallel fused linear + cross-entropy: the ``torch.autograd.Function``.

Forward, chunk by chunk of tokens: ``z = h W_r^T + b_r`` (one ``(chunk, V_r)`` block,
reused), soft-capped, reduced to per-token local statistics; then the two collectives of
:func:`._distributed_core.combine`, and the per-token losses.  The statistics and the
chunk gradient are the dense loss's (:func:`._distributed_dense.forward_stats`,
:class:`._distributed_dense.GradientOfChunk`), for class indices or sharded probability
targets, with or without class weights.  Only the caller's tensors and per-token
statistics are saved.

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
from . import _distributed_dense as dense

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
    #: Probability targets sharded like the weight, else class indices.
    soft: bool = False


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


def _forward(hidden, weight, bias, target, class_weight, opts):
    """Per-token losses, token weights and what backward needs (see ``dense``)."""
    n_tok = hidden.shape[0]
    rows = min(opts.chunk_size, max(n_tok, 1))
    blocks = _Blocks(hidden, weight, bias, rows, opts.softcap, keep_tanh=False)
    compute = core.compute_dtype(hidden.dtype)
    return dense.forward_stats(
        blocks.logits, rows, n_tok, target, class_weight, opts, compute, hidden.device
    )


def _backward(
    hidden, weight, bias, target, class_weight, saved, w_total, scale, zscale, opts, needs
):
    n_tok, dim = hidden.shape
    width = weight.shape[0]
    dtype = hidden.dtype
    compute = core.compute_dtype(dtype)
    rows = min(opts.chunk_size, max(n_tok, 1))
    blocks = _Blocks(hidden, weight, bias, rows, opts.softcap, keep_tanh=True)
    w = None if class_weight is None else class_weight.to(compute)
    grad_ = dense.GradientOfChunk(target, w, saved, w_total, opts, compute)
    scale = grad_.mask(scale.to(compute))
    zscale = grad_.mask(zscale.to(compute))
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
        grad_(z, a, b, scale[a:b], zscale[a:b])
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
    def forward(ctx, hidden, weight, bias, target, class_weight, opts):  # type: ignore[override]
        loss, zl, omega, saved = _forward(hidden, weight, bias, target, class_weight, opts)
        ctx.opts = opts
        ctx.mark_non_differentiable(omega)
        # The summed class weight is a tensor with class weights, else the float C.
        tensors = [t for t in saved if isinstance(t, torch.Tensor)]
        ctx.w_total = None if len(tensors) == len(saved) else saved[-1]
        ctx.save_for_backward(hidden, weight, bias, target, class_weight, *tensors)
        return loss, zl, omega

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_z, _grad_omega):  # type: ignore[override]
        hidden, weight, bias, target, class_weight, *saved = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        dh, dw, db = _backward(
            hidden,
            weight,
            bias,
            target,
            class_weight,
            saved,
            ctx.w_total,
            grad,
            grad_z,
            ctx.opts,
            needs,
        )
        return dh, dw, db, None, None, None


@torch.compiler.disable
def apply(hidden, weight, bias, target, class_weight, opts):
    """Per-token losses, z-losses and token weights (N,) for flat ``hidden`` (N, D)."""
    return _VocabParallelLinearCrossEntropy.apply(hidden, weight, bias, target, class_weight, opts)

"""The vocabulary-parallel losses' ``torch.autograd.Function``\\ s, on the shared engine.

Both walk their tokens with the fused-chunk driver's blocks (:class:`._driver.Rows` over a
logits shard, :class:`._driver.Product` for ``hidden @ weight_shard.T + bias``) through
the chunk maths of :mod:`._heads`, whose combine step is here the two collectives of the
forward pass: an ``all_reduce`` MAX of the per-token maxima and one ``all_reduce`` SUM
of the packed per-token sums.  Forward gathers each chunk's statistics, combines them
once for all tokens, and forms the per-token losses; it saves the caller's tensors and
``O(N)`` results -- never a softmax.  Backward recomputes each block, turns it into
``G = dloss/dx`` with the global ``lse`` (:func:`._heads.gradient_`), and either writes
it out (the dense loss: no collective, every term is local once ``lse`` is known) or
accumulates ``dh``, ``dW`` and ``db`` (the fused loss), then sums ``dh`` over the group.

The gradient cannot be formed in the forward pass as the single-process fused loss
does, because ``G`` needs every token's global ``lse``, known only after the
collectives; doing them per chunk would multiply their number.  So the fused loss pays
one recomputed product: ``8 N D V_r`` FLOPs per rank instead of ``6 N D V_r``.

The Functions return per-token losses, z-losses and token weights; the reduction is
ordinary autograd outside them (:mod:`._reduction`), so backward always receives
per-token upstream gradients and is exact for any of them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from . import _reduction
from ._driver import Gradients, Product, Rows, chunk_rows, spans
from ._heads import Combined, Labels, Probabilities, chain_, combine, gradient_
from ._options import Options, compute_dtype

__all__ = ["dense", "fused"]


def _head(
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    opts: Options,
    width: int,
    rows: int,
    compute: torch.dtype,
) -> Labels | Probabilities:
    w = None if class_weight is None else class_weight.to(compute)
    if target.dtype.is_floating_point:
        buffer = torch.empty(rows, width, dtype=compute, device=target.device)
        return Probabilities(target, w, opts, width, buffer)
    return Labels(target, w, opts, width)


def _forward(source: Any, head: Labels | Probabilities, num_tokens: int, rows: int) -> Combined:
    """Statistics of every chunk, one combine across the group, the per-token results."""
    chunks = [head.stats(source.logits(a, b)[0], a) for a, b in spans(num_tokens, rows)]
    if not chunks:  # no tokens: the statistics of an empty block, for their shapes
        chunks = [head.stats(source.logits(0, 0)[0], 0)]
    columns = [torch.cat(column) for column in zip(*chunks, strict=True)]
    shift, sums = combine(columns[0], [*columns[1:], *head.scalars()], head.opts.parallel)
    return head.loss(shift, sums, 0)


def _outputs(part: Combined, counted: torch.Tensor, opts: Options) -> tuple:
    zl = _reduction.z_terms(part.lse, counted, opts)
    return part.loss, torch.zeros_like(part.loss) if zl is None else zl, part.omega


def _scales(counted: torch.Tensor, grad: torch.Tensor, grad_z: torch.Tensor, dtype) -> tuple:
    """The per-token upstream gradients of the loss and z-loss, 0 for ignored tokens."""
    return (
        torch.where(counted != 0, grad.to(dtype), 0.0),
        torch.where(counted != 0, grad_z.to(dtype), 0.0),
    )


class _Dense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, opts):  # type: ignore[override]
        num_tokens, width = logits.shape
        compute = compute_dtype(logits.dtype)
        soft = target.dtype.is_floating_point
        rows = chunk_rows(opts, num_tokens, width, 0, compute, soft)
        head = _head(target, weight, opts, width, rows, compute)
        part = _forward(Rows(logits, opts, rows, keep_tanh=False), head, num_tokens, rows)
        _, counted = _reduction.omega_and_counted(target, None, opts, compute)
        out = _outputs(part, counted, opts)
        ctx.opts, ctx.rows = opts, rows
        ctx.mark_non_differentiable(out[2])
        ctx.save_for_backward(logits, target, weight, counted, *part)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_z, _grad_omega):  # type: ignore[override]
        opts, rows = ctx.opts, ctx.rows
        logits, target, weight, counted, *saved = ctx.saved_tensors
        part = Combined(*saved)
        num_tokens, width = logits.shape
        compute = compute_dtype(logits.dtype)
        head = _head(target, weight, opts, width, rows, compute)
        s, sz = _scales(counted, grad, grad_z, compute)
        need_logits, need_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dlogits = torch.empty_like(logits) if need_logits else None
        dtarget = torch.empty_like(target) if need_target else None
        # float32/float64 logits without a transform: build the gradient in place.
        direct = dlogits is not None and logits.dtype == compute and opts.softcap is None
        source = Rows(logits, opts, rows, keep_tanh=True)
        eps = opts.label_smoothing
        for a, b in spans(num_tokens, rows):
            out = dlogits[a:b] if direct and dlogits is not None else None
            z, tanh = source.logits(a, b, out=out)
            if dtarget is not None:  # d/dt_c of sum_c u_c (lse - z_c), u = w ((1-eps) t + eps/V)
                dt = (part.lse[a:b].unsqueeze(1) - z) * ((1.0 - eps) * s[a:b]).unsqueeze(1)
                dtarget[a:b] = dt if head.w is None else dt * head.w
            if dlogits is None:
                continue
            gradient_(z, head, part.rows(a, b), a, s[a:b], sz[a:b])
            chain_(z, opts, tanh)
            if out is None:
                dlogits[a:b] = z
        return dlogits, dtarget, None, None


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, class_weight, opts):  # type: ignore[override]
        num_tokens, dim = hidden.shape
        width = weight.shape[0]
        compute = compute_dtype(hidden.dtype)
        soft = target.dtype.is_floating_point
        rows = chunk_rows(opts, num_tokens, width, dim, hidden.dtype, soft)
        head = _head(target, class_weight, opts, width, rows, compute)
        product = Product(hidden, weight, bias, opts, rows)
        part = _forward(product, head, num_tokens, rows)
        _, counted = _reduction.omega_and_counted(target, None, opts, compute)
        out = _outputs(part, counted, opts)
        ctx.opts, ctx.rows = opts, rows
        ctx.mark_non_differentiable(out[2])
        ctx.save_for_backward(hidden, weight, bias, target, class_weight, counted, *part)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, grad_z, _grad_omega):  # type: ignore[override]
        opts, rows = ctx.opts, ctx.rows
        hidden, weight, bias, target, class_weight, counted, *saved = ctx.saved_tensors
        part = Combined(*saved)
        num_tokens = hidden.shape[0]
        width = weight.shape[0]
        compute = compute_dtype(hidden.dtype)
        head = _head(target, class_weight, opts, width, rows, compute)
        s, sz = _scales(counted, grad, grad_z, compute)
        needs = tuple(ctx.needs_input_grad[:3])
        product = Product(hidden, weight, bias, opts, rows, keep_tanh=True)
        # The hidden gradient is a sum over the slices: accumulated and all-reduced in the
        # compute dtype, so that half inputs are not summed across ranks in half precision.
        grads = Gradients(hidden, weight, bias, needs, dh_dtype=compute)
        for a, b in spans(num_tokens, rows):
            z, tanh = product.logits(a, b)
            gradient_(z, head, part.rows(a, b), a, s[a:b], sz[a:b])
            chain_(z, opts, tanh)
            grads.add(product.staged(z), z, hidden[a:b], a, b)
        parallel = opts.parallel
        if grads.dh is not None and parallel.reduce_hidden_grad:
            dist.all_reduce(grads.dh, op=dist.ReduceOp.SUM, group=parallel.group)
        dh, dw, db = grads.finish(dh_dtype=hidden.dtype)
        return dh, dw, db, None, None, None


@torch.compiler.disable
def dense(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, opts: Options
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token losses, z-losses and token weights ``omega`` (N,) of the flat ``(N, V_r)``
    logits shard (``weight`` this rank's class weights)."""
    return _Dense.apply(logits, target, weight, opts)


@torch.compiler.disable
def fused(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    opts: Options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token losses, z-losses and token weights (N,) of flat ``hidden`` (N, D)."""
    return _Fused.apply(hidden, weight, bias, target, class_weight, opts)

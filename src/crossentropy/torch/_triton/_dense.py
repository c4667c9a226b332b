"""Host code of the dense losses: launch the row kernel, one ``torch.autograd.Function``.

With ``mean`` or ``sum`` and a gradient wanted, the forward pass writes the gradient
already scaled for the reduction (``1 / sum(omega)`` for ``mean``, a device scalar, so no
host synchronisation), and ``backward`` only multiplies it by the incoming gradient, on
the device and skipped there when that gradient is 1.  With ``none`` the per-token
upstream gradient is unknown in forward, so the forward pass computes only the losses
(one read of the logits) and ``backward`` runs the kernel again with it (one read, one
write): the same traffic as gradient-in-forward, and exact for any upstream gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import _kernels
from ._options import DenseOptions

__all__ = ["apply", "compute_dtype", "launch_rows", "scale_inplace"]

#: Largest block of classes one program loads at a time.
MAX_BLOCK = 8192


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(num_classes: int, override: int | None) -> int:
    if override is not None:
        return triton.next_power_of_2(max(1, int(override)))
    return min(MAX_BLOCK, triton.next_power_of_2(max(1, num_classes)))


def launch_rows(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    soft: bool,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    divergence: bool,
    grad: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the row kernel over ``x`` (R, C), last dimension contiguous.

    ``target`` is (R,) integer or (R, C) probabilities; ``scale`` a 0-d or (R,) tensor.
    When ``grad`` (R, C) is given (it may be ``x`` itself), the gradient of
    ``sum_i scale_i loss_i`` is written into it.  Returns the per-row losses and
    log-sum-exps in the compute dtype.
    """
    rows, num_classes = x.shape
    compute = compute_dtype(x.dtype)
    loss = torch.empty(rows, dtype=compute, device=x.device)
    lse = torch.empty(rows, dtype=compute, device=x.device)
    if rows == 0:
        return loss, lse
    has_grad = grad is not None
    # Unused pointers (no gradient, no class weights) point at x; the kernel never reads them.
    g_ptr, g_stride, s_ptr, s_stride = x, 0, loss, 0
    if grad is not None:
        if scale is None:
            scale = torch.ones((), dtype=compute, device=x.device)
        g_ptr, g_stride = grad, grad.stride(0)
        s_ptr, s_stride = scale, (scale.stride(0) if scale.ndim else 0)
    bl = _block(num_classes, block)
    num_warps = 4 if bl <= 1024 else (8 if bl <= 4096 else 16)
    _kernels.row_kernel[(rows,)](
        x,
        x.stride(0),
        g_ptr,
        g_stride,
        target,
        target.stride(0),
        weight if weight is not None else x,
        loss,
        lse,
        s_ptr,
        s_stride,
        num_classes,
        int(ignore_index),
        float(label_smoothing),
        float(z_loss),
        float(softcap) if softcap is not None else 1.0,
        ACC=_acc(x.dtype),
        SOFT=soft,
        HAS_WEIGHT=weight is not None,
        SMOOTH=float(label_smoothing) > 0.0,
        HAS_ZLOSS=float(z_loss) > 0.0,
        HAS_CAP=softcap is not None,
        DIVERGENCE=divergence,
        GRAD=has_grad,
        BLOCK=bl,
        num_warps=num_warps,
    )
    return loss, lse


def scale_inplace(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``x *= grad`` (a 0-d tensor) on the device, skipped there when ``grad == 1``."""
    n = x.numel()
    if n:
        grad = grad.reshape(()).to(compute_dtype(x.dtype))
        block = 4096
        _kernels.scale_kernel[(triton.cdiv(n, block),)](
            x, n, grad, ACC=_acc(x.dtype), BLOCK=block, num_warps=8
        )
    return x


def _denominator(
    target: torch.Tensor, weight: torch.Tensor | None, soft: bool, ignore: int, dtype, rows: int
) -> torch.Tensor:
    """``sum(omega)`` as a device scalar, with 0 replaced by 1 (so an empty mean is 0)."""
    if soft:
        return torch.full((), float(max(rows, 1)), dtype=dtype, device=target.device)
    counted = target != ignore
    if weight is None:
        denom = counted.sum(dtype=dtype)
    else:
        num_classes = weight.shape[0]
        safe = torch.where(counted & (target >= 0) & (target < num_classes), target, 0)
        denom = torch.where(counted, weight.to(dtype)[safe], 0.0).sum()
    return torch.where(denom != 0, denom, torch.ones_like(denom))


class _Dense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, opts: DenseOptions):  # type: ignore[override]
        shape = logits.shape
        num_classes = shape[-1]
        x = logits.reshape(-1, num_classes)
        if x.stride(-1) != 1:
            x = x.contiguous()
        soft = target.dtype.is_floating_point
        t = target.reshape(-1, num_classes) if soft else target.reshape(-1)
        if soft and t.stride(-1) != 1:
            t = t.contiguous()
        rows = x.shape[0]
        compute = compute_dtype(logits.dtype)
        needs = ctx.needs_input_grad[0]
        in_forward = needs and opts.reduction != "none"
        denom = _denominator(t, weight, soft, opts.ignore_index, compute, rows)
        grad = None
        scale = None
        if in_forward:
            scale = 1.0 / denom if opts.reduction == "mean" else torch.ones_like(denom)
            inplace = opts.inplace and x.data_ptr() == logits.data_ptr() and x.is_contiguous()
            grad = x if inplace else torch.empty_like(x)
            if inplace:
                torch.autograd.graph.increment_version(logits)
        losses, _ = launch_rows(
            x,
            t,
            weight,
            soft=soft,
            ignore_index=opts.ignore_index,
            label_smoothing=opts.label_smoothing,
            z_loss=opts.z_loss,
            softcap=opts.softcap,
            divergence=opts.divergence,
            grad=grad,
            scale=scale,
            block=opts.block,
        )
        ctx.opts = opts
        ctx.shape = shape
        ctx.soft = soft
        ctx.grad = grad
        ctx.recompute = needs and not (in_forward and grad is x)
        if ctx.recompute:
            ctx.save_for_backward(x, t, weight, denom)
        if opts.reduction == "none":
            return losses.reshape(shape[:-1])
        if opts.reduction == "sum":
            return losses.sum()
        return losses.sum() / denom

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        opts = ctx.opts
        if ctx.grad is not None:
            grad, ctx.grad = ctx.grad, None
            scale_inplace(grad, grad_out)
            return grad.view(ctx.shape), None, None, None
        if not ctx.recompute:
            raise RuntimeError(
                "the logits were overwritten by their gradient (inplace=True): a second "
                "backward through this loss is not possible"
            )
        x, t, weight, denom = ctx.saved_tensors
        compute = compute_dtype(x.dtype)
        if opts.reduction == "none":
            scale = grad_out.reshape(-1).to(compute).contiguous()
        elif opts.reduction == "sum":
            scale = grad_out.reshape(()).to(compute)
        else:
            scale = grad_out.reshape(()).to(compute) / denom
        grad = torch.empty_like(x)
        launch_rows(
            x,
            t,
            weight,
            soft=ctx.soft,
            ignore_index=opts.ignore_index,
            label_smoothing=opts.label_smoothing,
            z_loss=opts.z_loss,
            softcap=opts.softcap,
            divergence=opts.divergence,
            grad=grad,
            scale=scale,
            block=opts.block,
        )
        return grad.view(ctx.shape), None, None, None


@torch.compiler.disable
def apply(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: DenseOptions,
) -> torch.Tensor:
    """Run the dense loss; ``torch.compile`` calls it as an opaque eager function."""
    if torch.is_grad_enabled() and (
        target.requires_grad or (weight is not None and weight.requires_grad)
    ):
        raise NotImplementedError(
            "the Triton losses give no gradient for target or class weights; use impl='torch'"
        )
    return _Dense.apply(logits, target, weight, opts)

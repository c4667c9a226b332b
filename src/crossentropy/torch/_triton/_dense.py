"""Host code of the dense losses: launch the row kernel, one ``torch.autograd.Function``.

With ``mean`` or ``sum`` and a gradient wanted, the forward pass writes the gradient
already scaled for the reduction (for ``mean``, ``1 / sum(omega)`` for the cross-entropy
part and ``1 / n`` for the z-loss part, ``n`` the counted tokens: device scalars, so no
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

__all__ = ["apply", "compute_dtype", "launch_rows", "reduce", "scale_inplace"]

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
    zscale: torch.Tensor | None = None,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the row kernel over ``x`` (R, C), last dimension contiguous.

    ``target`` is (R,) integer or (R, C) probabilities; ``scale`` and ``zscale`` 0-d or
    (R,) tensors (``zscale`` defaults to ``scale``).  When ``grad`` (R, C) is given (it may
    be ``x`` itself), the gradient of ``sum_i scale_i loss_i + zscale_i z_loss lse_i^2`` is
    written into it.  Returns the per-row losses *without* the z-loss and the log-sum-exps
    (0 for ignored rows) in the compute dtype; :func:`reduce` adds the z-loss.
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
    zs_ptr, zs_stride = loss, 0
    if grad is not None:
        if scale is None:
            scale = torch.ones((), dtype=compute, device=x.device)
        if zscale is None:
            zscale = scale
        g_ptr, g_stride = grad, grad.stride(0)
        s_ptr, s_stride = scale, (scale.stride(0) if scale.ndim else 0)
        zs_ptr, zs_stride = zscale, (zscale.stride(0) if zscale.ndim else 0)
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
        zs_ptr,
        zs_stride,
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


def _nonzero(value: torch.Tensor) -> torch.Tensor:
    return torch.where(value != 0, value, torch.ones_like(value))


def _denominator(
    target: torch.Tensor, weight: torch.Tensor | None, soft: bool, ignore: int, dtype, rows: int
) -> torch.Tensor:
    """``(sum(omega), n)`` as device scalars, 0 replaced by 1 (so an empty mean is 0):
    the divisors of the cross-entropy part and of the z-loss part, ``n`` the number of
    counted tokens."""
    if soft:
        count = torch.full((), float(max(rows, 1)), dtype=dtype, device=target.device)
        return torch.stack([count, count])
    counted = target != ignore
    count = counted.sum(dtype=dtype)
    if weight is None:
        denom = count
    else:
        num_classes = weight.shape[0]
        safe = torch.where(counted & (target >= 0) & (target < num_classes), target, 0)
        denom = torch.where(counted, weight.to(dtype)[safe], 0.0).sum()
    return _nonzero(torch.stack([denom, count]))


def reduce(
    losses: torch.Tensor, lse: torch.Tensor, z_loss: float, reduction: str, denoms: torch.Tensor
) -> torch.Tensor:
    """The reduced loss: the kernel's per-row losses plus ``z_loss * lse^2`` per row (the
    kernel's ``lse`` is 0 for ignored rows); ``mean`` divides the two parts by
    ``denoms = (sum(omega), n)``."""
    z = z_loss * lse.square() if z_loss else None
    if reduction == "none":
        return losses if z is None else losses + z
    if reduction == "sum":
        return losses.sum() if z is None else losses.sum() + z.sum()
    out = losses.sum() / denoms[0]
    return out if z is None else out + z.sum() / denoms[1]


def scales(grad: torch.Tensor, reduction: str, denoms: torch.Tensor) -> tuple:
    """The row kernel's ``(scale, zscale)`` for an upstream gradient ``grad``."""
    if reduction == "none":
        return grad, grad
    if reduction == "sum":
        return grad, grad
    return grad / denoms[0], grad / denoms[1]


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
        scale = zscale = None
        if in_forward:
            one = torch.ones((), dtype=compute, device=x.device)
            scale, zscale = scales(one, opts.reduction, denom)
            inplace = opts.inplace and x.data_ptr() == logits.data_ptr() and x.is_contiguous()
            grad = x if inplace else torch.empty_like(x)
            if inplace:
                torch.autograd.graph.increment_version(logits)
        losses, lse = launch_rows(
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
            zscale=zscale,
            block=opts.block,
        )
        ctx.opts = opts
        ctx.shape = shape
        ctx.soft = soft
        ctx.grad = grad
        ctx.recompute = needs and not (in_forward and grad is x)
        if ctx.recompute:
            ctx.save_for_backward(x, t, weight, denom)
        out = reduce(losses, lse, opts.z_loss, opts.reduction, denom)
        return out.reshape(shape[:-1]) if opts.reduction == "none" else out

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
            upstream = grad_out.reshape(-1).to(compute).contiguous()
        else:
            upstream = grad_out.reshape(()).to(compute)
        scale, zscale = scales(upstream, opts.reduction, denom)
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
            zscale=zscale,
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

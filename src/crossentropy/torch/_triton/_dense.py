"""Host code of the dense losses: launch the row kernel, one ``torch.autograd.Function``.

With ``mean`` or ``sum`` and a gradient wanted, the forward pass writes the gradient
already scaled for the reduction (:func:`.._reduction.token_scales`: for ``mean``,
``1 / sum(omega)`` for the cross-entropy part and ``1 / n`` for the z-loss part, ``n``
the counted tokens, or both ``1 / normalize_by``: on the device, so no host
synchronisation), and ``backward`` only multiplies it by the incoming gradient, on
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

from .. import _reduction
from .._options import Options, compute_dtype
from . import _kernels

__all__ = ["apply", "launch_rows", "scale_inplace"]

#: Largest block of classes one program loads at a time.
MAX_BLOCK = 8192


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
    opts: Options,
    *,
    divergence: bool = False,
    grad: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    zscale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the row kernel over ``x`` (R, C), last dimension contiguous.

    ``target`` is (R,) integer or (R, C) probabilities; ``scale`` and ``zscale`` 0-d or
    (R,) tensors (``zscale`` defaults to ``scale``).  When ``grad`` (R, C) is given (it may
    be ``x`` itself), the gradient of ``sum_i scale_i loss_i + zscale_i z_loss lse_i^2`` is
    written into it.  Returns the per-row losses *without* the z-loss and the log-sum-exps
    (0 for ignored rows) in the compute dtype.
    """
    rows, num_classes = x.shape
    compute = compute_dtype(x.dtype)
    soft = target.dtype.is_floating_point
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
    bl = _block(num_classes, opts.tuning.block)
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
        opts.ignore_index,
        opts.label_smoothing,
        opts.z_loss,
        opts.softcap if opts.softcap is not None else 1.0,
        1.0 / opts.temperature,
        ACC=_acc(x.dtype),
        SOFT=soft,
        HAS_WEIGHT=weight is not None,
        SMOOTH=opts.label_smoothing > 0.0,
        HAS_ZLOSS=opts.z_loss > 0.0,
        HAS_CAP=opts.softcap is not None,
        DIVERGENCE=divergence,
        GRAD=has_grad,
        BLOCK=bl,
        num_warps=num_warps,
    )
    return loss, lse


def scale_inplace(x: torch.Tensor, grad: torch.Tensor) -> None:
    """``x *= grad`` (a 0-d tensor) on the device, skipped there when ``grad == 1``."""
    n = x.numel()
    if n:
        grad = grad.reshape(()).to(compute_dtype(x.dtype))
        block = 4096
        _kernels.scale_kernel[(triton.cdiv(n, block),)](
            x, n, grad, ACC=_acc(x.dtype), BLOCK=block, num_warps=8
        )


class _Dense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, weight, opts: Options, divergence: bool):  # type: ignore[override]
        shape = logits.shape
        num_classes = shape[-1]
        x = logits.reshape(-1, num_classes)
        if x.stride(-1) != 1:
            x = x.contiguous()
        soft = target.dtype.is_floating_point
        t = target.reshape(-1, num_classes) if soft else target.reshape(-1)
        if soft and t.stride(-1) != 1:
            t = t.contiguous()
        compute = compute_dtype(logits.dtype)
        needs = ctx.needs_input_grad[0]
        in_forward = needs and opts.reduction != "none"
        omega, counted = _reduction.omega_and_counted(t, weight, opts, compute)
        divs = _reduction.divisors(omega, counted, opts)
        grad = None
        scale = zscale = None
        if in_forward:
            scale, zscale = _reduction.token_scales(counted, opts, divs)
            inplace = (
                opts.tuning.inplace and x.data_ptr() == logits.data_ptr() and x.is_contiguous()
            )
            grad = x if inplace else torch.empty_like(x)
            if inplace:
                torch.autograd.graph.increment_version(logits)
        losses, lse = launch_rows(
            x, t, weight, opts, divergence=divergence, grad=grad, scale=scale, zscale=zscale
        )
        ctx.opts, ctx.divergence, ctx.shape, ctx.divs = opts, divergence, shape, divs
        ctx.grad = grad
        ctx.recompute = needs and not (in_forward and grad is x)
        if ctx.recompute:
            ctx.save_for_backward(x, t, weight)
        out = _reduction.reduce(losses, _reduction.z_terms(lse, counted, opts), opts, divs)
        return out.reshape(shape[:-1]) if opts.reduction == "none" else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        opts = ctx.opts
        if ctx.grad is not None:
            grad, ctx.grad = ctx.grad, None
            scale_inplace(grad, grad_out)
            return grad.view(ctx.shape), None, None, None, None
        if not ctx.recompute:
            raise RuntimeError(
                "the logits were overwritten by their gradient (inplace=True): a second "
                "backward through this loss is not possible"
            )
        x, t, weight = ctx.saved_tensors
        compute = compute_dtype(x.dtype)
        _, counted = _reduction.omega_and_counted(t, weight, opts, compute)
        upstream = grad_out.reshape(-1 if opts.reduction == "none" else ())
        scale, zscale = _reduction.token_scales(counted, opts, ctx.divs, upstream)
        grad = torch.empty_like(x)
        launch_rows(
            x, t, weight, opts, divergence=ctx.divergence, grad=grad, scale=scale, zscale=zscale
        )
        return grad.view(ctx.shape), None, None, None, None


@torch.compiler.disable
def apply(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: Options,
    divergence: bool = False,
) -> torch.Tensor:
    """Run the dense loss; ``torch.compile`` calls it as an opaque eager function."""
    if torch.is_grad_enabled() and (
        target.requires_grad or (weight is not None and weight.requires_grad)
    ):
        raise NotImplementedError(
            "the Triton losses give no gradient for target or class weights; use impl='torch'"
        )
    return _Dense.apply(logits, target, weight, opts, divergence)

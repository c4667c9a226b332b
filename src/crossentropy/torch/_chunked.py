"""The single-process fused linear + cross-entropy: one ``torch.autograd.Function``.

The tokens go through the fused-chunk driver (:mod:`._driver`) ``chunk`` at a time.  For
each chunk the logits ``x = h W^T + b`` are formed and handed to the per-chunk step --
the plain-PyTorch chunk maths of :mod:`._heads` (statistics, the identity combine, loss,
gradient), or the Triton row kernel with ``impl='triton'`` -- which returns the chunk's
losses and, when a gradient will be needed, leaves ``G = dL/dx`` in the block, consumed
at once: ``dh = G W``, ``dW += G^T h`` (float32 accumulation), ``db += sum G``.  Only one
``(chunk, V)`` block of logits exists at any time, and the matrix products total
``6 N D V`` FLOPs, the minimum.  ``backward`` then only scales the stored gradients by
the incoming (scalar) gradient, in place.

Exactness of the backward:

* ``reduction="none"`` cannot know the per-token upstream gradient ``g_i`` in forward,
  and ``dW = sum_i g_i G_i^T h_i`` cannot be recovered from the unscaled sum.  So for
  ``none`` the forward does only the loss and the backward recomputes the chunks with
  ``g_i`` folded in (``8 N D V`` FLOPs in all) -- exact for any upstream gradient.
* For ``mean`` and ``sum`` the stored gradients are scaled in place and handed to
  autograd, so the weight gradient exists once.  A second backward through the same graph
  (``retain_graph=True``, ``gradcheck``) finds them consumed and recomputes them, bit for
  bit the same; double backward (``create_graph=True``) is not supported and raises.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _reduction
from ._driver import Gradients, Product, chunk_rows, forward_scales, fused_backward, spans
from ._heads import Labels, Probabilities, chain_, combine, gradient_
from ._options import Options, compute_dtype

__all__ = ["apply"]

Scales = tuple[torch.Tensor, torch.Tensor]


class _TorchStep:
    """The plain-PyTorch per-chunk step: transformed logits -> statistics -> loss -> G."""

    def __init__(self, product: Product, head: Labels | Probabilities, opts: Options) -> None:
        self.product, self.head, self.opts = product, head, opts

    def __call__(self, a: int, b: int, scales: Scales | None) -> tuple:
        z, tanh = self.product.logits(a, b)
        stats = self.head.stats(z, a)
        shift, sums = combine(stats[0], [*stats[1:], *self.head.scalars()], None)
        part = self.head.loss(shift, sums, a)
        if scales is None:
            return part.loss, part.lse, None, None
        gradient_(z, self.head, part, a, scales[0][a:b], scales[1][a:b], sumexp=sums[0])
        chain_(z, self.opts, tanh)
        return part.loss, part.lse, self.product.staged(z), z


def _run(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    opts: Options,
    scales: Scales | None,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor, Gradients | None]:
    """Per-token losses (without the z-loss) and log-sum-exps, and, when ``scales``
    ``(s, sz)`` are given, the :class:`Gradients` of ``sum_i s_i L_i + sz_i z_i``."""
    num_tokens, dim = hidden.shape
    vocab = weight.shape[0]
    compute = compute_dtype(hidden.dtype)
    soft = target.dtype.is_floating_point
    rows = chunk_rows(opts, num_tokens, vocab, dim, hidden.dtype, soft)
    grads_kw: dict[str, Any] = {}
    if opts.impl == "triton":
        from ._triton import _linear

        product = Product(hidden, weight, bias, opts, rows, compute_block=False)
        step: Any = _linear.RowStep(product, target, opts)
        grads_kw = _linear.gradient_options(opts, hidden.dtype)
    else:
        product = Product(hidden, weight, bias, opts, rows, keep_tanh=scales is not None)
        if soft:
            buffer = torch.empty(rows, vocab, dtype=compute, device=hidden.device)
            head: Labels | Probabilities = Probabilities(target, class_weight, opts, vocab, buffer)
        else:
            head = Labels(target, class_weight, opts, vocab)
        step = _TorchStep(product, head, opts)
    grads = None if scales is None else Gradients(hidden, weight, bias, needs, **grads_kw)
    losses = torch.empty(num_tokens, dtype=compute, device=hidden.device)
    lses = torch.empty_like(losses)
    for a, b in spans(num_tokens, rows):
        losses[a:b], lses[a:b], g, exact = step(a, b, scales)
        if grads is not None:
            grads.add(g, exact, hidden[a:b], a, b)
    return losses, lses, grads


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, class_weight, opts, needs):  # type: ignore[override]
        compute = compute_dtype(hidden.dtype)
        omega, counted = _reduction.omega_and_counted(target, class_weight, opts, compute)
        divs = _reduction.divisors(omega, counted, opts)
        scales = forward_scales(ctx, needs, counted, opts, divs)
        losses, lses, ctx.grads = _run(
            hidden, weight, bias, target, class_weight, opts, scales, needs
        )
        if any(needs):
            ctx.save_for_backward(hidden, weight, bias, target, class_weight)
        return _reduction.reduce(losses, _reduction.z_terms(lses, counted, opts), opts, divs)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        def recompute(scales):
            hidden, weight, bias, target, class_weight = ctx.saved_tensors
            return _run(hidden, weight, bias, target, class_weight, ctx.opts, scales, ctx.needs)[2]

        return (
            *fused_backward(ctx, grad, "linear_cross_entropy", "cross_entropy", recompute),
            *[None] * 4,
        )


@torch.compiler.disable
def apply(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    opts: Options,
) -> torch.Tensor:
    """The fused loss of flat ``hidden`` (N, D) and ``target`` (N,) int64 or (N, V);
    ``torch.compile`` calls it as an opaque eager function.

    ``class_weight`` (V,), in the compute dtype, is a constant: it gets no gradient.
    """
    enabled = torch.is_grad_enabled()
    needs = (
        enabled and hidden.requires_grad,
        enabled and weight.requires_grad,
        enabled and bias is not None and bias.requires_grad,
    )
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, class_weight, opts, needs)

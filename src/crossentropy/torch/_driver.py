"""The fused-chunk driver: logit blocks of ``hidden @ weight.T + bias``, and their gradients.

Every fused loss walks the tokens ``chunk`` at a time through the same three pieces:

* :class:`Product` -- the block ``h W^T + b`` of one chunk, formed by one matrix product
  into a reused buffer in the input dtype, then (for the plain-PyTorch step) copied into
  the compute dtype and transformed (``z = softcap(x) / T``, keeping the softcap's
  ``tanh`` when a gradient follows).  :class:`Rows` is the same for a logits tensor that
  already exists (the dense vocabulary-parallel loss).
* the per-chunk step, which turns a block into per-token results and, when asked, its
  gradient ``G = dL/dx`` in place: the plain-PyTorch chunk maths of :mod:`._heads` or the
  Triton row kernel;
* :class:`Gradients` -- ``dh = G W``, ``dW += G^T h`` and ``db += sum G``, accumulated in
  float32 for half inputs (a vocabulary block at a time, or by the Triton path's own
  accumulator), then scaled by the upstream gradient and cast to the parameters' dtypes.

One ``chunk_size=None`` rule (:func:`default_chunk_size`) serves every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from . import _reduction
from ._heads import transform_
from ._options import Options, compute_dtype

__all__ = [
    "CHUNK_BUDGET_BYTES",
    "CHUNK_CAP_BYTES",
    "DirectWeightGrad",
    "Gradients",
    "Product",
    "Rows",
    "chunk_rows",
    "default_chunk_size",
    "forward_scales",
    "fused_backward",
    "spans",
]

#: Working memory the automatic ``chunk_size`` always allows: the (chunk, V) block(s).
CHUNK_BUDGET_BYTES = 64 * 2**20

#: Upper bound on that working memory when the hidden size asks for more (see
#: :func:`default_chunk_size`).
CHUNK_CAP_BYTES = 512 * 2**20

#: Vocabulary rows per block when accumulating a half-precision weight gradient in float32.
_VOCAB_BLOCK = 4096


def default_chunk_size(
    num_tokens: int,
    vocab: int,
    dim: int,
    dtype: torch.dtype,
    softcap: bool,
    soft: bool = False,
    *,
    kernel: bool = False,
) -> int:
    """Tokens per chunk: the larger of what fits :data:`CHUNK_BUDGET_BYTES` and ``dim / 2``.

    Per token a chunk holds its working set: for the plain-PyTorch step a row of logits
    in the compute dtype (two with ``softcap``, whose derivative needs ``tanh`` kept; one
    more with probability targets, ``soft``, for the chunk's target rows), and for half
    inputs the half-precision row too; for the Triton row kernel (``kernel``), which
    works in place, the one row in the input dtype.  ``vocab`` is the width of the block
    (this rank's slice under vocabulary parallelism).  The float32 weight gradient
    (``V x D``) is read and written once per chunk, so a chunk of ``n`` tokens moves
    ``8 V D`` bytes for ``6 n V D`` FLOPs; ``n >= D / 2`` keeps that traffic small, and
    makes the block at most half the size of the weight gradient that must exist anyway.
    That second rule is capped at :data:`CHUNK_CAP_BYTES`.  The result is a multiple of
    16 (at least 16), at most ``num_tokens``.
    """
    compute = compute_dtype(dtype)
    if kernel:
        row = vocab * dtype.itemsize
    else:
        row = vocab * compute.itemsize * (1 + softcap + soft)
        if compute != dtype:
            row += vocab * dtype.itemsize
    row = max(row, 1)
    by_budget = CHUNK_BUDGET_BYTES // row
    by_dim = min(dim // 2, CHUNK_CAP_BYTES // row)
    size = max(16, max(by_budget, by_dim) // 16 * 16)
    return max(1, min(size, num_tokens))


def chunk_rows(
    opts: Options, num_tokens: int, width: int, dim: int, dtype: torch.dtype, soft: bool
) -> int:
    """``opts.chunk_size``, or :func:`default_chunk_size` for this call (at least 1)."""
    if opts.chunk_size is not None:
        return max(1, min(opts.chunk_size, num_tokens))
    kernel = opts.impl == "triton"
    return default_chunk_size(
        num_tokens, width, dim, dtype, opts.softcap is not None, soft, kernel=kernel
    )


def spans(num_tokens: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(a, b)`` of each chunk of ``rows`` tokens."""
    for a in range(0, num_tokens, max(rows, 1)):
        yield a, min(a + rows, num_tokens)


class _Blocks:
    """The reused ``(rows, width)`` buffers: the compute-dtype logits, the input-dtype
    staging block of half inputs, and the softcap's kept ``tanh``."""

    def __init__(
        self, rows: int, width: int, dtype: torch.dtype, device: torch.device, tanh: bool
    ) -> None:
        compute = compute_dtype(dtype)
        self.z = torch.empty(rows, width, dtype=compute, device=device)
        self.staged = (
            torch.empty(rows, width, dtype=dtype, device=device) if compute != dtype else None
        )
        self.tanh = torch.empty_like(self.z) if tanh else None

    def tanh_of(self, n: int) -> torch.Tensor | None:
        return None if self.tanh is None else self.tanh[:n]


class Product:
    """Blocks of ``h W^T + b`` for chunks of the (N, D) ``hidden``."""

    def __init__(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        opts: Options,
        rows: int,
        *,
        keep_tanh: bool = False,
        compute_block: bool = True,
    ) -> None:
        self.hidden, self.weight, self.bias, self.opts = hidden, weight, bias, opts
        self.wt = weight.t()
        width = weight.shape[0]
        if compute_block:
            tanh = keep_tanh and opts.softcap is not None
            self.blocks = _Blocks(rows, width, hidden.dtype, hidden.device, tanh)
            self.raw_buffer = self.blocks.z if self.blocks.staged is None else self.blocks.staged
        else:  # the Triton row kernel reads and overwrites the product itself
            self.raw_buffer = torch.empty(rows, width, dtype=hidden.dtype, device=hidden.device)

    def raw(self, a: int, b: int) -> torch.Tensor:
        """``h W^T + b`` of tokens ``a:b`` in the input dtype, in a reused buffer."""
        out = self.raw_buffer[: b - a]
        h = self.hidden[a:b]
        if self.bias is None:
            torch.mm(h, self.wt, out=out)
        else:
            torch.addmm(self.bias, h, self.wt, out=out)
        return out

    def logits(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The transformed compute-dtype logits of tokens ``a:b`` and the kept ``tanh``."""
        raw = self.raw(a, b)
        z = self.blocks.z[: b - a]
        if raw is not z:
            z.copy_(raw)
        tanh = self.blocks.tanh_of(b - a)
        return transform_(z, self.opts, tanh), tanh

    def staged(self, g: torch.Tensor) -> torch.Tensor:
        """The gradient block in the input dtype for the products (half inputs: a copy)."""
        staged = self.blocks.staged
        return g if staged is None else staged[: g.shape[0]].copy_(g)


class Rows:
    """Blocks of an existing (N, V_r) logits tensor, transformed in the compute dtype."""

    def __init__(self, logits: torch.Tensor, opts: Options, rows: int, *, keep_tanh: bool):
        self.logits_, self.opts = logits, opts
        tanh = keep_tanh and opts.softcap is not None
        self.blocks = _Blocks(
            rows, logits.shape[1], compute_dtype(logits.dtype), logits.device, tanh
        )

    def logits(
        self, a: int, b: int, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows ``a:b`` transformed, in ``out`` (of the compute dtype) or a reused block."""
        z = self.blocks.z[: b - a] if out is None else out
        z.copy_(self.logits_[a:b])
        tanh = self.blocks.tanh_of(b - a)
        return transform_(z, self.opts, tanh), tanh


class WeightGrad(Protocol):
    """An accumulator of ``dW`` (V, D): ``add(g, h)`` per chunk, ``finish(upstream)`` once."""

    def add(self, g: torch.Tensor, h: torch.Tensor) -> None: ...

    def finish(self, upstream: torch.Tensor | None) -> torch.Tensor: ...


class DirectWeightGrad:
    """``dW`` in one dtype: the compute dtype, or the weight's own (``weight_grad='input'``)."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype, scale: Callable) -> None:
        self.dw = torch.zeros(weight.shape, dtype=dtype, device=weight.device)
        self.weight_dtype, self.scale = weight.dtype, scale

    def add(self, g: torch.Tensor, h: torch.Tensor) -> None:
        self.dw.addmm_(g.t(), h)

    def finish(self, upstream: torch.Tensor | None) -> torch.Tensor:
        if upstream is not None:
            self.scale(self.dw, upstream)
        return self.dw.to(self.weight_dtype)


class _Float32Blocks(DirectWeightGrad):
    """A half-precision ``dW`` accumulated in float32: each chunk's half-precision product
    of a vocabulary block is added in float32, so no second (V, D) buffer is needed."""

    def __init__(self, weight: torch.Tensor, scale: Callable) -> None:
        super().__init__(weight, torch.float32, scale)
        rows = min(_VOCAB_BLOCK, max(weight.shape[0], 1))
        self.block = torch.empty(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)

    def add(self, g: torch.Tensor, h: torch.Tensor) -> None:
        vocab, step = g.shape[1], self.block.shape[0]
        for v0 in range(0, vocab, step):
            v1 = min(v0 + step, vocab)
            part = self.block[: v1 - v0]
            torch.mm(g[:, v0:v1].t(), h, out=part)
            self.dw[v0:v1] += part


def _mul_(t: torch.Tensor, upstream: torch.Tensor) -> None:
    t.mul_(upstream.to(t.dtype))


class Gradients:
    """``dh``, ``dW`` and ``db`` of a fused loss, accumulated chunk by chunk.

    ``needs`` says which of hidden, weight, bias want one.  ``dh_dtype`` is the dtype
    ``dh`` is accumulated in (the input's by default; the vocabulary-parallel loss sums
    it across ranks in the compute dtype).  ``weight_grad`` makes the accumulator of a
    half-precision ``dW`` (:class:`_Float32Blocks` by default); ``scale(t, upstream)``
    multiplies a result in place by the upstream gradient.
    """

    def __init__(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        needs: tuple[bool, bool, bool],
        *,
        weight_grad: Callable[[torch.Tensor], WeightGrad] | None = None,
        dh_dtype: torch.dtype | None = None,
        scale: Callable[[torch.Tensor, torch.Tensor], None] = _mul_,
    ) -> None:
        self.weight, self.bias, self.scale = weight, bias, scale
        compute = compute_dtype(hidden.dtype)
        self.compute = compute
        self.dh = (
            torch.empty(hidden.shape, dtype=dh_dtype or hidden.dtype, device=hidden.device)
            if needs[0]
            else None
        )
        self.dw: WeightGrad | None = None
        if needs[1]:
            if weight_grad is not None:
                self.dw = weight_grad(weight)
            elif compute != weight.dtype:
                self.dw = _Float32Blocks(weight, scale)
            else:
                self.dw = DirectWeightGrad(weight, compute, scale)
        self.db = (
            torch.zeros(weight.shape[0], dtype=compute, device=weight.device)
            if needs[2] and bias is not None
            else None
        )

    def add(self, g: torch.Tensor, exact: torch.Tensor, h: torch.Tensor, a: int, b: int) -> None:
        """Accumulate chunk ``a:b``: ``g`` the gradient block in the input dtype, ``exact``
        the same block as precise as it was formed (for ``db``), ``h`` its hidden states."""
        if self.db is not None:
            self.db += exact.sum(0, dtype=self.compute)
        if self.dh is not None:
            if self.dh.dtype == g.dtype:
                torch.mm(g, self.weight, out=self.dh[a:b])
            else:
                self.dh[a:b] = torch.mm(g, self.weight)
        if self.dw is not None:
            self.dw.add(g, h)

    def finish(
        self, upstream: torch.Tensor | None = None, dh_dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(dh, dW, db)`` times ``upstream`` (a 0-d tensor, or None for 1), each in its
        parameter's dtype (``dh`` in ``dh_dtype`` if given)."""
        dh = self.dh
        if dh is not None:
            if upstream is not None:
                self.scale(dh, upstream)
            dh = dh.to(dh_dtype or dh.dtype)
        dw = None if self.dw is None else self.dw.finish(upstream)
        db = self.db
        if db is not None:
            assert self.bias is not None, "db without a bias"
            if upstream is not None:
                self.scale(db, upstream)
            db = db.to(self.bias.dtype)
        return dh, dw, db


# ------------------------------------------------ the gradient-in-forward protocol

Scales = tuple[torch.Tensor, torch.Tensor]


def forward_scales(
    ctx: Any,
    needs: tuple[bool, bool, bool],
    counted: torch.Tensor,
    opts: Options,
    divs: tuple[Any, Any] | None,
) -> Scales | None:
    """The per-token scales ``(s, sz)`` a single-process fused loss folds into the
    gradients it computes in forward: for ``mean`` and ``sum`` when a gradient is needed
    (the upstream gradient is then a scalar that ``backward`` applies in place); None
    for ``none``, whose per-token upstream gradient only ``backward`` knows.  Keeps on
    ``ctx`` what :func:`fused_backward` needs."""
    ctx.opts, ctx.needs, ctx.counted, ctx.divs, ctx.grads = opts, needs, counted, divs, None
    if any(needs) and opts.reduction != "none":
        return _reduction.token_scales(counted, opts, divs)
    return None


def fused_backward(
    ctx: Any,
    grad: torch.Tensor,
    name: str,
    dense: str,
    recompute: Callable[[Scales], Gradients],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``backward`` of a single-process fused loss: ``(dh, dW, db)``.

    The first backward of ``mean``/``sum`` hands over the gradients computed in forward
    (``ctx.grads``), scaled in place, and drops its reference so that autograd adopts
    them uncopied.  ``reduction='none'``, or a second backward (``retain_graph``),
    recomputes them (``recompute(scales)``) with the per-token scales of the forward
    pass, so the result is bit for bit the same.  Double backward is refused: the
    gradients formed in forward have no graph of their own, so a second derivative
    would silently be zero.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{name} does not support double backward (create_graph=True); use "
            f"crossentropy.torch.{dense} on the logits for higher derivatives"
        )
    if ctx.grads is not None:
        grads, ctx.grads = ctx.grads, None
        return grads.finish(grad.reshape(()))
    opts = ctx.opts
    if opts.reduction == "none":
        scales = _reduction.token_scales(ctx.counted, opts, None, grad.reshape(-1))
        return recompute(scales).finish(None)
    scales = _reduction.token_scales(ctx.counted, opts, ctx.divs)
    return recompute(scales).finish(grad.reshape(()))

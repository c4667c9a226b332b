"""Fused linear + cross-entropy on CUDA: cuBLAS products around the Triton row kernel.

For each chunk of tokens: ``z = h W^T + b`` (one cuBLAS product into a reused
``(chunk, V)`` buffer in the input dtype), then the row kernel computes the losses and
overwrites ``z`` with ``G = dL/dz`` scaled for the reduction, and two more products
consume it: ``dh = G W`` straight into the hidden gradient, ``dW += G^T h`` accumulated in
float32.  Three products, ``6 N D V`` FLOPs, no recomputation, no gradient filtering, no
atomics (deterministic), and no host synchronisation (the ``mean`` divisor stays on the
device).

The float32 weight gradient of half-precision weights lives in the memory of the final
gradient itself: the first ``V // 2`` rows are accumulated as float32 *inside* the
``(V, D)`` half-precision result (whose bytes hold exactly that many float32 rows), the
others in a separate float32 buffer.  ``backward`` scales and rounds the first part down
in place (in blocks ordered so that no block overwrites float32 values not yet read) and
then writes the second part behind it.  Peak memory is 4 bytes per weight element, as for
a plain float32 accumulator, but there is never a float32 and a half-precision ``(V, D)``
copy at once (6 bytes), and the gradient handed to autograd is not copied.  The products
accumulate into float32 through cuBLAS (``torch.addmm(..., out_dtype=torch.float32)``);
where that is unavailable the product of a vocabulary block is formed (in float32 if
``torch.mm`` can, else in the input dtype, as the CPU path does) and added in float32.

``reduction="none"``: the forward pass computes only the losses and ``backward``
recomputes the chunks with the per-token upstream gradient (``8 N D V`` FLOPs in all),
exact for any upstream gradient, as in the CPU path.
"""

from __future__ import annotations

import torch
import triton
from torch.autograd.function import once_differentiable

from . import _kernels
from ._dense import compute_dtype, launch_rows, reduce, scale_inplace
from ._options import LinearOptions

__all__ = ["CHUNK_BUDGET_BYTES", "apply", "default_chunk_size"]

#: Size the automatic ``chunk_size`` aims for: one ``(chunk, V)`` block of logits.
CHUNK_BUDGET_BYTES = 512 * 2**20

#: Rows of a vocabulary block in the fallback float32 accumulation.
_VOCAB_BLOCK = 8192

#: First block of the in-place float32 -> half compaction (elements), copied via a buffer.
_FIRST_BLOCK = 2**20

#: Per device: "addmm" when cuBLAS accumulates half products into a float32 ``out`` in
#: place, "mm" when only a float32 product is available, "" when neither.
_OUT_DTYPE: dict[torch.device, str] = {}


def default_chunk_size(num_tokens: int, vocab: int, dtype: torch.dtype) -> int:
    """Tokens per chunk: a power of two (at least 16) whose logits fit the budget."""
    per_token = max(1, vocab * dtype.itemsize)
    size = max(16, 1 << max(0, (CHUNK_BUDGET_BYTES // per_token).bit_length() - 1))
    return max(1, min(size, num_tokens))


def _out_dtype(device: torch.device) -> str:
    """Which float32-output product of half inputs this PyTorch offers on ``device``."""
    if device.type != "cuda":
        return ""
    if device not in _OUT_DTYPE:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device=device)
        acc = torch.zeros(2, 2, dtype=torch.float32, device=device)
        mode = ""
        try:
            torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
            mode = "addmm"
        except (RuntimeError, TypeError):
            try:
                torch.mm(a, a, out_dtype=torch.float32)
                mode = "mm"
            except (RuntimeError, TypeError):
                pass
        _OUT_DTYPE[device] = mode
    return _OUT_DTYPE[device]


def _addmm_f32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with half ``a``, ``b`` and a float32 ``acc``."""
    if acc.shape[0] == 0:
        return
    mode = _out_dtype(acc.device)
    if mode == "addmm":
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        return
    if acc.device.type != "cuda":
        # CPU (the Triton interpreter): exact float32 products; memory does not matter here.
        acc.addmm_(a.float(), b.float())
        return
    # Older PyTorch: a vocabulary block's product (float32 if it can, else rounded to the
    # input dtype) added in float32: a small (block, D) buffer, more traffic.
    for v0 in range(0, acc.shape[0], _VOCAB_BLOCK):
        v1 = min(v0 + _VOCAB_BLOCK, acc.shape[0])
        if mode == "mm":
            acc[v0:v1] += torch.mm(a[v0:v1], b, out_dtype=torch.float32)
        else:
            acc[v0:v1] += torch.mm(a[v0:v1], b)


def _cast_scale(src: torch.Tensor, dst: torch.Tensor, grad: torch.Tensor) -> None:
    n = src.numel()
    if n:
        block = 4096
        _kernels.cast_scale_kernel[(triton.cdiv(n, block),)](
            src, dst, n, grad, BLOCK=block, num_warps=8
        )


class _HalfWeightGrad:
    """float32 accumulator of a half-precision ``(V, D)`` weight gradient (module doc)."""

    def __init__(self, vocab: int, dim: int, dtype: torch.dtype, device: torch.device):
        self.final = torch.empty(vocab, dim, dtype=dtype, device=device)
        self.split = vocab // 2
        flat = self.final.view(-1)
        self.low = flat[: 2 * self.split * dim].view(torch.float32).view(self.split, dim)
        self.low.zero_()
        self.high: torch.Tensor | None = torch.zeros(
            vocab - self.split, dim, dtype=torch.float32, device=device
        )

    def add(self, g: torch.Tensor, h: torch.Tensor) -> None:
        """``dW += g^T h`` for a chunk's gradient ``g`` (n, V) and hidden states ``h``."""
        assert self.high is not None, "finish() was called"
        _addmm_f32(self.low, g[:, : self.split].t(), h)
        _addmm_f32(self.high, g[:, self.split :].t(), h)

    def finish(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad * dW`` rounded to the weight's dtype, in the accumulator's own memory."""
        out = self.final.view(-1)
        src = self.low.view(-1)
        total = src.numel()
        grad = grad.reshape(()).float()
        # Element i of the result overwrites float32 element i // 2.  Block [a, b) with
        # b <= 2a reads [a, b) and writes over [a/2, b/2), which lies before a: already
        # read, and disjoint from what this block reads.  The first block goes via a buffer.
        first = min(total, _FIRST_BLOCK)
        if first:
            tmp = torch.empty(first, dtype=out.dtype, device=out.device)
            _cast_scale(src[:first], tmp, grad)
            out[:first].copy_(tmp)
            del tmp
        a = first
        while a < total:
            b = min(2 * a, total)
            _cast_scale(src[a:b], out[a:b], grad)
            a = b
        # The second part lands behind the first, over float32 values already read.
        assert self.high is not None, "finish() was called twice"
        _cast_scale(self.high.view(-1), out[total:], grad)
        self.high = None
        return self.final


def _run(hidden, weight, bias, target, opts: LinearOptions, scale, needs):
    """Per-token losses and, when ``scale`` is given, the gradients of ``sum scale_i L_i``.

    Returns ``(losses, lses, dh, dw, db)``: the losses without the z-loss and the
    log-sum-exps (0 for ignored tokens), ``dh`` (N, D) in the input dtype, ``dw`` a
    :class:`_HalfWeightGrad` for half inputs or a (V, D) tensor in the compute dtype,
    ``db`` (V,) in the compute dtype; each None when not asked for.
    """
    num_tokens, dim = hidden.shape
    vocab = weight.shape[0]
    dtype = hidden.dtype
    compute = compute_dtype(dtype)
    device = hidden.device
    grads = scale is not None
    half = compute != dtype

    losses = torch.empty(num_tokens, dtype=compute, device=device)
    lses = torch.empty_like(losses)
    dh = torch.empty_like(hidden) if grads and needs[0] else None
    dw: _HalfWeightGrad | torch.Tensor | None = None
    half_dw = half and opts.weight_grad == "float32"
    if grads and needs[1]:
        if half_dw:
            dw = _HalfWeightGrad(vocab, dim, dtype, device)
        else:
            # float32/float64 weights, or weight_grad="input": the weight's own dtype.
            dw = torch.zeros(vocab, dim, dtype=dtype, device=device)
    db = torch.zeros(vocab, dtype=compute, device=device) if grads and needs[2] else None
    chunk = opts.chunk_size or default_chunk_size(num_tokens, vocab, dtype)
    rows = min(chunk, num_tokens)
    zbuf = torch.empty(rows, vocab, dtype=dtype, device=device)
    wt = weight.t()
    per_row = scale is not None and scale.ndim == 1

    for start in range(0, num_tokens, chunk):
        stop = min(start + chunk, num_tokens)
        n = stop - start
        h = hidden[start:stop]
        z = zbuf[:n]
        if bias is None:
            torch.mm(h, wt, out=z)
        else:
            torch.addmm(bias, h, wt, out=z)
        losses[start:stop], lses[start:stop] = launch_rows(
            z,
            target[start:stop],
            None,
            soft=False,
            ignore_index=opts.ignore_index,
            label_smoothing=opts.label_smoothing,
            z_loss=opts.z_loss,
            softcap=opts.softcap,
            divergence=False,
            grad=z if grads else None,
            scale=(scale[start:stop] if per_row else scale) if grads else None,
            block=opts.block,
        )
        if not grads:
            continue
        # z now holds G = dL/dz, already scaled.
        if db is not None:
            db += z.sum(0, dtype=compute)
        if dh is not None:
            torch.mm(z, weight, out=dh[start:stop])
        if dw is None:
            continue
        if isinstance(dw, _HalfWeightGrad):
            dw.add(z, h)
        else:
            dw.addmm_(z.t(), h)
    return losses, lses, dh, dw, db


def _denominator(target: torch.Tensor, ignore: int, dtype: torch.dtype) -> torch.Tensor:
    """The counted tokens, 0 replaced by 1: the divisor of both parts of ``mean`` (no
    class weights here)."""
    denom = (target != ignore).sum(dtype=dtype)
    denom = torch.where(denom != 0, denom, torch.ones_like(denom))
    return torch.stack([denom, denom])


def _finish(dh, dw, db, bias, grad):
    """Scale by the upstream gradient (skipped on the device when it is 1), cast."""
    if dh is not None:
        scale_inplace(dh, grad)
    if isinstance(dw, _HalfWeightGrad):
        dw = dw.finish(grad)
    elif dw is not None:
        scale_inplace(dw, grad)
    if db is not None:
        db = (db * grad.to(db.dtype)).to(bias.dtype)
    return dh, dw, db


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, opts: LinearOptions):  # type: ignore[override]
        compute = compute_dtype(hidden.dtype)
        in_forward = any(opts.needs_grad) and opts.reduction != "none"
        denom = _denominator(target, opts.ignore_index, compute)
        scale = None
        if in_forward:
            scale = 1.0 / denom[0] if opts.reduction == "mean" else torch.ones_like(denom[0])
        losses, lses, dh, dw, db = _run(hidden, weight, bias, target, opts, scale, opts.needs_grad)
        ctx.opts = opts
        ctx.state = (dh, dw, db) if in_forward else None
        if any(opts.needs_grad):
            ctx.save_for_backward(hidden, weight, bias, target, denom)
        return reduce(losses, lses, opts.z_loss, opts.reduction, denom)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        opts = ctx.opts
        hidden, weight, bias, target, denom = ctx.saved_tensors
        compute = compute_dtype(hidden.dtype)
        if ctx.state is not None:
            # First backward of mean/sum: the gradients were computed in forward.
            (dh, dw, db), ctx.state = ctx.state, None
            dh, dw, db = _finish(dh, dw, db, bias, grad.reshape(()))
            return dh, dw, db, None, None
        if opts.reduction == "none":
            scale = grad.reshape(-1).to(compute).contiguous()
        elif opts.reduction == "sum":
            scale = grad.reshape(()).to(compute)
        else:
            scale = grad.reshape(()).to(compute) / denom[0]
        _, _, dh, dw, db = _run(hidden, weight, bias, target, opts, scale, opts.needs_grad)
        one = torch.ones((), dtype=compute, device=hidden.device)
        dh, dw, db = _finish(dh, dw, db, bias, one)
        return dh, dw, db, None, None


@torch.compiler.disable
def apply(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    opts: LinearOptions,
) -> torch.Tensor:
    """Run the fused loss on (N, D) ``hidden`` and (N,) int64 ``target``."""
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, opts)

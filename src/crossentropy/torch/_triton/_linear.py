"""Fused linear + cross-entropy on CUDA: the Triton row kernel as the driver's chunk step.

The single-process fused loss (:mod:`.._chunked`) walks the chunks with the fused-chunk
driver; with ``impl='triton'`` its per-chunk step is :class:`RowStep`: ``z = h W^T + b``
(one cuBLAS product into a reused ``(chunk, V)`` buffer in the input dtype), then the row
kernel computes the losses and overwrites ``z`` with ``G = dL/dz`` scaled for the
reduction, and the driver's two more products consume it: ``dh = G W`` straight into the
hidden gradient, ``dW += G^T h`` accumulated in float32.  Three products,
``6 N D V`` FLOPs, no recomputation, no gradient filtering, no atomics (deterministic),
and no host synchronisation (the ``mean`` divisor stays on the device).

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

from typing import Any

import torch
import triton

from .._driver import DirectWeightGrad, Product
from .._options import Options, compute_dtype
from . import _kernels
from ._dense import launch_rows, scale_inplace

__all__ = ["RowStep", "gradient_options"]

#: Rows of a vocabulary block in the fallback float32 accumulation.
_VOCAB_BLOCK = 8192

#: First block of the in-place float32 -> half compaction (elements), copied via a buffer.
_FIRST_BLOCK = 2**20

#: Per device: "addmm" when cuBLAS accumulates half products into a float32 ``out`` in
#: place, "mm" when only a float32 product is available, "" when neither.
_OUT_DTYPE: dict[torch.device, str] = {}


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


class RowStep:
    """The Triton per-chunk step of the fused-chunk driver: the row kernel over the block
    ``h W^T + b`` in the input dtype, which it overwrites with ``G = dL/dx`` when scales
    are given."""

    def __init__(self, product: Product, target: torch.Tensor, opts: Options) -> None:
        self.product, self.target, self.opts = product, target, opts

    def __call__(self, a: int, b: int, scales: tuple[torch.Tensor, torch.Tensor] | None):
        x = self.product.raw(a, b)
        if scales is None:
            loss, lse = launch_rows(x, self.target[a:b], None, self.opts)
            return loss, lse, None, None
        loss, lse = launch_rows(
            x,
            self.target[a:b],
            None,
            self.opts,
            grad=x,
            scale=scales[0][a:b],
            zscale=scales[1][a:b],
        )
        return loss, lse, x, x


class _FinishHalf:
    """:class:`_HalfWeightGrad` as the driver's weight-gradient accumulator."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.acc = _HalfWeightGrad(weight.shape[0], weight.shape[1], weight.dtype, weight.device)

    def add(self, g: torch.Tensor, h: torch.Tensor) -> None:
        self.acc.add(g, h)

    def finish(self, upstream: torch.Tensor | None) -> torch.Tensor:
        if upstream is None:
            upstream = torch.ones((), device=self.acc.final.device)
        return self.acc.finish(upstream)


def gradient_options(opts: Options, dtype: torch.dtype) -> dict[str, Any]:
    """The driver's :class:`~.._driver.Gradients` keywords for the Triton path: on-device
    scaling (skipped when the upstream gradient is 1) and the weight-gradient accumulator
    of ``opts.tuning.weight_grad``."""
    out: dict[str, Any] = {"scale": scale_inplace}
    if compute_dtype(dtype) != dtype:
        if opts.tuning.weight_grad == "float32":
            out["weight_grad"] = _FinishHalf
        else:  # "input": the weight's own dtype, each chunk's product rounded once
            out["weight_grad"] = lambda w: DirectWeightGrad(w, w.dtype, scale_inplace)
    return out

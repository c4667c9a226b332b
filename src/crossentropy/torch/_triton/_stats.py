"""The per-token statistics' Triton step: the row kernel's statistics mode.

:class:`TritonStatistics` is the statistics head of :mod:`.._stats` with its two
per-chunk steps as kernels over the block ``h W^T + b`` in the input dtype: the
statistics (one read; the top-k by ``torch.topk`` of the block, the transform being
monotone) and the gradient, written over the block in place.  The combine step, the
reduction to the eight fields and the accumulation of ``dh``, ``dW``, ``db`` are the
engine's, unchanged.
"""

from __future__ import annotations

import torch
import triton

from .._driver import Product
from .._options import Options, compute_dtype
from .._stats import Statistics, _Chunk
from . import _kernels
from ._dense import MAX_BLOCK, _acc

__all__ = ["TritonStatistics"]


def _block(width: int, override: int | None) -> int:
    if override is not None:
        return triton.next_power_of_2(max(1, int(override)))
    return min(MAX_BLOCK, triton.next_power_of_2(max(1, width)))


class TritonStatistics(Statistics):
    """:class:`~.._stats.Statistics` whose chunk steps are the Triton kernels."""

    def __init__(self, target: torch.Tensor | None, opts: Options, width: int) -> None:
        super().__init__(target, opts, width, torch.empty(0))

    def _launch(self, x: torch.Tensor) -> dict:
        opts = self.opts
        return {
            "C": x.shape[1],
            "start": self.start,
            "ignore_index": opts.ignore_index,
            "cap": opts.softcap if opts.softcap is not None else 1.0,
            "inv_temp": 1.0 / opts.temperature,
            "ACC": _acc(x.dtype),
            "HAS_CAP": opts.softcap is not None,
            "BLOCK": _block(x.shape[1], opts.tuning.block),
        }

    def forward_block(self, product: Product, a: int, b: int) -> _Chunk:
        x = product.raw(a, b)
        n, width = x.shape
        compute = compute_dtype(x.dtype)
        if width == 0 or n == 0:
            return self.stats(torch.empty(n, width, dtype=compute, device=x.device), a)
        new = torch.empty
        zmax, s0, s1, s2, zy = (new(n, dtype=compute, device=x.device) for _ in range(5))
        arg = new(n, dtype=torch.int64, device=x.device)
        target = x if self.target is None else self.target[a:b]
        _kernels.stats_kernel[(n,)](
            x, x.stride(0), target, zmax, arg, s0, s1, s2, zy,
            HAS_TARGET=self.target is not None, **self._launch(x),
        )  # fmt: skip
        k = min(self.opts.top_k, width)
        values, indices = torch.topk(x, k, dim=1)
        values = values.to(compute)
        if self.opts.softcap is not None:  # monotone: the top of x is the top of z
            values = self.opts.softcap * torch.tanh(values / self.opts.softcap)
        values = values / self.opts.temperature
        sums = [s0, s1, s2] + ([zy] if self.target is not None else [])
        return _Chunk(zmax, sums, arg, values, indices + self.start)

    def backward_block(
        self,
        product: Product,
        a: int,
        b: int,
        lse: torch.Tensor,
        entropy: torch.Tensor,
        collision: torch.Tensor,
        up: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = product.raw(a, b)
        n = x.shape[0]
        if n == 0 or x.shape[1] == 0:
            return x, x
        g_lp, g_s, g_l, g_c = up
        coef = torch.zeros_like(lse)
        for g, factor in ((g_l, 1.0), (g_lp, -1.0)):
            if g is not None:
                coef = coef + factor * g
        if g_s is not None:
            coef = coef - g_s * entropy
        if g_c is not None:
            coef = coef - 2.0 * g_c * collision
        unused = coef  # pointers the kernel never reads without their flag
        _kernels.stats_grad_kernel[(n,)](
            x, x.stride(0), x if self.target is None else self.target[a:b],
            lse.contiguous(), coef.contiguous(),
            unused if g_s is None else g_s.contiguous(),
            unused if g_c is None else g_c.contiguous(),
            unused if g_lp is None else g_lp.contiguous(),
            HAS_ENTROPY=g_s is not None, HAS_COLLISION=g_c is not None,
            HAS_LOGPROB=g_lp is not None and self.target is not None,
            **self._launch(x),
        )  # fmt: skip
        return x, x

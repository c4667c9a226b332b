"""The distillation's Triton step: the row kernel's divergence mode.

:func:`divergence_step` runs ``divergence_kernel`` over one chunk: the student's block
``h W^T + b`` in the input dtype and the teacher's block (its logits, or its own output
layer's product), giving the per-token divergence and hard part and, with scales,
writing ``dL/dx`` over the student's block for the driver to accumulate.
"""

from __future__ import annotations

import math

import torch

from .._options import Options, compute_dtype
from . import _kernels
from ._dense import _acc, _block

__all__ = ["KINDS", "divergence_step"]

KINDS = {"forward_kl": 0, "reverse_kl": 1, "jsd": 2, "skew_kl": 3, "skew_reverse_kl": 4, "tvd": 5}


def divergence_step(
    x: torch.Tensor,
    teacher: torch.Tensor,
    teacher_cap: float | None,
    target: torch.Tensor | None,
    scale: torch.Tensor | None,
    opts: Options,
    kind: str,
) -> torch.Tensor:
    """Per-token losses of the chunk ``x`` (n, V) against ``teacher`` (n, V, raw logits,
    soft-capped by ``teacher_cap``); with ``scale`` (n,) ``scale * dL/dx`` over ``x``."""
    n, width = x.shape
    compute = compute_dtype(x.dtype)
    div = torch.empty(n, dtype=compute, device=x.device)
    hard = torch.zeros_like(div)
    if n == 0:
        return div
    if teacher.stride(-1) != 1:
        teacher = teacher.contiguous()
    has_hard = bool(opts.hard_weight) and target is not None
    beta = opts.beta
    _kernels.divergence_kernel[(n,)](
        x, x.stride(0), teacher, teacher.stride(0),
        target if target is not None else div, div, hard,
        scale if scale is not None else div,
        width, opts.ignore_index,
        opts.softcap if opts.softcap is not None else 1.0,
        teacher_cap if teacher_cap is not None else 1.0,
        1.0 / opts.temperature, beta,
        math.log(beta) if beta > 0 else -math.inf,
        math.log1p(-beta) if beta < 1 else -math.inf,
        opts.hard_weight,
        ACC=_acc(x.dtype), KIND=KINDS[kind], HAS_CAP=opts.softcap is not None,
        TEACHER_CAP=teacher_cap is not None, HAS_HARD=has_hard, GRAD=scale is not None,
        BLOCK=_block(width, opts.tuning.block),
    )  # fmt: skip
    lam = opts.hard_weight
    return (1.0 - lam) * div + lam * hard if lam else div

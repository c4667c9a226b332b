"""The frozen options of the Triton losses: everything about a call that is not a tensor.

Kept apart from the kernels so that building options never imports Triton.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DenseOptions:
    """Options of :func:`triton_cross_entropy` and :func:`triton_kl_loss` (checked upstream).

    ``inplace=True`` lets the gradient overwrite the logits in the forward pass (the
    logits' memory is reused, as Liger-Kernel does); only for logits that nothing else
    reads afterwards.  Their autograd version is bumped so that a later use by a saved
    tensor raises instead of reading the gradient.  ``block`` forces the kernel's block of
    classes (tests use it to exercise the loop over blocks).
    """

    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    divergence: bool = False
    inplace: bool = False
    block: int | None = None


@dataclasses.dataclass(frozen=True)
class LinearOptions:
    """Options of :func:`triton_linear_cross_entropy` (checked upstream).

    ``chunk_size=None`` picks a number of tokens per chunk from :data:`CHUNK_BUDGET_BYTES`
    (see ``_linear.default_chunk_size``).  ``needs_grad`` is filled in by the entry point
    from grad mode and ``requires_grad``: which of hidden, weight, bias need a gradient.

    ``weight_grad="float32"`` (the default) accumulates a half-precision weight gradient
    in float32 (4 bytes per weight element at the peak); ``"input"`` accumulates it in the
    weight's own dtype, each chunk's product rounded once (2 bytes per element, what
    Liger-Kernel and CCE do by default), for memory-bound runs and for comparison.
    """

    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    chunk_size: int | None = None
    block: int | None = None
    weight_grad: str = "float32"
    needs_grad: tuple[bool, bool, bool] = (False, False, False)

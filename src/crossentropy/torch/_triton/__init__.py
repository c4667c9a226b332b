"""Triton kernels for the PyTorch losses (CUDA, or the CPU interpreter for tests).

Nothing here imports Triton until a loss runs: :func:`available` only looks for it, and
the entry points import the kernels on first use.  ``import crossentropy.torch`` does not
import this package at all.

Entry points (arguments already checked by the public wrappers in
:mod:`crossentropy.torch`; class dimension last):

* :func:`triton_cross_entropy` ``(logits, target, weight, options)``
* :func:`triton_kl_loss` ``(logits, target, weight, options)``
* :func:`triton_linear_cross_entropy` ``(hidden, weight, target, bias, options)``

They take the one :class:`~.._options.Options` of every loss (``DenseOptions`` and
``LinearOptions`` build it with the kernel tuning).  Their semantics are those of the
plain-PyTorch path (``_reference`` and ``_chunked``): the same options, the same
reductions (:mod:`.._reduction`: an all-ignored ``mean`` gives 0 and zero gradients),
float32 results for half inputs, float64 kept.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from .._options import Options
from ._options import DenseOptions, LinearOptions

__all__ = [
    "DenseOptions",
    "LinearOptions",
    "available",
    "interpreter",
    "triton_cross_entropy",
    "triton_dense_loss",
    "triton_kl_loss",
    "triton_linear_cross_entropy",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreter() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels run on the CPU, for tests."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def available(tensor: torch.Tensor) -> bool:
    """Can the Triton path run on ``tensor``?

    True for a floating CUDA tensor when Triton is installed, and for a CPU tensor when
    the Triton interpreter is on (``TRITON_INTERPRET=1``).  Looks only; imports nothing.
    """
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _FLOATS:
        return False
    if tensor.device.type == "cuda":
        return _triton_installed()
    return tensor.device.type == "cpu" and interpreter() and _triton_installed()


def triton_dense_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: Options,
    divergence: bool = False,
) -> torch.Tensor:
    """:func:`crossentropy.torch.cross_entropy` (``kl_loss`` with ``divergence``) through
    the Triton row kernel."""
    from . import _dense

    return _dense.apply(logits, target, weight, options, divergence)


def triton_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    options: Options | None = None,
) -> torch.Tensor:
    """:func:`crossentropy.torch.cross_entropy` through the Triton row kernel."""
    return triton_dense_loss(logits, target, weight, options or DenseOptions(), False)


def triton_kl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    options: Options | None = None,
) -> torch.Tensor:
    """:func:`crossentropy.torch.kl_loss` through the Triton row kernel."""
    return triton_dense_loss(logits, target, weight, options or DenseOptions(), True)


def triton_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    options: Options | None = None,
) -> torch.Tensor:
    """:func:`crossentropy.torch.linear_cross_entropy` with the row kernel as the driver's
    chunk step (cuBLAS products around it).

    ``hidden`` (..., D), ``weight`` (V, D), integer ``target`` (...), ``bias`` (V,) or
    None, all of one floating dtype.  ``reduction='none'`` returns shape (...).
    """
    from .. import _chunked

    options = options or LinearOptions()
    dim = hidden.shape[-1]
    flat = hidden.reshape(math.prod(hidden.shape[:-1]), dim).contiguous()  # D may be 0
    loss = _chunked.apply(flat, weight, bias, target.reshape(-1).long(), None, options)
    if options.reduction == "none":
        loss = loss.reshape(hidden.shape[:-1])
    return loss

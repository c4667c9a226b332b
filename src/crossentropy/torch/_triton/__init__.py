"""Triton kernels for the PyTorch losses (CUDA, or the CPU interpreter for tests).

Nothing here imports Triton until a loss runs: :func:`available` only looks for it, and
the entry points import the kernels on first use.  ``import crossentropy.torch`` does not
import this package at all.

Entry points (arguments already checked by the public wrappers in
:mod:`crossentropy.torch`; class dimension last):

* :func:`triton_cross_entropy` ``(logits, target, weight, options)``
* :func:`triton_kl_loss` ``(logits, target, weight, options)``
* :func:`triton_linear_cross_entropy` ``(hidden, weight, target, bias, options)``

Their semantics are those of the plain-PyTorch path (``_reference`` and ``_chunked``):
the same options, ``mean`` as ``sum(loss) / sum(omega)`` with an all-ignored batch giving
0 and zero gradients, float32 results for half inputs, float64 kept.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os

import torch

from ._options import DenseOptions, LinearOptions

__all__ = [
    "DenseOptions",
    "LinearOptions",
    "available",
    "interpreter",
    "triton_cross_entropy",
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


def triton_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    options: DenseOptions | None = None,
) -> torch.Tensor:
    """:func:`crossentropy.torch.cross_entropy` through the Triton row kernel."""
    from . import _dense

    options = options or DenseOptions()
    if options.divergence:
        options = dataclasses.replace(options, divergence=False)
    return _dense.apply(logits, target, weight, options)


def triton_kl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    options: DenseOptions | None = None,
) -> torch.Tensor:
    """:func:`crossentropy.torch.kl_loss` through the Triton row kernel."""
    from . import _dense

    options = options or DenseOptions()
    if not options.divergence:
        options = dataclasses.replace(options, divergence=True)
    return _dense.apply(logits, target, weight, options)


def triton_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    options: LinearOptions | None = None,
) -> torch.Tensor:
    """:func:`crossentropy.torch.linear_cross_entropy`: cuBLAS products around the row kernel.

    ``hidden`` (..., D), ``weight`` (V, D), integer ``target`` (...), ``bias`` (V,) or
    None, all of one floating dtype.  ``reduction='none'`` returns shape (...).
    """
    from . import _linear

    options = options or LinearOptions()
    if options.weight_grad not in ("float32", "input"):
        raise ValueError(f"weight_grad must be 'float32' or 'input', got {options.weight_grad!r}")
    dim = hidden.shape[-1]
    flat = hidden.reshape(math.prod(hidden.shape[:-1]), dim)  # D may be 0
    if not flat.is_contiguous():
        flat = flat.contiguous()
    labels = target.reshape(-1).long()
    enabled = torch.is_grad_enabled()
    options = dataclasses.replace(
        options,
        needs_grad=(
            enabled and hidden.requires_grad,
            enabled and weight.requires_grad,
            enabled and bias is not None and bias.requires_grad,
        ),
    )
    loss = _linear.apply(flat, weight, bias, labels, options)
    if options.reduction == "none":
        loss = loss.reshape(hidden.shape[:-1])
    return loss

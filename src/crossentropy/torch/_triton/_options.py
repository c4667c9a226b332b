"""The options of the Triton entry points: the one :class:`~.._options.Options`, composed.

``DenseOptions(...)`` and ``LinearOptions(...)`` take the loss options and the kernel
tuning of :class:`~.._options.TritonOptions` as flat keywords and return one ``Options``
(with ``impl='triton'``): the tuning is a field of it, never a second option list.  Kept
apart from the kernels so that building options never imports Triton.
"""

from __future__ import annotations

from typing import Any

from .._options import Options, TritonOptions

__all__ = ["DenseOptions", "LinearOptions"]


def DenseOptions(*, block: int | None = None, inplace: bool = False, **loss: Any) -> Options:
    """Options of :func:`triton_cross_entropy` and :func:`triton_kl_loss`.

    ``inplace=True`` lets the gradient overwrite the logits in the forward pass (the
    logits' memory is reused, as Liger-Kernel does); only for logits that nothing else
    reads afterwards.  ``block`` forces the kernel's block of classes (tests use it to
    exercise the loop over blocks).  ``loss`` are :class:`Options`' fields.
    """
    return Options(impl="triton", triton=TritonOptions(block=block, inplace=inplace), **loss)


def LinearOptions(
    *, block: int | None = None, weight_grad: str = "float32", **loss: Any
) -> Options:
    """Options of :func:`triton_linear_cross_entropy`.

    ``weight_grad="float32"`` (the default) accumulates a half-precision weight gradient
    in float32 (4 bytes per weight element at the peak); ``"input"`` accumulates it in
    the weight's own dtype, each chunk's product rounded once (2 bytes per element, what
    Liger-Kernel and CCE do by default).  ``loss`` are :class:`Options`' fields
    (``chunk_size`` among them).
    """
    return Options(
        impl="triton", triton=TritonOptions(block=block, weight_grad=weight_grad), **loss
    )

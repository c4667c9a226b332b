"""``nn.Module`` wrappers: the options live on the module, the tensors go to ``forward``."""

from __future__ import annotations

import torch
from torch import nn

from . import _checks
from ._functional import cross_entropy, kl_loss, linear_cross_entropy

__all__ = ["CrossEntropyLoss", "KLLoss", "LinearCrossEntropyLoss"]


class _DenseLoss(nn.Module):
    weight: torch.Tensor | None

    def __init__(
        self,
        *,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        validate: bool | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = _checks.ignore_index(ignore_index)
        self.reduction = _checks.reduction(reduction)
        self.label_smoothing = _checks.label_smoothing(label_smoothing)
        self.z_loss = _checks.z_loss(z_loss)
        self.softcap = _checks.softcap(softcap)
        self.validate = validate
        self.impl = impl

    def _options(self) -> dict:
        return {
            "weight": self.weight,
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
            "z_loss": self.z_loss,
            "softcap": self.softcap,
            "validate": self.validate,
            "impl": self.impl,
        }

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}"
        )


class CrossEntropyLoss(_DenseLoss):
    """Module form of :func:`crossentropy.torch.cross_entropy` (``weight`` is a buffer).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import CrossEntropyLoss
    >>> CrossEntropyLoss(label_smoothing=0.1)(torch.zeros(2, 4), torch.tensor([1, 3]))
    tensor(1.3863)
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, **self._options())


class KLLoss(_DenseLoss):
    """Module form of :func:`crossentropy.torch.kl_loss` (``weight`` is a buffer).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import KLLoss
    >>> KLLoss()(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]))
    tensor(0.)
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return kl_loss(logits, target, **self._options())


class LinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`crossentropy.torch.linear_cross_entropy`.

    The module holds the options (and ``class_weight``, as a buffer); the projection's
    ``weight`` (and ``bias``) are passed to ``forward``, so a model can share its own
    output layer (e.g. tied embeddings).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import LinearCrossEntropyLoss
    >>> weight = torch.zeros(3, 2, requires_grad=True)  # a 2 -> 3 head, all logits 0
    >>> loss = LinearCrossEntropyLoss()(torch.ones(4, 2), weight, torch.tensor([0, 1, 2, 0]))
    >>> round(loss.item(), 4)  # log 3
    1.0986
    >>> loss.backward()
    >>> weight.grad.shape
    torch.Size([3, 2])
    """

    class_weight: torch.Tensor | None

    def __init__(
        self,
        *,
        class_weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
        validate: bool | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.register_buffer("class_weight", class_weight)
        self.ignore_index = _checks.ignore_index(ignore_index)
        self.reduction = _checks.reduction(reduction)
        self.label_smoothing = _checks.label_smoothing(label_smoothing)
        self.z_loss = _checks.z_loss(z_loss)
        self.softcap = _checks.softcap(softcap)
        self.chunk_size = _checks.chunk_size(chunk_size)
        self.validate = validate
        self.impl = impl

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return linear_cross_entropy(
            hidden,
            weight,
            target,
            bias=bias,
            class_weight=self.class_weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            chunk_size=self.chunk_size,
            validate=self.validate,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap}, chunk_size={self.chunk_size}"
        )

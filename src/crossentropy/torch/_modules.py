"""``nn.Module`` wrappers: the options live on the module, the tensors go to ``forward``."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ._functional import dense_loss, fused_loss
from ._options import Options

__all__ = ["CrossEntropyLoss", "KLLoss", "LinearCrossEntropyLoss"]

_FIELDS = frozenset(f.name for f in dataclasses.fields(Options))


class _Loss(nn.Module):
    """A loss module: one :class:`Options`, built (and so checked) in the constructor,
    kept as ``self.options``; each option also reads as an attribute (``loss.reduction``)."""

    options: Options

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("options")
        if options is not None and name in _FIELDS:
            return getattr(options, name)
        return super().__getattr__(name)

    def extra_repr(self) -> str:
        return self.options.describe()


class _DenseLoss(_Loss):
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
        temperature: float = 1.0,
        normalize_by: float | torch.Tensor | None = None,
        validate: bool | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.options = Options.of(locals())
        self.register_buffer("weight", weight)
        self.validate = validate


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
        return dense_loss(logits, target, self.weight, self.options, self.validate, False)


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
        return dense_loss(logits, target, self.weight, self.options, self.validate, True)


class LinearCrossEntropyLoss(_Loss):
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
        temperature: float = 1.0,
        normalize_by: float | torch.Tensor | None = None,
        chunk_size: int | None = None,
        validate: bool | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.options = Options.of(locals())
        self.register_buffer("class_weight", class_weight)
        self.validate = validate

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return fused_loss(
            hidden, weight, target, bias, self.class_weight, self.options, self.validate
        )

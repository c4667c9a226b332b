"""The fused loss behind a patched model's ``loss_function``: ``ForCausalLMLoss``'s
semantics from the hidden states, the output layer's weight and the recorded maps."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..torch import linear_cross_entropy
from ._lazy import LazyLogits

__all__ = ["fused_causal_lm_loss"]


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.5
        return None
    return DTensor


@contextlib.contextmanager
def _unsharded(head: torch.nn.Module, model_name: str) -> Iterator[tuple[Any, Any]]:
    """The head's weight and bias as plain tensors.

    Under FSDP2 the output layer's parameters are plain (all-gathered) tensors only inside
    the forward of the module that owns them.  A model sharded as a whole owns them in its
    root module, whose forward is still running here.  A head sharded on its own
    (``fully_shard(model.lm_head)``) has been resharded when its forward returned, so it
    is gathered again for the loss (the all-gather its backward would have made) and
    resharded after; the weight gradient computed in the loss then lands on the
    unsharded parameter, where FSDP's reduce-scatter takes it when the gradient reaches
    the head's input.
    """
    weight, bias = head.weight, head.bias
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(weight, dtensor):
        yield weight, bias
        return
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(head, FSDPModule):
        raise ValueError(
            f"crossentropy.transformers: {model_name}'s output layer weight is a DTensor "
            "outside its FSDP module's forward (tensor parallelism, or FSDP applied to "
            "a parent that resharded it); the fused loss needs the whole weight. "
            "Shard the whole model or the output layer itself with fully_shard."
        )
    head.unshard()
    try:
        yield head.weight, head.bias
    finally:
        head.reshard()


@torch.compiler.disable
def fused_causal_lm_loss(
    logits: LazyLogits,
    labels: torch.Tensor,
    *,
    num_items_in_batch: torch.Tensor | int | None,
    ignore_index: int,
    shift_labels: torch.Tensor | None,
    z_loss: float,
    label_smoothing: float,
    chunk_size: int | None,
) -> torch.Tensor:
    """``ForCausalLMLoss(logits, labels, ...)`` without the logits.

    The labels are shifted as there (a pad of ``ignore_index`` then one step left) unless
    ``shift_labels`` is given; ``num_items_in_batch`` makes the reduction a sum divided by
    it (a tensor stays on its device: no host sync).  The maps recorded on ``logits``,
    ``post * tanh(pre * z)``, become a scale of the hidden states (and bias) and the
    softcap.

    Eager under ``torch.compile``: the fused loss is an opaque eager function anyway, and
    tracing its argument checks would only add frames to compile.
    """
    hidden = logits.hidden
    scale, softcap = logits.post.loss_form()
    if shift_labels is None:
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    target = shift_labels.reshape(-1)
    with _unsharded(logits.head, logits.model_name) as (weight, bias):
        device = weight.device
        hidden = hidden.to(device)
        target = target.to(device)
        if torch.is_autocast_enabled(device.type):
            # What the nn.Linear would have computed in: the autocast dtype.
            dtype = torch.get_autocast_dtype(device.type)
            hidden, weight = hidden.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        hidden = hidden.reshape(-1, hidden.shape[-1])
        if scale != 1.0:
            hidden = hidden * scale
            bias = bias * scale if bias is not None else None
        with torch.autocast(device.type, enabled=False):
            loss = linear_cross_entropy(
                hidden,
                weight,
                target,
                bias=bias,
                ignore_index=ignore_index,
                reduction="mean" if num_items_in_batch is None else "sum",
                label_smoothing=label_smoothing,
                z_loss=z_loss,
                softcap=softcap,
                chunk_size=chunk_size,
            )
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss

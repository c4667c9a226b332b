"""Tensor checks for the PyTorch losses: one helper per kind, ValueError/TypeError naming
the argument.  (The options are checked once, by :class:`._options.Options`.)

The shape and dtype checks look at metadata only and always run.  The checks that
read the data (label range, probability rows) synchronise with the host, so by default
(``validate=None``) they run only where that costs nothing: CPU tensors outside
``torch.compile``.  ``validate=True`` forces them, ``validate=False`` skips them.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import torch

from .. import _checks as _array_checks
from .._array import check_validate, checks_are_free

_INTEGERS = tuple(
    getattr(torch, name)
    for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32")
    if hasattr(torch, name)
)


class DtypeMismatchError(TypeError, ValueError):
    """Tensors that must share a dtype do not.

    Both a ``TypeError`` (a wrong dtype is a wrong type, the house rule) and a
    ``ValueError`` (the contract for mismatched arguments), as NumPy's ``AxisError`` is
    both ``ValueError`` and ``IndexError``: code catching either is right.
    """


def same_dtype(reference: torch.Tensor, reference_name: str, **tensors: object) -> None:
    """Raise ``DtypeMismatchError`` naming the first tensor whose dtype is not the reference's."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.dtype != reference.dtype:
            raise DtypeMismatchError(
                f"{name} must have {reference_name}'s dtype {reference.dtype}, got {value.dtype}"
            )


def tensor(value: Any, name: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def floating(value: torch.Tensor, name: str) -> None:
    tensor(value, name)
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")


def logits(value: Any, name: str = "logits") -> None:
    floating(value, name)
    if value.ndim < 1 or value.shape[-1] == 0:
        raise ValueError(
            f"{name} must have a non-empty class dimension (the last), got shape "
            f"{tuple(value.shape)}"
        )


def reads_data(validate: bool | None, tensor: torch.Tensor) -> bool:
    """Whether the data checks run: ``validate`` if given, else where they cost no host
    synchronisation (CPU tensors outside ``torch.compile``: the measures' rule,
    :func:`crossentropy._array.checks_are_free`).

    ``validate=True`` on the meta device (no data to read) is refused.
    """
    validate = check_validate(validate)
    if validate is None:
        return checks_are_free(tensor)
    if validate and tensor.device.type == "meta":
        raise ValueError("cannot validate data on the meta device; pass validate=False")
    return validate


def not_sharded(**tensors: object) -> None:
    """Refuse a DTensor (e.g. a parameter sharded by FSDP2's ``fully_shard``) with a
    ValueError that says what to do, before any kernel mixes it with plain tensors."""
    for name, value in tensors.items():
        if type(value).__name__ == "DTensor":
            placements = tuple(getattr(value, "placements", ()))
            raise ValueError(
                f"{name} is a DTensor (placements {placements}): the "
                "single-process loss needs plain tensors.  Call it where the parameter is "
                "unsharded (inside the module's forward under FSDP2, as "
                "crossentropy.transformers.patch does), pass the local tensor "
                f"({name}.to_local()) of a replicated DTensor, or, for a weight sharded by "
                "vocabulary rows, use crossentropy.torch.distributed."
                "vocab_parallel_linear_cross_entropy"
            )


def output_layer(
    hidden: Any,
    weight: Any,
    bias: Any,
    *,
    weight_name: str = "weight",
    rows: str = "V",
    allow_empty: bool = False,
    **others: Any,
) -> tuple[int, int]:
    """Check a fused head's hidden states, output weight (``weight_name``, shape
    ``(rows, D)``) and bias: dtypes, shapes, one device with ``others``, no DTensor.
    Returns the weight's ``(rows, D)``.  ``allow_empty``: a vocabulary-parallel slice
    may hold no row."""
    floating(hidden, "hidden")
    floating(weight, weight_name)
    not_sharded(hidden=hidden, **{weight_name: weight}, bias=bias)
    if hidden.ndim < 1 or weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{weight_name} must have shape ({rows}, D) with D = hidden.shape[-1]; got hidden "
            f"{tuple(hidden.shape)} and {weight_name} {tuple(weight.shape)}"
        )
    same_dtype(hidden, "hidden", **{weight_name: weight})
    vocab, dim = weight.shape
    if vocab == 0 and not allow_empty:
        raise ValueError(f"{weight_name} must have at least one row (class)")
    same_device(hidden=hidden, **{weight_name: weight}, bias=bias, **others)
    if bias is not None:
        floating(bias, "bias")
        if tuple(bias.shape) != (vocab,):
            raise ValueError(f"bias must have shape ({vocab},), got {tuple(bias.shape)}")
        same_dtype(hidden, "hidden", bias=bias)
    return int(vocab), int(dim)


def same_device(**tensors: torch.Tensor | None) -> None:
    """Every given tensor on the first one's device (None skipped); ValueError naming them.

    Checked before any kernel runs: mixing devices would otherwise fail deep inside, or
    (a meta tensor with a CPU one) return uninitialised memory.
    """
    items = [(name, t) for name, t in tensors.items() if isinstance(t, torch.Tensor)]
    if not items:
        return
    first, ref = items[0]
    for name, t in items[1:]:
        if t.device != ref.device:
            raise ValueError(
                f"{name} must be on the same device as {first} ({ref.device}), got {t.device}"
            )


def as_labels(value: Any) -> Any:
    """Class indices of a narrower integer dtype (int32, int16, int8, uint8) as int64.

    Done before any check: comparing a uint8 label with a negative ``ignore_index`` would
    wrap it (156 == -100 in uint8).  Anything else is returned unchanged.
    """
    if isinstance(value, torch.Tensor) and value.dtype in _INTEGERS:
        return value.long()
    return value


def target(value: Any, logits_shape: tuple[int, ...], validate: bool, ignore: int) -> bool:
    """Check ``target`` against logits of ``logits_shape``; True for probabilities."""
    tensor(value, "target")
    batch, num_classes = tuple(logits_shape[:-1]), logits_shape[-1]
    if value.dtype.is_floating_point:
        if tuple(value.shape) != tuple(logits_shape):
            raise ValueError(
                f"target (probabilities) must have the logits' shape {tuple(logits_shape)}, "
                f"got {tuple(value.shape)}"
            )
        if validate:
            xp = array_api_compat.array_namespace(value)
            try:
                _array_checks.probabilities(xp, value.detach(), "target", -1)
            except ValueError as error:
                # The measures' hint about Logits/LogProbs does not apply to a loss target.
                raise ValueError(str(error).replace(", or pass Logits/LogProbs", "")) from None
        return True
    if value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices or floating probabilities, got {value.dtype}"
        )
    if tuple(value.shape) != batch:
        hint = ""
        if len(logits_shape) > 2 and tuple(value.shape) == (logits_shape[0], *logits_shape[2:]):
            hint = (
                "; the class dimension is the last one here: for F.cross_entropy's "
                "(N, C, d1, ...) layout pass logits.movedim(1, -1)"
            )
        raise ValueError(
            f"target (class indices) must have shape {batch} (the logits' shape without "
            f"the class dimension), got {tuple(value.shape)}{hint}"
        )
    if validate:
        labels(value, num_classes, ignore)
    return False


def labels(value: torch.Tensor, num_classes: int, ignore: int) -> None:
    """Class indices in ``[0, num_classes)`` or equal to ``ignore`` (one host sync)."""
    bad = ((value < 0) | (value >= num_classes)) & (value != ignore)
    if not bool(bad.any()):
        return
    index = tuple(int(i) for i in bad.nonzero()[0])
    raise ValueError(
        f"target (class indices) must lie in [0, {num_classes}) or equal ignore_index="
        f"{ignore}: found {int(value[index])} at index {index}"
    )


def class_weight(
    value: Any, num_classes: int, validate: bool, name: str = "weight", what: str = "one per class"
) -> None:
    if value is None:
        return
    floating(value, name)
    if tuple(value.shape) != (num_classes,):
        raise ValueError(
            f"{name} must have shape ({num_classes},), {what}, got {tuple(value.shape)}"
        )
    if validate and not bool(((value >= 0) & torch.isfinite(value)).all()):
        raise ValueError(f"{name} must be finite and non-negative")


def mask(value: Any, batch: tuple[int, ...]) -> None:
    if value is None:
        return
    tensor(value, "mask")
    if value.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor, got {value.dtype}")
    if tuple(value.shape) != batch:
        raise ValueError(
            f"mask must have shape {batch} (the logits' shape without the class dimension), "
            f"got {tuple(value.shape)}"
        )

"""The options of every loss: one frozen object, each option checked here and only here.

The public functions keep flat, PyTorch-style keyword signatures; each builds one
:class:`Options` at its edge (which validates every field in its constructor) and passes
it down unchanged to the reference, chunked, Triton and vocabulary-parallel paths.
Backend and parallel extras compose it rather than restate it: :class:`TritonOptions`
(kernel tuning) and :class:`VocabParallel` (where this rank's slice lies, and its group)
are fields of the one object, set with :func:`dataclasses.replace` where they are known.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["REDUCTIONS", "Options", "TritonOptions", "VocabParallel", "compute_dtype"]

REDUCTIONS = ("mean", "none", "sum")
IMPLS = ("auto", "torch", "triton")
WEIGHT_GRADS = ("float32", "input")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")

_F32 = torch.finfo(torch.float32)
_INT64 = torch.iinfo(torch.int64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _positive_float32(value: Any, name: str, alternative: str = "") -> float:
    """A positive finite number that float32 can divide by (softcap, temperature)."""
    number = _real(value, name)
    # Beyond float32's range it is inf (z / s = 0, s * tanh = inf * 0 = NaN) and below
    # its smallest normal number it is 0.
    if not (math.isfinite(number) and _F32.tiny <= number <= _F32.max):
        raise ValueError(
            f"{name} must be a positive finite number representable in float32 (between "
            f"{_F32.tiny:.4g} and {_F32.max:.4g}){alternative}, got {value!r}"
        )
    return number


@dataclasses.dataclass(frozen=True)
class TritonOptions:
    """Tuning of the Triton kernels; no effect on the result beyond float rounding.

    ``block`` forces the row kernel's block of classes (tests use it to exercise the loop
    over blocks).  ``inplace=True`` lets a dense loss's gradient overwrite its logits in
    the forward pass (as Liger-Kernel does), only for logits nothing else reads
    afterwards; their autograd version is bumped so that a later use raises.
    ``weight_grad="float32"`` accumulates a half-precision weight gradient in float32
    (4 bytes per weight element at the peak); ``"input"`` in the weight's own dtype, each
    chunk's product rounded once (2 bytes, what Liger-Kernel and CCE do by default).
    """

    block: int | None = None
    inplace: bool = False
    weight_grad: str = "float32"

    def __post_init__(self) -> None:
        if self.block is not None and (
            isinstance(self.block, bool)
            or not isinstance(self.block, numbers.Integral)
            or self.block < 1
        ):
            raise ValueError(f"block must be a positive integer or None, got {self.block!r}")
        if self.weight_grad not in WEIGHT_GRADS:
            raise ValueError(f"weight_grad must be 'float32' or 'input', got {self.weight_grad!r}")


@dataclasses.dataclass(frozen=True)
class VocabParallel:
    """This rank's slice ``[start, stop)`` of a vocabulary split across ``group``.

    ``sizes`` holds every rank's slice size in group-rank order.  In one process there is
    no such object and the combine step of the chunk maths is the identity.
    """

    rank: int
    sizes: tuple[int, ...]
    group: Any = None
    #: Sum the hidden gradient over the group in backward (fused loss only).
    reduce_hidden_grad: bool = True

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def stop(self) -> int:
        return self.start + self.sizes[self.rank]

    @property
    def vocab(self) -> int:
        return sum(self.sizes)


@dataclasses.dataclass(frozen=True, eq=False)
class Options:
    """Everything about a loss call that is not a data tensor, validated on construction.

    ``z = softcap(logits) / temperature`` is what every loss sees.  ``normalize_by``
    (a number or a 0-d tensor) replaces the divisor of ``reduction='mean'``.  ``top_k``
    is the number of largest log-probabilities the per-token statistics return;
    ``divergence``, ``beta`` and ``hard_weight`` choose a distillation loss.  ``impl``
    and ``chunk_size`` choose how, never what.  ``triton`` and ``parallel`` are the
    backend and vocabulary-parallel extras.
    """

    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    temperature: float = 1.0
    normalize_by: float | torch.Tensor | None = None
    top_k: int = 0
    divergence: str = "forward_kl"
    beta: float = 0.5
    hard_weight: float = 0.0
    chunk_size: int | None = None
    impl: str = "auto"
    triton: TritonOptions | None = None
    parallel: VocabParallel | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the checked values once, here
        if isinstance(self.ignore_index, bool) or not isinstance(
            self.ignore_index, numbers.Integral
        ):
            raise TypeError(f"ignore_index must be an integer, got {self.ignore_index!r}")
        if not _INT64.min <= int(self.ignore_index) <= _INT64.max:
            raise ValueError(
                f"ignore_index must fit in int64 (the labels' dtype), got {self.ignore_index!r}"
            )
        set_(self, "ignore_index", int(self.ignore_index))
        if self.reduction not in REDUCTIONS:
            raise ValueError(
                f"reduction must be one of 'mean', 'none', 'sum', got {self.reduction!r}"
            )
        eps = _real(self.label_smoothing, "label_smoothing")
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got {self.label_smoothing!r}")
        set_(self, "label_smoothing", eps)
        coef = _real(self.z_loss, "z_loss")
        if not (math.isfinite(coef) and coef >= 0.0):
            raise ValueError(f"z_loss must be a finite number >= 0, got {self.z_loss!r}")
        set_(self, "z_loss", coef)
        if self.softcap is not None:
            set_(self, "softcap", _positive_float32(self.softcap, "softcap", " or None"))
        set_(self, "temperature", _positive_float32(self.temperature, "temperature"))
        set_(self, "normalize_by", _normalizer(self.normalize_by, self.reduction))
        if (
            isinstance(self.top_k, bool)
            or not isinstance(self.top_k, numbers.Integral)
            or self.top_k < 0
        ):
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        set_(self, "top_k", int(self.top_k))
        if self.divergence not in DIVERGENCES:
            raise ValueError(
                f"divergence must be one of {', '.join(map(repr, DIVERGENCES))}, "
                f"got {self.divergence!r}"
            )
        beta = _real(self.beta, "beta")
        if self.divergence.startswith("skew") and not 0.0 < beta < 1.0:
            raise ValueError(f"beta must lie in (0, 1) for {self.divergence}, got {self.beta!r}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {self.beta!r}")
        set_(self, "beta", beta)
        hard = _real(self.hard_weight, "hard_weight")
        if not 0.0 <= hard <= 1.0:
            raise ValueError(f"hard_weight must lie in [0, 1], got {self.hard_weight!r}")
        set_(self, "hard_weight", hard)
        if self.chunk_size is not None:
            if (
                isinstance(self.chunk_size, bool)
                or not isinstance(self.chunk_size, numbers.Integral)
                or self.chunk_size < 1
            ):
                raise ValueError(
                    f"chunk_size must be a positive integer or None, got {self.chunk_size!r}"
                )
            set_(self, "chunk_size", int(self.chunk_size))
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of 'auto', 'torch', 'triton', got {self.impl!r}")

    @classmethod
    def of(cls, arguments: dict[str, Any], **extra: Any) -> Options:
        """The options among a public function's ``arguments`` (its ``locals()``: every
        name that is a field here), and ``extra`` ones; so that a signature is the one
        place that lists them."""
        picked = {name: arguments[name] for name in _FIELDS if name in arguments}
        return cls(**picked, **extra)

    @property
    def tuning(self) -> TritonOptions:
        """The Triton kernels' tuning (``triton``, or the defaults when it is None: a
        default instance cannot be a dataclass default under ``torch.compile``)."""
        return self.triton or _DEFAULT_TUNING

    def shared(self) -> list[Any]:
        """What every rank of a vocabulary-parallel group must agree on: every loss
        option (``normalize_by`` only as given or not; the way of computing, chunk size
        and backend extras may differ)."""
        return [
            (f.name, _shown(getattr(self, f.name)))
            for f in dataclasses.fields(self)
            if f.name not in _PER_RANK
        ]

    def describe(self) -> str:
        """``extra_repr`` of the modules: the options that differ from the defaults."""
        parts = [f"reduction={self.reduction!r}", f"ignore_index={self.ignore_index}"]
        for field in _FIELDS:
            if field in ("reduction", "ignore_index"):
                continue
            value = getattr(self, field)
            if value is not _DEFAULTS[field] and value != _DEFAULTS[field]:
                parts.append(f"{field}={value!r}")
        return ", ".join(parts)


_DEFAULT_TUNING = TritonOptions()
#: The fields a public signature names (the backend and parallel extras are composed in).
_FIELDS = tuple(f.name for f in dataclasses.fields(Options) if f.name not in ("triton", "parallel"))
#: Fields that choose how a rank computes, not what: they may differ between ranks.
_PER_RANK = frozenset({"chunk_size", "impl", "triton", "parallel"})


def _shown(value: Any) -> Any:
    """A JSON-able stand-in: a tensor (``normalize_by``) only as "given"."""
    return "given" if isinstance(value, torch.Tensor) else value


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Options)}


def _normalizer(value: Any, reduction: str) -> float | torch.Tensor | None:
    """``normalize_by``: None, a finite number >= 0 or a real 0-d tensor; 'mean' only."""
    if value is None:
        return None
    if reduction != "mean":
        raise ValueError(
            f"normalize_by replaces the divisor of reduction='mean'; got reduction={reduction!r}"
        )
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_complex or value.dtype == torch.bool:
            raise ValueError(
                f"normalize_by must be a real scalar tensor, got shape {tuple(value.shape)} "
                f"and dtype {value.dtype}"
            )
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"normalize_by must be a number or a scalar tensor, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"normalize_by must be finite and >= 0, got {value!r}")
    return number


def vocab_sizes(value: Any, world: int) -> tuple[int, ...] | None:
    """``vocab_sizes``: None or one non-negative integer per rank of the group."""
    if value is None:
        return None
    try:
        sizes: Sequence[Any] = tuple(value)
    except TypeError:
        raise TypeError(f"vocab_sizes must be a sequence of integers, got {value!r}") from None
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in sizes):
        raise ValueError(f"vocab_sizes must hold non-negative integers, got {list(sizes)}")
    out = tuple(int(s) for s in sizes)
    if len(out) != world:
        raise ValueError(
            f"vocab_sizes must have one entry per rank of the group ({world}), got {list(out)}"
        )
    return out

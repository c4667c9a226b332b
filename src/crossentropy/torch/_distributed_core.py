"""Vocabulary-parallel losses: the slice layout, the agreement check and the shared math.

Everything that is the same for the dense and the fused loss lives here:

* :func:`agree` -- one ``all_gather`` of a small fixed-size descriptor (the local slice
  size, the batch shape, the options and any local error) that every rank then checks
  identically, so that a bad call raises the same exception on every rank instead of
  hanging in a later collective.  It also yields the slice sizes when they are not given.
* :func:`combine` -- the forward pass's only two ``O(tokens)`` collectives: an
  ``all_reduce`` MAX of the per-token local maxima and an ``all_reduce`` SUM of the packed
  per-token statistics.
* :func:`label_stats`, :func:`label_loss`, :func:`label_grad_` -- the per-chunk statistics
  of one ``(n, V_r)`` block of (soft-capped) logits, the per-token loss from the combined
  statistics, and the gradient of one block, in place.

Notation (per token ``i``; ``C`` the global vocabulary, ``eps`` the label smoothing,
``w`` the class weights, ``W = sum_c w_c``, ``omega`` the token weight ``w_y``, 0 when
ignored; ``lam`` the z-loss coefficient)::

    loss = (1 - eps) omega (lse - z_y) + [counted] eps / C (W lse - sum_c w_c z_c)
    dloss/dz_c = q_c A - (1 - eps) omega [c = y] - [counted] eps / C w_c
    A = (1 - eps) omega + [counted] eps W / C

and for probability targets ``t`` (``wt = w ((1 - eps) t + eps / C)``, ``T = sum wt``)::

    loss = T lse - sum_c wt_c z_c,     dloss/dz_c = q_c T - wt_c

plus, apart, the z-loss ``zl = [counted] lam lse^2`` whatever the class weights, with
``dzl/dz_c = [counted] 2 lam lse q_c``: its own output, so that ``mean`` can average it
over the counted tokens while the loss is averaged over ``sum omega``.

which are :mod:`crossentropy.torch._reference`'s definitions written with sums that split
over the vocabulary slices.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DESCRIPTOR_BYTES",
    "Layout",
    "agree",
    "chunk_rows",
    "combine",
    "compute_dtype",
    "label_grad_",
    "label_loss",
    "label_stats",
]

#: Size of the per-rank descriptor gathered by :func:`agree`.
DESCRIPTOR_BYTES = 1024

#: Working memory aimed for by one ``(chunk, V_r)`` compute-dtype block.
CHUNK_BUDGET_BYTES = 32 * 2**20


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(num_tokens: int, width: int, dtype: torch.dtype, copies: int = 1) -> int:
    """Tokens per chunk so ``copies`` compute-dtype ``(chunk, width)`` blocks fit the budget."""
    row = max(1, width) * compute_dtype(dtype).itemsize * copies
    size = max(16, (CHUNK_BUDGET_BYTES // row) // 16 * 16)
    return max(1, min(size, num_tokens))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this rank's slice lies in the vocabulary."""

    rank: int
    sizes: tuple[int, ...]

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def stop(self) -> int:
        return self.start + self.sizes[self.rank]

    @property
    def vocab(self) -> int:
        return sum(self.sizes)


class _Descriptor:
    """What a rank tells the others before any statistics are exchanged."""

    def __init__(self) -> None:
        self.error: tuple[str, str] | None = None
        self.fields: dict[str, Any] = {}

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = (type(error).__name__, str(error))

    def encode(self, device: torch.device) -> torch.Tensor:
        record = {"error": self.error, **self.fields}
        data = json.dumps(record, sort_keys=True).encode()
        if len(data) > DESCRIPTOR_BYTES and self.error is not None:
            # Keep the error (shortened) rather than the fields: the error decides the outcome.
            kind, message = self.error
            data = json.dumps({"error": (kind, message[: DESCRIPTOR_BYTES // 2])}).encode()
        if len(data) > DESCRIPTOR_BYTES:
            data = json.dumps({"error": ("ValueError", "call descriptor too long")}).encode()
        buf = torch.zeros(DESCRIPTOR_BYTES, dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return buf.to(device)


def _decode(buf: torch.Tensor) -> dict[str, Any]:
    data = bytes(buf.cpu().tolist()).rstrip(b"\0")
    return json.loads(data.decode())


_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}

#: Descriptor fields that legitimately differ between ranks.
_PER_RANK = frozenset({"error", "size", "labels"})


def agree(
    descriptor: _Descriptor,
    *,
    group: Any,
    device: torch.device,
    name: str,
) -> list[dict[str, Any]]:
    """All-gather every rank's descriptor and raise, identically on every rank, if any
    rank failed locally or the ranks disagree on the batch shape, dtype or options.

    Returns the gathered records in group-rank order.  One collective of
    ``world * DESCRIPTOR_BYTES`` bytes, and one host synchronisation.
    """
    world = dist.get_world_size(group)
    mine = descriptor.encode(device)
    bufs = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(bufs, mine, group=group)
    records = [_decode(b) for b in bufs]
    for rank, record in enumerate(records):
        if record.get("error"):
            kind, message = record["error"]
            raise _ERRORS.get(kind, ValueError)(f"{name}: on rank {rank} of the group: {message}")
    keys = sorted(set(records[0]) - _PER_RANK)
    for key in keys:
        values = [record.get(key) for record in records]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise ValueError(f"{name}: the ranks disagree on {key} ({shown})")
    return records


def resolve_layout(
    records: list[dict[str, Any]] | None,
    *,
    rank: int,
    local_size: int,
    vocab_sizes: Sequence[int] | None,
    world: int,
    name: str,
) -> Layout:
    """The slice layout, from the given ``vocab_sizes`` checked against the local slice,
    or from the gathered local sizes."""
    if records is not None:
        sizes = tuple(int(r["size"]) for r in records)
        given = records[0]["vocab_sizes"]
        if given is not None and tuple(given) != sizes:
            raise ValueError(
                f"{name}: vocab_sizes={list(given)} does not match the slices the ranks hold "
                f"({list(sizes)})"
            )
    else:
        sizes = tuple(int(s) for s in vocab_sizes)  # type: ignore[union-attr]
        if sizes[rank] != local_size:
            raise ValueError(
                f"{name}: vocab_sizes[{rank}] = {sizes[rank]} but this rank's slice holds "
                f"{local_size} classes"
            )
    if sum(sizes) < 1:
        raise ValueError(f"{name}: the vocabulary is empty (slice sizes {list(sizes)})")
    return Layout(rank=rank, sizes=sizes)


def check_vocab_sizes(value: Any, world: int) -> tuple[int, ...] | None:
    """``vocab_sizes``: None or one non-negative integer per rank of the group."""
    if value is None:
        return None
    try:
        sizes = tuple(value)
    except TypeError:
        raise TypeError(f"vocab_sizes must be a sequence of integers, got {value!r}") from None
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in sizes):
        raise ValueError(f"vocab_sizes must hold non-negative integers, got {list(sizes)}")
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != world:
        raise ValueError(
            f"vocab_sizes must have one entry per rank of the group ({world}), got {list(sizes)}"
        )
    return sizes


def combine(local_max: torch.Tensor, sums: list[torch.Tensor], group: Any) -> tuple:
    """The two ``O(tokens)`` collectives of the forward pass.

    ``local_max`` (N,) is each token's maximum over this rank's slice (``-inf`` for an
    empty slice); ``sums[0]`` is ``sum_c exp(z_c - local_max)`` and the other entries are
    per-token (N,) or scalar sums that add across slices.  Returns the global maximum
    made finite (``where(isfinite(M), M, 0)``, as ``torch.logsumexp`` does) and the summed
    entries, ``sums[0]`` rescaled to that maximum.
    """
    gmax = local_max.clone()
    dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=group)
    shift = torch.where(torch.isfinite(gmax), gmax, 0.0)
    # A slice whose maximum is -inf contributes nothing (and must not make inf * 0 = NaN).
    rescale = torch.where(torch.isfinite(local_max), torch.exp(local_max - shift), 0.0)
    parts = [sums[0] * rescale, *sums[1:]]
    sizes = [p.numel() for p in parts]
    packed = torch.cat([p.reshape(-1) for p in parts])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    out = [p.reshape(q.shape) for p, q in zip(packed.split(sizes), parts, strict=True)]
    return shift, out


def local_max_and_sumexp(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row max and ``sum exp(z - max)`` of ``z``, turning ``z`` into ``exp(z - max)``
    in place.  An empty slice gives ``(-inf, 0)``."""
    if z.shape[1] == 0:
        rows = z.shape[0]
        return (
            torch.full((rows,), -torch.inf, dtype=z.dtype, device=z.device),
            torch.zeros(rows, dtype=z.dtype, device=z.device),
        )
    zmax = z.amax(1)
    safe = torch.where(torch.isfinite(zmax), zmax, 0.0)
    z.sub_(safe.unsqueeze(1)).exp_()
    return zmax, z.sum(1)


def soft_cap_(z: torch.Tensor, cap: float | None, keep: torch.Tensor | None = None) -> None:
    """``z = cap * tanh(z / cap)`` in place; ``keep`` receives ``tanh(z / cap)``."""
    if cap is None:
        return
    z.div_(cap).tanh_()
    if keep is not None:
        keep.copy_(z)
    z.mul_(cap)


def label_positions(target: torch.Tensor, layout: Layout, ignore_index: int) -> tuple:
    """``counted``, ``valid`` (label in [0, C)), ``hit`` (label in this slice) and the safe
    local column of each label, all (N,)."""
    counted = target != ignore_index
    valid = (target >= 0) & (target < layout.vocab)
    hit = counted & (target >= layout.start) & (target < layout.stop)
    local = torch.where(hit, target - layout.start, 0)
    return counted, valid, hit, local


def label_stats(
    z: torch.Tensor,
    hit: torch.Tensor,
    local: torch.Tensor,
    class_weight: torch.Tensor | None,
    smoothing: bool,
) -> list[torch.Tensor]:
    """Local statistics of one block of capped logits ``z`` (n, V_r) with class-index
    targets: ``[max, sumexp, z_y, (w_y), (sum_c w_c z_c)]``; ``z`` is overwritten."""
    width = z.shape[1]
    idx = local.clamp(max=max(width - 1, 0)).unsqueeze(1)
    if width:
        z_y = torch.where(hit, z.gather(1, idx).squeeze(1), 0.0)
    else:
        z_y = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    out = [z_y]
    if class_weight is not None:
        w_y = class_weight[idx.squeeze(1)] if width else torch.zeros_like(z_y)
        out.append(torch.where(hit, w_y, 0.0))
    if smoothing:
        out.append(z.sum(1) if class_weight is None else z @ class_weight)
    zmax, sumexp = local_max_and_sumexp(z)
    return [zmax, sumexp, *out]


def label_loss(
    lse: torch.Tensor,
    z_y: torch.Tensor,
    omega: torch.Tensor,
    smooth_sum: torch.Tensor | None,
    weight_total: torch.Tensor | float,
    counted: torch.Tensor,
    valid: torch.Tensor,
    *,
    eps: float,
    vocab: int,
) -> torch.Tensor:
    """Per-token loss from the combined statistics (the reference's formula), without
    the z-loss."""
    loss = (1.0 - eps) * omega * (lse - z_y)
    if eps:
        assert smooth_sum is not None  # gathered whenever there is smoothing
        smooth = weight_total * lse - smooth_sum
        loss = loss + torch.where(counted, (eps / vocab) * smooth, 0.0)
    return torch.where(counted & ~valid, torch.nan, loss)


def label_grad_(
    z: torch.Tensor,
    lse: torch.Tensor,
    scale: torch.Tensor,
    zscale: torch.Tensor,
    omega: torch.Tensor,
    counted: torch.Tensor,
    hit: torch.Tensor,
    local: torch.Tensor,
    class_weight: torch.Tensor | None,
    weight_total: torch.Tensor | float,
    *,
    eps: float,
    vocab: int,
    z_loss: float,
) -> torch.Tensor:
    """Turn a block of capped logits ``z`` into ``scale_i dloss_i/dz + zscale_i dzl_i/dz``
    in place.

    ``scale`` and ``zscale`` are the per-token upstream gradients of the loss and of the
    z-loss (0 for ignored tokens).  The softcap's derivative is applied by the caller.
    """
    cnt = counted.to(z.dtype)
    coef = (1.0 - eps) * omega
    if eps:
        coef = coef + cnt * (eps * weight_total / vocab)
    coef = scale * coef
    if z_loss:
        coef = coef + (2.0 * z_loss) * zscale * lse
    z.sub_(lse.unsqueeze(1)).exp_().mul_(coef.unsqueeze(1))
    if z.shape[1]:
        onehot = torch.where(hit, -(1.0 - eps) * omega * scale, 0.0)
        z.scatter_add_(1, local.unsqueeze(1), onehot.unsqueeze(1))
    if eps:
        off = (eps / vocab) * cnt * scale
        if class_weight is None:
            z.sub_(off.unsqueeze(1))
        else:
            z.sub_(off.unsqueeze(1) * class_weight.unsqueeze(0))
    return z

"""Call preparation of the vocabulary-parallel losses: one step shared by both.

:func:`prepare` takes a loss's arguments as the caller gave them and returns what the
engine needs: the local tensors, the one :class:`~._options.Options` with its
:class:`~._options.VocabParallel` layout, and whether the target holds probabilities.
In order:

1. **DTensor unwrap** (:func:`unwrap`): a DTensor on a one-dimensional mesh, placed as
   the argument requires, becomes its local tensor (differentiably) and lends its group.
2. **Checks**: the options (by building ``Options``) and the loss's own tensor checks.
   When the ranks agree (below), a failure is not raised here but carried in the
   descriptor, so that every rank raises it.
3. **Agreement** (:func:`agree`): one ``all_gather`` of a small fixed-size descriptor
   (the local slice size, the batch shape, dtype, the options every rank must share, any
   local error, and what the data checks found) that every rank then checks
   identically: a bad call raises the same exception on every rank instead of hanging
   in a later collective.  It also yields the slice sizes when they are not given.
4. **Layout**: this rank's slice ``[start, stop)``, from ``vocab_sizes`` or the gather.

``agree`` (default: only when ``vocab_sizes`` is not given) names the exchange;
``validate`` keeps the meaning it has everywhere (see :mod:`crossentropy.torch`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from .._array import check_validate
from . import _checks
from ._options import Options, VocabParallel, vocab_sizes

__all__ = ["DESCRIPTOR_BYTES", "Prepared", "prepare", "unwrap"]

#: Size of the per-rank descriptor gathered by :func:`agree`.
DESCRIPTOR_BYTES = 1024

_ERRORS = {"TypeError": TypeError, "ValueError": ValueError}

#: Descriptor fields that legitimately differ between ranks.
_PER_RANK = frozenset({"error", "size", "labels"})


def unwrap(value: Any, name: str, placement: str, dim: int) -> tuple[Any, Any]:
    """A DTensor's local tensor and its mesh's group, after checking its placement
    (``"replicate"``, or ``"shard"`` along ``dim``); anything else unchanged, None."""
    if type(value).__name__ != "DTensor":
        return value, None
    from torch.distributed.tensor import Replicate, Shard

    mesh = value.device_mesh
    if mesh.ndim != 1:
        raise ValueError(f"{name} (DTensor) must live on a one-dimensional device mesh")
    (place,) = value.placements
    ok = (
        isinstance(place, Replicate)
        if placement == "replicate"
        else isinstance(place, Shard) and place.dim % value.ndim == dim % value.ndim
    )
    if not ok:
        want = "Replicate()" if placement == "replicate" else f"Shard({dim})"
        raise ValueError(f"{name} (DTensor) must be placed {want}, got {place}")
    return value.to_local(), mesh.get_group()


@dataclasses.dataclass
class Prepared:
    """What :func:`prepare` found: the options with their layout, the target's kind and
    the flat target."""

    opts: Options
    soft: bool
    target: torch.Tensor | None


@dataclasses.dataclass
class Local:
    """What a loss's own checks report: its slice width, the batch shape of its tokens,
    dtype, target kind and more descriptor fields (shared by every rank)."""

    size: int
    batch: tuple[int, ...]
    dtype: torch.dtype
    soft: bool
    fields: dict[str, Any]


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


def agree(
    descriptor: _Descriptor, *, group: Any, device: torch.device, name: str
) -> list[dict[str, Any]]:
    """All-gather every rank's descriptor and raise, identically on every rank, if any
    rank failed locally or the ranks disagree on a shared field.

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
    for key in sorted(set(records[0]) - _PER_RANK):
        values = [record.get(key) for record in records]
        if any(v != values[0] for v in values):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise ValueError(f"{name}: the ranks disagree on {key} ({shown})")
    return records


def _layout(
    records: list[dict[str, Any]] | None,
    *,
    rank: int,
    local_size: int,
    sizes: tuple[int, ...] | None,
    name: str,
) -> tuple[int, ...]:
    """The slice sizes: ``vocab_sizes`` checked against the local slice, or gathered."""
    if records is not None:
        held = tuple(int(r["size"]) for r in records)
        if sizes is not None and sizes != held:
            raise ValueError(
                f"{name}: vocab_sizes={list(sizes)} does not match the slices the ranks hold "
                f"({list(held)})"
            )
        sizes = held
    else:
        assert sizes is not None, "without the exchange the sizes are given"
        if sizes[rank] != local_size:
            raise ValueError(
                f"{name}: vocab_sizes[{rank}] = {sizes[rank]} but this rank's slice holds "
                f"{local_size} classes"
            )
    if sum(sizes) < 1:
        raise ValueError(f"{name}: the vocabulary is empty (slice sizes {list(sizes)})")
    return sizes


def label_fields(target: torch.Tensor, ignore: int, cross: bool) -> dict[str, Any]:
    """The range of the counted labels (checked against the global vocabulary after the
    gather) and, with ``cross``, a digest the ranks must agree on."""
    flat = target.reshape(-1)
    counted = flat[flat != ignore]
    span = None if counted.numel() == 0 else [int(counted.min()), int(counted.max())]
    digest = hashlib.sha1(flat.long().cpu().numpy().tobytes()).hexdigest() if cross else None
    return {"labels": span, "digest": digest}


def probability_fields(target: torch.Tensor) -> None:
    """Local checks of sharded probabilities (the row sums need the whole group)."""
    if bool((target < 0).any()) or not bool(torch.isfinite(target).all()):
        raise ValueError("target (probabilities) must be finite and non-negative")


def _check_labels(records: list[dict[str, Any]], vocab: int, ignore: int, name: str) -> None:
    for rank, record in enumerate(records):
        span = record.get("labels")
        if span is None:
            continue
        low, high = span
        bad = low if low < 0 else high if high >= vocab else None
        if bad is not None:
            raise ValueError(
                f"{name}: target (class indices) must lie in [0, {vocab}) or equal "
                f"ignore_index={ignore}: found {bad} on rank {rank}"
            )


def check_row_sums(target: torch.Tensor, opts: Options, dtype: torch.dtype, name: str) -> None:
    """Rows of sharded probabilities sum to 1 over the global vocabulary (one all_reduce)."""
    assert opts.parallel is not None
    sums = target.to(torch.float64).sum(-1)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=opts.parallel.group)
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    bad = (sums - 1.0).abs() > tol
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name}: target (probabilities) rows must sum to 1 over the vocabulary; row {row} "
            f"sums to {float(sums[row]):.6g}"
        )


def prepare(
    name: str,
    arguments: dict[str, Any],
    *,
    local: Callable[[Options, bool], Local],
    tensor: Any,
    target: Any,
    group: Any,
) -> Prepared:
    """The call-preparation step (module notes).

    ``arguments`` are the public function's (its ``locals()`` on entry): the options,
    ``vocab_sizes``, ``validate``, ``agree`` and ``reduce_hidden_grad``.
    ``local(opts, reads)`` runs the loss's own checks (``reads``: the data checks that cost
    nothing run too) and reports :class:`Local`.  ``tensor`` is the loss's main local
    tensor (device, data checks), ``target`` its unwrapped target (checked by ``local``
    first) and ``group`` the group.  The flat target, ``(N,)`` int64 or ``(N, V_r)``, comes
    back in :class:`Prepared`, with the row sums of probabilities checked when
    ``validate`` is True.
    """
    validate = check_validate(arguments["validate"])
    agree_ = check_validate(arguments["agree"], "agree")
    vocab_sizes_ = arguments["vocab_sizes"]
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    # validate=True compares data across ranks, which needs the exchange.
    exchange = bool(validate) or (agree_ if agree_ is not None else vocab_sizes_ is None)
    desc = _Descriptor()
    sizes = None
    found: Local | None = None
    opts: Options | None = None
    try:
        opts = Options.of(arguments)
        if not exchange and vocab_sizes_ is None:
            raise ValueError("agree=False needs vocab_sizes (the slices cannot be gathered)")
        sizes = vocab_sizes(vocab_sizes_, world)
        # The local data checks run where they cost nothing (validate=None) and can be
        # reported on every rank (the exchange), or when asked for.
        reads = bool(validate) or (
            validate is None and exchange and _checks.reads_data(None, tensor)
        )
        found = local(opts, reads)
        if reads and found.soft:
            probability_fields(target)
        elif reads and target is not None:
            found.fields.update(label_fields(target, opts.ignore_index, bool(validate)))
    except (TypeError, ValueError) as error:
        if not exchange:
            raise
        desc.fail(error)
    if found is not None and opts is not None:
        desc.fields = {
            "size": found.size,
            "batch": list(found.batch),
            "dtype": str(found.dtype),
            "soft": found.soft,
            "vocab_sizes": None if sizes is None else list(sizes),
            "options": opts.shared(),
            "labels": None,
            "digest": None,
            **found.fields,
        }
    device = tensor.device if isinstance(tensor, torch.Tensor) else torch.device("cpu")
    records = agree(desc, group=group, device=device, name=name) if exchange else None
    assert opts is not None and found is not None  # else agree() raised
    sizes = _layout(records, rank=rank, local_size=found.size, sizes=sizes, name=name)
    if records is not None and not found.soft:
        _check_labels(records, sum(sizes), opts.ignore_index, name)
    reduce_hidden_grad = bool(arguments.get("reduce_hidden_grad", True))
    parallel = VocabParallel(rank, sizes, group, reduce_hidden_grad=reduce_hidden_grad)
    opts = dataclasses.replace(opts, parallel=parallel)
    tokens = math.prod(found.batch)
    flat: torch.Tensor | None = None  # None: the per-token statistics without a target
    if target is not None and found.soft:
        flat = target.reshape(tokens, found.size)
        if validate:
            check_row_sums(flat, opts, found.dtype, name)
    elif target is not None:
        flat = target.reshape(tokens).long()
    return Prepared(opts, found.soft, flat)


def unwrap_target(target: Any) -> tuple[Any, Any]:
    """A target DTensor: class indices replicated, probabilities sharded like the logits;
    narrow integer labels as int64."""
    soft = isinstance(target, torch.Tensor) and target.dtype.is_floating_point
    target, group = unwrap(target, "target", "shard" if soft else "replicate", -1)
    return _checks.as_labels(target), group


def unwrap_linear(
    group: Any, hidden: Any, weight_shard: Any, bias: Any, target: Any, **shards: Any
) -> tuple[list[Any], Any]:
    """The fused losses' arguments unwrapped (:func:`unwrap`): replicated hidden states,
    weight rows, bias and the ``shards`` (class weights) sharded by vocabulary, and the
    target; with the group (``group``, or the first DTensor's)."""
    hidden, g1 = unwrap(hidden, "hidden", "replicate", 0)
    weight_shard, g2 = unwrap(weight_shard, "weight_shard", "shard", 0)
    bias, g3 = unwrap(bias, "bias", "shard", 0)
    target, g4 = unwrap_target(target)
    values, groups = [hidden, weight_shard, bias, target], [g1, g2, g3, g4]
    for name, value in shards.items():
        value, g = unwrap(value, name, "shard", 0)
        values.append(value)
        groups.append(g)
    return values, group_of(groups, group)


def group_of(groups: list[Any], group: Any) -> Any:
    """``group``, or the group of the first DTensor argument when none is given."""
    found = [g for g in groups if g is not None]
    if group is None and found:
        group = found[0]
    return group

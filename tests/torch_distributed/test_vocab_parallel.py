"""Vocabulary-parallel losses on 2 and 3 CPU processes (gloo) against the single-process ones.

One job is spawned per world size and runs every check below in the same process group;
each check records its traceback (or None) per rank, and one pytest test per (world size,
check) reports it.  Every comparison is in float64 against
``crossentropy.torch.cross_entropy`` on the whole vocabulary: the loss and every gradient
(logits, probability targets, hidden states, weight, bias).  The collectives are counted
by wrapping ``torch.distributed.all_reduce`` / ``all_gather``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import itertools
import json
import math
import os
import tempfile
import time
import traceback

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402
from _torch_oracles import distillation_oracle, oracle, token_stats_oracle  # noqa: E402

from crossentropy.torch import cross_entropy  # noqa: E402
from crossentropy.torch.distributed import (  # noqa: E402
    global_token_count,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
    vocab_parallel_linear_distillation_loss,
    vocab_parallel_linear_token_stats,
)

F64 = torch.float64
WORLD_SIZES = (2, 3)
#: Uneven slices of an 11-class vocabulary; the last pair has an empty slice.
SPLITS = {2: ([7, 4], [11, 0]), 3: ([5, 1, 5], [6, 0, 5])}
TIMEOUT_S = 20
#: The full grids of options run on 2 ranks; 3 ranks (on 2 cores in CI) run every other case.
STRIDE = {2: 1, 3: 2}
JOB_TIMEOUT_S = 150
#: "spawn": a fork would copy whatever threads the pytest process holds (JAX's, from other
#: test modules), which can deadlock the children; "fork" is faster when run alone.
START_METHOD = os.environ.get("VP_START_METHOD", "spawn")


# --------------------------------------------------------------------------- helpers


def bounds(sizes, rank):
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def make(batch, classes, *, seed, soft=False, ignore=0.3, dtype=F64):
    """Identical data on every rank (same seed)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*batch, classes, generator=gen, dtype=F64)).to(dtype)
    if soft:
        target = torch.softmax(2 * torch.randn(*batch, classes, generator=gen, dtype=F64), -1)
        return logits, target
    target = torch.randint(0, classes, batch, generator=gen)
    target[torch.rand(batch, generator=gen) < ignore] = -100
    return logits, target


def close(actual, expected, what, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


class Counter:
    """Wraps the collectives of torch.distributed and records (name, numel, op)."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter")

    def __init__(self):
        self.calls = []

    @contextlib.contextmanager
    def __call__(self):
        saved = {n: getattr(dist, n) for n in self.NAMES}

        def wrap(name, fn):
            def inner(tensor, *args, **kwargs):
                numel = tensor.numel() if isinstance(tensor, torch.Tensor) else None
                if name == "all_gather":
                    numel = args[0].numel() if args else kwargs["tensor"].numel()
                op = kwargs.get("op")
                self.calls.append((name, numel, None if op is None else str(op)))
                return fn(tensor, *args, **kwargs)

            return inner

        for n, fn in saved.items():
            setattr(dist, n, wrap(n, fn))
        try:
            yield self
        finally:
            for n, fn in saved.items():
                setattr(dist, n, fn)

    def take(self):
        calls, self.calls = self.calls, []
        return calls


def same_error_everywhere(fn, match):
    """Run ``fn`` on every rank; it must raise an exception with the same message on all."""
    try:
        fn()
    except (ValueError, TypeError) as error:
        message = f"{type(error).__name__}: {error}"
    else:
        message = None
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, message)
    assert all(m is not None for m in gathered), f"not raised on every rank: {gathered}"
    assert len(set(gathered)) == 1, f"different errors: {gathered}"
    assert match in gathered[0], gathered[0]


# ----------------------------------------------------------------------------- checks

CHECKS = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def _dense_case(rank, world, sizes, *, soft, reduction, eps, zl, cap, weighted, batch, seed):
    classes = sum(sizes)
    a, b = bounds(sizes, rank)
    logits, target = make(batch, classes, seed=seed, soft=soft)
    gen = torch.Generator().manual_seed(seed + 1)
    weight = torch.rand(classes, generator=gen, dtype=F64) + 0.5 if weighted else None
    upstream = torch.randn(batch, generator=gen, dtype=F64) if reduction == "none" else None
    opts = dict(reduction=reduction, label_smoothing=eps, z_loss=zl, softcap=cap)

    full = logits.clone().requires_grad_()
    tfull = target.clone().requires_grad_() if soft else target
    ref = cross_entropy(full, tfull, weight=weight, **opts)
    (ref if upstream is None else ref * upstream).sum().backward()

    shard = logits[..., a:b].clone().requires_grad_()
    tshard = target[..., a:b].clone().requires_grad_() if soft else target
    wshard = None if weight is None else weight[a:b]
    out = vocab_parallel_cross_entropy(shard, tshard, weight=wshard, **opts)
    (out if upstream is None else out * upstream).sum().backward()
    what = f"rank {rank} sizes {sizes} soft={soft} {opts} weighted={weighted}"
    close(out, ref.detach(), f"loss {what}")
    close(shard.grad, full.grad[..., a:b], f"logits grad {what}")
    if soft:
        close(tshard.grad, tfull.grad[..., a:b], f"target grad {what}")


@check
def dense_every_option(rank, world):
    sizes = SPLITS[world][0]
    grid = itertools.product(
        (False, True), ("mean", "sum", "none"), (0.0, 0.1), (0.0, 1e-2), (None, 4.0), (False, True)
    )
    for i, (soft, reduction, eps, zl, cap, weighted) in enumerate(grid):
        if i % STRIDE[world]:
            continue
        _dense_case(
            rank,
            world,
            sizes,
            soft=soft,
            reduction=reduction,
            eps=eps,
            zl=zl,
            cap=cap,
            weighted=weighted,
            batch=(9,),
            seed=i,
        )


@check
def dense_batch_dims_and_empty_slice(rank, world):
    for sizes in SPLITS[world]:
        for soft in (False, True):
            _dense_case(
                rank,
                world,
                sizes,
                soft=soft,
                reduction="mean",
                eps=0.2,
                zl=1e-2,
                cap=None,
                weighted=not soft,
                batch=(2, 3, 4),
                seed=7,
            )


@check
def dense_targets_absent_from_a_slice(rank, world):
    # Every label lies in rank 0's slice: the other ranks hold no target logit at all.
    sizes = SPLITS[world][0]
    classes = sum(sizes)
    logits, _ = make((10,), classes, seed=3)
    target = torch.arange(10) % sizes[0]
    target[::4] = -100
    a, b = bounds(sizes, rank)
    full = logits.clone().requires_grad_()
    ref = cross_entropy(full, target, label_smoothing=0.1, z_loss=1e-2)
    ref.backward()
    shard = logits[:, a:b].clone().requires_grad_()
    out = vocab_parallel_cross_entropy(shard, target, label_smoothing=0.1, z_loss=1e-2)
    out.backward()
    close(out, ref.detach(), "loss")
    close(shard.grad, full.grad[:, a:b], "grad")


@check
def empty_batch_and_token_count(rank, world):
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    shard = torch.zeros(0, b - a, dtype=F64, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    out = vocab_parallel_cross_entropy(shard, empty)
    out.backward()
    assert out.item() == 0.0 and shard.grad.shape == shard.shape
    none = vocab_parallel_cross_entropy(shard.detach(), empty, reduction="none")
    assert none.shape == (0,)
    # Class indices count when not ignored; probability rows always count.
    labels = torch.tensor([[1, -100, 2], [-100, -100, 0]])
    probs = torch.full((4, 3), 1 / 3, dtype=F64)
    count = global_token_count([labels, probs, empty])
    assert count.dtype == F64 and count.item() == world * (3 + 4)
    assert global_token_count(labels, ignore_index=0).item() == world * 5


@check
def smoothing_and_z_loss_use_the_global_vocabulary(rank, world):
    # Hand value: uniform logits over C classes give log C whatever the smoothing, and the
    # z-loss adds lam * (log C)^2 -- with the local C_r either would be visibly wrong.
    sizes = SPLITS[world][0]
    classes = sum(sizes)
    a, b = bounds(sizes, rank)
    shard = torch.zeros(4, b - a, dtype=F64)
    target = torch.tensor([0, classes - 1, 2, -100])
    out = vocab_parallel_cross_entropy(shard, target, label_smoothing=0.3, z_loss=0.1)
    expected = torch.tensor(math.log(classes), dtype=F64)
    close(out, expected + 0.1 * expected**2, "uniform logits")


@check
def all_ignored_gives_zero(rank, world):
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    shard = torch.randn(5, b - a, dtype=F64, requires_grad=True)
    target = torch.full((5,), -100)
    out = vocab_parallel_cross_entropy(shard, target, label_smoothing=0.1, z_loss=1e-2)
    out.backward()
    assert out.item() == 0.0 and not out.isnan()
    assert torch.equal(shard.grad, torch.zeros_like(shard))
    h = torch.randn(5, 3, dtype=F64, requires_grad=True)
    w = torch.randn(b - a, 3, dtype=F64, requires_grad=True)
    out = vocab_parallel_linear_cross_entropy(h, w, target)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))


def _fused_case(rank, world, sizes, *, reduction, eps, zl, cap, biased, chunk, seed, vocab_sizes):
    classes = sum(sizes)
    a, b = bounds(sizes, rank)
    gen = torch.Generator().manual_seed(seed)
    n, d = 13, 6
    hidden = torch.randn(n, d, generator=gen, dtype=F64)
    weight = torch.randn(classes, d, generator=gen, dtype=F64)
    bias = torch.randn(classes, generator=gen, dtype=F64) if biased else None
    target = torch.randint(0, classes, (n,), generator=gen)
    target[torch.rand(n, generator=gen) < 0.3] = -100
    upstream = torch.randn(n, generator=gen, dtype=F64) if reduction == "none" else None
    opts = dict(reduction=reduction, label_smoothing=eps, z_loss=zl, softcap=cap)

    h_ref = hidden.clone().requires_grad_()
    w_ref = weight.clone().requires_grad_()
    b_ref = None if bias is None else bias.clone().requires_grad_()
    logits = h_ref @ w_ref.T + (0 if b_ref is None else b_ref)
    ref = cross_entropy(logits, target, **opts)
    (ref if upstream is None else ref * upstream).sum().backward()

    h = hidden.clone().requires_grad_()
    w = weight[a:b].clone().requires_grad_()
    bb = None if bias is None else bias[a:b].clone().requires_grad_()
    out = vocab_parallel_linear_cross_entropy(
        h, w, target, bias=bb, chunk_size=chunk, vocab_sizes=vocab_sizes, **opts
    )
    (out if upstream is None else out * upstream).sum().backward()
    what = f"rank {rank} sizes {sizes} {opts} bias={biased} chunk={chunk}"
    close(out, ref.detach(), f"loss {what}")
    close(h.grad, h_ref.grad, f"hidden grad {what}")
    close(w.grad, w_ref.grad[a:b], f"weight grad {what}")
    if biased:
        close(bb.grad, b_ref.grad[a:b], f"bias grad {what}")


@check
def fused_every_option(rank, world):
    grid = itertools.product(
        SPLITS[world],
        ("mean", "sum", "none"),
        (0.0, 0.1),
        (0.0, 1e-2),
        (None, 4.0),
        (False, True),
    )
    for i, (sizes, reduction, eps, zl, cap, biased) in enumerate(grid):
        if i % STRIDE[world]:
            continue
        _fused_case(
            rank,
            world,
            sizes,
            reduction=reduction,
            eps=eps,
            zl=zl,
            cap=cap,
            biased=biased,
            chunk=(None, 4)[i % 2],
            seed=100 + i,
            vocab_sizes=(None, sizes)[i % 3 == 0],
        )


@check
def fused_class_weights_and_probability_targets(rank, world):
    # Against the single-process float64 reference on the whole weight (class weights and
    # probability targets sharded like the weight's rows), for each kind of target.
    grid = itertools.product(
        SPLITS[world], (False, True), ("mean", "sum", "none"), (0.0, 0.1), (0.0, 1e-2)
    )
    for i, (sizes, soft, reduction, eps, zl) in enumerate(grid):
        if i % STRIDE[world]:
            continue
        classes = sum(sizes)
        a, b = bounds(sizes, rank)
        gen = torch.Generator().manual_seed(300 + i)
        n, d = 11, 5
        hidden = torch.randn(n, d, generator=gen, dtype=F64)
        weight = torch.randn(classes, d, generator=gen, dtype=F64)
        cw = torch.rand(classes, generator=gen, dtype=F64) + 0.25
        _, target = make((n,), classes, seed=400 + i, soft=soft)
        upstream = torch.randn(n, generator=gen, dtype=F64) if reduction == "none" else None
        cap = 4.0 if i % 4 == 0 else None
        opts = dict(reduction=reduction, label_smoothing=eps, z_loss=zl, softcap=cap)

        h_ref = hidden.clone().requires_grad_()
        w_ref = weight.clone().requires_grad_()
        ref = cross_entropy(h_ref @ w_ref.T, target, weight=cw, **opts)
        (ref if upstream is None else ref * upstream).sum().backward()

        h = hidden.clone().requires_grad_()
        w = weight[a:b].clone().requires_grad_()
        shard = target[:, a:b] if soft else target
        out = vocab_parallel_linear_cross_entropy(
            h, w, shard, class_weight=cw[a:b], chunk_size=4, validate=True, **opts
        )
        (out if upstream is None else out * upstream).sum().backward()
        what = f"rank {rank} sizes {sizes} soft={soft} {opts}"
        close(out, ref.detach(), f"loss {what}")
        close(h.grad, h_ref.grad, f"hidden grad {what}")
        close(w.grad, w_ref.grad[a:b], f"weight grad {what}")


@check
def half_precision_matches_float32(rank, world):
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    logits, target = make((8,), sum(sizes), seed=11, dtype=torch.bfloat16)
    full = logits.clone().requires_grad_()
    ref = cross_entropy(full, target, label_smoothing=0.1)
    ref.backward()
    shard = logits[:, a:b].clone().requires_grad_()
    out = vocab_parallel_cross_entropy(shard, target, label_smoothing=0.1)
    out.backward()
    assert out.dtype == torch.float32 and shard.grad.dtype == torch.bfloat16
    close(out, ref.detach(), "bf16 loss", rtol=1e-5, atol=1e-6)
    close(shard.grad.float(), full.grad[:, a:b].float(), "bf16 grad", rtol=2e-2, atol=1e-3)
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(8, 4, generator=gen).bfloat16().requires_grad_()
    w_full = torch.randn(sum(sizes), 4, generator=gen).bfloat16()
    w = w_full[a:b].clone().requires_grad_()
    out = vocab_parallel_linear_cross_entropy(h, w, target, chunk_size=3)
    out.backward()
    h_ref = h.detach().float().requires_grad_()
    w_ref = w_full.float().requires_grad_()
    ref = cross_entropy(h_ref @ w_ref.T, target)
    ref.backward()
    # The logits are bfloat16 products, as in the single-process fused loss.
    close(
        out, cross_entropy(h.detach() @ w_full.T, target), "bf16 fused loss", rtol=1e-5, atol=1e-6
    )
    close(out, ref.detach(), "bf16 fused loss vs float32", rtol=2e-3, atol=1e-4)
    close(h.grad.float(), h_ref.grad, "bf16 fused hidden grad", rtol=2e-2, atol=2e-3)
    close(w.grad.float(), w_ref.grad[a:b], "bf16 fused weight grad", rtol=2e-2, atol=2e-3)


@check
def validate_true_on_good_input(rank, world):
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    logits, target = make((6,), sum(sizes), seed=4)
    ref = cross_entropy(logits, target)
    out = vocab_parallel_cross_entropy(logits[:, a:b], target, validate=True, vocab_sizes=sizes)
    close(out, ref, "validate labels")
    logits, soft = make((6,), sum(sizes), seed=5, soft=True)
    ref = cross_entropy(logits, soft)
    out = vocab_parallel_cross_entropy(logits[:, a:b], soft[:, a:b], validate=True)
    close(out, ref, "validate probabilities")


@check
def collectives_are_counted(rank, world):
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    n, d = 12, 5
    logits, target = make((n,), sum(sizes), seed=6)
    counter = Counter()
    max_op, sum_op = str(dist.ReduceOp.MAX), str(dist.ReduceOp.SUM)
    with counter():
        shard = logits[:, a:b].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(shard, target)
        fwd = counter.take()
        loss.backward()
        bwd = counter.take()
    # Forward: the descriptor gather (independent of N) and two O(N) all-reduces.
    assert [c[0] for c in fwd] == ["all_gather", "all_reduce", "all_reduce"], fwd
    assert fwd[1] == ("all_reduce", n, max_op) and fwd[2] == ("all_reduce", 2 * n, sum_op), fwd
    assert fwd[0][1] == 1024, fwd
    assert bwd == [], bwd

    with counter():
        shard = logits[:, a:b].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(
            shard, target, vocab_sizes=sizes, label_smoothing=0.1, z_loss=1e-3, softcap=5.0
        )
        fwd = counter.take()
        loss.backward()
        bwd = counter.take()
    # Explicit slice sizes: no gather; smoothing packs one more float per token.
    assert fwd == [("all_reduce", n, max_op), ("all_reduce", 3 * n, sum_op)], fwd
    assert bwd == [], bwd

    gen = torch.Generator().manual_seed(1)
    h = torch.randn(n, d, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(b - a, d, generator=gen, dtype=F64, requires_grad=True)
    with counter():
        loss = vocab_parallel_linear_cross_entropy(h, w, target, vocab_sizes=sizes, chunk_size=5)
        fwd = counter.take()
        loss.backward()
        bwd = counter.take()
    assert fwd == [("all_reduce", n, max_op), ("all_reduce", 2 * n, sum_op)], fwd
    assert bwd == [("all_reduce", n * d, sum_op)], bwd


@check
def agree_names_the_exchange(rank, world):
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    n = 7
    logits, target = make((n,), sum(sizes), seed=16)
    shard = logits[:, a:b]
    ref = cross_entropy(logits, target)
    counter = Counter()
    # agree=True exchanges the descriptor even with the sizes given.
    with counter():
        out = vocab_parallel_cross_entropy(shard, target, vocab_sizes=sizes, agree=True)
        calls = counter.take()
    assert [c[0] for c in calls] == ["all_gather", "all_reduce", "all_reduce"], calls
    close(out, ref, "agree=True")
    # agree=False with the sizes: only the two O(N) collectives.
    with counter():
        out = vocab_parallel_cross_entropy(shard, target, vocab_sizes=sizes, agree=False)
        calls = counter.take()
    assert [c[0] for c in calls] == ["all_reduce", "all_reduce"], calls
    close(out, ref, "agree=False")
    # Refused alike on every rank (a local error, raised before any collective).
    for bad, kind, match in (
        ({"agree": False}, ValueError, "agree=False needs vocab_sizes"),
        ({"agree": "yes", "vocab_sizes": sizes}, TypeError, "agree must be True, False or None"),
        ({"validate": 1, "vocab_sizes": sizes}, TypeError, "validate must be True, False or None"),
    ):
        try:
            vocab_parallel_cross_entropy(shard, target, **bad)
        except kind as error:
            assert match in str(error), str(error)
        else:
            raise AssertionError(f"{bad}: nothing raised")

    # validate=None (the default) checks the labels' range on CPU, through the exchange:
    # the same error on every rank without validate=True.
    def out_of_range():
        t = target.clone()
        t[1] = sum(sizes) + 3
        vocab_parallel_cross_entropy(shard, t)

    same_error_everywhere(out_of_range, f"must lie in [0, {sum(sizes)})")


def _micro_batches(seed, count, n, classes, d):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        hidden = torch.randn(n + i, d, generator=gen, dtype=F64)
        target = torch.randint(0, classes, (n + i,), generator=gen)
        # Very different numbers of counted tokens per micro-batch.
        target[torch.rand(n + i, generator=gen) < 0.2 * i] = -100
        out.append((hidden, target))
    return out


@check
def gradient_accumulation_data_parallel(rank, world):
    # Data parallel over the world (each rank its own micro-batches), no vocabulary split
    # (a one-rank group per rank): N micro-batches on M ranks == one big batch.
    singles = [dist.new_group([r]) for r in range(world)]
    tp = singles[rank]
    classes, d = 9, 4
    weight = torch.randn(classes, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    batches = [_micro_batches(50 + r, 3, 5, classes, d) for r in range(world)]
    mine = batches[rank]

    big_h = torch.cat([h for rb in batches for h, _ in rb])
    big_y = torch.cat([y for rb in batches for _, y in rb])
    w_ref = weight.clone().requires_grad_()
    ref = cross_entropy(big_h @ w_ref.T, big_y, label_smoothing=0.1)
    ref.backward()

    for ddp_average in (False, True):
        count = global_token_count([y for _, y in mine])
        assert count.item() == (big_y != -100).sum().item()
        norm = count / world if ddp_average else count
        w = weight.clone().requires_grad_()
        total = torch.zeros((), dtype=F64)
        for h, y in mine:
            loss = vocab_parallel_linear_cross_entropy(
                h, w, y, group=tp, label_smoothing=0.1, normalize_by=norm
            )
            loss.backward()
            total = total + loss.detach()
        dist.all_reduce(total)
        grad = w.grad.clone()
        dist.all_reduce(grad)
        if ddp_average:
            total, grad = total / world, grad / world
        close(total, ref.detach(), f"accumulated loss ddp_average={ddp_average}")
        close(grad, w_ref.grad, f"accumulated weight grad ddp_average={ddp_average}")


@check
def gradient_accumulation_vocab_parallel(rank, world):
    # Vocabulary parallel over the world, accumulation over micro-batches (data-parallel
    # group of one rank): the sum of micro-batch gradients is the big batch's gradient.
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    classes, d = sum(sizes), 4
    weight = torch.randn(classes, d, generator=torch.Generator().manual_seed(1), dtype=F64)
    micro = _micro_batches(70, 4, 4, classes, d)
    big_h = torch.cat([h for h, _ in micro]).requires_grad_()
    big_y = torch.cat([y for _, y in micro])
    w_ref = weight.clone().requires_grad_()
    ref = cross_entropy(big_h @ w_ref.T, big_y, z_loss=1e-2)
    ref.backward()
    singles = [dist.new_group([r]) for r in range(world)]
    count = global_token_count([y for _, y in micro], group=singles[rank])
    w = weight[a:b].clone().requires_grad_()
    hs = [h.clone().requires_grad_() for h, _ in micro]
    logit_ws = weight[a:b].clone().requires_grad_()
    total = 0.0
    for h, (_, y) in zip(hs, micro, strict=True):
        loss = vocab_parallel_linear_cross_entropy(h, w, y, z_loss=1e-2, normalize_by=count)
        loss.backward()
        dense = vocab_parallel_cross_entropy(
            h.detach() @ logit_ws.T, y, z_loss=1e-2, normalize_by=count
        )
        dense.backward()
        total = total + loss.detach()
    close(total, ref.detach(), "accumulated loss")
    close(w.grad, w_ref.grad[a:b], "accumulated weight grad (fused)")
    close(logit_ws.grad, w_ref.grad[a:b], "accumulated weight grad (dense)")
    close(torch.cat([h.grad for h in hs]), big_h.grad, "hidden grads")


@check
def reduce_hidden_grad_off_gives_partial_sums(rank, world):
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    gen = torch.Generator().manual_seed(9)
    h0 = torch.randn(6, 3, generator=gen, dtype=F64)
    w = torch.randn(sum(sizes), 3, generator=gen, dtype=F64)
    y = torch.randint(0, sum(sizes), (6,), generator=gen)
    h_ref = h0.clone().requires_grad_()
    cross_entropy(h_ref @ w.T, y).backward()
    h = h0.clone().requires_grad_()
    vocab_parallel_linear_cross_entropy(h, w[a:b], y, reduce_hidden_grad=False).backward()
    partial = h.grad.clone()
    dist.all_reduce(partial)
    close(partial, h_ref.grad, "summed partial hidden grads")


@check
def errors_are_raised_on_every_rank(rank, world):
    sizes = SPLITS[world][0]
    a, b = bounds(sizes, rank)
    logits, target = make((6,), sum(sizes), seed=8)
    shard = logits[:, a:b]

    # A batch of another size on the last rank only.
    def wrong_batch():
        n = 5 if rank == world - 1 else 6
        vocab_parallel_cross_entropy(shard[:n], target[:n])

    same_error_everywhere(wrong_batch, "the ranks disagree on batch")

    # A bad option on rank 1 only: its local check fails, every rank raises it.
    def bad_option_on_one_rank():
        eps = 2.0 if rank == 1 else 0.1
        vocab_parallel_cross_entropy(shard, target, label_smoothing=eps)

    same_error_everywhere(bad_option_on_one_rank, "on rank 1 of the group: label_smoothing")

    # Options that are valid but differ between ranks.
    def different_options():
        vocab_parallel_cross_entropy(shard, target, z_loss=1e-3 * rank)

    same_error_everywhere(different_options, "the ranks disagree on options")

    # Slice sizes that do not match what the ranks hold.
    def wrong_sizes():
        rotated = sizes[1:] + sizes[:1]
        vocab_parallel_cross_entropy(shard, target, vocab_sizes=rotated, validate=True)

    same_error_everywhere(wrong_sizes, "does not match the slices the ranks hold")

    # A target of the wrong shape on rank 0 only.
    def wrong_target_shape():
        t = target[:4] if rank == 0 else target
        vocab_parallel_cross_entropy(shard, t)

    same_error_everywhere(wrong_target_shape, "on rank 0 of the group: target (class indices)")

    # Labels out of range (validate), and labels that differ between ranks.
    def out_of_range():
        t = target.clone()
        t[2] = sum(sizes)
        vocab_parallel_cross_entropy(shard, t, validate=True)

    same_error_everywhere(out_of_range, f"must lie in [0, {sum(sizes)})")

    def different_labels():
        t = target.clone()
        t[0] = rank
        vocab_parallel_cross_entropy(shard, t, validate=True)

    same_error_everywhere(different_labels, "the ranks disagree on digest")

    # Probabilities that do not sum to 1 over the global vocabulary (validate).
    def bad_probabilities():
        p = torch.full((6, b - a), 1.0 / sum(sizes), dtype=F64)
        p[3] *= 0.5
        vocab_parallel_cross_entropy(shard, p, validate=True)

    same_error_everywhere(bad_probabilities, "row 3 sums to")

    # The fused loss: a weight shard with the wrong hidden size on one rank.
    def wrong_weight():
        d = 4 if rank == 0 else 3
        h = torch.randn(6, 3, dtype=F64)
        w = torch.randn(b - a, d, dtype=F64)
        vocab_parallel_linear_cross_entropy(h, w, target)

    same_error_everywhere(wrong_weight, "on rank 0 of the group: weight_shard must have shape")

    # The fused loss: class weights of the wrong length on the last rank, and sharded
    # probabilities that do not sum to 1 over the vocabulary (validate).
    def wrong_class_weight():
        h = torch.randn(6, 3, dtype=F64)
        w = torch.randn(b - a, 3, dtype=F64)
        cw = torch.ones(b - a + (rank == world - 1), dtype=F64)
        vocab_parallel_linear_cross_entropy(h, w, target, class_weight=cw)

    same_error_everywhere(
        wrong_class_weight,
        f"on rank {world - 1} of the group: class_weight must have shape ({sizes[-1]},), this "
        "rank's slice of the class weights",
    )

    def fused_bad_probabilities():
        h = torch.randn(6, 3, dtype=F64)
        w = torch.randn(b - a, 3, dtype=F64)
        p = torch.full((6, b - a), 1.0 / sum(sizes), dtype=F64)
        p[2] *= 2.0
        vocab_parallel_linear_cross_entropy(h, w, p, validate=True)

    same_error_everywhere(fused_bad_probabilities, "row 2 sums to")

    # normalize_by only replaces the divisor of 'mean'.
    def normalize_with_sum():
        vocab_parallel_cross_entropy(shard, target, reduction="sum", normalize_by=3.0)

    same_error_everywhere(normalize_with_sum, "normalize_by replaces the divisor")

    # The group still works after all of that.
    close(vocab_parallel_cross_entropy(shard, target), cross_entropy(logits, target), "after")


@check
def dtensor_inputs(rank, world):
    from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor

    mesh = DeviceMesh("cpu", list(range(world)))
    classes = 3 * world + 1  # DTensor's Shard splits unevenly like torch.chunk
    logits, target = make((7,), classes, seed=12)
    full = logits.clone().requires_grad_()
    ref = cross_entropy(full, target, label_smoothing=0.1)
    ref.backward()
    dt = distribute_tensor(logits.clone(), mesh, [Shard(1)]).requires_grad_()
    dt_target = distribute_tensor(target, mesh, [Replicate()])
    out = vocab_parallel_cross_entropy(dt, dt_target, label_smoothing=0.1)
    out.backward()
    close(out, ref.detach(), "DTensor loss")
    close(dt.grad.full_tensor(), full.grad, "DTensor grad")

    gen = torch.Generator().manual_seed(2)
    h = torch.randn(7, 4, generator=gen, dtype=F64)
    w = torch.randn(classes, 4, generator=gen, dtype=F64)
    w_ref = w.clone().requires_grad_()
    ref = cross_entropy(h @ w_ref.T, target)
    ref.backward()
    w_dt = distribute_tensor(w.clone(), mesh, [Shard(0)]).requires_grad_()
    out = vocab_parallel_linear_cross_entropy(h, w_dt, target)
    out.backward()
    close(out, ref.detach(), "DTensor fused loss")
    close(w_dt.grad.full_tensor(), w_ref.grad, "DTensor fused weight grad")

    def wrong_placement():
        vocab_parallel_cross_entropy(distribute_tensor(logits, mesh, [Shard(0)]), target)

    same_error_everywhere(wrong_placement, "must be placed Shard(-1)")


@check
def temperature_against_log_softmax(rank, world):
    sizes = SPLITS[world][0]
    classes = sum(sizes)
    a, b = bounds(sizes, rank)
    grid = itertools.product(
        (False, True), ("mean", "sum", "none"), (0.5, 1.7), ((0.0, 0.0, None), (0.1, 1e-2, 3.0))
    )
    for i, (soft, reduction, temperature, (eps, zl, cap)) in enumerate(grid):
        if i % STRIDE[world]:
            continue
        what = f"soft={soft} {reduction} T={temperature} eps={eps} z={zl} cap={cap}"
        opts = dict(
            reduction=reduction,
            label_smoothing=eps,
            z_loss=zl,
            softcap=cap,
            temperature=temperature,
        )
        gen = torch.Generator().manual_seed(1000 + i)
        n, d = 8, 3
        hidden = torch.randn(n, d, generator=gen, dtype=F64)
        weight = 2 * torch.randn(classes, d, generator=gen, dtype=F64)
        _, target = make((n,), classes, seed=1100 + i, soft=soft)
        upstream = torch.rand(n if reduction == "none" else (), generator=gen, dtype=F64) + 0.5
        # Dense: the logits shard against the oracle on the whole logits.
        full = (hidden @ weight.T).requires_grad_()
        ref = oracle(full, target, **opts)
        ref.backward(upstream)
        shard = (hidden @ weight[a:b].T).requires_grad_()
        t_shard = target[:, a:b] if soft else target
        out = vocab_parallel_cross_entropy(shard, t_shard, **opts)
        out.backward(upstream)
        close(out, ref.detach(), f"dense loss {what}")
        close(shard.grad, full.grad[:, a:b], f"dense logits grad {what}")
        # Fused: hidden and the weight's rows against the oracle through the product.
        h_ref = hidden.clone().requires_grad_()
        w_ref = weight.clone().requires_grad_()
        ref = oracle(h_ref @ w_ref.T, target, **opts)
        ref.backward(upstream)
        h = hidden.clone().requires_grad_()
        w = weight[a:b].clone().requires_grad_()
        out = vocab_parallel_linear_cross_entropy(h, w, t_shard, chunk_size=3, **opts)
        out.backward(upstream)
        close(out, ref.detach(), f"fused loss {what}")
        close(h.grad, h_ref.grad, f"fused hidden grad {what}")
        close(w.grad, w_ref.grad[a:b], f"fused weight grad {what}")


@check
def token_stats_against_log_softmax(rank, world):
    for case, sizes in enumerate(SPLITS[world]):
        classes = sum(sizes)
        a, b = bounds(sizes, rank)
        for with_target, temperature, cap, k in ((True, 0.7, 3.0, 4), (False, 1.0, None, classes)):
            if case and not with_target:
                continue
            what = f"sizes {sizes} target={with_target} T={temperature} cap={cap} k={k}"
            gen = torch.Generator().manual_seed(1200 + case)
            n, d = 9, 4
            hidden = torch.randn(2, n, d, generator=gen, dtype=F64)
            weight = 2 * torch.randn(classes, d, generator=gen, dtype=F64)
            bias = torch.randn(classes, generator=gen, dtype=F64)
            target = None
            if with_target:
                _, target = make((2, n), classes, seed=1300 + case)
            ups = [torch.randn(2, n, generator=gen, dtype=F64) for _ in range(4)]
            h_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (hidden, weight, bias))
            want = token_stats_oracle(
                h_ref @ w_ref.T + b_ref, target, temperature=temperature, softcap=cap, top_k=k
            )
            arg, top_v, top_i = want["argmax"], want["top_k_log_probs"], want["top_k_indices"]
            fields = [want[f] for f in ("log_prob", "entropy", "logsumexp", "collision")]
            fields = [f for f in fields if f is not None]
            sum(
                ((u * f).sum() for u, f in zip(ups[-len(fields) :], fields, strict=True))
            ).backward()
            h, w, bb = hidden.clone().requires_grad_(), weight[a:b].clone(), bias[a:b].clone()
            w.requires_grad_()
            bb.requires_grad_()
            out = vocab_parallel_linear_token_stats(
                h, w, target, bias=bb, temperature=temperature, softcap=cap, top_k=k, chunk_size=5
            )
            got = [
                f
                for f in (out.log_prob, out.entropy, out.logsumexp, out.collision)
                if f is not None
            ]
            assert len(got) == len(fields), what
            for i, (g, f) in enumerate(zip(got, fields, strict=True)):
                close(g, f.detach(), f"field {i} {what}")
            assert torch.equal(out.argmax, arg), what
            close(out.top_k_log_probs, top_v.detach(), f"top-k {what}")
            assert torch.equal(out.top_k_indices, top_i), what
            if with_target:
                assert torch.equal(out.correct, (target != -100) & (arg == target)), what
            else:
                assert out.log_prob is None and out.correct is None, what
            sum(((u * g).sum() for u, g in zip(ups[-len(got) :], got, strict=True))).backward()
            close(h.grad, h_ref.grad, f"hidden grad {what}")
            close(w.grad, w_ref.grad[a:b], f"weight grad {what}")
            close(bb.grad, b_ref.grad[a:b], f"bias grad {what}")


@check
def distillation_against_materialised(rank, world):
    from crossentropy.torch import Teacher

    divergences = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
    for case, sizes in enumerate(SPLITS[world]):
        classes = sum(sizes)
        a, b = bounds(sizes, rank)
        for i, divergence in enumerate(divergences):
            if (i + case) % STRIDE[world]:
                continue
            reduction = ("mean", "sum", "none")[i % 3]
            lam = 0.3 if i % 2 else 0.0
            kw = dict(divergence=divergence, beta=0.4, temperature=1.6, hard_weight=lam)
            gen = torch.Generator().manual_seed(1400 + 10 * case + i)
            n, d, dt = 8, 4, 5
            hidden = torch.randn(n, d, generator=gen, dtype=F64)
            weight = 2 * torch.randn(classes, d, generator=gen, dtype=F64)
            bias = torch.randn(classes, generator=gen, dtype=F64)
            th = torch.randn(n, dt, generator=gen, dtype=F64)
            tw = 2 * torch.randn(classes, dt, generator=gen, dtype=F64)
            _, y = make((n,), classes, seed=1500 + i)
            up = torch.rand(n if reduction == "none" else (), generator=gen, dtype=F64) + 0.5
            what = f"sizes {sizes} {divergence} {reduction} lam={lam}"
            h_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (hidden, weight, bias))
            ref = distillation_oracle(
                h_ref @ w_ref.T + b_ref, (th @ tw.T), y, cap=3.0, reduction=reduction, lam=lam,
                divergence=divergence, beta=0.4, temperature=1.6,
            )  # fmt: skip
            ref.backward(up)
            for form in ("teacher", "logits"):
                h = hidden.clone().requires_grad_()
                w = weight[a:b].clone().requires_grad_()
                bb = bias[a:b].clone().requires_grad_()
                teacher = Teacher(th, tw[a:b]) if form == "teacher" else (th @ tw[a:b].T)
                out = vocab_parallel_linear_distillation_loss(
                    h, w, teacher, bias=bb, target=y, softcap=3.0, reduction=reduction,
                    chunk_size=3, **kw,
                )  # fmt: skip
                out.backward(up)
                close(out, ref.detach(), f"loss {form} {what}")
                close(h.grad, h_ref.grad, f"hidden grad {form} {what}")
                close(w.grad, w_ref.grad[a:b], f"weight grad {form} {what}")
                close(bb.grad, b_ref.grad[a:b], f"bias grad {form} {what}")


# ------------------------------------------------------------------------- the harness


def _z_oracle(z, y, cw, coef, reduction):
    """F.cross_entropy(weight=cw) + coef * lse^2 per counted token (the PaLM z-loss, not
    weighted by the class weight); 'mean' divides that part by the counted tokens."""
    import torch.nn.functional as F

    counted = y != -100
    zsq = torch.where(counted, coef * torch.logsumexp(z, -1).square(), 0.0)
    ce_part = F.cross_entropy(z, y, weight=cw, reduction=reduction)
    if reduction == "none":
        return ce_part + zsq
    return ce_part + (zsq.sum() if reduction == "sum" else zsq.sum() / counted.sum())


@check
def z_loss_does_not_carry_the_class_weight(rank, world):
    sizes = SPLITS[world][0]
    classes = sum(sizes)
    a, b = bounds(sizes, rank)
    for i, reduction in enumerate(("mean", "sum", "none")):
        gen = torch.Generator().manual_seed(900 + i)
        n, d = 9, 4
        hidden = torch.randn(n, d, generator=gen, dtype=F64)
        weight = torch.randn(classes, d, generator=gen, dtype=F64)
        cw = torch.rand(classes, generator=gen, dtype=F64) * 3
        cw[0] = 0.0
        _, y = make((n,), classes, seed=910 + i)
        y[0] = 0
        upstream = torch.rand(n if reduction == "none" else (), generator=gen, dtype=F64)
        h_ref = hidden.clone().requires_grad_()
        w_ref = weight.clone().requires_grad_()
        ref = _z_oracle(h_ref @ w_ref.T, y, cw, 0.2, reduction)
        ref.backward(upstream)
        zfull = (hidden @ weight.T).requires_grad_()
        zref = _z_oracle(zfull, y, cw, 0.2, reduction)
        zref.backward(upstream)

        shard = (hidden @ weight[a:b].T).requires_grad_()
        out = vocab_parallel_cross_entropy(
            shard, y, weight=cw[a:b], z_loss=0.2, reduction=reduction
        )
        out.backward(upstream)
        close(out, zref.detach(), f"dense loss {reduction}")
        close(shard.grad, zfull.grad[:, a:b], f"dense logits grad {reduction}")

        h = hidden.clone().requires_grad_()
        w = weight[a:b].clone().requires_grad_()
        out = vocab_parallel_linear_cross_entropy(
            h, w, y, class_weight=cw[a:b], z_loss=0.2, reduction=reduction, chunk_size=4
        )
        out.backward(upstream)
        close(out, ref.detach(), f"fused loss {reduction}")
        close(h.grad, h_ref.grad, f"fused hidden grad {reduction}")
        close(w.grad, w_ref.grad[a:b], f"fused weight grad {reduction}")


@check
def zero_target_at_minus_inf_logit(rank, world):
    # 0 log 0 = 0: probability targets that are 0 where the logit (bias) is -inf.  Oracle:
    # float64 log_softmax with the zero-target terms masked; dH/dz = softmax sum(t) - t.
    sizes = SPLITS[world][0]
    classes = sum(sizes)
    a, b = bounds(sizes, rank)
    gen = torch.Generator().manual_seed(950)
    n, d = 6, 3
    hidden = torch.randn(n, d, generator=gen, dtype=F64)
    weight = torch.randn(classes, d, generator=gen, dtype=F64)
    bias = torch.randn(classes, generator=gen, dtype=F64)
    dead = [1, classes - 1]
    bias[dead] = -math.inf
    t = torch.rand(n, classes, generator=gen, dtype=F64)
    t[:, dead] = 0.0
    t = t / t.sum(-1, keepdim=True)
    z = hidden @ weight.T + bias
    logq = torch.log_softmax(z, -1)
    loss = -torch.where(t == 0, 0.0, t * logq).sum(-1)
    g = torch.softmax(z, -1) * t.sum(-1, keepdim=True) - t
    upstream = torch.rand(n, generator=gen, dtype=F64)
    shard = z[:, a:b].clone().requires_grad_()
    out = vocab_parallel_cross_entropy(shard, t[:, a:b], reduction="none")
    out.backward(upstream)
    close(out, loss, "dense loss")
    close(shard.grad, (g * upstream[:, None])[:, a:b], "dense logits grad")

    h = hidden.clone().requires_grad_()
    w = weight[a:b].clone().requires_grad_()
    bb = bias[a:b].clone().requires_grad_()
    out = vocab_parallel_linear_cross_entropy(h, w, t[:, a:b], bias=bb, reduction="mean")
    out.backward()
    close(out, loss.mean(), "fused loss")
    gm = g / n
    close(h.grad, gm @ weight, "fused hidden grad")
    close(w.grad, (gm.T @ hidden)[a:b], "fused weight grad")
    close(bb.grad, gm.sum(0)[a:b], "fused bias grad")


@check
def narrow_integer_labels(rank, world):
    # uint8 / int32 labels are class indices like int64 ones (156 is not -100 wrapped).
    sizes = SPLITS[world][0]
    classes = sum(sizes)
    a, b = bounds(sizes, rank)
    logits, target = make((7,), classes, seed=970, ignore=0.0)
    ref = cross_entropy(logits, target)
    for dtype in (torch.uint8, torch.int32):
        out = vocab_parallel_cross_entropy(logits[:, a:b], target.to(dtype), validate=True)
        close(out, ref, f"labels of {dtype}")
    bad = torch.full((7,), 156, dtype=torch.uint8)
    same_error_everywhere(
        lambda: vocab_parallel_cross_entropy(logits[:, a:b], bad, validate=True), "156"
    )


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    results = {}
    for name, fn in CHECKS.items():
        start = time.perf_counter()
        try:
            fn(rank, world)
            results[name] = None
        except Exception:
            results[name] = traceback.format_exc()
        if rank == 0 and os.environ.get("VP_TIMINGS"):
            print(f"world {world} {name}: {time.perf_counter() - start:.2f} s", flush=True)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    # The results are on disk; skip the interpreter's slow teardown of torch.
    os._exit(0)


@functools.cache
def run_job(world):
    """Spawn ``world`` gloo processes once and return {check: [traceback or None per rank]}."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        ctx = mp.start_processes(
            _worker,
            args=(world, init_file, tmp),
            nprocs=world,
            join=False,
            start_method=START_METHOD,
        )
        crashed = None
        try:
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while not ctx.join(timeout=5):
                if time.monotonic() > deadline:
                    crashed = f"timed out after {JOB_TIMEOUT_S} s"
                    break
        except Exception as error:  # pragma: no cover - a crashed worker
            crashed = str(error)
        for p in ctx.processes:
            if p.is_alive():  # pragma: no cover - a hung worker
                p.terminate()
        results = {}
        for r in range(world):
            path = os.path.join(tmp, f"rank{r}.json")
            if os.path.exists(path):
                with open(path) as f:
                    results[r] = json.load(f)
    table = {}
    for name in CHECKS:
        table[name] = [
            results.get(r, {}).get(name, f"no result (job: {crashed})") for r in range(world)
        ]
    return table


@pytest.mark.parametrize("name", list(CHECKS))
@pytest.mark.parametrize("world", WORLD_SIZES)
def test_vocab_parallel(world, name):
    failures = [f"rank {r}:\n{tb}" for r, tb in enumerate(run_job(world)[name]) if tb]
    assert not failures, "\n".join(failures)

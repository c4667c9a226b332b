"""A patched model under FSDP2 (``fully_shard``) on 2 gloo CPU processes.

Each rank trains on its own half of a batch of 4 sequences; FSDP averages the gradients
over the ranks.  The oracle, in every rank, is the unpatched, unsharded model on both
halves: the mean of the two halves' losses, whose gradient is that average.  Checked for
the output layer sharded on its own (resharded after its forward: the loss gathers it
again) and for the whole model sharded (layers, then the root: the weight is still
gathered when the loss runs), untied and tied (GPT-2-style shared embedding).
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
import tempfile
import time
import traceback

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
import torch.distributed as dist  # noqa: E402

if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

WORLD = 2
CASES = ("head", "whole", "whole-tied", "head-mixed-precision")
JOB_TIMEOUT_S = 240


def _model(tied: bool):
    from _transformers_models import build

    model = build("llama" if not tied else "gemma2")
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _check(case: str, rank: int) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from crossentropy.transformers import patch

    tied = case.endswith("tied")
    model = _model(tied)
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 96, (4, 10), generator=gen)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[3, 5:] = -100
    mine = slice(2 * rank, 2 * rank + 2)

    # Sharded parameters get FSDP's average over the ranks; the others (all but the head
    # when only the head is sharded) keep this rank's own gradient.
    own = copy.deepcopy(model)
    halves = [
        reference(input_ids=ids[s], labels=labels[s]).loss for s in (slice(0, 2), slice(2, 4))
    ]
    (sum(halves) / 2).backward()
    own(input_ids=ids[mine], labels=labels[mine]).loss.backward()

    if case.startswith("head"):
        kwargs = {}
        if case == "head-mixed-precision":
            # float64 compute from float32 shards: FSDP casts the head's input and gathers
            # the weight in float64; the loss must use those, not the float32 shard.
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.float64)
        fully_shard(model.lm_head, **kwargs)
    else:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    patch(model)
    out = model(input_ids=ids[mine], labels=labels[mine])
    assert out.logits is None
    out.loss.backward()
    if case == "head-mixed-precision":
        assert out.loss.dtype == torch.float64
    torch.testing.assert_close(
        out.loss.detach(), halves[rank].detach().to(out.loss.dtype), rtol=1e-5, atol=1e-6
    )

    for (name, param), averaged, alone in zip(
        model.named_parameters(), reference.parameters(), own.parameters(), strict=True
    ):
        grad = param.grad
        assert grad is not None, f"{name}: no gradient"
        want = alone
        if hasattr(grad, "full_tensor"):
            grad, want = grad.full_tensor(), averaged
        torch.testing.assert_close(
            grad, want.grad.to(grad.dtype), rtol=1e-5, atol=1e-6, msg=f"{case}: {name}"
        )
    # The sharded head's gradient is a shard: it went through FSDP's reduce-scatter.
    assert type(model.lm_head.weight.grad).__name__ == "DTensor"


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    results: dict[str, str | None] = {}
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        for case in CASES:
            torch.manual_seed(0)
            try:
                _check(case, rank)
                results[case] = None
            except Exception:
                results[case] = traceback.format_exc()
            dist.barrier()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fsdp_results():
    out_dir = tempfile.mkdtemp(prefix="ce-fsdp-")
    context = mp.start_processes(
        _worker, args=(_free_port(), out_dir), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    # join() returns False when one process has ended and the others still run.
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:  # pragma: no cover - a hang
            for process in context.processes:
                process.kill()
            pytest.fail(f"the FSDP job did not finish in {JOB_TIMEOUT_S} s")
    results = []
    for rank in range(WORLD):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            results.append(json.load(f))
    return results


@pytest.mark.parametrize("case", CASES)
def test_fsdp2_loss_and_gradients_equal_single_process(fsdp_results, case):
    failures = [f"rank {r}:\n{res[case]}" for r, res in enumerate(fsdp_results) if res[case]]
    assert not failures, "\n".join(failures)

"""Vocabulary-parallel fused linear cross-entropy vs the single-process fused loss.

Usage (CPU, gloo; spawns the processes itself)::

    python benchmarks/bench_distributed.py                        # (4096, 512, 65536), 2 ranks
    python benchmarks/bench_distributed.py --shape 1024,256,8192 --nproc 3 --runs 3

What runs, forward + backward (gradients for the hidden states and the weight), float32:

* ``single``: ``crossentropy.torch.linear_cross_entropy(x, W, y)`` in one process with
  every CPU thread;
* ``parallel``: ``crossentropy.torch.distributed.vocab_parallel_linear_cross_entropy(x,
  W_r, y)`` on ``--nproc`` processes, each holding the rows ``W_r`` of an (uneven when it
  does not divide) split of the vocabulary and ``threads / nproc`` threads, so both use
  the same cores.

Method: ``_harness.py``.  Each side runs in fresh processes (``spawn``), with
``MALLOC_MMAP_THRESHOLD_`` set.  Per run the gradients are dropped and ``VmHWM`` is reset
through ``/proc/self/clear_refs`` and read after the step; ``growth`` is peak minus the
starting ``VmRSS`` (the gradient buffers included) and ``peak`` the whole process's
high-water mark, inputs and the interpreter included.  The time is the median over the
runs after a warm-up run.  The collectives are counted by
wrapping ``torch.distributed.all_reduce``/``all_gather``; "payload" is the bytes each rank
contributes per token (what an all-reduce reduces), "wire" the bytes a rank sends per
token in a ring all-reduce, ``2 (P - 1) / P`` times the payload.  The floor is ``D + 1``
floats a token: the hidden gradient, which each rank holds a partial sum of, plus one
float for the softmax normaliser.

Several GPUs with NCCL (``torchrun``)
------------------------------------
The same script runs under ``torchrun``, one process per GPU; rank 0 first runs the
single-process loss on its GPU as the baseline, then every rank runs the parallel one.
Memory is then ``torch.cuda.max_memory_allocated`` (growth over the inputs), time is
measured with ``torch.cuda.synchronize``::

    torchrun --standalone --nproc-per-node=8 benchmarks/bench_distributed.py \\
        --backend nccl --shape 8192,4096,128256 --dtype bfloat16

On several nodes use ``--nnodes=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT`` instead
of ``--standalone``, on each node.  ``--backend gloo`` under ``torchrun`` runs the CPU
benchmark with torchrun's rendezvous instead of the built-in spawning.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from _harness import MMAP_ENV, MiB, reset_peak, run_worker, status

SHAPE = (4096, 512, 65536)


def _sizes(vocab: int, world: int) -> list[int]:
    return [vocab // world + (r < vocab % world) for r in range(world)]


def _inputs(n, d, v, dtype, device):
    import torch

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=gen) / d**0.5).to(dtype)
    w = torch.randn(v, d, generator=gen).to(dtype)
    y = torch.randint(0, v, (n,), generator=gen)
    return x.to(device), w.to(device), y.to(device)


def _measure(step, runs, cuda, zero):
    """Median time, memory growth and peak of ``step`` (forward + backward)."""
    import torch

    times, growth, peak = [], [], []
    for _ in range(runs + 1):
        zero()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            reset_peak()
            base = status("VmRSS")
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        top = torch.cuda.max_memory_allocated() if cuda else status("VmHWM")
        growth.append(top - base)
        peak.append(top)
    keep = slice(1, None) if runs > 1 else slice(None)
    return {
        "time_s": statistics.median(times[keep]),
        "growth_mib": max(growth[keep]) / MiB,
        "peak_mib": max(peak[keep]) / MiB,
    }


def single(n, d, v, dtype_name, runs, device="cpu"):
    import torch

    from crossentropy.torch import linear_cross_entropy

    dtype = getattr(torch, dtype_name)
    x, w, y = _inputs(n, d, v, dtype, device)
    x.requires_grad_()
    w.requires_grad_()

    def zero():
        x.grad = w.grad = None

    def step():
        linear_cross_entropy(x, w, y).backward()

    out = _measure(step, runs, device != "cpu", zero)
    out["threads"] = torch.get_num_threads()
    return out


class _Counter:
    def __init__(self, dist):
        self.dist, self.calls = dist, []
        for name in ("all_reduce", "all_gather"):
            setattr(dist, name, self._wrap(name, getattr(dist, name)))

    def _wrap(self, name, fn):
        def inner(tensor, *args, **kwargs):
            t = args[0] if name == "all_gather" else tensor
            self.calls.append((name, t.numel() * t.element_size()))
            return fn(tensor, *args, **kwargs)

        return inner


def parallel(n, d, v, dtype_name, runs, rank, world, device="cpu"):
    import torch
    import torch.distributed as dist

    from crossentropy.torch.distributed import vocab_parallel_linear_cross_entropy

    dtype = getattr(torch, dtype_name)
    sizes = _sizes(v, world)
    start = sum(sizes[:rank])
    x, w_full, y = _inputs(n, d, v, dtype, "cpu")
    w = w_full[start : start + sizes[rank]].clone().to(device).requires_grad_()
    del w_full
    x = x.to(device).requires_grad_()
    y = y.to(device)

    def zero():
        x.grad = w.grad = None

    def step():
        vocab_parallel_linear_cross_entropy(x, w, y).backward()

    dist.barrier()
    counter = _Counter(dist)
    out = _measure(step, runs, device != "cpu", zero)
    per_step = counter.calls
    steps = runs + 1
    out["collectives_per_step"] = len(per_step) // steps
    payload = sum(b for _, b in per_step) / steps
    out["payload_bytes_per_token"] = payload / n
    out["wire_bytes_per_token"] = payload / n * 2 * (world - 1) / world
    out["floor_bytes_per_token"] = (d + 1) * 4
    out["threads"] = torch.get_num_threads()
    out["rows"] = sizes[rank]
    return out


def _spawned(rank, world, init_file, out_dir, args):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, args["threads"] // world))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    res = parallel(*args["shape"], args["dtype"], args["runs"], rank, world)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def _run_single_subprocess(args) -> dict:
    return run_worker(__file__, ["--worker-single", json.dumps(args)], env=MMAP_ENV)


def _run_parallel_spawned(args, nproc) -> list[dict]:
    import torch.multiprocessing as mp

    os.environ.update(MMAP_ENV)  # inherited by the spawned interpreters
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _spawned,
            args=(nproc, os.path.join(tmp, "init"), tmp, args),
            nprocs=nproc,
            start_method="spawn",
        )
        results = []
        for r in range(nproc):
            with open(os.path.join(tmp, f"rank{r}.json")) as f:
                results.append(json.load(f))
    return results


def _report(shape, dtype, base, ranks, backend):
    lines = [
        f"shape (N, D, V) = {shape}, {dtype}, backend {backend}, {len(ranks)} ranks",
        "",
        "| run | threads | time (s) | growth (MiB) | peak (MiB) |",
        "|---|---:|---:|---:|---:|",
        f"| single process | {base['threads']} | {base['time_s']:.3f} | "
        f"{base['growth_mib']:.0f} | {base['peak_mib']:.0f} |",
    ]
    for r, res in enumerate(ranks):
        lines.append(
            f"| rank {r} ({res['rows']} rows) | {res['threads']} | {res['time_s']:.3f} | "
            f"{res['growth_mib']:.0f} | {res['peak_mib']:.0f} |"
        )
    r0 = ranks[0]
    ratio = r0["payload_bytes_per_token"] / r0["floor_bytes_per_token"]
    lines += [
        "",
        f"time parallel / single: {max(r['time_s'] for r in ranks) / base['time_s']:.2f}; "
        f"memory growth rank 0 / single: {r0['growth_mib'] / base['growth_mib']:.2f}",
        f"collectives per step: {r0['collectives_per_step']}; bytes per token per rank: "
        f"payload {r0['payload_bytes_per_token']:.1f}, ring wire "
        f"{r0['wire_bytes_per_token']:.1f}; floor (D + 1 floats) payload "
        f"{r0['floor_bytes_per_token']} ({ratio:.3f}x)",
    ]
    print("\n".join(lines))


def _torchrun(args):
    import torch
    import torch.distributed as dist

    backend = args["backend"]
    cuda = backend == "nccl"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    n, d, v = args["shape"]
    base = single(n, d, v, args["dtype"], args["runs"], device) if rank == 0 else None
    if cuda:
        torch.cuda.empty_cache()
    res = parallel(n, d, v, args["dtype"], args["runs"], rank, world, device)
    gathered = [None] * world
    dist.all_gather_object(gathered, res)
    if rank == 0:
        _report(tuple(args["shape"]), args["dtype"], base, gathered, backend)
    dist.destroy_process_group()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default=",".join(map(str, SHAPE)), help="N,D,V")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--nproc", type=int, default=2, help="ranks (without torchrun)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after a warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--worker-single", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.worker_single:
        spec = json.loads(ns.worker_single)
        import torch

        torch.set_num_threads(spec["threads"])
        print(json.dumps(single(*spec["shape"], spec["dtype"], spec["runs"])))
        return
    args = {
        "shape": [int(s) for s in ns.shape.split(",")],
        "dtype": ns.dtype,
        "runs": ns.runs,
        "threads": ns.threads,
        "backend": ns.backend,
    }
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        _torchrun(args)
        return
    if ns.backend != "gloo":
        parser.error("--backend nccl needs torchrun (see the module docstring)")
    base = _run_single_subprocess(args)
    ranks = _run_parallel_spawned(args, ns.nproc)
    _report(tuple(args["shape"]), args["dtype"], base, ranks, "gloo")


if __name__ == "__main__":
    main()

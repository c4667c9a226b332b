"""Fused linear distillation (generalized JSD): crossentropy vs unfused PyTorch and Liger-Kernel.

Usage::

    python benchmarks/bench_distillation.py --runs 3            # the issue's two shapes
    python benchmarks/bench_distillation.py --shapes 2048,512,32768,1024 --impls crossentropy
    python benchmarks/bench_distillation.py --profile crossentropy --shapes 2048,512,32768,1024

A shape is ``N,D,V,D_t``: N tokens, the student's hidden size D, the vocabulary V and the
teacher's hidden size D_t.  Four implementations of the same loss, forward + backward
(gradients for the student's hidden states and weight; the teacher gets none), CPU,
``jsd`` with ``beta = 0.5`` at temperature 1, the mean over the tokens, side by side:

* ``crossentropy``: ``linear_distillation_loss(h, W, Teacher(ht, Wt), divergence="jsd",
  beta=0.5)``
* ``unfused``: both logits materialised (the teacher's under ``torch.no_grad``),
  ``log_softmax``, the mixture by ``logsumexp`` of the stacked, shifted log-probabilities,
  ``F.kl_div(..., log_target=True)`` twice: the computation of TRL's
  ``GKDTrainer.generalized_jsd_loss``, op for op, then the mean over the tokens
* ``liger``: Liger-Kernel's ``LigerFusedLinearJSDLoss`` with ``compiled=True`` (its
  default: ``torch.compile`` of its per-chunk step) and ``liger-eager``: the same with
  ``compiled=False``.  Liger's defaults are ``weight_hard_loss=0.5,
  weight_soft_loss=0.5``: half a hard cross-entropy against the labels and half the JSD.
  Here ``weight_hard_loss=0.0, weight_soft_loss=1.0``, so its loss is the pure JSD (it
  then skips the hard part's log-softmax), with ``beta=0.5, temperature=1.0`` and its
  default ``chunk_size=1024``; the labels it requires are all counted.  Its beta
  convention, ``beta D(p || m) + (1 - beta) D(q || m)`` with ``m = beta p + (1 - beta)
  q`` (p the teacher), is TRL's and ours (and beta = 0.5 is symmetric anyway).

The four losses agree to float32 rounding (the ``loss`` field of each result).

Method (as ``bench_linear_cross_entropy.py``).  Every (shape, implementation) runs in a
fresh Python process, so neither allocator caches nor a previous peak leak between them.
In that process the inputs (the student's and the teacher's hidden states and weights)
are made, then ``--warmup`` untimed calls run (at least one for Liger, whose first call
compiles; ``--warmup 0`` is honoured for the others), then each of ``--runs`` timed
runs: the gradients are cleared, the kernel's peak resident set (``VmHWM``) is reset
through ``/proc/self/clear_refs``, the resident set (``VmRSS``) is read as the baseline,
the loss runs forward and backward, and ``VmHWM`` is read again.  ``growth`` is peak
minus baseline; ``extra`` is growth less the returned gradient buffers (``h.grad`` and
``W.grad``): the memory the loss itself needs, the teacher's logits included.  glibc
serves every allocation of 64 KiB or more by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``), so
freed tensors leave the resident set at once.  The time (wall and CPU seconds) is the
median and the memory the maximum over the timed runs.  The FLOP rate counts
``6 N D V + 2 N D_t V``: the student's three products and the teacher's one, the minimum.

``--profile IMPL`` instead runs IMPL once (after a warm-up) under ``torch.profiler`` and
prints the operators by self CPU time, with their memory.

The unfused loss needs about 14 (N, V) float32 tensors at its peak; a case whose
estimated need exceeds 80% of ``MemAvailable`` is skipped (recorded as skipped) unless
``--force``: at (4096, 1024, 128256) that is about 27 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = [(2048, 512, 32768, 1024), (4096, 1024, 128256, 2048)]
IMPLS = ["crossentropy", "unfused", "liger", "liger-eager"]
BETA = 0.5
TEMPERATURE = 1.0
MiB = 2**20
#: (N, V) float32 blocks the unfused loss holds at its peak (measured: 13.2 at V = 32768).
UNFUSED_BLOCKS = 14


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _flops(n: int, d: int, v: int, dt: int) -> int:
    return 6 * n * d * v + 2 * n * dt * v


def make_step(impl: str, n: int, d: int, v: int, dt: int, dtype_name: str):
    """The inputs and a closure running the loss forward (the caller runs backward)."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    h = (torch.randn(n, d, generator=gen) / d**0.5).to(dtype).requires_grad_()
    w = torch.randn(v, d, generator=gen).to(dtype).requires_grad_()
    ht = (torch.randn(n, dt, generator=gen) / dt**0.5).to(dtype)
    wt = torch.randn(v, dt, generator=gen).to(dtype)

    if impl == "crossentropy":
        from crossentropy.torch import Teacher, linear_distillation_loss

        teacher = Teacher(ht, wt)

        def step():
            return linear_distillation_loss(
                h, w, teacher, divergence="jsd", beta=BETA, temperature=TEMPERATURE
            )
    elif impl == "unfused":

        def step():
            # TRL's GKDTrainer.generalized_jsd_loss, op for op, on materialised logits.
            student = h @ w.T
            with torch.no_grad():
                teacher = ht @ wt.T
            lq = F.log_softmax(student / TEMPERATURE, dim=-1)
            lp = F.log_softmax(teacher / TEMPERATURE, dim=-1)
            beta = torch.tensor(BETA, dtype=lq.dtype)
            lm = torch.logsumexp(torch.stack([lq + torch.log1p(-beta), lp + torch.log(beta)]), 0)
            kl_teacher = F.kl_div(lm, lp, reduction="none", log_target=True)
            kl_student = F.kl_div(lm, lq, reduction="none", log_target=True)
            jsd = beta * kl_teacher + (1 - beta) * kl_student
            return jsd.sum() / n
    elif impl in ("liger", "liger-eager"):
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        loss_fn = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0,
            weight_soft_loss=1.0,
            beta=BETA,
            temperature=TEMPERATURE,
            compiled=impl == "liger",
        )
        labels = torch.randint(0, v, (n,), generator=gen)

        def step():
            return loss_fn(h, w, ht, wt, labels)
    else:
        raise ValueError(impl)
    return h, w, step


def worker(impl: str, n: int, d: int, v: int, dt: int, dtype_name: str, runs: int, warmup: int):
    import torch

    h, w, step = make_step(impl, n, d, v, dt, dtype_name)
    warmup = max(warmup, 1) if impl.startswith("liger") else warmup
    warm_times = []
    for _ in range(warmup):
        h.grad = w.grad = None
        start = time.perf_counter()
        step().backward()
        warm_times.append(time.perf_counter() - start)
    times, cpus, growths, extras = [], [], [], []
    loss = None
    for _ in range(runs):
        h.grad = w.grad = None
        loss = None
        _reset_peak()
        base = _status("VmRSS")
        start, cpu = time.perf_counter(), _cpu_seconds()
        loss = step()
        loss.backward()
        times.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu)
        peak = _status("VmHWM")
        grads = sum(t.grad.numel() * t.grad.element_size() for t in (h, w))
        growths.append(peak - base)
        extras.append(peak - base - grads)
    return {
        "impl": impl,
        "shape": [n, d, v, dt],
        "dtype": dtype_name,
        "runs": runs,
        "warmup": warmup,
        "warmup_s": warm_times,
        "time_s": statistics.median(times),
        "times_s": times,
        "cpu_s": statistics.median(cpus),
        "load_avg": os.getloadavg()[0],
        "growth_bytes": max(growths),
        "extra_bytes": max(extras),
        "extra_bytes_all": extras,
        "loss": float(loss),
        "threads": torch.get_num_threads(),
    }


def profile(impl: str, n: int, d: int, v: int, dt: int, dtype_name: str, rows: int) -> None:
    """One call of ``impl`` (after a warm-up) under torch.profiler: operators by self CPU."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    h, w, step = make_step(impl, n, d, v, dt, dtype_name)
    step().backward()
    h.grad = w.grad = None
    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step().backward()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    print(f"{impl} {n},{d},{v},{dt}: self CPU total {total / 1e6:.2f} s")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))


def run_isolated(
    impl: str, shape: tuple[int, int, int, int], dtype: str, runs: int, warmup: int
) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--worker", impl, *map(str, shape), dtype]
    cmd += [str(runs), str(warmup)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    rows = [
        "| N, D, V, D_t | impl | runs | time (s) | x unfused | x liger "
        "| CPU s | CPU x unfused | CPU x liger | GFLOP/s | GFLOP/CPU-s "
        "| growth (MiB) | extra (MiB) | extra / unfused | extra / liger | loss | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(tuple(r["shape"]), r["impl"]): r for r in results if "skipped" not in r}
    for r in results:
        n, d, v, dt = r["shape"]
        if "skipped" in r:
            rows.append(f"| {n}, {d}, {v}, {dt} | {r['impl']} | skipped: {r['skipped']} |")
            continue
        key = tuple(r["shape"])
        unf, lig = by.get((key, "unfused")), by.get((key, "liger"))

        def ratio(field: str, base: dict | None, fmt: str = "{:.2f}", r: dict = r) -> str:
            return fmt.format(r[field] / base[field]) if base else "-"

        flops = _flops(n, d, v, dt)
        rows.append(
            f"| {n}, {d}, {v}, {dt} | {r['impl']} | {r['runs']} | {r['time_s']:.2f} "
            f"| {ratio('time_s', unf)} | {ratio('time_s', lig)} | {r['cpu_s']:.2f} "
            f"| {ratio('cpu_s', unf)} | {ratio('cpu_s', lig)} "
            f"| {flops / r['time_s'] / 1e9:.0f} | {flops / r['cpu_s'] / 1e9:.0f} "
            f"| {r['growth_bytes'] / MiB:.0f} | {r['extra_bytes'] / MiB:.0f} "
            f"| {ratio('extra_bytes', unf, '{:.1%}')} | {ratio('extra_bytes', lig, '{:.2f}')} "
            f"| {r['loss']:.6f} | {r['load_avg']:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shapes", nargs="*", default=[",".join(map(str, s)) for s in SHAPES], help="N,D,V,D_t"
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--impls", nargs="*", default=IMPLS, choices=IMPLS)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed calls before the runs (default 1; Liger always gets at least 1)",
    )
    parser.add_argument("--force", action="store_true", help="run unfused whatever memory it needs")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--profile", choices=IMPLS, help="instead, profile one call of this impl")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    shapes = [tuple(int(s) for s in text.split(",")) for text in args.shapes]
    if args.profile:
        for shape in shapes:
            profile(args.profile, *shape, args.dtype, args.profile_rows)
        return
    results = []
    for shape in shapes:
        n, v = shape[0], shape[2]
        for impl in args.impls:
            need = UNFUSED_BLOCKS * n * v * 4
            if impl == "unfused" and not args.force and need > 0.8 * _mem_available():
                gib = 2**30
                result = {
                    "impl": impl,
                    "shape": list(shape),
                    "skipped": f"needs ~{need / gib:.0f} GiB, "
                    f"{_mem_available() / gib:.0f} GiB available",
                }
            else:
                result = run_isolated(impl, shape, args.dtype, args.runs, args.warmup)
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def render(paths: list[str]) -> None:
    """Print the table of results saved by ``--json`` or logged on stderr (JSON lines)."""
    results = []
    for path in paths:
        with open(path) as f:
            text = f.read().strip()
        if text.startswith("["):
            results.extend(json.loads(text))
        else:
            results.extend(json.loads(line) for line in text.splitlines() if line.startswith("{"))
    print(table(results))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        render(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, n, d, v, dt, dtype, runs, warmup = sys.argv[2:10]
        result = worker(impl, int(n), int(d), int(v), int(dt), dtype, int(runs), int(warmup))
        print(json.dumps(result))
    else:
        main()

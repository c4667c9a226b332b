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

Method: ``_harness.py``.  Every (shape, implementation) runs in a fresh Python process.
There the inputs (the student's and the teacher's hidden states and weights) are made,
then ``--warmup`` untimed calls run (at least one for Liger, whose first call compiles;
``--warmup 0`` is honoured for the others), then ``--runs`` timed runs of the loss forward
and backward, each with ``VmHWM`` reset through ``/proc/self/clear_refs`` and read after
it.  ``growth`` is peak minus the starting ``VmRSS``; ``extra`` is growth less the
returned gradient buffers (``h.grad`` and ``W.grad``): the memory the loss itself needs,
the teacher's logits included.  The time (wall and CPU seconds) is the median and the
memory the maximum over all the timed runs (none is dropped: the warm-up is separate).
The FLOP rate counts ``6 N D V + 2 N D_t V``: the student's three products and the
teacher's one, the minimum.

``--profile IMPL`` instead runs IMPL once (after a warm-up) under ``torch.profiler`` and
prints the operators by self CPU time, with their memory.

The unfused loss needs about 14 (N, V) float32 tensors at its peak; a case whose
estimated need exceeds 80% of ``MemAvailable`` is skipped (recorded as skipped) unless
``--force``: at (4096, 1024, 128256) that is about 27 GiB.
"""

from __future__ import annotations

import json
import sys
import time

from _harness import (
    PERCENT,
    case_parser,
    load_results,
    log_result,
    measure,
    measured_cells,
    measured_columns,
    mem_available,
    parse_shape,
    ratio,
    run_worker,
    table_head,
    write_json,
)

SHAPES = [(2048, 512, 32768, 1024), (4096, 1024, 128256, 2048)]
IMPLS = ["crossentropy", "unfused", "liger", "liger-eager"]
BETA = 0.5
TEMPERATURE = 1.0
#: (N, V) float32 blocks the unfused loss holds at its peak (measured: 13.2 at V = 32768).
UNFUSED_BLOCKS = 14


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

    def run():
        loss = step()
        loss.backward()
        return loss

    loss, summary = measure(run, (h, w), runs, drop_warmup=False)
    return {
        "impl": impl,
        "shape": [n, d, v, dt],
        "dtype": dtype_name,
        "runs": runs,
        "warmup": warmup,
        "warmup_s": warm_times,
        **summary,
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


def table(results: list[dict]) -> str:
    rows = table_head(
        f"N, D, V, D_t | impl | runs | {measured_columns(['unfused', 'liger'])} "
        "| extra / unfused | extra / liger | loss | load"
    )
    by = {(tuple(r["shape"]), r["impl"]): r for r in results if "skipped" not in r}
    for r in results:
        n, d, v, dt = r["shape"]
        if "skipped" in r:
            rows.append(f"| {n}, {d}, {v}, {dt} | {r['impl']} | skipped: {r['skipped']} |")
            continue
        key = tuple(r["shape"])
        unf, lig = by.get((key, "unfused")), by.get((key, "liger"))
        e = r["extra_bytes"]
        rows.append(
            f"| {n}, {d}, {v}, {dt} | {r['impl']} | {r['runs']} "
            f"| {measured_cells(r, (unf, lig), _flops(n, d, v, dt))} "
            f"| {ratio(e, unf, 'extra_bytes', PERCENT)} | {ratio(e, lig, 'extra_bytes')} "
            f"| {r['loss']:.6f} | {r['load_avg']:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    runs_help = "timed runs per case (default 3)"
    parser = case_parser(__doc__, SHAPES, IMPLS, 3, runs_help, "N,D,V,D_t", IMPLS)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed calls before the runs (default 1; Liger always gets at least 1)",
    )
    parser.add_argument("--force", action="store_true", help="run unfused whatever memory it needs")
    parser.add_argument("--profile", choices=IMPLS, help="instead, profile one call of this impl")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    shapes = [parse_shape(text) for text in args.shapes]
    if args.profile:
        for shape in shapes:
            profile(args.profile, *shape, args.dtype, args.profile_rows)
        return
    results = []
    for shape in shapes:
        n, v = shape[0], shape[2]
        for impl in args.impls:
            need = UNFUSED_BLOCKS * n * v * 4
            if impl == "unfused" and not args.force and need > 0.8 * mem_available():
                gib = 2**30
                result = {
                    "impl": impl,
                    "shape": list(shape),
                    "skipped": f"needs ~{need / gib:.0f} GiB, "
                    f"{mem_available() / gib:.0f} GiB available",
                }
            else:
                cmd = ["--worker", impl, *shape, args.dtype, args.runs, args.warmup]
                result = run_worker(__file__, cmd)
            results.append(result)
            log_result(result)
    print(table(results))
    write_json(args.json, results)


def render(paths: list[str]) -> None:
    """Print the table of results saved by ``--json`` or logged on stderr (JSON lines)."""
    print(table(load_results(paths)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        render(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, n, d, v, dt, dtype, runs, warmup = sys.argv[2:10]
        result = worker(impl, int(n), int(d), int(v), int(dt), dtype, int(runs), int(warmup))
        print(json.dumps(result))
    else:
        main()

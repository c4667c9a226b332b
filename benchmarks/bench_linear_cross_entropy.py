"""Fused linear + cross-entropy: crossentropy vs PyTorch's chunked and unfused losses.

Usage::

    python benchmarks/bench_linear_cross_entropy.py            # the issue's full table
    python benchmarks/bench_linear_cross_entropy.py --shapes 2048,512,32768 --dtypes float32

Three implementations of the same loss, forward + backward (gradients for the hidden
states and the weight), side by side in one run:

* ``crossentropy``: ``crossentropy.torch.linear_cross_entropy(x, W, y)``
* ``torch-chunked``: ``F.linear_cross_entropy(x, W, y, options=LinearCrossEntropyOptions())``
* ``unfused``: ``F.cross_entropy(x @ W.T, y)``

Method.  Every (shape, dtype, implementation) runs in a fresh Python process, so neither
allocator caches nor a previous peak leak between them.  In that process the inputs are
made, then each run: the gradients are cleared, the kernel's peak resident set
(``VmHWM``) is reset through ``/proc/self/clear_refs``, the resident set (``VmRSS``) is
read as the baseline, the loss runs forward and backward, and ``VmHWM`` is read again.
``growth`` is peak minus baseline: everything the step allocated, the returned gradient
buffers included; ``extra`` is growth less those gradient buffers (``x.grad`` and
``W.grad``), the memory the loss itself needs.  glibc is told to serve every allocation
of 64 KiB or more by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave the
resident set at once and the baseline is honest; tracemalloc cannot see torch's
allocations.  The time is the median and the memory the maximum over the runs; the first
run, a warm-up that also pays the libraries' one-time allocations, is dropped when there
are more than two.  The FLOP rate is ``6 N D V`` (three matrix products, the
minimum) over that time.
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

SHAPES = [(2048, 512, 32768), (4096, 1024, 128256), (8192, 2048, 32768)]
DTYPES = ["float32", "bfloat16"]
IMPLS = ["crossentropy", "torch-chunked", "unfused"]
MiB = 2**20


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(impl: str, n: int, d: int, v: int, dtype_name: str, runs: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=gen) / d**0.5).to(dtype).requires_grad_()
    w = torch.randn(v, d, generator=gen).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen)

    if impl == "crossentropy":
        from crossentropy.torch import linear_cross_entropy

        def step():
            return linear_cross_entropy(x, w, y, chunk_size=chunk or None)
    elif impl == "torch-chunked":
        options = torch.nn.LinearCrossEntropyOptions()

        def step():
            return F.linear_cross_entropy(x, w, y, options=options)
    else:

        def step():
            return F.cross_entropy(x @ w.T, y)

    times, cpus, growths, extras = [], [], [], []
    loss = None
    for _ in range(runs):
        x.grad = w.grad = None
        loss = None
        _reset_peak()
        base = _status("VmRSS")
        start, cpu = time.perf_counter(), _cpu_seconds()
        loss = step()
        loss.backward()
        times.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu)
        peak = _status("VmHWM")
        grads = sum(t.grad.numel() * t.grad.element_size() for t in (x, w))
        growths.append(peak - base)
        extras.append(peak - base - grads)
    first = 1 if runs > 2 else 0  # the warm-up run, dropped when there are enough
    return {
        "impl": impl,
        "shape": [n, d, v],
        "dtype": dtype_name,
        "runs": runs,
        "time_s": statistics.median(times[first:]),
        "times_s": times,
        "cpu_s": statistics.median(cpus[first:]),
        "load_avg": os.getloadavg()[0],
        "growth_bytes": max(growths[first:]),
        "extra_bytes": max(extras[first:]),
        "extra_bytes_all": extras,
        "loss": float(loss),
        "threads": torch.get_num_threads(),
        "chunk_size": chunk,
    }


def matmul_rate(shape: tuple[int, int, int], dtype_name: str, runs: int = 4) -> str:
    """GFLOP/s of one ``(N, D) @ (D, V)`` product: the rate 6 N D V could run at."""
    import torch

    n, d, v = shape
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, d, dtype=dtype), torch.randn(d, v, dtype=dtype)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        product = a @ b
        times.append(time.perf_counter() - start)
        del product
    rate = 2 * n * d * v / statistics.median(times[1:]) / 1e9
    return f"{n}, {d}, {v} {dtype_name}: one product at {rate:.0f} GFLOP/s"


def run_isolated(
    impl: str, shape: tuple[int, int, int], dtype: str, runs: int, chunk: int = 0
) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--worker", impl, *map(str, shape), dtype, str(runs)]
    cmd.append(str(chunk))
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    rows = [
        "| N, D, V | dtype | impl | runs | time (s) | x unfused | x torch-chunked "
        "| CPU s | CPU x unfused | CPU x torch-chunked "
        "| GFLOP/s | GFLOP/CPU-s | growth (MiB) | extra (MiB) | extra / unfused | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(tuple(r["shape"]), r["dtype"], r["impl"]): r for r in results}
    for r in results:
        key = (tuple(r["shape"]), r["dtype"])
        unf, chk = by.get((*key, "unfused")), by.get((*key, "torch-chunked"))
        n, d, v = r["shape"]
        flops = 6 * n * d * v / r["time_s"] / 1e9
        ratio = f"{r['time_s'] / unf['time_s']:.2f}" if unf else "-"
        ratio_c = f"{r['time_s'] / chk['time_s']:.2f}" if chk else "-"
        mem = f"{r['extra_bytes'] / unf['extra_bytes']:.1%}" if unf else "-"
        cpu = f"{r['cpu_s'] / unf['cpu_s']:.2f}" if unf else "-"
        cpu_c = f"{r['cpu_s'] / chk['cpu_s']:.2f}" if chk else "-"
        rows.append(
            f"| {n}, {d}, {v} | {r['dtype']} | {r['impl']} | {r['runs']} | {r['time_s']:.2f} "
            f"| {ratio} | {ratio_c} | {r['cpu_s']:.2f} | {cpu} | {cpu_c} "
            f"| {flops:.0f} | {6 * n * d * v / r['cpu_s'] / 1e9:.0f} "
            f"| {r['growth_bytes'] / MiB:.0f} | {r['extra_bytes'] / MiB:.0f} | {mem} "
            f"| {r['load_avg']:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in SHAPES])
    parser.add_argument("--dtypes", nargs="*", default=DTYPES)
    parser.add_argument("--impls", nargs="*", default=IMPLS)
    parser.add_argument(
        "--runs",
        type=int,
        default=0,
        help="runs per case (default: 5, or 2 when 6NDV exceeds 1 TFLOP)",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="crossentropy's chunk_size (default: auto)"
    )
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--matmul-rate",
        action="store_true",
        help="instead, the rate of one (N, D) @ (D, V) product per shape: the ceiling",
    )
    args = parser.parse_args()
    if args.matmul_rate:
        for text in args.shapes:
            for dtype in args.dtypes:
                print(matmul_rate(tuple(int(s) for s in text.split(",")), dtype))
        return
    results = []
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split(","))
        n, d, v = shape
        runs = args.runs or (2 if 6 * n * d * v > 1e12 else 5)
        for dtype in args.dtypes:
            for impl in args.impls:
                result = run_isolated(impl, shape, dtype, runs, args.chunk_size)
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def merge(results: list[dict]) -> list[dict]:
    """One row per (shape, dtype, implementation): medians over the processes that ran it.

    Repeating a case in several fresh processes, interleaved with the other
    implementations, spreads the machine's load (other jobs share its two cores) evenly.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((tuple(r["shape"]), r["dtype"], r["impl"]), []).append(r)
    merged = []
    for rows in groups.values():
        row = dict(rows[0])
        row["runs"] = sum(r["runs"] for r in rows)
        row["processes"] = len(rows)
        row["time_s"] = statistics.median(r["time_s"] for r in rows)
        row["cpu_s"] = statistics.median(r["cpu_s"] for r in rows)
        row["growth_bytes"] = max(r["growth_bytes"] for r in rows)
        row["extra_bytes"] = max(r["extra_bytes"] for r in rows)
        row["load_avg"] = statistics.mean(r["load_avg"] for r in rows)
        merged.append(row)
    return merged


def render(paths: list[str]) -> None:
    """Print the table of results saved by ``--json`` or logged on stderr (JSON lines)."""
    results = []
    for path in paths:
        with open(path) as f:
            text = f.read().strip()
        if text.startswith("["):
            results.extend(json.loads(text))
        else:
            results.extend(json.loads(line) for line in text.splitlines() if line)
    print(table(merge(results)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        render(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, n, d, v, dtype, runs, chunk = sys.argv[2:9]
        print(json.dumps(worker(impl, int(n), int(d), int(v), dtype, int(runs), int(chunk))))
    else:
        main()

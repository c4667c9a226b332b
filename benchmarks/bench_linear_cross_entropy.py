"""Fused linear + cross-entropy: crossentropy vs PyTorch's chunked and unfused losses.

Usage::

    python benchmarks/bench_linear_cross_entropy.py            # the issue's full table
    python benchmarks/bench_linear_cross_entropy.py --shapes 2048,512,32768 --dtypes float32

Three implementations of the same loss, forward + backward (gradients for the hidden
states and the weight), side by side in one run:

* ``crossentropy``: ``crossentropy.torch.linear_cross_entropy(x, W, y)``
* ``torch-chunked``: ``F.linear_cross_entropy(x, W, y, options=LinearCrossEntropyOptions())``
* ``unfused``: ``F.cross_entropy(x @ W.T, y)``

Method: ``_harness.py``.  Every (shape, dtype, implementation) runs in a fresh Python
process; each run's ``VmHWM`` (reset through ``/proc/self/clear_refs``) less its starting
``VmRSS`` is its ``growth``, and ``extra`` is growth less the gradient buffers ``x.grad``
and ``W.grad``: the memory the loss itself needs.  The time is the median and the memory
the maximum over the runs; the first run, a warm-up, is dropped when there are more than
two.  The FLOP rate is ``6 N D V`` (three matrix products, the minimum) over that time.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from _harness import (
    PERCENT,
    case_parser,
    default_runs,
    load_results,
    log_result,
    measure,
    measured_cells,
    measured_columns,
    merge,
    parse_shape,
    ratio,
    run_worker,
    table_head,
    write_json,
)

SHAPES = [(2048, 512, 32768), (4096, 1024, 128256), (8192, 2048, 32768)]
DTYPES = ["float32", "bfloat16"]
IMPLS = ["crossentropy", "torch-chunked", "unfused"]


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

    def run():
        loss = step()
        loss.backward()
        return loss

    loss, summary = measure(run, (x, w), runs)
    return {
        "impl": impl,
        "shape": [n, d, v],
        "dtype": dtype_name,
        "runs": runs,
        **summary,
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


def table(results: list[dict]) -> str:
    rows = table_head(
        f"N, D, V | dtype | impl | runs | {measured_columns(['unfused', 'torch-chunked'])} "
        "| extra / unfused | load"
    )
    by = {(tuple(r["shape"]), r["dtype"], r["impl"]): r for r in results}
    for r in results:
        key = (tuple(r["shape"]), r["dtype"])
        unf, chk = by.get((*key, "unfused")), by.get((*key, "torch-chunked"))
        n, d, v = r["shape"]
        rows.append(
            f"| {n}, {d}, {v} | {r['dtype']} | {r['impl']} | {r['runs']} "
            f"| {measured_cells(r, (unf, chk), 6 * n * d * v)} "
            f"| {ratio(r['extra_bytes'], unf, 'extra_bytes', PERCENT)} | {r['load_avg']:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    runs_help = "runs per case (default: 5, or 2 when 6NDV exceeds 1 TFLOP)"
    parser = case_parser(__doc__, SHAPES, IMPLS, 0, runs_help)
    parser.add_argument("--dtypes", nargs="*", default=DTYPES)
    parser.add_argument(
        "--chunk-size", type=int, default=0, help="crossentropy's chunk_size (default: auto)"
    )
    parser.add_argument(
        "--matmul-rate",
        action="store_true",
        help="instead, the rate of one (N, D) @ (D, V) product per shape: the ceiling",
    )
    args = parser.parse_args()
    if args.matmul_rate:
        for text in args.shapes:
            for dtype in args.dtypes:
                print(matmul_rate(parse_shape(text), dtype))
        return
    results = []
    for text in args.shapes:
        shape = parse_shape(text)
        n, d, v = shape
        runs = default_runs(args.runs, 6 * n * d * v)
        for dtype in args.dtypes:
            for impl in args.impls:
                cmd = ["--worker", impl, *shape, dtype, runs, args.chunk_size]
                result = run_worker(__file__, cmd)
                results.append(result)
                log_result(result)
    print(table(results))
    write_json(args.json, results)


def render(paths: list[str]) -> None:
    """Print the table of results saved by ``--json`` or logged on stderr (JSON lines)."""
    print(table(merge(load_results(paths), ("dtype", "impl"))))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        render(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, n, d, v, dtype, runs, chunk = sys.argv[2:9]
        print(json.dumps(worker(impl, int(n), int(d), int(v), dtype, int(runs), int(chunk))))
    else:
        main()

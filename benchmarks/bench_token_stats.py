"""Per-token statistics (issue 13): ``linear_token_stats`` vs materialised logits and verl.

Usage::

    python benchmarks/bench_token_stats.py --runs 3 --json /tmp/stats.json   # the issue's table
    python benchmarks/bench_token_stats.py --shapes 2048,512,32768 --modes fwd
    python benchmarks/bench_token_stats.py --render /tmp/stats.json more.jsonl

Three implementations of the log-probability of the target and the entropy of
``softmax(h W^T / T)`` per token, CPU float32, side by side in one run:

* ``crossentropy``: ``crossentropy.torch.linear_token_stats(h, W, y, temperature=T)``
  (all of its statistics; the loss uses ``log_prob`` and ``entropy``);
* ``materialised``: ``z = (h @ W.T) / T``, ``logp = z.log_softmax(-1)``,
  ``logp.gather(1, y)``, ``-(logp.exp() * logp).sum(-1)``, through autograd;
* ``verl``: verl 0.9.1's ``FusedLinearForPPO(chunk_size=512, impl_backend="torch")``
  (its defaults), from ``verl/utils/experimental/torch_functional.py`` loaded by file
  path (``pip install --no-deps verl==0.9.1``; that module imports only torch, while the
  ``verl`` package's own import needs a cluster stack).  Its forward and backward loop
  over chunks of 512 tokens, recomputing each chunk's logits in backward.

Two modes: ``fwd+bwd`` is the forward pass, then ``((g1 * log_prob).sum() +
(g2 * entropy).sum()).backward()`` with fixed random ``g1, g2 ~ N(0, 1)`` (gradients for
the hidden states and the weight); ``fwd`` is the forward pass alone under
``torch.no_grad()``.

Method: ``_harness.py`` (a fresh process per (shape, mode, implementation), ``VmHWM``
reset through ``/proc/self/clear_refs`` and read around each run, ``MALLOC_MMAP_THRESHOLD_``
and ``MALLOC_TRIM_THRESHOLD_`` set; the median time and the maximum memory, the first run
dropped as a warm-up when there are more than two).  ``extra`` is growth less the
gradient buffers ``h.grad`` and ``W.grad`` (nothing in ``fwd`` mode).  The FLOP rate
counts ``8 N D V`` with gradients (the forward product, its recomputation in backward,
``dh`` and ``dW``) and ``2 N D V`` forward only: the materialised computation needs only
``6 N D V`` with gradients, since it keeps its logits, so its rate over ``8 N D V`` is
the rate a fused op would need to match its time.

Each worker also reports checksums (sums of ``log_prob`` and ``entropy``, norms of the
gradients); the table's footnote gives their largest relative difference between the
implementations, which shows that all three compute the same thing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from _harness import (
    PERCENT,
    MiB,
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

SHAPES = [(2048, 512, 32768), (4096, 1024, 128256)]
IMPLS = ["crossentropy", "materialised", "verl"]
MODES = ["fwd+bwd", "fwd"]
TEMPERATURE = 0.7
VERL_CHUNK = 512  # FusedLinearForPPO's default chunk_size

#: Targets of issue 13 (time ratios are upper bounds).
TIME_VS_MATERIALISED = 0.8
TIME_VS_VERL = 0.85
MEMORY_VS_MATERIALISED = 0.10  # at V = 128256
FORWARD_VS_MATERIALISED = 0.6


def load_verl():
    """verl 0.9.1's ``verl/utils/experimental/torch_functional.py``, by file path."""
    spec = importlib.util.find_spec("verl")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("verl is not installed: pip install --no-deps verl==0.9.1")
    root = next(iter(spec.submodule_search_locations))
    path = os.path.join(root, "utils", "experimental", "torch_functional.py")
    module_spec = importlib.util.spec_from_file_location("_verl_torch_functional", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def make_step(impl: str, w, y, temperature: float, chunk: int):
    """``step(h) -> (log_prob, entropy)`` of one implementation."""
    if impl == "crossentropy":
        from crossentropy.torch import linear_token_stats

        def step(h):
            s = linear_token_stats(h, w, y, temperature=temperature, chunk_size=chunk or None)
            return s.log_prob, s.entropy
    elif impl == "materialised":

        def step(h):
            z = (h @ w.T) / temperature
            logp = z.log_softmax(-1)
            log_prob = logp.gather(1, y.unsqueeze(1)).squeeze(1)
            entropy = -(logp.exp() * logp).sum(-1)
            return log_prob, entropy
    elif impl == "verl":
        verl = load_verl()
        if getattr(verl, "_FLASH_ATTN_CROSS_ENTROPY_AVAILABLE", False):
            raise SystemExit("flash_attn is importable: verl would take its Triton path")
        op = verl.FusedLinearForPPO(chunk_size=chunk or VERL_CHUNK, impl_backend="torch")

        def step(h):
            return op(h, w, y, temperature=temperature)
    else:
        raise SystemExit(f"unknown implementation {impl!r}")
    return step


def worker(
    impl: str, mode: str, n: int, d: int, v: int, runs: int, chunk: int, temperature: float
) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    grads = mode == "fwd+bwd"
    h = (torch.randn(n, d, generator=gen) / d**0.5).requires_grad_(grads)
    w = torch.randn(v, d, generator=gen).requires_grad_(grads)
    y = torch.randint(0, v, (n,), generator=gen)
    g1 = torch.randn(n, generator=gen)
    g2 = torch.randn(n, generator=gen)
    step = make_step(impl, w, y, temperature, chunk)

    def run():
        if grads:
            log_prob, entropy = step(h)
            ((g1 * log_prob).sum() + (g2 * entropy).sum()).backward()
        else:
            with torch.no_grad():
                log_prob, entropy = step(h)
        return log_prob, entropy

    (log_prob, entropy), summary = measure(run, (h, w), runs)
    check = {"log_prob_sum": float(log_prob.sum()), "entropy_sum": float(entropy.sum())}
    if grads:
        check["dh_norm"] = float(h.grad.norm())
        check["dw_norm"] = float(w.grad.norm())
    return {
        "impl": impl,
        "mode": mode,
        "shape": [n, d, v],
        "dtype": "float32",
        "temperature": temperature,
        "runs": runs,
        **summary,
        "check": check,
        "threads": torch.get_num_threads(),
        "chunk_size": chunk,
    }


def _flops(r: dict) -> float:
    n, d, v = r["shape"]
    return (8 if r["mode"] == "fwd+bwd" else 2) * n * d * v


def _rate(gflops: float) -> str:
    return f"{gflops:.0f}" if gflops >= 100 else f"{gflops:.1f}"


def table(results: list[dict]) -> str:
    rows = table_head(
        f"N, D, V | mode | impl | runs | {measured_columns(['materialised', 'verl'])} "
        "| extra / materialised | extra / verl | load"
    )
    by = {(tuple(r["shape"]), r["mode"], r["impl"]): r for r in results}
    for r in results:
        key = (tuple(r["shape"]), r["mode"])
        mat, verl = by.get((*key, "materialised")), by.get((*key, "verl"))
        n, d, v = r["shape"]
        e = r["extra_bytes"]
        rows.append(
            f"| {n}, {d}, {v} | {r['mode']} | {r['impl']} | {r['runs']} "
            f"| {measured_cells(r, (mat, verl), _flops(r), _rate)} "
            f"| {ratio(e, mat, 'extra_bytes', PERCENT)} | {ratio(e, verl, 'extra_bytes', PERCENT)} "
            f"| {r['load_avg']:.1f} |"
        )
    return "\n".join(rows) + "\n\n" + _agreement(results)


def _agreement(results: list[dict]) -> str:
    """The largest relative difference of each checksum from the materialised one."""
    lines = []
    by = {(tuple(r["shape"]), r["mode"], r["impl"]): r for r in results}
    for (shape, mode, impl), r in by.items():
        mat = by.get((shape, mode, "materialised"))
        if impl == "materialised" or mat is None:
            continue
        diffs = {
            k: abs(r["check"][k] - mat["check"][k]) / max(abs(mat["check"][k]), 1e-30)
            for k in r["check"]
        }
        worst = max(diffs, key=diffs.__getitem__)
        lines.append(
            f"{', '.join(map(str, shape))} {mode} {impl} vs materialised: "
            f"largest relative checksum difference {diffs[worst]:.1e} ({worst})"
        )
    return "\n".join(f"- {line}" for line in lines)


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "missed"


def _time_cell(ours: dict | None, theirs: dict | None, bound: float) -> str:
    """Wall-time ratio and verdict, then the CPU-time ratio (less sensitive to load)."""
    if not ours or not theirs:
        return "-"
    wall, cpu = ours["time_s"] / theirs["time_s"], ours["cpu_s"] / theirs["cpu_s"]
    return f"{wall:.2f} {_verdict(wall <= bound)} (CPU {cpu:.2f} {_verdict(cpu <= bound)})"


def targets(results: list[dict]) -> str:
    """Issue 13's targets, per shape: the measured figure and whether it is met (time:
    the wall-clock ratio, and in brackets the ratio of CPU seconds)."""
    by = {(tuple(r["shape"]), r["mode"], r["impl"]): r for r in results}
    rows = [
        "| N, D, V | time x materialised (<= 0.8) | time x verl (<= 0.85) "
        "| extra x materialised (<= 10% at V = 128256) | extra vs verl (<=) "
        "| forward x materialised (<= 0.6) |",
        "|---|---|---|---|---|---|",
    ]
    for shape in dict.fromkeys(tuple(r["shape"]) for r in results):
        ce = by.get((shape, "fwd+bwd", "crossentropy"))
        mat = by.get((shape, "fwd+bwd", "materialised"))
        verl = by.get((shape, "fwd+bwd", "verl"))
        cells = []
        cells.append(_time_cell(ce, mat, TIME_VS_MATERIALISED))
        cells.append(_time_cell(ce, verl, TIME_VS_VERL))
        if ce and mat:
            x = ce["extra_bytes"] / mat["extra_bytes"]
            binding = shape[2] == 128256
            note = _verdict(x <= MEMORY_VS_MATERIALISED) if binding else "(no target)"
            cells.append(f"{x:.1%} {note}")
        else:
            cells.append("-")
        if ce and verl:
            a, b = ce["extra_bytes"] / MiB, verl["extra_bytes"] / MiB
            cells.append(f"{a:.0f} vs {b:.0f} MiB {_verdict(a <= b)}")
        else:
            cells.append("-")
        ce_f = by.get((shape, "fwd", "crossentropy"))
        mat_f = by.get((shape, "fwd", "materialised"))
        cells.append(_time_cell(ce_f, mat_f, FORWARD_VS_MATERIALISED))
        rows.append(f"| {', '.join(map(str, shape))} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    runs_help = "runs per case (default: 5, or 2 when 8NDV exceeds 1 TFLOP)"
    parser = case_parser(__doc__, SHAPES, IMPLS, 0, runs_help)
    parser.add_argument("--modes", nargs="*", default=MODES)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=0,
        help="chunk size of crossentropy and verl (default: crossentropy's auto, verl's 512)",
    )
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    args = parser.parse_args()
    results = []
    for text in args.shapes:
        shape = parse_shape(text)
        n, d, v = shape
        runs = default_runs(args.runs, 8 * n * d * v)
        for mode in args.modes:
            for impl in args.impls:
                cmd = [impl, mode, *shape, runs, args.chunk_size, repr(args.temperature)]
                result = run_worker(__file__, ["--worker", *cmd])
                results.append(result)
                log_result(result)
    print(table(results))
    print()
    print(targets(results))
    write_json(args.json, results)


def render(paths: list[str]) -> None:
    """Print the tables of results saved by ``--json`` or logged on stderr (JSON lines)."""
    merged = merge(load_results(paths), ("mode", "impl"))
    print(table(merged))
    print()
    print(targets(merged))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        render(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, mode, n, d, v, runs, chunk, temperature = sys.argv[2:10]
        print(
            json.dumps(
                worker(
                    impl, mode, int(n), int(d), int(v), int(runs), int(chunk), float(temperature)
                )
            )
        )
    else:
        main()

"""Benchmark ``crossentropy report`` (issue 4).

1. In memory, on the same 1,000,000 x 100 float32 probabilities and labels, in one run:
   ``sklearn.metrics.log_loss``; a direct NumPy gather-and-log; the report's single pass
   (cross-entropy, entropy, KL, accuracy, ECE, per-class table) with and without the
   temperature reservoir; and, separately, the temperature fit the report runs.
   Targets: the pass at most 1/5 of sklearn's time, the fit under sklearn's time.
2. A 10,000,000 x 100 float32 Parquet file written to /tmp (not the repository), reported
   end to end by ``python -m crossentropy.cli report`` in a child process: rows/second
   and the child's peak resident memory (``ru_maxrss`` from ``os.wait4``).

Medians of ``--runs`` interleaved rounds, wall and CPU time (the CPUs may be shared with
other work: CPU time is the steadier figure).  Usage::

    python benchmarks/bench_report.py [--rows 1000000] [--classes 100] [--runs 5]
        [--parquet-rows 10000000] [--parquet-runs 3] [--parquet /tmp/ce_report_10M.parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

from crossentropy.cli._report_read import default_batch_rows
from crossentropy.cli._report_stats import Accumulator, fit_temperature


def make(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 probabilities softmax(z) and labels drawn from softmax(z / 1.5)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, classes), dtype=np.float32)
    z *= 2.0
    # Labels by the Gumbel-max trick at T = 1.5: the model is overconfident.
    g = rng.gumbel(size=(rows, classes)).astype(np.float32)
    g += z / np.float32(1.5)
    labels = g.argmax(axis=1)
    del g
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z, labels


def timed(fn) -> tuple[float, float, object]:
    """Wall and CPU (this process) seconds of one call, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def sklearn_log_loss(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(log_loss(y, p, labels=np.arange(p.shape[1])))


def numpy_gather(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(p[np.arange(len(y)), y].astype(np.float64)).mean())


def report_pass(p: np.ndarray, y: np.ndarray, *, sample: bool) -> Accumulator:
    acc = Accumulator(p.shape[1], "probs", p.dtype, sample=sample)
    step = default_batch_rows(p.shape[1])
    for start in range(0, len(y), step):
        acc.update(p[start : start + step], y[start : start + step])
    acc.result(fit=False)
    return acc


def in_memory(rows: int, classes: int, runs: int) -> list[tuple[str, float, float, str]]:
    """Each round times every contender once, in turn, so they share the machine's load
    (the CPUs may be shared); medians over the rounds, of wall and of CPU time."""
    p, y = make(rows, classes, seed=0)
    acc = report_pass(p, y, sample=True)
    values, labels = acc.reservoir.sample()
    contenders = {
        "sklearn": lambda: sklearn_log_loss(p, y),
        "numpy": lambda: numpy_gather(p, y),
        "pass": lambda: report_pass(p, y, sample=False),
        "pass+sample": lambda: report_pass(p, y, sample=True),
        "fit": lambda: fit_temperature(values, labels, "probs"),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in contenders}
    out: dict[str, object] = {}
    for _ in range(runs):
        for name, fn in contenders.items():
            wall, cpu, out[name] = timed(fn)
            times[name].append((wall, cpu))
    wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
    ref, direct, fit = out["sklearn"], out["numpy"], out["fit"]
    ce = acc.result(fit=False)["cross_entropy"]
    assert abs(ce - ref) <= 1e-6 * ref and abs(direct - ref) <= 1e-6 * ref, (ce, direct, ref)

    def ratio(k: str, target: str = "") -> str:
        text = f"{wall[k] / wall['sklearn']:.3f}x wall, {cpu[k] / cpu['sklearn']:.3f}x CPU"
        return text + (f" (target {target})" if target else "")

    return [
        ("sklearn.metrics.log_loss", wall["sklearn"], cpu["sklearn"], "1 (baseline)"),
        ("NumPy gather-and-log (loss only)", wall["numpy"], cpu["numpy"], ratio("numpy")),
        (
            "report single pass (CE, S(D), KL, accuracy, ECE, per-class)",
            wall["pass"],
            cpu["pass"],
            ratio("pass", "<= 0.2"),
        ),
        (
            "report single pass + temperature reservoir (what the CLI runs)",
            wall["pass+sample"],
            cpu["pass+sample"],
            ratio("pass+sample"),
        ),
        (
            f"temperature fit ({fit.rows:,}-row sample, {fit.iterations} Newton steps, "
            f"T = {fit.temperature:.4f})",
            wall["fit"],
            cpu["fit"],
            ratio("fit", "< 1"),
        ),
        (f"check: abs(report - sklearn) / sklearn = {abs(ce - ref) / ref:.1e}", 0.0, 0.0, ""),
    ]


def write_parquet(path: str, rows: int, classes: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunk = 1_000_000
    names = [str(c) for c in range(classes)]
    schema = pa.schema([("label", pa.int64()), *[(n, pa.float32()) for n in names]])
    tmp = path + ".part"
    with pq.ParquetWriter(tmp, schema) as writer:
        for i, start in enumerate(range(0, rows, chunk)):
            p, y = make(min(chunk, rows - start), classes, seed=100 + i)
            arrays = [pa.array(y.astype(np.int64)), *[pa.array(p[:, c]) for c in range(classes)]]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=chunk)
            del p, y, arrays
    os.replace(tmp, path)


# The child is started from this small launcher, not from the benchmark: on Linux a
# process's ru_maxrss includes the RSS of the process it was forked from (exec records the
# old address space's high-water mark), and the benchmark itself holds gigabytes.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "err": proc.stderr.read().decode(),
                  "wall": time.perf_counter() - start, "maxrss_kib": usage.ru_maxrss,
                  "user": usage.ru_utime, "sys": usage.ru_stime}))
"""


def child_run(path: str, out: str) -> tuple[float, float, dict, float]:
    """Wall seconds, peak RSS (MiB) and CPU seconds of one ``crossentropy report`` child."""
    cmd = [sys.executable, "-m", "crossentropy.cli", "report", path, "--json", out]
    launched = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True, check=True
    )
    result = json.loads(launched.stdout)
    if result["rc"]:
        raise SystemExit(f"report failed: {result['err']}")
    with open(out) as f:
        report = json.load(f)
    return result["wall"], result["maxrss_kib"] / 1024, report, result["user"] + result["sys"]


def parquet(path: str, rows: int, classes: int, runs: int) -> list[tuple[str, float, float, str]]:
    if not os.path.exists(path):
        start = time.perf_counter()
        write_parquet(path, rows, classes)
        print(
            f"wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) in "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
    out = path + ".json"
    results = [child_run(path, out) for _ in range(runs)]
    wall = statistics.median(r[0] for r in results)
    rss = max(r[1] for r in results)
    cpu = statistics.median(r[3] for r in results)
    report = results[-1][2]
    assert report["n"] == rows
    return [
        (
            f"report on {rows:,} x {classes} Parquet, end to end (child process)",
            wall,
            cpu,
            f"{rows / wall:,.0f} rows/s wall, {rows / cpu:,.0f} rows/s CPU",
        ),
        (
            "  of which reading + single pass (report's own timer)",
            rows / report["rows_per_second"],
            0.0,
            f"{report['rows_per_second']:,} rows/s wall",
        ),
        (
            f"  peak RSS of the child (max of {runs}): {rss:,.0f} MiB; file "
            f"{os.path.getsize(path) / 2**30:.2f} GiB; raw values {rows * classes * 4 / 2**30:.1f}"
            f" GiB",
            0.0,
            0.0,
            f"T = {report['temperature']:.4f} on {report['temperature_rows']:,} sampled rows",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parquet-rows", type=int, default=10_000_000)
    parser.add_argument("--parquet-runs", type=int, default=3)
    parser.add_argument("--parquet", default="/tmp/ce_report_10M.parquet")
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, NumPy {np.__version__}"
    )
    rows = in_memory(args.rows, args.classes, args.runs) if args.rows else []
    if args.parquet_rows:
        rows += parquet(args.parquet, args.parquet_rows, args.classes, args.parquet_runs)
    print(
        f"\n| what ({args.rows:,} x {args.classes} float32 in memory; medians of "
        f"{args.runs} interleaved rounds) | wall s | CPU s | vs sklearn |"
    )
    print("|---|---:|---:|---|")
    for name, wall, cpu, ratio in rows:
        cells = [f"{wall:.3f}" if wall else "", f"{cpu:.3f}" if cpu else ""]
        print(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()

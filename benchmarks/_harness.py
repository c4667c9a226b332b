"""The measurement harness of the CPU benchmarks in this folder (not a benchmark itself).

The scripts are run as ``python benchmarks/<script>.py``, so this folder is the first
entry of ``sys.path`` and they import this module as ``_harness``.

Method.  Every case (an implementation at a shape, dtype or mode) runs in a fresh Python
process (:func:`run_worker`: the script runs itself with worker arguments and prints its
result as the last line of standard output, one JSON object), so neither allocator
caches nor a previous peak leak between cases.  glibc is told to serve every allocation
of 64 KiB or more by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``, :data:`MMAP_ENV`), so freed
tensors leave the resident set at once and the baseline is honest (this also makes every
large allocation pay its page faults, for every implementation alike);
:data:`MMAP_NO_TRIM_ENV` also sets ``MALLOC_TRIM_THRESHOLD_=0``, so the top of the heap
is returned at once too.  tracemalloc cannot see torch's allocations, hence the kernel's
counters.

In that process each timed run (:func:`measure`): the gradients are cleared, the peak
resident set (``VmHWM``) is reset through ``/proc/self/clear_refs`` (:func:`reset_peak`),
the resident set (``VmRSS``) is read as the baseline, the step runs, and ``VmHWM`` is read
again.  ``growth`` is peak minus baseline: everything the step allocated, the returned
gradient buffers included; ``extra`` is growth less those gradient buffers, the memory
the computation itself needs.  Wall time (``perf_counter``) and CPU time (user + system,
``getrusage``) are taken around the step.  The time is the median and the memory the
maximum over the runs; the first run, a warm-up that also pays the libraries' one-time
allocations, is dropped when there are more than two (unless the script warms up
separately).

Repeating a case in several fresh processes, interleaved with the other implementations,
spreads the machine's load evenly; :func:`merge` makes one row of them (the median of the
times, the maximum of the memory, the mean of the load average).  Each script logs every
result as a JSON line on standard error (:func:`log_result`), can save them all with
``--json`` (:func:`write_json`) and prints its tables again from either with ``--render``
(:func:`load_results`).
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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

MiB = 2**20
#: The format of a ratio as a percentage (:func:`ratio`).
PERCENT = "{:.1%}"
#: Every allocation of 64 KiB or more by ``mmap``: freed tensors leave the resident set.
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
#: :data:`MMAP_ENV`, and the top of the heap trimmed at once.
MMAP_NO_TRIM_ENV = {**MMAP_ENV, "MALLOC_TRIM_THRESHOLD_": "0"}


def status(field: str) -> int:
    """A field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def mem_available() -> int:
    """``MemAvailable`` of ``/proc/meminfo``, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak() -> None:
    """Reset this process's peak resident set (``VmHWM``) to its current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def grad_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the gradient buffers the tensors hold (none counts nothing)."""
    return sum(t.grad.numel() * t.grad.element_size() for t in tensors if t.grad is not None)


def measure(
    step: Callable[[], Any], params: Sequence[Any], runs: int, drop_warmup: bool = True
) -> tuple[Any, dict]:
    """``step()`` timed ``runs`` times as the module says; the last result and a summary.

    ``params`` are the tensors whose gradients are cleared before each run and not
    counted in ``extra``.  The summary's keys: ``time_s``, ``times_s``, ``cpu_s``,
    ``load_avg``, ``growth_bytes``, ``extra_bytes``, ``extra_bytes_all``; with
    ``drop_warmup`` the first run is left out of the median and maximum when there are
    more than two.
    """
    times, cpus, growths, extras = [], [], [], []
    result = None
    for _ in range(runs):
        for t in params:
            t.grad = None
        result = None
        reset_peak()
        base = status("VmRSS")
        start, cpu = time.perf_counter(), cpu_seconds()
        result = step()
        times.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu)
        peak = status("VmHWM")
        growths.append(peak - base)
        extras.append(peak - base - grad_bytes(params))
    first = 1 if drop_warmup and runs > 2 else 0
    return result, {
        "time_s": statistics.median(times[first:]),
        "times_s": times,
        "cpu_s": statistics.median(cpus[first:]),
        "load_avg": os.getloadavg()[0],
        "growth_bytes": max(growths[first:]),
        "extra_bytes": max(extras[first:]),
        "extra_bytes_all": extras,
    }


def run_worker(script: str, args: Iterable[object], env: dict = MMAP_NO_TRIM_ENV) -> dict:
    """Run ``python script *args`` in a fresh process with ``env`` added to the
    environment; the JSON object on the last line of its standard output."""
    cmd = [sys.executable, script, *map(str, args)]
    out = subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def case_parser(
    doc: str,
    shapes: Sequence[Sequence[int]],
    impls: Sequence[str],
    runs: int,
    runs_help: str,
    shape_help: str | None = None,
    impl_choices: Sequence[str] | None = None,
) -> argparse.ArgumentParser:
    """The options every case-by-case benchmark has: ``--shapes`` (comma-separated, with
    ``shapes`` the default), ``--impls``, ``--runs`` and ``--json``; the description is
    the first line of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument(
        "--shapes", nargs="*", default=[",".join(map(str, s)) for s in shapes], help=shape_help
    )
    parser.add_argument("--impls", nargs="*", default=list(impls), choices=impl_choices)
    parser.add_argument("--runs", type=int, default=runs, help=runs_help)
    parser.add_argument("--json", help="also write the raw results here")
    return parser


def parse_shape(text: str) -> tuple[int, ...]:
    """``"2048,512,32768"`` -> ``(2048, 512, 32768)``."""
    return tuple(int(s) for s in text.split(","))


def default_runs(requested: int, flops: float) -> int:
    """``requested``, or by default 5 runs, 2 when a run costs more than 1 TFLOP."""
    return requested or (2 if flops > 1e12 else 5)


def log_result(result: dict) -> None:
    """One result as a JSON line on standard error (``--render`` reads such logs)."""
    print(json.dumps(result), file=sys.stderr, flush=True)


def write_json(path: str | None, results: list[dict]) -> None:
    """Save the raw results (``--json``), if a path is given."""
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


def load_results(paths: Iterable[str]) -> list[dict]:
    """Results saved by :func:`write_json` (a JSON list) or logged by :func:`log_result`
    (JSON lines; other lines are skipped)."""
    results = []
    for path in paths:
        with open(path) as f:
            text = f.read().strip()
        if text.startswith("["):
            results.extend(json.loads(text))
        else:
            results.extend(json.loads(line) for line in text.splitlines() if line.startswith("{"))
    return results


def merge(results: list[dict], fields: Sequence[str]) -> list[dict]:
    """One row per case (the shape and ``fields``, e.g. ``("mode", "impl")``): the runs
    summed, the median of the times, the maximum of the memory, the mean load."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((tuple(r["shape"]), *(r[k] for k in fields)), []).append(r)
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


def ratio(value: float, base: dict | None, key: str, fmt: str = "{:.2f}") -> str:
    """``value / base[key]`` formatted, or ``-`` without a base (or a zero one)."""
    if base is None or not base[key]:
        return "-"
    return fmt.format(value / base[key])


def measured_columns(bases: Sequence[str]) -> str:
    """The columns of :func:`measured_cells`, ``bases`` the names of its bases."""
    times = " | ".join(f"x {b}" for b in bases)
    cpus = " | ".join(f"CPU x {b}" for b in bases)
    return (
        f"time (s) | {times} | CPU s | {cpus} | GFLOP/s | GFLOP/CPU-s | growth (MiB) | extra (MiB)"
    )


def measured_cells(
    r: dict, bases: Sequence[dict | None], flops: float, rate: Callable[[float], str] | None = None
) -> str:
    """The cells every results table has, of result ``r``: its wall seconds and their
    ratios to the results ``bases`` (``-`` for a missing one), its CPU seconds and theirs,
    ``flops`` over each (formatted by ``rate`` from GFLOP/s; whole numbers by default),
    its growth and extra memory in MiB."""
    t, c = r["time_s"], r["cpu_s"]
    rate = rate or "{:.0f}".format
    cells = [f"{t:.2f}", *(ratio(t, b, "time_s") for b in bases)]
    cells += [f"{c:.2f}", *(ratio(c, b, "cpu_s") for b in bases)]
    cells += [rate(flops / t / 1e9), rate(flops / c / 1e9)]
    cells += [f"{r['growth_bytes'] / MiB:.0f}", f"{r['extra_bytes'] / MiB:.0f}"]
    return " | ".join(cells)


def table_head(columns: str) -> list[str]:
    """The header and rule lines of a Markdown table of ``"a | b | c"``'s columns."""
    names = [c.strip() for c in columns.split("|")]
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]

"""Entropy estimators (issue 5): bias, RMSE and interval coverage; speed against baselines.

Run from the repository root:

    python benchmarks/bench_estimate.py            # everything, a few minutes on 2 cores
    python benchmarks/bench_estimate.py --quick    # fewer replicates, smaller speed runs

Part 1, accuracy: for each truth (Zipf(1), p_k ~ 1/k; one seeded Dirichlet(0.1) draw;
uniform) and sample size N, draw R seeded multinomial samples and report every
estimator's mean bias (estimate - truth, nats), RMSE, and the coverage of its 95%
interval (entropy_interval: normal bootstrap, 200 resamples; NSB: posterior) over the
first C samples. The Zipf rows also list the published bias (Arora, Meister & Cotterell,
ACL 2022, 1000 replicates).

Part 2, speed: 10,000 count vectors of K = 1,000 symbols (N = 2,000 each, Zipf), one
count vector of K = 10 million symbols (N = 20 million, Zipf), and counting 100 million
integers, against infomeasure (and ndd, where it installs) for the methods they share.
N is not K because infomeasure's NSB returns NaN when N = K (it counts N - K
"coincidences"). infomeasure's NSB also drops the zero cells from its posterior-mean sum,
so it does not reproduce ndd's published value (2.8148 where ndd and this package give
2.8061 for the README counts); the "agreement" column shows that difference.
Baselines that loop in Python over rows are timed on a subset of rows and scaled
linearly; the table says so.
"""

from __future__ import annotations

import argparse
import importlib
import math
import platform
import statistics
import time
import warnings
import zlib

import numpy as np

from crossentropy.estimate import METHODS, Counts, counts, entropy, entropy_interval

PUBLISHED = {  # (K, N): plug-in, Miller-Madow, jackknife, Chao-Shen, NSB
    (100, 100): (-0.461, -0.259, -0.126, -0.062, +0.036),
    (1000, 100): (-1.397, -1.087, -0.826, -0.661, -0.413),
    (1000, 1000): (-0.417, -0.250, -0.136, -0.049, +0.025),
}
PUBLISHED_METHODS = ("plugin", "miller_madow", "jackknife", "chao_shen", "nsb")
SHORT = {
    "plugin": "plug-in",
    "miller_madow": "MM",
    "jackknife": "JK",
    "grassberger": "Grass.",
    "chao_shen": "CS",
    "shrinkage": "shrink",
    "nsb": "NSB",
    "zhang": "Zhang",
}


def truth(kind: str, K: int) -> np.ndarray:
    if kind == "zipf":
        p = 1.0 / np.arange(1, K + 1)
    elif kind == "dirichlet0.1":
        p = np.random.default_rng(12345).dirichlet(np.full(K, 0.1))
    else:
        p = np.ones(K)
    return p / p.sum()


def shannon(p: np.ndarray) -> float:
    q = p[p > 0]
    return float(-np.sum(q * np.log(q)))


def accuracy(replicates: int, covered: int, n_boot: int) -> list[str]:
    regimes = [("zipf", 100, 100), ("zipf", 1000, 100), ("zipf", 1000, 1000), ("zipf", 1000, 10000)]
    regimes += [(kind, 1000, N) for kind in ("dirichlet0.1", "uniform") for N in (100, 1000, 10000)]
    lines = []
    header = "| truth | K | N | " + " | ".join(SHORT[m] for m in METHODS) + " |"
    rule = "|---|---|---|" + "---|" * len(METHODS)
    tables = {"bias": [header, rule], "rmse": [header, rule], "coverage": [header, rule]}
    published_rows = []
    for kind, K, N in regimes:
        p = truth(kind, K)
        H = shannon(p)
        # A stable seed per row (hash() of a str changes between processes).
        rng = np.random.default_rng(zlib.crc32(f"{kind}-{K}-{N}".encode()))
        draws = rng.multinomial(N, p, size=replicates)
        row = {"bias": [], "rmse": [], "coverage": []}
        for method in METHODS:
            errors = entropy(draws, method=method).value - H
            row["bias"].append(f"{errors.mean():+.3f}")
            row["rmse"].append(f"{math.sqrt(np.mean(errors**2)):.3f}")
            est = entropy_interval(draws[:covered], method=method, n_boot=n_boot, seed=1)
            inside = np.mean((est.low <= H) & (est.high >= H))
            row["coverage"].append(f"{inside:.2f}")
        for name, cells in row.items():
            tables[name].append(f"| {kind} | {K} | {N} | " + " | ".join(cells) + " |")
        if kind == "zipf" and (K, N) in PUBLISHED:
            ours = [row["bias"][METHODS.index(m)] for m in PUBLISHED_METHODS]
            theirs = [f"{b:+.3f}" for b in PUBLISHED[K, N]]
            published_rows.append(
                f"| {K} | {N} | "
                + " | ".join(f"{a} ({b})" for a, b in zip(ours, theirs, strict=True))
                + " |"
            )
        print(f"accuracy: {kind} K={K} N={N} done", flush=True)
    lines += [
        f"Mean bias (estimate - truth, nats) over {replicates} seeded samples per row:",
        "",
        *tables["bias"],
        "",
        "RMSE (nats), same samples:",
        "",
        *tables["rmse"],
        "",
        f"Coverage of the 95% interval of `entropy_interval` over the first {covered} samples "
        f"(normal bootstrap with {n_boot} resamples; NSB: posterior mean +- 1.96 sd):",
        "",
        *tables["coverage"],
        "",
        "Zipf bias against the published table (Arora, Meister & Cotterell, ACL 2022; "
        "published value in parentheses):",
        "",
        "| K | N | plug-in | Miller-Madow | jackknife | Chao-Shen | NSB |",
        "|---|---|---|---|---|---|---|",
        *published_rows,
        "",
    ]
    return lines


def best_of(function, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _infomeasure():
    try:
        module = importlib.import_module("infomeasure.estimators.entropy")
        import infomeasure

        return module, infomeasure.__version__
    except ImportError:
        return None, None


IM_CLASSES = {
    "plugin": "DiscreteEntropyEstimator",
    "miller_madow": "MillerMadowEntropyEstimator",
    "chao_shen": "ChaoShenEntropyEstimator",
    "shrinkage": "ShrinkEntropyEstimator",
    "nsb": "NsbEntropyEstimator",
    "zhang": "ZhangEntropyEstimator",
}


def _im_row(module, method: str, row: np.ndarray) -> float:
    # Shrinkage depends on K: give it the zeros too. NSB takes K as an argument.
    nonzero = np.arange(row.size) if method == "shrinkage" else np.flatnonzero(row)
    cls = getattr(module, IM_CLASSES[method])
    kwargs = {"K": row.size} if method == "nsb" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cls.from_counts(nonzero, row[nonzero], base="e", **kwargs).result())


def _agreement(theirs, ours) -> str:
    theirs, ours = np.asarray(theirs, dtype=float), np.asarray(ours, dtype=float)
    bad = int(np.sum(~np.isfinite(theirs)))
    if bad:
        return f"infomeasure returned NaN for {bad} of {theirs.size}"
    return f"{np.max(np.abs(theirs - ours)):.1e}"


def nsb_readme(quick: bool) -> list[str]:
    """NSB where infomeasure gives a number: the ndd README counts over K = 100."""
    module, _ = _infomeasure()
    row = np.zeros(100, dtype=np.int64)
    row[:19] = [4, 12, 4, 5, 3, 1, 5, 1, 2, 2, 2, 2, 11, 3, 4, 12, 12, 1, 2]
    rows = 1000 if quick else 10_000
    batch = np.tile(row, (rows, 1))
    one = best_of(lambda: entropy(row, method="nsb"), repeat=5)
    many = best_of(lambda: entropy(batch, method="nsb"), repeat=1)
    ours = entropy(row, method="nsb")
    lines = [
        "NSB on the ndd README counts (K = 100, N = 96), where infomeasure returns a number. "
        "ndd's published value is 2.8060922529931225 (sd 0.11945501149743358).",
        "",
        f"| | value | one vector (s) | {rows:,} vectors (s) |",
        "|---|---|---|---|",
        f"| crossentropy.estimate | {ours.value:.10f} (sd {ours.std_error:.10f}) | {one:.4f} | "
        f"{many:.2f} |",
    ]
    if module is not None:
        theirs_one = best_of(lambda: _im_row(module, "nsb", row), repeat=5)
        value = _im_row(module, "nsb", row)
        lines.append(
            f"| infomeasure | {value:.10f} | {theirs_one:.4f} | {theirs_one * rows:.2f} (scaled) |"
        )
    return [*lines, ""]


def speed(quick: bool) -> list[str]:
    module, im_version = _infomeasure()
    try:
        importlib.import_module("ndd")
        ndd_note = "ndd: installed but not benchmarked here"
    except ImportError:
        ndd_note = "ndd: does not install (its build needs numpy.distutils and Fortran)"
    rng = np.random.default_rng(0)
    rows, K = (1000, 1000) if quick else (10_000, 1000)
    p = truth("zipf", K)
    batch = rng.multinomial(2000, p, size=rows)
    lines = [
        f"Batched: {rows:,} count vectors of K = {K:,} symbols (N = 2,000 each, Zipf). "
        f"Seconds for the whole batch; infomeasure {im_version} loops over rows in Python and "
        "is timed on a subset, scaled linearly (its per-row cost does not depend on the "
        "batch). Agreement: largest |ours - infomeasure| over the subset.",
        "",
        "| method | crossentropy.estimate (s) | infomeasure (s) | speed-up | agreement |",
        "|---|---|---|---|---|",
    ]
    for method in METHODS:
        ours = best_of(
            lambda m=method: entropy(batch, method=m), repeat=1 if method == "nsb" else 3
        )
        if module is not None and method in IM_CLASSES:
            subset = 50 if method == "nsb" else 200
            start = time.perf_counter()
            theirs_values = [_im_row(module, method, batch[i]) for i in range(subset)]
            theirs = (time.perf_counter() - start) * rows / subset
            ours_values = entropy(batch[:subset], method=method).value
            lines.append(
                f"| {method} | {ours:.3f} | {theirs:.1f} (scaled from {subset}) | "
                f"{theirs / ours:,.0f}x | {_agreement(theirs_values, ours_values)} |"
            )
        else:
            lines.append(f"| {method} | {ours:.3f} | n/a | | |")
        print(f"speed batched: {method} done", flush=True)
    big_K = 10**6 if quick else 10**7
    big = rng.multinomial(2 * big_K, truth("zipf", big_K))
    lines += [
        "",
        f"One count vector of K = {big_K:,} symbols (N = {2 * big_K:,}, Zipf; "
        f"{np.count_nonzero(big):,} observed): seconds.",
        "",
        "| method | crossentropy.estimate (s) | infomeasure (s) | speed-up | agreement |",
        "|---|---|---|---|---|",
    ]
    for method in METHODS:
        ours = best_of(lambda m=method: entropy(big, method=m), repeat=1 if method == "nsb" else 3)
        ours_value = entropy(big, method=method).value
        if module is not None and method in IM_CLASSES and method != "zhang":
            start = time.perf_counter()
            theirs_value = _im_row(module, method, big)
            theirs = time.perf_counter() - start
            lines.append(
                f"| {method} | {ours:.3f} | {theirs:.3f} | {theirs / ours:,.1f}x | "
                f"{_agreement([theirs_value], [ours_value])} |"
            )
        elif method == "zhang" and module is not None:
            lines.append(
                f"| {method} | {ours:.3f} | not run (its O(N^2) series needs "
                "N x N memory here) | | |"
            )
        else:
            lines.append(f"| {method} | {ours:.3f} | n/a | | |")
        print(f"speed single: {method} done", flush=True)
    return [*lines, *counting(quick), "", ndd_note, ""]


def counting(quick: bool, rounds: int = 7) -> list[str]:
    """Counting integer samples against np.bincount, interleaved rounds, medians."""
    n = 10**7 if quick else 10**8
    rng = np.random.default_rng(0)
    contenders = {
        "np.bincount": np.bincount,
        "Counts(samples)": Counts,
        "counts(samples)": counts,
    }
    lines = []
    for dtype in ("int64", "int32"):
        samples = rng.integers(0, 50_000, size=n).astype(dtype)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for function in contenders.values():  # warm-up
            function(samples)
        for _ in range(rounds):
            for name, function in contenders.items():
                start = time.perf_counter()
                function(samples)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["np.bincount"])
        lines += [
            "",
            f"Counting {n:,} {dtype} samples over 50,000 symbols "
            f"(median and minimum of {rounds} interleaved rounds after a warm-up):",
            "",
            "| | median s | min s | median vs np.bincount |",
            "|---|---|---|---|",
        ]
        for name, values in times.items():
            median = statistics.median(values)
            lines.append(f"| {name} | {median:.3f} | {min(values):.3f} | {median / base:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer replicates, smaller runs")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--counting-only", action="store_true", help="only counting against np.bincount"
    )
    args = parser.parse_args()
    lines = [
        f"Machine: {platform.machine()}, {platform.python_version()}, numpy {np.__version__}.",
        "",
    ]
    if args.counting_only:
        print("\n".join(lines + counting(args.quick)))
        return
    if not args.skip_accuracy:
        if args.quick:
            lines += accuracy(replicates=200, covered=50, n_boot=100)
        else:
            lines += accuracy(replicates=1000, covered=200, n_boot=200)
    if not args.skip_speed:
        lines += speed(args.quick)
        lines += nsb_readme(args.quick)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

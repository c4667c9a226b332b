"""Benchmark of the measures (issue 2, "Performance"): crossentropy against scipy and torch.

One run times, side by side and interleaved (every repeat runs every case once, so drift
on a shared machine hits all cases alike):

* NumPy float64, shapes (10_000, 1_000) and (100, 1_000_000), random positive rows
  normalised to 1: ``ce.entropy``, ``ce.kl_divergence`` and ``ce.cross_entropy`` with
  ``validate=True`` and ``validate=False``, against ``scipy.stats.entropy`` (one and two
  arguments), ``scipy.special.rel_entr(p, q).sum(-1)`` and
  ``-scipy.special.xlogy(p, q).sum(-1)``, and against the floor measured in the same run:
  one ``np.log(p, out=buf)`` plus one ``np.sum(p, axis=-1)`` (floor = log + sum);
* torch CPU float32, shape (10_000, 1_000): ``ce.kl_divergence(p, Logits(z))`` against
  ``F.kl_div(log_softmax(z), p, reduction="none").sum(-1)``,
  ``ce.cross_entropy(Labels(y), Logits(z))`` against ``F.cross_entropy(z, y,
  reduction="none")`` and ``ce.entropy(p)`` against ``torch.special.entr(p).sum(-1)``.

It prints markdown tables of medians (and minima) over the repeats, the ratios, the largest
difference from the reference result (so every pair computes the same thing), and
PASS/MISS lines for the issue's targets:

* entropy, validation on: at most 0.5 x ``scipy.stats.entropy(p)``;
* entropy, validation off: at most 1.5 x the floor.

Usage::

    python benchmarks/bench_measures.py            # full run (a few minutes, ~5 GB RAM)
    python benchmarks/bench_measures.py --quick    # smoke run: small shapes, 3 repeats

This is a script, not a test: it asserts nothing and always exits 0 unless it crashes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy
import scipy.special
import scipy.stats

import crossentropy as ce

FULL_NUMPY_SHAPES = ((10_000, 1_000), (100, 1_000_000))
QUICK_NUMPY_SHAPES = ((1_000, 1_000), (10, 100_000))
FULL_TORCH_SHAPE = (10_000, 1_000)
QUICK_TORCH_SHAPE = (1_000, 1_000)

ENTROPY_VS_SCIPY_TARGET = 0.5  # validate=True: at most half of scipy.stats.entropy(p)
ENTROPY_VS_FLOOR_TARGET = 1.5  # validate=False: within 1.5x of log + sum


@dataclass
class Case:
    """One timed callable; ``reference`` names the case whose result it should match."""

    key: str
    measure: str
    label: str
    fn: Callable[[], Any]
    reference: str | None = None
    times: list[float] = field(default_factory=list)
    result: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def run_interleaved(cases: list[Case], repeats: int, warmup: int) -> None:
    """Warm every case up, then time ``repeats`` rounds, each running every case once."""
    for case in cases:
        for _ in range(warmup):
            case.result = case.fn()
    for _ in range(repeats):
        for case in cases:
            start = time.perf_counter()
            case.fn()
            case.times.append(time.perf_counter() - start)


def to_float64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def max_diff(a: Any, b: Any) -> float:
    return float(np.max(np.abs(to_float64(a) - to_float64(b))))


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def random_rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Positive float64 rows normalised to sum to 1 along the last axis."""
    x = rng.random(shape)
    x += 1e-3  # strictly positive: no 0 log 0 rows, so no redo path, as for real data
    x /= x.sum(axis=-1, keepdims=True)
    return x


# ----------------------------------------------------------------------------- NumPy


def numpy_cases(p: np.ndarray, q: np.ndarray, buf: np.ndarray) -> list[Case]:
    def floor_log() -> np.ndarray:
        return np.log(p, out=buf)

    cases = [
        Case("log", "floor", "np.log(p, out=buf)", floor_log),
        Case("sum", "floor", "np.sum(p, axis=-1)", lambda: np.sum(p, axis=-1)),
    ]
    for validate in (True, False):
        cases.append(
            Case(
                f"S_ce_{validate}",
                "entropy",
                f"ce.entropy(p, validate={validate})",
                lambda v=validate: ce.entropy(p, validate=v),
                "S_scipy",
            )
        )
    cases.append(
        Case(
            "S_scipy",
            "entropy",
            "scipy.stats.entropy(p, axis=-1)",
            lambda: scipy.stats.entropy(p, axis=-1),
        )
    )
    for validate in (True, False):
        cases.append(
            Case(
                f"D_ce_{validate}",
                "KL",
                f"ce.kl_divergence(p, q, validate={validate})",
                lambda v=validate: ce.kl_divergence(p, q, validate=v),
                "D_relentr",
            )
        )
    cases.append(
        Case(
            "D_scipy",
            "KL",
            "scipy.stats.entropy(p, q, axis=-1)",
            lambda: scipy.stats.entropy(p, q, axis=-1),
            "D_relentr",
        )
    )
    cases.append(
        Case(
            "D_relentr",
            "KL",
            "scipy.special.rel_entr(p, q).sum(-1)",
            lambda: scipy.special.rel_entr(p, q).sum(-1),
        )
    )
    for validate in (True, False):
        cases.append(
            Case(
                f"H_ce_{validate}",
                "CE",
                f"ce.cross_entropy(p, q, validate={validate})",
                lambda v=validate: ce.cross_entropy(p, q, validate=v),
                "H_xlogy",
            )
        )
    cases.append(
        Case(
            "H_xlogy",
            "CE",
            "-scipy.special.xlogy(p, q).sum(-1)",
            lambda: -(scipy.special.xlogy(p, q)).sum(-1),
        )
    )
    return cases


BASELINE = {"entropy": "S_scipy", "KL": "D_relentr", "CE": "H_xlogy"}


def numpy_report(
    shape: tuple[int, ...], cases: list[Case], lines: list[str], targets: list[str]
) -> None:
    by = {c.key: c for c in cases}
    floor = by["log"].median + by["sum"].median
    lines.append(f"#### NumPy float64 {shape}")
    lines.append("")
    lines.append(
        "| measure | implementation | median ms | min ms | x scipy baseline "
        "| x floor | max abs diff vs ref |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for case in cases:
        if case.measure == "floor":
            lines.append(f"| floor | {case.label} | {ms(case.median)} | {ms(case.best)} | | | |")
            continue
        base = by[BASELINE[case.measure]]
        vs_base = "" if case is base else ratio(case.median, base.median)
        diff = (
            f"{max_diff(case.result, by[case.reference].result):.1e}" if case.reference else "(ref)"
        )
        lines.append(
            f"| {case.measure} | {case.label} | {ms(case.median)} | {ms(case.best)} "
            f"| {vs_base} | {ratio(case.median, floor)} | {diff} |"
        )
    lines.append(
        f"| floor | log + sum | {ms(floor)} | {ms(by['log'].best + by['sum'].best)} | | 1.00x | |"
    )
    lines.append("")
    lines.append(
        "x scipy baseline: entropy vs scipy.stats.entropy(p); "
        "KL vs rel_entr(p, q).sum(-1); CE vs -xlogy(p, q).sum(-1)."
    )
    lines.append("")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    s_on, s_off, s_scipy = by["S_ce_True"], by["S_ce_False"], by["S_scipy"]
    r = s_on.median / s_scipy.median
    targets.append(
        f"{verdict(r <= ENTROPY_VS_SCIPY_TARGET)} {shape} entropy validate=True: "
        f"{ms(s_on.median)} ms = {r:.2f}x scipy.stats.entropy(p) "
        f"({ms(s_scipy.median)} ms); target <= {ENTROPY_VS_SCIPY_TARGET}x"
    )
    r = s_off.median / floor
    targets.append(
        f"{verdict(r <= ENTROPY_VS_FLOOR_TARGET)} {shape} entropy validate=False: "
        f"{ms(s_off.median)} ms = {r:.2f}x floor ({ms(floor)} ms = log "
        f"{ms(by['log'].median)} + sum {ms(by['sum'].median)}); "
        f"target <= {ENTROPY_VS_FLOOR_TARGET}x"
    )
    for measure, refs in (("D", ("D_scipy", "D_relentr")), ("H", ("H_xlogy",))):
        name = "KL" if measure == "D" else "CE"
        for validate in (True, False):
            case = by[f"{measure}_ce_{validate}"]
            against = ", ".join(f"{ratio(case.median, by[k].median)} {by[k].label}" for k in refs)
            targets.append(
                f"info {shape} {name} validate={validate}: {ms(case.median)} ms = "
                f"{against}; {ratio(case.median, floor)} floor"
            )


# ----------------------------------------------------------------------------- torch


def torch_section(
    shape: tuple[int, ...], repeats: int, warmup: int, seed: int, lines: list[str]
) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    z = torch.randn(shape, dtype=torch.float32) * 3
    p = torch.softmax(torch.randn(shape, dtype=torch.float32) * 3, dim=-1)
    y = torch.randint(0, shape[-1], shape[:-1])
    cases: list[Case] = []
    for validate in (True, False):
        cases.append(
            Case(
                f"D_ce_{validate}",
                "KL",
                f"ce.kl_divergence(p, Logits(z), validate={validate})",
                lambda v=validate: ce.kl_divergence(p, ce.Logits(z), validate=v),
                "D_torch",
            )
        )
    cases.append(
        Case(
            "D_torch",
            "KL",
            "F.kl_div(F.log_softmax(z, -1), p, reduction='none').sum(-1)",
            lambda: F.kl_div(F.log_softmax(z, dim=-1), p, reduction="none").sum(-1),
        )
    )
    for validate in (True, False):
        cases.append(
            Case(
                f"H_ce_{validate}",
                "CE",
                f"ce.cross_entropy(Labels(y), Logits(z), validate={validate})",
                lambda v=validate: ce.cross_entropy(ce.Labels(y), ce.Logits(z), validate=v),
                "H_torch",
            )
        )
    cases.append(
        Case(
            "H_torch",
            "CE",
            "F.cross_entropy(z, y, reduction='none')",
            lambda: F.cross_entropy(z, y, reduction="none"),
        )
    )
    for validate in (True, False):
        cases.append(
            Case(
                f"S_ce_{validate}",
                "entropy",
                f"ce.entropy(p, validate={validate})",
                lambda v=validate: ce.entropy(p, validate=v),
                "S_torch",
            )
        )
    cases.append(
        Case(
            "S_torch",
            "entropy",
            "torch.special.entr(p).sum(-1)",
            lambda: torch.special.entr(p).sum(-1),
        )
    )
    with torch.no_grad():
        run_interleaved(cases, repeats, warmup)
    by = {c.key: c for c in cases}
    lines.append(f"#### torch CPU float32 {shape}, {torch.get_num_threads()} threads")
    lines.append("")
    lines.append(
        "| measure | implementation | median ms | min ms | x torch baseline | max abs diff vs ref |"
    )
    lines.append("|---|---|---:|---:|---:|---:|")
    for case in cases:
        base = by[{"KL": "D_torch", "CE": "H_torch", "entropy": "S_torch"}[case.measure]]
        vs_base = "" if case is base else ratio(case.median, base.median)
        diff = (
            f"{max_diff(case.result, by[case.reference].result):.1e}" if case.reference else "(ref)"
        )
        lines.append(
            f"| {case.measure} | {case.label} | {ms(case.median)} | {ms(case.best)} "
            f"| {vs_base} | {diff} |"
        )
    lines.append("")


# ----------------------------------------------------------------------------- main


def blas_threads() -> str:
    """BLAS threads, when threadpoolctl is there: np.vecdot on long rows goes to BLAS."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ""
    pools = sorted(
        {
            f"{i['internal_api']} {i['num_threads']} threads"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        }
    )
    return f", BLAS: {'; '.join(pools)}" if pools else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: NumPy (1000, 1000) and (10, 100_000), torch (1000, 1000), 3 repeats",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per case (default 7, --quick 3)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch section")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    numpy_shapes = QUICK_NUMPY_SHAPES if args.quick else FULL_NUMPY_SHAPES
    torch_shape = QUICK_TORCH_SHAPE if args.quick else FULL_TORCH_SHAPE

    lines: list[str] = []
    targets: list[str] = []
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = (
        f"Python {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}"
    )
    torch_threads = None
    if not args.no_torch:
        import torch

        # torch's own default (one thread per physical core it sees), set explicitly so the
        # number is on record; NumPy's ufuncs are single-threaded either way.
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
        versions += f", torch {torch.__version__} ({torch_threads} threads, the default)"
    versions += blas_threads()
    lines.append(
        f"Run {now}: {platform.machine()}, {os.cpu_count()} logical CPUs; {versions}; "
        f"{repeats} timed rounds per case after {args.warmup} warm-up call(s), "
        "cases interleaved; times are medians (and minima) in ms."
    )
    lines.append("")

    rng = np.random.default_rng(args.seed)
    for shape in numpy_shapes:
        p = random_rows(rng, shape)
        q = random_rows(rng, shape)
        buf = np.empty_like(p)
        cases = numpy_cases(p, q, buf)
        run_interleaved(cases, repeats, args.warmup)
        numpy_report(shape, cases, lines, targets)
        print(f"[done NumPy {shape}]", file=sys.stderr, flush=True)
        del p, q, buf, cases

    if not args.no_torch:
        torch_section(torch_shape, repeats, args.warmup, args.seed, lines)
        print(f"[done torch {torch_shape}]", file=sys.stderr, flush=True)

    lines.append("Targets (issue 2):")
    lines.append("")
    lines.extend(f"    {t}" for t in targets)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

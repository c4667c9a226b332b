"""``crossentropy demo``: the essay's argument, played on data.

Train one model twice from the same initialisation, once on the cross-entropy loss
H(P(D), P(model)) and once on the KL divergence D(P(D) || P(model)).  Because
H = D + S and the data's entropy S(D) does not depend on the model, the two losses have
the same gradient: the runs coincide to rounding, H - D is the flat line S(D), the loss
descends to S(D) and the divergence to 0.  On held-out data the loss stays above: the
data set is not the truth.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import _measures
from .._array import check_base
from .._forms import Logits
from . import _jsonio
from ._demo_data import DATASETS, DataSet, Split
from ._files import write_atomic
from ._floor import truth_entropy

_DEFAULT_STEPS = 300


def register(commands: Any) -> None:
    sub = commands.add_parser(
        "demo",
        help="watch minimising cross-entropy minimise the KL divergence (H = D + S)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    sub.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="text",
        help="text: character bigrams of a fixed text, Python 3.11's docstrings "
        "shipped with the package (default); "
        "digits: scikit-learn's digits with a teacher's soft targets",
    )
    sub.add_argument(
        "--steps",
        type=_positive_int,
        default=_DEFAULT_STEPS,
        help=f"optimisation steps (default {_DEFAULT_STEPS})",
    )
    sub.add_argument("--seed", type=int, default=0, help="seed of the initialisation")
    sub.add_argument(
        "--base",
        type=_base,
        default=None,
        help="logarithm base: e (nats, default), 2 (bits), or any finite number > 1",
    )
    sub.add_argument(
        "--out",
        type=_out_dir,
        default=Path("crossentropy-demo"),
        help="folder for demo.png and demo.json (default ./crossentropy-demo)",
    )
    sub.add_argument("--no-plot", action="store_true", help="skip the figure")
    sub.set_defaults(run=run)


def _out_dir(text: str) -> Path:
    """``--out``: a folder path; an empty one is refused (``Path("")`` would be ``.``)."""
    if text == "":
        raise argparse.ArgumentTypeError("the path is empty")
    return Path(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _base(text: str) -> float:
    from ._measures import _base as parse

    return parse(text)


# ----------------------------------------------------------------------------- training


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ValueError(
            "the demo trains with PyTorch: pip install torch==2.13.0 (CPU) first"
        ) from None
    return torch


class _Tensors:
    """A split as float64 tensors."""

    def __init__(self, torch: Any, split: Split) -> None:
        self.inputs = torch.as_tensor(split.inputs, dtype=torch.float64)
        self.targets = torch.as_tensor(split.targets, dtype=torch.float64)
        self.weights = torch.as_tensor(split.weights, dtype=torch.float64)


def _measure(split: _Tensors, logits: Any) -> dict[str, float]:
    """H, D and S of the split against the model, each from its own function."""
    q = Logits(logits)
    w = split.weights
    return {
        "cross_entropy": float(w @ _measures.cross_entropy(split.targets, q, validate=False)),
        "kl_divergence": float(w @ _measures.kl_divergence(split.targets, q, validate=False)),
        "entropy": float(w @ _measures.entropy(split.targets, validate=False)),
    }


def train(data: DataSet, *, steps: int, seed: int, progress: Any = None) -> dict[str, Any]:
    """Train twice (cross-entropy, KL) from one initialisation; the history of both, in nats."""
    torch = _import_torch()
    train_rows, held_rows = _Tensors(torch, data.train), _Tensors(torch, data.held_out)
    # The data are checked once, here; the training loop then skips the checks.
    _measures.entropy(train_rows.targets)
    _measures.entropy(held_rows.targets)

    generator = torch.Generator().manual_seed(seed)
    d, k = train_rows.inputs.shape[1], train_rows.targets.shape[1]
    init = (
        0.01 * torch.randn(d, k, generator=generator, dtype=torch.float64),
        torch.zeros(k, dtype=torch.float64),
    )
    runs = {loss: _Run(torch, init, loss) for loss in ("cross_entropy", "kl_divergence")}
    differences = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the problems are tiny: threads cost more than they give
    try:
        for step in range(steps + 1):
            for run in runs.values():
                run.record(step, train_rows, held_rows)
                if step < steps:
                    run.step(train_rows)
            differences.append(
                max(
                    float((a - b).detach().abs().max())
                    for a, b in zip(
                        runs["cross_entropy"].params, runs["kl_divergence"].params, strict=True
                    )
                )
            )
            if progress is not None:
                progress(step)
    finally:
        torch.set_num_threads(threads)
    return {
        "history": runs["cross_entropy"].history,
        "history_kl": runs["kl_divergence"].history,
        "held_out": runs["cross_entropy"].held_out,
        "max_parameter_difference": max(differences),
        "parameter_difference": differences,
    }


class _Run:
    """One training run: a softmax-regression model, Adam, and what it has recorded."""

    def __init__(self, torch: Any, init: tuple[Any, ...], loss: str) -> None:
        self.params = [p.clone().requires_grad_(True) for p in init]
        self.optimizer = torch.optim.Adam(self.params, lr=0.1)
        self.loss = {
            "cross_entropy": _measures.cross_entropy,
            "kl_divergence": _measures.kl_divergence,
        }[loss]
        self.history: list[dict[str, float]] = []
        self.held_out: list[float] = []
        self._no_grad = torch.no_grad

    def logits(self, rows: _Tensors) -> Any:
        return rows.inputs @ self.params[0] + self.params[1]

    def record(self, step: int, train_rows: _Tensors, held_rows: _Tensors) -> None:
        with self._no_grad():
            self.history.append({"step": step, **_measure(train_rows, self.logits(train_rows))})
            self.held_out.append(_measure(held_rows, self.logits(held_rows))["cross_entropy"])

    def step(self, rows: _Tensors) -> None:
        # The mean loss over every token is the row-weighted sum over the rows.
        loss = rows.weights @ self.loss(rows.targets, Logits(self.logits(rows)), validate=False)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def _in_base(result: dict[str, Any], log_base: float) -> dict[str, Any]:
    def scale(entry: dict[str, float]) -> dict[str, float]:
        return {k: (v if k == "step" else v / log_base) for k, v in entry.items()}

    return {
        **result,
        "history": [scale(e) for e in result["history"]],
        "history_kl": [scale(e) for e in result["history_kl"]],
        "held_out": [v / log_base for v in result["held_out"]],
        "entropy_truth": None
        if result.get("entropy_truth") is None
        else {
            k: (v / log_base if k in ("value", "low", "high") else v)
            for k, v in result["entropy_truth"].items()
        },
    }


# ----------------------------------------------------------------------------- output


def _unit(base: float | None) -> str:
    if base is None or base == math.e:
        return "nats"
    return "bits" if base == 2 else f"log base {base:g} units"


def report_rows(result: dict[str, Any], count: int = 7) -> list[int]:
    """A few steps to tabulate: 0, then roughly geometric, then the last."""
    last = result["history"][-1]["step"]
    steps = {0, last, *np.unique(np.geomspace(1, max(last, 1), count - 1).astype(int))}
    return sorted(s for s in steps if s <= last)


def _identity_residual(history: list[dict[str, float]]) -> float:
    return max(abs(e["cross_entropy"] - e["kl_divergence"] - e["entropy"]) for e in history)


def summary_lines(data: DataSet, result: dict[str, Any]) -> list[str]:
    unit = result["unit"]
    first, last = result["history"][0], result["history"][-1]
    s = result["entropy_data"]
    residual = max(_identity_residual(result["history"]), _identity_residual(result["history_kl"]))
    held = result["held_out"][-1]
    truth = result.get("entropy_truth")
    floor = [
        f"Data: {data.description}.",
        f"The data's entropy S(D) = {s:.4f} {unit} per {data.unit}: no model can do better "
        "on these data, so it is the floor of the loss.",
    ]
    if data.divergence is not None:
        floor.append(
            f"This is distillation: P(D) is the teacher's distribution, so S(D) is the "
            f"teacher's entropy, {s:.4f} {unit}, not 0 as for hard labels; the KL run "
            f"trains on divergence={data.divergence!r}, D(teacher || student), and "
            "H(teacher, student) = D(teacher || student) + S(teacher)."
        )
    if truth is not None:
        floor.append(
            f"S(D) is the entropy of a sample, biased low; the truth's, estimated "
            f"({truth['method']}), is {truth['value']:.4f} {unit} "
            f"(95% interval {truth['low']:.4f} to {truth['high']:.4f}): P(D) is not P(truth)."
        )
    return [
        *floor,
        f"Trained on cross-entropy, the loss fell from {first['cross_entropy']:.4f} to "
        f"{last['cross_entropy']:.4f} {unit} and the KL divergence from "
        f"{first['kl_divergence']:.4f} to {last['kl_divergence']:.2e}: the loss descends to "
        "S(D) exactly as the divergence descends to 0.",
        f"H - D - S stayed within {residual:.1e} of 0 at every step: H - D is the flat line "
        "S(D), which the model cannot move.",
        "Trained on the KL divergence instead, the parameters "
        + (
            f"never differed from the cross-entropy run by more than {difference:.1e}"
            if (difference := result["max_parameter_difference"])
            else "stayed bitwise identical to the cross-entropy run's"
        )
        + ": the two losses differ by a constant and have the same gradient. That is why "
        "cross-entropy can be the loss.",
        f"On held-out data the loss ends at {held:.4f} {unit}, {held - last['cross_entropy']:+.4f}"
        f" above the training loss: the model learned P(D), and P(D) is not P(truth).",
    ]


def _marker_steps(last: int, count: int = 24) -> np.ndarray:
    """Steps at which the KL run is drawn as markers: 0, then geometric, then the last."""
    return np.unique(np.r_[0, np.geomspace(1, max(last, 1), count).astype(int), last])


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    """Write :func:`figure` to ``path`` as a PNG."""
    fig = figure(result, title)
    write_atomic(str(path), lambda f: fig.savefig(f, dpi=100, format="png"))


def figure(result: dict[str, Any], title: str) -> Any:
    """The figure: one panel per claim of the summary (see ``summary_lines``).

    1. H of both runs, the KL run as markers on the CE run's line; 2. D of both runs (log
    scale); 3. H - D = S(D), zoomed, beside the truth's estimated interval; 4. H - D - S
    in float64 spacings at S(D); 5. held-out H against training H; 6. the two runs'
    largest parameter difference.  matplotlib's Agg canvas only, no pyplot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    unit = result["unit"]
    hist, hist_kl = result["history"], result["history_kl"]
    steps = np.array([e["step"] for e in hist])
    marks = _marker_steps(int(steps[-1]))
    s = result["entropy_data"]
    truth = result.get("entropy_truth")

    def series(history: list[dict[str, float]], key: str) -> np.ndarray:
        return np.array([e[key] for e in history])

    h, h_kl = series(hist, "cross_entropy"), series(hist_kl, "cross_entropy")
    d, d_kl = series(hist, "kl_divergence"), series(hist_kl, "kl_divergence")
    held = np.array(result["held_out"])

    fig = Figure(figsize=(15, 9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    fig.suptitle(title, fontsize=13)
    for ax in axes.flat:
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(-0.1, steps[-1] * 1.15)
        ax.set_xlabel("step")
    kl_style = {
        "linestyle": "none",
        "marker": "o",
        "markersize": 6,
        "markerfacecolor": "none",
        "markeredgecolor": "black",
        "markeredgewidth": 1.2,
    }

    # 1. The loss H of both runs: the KL run's markers sit on the CE run's line.
    ax = axes[0, 0]
    ax.plot(steps, h, color="C0", lw=2.5, label="H, run trained on H")
    ax.plot(steps[marks], h_kl[marks], **kl_style, label="H, run trained on D (markers)")
    ax.axhline(s, color="C2", lw=1.5, ls="--", label=f"S(D) = {s:.4f}: the floor")
    ax.set_ylabel(f"H(P(D), P(model)), {unit}")
    ax.set_title(
        "1. training loss H of both runs: they coincide,\nand H descends to the floor S(D)",
        fontsize=10,
    )
    ax.legend(fontsize=8)

    # 2. The divergence, on a log scale: it descends to 0.
    ax = axes[0, 1]
    positive = d > 0
    ax.plot(steps[positive], d[positive], color="C1", lw=2.5, label="D, run trained on H")
    kl_marks = marks[d_kl[marks] > 0]
    ax.plot(steps[kl_marks], d_kl[kl_marks], **kl_style, label="D, run trained on D (markers)")
    ax.set_yscale("log")
    ax.set_ylabel(f"D(P(D) || P(model)), {unit} (log scale)")
    ax.set_title(
        f"2. the divergence D of both runs descends to 0:\n{d[0]:.3g} to {d[-1]:.2e} {unit}",
        fontsize=10,
    )
    ax.legend(fontsize=8)

    # 3. H - D of both runs, zoomed: the flat line S(D), below the truth's interval.
    ax = axes[0, 2]
    ax.plot(steps, h - d, color="C2", lw=2.5, label="H - D, run trained on H")
    ax.plot(
        steps[marks], (h_kl - d_kl)[marks], **kl_style, label="H - D, run trained on D (markers)"
    )
    low = high = s
    if truth is not None:
        ax.axhspan(
            truth["low"],
            truth["high"],
            color="#cfe3f5",
            zorder=0,
            label=f"S(truth), estimated ({truth['method']}): "
            f"{100 * truth.get('level', 0.95):.0f}% interval",
        )
        ax.axhline(
            truth["value"],
            color="C0",
            lw=1.2,
            ls=":",
            label=f"S(truth) estimate {truth['value']:.4f}",
        )
        low, high = min(low, truth["low"]), max(high, truth["high"])
    pad = max(high - low, 1e-3 * max(abs(s), 1e-12)) * 0.6
    ax.set_ylim(low - pad, high + 2 * pad)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylabel(f"{unit} (zoomed)")
    ax.set_title(
        f"3. H - D = S(D) = {s:.4f} in both runs, flat: the model\n"
        + (
            "cannot move it; S(truth), estimated, lies above"
            if truth is not None
            else "cannot move it"
        ),
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper right")

    # 4. The identity's residual in units of the float64 spacing at S(D).
    ax = axes[1, 0]
    ulp = float(np.spacing(abs(s))) if s else float(np.finfo(np.float64).tiny)
    for run_hist, style, label in (
        (
            hist,
            {"marker": "o", "markerfacecolor": "none", "markeredgecolor": "C0", "ms": 7},
            "run trained on H (circles)",
        ),
        (hist_kl, {"marker": "x", "color": "black", "ms": 4}, "run trained on D (crosses)"),
    ):
        residual = (
            series(run_hist, "cross_entropy")
            - series(run_hist, "kl_divergence")
            - series(run_hist, "entropy")
        ) / ulp
        ax.plot(steps, residual, linestyle="none", label=label, **style)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"(H - D - S) / ulp(S(D)),\nulp(S(D)) = {ulp:.2g} {unit}")
    ax.set_title(
        "4. H - D - S = 0 at every step, to a few float64 spacings\n"
        "(ulp: the gap between adjacent float64 numbers at S(D))",
        fontsize=10,
    )
    ax.legend(fontsize=8)

    # 5. The held-out loss stays above the training loss.
    ax = axes[1, 1]
    ax.plot(steps, held, color="C3", lw=2.5, label=f"held-out H, ends at {held[-1]:.4f}")
    ax.plot(steps, h, color="C0", lw=2.5, label=f"training H, ends at {h[-1]:.4f}")
    ax.axhline(s, color="C2", lw=1.5, ls="--", label="S(D), the training data's entropy")
    if truth is not None:
        ax.axhspan(
            truth["low"],
            truth["high"],
            color="#cfe3f5",
            zorder=0,
            label="S(truth), estimated: interval",
        )
    ax.annotate(
        f"{held[-1] - h[-1]:+.4f}",
        xy=(steps[-1], (held[-1] + h[-1]) / 2),
        xytext=(-12, 0),
        textcoords="offset points",
        ha="right",
        va="center",
        fontsize=9,
        color="C3",
    )
    ax.annotate(
        "",
        xy=(steps[-1], held[-1]),
        xytext=(steps[-1], h[-1]),
        arrowprops={"arrowstyle": "<->", "color": "C3", "lw": 1.2},
    )
    # Zoomed so the final gap is a visible share of the axis, with the descent above.
    bottom = min(s, h.min(), truth["low"] if truth is not None else s)
    top = min(float(held.max()), held[-1] + 5 * (held[-1] - bottom))
    ax.set_ylim(bottom - 0.15 * (top - bottom), top)
    ax.set_ylabel(f"H, {unit} (zoomed)")
    ax.set_title(
        "5. on held-out data the loss stays above the training loss:\nP(D) is not P(truth)",
        fontsize=10,
    )
    ax.legend(fontsize=8)

    # 6. The parameters of the two runs.
    ax = axes[1, 2]
    diff = np.array(result["parameter_difference"])
    if diff.max() > 0:
        ax.plot(
            steps,
            np.where(diff > 0, diff, np.nan),
            color="black",
            marker=".",
            label="max |parameter (H run) - parameter (D run)|",
        )
        ax.set_yscale("log")
        ax.set_title(
            f"6. the two runs' parameters differ by at most {diff.max():.1e}:\nthe same gradient",
            fontsize=10,
        )
    else:
        ax.plot(
            steps, diff, color="black", lw=2, label="max |parameter (H run) - parameter (D run)|"
        )
        ax.set_ylim(-1, 1)
        ax.text(
            0.5,
            0.65,
            "0 at every step:\nthe runs are bitwise identical",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=12,
        )
        ax.set_title(
            "6. training on D gives the parameters training on H gives:\nthe same gradient",
            fontsize=10,
        )
    ax.set_ylabel("largest parameter difference")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def prepare_out(out: Path, names: list[str]) -> None:
    """Make the output folder and check that ``names`` can be written in it, before any
    training: a bad ``--out`` fails in a second, not after the run.

    The CLI's generic check (``_files.check_output_dir``) runs first where it exists.
    """
    from . import _files

    generic = getattr(_files, "check_output_dir", None)
    if generic is not None:
        generic(str(out), "--out", tuple(names))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"--out {str(out)!r}: cannot make the directory: {error.strerror or error}"
        ) from None
    for name in names:
        if (out / name).is_dir():
            raise ValueError(f"--out {str(out)!r}: {name!r} there is a directory")
    # A real write, not os.access: that says yes to root and on read-only mounts.
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(
            f"--out {str(out)!r}: cannot write to the directory: {error.strerror or error}"
        ) from None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    log_base = check_base(args.base) or 1.0
    console = Console()
    started = time.perf_counter()
    out: Path = args.out
    prepare_out(out, ["demo.json"] + ([] if args.no_plot else ["demo.png"]))
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ValueError(
                "the figure needs matplotlib: pip install 'crossentropy[cli]', or pass --no-plot"
            ) from None
    data = DATASETS[args.dataset]()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("training twice (on H and on D)", total=args.steps + 1)
        result = train(
            data,
            steps=args.steps,
            seed=args.seed,
            progress=lambda step: bar.update(task, completed=step + 1),
        )
    counts = data.train.counts
    result["entropy_truth"] = None if counts is None else truth_entropy(counts, seed=args.seed)
    result = _in_base(result, log_base)
    result = {
        "dataset": data.name,
        "divergence": data.divergence,
        "base": args.base if args.base is not None else math.e,
        "unit": _unit(args.base),
        "steps": args.steps,
        "seed": args.seed,
        "entropy_data": result["history"][0]["entropy"],
        **result,
    }

    table = Table(title=f"crossentropy demo: {data.name}, in {result['unit']} per {data.unit}")
    for column in (
        "step",
        "H (CE run)",
        "D (CE run)",
        "S(D)",
        "H - D - S",
        "H (KL run)",
        "held-out H",
    ):
        table.add_column(column, justify="right")
    for step in report_rows(result):
        e, k = result["history"][step], result["history_kl"][step]
        residual = e["cross_entropy"] - e["kl_divergence"] - e["entropy"]
        table.add_row(
            str(step),
            f"{e['cross_entropy']:.4f}",
            f"{e['kl_divergence']:.4f}",
            f"{e['entropy']:.4f}",
            f"{residual:.1e}",
            f"{k['cross_entropy']:.4f}",
            f"{result['held_out'][step]:.4f}",
        )
    console.print(table)
    for line in summary_lines(data, result):
        console.print(line)

    text = _jsonio.dumps(result, indent=1) + "\n"
    write_atomic(str(out / "demo.json"), lambda f: f.write(text.encode("utf-8")))
    written = [out / "demo.json"]
    if not args.no_plot:
        plot(result, out / "demo.png", f"{data.name}: minimising H minimises D; S(D) is fixed")
        written.append(out / "demo.png")
    console.print(f"Wrote {', '.join(map(str, written))} in {time.perf_counter() - started:.1f} s.")
    return 0

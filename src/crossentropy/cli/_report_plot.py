"""The report's figure: a reliability diagram and the loss split into its parts.

matplotlib is imported here only, and only its Agg canvas: no pyplot, no global backend.
"""

from __future__ import annotations

import math
from typing import IO, Any


def save_plot(report: dict[str, Any], file: IO[bytes]) -> None:
    """Write the PNG for a finished ``report`` (the JSON object) to ``file``."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'crossentropy[cli]'") from None

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.5))
    _reliability(left, report)
    _split(right, report)
    fig.suptitle(f"crossentropy report: {report['n']:,} rows, {report['num_classes']} classes")
    fig.savefig(file, format="png", dpi=110)


def _reliability(ax: Any, report: dict[str, Any]) -> None:
    bins = report["reliability"]
    width = 1.0 / len(bins)
    centres = [b["lower"] + width / 2 for b in bins if b["count"]]
    accuracy = [b["accuracy"] for b in bins if b["count"]]
    confidence = [b["confidence"] for b in bins if b["count"]]
    ax.bar(centres, accuracy, width=width, color="#4c72b0", edgecolor="white",
           label="accuracy")
    ax.bar(centres, [c - a for a, c in zip(accuracy, confidence, strict=True)],
           bottom=accuracy, width=width, color="#dd8452", alpha=0.45, edgecolor="#dd8452",
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="black", linewidth=1, linestyle="--", label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability: ECE = {report['ece']:.4f}, accuracy = {report['accuracy']:.4f}")
    ax.legend(loc="upper left", fontsize=8)


def _split(ax: Any, report: dict[str, Any]) -> None:
    unit = report["unit"]
    total = report["cross_entropy"]
    ax.set_yticks([])
    ax.set_xlabel(f"loss ({unit} per example)")
    if not math.isfinite(total):
        ax.set_title(f"Cross-entropy H = {total} {unit}")
        ax.text(0.5, 0.5, f"The loss is infinite: {report['infinite_loss_rows']} rows give\n"
                "their label probability 0.", ha="center", va="center",
                transform=ax.transAxes)
        return
    entropy = report["entropy"]
    miscal = report.get("miscalibration") or 0.0
    rest = total - entropy - miscal
    parts = [
        (entropy, "#55a868", f"S(D) irreducible {entropy:.4g}"),
        (miscal, "#dd8452", f"miscalibration {miscal:.4g} (T = {report['temperature']:.3g})"),
        (max(rest, 0.0), "#c44e52", f"rest of D(P(D)||model) {rest:.4g}"),
    ]
    left = 0.0
    for value, colour, label in parts:
        ax.barh([0], [value], left=left, color=colour, label=label, height=0.5)
        left += value
    baseline = report["label_entropy"]
    ax.axvline(baseline, color="black", linestyle=":", linewidth=1.2,
               label=f"best constant prediction {baseline:.4g}")
    ax.set_xlim(0, max(total, baseline, 1e-12) * 1.08)
    ax.set_ylim(-0.6, 1.2)
    ax.set_title(f"Cross-entropy H = {total:.4g} {unit} = S(D) + KL")
    ax.legend(loc="upper center", ncols=2, fontsize=8, frameon=False)

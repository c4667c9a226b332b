"""The report's figure: a reliability diagram and the loss split into its parts.

matplotlib is imported here only, and only its Agg canvas: no pyplot, no global backend.
Every colour drawn is opaque and named in a legend.
"""

from __future__ import annotations

import math
from typing import IO, Any

ACCURACY = "#4c72b0"
OVER = "#dd8452"  # confidence above accuracy
UNDER = "#8fbcd9"  # accuracy above confidence
ENTROPY = "#55a868"
MISCALIBRATION = "#dd8452"
REST = "#c44e52"
LOSS = "#4c72b0"


def save_plot(report: dict[str, Any], file: IO[bytes], format: str = "png") -> None:
    """Write the figure for a finished ``report`` (the JSON object) to ``file``.

    ``format`` is matplotlib's: png, pdf, svg, ...
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'crossentropy[cli]'") from None

    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.4))
    _reliability(left, report)
    _split(right, report)
    fig.suptitle(f"crossentropy report: {report['n']:,} rows, {report['num_classes']} classes")
    fig.savefig(file, format=format, dpi=110)


def _reliability(ax: Any, report: dict[str, Any]) -> None:
    bins = [b for b in report["reliability"] if b["count"]]
    width = 1.0 / len(report["reliability"])
    centres = [b["lower"] + width / 2 for b in bins]
    accuracy = [b["accuracy"] for b in bins]
    confidence = [b["confidence"] for b in bins]
    ax.bar(
        centres,
        accuracy,
        width=width,
        color=ACCURACY,
        edgecolor="white",
        label="accuracy in the bin",
    )
    # The gap between accuracy and confidence, opaque: above the accuracy bar where the
    # model is overconfident, over the top of it where it is underconfident.
    for over, colour, label in (
        (True, OVER, "gap: overconfident (confidence > accuracy)"),
        (False, UNDER, "gap: underconfident (accuracy > confidence)"),
    ):
        chosen = [
            (x, a, c)
            for x, a, c in zip(centres, accuracy, confidence, strict=True)
            if (c > a) == over and c != a
        ]
        if chosen:
            ax.bar(
                [x for x, _, _ in chosen],
                [abs(c - a) for _, a, c in chosen],
                bottom=[min(a, c) for _, a, c in chosen],
                width=width,
                color=colour,
                edgecolor="white",
                label=label,
            )
    ax.plot(
        centres,
        confidence,
        linestyle="none",
        marker="_",
        markersize=12,
        markeredgewidth=2,
        color="black",
        label="mean confidence in the bin",
    )
    ax.plot(
        [0, 1],
        [0, 1],
        color="black",
        linewidth=1,
        linestyle="--",
        label="calibrated: accuracy = confidence",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability), 15 bins")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability: ECE = {report['ece']:.4f}, accuracy = {report['accuracy']:.4f}")
    ax.legend(loc="upper left", fontsize=8)


def _split(ax: Any, report: dict[str, Any]) -> None:
    unit = report["unit"]
    total = report["cross_entropy"]
    ax.set_xlabel(f"loss ({unit} per example)")
    if not math.isfinite(total):
        ax.set_yticks([])
        ax.set_title(f"Cross-entropy H = {total} {unit}")
        ax.text(
            0.5,
            0.5,
            f"The loss is infinite: {report['infinite_loss_rows']} rows give\n"
            "their label probability 0.",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        return
    entropy = report["entropy"]
    miscal = report.get("miscalibration") or 0.0
    excess = report.get("excess_over_data_entropy", total - entropy)
    vary = bool(report.get("predictions_vary_within_groups"))
    temperature = report.get("temperature")
    t_text = f" (T = {temperature:.3g})" if temperature is not None else ""
    if not vary:
        rest = total - entropy - miscal
        parts = [
            (entropy, ENTROPY, f"S(D), irreducible: {entropy:.4g}"),
            (miscal, MISCALIBRATION, f"miscalibration{t_text}: {miscal:.4g}"),
            (max(rest, 0.0), REST, f"rest of D(P(D) || model): {rest:.4g}"),
        ]
        start = 0.0
        for value, colour, label in parts:
            ax.barh([0], [value], left=start, color=colour, label=label, height=0.5)
            start += value
        ax.set_yticks([0], ["H"])
        ax.set_title(
            f"H = {total:.4g} {unit} = S(D) + D(P(D) || model), D = {report['kl_divergence']:.4g}"
        )
    else:
        # H - S(D) is no divergence here: H and S(D) side by side, not stacked.
        ax.barh(
            [1],
            [total - miscal],
            color=LOSS,
            height=0.5,
            label=f"H at the fitted temperature{t_text}: {total - miscal:.4g}",
        )
        ax.barh(
            [1],
            [miscal],
            left=total - miscal,
            color=MISCALIBRATION,
            height=0.5,
            label=f"miscalibration: {miscal:.4g}",
        )
        ax.barh(
            [0],
            [entropy],
            color=ENTROPY,
            height=0.5,
            label=f"S(D), the labels' entropy given the group: {entropy:.4g}",
        )
        ax.set_yticks([1, 0], ["H", "S(D)"])
        ax.set_title(
            f"H - S(D) = {excess:.4g} {unit}: NOT a KL divergence\n"
            "(the predictions vary within a group)",
            fontsize=11,
        )
    baseline = report["label_entropy"]
    ax.axvline(
        baseline,
        color="black",
        linestyle=":",
        linewidth=1.2,
        label=f"best constant prediction: {baseline:.4g}",
    )
    ax.set_xlim(0, max(total, entropy, baseline, 1e-12) * 1.08)
    ax.set_ylim(-0.6, 1.6 if vary else 1.2)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2, fontsize=8, frameon=False)

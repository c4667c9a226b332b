"""``crossentropy report``: split a model's loss on real predictions into its parts.

Usage::

    crossentropy report PATH [--label COL] [--form probs|logits|log_probs] [--group COL]
        [--classes A,B,...] [--base 2] [--json OUT|-] [--plot OUT.png]
        [--batch-size ROWS] [--tolerance TOL]

The input (CSV, TSV, Parquet or .npz; layouts in ``_report_read``) has one row per
example: a label and the model's probabilities, logits or log-probabilities, one column
per class.  With ``--group COL`` rows sharing a group are the same input, and the labels
seen for an input give the data's conditional entropy S(D) = H_D(label | input): the part
of the loss no model can remove.  Then

    cross_entropy = entropy + kl_divergence                 H = S(D) + D(P(D) || model)
    kl_divergence = miscalibration + rest                   miscalibration: what a single
                                                            temperature removes

The first line holds only when the model's prediction is a function of the group (one
input, one prediction); see below for when it is not.

Memory is bounded, whatever the number of rows n.  It holds, besides the interpreter and
its libraries (about 150 MiB):

* one batch of ``--batch-size`` rows (default ``max(64, 2**21 // K)``: about 2 million
  values, 8 MiB as float32) with a few temporaries of its size and some per-row vectors;
* the reader's buffers.  Parquet: a 256 KiB read buffer and about two pages per column,
  never a whole row group (pyarrow's default would load a row group's column chunks
  at once); CSV: one block of about 10 bytes per value of a batch; .npz: one block per
  array (an array saved in Fortran order is the exception: it is read whole);
* the temperature sample: at most ``max(1024, 2**23 // K)`` rows of K values (2**23
  values: 32 MiB as float32, 64 MiB as float64), and about 3 times that while fitting;
* O(K) per-class and 15 per-bin counters;
* with ``--group`` only: the counts of the distinct (group, label) pairs, and per group
  the range of two random projections of the prediction (4 floats), which grow with the
  number of distinct inputs, not with n.

For 10 million rows x 100 float32 classes in Parquet (1M-row row groups) that is
20,971-row batches and an 83,886-row sample; the measured peak resident memory is about
0.6 GiB (benchmarks/RESULTS.md) and does not grow with n.

If the predictions for rows of one group differ (beyond ``--tolerance``, compared through
two fixed random projections of each row's probabilities), the model uses information
beyond the group: H - S(D) is then no divergence and can be negative.  The report then
says so on stderr, sets ``kl_divergence`` to null (JSON) and shows H - S(D) under its
own name, ``excess_over_data_entropy``, which it always reports.  When the predictions
are a function of the group, ``kl_divergence`` = H - S(D), a value below 0 only by
rounding being shown as 0.

The temperature T minimises the mean of ``-log softmax(log q / T)[label]``.  It is fitted
exactly on all rows when they fit the sample, otherwise on a uniform random sample
(reservoir sampling, fixed seed) of ``max(1024, 2**23 // K)`` rows; the loss reduction
measured on the sample is subtracted from the exact loss to give
``cross_entropy_calibrated``.  Rows whose label has probability 0 (loss +inf at every
temperature) are left out of the fit; the report then shows the loss as +inf.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import numpy as np

from . import _jsonio
from ._files import check_output, plot_format, write_output
from ._measures import BASE_HELP, _base
from ._report_read import LabelMap, default_batch_rows, open_source
from ._report_stats import DEFAULT_TOLERANCE, Accumulator

_NATS_KEYS = (
    "cross_entropy",
    "entropy",
    "kl_divergence",
    "excess_over_data_entropy",
    "label_entropy",
    "information_gain",
    "cross_entropy_calibrated",
    "miscalibration",
)
VARY_WARNING = (
    "the model's predictions vary within a group: it uses information beyond "
    "the group, so H - S(D) is not a KL divergence"
)
_PER_CLASS_SHOWN = 20


def register(commands: Any) -> None:
    """Add the ``report`` subcommand."""
    summary = "split a model's loss on your predictions: H = S(D) + KL, calibration, classes"
    sub = commands.add_parser(
        "report",
        help=summary,
        description=summary + ". " + _LAYOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("path", help="predictions: .csv, .tsv, .parquet or .npz")
    sub.add_argument(
        "--label", default="label", metavar="COL", help="the label column (default: label)"
    )
    sub.add_argument(
        "--form",
        type=_form,
        default=None,
        metavar="{probs,logits,log_probs}",
        help="what the class columns hold (default: probs; for .npz the name of the array)",
    )
    sub.add_argument(
        "--group",
        default=None,
        metavar="COL",
        help="a column identifying the input: repeated inputs with different "
        "labels give the data's entropy S(D)",
    )
    sub.add_argument(
        "--classes",
        default=None,
        metavar="A,B,...",
        type=_names,
        help="the class columns, in order (default: every other column); for .npz, the class names",
    )
    sub.add_argument(
        "--base",
        type=_base,
        default=None,
        help=BASE_HELP,
    )
    sub.add_argument(
        "--json",
        default=None,
        metavar="OUT",
        help="write the report as JSON (- for standard output, without the table)",
    )
    sub.add_argument(
        "--plot",
        default=None,
        metavar="OUT.png",
        help="write the figure: reliability diagram and the loss split, in the format of "
        "the suffix (.png, .pdf, .svg, ...; no suffix: PNG)",
    )
    sub.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="ROWS",
        help="rows per batch (default: about 2 million values per batch)",
    )
    sub.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="TOL",
        help=f"how far from 1 a row of probabilities may sum (default {DEFAULT_TOLERANCE:.2g})",
    )
    sub.set_defaults(run=run)


_LAYOUT = """
Input: one row per example, a label column and one column per class (named by the
class) with the model's probabilities, logits or log-probabilities; pandas' index
columns are skipped.  .npz: arrays 'label' (n,), optional 'group' (n,), and either one
(n,) array per class, named by the class, or one of 'probs' / 'logits' / 'log_probs'
(n, K) with optional 'classes' (K,) (without it the labels are class indices 0..K-1)."""


def _form(text: str) -> str:
    form = text.strip().lower().replace("-", "_")
    if form not in ("probs", "logits", "log_probs"):
        raise argparse.ArgumentTypeError(f"must be probs, logits or log_probs; got {text!r}")
    return form


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"an empty class name in {text!r}")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def _check_outputs(path: str, outputs: dict[str, str | None]) -> None:
    """Refuse outputs that would overwrite the input or each other, before any work."""
    # "--json -" is standard output, not a file.
    given = {
        flag: out
        for flag, out in outputs.items()
        if out is not None and not (flag == "--json" and out == "-")
    }
    real_in = os.path.realpath(path)
    for flag, out in given.items():
        same = os.path.realpath(out) == real_in
        if not same and os.path.exists(out) and os.path.exists(path):
            same = os.path.samefile(out, path)
        if same:
            raise ValueError(f"{flag} {out!r} is the input file; refusing to overwrite it")
        if flag == "--plot":
            plot_format(out)
        check_output(out, flag)
    if len({os.path.realpath(o) for o in given.values()}) < len(given):
        raise ValueError("--json and --plot name the same file")


def _progress(total: int | None) -> Any:
    """A rich progress bar on stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        return None
    return Progress(
        TextColumn("reading rows"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def compute(args: argparse.Namespace) -> dict[str, Any]:
    """Read the input and return the report (the JSON object)."""
    base = args.base
    if base is not None and (not math.isfinite(base) or base <= 0 or base == 1):
        raise ValueError(f"--base must be a positive number other than 1; got {base:g}")
    if not (args.tolerance >= 0):
        raise ValueError(f"--tolerance must be >= 0; got {args.tolerance}")
    _check_outputs(args.path, {"--json": args.json, "--plot": args.plot})
    source = open_source(
        args.path, label=args.label, group=args.group, form=args.form, classes=args.classes
    )
    k = len(source.class_names)
    rows = args.batch_size or default_batch_rows(k)
    acc = Accumulator(
        k, source.form, source.dtype, tolerance=args.tolerance, line_offset=source.line_offset
    )
    labels = LabelMap(source.class_names, source.line_offset)
    start = time.perf_counter()
    progress = _progress(source.num_rows)
    task = progress.add_task("read", total=source.num_rows) if progress else None
    try:
        if progress:
            progress.start()
        for values, raw_labels, raw_groups in source.batches(rows):
            try:
                acc.update(values, labels(raw_labels, acc.n), raw_groups, source.class_names)
            except ValueError as error:
                raise _with_columns_hint(error, args, source) from None
            if progress:
                progress.update(task, completed=acc.n)
    finally:
        if progress:
            progress.stop()
    if acc.n == 0:
        raise ValueError(f"{args.path!r} has no rows")
    read_s = time.perf_counter() - start
    stats = acc.result()
    seconds = time.perf_counter() - start
    return _assemble(args, source, stats, base, seconds, read_s)


def _with_columns_hint(error: ValueError, args: argparse.Namespace, source: Any) -> ValueError:
    """A row that does not sum to 1 may be a column that is not a class: say which were used."""
    if args.classes is not None or " sum to " not in str(error) or source.format == "npz":
        return error
    names = source.class_names
    shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
    return ValueError(
        f"{error}; the class columns were taken to be every column but the "
        f"label and group ({shown}): name them with --classes"
    )


def _assemble(
    args: argparse.Namespace,
    source: Any,
    stats: dict[str, Any],
    base: float | None,
    seconds: float,
    read_s: float,
) -> dict[str, Any]:
    scale = 1.0 if base is None else math.log(base)
    unit = "nats" if base is None else ("bits" if base == 2 else f"base {base:g}")
    report: dict[str, Any] = {
        "input": args.path,
        "format": source.format,
        "form": source.form,
        "n": stats["n"],
        "num_classes": stats["num_classes"],
        "num_groups": stats["num_groups"],
        "base": math.e if base is None else base,
        "unit": unit,
    }
    for key in (
        "cross_entropy",
        "entropy",
        "kl_divergence",
        "excess_over_data_entropy",
        "label_entropy",
        "information_gain",
        "perplexity",
        "accuracy",
        "ece",
        "temperature",
        "cross_entropy_calibrated",
        "miscalibration",
    ):
        if stats[key] is None:
            report[key] = None
            continue
        value = float(stats[key])
        report[key] = value / scale if key in _NATS_KEYS else value
    report["predictions_vary_within_groups"] = bool(stats["predictions_vary_within_groups"])
    truth = stats["entropy_truth"]
    report["entropy_truth"] = (
        None
        if truth is None
        else {k: (v / scale if k in ("value", "low", "high") else v) for k, v in truth.items()}
    )
    report.update(
        temperature_exact=bool(stats["temperature_exact"]),
        temperature_rows=int(stats["temperature_rows"]),
        infinite_loss_rows=int(stats["infinite_loss_rows"]),
    )
    report["per_class"] = [
        {
            "class": name,
            "count": int(count),
            "mean_loss": float(mean) / scale if count else None,
            "share": float(share) if math.isfinite(share) else None,
        }
        for name, count, mean, share in zip(
            source.class_names,
            stats["class_count"],
            stats["class_mean_loss"],
            stats["class_share"],
            strict=True,
        )
    ]
    report["reliability"] = [
        {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in b.items()}
        for b in stats["reliability"]
    ]
    report["seconds"] = round(seconds, 3)
    report["rows_per_second"] = round(stats["n"] / read_s) if read_s > 0 else None
    return report


def run(args: argparse.Namespace) -> int:
    report = compute(args)
    if report["predictions_vary_within_groups"]:
        print(f"crossentropy report: warning: {VARY_WARNING}", file=sys.stderr)
    text = _jsonio.dumps(report, indent=2) + "\n" if args.json is not None else ""
    if args.json == "-":
        sys.stdout.write(text)  # stdout is the JSON alone, for pipes: no table
    else:
        _print(report)
        if args.json is not None:
            write_output(args.json, lambda f: f.write(text.encode("utf-8")), "--json")
    if args.plot:
        from ._report_plot import save_plot

        fmt = plot_format(args.plot)
        write_output(args.plot, lambda f: save_plot(report, f, fmt), "--plot")
    return 0


def _fmt(value: Any, digits: int = 6) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "+inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    u = r["unit"]
    fit = (
        f"exact, all {r['temperature_rows']:,} rows"
        if r["temperature_exact"]
        else f"on a random sample of {r['temperature_rows']:,} rows"
    )
    return [
        ("cross-entropy H", f"{_fmt(r['cross_entropy'])} {u}", "the loss: mean -log q(label)"),
        (
            "  entropy S(D)",
            f"{_fmt(r['entropy'])} {u}",
            "irreducible: the labels' entropy given the input"
            + ("" if r["num_groups"] else " (0: every input unique)"),
        ),
        *_truth_row(r),
        *_excess_row(r),
        (
            "    miscalibration",
            f"{_fmt(r['miscalibration'])} {u}",
            "what the best single temperature removes",
        ),
        (
            "label entropy",
            f"{_fmt(r['label_entropy'])} {u}",
            "loss of the best constant prediction",
        ),
        ("information gain", f"{_fmt(r['information_gain'])} {u}", "label entropy - H"),
        ("perplexity", _fmt(r["perplexity"]), "exp(H in nats)"),
        ("accuracy", _fmt(r["accuracy"]), "top-1"),
        ("ECE", _fmt(r["ece"]), "15 bins, top label"),
        ("temperature T", _fmt(r["temperature"], 4), f"fitted {fit}"),
        ("H calibrated", f"{_fmt(r['cross_entropy_calibrated'])} {u}", "the loss at T"),
    ]


def _excess_row(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    value = f"{_fmt(r['excess_over_data_entropy'])} {r['unit']}"
    if r["predictions_vary_within_groups"]:
        return [("  H - S(D)", value, "NOT a KL divergence: the predictions vary within a group")]
    return [
        (
            "  KL divergence",
            f"{_fmt(r['kl_divergence'])} {r['unit']}",
            "reducible: H - S(D) = D(P(D) || model)",
        )
    ]


def _truth_row(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    t = r["entropy_truth"]
    if t is None:
        return []
    return [
        (
            "    S(truth), est.",
            f"{_fmt(t['value'])} {r['unit']}",
            f"bias-corrected ({t['method']}), {100 * t['level']:.0f}% interval "
            f"{_fmt(t['low'], 4)} to {_fmt(t['high'], 4)}: S(D) is a sample's",
        )
    ]


def _per_class(r: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    classes = r["per_class"]
    if len(classes) <= _PER_CLASS_SHOWN:
        return classes, 0
    ranked = sorted(
        classes,
        key=lambda c: -(c["share"] if c["share"] is not None else (math.inf if c["count"] else -1)),
    )
    return ranked[:_PER_CLASS_SHOWN], len(classes) - _PER_CLASS_SHOWN


def _print(r: dict[str, Any]) -> None:
    head = (
        f"{r['n']:,} rows, {r['num_classes']} classes"
        + (f", {r['num_groups']:,} groups" if r["num_groups"] else "")
        + f" ({r['form']}, {r['format']}); {r['seconds']:.2f} s"
        + (f", {r['rows_per_second']:,} rows/s" if r["rows_per_second"] else "")
    )
    shown, hidden = _per_class(r)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(head)
        for name, value, note in _rows(r):
            print(f"{name:<20} {value:<24} {note}")
        for c in shown:
            print(
                f"class {c['class']!s:<14} {c['count']:>10,} {_fmt(c['mean_loss']):>12} "
                f"{_fmt(c['share'], 4):>8}"
            )
        return
    console = Console(highlight=False)
    table = Table(title=f"crossentropy report: {r['input']}", caption=head, title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("meaning", style="dim")
    for row in _rows(r):
        table.add_row(*row)
    console.print(table)
    classes = Table(
        title="per class"
        + (
            f" (the {len(shown)} with the largest share of the loss; {hidden} more in --json)"
            if hidden
            else ""
        ),
        title_justify="left",
    )
    classes.add_column("class")
    classes.add_column("count", justify="right")
    classes.add_column(f"mean loss ({r['unit']})", justify="right")
    classes.add_column("share of loss", justify="right")
    for c in shown:
        share = "-" if c["share"] is None else f"{100 * c['share']:.2f}%"
        classes.add_row(str(c["class"]), f"{c['count']:,}", _fmt(c["mean_loss"]), share)
    console.print(classes)

"""The report's arithmetic: one streaming pass, a reservoir sample, the temperature fit.

Everything here works on batches of NumPy arrays and keeps state whose size does not
depend on the number of rows, except the (group, label) counts behind S(D), which grow
with the number of distinct (group, label) pairs.  All quantities are in nats; the caller
converts to another base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._floor import MAX_CONTEXTS, truth_entropy

FORMS = ("probs", "logits", "log_probs")
ECE_BINS = 15
# The temperature is fitted exactly when the (finite-loss) rows fit in this many values
# (rows x classes), otherwise on a uniform reservoir sample of that many values.
SAMPLE_VALUES = 2**23
SAMPLE_MIN_ROWS = 1024
# Temperatures are searched in [1/100, 100].
BETA_BOUNDS = (1e-2, 1e2)
# Probability rows must sum to 1 within this (sklearn's float32 check); --tolerance.
DEFAULT_TOLERANCE = math.sqrt(float(np.finfo(np.float32).eps))
# Values per chunk of a batch in the single pass (1 MiB of float32: cache-sized).
CHUNK_VALUES = 2**18
# With groups, each row's prediction q is summarised by PROJECTIONS fixed random
# projections q . r (r uniform in [1, 2]; then every projection lies in [1, 2]); a
# group's predictions differ when a projection's range within the group exceeds
# max(tolerance, PROJECTION_ULPS * eps of the values' dtype).
PROJECTIONS = 2
PROJECTION_ULPS = 64


def sample_rows(num_classes: int) -> int:
    """Rows the temperature sample holds for ``num_classes`` classes."""
    return max(SAMPLE_MIN_ROWS, SAMPLE_VALUES // max(num_classes, 1))


def _row_text(row: int, line_offset: int | None) -> str:
    if line_offset is None:
        return f"row {row}"
    return f"row {row} (line {row + line_offset})"


class Reservoir:
    """A uniform random sample of at most ``capacity`` rows (Vitter's algorithm R).

    Row ``t`` (counting offered rows from 0) replaces slot ``j ~ U{0..t}`` when
    ``j < capacity``; processed in order, that is algorithm R exactly, so every subset of
    ``capacity`` rows is equally likely.  The seed is fixed: reports are reproducible.
    """

    def __init__(self, capacity: int, num_classes: int, dtype: Any, seed: int = 0) -> None:
        self.capacity = capacity
        self.values = np.empty((0, num_classes), dtype=dtype)
        self.labels = np.empty(0, dtype=np.int64)
        self._num_classes = num_classes
        self._dtype = dtype
        self.seen = 0
        self._filled = 0
        self._rng = np.random.default_rng(seed)

    @property
    def exact(self) -> bool:
        """True while the sample is every row offered."""
        return self.seen <= self.capacity

    def offer(self, values: np.ndarray, labels: np.ndarray) -> None:
        count = values.shape[0]
        if count == 0:
            return
        filled = self._filled
        take = min(self.capacity - filled, count)
        if take > 0:
            if filled == 0:
                self.values = np.empty((self.capacity, self._num_classes), dtype=self._dtype)
                self.labels = np.empty(self.capacity, dtype=np.int64)
            self.values[self._filled : self._filled + take] = values[:take]
            self.labels[self._filled : self._filled + take] = labels[:take]
            self._filled += take
        rest = count - take
        if rest > 0:
            t = self.seen + take + np.arange(rest, dtype=np.int64)
            slots = (self._rng.random(rest) * (t + 1)).astype(np.int64)
            keep = np.flatnonzero(slots < self.capacity)
            if keep.size:
                # The last row to land in a slot wins, as in the sequential algorithm.
                rev_slots = slots[keep][::-1]
                unique_slots, first = np.unique(rev_slots, return_index=True)
                rows = take + keep[::-1][first]
                self.values[unique_slots] = values[rows]
                self.labels[unique_slots] = labels[rows]
        self.seen += count

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        return self.values[: self._filled], self.labels[: self._filled]


@dataclass
class TemperatureFit:
    temperature: float
    loss_before: float  # mean loss on the fitted rows at T = 1, nats
    loss_after: float  # at the fitted temperature
    rows: int
    iterations: int


def _scores(values: np.ndarray, form: str) -> np.ndarray:
    """Row-centred scores z with softmax(z) = the model's distribution, max(z) = 0."""
    if form == "probs":
        with np.errstate(divide="ignore"):
            z = np.log(values)
    else:
        z = np.array(values, copy=True)
    z -= z.max(axis=1, keepdims=True)
    # -inf marks a class with probability 0.  A large finite stand-in keeps exp(beta z)
    # exactly 0 for every beta in the bounds while z * exp(beta z) stays 0, not NaN, and
    # z**2 stays finite in float32.
    np.maximum(z, -1e15, out=z)
    return z


def fit_temperature(values: np.ndarray, labels: np.ndarray, form: str) -> TemperatureFit:
    """The T minimising the mean of ``-log softmax(z / T)[label]`` over the rows.

    With beta = 1/T the loss ``f(beta) = mean(logsumexp(beta z) - beta z_y)`` is convex:
    ``f' = mean(E_q[z] - z_y)`` and ``f'' = mean(Var_q[z]) >= 0``.  Safeguarded Newton on
    beta, bracketed in ``BETA_BOUNDS`` and falling back to bisection in log beta, finds
    the minimiser to rounding in a handful of passes over the sample.  Every row must have
    a finite loss at T = 1 (rows with a zero-probability label are left out by the
    caller: their loss is +inf at every temperature).
    """
    m = values.shape[0]
    if m == 0:
        return TemperatureFit(1.0, math.nan, math.nan, 0, 0)
    z = _scores(values, form)
    rows = np.arange(m)
    zy = z[rows, labels].astype(np.float64)
    mean_zy = float(zy.mean())

    zz = z * z
    e = np.empty_like(z)
    # Newton converges quadratically: stop once a step moves beta by less than this.
    tol = 0.01 * math.sqrt(float(np.finfo(z.dtype).eps))

    def evaluate(beta: float) -> tuple[float, float, float]:
        np.multiply(z, z.dtype.type(beta), out=e)
        np.exp(e, out=e)
        s = e.sum(axis=1).astype(np.float64)
        m1 = np.einsum("ij,ij->i", e, z).astype(np.float64) / s
        m2 = np.einsum("ij,ij->i", e, zz).astype(np.float64) / s
        loss = float(np.log(s).mean()) - beta * mean_zy
        grad = float(m1.mean()) - mean_zy
        hess = float(np.maximum(m2 - m1 * m1, 0.0).mean())
        return loss, grad, hess

    lo, hi = BETA_BOUNDS
    beta = 1.0
    loss1, grad, hess = evaluate(beta)
    best = (loss1, beta)
    iterations = 1
    while iterations < 60:
        if grad > 0:
            hi = beta
        else:
            lo = beta
        if grad == 0 or hi / lo < 1 + tol:
            break
        new = beta - grad / hess if hess > 0 else math.nan
        if not (lo < new < hi):
            new = math.sqrt(lo * hi)  # bisection in log beta
        if abs(new - beta) <= tol * beta:
            break
        beta = new
        loss, grad, hess = evaluate(beta)
        iterations += 1
        if loss < best[0]:
            best = (loss, beta)
    loss_after, beta = best
    return TemperatureFit(1.0 / beta, loss1, loss_after, m, iterations)


class Accumulator:
    """One streaming pass over (values, labels[, groups]) batches.

    Keeps O(classes + bins) counters, a :class:`Reservoir` for the temperature fit, and
    (with groups) the (group, label) counts and, per group, the range of a few random
    projections of the prediction (to tell whether the prediction is a function of the
    group).
    """

    def __init__(
        self,
        num_classes: int,
        form: str,
        dtype: Any,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        sample: bool = True,
        line_offset: int | None = None,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}; got {form!r}")
        self.num_classes = num_classes
        self.form = form
        self.tolerance = tolerance
        self.line_offset = line_offset
        self.n = 0
        self.correct = 0
        self.class_count = np.zeros(num_classes, dtype=np.int64)
        self.class_loss = np.zeros(num_classes, dtype=np.float64)
        self.bin_count = np.zeros(ECE_BINS, dtype=np.int64)
        self.bin_confidence = np.zeros(ECE_BINS, dtype=np.float64)
        self.bin_correct = np.zeros(ECE_BINS, dtype=np.float64)
        self.infinite = 0
        self.reservoir = Reservoir(sample_rows(num_classes), num_classes, dtype) if sample else None
        self.groups: GroupCounts | None = None
        # The prediction's projections: fixed, so a report is reproducible.
        rng = np.random.default_rng(12345)
        self._projection = rng.uniform(1.0, 2.0, size=(PROJECTIONS, num_classes))
        self._projection_tolerance = max(
            tolerance,
            PROJECTION_ULPS * float(np.finfo(np.dtype(dtype)).eps)
            if np.issubdtype(np.dtype(dtype), np.floating)
            else 0.0,
        )

    # -- validation -----------------------------------------------------------------
    def _where(self, mask_rows: np.ndarray) -> int:
        return int(np.flatnonzero(mask_rows)[0])

    def _fail(self, message: str, row: int) -> None:
        raise ValueError(message.format(where=_row_text(self.n + row, self.line_offset)))

    def _check_probs(self, values: np.ndarray, class_names: list[str] | None) -> None:
        sums = values.sum(axis=1)
        if values.min() >= 0 and np.all(np.abs(sums - 1) <= self.tolerance):
            return
        self._explain(values, sums, "probabilities", class_names)

    def _explain(
        self, values: np.ndarray, sums: np.ndarray, what: str, class_names: list[str] | None
    ) -> None:
        def name(col: int) -> str:
            return repr(class_names[col]) if class_names else str(col)

        nan = np.isnan(values)
        if nan.any():
            row = self._where(nan.any(axis=1))
            col = int(np.flatnonzero(nan[row])[0])
            self._fail(f"NaN or missing value in {{where}}, class {name(col)}", row)
        if what == "probabilities":
            bad = ~np.isfinite(values) | (values < 0)
            if bad.any():
                row = self._where(bad.any(axis=1))
                col = int(np.flatnonzero(bad[row])[0])
                self._fail(
                    f"negative or infinite probability {values[row, col]:g} in "
                    f"{{where}}, class {name(col)}",
                    row,
                )
        else:
            bad = values == np.inf
            if bad.any():
                row = self._where(bad.any(axis=1))
                col = int(np.flatnonzero(bad[row])[0])
                one = {"logits": "logit", "log-probabilities": "log-probability"}[what]
                self._fail(f"+inf {one} in {{where}}, class {name(col)}", row)
        if what == "logits":
            return
        off = ~(np.abs(sums - 1) <= self.tolerance)
        row = self._where(off)
        total = "the probabilities" if what == "probabilities" else "exp(log-probabilities)"
        self._fail(
            f"{total} in {{where}} sum to {float(sums[row]):.9g}, not 1 (tolerance "
            f"{self.tolerance:.2g}); normalise them, raise --tolerance, or use "
            "--form logits",
            row,
        )

    # -- the pass -------------------------------------------------------------------
    def update(
        self,
        values: np.ndarray,
        labels: np.ndarray,
        groups: Any = None,
        class_names: list[str] | None = None,
    ) -> None:
        """Add a batch: ``values`` (b, K) in the accumulator's form, ``labels`` (b,) int."""
        # The checks, argmax and row sums each pass over the values: in chunks that stay
        # in cache, the passes after the first are cheap.
        step = max(1, CHUNK_VALUES // max(self.num_classes, 1))
        project = groups is not None
        projections = []
        for start in range(0, values.shape[0], step):
            part = self._update(
                values[start : start + step], labels[start : start + step], class_names, project
            )
            if part is not None:
                projections.append(part)
        if groups is not None:
            if self.groups is None:
                self.groups = GroupCounts()
            empty = np.empty((0, PROJECTIONS))
            self.groups.add(groups, labels, np.concatenate([empty, *projections]))

    def _project(self, q: np.ndarray) -> np.ndarray:
        """(b, PROJECTIONS): q . r for each fixed r, summed row by row (the same rounding
        for equal rows wherever they are)."""
        q = q.astype(np.float64, copy=False)
        return np.stack([(q * r).sum(axis=1) for r in self._projection], axis=1)

    def _update(
        self,
        values: np.ndarray,
        labels: np.ndarray,
        class_names: list[str] | None,
        project: bool = False,
    ) -> np.ndarray | None:
        b = values.shape[0]
        if b == 0:
            return None
        projection = None
        rows = np.arange(b)
        pred = values.argmax(axis=1)
        top = values[rows, pred].astype(np.float64)
        picked = values[rows, labels].astype(np.float64)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            if self.form == "probs":
                self._check_probs(values, class_names)
                confidence = top
                loss = -np.log(picked)
                if project:
                    projection = self._project(values)
            elif self.form == "log_probs":
                if not np.all(top < np.inf):  # NaN or +inf somewhere in the row
                    self._explain(
                        values, np.exp(values).sum(axis=1), "log-probabilities", class_names
                    )
                probs = np.exp(values)
                sums = probs.sum(axis=1)
                if not np.all(np.abs(sums - 1) <= self.tolerance):
                    self._explain(values, sums, "log-probabilities", class_names)
                confidence = np.exp(top)
                loss = -picked
                if project:
                    projection = self._project(probs)
            else:
                if not np.all(np.isfinite(top)):
                    if np.isnan(top).any() or (top == np.inf).any():
                        self._explain(values, top, "logits", class_names)
                    row = self._where(~np.isfinite(top))
                    self._fail("every logit in {where} is -inf", row)
                shifted = values - top.astype(values.dtype)[:, None]
                s = np.exp(shifted, out=shifted).sum(axis=1, dtype=np.float64)
                lse = top + np.log(s)
                confidence = 1.0 / s
                loss = lse - picked
                if project:
                    projection = self._project(shifted / s.astype(shifted.dtype)[:, None])
        correct = pred == labels
        self.correct += int(np.count_nonzero(correct))
        self.class_count += np.bincount(labels, minlength=self.num_classes)
        self.class_loss += np.bincount(labels, weights=loss, minlength=self.num_classes)
        bins = np.clip(np.ceil(confidence * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)
        self.bin_count += np.bincount(bins, minlength=ECE_BINS)
        self.bin_confidence += np.bincount(bins, weights=confidence, minlength=ECE_BINS)
        self.bin_correct += np.bincount(bins, weights=correct, minlength=ECE_BINS)
        if self.reservoir is not None:
            finite = np.isfinite(loss)
            if finite.all():
                self.reservoir.offer(values, labels)
            else:
                keep = np.flatnonzero(finite)
                self.reservoir.offer(values[keep], labels[keep])
            self.infinite += int(b - np.count_nonzero(finite))
        else:
            self.infinite += int(b - np.count_nonzero(np.isfinite(loss)))
        self.n += b
        return projection

    # -- results --------------------------------------------------------------------
    def result(self, *, fit: bool = True) -> dict[str, Any]:
        """The report's numbers, in nats (see ``_report`` for the schema)."""
        n = self.n
        if n == 0:
            raise ValueError("no rows")
        total = float(self.class_loss.sum())
        cross_entropy = total / n
        counts = self.class_count.astype(np.float64)
        freq = counts[counts > 0] / n
        label_entropy = float(-(freq * np.log(freq)).sum())
        entropy_truth = None
        vary = False
        if self.groups is not None:
            entropy, num_groups = self.groups.entropy(n)
            vary = self.groups.spread() > self._projection_tolerance
            table = self.groups.table(self.num_classes)
            if table is not None:
                entropy_truth = truth_entropy(table)
        else:
            entropy, num_groups = 0.0, None
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_loss = self.class_loss / counts
            share = self.class_loss / total if total > 0 else np.zeros_like(self.class_loss)
        bins = []
        ece = 0.0
        for i in range(ECE_BINS):
            c = int(self.bin_count[i])
            conf = acc = None
            if c:
                conf, acc = self.bin_confidence[i] / c, self.bin_correct[i] / c
                ece += c / n * abs(acc - conf)
            bins.append(
                {
                    "bin": i,
                    "lower": i / ECE_BINS,
                    "upper": (i + 1) / ECE_BINS,
                    "count": c,
                    "confidence": conf,
                    "accuracy": acc,
                }
            )
        out: dict[str, Any] = {
            "n": n,
            "num_classes": self.num_classes,
            "num_groups": num_groups,
            "cross_entropy": cross_entropy,
            "entropy": entropy,
            "entropy_truth": entropy_truth,
            # H - S(D) is D(P(D) || model) only when the prediction is a function of the
            # group (then it is >= 0, and a negative value is rounding: clamped to 0).
            # Otherwise the model uses more than the group and the difference is no
            # divergence (it can be negative): it is reported under its own name only.
            "excess_over_data_entropy": cross_entropy - entropy,
            "kl_divergence": None if vary else max(cross_entropy - entropy, 0.0),
            "predictions_vary_within_groups": vary,
            "label_entropy": label_entropy,
            "information_gain": label_entropy - cross_entropy,
            "perplexity": math.exp(cross_entropy) if cross_entropy < 709 else math.inf,
            "accuracy": self.correct / n,
            "ece": ece,
            "infinite_loss_rows": self.infinite,
            "class_count": self.class_count,
            "class_mean_loss": mean_loss,
            "class_share": share,
            "reliability": bins,
        }
        if fit and self.reservoir is not None:
            values, labels = self.reservoir.sample()
            result = fit_temperature(values, labels, self.form)
            # The improvement is measured on the fitted rows (all finite-loss rows when
            # they fit the sample) and subtracted from the exact loss, so T = 1 would
            # give back cross_entropy exactly.
            gain = 0.0
            if result.rows:
                per_row = max(result.loss_before - result.loss_after, 0.0)
                # The gain cannot exceed the loss (the loss at T is >= 0): more is rounding.
                gain = min(per_row * self.reservoir.seen / n, cross_entropy)
            out.update(
                temperature=result.temperature,
                cross_entropy_calibrated=cross_entropy - gain,
                miscalibration=gain,
                temperature_rows=result.rows,
                temperature_exact=self.reservoir.exact,
                temperature_iterations=result.iterations,
            )
        return out


def _range_names(table: Any) -> list[str]:
    """pyarrow names an aggregate "p0_min" (or "p0_min_min" on re-aggregation): the group
    key comes last.  Back to "g", "p0_min", "p0_max", ..."""
    names = []
    for name in table.column_names:
        if name == "g":
            names.append("g")
        else:
            column, how = name.split("_")[0], name.rsplit("_", 1)[1]
            names.append(f"{column}_{how}")
    return names


class GroupCounts:
    """Counts of (group, label) pairs, aggregated with pyarrow and compacted as they grow.

    Memory is O(distinct (group, label) pairs), not O(rows).
    """

    def __init__(self) -> None:
        self._tables: list[Any] = []
        self._ranges: list[Any] = []  # per group: min and max of each projection
        self._pending = 0
        self._compacted = 0

    def add(self, groups: Any, labels: np.ndarray, projections: np.ndarray | None = None) -> None:
        """Count a batch's (group, label) pairs; ``projections`` (b, m): see :meth:`spread`."""
        import pyarrow as pa

        if not isinstance(groups, (pa.Array, pa.ChunkedArray)):
            groups = pa.array(groups)
        table = pa.table({"g": groups, "y": pa.array(labels)})
        part = table.group_by(["g", "y"]).aggregate([([], "count_all")])
        self._tables.append(part.rename_columns(["g", "y", "c"]))
        self._pending += part.num_rows
        if projections is not None and projections.shape[1]:
            columns = {f"p{j}": pa.array(projections[:, j]) for j in range(projections.shape[1])}
            ranges = (
                pa.table({"g": groups, **columns})
                .group_by(["g"])
                .aggregate([(name, how) for name in columns for how in ("min", "max")])
            )
            self._ranges.append(ranges.rename_columns(_range_names(ranges)))
            self._pending += ranges.num_rows
        if self._pending > max(2 * self._compacted, 1 << 20):
            self._compact()

    def _compact(self) -> None:
        import pyarrow as pa

        if len(self._tables) > 1:
            table = pa.concat_tables(self._tables, promote_options="permissive")
            table = table.group_by(["g", "y"]).aggregate([("c", "sum")])
            self._tables = [table.rename_columns(["g", "y", "c"])]
        if len(self._ranges) > 1:
            table = pa.concat_tables(self._ranges, promote_options="permissive")
            names = [n for n in table.column_names if n != "g"]
            table = table.group_by(["g"]).aggregate([(n, n.rsplit("_", 1)[1]) for n in names])
            self._ranges = [table.rename_columns(_range_names(table))]
        self._compacted = sum(t.num_rows for t in self._tables[:1] + self._ranges[:1])
        self._pending = 0

    def spread(self) -> float:
        """The largest range, within one group, of a projection of the prediction.

        0 (to rounding) when the prediction is a function of the group; a random
        projection of two different predictions differs with probability 1.
        """
        self._compact()
        if not self._ranges:
            return 0.0
        table = self._ranges[0]
        widest = 0.0
        for name in table.column_names:
            if name.endswith("_min"):
                low = table[name].to_numpy()
                high = table[name[:-4] + "_max"].to_numpy()
                widest = max(widest, float(np.max(high - low, initial=0.0)))
        return widest

    def table(self, num_classes: int) -> np.ndarray | None:
        """The (groups, classes) table of counts; None above ``MAX_CONTEXTS`` groups."""
        self._compact()
        table = self._tables[0]
        codes = table["g"].combine_chunks().dictionary_encode()
        if len(codes.dictionary) > MAX_CONTEXTS:
            return None
        dense = np.zeros((len(codes.dictionary), num_classes), dtype=np.int64)
        np.add.at(dense, (codes.indices.to_numpy(), table["y"].to_numpy()), table["c"].to_numpy())
        return dense

    def entropy(self, n: int) -> tuple[float, int]:
        """S(label | group) in nats, from the counts, and the number of groups.

        S = (1/n) * (sum_g n_g log n_g - sum_{g,y} n_gy log n_gy).
        """
        self._compact()
        table = self._tables[0]
        pair = table["c"].to_numpy().astype(np.float64)
        per_group = table.group_by(["g"]).aggregate([("c", "sum")])["c_sum"]
        group = per_group.to_numpy().astype(np.float64)
        value = (float((group * np.log(group)).sum()) - float((pair * np.log(pair)).sum())) / n
        return max(value, 0.0), len(group)

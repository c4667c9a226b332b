"""End-to-end tests of ``crossentropy report`` (issue 4), run as a subprocess.

References are independent of the implementation: sklearn's ``log_loss`` for the loss,
scipy's bounded scalar minimiser for the temperature, direct NumPy for accuracy and ECE,
and hand derivations (in the comments) for the group entropies.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import log_loss

KEYS = {
    "n",
    "num_classes",
    "cross_entropy",
    "entropy",
    "kl_divergence",
    "label_entropy",
    "information_gain",
    "perplexity",
    "accuracy",
    "ece",
    "temperature",
    "cross_entropy_calibrated",
    "base",
    "per_class",
}
NAMES = ["cat", "dog", "eel", "fox"]


def strict_json(text: str) -> dict:
    """json.loads that rejects the non-standard NaN/Infinity tokens."""

    def reject(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=reject)


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "crossentropy.cli", "report", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def report(path, *args, tmp_path):
    out = tmp_path / f"{os.path.basename(path)}.json"
    before = digest(path)
    proc = run(path, *args, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(path) == before, "the input file was written to"
    return strict_json(out.read_text()), proc


def ece_direct(conf, correct, bins=15):
    """Guo et al. (2017): equal-width (lo, hi] bins, |accuracy - confidence| weighted."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    n, k = 400, len(NAMES)
    z = rng.normal(size=(n, k)) * 2.0
    # The labels follow softmax(z / 2): the model softmax(z) is overconfident, T ~ 2.
    y = np.array([rng.choice(k, p=q) for q in softmax(z / 2.0, axis=1)])
    return z, softmax(z, axis=1), y


def frame(p, y, names=NAMES):
    df = pd.DataFrame(p, columns=names)
    df.insert(0, "label", np.asarray(names)[y])
    return df


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_figures_match_independent_references(fmt, data, tmp_path):
    _, p, y = data
    path = tmp_path / f"preds.{fmt}"
    if fmt == "csv":
        frame(p, y).to_csv(path, index=False)
    elif fmt == "parquet":
        frame(p, y).to_parquet(path)
    else:
        np.savez(path, label=np.asarray(NAMES)[y], probs=p, classes=np.asarray(NAMES))
    r, proc = report(path, "--batch-size", 64, tmp_path=tmp_path)
    assert set(r) >= KEYS
    assert r["n"] == len(y) and r["num_classes"] == 4
    assert r["cross_entropy"] == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-12)
    # No --group: every input is unique, S(D) = 0 and the whole loss is reducible.
    assert r["entropy"] == 0 and r["num_groups"] is None
    assert r["kl_divergence"] == pytest.approx(r["cross_entropy"], rel=1e-12)
    freq = np.bincount(y, minlength=4) / len(y)
    assert r["label_entropy"] == pytest.approx(-(freq * np.log(freq)).sum(), rel=1e-12)
    assert r["information_gain"] == pytest.approx(r["label_entropy"] - r["cross_entropy"])
    assert r["perplexity"] == pytest.approx(math.exp(r["cross_entropy"]), rel=1e-12)
    correct = p.argmax(1) == y
    assert r["accuracy"] == pytest.approx(correct.mean(), abs=1e-15)
    assert r["ece"] == pytest.approx(ece_direct(p.max(1), correct), rel=1e-9)
    losses = -np.log(p[np.arange(len(y)), y])
    for c, row in enumerate(r["per_class"]):
        assert row["class"] == NAMES[c]
        assert row["count"] == int((y == c).sum())
        assert row["mean_loss"] == pytest.approx(losses[y == c].mean(), rel=1e-12)
        assert row["share"] == pytest.approx(losses[y == c].sum() / losses.sum(), rel=1e-12)
    assert sum(b["count"] for b in r["reliability"]) == len(y)
    assert "cross-entropy H" in proc.stdout and "per class" in proc.stdout


def test_pandas_index_columns_are_not_classes(data, tmp_path):
    # to_csv() without index=False writes the index as an unnamed first column, and a
    # Parquet file keeps a named index as a column listed in its pandas metadata.
    _, p, y = data
    expected = log_loss(y, p, labels=range(4))
    csv_path = tmp_path / "indexed.csv"
    frame(p, y).to_csv(csv_path)
    with_id = frame(p, y)
    with_id.index = pd.Index(np.arange(len(y)) + 1000, name="row_id")
    parquet_path = tmp_path / "indexed.parquet"
    with_id.to_parquet(parquet_path)
    unnamed_path = tmp_path / "unnamed_index.parquet"
    frame(p, y).set_index(pd.Index(np.arange(len(y)) * 2)).to_parquet(unnamed_path)
    for path in (csv_path, parquet_path, unnamed_path):
        r, _ = report(path, tmp_path=tmp_path)
        assert r["num_classes"] == 4, path
        assert r["cross_entropy"] == pytest.approx(expected, rel=1e-12), path


def test_npz_with_one_array_per_class(data, tmp_path):
    z, p, y = data
    path = tmp_path / "columns.npz"
    labels = np.asarray(NAMES)[y]
    np.savez(path, label=labels, **{name: z[:, j] for j, name in enumerate(NAMES)})
    r, _ = report(path, "--form", "logits", "--batch-size", 50, tmp_path=tmp_path)
    assert [c["class"] for c in r["per_class"]] == NAMES
    assert r["cross_entropy"] == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-12)
    # Integer labels and class arrays named 0..K-1, float32, with a group array.
    path = tmp_path / "indexed_columns.npz"
    groups = np.arange(len(y)) % 7
    arrays = {str(j): p[:, j].astype(np.float32) for j in range(4)}
    np.savez_compressed(path, label=y, group=groups, **arrays)
    r, _ = report(path, "--group", "group", tmp_path=tmp_path)
    assert r["num_classes"] == 4 and r["num_groups"] == 7
    assert r["cross_entropy"] == pytest.approx(
        log_loss(y, p.astype(np.float32), labels=range(4)), rel=1e-5
    )
    # --classes picks and orders the class arrays.
    r, _ = report(path, "--classes", "3,2,1,0", tmp_path=tmp_path)
    assert [c["class"] for c in r["per_class"]] == ["3", "2", "1", "0"]
    assert r["cross_entropy"] == pytest.approx(
        log_loss(y, p.astype(np.float32), labels=range(4)), rel=1e-5
    )


def test_json_to_standard_output(data, tmp_path):
    _, p, y = data
    path = tmp_path / "preds.csv"
    frame(p, y).to_csv(path, index=False)
    proc = run(path, "--json", "-", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = strict_json(proc.stdout)  # stdout is the JSON alone
    assert r["cross_entropy"] == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-12)
    assert sorted(os.listdir(tmp_path)) == ["preds.csv"]


def test_temperature_matches_scipy_and_improves_the_loss(data, tmp_path):
    z, p, y = data
    path = tmp_path / "logits.npz"
    np.savez(path, label=y, logits=z)
    r, _ = report(path, tmp_path=tmp_path)
    assert r["cross_entropy"] == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-12)
    rows = np.arange(len(y))

    def loss(log_t):
        return -log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean()

    ref = minimize_scalar(loss, bounds=(-4, 4), method="bounded", options={"xatol": 1e-10})
    assert r["temperature_exact"] and r["temperature_rows"] == len(y)
    assert r["temperature"] == pytest.approx(math.exp(ref.x), rel=1e-5)
    assert r["cross_entropy_calibrated"] == pytest.approx(ref.fun, rel=1e-9)
    assert r["cross_entropy_calibrated"] < r["cross_entropy"]
    assert 1.5 < r["temperature"] < 3.0  # the labels were drawn at T = 2
    assert r["miscalibration"] == pytest.approx(
        r["cross_entropy"] - r["cross_entropy_calibrated"], rel=1e-9
    )


def test_calibrated_model_gets_no_worse(tmp_path):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(300, 3))
    y = np.array([rng.choice(3, p=q) for q in softmax(z, axis=1)])
    path = tmp_path / "calibrated.csv"
    frame(log_softmax(z, axis=1), y, ["a", "b", "c"]).to_csv(path, index=False)
    r, _ = report(path, "--form", "log_probs", tmp_path=tmp_path)
    assert r["form"] == "log_probs"
    assert r["cross_entropy"] == pytest.approx(log_loss(y, softmax(z, axis=1)), rel=1e-12)
    assert r["cross_entropy_calibrated"] <= r["cross_entropy"]
    assert 0.5 < r["temperature"] < 2.0


def test_sampled_temperature_fit(monkeypatch, tmp_path, data, capsys):
    from crossentropy.cli import _report_stats, main

    z, p, y = data
    path = tmp_path / "logits.npz"
    np.savez(path, label=y, logits=z)
    monkeypatch.setattr(_report_stats, "SAMPLE_VALUES", 4 * 100)
    monkeypatch.setattr(_report_stats, "SAMPLE_MIN_ROWS", 10)
    out = tmp_path / "r.json"
    assert main(["report", str(path), "--json", str(out), "--batch-size", "37"]) == 0
    r = strict_json(out.read_text())
    assert not r["temperature_exact"] and r["temperature_rows"] == 100
    assert r["cross_entropy"] == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-12)
    assert r["cross_entropy_calibrated"] <= r["cross_entropy"]
    assert 1.2 < r["temperature"] < 4.0


def test_reservoir_is_uniform():
    from crossentropy.cli._report_stats import Reservoir

    n, cap, trials = 40, 8, 1500
    hits = np.zeros(n)
    for seed in range(trials):
        res = Reservoir(cap, 1, np.float64, seed=seed)
        for start in range(0, n, 7):
            rows = np.arange(start, min(start + 7, n), dtype=np.float64)[:, None]
            res.offer(rows, rows[:, 0].astype(np.int64))
        values, _ = res.sample()
        assert len(set(values[:, 0])) == cap
        hits[values[:, 0].astype(int)] += 1
    rate = hits / trials  # each row is kept with probability cap / n = 0.2
    assert np.abs(rate - cap / n).max() < 0.05


# Groups.  Rows of one group are repeats of one input; the labels seen for it give
# P(D)(label | input) and S(D) = sum_g (n_g / n) S(labels of g):
#   A: labels 0 0 1 1  -> S = ln 2                              (4 rows)
#   B: labels 0 0 0 1  -> S = -(3/4 ln 3/4 + 1/4 ln 1/4) = 2 ln 2 - 3/4 ln 3   (4 rows)
#   C: label  2        -> S = 0                                  (1 row)
#   D: labels 1 2      -> S = ln 2                               (2 rows)
# S(D) = (4 ln 2 + 4 (2 ln 2 - 3/4 ln 3) + 0 + 2 ln 2) / 11 = (14 ln 2 - 3 ln 3) / 11
#      = 0.58256579 nats = (14 - 3 log2 3) / 11 = 0.84046477 bits.
GROUP_ROWS = [
    ("A", 0),
    ("B", 0),
    ("C", 2),
    ("A", 0),
    ("D", 1),
    ("B", 0),
    ("A", 1),
    ("B", 0),
    ("D", 2),
    ("A", 1),
    ("B", 1),
]
EMPIRICAL = {
    "A": [0.5, 0.5, 0.0],
    "B": [0.75, 0.25, 0.0],
    "C": [0.0, 0.0, 1.0],
    "D": [0.0, 0.5, 0.5],
}
S_NATS = (14 * math.log(2) - 3 * math.log(3)) / 11


def test_group_entropy_by_hand(tmp_path):
    assert pytest.approx(0.58256579, abs=1e-8) == S_NATS
    # The model that predicts each input's empirical label distribution has KL = 0, so
    # its loss is exactly S(D).
    df = pd.DataFrame([EMPIRICAL[g] for g, _ in GROUP_ROWS], columns=["0", "1", "2"])
    df.insert(0, "label", [y for _, y in GROUP_ROWS])
    df.insert(1, "input", [g for g, _ in GROUP_ROWS])
    path = tmp_path / "groups.parquet"
    df.to_parquet(path)
    r, _ = report(path, "--group", "input", "--batch-size", 3, tmp_path=tmp_path)
    assert r["num_groups"] == 4
    assert r["entropy"] == pytest.approx(S_NATS, rel=1e-12)
    assert r["cross_entropy"] == pytest.approx(S_NATS, rel=1e-12)
    assert r["kl_divergence"] == pytest.approx(0, abs=1e-12)
    # Beside the sample's S(D), the truth's H(label | input), bias-corrected per input
    # (crossentropy.estimate), which sits above the plug-in value.
    truth = r["entropy_truth"]
    assert truth["low"] <= truth["value"] <= truth["high"] and truth["level"] == 0.95
    assert truth["value"] > S_NATS and truth["method"]
    bits, _ = report(path, "--group", "input", "--base", 2, tmp_path=tmp_path)
    assert bits["entropy_truth"]["value"] == pytest.approx(truth["value"] / math.log(2))
    assert bits["entropy"] == pytest.approx((14 - 3 * math.log2(3)) / 11, rel=1e-12)
    assert bits["unit"] == "bits" and bits["base"] == 2
    # A uniform model: H = ln 3 for every row, and KL = ln 3 - S(D).
    uniform = df.assign(**{c: 1 / 3 for c in ["0", "1", "2"]})
    path2 = tmp_path / "uniform.csv"
    uniform.to_csv(path2, index=False)
    r2, _ = report(path2, "--group", "input", tmp_path=tmp_path)
    assert r2["entropy"] == pytest.approx(S_NATS, rel=1e-12)
    assert r2["cross_entropy"] == pytest.approx(math.log(3), rel=1e-12)
    assert r2["kl_divergence"] == pytest.approx(math.log(3) - S_NATS, rel=1e-12)
    # Unique inputs: a group per row gives S(D) = 0.
    unique = df.assign(input=np.arange(len(df)))
    path3 = tmp_path / "unique.npz"
    np.savez(
        path3,
        label=unique["label"].to_numpy(),
        probs=unique[["0", "1", "2"]].to_numpy(),
        group=unique["input"].to_numpy(),
    )
    r3, _ = report(path3, "--group", "group", tmp_path=tmp_path)
    assert r3["entropy"] == 0 and r3["num_groups"] == len(df)


VARY_WARNING = (
    "the model's predictions vary within a group: it uses information beyond "
    "the group, so H - S(D) is not a KL divergence"
)


def test_predictions_that_vary_within_a_group_give_no_kl_divergence(tmp_path):
    # Two inputs, each seen with labels a and b, so S(D) = ln 2; but the model gives each
    # row its own prediction (0.99 on the row's label): it uses more than the input.
    # H = -ln 0.99 on every row, and H - S(D) = -ln 0.99 - ln 2 = -0.68309684 < 0: not a
    # divergence, so it must not be shown as one.
    path = tmp_path / "x.csv"
    path.write_text("g,a,b,label\n1,0.99,0.01,a\n1,0.01,0.99,b\n2,0.99,0.01,a\n2,0.01,0.99,b\n")
    h, s = -math.log(0.99), math.log(2)
    assert pytest.approx(-0.68309684, abs=1e-8) == h - s
    r, proc = report(path, "--group", "g", tmp_path=tmp_path)
    assert r["cross_entropy"] == pytest.approx(h, rel=1e-12)
    assert r["entropy"] == pytest.approx(s, rel=1e-12)
    assert r["kl_divergence"] is None and r["predictions_vary_within_groups"] is True
    assert r["excess_over_data_entropy"] == pytest.approx(h - s, rel=1e-12)
    assert proc.stderr.strip() == f"crossentropy report: warning: {VARY_WARNING}"
    # The table names it H - S(D), never a KL divergence.
    table = run(path, "--group", "g")
    assert table.returncode == 0 and VARY_WARNING in table.stderr
    assert "KL divergence" not in table.stdout.replace("NOT a KL divergence", "")
    assert "H - S(D)" in table.stdout and "-0.683097" in table.stdout
    # The calibrated loss (T -> 0 makes every row's loss 0) is 0, not -5e-17.
    assert r["cross_entropy_calibrated"] >= 0
    # The figure shows H and S(D) side by side, not a divergence bar.
    from PIL import Image

    png = tmp_path / "vary.png"
    assert run(path, "--group", "g", "--plot", png).returncode == 0
    with Image.open(png) as image:
        image.verify()
    # One row per batch: a group's rows are compared across batches too.
    one, _ = report(path, "--group", "g", "--batch-size", 1, tmp_path=tmp_path)
    assert one["kl_divergence"] is None and one["predictions_vary_within_groups"] is True


@pytest.mark.parametrize("form", ["probs", "logits", "log_probs"])
def test_predictions_that_are_a_function_of_the_group_give_the_kl(form, tmp_path):
    # Group 1: (1/2, 1/2) on labels a, b; group 2: (0.99, 0.01) on labels a, b.  S(D) = ln 2
    # and KL = sum_g n_g/n D(P(D)(.|g) || q_g) = 0 + (1/2) D((1/2, 1/2) || (0.99, 0.01))
    #    = (1/2) (-ln 2 - (ln 0.99 + ln 0.01) / 2).
    # Logits are shifted by a different constant on each row of a group (the same
    # prediction), and given in float32, so equal predictions differ by rounding only.
    q = np.array([[0.5, 0.5], [0.5, 0.5], [0.99, 0.01], [0.99, 0.01]])
    shift = np.array([[0.0], [3.0], [-7.0], [11.0]])
    values = {"probs": q, "log_probs": np.log(q), "logits": np.log(q) + shift}[form]
    path = tmp_path / "y.npz"
    np.savez(
        path,
        label=np.array([0, 1, 0, 1]),
        group=np.array([1, 1, 2, 2]),
        **{form: values.astype(np.float32)},
    )
    r, proc = report(path, "--group", "group", tmp_path=tmp_path)
    kl = 0.5 * (-math.log(2) - (math.log(0.99) + math.log(0.01)) / 2)
    assert r["predictions_vary_within_groups"] is False and proc.stderr == ""
    assert r["entropy"] == pytest.approx(math.log(2), rel=1e-12)
    assert r["kl_divergence"] == pytest.approx(kl, rel=1e-6)
    assert r["excess_over_data_entropy"] == r["kl_divergence"]


def test_a_kl_below_zero_by_rounding_is_shown_as_zero(tmp_path):
    # Each input's predictions are its empirical label distribution, written with 17
    # digits: H = S(D) exactly in real numbers, and the difference of the float sums is
    # rounding (|H - S(D)| ~ 1e-17), which must not print as a negative divergence.
    df = pd.DataFrame([EMPIRICAL[g] for g, _ in GROUP_ROWS], columns=["0", "1", "2"])
    df.insert(0, "label", [y for _, y in GROUP_ROWS])
    df.insert(1, "input", [g for g, _ in GROUP_ROWS])
    df = pd.concat([df] * 7, ignore_index=True)
    path = tmp_path / "groups.csv"
    df.to_csv(path, index=False, float_format="%.17g")
    r, _ = report(path, "--group", "input", "--batch-size", 5, tmp_path=tmp_path)
    assert r["predictions_vary_within_groups"] is False
    assert abs(r["excess_over_data_entropy"]) < 1e-14
    assert r["kl_divergence"] == max(r["excess_over_data_entropy"], 0.0) >= 0


def test_zero_probability_label_is_infinite_not_a_crash(tmp_path):
    df = frame(
        np.array([[0.5, 0.5, 0, 0], [0.0, 1.0, 0, 0], [0.25, 0.25, 0.25, 0.25]]),
        np.array([0, 0, 3]),
    )
    path = tmp_path / "zero.csv"
    df.to_csv(path, index=False)
    png = tmp_path / "zero.png"
    r, proc = report(path, "--plot", png, tmp_path=tmp_path)
    # Strict JSON has no infinity: it is written as the string "inf".
    assert r["cross_entropy"] == "inf" and r["infinite_loss_rows"] == 1
    assert r["cross_entropy_calibrated"] == "inf"
    assert r["per_class"][0]["mean_loss"] == "inf"
    assert "+inf" in proc.stdout
    assert png.exists()


def test_plot_is_a_valid_png_and_outputs_are_whole(data, tmp_path):
    from PIL import Image

    _, p, y = data
    path = tmp_path / "preds.parquet"
    frame(p, y).to_parquet(path)
    png = tmp_path / "out.png"
    report(path, "--plot", png, tmp_path=tmp_path)
    with Image.open(png) as image:
        image.verify()
        assert image.format == "PNG"
    assert sorted(os.listdir(tmp_path)) == ["out.png", "preds.parquet", "preds.parquet.json"]


def test_streamed_batches_agree_with_one_batch(data, tmp_path):
    _, p, y = data
    path = tmp_path / "preds.csv"
    frame(p, y).to_csv(path, index=False)
    one, _ = report(path, tmp_path=tmp_path)
    many, _ = report(path, "--batch-size", 1, tmp_path=tmp_path)
    for key in KEYS - {"per_class"}:
        assert many[key] == pytest.approx(one[key], rel=1e-12), key


# -- bad input: one line on stderr, exit code 2, no traceback, no output written ----------


def bad(tmp_path, path, *args, match):
    out = tmp_path / "never.json"
    before = digest(path) if os.path.isfile(path) else None
    proc = run(path, *args, "--json", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crossentropy report: error: ")
    assert match in lines[0], lines[0]
    assert not out.exists()
    if before is not None:
        assert digest(path) == before
    return lines[0]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = "label,a,b\na,0.25,0.75\nb,0.5,0.5\n"


@pytest.mark.parametrize(
    ("text", "args", "match"),
    [
        ("y,a,b\na,0.25,0.75\n", (), "no label column 'label'"),
        (GOOD, ("--label", "target"), "no label column 'target'"),
        (GOOD, ("--group", "who"), "no group column 'who'"),
        (
            "label,a,b\na,0.25,0.75\nb,0.5,0.5\nzebra,0.5,0.5\n",
            (),
            "label 'zebra' in row 2 (line 4) is not among the 2 classes ('a', 'b')",
        ),
        ("label,a,b\na,0.25,0.75\nb,nan,0.5\n", (), "NaN or missing value in row 1 (line 3)"),
        ("label,a,b\na,0.25,0.75\nb,,0.5\n", (), "NaN or missing value in row 1 (line 3)"),
        (
            "label,a,b\na,0.25,0.75\nb,-0.1,1.1\n",
            (),
            "negative or infinite probability -0.1 in row 1 (line 3), class 'a'",
        ),
        (
            "label,a,b\na,0.25,0.75\nb,0.5,0.5\na,0.6,0.6\n",
            ("--batch-size", "2"),
            "the probabilities in row 2 (line 4) sum to 1.2, not 1",
        ),
        ("label,a,b\n", (), "has no rows"),
        ("", (), "is empty"),
        ("label,a,b\na,0.25,x\n", (), "cannot read"),
        (
            GOOD,
            ("--form", "logits", "--base", "1"),
            "argument --base: must be e, 2 or another finite number > 1",
        ),
    ],
)
def test_bad_csv(tmp_path, text, args, match):
    bad(tmp_path, write(tmp_path, "in.csv", text), *args, match=match)


def test_a_column_that_is_not_a_class_is_named_in_the_error(tmp_path):
    path = write(tmp_path, "ids.csv", "id,label,a,b\n7,a,0.25,0.75\n")
    bad(
        tmp_path,
        path,
        match="row 0 (line 2) sum to 8, not 1 (tolerance 0.00035); normalise "
        "them, raise --tolerance, or use --form logits; the class columns were taken to be "
        "every column but the label and group ('id', 'a', 'b'): name them with --classes",
    )
    r, _ = report(path, "--classes", "a,b", tmp_path=tmp_path)
    assert r["cross_entropy"] == pytest.approx(-math.log(0.25), rel=1e-12)


def test_bad_logits_and_log_probs(tmp_path):
    path = write(tmp_path, "z.csv", "label,a,b\na,1.5,inf\n")
    bad(tmp_path, path, "--form", "logits", match="+inf logit in row 0 (line 2), class 'b'")
    path = write(tmp_path, "lp.csv", "label,a,b\na,-0.1,-0.1\n")
    bad(tmp_path, path, "--form", "log_probs", match="exp(log-probabilities) in row 0")
    path = write(tmp_path, "lp_inf.csv", "label,a,b\na,0,-inf\nb,inf,0\n")
    bad(tmp_path, path, "--form", "log-probs", match="+inf log-probability in row 1 (line 3)")


def test_bad_files(tmp_path):
    bad(tmp_path, tmp_path / "missing.csv", match="no such file")
    bad(tmp_path, write(tmp_path, "notes.txt", "hello"), match="cannot tell the format")
    bad(tmp_path, write(tmp_path, "junk.parquet", "not parquet at all"), match="cannot read")
    bad(tmp_path, write(tmp_path, "junk.npz", "not a zip"), match="as .npz")
    path = tmp_path / "labels_only.npz"
    np.savez(path, label=np.array([0, 1]))
    bad(
        tmp_path,
        path,
        match="has no predictions: save one of the arrays probs, logits, "
        "log_probs (n, K), or one (n,) array per class; it holds: label",
    )
    path = tmp_path / "two_forms.npz"
    np.savez(path, label=np.array([0, 1]), probs=np.eye(2), logits=np.eye(2))
    bad(
        tmp_path,
        path,
        match="holds more than one of the arrays probs, logits, log_probs "
        "(probs, logits): pick one with --form",
    )
    bad(tmp_path, path, "--form", "log_probs", match="has no array 'log_probs'")
    path = tmp_path / "short_column.npz"
    np.savez(path, label=np.array([0, 1]), a=np.array([0.5, 0.5]), b=np.array([0.5]))
    bad(tmp_path, path, match="class array 'b' in")
    path = tmp_path / "text_column.npz"
    np.savez(path, label=np.array(["a", "b"]), a=np.array([1.0, 0.0]), b=np.array(["x", "y"]))
    bad(tmp_path, path, match="array 'b' in")
    path = tmp_path / "out_of_range.npz"
    np.savez(path, label=np.array([0, 2]), probs=np.array([[0.5, 0.5], [0.5, 0.5]]))
    bad(tmp_path, path, match="label '2' in row 1 is not among the 2 classes")


def test_outputs_never_overwrite_the_input(tmp_path):
    path = write(tmp_path, "in.csv", GOOD)
    for flag in ("--json", "--plot"):
        proc = run(path, flag, path)
        assert proc.returncode == 2 and "is the input file" in proc.stderr
        assert path.read_text() == GOOD
    proc = run(path, "--json", tmp_path / "same", "--plot", tmp_path / "same")
    assert proc.returncode == 2 and "name the same file" in proc.stderr


def test_tsv_with_numeric_labels(tmp_path):
    # Labels written as 1.0 / 0.0 name the class columns "1" / "0".
    path = write(tmp_path, "in.tsv", "label\t0\t1\n1.0\t0.2\t0.8\n0.0\t0.6\t0.4\n")
    r, _ = report(path, tmp_path=tmp_path)
    assert r["format"] == "tsv"
    assert r["cross_entropy"] == pytest.approx(
        log_loss([1, 0], [[0.2, 0.8], [0.6, 0.4]]), rel=1e-12
    )


def test_missing_output_directory(tmp_path):
    path = write(tmp_path, "in.csv", GOOD)
    proc = run(path, "--plot", tmp_path / "nowhere" / "p.png")
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_failed_run_keeps_an_existing_output(tmp_path):
    path = write(tmp_path, "in.csv", "label,a,b\nzebra,0.5,0.5\n")
    out = tmp_path / "old.json"
    out.write_text("old")
    proc = run(path, "--json", out)
    assert proc.returncode == 2
    assert out.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "old.json"]

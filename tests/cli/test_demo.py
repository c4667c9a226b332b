"""End-to-end tests of ``crossentropy demo``."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from collections import Counter
from importlib.resources import files

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
PIL = pytest.importorskip("PIL.Image")

from crossentropy.cli import _demo, _demo_data, main  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crossentropy.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("demo")
    done = _run("--steps", "40", "--base", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return json.loads((out / "demo.json").read_text()), out


def test_writes_json_and_a_valid_png(text_run):
    result, out = text_run
    for key in (
        "dataset",
        "base",
        "entropy_data",
        "max_parameter_difference",
        "history",
        "history_kl",
        "held_out",
    ):
        assert key in result
    assert result["dataset"] == "text" and result["base"] == 2
    assert len(result["history"]) == len(result["history_kl"]) == 41
    assert set(result["history"][0]) == {"step", "cross_entropy", "kl_divergence", "entropy"}
    with PIL.open(out / "demo.png") as image:
        image.verify()


def test_identity_holds_and_runs_agree_at_every_step(text_run):
    result, _ = text_run
    for entry, entry_kl in zip(result["history"], result["history_kl"], strict=True):
        for e in (entry, entry_kl):
            assert abs(e["cross_entropy"] - e["kl_divergence"] - e["entropy"]) < 1e-12
            assert e["entropy"] == pytest.approx(result["entropy_data"], abs=1e-12)
        assert entry["cross_entropy"] == pytest.approx(entry_kl["cross_entropy"], abs=1e-12)
    assert result["max_parameter_difference"] < 1e-12


def test_loss_descends_to_the_data_entropy(text_run):
    result, _ = text_run
    first, last = result["history"][0], result["history"][-1]
    assert last["kl_divergence"] < 0.1 * first["kl_divergence"]
    assert last["cross_entropy"] >= result["entropy_data"]
    assert result["held_out"][-1] > last["cross_entropy"]


def test_the_truths_entropy_is_estimated_above_the_samples(text_run):
    # Bias-corrected estimators (Miller-Madow, NSB, ...) sit above the plug-in S(D).
    result, _ = text_run
    truth = result["entropy_truth"]
    assert truth["low"] < truth["value"] < truth["high"]
    assert truth["value"] > result["entropy_data"]
    assert truth["method"]


def test_entropy_of_the_data_matches_an_independent_count(text_run):
    # H(next | previous) of the training text, counted with collections.Counter.
    result, _ = text_run
    text = (files("crossentropy.cli") / "data" / "demo_text.txt").read_text(encoding="ascii")
    pieces = " ".join(text.split()).split(". ")
    paragraphs = [p + "." for p in pieces[:-1]] + pieces[-1:]  # the split keeps the "."
    paragraphs = [p for p in paragraphs if len(p) > 1]
    train = [p for i, p in enumerate(paragraphs) if i % 5]
    pairs: Counter[tuple[str, str]] = Counter()
    for p in train:
        pairs.update(itertools.pairwise(p))
    contexts: Counter[str] = Counter()
    for (a, _), n in pairs.items():
        contexts[a] += n
    total = sum(pairs.values())
    h = -sum(n / total * math.log2(n / contexts[a]) for (a, _), n in pairs.items())
    assert result["entropy_data"] == pytest.approx(h, rel=1e-9)


def test_digits_distillation_runs(tmp_path):
    pytest.importorskip("sklearn")
    done = _run("--dataset", "digits", "--steps", "20", "--out", str(tmp_path), "--no-plot")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["dataset"] == "digits" and not (tmp_path / "demo.png").exists()
    assert result["max_parameter_difference"] < 1e-12
    assert 0 < result["entropy_data"] < math.log(10)
    # Distillation: the divergence trained with, and the teacher's entropy as the floor.
    assert result["divergence"] == "forward_kl"
    assert "divergence='forward_kl'" in done.stdout and "teacher's entropy" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "must be at least 1"),
        (["--steps", "x"], "not an integer"),
        (["--dataset", "nope"], "invalid choice"),
        (["--base", "1"], ("base", "must be")),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = main(["demo", "--out", str(tmp_path), *args])
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    parts = message if isinstance(message, tuple) else (message,)
    assert all(p in err for p in parts) and len(err.strip().splitlines()) == 1


def test_output_folder_that_is_a_file_is_an_error_not_a_traceback(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    done = _run("--steps", "2", "--out", str(blocker), "--no-plot")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "keep me"


def test_bigram_rows_are_distributions():
    data = _demo_data.text()
    np.testing.assert_allclose(data.train.targets.sum(axis=1), 1.0)
    assert data.train.weights.sum() == pytest.approx(1.0)


def test_the_text_is_shipped_and_fixed_whatever_the_python():
    # The text is a file of the package, not Python's docstrings read at run time: the
    # numbers below (Python 3.11.7's docstrings, frozen) hold on every Python version.
    path = files("crossentropy.cli") / "data" / "demo_text.txt"
    raw = path.read_text(encoding="ascii")
    assert set(raw) <= set(_demo_data.ALPHABET) | {"\n"}
    assert _demo_data.demo_text() == " ".join(raw.split())
    assert len(_demo_data.demo_text()) == 119_470
    data = _demo_data.text()
    assert "93,613 training characters" in data.description
    # S(D) in bits, by direct counting over the (previous, next) table of the data set.
    c = data.train.counts
    rows = c.sum(axis=1, keepdims=True)
    seen = c > 0
    s_bits = -(c[seen] / c.sum() * np.log2((c / np.maximum(rows, 1))[seen])).sum()
    assert round(s_bits, 4) == 3.4211


def test_outputs_are_checked_before_training(tmp_path):
    # demo.json is a directory: the error comes at once, not after a million steps.
    (tmp_path / "demo.json").mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "crossentropy.cli",
            "demo",
            "--steps",
            "1000000",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "demo.json" in done.stderr and "directory" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_figure_shows_each_claim_of_the_summary(text_run):
    from matplotlib.colors import to_rgba

    result, _ = text_run
    fig = _demo.figure(result, "title")
    axes = fig.axes
    assert len(axes) == 6
    steps = np.array([e["step"] for e in result["history"]])
    # 1. The KL run is drawn as markers (no line) over the CE run's line.
    lines = axes[0].get_lines()
    markers = [ln for ln in lines if ln.get_linestyle() == "None" and ln.get_marker() == "o"]
    assert len(markers) == 1
    x, y = markers[0].get_data()
    h_kl = np.array([e["cross_entropy"] for e in result["history_kl"]])
    np.testing.assert_array_equal(y, h_kl[np.searchsorted(steps, x)])
    assert 0 in x and steps[-1] in x and len(x) >= 10
    # 2. The divergence on a log scale.
    assert axes[1].get_yscale() == "log"
    # 3. Zoomed on S(D) and the truth's interval: they fill a good part of the axis.
    low, high = axes[2].get_ylim()
    truth = result["entropy_truth"]
    assert low < result["entropy_data"] < high and low < truth["low"] < truth["high"] < high
    assert (truth["high"] - truth["low"]) > 0.2 * (high - low)
    # 4. The residual in float64 spacings at S(D): whole numbers, said on the axis.
    assert "ulp(S(D))" in axes[3].get_ylabel()
    for line in axes[3].get_lines():
        values = line.get_ydata()
        np.testing.assert_array_equal(values, np.round(values))
    # 5. Held-out above training, and the axis zoomed so the gap is visible.
    low, high = axes[4].get_ylim()
    gap = result["held_out"][-1] - result["history"][-1]["cross_entropy"]
    assert gap > 0.05 * (high - low)
    # Every filled area is opaque (no colour mixes that the legend does not name).
    for ax in axes:
        for patch in ax.patches:
            assert to_rgba(patch.get_facecolor())[3] == 1

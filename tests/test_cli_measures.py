"""The ``crossentropy`` measure subcommands: entropy, cross-entropy, kl, js, decompose.

Run in-process through ``crossentropy.cli.main([...])`` and, for the things only a real
process shows (``python -m``, exit status, no traceback), through a subprocess. Expected
values come from scipy on the same numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats

from crossentropy.cli import main


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in-process: (exit code, stdout, stderr). argparse errors exit."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def run_process(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crossentropy.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


def strict_json(text: str) -> dict:
    """json.loads that rejects the non-standard NaN/Infinity tokens."""

    def reject(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=reject)


P, Q = [0.5, 0.5], [0.9, 0.1]
PS, QS = "0.5,0.5", "0.9,0.1"
KL_PQ = float(scipy.stats.entropy(P, Q))  # scipy, nats
S_P = float(scipy.stats.entropy(P))
H_PQ = float(-scipy.special.xlogy(P, Q).sum())
JS_PQ = float(scipy.spatial.distance.jensenshannon(P, Q)) ** 2


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["entropy", PS], S_P),
        (["cross-entropy", PS, QS], H_PQ),
        (["kl", PS, QS], KL_PQ),
        (["js", PS, QS], JS_PQ),
        (["entropy", "0.25,0.25,0.5", "--base", "2"], 1.5),  # hand: 1/4*2*2 + 1/2*1 bits
        (["kl", PS, QS, "--base", "2"], KL_PQ / math.log(2)),
        (["js", "1,0", "0,1", "--base", "2"], 1.0),  # disjoint supports: 1 bit
        (["kl", PS, QS, "--base", "10"], KL_PQ / math.log(10)),
        (["kl", PS, QS, "--base", "e"], KL_PQ),
        (["entropy", "1"], 0.0),
        (["entropy", "1,0,0"], 0.0),
    ],
)
def test_values_in_process(capsys, argv, expected):
    code, out, err = run_main(capsys, *argv)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 1
    # Printed with 10 significant digits.
    assert float(lines[0]) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_json_in_process(capsys):
    code, out, _ = run_main(capsys, "kl", PS, QS, "--json")
    assert code == 0
    data = strict_json(out)
    assert data == {"kl_divergence": pytest.approx(KL_PQ, rel=1e-15), "unit": "nats"}
    code, out, _ = run_main(capsys, "entropy", PS, "--json", "--base", "2")
    assert strict_json(out) == {"entropy": pytest.approx(1.0, rel=1e-15), "unit": "bits"}
    code, out, _ = run_main(capsys, "js", PS, QS, "--json")
    assert set(strict_json(out)) == {"js_divergence", "unit"}
    code, out, _ = run_main(capsys, "cross-entropy", PS, QS, "--json")
    assert strict_json(out) == {"cross_entropy": pytest.approx(H_PQ, rel=1e-15), "unit": "nats"}


def test_decompose_in_process(capsys):
    code, out, err = run_main(capsys, "decompose", PS, QS, "--base", "2")
    assert code == 0 and err == ""
    rows = [line.split() for line in out.strip().splitlines()]
    assert [r[0] for r in rows] == ["cross_entropy", "entropy", "kl_divergence"]
    assert all(r[2] == "bits" for r in rows)
    values = {r[0]: float(r[1]) for r in rows}
    ln2 = math.log(2)
    assert values["cross_entropy"] == pytest.approx(H_PQ / ln2, rel=1e-9)
    assert values["entropy"] == pytest.approx(S_P / ln2, rel=1e-9)
    assert values["kl_divergence"] == pytest.approx(KL_PQ / ln2, rel=1e-9)
    code, out, _ = run_main(capsys, "decompose", PS, QS, "--json")
    data = strict_json(out)
    assert data["unit"] == "nats"
    assert data["cross_entropy"] == pytest.approx(H_PQ, rel=1e-15)
    assert data["entropy"] == pytest.approx(S_P, rel=1e-15)
    assert data["kl_divergence"] == pytest.approx(KL_PQ, rel=1e-15)
    # The identity, on the printed numbers.
    assert data["cross_entropy"] == pytest.approx(
        data["entropy"] + data["kl_divergence"], rel=4 * np.finfo(float).eps
    )


def test_forms_in_process(capsys):
    # q as logits, including negative ones that argparse would take for options.
    lq = scipy.special.log_softmax([-1.0, 2.0])
    code, out, err = run_main(capsys, "kl", PS, "-1,2", "--q-form", "logits")
    assert code == 0, err
    assert float(out) == pytest.approx(float(np.sum(np.array(P) * (np.log(P) - lq))), rel=1e-9)
    code, out, err = run_main(capsys, "entropy", "-1,2", "--p-form", "logits", "--json")
    assert code == 0, err
    assert strict_json(out)["entropy"] == pytest.approx(
        float(scipy.stats.entropy(scipy.special.softmax([-1.0, 2.0]))), rel=1e-14
    )
    code, out, err = run_main(
        capsys, "cross-entropy", "--p-form", "logits", "-.5,-1.5", "-inf,0", "--q-form", "logits"
    )
    assert code == 0, err
    # q = softmax(-inf, 0) = (0, 1) while p puts mass on class 0: +inf.
    assert float(out) == math.inf
    # Log-probabilities and a class label on the data side.
    code, out, err = run_main(
        capsys,
        "cross-entropy",
        "1",
        f"{math.log(0.9)},{math.log(0.1)}",
        "--p-form",
        "label",
        "--q-form",
        "log-probs",
    )
    assert code == 0, err
    assert float(out) == pytest.approx(-math.log(0.1), rel=1e-9)
    code, out, err = run_main(
        capsys, "decompose", "0", "3,-1e3", "--p-form", "label", "--q-form", "logits", "--json"
    )
    assert code == 0, err
    data = strict_json(out)
    assert data["entropy"] == 0.0
    assert data["cross_entropy"] == pytest.approx(
        -scipy.special.log_softmax([3.0, -1e3])[0], abs=1e-300
    )


def test_masked_logit_where_p_is_zero(capsys):
    code, out, err = run_main(capsys, "kl", "0.5,0.5,0", "0,0,-inf", "--q-form", "logits")
    assert code == 0, err
    assert float(out) == 0.0


def test_json_of_infinite_result_is_valid_json(capsys):
    code, out, _ = run_main(capsys, "kl", "1,0", "0,1", "--json")
    assert code == 0
    assert strict_json(out)["kl_divergence"] == "inf"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["entropy", "0.5,abc"],
            "p must be comma-separated numbers such as 0.5,0.5; got '0.5,abc'",
        ),
        (["kl", PS, "0.5,,0.5"], "q must be comma-separated numbers"),
        (["entropy", ""], "p must be comma-separated numbers"),
        (["entropy", "0.5,0.6"], "p does not sum to 1 along axis -1: the sum is 1.1"),
        (["kl", PS, "0.9,0.2"], "q does not sum to 1"),
        (["entropy", "nan,1"], "p (probabilities) contain NaN at index (0,)"),
        (["entropy", "1.5,-0.5"], "p (probabilities) contain a negative value -0.5 at index (1,)"),
        (["kl", PS, "0.2,0.3,0.5"], "p and q differ in their number of classes"),
        (["entropy", PS, "--base", "x"], "argument --base: not a number: 'x'"),
        # A token starting with "-" and a number is a value, not an option.
        (["entropy", "-nan,1"], "p (probabilities) contain NaN at index (0,)"),
        (["entropy", "-1,2"], "p (probabilities) contain a negative value -1 at index (0,)"),
        (["kl", "-inf,1", PS], "p (probabilities) contain infinite values at index (0,)"),
        (["cross-entropy", "2", PS, "--p-form", "label"], "p (labels) must lie in [0, 2): found 2"),
        (
            ["cross-entropy", "1.5", PS, "--p-form", "label"],
            "p must be one class index with --p-form label; got '1.5'",
        ),
        (["kl", PS, "0,0", "--q-form", "log-probs"], "q (log-probabilities) are not normalised"),
        (["kl", PS, "-inf,-inf", "--q-form", "logits"], "q (logits) are -inf everywhere"),
        (["js", PS, "inf,0", "--q-form", "logits"], "q (logits) contain +inf"),
    ],
)
def test_errors_in_process(capsys, argv, message):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err  # one line
    assert message in err
    assert err.startswith("crossentropy ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["kl", PS], "the following arguments are required: q"),
        (["entropy", PS, "--p-form", "label"], "argument --p-form: invalid choice: 'label'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required"),
        (["kl", PS, QS, "--q-form", "label"], "argument --q-form: invalid choice: 'label'"),
        # Bases <= 1 make divergences <= 0: refused as the argument is read.
        (
            ["entropy", PS, "--base", "0"],
            "argument --base: must be e, 2 or another finite number > 1; got '0'",
        ),
        (
            ["entropy", PS, "--base", "1"],
            "argument --base: must be e, 2 or another finite number > 1; got '1'",
        ),
        (
            ["entropy", PS, "--base", "0.5"],
            "argument --base: must be e, 2 or another finite number > 1; got '0.5'",
        ),
        (
            ["entropy", PS, "--base", "-2"],
            "argument --base: must be e, 2 or another finite number > 1; got '-2'",
        ),
        (
            ["entropy", PS, "--base", "inf"],
            "argument --base: must be e, 2 or another finite number > 1; got 'inf'",
        ),
        (
            ["entropy", PS, "--base", "nan"],
            "argument --base: must be e, 2 or another finite number > 1; got 'nan'",
        ),
        # A line break in an argument is escaped: the error stays one line.
        (["entropy", PS, "a\nb\rc"], "unrecognized arguments: a\\nb\\rc"),
    ],
)
def test_usage_errors_in_process(capsys, argv, message):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


# ----------------------------------------------------------------------------- subprocess


def test_subprocess_values_and_json():
    r = run_process("kl", PS, QS, "--base", "2")
    assert r.returncode == 0 and r.stderr == ""
    assert float(r.stdout) == pytest.approx(KL_PQ / math.log(2), rel=1e-9)
    r = run_process("decompose", PS, "-1,2", "--q-form", "logits", "--json")
    assert r.returncode == 0, r.stderr
    data = strict_json(r.stdout)
    lq = scipy.special.log_softmax([-1.0, 2.0])
    assert data["cross_entropy"] == pytest.approx(float(-(np.array(P) * lq).sum()), rel=1e-14)
    assert data["entropy"] == pytest.approx(S_P, rel=1e-15)
    assert data["unit"] == "nats"


@pytest.mark.parametrize(
    "argv",
    [
        ["kl", PS, "0.9,0.2"],
        ["entropy", "0.5,abc"],
        ["entropy", PS, "--base", "x"],
        ["kl", PS],
    ],
)
def test_subprocess_errors_exit_2_with_one_line(argv):
    r = run_process(*argv)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "error:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_console_script_if_installed():
    import shutil

    exe = shutil.which("crossentropy")
    if exe is None:
        pytest.skip("the crossentropy console script is not on PATH")
    r = subprocess.run(
        [exe, "js", "1,0", "0,1", "--base", "2"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == 1.0  # disjoint supports: exactly 1 bit


def test_version(capsys):
    import crossentropy

    code, out, err = run_main(capsys, "--version")
    assert code == 0 and err == ""
    assert out == f"crossentropy {crossentropy.__version__}\n"

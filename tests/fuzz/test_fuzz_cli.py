"""Property fuzzing of the ``crossentropy`` command: generated arguments and small
generated input files, each made bad in one known way.

Bad input must end with exit code 2 and exactly one line on stderr (``crossentropy
COMMAND: error: ...``), no traceback and nothing on stdout, and must leave every file as
it was: the input, an output that already existed, and the folder (no ``.part`` file, no
new file).  The real process is run a bounded number of times (``python -m
crossentropy.cli``, as tests/cli/test_cli_errors.py runs it: about half a second each);
the same cases run many more times in-process through ``crossentropy.cli.main``.
Profiles: see conftest.py (the subprocess properties take 2/5 of the profile's examples:
12 each under ``ci``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.cli import main

CLI = [sys.executable, "-m", "crossentropy.cli"]
# The subprocess properties: a bounded share of the profile's examples (12 under ci).
SUBPROCESS = settings(max_examples=max(1, settings().max_examples * 2 // 5))
OLD_OUTPUT = b"an earlier report\n"

# Class names that need no quoting in CSV; the label column is "label".
NAMES = ["a", "b", "cat", "dog", "0", "1", "\u00e9t\u00e9", "x_y"]


@dataclass
class Case:
    """One command line (``{dir}`` stands for the case's folder) and the files it finds."""

    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)

    def in_folder(self, folder: Path) -> list[str]:
        return [a.replace("{dir}", str(folder)) for a in self.argv]


# ---------------------------------------------------------------- report: tables


@st.composite
def tables(draw):
    """A good table: header ``label,<classes>`` and rows of probabilities summing to 1."""
    k = draw(st.integers(1, 4))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=k, max_size=k, unique=True))
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        raw = draw(st.lists(st.floats(0.01, 10.0), min_size=k, max_size=k))
        total = math.fsum(raw)
        rows.append([draw(st.sampled_from(names)), *(repr(x / total) for x in raw)])
    return ["label", *names], rows


def _cell(draw, rows):
    r = draw(st.integers(0, len(rows) - 1))
    c = draw(st.integers(1, len(rows[r]) - 1))
    return r, c


# Each breaks a good table (header, rows) in one way; "probs" says whether the defect
# holds only when the class columns are probabilities (a negative logit is fine).
def _nan(draw, header, rows):
    r, c = _cell(draw, rows)
    rows[r][c] = draw(st.sampled_from(["nan", "NaN", ""]))


def _infinite(draw, header, rows):
    r, c = _cell(draw, rows)
    rows[r][c] = draw(st.sampled_from(["inf", "+inf", "1e999"]))


def _text(draw, header, rows):
    r, c = _cell(draw, rows)
    rows[r][c] = draw(st.sampled_from(["abc", "0.5.5", "true", "0x1p-1", "1/2"]))


def _negative(draw, header, rows):
    r, c = _cell(draw, rows)
    rows[r][c] = draw(st.sampled_from(["-0.5", "-1e-3", "-1"]))


def _bad_sum(draw, header, rows):
    r = draw(st.integers(0, len(rows) - 1))
    scale = draw(st.sampled_from([0.25, 0.9, 1.1, 3.0]))
    rows[r][1:] = [repr(float(x) * scale) for x in rows[r][1:]]


def _unknown_label(draw, header, rows):
    r = draw(st.integers(0, len(rows) - 1))
    rows[r][0] = draw(st.sampled_from(["zebra", "A", "", "2", "b_"]))


def _ragged(draw, header, rows):
    r = draw(st.integers(0, len(rows) - 1))
    if draw(st.booleans()):
        rows[r].pop()
    else:
        rows[r].append("0.5")


def _no_label_column(draw, header, rows):
    header[0] = draw(st.sampled_from(["labels", "Label", "y", ""]))


def _duplicate_column(draw, header, rows):
    header[-1] = draw(st.sampled_from(header[:-1]))


TABLE_DEFECTS = {
    "nan": (_nan, False),
    "infinite": (_infinite, False),
    "text": (_text, False),
    "negative": (_negative, True),
    "bad_sum": (_bad_sum, True),
    "unknown_label": (_unknown_label, False),
    "ragged": (_ragged, False),
    "no_label_column": (_no_label_column, False),
    "duplicate_column": (_duplicate_column, False),
}

# Options that are wrong whatever the table: (flag, values).
BAD_REPORT_OPTIONS = [
    ("--base", ["0", "1", "-2", "0.5", "nan", "inf", "x", ""]),
    ("--tolerance", ["-1", "nan", "x", ""]),
    ("--batch-size", ["0", "-3", "1.5", "x"]),
    ("--form", ["prob", "softmax", ""]),
    ("--classes", ["nope", "a,,b", "label", ","]),
    ("--group", ["nope", "label"]),
    ("--label", ["nope", ""]),
    ("--json", ["{in}", "{dir}/missing/out.json", "", "{dir}"]),
    ("--plot", ["{dir}/figure.weird", "-", "{in}", "{dir}/missing/f.png"]),
]


def _render(header, rows, sep: str, newline: str) -> bytes:
    lines = [sep.join(header), *(sep.join(r) for r in rows)]
    return (newline.join(lines) + newline).encode("utf-8")


@st.composite
def bad_reports(draw):
    """``report`` of a table or a command line made bad in one known way."""
    header, rows = draw(tables())
    sep, suffix = draw(st.sampled_from([(",", ".csv"), ("\t", ".tsv")]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    form = draw(st.sampled_from([None, "probs", "logits", "log_probs"]))
    argv = ["report", "{dir}/in" + suffix]
    kind = draw(st.sampled_from([*TABLE_DEFECTS, "option", "empty", "no_rows", "format"]))
    if kind in TABLE_DEFECTS:
        defect, probs_only = TABLE_DEFECTS[kind]
        if probs_only:
            form = draw(st.sampled_from([None, "probs"]))
        defect(draw, header, rows)
    elif kind == "option":
        flag, values = draw(st.sampled_from(BAD_REPORT_OPTIONS))
        argv[2:2] = [flag, draw(st.sampled_from(values))]
    body = _render(header, rows, sep, newline)
    if kind == "empty":
        body = b""
    elif kind == "no_rows":
        body = _render(header, [], sep, newline)
    elif kind == "format":
        argv[1] = "{dir}/in" + draw(st.sampled_from([".txt", ".json", ""]))
    if form is not None:
        argv += ["--form", form]
    if draw(st.booleans()) and "--json" not in argv:
        argv += ["--json", "{dir}/old.json"]  # an existing output: must stay as it was
    argv = [a.replace("{in}", argv[1]) for a in argv]  # the input itself as an output
    files = {os.path.basename(argv[1].replace("{dir}/", "")): body, "old.json": OLD_OUTPUT}
    return Case(argv, files)


# ---------------------------------------------------------------- measures and demo


def _numbers(values) -> str:
    return ",".join(repr(v) for v in values)


@st.composite
def distributions(draw, k):
    raw = draw(st.lists(st.floats(0.01, 10.0), min_size=k, max_size=k))
    total = math.fsum(raw)
    return [x / total for x in raw]


@st.composite
def bad_vectors(draw, k, *, probs: bool):
    """A comma-separated vector of ``k`` numbers made bad in one way."""
    values = [repr(x) for x in draw(distributions(k))]
    i = draw(st.integers(0, k - 1))
    # ("1_0" is not here: Python's float() reads it as 10, and so does the command.)
    choices = ["nan", "abc", "", "1e999", "inf", "0x1", "1__0", "0.5.5"]
    if probs:
        choices += ["-0.25", "3.0"]
    values[i] = draw(st.sampled_from(choices))
    return ",".join(values)


MEASURES = ["entropy", "cross-entropy", "kl", "js", "decompose"]


@st.composite
def bad_measures(draw):
    command = draw(st.sampled_from(MEASURES))
    two = command != "entropy"
    k = draw(st.integers(1, 5))
    p = _numbers(draw(distributions(k)))
    q = _numbers(draw(distributions(k)))
    options: list[str] = []
    kind = draw(
        st.sampled_from(
            ["p", "base", "form", "unknown_option"]
            + (["q", "lengths", "label", "missing_q"] if two else [])
            + ["all_minus_inf_logits", "plus_inf_logit"]
        )
    )
    if kind == "p":
        p_form = draw(st.sampled_from(["probs", "logits", "log-probs"]))
        p = draw(bad_vectors(k, probs=p_form == "probs"))
        if p_form == "log-probs":  # any change breaks exp(lp) summing to 1 (or is junk)
            p = draw(bad_vectors(k, probs=True))
        options += ["--p-form", p_form]
    elif kind == "q":
        q = draw(bad_vectors(k, probs=True))
    elif kind == "lengths":
        q = _numbers(draw(distributions(k + draw(st.integers(1, 3)))))
    elif kind == "label":
        p = draw(st.sampled_from([str(k), str(k + 7), "-1", "1.5", "x", "", "0,1"]))
        options += ["--p-form", "label"]
    elif kind == "base":
        options += ["--base", draw(st.sampled_from(["0", "1", "-2", "0.5", "nan", "inf", "x"]))]
    elif kind == "form":
        flag = draw(st.sampled_from(["--p-form", "--q-form"] if two else ["--p-form"]))
        options += [flag, draw(st.sampled_from(["prob", "label" if flag == "--q-form" else "x"]))]
    elif kind == "unknown_option":
        options += [draw(st.sampled_from(["--bits", "--axis=0", "-x"]))]
    elif kind == "all_minus_inf_logits":
        p = ",".join(["-inf"] * k)
        options += ["--p-form", "logits"]
    elif kind == "plus_inf_logit":
        i = draw(st.integers(0, k - 1))
        p = ",".join("inf" if j == i else "0" for j in range(k))
        options += ["--p-form", "logits"]
    argv = [command, *options, "--", p]
    if two and kind != "missing_q":
        argv.append(q)
    return Case(argv)


BAD_DEMO_OPTIONS = [
    ("--steps", ["0", "-1", "x", "1.5", ""]),
    ("--base", ["0", "1", "nan", "e2"]),
    ("--dataset", ["mnist", ""]),
    ("--seed", ["x", "1.5"]),
    ("--out", ["{dir}/old.json", "", "{dir}/old.json/sub"]),
]


@st.composite
def bad_demos(draw):
    flag, values = draw(st.sampled_from(BAD_DEMO_OPTIONS))
    argv = ["demo", flag, draw(st.sampled_from(values))]
    if flag != "--out":
        argv += ["--out", "{dir}/demo"]  # never the working folder, should it run
    return Case(argv, {"old.json": OLD_OUTPUT})


commands = st.one_of(bad_reports(), bad_measures(), bad_demos())


# ---------------------------------------------------------------- running a case


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def _check_refused(case: Case, run) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for file, body in case.files.items():
            (folder / file).write_bytes(body)
        before = _snapshot(folder)
        argv = case.in_folder(folder)
        code, out, err = run(argv, folder)
        assert code == 2, (argv, code, out, err)
        assert err.count("\n") == 1 and err.endswith("\n"), (argv, err)
        # argparse reports an unknown option from the top parser: "crossentropy: error:"
        assert err.startswith((f"crossentropy {argv[0]}: error: ", "crossentropy: error: ")), (
            argv,
            err,
        )
        assert "Traceback" not in err and "Errno" not in err, (argv, err)
        assert out == "", (argv, out)
        # every input and earlier output as it was; no temporary or new file left
        assert _snapshot(folder) == before, argv


def _subprocess(argv: list[str], folder: Path) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "100"}
    r = subprocess.run(
        [*CLI, *argv],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    return r.returncode, r.stdout, r.stderr


def _in_process(argv: list[str], folder: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(folder)  # a demo that ran by mistake writes there, not in the tree
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code
    finally:
        os.chdir(cwd)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- properties


@SUBPROCESS
@given(case=bad_reports())
def test_report_bad_input_in_a_real_process(case):
    _check_refused(case, _subprocess)


@SUBPROCESS
@given(case=st.one_of(bad_measures(), bad_demos()))
def test_measures_and_demo_bad_arguments_in_a_real_process(case):
    _check_refused(case, _subprocess)


@given(case=commands)
def test_bad_input_in_process(case):
    _check_refused(case, _in_process)


def test_demo_refuses_an_empty_out_path_before_training():
    # Path("") is ".": the demo used to train and write into the working folder.
    case = Case(["demo", "--out", "", "--steps", "1000000"])
    _check_refused(case, _subprocess)

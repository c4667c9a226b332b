"""CLI errors: one readable line on stderr, a non-zero exit, no traceback.

Signals and missing optional dependencies are checked in a subprocess (a real process's
exit status and stderr); the rest in-process through ``crossentropy.cli.main``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from crossentropy.cli import main, one_line

CSV = "label,a,b\na,0.9,0.1\nb,0.2,0.8\na,0.6,0.4\n"
GROUPED = "label,g,a,b\na,1,0.9,0.1\nb,1,0.9,0.1\na,2,0.6,0.4\n"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, message: str) -> None:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err, err
    assert "Traceback" not in err and "Errno" not in err, err


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "x.csv"
    path.write_text(CSV)
    return path


# ----------------------------------------------------------------------------- signals

# Runs the report with a figure writer that writes some bytes, says so, then hangs: the
# signal arrives while the temporary file is open.
_SLOW_PLOT = textwrap.dedent(
    """
    import sys, time
    import crossentropy.cli._report_plot as plot

    def slow(report, file, fmt="png"):
        file.write(b"half a figure")
        file.flush()
        print("writing", file=sys.stderr, flush=True)
        time.sleep(60)

    plot.save_plot = slow
    from crossentropy.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_signal_mid_write(csv, tmp_path, signum, code, word):
    out = tmp_path / "figure.png"
    out.write_bytes(b"the old figure")
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PLOT, "report", str(csv), "--plot", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    assert line == "writing\n", line + process.stderr.read()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]  # mid-write
    process.send_signal(signum)
    rest = process.stderr.read()
    assert process.wait(timeout=30) == code
    assert rest == f"crossentropy report: {word}\n"
    assert out.read_bytes() == b"the old figure"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    assert csv.read_text() == CSV


def test_sigint_while_blocked_on_a_fifo(csv, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-m", "crossentropy.cli", "report", str(csv), "--json", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()  # the table is printed: the open of the FIFO now waits
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert err == "crossentropy report: interrupted\n"
    assert os.path.exists(fifo) and not os.path.isfile(fifo)


def test_broken_pipe_is_quiet(tmp_path):
    read, write = os.pipe()
    os.close(read)
    r = subprocess.run(
        [sys.executable, "-m", "crossentropy.cli", "entropy", "0.5,0.5"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(write)
    assert r.returncode == 141
    assert r.stderr == ""


# ----------------------------------------------------------------------------- missing extras


def run_without(modules: list[str], *argv: str) -> subprocess.CompletedProcess:
    """The CLI in a process where importing each of ``modules`` fails."""
    code = (
        "import sys\n"
        f"for name in {modules!r}:\n"
        "    sys.modules[name] = None\n"
        "from crossentropy.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("missing", "argv", "message"),
    [
        (["rich"], ["demo"], "crossentropy demo needs rich: pip install 'crossentropy[cli]'"),
        (["scipy"], ["demo"], "crossentropy demo needs scipy: pip install 'crossentropy[cli]'"),
        (
            ["matplotlib"],
            ["demo"],
            "crossentropy demo needs matplotlib: pip install 'crossentropy[cli]'",
        ),
        (["torch"], ["demo"], "crossentropy demo needs torch: pip install 'crossentropy[torch]'"),
        (
            ["scipy"],
            ["report", "{grouped}", "--group", "g"],
            "crossentropy report needs scipy: pip install 'crossentropy[cli]'",
        ),
        (
            ["matplotlib"],
            ["report", "{csv}", "--plot", "{tmp}/f.png"],
            "crossentropy report needs matplotlib: pip install 'crossentropy[cli]'",
        ),
        (
            ["pyarrow"],
            ["report", "{csv}"],
            "reading this input needs pyarrow: pip install 'crossentropy[cli]'",
        ),
    ],
)
def test_missing_optional_dependency(tmp_path, missing, argv, message):
    (tmp_path / "x.csv").write_text(CSV)
    (tmp_path / "g.csv").write_text(GROUPED)
    names = {"csv": tmp_path / "x.csv", "grouped": tmp_path / "g.csv", "tmp": tmp_path}
    argv = [a.format(**names) for a in argv]
    if argv[0] == "demo":
        argv += ["--out", str(tmp_path / "demo"), "--steps", "100000"]
    started = time.perf_counter()
    r = run_without(missing, *argv)
    assert r.returncode == 2, r.stderr
    assert_one_line(r.stderr, message)
    assert r.stderr.startswith(f"crossentropy {argv[0]}: error: ")
    assert time.perf_counter() - started < 60  # refused before the work
    assert not (tmp_path / "f.png").exists() and not (tmp_path / "demo" / "demo.json").exists()


def test_report_without_rich_prints_the_plain_table(csv):
    r = run_without(["rich"], "report", str(csv))
    assert r.returncode == 0, r.stderr
    assert "cross-entropy H" in r.stdout


# ----------------------------------------------------------------------------- Parquet keys


@pytest.fixture
def parquet(tmp_path: Path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    def write(**columns) -> Path:
        path = tmp_path / "x.parquet"
        pq.write_table(pa.table(columns), path)
        return path

    return pa, write


def test_parquet_list_label(capsys, parquet):
    pa, write = parquet
    path = write(label=pa.array([["a"], ["b"]]), a=[0.5, 0.5], b=[0.5, 0.5])
    code, _, err = run_main(capsys, "report", str(path))
    assert code == 2
    assert_one_line(err, f"label column 'label' in {str(path)!r} holds list<")
    assert err.endswith("string>; it must hold strings or numbers\n"), err


def test_parquet_struct_group(capsys, parquet):
    pa, write = parquet
    group = pa.array([{"x": 1}, {"x": 2}])
    path = write(label=["a", "b"], g=group, a=[0.5, 0.5], b=[0.5, 0.5])
    code, _, err = run_main(capsys, "report", str(path), "--group", "g")
    assert code == 2
    assert_one_line(err, "group column 'g' in")
    assert "holds struct<x: int64>; it must hold strings or numbers" in err


def test_parquet_null_group(capsys, parquet):
    pa, write = parquet
    path = write(label=["a", "b", "a"], g=pa.array(["u", None, "v"]), a=[0.5] * 3, b=[0.5] * 3)
    code, _, err = run_main(capsys, "report", str(path), "--group", "g")
    assert code == 2
    assert_one_line(
        err,
        f"missing group value in column 'g' of {str(path)!r}, row 1: every row needs a group",
    )
    assert "zero_copy" not in err


def test_csv_null_group_names_the_line(capsys, tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    from crossentropy.cli import _report_read

    path = tmp_path / "g.csv"
    path.write_text(GROUPED)
    source = _report_read.open_source(str(path), group="g")
    with pytest.raises(ValueError, match=r"column 'g' of '.*g\.csv', row 2 \(line 4\)"):
        source._check_groups(pa.array(["1", "1", None]), 0)


# ----------------------------------------------------------------------------- inputs


def test_unreadable_directory_is_not_no_such_file(capsys, tmp_path, monkeypatch):
    # As root every directory is searchable: the denial is simulated.
    path = tmp_path / "locked" / "x.csv"
    real_stat = os.stat

    def stat(p, *args, **kwargs):
        if str(p) == str(path):
            raise PermissionError(13, "Permission denied", str(p))
        return real_stat(p, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    code, _, err = run_main(capsys, "report", str(path))
    assert code == 2
    assert_one_line(err, f"cannot read {str(path)!r}: permission denied (on a directory of")
    assert "no such file" not in err


def test_unreadable_file(capsys, csv, monkeypatch):
    import builtins

    real_open = builtins.open

    def deny(p, *args, **kwargs):
        if str(p) == str(csv):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    code, _, err = run_main(capsys, "report", str(csv))
    assert code == 2
    assert_one_line(err, f"cannot read {str(csv)!r}: permission denied")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.csv", "no such file: 'missing.csv'"),
        ("x.csv/y.csv", "no such file: 'x.csv/y.csv' (a part of the path is a file)"),
        ("", "the input path is empty"),
    ],
)
def test_missing_inputs(capsys, csv, monkeypatch, name, message):
    monkeypatch.chdir(csv.parent)
    code, _, err = run_main(capsys, "report", name)
    assert code == 2
    assert_one_line(err, message)


def test_fifo_input_is_refused(capsys, tmp_path):
    fifo = tmp_path / "in.csv"
    os.mkfifo(fifo)
    code, _, err = run_main(capsys, "report", str(fifo))
    assert code == 2
    assert_one_line(err, "is not a regular file (the report reads a file twice)")


# ----------------------------------------------------------------------------- one line


def test_control_characters_are_escaped(capsys, csv):
    code, _, err = run_main(capsys, "report", str(csv), "--label", "a\nb\rc")
    assert code == 2
    assert_one_line(err, "no label column 'a\\nb\\rc'")
    code, _, err = run_main(capsys, "report", str(csv), "--classes", "a,b\u2028c")
    assert code == 2
    assert_one_line(err, "no class column 'b\\u2028c'")
    assert len(err.splitlines()) == 1, err


def test_one_line():
    assert one_line("a\nb\r\tc\x00\x85\u2028d é") == "a\\nb\\r\\tc\\x00\\x85\\u2028d é"
    assert len(one_line("".join(map(chr, range(0x20))) + "\x1c\x1d\x1e").splitlines()) == 1


def test_os_errors_are_readable(capsys, monkeypatch):
    from crossentropy.cli import _measures

    def boom(args):
        raise PermissionError(13, "Permission denied", "/some/where")

    monkeypatch.setattr(_measures, "_run", boom)
    code, _, err = run_main(capsys, "entropy", "1")
    assert code == 2
    assert_one_line(err, "crossentropy entropy: error: '/some/where': permission denied")


def test_help_states_the_base_rule(capsys):
    for command in ("entropy", "kl", "report", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "any finite number > 1" in out, command
        assert "> 0" not in out, command


def test_a_module_of_the_package_failing_to_import_is_not_a_missing_extra(monkeypatch):
    from crossentropy.cli import _measures

    def broken(args):
        raise ModuleNotFoundError("No module named 'crossentropy.gone'", name="crossentropy.gone")

    monkeypatch.setattr(_measures, "_run", broken)
    with pytest.raises(ModuleNotFoundError, match=r"crossentropy\.gone"):
        main(["entropy", "1"])

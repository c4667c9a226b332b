"""Where the CLI's outputs go: files, links, device nodes, FIFOs, file descriptors.

An output is written by what its path is: a regular file (or a new path) by a temporary
file and a rename, a symbolic link on its target, a character device or FIFO directly;
a directory is refused before any work.  Device nodes and FIFOs are made in tmp_path,
never the real /dev/null.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from crossentropy.cli import _files, main

CSV = "label,a,b\na,0.9,0.1\nb,0.2,0.8\na,0.6,0.4\n"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "x.csv"
    path.write_text(CSV)
    return path


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err, err
    assert "Traceback" not in err and "Errno" not in err and ".part" not in err, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def char_device(path: Path) -> Path:
    """A node like /dev/null (same major and minor numbers) at ``path``, or skip."""
    null = os.stat("/dev/null").st_rdev
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, null)
    except (PermissionError, OSError) as error:
        pytest.skip(f"cannot make a device node here: {error}")
    return path


# ----------------------------------------------------------------------------- regular files


def test_new_and_existing_regular_file(capsys, csv, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = run_main(capsys, "report", str(csv), "--json", str(out))
    assert code == 0, err
    assert json.loads(out.read_text())["n"] == 3
    out.write_text("stale")
    out.chmod(0o600)
    code, _, err = run_main(capsys, "report", str(csv), "--json", str(out))
    assert code == 0, err
    assert json.loads(out.read_text())["n"] == 3
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # the file's mode is kept
    assert leftovers(tmp_path) == []
    assert csv.read_text() == CSV


def test_symlink_replaces_its_target_and_stays_a_link(capsys, csv, tmp_path):
    (tmp_path / "reports").mkdir()
    target = tmp_path / "reports" / "2026.json"
    target.write_text("stale")
    link = tmp_path / "latest.json"
    link.symlink_to(Path("reports") / "2026.json")
    code, _, err = run_main(capsys, "report", str(csv), "--json", str(link))
    assert code == 0, err
    assert link.is_symlink()
    assert json.loads(target.read_text())["n"] == 3
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "reports") == []


def test_dangling_symlink_creates_its_target(capsys, csv, tmp_path):
    link = tmp_path / "latest.json"
    link.symlink_to("new.json")
    code, _, err = run_main(capsys, "report", str(csv), "--json", str(link))
    assert code == 0, err
    assert link.is_symlink() and json.loads((tmp_path / "new.json").read_text())["n"] == 3


# ----------------------------------------------------------------------------- device, FIFO, fd


def test_character_device_is_written_not_replaced(capsys, csv, tmp_path):
    node = char_device(tmp_path / "null")
    code, _, err = run_main(capsys, "report", str(csv), "--json", str(node))
    assert code == 0, err
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert os.lstat(node).st_rdev == os.stat("/dev/null").st_rdev
    plot_node = char_device(tmp_path / "null2")
    code, _, err = run_main(capsys, "report", str(csv), "--plot", str(plot_node))
    assert code == 0, err
    assert stat.S_ISCHR(os.lstat(plot_node).st_mode)
    assert leftovers(tmp_path) == []


def test_fifo_is_written_not_replaced(capsys, csv, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as f:
            received.append(f.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    code, _, err = run_main(capsys, "report", str(csv), "--json", str(fifo))
    thread.join(timeout=30)
    assert code == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(received[0])["n"] == 3
    assert leftovers(tmp_path) == []


def test_fd_paths_write_to_the_descriptor(capfd, monkeypatch):
    def no_rename(*args):
        raise AssertionError("a file descriptor's path must never be renamed over")

    monkeypatch.setattr(os, "replace", no_rename)
    for path in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        _files.write_output(path, lambda f: f.write(b"bytes\n"))
        assert capfd.readouterr().out == "bytes\n"
    _files.write_output("/dev/stderr", lambda f: f.write(b"err\n"))
    assert capfd.readouterr().err == "err\n"
    assert os.path.islink("/dev/stdout")


def test_json_dev_fd_1_in_a_process(csv):
    r = subprocess.run(
        [sys.executable, "-m", "crossentropy.cli", "report", str(csv), "--json", "/dev/fd/1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert '"cross_entropy"' in r.stdout  # the table, then the JSON, both on stdout
    assert r.stdout.rstrip().endswith("}")


# ----------------------------------------------------------------------------- refused paths


@pytest.mark.parametrize(
    ("flag", "name", "message"),
    [
        ("--json", "", "--json: the path is empty"),
        ("--plot", "", "--plot: the path is empty"),
        ("--json", "missing_dir/", "--json 'missing_dir/': no such directory"),
        ("--json", "sub", "--json 'sub': is a directory"),
        ("--plot", "sub", "--plot 'sub': is a directory"),
        ("--json", "sub/", "--json 'sub/': is a directory"),
        ("--json", "nodir/r.json", "--json 'nodir/r.json': no such directory"),
        ("--json", "x.csv/r.json", "x.csv' is not a directory"),
        ("--plot", "-", "--plot -: a figure is not written to standard output"),
        ("--plot", "r.xyz", "--plot 'r.xyz': unknown figure format '.xyz'; name it .png, .pdf"),
        ("--json", "x.csv", "--json 'x.csv' is the input file; refusing to overwrite it"),
    ],
)
def test_refused_outputs(capsys, csv, tmp_path, monkeypatch, flag, name, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    code, out, err = run_main(capsys, "report", "x.csv", flag, name)
    assert_one_line_error(code, err, message)
    assert out == ""  # refused before the work: no table
    assert not (tmp_path / "-").exists() and not (tmp_path / "missing_dir").exists()
    assert leftovers(tmp_path) == [] and csv.read_text() == CSV


def test_unwritable_directory(capsys, csv, tmp_path, monkeypatch):
    real_access = os.access
    folder = str(tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == folder else real_access(p, mode)
    )
    code, _, err = run_main(capsys, "report", str(csv), "--json", f"{folder}/r.json")
    assert_one_line_error(code, err, "permission denied: cannot write in the directory")


def test_write_errors_are_readable(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / ".r.json.abc.part"))

    monkeypatch.setattr(_files.tempfile, "mkstemp", full)
    with pytest.raises(
        _files.OutputError, match=r"^--json '.*r\.json': cannot write: no space"
    ) as e:
        _files.write_output(str(tmp_path / "r.json"), lambda f: None, "--json")
    assert ".part" not in str(e.value) and "Errno" not in str(e.value)


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")

    def fail(f):
        f.write(b"half")
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        _files.write_output(str(out), fail)
    assert out.read_text() == "old" and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- figure formats


@pytest.mark.parametrize(
    ("suffix", "magic"),
    [
        (".png", b"\x89PNG"),
        (".pdf", b"%PDF"),
        (".svg", b"<?xml"),
        (".PDF", b"%PDF"),
        ("", b"\x89PNG"),
    ],
)
def test_plot_format_from_suffix(capsys, csv, tmp_path, suffix, magic):
    out = tmp_path / f"figure{suffix}"
    code, _, err = run_main(capsys, "report", str(csv), "--plot", str(out))
    assert code == 0, err
    assert out.read_bytes().startswith(magic)


def test_plot_format_names():
    assert _files.plot_format("a.jpg") == "jpeg" and _files.plot_format("a.TIF") == "tiff"
    with pytest.raises(_files.OutputError, match=r"unknown figure format '\.gif'"):
        _files.plot_format("a.gif")


# ----------------------------------------------------------------------------- demo --out


def test_check_output_dir(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(_files.OutputError, match=r"^--out '.*afile': is not a directory$"):
        _files.check_output_dir(str(afile), "--out", ("demo.json",))
    with pytest.raises(_files.OutputError, match=r"'.*afile' is not a directory$"):
        _files.check_output_dir(str(afile / "deeper" / "out"), "--out")
    out = tmp_path / "out"
    (out / "demo.png").mkdir(parents=True)
    with pytest.raises(_files.OutputError, match=r"demo\.png': is a directory$"):
        _files.check_output_dir(str(out), "--out", ("demo.json", "demo.png"))
    _files.check_output_dir(str(tmp_path / "new" / "folder"), "--out", ("demo.json",))
    assert not (tmp_path / "new").exists()  # checked, not made
    with pytest.raises(_files.OutputError, match="--out: the path is empty"):
        _files.check_output_dir("", "--out")
    assert afile.read_text() == "keep"


def test_demo_out_existing_file_fails_before_training(capsys, tmp_path):
    pytest.importorskip("torch")
    afile = tmp_path / "afile"
    afile.write_text("keep")
    code, out, err = run_main(capsys, "demo", "--out", str(afile), "--steps", "100000")
    assert_one_line_error(code, err, "is not a directory")  # in a second, not after 1e5 steps
    assert out == "" and afile.read_text() == "keep"

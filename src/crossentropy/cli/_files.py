"""Output files: checked before the work, then written whole or not at all.

What a path names decides how it is written:

* a regular file, or a path that does not exist yet: a temporary file beside it, then a
  rename over it (the file is whole or untouched, never half written);
* a symbolic link: the same, on the file it points to (the link stays a link);
* a character device (``/dev/null``) or a FIFO: written directly, the node kept;
* ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``: written to that
  open file descriptor;
* a directory, a socket or a block device: refused.

Every failure is a :class:`OutputError` (a ValueError) with a one-line message that names
the path and the problem, never a temporary file's name or a bare ``[Errno N]``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable
from typing import IO

__all__ = [
    "OutputError",
    "check_output",
    "check_output_dir",
    "os_problem",
    "plot_format",
    "write_output",
]

# Formats matplotlib's Agg, PDF, PS and SVG backends write, by file suffix.
PLOT_FORMATS = {
    "png": "png",
    "pdf": "pdf",
    "svg": "svg",
    "svgz": "svgz",
    "eps": "eps",
    "ps": "ps",
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "tif": "tiff",
    "tiff": "tiff",
    "webp": "webp",
}

_FD_LINK = re.compile(r"/dev/(stdout|stderr|fd/(\d+))|/proc/self/fd/(\d+)")

_PROBLEMS = {
    errno.ENOENT: "no such file or directory",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "is a directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "read-only file system",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENXIO: "no reader at the other end",
    errno.EPIPE: "broken pipe",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EBADF: "the file descriptor is not open",
    errno.EFBIG: "the file is too large",
    errno.ETXTBSY: "the file is busy",
}


class OutputError(ValueError):
    """An output that cannot be written: the message names the path and the problem."""


def os_problem(error: OSError) -> str:
    """The problem of an OSError in a few words: ``"permission denied"``."""
    if error.errno in _PROBLEMS:
        return _PROBLEMS[error.errno]
    text = error.strerror or (os.strerror(error.errno) if error.errno else str(error))
    return text[:1].lower() + text[1:] if text else type(error).__name__


def _fd_of(path: str) -> int | None:
    """The file descriptor a path such as /dev/stdout names, else None."""
    match = (
        _FD_LINK.fullmatch(os.path.normpath(path)) if path.startswith(("/dev/", "/proc/")) else None
    )
    if match is None:
        return None
    name, fd, proc_fd = match.groups()
    if name == "stdout":
        return 1
    if name == "stderr":
        return 2
    return int(fd if fd is not None else proc_fd)


def _not_a_directory(path: str) -> str:
    """For a path failing with ENOTDIR: which part of it is a file."""
    part = os.path.dirname(os.path.abspath(path))
    while part != os.path.dirname(part) and not (os.path.lexists(part) and not os.path.isdir(part)):
        part = os.path.dirname(part)
    return (
        f"{part!r} is not a directory"
        if not os.path.isdir(part)
        else ("a part of the path is not a directory")
    )


def _fail(flag: str, path: str, problem: str) -> OutputError:
    return OutputError(f"{flag} {path!r}: {problem}")


def _check_folder(flag: str, path: str, folder: str) -> None:
    """The folder a new file ``path`` would go in exists and can be written."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise _fail(flag, path, f"no such directory {folder!r}") from None
    except NotADirectoryError:
        raise _fail(flag, path, _not_a_directory(folder)) from None
    except OSError as error:
        raise _fail(flag, path, f"{os_problem(error)} ({folder!r})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _fail(flag, path, f"{folder!r} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _fail(flag, path, f"permission denied: cannot write in the directory {folder!r}")


def check_output(path: str, flag: str) -> None:
    """Refuse, before any work, an output file ``path`` that could not be written.

    Raises
    ------
    OutputError
        For an empty path, a directory, a missing or unwritable parent directory, a
        socket or block device, a closed file descriptor, or a file that cannot be
        written.
    """
    if path == "":
        raise OutputError(f"{flag}: the path is empty")
    fd = _fd_of(path)
    if fd is not None:
        try:
            os.fstat(fd)
        except OSError:
            raise _fail(flag, path, f"file descriptor {fd} is not open") from None
        return
    if path.endswith(os.sep) or os.path.basename(path) in (".", ".."):
        if os.path.isdir(path):
            raise _fail(flag, path, "is a directory")
        raise _fail(flag, path, "no such directory")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _check_folder(flag, path, os.path.dirname(os.path.realpath(path)))
        return
    except NotADirectoryError:
        raise _fail(flag, path, _not_a_directory(path)) from None
    except OSError as error:
        raise _fail(flag, path, os_problem(error)) from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(flag, path, "is a directory")
    if stat.S_ISREG(st.st_mode):
        _check_folder(flag, path, os.path.dirname(os.path.realpath(path)))
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        if not os.access(path, os.W_OK):
            raise _fail(flag, path, "permission denied")
    else:
        raise _fail(flag, path, "is not a regular file, character device or FIFO")


def check_output_dir(path: str, flag: str, files: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output folder that could not be made or written.

    ``files`` are the names that will be written in it; each is checked like
    :func:`check_output`.
    """
    if path == "":
        raise OutputError(f"{flag}: the path is empty")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        # Made with its parents: the nearest existing ancestor must be a writable folder.
        ancestor = os.path.dirname(os.path.abspath(path))
        while not os.path.lexists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            raise _fail(flag, path, f"{ancestor!r} is not a directory") from None
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise _fail(
                flag, path, f"permission denied: cannot make a directory in {ancestor!r}"
            ) from None
        return
    except NotADirectoryError:
        raise _fail(flag, path, _not_a_directory(path)) from None
    except OSError as error:
        raise _fail(flag, path, os_problem(error)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _fail(flag, path, "is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise _fail(flag, path, "permission denied: cannot write in the directory")
    for name in files:
        check_output(os.path.join(path, name), flag)


def plot_format(path: str, flag: str = "--plot") -> str:
    """The figure format the suffix of ``path`` names (no suffix: PNG).

    Raises
    ------
    OutputError
        For ``-`` (a figure is not written to standard output) and an unknown suffix.
    """
    if path == "-":
        raise OutputError(
            f"{flag} -: a figure is not written to standard output; name a file such as report.png"
        )
    suffix = os.path.splitext(os.path.basename(path))[1].lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in PLOT_FORMATS:
        shown = ", ".join(f".{s}" for s in PLOT_FORMATS)
        raise _fail(flag, path, f"unknown figure format {'.' + suffix!r}; name it {shown}")
    return PLOT_FORMATS[suffix]


def write_output(path: str, write: Callable[[IO[bytes]], object], flag: str = "") -> None:
    """Write ``path`` by calling ``write(file)``: whole or not at all (see the module).

    ``flag`` (``"--json"``) prefixes error messages.
    """
    label = f"{flag} " if flag else ""
    try:
        _write(path, write, label)
    except OSError as error:
        raise OutputError(f"{label}{path!r}: cannot write: {os_problem(error)}") from None


def _write(path: str, write: Callable[[IO[bytes]], object], label: str) -> None:
    fd = _fd_of(path)
    if fd is not None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with os.fdopen(os.dup(fd), "wb") as f:
            write(f)
        return
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        with open(path, "wb") as f:
            write(f)
        return
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{label}{path!r} is not a regular file, character device or FIFO")
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise OutputError(f"{label}{path!r}: no such directory {folder!r}")
    _replace(target, write, None if st is None else stat.S_IMODE(st.st_mode))


def _replace(target: str, write: Callable[[IO[bytes]], object], mode: int | None) -> None:
    """A temporary file beside ``target``, then a rename over it."""
    fd, temp = tempfile.mkstemp(
        dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.", suffix=".part"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def write_atomic(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Former name of :func:`write_output`."""
    write_output(path, write)

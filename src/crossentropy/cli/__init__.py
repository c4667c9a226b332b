"""The ``crossentropy`` command.

Errors are one line on stderr and exit code 2, never a traceback; that includes a missing
optional dependency (the line names the extra to install).  Ctrl-C prints
``interrupted`` and exits 130, SIGTERM prints ``terminated`` and exits 143; either way a
half-written output's temporary file is removed and the output left as it was.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .. import __version__
from ._files import os_problem

__all__ = ["main"]

# "-1.5,2", "-nan,1", "-inf" are numbers, not options: argparse takes a token for an
# option when it starts with "-" unless it matches its negative-number pattern.
_NEGATIVE_NUMBERS = re.compile(r"^-(\d|\.\d|inf|nan)[^=]*$", re.IGNORECASE)

# The extra that brings an optional dependency, by top-level module.
_EXTRAS = {
    "rich": "cli",
    "matplotlib": "cli",
    "pyarrow": "cli",
    "scipy": "cli",
    "torch": "torch",
    "sklearn": "digits",
}


def one_line(text: str) -> str:
    """``text`` with control characters and line breaks escaped, as repr writes them."""
    return "".join(
        repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text
    )


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBERS

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    from . import _demo, _measures, _report

    parser = _Parser(
        prog="crossentropy",
        description="Entropy, cross-entropy and KL divergence: H(p,q) = D(p||q) + S(p).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    _demo.register(commands)
    _report.register(commands)
    _measures.register(commands)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that outputs in progress are cleaned up."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _missing(error: ImportError, command: str) -> str:
    name = (error.name or "").split(".")[0]
    if not name:
        return f"crossentropy {command}: error: {one_line(str(error))}"
    extra = _EXTRAS.get(name)
    install = f"pip install 'crossentropy[{extra}]'" if extra else f"pip install {name}"
    return f"crossentropy {command}: error: crossentropy {command} needs {name}: {install}"


def _needed(args: argparse.Namespace) -> list[str]:
    """The optional modules a command will import, checked before its work starts."""
    if args.command == "demo":
        return [
            "rich",
            "scipy",
            "torch",
            *([] if args.no_plot else ["matplotlib"]),
            *(["sklearn"] if args.dataset == "digits" else []),
        ]
    if args.command == "report":
        return [*(["scipy"] if args.group else []), *(["matplotlib"] if args.plot else [])]
    return []


def _error_text(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, BrokenPipeError):
        problem = os_problem(error)
        name = error.filename
        return f"{name!r}: {problem}" if name is not None else problem
    return str(error) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    command = "command"
    try:
        with _sigterm_raises():
            args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
            command = args.command
            try:
                for module in _needed(args):
                    importlib.import_module(module)
                return int(args.run(args) or 0)
            except ImportError as error:
                if (error.name or "").split(".")[0] == __name__.split(".")[0]:
                    raise  # a module of this package: a bug, not a missing extra
                print(_missing(error, command), file=sys.stderr)
                return 2
            except BrokenPipeError:
                # The reader went away (| head): stop quietly, as cat does.
                _silence_stdout()
                return 141
            except (ValueError, TypeError, OSError) as error:
                print(
                    f"crossentropy {command}: error: {one_line(_error_text(error))}",
                    file=sys.stderr,
                )
                return 2
    except KeyboardInterrupt:
        print(f"crossentropy {command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"crossentropy {command}: terminated", file=sys.stderr)
        return 143


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass

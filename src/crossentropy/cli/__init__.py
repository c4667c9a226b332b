"""The ``crossentropy`` command.

Errors are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from .. import __version__
from . import _demo, _measures, _report

__all__ = ["main"]

# "-1.5,2" is a list of logits, not an option: argparse would take it for one.
_NEGATIVE_NUMBERS = re.compile(r"^-(\d|\.\d|inf)", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    args_in = [" " + a if _NEGATIVE_NUMBERS.match(a) else a for a in args_in]
    parser = build_parser()
    args = parser.parse_args(args_in)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"crossentropy {args.command}: error: {message}", file=sys.stderr)
        return 2

"""``crossentropy report``: placeholder until the report lands (issue 4)."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Add the ``report`` subcommand (not yet built)."""

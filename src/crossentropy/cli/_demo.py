"""``crossentropy demo``: placeholder until the demo lands (issue 4)."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Add the ``demo`` subcommand (not yet built)."""

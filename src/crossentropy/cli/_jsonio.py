"""Strict JSON out: JSON has no infinity or NaN, so they are written as strings."""

from __future__ import annotations

import json
import math
from typing import Any


def _finite_or_text(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf", "nan"
    if isinstance(value, dict):
        return {k: _finite_or_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_text(v) for v in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` that writes +-inf and NaN as the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    return json.dumps(_finite_or_text(value), allow_nan=False, **options)

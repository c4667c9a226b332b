"""Puts this folder on ``sys.path``, so that the test modules in its subfolders import its
plain support modules (``_torch_oracles``, ``_measures_support``) by name, as the modules
in this folder itself do; nothing else (no fixtures, no hypothesis profile)."""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

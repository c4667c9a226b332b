"""pytest (doctest collection of ``src``): without Triton, skip the modules that import it."""

import importlib.util


def _has_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


collect_ignore = [] if _has_triton() else ["_kernels.py", "_dense.py", "_linear.py"]

"""pytest, repository root: settings for the doctest collection of ``src``.

Without Triton, the modules that import it at module level are not collected.  This file
lives here, not in the package, so that no pytest file ships in the wheel.
"""

import importlib.util


def _has_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


_TRITON_MODULES = ["_kernels.py", "_dense.py", "_linear.py"]
collect_ignore = (
    [] if _has_triton() else [f"src/crossentropy/torch/_triton/{name}" for name in _TRITON_MODULES]
)

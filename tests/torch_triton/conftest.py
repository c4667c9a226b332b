"""Run the Triton kernels on the CPU interpreter unless told otherwise.

``TRITON_INTERPRET`` must be set before a kernel is decorated, i.e. before
``crossentropy.torch._triton._kernels`` is imported (the package imports it lazily, so
setting it here, at collection, is early enough; if the doctest collection of ``src``
imported it first, it is reloaded).  On a GPU machine run the CUDA tests with
``TRITON_INTERPRET=0`` (benchmarks/gpu.sh does): the interpreter tests then skip.
"""

import importlib
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

_KERNELS = "crossentropy.torch._triton._kernels"
if os.environ["TRITON_INTERPRET"] not in ("", "0") and _KERNELS in sys.modules:
    module = sys.modules[_KERNELS]
    if type(module.row_kernel).__name__ != "InterpretedFunction":
        importlib.reload(module)

"""Run the Triton kernels on the CPU interpreter unless told otherwise.

``TRITON_INTERPRET`` must be set before a kernel is decorated, i.e. before
``crossentropy.torch._triton._kernels`` is imported (the package imports it lazily, so
setting it here, at collection, is early enough).  On a GPU machine run the CUDA tests
with ``TRITON_INTERPRET=0`` (benchmarks/gpu.sh does): the interpreter tests then skip.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

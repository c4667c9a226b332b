"""Shared helpers for the measures tests: the per-dtype tolerance table and array makers.

A plain module rather than a conftest.py, so that its name cannot clash with conftest
files elsewhere under tests/ and it sets no global hypothesis profile.

The tolerance table is the one place that says how close a result must be to a float64
reference computed (by scipy or torch, never by this library) from the *same* input
values, i.e. after the input was rounded to its dtype. float16 and bfloat16 inputs are
computed in float32 (DESIGN: "float16/bfloat16 inputs are computed and returned in
float32"), so they are held to float32's tolerance, not to their own much larger epsilon:
half precision must lose nothing beyond the rounding of its inputs.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# For the property tests: modest, no deadline (2 shared cores), applied per test rather
# than as a global profile so that other test modules keep their own settings.
PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Per input dtype: rtol and atol of a measure against a float64 reference on the same
# (rounded) inputs. atol is per nat of the quantities summed (see ``assert_close``).
TOLERANCE = {
    "float64": {"rtol": 1e-12, "atol": 1e-13},
    "float32": {"rtol": 2e-6, "atol": 2e-6},
    "float16": {"rtol": 2e-6, "atol": 2e-6},  # computed in float32
    "bfloat16": {"rtol": 2e-6, "atol": 2e-6},  # computed in float32
}

NUMPY_DTYPES = ["float64", "float32", "float16"]
TORCH_DTYPES = ["float64", "float32", "float16", "bfloat16"]

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None


def tolerance(dtype_name: str, scale: float = 1.0) -> dict[str, float]:
    """``rtol``/``atol`` for ``dtype_name``, ``atol`` scaled by the size of the terms."""
    tol = TOLERANCE[dtype_name]
    return {"rtol": tol["rtol"], "atol": tol["atol"] * max(scale, 1.0)}


def backends_and_dtypes() -> list:
    """``(backend, dtype)`` pairs: numpy has no bfloat16, so that one goes through torch."""
    pairs = [pytest.param("numpy", d, id=f"numpy-{d}") for d in NUMPY_DTYPES]
    marks = [] if HAS_TORCH else [pytest.mark.skip(reason="torch not installed")]
    pairs += [pytest.param("torch", d, id=f"torch-{d}", marks=marks) for d in TORCH_DTYPES]
    return pairs


def make(values: np.ndarray, backend: str, dtype: str):
    """``values`` (float64 NumPy) as an array of ``backend`` in ``dtype``."""
    values = np.asarray(values, dtype=np.float64)
    if backend == "numpy":
        return values.astype(dtype)
    if backend == "torch":
        import torch

        return torch.tensor(values, dtype=torch.float64).to(getattr(torch, dtype))
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(values.astype(dtype))
    raise AssertionError(backend)


def to_f64(x) -> np.ndarray:
    """The exact float64 values of an array of any backend and floating dtype."""
    if HAS_TORCH:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().to(torch.float64).cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def random_simplex(
    rng: np.random.Generator, shape, *, zeros: float = 0.0, concentration: float = 1.0
) -> np.ndarray:
    """Dirichlet rows along the last axis; a fraction ``zeros`` of entries exactly 0."""
    p = rng.gamma(concentration, size=shape)
    if zeros:
        p = np.where(rng.random(shape) < zeros, 0.0, p)
        # Keep at least one positive entry per row.
        first = np.zeros(shape, dtype=bool)
        first[..., 0] = True
        p = np.where(first & (p.sum(-1, keepdims=True) == 0), 1.0, p)
    return p / p.sum(-1, keepdims=True)

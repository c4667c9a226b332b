"""Array plumbing: namespaces, dtypes, axes and the ``base`` option.

Everything here looks at types and shapes only, never at the data, so it is cheap and
safe under tracing (``jax.jit``, ``torch.compile``).
"""

from __future__ import annotations

import math
import numbers
import operator
import sys
from typing import Any

import array_api_compat
import numpy as np

_HALF_DTYPES = ("float16", "bfloat16")


def namespace(*values: Any) -> Any:
    """The array namespace shared by ``values``; Python lists and scalars count as NumPy."""
    arrays = [v for v in values if array_api_compat.is_array_api_obj(v)]
    if not arrays:
        return array_api_compat.array_namespace(np.empty(0))
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError:
        kinds = ", ".join(sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays}))
        raise TypeError(f"p and q must come from the same array library, got {kinds}") from None


def as_array(xp: Any, value: Any, *, like: Any | None, floating: bool, name: str) -> Any:
    """``value`` as an array of ``xp``, on the device of ``like``.

    Python lists and scalars of numbers are taken as probabilities, so integers among
    them become the namespace's default floating dtype; arrays keep their dtype.  Strings,
    booleans, complex numbers and ragged nestings raise (NumPy would convert ``"0.5"``
    silently, or fail with a message about ``inhomogeneous`` shapes).
    """
    if array_api_compat.is_array_api_obj(value):
        return value
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an array of numbers, got the string {value!r}")
    device = array_api_compat.device(like) if like is not None else None
    try:
        host = np.asarray(value)
    except ValueError as error:
        if "inhomogeneous" in str(error) or "sequence" in str(error):
            raise ValueError(f"{name} is ragged: its nested sequences differ in length") from None
        raise
    if host.dtype.kind not in "iuf":
        what = _KINDS.get(host.dtype.kind, f"dtype {host.dtype}")
        if host.dtype.kind == "O" and _all_ints(host):
            what = "integers too large for int64"
        raise TypeError(f"{name} must be an array of real numbers, got {what}: {value!r}")
    array = xp.asarray(host if _is_numpy(xp) else value, device=device)
    if floating and not xp.isdtype(array.dtype, "real floating"):
        array = xp.astype(array, _default_float(xp, device))
    return array


_KINDS = {
    "U": "strings",
    "S": "bytes",
    "b": "booleans",
    "c": "complex numbers",
    "O": "objects",
    "M": "datetimes",
    "m": "timedeltas",
    "V": "records",
}


def _all_ints(host: np.ndarray) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in host.flat)


def _is_numpy(xp: Any) -> bool:
    return bool(array_api_compat.is_numpy_namespace(xp))


def refuse_masked(value: Any, name: str) -> None:
    """NumPy masked arrays would be read with their masked entries: refuse them."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy masked array, which is not supported (the masked entries "
            "would be read): pass a plain array, e.g. with the masked classes set to 0 "
            "probability or -inf logits"
        )


def check_flag(value: Any, name: str) -> bool:
    """``value`` as a bool; only ``True``/``False`` (or ``numpy.bool_``) are accepted."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_validate(value: Any, name: str = "validate") -> bool | None:
    """``validate`` (or another tri-state flag, ``name``): True, False or None (for
    ``validate`` the default: check where it costs nothing)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True, False or None, got {value!r}")


def checks_are_free(*arrays: Any) -> bool:
    """Whether reading these arrays' values costs no host synchronisation: what
    ``validate=None`` (the default of every measure and loss) decides by.

    True for NumPy arrays and Python data, CPU torch tensors outside ``torch.compile``
    and concrete JAX arrays on the CPU; False for tensors on an accelerator (or the meta
    device) and for traced values (``jax.jit``, ``torch.compile``).
    """
    torch = sys.modules.get("torch")  # a torch tensor exists only if torch is imported
    for x in arrays:
        if torch is not None and isinstance(x, torch.Tensor):
            if x.device.type != "cpu" or torch.compiler.is_compiling():
                return False
        elif array_api_compat.is_jax_array(x):
            import jax

            if isinstance(x, jax.core.Tracer):
                return False
            if any(d.platform != "cpu" for d in x.devices()):
                return False
    return True


def _default_float(xp: Any, device: Any) -> Any:
    info = xp.__array_namespace_info__()
    return info.default_dtypes(device=device)["real floating"]


def dtype_name(dtype: Any) -> str:
    """``float32``, ``bfloat16``... whatever the library."""
    return str(dtype).rsplit(".", 1)[-1]


def compute_dtype(xp: Any, *arrays: Any) -> Any:
    """The promoted floating dtype of ``arrays``, at least float32 (half types compute in it)."""
    dtype = xp.result_type(*arrays)
    if dtype_name(dtype) in _HALF_DTYPES:
        return xp.float32
    return dtype


def check_base(base: Any) -> float | None:
    """``log(base)``, or None for nats; rejects what is not a positive real number other than 1."""
    if base is None:
        return None
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be a positive real number or None, got {base!r}")
    value = float(base)
    if not (math.isfinite(value) and value > 0) or value == 1:
        raise ValueError(f"base must be a finite positive number other than 1, got {base!r}")
    return math.log(value)


def check_measure_base(base: Any) -> float | None:
    """``log(base)`` for the measures, or None for nats: ``base`` must be a number > 1.

    Stricter than :func:`check_base`: a base in (0, 1) has a negative logarithm and would
    make KL and JS divergences negative, breaking ``D >= 0`` and ``0 <= JS <= 1 bit``.
    """
    if base is None:
        return None
    if isinstance(base, (bool, np.bool_)) or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be a number > 1 or None, got {base!r}")
    value = float(base)
    if not (math.isfinite(value) and value > 1):
        raise ValueError(f"base must be a number > 1, got {base!r}")
    return math.log(value)


def check_axis(axis: Any, ndim: int) -> int:
    """``axis`` normalised to ``[0, ndim)`` for an array of ``ndim`` dimensions."""
    if isinstance(axis, bool):
        raise TypeError(f"axis must be an integer, got {axis!r}")
    try:
        index = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {axis!r}") from None
    if not -ndim <= index < ndim:
        raise ValueError(f"axis {index} is out of range for inputs with {ndim} dimensions")
    return index % ndim


def broadcast_shapes(name_a: str, a: tuple[int, ...], name_b: str, b: tuple[int, ...]) -> None:
    """Raise ValueError naming both arguments if ``a`` and ``b`` do not broadcast."""
    for x, y in zip(reversed(a), reversed(b), strict=False):
        if x != y and x != 1 and y != 1:
            raise ValueError(
                f"{name_a} and {name_b} do not broadcast: batch shapes {a} and {b} "
                "(the shapes without the event axis)"
            )


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy copy of ``x``, for error messages only."""
    if array_api_compat.is_torch_array(x):
        x = x.detach().cpu()
        if dtype_name(x.dtype) in _HALF_DTYPES:
            x = x.float()
        return x.numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def is_concrete_true(flag: Any) -> bool:
    """``bool(flag)``, or True where the value is traced (``jax.jit``) and cannot be read.

    Validation needs the data; under ``jit`` it is skipped rather than failing, as
    ``validate=False`` would skip it.
    """
    try:
        return bool(flag)
    except Exception as error:  # jax.errors.ConcretizationTypeError and its kin
        if type(error).__module__.startswith("jax"):
            return True
        raise

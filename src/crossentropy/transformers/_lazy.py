"""The logits that are never built: what a patched output layer returns in training.

A :class:`LazyLogits` has the shape, dtype and device of the logits the layer would have
returned, and no storage.  It remembers the layer's input and the layer, and records the
element-wise maps a model applies to its logits between the output layer and its
``loss_function`` -- Cohere's ``logits * logit_scale``, Gemma's
``cap * tanh(logits / cap)``, an upcast -- so that the fused loss can apply them to the
hidden states (a scale) and as its ``softcap``.  Any other operation on it raises, naming
the model: it would need the logits that do not exist.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

__all__ = ["LazyLogits", "PostOps", "UnsupportedLogitsOp"]


class UnsupportedLogitsOp(ValueError):
    """A model used its logits in a way the fused loss cannot follow."""


def _tanh_functions() -> set[Any]:
    return {torch.tanh, torch.Tensor.tanh, torch.nn.functional.tanh}


_MUL = {torch.mul, torch.multiply, torch.Tensor.mul, torch.Tensor.multiply, torch.Tensor.__mul__}
_RMUL = {torch.Tensor.__rmul__}
_DIV = {
    torch.div,
    torch.divide,
    torch.true_divide,
    torch.Tensor.div,
    torch.Tensor.divide,
    torch.Tensor.true_divide,
    torch.Tensor.__truediv__,
}
_TANH = _tanh_functions()
_CASTS = {torch.Tensor.float, torch.Tensor.to, torch.Tensor.type_as}
_IDENTITY = {torch.Tensor.contiguous}


def _number(value: Any) -> float | None:
    """A real Python (or NumPy) scalar, else None; a bool is not a scale."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


class PostOps:
    """``logits = post * tanh(pre * z)`` (or ``pre * z`` without tanh), ``z`` the layer's.

    The scales are kept as numerator and denominator so that Gemma's ``/ cap`` then
    ``* cap`` folds to exactly 1.
    """

    __slots__ = ("post", "pre", "tanh")

    def __init__(self) -> None:
        self.pre = [1.0, 1.0]  # numerator, denominator
        self.post = [1.0, 1.0]
        self.tanh = False

    def copy(self) -> PostOps:
        new = PostOps()
        new.pre, new.post, new.tanh = list(self.pre), list(self.post), self.tanh
        return new

    def scaled(self, factor: float, divide: bool) -> PostOps:
        new = self.copy()
        side = new.post if new.tanh else new.pre
        side[1 if divide else 0] *= factor
        return new

    def with_tanh(self) -> PostOps | None:
        if self.tanh:
            return None  # tanh(tanh(.)) is no softcap
        new = self.copy()
        new.tanh = True
        return new

    def loss_form(self) -> tuple[float, float | None]:
        """``(scale, softcap)`` with ``logits = softcap * tanh(scale * z / softcap)``, or
        ``scale * z`` with ``softcap`` None."""
        pre = self.pre[0] / self.pre[1] if self.pre[0] != self.pre[1] else 1.0
        if not self.tanh:
            return pre, None
        cap = self.post[0] / self.post[1]
        # post * tanh(pre z) = cap tanh((pre cap) z / cap)
        if self.pre[0] * self.post[0] == self.pre[1] * self.post[1]:
            return 1.0, cap
        return pre * cap, cap

    def __repr__(self) -> str:
        scale, cap = self.loss_form()
        return f"PostOps(scale={scale}, softcap={cap})"


class LazyLogits(torch.Tensor):
    """Stands for ``head(hidden)`` followed by :attr:`post`, without computing it.

    ``logits`` is the materialised tensor when the patch was asked to return the logits
    too (the same maps are then applied to it for real), else None.
    """

    hidden: torch.Tensor
    head: torch.nn.Module
    post: PostOps
    logits: torch.Tensor | None
    model_name: str

    @staticmethod
    def __new__(
        cls,
        hidden: torch.Tensor,
        head: torch.nn.Module,
        vocab: int,
        *,
        model_name: str,
        post: PostOps | None = None,
        logits: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> LazyLogits:
        shape = (*hidden.shape[:-1], vocab)
        out = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls,
            shape,
            dtype=dtype if dtype is not None else hidden.dtype,
            device=hidden.device,
            requires_grad=False,
        )
        out.hidden = hidden
        out.head = head
        out.post = post if post is not None else PostOps()
        out.logits = logits
        out.model_name = model_name
        return out

    def _derive(self, post: PostOps, logits: torch.Tensor | None, dtype: torch.dtype | None):
        return LazyLogits(
            self.hidden,
            self.head,
            self.shape[-1],
            model_name=self.model_name,
            post=post,
            logits=logits,
            dtype=dtype if dtype is not None else self.dtype,
        )

    def __repr__(self) -> str:  # type: ignore[override]
        return (
            f"LazyLogits(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"{self.post!r}; not materialised)"
        )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        lazy = [a for a in args if isinstance(a, LazyLogits)]
        if len(lazy) == 1 and not any(isinstance(v, LazyLogits) for v in kwargs.values()):
            (self,) = lazy
            result = self._apply(func, args, kwargs)
            if result is not NotImplemented:
                return result
        if getattr(func, "__name__", "") == "__get__" or func in _METADATA:
            # Shape, dtype, device, requires_grad, ...: the wrapper has them all.
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        raise _unsupported(lazy[0] if lazy else None, func)

    def _apply(self, func, args, kwargs):
        real = None
        if self.logits is not None:
            real = func(*[self.logits if a is self else a for a in args], **kwargs)
        if func in _MUL or func in _RMUL or func in _DIV:
            if kwargs or len(args) != 2:
                return NotImplemented
            if func in _DIV and args[0] is not self:
                return NotImplemented  # c / logits
            other = args[1] if args[0] is self else args[0]
            factor = _number(other)
            if factor is None or factor == 0.0:
                return NotImplemented
            return self._derive(self.post.scaled(factor, func in _DIV), real, None)
        if func in _TANH:
            if kwargs or len(args) != 1:
                return NotImplemented
            post = self.post.with_tanh()
            if post is None:
                return NotImplemented
            return self._derive(post, real, None)
        if func in _CASTS:
            dtype = _cast_dtype(self, func, args[1:], kwargs)
            if dtype is None:
                return NotImplemented
            return self._derive(self.post, real, dtype)
        if func in _IDENTITY and len(args) == 1 and not kwargs:
            return self._derive(self.post, real, None)
        return NotImplemented

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[override]
        lazy = next(
            (a for a in (*args, *(kwargs or {}).values()) if isinstance(a, LazyLogits)), None
        )
        raise _unsupported(lazy, func)


def _cast_dtype(self: LazyLogits, func, args, kwargs) -> torch.dtype | None:
    """The dtype of ``.float()``, ``.to(dtype)``, ``.to(same device)``, ``.type_as(t)``."""
    if func is torch.Tensor.float:
        return torch.float32 if not args and not kwargs else None
    if func is torch.Tensor.type_as:
        if len(args) == 1 and isinstance(args[0], torch.Tensor) and not kwargs:
            return args[0].dtype if args[0].dtype.is_floating_point else None
        return None
    # Tensor.to: a dtype and/or this very device, nothing else (no copy=, no memory_format=).
    if set(kwargs) - {"dtype", "device", "non_blocking"}:
        return None
    dtype = kwargs.get("dtype")
    device = kwargs.get("device")
    for a in args:
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, (torch.device, str)):
            device = a
        else:
            return None
    if device is not None and not _same_device(torch.device(device), self.device):
        return None
    if dtype is not None and not dtype.is_floating_point:
        return None
    return dtype if dtype is not None else self.dtype


def _same_device(device: torch.device, here: torch.device) -> bool:
    return device == here or (device.index is None and device.type == here.type)


_METADATA = {
    torch.Tensor.size,
    torch.Tensor.dim,
    torch.Tensor.ndimension,
    torch.Tensor.numel,
    torch.Tensor.nelement,
    torch.Tensor.is_contiguous,
    torch.Tensor.is_floating_point,
    torch.Tensor.is_complex,
    torch.Tensor.get_device,
    torch.Tensor.element_size,
    torch.Tensor.stride,
    torch.Tensor.__len__,
    torch.is_floating_point,
    torch.is_complex,
    torch.numel,
}


def _unsupported(lazy: LazyLogits | None, func) -> UnsupportedLogitsOp:
    name = lazy.model_name if lazy is not None else "the model"
    what = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return UnsupportedLogitsOp(
        f"crossentropy.transformers: {name} applied {what} to its logits in a patched "
        "training call; the fused loss never builds the logits and follows only scalar "
        "multiplication and division, tanh (a softcap) and dtype casts between the output "
        "layer and the loss. This model cannot be patched: call "
        "crossentropy.transformers.unpatch(model)."
    )

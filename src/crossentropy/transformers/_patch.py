"""patch / unpatch: the fused loss in a Hugging Face causal LM, from the structure they share.

Every causal LM in ``transformers`` >= 5 ends its ``forward`` the same way::

    logits = self.lm_head(hidden_states[:, slice_indices, :])   # the output embedding
    ... element-wise maps of the logits (a scale, a softcap) ...
    loss = self.loss_function(logits, labels, vocab_size, **kwargs)

Three instance attributes change, nothing else; no class and no ``forward`` is copied:

* ``model.forward``: a wrapper that marks a training call with labels (and drops the
  logits from its output unless asked for them);
* the output layer's ``forward`` (each copy of it under PEFT's ``modules_to_save``): in a
  marked call it returns a :class:`~._lazy.LazyLogits` instead of the logits;
* ``model.loss_function``: the fused loss when it receives a ``LazyLogits``, the model's own
  loss otherwise.

Each patched object keeps what it had in ``__dict__`` under :data:`_SAVED`, so that
``unpatch`` puts back exactly that.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import types
from typing import Any

import torch

from ._lazy import LazyLogits

__all__ = ["patch", "unpatch"]

#: Per patched object: ``{attribute: previous value in __dict__ or _MISSING}``.
_SAVED = "_crossentropy_patch_saved"
#: On the patched model: its :class:`_Options`.
_OPTIONS = "_crossentropy_patch_options"


class _MISSING:
    """Nothing was in ``__dict__`` (a class: ``deepcopy`` keeps it the same object)."""


class _Active(threading.local):
    """The options of the patched model whose training forward is running in this thread,
    else None (an attribute, not a ContextVar: dynamo traces it without a graph break)."""

    options: _Options | None = None


_ACTIVE = _Active()


@dataclasses.dataclass(frozen=True)
class _Options:
    z_loss: float
    label_smoothing: float
    chunk_size: int | None
    return_logits: bool
    #: The patched model's class name, for error messages.
    model_name: str
    #: Where ``labels`` sits among the positional arguments of the model's forward.
    labels_position: int


# --------------------------------------------------------------------------- structure


def _refuse(model: Any, why: str) -> ValueError:
    return ValueError(
        f"crossentropy.transformers.patch: cannot patch {type(model).__name__}: {why}"
    )


def _transformers():
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "crossentropy.transformers needs Hugging Face transformers >= 5: "
            "pip install 'crossentropy[transformers]'"
        ) from exc
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        raise ImportError(
            f"crossentropy.transformers needs transformers >= 5, found {transformers.__version__}"
        )
    return transformers


def _base_model(model: Any) -> torch.nn.Module:
    """The ``transformers`` model inside a PEFT model (or the model itself)."""
    if type(model).__module__.startswith("peft.") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _is_peft_lora_layer(module: torch.nn.Module) -> bool:
    return type(module).__module__.startswith("peft.") and hasattr(module, "base_layer")


def _head_linears(model: Any, head: Any) -> list[torch.nn.Linear]:
    """The ``nn.Linear`` modules that compute the logits: the output embedding, or under
    PEFT's ``modules_to_save`` the original and each trainable copy."""
    if isinstance(head, torch.nn.Linear) and not _is_peft_lora_layer(head):
        heads = [head]
    elif hasattr(head, "original_module") and isinstance(
        getattr(head, "modules_to_save", None), torch.nn.ModuleDict
    ):
        heads = [head.original_module, *head.modules_to_save.values()]
    elif _is_peft_lora_layer(head):
        raise _refuse(
            model,
            "its output layer carries a LoRA adapter (peft target_modules includes it), "
            "which adds to the logits; train it with modules_to_save instead",
        )
    else:
        raise _refuse(
            model,
            f"its output embedding is a {type(head).__name__}, not an nn.Linear "
            "(or PEFT's modules_to_save wrapper of one)",
        )
    for linear in heads:
        if not isinstance(linear, torch.nn.Linear) or _is_peft_lora_layer(linear):
            raise _refuse(model, f"its output layer holds a {type(linear).__name__}")
        weight = linear.weight
        if weight.ndim != 2 or not weight.dtype.is_floating_point:
            raise _refuse(
                model,
                f"its output layer's weight is {weight.dtype} of shape {tuple(weight.shape)} "
                "(quantised?); the fused loss needs a floating (vocabulary, hidden) matrix",
            )
    return heads


def _check(model: Any) -> tuple[torch.nn.Module, list[torch.nn.Linear]]:
    if not isinstance(model, torch.nn.Module):
        raise _refuse(model, "it is not a torch.nn.Module")
    transformers = _transformers()
    base = _base_model(model)
    if not isinstance(base, transformers.PreTrainedModel):
        raise _refuse(base, "it is not a transformers PreTrainedModel")
    from transformers.loss.loss_utils import ForCausalLMLoss

    loss = base.__dict__.get("_loss_function")
    if isinstance(loss, _FusedLoss):
        loss = loss.original
    if loss is None:
        loss = base.loss_function
    if loss is not ForCausalLMLoss:
        name = getattr(loss, "__name__", type(loss).__name__)
        raise _refuse(
            base,
            f"its loss_function is {name}, not transformers' ForCausalLMLoss "
            "(only causal language models are patched)",
        )
    forward = inspect.unwrap(type(base).forward)
    code = getattr(forward, "__code__", None)
    if code is None or "loss_function" not in code.co_names:
        raise _refuse(base, "its forward does not call self.loss_function")
    if "labels" not in inspect.signature(forward).parameters:
        raise _refuse(base, "its forward takes no labels")
    head = base.get_output_embeddings()
    if head is None:
        raise _refuse(base, "it has no output embedding (get_output_embeddings() is None)")
    return base, _head_linears(base, head)


# --------------------------------------------------------------------------- the patches


def _save(obj: Any, name: str, value: Any) -> None:
    """Set ``obj.name = value`` in its ``__dict__``, remembering what was there."""
    saved = obj.__dict__.setdefault(_SAVED, {})
    if name not in saved:
        saved[name] = obj.__dict__.get(name, _MISSING)
    obj.__dict__[name] = value


def _restore(obj: Any) -> None:
    saved = obj.__dict__.pop(_SAVED, None)
    if saved is None:
        return
    for name, value in saved.items():
        if value is _MISSING:
            obj.__dict__.pop(name, None)
        else:
            obj.__dict__[name] = value


def _original(obj: Any, name: str) -> Any:
    """The attribute as it was before the patch (bound to ``obj``)."""
    previous = obj.__dict__.get(_SAVED, {}).get(name, _MISSING)
    if previous is not _MISSING:
        return previous
    return types.MethodType(getattr(type(obj), name), obj)


def _call_original(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """``_original(obj, name)(*args, **kwargs)``, in a form dynamo traces (no MethodType)."""
    previous = obj.__dict__.get(_SAVED, {}).get(name, _MISSING)
    if previous is not _MISSING:
        return previous(*args, **kwargs)
    return getattr(type(obj), name)(obj, *args, **kwargs)


def _labels(options: _Options, args: tuple, kwargs: dict) -> Any:
    if "labels" in kwargs:
        return kwargs["labels"]
    position = options.labels_position
    return args[position] if 0 <= position < len(args) else None


def _model_forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    options = self.__dict__.get(_OPTIONS)
    if options is None or not self.training or _labels(options, args, kwargs) is None:
        return _call_original(self, "forward", *args, **kwargs)
    outer, _ACTIVE.options = _ACTIVE.options, options
    try:
        output = _call_original(self, "forward", *args, **kwargs)
    finally:
        _ACTIVE.options = outer
    return _finish_output(output)


def _finish_output(output: Any) -> Any:
    """Replace the ``LazyLogits`` in the model's output: by None, or the real logits."""

    def real(value: Any) -> Any:
        return value.logits if isinstance(value, LazyLogits) else value

    if isinstance(output, tuple):
        return type(output)(real(v) for v in output if not _is_empty_lazy(v))
    from transformers.utils import ModelOutput

    if isinstance(output, ModelOutput):
        if not any(isinstance(v, LazyLogits) for v in output.values()):
            return output
        fields = {k: real(v) for k, v in output.items()}
        return type(output)(**fields)
    return output


def _is_empty_lazy(value: Any) -> bool:
    return isinstance(value, LazyLogits) and value.logits is None


def _head_forward(self: torch.nn.Linear, input: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    options = _ACTIVE.options
    if options is None or args or kwargs or not isinstance(input, torch.Tensor):
        return _call_original(self, "forward", input, *args, **kwargs)
    logits = _call_original(self, "forward", input) if options.return_logits else None
    return _lazy_logits(input, self, options, logits)


@torch.compiler.disable
def _lazy_logits(
    input: torch.Tensor, self: torch.nn.Linear, options: _Options, logits: torch.Tensor | None
) -> LazyLogits:
    # Made eagerly: dynamo cannot trace the creation of a tensor subclass.
    return LazyLogits(
        input,
        self,
        self.weight.shape[0],
        model_name=options.model_name,
        logits=logits,
        dtype=logits.dtype if logits is not None else _output_dtype(input, self.weight),
    )


def _output_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.result_type(hidden, weight) if hidden.dtype != weight.dtype else hidden.dtype


class _FusedLoss:
    """``model.loss_function`` while patched: ``ForCausalLMLoss``'s contract, fused."""

    def __init__(self, original: Any, options: _Options) -> None:
        self.original = original
        self.options = options

    def __call__(
        self,
        logits: Any,
        labels: torch.Tensor,
        vocab_size: int | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        ignore_index: int = -100,
        shift_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if not isinstance(logits, LazyLogits):
            return self.original(
                logits,
                labels,
                vocab_size,
                num_items_in_batch=num_items_in_batch,
                ignore_index=ignore_index,
                shift_labels=shift_labels,
                **kwargs,
            )
        from ._loss import fused_causal_lm_loss

        return fused_causal_lm_loss(
            logits,
            labels,
            num_items_in_batch=num_items_in_batch,
            ignore_index=ignore_index,
            shift_labels=shift_labels,
            z_loss=self.options.z_loss,
            label_smoothing=self.options.label_smoothing,
            chunk_size=self.options.chunk_size,
        )


def _signature_forward(signature: inspect.Signature) -> Any:
    """A fresh copy of :func:`_model_forward` that reports the model's own signature
    (``Trainer`` and ``generate`` read ``inspect.signature(model.forward)``)."""
    function = types.FunctionType(
        _model_forward.__code__,
        _model_forward.__globals__,
        _model_forward.__name__,
        _model_forward.__defaults__,
        _model_forward.__closure__,
    )
    function.__qualname__ = _model_forward.__qualname__
    function.__doc__ = "crossentropy.transformers: the model's forward, with the fused loss."
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    full = signature.replace(parameters=[self_param, *signature.parameters.values()])
    function.__signature__ = full  # type: ignore[attr-defined]
    # Run this frame eagerly under torch.compile (it only sets a flag, and a graph break
    # inside its try block would cost dynamo the whole frame); the model's own forward,
    # called from it, is compiled as its own frame.
    disabled = torch.compiler.disable(function, recursive=False)
    disabled.__signature__ = full  # type: ignore[attr-defined]
    return disabled


def patch(
    model: Any,
    *,
    z_loss: float = 0.0,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
    return_logits: bool = False,
) -> Any:
    base, heads = _check(model)
    signature = inspect.signature(_original(base, "forward"))
    parameters = list(signature.parameters.values())
    positional = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    options = _Options(
        z_loss=_nonnegative(z_loss, "z_loss"),
        label_smoothing=_smoothing(label_smoothing),
        chunk_size=_chunk(chunk_size),
        return_logits=_flag(return_logits, "return_logits"),
        model_name=type(base).__name__,
        labels_position=positional.index("labels") if "labels" in positional else -1,
    )
    if base.__dict__.get(_OPTIONS) is not None:
        unpatch(base)
    for head in heads:
        _save(head, "forward", types.MethodType(_head_forward, head))
    original_loss = base.loss_function
    _save(base, "_loss_function", _FusedLoss(original_loss, options))
    _save(base, "forward", types.MethodType(_signature_forward(signature), base))
    _save(base, _OPTIONS, options)
    return model


def unpatch(model: Any) -> Any:
    base = _base_model(model)
    if not isinstance(base, torch.nn.Module):
        raise TypeError(
            f"crossentropy.transformers.unpatch: expected a torch.nn.Module, got "
            f"{type(model).__name__}"
        )
    for module in base.modules():
        _restore(module)
    return model


def _nonnegative(value: Any, name: str) -> float:
    number = _real(value, name)
    if not number >= 0.0 or number == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def _smoothing(value: Any) -> float:
    number = _real(value, "label_smoothing")
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {value!r}")
    return number


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _chunk(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"chunk_size must be None or an int >= 1, got {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value

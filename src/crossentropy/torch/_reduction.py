"""The reduction of per-token losses, written once for every path.

Per token a loss has two parts: the cross-entropy (or divergence) ``loss`` with its token
weight ``omega`` (``w[y]`` for a class index, 0 when ignored, 1 for a probability row),
and the z-loss ``z`` of every counted token, whatever its class weight.

* ``none``: ``loss + z`` per token; ``sum``: their total.
* ``mean``: ``sum(loss) / sum(omega) + sum(z) / n``, ``n`` the number of counted tokens
  (``F.cross_entropy``'s rule for the first part, a plain mean for the z-loss);
  with ``normalize_by=c``: ``(sum(loss) + sum(z)) / c``, the ``sum`` of the micro-batch
  over a count the caller knows (the global counted tokens of every micro-batch and
  rank), so that accumulated micro-batches give the gradient of one big batch.
* A zero divisor gives 0, with zero gradients, never NaN.

:func:`divisors` gives the two divisors, :func:`reduce` the reduced loss and
:func:`token_scales` its derivative with respect to each token's two parts -- what the
fused losses fold into the gradient they compute in the forward pass.
"""

from __future__ import annotations

import torch

from ._options import Options

__all__ = ["divisors", "omega_and_counted", "reduce", "token_scales", "z_terms"]

Divisor = torch.Tensor | float


def omega_and_counted(
    target: torch.Tensor, class_weight: torch.Tensor | None, opts: Options, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weight ``omega`` and counted mask (as ``dtype``) of a flat target.

    ``target`` is (N,) class indices or (N, V) probabilities (every row counts, omega 1).
    Class weights are read at the label, 0 outside ``[0, V)``.
    """
    if target.dtype.is_floating_point:
        ones = torch.ones(target.shape[0], dtype=dtype, device=target.device)
        return ones, ones
    counted = target != opts.ignore_index
    counted_f = counted.to(dtype)
    if class_weight is None:
        return counted_f, counted_f
    vocab = class_weight.shape[0]
    safe = torch.where(counted & (target >= 0) & (target < vocab), target, 0)
    return torch.where(counted, class_weight.to(dtype)[safe], 0.0), counted_f


def z_terms(lse: torch.Tensor, counted: torch.Tensor, opts: Options) -> torch.Tensor | None:
    """``z_loss * lse^2`` per counted token (0 for ignored ones); None without z-loss."""
    if not opts.z_loss:
        return None
    return torch.where(counted != 0, opts.z_loss * lse.square(), 0.0)


def divisors(
    omega: torch.Tensor, counted: torch.Tensor, opts: Options
) -> tuple[Divisor, Divisor] | None:
    """The divisors of the loss part and of the z-loss part; None unless ``mean``."""
    if opts.reduction != "mean":
        return None
    if opts.normalize_by is not None:
        return opts.normalize_by, opts.normalize_by
    return omega.sum(), counted.sum()


def _divide(total: torch.Tensor, divisor: Divisor) -> torch.Tensor:
    if not isinstance(divisor, torch.Tensor):
        return total / divisor if divisor else total * 0.0
    divisor = divisor.to(total)
    # A where() on the quotient would leak NaN into the gradient; guard the divisor.
    return total / torch.where(divisor != 0, divisor, 1.0) * (divisor != 0)


def reduce(
    loss: torch.Tensor,
    z: torch.Tensor | None,
    opts: Options,
    divs: tuple[Divisor, Divisor] | None,
) -> torch.Tensor:
    """The reduced loss (see the module notes); ``z`` None without z-loss."""
    if opts.reduction == "none":
        return loss if z is None else loss + z
    if opts.reduction == "sum":
        return loss.sum() if z is None else loss.sum() + z.sum()
    assert divs is not None, "mean needs its divisors"
    if opts.normalize_by is not None:
        total = loss.sum() if z is None else loss.sum() + z.sum()
        return _divide(total, divs[0])
    out = _divide(loss.sum(), divs[0])
    return out if z is None else out + _divide(z.sum(), divs[1])


def _inverse(divisor: Divisor, like: torch.Tensor) -> torch.Tensor:
    d = torch.as_tensor(divisor, dtype=like.dtype, device=like.device)
    return torch.where(d != 0, 1.0 / torch.where(d != 0, d, 1.0), 0.0)


def token_scales(
    counted: torch.Tensor,
    opts: Options,
    divs: tuple[Divisor, Divisor] | None,
    upstream: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, sz)``: the derivative of the reduced loss with respect to each token's loss
    part and z-loss part, times the ``upstream`` gradient (a 0-d tensor, or (N,) for
    ``none``); 0 for ignored tokens.  No host synchronisation."""
    if upstream is None:
        s = counted
    else:  # where, not a product: an upstream NaN or inf at an ignored token stays out
        s = torch.where(counted != 0, counted * upstream.to(counted.dtype), 0.0)
    if opts.reduction != "mean":
        return s, s
    assert divs is not None, "mean needs its divisors"
    return s * _inverse(divs[0], counted), s * _inverse(divs[1], counted)

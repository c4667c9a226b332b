"""The chunk maths of the cross-entropy head: statistics -> combine -> loss -> gradient.

One plain-PyTorch formulation serves every chunked path: the single-process fused loss,
and the dense and fused vocabulary-parallel losses.  A chunk is a block ``z`` of
``(n, V_r)`` logits over this rank's slice ``[start, stop)`` of a ``V``-class
vocabulary (the whole vocabulary in one process), already transformed by
:func:`transform_` (``z = softcap(x) / T``).

1. **statistics** (:meth:`Labels.stats`, :meth:`Probabilities.stats`): per-token sums
   over the slice that add across slices, first the maximum and ``sum exp(z - max)``;
2. **combine** (:func:`combine`): the identity in one process; over a vocabulary-parallel
   group one ``all_reduce`` MAX of the maxima and one ``all_reduce`` SUM of the packed
   sums, the forward pass's only ``O(tokens)`` collectives;
3. **loss** (:meth:`~Labels.loss`): per token, from the combined statistics;
4. **gradient** (:func:`gradient_`): ``G = dloss/dz`` written over the chunk in place.

Notation (per token; ``eps`` the label smoothing, ``w`` the class weights (ones without),
``W = sum_c w_c``, ``omega = w_y`` (0 when ignored), ``lam`` the z-loss coefficient)::

    labels:        loss = (1 - eps) omega (lse - z_y) + [counted] eps / V (W lse - sum_c w_c z_c)
                   G    = q A - s (1 - eps) omega [c = y] - s [counted] eps / V w_c
                   A    = s ((1 - eps) omega + [counted] eps W / V) + 2 lam sz lse
    probabilities: u = w ((1 - eps) t + eps / V),  loss = sum(u) lse - sum_c u_c z_c
                   G    = q A - s u,   A = s sum(u) + 2 lam sz lse

with ``s`` and ``sz`` the upstream gradients of the token's loss and z-loss parts
(:func:`._reduction.token_scales`).  These are :mod:`._reference`'s definitions written
with sums that split over vocabulary slices; the Triton row kernel is the same formula
in one pass over a whole row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist

from ._options import Options, VocabParallel

__all__ = ["Combined", "Labels", "Probabilities", "chain_", "combine", "gradient_", "transform_"]

#: ``rescale(sums, r, d)`` of :func:`combine`.
Rescale = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], list[torch.Tensor]]


def transform_(z: torch.Tensor, opts: Options, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``z = softcap(z) / temperature`` in place; ``keep`` receives ``tanh(z / softcap)``."""
    cap, temp = opts.softcap, opts.temperature
    if cap is not None:
        z.div_(cap).tanh_()
        if keep is not None:
            keep.copy_(z)
        z.mul_(cap / temp)
    elif temp != 1.0:
        z.div_(temp)
    return z


def chain_(g: torch.Tensor, opts: Options, tanh: torch.Tensor | None) -> torch.Tensor:
    """``dL/dx`` from ``g = dL/dz`` in place: times ``(1 - tanh^2) / T`` (``tanh`` is used up)."""
    if opts.softcap is not None:
        assert tanh is not None, "the softcap's derivative needs the kept tanh"
        g.mul_(tanh.square_().neg_().add_(1.0))
    if opts.temperature != 1.0:
        g.div_(opts.temperature)
    return g


def _weighted_sum(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_c w_c z_c`` per row with ``0 * -inf = 0`` (a class of weight 0 adds nothing
    at a ``-inf`` logit); a positive weight at a ``-inf`` logit gives ``-inf``."""
    return torch.where(w > 0, z, 0.0) @ w


def _dot_with_minus_inf(u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Row-wise ``u . z`` with ``0 * -inf = 0``, and ``-inf`` where ``u_c > 0`` at a
    ``-inf`` logit; ``z``'s ``-inf`` entries become very negative finite numbers in place
    (their softmax is 0 either way).

    Two batched products, no ``(chunk, V)`` temporary: with ``-inf`` clamped to the
    dtype's most negative number and then to half of it, the two dot products differ
    exactly where some ``u_c > 0`` sits on a clamped entry (an infinite term).
    """
    lowest = torch.finfo(z.dtype).min
    first = torch.bmm(u.unsqueeze(1), z.clamp_(min=lowest).unsqueeze(2)).reshape(-1)
    second = torch.bmm(u.unsqueeze(1), z.clamp_(min=lowest / 2).unsqueeze(2)).reshape(-1)
    return torch.where(first != second, -torch.inf, second)


def _max_and_sumexp(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row max and ``sum exp(z - max)``, turning ``z`` into ``exp(z - max)`` in place.

    A row of ``-inf`` (or an empty slice) gives ``(-inf, 0)``.
    """
    rows = z.shape[0]
    if z.shape[1] == 0:
        return (
            torch.full((rows,), -torch.inf, dtype=z.dtype, device=z.device),
            torch.zeros(rows, dtype=z.dtype, device=z.device),
        )
    zmax = z.amax(1)
    z.sub_(torch.where(torch.isfinite(zmax), zmax, 0.0).unsqueeze(1)).exp_()
    return zmax, z.sum(1)


def combine(
    zmax: torch.Tensor,
    sums: list[torch.Tensor],
    parallel: VocabParallel | None,
    rescale: Rescale | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Combine per-slice statistics: the identity in one process, else two collectives.

    ``zmax`` (N,) holds each token's maximum over its slice, ``sums[0]`` the
    ``sum exp(z - zmax)`` made with that maximum (made finite), the other entries
    per-token or scalar sums.  Returns the global maximum made finite (as
    ``torch.logsumexp`` does), so ``lse = shift + log(sums[0])``, and the summed entries.
    Across a group each slice's sums are first moved to the global shift:
    ``rescale(sums, r, d)``, with ``d = local shift - global shift`` and ``r = exp(d)``
    (0 for a slice whose maximum is ``-inf``), rescales entries that depend on the shift;
    by default only ``sums[0]`` (times ``r``).
    """
    if parallel is None:
        return torch.where(torch.isfinite(zmax), zmax, 0.0), sums
    gmax = zmax.clone()
    dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=parallel.group)
    shift = torch.where(torch.isfinite(gmax), gmax, 0.0)
    # A slice whose maximum is -inf contributes nothing (and must not make inf * 0 = NaN).
    local = torch.where(torch.isfinite(zmax), zmax, 0.0)
    d = local - shift
    r = torch.where(torch.isfinite(zmax), torch.exp(d), 0.0)
    parts = [sums[0] * r, *sums[1:]] if rescale is None else rescale(sums, r, d)
    sizes = [p.numel() for p in parts]
    packed = torch.cat([p.reshape(-1) for p in parts])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=parallel.group)
    return shift, [p.reshape(q.shape) for p, q in zip(packed.split(sizes), parts, strict=True)]


class Combined(NamedTuple):
    """Per-token results of the loss step, what the gradient step needs besides ``z``.

    ``loss`` without the z-loss; ``lse`` the global log-sum-exp; ``omega`` the token
    weight; ``mass`` the gradient's softmax coefficient per unit upstream gradient
    (``(1 - eps) omega + [counted] eps W / V``, or ``sum(u)``).
    """

    loss: torch.Tensor
    lse: torch.Tensor
    omega: torch.Tensor
    mass: torch.Tensor

    def rows(self, a: int, b: int) -> Combined:
        """The results of tokens ``a:b``."""
        return Combined(*(t[a:b] for t in self))


def gradient_(
    z: torch.Tensor,
    head: Labels | Probabilities,
    part: Combined,
    a: int,
    s: torch.Tensor,
    sz: torch.Tensor,
    sumexp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Turn the chunk ``z`` of tokens ``a:a+n`` into ``s dloss/dz + sz dzl/dz`` in place.

    ``part`` holds the chunk's combined results, ``s`` and ``sz`` (n,) its scales, 0 for
    ignored tokens.  ``z`` holds the transformed logits, or, when ``sumexp`` is given,
    ``exp(z - shift)`` as the statistics step of the same pass left it (one process: then
    ``q = z / sumexp``, no second exponential).
    """
    coef = s * part.mass
    if head.opts.z_loss:
        coef = coef + (2.0 * head.opts.z_loss) * sz * part.lse
    if sumexp is None:
        z.sub_(part.lse.unsqueeze(1)).exp_().mul_(coef.unsqueeze(1))
    else:
        z.mul_((coef / sumexp).unsqueeze(1))
    head.subtract_target_(z, part, a, s, fresh=sumexp is not None)
    return z


def _span(vocab: int, parallel: VocabParallel | None) -> tuple[int, int, int]:
    if parallel is None:
        return 0, vocab, vocab
    return parallel.start, parallel.stop, parallel.vocab


class Labels:
    """Class-index targets (N,) int64, ``class_weight`` (V_r,) in the compute dtype."""

    def __init__(
        self,
        target: torch.Tensor,
        class_weight: torch.Tensor | None,
        opts: Options,
        width: int,
    ) -> None:
        self.opts = opts
        self.w = class_weight
        self.start, self.stop, self.vocab = _span(width, opts.parallel)
        y = target
        self.counted = y != opts.ignore_index
        self.valid = (y >= 0) & (y < self.vocab)
        self.hit = self.counted & (y >= self.start) & (y < self.stop)
        # The column of the label within this slice (0 where it lies elsewhere).
        self.local = torch.where(self.hit, y - self.start, 0).clamp(max=max(width - 1, 0))

    def stats(self, z: torch.Tensor, a: int) -> list[torch.Tensor]:
        """``[max, sumexp, z_y, (w_y), (sum_c w_c z_c)]`` of the chunk; ``z`` becomes
        ``exp(z - max)``."""
        n = z.shape[0]
        hit, idx = self.hit[a : a + n], self.local[a : a + n].unsqueeze(1)
        if z.shape[1]:
            z_y = torch.where(hit, z.gather(1, idx).squeeze(1), 0.0)
        else:
            z_y = torch.zeros(n, dtype=z.dtype, device=z.device)
        out = [z_y]
        if self.w is not None:
            w_y = self.w[idx.squeeze(1)] if z.shape[1] else torch.zeros_like(z_y)
            out.append(torch.where(hit, w_y, 0.0))
        if self.opts.label_smoothing:
            out.append(z.sum(1) if self.w is None else _weighted_sum(z, self.w))
        zmax, sumexp = _max_and_sumexp(z)
        return [zmax, sumexp, *out]

    def scalars(self) -> list[torch.Tensor]:
        """Sums over the vocabulary that add across slices: ``W`` when it is needed."""
        if self.opts.label_smoothing and self.w is not None:
            return [self.w.sum().reshape(1)]
        return []

    def loss(self, shift: torch.Tensor, sums: list[torch.Tensor], a: int) -> Combined:
        """Per-token losses of tokens ``a:a+n`` from their combined statistics
        (``sums`` as :meth:`stats` and :meth:`scalars` laid them out, after the max)."""
        eps = self.opts.label_smoothing
        n = shift.shape[0]
        counted, valid = self.counted[a : a + n], self.valid[a : a + n]
        lse = shift + sums[0].log()
        z_y, rest = sums[1], sums[2:]
        if self.w is not None:
            omega, rest = torch.where(counted, rest[0], 0.0), rest[1:]
        else:
            omega = counted.to(lse.dtype)
        loss = (1.0 - eps) * omega * (lse - z_y)
        mass = (1.0 - eps) * omega
        if eps:
            w_total = rest[1] if self.w is not None else float(self.vocab)
            loss = loss + torch.where(counted, (eps / self.vocab) * (w_total * lse - rest[0]), 0.0)
            mass = mass + counted.to(lse.dtype) * (eps * w_total / self.vocab)
        loss = torch.where(counted, loss, 0.0)
        loss = torch.where(counted & ~valid, torch.nan, loss)
        return Combined(loss, lse, omega, mass)

    def subtract_target_(
        self, z: torch.Tensor, part: Combined, a: int, s: torch.Tensor, fresh: bool
    ) -> None:
        n = z.shape[0]
        eps = self.opts.label_smoothing
        if z.shape[1]:
            hit = self.hit[a : a + n]
            onehot = torch.where(hit, -(1.0 - eps) * part.omega * s, 0.0)
            z.scatter_add_(1, self.local[a : a + n].unsqueeze(1), onehot.unsqueeze(1))
        if eps:
            off = torch.where(self.counted[a : a + n], (eps / self.vocab) * s, 0.0)
            if self.w is None:
                z.sub_(off.unsqueeze(1))
            else:
                z.addr_(off, self.w, alpha=-1.0)


class Probabilities:
    """Probability targets (N, V_r), sharded like the logits; ``u`` built in ``buffer``.

    ``0 log 0 = 0``: a zero ``u_c`` at a ``-inf`` logit adds 0, not NaN, and a positive
    one gives an infinite loss (:func:`_dot_with_minus_inf`).
    """

    def __init__(
        self,
        target: torch.Tensor,
        class_weight: torch.Tensor | None,
        opts: Options,
        width: int,
        buffer: torch.Tensor,
    ) -> None:
        self.opts, self.target, self.w, self.buffer = opts, target, class_weight, buffer
        _, _, self.vocab = _span(width, opts.parallel)

    def weights(self, a: int, n: int) -> torch.Tensor:
        """``u = w ((1 - eps) t + eps / V)`` of tokens ``a:a+n``, in the buffer."""
        eps = self.opts.label_smoothing
        u = self.buffer[:n].copy_(self.target[a : a + n])
        if eps:
            u.mul_(1.0 - eps).add_(eps / self.vocab)
        if self.w is not None:
            u.mul_(self.w)
        return u

    def stats(self, z: torch.Tensor, a: int) -> list[torch.Tensor]:
        """``[max, sumexp, sum(u), u . z]``; ``z`` becomes ``exp(z - max)``."""
        u = self.weights(a, z.shape[0])
        dot = _dot_with_minus_inf(u, z)
        zmax, sumexp = _max_and_sumexp(z)
        return [zmax, sumexp, u.sum(1), dot]

    def scalars(self) -> list[torch.Tensor]:
        return []

    def loss(self, shift: torch.Tensor, sums: list[torch.Tensor], a: int) -> Combined:
        lse = shift + sums[0].log()
        mass = sums[1]
        return Combined(mass * lse - sums[2], lse, torch.ones_like(lse), mass)

    def subtract_target_(
        self, z: torch.Tensor, part: Combined, a: int, s: torch.Tensor, fresh: bool
    ) -> None:
        # The buffer still holds this chunk's u when the gradient follows the statistics
        # in the same pass (one process); otherwise (a recomputing backward) it is rebuilt.
        u = self.buffer[: z.shape[0]] if fresh else self.weights(a, z.shape[0])
        z.addcmul_(u, s.unsqueeze(1), value=-1.0)

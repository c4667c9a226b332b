"""Per-token statistics of the output layer, fused: the head and its autograd Function.

With ``z = softcap(x) / T`` over the vocabulary and ``q = softmax(z)``, per token:
``log_prob = log q[y]``, ``entropy = -sum q log q``, ``logsumexp = lse(z)``,
``collision = sum q^2``, the argmax and the ``top_k`` largest ``log q``.  One chunk's
statistics, with ``t = z - m`` (``m`` the chunk row's maximum) and ``e = exp(t)``::

    s0 = sum e,   s1 = sum e t,   s2 = sum e^2,   z_y,   max and argmax,   top-k of z

add across vocabulary slices once moved to a common shift ``M`` (:func:`_rescale`:
``s0 r``, ``r (s1 + d s0)``, ``s2 r^2`` with ``d = m - M``, ``r = exp(d)``), which is the
engine's combine step (:func:`._heads.combine`); then ``lse = M + log S0``,
``entropy = log S0 - S1 / S0`` (shifted sums: no cancellation between two large terms),
``collision = S2 / S0^2``.  The argmax is the lowest index holding the global maximum
(one more ``all_reduce`` MIN across a group) and the top-k a merge of every slice's own.

Backward takes any combination of upstream gradients ``g_lp, g_S, g_L, g_C`` on the four
differentiable fields and forms, per chunk of recomputed logits::

    dL/dz_c = q_c [ (g_L - g_lp) - g_S (S + log q_c) + 2 g_C (q_c - C) ] + g_lp [c = y]

(from ``dlog q_y = [c = y] - q_c``, ``dlse = q_c``, ``dS = -q_c (log q_c + S)``,
``dC = 2 q_c (q_c - C)``), then the softcap's and temperature's chain rule, then
``dh``, ``dW``, ``db`` through the fused-chunk driver: ``2 N D V`` FLOPs forward,
``6 N D V`` more backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from ._driver import Gradients, Product, chunk_rows, spans
from ._heads import chain_, combine
from ._options import Options, compute_dtype

__all__ = ["TokenStats", "apply"]

_NO_INDEX = torch.iinfo(torch.int64).max

#: Below this ``log q`` is 0 in every float dtype; clamping there keeps ``0 * log 0 = 0``.
_LOG_FLOOR = -1e4


class TokenStats(NamedTuple):
    """Per-token statistics of the output layer, each of the tokens' batch shape ``(...)``.

    ``log_prob`` (``log q[target]``, 0 where ignored) and ``correct`` (argmax == target,
    False where ignored) are None without a target; ``top_k_indices`` and
    ``top_k_log_probs`` (shape ``(..., k)``, descending) None when ``top_k == 0``.
    ``log_prob``, ``entropy``, ``logsumexp`` and ``collision`` carry gradients.
    """

    log_prob: torch.Tensor | None
    entropy: torch.Tensor
    logsumexp: torch.Tensor
    collision: torch.Tensor
    argmax: torch.Tensor
    correct: torch.Tensor | None
    top_k_indices: torch.Tensor | None
    top_k_log_probs: torch.Tensor | None


class _Chunk(NamedTuple):
    zmax: torch.Tensor
    sums: list[torch.Tensor]
    argmax: torch.Tensor
    top_values: torch.Tensor
    top_indices: torch.Tensor


class Statistics:
    """The statistics head over a block ``z`` (n, V_r) of transformed logits of this
    rank's slice (the whole vocabulary in one process); ``target`` (N,) int64 or None."""

    def __init__(
        self,
        target: torch.Tensor | None,
        opts: Options,
        width: int,
        scratch: torch.Tensor,
    ) -> None:
        self.opts, self.target, self.scratch = opts, target, scratch
        parallel = opts.parallel
        self.start = 0 if parallel is None else parallel.start
        self.vocab = width if parallel is None else parallel.vocab
        self.width = width
        if target is not None:
            self.counted = target != opts.ignore_index
            self.valid = (target >= 0) & (target < self.vocab)
            self.hit = self.counted & (target >= self.start) & (target < self.start + width)
            local = torch.where(self.hit, target - self.start, 0)
            self.local = local.clamp(max=max(width - 1, 0))

    def stats(self, z: torch.Tensor, a: int) -> _Chunk:
        """The chunk's statistics (module notes); ``z`` becomes ``z - m`` (clamped)."""
        n, width = z.shape
        k = min(self.opts.top_k, width)
        if width == 0:
            empty = torch.zeros(n, dtype=z.dtype, device=z.device)
            zmax = torch.full_like(empty, -torch.inf)
            argmax = torch.full((n,), _NO_INDEX, dtype=torch.int64, device=z.device)
            sums = [empty, empty, empty] + ([empty] if self.target is not None else [])
            top = z.new_empty(n, 0), argmax.new_empty(n, 0)
            return _Chunk(zmax, sums, argmax, *top)
        zmax, argmax = z.max(1)
        argmax = argmax + self.start
        top_values, top_indices = (
            torch.topk(z, k, dim=1) if k else (z[:, :0], argmax[:, None][:, :0])
        )
        top_indices = top_indices + self.start
        extra = []
        if self.target is not None:
            hit, idx = self.hit[a : a + n], self.local[a : a + n]
            extra.append(torch.where(hit, z.gather(1, idx.unsqueeze(1)).squeeze(1), 0.0))
        shift = torch.where(torch.isfinite(zmax), zmax, 0.0)
        t = z.sub_(shift.unsqueeze(1))
        e = torch.exp(t, out=self.scratch[:n])
        s0 = e.sum(1)
        t.clamp_(min=torch.finfo(t.dtype).min)  # 0 * -inf = 0: a masked class adds nothing
        s1 = torch.bmm(e.unsqueeze(1), t.unsqueeze(2)).reshape(n)
        s2 = torch.bmm(e.unsqueeze(1), e.unsqueeze(2)).reshape(n)
        return _Chunk(zmax, [s0, s1, s2, *extra], argmax, top_values, top_indices)

    def forward_block(self, product: Product, a: int, b: int) -> _Chunk:
        """The statistics of tokens ``a:b`` from the driver's block."""
        return self.stats(product.logits(a, b)[0], a)

    def backward_block(
        self,
        product: Product,
        a: int,
        b: int,
        lse: torch.Tensor,
        entropy: torch.Tensor,
        collision: torch.Tensor,
        up: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``dL/dx`` of tokens ``a:b`` (the block in the input dtype, and as formed)."""
        z, tanh = product.logits(a, b)
        _gradient_(z, self.scratch[: b - a], self, a, lse, entropy, collision, up)
        chain_(z, self.opts, tanh)
        return product.staged(z), z


def _rescale(sums: list[torch.Tensor], r: torch.Tensor, d: torch.Tensor) -> list[torch.Tensor]:
    """A slice's sums moved to the global shift (module notes)."""
    s0, s1, s2, *rest = sums
    return [s0 * r, r * (s1 + d * s0), (r * r) * s2, *rest]


def _argmax(chunk: _Chunk, shift: torch.Tensor, opts: Options) -> torch.Tensor:
    """The lowest index of the global maximum: one ``all_reduce`` MIN across a group."""
    if opts.parallel is None:
        return chunk.argmax
    holds = torch.isfinite(chunk.zmax) & (chunk.zmax == shift)
    candidate = torch.where(holds, chunk.argmax, _NO_INDEX)
    dist.all_reduce(candidate, op=dist.ReduceOp.MIN, group=opts.parallel.group)
    return torch.where(candidate == _NO_INDEX, 0, candidate)  # a row of -inf: 0, as argmax


def _top_k(chunk: _Chunk, opts: Options) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top_k`` largest ``z`` and their indices: every slice's own, merged."""
    k = opts.top_k
    values, indices = chunk.top_values, chunk.top_indices
    n = values.shape[0]
    if values.shape[1] < k:  # a slice narrower than k: pad with -inf
        pad = k - values.shape[1]
        values = torch.cat([values, values.new_full((n, pad), -torch.inf)], 1)
        indices = torch.cat([indices, indices.new_zeros(n, pad)], 1)
    if opts.parallel is None:
        return values, indices
    group = opts.parallel.group
    world = dist.get_world_size(group)
    all_values = [torch.empty_like(values) for _ in range(world)]
    all_indices = [torch.empty_like(indices) for _ in range(world)]
    dist.all_gather(all_values, values.contiguous(), group=group)
    dist.all_gather(all_indices, indices.contiguous(), group=group)
    merged, where = torch.topk(torch.cat(all_values, 1), k, dim=1)
    return merged, torch.cat(all_indices, 1).gather(1, where)


def _forward(product: Product, head: Statistics, num_tokens: int, rows: int) -> tuple:
    chunks = [head.forward_block(product, a, b) for a, b in spans(num_tokens, rows)]
    if not chunks:  # no tokens: an empty block, for the shapes
        chunks = [head.forward_block(product, 0, 0)]
    whole = _Chunk(
        torch.cat([c.zmax for c in chunks]),
        [torch.cat(column) for column in zip(*(c.sums for c in chunks), strict=True)],
        torch.cat([c.argmax for c in chunks]),
        torch.cat([c.top_values for c in chunks]),
        torch.cat([c.top_indices for c in chunks]),
    )
    opts = head.opts
    shift, sums = combine(whole.zmax, whole.sums, opts.parallel, _rescale)
    s0, s1, s2 = sums[:3]
    log_s0 = s0.log()
    lse = shift + log_s0
    entropy = log_s0 - s1 / s0
    collision = s2 / s0.square()
    argmax = _argmax(whole, shift, opts)
    top_values, top_indices = _top_k(whole, opts)
    top_log_probs = top_values - lse.unsqueeze(1)
    if head.target is None:
        log_prob = torch.zeros_like(lse)
        correct = torch.zeros(lse.shape, dtype=torch.bool, device=lse.device)
    else:
        log_prob = torch.where(head.counted, sums[3] - lse, 0.0)
        log_prob = torch.where(head.counted & ~head.valid, torch.nan, log_prob)
        correct = head.counted & (argmax == head.target)
    return log_prob, entropy, lse, collision, argmax, correct, top_indices, top_log_probs


def _gradient_(
    z: torch.Tensor,
    q: torch.Tensor,
    head: Statistics,
    a: int,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    collision: torch.Tensor,
    up: list[torch.Tensor | None],
) -> torch.Tensor:
    """Turn the chunk ``z`` of tokens ``a:a+n`` into ``dL/dz`` in place (module notes);
    ``q`` is a scratch block, ``up`` the chunk's upstream gradients (None: unused)."""
    g_lp, g_s, g_l, g_c = up
    n = z.shape[0]
    logq = z.sub_(lse.unsqueeze(1)).clamp_(min=_LOG_FLOOR)
    torch.exp(logq, out=q)
    coef = torch.zeros(n, dtype=z.dtype, device=z.device)
    if g_l is not None:
        coef = coef + g_l
    if g_lp is not None:
        coef = coef - g_lp
    if g_s is not None:
        coef = coef - g_s * entropy
    if g_c is not None:
        coef = coef - 2.0 * g_c * collision
    if g_s is not None:
        z.mul_(-g_s.unsqueeze(1)).add_(coef.unsqueeze(1))
    else:
        z.copy_(coef.unsqueeze(1).expand_as(z))
    if g_c is not None:
        z.addcmul_(q, (2.0 * g_c).unsqueeze(1))
    z.mul_(q)
    if g_lp is not None and head.target is not None and z.shape[1]:
        hit = head.hit[a : a + n]
        onehot = torch.where(hit, g_lp, 0.0).unsqueeze(1)
        z.scatter_add_(1, head.local[a : a + n].unsqueeze(1), onehot)
    return z


def _make(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor | None,
    opts: Options,
    *,
    keep_tanh: bool,
) -> tuple[Product, Statistics, int]:
    """The driver's product, the head (plain PyTorch, or the Triton kernels' with
    ``impl='triton'``) and the chunk's rows."""
    num_tokens, dim = hidden.shape
    width = weight.shape[0]
    # The plain-PyTorch step needs one more block than the logits: the scratch of exp(t).
    rows = chunk_rows(opts, num_tokens, width, dim, hidden.dtype, True)
    if opts.impl == "triton":
        from ._triton._stats import TritonStatistics

        product = Product(hidden, weight, bias, opts, rows, compute_block=False)
        return product, TritonStatistics(target, opts, width), rows
    product = Product(hidden, weight, bias, opts, rows, keep_tanh=keep_tanh)
    compute = compute_dtype(hidden.dtype)
    scratch = torch.empty(rows, width, dtype=compute, device=hidden.device)
    return product, Statistics(target, opts, width, scratch), rows


class _LinearTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, opts):  # type: ignore[override]
        product, head, rows = _make(hidden, weight, bias, target, opts, keep_tanh=False)
        out = _forward(product, head, hidden.shape[0], rows)
        ctx.opts = opts
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*out[4:])
        ctx.save_for_backward(hidden, weight, bias, target, *out[1:4])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lp, g_s, g_l, g_c, *_):  # type: ignore[override]
        opts = ctx.opts
        hidden, weight, bias, target, entropy, lse, collision = ctx.saved_tensors
        compute = compute_dtype(hidden.dtype)
        if target is None:
            g_lp = None
        elif g_lp is not None:  # log_prob is 0 where ignored: no gradient there
            g_lp = torch.where(target != opts.ignore_index, g_lp.to(compute), 0.0)
        up = [None if g is None else g.to(compute) for g in (g_lp, g_s, g_l, g_c)]
        product, head, rows = _make(hidden, weight, bias, target, opts, keep_tanh=True)
        needs = tuple(ctx.needs_input_grad[:3])
        kw: dict[str, Any] = {}
        if opts.impl == "triton":
            from ._triton import _linear

            kw = _linear.gradient_options(opts, hidden.dtype)
        if opts.parallel is not None:  # summed across the group in the compute dtype
            kw["dh_dtype"] = compute
        grads = Gradients(hidden, weight, bias, needs, **kw)
        for a, b in spans(hidden.shape[0], rows):
            chunk_up = [None if g is None else g[a:b] for g in up]
            g, exact = head.backward_block(
                product, a, b, lse[a:b], entropy[a:b], collision[a:b], chunk_up
            )
            grads.add(g, exact, hidden[a:b], a, b)
        parallel = opts.parallel
        if grads.dh is not None and parallel is not None and parallel.reduce_hidden_grad:
            dist.all_reduce(grads.dh, op=dist.ReduceOp.SUM, group=parallel.group)
        dh, dw, db = grads.finish(dh_dtype=hidden.dtype)
        return dh, dw, db, None, None


@torch.compiler.disable
def apply(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor | None,
    opts: Options,
) -> tuple[torch.Tensor, ...]:
    """The eight statistics of flat ``hidden`` (N, D) and ``target`` (N,) or None, as
    tensors: ``log_prob``/``correct`` filled (0/False) without a target, top-k (N, k)."""
    return _LinearTokenStats.apply(hidden, weight, bias, target, opts)

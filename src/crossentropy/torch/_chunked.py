"""Fused linear + cross-entropy on plain PyTorch: chunked, gradient computed in forward.

The tokens are processed ``chunk_size`` at a time.  For each chunk the logits
``z = h W^T + b`` are formed, then their log-sum-exp and loss, and (when a gradient will be
needed) the gradient ``G = dL/dz`` in the same buffer, which is immediately consumed:
``dh = G W`` and ``dW += G^T h`` (float32 accumulation), ``db += sum G``.  Only one
``(chunk_size, V)`` block of logits exists at any time, and the matrix products total
``6 N D V`` FLOPs, the minimum.  ``backward`` then only scales the stored gradients by the
incoming (scalar) gradient, in place.

Class indices and probability targets (soft labels) are both taken; for the latter each
chunk copies its rows of the target, which is then the only ``(N, V)`` tensor.

Layers: :func:`_run` is the host forward/backward; :func:`_label_chunk` and
:func:`_probability_chunk` give one chunk's loss and gradient; :class:`_LinearCrossEntropy`
is the one ``torch.autograd.Function``, taking tensors plus a frozen :class:`Options`.

Exactness of the backward:

* ``reduction="none"`` cannot know the per-token upstream gradient ``g_i`` in forward,
  and ``dW = sum_i g_i G_i^T h_i`` cannot be recovered from the unscaled sum.  So for
  ``none`` the forward does only the loss and the backward recomputes the chunks with
  ``g_i`` folded in (``8 N D V`` FLOPs in all) -- exact for any upstream gradient.
* For ``mean`` and ``sum`` the stored gradients are scaled in place and handed to
  autograd, so the weight gradient exists once.  A second backward through the same graph
  (``retain_graph=True``, ``gradcheck``) finds them consumed and recomputes them, bit for
  bit the same; double backward (``create_graph=True``) is not supported and raises.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["CHUNK_BUDGET_BYTES", "CHUNK_CAP_BYTES", "Options", "apply", "default_chunk_size"]

#: Working memory the automatic ``chunk_size`` always allows: the (chunk, V) block(s).
CHUNK_BUDGET_BYTES = 64 * 2**20

#: Upper bound on that working memory when the hidden size asks for more (see
#: :func:`default_chunk_size`).
CHUNK_CAP_BYTES = 512 * 2**20

#: Vocabulary rows per block when accumulating a half-precision weight gradient in float32.
_VOCAB_BLOCK = 4096


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything about a call that is not a tensor; checked by the public wrapper."""

    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    chunk_size: int = 1024
    #: Which of hidden, weight, bias need a gradient (grad mode taken into account).
    needs_grad: tuple[bool, bool, bool] = (False, False, False)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_size(
    num_tokens: int, vocab: int, dim: int, dtype: torch.dtype, softcap: bool, soft: bool = False
) -> int:
    """Tokens per chunk: the larger of what fits :data:`CHUNK_BUDGET_BYTES` and ``dim / 2``.

    Per token the chunk holds a row of logits in the compute dtype (two with ``softcap``,
    whose derivative needs ``tanh`` kept; one more with probability targets, ``soft``, for
    the chunk's target rows), and for half inputs the half-precision row too.
    The float32 weight gradient (``V x D``) is read and written once per chunk, so a chunk
    of ``n`` tokens moves ``8 V D`` bytes for ``6 n V D`` FLOPs; ``n >= D / 2`` keeps that
    traffic small, and makes the block at most half the size of the weight gradient that
    must exist anyway.  That second rule is capped at :data:`CHUNK_CAP_BYTES`.  The result
    is a multiple of 16 (at least 16), at most ``num_tokens``.
    """
    compute = _compute_dtype(dtype)
    row = vocab * compute.itemsize * (1 + softcap + soft)
    if compute != dtype:
        row += vocab * dtype.itemsize
    row = max(row, 1)
    by_budget = CHUNK_BUDGET_BYTES // row
    by_dim = min(dim // 2, CHUNK_CAP_BYTES // row)
    size = max(16, max(by_budget, by_dim) // 16 * 16)
    return max(1, min(size, num_tokens))


def _run(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    opts: Options,
    scale: tuple[torch.Tensor, torch.Tensor] | None,
    needs: tuple[bool, bool, bool],
) -> tuple:
    """Per-token losses and, when ``scale`` is given, the gradients of
    ``sum_i s_i L_i + sz_i z_loss lse_i^2``, ``(s, sz) = scale``.

    ``hidden`` (N, D), ``weight`` (V, D), ``bias`` (V,) or None, ``target`` (N,) int64
    class indices or (N, V) probabilities, ``class_weight`` (V,) in the compute dtype or
    None, ``s`` and ``sz`` (N,) in the compute dtype (0 for ignored tokens): the scales of
    the cross-entropy and of the z-loss parts.  Returns the cross-entropy losses (N,)
    without the z-loss, the log-sum-exps (N,), and ``dhidden`` (N, D) in the input dtype,
    ``dweight`` (V, D) and ``dbias`` (V,) in the compute dtype, each None when not asked
    for by ``needs``.
    """
    num_tokens, dim = hidden.shape
    vocab = weight.shape[0]
    dtype = hidden.dtype
    compute = _compute_dtype(dtype)
    cap = opts.softcap
    grads = scale is not None
    device = hidden.device
    soft = target.dtype.is_floating_point

    losses = torch.empty(num_tokens, dtype=compute, device=device)
    lses = torch.empty_like(losses)
    dh = torch.empty_like(hidden) if grads and needs[0] else None
    dw = torch.zeros(vocab, dim, dtype=compute, device=device) if grads and needs[1] else None
    db = torch.zeros(vocab, dtype=compute, device=device) if grads and needs[2] else None
    block = None
    if dw is not None and compute != dtype:
        block = torch.empty(min(_VOCAB_BLOCK, vocab), dim, dtype=dtype, device=device)
    wt = weight.t()
    # One set of (chunk, V) buffers, reused by every chunk: the loss's whole working set.
    rows = min(opts.chunk_size, num_tokens)
    zbuf = torch.empty(rows, vocab, dtype=compute, device=device)
    hbuf = torch.empty(rows, vocab, dtype=dtype, device=device) if compute != dtype else None
    tbuf = torch.empty_like(zbuf) if grads and cap is not None else None
    pbuf = torch.empty_like(zbuf) if soft else None

    for start in range(0, num_tokens, opts.chunk_size):
        stop = min(start + opts.chunk_size, num_tokens)
        n = stop - start
        h = hidden[start:stop]
        z = zbuf[:n]
        raw = z if hbuf is None else hbuf[:n]
        if bias is None:
            torch.mm(h, wt, out=raw)
        else:
            torch.addmm(bias, h, wt, out=raw)
        if hbuf is not None:
            z.copy_(raw)
        tanh = None
        if cap is not None:
            z.div_(cap).tanh_()
            if tbuf is not None:
                tanh = tbuf[:n].copy_(z)
            z.mul_(cap)

        # The loss, and (with a scale) the gradient G = dL/dz written over z in place.
        s = None if scale is None else (scale[0][start:stop], scale[1][start:stop])
        if pbuf is not None:
            t = pbuf[:n].copy_(target[start:stop])
            losses[start:stop], lses[start:stop] = _probability_chunk(z, t, class_weight, opts, s)
        else:
            losses[start:stop], lses[start:stop] = _label_chunk(
                z, target[start:stop], class_weight, opts, s
            )
        if s is None:
            continue
        if tanh is not None:
            z.mul_(tanh.square_().neg_().add_(1.0))
        if db is not None:
            db += z.sum(0)
        g = z if hbuf is None else hbuf[:n].copy_(z)
        if dh is not None:
            torch.mm(g, weight, out=dh[start:stop])
        if dw is None:
            continue
        if block is None:
            dw.addmm_(g.t(), h)
            continue
        # Half inputs: half-precision products, accumulated in float32 a vocabulary block
        # at a time so no second (V, D) buffer is ever needed.
        for v0 in range(0, vocab, block.shape[0]):
            v1 = min(v0 + block.shape[0], vocab)
            part = block[: v1 - v0]
            torch.mm(g[:, v0:v1].t(), h, out=part)
            dw[v0:v1] += part
    return losses, lses, dh, dw, db


def _exp_in_place(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn ``z`` into ``exp(z - max)`` in place; return the row sums and log-sum-exp."""
    zmax = z.amax(1)
    z.sub_(zmax.unsqueeze(1)).exp_()
    total = z.sum(1)
    return total, total.log().add_(zmax)


def _label_chunk(
    z: torch.Tensor,
    y: torch.Tensor,
    class_weight: torch.Tensor | None,
    opts: Options,
    s: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses and log-sum-exps of a chunk of logits ``z`` against class indices ``y``;
    G over ``z`` if ``s = (s, sz)`` is given.

    With class weights ``w`` (see :mod:`._reference`), a counted token's loss is
    ``(1 - eps) w_y (lse - z_y) + eps / V (W lse - sum_c w_c z_c)`` with
    ``W = sum_c w_c`` (the caller adds the z-loss ``z_loss lse^2``), and
    ``G = softmax (s ((1 - eps) w_y + eps W / V) + 2 z_loss sz lse)
    - s ((1 - eps) w_y onehot(y) + eps / V w)``; ``w = 1`` without them.
    """
    vocab = z.shape[1]
    eps, z_loss = float(opts.label_smoothing), float(opts.z_loss)
    counted = y != opts.ignore_index
    valid = (y >= 0) & (y < vocab)
    safe = torch.where(counted & valid, y, 0).unsqueeze(1)
    z_y = z.gather(1, safe).squeeze(1)
    # w_y and W = sum_c w_c are 1 and V without class weights.
    if class_weight is None:
        w_y: torch.Tensor | float = 1.0
        w_total: torch.Tensor | float = float(vocab)
    else:
        w_y, w_total = class_weight[safe.squeeze(1)], class_weight.sum()
    # eps / V * sum_c w_c z_c, before z is overwritten.
    if not eps:
        smoothing = None
    elif class_weight is None:
        smoothing = z.sum(1).mul_(eps / vocab)
    else:
        smoothing = (z @ class_weight).mul_(eps / vocab)
    total, lse = _exp_in_place(z)
    loss = (1.0 - eps) * w_y * (lse - z_y)
    if smoothing is not None:
        loss += (eps / vocab) * w_total * lse - smoothing
    loss = torch.where(counted, loss, 0.0)
    loss = torch.where(counted & ~valid, torch.nan, loss)
    if s is None:
        return loss, lse
    s, sz = s
    mass = s * ((1.0 - eps) * w_y + (eps / vocab) * w_total)
    if z_loss:
        mass = mass + (2.0 * z_loss) * sz * lse
    z.mul_((mass / total).unsqueeze(1))
    z.scatter_add_(1, safe, (-(1.0 - eps) * s * w_y).unsqueeze(1))
    if eps:  # - eps / V * s w
        if class_weight is None:
            z.sub_((eps / vocab * s).unsqueeze(1))
        else:
            z.addr_(s, class_weight, alpha=-eps / vocab)
    return loss, lse


def _probability_chunk(
    z: torch.Tensor,
    t: torch.Tensor,
    class_weight: torch.Tensor | None,
    opts: Options,
    s: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses and log-sum-exps of logits ``z`` against probabilities ``t`` (overwritten);
    G over ``z`` if ``s = (s, sz)`` is given.

    With ``u = w * ((1 - eps) t + eps / V)`` (``w = 1`` without class weights) the loss
    is ``sum_c u_c (lse - z_c)`` (the caller adds ``z_loss lse^2``) and
    ``G = softmax (s sum_c u_c + 2 z_loss sz lse) - s u``.

    ``0 log 0 = 0``: a ``-inf`` logit is first replaced by the dtype's most negative
    number, in place (its softmax is 0 either way), so that a zero ``u_c`` there adds 0,
    not NaN.  A positive ``u_c`` on a ``-inf`` logit (an infinite loss) then gives a loss
    of the order of the dtype's largest number instead of ``inf``.
    """
    vocab = z.shape[1]
    eps, z_loss = float(opts.label_smoothing), float(opts.z_loss)
    u = t
    if eps:
        u.mul_(1.0 - eps).add_(eps / vocab)
    if class_weight is not None:
        u.mul_(class_weight)
    mass = u.sum(1)
    z.clamp_(min=torch.finfo(z.dtype).min)
    # Row-wise dot products u . z as one batched product: no (chunk, V) temporary.
    cross = torch.bmm(u.unsqueeze(1), z.unsqueeze(2)).reshape(-1)
    total, lse = _exp_in_place(z)
    loss = mass * lse - cross
    if s is None:
        return loss, lse
    s, sz = s
    coef = s * mass
    if z_loss:
        coef = coef + (2.0 * z_loss) * sz * lse
    z.mul_((coef / total).unsqueeze(1))
    z.addcmul_(u, s.unsqueeze(1), value=-1.0)
    return loss, lse


def _scale(
    target: torch.Tensor, class_weight: torch.Tensor | None, opts: Options, dtype: torch.dtype
) -> tuple:
    """Per-token scales ``(s, sz)`` of the reduced loss's cross-entropy and z-loss parts,
    and the two ``mean`` divisors (None otherwise).

    The cross-entropy divisor is ``sum omega`` (the counted tokens, or their class
    weights: the rule of ``F.cross_entropy``), the z-loss one the number of counted
    tokens; a divisor of 0 becomes 1, so an all-ignored batch gives 0, not NaN.
    """
    if target.dtype.is_floating_point:  # probabilities: every token counts, omega = 1
        counted = torch.ones(target.shape[0], dtype=dtype, device=target.device)
    else:
        counted = (target != opts.ignore_index).to(dtype)
    if opts.reduction != "mean":
        return (counted, counted), None, None
    count = counted.sum()
    count = torch.where(count != 0, count, 1.0)
    if class_weight is None or target.dtype.is_floating_point:
        denom = count
    else:
        labels = torch.where(target != opts.ignore_index, target, 0)
        denom = (class_weight[labels.clamp(0, len(class_weight) - 1)] * counted).sum()
        denom = torch.where(denom != 0, denom, 1.0)
    zscale = counted / count
    return (counted / denom if denom is not count else zscale, zscale), denom, count


def _z_terms(lse: torch.Tensor, target: torch.Tensor, opts: Options) -> torch.Tensor | None:
    """``z_loss * lse^2`` per counted token (0 for ignored ones), None without z-loss."""
    if not opts.z_loss:
        return None
    z = opts.z_loss * lse.square()
    if target.dtype.is_floating_point:
        return z
    return torch.where(target != opts.ignore_index, z, 0.0)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, class_weight, opts):  # type: ignore[override]
        compute = _compute_dtype(hidden.dtype)
        in_forward = any(opts.needs_grad) and opts.reduction != "none"
        scale, denom, count = _scale(target, class_weight, opts, compute)
        losses, lses, dh, dw, db = _run(
            hidden,
            weight,
            bias,
            target,
            class_weight,
            opts,
            scale if in_forward else None,
            opts.needs_grad,
        )
        zterms = _z_terms(lses, target, opts)
        if opts.reduction == "none":
            out = losses if zterms is None else losses + zterms
        elif opts.reduction == "sum":
            out = losses.sum() if zterms is None else losses.sum() + zterms.sum()
        else:
            out = losses.sum() / denom
            if zterms is not None:
                out = out + zterms.sum() / count
        ctx.opts = opts
        ctx.grads = None
        if any(opts.needs_grad):
            ctx.save_for_backward(hidden, weight, bias, target, class_weight)
        if in_forward:
            ctx.grads = _finish(dh, dw, db, weight, bias)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        if torch.is_grad_enabled():
            # create_graph=True: the gradients computed in forward have no graph of their
            # own, so a second derivative would silently be zero.  Refuse instead.
            raise RuntimeError(
                "linear_cross_entropy does not support double backward (create_graph=True); "
                "use crossentropy.torch.cross_entropy on the logits for higher derivatives"
            )
        return _backward(ctx, grad)


def _backward(ctx, grad):
    opts = ctx.opts
    if ctx.grads is not None:
        # First backward of mean/sum: hand over the gradients computed in forward, scaled
        # in place, and drop our reference so that autograd adopts them without a copy.
        grads, ctx.grads = ctx.grads, None
    else:
        # reduction='none', or a second backward (retain_graph): recompute, with the same
        # per-token scale as the forward pass so that the result is bit for bit the same.
        hidden, weight, bias, target, class_weight = ctx.saved_tensors
        compute = _compute_dtype(hidden.dtype)
        if opts.reduction == "none":
            (counted, _), _, _ = _scale(target, class_weight, opts, compute)
            s = torch.where(counted != 0, grad.to(compute), 0.0)
            scale = (s, s)
            grad = None
        else:
            scale, _, _ = _scale(target, class_weight, opts, compute)
        _, _, dh, dw, db = _run(
            hidden, weight, bias, target, class_weight, opts, scale, opts.needs_grad
        )
        grads = _finish(dh, dw, db, weight, bias)
    if grad is not None:
        for g in grads:
            if g is not None:
                g.mul_(grad)
    dh, dw, db = grads
    return dh, dw, db, None, None, None


def _finish(dh, dw, db, weight, bias):
    """Cast the float32 accumulators to the parameters' dtypes (a no-op for float32)."""
    if dw is not None and dw.dtype != weight.dtype:
        dw = dw.to(weight.dtype)
    if db is not None and db.dtype != bias.dtype:
        db = db.to(bias.dtype)
    return [dh, dw, db]


@torch.compiler.disable
def apply(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    opts: Options,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the fused loss; ``torch.compile`` calls it as an opaque eager function.

    ``class_weight`` (V,), in the compute dtype, is a constant: it gets no gradient.
    """
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, class_weight, opts)

"""Distillation from a teacher: the divergences' chunk maths and the fused Function.

With ``p`` the teacher's and ``q`` the student's distribution over the ``V`` classes
(both at temperature ``T``: ``q = softmax(softcap(x) / T)``, ``p = softmax(t / T)`` from
the teacher's logits ``t``, themselves soft-capped for a :class:`Teacher` with a
softcap), per token:

=====================  ===========================================  ==================
divergence             loss                                         ``g = dL/dq``
=====================  ===========================================  ==================
``forward_kl``         ``D(p || q)``                                ``-p / q``
``reverse_kl``         ``D(q || p)``                                ``log(q / p) + 1``
``jsd``                ``b D(p || m) + (1 - b) D(q || m)``,         ``(1 - b) log(q/m)``
                       ``m = b p + (1 - b) q``
``skew_kl``            ``D(p || b p + (1 - b) q)``                  ``-(1 - b) p / m``
``skew_reverse_kl``    ``D(q || b q + (1 - b) p)``                  ``log(q/m) + 1 - b q/m``
``tvd``                ``1/2 sum |p - q|``                          ``sign(q - p) / 2``
=====================  ===========================================  ==================

(``jsd`` with ``b = 0`` is exactly ``forward_kl`` and with ``b = 1`` exactly
``reverse_kl``: the convention of TRL's ``GKDTrainer.generalized_jsd_loss``.)  Through
the softmax, ``dL/dz_c = q_c (g_c - sum_j q_j g_j)`` (``q - p`` for ``forward_kl``).
``0 log 0 = 0`` throughout: a class where a probability is 0 adds nothing.

A :class:`TopK` teacher (its log-probabilities at its ``k`` most likely classes) gives
the forward KL between the two distributions coarsened to those ``k`` classes and one
tail bucket (``p_tail = 1 - sum_k p``, ``q_tail = 1 - sum_k q``), whose gradient is
``q_c - p_c`` on the ``k`` classes and ``q_c (1 - p_tail / q_tail)`` elsewhere.

With ``hard_weight = lam`` the token's loss is ``(1 - lam) D + lam H(y, softmax(softcap(x)))``,
the hard part at temperature 1 against the class index ``y``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from . import _reduction
from ._driver import Gradients, Product, chunk_rows, forward_scales, fused_backward, spans
from ._heads import _max_and_sumexp, chain_, combine, transform_
from ._options import Options, compute_dtype

__all__ = ["Teacher", "TopK", "apply", "divergence_and_grad"]


class TopK(NamedTuple):
    """A teacher given by its log-probabilities at its ``k`` most likely classes.

    ``indices`` (..., k) integer classes (distinct per token), ``log_probs`` (..., k)
    their log-probabilities (<= 0), used as given (the temperature applies to the
    student only).  Only ``divergence='forward_kl'`` (over the ``k`` classes and one tail
    bucket, see :func:`crossentropy.torch.distillation_loss`).
    """

    indices: torch.Tensor
    log_probs: torch.Tensor


class Teacher(NamedTuple):
    """A teacher given by its output layer: logits ``hidden @ weight.T + bias``,
    soft-capped by ``softcap`` if given, computed a chunk at a time without gradient.

    ``hidden`` (..., D_t) may have another hidden size than the student's; ``weight``
    (V, D_t) must have the student's vocabulary."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None


def _canonical(opts: Options) -> str:
    if opts.divergence == "jsd" and opts.beta == 0.0:
        return "forward_kl"
    if opts.divergence == "jsd" and opts.beta == 1.0:
        return "reverse_kl"
    return opts.divergence


def _mixture(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """``log(weight a + (1 - weight) b)`` of two probability blocks."""
    return torch.add(a * weight, b, alpha=1.0 - weight).log_()


def _rowdot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise ``sum_c u_c v_c`` as one batched product: no (n, V) temporary."""
    return torch.bmm(u.unsqueeze(1), v.unsqueeze(2)).reshape(u.shape[0])


def _plogr(
    pr: torch.Tensor, lp: torch.Tensor, lr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums of ``p log(p / r)`` with ``0 log 0 = 0`` (``pr = p``, logs ``lp``, ``lr``),
    and the block ``log(p / r)`` with 0 where ``p = 0``."""
    d = (lp - lr).masked_fill_(pr == 0, 0.0)
    return _rowdot(pr, d), d


def divergence_terms(
    lp: torch.Tensor, lq: torch.Tensor, opts: Options, grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The divergence's sums over the classes of the blocks ``lp`` (teacher) and ``lq``
    (student) of log-probabilities (n, V_r): ``(loss, g, q, p, qg)`` with ``g = dL/dq``
    (module notes; None for ``forward_kl``, whose gradient is ``q - p``), ``q`` and ``p``
    the probabilities and ``qg = sum_c q_c g_c``.  Losses and ``qg`` add across slices."""
    p, q = lp.exp(), lq.exp()
    kind, b = _canonical(opts), opts.beta
    g: torch.Tensor | None = None
    qg: torch.Tensor | None = None
    if kind == "forward_kl":
        loss = _plogr(p, lp, lq)[0]
    elif kind == "reverse_kl":
        loss, g = _plogr(q, lq, lp)  # g = log(q / p) (+ 1, which the softmax step cancels)
        qg = loss
    elif kind == "jsd":
        lm = _mixture(p, q, b)
        kl_p = _plogr(p, lp, lm)[0]
        kl_q, log_ratio = _plogr(q, lq, lm)
        loss = b * kl_p + (1.0 - b) * kl_q
        g = log_ratio.mul_(1.0 - b)  # (1 - b) log(q / m), and sum q g = (1 - b) D(q || m)
        qg = (1.0 - b) * kl_q
    elif kind == "skew_kl":
        lm = _mixture(p, q, b)
        loss, log_ratio = _plogr(p, lp, lm)
        if grad:  # -(1 - b) p / m, 0 where p = 0
            g = log_ratio.exp_().mul_(p > 0).mul_(-(1.0 - b))
    elif kind == "skew_reverse_kl":
        lm = _mixture(q, p, b)
        loss, ratio = _plogr(q, lq, lm)
        if grad:
            g = ratio + 1.0 - b * ratio.exp()
    else:  # tvd
        diff = q - p
        loss = 0.5 * diff.abs().sum(-1)
        g = diff.sign_().mul_(0.5) if grad else None
    if g is not None and qg is None:
        qg = _rowdot(q, g)
    return loss, g, q, p, qg


def softmax_step(
    q: torch.Tensor, p: torch.Tensor, g: torch.Tensor | None, qg: torch.Tensor | None
) -> torch.Tensor:
    """``dL/dz = q (g - sum_j q_j g_j)`` (``qg`` the global sum), or ``q - p`` for the
    forward KL (``g`` None)."""
    if g is None:
        return q - p
    assert qg is not None
    return q * (g - qg.unsqueeze(1))


def divergence_and_grad(
    lp: torch.Tensor, lq: torch.Tensor, opts: Options, grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token divergence of whole rows of log-probabilities ``lp`` (teacher) and
    ``lq`` (student), (n, V), and with ``grad`` its gradient with respect to the
    student's transformed logits."""
    loss, g, q, p, qg = divergence_terms(lp, lq, opts, grad)
    return loss, softmax_step(q, p, g, qg) if grad else None


def top_k_kl_and_grad(
    lq: torch.Tensor, indices: torch.Tensor, lpk: torch.Tensor, grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The coarsened forward KL of a :class:`TopK` teacher (module notes).

    The student's tail is ``logsumexp`` of its log-probabilities outside the ``k``
    classes, not ``1 - sum_k q`` (which cancels catastrophically when the tail is small,
    and is rounding noise when ``k = V``: then there is no tail at all).
    """
    vocab, k = lq.shape[1], indices.shape[1]
    lqk = lq.gather(1, indices)
    pk = lpk.exp()
    loss = _plogr(pk, lpk, lqk)[0]
    outside = lq.scatter(1, indices, -torch.inf)
    if k < vocab:
        p_tail = (1.0 - pk.sum(-1)).clamp(min=0.0)
        lq_tail = torch.logsumexp(outside, -1)
        loss = loss + torch.where(p_tail > 0, p_tail * (p_tail.log() - lq_tail), 0.0)
    if not grad:
        return loss, None
    if k < vocab:
        # q_c (1 - p_tail / q_tail) outside the k classes, without dividing by q_tail.
        finite = torch.isfinite(lq_tail).unsqueeze(1)
        share = torch.where(finite, (outside - lq_tail.unsqueeze(1)).exp(), 0.0)
        g = lq.exp() - p_tail.unsqueeze(1) * share
    else:
        g = lq.exp()
    g.scatter_(1, indices, lqk.exp() - pk)
    return loss, g


def _log_softmax_(z: torch.Tensor) -> torch.Tensor:
    return z.sub_(torch.logsumexp(z, -1, keepdim=True))


class _TeacherBlocks:
    """The teacher's log-probabilities chunk by chunk: from its logits (a tensor read a
    chunk at a time) or its output layer (a product without gradient), or top-k."""

    def __init__(self, teacher: Any, opts: Options, rows: int) -> None:
        self.teacher, self.opts = teacher, opts
        self.product = None
        if isinstance(teacher, Teacher):
            cap = Options(softcap=teacher.softcap, temperature=opts.temperature)
            self.product = Product(teacher.hidden, teacher.weight, teacher.bias, cap, rows)

    def logits(self, a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
        """The teacher's transformed logits ``t / T`` of tokens ``a:b`` (a reused block for
        a :class:`Teacher`)."""
        if self.product is not None:
            z, _ = self.product.logits(a, b)
            return z if z.dtype == dtype else z.to(dtype)
        return self.teacher[a:b].to(dtype) / self.opts.temperature

    def __call__(self, a: int, b: int, dtype: torch.dtype) -> Any:
        """Log-probabilities of tokens ``a:b`` (a :class:`TopK`: its two blocks)."""
        if isinstance(self.teacher, TopK):
            return self.teacher.indices[a:b], self.teacher.log_probs[a:b].to(dtype)
        return _log_softmax_(self.logits(a, b, dtype))


def _chunk(
    z: torch.Tensor,
    teacher: Any,
    target: torch.Tensor | None,
    opts: Options,
    scale: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: per-token losses of the transformed student logits ``z`` (n, V), and
    with ``scale`` (n,) ``dL/dz`` scaled, in a new block (``z`` is overwritten)."""
    lam, temp = opts.hard_weight, opts.temperature
    grad = scale is not None
    hard = hard_grad = None
    if lam and target is not None:  # the hard part: softmax(softcap(x)) at T = 1
        z1 = z * temp
        lse1 = torch.logsumexp(z1, -1)
        counted = target != opts.ignore_index
        safe = torch.where(counted, target, 0).unsqueeze(1)
        hard = lse1 - z1.gather(1, safe).squeeze(1)
        if grad:
            hard_grad = z1.sub_(lse1.unsqueeze(1)).exp_()
            hard_grad.scatter_add_(1, safe, -counted.to(z.dtype).unsqueeze(1))
    lq = _log_softmax_(z)
    if isinstance(teacher, tuple):  # TopK: (indices, log_probs)
        loss, g = top_k_kl_and_grad(lq, teacher[0], teacher[1], grad)
    else:
        loss, g = divergence_and_grad(teacher, lq, opts, grad)
    if lam:
        loss = (1.0 - lam) * loss + (0.0 if hard is None else lam * hard)
    if not grad:
        return loss, None
    assert g is not None and scale is not None
    s = scale.unsqueeze(1)
    g = g.mul_(s * (1.0 - lam)) if lam else g.mul_(s)
    if hard_grad is not None:  # at T = 1: times T here, as the chain rule divides by T
        g.addcmul_(hard_grad, s, value=lam * temp)
    return loss, g


def _run(hidden, weight, bias, teacher, target, opts, scales, needs):
    """Per-token losses and, with ``scales``, the :class:`Gradients`."""
    num_tokens, dim = hidden.shape
    vocab = weight.shape[0]
    compute = compute_dtype(hidden.dtype)
    rows = chunk_rows(opts, num_tokens, vocab, dim, hidden.dtype, True)
    if opts.impl == "triton":
        return _run_triton(hidden, weight, bias, teacher, target, opts, scales, needs, rows)
    product = Product(hidden, weight, bias, opts, rows, keep_tanh=scales is not None)
    blocks = _TeacherBlocks(teacher, opts, rows)
    grads = None if scales is None else Gradients(hidden, weight, bias, needs)
    losses = torch.empty(num_tokens, dtype=compute, device=hidden.device)
    for a, b in spans(num_tokens, rows):
        z, tanh = product.logits(a, b)
        y = None if target is None else target[a:b]
        s = None if scales is None else scales[0][a:b]
        losses[a:b], g = _chunk(z, blocks(a, b, compute), y, opts, s)
        if grads is not None and g is not None:
            chain_(g, opts, tanh)
            grads.add(product.staged(g), g, hidden[a:b], a, b)
    return losses, grads


def _run_triton(hidden, weight, bias, teacher, target, opts, scales, needs, rows):
    """:func:`_run` with the Triton row kernel's divergence mode as the chunk step."""
    from ._triton import _linear
    from ._triton._distill import divergence_step

    product = Product(hidden, weight, bias, opts, rows, compute_block=False)
    if isinstance(teacher, Teacher):
        raw = Product(
            teacher.hidden, teacher.weight, teacher.bias, Options(), rows, compute_block=False
        )
        teacher_block, teacher_cap = raw.raw, teacher.softcap
    else:
        teacher_block, teacher_cap = (lambda a, b: teacher[a:b]), None
    kw = _linear.gradient_options(opts, hidden.dtype)
    grads = None if scales is None else Gradients(hidden, weight, bias, needs, **kw)
    compute = compute_dtype(hidden.dtype)
    losses = torch.empty(hidden.shape[0], dtype=compute, device=hidden.device)
    kind = _canonical(opts)
    for a, b in spans(hidden.shape[0], rows):
        x = product.raw(a, b)
        y = None if target is None else target[a:b]
        s = None if scales is None else scales[0][a:b].contiguous()
        losses[a:b] = divergence_step(x, teacher_block(a, b), teacher_cap, y, s, opts, kind)
        if grads is not None:
            grads.add(x, x, hidden[a:b], a, b)
    return losses, grads


class _LinearDistillation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, teacher_tensors, opts, needs, kind):  # type: ignore[override]
        teacher = _rebuild(kind, teacher_tensors)
        compute = compute_dtype(hidden.dtype)
        counted = _counted(target, hidden.shape[0], opts, compute, hidden.device)
        divs = _reduction.divisors(counted, counted, opts)
        scales = forward_scales(ctx, needs, counted, opts, divs)
        losses, ctx.grads = _run(hidden, weight, bias, teacher, target, opts, scales, needs)
        ctx.kind = kind
        if any(needs):
            ctx.save_for_backward(hidden, weight, bias, target, *teacher_tensors)
        return _reduction.reduce(torch.where(counted != 0, losses, 0.0), None, opts, divs)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        def recompute(scales):
            hidden, weight, bias, target, *teacher_tensors = ctx.saved_tensors
            teacher = _rebuild(ctx.kind, teacher_tensors)
            return _run(hidden, weight, bias, teacher, target, ctx.opts, scales, ctx.needs)[1]

        return (
            *fused_backward(ctx, grad, "linear_distillation_loss", "distillation_loss", recompute),
            *[None] * 5,
        )


def _counted(target, num_tokens, opts, dtype, device):
    if target is None:
        return torch.ones(num_tokens, dtype=dtype, device=device)
    return (target != opts.ignore_index).to(dtype)


def _flatten(teacher: Any) -> tuple[str, tuple]:
    """A teacher as tensors for the autograd Function (which takes no NamedTuple)."""
    if isinstance(teacher, TopK):
        return "topk", (teacher.indices, teacher.log_probs)
    if isinstance(teacher, Teacher):
        return f"teacher:{teacher.softcap!r}", (teacher.hidden, teacher.weight, teacher.bias)
    return "logits", (teacher,)


def _rebuild(kind: str, tensors: Any) -> Any:
    if kind == "topk":
        return TopK(*tensors)
    if kind.startswith("teacher:"):
        cap = kind.split(":", 1)[1]
        hidden, weight, bias = tensors
        return Teacher(hidden, weight, bias, None if cap == "None" else float(cap))
    return tensors[0]


@torch.compiler.disable
def apply(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher: Any,
    target: torch.Tensor | None,
    opts: Options,
) -> torch.Tensor:
    """The fused distillation loss of flat ``hidden`` (N, D); ``teacher`` flat too."""
    enabled = torch.is_grad_enabled()
    needs = (
        enabled and hidden.requires_grad,
        enabled and weight.requires_grad,
        enabled and bias is not None and bias.requires_grad,
    )
    kind, tensors = _flatten(teacher)
    return _LinearDistillation.apply(hidden, weight, bias, target, tensors, opts, needs, kind)


class _DenseDistillation(torch.autograd.Function):
    """Per-token losses of flat logits (N, V); ``dL/dx`` formed in forward by the same
    chunk maths (one chunk), scaled by the per-token upstream gradient in backward."""

    @staticmethod
    def forward(ctx, logits, target, teacher_tensors, opts, kind):  # type: ignore[override]
        compute = compute_dtype(logits.dtype)
        z = logits.to(compute, copy=True)
        tanh = torch.empty_like(z) if opts.softcap is not None else None
        transform_(z, opts, tanh)
        rows = logits.shape[0]
        teacher = _TeacherBlocks(_rebuild(kind, teacher_tensors), opts, rows)(0, rows, compute)
        needs = ctx.needs_input_grad[0]
        ones = torch.ones(rows, dtype=compute, device=logits.device)
        loss, g = _chunk(z, teacher, target, opts, ones if needs else None)
        if g is not None:
            chain_(g, opts, tanh)
        ctx.save_for_backward(g)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (g,) = ctx.saved_tensors
        return (g * grad.unsqueeze(1).to(g.dtype)).to(ctx.dtype), None, None, None, None


def dense(
    logits: torch.Tensor, teacher: Any, target: torch.Tensor | None, opts: Options
) -> torch.Tensor:
    """The reduced distillation loss of flat logits (N, V) and a flat teacher."""
    kind, tensors = _flatten(teacher)
    loss = _DenseDistillation.apply(logits, target, tensors, opts, kind)
    counted = _counted(target, logits.shape[0], opts, loss.dtype, logits.device)
    loss = torch.where(counted != 0, loss, 0.0)
    return _reduction.reduce(loss, None, opts, _reduction.divisors(counted, counted, opts))


# ------------------------------------------------------------- vocabulary parallelism


class _Sliced:
    """Per-chunk pieces of the vocabulary-parallel distillation, on this rank's slice:
    the student's and the teacher's transformed blocks and the hard part's label."""

    def __init__(self, hidden, weight, bias, teacher, target, opts, rows, keep_tanh):
        self.opts, self.target = opts, target
        self.product = Product(hidden, weight, bias, opts, rows, keep_tanh=keep_tanh)
        self.teacher = _TeacherBlocks(teacher, opts, rows)
        parallel = opts.parallel
        assert parallel is not None
        width = weight.shape[0]
        self.compute = compute_dtype(hidden.dtype)
        if target is not None:
            counted = target != opts.ignore_index
            self.hit = counted & (target >= parallel.start) & (target < parallel.stop)
            local = torch.where(self.hit, target - parallel.start, 0)
            self.local = local.clamp(max=max(width - 1, 0))

    def blocks(self, a: int, b: int):
        zs, tanh = self.product.logits(a, b)
        return zs, self.teacher.logits(a, b, self.compute), tanh


def _hard(opts: Options, target: torch.Tensor | None) -> bool:
    return bool(opts.hard_weight) and target is not None


class _ParallelDistillation(torch.autograd.Function):
    """Per-token losses over a vocabulary split across a group (module notes of
    :mod:`._parallel_functions` for the pattern): pass 1 gathers the three
    normalisers (student at T, teacher at T, student at 1 for the hard part) through one
    combine; pass 2 the divergence's sums and ``sum q g`` (one more ``all_reduce``);
    backward recomputes the blocks and sums ``dh`` over the group."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, teacher_tensors, opts, kind):  # type: ignore[override]
        teacher = _rebuild(kind, teacher_tensors)
        num_tokens, dim = hidden.shape
        rows = chunk_rows(opts, num_tokens, weight.shape[0], dim, hidden.dtype, True)
        sliced = _Sliced(hidden, weight, bias, teacher, target, opts, rows, False)
        hard, temp = _hard(opts, target), opts.temperature
        maxima, sums, z1y = [], [], []
        for a, b in [*spans(num_tokens, rows)] or [(0, 0)]:
            zs, zt, _ = sliced.blocks(a, b)
            if hard:  # before the statistics below turn zs into exp(zs - max) in place
                z1 = zs * temp
                picked = (
                    z1.gather(1, sliced.local[a:b].unsqueeze(1)).squeeze(1)
                    if z1.shape[1]
                    else z1[:, 0:0].sum(1)
                )
                z1y.append(torch.where(sliced.hit[a:b], picked, 0.0))
            pairs = [_max_and_sumexp(zs), _max_and_sumexp(zt)]
            if hard:
                pairs.append(_max_and_sumexp(z1))
            maxima.append(torch.stack([m for m, _ in pairs]))
            sums.append(torch.stack([e for _, e in pairs]))
        extra = [torch.cat(z1y)] if hard else []
        shift, combined = combine(torch.cat(maxima, 1), [torch.cat(sums, 1), *extra], opts.parallel)
        lse = shift + combined[0].log()  # (2 or 3, N): student at T, teacher at T, student at 1
        parts, qgs = [], []
        for a, b in spans(num_tokens, rows):
            zs, zt, _ = sliced.blocks(a, b)
            lq, lp = zs - lse[0, a:b, None], zt - lse[1, a:b, None]
            loss, _, _, _, qg = divergence_terms(lp, lq, opts)
            parts.append(loss)
            qgs.append(torch.zeros_like(loss) if qg is None else qg)
        empty = lse.new_zeros(0)
        packed = torch.stack(
            [torch.cat(parts) if parts else empty, torch.cat(qgs) if qgs else empty]
        )
        torch.distributed.all_reduce(packed, group=opts.parallel.group)
        div, qg = packed[0], packed[1]
        lam = opts.hard_weight
        if hard:
            div = (1.0 - lam) * div + lam * (lse[2] - combined[1])
        counted = _counted(target, num_tokens, opts, div.dtype, div.device)
        loss = torch.where(counted != 0, div, 0.0)
        ctx.opts, ctx.kind, ctx.rows = opts, kind, rows
        ctx.save_for_backward(hidden, weight, bias, target, lse, qg, counted, *teacher_tensors)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        opts, rows = ctx.opts, ctx.rows
        hidden, weight, bias, target, lse, qg, counted, *teacher_tensors = ctx.saved_tensors
        teacher = _rebuild(ctx.kind, teacher_tensors)
        sliced = _Sliced(hidden, weight, bias, teacher, target, opts, rows, True)
        compute = compute_dtype(hidden.dtype)
        s = torch.where(counted != 0, grad.to(compute), 0.0)
        needs = tuple(ctx.needs_input_grad[:3])
        grads = Gradients(hidden, weight, bias, needs, dh_dtype=compute)
        hard, lam, temp = _hard(opts, target), opts.hard_weight, opts.temperature
        for a, b in spans(hidden.shape[0], rows):
            zs, zt, tanh = sliced.blocks(a, b)
            lq, lp = zs - lse[0, a:b, None], zt - lse[1, a:b, None]
            _, g, q, p, _ = divergence_terms(lp, lq, opts)
            big_g = softmax_step(q, p, g, qg[a:b]).mul_((s[a:b] * (1.0 - lam)).unsqueeze(1))
            if hard:  # at T = 1: times T here, as the chain rule divides by T
                soft1 = (zs * temp - lse[2, a:b, None]).exp_()
                if soft1.shape[1]:
                    onehot = torch.where(sliced.hit[a:b], -1.0, 0.0).to(soft1.dtype)
                    soft1.scatter_add_(1, sliced.local[a:b].unsqueeze(1), onehot.unsqueeze(1))
                big_g.addcmul_(soft1, (s[a:b] * lam * temp).unsqueeze(1))
            chain_(big_g, opts, tanh)
            grads.add(sliced.product.staged(big_g), big_g, hidden[a:b], a, b)
        parallel = opts.parallel
        if grads.dh is not None and parallel.reduce_hidden_grad:
            torch.distributed.all_reduce(grads.dh, group=parallel.group)
        dh, dw, db = grads.finish(dh_dtype=hidden.dtype)
        return dh, dw, db, None, None, None, None


@torch.compiler.disable
def parallel(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher: Any,
    target: torch.Tensor | None,
    opts: Options,
) -> torch.Tensor:
    """Per-token distillation losses (N,) over a vocabulary-parallel group."""
    kind, tensors = _flatten(teacher)
    return _ParallelDistillation.apply(hidden, weight, bias, target, tensors, opts, kind)

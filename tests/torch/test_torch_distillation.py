"""distillation_loss and linear_distillation_loss (issue 14) against a float64 oracle
that materialises both distributions, TRL's GKD loss and Liger-Kernel's fused JSD.

The oracle below is written from the definitions (F.log_softmax, probabilities, their
mixture), not from crossentropy's chunk maths: with ``p = softmax(t / T)`` the
teacher's and ``q = softmax(softcap(x) / T)`` the student's distribution, per token

* ``forward_kl`` D(p || q), ``reverse_kl`` D(q || p),
* ``jsd`` b D(p || m) + (1 - b) D(q || m), m = b p + (1 - b) q, with b = 0 forward KL and
  b = 1 reverse KL (TRL's convention: the literal formula would be 0 there),
* ``skew_kl`` D(p || b p + (1 - b) q), ``skew_reverse_kl`` D(q || b q + (1 - b) p),
* ``tvd`` 1/2 sum |p - q|,
* a TopK teacher: the forward KL of both distributions coarsened to the k classes plus
  one tail bucket, the student's tail summed over the other classes (not 1 - sum),

then ``(1 - lam) D + lam CE(softcap(x), y)`` (the hard part at T = 1), ignored tokens 0,
``mean`` over the counted tokens (or ``normalize_by``), 0 when nothing counts.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import crossentropy  # noqa: E402
from crossentropy.torch import (  # noqa: E402
    Teacher,
    TopK,
    distillation_loss,
    linear_cross_entropy,
    linear_distillation_loss,
)

F64 = torch.float64
REDUCTIONS = ["mean", "sum", "none"]
BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]
# (divergence, beta): every divergence; jsd at every beta, skew_* only inside (0, 1).
CASES = (
    [("forward_kl", 0.5), ("reverse_kl", 0.5), ("tvd", 0.5)]
    + [("jsd", b) for b in BETAS]
    + [(d, b) for d in ("skew_kl", "skew_reverse_kl") for b in BETAS if 0.0 < b < 1.0]
)
CASE_IDS = [f"{d}-{b}" for d, b in CASES]


# --------------------------------------------------------------------------- the oracle


def softcapped(x, cap):
    return x if cap is None else cap * torch.tanh(x / cap)


def safe_log(x):
    """log x with log 0 = -inf and a zero (not NaN) gradient there."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, 1.0).log(), -math.inf)


def plogr(a, la, lr):
    """sum_c a_c (log a_c - log r_c) over the last axis, 0 log 0 = 0 (and gradient 0)."""
    pos = a > 0
    inner = torch.where(pos, la, 0.0) - torch.where(pos, lr, 0.0)
    return torch.where(pos, a * inner, 0.0).sum(-1)


def ref_divergence(lp, lq, divergence, beta):
    p, q = lp.exp(), lq.exp()
    if divergence == "jsd" and beta == 0.0:
        divergence = "forward_kl"
    if divergence == "jsd" and beta == 1.0:
        divergence = "reverse_kl"
    if divergence == "forward_kl":
        return plogr(p, lp, lq)
    if divergence == "reverse_kl":
        return plogr(q, lq, lp)
    if divergence == "jsd":
        lm = safe_log(beta * p + (1 - beta) * q)
        return beta * plogr(p, lp, lm) + (1 - beta) * plogr(q, lq, lm)
    if divergence == "skew_kl":
        return plogr(p, lp, safe_log(beta * p + (1 - beta) * q))
    if divergence == "skew_reverse_kl":
        return plogr(q, lq, safe_log(beta * q + (1 - beta) * p))
    assert divergence == "tvd"
    return 0.5 * (p - q).abs().sum(-1)


def ref_top_k(lq, indices, lpk):
    """Coarsened forward KL: k classes plus a tail bucket (student tail summed directly)."""
    q = lq.exp()
    lqk = lq.gather(-1, indices)
    pk = lpk.exp()
    if indices.shape[-1] == q.shape[-1]:  # k = V: no tail (1 - sum p_k is rounding noise)
        return plogr(pk, lpk, lqk)
    rest = torch.ones_like(q, dtype=torch.bool).scatter(-1, indices, False)
    q_tail = torch.where(rest, q, 0.0).sum(-1, keepdim=True)
    p_tail = (1.0 - pk.sum(-1, keepdim=True)).clamp(min=0.0)
    return plogr(pk, lpk, lqk) + plogr(p_tail, safe_log(p_tail), safe_log(q_tail))


def teacher_logits64(teacher):
    """A Teacher's logits, materialised in float64 (its own softcap)."""
    h, w, b, cap = teacher
    t = h.double() @ w.double().T
    if b is not None:
        t = t + b.double()
    return softcapped(t, cap)


def reference(
    logits,
    teacher,
    *,
    divergence="forward_kl",
    beta=0.5,
    temperature=1.0,
    target=None,
    hard_weight=0.0,
    ignore_index=-100,
    reduction="mean",
    normalize_by=None,
    softcap=None,
):
    x = softcapped(logits.double(), softcap)
    lq = F.log_softmax(x / temperature, -1)
    if isinstance(teacher, TopK):
        d = ref_top_k(lq, teacher.indices.long(), teacher.log_probs.double())
    else:
        t = teacher_logits64(teacher) if isinstance(teacher, Teacher) else teacher.double()
        d = ref_divergence(F.log_softmax(t / temperature, -1), lq, divergence, beta)
    counted = torch.ones(d.shape, dtype=torch.bool) if target is None else target != ignore_index
    if hard_weight:
        vocab = x.shape[-1]
        hard = F.cross_entropy(
            x.reshape(-1, vocab), target.reshape(-1), ignore_index=ignore_index, reduction="none"
        ).reshape(d.shape)
        d = (1 - hard_weight) * d + hard_weight * hard
    loss = torch.where(counted, d, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    divisor = counted.sum() if normalize_by is None else torch.as_tensor(normalize_by, dtype=F64)
    return loss.sum() / divisor if divisor else loss.sum() * 0.0


def linear_reference(hidden, weight, teacher, *, bias=None, **options):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    return reference(z, teacher, **options)


# --------------------------------------------------------------------------- helpers


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (two threads on a loaded 2-core machine spend
    milliseconds per matmul waiting for each other); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_targets(batch, vocab, g, *, ignore=0.25, ignore_index=-100):
    y = torch.randint(0, vocab, batch, generator=g)
    y[torch.rand(batch, generator=g) < ignore] = ignore_index
    return y


def make_dense(batch, vocab, seed=0, dtype=F64, scale=2.0):
    g = gen(seed)
    z = (torch.randn(*batch, vocab, generator=g, dtype=F64) * scale).to(dtype).requires_grad_()
    t = (torch.randn(*batch, vocab, generator=g, dtype=F64) * scale).to(dtype)
    return z, t, g


def make_linear(batch, dim, vocab, seed=0, dtype=F64, bias=True, teacher_dim=None):
    g = gen(seed)
    h = torch.randn(*batch, dim, generator=g, dtype=F64)
    w = torch.randn(vocab, dim, generator=g, dtype=F64) * 2 / math.sqrt(dim)
    b = torch.randn(vocab, generator=g, dtype=F64) if bias else None
    cast = [None if a is None else a.to(dtype).requires_grad_() for a in (h, w, b)]
    dt = teacher_dim or dim
    th = torch.randn(*batch, dt, generator=g, dtype=F64).to(dtype)
    tw = (torch.randn(vocab, dt, generator=g, dtype=F64) * 2 / math.sqrt(dt)).to(dtype)
    tb = torch.randn(vocab, generator=g, dtype=F64).to(dtype)
    return (*cast, th, tw, tb, g)


def top_k_of(teacher_logits, k):
    """The teacher's true top-k: classes and their log-probabilities (at T = 1)."""
    lp = F.log_softmax(teacher_logits.double(), -1)
    values, indices = lp.topk(k, -1)
    return TopK(indices, values.to(teacher_logits.dtype))


def grads(out, tensors, upstream=None):
    tensors = [t for t in tensors if t is not None]
    return torch.autograd.grad(out, tensors, upstream, allow_unused=True)


def assert_same(ours, ref, tensors, reduction, *, rtol=1e-10, atol=1e-12, seed=0):
    """Loss and gradients equal the reference's (a random upstream gradient for none)."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)
    upstream = None
    if reduction == "none":
        upstream = torch.randn(ref.shape, generator=gen(seed + 99), dtype=ref.dtype)
    got = grads(ours, tensors, upstream)
    want = grads(ref, tensors, upstream)
    for a, b in zip(got, want, strict=True):
        assert b is not None
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    return got


# Options that change the value, each checked with every reduction it allows.
OPTION_SETS = [
    {},
    {"temperature": 2.0},
    {"temperature": 0.5, "softcap": 3.0},
    {"target": True},  # ignored tokens count for nothing, even with hard_weight 0
    {"target": True, "hard_weight": 0.3, "ignore_index": 3, "temperature": 1.5},
    {"target": True, "hard_weight": 1.0, "softcap": 4.0},
    {"normalize_by": 7.0},
    {"target": True, "normalize_by": "tensor"},
]


def concrete(options, batch, vocab, g):
    """Turn the placeholders of OPTION_SETS into tensors."""
    out = dict(options)
    if out.get("target"):
        out["target"] = make_targets(batch, vocab, g, ignore_index=out.get("ignore_index", -100))
    if out.get("normalize_by") == "tensor":
        out["normalize_by"] = torch.tensor(11.0, dtype=F64)
    return out


def reductions_of(options):
    return ["mean"] if "normalize_by" in options else REDUCTIONS


# --------------------------------------------------------------------------- dense


@pytest.mark.parametrize("divergence, beta", CASES, ids=CASE_IDS)
def test_dense_every_divergence_option_and_reduction(divergence, beta):
    batch, vocab = (3, 5), 17
    for i, options in enumerate(OPTION_SETS):
        z, t, g = make_dense(batch, vocab, seed=i)
        opts = concrete(options, batch, vocab, g)
        for reduction in reductions_of(options):
            kw = dict(opts, divergence=divergence, beta=beta, reduction=reduction)
            ours = distillation_loss(z, t, **kw)
            ref = reference(z, t, **kw)
            assert_same(ours, ref, [z], reduction, seed=i)


@pytest.mark.parametrize("divergence, beta", CASES, ids=CASE_IDS)
def test_linear_every_divergence_option_and_reduction(divergence, beta):
    """Logits teacher and Teacher (another hidden size, bias, own softcap), chunked."""
    batch, dim, vocab = (3, 5), 6, 17
    for i, options in enumerate(OPTION_SETS):
        h, w, b, th, tw, tb, g = make_linear(batch, dim, vocab, seed=i, teacher_dim=9)
        opts = concrete(options, batch, vocab, g)
        teachers = [Teacher(th, tw, tb, softcap=2.5), th @ tw.T + tb]
        for reduction in reductions_of(options):
            for j, teacher in enumerate(teachers):
                bias = b if j == 0 else None
                kw = dict(opts, divergence=divergence, beta=beta, reduction=reduction)
                ours = linear_distillation_loss(h, w, teacher, bias=bias, chunk_size=4, **kw)
                ref = linear_reference(h, w, teacher, bias=bias, **kw)
                assert_same(ours, ref, [h, w, bias], reduction, seed=i)


@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_teacher_against_reference(k, temperature):
    batch, dim, vocab = (3, 5), 6, 17
    h, w, b, th, tw, tb, g = make_linear(batch, dim, vocab, seed=k, teacher_dim=9)
    top = top_k_of(teacher_logits64(Teacher(th, tw, tb)), k)
    y = make_targets(batch, vocab, g)
    for reduction in REDUCTIONS:
        for extra in ({}, {"target": y, "hard_weight": 0.25, "softcap": 5.0}):
            kw = dict(extra, temperature=temperature, reduction=reduction)
            ours = linear_distillation_loss(h, w, top, bias=b, chunk_size=4, **kw)
            ref = linear_reference(h, w, top, bias=b, **kw)
            assert_same(ours, ref, [h, w, b], reduction, rtol=1e-9, atol=1e-11)
            z = (h @ w.T + b).detach().requires_grad_()
            assert_same(distillation_loss(z, top, **kw), reference(z, top, **kw), [z], reduction)


def test_top_k_with_every_class_is_the_forward_kl():
    """k = V: no tail, the coarsened KL is the full forward KL (at T = 1)."""
    z, t, _ = make_dense((64,), 9, seed=5)  # 64 rows: some hit p_tail > 0 >= q_tail
    top = top_k_of(t, 9)
    ours = distillation_loss(z, top, reduction="none")
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, reference(z, t, reduction="none"), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_top_k_tiny_student_tail(dtype):
    t = torch.tensor([[2.0, 1.0, 0.5, 0.0, -3.0]], dtype=F64)
    top = top_k_of(t, 4)  # the tail is class 4: p_tail = 6.7e-3
    z = torch.tensor([[2.0, 1.0, 0.5, 0.0, -50.0]], dtype=F64).requires_grad_()
    ref = reference(z, top, reduction="sum")
    (ref_g,) = grads(ref, [z])
    zd = z.detach().to(dtype).requires_grad_()
    ours = distillation_loss(zd, TopK(top.indices, top.log_probs.to(dtype)), reduction="sum")
    (ours_g,) = grads(ours, [zd])
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(ours_g.double(), ref_g, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "batch, dim, vocab, chunk",
    [((37,), 16, 1001, None), ((37,), 16, 1001, 8), ((2, 3, 5), 4, 7, 7), ((1,), 3, 2, None)],
)
@pytest.mark.parametrize("divergence, beta", [("jsd", 0.5), ("skew_reverse_kl", 0.1), ("tvd", 0.5)])
def test_odd_shapes(batch, dim, vocab, chunk, divergence, beta):
    h, w, b, th, tw, tb, g = make_linear(batch, dim, vocab, seed=vocab, teacher_dim=dim + 3)
    y = make_targets(batch, vocab, g)
    teacher = Teacher(th, tw, tb)
    kw = {"divergence": divergence, "beta": beta, "target": y, "temperature": 1.3}
    for reduction in ("mean", "none"):
        ours = linear_distillation_loss(
            h, w, teacher, bias=b, reduction=reduction, chunk_size=chunk, **kw
        )
        ref = linear_reference(h, w, teacher, bias=b, reduction=reduction, **kw)
        assert_same(ours, ref, [h, w, b], reduction, rtol=1e-9, atol=1e-11)
    z = (h @ w.T + b).detach().requires_grad_()
    t = teacher_logits64(teacher)
    assert_same(distillation_loss(z, t, **kw), reference(z, t, **kw), [z], "mean")


def test_chunk_size_does_not_change_the_result():
    h, w, b, th, tw, tb, g = make_linear((29,), 8, 23, seed=3, teacher_dim=5)
    y = make_targets((29,), 23, g)
    kw = {"divergence": "jsd", "beta": 0.3, "target": y, "hard_weight": 0.2}
    want = linear_distillation_loss(h, w, Teacher(th, tw, tb, 3.0), bias=b, **kw)
    want_g = grads(want, [h, w, b])
    for chunk in (1, 5, 29, 64):
        got = linear_distillation_loss(
            h, w, Teacher(th, tw, tb, 3.0), bias=b, chunk_size=chunk, **kw
        )
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        for a, c in zip(grads(got, [h, w, b]), want_g, strict=True):
            torch.testing.assert_close(a, c, rtol=1e-11, atol=1e-13)


# --------------------------------------------------------------------------- half precision


def torch_same_dtype(z, t, divergence, beta, temperature):
    """What a PyTorch user writes, in the inputs' own dtype (TRL's formulas)."""
    lq = F.log_softmax(z / temperature, -1)
    lp = F.log_softmax(t / temperature, -1)
    if divergence == "forward_kl":
        d = F.kl_div(lq, lp, reduction="none", log_target=True)
    else:
        lm = torch.logsumexp(torch.stack([lq + math.log1p(-beta), lp + math.log(beta)]), 0)
        d = beta * F.kl_div(lm, lp, reduction="none", log_target=True) + (1 - beta) * F.kl_div(
            lm, lq, reduction="none", log_target=True
        )
    return d.sum(-1).mean()


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence, beta", [("forward_kl", 0.5), ("jsd", 0.5), ("jsd", 0.9)])
def test_half_precision_no_worse_than_pytorch(dtype, divergence, beta):
    """Loss and gradients no worse than PyTorch's own computation in the same dtype, plus
    a tolerance, against the float64 oracle on the same (rounded) inputs."""
    batch, dim, vocab, temp = (64,), 32, 257, 2.0
    h, w, _, th, tw, tb, _ = make_linear(batch, dim, vocab, seed=7, dtype=dtype, bias=False)
    teacher = Teacher(th, tw, tb)
    t = teacher_logits64(teacher)
    kw = {"divergence": divergence, "beta": beta, "temperature": temp}
    ref = linear_reference(h, w, teacher, **kw)
    ref_g = grads(ref, [h, w])
    # fused
    ours = linear_distillation_loss(h, w, teacher, chunk_size=16, **kw)
    assert ours.dtype == torch.float32
    ours_g = grads(ours, [h, w])
    base = torch_same_dtype(h @ w.T, (th @ tw.T + tb), divergence, beta, temp)
    base_g = grads(base, [h, w])
    tol = 1e-3 if dtype == torch.bfloat16 else 1e-4
    assert rel_err(ours, ref) <= rel_err(base, ref) + tol
    for a, b, c in zip(ours_g, base_g, ref_g, strict=True):
        assert a.dtype == dtype
        assert rel_err(a, c) <= rel_err(b, c) + tol
    # dense: logits in the half dtype
    z = (h @ w.T).detach().requires_grad_()
    tz = t.to(dtype)
    ref = reference(z, tz, **kw)
    ours = distillation_loss(z, tz, **kw)
    base = torch_same_dtype(z, tz, divergence, beta, temp)
    (ref_gz,), (ours_gz,), (base_gz,) = grads(ref, [z]), grads(ours, [z]), grads(base, [z])
    assert ours.dtype == torch.float32 and ours_gz.dtype == dtype
    assert rel_err(ours, ref) <= rel_err(base, ref) + tol
    assert rel_err(ours_gz, ref_gz) <= rel_err(base_gz, ref_gz) + tol


# --------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    "divergence, beta", [*CASES[:3], ("jsd", 0.3), ("skew_kl", 0.3), ("skew_reverse_kl", 0.7)]
)
def test_gradcheck_float64(divergence, beta):
    g = gen(1)
    z = torch.randn(2, 3, 5, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(2, 3, 5, generator=g, dtype=F64)
    y = torch.tensor([[1, -100, 4], [0, 2, -100]])
    kw = {"divergence": divergence, "beta": beta, "temperature": 1.5, "softcap": 3.0}
    for reduction in ("mean", "none"):
        kw["reduction"] = reduction
        assert torch.autograd.gradcheck(
            lambda z: distillation_loss(z, t, target=y, hard_weight=0.2, **kw), (z,)
        )
    h = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(5, 3, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=F64, requires_grad=True)
    th, tw = torch.randn(4, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    teacher = Teacher(th, tw, torch.randn(5, generator=g, dtype=F64), softcap=2.0)
    for reduction in ("sum", "none"):
        kw["reduction"] = reduction
        assert torch.autograd.gradcheck(
            lambda h, w, b: linear_distillation_loss(h, w, teacher, bias=b, chunk_size=3, **kw),
            (h, w, b),
        )


def test_gradcheck_top_k():
    g = gen(2)
    h = torch.randn(4, 3, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(6, 3, generator=g, dtype=F64, requires_grad=True)
    top = top_k_of(torch.randn(4, 6, generator=g, dtype=F64), 2)
    for reduction in ("mean", "none"):

        def loss(h, w, reduction=reduction):
            return linear_distillation_loss(
                h, w, top, temperature=0.8, reduction=reduction, chunk_size=3
            )

        assert torch.autograd.gradcheck(loss, (h, w))


# --------------------------------------------------------------------------- the teacher


def test_no_gradient_to_the_teacher():
    h, w, b, th, tw, tb, _ = make_linear((6,), 4, 7, teacher_dim=3)
    for t in (th, tw, tb):
        t.requires_grad_()
    tz = (th @ tw.T + tb).detach().requires_grad_()
    top = top_k_of(tz.detach(), 3)
    top = TopK(top.indices, top.log_probs.requires_grad_())
    for teacher in (Teacher(th, tw, tb, 2.0), tz, top):
        loss = linear_distillation_loss(h, w, teacher, bias=b)
        loss.backward()
        assert all(x.grad is not None for x in (h, w, b))
        for x in (th, tw, tb, tz, top.log_probs):
            assert x.grad is None
        # a student without gradient: the loss has no graph at all
        loss = linear_distillation_loss(h.detach(), w.detach(), teacher, bias=b.detach())
        assert not loss.requires_grad
    z = (h @ w.T).detach().requires_grad_()
    for teacher in (tz, top):
        distillation_loss(z, teacher).backward()
        assert tz.grad is None and top.log_probs.grad is None
        assert not distillation_loss(z.detach(), teacher).requires_grad


# --------------------------------------------------------------------------- 0 log 0


# Classes 0-1: both -inf; 2-3: the teacher -inf only; 4-5: the student -inf only.
FINITE_CLASSES = {"forward_kl": [0, 1, 2, 3], "reverse_kl": [0, 1, 4, 5]}


@pytest.mark.parametrize("divergence, beta", CASES, ids=CASE_IDS)
def test_zero_log_zero(divergence, beta):
    """-inf teacher logits and a -inf student bias: finite loss and gradients, equal to
    the oracle's (with forward KL only where q = 0 implies p = 0, reverse KL conversely)."""
    kind = {("jsd", 0.0): "forward_kl", ("jsd", 1.0): "reverse_kl"}.get((divergence, beta))
    classes = FINITE_CLASSES.get(kind or divergence, list(range(6)))
    h, w, b, th, tw, tb, g = make_linear((3, 4), 5, 11, seed=4, teacher_dim=5)
    with torch.no_grad():
        b[[c for c in classes if c in (0, 1, 4, 5)]] = -math.inf
    t = (th @ tw.T + tb).clone()
    t[..., [c for c in classes if c in (0, 1, 2, 3)]] = -math.inf
    y = make_targets((3, 4), 11, g)
    y[y < 6] = 7  # the hard part's label on a finite class
    kw = {"divergence": divergence, "beta": beta, "target": y, "hard_weight": 0.1}
    for reduction in REDUCTIONS:
        ours = linear_distillation_loss(h, w, t, bias=b, reduction=reduction, chunk_size=5, **kw)
        assert torch.isfinite(ours).all()
        ref = linear_reference(h, w, t, bias=b, reduction=reduction, **kw)
        gs = assert_same(ours, ref, [h, w, b], reduction, rtol=1e-9, atol=1e-11)
        assert all(torch.isfinite(x).all() for x in gs)
        z = (h @ w.T + b).detach().requires_grad_()
        dense = distillation_loss(z, t, reduction=reduction, **kw)
        assert torch.isfinite(dense).all()
        (gz,) = assert_same(dense, reference(z, t, reduction=reduction, **kw), [z], reduction)
        assert torch.isfinite(gz).all()


def test_mass_on_an_impossible_class_is_infinite():
    """forward KL with p > 0 where q = 0 is +inf (not NaN, not ~1e38)."""
    z = torch.tensor([[0.0, -math.inf, 1.0]], dtype=F64)
    t = torch.tensor([[0.0, 0.0, 0.0]], dtype=F64)
    assert distillation_loss(z, t).item() == math.inf
    assert distillation_loss(t, z, divergence="reverse_kl").item() == math.inf
    for d in ("jsd", "skew_kl", "skew_reverse_kl", "tvd"):
        assert math.isfinite(distillation_loss(z, t, divergence=d, beta=0.5).item())


# --------------------------------------------------------------------------- all ignored


@pytest.mark.parametrize("divergence, beta", [("forward_kl", 0.5), ("jsd", 0.5), ("tvd", 0.5)])
def test_all_ignored_gives_zero_and_zero_gradients(divergence, beta):
    h, w, b, th, tw, tb, _ = make_linear((2, 3), 4, 7, teacher_dim=3)
    y = torch.full((2, 3), -100)
    z = (h @ w.T + b).detach().requires_grad_()
    top = top_k_of(z.detach(), 2)
    for reduction in REDUCTIONS:
        for hard in (0.0, 0.5):
            kw = {"divergence": divergence, "beta": beta, "target": y, "hard_weight": hard}
            kw["reduction"] = reduction
            for teacher in (Teacher(th, tw, tb), th @ tw.T, top):
                if isinstance(teacher, TopK) and divergence != "forward_kl":
                    continue
                loss = linear_distillation_loss(h, w, teacher, bias=b, **kw)
                assert (loss == 0).all() and torch.isfinite(loss).all()
                up = torch.randn_like(loss) if reduction == "none" else None
                for x in grads(loss, [h, w, b], up):
                    assert (x == 0).all()
                dense = distillation_loss(
                    z, th @ tw.T if not isinstance(teacher, TopK) else top, **kw
                )
                assert (dense == 0).all()
                assert (grads(dense, [z], up)[0] == 0).all()


def test_normalize_by_zero_gives_zero():
    h, w, b, th, tw, tb, g = make_linear((2, 3), 4, 7, teacher_dim=3)
    y = make_targets((2, 3), 7, g)
    for by in (0, torch.tensor(0.0, dtype=F64)):
        kw = {"target": y, "divergence": "jsd", "hard_weight": 0.5, "normalize_by": by}
        loss = linear_distillation_loss(h, w, Teacher(th, tw, tb), bias=b, **kw)
        assert loss.item() == 0
        assert all((x == 0).all() for x in grads(loss, [h, w, b]))


def test_second_backward_and_double_backward():
    """retain_graph: a second backward (recomputed) equals the first; create_graph is
    refused by the fused loss."""
    h, w, b, th, tw, tb, g = make_linear((3, 4), 5, 9, teacher_dim=6)
    y = make_targets((3, 4), 9, g)
    kw = {"divergence": "skew_kl", "beta": 0.2, "target": y, "hard_weight": 0.3}
    for reduction in ("mean", "none"):
        loss = linear_distillation_loss(
            h, w, Teacher(th, tw, tb), bias=b, reduction=reduction, **kw
        )
        up = torch.ones_like(loss)
        first = torch.autograd.grad(loss, [h, w, b], up, retain_graph=True)
        second = torch.autograd.grad(loss, [h, w, b], up)
        for a, c in zip(first, second, strict=True):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)
    loss = linear_distillation_loss(h, w, Teacher(th, tw, tb), bias=b, **kw)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, [h], create_graph=True)


# --------------------------------------------------------------------------- the essay


@pytest.mark.parametrize("temperature, softcap", [(1.0, None), (2.0, None), (0.7, 4.0)])
def test_forward_kl_minus_cross_entropy_is_minus_the_teacher_entropy(temperature, softcap):
    """H(p, q) = D(p || q) + S(p): the fused forward KL minus the fused cross-entropy to
    the soft target p = softmax(t / T) is -S(p) per token, gradients equal."""
    h, w, b, th, tw, tb, _ = make_linear((4, 5), 6, 13, seed=8)
    t = (th @ tw.T + tb) * 2
    p = torch.softmax(t / temperature, -1)
    kw = {"bias": b, "temperature": temperature, "softcap": softcap, "reduction": "none"}
    kl = linear_distillation_loss(h, w, t, divergence="forward_kl", chunk_size=3, **kw)
    ce = linear_cross_entropy(h, w, p, chunk_size=3, **kw)
    by_hand = -(p * p.log()).sum(-1)
    torch.testing.assert_close(crossentropy.entropy(p), by_hand, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kl - ce, -crossentropy.entropy(p), rtol=1e-10, atol=1e-12)
    assert (by_hand > 0).all()  # the floor is not 0: the teacher is not one-hot
    up = torch.randn(kl.shape, generator=gen(0), dtype=F64)
    for a, c in zip(grads(kl, [h, w, b], up), grads(ce, [h, w, b], up), strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- TopK


def test_top_k_is_non_negative():
    for seed in range(20):
        z, t, _ = make_dense((8,), 12, seed=seed, scale=3.0)
        for k in (1, 3, 11):
            for temperature in (0.5, 1.0, 3.0):
                loss = distillation_loss(
                    z, top_k_of(t, k), temperature=temperature, reduction="none"
                )
                assert (loss >= -1e-14).all()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_top_k_is_zero_when_the_student_matches(temperature):
    """The student equals the teacher on the k classes and in total on the rest (spread
    differently there): loss 0 and gradient 0; moving tail mass onto a top class is > 0."""
    g = gen(3)
    vocab, k = 10, 3
    top = top_k_of(torch.randn(5, vocab, generator=g, dtype=F64) * 2, k)
    pk = top.log_probs.exp()
    tail = 1 - pk.sum(-1, keepdim=True)
    spread = torch.rand(5, vocab, generator=g, dtype=F64).scatter(-1, top.indices, 0.0)
    q = tail * spread / spread.sum(-1, keepdim=True)
    q = q.scatter(-1, top.indices, pk)
    z = (temperature * q.log()).requires_grad_()  # softmax(z / T) = q
    loss = distillation_loss(z, top, temperature=temperature, reduction="none")
    torch.testing.assert_close(loss, torch.zeros(5, dtype=F64), rtol=0, atol=1e-13)
    (gz,) = grads(loss.sum(), [z])
    torch.testing.assert_close(gz, torch.zeros_like(gz), rtol=0, atol=1e-12)
    off = q.clone()
    first = top.indices[:, :1]
    off = off.scatter(-1, first, off.gather(-1, first) * 1.1)
    off = off / off.sum(-1, keepdim=True)
    assert (
        distillation_loss(temperature * off.log(), top, temperature=temperature, reduction="none")
        > 0
    ).all()


# --------------------------------------------------------------------------- errors


def _errors():
    z = torch.randn(2, 3, 5)
    t = torch.randn(2, 3, 5)
    y = torch.zeros(2, 3, dtype=torch.long)
    top = top_k_of(t, 2)
    dup = TopK(torch.zeros(2, 3, 2, dtype=torch.long), top.log_probs)
    oob = TopK(torch.full((2, 3, 2), 5), top.log_probs)
    neg = TopK(torch.full((2, 3, 2), -1), top.log_probs)
    pos = TopK(top.indices, top.log_probs.abs() + 0.5)
    return (
        z,
        t,
        y,
        [
            ({"teacher": top, "divergence": "jsd"}, "divergence"),
            ({"teacher": top, "divergence": "reverse_kl"}, "divergence"),
            ({"teacher": oob}, "indices"),
            ({"teacher": neg}, "indices"),
            ({"teacher": dup}, "indices must be distinct"),
            ({"teacher": pos}, "log_probs"),
            ({"teacher": TopK(top.indices[..., :1], top.log_probs)}, "teacher"),
            ({"teacher": TopK(top.indices[:1], top.log_probs[:1])}, "teacher"),
            ({"divergence": "kl"}, "divergence"),
            ({"divergence": "JSD"}, "divergence"),
            ({"divergence": "jsd", "beta": 1.5}, "beta"),
            ({"divergence": "jsd", "beta": -0.1}, "beta"),
            ({"divergence": "forward_kl", "beta": 2.0}, "beta"),
            ({"divergence": "skew_kl", "beta": 0.0}, "beta"),
            ({"divergence": "skew_kl", "beta": 1.0}, "beta"),
            ({"divergence": "skew_reverse_kl", "beta": 0.0}, "beta"),
            ({"divergence": "skew_reverse_kl", "beta": 1.0}, "beta"),
            ({"hard_weight": 1.5, "target": y}, "hard_weight"),
            ({"hard_weight": -0.5, "target": y}, "hard_weight"),
            ({"hard_weight": 0.5}, "hard_weight"),
            ({"teacher": torch.randn(2, 3, 6)}, "teacher"),
            ({"teacher": torch.randn(3, 2, 5)}, "teacher"),
            ({"teacher": torch.randn(6, 5)}, "teacher"),
        ],
    )


def test_bad_input_dense():
    z, t, _, cases = _errors()
    for kw, match in cases:
        kw = dict(kw)
        teacher = kw.pop("teacher", t)
        with pytest.raises(ValueError, match=match):
            distillation_loss(z, teacher, **kw)


def test_bad_input_linear():
    _, t, _, cases = _errors()
    h, w = torch.randn(2, 3, 4), torch.randn(5, 4)
    th, tw = torch.randn(2, 3, 7), torch.randn(5, 7)
    more = [
        ({"teacher": Teacher(th, torch.randn(6, 7))}, "teacher.weight"),
        ({"teacher": Teacher(th, torch.randn(4, 7))}, "vocabulary"),
        ({"teacher": Teacher(torch.randn(2, 3, 6), tw)}, "teacher.hidden"),
        ({"teacher": Teacher(torch.randn(3, 2, 7), tw)}, "teacher.hidden"),
        ({"teacher": Teacher(th, tw, torch.randn(4))}, "teacher.bias"),
        ({"teacher": Teacher(th, tw, softcap=-1.0)}, "softcap"),
    ]
    for kw, match in cases + more:
        kw = dict(kw)
        teacher = kw.pop("teacher", t)
        with pytest.raises(ValueError, match=match):
            linear_distillation_loss(h, w, teacher, **kw)


# --------------------------------------------------------------------------- TRL


def trl_generalized_jsd_loss():
    """TRL's ``GKDTrainer.generalized_jsd_loss``, its source as installed.

    Importing ``trl.experimental.gkd`` pulls in ``datasets`` and most of ``transformers``
    (20+ s); the staticmethod uses only ``torch`` and ``F``, so its definition is taken
    from the installed file and compiled on its own."""
    trl = pytest.importorskip("trl")
    path = Path(trl.__file__).parent / "experimental" / "gkd" / "gkd_trainer.py"
    if not path.is_file():
        pytest.skip(f"no {path}")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "GKDTrainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "generalized_jsd_loss":
                    item.decorator_list = []
                    code = compile(ast.Module(body=[item], type_ignores=[]), str(path), "exec")
                    namespace = {"torch": torch, "F": F}
                    exec(code, namespace)
                    return namespace["generalized_jsd_loss"]
    pytest.fail(f"GKDTrainer.generalized_jsd_loss not found in {path}")


@pytest.fixture(scope="module")
def trl_jsd():
    return trl_generalized_jsd_loss()


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_equals_trl_generalized_jsd_loss(trl_jsd, beta, temperature):
    """TRL's batchmean with labels is the mean over the counted tokens; without labels on
    (tokens, V) logits the mean over tokens; num_items_in_batch is normalize_by."""
    g = gen(int(beta * 10) + int(temperature * 10))
    z = torch.randn(2, 6, 19, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(2, 6, 19, generator=g, dtype=F64) * 2
    y = make_targets((2, 6), 19, g, ignore=0.3)
    kw = {"divergence": "jsd", "beta": beta, "temperature": temperature}
    pairs = [
        (distillation_loss(z, t, target=y, **kw), trl_jsd(z, t, y, beta, temperature)),
        (
            distillation_loss(z.reshape(12, 19), t.reshape(12, 19), **kw),
            trl_jsd(z.reshape(12, 19), t.reshape(12, 19), None, beta, temperature),
        ),
        (
            distillation_loss(z, t, target=y, reduction="sum", **kw),
            trl_jsd(z, t, y, beta, temperature, reduction="sum"),
        ),
        (
            distillation_loss(z, t, target=y, normalize_by=20, **kw),
            trl_jsd(z, t, y, beta, temperature, num_items_in_batch=20),
        ),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(
            grads(ours, [z])[0], grads(theirs, [z])[0], rtol=1e-10, atol=1e-13
        )
    # fused, the same value and gradient
    h = torch.randn(12, 8, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(19, 8, generator=g, dtype=F64, requires_grad=True)
    tf = t.reshape(12, 19)
    ours = linear_distillation_loss(h, w, tf, target=y.reshape(-1), chunk_size=5, **kw)
    theirs = trl_jsd(h @ w.T, tf, y.reshape(-1), beta, temperature)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    for a, c in zip(grads(ours, [h, w]), grads(theirs, [h, w]), strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------- Liger-Kernel


@pytest.fixture(scope="module")
def liger_jsd():
    module = pytest.importorskip("liger_kernel.chunked_loss")
    return module.LigerFusedLinearJSDLoss


@pytest.mark.parametrize(
    "beta, temperature, hard_weight",
    [(0.5, 1.0, 0.5), (0.0, 1.0, 0.0), (1.0, 2.0, 0.3), (0.1, 0.7, 0.0), (0.9, 2.0, 1.0)],
)
def test_equals_liger_fused_linear_jsd(liger_jsd, beta, temperature, hard_weight):
    """Liger's beta is TRL's (m = beta p + (1 - beta) q, 0 forward and 1 reverse KL), its
    hard loss is at T = 1 with weight_hard_loss = lam and weight_soft_loss = 1 - lam, mean
    over the counted tokens.  Its teacher has no softcap and it has no student softcap;
    compiled=False (its default torch.compile needs Inductor, slow on the CPU)."""
    h, w, b, th, tw, tb, g = make_linear((21,), 6, 17, seed=11, teacher_dim=10)
    y = make_targets((21,), 17, g)
    liger = liger_jsd(
        weight_hard_loss=hard_weight,
        weight_soft_loss=1 - hard_weight,
        beta=beta,
        temperature=temperature,
        compiled=False,
        chunk_size=4,
    )
    theirs = liger(h, w, th, tw, y, b, tb)
    ours = linear_distillation_loss(
        h,
        w,
        Teacher(th, tw, tb),
        bias=b,
        divergence="jsd",
        beta=beta,
        temperature=temperature,
        target=y,
        hard_weight=hard_weight,
        chunk_size=5,
    )
    # Liger accumulates its loss in a float32 scalar and computes its hard loss on
    # float32 log-probabilities (.float()); the divergence's gradients stay float64.
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-6, atol=1e-7)
    tol = 1e-9 if hard_weight == 0 else 1e-5
    for a, c in zip(grads(ours, [h, w, b]), grads(theirs, [h, w, b]), strict=True):
        torch.testing.assert_close(a, c, rtol=tol, atol=tol * 1e-2)


def test_liger_default_hard_weight_is_not_ours(liger_jsd):
    """Liger's defaults weigh the hard loss 0.5: ours with hard_weight=0.5 equals it; our
    default (0) is the pure divergence, which Liger gives with weight_hard_loss=0."""
    h, w, b, th, tw, tb, g = make_linear((12,), 5, 11, seed=12, teacher_dim=7)
    y = make_targets((12,), 11, g)
    theirs = liger_jsd(compiled=False)(h, w, th, tw, y, b, tb)
    teacher = Teacher(th, tw, tb)
    ours_half = linear_distillation_loss(
        h, w, teacher, bias=b, divergence="jsd", target=y, hard_weight=0.5
    )
    ours_default = linear_distillation_loss(h, w, teacher, bias=b, divergence="jsd", target=y)
    torch.testing.assert_close(ours_half.float(), theirs.float(), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(ours_default.float(), theirs.float(), rtol=1e-3)
    soft = liger_jsd(weight_hard_loss=0.0, weight_soft_loss=1.0, compiled=False)
    torch.testing.assert_close(
        ours_default.float(), soft(h, w, th, tw, y, b, tb).float(), rtol=1e-6, atol=1e-7
    )


# --------------------------------------------------------------------------- torch.compile


def test_torch_compile_equals_eager():
    h, w, b, th, tw, tb, g = make_linear((3, 5), 6, 17, seed=13, dtype=torch.float32, teacher_dim=4)
    y = make_targets((3, 5), 17, g)
    teacher = Teacher(th, tw, tb, 3.0)

    def step(h, w, b, z, t, y):
        kw = {"divergence": "jsd", "beta": 0.3, "temperature": 2.0, "target": y}
        fused = linear_distillation_loss(h, w, teacher, bias=b, hard_weight=0.2, **kw)
        per_token = linear_distillation_loss(h, w, t, bias=b, reduction="none", **kw)
        dense = distillation_loss(z, t, softcap=4.0, **kw)
        total = fused + (per_token * torch.linspace(0, 1, 15).reshape(3, 5)).sum() + dense
        return total, fused, per_token, dense

    z = (h @ w.T).detach().requires_grad_()
    t = teacher_logits64(teacher).float()
    eager = step(h, w, b, z, t, y)
    eager_g = grads(eager[0], [h, w, b, z])
    compiled = torch.compile(step, backend="aot_eager")(h, w, b, z, t, y)
    compiled_g = grads(compiled[0], [h, w, b, z])
    for a, c in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)
    for a, c in zip(compiled_g, eager_g, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)

"""Edge cases of the PyTorch losses found by review: -inf logits with zero target mass,
the z-loss under class weights, argument and device checks.

Expected values come from float64 oracles built here from ``torch.log_softmax`` with
``0 log 0 = 0`` masked explicitly, from ``F.cross_entropy``, or by hand.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from crossentropy.torch import (  # noqa: E402
    cross_entropy,
    entropy_loss,
    kl_loss,
    linear_cross_entropy,
)

F64 = torch.float64
INF = float("inf")
REDUCTIONS = ["mean", "sum", "none"]


def soft_oracle(z, t, divergence=False):
    """Per-token H(t, softmax z) (or D) in float64 with 0 log 0 = 0, and dH/dz by hand."""
    z, t = z.double(), t.double()
    logq = torch.log_softmax(z, -1)
    loss = -torch.where(t == 0, 0.0, t * logq).sum(-1)
    if divergence:
        loss = loss + torch.where(t == 0, 0.0, t * torch.log(torch.where(t > 0, t, 1.0))).sum(-1)
    grad = torch.softmax(z, -1) * t.sum(-1, keepdim=True) - t
    return loss, grad


def reduce_oracle(loss, grad, upstream, reduction):
    if reduction == "none":
        return loss, grad * upstream.unsqueeze(-1)
    if reduction == "sum":
        return loss.sum(), grad * upstream
    return loss.mean(), grad * upstream / loss.numel()


def soft_case(seed=0, rows=5, classes=6):
    """Logits with -inf entries, and probability targets that are 0 exactly there."""
    gen = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(rows, classes, generator=gen, dtype=F64)
    dead = torch.rand(rows, classes, generator=gen) < 0.3
    dead[:, 0] = False  # every row keeps a finite logit
    dead[0, 1] = True
    z = torch.where(dead, -INF, z)
    t = torch.where(dead, 0.0, torch.rand(rows, classes, generator=gen, dtype=F64))
    t[0, 2] = 0.0  # a zero target at a finite logit too
    t = t / t.sum(-1, keepdim=True)
    return z, t


# ------------------------------------------------ 1. soft targets, 0 where the logit is -inf


def test_kl_loss_of_the_review_example():
    # Hand derivation: q = (1, 0, e) / (1 + e); D = 0.5 log(0.5 / q0) + 0.5 log(0.5 / q2).
    z = torch.tensor([[0.0, -INF, 1.0]], requires_grad=True)
    loss = kl_loss(z, torch.tensor([[0.5, 0.0, 0.5]]))
    q0, q2 = 1 / (1 + math.e), math.e / (1 + math.e)
    assert loss.item() == pytest.approx(0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / q2))
    loss.backward()
    torch.testing.assert_close(z.grad, torch.tensor([[q0 - 0.5, 0.0, q2 - 0.5]]))


@pytest.mark.parametrize("fn", [cross_entropy, kl_loss])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_target_at_minus_inf_logit(fn, reduction):
    z, t = soft_case()
    loss, grad = soft_oracle(z, t, divergence=fn is kl_loss)
    gen = torch.Generator().manual_seed(1)
    upstream = (
        torch.rand(z.shape[0], generator=gen, dtype=F64)
        if reduction == "none"
        else (torch.tensor(0.7, dtype=F64))
    )
    want, want_grad = reduce_oracle(loss, grad, upstream, reduction)
    x = z.clone().requires_grad_()
    out = fn(x, t, reduction=reduction, impl="torch")
    out.backward(upstream)
    torch.testing.assert_close(out.detach(), want, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk", [2, None])
def test_linear_cross_entropy_zero_target_at_minus_inf_bias(reduction, chunk):
    gen = torch.Generator().manual_seed(2)
    rows, dim, vocab = 5, 3, 6
    h = torch.randn(rows, dim, generator=gen, dtype=F64)
    w = torch.randn(vocab, dim, generator=gen, dtype=F64)
    b = torch.randn(vocab, generator=gen, dtype=F64)
    b[[1, 4]] = -INF
    t = torch.rand(rows, vocab, generator=gen, dtype=F64)
    t[:, [1, 4]] = 0.0
    t = t / t.sum(-1, keepdim=True)
    z = h @ w.T + b
    loss, g = soft_oracle(z, t)
    upstream = (
        torch.rand(rows, generator=gen, dtype=F64)
        if reduction == "none"
        else (torch.tensor(1.3, dtype=F64))
    )
    want, g = reduce_oracle(loss, g, upstream, reduction)
    hh, ww, bb = (v.clone().requires_grad_() for v in (h, w, b))
    out = linear_cross_entropy(hh, ww, t, bias=bb, reduction=reduction, chunk_size=chunk)
    out.backward(upstream)
    torch.testing.assert_close(out.detach(), want, rtol=1e-12, atol=1e-12)
    for got, expected in [(hh.grad, g @ w), (ww.grad, g.T @ h), (bb.grad, g.sum(0))]:
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------- 2. entropy_loss with -inf


def test_entropy_loss_of_the_review_example():
    # Hand derivation: q = (1/2, 0, 1/2), S = log 2; dS/dz_j = -q_j (log q_j + S) = 0.
    z = torch.tensor([[0.0, -INF, 0.0]], requires_grad=True)
    loss = entropy_loss(z)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    torch.testing.assert_close(z.grad, torch.zeros(1, 3))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_entropy_loss_gradient_with_minus_inf(reduction):
    z, _ = soft_case(seed=4)
    logq = torch.log_softmax(z, -1)
    q = logq.exp()
    ent = -torch.where(q == 0, 0.0, q * logq).sum(-1)
    grad = -q * (torch.where(q == 0, 0.0, logq) + ent.unsqueeze(-1))
    upstream = (
        torch.rand(z.shape[0], dtype=F64) if reduction == "none" else torch.tensor(0.9, dtype=F64)
    )
    want, want_grad = reduce_oracle(ent, grad, upstream, reduction)
    x = z.clone().requires_grad_()
    out = entropy_loss(x, reduction=reduction)
    out.backward(upstream)
    torch.testing.assert_close(out.detach(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, want_grad, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------- 5. the z-loss ignores class weights


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk", [3, None])
def test_linear_cross_entropy_z_loss_does_not_carry_the_class_weight(reduction, chunk):
    # Oracle: F.cross_entropy(weight=...) + z_loss * lse^2 per counted token; 'mean'
    # divides the z-loss part by the number of counted tokens.  Gradients by autograd on
    # that oracle.
    gen = torch.Generator().manual_seed(5)
    rows, dim, vocab = 8, 4, 5
    h = torch.randn(rows, dim, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(vocab, dim, generator=gen, dtype=F64, requires_grad=True)
    cw = torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0], dtype=F64)
    y = torch.tensor([0, 1, 2, 3, -100, 4, 2, -100])
    z = h @ w.T
    counted = y != -100
    zsq = torch.where(counted, 0.2 * torch.logsumexp(z, -1).square(), 0.0)
    ce_part = F.cross_entropy(z, y, weight=cw, reduction=reduction)
    if reduction == "none":
        want = ce_part + zsq
    elif reduction == "sum":
        want = ce_part + zsq.sum()
    else:
        want = ce_part + zsq.sum() / counted.sum()
    upstream = torch.rand(want.shape, generator=gen, dtype=F64)
    want_grads = torch.autograd.grad(want, (h, w), upstream)
    hh, ww = (v.detach().clone().requires_grad_() for v in (h, w))
    out = linear_cross_entropy(
        hh, ww, y, class_weight=cw, z_loss=0.2, reduction=reduction, chunk_size=chunk
    )
    out.backward(upstream)
    torch.testing.assert_close(out.detach(), want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hh.grad, want_grads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ww.grad, want_grads[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [cross_entropy, kl_loss])
def test_soft_target_z_loss_with_class_weights(fn):
    # Probability targets: every token counts once; the z-loss part is mean(z_loss lse^2)
    # and the weighted cross-entropy -sum_c w_c t_c log q_c is averaged over tokens.
    z, t = soft_case(seed=6)
    z = torch.where(torch.isinf(z), 0.0, z)
    cw = torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0, 1.5], dtype=F64)
    logq = torch.log_softmax(z, -1)
    part = -(cw * t * logq).sum(-1)
    if fn is kl_loss:
        part = part + (cw * torch.where(t > 0, t * torch.log(torch.where(t > 0, t, 1.0)), 0.0)).sum(
            -1
        )
    want = part.mean() + 0.3 * torch.logsumexp(z, -1).square().mean()
    torch.testing.assert_close(fn(z, t, weight=cw, z_loss=0.3), want, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------ 3. devices, dtypes, meta


def _lce_args():
    return torch.ones(2, 3), torch.ones(4, 3), torch.tensor([0, 3])


@pytest.mark.parametrize("name", ["weight", "bias", "target", "class_weight"])
def test_linear_cross_entropy_refuses_mixed_devices(name):
    # A CPU hidden with a meta weight used to return uninitialised memory.
    h, w, y = _lce_args()
    kwargs = {"bias": torch.zeros(4), "class_weight": torch.ones(4)}
    args = {"weight": w, "target": y}
    if name in args:
        args[name] = args[name].to("meta")
    else:
        kwargs[name] = kwargs[name].to("meta")
    with pytest.raises(
        ValueError, match=rf"{name} must be on the same device as hidden \(cpu\), got meta"
    ):
        linear_cross_entropy(h, args["weight"], args["target"], **kwargs)


@pytest.mark.parametrize("fn", [cross_entropy, kl_loss])
def test_dense_losses_refuse_mixed_devices(fn):
    with pytest.raises(
        ValueError, match=r"target must be on the same device as logits \(cpu\), got meta"
    ):
        fn(torch.zeros(2, 3), torch.tensor([0, 1], device="meta"))
    with pytest.raises(
        ValueError, match=r"weight must be on the same device as logits \(cpu\), got meta"
    ):
        fn(torch.zeros(2, 3), torch.tensor([0, 1]), weight=torch.ones(3, device="meta"))


@pytest.mark.parametrize("kind", [TypeError, ValueError])
def test_linear_cross_entropy_dtype_mismatch_names_the_arguments(kind):
    # Issue 11 asks for ValueError on mismatched dtypes; the house rule says TypeError for a
    # wrong dtype: the error is both, so code catching either catches it.
    h, w, y = _lce_args()
    with pytest.raises(
        kind, match=r"weight must have hidden's dtype torch\.float32, got torch\.float64"
    ):
        linear_cross_entropy(h, w.double(), y)
    with pytest.raises(
        kind, match=r"bias must have hidden's dtype torch\.float32, got torch\.float64"
    ):
        linear_cross_entropy(h, w, y, bias=torch.zeros(4, dtype=F64))


def test_meta_tensors_with_validate_true_are_refused():
    meta = {"device": "meta"}
    msg = "cannot validate data on the meta device; pass validate=False"
    with pytest.raises(ValueError, match=msg):
        linear_cross_entropy(
            torch.ones(2, 3, **meta),
            torch.ones(4, 3, **meta),
            torch.tensor([0, 3], **meta),
            validate=True,
        )
    with pytest.raises(ValueError, match=msg):
        cross_entropy(torch.zeros(2, 3, **meta), torch.tensor([0, 1], **meta), validate=True)
    # Without validation the meta device gives a meta result of the right shape.
    out = cross_entropy(torch.zeros(2, 3, **meta), torch.tensor([0, 1], **meta), reduction="none")
    assert out.device.type == "meta" and tuple(out.shape) == (2,)


# ------------------------------------------------------ 4. ignore_index, D = 0, softcap, ints


@pytest.mark.parametrize("fn", [cross_entropy, kl_loss])
def test_ignore_index_must_fit_int64(fn):
    with pytest.raises(ValueError, match="ignore_index must fit in int64"):
        fn(torch.zeros(1, 3), torch.tensor([1]), ignore_index=2**70)
    with pytest.raises(ValueError, match="ignore_index must fit in int64"):
        linear_cross_entropy(*_lce_args(), ignore_index=-(2**63) - 1)
    # The int64 extremes themselves are fine.
    assert fn(torch.zeros(1, 3), torch.tensor([1]), ignore_index=2**63 - 1).item() == (
        pytest.approx(math.log(3))
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_cross_entropy_hidden_size_zero(reduction):
    # Hand derivation: with D = 0 the logits are the bias (0 without one): the loss is
    # lse(b) - b_y, log V without a bias; the bias gradient is softmax(b) - onehot(y).
    b = torch.tensor([0.0, 1.0, 2.0], dtype=F64, requires_grad=True)
    h = torch.ones(2, 0, dtype=F64, requires_grad=True)
    w = torch.ones(3, 0, dtype=F64, requires_grad=True)
    y = torch.tensor([0, 2])
    lse = math.log(1 + math.e + math.e**2)
    per_token = torch.tensor([lse, lse - 2.0], dtype=F64)
    want = {"none": per_token, "sum": per_token.sum(), "mean": per_token.mean()}[reduction]
    out = linear_cross_entropy(h, w, y, bias=b, reduction=reduction)
    torch.testing.assert_close(out.detach(), want, rtol=1e-12, atol=0)
    out.sum().backward()
    q = torch.softmax(b.detach(), 0)
    g = torch.stack([q - torch.eye(3, dtype=F64)[0], q - torch.eye(3, dtype=F64)[2]])
    if reduction == "mean":
        g = g / 2
    torch.testing.assert_close(b.grad, g.sum(0), rtol=1e-12, atol=1e-15)
    assert h.grad.shape == (2, 0) and w.grad.shape == (3, 0)
    no_bias = linear_cross_entropy(torch.ones(2, 0), torch.ones(5, 0), y)
    assert no_bias.item() == pytest.approx(math.log(5))


@pytest.mark.parametrize("cap", [1e39, 1e-39, float("inf")])
def test_softcap_must_be_representable_in_float32(cap):
    msg = "softcap must be a positive finite number representable in float32"
    with pytest.raises(ValueError, match=msg):
        cross_entropy(torch.zeros(1, 3), torch.tensor([1]), softcap=cap)
    with pytest.raises(ValueError, match=msg):
        entropy_loss(torch.zeros(1, 3), softcap=cap)
    with pytest.raises(ValueError, match=msg):
        linear_cross_entropy(*_lce_args(), softcap=cap)


def test_softcap_at_float32_max_is_the_identity():
    # Hand derivation: c tanh(x / c) = x (1 - x^2 / 3c^2 ...) = x for |x| << c.
    z = torch.tensor([[2.0, 0.0, 0.0]])
    capped = cross_entropy(z, torch.tensor([0]), softcap=3e38)
    assert capped.item() == pytest.approx(math.log(math.e**2 + 2) - 2, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_narrow_integer_labels(dtype):
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(6, 5, generator=gen, dtype=F64)
    y = torch.tensor([0, 4, 2, 1, 3, 2])
    want = F.cross_entropy(z, y)
    for fn in (cross_entropy, kl_loss):
        torch.testing.assert_close(fn(z, y.to(dtype)), want, rtol=1e-12, atol=0)
    w = torch.eye(5, dtype=F64)
    torch.testing.assert_close(linear_cross_entropy(z, w, y.to(dtype)), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("fn", [cross_entropy, kl_loss])
def test_uint8_label_156_is_range_checked_not_ignored(fn):
    # 156 is -100 wrapped to uint8; it is a class index, out of range for 3 classes.
    y = torch.tensor([156], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\).*found 156"):
        fn(torch.zeros(1, 3), y)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\).*found 156"):
        linear_cross_entropy(torch.ones(1, 3), torch.ones(4, 3), y)
    # In range it counts: with 200 classes the loss is log 200, not 0 (ignored).
    assert fn(torch.zeros(1, 200), y).item() == pytest.approx(math.log(200))

"""Triton kernels (CPU interpreter) on review findings: 0 log 0 = 0 at -inf logits, and
the z-loss unweighted by class weights.  Oracles are float64 and built here by hand."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
import torch.nn.functional as F  # noqa: E402

from crossentropy.torch._triton import (  # noqa: E402
    DenseOptions,
    LinearOptions,
    interpreter,
    triton_cross_entropy,
    triton_kl_loss,
    triton_linear_cross_entropy,
)

pytestmark = pytest.mark.skipif(not interpreter(), reason="needs TRITON_INTERPRET=1")

F64 = torch.float64
INF = float("inf")
REDUCTIONS = ["mean", "sum", "none"]


def soft_oracle(z, t, divergence):
    """Per-token H (or D) with 0 log 0 = 0, and dH/dz = softmax(z) sum(t) - t, by hand."""
    logq = torch.log_softmax(z, -1)
    loss = -torch.where(t == 0, 0.0, t * logq).sum(-1)
    if divergence:
        loss = loss + torch.where(t == 0, 0.0, t * torch.log(torch.where(t > 0, t, 1.0))).sum(-1)
    return loss, torch.softmax(z, -1) * t.sum(-1, keepdim=True) - t


@pytest.mark.parametrize("divergence", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_target_at_minus_inf_logit(divergence, reduction):
    gen = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(4, 20, generator=gen, dtype=F64)
    dead = torch.rand(4, 20, generator=gen) < 0.3
    dead[:, 0] = False
    z = torch.where(dead, -INF, z)
    t = torch.where(dead, 0.0, torch.rand(4, 20, generator=gen, dtype=F64))
    t = t / t.sum(-1, keepdim=True)
    loss, grad = soft_oracle(z, t, divergence)
    if reduction == "none":
        upstream = torch.rand(4, generator=gen, dtype=F64)
        want, grad = loss, grad * upstream[:, None]
    else:
        upstream = torch.tensor(0.8, dtype=F64)
        want = loss.sum() if reduction == "sum" else loss.mean()
        grad = grad * upstream / (1 if reduction == "sum" else 4)
    fn = triton_kl_loss if divergence else triton_cross_entropy
    x = z.clone().requires_grad_()
    out = fn(x, t, None, DenseOptions(reduction=reduction, block=8))
    out.backward(upstream)
    torch.testing.assert_close(out.detach(), want, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dense_z_loss_does_not_carry_the_class_weight(reduction):
    # Oracle: F.cross_entropy(weight=...) + z_loss * lse^2 per counted token, 'mean'
    # dividing the z-loss part by the counted tokens; gradients by autograd on it.
    gen = torch.Generator().manual_seed(1)
    z = 2 * torch.randn(7, 5, generator=gen, dtype=F64, requires_grad=True)
    cw = torch.tensor([0.5, 1.0, 2.0, 0.0, 3.0], dtype=F64)
    y = torch.tensor([0, 1, 2, 3, -100, 4, 2])
    zsq = torch.where(y != -100, 0.2 * torch.logsumexp(z, -1).square(), 0.0)
    ce_part = F.cross_entropy(z, y, weight=cw, reduction=reduction)
    if reduction == "none":
        want = ce_part + zsq
    else:
        want = ce_part + (zsq.sum() if reduction == "sum" else zsq.sum() / 6)
    upstream = torch.rand(want.shape, generator=gen, dtype=F64)
    (want_grad,) = torch.autograd.grad(want, z, upstream)
    x = z.detach().clone().requires_grad_()
    out = triton_cross_entropy(x, y, cw, DenseOptions(reduction=reduction, z_loss=0.2))
    out.backward(upstream)
    torch.testing.assert_close(out.detach(), want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_z_loss_mean_over_counted_tokens(reduction):
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(6, 3, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(5, 3, generator=gen, dtype=F64, requires_grad=True)
    y = torch.tensor([0, -100, 2, 3, 4, -100])
    z = h @ w.T
    zsq = torch.where(y != -100, 0.3 * torch.logsumexp(z, -1).square(), 0.0)
    ce_part = F.cross_entropy(z, y, reduction=reduction)
    if reduction == "none":
        want = ce_part + zsq
    else:
        want = ce_part + (zsq.sum() if reduction == "sum" else zsq.sum() / 4)
    upstream = torch.rand(want.shape, generator=gen, dtype=F64)
    want_grads = torch.autograd.grad(want, (h, w), upstream)
    hh, ww = (v.detach().clone().requires_grad_() for v in (h, w))
    opts = LinearOptions(reduction=reduction, z_loss=0.3, chunk_size=4, block=4)
    out = triton_linear_cross_entropy(hh, ww, y, None, opts)
    out.backward(upstream)
    torch.testing.assert_close(out.detach(), want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hh.grad, want_grads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ww.grad, want_grads[1], rtol=1e-10, atol=1e-12)


def test_linear_hidden_size_zero_and_narrow_labels():
    # Hand derivation: with D = 0 the logits are the bias: loss = lse(b) - b_y.
    import math

    from crossentropy.torch import linear_cross_entropy

    b = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    y = torch.tensor([0, 2], dtype=torch.uint8)
    out = linear_cross_entropy(
        torch.ones(2, 0, dtype=F64), torch.ones(3, 0, dtype=F64), y, bias=b, impl="triton"
    )
    lse = math.log(1 + math.e + math.e**2)
    assert out.item() == pytest.approx(lse - 1.0, rel=1e-12)

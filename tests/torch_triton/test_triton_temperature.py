"""``temperature`` and ``normalize_by`` through the Triton paths, against a float64 oracle.

The oracle, ``tests/_torch_oracles.py``'s, is written from
``F.log_softmax(softcap(x) / T)`` alone (not from ``crossentropy.torch._reference``); its
docstring gives the definition.  The interpreter tests run with ``TRITON_INTERPRET=1``
(this folder's conftest.py sets it) on tiny shapes; the CUDA test only on a GPU without
the interpreter (``TRITON_INTERPRET=0 pytest tests/torch_triton -k cuda``).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _torch_oracles import linear_oracle, oracle  # noqa: E402

from crossentropy.torch import cross_entropy, kl_loss, linear_cross_entropy  # noqa: E402
from crossentropy.torch._triton import (  # noqa: E402
    DenseOptions,
    interpreter,
    triton_cross_entropy,
    triton_kl_loss,
)

F64 = torch.float64
INTERP = interpreter()
CUDA = torch.cuda.is_available() and not INTERP
interp_only = pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1")
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and TRITON_INTERPRET=0")

REDUCTIONS = ["none", "sum", "mean"]
OPTION_SETS = {
    "plain": {},
    "softcap": {"softcap": 4.0},
    "smooth-zloss": {"label_smoothing": 0.2, "z_loss": 0.05},
    "all": {"label_smoothing": 0.1, "z_loss": 0.03, "softcap": 3.0},
}
KINDS = ["labels", "labels-weight", "soft", "soft-weight"]
RTOL, ATOL = 1e-10, 1e-12


# ---------------------------------------------------------------- data and comparison


def make(shape, classes, kind, *, seed=0, dtype=F64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*shape, classes, generator=gen, dtype=F64)
    weight = None
    if kind.endswith("weight"):
        weight = torch.rand(classes, generator=gen, dtype=F64) + 0.2
    if kind.startswith("soft"):
        target = torch.softmax(2 * torch.randn(*shape, classes, generator=gen, dtype=F64), -1)
        target[..., 0] = 0.0  # an exact zero: 0 log 0 = 0
        target = target / target.sum(-1, keepdim=True)
    else:
        target = torch.randint(0, classes, shape, generator=gen)
        target[torch.rand(shape, generator=gen) < 0.3] = -100
    if kind.startswith("soft"):
        target = target.to(dtype)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(logits.to(dtype)), move(target), move(None if weight is None else weight.to(dtype))


def upstream_for(shape, seed, device="cpu"):
    gen = torch.Generator().manual_seed(1000 + seed)
    return (torch.rand(shape, generator=gen, dtype=F64) + 0.5).to(device)


def compare(ours, ref, inputs, ref_inputs, *, seed=0, rtol=RTOL, atol=ATOL):
    """Loss and gradients (one random upstream gradient) equal the oracle's."""
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours.double(), ref, rtol=rtol, atol=atol)
    upstream = upstream_for(ref.shape, seed, ref.device)
    got = torch.autograd.grad(ours, inputs, upstream.to(ours.dtype))
    want = torch.autograd.grad(ref, ref_inputs, upstream)
    for g, r, x in zip(got, want, inputs, strict=True):
        assert g.dtype == x.dtype and g.shape == x.shape
        torch.testing.assert_close(g.double(), r.double(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- dense losses


# Every option set and every target kind, the temperatures taking turns (the interpreter
# is slow: each case is four kernel launches per reduction).
DENSE_CASES = [
    (0.5, "plain", "labels"),
    (1.7, "plain", "soft-weight"),
    (3.0, "softcap", "labels-weight"),
    (0.5, "softcap", "soft"),
    (1.7, "smooth-zloss", "labels"),
    (3.0, "smooth-zloss", "soft-weight"),
    (0.5, "all", "labels-weight"),
    (1.7, "all", "soft"),
    (3.0, "all", "labels"),
    (1.7, "all", "soft-weight"),
]


@interp_only
@pytest.mark.parametrize(("temperature", "name", "kind"), DENSE_CASES)
@pytest.mark.parametrize("divergence", [False, True], ids=["cross_entropy", "kl_loss"])
def test_dense_impl_triton_matches_oracle(temperature, name, kind, divergence):
    options = OPTION_SETS[name]
    seed = len(name) + 5 * KINDS.index(kind)
    logits, target, weight = make((6,), 11, kind, seed=seed)
    fn = kl_loss if divergence else cross_entropy
    counted = int((target != -100).sum()) if target.ndim == 1 else target.shape[0]
    for reduction, norm in [(r, None) for r in REDUCTIONS] + [("mean", counted + 2)]:
        x = logits.clone().requires_grad_()
        ours = fn(
            x,
            target,
            weight=weight,
            reduction=reduction,
            temperature=temperature,
            normalize_by=norm,
            impl="triton",
            **options,
        )
        ref_x = logits.clone().requires_grad_()
        ref = oracle(
            ref_x,
            target,
            weight=weight,
            reduction=reduction,
            temperature=temperature,
            normalize_by=norm,
            divergence=divergence,
            **options,
        )
        compare(ours, ref, (x,), (ref_x,), seed=seed)


@interp_only
@pytest.mark.parametrize(
    ("temperature", "kind", "divergence"),
    [(0.5, "labels-weight", False), (3.0, "soft", True), (1.7, "soft-weight", False)],
)
def test_dense_kernel_over_several_blocks(temperature, kind, divergence):
    # 17 classes in blocks of 8: three blocks, the last one partly masked.
    options = OPTION_SETS["all"]
    logits, target, weight = make((3, 2), 17, kind, seed=4)
    fn = triton_kl_loss if divergence else triton_cross_entropy
    for reduction in REDUCTIONS:
        opts = DenseOptions(reduction=reduction, block=8, temperature=temperature, **options)
        x = logits.clone().requires_grad_()
        ours = fn(x, target, weight, opts)
        ref_x = logits.clone().requires_grad_()
        ref = oracle(
            ref_x,
            target,
            weight=weight,
            reduction=reduction,
            temperature=temperature,
            divergence=divergence,
            **options,
        )
        compare(ours, ref, (x,), (ref_x,))


@interp_only
def test_dense_inplace_with_temperature():
    logits, target, _ = make((5,), 9, "labels", seed=6)
    leaf = logits.clone().requires_grad_()
    x = leaf * 1.0  # a non-leaf whose memory the loss may reuse
    opts = DenseOptions(inplace=True, temperature=1.7, softcap=3.0, z_loss=0.01)
    out = triton_cross_entropy(x, target, None, opts)
    out.backward()
    ref_x = logits.clone().requires_grad_()
    ref = oracle(ref_x, target, temperature=1.7, softcap=3.0, z_loss=0.01)
    (ref_grad,) = torch.autograd.grad(ref, ref_x)
    torch.testing.assert_close(out, ref.detach(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(leaf.grad, ref_grad, rtol=RTOL, atol=ATOL)


@interp_only
def test_dense_float32_with_temperature():
    logits, target, _ = make((9,), 33, "labels", seed=7, dtype=torch.float32)
    options = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 20.0, "temperature": 0.5}
    x = logits.clone().requires_grad_()
    ours = cross_entropy(x, target, impl="triton", **options)
    assert ours.dtype == torch.float32
    ref_x = logits.double().requires_grad_()
    ref = oracle(ref_x, target, **options)
    compare(ours, ref, (x,), (ref_x,), rtol=2e-6, atol=1e-6)


@interp_only
@pytest.mark.parametrize("divergence", [False, True], ids=["cross_entropy", "kl_loss"])
def test_dense_normalize_by_micro_batches(divergence):
    # Four micro-batches (one all ignored) with normalize_by = the whole batch's count.
    options = {"label_smoothing": 0.1, "z_loss": 0.03, "softcap": 3.0, "temperature": 1.7}
    logits, target, weight = make((12,), 7, "labels-weight", seed=8)
    target[:3] = -100
    target[3:6] = torch.tensor([1, 2, 3])
    n = int((target != -100).sum())
    fn = kl_loss if divergence else cross_entropy
    x = logits.clone().requires_grad_()
    total = 0.0
    for sl, norm in zip(
        (slice(0, 3), slice(3, 6), slice(6, 8), slice(8, 12)),
        (n, float(n), torch.tensor(n), torch.tensor(float(n), dtype=F64)),
        strict=True,
    ):
        loss = fn(x[sl], target[sl], weight=weight, normalize_by=norm, impl="triton", **options)
        loss.backward()
        total = total + loss.detach()
    ref_x = logits.clone().requires_grad_()
    ref = (
        oracle(ref_x, target, weight=weight, reduction="sum", divergence=divergence, **options) / n
    )
    (ref_grad,) = torch.autograd.grad(ref, ref_x)
    torch.testing.assert_close(total, ref.detach(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(x.grad, ref_grad, rtol=RTOL, atol=ATOL)
    # normalize_by=0: 0 and zero gradients.
    x = logits.clone().requires_grad_()
    zero = fn(x, target, normalize_by=torch.tensor(0.0), impl="triton", **options)
    zero.backward()
    assert zero.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---------------------------------------------------------------- fused linear


def make_linear(n, dim, vocab, *, seed=0, bias=True, dtype=F64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, dim, generator=gen, dtype=F64)
    w = torch.randn(vocab, dim, generator=gen, dtype=F64) * (3 / math.sqrt(dim))
    b = torch.randn(vocab, generator=gen, dtype=F64) if bias else None
    y = torch.randint(0, vocab, (n,), generator=gen)
    y[torch.rand(n, generator=gen) < 0.3] = -100
    move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return move(h), move(w), move(b), y.to(device)


def leaves(*tensors):
    return tuple(t.detach().clone().requires_grad_() for t in tensors if t is not None)


LINEAR_CASES = [
    (0.5, "plain", True),
    (1.7, "softcap", False),
    (3.0, "smooth-zloss", True),
    (0.5, "all", True),
]


@interp_only
@pytest.mark.parametrize(("temperature", "name", "bias"), LINEAR_CASES)
def test_linear_impl_triton_matches_oracle(temperature, name, bias):
    options = OPTION_SETS[name]
    h0, w0, b0, y = make_linear(13, 6, 19, seed=len(name), bias=bias)
    counted = int((y != -100).sum())
    for reduction, norm in [(r, None) for r in REDUCTIONS] + [("mean", counted + 1)]:
        inputs = leaves(h0, w0, b0)
        h, w = inputs[:2]
        b = inputs[2] if bias else None
        ours = linear_cross_entropy(
            h,
            w,
            y,
            bias=b,
            reduction=reduction,
            temperature=temperature,
            normalize_by=norm,
            chunk_size=4,
            impl="triton",
            **options,
        )
        ref_inputs = leaves(h0, w0, b0)
        ref = linear_oracle(
            *ref_inputs[:2],
            y,
            bias=ref_inputs[2] if bias else None,
            reduction=reduction,
            temperature=temperature,
            normalize_by=norm,
            **options,
        )
        compare(ours, ref, inputs, ref_inputs, seed=len(name))


@interp_only
def test_linear_normalize_by_micro_batches():
    options = {"label_smoothing": 0.1, "z_loss": 0.03, "softcap": 3.0, "temperature": 0.5}
    h0, w0, b0, y = make_linear(12, 5, 11, seed=9)
    y[:4] = -100  # one micro-batch all ignored, one with none
    y[4:7] = torch.tensor([0, 5, 10])
    n = int((y != -100).sum())
    h, w, b = leaves(h0, w0, b0)
    total = 0.0
    for sl, norm in zip(
        (slice(0, 4), slice(4, 7), slice(7, 9), slice(9, 12)),
        (n, float(n), torch.tensor(n), torch.tensor(float(n), dtype=F64)),
        strict=True,
    ):
        loss = linear_cross_entropy(
            h[sl], w, y[sl], bias=b, normalize_by=norm, chunk_size=2, impl="triton", **options
        )
        loss.backward()  # the projection's and bias' gradients accumulate
        total = total + loss.detach()
    ref_inputs = leaves(h0, w0, b0)
    ref = linear_oracle(*ref_inputs[:2], y, bias=ref_inputs[2], reduction="sum", **options) / n
    want = torch.autograd.grad(ref, ref_inputs)
    torch.testing.assert_close(total, ref.detach(), rtol=RTOL, atol=ATOL)
    for g, r in zip((h.grad, w.grad, b.grad), want, strict=True):
        torch.testing.assert_close(g, r, rtol=RTOL, atol=ATOL)
    # normalize_by=0: 0 and zero gradients.
    h, w, b = leaves(h0, w0, b0)
    zero = linear_cross_entropy(h, w, y, bias=b, normalize_by=0, impl="triton", **options)
    zero.backward()
    assert zero.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in (h.grad, w.grad, b.grad))


@interp_only
def test_temperature_one_is_the_default_bitwise():
    logits, target, weight = make((6,), 11, "labels-weight", seed=10)
    h0, w0, b0, y = make_linear(7, 4, 11, seed=11)
    options = {"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 5.0, "impl": "triton"}
    for fn in (cross_entropy, kl_loss):
        results = []
        for kw in ({}, {"temperature": 1.0}):
            x = logits.clone().requires_grad_()
            out = fn(x, target, weight=weight, **options, **kw)
            results.append((out, *torch.autograd.grad(out, x)))
        assert all(torch.equal(a, c) for a, c in zip(*results, strict=True))
    results = []
    for kw in ({}, {"temperature": 1}):
        h, w, b = leaves(h0, w0, b0)
        out = linear_cross_entropy(h, w, y, bias=b, chunk_size=3, **options, **kw)
        results.append((out, *torch.autograd.grad(out, (h, w, b))))
    assert all(torch.equal(a, c) for a, c in zip(*results, strict=True))


# ---------------------------------------------------------------- CUDA (GPU run only)


@cuda_only
@pytest.mark.parametrize("kind", ["labels-weight", "soft"])
def test_cuda_temperature_matches_oracle(kind):
    options = {**OPTION_SETS["all"], "temperature": 1.7}
    logits, target, weight = make((64,), 1000, kind, seed=12, dtype=torch.float32, device="cuda")
    for divergence in (False, True):
        fn = kl_loss if divergence else cross_entropy
        for reduction in REDUCTIONS:
            x = logits.clone().requires_grad_()
            ours = fn(x, target, weight=weight, reduction=reduction, impl="triton", **options)
            ref_x = logits.double().requires_grad_()
            ref = oracle(
                ref_x, target, weight=weight, reduction=reduction, divergence=divergence, **options
            )
            compare(ours, ref, (x,), (ref_x,), rtol=1e-5, atol=1e-6)
    h0, w0, b0, y = make_linear(300, 64, 1000, seed=13, dtype=torch.float32, device="cuda")
    for reduction in REDUCTIONS:
        inputs = leaves(h0, w0, b0)
        ours = linear_cross_entropy(
            *inputs[:2], y, bias=inputs[2], reduction=reduction, chunk_size=128, impl="triton",
            **options,
        )  # fmt: skip
        ref_inputs = leaves(h0, w0, b0)
        ref = linear_oracle(*ref_inputs[:2], y, bias=ref_inputs[2], reduction=reduction, **options)
        compare(ours, ref, inputs, ref_inputs, rtol=1e-3, atol=1e-5)  # tf32 may be on

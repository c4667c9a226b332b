"""Triton kernels against the float64 plain-PyTorch losses, on the CPU interpreter.

The interpreter tests run only with ``TRITON_INTERPRET=1`` (set by this folder's
conftest.py) on small shapes; the CUDA tests only on a GPU without the interpreter
(``TRITON_INTERPRET=0 pytest tests/torch_triton -k cuda``, as benchmarks/gpu.sh does).
The rule for half precision is the house rule: no worse than PyTorch in the same dtype
against the float64 reference, plus a tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
import torch.nn.functional as F  # noqa: E402

from crossentropy.torch import cross_entropy, kl_loss  # noqa: E402
from crossentropy.torch._triton import (  # noqa: E402
    DenseOptions,
    LinearOptions,
    available,
    interpreter,
    triton_cross_entropy,
    triton_kl_loss,
    triton_linear_cross_entropy,
)

F64 = torch.float64
INTERP = interpreter()
CUDA = torch.cuda.is_available() and not INTERP
interp_only = pytest.mark.skipif(not INTERP, reason="needs TRITON_INTERPRET=1")
cuda_only = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU and TRITON_INTERPRET=0")
DEVICE = "cuda" if CUDA else "cpu"

OPTION_SETS = {
    "plain": {},
    "smooth": {"label_smoothing": 0.2},
    "zloss": {"z_loss": 0.05},
    "softcap": {"softcap": 4.0},
    "all": {"label_smoothing": 0.1, "z_loss": 0.05, "softcap": 3.0},
}
TARGETS = ["labels", "labels-weight", "soft", "soft-weight"]


def make(shape, classes, kind, *, seed=0, dtype=F64, device="cpu", ignore=0.3):
    """Random logits (3 sigma) and a target of ``kind``; about 30% of labels ignored."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*shape, classes, generator=gen, dtype=F64)).to(dtype)
    weight = None
    if kind.endswith("weight"):
        weight = (torch.rand(classes, generator=gen, dtype=F64) + 0.2).to(dtype)
    if kind.startswith("soft"):
        target = torch.softmax(2 * torch.randn(*shape, classes, generator=gen, dtype=F64), -1)
        target[..., 0] = 0.0  # a zero probability: 0 log 0 = 0 in the divergence
        target = (target / target.sum(-1, keepdim=True)).to(dtype)
    else:
        target = torch.randint(0, classes, shape, generator=gen)
        target[torch.rand(shape, generator=gen) < ignore] = -100
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(logits), move(target), move(weight)


def rel(a, b):
    """||a - b|| / ||b|| in float64 (NaN never passes)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_dense(fn, logits, target, weight, opts, upstream):
    x = logits.detach().clone().requires_grad_()
    out = fn(x, target, weight, opts)
    out.backward(upstream.to(out.dtype))
    return out.detach(), x.grad


def run_reference(logits, target, weight, opts, upstream, divergence):
    fn = kl_loss if divergence else cross_entropy
    x = logits.detach().double().requires_grad_()
    t = target.double() if target.dtype.is_floating_point else target
    out = fn(
        x,
        t,
        weight=None if weight is None else weight.double(),
        ignore_index=opts.ignore_index,
        reduction=opts.reduction,
        label_smoothing=opts.label_smoothing,
        z_loss=opts.z_loss,
        softcap=opts.softcap,
    )
    out.backward(upstream.double())
    return out.detach(), x.grad


def compare_dense(logits, target, weight, opts, *, divergence, seed=0, tol=1e-10):
    """Loss and gradient of the kernel vs the float64 reference, with a random upstream."""
    fn = triton_kl_loss if divergence else triton_cross_entropy
    shape = logits.shape[:-1] if opts.reduction == "none" else ()
    gen = torch.Generator().manual_seed(seed + 1)
    upstream = torch.rand(shape, generator=gen, dtype=F64) + 0.5
    if opts.reduction == "mean":
        upstream = torch.ones((), dtype=F64)  # the common case: scaling skipped on device
    upstream = upstream.to(logits.device)
    out, grad = run_dense(fn, logits, target, weight, opts, upstream)
    ref, ref_grad = run_reference(logits, target, weight, opts, upstream, divergence)
    assert out.shape == ref.shape
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert rel(out, ref) <= tol, (rel(out, ref), out, ref)
    assert rel(grad, ref_grad) <= tol, rel(grad, ref_grad)
    return out, grad


# ---------------------------------------------------------------- helpers, no kernels


def test_available_looks_only():
    assert not available(torch.zeros(2, dtype=torch.int64))
    assert not available("not a tensor")
    assert available(torch.zeros(2)) == INTERP


_COMPILE = r"""
import importlib.util, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

spec = importlib.util.spec_from_file_location("kernels", sys.argv[1])
k = importlib.util.module_from_spec(spec)
spec.loader.exec_module(k)
target = GPUTarget("cuda", 90, 32)

def build(fn, sig, consts):
    sig = dict(sig, **dict.fromkeys(consts, "constexpr"))
    names = fn.arg_names  # the signature must follow the parameters' order
    sig = {n: sig[n] for n in names}
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(names.index(n),): v for n, v in consts.items()})
    ptx = triton.compile(src, target=target).asm["ptx"]
    assert "ld.global" in ptx

row = dict(X="*bf16", stride_x="i64", G="*bf16", stride_g="i64", T="*i64", stride_t="i64",
           W="*fp32", LOSS="*fp32", LSE="*fp32", SCALE="*fp32", stride_s="i64",
           ZSCALE="*fp32", stride_zs="i64", C="i32",
           ignore_index="i32", eps="fp32", z_loss="fp32", cap="fp32", inv_temp="fp32")
flags = ("HAS_WEIGHT", "SMOOTH", "HAS_ZLOSS", "HAS_CAP", "DIVERGENCE", "GRAD")
for soft in (False, True):
    sig = dict(row, T="*bf16") if soft else row
    consts = dict(ACC=tl.float32, SOFT=soft, BLOCK=4096, **dict.fromkeys(flags, True))
    build(k.row_kernel, sig, consts)
sig = dict(row, X="*fp64", G="*fp64", LOSS="*fp64", LSE="*fp64", SCALE="*fp64",
           ZSCALE="*fp64")
consts = dict(ACC=tl.float64, SOFT=False, BLOCK=1024, **dict.fromkeys(flags, False))
build(k.row_kernel, sig, consts)
build(k.scale_kernel, dict(X="*bf16", N="i64", GRAD="*fp32"), dict(ACC=tl.float32, BLOCK=4096))
build(k.cast_scale_kernel, dict(SRC="*fp32", DST="*bf16", N="i64", GRAD="*fp32"), dict(BLOCK=4096))
print("compiled")
"""


def test_kernels_compile_for_hopper():
    # The real compiler, for sm_90, without a GPU: it catches the type errors that the
    # interpreter forgives.  In a subprocess, because the interpreter patches triton.language.
    from crossentropy.torch._triton import __file__ as package

    kernels = os.path.join(os.path.dirname(package), "_kernels.py")
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE, kernels],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


# ---------------------------------------------------------------- dense losses, float64


DENSE_CASES = [(name, kind) for name in OPTION_SETS for kind in ("labels", "soft")] + [
    ("all", "labels-weight"),
    ("all", "soft-weight"),
]


@interp_only
@pytest.mark.parametrize(("name", "kind"), DENSE_CASES)
def test_cross_entropy_matches_reference(name, kind):
    # (3, 17) with a block of 8 classes: three blocks, the last one partly masked.
    logits, target, weight = make((3,), 17, kind, seed=len(name))
    for reduction in ("mean", "none"):
        opts = DenseOptions(reduction=reduction, block=8, **OPTION_SETS[name])
        compare_dense(logits, target, weight, opts, divergence=False)


@interp_only
@pytest.mark.parametrize("kind", TARGETS)
def test_kl_loss_matches_reference(kind):
    logits, target, weight = make((4,), 17, kind, seed=7)
    opts = DenseOptions(reduction="sum", block=8, **OPTION_SETS["all"])
    compare_dense(logits, target, weight, opts, divergence=True)
    # Same gradient as the cross-entropy, to the bit; the difference is the entropy.
    _, ce_grad = run_dense(
        triton_cross_entropy, logits, target, weight, opts, torch.tensor(0.75, dtype=F64)
    )
    kl_grad = run_dense(triton_kl_loss, logits, target, weight, opts, torch.tensor(0.75))[1]
    assert torch.equal(ce_grad, kl_grad)


@interp_only
def test_three_dimensional_logits_and_one_block():
    logits, target, weight = make((2, 3), 129, "labels-weight", seed=3)
    for reduction in ("mean", "sum", "none"):
        opts = DenseOptions(reduction=reduction, z_loss=0.01, label_smoothing=0.05)
        compare_dense(logits, target, weight, opts, divergence=False, tol=1e-9)


@interp_only
def test_float32_rows_against_float64():
    logits, target, _ = make((37,), 129, "labels", seed=5, dtype=torch.float32)
    opts = DenseOptions(label_smoothing=0.1, z_loss=1e-3, softcap=20.0)
    out, _ = compare_dense(logits, target, None, opts, divergence=False, tol=2e-6)
    assert out.dtype == torch.float32


@interp_only
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored(reduction):
    logits = torch.randn(3, 5, dtype=F64, requires_grad=True)
    target = torch.full((3,), -100)
    out = triton_cross_entropy(logits, target, None, DenseOptions(reduction=reduction, z_loss=0.1))
    out.sum().backward()
    assert torch.equal(out.detach(), torch.zeros_like(out))  # mean: 0, not NaN
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@interp_only
def test_out_of_range_label_gives_nan_and_custom_ignore_index():
    logits = torch.randn(3, 5, dtype=F64)
    opts = DenseOptions(reduction="none")
    out = triton_cross_entropy(logits, torch.tensor([1, 7, 2]), None, opts)
    assert out[1].isnan() and out[[0, 2]].isfinite().all()
    opts = DenseOptions(ignore_index=4, reduction="mean")
    compare_dense(logits, torch.tensor([4, 0, 4]), None, opts, divergence=False)


@interp_only
def test_second_backward_recomputes():
    logits, target, _ = make((3,), 17, "labels", seed=11)
    x = logits.clone().requires_grad_()
    out = triton_cross_entropy(x, target, None, DenseOptions(label_smoothing=0.1))
    (g1,) = torch.autograd.grad(out, x, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x)
    assert torch.equal(g1, g2)


@interp_only
def test_inplace_overwrites_logits_with_the_gradient():
    logits, target, _ = make((3,), 17, "labels", seed=13)
    ref, ref_grad = run_reference(
        logits, target, None, DenseOptions(), torch.ones((), dtype=F64), False
    )
    leaf = logits.clone().requires_grad_()
    x = leaf * 1.0  # a non-leaf whose memory the loss may reuse
    out = triton_cross_entropy(x, target, None, DenseOptions(inplace=True))
    out.backward()
    assert rel(out, ref) < 1e-12
    assert rel(leaf.grad, ref_grad) < 1e-12
    assert rel(x.detach(), ref_grad) < 1e-12  # the logits' memory now holds the gradient


@interp_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_no_worse_than_pytorch(dtype):
    # House rule: error vs float64 no worse than F.cross_entropy's in the same dtype.
    logits, target, _ = make((16,), 129, "labels", seed=17, dtype=dtype)
    ref, ref_grad = run_reference(logits, target, None, DenseOptions(), torch.ones(()), False)
    out, grad = run_dense(
        triton_cross_entropy, logits, target, None, DenseOptions(), torch.ones(())
    )
    base_x = logits.clone().requires_grad_()
    base = F.cross_entropy(base_x, target)
    base.backward()
    assert out.dtype == torch.float32 and grad.dtype == dtype
    assert rel(out, ref) <= rel(base, ref) + 1e-6
    assert rel(grad, ref_grad) <= 1.5 * rel(base_x.grad, ref_grad) + 1e-3


@interp_only
def test_target_requiring_grad_is_refused():
    logits, target, _ = make((3,), 5, "soft")
    with pytest.raises(NotImplementedError, match="impl='torch'"):
        triton_cross_entropy(logits, target.requires_grad_(), None, DenseOptions())


# ---------------------------------------------------------------- fused linear


def dense_linear_reference(h, w, y, b, opts, upstream):
    """float64 cross_entropy of h @ w.T + b, and its gradients."""
    h64 = h.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    logits = h64 @ w64.T + (0 if b64 is None else b64)
    out = cross_entropy(
        logits,
        y,
        ignore_index=opts.ignore_index,
        reduction=opts.reduction,
        label_smoothing=opts.label_smoothing,
        z_loss=opts.z_loss,
        softcap=opts.softcap,
    )
    out.backward(upstream.double())
    return out.detach(), h64.grad, w64.grad, None if b64 is None else b64.grad


def make_linear(n, d, v, *, dtype=F64, seed=0, bias=True, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(*n, d, generator=gen, dtype=F64).to(dtype)
    w = (torch.randn(v, d, generator=gen, dtype=F64) * (3 / d**0.5)).to(dtype)
    b = (torch.randn(v, generator=gen, dtype=F64)).to(dtype) if bias else None
    y = torch.randint(0, v, n, generator=gen)
    y[torch.rand(n, generator=gen) < 0.25] = -100
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(h), move(w), move(y), move(b)


def run_linear(h, w, y, b, opts, upstream):
    h = h.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    out = triton_linear_cross_entropy(h, w, y, b, opts)
    out.backward(upstream.to(device=out.device, dtype=out.dtype))
    return out.detach(), h.grad, w.grad, None if b is None else b.grad


@interp_only
@pytest.mark.parametrize(
    ("reduction", "name"), [("mean", "plain"), ("mean", "all"), ("sum", "smooth"), ("none", "all")]
)
def test_linear_matches_reference(reduction, name):
    h, w, y, b = make_linear((37,), 16, 129, seed=len(name))
    opts = LinearOptions(reduction=reduction, chunk_size=16, **OPTION_SETS[name])
    shape = (37,) if reduction == "none" else ()
    upstream = torch.rand(shape, dtype=F64) + 0.5
    got = run_linear(h, w, y, b, opts, upstream)
    want = dense_linear_reference(h, w, y, b, opts, upstream)
    for g, r in zip(got, want, strict=True):
        assert g.dtype == F64
        assert rel(g, r) < 1e-10, rel(g, r)


@interp_only
def test_linear_three_dimensional_no_bias_and_all_ignored():
    h, w, y, _ = make_linear((2, 5), 8, 33, seed=2, bias=False)
    opts = LinearOptions(chunk_size=4, block=16, z_loss=0.01)
    got = run_linear(h, w, y, None, opts, torch.ones(()))
    want = dense_linear_reference(h, w, y, None, opts, torch.ones(()))
    for g, r in zip(got[:3], want[:3], strict=True):
        assert rel(g, r) < 1e-10
    got = run_linear(h, w, torch.full_like(y, -100), None, opts, torch.ones(()))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in got[:3])


@interp_only
def test_linear_second_backward_recomputes():
    h, w, y, b = make_linear((20,), 8, 33, seed=4)
    h.requires_grad_()
    w.requires_grad_()
    out = triton_linear_cross_entropy(h, w, y, b, LinearOptions(chunk_size=8))
    first = torch.autograd.grad(out, (h, w), retain_graph=True)
    second = torch.autograd.grad(out, (h, w))
    assert all(torch.equal(a, c) for a, c in zip(first, second, strict=True))


@interp_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_half_no_worse_than_pytorch(dtype, monkeypatch):
    from crossentropy.torch._triton import _linear

    # A tiny first block makes the in-place float32 -> half compaction take many steps.
    monkeypatch.setattr(_linear, "_FIRST_BLOCK", 8)
    h, w, y, b = make_linear((37,), 16, 129, dtype=dtype, seed=9)
    opts = LinearOptions(chunk_size=16)
    upstream = torch.tensor(0.5)  # a non-unit upstream gradient: the fused scaling runs
    got = run_linear(h, w, y, b, opts, upstream)
    want = dense_linear_reference(h, w, y, b, opts, upstream)
    hb, wb, bb = (t.detach().clone().requires_grad_() for t in (h, w, b))
    base = F.cross_entropy(hb @ wb.T + bb, y)
    (base * upstream.to(dtype)).backward()
    baseline = (base, hb.grad, wb.grad, bb.grad)
    assert got[0].dtype == torch.float32
    assert all(g.dtype == dtype for g in got[1:])
    for g, r, p in zip(got, want, baseline, strict=True):
        assert rel(g, r) <= 1.5 * rel(p, r) + 2e-3, (rel(g, r), rel(p, r))


@interp_only
def test_linear_weight_grad_in_the_input_dtype():
    h, w, y, b = make_linear((37,), 16, 129, dtype=torch.bfloat16, seed=10)
    opts = LinearOptions(chunk_size=16, weight_grad="input")
    got = run_linear(h, w, y, b, opts, torch.ones(()))
    want = dense_linear_reference(h, w, y, b, opts, torch.ones(()))
    assert got[2].dtype == torch.bfloat16
    assert rel(got[2], want[2]) < 2e-2  # three chunks, each rounded to bfloat16 once
    with pytest.raises(ValueError, match="weight_grad"):
        triton_linear_cross_entropy(h, w, y, b, LinearOptions(weight_grad="half"))


@interp_only
def test_half_weight_grad_accumulates_in_float32_in_place():
    from crossentropy.torch._triton import _linear

    torch.manual_seed(0)
    acc = _linear._HalfWeightGrad(9, 6, torch.bfloat16, torch.device("cpu"))
    total = torch.zeros(9, 6, dtype=F64)
    for _ in range(3):
        g = torch.randn(4, 9).bfloat16()
        h = torch.randn(4, 6).bfloat16()
        acc.add(g, h)
        total += g.double().T @ h.double()
    out = acc.finish(torch.tensor(0.25))
    assert out.dtype == torch.bfloat16 and out.shape == (9, 6)
    # One rounding to bfloat16 of the float32 sum: within one bfloat16 step of the exact
    # value (the interpreter truncates float32 -> bfloat16; the GPU rounds to nearest).
    want = 0.25 * total
    assert ((out.double() - want).abs() <= 2**-7 * want.abs() + 1e-12).all()


# ---------------------------------------------------------------- CUDA (GPU run only)


@cuda_only
@pytest.mark.parametrize("kind", TARGETS)
def test_cuda_cross_entropy_matches_reference(kind):
    logits, target, weight = make((64,), 1000, kind, seed=1, dtype=torch.float32, device="cuda")
    for name in ("plain", "all"):  # each flag set is a kernel to compile: keep them few
        for reduction in ("mean", "sum", "none"):
            opts = DenseOptions(reduction=reduction, **OPTION_SETS[name])
            compare_dense(logits, target, weight, opts, divergence=False, tol=1e-5)
        compare_dense(logits, target, weight, opts, divergence=True, tol=1e-5)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_no_worse_than_pytorch(dtype):
    logits, target, _ = make((512,), 32000, "labels", seed=2, dtype=dtype, device="cuda")
    ref, ref_grad = run_reference(logits, target, None, DenseOptions(), torch.ones(()), False)
    out, grad = run_dense(
        triton_cross_entropy, logits, target, None, DenseOptions(), torch.ones((), device="cuda")
    )
    base_x = logits.clone().requires_grad_()
    base = F.cross_entropy(base_x, target)
    base.backward()
    assert rel(out, ref) <= rel(base, ref) + 1e-6
    assert rel(grad, ref_grad) <= 1.5 * rel(base_x.grad, ref_grad) + 1e-3


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cuda_linear_matches_reference(dtype, reduction):
    h, w, y, b = make_linear((300,), 256, 5000, dtype=dtype, seed=3, device="cuda")
    opts = LinearOptions(reduction=reduction, chunk_size=128, label_smoothing=0.1)
    shape = (300,) if reduction == "none" else ()
    upstream = (torch.rand(shape, dtype=F64) + 0.5).cuda()
    got = run_linear(h, w, y, b, opts, upstream)
    want = dense_linear_reference(h.cpu(), w.cpu(), y.cpu(), b.cpu(), opts, upstream.cpu())
    if dtype == torch.float32:
        for g, r in zip(got, want, strict=True):
            assert rel(g, r) < 1e-3  # tf32 may be on for the products
        return
    hb, wb, bb = (t.detach().clone().requires_grad_() for t in (h, w, b))
    base = F.cross_entropy(hb @ wb.T + bb, y, reduction=reduction, label_smoothing=0.1)
    base.backward(upstream.to(base.dtype))
    baseline = (base, hb.grad, wb.grad, bb.grad)
    for g, r, p in zip(got, want, baseline, strict=True):
        assert rel(g, r) <= 1.5 * rel(p, r) + 2e-3, (rel(g, r), rel(p, r))


@cuda_only
def test_cuda_linear_is_deterministic_and_never_syncs():
    h, w, y, b = make_linear((1024,), 512, 32000, dtype=torch.bfloat16, seed=5, device="cuda")
    opts = LinearOptions(chunk_size=256)
    torch.cuda.set_sync_debug_mode("error")
    try:
        first = run_linear(h, w, y, b, opts, torch.ones((), device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    second = run_linear(h, w, y, b, opts, torch.ones((), device="cuda"))
    assert all(torch.equal(a, c) for a, c in zip(first, second, strict=True))


# ----------------------------------------------------------------------------- dispatch


def test_impl_dispatch_through_the_public_functions():
    from crossentropy.torch import linear_cross_entropy

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 11, generator=gen, dtype=torch.float64, device=DEVICE)
    target = torch.tensor([0, 3, -100, 10, 5, 1], device=DEVICE)
    options = {"label_smoothing": 0.1, "z_loss": 1e-3}
    for fn in (cross_entropy, kl_loss):
        expected = fn(logits, target, impl="torch", **options)
        got = fn(logits, target, impl="triton", **options)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    hidden = torch.randn(6, 4, generator=gen, dtype=torch.float64, device=DEVICE)
    weight = torch.randn(11, 4, generator=gen, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(
        linear_cross_entropy(hidden, weight, target, impl="triton"),
        linear_cross_entropy(hidden, weight, target, impl="torch"),
        rtol=1e-10,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="impl must be one of 'auto', 'torch', 'triton'"):
        cross_entropy(logits, target, impl="cuda")

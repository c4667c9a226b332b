"""The Triton divergence mode of ``linear_distillation_loss`` against a float64 oracle.

The oracle (``tests/_torch_oracles.py``) materialises both distributions with
``F.log_softmax`` in float64; the kernel runs on the CPU interpreter
(``TRITON_INTERPRET=1``) with small class blocks, so the online loop over blocks is
exercised.  The sm_90 compile check builds it with the real compiler for every
divergence, without a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _torch_oracles import distillation_oracle as oracle  # noqa: E402

from crossentropy.torch import Teacher, TopK, linear_distillation_loss  # noqa: E402
from crossentropy.torch._triton import interpreter  # noqa: E402

F64 = torch.float64
interp_only = pytest.mark.skipif(not interpreter(), reason="needs TRITON_INTERPRET=1")
DIVERGENCES = [
    ("forward_kl", 0.5),
    ("reverse_kl", 0.5),
    ("jsd", 0.0),
    ("jsd", 0.3),
    ("jsd", 1.0),
    ("skew_kl", 0.2),
    ("skew_reverse_kl", 0.7),
    ("tvd", 0.5),
]


def make(n, d, dt, v, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=F64)
    w = 2 * torch.randn(v, d, generator=gen, dtype=F64)
    b = torch.randn(v, generator=gen, dtype=F64)
    th = torch.randn(n, dt, generator=gen, dtype=F64)
    tw = 2 * torch.randn(v, dt, generator=gen, dtype=F64)
    y = torch.randint(0, v, (n,), generator=gen)
    y[torch.rand(n, generator=gen) < 0.3] = -100
    student = [t.to(dtype).requires_grad_() for t in (h, w, b)]
    return student, (th.to(dtype), tw.to(dtype)), y


@interp_only
@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_divergence_mode_matches_float64(divergence, beta, reduction, monkeypatch):
    from crossentropy.torch._triton import _distill

    monkeypatch.setattr(_distill, "_block", lambda width, override: 8)  # several blocks
    (h, w, b), (th, tw), y = make(9, 5, 6, 29, F64, seed=len(divergence) + int(10 * beta))
    lam = 0.25 if reduction == "none" else 0.0
    kw = dict(divergence=divergence, beta=beta, temperature=1.4, hard_weight=lam)
    up = torch.rand(9 if reduction == "none" else (), dtype=F64) + 0.5
    hr, wr, br = (t.detach().clone().requires_grad_() for t in (h, w, b))
    ref = oracle(
        hr @ wr.T + br, th @ tw.T, y, cap=3.0, teacher_cap=5.0, lam=lam, reduction=reduction,
        divergence=divergence, beta=beta, temperature=1.4,
    )  # fmt: skip
    want = torch.autograd.grad((ref * up).sum(), (hr, wr, br))
    out = linear_distillation_loss(
        h, w, Teacher(th, tw, softcap=5.0), bias=b, target=y, softcap=3.0, chunk_size=4,
        reduction=reduction, impl="triton", **kw,
    )  # fmt: skip
    got = torch.autograd.grad((out * up).sum(), (h, w, b))
    torch.testing.assert_close(out, ref.detach(), rtol=1e-10, atol=1e-12)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


@interp_only
def test_logits_teacher_and_the_torch_step_agree():
    (h, w, b), (th, tw), _ = make(7, 4, 5, 17, F64, seed=2)
    teacher = th @ tw.T
    outs = []
    for impl in ("triton", "torch"):
        out = linear_distillation_loss(h, w, teacher, bias=b, divergence="jsd", impl=impl)
        outs.append((out, *torch.autograd.grad(out, (h, w, b))))
    for a, c in zip(*outs, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


@interp_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_no_worse_than_pytorch(dtype):
    (h, w, b), (th, tw), y = make(11, 8, 6, 37, dtype, seed=4)
    out = linear_distillation_loss(
        h, w, Teacher(th, tw), bias=b, target=y, divergence="jsd", impl="triton"
    )
    assert out.dtype == torch.float32
    kw = dict(divergence="jsd", beta=0.5, temperature=1.0, cap=None, teacher_cap=None)
    args = dict(lam=0.0, reduction="mean", **kw)
    want = oracle(h.double() @ w.double().T + b.double(), th.double() @ tw.double().T, y, **args)
    base = oracle((h @ w.T + b).float(), (th @ tw.T).float(), y, **args)
    assert abs(float(out) - float(want)) <= 1.5 * abs(float(base) - float(want)) + 2e-3


def test_top_k_teacher_is_refused_by_the_kernel():
    (h, w, _), _, _ = make(3, 4, 4, 9, F64, seed=1)
    top = TopK(torch.tensor([[0, 1]] * 3), torch.log(torch.full((3, 2), 0.25, dtype=F64)))
    with pytest.raises(ValueError, match="impl='triton' has no TopK teacher"):
        linear_distillation_loss(h, w, top, impl="triton")


_COMPILE = r"""
import importlib.util, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

spec = importlib.util.spec_from_file_location("kernels", sys.argv[1])
k = importlib.util.module_from_spec(spec)
spec.loader.exec_module(k)
target = GPUTarget("cuda", 90, 32)
fn = k.divergence_kernel
sig = dict(X="*bf16", stride_x="i64", TL="*bf16", stride_t="i64", Y="*i64", DIV="*fp32",
           HARD="*fp32", SCALE="*fp32", C="i32", ignore_index="i64", cap="fp32",
           teacher_cap="fp32", inv_temp="fp32", beta="fp32", log_b="fp32", log_1b="fp32",
           hard_weight="fp32")
for kind in range(6):
    consts = dict(ACC=tl.float32, KIND=kind, HAS_CAP=True, TEACHER_CAP=True, HAS_HARD=True,
                  GRAD=True, BLOCK=2048)
    full = dict(sig, **dict.fromkeys(consts, "constexpr"))
    names = fn.arg_names
    src = ASTSource(fn=fn, signature={n: full[n] for n in names},
                    constexprs={(names.index(n),): v for n, v in consts.items()})
    assert "ld.global" in triton.compile(src, target=target).asm["ptx"]
print("compiled")
"""


def test_divergence_kernel_compiles_for_hopper():
    from crossentropy.torch._triton import __file__ as package

    kernels = os.path.join(os.path.dirname(package), "_kernels.py")
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE, kernels],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]

"""The Triton statistics mode of ``linear_token_stats`` against a float64 oracle.

The oracle (``tests/_torch_oracles.py``) materialises ``F.log_softmax(softcap(x) / T)`` in
float64; the kernels run on the CPU interpreter (``TRITON_INTERPRET=1``, this folder's
conftest.py), with small class blocks so that the online loop over blocks is exercised.
The sm_90 compile check builds the two statistics kernels with the real compiler, without
a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _torch_oracles import token_stats_oracle  # noqa: E402

from crossentropy.torch import linear_token_stats  # noqa: E402
from crossentropy.torch._triton import interpreter  # noqa: E402

F64 = torch.float64
interp_only = pytest.mark.skipif(not interpreter(), reason="needs TRITON_INTERPRET=1")

CASES = [
    {"temperature": 1.0, "softcap": None, "top_k": 0},
    {"temperature": 0.6, "softcap": None, "top_k": 5},
    {"temperature": 1.3, "softcap": 2.5, "top_k": 3},
]


def oracle(x, y, temperature, softcap, top_k):
    """log_prob, entropy, logsumexp, collision; argmax; top-k (values, indices)."""
    s = token_stats_oracle(x, y, temperature=temperature, softcap=softcap, top_k=top_k)
    fields = [s["log_prob"], s["entropy"], s["logsumexp"], s["collision"]]
    return fields, s["argmax"], (s["top_k_log_probs"], s["top_k_indices"])


def make(n, d, v, dtype, seed, minus_inf=False):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=F64)
    w = torch.randn(v, d, generator=gen, dtype=F64) * 1.5
    b = torch.randn(v, generator=gen, dtype=F64)
    if minus_inf:
        b[2] = -torch.inf
    y = torch.randint(0, v, (n,), generator=gen)
    y[torch.rand(n, generator=gen) < 0.3] = -100
    if minus_inf:
        y[y == 2] = 3
    return [t.to(dtype).requires_grad_() for t in (h, w, b)], y


@interp_only
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c['temperature']}-cap{c['softcap']}")
@pytest.mark.parametrize("minus_inf", [False, True], ids=["finite", "minus-inf-bias"])
def test_statistics_mode_matches_float64(case, minus_inf, monkeypatch):
    from crossentropy.torch._triton import _stats

    monkeypatch.setattr(_stats, "_block", lambda width, override: 8)  # several blocks
    (h, w, b), y = make(11, 6, 29, F64, seed=3, minus_inf=minus_inf)
    got = linear_token_stats(h, w, y, bias=b, chunk_size=4, impl="triton", **case)
    want, argmax, top = oracle(h @ w.T + b, y, **case)
    fields = [got.log_prob, got.entropy, got.logsumexp, got.collision]
    for g, r in zip(fields, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert torch.equal(got.argmax, argmax)
    assert torch.equal(got.correct, (y != -100) & (argmax == y))
    if case["top_k"]:
        torch.testing.assert_close(got.top_k_log_probs, top[0], rtol=1e-10, atol=1e-12)
        assert torch.equal(got.top_k_indices, top[1])
    gen = torch.Generator().manual_seed(7)
    ups = [torch.randn(11, generator=gen, dtype=F64) for _ in range(4)]
    ours = torch.autograd.grad(
        sum((u * f).sum() for u, f in zip(ups, fields, strict=True)), (h, w, b)
    )
    # The oracle's gradient at a -inf logit is NaN (0 * inf in autograd); the true one is 0.
    # A softcap maps -inf to -cap, an ordinary class: then no column is dropped.
    keep = torch.isfinite(b.detach()) | (case["softcap"] is not None)
    hr = h.detach().clone().requires_grad_()
    wr = w.detach()[keep].clone().requires_grad_()
    br = b.detach()[keep].clone().requires_grad_()
    dropped = bool((~keep).any())
    yr = torch.where(y == -100, y, y - (y > 2).long() * int(dropped))
    ref, _, _ = oracle(hr @ wr.T + br, yr, **case)
    theirs = torch.autograd.grad(
        sum((u * f).sum() for u, f in zip(ups, ref, strict=True)), (hr, wr, br)
    )
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours[1][keep], theirs[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours[2][keep], theirs[2], rtol=1e-9, atol=1e-12)
    assert torch.equal(ours[1][~keep], torch.zeros_like(ours[1][~keep]))
    assert torch.equal(ours[2][~keep], torch.zeros_like(ours[2][~keep]))


@interp_only
@pytest.mark.parametrize("field", range(4), ids=["log_prob", "entropy", "logsumexp", "collision"])
def test_each_upstream_gradient_alone_equals_the_torch_step(field):
    (h, w, b), y = make(9, 5, 23, F64, seed=5)
    up = torch.randn(9, generator=torch.Generator().manual_seed(field), dtype=F64)
    grads = []
    for impl in ("triton", "torch"):
        s = linear_token_stats(h, w, y, bias=b, temperature=0.8, softcap=4.0, impl=impl)
        grads.append(torch.autograd.grad((up * s[field]).sum(), (h, w, b)))
    for a, c in zip(*grads, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


@interp_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_no_worse_than_pytorch(dtype):
    (h, w, b), y = make(13, 8, 41, dtype, seed=9)
    got = linear_token_stats(h, w, y, bias=b, temperature=0.9, top_k=2, impl="triton")
    assert all(f.dtype == torch.float32 for f in got[:4])
    assert got.argmax.dtype == torch.int64 and got.top_k_indices.dtype == torch.int64
    want, _, _ = oracle(h.double() @ w.double().T + b.double(), y, 0.9, None, 2)
    # PyTorch in the same dtype: the half logits, then float32 log_softmax.
    base, _, _ = oracle((h @ w.T + b).float(), y, 0.9, None, 2)
    for g, r, p in zip(got[:4], want, base, strict=True):
        err, base_err = (g.double() - r).abs().max(), (p - r).abs().max()
        assert err <= 1.5 * base_err + 2e-3, (float(err), float(base_err))


@interp_only
def test_without_target_and_top_k_equal_to_the_vocabulary():
    (h, w, b), _ = make(6, 4, 13, F64, seed=11)
    got = linear_token_stats(h, w, None, bias=b, top_k=13, impl="triton")
    assert got.log_prob is None and got.correct is None
    _, argmax, top = oracle(h @ w.T + b, torch.zeros(6, dtype=torch.long), 1.0, None, 13)
    torch.testing.assert_close(got.top_k_log_probs, top[0], rtol=1e-10, atol=1e-12)
    assert torch.equal(got.argmax, argmax)


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
    names = fn.arg_names
    sig = {n: sig[n] for n in names}
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(names.index(n),): v for n, v in consts.items()})
    ptx = triton.compile(src, target=target).asm["ptx"]
    assert "ld.global" in ptx

scalars = dict(C="i32", start="i64", ignore_index="i64", cap="fp32", inv_temp="fp32")
build(k.stats_kernel,
      dict(X="*bf16", stride_x="i64", T="*i64", M="*fp32", ARG="*i64", S0="*fp32",
           S1="*fp32", S2="*fp32", ZY="*fp32", **scalars),
      dict(ACC=tl.float32, HAS_TARGET=True, HAS_CAP=True, BLOCK=4096))
build(k.stats_grad_kernel,
      dict(X="*bf16", stride_x="i64", T="*i64", LSE="*fp32", COEF="*fp32", GS="*fp32",
           GC="*fp32", GLP="*fp32", **scalars),
      dict(ACC=tl.float32, HAS_ENTROPY=True, HAS_COLLISION=True, HAS_LOGPROB=True,
           HAS_CAP=True, BLOCK=4096))
print("compiled")
"""


def test_statistics_kernels_compile_for_hopper():
    # The real compiler, for sm_90, without a GPU: it catches what the interpreter forgives.
    from crossentropy.torch._triton import __file__ as package

    kernels = os.path.join(os.path.dirname(package), "_kernels.py")
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE, kernels],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]

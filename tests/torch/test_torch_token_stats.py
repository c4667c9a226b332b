"""token_stats and linear_token_stats against an independent float64 oracle (issue 13).

The oracle (``tests/_torch_oracles.py``) is written from ``F.log_softmax(softcap(x) / T)``
alone (not from ``crossentropy.torch._reference``): with ``z = c tanh(x / c) / T``
(softcap ``c`` optional) and ``log q = log_softmax(z)``, per token ``log_prob = log q[y]``
(0 where ignored), ``entropy = -sum q log q`` (``0 log 0 = 0``), ``logsumexp = lse(z)``,
``collision = sum q^2``, ``argmax = argmax z``, ``correct = counted & (argmax == y)`` and
the top-k of ``log q``.  Its gradients come from autograd on the materialised float64
logits.  Also: half inputs held to PyTorch's own same-dtype computation, gradcheck,
``-inf`` logits, a GRPO objective composed from the fields, verl's ``FusedLinearForPPO``,
torch.compile and the argument errors.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sysconfig

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from _torch_oracles import linear_token_stats_oracle as linear_oracle  # noqa: E402
from _torch_oracles import token_stats_oracle as oracle  # noqa: E402

from crossentropy.torch import TokenStats, linear_token_stats, token_stats  # noqa: E402

F64 = torch.float64
FIELDS = TokenStats._fields
DIFFERENTIABLE = ("log_prob", "entropy", "logsumexp", "collision")
FLOATS = ("log_prob", "entropy", "logsumexp", "collision", "top_k_log_probs")
RTOL, ATOL = 1e-10, 1e-12


def make(batch, dim, vocab, *, seed=0, dtype=F64, bias=False, ignore=0.2, ignore_index=-100):
    """hidden (*batch, D), weight (V, D), bias (V,) or None, leaves requiring grad; target."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*batch, dim, generator=gen, dtype=F64)
    weight = torch.randn(vocab, dim, generator=gen, dtype=F64) * (3 / math.sqrt(max(dim, 1)))
    b = torch.randn(vocab, generator=gen, dtype=F64) if bias else None
    target = torch.randint(0, vocab, batch, generator=gen)
    target[torch.rand(batch, generator=gen) < ignore] = ignore_index
    cast = [t if t is None else t.to(dtype).requires_grad_() for t in (hidden, weight, b)]
    return (*cast, target)


def make_logits(batch, vocab, *, seed=0, dtype=F64, scale=3.0, ignore=0.2, ignore_index=-100):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, vocab, generator=gen, dtype=F64) * scale
    target = torch.randint(0, vocab, batch, generator=gen)
    target[torch.rand(batch, generator=gen) < ignore] = ignore_index
    return logits.to(dtype).requires_grad_(), target


def assert_stats(got, want, *, rtol=RTOL, atol=ATOL, dtype=F64):
    """Every field of ``got`` (a TokenStats) against the oracle's dict ``want``."""
    assert isinstance(got, TokenStats)
    for name in FIELDS:
        g, w = getattr(got, name), want[name]
        if w is None:
            assert g is None, name
            continue
        assert g is not None, name
        assert g.shape == w.shape, (name, g.shape, w.shape)
        if name in FLOATS:
            assert g.dtype == dtype, (name, g.dtype)
            torch.testing.assert_close(g.double(), w.detach(), rtol=rtol, atol=atol, msg=name)
        elif name == "correct":
            assert g.dtype == torch.bool
            assert torch.equal(g, w), name
        else:
            assert g.dtype == torch.int64, (name, g.dtype)
            assert torch.equal(g, w), name


def upstream_loss(stats, upstream):
    """``sum_f <g_f, stats.f>`` over the fields in ``upstream`` (a dict of tensors)."""
    total = 0.0
    for name, g in upstream.items():
        value = stats[name] if isinstance(stats, dict) else getattr(stats, name)
        total = total + (g * value).sum()
    return total


def random_upstream(shape, names, seed=1, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(shape, generator=gen, dtype=F64).to(dtype) for n in names}


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def assert_grads(got, want, *, rtol=RTOL, atol=1e-11):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == w.dtype or w.dtype == F64
        torch.testing.assert_close(g.double(), w.double(), rtol=rtol, atol=atol, msg=f"#{i}")


# ---------------------------------------------------------------- values: every field, option

OPTION_SETS = {
    "plain": {},
    "T0.7": {"temperature": 0.7},
    "T2.5": {"temperature": 2.5},
    "softcap": {"softcap": 4.0},
    "softcap-T": {"softcap": 3.0, "temperature": 1.6},
    "ignore3": {"ignore_index": 3},
    "ignore-1": {"ignore_index": -1},
    "top1": {"top_k": 1},
    "top5": {"top_k": 5},
    "topV": {"top_k": 17},
    "all": {"softcap": 5.0, "temperature": 0.8, "ignore_index": 2, "top_k": 4},
}


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_token_stats_matches_oracle(name):
    options = OPTION_SETS[name]
    ignore = options.get("ignore_index", -100)
    logits, target = make_logits((3, 5), 17, seed=len(name), ignore_index=ignore)
    if ignore >= 0:  # a class index as ignore_index: some tokens of that class
        target[0, :2] = ignore
    got = token_stats(logits, target, **options)
    want = oracle(logits, target, **options)
    assert_stats(got, want)
    if ignore >= 0:
        assert torch.all(got.log_prob[target == ignore] == 0)
        assert not torch.any(got.correct[target == ignore])


@pytest.mark.parametrize("name", list(OPTION_SETS))
@pytest.mark.parametrize("bias", [False, True])
def test_linear_token_stats_matches_oracle(name, bias):
    options = OPTION_SETS[name]
    ignore = options.get("ignore_index", -100)
    hidden, weight, b, target = make((3,), 8, 17, seed=len(name), bias=bias, ignore_index=ignore)
    if ignore >= 0:
        target[0] = ignore
    got = linear_token_stats(hidden, weight, target, bias=b, **options)
    want = linear_oracle(hidden, weight, target, bias=b, **options)
    assert_stats(got, want)


def test_large_odd_shape_values_and_gradients():
    """(N, D, V) = (423, 32, 1001), every option, the default chunk and a ragged one."""
    options = {"softcap": 6.0, "temperature": 0.9, "ignore_index": -1, "top_k": 8}
    hidden, weight, b, target = make((423,), 32, 1001, seed=7, bias=True, ignore_index=-1)
    want = linear_oracle(hidden, weight, target, bias=b, **options)
    up = random_upstream((423,), DIFFERENTIABLE, seed=3)
    want_grads = grads(upstream_loss(want, up), (hidden, weight, b))
    for chunk_size in (None, 100):
        got = linear_token_stats(hidden, weight, target, bias=b, chunk_size=chunk_size, **options)
        assert_stats(got, want, rtol=1e-9, atol=1e-10)
        assert_grads(grads(upstream_loss(got, up), (hidden, weight, b)), want_grads, rtol=1e-9)


def test_float32_inputs():
    hidden, weight, b, target = make((6, 7), 16, 50, seed=2, dtype=torch.float32, bias=True)
    options = {"softcap": 5.0, "temperature": 1.3, "top_k": 3}
    got = linear_token_stats(hidden, weight, target, bias=b, **options)
    want = linear_oracle(hidden, weight, target, bias=b, **options)
    assert_stats(got, want, rtol=1e-4, atol=2e-5, dtype=torch.float32)
    logits = (hidden @ weight.T + b).detach().requires_grad_()
    assert_stats(
        token_stats(logits, target, **options), want, rtol=1e-4, atol=2e-5, dtype=torch.float32
    )


@pytest.mark.parametrize("op", ["token_stats", "linear"])
def test_target_none(op):
    hidden, weight, b, _ = make((2, 3), 8, 17, seed=4, bias=True)
    options = {"temperature": 1.4, "top_k": 2}
    if op == "linear":
        got = linear_token_stats(hidden, weight, bias=b, **options)
    else:
        got = token_stats(hidden @ weight.T + b, None, **options)
    want = linear_oracle(hidden, weight, None, bias=b, **options)
    assert got.log_prob is None and got.correct is None
    assert_stats(got, want)
    up = random_upstream((2, 3), ("entropy", "logsumexp", "collision"))
    assert_grads(
        grads(upstream_loss(got, up), (hidden, weight, b)),
        grads(upstream_loss(want, up), (hidden, weight, b)),
    )


def test_top_k_zero_is_none_and_top_k_v_is_the_sorted_distribution():
    logits, target = make_logits((4,), 9, seed=5)
    none = token_stats(logits, target, top_k=0)
    assert none.top_k_indices is None and none.top_k_log_probs is None
    full = token_stats(logits, target, top_k=9)
    assert full.top_k_indices.shape == (4, 9) and full.top_k_log_probs.shape == (4, 9)
    logq = F.log_softmax(logits.detach(), -1)
    assert torch.equal(full.top_k_indices.sort(-1).values, torch.arange(9).expand(4, 9))
    assert torch.all(full.top_k_log_probs[:, :-1] >= full.top_k_log_probs[:, 1:])
    torch.testing.assert_close(full.top_k_log_probs, logq.gather(-1, full.top_k_indices))
    torch.testing.assert_close(full.top_k_log_probs.exp().sum(-1), torch.ones(4, dtype=F64))
    assert full.top_k_log_probs.grad_fn is None and full.argmax.grad_fn is None


def test_argmax_ties_to_the_lowest_index_as_torch_argmax():
    logits = torch.tensor(
        [[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 5.0, 5.0]], dtype=F64
    )
    target = torch.tensor([2, 0, 3])
    for s in (
        token_stats(logits, target),
        linear_token_stats(logits, torch.eye(4, dtype=F64), target),
    ):
        assert s.argmax.tolist() == logits.argmax(-1).tolist() == [1, 0, 2]
        assert s.correct.tolist() == [False, True, False]


def test_three_d_hidden():
    hidden, weight, b, target = make((2, 5, 3), 8, 17, seed=6, bias=True)
    options = {"softcap": 4.0, "top_k": 3}
    got = linear_token_stats(hidden, weight, target, bias=b, chunk_size=4, **options)
    assert got.entropy.shape == (2, 5, 3) and got.top_k_indices.shape == (2, 5, 3, 3)
    assert_stats(got, linear_oracle(hidden, weight, target, bias=b, **options))
    up = random_upstream((2, 5, 3), DIFFERENTIABLE, seed=9)
    want = linear_oracle(hidden, weight, target, bias=b, **options)
    assert_grads(
        grads(upstream_loss(got, up), (hidden, weight, b)),
        grads(upstream_loss(want, up), (hidden, weight, b)),
    )


@pytest.mark.parametrize("op", ["token_stats", "linear"])
def test_one_token_scalar_statistics(op):
    hidden, weight, b, target = make((), 8, 17, seed=6, bias=True)
    if op == "linear":
        got = linear_token_stats(hidden, weight, target, bias=b, top_k=2)
    else:
        got = token_stats(torch.addmm(b, hidden[None], weight.T)[0], target, top_k=2)
    assert got.entropy.shape == () and got.top_k_indices.shape == (2,)
    assert_stats(got, linear_oracle(hidden, weight, target, bias=b, top_k=2))


def test_no_tokens():
    hidden, weight, _, _ = make((0,), 8, 17)
    target = torch.zeros(0, dtype=torch.long)
    for s in (
        linear_token_stats(hidden, weight, target, top_k=2),
        token_stats(hidden @ weight.T, target, top_k=2),
    ):
        assert s.entropy.shape == (0,) and s.log_prob.shape == (0,)
        assert s.top_k_indices.shape == (0, 2)


def test_int32_target_and_impl_torch():
    logits, target = make_logits((6,), 11, seed=8)
    want = token_stats(logits, target, top_k=2)
    for got in (
        token_stats(logits, target.int(), top_k=2),
        token_stats(logits, target, top_k=2, impl="torch"),
    ):
        for name in FIELDS:
            assert torch.equal(getattr(got, name), getattr(want, name)), name


# ---------------------------------------------------------------- chunk-size independence


def test_chunk_size_independent():
    hidden, weight, b, target = make((5, 7), 8, 23, seed=9, bias=True)
    options = {"softcap": 4.0, "temperature": 1.2, "top_k": 3}
    up = random_upstream((5, 7), DIFFERENTIABLE, seed=2)
    want = linear_oracle(hidden, weight, target, bias=b, **options)
    want_grads = grads(upstream_loss(want, up), (hidden, weight, b))
    results = {}
    for chunk_size in (1, 7, None):
        got = linear_token_stats(hidden, weight, target, bias=b, chunk_size=chunk_size, **options)
        assert_stats(got, want)
        results[chunk_size] = got, grads(upstream_loss(got, up), (hidden, weight, b))
        assert_grads(results[chunk_size][1], want_grads)
    base, base_grads = results[None]
    for got, got_grads in results.values():
        for name in FIELDS:
            torch.testing.assert_close(
                getattr(got, name), getattr(base, name), rtol=1e-13, atol=1e-14
            )
        for g, w in zip(got_grads, base_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------- half inputs


def _max_err(value, reference):
    return (value.double() - reference.double()).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", [{}, {"softcap": 5.0, "temperature": 0.7, "top_k": 4}])
def test_half_inputs_no_worse_than_pytorch(dtype, options):
    hidden, weight, b, target = make((40,), 32, 300, seed=10, dtype=dtype, bias=True)
    want = linear_oracle(hidden, weight, target, bias=b, **options)
    # PyTorch's same-dtype computation: the half logits, cast to float32, log_softmax.
    half_logits = F.linear(hidden, weight, b)
    torch_way = oracle(half_logits.float(), target, **options)
    torch_way = {
        k: v if v is None or not v.is_floating_point() else v.float() for k, v in torch_way.items()
    }
    up = random_upstream((40,), DIFFERENTIABLE, seed=4)
    exact_inputs = [t.detach().double().requires_grad_() for t in (hidden, weight, b)]
    exact_stats = linear_oracle(*exact_inputs[:2], target, bias=exact_inputs[2], **options)
    want_grads = grads(upstream_loss(exact_stats, up), exact_inputs)
    up32 = {k: v.float() for k, v in up.items()}
    torch_grads = grads(upstream_loss(torch_way, up32), (hidden, weight, b))
    for s in (
        linear_token_stats(hidden, weight, target, bias=b, **options),
        token_stats(half_logits.detach().requires_grad_(), target, **options),
    ):
        assert s.entropy.dtype == s.log_prob.dtype == s.logsumexp.dtype == torch.float32
        assert s.collision.dtype == torch.float32 and s.argmax.dtype == torch.int64
        assert s.correct.dtype == torch.bool
        if s.top_k_indices is not None:
            assert s.top_k_indices.dtype == torch.int64
            assert s.top_k_log_probs.dtype == torch.float32
        for name in ("log_prob", "entropy", "logsumexp", "collision", "top_k_log_probs"):
            if want[name] is None:
                continue
            ours, theirs = (
                _max_err(getattr(s, name), want[name]),
                _max_err(torch_way[name], want[name]),
            )
            assert ours <= 1.1 * theirs + 2e-5, (name, ours, theirs)
        # argmax ties in half can differ from the float64 argmax: hold it to PyTorch's.
        assert torch.equal(s.argmax, half_logits.float().argmax(-1)), "argmax"
    s = linear_token_stats(hidden, weight, target, bias=b, **options)
    got_grads = grads(upstream_loss(s, up32), (hidden, weight, b))
    for name, got, theirs, exact in zip("hWb", got_grads, torch_grads, want_grads, strict=True):
        assert got.dtype == dtype, name
        ours, err = _max_err(got, exact), _max_err(theirs, exact)
        assert ours <= 1.25 * err + 1e-3 * exact.abs().max().item(), (name, ours, err)
    # token_stats: the gradient of the half logits, against PyTorch's on the same logits.
    x = half_logits.detach().requires_grad_()
    (got,) = grads(upstream_loss(token_stats(x, target, **options), up32), (x,))
    (theirs,) = grads(upstream_loss(oracle(x.float(), target, **options), up32), (x,))
    x64 = x.detach().double().requires_grad_()
    (exact,) = grads(upstream_loss(oracle(x64, target, **options), up), (x64,))
    assert got.dtype == dtype
    ours, err = _max_err(got, exact), _max_err(theirs, exact)
    assert ours <= 1.25 * err + 1e-3 * exact.abs().max().item(), ("logits", ours, err)


# ---------------------------------------------------------------- gradients

SUBSETS = [DIFFERENTIABLE, *((n,) for n in DIFFERENTIABLE), ("log_prob", "entropy")]


@pytest.mark.parametrize("names", SUBSETS, ids="+".join)
@pytest.mark.parametrize(
    "options", [{}, {"softcap": 3.0, "temperature": 0.6, "ignore_index": 1}], ids=["plain", "all"]
)
def test_linear_gradients_random_upstream(names, options):
    ignore = options.get("ignore_index", -100)
    hidden, weight, b, target = make((4, 5), 8, 19, seed=11, bias=True, ignore_index=ignore)
    up = random_upstream((4, 5), names, seed=len(names))
    got = linear_token_stats(hidden, weight, target, bias=b, chunk_size=3, **options)
    want = linear_oracle(hidden, weight, target, bias=b, **options)
    assert_grads(
        grads(upstream_loss(got, up), (hidden, weight, b)),
        grads(upstream_loss(want, up), (hidden, weight, b)),
    )


@pytest.mark.parametrize("names", SUBSETS, ids="+".join)
@pytest.mark.parametrize(
    "options", [{}, {"softcap": 3.0, "temperature": 0.6, "ignore_index": 1}], ids=["plain", "all"]
)
def test_logits_gradients_random_upstream(names, options):
    ignore = options.get("ignore_index", -100)
    logits, target = make_logits((4, 5), 19, seed=12, ignore_index=ignore)
    up = random_upstream((4, 5), names, seed=len(names) + 7)
    got = token_stats(logits, target, **options)
    want = oracle(logits, target, **options)
    assert_grads(
        grads(upstream_loss(got, up), (logits,)), grads(upstream_loss(want, up), (logits,))
    )


def test_gradient_only_for_inputs_that_require_it():
    hidden, weight, b, target = make((6,), 8, 13, seed=13, bias=True)
    weight.requires_grad_(False)
    up = random_upstream((6,), DIFFERENTIABLE)
    got = linear_token_stats(hidden, weight, target, bias=b)
    want = linear_oracle(hidden, weight, target, bias=b)
    assert_grads(
        grads(upstream_loss(got, up), (hidden, b)), grads(upstream_loss(want, up), (hidden, b))
    )
    with torch.no_grad():
        s = linear_token_stats(hidden, weight, target, bias=b)
    assert s.entropy.grad_fn is None and not s.entropy.requires_grad


def _differentiable(stats):
    return tuple(getattr(stats, n) for n in DIFFERENTIABLE)


def test_gradcheck_linear_token_stats():
    hidden, weight, b, target = make((5,), 3, 6, seed=14, bias=True, ignore=0.3)

    def fn(h, w, bias):
        s = linear_token_stats(h, w, target, bias=bias, softcap=2.5, temperature=0.8, chunk_size=2)
        return _differentiable(s)

    assert torch.autograd.gradcheck(fn, (hidden, weight, b))
    assert torch.autograd.gradcheck(
        lambda h, w: _differentiable(linear_token_stats(h, w, target)), (hidden, weight)
    )


def test_gradcheck_token_stats():
    logits, target = make_logits((2, 3), 7, seed=15, ignore=0.3)

    def fn(x):
        return _differentiable(token_stats(x, target, softcap=4.0, temperature=1.7, top_k=2))

    assert torch.autograd.gradcheck(fn, (logits,))
    assert torch.autograd.gradgradcheck(
        lambda x: _differentiable(token_stats(x, target)), (logits,)
    )


# ---------------------------------------------------------------- -inf logits


@pytest.mark.parametrize("options", [{}, {"temperature": 0.5}, {"softcap": 3.0}])
def test_minus_inf_logit_column(options):
    logits, target = make_logits((3, 4), 9, seed=16)
    with torch.no_grad():
        logits[..., 4] = -torch.inf
        logits[0, 0, :] = -torch.inf
        logits[0, 0, 2] = 1.0  # a one-hot row: entropy 0 (0 log 0 = 0), collision 1
    target[target == 4] = 5
    target[0, 0] = 2
    got = token_stats(logits, target, top_k=9, **options)
    want = oracle(logits, target, top_k=9, **options)
    assert torch.all(torch.isfinite(got.entropy)) and torch.all(torch.isfinite(got.collision))
    assert_stats(got, want)
    if "softcap" not in options:
        assert got.entropy[0, 0] == 0 and got.collision[0, 0] == 1 and got.log_prob[0, 0] == 0
    up = random_upstream((3, 4), DIFFERENTIABLE)
    (g,) = grads(upstream_loss(got, up), (logits,))
    assert torch.all(torch.isfinite(g))
    assert_grads((g,), grads(upstream_loss(want, up), (logits,)))
    if "softcap" not in options:
        assert torch.all(g[..., 4] == 0)


def test_minus_inf_bias_entry():
    hidden, weight, b, target = make((4, 3), 8, 11, seed=17, bias=True)
    with torch.no_grad():
        b[6] = -torch.inf
    target[target == 6] = 0
    for options in ({}, {"temperature": 1.5, "top_k": 11}):
        got = linear_token_stats(hidden, weight, target, bias=b, chunk_size=5, **options)
        want = linear_oracle(hidden, weight, target, bias=b, **options)
        assert torch.all(torch.isfinite(got.entropy))
        assert_stats(got, want)
        up = random_upstream((4, 3), DIFFERENTIABLE)
        got_grads = grads(upstream_loss(got, up), (hidden, weight, b))
        for g in got_grads:
            assert torch.all(torch.isfinite(g))
        assert got_grads[1][6].abs().max() == 0 and got_grads[2][6] == 0
        assert_grads(got_grads, grads(upstream_loss(want, up), (hidden, weight, b)))


# ---------------------------------------------------------------- a GRPO objective


def grpo_loss(log_prob, entropy, old_log_prob, advantages, mask, eps=0.2, beta=0.01):
    ratio = torch.exp(log_prob - old_log_prob)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - eps, 1 + eps) * advantages)
    m = mask.to(log_prob.dtype)
    return -(surrogate * m).sum() / m.sum() - beta * (entropy * m).sum() / m.sum()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_grpo_objective_equals_materialised(dtype):
    temperature, ignore = 0.7, -100
    hidden, weight, b, target = make((3, 10), 16, 37, seed=18, dtype=dtype, bias=True)
    gen = torch.Generator().manual_seed(5)
    mask = target != ignore
    advantages = torch.randn(3, 10, generator=gen, dtype=F64).to(dtype)
    # Materialised: the logits, log_softmax, gather, entropy, by PyTorch in the same dtype.
    logits = (hidden @ weight.T + b) / temperature
    logq = F.log_softmax(logits, -1)
    lp = logq.gather(-1, torch.where(mask, target, 0).unsqueeze(-1)).squeeze(-1)
    lp = torch.where(mask, lp, 0.0)
    ent = -(logq.exp() * logq).sum(-1)
    # Old log-probs off by up to +-0.5: some ratios clipped, some not.
    old = lp.detach() + (torch.rand(3, 10, generator=gen, dtype=F64).to(dtype) - 0.5)
    want = grpo_loss(lp, ent, old, advantages, mask)
    ratio = torch.exp(lp.detach() - old)[mask]
    assert torch.any((ratio - 1).abs() > 0.2) and torch.any((ratio - 1).abs() < 0.2)
    want_grads = grads(want, (hidden, weight, b))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == F64 else {"rtol": 2e-5, "atol": 2e-6}

    s = linear_token_stats(hidden, weight, target, bias=b, temperature=temperature, chunk_size=7)
    got = grpo_loss(s.log_prob, s.entropy, old, advantages, mask)
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip(grads(got, (hidden, weight, b)), want_grads, strict=True):
        torch.testing.assert_close(g, w, **tol)

    raw = (hidden @ weight.T + b).detach().requires_grad_()
    s = token_stats(raw, target, temperature=temperature)
    got = grpo_loss(s.log_prob, s.entropy, old, advantages, mask)
    torch.testing.assert_close(got, want, **tol)
    (g,) = grads(got, (raw,))
    ref_raw = raw.detach().requires_grad_()
    ref_logq = F.log_softmax(ref_raw / temperature, -1)
    ref_lp = torch.where(
        mask, ref_logq.gather(-1, torch.where(mask, target, 0).unsqueeze(-1)).squeeze(-1), 0.0
    )
    ref = grpo_loss(ref_lp, -(ref_logq.exp() * ref_logq).sum(-1), old, advantages, mask)
    torch.testing.assert_close(g, grads(ref, (ref_raw,))[0], **tol)


# ---------------------------------------------------------------- verl's FusedLinearForPPO


def _verl_torch_functional():
    """verl 0.9.1's ``verl/utils/experimental/torch_functional.py``, loaded by file path
    (it imports only torch; verl's package import needs a cluster stack)."""
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        path = pathlib.Path(base) / "verl" / "utils" / "experimental" / "torch_functional.py"
        if path.is_file():
            break
    else:
        pytest.skip("verl is not installed (pip install --no-deps verl==0.9.1)")
    spec = importlib.util.spec_from_file_location("_verl_torch_functional", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_agrees_with_verl_fused_linear_for_ppo(dtype, temperature):
    verl = _verl_torch_functional()
    hidden, weight, _, target = make((2, 9), 16, 41, seed=19, dtype=dtype, ignore=0.0)
    up = random_upstream((2, 9), ("log_prob", "entropy"), seed=6, dtype=dtype)
    ppo = verl.FusedLinearForPPO(chunk_size=4)
    their_lp, their_ent = ppo(hidden, weight, target, temperature=temperature)
    theirs = grads(
        (up["log_prob"] * their_lp).sum() + (up["entropy"] * their_ent).sum(), (hidden, weight)
    )
    s = linear_token_stats(hidden, weight, target, temperature=temperature, chunk_size=5)
    ours = grads(upstream_loss(s, up), (hidden, weight))
    # verl's log-probs are float32 whatever the input: compare at float32 precision then.
    tol = (
        {"rtol": 1e-4, "atol": 1e-5}
        if dtype == torch.float32 or their_lp.dtype != dtype
        else {"rtol": 1e-10, "atol": 1e-12}
    )
    torch.testing.assert_close(s.log_prob.to(their_lp.dtype), their_lp, **tol)
    torch.testing.assert_close(s.entropy, their_ent.to(s.entropy.dtype), **tol)
    for g, w in zip(ours, theirs, strict=True):
        torch.testing.assert_close(g, w.to(g.dtype), **tol)


# ---------------------------------------------------------------- torch.compile


def test_torch_compile_matches_eager():
    hidden, weight, b, target = make((4, 6), 8, 29, seed=20, bias=True)
    gen = torch.Generator().manual_seed(8)
    old = torch.randn(4, 6, generator=gen, dtype=F64) * 0.1 - 3.0
    advantages = torch.randn(4, 6, generator=gen, dtype=F64)
    mask = target != -100

    def linear_step(h, w, bias, y):
        s = linear_token_stats(
            h, w, y, bias=bias, temperature=0.8, softcap=5.0, top_k=3, chunk_size=7
        )
        loss = grpo_loss(s.log_prob, s.entropy, old, advantages, mask) + 0.1 * s.collision.mean()
        return loss + 1e-3 * s.logsumexp.square().mean(), s.argmax, s.top_k_indices

    def logits_step(x, y):
        s = token_stats(x, y, temperature=0.8, softcap=5.0, top_k=3)
        loss = grpo_loss(s.log_prob, s.entropy, old, advantages, mask) + 0.1 * s.collision.mean()
        return loss + 1e-3 * s.logsumexp.square().mean(), s.argmax, s.top_k_indices

    logits = (hidden @ weight.T + b).detach().requires_grad_()
    for step, inputs in ((linear_step, (hidden, weight, b)), (logits_step, (logits,))):
        torch._dynamo.reset()
        eager = step(*inputs, target)
        compiled = torch.compile(step, backend="aot_eager")(*inputs, target)
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-12, atol=1e-14)
        assert torch.equal(compiled[1], eager[1]) and torch.equal(compiled[2], eager[2])
        for g, w in zip(grads(compiled[0], inputs), grads(eager[0], inputs), strict=True):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- errors


def _linear_inputs():
    hidden, weight, _, target = make((2, 3), 4, 6, seed=21, ignore=0.0)
    return hidden.detach(), weight.detach(), target


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": torch.zeros(6, 5, dtype=F64)}, ValueError, "weight"),
        ({"weight": torch.zeros(6, dtype=F64)}, ValueError, "weight"),
        ({"target": torch.zeros(3, 2, dtype=torch.long)}, ValueError, "target"),
        ({"target": torch.zeros(6, dtype=torch.long)}, ValueError, "target"),
        ({"target": torch.zeros(2, 3, dtype=F64)}, TypeError, "target"),
        ({"bias": torch.zeros(5, dtype=F64)}, ValueError, "bias"),
        ({"weight": torch.zeros(6, 4)}, (ValueError, TypeError), "weight|dtype"),
        ({"top_k": 7}, ValueError, "top_k"),
        ({"top_k": -1}, ValueError, "top_k"),
        ({"top_k": True}, (ValueError, TypeError), "top_k"),
        ({"top_k": 1.5}, (ValueError, TypeError), "top_k"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"target": torch.full((2, 3), 6)}, ValueError, "target"),
        ({"target": torch.full((2, 3), -5)}, ValueError, "target"),
        ({"target": torch.full((2, 3), 6), "validate": True}, ValueError, "target"),
    ],
)
def test_linear_errors(kwargs, error, match):
    hidden, weight, target = _linear_inputs()
    args = {"hidden": hidden, "weight": weight, "target": target, **kwargs}
    with pytest.raises(error, match=match):
        linear_token_stats(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": torch.zeros(3, 2, dtype=torch.long)}, ValueError, "target"),
        ({"target": torch.zeros(2, 3, 6, dtype=torch.long)}, ValueError, "target"),
        ({"target": torch.zeros(2, 3, dtype=torch.float32)}, TypeError, "target"),
        ({"target": torch.zeros(2, 3, 6)}, TypeError, "target"),
        ({"top_k": 7}, ValueError, "top_k"),
        ({"top_k": -2}, ValueError, "top_k"),
        ({"top_k": False}, (ValueError, TypeError), "top_k"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": -0.5}, ValueError, "temperature"),
        ({"target": torch.full((2, 3), 6)}, ValueError, "target"),
        ({"target": torch.full((2, 3), 7), "validate": True}, ValueError, "target"),
    ],
)
def test_token_stats_errors(kwargs, error, match):
    args = {"logits": torch.zeros(2, 3, 6), "target": torch.zeros(2, 3, dtype=torch.long), **kwargs}
    with pytest.raises(error, match=match):
        token_stats(**args)


def test_out_of_range_label_without_validation_is_never_a_silent_value():
    logits, _ = make_logits((4,), 6, seed=22)
    target = torch.tensor([0, 6, 2, -3])
    s = token_stats(logits, target, validate=False)
    assert torch.isnan(s.log_prob[1]) and torch.isnan(s.log_prob[3])
    assert torch.isfinite(s.log_prob[[0, 2]]).all()
    hidden, weight, _, _ = make((4,), 5, 6, seed=22)
    s = linear_token_stats(hidden, weight, target, validate=False)
    assert torch.isnan(s.log_prob[1]) and torch.isnan(s.log_prob[3])
    # The ignored label is not out of range: ignore_index=6 makes it a counted 0.
    s = token_stats(logits, torch.tensor([0, 6, 2, 1]), ignore_index=6)
    assert s.log_prob[1] == 0 and not s.correct[1]

"""linear_cross_entropy against the float64 plain-PyTorch reference and F.cross_entropy."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from crossentropy.torch import (  # noqa: E402
    LinearCrossEntropyLoss,
    _driver,
    _reference,
    linear_cross_entropy,
)

F64 = torch.float64
REDUCTIONS = ["mean", "sum", "none"]
OPTIONS = [
    {},
    {"label_smoothing": 0.15},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0, "ignore_index": 5},
]


def make(batch, dim, vocab, *, seed=0, dtype=F64, bias=False, ignore=0.2, ignore_index=-100):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*batch, dim, generator=gen, dtype=F64)
    weight = torch.randn(vocab, dim, generator=gen, dtype=F64) / math.sqrt(dim) * 3
    b = torch.randn(vocab, generator=gen, dtype=F64) if bias else None
    target = torch.randint(0, vocab, batch, generator=gen)
    target[torch.rand(batch, generator=gen) < ignore] = ignore_index
    cast = [t if t is None else t.to(dtype).requires_grad_() for t in (hidden, weight, b)]
    return (*cast, target)


def reference(hidden, projection, target, *, bias=None, **options):
    """The oracle: the plain-PyTorch loss on materialised float64 logits."""
    logits = hidden.double() @ projection.double().T
    if bias is not None:
        logits = logits + bias.double()
    return _reference.cross_entropy(logits, target, **options)


def grads(loss, tensors, upstream=None):
    tensors = [t for t in tensors if t is not None]
    return torch.autograd.grad(loss, tensors, upstream)


def assert_matches_reference(ours, ref, tensors, reduction):
    """Loss and gradients (a random upstream gradient for 'none') equal the reference's."""
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    upstream = torch.randn_like(ref) if reduction == "none" else None
    for got, want in zip(
        grads(ours, tensors, upstream), grads(ref, tensors, upstream), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def check_against_reference(batch, dim, vocab, reduction, options, *, bias, chunk, seed=0):
    ignore_index = options.get("ignore_index", -100)
    h, w, b, y = make(batch, dim, vocab, seed=seed, bias=bias, ignore_index=ignore_index)
    ours = linear_cross_entropy(h, w, y, bias=b, reduction=reduction, chunk_size=chunk, **options)
    ref = reference(h, w, y, bias=b, reduction=reduction, **options)
    assert_matches_reference(ours, ref, (h, w, b), reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", OPTIONS)
def test_every_option_and_reduction(reduction, options):
    check_against_reference((3, 8), 17, 29, reduction, options, bias=True, chunk=5)


@pytest.mark.parametrize(
    "batch, dim, vocab, chunk",
    [((3,), 8, 17, None), ((3, 8), 17, 5, 4), ((423,), 32, 1001, 64), ((2, 3, 5), 6, 7, 7)],
)
@pytest.mark.parametrize("bias", [False, True])
def test_odd_shapes(batch, dim, vocab, chunk, bias):
    check_against_reference(batch, dim, vocab, "mean", {"z_loss": 1e-4}, bias=bias, chunk=chunk)


def test_matches_f_cross_entropy_and_pytorch_fused():
    # Independent source: PyTorch's own unfused and fused losses, in float64.
    h, w, b, y = make((50,), 12, 40, bias=True)
    ours = linear_cross_entropy(h, w, y, bias=b, label_smoothing=0.1, chunk_size=16)
    theirs = F.cross_entropy(h @ w.T + b, y, label_smoothing=0.1)
    fused = F.linear_cross_entropy(h, w, y, linear_bias=b, label_smoothing=0.1)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours, fused, rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("chunk", [4, 64])
def test_class_weights_every_option_and_reduction(reduction, options, chunk):
    ignore_index = options.get("ignore_index", -100)
    h, w, b, y = make((3, 8), 17, 29, seed=2, bias=True, ignore_index=ignore_index)
    cw = torch.rand(29, generator=torch.Generator().manual_seed(5), dtype=F64) * 2
    cw[3] = 0.0  # a class that counts for nothing
    ours = linear_cross_entropy(
        h, w, y, bias=b, class_weight=cw, reduction=reduction, chunk_size=chunk, **options
    )
    ref = reference(h, w, y, bias=b, weight=cw, reduction=reduction, **options)
    assert_matches_reference(ours, ref, (h, w, b), reduction)


def test_class_weights_match_pytorch():
    # Independent source: PyTorch's unfused and fused losses with the same class weights
    # (a fractional weight sum, so 'mean' must divide by it, not by the token count).
    h, w, b, y = make((50,), 12, 40, bias=True, seed=4)
    cw = torch.rand(40, generator=torch.Generator().manual_seed(1), dtype=F64) / 10
    for reduction in REDUCTIONS:
        ours = linear_cross_entropy(
            h,
            w,
            y,
            bias=b,
            class_weight=cw,
            label_smoothing=0.1,
            reduction=reduction,
            chunk_size=16,
        )
        theirs = F.cross_entropy(
            h @ w.T + b, y, weight=cw, label_smoothing=0.1, reduction=reduction
        )
        fused = F.linear_cross_entropy(
            h, w, y, linear_bias=b, weight=cw, label_smoothing=0.1, reduction=reduction
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(ours, fused, rtol=1e-12, atol=1e-15)
        upstream = torch.rand_like(theirs)
        for got, want in zip(
            grads(ours, (h, w, b), upstream), grads(theirs, (h, w, b), upstream), strict=True
        ):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_class_weights_gradcheck_and_all_zero_weights():
    h, w, b, y = make((5,), 3, 7, bias=True)
    cw = torch.tensor([0.5, 1.0, 2.0, 0.0, 1.5, 0.25, 1.0], dtype=F64)

    def fn(h, w, b):
        return linear_cross_entropy(
            h,
            w,
            y,
            bias=b,
            class_weight=cw,
            chunk_size=2,
            label_smoothing=0.1,
            z_loss=0.05,
            softcap=2.0,
        )

    assert torch.autograd.gradcheck(fn, (h, w, b))
    # Every counted token of a zero-weight class: sum(omega) = 0 gives 0, not NaN.
    loss = linear_cross_entropy(h, w, y, bias=b, class_weight=torch.zeros(7, dtype=F64))
    assert loss.item() == 0.0
    for g in grads(loss, (h, w, b)):
        assert torch.equal(g, torch.zeros_like(g))


def soft_target(shape, vocab, seed=0):
    """Teacher probabilities, with some exact zeros (0 log 0 = 0 must hold)."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(*shape, vocab, generator=gen, dtype=F64) * 2, dim=-1)
    p[..., 1] = 0.0
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_probability_targets_every_option_and_reduction(reduction, options, weighted):
    options = {k: v for k, v in options.items() if k != "ignore_index"}  # labels only
    h, w, b, _ = make((3, 8), 17, 29, seed=6, bias=True)
    t = soft_target((3, 8), 29, seed=1)
    cw = torch.rand(29, generator=torch.Generator().manual_seed(2), dtype=F64) if weighted else None
    ours = linear_cross_entropy(
        h, w, t, bias=b, class_weight=cw, reduction=reduction, chunk_size=5, **options
    )
    ref = reference(h, w, t, bias=b, weight=cw, reduction=reduction, **options)
    assert_matches_reference(ours, ref, (h, w, b), reduction)


def test_probability_targets_match_pytorch_and_gradcheck():
    # Independent source: F.cross_entropy and F.linear_cross_entropy with probability
    # targets (weights and smoothing too), in float64.
    h, w, b, _ = make((40,), 12, 30, bias=True, seed=8)
    t = soft_target((40,), 30, seed=3)
    cw = torch.rand(30, generator=torch.Generator().manual_seed(4), dtype=F64)
    for reduction in REDUCTIONS:
        ours = linear_cross_entropy(
            h,
            w,
            t,
            bias=b,
            class_weight=cw,
            label_smoothing=0.2,
            reduction=reduction,
            chunk_size=16,
        )
        theirs = F.cross_entropy(
            h @ w.T + b, t, weight=cw, label_smoothing=0.2, reduction=reduction
        )
        fused = F.linear_cross_entropy(
            h, w, t, linear_bias=b, weight=cw, label_smoothing=0.2, reduction=reduction
        )
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(ours, fused, rtol=1e-12, atol=1e-15)
    h, w, b, _ = make((5,), 3, 7, bias=True)
    t = soft_target((5,), 7)

    def fn(h, w, b):
        return linear_cross_entropy(
            h, w, t, bias=b, chunk_size=2, label_smoothing=0.1, z_loss=0.05, softcap=2.0
        )

    assert torch.autograd.gradcheck(fn, (h, w, b))


def test_probability_targets_in_half_precision_and_one_hot_equals_labels():
    h64, w64, _, y = make((200,), 32, 300, seed=9, ignore=0.0)
    one_hot = F.one_hot(y, 300).double()
    torch.testing.assert_close(
        linear_cross_entropy(h64, w64, one_hot, chunk_size=64),
        linear_cross_entropy(h64, w64, y, chunk_size=64),
        rtol=1e-12,
        atol=0,
    )
    t64 = soft_target((200,), 300, seed=5)
    ref = reference(h64, w64, t64)
    ref_grads = grads(ref, (h64, w64))
    h, w = (x.detach().to(torch.bfloat16).requires_grad_() for x in (h64, w64))
    ours = linear_cross_entropy(h, w, t64.to(torch.bfloat16), chunk_size=64)
    theirs = F.cross_entropy(h @ w.T, t64.to(torch.bfloat16))
    assert ours.dtype == torch.float32
    assert abs(ours.double() - ref) <= abs(theirs.double() - ref) + 1e-3
    for got, pt, want in zip(grads(ours, (h, w)), grads(theirs, (h, w)), ref_grads, strict=True):
        assert got.dtype == torch.bfloat16
        err = ((got.double() - want).norm() / want.norm()).item()
        err_pt = ((pt.double() - want).norm() / want.norm()).item()
        assert err <= err_pt + 2e-3, (err, err_pt)


def test_hand_value():
    # Hand derivation: logits (2, 0, 0) for the counted row give log(e^2 + 2) - 2.
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    got = linear_cross_entropy(h, w, torch.tensor([0, -100]))
    assert got.item() == pytest.approx(math.log(math.e**2 + 2) - 2, rel=1e-6)


def test_three_d_hidden_none_reduction_with_random_upstream_grad():
    h, w, b, y = make((4, 6), 10, 33, bias=True, seed=3)
    ours = linear_cross_entropy(h, w, y, bias=b, reduction="none", chunk_size=7)
    assert ours.shape == (4, 6)
    ref = reference(h, w, y, bias=b, reduction="none")
    upstream = torch.randn(4, 6, dtype=F64)
    upstream[0, 0] = float("nan") if y[0, 0] == -100 else upstream[0, 0]
    for got, want in zip(
        grads(ours, (h, w, b), upstream), grads(ref, (h, w, b), upstream), strict=True
    ):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_none_then_weighted_sum_uses_each_token_gradient():
    # The known Liger bug: per-token upstream gradients must not be averaged away.
    h, w, _, y = make((20,), 8, 15, ignore=0.0)
    scale = torch.linspace(0, 3, 20, dtype=F64)
    ours = (linear_cross_entropy(h, w, y, reduction="none", chunk_size=6) * scale).sum()
    ref = (reference(h, w, y, reduction="none") * scale).sum()
    for got, want in zip(grads(ours, (h, w)), grads(ref, (h, w)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(reduction):
    h, w, b, y = make((5,), 3, 7, bias=True)
    options = {"label_smoothing": 0.1, "z_loss": 0.05, "softcap": 2.0, "reduction": reduction}

    def fn(h, w, b):
        return linear_cross_entropy(h, w, y, bias=b, chunk_size=2, **options)

    assert torch.autograd.gradcheck(fn, (h, w, b))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunk_size_independence_and_determinism(reduction):
    h, w, b, y = make((97,), 24, 301, dtype=torch.float32, bias=True)
    results = []
    for chunk in (1, 16, 50, 97, None, 1000):
        loss = linear_cross_entropy(h, w, y, bias=b, chunk_size=chunk, reduction=reduction)
        upstream = torch.ones_like(loss)
        results.append((loss, *grads(loss, (h, w, b), upstream)))
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)
    again = linear_cross_entropy(h, w, y, bias=b, chunk_size=16, reduction=reduction)
    regrads = grads(again, (h, w, b), torch.ones_like(again))
    for got, want in zip((again, *regrads), results[1], strict=True):
        assert torch.equal(got, want)


def test_default_chunk_size_follows_budget():
    # Hand arithmetic: max(64 MiB / (V * bytes per logit), min(D / 2, 512 MiB / ...)),
    # rounded down to a multiple of 16.
    size = _driver.default_chunk_size
    assert _driver.CHUNK_BUDGET_BYTES == 64 * 2**20
    assert size(10**6, 32768, 512, torch.float32, False) == 512  # 64 MiB rule
    assert size(10**6, 128256, 1024, torch.float32, False) == 512  # D / 2 rule
    assert size(10**6, 32768, 2048, torch.float32, False) == 1024  # D / 2 rule
    assert size(10**6, 128256, 64, torch.float32, False) == 128  # 64 MiB rule
    assert size(10**6, 32768, 64, torch.float32, True) == 256  # two blocks with softcap
    # Probability targets: one more block (64 MiB / (3 * 4 * 32768) = 170.7 -> 160).
    assert size(10**6, 32768, 64, torch.float32, True, soft=True) == 160
    assert size(10**6, 32768, 64, torch.bfloat16, False) == 336  # 4 + 2 bytes per logit
    assert size(10**6, 32768, 64, torch.float64, False) == 256
    assert size(10**6, 128256, 16384, torch.float32, False) == 1040  # 512 MiB cap
    assert size(100, 32768, 512, torch.float32, False) == 100
    assert size(10**6, 10**9, 8, torch.float32, False) == 16


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_ignored_batch(reduction):
    h, w, b, _ = make((6,), 4, 9, bias=True)
    y = torch.full((6,), -100)
    loss = linear_cross_entropy(h, w, y, bias=b, reduction=reduction, z_loss=0.1)
    assert torch.equal(loss, torch.zeros_like(loss))
    for g in grads(loss, (h, w, b), torch.ones_like(loss)):
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_no_worse_than_pytorch(dtype):
    h64, w64, b64, y = make((300,), 64, 500, bias=True, seed=7)
    ref = reference(h64, w64, y, bias=b64)
    ref_grads = grads(ref, (h64, w64, b64))
    h, w, b = (t.detach().to(dtype).requires_grad_() for t in (h64, w64, b64))
    ours = linear_cross_entropy(h, w, y, bias=b, chunk_size=64)
    theirs = F.cross_entropy(h @ w.T + b, y)
    assert ours.dtype == torch.float32
    assert abs(ours.double() - ref) <= abs(theirs.double() - ref) + 1e-4
    for got, pt, want in zip(
        grads(ours, (h, w, b)), grads(theirs, (h, w, b)), ref_grads, strict=True
    ):
        assert got.dtype == dtype
        err = ((got.double() - want).norm() / want.norm()).item()
        err_pt = ((pt.double() - want).norm() / want.norm()).item()
        assert err <= err_pt + 2e-3, (err, err_pt)


def test_no_grad_does_only_forward_work():
    h, w, _, y = make((10,), 4, 6)
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, y)
    assert not loss.requires_grad
    detached = linear_cross_entropy(h.detach(), w.detach(), y)
    assert not detached.requires_grad
    torch.testing.assert_close(loss, detached)


def test_only_requested_gradients():
    h, w, b, y = make((10,), 4, 6, bias=True)
    loss = linear_cross_entropy(h.detach(), w, y, bias=b.detach())
    (gw,) = torch.autograd.grad(loss, w)
    torch.testing.assert_close(gw, grads(reference(h, w, y, bias=b), (w,))[0])


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_retain_graph_second_backward_is_right(reduction):
    h, w, b, y = make((9,), 5, 11, bias=True)
    loss = linear_cross_entropy(h, w, y, bias=b, chunk_size=4, reduction=reduction).sum()
    first = grads_retained(loss, (h, w, b))
    second = grads_retained(loss, (h, w, b))
    ref = grads(reference(h, w, y, bias=b, reduction=reduction).sum(), (h, w, b))
    for a, c, r in zip(first, second, ref, strict=True):
        assert torch.equal(a, c)
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12)
    # .backward() twice accumulates twice the gradient, as autograd would.
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(w.grad, 2 * ref[1], rtol=1e-9, atol=1e-12)


def grads_retained(loss, tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True)


def test_double_backward_fails_loudly():
    h, w, _, y = make((4,), 3, 5)
    loss = linear_cross_entropy(h, w, y)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(loss, h, create_graph=True)


def test_torch_compile_matches_eager():
    h, w, b, y = make((2, 6), 8, 19, dtype=torch.float32, bias=True)

    def step(h, w, b, y):
        return linear_cross_entropy(h, w, y, bias=b, z_loss=1e-3, chunk_size=5) * 2.0

    eager = step(h, w, b, y)
    compiled = torch.compile(step, backend="aot_eager")(h, w, b, y)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(grads(compiled, (h, w, b)), grads(eager, (h, w, b)), strict=True):
        torch.testing.assert_close(got, want)


def test_module():
    h, w, b, y = make((3, 4), 5, 9, bias=True)
    module = LinearCrossEntropyLoss(label_smoothing=0.2, chunk_size=5)
    torch.testing.assert_close(
        module(h, w, y, b), linear_cross_entropy(h, w, y, bias=b, label_smoothing=0.2)
    )
    assert "chunk_size=5" in repr(module)
    cw = torch.linspace(0.5, 1.5, 9, dtype=F64)
    weighted = LinearCrossEntropyLoss(class_weight=cw)
    assert "class_weight" in dict(weighted.named_buffers())
    torch.testing.assert_close(
        weighted(h, w, y, b), linear_cross_entropy(h, w, y, bias=b, class_weight=cw)
    )


def test_out_of_range_label_gives_nan_without_validate():
    h, w, _, _ = make((2,), 3, 4)
    loss = linear_cross_entropy(h, w, torch.tensor([1, 4]), reduction="none", validate=False)
    assert loss[1].isnan() and not loss[0].isnan()
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        linear_cross_entropy(h, w, torch.tensor([1, 4]))


def test_errors_name_the_argument():
    h, w, b, y = make((3,), 4, 6, dtype=torch.float32, bias=True)
    cases = [
        (lambda: linear_cross_entropy(h, w[:, :3], y), ValueError, "weight must have shape"),
        (lambda: linear_cross_entropy(h, w.double(), y), TypeError, "weight must have hidden"),
        (lambda: linear_cross_entropy(h, w, y, bias=b[:4]), ValueError, "bias must have shape"),
        (lambda: linear_cross_entropy(h, w, y, bias=b.double()), TypeError, "bias must have"),
        (lambda: linear_cross_entropy(h, w, y[:2]), ValueError, "target .class indices"),
        (
            lambda: linear_cross_entropy(h, w, y.float()),
            ValueError,
            r"target \(probabilities\) must have the logits' shape \(3, 6\), got \(3,\)",
        ),
        (
            lambda: linear_cross_entropy(h, w, torch.full((3, 6), 0.2), validate=True),
            ValueError,
            "target does not sum to 1",
        ),
        (
            lambda: linear_cross_entropy(h, w, torch.full((3, 6), 1 / 6, requires_grad=True)),
            ValueError,
            r"target \(probabilities\) must not require grad",
        ),
        (
            lambda: linear_cross_entropy(h, w, torch.full((3, 6), 1 / 6), impl="triton"),
            ValueError,
            "impl='triton' has no probability targets",
        ),
        (lambda: linear_cross_entropy(h, w, y.bool()), TypeError, "target must hold integer"),
        (lambda: linear_cross_entropy(h, w, y, chunk_size=0), ValueError, "chunk_size must"),
        (
            lambda: linear_cross_entropy(h, w, y, class_weight=torch.ones(5)),
            ValueError,
            r"class_weight must have shape \(6,\), one per class, got \(5,\)",
        ),
        (
            lambda: linear_cross_entropy(h, w, y, class_weight=-torch.ones(6), validate=True),
            ValueError,
            "class_weight must be finite and non-negative",
        ),
        (
            lambda: linear_cross_entropy(h, w, y, class_weight=torch.ones(6, dtype=torch.long)),
            TypeError,
            "class_weight must have a floating",
        ),
        (
            lambda: linear_cross_entropy(h, w, y, class_weight=torch.ones(6, requires_grad=True)),
            ValueError,
            "class_weight must not require grad",
        ),
        (
            lambda: linear_cross_entropy(h, w, y, class_weight=torch.ones(6), impl="triton"),
            ValueError,
            "impl='triton' has no class weights",
        ),
        (lambda: linear_cross_entropy(h, w, y, reduction="avg"), ValueError, "reduction must"),
        (lambda: linear_cross_entropy(h, w, y, z_loss=float("inf")), ValueError, "z_loss must"),
        (lambda: linear_cross_entropy(h, w, y, softcap=-1), ValueError, "softcap must"),
        (
            lambda: linear_cross_entropy(h, w, y, label_smoothing=-0.1),
            ValueError,
            "label_smoothing must",
        ),
        (lambda: linear_cross_entropy(h.long(), w, y), TypeError, "hidden must have a floating"),
        (lambda: linear_cross_entropy(h, w[:0], y), ValueError, "weight must have at least one"),
        (
            lambda: linear_cross_entropy(h, w, torch.tensor([0, 6, -100]), validate=True),
            ValueError,
            r"must lie in \[0, 6\) or equal ignore_index=-100: found 6 at index \(1,\)",
        ),
        (lambda: LinearCrossEntropyLoss(chunk_size=1.5), ValueError, "chunk_size must"),
        (lambda: linear_cross_entropy(h, w, y.tolist()), TypeError, "target must be a torch"),
        (lambda: linear_cross_entropy(h, w, y, bias=y), TypeError, "bias must have a floating"),
        (lambda: linear_cross_entropy(h, "w", y), TypeError, "weight must be a torch.Tensor"),
        (lambda: linear_cross_entropy(h, w, y, ignore_index=None), TypeError, "ignore_index"),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()

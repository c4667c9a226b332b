"""``temperature`` on every loss against an independent float64 oracle.

The oracle (``tests/_torch_oracles.py``) is written from ``F.log_softmax(softcap(x) / T)``
alone (not from ``crossentropy.torch._reference``): ``z = c tanh(x / c) / T``, the
smoothed target ``t' = (1 - eps) t + eps / C``, per token ``H = -sum_c w_c t'_c log q_c``
(0 log 0 = 0), the divergence ``D = sum_c w_c t'_c log t'_c - sum_c w_c t'_c log q_c``,
the z-loss ``lambda (logsumexp z)^2`` on every counted token (not class-weighted), and
``mean`` = ``sum H / sum omega + sum zloss / n`` (``omega = w_y``, 0 when ignored, 1 for a
probability row; ``n`` the counted tokens).  Its gradients come from autograd.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
from _torch_oracles import entropy_oracle, linear_oracle, oracle  # noqa: E402

from crossentropy.torch import (  # noqa: E402
    CrossEntropyLoss,
    KLLoss,
    LinearCrossEntropyLoss,
    cross_entropy,
    entropy_loss,
    kl_loss,
    linear_cross_entropy,
)

F64 = torch.float64
REDUCTIONS = ["none", "sum", "mean"]
TEMPERATURES = [0.5, 1.7, 3.0]
OPTION_SETS = {
    "plain": {},
    "smooth": {"label_smoothing": 0.2},
    "zloss": {"z_loss": 0.05},
    "softcap": {"softcap": 4.0},
    "ignore3": {"ignore_index": 3},
    "all": {"label_smoothing": 0.1, "z_loss": 0.03, "softcap": 3.0},
}
KINDS = ["labels", "labels-weight", "soft", "soft-weight"]
RTOL, ATOL = 1e-10, 1e-12
# Every option set with every target kind, the temperatures taking turns; and the full
# option set with every kind at every temperature.
CASES = [
    (TEMPERATURES[i % len(TEMPERATURES)], name, kind)
    for i, (name, kind) in enumerate((n, k) for n in OPTION_SETS if n != "all" for k in KINDS)
] + [(t, "all", kind) for t in TEMPERATURES for kind in KINDS]


# ---------------------------------------------------------------- data and comparison


def make(shape, classes, kind, *, seed=0, ignore_index=-100):
    """Random float64 logits (3 sigma), a target of ``kind`` and maybe class weights."""
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*shape, classes, generator=gen, dtype=F64)
    weight = None
    if kind.endswith("weight"):
        weight = torch.rand(classes, generator=gen, dtype=F64) + 0.2
    if kind.startswith("soft"):
        target = torch.softmax(2 * torch.randn(*shape, classes, generator=gen, dtype=F64), -1)
        target[..., 1] = 0.0  # an exact zero: 0 log 0 = 0
        target = target / target.sum(-1, keepdim=True)
    else:
        target = torch.randint(0, classes, shape, generator=gen)
        target[torch.rand(shape, generator=gen) < 0.3] = ignore_index
    return logits, target, weight


def upstream_for(out, seed):
    """A random upstream gradient of ``out``'s shape (per token for 'none')."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.rand(out.shape, generator=gen, dtype=F64) + 0.5


def assert_same(ours, ref, inputs, seed=0):
    """Loss, and gradients under one random upstream gradient, equal the oracle's."""
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)
    upstream = upstream_for(ref, seed)
    got = torch.autograd.grad(ours, inputs, upstream.to(ours.dtype))
    want = torch.autograd.grad(ref, inputs, upstream)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=RTOL, atol=ATOL)


def dense_options(name, kind):
    options = dict(OPTION_SETS[name])
    if kind.startswith("soft"):
        options.pop("ignore_index", None)  # labels only
    return options


# ---------------------------------------------------------------- dense losses


@pytest.mark.parametrize(("temperature", "name", "kind"), CASES)
@pytest.mark.parametrize("divergence", [False, True], ids=["cross_entropy", "kl_loss"])
def test_dense_losses_match_oracle(temperature, name, kind, divergence):
    options = dense_options(name, kind)
    seed = len(name) + 7 * KINDS.index(kind)
    logits, target, weight = make(
        (2, 5), 11, kind, seed=seed, ignore_index=options.get("ignore_index", -100)
    )
    fn = kl_loss if divergence else cross_entropy
    for reduction in REDUCTIONS:
        x = logits.clone().requires_grad_()
        ours = fn(x, target, weight=weight, reduction=reduction, temperature=temperature, **options)
        ref = oracle(
            x,
            target,
            weight=weight,
            reduction=reduction,
            temperature=temperature,
            divergence=divergence,
            **options,
        )
        assert_same(ours, ref, (x,), seed)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("kind", ["labels-weight", "soft-weight"])
@pytest.mark.parametrize("module", [CrossEntropyLoss, KLLoss])
def test_dense_modules_match_oracle(temperature, kind, module):
    options = OPTION_SETS["all"]
    logits, target, weight = make((7,), 9, kind, seed=3)
    for reduction in REDUCTIONS:
        loss = module(weight=weight, reduction=reduction, temperature=temperature, **options)
        x = logits.clone().requires_grad_()
        ref = oracle(
            x,
            target,
            weight=weight,
            reduction=reduction,
            temperature=temperature,
            divergence=module is KLLoss,
            **options,
        )
        assert_same(loss(x, target), ref, (x,))


def test_temperature_divides_after_the_softcap():
    # Hand derivation: logits (a, 0) with softcap c and temperature T give
    # z = (c tanh(a / c) / T, 0), so the loss at label 1 is log(1 + e^z0).
    a, cap, temp = 5.0, 2.0, 0.5
    z0 = cap * math.tanh(a / cap) / temp
    loss = cross_entropy(
        torch.tensor([[a, 0.0]], dtype=F64), torch.tensor([1]), softcap=cap, temperature=temp
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(z0)), rel=1e-13)
    # Temperature first, then the softcap, would be another number.
    other = math.log1p(math.exp(cap * math.tanh(a / temp / cap)))
    assert abs(loss.item() - other) > 1e-3


def test_z_loss_on_the_tempered_logsumexp():
    # Hand derivation: logits (0, 0, 0, 0) at any T give lse = log 4 and loss log 4.
    loss = cross_entropy(torch.zeros(1, 4, dtype=F64), torch.tensor([2]), z_loss=0.5, temperature=3)
    assert loss.item() == pytest.approx(math.log(4) + 0.5 * math.log(4) ** 2, rel=1e-13)
    # And logits (2, 0) at T = 2 are logits (1, 0) at T = 1.
    hot = cross_entropy(
        torch.tensor([[2.0, 0.0]], dtype=F64), torch.tensor([0]), z_loss=0.1, temperature=2.0
    )
    lse = math.log(math.e + 1)
    assert hot.item() == pytest.approx(lse - 1 + 0.1 * lse**2, rel=1e-13)


@pytest.mark.parametrize("temperature", [0.5, 3.0])
@pytest.mark.parametrize("divergence", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_target_at_minus_inf_logit(temperature, divergence, reduction):
    # 0 log 0 = 0: a zero probability at a -inf logit adds nothing, nor any NaN gradient.
    logits, target, _ = make((4,), 6, "soft", seed=2)
    logits[:, 1] = -math.inf  # target[:, 1] is exactly 0
    fn = kl_loss if divergence else cross_entropy
    x = logits.clone().requires_grad_()
    ours = fn(x, target, reduction=reduction, z_loss=0.01, temperature=temperature)
    ref = oracle(
        x, target, reduction=reduction, z_loss=0.01, temperature=temperature, divergence=divergence
    )
    assert torch.isfinite(ours).all()
    assert_same(ours, ref, (x,))


# ---------------------------------------------------------------- entropy_loss


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("masked", [False, True])
def test_entropy_loss_matches_oracle(temperature, softcap, masked):
    logits, _, _ = make((3, 4), 8, "labels", seed=5)
    mask = None
    if masked:
        mask = torch.rand((3, 4), generator=torch.Generator().manual_seed(9)) < 0.6
    for reduction in REDUCTIONS:
        x = logits.clone().requires_grad_()
        ours = entropy_loss(
            x, mask=mask, reduction=reduction, softcap=softcap, temperature=temperature
        )
        ref = entropy_oracle(
            x, mask=mask, reduction=reduction, softcap=softcap, temperature=temperature
        )
        assert_same(ours, ref, (x,))


def test_entropy_grows_with_temperature():
    # Hand derivation: T -> large flattens softmax towards uniform (entropy log C).
    logits, _, _ = make((5,), 6, "labels", seed=1)
    values = [entropy_loss(logits, temperature=t).item() for t in (0.5, 1.0, 3.0, 1e4)]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(math.log(6), rel=1e-6)


# ---------------------------------------------------------------- linear_cross_entropy


def make_linear(batch, dim, vocab, *, seed=0, bias=True, ignore_index=-100):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*batch, dim, generator=gen, dtype=F64)
    weight = torch.randn(vocab, dim, generator=gen, dtype=F64) * (3 / math.sqrt(dim))
    b = torch.randn(vocab, generator=gen, dtype=F64) if bias else None
    labels = torch.randint(0, vocab, batch, generator=gen)
    labels[torch.rand(batch, generator=gen) < 0.3] = ignore_index
    return hidden, weight, b, labels


def leaves(*tensors):
    return [None if t is None else t.clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize(("temperature", "name", "kind"), CASES)
def test_linear_cross_entropy_matches_oracle(temperature, name, kind):
    options = dense_options(name, kind)
    seed = len(name) + 3 * KINDS.index(kind)
    h0, w0, b0, labels = make_linear(
        (2, 5), 6, 13, seed=seed, ignore_index=options.get("ignore_index", -100)
    )
    _, soft, cw = make((2, 5), 13, kind, seed=seed)
    target = soft if kind.startswith("soft") else labels
    for reduction in REDUCTIONS:
        h, w, b = leaves(h0, w0, b0)
        ours = linear_cross_entropy(
            h,
            w,
            target,
            bias=b,
            class_weight=cw,
            reduction=reduction,
            temperature=temperature,
            chunk_size=3,
            **options,
        )
        ref = linear_oracle(
            h,
            w,
            target,
            bias=b,
            class_weight=cw,
            reduction=reduction,
            temperature=temperature,
            **options,
        )
        assert_same(ours, ref, (h, w, b), seed)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_module_matches_oracle(temperature, bias):
    options = OPTION_SETS["all"]
    h0, w0, b0, y = make_linear((9,), 4, 10, seed=4, bias=bias)
    cw = torch.rand(10, generator=torch.Generator().manual_seed(2), dtype=F64) + 0.1
    for reduction in REDUCTIONS:
        module = LinearCrossEntropyLoss(
            class_weight=cw,
            reduction=reduction,
            temperature=temperature,
            chunk_size=4,
            **options,
        )
        h, w, b = leaves(h0, w0, b0)
        ref = linear_oracle(
            h,
            w,
            y,
            bias=b,
            class_weight=cw,
            reduction=reduction,
            temperature=temperature,
            **options,
        )
        inputs = (h, w) if b is None else (h, w, b)
        assert_same(module(h, w, y, b), ref, inputs)


# ---------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("temperature", [0.5, 1.7])
@pytest.mark.parametrize("kind", ["labels-weight", "soft"])
def test_gradcheck_cross_entropy(temperature, kind):
    logits, target, weight = make((4,), 5, kind, seed=11)
    x = logits.requires_grad_()

    def fn(x):
        return cross_entropy(
            x,
            target,
            weight=weight,
            temperature=temperature,
            label_smoothing=0.1,
            z_loss=0.05,
            softcap=3.0,
        )

    assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("temperature", [0.5, 3.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_linear_cross_entropy(temperature, reduction):
    h, w, b, y = make_linear((5,), 3, 7, seed=12)
    h, w, b = leaves(h, w, b)

    def fn(h, w, b):
        return linear_cross_entropy(
            h,
            w,
            y,
            bias=b,
            reduction=reduction,
            temperature=temperature,
            chunk_size=2,
            label_smoothing=0.1,
            z_loss=0.05,
            softcap=2.0,
        )

    assert torch.autograd.gradcheck(fn, (h, w, b))


# ---------------------------------------------------------------- T = 1 is the default


def _all_losses(temperature=None):
    """Every loss on fixed data, with ``temperature`` passed (or left out); loss and grads."""
    kw = {} if temperature is None else {"temperature": temperature}
    options = {"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 5.0}
    logits, labels, weight = make((6,), 7, "labels-weight", seed=21)
    _, soft, _ = make((6,), 7, "soft", seed=22)
    h0, w0, b0, y = make_linear((6,), 4, 7, seed=23)
    results = []
    for fn in (cross_entropy, kl_loss):
        for target in (labels, soft):
            x = logits.clone().requires_grad_()
            out = fn(x, target, weight=weight, **options, **kw)
            results.append((out, *torch.autograd.grad(out, x)))
    for module in (CrossEntropyLoss, KLLoss):
        x = logits.clone().requires_grad_()
        out = module(weight=weight, **options, **kw)(x, labels)
        results.append((out, *torch.autograd.grad(out, x)))
    x = logits.clone().requires_grad_()
    out = entropy_loss(x, softcap=5.0, **kw)
    results.append((out, *torch.autograd.grad(out, x)))
    for call in (
        lambda h, w, b: linear_cross_entropy(h, w, y, bias=b, chunk_size=4, **options, **kw),
        lambda h, w, b: LinearCrossEntropyLoss(chunk_size=4, **options, **kw)(h, w, y, b),
    ):
        h, w, b = leaves(h0, w0, b0)
        out = call(h, w, b)
        results.append((out, *torch.autograd.grad(out, (h, w, b))))
    return results


@pytest.mark.parametrize("one", [1.0, 1])
def test_temperature_one_is_the_default_bitwise(one):
    for got, want in zip(_all_losses(one), _all_losses(), strict=True):
        for g, r in zip(got, want, strict=True):
            assert torch.equal(g, r)


# ---------------------------------------------------------------- errors and repr


BAD_TEMPERATURES = [
    (0, ValueError),
    (0.0, ValueError),
    (-1, ValueError),
    (-0.5, ValueError),
    (math.inf, ValueError),
    (math.nan, ValueError),
    (1e-40, ValueError),  # below float32's smallest normal number: 0 there
    (1e39, ValueError),  # beyond float32's range: inf there
    (True, TypeError),
    ("2", TypeError),
    (None, TypeError),
]


def _calls():
    logits, target, _ = make((3,), 4, "labels")
    h, w, _, y = make_linear((3,), 2, 4)
    return {
        "cross_entropy": lambda t: cross_entropy(logits, target, temperature=t),
        "kl_loss": lambda t: kl_loss(logits, target, temperature=t),
        "entropy_loss": lambda t: entropy_loss(logits, temperature=t),
        "linear_cross_entropy": lambda t: linear_cross_entropy(h, w, y, temperature=t),
        "CrossEntropyLoss": lambda t: CrossEntropyLoss(temperature=t),
        "KLLoss": lambda t: KLLoss(temperature=t),
        "LinearCrossEntropyLoss": lambda t: LinearCrossEntropyLoss(temperature=t),
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_bad_temperature_is_refused(name):
    call = _calls()[name]
    for value, error in BAD_TEMPERATURES:
        with pytest.raises(error, match="temperature"):
            call(value)


@pytest.mark.parametrize("module", [CrossEntropyLoss, KLLoss, LinearCrossEntropyLoss])
def test_repr_shows_temperature_when_not_one(module):
    assert "temperature=1.7" in repr(module(temperature=1.7))
    assert "temperature" not in repr(module())
    assert "temperature" not in repr(module(temperature=1.0))
    assert module(temperature=2).temperature == 2.0

"""cross_entropy, kl_loss and entropy_loss against F.cross_entropy, F.kl_div and hand values."""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import crossentropy as ce  # noqa: E402
from crossentropy.torch import (  # noqa: E402
    CrossEntropyLoss,
    KLLoss,
    cross_entropy,
    entropy_loss,
    kl_loss,
)

F64 = torch.float64
REDUCTIONS = ["mean", "sum", "none"]


def make(shape, classes, *, seed=0, dtype=F64, ignore=0.25, soft=False):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*shape, classes, generator=gen, dtype=F64)).to(dtype)
    if soft:
        target = torch.softmax(2 * torch.randn(*shape, classes, generator=gen, dtype=F64), -1)
        return logits, target.to(dtype)
    target = torch.randint(0, classes, shape, generator=gen)
    target[torch.rand(shape, generator=gen) < ignore] = -100
    return logits, target


def torch_layout(x):
    """Our (..., C) logits in F.cross_entropy's (N, C, d1, ...) layout."""
    return x if x.ndim <= 2 else x.movedim(-1, 1)


# ---------------------------------------------------------------- fixed values (by hand)


def test_uniform_logits_give_log_classes():
    # Hand derivation: softmax of equal logits is 1/C, so the loss is log C.
    assert cross_entropy(torch.zeros(3, 7), torch.tensor([0, 3, 6])).item() == pytest.approx(
        math.log(7), rel=1e-6
    )


def test_hand_value_with_ignored_row():
    # Hand derivation: row 0 has loss log(e^2 + 2) - 2; row 1 is ignored; mean over 1 row.
    loss = cross_entropy(torch.tensor([[2.0, 0.0, 0.0], [1.0, 5.0, 0.0]]), torch.tensor([0, -100]))
    assert loss.item() == pytest.approx(math.log(math.e**2 + 2) - 2, rel=1e-6)


def test_hand_value_z_loss_and_softcap():
    # Hand derivation: logits (0, 0) give lse = log 2; softcap leaves zeros at zero.
    loss = cross_entropy(torch.zeros(1, 2), torch.tensor([1]), z_loss=0.5, softcap=4.0)
    assert loss.item() == pytest.approx(math.log(2) + 0.5 * math.log(2) ** 2, rel=1e-6)


# ---------------------------------------------------------------- F.cross_entropy overlap


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", [(3, 8), (5,), (2, 3, 4)])
def test_matches_f_cross_entropy(reduction, smoothing, weighted, soft, shape):
    classes = 17
    logits, target = make(shape, classes, seed=len(shape), soft=soft)
    weight = torch.rand(classes, dtype=F64) + 0.1 if weighted else None
    logits.requires_grad_()
    ours = cross_entropy(
        logits, target, weight=weight, reduction=reduction, label_smoothing=smoothing
    )
    theirs = F.cross_entropy(
        torch_layout(logits),
        target if not soft else torch_layout(target),
        weight=weight,
        reduction=reduction,
        label_smoothing=smoothing,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ours)
    (g_ours,) = torch.autograd.grad(ours, logits, upstream)
    (g_theirs,) = torch.autograd.grad(theirs, logits, upstream)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


def test_module_matches_functional():
    logits, target = make((4, 6), 11)
    weight = torch.rand(11, dtype=F64)
    module = CrossEntropyLoss(weight=weight, label_smoothing=0.1, z_loss=1e-3, softcap=7.0)
    expected = cross_entropy(
        logits, target, weight=weight, label_smoothing=0.1, z_loss=1e-3, softcap=7.0
    )
    torch.testing.assert_close(module(logits, target), expected)
    assert "label_smoothing=0.1" in repr(module)
    torch.testing.assert_close(KLLoss()(logits, target), kl_loss(logits, target))


# ---------------------------------------------------------------- z-loss and softcap


def test_z_loss_and_softcap_against_formula():
    # Independent composition: F.cross_entropy on capped logits plus the z-loss by hand.
    logits, target = make((30,), 13)
    cap, coef = 4.0, 0.01
    z = cap * torch.tanh(logits / cap)
    counted = target != -100
    lse = torch.logsumexp(z, -1)
    expected = (
        F.cross_entropy(z, target, reduction="sum") + coef * (lse.square() * counted).sum()
    ) / counted.sum()
    ours = cross_entropy(logits, target, z_loss=coef, softcap=cap)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("fn", [cross_entropy, kl_loss])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_does_not_carry_the_class_weight(fn, reduction):
    # Oracle (PaLM / Liger-Kernel z-loss): F.cross_entropy's weighted loss plus
    # z_loss * lse^2 for every counted token alike; 'mean' divides the z-loss part by the
    # number of counted tokens, the cross-entropy part by sum w_y.
    logits, target = make((9,), 4, ignore=0.3, seed=3)
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=F64)
    counted = target != -100
    zsq = torch.where(counted, 0.1 * torch.logsumexp(logits, -1).square(), 0.0)
    ce_part = F.cross_entropy(logits, target, weight=weight, reduction=reduction)
    if reduction == "none":
        expected = ce_part + zsq
    elif reduction == "sum":
        expected = ce_part + zsq.sum()
    else:
        expected = ce_part + zsq.sum() / counted.sum()
    ours = fn(logits, target, weight=weight, z_loss=0.1, reduction=reduction)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


def test_z_loss_counts_tokens_of_zero_class_weight():
    # Hand derivation: one token of class weight 0: the cross-entropy part is 0 / 0 = 0,
    # the z-loss part 0.5 * lse^2 / 1 with lse = log 2.
    loss = cross_entropy(
        torch.zeros(1, 2, dtype=F64),
        torch.tensor([0]),
        weight=torch.tensor([0.0, 1.0], dtype=F64),
        z_loss=0.5,
    )
    assert loss.item() == pytest.approx(0.5 * math.log(2) ** 2, rel=1e-12)


# ---------------------------------------------------------------- KL and the identity


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kl_matches_f_kl_div(reduction):
    logits, target = make((7,), 10, soft=True)
    ours = kl_loss(logits, target, reduction=reduction)
    pointwise = F.kl_div(F.log_softmax(logits, -1), target, reduction="none").sum(-1)
    expected = {"none": pointwise, "sum": pointwise.sum(), "mean": pointwise.mean()}[reduction]
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)
    assert reduction != "mean" or torch.allclose(
        ours, F.kl_div(F.log_softmax(logits, -1), target, reduction="batchmean")
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.2}, {"z_loss": 0.01, "softcap": 5.0}, {"weight": True}],
)
@pytest.mark.parametrize("soft", [False, True])
def test_kl_gradient_identical_to_cross_entropy(options, soft):
    logits, target = make((5, 3), 9, soft=soft)
    if options.get("weight"):
        options = {"weight": torch.rand(9, dtype=F64)}
    for dtype in (F64, torch.float32, torch.bfloat16):
        z = logits.to(dtype).requires_grad_()
        t = target.to(dtype) if soft else target
        opts = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in options.items()}
        (g_ce,) = torch.autograd.grad(cross_entropy(z, t, **opts), z)
        (g_kl,) = torch.autograd.grad(kl_loss(z, t, **opts), z)
        assert torch.equal(g_ce, g_kl), dtype


def test_identity_hard_labels_kl_equals_cross_entropy():
    logits, target = make((6,), 5)
    torch.testing.assert_close(kl_loss(logits, target), cross_entropy(logits, target))


def test_identity_with_label_smoothing_closed_form():
    # With smoothing, H - D is the entropy of the smoothed one-hot target, which
    # crossentropy.entropy computes independently from the explicit distribution.
    logits, target = make((6,), 5, ignore=0.0)
    eps = 0.3
    smoothed = (1 - eps) * F.one_hot(target, 5).to(F64) + eps / 5
    expected = ce.entropy(smoothed).mean()
    diff = cross_entropy(logits, target, label_smoothing=eps) - kl_loss(
        logits, target, label_smoothing=eps
    )
    torch.testing.assert_close(diff, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    classes=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    sharpness=st.floats(0.1, 20.0),
    zero_some=st.booleans(),
)
def test_identity_property(rows, classes, seed, sharpness, zero_some):
    """cross_entropy(z, t) - kl_loss(z, t) == entropy(t), entropy from the measures API."""
    gen = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(rows, classes, generator=gen, dtype=F64)
    target = torch.softmax(sharpness * torch.randn(rows, classes, generator=gen, dtype=F64), -1)
    if zero_some and classes > 1:
        target[:, 0] = 0.0
        target = target / target.sum(-1, keepdim=True)
    for reduction in REDUCTIONS:
        lhs = cross_entropy(logits, target, reduction=reduction) - kl_loss(
            logits, target, reduction=reduction
        )
        per_row = ce.entropy(target)
        rhs = {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]
        torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)
    assert (kl_loss(logits, target, reduction="none") > -1e-9).all()


# ---------------------------------------------------------------- entropy_loss


def test_entropy_loss_values():
    logits, _ = make((4, 2), 6)
    probs = torch.softmax(logits, -1)
    per_token = ce.entropy(probs)  # the measures API, computed from probabilities
    torch.testing.assert_close(entropy_loss(logits, reduction="none"), per_token)
    torch.testing.assert_close(entropy_loss(logits), per_token.mean())
    mask = torch.tensor([[True, False], [False, False], [True, True], [False, True]])
    torch.testing.assert_close(
        entropy_loss(logits, mask=mask), per_token[mask].mean(), rtol=1e-12, atol=0
    )
    # Hand derivation: uniform over 4 classes has entropy log 4; nothing counted gives 0.
    assert entropy_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4))
    assert entropy_loss(logits, mask=torch.zeros(4, 2, dtype=torch.bool)).item() == 0.0


def test_entropy_loss_softcap_and_gradcheck():
    logits, _ = make((3,), 5)
    capped = 2.0 * torch.tanh(logits / 2.0)
    torch.testing.assert_close(entropy_loss(logits, softcap=2.0), entropy_loss(capped))
    z = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: entropy_loss(x, reduction="none"), (z,))


# ---------------------------------------------------------------- edges


@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_gives_zero_loss_and_zero_gradient(weighted):
    logits = torch.randn(4, 7, dtype=F64, requires_grad=True)
    target = torch.full((4,), -100)
    weight = torch.rand(7, dtype=F64) if weighted else None
    for fn in (cross_entropy, kl_loss):
        loss = fn(logits, target, weight=weight, label_smoothing=0.1, z_loss=0.1)
        (grad,) = torch.autograd.grad(loss, logits)
        assert loss.item() == 0.0
        assert torch.equal(grad, torch.zeros_like(grad))
    assert F.cross_entropy(logits, target).isnan()  # what PyTorch does instead


def test_out_of_range_label_gives_nan_without_validate():
    loss = cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]), reduction="none", validate=False)
    assert loss[0].item() == pytest.approx(math.log(3))
    assert loss[1].isnan()
    # By default CPU tensors are checked (no host synchronisation to pay there).
    with pytest.raises(ValueError, match=r"target \(class indices\) must lie in \[0, 3\)"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32_no_worse_than_pytorch(dtype):
    logits, target = make((64,), 50)
    half = logits.to(dtype).requires_grad_()
    exact = logits.clone().requires_grad_()
    ref = F.cross_entropy(exact, target)
    (g_ref,) = torch.autograd.grad(ref, exact)
    ours = cross_entropy(half, target)
    theirs = F.cross_entropy(half, target)
    (g_ours,) = torch.autograd.grad(ours, half)
    (g_theirs,) = torch.autograd.grad(theirs, half)
    assert ours.dtype == torch.float32 and g_ours.dtype == dtype
    tol = 1e-6
    assert abs(ours.double() - ref) <= abs(theirs.double() - ref) + tol
    err_ours = (g_ours.double() - g_ref).norm() / g_ref.norm()
    err_theirs = (g_theirs.double() - g_ref).norm() / g_ref.norm()
    assert err_ours <= err_theirs + 1e-3


def test_float64_stays_float64():
    logits, target = make((3,), 4)
    assert cross_entropy(logits, target).dtype == F64
    assert cross_entropy(logits.float(), target).dtype == torch.float32


@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck_all_options(soft):
    logits, target = make((3, 2), 5, soft=soft)
    weight = torch.rand(5, dtype=F64) + 0.5
    z = logits.clone().requires_grad_()
    w = weight.clone().requires_grad_()

    def fn(z, w):
        return kl_loss(
            z, target, weight=w, label_smoothing=0.1, z_loss=0.01, softcap=6.0, reduction="none"
        )

    assert torch.autograd.gradcheck(fn, (z, w))
    assert torch.autograd.gradgradcheck(fn, (z, w))
    if soft:
        t = target.clone().requires_grad_()
        # gradcheck's perturbations leave the target unnormalised: skip the data check.
        assert torch.autograd.gradcheck(
            lambda t: kl_loss(logits, t, reduction="sum", validate=False), (t,)
        )


def test_torch_compile_matches_eager():
    logits, target = make((4, 3), 9, dtype=torch.float32)
    z = logits.clone().requires_grad_()
    options = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0}
    compiled = torch.compile(cross_entropy, backend="aot_eager", fullgraph=True)
    eager = cross_entropy(z, target, **options)
    got = compiled(z, target, **options)
    torch.testing.assert_close(got, eager)
    (g_eager,) = torch.autograd.grad(eager, z)
    (g_got,) = torch.autograd.grad(got, z)
    torch.testing.assert_close(g_got, g_eager)


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument():
    z = torch.zeros(2, 3)
    y = torch.tensor([0, 1])
    cases = [
        (lambda: cross_entropy(z, torch.tensor([0, 1, 2])), ValueError, "target .class indices"),
        (lambda: cross_entropy(z, torch.zeros(2, 4)), ValueError, "target .probabilities"),
        (
            lambda: cross_entropy(torch.zeros(2, 3, 5), torch.zeros(2, 5, dtype=torch.long)),
            ValueError,
            r"got \(2, 5\); the class dimension is the last one.*logits.movedim\(1, -1\)",
        ),
        (lambda: cross_entropy(z, y, reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: cross_entropy(z, y, label_smoothing=1.5), ValueError, "label_smoothing must"),
        (lambda: cross_entropy(z, y, label_smoothing="a"), TypeError, "label_smoothing must"),
        (lambda: cross_entropy(z, y, z_loss=-1.0), ValueError, "z_loss must"),
        (lambda: cross_entropy(z, y, softcap=0.0), ValueError, "softcap must"),
        (lambda: cross_entropy(z, y, ignore_index=1.5), TypeError, "ignore_index must"),
        (lambda: cross_entropy(z, y, weight=torch.ones(4)), ValueError, "weight must have shape"),
        (lambda: cross_entropy(z, y.bool()), TypeError, "target must hold integer"),
        (lambda: cross_entropy(y, y), TypeError, "logits must have a floating dtype"),
        (lambda: cross_entropy(torch.zeros(2, 0), y), ValueError, "logits must have a non-empty"),
        (lambda: cross_entropy([1.0], y), TypeError, "logits must be a torch.Tensor"),
        (
            lambda: cross_entropy(z, torch.tensor([0, 3]), validate=True),
            ValueError,
            r"target \(class indices\) must lie in \[0, 3\).*found 3 at index \(1,\)",
        ),
        (
            lambda: cross_entropy(z, torch.tensor([[0.5, 0.6, 0.0], [1, 0, 0]]), validate=True),
            ValueError,
            "target does not sum to 1",
        ),
        (
            lambda: kl_loss(z, torch.tensor([[1.5, -0.5, 0.0], [1, 0, 0]]), validate=True),
            ValueError,
            "target .probabilities. contain a negative value",
        ),
        (
            lambda: cross_entropy(z, y, weight=-torch.ones(3), validate=True),
            ValueError,
            "weight must be finite and non-negative",
        ),
        (lambda: entropy_loss(z, mask=torch.ones(3, dtype=torch.bool)), ValueError, "mask must"),
        (lambda: entropy_loss(z, mask=torch.ones(2)), TypeError, "mask must be a boolean"),
        (lambda: CrossEntropyLoss(reduction="x"), ValueError, "reduction must"),
        (lambda: cross_entropy(z, [0, 1]), TypeError, "target must be a torch.Tensor"),
        (lambda: cross_entropy(z, y, weight=y), TypeError, "weight must have a floating dtype"),
        (lambda: cross_entropy(z, y, softcap=True), TypeError, "softcap must be a real number"),
        (lambda: cross_entropy(z, y, z_loss=None), TypeError, "z_loss must be a real number"),
        (lambda: entropy_loss(z, reduction=None), ValueError, "reduction must be one of"),
        (lambda: KLLoss(softcap=-2.0), ValueError, "softcap must"),
    ]
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern):
            call()
    # ignore_index passes validation; a valid soft target too.
    cross_entropy(z, torch.tensor([0, -100]), validate=True)
    cross_entropy(z, torch.full((2, 3), 1 / 3), validate=True)


def test_impl_option():
    # The plain-PyTorch path is what "auto" picks for CPU tensors; a bad name is an error,
    # and "triton" without a GPU (or the interpreter) says what it needs.
    logits, target = make((4,), 5, dtype=torch.float32)
    torch.testing.assert_close(
        cross_entropy(logits, target, impl="torch"), cross_entropy(logits, target)
    )
    with pytest.raises(ValueError, match="impl must be one of 'auto', 'torch', 'triton'"):
        kl_loss(logits, target, impl="gpu")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="impl='triton' needs a CUDA tensor"):
            cross_entropy(logits, target, impl="triton")

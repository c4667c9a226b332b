"""``normalize_by``: micro-batches that add up to one big batch, on every single-process loss.

With ``normalize_by = n`` (the counted tokens of the whole batch), a loss is its
``reduction='sum'`` (cross-entropy and z-loss parts) divided by ``n``.  A batch cut into
four micro-batches with very different numbers of ignored tokens -- one all ignored, one
with none -- must then give, summed, the big batch's ``sum / n``, and the gradients
accumulated by one ``backward`` per micro-batch must be the gradient of ``sum / n`` on
the big batch.  The oracle is an independent float64 ``reduction='sum'``, written in
``tests/_torch_oracles.py`` from ``F.log_softmax(softcap(x) / T)`` (class weights scale
the cross-entropy part only; ``normalize_by`` divides the plain sum, never the weighted
count).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from _torch_oracles import entropy_oracle  # noqa: E402
from _torch_oracles import oracle as loss_oracle  # noqa: E402

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
RTOL, ATOL = 1e-12, 1e-14
CLASSES = 9
DIM = 4
# Four micro-batches: (tokens, counted) -- all ignored, none ignored, one counted, half.
MICRO = [(5, 0), (6, 6), (4, 1), (7, 3)]
SLICES = []
_start = 0
for _size, _ in MICRO:
    SLICES.append(slice(_start, _start + _size))
    _start += _size
TOKENS = _start
COUNTED = sum(c for _, c in MICRO)

OPTION_SETS = {
    "plain": {},
    "zloss": {"z_loss": 0.05},
    "all": {"label_smoothing": 0.1, "z_loss": 0.03, "softcap": 3.0, "temperature": 1.7},
}


# ---------------------------------------------------------------- the float64 oracle


def oracle_sum(logits, target, **options):
    """The ``reduction='sum'`` loss in float64, from ``F.log_softmax`` alone."""
    return loss_oracle(logits, target, reduction="sum", **options)


# ---------------------------------------------------------------- data


def labels(seed=0):
    """Class indices of the whole batch, each micro-batch with its number of counted tokens."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (TOKENS,), generator=gen)
    for sl, (size, counted) in zip(SLICES, MICRO, strict=True):
        ignored = torch.randperm(size, generator=gen)[counted:] + sl.start
        y[ignored] = -100
    assert int((y != -100).sum()) == COUNTED
    return y


def probabilities(seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(2 * torch.randn(TOKENS, CLASSES, generator=gen, dtype=F64), -1)
    p[:, 2] = 0.0  # an exact zero: 0 log 0 = 0
    return p / p.sum(-1, keepdim=True)


def logits_of(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(TOKENS, CLASSES, generator=gen, dtype=F64)


def class_weights(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(CLASSES, generator=gen, dtype=F64) * 2 + 0.1


def linear_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(TOKENS, DIM, generator=gen, dtype=F64)
    w = torch.randn(CLASSES, DIM, generator=gen, dtype=F64) * (3 / math.sqrt(DIM))
    b = torch.randn(CLASSES, generator=gen, dtype=F64)
    return h, w, b


def normalizers(n):
    """``n`` as every accepted kind: int, float, 0-d integer and float tensors."""
    return {
        "int": int(n),
        "float": float(n),
        "tensor-int": torch.tensor(int(n)),
        "tensor-f64": torch.tensor(float(n), dtype=F64),
        "tensor-f32": torch.tensor(float(n), dtype=torch.float32),
    }


# ---------------------------------------------------------------- the accumulation check


def accumulate(call, leaves, sliced, target, norm):
    """Sum the four micro-batch losses and ``backward`` each; return (total, grads).

    ``call(pieces, target_piece, norm)`` computes one micro-batch's loss, ``sliced`` are
    the leaves cut along the tokens (the others, e.g. a projection, are shared).
    """
    total = torch.zeros((), dtype=F64)
    for sl in SLICES:
        pieces = [t[sl] if cut else t for t, cut in zip(leaves, sliced, strict=True)]
        piece_target = None if target is None else target[sl]
        loss = call(pieces, piece_target, norm)
        assert loss.shape == ()
        loss.backward()
        total = total + loss.detach()
    return total, [t.grad for t in leaves]


def check(call, oracle, inputs, sliced, target, n, norm):
    leaves = [t.clone().requires_grad_() for t in inputs]
    total, grads = accumulate(call, leaves, sliced, target, norm)
    ref_leaves = [t.clone().requires_grad_() for t in inputs]
    ref = oracle(ref_leaves, target) / n
    want = torch.autograd.grad(ref, ref_leaves)
    torch.testing.assert_close(total, ref.detach(), rtol=RTOL, atol=ATOL)
    for g, r in zip(grads, want, strict=True):
        torch.testing.assert_close(g, r, rtol=RTOL, atol=ATOL)
    return total


# ---------------------------------------------------------------- dense losses


@pytest.mark.parametrize("kind", ["int", "float", "tensor-int", "tensor-f64", "tensor-f32"])
@pytest.mark.parametrize("name", list(OPTION_SETS))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("divergence", [False, True], ids=["cross_entropy", "kl_loss"])
def test_dense_micro_batches_with_labels(kind, name, weighted, divergence):
    options = OPTION_SETS[name]
    weight = class_weights(1) if weighted else None
    y = labels(2)
    fn = kl_loss if divergence else cross_entropy

    def call(pieces, t, norm):
        return fn(pieces[0], t, weight=weight, normalize_by=norm, **options)

    def oracle(leaves, t):
        return oracle_sum(leaves[0], t, weight=weight, divergence=divergence, **options)

    norm = normalizers(COUNTED)[kind]
    total = check(call, oracle, [logits_of(3)], [True], y, COUNTED, norm)
    if not weighted:  # then sum / n is the big batch's own mean, z-loss included
        big = fn(logits_of(3), y, **options)
        torch.testing.assert_close(total, big, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["int", "tensor-f64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("divergence", [False, True], ids=["cross_entropy", "kl_loss"])
def test_dense_micro_batches_with_probabilities(kind, weighted, divergence):
    options = OPTION_SETS["all"]
    weight = class_weights(4) if weighted else None
    p = probabilities(5)
    fn = kl_loss if divergence else cross_entropy

    def call(pieces, t, norm):
        return fn(pieces[0], t, weight=weight, normalize_by=norm, **options)

    def oracle(leaves, t):
        return oracle_sum(leaves[0], t, weight=weight, divergence=divergence, **options)

    # Every probability row counts: the micro-batches' sizes differ instead.
    norm = normalizers(TOKENS)[kind]
    check(call, oracle, [logits_of(6)], [True], p, TOKENS, norm)


@pytest.mark.parametrize("module", [CrossEntropyLoss, KLLoss])
def test_dense_modules_with_normalize_by(module):
    options = OPTION_SETS["all"]
    weight = class_weights(7)
    y = labels(8)
    loss = module(weight=weight, normalize_by=torch.tensor(COUNTED), **options)

    def call(pieces, t, norm):
        return loss(pieces[0], t)

    def oracle(leaves, t):
        return oracle_sum(leaves[0], t, weight=weight, divergence=module is KLLoss, **options)

    check(call, oracle, [logits_of(9)], [True], y, COUNTED, None)


# ---------------------------------------------------------------- entropy_loss


@pytest.mark.parametrize("kind", ["int", "float", "tensor-int", "tensor-f64"])
@pytest.mark.parametrize("options", [{}, {"softcap": 2.5, "temperature": 0.5}], ids=["plain", "t"])
def test_entropy_micro_batches_with_mask(kind, options):
    mask = labels(10) != -100

    def call(pieces, m, norm):
        return entropy_loss(pieces[0], mask=m, normalize_by=norm, **options)

    def oracle(leaves, m):
        return entropy_oracle(leaves[0], mask=m, reduction="sum", **options)

    norm = normalizers(COUNTED)[kind]
    total = check(call, oracle, [logits_of(11)], [True], mask, COUNTED, norm)
    torch.testing.assert_close(total, entropy_loss(logits_of(11), mask=mask, **options))


# ---------------------------------------------------------------- linear_cross_entropy


@pytest.mark.parametrize("kind", ["int", "float", "tensor-int", "tensor-f64"])
@pytest.mark.parametrize("name", list(OPTION_SETS))
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_linear_micro_batches_with_labels(kind, name, weighted):
    options = OPTION_SETS[name]
    cw = class_weights(12) if weighted else None
    y = labels(13)

    def call(pieces, t, norm):
        h, w, b = pieces
        return linear_cross_entropy(
            h, w, t, bias=b, class_weight=cw, normalize_by=norm, chunk_size=3, **options
        )

    def oracle(leaves, t):
        h, w, b = leaves
        return oracle_sum(h @ w.T + b, t, weight=cw, **options)

    # The projection and bias are shared: their gradients accumulate across micro-batches.
    norm = normalizers(COUNTED)[kind]
    check(call, oracle, list(linear_inputs(14)), [True, False, False], y, COUNTED, norm)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_linear_micro_batches_with_probabilities(weighted):
    options = OPTION_SETS["all"]
    cw = class_weights(15) if weighted else None
    p = probabilities(16)

    def call(pieces, t, norm):
        h, w, b = pieces
        return linear_cross_entropy(
            h, w, t, bias=b, class_weight=cw, normalize_by=norm, chunk_size=4, **options
        )

    def oracle(leaves, t):
        h, w, b = leaves
        return oracle_sum(h @ w.T + b, t, weight=cw, **options)

    norm = torch.tensor(float(TOKENS), dtype=F64)
    check(call, oracle, list(linear_inputs(17)), [True, False, False], p, TOKENS, norm)


def test_linear_module_with_normalize_by():
    options = OPTION_SETS["all"]
    cw = class_weights(18)
    y = labels(19)
    loss = LinearCrossEntropyLoss(class_weight=cw, normalize_by=COUNTED, chunk_size=2, **options)

    def call(pieces, t, norm):
        return loss(pieces[0], pieces[1], t, pieces[2])

    def oracle(leaves, t):
        h, w, b = leaves
        return oracle_sum(h @ w.T + b, t, weight=cw, **options)

    check(call, oracle, list(linear_inputs(20)), [True, False, False], y, COUNTED, None)


# ---------------------------------------------------------------- a fractional count


def test_fractional_normalize_by_divides_the_sum():
    # Not a token count at all: the loss is still sum / c, weights and z-loss included.
    x = logits_of(21).requires_grad_()
    y = labels(22)
    weight = class_weights(23)
    ours = cross_entropy(x, y, weight=weight, z_loss=0.1, normalize_by=7.25)
    ref = oracle_sum(x, y, weight=weight, z_loss=0.1) / 7.25
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(
        torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0], rtol=RTOL, atol=ATOL
    )


# ---------------------------------------------------------------- zero


ZEROS = {
    "int": 0,
    "float": 0.0,
    "tensor-int": torch.tensor(0),
    "tensor-f64": torch.tensor(0.0, dtype=F64),
}


def _zero_calls():
    y, p, mask = labels(24), probabilities(25), labels(24) != -100
    cw = class_weights(26)
    options = {"z_loss": 0.1, "label_smoothing": 0.1, "temperature": 1.7}
    return {
        "cross_entropy": (
            lambda x, norm: cross_entropy(x, y, weight=cw, normalize_by=norm, **options)
        ),
        "cross_entropy-soft": lambda x, norm: cross_entropy(x, p, normalize_by=norm, **options),
        "kl_loss": lambda x, norm: kl_loss(x, y, weight=cw, normalize_by=norm, **options),
        "kl_loss-soft": lambda x, norm: kl_loss(x, p, normalize_by=norm, **options),
        "entropy_loss": lambda x, norm: entropy_loss(x, mask=mask, normalize_by=norm),
    }


@pytest.mark.parametrize("name", list(_zero_calls()))
@pytest.mark.parametrize("zero", list(ZEROS))
def test_normalize_by_zero_gives_zero_dense(name, zero):
    x = logits_of(27).requires_grad_()
    loss = _zero_calls()[name](x, ZEROS[zero])
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0 and not loss.isnan()
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("zero", list(ZEROS))
@pytest.mark.parametrize("soft", [False, True])
def test_normalize_by_zero_gives_zero_linear(zero, soft):
    h, w, b = (t.requires_grad_() for t in linear_inputs(28))
    target = probabilities(29) if soft else labels(29)
    loss = linear_cross_entropy(
        h, w, target, bias=b, z_loss=0.1, normalize_by=ZEROS[zero], chunk_size=5
    )
    grads = torch.autograd.grad(loss, (h, w, b))
    assert loss.item() == 0.0 and not loss.isnan()
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


# ---------------------------------------------------------------- errors


def _calls():
    x, y = logits_of(30), labels(30)
    h, w, b = linear_inputs(30)
    return {
        "cross_entropy": lambda **kw: cross_entropy(x, y, **kw),
        "kl_loss": lambda **kw: kl_loss(x, y, **kw),
        "entropy_loss": lambda **kw: entropy_loss(x, **kw),
        "linear_cross_entropy": lambda **kw: linear_cross_entropy(h, w, y, bias=b, **kw),
        "CrossEntropyLoss": lambda **kw: CrossEntropyLoss(**kw),
        "KLLoss": lambda **kw: KLLoss(**kw),
        "LinearCrossEntropyLoss": lambda **kw: LinearCrossEntropyLoss(**kw),
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_bad_normalize_by_is_refused(name):
    call = _calls()[name]
    for reduction in ("sum", "none"):
        for value in (4, 4.0, torch.tensor(4.0), 0):
            with pytest.raises(ValueError, match="normalize_by replaces the divisor"):
                call(reduction=reduction, normalize_by=value)
    with pytest.raises(ValueError, match="normalize_by"):
        call(normalize_by=torch.tensor([4.0, 5.0]))
    with pytest.raises(ValueError, match="normalize_by"):
        call(normalize_by=torch.tensor(4.0 + 1.0j))
    with pytest.raises(ValueError, match="normalize_by"):
        call(normalize_by=torch.tensor(True))
    for value in ("4", True, [4]):
        with pytest.raises(TypeError, match="normalize_by"):
            call(normalize_by=value)
    for value in (-1, -0.5, math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="normalize_by"):
            call(normalize_by=value)
    # None is the default: the mean's own divisors.
    call(normalize_by=None)

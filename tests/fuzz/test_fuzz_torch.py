"""Property fuzzing of the PyTorch losses: cross_entropy, kl_loss, entropy_loss and
linear_cross_entropy of ``crossentropy.torch``.

Random shapes (0 tokens, 0-d batches, 1 class, odd sizes), options (ignore_index,
reduction, label_smoothing, z_loss, softcap, class weights, chunk_size), class-index and
probability targets, float32 and float64, logits (or a bias) with ``-inf`` entries, at
least one finite per row.  The loss and its gradient (with a random upstream gradient,
per token for ``reduction='none'``) must match a float64 reference written here from
``torch.nn.functional.log_softmax`` and the definitions of the docstrings:

* ``z = c tanh(x / c)`` with a softcap ``c``; ``log q = log_softmax(z)``;
* ``t' = (1 - eps) t + eps / C``; per counted token ``H = -sum_c w_c t'_c log q_c`` with
  ``0 log 0 = 0`` (a zero weighted target at a ``-inf`` logit adds nothing), the KL
  ``D = H + sum_c w_c t'_c log t'_c``, plus ``z_loss * logsumexp(z)**2``;
* ``mean``: ``sum H / sum omega + z_loss sum lse**2 / n`` with ``omega = w_y`` for a class
  index (0 if ignored), 1 for a probability row, ``n`` the counted tokens; a zero
  divisor gives 0.

Also: no NaN where the value is defined, KL >= 0 (unweighted), the entropy in
[0, log C], cross_entropy and kl_loss with the same gradient, and bad input raising only
ValueError or TypeError.  Profiles: see conftest.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from crossentropy.torch import (  # noqa: E402
    cross_entropy,
    entropy_loss,
    kl_loss,
    linear_cross_entropy,
)

F64 = torch.float64
DTYPES = [torch.float32, torch.float64]
REDUCTIONS = ["none", "mean", "sum"]
ALLOWED = (ValueError, TypeError)
# Loss and gradient against the float64 reference on the same (rounded) inputs: float64
# to rounding; float32 from its own rounding of the logits' lse and of the matmul.
TOL = {torch.float32: {"rtol": 2e-4, "atol": 2e-4}, torch.float64: {"rtol": 1e-9, "atol": 1e-10}}

batches = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
classes = st.integers(1, 9)
# Probability masses, zeros included; normalised in float64, then in the test dtype.
masses = st.one_of(st.just(0.0), st.floats(1e-6, 1e6))
# No smoothing below 1e-3: eps / C would round to 0 in float32 and the float64
# reference would then differ (an infinite loss at a -inf logit) by that rounding only.
smoothing = st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-3, 1.0))
z_losses = st.one_of(st.just(0.0), st.floats(0.0, 1.0))
softcaps = st.one_of(st.none(), st.floats(0.5, 50.0))
temperatures = st.one_of(st.just(1.0), st.floats(0.25, 4.0))
# normalize_by (mean only): a count the caller knows, 0 included (gives 0)
normalizers = st.one_of(st.none(), st.just(0.0), st.floats(0.5, 20.0))
chunks = st.sampled_from([None, 1, 2, 3, 5])


# ---------------------------------------------------------------- strategies


@st.composite
def with_minus_inf(draw, values, *, lead=None):
    """``values`` (..., C) with some entries set to -inf, one finite entry kept per row.

    ``lead`` (the row's first axes) lets a bias (C,) share one pattern with every token.
    """
    shape = values.shape
    if shape[-1] == 1 or not draw(st.booleans()):
        return values
    batch = shape[:-1] if lead is None else lead
    holes = draw(hnp.arrays(np.bool_, shape))
    keep = draw(hnp.arrays(np.int64, batch, elements=st.integers(0, shape[-1] - 1)))
    holes &= np.arange(shape[-1]) != keep[..., None]
    out = values.copy()
    out[holes] = -np.inf
    return out


@st.composite
def logit_arrays(draw, batch, num_classes, ninf=True, bound=30.0):
    z = draw(hnp.arrays(np.float64, (*batch, num_classes), elements=st.floats(-bound, bound)))
    return draw(with_minus_inf(z)) if ninf else z


def finite_classes(z: np.ndarray) -> np.ndarray:
    """A class with a finite logit in every row (the first)."""
    return np.isfinite(z).argmax(-1)


@st.composite
def label_arrays(draw, z, ignore_index):
    """Class indices at finite logits, some equal to ``ignore_index``."""
    batch, num_classes = z.shape[:-1], z.shape[-1]
    y = draw(hnp.arrays(np.int64, batch, elements=st.integers(0, num_classes - 1)))
    on_finite = np.take_along_axis(np.isfinite(z), y[..., None], -1)[..., 0]
    y = np.where(on_finite, y, finite_classes(z))
    ignored = draw(hnp.arrays(np.bool_, batch))
    return np.where(ignored, ignore_index, y)


@st.composite
def probability_arrays(draw, z):
    """Rows summing to 1, zero wherever the logit is -inf (float64)."""
    raw = draw(hnp.arrays(np.float64, z.shape, elements=masses))
    raw[~np.isfinite(z)] = 0.0
    first = finite_classes(z)
    raw += np.arange(z.shape[-1]) == first[..., None]  # some mass in every row
    return raw / raw.sum(-1, keepdims=True)


def class_weights(num_classes):
    return st.one_of(
        st.none(),
        hnp.arrays(
            np.float64, (num_classes,), elements=st.one_of(st.just(0.0), st.floats(1e-3, 4.0))
        ),
    )


def as_probabilities(p: np.ndarray, dtype) -> torch.Tensor:
    """``p`` in ``dtype``, renormalised there so that each row sums to 1 in its rounding."""
    t = torch.tensor(p, dtype=dtype)
    return t / t.sum(-1, keepdim=True)


# ---------------------------------------------------------------- the float64 reference


def _divide(total: torch.Tensor, divisor: torch.Tensor | float) -> torch.Tensor:
    # The documented rule: a zero divisor gives 0 (with zero gradients).
    value = float(divisor.detach()) if isinstance(divisor, torch.Tensor) else float(divisor)
    return total / divisor if value != 0 else total * 0.0


def transformed(logits, softcap, temperature):
    """``z = c tanh(x / c) / T``: the softcap first, then the temperature."""
    z = logits if softcap is None else softcap * torch.tanh(logits / softcap)
    return z / temperature


def reference_tokens(z, target, weight, *, ignore_index, label_smoothing, divergence):
    """Per-token H (or D) parts in float64, their ``omega`` and the counted mask.

    ``z`` is the float64 (soft-capped) logits; ``target`` float64 probabilities or int64
    class indices; ``weight`` float64 (C,) or None.
    """
    num_classes = z.shape[-1]
    logq = F.log_softmax(z, dim=-1)
    w = torch.ones(num_classes, dtype=F64) if weight is None else weight
    if target.dtype.is_floating_point:
        t = target
        counted = torch.ones(z.shape[:-1], dtype=torch.bool)
        omega = torch.ones(z.shape[:-1], dtype=F64)
    else:
        counted = target != ignore_index
        safe = torch.where(counted, target, 0)
        t = F.one_hot(safe, num_classes).to(F64)
        omega = torch.where(counted, w[safe], 0.0)
    t = (1.0 - label_smoothing) * t + label_smoothing / num_classes
    t = t * counted.unsqueeze(-1)  # an ignored token has no target at all
    wt = w * t
    # 0 log 0 = 0: a class of zero (weighted) target adds nothing, even at a -inf logit;
    # the log is replaced, not the product, so that no 0 * inf reaches the gradient.
    safe_logq = torch.where((wt == 0) & torch.isinf(logq), 0.0, logq)
    tokens = -(wt * safe_logq).sum(-1)
    if divergence:
        tokens = tokens + (w * torch.special.xlogy(t, t)).sum(-1)
    return torch.where(counted, tokens, 0.0), omega, counted


def reference_loss(
    logits,
    target,
    weight,
    *,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    temperature=1.0,
    normalize_by=None,
    divergence=False,
):
    """The loss of cross_entropy (or ``divergence``: kl_loss), built from F.log_softmax."""
    z = transformed(logits, softcap, temperature)
    tokens, omega, counted = reference_tokens(
        z,
        target,
        weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        divergence=divergence,
    )
    z_terms = torch.where(counted, z_loss * torch.logsumexp(z, dim=-1).square(), 0.0)
    if reduction == "none":
        return tokens + z_terms
    if reduction == "sum":
        return tokens.sum() + z_terms.sum()
    if normalize_by is not None:
        return _divide(tokens.sum() + z_terms.sum(), normalize_by)
    out = _divide(tokens.sum(), omega.sum())
    if z_loss:
        out = out + _divide(z_terms.sum(), counted.sum())
    return out


def reference_entropy(logits, mask, *, reduction, softcap, temperature, normalize_by):
    logq = F.log_softmax(transformed(logits, softcap, temperature), dim=-1)
    safe_logq = torch.where(torch.isinf(logq), 0.0, logq)  # q log q = 0 where q = 0
    tokens = -(logq.exp() * safe_logq).sum(-1)
    if mask is not None:
        tokens = torch.where(mask, tokens, 0.0)
    if reduction == "none":
        return tokens
    if reduction == "sum":
        return tokens.sum()
    if normalize_by is not None:
        return _divide(tokens.sum(), normalize_by)
    return _divide(tokens.sum(), tokens.numel() if mask is None else int(mask.sum()))


# ---------------------------------------------------------------- helpers


def upstream_for(out: torch.Tensor, seed: int) -> torch.Tensor:
    """A random upstream gradient of ``out``'s shape (per token for ``none``)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(out.shape, generator=gen, dtype=F64) * 4 - 2).to(out.dtype)


def grads(out, inputs, upstream):
    got = torch.autograd.grad(out, inputs, upstream, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(got, inputs, strict=True)]


def assert_no_nan(x: torch.Tensor, what: str) -> None:
    assert not torch.isnan(x).any(), f"{what} has NaN: {x}"


def assert_matches(got: torch.Tensor, want: torch.Tensor, dtype, what: str) -> None:
    assert got.dtype == dtype, (what, got.dtype)
    assert tuple(got.shape) == tuple(want.shape), (what, got.shape, want.shape)
    # The reference is NaN only for an infinite total over a zero divisor (inf * 0): no
    # value is defined there, so any answer is taken.
    undefined = torch.isnan(want.detach())
    torch.testing.assert_close(
        torch.where(undefined, 0.0, got.detach().to(F64)),
        torch.where(undefined, 0.0, want.detach()),
        **TOL[dtype],
        msg=what,
    )


def leaf(x: np.ndarray | torch.Tensor, dtype) -> torch.Tensor:
    return torch.as_tensor(x).to(dtype).clone().requires_grad_()


def as64(x: torch.Tensor) -> torch.Tensor:
    """A float64 leaf of the same (rounded) values, for the reference's gradient."""
    return x.detach().to(F64).requires_grad_()


# ---------------------------------------------------------------- cross_entropy and kl_loss


@given(
    data=st.data(),
    batch=batches,
    num_classes=classes,
    dtype=st.sampled_from(DTYPES),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    label_smoothing=smoothing,
    z_loss=z_losses,
    softcap=softcaps,
    temperature=temperatures,
    seed=st.integers(0, 2**16),
)
def test_dense_losses_against_float64_reference(
    data,
    batch,
    num_classes,
    dtype,
    soft,
    reduction,
    label_smoothing,
    z_loss,
    softcap,
    temperature,
    seed,
):
    z_np = data.draw(logit_arrays(batch, num_classes), label="logits")
    ignore_index = data.draw(st.sampled_from([-100, -1, 0, num_classes]), label="ignore_index")
    if soft:
        target = as_probabilities(data.draw(probability_arrays(z_np), label="target"), dtype)
    else:
        target = torch.tensor(data.draw(label_arrays(z_np, ignore_index), label="target"))
    w_np = data.draw(class_weights(num_classes), label="weight")
    normalize_by = data.draw(normalizers, label="normalize_by") if reduction == "mean" else None
    options = {
        "ignore_index": ignore_index,
        "reduction": reduction,
        "label_smoothing": label_smoothing,
        "z_loss": z_loss,
        "softcap": softcap,
        "temperature": temperature,
        "normalize_by": normalize_by,
    }
    per_token_options = {**options, "reduction": "none", "normalize_by": None}
    logits = leaf(z_np, dtype)
    weight = None if w_np is None else leaf(w_np, dtype)
    soft_target = target.clone().requires_grad_() if soft else target

    # float64 reference on the same rounded inputs; per-token values decide whether the
    # gradient is defined (an infinite loss, e.g. smoothing onto a -inf logit, has none)
    logits64 = as64(logits)
    weight64 = None if weight is None else as64(weight)
    target64 = as64(target) if soft else target
    per_token = reference_loss(logits64.detach(), target64.detach(), weight64, **per_token_options)
    finite = bool(torch.isfinite(per_token).all())

    results = {}
    for name, fn, divergence in [
        ("cross_entropy", cross_entropy, False),
        ("kl_loss", kl_loss, True),
    ]:
        # the target's gradient only for the cross-entropy: the KL's d(t log t)/dt is
        # -inf at t = 0
        target_grad = soft and not divergence
        t_in = soft_target if target_grad else target
        t_ref = target64 if target_grad else target64.detach()
        out = fn(logits, t_in, weight=weight, **options)
        want = reference_loss(logits64, t_ref, weight64, divergence=divergence, **options)
        assert_matches(out, want, dtype, f"{name} loss")
        if finite:
            assert_no_nan(out, name)
        if divergence and weight is None and z_loss == 0:
            # KL is never negative (by rounding only, per token)
            tokens = fn(logits.detach(), target, weight=None, **per_token_options)
            assert (tokens.to(F64) >= -TOL[dtype]["atol"] * (1 + tokens.abs())).all(), tokens
        if not finite:
            continue
        ours_in = [logits] + ([weight] if weight is not None else [])
        ref_in = [logits64] + ([weight64] if weight64 is not None else [])
        if target_grad:
            ours_in.append(soft_target)
            ref_in.append(target64)
        up = upstream_for(out, seed)
        got = grads(out, ours_in, up)
        want_g = grads(want, ref_in, up.to(F64))
        for i, (g, w) in enumerate(zip(got, want_g, strict=True)):
            assert_no_nan(g, f"{name} gradient {i}")
            assert_matches(g, w, dtype, f"{name} gradient of input {i}")
        results[name] = got[0]
    if finite:
        # the identity's promise: the same gradient with respect to the logits, to the bit
        assert torch.equal(results["cross_entropy"], results["kl_loss"])


# ---------------------------------------------------------------- entropy_loss


@given(
    data=st.data(),
    batch=batches,
    num_classes=classes,
    dtype=st.sampled_from(DTYPES),
    reduction=st.sampled_from(REDUCTIONS),
    softcap=softcaps,
    temperature=temperatures,
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_entropy_loss_against_float64_reference(
    data, batch, num_classes, dtype, reduction, softcap, temperature, masked, seed
):
    z_np = data.draw(logit_arrays(batch, num_classes), label="logits")
    mask = torch.tensor(data.draw(hnp.arrays(np.bool_, batch), label="mask")) if masked else None
    normalize_by = data.draw(normalizers, label="normalize_by") if reduction == "mean" else None
    options = {"softcap": softcap, "temperature": temperature}
    logits = leaf(z_np, dtype)
    logits64 = as64(logits)
    out = entropy_loss(logits, mask=mask, reduction=reduction, normalize_by=normalize_by, **options)
    want = reference_entropy(
        logits64, mask, reduction=reduction, normalize_by=normalize_by, **options
    )
    assert_matches(out, want, dtype, "entropy_loss")
    assert_no_nan(out, "entropy_loss")
    tokens = entropy_loss(logits.detach(), reduction="none", **options).to(F64)
    tol = TOL[dtype]["atol"]
    assert (tokens >= -tol).all() and (tokens <= math.log(num_classes) + tol).all(), tokens
    up = upstream_for(out, seed)
    (got,) = grads(out, [logits], up)
    (want_g,) = grads(want, [logits64], up.to(F64))
    assert_no_nan(got, "entropy_loss gradient")
    assert_matches(got, want_g, dtype, "entropy_loss gradient")


# ---------------------------------------------------------------- linear_cross_entropy


@given(
    data=st.data(),
    batch=batches,
    dim=st.integers(0, 5),
    vocab=classes,
    dtype=st.sampled_from(DTYPES),
    soft=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
    label_smoothing=smoothing,
    z_loss=z_losses,
    softcap=softcaps,
    temperature=temperatures,
    chunk_size=chunks,
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_cross_entropy_against_float64_reference(
    data,
    batch,
    dim,
    vocab,
    dtype,
    soft,
    reduction,
    label_smoothing,
    z_loss,
    softcap,
    temperature,
    chunk_size,
    with_bias,
    seed,
):
    elements = st.floats(-2.0, 2.0)
    h_np = data.draw(hnp.arrays(np.float64, (*batch, dim), elements=elements), label="hidden")
    w_np = data.draw(hnp.arrays(np.float64, (vocab, dim), elements=elements), label="weight")
    b_np = None
    if with_bias:
        b_np = data.draw(hnp.arrays(np.float64, (vocab,), elements=st.floats(-10, 10)))
        b_np = data.draw(with_minus_inf(b_np, lead=()), label="bias")  # -inf for every token
    hidden, weight = leaf(h_np, dtype), leaf(w_np, dtype)
    bias = None if b_np is None else leaf(b_np, dtype)
    hidden64, weight64 = as64(hidden), as64(weight)
    bias64 = None if bias is None else as64(bias)
    logits64 = hidden64 @ weight64.T
    if bias64 is not None:
        logits64 = logits64 + bias64
    z_np = logits64.detach().numpy()
    ignore_index = data.draw(st.sampled_from([-100, -1, 0, vocab]), label="ignore_index")
    if soft:
        target = as_probabilities(data.draw(probability_arrays(z_np), label="target"), dtype)
    else:
        target = torch.tensor(data.draw(label_arrays(z_np, ignore_index), label="target"))
    cw_np = data.draw(class_weights(vocab), label="class_weight")
    class_weight = None if cw_np is None else torch.tensor(cw_np, dtype=dtype)
    normalize_by = data.draw(normalizers, label="normalize_by") if reduction == "mean" else None
    options = {
        "ignore_index": ignore_index,
        "reduction": reduction,
        "label_smoothing": label_smoothing,
        "z_loss": z_loss,
        "softcap": softcap,
        "temperature": temperature,
        "normalize_by": normalize_by,
    }
    out = linear_cross_entropy(
        hidden,
        weight,
        target,
        bias=bias,
        class_weight=class_weight,
        chunk_size=chunk_size,
        **options,
    )
    cw64 = None if class_weight is None else class_weight.to(F64)
    target64 = target.to(F64) if soft else target
    per_token_options = {**options, "reduction": "none", "normalize_by": None}
    per_token = reference_loss(logits64.detach(), target64, cw64, **per_token_options)
    finite = bool(torch.isfinite(per_token).all())
    want = reference_loss(logits64, target64, cw64, **options)
    assert_matches(out, want, dtype, "linear_cross_entropy loss")
    if not finite:
        return  # an infinite loss (smoothing onto a -inf bias): no gradient to compare
    assert_no_nan(out, "linear_cross_entropy")
    ours_in = [hidden, weight] + ([bias] if bias is not None else [])
    ref_in = [hidden64, weight64] + ([bias64] if bias64 is not None else [])
    up = upstream_for(out, seed)
    got = grads(out, ours_in, up)
    want_g = grads(want, ref_in, up.to(F64))
    for name, g, w in zip(["hidden", "weight", "bias"], got, want_g, strict=False):
        assert_no_nan(g, f"linear_cross_entropy gradient of {name}")
        assert_matches(g, w, dtype, f"linear_cross_entropy gradient of {name}")


# ---------------------------------------------------------------- bad input


def _dense_cases(z, y, p):
    c = z.shape[-1]
    bad_p = p.clone()
    bad_p[..., 0] = -0.5
    return [
        lambda f: f(z, y, reduction="avg"),
        lambda f: f(z, y, reduction=None),
        lambda f: f(z, y, label_smoothing=-0.1),
        lambda f: f(z, y, label_smoothing=1.5),
        lambda f: f(z, y, label_smoothing=math.nan),
        lambda f: f(z, y, label_smoothing="0.1"),
        lambda f: f(z, y, z_loss=-1.0),
        lambda f: f(z, y, z_loss=math.inf),
        lambda f: f(z, y, z_loss=None),
        lambda f: f(z, y, softcap=0.0),
        lambda f: f(z, y, softcap=-1.0),
        lambda f: f(z, y, softcap=math.nan),
        lambda f: f(z, y, softcap=math.inf),
        lambda f: f(z, y, softcap="1"),
        lambda f: f(z, y, ignore_index=2**70),
        lambda f: f(z, y, ignore_index=1.5),
        lambda f: f(z, y, ignore_index="0"),
        lambda f: f(z, y, impl="cuda"),
        lambda f: f(z, y, validate="yes"),
        lambda f: f(z, y, validate=1),
        lambda f: f(z, y, temperature=0.0),
        lambda f: f(z, y, temperature=-1.0),
        lambda f: f(z, y, temperature=math.inf),
        lambda f: f(z, y, normalize_by=-1.0),
        lambda f: f(z, y, normalize_by=math.nan),
        lambda f: f(z, y, normalize_by="2"),
        lambda f: f(z, y, normalize_by=torch.ones(2)),
        lambda f: f(z, y, reduction="sum", normalize_by=2.0),
        lambda f: f(z, y, weight=torch.ones(c + 1)),
        lambda f: f(z, y, weight=-torch.ones(c)),
        lambda f: f(z, y, weight=torch.full((c,), math.nan)),
        lambda f: f(z, y, weight=torch.ones(c, dtype=torch.long)),
        lambda f: f(z, y, weight=[1.0] * c),
        lambda f: f(z.long(), y),
        lambda f: f(z.to(torch.complex64), y),
        lambda f: f(z[..., :0], y),
        lambda f: f(z.detach().numpy(), y),
        lambda f: f(z.tolist(), y),
        lambda f: f(z, y + c),  # out of range (ignore_index -100 is not hit)
        lambda f: f(z, y - c - 1),
        lambda f: f(z, torch.cat([y.reshape(-1), y.reshape(-1)[:1]])),
        lambda f: f(z, y.bool()),
        lambda f: f(z, y.to(torch.complex64)),
        lambda f: f(z, y.tolist()),
        lambda f: f(z, None),
        lambda f: f(z, bad_p),
        lambda f: f(z, p * 2),
        lambda f: f(z, torch.full_like(p, math.nan)),
        lambda f: f(z, torch.cat([p, p[..., :1]], dim=-1)),
    ]


@given(
    batch=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3),
    num_classes=st.integers(2, 5),
    fn=st.sampled_from([cross_entropy, kl_loss]),
    case=st.integers(0, 48),
)
def test_dense_bad_input_raises_value_or_type_error(batch, num_classes, fn, case):
    z = torch.zeros(*batch, num_classes)
    y = torch.zeros(batch, dtype=torch.long)
    p = torch.full((*batch, num_classes), 1.0 / num_classes)
    cases = _dense_cases(z, y, p)
    assert len(cases) == 49
    with pytest.raises(ALLOWED):
        cases[case](fn)


def _linear_cases(h, w, y, p):
    v, d = w.shape
    return [
        lambda: linear_cross_entropy(h, w, y, chunk_size=0),
        lambda: linear_cross_entropy(h, w, y, chunk_size=-1),
        lambda: linear_cross_entropy(h, w, y, chunk_size=1.5),
        lambda: linear_cross_entropy(h, w, y, chunk_size=True),
        lambda: linear_cross_entropy(h, torch.zeros(v, d + 1), y),
        lambda: linear_cross_entropy(h, w[0], y),
        lambda: linear_cross_entropy(h, w[:0], y),
        lambda: linear_cross_entropy(h, w.double(), y),
        lambda: linear_cross_entropy(h, w, y, bias=torch.zeros(v + 1)),
        lambda: linear_cross_entropy(h, w, y, bias=torch.zeros(v, dtype=F64)),
        lambda: linear_cross_entropy(h, w, y, bias=torch.zeros(v, dtype=torch.long)),
        lambda: linear_cross_entropy(h.long(), w, y),
        lambda: linear_cross_entropy(h.tolist(), w, y),
        lambda: linear_cross_entropy(h, w, y + v),
        lambda: linear_cross_entropy(h, w, y[..., :0]),
        lambda: linear_cross_entropy(h, w, p * 2),
        lambda: linear_cross_entropy(h, w, p.clone().requires_grad_()),
        lambda: linear_cross_entropy(h, w, y, class_weight=torch.ones(v, requires_grad=True)),
        lambda: linear_cross_entropy(h, w, y, class_weight=torch.ones(v + 1)),
        lambda: linear_cross_entropy(h, w, y, class_weight=-torch.ones(v)),
        lambda: linear_cross_entropy(h, w, y, label_smoothing=2.0),
        lambda: linear_cross_entropy(h, w, y, reduction="batchmean"),
        lambda: linear_cross_entropy(h, w, y, softcap=0.0),
        lambda: linear_cross_entropy(h, w, y, z_loss=-0.5),
        lambda: linear_cross_entropy(h, w, y, ignore_index=-(2**70)),
        lambda: linear_cross_entropy(h, w, y, impl="fast"),
        lambda: linear_cross_entropy(h, w, y, validate="no"),
        lambda: linear_cross_entropy(h, w, y, temperature=0.0),
        lambda: linear_cross_entropy(h, w, y, reduction="none", normalize_by=3.0),
    ]


@given(
    batch=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3),
    dim=st.integers(1, 4),
    vocab=st.integers(2, 5),
    case=st.integers(0, 28),
)
def test_linear_bad_input_raises_value_or_type_error(batch, dim, vocab, case):
    h = torch.zeros(*batch, dim)
    w = torch.zeros(vocab, dim)
    y = torch.zeros(batch, dtype=torch.long)
    p = torch.full((*batch, vocab), 1.0 / vocab)
    cases = _linear_cases(h, w, y, p)
    assert len(cases) == 29
    with pytest.raises(ALLOWED):
        cases[case]()


def _entropy_cases(z):
    batch = z.shape[:-1]
    return [
        lambda: entropy_loss(z, reduction="batchmean"),
        lambda: entropy_loss(z, softcap=0.0),
        lambda: entropy_loss(z, temperature=-2.0),
        lambda: entropy_loss(z, normalize_by=-1.0),
        lambda: entropy_loss(z, reduction="none", normalize_by=1.0),
        lambda: entropy_loss(z.long()),
        lambda: entropy_loss(z[..., :0]),
        lambda: entropy_loss(z.tolist()),
        lambda: entropy_loss(z, mask=torch.ones(batch, dtype=torch.long)),
        lambda: entropy_loss(z, mask=torch.ones((*batch, 2), dtype=torch.bool)),
        lambda: entropy_loss(z, mask=[True] * z.shape[0]),
        lambda: entropy_loss(z, mask=torch.ones(batch, dtype=torch.bool, device="meta")),
    ]


@given(
    batch=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=3),
    num_classes=st.integers(1, 5),
    case=st.integers(0, 11),
)
def test_entropy_bad_input_raises_value_or_type_error(batch, num_classes, case):
    cases = _entropy_cases(torch.zeros(*batch, num_classes))
    assert len(cases) == 12
    with pytest.raises(ALLOWED):
        cases[case]()


junk = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.just([]),
    st.just([[0.5, 0.5]]),
    st.just(np.zeros((2, 3))),
    st.just(object()),
    st.sampled_from(
        [
            torch.zeros(2, 3),
            torch.zeros(2, dtype=torch.long),
            torch.zeros(2, 3, dtype=torch.long),
            torch.zeros(2, 3, dtype=torch.bool),
            torch.zeros(()),
            torch.zeros(0),
            torch.zeros(2, 0),
            torch.zeros(3, 2),
            torch.zeros(2, 3, dtype=torch.complex64),
            torch.full((2, 3), 1 / 3),
            torch.zeros(2, 3, device="meta"),
        ]
    ),
)


@given(a=junk, b=junk, c=junk)
def test_junk_raises_only_value_or_type_error(a, b, c):
    calls = [
        lambda: cross_entropy(a, b),
        lambda: kl_loss(a, b, weight=c),
        lambda: cross_entropy(torch.zeros(2, 3), a, weight=b),
        lambda: entropy_loss(a, mask=b),
        lambda: entropy_loss(torch.zeros(2, 3), mask=a),
        lambda: linear_cross_entropy(a, b, c),
        lambda: linear_cross_entropy(torch.zeros(2, 3), a, b),
        lambda: linear_cross_entropy(torch.zeros(2, 2), torch.zeros(3, 2), a, bias=b),
        lambda: linear_cross_entropy(
            torch.zeros(2, 2), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), class_weight=a
        ),
    ]
    for call in calls:
        try:
            out = call()
        except ALLOWED:
            continue
        # accepted: then the inputs were valid after all, and the loss is a number
        if out.device.type != "meta":
            assert not torch.isnan(out).any(), out


# ---------------------------------------------------------------- defects the fuzzing found (fixed)


def test_ignored_token_with_minus_inf_logit_at_class_0():
    # Hand derivation: the ignored row adds 0; the other row's loss is
    # logsumexp(0, 1, 2) - 1 = log(1 + e + e**2) - 1, weighted by w_1 = 2 and, under
    # mean, divided by sum w_y = 2.
    logits = torch.tensor([[-math.inf, 0.0, 1.0], [0.0, 1.0, 2.0]], dtype=F64)
    row = math.log(1 + math.e + math.e**2) - 1
    for fn in (cross_entropy, kl_loss):
        for weighted in (False, True):
            weight = torch.tensor([1.0, 2.0, 1.0], dtype=F64) if weighted else None
            scale = 2.0 if weighted else 1.0
            for reduction, want in [
                ("none", [0.0, scale * row]),
                ("sum", scale * row),
                ("mean", row),
            ]:
                out = fn(logits, torch.tensor([-100, 1]), weight=weight, reduction=reduction)
                torch.testing.assert_close(out, torch.tensor(want, dtype=F64))


def test_smoothing_with_zero_class_weight_at_minus_inf_logit():
    # Hand derivation: logits (0, -inf), label 0, eps = 0.5, w = (1, 0): q = (1, 0),
    # t' = (0.75, 0.25); H = -w_0 t'_0 log 1 - 0 = 0 and D = H + w_0 t'_0 log t'_0
    # = 0.75 log 0.75.
    logits = torch.tensor([[0.0, -math.inf]], dtype=F64)
    weight = torch.tensor([1.0, 0.0], dtype=F64)
    label, soft = torch.tensor([0]), torch.tensor([[1.0, 0.0]], dtype=F64)
    for fn, want in [(cross_entropy, 0.0), (kl_loss, 0.75 * math.log(0.75))]:
        # the same target as probabilities: the guarded path, right
        by_probs = fn(logits, soft, weight=weight, label_smoothing=0.5, reduction="sum")
        torch.testing.assert_close(by_probs, torch.tensor(want, dtype=F64))
        for reduction in REDUCTIONS:
            out = fn(logits, label, weight=weight, label_smoothing=0.5, reduction=reduction)
            torch.testing.assert_close(out.sum(), torch.tensor(want, dtype=F64))
    # the same logits as hidden @ W.T + bias, with D = 1
    hidden, proj = torch.zeros(1, 1, dtype=F64), torch.zeros(2, 1, dtype=F64)
    bias = logits[0]
    for reduction in REDUCTIONS:
        out = linear_cross_entropy(
            hidden,
            proj,
            label,
            bias=bias,
            class_weight=weight,
            label_smoothing=0.5,
            reduction=reduction,
        )
        torch.testing.assert_close(out.sum(), torch.tensor(0.0, dtype=F64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_infinite_probability_loss(dtype):
    hidden = torch.zeros(1, 1, dtype=dtype)
    weight = torch.zeros(2, 1, dtype=dtype)
    bias = torch.tensor([0.0, -math.inf], dtype=dtype)
    for target, smoothing in [([[0.5, 0.5]], 0.0), ([[1.0, 0.0]], 0.1)]:
        # -sum_c t'_c log q_c with t'_1 > 0 and q_1 = 0: +inf (by hand)
        t = torch.tensor(target, dtype=dtype)
        dense = cross_entropy(hidden @ weight.T + bias, t, label_smoothing=smoothing)
        assert dense.item() == math.inf  # the dense path agrees with the hand value
        out = linear_cross_entropy(hidden, weight, t, bias=bias, label_smoothing=smoothing)
        assert out.item() == math.inf, out

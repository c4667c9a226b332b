"""Gradients of the measures: torch gradcheck in float64, the exact gradient of KL with
respect to logits, and finiteness at the edges under torch autograd and jax.grad.

gradcheck compares autograd with finite differences (an independent oracle). It perturbs
inputs off the simplex, so those calls use ``validate=False``: the gradient checked is
that of the formula, which is what autograd differentiates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import crossentropy as ce

torch = pytest.importorskip("torch")

F64 = torch.float64
INF = math.inf


def _simplex(gen, shape):
    x = torch.rand(shape, generator=gen, dtype=F64) + 0.05  # strictly inside the simplex
    return x / x.sum(-1, keepdim=True)


def _wrap(form: str, x):
    """Tensor ``x`` (a probability tensor) in ``form``; the leaf is what gradcheck varies."""
    return {"probs": lambda t: t, "logits": ce.Logits, "logprobs": ce.LogProbs}[form](x)


def _leaf(form: str, probs):
    if form == "probs":
        return probs.clone().requires_grad_(True)
    if form == "logits":
        return (torch.log(probs) + 0.7).requires_grad_(True)  # unnormalised on purpose
    return torch.log(probs).requires_grad_(True)


FORMS = ["probs", "logits", "logprobs"]
PQ_MEASURES = {
    "cross_entropy": ce.cross_entropy,
    "kl_divergence": ce.kl_divergence,
    "js_divergence": ce.js_divergence,
    # stack: the three parts share the broadcast shape.
    "decompose": lambda p, q, **kw: torch.stack(list(ce.decompose(p, q, **kw))),
}


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kw", [{}, {"base": 2}, {"axis": 0}], ids=["nats", "bits", "axis0"])
def test_gradcheck_entropy(form, kw):
    gen = torch.Generator().manual_seed(0)
    probs = _simplex(gen, (2, 4))
    if kw.get("axis") == 0:
        probs = probs.T.contiguous()
    x = _leaf(form, probs)
    assert torch.autograd.gradcheck(
        lambda t: ce.entropy(_wrap(form, t), validate=False, **kw), (x,)
    )


# Every pair of forms for KL; a spread of them for the others (gradcheck is not cheap).
PQ_CASES = [("kl_divergence", a, b) for a in FORMS for b in FORMS] + [
    (m, a, b)
    for m in ("cross_entropy", "js_divergence", "decompose")
    for a, b in (("probs", "probs"), ("probs", "logits"), ("logprobs", "logits"))
]


@pytest.mark.parametrize(("measure", "p_form", "q_form"), PQ_CASES)
def test_gradcheck_pq(measure, p_form, q_form):
    f = PQ_MEASURES[measure]
    gen = torch.Generator().manual_seed(1)
    p = _leaf(p_form, _simplex(gen, (2, 4)))
    q = _leaf(q_form, _simplex(gen, (2, 4)))
    assert torch.autograd.gradcheck(
        lambda a, b: f(_wrap(p_form, a), _wrap(q_form, b), validate=False), (p, q)
    )


@pytest.mark.parametrize("measure", list(PQ_MEASURES))
def test_gradcheck_labels_and_broadcasting(measure):
    f = PQ_MEASURES[measure]
    gen = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 3, 4])
    z = torch.randn(3, 5, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: f(ce.Labels(y), ce.Logits(t), base=2), (z,))
    # p of shape (1, 5) against q of shape (3, 5): broadcast over the batch.
    p = _simplex(gen, (1, 5)).requires_grad_(True)
    q = _simplex(gen, (3, 5)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: f(a, b, validate=False), (p, q))


# ----------------------------------------------------------------------------- exact KL gradient


@pytest.mark.parametrize("measure", [ce.kl_divergence, ce.cross_entropy])
def test_kl_gradient_wrt_logits_is_softmax_minus_p(measure):
    gen = torch.Generator().manual_seed(3)
    z = (torch.randn(4, 7, generator=gen, dtype=F64) * 3).requires_grad_(True)
    p = _simplex(gen, (4, 7))
    p[0, :3] = 0.0
    p = p / p.sum(-1, keepdim=True)
    measure(p, ce.Logits(z)).sum().backward()
    # Hand derivation: d/dz [sum_i p_i log p_i - sum_i p_i log_softmax(z)_i] = softmax(z) - p
    # (given sum p = 1, exact to its rounding).
    expected = torch.softmax(z.detach(), -1) - p
    torch.testing.assert_close(z.grad, expected, rtol=0, atol=4e-16)


def test_kl_gradient_wrt_logits_with_masked_classes():
    z = torch.tensor([[0.0, 1.0, -INF, 2.0], [-INF, -INF, 5.0, 0.0]], dtype=F64, requires_grad=True)
    p = torch.tensor([[0.25, 0.25, 0.0, 0.5], [0.0, 0.0, 0.5, 0.5]], dtype=F64)
    d = ce.kl_divergence(p, ce.Logits(z))
    assert torch.isfinite(d).all()
    d.sum().backward()
    expected = torch.softmax(z.detach(), -1) - p
    assert torch.isfinite(z.grad).all()
    torch.testing.assert_close(z.grad, expected, rtol=0, atol=4e-16)
    assert (z.grad[0, 2] == 0) and (z.grad[1, :2] == 0).all()


def test_kl_gradient_wrt_logits_with_labels():
    z = torch.tensor([[0.0, 1.0, -INF], [3.0, -1.0, 0.5]], dtype=F64, requires_grad=True)
    y = torch.tensor([1, 0])
    ce.kl_divergence(ce.Labels(y), ce.Logits(z)).sum().backward()
    expected = torch.softmax(z.detach(), -1) - torch.nn.functional.one_hot(y, 3).to(F64)
    torch.testing.assert_close(z.grad, expected, rtol=0, atol=4e-16)


def test_kl_gradient_wrt_logits_float32():
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(8, 50, generator=gen).requires_grad_(True)
    p = _simplex(gen, (8, 50)).float()
    ce.kl_divergence(p, ce.Logits(z)).sum().backward()
    expected = torch.softmax(z.detach().double(), -1) - p.double()
    torch.testing.assert_close(z.grad.double(), expected, rtol=0, atol=2e-7)


def test_kl_gradient_through_half_precision_logits():
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(4, 9, generator=gen).to(torch.bfloat16).requires_grad_(True)
    p = _simplex(gen, (4, 9)).to(torch.bfloat16)
    d = ce.kl_divergence(p, ce.Logits(z))
    assert d.dtype == torch.float32
    d.sum().backward()
    assert z.grad.dtype == torch.bfloat16
    expected = torch.softmax(z.detach().double(), -1) - p.double()
    torch.testing.assert_close(z.grad.double(), expected, rtol=0, atol=2**-8)


# ----------------------------------------------------------------------------- finiteness


def _grad(f, x):
    x = x.clone().requires_grad_(True)
    out = f(x)
    out.sum().backward()
    return out.detach(), x.grad


ZERO_P = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=F64)
Q = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.0, 0.5, 0.0]], dtype=F64)
MASKED_Z = torch.tensor([[0.0, 1.0, -INF, -INF], [2.0, -INF, 0.0, -INF]], dtype=F64)


@pytest.mark.parametrize(
    "name", ["entropy", "cross_entropy", "kl_divergence", "js_divergence", "decompose"]
)
def test_torch_grad_finite_at_zero_probabilities_on_the_data_side(name):
    f = ce.entropy if name == "entropy" else (lambda m: lambda p: m(p, Q))(PQ_MEASURES[name])
    out, g = _grad(f, ZERO_P)
    assert torch.isfinite(out).all()
    assert torch.isfinite(g).all(), g


@pytest.mark.parametrize("name", list(PQ_MEASURES))
def test_torch_grad_finite_at_zero_model_probabilities_where_p_is_zero(name):
    f = PQ_MEASURES[name]
    p = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]], dtype=F64)
    q = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], dtype=F64)
    out, g = _grad(lambda t: f(p, t), q)
    assert torch.isfinite(out).all() and torch.isfinite(g).all(), g


@pytest.mark.parametrize("name", ["entropy", *PQ_MEASURES])
def test_torch_grad_finite_at_masked_logits(name):
    p = torch.tensor([[0.3, 0.7, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]], dtype=F64)
    if name == "entropy":
        f = lambda z: ce.entropy(ce.Logits(z))  # noqa: E731
    else:
        f = (lambda m: lambda z: m(p, ce.Logits(z)))(PQ_MEASURES[name])
    out, g = _grad(f, MASKED_Z)
    assert torch.isfinite(out).all()
    assert torch.isfinite(g).all(), g
    assert (g[torch.isinf(MASKED_Z)] == 0).all()
    # Logits on the data side too, and labels.
    if name != "entropy":
        out, g = _grad(lambda z: PQ_MEASURES[name](ce.Logits(z), ce.Logits(MASKED_Z)), MASKED_Z)
        assert torch.isfinite(out).all() and torch.isfinite(g).all(), g
        out, g = _grad(
            lambda z: PQ_MEASURES[name](ce.Labels(torch.tensor([1, 0])), ce.Logits(z)), MASKED_Z
        )
        assert torch.isfinite(out).all() and torch.isfinite(g).all(), g


def test_torch_grad_finite_for_log_probs_with_neg_inf():
    lp = torch.log(ZERO_P)
    out, g = _grad(lambda t: ce.entropy(ce.LogProbs(t)), lp)
    assert torch.isfinite(out).all() and torch.isfinite(g).all(), g
    out, g = _grad(lambda t: ce.kl_divergence(ce.LogProbs(t), Q), lp)
    assert torch.isfinite(out).all() and torch.isfinite(g).all(), g


def test_torch_grad_of_identity_parts_agree():
    # H = D + S with S independent of q: dH/dz == dD/dz (the reason CE is the loss).
    gen = torch.Generator().manual_seed(6)
    p = _simplex(gen, (3, 6))
    z = torch.randn(3, 6, generator=gen, dtype=F64, requires_grad=True)
    (gh,) = torch.autograd.grad(ce.cross_entropy(p, ce.Logits(z)).sum(), z)
    (gd,) = torch.autograd.grad(ce.kl_divergence(p, ce.Logits(z)).sum(), z)
    torch.testing.assert_close(gh, gd, rtol=0, atol=4e-16)


# ----------------------------------------------------------------------------- jax


@pytest.fixture(scope="module")
def jax_x64():
    jax = pytest.importorskip("jax")
    with jax.enable_x64(True):
        yield jax


def test_jax_kl_gradient_wrt_logits_is_softmax_minus_p(jax_x64):
    jax, jnp = jax_x64, jax_x64.numpy
    z = jnp.asarray([[0.0, 1.0, -INF, 2.0], [3.0, -1.0, 0.5, 0.25]])
    p = jnp.asarray([[0.25, 0.25, 0.0, 0.5], [0.1, 0.2, 0.3, 0.4]])
    g = jax.grad(lambda t: ce.kl_divergence(p, ce.Logits(t)).sum())(z)
    assert g.dtype == jnp.float64
    expected = jax.nn.softmax(z, axis=-1) - p
    np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=0, atol=4e-16)


def _jax_measure(name, jnp):
    if name == "decompose":
        return lambda a, b, **kw: jnp.stack(ce.decompose(a, b, **kw))
    return PQ_MEASURES[name]


@pytest.mark.parametrize("name", ["entropy", *PQ_MEASURES])
def test_jax_grad_finite_at_the_edges(jax_x64, name):
    # Under jax.jit with validate=False (jit compiles once: cheaper than eager here).
    jax, jnp = jax_x64, jax_x64.numpy
    p = jnp.asarray(ZERO_P.numpy())
    q = jnp.asarray(Q.numpy())
    z = jnp.asarray(MASKED_Z.numpy())
    pz = jnp.asarray([[0.3, 0.7, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]])
    if name == "entropy":
        fp = lambda t: ce.entropy(t, validate=False).sum()  # noqa: E731
        fz = lambda t: ce.entropy(ce.Logits(t), validate=False).sum()  # noqa: E731
    else:
        m = _jax_measure(name, jnp)
        fp = lambda t: m(t, q, validate=False).sum()  # noqa: E731
        fz = lambda t: m(pz, ce.Logits(t), validate=False).sum()  # noqa: E731
    for f, x in ((fp, p), (fz, z)):
        value, g = jax.jit(jax.value_and_grad(f))(x)
        assert np.isfinite(np.asarray(value)), name
        assert np.isfinite(np.asarray(g)).all(), (name, g)


def test_jax_grad_matches_torch(jax_x64):
    jax, jnp = jax_x64, jax_x64.numpy
    gen = torch.Generator().manual_seed(7)
    p = _simplex(gen, (3, 5))
    q = _simplex(gen, (3, 5))
    pj, qj = jnp.asarray(p.numpy()), jnp.asarray(q.numpy())
    for f in (ce.js_divergence, ce.cross_entropy, ce.kl_divergence):
        _, gt = _grad(lambda t: f(p, t, validate=False), q)  # noqa: B023
        gj = jax.jit(jax.grad(lambda t: f(pj, t, validate=False).sum()))(qj)  # noqa: B023
        np.testing.assert_allclose(np.asarray(gj), gt.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("keepdims", [False, True])
def test_gradients_flow_through_keepdims_and_every_decompose_part(keepdims):
    # _finish/decompose pass results through xp.asarray: that must not detach them.
    gen = torch.Generator().manual_seed(8)
    p = _simplex(gen, (3, 5)).requires_grad_(True)
    z = torch.randn(3, 5, generator=gen, dtype=F64, requires_grad=True)
    outs = [
        ce.entropy(p, keepdims=keepdims),
        ce.cross_entropy(p, ce.Logits(z), keepdims=keepdims),
        ce.kl_divergence(p, ce.Logits(z), keepdims=keepdims),
        ce.js_divergence(p, ce.Logits(z), keepdims=keepdims),
        *ce.decompose(p, ce.Logits(z), keepdims=keepdims),
    ]
    for i, out in enumerate(outs):
        assert out.requires_grad, i
        gp, _ = torch.autograd.grad(out.sum(), (p, z), allow_unused=True, retain_graph=True)
        assert gp is not None and torch.isfinite(gp).all() and gp.abs().sum() > 0, i
    # d S / d p_i = -(log p_i + 1) (hand derivation).
    (gp,) = torch.autograd.grad(ce.decompose(p, ce.Logits(z), keepdims=keepdims).entropy.sum(), p)
    torch.testing.assert_close(gp, -(torch.log(p.detach()) + 1), rtol=1e-14, atol=1e-15)

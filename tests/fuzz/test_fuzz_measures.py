"""Property fuzzing of the measures: entropy, cross_entropy, kl_divergence, js_divergence,
decompose, over the forms Logits / LogProbs / Labels and numpy, torch and JAX arrays.

Valid input must give finite (or, where the maths says so, +inf) results, never NaN;
KL and JS are never negative and JS is at most log 2; H = D + S to rounding; float64
results agree with scipy.stats.entropy / scipy.special.rel_entr.  Invalid input must
raise only ValueError or TypeError.  Profiles: see conftest.py.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
LOG2 = math.log(2.0)
DTYPES = [np.float16, np.float32, np.float64]
MEASURES2 = [ce.cross_entropy, ce.kl_divergence, ce.js_divergence]
ALLOWED = (ValueError, TypeError)

# Probability masses, including zeros and subnormals; normalised in float64 and then
# cast to the test dtype.
masses = st.one_of(
    st.just(0.0),
    st.floats(min_value=5e-324, max_value=1e-300),
    st.floats(min_value=1e-6, max_value=1e6),
)


@st.composite
def distributions(draw, k=None, dtype=np.float64, batch=None):
    """A (batch..., K) array of rows summing to 1 in ``dtype`` (re-normalised after the cast)."""
    k = draw(st.integers(1, 12)) if k is None else k
    batch = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)) if batch is None else batch
    raw = draw(hnp.arrays(np.float64, (*batch, k), elements=masses))
    raw[..., 0] += 1.0  # a row with some mass
    p = raw / raw.sum(-1, keepdims=True)
    p = p.astype(dtype)
    # renormalise in the dtype so the row sums to 1 within its own rounding
    p = (p / p.sum(-1, keepdims=True, dtype=np.float64)).astype(dtype)
    return p


def as_float64(x):
    return np.asarray(x, dtype=np.float64)


def assert_not_nan(x, what):
    a = as_float64(x)
    assert not np.isnan(a).any(), f"{what} gave NaN: {a}"


@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_identity_signs_and_finiteness(data, dtype):
    p = data.draw(distributions(dtype=dtype))
    q = data.draw(distributions(k=p.shape[-1], dtype=dtype, batch=p.shape[:-1]))
    s = as_float64(ce.entropy(p))
    h = as_float64(ce.cross_entropy(p, q))
    d = as_float64(ce.kl_divergence(p, q))
    j = as_float64(ce.js_divergence(p, q))
    dec = ce.decompose(p, q)
    for name, v in [("entropy", s), ("cross_entropy", h), ("kl", d), ("js", j)]:
        assert_not_nan(v, name)
    assert np.isfinite(s).all()
    assert (s >= 0).all()
    assert (d >= 0).all(), d
    assert np.isfinite(j).all() and (j >= 0).all(), j
    assert (j <= LOG2 * (1 + 1e-6)).all(), j
    np.testing.assert_allclose(as_float64(dec.cross_entropy), h, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(as_float64(dec.kl_divergence), d, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(as_float64(dec.entropy), s, rtol=1e-6, atol=1e-6)
    fin = np.isfinite(h)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    gap = np.abs(h[fin] - (d + s)[fin])
    assert (gap <= tol * (1 + np.abs(h[fin]))).all(), (h, d, s)
    assert (np.isinf(h) == np.isinf(d)).all()


@given(data=st.data())
def test_float64_against_scipy(data):
    p = data.draw(distributions(batch=()))
    q = data.draw(distributions(k=p.shape[-1], batch=()))
    np.testing.assert_allclose(ce.entropy(p), scipy.stats.entropy(p), rtol=1e-12, atol=1e-13)
    ref_kl = scipy.special.rel_entr(p, q).sum()
    kl = float(ce.kl_divergence(p, q))
    if math.isinf(ref_kl):
        assert kl == math.inf
    else:
        np.testing.assert_allclose(kl, ref_kl, rtol=1e-10, atol=1e-12)
    # 2 * JS = sum p log(2p / (p + q)) + ...; with s = p + q unhalved, so that a subnormal
    # mixture does not underflow in the reference itself
    tot = p + q
    ref_js = 0.25 * (
        scipy.special.rel_entr(2 * p, tot).sum() + scipy.special.rel_entr(2 * q, tot).sum()
    )
    np.testing.assert_allclose(float(ce.js_divergence(p, q)), ref_js, rtol=1e-9, atol=1e-12)
    base = data.draw(st.sampled_from([2, 10, math.e, 1.5]))
    np.testing.assert_allclose(
        ce.entropy(p, base=base), scipy.stats.entropy(p, base=base), rtol=1e-12, atol=1e-13
    )


@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_forms_logits_logprobs_labels(data, dtype):
    k = data.draw(st.integers(1, 10))
    n = data.draw(st.integers(1, 4))
    z = data.draw(
        hnp.arrays(
            np.float64,
            (n, k),
            elements=st.one_of(st.floats(-50, 50), st.just(-np.inf)),
        )
    )
    z[:, 0] = np.where(np.isinf(z[:, 0]), 0.0, z[:, 0])  # every row has a finite logit
    z = z.astype(dtype)
    lp = scipy.special.log_softmax(z.astype(np.float64), axis=-1)
    y = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    ref_ce = -lp[np.arange(n), y]
    h = as_float64(ce.cross_entropy(ce.Labels(y), ce.Logits(z)))
    d = as_float64(ce.kl_divergence(ce.Labels(y), ce.Logits(z)))
    assert_not_nan(h, "cross_entropy(Labels, Logits)")
    assert_not_nan(d, "kl_divergence(Labels, Logits)")
    assert (d >= 0).all()
    tol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(h, ref_ce, rtol=tol, atol=tol)
    np.testing.assert_allclose(d, ref_ce, rtol=tol, atol=tol)
    # LogProbs of the same distribution
    h2 = as_float64(ce.cross_entropy(ce.Labels(y), ce.LogProbs(lp.astype(dtype))))
    assert_not_nan(h2, "cross_entropy(Labels, LogProbs)")
    s = as_float64(ce.entropy(ce.Logits(z)))
    assert_not_nan(s, "entropy(Logits)")
    assert np.isfinite(s).all() and (s >= -1e-6).all()
    j = as_float64(ce.js_divergence(ce.Logits(z), ce.LogProbs(lp.astype(dtype))))
    assert_not_nan(j, "js_divergence(Logits, LogProbs)")
    assert (j >= 0).all() and (j <= LOG2 * (1 + 1e-6)).all()
    kk = as_float64(ce.kl_divergence(ce.Logits(z), ce.Logits(z)))
    assert_not_nan(kk, "kl(Logits z, Logits z)")
    assert (kk >= 0).all()


@given(
    k=st.sampled_from([1, 2, 100_000]),
    dtype=st.sampled_from(DTYPES),
    batch=st.sampled_from([(), (0,), (2,)]),
)
def test_shapes_huge_axis_and_zero_size_batch(k, dtype, batch):
    p = np.full((*batch, k), 1.0 / k, dtype=dtype)
    p = (p / p.sum(-1, keepdims=True, dtype=np.float64)).astype(dtype)
    try:
        s = as_float64(ce.entropy(p))
        j = as_float64(ce.js_divergence(p, p))
        d = as_float64(ce.kl_divergence(p, p))
    except ALLOWED:
        # float16 rows of 100 000 classes may not sum to 1 in their own dtype; that must
        # be refused cleanly, never with another exception
        assume(False)
    assert s.shape == batch and j.shape == batch
    assert not np.isnan(s).any() and not np.isnan(j).any() and not np.isnan(d).any()
    # against scipy on the same (rounded) values; float16 masses of 1e-5 are subnormal
    # (scipy.stats.entropy would renormalise; the measure takes the row as given)
    ref = -scipy.special.xlogy(p.astype(np.float64), p.astype(np.float64)).sum(-1)
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)
    assert (d >= 0).all() and (j >= 0).all()


@given(data=st.data())
def test_subnormal_rows(data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    tiny = np.finfo(dtype).smallest_subnormal
    k = data.draw(st.integers(2, 6))
    p = np.zeros(k, dtype=dtype)
    q = np.zeros(k, dtype=dtype)
    i, j = data.draw(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)))
    p[i] = 1.0
    q[j] = 1.0
    extra = data.draw(st.integers(1, 4))
    p[(i + 1) % k] = tiny * extra
    p[i] -= p[(i + 1) % k]
    for name, f in [("kl", ce.kl_divergence), ("js", ce.js_divergence), ("ce", ce.cross_entropy)]:
        v = float(f(p, q))
        assert not math.isnan(v), f"{name}({p}, {q}) is NaN"
        assert v >= 0, f"{name}({p}, {q}) = {v}"
    js = float(ce.js_divergence(p, q))
    assert js <= LOG2 * (1 + 1e-6)
    assert js == pytest.approx(float(ce.js_divergence(q, p)), rel=1e-6, abs=1e-300)
    # a subnormal-only mixture: both masses tiny relative to 1 but the JS must stay sane
    js_self = float(ce.js_divergence(p, p))
    assert js_self >= 0 and js_self < 1e-6


@given(data=st.data())
def test_lists_and_other_backends(data):
    p = data.draw(distributions(batch=()))
    q = data.draw(distributions(k=p.shape[-1], batch=()))
    ref = {f.__name__: float(f(p, q)) for f in MEASURES2}
    for f in MEASURES2:
        v = float(f(p.tolist(), q.tolist()))
        assert v == pytest.approx(ref[f.__name__], rel=1e-12, abs=1e-14) or (
            math.isinf(v) and math.isinf(ref[f.__name__])
        )
    if HAS_TORCH:
        import torch

        for dt in [torch.float16, torch.bfloat16, torch.float32, torch.float64]:
            pt = torch.tensor(p).to(dt)
            qt = torch.tensor(q).to(dt)
            pt = pt / pt.double().sum().to(dt)
            qt = qt / qt.double().sum().to(dt)
            for f in MEASURES2:
                try:
                    out = f(pt, qt)
                except ALLOWED:
                    continue  # rounding to half may break the sum; a clean refusal is fine
                assert isinstance(out, torch.Tensor)
                assert not torch.isnan(out).any(), (f.__name__, dt, pt, qt)
                if f is not ce.cross_entropy:
                    assert (out >= 0).all()
    if HAS_JAX:
        import jax.numpy as jnp

        pj = jnp.asarray(p.astype(np.float32))
        qj = jnp.asarray(q.astype(np.float32))
        pj = pj / pj.sum()
        qj = qj / qj.sum()
        for f in MEASURES2:
            try:
                out = np.asarray(f(pj, qj))
            except ALLOWED:
                continue
            assert not np.isnan(out).any(), (f.__name__, pj, qj)
            if f is not ce.cross_entropy:
                assert (out >= 0).all()


# ---------------------------------------------------------------- invalid input

bad_scalars = st.sampled_from([np.nan, -np.inf, np.inf, -0.5, 2.0, -1e-300])


@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_bad_probabilities_raise_value_error(data, dtype):
    p = data.draw(distributions(batch=(), dtype=dtype))
    bad = p.copy()
    i = data.draw(st.integers(0, p.shape[-1] - 1))
    bad[i] = data.draw(bad_scalars)
    q = data.draw(distributions(k=p.shape[-1], batch=(), dtype=dtype))
    for call in [
        lambda: ce.entropy(bad),
        lambda: ce.cross_entropy(bad, q),
        lambda: ce.kl_divergence(q, bad),
        lambda: ce.js_divergence(bad, q),
        lambda: ce.decompose(p, bad),
    ]:
        with pytest.raises(ValueError):
            call()


junk = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.just([]),
    st.just([[0.5, 0.5], [1.0]]),
    st.just(np.array(["a", "b"])),
    st.just(np.array([1, 0])),
    st.just(np.array([True, False])),
    st.just(np.array([1 + 0j, 0j])),
    st.just(np.zeros((2, 0))),
    st.just(np.float64(1.0)),
    st.just(np.ma.masked_array([0.5, 0.5], mask=[False, True])),
    st.just(object()),
    st.just({"a": 1}),
)


@given(
    p=junk,
    q=junk,
    base=st.sampled_from([None, 2, 0, -1, 1, np.nan, "e", np.inf]),
    axis=st.sampled_from([-1, 0, 5, -7, 1.5, None]),
)
def test_junk_raises_only_value_or_type_error(p, q, base, axis):
    good = np.array([0.25, 0.75])
    for call in [
        lambda: ce.entropy(p, base=base, axis=axis),
        lambda: ce.entropy(p),
        lambda: ce.cross_entropy(p, good),
        lambda: ce.kl_divergence(good, q),
        lambda: ce.js_divergence(p, q),
        lambda: ce.decompose(good, good, base=base, axis=axis),
        lambda: ce.cross_entropy(ce.Labels(p), ce.Logits(good)),
        lambda: ce.kl_divergence(good, ce.LogProbs(q)),
    ]:
        try:
            out = call()
        except ALLOWED:
            continue
        # accepted: then it must be a sane number (e.g. an all-finite 0-d answer)
        for v in np.atleast_1d(np.asarray(out, dtype=np.float64)).ravel():
            assert not math.isnan(v)


@given(data=st.data())
def test_labels_out_of_range_or_wrong_dtype(data):
    k = data.draw(st.integers(1, 6))
    z = np.zeros((3, k))
    y = np.array(data.draw(st.lists(st.integers(-5, 10), min_size=3, max_size=3)))
    in_range = ((y >= 0) & (y < k)).all()
    dtype = data.draw(st.sampled_from(["int64", "int32", "uint8", "int8", "float64", "bool"]))
    try:
        yy = y.astype(dtype)
    except (OverflowError, ValueError):
        return
    if dtype == "uint8" and (y < 0).any():
        return  # wrapped; another value
    try:
        out = as_float64(ce.cross_entropy(ce.Labels(yy), ce.Logits(z)))
    except ALLOWED:
        assert not in_range or dtype in ("float64", "bool")
        return
    assert in_range and dtype not in ("float64",), (y, dtype, out)
    np.testing.assert_allclose(out, math.log(k), rtol=1e-12)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@given(dtype=st.sampled_from(["int64", "int32", "uint8", "int16"]), k=st.integers(1, 5))
def test_torch_integer_labels(dtype, k):
    import torch

    y = torch.arange(k).to(getattr(torch, dtype))
    z = torch.zeros(k, k)
    out = ce.cross_entropy(ce.Labels(y), ce.Logits(z))
    torch.testing.assert_close(out, torch.full((k,), math.log(k)), rtol=1e-6, atol=1e-6)


@given(k=st.integers(1, 5))
def test_masked_arrays_are_refused_or_respected(k):
    p = np.ma.masked_array(np.full(k, 1.0 / k), mask=[i == 0 for i in range(k)])
    try:
        out = float(ce.entropy(p))
    except ALLOWED:
        return
    # if accepted, masking must not silently be ignored into a wrong finite number
    assert not math.isnan(out)
    unmasked = math.log(k - 1) if k > 1 else 0.0
    assert out == pytest.approx(math.log(k)) or out == pytest.approx(unmasked)

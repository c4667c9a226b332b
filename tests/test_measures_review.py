"""Findings of the hostile review of the measures (issue 11), one test per finding.

Expected values come from hand derivations (in the comments, checked with mpmath) or from
scipy on float64 copies of the same inputs, never from this library.
"""

from __future__ import annotations

import math
import re

import mpmath
import numpy as np
import pytest
import scipy.special

import crossentropy as ce

U = np.array([0.5, 0.5])
MEASURES_PQ = [ce.cross_entropy, ce.kl_divergence, ce.js_divergence, ce.decompose]
ALL = [ce.entropy, *MEASURES_PQ]
LABEL_MEASURES = [ce.cross_entropy, ce.kl_divergence, ce.js_divergence, ce.decompose]


def call(f, p, q=U, **kw):
    return f(p, **kw) if f is ce.entropy else f(p, q, **kw)


def esc(text: str) -> str:
    return re.escape(text)


def first(result):
    """The cross-entropy of a Decomposition, the result itself otherwise."""
    return result[0] if isinstance(result, ce.Decomposition) else result


def js_oracle(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JS in float64 by scipy's rel_entr: float32 subnormals are normal numbers there."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    m = (p + q) / 2
    return 0.5 * (scipy.special.rel_entr(p, m).sum(-1) + scipy.special.rel_entr(q, m).sum(-1))


def backend_array(backend: str, values: np.ndarray):
    if backend == "numpy":
        return values
    if backend == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(values.copy())
    jnp = pytest.importorskip("jax.numpy")
    return jnp.asarray(values)


def as_f64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------- 1. JS underflow


def test_js_of_a_subnormal_against_zero_is_tiny_not_log2():
    # p = (1, 0), q = (1, t), t = 5e-324: m = (1, t/2), so
    # JS = 1/2 [1 log 1 + 0] + 1/2 [1 log 1 + t log(t / (t/2))] = t log(2) / 2 ~ 1.7e-324,
    # which rounds to 0 or to the one subnormal 4.9e-324.  It was log 2 (m underflowed).
    t = 5e-324
    exact = mpmath.mpf(t) * mpmath.log(2) / 2
    assert float(exact) in (0.0, t)
    for p, q in [([1.0, 0.0], [1.0, t]), ([1.0, t], [1.0, 0.0])]:
        js = ce.js_divergence(p, q)
        assert 0.0 <= js <= t


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_js_of_float32_softmax_rows_with_subnormals_matches_float64(backend):
    # Two float32 softmax rows over 50,000 classes with logit std 15 and a perturbation of
    # 0.01: a few percent of the entries are float32 subnormals, some exactly 0.  The
    # divergence (1e-8 to 1e-5) was log 2 for most rows.
    rng = np.random.default_rng(11)
    z = rng.normal(0.0, 15.0, size=(4, 50_000))
    z2 = z + 0.01 * rng.normal(size=z.shape)

    def softmax32(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)

    p, q = softmax32(z), softmax32(z2)
    tiny = np.finfo(np.float32).tiny
    assert ((p > 0) & (p < tiny)).any() and (p == 0).any()
    expected = js_oracle(p, q)
    assert (expected < 1e-4).all()
    got = as_f64(ce.js_divergence(backend_array(backend, p), backend_array(backend, q)))
    # Each class's term is positive and accurate to a few float32 roundings.
    np.testing.assert_allclose(got, expected, rtol=2e-5)


def test_js_differential_against_float64_on_random_float32_rows():
    rng = np.random.default_rng(3)
    for scale in (1.0, 10.0, 40.0):
        z = rng.normal(0.0, scale, size=(16, 300))
        z2 = z + rng.normal(0.0, 0.5, size=z.shape)
        p = scipy.special.softmax(z, axis=-1).astype(np.float32)
        q = scipy.special.softmax(z2, axis=-1).astype(np.float32)
        np.testing.assert_allclose(ce.js_divergence(p, q), js_oracle(p, q), rtol=2e-5)


def test_js_mpmath_oracle_on_close_and_far_float64_rows():
    # Far (q_1 << p_1) and close rows in float64, against a 50-digit evaluation.
    mpmath.mp.dps = 50
    rows = [
        ([1e-300, 1.0 - 1e-300], [0.5, 0.5]),
        ([0.3, 0.7], [0.3 + 1e-12, 0.7 - 1e-12]),
        ([1e-200, 1.0], [1e-10, 1.0 - 1e-10]),
    ]
    for p, q in rows:
        exact = 0
        for a, b in zip(p, q, strict=True):
            a, b = mpmath.mpf(a), mpmath.mpf(b)
            m = (a + b) / 2
            exact += (a * mpmath.log(a / m) + b * mpmath.log(b / m)) / 2
        got = ce.js_divergence(np.array(p), np.array(q))
        assert got == pytest.approx(float(exact), rel=1e-12, abs=1e-300)


def test_js_gradients_stay_finite_at_zeros_and_subnormals():
    torch = pytest.importorskip("torch")
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor(
        [[1.0 - 5e-324, 5e-324, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True
    )
    ce.js_divergence(p, q, validate=False).sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()
    z = torch.tensor([[0.0, -math.inf, 3.0], [-800.0, 0.0, 1.0]], requires_grad=True)
    ce.js_divergence(ce.Logits(z), ce.Logits(z.detach() + 0.1)).sum().backward()
    assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------- 2. masked


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_masked_arrays_are_refused(f):
    masked = np.ma.array([0.5, 0.5, 0.3], mask=[0, 0, 1])
    with pytest.raises(TypeError, match=esc("p is a numpy masked array, which is not supported")):
        call(f, masked, np.full(3, 1 / 3))
    if f is not ce.entropy:
        with pytest.raises(TypeError, match=esc("q is a numpy masked array")):
            f(np.full(3, 1 / 3), ce.Logits(masked))
    with pytest.raises(TypeError, match=esc("p is a numpy masked array")):
        call(f, ce.Labels(np.ma.array([0, 1], mask=[0, 1])), np.full((2, 3), 1 / 3))


# ----------------------------------------------------------------------------- 3. sums


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_normalised_float32_rows_on_a_non_last_axis_pass_the_check(backend):
    # Normalised in float64, then rounded to float32: each column sums to 1 within
    # 1e-9 (exactly, in float64), but NumPy's term-by-term float32 sum along axis 0 gave
    # 0.99999267 and the check refused it.  scipy gives the expected entropy.
    rng = np.random.default_rng(0)
    k = 70_000
    p64 = rng.random((k, 3))
    p = (p64 / p64.sum(0, keepdims=True)).astype(np.float32)
    assert np.all(np.abs(p.sum(0, dtype=np.float64) - 1) < 1e-8)
    expected = scipy.special.entr(p.astype(np.float64)).sum(0)
    got = as_f64(ce.entropy(backend_array(backend, p), axis=0))
    np.testing.assert_allclose(got, expected, rtol=2e-6)
    got = as_f64(ce.kl_divergence(backend_array(backend, p), backend_array(backend, p), axis=0))
    np.testing.assert_allclose(got, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- 4. label dtypes


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8"])
@pytest.mark.parametrize("f", LABEL_MEASURES, ids=lambda f: f.__name__)
def test_torch_labels_of_every_integer_dtype(f, dtype):
    torch = pytest.importorskip("torch")
    q = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    y = torch.tensor([1, 2], dtype=getattr(torch, dtype))
    # -log q[y]: -log 0.5 and -log 0.5.
    expected = [math.log(2.0), math.log(2.0)]
    if f is ce.js_divergence:
        # Point mass e_y against q: JS = 1/2 log(2 / (1 + q_y)) + 1/2 sum_i q_i log(2 q_i
        # / (q_i + [i = y])), by hand for q_y = 1/2 in both rows.
        def js(row, y):
            m = [(q_i + (i == y)) / 2 for i, q_i in enumerate(row)]
            s = math.log(1 / m[y])
            s += sum(q_i * math.log(q_i / m_i) for q_i, m_i in zip(row, m, strict=True) if q_i > 0)
            return s / 2

        expected = [js([0.5, 0.5, 0.0], 1), js([0.2, 0.3, 0.5], 2)]
    got = first(f(ce.Labels(y), q))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-14)
    np_got = first(f(ce.Labels(y.numpy()), q.numpy()))
    np.testing.assert_allclose(np_got, expected, rtol=1e-14)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_small_integer_labels_are_checked_on_their_value(backend):
    # uint8 200 with 150 classes is out of range (not wrapped into it); with 201 classes
    # it is class 200.  int8 -3 is negative, never class 253.  uint64 2**63 + 5 does not
    # wrap to a negative or small int64.
    q150 = np.full((1, 150), 1 / 150)
    q201 = np.full((1, 201), 1 / 201)
    cases = [("uint8", 200, q150), ("int8", -3, q150), ("uint8", 156, q150)]
    if backend == "numpy":
        cases.append(("uint64", 2**63 + 5, q150))
    for dtype, value, q in cases:
        y = backend_array(backend, np.array([value], dtype=dtype))
        with pytest.raises(
            ValueError, match=esc(f"p (labels) must lie in [0, 150): found {value} at index (0,)")
        ):
            ce.cross_entropy(ce.Labels(y), backend_array(backend, q))
    y = backend_array(backend, np.array([200], dtype="uint8"))
    got = as_f64(ce.cross_entropy(ce.Labels(y), backend_array(backend, q201)))
    np.testing.assert_allclose(got, [math.log(201)], rtol=1e-14)


# ----------------------------------------------------------------------------- 5. unchecked


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("f", LABEL_MEASURES, ids=lambda f: f.__name__)
def test_out_of_range_labels_without_validation_give_nan(f, backend):
    # NumPy raised IndexError; torch read another class.  Now the rows are NaN everywhere.
    q = np.array([[0.25, 0.75], [0.5, 0.5], [0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    y = np.array([1, 2, -1, 0], dtype=np.int32)
    got = first(f(ce.Labels(backend_array(backend, y)), backend_array(backend, q), validate=False))
    got = as_f64(got)
    assert np.isnan(got[1]) and np.isnan(got[2])
    assert np.isfinite(got[[0, 3]]).all()
    if f in (ce.cross_entropy, ce.kl_divergence, ce.decompose):
        np.testing.assert_allclose(got[[0, 3]], [-math.log(0.75), -math.log(0.9)], rtol=1e-6)


# ----------------------------------------------------------------------------- 6. errors


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_a_string_is_not_an_array(f):
    with pytest.raises(TypeError, match=esc("p must be an array of numbers, got the string 'abc'")):
        call(f, "abc")
    if f is not ce.entropy:
        with pytest.raises(
            TypeError, match=esc("q must be an array of numbers, got the string 'abc'")
        ):
            f(U, "abc")


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("value", "what"),
    [
        (["0.5", "0.5"], "strings"),
        ([True, False], "booleans"),
        ([0.5 + 0j, 0.5], "complex numbers"),
        ([None, 1.0], "objects"),
    ],
)
def test_lists_of_non_numbers_are_refused(f, value, what):
    with pytest.raises(
        TypeError, match=esc(f"p must be an array of real numbers, got {what}: {value!r}")
    ):
        call(f, value)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_ragged_lists_are_refused(f):
    with pytest.raises(ValueError, match=esc("p is ragged: its nested sequences differ in length")):
        call(f, [[0.5, 0.5], [1.0]])
    if f is not ce.entropy:
        with pytest.raises(ValueError, match=esc("q is ragged")):
            f(U, ce.Logits([[0.0, 0.0], [1.0]]))


def test_huge_python_int_labels_are_refused():
    with pytest.raises(
        TypeError, match=esc("p must be an array of real numbers, got integers too large for int64")
    ):
        ce.cross_entropy(ce.Labels([2**70]), [[0.5, 0.5]])
    with pytest.raises(ValueError, match=esc("p (labels) must lie in [0, 2): found -100")):
        ce.cross_entropy(ce.Labels(-100), [0.5, 0.5])


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("value", [None, 1, 0, "yes", 1.0, [True]])
def test_flags_must_be_bool(f, value):
    with pytest.raises(TypeError, match=esc(f"keepdims must be True or False, got {value!r}")):
        call(f, U, keepdims=value)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("value", [1, 0, "yes", 1.0, [True]])
def test_validate_must_be_a_bool_or_none(f, value):
    # None is the default (issue 12: one meaning everywhere): check where it is free.
    with pytest.raises(
        TypeError, match=esc(f"validate must be True, False or None, got {value!r}")
    ):
        call(f, U, validate=value)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_validate_none_checks_numpy_data(f):
    # Issue 11 found validate=None skipping every check; as the default it checks NumPy.
    bad = np.array([0.7, 0.7])
    with pytest.raises(ValueError, match="sum to 1"):
        call(f, bad, validate=None)
    with pytest.raises(ValueError, match="sum to 1"):
        call(f, bad)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_numpy_bools_are_flags(f):
    kept = first(call(f, U, keepdims=np.True_, validate=np.False_))
    assert np.shape(kept) == (1,)
    if f is ce.entropy:
        assert ce.entropy(ce.Labels([0]), keepdims=np.True_).shape == (1, 1)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("base", [0.5, 0.999, 1, 1.0, 0, -2, math.inf, math.nan])
def test_base_must_exceed_one(f, base):
    # A base in (0, 1) has log(base) < 0: KL and JS came out negative.
    with pytest.raises(ValueError, match=esc(f"base must be a number > 1, got {base!r}")):
        call(f, U, [0.9, 0.1], base=base)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("base", [True, np.True_, 2 + 0j, "2"])
def test_base_must_be_a_real_number(f, base):
    with pytest.raises(TypeError, match=esc(f"base must be a number > 1 or None, got {base!r}")):
        call(f, U, base=base)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_empty_batch_gives_an_empty_result_and_empty_event_axis_raises(f, backend):
    empty = backend_array(backend, np.zeros((0, 3)))
    assert tuple(first(call(f, empty, empty)).shape) == (0,)
    assert tuple(first(call(f, empty, empty, keepdims=True)).shape) == (0, 1)
    no_events = backend_array(backend, np.zeros((2, 0)))
    with pytest.raises(ValueError, match=esc("p has an empty event axis (length 0 along axis -1)")):
        call(f, no_events, no_events)
    if f is not ce.entropy:
        labels = ce.Labels(backend_array(backend, np.zeros(0, dtype=np.int64)))
        assert tuple(first(f(labels, empty)).shape) == (0,)

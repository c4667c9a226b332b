"""Differential tests: the measures against scipy and torch on random and adversarial inputs.

Every expected value here is computed by scipy (``scipy.stats.entropy``,
``scipy.special.entr/rel_entr/xlogy``, ``scipy.spatial.distance.jensenshannon``) or by
torch (``torch.nn.functional.cross_entropy/kl_div``, ``torch.special.entr``) in float64,
on the exact values of the inputs after they were rounded to the dtype under test. The
allowed error for each input dtype is in ``_measures_support.TOLERANCE``.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats
from _measures_support import backends_and_dtypes, make, random_simplex, to_f64, tolerance

import crossentropy as ce

# ----------------------------------------------------------------------------- inputs


def _case(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A named (p, q) pair of float64 probability arrays (event axis last)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name == "random":
        return random_simplex(rng, (6, 17)), random_simplex(rng, (6, 17))
    if name == "random-3d":
        return random_simplex(rng, (3, 4, 9)), random_simplex(rng, (3, 4, 9))
    if name == "p-zeros":  # 0 log 0 = 0 and 0 log(0/q) = 0
        return random_simplex(rng, (8, 12), zeros=0.5), random_simplex(rng, (8, 12))
    if name == "both-zeros":  # q = 0 where p > 0 somewhere: +inf rows
        return (random_simplex(rng, (8, 12), zeros=0.4), random_simplex(rng, (8, 12), zeros=0.4))
    if name == "support":  # q = 0 only where p = 0: finite everywhere
        p = random_simplex(rng, (8, 12), zeros=0.5)
        q = random_simplex(rng, (8, 12))
        q = np.where((p == 0) & (rng.random(p.shape) < 0.5), 0.0, q)
        return p, q / q.sum(-1, keepdims=True)
    if name == "tiny":  # entries far below float32's range, and subnormal ones
        p = random_simplex(rng, (4, 10))
        p[:, :3] = [1e-30, 1e-300, 5e-320]
        q = random_simplex(rng, (4, 10))
        q[:, 1:4] = [1e-200, 1e-310, 1e-40]
        return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    if name == "near-degenerate":  # almost a point mass on both sides
        k = 9
        p = np.full((3, k), 1e-9)
        p[:, 0] = 1 - (k - 1) * 1e-9
        q = np.full((3, k), 1e-6)
        q[:, 0] = 1 - (k - 1) * 1e-6
        return p, q
    if name == "equal":  # D(p || p) = 0, JS(p, p) = 0
        p = random_simplex(rng, (5, 7), zeros=0.3)
        return p, p.copy()
    if name == "peaked":  # concentrated Dirichlet: many very small entries
        return (
            random_simplex(rng, (4, 50), concentration=0.05),
            random_simplex(rng, (4, 50), concentration=0.05),
        )
    if name == "large-K":
        return (
            random_simplex(rng, (1, 60_000), concentration=0.3),
            random_simplex(rng, (1, 60_000), concentration=0.3),
        )
    raise AssertionError(name)


CASES = [
    "random",
    "random-3d",
    "p-zeros",
    "both-zeros",
    "support",
    "tiny",
    "near-degenerate",
    "equal",
    "peaked",
    "large-K",
]


def _inputs(name: str, backend: str, dtype: str):
    """(p, q) in the backend and dtype, and their exact float64 values."""
    p64, q64 = _case(name)
    p, q = make(p64, backend, dtype), make(q64, backend, dtype)
    return p, q, to_f64(p), to_f64(q)


def _scale(p: np.ndarray, q: np.ndarray) -> float:
    """The size of the terms summed: atol is relative to it."""
    with np.errstate(divide="ignore"):
        terms = np.abs(scipy.special.xlogy(p, p)) + np.abs(scipy.special.xlogy(p, q))
    terms = np.where(np.isfinite(terms), terms, 0.0)
    return float(terms.sum(-1).max())


def _check(result, expected: np.ndarray, dtype: str, scale: float) -> None:
    got = to_f64(result)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **tolerance(dtype, scale))


# ----------------------------------------------------------------------------- scipy


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("backend", "dtype"), backends_and_dtypes())
def test_entropy_matches_scipy_entr(name, backend, dtype):
    p, _, p64, _ = _inputs(name, backend, dtype)
    expected = scipy.special.entr(p64).sum(-1)  # scipy: -x log x, 0 at x = 0
    _check(ce.entropy(p), expected, dtype, _scale(p64, p64))


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("backend", "dtype"), backends_and_dtypes())
def test_cross_entropy_matches_scipy_xlogy(name, backend, dtype):
    p, q, p64, q64 = _inputs(name, backend, dtype)
    with np.errstate(divide="ignore"):
        expected = -scipy.special.xlogy(p64, q64).sum(-1)  # scipy: xlogy(0, 0) = 0
    _check(ce.cross_entropy(p, q), expected, dtype, _scale(p64, q64))


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("backend", "dtype"), backends_and_dtypes())
def test_kl_matches_scipy_rel_entr(name, backend, dtype):
    p, q, p64, q64 = _inputs(name, backend, dtype)
    expected = scipy.special.rel_entr(p64, q64).sum(-1)
    _check(ce.kl_divergence(p, q), expected, dtype, _scale(p64, q64))


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("backend", "dtype"), backends_and_dtypes())
def test_js_matches_scipy_jensenshannon(name, backend, dtype):
    p, q, p64, q64 = _inputs(name, backend, dtype)
    scale = _scale(p64, p64) + _scale(q64, q64)
    got = ce.js_divergence(p, q)
    # From scipy.special.rel_entr on the exact inputs: 1/2 D(p || m) + 1/2 D(q || m).
    m = (p64 + q64) / 2
    expected = (scipy.special.rel_entr(p64, m).sum(-1) + scipy.special.rel_entr(q64, m).sum(-1)) / 2
    _check(got, expected, dtype, scale)
    if dtype in ("float64", "float32"):
        # scipy returns the distance sqrt(JS), renormalises its inputs and reduces axis=0
        # by default; renormalising changes nothing beyond float32's rounding here (half
        # precision rows are off 1 by more, so they are compared with rel_entr only).
        distance = scipy.spatial.distance.jensenshannon(p64, q64, axis=-1)
        _check(got, distance**2, dtype, scale)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("backend", "dtype"), backends_and_dtypes())
def test_decompose_matches_scipy(name, backend, dtype):
    p, q, p64, q64 = _inputs(name, backend, dtype)
    h, s, d = ce.decompose(p, q)
    scale = _scale(p64, q64)
    with np.errstate(divide="ignore"):
        _check(h, -scipy.special.xlogy(p64, q64).sum(-1), dtype, scale)
    _check(s, scipy.special.entr(p64).sum(-1), dtype, scale)
    _check(d, scipy.special.rel_entr(p64, q64).sum(-1), dtype, scale)
    # The identity in the result's own dtype: H == D + S within a few ulps of H.
    hv, sv, dv = (to_f64(x) for x in (h, s, d))
    ulp = np.spacing(np.abs(hv).astype(str(h.dtype).rsplit(".", 1)[-1])).astype(np.float64)
    finite = np.isfinite(hv)
    assert (np.isfinite(dv) == finite).all()
    assert (np.abs(hv[finite] - (sv + dv)[finite]) <= 4 * ulp[finite]).all()


@pytest.mark.parametrize("name", ["random", "p-zeros", "support", "near-degenerate", "peaked"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_entropy_and_kl_match_scipy_stats_entropy(name, dtype):
    # scipy.stats.entropy renormalises; for float64/float32 inputs the rows already sum
    # to 1 within the dtype's rounding, so that changes nothing beyond the tolerance.
    p, q, p64, q64 = _inputs(name, "numpy", dtype)
    scale = _scale(p64, q64)
    _check(ce.entropy(p), scipy.stats.entropy(p64, axis=-1), dtype, scale)
    _check(ce.kl_divergence(p, q), scipy.stats.entropy(p64, q64, axis=-1), dtype, scale)
    _check(ce.entropy(p, base=2), scipy.stats.entropy(p64, axis=-1, base=2), dtype, scale)
    _check(
        ce.kl_divergence(p, q, base=10),
        scipy.stats.entropy(p64, q64, axis=-1, base=10),
        dtype,
        scale,
    )


def test_scipy_axis0_default_matches_axis0():
    # scipy.stats.entropy and jensenshannon reduce axis 0 by default; we reduce -1 by
    # default, and axis=0 gives scipy's default.
    rng = np.random.default_rng(0)
    p = random_simplex(rng, (5, 7)).T  # columns are distributions
    q = random_simplex(rng, (5, 7)).T
    np.testing.assert_allclose(ce.entropy(p, axis=0), scipy.stats.entropy(p), rtol=1e-12)
    np.testing.assert_allclose(
        ce.kl_divergence(p, q, axis=0), scipy.stats.entropy(p, q), rtol=1e-12
    )
    np.testing.assert_allclose(
        ce.js_divergence(p, q, axis=0, base=2),
        scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2,
        rtol=1e-12,
    )


def test_not_renormalised_like_scipy():
    # scipy.stats.entropy([1, 1]) silently renormalises to log 2; we refuse (issue: "users
    # today ... scipy.stats.entropy silently renormalises its input").
    assert scipy.stats.entropy([1.0, 1.0]) == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="does not sum to 1"):
        ce.entropy([1.0, 1.0])


# Bases <= 1 are refused (issue 11: a base in (0, 1) made KL and JS negative).
@pytest.mark.parametrize("base", [2, 10, np.e, 1.5, 3.7])
def test_base_matches_scipy(base):
    rng = np.random.default_rng(1)
    p, q = random_simplex(rng, (4, 6)), random_simplex(rng, (4, 6))
    np.testing.assert_allclose(
        ce.entropy(p, base=base), scipy.stats.entropy(p, axis=-1, base=base), rtol=1e-12
    )
    np.testing.assert_allclose(
        ce.kl_divergence(p, q, base=base), scipy.stats.entropy(p, q, axis=-1, base=base), rtol=1e-12
    )
    np.testing.assert_allclose(
        ce.js_divergence(p, q, base=base),
        scipy.spatial.distance.jensenshannon(p, q, axis=-1, base=base) ** 2,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        ce.js_divergence(p, q, base=base),
        scipy.spatial.distance.jensenshannon(p, q, axis=-1) ** 2 / np.log(base),
        rtol=1e-12,
    )


# ----------------------------------------------------------------------------- torch

TORCH_CASES = ["random", "p-zeros", "support", "near-degenerate", "peaked", "large-K"]


def _logits_case(name: str, rng: np.random.Generator) -> np.ndarray:
    if name == "random":
        return rng.normal(size=(7, 13)) * 3
    if name == "extreme":  # +-1000 logits: the stable log-softmax
        z = rng.normal(size=(5, 6))
        z[:, 0] = 1000.0
        z[:, 1] = -1000.0
        z[2] -= 2000.0
        return z
    if name == "large-K":
        return rng.normal(size=(2, 50_000)) * 5
    raise AssertionError(name)


def _torch_dtypes():
    return pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])


@pytest.mark.parametrize("name", ["random", "extreme", "large-K"])
@_torch_dtypes()
def test_cross_entropy_labels_logits_matches_torch(name, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    z = make(_logits_case(name, rng), "torch", dtype)
    y = torch.as_tensor(rng.integers(0, z.shape[-1], size=z.shape[0]))
    z64 = z.to(torch.float64)
    expected = F.cross_entropy(z64, y, reduction="none").numpy()
    got = ce.cross_entropy(ce.Labels(y), ce.Logits(z))
    _check(got, expected, dtype, float(np.abs(expected).max()))
    # No worse than torch itself in the same dtype (where torch supports it on CPU).
    same = F.cross_entropy(z, y, reduction="none").to(torch.float64).numpy()
    assert np.all(
        np.abs(to_f64(got) - expected)
        <= np.abs(same - expected)
        + tolerance(dtype, float(np.abs(expected).max()))["atol"]
        + 1e-6 * np.abs(expected)
    )


@pytest.mark.parametrize("name", TORCH_CASES)
@_torch_dtypes()
def test_cross_entropy_probabilities_logits_matches_torch(name, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    p64, _ = _case(name)
    p = make(p64, "torch", dtype)
    z = make(rng.normal(size=p64.shape) * 4, "torch", dtype)
    # torch: cross_entropy(input=logits, target=probabilities), the reverse of ours.
    expected = F.cross_entropy(z.to(torch.float64), p.to(torch.float64), reduction="none").numpy()
    _check(ce.cross_entropy(p, ce.Logits(z)), expected, dtype, float(np.abs(expected).max()))


@pytest.mark.parametrize("name", [*TORCH_CASES, "both-zeros", "tiny", "equal"])
@_torch_dtypes()
def test_kl_matches_torch_kl_div(name, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    p, q, p64, q64 = _inputs(name, "torch", dtype)
    # torch: kl_div(input=log q, target=p) is D(p || q): reversed order, q in log space.
    log_q = torch.log(torch.as_tensor(q64))
    expected = F.kl_div(log_q, torch.as_tensor(p64), reduction="none").sum(-1).numpy()
    # torch gives NaN for 0 * log(0 / 0) (p = q = 0 in a class); the limit is 0, so
    # there the reference is scipy's rel_entr (checked against torch where both agree).
    undefined = np.isnan(expected)
    assert (undefined == ((p64 == 0) & (q64 == 0)).any(-1)).all()
    reference = scipy.special.rel_entr(p64, q64).sum(-1)
    np.testing.assert_allclose(expected[~undefined], reference[~undefined], rtol=1e-12)
    got = ce.kl_divergence(p, q)
    assert not np.isnan(to_f64(got)).any()
    _check(got, np.where(undefined, reference, expected), dtype, _scale(p64, q64))


@pytest.mark.parametrize("name", ["random", "peaked", "large-K", "near-degenerate"])
@_torch_dtypes()
def test_kl_log_probs_matches_torch_kl_div_log_target(name, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    p64, q64 = _case(name)
    # Log-probabilities rounded to the dtype; their exp no longer sums to 1 exactly, so
    # validation is off: this compares the formula sum exp(lp) (lp - lq) with torch's.
    lp = make(np.log(p64), "torch", dtype)
    lq = make(np.log(q64), "torch", dtype)
    lp64, lq64 = lp.to(torch.float64), lq.to(torch.float64)
    expected = F.kl_div(lq64, lp64, reduction="none", log_target=True).sum(-1).numpy()
    got = ce.kl_divergence(ce.LogProbs(lp), ce.LogProbs(lq), validate=False)
    _check(got, expected, dtype, _scale(np.exp(lp64.numpy()), np.exp(lq64.numpy())))


@pytest.mark.parametrize("name", ["random", "extreme", "large-K"])
@_torch_dtypes()
def test_kl_logits_matches_torch_kl_div(name, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    z = make(_logits_case(name, rng), "torch", dtype)
    p64 = random_simplex(rng, tuple(z.shape), zeros=0.2)
    p = make(p64, "torch", dtype)
    t64 = torch.float64
    expected = (
        F.kl_div(torch.log_softmax(z.to(t64), -1), p.to(t64), reduction="none").sum(-1).numpy()
    )
    _check(
        ce.kl_divergence(p, ce.Logits(z)),
        expected,
        dtype,
        _scale(to_f64(p), torch.softmax(z.to(t64), -1).numpy()),
    )


@pytest.mark.parametrize("name", ["random", "p-zeros", "tiny", "large-K"])
@_torch_dtypes()
def test_entropy_matches_torch_special_entr(name, dtype):
    torch = pytest.importorskip("torch")
    p, _, p64, _ = _inputs(name, "torch", dtype)
    expected = torch.special.entr(p.to(torch.float64)).sum(-1).numpy()
    _check(ce.entropy(p), expected, dtype, _scale(p64, p64))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_entropy_of_logits_matches_torch_distributions(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    z = make(_logits_case("extreme", rng), "torch", dtype)
    expected = torch.distributions.Categorical(logits=z.to(torch.float64)).entropy().numpy()
    _check(ce.entropy(ce.Logits(z)), expected, dtype, 10.0)


# Before log1p((p - q) / q), NumPy was 9e-5 off (log of the rounded ratio) and torch 5e-2
# (log p - log q cancels); scipy.special.rel_entr gets 1e-7.
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_kl_of_nearly_equal_distributions_is_accurate_relative_to_its_size(backend):
    # KL ~ 5e-15 while H ~ 7: the case that "never CE - S" is about. The terms
    # p log(p/q) must not lose more than their own rounding either.
    rng = np.random.default_rng(0)
    k = 1000
    p64 = np.full(k, 1.0 / k)
    q64 = p64 * (1 + 1e-7 * rng.standard_normal(k))
    q64 /= q64.sum()
    expected = scipy.special.rel_entr(p64, q64).sum()
    if np.finfo(np.longdouble).eps < 1e-18:  # an independent check of the reference
        pl, ql = p64.astype(np.longdouble), q64.astype(np.longdouble)
        truth = float(np.sum(pl * np.log(pl / ql)))
        assert abs(expected / truth - 1) < 1e-6
    # CE - S is off by tens of percent here (what the library avoids).
    h_minus_s = float(to_f64(ce.cross_entropy(p64, q64)) - to_f64(ce.entropy(p64)))
    assert abs(h_minus_s / expected - 1) > 0.1
    got = to_f64(ce.kl_divergence(make(p64, backend, "float64"), make(q64, backend, "float64")))
    assert abs(got / expected - 1) < 1e-5  # (pytest.approx would allow 1e-12 absolute)

"""Array libraries: the result is an array of the input's library, dtype and device; the
libraries agree with each other; jax.jit works; torch and jax are imported only on demand.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import crossentropy as ce

P = [[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]]
Q = [[0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1]]
Y = [0, 3]


def _calls(p, q, y):
    """Every measure on every form, keyed by a readable name."""
    return {
        "entropy": lambda: ce.entropy(p),
        "entropy-logits": lambda: ce.entropy(ce.Logits(q)),
        "cross_entropy": lambda: ce.cross_entropy(p, q),
        "cross_entropy-labels-logits": lambda: ce.cross_entropy(ce.Labels(y), ce.Logits(q)),
        "kl_divergence": lambda: ce.kl_divergence(p, q),
        "kl_divergence-logprobs": lambda: ce.kl_divergence(p, ce.LogProbs(q * 0 + np.log(0.25))),
        "js_divergence": lambda: ce.js_divergence(p, q),
        "js_divergence-labels": lambda: ce.js_divergence(ce.Labels(y), q),
        "decompose.h": lambda: ce.decompose(p, q).cross_entropy,
        "decompose.s": lambda: ce.decompose(p, q).entropy,
        "decompose.d": lambda: ce.decompose(p, q).kl_divergence,
    }


EXPECTED_OUT = {
    "float64": "float64",
    "float32": "float32",
    "float16": "float32",
    "bfloat16": "float32",
}


# ----------------------------------------------------------------------------- imports


def test_import_does_not_import_torch_or_jax():
    code = (
        "import sys, crossentropy as ce, numpy as np\n"
        "ce.decompose(np.array([0.5, 0.5]), ce.Logits(np.array([0.0, 1.0])))\n"
        "ce.cross_entropy(ce.Labels(0), [0.5, 0.5])\n"
        "bad = sorted(m for m in ('torch', 'jax', 'cupy') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- numpy


def test_numpy_in_numpy_out():
    p, q = np.asarray(P), np.asarray(Q)
    for name, call in _calls(p, q, np.asarray(Y)).items():
        out = call()
        assert isinstance(out, np.ndarray) and out.dtype == np.float64, name
        assert out.shape == (2,), name
    # A single distribution gives a NumPy scalar, like NumPy's own reductions.
    s = ce.entropy(np.array([0.5, 0.5]))
    assert isinstance(s, np.float64) and np.ndim(s) == 0
    s32 = ce.entropy(np.array([0.5, 0.5], dtype=np.float32))
    assert isinstance(s32, np.float32)


# ----------------------------------------------------------------------------- torch


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_torch_in_torch_out(dtype):
    torch = pytest.importorskip("torch")
    td = getattr(torch, dtype)
    p, q = torch.tensor(P, dtype=td), torch.tensor(Q, dtype=td)
    for name, call in _calls(p, q, torch.tensor(Y)).items():
        out = call()
        assert isinstance(out, torch.Tensor), name
        assert out.dtype == getattr(torch, EXPECTED_OUT[dtype]), (name, out.dtype)
        assert out.device == p.device and tuple(out.shape) == (2,), name


def test_torch_requires_grad_propagates():
    torch = pytest.importorskip("torch")
    z = torch.zeros(2, 4, requires_grad=True)
    out = ce.cross_entropy(ce.Labels(torch.tensor(Y)), ce.Logits(z))
    assert out.requires_grad and out.grad_fn is not None


def test_torch_cuda_device_is_kept():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    p = torch.tensor(P, device="cuda")
    q = torch.tensor(Q, device="cuda")
    for name, call in _calls(p, q, torch.tensor(Y, device="cuda")).items():
        out = call()
        assert out.device == p.device, name
    # Validation names the index on the device too.
    with pytest.raises(ValueError, match=r"p does not sum to 1"):
        ce.entropy(torch.tensor([0.5, 0.6], device="cuda"))


def test_torch_agrees_with_numpy():
    torch = pytest.importorskip("torch")
    pn, qn, yn = np.asarray(P), np.asarray(Q), np.asarray(Y)
    pt, qt, yt = (
        torch.tensor(P, dtype=torch.float64),
        torch.tensor(Q, dtype=torch.float64),
        torch.tensor(Y),
    )
    numpy_calls, torch_calls = _calls(pn, qn, yn), _calls(pt, qt, yt)
    for name in numpy_calls:
        np.testing.assert_allclose(
            torch_calls[name]().numpy(), numpy_calls[name](), rtol=1e-14, atol=1e-16, err_msg=name
        )


# ----------------------------------------------------------------------------- jax


@pytest.fixture(scope="module")
def jax():
    return pytest.importorskip("jax")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_jax_in_jax_out(jax, dtype):
    jnp = jax.numpy
    p, q = jnp.asarray(P, dtype=dtype), jnp.asarray(Q, dtype=dtype)
    for name, call in _calls(p, q, jnp.asarray(Y)).items():
        out = call()
        assert isinstance(out, jax.Array), name
        assert out.dtype == jnp.dtype(EXPECTED_OUT[dtype]), (name, out.dtype)
        assert tuple(out.shape) == (2,), name


def test_jax_float64_stays_float64_and_agrees_with_numpy(jax):
    jnp = jax.numpy
    with jax.enable_x64(True):
        p, q, y = jnp.asarray(P), jnp.asarray(Q), jnp.asarray(Y)
        fn = jax.jit(lambda p, q: ce.decompose(p, q, validate=False))
        h, s, d = fn(p, q)
        assert h.dtype == jnp.float64
        expected = ce.decompose(np.asarray(P), np.asarray(Q))
        for got, want in zip((h, s, d), expected, strict=True):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-14, atol=1e-16)
        js = jax.jit(lambda y, q: ce.js_divergence(ce.Labels(y), q, validate=False))(y, q)
        np.testing.assert_allclose(
            np.asarray(js), ce.js_divergence(ce.Labels(np.asarray(Y)), np.asarray(Q)), rtol=1e-14
        )


def test_jax_jit_with_validate_false_matches_eager(jax):
    jnp = jax.numpy
    p = jnp.asarray(P, dtype=jnp.float32)
    z = jnp.asarray([[0.0, 1.0, -jnp.inf, 2.0], [3.0, -1.0, 0.5, 0.25]], dtype=jnp.float32)
    y = jnp.asarray(Y)

    @jax.jit
    def all_measures(p, z, y):
        return jnp.stack(
            [
                ce.entropy(p, validate=False),
                ce.cross_entropy(p, ce.Logits(z), validate=False),
                ce.kl_divergence(p, ce.Logits(z), validate=False, base=2),
                ce.js_divergence(p, ce.Logits(z), validate=False),
                ce.cross_entropy(ce.Labels(y), ce.Logits(z), validate=False),
            ]
        )

    jitted = np.asarray(all_measures(p, z, y))
    # Reference: the same measures on NumPy float32 (a different code path).
    pn, zn = np.asarray(P, dtype=np.float32), np.asarray(z)
    expected = np.stack(
        [
            ce.entropy(pn),
            ce.cross_entropy(pn, ce.Logits(zn)),
            ce.kl_divergence(pn, ce.Logits(zn), base=2),
            ce.js_divergence(pn, ce.Logits(zn)),
            ce.cross_entropy(ce.Labels(np.asarray(Y)), ce.Logits(zn)),
        ]
    )
    np.testing.assert_allclose(jitted, expected, rtol=2e-6, atol=1e-7)
    # Row 0 puts mass 0.0 on the masked class: finite. Hand check of one value:
    # H(labels 0, z row 0) = -log_softmax(z)[0] = log(1 + e + e^2).
    assert jitted[4, 0] == pytest.approx(np.log(1 + np.e + np.e**2), rel=1e-6)


def test_jax_jit_with_validation_on_does_not_fail(jax):
    # Validation reads the data; traced values cannot be read, so under jit it is skipped
    # (as validate=False would) rather than raising a ConcretizationTypeError.
    jnp = jax.numpy
    out = jax.jit(lambda p: ce.entropy(p))(jnp.asarray(P, dtype=jnp.float32))
    np.testing.assert_allclose(
        np.asarray(out), ce.entropy(np.asarray(P, dtype=np.float32)), rtol=1e-6
    )


def test_jax_validation_eager(jax):
    jnp = jax.numpy
    with pytest.raises(
        ValueError,
        match=r"p does not sum to 1 along axis -1: the sum is "
        r"1\.10000002 in row \(1,\)",
    ):
        ce.entropy(jnp.asarray([[0.5, 0.5], [0.2, 0.9]]))


# ----------------------------------------------------------------------------- others


def test_cupy_if_present():
    cp = pytest.importorskip("cupy")
    try:
        p = cp.asarray(P)
    except Exception as error:  # cupy installed without a usable GPU
        pytest.skip(f"cupy unusable: {error}")
    out = ce.kl_divergence(p, cp.asarray(Q))
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(
        cp.asnumpy(out), ce.kl_divergence(np.asarray(P), np.asarray(Q)), rtol=1e-14
    )

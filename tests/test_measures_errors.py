"""Every error the measures raise, by type and message (issue 2: the message names the
argument, what is wrong, and where: the first offending index, the bad sum)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import crossentropy as ce

INF = math.inf
NAN = math.nan
U = np.array([0.5, 0.5])
MEASURES_PQ = [ce.cross_entropy, ce.kl_divergence, ce.js_divergence, ce.decompose]
ALL = [ce.entropy, *MEASURES_PQ]


def call(f, p, q=U, **kw):
    return f(p, **kw) if f is ce.entropy else f(p, q, **kw)


def esc(text: str) -> str:
    return re.escape(text)


# ----------------------------------------------------------------------------- data checks


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_nan_probabilities(f):
    p = np.array([[0.5, 0.5], [NAN, 0.5], [0.5, NAN]])
    with pytest.raises(ValueError, match=esc("p (probabilities) contain NaN at index (1, 0)")):
        call(f, p)


@pytest.mark.parametrize("f", MEASURES_PQ, ids=lambda f: f.__name__)
def test_nan_probabilities_on_q(f):
    q = np.array([[0.5, 0.5], [0.5, NAN]])
    with pytest.raises(ValueError, match=esc("q (probabilities) contain NaN at index (1, 1)")):
        f(U, q)


@pytest.mark.parametrize("bad", [INF, -INF])
@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_infinite_probabilities(f, bad):
    p = np.array([0.5, bad])
    with pytest.raises(
        ValueError, match=esc("p (probabilities) contain infinite values at index (1,)")
    ):
        call(f, p)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_negative_probabilities(f):
    p = np.array([[0.5, 0.5], [1.25, -0.25]])
    with pytest.raises(
        ValueError, match=esc("p (probabilities) contain a negative value -0.25 at index (1, 1)")
    ):
        call(f, p)
    if f is not ce.entropy:
        with pytest.raises(
            ValueError, match=esc("q (probabilities) contain a negative value -0.5 at index (0,)")
        ):
            f(U, np.array([-0.5, 1.5]))


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_rows_not_summing_to_one(f):
    p = np.array([[0.5, 0.5], [0.5, 0.5], [0.3, 0.3], [2.0, 2.0]])
    message = (
        "p does not sum to 1 along axis -1: the sum is 0.6 in row (2,) (tolerance "
        "6e-07); normalise it, or pass Logits/LogProbs"
    )
    with pytest.raises(ValueError, match=esc(message)):
        call(f, p)


def test_not_normalised_message_names_q_and_the_batch_index():
    # The message names the axis as the caller wrote it.
    q = np.full((2, 3, 2), 0.5)
    q[1, 2] = [0.75, 0.75]
    with pytest.raises(
        ValueError, match=esc("q does not sum to 1 along axis -1: the sum is 1.5 in row (1, 2)")
    ):
        ce.kl_divergence(np.full((2, 3, 2), 0.5), q)
    # Along axis 0 the row index is the position among the other axes.
    p = np.array([[0.5, 0.25], [0.5, 0.25]])
    with pytest.raises(
        ValueError, match=esc("p does not sum to 1 along axis 0: the sum is 0.5 in row (1,)")
    ):
        ce.entropy(p, axis=0)


def test_single_distribution_not_normalised_has_no_row():
    with pytest.raises(
        ValueError,
        match=r"p does not sum to 1 along axis -1: the sum is 2 "
        r"\(tolerance",
    ):
        ce.entropy([1.0, 1.0])


def test_sum_tolerance_depends_on_dtype():
    torch = pytest.importorskip("torch")
    p = torch.tensor([0.5, 0.7], dtype=torch.bfloat16)
    # bfloat16 tolerance: (4 + log2 2) * 2^-7 = 0.039; the sum 1.19921875 is the bf16 sum.
    with pytest.raises(ValueError, match=esc("the sum is 1.19921875 (tolerance 0.039)")):
        ce.entropy(p)
    with pytest.raises(ValueError, match=esc("the sum is 0.699999988 in row (1,)")):
        ce.entropy(torch.tensor([[0.5, 0.5], [0.2, 0.5]]))


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "complex128"])
def test_non_floating_probabilities(dtype):
    p = np.array([1, 0]).astype(dtype)
    with pytest.raises(
        TypeError,
        match=esc(
            f"p (probabilities) must be a real floating-point "
            f"array, got dtype {dtype}; wrap class indices "
            f"as Labels(...)"
        ),
    ):
        ce.entropy(p)
    with pytest.raises(
        TypeError,
        match=esc(f"q (probabilities) must be a real floating-point array, got dtype {dtype}")
        + "$",
    ):
        ce.kl_divergence(U, p)


@pytest.mark.parametrize(
    ("form", "name"), [(ce.Logits, "logits"), (ce.LogProbs, "log-probabilities")]
)
def test_non_floating_logits(form, name):
    with pytest.raises(
        TypeError, match=esc(f"q ({name}) must be a real floating-point array, got dtype int64")
    ):
        ce.kl_divergence(U, form(np.array([0, 0])))


def test_labels_not_integer():
    with pytest.raises(TypeError, match="p labels must be an integer array, got dtype float64"):
        ce.cross_entropy(ce.Labels(np.array([0.0, 1.0])), np.full((2, 2), 0.5))
    with pytest.raises(TypeError, match="p labels must be an integer array, got dtype float64"):
        ce.entropy(ce.Labels(np.array([0.0])))


@pytest.mark.parametrize("f", MEASURES_PQ, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("labels", "found", "index"),
    [([0, 2], 2, "(1,)"), ([-1, 0], -1, "(0,)"), ([0, 1, 7, 9], 7, "(2,)")],
)
def test_labels_out_of_range(f, labels, found, index):
    y = np.array(labels)
    q = np.full((len(labels), 2), 0.5)
    with pytest.raises(
        ValueError, match=esc(f"p (labels) must lie in [0, 2): found {found} at index {index}")
    ):
        f(ce.Labels(y), q)


def test_labels_out_of_range_torch():
    torch = pytest.importorskip("torch")
    with pytest.raises(
        ValueError, match=esc("p (labels) must lie in [0, 2): found 5 at index (1,)")
    ):
        ce.cross_entropy(ce.Labels(torch.tensor([0, 5])), ce.Logits(torch.zeros(2, 2)))


@pytest.mark.parametrize("f", MEASURES_PQ, ids=lambda f: f.__name__)
def test_labels_on_q(f):
    with pytest.raises(
        TypeError, match=esc("q cannot be Labels: labels are a point mass on the data side p")
    ):
        f(U, ce.Labels(np.array(0)))


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("f", MEASURES_PQ, ids=lambda f: f.__name__)
def test_different_number_of_classes(f):
    with pytest.raises(
        ValueError,
        match=esc("p and q differ in their number of classes along axis -1: p has 2, q has 3"),
    ):
        f(U, np.array([0.2, 0.3, 0.5]))
    with pytest.raises(ValueError, match=esc("along axis 0: p has 3, q has 2")):
        f(np.full((3, 2), 1 / 3), np.full((2, 2), 0.5), axis=0)


@pytest.mark.parametrize("f", MEASURES_PQ, ids=lambda f: f.__name__)
def test_batch_shapes_do_not_broadcast(f):
    with pytest.raises(
        ValueError, match=esc("p and q do not broadcast: batch shapes (2,) and (3,)")
    ):
        f(np.full((2, 2), 0.5), np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match=esc("batch shapes (4, 2) and (3, 1)")):
        f(np.full((4, 2, 2), 0.5), np.full((3, 1, 2), 0.5))
    with pytest.raises(ValueError, match=esc("batch shapes (3,) and (2,)")):
        f(ce.Labels(np.array([0, 1, 1])), np.full((2, 2), 0.5))


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_empty_event_axis(f):
    with pytest.raises(ValueError, match=esc("p has an empty event axis (length 0 along axis -1)")):
        call(f, np.zeros((3, 0)), np.zeros((3, 0)))
    with pytest.raises(ValueError, match=esc("p has an empty event axis (length 0 along axis 0)")):
        call(f, np.zeros((0, 3)), np.zeros((0, 3)), axis=0)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_zero_dimensional(f):
    with pytest.raises(
        ValueError, match=esc("p must have an event axis: got a 0-dimensional array")
    ):
        call(f, np.float64(1.0))
    with pytest.raises(ValueError, match=esc("p must have an event axis")):
        call(f, 1.0)
    if f is not ce.entropy:
        with pytest.raises(ValueError, match=esc("q must have an event axis")):
            f(U, np.float64(1.0))


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("axis", [1.0, "0", None, True, False, [0], np.float64(0)])
def test_axis_type(f, axis):
    with pytest.raises(TypeError, match=esc(f"axis must be an integer, got {axis!r}")):
        call(f, U, axis=axis)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("axis", [1, -2, 5])
def test_axis_range(f, axis):
    with pytest.raises(
        ValueError, match=esc(f"axis {axis} is out of range for inputs with 1 dimensions")
    ):
        call(f, U, axis=axis)


def test_axis_range_with_labels_and_broadcasting():
    with pytest.raises(
        ValueError, match=esc("axis 2 is out of range for inputs with 2 dimensions")
    ):
        ce.entropy(ce.Labels(np.array([0])), axis=2)
    with pytest.raises(ValueError, match=esc("axis 0 is out of range for p with shape (2,)")):
        ce.kl_divergence(U, np.full((2, 2), 0.5), axis=0)


def test_numpy_integer_axis_is_accepted():
    assert ce.entropy(U, axis=np.int64(0)) == ce.entropy(U)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("base", ["2", True, False, [2], 2 + 0j])
def test_base_type(f, base):
    with pytest.raises(TypeError, match=esc(f"base must be a number > 1 or None, got {base!r}")):
        call(f, U, base=base)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("base", [0, 0.0, -2, 1, 1.0, 0.5, INF, -INF, NAN])
def test_base_value(f, base):
    # A base in (0, 1) is refused too: it would make KL and JS negative (issue 11).
    with pytest.raises(ValueError, match=esc(f"base must be a number > 1, got {base!r}")):
        call(f, U, base=base)


# ----------------------------------------------------------------------------- libraries


@pytest.mark.parametrize("f", MEASURES_PQ, ids=lambda f: f.__name__)
def test_mixing_numpy_and_torch(f):
    torch = pytest.importorskip("torch")
    message = esc("p and q must come from the same array library, got numpy.ndarray, torch.Tensor")
    with pytest.raises(TypeError, match=message):
        f(U, torch.tensor([0.5, 0.5]))
    with pytest.raises(TypeError, match=message):
        f(torch.tensor([0.5, 0.5]), ce.Logits(U))
    with pytest.raises(TypeError, match=message):
        f(ce.Labels(torch.tensor(0)), U)


def test_mixing_numpy_and_jax():
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(TypeError, match="p and q must come from the same array library"):
        ce.kl_divergence(U, jnp.asarray([0.5, 0.5]))


# ----------------------------------------------------------------------------- forms


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_logits_nan(f):
    z = np.array([[0.0, 1.0], [NAN, 0.0]])
    with pytest.raises(ValueError, match=esc("p (logits) contain NaN at index (1, 0)")):
        call(f, ce.Logits(z), np.full((2, 2), 0.5))


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_logits_plus_inf(f):
    with pytest.raises(ValueError, match=esc("p (logits) contain +inf at index (1,)")):
        call(f, ce.Logits(np.array([0.0, INF])))


@pytest.mark.parametrize("f", MEASURES_PQ, ids=lambda f: f.__name__)
def test_logits_all_neg_inf_row(f):
    z = np.array([[0.0, 1.0], [-INF, -INF]])
    with pytest.raises(
        ValueError,
        match=esc(
            "q (logits) are -inf everywhere along axis -1 in "
            "row (1,): a distribution needs at least one "
            "possible class"
        ),
    ):
        f(U, ce.Logits(z))


def test_logits_all_neg_inf_torch():
    torch = pytest.importorskip("torch")
    z = torch.tensor([[0.0, 1.0], [-INF, -INF]])
    with pytest.raises(ValueError, match=esc("p (logits) are -inf everywhere")):
        ce.entropy(ce.Logits(z))


@pytest.mark.parametrize("f", MEASURES_PQ, ids=lambda f: f.__name__)
def test_log_probs_not_normalised(f):
    lp = np.array([[math.log(0.5), math.log(0.5)], [0.0, 0.0]])
    with pytest.raises(
        ValueError,
        match=esc(
            "q (log-probabilities) are not normalised along "
            "axis -1: exp sums to 2 in row (1,) (tolerance "
            "6e-07); pass Logits for unnormalised scores"
        ),
    ):
        f(U, ce.LogProbs(lp))


@pytest.mark.parametrize(("value", "what"), [(NAN, "NaN"), (INF, "+inf")])
def test_log_probs_nan_and_plus_inf(value, what):
    with pytest.raises(
        ValueError, match=esc(f"p (log-probabilities) contain {what} at index (0,)")
    ):
        ce.entropy(ce.LogProbs(np.array([value, 0.0])))


# ----------------------------------------------------------------------------- validate=False


def test_validate_false_skips_the_data_checks():
    # Each of these raises with validation on; off, the formula runs on the data as given.
    assert ce.entropy(np.array([1.0, 1.0]), validate=False) == 0.0  # -2 * 1 log 1
    # Hand: -(0.6 log 0.3 + ...) computed as -sum p log q without renormalising.
    p = np.array([0.3, 0.3])
    assert ce.cross_entropy(p, U, validate=False) == pytest.approx(0.6 * math.log(2), rel=1e-15)
    assert np.isnan(ce.kl_divergence(np.array([1.5, -0.5]), U, validate=False))
    assert np.isnan(ce.entropy(np.array([NAN, 0.5]), validate=False))
    assert ce.entropy(ce.LogProbs(np.array([0.0, 0.0])), validate=False) == 0.0
    assert np.isnan(ce.entropy(ce.Logits(np.array([NAN, 0.0])), validate=False))
    with pytest.raises(ValueError):
        ce.entropy(np.array([1.0, 1.0]))


def test_validate_false_keeps_the_type_and_shape_checks():
    # Those do not read the data: they still run (and cost nothing under jit).
    with pytest.raises(TypeError, match="must be a real floating-point array"):
        ce.entropy(np.array([1, 0]), validate=False)
    with pytest.raises(ValueError, match="differ in their number of classes"):
        ce.kl_divergence(U, np.array([0.2, 0.3, 0.5]), validate=False)
    with pytest.raises(ValueError, match="base must be"):
        ce.entropy(U, base=1, validate=False)
    with pytest.raises(TypeError, match="axis must be an integer"):
        ce.entropy(U, axis=0.0, validate=False)
    with pytest.raises(TypeError, match="q cannot be Labels"):
        ce.cross_entropy(U, ce.Labels(np.array(0)), validate=False)
    with pytest.raises(ValueError, match="empty event axis"):
        ce.entropy(np.zeros((2, 0)), validate=False)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        ce.entropy(U, -1)
    with pytest.raises(TypeError):
        ce.kl_divergence(U, U, -1)

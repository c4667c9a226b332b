"""crossentropy.transformers.patch on every tested architecture, against the unpatched model.

The oracle is always the same model unpatched (a deepcopy with the same weights): its own
``forward`` and ``ForCausalLMLoss`` on the logits it builds.  Losses and every parameter's
gradient agree within float32 rounding; outside a training call with labels the patched
model is bitwise the unpatched one.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from _transformers_models import (  # noqa: E402
    ARCHITECTURES,
    VOCAB,
    assert_same_grads,
    batch,
    build,
    pair,
)

from crossentropy.torch import cross_entropy  # noqa: E402
from crossentropy.transformers import UnsupportedLogitsOp, patch, unpatch  # noqa: E402

NAMES = list(ARCHITECTURES)
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6


def close(actual, expected, what="loss"):
    torch.testing.assert_close(actual, expected, rtol=LOSS_RTOL, atol=LOSS_ATOL, msg=what)


def run(model, **kwargs):
    out = model(**kwargs)
    out.loss.backward()
    return out


# --------------------------------------------------------------------------- loss and grads


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["mean", "num_items_in_batch", "shift_labels+logits_to_keep"])
def test_loss_and_gradients_equal_unpatched(name, case):
    model, reference = pair(name)
    patch(model)
    ids, mask, labels = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels)
    if case == "num_items_in_batch":
        # As Trainer passes it: the counted tokens of the whole accumulated batch, a tensor.
        kwargs["num_items_in_batch"] = torch.tensor(41)
    elif case == "shift_labels+logits_to_keep":
        keep = 6
        shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        kwargs.update(shift_labels=shift[:, -keep:].contiguous(), logits_to_keep=keep)
    got, want = run(model, **kwargs), run(reference, **kwargs)
    assert got.logits is None
    close(got.loss, want.loss)
    assert got.loss.dtype == want.loss.dtype == torch.float32
    assert_same_grads(model, reference)


@pytest.mark.parametrize("name", ["llama", "gemma2", "cohere", "gpt2"])
def test_logits_to_keep_covering_the_sequence(name):
    model, reference = pair(name)
    patch(model)
    ids, mask, labels = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels, logits_to_keep=ids.shape[1])
    close(run(model, **kwargs).loss, run(reference, **kwargs).loss)
    assert_same_grads(model, reference)


@pytest.mark.parametrize("name", ["llama", "gemma2", "cohere"])
def test_z_loss_and_label_smoothing_against_cross_entropy_on_the_logits(name):
    """The options the model's own loss lacks: the oracle is crossentropy.torch.cross_entropy
    on the unpatched model's (soft-capped, scaled) logits."""
    model, reference = pair(name)
    patch(model, z_loss=1e-2, label_smoothing=0.1)
    ids, mask, labels = batch()
    got = run(model, input_ids=ids, attention_mask=mask, labels=labels)
    logits = reference(input_ids=ids, attention_mask=mask).logits
    target = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    want = cross_entropy(logits.float(), target, z_loss=1e-2, label_smoothing=0.1)
    want.backward()
    close(got.loss, want)
    assert_same_grads(model, reference)


def test_chunk_size_does_not_change_the_result():
    model, reference = pair("gemma2")
    patch(model, chunk_size=4)
    ids, mask, labels = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels)
    close(run(model, **kwargs).loss, run(reference, **kwargs).loss)
    assert_same_grads(model, reference)


@pytest.mark.parametrize("name", ["llama", "gemma2", "cohere", "llama-bias"])
def test_return_logits(name):
    model, reference = pair(name)
    patch(model, return_logits=True)
    ids, mask, labels = batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, labels=labels)
    got, want = run(model, **kwargs), run(reference, **kwargs)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    close(got.loss, want.loss)
    assert_same_grads(model, reference)


def test_tuple_output_drops_the_logits():
    model, reference = pair("llama")
    patch(model)
    ids, mask, labels = batch()
    kwargs = dict(
        input_ids=ids, attention_mask=mask, labels=labels, return_dict=False, use_cache=False
    )
    got, want = model(**kwargs), reference(**kwargs)
    # The logits are left out as ModelOutput.to_tuple leaves out a None.
    assert isinstance(got, tuple) and len(want) == 2 and len(got) == 1
    close(got[0], want[0])


def test_positional_labels():
    model, reference = pair("llama")
    patch(model)
    ids, mask, labels = batch()
    # LlamaForCausalLM.forward(input_ids, attention_mask, position_ids, past_key_values,
    # inputs_embeds, labels, ...)
    got = model(ids, mask, None, None, None, labels)
    want = reference(ids, mask, None, None, None, labels)
    assert got.logits is None
    close(got.loss, want.loss)


def test_half_precision_under_autocast():
    model, reference = pair("llama")
    patch(model)
    ids, mask, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(model, input_ids=ids, attention_mask=mask, labels=labels)
        want = run(reference, input_ids=ids, attention_mask=mask, labels=labels)
    # bfloat16 logits (rounded) against float32 ones computed from bfloat16 inputs.
    torch.testing.assert_close(got.loss, want.loss, rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------- unchanged paths


@pytest.mark.parametrize("name", NAMES)
def test_unchanged_without_labels_in_eval_and_generate(name):
    model, reference = pair(name)
    patch(model)
    ids, mask, labels = batch()
    # Training mode without labels: the logits, bit for bit.
    torch.testing.assert_close(
        model(input_ids=ids, attention_mask=mask).logits,
        reference(input_ids=ids, attention_mask=mask).logits,
        rtol=0,
        atol=0,
    )
    model.eval()
    reference.eval()
    got = model(input_ids=ids, attention_mask=mask, labels=labels)
    want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)
    prompt = ids[:1, :5]
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(
        model.generate(prompt, **settings), reference.generate(prompt, **settings)
    )


# --------------------------------------------------------------------------- patch / unpatch


def _state(model):
    head = model.get_output_embeddings()
    return dict(model.__dict__), dict(head.__dict__)


@pytest.mark.parametrize("name", NAMES)
def test_unpatch_restores_exactly(name):
    from transformers.loss.loss_utils import ForCausalLMLoss

    model, reference = pair(name)
    before = _state(model)
    patch(model)
    assert model.__dict__.keys() != before[0].keys()
    assert unpatch(model) is model
    after = _state(model)
    assert after[0].keys() == before[0].keys()
    assert after[1].keys() == before[1].keys()
    assert all(after[0][k] is before[0][k] for k in before[0])
    assert "forward" not in model.__dict__
    assert "forward" not in model.get_output_embeddings().__dict__
    assert model.loss_function is ForCausalLMLoss
    ids, mask, labels = batch()
    got = run(model, input_ids=ids, attention_mask=mask, labels=labels)
    want = run(reference, input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)
    assert_same_grads(model, reference, rtol=0, atol=0)


def test_patch_is_idempotent_and_replaces_options():
    model = build("gemma2")
    before = _state(model)
    patch(model)
    once = _state(model)
    assert patch(model) is model
    twice = _state(model)
    assert once[0].keys() == twice[0].keys() and once[1].keys() == twice[1].keys()
    patch(model, z_loss=1e-3)
    assert model._loss_function.options.z_loss == 1e-3
    unpatch(model)
    assert _state(model)[0].keys() == before[0].keys()
    assert _state(model)[1].keys() == before[1].keys()
    unpatch(model)  # a second unpatch does nothing
    assert _state(model)[0].keys() == before[0].keys()


def test_signature_is_the_models():
    import inspect

    model = patch(build("llama"))
    assert inspect.signature(model.forward) == inspect.signature(type(model).forward).replace(
        parameters=list(inspect.signature(type(model).forward).parameters.values())[1:]
    )


def test_deepcopy_of_a_patched_model_is_patched_on_its_own():
    model = patch(build("llama"))
    twin = copy.deepcopy(model)
    assert twin.forward.__self__ is twin
    assert twin.lm_head.forward.__self__ is twin.lm_head
    ids, mask, labels = batch()
    out = twin(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is None
    unpatch(twin)
    assert "forward" not in twin.__dict__
    assert model(input_ids=ids, attention_mask=mask, labels=labels).logits is None


# --------------------------------------------------------------------------- refusals


def test_refuses_a_sequence_classifier():
    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
    )
    model = tf.LlamaForSequenceClassification(config)
    with pytest.raises(ValueError, match=r"cannot patch LlamaForSequenceClassification: its loss"):
        patch(model)


def test_refuses_a_masked_lm():
    config = tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    with pytest.raises(ValueError, match=r"cannot patch BertForMaskedLM: its loss_function is"):
        patch(tf.BertForMaskedLM(config))


def test_refuses_a_base_model_without_output_layer():
    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    with pytest.raises(ValueError, match=r"cannot patch LlamaModel: its forward does not call"):
        patch(tf.LlamaModel(config))


def test_refuses_what_is_not_a_transformers_model():
    with pytest.raises(ValueError, match=r"cannot patch Linear: it is not a transformers"):
        patch(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"cannot patch str: it is not a torch.nn.Module"):
        patch("gpt2")


def test_refuses_an_output_layer_that_is_not_linear():
    model = build("llama")
    model.lm_head = torch.nn.Sequential(torch.nn.Linear(32, VOCAB))
    with pytest.raises(
        ValueError, match=r"cannot patch LlamaForCausalLM: its output embedding is a Sequential"
    ):
        patch(model)
    assert "forward" not in model.__dict__


def test_refuses_a_quantised_output_layer():
    model = build("llama")
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(
            model.lm_head.weight.to(torch.int8), requires_grad=False
        )
    with pytest.raises(ValueError, match=r"LlamaForCausalLM: its output layer's weight is"):
        patch(model)


def test_refuses_a_custom_loss_function():
    model = build("llama")
    model.loss_function = lambda logits, labels, vocab_size, **kw: logits.sum()
    with pytest.raises(ValueError, match=r"LlamaForCausalLM: its loss_function is <lambda>"):
        patch(model)


def test_unknown_operation_on_the_logits_is_refused_at_the_call():
    """A model that adds to its logits (here through a forward hook on the head) cannot be
    followed: the call raises, naming the model, and nothing is computed wrongly."""
    model = patch(build("llama"))
    model.lm_head.register_forward_hook(lambda module, args, output: output + 1.0)
    ids, mask, labels = batch()
    with pytest.raises(UnsupportedLogitsOp, match=r"LlamaForCausalLM applied .*add.* to its"):
        model(input_ids=ids, attention_mask=mask, labels=labels)
    with pytest.raises(ValueError, match=r"cannot be patched: call .*unpatch"):
        model(input_ids=ids, attention_mask=mask, labels=labels)
    model.eval()  # outside a training call the hook works on the real logits
    model(input_ids=ids, attention_mask=mask, labels=labels)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(z_loss=-1.0), ValueError, "z_loss must be a finite number >= 0"),
        (dict(z_loss="0"), TypeError, "z_loss must be a real number"),
        (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\]"),
        (dict(chunk_size=0), ValueError, "chunk_size must be None or an int >= 1"),
        (dict(return_logits=1), TypeError, "return_logits must be a bool"),
    ],
)
def test_bad_options(kwargs, error, match):
    model = build("llama")
    with pytest.raises(error, match=match):
        patch(model, **kwargs)
    assert "forward" not in model.__dict__

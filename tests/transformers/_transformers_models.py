"""Tiny random-initialised causal LMs of every architecture the patch is tested on.

Hidden size 32, 2 layers, a vocabulary of 96: nothing is downloaded, each model builds in
milliseconds.  Dropout is off so that a patched model and its unpatched copy see the same
computation.
"""

from __future__ import annotations

import copy

import torch
import transformers as tf

VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def _llama_with_bias() -> tf.PreTrainedModel:
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**_COMMON))
    model.lm_head = torch.nn.Linear(32, VOCAB, bias=True)
    torch.nn.init.normal_(model.lm_head.bias, std=0.5)
    return model


#: name -> (factory, what it exercises)
ARCHITECTURES = {
    "llama": (lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**_COMMON)), "untied lm_head"),
    "llama-bias": (_llama_with_bias, "an output layer with a bias"),
    "mistral": (lambda: tf.MistralForCausalLM(tf.MistralConfig(**_COMMON)), "sliding window"),
    "qwen2": (lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**_COMMON)), "qkv bias"),
    "qwen3": (lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**_COMMON, head_dim=8)), "qk norm"),
    "gemma2": (
        lambda: tf.Gemma2ForCausalLM(
            tf.Gemma2Config(**_COMMON, head_dim=8, final_logit_softcapping=2.0)
        ),
        "final_logit_softcapping (tied)",
    ),
    "gemma3": (
        lambda: tf.Gemma3ForCausalLM(
            tf.Gemma3TextConfig(**_COMMON, head_dim=8, final_logit_softcapping=3.0)
        ),
        "Gemma3ForCausalLM, softcap (tied)",
    ),
    "phi3": (lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**_COMMON)), "fused qkv"),
    "olmo2": (lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(**_COMMON)), "post-norm"),
    "gpt2": (
        lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(
                vocab_size=VOCAB,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=64,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                bos_token_id=1,
                eos_token_id=2,
            )
        ),
        "tied embeddings, transformer.wte names",
    ),
    "cohere": (
        lambda: tf.CohereForCausalLM(tf.CohereConfig(**_COMMON, logit_scale=0.25)),
        "logit_scale (tied)",
    ),
}


def build(name: str, seed: int = 0) -> tf.PreTrainedModel:
    """The model in float32 and training mode, its weights drawn from ``seed``."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[name][0]().float().train()
    # A visible scale for every logit: the softcap and logit_scale then matter.
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight.normal_(0.0, 0.3)
    return model


def pair(name: str, seed: int = 0):
    """(model, identical copy) for the patched-versus-unpatched comparison."""
    model = build(name, seed)
    return model, copy.deepcopy(model)


def batch(seed: int = 1, size: int = 3, length: int = 10):
    """Token ids, an attention mask with right padding, and labels with -100 on padding and
    on a prompt."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (size, length), generator=gen)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[1, -3:] = 0
    mask[2, -1:] = 0
    ids[mask == 0] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, :4] = -100
    return ids, mask, labels


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def assert_same_grads(patched, reference, rtol=1e-5, atol=1e-6):
    got, want = grads(patched), grads(reference)
    assert got.keys() == want.keys()
    for name in want:
        if want[name] is None:
            assert got[name] is None or not got[name].any(), name
            continue
        assert got[name] is not None, f"{name}: no gradient"
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=name)

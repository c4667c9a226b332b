"""Training with a patched model: transformers.Trainer with gradient accumulation, a plain
loop, torch.compile and PEFT LoRA, each against the same run unpatched."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

from _transformers_models import assert_same_grads, batch, build, pair  # noqa: E402

from crossentropy.transformers import patch, unpatch  # noqa: E402


def close(actual, expected, what="loss", rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=what)


def assert_same_weights(model, reference, rtol=1e-4, atol=1e-5):
    got, want = dict(model.named_parameters()), dict(reference.named_parameters())
    assert got.keys() == want.keys()
    for name in want:
        close(got[name].detach(), want[name].detach(), name, rtol, atol)


# --------------------------------------------------------------------------- Trainer


class _Rows(torch.utils.data.Dataset):
    """16 sequences of uneven padding: the accumulated micro-batches count different
    numbers of tokens, so ``num_items_in_batch`` matters."""

    def __init__(self):
        gen = torch.Generator().manual_seed(5)
        self.rows = []
        for i in range(16):
            ids = torch.randint(3, 96, (12,), generator=gen)
            labels = ids.clone()
            labels[: 1 + (7 * i) % 9] = -100
            self.rows.append(dict(input_ids=ids, labels=labels))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _train(model, tmp_path, name):
    args = tf.TrainingArguments(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_steps=2,
        learning_rate=5e-3,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = tf.Trainer(model=model, args=args, train_dataset=_Rows())
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_trainer_with_gradient_accumulation(tmp_path, name):
    model, reference = pair(name)
    patch(model)
    got = _train(model, tmp_path, "patched")
    want = _train(reference, tmp_path, "unpatched")
    assert len(got) == len(want) == 2
    close(torch.tensor(got), torch.tensor(want))
    assert_same_weights(model, reference)


# --------------------------------------------------------------------------- plain loop


def test_plain_training_loop():
    model, reference = pair("cohere")
    patch(model)
    for net in (model, reference):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
        for step in range(3):
            ids, mask, labels = batch(seed=10 + step)
            loss = net(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert_same_weights(model, reference)


# --------------------------------------------------------------------------- torch.compile


def test_torch_compile():
    # aot_eager runs dynamo and AOTAutograd (where a patch would break) without Inductor's
    # C++ code generation, which would take most of a minute on 2 cores.
    model, reference = pair("gemma2")
    patch(model)
    compiled = torch.compile(model, backend="aot_eager")
    ids, mask, labels = batch()
    got = compiled(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits is None
    got.loss.backward()
    want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    want.loss.backward()
    close(got.loss, want.loss)
    assert_same_grads(model, reference)
    # Without labels the compiled model returns the logits.
    logits = compiled(input_ids=ids, attention_mask=mask).logits
    close(logits, reference(input_ids=ids, attention_mask=mask).logits, "logits")


# --------------------------------------------------------------------------- PEFT


@pytest.mark.parametrize("modules_to_save", [None, ["lm_head"]])
@pytest.mark.parametrize("order", ["patch-peft-model", "patch-then-peft"])
def test_peft_lora(modules_to_save, order):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=modules_to_save,
        init_lora_weights=False,  # non-zero B: the adapters change the loss
    )
    base = build("llama")
    reference = peft.get_peft_model(copy.deepcopy(base), copy.deepcopy(config))
    if order == "patch-peft-model":
        model = patch(peft.get_peft_model(base, config))
    else:
        model = peft.get_peft_model(patch(base), config)
    # Same LoRA weights in both (they are drawn at get_peft_model).
    model.load_state_dict(reference.state_dict())
    model.train()
    reference.train()
    ids, mask, labels = batch()
    got = model(input_ids=ids, attention_mask=mask, labels=labels)
    want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits is None
    got.loss.backward()
    want.loss.backward()
    close(got.loss, want.loss)
    assert_same_grads(model, reference)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable)
    assert any("modules_to_save" in n for n in trainable) == bool(modules_to_save)
    unpatch(model)
    assert "forward" not in model.get_base_model().__dict__
    for module in model.modules():
        assert "_crossentropy_patch_saved" not in module.__dict__


def test_peft_lora_on_the_output_layer_is_refused():
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "lm_head"])
    model = peft.get_peft_model(build("llama"), config)
    with pytest.raises(ValueError, match=r"LlamaForCausalLM: its output layer carries a LoRA"):
        patch(model)


# --------------------------------------------------------------------------- checkpointing


def test_gradient_checkpointing():
    model, reference = pair("qwen3")
    for net in (model, reference):
        net.gradient_checkpointing_enable()
    patch(model)
    ids, mask, labels = batch()
    got = model(input_ids=ids, attention_mask=mask, labels=labels)
    want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    got.loss.backward()
    want.loss.backward()
    close(got.loss, want.loss)
    assert_same_grads(model, reference)

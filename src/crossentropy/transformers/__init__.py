"""Hugging Face ``transformers`` causal LMs trained on the fused linear cross-entropy.

:func:`patch` makes any causal LM of ``transformers`` >= 5 compute its training loss with
:func:`crossentropy.torch.linear_cross_entropy` from the final hidden states and the output
layer's weight, so that the ``(tokens, vocabulary)`` logits are never built.  It copies no
model's ``forward``: it relies only on what every causal LM shares (an output embedding
called on the last hidden states, then ``self.loss_function(logits, labels, ...)``), and
follows the scale and softcap a model applies to its logits by recording them.

>>> import torch, transformers
>>> from crossentropy.transformers import patch, unpatch
>>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
>>> model = patch(transformers.LlamaForCausalLM(config).train())
>>> ids = torch.randint(0, 64, (2, 8))
>>> out = model(input_ids=ids, labels=ids)
>>> out.logits is None, out.loss.shape
(True, torch.Size([]))
>>> out.loss.backward()
>>> model = unpatch(model)
"""

from ._lazy import UnsupportedLogitsOp
from ._patch import patch, unpatch

__all__ = ["UnsupportedLogitsOp", "patch", "unpatch"]

patch.__doc__ = r"""Train ``model`` on the fused linear cross-entropy; returns ``model``.

    In a training call with labels (``model.training`` and ``labels`` given), the loss is

    .. math::

        \ell = \frac{1}{n} \sum_{t\,:\,y_t \ne -100} \Big(
            \operatorname{CE}\big(\sigma(h_t W^\top + b),\, y_t\big)
            + \lambda_z \operatorname{lse}(\cdot)^2 \Big)

    with :math:`h_t` the final hidden states, :math:`W, b` the output layer's weight and
    bias, :math:`\sigma` the model's own element-wise map of its logits (Cohere's
    ``logit_scale``, Gemma's ``final_logit_softcapping``), :math:`y` the labels shifted as
    the model's ``ForCausalLMLoss`` shifts them (or its ``shift_labels``), and :math:`n`
    the number of counted tokens or ``num_items_in_batch`` when the trainer passes it
    (then the sum is divided by it, on the device).  The logits are never built:
    ``outputs.logits`` is None unless ``return_logits=True``.  Without labels, in
    ``eval()`` mode and in ``generate()``, the model runs exactly as before.

    Parameters
    ----------
    model : transformers.PreTrainedModel or peft.PeftModel
        A causal LM whose output embedding (``get_output_embeddings()``) is an
        ``nn.Linear`` -- tied or not, with or without bias, sharded with FSDP2's
        ``fully_shard`` (on the whole model or the output layer) or not -- or PEFT's
        ``modules_to_save`` wrapper of one.
    z_loss : float >= 0
        Coefficient of the z-loss :math:`\lambda_z \operatorname{lse}^2`.
    label_smoothing : float in [0, 1]
        Mass spread uniformly over the vocabulary.
    chunk_size : int, optional
        Tokens per chunk of :func:`~crossentropy.torch.linear_cross_entropy`.
    return_logits : bool
        Also compute and return the logits (the loss still comes from the fused path).

    Returns
    -------
    model
        The same object, patched in place.  Patching again replaces the options;
        :func:`unpatch` restores the model exactly.

    Raises
    ------
    ValueError
        The model cannot be patched safely, naming its class: not a ``transformers``
        model, a loss other than ``ForCausalLMLoss``, no ``nn.Linear`` output layer, a LoRA
        adapter on the output layer, a quantised output layer.  In a training call,
        :class:`UnsupportedLogitsOp` (a ValueError) if the model does more to its logits
        than scale, softcap or cast them.
    """

unpatch.__doc__ = """Undo :func:`patch`: restore every attribute it set; returns ``model``.

    A model that was never patched is returned unchanged.
    """

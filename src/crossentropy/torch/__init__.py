"""PyTorch training losses: cross-entropy, KL and entropy, and a fused linear cross-entropy.

Every loss takes ``(model_output, target)`` like PyTorch's own, with the class dimension
last, so that the essay's identity holds as written::

    cross_entropy(z, t) - kl_loss(z, t) == entropy(t)

and the two losses have the same gradient with respect to ``z``.  Losses compute in at
least float32 (float16/bfloat16 upcast, float64 kept), make no host synchronisation unless
``validate=True``, and work under ``torch.compile``.  An all-ignored batch gives loss 0
and zero gradients under ``mean``.

:func:`linear_cross_entropy` is the loss of a language-model head without the
``(tokens, vocabulary)`` logits tensor: chunked, with the gradient computed in forward.
:func:`token_stats` and :func:`linear_token_stats` give the per-token statistics
(log-probability, entropy, log-sum-exp, collision probability, argmax, top-k) that
reinforcement learning and evaluation compose their objectives from.
"""

from ._distill import Teacher, TopK
from ._functional import (
    cross_entropy,
    distillation_loss,
    entropy_loss,
    kl_loss,
    linear_cross_entropy,
    linear_distillation_loss,
    linear_token_stats,
    token_stats,
)
from ._modules import CrossEntropyLoss, KLLoss, LinearCrossEntropyLoss
from ._stats import TokenStats

__all__ = [
    "CrossEntropyLoss",
    "KLLoss",
    "LinearCrossEntropyLoss",
    "Teacher",
    "TokenStats",
    "TopK",
    "cross_entropy",
    "distillation_loss",
    "entropy_loss",
    "kl_loss",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "linear_token_stats",
    "token_stats",
]

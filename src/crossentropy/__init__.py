"""crossentropy: entropy, cross-entropy and KL divergence, right at every edge.

    H(p, q) = D(p || q) + S(p)

The data's entropy S(p) is fixed, so minimising the cross-entropy loss minimises the KL
divergence from the data to the model: that is why cross-entropy is the loss.

Importing this package imports neither torch nor jax; the array you pass decides.
"""

from ._forms import Labels, Logits, LogProbs
from ._measures import (
    Decomposition,
    cross_entropy,
    decompose,
    entropy,
    js_divergence,
    kl_divergence,
)

__all__ = [
    "Decomposition",
    "Labels",
    "LogProbs",
    "Logits",
    "cross_entropy",
    "decompose",
    "entropy",
    "js_divergence",
    "kl_divergence",
]

__version__ = "0.1.0"

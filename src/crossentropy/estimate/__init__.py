"""Estimate entropy and information from finite samples: the data's own floor.

The loss floor of a model is the entropy of the truth, but all one has is a sample, and
the entropy of a sample (the plug-in estimate) is biased low, badly so when the alphabet
is large. This subpackage counts samples (:func:`counts`, :class:`Counts`), estimates
entropy with bias-corrected and Bayesian estimators (:func:`entropy`), attaches
intervals (:func:`entropy_interval`), and splits a held-out loss into its parts with
uncertainty (:func:`cross_entropy`, :func:`kl_divergence`), plus
:func:`conditional_entropy` and :func:`mutual_information`.

Requires SciPy (special functions), which ``import crossentropy`` alone does not load.
"""

from ._counts import Counts, counts
from ._entropy import METHODS, entropy, entropy_interval
from ._information import conditional_entropy, cross_entropy, kl_divergence, mutual_information
from ._result import Estimate

__all__ = [
    "METHODS",
    "Counts",
    "Estimate",
    "conditional_entropy",
    "counts",
    "cross_entropy",
    "entropy",
    "entropy_interval",
    "kl_divergence",
    "mutual_information",
]

"""Estimate entropy and information from finite samples: the data's own floor.

The loss floor of a model is the entropy of the truth, but all one has is a sample, and
the entropy of a sample (the plug-in estimate) is biased low, badly so when the alphabet
is large. This subpackage counts samples (:func:`counts`, :class:`Counts`), estimates
entropy with bias-corrected and Bayesian estimators (:func:`entropy`), attaches
intervals (:func:`entropy_interval`), and splits a held-out loss into its parts with
uncertainty (:func:`cross_entropy`, :func:`kl_divergence`), plus
:func:`conditional_entropy` and :func:`mutual_information`.

Every function returns an :class:`Estimate`: the value, the method that produced it
(``method="auto"`` says which it chose) and, where there is one, a standard error and an
interval. Requires SciPy (special functions), which ``import crossentropy`` alone does not
load.

Examples
--------
>>> import numpy as np
>>> from crossentropy import Labels
>>> from crossentropy.estimate import counts, entropy, kl_divergence
>>> rng = np.random.default_rng(0)
>>> p = 1 / np.arange(1, 101)
>>> p /= p.sum()                                  # a Zipf truth over 100 symbols
>>> sample = rng.choice(100, size=80, p=p)        # fewer samples than symbols
>>> c = counts(sample, alphabet_size=100)
>>> round(entropy(c, method="plugin").value, 2)   # biased low; the truth is 3.68
3.26
>>> est = entropy(c)                              # auto: undersampled, K known
>>> est.method, round(est.value, 2), round(est.std_error, 2)
('nsb', 3.73, 0.15)
>>> q = np.full(100, 0.01)                        # a uniform model; true D(p || q) = 0.92
>>> d = kl_divergence(Labels(sample), q, seed=0)  # the reducible part of its loss
>>> d.method, round(d.value, 2), round(d.low, 2), round(d.high, 2)
('nsb', 0.87, 0.6, 1.14)
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

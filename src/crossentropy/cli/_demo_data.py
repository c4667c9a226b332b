"""The demo's data sets, as fixed data distributions P(D) over inputs.

Each data set is a set of rows: an input x, the data's distribution P(D)(y | x) over the
classes, and the share of the data set the row stands for.  The mean loss over all
tokens of a data set equals the weighted sum over rows, so full-batch training on rows
is training on every token at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

ALPHABET = " .abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Split:
    """Rows of a data set: inputs (n, d), P(D)(y | x) (n, K), row weights (n,) summing to 1.

    ``counts`` (n, K), where the rows come from counting samples, lets the demo estimate
    the truth's entropy beside the data's.
    """

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    counts: np.ndarray | None = None


@dataclass(frozen=True)
class DataSet:
    name: str
    description: str
    unit: str
    classes: tuple[str, ...]
    train: Split
    held_out: Split
    #: The divergence the KL run trains with when the targets are a teacher's
    #: distribution (distillation), as crossentropy.torch.distillation_loss names it.
    divergence: str | None = None


def demo_text() -> str:
    """The demo's text, shipped with the package: lower-case a-z, "." and single spaces.

    Python 3.11's docstrings of twenty standard-library modules, frozen once into
    ``data/demo_text.txt`` (how, and the PSF licence, in ``data/README.txt``), so every
    Python version trains on the same text and prints the same numbers.
    """
    path = resources.files("crossentropy.cli") / "data" / "demo_text.txt"
    return " ".join(path.read_text(encoding="ascii").split())


def _bigram_split(paragraphs: list[str]) -> Split:
    index = {c: i for i, c in enumerate(ALPHABET)}
    k = len(ALPHABET)
    counts = np.zeros((k, k))
    for paragraph in paragraphs:
        codes = np.fromiter((index[c] for c in paragraph), dtype=np.intp)
        np.add.at(counts, (codes[:-1], codes[1:]), 1.0)
    seen = counts.sum(axis=1)
    # An unseen context has weight 0; give it a uniform row so every row is a distribution.
    targets = np.where(seen[:, None] > 0, counts / np.maximum(seen, 1)[:, None], 1.0 / k)
    return Split(np.eye(k), targets, seen / seen.sum(), counts)


def text(held_out_every: int = 5) -> DataSet:
    """Character bigrams of :func:`demo_text`; every fifth sentence held out."""
    paragraphs = [p for p in re.split(r"(?<=\.) ", demo_text()) if len(p) > 1]
    train = [p for i, p in enumerate(paragraphs) if i % held_out_every]
    held_out = [p for i, p in enumerate(paragraphs) if not i % held_out_every]
    size = sum(map(len, train))
    return DataSet(
        name="text",
        description="character bigrams of a fixed text, Python 3.11's docstrings "
        f"({size:,} training characters); the model predicts the next character from the "
        "previous one",
        unit="character",
        classes=tuple(ALPHABET),
        train=_bigram_split(train),
        held_out=_bigram_split(held_out),
    )


def digits(seed: int = 0, temperature: float = 2.0) -> DataSet:
    """scikit-learn's digits with soft targets from a teacher (distillation).

    The teacher is a softmax regression fitted to the hard labels; its predictions at
    ``temperature`` are the data distribution P(D)(y | x) the student learns.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
    except ImportError as error:
        raise ValueError(
            "the digits data set needs scikit-learn: pip install 'crossentropy[digits]'"
        ) from error
    bunch: Any = load_digits()
    x = bunch.data / 16.0
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, held = order[:cut], order[cut:]
    teacher = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], bunch.target[train])
    logits = teacher.decision_function(x) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    soft /= soft.sum(axis=1, keepdims=True)

    def split(rows: np.ndarray) -> Split:
        return Split(x[rows], soft[rows], np.full(len(rows), 1.0 / len(rows)))

    return DataSet(
        name="digits",
        description=f"scikit-learn's digits ({cut} training images), soft targets from a "
        f"softmax-regression teacher at temperature {temperature:g} (distillation)",
        unit="image",
        classes=tuple(str(c) for c in range(10)),
        train=split(train),
        held_out=split(held),
        divergence="forward_kl",
    )


DATASETS: dict[str, Callable[[], DataSet]] = {"text": text, "digits": digits}

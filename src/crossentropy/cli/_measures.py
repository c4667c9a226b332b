"""``crossentropy entropy | cross-entropy | kl | js | decompose`` on numbers typed in."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _measures
from .._forms import Labels, Logits, LogProbs
from . import _jsonio

_FORMS = {"probs": None, "logits": Logits, "log-probs": LogProbs}

_COMMANDS: dict[str, tuple[str, Callable[..., Any]]] = {
    "entropy": ("S(p) = -sum p log p, the entropy of p", _measures.entropy),
    "cross-entropy": ("H(p,q) = -sum p log q, the cross-entropy", _measures.cross_entropy),
    "kl": ("D(p||q) = sum p log(p/q), the KL divergence of q from p", _measures.kl_divergence),
    "js": ("JS(p,q), the Jensen-Shannon divergence", _measures.js_divergence),
    "decompose": ("H(p,q) = D(p||q) + S(p), all three", _measures.decompose),
}


def register(commands: Any) -> None:
    for name, (summary, _) in _COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument(
            "p",
            help="the data distribution: comma-separated numbers, e.g. 0.5,0.5"
            + (" (or a class index with --p-form label)" if name != "entropy" else ""),
        )
        if name != "entropy":
            sub.add_argument("q", help="the model distribution, e.g. 0.9,0.1")
        sub.add_argument("--base", type=_base, default=None, help=BASE_HELP)
        p_forms = [*_FORMS, "label"] if name != "entropy" else list(_FORMS)
        sub.add_argument(
            "--p-form",
            choices=p_forms,
            default="probs",
            help="what the numbers of p are (default: probs)",
        )
        if name != "entropy":
            sub.add_argument(
                "--q-form",
                choices=list(_FORMS),
                default="probs",
                help="what the numbers of q are (default: probs)",
            )
        sub.add_argument("--json", action="store_true", help="print a JSON object")
        sub.set_defaults(run=_run, measure=name)


#: The help of every command's --base.
BASE_HELP = "logarithm base: e (nats, default), 2 (bits), or any finite number > 1"

# The JSON key of each measure: the library's function names.
_KEYS = {
    "entropy": "entropy",
    "cross-entropy": "cross_entropy",
    "kl": "kl_divergence",
    "js": "js_divergence",
}


def _base(text: str) -> float:
    """``--base``: e, 2, or any finite number > 1 (a base <= 1 makes divergences <= 0)."""
    if text.strip().lower() == "e":
        return math.e
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 1):
        raise argparse.ArgumentTypeError(
            f"must be e, 2 or another finite number > 1; got {text.strip()!r}"
        )
    return value


def parse_numbers(text: str, name: str) -> np.ndarray:
    """``"0.5, 0.5"`` -> ``array([0.5, 0.5])``; a readable ValueError otherwise."""
    parts = [t.strip() for t in text.split(",")]
    try:
        return np.array([float(t) for t in parts], dtype=np.float64)
    except ValueError:
        raise ValueError(
            f"{name} must be comma-separated numbers such as 0.5,0.5; got {text.strip()!r}"
        ) from None


def _parse_label(text: str) -> np.ndarray:
    try:
        return np.asarray(int(text.strip()))
    except ValueError:
        raise ValueError(f"p must be one class index with --p-form label; got {text!r}") from None


def _wrap(values: np.ndarray, form: str) -> Any:
    wrapper = _FORMS[form]
    return values if wrapper is None else wrapper(values)


def _run(args: argparse.Namespace) -> int:
    _, function = _COMMANDS[args.measure]
    if args.p_form == "label":
        p: Any = Labels(_parse_label(args.p))
    else:
        p = _wrap(parse_numbers(args.p, "p"), args.p_form)
    operands = [p]
    if args.measure != "entropy":
        operands.append(_wrap(parse_numbers(args.q, "q"), args.q_form))
    result = function(*operands, base=args.base)
    unit = {None: "nats", math.e: "nats", 2.0: "bits"}.get(args.base) or f"base {args.base:g}"
    if args.measure == "decompose":
        values = {k: float(v) for k, v in result._asdict().items()}
    else:
        values = {_KEYS[args.measure]: float(result)}
    if args.json:
        print(_jsonio.dumps({**values, "unit": unit}))
    elif len(values) == 1:
        print(f"{next(iter(values.values())):.10g}")
    else:
        for key, value in values.items():
            print(f"{key:<14} {value:.10g} {unit}")
    return 0

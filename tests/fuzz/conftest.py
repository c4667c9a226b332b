"""Hypothesis profiles for the fuzz suite in ``tests/fuzz``.

Two profiles are registered:

``ci`` (the default)
    A few dozen examples per property, no deadline, derandomized so that every CI run
    draws the same examples and a failure is reproducible.  The whole folder runs in
    well under two minutes.
``fuzz``
    Thousands of random examples per property, for a long local hunt.

Select ``fuzz`` with the environment variable ``CROSSENTROPY_FUZZ=1``::

    CROSSENTROPY_FUZZ=1 python -m pytest -q tests/fuzz

or with hypothesis' own pytest option, which wins over the variable::

    python -m pytest -q tests/fuzz --hypothesis-profile=fuzz
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "fuzz",
    max_examples=3000,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)


def _profile(config: pytest.Config) -> str:
    given = config.getoption("hypothesis_profile", default=None)
    if given:
        return given
    return "fuzz" if os.environ.get("CROSSENTROPY_FUZZ") == "1" else "ci"


def pytest_configure(config: pytest.Config) -> None:
    # Called when this conftest is registered, after hypothesis' own plugin has applied
    # --hypothesis-profile; re-applying the chosen one keeps the option in charge.
    settings.load_profile(_profile(config))


settings.load_profile("fuzz" if os.environ.get("CROSSENTROPY_FUZZ") == "1" else "ci")

"""What the fvcore tests share: fvcore itself (the reference), quiet runs, scaled results.

``from fvcore_reference import fvcore_nn, quiet`` in a test module makes ``quiet`` (an autouse
fixture) apply to every test there.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # fvcore scripts helpers at import
    import fvcore.nn as fvcore_nn  # noqa: F401 (the reference; the test extra installs it)


@pytest.fixture(autouse=True)
def quiet():
    """No logs (fvcore's and ours: unsupported ops, uncalled modules) and no warnings (fvcore's
    TracerWarnings, the models' own)."""
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def scaled(unit: float, **counts: float) -> defaultdict:
    """{name: count / unit} as fvcore's flop_count (unit 1e9) and activation_count (1e6) return."""
    result = defaultdict(float)
    for name, value in counts.items():
        result[name] = value / unit
    return result

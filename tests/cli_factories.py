"""Factories for tests/test_cli.py (imported by the CLI as ``tests.cli_factories:NAME``)."""

from torch import nn


def huge_linear() -> nn.Module:
    # 10**6 x 10**6 float32 weights: 3.6 TiB, more than any test machine has.
    return nn.Linear(10**6, 10**6, bias=False)


def tiny_linear() -> nn.Module:
    return nn.Linear(4, 3, bias=False)

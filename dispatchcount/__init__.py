"""dispatchcount: a FLOP counter for PyTorch that sees every aten op at dispatch."""

from dispatchcount.registry import register_formula

__all__ = ["register_formula"]

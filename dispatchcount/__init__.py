"""dispatchcount: a FLOP counter for PyTorch that sees every aten op at dispatch."""

from dispatchcount.mode import FlopMode, FormulaError, UnsupportedOperatorError, count_flops
from dispatchcount.registry import register_formula

__all__ = ["FlopMode", "count_flops", "register_formula", "UnsupportedOperatorError", "FormulaError"]

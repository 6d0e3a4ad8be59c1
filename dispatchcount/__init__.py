"""dispatchcount: a FLOP counter for PyTorch that sees every aten op at dispatch."""

from dispatchcount import distributed
from dispatchcount.mode import FlopMode, count_flops
from dispatchcount.problems import FormulaError, UnsupportedOperatorError
from dispatchcount.records import Counts
from dispatchcount.registry import explain, register_formula

__all__ = [
    "FlopMode",
    "count_flops",
    "register_formula",
    "explain",
    "Counts",
    "UnsupportedOperatorError",
    "FormulaError",
    "distributed",
]

"""dispatchcount: a FLOP counter for PyTorch that sees every aten op at dispatch."""

from dispatchcount import distributed
from dispatchcount.devices import DeviceSpec, devices
from dispatchcount.generation import GenerationCount, count_generate
from dispatchcount.mode import FlopMode, count_flops
from dispatchcount.problems import FormulaError, UnsupportedOperatorError
from dispatchcount.records import Counts
from dispatchcount.registry import Cost, explain, register_formula

__all__ = [
    "FlopMode",
    "count_flops",
    "count_generate",
    "GenerationCount",
    "register_formula",
    "explain",
    "Counts",
    "Cost",
    "DeviceSpec",
    "devices",
    "UnsupportedOperatorError",
    "FormulaError",
    "distributed",
]

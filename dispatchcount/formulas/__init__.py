"""FLOP formulas, one module per op family; importing this package registers them all."""

from dispatchcount.formulas import attention, conv, matmul, prim  # noqa: F401
from dispatchcount.formulas import fvcore_rules  # noqa: F401

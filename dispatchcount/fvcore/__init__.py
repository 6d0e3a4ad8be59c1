"""Drop-in replacements for fvcore's ``FlopCountAnalysis``, ``flop_count_table`` and friends.

Migrating is one changed import::

    # from fvcore.nn import FlopCountAnalysis, flop_count_table
    from dispatchcount.fvcore import FlopCountAnalysis, flop_count_table

    flops = FlopCountAnalysis(model, inputs)
    flops.total(), flops.by_module(), flops.by_operator()
    print(flop_count_table(flops))

The whole fvcore convention lives in this package: its rules (``rules``, ``einsum``), its
dispatch hook (``hook``), the JIT-value shim for fvcore-style handles (``handles``), the analysis
front (``analysis``) and fvcore's table text (``table``).
"""

from dispatchcount.fvcore.analysis import FlopCountAnalysis, flop_count
from dispatchcount.fvcore.handles import JitValue as _JitValue  # noqa: F401  (fvcore-style handles' argument)
from dispatchcount.fvcore.table import flop_count_table, parameter_count

__all__ = ["FlopCountAnalysis", "flop_count", "flop_count_table", "parameter_count"]

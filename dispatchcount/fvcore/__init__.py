"""Drop-in replacements for fvcore's ``FlopCountAnalysis``, ``flop_count_table`` and friends.

Migrating is one changed import::

    # from fvcore.nn import FlopCountAnalysis, flop_count_table
    from dispatchcount.fvcore import FlopCountAnalysis, flop_count_table

    flops = FlopCountAnalysis(model, inputs)
    flops.total(), flops.by_module(), flops.by_operator()
    print(flop_count_table(flops))

The whole fvcore convention lives in this package: its rules (``rules``, ``beyond``,
``einsum``), its dispatch hook (``hook``), fvcore's op names, handles and the JIT-value shim
(``handles``), the analyses (``analysis``: ``JitModelAnalysis``, ``FlopCountAnalysis``;
``activation``: ``ActivationCountAnalysis``) and fvcore's text (``table``).
"""

from dispatchcount.fvcore.activation import ActivationCountAnalysis, activation_count
from dispatchcount.fvcore.analysis import _DEFAULT_SUPPORTED_OPS, _IGNORED_OPS  # noqa: F401 (fvcore's names)
from dispatchcount.fvcore.analysis import FlopCountAnalysis, JitModelAnalysis, flop_count
from dispatchcount.fvcore.handles import Handle
from dispatchcount.fvcore.handles import JitValue as _JitValue  # noqa: F401  (fvcore-style handles' argument)
from dispatchcount.fvcore.table import flop_count_str, flop_count_table, parameter_count

__all__ = [
    "ActivationCountAnalysis",
    "FlopCountAnalysis",
    "Handle",
    "JitModelAnalysis",
    "activation_count",
    "flop_count",
    "flop_count_str",
    "flop_count_table",
    "parameter_count",
]

"""Custom ops with Triton kernels, installed as ``dispatchcount.kernels``.

Importing this package defines ``torch.ops.dispatchcount.selective_scan`` (and its backward op)
and registers their FLOP formulas. The selective scan's code is the subpackage ``scan``; its
function is ``selective_scan``. Triton is optional (``pip install 'dispatchcount[triton]'``).

Imported from a source checkout as the top-level ``kernels``, this package makes that name an
alias of the installed ``dispatchcount.kernels``, so the ops are defined once per process.
"""

import importlib as _importlib
import sys as _sys

_INSTALLED = "dispatchcount.kernels"


def _installed_package():
    if __name__ == _INSTALLED:
        return None
    try:
        return _importlib.import_module(_INSTALLED)
    except ImportError:  # not installed: this checkout is the only copy, keep it
        return None


_package = _installed_package()
if _package is not None:
    for _name, _module in list(_sys.modules.items()):
        if _name == _INSTALLED or _name.startswith(_INSTALLED + "."):
            _sys.modules[__name__ + _name[len(_INSTALLED):]] = _module
else:
    from .scan import selective_scan  # noqa: F401

    __all__ = ["selective_scan"]

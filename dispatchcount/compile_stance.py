"""torch.compile and a FlopMode block: compiled functions run eagerly inside, normally after.

Dynamo refuses to compile a frame it is handed while a (non-infra) TorchDispatchMode is active,
and its refusal is for good: ``CatchErrorsWrapper.__call__`` (torch/_dynamo/convert_frame.py,
"non-infra torch dispatch mode present") returns a default ``ConvertFrameReturn``, whose
strategy is ``FrameAction.SKIP`` with ``apply_to_code=True``, so the code object is marked
skipped for every later call. A function first called under a FlopMode would never be compiled
afterwards, and a compiled one that met a new shape there would never recompile.

Under the ``"force_eager"`` stance a ``torch.compile``'d function runs its original code without
handing any frame to Dynamo (``_callback_from_stance`` in torch/_dynamo/eval_frame.py returns no
callback), so nothing is marked, every op runs eagerly through the mode and is counted as in
eager mode, and compiled code is never run inside the block (its fused kernels would bypass the
counter). The stance is global to the process, like Dynamo's; the previous stance is restored
when the block ends. Both PyTorch 2.11 and 2.13 have ``torch.compiler.set_stance`` (since 2.6).

Dynamo is not imported for this: while ``torch._dynamo`` is not loaded nothing has been
compiled, and no frame can be marked.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

__all__ = ["force_eager", "unchanged"]

# The stance is one per process while FlopModes are per thread: it is set while any FlopMode
# is active and restored when the last one exits, in whatever order threads exit.
_lock = threading.Lock()
_active = 0
_restore: Callable[[], None]


def unchanged() -> None:
    """The restore function when the stance was not changed."""
    return None


_restore = unchanged


def _set_force_eager() -> Callable[[], None]:
    if "torch._dynamo" not in sys.modules:
        return unchanged
    import torch

    try:
        stance = torch.compiler.set_stance("force_eager")  # set now; its __exit__ restores
    except RuntimeError:  # "attempted to set_stance in a torch.compile region"
        return unchanged
    return lambda: stance.__exit__(None, None, None)


def force_eager() -> Callable[[], None]:
    """Hold torch.compile's ``"force_eager"`` stance; returns the function that releases it
    (the previous stance comes back when the last holder releases). Inside a region
    torch.compile is running the stance cannot change (Dynamo's own tracing decides there)."""
    global _active, _restore
    with _lock:
        if _restore is unchanged:
            _restore = _set_force_eager()
        _active += 1
    return _release


def _release() -> None:
    global _active, _restore
    with _lock:
        _active -= 1
        if _active == 0:
            restore, _restore = _restore, unchanged
            restore()

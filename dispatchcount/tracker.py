"""Which module is running: forward through module hooks, backward through autograd nodes.

Forward: global module hooks push and pop a ``Frame`` (the module's call path) on a stack that
only the thread owning the counter moves. Ops take the top frame.

Backward: each autograd node carries the sequence number it was created with, and sequence
numbers grow monotonically on the forward thread. While a top-level module call runs, the
tracker records at which sequence number each frame became current; an op executed for a node
is charged to the frame that was current when the node was created. The record of one
top-level call (a ``_Segment``) lives as long as the autograd graph it built: a token stored in
the metadata of the output's ``grad_fn`` drops it when the graph is freed, so a long training
loop keeps constant memory.

Modules entered while a backward node runs are activation-checkpointing recomputation: they are
tracked on their own stack, by qualified name.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_right
from typing import Any, Optional

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._pytree import tree_leaves

_next_sequence_nr = torch._C._autograd._get_sequence_nr
_current_node = torch._C._current_autograd_node


class Frame:
    """A module call path. ``names`` holds each distinct qualified name on it, innermost last."""

    __slots__ = ("name", "names", "parent", "children", "__weakref__")

    def __init__(self, name: str, parent: Optional["Frame"]) -> None:
        self.name = name
        self.parent = parent
        names = list(parent.names) if parent is not None else []
        for enclosing in _enclosing_names(parent.name if parent is not None else None, name):
            if enclosing not in names:
                names.append(enclosing)
        self.names: tuple[str, ...] = tuple(names)
        self.children: dict[str, Frame] = {}

    def child(self, name: str) -> "Frame":
        frame = self.children.get(name)
        if frame is None:
            frame = self.children[name] = Frame(name, self)
        return frame

    def __repr__(self) -> str:
        return f"Frame({' > '.join(repr(n) for n in self.names)})"


def _enclosing_names(parent: Optional[str], name: str) -> list[str]:
    """``name`` preceded by the names between it and ``parent`` when ``parent`` encloses it.

    A container that is never called (``layers``, a ModuleList) still encloses ``layers.0``:
    ``_enclosing_names("", "layers.0") == ["layers", "layers.0"]``. A shared module called from
    outside its owner gets only its own name.
    """
    if parent is None or name == parent:
        return [name]
    if parent and not name.startswith(parent + "."):
        return [name]
    parts = name[len(parent) + 1 :].split(".") if parent else name.split(".")
    prefix = parent + "." if parent else ""
    return [prefix + ".".join(parts[: i + 1]) for i in range(len(parts))]


class _Segment:
    """Sequence numbers at which the current frame changed during one top-level module call."""

    __slots__ = ("seqs", "frames", "end", "alive", "finalizer")

    def __init__(self, seq: int, frame: Frame) -> None:
        self.seqs = [seq]
        self.frames = [frame]
        self.end: Optional[int] = None  # exclusive; None while the call runs
        self.alive = True
        self.finalizer: Optional[weakref.finalize] = None

    def mark(self, seq: int, frame: Frame) -> None:
        if self.seqs[-1] == seq:  # no node was created since the last change
            self.frames[-1] = frame
        else:
            self.seqs.append(seq)
            self.frames.append(frame)

    def frame_of(self, seq: int) -> Frame:
        return self.frames[bisect_right(self.seqs, seq) - 1]


class _GraphToken:
    """Lives in ``grad_fn.metadata`` of a call's outputs; its death frees the segment."""

    __slots__ = ("__weakref__",)


def _forget(segment: _Segment) -> None:
    segment.alive = False


class _CallStack:
    """Module calls in progress in one context: the forward, or a recomputation in backward."""

    __slots__ = ("base", "entries", "open")

    def __init__(self, base: Frame) -> None:
        self.base = base
        self.entries: list[tuple[torch.nn.Module, Frame]] = []
        self.open: Optional[_Segment] = None  # the segment of the outermost call in progress

    @property
    def top(self) -> Frame:
        return self.entries[-1][1] if self.entries else self.base

    def holds(self, module: torch.nn.Module) -> bool:
        return any(m is module for m, _ in self.entries)


class ModuleTracker:
    """Tracks the running module for one counter on one thread.

    ``model`` (optional) names modules as ``model.named_modules()`` does, the model itself "";
    other modules are named after their parent and attribute, or their class.
    """

    def __init__(self, model: Optional[torch.nn.Module] = None) -> None:
        self.model = model
        self.root = Frame("", None)
        self.current = self.root  # the forward's innermost frame: read for every op
        self.names: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
        self.params: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        # The model's modules by id (a plain dict: faster than the weak one, read on every call).
        self._model_modules: dict[int, tuple[torch.nn.Module, str]] = {}
        if model is not None:
            for name, module in model.named_modules():
                self._model_modules[id(module)] = (module, name)
                self.params[name] = sum(p.numel() for p in module.parameters())
        self._forward = _CallStack(self.root)
        self._recompute = _CallStack(self.root)
        self._segments: list[_Segment] = []
        self._last_seq, self._last_frame = -1, self.root
        self._thread: Optional[int] = None
        self._handles: list[Any] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.get_ident()
        self._handles = [
            register_module_forward_pre_hook(self._pre_hook),
            register_module_forward_hook(self._post_hook, always_call=True),
        ]

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for segment in self._segments:
            if segment.finalizer is not None:
                segment.finalizer.detach()
        self._segments = []
        self._forward = _CallStack(self.root)
        self._recompute = _CallStack(self.root)
        self.current = self.root
        self._thread = None

    # -- names -----------------------------------------------------------------------------

    def name_of(self, module: torch.nn.Module, stack: _CallStack) -> str:
        known = self._model_modules.get(id(module))
        if known is not None and known[0] is module:
            return known[1]
        name = self.names.get(module)
        if name is not None:
            return name
        wrapped = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(wrapped, torch.nn.Module):
            known = self._model_modules.get(id(wrapped))
            if known is not None and known[0] is wrapped:
                return known[1]
        parent = stack.top
        prefix = parent.name + "." if parent.name else ""
        name = prefix + type(module).__name__
        if stack.entries:
            for child_name, child in stack.entries[-1][0].named_children():
                if child is module:
                    name = prefix + child_name
                    break
        self.names[module] = name
        self.params.setdefault(name, sum(p.numel() for p in module.parameters()))
        return name

    # -- hooks -----------------------------------------------------------------------------

    def _pre_hook(self, module: torch.nn.Module, args: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        # A module entered while an autograd node runs is recomputation (checkpointing).
        stack = self._recompute if _current_node() is not None else self._forward
        name = self.name_of(module, stack)
        frame = stack.top.child(name)
        stack.entries.append((module, frame))
        if stack is self._forward:
            self.current = frame
            self.calls[name] = self.calls.get(name, 0) + 1
        seq = _next_sequence_nr()
        if stack.open is None:
            self._prune()
            stack.open = _Segment(seq, frame)
            self._segments.append(stack.open)
        else:
            stack.open.mark(seq, frame)

    def _post_hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        if self._recompute.entries and self._recompute.holds(module):
            stack = self._recompute
        elif self._forward.holds(module):
            stack = self._forward
        else:
            return
        while stack.entries:  # also unwinds calls an exception cut short
            popped, _ = stack.entries.pop()
            if popped is module:
                break
        if stack is self._forward:
            self.current = stack.top
        segment = stack.open
        if segment is None:
            return
        seq = _next_sequence_nr()
        segment.mark(seq, stack.top)
        if not stack.entries:
            stack.open = None
            self._close(segment, seq, output)

    # -- segments --------------------------------------------------------------------------

    def _close(self, segment: _Segment, seq: int, output: Any) -> None:
        segment.end = seq
        self._last_seq = -1
        grad_fns = [
            t.grad_fn for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.grad_fn is not None
        ]
        if segment.seqs[0] == seq or not grad_fns:
            segment.alive = False  # no graph to run backward through
            return
        token = _GraphToken()
        for grad_fn in grad_fns:
            grad_fn.metadata[_GraphToken] = token
        segment.finalizer = weakref.finalize(token, _forget, segment)
        segment.finalizer.atexit = False

    def _prune(self) -> None:
        self._last_seq = -1
        if any(not s.alive for s in self._segments):
            self._segments = [s for s in self._segments if s.alive]

    # -- queries (hot path) ----------------------------------------------------------------

    def backward_frame(self, node: Any) -> tuple[Frame, bool]:
        """The frame an op run for autograd ``node`` is charged to, and whether it recomputes."""
        if self._recompute.entries and threading.get_ident() == self._thread:
            return self._recompute.top, True
        seq = node._sequence_nr()
        frame = self._last_frame if seq == self._last_seq else self._find_frame(seq)
        return frame, False

    def _find_frame(self, seq: int) -> Frame:
        # Several ops usually run for one node: remember the last answer.
        frame = self.root
        for segment in self._segments:
            end = segment.end
            if segment.seqs[0] <= seq and (end is None or seq < end):
                frame = segment.frame_of(seq)
                break
        self._last_seq, self._last_frame = seq, frame
        return frame

"""Which module is running: forward through module hooks, backward through autograd nodes.

Forward: global module hooks push and pop a ``Frame`` (the module's call path) on a stack that
only the thread owning the counter moves. Ops take the top frame.

Backward: each autograd node carries the sequence number it was created with, and sequence
numbers grow monotonically on each thread. While a top-level module call runs, the tracker
records at which sequence number each frame became current (a ``_Segment``); an op executed for
a node is charged to the frame that was current when the node was created. Segments are kept
sorted by their first sequence number, so a lookup is a binary search whatever the number of
live calls. A segment lives as long as the autograd graph it built: a token stored in the
metadata of the ``grad_fn`` of every module output of the call marks it dead when the last of
those nodes is freed, and dead segments are dropped in amortized constant time, so a long
training loop keeps constant memory.

Recomputation (activation checkpointing) is told apart from backward: ops run inside a
reentrant checkpoint's backward node or under non-reentrant checkpoint's recomputation hook,
and modules entered while a backward node runs. Nodes built while a reentrant checkpoint
recomputes are charged to the frame that called ``checkpoint``, or to the module recomputed.

Other threads: a counter counts its own thread's program. Their forward is invisible to it
(dispatch modes are thread-local), so the graph a module call builds on another thread is
marked in its nodes' metadata, and their backward is not counted either.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_right
from typing import Any, Iterator, Optional

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._pytree import tree_leaves

_next_sequence_nr = torch._C._autograd._get_sequence_nr
_current_node = torch._C._current_autograd_node
_current_graph_task_id = torch._C._current_graph_task_id
_get_ident = threading.get_ident
# The saved-tensor hooks on top of this thread's stack; (pack, unpack) or None. Private, present
# since torch 2.8; without it non-reentrant recomputation outside modules counts as backward.
_top_saved_tensors_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", lambda _: None)
# torch.utils.checkpoint (use_reentrant=False) recomputes under these saved-tensor hooks.
_RECOMPUTATION_HOOKS = "_recomputation_hook."
# The backward node of torch.utils.checkpoint's reentrant CheckpointFunction (and of DeepSpeed's,
# Megatron's and fairscale's, which share the name): it recomputes, then runs a nested backward.
_REENTRANT_CHECKPOINT = "CheckpointFunctionBackward"


class Frame:
    """A module call path. ``names`` holds each distinct qualified name on it, innermost last."""

    __slots__ = ("name", "_names", "parent", "children", "__weakref__")

    def __init__(self, name: str, parent: Optional["Frame"]) -> None:
        self.name = name
        self.parent = parent
        self._names: Optional[tuple[str, ...]] = None  # worked out when a report first asks
        self.children: dict[str, Frame] = {}

    @property
    def names(self) -> tuple[str, ...]:
        names = self._names
        if names is None:
            parent = self.parent
            path = list(parent.names) if parent is not None else []
            for enclosing in _enclosing_names(parent.name if parent is not None else None, self.name):
                if enclosing not in path:
                    path.append(enclosing)
            names = self._names = tuple(path)
        return names

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


# -- segments ------------------------------------------------------------------------------


class _GraphToken:
    """Stored in the metadata of the nodes a call created; its death frees the segment."""

    __slots__ = ("__weakref__",)


class _Segment:
    """Sequence numbers at which the current frame changed during one top-level module call."""

    __slots__ = ("start", "seqs", "frames", "end", "parent", "alive", "token", "watch", "pinned")

    def __init__(self, seq: int, frame: Frame, parent: Optional["_Segment"]) -> None:
        self.start = seq
        self.seqs = [seq]
        self.frames = [frame]
        self.end: Optional[int] = None  # exclusive; None while the call runs
        self.parent = parent  # the segment still open when this one opened (it encloses this one)
        self.alive = True
        self.token: Optional[_GraphToken] = None  # held only while the call runs
        self.watch: Optional[_Watch] = None
        self.pinned = False  # a reentrant checkpoint's recomputation: module calls do not close it

    def mark(self, seq: int, frame: Frame) -> None:
        if self.seqs[-1] == seq:  # no node was created since the last change
            self.frames[-1] = frame
        else:
            self.seqs.append(seq)
            self.frames.append(frame)

    def frame_of(self, seq: int) -> Frame:
        return self.frames[bisect_right(self.seqs, seq) - 1]


class _Watch(weakref.ref):
    """A weak reference to a segment's token that marks the segment dead when the token dies."""

    __slots__ = ("segment",)


class _SegmentIndex:
    """Segments by first sequence number: binary-search lookups, dead ones dropped lazily.

    Segments are added in the order their calls start, on one thread, so their first sequence
    numbers never decrease. A segment marked dead stays in the lists until dead segments are
    half of them; then one pass drops them all (amortized O(1) per segment).
    """

    def __init__(self) -> None:
        # One tuple, replaced as a whole: a reader on an autograd device thread always sees a
        # consistent pair.
        self.lists: tuple[list[int], list[_Segment]] = ([], [])
        self.dead = 0

    def add(self, segment: _Segment) -> None:
        starts, segments = self.lists
        if self.dead and 2 * self.dead >= len(segments):
            segments = [s for s in segments if s.alive]
            starts = [s.start for s in segments]
            self.lists, self.dead = (starts, segments), 0
        starts.append(segment.start)
        segments.append(segment)

    def last_start(self) -> int:
        starts = self.lists[0]
        return starts[-1] if starts else -1

    def find(self, seq: int) -> Optional[_Segment]:
        """The innermost live segment whose range holds ``seq``."""
        starts, segments = self.lists
        i = bisect_right(starts, seq) - 1
        segment = segments[i] if i >= 0 else None
        while segment is not None:  # every enclosing segment starts before ``segment``
            end = segment.end
            if end is None or seq < end:
                return segment if segment.alive else None
            segment = segment.parent
        return None

    def watch(self, segment: _Segment, token: _GraphToken) -> None:
        watch = segment.watch = _Watch(token, self._token_died)
        watch.segment = segment

    def forget(self, segment: _Segment) -> None:
        if segment.alive:
            segment.alive = False
            self.dead += 1

    def _token_died(self, watch: _Watch) -> None:
        self.forget(watch.segment)

    def segments(self) -> list[_Segment]:
        return self.lists[1]


class _CallStack:
    """Module calls in progress in one context: the forward, or a recomputation in backward.

    ``top`` is the innermost frame (``base`` when no call is in progress); it is kept as a plain
    attribute because every module call and every op reads it.
    """

    __slots__ = ("base", "entries", "open", "top")

    def __init__(self, base: Frame) -> None:
        self.base = base
        self.entries: list[tuple[torch.nn.Module, Frame]] = []
        self.open: Optional[_Segment] = None  # the segment of the outermost call in progress
        self.top = base

    def pop_to(self, module: torch.nn.Module) -> None:
        """Pop calls down to and including ``module``'s (also those an exception cut short)."""
        entries = self.entries
        while entries:
            popped, _ = entries.pop()
            if popped is module:
                break
        self.top = entries[-1][1] if entries else self.base

    def holds(self, module: torch.nn.Module) -> bool:
        entries = self.entries
        if entries and entries[-1][0] is module:  # the common case: the innermost call returns
            return True
        return any(m is module for m, _ in entries)


def module_index(model: Optional[torch.nn.Module]) -> dict[int, tuple[torch.nn.Module, str]]:
    """{id(module): (module, qualified name)} of ``model``'s modules ({} without a model)."""
    if model is None:
        return {}
    return {id(module): (module, name) for name, module in model.named_modules()}


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors of a module's output: pytree leaves, and the attributes of other objects."""
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    for leaf in tree_leaves(obj):
        if isinstance(leaf, torch.Tensor):
            yield leaf
        elif hasattr(leaf, "__dict__") and not isinstance(leaf, (type, torch.nn.Module)):
            for value in tree_leaves(list(vars(leaf).values())):  # one level into the object
                if isinstance(value, torch.Tensor):
                    yield value


class ModuleTracker:
    """Tracks the running module for one counter on one thread.

    ``model`` (optional) names modules as ``model.named_modules()`` does, the model itself "";
    other modules are named after their parent and attribute, or their class.
    """

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        index: Optional[dict[int, tuple[torch.nn.Module, str]]] = None,
    ) -> None:
        self.root = Frame("", None)
        self.current = self.root  # the forward's innermost frame: read for every op
        self.names: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
        # Parameters of the modules named during the run that are not the model's (the model's
        # own are counted when a report asks: see module_index / parameter_counts).
        self.params: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        # The model's modules by id (a plain dict: faster than the weak one, read on every call).
        self._model_modules = index if index is not None else module_index(model)
        # Keys of this tracker's entries in node metadata (other trackers tag the same nodes).
        # A checkpoint's node may also be an output's, holding the forward call's token.
        self._graph_key, self._checkpoint_key, self._other_thread_key = object(), object(), object()
        self._reset()
        self._handles: list[Any] = []

    def _reset(self) -> None:
        self._forward = _CallStack(self.root)
        self._recompute = _CallStack(self.root)
        self._index = _SegmentIndex()
        self._untied: list[_Segment] = []  # calls since the last top-level one whose graph no token reached
        self._checkpoint: Optional[_Segment] = None  # a reentrant checkpoint recomputing now
        self._checkpoint_execution = (-1, -1)  # its node's sequence number and graph task
        self._last: tuple[int, Frame, bool] = (-1, self.root, False)  # seq, frame, checkpoint node
        # This thread's sequence number and graph task when the last new node was looked up.
        self._seq_mark = (-1, -1)
        self._other_threads = threading.local()  # calls in progress on each other thread
        self._other_graphs = False  # whether some node was marked as another thread's
        self.current = self.root
        self._thread: Optional[int] = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = _get_ident()
        self._handles = [
            register_module_forward_pre_hook(self._pre_hook),
            register_module_forward_hook(self._post_hook, always_call=True),
        ]

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for segment in self._index.segments():
            segment.watch = None  # the tokens still in nodes no longer call back
        self._reset()

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
        if _get_ident() != self._thread:
            self._other_thread_pre_hook(module, args)
            return
        node = _current_node()
        if node is None:
            stack = self._forward
            if self._checkpoint is not None:  # the backward that recomputed is over
                self._end_checkpoint()
        else:  # a module entered while an autograd node runs is recomputation (checkpointing)
            stack = self._recompute
            if type(node).__name__ == _REENTRANT_CHECKPOINT:
                self._begin_checkpoint(node, node._sequence_nr())
        # Runs for every module call: the common cases of name_of, push and mark are inline.
        known = self._model_modules.get(id(module))
        name = known[1] if known is not None and known[0] is module else self.name_of(module, stack)
        top = stack.top
        frame = top.children.get(name) or top.child(name)
        stack.entries.append((module, frame))
        stack.top = frame
        if stack is self._forward:
            self.current = frame
            self.calls[name] = self.calls.get(name, 0) + 1
        seq = _next_sequence_nr()
        segment = stack.open
        if segment is None:
            self._open(stack, seq, frame)
        elif segment.seqs[-1] == seq:  # no node was created since the last change
            segment.frames[-1] = frame
        else:
            segment.mark(seq, frame)

    def _post_hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if _get_ident() != self._thread:
            self._other_thread_post_hook(module, output)
            return
        stack = self._forward
        entries = stack.entries
        if self._recompute.entries and self._recompute.holds(module):
            stack = self._recompute
            stack.pop_to(module)
        elif entries and entries[-1][0] is module:  # the common case: the innermost call returns
            entries.pop()
            stack.top = self.current = entries[-1][1] if entries else stack.base
        elif stack.holds(module):
            stack.pop_to(module)
            self.current = stack.top
        else:
            return
        segment = stack.open
        if segment is None:
            return
        seq = _next_sequence_nr()
        segment.mark(seq, stack.top)
        self._tie(segment, output)
        if not stack.entries and not segment.pinned:
            stack.open = None
            self._close(segment, seq, module)

    # -- segments --------------------------------------------------------------------------

    def _open(self, stack: _CallStack, seq: int, frame: Frame) -> None:
        if self._untied and stack is self._forward:  # kept until the next call starts
            for segment in self._untied:
                self._index.forget(segment)
            self._untied = []
        parent = self._forward.open if stack is self._recompute else None  # backward inside a forward
        stack.open = _Segment(seq, frame, parent)
        self._index.add(stack.open)

    def _tie(self, segment: _Segment, output: Any) -> None:
        """Store ``segment``'s token in the nodes behind ``output`` that the call created."""
        for tensor in (output,) if type(output) is torch.Tensor else _tensors_in(output):
            node = tensor.grad_fn
            if node is not None and node._sequence_nr() >= segment.start:
                token = segment.token
                if token is None:
                    token = segment.token = _GraphToken()
                    self._index.watch(segment, token)
                node.metadata[self._graph_key] = token

    def _close(self, segment: _Segment, seq: int, module: torch.nn.Module) -> None:
        segment.end = seq
        if segment.token is None and seq != segment.start:
            # No output of the call carries its graph: maybe the module kept it on itself.
            self._tie(segment, [v for k, v in vars(module).items() if k != "_modules"])
        if segment.token is None:
            if seq == segment.start:  # no node was created: nothing to run backward through
                self._index.forget(segment)
            else:
                self._untied.append(segment)
        segment.token = None  # from now on only the nodes hold it

    # -- reentrant checkpoints -------------------------------------------------------------

    def _begin_checkpoint(self, node: Any, seq: int) -> None:
        """``node``, a reentrant checkpoint's backward, starts recomputing: nodes built from
        now on are charged to the frame that called ``checkpoint``, until its nested backward."""
        task = _current_graph_task_id()
        if (seq, task) == self._checkpoint_execution:
            return  # this run of the node already began (its later ops, or a module it recomputes)
        self._end_checkpoint()
        self._checkpoint_execution = (seq, task)
        found = self._index.find(seq)
        frame = found.frame_of(seq) if found is not None else self.root
        # The first sequence number it may have used: the one seen at the previous node of this
        # backward (nodes built since, e.g. by views, which are not counted, are its own); else now.
        mark, mark_task = self._seq_mark
        start = max(mark if mark_task == task else _next_sequence_nr(), self._index.last_start())
        segment = _Segment(start, frame, self._forward.open)
        segment.pinned = True
        self._index.add(segment)
        self._checkpoint = segment
        self._recompute.open, self._recompute.base = segment, frame
        token = _GraphToken()  # lives as long as the checkpoint's node
        self._index.watch(segment, token)
        node.metadata[self._checkpoint_key] = segment.token = token

    def _end_checkpoint(self) -> None:
        segment, self._checkpoint = self._checkpoint, None
        if segment is None:
            return
        segment.end = _next_sequence_nr()
        segment.token = None
        if self._recompute.open is segment:
            self._recompute.open = None
        self._recompute.base = self.root

    # -- other threads ---------------------------------------------------------------------

    def _other_thread_pre_hook(self, module: torch.nn.Module, args: Any) -> None:
        if _current_node() is not None:  # an autograd engine thread, running some backward
            return
        state = self._other_threads
        calls = getattr(state, "calls", None)
        if calls is None:
            calls = state.calls = []
        if not calls:
            state.start = _next_sequence_nr()  # this thread's own sequence numbers
            state.inputs = [t.grad_fn for t in _tensors_in(args) if t.grad_fn is not None]
        calls.append(module)

    def _other_thread_post_hook(self, module: torch.nn.Module, output: Any) -> None:
        state = self._other_threads
        calls = getattr(state, "calls", None)
        if not calls or not any(m is module for m in calls):
            return
        while calls:
            if calls.pop() is module:
                break
        if not calls:
            self._disown(output, state.start, _next_sequence_nr(), state.inputs)
            state.inputs = []

    def _disown(self, output: Any, start: int, end: int, inputs: list[Any]) -> None:
        """Mark the nodes a call on another thread created, reachable from its output."""
        # Nodes are told apart by sequence number, unique among those one thread creates in
        # [start, end): before torch 2.13 a node's Python wrapper is made anew each time it is
        # reached and freed after, so id() can be shared by two nodes.
        stop = {id(node) for node in inputs}  # the call's inputs' nodes, kept alive in ``inputs``
        pending = [t.grad_fn for t in _tensors_in(output) if t.grad_fn is not None]
        seen: set[int] = set()
        while pending:
            node = pending.pop()
            if node is None:
                continue
            seq = node._sequence_nr()
            if seq in seen or id(node) in stop or not start <= seq < end:
                continue
            seen.add(seq)
            node.metadata[self._other_thread_key] = True
            self._other_graphs = True
            pending.extend(next_node for next_node, _ in node.next_functions)

    # -- queries (hot path) ----------------------------------------------------------------

    def backward_frame(self, node: Any) -> tuple[Optional[Frame], bool]:
        """The frame an op run for autograd ``node`` is charged to, and whether it recomputes.

        ``(None, False)``: ``node`` was built by another thread's module call, whose forward
        was not counted; neither is this op.
        """
        if self._other_graphs and self._other_thread_key in node.metadata:
            return None, False
        if self._recompute.entries and _get_ident() == self._thread:
            return self._recompute.top, True
        seq = node._sequence_nr()
        last = self._last  # several ops usually run for one node: remember the last answer
        if last[0] != seq:
            last = self._look_up(node, seq, _get_ident() == self._thread)
        if last[2]:
            return last[1], True
        hooks = _top_saved_tensors_hooks(False)
        if hooks is None:
            return last[1], False
        return last[1], getattr(hooks[0], "__qualname__", "").startswith(_RECOMPUTATION_HOOKS)

    def _look_up(self, node: Any, seq: int, on_thread: bool) -> tuple[int, Frame, bool]:
        checkpoint = self._checkpoint
        if on_thread and checkpoint is not None and seq >= checkpoint.start:
            self._end_checkpoint()  # a node the recomputation built runs: its nested backward began
        is_checkpoint = type(node).__name__ == _REENTRANT_CHECKPOINT
        if is_checkpoint and on_thread:
            self._begin_checkpoint(node, seq)
        segment = self._index.find(seq)
        last = self._last = (seq, segment.frame_of(seq) if segment is not None else self.root, is_checkpoint)
        if on_thread:
            self._seq_mark = (_next_sequence_nr(), _current_graph_task_id())
        return last

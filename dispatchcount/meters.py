"""Meters: the per-op recorders of metrics beyond FLOPs, plugged into the dispatch hook.

A meter is called as ``meter(slots, func, args, kwargs, out)`` after the op ran and its FLOP
slots were updated (see :class:`dispatchcount.dispatch.CountingDispatch`). Two exist:

- :func:`bytes_meter` adds the bytes an op reads and writes (rules in
  :mod:`dispatchcount.traffic`) to ``slots[BYTES_READ]`` and ``slots[BYTES_WRITTEN]``;
- :class:`OpTimer` runs each op (``timer.run``) and adds its measured seconds to
  ``slots[SECONDS]``.

Timing. On CPU an op runs synchronously: ``time.perf_counter()`` around the call measures it.
On CUDA, kernels run asynchronously; by default each op is bracketed by two CUDA events,
resolved once at the end of the run (one synchronization in all): the GPU time from the first
event to the second, which is the op's kernel time when the GPU is busy, plus launch latency
when it waits for the CPU. ``OpTimer(cuda="sync")`` instead synchronizes before and after every
op and measures wall time with ``perf_counter`` (the op's full latency, launch included, with
no overlap between ops). Ops on meta or fake tensors do no work: 0 seconds.

Overhead. The timer adds two ``perf_counter`` calls per CPU op (under a microsecond; the
counter's own per-op cost falls outside the timed interval), and on CUDA the creation and
recording of two events per op (a few microseconds of CPU time, which can starve a GPU on
small kernels: then measured times include that launch gap). ``examples/bench_overhead.py``
and ``examples/roofline_vs_measured.py`` print both figures.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import torch
from torch._subclasses.fake_tensor import FakeTensor

from dispatchcount.problems import Problems
from dispatchcount.records import BYTES_READ, BYTES_WRITTEN, SECONDS
from dispatchcount.traffic import _rules, bytes_rule, io_bytes, moves_nothing, read_bytes, written_bytes

__all__ = ["Meter", "bytes_meter", "OpTimer"]

Meter = Callable[[list, Any, tuple, dict, Any], None]
_Tensor = torch.Tensor
_perf_counter = time.perf_counter


def bytes_meter(problems: Problems) -> Meter:
    """A meter of bytes read and written; a rule that raises goes to ``problems``."""
    rules = _rules

    def meter(slots: list, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        rule = rules.get(id(func))
        if rule is None:
            rule = bytes_rule(func)
        try:
            if rule is io_bytes:  # the common rule, inlined: one call less per op
                read = read_bytes(args, kwargs)
                try:
                    written = out.nbytes if type(out) is _Tensor else written_bytes(out)
                except RuntimeError:  # a sparse result: written_bytes counts its parts
                    written = written_bytes(out)
            elif rule is moves_nothing:
                return
            else:
                read, written = rule(args, kwargs, out)
        except Exception as error:
            problems.formula_failed(func, error, "bytes rule")
            return
        slots[BYTES_READ] += read
        slots[BYTES_WRITTEN] += written

    def ignores(func: Any) -> bool:
        """True for ops that move no bytes (views, metadata): the hook can skip them."""
        return bytes_rule(func) is moves_nothing

    meter.ignores = ignores  # type: ignore[attr-defined]
    return meter


def _device_type(args: tuple, kwargs: dict) -> Optional[str]:
    """"cuda", "cpu" ... for the op's first tensor (or its ``device=``); None for meta or fake
    tensors, which do no work."""
    for a in args:
        if isinstance(a, (list, tuple)) and a:
            a = a[0]
        if isinstance(a, _Tensor):
            if isinstance(a, FakeTensor):
                return None
            kind = a.device.type
            return None if kind == "meta" else kind
    device = kwargs.get("device")
    if device is None:
        return "cpu"
    kind = torch.device(device).type
    return None if kind == "meta" else kind


class OpTimer:
    """Measures the seconds of each op run under a FlopMode with ``metrics=(..., "time")``.

    Args:
        cuda: ``"events"`` (default): CUDA events around each op, resolved at the end of the run;
            ``"sync"``: ``torch.cuda.synchronize()`` before and after each op, wall time between.
    """

    def __init__(self, cuda: str = "events") -> None:
        if cuda not in ("events", "sync"):
            raise ValueError(f"cuda must be 'events' or 'sync', got {cuda!r}")
        self.cuda = cuda
        self.last: Any = 0.0  # the last op's seconds, or its pair of CUDA events
        self.pending: list[tuple[list, Any, Any]] = []

    def run(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run ``func(*args, **kwargs)`` and remember how long it took."""
        kind = _device_type(args, kwargs)
        if kind is None:
            self.last = 0.0
            return func(*args, **kwargs)
        if kind == "cuda":
            if self.cuda == "events":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                out = func(*args, **kwargs)
                end.record()
                self.last = (start, end)
                return out
            torch.cuda.synchronize()
            begin = _perf_counter()
            out = func(*args, **kwargs)
            torch.cuda.synchronize()
            self.last = _perf_counter() - begin
            return out
        begin = _perf_counter()
        out = func(*args, **kwargs)
        self.last = _perf_counter() - begin
        return out

    def __call__(self, slots: list, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """The meter: adds the op just run to ``slots`` (CUDA events: at :meth:`flush`)."""
        last = self.last
        if type(last) is float:
            slots[SECONDS] += last
        else:
            self.pending.append((slots, last[0], last[1]))

    def flush(self) -> None:
        """Resolve pending CUDA events into seconds (one synchronization)."""
        if not self.pending:
            return
        torch.cuda.synchronize()
        for slots, start, end in self.pending:
            slots[SECONDS] += start.elapsed_time(end) / 1e3
        self.pending.clear()

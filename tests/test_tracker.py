"""The module tracker: backward attribution over many live calls, and the odd programs whose
attribution rules docs/conventions.md ("Attribution") states. Every number is derived by hand:
one (rows, n) @ (n, n) product costs 2 rows n n FLOPs; a sum over k elements costs k."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dispatchcount import FlopMode
from dispatchcount.tracker import Frame, _Segment, _SegmentIndex
from test_reliability import Two  # a(8 -> 8) then b(8 -> 8), no bias

ROOT = Path(__file__).resolve().parents[1]


def mm(rows, n):
    return 2 * rows * n * n


def backward_mm(mode):
    return {name: ops.get("aten.mm", 0) for name, ops in mode.by_module_and_operator("backward").items()}


# -- many live calls: lookups and pruning ---------------------------------------------------------


def test_segment_index_finds_by_binary_search_and_drops_dead_segments_in_bulk():
    root = Frame("", None)
    index = _SegmentIndex()
    segments = []
    for i in range(100):  # call i created nodes 10i .. 10i+9; frame "m{i}" from 10i+5 on
        segment = _Segment(10 * i, root, None)
        segment.mark(10 * i + 5, root.child(f"m{i}"))
        segment.end = 10 * i + 10
        index.add(segment)
        segments.append(segment)
    assert index.find(437) is segments[43] and segments[43].frame_of(437).name == "m43"
    assert segments[43].frame_of(433) is root
    assert index.find(-1) is None and index.find(1000) is None

    for segment in segments[:60]:
        index.forget(segment)
    assert index.find(437) is None  # a dead segment is never used, even before it is dropped
    assert len(index.segments()) == 100  # dropping waits for the next added segment ...
    late = _Segment(1000, root, None)
    index.add(late)
    assert index.segments() == segments[60:] + [late]  # ... then all dead ones go in one pass
    assert index.dead == 0
    assert index.find(655) is segments[65] and index.find(1000) is late


def test_backward_over_hundreds_of_live_calls_is_charged_to_each_call():
    model = Two()
    x = torch.randn(2, 8)  # no gradient: the first call gets only a weight gradient
    steps = 300
    with FlopMode(model) as mode:
        h = x
        for t in range(steps):  # a, b, a, b ...: every call is top-level, all graphs stay alive
            h = (model.a if t % 2 == 0 else model.b)(h)
        h.sum().backward()
    one = mm(2, 8)
    assert mode.module_calls() == {"a": steps // 2, "b": steps // 2}
    mms = backward_mm(mode)
    assert mms["a"] == (2 * (steps // 2) - 1) * one  # input and weight gradients, but the first
    assert mms["b"] == 2 * (steps // 2) * one
    assert mms[""] == mms["a"] + mms["b"]


def test_bench_tracker_prints_the_ratios():
    result = subprocess.run(
        [sys.executable, "examples/bench_tracker.py", "--steps", "20,40", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:2] in ("20", "40")]
    assert [row[0] for row in rows] == ["20", "40"] and all(row[-1].endswith("x") for row in rows)
    assert "ratio at T=40 / ratio at T=20:" in result.stdout


# -- other threads: neither forward nor backward --------------------------------------------------


def run_on_a_thread(fn):
    result = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    worker.join()
    return result[0]


def test_another_threads_forward_and_its_backward_are_both_uncounted():
    mine, theirs = Two(), Two()
    x = torch.randn(5, 8)
    with FlopMode(mine) as mode:
        features = run_on_a_thread(lambda: theirs(x))  # invisible to this thread's mode
        mine(features).sum().backward()
    one = mm(5, 8)
    assert mode.by_operator("forward") == {"aten.mm": 2 * one, "aten.sum": 5 * 8}
    # mine.a and mine.b: input and weight gradients each; theirs (3 products) is not counted.
    assert mode.by_operator("backward") == {"aten.mm": 4 * one}
    assert backward_mm(mode) == {"": 4 * one, "a": 2 * one, "b": 2 * one}
    assert mode.module_calls() == {"": 1, "a": 1, "b": 1}


def test_this_threads_graph_fed_to_another_thread_keeps_its_backward():
    mine, theirs = Two(), Two()
    x = torch.randn(5, 8)
    with FlopMode(mine) as mode:
        hidden = mine(x)
        out = run_on_a_thread(lambda: theirs(hidden))  # its nodes stop at hidden's
        out.sum().backward()
    one = mm(5, 8)
    assert mode.by_operator("forward") == {"aten.mm": 2 * one, "aten.sum": 5 * 8}
    # mine.b: input and weight gradients; mine.a: weight only (x needs none); theirs: 0.
    assert backward_mm(mode) == {"": 3 * one, "a": one, "b": 2 * one}


# -- outputs that are no pytree, or that drop the graph -------------------------------------------


class Result:
    """Not a pytree: a plain object holding the output."""

    def __init__(self, value):
        self.value = value


class ReturnsObject(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return Result(x @ self.weight)


class ReturnsObjectFromChild(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(8, 8, bias=False)

    def forward(self, x):
        return Result(self.inner(x).relu())


class KeepsLossOnItself(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        self.loss = (x @ self.weight).sum()  # the output is dropped; the graph stays on the module


class DetachesItsOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(8, 8, bias=False)
        self.losses = []

    def forward(self, x):
        y = self.inner(x)
        self.losses.append(y.square().sum())
        return y.detach()


class Holder(nn.Module):
    """Names the module under test "part" (the root's count would include everything)."""

    def __init__(self, part):
        super().__init__()
        self.part = part


@pytest.mark.parametrize("part_class", [ReturnsObject, ReturnsObjectFromChild])
def test_a_non_pytree_output_keeps_its_backward_after_a_second_call(part_class):
    model = Holder(part_class())
    x = torch.randn(4, 8)
    with FlopMode(model) as mode:
        first = model.part(x)
        model.part(x)  # a second top-level call starts (and ends) before the first's backward
        first.value.sum().backward()
    # The weight gradient only: one product, charged to the module that made it.
    name = "part.inner" if part_class is ReturnsObjectFromChild else "part"
    assert backward_mm(mode)[name] == backward_mm(mode)["part"] == mm(4, 8)


@pytest.mark.parametrize("part_class", [KeepsLossOnItself, DetachesItsOutput])
def test_a_dropped_output_keeps_its_backward_after_a_second_call(part_class):
    model = Holder(part_class())
    x = torch.randn(4, 8)
    with FlopMode(model) as mode:
        model.part(x)
        first_loss = model.part.loss if part_class is KeepsLossOnItself else model.part.losses[0]
        model.part(x)
        first_loss.backward()
    name = "part.inner" if part_class is DetachesItsOutput else "part"
    assert backward_mm(mode)[name] == backward_mm(mode)["part"] == mm(4, 8)


def test_a_graph_no_output_reaches_is_charged_to_the_root_once_the_next_call_starts():
    kept = []

    class Hides(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 8))

        def forward(self, x):
            kept.append((x @ self.weight).sum())  # neither an output nor an attribute

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.hides = Hides()

    model = Model()
    x = torch.randn(4, 8)
    with FlopMode(model) as mode:
        model.hides(x)
        kept.pop().backward()  # before another call: still known
        model.hides(x)
        model.hides(x)  # the next call starts: the previous one is forgotten
        kept.pop(0).backward()
    by_module = mode.by_module_and_operator("backward")
    assert by_module["hides"]["aten.mm"] == mm(4, 8)
    assert by_module[""]["aten.mm"] == 2 * mm(4, 8)


# -- checkpointed plain functions -------------------------------------------------------------------


class CheckpointsAFunction(nn.Module):
    """``checkpoint`` on a function (not a module) that uses the block's own weight twice."""

    def __init__(self, reentrant):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))
        self.head = nn.Linear(8, 8, bias=False)
        self.reentrant = reentrant

    def forward(self, x):
        twice = lambda v: (v @ self.weight) @ self.weight  # noqa: E731
        return self.head(checkpoint(twice, x, use_reentrant=self.reentrant))


class Wraps(nn.Module):
    def __init__(self, reentrant):
        super().__init__()
        self.block = CheckpointsAFunction(reentrant)

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_checkpointed_functions_recompute_is_shown_as_recompute(reentrant):
    model = Wraps(reentrant)
    x = torch.randn(4, 8, requires_grad=True)
    with FlopMode(model) as mode:
        model(x).sum().backward()
    one = mm(4, 8)
    assert mode.by_operator("forward") == {"aten.mm": 3 * one, "aten.sum": 4 * 8}
    # Non-reentrant recomputation stops once the saved tensors are back: the second product
    # saves the first one's output, which is all that is recomputed. Reentrant reruns both.
    recomputed = one if not reentrant else 2 * one
    assert mode.by_operator("recompute") == {"aten.mm": recomputed}
    recompute = mode.by_module("recompute")
    assert recompute["block"] == recompute[""] == recomputed and recompute["block.head"] == 0
    # The backward proper, wherever it runs (for reentrant, in a nested backward over the
    # recomputed graph): head, and each product of the function, input and weight gradients;
    # plus the 8x8 weight gradients of the function's two products, added (64).
    backward = mode.by_module("backward")  # includes the recompute
    assert backward["block.head"] == 2 * one
    assert backward["block"] == 2 * one + 4 * one + 8 * 8 + recomputed
    assert backward[""] == backward["block"]


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_flopmode_entered_inside_a_checkpointed_function_counts_its_rerun_as_recompute(reentrant):
    weight = torch.randn(8, 8, requires_grad=True)
    modes = []

    def twice(v):
        with FlopMode() as mode:  # runs once in the forward, and again when recomputed
            modes.append(mode)
            return (v @ weight) @ weight

    x = torch.randn(4, 8, requires_grad=True)
    checkpoint(twice, x, use_reentrant=reentrant).sum().backward()
    one = mm(4, 8)
    forward, rerun = modes
    assert forward.by_operator("forward") == {"aten.mm": 2 * one} and forward.total("backward") == 0
    recomputed = one if not reentrant else 2 * one  # as in the test above
    assert rerun.total("forward") == 0
    assert rerun.by_operator("recompute") == rerun.by_operator("backward") == {"aten.mm": recomputed}


def test_the_users_saved_tensor_hooks_are_not_taken_for_recomputation():
    class Keep:  # a callable object, not a function: it has no __qualname__
        def __call__(self, tensor):
            return tensor

    model = Two()
    x = torch.randn(5, 8)
    with FlopMode(model) as mode, torch.autograd.graph.saved_tensors_hooks(Keep(), Keep()):
        model(x).sum().backward()
    one = mm(5, 8)
    assert mode.by_operator("forward") == {"aten.mm": 2 * one, "aten.sum": 5 * 8}
    assert backward_mm(mode) == {"": 3 * one, "a": one, "b": 2 * one}  # a: weight gradient only
    assert mode.total("recompute") == 0

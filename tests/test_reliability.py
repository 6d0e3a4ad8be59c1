"""FlopMode never breaks, leaks or changes the user's program."""

import gc
import threading
import tracemalloc
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils.checkpoint import checkpoint

import dispatchcount
from dispatchcount import FlopMode, FormulaError, UnsupportedOperatorError, count_flops


def mm_flops(rows, n_in, n_out):
    return 2 * rows * n_in * n_out


def global_state():
    """Everything FlopMode could leave behind: global module hooks and dispatch modes."""
    return (
        len(module_globals._global_forward_pre_hooks),
        len(module_globals._global_forward_hooks),
        len(module_globals._global_forward_hooks_always_called),
        len(_get_current_dispatch_mode_stack()),
    )


class Two(nn.Module):
    def __init__(self, n=8):
        super().__init__()
        self.a = nn.Linear(n, n, bias=False)
        self.b = nn.Linear(n, n, bias=False)

    def forward(self, x):
        return self.b(self.a(x))


class Explodes(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        self.inner(x)
        raise KeyError("boom")


@torch.library.custom_op("dctest_rel::noformula", mutates_args=())
def noformula(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@noformula.register_fake
def _(x):
    return torch.empty_like(x)


# -- 1. exceptions ---------------------------------------------------------------------------


def test_exception_in_forward_propagates_unchanged_and_nothing_is_left():
    before = global_state()
    model = Explodes()
    mode = FlopMode(model)
    with pytest.raises(KeyError) as caught:
        with mode:
            model(torch.randn(2, 4))
    assert caught.value.args == ("boom",)
    assert global_state() == before
    with mode:  # the same FlopMode works again, from zero, with a clean module stack
        model.inner(torch.randn(3, 4))
    assert mode.by_module() == {"": mm_flops(3, 4, 4), "inner": mm_flops(3, 4, 4)}
    assert global_state() == before


def test_strict_errors_leave_nothing_behind():
    before = global_state()
    x = torch.randn(3)
    with pytest.raises(UnsupportedOperatorError):
        with FlopMode(strict=True):
            noformula(x)
    assert global_state() == before

    from dispatchcount import register_formula

    @torch.library.custom_op("dctest_rel::badformula", mutates_args=())
    def badformula(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    badformula.register_fake(lambda x: torch.empty_like(x))
    register_formula(torch.ops.dctest_rel.badformula)(lambda x, out=None: 1 // 0)
    with pytest.raises(FormulaError) as caught:
        with FlopMode(strict=True):
            badformula(x)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert global_state() == before
    with FlopMode() as lenient:  # not strict: the run goes on, the op is reported
        y = badformula(x)
    assert torch.equal(y, x) and lenient.unsupported_ops() == {"dctest_rel.badformula": 1}
    assert global_state() == before


# -- 2. nesting and composition ----------------------------------------------------------------


def test_nested_flopmodes_both_count_everything():
    model = Two()
    x = torch.randn(5, 8, requires_grad=True)
    with FlopMode(model) as outer:
        with FlopMode(model) as inner:
            model(x).sum().backward()
    one = mm_flops(5, 8, 8)
    assert inner.by_operator()["aten.mm"] == outer.by_operator()["aten.mm"] == 6 * one
    assert inner.by_module() == outer.by_module()


def test_no_grad_counts_forward_only():
    model = Two()
    with torch.no_grad(), FlopMode(model) as mode:
        model(torch.randn(5, 8))
    assert mode.total() == mode.total("forward") == 2 * mm_flops(5, 8, 8)


def test_autocast_counts_the_ops_as_they_ran_in_bfloat16():
    model = Two()
    x = torch.randn(5, 8)
    with FlopMode(model) as plain:
        model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16), FlopMode(model) as autocast:
        y = model(x)
    assert y.dtype == torch.bfloat16
    assert autocast.by_operator()["aten.mm"] == plain.by_operator()["aten.mm"] == 2 * mm_flops(5, 8, 8)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_recompute_is_counted_and_shown(reentrant):
    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Two()
            self.head = nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=reentrant))

    model = Checkpointed()
    x = torch.randn(4, 8, requires_grad=True)
    with FlopMode(model) as mode:
        model(x).sum().backward()
    one = mm_flops(4, 8, 8)
    assert mode.total("forward") == 3 * one + 4 * 8  # + .sum(): one add per element of (4, 8)
    recompute = mode.by_module("recompute")
    if reentrant:
        # The whole block runs again; then its graph gets the usual backward.
        assert recompute["block"] == recompute[""] == 2 * one
        assert recompute["block.b"] == one
    else:
        # Non-reentrant checkpointing stops once the saved tensors are back: only a's output,
        # which b saved, is recomputed.
        assert recompute["block"] == recompute["block.a"] == one
        assert recompute["block.b"] == 0
    backward = mode.by_module("backward")  # includes the recompute
    assert backward["head"] == 2 * one  # input and weight gradients
    assert backward["block.a"] == 2 * one + recompute["block.a"]
    assert backward["block.b"] == 2 * one + recompute["block.b"]
    assert "(recompute)" in mode.table()


def test_torch_func_transforms():
    w = torch.randn(8, 8)
    x = torch.randn(4, 8)
    with FlopMode() as mode:
        y = torch.func.vmap(lambda v: v @ w)(x)
    assert torch.equal(y, x @ w)
    assert mode.by_operator()["aten.mm"] == mm_flops(4, 8, 8)
    with FlopMode() as mode:
        g = torch.func.grad(lambda v: (v @ w).sum())(x[0])
    assert torch.allclose(g, w.sum(1))
    assert mode.by_operator(phase="forward")["aten.mm"] == mm_flops(1, 8, 8)
    assert mode.by_operator(phase="backward")["aten.mm"] == mm_flops(1, 8, 8)


def test_compiled_model_runs_eagerly_and_is_counted_like_eager():
    # PyTorch does not run compiled frames under a non-infra TorchDispatchMode: the model
    # runs eagerly, so every op is seen and the count equals the eager count.
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    x = torch.randn(4, 8)
    compiled = torch.compile(model, backend="eager")
    with FlopMode(model) as eager:
        expected = model(x)
    with FlopMode(model) as mode:
        out = compiled(x)
    assert torch.equal(out, expected)
    assert mode.by_operator() == eager.by_operator()
    assert mode.by_module() == eager.by_module()


def test_cond_counts_the_branch_taken():
    w = torch.randn(8, 8)
    x = torch.randn(4, 8).abs()
    with FlopMode() as mode:
        torch.cond(x.sum() > 0, lambda v: v @ w, lambda v: (v @ w) @ w, (x,))
    assert mode.by_operator()["aten.mm"] == mm_flops(4, 8, 8)
    with FlopMode() as mode:
        torch.cond(x.sum() < 0, lambda v: v @ w, lambda v: (v @ w) @ w, (x,))
    assert mode.by_operator()["aten.mm"] == 2 * mm_flops(4, 8, 8)


def test_eager_while_loop_and_map_count_every_iteration_and_scan_is_reported():
    from torch._higher_order_ops.map import map as hop_map
    from torch._higher_order_ops.scan import scan
    from torch._higher_order_ops.while_loop import while_loop

    w = torch.randn(8, 8)
    x = torch.randn(4, 8)

    def body(i, v):
        return i + 1, v @ w

    loop = lambda: while_loop(lambda i, v: i < 3, body, (torch.tensor(0), x))  # noqa: E731
    plain = loop()
    with FlopMode() as mode:
        counted = loop()
    assert all(torch.equal(a, b) for a, b in zip(plain, counted))
    assert mode.by_operator() == {"aten.mm": 3 * mm_flops(4, 8, 8)}  # the int counter and test cost 0
    assert mode.unsupported_ops() == {}

    xs = torch.randn(5, 4, 8)
    with FlopMode() as mode:
        mapped = hop_map(lambda v: v @ w, xs)
    assert torch.equal(mapped, hop_map(lambda v: v @ w, xs))
    assert mode.by_operator() == {"aten.mm": 5 * mm_flops(4, 8, 8)}

    # With grad, PyTorch hands an eager control-flow op to a dispatch mode above autograd: under
    # any mode that passes them through (a no-op one too) the result has no grad_fn. FlopMode
    # does what such a mode does, and counts the forward.
    class PassThrough(TorchDispatchMode):
        supports_higher_order_operators = True

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    weight = w.clone().requires_grad_()
    with PassThrough():
        expected = hop_map(lambda v: v @ weight, xs)
    with FlopMode() as mode:
        mapped = hop_map(lambda v: v @ weight, xs)
    assert mapped.requires_grad == expected.requires_grad
    assert torch.equal(mapped, expected) and mode.by_operator() == {"aten.mm": 5 * mm_flops(4, 8, 8)}

    # scan's eager kernel asserts that no dispatch mode is active: it runs uncounted, and says so
    with pytest.warns(UserWarning, match=r"not counted.*scan \(1 calls\)"):
        with FlopMode() as mode:
            carry, ys = scan(lambda c, v: (c @ w, c.sum(0) * v), x, torch.randn(3, 8))
    assert mode.unsupported_ops() == {"scan": 1} and mode.total() == 0


# -- 3. threads --------------------------------------------------------------------------------


def test_a_mode_does_not_count_another_threads_work():
    mine, theirs = Two(), Two()
    go, done = threading.Event(), threading.Event()

    def other_thread():
        go.wait()
        for _ in range(20):
            theirs(torch.randn(7, 8))  # would be charged to "a"/"b" if hooks leaked across
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with FlopMode(mine) as mode:
        go.set()
        for _ in range(20):
            mine(torch.randn(5, 8))
        done.wait()
    worker.join()
    one = mm_flops(5, 8, 8)
    assert mode.by_module() == {"": 40 * one, "a": 20 * one, "b": 20 * one}
    assert mode.module_calls() == {"": 20, "a": 20, "b": 20}


# -- 4. reuse, odd module structures, the user's hooks --------------------------------------------


def test_shared_module_and_repeated_calls():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(8, 8, bias=False)
            self.second = self.first  # the same module at two places
            self.loop = nn.Linear(8, 8, bias=False)

        def forward(self, x):
            x = self.second(self.first(x))
            for _ in range(5):
                x = self.loop(x)
            return x

    model = Shared()
    with FlopMode(model) as mode:
        model(torch.randn(3, 8))
    one = mm_flops(3, 8, 8)
    assert mode.by_module() == {"": 7 * one, "first": 2 * one, "loop": 5 * one}
    assert mode.module_calls()["first"] == 2 and mode.module_calls()["loop"] == 5


def test_modules_created_inside_forward():
    class Dynamic(nn.Module):
        def forward(self, x):
            self.made = nn.Linear(8, 4, bias=False)  # registered as a child during forward
            return nn.Linear(4, 2, bias=False)(self.made(x))  # never registered

    model = Dynamic()
    with FlopMode(model) as mode:
        model(torch.randn(3, 8))
    flops = mode.by_module()
    assert flops["made"] == mm_flops(3, 8, 4)
    assert flops["Linear"] == mm_flops(3, 4, 2)
    assert flops[""] == mm_flops(3, 8, 4) + mm_flops(3, 4, 2)


def test_parametrization_cost_is_charged_to_its_module():
    class Symmetric(nn.Module):
        def forward(self, w):
            return w @ w.T  # an 8x8x8 product each time the weight is read

    layer = nn.Linear(8, 8, bias=False)
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", Symmetric())
    model = nn.Sequential(layer)
    with FlopMode(model) as mode:
        model(torch.randn(3, 8))
    flops = mode.by_module()
    assert flops["0.parametrizations.weight.0"] == mm_flops(8, 8, 8)
    assert flops["0"] == mm_flops(8, 8, 8) + mm_flops(3, 8, 8)


def test_users_hooks_still_run_in_order():
    model = Two()
    order = []
    model.a.register_forward_pre_hook(lambda m, args: order.append("pre-a"))
    model.a.register_forward_hook(lambda m, args, out: order.append("post-a"))
    model.b.register_forward_hook(lambda m, args, out: out * 0)  # replaces b's output
    with FlopMode(model) as mode:
        y = model(torch.randn(2, 8))
    assert order == ["pre-a", "post-a"]
    assert torch.equal(y, torch.zeros(2, 8))
    assert mode.by_module()["b"] == mm_flops(2, 8, 8)


# -- 5. results unchanged ------------------------------------------------------------------------


def test_random_ops_draw_the_same_numbers_and_results_are_bit_identical():
    model = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.GELU(), nn.Linear(32, 4)).train()
    x = torch.randn(8, 16)

    def run():
        torch.manual_seed(123)
        model.zero_grad()
        y = model(x) + torch.rand(8, 4)
        y.square().sum().backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()], torch.rand(3)

    plain = run()
    with FlopMode(model):
        counted = run()
    assert torch.equal(plain[0], counted[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], counted[1]))
    assert torch.equal(plain[2], counted[2])  # the generator advanced alike


# -- 6. bad input ----------------------------------------------------------------------------


def test_count_flops_with_wrong_inputs_raises_the_models_error_and_cleans_up():
    before = global_state()
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        count_flops(Two(), torch.randn(3, 5))
    assert global_state() == before


# -- 7. memory -------------------------------------------------------------------------------


def test_long_training_loop_keeps_the_counters_memory_constant():
    model = Two(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(2, 4)

    def steps(n):
        for _ in range(n):
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()

    # Only memory allocated by dispatchcount's own code is the counter's.
    ours = [tracemalloc.Filter(True, str(Path(dispatchcount.__file__).parent / "*"))]
    # 2000 measured steps: anything the counter kept per step (an object is >= 16 bytes) would
    # grow by far more than the 4096 bytes allowed; the warm-up fills the rule and name caches.
    with FlopMode(model) as mode:
        steps(200)
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.take_snapshot().filter_traces(ours)
        steps(2000)
        gc.collect()
        end = tracemalloc.take_snapshot().filter_traces(ours)
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in end.compare_to(start, "filename"))
        records, segments = len(mode.counts().rows), len(mode._tracker._index.segments())
    assert mode.module_calls()["a"] == 2200
    assert mode.by_operator(phase="forward")["aten.mm"] == 2200 * 2 * mm_flops(2, 4, 4)
    assert segments <= 2  # only graphs still alive are remembered
    assert records < 50
    assert grown < 4096, f"the counter grew by {grown} bytes over 2000 steps"

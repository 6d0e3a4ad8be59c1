"""torch.compile before, inside and after a FlopMode block; symbolic shapes without guards."""

import threading

import torch
from torch._dynamo.testing import CompileCounter
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch import nn

from dispatchcount import FlopMode


def square_then_sin(x):
    return (x @ x).sin()


def square_then_sin_flops(n):
    # mm: 2 n^3 (n x n times n x n); sin: 1 per element.
    return 2 * n**3 + n * n


def test_a_function_first_called_under_flopmode_compiles_afterwards():
    counter = CompileCounter()
    compiled = torch.compile(square_then_sin, backend=counter)
    x = torch.randn(4, 4)
    with FlopMode() as fm:
        out = compiled(x)
    assert counter.frame_count == 0  # inside: run eagerly, through the counter
    assert fm.total() == square_then_sin_flops(4)
    assert torch.equal(out, square_then_sin(x))
    compiled(x)
    assert counter.frame_count == 1  # after: compiled as if the block had never been


def test_compiled_function_is_counted_as_eager_inside_and_recompiles_after():
    def square_then_cos(x):
        return (x @ x).cos()

    counter = CompileCounter()
    compiled = torch.compile(square_then_cos, backend=counter, dynamic=False)
    compiled(torch.randn(3, 3))
    assert counter.frame_count == 1
    with FlopMode() as fm:
        compiled(torch.randn(5, 5))  # a new shape inside: no compile, counted exactly
    assert counter.frame_count == 1
    assert fm.by_operator() == {"aten.mm": 2 * 5**3, "aten.cos": 5 * 5}
    compiled(torch.randn(6, 6))  # a new shape after: recompiles
    assert counter.frame_count == 2
    assert torch._dynamo.eval_frame._stance.stance == "default"


def test_the_users_stance_is_restored():
    with torch.compiler.set_stance("eager_on_recompile"):
        with FlopMode():
            assert torch._dynamo.eval_frame._stance.stance == "force_eager"
        assert torch._dynamo.eval_frame._stance.stance == "eager_on_recompile"


def test_flopmode_inside_a_compiled_function_counts_its_block():
    counter = CompileCounter()

    @torch.compile(backend=counter)
    def step(x):
        y = x.sin()
        with FlopMode() as fm:
            z = y @ y
        return z, fm

    z, fm = step(torch.randn(4, 4))
    assert fm.by_operator() == {"aten.mm": 2 * 4**3}
    assert torch._dynamo.eval_frame._stance.stance == "default"


def _symbolic(fake_mode, shape):
    context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * len(shape))
    return fake_mode.from_tensor(torch.randn(shape), symbolic_context=context)


def test_symbolic_shapes_count_size_hints_and_add_no_guard():
    shape_env = ShapeEnv()
    fake_mode = FakeTensorMode(shape_env=shape_env)
    with fake_mode:
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    x = _symbolic(fake_mode, (4, 8, 16)).requires_grad_(True)
    with fake_mode:
        model(x).sum().backward()  # the program's own guards (e.g. the last dim is 16)
    guards = [str(g.expr) for g in shape_env.guards]
    with fake_mode, FlopMode(model) as fm:
        model(x).sum().backward()
    assert [str(g.expr) for g in shape_env.guards] == guards
    tokens = 4 * 8
    linears = 2 * tokens * 16 * 32 * 2  # two linears, 2 FLOPs per multiply-add
    assert fm.by_operator("forward")["aten.addmm"] == linears
    assert fm.by_operator("forward")["aten.relu"] == tokens * 32
    # backward: the input and weight gradients of both linears (x requires grad).
    assert fm.by_operator("backward")["aten.mm"] == 2 * linears
    assert all(type(v) is int for v in fm.by_operator().values())


def test_symbolic_sizes_in_non_polynomial_formulas_add_no_guard():
    # Sorting (n ceil(log2 L)) and adaptive pooling (window sums) take logs, comparisons and
    # ints of sizes: counted on the size hints, no guard.
    shape_env = ShapeEnv()
    fake_mode = FakeTensorMode(shape_env=shape_env)
    x = _symbolic(fake_mode, (2, 3, 8, 8))
    with fake_mode:
        x.sort(-1)
        nn.functional.adaptive_avg_pool2d(x, 3)
    guards = len(shape_env.guards)
    with fake_mode, FlopMode() as fm:
        x.sort(-1)
        nn.functional.adaptive_avg_pool2d(x, 3)
    assert len(shape_env.guards) == guards
    assert fm.by_operator()["aten.sort"] == 2 * 3 * 8 * 8 * 3  # ceil(log2 8) = 3 per element
    # Windows of 8 -> 3: [0, 3), [2, 6), [5, 8): 10 reads per dim; one divide per output.
    assert fm.by_operator()["aten._adaptive_avg_pool2d"] == 2 * 3 * 10 * 10 + 2 * 3 * 3 * 3
    assert fm.formula_errors() == {}


def test_the_stance_comes_back_when_the_last_flopmode_exits_in_any_order():
    # FlopModes on two threads exit in the order they entered (not nested): the stance is
    # force_eager while either is active, and default once both are done.
    # PyTorch keeps "a dispatch mode is active" in process-wide flags that each mode's exit
    # restores to what its entry saw, while mode stacks are per thread: exits out of order on two
    # threads leave the flag set. Not the counter's doing; restored here for the tests after.
    import torch.utils._python_dispatch as python_dispatch

    flags = (python_dispatch._is_in_torch_dispatch_mode, python_dispatch._is_in_non_infra_torch_dispatch_mode)
    first, second = FlopMode(), FlopMode()
    first.__enter__()
    done = threading.Event()
    entered = threading.Event()

    def other_thread():
        with second:
            entered.set()
            done.wait(10)

    worker = threading.Thread(target=other_thread)
    worker.start()
    entered.wait(10)
    first.__exit__(None, None, None)
    assert torch._dynamo.eval_frame._stance.stance == "force_eager"
    done.set()
    worker.join(10)
    assert torch._dynamo.eval_frame._stance.stance == "default"
    python_dispatch._is_in_torch_dispatch_mode, python_dispatch._is_in_non_infra_torch_dispatch_mode = flags

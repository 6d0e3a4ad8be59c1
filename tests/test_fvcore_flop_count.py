"""fvcore's tests/test_flop_count.py, case by case, against dispatchcount.fvcore.

Same models, same inputs, same expected numbers (derived by hand in fvcore's test and in the
comments here). ``test_scripted_function`` asserts a JIT limitation of fvcore; here the scripted
function's ops are seen and counted (docs/conventions.md, "fvcore's own tests").
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import Function

from dispatchcount.fvcore import _DEFAULT_SUPPORTED_OPS, FlopCountAnalysis, flop_count
from fvcore_reference import quiet, scaled  # noqa: F401 (quiet: an autouse fixture)


def _jit_linear_op() -> str:
    """The node nn.Linear traces to (fvcore's setUp): the name fvcore files linear layers under."""
    kinds = [n.kind() for n in torch.jit.trace(nn.Linear(10, 10), (torch.randn(10, 10),)).graph.nodes()]
    return "linear" if "aten::linear" in kinds else "addmm"


LIN_OP = "linear"  # F.linear is counted at the call, as JIT records it on this PyTorch


def test_linear_is_named_as_the_jit_names_it():
    assert _jit_linear_op() == LIN_OP


class _CustomOp(Function):
    @staticmethod
    def forward(ctx, input):
        return input

    @staticmethod
    def backward(ctx, grad_output):
        return torch.ones_like(grad_output)


class ThreeNet(nn.Module):
    def __init__(self, input_dim: int, conv_dim: int, linear_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_dim, conv_dim, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear1 = nn.Linear(conv_dim, linear_dim)
        self.linear2 = nn.Linear(linear_dim, 1)

    def forward(self, x):
        x = self.pool(self.conv(x))
        return self.linear2(self.linear1(torch.flatten(x, 1)))


class ConvNet(nn.Module):
    def __init__(self, conv_dim, input_dim, output_dim, kernel_size, stride, padding, groups,
                 transpose=False, output_padding=0) -> None:
        super().__init__()
        if transpose:
            layer = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d][conv_dim - 1]
            kwargs = {"output_padding": output_padding}
        else:
            layer = [nn.Conv1d, nn.Conv2d, nn.Conv3d][conv_dim - 1]
            kwargs = {}
        self.conv = layer(input_dim, output_dim, kernel_size, stride, padding, groups=groups, **kwargs)

    def forward(self, x):
        return self.conv(x)


class EinsumNet(nn.Module):
    def __init__(self, equation: str) -> None:
        super().__init__()
        self.eq = equation

    def forward(self, x, y):
        return torch.einsum(self.eq, x, y)


class MatmulNet(nn.Module):
    def forward(self, x, y):
        return torch.matmul(x, y)


class BMMNet(nn.Module):
    def forward(self, x, y):
        return torch.bmm(x, y)


class CustomNet(nn.Module):
    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.conv = nn.Linear(input_dim, output_dim)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return self.sigmoid(self.conv(x))


def giga(**flops: float) -> defaultdict:
    return scaled(1e9, **flops)


def test_customized_ops():
    net, x = CustomNet(5, 4), torch.rand(10, 5)
    # a handle for an op without one, returning a Counter: filed under its key
    gflops, _ = flop_count(net, (x,), supported_ops={"aten::sigmoid": lambda i, o: Counter({"sigmoid": 10000})})
    assert gflops["sigmoid"] == 10000 / 1e9
    # a handle replacing a default one
    gflops, _ = flop_count(net, (x,), supported_ops={f"aten::{LIN_OP}": lambda i, o: Counter({LIN_OP: 400000})})
    assert gflops[LIN_OP] == 400000 / 1e9


def test_nn():
    gflops, _ = flop_count(nn.Linear(8, 4), (torch.randn(5, 8),))
    assert gflops == giga(**{LIN_OP: 5 * 8 * 4})


def test_skip_ops():
    _, skipped = flop_count(CustomNet(5, 4), (torch.rand(10, 5),))
    assert skipped == Counter({"aten::sigmoid": 1})


def test_linear():
    net = nn.Sequential()  # fvcore's LinearNet: one Linear, named "linear"
    net.add_module("linear", nn.Linear(10, 20))
    gflops, _ = flop_count(net, (torch.randn(5, 10),))
    assert gflops == giga(**{LIN_OP: 5 * 10 * 20})
    gflops, _ = flop_count(net, (torch.randn(5, 5, 10),))  # more than 2 dims: every row counts
    assert gflops == giga(**{LIN_OP: 5 * 10 * 5 * 20})


@pytest.mark.parametrize("conv_dim,batch,c_in,c_out,spatial,kernel,padding,stride,groups,transpose,output_padding", [
    (2, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),   # 2d
    (2, 2, 10, 6, 20, 3, 1, 2, 1, False, 0),   # 2d, strided: spatial size changes
    (2, 5, 16, 8, 15, 5, 2, 1, 4, False, 0),   # grouped
    (2, 5, 16, 8, 15, 3, 1, 1, 8, False, 0),   # groups == output channels (depthwise-like)
    (1, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),   # 1d
    (3, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),   # 3d
    (2, 5, 10, 3, 15, 3, 1, 1, 1, True, 0),    # transposed
    (2, 5, 10, 3, 15, 3, 1, 2, 1, True, 0),    # transposed, strided
    (2, 5, 10, 3, 15, 3, 1, 3, 1, True, 2),    # transposed, strided, output_padding
])
def test_conv(conv_dim, batch, c_in, c_out, spatial, kernel, padding, stride, groups, transpose, output_padding):
    net = ConvNet(conv_dim, c_in, c_out, kernel, stride, padding, groups, transpose, output_padding)
    x = torch.randn(batch, c_in, *[spatial] * conv_dim)
    gflops, _ = flop_count(net, (x,))
    # a transposed convolution scatters each input point through the kernel: input spatial size
    size = spatial if transpose else (spatial + 2 * padding - kernel) // stride + 1
    expected = batch * c_in * c_out * kernel ** conv_dim * size ** conv_dim / groups
    assert gflops == giga(conv=expected)


def test_matmul():
    gflops, _ = flop_count(MatmulNet(), (torch.randn(20, 10), torch.randn(10, 100)))
    assert gflops == giga(matmul=20 * 10 * 100)


@pytest.mark.parametrize("a,b,batches", [
    ((1, 20, 10), (1, 10, 100), 1),
    ((2, 2, 20, 10), (2, 2, 10, 100), 4),
    ((1, 20, 10), (10, 100), 1),
    ((2, 20, 10), (10, 100), 2),
])
def test_matmul_broadcast(a, b, batches):
    gflops, _ = flop_count(MatmulNet(), (torch.randn(*a), torch.randn(*b)))
    assert gflops == giga(matmul=batches * 20 * 10 * 100)


def test_bmm():
    n, c, t, p = 2, 5, 2, 12
    gflops, _ = flop_count(BMMNet(), (torch.randn(n, c, t), torch.randn(n, t, p)))
    assert gflops == giga(bmm=n * t * p * c)


def test_einsum():
    n, c, t, p, g = 1, 5, 2, 12, 6
    gflops, _ = flop_count(EinsumNet("nct,ncp->ntp"), (torch.randn(n, c, t), torch.randn(n, c, p)))
    assert gflops == giga(einsum=n * t * p * c)
    gflops, _ = flop_count(EinsumNet("ntg,ncg->nct"), (torch.randn(n, t, g), torch.randn(n, c, g)))
    assert gflops == giga(einsum=n * t * g * c)


def test_batchnorm():
    # eval, no affine weight: 1 per element
    gflops, _ = flop_count(nn.BatchNorm1d(10, affine=False).eval(), (torch.randn(10, 10),))
    assert gflops == giga(batch_norm=10 * 10)
    # training, no affine weight: 4 per element
    gflops, _ = flop_count(nn.BatchNorm2d(10, affine=False), (torch.randn(10, 10, 5, 5),))
    assert gflops == giga(batch_norm=4 * 10 * 10 * 5 * 5)
    gflops, _ = flop_count(nn.BatchNorm3d(10, affine=False), (torch.randn(10, 10, 5, 5, 5),))
    assert gflops == giga(batch_norm=4 * 10 * 10 * 5 * 5 * 5)


def test_three_net():
    batch, c_in, conv_dim, spatial, linear_dim = 4, 2, 5, 10, 3
    gflops, _ = flop_count(ThreeNet(c_in, conv_dim, linear_dim), (torch.randn(batch, c_in, spatial, spatial),))
    expected = giga(conv=batch * conv_dim * c_in * spatial * spatial,
                    adaptive_avg_pool2d=batch * conv_dim * spatial * spatial)   # 1 per input element: 2e-6
    expected[LIN_OP] = (batch * conv_dim * linear_dim + batch * linear_dim) / 1e9
    assert gflops == expected
    assert expected["adaptive_avg_pool2d"] == 2e-6


def test_flop_counter_class():
    batch, c_in, conv_dim, spatial, linear_dim = 4, 2, 5, 10, 3
    analysis = FlopCountAnalysis(ThreeNet(c_in, conv_dim, linear_dim), (torch.randn(batch, c_in, spatial, spatial),))
    conv = batch * conv_dim * c_in * spatial * spatial
    expected = Counter({"conv": conv, "linear1": batch * conv_dim * linear_dim,
                        "linear2": batch * linear_dim, "pool": conv // c_in})
    expected[""] = sum(expected.values())
    assert analysis.by_module() == expected


def test_autograd_function():
    class Mod(nn.Module):
        def forward(self, x):
            return _CustomOp.apply(x)

    analysis = FlopCountAnalysis(Mod(), (torch.rand(4, 5),)).set_op_handle(
        "prim::PythonOp._CustomOp", lambda *args, **kwargs: 42)
    assert analysis.total() == 42
    assert analysis.by_operator() == Counter({"PythonOp._CustomOp": 42})
    assert _CustomOp.apply.__func__ is Function.apply.__func__  # restored after the run


def test_scripted_function_is_counted():
    # fvcore cannot look inside a scripted function (it reports prim::CallFunction); its ops
    # dispatch like any other here: x @ x on (5, 5) is 5*5*5 multiply-adds.
    def func(x):
        return x @ x

    class Mod(nn.Module):
        def forward(self, x):
            return torch.jit.script(func)(x * x)

    analysis = FlopCountAnalysis(Mod(), (torch.rand(5, 5),))
    assert analysis.total() == 125
    assert "prim::CallFunction" not in analysis.unsupported_ops()
    assert analysis.unsupported_ops()["aten::mul"] == 1


# -- fvcore's default handles (TestFlopCountHandles): called with a traced node's JIT values --


def _node_values(func, inputs, kind):
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    graph = torch.jit.trace(lambda *args: func(*inputs), tuple(tensors), check_trace=False).graph
    (node,) = [n for n in graph.nodes() if n.kind() == kind]
    return list(node.inputs()), list(node.outputs())


def test_handle_batch_norm():
    counter, vec = _DEFAULT_SUPPORTED_OPS["aten::batch_norm"], torch.rand(2)
    x = torch.rand(2, 2, 2, 2)
    # eval with running stats: 2 per element with the affine weight, 1 without; training: 5
    assert counter(*_node_values(F.batch_norm, (x, vec, vec, vec, vec), "aten::batch_norm")) == 32
    assert counter(*_node_values(F.batch_norm, (x, vec, vec, None, None), "aten::batch_norm")) == 16
    assert counter(*_node_values(F.batch_norm, (x, vec, vec, vec, vec, True), "aten::batch_norm")) == 80


def test_handle_group_norm():
    counter, vec = _DEFAULT_SUPPORTED_OPS["aten::group_norm"], torch.rand(2)
    x = torch.rand(2, 2, 2, 2)
    assert counter(*_node_values(F.group_norm, (x, 2, vec, vec), "aten::group_norm")) == 80
    assert counter(*_node_values(F.group_norm, (x, 2, None, None), "aten::group_norm")) == 64


def test_handle_upsample():
    counter = _DEFAULT_SUPPORTED_OPS["aten::upsample_bilinear2d"]
    values = _node_values(F.interpolate, (torch.rand(2, 2, 2, 2), None, 2, "bilinear", False),
                          "aten::upsample_bilinear2d")
    assert counter(*values) == 2 ** 4 * 4 * 4  # 4 per output element


def test_handle_complicated_einsum():
    counter = _DEFAULT_SUPPORTED_OPS["aten::einsum"]
    values = _node_values(torch.einsum, ("nc,nchw->hw", torch.rand(3, 4), torch.rand(3, 4, 2, 3)), "aten::einsum")
    assert counter(*values) == 72


@pytest.mark.parametrize("name,func", [("aten::mm", torch.mm), ("aten::matmul", torch.matmul)])
def test_handle_torch_mm(name, func):
    values = _node_values(func, (torch.rand(3, 4), torch.rand(4, 5)), name)
    assert _DEFAULT_SUPPORTED_OPS[name](*values) == 60


def test_default_handles_work_through_the_shim_too():
    # The same handles given to set_op_handle run on dispatched arguments (the JIT-value shim):
    # a JitModelAnalysis with them counts what FlopCountAnalysis counts.
    from dispatchcount.fvcore import JitModelAnalysis

    model, x = ThreeNet(2, 5, 3), torch.randn(4, 2, 10, 10)
    handled = JitModelAnalysis(model, (x,)).set_op_handle(**_DEFAULT_SUPPORTED_OPS)
    default = FlopCountAnalysis(model, (x,))
    assert handled.by_module_and_operator() == default.by_module_and_operator()
    assert handled.unsupported_ops() == default.unsupported_ops()

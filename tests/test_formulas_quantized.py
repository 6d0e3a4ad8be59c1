"""quantized:: kernels: integer multiply-adds are int_ops, not FLOPs; the float work is FLOPs.
Every number is worked out by hand from the shapes (docs/conventions.md, "Quantized kernels")."""


import pytest
import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd

from dispatchcount import FlopMode
from dispatchcount.registry import UNSUPPORTED, resolve

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # quantized tensors are deprecated

ENGINE = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "qnnpack"


@pytest.fixture(autouse=True)
def engine():
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = ENGINE
    yield
    torch.backends.quantized.engine = previous


def quantized(*shape):
    return torch.quantize_per_tensor(torch.randn(*shape), 0.1, 0, torch.quint8)


def count(fn, convention="flop"):
    with FlopMode(convention=convention) as fm:
        fn()
    assert fm.unsupported_ops() == {}, fm.formula_errors()
    return fm


def test_static_linear_int_ops_apart_and_requantization_flops():
    layer = nnq.Linear(8, 4)
    x = quantized(2, 8)
    fm = count(lambda: layer(x))
    # 2 x 4 outputs, 8 multiply-adds each: 64 integer multiply-adds = 128 int_ops; 0 FLOPs
    # for them; requantizing the 8 outputs: 5 each.
    assert fm.by_operator() == {"quantized.linear": 5 * 8}
    assert fm.total(metric="int_ops") == 2 * 64
    assert fm.by_dtype(metric="int_ops") == {"quint8": 128}
    assert fm.by_dtype() == {"quint8": 40}


def test_grouped_strided_static_conv():
    conv = nnq.Conv2d(3, 6, 3, groups=3, stride=2)
    x = quantized(2, 3, 9, 9)
    fm = count(lambda: conv(x))
    # output (2, 6, 4, 4) = 192 elements, each 1 x 3 x 3 multiply-adds (3 / groups = 1 channel)
    assert fm.total(metric="int_ops") == 2 * 192 * 9
    assert fm.total() == 5 * 192


def test_dynamic_linear_quantizes_its_input_and_dequantizes_its_output():
    layer = nnqd.Linear(8, 4)
    x = torch.randn(2, 8)
    fm = count(lambda: layer(x))
    # input: min, max and quantize, 7 per element (16); output: scale and bias, 2 per element (8)
    assert fm.by_operator() == {"quantized.linear_dynamic": 7 * 16 + 2 * 8}
    assert fm.by_dtype(metric="int_ops") == {"float32": 2 * 2 * 4 * 8}


def test_fp16_weights_are_floating_point_products():
    layer = nnqd.Linear(8, 4, dtype=torch.float16)
    fm = count(lambda: layer(torch.randn(2, 8)))
    assert fm.by_operator() == {"quantized.linear_dynamic_fp16": 2 * 2 * 4 * 8}
    assert fm.total(metric="int_ops") == 0


def test_dynamic_lstm_cell():
    cell = nnqd.LSTMCell(8, 4)
    x = torch.randn(2, 8)
    fm = count(lambda: cell(x))
    # gates: 2 rows x 16 gate units x (8 inputs + 4 hidden) multiply-adds, in int8;
    # quantizing input (16) and hidden state (8) 7 each; the LSTM cell 18 per hidden unit (8).
    assert fm.total(metric="int_ops") == 2 * 2 * 16 * 12
    assert fm.by_operator() == {"quantized.quantized_lstm_cell_dynamic": 7 * 24 + 18 * 8}


def test_elementwise_ops_on_quantized_tensors():
    x = quantized(2, 8)
    q = torch.ops.quantized
    # dequantize each quantized input (2), the float op, requantize (5), per output element
    assert count(lambda: q.add(x, x, 0.1, 0)).total() == (2 * 2 + 1 + 5) * 16
    assert count(lambda: q.add_relu(x, x, 0.1, 0)).total() == (2 * 2 + 2 + 5) * 16
    assert count(lambda: q.add(x, 2.0)).total() == (2 + 1 + 5) * 16
    assert count(lambda: q.sigmoid(x, 0.1, 0)).total() == (2 + 4 + 5) * 16
    assert count(lambda: q.cat([x, x], 0, 0.1, 0)).total() == (2 + 5) * 32
    # integer-domain comparisons: 0, and not reported as unsupported
    assert count(lambda: q.relu6(x)).total() == 0


def test_fvcore_convention_zero_flops_multiply_adds_as_int_ops():
    layer = nnq.Linear(8, 4)
    fm = count(lambda: layer(quantized(2, 8)), convention="fvcore")
    assert fm.total() == 0
    assert fm.total(metric="int_ops") == 64  # fvcore's unit: 1 per multiply-add


def test_int_mm_is_integer_work():
    a = torch.randint(-4, 4, (32, 16), dtype=torch.int8)
    b = torch.randint(-4, 4, (16, 8), dtype=torch.int8)
    fm = count(lambda: torch._int_mm(a, b))
    assert fm.total() == 0
    assert fm.by_dtype(metric="int_ops") == {"int32": 2 * 32 * 16 * 8}


def _quantized_cpu_ops():
    names = sorted({s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith("quantized::")})
    for name in names:
        if not any(torch._C._dispatch_has_kernel_for_dispatch_key(name, key) for key in ("CPU", "QuantizedCPU")):
            continue
        packet = getattr(torch.ops.quantized, name.split("::", 1)[1])
        for overload in packet.overloads():
            yield getattr(packet, overload)


def test_every_quantized_cpu_kernel_has_a_rule():
    missing = [str(op) for op in _quantized_cpu_ops() if resolve(op, "flop") is UNSUPPORTED]
    assert missing == []
    assert len(list(_quantized_cpu_ops())) > 100

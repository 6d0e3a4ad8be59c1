"""The ``quantized::`` kernels of PyTorch's CPU backends (fbgemm, qnnpack, onednn, x86).

FLOPs are floating-point operations: the integer multiply-adds of an int8 GEMM or convolution
are not FLOPs. They are recorded apart, as integer operations (``IntegerWork``; metric
``"int_ops"``, 2 per multiply-add as for FLOPs, the unit of the INT8 "TOPS" of accelerator
datasheets), in the op's record, so ``by_dtype(metric="int_ops")`` shows them by the dtype of
the op's result. What these kernels do in floating point is counted as FLOPs, per element, with
the costs of quantization.py (docs/conventions.md, "Quantized kernels"):

- static integer products (``linear``, ``conv2d`` ..., quint8 in and out): requantizing each
  int32 accumulator to the output's scale, 5 per output element (as quantizing);
- dynamic ones (float in and out, int8 weights): quantizing the input with its min and max, 7
  per input element, and dequantizing each output (scale, bias), 2;
- float activations times fp16 or int4 weights: floating-point multiply-adds, 2 each;
- elementwise ops, norms and softmax on quantized tensors dequantize their inputs (2 per
  element), compute in float (the float op's cost), and requantize (5 per output element);
- comparisons and copies that stay in the integer domain (``clamp``, ``relu6``, ``threshold``,
  max pooling, ``dropout``, packing a quantized weight) cost 0.
"""

from __future__ import annotations

import weakref
from math import prod
from typing import Any, Callable, Optional

from torch._ops import OpOverload

from dispatchcount.formula_result import IntegerWork
from dispatchcount.formulas._helpers import arg_reader, result_tensor, without_out_arguments
from dispatchcount.formulas.norm import normalize_forward_cost
from dispatchcount.formulas.pointwise import POINTWISE_FLOPS
from dispatchcount.formulas.quantization import QUANTIZATION_FLOPS
from dispatchcount.formulas.reduction import REDUCTION_FLOPS
from dispatchcount.formulas.rnn import CELL_FORWARD
from dispatchcount.registry import ZERO, register_resolver

__all__ = ["FLOAT_PRODUCTS", "QUANTIZED_ELEMENTWISE_FLOPS", "quantized_rule"]

QUANTIZE = QUANTIZATION_FLOPS["quantize_per_tensor"]  # 5: x / scale + zp, round, clamp
QUANTIZE_DYNAMIC = QUANTIZATION_FLOPS["quantize_per_tensor_dynamic"]  # 7: + min and max
DEQUANTIZE = 2  # (q - zp) * scale, as quantization.py's dequantize

# Float cost per element of the op computed on dequantized values (before the 2 per quantized
# input element and the 5 per output element of requantizing).
QUANTIZED_ELEMENTWISE_FLOPS = {
    "add": 1, "add_relu": 2, "mul": 1, "mul_relu": 2,
    "add_scalar": 1, "add_scalar_relu": 2, "mul_scalar": 1, "mul_scalar_relu": 2,
    "sigmoid": POINTWISE_FLOPS["sigmoid"], "hardswish": POINTWISE_FLOPS["hardswish"],
    "elu": POINTWISE_FLOPS["elu"], "celu": POINTWISE_FLOPS["celu"],
    "leaky_relu": POINTWISE_FLOPS["leaky_relu"], "prelu": POINTWISE_FLOPS["_prelu_kernel"],
    "softmax": REDUCTION_FLOPS["softmax"][0],
    "batch_norm": 2, "batch_norm1d": 2, "batch_norm2d": 2, "batch_norm3d": 2,  # x a + b
    "batch_norm_relu": 3, "batch_norm1d_relu": 3, "batch_norm2d_relu": 3, "batch_norm3d_relu": 3,
}

_INTEGER_DOMAIN = frozenset({
    "clamp", "relu6", "threshold", "max_pool1d", "max_pool2d", "dropout",
    "linear_prepack", "linear_prepack_legacy", "linear_prepack_fp16", "linear_prepack_fp16_legacy",
    "conv_prepack", "conv1d_prepack", "conv2d_prepack", "conv3d_prepack",
    "conv_transpose1d_prepack", "conv_transpose2d_prepack", "conv_transpose3d_prepack",
    "embedding_bag_prepack", "make_quantized_cell_params", "make_quantized_cell_params_dynamic",
})

_STATIC_LINEAR = ("linear", "linear_relu", "linear_leaky_relu", "linear_tanh")
_STATIC_CONV = ("conv1d", "conv2d", "conv3d", "conv1d_relu", "conv2d_relu", "conv3d_relu",
                "conv2d_add", "conv2d_add_relu")
_STATIC_CONV_TRANSPOSE = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
_DYNAMIC_CONV = ("conv1d_dynamic", "conv2d_dynamic", "conv3d_dynamic")
_DYNAMIC_CONV_TRANSPOSE = ("conv_transpose1d_dynamic", "conv_transpose2d_dynamic", "conv_transpose3d_dynamic")
_FLOAT_LINEAR = ("linear_dynamic_fp16", "linear_relu_dynamic_fp16", "linear_dynamic_fp16_unpacked_weight",
                 "int4mm_packed_weight_cpu")
FLOAT_PRODUCTS = tuple(f"quantized.{name}" for name in _FLOAT_LINEAR)  # operator names

# Packed conv weights are opaque: their shape is read once per packed object (unpacking
# copies the weight), and forgotten with it.
_weight_shapes: "weakref.WeakKeyDictionary[Any, tuple[int, ...]]" = weakref.WeakKeyDictionary()


def _packed_weight_shape(packed: Any) -> tuple[int, ...]:
    shape = _weight_shapes.get(packed)
    if shape is None:
        shape = _weight_shapes[packed] = tuple(packed.unpack()[0].shape)
    return shape


def _out_numel(out: Any) -> int:
    return result_tensor(out).numel()


def _linear_macs(x, out) -> int:
    return _out_numel(out) * x.shape[-1]


def _conv_macs(x, packed, out) -> int:
    # weight (c_out, c_in / groups, *kernel): each output element takes prod(weight.shape[1:]).
    return _out_numel(out) * prod(_packed_weight_shape(packed)[1:])


def _conv_transpose_macs(x, packed, out) -> int:
    # weight (c_in, c_out / groups, *kernel): each input element is scattered through it.
    return x.numel() * prod(_packed_weight_shape(packed)[1:])


def _static(macs: Callable[..., int], two_operand: bool = False) -> Callable[..., Any]:
    def static_flops(x, second, *args, out=None, **kwargs):
        multiply_adds = macs(x, out) if two_operand else macs(x, second, out)
        return IntegerWork(QUANTIZE * _out_numel(out), 2 * multiply_adds)

    return static_flops


def _static_linear(x, packed, *args, out=None, **kwargs):
    return IntegerWork(QUANTIZE * _out_numel(out), 2 * _linear_macs(x, out))


def _dynamic(macs: Callable[..., int], per_input: int = QUANTIZE_DYNAMIC) -> Callable[..., Any]:
    def dynamic_flops(x, packed, *args, out=None, **kwargs):
        return IntegerWork(per_input * x.numel() + DEQUANTIZE * _out_numel(out), 2 * macs(x, packed, out))

    return dynamic_flops


def _float_linear(x, weight, *args, out=None, **kwargs):
    return 2 * _linear_macs(x, out)


def _rnn_cell(gates: int) -> Callable[..., Any]:
    # Dynamic quantization: the gate products (input and hidden) are int8 GEMMs, the cell is
    # float (rnn.py's cell costs, as for the aten quantized RNNs).
    def cell_flops(input, hx, *args, out=None, **kwargs):
        h = hx[0] if isinstance(hx, (list, tuple)) else hx
        rows, hidden = h.shape[0], h.shape[-1]
        macs = rows * gates * hidden * (input.shape[-1] + hidden)
        quantize = QUANTIZE_DYNAMIC * (input.numel() + h.numel())
        return IntegerWork(quantize + rows * hidden * CELL_FORWARD[gates], 2 * macs)

    return cell_flops


def _elementwise(per_element: int, quantized_inputs: int) -> Callable[..., int]:
    def quantized_elementwise_flops(*args, out=None, **kwargs):
        return (DEQUANTIZE * quantized_inputs + per_element + QUANTIZE) * _out_numel(out)

    return quantized_elementwise_flops


def _cat(tensors, *args, out=None, **kwargs):
    return (DEQUANTIZE + QUANTIZE) * _out_numel(out)


def _norm(groups_of: Callable[..., int]) -> Callable[..., int]:
    def quantized_norm_flops(input, *args, out=None, **kwargs):
        n = input.numel()
        weight = args[1] if len(args) > 1 else None
        bias = args[2] if len(args) > 2 else None
        return (DEQUANTIZE + QUANTIZE) * n + normalize_forward_cost(n, groups_of(input, args), weight is not None, bias is not None)

    return quantized_norm_flops


def _layer_norm_groups(input, args) -> int:
    return input.numel() // max(1, prod(args[0]))


def _group_norm_groups(input, args) -> int:
    return input.shape[0] * args[0]


def _instance_norm(input, weight=None, bias=None, *args, out=None, **kwargs):
    n = input.numel()
    groups = input.shape[0] * input.shape[1]
    return (DEQUANTIZE + QUANTIZE) * n + normalize_forward_cost(n, groups, weight is not None, bias is not None)


def _embedding(weight, indices, *args, out=None, **kwargs):
    return DEQUANTIZE * _out_numel(out)  # each looked-up value is dequantized


def _embedding_bag(op: OpOverload) -> Callable[..., int]:
    read_weights = arg_reader(op, "per_sample_weights")

    def embedding_bag_flops(weight, indices, *args, out=None, **kwargs):
        # Each looked-up value is dequantized (2) and summed into its bag (1); weighted: +1.
        looked_up = indices.numel() * result_tensor(out).shape[-1]
        weighted = read_weights((weight, indices) + args, kwargs) is not None
        return (DEQUANTIZE + 1 + weighted) * looked_up

    return embedding_bag_flops


def _embedding_prepack(per_element: int) -> Callable[..., int]:
    def embedding_prepack_flops(weight, *args, out=None, **kwargs):
        return per_element * weight.numel()  # rowwise quantization of a float table

    return embedding_prepack_flops


def _embedding_unpack(packed, *args, out=None, **kwargs):
    return DEQUANTIZE * _out_numel(out)


def _fixed(formula: Callable[..., Any]) -> Callable[[OpOverload], Callable[..., Any]]:
    return lambda op: formula


_RULES: dict[str, Callable[[OpOverload], Any]] = {
    **{name: _fixed(_static_linear) for name in _STATIC_LINEAR},
    **{name: _fixed(_static(_conv_macs)) for name in _STATIC_CONV},
    **{name: _fixed(_static(_conv_transpose_macs)) for name in _STATIC_CONV_TRANSPOSE},
    "matmul": _fixed(_static(_linear_macs, two_operand=True)),
    "linear_dynamic": _fixed(_dynamic(lambda x, packed, out: _linear_macs(x, out))),
    "linear_relu_dynamic": _fixed(_dynamic(lambda x, packed, out: _linear_macs(x, out))),
    **{name: _fixed(_dynamic(_conv_macs)) for name in _DYNAMIC_CONV},
    **{name: _fixed(_dynamic(_conv_transpose_macs)) for name in _DYNAMIC_CONV_TRANSPOSE},
    **{name: _fixed(_float_linear) for name in _FLOAT_LINEAR},
    "quantized_lstm_cell_dynamic": _fixed(_rnn_cell(4)),
    "quantized_gru_cell_dynamic": _fixed(_rnn_cell(3)),
    "quantized_rnn_relu_cell_dynamic": _fixed(_rnn_cell(1)),
    "quantized_rnn_tanh_cell_dynamic": _fixed(_rnn_cell(1)),
    "layer_norm": _fixed(_norm(_layer_norm_groups)),
    "group_norm": _fixed(_norm(_group_norm_groups)),
    "instance_norm": _fixed(_instance_norm),
    "cat": _fixed(_cat), "cat_out": _fixed(_cat), "cat_relu": _fixed(_cat), "cat_relu_out": _fixed(_cat),
    "embedding_byte": _fixed(_embedding),
    "embedding_4bit": _fixed(_embedding),
    "embedding_bag_byte": _embedding_bag,
    "embedding_bag_4bit": _embedding_bag,
    "embedding_bag_byte_rowwise_offsets": _embedding_bag,
    "embedding_bag_4bit_rowwise_offsets": _embedding_bag,
    "embedding_bag_2bit_rowwise_offsets": _embedding_bag,
    "embedding_bag_byte_prepack": _fixed(_embedding_prepack(QUANTIZE_DYNAMIC)),
    "embedding_bag_4bit_prepack": _fixed(_embedding_prepack(QUANTIZE_DYNAMIC)),
    "embedding_bag_2bit_prepack": _fixed(_embedding_prepack(QUANTIZE_DYNAMIC)),
    "embedding_bag_byte_prepack_with_rowwise_min_max": _fixed(_embedding_prepack(QUANTIZE)),
    "embedding_bag_4bit_prepack_with_rowwise_min_max": _fixed(_embedding_prepack(QUANTIZE)),
    "embedding_bag_2bit_prepack_with_rowwise_min_max": _fixed(_embedding_prepack(QUANTIZE)),
    "embedding_bag_byte_unpack": _fixed(_embedding_unpack),
    "embedding_bag_4bit_unpack": _fixed(_embedding_unpack),
    "embedding_bag_2bit_unpack": _fixed(_embedding_unpack),
    "linear_with_input_q_dq_qweight_dq_output_fp32":
        _fixed(_dynamic(lambda x, packed, out: _linear_macs(x, out), per_input=QUANTIZE)),
    "linear_with_input_q_dq_qweight_dq_relu_output_fp32":
        _fixed(_dynamic(lambda x, packed, out: _linear_macs(x, out), per_input=QUANTIZE)),
}


def _elementwise_rule(name: str, op: OpOverload) -> Optional[Callable[..., int]]:
    base = name[:-4] if name.endswith("_out") else name
    per_element = QUANTIZED_ELEMENTWISE_FLOPS.get(base)
    if per_element is None:
        return None
    # add/mul of two quantized tensors dequantize both; their Scalar overloads and the
    # *_scalar ops one.
    two = base in ("add", "add_relu", "mul", "mul_relu") and not op._overloadname.startswith("Scalar")
    return _elementwise(per_element, 2 if two else 1)


def quantized_rule(op: OpOverload) -> Any:
    """The rule of a ``quantized::`` op in the flop convention, or None for other ops."""
    if op.namespace != "quantized":
        return None
    name = op._schema.name.split("::", 1)[1]
    if name in _INTEGER_DOMAIN:
        return ZERO
    factory = _RULES.get(name)
    rule = factory(op) if factory is not None else _elementwise_rule(name, op)
    return None if rule is None else without_out_arguments(op, rule)


def _fvcore_rule(op: OpOverload) -> Any:
    # fvcore has no handle for quantized ops (it skips them): 0 flops. The multiply-adds of
    # the integer products are still recorded as integer operations, 1 per multiply-add
    # (fvcore's unit); float products (fp16 / int4 weights) are multiply-adds, 1 each.
    rule = quantized_rule(op)
    if rule is None or rule is ZERO:
        return rule

    def fvcore_quantized(*args: Any, out: Any = None, **kwargs: Any) -> Any:
        work = rule(*args, out=out, **kwargs)
        if type(work) is IntegerWork:
            return IntegerWork(0, work.int_ops // 2)
        return work // 2 if op._schema.name.split("::", 1)[1] in _FLOAT_LINEAR else 0

    return fvcore_quantized


register_resolver("flop", quantized_rule, family="the quantized:: kernels (dispatchcount.formulas.quantized)")
register_resolver("fvcore", _fvcore_rule, family="the quantized:: kernels, fvcore's units (dispatchcount.formulas.quantized)")

"""Matrix products that matmul.py/attention.py do not register, in their convention.

One multiply-add is 2 FLOPs (8 for complex), ``out.numel() * K`` multiply-adds for a product
with contraction length K, bias and scaling not counted, as matmul.py does. Covered here: the
in-place spellings of matmul.py's ops (``addmm_``, ``baddbmm_`` ...), ``linear.out`` and the
linear/matmul backward kernels, grouped and weight-quantized GEMMs (a float activation times
dequantized weights: floating-point multiply-adds), and PyTorch's fused transformer
encoder-layer fast path. See docs/conventions.md, "Matrix products beyond FlopCounterMode".
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch._ops import OpOverload

from dispatchcount.formula_result import IntegerWork
from dispatchcount.formulas import matmul
from dispatchcount.formulas._helpers import (
    Tensor,
    dtype_factor,
    fixed,
    grouped_mm_macs,
    macs_to_flops,
    register_family,
    result_tensor,
)
from dispatchcount.formulas.attention import multi_head_attention_flops, transposed_is_strided
from dispatchcount.formulas.norm import normalize_forward_cost
from dispatchcount.registry import register_formula

__all__ = ["transformer_encoder_layer_flops"]

aten = torch.ops.aten

# In-place twins of matmul.py's ops: the same multiply-adds.
register_formula(aten.addmm_)(matmul.addmm_flop)
register_formula([aten.baddbmm_, aten.addbmm_])(matmul.baddbmm_flop)
register_formula(aten.addmv_)(matmul.addmv_flop)
register_formula(aten.addr_)(matmul.addr_flop)


def _float_macs(macs: int, *tensors: Tensor) -> int:
    # Like macs_to_flops, for products whose operands mix dtypes (int8/int4 weights, fp8):
    # a floating or complex operand makes the multiply-adds floating-point.
    for t in tensors:
        if t.dtype.is_complex:
            return 8 * macs
    for t in tensors:
        if t.dtype.is_floating_point:
            return 2 * macs
    return 0


def _linear(input, weight, bias=None, *args, out=None, **kwargs):
    return matmul.mkldnn_linear_flop(input, weight)


def _linear_backward(self, grad_output, weight, output_mask, *args, out=None, **kwargs):
    # grad_input = g W (rows out in), grad_weight = g^T x (rows out in), grad_bias = sum g.
    out_features, in_features = weight.shape
    rows = grad_output.numel() // out_features if out_features else 0
    macs = rows * out_features * in_features
    flops = macs_to_flops(macs, weight.dtype) * (bool(output_mask[0]) + bool(output_mask[1]))
    if output_mask[2]:
        flops += dtype_factor(4, grad_output) * grad_output.numel()
    return flops


def _linear_backward_input(input_size, grad_output, weight, *args, out=None, **kwargs):
    out_features, in_features = weight.shape
    rows = grad_output.numel() // out_features if out_features else 0
    return macs_to_flops(rows * out_features * in_features, weight.dtype)


def _linear_backward_weights(grad_output, input, weight, bias_defined, *args, out=None, **kwargs):
    out_features, in_features = weight.shape
    rows = grad_output.numel() // out_features if out_features else 0
    flops = macs_to_flops(rows * out_features * in_features, weight.dtype)
    return flops + (dtype_factor(4, grad_output) * grad_output.numel() if bias_defined else 0)


def _matmul_backward(grad, self, other, mask, *args, out=None, **kwargs):
    # The forward did grad.numel() * K multiply-adds (K = self's last dim, the contraction);
    # each requested gradient is one product of the same size.
    macs = grad.numel() * self.shape[-1]
    return macs_to_flops(macs, grad.dtype) * (bool(mask[0]) + bool(mask[1]))


def _contracted(result: Tensor, k: int) -> int:
    return result.numel() * k


def _grouped_mm(self, mat2, *args, out=None, **kwargs):
    # MoE experts: tokens (M_total, K) x weights (G, K, N) by offsets, and the other layouts
    result = result_tensor(out)
    return _float_macs(grouped_mm_macs(self.shape, mat2.shape, result.shape), self, mat2, result)


def _weight_quantized_mm(self, mat2, *args, out=None, **kwargs):
    # Float activations (M, K) times dequantized int4/int8 weights: out (M, N), K each.
    return _float_macs(_contracted(result_tensor(out), self.shape[-1]), self)


def _dyn_quant_matmul_4bit(inp, packed_weights, block_size, in_features, out_features, *args, out=None, **kwargs):
    # Activations are quantized to int8 per row (min/max 2, quantize 5 per element), then an
    # integer GEMM (0 FLOPs, recorded as int_ops); dequantizing the int32 results costs 2 per
    # output element.
    result = result_tensor(out)
    flops = dtype_factor(1, inp) * (7 * inp.numel() + 2 * result.numel())
    return IntegerWork(flops, 2 * result.numel() * in_features)


def _mixed_dtypes_linear(input, weight, scale, *args, out=None, **kwargs):
    return _float_macs(_contracted(result_tensor(out), input.shape[-1]), input)


# 2:4 semi-structured sparsity: half of the sparse operand's K entries are stored, so half the
# dense product's multiply-adds run. out is (M, N); K is the dense operand's contracted size.
def _semi_structured_mm(mat1, mat1_meta, mat2, *args, out=None, **kwargs):
    return _float_macs(_contracted(result_tensor(out), mat2.shape[0]) // 2, mat2)


def _semi_structured_addmm(input, mat1, mat1_meta, mat2, *args, out=None, **kwargs):
    return _float_macs(_contracted(result_tensor(out), mat2.shape[0]) // 2, mat2)


def _semi_structured_linear(input, weight, meta, *args, out=None, **kwargs):
    return _float_macs(_contracted(result_tensor(out), input.shape[-1]) // 2, input)


def _cslt_sparse_mm(compressed_a, dense_b, *args, out=None, **kwargs):
    # cuSPARSELt 2:4: the dense product's multiply-adds, halved. K is B's contracted dim.
    result = result_tensor(out)
    k = dense_b.shape[0]
    return _float_macs(_contracted(result, k) // 2, dense_b)


def transformer_encoder_layer_flops(batch: int, seq: int, d: int, heads: int, ffn: int, use_gelu: bool,
                                    dtype: torch.dtype = torch.float32, masked: bool = False,
                                    bias_added: bool = True) -> int:
    """PyTorch's fused encoder layer, counted as its slow path (what runs on meta or in
    training): self-attention as nn.MultiheadAttention's slow path (``bias_added``: see
    ``multi_head_attention_flops``), the feed-forward products (``addmm``, biases folded), the
    activation, two residual adds and two layer norms."""
    tokens = batch * seq
    flops = multi_head_attention_flops(batch, seq, d, heads, dtype, masked=masked, bias_added=bias_added)
    flops += macs_to_flops(2 * tokens * d * ffn, dtype)       # FFN in and out
    flops += tokens * ffn * (5 if use_gelu else 1)             # gelu / relu
    flops += 2 * normalize_forward_cost(tokens * d, tokens, True, True)
    flops += 2 * tokens * d                                    # residual adds
    return flops


def _transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight,
                                   proj_bias, use_gelu, *args, out=None, **kwargs):
    norm_first = args[0] if args else kwargs.get("norm_first", False)
    ffn_weight_1 = args[6] if len(args) > 6 else kwargs["ffn_weight_1"]
    mask = args[10] if len(args) > 10 else kwargs.get("mask")
    batch, seq = (src.shape[0], src.shape[1]) if src.dim() == 3 else (1, src.shape[0])
    # the attention's input: src itself, or (norm_first) a fresh contiguous layer-norm output
    bias_added = batch > 1 and seq > 1 if norm_first else transposed_is_strided(src)
    flops = transformer_encoder_layer_flops(batch, seq, embed_dim, num_heads, ffn_weight_1.shape[0], use_gelu,
                                            src.dtype, masked=mask is not None, bias_added=bias_added)
    return dtype_factor(4, src) * flops


def _transform_bias_rescale_qkv(qkv, qkv_bias, num_heads, *args, out=None, **kwargs):
    # Add the bias to q, k and v, then scale q by 1/sqrt(head_dim): 4/3 FLOPs per element.
    n = qkv.numel()
    return dtype_factor(4, qkv) * (n + n // 3)


FAMILY: dict[str, Callable[[OpOverload], Any]] = {
    "linear": fixed(_linear),
    "linear_backward": fixed(_linear_backward),
    "mkldnn_linear_backward": fixed(_linear_backward),
    "mkldnn_linear_backward_input": fixed(_linear_backward_input),
    "mkldnn_linear_backward_weights": fixed(_linear_backward_weights),
    "matmul_backward": fixed(_matmul_backward),
    "_grouped_mm": fixed(_grouped_mm),
    "_scaled_grouped_mm": fixed(_grouped_mm),
    "_scaled_grouped_mm_v2": fixed(_grouped_mm),
    "_weight_int4pack_mm": fixed(_weight_quantized_mm),
    "_weight_int4pack_mm_for_cpu": fixed(_weight_quantized_mm),
    "_weight_int4pack_mm_with_scales_and_zeros": fixed(_weight_quantized_mm),
    "_weight_int8pack_mm": fixed(_weight_quantized_mm),
    "_dyn_quant_matmul_4bit": fixed(_dyn_quant_matmul_4bit),
    "_mixed_dtypes_linear": fixed(_mixed_dtypes_linear),
    "_sparse_semi_structured_mm": fixed(_semi_structured_mm),
    "_sparse_semi_structured_addmm": fixed(_semi_structured_addmm),
    "_sparse_semi_structured_linear": fixed(_semi_structured_linear),
    "_cslt_sparse_mm": fixed(_cslt_sparse_mm),
    "_transformer_encoder_layer_fwd": fixed(_transformer_encoder_layer_fwd),
    "_transform_bias_rescale_qkv": fixed(_transform_bias_rescale_qkv),
}

register_family(FAMILY)

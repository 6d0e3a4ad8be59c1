"""Matmul-like work fvcore has no handle for, counted in multiply-adds under ``convention="fvcore"``.

fvcore's trace would record these as nodes it cannot count (0, "unsupported"). They are products
all the same, so this convention counts them, one multiply-add = 1, whatever the dtype (fvcore's
handles never look at dtypes), and lists them in ``beyond_fvcore()`` (:data:`BEYOND`):

- low-precision and grouped GEMMs: ``_scaled_mm`` (fp8), ``_int_mm`` (int8), the weight-packed
  int4/int8 GEMMs, ``_dyn_quant_matmul_4bit``, ``_mixed_dtypes_linear``, ``_grouped_mm`` and
  ``_scaled_grouped_mm`` (mixture-of-experts): out.numel() x the contracted size;
- 2:4 semi-structured sparse GEMMs: half the dense product (half of the sparse operand is
  stored and multiplied), as the ``flop`` convention counts them;
- ``addr`` (outer-product update): one multiply-add per output element; the in-place twins of
  the counted products (``addmm_``, ``baddbmm_`` ...), ``mkldnn_linear``, ``_addmm_activation``;
- recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells): the gate products,
  rows x the elements of every weight matrix (W_ih, W_hh, and W_hr with ``proj_size``); the
  gates' elementwise arithmetic is free, as in fvcore. Whole-layer kernels (CPU
  ``mkldnn_rnn_layer``, ``_cudnn_rnn``, ``miopen_rnn``, ``_lstm_mps``) and the composite calls
  (counted by the function-level hook, see ``hook.py``) give the same number; their backward
  kernels twice that (input and weight gradients);
- convolution backend kernels reached without ``aten.convolution`` above them;
- attention kernels not in ``rules.py`` (cuDNN, in-place flash, the math path of SDPA);
- rarely reached kernels (sparse COO/CSR products, mkldnn and nested-tensor backward kernels,
  convolution backward backends): half the ``flop`` convention's count.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from dispatchcount.formulas._helpers import argument as _arg
from dispatchcount.formulas._helpers import attention_backward_macs, attention_macs, conv_macs, grouped_mm_macs, prod
from dispatchcount.formulas._helpers import result_tensor
from dispatchcount.registry import register_formula, resolve

__all__ = ["BEYOND", "rnn_macs"]

aten = torch.ops.aten
FVCORE = "fvcore"


def _ops(*names: str) -> list:
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def _register(names: Sequence[str], formula: Any) -> list:
    ops = _ops(*names)
    if ops:
        register_formula(ops, FVCORE)(formula)
    return ops


def _contracted(out: Any, k: int) -> int:
    return result_tensor(out).numel() * k


# -- products ---------------------------------------------------------------------------------


def _mm(a, b, *args, out=None, **kwargs) -> int:
    return _contracted(out, a.shape[-1])


def _inplace_addmm(bias, a, b, *args, out=None, **kwargs) -> int:
    return a.shape[0] * a.shape[1] * b.shape[1]


def _inplace_baddbmm(bias, a, b, *args, out=None, **kwargs) -> int:
    n, c, t = a.shape
    return n * c * t * b.shape[-1]


def _inplace_addmv(bias, a, v, *args, out=None, **kwargs) -> int:
    return a.shape[0] * a.shape[1]


def _addr(bias, u, v, *args, out=None, **kwargs) -> int:
    return u.numel() * v.numel()


def _linear(x, weight, *args, out=None, **kwargs) -> int:
    return x.numel() // weight.shape[1] * weight.shape[0] * weight.shape[1]


def _linear_backward(x, grad_out, weight, mask, *args, out=None, **kwargs) -> int:
    forward = _linear(x, weight)
    return forward * (bool(mask[0]) + bool(mask[1]))


def _grouped_mm(a, b, *args, out=None, **kwargs) -> int:
    return grouped_mm_macs(a.shape, b.shape, result_tensor(out).shape)


def _dyn_quant_matmul_4bit(x, packed_weights, block_size, in_features, out_features, *args, out=None, **kwargs) -> int:
    return _contracted(out, in_features)


def _semi_structured_mm(a, a_meta, b, *args, out=None, **kwargs) -> int:
    return _contracted(out, b.shape[0]) // 2


def _semi_structured_addmm(bias, a, a_meta, b, *args, out=None, **kwargs) -> int:
    return _contracted(out, b.shape[0]) // 2


def _semi_structured_linear(x, weight, meta, *args, out=None, **kwargs) -> int:
    return _contracted(out, x.shape[-1]) // 2


def _cslt_sparse_mm(compressed_a, dense_b, *args, out=None, **kwargs) -> int:
    return _contracted(out, dense_b.shape[0]) // 2


_PRODUCTS = [
    *_register(["_scaled_mm", "_scaled_mm_v2", "_int_mm", "_weight_int4pack_mm",
                "_weight_int4pack_mm_for_cpu", "_weight_int4pack_mm_with_scales_and_zeros",
                "_weight_int8pack_mm", "_mixed_dtypes_linear"], _mm),
    *_register(["_grouped_mm", "_scaled_grouped_mm", "_scaled_grouped_mm_v2"], _grouped_mm),
    *_register(["_dyn_quant_matmul_4bit"], _dyn_quant_matmul_4bit),
    *_register(["_sparse_semi_structured_mm"], _semi_structured_mm),
    *_register(["_sparse_semi_structured_addmm"], _semi_structured_addmm),
    *_register(["_sparse_semi_structured_linear"], _semi_structured_linear),
    *_register(["_cslt_sparse_mm"], _cslt_sparse_mm),
    *_register(["addr", "addr_"], _addr),
    *_register(["addmm_", "_addmm_activation"], _inplace_addmm),
    *_register(["baddbmm_", "addbmm_"], _inplace_baddbmm),
    *_register(["addmv_"], _inplace_addmv),
    *_register(["mkldnn_linear"], _linear),
    *_register(["linear_backward", "mkldnn_linear_backward"], _linear_backward),
]


# -- recurrent layers -------------------------------------------------------------------------


def _rows(x) -> int:
    """Time steps x batch rows (a packed sequence's rows are already summed in dim 0)."""
    return x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0


def rnn_macs(x, weights: Sequence[Any]) -> int:
    """Gate products of an RNN stack: every row meets every weight matrix once (the biases and
    the gates' elementwise arithmetic are free, as in fvcore)."""
    return _rows(x) * sum(w.numel() for w in weights if isinstance(w, torch.Tensor) and w.dim() == 2)


def _rnn_at(params_index: int):
    def formula(x, *args, out=None, **kwargs) -> int:
        return rnn_macs(x, args[params_index - 1])

    return formula


def _rnn_cell(x, hx, w_ih, w_hh, *args, out=None, **kwargs) -> int:
    return rnn_macs(x, (w_ih, w_hh))


def _mkldnn_rnn_layer(x, w_ih, w_hh, *args, out=None, **kwargs) -> int:
    return rnn_macs(x, (w_ih, w_hh))


def _mkldnn_rnn_layer_backward(x, w_ih, w_hh, *args, out=None, **kwargs) -> int:
    return 2 * rnn_macs(x, (w_ih, w_hh))


def _cudnn_rnn(x, weights, *args, out=None, **kwargs) -> int:
    return rnn_macs(x, weights)


def _cudnn_rnn_backward(x, weights, *args, out=None, **kwargs) -> int:
    return 2 * rnn_macs(x, weights)


def _lstm_mps(x, hx, params, *args, out=None, **kwargs) -> int:
    return rnn_macs(x, params)


def _lstm_mps_backward(grad_y, grad_hy, grad_cy, z_state, cell_state, x, layers_outputs, hx, params,
                       *args, out=None, **kwargs) -> int:
    return 2 * rnn_macs(x, params)


_RNN_PACKETS = _ops("lstm", "gru", "rnn_tanh", "rnn_relu")
for _packet in _RNN_PACKETS:
    # input overload: (input, hx, params, ...); data overload: (data, batch_sizes, hx, params, ...)
    register_formula(_packet.input, FVCORE)(_rnn_at(2))
    register_formula(_packet.data, FVCORE)(_rnn_at(3))

_RNN = [
    *_RNN_PACKETS,
    *_register(["lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"], _rnn_cell),
    *_register(["mkldnn_rnn_layer"], _mkldnn_rnn_layer),
    *_register(["mkldnn_rnn_layer_backward"], _mkldnn_rnn_layer_backward),
    *_register(["_cudnn_rnn", "miopen_rnn"], _cudnn_rnn),
    *_register(["_cudnn_rnn_backward", "miopen_rnn_backward"], _cudnn_rnn_backward),
    *_register(["_lstm_mps"], _lstm_mps),
    *_register(["lstm_mps_backward"], _lstm_mps_backward),
]


# -- convolution backends and more attention kernels -------------------------------------------


def _conv(transposed: bool):
    def formula(x, weight, *args, out=None, **kwargs) -> int:
        return conv_macs(x.shape, weight.shape, result_tensor(out).shape, transposed)

    return formula


def _conv_tbc(x, weight, *args, out=None, **kwargs) -> int:
    # x (time, batch, c_in), weight (kernel, c_in, c_out), out (time', batch, c_out)
    out_time, batch, _ = out.shape
    return out_time * batch * prod(weight.shape)


def _sdpa_math(q, k, v, *args, out=None, **kwargs) -> int:
    return attention_macs(q.shape, k.shape, v.shape)


def _cudnn_attention_forward(q, k, v, bias=None, cum_seq_q=None, *args, out=None, **kwargs) -> int:
    _fixed_length(cum_seq_q, "_cudnn_attention_forward")
    return attention_macs(q.shape, k.shape, v.shape)


def _cudnn_attention_backward(grad_out, q, k, v, *args, out=None, **kwargs) -> int:
    _fixed_length(_arg(args, kwargs, 5, "cum_seq_q"), "_cudnn_attention_backward")
    return attention_backward_macs(q.shape, k.shape, v.shape)


def _flash_inplace(out_buffer, q, k, v, cum_seq_q=None, *args, out=None, **kwargs) -> int:
    _fixed_length(cum_seq_q, "_flash_attention_forward_no_dropout_inplace")
    b, s_q, h, e = q.shape  # (batch, seq, heads, embed)
    return attention_macs((b, h, s_q, e), (b, k.shape[2], k.shape[1], k.shape[3]),
                          (b, v.shape[2], v.shape[1], v.shape[3]))


def _fixed_length(cum_seq: Any, op: str) -> None:
    if isinstance(cum_seq, torch.Tensor) and cum_seq.numel():
        raise ValueError(f"{op}: variable-length attention is not counted under convention='fvcore': "
                         "its cost depends on tensor data")


_KERNELS = [
    *_register(["cudnn_convolution", "cudnn_convolution_relu", "cudnn_convolution_add_relu",
                "miopen_convolution", "miopen_depthwise_convolution", "miopen_convolution_relu",
                "miopen_convolution_add_relu", "mkldnn_convolution", "_slow_conv2d_forward",
                "slow_conv3d", "slow_conv3d_forward", "slow_conv_dilated2d", "slow_conv_dilated3d",
                "_conv_depthwise2d", "conv_depthwise3d", "_nnpack_spatial_convolution",
                "_mps_convolution", "convolution_overrideable"], _conv(False)),
    *_register(["cudnn_convolution_transpose", "miopen_convolution_transpose", "slow_conv_transpose2d",
                "slow_conv_transpose3d", "_mps_convolution_transpose"], _conv(True)),
    *_register(["conv_tbc"], _conv_tbc),
    *_register(["_scaled_dot_product_attention_math", "_triton_scaled_dot_attention"], _sdpa_math),
    *_register(["_cudnn_attention_forward"], _cudnn_attention_forward),
    *_register(["_cudnn_attention_backward"], _cudnn_attention_backward),
    *_register(["_flash_attention_forward_no_dropout_inplace"], _flash_inplace),
]

# -- rarely reached kernels: half the ``flop`` convention's count ------------------------------
#
# Sparse (COO/CSR) products, the mkldnn/nested-tensor linear and matmul backward kernels, the
# convolution backward kernels below ``convolution_backward`` and the Triton attention block: their
# ``flop`` formulas count 2 FLOPs per multiply-add (8 for complex), so the multiply-adds are that
# count divided back.


def _halved(op: Any):
    def formula(*args, out=None, **kwargs) -> int:
        flop_rule = resolve(op, "flop")  # looked up when called: the flop rules may load later
        if not callable(flop_rule):
            raise ValueError(f"{op}: no rule under convention 'flop' to derive its multiply-adds from")
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        per_mac = 8 if first is not None and first.dtype.is_complex else 2
        return flop_rule(*args, out=out, **kwargs) // per_mac

    return formula


def _register_halved(names: Sequence[str]) -> list:
    ops = _ops(*names)
    for packet in ops:
        for overload in packet.overloads():
            op = getattr(packet, overload)
            register_formula(op, FVCORE)(_halved(op))
    return ops


_HALVED = _register_halved([
    "_sparse_addmm", "hspmm", "sspaddmm", "sparse_sampled_addmm", "_sparse_mm_reduce_impl",
    "_sparse_mm_reduce_impl_backward", "_sparse_sparse_matmul", "matmul_backward",
    "mkldnn_linear_backward_input", "mkldnn_linear_backward_weights", "_slow_conv2d_backward",
    "convolution_backward_overrideable", "mps_convolution_backward", "mps_convolution_transpose_backward",
    "_triton_multi_head_attention",
])

BEYOND: frozenset[str] = frozenset(f"aten.{p.__name__}" for p in _PRODUCTS + _RNN + _KERNELS + _HALVED)
"""Operator names of the ops above (``by_operator()`` keys)."""

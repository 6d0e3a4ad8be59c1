"""fvcore's counting rules, as ``convention="fvcore"``.

fvcore's ``FlopCountAnalysis`` counts one multiply-add as one "flop" and only counts the ops its
JIT handles know (fvcore/nn/flop_count.py, ``_DEFAULT_SUPPORTED_OPS``): matmul-like ops
(addmm, mm, bmm, matmul, linear, einsum), convolution, batch/group/layer/instance norm,
upsample_nearest2d, upsample_bilinear2d, adaptive_avg_pool2d and grid_sampler. Everything else
(elementwise ops, softmax, pooling, reductions ...) is left uncounted: 0 here, by the rule
:func:`uncounted`, a known op (``FlopMode.unsupported_ops()`` stays empty) whose calls are
recorded, so that the drop-in front lists them as fvcore lists its unsupported operators.

JIT tracing sees composite ops (``aten::linear``, ``aten::einsum``, ``aten::instance_norm``) as
one node; a dispatch mode in grad mode sees what they decompose into (mm, bmm,
native_batch_norm ...). So the rules come in two layers that agree with each other:

- rules on the dispatched ops (mm, addmm, bmm, convolution, native_batch_norm,
  native_layer_norm, native_group_norm, upsample_*, _adaptive_avg_pool2d, grid_sampler_2d ...),
  which reproduce fvcore's number wherever the decomposition preserves it;
- rules on the composite ops themselves (aten.einsum, aten.matmul, aten.linear,
  aten.instance_norm, aten.adaptive_avg_pool2d ...). They apply when the mode sees the composite
  op undecomposed (``torch.inference_mode()``) and when ``dispatchcount.fvcore.hook`` counts
  the Python call, for the cases where the decomposition does not preserve fvcore's number
  (einsum, broadcast matmul, global adaptive pooling that runs as ``mean``, instance norm in eval
  with running stats).

Matmul-like ops that fvcore merely has no handle for (``scaled_dot_product_attention`` and its
kernels, baddbmm, mv, dot, convolution with ``padding="same"`` here; low-precision, grouped,
packed and sparse GEMMs, addr and recurrent layers in ``beyond.py``) are counted in
multiply-adds and listed in ``BEYOND_FVCORE``, so reports can show them apart.

Backward: fvcore cannot count backward. Here every backward op costs what fvcore charges the
forward op it differentiates: the matmuls of a backward pass by the same mm/bmm rules (so a
linear layer's backward is twice its forward), ``convolution_backward`` the forward
convolution's multiply-adds once per gradient it computes (input, weight; the bias gradient is
a sum, 0), and norm/upsample/pool/grid_sample backward ops the estimate of their forward op.
"""

from __future__ import annotations

from typing import Any

import torch

from dispatchcount.formulas._helpers import argument as _arg
from dispatchcount.formulas._helpers import attention_backward_macs, attention_macs, base_name, conv_macs
from dispatchcount.formulas.zero import zero_names
from dispatchcount.fvcore import beyond
from dispatchcount.formulas.quantized import FLOAT_PRODUCTS as _QUANTIZED_FLOAT_PRODUCTS
from dispatchcount.fvcore.einsum import fvcore_einsum_macs
from dispatchcount.records import op_name
from dispatchcount.registry import ZERO, register_formula, register_resolver
from dispatchcount.sdpa import SDPA_BACKWARD

__all__ = ["BEYOND_FVCORE", "FVCORE_OP_NAMES", "fvcore_name", "is_beyond_fvcore", "is_uncounted", "uncounted"]

aten = torch.ops.aten
FVCORE = "fvcore"


def _ops(*names: str) -> list:
    """The aten packets among ``names`` that this PyTorch build has (older builds lack some)."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


_UNCOUNTED: set[str] = set()  # operator names ("aten.mul") that got the rule below


def uncounted(*args: Any, out: Any = None, **kwargs: Any) -> int:
    """The rule of aten ops fvcore has no handle for: they cost 0. A formula rather than ZERO, so
    that their calls are recorded: the drop-in front lists them, per module, as fvcore lists
    its unsupported operators."""
    return 0


def is_uncounted(operator: str) -> bool:
    """Whether ``operator`` ("aten.mul") is an aten op fvcore has no handle for (costs 0)."""
    return operator in _UNCOUNTED


# ---------------------------------------------------------------------------------------------
# matmul-like ops fvcore has handles for
# ---------------------------------------------------------------------------------------------


@register_formula(aten.mm, FVCORE)
def _mm(a, b, *args, out=None, **kwargs) -> int:
    # fvcore's aten::mm handle: prod(a.shape) * b.shape[-1]
    return a.shape[0] * a.shape[1] * b.shape[1]


@register_formula(aten.addmm, FVCORE)
def _addmm(bias, a, b, *args, out=None, **kwargs) -> int:
    return a.shape[0] * a.shape[1] * b.shape[1]


@register_formula(aten.bmm, FVCORE)
def _bmm(a, b, *args, out=None, **kwargs) -> int:
    n, c, t = a.shape
    return n * c * t * b.shape[-1]


@register_formula(aten.matmul, FVCORE)
def _matmul(a, b, *args, out=None, **kwargs) -> int:
    # fvcore charges prod(a.shape) * b.shape[-1] whatever the broadcasting: a (M, K) @ b (B, K, N)
    # is charged M*K*N, not B*M*K*N. A 1-D ``b`` (which fvcore's handle rejects) counts N = 1.
    return a.numel() * (b.shape[-1] if b.dim() >= 2 else 1)


@register_formula(aten.linear, FVCORE)
def _linear(x, weight, *args, out=None, **kwargs) -> int:
    return x.numel() * weight.shape[0]


@register_formula(aten.einsum, FVCORE)
def _einsum(equation, tensors, *args, out=None, **kwargs) -> int:
    return fvcore_einsum_macs(equation, [tuple(t.shape) for t in tensors])


# ---------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------


@register_formula([aten.convolution, aten._convolution], FVCORE)
def _convolution(x, weight, bias, stride, padding, dilation, transposed, *args, out=None, **kwargs) -> int:
    return conv_macs(x.shape, weight.shape, out.shape, bool(transposed))


@register_formula(aten.convolution_backward, FVCORE)
def _convolution_backward(grad_out, x, weight, *args, out=None, **kwargs) -> int:
    transposed = bool(_arg(args, kwargs, 4, "transposed"))
    mask = _arg(args, kwargs, 7, "output_mask")
    # grad_input and grad_weight each cost the forward convolution's multiply-adds
    forward = conv_macs(x.shape, weight.shape, grad_out.shape, transposed)
    return forward * (int(bool(mask[0])) + int(bool(mask[1])))


# ---------------------------------------------------------------------------------------------
# normalization
# ---------------------------------------------------------------------------------------------


def _norm_cost(x, weight, training: bool = True) -> int:
    # fvcore: training-mode norms cost 5 per element with an affine weight, 4 without;
    # batch norm in eval costs 2 with the affine weight, 1 without.
    if training:
        return x.numel() * (5 if weight is not None else 4)
    return x.numel() * (2 if weight is not None else 1)


def _batch_norm_at(training_index: int | None, training_name: str = "training"):
    """A batch-norm formula reading ``training`` at ``training_index`` (None: always training)."""

    def formula(x, weight=None, *args, out=None, **kwargs) -> int:
        if training_index is None:
            training = True
        else:
            training = bool(_arg(args, kwargs, training_index - 2, training_name))
        return _norm_cost(x, weight, training)

    return formula


for _packet in [aten.native_batch_norm, aten.batch_norm, aten._native_batch_norm_legit_functional,
                *_ops("cudnn_batch_norm", "miopen_batch_norm")]:
    register_formula(_packet, FVCORE)(_batch_norm_at(5))
register_formula(aten._native_batch_norm_legit.default, FVCORE)(_batch_norm_at(5))
register_formula(aten._native_batch_norm_legit.out, FVCORE)(_batch_norm_at(5))
register_formula(aten._native_batch_norm_legit.no_stats, FVCORE)(_batch_norm_at(3))
register_formula(aten._native_batch_norm_legit.no_stats_out, FVCORE)(_batch_norm_at(3))
register_formula(aten._native_batch_norm_legit_no_training, FVCORE)(
    lambda x, weight=None, *a, out=None, **k: _norm_cost(x, weight, training=False)
)
for _packet in _ops("_batch_norm_with_update", "_batch_norm_with_update_functional"):
    register_formula(_packet, FVCORE)(_batch_norm_at(None))

if hasattr(aten, "_batch_norm_no_update"):

    @register_formula(aten._batch_norm_no_update, FVCORE)
    def _batch_norm_no_update(x, weight, bias, running_mean, running_var, *args, out=None, **kwargs) -> int:
        # without running statistics the batch's own are used: training-mode arithmetic
        return _norm_cost(x, weight, training=running_mean is None and running_var is None)


@register_formula([aten.native_batch_norm_backward], FVCORE)
def _native_batch_norm_backward(grad_out, x, weight, *args, out=None, **kwargs) -> int:
    return _norm_cost(x, weight, bool(_arg(args, kwargs, 4, "train")))


if hasattr(aten, "batch_norm_backward"):

    @register_formula(aten.batch_norm_backward, FVCORE)
    def _batch_norm_backward(grad_out, x, weight, *args, out=None, **kwargs) -> int:
        return _norm_cost(x, weight, bool(_arg(args, kwargs, 4, "update")))


@register_formula(_ops("cudnn_batch_norm_backward", "miopen_batch_norm_backward"), FVCORE)
def _cudnn_batch_norm_backward(x, grad_out, weight, *args, out=None, **kwargs) -> int:
    return _norm_cost(x, weight, training=True)  # these kernels exist for training only


@register_formula([aten.native_layer_norm, aten.layer_norm], FVCORE)
def _layer_norm(x, normalized_shape, weight=None, *args, out=None, **kwargs) -> int:
    return _norm_cost(x, kwargs.get("weight", weight))


@register_formula(aten.native_layer_norm_backward, FVCORE)
def _layer_norm_backward(grad_out, x, normalized_shape, mean, rstd, weight=None, *args, out=None, **kwargs) -> int:
    return _norm_cost(x, weight)


@register_formula(aten.native_group_norm, FVCORE)
def _native_group_norm(x, weight=None, *args, out=None, **kwargs) -> int:
    return _norm_cost(x, weight)


@register_formula(aten.group_norm, FVCORE)
def _group_norm(x, num_groups, weight=None, *args, out=None, **kwargs) -> int:
    return _norm_cost(x, kwargs.get("weight", weight))


@register_formula(aten.native_group_norm_backward, FVCORE)
def _group_norm_backward(grad_out, x, mean, rstd, weight=None, *args, out=None, **kwargs) -> int:
    return _norm_cost(x, weight)


@register_formula(aten.instance_norm, FVCORE)
def _instance_norm(x, weight=None, *args, out=None, **kwargs) -> int:
    # fvcore charges instance norm as a training-mode norm, with or without running statistics
    return _norm_cost(x, weight)


# ---------------------------------------------------------------------------------------------
# upsample, adaptive average pooling, grid_sample
# ---------------------------------------------------------------------------------------------


@register_formula(aten.upsample_nearest2d, FVCORE)
def _upsample_nearest2d(*args, out=None, **kwargs) -> int:
    return out.numel()


@register_formula(aten.upsample_bilinear2d, FVCORE)
def _upsample_bilinear2d(*args, out=None, **kwargs) -> int:
    return 4 * out.numel()


@register_formula(aten.upsample_nearest2d_backward, FVCORE)
def _upsample_nearest2d_backward(grad_out, *args, out=None, **kwargs) -> int:
    return grad_out.numel()


@register_formula(aten.upsample_bilinear2d_backward, FVCORE)
def _upsample_bilinear2d_backward(grad_out, *args, out=None, **kwargs) -> int:
    return 4 * grad_out.numel()


@register_formula([aten.adaptive_avg_pool2d, aten._adaptive_avg_pool2d], FVCORE)
def _adaptive_avg_pool2d(x, *args, out=None, **kwargs) -> int:
    return x.numel()


@register_formula(aten._adaptive_avg_pool2d_backward, FVCORE)
def _adaptive_avg_pool2d_backward(grad_out, x, *args, out=None, **kwargs) -> int:
    return x.numel()


# fvcore has no handle for adaptive_avg_pool1d (it is a pool, not a matmul: no gap to fill).
# A rule of its own keeps it from being charged as the adaptive_avg_pool2d it decomposes into.
register_formula(aten.adaptive_avg_pool1d, FVCORE)(uncounted)
_UNCOUNTED.add("aten.adaptive_avg_pool1d")


@register_formula(
    [aten.grid_sampler, aten.grid_sampler_2d, aten.grid_sampler_3d,
     *_ops("cudnn_grid_sampler", "_grid_sampler_2d_cpu_fallback")],
    FVCORE,
)
def _grid_sampler(*args, out=None, **kwargs) -> int:
    return 4 * out.numel()  # fvcore assumes bilinear: 4 per output element


@register_formula(
    [aten.grid_sampler_2d_backward, aten.grid_sampler_3d_backward,
     *_ops("_grid_sampler_2d_cpu_fallback_backward")],
    FVCORE,
)
def _grid_sampler_backward(grad_out, *args, out=None, **kwargs) -> int:
    return 4 * grad_out.numel()


if hasattr(aten, "cudnn_grid_sampler_backward"):

    @register_formula(aten.cudnn_grid_sampler_backward, FVCORE)
    def _cudnn_grid_sampler_backward(x, grid, grad_out, *args, out=None, **kwargs) -> int:
        return 4 * grad_out.numel()


# ---------------------------------------------------------------------------------------------
# beyond fvcore: matmul-like ops fvcore has no handle for, counted in multiply-adds
# ---------------------------------------------------------------------------------------------


@register_formula([aten.baddbmm, aten.addbmm], FVCORE)
def _baddbmm(bias, a, b, *args, out=None, **kwargs) -> int:
    n, c, t = a.shape
    return n * c * t * b.shape[-1]


@register_formula(aten.mv, FVCORE)
def _mv(a, v, *args, out=None, **kwargs) -> int:
    return a.shape[0] * a.shape[1]


@register_formula(aten.addmv, FVCORE)
def _addmv(bias, a, v, *args, out=None, **kwargs) -> int:
    return a.shape[0] * a.shape[1]


@register_formula([aten.dot, aten.vdot], FVCORE)
def _dot(a, b, *args, out=None, **kwargs) -> int:
    return a.numel()


@register_formula(aten._convolution_mode, FVCORE)
def _convolution_mode(x, weight, *args, out=None, **kwargs) -> int:
    # conv with padding="same"/"valid": JIT records aten::_convolution_mode, which fvcore lacks
    return conv_macs(x.shape, weight.shape, out.shape, transposed=False)


_SDPA_FORWARD = [
    aten.scaled_dot_product_attention,
    *_ops(
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable",
        "_scaled_dot_product_attention_math_for_mps",
    ),
]
_SDPA_BACKWARD = _ops(
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


@register_formula(_SDPA_FORWARD, FVCORE)
def _sdpa(q, k, v, *args, out=None, **kwargs) -> int:
    return attention_macs(q.shape, k.shape, v.shape)


@register_formula(_SDPA_BACKWARD, FVCORE)
def _sdpa_backward(grad_out, q, k, v, *args, out=None, **kwargs) -> int:
    return attention_backward_macs(q.shape, k.shape, v.shape)


# the backward of one F.scaled_dot_product_attention call, on every backend (dispatchcount.sdpa)
register_formula(SDPA_BACKWARD, FVCORE)(_sdpa_backward)


def _blhe(shape) -> tuple:
    """(batch, seq, heads, embed) of the flash/efficient kernels -> (batch, heads, seq, embed)."""
    b, s, h, e = shape
    return (b, h, s, e)


def _fixed_length(cu_q, cu_k, op: str) -> None:
    if cu_q is not None or cu_k is not None:
        raise ValueError(
            f"{op}: variable-length (cumulative sequence lengths) attention is not counted under "
            "convention='fvcore': its cost depends on tensor data"
        )


@register_formula(_ops("_flash_attention_forward"), FVCORE)
def _flash_attention_forward(q, k, v, cu_q=None, cu_k=None, *args, out=None, **kwargs) -> int:
    _fixed_length(cu_q, cu_k, "_flash_attention_forward")
    return attention_macs(_blhe(q.shape), _blhe(k.shape), _blhe(v.shape))


@register_formula(_ops("_efficient_attention_forward"), FVCORE)
def _efficient_attention_forward(q, k, v, bias=None, cu_q=None, cu_k=None, *args, out=None, **kwargs) -> int:
    _fixed_length(cu_q, cu_k, "_efficient_attention_forward")
    return attention_macs(_blhe(q.shape), _blhe(k.shape), _blhe(v.shape))


@register_formula(_ops("_flash_attention_backward"), FVCORE)
def _flash_attention_backward(grad_out, q, k, v, *args, out=None, **kwargs) -> int:
    if q.dim() != 4:  # packed variable-length layout (total_tokens, heads, embed)
        _fixed_length(True, True, "_flash_attention_backward")
    return attention_backward_macs(_blhe(q.shape), _blhe(k.shape), _blhe(v.shape))


@register_formula(_ops("_efficient_attention_backward"), FVCORE)
def _efficient_attention_backward(grad_out, q, k, v, *args, out=None, **kwargs) -> int:
    _fixed_length(_arg(args, kwargs, 2, "cu_seqlens_q"), _arg(args, kwargs, 3, "cu_seqlens_k"),
                  "_efficient_attention_backward")
    return attention_backward_macs(_blhe(q.shape), _blhe(k.shape), _blhe(v.shape))


@register_formula(aten._native_multi_head_attention, FVCORE)
def _native_multi_head_attention(q, k, v, embed_dim, num_heads, *args, out=None, **kwargs) -> int:
    # nn.MultiheadAttention's inference fast path: q, k, v projections, attention, output
    # projection. q (batch, L, E), k and v (batch, S, E).
    q_tokens, kv_tokens = q.numel() // embed_dim, k.numel() // embed_dim
    projections = (2 * q_tokens + 2 * kv_tokens) * embed_dim * embed_dim
    return projections + q_tokens * k.shape[-2] * 2 * embed_dim


@register_formula(aten._transformer_encoder_layer_fwd, FVCORE)
def _transformer_encoder_layer_fwd(src, embed_dim, num_heads, *args, out=None, **kwargs) -> int:
    # nn.TransformerEncoderLayer's inference fast path on a dense (batch, L, E) input: the
    # attention above, the feed-forward linears, and its two layer norms at fvcore's 5/element.
    if src.is_nested:
        raise ValueError("_transformer_encoder_layer_fwd: a nested (padded) input has no fixed shape")
    ffn_weight_1 = _arg(args, kwargs, 11, "ffn_weight_1")
    tokens, length = src.numel() // embed_dim, src.shape[-2]
    attention = 4 * tokens * embed_dim * embed_dim + tokens * length * 2 * embed_dim
    feed_forward = 2 * tokens * embed_dim * ffn_weight_1.shape[0]
    return attention + feed_forward + 2 * 5 * src.numel()


BEYOND_FVCORE: frozenset[str] = frozenset(
    f"aten.{p.__name__}"
    for p in [aten.baddbmm, aten.addbmm, aten.mv, aten.addmv, aten.dot, aten.vdot,
              aten._convolution_mode, *_SDPA_FORWARD, *_SDPA_BACKWARD,
              aten._native_multi_head_attention, aten._transformer_encoder_layer_fwd,
              *_ops("_flash_attention_forward", "_efficient_attention_forward",
                    "_flash_attention_backward", "_efficient_attention_backward")]
) | beyond.BEYOND | frozenset(_QUANTIZED_FLOAT_PRODUCTS)
"""Operator names (as in ``by_operator()``) that fvcore has no handle for but that are counted
under ``convention="fvcore"`` because they are matmul-like work: fvcore's total lacks them."""


def fvcore_name(operator: str) -> str:
    """The name fvcore's ``by_operator()`` uses for a dispatchcount operator name."""
    name = FVCORE_OP_NAMES.get(operator)
    if name is not None:
        return name
    namespace, _, op = operator.partition(".")
    return op if namespace == "aten" and op else operator


def is_beyond_fvcore(operator: str) -> bool:
    """Whether ``operator`` (a ``by_operator()`` key such as "aten.baddbmm") is counted beyond fvcore."""
    return operator in BEYOND_FVCORE


FVCORE_OP_NAMES: dict[str, str] = {
    "aten.convolution": "conv",
    "aten._convolution": "conv",
    "aten.native_batch_norm": "batch_norm",
    "aten._native_batch_norm_legit": "batch_norm",
    "aten._native_batch_norm_legit_no_training": "batch_norm",
    "aten._native_batch_norm_legit_functional": "batch_norm",
    "aten._batch_norm_with_update": "batch_norm",
    "aten._batch_norm_with_update_functional": "batch_norm",
    "aten._batch_norm_no_update": "batch_norm",
    "aten.cudnn_batch_norm": "batch_norm",
    "aten.miopen_batch_norm": "batch_norm",
    "aten.native_layer_norm": "layer_norm",
    "aten.native_group_norm": "group_norm",
    "aten._adaptive_avg_pool2d": "adaptive_avg_pool2d",
    "aten.grid_sampler_2d": "grid_sampler",
    "aten.grid_sampler_3d": "grid_sampler",
    "aten.cudnn_grid_sampler": "grid_sampler",
    "aten._grid_sampler_2d_cpu_fallback": "grid_sampler",
    **{f"aten.{p.__name__}": "scaled_dot_product_attention"
       for p in [*_SDPA_FORWARD, *_ops("_scaled_dot_product_attention_math")]},
}
"""Dispatched op -> the name fvcore's ``by_operator()`` gives the JIT node it comes from
(other aten ops keep their own name without the namespace)."""


# ---------------------------------------------------------------------------------------------
# everything else: uncounted under fvcore's rules
# ---------------------------------------------------------------------------------------------


_EXPLICIT_ZEROS = zero_names()


def _fvcore_resolver(op: torch._ops.OpOverload) -> Any:
    # fvcore leaves every aten op without a handle uncounted; ops of other namespaces (custom
    # ops) need an fvcore formula of their own and are reported until they have one.
    if op.namespace != "aten":
        return None
    # The reviewed explicit zeros (views, copies ...) stay ZERO: this resolver may be asked
    # before theirs, depending on which convention was loaded first.
    if base_name(op) in _EXPLICIT_ZEROS or torch.Tag.view_copy in op.tags:
        return ZERO
    _UNCOUNTED.add(op_name(op))
    return uncounted


register_resolver(FVCORE, _fvcore_resolver, family="fvcore's default (aten ops without a handle are uncounted)")

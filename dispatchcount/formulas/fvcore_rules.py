"""fvcore's counting rules, as ``convention="fvcore"``.

fvcore's ``FlopCountAnalysis`` counts one multiply-add as one "flop" and only counts the ops its
JIT handles know (fvcore/nn/flop_count.py, ``_DEFAULT_SUPPORTED_OPS``): matmul-like ops
(addmm, mm, bmm, matmul, linear, einsum), convolution, batch/group/layer/instance norm,
upsample_nearest2d, upsample_bilinear2d, adaptive_avg_pool2d and grid_sampler. Everything else
(elementwise ops, softmax, pooling, reductions ...) is left uncounted: 0 here, but still a known
op, so ``unsupported_ops()`` stays empty.

JIT tracing sees composite ops (``aten::linear``, ``aten::einsum``, ``aten::instance_norm``) as
one node; a dispatch mode in grad mode sees what they decompose into (mm, bmm,
native_batch_norm ...). So the rules come in two layers that agree with each other:

- rules on the dispatched ops (mm, addmm, bmm, convolution, native_batch_norm,
  native_layer_norm, native_group_norm, upsample_*, _adaptive_avg_pool2d, grid_sampler_2d ...),
  which reproduce fvcore's number wherever the decomposition preserves it;
- rules on the composite ops themselves (aten.einsum, aten.matmul, aten.linear,
  aten.instance_norm, aten.adaptive_avg_pool2d ...). They apply when the mode sees the composite
  op undecomposed (``torch.inference_mode()``) and when ``dispatchcount.fvcore_functions`` counts
  the Python call, for the cases where the decomposition does not preserve fvcore's number
  (einsum, broadcast matmul, global adaptive pooling that runs as ``mean``, instance norm in eval
  with running stats).

Matmul-like ops that fvcore merely has no handle for (``scaled_dot_product_attention`` and its
kernels, baddbmm, mv, dot, convolution with ``padding="same"`` ...) are counted in
multiply-adds and listed in ``BEYOND_FVCORE``, so reports can show them apart.

Backward: fvcore cannot count backward. Here every backward op costs what fvcore charges the
forward op it differentiates: the matmuls of a backward pass by the same mm/bmm rules (so a
linear layer's backward is twice its forward), ``convolution_backward`` the forward
convolution's multiply-adds once per gradient it computes (input, weight; the bias gradient is
a sum, 0), and norm/upsample/pool/grid_sample backward ops the estimate of their forward op.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Sequence

import torch

from dispatchcount.registry import ZERO, register_formula, register_resolver

__all__ = ["BEYOND_FVCORE", "FVCORE_OP_NAMES", "fvcore_einsum_macs", "is_beyond_fvcore"]

aten = torch.ops.aten
FVCORE = "fvcore"


def _arg(args: Sequence[Any], kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` at schema position ``index``: positional, keyword, or its default."""
    if index < len(args):
        return args[index]
    return kwargs.get(name, default)


def _ops(*names: str) -> list:
    """The aten packets among ``names`` that this PyTorch build has (older builds lack some)."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


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
# einsum, as fvcore counts it
# ---------------------------------------------------------------------------------------------


def fvcore_einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """fvcore's count for ``torch.einsum(equation, *operands)`` with operands of ``shapes``.

    fvcore renames the letters in order of first appearance; ``abc,abd->acd`` and
    ``abc,adc->adb`` (batched matmuls) are counted exactly; any other equation is costed by
    ``numpy.einsum_path(..., optimize="optimal")``, whose "Optimized FLOP count" (the sum of the
    pairwise contraction costs plus one, printed with 4 significant digits) fvcore halves and
    floors. This reproduces that number without numpy, including the rounding.
    """
    equation = equation.replace(" ", "")
    letters = dict.fromkeys(ch for ch in equation if ch.isalpha())
    rename = {ord(ch): 97 + i for i, ch in enumerate(letters)}
    equation = equation.translate(rename)
    if equation == "abc,abd->acd":
        n, c, t = shapes[0]
        return n * c * t * shapes[-1][-1]
    if equation == "abc,adc->adb":
        n, t, g = shapes[0]
        return n * t * g * shapes[-1][1]
    terms, output = _parse_einsum(equation, shapes)
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        if len(term) != len(shape):
            raise ValueError(
                f"einsum equation {equation!r}: operand of shape {tuple(shape)} needs "
                f"{len(shape)} subscripts, got {term!r}"
            )
        for ch, dim in zip(term, shape):
            if sizes.get(ch, 1) == 1:  # a size-1 dimension broadcasts against the larger one
                sizes[ch] = dim
    cost = _einsum_path_cost([set(t) for t in terms], set(output), terms, output, sizes)
    # numpy prints ``cost + 1`` as "%.3e"; fvcore parses that string back and halves it.
    return int(math.floor(float(f"{cost + 1:.3e}") / 2))


_EINSUM_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _parse_einsum(equation: str, shapes: Sequence[Sequence[int]]) -> tuple[list[str], str]:
    """Operand subscripts with any ``...`` spelled out in fresh letters, and the output."""
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(
            f"einsum equation {equation!r} names {len(terms)} operands, got {len(shapes)}"
        )
    fresh = sorted(set(_EINSUM_LETTERS) - set(equation))
    longest = 0
    if "..." in equation:
        for i, (term, shape) in enumerate(zip(terms, shapes)):
            if "..." in term:
                count = max(len(shape) - (len(term) - 3), 0)
                longest = max(longest, count)
                terms[i] = term.replace("...", "".join(fresh[len(fresh) - count :]) if count else "")
    ellipsis = "".join(fresh[len(fresh) - longest :]) if longest else ""
    if arrow:
        output = rhs.replace("...", ellipsis)
    else:
        joined = "".join(terms)
        singles = sorted(ch for ch in set(joined) if joined.count(ch) == 1 and ch not in ellipsis)
        output = ellipsis + "".join(singles)
    return terms, output


def _size(indices: Iterable[str], sizes: dict[str, int]) -> int:
    total = 1
    for ch in indices:
        total *= sizes[ch]
    return total


def _contract(positions: tuple, operands: list, output: set) -> tuple[list, set, set]:
    """Contract the operands at ``positions``: (operands left, with the result appended last;
    indices the contraction touches; indices it sums away)."""
    touched: set = set()
    kept = set(output)
    left = []
    for i, term in enumerate(operands):
        if i in positions:
            touched |= term
        else:
            left.append(term)
            kept |= term
    result = touched & kept
    left.append(result)
    return left, touched, touched - result


def _contraction_cost(touched: set, summed: set, n_terms: int, sizes: dict[str, int]) -> int:
    # numpy's estimate: every touched index combination, times (terms - 1), plus one for a sum
    return _size(touched, sizes) * (max(1, n_terms - 1) + (1 if summed else 0))


def _einsum_path_cost(
    operands: list, output: set, terms: list, output_term: str, sizes: dict[str, int]
) -> int:
    """The cost numpy's ``einsum_path(optimize="optimal")`` reports, minus its ``+ 1``."""
    n = len(operands)
    indices = set().union(*operands)
    if n <= 2 or indices == output:
        path = [tuple(range(n))]
    else:
        memory_limit = max(_size(t, sizes) for t in [*terms, output_term])
        path = _optimal_path(operands, output, sizes, memory_limit)
    cost = 0
    for positions in path:
        operands, touched, summed = _contract(positions, operands, output)
        cost += _contraction_cost(touched, summed, len(positions), sizes)
    return cost


def _optimal_path(operands: list, output: set, sizes: dict[str, int], memory_limit: int) -> list:
    """Exhaustive search over pairwise contractions, as numpy's "optimal" does: a contraction
    whose result exceeds ``memory_limit`` elements is not taken; the cheapest path wins (the
    first found among equals); if no pair fits, the rest is contracted at once."""
    candidates = [(0, [], operands)]
    n = len(operands)
    for step in range(n - 1):
        extended = []
        for cost, path, left in candidates:
            for pair in itertools.combinations(range(n - step), 2):
                after, touched, summed = _contract(pair, left, output)
                if _size(after[-1], sizes) > memory_limit:
                    continue
                extended.append(
                    (cost + _contraction_cost(touched, summed, 2, sizes), path + [pair], after)
                )
        if not extended:
            best = min(candidates, key=lambda c: c[0])[1]
            return best + [tuple(range(n - step))]
        candidates = extended
    return min(candidates, key=lambda c: c[0])[1]


# ---------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------


def _conv_macs(x_shape, w_shape, out_shape, transposed: bool) -> int:
    # fvcore: batch * prod(weight) * prod(spatial), spatial of the output for a convolution and
    # of the input for a transposed one; bias ignored.
    spatial = (x_shape if transposed else out_shape)[2:]
    return x_shape[0] * math.prod(w_shape) * math.prod(spatial)


@register_formula([aten.convolution, aten._convolution], FVCORE)
def _convolution(x, weight, bias, stride, padding, dilation, transposed, *args, out=None, **kwargs) -> int:
    return _conv_macs(x.shape, weight.shape, out.shape, bool(transposed))


@register_formula(aten.convolution_backward, FVCORE)
def _convolution_backward(grad_out, x, weight, *args, out=None, **kwargs) -> int:
    transposed = bool(_arg(args, kwargs, 4, "transposed"))
    mask = _arg(args, kwargs, 7, "output_mask")
    # grad_input and grad_weight each cost the forward convolution's multiply-adds
    forward = _conv_macs(x.shape, weight.shape, grad_out.shape, transposed)
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


@register_formula(aten.adaptive_avg_pool1d, FVCORE)
def _adaptive_avg_pool1d(*args, out=None, **kwargs) -> int:
    # fvcore has no handle for adaptive_avg_pool1d (it is a pool, not a matmul: no gap to
    # fill). A rule of its own keeps it from being charged as the adaptive_avg_pool2d it
    # decomposes into.
    return 0


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
    return _conv_macs(x.shape, weight.shape, out.shape, transposed=False)


def _attention_macs(q_shape, k_shape, v_shape) -> int:
    # q (..., Hq, L, E), k (..., Hk, S, E), v (..., Hk, S, Ev); grouped-query heads broadcast:
    # scores q @ k^T cost L*S*E and weights @ v cost L*S*Ev per query head.
    batch_heads = math.prod(q_shape[:-2])
    length, embed = q_shape[-2], q_shape[-1]
    return batch_heads * length * k_shape[-2] * (embed + v_shape[-1])


def _attention_backward_macs(q_shape, k_shape, v_shape) -> int:
    # as FlopCounterMode: the scores recomputed (L*S*E), grad of weights and of v (2*L*S*Ev),
    # grad of q and of k (2*L*S*E)
    batch_heads = math.prod(q_shape[:-2])
    length, embed = q_shape[-2], q_shape[-1]
    return batch_heads * length * k_shape[-2] * (3 * embed + 2 * v_shape[-1])


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
    return _attention_macs(q.shape, k.shape, v.shape)


@register_formula(_SDPA_BACKWARD, FVCORE)
def _sdpa_backward(grad_out, q, k, v, *args, out=None, **kwargs) -> int:
    return _attention_backward_macs(q.shape, k.shape, v.shape)


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
    return _attention_macs(_blhe(q.shape), _blhe(k.shape), _blhe(v.shape))


@register_formula(_ops("_efficient_attention_forward"), FVCORE)
def _efficient_attention_forward(q, k, v, bias=None, cu_q=None, cu_k=None, *args, out=None, **kwargs) -> int:
    _fixed_length(cu_q, cu_k, "_efficient_attention_forward")
    return _attention_macs(_blhe(q.shape), _blhe(k.shape), _blhe(v.shape))


@register_formula(_ops("_flash_attention_backward"), FVCORE)
def _flash_attention_backward(grad_out, q, k, v, *args, out=None, **kwargs) -> int:
    if q.dim() != 4:  # packed variable-length layout (total_tokens, heads, embed)
        _fixed_length(True, True, "_flash_attention_backward")
    return _attention_backward_macs(_blhe(q.shape), _blhe(k.shape), _blhe(v.shape))


@register_formula(_ops("_efficient_attention_backward"), FVCORE)
def _efficient_attention_backward(grad_out, q, k, v, *args, out=None, **kwargs) -> int:
    _fixed_length(_arg(args, kwargs, 2, "cu_seqlens_q"), _arg(args, kwargs, 3, "cu_seqlens_k"),
                  "_efficient_attention_backward")
    return _attention_backward_macs(_blhe(q.shape), _blhe(k.shape), _blhe(v.shape))


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
)
"""Operator names (as in ``by_operator()``) that fvcore has no handle for but that are counted
under ``convention="fvcore"`` because they are matmul-like work: fvcore's total lacks them."""


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
    **{f"aten.{p.__name__}": "scaled_dot_product_attention" for p in _SDPA_FORWARD},
}
"""Dispatched op -> the name fvcore's ``by_operator()`` gives the JIT node it comes from
(other aten ops keep their own name without the namespace)."""


# ---------------------------------------------------------------------------------------------
# everything else: uncounted under fvcore's rules
# ---------------------------------------------------------------------------------------------


def _fvcore_resolver(op: torch._ops.OpOverload) -> Any:
    # fvcore leaves every aten op without a handle uncounted; ops of other namespaces (custom
    # ops) need an fvcore formula of their own and are reported until they have one.
    if op.namespace == "aten":
        return ZERO
    return None


register_resolver(FVCORE, _fvcore_resolver)

"""Explicit zeros: ops that do no floating-point arithmetic, listed by name and reviewed.

Each group says why its ops cost 0 FLOPs. Nothing here is a default: an op missing from every
list and every formula family stays UNSUPPORTED and is reported (tests/test_coverage.py names
it). Names are aten base names; one entry covers the functional, in-place and ``out=``
overloads. The one rule by tag is ``torch.Tag.view_copy``: the ``*_copy`` twins of views
(``permute_copy``, ``expand_copy`` ...), which only copy elements.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._ops import OpOverload

from dispatchcount.formulas._helpers import base_name
from dispatchcount.registry import CONVENTIONS, ZERO, register_resolver, register_zero

__all__ = ["ZERO_GROUPS", "zero_names"]

ZERO_GROUPS: dict[str, tuple[str, ...]] = {
    # New tensors sharing the input's storage: only sizes, strides and offsets change.
    "views": (
        "alias", "as_strided", "detach", "diagonal", "expand", "permute", "select", "slice",
        "split", "split_with_sizes", "squeeze", "t", "transpose", "unbind", "unfold",
        "unsqueeze", "view", "view_as_complex", "view_as_real", "_reshape_alias",
        "_unsafe_view", "_conj", "_neg_view", "_indices", "_values", "indices", "values",
        "crow_indices", "col_indices", "ccol_indices", "row_indices", "_fw_primal",
        "_make_dual", "lift", "lift_fresh", "_lazy_clone", "slice_inverse",
        "_nested_view_from_buffer", "_nested_view_from_jagged", "_nested_get_values",
        "_sparse_broadcast_to", "_mkldnn_transpose", "_mkldnn_reshape",
        "_test_autograd_multiple_dispatch_view", "unsafe_split", "unsafe_split_with_sizes",
    ),
    # Element copies, layout/dtype/device conversions and rearrangements: data movement only.
    "copies": (
        "clone", "copy", "_copy_from", "_copy_from_and_resize", "_to_copy", "_to_dense",
        "_to_sparse", "_to_sparse_csr", "_to_sparse_csc", "_to_sparse_bsr", "_to_sparse_bsc",
        "_to_sparse_semi_structured", "to_mkldnn", "_pin_memory", "_reshape_copy",
        "narrow_copy", "cat", "stack", "_stack", "_chunk_cat", "block_diag", "repeat",
        "repeat_interleave", "flip", "roll", "rot90", "tril", "triu", "diag_embed",
        "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
        "replication_pad1d", "replication_pad2d", "replication_pad3d", "pixel_shuffle",
        "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "im2col", "complex", "upsample_nearest1d",
        "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
        "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "as_strided_scatter",
        "diagonal_scatter", "select_scatter", "slice_scatter", "select_backward",
        "slice_backward", "diagonal_backward", "lu_unpack", "_pack_padded_sequence",
        "_foreach_copy", "_foreach_clone", "copy_sparse_to_sparse", "sparse_mask",
        "_sparse_mask_projection", "_spdiags", "mkldnn_reorder_conv2d_weight",
        "mkldnn_reorder_conv3d_weight", "_cudnn_rnn_flatten_weight",
        "_convert_weight_to_int4pack", "_convert_weight_to_int4pack_for_cpu",
        "_dyn_quant_pack_4bit_weight", "_cslt_compress", "_sparse_semi_structured_tile",
        "_sparse_semi_structured_apply", "_sparse_semi_structured_apply_dense",
        "_sparse_sum_backward", "split_copy", "split_with_sizes_copy", "unbind_copy",
        "_nested_from_padded", "_nested_from_padded_and_nested_example",
        "_nested_from_padded_tensor", "to_padded_tensor", "_padded_dense_to_jagged_forward",
        "_jagged_to_padded_dense_forward", "_nested_tensor_from_mask",
        "_nested_tensor_from_mask_left_aligned", "_nested_tensor_from_tensor_list",
        "_nested_select_backward", "_nested_sum_backward", "_test_autograd_multiple_dispatch",
        "_test_functorch_fallback",
    ),
    # Selection by index or by a precomputed mask: elements are moved, never combined. (The
    # comparison that made a mask is counted where it ran.)
    "indexing": (
        "index", "_unsafe_index", "_unsafe_masked_index", "index_select", "gather", "take",
        "index_fill", "index_copy", "masked_fill", "masked_scatter", "masked_scatter_backward",
        "masked_select", "where", "embedding", "max_unpool2d", "max_unpool3d", "nonzero",
        "nonzero_static",
    ),
    # New tensors filled with constants, ranges or window tables: producing constants is not
    # compute on data (FlopCounterMode and fvcore count them as 0 too).
    "factories": (
        "empty", "empty_like", "empty_permuted", "empty_quantized", "empty_strided",
        "new_empty", "new_empty_strided", "new_full", "new_ones", "new_zeros", "full",
        "full_like", "ones", "ones_like", "zeros", "zeros_like", "zero", "fill",
        "scalar_tensor", "arange", "range", "linspace", "logspace", "eye", "tril_indices",
        "triu_indices", "fft_fftfreq", "fft_rfftfreq", "bartlett_window", "blackman_window",
        "hamming_window", "hann_window", "kaiser_window", "from_file",
        "_empty_affine_quantized", "_empty_per_channel_affine_quantized",
        "_efficientzerotensor", "_new_zeros_with_same_feature_meta", "_foreach_zero",
        "_nested_get_jagged_dummy", "_test_optional_intlist", "_test_optional_filled_intlist",
        "_test_optional_floatlist", "_test_parallel_materialize", "_test_warn_in_autograd",
        "_foobar",
    ),
    # Random number generation: drawing samples is not counted as FLOPs (the ops that then
    # use the samples arithmetically, e.g. dropout's multiply, are counted).
    "random": (
        "bernoulli", "binomial", "cauchy", "exponential", "geometric", "log_normal", "normal",
        "normal_functional", "poisson", "rand", "rand_like", "randint", "randint_like",
        "randn", "randn_like", "random", "randperm", "uniform", "multinomial",
        "_standard_gamma", "_sample_dirichlet", "_philox_key_split", "_philox_key_fold_in",
        "_philox_normal", "_philox_uniform", "_cudnn_init_dropout_state",
        "_fill_mem_eff_dropout_mask",
    ),
    # Metadata, storage management, assertions and queries: no element arithmetic.
    "metadata": (
        "_assert_async", "_assert_scalar", "_assert_tensor_metadata", "_functional_assert_async",
        "_functional_assert_scalar", "_functional_sym_constrain_range",
        "_functional_sym_constrain_range_for_size", "sym_constrain_range",
        "sym_constrain_range_for_size", "_make_dep_token", "_print", "record_stream",
        "is_coalesced", "is_pinned", "is_same_size", "is_set_to", "_has_same_storage_numel",
        "_dimI", "_dimV", "_nnz", "dense_dim", "sparse_dim", "q_per_channel_axis",
        "q_per_channel_scales", "q_per_channel_zero_points", "q_scale", "q_zero_point",
        "qscheme", "_local_scalar_dense", "_nested_tensor_size", "_nested_tensor_strides",
        "_nested_tensor_storage_offsets", "_nested_compute_contiguous_strides_offsets",
        "_nested_get_lengths", "_nested_get_max_seqlen", "_nested_get_min_seqlen",
        "_nested_get_offsets", "_nested_get_ragged_idx", "_linalg_check_errors",
        "_use_cudnn_ctc_loss", "_use_miopen_ctc_loss", "_fused_sdp_choice", "resize",
        "resize_as", "resize_as_sparse", "sparse_resize", "sparse_resize_and_clear",
        "_resize_output", "set", "_coalesced", "sparse_coo_tensor", "sparse_compressed_tensor",
        "_sparse_coo_tensor_with_dims", "_sparse_coo_tensor_with_dims_and_tensors",
        "_sparse_compressed_tensor_with_dims", "_validate_compressed_sparse_indices",
        "_make_per_tensor_quantized_tensor", "_make_per_channel_quantized_tensor",
        "_cslt_sparse_mm_search",
    ),
    # Integer, bit and boolean logic: FLOPs are floating-point operations.
    "integer": (
        "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_left_shift",
        "bitwise_right_shift", "__lshift__", "__rshift__", "__ilshift__", "__irshift__",
        "gcd", "lcm", "logical_and", "logical_or", "logical_xor", "logical_not",
        "_is_all_true", "_is_any_true", "int_repr", "hash_tensor",
        "_convert_indices_from_coo_to_csr", "_convert_indices_from_csr_to_coo",
        "quantized_max_pool1d", "quantized_max_pool2d", "quantized_max_pool3d",
        "quantized_batch_norm",
    ),
}


def zero_names() -> frozenset[str]:
    """Every base name declared zero above."""
    return frozenset(name for group in ZERO_GROUPS.values() for name in group)


def _zero_by_name(op: OpOverload) -> Any:
    # Asked after formulas and decomposition: a CompositeImplicit overload of a listed op
    # still decomposes, so the pieces it runs are counted.
    if op.namespace == "aten" and base_name(op) in _NAMES:
        return ZERO
    # ``*_copy`` twins of views (torch.Tag.view_copy): a copy of the view's elements.
    if torch.Tag.view_copy in op.tags:
        return ZERO
    return None


_NAMES = zero_names()
for _convention in CONVENTIONS.values():
    if _convention.counts_flops:  # no floating-point arithmetic: zero in every FLOP convention
        register_resolver(_convention.name, _zero_by_name, family="the reviewed explicit zeros (dispatchcount.formulas.zero)")

# native_channel_shuffle has a CPU kernel besides its CompositeImplicit one: an explicit zero
# keeps the counter from running the decomposition instead of the kernel.
register_zero(torch.ops.aten.native_channel_shuffle.default)

# Outside aten: the profiler's record_function markers (every ``optimizer.step()`` runs them).
register_zero(
    torch.ops.profiler._record_function_enter,
    torch.ops.profiler._record_function_enter_new,
    torch.ops.profiler._record_function_exit,
)

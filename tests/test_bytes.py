"""Bytes moved and FLOPs by dtype (metrics=("flops", "bytes")): every figure derived by hand
from the unfused convention of docs/conventions.md, "Bytes moved"."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel

from dispatchcount import FlopMode, FormulaError
from dispatchcount.kernels import selective_scan
from dispatchcount.traffic import register_bytes, tensor_bytes
from examples.llama import llama_tiny

F32, BF16, I64 = 4, 2, 8  # bytes per element


def measured(fn, **kwargs):
    with FlopMode(metrics=("flops", "bytes"), **kwargs) as fm:
        fn()
    assert fm.unsupported_ops() == {}
    return fm


def read_written(fm, operator):
    read = fm.by_operator(metric="bytes_read").get(operator, 0)
    written = fm.by_operator(metric="bytes_written").get(operator, 0)
    return read, written


# -- linear layers and the dtype split --------------------------------------------------------


def test_linear_fp32_reads_input_weight_bias_and_writes_the_output():
    m, k, n = 5, 8, 16
    lin, x = nn.Linear(k, n), torch.randn(m, k)
    fm = measured(lambda: lin(x))
    # addmm(bias, x, weight.t()): the transpose is a view (0 bytes, not even recorded).
    assert read_written(fm, "aten.addmm") == ((n + m * k + k * n) * F32, m * n * F32)
    assert fm.by_operator(metric="bytes") == {"aten.addmm": (n + m * k + k * n + m * n) * F32}
    assert fm.by_dtype() == {"float32": 2 * m * n * k}


def test_linear_under_autocast_bf16_casts_then_multiplies_in_bf16():
    m, k, n = 4, 8, 16
    lin, x = nn.Linear(k, n), torch.randn(m, k)
    with FlopMode(metrics=("flops", "bytes")) as fm, torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    # Three casts (x, weight, bias): each reads fp32 and writes bf16.
    casts = (m * k + n * k + n) * (F32 + BF16)
    assert fm.by_operator(metric="bytes")["aten._to_copy"] == casts
    assert read_written(fm, "aten.addmm") == ((n + m * k + k * n) * BF16, m * n * BF16)
    assert fm.by_dtype() == {"bfloat16": 2 * m * n * k}  # the casts are 0 FLOPs


def test_linear_forward_and_backward_of_a_real_gradient():
    m, k, n = 3, 4, 6
    lin, x, g = nn.Linear(k, n), torch.randn(m, k, requires_grad=True), torch.randn(m, n)
    fm = measured(lambda: lin(x).backward(g))
    # Backward: grad_x = mm(g, W) (m,n)@(n,k); grad_W^T = mm(x^T, g) (k,m)@(m,n) (the
    # transposes are views); grad_b = sum(g, 0).
    mm = (m * n + n * k + m * k) + (k * m + m * n + k * n)
    assert fm.by_operator("backward", metric="bytes")["aten.mm"] == mm * F32
    assert read_written(fm, "aten.sum") == (m * n * F32, n * F32)


# -- convolution, elementwise, in-place, views, cat ------------------------------------------


def test_conv2d():
    conv, x = nn.Conv2d(3, 8, 3), torch.randn(2, 3, 16, 16)
    fm = measured(lambda: conv(x))
    assert read_written(fm, "aten.convolution") == (
        (2 * 3 * 16 * 16 + 8 * 3 * 3 * 3 + 8) * F32, 2 * 8 * 14 * 14 * F32)


def test_broadcast_operand_is_read_once_per_element():
    x, b = torch.randn(32, 16), torch.randn(16)
    implicit = measured(lambda: x + b)
    explicit = measured(lambda: x + b.expand(32, 16))  # stride 0: 16 distinct elements
    for fm in (implicit, explicit):
        assert read_written(fm, "aten.add") == ((32 * 16 + 16) * F32, 32 * 16 * F32)
    squared = measured(lambda: x * x)  # one tensor, passed twice: read once
    assert read_written(squared, "aten.mul") == (32 * 16 * F32, 32 * 16 * F32)
    assert tensor_bytes(torch.randn(3, 1, 5).expand(3, 4, 5)) == 15 * F32


def test_in_place_and_out_variants_write_the_mutated_tensor():
    n = 64
    x, y, out = torch.randn(n), torch.randn(n), torch.empty(n)
    fm = measured(lambda: (x.add_(y), x.mul_(2), x.copy_(y), x.zero_(), torch.add(x, y, out=out)))
    assert read_written(fm, "aten.add_") == (2 * n * F32, n * F32)  # reads x and y, writes x
    assert read_written(fm, "aten.mul_") == (n * F32, n * F32)
    assert read_written(fm, "aten.copy_") == (n * F32, n * F32)  # overwrites: x is not read
    assert read_written(fm, "aten.zero_") == (0, n * F32)
    assert read_written(fm, "aten.add") == (2 * n * F32, n * F32)  # out=: read a, b; write out


def test_views_move_nothing_and_are_not_recorded():
    x = torch.randn(4, 6)
    fm = measured(lambda: (x.view(24), x.t(), x[1], x.transpose(0, 1), x.unsqueeze(0), x.expand(2, 4, 6),
                           x.split(2), x.detach(), x.reshape(6, 4)))
    assert fm.total(metric="bytes") == 0
    assert fm.by_operator(metric="calls") == {}


def test_cat_reads_every_input_and_writes_the_result():
    a, b = torch.randn(3, 5), torch.randn(7, 5)
    fm = measured(lambda: torch.cat([a, b]))
    assert read_written(fm, "aten.cat") == (10 * 5 * F32, 10 * 5 * F32)


def test_clone_moves_bytes_though_it_costs_no_flops():
    x = torch.randn(10, 10)
    fm = measured(lambda: x.clone())
    assert fm.total() == 0 and read_written(fm, "aten.clone") == (100 * F32, 100 * F32)


# -- gathers and scatters --------------------------------------------------------------------


def test_embedding_reads_the_index_and_the_gathered_rows_only():
    vocab, d, n = 1000, 16, 12
    emb, idx = nn.Embedding(vocab, d), torch.randint(0, vocab, (3, 4))
    grad = torch.randn(3, 4, d)
    fm = measured(lambda: emb(idx).backward(grad))
    assert read_written(fm, "aten.embedding") == (n * I64 + n * d * F32, n * d * F32)
    # The backward reads the gradient and the index, and writes the full weight gradient.
    assert read_written(fm, "aten.embedding_dense_backward") == (n * d * F32 + n * I64, vocab * d * F32)
    assert fm.by_operator(metric="bytes").keys() == {"aten.embedding", "aten.embedding_dense_backward"}


def test_index_select_and_in_place_index_put_touch_the_indexed_elements():
    x, idx, values = torch.randn(100, 8), torch.tensor([3, 7, 11]), torch.randn(3, 8)
    fm = measured(lambda: (x.index_select(0, idx), x.index_put_((idx,), values),
                           x.index_put_((idx,), values, accumulate=True)))
    assert read_written(fm, "aten.index_select") == (3 * I64 + 3 * 8 * F32, 3 * 8 * F32)
    # Two index_put_ calls: read index + values each (+ the 24 updated elements when
    # accumulating), write the 24 updated elements each, not the whole 800-element tensor.
    assert read_written(fm, "aten.index_put_") == (2 * (3 * I64 + 24 * F32) + 24 * F32, 2 * 24 * F32)


# -- attention and the selective scan ----------------------------------------------------------


def test_sdpa_reads_q_k_v_and_writes_its_output_whatever_the_backend():
    # scaled_dot_product_attention is charged as one call (dispatchcount.sdpa), on every backend:
    # the fused kernel's traffic, q, k, v read once and the output written once.
    b, h, s, d = 2, 4, 16, 8
    q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
    fm = measured(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert read_written(fm, "aten.scaled_dot_product_attention") == (3 * b * h * s * d * F32, b * h * s * d * F32)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        math = measured(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert math.by_operator(metric="bytes") == fm.by_operator(metric="bytes")


def test_selective_scan_reads_its_inputs_once_and_writes_its_outputs_once():
    batch, dim, length, n = 2, 4, 32, 8
    u, delta, z = (torch.randn(batch, dim, length) for _ in range(3))
    A, B, C = -torch.rand(dim, n), torch.randn(batch, n, length), torch.randn(batch, n, length)
    D, bias = torch.randn(dim), torch.randn(dim)
    with torch.no_grad():
        fm = measured(lambda: selective_scan(u, delta, A, B, C, D, z, bias, True))
    read = (3 * batch * dim * length + dim * n + 2 * batch * n * length + 2 * dim) * F32
    written = (batch * dim * length + batch * dim * n) * F32  # out, last state; no saved states
    assert read_written(fm, "dispatchcount.selective_scan") == (read, written)
    assert fm.by_operator(metric="bytes").keys() == {"dispatchcount.selective_scan"}


# -- the same bytes on meta, CPU and fake tensors; FLOPs unchanged -------------------------------


def _llama_step(device):
    torch.manual_seed(0)
    with torch.device(device):
        model, tokens = llama_tiny(), torch.zeros(2, 16, dtype=torch.long)
    with sdpa_kernel(SDPBackend.MATH), FlopMode(model, metrics=("flops", "bytes")) as fm:
        model(tokens).sum().backward()
    return fm


def test_meta_gives_the_same_bytes_as_cpu():
    cpu, meta = _llama_step("cpu"), _llama_step("meta")
    assert cpu.total(metric="bytes") > 0
    for metric in ("bytes_read", "bytes_written"):
        assert meta.by_module(metric=metric) == cpu.by_module(metric=metric)
        assert meta.by_operator(metric=metric) == cpu.by_operator(metric=metric)


def test_fake_tensors_give_the_same_bytes_as_real_ones():
    lin, x = nn.Linear(8, 16), torch.randn(4, 8)
    real = measured(lambda: F.gelu(lin(x)))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_x = mode.from_tensor(x)
        fake = measured(lambda: F.gelu(lin(fake_x)))
    assert fake.by_operator(metric="bytes") == real.by_operator(metric="bytes")


def test_flops_only_default_counts_exactly_as_with_bytes():
    model, tokens = llama_tiny(), torch.zeros(2, 16, dtype=torch.long)

    def step(**kwargs):
        model.zero_grad(set_to_none=True)  # no gradient accumulation (add_) in later steps
        with FlopMode(model, **kwargs) as fm:
            model(tokens).sum().backward()
        return fm

    default, flops_only, with_bytes = step(), step(metrics=("flops",)), step(metrics=("flops", "bytes"))
    for fm in (flops_only, with_bytes):
        assert fm.by_module() == default.by_module()
        assert fm.by_operator() == default.by_operator()
        assert fm.by_dtype() == default.by_dtype()
    assert default.counts().metrics == ("flops",)
    from dispatchcount.records import BYTES_READ, BYTES_WRITTEN, SECONDS

    assert all(row.values[BYTES_READ] == row.values[BYTES_WRITTEN] == row.values[SECONDS] == 0
               for row in default.counts().rows)
    with pytest.raises(ValueError, match=r"metrics=\(\.\.\., 'bytes'\)"):
        default.total(metric="bytes")


def test_integer_ops_have_no_flops_and_comparisons_count_in_the_operand_dtype():
    i, x = torch.arange(10), torch.randn(10, dtype=torch.float64)
    fm = measured(lambda: (i + i, x < 0, x.argmax()))
    assert fm.by_dtype() == {"float64": 10 + 10}  # lt and argmax: 1 per element, not "bool"/"int64"
    assert read_written(fm, "aten.add") == (10 * I64, 10 * I64)  # integer ops still move bytes


# -- FLOPs by dtype: fp8 and TF32 products ---------------------------------------------------------


def test_scaled_mm_flops_are_fp8():
    m, k, n = 16, 32, 64
    a = torch.empty(m, k, device="meta", dtype=torch.float8_e4m3fn)
    b = torch.empty(n, k, device="meta", dtype=torch.float8_e4m3fn).t()
    scale_a, scale_b = torch.ones((), device="meta"), torch.ones((), device="meta")
    fm = measured(lambda: torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=torch.bfloat16))
    assert fm.by_dtype() == {"float8_e4m3fn": 2 * m * n * k}
    assert read_written(fm, "aten._scaled_mm") == ((m * k + k * n) * 1 + 2 * F32, m * n * BF16)


@pytest.fixture
def tf32_flags():
    """Set cuBLAS's and cuDNN's TF32 flags (what ``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32`` set; torch's test utilities lock the latter), then restore."""
    saved = torch._C._get_cublas_allow_tf32(), torch._C._get_cudnn_allow_tf32()

    def set_flags(allowed: bool) -> None:
        torch._C._set_cublas_allow_tf32(allowed)
        torch._C._set_cudnn_allow_tf32(allowed)

    yield set_flags
    torch._C._set_cublas_allow_tf32(saved[0])
    torch._C._set_cudnn_allow_tf32(saved[1])


def test_fp32_products_on_cuda_are_tf32_when_allowed(tf32_flags):
    with FakeTensorMode():  # fake CUDA tensors: no GPU needed
        a, b = torch.empty(4, 8, device="cuda"), torch.empty(8, 16, device="cuda")
        x, w = torch.empty(1, 3, 8, 8, device="cuda"), torch.empty(4, 3, 3, 3, device="cuda")
        tf32_flags(True)
        allowed = measured(lambda: (a @ b, F.conv2d(x, w), a.exp()))
        tf32_flags(False)
        ieee = measured(lambda: (a @ b, F.conv2d(x, w)))
    conv = 2 * 4 * 6 * 6 * 3 * 3 * 3
    assert allowed.by_dtype() == {"tf32": 2 * 4 * 16 * 8 + conv, "float32": 4 * 8}  # exp stays fp32
    assert ieee.by_dtype() == {"float32": 2 * 4 * 16 * 8 + conv}


# -- custom rules and failures --------------------------------------------------------------------


@torch.library.custom_op("bytestest::pack", mutates_args=())
def _pack(x: torch.Tensor) -> torch.Tensor:
    return x[::2].clone()


@_pack.register_fake
def _(x):
    return x.new_empty((x.shape[0] + 1) // 2, *x.shape[1:])


@torch.library.custom_op("bytestest::broken", mutates_args=())
def _broken(x: torch.Tensor) -> torch.Tensor:
    return x + 1


@_broken.register_fake
def _(x):
    return torch.empty_like(x)


def test_custom_op_default_and_registered_rules():
    x = torch.randn(10, 4)
    fm = measured(lambda: torch.ops.bytestest.pack(x), formulas={torch.ops.bytestest.pack: None})
    assert read_written(fm, "bytestest.pack") == (40 * F32, 20 * F32)  # default: inputs and outputs once

    @register_bytes(torch.ops.bytestest.pack)
    def _(x, *, out=None):
        return out.nbytes, out.nbytes  # a strided kernel reads only the kept rows

    fm = measured(lambda: torch.ops.bytestest.pack(x), formulas={torch.ops.bytestest.pack: None})
    assert read_written(fm, "bytestest.pack") == (20 * F32, 20 * F32)


def test_a_failing_bytes_rule_never_breaks_the_run_unless_strict():
    @register_bytes(torch.ops.bytestest.broken)
    def _(x, *, out=None):
        raise RuntimeError("no idea")

    x = torch.randn(3)
    formulas = {torch.ops.bytestest.broken: None}
    with pytest.warns(UserWarning, match="bytestest.broken"):
        with FlopMode(metrics=("flops", "bytes"), formulas=formulas) as fm:
            y = torch.ops.bytestest.broken(x)
    assert torch.equal(y, x + 1)
    assert fm.formula_errors() == {"bytestest.broken": "bytes rule: RuntimeError: no idea"}
    with pytest.raises(FormulaError, match="bytes rule"):
        with FlopMode(metrics=("flops", "bytes"), formulas=formulas, strict=True):
            torch.ops.bytestest.broken(x)


def test_sparse_results_count_their_values_and_indices():
    x = torch.eye(4)
    fm = measured(lambda: x.to_sparse())
    # 4 non-zeros: values 4 x fp32, indices 2 x 4 x int64; the dense input is read whole.
    assert read_written(fm, "aten._to_sparse") == (16 * F32, 4 * F32 + 8 * I64)

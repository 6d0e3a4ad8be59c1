"""Matrix products beyond matmul.py, sparse, quantization and torch_nn's fused linear
cross-entropy, worked out by hand."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dispatchcount.formulas.products import transformer_encoder_layer_flops
from dispatchcount.registry import resolve
from counting import counted

aten = torch.ops.aten



def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


def test_in_place_and_out_spellings_of_products():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    assert counted(lambda: torch.zeros(3, 5).addmm_(a, b)) == {"aten.addmm_": 2 * 3 * 4 * 5}
    w = torch.randn(5, 4)
    assert counted(lambda: aten.linear.out(a, w, None, out=torch.empty(3, 5))) == {"aten.linear": 120}


def test_backward_kernels():
    # linear_backward: grad_input and grad_weight (3*5*4 multiply-adds each), grad_bias (15 adds)
    rule = resolve(aten.linear_backward.default)
    assert rule(meta(3, 4), meta(3, 5), meta(5, 4), [True, True, True], out=None) == 2 * 120 + 15
    assert rule(meta(3, 4), meta(3, 5), meta(5, 4), [True, False, False], out=None) == 120
    # matmul_backward: the forward's 15 outputs x K=4 multiply-adds, once per gradient
    rule = resolve(aten.matmul_backward.default)
    assert rule(meta(3, 5), meta(3, 4), meta(4, 5), [True, True], out=None) == 2 * 2 * 60


def test_grouped_and_weight_quantized_products():
    # MoE layout: 6 tokens x K=4 against 2 experts' (4, 5): out (6, 5), 4 multiply-adds each
    rule = resolve(aten._grouped_mm.default)
    out = meta(6, 5, dtype=torch.bfloat16)
    assert rule(meta(6, 4, dtype=torch.bfloat16), meta(2, 4, 5, dtype=torch.bfloat16), out=out) == 2 * 30 * 4
    # float activations x int8 weights: floating-point multiply-adds after dequantization
    rule = resolve(aten._weight_int8pack_mm.default)
    assert rule(meta(3, 4), meta(5, 4, dtype=torch.int8), meta(5), out=meta(3, 5)) == 2 * 15 * 4


def test_transformer_encoder_fast_path():
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=True, dropout=0.0).eval()
    # B=2, T=3 tokens of d=4, 2 heads, FFN 8, relu, counted as the slow path would be:
    projections = 2 * 6 * 4 * 12 + 2 * 6 * 4 * 4  # qkv and out projections (addmm/mm)
    in_bias = 6 * 12  # the slow path's (T, B, d) view is strided: the qkv bias is its own add
    scores = 2 * 2 * 3 * 3
    attention = 2 * scores * (2 + 2) + 6 * scores  # Q K^T and P V over 2 x 2 heads of dim 2; softmax
    ffn = 2 * 6 * 4 * 8 + 6 * 8 + 2 * 6 * 8 * 4  # in, relu, out (biases folded into addmm)
    norms = 2 * (6 * 24 + 4 * 6 + 2 * 24)  # two layer norms over 6 rows of 4, with affine
    residual = 2 * 24
    expected = projections + in_bias + attention + ffn + norms + residual
    assert transformer_encoder_layer_flops(2, 3, 4, 2, 8, False) == expected
    with torch.no_grad():
        assert counted(lambda: layer(torch.randn(2, 3, 4))) == {"aten._transformer_encoder_layer_fwd": expected}


def test_sparse_products_reductions_softmax():
    dense = torch.zeros(4, 5)
    for i, j in ((0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 4)):
        dense[i, j] = i + j + 1.0
    sparse = dense.to_sparse()  # 6 stored values
    # one multiply-add per stored value and dense column: 2 * 6 * 3
    assert counted(lambda: torch.sparse.mm(sparse, torch.randn(5, 3))) == {"aten._sparse_addmm": 36}
    assert counted(lambda: torch.sparse.softmax(sparse, 1)) == {"aten._sparse_softmax": 5 * 6}


@pytest.mark.parametrize("layout", ["coo", "csr", "csc", "bsr"])
def test_sparse_operands_of_dense_products_are_charged_by_stored_values(layout):
    # A 12.5%-dense 8 x 8 matrix: 8 stored values at (i, 3i mod 8). BSR with 2 x 2 blocks: the
    # 8 values fall in 8 different blocks (row block i // 2, column block 3i mod 8 // 2), which
    # store 4 values each, zeros included: 32.
    dense = torch.zeros(8, 8)
    for i in range(8):
        dense[i, (3 * i) % 8] = i + 1.0
    sparse = {"coo": dense.to_sparse, "csr": dense.to_sparse_csr, "csc": dense.to_sparse_csc,
              "bsr": lambda: dense.to_sparse_bsr((2, 2))}[layout]()
    stored = 32 if layout == "bsr" else 8
    if layout == "bsr":
        assert sparse.values().numel() == stored
    x = torch.randn(8, 5)
    expected = 2 * stored * 5  # one multiply-add per stored value and dense column
    assert counted(lambda: sparse @ x) == {"aten.mm": expected}
    assert counted(lambda: torch.mm(sparse, x)) == {"aten.mm": expected}
    if layout != "bsr":  # addmm of a BSR matrix has no CPU kernel
        assert counted(lambda: torch.addmm(torch.zeros(8, 5), sparse, x)) == {"aten.addmm": expected}
    # F.linear with a sparse weight (out 8, in 8) on 3 rows: dense x sparse^T, each stored
    # value meets the 3 rows.
    rows = torch.randn(3, 8)
    if layout in ("coo",):
        return  # addmm(dense, sparse COO^T) has no CPU kernel (PyTorch raises, as without the counter)
    assert counted(lambda: F.linear(rows, sparse, torch.zeros(8))) == {"aten.addmm": 2 * stored * 3}
    assert counted(lambda: F.linear(rows, sparse)) == {"aten.mm": 2 * stored * 3}
    # The dense cost would have been 2 * 8 * 8 * 5 = 640, 8x (2x for BSR) more.
    assert expected * (64 // stored) == 2 * 8 * 8 * 5


def test_sparse_matrix_vector_and_batched_products():
    dense = torch.zeros(6, 4)
    dense[0, 1], dense[2, 2], dense[5, 0] = 1.0, 2.0, 3.0
    sparse = dense.to_sparse()
    assert counted(lambda: torch.mv(sparse, torch.randn(4))) == {"aten.mv": 2 * 3}
    batch = torch.stack([sparse, sparse])  # 6 stored values over the batch
    assert counted(lambda: torch.bmm(batch, torch.randn(2, 4, 7))) == {"aten.bmm": 2 * 6 * 7}
    # torch.sparse.mm and the plain product agree.
    x = torch.randn(4, 7)
    assert sum(counted(lambda: torch.sparse.mm(sparse, x)).values()) == sum(counted(lambda: sparse @ x).values())


def test_quantization_arithmetic():
    x = torch.randn(3, 4)
    # x / scale + zero_point, round, clamp (2): 5 per element
    assert counted(lambda: torch.quantize_per_tensor(x, 0.1, 0, torch.qint8)) == {"aten.quantize_per_tensor": 60}
    q = torch.quantize_per_tensor(x, 0.1, 0, torch.qint8)
    assert counted(lambda: q.dequantize()) == {"aten.dequantize": 24}  # (q - zp) * scale
    assert counted(lambda: torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)) == {
        "aten.fake_quantize_per_tensor_affine_cachemask": 7 * 12
    }


def test_fused_linear_cross_entropy():
    options = pytest.importorskip("torch.nn.modules.linear_cross_entropy_options")
    x = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(7, 4, requires_grad=True)
    target = torch.randint(0, 7, (6,))
    logits = 2 * 6 * 4 * 7  # N=6 rows, D=4, C=7
    cross_entropy = (5 * 42 + 6) + (6 + 6 + 1 + 6)  # log_softmax; negate, sum, divide, weights
    gradients = (2 * 42 + 6) + 2 * logits  # softmax - onehot, scale; grad_input, grad_weight
    forward = counted(lambda: F.linear_cross_entropy(x, w, target, options=options.LinearCrossEntropyOptions()))
    assert forward == {"torch_nn._linear_cross_entropy_batch_chunked": logits + cross_entropy + gradients}

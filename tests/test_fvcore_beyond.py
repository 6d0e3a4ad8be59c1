"""Matmul-like work fvcore has no handle for is counted under convention="fvcore" (multiply-adds)
and listed by beyond_fvcore(), never a silent 0: low-precision, grouped, packed and sparse GEMMs,
addr, recurrent layers, and attention when SDPA runs its math path.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dispatchcount import FlopMode
from dispatchcount.fvcore import FlopCountAnalysis
from dispatchcount.fvcore.rules import uncounted
from dispatchcount.registry import convention
from fvcore_reference import fvcore_nn, quiet  # noqa: F401 (quiet: an autouse fixture)


aten = torch.ops.aten


def counted(fn, *args, convention_name: str = "fvcore") -> FlopMode:
    with FlopMode(convention=convention_name) as fm:
        fn(*args)
    assert fm.unsupported_ops() == {}
    return fm


M, K, N = 32, 64, 16
MNK = M * N * K  # 32768 multiply-adds


def _int8(*shape, device):
    return torch.randint(-8, 8, shape, dtype=torch.int8, device=device)


def _fp8(*shape, device):
    return torch.randn(*shape, device=device).to(torch.float8_e4m3fn)


OFFSETS = [8, 16, 24, 32]  # 4 groups of 8 rows

# (op name, device it runs on here, call(device), multiply-adds)
GEMMS = [
    ("_int_mm", "cpu", lambda d: aten._int_mm(_int8(M, K, device=d), _int8(K, N, device=d)), MNK),
    ("_scaled_mm", "cpu", lambda d: aten._scaled_mm(
        _fp8(M, K, device=d), _fp8(N, K, device=d).t(), torch.tensor(1.0, device=d), torch.tensor(1.0, device=d),
        out_dtype=torch.bfloat16), MNK),
    # 2-D activations x a (groups, K, N) weight: each row meets one group's K x N
    ("_grouped_mm", "cpu", lambda d: aten._grouped_mm(
        torch.randn(M, K, device=d, dtype=torch.bfloat16), torch.randn(4, K, N, device=d, dtype=torch.bfloat16),
        torch.tensor(OFFSETS, dtype=torch.int32, device=d)), MNK),
    ("_scaled_grouped_mm", "meta", lambda d: aten._scaled_grouped_mm(
        _fp8(M, K, device=d), _fp8(4, N, K, device=d).transpose(-2, -1), torch.ones(M, device=d),
        torch.ones(4, N, device=d), offs=torch.tensor(OFFSETS, dtype=torch.int32, device=d),
        out_dtype=torch.bfloat16), MNK),
    ("_weight_int8pack_mm", "cpu", lambda d: aten._weight_int8pack_mm(
        torch.randn(M, K, device=d), _int8(N, K, device=d), torch.randn(N, device=d)), MNK),
    ("_weight_int4pack_mm_for_cpu", "cpu", lambda d: aten._weight_int4pack_mm_for_cpu(
        torch.randn(M, K, device=d, dtype=torch.bfloat16),
        aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (N, K), dtype=torch.int32, device=d), 8),
        32, torch.randn(K // 32, N, 2, device=d, dtype=torch.bfloat16)), MNK),
    ("_dyn_quant_matmul_4bit", "cpu", lambda d: aten._dyn_quant_matmul_4bit(
        torch.randn(M, K, device=d),
        aten._dyn_quant_pack_4bit_weight(torch.randint(0, 16, (N, K // 2), dtype=torch.uint8, device=d),
                                         torch.randn(N, K // 32, device=d), None, 32, K, N),
        32, K, N), MNK),
    # outer-product update: one multiply-add per output element
    ("addr", "cpu", lambda d: torch.addr(torch.zeros(M, N, device=d), torch.randn(M, device=d),
                                         torch.randn(N, device=d)), M * N),
    # 2:4 sparsity: half of the sparse operand is stored and multiplied
    ("_sparse_semi_structured_mm", "meta", lambda d: aten._sparse_semi_structured_mm(
        torch.randn(M, K // 2, device=d, dtype=torch.half), torch.zeros(M, K // 16, dtype=torch.int16, device=d),
        torch.randn(K, N, device=d, dtype=torch.half)), MNK // 2),
    ("_sparse_semi_structured_linear", "meta", lambda d: aten._sparse_semi_structured_linear(
        torch.randn(M, K, device=d, dtype=torch.half), torch.randn(N, K // 2, device=d, dtype=torch.half),
        torch.zeros(N, K // 16, dtype=torch.int16, device=d)), MNK // 2),
]


@pytest.mark.parametrize("name,device,call,macs", GEMMS, ids=[g[0] for g in GEMMS])
def test_gemms_fvcore_has_no_handle_for_are_counted_and_listed(name, device, call, macs):
    if not hasattr(aten, name):
        pytest.skip(f"aten.{name} is not in this PyTorch build")
    fm = counted(call, device)
    assert fm.by_operator() == {f"aten.{name}": macs}
    assert fm.beyond_fvcore() == fm.by_operator()
    # the same count on meta tensors
    assert counted(call, "meta").total() == macs


def test_cusparselt_gemm_is_half_the_flop_conventions_dense_count():
    def call():
        aten._cslt_sparse_mm(torch.randn(M * K, device="meta", dtype=torch.half),
                             torch.randn(K, N, device="meta", dtype=torch.half))

    fvcore_count, flop_count = counted(call), counted(call, convention_name="flop")
    assert fvcore_count.beyond_fvcore() == fvcore_count.by_operator()
    assert 2 * fvcore_count.total() == flop_count.total() > 0  # 2 FLOPs per multiply-add


# The flop convention's product families against the fvcore convention: no product it counts
# may fall to fvcore's default (uncounted). Not products, so uncounted in both tools' sense:
NOT_PRODUCTS = {
    "_thnn_fused_lstm_cell", "_thnn_fused_lstm_cell_backward_impl", "_thnn_fused_gru_cell",
    "_thnn_fused_gru_cell_backward",  # the gates' elementwise arithmetic; their matmuls are counted
    "quantized_lstm", "quantized_gru",  # int8 GEMMs on opaque packed weights: no shapes to read
    "_transform_bias_rescale_qkv",  # a bias add and a scale
    "_coalesce", "_sparse_sum", "_sparse_csr_sum", "_sparse_csr_prod", "_sparse_softmax",
    "_sparse_log_softmax", "_sparse_softmax_backward_data", "_sparse_log_softmax_backward_data", "_spsolve",
}


def _product_names() -> set[str]:
    """Base names of the aten ops the flop convention counts as products: its family tables
    (products.py, rnn.py, sparse.py) and the formulas matmul.py, conv.py, attention.py register."""
    names: set[str] = set()
    for family in ("products", "rnn", "sparse"):
        names |= set(importlib.import_module(f"dispatchcount.formulas.{family}").FAMILY)
    flop_rules = convention("flop").load()
    for op, formula in flop_rules.formulas.items():
        module = getattr(formula, "__module__", "").rsplit(".", 1)[-1]
        if module in ("matmul", "conv", "attention", "products") and str(op).startswith("aten."):
            names.add(str(op).split(".")[1])
    return names - NOT_PRODUCTS


def test_no_product_of_the_flop_convention_is_a_silent_zero_under_fvcore():
    fvcore_rules = convention("fvcore").load()
    silent, checked = set(), 0
    for name in _product_names():
        packet = getattr(aten, name, None)
        if packet is None:
            continue
        for overload in packet.overloads():
            checked += 1
            if fvcore_rules.resolve(getattr(packet, overload)) is uncounted:
                silent.add(f"aten.{name}.{overload}")
    assert checked > 100
    assert silent == set()


# -- recurrent layers -------------------------------------------------------------------------


def lstm_macs(rows: int, layers: list[tuple[int, int]], gates: int, hidden: int, directions: int,
              proj: int = 0) -> int:
    """rows x (W_ih + W_hh [+ W_hr]) elements, per layer (input size, recurrent size) and direction."""
    total = 0
    for in_size, rec_size in layers:
        total += directions * rows * (gates * hidden * in_size + gates * hidden * rec_size + proj * hidden)
    return total


T, B, I, H = 5, 3, 8, 16
RNNS = {
    # two layers, both directions: layer 1 reads both directions of layer 0 (2H)
    "lstm": (lambda: nn.LSTM(I, H, num_layers=2, bidirectional=True), lstm_macs(T * B, [(I, H), (2 * H, H)], 4, H, 2)),
    "lstm_proj": (lambda: nn.LSTM(I, H, proj_size=4), lstm_macs(T * B, [(I, 4)], 4, H, 1, proj=4)),
    "gru": (lambda: nn.GRU(I, H, num_layers=2), lstm_macs(T * B, [(I, H), (H, H)], 3, H, 1)),
    "rnn_tanh": (lambda: nn.RNN(I, H, bidirectional=True), lstm_macs(T * B, [(I, H)], 1, H, 2)),
    "rnn_relu": (lambda: nn.RNN(I, H, nonlinearity="relu"), lstm_macs(T * B, [(I, H)], 1, H, 1)),
}


@pytest.mark.parametrize("name", RNNS)
def test_recurrent_layers_count_their_gate_products_however_they_run(name):
    build, macs = RNNS[name]
    torch.manual_seed(0)
    rnn, x = build(), torch.randn(T, B, I)
    totals = {}
    for how in ("train", "eval_no_grad", "inference_mode", "meta"):
        model, inp = (rnn.to("meta"), x.to("meta")) if how == "meta" else (rnn.train(how == "train"), x)
        with FlopMode(model, convention="fvcore") as fm:
            if how == "train":
                model(inp)
            elif how == "inference_mode":
                with torch.inference_mode():
                    model(inp)
            else:
                with torch.no_grad():
                    model(inp)
        assert fm.beyond_fvcore() == fm.by_operator(), how
        totals[how] = fm.total()
    assert set(totals.values()) == {macs}, totals


def test_lstm_dispatch_level_kernel_counts_the_same():
    # torch.ops.aten.lstm is not a Python call the function-level hook sees: on CPU it runs one
    # mkldnn_rnn_layer per layer and direction, counted at dispatch
    build, macs = RNNS["lstm"]
    torch.manual_seed(0)
    lstm, x = build(), torch.randn(T, B, I)
    h0 = torch.zeros(4, B, H)
    fm = counted(lambda: aten.lstm.input(x, [h0, h0], lstm._flat_weights, True, 2, 0.0, False, True, False))
    assert fm.total() == macs
    assert fm.beyond_fvcore() == fm.by_operator()


def test_packed_sequences_and_cells():
    torch.manual_seed(0)
    lstm = nn.LSTM(I, H)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(T, B, I), [5, 4, 2])  # 11 rows
    fm = counted(lstm, packed)
    assert fm.total() == 11 * (4 * H * I + 4 * H * H)
    for cell, gates in ((nn.LSTMCell(I, H), 4), (nn.GRUCell(I, H), 3), (nn.RNNCell(I, H), 1)):
        fm = counted(cell, torch.randn(B, I))
        assert fm.total() == B * gates * H * (I + H)
        assert fm.beyond_fvcore() == fm.by_operator()


def test_lstm_model_against_fvcore():
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(I, H, batch_first=True)
            self.head = nn.Linear(H, 4)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    torch.manual_seed(0)
    model, x = Tagger(), torch.randn(B, T, I)
    ours, theirs = FlopCountAnalysis(model, (x,)), fvcore_nn.FlopCountAnalysis(model, (x,))
    rnn = T * B * 4 * H * (I + H)
    assert theirs.total() == B * T * H * 4  # fvcore: the head only, aten::lstm is unsupported
    assert ours.total() == theirs.total() + rnn
    assert ours.beyond_fvcore() == {"lstm": rnn}
    assert ours.by_module()["rnn"] == ours.beyond_fvcore("rnn")["lstm"] == rnn


# -- attention on SDPA's math path, inside nn's attention modules ------------------------------

L, E, HEADS = 6, 16, 2
ATTENTION = 2 * HEADS * L * L * (E // HEADS + E // HEADS)  # batch 2: Q K^T and P V per head


def _self_attention(need_weights: bool):
    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(E, HEADS, dropout=0.1)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=need_weights)[0]

    return SelfAttention()


CASES = {
    # (model, input (L, batch, E) or batch-first, training, device)
    "mha_train_dropout": (lambda: _self_attention(False), (L, 2, E), True, "cpu"),
    "mha_meta_eval": (lambda: _self_attention(False), (L, 2, E), False, "meta"),
    "encoder_layer_train_dropout": (lambda: nn.TransformerEncoderLayer(E, HEADS, 32, dropout=0.1), (L, 2, E), True, "cpu"),
    "encoder_layer_meta_eval": (lambda: nn.TransformerEncoderLayer(E, HEADS, 32), (L, 2, E), False, "meta"),
    "encoder_meta_eval": (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(E, HEADS, 32, batch_first=True), 1,
                                                        enable_nested_tensor=False), (2, L, E), False, "meta"),
}


@pytest.mark.parametrize("case", CASES)
def test_sdpa_math_path_inside_torch_attention_is_beyond_fvcore(case):
    build, shape, training, device = CASES[case]
    torch.manual_seed(0)
    model = build().train(training).to(device)
    x = torch.randn(*shape, device=device)
    with FlopMode(model, convention="fvcore") as fm:
        model(x)
    assert sum(fm.beyond_fvcore().values()) == ATTENTION
    assert "aten.bmm" not in fm.by_operator()


def test_explicit_attention_weights_stay_fvcore_bmm():
    # need_weights=True runs two bmm, which fvcore counts: nothing beyond fvcore
    torch.manual_seed(0)
    model, x = _self_attention(True).train(), torch.randn(L, 2, E)
    ours, theirs = FlopCountAnalysis(model, (x,)), fvcore_nn.FlopCountAnalysis(model, (x,))
    assert ours.beyond_fvcore() == {}
    assert ours.total() == theirs.total()
    assert ours.by_operator()["bmm"] == theirs.by_operator()["bmm"] == ATTENTION


@pytest.mark.parametrize("case", ["mha_train_dropout", "encoder_layer_train_dropout"])
def test_sdpa_math_path_against_fvcore(case):
    build, shape, training, _ = CASES[case]
    torch.manual_seed(0)
    model, x = build().train(training), torch.randn(*shape)
    ours, theirs = FlopCountAnalysis(model, (x,)), fvcore_nn.FlopCountAnalysis(model, (x,))
    assert ours.beyond_fvcore() == {"scaled_dot_product_attention": ATTENTION}
    assert ours.total() == theirs.total() + ATTENTION
    for name, flops in theirs.by_module().items():
        assert ours.total(name) - sum(ours.beyond_fvcore(name).values()) == flops, name


def test_training_keeps_outputs_identical():
    torch.manual_seed(0)
    model, x = nn.TransformerEncoderLayer(E, HEADS, 32, dropout=0.1), torch.randn(L, 2, E)
    torch.manual_seed(1)
    plain = model(x)
    torch.manual_seed(1)
    with FlopMode(model, convention="fvcore"):
        counted_out = model(x)
    assert torch.equal(plain, counted_out)


def test_sdpa_called_directly_on_the_math_path():
    q = torch.randn(2, HEADS, L, E // HEADS, device="meta")
    fm = counted(lambda: F.scaled_dot_product_attention(q, q, q, dropout_p=0.1))
    assert fm.beyond_fvcore() == {"aten.scaled_dot_product_attention": ATTENTION}

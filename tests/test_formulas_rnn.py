"""Recurrent layers, worked out by hand: T=4 steps x B=2 rows, input I=3, hidden H=5.

Per row and layer: gate products 2 G H (I + H), their sum G H, two biases 2 G H, the cell
(LSTM 18 per unit, GRU 14). Backward: twice the products, the cell gradient (LSTM 23 per
unit), the bias gradients G H and the hidden-state gradient sum H.
"""

import torch
from torch import nn

from dispatchcount import FlopMode
from dispatchcount.registry import resolve

aten = torch.ops.aten
ROWS = 4 * 2
LSTM_LAYER1 = 2 * 20 * (3 + 5) + 20 + 40 + 5 * 18  # = 470 per row (G H = 20)
LSTM_LAYER2 = 2 * 20 * (5 + 5) + 20 + 40 + 5 * 18  # = 550 per row (input is layer 1's output)


def meta(*shape):
    return torch.empty(*shape, device="meta")


def test_onednn_lstm_layer_forward_and_backward():
    x, w_ih, w_hh, b = meta(4, 2, 3), meta(20, 3), meta(20, 5), meta(20)
    h = meta(2, 5)
    forward = resolve(aten.mkldnn_rnn_layer.default)(
        x, w_ih, w_hh, b, b, h, h, False, [], 2, 5, 1, True, False, False, True, out=None
    )
    assert forward == ROWS * LSTM_LAYER1
    backward = resolve(aten.mkldnn_rnn_layer_backward.default)(
        x, w_ih, w_hh, b, b, h, h, meta(4, 2, 5), h, h, meta(4, 2, 5), None, None, False, 2, 5, 1,
        True, True, False, [], False, meta(1), out=None,
    )
    assert backward == ROWS * (2 * 320 + 5 * 23 + 5 + 20)


def test_cudnn_stack_of_layers_and_gru():
    x, h = meta(4, 2, 3), meta(2, 2, 5)
    weights = [meta(20, 3), meta(20, 5), meta(20), meta(20), meta(20, 5), meta(20, 5), meta(20), meta(20)]
    flops = resolve(aten._cudnn_rnn.default)(
        x, weights, 4, None, h, h, 2, 5, 0, 2, False, 0.0, True, False, [], None, out=None
    )
    assert flops == ROWS * (LSTM_LAYER1 + LSTM_LAYER2)
    gru = [meta(15, 3), meta(15, 5), meta(15), meta(15)]
    flops = resolve(aten._cudnn_rnn.default)(
        x, gru, 4, None, h, None, 3, 5, 0, 1, False, 0.0, True, False, [], None, out=None
    )
    assert flops == ROWS * (2 * 15 * 8 + 15 + 30 + 5 * 14)


def test_fused_cells():
    # LSTM cell on (2, 5): gate sum 4 + two biases 8 + cell 18 per unit
    lstm = resolve(aten._thnn_fused_lstm_cell.default)(meta(2, 20), meta(2, 20), meta(2, 5), meta(20), meta(20), out=None)
    assert lstm == 10 * (4 + 8 + 18)
    # GRU cell: r and z gate sums 2, two biases 6, cell 14 per unit
    gru = resolve(aten._thnn_fused_gru_cell.default)(meta(2, 15), meta(2, 15), meta(2, 5), meta(15), meta(15), out=None)
    assert gru == 10 * (2 + 6 + 14)


def test_lstm_module_on_cpu_is_fully_counted():
    lstm = nn.LSTM(3, 5, num_layers=2)
    x = torch.randn(4, 2, 3, requires_grad=True)
    with FlopMode() as mode:
        lstm(x)[0].sum().backward()
    assert mode.unsupported_ops() == {}
    forward = mode.by_operator("forward")
    if "aten.mkldnn_rnn_layer" in forward:  # oneDNN builds run one op per layer
        assert forward["aten.mkldnn_rnn_layer"] == ROWS * (LSTM_LAYER1 + LSTM_LAYER2)
    else:  # otherwise the layer decomposes into addmm and pointwise ops, each counted
        assert forward["aten.addmm"] >= ROWS * 2 * 20 * (3 + 5 + 5 + 5)

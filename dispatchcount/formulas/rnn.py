"""Recurrent layers: fused LSTM/GRU cells and the whole-layer kernels (oneDNN, cuDNN, MIOpen, MPS).

CPU ``nn.LSTM`` runs as ``mkldnn_rnn_layer`` (one op per layer and direction), GPU RNNs as
``_cudnn_rnn``; nothing of their arithmetic reaches the counter as matmuls, so these formulas
count it (docs/conventions.md, "Recurrent layers"). Per time step and batch row, with G gates
(LSTM 4, GRU 3, RNN 1), hidden size H and input size I:

- gate products x W_ih^T + h W_hh^T: 2 G H (I + H) (a multiply-add is 2), their sum G H,
  the two biases 2 G H, a projection 2 H P (LSTM with proj_size);
- the cell: LSTM 18 per hidden unit (3 sigmoids 12, tanh 1, c' = f c + i g 3, h' = o tanh(c')
  2), GRU 14 (2 sigmoids 8, n = tanh(x_n + r h_n) 3, h' = n + z (h - n) 3), RNN 1 (tanh or
  relu);
- backward: twice the gate products (inputs and weights), the cell's gradient (LSTM 23,
  GRU 16, RNN 2 per unit), bias gradients G H and the hidden-state gradient sum H.
The fused cells (``_thnn_fused_lstm_cell``, ...) get the gate pre-activations from separate
matmuls, which are counted as matmuls; they cost the gate sums, biases and the cell.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch._ops import OpOverload

from dispatchcount.formulas._helpers import Tensor, fixed, mul_factor, register_family

__all__ = ["CELL_FORWARD", "CELL_BACKWARD", "stacked_rnn_flops"]

CELL_FORWARD = {4: 18, 3: 14, 1: 1}
CELL_BACKWARD = {4: 23, 3: 16, 1: 2}


def _rows(input: Tensor) -> int:
    # Time steps x batch rows (a packed sequence's rows are already summed in dim 0).
    return input.numel() // input.shape[-1] if input.dim() and input.shape[-1] else 0


def stacked_rnn_flops(rows: int, weights: Sequence[Tensor], stride: int, hidden: int,
                      has_biases: bool, backward: bool) -> int:
    """FLOPs of a stack of RNN layers/directions whose weights come ``stride`` per group
    (w_ih, w_hh[, b_ih, b_hh][, w_hr]), each group processing ``rows`` rows."""
    total = 0
    for start in range(0, len(weights), stride):
        group = [w for w in weights[start:start + stride] if w is not None]
        matrices = [w for w in group if w.dim() == 2]
        biases = [w for w in group if w.dim() == 1] if has_biases else []
        gates_h = matrices[0].shape[0]
        gates = gates_h // hidden if hidden else 1
        products = 2 * sum(w.numel() for w in matrices)
        if backward:
            per_row = 2 * products + hidden * CELL_BACKWARD.get(gates, 2) + hidden
            per_row += gates_h if biases else 0
        else:
            per_row = products + gates_h + sum(b.numel() for b in biases)
            per_row += hidden * CELL_FORWARD.get(gates, 1)
        total += rows * per_row
    return total


def _mkldnn_rnn_layer(input, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, batch_sizes, mode,
                      hidden_size, num_layers, has_biases, *args, out=None, **kwargs):
    weights = [w_ih, w_hh, b_ih, b_hh]
    return mul_factor(input) * stacked_rnn_flops(_rows(input), weights, 4, hidden_size, has_biases, False)


def _mkldnn_rnn_layer_backward(input, w_ih, w_hh, b_ih, b_hh, hx, cx, output, hy, cy, grad_output,
                               grad_hy, grad_cy, reverse, mode, hidden_size, num_layers,
                               has_biases, *args, out=None, **kwargs):
    weights = [w_ih, w_hh, b_ih, b_hh]
    return mul_factor(input) * stacked_rnn_flops(_rows(input), weights, 4, hidden_size, has_biases, True)


def _cudnn_rnn(input, weight, weight_stride0, weight_buf, hx, cx, mode, hidden_size, *args,
               out=None, **kwargs):
    return mul_factor(input) * stacked_rnn_flops(_rows(input), weight, weight_stride0, hidden_size, True, False)


def _cudnn_rnn_backward(input, weight, weight_stride0, weight_buf, hx, cx, output, grad_output,
                        grad_hy, grad_cy, mode, hidden_size, *args, out=None, **kwargs):
    return mul_factor(input) * stacked_rnn_flops(_rows(input), weight, weight_stride0, hidden_size, True, True)


def _miopen_rnn(input, weight, weight_stride0, hx, cx, mode, hidden_size, *args, out=None, **kwargs):
    return mul_factor(input) * stacked_rnn_flops(_rows(input), weight, weight_stride0, hidden_size, True, False)


def _lstm_mps(input, hx, params, has_biases, *args, out=None, **kwargs):
    hidden = hx[0].shape[-1]
    stride = 4 if has_biases else 2
    return mul_factor(input) * stacked_rnn_flops(_rows(input), params, stride, hidden, has_biases, False)


def _lstm_mps_backward(grad_y, grad_hy, grad_cy, z_state, cell_state_fwd, input, layers_outputs,
                       hx, params, has_biases, *args, out=None, **kwargs):
    hidden = hx[0].shape[-1]
    stride = 4 if has_biases else 2
    return mul_factor(input) * stacked_rnn_flops(_rows(input), params, stride, hidden, has_biases, True)


def _quantized_rnn(gates: int) -> Callable[[OpOverload], Callable[..., int]]:
    # Dynamic quantization: the gate products are int8 GEMMs (integer arithmetic, 0 FLOPs);
    # the cell's floating-point arithmetic is counted per row, layer and direction.
    def build(op: OpOverload) -> Callable[..., int]:
        packed = op._overloadname.startswith("data")

        def quantized_rnn_flops(input, *args, out=None, **kwargs):
            hx = args[1] if packed else args[0]
            rest = args[2:] if packed else args[1:]
            num_layers, bidirectional = rest[2], rest[5]
            hidden = (hx[0] if isinstance(hx, (list, tuple)) else hx).shape[-1]
            rows = input.shape[0] if packed else _rows(input)
            groups = num_layers * (2 if bidirectional else 1)
            return mul_factor(input) * rows * groups * hidden * CELL_FORWARD[gates]

        return quantized_rnn_flops

    return build


def _lstm_cell(input_gates, hidden_gates, cx, input_bias=None, hidden_bias=None, *args, out=None, **kwargs):
    # Gate sum (4H) and biases (4H each) per row, then the LSTM cell (18 per unit).
    n = cx.numel()
    biases = (input_bias is not None) + (hidden_bias is not None)
    return mul_factor(cx) * n * (4 + 4 * biases + CELL_FORWARD[4])


def _lstm_cell_backward(grad_hy, grad_cy, cx, cy, workspace, has_bias, *args, out=None, **kwargs):
    # The cell's gradient (23 per unit) and, with biases, the per-gate bias gradient sums (4).
    n = cx.numel()
    return mul_factor(cx) * n * (CELL_BACKWARD[4] + (4 if has_bias else 0))


def _gru_cell(input_gates, hidden_gates, hx, input_bias=None, hidden_bias=None, *args, out=None, **kwargs):
    # r and z take a gate sum each (2H; n's sum is inside the cell count), biases 3H each,
    # then the GRU cell (14 per unit).
    n = hx.numel()
    biases = (input_bias is not None) + (hidden_bias is not None)
    return mul_factor(hx) * n * (2 + 3 * biases + CELL_FORWARD[3])


def _gru_cell_backward(grad_hy, workspace, has_bias, *args, out=None, **kwargs):
    n = grad_hy.numel()
    return mul_factor(grad_hy) * n * (CELL_BACKWARD[3] + (3 if has_bias else 0))


FAMILY: dict[str, Callable[[OpOverload], Any]] = {
    "mkldnn_rnn_layer": fixed(_mkldnn_rnn_layer),
    "mkldnn_rnn_layer_backward": fixed(_mkldnn_rnn_layer_backward),
    "_cudnn_rnn": fixed(_cudnn_rnn),
    "_cudnn_rnn_backward": fixed(_cudnn_rnn_backward),
    "miopen_rnn": fixed(_miopen_rnn),
    "miopen_rnn_backward": fixed(_cudnn_rnn_backward),
    "_lstm_mps": fixed(_lstm_mps),
    "lstm_mps_backward": fixed(_lstm_mps_backward),
    "quantized_lstm": _quantized_rnn(4),
    "quantized_gru": _quantized_rnn(3),
    "_thnn_fused_lstm_cell": fixed(_lstm_cell),
    "_thnn_fused_lstm_cell_backward_impl": fixed(_lstm_cell_backward),
    "_thnn_fused_gru_cell": fixed(_gru_cell),
    "_thnn_fused_gru_cell_backward": fixed(_gru_cell_backward),
}

register_family(FAMILY)

"""Define a custom op with torch.library, register its FLOP formula, and count it.

Run from the repository root:  python examples/custom_op_formula.py

The op, ``demo::rbf_kernel(x, y, gamma)``, is the Gaussian (RBF) kernel matrix
``K[i, j] = exp(-gamma * ||x[i] - y[j]||^2)`` for x (n, d) and y (m, d). Its CPU kernel is opaque to
the counter (the mode sees the op, not what runs inside it), so:

1. before a formula is registered, the op is reported as unsupported, never silently 0;
2. ``@register_formula(torch.ops.demo.rbf_kernel.default)`` gives its cost, per convention;
3. the op's fake kernel lets it be counted on the meta device, without computing anything;
4. its backward (``torch.library.register_autograd``) is written with aten ops, which the mode
   counts and charges to the backward phase.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatchcount import FlopMode, register_formula  # noqa: E402


@torch.library.custom_op("demo::rbf_kernel", mutates_args=())
def rbf_kernel(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """exp(-gamma * ||x[i] - y[j]||^2) for every pair of rows: (n, d), (m, d) -> (n, m)."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"rbf_kernel: x (n, d) and y (m, d) expected, got {tuple(x.shape)}, {tuple(y.shape)}")
    return torch.exp(-gamma * torch.cdist(x, y).square())


@rbf_kernel.register_fake
def _(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    return x.new_empty(x.shape[0], y.shape[0])


def _setup_context(ctx, inputs, output) -> None:
    x, y, gamma = inputs
    ctx.save_for_backward(x, y, output)
    ctx.gamma = gamma


def _backward(ctx, grad: torch.Tensor):
    # d K[i, j] / d x[i] = -2 gamma K[i, j] (x[i] - y[j]);  W = grad * K.
    x, y, k = ctx.saved_tensors
    w = grad * k
    grad_x = grad_y = None
    if ctx.needs_input_grad[0]:
        grad_x = -2 * ctx.gamma * (w.sum(1, keepdim=True) * x - w @ y)
    if ctx.needs_input_grad[1]:
        grad_y = -2 * ctx.gamma * (w.sum(0).unsqueeze(1) * y - w.t() @ x)
    return grad_x, grad_y, None


rbf_kernel.register_autograd(_backward, setup_context=_setup_context)


def rbf_flops(x: torch.Tensor, y: torch.Tensor, gamma: float, *, out=None) -> int:
    """"flop" convention: per pair and feature a subtraction and a multiply-add (3 FLOPs), then
    per pair the scale by -gamma and the exp (2 FLOPs): 3*n*m*d + 2*n*m."""
    n, d = x.shape
    m = y.shape[0]
    return 3 * n * m * d + 2 * n * m


def rbf_flops_fvcore(x: torch.Tensor, y: torch.Tensor, gamma: float, *, out=None) -> int:
    """"fvcore" convention: multiply-adds only, one per pair and feature: n*m*d."""
    return x.shape[0] * y.shape[0] * x.shape[1]


class KernelRegression(nn.Module):
    """Kernel ridge-style predictor: RBF similarities to learned centres, then a Linear."""

    def __init__(self, d: int = 16, centres: int = 64, out: int = 3, gamma: float = 0.5) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.randn(centres, d))
        self.gamma = gamma
        self.readout = nn.Linear(centres, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(rbf_kernel(x, self.centres, self.gamma))


def main() -> None:
    torch.manual_seed(0)
    n, d, m, out = 32, 16, 64, 3
    model = KernelRegression(d, m, out)
    x = torch.randn(n, d)

    print("1. before registering a formula")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the mode warns about the op too; we print it below
        with FlopMode(model) as fm:
            model(x)
    print(f"   unsupported ops: {fm.unsupported_ops()}")

    register_formula(torch.ops.demo.rbf_kernel.default)(rbf_flops)
    register_formula(torch.ops.demo.rbf_kernel.default, convention="fvcore")(rbf_flops_fvcore)

    print("2. after register_formula(torch.ops.demo.rbf_kernel.default)")
    for convention in ("flop", "fvcore"):
        with FlopMode(model, convention=convention) as fm:
            model(x).square().mean().backward()
        print(f"   convention={convention!r}")
        print(f"     forward by operator:  {fm.by_operator(phase='forward')}")
        print(f"     backward by operator: {fm.by_operator(phase='backward')}")
        print(f"     unsupported ops: {fm.unsupported_ops() or 'none'}")
    expected = 3 * n * m * d + 2 * n * m
    print(f"   rbf_kernel by hand: 3*n*m*d + 2*n*m = 3*{n}*{m}*{d} + 2*{n}*{m} = {expected:,}")

    print("3. on the meta device (the fake kernel gives shapes; nothing is computed)")
    with torch.device("meta"):
        big = KernelRegression(d=256, centres=4096, out=10)
        xb = torch.randn(8192, 256)
    with FlopMode(big) as fm:
        big(xb)
    print(f"   demo.rbf_kernel on (8192, 256) x (4096, 256): {fm.by_operator()['demo.rbf_kernel']:,}")
    print(f"   by hand: {3 * 8192 * 4096 * 256 + 2 * 8192 * 4096:,}")

    print("4. the backward is right (torch.autograd.gradcheck in float64)")
    xd = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    yd = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    print(f"   gradcheck: {torch.autograd.gradcheck(lambda a, b: rbf_kernel(a, b, 0.7), (xd, yd))}")


if __name__ == "__main__":
    main()

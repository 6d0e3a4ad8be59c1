"""Move from fvcore's FlopCountAnalysis to dispatchcount: the same numbers, side by side.

Run from the repository root:  python examples/migrate_from_fvcore.py [--image 64]

The change in your code is one import:

    from fvcore.nn import FlopCountAnalysis, flop_count_table          # before: JIT tracing
    from dispatchcount.fvcore import FlopCountAnalysis, flop_count_table  # after: dispatch

Where fvcore is installed, this script runs both on the same models and compares the totals,
every module's count and the operators each leaves uncounted ("unsupported"):
1. a small ResNet-style CNN (convolutions, batch norm, pooling, Linear), and its
   ``flop_count_table`` with an activation column;
2. Vanilla-VMamba-T on a 64x64 image. fvcore's trace sees the selective scan as an opaque
   ``dispatchcount::selective_scan`` node: it is skipped (a warning, 0 FLOPs) unless you write a
   handle that reads JIT values, as VMamba's own code does. dispatchcount needs nothing: the op's
   formula is registered with the op, and the einsums over raw parameters are charged to SS2D.
   The very same fvcore-style handle also works with dispatchcount's ``set_op_handle``;
3. a block that reuses a convolution registered at the top of the model: both ancestor modes
   ("owner", fvcore's default, and "caller") give fvcore's per-module numbers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dispatchcount.fvcore as dc  # noqa: E402
from examples.vmamba import vmamba_tiny_v0  # noqa: E402

try:
    import fvcore.nn as fv
except ImportError:  # the comparison needs fvcore; dispatchcount alone does not
    fv = None


class Block(nn.Module):
    def __init__(self, shared: nn.Module) -> None:
        super().__init__()
        self.shared, self.proj = shared, nn.Conv2d(16, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.shared(x))


class SharedConv(nn.Module):
    """A 3x3 conv registered at the top and reused by every block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.blocks = nn.ModuleList([Block(self.conv) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
        )
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(32, 64, 1))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = nn.functional.adaptive_avg_pool2d(self.down(x), 1).flatten(1)
        return self.head(x)


def selective_scan_jit_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """What fvcore users write for the scan: read shapes from JIT values by position.
    u: (B, D, L); A: (D, N); D (the skip) is argument 5: VMamba's 9*B*L*D*N (+ B*D*L with D)."""
    batch, dim, length = inputs[0].type().sizes()
    n = inputs[2].type().sizes()[1]
    with_skip = inputs[5].type().kind() != "NoneType"
    return 9 * batch * length * dim * n + (batch * dim * length if with_skip else 0)


def fvcore_analysis(model: nn.Module, inputs: tuple, handles: dict | None = None):
    analysis = fv.FlopCountAnalysis(model, inputs)
    for name, handle in (handles or {}).items():
        analysis.set_op_handle(name, handle)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings
        analysis.total()
    return analysis


def compare(title: str, model: nn.Module, inputs: tuple, handles: dict | None = None):
    print(f"\n=== {title} ===")
    ours = dc.FlopCountAnalysis(model, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    print(f"dispatchcount: total {int(ours.total()):,}; skipped ops (counted 0): "
          f"{dict(ours.unsupported_ops()) or 'none'}")
    if fv is None:
        print("fvcore is not installed (pip install fvcore): nothing to compare with")
        return None
    theirs = fvcore_analysis(model, inputs, handles)
    print(f"fvcore:        total {int(theirs.total()):,}; skipped ops (counted 0): "
          f"{dict(theirs.unsupported_ops()) or 'none'}")
    mine, reference = ours.by_module(), theirs.by_module()
    differing = [m for m in reference if mine.get(m, 0) != reference[m]]
    print(f"totals equal: {ours.total() == theirs.total()}; modules compared: {len(reference)}, "
          f"differing: {differing or 'none'}")
    return ours, theirs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fvcore and dispatchcount side by side")
    parser.add_argument("--image", type=int, default=64, help="VMamba's image size (a multiple of 32; default 64)")
    size = parser.parse_args(argv).image
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    logging.getLogger("dispatchcount").setLevel(logging.ERROR)
    torch.manual_seed(0)

    cnn = SmallResNet().eval()
    result = compare("SmallResNet, 1x3x64x64", cnn, (torch.randn(1, 3, 64, 64),))
    if result:
        ours, theirs = result
        print("\nfvcore's flop_count_table(max_depth=2):")
        print(fv.flop_count_table(theirs, max_depth=2))
        print("\ndispatchcount.fvcore's flop_count_table(max_depth=2):")
        print(dc.flop_count_table(ours, max_depth=2))
        inputs = (torch.randn(1, 3, 64, 64),)
        mine = dc.flop_count_table(ours, max_depth=2, activations=dc.ActivationCountAnalysis(cnn, inputs))
        theirs_table = fv.flop_count_table(theirs, max_depth=2, activations=fv.ActivationCountAnalysis(cnn, inputs))
        print(f"with activations, the same text as fvcore's: {mine == theirs_table}")

    vmamba = vmamba_tiny_v0(num_classes=10).eval()
    image = torch.randn(1, 3, size, size)
    result = compare(
        f"Vanilla-VMamba-T, 1x3x{size}x{size}, fvcore given a hand-written JIT handle for the scan",
        vmamba, (image,), {"dispatchcount::selective_scan": selective_scan_jit_handle},
    )
    if result:
        ours, _ = result
        bare = fvcore_analysis(vmamba, (image,))
        print("\n=== the same, fvcore with no handle for the scan ===")
        print(f"fvcore:        total {int(bare.total()):,}; skipped ops (counted 0): {dict(bare.unsupported_ops())}")
        print(f"missing from fvcore's total: {int(ours.total() - bare.total()):,} "
              f"(the selective scan; dispatchcount needs no handle)")
        handled = dc.FlopCountAnalysis(vmamba, (image,)).set_op_handle(
            "dispatchcount::selective_scan", selective_scan_jit_handle).unsupported_ops_warnings(False)
        print(f"dispatchcount with the same JIT-style handle: total {int(handled.total()):,}")

    shared, x = SharedConv().eval(), torch.randn(1, 16, 8, 8)
    print("\n=== a conv registered at the top, reused by blocks.0 and blocks.1 ===")
    for mode in ("owner", "caller"):
        ours = dc.FlopCountAnalysis(shared, (x,)).ancestor_mode(mode)
        line = {name: int(flops) for name, flops in ours.by_module().items()}
        print(f"{mode:6} dispatchcount: {line}; uncalled: {sorted(ours.uncalled_modules()) or 'none'}")
        if fv is not None:
            theirs = fv.FlopCountAnalysis(shared, (x,)).ancestor_mode(mode).uncalled_modules_warnings(False)
            print(f"{mode:6} fvcore equal: {ours.by_module() == theirs.by_module()}")


if __name__ == "__main__":
    main()

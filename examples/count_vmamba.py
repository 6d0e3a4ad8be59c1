"""Count VMamba-T's FLOPs without JIT tracing, and compare with the published table.

Run from the repository root:  python examples/count_vmamba.py

What it shows, for Vanilla-VMamba-T (``vmamba_tiny_v0``) and VMamba-T s1l8 (``vmamba_tiny_s1l8``):
- one 224x224 image counted on the meta device (no memory, no arithmetic: a few seconds on a CPU):
  parameters and GFLOPs with ``convention="fvcore"`` against the paper's figures, and the same run
  in the "flop" convention (one multiply-add = 2, elementwise ops counted too);
- the module table at depth 3 in both conventions;
- the x_proj / dt_proj weights SS2D uses directly through ``einsum`` (no module call) are charged to
  that SS2D, next to its selective scan;
- DropPath costs 0 in eval (and something in training, where it runs);
- no op is unsupported;
- a real forward and backward on a small image on the CPU, whose output is bit-identical to an
  uncounted run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dispatchcount import FlopMode  # noqa: E402
from examples.vmamba import VSSM, vmamba_tiny_s1l8, vmamba_tiny_v0  # noqa: E402

# Liu et al., arXiv:2401.10166, appendix tables: (params, FLOPs) at 224x224.
PUBLISHED = {
    "vmamba_tiny_v0": ("Vanilla-VMamba-T", 22.9e6, 5.63e9),
    "vmamba_tiny_s1l8": ("VMamba-T [s1l8]", 30.2e6, 4.91e9),
}


def own_ops(fm: FlopMode, name: str, phase: str | None = None) -> dict[str, int]:
    """{operator: FLOPs} of the ops module ``name`` ran itself, outside any of its children."""
    return fm.by_module_and_operator(phase=phase, inclusive=False)[name]


def count_on_meta(builder: Callable[[], VSSM], convention: str, train: bool = False) -> tuple[VSSM, FlopMode, float]:
    start = time.perf_counter()
    with torch.device("meta"):
        model = builder().train(train)
        image = torch.randn(1, 3, 224, 224)
    with FlopMode(model, convention=convention) as fm, torch.no_grad():
        model(image)
    return model, fm, time.perf_counter() - start


def report_published(builder: Callable[[], VSSM]) -> None:
    name = builder.__name__
    paper_name, paper_params, paper_flops = PUBLISHED[name]
    model, fm, seconds = count_on_meta(builder, "fvcore")
    _, fm_flop, _ = count_on_meta(builder, "flop")
    params = sum(p.numel() for p in model.parameters())
    gflops = fm.total()
    print(f"\n=== {name} ({paper_name}), one 1x3x224x224 image on the meta device ===")
    print(f"params:                {params:,} = {params / 1e6:.2f}M "
          f"(published {paper_params / 1e6:.1f}M, {100 * (params / paper_params - 1):+.2f}%)")
    print(f"GFLOPs, fvcore:        {gflops / 1e9:.3f} "
          f"(published {paper_flops / 1e9:.2f}, {100 * (gflops / paper_flops - 1):+.2f}%)")
    print(f"GFLOPs, flop:          {fm_flop.total() / 1e9:.3f} (one multiply-add = 2; elementwise counted)")
    print(f"counted in {seconds:.1f} s; unsupported ops: {fm.unsupported_ops() or 'none'}, "
          f"{fm_flop.unsupported_ops() or 'none'}")
    print(f"\n--- {name}: table, convention='fvcore' ---")
    print(fm.table(depth=3))
    print(f"\n--- {name}: table, convention='flop' ---")
    print(fm_flop.table(depth=3))


def show_ss2d_attribution() -> None:
    model, fm, _ = count_on_meta(vmamba_tiny_v0, "fvcore")
    name = "layers.0.0.ss2d"
    ss2d = model.get_submodule(name)
    L, D, K, N, R = 56 * 56, ss2d.d_inner, 4, ss2d.d_state, ss2d.dt_rank
    x_proj = L * K * (R + 2 * N) * D  # einsum bkdl,kcd->bkcl: one multiply-add per (l, k, c, d)
    dt_proj = L * K * D * R  # einsum bkrl,kdr->bkdl
    scan = 9 * L * K * D * N + L * K * D  # VMamba's selective-scan count, with the D skip
    print(f"\n=== where SS2D's raw-parameter einsums go (vmamba_tiny_v0, {name}, fvcore) ===")
    print(f"children of {name}: {[n for n, _ in ss2d.named_children()]} (no x_proj / dt_proj module)")
    print(f"ops {name} ran itself: {own_ops(fm, name)}")
    print(f"by hand: selective scan 9*L*KD*N + L*KD = {scan:,}; einsums x_proj L*K*(R+2N)*D = {x_proj:,} "
          f"and dt_proj L*K*D*R = {dt_proj:,} multiply-adds,")
    print(f"  which fvcore's einsum handle reads from numpy's einsum_path report, printed to 4 significant "
          f"digits: {_numpy_rounded(x_proj):,} + {_numpy_rounded(dt_proj):,} = "
          f"{_numpy_rounded(x_proj) + _numpy_rounded(dt_proj):,}")


def _numpy_rounded(macs: int) -> int:
    """fvcore's einsum count: numpy prints 2 * macs + 1 as "%.3e"; fvcore halves and floors it."""
    return int(float(f"{2 * macs + 1:.3e}") // 2)


def show_drop_path() -> None:
    name = "layers.2.8.drop_path"
    _, fm_eval, _ = count_on_meta(vmamba_tiny_v0, "flop", train=False)
    model, fm_train, _ = count_on_meta(vmamba_tiny_v0, "flop", train=True)
    p = model.get_submodule(name).p
    print(f"\n=== DropPath (vmamba_tiny_v0, {name}, p={p:.3f}, convention='flop') ===")
    print(f"eval:  {fm_eval.by_module()[name]:,} FLOPs (returns its input: nothing runs)")
    print(f"train: {fm_train.by_module()[name]:,} FLOPs (scales the kept samples: it runs)")


def real_forward_backward(size: int = 32) -> None:
    torch.manual_seed(0)
    model = vmamba_tiny_v0(num_classes=10).eval()
    image = torch.randn(1, 3, size, size)
    reference = model(image)
    start = time.perf_counter()
    with FlopMode(model) as fm:
        out = model(image)
        out.square().mean().backward()
    seconds = time.perf_counter() - start
    grads = [p.grad for p in model.parameters()]
    print(f"\n=== real forward + backward on CPU, vmamba_tiny_v0, 1x3x{size}x{size}, convention='flop' ===")
    print(f"output bit-identical to an uncounted run: {torch.equal(out, reference)}")
    print(f"every parameter has a finite gradient: "
          f"{all(g is not None and bool(torch.isfinite(g).all()) for g in grads)}")
    print(f"forward {fm.total(phase='forward'):,}, backward {fm.total(phase='backward'):,} "
          f"(backward/forward {fm.total(phase='backward') / fm.total(phase='forward'):.2f}); "
          f"selective scan fwd {fm.by_operator(phase='forward').get('dispatchcount.selective_scan', 0):,}, "
          f"bwd {fm.by_operator(phase='backward').get('dispatchcount.selective_scan_backward', 0):,}")
    print(f"unsupported ops: {fm.unsupported_ops() or 'none'}; {seconds:.1f} s")


def main() -> None:
    for builder in (vmamba_tiny_v0, vmamba_tiny_s1l8):
        report_published(builder)
    show_ss2d_attribution()
    show_drop_path()
    real_forward_backward()


if __name__ == "__main__":
    main()

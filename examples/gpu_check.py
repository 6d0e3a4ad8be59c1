"""The selective scan's checks on an NVIDIA GPU in one run (estimated: 6 minutes on an H200).

    pip install --no-deps --no-build-isolation -e . && PYTHONUNBUFFERED=1 python3 examples/gpu_check.py

CI has no GPU; this is what a session with one runs, and it prints every figure:

1. correctness on CUDA against the float64 step-by-step reference of tests/test_selective_scan.py
   (forward, last state and the gradient of every input): small cases covering D, z,
   delta_bias, softplus, G > 1, B (batch, N, L), constant (dim, N) B/C, ragged chunks, N from 1
   to 256, fp32, bf16 and fp16; then the VMamba-T stage-1 and Mamba-LM layer shapes (batch cut to
   2 and 1 for the reference's memory) in fp32 and bf16. Each line: the worst error of each
   output as a fraction of its largest reference value.
2. torch.compile on CUDA: the op traced into its two Triton kernels (no opaque op call left in
   the forward or backward graph), and compiled results equal to eager ones.
3. opcheck on CUDA; FlopMode on CUDA counts what it counts on the meta device, and does not
   change the output.
4. the benchmark (examples/bench_selective_scan.py): ms, GB/s, TFLOP/s, % of the roofline and
   speed-up over the PyTorch kernel, fwd and fwd+bwd, both shapes, fp32 and bf16.

Every step has a time limit, and all of them together ``--budget`` seconds (default 540, to fit
a 10-minute command): past it, the tracebacks of all threads are printed and the run exits with
status 1 (never a hang). A failed check is printed and the other steps still run; the exit
status is 0 only when every check passed (2: no CUDA device). ``--only 1b,4`` reruns some steps.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402

FAILURES: list[str] = []
DEADLINE = [float("inf")]
ONLY: set = set()

# (batch, dim, L, N, G, has_D, has_z, has_bias, softplus, layout); chunks are 64 steps for N <= 16
SMALL = [
    (2, 8, 100, 16, 2, True, True, True, True, "grouped"),    # everything; 2 chunks, ragged
    (2, 6, 64, 4, 1, True, False, True, False, "3d"),         # exactly one chunk; B (batch, N, L)
    (1, 8, 130, 1, 4, False, True, False, True, "grouped"),   # N = 1, G = 4, 3 chunks
    (2, 4, 50, 16, 1, True, True, True, True, "const_B"),
    (1, 4, 70, 8, 2, True, False, False, True, "const_C"),
    (2, 4, 33, 3, 1, False, True, True, False, "const_BC"),
    (1, 4, 1, 2, 1, True, True, True, True, "grouped"),       # L = 1
    (2, 4, 40, 64, 1, True, True, True, True, "grouped"),     # N = 64: 16-step chunks, 2 warps
    (1, 4, 40, 256, 2, True, False, False, True, "grouped"),  # N = 256, the largest
]
# VMamba-T stage 1 (4 directions x 192 channels, 56x56) and a Mamba LM layer, batch cut
LARGE = {
    "VMamba-T stage 1, batch 2": (2, 768, 3136, 16, 4, True, False, True, True, "grouped"),
    "Mamba LM layer, batch 1": (1, 3072, 2048, 16, 1, True, True, True, True, "3d"),
}
# fp32 accumulates rounding over thousands of steps at the large shapes: 1e-3 there
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def step(name: str, limit: float):
    """Run the decorated function now (unless --only leaves it out), under a time limit that
    also keeps the whole run within --budget; record a failure, never raise."""

    def run(fn):
        if ONLY and name.split(".")[0] not in ONLY:
            return fn
        limit_now = max(1.0, min(limit, DEADLINE[0] - time.perf_counter()))
        print(f"\n== {name} (limit {limit_now:.0f} s)", flush=True)
        faulthandler.dump_traceback_later(limit_now, exit=True)
        started = time.perf_counter()
        try:
            fn()
            print(f"   done in {time.perf_counter() - started:.1f} s", flush=True)
        except Exception:  # noqa: BLE001  (report and go on to the next step)
            FAILURES.append(name)
            traceback.print_exc()
            print(f"   FAILED: {name}", flush=True)
        finally:
            faulthandler.cancel_dump_traceback_later()
            torch.cuda.empty_cache()
        return fn

    return run


def fmt(worst: dict) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in worst.items())


def check(label: str, fn, cfg, dtype, tol: float) -> None:
    from test_selective_scan import compare_with_reference

    try:
        worst = compare_with_reference(fn, cfg, dtype, rtol=tol, atol_frac=tol, device="cuda")
        print(f"   ok   {label} {str(dtype)[6:]}: worst/max {fmt(worst)}", flush=True)
    except AssertionError as error:
        FAILURES.append(f"{label} {dtype}")
        print(f"   FAIL {label} {str(dtype)[6:]}: {str(error).splitlines()[0][:300]}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-bench", action="store_true", help="skip step 4")
    parser.add_argument("--rep", type=int, default=100, help="benchmark repetitions, ms")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all steps")
    parser.add_argument("--only", default="", help="steps to run, e.g. 1b,4 (default: all)")
    args = parser.parse_args(argv)
    ONLY.update(filter(None, args.only.split(",")))
    if not torch.cuda.is_available():
        print("no CUDA device: this script checks the selective scan on a GPU")
        return 2
    try:
        import triton

        from dispatchcount.kernels import selective_scan
        from dispatchcount.kernels.scan import op
    except ImportError as error:
        print(f"cannot import: {error}\n(run from the repository root after "
              "`pip install --no-deps --no-build-isolation -e .`; the GPU path needs triton)")
        return 1
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, triton {triton.__version__}, "
          f"triton_op: {op.TRACEABLE}", flush=True)
    started = time.perf_counter()
    DEADLINE[0] = started + args.budget

    @step("1a. small cases against the float64 reference", 180)
    def _():
        for cfg in SMALL:
            check(f"{cfg}", selective_scan, cfg, torch.float32, TOLERANCE[torch.float32])
        for cfg in (SMALL[0], SMALL[3], SMALL[5]):
            check(f"{cfg}", selective_scan, cfg, torch.bfloat16, TOLERANCE[torch.bfloat16])
        check(f"{SMALL[0]}", selective_scan, SMALL[0], torch.float16, TOLERANCE[torch.float16])

    @step("1b. VMamba-T stage-1 and Mamba-LM shapes against the float64 reference", 150)
    def _():
        for name, cfg in LARGE.items():
            check(name, selective_scan, cfg, torch.float32, 1e-3)
            check(name, selective_scan, cfg, torch.bfloat16, TOLERANCE[torch.bfloat16])

    @step("2. torch.compile traces into the Triton kernels", 120)
    def _():
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd
        from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
        from test_selective_scan import make_inputs

        from dispatchcount.kernels.scan import triton_kernels

        inputs = make_inputs(2, 8, 100, 16, 2, has_D=True, has_z=True, has_bias=True,
                             device="cuda")

        def fn(*xs):
            out, last = selective_scan(*xs, delta_softplus=True, return_last_state=True)
            return out.float().square().sum() + last.sum()

        graphs = []

        def record(gm, _):
            graphs.append(gm)
            return make_boxed_func(gm.forward)

        torch._dynamo.reset()
        torch.compile(fn, backend=aot_autograd(fw_compiler=record, bw_compiler=record),
                      fullgraph=True)(*inputs).backward()
        for kind, gm in zip(("forward", "backward"), graphs):
            nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
            kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in nodes
                       if "triton_kernel_wrapper" in str(n.target)]
            opaque = [str(n.target) for n in nodes if "dispatchcount" in str(n.target)]
            print(f"   {kind} graph: Triton kernels {[k.fn.__name__ for k in kernels]}, "
                  f"opaque op calls {opaque}")
            want = triton_kernels._fwd_kernel if kind == "forward" else triton_kernels._bwd_kernel
            assert want in kernels and not opaque, f"{kind}: not traced into the Triton kernel"
        params = [t for t in inputs if t is not None]
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True)
        loss_c = compiled(*inputs)
        grads_c = torch.autograd.grad(loss_c, params)
        loss_e = fn(*inputs)
        grads_e = torch.autograd.grad(loss_e, params)
        worst = max(((c - e).abs().max() / e.abs().max()).item()
                    for c, e in zip((loss_c, *grads_c), (loss_e, *grads_e)))
        print(f"   inductor vs eager: worst/max {worst:.1e} over the loss and 8 gradients")
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
        for c, e in zip(grads_c, grads_e):
            torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-5 * e.abs().max().item())

    @step("3. opcheck on CUDA; FlopMode on CUDA equals meta", 90)
    def _():
        from test_selective_scan import _ScanBlock, make_inputs

        from dispatchcount import FlopMode

        for layout in ("grouped", "const_BC"):
            u, delta, A, B, C, D, z, bias = make_inputs(2, 8, 70, 4, 2, has_D=True, has_z=True,
                                                        has_bias=True, layout=layout,
                                                        requires_grad=False, device="cuda")
            fwd = (u, delta, A, B, C, D, z, bias, True, True)
            torch.library.opcheck(torch.ops.dispatchcount.selective_scan.default, fwd)
            states = torch.ops.dispatchcount.selective_scan(*fwd)[2]
            torch.library.opcheck(torch.ops.dispatchcount.selective_scan_backward.default,
                                  (torch.randn_like(u), torch.randn(2, 8, 4, device="cuda"),
                                   *fwd[:9], states))
            print(f"   opcheck {layout}: forward and backward ok")
        counts = {}
        for device in ("cuda", "meta"):
            torch.manual_seed(0)
            model = _ScanBlock().to(device)
            x = torch.randn(2, 10, 8, device=device)
            plain = model(x) if device == "cuda" else None
            with FlopMode(model) as fm:
                out = model(x)
                out.sum().backward()
            if device == "cuda":
                assert torch.equal(plain, out), "FlopMode changed the output"
            counts[device] = (fm.total("forward"), fm.total("backward"))
        print(f"   FlopMode (forward, backward): cuda {counts['cuda']}, meta {counts['meta']}")
        assert counts["cuda"] == counts["meta"]

    if not args.no_bench:
        @step("4. benchmark", 180)
        def _():
            from examples import bench_selective_scan

            bench_selective_scan.main(["--rep", str(args.rep)])

    print(f"\n{len(FAILURES)} failed" + (f": {FAILURES}" if FAILURES else "")
          + f"; {time.perf_counter() - started:.0f} s in all")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())

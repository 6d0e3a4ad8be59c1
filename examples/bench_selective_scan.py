"""Speed of the selective-scan kernels.

    python examples/bench_selective_scan.py            # CUDA: Triton kernels; CPU: PyTorch kernel
    python examples/bench_selective_scan.py --sass     # no GPU needed: compile for sm_90, count SASS

On CUDA, with ``triton.testing.do_bench``, forward and forward+backward of
``dispatchcount.kernels.selective_scan`` (Triton) at VMamba-T stage 1 (batch 32, dim 768 =
4 directions x 192, L 3136 = 56x56, N 16, G 4; D, delta_bias, softplus, no z) and a Mamba LM
layer (batch 8, dim 3072, L 2048, N 16, G 1; D, z, delta_bias, softplus), fp32 and bf16:
ms, GB/s, TFLOP/s, % of the roofline and speed-up over the PyTorch kernel (the op's CPU
kernel, run on the GPU). The roofline time is the larger of
  - the essential bytes (every input read once, every output written once) / memory bandwidth,
  - the arithmetic ("flop" convention of the op's FLOP formula) / the FP32 (non-tensor) rate.
Saved states, scratch and partial sums are not in the byte count: they are the kernels' cost.

On CPU it times the PyTorch kernel against a naive per-time-step loop at small shapes.

``--sass`` compiles the Triton kernels ahead of time for sm_90 (Hopper) with triton's own
ptxas and prints registers, spills and the SASS instructions per (b, d, l, n) element of the
inner loops: a static estimate of issue-bound throughput when no GPU is at hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from dispatchcount.kernels import selective_scan
from dispatchcount.kernels.scan import flops as scan_flops
from dispatchcount.kernels.scan import pytorch_kernel
from dispatchcount.kernels.scan.validation import ScanInputs

# name: (batch, dim, L, N, G, with D, with z, with delta_bias, softplus)
SHAPES = {
    "VMamba-T stage 1": (32, 768, 3136, 16, 4, True, False, True, True),
    "Mamba LM layer": (8, 3072, 2048, 16, 1, True, True, True, True),
}
CPU_SHAPES = {  # small enough for the default CPU run to take well under a minute
    "VMamba-T stage 1 @ 32px": (1, 768, 64, 16, 4, True, False, True, True),
    "Mamba LM layer, L 256": (1, 768, 256, 16, 1, True, True, True, True),
}
CPU_TINY_SHAPES = {  # --tiny: every code path of the CPU run in a few seconds (the smoke test)
    "VMamba-T-like, L 16": (1, 64, 16, 16, 4, True, False, True, True),
    "Mamba-like, L 32": (1, 64, 32, 16, 1, True, True, True, True),
}
# (memory bandwidth TB/s, FP32 non-tensor TFLOP/s) by device name
PEAKS = {"H200": (4.8, 67.0), "H100": (3.35, 67.0), "A100": (2.0, 19.5), "L40S": (0.864, 91.6)}


def make_inputs(shape, dtype, device, requires_grad=False):
    batch, dim, length, n, groups, has_D, has_z, has_bias, _ = shape
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*s, scale=1.0, dt=dtype):
        return (torch.randn(*s, generator=g) * scale).to(device=device, dtype=dt)

    u = rand(batch, dim, length)
    delta = (torch.rand(batch, dim, length, generator=g) - 4.0).to(device=device, dtype=dtype)
    A = -torch.exp(rand(dim, n, scale=0.5, dt=torch.float32))
    B = rand(batch, groups, n, length)
    C = rand(batch, groups, n, length)
    D = rand(dim, dt=torch.float32) if has_D else None
    z = rand(batch, dim, length) if has_z else None
    bias = rand(dim, scale=0.1, dt=torch.float32) if has_bias else None
    tensors = [u, delta, A, B, C, D, z, bias]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors


def essential_bytes(shape, dtype, backward):
    batch, dim, length, n, groups, has_D, has_z, has_bias, _ = shape
    e = torch.empty((), dtype=dtype).element_size()
    bdl, bgnl = batch * dim * length, batch * groups * n * length
    params = dim * n * 4 + dim * 4 * (has_D + has_bias)
    fwd = bdl * e * (2 + has_z) + 2 * bgnl * e + params + bdl * e  # u, delta, z, B, C | out
    if not backward:
        return fwd
    # backward: dout, u, delta, z, B, C, params | du, ddelta, dz, dB, dC, dA, dD, dbias
    bwd = 2 * (bdl * e * (3 + has_z) + 2 * bgnl * e + params)
    return fwd + bwd


def flop_count(shape, dtype, backward):
    meta = [t if t is None else t.to("meta") for t in make_inputs(shape, dtype, "cpu")]
    softplus = shape[-1]
    fwd = scan_flops.selective_scan_flop(*meta, softplus)
    if not backward:
        return fwd
    dout = torch.empty_like(meta[0])
    return fwd + scan_flops.selective_scan_backward_flop(dout, None, *meta, softplus)


def peaks(args):
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    bw, fp32 = next((v for k, v in PEAKS.items() if k in name), (None, None))
    return (args.bandwidth or bw or 3.35) * 1e12, (args.fp32 or fp32 or 67.0) * 1e12, name


def run_fwd(inputs, softplus):
    return lambda: selective_scan(*inputs, delta_softplus=softplus)


def run_fwd_bwd(inputs, softplus, grad):
    def step():
        out = selective_scan(*inputs, delta_softplus=softplus)
        out.backward(grad)
    return step


def run_reference(inputs, softplus, backward, grad):
    # The op's PyTorch kernels, called directly (the op would dispatch to Triton on CUDA).
    plain = [t.detach() if t is not None else None for t in inputs]

    x = ScanInputs(*plain)

    def step():
        pytorch_kernel.forward(x, softplus, False)
        if backward:
            pytorch_kernel.backward(grad, None, x, softplus)
    return step


def bench_cuda(args):
    import triton.testing
    from tabulate import tabulate

    bw, fp32, name = peaks(args)
    print(f"{name}: roofline with {bw / 1e12:.2f} TB/s and {fp32 / 1e12:.1f} FP32 TFLOP/s; "
          f"torch {torch.__version__}, triton {triton.__version__}", flush=True)
    rows, total, started = [], len(SHAPES) * 2 * 2, time.perf_counter()
    for shape_name, shape in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            softplus = shape[-1]
            for backward in (False, True):
                inputs = make_inputs(shape, dtype, "cuda", requires_grad=backward)
                grad = torch.randn_like(inputs[0]) if backward else None
                fn = run_fwd_bwd(inputs, softplus, grad) if backward else run_fwd(inputs, softplus)
                ms = triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep)
                ref_ms = float("nan")
                if not args.no_reference:
                    ref = run_reference(inputs, softplus, backward, grad)
                    ref_ms = triton.testing.do_bench(ref, warmup=1, rep=max(1, args.rep // 4))
                nbytes = essential_bytes(shape, dtype, backward)
                nflop = flop_count(shape, dtype, backward)
                roof_ms = 1e3 * max(nbytes / bw, nflop / fp32)
                rows.append([shape_name, str(dtype).replace("torch.", ""),
                             "fwd+bwd" if backward else "fwd", f"{ms:.3f}",
                             f"{nbytes / ms / 1e6:.0f}", f"{nflop / ms / 1e9:.2f}",
                             f"{roof_ms:.3f}", f"{100 * roof_ms / ms:.0f}%",
                             f"{ref_ms / ms:.0f}x"])
                progress(len(rows), total, rows[-1][:3], started)
                del inputs, grad
                torch.cuda.empty_cache()
    print()
    print(tabulate(rows, headers=["shape", "dtype", "pass", "ms", "GB/s", "TFLOP/s",
                                  "roofline ms", "% of roofline", "vs PyTorch"]))


def progress(done, total, what, started):
    """One line per measured case (the figures come once, in the table at the end)."""
    print(f"  [{done}/{total}] {', '.join(what)} measured ({time.perf_counter() - started:.0f} s)",
          flush=True)


def naive_scan(u, delta, A, B, C, D, z, bias, softplus):
    """One time step at a time, as one would write it first (mamba_ssm's reference style)."""
    delta = delta + bias[:, None] if bias is not None else delta
    delta = torch.nn.functional.softplus(delta) if softplus else delta
    Bd = (B if B.dim() == 4 else B.unsqueeze(1)).repeat_interleave(u.shape[1] // max(1, B.shape[1] if B.dim() == 4 else 1), dim=1)
    Cd = (C if C.dim() == 4 else C.unsqueeze(1)).repeat_interleave(u.shape[1] // max(1, C.shape[1] if C.dim() == 4 else 1), dim=1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * Bd[:, :, :, t] * u[:, :, t, None]
        ys.append((h * Cd[:, :, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z)
    return y


def _median_s(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_cpu(args):
    from tabulate import tabulate

    print(f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}: the op's PyTorch "
          "kernel against a naive per-step loop (fp32)", flush=True)
    shapes = CPU_TINY_SHAPES if args.tiny else CPU_SHAPES
    rows, total, started = [], len(shapes) * 2, time.perf_counter()
    for shape_name, shape in shapes.items():
        softplus = shape[-1]
        for backward in (False, True):
            inputs = make_inputs(shape, torch.float32, "cpu", requires_grad=backward)
            grad = torch.randn_like(inputs[0])

            def kernel():
                out = selective_scan(*inputs, delta_softplus=softplus)
                if backward:
                    out.backward(grad)

            def naive():
                out = naive_scan(*inputs, softplus)
                if backward:
                    out.backward(grad)

            with torch.set_grad_enabled(backward):
                k = _median_s(kernel, args.cpu_repeat)
                n = _median_s(naive, args.cpu_repeat)
            rows.append([shape_name, "fwd+bwd" if backward else "fwd", f"{1e3 * k:.1f}",
                         f"{1e3 * n:.1f}", f"{n / k:.1f}x"])
            progress(len(rows), total, rows[-1][:2], started)
    print()
    print(tabulate(rows, headers=["shape", "pass", "kernel ms", "naive loop ms", "speed-up"]))


def sass_report(args):
    """Compile for sm_90 without a GPU; registers, spills, SASS instructions per element."""
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dispatchcount.kernels.scan import triton_kernels as K

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

    def compile_(fn, values, num_warps):
        sig, consts, attrs = {}, {}, {}
        for i, name in enumerate(fn.arg_names):
            v = values[name]
            if isinstance(v, str):
                sig[name] = v
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif isinstance(v, bool) or name.isupper() or v == 1:
                sig[name], consts[name] = "constexpr", v
            else:
                sig[name] = "i32"
                if v % 16 == 0:  # what the JIT specializes at launch
                    attrs[(i,)] = [["tt.divisibility", 16]]
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})

    def inspect_(kernel):
        with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
            f.write(kernel.asm["cubin"])
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "--dump-resource-usage", f.name],
                               capture_output=True, text=True).stdout
        regs = re.search(r"REG:(\d+)", usage).group(1)
        stack = re.search(r"STACK:(\d+)", usage).group(1)
        sass = subprocess.run([os.path.join(tools, "nvdisasm"), "-c", f.name],
                              capture_output=True, text=True).stdout
        os.unlink(f.name)
        # innermost loops: a backward branch to a label, with no other loop inside
        lines = sass.splitlines()
        labels, cur, instrs = {}, None, []
        for line in lines:
            m = re.match(r"\s*\.L_x_(\d+):", line)
            if m:
                cur = m.group(1)
                continue
            m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
            if m:
                addr = int(m.group(1), 16)
                if cur is not None:
                    labels[cur], cur = addr, None
                instrs.append((addr, m.group(2)))
        loops = []
        for addr, ins in instrs:
            m = re.search(r"BRA.*\.L_x_(\d+)", ins)
            if m and m.group(1) in labels and labels[m.group(1)] < addr:
                loops.append((labels[m.group(1)], addr))
        inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
        sizes = [sum(1 for a, _ in instrs if s <= a <= e) for s, e in inner]
        return int(regs), int(stack), sizes

    print("sm_90 ahead-of-time compile (triton", triton.__version__ + "); per (b,d,l,n) element "
          "= instructions of the inner time loop x 32 lanes x warps / elements per iteration")
    cases = [(dtype, e, name, shape, False) for dtype, e in (("fp32", 4), ("bf16", 2))
             for name, shape in SHAPES.items()]
    cases.append(("fp32", 4, "VMamba-T stage 1", SHAPES["VMamba-T stage 1"], True))
    for dtype, e, name, shape, const in cases:
        batch, dim, length, n, groups, has_D, has_z, has_bias, softplus = shape
        name = name + (", constant B, C" if const else "")
        dg = dim // groups
        common = dict(dim=dim, L=length, N=n, Dg=dg, n_dblocks=3, n_chunks=length // 64,
                      su_b=dim * length, su_d=length, su_l=1, sdt_b=dim * length, sdt_d=length,
                      sdt_l=1, sA_d=n, sA_n=1, sD=1, sbias=1, sz_b=dim * length, sz_d=length,
                      sz_l=1, HAS_D=has_D, HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=softplus,
                      B_CONST=const, C_CONST=const, BLOCK_N=K._block_n(n), CHUNK=64)
        ptr = "*" + dtype
        cf = K.forward_config(n, dg, e)
        fwd_vals = dict(common, u_ptr=ptr, delta_ptr=ptr, A_ptr="*fp32", B_ptr=ptr, C_ptr=ptr,
                        D_ptr="*fp32", z_ptr=ptr, bias_ptr="*fp32", out_ptr=ptr,
                        last_ptr="*fp32", states_ptr="*fp32", sB_b=groups * n * length,
                        sB_g=n * length, sB_n=length, sB_l=1, sC_b=groups * n * length,
                        sC_g=n * length, sC_n=length, sC_l=1, SAVE_STATES=True,
                        BLOCK_D=cf["BLOCK_D"], T=cf["T"])
        regs, stack, sizes = inspect_(compile_(K._fwd_kernel, fwd_vals, cf["num_warps"]))
        per = sizes[0] * 32 * cf["num_warps"] / (cf["BLOCK_D"] * K._block_n(n) * cf["T"])
        print(f"  {name} {dtype} forward  {cf}: {regs} registers, {stack} B stack, "
              f"{per:.1f} instructions/element")
        cb = K.backward_config(n, dg, e)
        bwd_vals = dict(common, u_ptr=ptr, delta_ptr=ptr, A_ptr="*fp32", Bt_ptr=ptr, Ct_ptr=ptr,
                        D_ptr="*fp32", z_ptr=ptr, bias_ptr="*fp32", dout_ptr=ptr,
                        dlast_ptr="*fp32", states_ptr="*fp32", scratch_ptr="*fp32",
                        du_ptr=ptr, ddelta_ptr=ptr, dz_ptr=ptr, dA_ptr="*fp32", dB_ptr="*fp32",
                        dC_ptr="*fp32", dD_ptr="*fp32", dbias_ptr="*fp32", sdo_b=dim * length,
                        sdo_d=length, sdo_l=1, HAS_DLAST=False, KEEP_DECAY=cb["KEEP_DECAY"],
                        BLOCK_D=cb["BLOCK_D"], T=cb["T"])
        regs, stack, sizes = inspect_(compile_(K._bwd_kernel, bwd_vals, cb["num_warps"]))
        per = sum(sizes) * 32 * cb["num_warps"] / (cb["BLOCK_D"] * K._block_n(n) * cb["T"])
        print(f"  {name} {dtype} backward {cb}: {regs} registers, {stack} B stack, "
              f"{per:.1f} instructions/element (pass 1 + pass 2)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sass", action="store_true", help="static sm_90 report, no GPU needed")
    parser.add_argument("--bandwidth", type=float, help="memory bandwidth in TB/s (default: by GPU name)")
    parser.add_argument("--fp32", type=float, help="FP32 non-tensor TFLOP/s (default: by GPU name)")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetitions, ms")
    parser.add_argument("--no-reference", action="store_true", help="skip the PyTorch-kernel timing")
    parser.add_argument("--cpu-repeat", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="CPU: tiny shapes (checks that it runs, times nothing real)")
    args = parser.parse_args(argv)
    if args.sass:
        sass_report(args)
    elif torch.cuda.is_available():
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    sys.exit(main())

"""The selective-scan op on CPU: forward and gradients against an independent float64 reference,
gradcheck, opcheck, torch.compile (and its tracing into the Triton kernels on fake CUDA tensors),
empty and constant-B/C inputs, input validation, and the FLOP formulas.

The Triton kernels are tested in test_selective_scan_triton.py (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import itertools
import math
import random
import sys

import pytest
import torch

from dispatchcount.kernels import selective_scan
from dispatchcount.kernels.scan import pytorch_kernel
from dispatchcount.registry import resolve

# ----------------------------------------------------------------------------------------------
# Independent reference, written from the math (mamba_ssm's selective_scan_fn semantics):
#   delta = softplus(delta + delta_bias);  h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
#   y_t = C_t . h_t;  out = (y + D u) * silu(z).   One time step at a time, float64.
# Gradients of the reference come from autograd through this loop.


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Returns (out, last_state, all_states) in float64; all_states is (batch, dim, L, N)."""
    f = torch.float64
    u, delta, A, B, C = (t.to(f) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape

    def per_channel(t):  # -> (batch, dim, N, L)
        if t.dim() == 2:  # constant (dim, N): the same at every step of every batch element
            return t[None, :, :, None].expand(batch, dim, t.shape[1], length)
        t = t.unsqueeze(1) if t.dim() == 3 else t
        return t.repeat_interleave(dim // t.shape[1], dim=1)  # channel d reads group d // (dim // G)

    Bd, Cd = per_channel(B), per_channel(C)
    if delta_bias is not None:
        delta = delta + delta_bias.to(f)[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(-delta.abs())) + delta.clamp(min=0)
    h = torch.zeros(batch, dim, A.shape[1], dtype=f, device=u.device)
    ys, hs = [], []
    for t in range(length):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * Bd[:, :, :, t] * u[:, :, t, None]
        ys.append((h * Cd[:, :, :, t]).sum(-1))
        hs.append(h)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(f)[:, None] * u
    if z is not None:
        zf = z.to(f)
        y = y * zf * torch.sigmoid(zf)
    return y, h, torch.stack(hs, dim=2)


LAYOUTS = ("grouped", "3d", "const_B", "const_C", "const_BC")


def make_inputs(batch, dim, length, n, groups, *, has_D, has_z, has_bias, dtype=torch.float32,
                layout="grouped", seed=0, requires_grad=True, device="cpu"):
    """Random inputs in mamba's ranges: A < 0, delta ~ softplus-like positive (or raw with bias).
    ``layout``: B and C (batch, G, N, L) "grouped", (batch, N, L) "3d", or B, C or both
    constant (dim, N) "const_B", "const_C", "const_BC" (the other one grouped)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dt)

    u = r(batch, dim, length)
    delta = (torch.rand(batch, dim, length, generator=g) * 0.5 + 0.05).to(dtype)
    A = -(torch.rand(dim, n, generator=g) * 2 + 0.1)  # real, negative: decaying states
    varying = (batch, n, length) if layout == "3d" else (batch, groups, n, length)
    B = r(dim, n) if layout in ("const_B", "const_BC") else r(*varying)
    C = r(dim, n) if layout in ("const_C", "const_BC") else r(*varying)
    D = r(dim, dt=torch.float32) if has_D else None
    z = r(batch, dim, length) if has_z else None
    # delta + bias stays positive, so the states decay with or without softplus
    bias = (torch.rand(dim, generator=g) * 0.3) if has_bias else None
    tensors = [t.to(device) if t is not None else None for t in (u, delta, A, B, C, D, z, bias)]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors


def _grads(fn, inputs, out_w, last_w):
    out, last = fn(*inputs)
    loss = (out.to(torch.float64) * out_w).sum() + (last.to(torch.float64) * last_w).sum()
    params = [t for t in inputs if t is not None]
    return out, last, torch.autograd.grad(loss, params)


def compare_with_reference(fn, cfg, dtype, rtol, atol_frac, seed=0, device="cpu"):
    """Run ``fn`` (a selective_scan-like function) and the reference; compare out, last state
    and every gradient. Tolerance: |x - ref| <= atol_frac * max|ref| + rtol * |ref|.
    Returns each one's largest error as a fraction of its largest reference value."""
    batch, dim, length, n, groups, has_D, has_z, has_bias, softplus, layout = cfg
    inputs = make_inputs(batch, dim, length, n, groups, has_D=has_D, has_z=has_z,
                         has_bias=has_bias, dtype=dtype, layout=layout, seed=seed, device=device)
    ref_inputs = [t.detach().to(torch.float64).requires_grad_(True) if t is not None else None
                  for t in inputs]
    gen = torch.Generator().manual_seed(seed + 1)
    out_w = torch.randn(batch, dim, length, generator=gen, dtype=torch.float64).to(device)
    last_w = torch.randn(batch, dim, n, generator=gen, dtype=torch.float64).to(device)

    def run(*xs):
        return fn(*xs, delta_softplus=softplus, return_last_state=True)

    def run_ref(*xs):
        out, last, _ = reference_scan(*xs, delta_softplus=softplus)
        return out, last

    out, last, grads = _grads(run, inputs, out_w, last_w)
    rout, rlast, rgrads = _grads(run_ref, ref_inputs, out_w, last_w)
    assert out.dtype == dtype and out.shape == (batch, dim, length)
    assert last.dtype == torch.float32 and last.shape == (batch, dim, n)
    names = [nm for nm, t in zip(["u", "delta", "A", "B", "C", "D", "z", "delta_bias"], inputs)
             if t is not None]
    pairs = [("out", out, rout), ("last_state", last, rlast)]
    pairs += [(f"d{nm}", gr, rg) for nm, gr, rg in zip(names, grads, rgrads)]
    params = [t for t in inputs if t is not None]
    worst = {}
    for (name, got, want), p in zip(pairs, [None, None] + params):
        if p is not None:
            assert got.dtype == p.dtype and got.shape == p.shape, name
        got = got.detach().to(torch.float64)
        scale = want.abs().max().item()
        worst[name] = (got - want).abs().max().item() / scale if scale else 0.0
        atol = atol_frac * scale + 1e-12
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{name} {cfg}: {m}")
    return worst


def random_configs(count, seed, max_len=70):
    """(batch, dim, L, N, G, has_D, has_z, has_bias, softplus, layout): every flag combination
    and every B/C layout appears, with random sizes; dim is a multiple of G."""
    rng = random.Random(seed)
    flags = list(itertools.product([False, True], repeat=4))
    rng.shuffle(flags)
    cfgs = []
    for i in range(count):
        groups = [1, 2, 4][i % 3]
        has_D, has_z, has_bias, softplus = flags[i % len(flags)]
        dim = groups * rng.randint(1, 3)
        layout = LAYOUTS[i % len(LAYOUTS)]
        if layout == "3d" and groups > 1:
            layout = "grouped"
        cfgs.append((rng.randint(1, 2), dim, rng.randint(1, max_len), rng.choice([1, 3, 4, 16]),
                     groups, has_D, has_z, has_bias, softplus, layout))
    return cfgs


# fp32: the kernel computes in fp32 and the reference in fp64 on the same inputs; errors are
# fp32 rounding accumulated over <= 70 steps: rtol 1e-4, atol 1e-4 of the largest value
# (measured worst: 7e-7 of the largest value).
@pytest.mark.parametrize("cfg", random_configs(16, seed=1))
def test_forward_and_gradients_fp32(cfg):
    compare_with_reference(selective_scan, cfg, torch.float32, rtol=1e-4, atol_frac=1e-4)


# bf16 inputs (u, delta, z, B, C; A, D, delta_bias fp32): the reference uses the same bf16
# values; out and the bf16 gradients are rounded to bf16 (relative step 2^-8 = 0.4%), so
# rtol 1e-2 and atol 1e-2 of the largest value (measured worst: 5.5e-3).
@pytest.mark.parametrize("cfg", random_configs(6, seed=2))
def test_forward_and_gradients_bf16(cfg):
    compare_with_reference(selective_scan, cfg, torch.bfloat16, rtol=1e-2, atol_frac=1e-2)


@pytest.mark.parametrize("small_step,layout", [(0, "grouped"), (1 << 30, "const_BC")])
def test_multi_segment_path_matches_reference(monkeypatch, small_step, layout):
    """Long sequences are processed in segments; force several, with a ragged last one, with
    the plain sequential scan and with the two-level one (and a constant B/C's gradient summed
    over the segments)."""
    monkeypatch.setattr(pytorch_kernel, "_SEGMENT_ELEMENTS", 1)  # segment = one state chunk
    monkeypatch.setattr(pytorch_kernel, "_SMALL_STEP", small_step)
    cfg = (2, 4, 64 * 3 + 17, 4, 2, True, True, True, True, layout)
    compare_with_reference(selective_scan, cfg, torch.float32, rtol=1e-4, atol_frac=1e-4)


def test_saved_states_are_the_states_at_chunk_ends():
    from dispatchcount.kernels.scan.validation import state_chunk

    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 150, 3, 2, has_D=True, has_z=True,
                                                 has_bias=True, requires_grad=False)
    out, last, states = torch.ops.dispatchcount.selective_scan(u, delta, A, B, C, D, z, bias,
                                                               True, True)
    _, _, hs = reference_scan(u, delta, A, B, C, D, z, bias, True)
    chunk = state_chunk(3)  # 64: states after steps 63, 127 and the last one, 149
    assert chunk == 64 and states.shape == (2, 4, 3, 3)
    want = hs[:, :, [63, 127, 149], :]
    torch.testing.assert_close(states.double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last.double(), hs[:, :, -1], rtol=1e-4, atol=1e-5)
    _, _, none = torch.ops.dispatchcount.selective_scan(u, delta, A, B, C, D, z, bias, True, False)
    assert none.shape == (2, 4, 0, 3)


@pytest.mark.parametrize("small_step", [0, 1 << 30])  # sequential; two-level with ragged tail
def test_linear_scan_matches_a_loop(monkeypatch, small_step):
    monkeypatch.setattr(pytorch_kernel, "_SMALL_STEP", small_step)
    g = torch.Generator().manual_seed(3)
    for steps in (1, 2, 3, 10, 37):
        a = torch.rand(steps, 2, 3, generator=g, dtype=torch.float64)
        b = torch.randn(steps, 2, 3, generator=g, dtype=torch.float64)
        h0 = torch.randn(2, 3, generator=g, dtype=torch.float64)
        h, want = h0, []
        for t in range(steps):
            h = a[t] * h + b[t]
            want.append(h)
        torch.testing.assert_close(pytorch_kernel.linear_scan(a, b, h0), torch.stack(want))
        # the adjoint direction: g_t = b_t + a_{t+1} g_{t+1}, from g_S = h0 with a_S = a_end
        a_end = torch.rand(2, 3, generator=g, dtype=torch.float64)
        g_t, a_t1, back = h0, a_end, []
        for t in reversed(range(steps)):
            g_t = b[t] + a_t1 * g_t
            back.append(g_t)
            a_t1 = a[t]
        got = pytorch_kernel.reverse_linear_scan(a, b, h0, a_end)
        torch.testing.assert_close(got, torch.stack(back[::-1]))


def test_no_grad_inputs_and_float64_forward():
    inputs = make_inputs(1, 2, 9, 2, 1, has_D=True, has_z=False, has_bias=False,
                         dtype=torch.float64, requires_grad=False)
    out = selective_scan(*inputs)
    want, _, _ = reference_scan(*inputs)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile


@pytest.mark.parametrize("has_opt,softplus,groups,layout", [
    (False, False, 1, "3d"), (True, True, 2, "grouped"), (True, False, 2, "const_B"),
    (False, True, 1, "const_BC")])
def test_gradcheck_float64(has_opt, softplus, groups, layout):
    inputs = make_inputs(2, 4, 7, 3, groups, has_D=has_opt, has_z=has_opt, has_bias=has_opt,
                         dtype=torch.float64, layout=layout)
    inputs[2] = inputs[2].detach().to(torch.float64).requires_grad_(True)
    if has_opt:
        inputs[5] = inputs[5].detach().double().requires_grad_(True)
        inputs[7] = inputs[7].detach().double().requires_grad_(True)

    def fn(*xs):
        return selective_scan(*xs, delta_softplus=softplus, return_last_state=True)

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["grouped", "const_BC"])
def test_opcheck_forward_and_backward(layout):
    from torch.library import opcheck

    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 70, 4, 2, has_D=True, has_z=True,
                                                has_bias=True, layout=layout, requires_grad=False)
    opcheck(torch.ops.dispatchcount.selective_scan.default,
            (u, delta, A, B, C, D, z, bias, True, True))
    u.requires_grad_(True)
    A.requires_grad_(True)
    opcheck(torch.ops.dispatchcount.selective_scan.default,
            (u, delta, A, B, C, D, z, bias, True, True))
    u.requires_grad_(False)
    A.requires_grad_(False)
    _, _, states = torch.ops.dispatchcount.selective_scan(u, delta, A, B, C, D, z, bias, True, True)
    dout, dlast = torch.randn_like(u), torch.randn(2, 4, 4)
    opcheck(torch.ops.dispatchcount.selective_scan_backward.default,
            (dout, dlast, u, delta, A, B, C, D, z, bias, True, states))
    opcheck(torch.ops.dispatchcount.selective_scan_backward.default,
            (dout, None, u, delta, A, B, C, None, None, None, False, states))


def test_torch_compile_fullgraph():
    inputs = make_inputs(2, 4, 12, 4, 2, has_D=True, has_z=True, has_bias=True, layout="const_B")

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True).sum()

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, [t for t in inputs if t is not None])
    eager = fn(*inputs)
    egrads = torch.autograd.grad(eager, [t for t in inputs if t is not None])
    torch.testing.assert_close(loss, eager)
    for got, want in zip(grads, egrads):
        torch.testing.assert_close(got, want)


class _GraphSeen(Exception):
    pass


def _aot_forward_graph_ops(device):
    """The ops of the forward graph AOTAutograd (torch.compile's middle layer) traces for the op
    on fake tensors of ``device``: no data, so fake CUDA tensors work without a GPU."""
    from functorch.compile import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = []

    def record(gm, _):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        raise _GraphSeen  # tracing is all this test needs

    def fn(*xs):
        return torch.ops.dispatchcount.selective_scan(*xs, None, None, True, True)

    real = make_inputs(2, 4, 10, 3, 1, has_D=True, has_z=False, has_bias=False, layout="const_C",
                       requires_grad=False)[:6]
    with FakeTensorMode():
        xs = [torch.empty(t.shape, dtype=t.dtype, device=device) for t in real]
        with pytest.raises(_GraphSeen):
            aot_function(fn, fw_compiler=record)(*xs)
    return ops


def test_torch_compile_traces_into_the_triton_kernel_on_cuda_and_keeps_the_op_whole_on_cpu():
    """On CUDA the op is a triton_op: torch.compile sees its Triton kernel launch (and no
    custom-op call); on CPU the op stays one opaque node (its PyTorch kernel loops over time)."""
    pytest.importorskip("triton")
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from dispatchcount.kernels.scan import op, triton_kernels

    assert op.TRACEABLE  # torch >= 2.6
    cpu = _aot_forward_graph_ops("cpu")
    assert "dispatchcount.selective_scan.default" in cpu
    assert not any("triton" in name for name in cpu)
    cuda = _aot_forward_graph_ops("cuda")
    assert "dispatchcount.selective_scan.default" not in cuda
    assert "triton_kernel_wrapper_functional" in cuda
    assert triton_kernels._fwd_kernel in [kernel_side_table.get_kernel(i)
                                          for i in range(len(kernel_side_table.id_to_kernel))]
    # torch's compile caches key on the kernels a triton_op launches: both are found
    from torch._library.triton import get_triton_kernels_for_op

    assert triton_kernels._fwd_kernel in get_triton_kernels_for_op("dispatchcount::selective_scan")
    assert triton_kernels._bwd_kernel in get_triton_kernels_for_op(
        "dispatchcount::selective_scan_backward")


def test_meta_tensors_give_shapes_without_compute():
    meta = [t.to("meta") if t is not None else None
            for t in make_inputs(3, 8, 1000, 16, 4, has_D=True, has_z=True, has_bias=True,
                                 dtype=torch.bfloat16, requires_grad=False)]
    out, last, states = torch.ops.dispatchcount.selective_scan(*meta, True, True)
    assert out.shape == (3, 8, 1000) and out.dtype == torch.bfloat16 and out.device.type == "meta"
    assert last.shape == (3, 8, 16) and last.dtype == torch.float32
    assert states.shape == (3, 8, math.ceil(1000 / 64), 16)
    meta[3] = torch.empty(8, 16, device="meta")  # constant B: its gradient is (dim, N)
    grads = torch.ops.dispatchcount.selective_scan_backward(
        meta[0], None, *meta, True, states)
    assert [tuple(g.shape) for g in grads] == [(3, 8, 1000), (3, 8, 1000), (8, 16), (8, 16),
                                               (3, 4, 16, 1000), (8,), (3, 8, 1000), (8,)]


@pytest.mark.parametrize("sizes", [(0, 4, 10), (2, 4, 0), (0, 0, 0), (2, 0, 5)])
@pytest.mark.parametrize("layout", ["grouped", "const_BC"])
def test_empty_inputs(sizes, layout):
    """batch, dim or L of 0: empty output, zero last state, zero gradients (nothing depends on
    the inputs), with and without grad, on CPU and meta."""
    batch, dim, length = sizes
    groups = 2 if dim else 1
    inputs = make_inputs(batch, dim, length, 3, groups, has_D=True, has_z=True, has_bias=True,
                         layout=layout)
    with torch.no_grad():
        out = selective_scan(*inputs, delta_softplus=True)
    assert out.shape == (batch, dim, length)
    out, last = selective_scan(*inputs, delta_softplus=True, return_last_state=True)
    assert out.shape == (batch, dim, length) and torch.equal(last, torch.zeros(batch, dim, 3))
    loss = out.sum() + (last * 2).sum()
    grads = torch.autograd.grad(loss, inputs)
    for t, g in zip(inputs, grads):
        assert g.shape == t.shape and not g.any()
    meta = [t.detach().to("meta") for t in inputs]
    out, last, states = torch.ops.dispatchcount.selective_scan(*meta, True, True)
    assert out.shape == (batch, dim, length) and last.shape == (batch, dim, 3)


def test_does_not_need_triton():
    """dispatchcount imports without triton, and dispatchcount.kernels works without it (CPU)."""
    import subprocess

    code = ("import sys; sys.modules['triton'] = None\n"  # import triton -> ImportError
            "import dispatchcount, torch\n"
            "from dispatchcount.kernels import selective_scan\n"
            "from dispatchcount.kernels.scan import op\n"
            "assert op.triton_forward is None\n"
            "u = torch.randn(1, 2, 5)\n"
            "print(selective_scan(u, u.abs(), -torch.ones(2, 3), torch.randn(1, 3, 5), torch.randn(2, 3)).shape)\n"
            "try:\n"
            "    import dispatchcount.kernels.scan.triton_kernels\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stderr == ""  # no warning on import or on CPU
    assert run.stdout.splitlines() == [
        "torch.Size([1, 2, 5])",
        "the selective scan's Triton kernels need triton: pip install 'dispatchcount[triton]'"]


def test_triton_is_an_extra_not_a_dependency():
    """pip install dispatchcount pulls no triton; [triton] and [test] (what CI installs) do."""
    import re
    from importlib.metadata import requires

    triton = [r for r in requires("dispatchcount") if re.match(r"triton\b", r)]
    extras = sorted(m.group(1) for r in triton for m in [re.search(r'extra == "(\w+)"', r)] if m)
    assert len(triton) == 2 and extras == ["test", "triton"], triton


def test_cuda_without_triton_falls_back_to_pytorch_with_one_warning(monkeypatch):
    from dispatchcount.kernels.scan import op

    class FakeCudaTensor:  # runs_triton only reads the device and dtype
        device, dtype = torch.device("cuda"), torch.float32

    monkeypatch.setattr(op, "triton_forward", None)
    monkeypatch.setattr(op, "_warned_no_triton", False)
    with pytest.warns(RuntimeWarning, match=r"pip install 'dispatchcount\[triton\]'"):
        assert op.runs_triton(FakeCudaTensor()) is False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert op.runs_triton(FakeCudaTensor()) is False  # once only


def test_package_names_and_a_second_import_name():
    """``dispatchcount.kernels.selective_scan`` is the function and ``.scan`` its package; the
    checkout's ``kernels`` imported as a top-level name is the same package (ops defined once)."""
    import subprocess
    from pathlib import Path

    code = ("import types, torch, kernels, dispatchcount.kernels as dk\n"
            "import kernels.scan.op as alias_op, dispatchcount.kernels.scan.op as real_op\n"
            "import dispatchcount.kernels.scan as m\n"
            "assert kernels is dk and alias_op is real_op, (kernels, dk)\n"
            "assert isinstance(m, types.ModuleType) and callable(dk.selective_scan)\n"
            "assert dk.selective_scan is m.selective_scan\n"
            "from dispatchcount import FlopMode\n"
            "u = torch.randn(1, 2, 5)\n"
            "args = (u, u.abs(), -torch.ones(2, 3), torch.randn(1, 3, 5), torch.randn(1, 3, 5))\n"
            "with FlopMode() as fm:\n"
            "    kernels.selective_scan(*args)\n"
            "print(fm.by_operator())\n")
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    # 1*2*5 = 10 (b,d,l), N = 3: 10 * (7*3 + 1), once
    assert run.stdout.strip() == "{'dispatchcount.selective_scan': 220}"


# ----------------------------------------------------------------------------------------------
# Input validation: ValueError naming the argument, the shape it got and the shape it needs.


def _good(**over):
    t = dict(zip(["u", "delta", "A", "B", "C", "D", "z", "delta_bias"],
                 make_inputs(2, 8, 10, 4, 2, has_D=True, has_z=True, has_bias=True,
                             requires_grad=False)))
    t.update(over)
    return t


@pytest.mark.parametrize("over,pattern", [
    (dict(u=torch.randn(2, 8)), r"u has shape \(2, 8\), needs 3 dimensions \(batch, dim, L\)"),
    (dict(delta=torch.rand(2, 8, 11)), r"delta has shape \(2, 8, 11\), needs .*\(2, 8, 10\)"),
    (dict(z=torch.rand(2, 7, 10)), r"z has shape \(2, 7, 10\), needs .*\(2, 8, 10\)"),
    (dict(A=torch.randn(7, 4)), r"A has shape \(7, 4\), needs \(dim, N\) = \(8, N\)"),
    (dict(A=-torch.rand(8, 300)), r"A has shape \(8, 300\), needs .*N <= 256"),
    (dict(B=torch.randn(2, 3, 4, 10), C=torch.randn(2, 3, 4, 10)),
     r"B has shape \(2, 3, 4, 10\) \(G = 3 groups\), needs G dividing dim = 8"),
    (dict(B=torch.randn(2, 2, 5, 10)), r"B has shape \(2, 2, 5, 10\), needs .*\(2, 4, 10\)"),
    (dict(C=torch.randn(2, 4, 10)), r"C has shape \(2, 4, 10\), needs the shape of B \(2, 2, 4, 10\)"),
    (dict(D=torch.randn(4)), r"D has shape \(4,\), needs \(dim,\) = \(8,\)"),
    (dict(delta_bias=torch.randn(8, 1)), r"delta_bias has shape \(8, 1\), needs \(dim,\) = \(8,\)"),
    (dict(delta=torch.rand(2, 8, 10, dtype=torch.float16)),
     r"delta has dtype torch.float16, needs u's dtype torch.float32"),
    (dict(u=torch.randint(0, 3, (2, 8, 10))), r"u has dtype torch.int64, needs float32"),
    (dict(B=torch.randn(2, 2, 4, 10, dtype=torch.float64)), r"B has dtype torch.float64"),
    (dict(D=torch.randn(8, device="meta")), r"D is on device meta, needs u's device cpu"),
    (dict(D=1.0), r"D is a float, needs a torch.Tensor or None \(a \(dim,\) tensor, e.g. "
                  r"torch.full\(\(dim,\), 1.0\)\)"),
    (dict(delta_bias=[0.1] * 8), r"delta_bias is a list, needs a torch.Tensor or None"),
    (dict(B=[[1.0] * 10] * 4), r"B is a list, needs a torch.Tensor$"),
    (dict(u=None), r"u is a NoneType, needs a torch.Tensor"),
    (dict(A=-torch.rand(8, 4, dtype=torch.complex64)),
     r"A has dtype torch.complex64, needs a real dtype \(float32\): complex A .* is not supported"),
    (dict(B=torch.randn(8, 5)), r"B has shape \(8, 5\), needs \(dim, N\) = \(8, 4\) constant, "
                                r"\(batch, N, L\) = \(2, 4, 10\) or \(batch, G, N, L\)"),
    (dict(C=torch.randn(2, 1, 4, 10)),
     r"C has shape \(2, 1, 4, 10\), needs the shape of B \(2, 2, 4, 10\) \(or \(dim, N\) = \(8, 4\) constant\)"),
])
def test_bad_input_raises_value_error(over, pattern):
    with pytest.raises(ValueError, match=pattern):
        selective_scan(**_good(**over))


def test_non_contiguous_inputs_are_supported():
    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 30, 4, 2, has_D=True, has_z=True,
                                                has_bias=True, requires_grad=False)
    ut = u.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    Bt = B.transpose(-1, -2).contiguous().transpose(-1, -2)
    want = selective_scan(u, delta, A, B, C, D, z, bias)
    torch.testing.assert_close(selective_scan(ut, delta, A, Bt, C, D, z, bias), want)
    # .sum().backward() hands the backward an expanded (stride 0) gradient: same as a dense one
    leaves = [t.requires_grad_(True) for t in (u, delta, A, B)]
    got = torch.autograd.grad(selective_scan(u, delta, A, B, C, D, z, bias).sum(), leaves)
    dense = torch.autograd.grad(selective_scan(u, delta, A, B, C, D, z, bias),
                                leaves, torch.ones(2, 4, 30))
    for g, w in zip(got, dense):
        torch.testing.assert_close(g, w)


# ----------------------------------------------------------------------------------------------
# FLOP formulas, values derived by hand from docs/conventions.md.


def _meta(batch, dim, length, n, groups, has_D, has_z, has_bias):
    return [t.to("meta") if t is not None else None
            for t in make_inputs(batch, dim, length, n, groups, has_D=has_D, has_z=has_z,
                                 has_bias=has_bias, requires_grad=False)]


def test_forward_flop_formula_by_hand():
    fwd = torch.ops.dispatchcount.selective_scan.default
    # batch 2, dim 8, L 10, N 4: B*D*L = 160.
    # bare: per (b,d,l,n) 7 (delta*A 1, exp 1, *B 1, a*h + bx 2, C*h multiply-add 2), per (b,d,l)
    # 1 (delta*u): 160 * (7*4 + 1) = 4640.
    args = _meta(2, 8, 10, 4, 2, False, False, False)
    assert resolve(fwd, "flop")(*args, False, False) == 4640
    # all options, per (b,d,l): D*u + y 2; silu(z) 5 (pointwise table: x * sigmoid(x), sigmoid
    # = 1/(1+exp(-x)) 4) and the product 1; + delta_bias 1; softplus 6 (pointwise table):
    # 160 * (29 + 2 + 6 + 1 + 6) = 7040.
    args = _meta(2, 8, 10, 4, 2, True, True, True)
    assert resolve(fwd, "flop")(*args, True, False) == 7040
    # fvcore, VMamba's: 9*B*L*D*N + B*D*L (D) + B*D*L (z) = 9*160*4 + 160 + 160 = 6080.
    assert resolve(fwd, "fvcore")(*args, True, False) == 6080
    # trailing defaulted args absent, as a dispatch mode may pass them: u..C only.
    assert resolve(fwd, "fvcore")(*args[:5]) == 9 * 160 * 4
    # constant (dim, N) B and C: the same multiply-adds per (b,d,l,n), B[d,n] read at every step
    const = [*args[:3], torch.empty(8, 4, device="meta"), torch.empty(8, 4, device="meta"), *args[5:]]
    assert resolve(fwd, "flop")(*const, True, False) == 7040
    assert resolve(fwd, "fvcore")(*const, True, False) == 6080


def test_backward_flop_formula_by_hand():
    bwd = torch.ops.dispatchcount.selective_scan_backward.default
    u, delta, A, B, C, D, z, bias = _meta(2, 8, 10, 4, 2, True, True, True)
    dout, dlast = torch.empty_like(u), torch.empty(2, 8, 4, device="meta")
    states = torch.empty(2, 8, 1, 4, device="meta")
    # bare: per (b,d,l,n) 20, per (b,d,l) 4: 160 * (80 + 4) = 13440.
    got = resolve(bwd, "flop")(dout, None, u, delta, A, B, C, None, None, None, False, states)
    assert got == 13440
    # everything: per (b,d,l,n) 20 + 2 (y recompute for z) = 22 -> 88; per (b,d,l): 4;
    # z: sigmoid 4, dz = dout*pre*s*(1 + z(1 - s)) 6, dy = dout*z*s 2 -> 12; D: du += D*dy 2,
    # dD += dy*u 2, recomputed D*u + y for dz 2 -> 6; softplus: recompute 6, sigmoid 4,
    # product 1 -> 11; bias: add 1, sum 1 -> 2; 4 + 12 + 6 + 11 + 2 = 35; 160 * (88 + 35)
    # = 19680; dlast: + B*D*N = 64.
    got = resolve(bwd, "flop")(dout, dlast, u, delta, A, B, C, D, z, bias, True, states)
    assert got == 19680 + 64
    # fvcore: twice the forward's 6080.
    assert resolve(bwd, "fvcore")(dout, dlast, u, delta, A, B, C, D, z, bias, True, states) == 12160
    # constant B and C: dB = sum_{b,l} g*delta*u and dC = sum_{b,l} dy*h are the same
    # multiply-adds as the time-varying sums over d: the same counts.
    Bc, Cc = torch.empty(8, 4, device="meta"), torch.empty(8, 4, device="meta")
    got = resolve(bwd, "flop")(dout, dlast, u, delta, A, Bc, Cc, D, z, bias, True, states)
    assert got == 19680 + 64


# ----------------------------------------------------------------------------------------------
# Counting a model that calls the op: FlopMode finds the formulas by the op itself.


class _ScanBlock(torch.nn.Module):
    """in_proj -> selective scan (D, z, delta_bias, softplus) -> out_proj; B, C grouped."""

    def __init__(self, dim=8, n=4, groups=2):
        super().__init__()
        self.dim, self.n, self.groups = dim, n, groups
        self.in_proj = torch.nn.Linear(dim, 3 * dim + 2 * groups * n, bias=False)
        self.ssm = _Scan(dim, n)
        self.out_proj = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):  # x: (batch, L, dim)
        b, length, _ = x.shape
        u, delta, z, bc = self.in_proj(x).transpose(1, 2).split(
            [self.dim, self.dim, self.dim, 2 * self.groups * self.n], dim=1)
        B, C = bc.reshape(b, 2, self.groups, self.n, length).unbind(1)
        y = self.ssm(u, delta, B, C, z)
        return self.out_proj(y.transpose(1, 2))


class _Scan(torch.nn.Module):
    def __init__(self, dim, n):
        super().__init__()
        self.A_log = torch.nn.Parameter(torch.zeros(dim, n))
        self.D = torch.nn.Parameter(torch.ones(dim))
        self.delta_bias = torch.nn.Parameter(torch.zeros(dim))

    def forward(self, u, delta, B, C, z):
        return selective_scan(u, delta, -torch.exp(self.A_log), B, C, self.D, z, self.delta_bias,
                              delta_softplus=True)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_flopmode_counts_the_op_forward_and_backward(device):
    from dispatchcount import FlopMode

    torch.manual_seed(0)
    model = _ScanBlock().to(device)
    x = torch.randn(2, 10, 8, device=device)  # batch 2, L 10, dim 8, N 4: B*D*L = 160
    with FlopMode(model) as fm:
        out = model(x)
        out.sum().backward()
    assert fm.unsupported_ops() == {}
    fwd, bwd = fm.by_operator("forward"), fm.by_operator("backward")
    # forward with D, z, delta_bias, softplus: 7040 (test_forward_flop_formula_by_hand)
    assert fwd["dispatchcount.selective_scan"] == 7040
    # backward with D, z, delta_bias, softplus, no last-state gradient: 19680
    # (test_backward_flop_formula_by_hand)
    assert bwd["dispatchcount.selective_scan_backward"] == 19680
    assert "dispatchcount.selective_scan_backward" not in fwd
    # charged to the module that ran the op, forward and backward
    per_module = fm.by_module_and_operator()
    assert per_module["ssm"]["dispatchcount.selective_scan"] == 7040
    assert per_module["ssm"]["dispatchcount.selective_scan_backward"] == 19680

    with FlopMode(model, convention="fvcore") as fv:
        model(x).sum().backward()
    assert fv.unsupported_ops() == {}
    # VMamba's 9*B*L*D*N + B*D*L (D) + B*D*L (z) = 6080; backward twice that
    assert fv.by_operator("forward")["dispatchcount.selective_scan"] == 6080
    assert fv.by_operator("backward")["dispatchcount.selective_scan_backward"] == 12160


def test_counting_does_not_change_the_result():
    from dispatchcount import FlopMode

    torch.manual_seed(0)
    model = _ScanBlock()
    x = torch.randn(2, 10, 8)
    plain = model(x)
    with FlopMode(model):
        counted = model(x)
    assert torch.equal(plain, counted)

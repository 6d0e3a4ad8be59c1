"""The Triton kernels of the selective scan, run on CPU tensors by Triton's interpreter.

TRITON_INTERPRET=1 must be set before the kernels are compiled, and must not leak into other
tests of the same run: in a normal run this module's single test starts a child pytest on this
file with the variable set, and fails with the child's output. In the child (variable set) the
real cases below are collected. The interpreter runs every time step of every program as numpy
calls, so shapes are small (a few channels, N <= 16, L up to 3 chunks of 64 steps).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if not INTERPRETED:

    def test_triton_kernels_under_interpreter():
        pytest.importorskip("triton")
        env = dict(os.environ, TRITON_INTERPRET="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        assert run.returncode == 0, f"interpreter tests failed:\n{run.stdout[-8000:]}\n{run.stderr[-4000:]}"
        assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]

else:
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_selective_scan import compare_with_reference, make_inputs, reference_scan

    from dispatchcount.kernels import selective_scan, selective_scan_triton
    from dispatchcount.kernels.selective_scan import op, triton_kernels

    # (batch, dim, L, N, G, has_D, has_z, has_bias, softplus, B_3d); chunks are 64 steps here.
    CONFIGS = [
        (2, 4, 37, 4, 2, True, True, True, True, False),
        (1, 4, 130, 4, 2, False, True, False, True, False),   # 3 chunks, ragged last
        (2, 3, 64, 3, 1, True, False, True, False, True),     # exactly one chunk, B (batch, N, L)
        (1, 8, 70, 1, 2, False, False, False, False, False),  # N = 1
        (1, 2, 20, 16, 1, True, True, False, False, False),   # N = 16
        (2, 6, 1, 2, 2, True, True, True, True, False),       # L = 1
        (1, 12, 45, 2, 4, False, False, True, True, False),
    ]

    # Same tolerances as the CPU kernel's tests (see test_selective_scan.py).
    @pytest.mark.parametrize("cfg", CONFIGS)
    def test_triton_forward_and_gradients_fp32(cfg):
        compare_with_reference(selective_scan_triton, cfg, torch.float32, rtol=1e-4, atol_frac=1e-4)

    @pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[4]])
    def test_triton_forward_and_gradients_bf16(cfg):
        compare_with_reference(selective_scan_triton, cfg, torch.bfloat16, rtol=1e-2, atol_frac=1e-2)

    def test_triton_forward_and_gradients_fp16():
        compare_with_reference(selective_scan_triton, CONFIGS[0], torch.float16, rtol=2e-3,
                               atol_frac=2e-3)

    @pytest.mark.parametrize("block_d,steps,keep_decay", [(1, 4, False), (2, 1, True), (4, 8, True)])
    def test_triton_kernel_tilings(block_d, steps, keep_decay):
        """Other tile shapes than the defaults: channel blocks that do not divide the group,
        other step counts, and the backward variant that keeps the decays in registers."""
        u, delta, A, B, C, D, z, bias = make_inputs(1, 6, 70, 3, 2, has_D=True, has_z=True,
                                                    has_bias=True, requires_grad=False)
        dout, dlast = torch.randn_like(u), torch.randn(1, 6, 3)
        want_fwd = torch.ops.dispatchcount.selective_scan(u, delta, A, B, C, D, z, bias, True, True)
        got_fwd = triton_kernels.forward(u, delta, A, B, C, D, z, bias, True, True,
                                         block_d=block_d, steps=steps)
        for name, g, w in zip(["out", "last_state", "states"], got_fwd, want_fwd):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
        want = torch.ops.dispatchcount.selective_scan_backward(
            dout, dlast, u, delta, A, B, C, D, z, bias, True, u.new_empty(1, 6, 0, 3))
        got = triton_kernels.backward(dout, dlast, u, delta, A, B, C, D, z, bias, True,
                                      got_fwd[2], block_d=block_d, steps=steps,
                                      keep_decay=keep_decay)
        for name, g, w in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias"], got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item(),
                                       msg=lambda m: f"{name}: {m}")

    def test_triton_states_match_the_reference_and_backward_recomputes_them():
        inputs = make_inputs(1, 4, 130, 4, 2, has_D=True, has_z=False, has_bias=True,
                             requires_grad=False)
        out, last, states = triton_kernels.forward(*inputs, True, True)
        _, _, hs = reference_scan(*inputs, delta_softplus=True)
        torch.testing.assert_close(states.double(), hs[:, :, [63, 127, 129]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(last.double(), hs[:, :, -1], rtol=1e-4, atol=1e-5)
        dout = torch.randn_like(out)
        with_states = triton_kernels.backward(dout, None, *inputs, True, states)
        recomputed = triton_kernels.backward(dout, None, *inputs, True, None)
        for a, b in zip(with_states, recomputed):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_cuda_registration_runs_the_triton_kernels():
        """The op's CUDA kernels, called directly on CPU tensors (the interpreter runs them)."""
        inputs = make_inputs(2, 4, 30, 4, 2, has_D=True, has_z=True, has_bias=True,
                             requires_grad=False)
        out, last, states = op._fwd_cuda(*inputs, True, True)
        want = torch.ops.dispatchcount.selective_scan(*inputs, True, True)
        for g, w in zip((out, last, states), want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
        dout = torch.randn_like(out)
        got = op._bwd_cuda(dout, None, *inputs, True, states)
        want = torch.ops.dispatchcount.selective_scan_backward(dout, None, *inputs, True, states)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * max(w.abs().max().item(), 1))

    def test_triton_non_contiguous_inputs():
        u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 40, 4, 2, has_D=True, has_z=True,
                                                    has_bias=True, requires_grad=False)
        ut = u.transpose(0, 1).contiguous().transpose(0, 1)
        Bt = B.transpose(-1, -2).contiguous().transpose(-1, -2)
        At = A.t().contiguous().t()
        want = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True)
        got = selective_scan_triton(ut, delta, At, Bt, C, D, z, bias, delta_softplus=True)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        # .sum().backward() hands the backward an expanded (stride 0) gradient
        leaves = [t.requires_grad_(True) for t in (u, delta, A)]
        want = torch.autograd.grad(selective_scan(u, delta, A, B, C, D, z, bias).sum(), leaves)
        got = torch.autograd.grad(selective_scan_triton(u, delta, A, B, C, D, z, bias).sum(), leaves)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item())

    def test_triton_rejects_float64():
        inputs = make_inputs(1, 2, 5, 2, 1, has_D=False, has_z=False, has_bias=False,
                             dtype=torch.float64, requires_grad=False)
        with pytest.raises(ValueError, match=r"u has dtype torch.float64, needs float32, float16 or bfloat16"):
            selective_scan_triton(*inputs)

"""The Triton kernels of the selective scan, run on CPU tensors by Triton's interpreter.

TRITON_INTERPRET=1 must be set before the kernels are compiled, and must not leak into other
tests of the same run: in a normal run this module's single test starts a child pytest on this
file with the variable set, and fails with the child's output. In the child (variable set) the
real cases below are collected. They run the op itself (forward op, autograd, backward op) with
its device routing pointed at the Triton kernels for CPU tensors, so the path tested is the one
CUDA tensors take. The interpreter runs every time step of every program as numpy calls, so
shapes are small: a few channels, N <= 16, L up to two chunks of 64 steps.
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

    from dispatchcount.kernels import selective_scan
    from dispatchcount.kernels.scan import op, pytorch_kernel, triton_kernels
    from dispatchcount.kernels.scan.validation import ScanInputs

    @pytest.fixture(autouse=True)
    def triton_on_cpu(monkeypatch):
        """Route CPU tensors to the Triton kernels, as the op routes CUDA tensors."""
        monkeypatch.setattr(op, "runs_triton", lambda u: u.dtype != torch.float64)

    # (batch, dim, L, N, G, has_D, has_z, has_bias, softplus, layout); chunks are 64 steps here.
    CONFIGS = [
        (1, 2, 37, 4, 2, True, True, True, True, "grouped"),     # everything, G = 2, ragged
        (1, 1, 70, 2, 1, False, True, False, True, "const_B"),   # 2 chunks, ragged last; const B
        (1, 4, 20, 3, 2, True, False, True, False, "const_C"),   # C constant, B with G = 2
        (1, 2, 9, 16, 1, True, True, False, False, "const_BC"),  # N = 16, both constant
        (2, 2, 1, 1, 1, False, False, False, False, "3d"),       # batch 2, L = 1, N = 1
    ]

    # Same tolerances as the CPU kernel's tests (see test_selective_scan.py).
    @pytest.mark.parametrize("cfg", CONFIGS)
    def test_triton_forward_and_gradients_fp32(cfg):
        compare_with_reference(selective_scan, cfg, torch.float32, rtol=1e-4, atol_frac=1e-4)

    # half precision: out and the gradients rounded to bf16 (2^-8) or fp16 (2^-11)
    @pytest.mark.parametrize("dtype,tol,cfg", [(torch.bfloat16, 1e-2, CONFIGS[2]),
                                               (torch.bfloat16, 1e-2, CONFIGS[3]),
                                               (torch.float16, 2e-3, CONFIGS[3])])
    def test_triton_forward_and_gradients_half(dtype, tol, cfg):
        compare_with_reference(selective_scan, cfg, dtype, rtol=tol, atol_frac=tol)

    @pytest.mark.parametrize("block_d,steps,keep_decay,layout", [
        (2, 4, False, "grouped"), (4, 1, True, "const_BC")])  # 3 channels: 2 blocks of 2; 1 of 4
    def test_triton_kernel_tilings(block_d, steps, keep_decay, layout):
        """Other tile shapes than the defaults: channel blocks that do not divide the group,
        other step counts, the backward variant that keeps the decays in registers; against the
        PyTorch kernel, with non-contiguous u, A and B."""
        u, delta, A, B, C, D, z, bias = make_inputs(1, 3, 20, 3, 1, has_D=True, has_z=True,
                                                    has_bias=True, layout=layout,
                                                    requires_grad=False)
        x = ScanInputs(u, delta, A, B, C, D, z, bias)
        strided = ScanInputs(u.transpose(0, 1).contiguous().transpose(0, 1), delta,
                             A.t().contiguous().t(), B.transpose(-1, -2).contiguous().transpose(-1, -2),
                             C, D, z, bias)
        dout, dlast = torch.randn_like(u), torch.randn(1, 3, 3)
        want_fwd = pytorch_kernel.forward(x, True, True)
        got_fwd = triton_kernels.forward(strided, True, True, block_d=block_d, steps=steps)
        for name, g, w in zip(["out", "last_state", "states"], got_fwd, want_fwd):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
        want = pytorch_kernel.backward(dout, dlast, x, True)
        got = triton_kernels.backward(dout, dlast, strided, True, got_fwd[2], block_d=block_d,
                                      steps=steps, keep_decay=keep_decay)
        for name, g, w in zip(["du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias"], got, want):
            assert g.shape == w.shape and g.is_contiguous(), name
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item(),
                                       msg=lambda m: f"{name}: {m}")

    def test_triton_states_match_the_reference_and_backward_recomputes_them():
        inputs = make_inputs(1, 1, 66, 2, 1, has_D=True, has_z=False, has_bias=True,
                             requires_grad=False)
        x = ScanInputs(*inputs)
        out, last, states = triton_kernels.forward(x, True, True)
        _, _, hs = reference_scan(*inputs, delta_softplus=True)
        torch.testing.assert_close(states.double(), hs[:, :, [63, 65]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(last.double(), hs[:, :, -1], rtol=1e-4, atol=1e-5)
        dout = torch.randn_like(out)
        with_states = triton_kernels.backward(dout, None, x, True, states)
        recomputed = triton_kernels.backward(dout, None, x, True, None)
        for a, b in zip(with_states, recomputed):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_flopmode_counts_the_triton_path():
        from dispatchcount import FlopMode

        inputs = make_inputs(1, 2, 5, 3, 1, has_D=False, has_z=False, has_bias=False)
        with FlopMode() as fm:
            selective_scan(*inputs).sum().backward()
        # B*D*L = 10, N = 3: forward 10 * (7*3 + 1) = 220; backward 10 * (20*3 + 4) = 640
        scan = {op: n for op, n in fm.by_operator().items() if op.startswith("dispatchcount.")}
        assert scan == {"dispatchcount.selective_scan": 220,
                        "dispatchcount.selective_scan_backward": 640}

    def test_triton_rejects_float64():
        inputs = make_inputs(1, 2, 5, 2, 1, has_D=False, has_z=False, has_bias=False,
                             dtype=torch.float64, requires_grad=False)
        with pytest.raises(ValueError, match=r"u has dtype torch.float64, needs float32, float16 or bfloat16"):
            triton_kernels.forward(ScanInputs(*inputs))

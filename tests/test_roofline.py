"""Roofline estimates, device specs and MFU/HFU, derived by hand from the vendors' datasheets."""

import json

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dispatchcount import DeviceSpec, FlopMode, devices

# H100 SXM, dense (NVIDIA H100 architecture whitepaper, SXM5; datasheet bandwidth).
H100_BF16_TENSOR, H100_BF16_VECTOR, H100_FP32, H100_TF32, H100_BW = 989.4e12, 133.8e12, 66.9e12, 494.7e12, 3.35e12
M, D, H = 4096, 1024, 4096  # tokens, model width, hidden width
BF16 = 2


def mlp(dtype=torch.bfloat16, device="meta"):
    return nn.Sequential(nn.Linear(D, H, dtype=dtype, device=device), nn.ReLU(),
                         nn.Linear(H, D, dtype=dtype, device=device))


@pytest.fixture(scope="module")
def mlp_run():
    model = mlp()
    x = torch.empty(M, D, dtype=torch.bfloat16, device="meta")
    with FlopMode(model, metrics=("flops", "bytes")) as fm, torch.no_grad():
        model(x)
    return fm


def by_hand():
    """(FLOPs, bytes, compute s, memory s) of the three ops of the MLP forward on the H100."""
    up_flops, down_flops, relu_flops = 2 * M * H * D, 2 * M * D * H, M * H
    up_bytes = (H + M * D + D * H + M * H) * BF16  # addmm: bias, x, W1^T read; output written
    relu_bytes = 2 * M * H * BF16
    down_bytes = (D + M * H + H * D + M * D) * BF16
    return {
        "0": (up_flops, up_bytes, up_flops / H100_BF16_TENSOR, up_bytes / H100_BW),
        "1": (relu_flops, relu_bytes, relu_flops / H100_BF16_VECTOR, relu_bytes / H100_BW),
        "2": (down_flops, down_bytes, down_flops / H100_BF16_TENSOR, down_bytes / H100_BW),
    }


def test_two_layer_mlp_roofline_on_h100_by_hand(mlp_run):
    ops = by_hand()
    est = mlp_run.roofline("h100-sxm")
    seconds = {name: max(c, m) for name, (_, _, c, m) in ops.items()}
    got = est.by_module()
    for name, expected in seconds.items():
        assert got[name] == pytest.approx(expected, rel=1e-12)
    assert est.seconds() == pytest.approx(sum(seconds.values()), rel=1e-12)
    assert got[""] == pytest.approx(sum(seconds.values()), rel=1e-12)
    # Both products are compute-bound (intensity ~ 680 FLOP/B above H100's ridge, ~295), the
    # ReLU is memory-bound; the model spends most of its time in compute-bound ops.
    assert est.bound() == {"": "compute", "0": "compute", "1": "memory", "2": "compute"}
    assert est.intensity()["1"] == pytest.approx(ops["1"][0] / ops["1"][1])
    assert mlp_run.by_module(metric="bytes")["0"] == ops["0"][1]


def test_table_and_dict_carry_the_roofline(mlp_run):
    text = mlp_run.roofline("h100-sxm").table(depth=1)
    header = text.splitlines()[1]
    for column in ("FLOPs", "bytes", "FLOP/B", "est. time", "bound", "% time"):
        assert column in header
    assert any(line.split()[:1] == ["1"] and "memory" in line for line in text.splitlines())
    report = mlp_run.to_dict(device="h100-sxm")
    json.dumps(report)
    ops = by_hand()
    assert report["metrics"] == ["flops", "bytes"]
    assert report["device"]["name"] == "h100-sxm"
    assert report["device"]["peak_flops"] == H100_BF16_TENSOR and report["device"]["bandwidth"] == H100_BW
    assert report["modules"]["1"]["bytes"] == ops["1"][1]
    assert report["modules"]["1"]["bound"] == "memory"
    assert report["modules"]["0"]["estimated_seconds"] == pytest.approx(ops["0"][2])
    assert "est. time" in mlp_run.table(device="h100-sxm")


def test_tf32_option_counts_fp32_products_at_the_tf32_peak():
    model = mlp(torch.float32)
    x = torch.empty(M, D, device="meta")
    with FlopMode(model, metrics=("flops", "bytes")) as fm, torch.no_grad():
        model(x)
    flops = 2 * M * H * D
    assert fm.roofline("h100-sxm").by_module()["0"] == pytest.approx(flops / H100_FP32)
    assert fm.roofline("h100-sxm", tf32=True).by_module()["0"] == pytest.approx(flops / H100_TF32)


def test_mfu_and_hfu_with_activation_checkpointing():
    m, d, h = 8, 16, 32
    model = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, d))
    x = torch.randn(m, d, requires_grad=True)
    with FlopMode(model, metrics=("flops",)) as fm:
        checkpoint(model, x, use_reentrant=False).sum().backward()
    # Non-reentrant checkpointing recomputes until every saved tensor is back: the first product
    # and the ReLU (the second product's output is not saved, so it is not recomputed).
    recompute = 2 * m * h * d + m * h
    seconds = 1e-3
    model_flops, hardware_flops = fm.total() - recompute, fm.total()
    assert fm.mfu(seconds, "h100-sxm") == pytest.approx(model_flops / H100_FP32 / seconds)
    assert fm.hfu(seconds, "h100-sxm") == pytest.approx(hardware_flops / H100_FP32 / seconds)
    assert fm.total("recompute") == recompute


def test_custom_device_spec():
    toy = DeviceSpec("toy", bandwidth=1e9, peaks={"float32": 1e12})  # one number: both units
    x = torch.randn(1000)
    with FlopMode(metrics=("flops", "bytes")) as fm:
        x.exp()
    est = fm.roofline(toy)
    assert est.seconds() == pytest.approx(max(1000 / 1e12, 8000 / 1e9))
    assert est.bound() == {"": "memory"}
    assert toy.peak("float32", "tensor") == toy.peak(torch.float32, "vector") == 1e12


def test_built_in_specs_are_the_datasheets_dense_figures():
    assert set(devices) == {"a100-sxm-80gb", "h100-sxm", "h200", "b200", "l4", "mi300x"}
    assert all(spec.source and spec.bandwidth > 0 for spec in devices.values())
    h100 = devices["h100-sxm"]
    assert (h100.peak("bfloat16"), h100.peak("bfloat16", "vector"), h100.peak("float32"), h100.bandwidth) == (
        H100_BF16_TENSOR, H100_BF16_VECTOR, H100_FP32, H100_BW)
    assert h100.peak(torch.float8_e5m2) == 1978.9e12  # every fp8 format: the fp8 peak
    assert devices["h200"].bandwidth == 4.8e12 and devices["h200"].peak("bfloat16") == H100_BF16_TENSOR
    assert devices["a100-sxm-80gb"].peak("tf32") == 156e12 and devices["a100-sxm-80gb"].bandwidth == 2039e9
    assert devices["b200"].peak("bfloat16") == 4.5e15 / 2  # 4.5 PFLOPS with sparsity
    assert devices["l4"].peak("float8") == 485e12 / 2 and devices["l4"].bandwidth == 300e9
    assert devices["mi300x"].peak("bfloat16") == 1307.4e12 and devices["mi300x"].bandwidth == 5.3e12
    assert devices["mi300x"].peak(torch.complex64, "vector") == 163.4e12  # complex64 computes in fp32


def test_clear_errors():
    x = torch.randn(4, 4)
    with FlopMode() as flops_only:
        x @ x
    with pytest.raises(ValueError, match=r"metrics=\(\.\.\., 'bytes'\)"):
        flops_only.roofline("h100-sxm")
    with FlopMode(convention="fvcore", metrics=("flops", "bytes")) as fvcore:
        x @ x
    with pytest.raises(ValueError, match="convention='flop'"):
        fvcore.roofline("h100-sxm")
    with pytest.raises(ValueError, match="convention='flop'"):
        fvcore.mfu(1.0, "h100-sxm")
    with pytest.raises(ValueError, match="one of .*h100-sxm"):
        flops_only.mfu(1.0, "h100")
    with pytest.raises(ValueError, match="seconds must be a positive number"):
        flops_only.mfu(0, "h100-sxm")
    with pytest.raises(ValueError, match="no peak for dtype 'float32'"):
        flops_only.mfu(1.0, DeviceSpec("bf16-only", 1e12, peaks={"bfloat16": {"tensor": 1e15}}))
    with pytest.raises(ValueError, match="bandwidth must be a positive"):
        DeviceSpec("bad", 0)
    with pytest.raises(ValueError, match="unit must be 'tensor' or 'vector'"):
        DeviceSpec("bad", 1e12, peaks={"float32": {"matrix": 1e12}})

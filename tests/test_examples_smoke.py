"""Smoke tests: every example runs from the repository root, as the README says, and prints the
numbers it claims. Expected values are derived here by hand (or, for VMamba, by the derivation in
test_examples_vmamba.py), never copied from a run."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_examples_vmamba import fvcore_einsum, s1l8_fvcore_flops, ss2d_einsums, v0_fvcore_flops

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 600) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def line_with(text: str, prefix: str) -> str:
    lines = [line for line in text.splitlines() if line.strip().startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in:\n{text}"
    return lines[0]


def ints(line: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", line)]


def test_readme_cli_command_counts_vmamba_tiny_v0_on_meta():
    out = run("-m", "dispatchcount", "examples.vmamba:vmamba_tiny_v0", "--input-shape", "1,3,224,224",
              "--device", "meta", "--convention", "fvcore", "--json")
    report = json.loads(out)
    assert report["total"] == v0_fvcore_flops()
    assert report["unsupported_ops"] == {}


@pytest.fixture(scope="module")
def count_vmamba_output() -> str:
    return run("examples/count_vmamba.py")


def test_count_vmamba_reports_published_figures(count_vmamba_output):
    out = count_vmamba_output
    v0, s1l8 = out.split("=== vmamba_tiny_s1l8")
    assert "22,893,448" in line_with(v0, "params:")  # 22.9M published
    assert "30,249,064" in line_with(s1l8, "params:")  # 30.2M published
    assert f"{v0_fvcore_flops() / 1e9:.3f} (published 5.63" in line_with(v0, "GFLOPs, fvcore:")
    assert f"{s1l8_fvcore_flops() / 1e9:.3f} (published 4.91" in line_with(s1l8, "GFLOPs, fvcore:")
    for part in (v0, s1l8):
        assert "unsupported ops: none, none" in line_with(part, "counted in")
        assert "table, convention='fvcore'" in part and "table, convention='flop'" in part
        assert re.search(r"^ +layers\.2\.0 ", part, re.M)  # depth 3: the blocks are rows


def test_count_vmamba_charges_raw_parameter_einsums_to_ss2d(count_vmamba_output):
    line = line_with(count_vmamba_output, "ops layers.0.0.ss2d ran itself:")
    own = ast.literal_eval(line.split("itself:", 1)[1].strip())
    L, d, k, n, r = 56 * 56, 192, 4, 16, 6
    assert own["dispatchcount.selective_scan"] == 9 * L * k * d * n + L * k * d
    einsum_ops = {op: v for op, v in own.items() if op != "dispatchcount.selective_scan"}
    assert sum(einsum_ops.values()) == ss2d_einsums(L, d, n, r, fvcore_einsum)


def test_count_vmamba_drop_path_and_real_backward(count_vmamba_output):
    out = count_vmamba_output
    assert ints(line_with(out, "eval:"))[0] == 0
    assert ints(line_with(out, "train:"))[0] > 0
    assert line_with(out, "output bit-identical to an uncounted run:").endswith("True")
    assert line_with(out, "every parameter has a finite gradient:").endswith("True")
    real = out.split("=== real forward + backward")[1]
    assert "unsupported ops: none" in real


def test_count_transformer():
    out = run("examples/count_transformer.py")
    # GPTConfig defaults: vocab 512, context 64, dim 128, heads 4, layers 2, MLP x4; batch 2.
    B, T, d, h, layers, vocab, hidden = 2, 64, 128, 4, 2, 512, 512
    linear = 2 * B * T * (layers * (3 * d * d + d * d + 2 * d * hidden) + d * vocab)
    scores = layers * B * h * T * T
    attention = 4 * scores * (d // h) + 8 * scores  # QK^T, PV; scale and softmax 6, dropout 2
    assert ints(line_with(out, "linear + tied head matmuls:")) == [linear, linear]
    assert ints(line_with(out, "causal attention:")) == [attention, attention]
    head = ints(line_with(out, "tied head F.linear"))
    assert head[0] == head[-2] == 2 * B * T * d * vocab and head[-1] == 0  # root, by hand, tok_emb
    assert out.count("unsupported ops: none") == 2
    assert out.count("backward") >= 2


def test_custom_op_formula():
    out = run("examples/custom_op_formula.py")
    n, d, m = 32, 16, 64
    assert "unsupported ops: {'demo.rbf_kernel': 1}" in out
    assert f"'demo.rbf_kernel': {3 * n * m * d + 2 * n * m}" in out  # "flop"
    assert f"'demo.rbf_kernel': {n * m * d}" in out  # "fvcore"
    backward = line_with(out, "backward by operator:")
    assert "aten.mm" in backward  # the backward's matmuls are counted, in the backward phase
    big = 3 * 8192 * 4096 * 256 + 2 * 8192 * 4096
    assert ints(line_with(out, "demo.rbf_kernel on"))[-1] == big
    assert line_with(out, "gradcheck:").endswith("True")


def test_migrate_from_fvcore():
    pytest.importorskip("fvcore")  # in the test extra; the script itself runs without it
    out = run("examples/migrate_from_fvcore.py", "--image", "32")  # the README's 64 costs 4x the scan's time
    assert out.count("totals equal: True") == 2
    assert out.count("differing: none") == 2
    bare = out.split("fvcore with no handle")[1]
    assert "dispatchcount::selective_scan" in line_with(bare, "fvcore:")
    # 32x32: stage grids 8, 4, 2, 1; the scan runs over K*d_inner = 8c channels, N = 16, with D.
    scan = sum(depth * (9 * g * g * 8 * c * 16 + g * g * 8 * c)
               for c, g, depth in zip((96, 192, 384, 768), (8, 4, 2, 1), (2, 2, 9, 2)))
    assert ints(line_with(bare, "missing from fvcore's total:"))[0] == scan


def test_bench_overhead_runs_and_prints_the_ratios():
    out = run("examples/bench_overhead.py", "--blocks", "2", "--repeats", "1", "--no-llama")
    for mode in ("plain", "no-op TorchDispatchMode", "FlopCounterMode", "FlopMode"):
        assert line_with(out, mode)
    assert "added per op / no-op mode's" in out and "added per op / FlopCounterMode's" in out
    assert line_with(out, "FlopMode flops+bytes added per op / no-op mode's")
    assert line_with(out, "FlopMode flops+time added per op / no-op mode's")


def test_bench_selective_scan_runs_on_cpu():
    out = run("examples/bench_selective_scan.py", "--cpu-repeat", "1", "--tiny")
    assert "naive loop" in out
    assert len([line for line in out.splitlines() if line.rstrip().endswith("x")]) >= 4


def test_roofline_vs_measured_cpu_path_at_tiny_sizes():
    out = run("examples/roofline_vs_measured.py", "--tiny", "--device", "cpu", "--repeats", "1", "--warmup", "1")
    llama, vit = out.split("=== vit-b/16")
    # Llama block: batch 2, seq 16, d 64, 4 heads, MLP 128. q, k, v, o and the three MLP
    # products, then QK^T and PV over all 16 x 16 pairs (causal is counted dense), and the
    # attention's scaling and softmax, 6 per score (one op, docs/conventions.md).
    tokens, d, hidden = 2 * 16, 64, 128
    products = 4 * 2 * tokens * d * d + 3 * 2 * tokens * d * hidden + 4 * 2 * 16 * 16 * d + 6 * 2 * 4 * 16 * 16
    assert ints(line_with(llama, "forward products"))[0] == products
    # ViT: 32x32 images in 16x16 patches: 4 patches + the class token; d 64, MLP 128, 2 blocks, 10 classes.
    b, patches, n, d, mlp, heads = 2, 4, 5, 64, 128, 2
    block = 2 * b * n * d * (3 * d + d + 2 * mlp) + 4 * b * n * n * d + 6 * b * heads * n * n
    products = 2 * b * patches * 3 * 16 * 16 * d + 2 * block + 2 * b * d * 10
    assert ints(line_with(vit, "forward products"))[0] == products
    for part in (llama, vit):
        for header in ("est. time", "bound", "measured", "roofline %"):
            assert header in part
        assert line_with(part, "MFU") and line_with(part, "plain step:")
        assert "unsupported ops: none" in part
def test_llm_accounting_small():
    out = run("examples/llm_accounting.py", "--small")
    training, decode = out.split("== one decode step")
    # --small: 2 layers, width 64, 4 heads of 16, SwiGLU 160, vocabulary 256, batch 2 x 32 tokens
    L, d, H, m, V, T, B = 2, 64, 4, 160, 256, 32, 2
    Q, tokens = d // H, B * T
    weights = L * (4 * d * d + 3 * d * m)
    N = weights + 2 * V * d + (2 * L + 1) * d
    S, causal = B * L * H * T * T, B * L * H * T * (T + 1) // 2

    def column(text, name, index):
        row = [c for c in re.split(r"\s{2,}", line_with(text, name).strip()) if c]
        return int(row[index].replace(",", ""))

    assert column(training, "6 N T", 1) == 6 * N * tokens
    assert column(training, "PaLM", 1) == (6 * N + 12 * L * H * Q * T) * tokens
    assert column(training, "Megatron 72", 1) == round(72 * B * T * L * d * d * (1 + T / (6 * d) + V / (12 * L * d)))
    assert column(training, "weight matmuls", 1) == 6 * tokens * weights    # forward 2, backward 4
    assert column(training, "lm_head", 1) == 6 * tokens * d * V
    assert column(training, "embedding", 1) == tokens * d                    # backward: one add per gradient element
    # attention, dense: Q K^T and P V forward, five products backward, 6 + 5 per score
    assert column(training, "attention", 1) == 14 * S * Q + 11 * S
    dense, effective = column(training, "counted, dense", 1), column(training, "counted, effective", 1)
    assert dense - effective == (14 * Q + 11) * (S - causal)
    assert "equal: True" in line_with(training, "- recompute")
    assert column(decode, "weight matmuls", 1) == 2 * weights
    assert column(decode, "lm_head", 1) == 2 * d * V
    assert column(decode, "embedding", 1) == 0
    assert column(decode, "attention", 1) == L * H * (T + 1) * (4 * Q + 6)  # one query, the cache and itself
    assert column(decode, "total", 2) == 2 * N

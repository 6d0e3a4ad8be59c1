"""python -m dispatchcount: the table, JSON, and one-line errors for user mistakes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return subprocess.run([sys.executable, "-m", "dispatchcount", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_table_for_a_factory_on_meta():
    result = run("examples.llama:llama_tiny", "--input-shape", "1,16", "--input-dtype", "int64", "--device", "meta", "--depth", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "convention: flop"
    assert any(line.startswith("model") and "28.8K" in line for line in lines)  # 28,768 parameters
    assert any(line.strip().startswith("lm_head") for line in lines)
    assert not any(line.strip().startswith("layers.0") for line in lines)  # deeper than depth 1


def test_json_report_with_backward():
    result = run("examples.llama:llama_tiny", "--input-shape", "2,8", "--input-dtype", "int64", "--json", "--backward")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # lm_head forward: 2 * tokens * dim * vocab; backward: its weight and input gradients.
    assert report["by_module_and_operator"]["lm_head"]["aten.mm"] == 3 * 2 * 16 * 32 * 128
    assert report["forward"] + report["backward"] == report["total"]
    assert report["convention"] == "flop"


@pytest.mark.parametrize(
    "args, message",
    [
        (["nomodule", "--input-shape", "1"], "'package.module:factory'"),
        (["no_such_module_xyz:f", "--input-shape", "1"], "cannot import module 'no_such_module_xyz'"),
        (["examples.llama:nope", "--input-shape", "1"], "has no attribute 'nope'"),
        (["examples.llama:llama_tiny", "--input-shape", "1,3,4"], "running the model on inputs of shape (1, 3, 4) raised"),
        (["examples.llama:Llama", "--input-shape", "1,4"], "examples.llama:Llama() raised TypeError"),
    ],
)
def test_user_mistakes_give_one_line_and_nonzero_exit(args, message):
    result = run(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"dispatchcount: error: {result.stderr.split('error: ', 1)[1].strip()}"]
    assert message in result.stderr


def test_bad_input_shape_is_an_argument_error():
    result = run("examples.llama:llama_tiny", "--input-shape", "1,a")
    assert result.returncode == 2
    assert "--input-shape" in result.stderr and "1,a" in result.stderr
    assert "Traceback" not in result.stderr


def test_traceback_flag_shows_the_cause():
    result = run("examples.llama:Llama", "--input-shape", "1,4", "--traceback")
    assert result.returncode == 1
    assert "Traceback" in result.stderr



def run_in_process(capsys, *args):
    """The CLI in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from dispatchcount.cli import main

    try:
        code = main(list(args))
    except SystemExit as exit:  # argparse errors
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_metrics_and_device_spec_add_bytes_and_roofline_columns(capsys):
    code, out, err = run_in_process(capsys, "examples.llama:llama_tiny", "--input-shape", "1,16", "--input-dtype",
                                    "int64", "--device", "meta", "--depth", "1", "--metrics", "flops,bytes",
                                    "--device-spec", "h100-sxm")
    assert code == 0, err
    header = out.splitlines()[1].split()
    assert header[-5:] == ["bytes", "FLOP/B", "est.", "time", "bound"]
    assert "roofline: h100-sxm" in out


def test_json_carries_bytes_and_the_device(capsys):
    code, out, err = run_in_process(capsys, "examples.llama:llama_tiny", "--input-shape", "1,8", "--input-dtype",
                                    "int64", "--device", "meta", "--json", "--device-spec", "h100-sxm")
    assert code == 0, err
    report = json.loads(out)
    assert report["metrics"] == ["flops", "bytes"]  # --device-spec records bytes
    assert report["device"]["name"] == "h100-sxm" and report["device"]["bandwidth"] == 3.35e12
    # lm_head: (8, 32) @ (32, 128) in fp32: reads x and W, writes the logits.
    lm_head = report["modules"]["lm_head"]
    assert lm_head["bytes"] == (8 * 32 + 32 * 128 + 8 * 128) * 4
    assert lm_head["bound"] == "memory" and lm_head["estimated_seconds"] > 0
    assert report["bytes"]["total"] == report["modules"][""]["bytes"]


def test_bad_metrics_and_device_spec(capsys):
    code, _, err = run_in_process(capsys, "examples.llama:llama_tiny", "--input-shape", "1,8", "--metrics", "flops,watts")
    assert code == 2 and "flops,bytes" in err
    code, _, err = run_in_process(capsys, "examples.llama:llama_tiny", "--input-shape", "1,8", "--device-spec",
                                  "h100-sxm", "--convention", "fvcore")
    assert code == 1 and "--device-spec needs FLOPs" in err
def test_attention_effective_on_meta():
    # llama_tiny, 16 tokens: 2 layers x 4 heads of dim 8, 38 FLOPs per score (2 x (8 + 8) + 6)
    args = ["examples.llama:llama_tiny", "--input-shape", "1,16", "--input-dtype", "int64", "--device", "meta", "--json"]
    effective = json.loads(run(*args, "--attention", "effective").stdout)
    # causal: 136 of the 16 x 16 pairs per head (dense would be 2 * 4 * 256 * 38)
    assert effective["by_operator"]["aten.scaled_dot_product_attention"] == 2 * 4 * 136 * 38
    assert effective["notes"] == {}

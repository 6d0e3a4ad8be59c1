"""python -m dispatchcount: the table, JSON, and one-line errors for user mistakes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
        # An input larger than the memory: refused before allocating (4e12 bytes of float32 = 3725 GiB).
        (["tests.cli_factories:tiny_linear", "--input-shape", "1000000,1000000"],
         "--input-shape 1000000,1000000: an input of float32: 3.73e+03 GiB needed, more than the"),
        # A model larger than the memory: its size is measured on the meta device first.
        (["tests.cli_factories:huge_linear", "--input-shape", "1,4"],
         "the parameters and buffers of tests.cli_factories:huge_linear(): 3.73e+03 GiB needed"),
        # Too large to allocate anywhere, even on meta: the element count overflows int64.
        (["tests.cli_factories:tiny_linear", "--input-shape", "99999999999,99999999999", "--device", "meta"],
         "cannot allocate an input of"),
        (["tests.cli_broken_module:f", "--input-shape", "1"],
         "importing module 'tests.cli_broken_module' raised RuntimeError: this module is broken"),
        (["tests.cli_factories:tiny_linear", "--input-shape", "1,4", "--device", "cuda"] if not torch.cuda.is_available()
         else ["tests.cli_factories:tiny_linear", "--input-shape", "1,4", "--device", "nonsense"], "--device"),
        (["tests.cli_factories:tiny_linear", "--input-shape", "1,4", "--backward", "--input-dtype", "int64"],
         "running the model on inputs of shape (1, 4) raised RuntimeError"),
        (["tests.cli_factories:tiny_linear", "--input-shape", "1,4", "--html", "/no/such/folder/r.html"],
         "--html: the folder of '/no/such/folder/r.html' does not exist"),
    ],
)
def test_user_mistakes_give_one_line_and_nonzero_exit(args, message):
    result = run(*args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("dispatchcount: error: ")
    assert message in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["examples.llama:llama_tiny", "--input-shape", "1,a"], "argument --input-shape: expected comma-separated"),
        (["examples.llama:llama_tiny"], "the following arguments are required: --input-shape"),
        (["examples.llama:llama_tiny", "--input-shape", "1,4", "--depth", "-1"], "argument --depth: expected a non-negative integer"),
        (["examples.llama:llama_tiny", "--input-shape", "1,4", "--input-dtype", "int8"], "argument --input-dtype: invalid choice"),
        (["examples.llama:llama_tiny", "--input-shape", "1,4", "--convention", "ptflops"], "argument --convention: invalid choice"),
        (["examples.llama:llama_tiny", "--input-shape", "1,4", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_command_line_mistakes_are_one_line_and_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("dispatchcount: error: ") and message in result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr


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

"""The command line: the table, JSON, inputs, and one-line errors for user mistakes.

Run in this process (``run``: no interpreter start-up, about 2 s of CPU a call saved), from the
repository root; one test starts the console script in another folder."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from dispatchcount import cli_hints
from dispatchcount.cli import main

ROOT = Path(__file__).resolve().parent.parent


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run(*args: str, cwd: Path = ROOT) -> Result:
    """``dispatchcount *args`` in this process, from ``cwd``: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse errors
                code = exit.code
    finally:
        os.chdir(previous)
    return Result(code, out.getvalue(), err.getvalue())


def test_table_for_a_factory_on_meta():
    result = run("examples.llama:llama_tiny", "--input-shape", "1,16", "--input-dtype", "int64", "--device", "meta", "--depth", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "convention: flop (FLOPs: a multiply-add is 2)"
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
        (["examples.llama:llama_tiny", "--input-shape", "1,3,4"], "running the model on inputs (1, 3, 4) float32 raised"),
        (["examples.llama:Llama", "--input-shape", "1,4"], "examples.llama:Llama() raised TypeError"),
        # An input larger than the memory: refused before allocating (4e12 bytes of float32 = 3725 GiB).
        (["tests.cli_factories:tiny_linear", "--input-shape", "1000000,1000000"],
         "input (1000000, 1000000) float32: 3.73e+03 GiB needed, more than the"),
        # A model larger than the memory: its size is measured on the meta device first.
        (["tests.cli_factories:huge_linear", "--input-shape", "1,4"],
         "the parameters and buffers of tests.cli_factories:huge_linear(): 3.73e+03 GiB needed"),
        # Too large to allocate anywhere, even on meta: the element count overflows int64.
        (["tests.cli_factories:tiny_linear", "--input-shape", "99999999999,99999999999", "--device", "meta"],
         "cannot allocate the inputs ((99999999999, 99999999999) float32;"),
        (["tests.cli_broken_module:f", "--input-shape", "1"],
         "importing module 'tests.cli_broken_module' raised RuntimeError: this module is broken"),
        (["tests.cli_factories:tiny_linear", "--input-shape", "1,4", "--device", "cuda"] if not torch.cuda.is_available()
         else ["tests.cli_factories:tiny_linear", "--input-shape", "1,4", "--device", "nonsense"], "--device"),
        (["tests.cli_factories:tiny_linear", "--input-shape", "1,4", "--backward", "--input-dtype", "int64"],
         "running the model on inputs (1, 4) int64 raised RuntimeError"),
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
        (["examples.llama:llama_tiny"], "give the model's inputs: --input-shape"),
        (["examples.llama:llama_tiny", "--input-shape", "1,4", "--depth", "-1"], "argument --depth: expected a non-negative integer"),
        (["examples.llama:llama_tiny", "--input-shape", "1,4", "--input-dtype", "int65"], "argument --input-dtype: expected a torch dtype"),
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



def test_metrics_and_device_spec_add_bytes_and_roofline_columns():
    code, out, err = run("examples.llama:llama_tiny", "--input-shape", "1,16", "--input-dtype",
                                    "int64", "--device", "meta", "--depth", "1", "--metrics", "flops,bytes",
                                    "--device-spec", "h100-sxm")
    assert code == 0, err
    header = out.splitlines()[1].split()
    assert header[-5:] == ["bytes", "FLOP/B", "est.", "time", "bound"]
    assert "roofline: h100-sxm" in out


def test_json_carries_bytes_and_the_device():
    code, out, err = run("examples.llama:llama_tiny", "--input-shape", "1,8", "--input-dtype",
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


def test_bad_metrics_and_device_spec():
    code, _, err = run("examples.llama:llama_tiny", "--input-shape", "1,8", "--metrics", "flops,watts")
    assert code == 2 and "flops,bytes" in err
    code, _, err = run("examples.llama:llama_tiny", "--input-shape", "1,8", "--device-spec",
                                  "h100-sxm", "--convention", "fvcore")
    assert code == 1 and "--device-spec needs FLOPs" in err
def test_attention_effective_on_meta():
    # llama_tiny, 16 tokens: 2 layers x 4 heads of dim 8, 38 FLOPs per score (2 x (8 + 8) + 6)
    args = ["examples.llama:llama_tiny", "--input-shape", "1,16", "--input-dtype", "int64", "--device", "meta", "--json"]
    effective = json.loads(run(*args, "--attention", "effective").stdout)
    # causal: 136 of the 16 x 16 pairs per head (dense would be 2 * 4 * 256 * 38)
    assert effective["by_operator"]["aten.scaled_dot_product_attention"] == 2 * 4 * 136 * 38
    assert effective["notes"] == {}


# -- factories for the tests below, in a file of their own (imported by path) -------------------

MODELS = '''
import torch
from torch import nn


@torch.library.custom_op("dctest_cli::opaque", mutates_args=())
def opaque(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@opaque.register_fake
def _(x):
    return torch.empty_like(x)


class Opaque(nn.Module):
    def forward(self, x):
        return opaque(x)


def opaque_model():
    return nn.Sequential(nn.Linear(4, 4, bias=False), Opaque())


class Tagger(nn.Module):
    """Token ids and an optional float mask, as transformers models take them."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 3, bias=False)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return self.out(h)


class ReadsValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * x.sum().item()


def frozen():
    return nn.Linear(4, 2).requires_grad_(False)


def conv():
    return nn.Sequential(nn.Conv2d(3, 8, 3))


def linear():
    return nn.Linear(4, 2)


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "dctest_cli_models.py"
    path.write_text(MODELS)
    return path


def one_line_error(result: Result) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dispatchcount: error: "), result.stderr
    return lines[0]


def test_console_script_imports_from_the_current_directory(tmp_path):
    script = shutil.which("dispatchcount", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the console script is installed by `pip install -e .` (the README's set-up)")
    (tmp_path / "mymodels.py").write_text("from torch import nn\n\ndef mlp():\n"
                                          "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))\n")
    result = subprocess.run([script, "mymodels:mlp", "--input", "3,4", "--json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # addmm 2*3*4*8, ReLU 3*8, addmm 2*3*8*2
    assert json.loads(result.stdout)["total"] == 192 + 24 + 96


def test_a_file_path_factory_and_depth_all(models):
    result = run(f"{models}:mlp", "--input", "3,4", "--depth", "all", "--classes")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["module", "class", "params", "forward", "FLOPs", "%"]
    assert [line.split()[:2] for line in lines[3:]] == [["model", "Sequential"], ["0", "Linear"], ["1", "ReLU"],
                                                         ["2", "Linear"]]


def test_keyword_inputs_with_their_own_dtypes(models):
    args = (f"{models}:Tagger", "--input", "input_ids=2,5:int64", "--json")
    report = json.loads(run(*args).stdout)
    assert report["total"] == 2 * 10 * 4 * 3  # out: (10 tokens, 4) @ (4, 3)
    masked = json.loads(run(*args, "--input", "attention_mask=2,5").stdout)  # float32: --input-dtype
    # the mask multiplies 2*5*4 embeddings in the model's own forward
    assert masked["by_module_and_operator"][""] == {"aten.mul": 40, "aten.mm": 240}
    assert masked["total"] == 40 + 240
    twice = run(*args, "--input", "input_ids=2,5:int64")
    assert "'input_ids' given twice" in one_line_error(twice)


@pytest.mark.parametrize("text, message", [
    ("x=2,a", "comma-separated non-negative integers"),
    ("2-x=2,3", "NAME a keyword argument"),
    ("2,3:int65", "a torch dtype such as float32"),
])
def test_bad_input_arguments(text, message):
    result = run("examples.llama:llama_tiny", "--input", text)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_inputs_are_required_and_depth_is_non_negative():
    result = run("examples.llama:llama_tiny")
    assert result.returncode == 2 and "give the model's inputs: --input-shape" in result.stderr
    result = run("examples.llama:llama_tiny", "--input", "1,4:int64", "--depth", "-1")
    assert result.returncode == 2 and "expected a non-negative integer (0: the model alone) or 'all'" in result.stderr


def test_by_operator_lines(models):
    result = run(f"{models}:Tagger", "--input", "input_ids=2,5:int64", "--input", "attention_mask=2,5",
                 "--by-operator", "--depth", "1")
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[3:]] == [
        ["model", "52"], ["(self)", "40"], ["aten.mul", "40"], ["embed", "40"], ["out", "12"], ["aten.mm", "240"]]


def test_strict_fails_on_an_operator_without_a_rule(models):
    lenient = run(f"{models}:opaque_model", "--input", "2,4")
    assert lenient.returncode == 0
    assert "not counted (no rule or failing formula): dctest_cli.opaque x1" in lenient.stdout
    strict = one_line_error(run(f"{models}:opaque_model", "--input", "2,4", "--strict"))
    assert strict.startswith("dispatchcount: error: --strict: ") and "dctest_cli.opaque" in strict


def test_backward_of_a_model_without_gradients(models):
    error = one_line_error(run(f"{models}:frozen", "--input", "2,4", "--backward"))
    assert "--backward" in error and "no floating-point output of the model requires grad" in error


@pytest.mark.parametrize("args, hint", [
    (["examples.llama:llama_tiny", "--input", "1,16"],
     "(hint: the model looks up embeddings with its inputs: give token ids an integer dtype, "
     "e.g. --input-dtype int64 or --input input_ids=2,16:int64)"),
    (["examples.llama:llama_tiny", "--input", "input_ids=1,16:int64"],
     "(hint: the model's forward takes (tokens: 'torch.Tensor', cache: 'Optional[KVCache]' = None) "
     "-> 'torch.Tensor': give one --input per argument, in order or as NAME=SHAPE[:DTYPE])"),
    (["{models}:ReadsValues", "--input", "2,4", "--device", "meta"],
     "(hint: the model reads tensor values (.item(), .tolist(), nonzero, a branch on a tensor), "
     "which meta tensors do not have: count on --device cpu)"),
    (["{models}:conv", "--input", "1,4,8,8"],
     "(hint: check the input shapes: the model's first layer, 0 (Conv2d), takes (batch, 3, ..., ...))"),
    (["{models}:linear", "--input", "2,5"],
     "(hint: check the input shapes: the model's first layer, the model (Linear), takes a last dimension of 4)"),
    (["{models}:linear", "--input", "2,4:float64"],
     "(hint: the inputs are float64, the model's parameters float32: use --input-dtype float32 "
     "(token ids and other integer inputs: SHAPE:int64 per --input))"),
    (["examples.llama:Llama", "--input", "1,4:int64"],
     "(hint: the factory is called with no arguments: name a function that builds the model with its defaults)"),
])
def test_hints_for_common_mistakes(models, args, hint):
    error = one_line_error(run(*[a.format(models=models) for a in args]))
    assert error.endswith(hint), error


def test_an_unavailable_device_is_named_before_anything_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    error = one_line_error(run("examples.llama:llama_tiny", "--input", "1,4:int64", "--device", "cuda"))
    assert error == (f"dispatchcount: error: --device cuda: this PyTorch ({torch.__version__}) is built without "
                     "CUDA; count on --device meta (no memory, the same counts) or --device cpu")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert cli_hints.unavailable_device(torch.device("cuda")).startswith("--device cuda: no cuda device is available;")
    assert cli_hints.unavailable_device(torch.device("meta")) is None

"""The same program counts the same on meta and CPU, on every attention model of the test suite.

CPU runs scaled_dot_product_attention's fused flash kernel (or its math path: dropout, unequal
head dims, SDPBackend.MATH), meta always the math path; nn.MultiheadAttention and
nn.TransformerEncoderLayer take a fused inference fast path on CPU in eval under no_grad and their
slow path on meta. Counts agree operator by operator, forward and backward.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from dispatchcount import FlopMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fvcore_zoo import ZOO  # noqa: E402


def counts(model, inputs, backward, attention="dense"):
    grad = torch.enable_grad() if backward else torch.no_grad()
    with grad, FlopMode(model, attention=attention) as fm:
        out = model(*inputs)
        if backward:
            out = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
            out.sum().backward()
    model.zero_grad(set_to_none=True)
    assert fm.unsupported_ops() == {}
    return fm.by_operator("forward"), fm.by_operator("backward")


def assert_meta_equals_cpu(factory, backward, attention="dense"):
    torch.manual_seed(0)
    model, inputs = factory()
    with torch.device("meta"):  # built there (moving a model to meta unties tied weights)
        meta_model, _ = factory()
    if model.training:
        meta_model.train()
    cpu = counts(model, inputs, backward, attention)
    assert counts(meta_model, [x.to("meta") for x in inputs], backward, attention) == cpu
    return cpu


def llama_tiny():
    from examples.llama import llama_tiny

    return llama_tiny(), (torch.randint(0, 128, (2, 16)),)


def gpt_with_dropout():
    from examples.count_transformer import GPT, GPTConfig

    return GPT(GPTConfig(layers=1, context=16, dim=32)).train(), (torch.randint(0, 512, (2, 16)),)


def gqa_attention():
    from test_against_flopcountermode import AttentionNet

    return AttentionNet(), (torch.randn(2, 7, 32),)


def hf(name):
    import transformers

    if name == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=64)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          hidden_size=32, intermediate_size=64, vocab_size=64)
        model = transformers.LlamaForCausalLM(config)
    return model.eval(), (torch.randint(0, 64, (2, 9)),)


ZOO_ATTENTION = [e for e in ZOO if "attention" in e.name or "vit" in e.name]
MODELS = {
    "llama_tiny": llama_tiny,
    "gpt_dropout": gpt_with_dropout,
    "gqa_attention": gqa_attention,
    "hf_gpt2": lambda: hf("gpt2"),
    "hf_llama": lambda: hf("llama"),
    **{f"zoo_{e.name}": e.build for e in ZOO_ATTENTION},
}


@pytest.mark.parametrize("backward", [False, True], ids=["no_grad", "train_step"])
@pytest.mark.parametrize("name", list(MODELS))
def test_meta_equals_cpu(name, backward):
    forward, _ = assert_meta_equals_cpu(MODELS[name], backward)
    assert any("attention" in op or op == "aten.bmm" for op in forward)


@pytest.mark.parametrize("name", ["llama_tiny", "hf_llama", "zoo_small_vit_sdpa"])
def test_meta_equals_cpu_effective(name):
    assert_meta_equals_cpu(MODELS[name], backward=True, attention="effective")


def test_math_backend_counts_as_the_fused_kernel():
    torch.manual_seed(0)
    model, inputs = llama_tiny()
    fused = counts(model, inputs, backward=True)
    with sdpa_kernel(SDPBackend.MATH):
        assert counts(model, inputs, backward=True) == fused


def multi_head_attention(need_weights, norm_first, activation):
    mha = nn.MultiheadAttention(16, 4, batch_first=True)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=need_weights)[0]

    return SelfAttention()


def encoder_layer(need_weights, norm_first, activation):
    return nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=norm_first,
                                      activation=activation)


@pytest.mark.parametrize("batch, seq", [(2, 5), (1, 5), (3, 1)])
@pytest.mark.parametrize("need_weights, norm_first, activation", [(False, False, "relu"), (True, True, "gelu")])
@pytest.mark.parametrize("build", [multi_head_attention, encoder_layer])
def test_fast_paths_count_as_their_slow_paths(build, batch, seq, need_weights, norm_first, activation):
    # in eval under no_grad the CPU runs one fused op (the module's inference fast path), meta
    # the slow path's ops
    torch.manual_seed(0)
    model = build(need_weights, norm_first, activation).eval()
    with torch.device("meta"):
        meta_model = build(need_weights, norm_first, activation).eval()
    x = torch.randn(batch, seq, 16)
    with torch.no_grad(), FlopMode(model) as cpu:
        model(x)
    with torch.no_grad(), FlopMode(meta_model) as meta:
        meta_model(x.to("meta"))
    assert len(cpu.by_operator()) == 1
    assert list(cpu.by_operator())[0] in ("aten._native_multi_head_attention", "aten._transformer_encoder_layer_fwd")
    assert meta.total() == cpu.total()


# -- the sdpa call as one op: what it must not change ----------------------------------------


SDPA = "aten.scaled_dot_product_attention"
SCORES = 2 * 4 * 7 * 7  # q, k, v (2, 4, 7, 8)
FORWARD = 2 * SCORES * (8 + 8) + 6 * SCORES
BACKWARD = 2 * SCORES * (3 * 8 + 2 * 8) + 5 * SCORES


def sdpa(q):
    return torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)


def test_outputs_and_gradients_are_bit_identical():
    q = torch.randn(2, 4, 7, 8, requires_grad=True)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel(backend):
            plain = sdpa(q)
            (grad,) = torch.autograd.grad(plain.sum(), q)
            with FlopMode():
                counted = sdpa(q)
                (counted_grad,) = torch.autograd.grad(counted.sum(), q)
        assert torch.equal(plain, counted) and torch.equal(grad, counted_grad)


def test_nested_modes_each_count_the_call_once():
    q = torch.randn(2, 4, 7, 8, requires_grad=True)
    with FlopMode() as outer:
        with FlopMode() as inner:
            sdpa(q).sum().backward()
    for fm in (outer, inner):
        assert fm.by_operator("forward")[SDPA] == FORWARD
        assert fm.by_operator("backward")[SDPA] == BACKWARD


def test_inference_mode_fake_tensors_and_a_backward_after_exit():
    with torch.inference_mode(), FlopMode() as fm:  # the op reaches the hook whole
        sdpa(torch.randn(2, 4, 7, 8))
    assert fm.by_operator() == {SDPA: FORWARD}
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.randn(2, 4, 7, 8, requires_grad=True)
        with FlopMode() as fm:
            sdpa(q).sum().backward()
    assert (fm.by_operator("forward")[SDPA], fm.by_operator("backward")[SDPA]) == (FORWARD, BACKWARD)
    q = torch.randn(2, 4, 7, 8, requires_grad=True)
    with FlopMode() as fm:
        out = sdpa(q)
    out.sum().backward()  # outside the FlopMode: not counted, and nothing left suspended
    assert fm.by_operator("backward") == {}
    with FlopMode() as after:
        sdpa(q).sum().backward()
    assert after.by_operator("backward")[SDPA] == BACKWARD


def test_the_rules_can_be_replaced_per_counter():
    from dispatchcount.sdpa import SDPA_BACKWARD

    q = torch.randn(2, 4, 7, 8, requires_grad=True)
    custom = {torch.ops.aten.scaled_dot_product_attention: lambda *a, out=None, **k: 1,
              SDPA_BACKWARD: lambda *a, out=None, **k: 2}
    with FlopMode(formulas=custom) as fm:
        sdpa(q).sum().backward()
    assert fm.by_operator("forward")[SDPA] == 1 and fm.by_operator("backward")[SDPA] == 2


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_counts_the_recomputed_call(device, reentrant):
    from torch.utils.checkpoint import checkpoint

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return sdpa(self.proj(x))  # the call is the block's last op

    block = Block().to(device)
    x = torch.randn(2, 4, 7, 8, device=device, requires_grad=True)
    with FlopMode(block) as fm:
        checkpoint(block, x, use_reentrant=reentrant).sum().backward()
    proj = 2 * 2 * 4 * 7 * 8 * 8
    assert fm.by_operator("forward") == {"aten.mm": proj, SDPA: FORWARD, "aten.sum": SCORES * 8 // 7}
    assert fm.by_operator("recompute") == {"aten.mm": proj, SDPA: FORWARD}

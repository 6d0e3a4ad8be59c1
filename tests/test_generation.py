"""count_generate on transformers GPT-2 and Llama built from small configs (no download).

By hand, per token and layer (one multiply-add = 2 FLOPs), batch 2, prompt 5, 4 new tokens:
- GPT-2 (2 layers, 2 heads, width 16, MLP 64, vocabulary 64): the four Conv1D products
  16x48 + 16x16 + 16x64 + 64x16 = 3072 multiply-adds; the head 16x64;
- Llama (2 layers, 4 heads, 2 KV heads, width 32, MLP 64, vocabulary 64): q, k, v, o
  32x32 + 32x16 + 32x16 + 32x32 and gate, up, down 3 x 32x64 = 9216 multiply-adds; the head 32x64;
- attention: 38 FLOPs per (query, key) score and query head (head dim 8: Q K^T and P V
  2 x (8 + 8), scale and softmax 6). generate asks for the logits of the last token only.
"""

import copy

import pytest
import torch
import transformers

from dispatchcount import count_generate

B, P, NEW = 2, 5, 4
PER_SCORE = 2 * (8 + 8) + 6


def gpt2():
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=64, n_positions=64,
                                     bos_token_id=0, eos_token_id=1)
    return transformers.GPT2LMHeadModel(config).eval(), {"layers": 2, "heads": 2, "token_macs": 3072, "width": 16}


def llama():
    config = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      hidden_size=32, intermediate_size=64, vocab_size=64,
                                      max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval(), {"layers": 2, "heads": 4, "token_macs": 9216, "width": 32}


GENERATE = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, "pad_token_id": 0}


def matmuls(result, section):
    return sum(r.values[0] for r in result.counts.rows
               if r.section == section and r.operator in ("aten.addmm", "aten.mm"))


def attention(result, section):
    return sum(r.values[0] for r in result.counts.rows
               if r.section == section and r.operator == "aten.scaled_dot_product_attention")


@pytest.fixture(scope="module", params=[gpt2, llama], ids=["gpt2", "llama"])
def model(request):
    torch.manual_seed(0)
    return request.param()


@pytest.mark.parametrize("attention_mode", ["dense", "effective"])
def test_prefill_and_each_decode_step_by_hand(model, attention_mode):
    module, shape = model
    ids = torch.randint(2, 64, (B, P))
    result = count_generate(module, ids, attention=attention_mode, **GENERATE)
    assert result.sequences.shape == (B, P + NEW)
    assert len(result.per_token) == NEW - 1  # the prefill yields the first new token
    assert result.total == result.prefill + sum(result.per_token) + result.other
    layers, heads, width = shape["layers"], shape["heads"], shape["width"]
    head = 2 * B * width * 64
    assert matmuls(result, "prefill") == 2 * layers * B * P * shape["token_macs"] + head
    prompt_pairs = P * P if attention_mode == "dense" else P * (P + 1) // 2  # causal prefill
    assert attention(result, "prefill") == layers * B * heads * prompt_pairs * PER_SCORE
    for i in range(NEW - 1):
        section = f"token {i + 2}"
        keys = P + i + 1  # the cache and the token itself
        assert matmuls(result, section) == 2 * layers * B * shape["token_macs"] + head
        assert attention(result, section) == layers * B * heads * keys * PER_SCORE
    # each step attends to one more key: everything else costs the same
    steps = result.per_token
    assert [b - a for a, b in zip(steps, steps[1:])] == [layers * B * heads * PER_SCORE] * (NEW - 2)


@pytest.mark.parametrize("convention", ["flop", "fvcore"])
def test_meta_steps_count_what_generate_counts_on_cpu(model, convention):
    module, _ = model
    ids = torch.randint(2, 64, (B, P))
    cpu = count_generate(module, ids, convention=convention, **GENERATE)
    meta = count_generate(copy.deepcopy(module).to("meta"), ids.to("meta"), convention=convention, **GENERATE)
    assert (meta.prefill, meta.per_token, meta.total) == (cpu.prefill, cpu.per_token, cpu.total)
    assert meta.counts.by_operator() == cpu.counts.by_operator()
    assert meta.sequences.shape == cpu.sequences.shape


def test_table_lists_the_steps(model):
    module, _ = model
    result = count_generate(module, torch.randint(2, 64, (1, P)), **GENERATE)
    lines = result.table().splitlines()
    assert lines[0] == "convention: flop"
    assert [line.split()[0] for line in lines[3:]] == ["prefill", "token", "token", "token", "decode,", "total"]
    assert lines[3].split()[1:3] == [str(P), str(P)]
    assert lines[-1].rstrip().endswith("100.0%")


def test_bad_arguments_are_named():
    module, _ = gpt2()
    with pytest.raises(ValueError, match="input_ids must be a \\(batch, prompt length\\) tensor"):
        count_generate(module, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="needs max_new_tokens"):
        count_generate(copy.deepcopy(module).to("meta"), torch.zeros(1, 3, dtype=torch.long, device="meta"))

"""Which modules an op counts for, as fvcore decides it: ancestor modes "owner" and "caller",
shared modules, never-called containers, and fvcore's table text on such models.

fvcore itself (JIT tracing) is the reference; the hand-derived numbers are in the comments.
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

from dispatchcount.fvcore import FlopCountAnalysis, flop_count_table
from fvcore_reference import fvcore_nn, quiet  # noqa: F401 (quiet: an autouse fixture)


def both(model: nn.Module, inputs: tuple, mode: str = "owner"):
    ours = FlopCountAnalysis(model, inputs).ancestor_mode(mode)
    theirs = fvcore_nn.FlopCountAnalysis(model, inputs).ancestor_mode(mode)
    return ours, theirs


def assert_parents_not_smaller(by_module: dict) -> None:
    for name, flops in by_module.items():
        if name:
            parent = name.rpartition(".")[0]
            assert by_module[parent] >= flops, (parent, name)


# -- a conv registered at the top, reused by every block ---------------------------------------


class Block(nn.Module):
    def __init__(self, shared: nn.Module) -> None:
        super().__init__()
        self.shared = shared
        self.proj = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.proj(self.shared(x))


class SharedTopConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)   # canonical name "conv"; also blocks.i.shared
        self.blocks = nn.ModuleList([Block(self.conv) for _ in range(2)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


# input (1, 4, 6, 6): the 3x3 conv is 36 positions x 4*4*9 = 5184, the 1x1 proj 36 x 16 = 576
CONV, PROJ = 5184, 576


def test_shared_conv_owner_mode_charges_its_owner():
    ours, theirs = both(SharedTopConv(), (torch.randn(1, 4, 6, 6),))
    expected = {"": 2 * (CONV + PROJ), "conv": 2 * CONV, "blocks": 2 * PROJ,
                "blocks.0": PROJ, "blocks.0.proj": PROJ, "blocks.1": PROJ, "blocks.1.proj": PROJ}
    assert ours.by_module() == theirs.by_module() == expected
    assert ours.total("blocks.0.shared") == 2 * CONV  # an alias of "conv"
    assert ours.uncalled_modules() == theirs.uncalled_modules() == set()
    assert_parents_not_smaller(ours.by_module())


def test_shared_conv_caller_mode_charges_every_caller():
    ours, theirs = both(SharedTopConv(), (torch.randn(1, 4, 6, 6),), mode="caller")
    # blocks.i called the conv: it counts for them; the ModuleList is never called itself
    expected = {"": 2 * (CONV + PROJ), "conv": 2 * CONV, "blocks": 0,
                "blocks.0": CONV + PROJ, "blocks.0.proj": PROJ, "blocks.1": CONV + PROJ, "blocks.1.proj": PROJ}
    assert ours.by_module() == theirs.by_module() == expected
    assert ours.uncalled_modules() == theirs.uncalled_modules() == {"blocks"}


def test_switching_the_mode_does_not_run_the_model_again():
    calls = []
    model = SharedTopConv()
    model.register_forward_hook(lambda *args: calls.append(1))
    analysis = FlopCountAnalysis(model, (torch.randn(1, 4, 6, 6),))
    assert analysis.total("blocks.0") == PROJ
    assert analysis.ancestor_mode("caller").total("blocks.0") == CONV + PROJ
    assert analysis.ancestor_mode("owner").total("blocks.0") == PROJ
    assert len(calls) == 1


# -- a module shared by two containers, called from the second ---------------------------------


class Holder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.inner(x))


class TwoContainers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(8, 8)
        self.a = Holder(shared)   # shared's canonical name: "a.inner"
        self.b = Holder(shared)

    def forward(self, x):
        return self.b(x)          # only b runs, and it runs the shared linear


def test_module_shared_by_two_containers():
    model, inputs = TwoContainers(), (torch.randn(2, 8),)
    ours, theirs = both(model, inputs)
    # owner: the shared linear (2*8*8 = 128) counts for its owner "a", not for its caller "b"
    assert ours.by_module() == theirs.by_module() == {"": 256, "a": 128, "a.inner": 128, "a.fc": 0,
                                                      "b": 128, "b.fc": 128}
    assert_parents_not_smaller(ours.by_module())
    assert ours.uncalled_modules() == theirs.uncalled_modules() == {"a.fc"}
    ours, theirs = both(model, inputs, mode="caller")
    # caller: for "b", which called it; "a" never ran: smaller than its child, as in fvcore
    assert ours.by_module() == theirs.by_module() == {"": 256, "a": 0, "a.inner": 128, "a.fc": 0,
                                                      "b": 256, "b.fc": 128}
    assert ours.uncalled_modules() == theirs.uncalled_modules() == {"a", "a.fc"}


# -- CoaT: the blocks of a stage share its convolutional position encodings --------------------


class ConvPosEnc(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x, size):
        b, n, c = x.shape
        feat = x.transpose(1, 2).reshape(b, c, *size)
        return x + self.proj(feat).flatten(2).transpose(1, 2)


class ConvRelPosEnc(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, q, v, size):
        b, n, c = v.shape
        v_img = v.transpose(1, 2).reshape(b, c, *size)
        return q * self.conv(v_img).flatten(2).transpose(1, 2)


class FactorAttention(nn.Module):
    def __init__(self, dim: int, shared_crpe: nn.Module) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.crpe = shared_crpe

    def forward(self, x, size):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        context = torch.einsum("bnk,bnv->bkv", k.softmax(dim=1), v)
        attention = torch.einsum("bnk,bkv->bnv", q, context)
        return self.proj(attention + self.crpe(q, v, size))


class SerialBlock(nn.Module):
    def __init__(self, dim: int, shared_cpe: nn.Module, shared_crpe: nn.Module) -> None:
        super().__init__()
        self.cpe = shared_cpe
        self.norm1 = nn.LayerNorm(dim)
        self.factoratt_crpe = FactorAttention(dim, shared_crpe)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, size):
        x = self.cpe(x, size)
        x = x + self.factoratt_crpe(self.norm1(x), size)
        return x + self.mlp(self.norm2(x))


class CoaTLike(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 2, stride=2)
        self.cpe1 = ConvPosEnc(dim)
        self.crpe1 = ConvRelPosEnc(dim)
        self.serial_blocks1 = nn.ModuleList([SerialBlock(dim, self.cpe1, self.crpe1) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, image):
        x = self.patch_embed(image)
        size = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        for block in self.serial_blocks1:
            x = block(x, size)
        return self.norm(x).mean(1)


@pytest.mark.parametrize("mode", ["owner", "caller"])
def test_coat_like_shared_position_encodings(mode):
    torch.manual_seed(0)
    ours, theirs = both(CoaTLike(), (torch.randn(2, 3, 8, 8),), mode)
    assert ours.by_module() == theirs.by_module()
    assert ours.by_module_and_operator() == theirs.by_module_and_operator()
    assert ours.uncalled_modules() == theirs.uncalled_modules()
    # 2 images x 16 tokens x 8 channels; each depthwise 3x3 conv: 2*16*8*9 = 2304
    depthwise = 2 * 16 * 8 * 9
    by_module = ours.by_module()
    assert by_module["cpe1"] == by_module["crpe1"] == 2 * depthwise  # once per block
    if mode == "owner":
        # the blocks do not own the shared encodings: theirs are the owners' counts
        block = by_module["serial_blocks1.0"]
        assert by_module["serial_blocks1"] == 2 * block
        assert by_module[""] == block * 2 + 2 * 2 * depthwise + by_module["patch_embed"] + by_module["norm"]
        assert_parents_not_smaller(by_module)
    else:
        assert by_module["serial_blocks1.0.factoratt_crpe"] - by_module["serial_blocks1.0.factoratt_crpe.qkv"] \
            - by_module["serial_blocks1.0.factoratt_crpe.proj"] == 2 * (2 * 16 * 8 * 8) + depthwise  # einsums, crpe


def test_coat_like_table_is_fvcore_text():
    torch.manual_seed(0)
    ours, theirs = both(CoaTLike(), (torch.randn(2, 3, 8, 8),))
    for depth in (1, 3, 5):
        assert flop_count_table(ours, max_depth=depth) == fvcore_nn.flop_count_table(theirs, max_depth=depth)


# -- never-called containers (ModuleList / ModuleDict) whose children ran -----------------------


class HFConv1D(nn.Module):
    """GPT-2's linear layer: addmm with a (in, out) weight."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = HFConv1D(dim, 3 * dim), HFConv1D(dim, dim)
        self.mlp = nn.ModuleDict({"c_fc": HFConv1D(dim, 4 * dim), "c_proj": HFConv1D(4 * dim, dim)})

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (y.view(b, t, self.heads, c // self.heads).transpose(1, 2) for y in (q, k, v))
        weights = torch.matmul(q, k.transpose(-1, -2)).softmax(-1)
        x = x + self.c_proj(torch.matmul(weights, v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp["c_proj"](torch.tanh(self.mlp["c_fc"](self.ln_2(x))))


class GPT2Like(nn.Module):
    def __init__(self, vocab: int = 20, dim: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(vocab, dim), "wpe": nn.Embedding(8, dim),
            "h": nn.ModuleList([GPT2Block(dim, 2) for _ in range(layers)]), "ln_f": nn.LayerNorm(dim),
        })

    def forward(self, ids):
        t = self.transformer
        x = t["wte"](ids) + t["wpe"](torch.arange(ids.shape[1]))
        for block in t["h"]:
            x = block(x)
        return t["ln_f"](x)


class PVTStage(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.downsample = nn.Conv2d(dim // 2, dim, 2, stride=2)
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(2)])

    def forward(self, x):
        x = self.downsample(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = tokens + block(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class PVTLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stages = nn.ModuleList([PVTStage(8), PVTStage(16)])

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x.mean((2, 3))


# (model, inputs, its containers, their labels in the table: the model row merges into its
# only child "transformer", whose prefix the table then leaves out)
CONTAINER_MODELS = {
    "gpt2_like": (GPT2Like, lambda: (torch.randint(0, 20, (2, 8)),),
                  ["transformer", "transformer.h", "transformer.h.0.mlp"], ["h", "h.0.mlp"]),
    "pvt_like": (PVTLike, lambda: (torch.randn(2, 3, 8, 8),), ["stages", "stages.0.blocks", "stages.1.blocks"],
                 ["stages", "stages.0.blocks"]),
}


@pytest.mark.parametrize("name", CONTAINER_MODELS)
def test_containers_whose_children_ran_are_not_uncalled(name):
    build, inputs, containers, labels = CONTAINER_MODELS[name]
    torch.manual_seed(0)
    model, args = build(), inputs()
    ours, theirs = both(model, args)
    assert ours.uncalled_modules() == theirs.uncalled_modules() == set()
    assert ours.by_module() == theirs.by_module()
    for container in containers:
        assert ours.total(container) > 0, container
    assert_parents_not_smaller(ours.by_module())
    # the table shows their counts, in fvcore's text
    table = flop_count_table(ours, max_depth=4)
    assert table == fvcore_nn.flop_count_table(theirs, max_depth=4)
    for label in labels:
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} "))
        assert row.rstrip(" |").split("|")[-1].strip(), row  # the #flops cell is not blank
    assert flop_count_table(ours, max_depth=2, show_param_shapes=False) == \
        fvcore_nn.flop_count_table(theirs, max_depth=2, show_param_shapes=False)


@pytest.mark.parametrize("name", CONTAINER_MODELS)
def test_containers_in_caller_mode_are_uncalled_as_in_fvcore(name):
    build, inputs, containers, _ = CONTAINER_MODELS[name]
    torch.manual_seed(0)
    ours, theirs = both(build(), inputs(), mode="caller")
    assert ours.uncalled_modules() == theirs.uncalled_modules()
    assert set(containers) <= ours.uncalled_modules()
    assert ours.by_module() == theirs.by_module()
    assert flop_count_table(ours) == fvcore_nn.flop_count_table(theirs)

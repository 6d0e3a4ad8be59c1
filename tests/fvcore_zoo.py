"""A zoo of small models that exercise every op family fvcore counts, for the fvcore tests.

Each entry builds ``(model, inputs)`` (seeded, CPU, small) and says how many multiply-adds
dispatchcount counts beyond fvcore on it (``beyond``: attention fvcore has no handle for),
derived by hand from the shapes below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[[], tuple[nn.Module, tuple]]
    beyond: int = 0  # multiply-adds of ops fvcore has no handle for
    fvcore_names: bool = True  # by_operator() keys equal fvcore's (False: linear dispatched as mm)


class Convs(nn.Module):
    """Convolutions of every kind: 1d/2d/3d, strided, dilated, grouped, depthwise, no bias."""

    def __init__(self) -> None:
        super().__init__()
        self.c1d = nn.Conv1d(4, 6, 3, padding=1)
        self.c1d_grouped = nn.Conv1d(6, 6, 5, stride=2, groups=3)
        self.c2d = nn.Conv2d(3, 8, 3, padding=1)
        self.c2d_strided_dilated = nn.Conv2d(8, 8, 3, stride=2, dilation=2, padding=2, bias=False)
        self.c2d_grouped = nn.Conv2d(8, 12, 3, groups=4, padding=1)
        self.c2d_depthwise = nn.Conv2d(12, 12, 5, groups=12, padding=2)
        self.c2d_pointwise = nn.Conv2d(12, 4, 1, bias=False)
        self.c2d_reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.c3d = nn.Conv3d(2, 4, (3, 3, 3), padding=(1, 0, 1), stride=(1, 2, 1))

    def forward(self, x1, x2, x3):
        a = self.c1d_grouped(self.c1d(x1))
        b = self.c2d_reflect(self.c2d_pointwise(self.c2d_depthwise(self.c2d_grouped(self.c2d_strided_dilated(self.c2d(x2))))))
        c = self.c3d(x3)
        return a.sum() + b.sum() + c.sum()


def _convs():
    return Convs(), (torch.randn(2, 4, 16), torch.randn(2, 3, 16, 16), torch.randn(1, 2, 6, 8, 8))


class TransposedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.t1d = nn.ConvTranspose1d(4, 6, 3, stride=2)
        self.t2d = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1, output_padding=0, groups=2)
        self.t2d_outpad = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.t3d = nn.ConvTranspose3d(2, 2, 2, stride=2)

    def forward(self, x1, x2, x3):
        return self.t1d(x1).sum() + self.t2d_outpad(self.t2d(x2)).sum() + self.t3d(x3).sum()


def _transposed():
    return TransposedConvs(), (torch.randn(2, 4, 9), torch.randn(2, 6, 5, 5), torch.randn(1, 2, 3, 4, 4))


class Linears(nn.Module):
    """nn.Linear on 1-D, 2-D, 3-D and 4-D inputs, without bias, and F.linear on a raw weight."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 32)
        self.fc_nobias = nn.Linear(32, 8, bias=False)
        self.proj = nn.Linear(8, 8)
        self.raw = nn.Parameter(torch.randn(5, 8))

    def forward(self, x2, x3, x4, x1):
        y3 = self.fc_nobias(self.fc(x3))          # (2, 7, 16) -> (2, 7, 8)
        y4 = self.proj(self.fc_nobias(self.fc(x4)))  # (2, 3, 4, 16) -> (2, 3, 4, 8)
        y2 = F.linear(self.fc_nobias(self.fc(x2)), self.raw)  # raw weight: charged to the root
        y1 = self.fc(x1)
        return y3.sum() + y4.sum() + y2.sum() + y1.sum()


def _linears():
    return Linears(), (torch.randn(5, 16), torch.randn(2, 7, 16), torch.randn(2, 3, 4, 16), torch.randn(16))


class Einsums(nn.Module):
    """einsum equations: batched matmuls fvcore special-cases, others costed by numpy's path."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 5))

    def forward(self, a, b, c, d):
        outs = [
            torch.einsum("bij,bjk->bik", a, b),             # numpy path, 2 operands
            torch.einsum("nct,ncp->ntp", a, a),             # fvcore's "abc,abd->acd"
            torch.einsum("ntg,ncg->nct", a, a),             # fvcore's "abc,adc->adb"
            torch.einsum("i,j->ij", d, d),                  # outer product: no summed index
            torch.einsum("bij,jk,kl->bil", a, b[0], self.w),  # three operands: optimal path
            torch.einsum("...ij,jk->...ik", c, self.w),    # ellipsis
            torch.einsum("bij->bj", a),                     # one operand, a reduction
            torch.einsum("ij,jk->i", a[0], b[0]),          # k summed away from one operand
            torch.einsum(a, [0, 1, 2], b, [0, 2, 3], [0, 1, 3]),  # sublist format
        ]
        return sum(o.sum() for o in outs)


def _einsums():
    return Einsums(), (torch.randn(3, 4, 6), torch.randn(3, 6, 6), torch.randn(2, 3, 4, 6), torch.randn(7))


class Matmuls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 5))

    def forward(self, a, b, m):
        outs = [
            a @ b,                       # batched (3, 4, 8) @ (3, 8, 6)
            a @ self.w,                  # 3-D @ 2-D: folded into one mm
            m @ b,                       # broadcast (4, 8) @ (3, 8, 6): fvcore charges 4*8*6
            torch.matmul(a[0], b[0]),
            a.matmul(b),
            torch.mm(a[0], b[0]),
            torch.bmm(a, b),
            torch.addmm(torch.zeros(4, 6), a[0], b[0]),
            a[0, 0] @ b[0],             # 1-D @ 2-D
        ]
        return sum(o.sum() for o in outs)


def _matmuls():
    return Matmuls(), (torch.randn(3, 4, 8), torch.randn(3, 8, 6), torch.randn(4, 8))


class Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn1d = nn.BatchNorm1d(4)
        self.bn2d = nn.BatchNorm2d(4)
        self.bn2d_plain = nn.BatchNorm2d(4, affine=False)
        self.bn3d = nn.BatchNorm3d(2)
        self.bn_nostats = nn.BatchNorm2d(4, track_running_stats=False)
        self.gn = nn.GroupNorm(2, 4)
        self.gn_plain = nn.GroupNorm(4, 4, affine=False)
        self.ln = nn.LayerNorm(6)
        self.ln_2d = nn.LayerNorm([4, 6], elementwise_affine=False)
        self.in1d = nn.InstanceNorm1d(4, affine=True)
        self.in2d = nn.InstanceNorm2d(4)
        self.in2d_stats = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)

    def forward(self, x1, x2, x3):
        outs = [
            self.bn1d(x1), self.bn2d(x2), self.bn2d_plain(x2), self.bn3d(x3), self.bn_nostats(x2),
            self.gn(x2), self.gn_plain(x2), self.ln(x2), self.ln_2d(x2), self.in1d(x1),
            self.in2d(x2), self.in2d_stats(x2),
        ]
        return sum(o.sum() for o in outs)


def _norms(train: bool):
    def build():
        model = Norms().train(train)
        return model, (torch.randn(3, 4, 10), torch.randn(2, 4, 4, 6), torch.randn(2, 2, 3, 4, 4))

    return build


class Resampling(nn.Module):
    """Upsampling, adaptive and plain pooling, grid_sample."""

    def __init__(self) -> None:
        super().__init__()
        self.up_nearest = nn.Upsample(scale_factor=2)
        self.up_bilinear = nn.Upsample(size=(7, 9), mode="bilinear", align_corners=False)
        self.up_bicubic = nn.Upsample(scale_factor=2, mode="bicubic")  # fvcore has no handle
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.aap = nn.AdaptiveAvgPool2d((3, 2))
        self.aap1d = nn.AdaptiveAvgPool1d(4)
        self.amp = nn.AdaptiveMaxPool2d(2)
        self.maxpool = nn.MaxPool2d(2)
        self.avgpool = nn.AvgPool2d(3, stride=1)

    def forward(self, x, grid):
        outs = [
            self.up_nearest(x), self.up_bilinear(x), self.up_bicubic(x),
            F.interpolate(x, scale_factor=3, mode="nearest"),
            F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True),
            self.gap(x), self.aap(x), self.aap1d(x.flatten(2)), self.amp(x),
            F.adaptive_avg_pool2d(x, (1, 1)), self.maxpool(x), self.avgpool(x),
            F.grid_sample(x, grid, align_corners=False),
            F.grid_sample(x, grid, mode="nearest", align_corners=True),
        ]
        return sum(o.sum() for o in outs)


def _resampling():
    return Resampling(), (torch.randn(2, 3, 6, 8), torch.rand(2, 5, 4, 2) * 2 - 1)


class Attention(nn.Module):
    """Multi-head self-attention; ``sdpa`` picks F.scaled_dot_product_attention over matmuls."""

    def __init__(self, dim: int, heads: int, sdpa: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sdpa = sdpa

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def _attention(sdpa: bool):
    def build():
        return Attention(32, 4, sdpa=sdpa), (torch.randn(2, 10, 32),)

    return build


class Block(nn.Module):
    """A ViT block: pre-norm attention and MLP with residuals."""

    def __init__(self, dim: int, heads: int, sdpa: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, sdpa)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, image=32, patch=8, dim=48, depth=2, heads=3, classes=10, sdpa=False) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (image // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, sdpa) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _vit(sdpa: bool):
    def build():
        return ViT(sdpa=sdpa), (torch.randn(2, 3, 32, 32),)

    return build


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class SmallCNN(nn.Module):
    """A ResNet-like CNN: stem, residual stages, global average pooling, classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(2))
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cnn(train: bool):
    def build():
        return SmallCNN().train(train), (torch.randn(2, 3, 32, 32),)

    return build


class UNetLike(nn.Module):
    """Encoder-decoder: GroupNorm convs, max-pool down, bilinear and transposed-conv up, skips."""

    def __init__(self) -> None:
        super().__init__()

        def conv(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())

        self.enc1, self.enc2, self.mid = conv(3, 8), conv(8, 16), conv(16, 16)
        self.down = nn.MaxPool2d(2)
        self.up_bilinear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.up_transposed = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec2, self.dec1 = conv(32, 16), conv(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.down(e1))
        m = self.mid(self.down(e2))
        d2 = self.dec2(torch.cat([self.up_bilinear(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up_transposed(d2), e1], dim=1))
        return self.out(d1)


def _unet():
    return UNetLike(), (torch.randn(1, 3, 16, 16),)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)           # channels last: Linear on 4-D input
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 4, stride=4)
        self.stages = nn.Sequential(ConvNeXtBlock(24), ConvNeXtBlock(24))
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean([-2, -1])))     # a plain mean: uncounted by fvcore


def _convnext():
    return ConvNeXtLike(), (torch.randn(2, 3, 32, 32),)


class MixerLike(nn.Module):
    """MLP-Mixer: token mixing through a transpose, channel mixing, shared LayerNorm."""

    def __init__(self, tokens: int = 16, dim: int = 24) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)  # called twice: the module accumulates both calls
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 32), nn.GELU(), nn.Linear(32, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 48), nn.GELU(), nn.Linear(48, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.token_mlp(self.norm(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channel_mlp(self.norm(x))
        return self.head(x.mean(dim=1))


def _mixer():
    return MixerLike(), (torch.randn(2, 3, 16, 16),)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        scale = torch.sigmoid(self.expand(F.relu(self.reduce(self.pool(x)))))
        return x * scale + F.adaptive_avg_pool2d(x, 1)


class MobileLike(nn.Module):
    """Inverted residual with depthwise conv, BatchNorm in eval, SE, hard-swish, dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32))
        self.se = SqueezeExcite(32)
        self.project = nn.Sequential(nn.Conv2d(32, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.dropout = nn.Dropout(0.2)

    def forward(self, x):
        return x + self.dropout(self.project(self.se(self.depthwise(self.expand(x)))))


def _mobile():
    return MobileLike().eval(), (torch.randn(2, 8, 12, 12),)


class TorchAttention(nn.Module):
    """torch.nn's own attention: MultiheadAttention (explicit bmm, weights returned) and
    TransformerEncoderLayer (which asks for no weights and so runs SDPA)."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)

    def forward(self, x):
        y, _ = self.mha(x, x, x)
        return self.layer(y)


def _torch_attention():
    return TorchAttention(), (torch.randn(2, 6, 32),)


ZOO: list[Entry] = [
    Entry("convs", _convs),
    Entry("transposed_convs", _transposed),
    Entry("linears", _linears),
    Entry("einsums", _einsums),
    Entry("matmuls", _matmuls),
    Entry("norms_train", _norms(True)),
    Entry("norms_eval", _norms(False)),
    Entry("resampling", _resampling),
    # batch 2, 4 heads, 10 tokens, head dim 8: q k^T 2*4*10*10*8 + weights v 2*4*10*10*8
    Entry("attention_matmul", _attention(False)),
    Entry("attention_sdpa", _attention(True), beyond=2 * 4 * 10 * 10 * (8 + 8)),
    Entry("small_cnn_train", _cnn(True)),
    Entry("small_cnn_eval", _cnn(False)),
    Entry("small_vit", _vit(False)),
    # 2 blocks x batch 2 x 3 heads x 17 tokens^2 x (16 + 16)
    Entry("small_vit_sdpa", _vit(True), beyond=2 * 2 * 3 * 17 * 17 * (16 + 16)),
    Entry("unet_like", _unet),
    Entry("convnext_like", _convnext),
    Entry("mixer_like", _mixer),
    Entry("mobile_like", _mobile),
    # the encoder layer's SDPA: batch 2 x 4 heads x 6 tokens^2 x (8 + 8); nn's attention calls
    # its projections inside F.multi_head_attention_forward, where they dispatch as mm/addmm
    Entry("torch_attention", _torch_attention, beyond=2 * 4 * 6 * 6 * (8 + 8), fvcore_names=False),
]

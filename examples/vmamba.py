"""A compact VMamba (Liu et al., "VMamba: Visual State Space Model", arXiv:2401.10166).

Written from the paper (its architecture tables in the appendix) and the model's description:

- a stem turns the image into a 56x56 grid of tokens: a 4x4 stride-4 convolution ("vanilla"), or
  two 3x3 stride-2 convolutions with LayerNorm and GELU between them (VMamba v2);
- four stages of VSS blocks, each block ``x + DropPath(SS2D(norm(x)))`` and, when the MLP ratio is
  positive, ``x + DropPath(MLP(norm2(x)))``; between stages a downsampling halves the grid and
  doubles the width: patch merging (2x2 neighbours concatenated, LayerNorm, Linear) or a 3x3
  stride-2 convolution with LayerNorm;
- a head: LayerNorm, global average pooling, Linear.

SS2D, the 2D selective scan: ``in_proj`` (Linear; with gating it also makes ``z``), a depthwise 3x3
convolution and SiLU, then the cross-scan unfolds the feature map along four routes (row-major,
column-major, and both reversed). Each route k has its own projection ``x_proj_weight[k]`` making
(dt, B, C) and its own low-rank ``dt_projs_weight[k]``; both are raw parameters used directly
through ``torch.einsum``, as VMamba does, not as ``nn.Linear`` calls. The selective scan runs once
over the four routes stacked along channels (``dispatchcount.kernels.selective_scan`` with
``delta_softplus=True``, the dt bias as ``delta_bias``, ``D`` as skip), the cross-merge folds the
four routes back onto the grid, then ``out_norm``, the ``y * silu(z)`` gate when gated, and
``out_proj``.

Builders: :func:`vmamba_tiny_v0` (Vanilla-VMamba-T, published 22.9M params / 5.63 GFLOPs) and
:func:`vmamba_tiny_s1l8` (VMamba-T, "s1l8", published 30.2M params / 4.91 GFLOPs).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dispatchcount.kernels import selective_scan

__all__ = [
    "DropPath",
    "LayerNorm2d",
    "Linear2d",
    "SS2D",
    "VSSBlock",
    "VSSM",
    "vmamba_tiny_v0",
    "vmamba_tiny_s1l8",
]

K_ROUTES = 4  # the cross-scan's four routes


class DropPath(nn.Module):
    """Stochastic depth: in training, drop the whole residual branch of a sample with probability
    ``p`` (and rescale the kept ones); in eval, or with ``p == 0``, return the input untouched."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channel-first ``(B, C, H, W)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A Linear applied to the channels of a channel-first ``(B, C, H, W)`` tensor (a 1x1 conv)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class SS2D(nn.Module):
    """The 2D selective-scan mixer. Input and output are ``(B, H, W, C)``, or ``(B, C, H, W)`` when
    ``channel_first``."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        gated: bool = True,
        channel_first: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.gated, self.channel_first = gated, channel_first
        R, N, K = self.dt_rank, d_state, K_ROUTES

        linear = Linear2d if channel_first else nn.Linear
        self.in_proj = linear(d_model, d_inner * (2 if gated else 1), bias=False)
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
        )
        self.act = nn.SiLU()

        # One (dt, B, C) projection and one low-rank dt projection per route, stacked.
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, N))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))

        self.out_norm = (LayerNorm2d if channel_first else nn.LayerNorm)(d_inner)
        self.out_proj = linear(d_inner, d_model, bias=False)
        self._init_ssm(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        # Mamba's initialisation: dt between dt_min and dt_max after softplus, S4D-real A = -(1..N).
        nn.init.uniform_(self.x_proj_weight, -self.d_inner**-0.5, self.d_inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        u = torch.rand_like(self.dt_projs_bias)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        n = torch.arange(1, self.d_state + 1, dtype=self.A_logs.dtype, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(n).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(x)
        channel_dim = 1 if self.channel_first else -1
        if self.gated:
            x, z = xz.chunk(2, dim=channel_dim)
            z = self.act(z)
        else:
            x = xz
        if not self.channel_first:
            x = x.permute(0, 3, 1, 2)
        x = self.act(self.conv2d(x))  # (B, D, H, W)

        y = self._cross_selective_scan(x)  # (B, D, H, W)
        if self.channel_first:
            y = self.out_norm(y)
        else:
            y = self.out_norm(y.permute(0, 2, 3, 1))
        if self.gated:
            y = y * z
        return self.out_proj(y)

    def _cross_selective_scan(self, x: torch.Tensor) -> torch.Tensor:
        Bsz, D, H, W = x.shape
        L, K, N, R = H * W, K_ROUTES, self.d_state, self.dt_rank

        # Cross-scan: row-major, column-major, and both reversed -> (B, K, D, L).
        routes = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
        xs = torch.cat([routes, routes.flip(-1)], dim=1)

        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)

        ys = selective_scan(
            xs.reshape(Bsz, K * D, L),
            dts.reshape(Bsz, K * D, L),
            -torch.exp(self.A_logs),
            Bs.contiguous(),  # (B, K, N, L): route k's B and C serve its D channels
            Cs.contiguous(),
            D=self.Ds,
            delta_bias=self.dt_projs_bias.reshape(-1),
            delta_softplus=True,
        ).view(Bsz, K, D, L)

        # Cross-merge: undo each route's order and sum the four onto the (H, W) grid.
        ys = ys[:, 0:2] + ys[:, 2:4].flip(-1)
        y = ys[:, 0] + ys[:, 1].view(Bsz, D, W, H).transpose(2, 3).reshape(Bsz, D, L)
        return y.view(Bsz, D, H, W)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, channel_first: bool = False) -> None:
        super().__init__()
        linear = Linear2d if channel_first else nn.Linear
        self.fc1 = linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """``x + DropPath(SS2D(norm(x)))``, then ``x + DropPath(MLP(norm2(x)))`` if ``mlp_ratio > 0``."""

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        mlp_ratio: float = 0.0,
        channel_first: bool = False,
        **ss2d_kwargs,
    ) -> None:
        super().__init__()
        norm = LayerNorm2d if channel_first else nn.LayerNorm
        self.norm = norm(dim)
        self.ss2d = SS2D(dim, channel_first=channel_first, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = norm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), channel_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ss2d(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (``(B, H, W, C)`` -> ``(B, H/2, W/2, 4C)``), LayerNorm,
    then a Linear to ``out_dim``."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        parts = [x[:, i::2, j::2, :] for j in (0, 1) for i in (0, 1)]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


def _conv_downsample(dim: int, out_dim: int, channel_first: bool) -> nn.Sequential:
    """3x3 stride-2 convolution, then LayerNorm (VMamba v2's downsampling)."""
    if channel_first:
        return nn.Sequential(nn.Conv2d(dim, out_dim, 3, 2, 1), LayerNorm2d(out_dim))
    return nn.Sequential(
        Permute(0, 3, 1, 2), nn.Conv2d(dim, out_dim, 3, 2, 1), Permute(0, 2, 3, 1),
        nn.LayerNorm(out_dim),
    )


def _stem(kind: str, in_chans: int, dim: int, channel_first: bool) -> nn.Sequential:
    to_last = [] if channel_first else [Permute(0, 2, 3, 1)]
    norm = LayerNorm2d if channel_first else nn.LayerNorm
    if kind == "patch4":  # 4x4 stride-4 patch embedding
        return nn.Sequential(nn.Conv2d(in_chans, dim, 4, 4), *to_last, norm(dim))
    if kind == "conv2":  # two 3x3 stride-2 convolutions
        if not channel_first:
            raise ValueError("stem='conv2' is built channel-first only (channel_first=True)")
        return nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, 3, 2, 1), LayerNorm2d(dim // 2), nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, 2, 1), LayerNorm2d(dim),
        )
    raise ValueError(f"stem must be 'patch4' or 'conv2', got {kind!r}")


class VSSM(nn.Module):
    """The VMamba backbone and classifier. Input ``(B, in_chans, H, W)``, output ``(B, num_classes)``."""

    def __init__(
        self,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 9, 2),
        num_classes: int = 1000,
        in_chans: int = 3,
        d_state: int = 16,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        conv_bias: bool = True,
        gated: bool = True,
        mlp_ratio: float = 0.0,
        stem: str = "patch4",
        downsample: str = "merge",
        channel_first: bool = False,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims and depths must have the same length, got {dims} and {depths}")
        if downsample not in ("merge", "conv3"):
            raise ValueError(f"downsample must be 'merge' or 'conv3', got {downsample!r}")
        if downsample == "merge" and channel_first:
            raise ValueError("downsample='merge' is built channel-last only (channel_first=False)")
        self.channel_first = channel_first
        self.patch_embed = _stem(stem, in_chans, dims[0], channel_first)

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stage: OrderedDict[str, nn.Module] = OrderedDict()
            for j in range(depth):
                stage[str(j)] = VSSBlock(
                    dim, rates[sum(depths[:i]) + j], mlp_ratio, channel_first,
                    d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank,
                    conv_bias=conv_bias, gated=gated,
                )
            if i + 1 < len(dims):
                stage["downsample"] = (
                    PatchMerging(dim, dims[i + 1]) if downsample == "merge"
                    else _conv_downsample(dim, dims[i + 1], channel_first)
                )
            self.layers.append(nn.Sequential(stage))

        self.norm = (LayerNorm2d if channel_first else nn.LayerNorm)(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"VSSM: x must be (batch, channels, height, width), got {tuple(x.shape)}")
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        if not self.channel_first:
            x = x.permute(0, 3, 1, 2)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


def vmamba_tiny_v0(num_classes: int = 1000, drop_path_rate: float = 0.2) -> VSSM:
    """Vanilla-VMamba-T: dims 96-192-384-768, depths 2-2-9-2, d_state 16, ssm_ratio 2, gated SS2D,
    no MLP, 4x4 patch embedding, patch merging, channel-last. Published: 22.9M params, 5.63 GFLOPs."""
    return VSSM(
        dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), num_classes=num_classes,
        d_state=16, ssm_ratio=2.0, conv_bias=True, gated=True, mlp_ratio=0.0,
        stem="patch4", downsample="merge", channel_first=False, drop_path_rate=drop_path_rate,
    )


def vmamba_tiny_s1l8(num_classes: int = 1000, drop_path_rate: float = 0.2) -> VSSM:
    """VMamba-T (v2, "s1l8"): dims 96-192-384-768, depths 2-2-8-2, d_state 1, ssm_ratio 1, no
    gating, no conv bias, MLP ratio 4, two-conv stem, 3x3 conv downsampling, channel-first.
    Published: 30.2M params, 4.91 GFLOPs."""
    return VSSM(
        dims=(96, 192, 384, 768), depths=(2, 2, 8, 2), num_classes=num_classes,
        d_state=1, ssm_ratio=1.0, conv_bias=False, gated=False, mlp_ratio=4.0,
        stem="conv2", downsample="conv3", channel_first=True, drop_path_rate=drop_path_rate,
    )

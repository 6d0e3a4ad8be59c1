"""Pooling, resampling and grid sampling, worked out by hand."""

import pytest
import torch
import torch.nn.functional as F

from counting import counted



@pytest.fixture
def x():
    return torch.randn(2, 3, 8, 8)


def test_max_pooling_compares_each_window_element(x):
    # 2x2 windows, stride 2: 2*3*4*4 = 96 outputs, 4 comparisons each
    assert counted(lambda: F.max_pool2d(x, 2)) == {"aten.max_pool2d_with_indices": 96 * 4}
    # 3x3 windows, stride 1, padding 1: 2*3*8*8 = 384 outputs, 9 each (borders at full size)
    assert counted(lambda: F.max_pool2d(x, 3, 1, 1)) == {"aten.max_pool2d_with_indices": 384 * 9}


def test_max_pooling_backward_adds_each_gradient_once(x):
    leaf = x.clone().requires_grad_()
    backward = counted(lambda: F.max_pool2d(leaf, 2).backward(torch.ones(2, 3, 4, 4)), "backward")
    assert backward == {"aten.max_pool2d_with_indices_backward": 96}


def test_average_pooling(x):
    # 4 adds and 1 divide per output; backward: 1 divide and 4 adds per gradient element
    assert counted(lambda: F.avg_pool2d(x, 2)) == {"aten.avg_pool2d": 96 * 5}
    leaf = x.clone().requires_grad_()
    backward = counted(lambda: F.avg_pool2d(leaf, 2).backward(torch.ones(2, 3, 4, 4)), "backward")
    assert backward == {"aten.avg_pool2d_backward": 96 * 5}


def test_adaptive_pooling_sums_the_exact_windows():
    x = torch.randn(2, 3, 5, 5)
    # 5 -> 3 per dim: windows [0, 2), [1, 4), [3, 5): lengths 2 + 3 + 2 = 7; 7 * 7 = 49 reads
    # per (sample, channel); 6 of those; + one divide per output (2*3*3*3 = 54)
    assert counted(lambda: F.adaptive_avg_pool2d(x, 3)) == {"aten._adaptive_avg_pool2d": 6 * 49 + 54}
    assert counted(lambda: F.adaptive_max_pool2d(x, 3)) == {"aten.adaptive_max_pool2d": 6 * 49}
    # global average pooling: every element read once, one divide per (sample, channel)
    assert counted(lambda: F.adaptive_avg_pool2d(x, 1)) == {"aten.mean": 150 + 6}


def test_interpolation_is_a_weighted_sum_of_taps():
    x = torch.randn(2, 3, 4, 5)
    out = 2 * 3 * 8 * 10  # scale 2
    bilinear = counted(lambda: F.interpolate(x, scale_factor=2, mode="bilinear"))
    assert bilinear == {"aten.upsample_bilinear2d": out * (2 * 4 - 1)}  # 4 muls + 3 adds
    bicubic = counted(lambda: F.interpolate(x, scale_factor=2, mode="bicubic"))
    assert bicubic == {"aten.upsample_bicubic2d": out * (2 * 16 - 1)}
    linear = counted(lambda: F.interpolate(torch.randn(2, 3, 4), scale_factor=2, mode="linear"))
    assert linear == {"aten.upsample_linear1d": 2 * 3 * 8 * 3}
    assert counted(lambda: F.interpolate(x, scale_factor=2)) == {}  # nearest: a copy


def test_interpolation_backward():
    leaf = torch.randn(2, 3, 4, 5, requires_grad=True)
    grad = torch.ones(2, 3, 8, 10)
    backward = counted(lambda: F.interpolate(leaf, scale_factor=2, mode="bilinear").backward(grad), "backward")
    assert backward == {"aten.upsample_bilinear2d_backward": 480 * 8}  # weight and add per tap
    leaf = torch.randn(2, 3, 4, 5, requires_grad=True)
    backward = counted(lambda: F.interpolate(leaf, scale_factor=2).backward(grad), "backward")
    assert backward == {"aten.upsample_nearest2d_backward": 480}  # each gradient added once


def test_antialiased_resampling_is_separable():
    x = torch.randn(1, 1, 8, 8)
    # bilinear support 2, downscale by 2: 4 taps per dim. Horizontal pass to (8, 4): 32 outputs
    # x 2 x 4; vertical pass to (4, 4): 16 outputs x 2 x 4.
    aa = counted(lambda: F.interpolate(x, size=(4, 4), mode="bilinear", antialias=True))
    assert aa == {"aten._upsample_bilinear2d_aa": 32 * 8 + 16 * 8}


def test_grid_sample():
    x = torch.randn(1, 2, 4, 4)
    grid = torch.zeros(1, 3, 3, 2)
    # bilinear, zero padding: per location 4 (unnormalize 2 coords) + 8 (4 weights); per
    # location and channel 7 (4 muls, 3 adds): 9 locations, 2 channels
    assert counted(lambda: F.grid_sample(x, grid, align_corners=False)) == {"aten.grid_sampler_2d": 9 * (12 + 2 * 7)}
    nearest = counted(lambda: F.grid_sample(x, grid, mode="nearest", align_corners=False))
    assert nearest == {"aten.grid_sampler_2d": 9 * (4 + 2)}
    border = counted(lambda: F.grid_sample(x, grid, padding_mode="border", align_corners=False))
    assert border == {"aten.grid_sampler_2d": 9 * (12 + 4 + 2 * 7)}  # + clip 2 coordinates


def test_affine_grid():
    # 4 x 5 grid of 2 coordinates, each a dot product with (x, y, 1): 3 multiply-adds
    theta = torch.randn(1, 2, 3)
    assert counted(lambda: F.affine_grid(theta, (1, 1, 4, 5), align_corners=False)) == {
        "aten.affine_grid_generator": 40 * 6
    }

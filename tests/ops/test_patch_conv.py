"""PatchConv3d / patch_conv3d against F.conv3d (values and gradients), and DepthVolume's fold_painted
against the dense painted volume it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from occ_core.models.depth_volume import fold_painted, paint_voxels
from occ_core.ops.patch_conv import PatchConv3d, patch_conv3d


@pytest.mark.parametrize("kernel,shape,bias", [((1, 1, 1), (4, 6, 3), True), ((2, 2, 2), (8, 6, 4), True),
                                               ((2, 2, 2), (9, 7, 5), False), ((2, 1, 2), (6, 5, 4), True),
                                               ((4, 4, 2), (8, 12, 6), True)])
def test_patch_conv3d_equals_conv3d_values_and_gradients(kernel, shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, *shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, *kernel, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    ref = F.conv3d(x, w, b, stride=kernel)
    out = patch_conv3d(x, w, b)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    inputs = [x, w] + ([b] if bias else [])
    expected = torch.autograd.grad(ref, inputs, grad)
    got = torch.autograd.grad(out, inputs, grad)
    for e, o in zip(expected, got):
        torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)


def test_patch_conv3d_rejects_a_channel_mismatch():
    with pytest.raises(ValueError, match="3 channels, weight expects 4"):
        patch_conv3d(torch.zeros(1, 3, 2, 2, 2), torch.zeros(5, 4, 1, 1, 1))


def test_patch_conv_module_is_a_drop_in_conv3d():
    torch.manual_seed(0)
    ref = nn.Conv3d(6, 4, 2, stride=2)
    torch.manual_seed(0)
    mod = PatchConv3d(6, 4, 2)
    assert isinstance(mod, nn.Conv3d) and mod.stride == (2, 2, 2)
    assert mod.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():  # same initialisation from the same seed
        torch.testing.assert_close(mod.state_dict()[k], v)
    x = torch.randn(1, 6, 4, 4, 2)
    torch.testing.assert_close(mod(x), ref(x), rtol=1e-5, atol=1e-5)
    no_bias = PatchConv3d(6, 4, 1, bias=False)
    assert no_bias.bias is None and no_bias(x).shape == (1, 4, 4, 4, 2)


@pytest.mark.parametrize("grid,factor", [((8, 6, 4), 2), ((9, 7, 5), 2), ((8, 8, 4), 4)])
def test_fold_painted_equals_the_strided_conv_of_the_painted_volume(grid, factor):
    g = torch.Generator().manual_seed(1)
    B, V, C, H, W = 2, 2, 3, 5, 6
    n = grid[0] * grid[1] * grid[2]
    values = torch.randn(B, V, C, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    flat = torch.randint(0, n // 3, (B, V * H * W), generator=g)  # several points share a voxel
    flat[:, ::5] = n  # pixels without a voxel (the dump slot)
    flat[1, 1::7] = n - 1  # the last voxel, beyond the last whole patch on the odd grid
    w = torch.randn(4, C, factor, factor, factor, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv3d(paint_voxels(values, flat, n).view(B, C, *grid), w, stride=factor)
    out = fold_painted(values, flat, grid, w)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for e, o in zip(torch.autograd.grad(ref, [values, w], grad), torch.autograd.grad(out, [values, w], grad)):
        torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)

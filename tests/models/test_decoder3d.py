"""3D UNet / ASPP / head: shapes, gradients, and overfitting one tiny example."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from occ_core.models.decoder3d import ASPP3d, SSCHead, UNet3d


@pytest.mark.parametrize("norm,full_res_blocks", [("bn", 1), ("gn", 1), ("gn", 0)])
@pytest.mark.parametrize("shape", [(16, 16, 4), (12, 10, 6), (9, 7, 5)])
def test_unet_keeps_shape(norm, full_res_blocks, shape):
    torch.manual_seed(0)
    net = UNet3d(8, norm=norm, full_res_blocks=full_res_blocks)
    x = torch.randn(2, 8, *shape, requires_grad=True)
    y = net(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_aspp_dilations_and_residual():
    aspp = ASPP3d(4, dilations=(1, 2, 3), norm="none")
    assert [c.dilation for c in aspp.conv1] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    for c in list(aspp.conv1) + list(aspp.conv2):
        torch.nn.init.zeros_(c.weight)
        torch.nn.init.zeros_(c.bias)
    x = torch.randn(1, 4, 6, 6, 3)
    torch.testing.assert_close(aspp(x), F.relu(x))  # zero branches: the residual only


@pytest.mark.parametrize("mode", ["trilinear", "deconv"])
def test_head_output_grid(mode):
    head = SSCHead(8, n_classes=20, out_shape=(32, 32, 8), mode=mode, scale_factor=4)
    out = head(torch.randn(2, 8, 8, 8, 2))
    assert out.shape == (2, 20, 32, 32, 8)
    if mode == "trilinear":
        low = head(torch.randn(2, 8, 8, 8, 2), upsample=False)
        assert low.shape == (2, 20, 8, 8, 2) and head.upsample(low).shape == (2, 20, 32, 32, 8)
        assert SSCHead(8, 20, (32, 32, 8), hidden=False)(torch.randn(1, 8, 8, 8, 2)).shape == (1, 20, 32, 32, 8)
    same = SSCHead(8, n_classes=5, out_shape=None, mode=mode)
    assert same(torch.randn(1, 8, 4, 4, 2)).shape == (1, 5, 4, 4, 2)
    if mode == "deconv":
        with pytest.raises(ValueError, match="deconv head"):
            head(torch.randn(1, 8, 4, 4, 2))


def test_overfits_one_tiny_example():
    """UNet + trilinear head learn a voxel-wise function of the input within a few dozen steps."""
    torch.manual_seed(0)
    C, n_cls = 8, 5
    x = torch.randn(1, C, 8, 8, 4)
    target = x[:, :n_cls].argmax(1)  # [1, 8, 8, 4]
    target = F.interpolate(target[:, None].float(), size=(16, 16, 8), mode="nearest")[:, 0].long()
    target[0, :2, :2, :] = 255  # ignored voxels
    net = torch.nn.Sequential(UNet3d(C, norm="gn"), SSCHead(C, n_cls, out_shape=(16, 16, 8), norm="gn"))
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(net(x), target, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        pred = net(x).argmax(1)
    valid = target != 255
    acc = (pred[valid] == target[valid]).float().mean().item()
    assert losses[-1] < 0.3 * losses[0], losses
    assert acc > 0.9, acc

"""voxels_to_gaussians: geometry, opacities, features, dropped voxels, gradients, and a BEV render."""

from __future__ import annotations

import pytest
import torch

from occ_core.data.formats.semantickitti import GRID_ORIGIN, VOXEL_SIZE
from occ_core.render import bev_camera, render_gaussians, voxels_to_gaussians


def small_probs(C=4, shape=(3, 4, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((C,) + shape, generator=g, dtype=torch.float64)
    return torch.softmax(logits, dim=0)


def test_probs_geometry_opacity_features():
    probs = small_probs()
    g = voxels_to_gaussians(probs, keep=0.0)
    assert len(g) == 3 * 4 * 2
    # C-order flat index, centres at origin + (i + 0.5) * voxel
    i = 1 * 8 + 2 * 2 + 1  # voxel (1, 2, 1)
    assert int(g.voxel_index[i]) == i
    expected = torch.tensor(GRID_ORIGIN, dtype=torch.float64) + (torch.tensor([1, 2, 1], dtype=torch.float64) + 0.5) * VOXEL_SIZE
    torch.testing.assert_close(g.means[i], expected)
    torch.testing.assert_close(g.scales, torch.full((24, 3), 0.5 * VOXEL_SIZE, dtype=torch.float64))
    torch.testing.assert_close(g.quats, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).expand(24, 4))
    torch.testing.assert_close(g.opacities[i], 1 - probs[0, 1, 2, 1])
    torch.testing.assert_close(g.features[i], probs[:, 1, 2, 1])
    assert g.means.dtype == torch.float64


def test_scale_factor_voxel_size_origin():
    probs = small_probs()
    g = voxels_to_gaussians(probs, keep=0.0, voxel_size=0.4, scale_factor=0.75, origin=(1.0, 2.0, 3.0))
    torch.testing.assert_close(g.means[0], torch.tensor([1.2, 2.2, 3.2], dtype=torch.float64))
    torch.testing.assert_close(g.scales[0], torch.full((3,), 0.3, dtype=torch.float64))


def test_keep_threshold_mask_and_ignore():
    probs = small_probs()
    occ = 1 - probs[0]
    g = voxels_to_gaussians(probs, keep=0.6)
    assert len(g) == int((occ >= 0.6).sum()) and bool((g.opacities >= 0.6).all())
    mask = torch.zeros(3, 4, 2, dtype=torch.bool)
    mask[0, 0, 0] = mask[2, 3, 1] = True
    g = voxels_to_gaussians(probs, keep=mask)
    assert g.voxel_index.tolist() == [0, 23]
    labels = torch.zeros(3, 4, 2, dtype=torch.long)
    labels[2, 3, 1] = 255
    g = voxels_to_gaussians(probs, labels=labels, keep=mask)
    assert g.voxel_index.tolist() == [0]


def test_labels_one_hot_drop_empty_and_ignore():
    labels = torch.zeros(4, 4, 2, dtype=torch.long)
    labels[0, 0, 0] = 9
    labels[1, 2, 1] = 1
    labels[3, 3, 0] = 255
    g = voxels_to_gaussians(labels=labels)
    assert g.voxel_index.tolist() == [0, 1 * 8 + 2 * 2 + 1]
    assert g.features.shape == (2, 20) and g.features.dtype == torch.float32
    assert g.features[0].argmax() == 9 and g.features[1].argmax() == 1
    torch.testing.assert_close(g.features.sum(1), torch.ones(2))
    torch.testing.assert_close(g.opacities, torch.ones(2))
    with pytest.raises(ValueError, match="label 25"):
        voxels_to_gaussians(labels=torch.full((2, 2, 2), 25))


def test_batch_gives_one_set_per_sample():
    probs = torch.stack([small_probs(seed=0), small_probs(seed=1)])
    gs = voxels_to_gaussians(probs, keep=0.5)
    assert isinstance(gs, list) and len(gs) == 2
    torch.testing.assert_close(gs[1].opacities, (1 - probs[1, 0]).reshape(-1)[gs[1].voxel_index])
    labels = torch.zeros(2, 3, 4, 2, dtype=torch.long)
    labels[1, 0, 0, 0] = 3
    gl = voxels_to_gaussians(labels=labels)
    assert [len(x) for x in gl] == [0, 1]


def test_gradients_reach_probabilities():
    logits = torch.randn(5, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    g = voxels_to_gaussians(torch.softmax(logits, 0), keep=0.0)
    (gl,) = torch.autograd.grad((g.opacities * 2).sum() + (g.features ** 2).sum(), [logits])
    assert float(gl.abs().sum()) > 0


def test_errors():
    with pytest.raises(ValueError, match="probs, labels"):
        voxels_to_gaussians()
    with pytest.raises(ValueError, match="probs must be"):
        voxels_to_gaussians(torch.rand(3, 3))


def test_bev_render_of_labels_shows_top_classes():
    """Ground of road with a 'car' block on it: the BEV's argmax class is the top voxel's class,
    and the rendering is differentiable w.r.t. the probabilities."""
    X, Y, Z = 32, 32, 8
    labels = torch.zeros(X, Y, Z, dtype=torch.long)
    labels[:, :, 0] = 9  # road
    labels[10:16, 12:20, 1:4] = 1  # car on it
    origin = (0.0, -3.2, -2.0)
    cam = bev_camera(origin=origin, extent=(X * 0.2, Y * 0.2, Z * 0.2))
    g = voxels_to_gaussians(labels=labels, origin=origin)
    feats, depth, alpha = render_gaussians(g, cam, backend="torch")
    assert feats.shape == (1, 32, 32, 20)
    cls = feats[0].argmax(-1)
    assert float(alpha[0, 2:-2, 2:-2].min()) > 0.95  # (the exclusive T <= 1e-4 stop can leave ~2 %)
    # pixel (r, c) shows voxel column (31 - r, 31 - c)
    assert int(cls[31 - 12, 31 - 15]) == 1 and int(cls[31 - 2, 31 - 2]) == 9 and int(cls[31 - 25, 31 - 25]) == 9
    # depth: the car's top is nearer the camera than the road
    assert float(depth[0, 31 - 12, 31 - 15]) < float(depth[0, 31 - 25, 31 - 25]) - 0.4
    # differentiable w.r.t. probabilities
    logits = torch.randn(20, X, Y, Z, requires_grad=True)
    gp = voxels_to_gaussians(torch.softmax(logits, 0), labels=labels, origin=origin, keep=(labels > 0))
    f, d, a = render_gaussians(gp, cam, backend="torch")
    (gl,) = torch.autograd.grad(f.sum() + d.sum() + a.sum(), [logits])
    assert torch.isfinite(gl).all() and float(gl.abs().sum()) > 0

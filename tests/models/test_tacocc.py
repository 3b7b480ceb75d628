"""TACOcc and lidar pieces: voxelisation, the adaptive retrieval, the rendering branch, neighbouring frames."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from occ_core.models.fusion import AdaptiveRetrieval, ImageRetrieval, VoxelRetrieval, select_radii
from occ_core.models.lidar_branch import Voxelizer, padded_points


# ------------------------------------------------------------------------------------------------
# Voxelisation
# ------------------------------------------------------------------------------------------------


def test_padded_points_round_trip():
    pts = torch.tensor([[0, 1, 2, 3, .1], [1, 4, 5, 6, .2], [0, 7, 8, 9, .3], [1, 1, 1, 1, .4], [1, 2, 2, 2, .5]])
    pad, count = padded_points({"points": pts}, batch_size=3)
    assert count.tolist() == [2, 3, 0] and pad.shape == (3, 3, 4)
    assert torch.equal(pad[0, :2], pts[[0, 2], 1:]) and torch.equal(pad[1], pts[[1, 3, 4], 1:])
    assert pad[2].abs().sum() == 0
    same, c2 = padded_points({"points_padded": pad, "points_count": count})
    assert same is pad and c2 is count
    with pytest.raises(Exception, match="load_points"):
        padded_points({"images": torch.zeros(1, 1, 3, 4, 4)})


def test_voxelizer_mean_features_and_dropped_points():
    vox = Voxelizer((4, 4, 2), (0.5, 0.5, 0.5), (0.0, 0.0, 0.0))
    pts = torch.tensor([[[0.1, 0.1, 0.1, 1.0], [0.3, 0.2, 0.4, 3.0],  # voxel (0, 0, 0), two points
                         [1.9, 1.9, 0.9, 5.0],  # voxel (3, 3, 1)
                         [2.5, 0.1, 0.1, 9.0],  # outside (x >= 2 m)
                         [0.6, 0.1, 0.1, 7.0]]])  # row 4: past the count, ignored
    out = vox(pts, torch.tensor([4]))
    assert out.mask.sum() == 2 and out.mask[0, 0, 0, 0] and out.mask[0, 3, 3, 1]
    f = out.dense[0, :, 0, 0, 0]
    torch.testing.assert_close(f[:3], torch.tensor([0.2 / 2, 0.15 / 2, 0.25 / 1]))  # mean / grid extent
    torch.testing.assert_close(f[3:], torch.tensor([2.0, float(np.log(3.0))]))
    assert out.dense[0, :, 1, 0, 0].abs().sum() == 0  # the point past the count left nothing


# ------------------------------------------------------------------------------------------------
# Adaptive retrieval
# ------------------------------------------------------------------------------------------------


def test_select_radii_modes():
    logits = torch.tensor([[0.1, 2.0, -1.0]])
    assert torch.equal(select_radii(logits, 1.0, True, training=False), torch.tensor([[0.0, 1.0, 0.0]]))
    soft = select_radii(logits, 2.0, False, training=False)
    torch.testing.assert_close(soft, torch.softmax(logits / 2.0, -1))
    torch.manual_seed(0)
    hard = select_radii(logits.requires_grad_(True), 1.0, True, training=True)
    assert sorted(hard[0].tolist()) == [0.0, 0.0, 1.0]
    (hard * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()  # straight-through: the selector learns
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_fixed_variant_has_one_radius():
    fixed = AdaptiveRetrieval(8, 8, [1, 2, 3], 27, adaptive=False, temperature=1.0, hard=True)
    adaptive = AdaptiveRetrieval(8, 8, [1, 2, 3], 27, adaptive=True, temperature=1.0, hard=True)
    assert fixed.radii == [2.0] and fixed.selector is None
    assert adaptive.radii == [1.0, 2.0, 3.0] and adaptive.selector is not None


def test_voxel_retrieval_reaches_only_the_chosen_radius():
    """A single LiDAR-occupied voxel is retrieved by a query 2 voxels away only when radius 2 is chosen."""
    C = 4
    ret = VoxelRetrieval(C, [1, 2], adaptive=True, temperature=1.0, hard=True).eval()
    lidar = torch.zeros(1, C, 7, 7, 7)
    lidar[0, :, 5, 3, 3] = torch.arange(1.0, C + 1)
    occupied = torch.zeros(1, 7, 7, 7, dtype=torch.bool)
    occupied[0, 5, 3, 3] = True
    index = torch.tensor([[3 * 49 + 3 * 7 + 3]])  # voxel (3, 3, 3): the LiDAR voxel is at +2 along x
    q = torch.zeros(1, 1, C)
    with torch.no_grad():
        ret.value.weight.copy_(torch.eye(C))
        ret.value.bias.zero_()
        ret.out.weight.copy_(torch.eye(C))
        ret.out.bias.zero_()
        for choice in (0, 1):  # selector bias picks radius 1 or 2
            ret.selector.weight.zero_()
            ret.selector.bias.copy_(torch.tensor([5.0, -5.0]) if choice == 0 else torch.tensor([-5.0, 5.0]))
            out, sel = ret(q, index, lidar, occupied)
            assert sel[0, 0].argmax() == choice
            if choice == 0:
                assert out.abs().sum() == 0  # radius 1: no occupied neighbour
            else:
                torch.testing.assert_close(out[0, 0], torch.arange(1.0, C + 1))  # the only occupied one


def test_image_retrieval_samples_around_the_projection():
    """A feature map that is non-zero at one pixel: a voxel projecting there retrieves it, one far away does not."""
    C = 3
    ret = ImageRetrieval(C, [1.0], adaptive=False, temperature=1.0, hard=True, stride=4).eval()
    feat = torch.zeros(1, 1, C, 8, 8)
    feat[0, 0, :, 2, 5] = torch.tensor([1.0, 2.0, 3.0])
    with torch.no_grad():
        ret.value.weight.copy_(torch.eye(C))
        ret.value.bias.zero_()
        ret.out.weight.copy_(torch.eye(C))
        ret.out.bias.zero_()
    pix = torch.tensor([[[[5 * 4 + 1.5, 2 * 4 + 1.5], [1.5, 30.0]]]])  # image pixels: feature (5, 2) and far away
    seen = torch.tensor([[[True, True]]])
    out, _ = ret(torch.zeros(1, 2, C), feat, pix, seen, (32, 32))
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 2.0, 3.0]) / 9)  # one of 9 uniform points
    assert out[0, 1].abs().sum() == 0
    out2, _ = ret(torch.zeros(1, 2, C), feat, pix, torch.tensor([[[False, True]]]), (32, 32))
    assert out2[0, 0].abs().sum() == 0  # not seen by the camera: nothing retrieved


# ------------------------------------------------------------------------------------------------
# Rendering helpers
# ------------------------------------------------------------------------------------------------


def test_lidar_depth_image_and_unmirrored_images():
    from occ_core.models.methods.tacocc import camera_images, lidar_depth_image, ssim
    from occ_core.render import Cameras

    K = torch.tensor([[[10.0, 0, 4.0], [0, 10.0, 3.0], [0, 0, 1]]])
    cams = Cameras(torch.eye(4)[None], K, 8, 6)
    pts = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 2.0], [1.0, 0.0, 5.0], [0.0, 0.0, -3.0], [9.0, 0.0, 1.0]])
    d = lidar_depth_image(pts, cams, (8, 6))
    assert float(d[0, 3, 4]) == 2.0  # the nearer of the two on the axis (u = 4, v = 3)
    assert float(d[0, 3, 6]) == 5.0  # u = 10 * 1 / 5 + 4
    assert int((d > 0).sum()) == 2  # behind the camera and outside the image: nothing
    img = torch.rand(1, 3, 6, 8)
    A = torch.tensor([[[-1.0, 0, 7.0], [0, 1, 0], [0, 0, 1]]], dtype=torch.float64)  # a mirrored network image
    un = camera_images(img, A, (8, 6))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(un, (img.flip(-1) * std + mean).clamp(0, 1))
    x = torch.rand(2, 3, 9, 9)
    torch.testing.assert_close(ssim(x, x), torch.ones_like(x))
    assert float(ssim(x, torch.rand(2, 3, 9, 9)).mean()) < 0.5


# ------------------------------------------------------------------------------------------------
# The model on the synthetic data
# ------------------------------------------------------------------------------------------------

SMALL = ["data.image_scale=0.15", "model.lifting.stride=8", "model.lifting.embed_dims=16", "model.lifting.num_heads=2",
         "model.render.image_scale=0.1", "model.render.max_gaussians=500", "data.flip_prob=0"]


def _model_and_batch(prepared: Path, extra: list[str]):
    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model

    cfg = build_config("tacocc", "tiny", overrides=[f"data.root={prepared}", *SMALL, *extra])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, PreparedDataset(prepared).spec)
    ds = OccDataset(prepared, "train", cfg.data, train=True)
    return model, collate([ds[0]]), cfg


def test_rendering_branch_trains_the_gaussian_heads_and_is_off_in_eval(synthetic_prepared: Path):
    model, batch, _ = _model_and_batch(synthetic_prepared, [])
    model.train()
    out = model(batch)
    losses = model.losses(out, batch)
    assert {"render_photo", "render_depth", "render_sem"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for head in (model.gauss_opacity, model.gauss_colour, model.gauss_offset):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert model.fusion.to_image.selector.weight.grad is not None  # the radius choice learns
    model.eval()
    with torch.no_grad():
        ev = model(batch)
    assert set(ev) == {"logits"}


def test_sequential_rendering_uses_the_neighbours(synthetic_prepared: Path):
    model, batch, _ = _model_and_batch(synthetic_prepared, ["model.render.sequential=true", "data.neighbours=[-5,5]"])
    assert batch["nbr_images"].shape[:3] == (1, 2, 1) and batch["nbr_valid"].tolist() == [[False, True]]
    model.train()
    losses = model.losses(model(batch), batch)
    assert "render_seq_photo" in losses and torch.isfinite(losses["render_seq_photo"])
    del batch["nbr_images"]
    with pytest.raises(Exception, match="data.neighbours"):
        model.losses(model(batch), batch)


def test_neighbour_pose_moves_points_into_the_neighbour_camera(synthetic_prepared: Path):
    """Points of frame i (above the ground) seen through nbr_grid_to_cam land on frame i+5's depth map."""
    from occ_core.data.loading.dataset import DataConfig, OccDataset
    from occ_core.geometry.cameras import project_points

    cur = OccDataset(synthetic_prepared, "train", DataConfig(image_scale=0.3, neighbours=[5], load_points=True))
    nxt = OccDataset(synthetic_prepared, "train", DataConfig(image_scale=0.3))
    s, n = cur[0], nxt[1]
    assert s["nbr_valid"].tolist() == [True]
    pts = s["points"][:, :3].double()
    pts = pts[pts[:, 2] > -0.5]  # off the ground plane (which looks the same after moving forward)

    def median_error(T):
        pix, vis, dep = project_points(pts, T[None], s["intrinsics"][None], s["crop_to_image"][None], cur.image_size)
        d = n["depth"][0, 0].numpy()
        u, v, m = pix[0, 0, :, 0].round().long().numpy(), pix[0, 0, :, 1].round().long().numpy(), vis[0, 0].numpy()
        ok = m & (u >= 0) & (u < d.shape[1]) & (v >= 0) & (v < d.shape[0])
        dd, zz = d[v[ok], u[ok]], dep[0, 0].numpy()[ok]
        return float(np.median(np.abs(zz[dd > 0] - dd[dd > 0])))

    assert median_error(s["nbr_grid_to_cam"][0]) < 0.2 < median_error(s["grid_to_cam"])

"""Depth-map features on a voxel grid (occ_core/models/depth_volume.py) on hand-computed cases, and the
depth volume wired into the shared core."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from occ_core.geometry.cameras import voxel_centres
from occ_core.models.depth_volume import DepthVolume, depth_features, fill_depth_holes, paint_voxels

# velodyne -> camera: x_cam = -y_velo, y_cam = -z_velo, z_cam = x_velo (KITTI-like)
R_VELO_TO_CAM = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
GRID = ((64, 64, 8), (0.8, 0.8, 0.8), (0.0, -25.6, -2.0))


def _camera(f=8.0, cx=7.5, cy=3.5):
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = R_VELO_TO_CAM
    return K[None, None], T[None, None]


def test_fill_depth_holes_takes_the_nearest_neighbour_and_keeps_measurements():
    d = torch.zeros(1, 1, 4, 5)
    d[0, 0, 1, 1] = 7.0
    d[0, 0, 1, 2] = 3.0
    out = fill_depth_holes(d)
    assert out[0, 0, 1, 1] == 7.0 and out[0, 0, 1, 2] == 3.0  # measured pixels unchanged
    assert out[0, 0, 0, 0] == 7.0  # only 7 m is within its 3 x 3 window
    assert out[0, 0, 2, 2] == 3.0  # both are: the nearer wins
    assert out[0, 0, 3, 4] == 0.0  # nothing within reach stays a hole


def test_wall_counts_sdf_and_coverage():
    """A fronto-parallel wall 10 m ahead filling a 16 x 8 image: every pixel's point lies in query-grid
    layer x = 12 (10 m / 0.8 m); voxel centres in front of it along seen rays are free (+1 beyond the
    truncation), behind it -1, and voxels outside the image have no depth."""
    H, W = 8, 16
    K, T = _camera()
    depth = torch.full((1, 1, 1, H, W), 10.0)
    shape, size, origin = GRID
    centres = voxel_centres(shape, size, origin).float()
    f = depth_features(depth, K, T, centres, shape, size, origin, trunc=1.0)[0]
    assert f.shape == (3, *shape)
    count = torch.expm1(f[0])
    # pixel row v's points are at height -(v - 3.5) * 1.25 m: inside the grid's [-2, 4.4) m for rows 0..5
    rows = sum(1 for v in range(H) if -2.0 <= -(v - 3.5) * 1.25 < 4.4)
    assert rows == 6
    assert float(count.sum()) == pytest.approx(rows * W, rel=1e-5)  # every point inside counted once
    assert float(count[12].sum()) == pytest.approx(rows * W, rel=1e-5)  # all in the 9.6-10.4 m layer
    # voxel (x, 32, 2) has its centre 0.4 m left of the axis at height 0: the voxel at x = 2 (2.0 m) is in
    # front of the wall (free), the one at x = 14 (11.6 m) behind it
    iy, iz = 32, 2
    assert f[2, 2, iy, iz] == 1.0 and f[1, 2, iy, iz] == 1.0
    assert f[2, 14, iy, iz] == 1.0 and f[1, 14, iy, iz] == -1.0
    # a centre whose projection misses the image has no depth and a zero distance
    assert f[2, 12, 0, 0] == 0.0 and f[1, 12, 0, 0] == 0.0
    # at the wall the signed distance is the centre's depth offset: layer 12's centres are at 10.0 m
    assert float(f[1, 12, iy, iz]) == pytest.approx(0.0, abs=1e-5)


def test_two_cameras_average_the_signed_distance():
    """The same camera twice, one with the wall at 10 m and one at 20 m: a centre at 14 m is behind the
    first (-1) and in front of the second (+1): the mean is 0 and both count as having depth."""
    H, W = 8, 16
    K, T = _camera()
    depth = torch.stack([torch.full((1, H, W), 10.0), torch.full((1, H, W), 20.0)])[None]  # [1, 2, 1, H, W]
    shape, size, origin = GRID
    centres = voxel_centres(shape, size, origin).float()
    f = depth_features(depth, K.expand(1, 2, 3, 3), T.expand(1, 2, 4, 4), centres, shape, size, origin, 1.0)[0]
    assert f[2, 17, 32, 2] == 1.0
    assert float(f[1, 17, 32, 2]) == pytest.approx(0.0, abs=1e-6)


def test_depth_volume_module_shapes_and_gradients():
    from occ_core.data.spec import GridSpec

    H, W = 8, 16
    K, T = _camera()
    fine = GridSpec((128, 128, 16), (0.4, 0.4, 0.4), (0.0, -25.6, -2.0))
    mod = DepthVolume(fine, factor=2, channels=6)
    batch = {"depth": torch.full((1, 1, 1, H, W), 10.0), "intrinsics": K, "grid_to_cam": T}
    out = mod(batch)
    assert out.shape == (1, 6, 64, 64, 8)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mod.parameters())
    assert float(mod.fold[0].weight.grad.abs().sum()) > 0


def test_paint_voxels_is_the_mean_per_voxel_and_differentiable():
    """Pixels 0, 1 fall in voxel 2, pixel 2 in voxel 0, pixel 3 nowhere (the dump slot n = 4): the
    voxel values are the means of their pixels', 0 where none falls; gradients are 1 / count."""
    values = torch.tensor([[1.0, 3.0, 5.0, 100.0], [2.0, 4.0, -1.0, 100.0]], dtype=torch.float64)  # [C=2, 4 px]
    values = values.view(1, 1, 2, 1, 4).requires_grad_(True)  # [B, V, C, H, W]
    flat = torch.tensor([[2, 2, 0, 4]])
    out = paint_voxels(values, flat, 4)
    assert out.shape == (1, 2, 4)
    assert out[0].tolist() == [[5.0, 0.0, 2.0, 0.0], [-1.0, 0.0, 3.0, 0.0]]
    out.sum().backward()
    assert values.grad.view(2, 4).tolist() == [[0.5, 0.5, 1.0, 0.0]] * 2
    assert torch.autograd.gradcheck(lambda v: paint_voxels(v, flat, 4), (values.detach().clone().requires_grad_(True),))


def test_painted_depth_volume_carries_the_image_at_the_depth_points():
    """A wall 10 m ahead whose left half of the image is red and right half blue: with ``paint=rgb`` the
    fold sees red in the wall's voxels left of the axis (+y) and blue right of it, nothing off the wall;
    with ``paint=features`` the gradient reaches the (strided) feature map."""
    from occ_core.data.spec import GridSpec

    H, W = 8, 16
    K, T = _camera()
    fine = GridSpec((128, 128, 16), (0.4, 0.4, 0.4), (0.0, -25.6, -2.0))
    image = torch.zeros(1, 1, 3, H, W)
    image[..., 0, :, : W // 2] = 1.0  # left half red
    image[..., 2, :, W // 2:] = 1.0  # right half blue
    batch = {"depth": torch.full((1, 1, 1, H, W), 10.0), "intrinsics": K, "grid_to_cam": T, "images": image}
    mod = DepthVolume(fine, factor=2, channels=6, paint="rgb")
    assert mod.fold[0].in_channels == 6
    from occ_core.models.lifting import depth_voxel_index

    flat = depth_voxel_index(batch["depth"], K, T, fine.shape, fine.voxel_size, fine.origin)
    paint = mod.painted(batch, None, flat)[0]  # [3, 128, 128, 16]
    wall = paint.sum(0) > 0
    assert bool(wall.any()) and set(torch.nonzero(wall)[:, 0].tolist()) == {25}  # 10.0-10.4 m: fine layer 25
    left, right = wall.clone(), wall.clone()
    left[:, :64] = False  # y >= 0 (fine index 64 = y 0 m) is left of the camera
    right[:, 64:] = False
    assert bool(left.any()) and bool(right.any())
    assert torch.equal(paint[0][left], torch.ones(int(left.sum())))
    assert torch.equal(paint[2][right], torch.ones(int(right.sum())))
    assert float(paint[0][right].abs().sum()) == 0.0 and float(paint[2][left].abs().sum()) == 0.0
    assert mod(batch).shape == (1, 6, 64, 64, 8)

    feat = torch.randn(1, 1, 6, H // 4, W // 4, requires_grad=True)
    mod = DepthVolume(fine, factor=2, channels=6, paint="features")
    assert mod.fold[0].in_channels == 9
    mod(batch, [feat]).square().sum().backward()
    assert feat.grad is not None and float(feat.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="needs the image features"):
        mod(batch)
    with pytest.raises(ValueError, match="paint must be one of"):
        DepthVolume(fine, factor=2, channels=6, paint="lidar")


@pytest.mark.parametrize("paint", ["rgb", "features"])
def test_core_trains_with_a_painted_depth_volume(paint, synthetic_prepared):
    """``model.lifting.depth_paint`` in the shared core and VPOcc: the losses' gradients reach the image
    encoder through the painted voxels (features) and the fold; inference gives the dataset grid."""
    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model

    spec = PreparedDataset(synthetic_prepared).spec
    for method in ("baseline", "vpocc"):
        cfg = build_config(method, "tiny", overrides=[f"data.root={synthetic_prepared}",
                                                      f"model.lifting.depth_paint={paint}"])
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(cfg, spec)
        batch = collate([OccDataset(synthetic_prepared, "train", cfg.data, train=True)[0]])
        model.train()
        sum(model.losses(model(batch), batch).values()).backward()
        fold = model.depth_volume.fold[0]
        assert fold.in_channels == 3 + (3 if paint == "rgb" else cfg.model.lifting.embed_dims)
        assert float(fold.weight.grad[:, 3:].abs().sum()) > 0  # the paint channels are not all zero
        model.eval()
        with torch.no_grad():
            assert model(batch)["logits"].shape == (1, spec.n_classes, *spec.grid.shape)


def test_depth_paint_is_validated(synthetic_prepared):
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model
    from occ_core.errors import OccError

    with pytest.raises(OccError, match="depth_paint.*must be none, rgb or features"):
        build_config("baseline", "tiny", overrides=["model.lifting.depth_paint=colour"])
    cfg = build_config("baseline", "tiny", overrides=[f"data.root={synthetic_prepared}", "model.lifting.depth_volume=0"])
    assert cfg.model.lifting.depth_paint == "features"  # the tiny default, meaningless without the volume
    with pytest.raises(OccError, match="depth_paint=features paints the depth volume: it needs model.lifting.depth_volume > 0"):
        build_model(cfg, PreparedDataset(synthetic_prepared).spec)


@pytest.mark.parametrize("factor", [2, 4])
def test_core_trains_with_the_depth_volume(factor, synthetic_prepared):
    """The baseline with the depth volume at 1:2 and 1:1 (fold factors 2 and 4 of the query stride 4):
    the losses' gradients reach the folding convolution; inference returns the logits of the grid."""
    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model

    spec = PreparedDataset(synthetic_prepared).spec
    cfg = build_config("baseline", "tiny", overrides=[f"data.root={synthetic_prepared}",
                                                      f"model.lifting.depth_volume={4 // factor}"])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, spec)
    assert model.depth_volume.fold[0].kernel_size == (factor,) * 3
    batch = collate([OccDataset(synthetic_prepared, "train", cfg.data, train=True)[0]])
    model.train()
    sum(model.losses(model(batch), batch).values()).backward()
    assert float(model.depth_volume.fold[0].weight.grad.abs().sum()) > 0
    model.eval()
    with torch.no_grad():
        assert model(batch)["logits"].shape == (1, spec.n_classes, *spec.grid.shape)


def test_depth_volume_must_divide_the_query_stride(synthetic_prepared):
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model
    from occ_core.errors import OccError

    spec = PreparedDataset(synthetic_prepared).spec
    cfg = build_config("baseline", "tiny", overrides=[f"data.root={synthetic_prepared}", "model.lifting.depth_volume=3"])
    with pytest.raises(OccError, match="depth_volume must divide the query stride 4"):
        build_model(cfg, spec)


def test_cigocc_takes_no_depth_volume(synthetic_prepared):
    """CIGOcc is camera-only at inference: its tiny preset leaves the depth volume off, and asking for it is one
    clear error."""
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model
    from occ_core.errors import OccError

    assert build_config("cigocc", "tiny").model.lifting.depth_volume == 0
    assert build_config("cigocc", "tiny").model.lifting.depth_paint == "none"
    assert build_config("baseline", "tiny").model.lifting.depth_volume == 2
    assert build_config("baseline", "paper").model.lifting.depth_volume == 0  # the published setting
    spec = PreparedDataset(synthetic_prepared).spec
    cfg = build_config("cigocc", "tiny", overrides=[f"data.root={synthetic_prepared}", "model.lifting.depth_volume=2"])
    with pytest.raises(OccError, match="cigocc takes no model.lifting.depth_volume"):
        build_model(cfg, spec)

"""The loader's batch (docs/design.md): keys, shapes and dtypes; its camera matrices reproduce the prepared
projections exactly; a flipped sample mirrors images, depth, VP and intrinsics together; points; cameras."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from occ_core.data.prepare.layout import PreparedDataset
from occ_core.data.loading.dataset import DataConfig, OccDataset, collate
from occ_core.errors import OccError
from occ_core.geometry.cameras import project_points, voxel_centres

CFG = DataConfig(image_scale=0.15, target_scales=[1, 2], flip_prob=0.0)


def _batch(root: Path, cfg: DataConfig = CFG, train: bool = False, n: int = 1):
    ds = OccDataset(root, "train", cfg, train=train)
    return ds, collate([ds[i] for i in range(n)])


def test_batch_layout(synthetic_prepared: Path):
    ds, b = _batch(synthetic_prepared)
    spec = PreparedDataset(synthetic_prepared).spec
    V = len(spec.cameras)
    W, H = ds.out_size
    assert (W, H) == (round(spec.cameras[0].image_size[0] * 0.15), round(spec.cameras[0].image_size[1] * 0.15))
    expect = {"images": ((1, V, 3, H, W), torch.float32), "depth": ((1, V, 1, H, W), torch.float32),
              "intrinsics": ((1, V, 3, 3), torch.float64), "grid_to_cam": ((1, V, 4, 4), torch.float64),
              "crop_to_image": ((1, V, 3, 3), torch.float64), "vp": ((1, V, 2), torch.float32),
              "target": ((1, *spec.grid.shape), torch.int64), "target_1_2": ((1, *spec.grid_at(2)), torch.int64)}
    for k, (shape, dtype) in expect.items():
        assert tuple(b[k].shape) == shape and b[k].dtype == dtype, k
    for old in ("image", "K", "Tr", "flipped", "projected_pix_8", "fov_mask_8", "pix_z_8"):
        assert old not in b
    assert b["frame"] == [ds.frames[0].name]
    assert float(b["depth"].max()) > 0 and torch.isfinite(b["vp"]).all()
    K, T = PreparedDataset(synthetic_prepared).calibration(ds.frames[0].sequence)[0]
    np.testing.assert_array_equal(b["grid_to_cam"][0, 0].numpy(), T)
    A = b["crop_to_image"][0, 0].numpy()
    np.testing.assert_allclose(A, [[0.15, 0, 0.075 - 0.5], [0, 0.15, 0.075 - 0.5], [0, 0, 1]], rtol=0, atol=1e-15)
    crop = spec.cameras[0].crop or (0, 0)
    Kc = K.copy()
    Kc[0, 2] -= crop[0]
    Kc[1, 2] -= crop[1]
    np.testing.assert_allclose(b["intrinsics"][0, 0].numpy(), A @ Kc, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("flip", [False, True])
def test_batch_matrices_reproduce_the_prepared_projections(synthetic_prepared: Path, flip: bool):
    """project_points on the batch's matrices = geometry.npz's projected_pix_S / fov_mask_S / pix_z_S (first
    camera) exactly after rounding in the crop; a flipped sample's folded intrinsics give the mirrored pixels."""
    ds, b = _batch(synthetic_prepared, dataclasses.replace(CFG, flip_prob=1.0 if flip else 0.0), train=flip)
    assert ds.flipped(0) == flip
    data = PreparedDataset(synthetic_prepared)
    geo = data.geometry(ds.frames[0].sequence)
    crop = data.spec.cameras[0].image_size
    W = ds.out_size[0]
    for S in (2, 8):
        g = data.spec.grid.scaled(S)
        pix, vis, z = project_points(voxel_centres(g.shape, g.voxel_size, g.origin), b["grid_to_cam"][:, :1],
                                     b["intrinsics"][:, :1], b["crop_to_image"][:, :1], crop)
        fov = geo[f"fov_mask_{S}"]
        assert fov.sum() > 100
        np.testing.assert_array_equal(vis[0, 0].numpy(), fov)  # one camera: in view of any = of the first
        np.testing.assert_allclose(z[0, 0].numpy(), geo[f"pix_z_{S}"], rtol=1e-6, atol=1e-5)
        u, v = pix[0, 0, fov].double().numpy().T
        if flip:
            u = W - 1 - u  # the mirrored pixel
        ref = geo[f"projected_pix_{S}"][fov]
        np.testing.assert_array_equal(np.round((u + 0.5) / 0.15 - 0.5), ref[:, 0])
        np.testing.assert_array_equal(np.round((v + 0.5) / 0.15 - 0.5), ref[:, 1])


def test_flip_mirrors_images_depth_vp_and_intrinsics_together(synthetic_prepared: Path):
    _, b = _batch(synthetic_prepared)
    ds_f, f = _batch(synthetic_prepared, dataclasses.replace(CFG, flip_prob=1.0), train=True)
    W = ds_f.out_size[0]
    torch.testing.assert_close(f["images"], b["images"].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(f["depth"], b["depth"].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(f["vp"][..., 0], W - 1 - b["vp"][..., 0], rtol=0, atol=1e-4)
    torch.testing.assert_close(f["vp"][..., 1], b["vp"][..., 1], rtol=0, atol=0)
    assert torch.equal(f["grid_to_cam"], b["grid_to_cam"])
    mirror = torch.tensor([[-1.0, 0, W - 1.0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(f["intrinsics"], mirror @ b["intrinsics"], rtol=0, atol=1e-12)
    torch.testing.assert_close(f["crop_to_image"], mirror @ b["crop_to_image"], rtol=0, atol=1e-12)
    assert float(f["intrinsics"][0, 0, 0, 0]) < 0
    assert torch.equal(f["target"], b["target"])  # the scene is not flipped


def test_points_and_collate(synthetic_prepared: Path):
    from occ_core.data.formats import semantickitti as sk

    ds, b = _batch(synthetic_prepared, dataclasses.replace(CFG, load_points=True), n=2)
    pts = b["points"]
    assert pts.dtype == torch.float32 and pts.shape[1] == 5
    scans = [sk.read_scan(ds.data.raw_path(f, "velodyne")) for f in ds.frames[:2]]
    assert pts.shape[0] == sum(len(s) for s in scans)
    assert torch.equal(pts[:, 0], torch.cat([torch.full((len(s),), float(i)) for i, s in enumerate(scans)]))
    np.testing.assert_array_equal(pts[pts[:, 0] == 1, 1:].numpy(), scans[1].astype(np.float32))
    assert b["images"].shape[0] == 2 and b["frame"] == [f.name for f in ds.frames[:2]]


def test_cameras_option(synthetic_prepared: Path):
    spec = PreparedDataset(synthetic_prepared).spec
    ds = OccDataset(synthetic_prepared, "train", dataclasses.replace(CFG, cameras=[spec.camera_names[0]]))
    assert ds.spec.camera_names == spec.camera_names[:1] and ds[0]["images"].shape[0] == 1
    with pytest.raises(OccError, match="data.cameras"):
        OccDataset(synthetic_prepared, "train", dataclasses.replace(CFG, cameras=["image_9"]))
    with pytest.raises(OccError, match="target_scales"):
        OccDataset(synthetic_prepared, "train", dataclasses.replace(CFG, target_scales=[3]))

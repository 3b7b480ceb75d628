"""Cameras: the sensor camera agrees with the loaders' projection, BEV maps the grid to the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from occ_core.data.formats.semantickitti import GRID_SHAPE
from occ_core.geometry.projection import project_voxels, voxel_centres
from occ_core.ops.gaussian_raster import rasterize_gaussians
from occ_core.render.cameras import (
    GRID_CENTRE,
    bev_camera,
    elevated_camera,
    look_at,
    orbit_cameras,
    random_cameras,
    sensor_camera,
)
from _raw import kitti_calib


def kitti_cam():
    calib = kitti_calib()
    return calib["P2"], calib["Tr"]


def test_sensor_camera_matches_project_voxels():
    P2, Tr = kitti_cam()
    ref = project_voxels(Tr, P2, (1220, 370), scale=4)
    cam = sensor_camera(P2, Tr, (1220, 370), dtype=torch.float64)
    uv, z = cam.project(torch.from_numpy(voxel_centres(scale=4)))
    pix = torch.floor(uv[0]).long().numpy()
    fov = ref["fov_mask"]
    assert fov.sum() > 1000
    # away from exact half-pixel ties, floor(u + 0.5) == round(u)
    frac = np.abs(np.modf(uv[0].numpy() - 0.5)[0])
    clear = fov & np.all((frac > 1e-6) & (frac < 1 - 1e-6), axis=1)
    assert clear.sum() > 0.99 * fov.sum()
    np.testing.assert_array_equal(pix[clear], ref["projected_pix"][clear])
    np.testing.assert_allclose(z[0].numpy(), ref["pix_z"], rtol=1e-5)


@pytest.mark.parametrize("voxel", [(40, 128, 8), (100, 90, 10), (60, 150, 12)])
def test_sensor_camera_renders_voxel_into_its_pixel(voxel):
    """A small Gaussian at a voxel centre lights up the pixel project_voxels gives that voxel."""
    P2, Tr = kitti_cam()
    ref = project_voxels(Tr, P2, (1220, 370))
    flat = np.ravel_multi_index(voxel, GRID_SHAPE)
    assert ref["fov_mask"][flat]
    u, v = ref["projected_pix"][flat]
    cam = sensor_camera(P2, Tr, (1220, 370), dtype=torch.float64)
    centre = torch.from_numpy(voxel_centres()[flat][None])
    _, _, alpha = rasterize_gaussians(centre, torch.full((1, 3), 0.01, dtype=torch.float64),
                                      torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
                                      torch.ones(1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                                      **cam.raster_args(), backend="torch")
    a = alpha[0, :, :, 0]
    r, c = divmod(int(torch.argmax(a)), a.shape[1])
    assert (c, r) == (u, v)


def test_sensor_camera_batch_and_3x4():
    P2, Tr = kitti_cam()
    cams = sensor_camera(np.stack([P2, P2]), np.stack([Tr, Tr]), (610, 185))
    assert len(cams) == 2 and cams.viewmats.shape == (2, 4, 4) and cams.Ks.shape == (2, 3, 3)
    assert cams.width == 610 and cams.height == 185
    np.testing.assert_allclose(cams.viewmats[0, :3].numpy(), Tr, rtol=1e-6)
    np.testing.assert_allclose(cams.viewmats[0, 3].numpy(), [0, 0, 0, 1])
    assert math.isclose(float(cams.Ks[0, 0, 2]), P2[0, 2] + 0.5, rel_tol=1e-6)
    one = sensor_camera(P2, np.stack([Tr, Tr, Tr]), (1220, 370))
    assert len(one) == 3 and one.width == 1220 and one.height == 370


def test_bev_corners_and_orientation():
    cam = bev_camera(dtype=torch.float64)
    assert (cam.width, cam.height, cam.camera_model) == (256, 256, "ortho")
    corners = torch.tensor([[51.2, 25.6, 0.0], [51.2, -25.6, 0.0], [0.0, 25.6, 0.0], [0.0, -25.6, 0.0]],
                           dtype=torch.float64)
    uv, z = cam.project(corners)
    torch.testing.assert_close(uv[0], torch.tensor([[0.0, 0.0], [256.0, 0.0], [0.0, 256.0], [256.0, 256.0]],
                                                   dtype=torch.float64))
    assert bool((z > 0).all())
    # higher points are nearer the camera (it looks down -z)
    _, z2 = cam.project(torch.tensor([[10.0, 0.0, -2.0], [10.0, 0.0, 4.0]], dtype=torch.float64))
    assert float(z2[0, 0]) > float(z2[0, 1])
    # voxel column (i, j) lands in pixel (255 - i, 255 - j)
    flat = np.arange(0, 256 * 256 * 32, 37)
    uv, _ = cam.project(torch.from_numpy(voxel_centres()[flat]))
    idx = np.stack(np.unravel_index(flat, GRID_SHAPE), 1)
    rows = np.floor(uv[0, :, 1].numpy()).astype(int)
    cols = np.floor(uv[0, :, 0].numpy()).astype(int)
    np.testing.assert_array_equal(rows, 255 - idx[:, 0])
    np.testing.assert_array_equal(cols, 255 - idx[:, 1])


def test_bev_resolution():
    cam = bev_camera(resolution=0.4)
    assert (cam.width, cam.height) == (128, 128)


def test_look_at_is_a_rotation_and_centres_target():
    M = look_at((-5.0, 3.0, 8.0), (20.0, -1.0, 0.5))
    R = M[:3, :3]
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64))
    assert math.isclose(float(torch.linalg.det(R)), 1.0, abs_tol=1e-12)
    p = M[:3, :3] @ torch.tensor([20.0, -1.0, 0.5], dtype=torch.float64) + M[:3, 3]
    assert abs(float(p[0])) < 1e-9 and abs(float(p[1])) < 1e-9 and float(p[2]) > 0


def test_elevated_camera_behind_above_and_upright():
    cam = elevated_camera(dtype=torch.float64)
    pos = cam.positions()[0]
    assert float(pos[0]) < 0 and float(pos[2]) > 5
    uv, z = cam.project(torch.tensor([GRID_CENTRE, [GRID_CENTRE[0], GRID_CENTRE[1], GRID_CENTRE[2] + 3.0],
                                      [GRID_CENTRE[0], GRID_CENTRE[1] + 5.0, GRID_CENTRE[2]]], dtype=torch.float64))
    torch.testing.assert_close(uv[0, 0], torch.tensor([cam.width / 2, cam.height / 2], dtype=torch.float64))
    assert float(uv[0, 1, 1]) < float(uv[0, 0, 1])  # +z is up in the image
    assert float(uv[0, 2, 0]) < float(uv[0, 0, 0])  # +y (left of the car) is left in the image


def test_orbit_cameras():
    cams = orbit_cameras(6, radius=20.0, height=10.0, dtype=torch.float64)
    assert len(cams) == 6
    pos = cams.positions()
    tgt = torch.tensor(GRID_CENTRE, dtype=torch.float64)
    d = pos - tgt
    torch.testing.assert_close(d[:, :2].norm(dim=1), torch.full((6,), 20.0, dtype=torch.float64))
    torch.testing.assert_close(d[:, 2], torch.full((6,), 10.0, dtype=torch.float64))
    assert float(pos[0, 0]) < tgt[0]  # the first one is behind
    uv, z = cams.project(tgt[None])
    torch.testing.assert_close(uv[:, 0], torch.tensor([[cams.width / 2, cams.height / 2]] * 6, dtype=torch.float64))


def test_random_cameras_deterministic_and_valid():
    a = random_cameras(5, torch.Generator().manual_seed(3))
    b = random_cameras(5, torch.Generator().manual_seed(3))
    c = random_cameras(5, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.viewmats, b.viewmats)
    torch.testing.assert_close(a.Ks, b.Ks)
    assert not torch.allclose(a.viewmats, c.viewmats)
    R = a.viewmats[:, :3, :3].double()
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3), atol=1e-6, rtol=0)
    # the grid centre is in front of every camera and inside the image
    uv, z = a.project(torch.tensor([GRID_CENTRE]))
    assert bool((z > 0).all())
    assert bool(((uv[..., 0] > 0) & (uv[..., 0] < a.width) & (uv[..., 1] > 0) & (uv[..., 1] < a.height)).all())

"""On-device projection (occ_core/geometry/cameras.py) against the loaders' numpy projection, multi-camera
shapes, depth back-projection, and the closed-form inverses (occ_core/geometry/linalg.py) against torch.linalg."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from occ_core.data.formats import semantickitti as sk
from occ_core.data.loading.dataset import crop_to_image
from occ_core.geometry.cameras import project_points, unproject_depth, voxel_centres
from occ_core.geometry.linalg import adjugate3x3, homography4, inverse3x3, inverse_rigid4x4
from occ_core.geometry.projection import project_voxels
from occ_core.geometry.projection import voxel_centres as np_voxel_centres

from _raw import kitti_calib

CROP = sk.IMAGE_SIZE  # (1220, 370)


def _kitti():
    c = kitti_calib()
    return c["P2"][:3, :3].copy(), sk.to_homogeneous(c["Tr"])


def _yaw(T: np.ndarray, deg: float) -> np.ndarray:
    a = math.radians(deg)
    R = np.eye(4)
    R[0, 0], R[0, 2], R[2, 0], R[2, 2] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
    return R @ T


def _centres(scale: int) -> torch.Tensor:
    g = sk.grid_spec().scaled(scale)
    return voxel_centres(g.shape, g.voxel_size, g.origin)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_voxel_centres_match_numpy(scale: int):
    c = _centres(scale)
    assert c.dtype == torch.float64
    np.testing.assert_array_equal(c.numpy(), np_voxel_centres(scale))
    np.testing.assert_allclose(c.numpy(), sk.grid_spec().centres(scale), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_project_points_equals_project_voxels_exactly(scale: int):
    K, T = _kitti()
    ref = project_voxels(T, K, CROP, scale=scale)
    A = np.eye(3)  # network image = the crop
    pix, vis, z = project_points(_centres(scale), torch.from_numpy(T)[None, None], torch.from_numpy(K)[None, None],
                                 torch.from_numpy(A)[None, None], CROP)
    n = len(ref["fov_mask"])
    assert pix.shape == (1, 1, n, 2) and vis.shape == (1, 1, n) and z.shape == (1, 1, n)
    assert pix.dtype == torch.float32 and vis.dtype == torch.bool and z.dtype == torch.float32
    np.testing.assert_array_equal(vis[0, 0].numpy(), ref["fov_mask"])
    fov = ref["fov_mask"]
    assert fov.sum() > 0.05 * n
    np.testing.assert_array_equal(pix[0, 0].numpy()[fov].astype(np.int64), ref["projected_pix"][fov])
    np.testing.assert_array_equal(z[0, 0].numpy(), ref["pix_z"])


@pytest.mark.parametrize("image_scale,flip", [(0.5, False), (0.5, True), (0.3, True), (1.0, True)])
def test_resized_and_flipped_network_images(image_scale: float, flip: bool):
    """Folded intrinsics (crop_to_image @ K): the loader's pixels mapped to the network image; a flipped
    image's (fx < 0) are the mirrored pixels."""
    K, T = _kitti()
    W = round(CROP[0] * image_scale)
    ref = project_voxels(T, K, CROP, scale=4)
    fov = ref["fov_mask"]
    A = crop_to_image(image_scale, W, flip)
    pix, vis, _ = project_points(_centres(4), torch.from_numpy(T)[None, None], torch.from_numpy(A @ K)[None, None],
                                 torch.from_numpy(A)[None, None], CROP)
    np.testing.assert_array_equal(vis[0, 0].numpy(), fov)
    u, v = ref["projected_pix"][fov].T.astype(np.float64)
    eu = (u + 0.5) * image_scale - 0.5
    ev = (v + 0.5) * image_scale - 0.5
    if flip:
        eu = W - 1 - eu
    np.testing.assert_allclose(pix[0, 0, fov, 0].numpy(), eu, rtol=0, atol=1e-4)
    np.testing.assert_allclose(pix[0, 0, fov, 1].numpy(), ev, rtol=0, atol=1e-4)
    # exactly the loader's integer pixel back in the crop
    cu = pix[0, 0, fov, 0].double().numpy()
    cu = (W - 1 - cu) if flip else cu
    np.testing.assert_array_equal(np.round((cu + 0.5) / image_scale - 0.5), u)


def test_multi_camera_shapes_and_per_camera_results():
    K, T = _kitti()
    Ts = np.stack([T, _yaw(T, 50.0), _yaw(T, -50.0)])
    Ks = np.stack([K, K * np.array([[0.9], [0.9], [1.0]]), K])
    B, N = 2, 3
    pts = _centres(8)  # [M, 3]
    M = pts.shape[0]
    Tb = torch.from_numpy(Ts)[None].expand(B, N, 4, 4)
    Kb = torch.from_numpy(Ks)[None].expand(B, N, 3, 3)
    Ab = torch.eye(3, dtype=torch.float64).expand(B, N, 3, 3)
    pix, vis, z = project_points(pts, Tb, Kb, Ab, CROP)
    assert pix.shape == (B, N, M, 2) and vis.shape == (B, N, M) and z.shape == (B, N, M)
    for n in range(N):
        ref = project_voxels(Ts[n], Ks[n], CROP, scale=8)
        np.testing.assert_array_equal(vis[1, n].numpy(), ref["fov_mask"])
        m = ref["fov_mask"]
        np.testing.assert_array_equal(pix[1, n].numpy()[m].astype(np.int64), ref["projected_pix"][m])
    assert not torch.equal(vis[0, 0], vis[0, 1]) and (vis[0, 1] & vis[0, 2]).sum() < vis[0, 1].sum()
    # per-sample points [B, M, 3]: sample 1's points shifted 1 m forward
    shift = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    pts_b = torch.stack([pts, pts + shift])
    pix_b, vis_b, z_b = project_points(pts_b, Tb, Kb, Ab, CROP)
    assert pix_b.shape == (B, N, M, 2)
    assert torch.equal(pix_b[0], pix[0]) and torch.equal(vis_b[0], vis[0])
    p1, v1, z1 = project_points(pts + shift, Tb[1:], Kb[1:], Ab[1:], CROP)
    assert torch.equal(pix_b[1:], p1) and torch.equal(vis_b[1:], v1) and torch.equal(z_b[1:], z1)
    assert not torch.equal(z_b[1], z[1])


def test_without_crop_to_image_pixels_are_not_rounded():
    K, T = _kitti()
    pts = _centres(8)
    Tt, Kt = torch.from_numpy(T)[None, None], torch.from_numpy(K)[None, None]
    pix, vis, z = project_points(pts, Tt, Kt, None, CROP)
    cam = pts.numpy() @ T[:3, :3].T + T[:3, 3]
    u = (K[0, 0] * cam[:, 0] + K[0, 1] * cam[:, 1]) / cam[:, 2] + K[0, 2]
    v = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
    front = cam[:, 2] > 0
    np.testing.assert_allclose(pix[0, 0, front, 0].numpy(), u[front], rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(pix[0, 0, front, 1].numpy(), v[front], rtol=1e-6, atol=1e-3)
    expected = front & (u > -0.5) & (u < CROP[0] - 0.5) & (v > -0.5) & (v < CROP[1] - 0.5)
    np.testing.assert_array_equal(vis[0, 0].numpy(), expected)
    assert not np.allclose(pix[0, 0, front, 0].numpy(), np.round(u[front]))
    # rounding switched off with crop_to_image: the same unrounded pixels
    pix2, _, _ = project_points(pts, Tt, Kt, torch.eye(3, dtype=torch.float64)[None, None], CROP, round_pixels=False)
    np.testing.assert_allclose(pix2[0, 0, front].numpy(), pix[0, 0, front].numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("flip", [False, True])
def test_unproject_depth_inverts_project_points(flip: bool):
    """Every pixel (u, v) with depth d back-projects to a point that projects (unrounded) to (u, v) at depth d,
    for several cameras at once and for mirrored (fx < 0) intrinsics."""
    K, T = _kitti()
    H, W = 37, 122
    A = crop_to_image(0.1, W, flip)
    Ts = np.stack([T, _yaw(T, 30.0)])
    Ks = np.stack([A @ K, A @ K])
    g = torch.Generator().manual_seed(0)
    depth = (torch.rand(2, 2, 1, H, W, generator=g, dtype=torch.float64) * 60 + 1).float()
    Tb, Kb = torch.from_numpy(Ts)[None].expand(2, 2, 4, 4), torch.from_numpy(Ks)[None].expand(2, 2, 3, 3)
    pts = unproject_depth(depth, Kb, Tb)
    assert pts.shape == (2, 2, H * W, 3) and pts.dtype == torch.float64
    vv, uu = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    for n in range(2):
        pix, vis, z = project_points(pts[:, n], Tb[:, n:n + 1], Kb[:, n:n + 1], None, (W, H), round_pixels=False)
        torch.testing.assert_close(pix[:, 0, :, 0].double(), uu.reshape(-1).expand(2, -1), rtol=0, atol=1e-3)
        torch.testing.assert_close(pix[:, 0, :, 1].double(), vv.reshape(-1).expand(2, -1), rtol=0, atol=1e-3)
        torch.testing.assert_close(z[:, 0], depth[:, n, 0].reshape(2, -1), rtol=1e-6, atol=1e-5)
        assert bool(vis.all())
    # float64 end to end: the round trip is exact to 1e-9 px
    cam = torch.einsum("bij,bmj->bmi", Tb[:, 0, :3, :3], pts[:, 0]) + Tb[:, 0, None, :3, 3]
    uv = cam @ Kb[:, 0].transpose(-1, -2)
    torch.testing.assert_close(uv[..., 0] / uv[..., 2], uu.reshape(-1).expand(2, -1), rtol=0, atol=1e-9)
    # depth 0 gives the camera centre
    zero = unproject_depth(torch.zeros(1, 1, 1, 2, 2), Kb[:1, :1], Tb[:1, :1])
    centre = -T[:3, :3].T @ T[:3, 3]
    np.testing.assert_allclose(zero[0, 0].numpy(), np.tile(centre, (4, 1)), atol=1e-12)


# -- closed-form linear algebra ------------------------------------------------------------------
def _well_conditioned(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 3, generator=g, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)


def test_inverse3x3_and_adjugate_match_torch_linalg_with_gradients():
    m = _well_conditioned(64, 0)
    torch.testing.assert_close(inverse3x3(m), torch.linalg.inv(m), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(adjugate3x3(m), torch.linalg.inv(m) * torch.linalg.det(m)[:, None, None],
                               rtol=1e-10, atol=1e-10)
    # batched over extra dims, and the loader's crop_to_image / folded intrinsics
    A = torch.from_numpy(np.stack([crop_to_image(0.3, 366, f) for f in (False, True)]))[None]
    torch.testing.assert_close(inverse3x3(A), torch.linalg.inv(A), rtol=0, atol=1e-12)
    w = torch.randn(64, 3, 3, dtype=torch.float64)
    a, b = m.clone().requires_grad_(), m.clone().requires_grad_()
    ga, = torch.autograd.grad((inverse3x3(a) * w).sum(), a)
    gb, = torch.autograd.grad((torch.linalg.inv(b) * w).sum(), b)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10)
    assert torch.autograd.gradcheck(inverse3x3, (m[:4].clone().requires_grad_(),))


def test_inverse_rigid4x4_matches_torch_linalg_with_gradients():
    _, T = _kitti()
    Ts = torch.from_numpy(np.stack([T, _yaw(T, 30.0), _yaw(T, -120.0)]))
    torch.testing.assert_close(inverse_rigid4x4(Ts), torch.linalg.inv(Ts), rtol=0, atol=1e-12)
    # any invertible upper-left block with a 0 0 0 1 last row (not only rotations)
    g = torch.Generator().manual_seed(1)
    M = torch.zeros(5, 4, 4, dtype=torch.float64)
    M[:, :3, :3] = _well_conditioned(5, 2)
    M[:, :3, 3] = torch.randn(5, 3, generator=g, dtype=torch.float64) * 10
    M[:, 3, 3] = 1
    torch.testing.assert_close(inverse_rigid4x4(M), torch.linalg.inv(M), rtol=1e-10, atol=1e-10)
    w = torch.randn(5, 4, 4, generator=g, dtype=torch.float64)
    a, b = M.clone().requires_grad_(), M.clone().requires_grad_()
    ga, = torch.autograd.grad((inverse_rigid4x4(a) * w).sum(), a)
    gb, = torch.autograd.grad((torch.linalg.inv(b) * w).sum(), b)
    # the last row is structural (0 0 0 1): compare the gradients of the free entries
    torch.testing.assert_close(ga[:, :3], gb[:, :3], rtol=1e-9, atol=1e-10)


def _dlt(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The 8x8 linear solve for H (H[2, 2] = 1) with dst ~ H [src, 1]."""
    rows, rhs = [], []
    for i in range(4):
        x, y = src[..., i, 0], src[..., i, 1]
        u, v = dst[..., i, 0], dst[..., i, 1]
        o, z = torch.ones_like(x), torch.zeros_like(x)
        rows += [torch.stack([x, y, o, z, z, z, -u * x, -u * y], -1), torch.stack([z, z, z, x, y, o, -v * x, -v * y], -1)]
        rhs += [u, v]
    h = torch.linalg.solve(torch.stack(rows, -2), torch.stack(rhs, -1))
    return torch.cat([h, torch.ones_like(h[..., :1])], -1).reshape(*h.shape[:-1], 3, 3)


def test_homography4_matches_the_linear_solve_with_gradients():
    g = torch.Generator().manual_seed(3)
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    src = square * torch.tensor([600.0, 180.0], dtype=torch.float64) + torch.rand(16, 4, 2, generator=g, dtype=torch.float64) * 40
    dst = square * torch.tensor([610.0, 185.0], dtype=torch.float64) + torch.rand(16, 4, 2, generator=g, dtype=torch.float64) * 40
    H = homography4(src, dst)
    torch.testing.assert_close(H, _dlt(src, dst), rtol=1e-7, atol=1e-9)
    assert torch.all(H[:, 2, 2] == 1)
    p = torch.cat([src, torch.ones(16, 4, 1, dtype=torch.float64)], -1) @ H.transpose(-1, -2)
    torch.testing.assert_close(p[..., :2] / p[..., 2:], dst, rtol=0, atol=1e-8)
    w = torch.randn(16, 3, 3, generator=g, dtype=torch.float64)
    a, b = dst.clone().requires_grad_(), dst.clone().requires_grad_()
    ga, = torch.autograd.grad((homography4(src, a) * w).sum(), a)
    gb, = torch.autograd.grad((_dlt(src, b) * w).sum(), b)
    torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-9)

"""Depth proposal (synthetic planes, expected voxels computed by hand) and voxel-query lifting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from occ_core.geometry.projection import project_voxels
from occ_core.models.lifting import (
    DepthProposal,
    VoxelQueryLifting,
    pad_selected,
    project_voxel_centres,
    voxel_centres,
)

# velodyne -> camera: x_cam = -y_velo, y_cam = -z_velo, z_cam = x_velo (KITTI-like, no translation)
R_VELO_TO_CAM = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])


def _calib(f=8.0, cx=7.5, cy=3.5, t=(0.0, 0.0, 0.0)):
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    Tr = torch.eye(4)
    Tr[:3, :3] = R_VELO_TO_CAM
    Tr[:3, 3] = torch.tensor(t)
    return K, Tr


def _flat(ix, iy, iz, Y, Z):
    return ix * Y * Z + iy * Z + iz


def test_wall_marks_the_expected_voxels():
    """A fronto-parallel wall 10 m ahead seen by a 16x8 camera (f = 8, centre (7.5, 3.5)).

    Pixel (u, v) at depth 10 back-projects to velodyne (10, -(u - 7.5) * 1.25, -(v - 3.5) * 1.25);
    with 0.8 m voxels (64 x 64 x 8 grid from (0, -25.6, -2)) that is voxel
    (12, floor((25.6 - (u - 7.5) * 1.25) / 0.8), floor((2 - (v - 3.5) * 1.25) / 0.8)), kept when inside.
    """
    H, W = 8, 16
    K, Tr = _calib()
    depth = torch.full((1, 1, H, W), 10.0)
    X, Y, Z = 64, 64, 8
    expected = set()
    for u in range(W):
        for v in range(H):
            iy = math.floor((25.6 - (u - 7.5) * 1.25) / 0.8)
            iz = math.floor((2.0 - (v - 3.5) * 1.25) / 0.8)
            if 0 <= iz < Z:  # every iy is inside; rows v = 6, 7 fall below the grid
                expected.add(_flat(12, iy, iz, Y, Z))
    assert len(expected) == W * 6  # one voxel per pixel: the pixel footprint (1.25 m) > voxel (0.8 m)
    occ = DepthProposal((X, Y, Z), dilate=0)(depth, K[None], Tr[None])
    assert occ.shape == (1, X * Y * Z) and occ.dtype == torch.bool
    assert set(occ[0].nonzero()[:, 0].tolist()) == expected


def test_ground_plane_with_translation_and_dilation():
    """Ground 1.5 m below a camera sitting 0.4 m above the velodyne origin (so ground is z_velo = -1.1).

    Row v (below the horizon) sees the ground at depth z = 1.5 * f / (v - cy); only the 3 rows
    v = 5, 6, 7 are used (depths 6.67, 4.29, 3.16 m: no voxel boundary), only the centre column u = 7 (y_velo = 0.5 * z / 8)."""
    H, W, f, cy = 8, 16, 8.0, 3.2
    K, Tr = _calib(f=f, cy=cy, t=(0.0, 0.4, 0.0))  # y_cam = -z_velo + 0.4: camera 0.4 m above velodyne
    depth = torch.zeros(1, 1, H, W)
    expected = set()
    Y, Z = 64, 8
    for v in (5, 6, 7):
        z = 1.5 * f / (v - cy)
        depth[0, 0, v, 7] = z
        x_velo, y_velo, z_velo = z, -(7 - 7.5) * z / f, -1.1
        expected.add((math.floor(x_velo / 0.8), math.floor((y_velo + 25.6) / 0.8), math.floor((z_velo + 2) / 0.8)))
    assert {e[2] for e in expected} == {1}
    occ = DepthProposal((64, Y, Z), dilate=0)(depth, K[None], Tr[None])[0]
    assert set(occ.nonzero()[:, 0].tolist()) == {_flat(*e, Y, Z) for e in expected}
    # dilation by 1: the 3x3x3 neighbourhoods, clipped to the grid
    dil = set()
    for ix, iy, iz in expected:
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    a, b, c = ix + dx, iy + dy, iz + dz
                    if 0 <= a < 64 and 0 <= b < Y and 0 <= c < Z:
                        dil.add(_flat(a, b, c, Y, Z))
    occ1 = DepthProposal((64, Y, Z), dilate=1)(depth, K[None], Tr[None])[0]
    assert set(occ1.nonzero()[:, 0].tolist()) == dil


def test_flip_and_batch_independence():
    H, W = 8, 16
    K, Tr = _calib()
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 1, H, W, generator=g) * 30 + 2
    depth[torch.rand(2, 1, H, W, generator=g) < 0.5] = 0
    prop = DepthProposal((32, 32, 4), dilate=0)
    Ks, Trs = K.expand(2, 3, 3), Tr.expand(2, 4, 4)
    both = prop(depth, Ks, Trs)
    single = prop(depth[1:], Ks[1:], Trs[1:])
    assert torch.equal(both[1:], single) and not torch.equal(both[0], both[1])
    flipped = prop(depth.flip(-1), Ks, Trs, flipped=torch.tensor([True, True]))
    assert torch.equal(flipped, both)
    assert prop(torch.zeros(1, 1, H, W), K[None], Tr[None]).sum() == 0


def test_pad_selected():
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    idx, valid = pad_selected(mask)
    assert idx.shape == (2, 3)
    assert idx[0].tolist() == [1, 3, 4] and valid[0].all()
    assert idx[1, 0] == 0 and valid[1].tolist() == [True, False, False]
    assert len(set(idx[1].tolist())) == 3 and not mask[1, idx[1, 1:]].any()


# ---------------------------------------------------------------------------------------------
KITTI_K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
KITTI_TR = np.array([[0.0, -1.0, 0.0, -0.012], [0.0, 0.0, -1.0, -0.054], [1.0, 0.0, 0.0, -0.292], [0, 0, 0, 1.0]])


def _kitti_batch(scale_img=0.1, S=8, B=2, seed=0, with_proj=True):
    """A batch like the loader's at image_scale 0.1 (122 x 37), with projections at scale S."""
    W, H = round(1220 * scale_img), round(370 * scale_img)
    K = KITTI_K.copy()
    K[:2] *= scale_img
    K[0, 2] += 0.5 * scale_img - 0.5
    K[1, 2] += 0.5 * scale_img - 0.5
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(B, 1, H, W, generator=g) * 40 + 3
    depth[torch.rand(B, 1, H, W, generator=g) < 0.7] = 0
    batch = {
        "image": torch.randn(B, 3, H, W, generator=g),
        "depth": depth,
        "K": torch.tensor(K, dtype=torch.float32).expand(B, 3, 3),
        "Tr": torch.tensor(KITTI_TR, dtype=torch.float32).expand(B, 4, 4),
        "flipped": torch.zeros(B, dtype=torch.bool),
    }
    if with_proj:
        p = project_voxels(KITTI_TR, K, image_size=(W, H), scale=S)
        batch[f"projected_pix_{S}"] = torch.from_numpy(p["projected_pix"]).float().expand(B, -1, 2)
        batch[f"fov_mask_{S}"] = torch.from_numpy(p["fov_mask"]).expand(B, -1)
    return batch


def test_fallback_projection_matches_the_loader_geometry():
    batch = _kitti_batch(S=8, B=1)
    H, W = batch["image"].shape[-2:]
    pix, fov = project_voxel_centres(voxel_centres((32, 32, 4)), batch["K"], batch["Tr"], (H, W))
    ref_pix, ref_fov = batch["projected_pix_8"], batch["fov_mask_8"]
    assert (pix[0][ref_fov[0]] - ref_pix[0][ref_fov[0]]).abs().max() <= 0.5 + 1e-3  # loader rounds
    assert (fov != ref_fov).float().mean() < 0.01  # only rounding at the image border differs


def _feats(batch, C=16, strides=(4, 8), requires_grad=True):
    H, W = batch["image"].shape[-2:]
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch["image"].shape[0], C, math.ceil(H / s), math.ceil(W / s), generator=g)
            .requires_grad_(requires_grad) for s in strides]


def test_lifting_shapes_mask_tokens_and_gradients():
    torch.manual_seed(0)
    batch = _kitti_batch(S=8, B=2)
    lift = VoxelQueryLifting(embed_dims=16, grid_shape=(32, 32, 4), num_layers=2, num_heads=2, num_levels=2,
                             num_points=4, chunk_size=100)
    feats = _feats(batch)
    vol, mask = lift(feats, batch, return_mask=True)
    assert vol.shape == (2, 16, 32, 32, 4) and mask.shape == (2, 32 * 32 * 4)
    assert 0 < mask.sum() < mask.numel() and not torch.equal(mask[0], mask[1])
    assert not (mask & ~batch["fov_mask_8"]).any()  # only in-view voxels attend
    flat = vol.flatten(2).transpose(1, 2)  # [B, N, C]
    token = (lift.mask_token + lift.positional()).detach()
    torch.testing.assert_close(flat[~mask].detach(), token.expand(2, -1, -1)[~mask])
    assert not torch.allclose(flat[mask].detach(), token.expand(2, -1, -1)[mask])
    (vol * torch.randn_like(vol)).sum().backward()
    for f in feats:
        assert f.grad is not None and f.grad.abs().sum() > 0
    assert lift.query_embed.grad.abs().sum() > 0 and lift.mask_token.grad.abs().sum() > 0


def test_lifting_without_projection_keys_uses_k_and_tr():
    torch.manual_seed(0)
    batch = _kitti_batch(S=8, B=1, with_proj=False)
    lift = VoxelQueryLifting(embed_dims=16, grid_shape=(32, 32, 4), num_layers=1, num_heads=2, num_levels=2,
                             num_points=2, per_voxel_embed=False)
    with torch.no_grad():
        vol, mask = lift(_feats(batch, requires_grad=False), batch, return_mask=True)
    assert vol.shape == (1, 16, 32, 32, 4) and mask.any()


def test_features_reach_only_selected_voxels_and_subclass_hook():
    torch.manual_seed(0)
    batch = _kitti_batch(S=8, B=1)
    calls = {}

    class Fixed(VoxelQueryLifting):
        def attention_kwargs(self, batch, index, pix, ref, feats):
            calls["shape"] = (tuple(index.shape), tuple(pix.shape), tuple(ref.shape))
            B, M = index.shape
            return {"fixed_offsets": torch.zeros(B, M, self.num_levels, 9, 2)}

    lift = Fixed(embed_dims=16, grid_shape=(32, 32, 4), num_layers=1, num_heads=2, num_levels=2, num_points=9,
                 learn_offsets=False)
    feats = _feats(batch, requires_grad=False)
    with torch.no_grad():
        a, mask = lift(feats, batch, return_mask=True)
        b = lift([f * 2 for f in feats], batch)
    M = int(mask.sum())
    assert calls["shape"] == ((1, M), (1, M, 2), (1, M, 2))
    diff = (a - b).abs().flatten(2).sum(1)[0] > 0  # [N]
    assert torch.equal(diff, mask[0])


def test_bad_grid_and_levels():
    with pytest.raises(ValueError, match="grid_shape"):
        VoxelQueryLifting(grid_shape=(64, 64, 16))
    lift = VoxelQueryLifting(embed_dims=8, grid_shape=(32, 32, 4), num_heads=2, num_levels=2)
    with pytest.raises(ValueError, match="2 feature levels"):
        lift([torch.zeros(1, 8, 4, 4)], _kitti_batch(B=1))

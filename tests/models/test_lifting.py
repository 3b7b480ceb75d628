"""Depth proposal (synthetic planes, expected voxels computed by hand) and voxel-query lifting, on one
and on several cameras (the batch layout of docs/design.md: [B, V, ...] per camera, folded intrinsics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from occ_core.data.formats import semantickitti as sk
from occ_core.data.loading.dataset import crop_to_image
from occ_core.errors import OccError
from occ_core.geometry.projection import project_voxels
from occ_core.models.core import CoreConfig, LiftingConfig, query_stride
from occ_core.models.lifting import DepthProposal, VoxelQueryLifting, pad_selected

# velodyne -> camera: x_cam = -y_velo, y_cam = -z_velo, z_cam = x_velo (KITTI-like, no translation)
R_VELO_TO_CAM = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)


def _grid(X, Y, Z):
    """The SemanticKITTI volume (51.2 x 51.2 x 6.4 m from (0, -25.6, -2)) cut into X x Y x Z voxels."""
    return (X, Y, Z), (51.2 / X, 51.2 / Y, 6.4 / Z), (0.0, -25.6, -2.0)


def _calib(f=8.0, cx=7.5, cy=3.5, t=(0.0, 0.0, 0.0)):
    K = torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    Tr = torch.eye(4, dtype=torch.float64)
    Tr[:3, :3] = R_VELO_TO_CAM
    Tr[:3, 3] = torch.tensor(t, dtype=torch.float64)
    return K, Tr


def _cam(M):
    """One camera of one sample: [1, 1, ...]."""
    return M[None, None]


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
    depth = torch.full((1, 1, 1, H, W), 10.0)
    X, Y, Z = 64, 64, 8
    expected = set()
    for u in range(W):
        for v in range(H):
            iy = math.floor((25.6 - (u - 7.5) * 1.25) / 0.8)
            iz = math.floor((2.0 - (v - 3.5) * 1.25) / 0.8)
            if 0 <= iz < Z:  # every iy is inside; rows v = 6, 7 fall below the grid
                expected.add(_flat(12, iy, iz, Y, Z))
    assert len(expected) == W * 6  # one voxel per pixel: the pixel footprint (1.25 m) > voxel (0.8 m)
    occ = DepthProposal(*_grid(X, Y, Z), dilate=0)(depth, _cam(K), _cam(Tr))
    assert occ.shape == (1, X * Y * Z) and occ.dtype == torch.bool
    assert set(occ[0].nonzero()[:, 0].tolist()) == expected


def test_ground_plane_with_translation_and_dilation():
    """Ground 1.5 m below a camera sitting 0.4 m above the velodyne origin (so ground is z_velo = -1.1).

    Row v (below the horizon) sees the ground at depth z = 1.5 * f / (v - cy); only the 3 rows
    v = 5, 6, 7 are used (depths 6.67, 4.29, 3.16 m: no voxel boundary), only the centre column u = 7 (y_velo = 0.5 * z / 8)."""
    H, W, f, cy = 8, 16, 8.0, 3.2
    K, Tr = _calib(f=f, cy=cy, t=(0.0, 0.4, 0.0))  # y_cam = -z_velo + 0.4: camera 0.4 m above velodyne
    depth = torch.zeros(1, 1, 1, H, W)
    expected = set()
    Y, Z = 64, 8
    for v in (5, 6, 7):
        z = 1.5 * f / (v - cy)
        depth[0, 0, 0, v, 7] = z
        x_velo, y_velo, z_velo = z, -(7 - 7.5) * z / f, -1.1
        expected.add((math.floor(x_velo / 0.8), math.floor((y_velo + 25.6) / 0.8), math.floor((z_velo + 2) / 0.8)))
    assert {e[2] for e in expected} == {1}
    occ = DepthProposal(*_grid(64, Y, Z), dilate=0)(depth, _cam(K), _cam(Tr))[0]
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
    occ1 = DepthProposal(*_grid(64, Y, Z), dilate=1)(depth, _cam(K), _cam(Tr))[0]
    assert set(occ1.nonzero()[:, 0].tolist()) == dil


def test_flip_batch_independence_and_cameras():
    H, W = 8, 16
    K, Tr = _calib()
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 1, 1, H, W, generator=g, dtype=torch.float64).float() * 30 + 2
    depth[torch.rand(2, 1, 1, H, W, generator=g) < 0.5] = 0
    prop = DepthProposal(*_grid(32, 32, 4), dilate=0)
    Ks, Trs = K.expand(2, 1, 3, 3), Tr.expand(2, 1, 4, 4)
    both = prop(depth, Ks, Trs)
    single = prop(depth[1:], Ks[1:], Trs[1:])
    assert torch.equal(both[1:], single) and not torch.equal(both[0], both[1])
    # a flipped sample: the mirrored depth with the folded (mirrored, fx < 0) intrinsics proposes the same voxels
    mirror = torch.tensor([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    K_flip = mirror @ K
    assert K_flip[0, 0] < 0
    flipped = prop(depth.flip(-1), K_flip.expand(2, 1, 3, 3), Trs)
    assert torch.equal(flipped, both)
    assert prop(torch.zeros(1, 1, 1, H, W), _cam(K), _cam(Tr)).sum() == 0
    # two cameras: the union of what each proposes (a second camera 3 m to the left, i.e. at y_velo = +3)
    K2, Tr2 = _calib(t=(3.0, 0.0, 0.0))
    two = prop(depth[:1].expand(1, 2, 1, H, W).clone(), torch.stack([K, K2])[None], torch.stack([Tr, Tr2])[None])
    second = prop(depth[:1], _cam(K2), _cam(Tr2))
    assert not torch.equal(second, both[:1])
    assert torch.equal(two, both[:1] | second)


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
CROP = (1220, 370)


def _yawed(T: np.ndarray, deg: float) -> np.ndarray:
    """``T`` followed by a rotation of the camera about its vertical axis (a camera looking ``deg`` to the side)."""
    a = math.radians(deg)
    R = np.eye(4)
    R[0, 0], R[0, 2], R[2, 0], R[2, 2] = math.cos(a), -math.sin(a), math.sin(a), math.cos(a)
    return R @ T


def _kitti_batch(scale_img=0.1, B=2, seed=0, V=1, flip=False, Trs=None):
    """A batch like the loader's at image_scale 0.1 (122 x 37): V cameras (all KITTI's image_2 unless ``Trs``)."""
    W, H = round(CROP[0] * scale_img), round(CROP[1] * scale_img)
    A = crop_to_image(scale_img, W, flip)
    Trs = [KITTI_TR] * V if Trs is None else Trs
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(B, V, 1, H, W, generator=g) * 40 + 3
    depth[torch.rand(B, V, 1, H, W, generator=g) < 0.7] = 0
    return {
        "images": torch.randn(B, V, 3, H, W, generator=g),
        "depth": depth,
        "intrinsics": torch.from_numpy(np.stack([A @ KITTI_K] * V)).expand(B, V, 3, 3),
        "grid_to_cam": torch.from_numpy(np.stack(Trs)).expand(B, V, 4, 4),
        "crop_to_image": torch.from_numpy(np.stack([A] * V)).expand(B, V, 3, 3),
        "vp": torch.full((B, V, 2), float("nan")),
    }


def _lifting(cls=VoxelQueryLifting, S=8, **kw):
    kw = {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "num_levels": 2, "num_points": 4, **kw}
    return cls.from_spec(sk.dataset_spec(), S, **kw)


def _feats(batch, C=16, strides=(4, 8), requires_grad=True, seed=1):
    B, V = batch["images"].shape[:2]
    H, W = batch["images"].shape[-2:]
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, V, C, math.ceil(H / s), math.ceil(W / s), generator=g).requires_grad_(requires_grad)
            for s in strides]


def test_from_spec_is_the_dataset_grid_over_the_stride():
    lift = _lifting(S=8)
    assert lift.grid_shape == (32, 32, 4) and lift.voxel_size == (1.6, 1.6, 1.6)
    assert lift.origin == sk.GRID_ORIGIN and lift.crop_size == CROP
    assert lift.proposal.grid_shape == (32, 32, 4) and lift.proposal.voxel_size == (1.6, 1.6, 1.6)
    np.testing.assert_allclose(lift.centres.numpy(), sk.grid_spec().centres(8), rtol=0, atol=1e-12)


@pytest.mark.parametrize("flip", [False, True])
def test_projections_match_the_loader_geometry(flip: bool):
    """The lifting's on-device projection = the prepared ``projected_pix_S`` / ``fov_mask_S`` (rounded in the
    crop like the benchmark loaders), mapped to the network image; a flipped sample's folded intrinsics give the
    mirrored pixels."""
    batch = _kitti_batch(B=1, flip=flip)
    W = batch["images"].shape[-1]
    lift = _lifting(S=8)
    pix, visible = lift.projections(batch)
    assert pix.shape == (1, 1, 32 * 32 * 4, 2) and visible.shape == (1, 1, 32 * 32 * 4)
    ref = project_voxels(KITTI_TR, KITTI_K, CROP, scale=8)
    assert torch.equal(visible[0, 0], torch.from_numpy(ref["fov_mask"])) and 0 < visible.sum() < visible.numel()
    fov = ref["fov_mask"]
    u, v = pix[0, 0, :, 0].double().numpy(), pix[0, 0, :, 1].double().numpy()
    if flip:
        u = W - 1 - u  # mirrored pixels
    # back in the crop: exactly the loader's integer pixels
    crop_u, crop_v = (u + 0.5) / 0.1 - 0.5, (v + 0.5) / 0.1 - 0.5
    np.testing.assert_array_equal(np.round(crop_u[fov]), ref["projected_pix"][fov, 0])
    np.testing.assert_array_equal(np.round(crop_v[fov]), ref["projected_pix"][fov, 1])
    np.testing.assert_allclose(crop_u[fov], ref["projected_pix"][fov, 0], atol=1e-3)


def test_lifting_shapes_mask_tokens_and_gradients():
    torch.manual_seed(0)
    batch = _kitti_batch(B=2)
    lift = _lifting(num_layers=2, num_points=4, chunk_size=100)
    feats = _feats(batch)
    vol, mask = lift(feats, batch, return_mask=True)
    assert vol.shape == (2, 16, 32, 32, 4) and mask.shape == (2, 32 * 32 * 4)
    assert 0 < mask.sum() < mask.numel() and not torch.equal(mask[0], mask[1])
    fov = torch.from_numpy(project_voxels(KITTI_TR, KITTI_K, CROP, scale=8)["fov_mask"])
    assert not (mask & ~fov).any()  # only in-view voxels attend
    flat = vol.flatten(2).transpose(1, 2)  # [B, N, C]
    token = (lift.mask_token + lift.positional()).detach()
    torch.testing.assert_close(flat[~mask].detach(), token.expand(2, -1, -1)[~mask])
    assert not torch.allclose(flat[mask].detach(), token.expand(2, -1, -1)[mask])
    (vol * torch.randn_like(vol)).sum().backward()
    for f in feats:
        assert f.grad is not None and f.grad.abs().sum() > 0
    assert lift.query_embed.grad.abs().sum() > 0 and lift.mask_token.grad.abs().sum() > 0


def test_lifting_with_a_shared_query():
    torch.manual_seed(0)
    batch = _kitti_batch(B=1)
    lift = _lifting(num_points=2, per_voxel_embed=False)
    assert lift.query_embed.shape == (1, 16)
    with torch.no_grad():
        vol, mask = lift(_feats(batch, requires_grad=False), batch, return_mask=True)
    assert vol.shape == (1, 16, 32, 32, 4) and mask.any()


def test_features_reach_only_selected_voxels_and_subclass_hook():
    torch.manual_seed(0)
    batch = _kitti_batch(B=1)
    calls = {}

    class Fixed(VoxelQueryLifting):
        def attention_kwargs(self, batch, index, pix, ref, feats):
            calls["shape"] = (tuple(index.shape), tuple(pix.shape), tuple(ref.shape))
            B, M = index.shape
            return {"fixed_offsets": torch.zeros(B, M, self.num_levels, 9, 2)}

    lift = _lifting(Fixed, num_points=9, learn_offsets=False)
    feats = _feats(batch, requires_grad=False)
    with torch.no_grad():
        a, mask = lift(feats, batch, return_mask=True)
        b = lift([f * 2 for f in feats], batch)
    M = int(mask.sum())
    assert calls["shape"] == ((1, M), (1, 1, M, 2), (1, 1, M, 2))
    diff = (a - b).abs().flatten(2).sum(1)[0] > 0  # [N]
    assert torch.equal(diff, mask[0])


def _repeat_cameras(batch, n):
    return {k: (v.repeat_interleave(n, 1) if torch.is_tensor(v) else v) for k, v in batch.items()}


def test_duplicated_camera_gives_the_one_camera_output():
    """Attention averaged over the cameras that see a query: the same camera twice = that camera once."""
    torch.manual_seed(0)
    batch = _kitti_batch(B=2)
    lift = _lifting(num_layers=2)
    feats = _feats(batch, requires_grad=False)
    with torch.no_grad():
        one, m1 = lift(feats, batch, return_mask=True)
        two, m2 = lift([f.repeat_interleave(2, 1) for f in feats], _repeat_cameras(batch, 2), return_mask=True)
        # the mean, not the sum: two copies of the camera with features f0 and f1 = one with (f0 + f1) / 2
        # (the attention is affine in the value features)
        f1 = _feats(batch, requires_grad=False, seed=2)
        mixed = lift([torch.cat([a, b], 1) for a, b in zip(feats, f1)], _repeat_cameras(batch, 2))
        mean = lift([(a + b) / 2 for a, b in zip(feats, f1)], batch)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, mean, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed, one, atol=1e-3)


def test_two_cameras_each_query_averages_the_cameras_that_see_it():
    """Image_2 and a camera yawed 40 degrees to the right. Proposals fixed (the same voxels in every run):
    a query only one camera sees gets exactly that camera's single-camera result, a query no camera sees
    the mask token."""
    torch.manual_seed(0)
    right = _yawed(KITTI_TR, 40.0)
    batch2 = _kitti_batch(B=1, V=2, Trs=[KITTI_TR, right])
    X, Y, Z = 32, 32, 4
    fixed = torch.zeros(1, X * Y * Z, dtype=torch.bool)
    fixed[:, ::3] = True  # a third of the voxels everywhere in the grid

    class FixedProposal(VoxelQueryLifting):
        def select_queries(self, batch, visible):
            return fixed & visible.any(1)

    lift = _lifting(FixedProposal, num_layers=2)
    feats2 = _feats(batch2, requires_grad=False)
    pix, vis = lift.projections(batch2)
    only0, only1 = vis[0, 0] & ~vis[0, 1], vis[0, 1] & ~vis[0, 0]
    neither = ~vis[0].any(0)
    assert (only0 & fixed[0]).sum() > 10 and (only1 & fixed[0]).sum() > 10 and (neither & fixed[0]).sum() > 10
    assert (vis[0, 0] & vis[0, 1] & fixed[0]).sum() > 10  # some are seen by both
    cam = lambda b, v: {k: (t[:, v:v + 1] if torch.is_tensor(t) else t) for k, t in b.items()}  # noqa: E731
    with torch.no_grad():
        vol, mask = lift(feats2, batch2, return_mask=True)
        vol0 = lift([f[:, :1] for f in feats2], cam(batch2, 0))
        vol1 = lift([f[:, 1:] for f in feats2], cam(batch2, 1))
    assert torch.equal(mask[0], fixed[0] & ~neither)
    flat, flat0, flat1 = (t.flatten(2)[0].t() for t in (vol, vol0, vol1))  # [N, C]
    torch.testing.assert_close(flat[only0], flat0[only0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flat[only1], flat1[only1], rtol=1e-5, atol=1e-5)
    both = vis[0, 0] & vis[0, 1] & fixed[0]
    assert not torch.allclose(flat[both], flat0[both], atol=1e-3) and not torch.allclose(flat[both], flat1[both], atol=1e-3)
    token = (lift.mask_token + lift.positional()).detach()
    torch.testing.assert_close(flat[neither], token[neither])  # seen by no camera: the mask token, proposed or not
    assert not torch.allclose(flat[fixed[0] & ~neither], token[fixed[0] & ~neither])


def test_bad_grid_and_levels():
    spec = sk.dataset_spec()
    with pytest.raises(ValueError, match="not the dataset grid"):
        spec.grid.divisor((64, 64, 16))
    with pytest.raises(OccError, match="model.lifting.grid"):
        query_stride(CoreConfig(lifting=LiftingConfig(grid=[64, 64, 16])), spec)
    with pytest.raises(OccError, match="model.lifting.stride"):
        query_stride(CoreConfig(lifting=LiftingConfig(stride=3)), spec)
    assert query_stride(CoreConfig(lifting=LiftingConfig(grid=[32, 32, 4])), spec) == 8
    lift = _lifting(embed_dims=8, num_heads=2, num_levels=2)
    with pytest.raises(ValueError, match="2 feature levels"):
        lift([torch.zeros(1, 1, 8, 4, 4)], _kitti_batch(B=1))
    with pytest.raises(ValueError, match="embed_dims=8"):
        lift([torch.zeros(1, 1, 16, 4, 4)] * 2, _kitti_batch(B=1))


def test_embed_unselected_gives_every_voxel_its_own_learned_start():
    torch.manual_seed(0)
    batch = _kitti_batch(B=1)
    feats = _feats(batch, requires_grad=False)
    plain = _lifting()
    emb = _lifting(embed_unselected=True)
    emb.load_state_dict(plain.state_dict())
    vol_p, mask = plain(feats, batch, return_mask=True)
    vol_e = emb(feats, batch)
    flat_p, flat_e = vol_p.flatten(2)[0].t(), vol_e.flatten(2)[0].t()  # [N, C]
    # unselected voxels: mask token + positional (+ the voxel's own query embedding when enabled)
    torch.testing.assert_close(flat_e[~mask[0]], (flat_p + emb.query_embed)[~mask[0]].detach())
    # selected voxels attend as before: the option changes nothing there
    torch.testing.assert_close(flat_e[mask[0]], flat_p[mask[0]])
    with pytest.raises(ValueError, match="per_voxel_embed"):
        _lifting(embed_unselected=True, per_voxel_embed=False)

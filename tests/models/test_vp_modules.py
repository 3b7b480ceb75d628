"""VPOcc's VP modules (occ_core.models.vp_modules): VPZoomer, VPCA sampling points, SVF."""

from __future__ import annotations

import math

import pytest
import torch

from occ_core.geometry import homography as hg
from occ_core.models import vp_modules as vm

W, H = 1220, 370


def _ref_and_vp(n: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(2, n, 2, generator=g, dtype=torch.float64) * torch.tensor([W - 1.0, H - 1.0])
    vp = torch.tensor([[610.0, 170.0], [402.3, 155.8]], dtype=torch.float64)
    return ref, vp


def _paper_points(r: torch.Tensor, v: torch.Tensor, d: float) -> torch.Tensor:
    """The paper's construction step by step for one point (float64): rotate the cross by
    R_theta, then intersect lines with homogeneous cross products. Order as VPCA_POINT_NAMES."""
    theta = math.atan2(float(v[1] - r[1]), float(v[0] - r[0]))
    R = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    cross = {"l": torch.tensor([-d, 0.0]), "r": torch.tensor([d, 0.0]), "t": torch.tensor([0.0, -d]), "b": torch.tensor([0.0, d])}
    o = {k: r + R @ off.double() for k, off in cross.items()}  # Eq. 8, rotation about r

    def h(p):
        return torch.cat([p, p.new_ones(1)])

    l_t, l_b = torch.linalg.cross(h(v), h(o["t"])), torch.linalg.cross(h(v), h(o["b"]))
    direction = o["t"] - o["b"]  # l_l, l_r: through o_l, o_r along o_t - o_b
    l_l = torch.linalg.cross(h(o["l"]), h(o["l"] + direction))
    l_r = torch.linalg.cross(h(o["r"]), h(o["r"] + direction))

    def meet(a, b):
        p = torch.linalg.cross(a, b)
        return p[:2] / p[2]

    return torch.stack([r, o["l"], o["r"], o["t"], o["b"], meet(l_t, l_l), meet(l_t, l_r), meet(l_b, l_l), meet(l_b, l_r)])


# ---------------------------------------------------------------- VPCA sampling points


def test_scale_for_stride():
    assert [vm.vpca_scale_for_stride(s) for s in (4, 8, 16)] == [1.0, 1.5, 2.0]
    with pytest.raises(ValueError):
        vm.vpca_scale_for_stride(32)


def test_vpca_points_match_the_papers_construction():
    ref, vp = _ref_and_vp(60)
    for c in (1.0, 1.5, 2.0):
        pts = vm.vpca_sampling_points(ref, vp, c)
        assert pts.shape == (2, 60, 9, 2) and pts.dtype == torch.float64
        for b in range(2):
            for i in range(0, 60, 13):
                d = min(float(torch.linalg.norm(vp[b] - ref[b, i])) / 2, 50.0 * c)
                torch.testing.assert_close(pts[b, i], _paper_points(ref[b, i], vp[b], d), rtol=0, atol=1e-5)


def test_vpca_geometry():
    ref, vp = _ref_and_vp()
    c = 1.5
    pts = vm.vpca_sampling_points(ref, vp, c)
    r = ref[:, :, None]
    torch.testing.assert_close(pts[:, :, 0], ref)  # point 0 is r
    v_r = vp[:, None] - ref
    D = v_r.norm(dim=-1)
    u = v_r / D[..., None]
    d = (D / 2).clamp(max=50.0 * c)
    off = pts - r
    # cross: o_r toward the VP, o_l away, o_t/o_b perpendicular; all at distance d (the clip)
    torch.testing.assert_close(off[:, :, 2], d[..., None] * u)
    torch.testing.assert_close(off[:, :, 1], -d[..., None] * u)
    for k in (3, 4):
        torch.testing.assert_close((off[:, :, k] * u).sum(-1), torch.zeros_like(d), rtol=0, atol=1e-9)
    torch.testing.assert_close(off[:, :, 1:5].norm(dim=-1), d[..., None].expand(-1, -1, 4))
    assert torch.all(d <= 50.0 * c + 1e-9) and torch.any(d == 50.0 * c) and torch.any(d < 50.0 * c)
    # the intersection grid: corners on the lines VP-o_t / VP-o_b, a trapezoid narrower toward the VP
    for k, base in ((5, 3), (6, 3), (7, 4), (8, 4)):
        a, b = pts[:, :, k] - vp[:, None], pts[:, :, base] - vp[:, None]
        torch.testing.assert_close(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0], torch.zeros_like(d), rtol=0, atol=1e-6)
    width_away = (pts[:, :, 5] - pts[:, :, 7]).norm(dim=-1)
    width_toward = (pts[:, :, 6] - pts[:, :, 8]).norm(dim=-1)
    assert torch.all(width_toward <= 2 * d + 1e-9) and torch.all(width_away >= 2 * d - 1e-9)
    assert torch.all(width_toward < width_away)


def test_vpca_reference_at_vp_and_gradients():
    vp = torch.tensor([[300.0, 100.0]])
    ref = torch.tensor([[[300.0, 100.0], [300.5, 100.0], [600.0, 300.0]]], requires_grad=True)
    pts = vm.vpca_sampling_points(ref, vp, 1.0)
    torch.testing.assert_close(pts[0, 0], ref[0, 0].detach().expand(9, 2), rtol=0, atol=0)
    # unclipped d = D / 2 = 0.25: the far corners sit at (-d, 1.5 d) from r
    assert (pts[0, 1] - ref[0, 1]).norm(dim=-1).max() <= 0.25 * math.sqrt(1 + 1.5**2) + 1e-6
    pts.sum().backward()
    assert torch.isfinite(ref.grad).all()


def test_vpca_mirror_symmetry():
    ref, vp = _ref_and_vp()
    flip = lambda p: torch.stack([W - 1 - p[..., 0], p[..., 1]], -1)  # noqa: E731
    pts = vm.vpca_sampling_points(ref, vp, 2.0)
    pts_f = vm.vpca_sampling_points(flip(ref), flip(vp), 2.0)
    perm = list(vm.VPCA_MIRROR_PERMUTATION)
    torch.testing.assert_close(pts_f, flip(pts)[:, :, perm])
    # as sets the mirrored points are just the mirror of the points
    assert sorted(perm) == list(range(9))


def test_vpca_clamp_and_offsets():
    ref, vp = _ref_and_vp()
    pts = vm.vpca_sampling_points(ref, vp, 2.0, clamp_size=(W, H))
    assert pts[..., 0].min() >= 0 and pts[..., 0].max() <= W - 1 and pts[..., 1].min() >= 0 and pts[..., 1].max() <= H - 1
    off = vm.vpca_sampling_offsets(ref.float(), vp.float(), (W, H))
    assert off.shape == (2, 300, 3, 9, 2) and off.dtype == torch.float32
    lvl = vm.vpca_sampling_points(ref, vp, 1.5) / torch.tensor([W, H])
    torch.testing.assert_close((ref / torch.tensor([W, H]))[:, :, None] + off[:, :, 1].double(), lvl, rtol=0, atol=1e-6)
    assert torch.all(off[:, :, :, 0] == 0)


# ---------------------------------------------------------------- VPZoomer module


def test_vpzoomer_module():
    z = vm.VPZoomer()
    assert z.alpha == 0.2 and not list(z.parameters())
    img = torch.rand(2, 3, 37, 122)
    vp = torch.tensor([[60.0, 17.0], [40.0, 15.0]])
    out = z(img, vp)
    assert out.shape == img.shape
    torch.testing.assert_close(out, hg.warp_image(img, vp, 0.2))
    pts = torch.rand(2, 5, 2) * torch.tensor([121.0, 36.0])
    torch.testing.assert_close(z.unmap_points(z.map_points(pts, vp, (122, 37)), vp, (122, 37)), pts, rtol=0, atol=1e-4)
    Hl, Hr = z.homographies(vp, (122, 37))
    assert Hl.shape == Hr.shape == (2, 3, 3)


# ---------------------------------------------------------------- SVF


def _vols(C=3, shape=(5, 4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, C, *shape, generator=g, requires_grad=True),
            torch.randn(2, C, *shape, generator=g, requires_grad=True))


def test_anisotropic_conv_shapes_and_axes():
    a = vm.AnisotropicConv3d(3, kernels=(3, 5), residual=False)
    x = torch.randn(1, 3, 7, 6, 5)
    assert a(x).shape == x.shape
    kinds = {tuple(m.kernel_size) for m in a.modules() if isinstance(m, torch.nn.Conv3d)}
    assert {(1, 1, 3), (1, 3, 1), (3, 1, 1), (1, 1, 5), (1, 5, 1), (5, 1, 1), (1, 1, 1)} == kinds


def test_svf_shapes_and_gradients():
    svf = vm.SpatialVolumeFusion(3, out_channels=5)
    f_o, f_z = _vols()
    out, g_o, g_z = svf(f_o, f_z, return_gates=True)
    assert out.shape == (2, 5, 5, 4, 3) and g_o.shape == g_z.shape == f_o.shape
    assert (g_o >= 0).all() and (g_z >= 0).all() and (out >= 0).all()
    out.square().mean().backward()
    assert f_o.grad.abs().sum() > 0 and f_z.grad.abs().sum() > 0
    kinds = {tuple(m.kernel_size) for m in svf.modules() if isinstance(m, torch.nn.Conv3d)}
    assert {(3, 3, 3), (1, 1, 3), (1, 3, 1), (3, 1, 1)} <= kinds
    with pytest.raises(ValueError):
        svf(f_o, f_z[:, :, :-1])


def _force_gate(block: torch.nn.Sequential, value: float) -> None:
    """Set a gate branch's weights so that it outputs exactly ``value`` (0 or 1) everywhere."""
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
        block[1].bias.fill_(value)  # BN(0) = beta; ReLU; anisotropic conv (zero weights) + residual


@pytest.mark.parametrize("train", [True, False])
def test_svf_gate_zero_one_reduces_to_one_input(train: bool):
    torch.manual_seed(0)
    svf = vm.SpatialVolumeFusion(3)
    _force_gate(svf.gate_o, 1.0)
    _force_gate(svf.gate_z, 0.0)
    svf.train(train)
    f_o, f_z = _vols()
    out, g_o, g_z = svf(f_o, f_z, return_gates=True)
    assert torch.equal(g_o, torch.ones_like(g_o)) and torch.equal(g_z, torch.zeros_like(g_z))
    out.sum().backward()
    assert torch.equal(f_z.grad, torch.zeros_like(f_z.grad)) and f_o.grad.abs().sum() > 0
    # the output is Fuse([f_o, 0]) and does not change with f_z
    ref = svf.fuse(torch.cat([f_o, torch.zeros_like(f_z)], 1))
    torch.testing.assert_close(out, ref)
    other = svf(f_o, torch.randn_like(f_z))
    torch.testing.assert_close(out, other)

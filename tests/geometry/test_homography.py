"""VPZoomer geometry (occ_core.geometry.homography): DLT, homographies, point maps and the warp."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from occ_core.geometry import homography as hg

W, H = 96, 40  # small, even width
SIZE = (W, H)


def _vps() -> torch.Tensor:
    return torch.tensor([[47.5, 17.0], [30.2, 12.7], [70.0, 25.3]], dtype=torch.float64)


def test_solve_homography_matches_opencv():
    rng = np.random.default_rng(0)
    for _ in range(5):
        # convex quadrilaterals (perturbed rectangles), as in VPZoomer
        base = np.array([[0, 0], [120, 0], [120, 40], [0, 40]], np.float32)
        src = (base + rng.uniform(-10, 10, (4, 2))).astype(np.float32)
        dst = (base + rng.uniform(-10, 10, (4, 2))).astype(np.float32)
        ref = cv2.getPerspectiveTransform(src, dst)
        ours = hg.solve_homography(torch.from_numpy(src).double(), torch.from_numpy(dst).double())
        # OpenCV solves the same 8x8 system (its own residual is ~1e-6 px, ours ~1e-13)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-7)
        back = hg.apply_homography(ours, torch.from_numpy(src).double())
        np.testing.assert_allclose(back.numpy(), dst, rtol=0, atol=1e-9)


def test_solve_homography_batched_and_overdetermined():
    rng = np.random.default_rng(1)
    H_true = torch.tensor([[1.1, 0.05, 3.0], [-0.02, 0.9, -2.0], [1e-3, -2e-3, 1.0]], dtype=torch.float64)
    src = torch.from_numpy(rng.uniform(0, 50, (2, 3, 6, 2)))
    dst = hg.apply_homography(H_true, src)
    est6 = hg.solve_homography(src, dst)  # least-squares DLT (SVD)
    est4 = hg.solve_homography(src[..., :4, :], dst[..., :4, :])
    assert est6.shape == est4.shape == (2, 3, 3, 3)
    torch.testing.assert_close(est6, H_true.expand(2, 3, 3, 3), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(est4, H_true.expand(2, 3, 3, 3), rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError):
        hg.solve_homography(src[..., :3, :], dst[..., :3, :])


def test_corners_follow_the_paper():
    # VP at edge coordinates (60, 20) of a 100x50 image: s_t/s_b = (60, 15)/(60, 25),
    # t_t = (50, 7.5), t_b = (50, 37.5) (Eqs. 2, 4); pixel coordinates are edge - 0.5.
    c = hg.vp_zoom_corners(torch.tensor([[59.5, 19.5]]), (100, 50), alpha=0.2)
    e = {k: v[0] + 0.5 for k, v in c.items()}
    torch.testing.assert_close(e["src_left"], torch.tensor([[0, 0], [60, 15], [60, 25], [0, 50.0]]))
    torch.testing.assert_close(e["src_right"], torch.tensor([[60, 15], [100, 0], [100, 50], [60, 25.0]]))
    torch.testing.assert_close(e["dst_left"], torch.tensor([[0, 7.5], [50, 7.5], [50, 37.5], [0, 37.5]]))
    torch.testing.assert_close(e["dst_right"], torch.tensor([[50, 7.5], [100, 7.5], [100, 37.5], [50, 37.5]]))


def test_trapezoid_corners_map_to_rectangle_corners():
    vp = _vps()
    Hl, Hr = hg.vp_zoom_homographies(vp, SIZE)
    assert Hl.shape == Hr.shape == (3, 3, 3) and Hl.dtype == torch.float64
    c = hg.vp_zoom_corners(vp, SIZE)
    torch.testing.assert_close(hg.apply_homography(Hl, c["src_left"]), c["dst_left"])
    torch.testing.assert_close(hg.apply_homography(Hr, c["src_right"]), c["dst_right"])
    # both halves agree on the shared segment through the VP, which lands on the centre line
    seg = torch.stack([vp, vp + torch.tensor([0.0, 3.0], dtype=vp.dtype)], 1)
    ml, mr = hg.apply_homography(Hl, seg), hg.apply_homography(Hr, seg)
    torch.testing.assert_close(ml, mr)
    torch.testing.assert_close(ml[..., 0], torch.full_like(ml[..., 0], W / 2 - 0.5))
    # the VP's vertical line is stretched (zoom-in near the VP): its segment gets longer
    assert torch.all((ml[:, 1, 1] - ml[:, 0, 1]) > 3.0)


def test_map_points_round_trip_and_float32():
    g = torch.Generator().manual_seed(0)
    vp = _vps()
    pts = torch.rand(3, 200, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 40.0, H + 20.0]) - torch.tensor([20.0, 10.0])
    z = hg.map_points(pts, vp, SIZE)
    assert z.shape == pts.shape and torch.isfinite(z).all()
    torch.testing.assert_close(hg.unmap_points(z, vp, SIZE), pts, rtol=0, atol=1e-8)
    # the half is preserved: left of the VP -> left of the centre line
    assert torch.equal(pts[..., 0] <= vp[:, None, 0], z[..., 0] <= W / 2 - 0.5)
    z32 = hg.map_points(pts.float(), vp.float(), SIZE)
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32.double(), z, rtol=0, atol=1e-3)


def test_warp_follows_map_points_exactly_on_coordinate_images():
    # bilinear sampling reproduces linear functions exactly: warp an image holding its own pixel
    # coordinates; each zoomed pixel then holds its source location, which map_points sends back.
    vp = _vps()
    B = vp.shape[0]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    img = torch.stack([xs, ys, torch.ones_like(xs)]).expand(B, 3, H, W)
    z = hg.warp_image(img, vp)
    assert z.shape == (B, 3, H, W)
    inside = z[:, 2] > 1 - 1e-9  # all 4 bilinear neighbours inside the image
    assert inside.float().mean() > 0.5
    src = z[:, :2].permute(0, 2, 3, 1)  # [B, H, W, 2] original pixel of each zoomed pixel
    target = torch.stack([xs, ys], -1).expand(B, H, W, 2)
    for b in range(B):
        m = inside[b]
        back = hg.map_points(src[b][m][None], vp[b:b + 1], SIZE)[0]
        torch.testing.assert_close(back, target[b][m], rtol=0, atol=1e-6)


def test_warp_moves_a_blob_where_map_points_says():
    vp = torch.tensor([[40.0, 15.0]])
    p = torch.tensor([[[55.0, 22.0], [20.0, 30.0]]])  # one point per half
    img = torch.zeros(1, 1, H, W)
    for x, y in p[0].tolist():
        img[0, 0, int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 1.0
    z = hg.warp_image(img, vp)[0, 0]
    q = hg.map_points(p, vp, SIZE)[0]
    for qx, qy in q.tolist():
        assert z[round(qy), round(qx)] > 0.5
        ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
        win = ((xs - qx).abs() < 8) & ((ys - qy).abs() < 8)
        w = z * win
        cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
        assert abs(cx - qx) < 1.0 and abs(cy - qy) < 1.0


def test_flip_equivariance():
    g = torch.Generator().manual_seed(2)
    img = torch.rand(3, 2, H, W, generator=g, dtype=torch.float64)
    vp = _vps()
    vp_f = torch.stack([W - 1 - vp[:, 0], vp[:, 1]], -1)
    z = hg.warp_image(img, vp)
    z_f = hg.warp_image(img.flip(-1), vp_f)
    torch.testing.assert_close(z_f, z.flip(-1), rtol=0, atol=1e-9)
    pts = torch.rand(3, 50, 2, generator=g, dtype=torch.float64) * torch.tensor([W - 1.0, H - 1.0])
    pts_f = torch.stack([W - 1 - pts[..., 0], pts[..., 1]], -1)
    m, m_f = hg.map_points(pts, vp, SIZE), hg.map_points(pts_f, vp_f, SIZE)
    torch.testing.assert_close(m_f, torch.stack([W - 1 - m[..., 0], m[..., 1]], -1), rtol=0, atol=1e-9)


def test_centred_vp_gives_symmetric_zoom():
    vp = torch.tensor([[(W - 1) / 2, 15.0]], dtype=torch.float64)
    Hl, Hr = hg.vp_zoom_homographies(vp, SIZE)
    # with the VP on the centre line each half is a pure vertical zoom (no horizontal change)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pts = torch.stack([xs, ys], -1).reshape(1, -1, 2)
    m = hg.map_points(pts, vp, SIZE)
    torch.testing.assert_close(hg.apply_homography(Hl, vp[:, None]), hg.apply_homography(Hr, vp[:, None]))
    img = torch.rand(1, 1, H, W, dtype=torch.float64)
    sym = img + img.flip(-1)
    z = hg.warp_image(sym, vp)
    torch.testing.assert_close(z, z.flip(-1), rtol=0, atol=1e-9)
    assert torch.isfinite(m).all()


def test_degenerate_vps_are_clamped():
    vps = torch.tensor([[-50.0, 10.0], [W + 30.0, 10.0], [20.0, -100.0], [20.0, H + 100.0],
                        [float("nan"), 3.0], [float("inf"), float("nan")]])
    s = hg.sanitize_vp(vps, SIZE)
    torch.testing.assert_close(s[0], torch.tensor([0.5, 10.0]))
    torch.testing.assert_close(s[1], torch.tensor([W - 1.5, 10.0]))
    torch.testing.assert_close(s[2], torch.tensor([20.0, -0.5]))
    torch.testing.assert_close(s[3], torch.tensor([20.0, H - 0.5]))
    torch.testing.assert_close(s[4], torch.tensor([(W - 1) / 2, (H - 1) / 2]))
    torch.testing.assert_close(s[5], torch.tensor([(W - 1) / 2, (H - 1) / 2]))
    Hl, Hr = hg.vp_zoom_homographies(vps, SIZE)
    assert torch.isfinite(Hl).all() and torch.isfinite(Hr).all()
    img = torch.rand(vps.shape[0], 3, H, W)
    z = hg.warp_image(img, vps)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z, hg.warp_image(img, s))
    pts = torch.rand(vps.shape[0], 10, 2) * torch.tensor([W - 1.0, H - 1.0])
    torch.testing.assert_close(hg.map_points(pts, vps, SIZE), hg.map_points(pts, s, SIZE))


def test_warp_is_differentiable():
    img = torch.rand(2, 3, H, W, requires_grad=True)
    vp = torch.tensor([[40.0, 15.0], [60.0, 20.0]], requires_grad=True)
    hg.warp_image(img, vp).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert vp.grad is not None and torch.isfinite(vp.grad).all() and vp.grad.abs().sum() > 0

"""rasterize_gaussians: torch backend against a naive per-pixel reference (values and gradients),
tiling invariance, occlusion, culling, and parity with gsplat where CUDA and gsplat exist."""

from __future__ import annotations

import math

import pytest
import torch

from occ_core.ops.gaussian_raster import gsplat_available, quat_scale_to_covar, rasterize_gaussians, unavailable_reason

W, H = 12, 8


# ---------------------------------------------------------------------------------------------
# Naive reference: one pixel, one Gaussian at a time, straight from the definitions
# ---------------------------------------------------------------------------------------------


def naive_render(means, covars, opacities, features, viewmats, Ks, width, height, camera_model,
                 near=0.1, far=200.0, eps2d=0.3, background=None):
    V, C = viewmats.shape[0], features.shape[1]
    feats_v, depth_v, alpha_v = [], [], []
    for v in range(V):
        R, t, K = viewmats[v, :3, :3], viewmats[v, :3, 3], Ks[v]
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        gs = []
        for n in range(means.shape[0]):
            mc = R @ means[n] + t
            x, y, z = mc[0], mc[1], mc[2]
            if not (near <= float(z) <= far) or float(opacities[n]) < 1 / 255:
                continue
            cov_c = R @ covars[n] @ R.T
            if camera_model == "pinhole":
                lxp = (width - cx) / fx + 0.3 * 0.5 * width / fx
                lxn = cx / fx + 0.3 * 0.5 * width / fx
                lyp = (height - cy) / fy + 0.3 * 0.5 * height / fy
                lyn = cy / fy + 0.3 * 0.5 * height / fy
                tx = z * torch.clamp(x / z, -lxn, lxp)
                ty = z * torch.clamp(y / z, -lyn, lyp)
                zero = torch.zeros((), dtype=means.dtype)
                J = torch.stack([torch.stack([fx / z, zero, -fx * tx / z**2]),
                                 torch.stack([zero, fy / z, -fy * ty / z**2])])
                m2 = torch.stack([fx * x / z + cx, fy * y / z + cy])
            else:
                J = torch.stack([torch.stack([fx, fx * 0, fx * 0]), torch.stack([fy * 0, fy, fy * 0])])
                m2 = torch.stack([fx * x + cx, fy * y + cy])
            cov2 = J @ cov_c @ J.T + eps2d * torch.eye(2, dtype=means.dtype)
            if float(torch.linalg.det(cov2)) <= 0:
                continue
            gs.append((float(z), n, z, m2, torch.linalg.inv(cov2)))
        gs.sort(key=lambda g: (g[0], g[1]))
        rows_f, rows_d, rows_a = [], [], []
        for i in range(height):
            row_f, row_d, row_a = [], [], []
            for j in range(width):
                p = torch.tensor([j + 0.5, i + 0.5], dtype=means.dtype)
                T = torch.ones((), dtype=means.dtype)
                acc = torch.zeros(C, dtype=means.dtype)
                accd = torch.zeros((), dtype=means.dtype)
                for _, n, z, m2, conic in gs:
                    d = m2 - p
                    sigma = 0.5 * d @ conic @ d
                    alpha = torch.clamp(opacities[n] * torch.exp(-sigma), max=0.999)
                    if float(sigma) < 0 or float(alpha) < 1 / 255:
                        continue
                    next_t = T * (1 - alpha)
                    if float(next_t) <= 1e-4:
                        break
                    acc = acc + alpha * T * features[n]
                    accd = accd + alpha * T * z
                    T = next_t
                a = 1 - T
                if background is not None:
                    bg = background[v] if background.dim() == 2 else background
                    acc = acc + T * bg
                row_f.append(acc)
                row_d.append((accd / torch.clamp(a, min=1e-10)).reshape(1))
                row_a.append(a.reshape(1))
            rows_f.append(torch.stack(row_f))
            rows_d.append(torch.stack(row_d))
            rows_a.append(torch.stack(row_a))
        feats_v.append(torch.stack(rows_f))
        depth_v.append(torch.stack(rows_d))
        alpha_v.append(torch.stack(rows_a))
    return torch.stack(feats_v), torch.stack(depth_v), torch.stack(alpha_v)


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def look_at(eye, target, up=(0.0, -1.0, 0.0)):
    """world -> camera (x right, y down, z forward) for a world whose 'up' is -y."""
    eye, target, up = (torch.tensor(a, dtype=torch.float64) for a in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def make_scene(camera_model: str, n: int = 6, C: int = 3, seed: int = 0, views: int = 1):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if camera_model == "pinhole":
        means = torch.stack([(rnd(n) - 0.5) * 2.4, (rnd(n) - 0.5) * 1.6, 2 + 4 * rnd(n)], -1)
        K = torch.tensor([[10.0, 0, 6.0], [0, 10.0, 4.0], [0, 0, 1]], dtype=torch.float64)
    else:
        means = torch.stack([(rnd(n) - 0.5) * 3.0, (rnd(n) - 0.5) * 2.0, 1 + 4 * rnd(n)], -1)
        K = torch.tensor([[4.0, 0, 6.0], [0, 4.0, 4.0], [0, 0, 1]], dtype=torch.float64)
    scales = 0.08 + 0.3 * rnd(n, 3)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opac = 0.2 + 0.79 * rnd(n)
    feats = rnd(n, C)
    vms = [torch.eye(4, dtype=torch.float64)]
    for k in range(1, views):
        ang = 0.15 * k
        vms.append(look_at((math.sin(ang) * 4, -0.3 * k, 4 - math.cos(ang) * 4), (0.0, 0.0, 4.0)))
    viewmats = torch.stack(vms)
    Ks = K.expand(views, 3, 3).clone()
    return means, scales, quats, opac, feats, viewmats, Ks


def grads_of(outputs, inputs, cot):
    loss = sum((o * c).sum() for o, c in zip(outputs, cot))
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def cotangents(outputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]


# ---------------------------------------------------------------------------------------------
# Torch backend vs reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("camera_model", ["pinhole", "ortho"])
@pytest.mark.parametrize("C,views,seed", [(1, 1, 0), (3, 2, 1), (5, 1, 2), (20, 1, 3)])
def test_torch_matches_naive_values_and_grads(camera_model, C, views, seed):
    means, scales, quats, opac, feats, viewmats, Ks = make_scene(camera_model, n=6, C=C, seed=seed, views=views)
    inputs = [t.clone().requires_grad_(True) for t in (means, scales, quats, opac, feats)]
    m, s, q, o, f = inputs
    out = rasterize_gaussians(m, s, q, o, f, viewmats, Ks, W, H, camera_model=camera_model, backend="torch", tile_size=4)
    ref = naive_render(m, quat_scale_to_covar(q, s), o, f, viewmats, Ks, W, H, camera_model)
    assert out[0].shape == (views, H, W, C) and out[1].shape == (views, H, W, 1) and out[2].shape == (views, H, W, 1)
    assert float(out[2].max()) > 0.5, "scene should cover some pixels"
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    cot = cotangents(out, seed)
    g_out = grads_of(out, inputs, cot)
    g_ref = grads_of(ref, inputs, cot)
    for name, a, b in zip(["means", "scales", "quats", "opacities", "features"], g_out, g_ref):
        assert a is not None and b is not None, name
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


def test_torch_matches_naive_covars_and_background():
    means, scales, quats, opac, feats, viewmats, Ks = make_scene("pinhole", n=5, C=4, seed=7, views=2)
    cov = quat_scale_to_covar(quats, scales).detach()
    bg = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], dtype=torch.float64)
    inputs = [t.clone().requires_grad_(True) for t in (means, cov, opac, feats, bg)]
    m, cv, o, f, b = inputs
    out = rasterize_gaussians(m, None, None, o, f, viewmats, Ks, W, H, covars=cv, backend="torch", background=b)
    ref = naive_render(m, cv, o, f, viewmats, Ks, W, H, "pinhole", background=b)
    for a, r in zip(out, ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)
    cot = cotangents(out, 3)
    for name, a, r in zip(["means", "covars", "opacities", "features", "background"], grads_of(out, inputs, cot), grads_of(ref, inputs, cot)):
        torch.testing.assert_close(a, r, rtol=1e-7, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


def test_saturation_and_early_stop_match_naive():
    """Opaque Gaussians stacked on one spot: alpha clamps at 0.999, pixels stop at T <= 1e-4."""
    n = 5
    means = torch.tensor([[0.0, 0.0, 2.0 + k] for k in range(n)], dtype=torch.float64)
    means[:, 0] += torch.linspace(-0.2, 0.2, n, dtype=torch.float64)
    scales = torch.full((n, 3), 0.8, dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64)
    opac = torch.tensor([1.0, 0.9995, 0.95, 1.0, 0.5], dtype=torch.float64)
    feats = torch.eye(n, dtype=torch.float64)
    viewmats = torch.eye(4, dtype=torch.float64)[None]
    Ks = torch.tensor([[[10.0, 0, 6.0], [0, 10.0, 4.0], [0, 0, 1]]], dtype=torch.float64)
    inputs = [t.clone().requires_grad_(True) for t in (means, scales, opac, feats)]
    m, s, o, f = inputs
    out = rasterize_gaussians(m, s, quats, o, f, viewmats, Ks, W, H, backend="torch", tile_size=4)
    ref = naive_render(m, quat_scale_to_covar(quats, s), o, f, viewmats, Ks, W, H, "pinhole")
    for a, r in zip(out, ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)
    centre = out[0][0, 4, 5]
    assert float(out[2][0, 4, 5, 0]) > 0.998  # saturated: the first Gaussian's alpha is clamped
    assert float(centre[2:].abs().max()) == 0.0  # the pixel stopped before the third Gaussian
    assert float(out[0][0, 0, 0, 2:].max()) > 0  # while a corner pixel still sees the far ones
    cot = cotangents(out, 5)
    for a, r in zip(grads_of(out, inputs, cot), grads_of(ref, inputs, cot)):
        torch.testing.assert_close(a, r, rtol=1e-7, atol=1e-9)


def test_float32_close_to_float64():
    means, scales, quats, opac, feats, viewmats, Ks = make_scene("pinhole", n=8, C=3, seed=11)
    out64 = rasterize_gaussians(means, scales, quats, opac, feats, viewmats, Ks, W, H, backend="torch")
    out32 = rasterize_gaussians(*(t.float() for t in (means, scales, quats, opac, feats, viewmats, Ks)), W, H, backend="torch")
    for a, b in zip(out32, out64):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Properties at a larger size
# ---------------------------------------------------------------------------------------------


def random_cloud(n=300, C=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = torch.stack([(torch.rand(n, generator=g) - 0.5) * 8, (torch.rand(n, generator=g) - 0.5) * 5,
                         3 + 10 * torch.rand(n, generator=g)], -1).to(dtype)
    scales = (0.05 + 0.3 * torch.rand(n, 3, generator=g)).to(dtype)
    quats = torch.randn(n, 4, generator=g).to(dtype)
    opac = torch.rand(n, generator=g).to(dtype)
    feats = torch.rand(n, C, generator=g).to(dtype)
    K = torch.tensor([[[60.0, 0, 50.0], [0, 60.0, 30.0], [0, 0, 1]]], dtype=dtype)
    return means, scales, quats, opac, feats, torch.eye(4, dtype=dtype)[None], K


@pytest.mark.parametrize("camera_model", ["pinhole", "ortho"])
def test_tiling_and_chunking_invariance(camera_model):
    means, scales, quats, opac, feats, vm, K = random_cloud()
    if camera_model == "ortho":
        K = K.clone()
        K[:, 0, 0] = K[:, 1, 1] = 10.0
    inputs = [t.clone().requires_grad_(True) for t in (means, scales, quats, opac, feats)]
    results = []
    for ts, chunk in [(16, 1 << 22), (4, 1 << 22), (8, 4096), (13, 8192)]:
        out = rasterize_gaussians(*inputs, vm, K, 101, 59, camera_model=camera_model, backend="torch",
                                  tile_size=ts, chunk_pairs=chunk)
        cot = cotangents(out, 9)
        results.append((out, grads_of(out, inputs, cot)))
    (ref_out, ref_g) = results[0]
    assert float(ref_out[2].mean()) > 0.3
    for out, gr in results[1:]:
        for a, b in zip(out, ref_out):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        for a, b in zip(gr, ref_g):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_occlusion_near_opaque_hides_far():
    means = torch.tensor([[0.1, 0.1, 2.0], [0.3, 0.3, 6.0]])  # both on pixel (6, 4)'s centre
    scales = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    K = torch.tensor([[[10.0, 0, 6.0], [0, 10.0, 4.0], [0, 0, 1]]])
    vm = torch.eye(4)[None]
    for order in ([0, 1], [1, 0]):  # input order must not matter
        f, d, a = rasterize_gaussians(means[order], scales, quats, torch.ones(2), feats[order], vm, K, W, H, backend="torch")
        centre = f[0, 4, 6]
        assert centre[0] > 0.998 and centre[1] < 1.01e-3
        assert abs(float(d[0, 4, 6, 0]) - 2.0) < 0.01
    # the far one alone is visible
    f, d, a = rasterize_gaussians(means[1:], scales[1:], quats[1:], torch.ones(1), feats[1:], vm, K, W, H, backend="torch")
    assert f[0, 4, 6, 1] > 0.99 and abs(float(d[0, 4, 6, 0]) - 6.0) < 0.01


def test_culling_near_far_and_behind():
    means = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.05], [0.0, 0.0, 300.0]])
    scales = torch.full((3, 3), 0.3)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3)
    K = torch.tensor([[[10.0, 0, 6.0], [0, 10.0, 4.0], [0, 0, 1]]])
    f, d, a = rasterize_gaussians(means, scales, quats, torch.ones(3), torch.ones(3, 2), torch.eye(4)[None], K, W, H,
                                  backend="torch")
    assert float(a.abs().max()) == 0 and float(f.abs().max()) == 0 and float(d.abs().max()) == 0


def test_empty_scene_has_zero_gradients():
    means = torch.tensor([[0.0, 0.0, -3.0]], requires_grad=True)
    feats = torch.ones(1, 2, requires_grad=True)
    K = torch.tensor([[[10.0, 0, 6.0], [0, 10.0, 4.0], [0, 0, 1]]])
    bg = torch.tensor([0.25, 0.5])
    f, d, a = rasterize_gaussians(means, torch.ones(1, 3), torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1), feats,
                                  torch.eye(4)[None], K, W, H, backend="torch", background=bg)
    assert torch.allclose(f, bg.expand(1, H, W, 2))
    gm, gf = torch.autograd.grad(f.sum() + d.sum() + a.sum(), [means, feats])
    assert float(gm.abs().max()) == 0 and float(gf.abs().max()) == 0


def test_argument_errors():
    means, scales, quats, opac, feats, vm, K = random_cloud(n=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="scales and quats, or covars"):
        rasterize_gaussians(means, None, None, opac, feats, vm, K, 10, 10)
    with pytest.raises(ValueError, match="not both"):
        rasterize_gaussians(means, scales, quats, opac, feats, vm, K, 10, 10, covars=torch.eye(3).expand(4, 3, 3))
    with pytest.raises(ValueError, match="camera_model"):
        rasterize_gaussians(means, scales, quats, opac, feats, vm, K, 10, 10, camera_model="fisheye")
    with pytest.raises(ValueError, match="backend"):
        rasterize_gaussians(means, scales, quats, opac, feats, vm, K, 10, 10, backend="cuda")
    with pytest.raises(ValueError, match="features"):
        rasterize_gaussians(means, scales, quats, opac, feats[:, :0], vm, K, 10, 10)


def test_gsplat_not_imported_by_the_package():
    import subprocess
    import sys

    code = ("import sys, occ_core, occ_core.ops.gaussian_raster, occ_core.render; "
            "assert 'gsplat' not in sys.modules, 'gsplat imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_backend_uses_torch_on_cpu():
    from occ_core.ops.gaussian_raster import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    if not gsplat_available():
        with pytest.raises(RuntimeError, match="gsplat"):
            resolve_backend("gsplat", torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# gsplat parity (CUDA only)
# ---------------------------------------------------------------------------------------------

needs_gsplat = pytest.mark.skipif(not gsplat_available(), reason=f"gsplat backend unavailable: {unavailable_reason()}")


@needs_gsplat
@pytest.mark.parametrize("camera_model", ["pinhole", "ortho"])
@pytest.mark.parametrize("C", [1, 3, 20])
def test_gsplat_matches_torch(camera_model, C):
    dev = torch.device("cuda")
    means, scales, quats, opac, feats, vm, K = random_cloud(n=2000, C=C, seed=C, dtype=torch.float32)
    if camera_model == "ortho":
        K = K.clone()
        K[:, 0, 0] = K[:, 1, 1] = 10.0
    vm, K = vm.to(dev), K.to(dev)
    outs, grads = [], []
    for backend in ("torch", "gsplat"):
        inputs = [t.to(dev).clone().requires_grad_(True) for t in (means, scales, quats, opac, feats)]
        out = rasterize_gaussians(*inputs, vm, K, 101, 59, camera_model=camera_model, backend=backend)
        cot = [c.to(dev) for c in cotangents([o.detach().cpu() for o in out], 4)]
        outs.append(out)
        grads.append(grads_of(out, inputs, cot))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-3)
    for name, a, b in zip(["means", "scales", "quats", "opacities", "features"], *grads):
        scale = float(b.abs().max()) + 1e-6
        err = float((a - b).abs().max()) / scale
        assert err < 2e-2, f"{name}: max gradient difference {err:.3g} of the largest gradient"

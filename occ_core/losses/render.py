"""GaussRender: a plug-in rendering loss for any occupancy method (docs/rendering.md).

The predicted grid (class probabilities at the loss scale) and the ground truth at the same scale
become 3D Gaussians (:func:`occ_core.render.voxels_to_gaussians`), are rendered from the same views
(the dataset camera, a bird's-eye view, optional elevated / random views) and compared with L1:

* semantic render: per pixel, Σ wᵢ fᵢ with fᵢ = P(class | occupied) over the 19 non-empty classes
  (``probs[1:] / (1 − probs[0])`` for the prediction, one-hot for the ground truth) and
  wᵢ = alphaᵢ Tᵢ, opacity = 1 − p_empty (1 for ground truth); a pixel that sees nothing is 0;
* depth render: the accumulated depth Σ wᵢ zᵢ (the expected depth times alpha: equal to the depth
  of an opaque surface, 0 where nothing is hit, and smooth for faint predictions), divided by
  ``camera_depth_norm`` (50 m) for pinhole views and ``bev_depth_norm`` (100 m) for the BEV.

Voxels labelled 255 are dropped from both grids. The loss terms are ``render_sem`` and
``render_depth`` = ``weight`` (10) × relative weight × mean L1 over views, pixels and channels.
When the prediction equals the one-hot ground truth with opacity 1 both sets of Gaussians are
identical and the loss is exactly 0.

The sensor views are the batch's cameras (every camera of the frame) at ``image_scale`` times their
benchmark crop, rendered from the crop's intrinsics (``crop_to_image^-1 @ intrinsics``): a
horizontal flip of the network image does not change them, and the L1 between two renders of the
same camera does not depend on it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from occ_core.data.spec import IGNORE

VIEWS = ("sensor", "bev", "elevated", "random")


def rescale_K(K: Tensor, ratio: float) -> Tensor:
    """Intrinsics of an image resized by ``ratio`` (pixel-centre convention of the loaders:
    u' = (u + 0.5)·ratio − 0.5). ``K`` is [..., 3, 3]."""
    K = K.clone()
    K[..., :2, :2] = K[..., :2, :2] * ratio
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * ratio - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * ratio - 0.5
    return K


def batch_sensor_cameras(batch: dict[str, Any], image_scale: float, crop_size: tuple[int, int], b: int = 0):
    """The cameras of sample ``b`` as one :class:`~occ_core.render.Cameras` (V = cameras of the frame),
    rendering ``image_scale`` x the benchmark crop ``crop_size`` (W, H). Returns (cameras, (width, height))."""
    from occ_core.geometry.linalg import inverse3x3
    from occ_core.render import sensor_camera

    size = (max(1, round(crop_size[0] * image_scale)), max(1, round(crop_size[1] * image_scale)))
    K = batch["intrinsics"][b].detach().double().cpu()
    if "crop_to_image" in batch:
        K = inverse3x3(batch["crop_to_image"][b].detach().double().cpu()) @ K  # the crop's intrinsics
    K = rescale_K(K, size[0] / crop_size[0])
    return sensor_camera(K, batch["grid_to_cam"][b].detach().double().cpu(), size), size


def _views(cfg, batch: dict[str, Any], b: int, crop_size: tuple[int, int], grid) -> list[tuple[str, Any, float]]:
    """(name, Cameras, depth normaliser) of sample ``b``."""
    from occ_core.render import bev_camera, elevated_camera, random_cameras

    out = []
    pinhole = []
    for name in cfg.views:
        if name not in VIEWS:
            from occ_core.errors import OccError

            raise OccError(f"loss.render.views: unknown view '{name}' (known: {', '.join(VIEWS)})")
        if name == "sensor":
            cams, _ = batch_sensor_cameras(batch, cfg.image_scale, crop_size, b)
            out.append(("sensor", cams, cfg.camera_depth_norm))
        elif name == "bev":
            out.append(("bev", bev_camera(cfg.bev_resolution, grid=grid), cfg.bev_depth_norm))
        elif name == "elevated":
            pinhole.append(("elevated", elevated_camera(image_size=tuple(cfg.free_view_size), grid=grid)))
        elif name == "random":
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
            gen = torch.Generator().manual_seed(seed)
            pinhole.append(("random", random_cameras(cfg.random_views, gen, image_size=tuple(cfg.free_view_size),
                                                     grid=grid)))
    if pinhole:  # elevated and random share one image size: one rasterizer call
        from occ_core.render import Cameras

        vm = torch.cat([c.viewmats for _, c in pinhole])
        Ks = torch.cat([c.Ks for _, c in pinhole])
        c0 = pinhole[0][1]
        out.append(("+".join(n for n, _ in pinhole), Cameras(vm, Ks, c0.width, c0.height, "pinhole"), cfg.camera_depth_norm))
    return out


def render_pair_losses(probs: Tensor, target: Tensor, views: list[tuple[str, Any, float]], cfg, grid,
                       return_renders: bool = False):
    """L1 between the renders of one predicted grid and its ground truth.

    Args:
        probs: [C, X, Y, Z] class probabilities (index 0 = empty), differentiable.
        target: [X, Y, Z] int64 classes (255 = ignore) at the same scale.
        views: (name, Cameras, depth normaliser) as built by :func:`_views`.
        grid: the :class:`~occ_core.data.spec.GridSpec` of these grids (the dataset grid at the loss scale).

    Returns:
        (semantic L1, depth L1), each the mean over the views; with ``return_renders`` also a dict
        view -> (pred sem, gt sem, pred depth, gt depth).
    """
    from occ_core.render import render_gaussians, voxels_to_gaussians

    C = probs.shape[0]
    occupied = (target != 0) & (target != IGNORE)
    keep = (probs[0].detach() <= 1.0 - cfg.keep) | occupied
    occ = 1.0 - probs[0]
    cond = probs[1:] / occ.clamp_min(1e-6)[None]  # P(class | occupied), 19 channels
    common = dict(origin=grid.origin, voxel_size=cubic_voxel(grid), scale_factor=cfg.scale_factor, n_classes=C)
    gp = voxels_to_gaussians(cond, labels=target, occupancy=occ, keep=keep, **common)
    gg = voxels_to_gaussians(labels=target, dtype=probs.dtype, **common)
    gg.features = gg.features[:, 1:]
    sem_terms, depth_terms, renders = [], [], {}
    for name, cams, norm in views:
        kw = dict(backend=cfg.backend)
        sp, dp, ap = render_gaussians(gp, cams, **kw)
        with torch.no_grad():
            sg, dg, ag = render_gaussians(gg, cams, **kw)
        dp, dg = dp * ap / norm, dg * ag / norm  # accumulated depth, normalised
        sem_terms.append(F.l1_loss(sp, sg))
        depth_terms.append(F.l1_loss(dp, dg))
        if return_renders:
            renders[name] = (sp.detach(), sg, dp.detach(), dg)
    sem = torch.stack(sem_terms).mean()
    depth = torch.stack(depth_terms).mean()
    return (sem, depth, renders) if return_renders else (sem, depth)


def cubic_voxel(grid) -> float:
    """The edge length of a grid's cubic voxels (the Gaussians are isotropic)."""
    vs = grid.voxel_size
    if max(vs) - min(vs) > 1e-9 * max(vs):
        from occ_core.errors import OccError

        raise OccError(f"the rendering loss needs cubic voxels (grid voxel size {vs})")
    return float(vs[0])


def gaussrender_losses(model: Any, outputs: dict[str, Tensor], batch: dict[str, Any], render_cfg) -> dict[str, Tensor]:
    """The plug-in entry point (called by :func:`occ_core.losses.plugins.plugin_losses`).

    Uses ``outputs["logits"]`` [B, C, X, Y, Z] at ``model.output_scale()`` (the loss scale in
    training), ``model.spec`` and the batch's target at that scale; returns ``{"render_sem", "render_depth"}``.
    """
    logits = outputs["logits"]
    scale = int(model.output_scale()) if hasattr(model, "output_scale") else 1
    key = "target" if scale == 1 else f"target_1_{scale}"
    if key not in batch:
        raise KeyError(f"batch has no '{key}': add {scale} to data.target_scales")
    target = batch[key]
    spec = model.spec
    grid = spec.grid.scaled(scale)
    crop_size = spec.cameras[0].image_size
    sems, depths = [], []
    with torch.autocast(logits.device.type, enabled=False):
        probs = torch.softmax(logits.float(), dim=1)
        for b in range(logits.shape[0]):
            views = _views(render_cfg, batch, b, crop_size, spec.grid)
            s, d = render_pair_losses(probs[b], target[b].to(logits.device), views, render_cfg, grid)
            sems.append(s)
            depths.append(d)
    w = float(render_cfg.weight)
    out: dict[str, Tensor] = {}
    if render_cfg.sem_weight > 0:
        out["render_sem"] = w * render_cfg.sem_weight * torch.stack(sems).mean()
    if render_cfg.depth_weight > 0:
        out["render_depth"] = w * render_cfg.depth_weight * torch.stack(depths).mean()
    return out

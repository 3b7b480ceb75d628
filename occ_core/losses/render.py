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

Horizontal flips mirror the image but not the 3D target (docs/design.md), and ``K`` in the batch
is the unflipped camera: the sensor view is rendered from the unflipped camera and then mirrored
for flipped samples, so that it lines up with ``batch["image"]`` (the L1 between two renders does
not depend on it, but anything that compares a render with the image does).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from occ_core.data.semantickitti import GRID_ORIGIN, IGNORE, VOXEL_SIZE

VIEWS = ("sensor", "bev", "elevated", "random")


def rescale_K(K: Tensor, ratio: float) -> Tensor:
    """Intrinsics of an image resized by ``ratio`` (pixel-centre convention of the loaders:
    u' = (u + 0.5)·ratio − 0.5). ``K`` is [..., 3, 3]."""
    K = K.clone()
    K[..., :2, :2] = K[..., :2, :2] * ratio
    K[..., 0, 2] = (K[..., 0, 2] + 0.5) * ratio - 0.5
    K[..., 1, 2] = (K[..., 1, 2] + 0.5) * ratio - 0.5
    return K


def batch_sensor_cameras(batch: dict[str, Any], image_scale: float, data_scale: float = 1.0):
    """One sensor camera per sample, rendering ``image_scale`` × the benchmark crop.

    ``batch["K"]`` is for the batch image (the crop resized by ``data_scale``, the run's
    ``data.image_scale``). Returns (Cameras with V = B, (width, height))."""
    from occ_core.render import sensor_camera

    H_b, W_b = batch["image"].shape[-2:]
    full_w, full_h = W_b / data_scale, H_b / data_scale
    size = (max(1, round(full_w * image_scale)), max(1, round(full_h * image_scale)))
    K = rescale_K(batch["K"].detach().double().cpu(), size[0] / W_b)
    return sensor_camera(K, batch["Tr"].detach().double().cpu(), size), size


def _views(cfg, batch: dict[str, Any], b: int, data_scale: float) -> list[tuple[str, Any, float]]:
    """(name, Cameras, depth normaliser) of sample ``b``."""
    from occ_core.render import bev_camera, elevated_camera, random_cameras

    out = []
    pinhole = []
    for name in cfg.views:
        if name not in VIEWS:
            from occ_core.errors import OccError

            raise OccError(f"loss.render.views: unknown view '{name}' (known: {', '.join(VIEWS)})")
        if name == "sensor":
            cams, _ = batch_sensor_cameras({k: batch[k][b : b + 1] for k in ("image", "K", "Tr")}, cfg.image_scale, data_scale)
            out.append(("sensor", cams, cfg.camera_depth_norm))
        elif name == "bev":
            out.append(("bev", bev_camera(cfg.bev_resolution), cfg.bev_depth_norm))
        elif name == "elevated":
            pinhole.append(("elevated", elevated_camera(image_size=tuple(cfg.free_view_size))))
        elif name == "random":
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
            gen = torch.Generator().manual_seed(seed)
            pinhole.append(("random", random_cameras(cfg.random_views, gen, image_size=tuple(cfg.free_view_size))))
    if pinhole:  # elevated and random share one image size: one rasterizer call
        from occ_core.render import Cameras

        vm = torch.cat([c.viewmats for _, c in pinhole])
        Ks = torch.cat([c.Ks for _, c in pinhole])
        c0 = pinhole[0][1]
        out.append(("+".join(n for n, _ in pinhole), Cameras(vm, Ks, c0.width, c0.height, "pinhole"), cfg.camera_depth_norm))
    return out


def render_pair_losses(probs: Tensor, target: Tensor, views: list[tuple[str, Any, float]], cfg, voxel_size: float,
                       flipped: bool = False, return_renders: bool = False):
    """L1 between the renders of one predicted grid and its ground truth.

    Args:
        probs: [C, X, Y, Z] class probabilities (index 0 = empty), differentiable.
        target: [X, Y, Z] int64 classes (255 = ignore) at the same scale.
        views: (name, Cameras, depth normaliser) as built by :func:`_views`.
        voxel_size: metres per voxel of this grid (0.2 × loss scale).
        flipped: mirror the sensor view (horizontal flip augmentation).

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
    common = dict(origin=GRID_ORIGIN, voxel_size=voxel_size, scale_factor=cfg.scale_factor, n_classes=C)
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
        if flipped and name == "sensor":
            sp, sg, dp, dg = (t.flip(2) for t in (sp, sg, dp, dg))
        sem_terms.append(F.l1_loss(sp, sg))
        depth_terms.append(F.l1_loss(dp, dg))
        if return_renders:
            renders[name] = (sp.detach(), sg, dp.detach(), dg)
    sem = torch.stack(sem_terms).mean()
    depth = torch.stack(depth_terms).mean()
    return (sem, depth, renders) if return_renders else (sem, depth)


def gaussrender_losses(model: Any, outputs: dict[str, Tensor], batch: dict[str, Any], render_cfg) -> dict[str, Tensor]:
    """The plug-in entry point (called by :func:`occ_core.losses.plugins.plugin_losses`).

    Uses ``outputs["logits"]`` [B, C, X, Y, Z] at the loss scale ``outputs["scale"]`` (1 when
    absent) and the batch's target at that scale; returns ``{"render_sem", "render_depth"}``.
    """
    logits = outputs["logits"]
    scale = int(outputs["scale"]) if "scale" in outputs else 1
    key = "target" if scale == 1 else f"target_1_{scale}"
    if key not in batch:
        raise KeyError(f"batch has no '{key}': add {scale} to data.target_scales")
    target = batch[key]
    train_cfg = getattr(model, "train_cfg", None)
    data_scale = float(train_cfg.data.image_scale) if train_cfg is not None else 1.0
    voxel_size = VOXEL_SIZE * scale
    flipped = batch.get("flipped")
    sems, depths = [], []
    with torch.autocast(logits.device.type, enabled=False):
        probs = torch.softmax(logits.float(), dim=1)
        for b in range(logits.shape[0]):
            views = _views(render_cfg, batch, b, data_scale)
            fl = bool(flipped[b]) if flipped is not None else False
            s, d = render_pair_losses(probs[b], target[b].to(logits.device), views, render_cfg, voxel_size, fl)
            sems.append(s)
            depths.append(d)
    w = float(render_cfg.weight)
    out: dict[str, Tensor] = {}
    if render_cfg.sem_weight > 0:
        out["render_sem"] = w * render_cfg.sem_weight * torch.stack(sems).mean()
    if render_cfg.depth_weight > 0:
        out["render_depth"] = w * render_cfg.depth_weight * torch.stack(depths).mean()
    return out

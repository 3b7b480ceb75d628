"""``tacocc``: TACOcc, LiDAR + camera fusion with target-adaptive bidirectional retrieval and Gaussian
volume-rendering supervision (docs/tacocc.md; the paper's code is not public, so this is our reading).

* **Camera branch**: the shared core's image backbone + FPN and depth-proposed voxel-query lifting
  (:class:`occ_core.models.core.SSCCore`) -> camera volume ``[B, C, X_q, Y_q, Z_q]`` and its query mask.
* **LiDAR branch**: :class:`occ_core.models.lidar_branch.LidarBranch` (voxelised scan, sparse encoder) ->
  LiDAR volume at the same query grid and its occupied voxels.
* **Fusion**: :class:`occ_core.models.fusion.BidirectionalFusion` (LiDAR voxel -> image features around its
  projection, camera voxel -> LiDAR features in a 3D neighbourhood, per-query radius by Gumbel-softmax;
  ``model.fusion.adaptive=false``: fixed neighbourhood, Co-Occ).
* The shared 3D UNet + ASPP and head on the fused volume; CE + scene-class affinity losses.
* **Rendering branch** (training only, ``model.render.enabled``): the decoder's output features become one
  Gaussian per query voxel in view (centre + learned offset, opacity and colour heads, isotropic scale),
  rendered with :func:`occ_core.ops.gaussian_raster.rasterize_gaussians` (torch or gsplat backend) into
  every camera of the frame: photometric L1 + SSIM against the image (``render_photo``), accumulated depth
  L1 against the LiDAR points projected into the same view (``render_depth``), and the rendered semantics
  (each Gaussian carries its voxel's predicted class distribution) against the 3D prediction projected
  into the view (``render_sem``: the same voxels at their centres with opacity 1 - p(empty)). With
  ``model.render.sequential=true`` the Gaussians are also rendered into the neighbouring frames' cameras
  (batch keys ``nbr_images`` / ``nbr_grid_to_cam`` / ``nbr_valid``, ``data.neighbours``) with a photometric
  loss (``render_seq_photo``). Nothing of this runs in eval mode, inference or export.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.errors import OccError
from occ_core.models.core import CoreConfig, SSCCore, apply_paper, apply_tiny
from occ_core.models.fusion import BidirectionalFusion, FusionConfig
from occ_core.models.lidar_branch import LidarBranch, LidarConfig
from occ_core.ops.patch_conv import PatchConv3d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TacoRenderConfig:
    """TACOcc's Gaussian volume-rendering supervision (training only)."""

    enabled: bool = True
    """Add the rendering losses (off: the fusion network alone)."""
    image_scale: float = 0.25
    """Render size relative to each camera's benchmark crop."""
    photometric: float = 1.0
    """Weight of the photometric loss (render_photo)."""
    ssim_alpha: float = 0.85
    """Photometric loss = (1 - a) * L1 + a * (1 - SSIM) / 2 (monodepth's mix; ours)."""
    depth: float = 1.0
    """Weight of the LiDAR depth L1 (render_depth), depths divided by depth_norm."""
    depth_norm: float = 50.0
    """Depths (m) are divided by this before the L1."""
    semantic: float = 1.0
    """Weight of the rendered-vs-projected semantic consistency L1 (render_sem)."""
    sequential: bool = False
    """Also render into the neighbouring frames' cameras (needs data.neighbours, e.g. [-1, 1]; photometric loss
    render_seq_photo with the same weight)."""
    max_offset: float = 0.5
    """Largest learned offset of a Gaussian from its voxel centre, in query voxels."""
    scale_factor: float = 0.5
    """Isotropic standard deviation of each Gaussian in query-voxel sizes."""
    min_opacity: float = 0.02
    """Voxels whose predicted opacity is below this are not rendered."""
    max_gaussians: int = 20000
    """At most this many Gaussians per frame (the most opaque in view of a camera)."""
    backend: str = "auto"
    """Rasterizer backend: auto (gsplat on CUDA when installed, else torch), torch or gsplat."""


@dataclass
class ModelConfig(CoreConfig):
    """TACOcc: camera branch (the shared core) + LiDAR branch + bidirectional fusion + rendering branch."""

    lidar: LidarConfig = field(default_factory=LidarConfig)
    """LiDAR voxelisation and sparse encoder."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """Target-scale adaptive bidirectional retrieval."""
    render: TacoRenderConfig = field(default_factory=TacoRenderConfig)
    """Gaussian volume-rendering supervision."""


def _tiny(cfg):
    cfg = apply_tiny(cfg)
    m = cfg.model
    m = dataclasses.replace(m, lidar=dataclasses.replace(m.lidar, voxel_stride=2, base_channels=16, blocks=1),
                            render=dataclasses.replace(m.render, image_scale=0.15, max_gaussians=6000))
    return dataclasses.replace(cfg, model=m, data=dataclasses.replace(cfg.data, load_points=True))


def _paper(cfg):
    """The shared paper setting (ResNet-50, 3 lifting layers, stride 2) plus our choices for what the paper does
    not state (docs/tacocc.md): LiDAR at the dataset grid with OpenOccupancy's encoder widths, radii 1/2/4 px
    and 1/2/3 voxels, hard Gumbel-softmax at temperature 1, renders at 1/4 of the crop."""
    cfg = apply_paper(cfg)
    m = cfg.model
    m = dataclasses.replace(m, lidar=dataclasses.replace(m.lidar, voxel_stride=1, base_channels=16, blocks=2),
                            render=dataclasses.replace(m.render, image_scale=0.25, max_gaussians=60000))
    return dataclasses.replace(cfg, model=m, data=dataclasses.replace(cfg.data, load_points=True))


PRESETS = {"tiny": _tiny, "paper": _paper}


# ------------------------------------------------------------------------------------------------
# Photometric helpers
# ------------------------------------------------------------------------------------------------


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-pixel SSIM of images [N, 3, H, W] in [0, 1] (3x3 mean filters, reflection padding; monodepth2)."""
    C1, C2 = 0.01 ** 2, 0.03 ** 2
    a, b = F.pad(a, (1, 1, 1, 1), mode="reflect"), F.pad(b, (1, 1, 1, 1), mode="reflect")
    mu_a, mu_b = F.avg_pool2d(a, 3, 1), F.avg_pool2d(b, 3, 1)
    s_a = F.avg_pool2d(a * a, 3, 1) - mu_a ** 2
    s_b = F.avg_pool2d(b * b, 3, 1) - mu_b ** 2
    s_ab = F.avg_pool2d(a * b, 3, 1) - mu_a * mu_b
    n = (2 * mu_a * mu_b + C1) * (2 * s_ab + C2)
    d = (mu_a ** 2 + mu_b ** 2 + C1) * (s_a + s_b + C2)
    return (n / d).clamp(0, 1)


def photometric_loss(pred: Tensor, target: Tensor, alpha: float) -> Tensor:
    """(1 - alpha) * L1 + alpha * (1 - SSIM) / 2, mean over pixels; images [N, 3, H, W] in [0, 1]."""
    l1 = (pred - target).abs().mean()
    if alpha <= 0:
        return l1
    return (1 - alpha) * l1 + alpha * ((1 - ssim(pred, target)) / 2).mean()


def camera_images(images: Tensor, crop_to_image: Tensor, size: tuple[int, int]) -> Tensor:
    """Network images [V, 3, H, W] (ImageNet-normalised, maybe mirrored) -> RGB in [0, 1] of the benchmark
    crop's orientation (unmirrored), resized (area) to ``size`` (W, H): [V, 3, h, w]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    rgb = (images * std + mean).clamp(0, 1)
    flipped = crop_to_image[:, 0, 0] < 0
    rgb = torch.where(flipped.view(-1, 1, 1, 1), rgb.flip(-1), rgb)
    return F.interpolate(rgb, size=(size[1], size[0]), mode="area")


def lidar_depth_image(points: Tensor, cams, size: tuple[int, int]) -> Tensor:
    """Sparse depth [V, h, w] (m, 0 = none) of ``points`` [P, 3] (grid frame) in ``cams`` (nearest per pixel)."""
    W, H = size
    uv, z = cams.project(points.to(cams.viewmats.dtype))  # [V, P, 2], [V, P]
    V = uv.shape[0]
    col, row = torch.floor(uv[..., 0]).long(), torch.floor(uv[..., 1]).long()
    ok = (z > 0.1) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    flat = torch.where(ok, row * W + col, torch.full_like(col, H * W)) + torch.arange(V, device=uv.device)[:, None] * (H * W + 1)
    out = torch.full((V * (H * W + 1),), float("inf"), dtype=torch.float32, device=uv.device)
    out = out.scatter_reduce(0, flat.reshape(-1), z.reshape(-1).float(), reduce="amin")
    out = out.view(V, H * W + 1)[:, :H * W]
    return torch.where(torch.isinf(out), torch.zeros_like(out), out).view(V, H, W)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


class TACOcc(SSCCore):
    """TACOcc (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, spec, loss=None):
        super().__init__(cfg, spec, loss)
        C = cfg.lifting.embed_dims
        level = int(cfg.fusion.image_level)
        if not 0 <= level < len(self.encoder.strides):
            raise OccError(f"model.fusion.image_level must be in 0..{len(self.encoder.strides) - 1} (got {level})")
        self.lidar = LidarBranch(cfg.lidar, spec, self.stride, C)
        self.fusion = BidirectionalFusion(cfg.fusion, C, self.encoder.strides[level], cfg.decoder.norm)
        rc = cfg.render
        if rc.enabled:
            if rc.image_scale <= 0 or rc.max_gaussians < 1:
                raise OccError("model.render.image_scale must be > 0 and model.render.max_gaussians >= 1")
            self.gauss_offset = PatchConv3d(C, 3, 1)
            self.gauss_opacity = PatchConv3d(C, 1, 1)
            self.gauss_colour = PatchConv3d(C, 3, 1)
            nn.init.zeros_(self.gauss_offset.weight)
            nn.init.zeros_(self.gauss_offset.bias)
            self.background = nn.Parameter(torch.full((3,), 0.5))
        self.last_info: dict[str, Tensor] = {}

    def volume(self, batch: dict[str, Any]) -> Tensor:
        feats = self.encoder(batch["images"])
        cam, cam_mask = self.lifting(feats, batch, return_mask=True)
        lid, lid_mask = self.lidar(batch, batch_size=int(batch["images"].shape[0]))
        pix, visible = self.lifting.projections(batch)
        H, W = batch["images"].shape[-2:]
        fused, info = self.fusion(cam, cam_mask, lid, lid_mask, feats[self.cfg.fusion.image_level], pix, visible,
                                  (int(W), int(H)))
        self.last_info = info
        return self.add_depth_volume(fused, batch, feats)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        dec = self.decoder(self.volume(batch))
        head = self.head(dec)
        shape = self.output_shape(self.output_scale())
        logits = head if tuple(head.shape[2:]) == shape else F.interpolate(head, size=shape, mode="trilinear",
                                                                           align_corners=False)
        out = {"logits": logits}
        if self.training and self.cfg.render.enabled:
            out["render_features"] = dec
            out["head_logits"] = head
        return out

    def losses(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        losses = super().losses(outputs, batch)
        if "render_features" in outputs:
            losses.update(self.render_losses(outputs, batch))
        return losses

    def export_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The export's example batch with the fixed-size points (docs/export.md)."""
        return self.lidar.export_inputs(batch)

    # -- rendering branch ------------------------------------------------------------------------
    def gaussians(self, feats: Tensor, head_logits: Tensor, b: int, in_view: Tensor):
        """Gaussians of sample ``b``: (fused-branch Gaussians, projected-prediction Gaussians), both over the
        same voxels; features [rgb (3), P(class | occupied) (n - 1)] and [P(class | occupied)]."""
        from occ_core.render import Gaussians

        rc = self.cfg.render
        lift = self.lifting
        C, X, Y, Z = feats.shape[1:]
        f = feats[b:b + 1]
        vs = torch.tensor(lift.voxel_size, dtype=f.dtype, device=f.device)
        offset = (torch.tanh(self.gauss_offset(f)) * rc.max_offset)[0].flatten(1).t() * vs  # [N, 3] metres
        opacity = torch.sigmoid(self.gauss_opacity(f))[0, 0].flatten()
        colour = torch.sigmoid(self.gauss_colour(f))[0].flatten(1).t()
        probs = torch.softmax(head_logits[b:b + 1].float(), 1)
        if tuple(probs.shape[2:]) != (X, Y, Z):
            probs = F.adaptive_avg_pool3d(probs, (X, Y, Z))
        probs = probs[0].flatten(1).t().to(f.dtype)  # [N, n_classes]
        occ = 1.0 - probs[:, 0]
        cond = probs[:, 1:] / occ.clamp_min(1e-6)[:, None]
        keep = in_view & (opacity.detach() >= rc.min_opacity)
        score = torch.where(keep, opacity.detach(), torch.full_like(opacity, -1.0))
        k = min(int(rc.max_gaussians), int(keep.sum()))
        idx = torch.topk(score, k).indices if k > 0 else torch.zeros(0, dtype=torch.long, device=f.device)
        centres = lift.centres.to(f.dtype)[idx]
        n = len(idx)
        scales = (vs * rc.scale_factor).expand(n, 3).contiguous()
        quats = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=f.dtype, device=f.device).expand(n, 4).contiguous()
        g = Gaussians(centres + offset[idx], scales, quats, opacity[idx], torch.cat([colour[idx], cond[idx]], 1), idx)
        p = Gaussians(centres, scales, quats, occ[idx], cond[idx], idx)
        return g, p

    def render_losses(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        from occ_core.losses.render import batch_sensor_cameras
        from occ_core.models.lidar_branch import padded_points
        from occ_core.render import Cameras, render_gaussians

        rc = self.cfg.render
        feats, head = outputs["render_features"], outputs["head_logits"]
        B = feats.shape[0]
        crop = self.spec.cameras[0].image_size
        _, visible = self.lifting.projections(batch)
        pts, count = padded_points(batch, B)
        photo, depth, sem, seq = [], [], [], []
        with torch.autocast(feats.device.type, enabled=False):
            feats = feats.float()
            for b in range(B):
                g, p = self.gaussians(feats, head, b, visible[b].any(0))
                cams, size = batch_sensor_cameras(batch, rc.image_scale, crop, b)
                cams = cams.to(device=feats.device)
                kw = dict(backend=rc.backend)
                zero = feats.sum() * 0.0
                if len(g) == 0:
                    photo.append(zero), depth.append(zero), sem.append(zero)
                    continue
                out, dep, alpha = render_gaussians(g, cams, **kw)  # [V, h, w, 3 + n - 1], [V, h, w, 1] x2
                rgb = out[..., :3] + (1 - alpha) * self.background
                target = camera_images(batch["images"][b].float(), batch["crop_to_image"][b], size)
                photo.append(photometric_loss(rgb.permute(0, 3, 1, 2), target, rc.ssim_alpha))
                lidar_d = lidar_depth_image(pts[b, :int(count[b]), :3], cams, size)
                has = lidar_d > 0
                acc = (dep * alpha)[..., 0]
                depth.append(((acc - lidar_d).abs() / rc.depth_norm)[has].mean() if bool(has.any()) else zero)
                if rc.semantic > 0:
                    ps, _, _ = render_gaussians(p, cams, **kw)
                    sem.append((out[..., 3:] - ps).abs().mean())
                if rc.sequential:
                    seq.append(self._sequential_photo(g, batch, b, cams, size, kw))
        w = {"render_photo": rc.photometric, "render_depth": rc.depth, "render_sem": rc.semantic}
        res = {}
        for name, terms in (("render_photo", photo), ("render_depth", depth), ("render_sem", sem)):
            if w[name] > 0 and terms:
                res[name] = w[name] * torch.stack(terms).mean()
        if rc.sequential and rc.photometric > 0 and seq:
            res["render_seq_photo"] = rc.photometric * torch.stack(seq).mean()
        return res

    def _sequential_photo(self, g, batch: dict[str, Any], b: int, cams, size: tuple[int, int], kw) -> Tensor:
        """Photometric loss of the Gaussians rendered into the neighbouring frames' cameras (same intrinsics,
        the neighbour's grid -> camera from the poses)."""
        from occ_core.render import Cameras, render_gaussians

        if "nbr_images" not in batch:
            raise OccError("model.render.sequential=true needs the neighbouring frames: set data.neighbours "
                           "(e.g. [-1, 1])")
        imgs, T, valid = batch["nbr_images"][b], batch["nbr_grid_to_cam"][b], batch["nbr_valid"][b]  # [K, V, ...]
        terms = []
        for k in range(imgs.shape[0]):
            if not bool(valid[k]):
                continue
            ck = Cameras(T[k].to(cams.viewmats.dtype).to(cams.viewmats.device), cams.Ks, cams.width, cams.height)
            out, _, alpha = render_gaussians(g, ck, **kw)
            rgb = out[..., :3] + (1 - alpha) * self.background
            target = camera_images(imgs[k].float(), batch["crop_to_image"][b], size)
            terms.append(photometric_loss(rgb.permute(0, 3, 1, 2), target, self.cfg.render.ssim_alpha))
        return torch.stack(terms).mean() if terms else g.means.sum() * 0.0


def build_model(cfg: ModelConfig, spec, loss=None) -> TACOcc:
    return TACOcc(cfg, spec, loss)

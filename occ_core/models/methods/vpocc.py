"""``vpocc``: VPOcc (Kim et al.), vanishing points for camera-only SSC, as published.

* **VPZoomer**: the image is warped toward its vanishing point with two homographies (left and
  right trapezoids to rectangles, alpha = 0.2) and composited; the zoomed image goes through the
  same backbone as the original.
* **VPCA** on the original image's features: each depth-proposed voxel query samples 9 points per
  level around its reference point — the point, a cross rotated toward the VP and the intersection
  grid, d = |v - r| / 2 clipped to [0, beta * c], beta = 50, c in {1, 1.5, 2} at strides 4, 8, 16 —
  with learned attention weights (and, optionally, learned offsets on top).
* **DCA** (plain deformable cross-attention) on the zoomed image's features, with the reference
  points mapped through the same homographies (the in-view mask recomputed in the zoomed image).
* **SVF** fuses the two volumes (gated masks, 3x3x3 and anisotropic convolutions), then the light
  3D UNet with ASPP and the head of the shared core.

The VP comes from the batch (``--vp DIR`` in VPOcc's JSON format, or the synthetic data's true VP;
unknown VPs fall back to the image centre). Horizontal flips mirror the VP with the image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from occ_core.errors import OccError
from occ_core.models.lifting import VoxelQueryLifting
from occ_core.models.core import CoreConfig, SSCCore, apply_paper, apply_tiny


@dataclass
class VPConfig:
    """VP modules of VPOcc."""

    alpha: float = 0.2
    """VPZoomer trapezoid parameter alpha (published: 0.2)."""
    beta: float = 50.0
    """VPCA bound beta in pixels of the original image (published: 50)."""
    learn_offsets: bool = True
    """Let VPCA learn offsets on top of the 9 VP-guided points (zero-initialised)."""
    zoom_branch: bool = True
    """Use the VPZoomer branch (DCA on the zoomed image) and SVF; off = VPCA only (ablation)."""


@dataclass
class ModelConfig(CoreConfig):
    """VPOcc: the shared core plus VPZoomer, VPCA and SVF."""

    vp: VPConfig = field(default_factory=VPConfig)
    """VP modules."""


def _vp_tiny(cfg):
    cfg = apply_tiny(cfg)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, lifting=dataclasses.replace(cfg.model.lifting, num_points=9)))


def _vp_paper(cfg):
    return apply_paper(cfg)


PRESETS = {"tiny": _vp_tiny, "paper": _vp_paper}


def image_wh(batch: dict[str, Any]) -> tuple[int, int]:
    H, W = batch["images"].shape[-2:]
    return int(W), int(H)


def batch_vp(batch: dict[str, Any]) -> Tensor:
    """The first camera's VP [B, 2] (network-image pixels), sanitised: unknown -> centre, kept inside the image."""
    from occ_core.geometry.homography import sanitize_vp

    return sanitize_vp(batch["vp"][:, 0].float(), image_wh(batch))


class VPCALifting(VoxelQueryLifting):
    """Voxel-query lifting whose attention samples the 9 VP-guided points per level (VPCA)."""

    def __init__(self, *args: Any, strides: Sequence[int] = (4, 8, 16), beta: float = 50.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.strides = tuple(int(s) for s in strides)
        self.beta = float(beta)

    def attention_kwargs(self, batch, index, pix, ref, feats):
        from occ_core.models.vp_modules import vpca_sampling_offsets

        # the image seen here may be resized: beta and the strides are in original-image pixels
        # scaled like the image (stride s of the backbone on this image)
        scale = image_wh(batch)[0] / self.crop_size[0]
        offsets = vpca_sampling_offsets(pix[:, 0], batch["_vp"], image_wh(batch), strides=self.strides,
                                        beta=self.beta * scale)
        return {"fixed_offsets": offsets.to(pix.dtype)}


class ZoomLifting(VoxelQueryLifting):
    """Plain deformable cross-attention on the zoomed image's features (DCA), reference points
    mapped by the VPZoomer homographies."""

    def __init__(self, *args: Any, alpha: float = 0.2, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.alpha = float(alpha)

    def projections(self, batch):
        from occ_core.geometry.homography import map_points

        pix, fov = super().projections(batch)  # [B, 1, N, 2]: VPOcc sees the first camera
        W, H = image_wh(batch)
        zpix = map_points(pix[:, 0], batch["_vp"], (W, H), self.alpha).to(pix.dtype)[:, None]
        inside = (zpix[..., 0] > -0.5) & (zpix[..., 0] < W - 0.5) & (zpix[..., 1] > -0.5) & (zpix[..., 1] < H - 0.5)
        return zpix, fov & inside


class VPOcc(SSCCore):
    """VPOcc on the first camera of the dataset spec: image_2 on SemanticKITTI, **CAM_FRONT** on Occ3D-nuScenes
    (the format modules put the front camera first). Its VP modules (VPZoomer, VP-guided cross-attention) are
    single-image by design and need the vanishing point of the road ahead, which only the front camera sees,
    so on multi-camera data it trains and predicts from CAM_FRONT alone (the other images are dropped)."""

    def __init__(self, cfg: ModelConfig, spec, loss=None):
        super().__init__(cfg, spec.with_cameras(spec.camera_names[:1]), loss)
        from occ_core.models.vp_modules import SpatialVolumeFusion, VPZoomer

        self.zoomer = VPZoomer(cfg.vp.alpha)
        if cfg.vp.zoom_branch:
            self.zoom_lifting = self._lifting(ZoomLifting, cfg, alpha=cfg.vp.alpha)
            self.svf = SpatialVolumeFusion(cfg.lifting.embed_dims)

    def _lifting(self, cls, cfg: CoreConfig, learn_offsets: bool = True, **extra: Any) -> VoxelQueryLifting:
        return cls.from_spec(self.spec, self.stride, cfg.lifting.embed_dims, **self.lifting_kwargs(cfg),
                             learn_offsets=learn_offsets, **extra)

    def build_lifting(self, cfg: ModelConfig) -> nn.Module:
        if cfg.lifting.num_points != 9:
            raise OccError(f"VPCA samples 9 points per reference point (model.lifting.num_points={cfg.lifting.num_points})")
        strides = [4 * 2 ** i for i in cfg.backbone.out_indices]
        return self._lifting(VPCALifting, cfg, learn_offsets=cfg.vp.learn_offsets, offset_init="zero",
                             strides=strides, beta=cfg.vp.beta)

    def volume(self, batch: dict[str, Any]) -> Tensor:
        batch = first_camera(batch)
        image = batch["images"][:, 0]
        B = image.shape[0]
        batch["_vp"] = batch_vp(batch)
        if not self.cfg.vp.zoom_branch:
            feats = self.encoder(image[:, None])
            return self.add_depth_volume(self.lifting(feats, batch), batch, feats)
        zoomed = self.zoomer(image, batch["_vp"])
        feats = self.encoder(torch.cat([image, zoomed], dim=0)[:, None])  # one backbone, both images
        vol_o = self.lifting([f[:B] for f in feats], batch)
        vol_z = self.zoom_lifting([f[B:] for f in feats], batch)
        return self.add_depth_volume(self.svf(vol_o, vol_z), batch, [f[:B] for f in feats])


CAMERA_KEYS = ("images", "depth", "intrinsics", "grid_to_cam", "crop_to_image", "vp")
"""Batch keys with a camera axis (dim 1)."""


def first_camera(batch: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``batch`` with only the first camera along the camera axis."""
    out = dict(batch)
    for k in CAMERA_KEYS:
        if k in out and torch.is_tensor(out[k]):
            out[k] = out[k][:, :1]
    return out


def build_model(cfg: ModelConfig, spec, loss=None) -> VPOcc:
    return VPOcc(cfg, spec, loss)

"""``lidar``: the LiDAR branch alone (voxelised scan, sparse 3D encoder) + the shared 3D decoder and head.

No camera: the baseline that shows what TACOcc's fusion adds (docs/tacocc.md). The batch needs the scan
(``data.load_points=true``, set by the presets). The query grid is the dataset grid divided by
``model.lifting.stride``; of the ``lifting`` section only ``stride``, ``grid`` and ``embed_dims`` are used
(the section keeps the shared core's layout so the same ``--set`` keys work for every method).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from occ_core.errors import OccError
from occ_core.models.base import OccModel
from occ_core.models.core import DecoderConfig, LiftingConfig, SSCCore, query_stride
from occ_core.models.lidar_branch import LidarBranch, LidarConfig


@dataclass
class ModelConfig:
    """LiDAR-only: voxelised scan -> sparse encoder -> 3D UNet + ASPP -> head."""

    lifting: LiftingConfig = field(default_factory=LiftingConfig)
    """Query grid (stride / grid) and feature channels (embed_dims); the attention fields are not used."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """3D decoder and head (the shared core's)."""
    lidar: LidarConfig = field(default_factory=LidarConfig)
    """Voxelisation and sparse encoder."""
    loss_scale: int = 1
    """Compute the training losses against the 1:S target (1 = the full dataset grid)."""
    supervise_full_grid: bool = False
    """As the shared core's (docs/training.md): with loss_scale > 1, the losses on the 1:S logits upsampled to the
    dataset grid at the labelled voxels. Needs 1 in data.target_scales."""
    full_grid_points: int = 0
    """As the shared core's: at most this many labelled voxels per frame with supervise_full_grid (0 = all)."""
    full_grid_occupied: float = 0.0
    """As the shared core's: the share of full_grid_points drawn from the labelled occupied voxels first, with
    importance weights in the losses (0 = a uniform draw)."""
    empty_above_labelled: float = 0.0
    """As the shared core's: weight of the cross-entropy to empty above the highest labelled layer (0 = off)."""
    empty_unlabelled: float = 0.0
    """As the shared core's: weight of the cross-entropy to empty at the voxels the target leaves unlabelled."""


def with_points(cfg):
    """The run loads the LiDAR scan (``data.load_points``)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, load_points=True))


def _shared(cfg, preset):
    """The shared core's data, optimiser and loss recipe of ``preset`` (occ_core.models.core.apply_tiny /
    apply_paper) for a config whose model is not the shared core."""
    from occ_core.models.core import CoreConfig, apply_paper, apply_tiny

    base = (apply_tiny if preset == "tiny" else apply_paper)(dataclasses.replace(cfg, model=CoreConfig()))
    recipe = {k: getattr(base.model, k) for k in ("loss_scale", "supervise_full_grid", "full_grid_points",
                                                 "full_grid_occupied", "empty_above_labelled", "empty_unlabelled")}
    return dataclasses.replace(cfg, data=dataclasses.replace(base.data, load_points=True), optim=base.optim,
                               loss=base.loss, val_every=base.val_every, log_every=base.log_every,
                               model=dataclasses.replace(cfg.model, **recipe))


def _tiny(cfg):
    """The shared tiny recipe (data, optimiser, losses) with a small LiDAR encoder at 1:2 (ours)."""
    cfg = _shared(cfg, "tiny")
    m = cfg.model
    m = dataclasses.replace(
        m, lifting=dataclasses.replace(m.lifting, stride=4, grid=[], embed_dims=32),
        decoder=dataclasses.replace(m.decoder, channel_mults=[2, 2], blocks=1, full_res_blocks=1, head_upsample=2),
        lidar=dataclasses.replace(m.lidar, voxel_stride=2, base_channels=16, blocks=1))
    return dataclasses.replace(cfg, model=m)


def _paper(cfg):
    """Our choice (no paper defines a LiDAR-only arm): the shared paper recipe, OpenOccupancy's encoder widths
    from the dataset grid."""
    cfg = _shared(cfg, "paper")
    m = cfg.model
    m = dataclasses.replace(
        m, lifting=dataclasses.replace(m.lifting, stride=2, grid=[], embed_dims=128),
        decoder=dataclasses.replace(m.decoder, channel_mults=[2, 4], blocks=1, full_res_blocks=1, head_upsample=2),
        lidar=dataclasses.replace(m.lidar, voxel_stride=1, base_channels=16, blocks=2))
    return dataclasses.replace(cfg, model=m)


PRESETS = {"tiny": _tiny, "paper": _paper}


def build_decoder_head(owner, cfg, C: int) -> None:
    """The shared core's 3D UNet + ASPP and head on ``owner`` (as :class:`occ_core.models.core.SSCCore`)."""
    from occ_core.models.decoder3d import SSCHead, UNet3d

    owner.decoder = UNet3d(C, channel_mults=tuple(cfg.decoder.channel_mults), norm=cfg.decoder.norm,
                           dilations=tuple(cfg.decoder.aspp_dilations), blocks=cfg.decoder.blocks,
                           full_res_blocks=cfg.decoder.full_res_blocks)
    up = int(cfg.decoder.head_upsample)
    qgrid = owner.spec.grid_at(owner.stride)
    if up > 1:
        owner.head = SSCHead(C, owner.n_classes, out_shape=tuple(g * up for g in qgrid), mode="deconv",
                             scale_factor=up, norm=cfg.decoder.norm)
    else:
        owner.head = SSCHead(C, owner.n_classes, out_shape=None, mode="trilinear", norm=cfg.decoder.norm)


class LidarOcc(OccModel):
    """LiDAR-only SSC model (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, spec, loss=None):
        super().__init__()
        self.cfg, self.spec, self.loss_cfg = cfg, spec, loss
        self.n_classes = spec.n_classes
        self.stride = query_stride(cfg, spec)
        if cfg.loss_scale not in spec.scales:
            raise OccError(f"model.loss_scale must be one of the stored target scales "
                           f"{', '.join(map(str, spec.scales))} (got {cfg.loss_scale})")
        C = cfg.lifting.embed_dims
        self.lidar = LidarBranch(cfg.lidar, spec, self.stride, C)
        build_decoder_head(self, cfg, C)
        self.register_buffer("class_weights", torch.from_numpy(spec.classes.weights()), persistent=False)
        self.register_buffer("labelled_top", torch.tensor(-1, dtype=torch.int64))  # empty_above_labelled

    def output_shape(self, scale: int) -> tuple[int, int, int]:
        return self.spec.grid_at(scale)

    def output_scale(self) -> int:
        return self.cfg.loss_scale if self.training else 1

    def logits_of(self, vol: Tensor) -> Tensor:
        logits = self.head(vol)
        shape = self.output_shape(self.output_scale())
        if tuple(logits.shape[2:]) != shape:
            logits = F.interpolate(logits, size=shape, mode="trilinear", align_corners=False)
        return logits

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        vol, _ = self.lidar(batch)
        return {"logits": self.logits_of(self.decoder(vol))}

    losses = SSCCore.losses
    """The shared core's losses (CE, scene-class affinity, the full-grid supervision and empty-above terms of
    its training recipe, plug-in losses): the same code on this model's config."""

    def export_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The export's example batch with the fixed-size points (docs/export.md)."""
        return self.lidar.export_inputs(batch)


def build_model(cfg: ModelConfig, spec, loss=None) -> LidarOcc:
    return LidarOcc(cfg, spec, loss)

"""A tiny method used by the engine tests only (registered at run time, not shipped)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occ_core.models.base import OccModel


@dataclass
class ModelConfig:
    """Probe model."""

    channels: int = 4
    """Image feature channels."""
    nan_after: int = 0
    """Return a NaN loss from this training call on (0 = never); tests the divergence stop."""


def _tiny(cfg):
    import dataclasses

    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, image_scale=0.125, projection_scales=[8], target_scales=[1, 8]),
        optim=dataclasses.replace(cfg.optim, epochs=3, lr=1e-2, milestones=[2]),
        val_every=1, log_every=1,
    )


PRESETS = {"tiny": _tiny}


class Probe(OccModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(3, cfg.channels, 3, padding=1)
        self.voxels = nn.Parameter(torch.zeros(20, 32, 32, 4))
        self.mix = nn.Linear(cfg.channels, 20)
        self.calls = 0

    def forward(self, batch):
        feat = F.relu(self.conv(batch["image"])).mean(dim=(2, 3))  # [B, C]
        logits = self.voxels[None] + self.mix(feat)[:, :, None, None, None]
        return {"logits": F.interpolate(logits, size=(256, 256, 32), mode="nearest"), "logits_1_8": logits}

    def losses(self, outputs, batch):
        self.calls += 1
        loss = F.cross_entropy(outputs["logits_1_8"], batch["target_1_8"], ignore_index=255)
        if self.cfg.nan_after and self.calls >= self.cfg.nan_after:
            loss = loss * float("nan")
        return {"ce": loss}


def build_model(cfg):
    return Probe(cfg.model)

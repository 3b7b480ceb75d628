"""A tiny method used by the engine tests only (registered at run time, not shipped).

It follows the model contract (docs/design.md): ``build_model(model_cfg, spec, loss_cfg)``, batches with
``images [B, V, 3, H, W]``, logits at the loss scale (1:8) in training and at the dataset grid in eval
mode. It also has a binary branch like B2S (``forward_binary``, ``binary_losses``, ``binary_modules``)
so that the binary pre-training stage runs on it in seconds."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occ_core.models.base import OccModel

LOSS_SCALE = 8


@dataclass
class ModelConfig:
    """Probe model."""

    channels: int = 4
    """Image feature channels."""
    nan_after: int = 0
    """Return a NaN loss from this training call on (0 = never); tests the divergence stop."""
    mode: str = "online"
    """Has a binary occupancy module (what the binary pre-training stage checks)."""


def _tiny(cfg):
    import dataclasses

    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, image_scale=0.125, target_scales=[1, LOSS_SCALE]),
        optim=dataclasses.replace(cfg.optim, epochs=3, lr=1e-2, milestones=[2]),
        val_every=1, log_every=1,
    )


PRESETS = {"tiny": _tiny}


class Probe(OccModel):
    def __init__(self, cfg: ModelConfig, spec):
        super().__init__()
        self.cfg = cfg
        self.n_classes = spec.n_classes
        self.grid = tuple(spec.grid.shape)
        coarse = tuple(s // LOSS_SCALE for s in self.grid)
        self.conv = nn.Conv2d(3, cfg.channels, 3, padding=1)
        self.voxels = nn.Parameter(torch.zeros(self.n_classes, *coarse))
        self.mix = nn.Linear(cfg.channels, self.n_classes)
        self.binary_voxels = nn.Parameter(torch.zeros(1, *coarse))
        self.binary_mix = nn.Linear(cfg.channels, 1)
        self.calls = 0

    def output_scale(self) -> int:
        return LOSS_SCALE if self.training else 1

    def _features(self, batch):
        images = batch["images"]  # [B, V, 3, H, W]
        b, v = images.shape[:2]
        return F.relu(self.conv(images.flatten(0, 1))).mean(dim=(2, 3)).view(b, v, -1).mean(1)  # [B, C]

    def _up(self, x):
        return x if self.training else F.interpolate(x, size=self.grid, mode="nearest")

    def forward(self, batch):
        logits = self.voxels[None] + self.mix(self._features(batch))[:, :, None, None, None]
        return {"logits": self._up(logits)}

    def losses(self, outputs, batch):
        self.calls += 1
        loss = F.cross_entropy(outputs["logits"], batch[f"target_1_{LOSS_SCALE}"], ignore_index=255)
        if self.cfg.nan_after and self.calls >= self.cfg.nan_after:
            loss = loss * float("nan")
        return {"ce": loss}

    # -- binary branch (B2S-like) ------------------------------------------------------------
    def binary_modules(self):
        return [self.conv, self.binary_mix, _ParamHolder(self.binary_voxels)]

    def forward_binary(self, batch):
        z = self.binary_voxels[None] + self.binary_mix(self._features(batch))[:, :, None, None, None]
        return {"occ_logits": self._up(z)}

    def binary_losses(self, outputs, batch):
        self.calls += 1
        s = self.output_scale()
        b = batch["binary" if s == 1 else f"binary_1_{s}"]
        z = outputs["occ_logits"][:, 0]
        valid = b != 255
        loss = F.binary_cross_entropy_with_logits(z[valid], b[valid].float())
        if self.cfg.nan_after and self.calls >= self.cfg.nan_after:
            loss = loss * float("nan")
        return {"bce": loss}


class _ParamHolder(nn.Module):
    """Exposes one parameter as a module (binary_modules returns modules)."""

    def __init__(self, p: nn.Parameter):
        super().__init__()
        self._p = [p]

    def parameters(self, recurse: bool = True):
        return iter(self._p)


def build_model(model_cfg, spec, loss_cfg=None):
    return Probe(model_cfg, spec)

"""``baseline``: the shared core with plain deformable cross-attention and no VP modules."""

from __future__ import annotations

from dataclasses import dataclass

from occ_core.models.core import CoreConfig, SSCCore, apply_paper, apply_tiny


@dataclass
class ModelConfig(CoreConfig):
    """Baseline: image backbone + FPN, depth-proposed voxel queries with deformable cross-attention,
    3D UNet + ASPP, head."""


PRESETS = {"tiny": apply_tiny, "paper": apply_paper}


def build_model(cfg: ModelConfig, spec, loss=None) -> SSCCore:
    return SSCCore(cfg, spec, loss)

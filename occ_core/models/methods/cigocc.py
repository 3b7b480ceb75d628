"""``cigocc``: CIGOcc (Xu et al., 2025), camera-only occupancy from segmentation, "graphics" and depth
features fused by deformable multi-level fusion, two stages, SAM-mask distillation. The authors' code is
not public: this follows the abstract and the pipeline figure; docs/cigocc.md says which parts are the
paper's and which are our reading.

* **Three 2D feature extractors** on each camera's image (cameras share the weights):
  segmentation features (a conv head on the backbone + FPN pyramid), "graphics" features (fixed grey /
  Sobel / gradient-magnitude / Laplacian maps through a small learned conv encoder) and depth features
  (a conv head on the pyramid whose depth-bin logits are supervised by the batch's sparse depth).
* **Deformable multi-level fusion**, level by level: each pixel's query attends with deformable
  attention to the three feature maps of its level; the result is one fused 2D pyramid.
* **Stage 1**: the fused map of one level times the predicted depth distribution is lifted into the
  query grid (Lift-Splat), a 3D UNet gives the raw volume, a head its SSC logits (SSC losses).
* **Stage 2**: the voxels stage 1 predicts occupied (and some camera sees) are the queries; they start
  from the raw volume, are updated by deformable cross-attention to the fused pyramid, written back,
  the raw volume is added, deformable self-attention runs over the volume, and a head predicts the
  occupancy (SSC losses with scene-class affinity; stage 1's losses stay as an auxiliary term).
* **SAM-mask distillation** (``model.sam.weight > 0``; masks from ``occ prepare masks``, docs/sam_masks.md):
  a class-balanced BCE of pixel-pair affinities of the segmentation embedding against "same SAM mask /
  different SAM masks" (pairs with an unmasked pixel are ignored). Training only: inference and export
  read neither the masks nor the depth.

``model.stage`` says which model is built: 1 = stage 1 alone (its logits are the output), 2 = both.
``occ train --method cigocc`` runs the stages of ``model.stages`` with :func:`training_stages`
(default ``[1, 2]``: stage 1, then stage 2 initialised from it, in ``RUN/1-cigocc-stage1`` and
``RUN/2-cigocc-stage2``); the plain engine stage (``train(cfg)``) trains the ``model.stage`` model in
one go.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.errors import OccError
from occ_core.models.core import (CoreConfig, SSCCore, apply_paper, apply_tiny, empty_prior_losses,
                                  ssc_losses, supervised_logits)


@dataclass
class ExtractorConfig:
    """The three 2D feature extractors (the paper names them; their layout is ours)."""

    graphics_width: int = 16
    """Channels of the graphics encoder's stem (ours)."""
    seg_embed_dims: int = 16
    """Channels of the per-pixel mask embedding the SAM-mask loss reads (ours)."""
    depth_bins: int = 32
    """Depth bins of the depth head, uniform over [depth_min, depth_max] (ours)."""
    depth_min: float = 1.0
    """Nearest depth bin edge (m; ours)."""
    depth_max: float = 0.0
    """Farthest depth bin edge (m); 0 = the diagonal of the dataset grid (ours)."""
    lift_level: int = 1
    """Pyramid level (index into backbone.out_indices) that stage 1 lifts with the depth distribution (ours:
    stride 8 by default)."""
    depth_weight: float = 1.0
    """Weight of the depth-bin cross-entropy against the batch's sparse depth (ours)."""


@dataclass
class FusionConfig:
    """Deformable multi-level fusion (paper: deformable, level by level, over the three feature kinds)."""

    num_points: int = 4
    """Sampling points per head and feature kind (ours)."""
    num_heads: int = 0
    """Attention heads; 0 = model.lifting.num_heads (ours)."""


@dataclass
class SAMLossConfig:
    """SAM-mask distillation on the segmentation extractor (paper: BCE against SAM masks; the pair-affinity
    formulation is ours)."""

    weight: float = 0.0
    """Weight of the mask-affinity BCE; > 0 needs SAM masks in the prepared folder (``occ prepare masks``) and
    turns on data.load_masks. The paper uses it; the tiny preset leaves it off, the paper preset on."""
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Pixel-pair distances (in pixels of the finest feature level) along the four directions (ours)."""


@dataclass
class ModelConfig(CoreConfig):
    """CIGOcc on the shared core: backbone + FPN, the three extractors, multi-level fusion, stage 1 (depth
    lifting, 3D UNet, head), stage 2 (query cross/self-attention, raw volume added, head). ``lifting.*``
    sets stage 2's queries: ``num_layers`` cross-attention layers, ``num_heads``, ``num_points``,
    ``proposal_dilate`` (dilation of the proposed voxels); ``decoder.*`` the stage-1 3D UNet and both heads."""

    extractors: ExtractorConfig = field(default_factory=ExtractorConfig)
    """The three 2D feature extractors."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """Deformable multi-level fusion."""
    sam: SAMLossConfig = field(default_factory=SAMLossConfig)
    """SAM-mask distillation."""
    stage: int = 2
    """Model built: 1 = stage 1 alone (its logits are the output), 2 = stages 1 and 2. The training stages set it."""
    stages: list[int] = field(default_factory=lambda: [1, 2])
    """Stages 'occ train' runs: [1, 2] (stage 1, then stage 2 initialised from it), [1], or [2] (with --init RUN
    of a stage-1 run)."""
    stage1_epochs: int = 0
    """Epochs of stage 1 (0 = optim.epochs)."""
    stage2_epochs: int = 0
    """Epochs of stage 2 (0 = optim.epochs)."""
    stage1_minutes: float = 0.0
    """Time budget of stage 1 in minutes (0 = max_minutes)."""
    stage2_minutes: float = 0.0
    """Time budget of stage 2 in minutes (0 = max_minutes)."""
    stage1_aux: float = 0.5
    """Weight of stage 1's SSC losses (on its logits) while stage 2 trains (ours)."""
    freeze_stage1: bool = False
    """Stage 2 trains only its own modules (query refiner, head); stage 1 keeps its weights (ours: off)."""
    proposal_threshold: float = 0.5
    """A voxel is a stage-2 query where stage 1's occupancy probability (1 - p(empty)) reaches this (ours)."""
    max_queries: float = 0.25
    """At most this fraction of the query grid becomes stage-2 queries (the most probably occupied; ours: bounds
    the cost while stage 1 is still unsure, e.g. at the start, where every voxel would pass the threshold)."""
    self_layers: int = 1
    """Deformable self-attention layers over the volume in stage 2."""
    self_points: int = 4
    """Sampling points per head of the self-attention (ours)."""


def _tiny(cfg):
    """The shared tiny recipe without the depth volume: CIGOcc is camera-only at inference (it predicts the
    depth it lifts with; the batch's depth map only supervises that prediction)."""
    cfg = apply_tiny(cfg)
    m = cfg.model
    return dataclasses.replace(cfg, model=dataclasses.replace(m, lifting=dataclasses.replace(m.lifting, depth_volume=0,
                                                                                          depth_paint="none")))


def _paper(cfg):
    cfg = apply_paper(cfg)
    m = cfg.model
    return dataclasses.replace(cfg, model=dataclasses.replace(
        m, extractors=dataclasses.replace(m.extractors, depth_bins=64, graphics_width=32, seg_embed_dims=32),
        fusion=dataclasses.replace(m.fusion, num_points=4), sam=dataclasses.replace(m.sam, weight=1.0),
        self_layers=2, self_points=8))


PRESETS = {"tiny": _tiny, "paper": _paper}


def depth_range(cfg: ExtractorConfig, spec) -> tuple[float, float]:
    d_max = cfg.depth_max
    if d_max <= 0:
        g = spec.grid
        d_max = math.sqrt(sum((n * v) ** 2 for n, v in zip(g.shape, g.voxel_size)))
    if not 0 < cfg.depth_min < d_max:
        raise OccError(f"model.extractors: need 0 < depth_min < depth_max (got {cfg.depth_min}, {d_max})")
    return float(cfg.depth_min), float(d_max)


def _up(x: Tensor, shape: tuple[int, int, int]) -> Tensor:
    return x if tuple(x.shape[2:]) == tuple(shape) else F.interpolate(x, size=shape, mode="trilinear", align_corners=False)


class CIGOcc(SSCCore):
    """CIGOcc (module docstring). ``encoder``, ``lifting`` (the depth lifting), ``decoder`` (the 3D UNet) and
    ``head`` of the shared core are stage 1's; ``refiner`` and ``head2`` are stage 2's."""

    STAGE1_MODULES = ("encoder", "seg_head", "graphics", "depth_head", "fusion", "affinity", "lifting", "decoder", "head")

    def __init__(self, cfg: ModelConfig, spec, loss=None):
        if cfg.stage not in (1, 2):
            raise OccError(f"model.stage must be 1 or 2 (got {cfg.stage})")
        levels = len(cfg.backbone.out_indices)
        if not 0 <= cfg.extractors.lift_level < levels:
            raise OccError(f"model.extractors.lift_level must index model.backbone.out_indices (0..{levels - 1}, "
                           f"got {cfg.extractors.lift_level})")
        if cfg.lifting.depth_volume:
            raise OccError("cigocc takes no model.lifting.depth_volume: it is camera-only at inference (it predicts "
                           "the depth it lifts with; the batch's depth map only supervises that prediction)")
        self.depth_range = depth_range(cfg.extractors, spec)
        super().__init__(cfg, spec, loss)
        from occ_core.models.cig_modules import DepthHead, GraphicsEncoder, MaskAffinity, MultiLevelFusion, SegmentationHead

        C = cfg.lifting.embed_dims
        ex = cfg.extractors
        heads = cfg.fusion.num_heads or cfg.lifting.num_heads
        self.seg_head = SegmentationHead(C, ex.seg_embed_dims)
        self.graphics = GraphicsEncoder(C, self.encoder.strides, ex.graphics_width)
        self.depth_head = DepthHead(C, ex.depth_bins)
        self.fusion = MultiLevelFusion(C, levels, heads, cfg.fusion.num_points, cfg.lifting.dropout)
        self.affinity = MaskAffinity()
        X, Y, Z = spec.grid_at(self.stride)
        self.pos_x = nn.Parameter(torch.zeros(C, X, 1, 1))
        self.pos_y = nn.Parameter(torch.zeros(C, 1, Y, 1))
        self.pos_z = nn.Parameter(torch.zeros(C, 1, 1, Z))
        if cfg.stage == 2:
            from occ_core.models.cig_modules import QueryRefiner

            lc = cfg.lifting
            self.refiner = QueryRefiner.from_spec(
                spec, self.stride, C, num_layers=lc.num_layers, num_heads=lc.num_heads, num_levels=levels,
                num_points=lc.num_points, dropout=lc.dropout, proposal_dilate=lc.proposal_dilate,
                self_layers=cfg.self_layers, self_points=cfg.self_points)
            self.head2 = self._make_head(C)
        if cfg.stage == 2 and cfg.freeze_stage1:
            for p in self.stage1_parameters():
                p.requires_grad_(False)

    def _make_head(self, C: int) -> nn.Module:
        from occ_core.models.decoder3d import SSCHead

        up = int(self.cfg.decoder.head_upsample)
        if up > 1:
            return SSCHead(C, self.n_classes, out_shape=tuple(g * up for g in self.spec.grid_at(self.stride)),
                           mode="deconv", scale_factor=up, norm=self.cfg.decoder.norm)
        return SSCHead(C, self.n_classes, out_shape=None, mode="trilinear", norm=self.cfg.decoder.norm)

    def build_lifting(self, cfg: ModelConfig) -> nn.Module:
        from occ_core.models.cig_modules import DepthLift, depth_bin_centres

        g = self.spec.grid.scaled(self.stride)
        bins = depth_bin_centres(*self.depth_range, cfg.extractors.depth_bins)
        return DepthLift(cfg.lifting.embed_dims, g.shape, g.voxel_size, g.origin, bins)

    def stage1_modules(self) -> list[nn.Module]:
        return [getattr(self, n) for n in self.STAGE1_MODULES]

    def stage1_parameters(self) -> list[nn.Parameter]:
        """Every parameter but stage 2's (``refiner``, ``head2``)."""
        return [p for n, p in self.named_parameters() if not n.startswith(("refiner.", "head2."))]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.cfg.stage == 2 and self.cfg.freeze_stage1:
            for m in self.stage1_modules():
                m.eval()  # frozen: BatchNorm statistics stay as stage 1 left them
        return self

    # -- forward --------------------------------------------------------------------------------
    def features(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The extractors and the fusion: ``fused`` (L x [B, V, C, H_l, W_l]), ``depth_logits``
        ([B, V, D, h, w] at the lift level), ``embed`` ([B*V, E, H_0, W_0], the mask embedding)."""
        images = batch["images"]
        B, V = images.shape[:2]
        pyramid = [f.flatten(0, 1) for f in self.encoder(images)]
        seg, embed = self.seg_head(pyramid)
        gfx = self.graphics(images.flatten(0, 1), [tuple(f.shape[-2:]) for f in pyramid])
        dep, depth_logits = self.depth_head(pyramid, self.cfg.extractors.lift_level)
        fused = self.fusion(seg, gfx, dep)
        return {"fused": [f.view(B, V, *f.shape[1:]) for f in fused],
                "depth_logits": depth_logits.view(B, V, *depth_logits.shape[1:]), "embed": embed}

    def stage1(self, batch: dict[str, Any], feats: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(raw volume [B, C, X, Y, Z] at the query grid, stage-1 logits at the head's grid)."""
        fused = feats["fused"][self.cfg.extractors.lift_level]
        prob = feats["depth_logits"].softmax(2)
        H, W = batch["images"].shape[-2:]
        x = self.lifting(fused, prob, batch["intrinsics"], batch["grid_to_cam"], (int(H), int(W)))
        raw = self.decoder(x + self.pos_x + self.pos_y + self.pos_z)
        return raw, self.head(raw)

    def proposal(self, logits1: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """Stage-2 queries: Tensor  # [B, X*Y*Z] bool, where stage 1's occupancy probability reaches the
        threshold (max over the head's upsampled voxels of a query voxel), dilated by lifting.proposal_dilate,
        at most ``max_queries`` of the grid (the most probable)."""
        with torch.no_grad():
            p_occ = 1.0 - logits1.float().softmax(1)[:, :1]  # [B, 1, ...]
            up = int(self.cfg.decoder.head_upsample)  # static sizes (the forward is traced for export)
            if up > 1:
                p_occ = F.max_pool3d(p_occ, up, up)
            occ = (p_occ >= self.cfg.proposal_threshold).float()
            d = int(self.cfg.lifting.proposal_dilate)
            if d > 0:
                occ = F.max_pool3d(occ, 2 * d + 1, stride=1, padding=d)
            cand = occ.flatten(1) > 0
            score = torch.where(cand, p_occ.flatten(1), torch.full_like(cand, -1.0, dtype=p_occ.dtype))
            n = grid[0] * grid[1] * grid[2]
            k = max(1, min(n, int(round(self.cfg.max_queries * n))))
            kth = score.topk(k, dim=1).values[:, -1:]
            return cand & (score >= kth)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        feats = self.features(batch)
        raw, logits1 = self.stage1(batch, feats)
        shape = self.output_shape(self.output_scale())
        out: dict[str, Tensor] = {"depth_logits": feats["depth_logits"]}
        if feats["embed"] is not None:
            out["mask_embed"] = feats["embed"]
        if self.cfg.stage == 1:
            out["logits"] = _up(logits1, shape)
            return out
        if self.training:
            out["logits_stage1"] = _up(logits1, shape)
        b = dict(batch)
        b["_cig_proposal"] = self.proposal(logits1, self.spec.grid_at(self.stride))
        vol = self.refiner(feats["fused"], b, raw)
        out["logits"] = _up(self.head2(vol), shape)
        return out

    # -- losses ---------------------------------------------------------------------------------
    def losses(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        from occ_core.losses.plugins import plugin_losses
        from occ_core.models.cig_modules import depth_targets

        cfg = self.cfg
        aux = "logits_stage1" in outputs and cfg.stage1_aux > 0
        heads, target, weight = supervised_logits(self, [outputs["logits"]] + ([outputs["logits_stage1"]] if aux else []), batch)
        losses = ssc_losses(heads[0], target, self.loss_cfg, self.class_weights, weight)
        if aux:
            for k, v in ssc_losses(heads[1], target, self.loss_cfg, self.class_weights, weight).items():
                losses[f"stage1_{k}"] = cfg.stage1_aux * v
        losses.update(empty_prior_losses(self, cfg, outputs["logits"], batch, self.output_scale()))
        if cfg.extractors.depth_weight > 0:
            logits = outputs["depth_logits"]  # [B, V, D, h, w]
            t = depth_targets(batch["depth"], tuple(logits.shape[-2:]), *self.depth_range, cfg.extractors.depth_bins)
            lg = logits.flatten(0, 1).float()
            if bool((t >= 0).any()):
                losses["depth"] = cfg.extractors.depth_weight * F.cross_entropy(lg, t, ignore_index=-1)
            else:
                losses["depth"] = lg.sum() * 0.0
        if cfg.sam.weight > 0:
            masks = batch.get("masks")
            if masks is None:
                raise OccError("model.sam.weight > 0 needs the SAM masks in the batch: set data.load_masks=true "
                               "(masks written by 'occ prepare masks'), or model.sam.weight=0")
            if "mask_embed" not in outputs:
                raise OccError("model.sam.weight > 0 needs model.extractors.seg_embed_dims > 0")
            losses["sam"] = cfg.sam.weight * self.affinity(outputs["mask_embed"], masks.flatten(0, 1),
                                                           [int(d) for d in cfg.sam.dilations])
        losses.update(plugin_losses(self, outputs, batch))
        return losses


def build_model(cfg: ModelConfig, spec, loss=None) -> CIGOcc:
    return CIGOcc(cfg, spec, loss)


# ------------------------------------------------------------------------------------------------
# Training stages
# ------------------------------------------------------------------------------------------------

STAGE_NAMES = {1: "cigocc-stage1", 2: "cigocc-stage2"}


def stage_config(cfg, k: int):
    """The run config of stage ``k``: model.stage = k, that stage's epochs / time budget, SAM masks loaded
    when the SAM loss is on. Idempotent (a resumed stage applies it to its stored config again)."""
    m = cfg.model
    if not isinstance(m, ModelConfig):
        raise OccError(f"the CIGOcc stages need method 'cigocc' (got '{cfg.method}')")
    epochs = m.stage1_epochs if k == 1 else m.stage2_epochs
    minutes = m.stage1_minutes if k == 1 else m.stage2_minutes
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, stage=k))
    if epochs > 0:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=int(epochs)))
    if minutes > 0:
        cfg = dataclasses.replace(cfg, max_minutes=float(minutes))
    return with_masks(cfg)


def with_masks(cfg):
    """``cfg`` with data.load_masks on when model.sam.weight > 0."""
    if cfg.model.sam.weight <= 0:
        return cfg
    if not hasattr(cfg.data, "load_masks"):
        raise OccError("model.sam.weight > 0 needs SAM-mask loading (data.load_masks), which this install lacks")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, load_masks=True))


def check_masks(root: Path) -> None:
    """OccError unless the prepared folder ``root`` has SAM masks (``masks/``, written by 'occ prepare masks')."""
    masks = Path(root) / "masks"
    if not (masks.is_dir() and any(masks.rglob("*.png"))):
        raise OccError(f"no SAM masks in the prepared folder (model.sam.weight > 0): run 'occ prepare masks --data {root}' "
                       "first, or set model.sam.weight=0", root)


def _datasets(cfg, root: Path):
    from occ_core.engine.trainer import ssc_datasets

    if cfg.model.sam.weight > 0:
        check_masks(root)
    return ssc_datasets(cfg, root)


def _stage2_parameters(model: torch.nn.Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def make_stage(k: int):
    from occ_core.engine.trainer import Stage

    return Stage(name=STAGE_NAMES[k], configure=lambda cfg: stage_config(cfg, k), datasets=_datasets,
                 parameters=_stage2_parameters)


def training_stages(cfg) -> list:
    """The engine stages ``occ train`` runs for ``cfg`` (``model.stages``): stage 1 and / or stage 2."""
    ks = [int(k) for k in cfg.model.stages]
    if not ks or any(k not in (1, 2) for k in ks) or ks != sorted(set(ks)):
        raise OccError(f"model.stages must be [1, 2], [1] or [2] (got {cfg.model.stages})")
    return [make_stage(k) for k in ks]


__all__ = ["ModelConfig", "PRESETS", "build_model", "CIGOcc", "training_stages", "stage_config", "check_masks"]

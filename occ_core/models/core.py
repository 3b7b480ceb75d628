"""The shared model core: image backbone + neck -> voxel-query lifting -> 3D UNet + ASPP -> head.

``baseline`` (occ_core/models/methods/baseline.py) is this core as is (plain deformable cross-attention); VPOcc, TACOcc, CIGOcc and B2S
reuse its pieces. All settings live in :class:`CoreConfig` (documented dataclasses).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.errors import OccError
from occ_core.models.base import OccModel


@dataclass
class BackboneConfig:
    """Image backbone (ResNet in plain torch, torchvision parameter names)."""

    name: str = "resnet18"
    """resnet18, resnet34, resnet50 or resnet101."""
    weights: str = ""
    """Torchvision-format state dict (.pth/.pt/.safetensors) to start from; empty: random init (with a warning)."""
    out_indices: list[int] = field(default_factory=lambda: [0, 1, 2])
    """ResNet stages whose features are used (0..3 = strides 4, 8, 16, 32)."""
    frozen_stages: int = -1
    """Freeze the stem and the first N stages (-1: train everything)."""


@dataclass
class LiftingConfig:
    """Depth-proposed voxel queries and deformable cross-attention to the image."""

    stride: int = 4
    """Query grid = the dataset grid divided by this (4: 64 x 64 x 8 voxels of 0.8 m for SemanticKITTI)."""
    grid: list[int] = field(default_factory=list)
    """Explicit query grid X, Y, Z (empty: from stride); must be the dataset grid divided by an integer."""
    embed_dims: int = 64
    """Feature channels of the queries, the neck and the 3D decoder."""
    num_layers: int = 1
    """Cross-attention layers."""
    num_heads: int = 4
    """Attention heads."""
    num_points: int = 4
    """Sampling points per head and feature level."""
    proposal_dilate: int = 1
    """Dilate the depth-proposed voxels by this many voxels."""
    per_voxel_embed: bool = True
    """A learned query per voxel (VoxFormer) instead of one shared query."""
    embed_unselected: bool = False
    """Voxels that do not attend to an image (not depth-proposed, or out of view) start from their own learned
    embedding too, not only the shared mask token: a learnable per-voxel prior for the decoder (ours)."""
    dropout: float = 0.0
    """Dropout in the attention layers' feed-forward blocks."""
    depth_volume: int = 0
    """Add the depth maps' geometry to the lifted volume (ours; 0 = off): per voxel of the 1:S dataset grid
    (S = this value, a divisor of the query stride), the depth points inside it, the truncated signed
    distance along the camera rays and whether a camera has depth there, folded into the query grid by a
    strided 3D convolution (occ_core/models/depth_volume.py). The depth proposal alone only says which query
    voxels hold a depth point."""
    depth_trunc: float = 1.0
    """Truncation distance (metres) of the signed distance of depth_volume."""
    depth_paint: str = "none"
    """What else depth_volume carries per fine voxel, averaged over the depth points inside it (ours):
    ``none``; ``rgb``, the network image's colour at those pixels; ``features``, the finest image-feature
    level there (learnt: the gradient reaches the image encoder), so each depth point lifts its pixel's
    features into the voxel it falls in, as a LiDAR point painted with image features would."""


@dataclass
class DecoderConfig:
    """3D UNet with an ASPP bottleneck and the classification head."""

    channel_mults: list[int] = field(default_factory=lambda: [2, 4])
    """Widths of the two coarser UNet levels relative to embed_dims."""
    blocks: int = 1
    """Residual blocks at the middle UNet level."""
    full_res_blocks: int = 1
    """Residual blocks at the query-volume resolution."""
    aspp_dilations: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Dilations of the 3D ASPP block."""
    norm: str = "bn"
    """bn (BatchNorm3d) or gn (GroupNorm)."""
    head_upsample: int = 1
    """Learned (transposed-conv) upsampling of the head from the query volume (1 = none); the logits are
    then interpolated trilinearly to the loss / output grid."""


@dataclass
class CoreConfig:
    """The shared model core."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Image backbone."""
    lifting: LiftingConfig = field(default_factory=LiftingConfig)
    """2D -> 3D lifting."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """3D decoder and head."""
    loss_scale: int = 1
    """Compute the training losses against the 1:S target (1 = the full dataset grid; 2 is 8x cheaper)."""
    supervise_full_grid: bool = False
    """With loss_scale > 1: compute the SSC losses against the full-resolution target instead, on the
    1:S logits upsampled trilinearly to the dataset grid exactly as at inference, at the labelled
    voxels only (ours). A 1:S target marks a coarse voxel occupied when any of its fine voxels is, so
    thin layers thicken: trained on it, the upsampled prediction grows a second ground layer above the
    street. Needs 1 in data.target_scales."""
    full_grid_points: int = 0
    """With supervise_full_grid: supervise at most this many labelled voxels per frame, drawn at random
    every step (0 = all of them). Drawing 65536 of the ~500k labelled voxels of a SemanticKITTI-size frame
    costs a third as much in the losses; on the seed-1 synthetic data at 240 steps of the tiny preset it
    scored 58.71 / 8.64 against 59.19 / 8.74 with all voxels, in 24 % less time a step, so the time-budgeted
    tiny preset uses 65536 (docs/results.md)."""
    full_grid_occupied: float = 0.0
    """With full_grid_points > 0: 0 draws the supervised voxels uniformly from the labelled ones; a value in
    (0, 1] draws the labelled occupied voxels first, up to this share of full_grid_points, and the labelled
    empty ones for the rest, with importance weights (stratum size / voxels drawn) in every SSC loss, so the
    losses estimate the same all-voxel losses while the rare classes are seen at every step (ours;
    ``sample_full_grid``)."""
    empty_above_labelled: float = 0.0
    """Weight of a cross-entropy towards empty on the layers of the grid above the highest layer any
    training target has labelled so far (ours; 0 = off). No benchmark label exists there (on
    SemanticKITTI-like data no LiDAR ray reaches the top of the grid), so no scored voxel changes, but
    unsupervised, those layers take whatever class the decoder extrapolates: a ceiling of road above
    the street in pictures. The highest labelled layer is a buffer that training updates."""
    empty_unlabelled: float = 0.0
    """Weight of a cross-entropy towards empty on the voxels below that layer that the frame's training
    target leaves unlabelled (ours; 0 = off): space no ray observed (above and behind what the LiDAR hits).
    Unlabelled voxels are unscored, so the benchmark figures do not reward it; unsupervised, the decoder
    fills them with blobs of whatever class it extrapolates (floating structures in pictures). A small
    weight makes "empty unless the image says otherwise" the default there."""


def loss_target(batch: dict[str, Any], scale: int) -> Tensor:
    key = "target" if scale == 1 else f"target_1_{scale}"
    if key not in batch:
        raise KeyError(f"batch has no '{key}': add {scale} to data.target_scales")
    return batch[key]


def sample_full_grid(logits: Tensor, target: Tensor, ignore_index: int = 255,
                     max_points: int = 0, occupied_share: float = 0.0,
                     empty_index: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
    """The logits of a coarse volume at the labelled voxels of a finer target grid, trilinearly
    interpolated as ``F.interpolate(logits, size=target.shape[1:], mode="trilinear", align_corners=False)``
    would give them (border values clamped), without building the fine volume.

    logits: Tensor  # [B, C, x, y, z];  target: Tensor  # [B, X, Y, Z] (ignore_index = unlabelled)
    max_points: when > 0, at most this many labelled voxels per sample, drawn uniformly at random with
    the global torch RNG (an unbiased estimate of the losses at a fraction of the cost).
    occupied_share: when > 0 (with max_points > 0), a stratified draw instead: the labelled occupied
    voxels (label != empty_index) fill up to this share of max_points and the labelled empty voxels the
    rest, each stratum drawn uniformly, with importance weights (a voxel stands for stratum size /
    voxels drawn from its stratum; 0 on padding), so that weighted losses estimate the all-voxel losses
    without bias while rare occupied classes are seen at every step.
    Returns (Tensor  # [B, C, N] logits, Tensor  # [B, N] labels, Tensor  # [B, N] float32 weights of the
    stratified draw, None otherwise): N = the most voxels kept of any sample; the shorter samples are
    padded with ignore_index."""
    B = logits.shape[0]
    X, Y, Z = target.shape[1:]
    flat = target.reshape(B, -1)
    stratified = occupied_share > 0 and max_points > 0
    picks, stand_for = [], []
    for b in range(B):
        if stratified:
            occ = torch.nonzero((flat[b] != ignore_index) & (flat[b] != empty_index)).squeeze(1)
            emp = torch.nonzero(flat[b] == empty_index).squeeze(1)
            k_occ = min(occ.numel(), max(1, int(round(occupied_share * max_points))))
            k_emp = min(emp.numel(), max_points - k_occ)
            k_occ = min(occ.numel(), max_points - k_emp)  # an empty stratum too small leaves its share to the occupied
            parts, ws = [], []
            for pool, k in ((occ, k_occ), (emp, k_emp)):
                if k > 0:
                    parts.append(pool[torch.randperm(pool.numel(), device=pool.device)[:k]] if k < pool.numel() else pool)
                    ws.append(torch.full((k,), pool.numel() / k, dtype=torch.float32, device=pool.device))
            idx = torch.cat(parts) if parts else occ[:0]
            stand_for.append(torch.cat(ws) if ws else torch.zeros(0, device=target.device))
        else:
            idx = torch.nonzero(flat[b] != ignore_index).squeeze(1)
            if max_points > 0 and idx.numel() > max_points:
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[:max_points]]
        picks.append(idx)
    n = max(1, max(p.numel() for p in picks))
    order = torch.zeros(B, n, dtype=torch.long, device=target.device)
    labels = torch.full((B, n), ignore_index, dtype=flat.dtype, device=target.device)
    weights = torch.zeros(B, n, dtype=torch.float32, device=target.device) if stratified else None
    for b, idx in enumerate(picks):
        order[b, :idx.numel()] = idx
        labels[b, :idx.numel()] = flat[b, idx]
        if weights is not None:
            weights[b, :idx.numel()] = stand_for[b]
    ix, rem = order // (Y * Z), order % (Y * Z)
    iy, iz = rem // Z, rem % Z
    C, (x, y, z) = logits.shape[1], logits.shape[2:]
    # per axis: source coordinate (i + 0.5) * in / out - 0.5, clamped at 0 (PyTorch's align_corners=False
    # rule for linear modes), its two neighbours and weights
    axes = []
    for i, n_in, n_out in ((ix, x, X), (iy, y, Y), (iz, z, Z)):
        c = ((i.to(logits.dtype) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
        lo = c.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        w = (c - lo.to(c.dtype)).clamp(0.0, 1.0)
        axes.append((lo, hi, w))
    (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = axes
    lins, facs = [], []
    for xi, fx in ((x0, 1 - wx), (x1, wx)):
        for yi, fy in ((y0, 1 - wy), (y1, wy)):
            for zi, fz in ((z0, 1 - wz), (z1, wz)):
                lins.append((xi * y + yi) * z + zi)  # [B, n]
                facs.append(fx * fy * fz)
    lin, fac = torch.stack(lins, -1), torch.stack(facs, -1)  # [B, n, 8]: the 8 neighbours, their weights
    # One gather of all eight neighbours (adjacent in the index), not eight gathers each summed into the
    # result: the backward is one zero-filled scatter instead of eight (0.05 s of a CPU training step of
    # the tiny preset).
    picked = logits.reshape(B, C, -1).gather(2, lin.view(B, 1, n * 8).expand(B, C, n * 8)).view(B, C, n, 8)
    return (picked * fac[:, None].to(picked.dtype)).sum(-1), labels, weights


def supervised_logits(model: nn.Module, heads: list[Tensor],
                      batch: dict[str, Any]) -> tuple[list[Tensor], Tensor, Tensor | None]:
    """The logits of one or more heads (each [B, C_i, *grid at the model's output scale]), the target
    the SSC losses compare them with and the per-voxel weights of those losses (None: all 1): the 1:S
    target, or with ``model.cfg.supervise_full_grid`` (S > 1) the heads interpolated at the labelled
    voxels of the 1:1 target (one :func:`sample_full_grid` for all heads, so they see the same voxels),
    those voxels' labels and, with ``full_grid_occupied``, their importance weights."""
    scale = model.output_scale()
    cfg = model.cfg
    if not (getattr(cfg, "supervise_full_grid", False) and scale > 1):
        return list(heads), loss_target(batch, scale), None
    sizes = [int(h.shape[1]) for h in heads]
    sampled, target, weight = sample_full_grid(torch.cat(list(heads), dim=1) if len(heads) > 1 else heads[0],
                                               loss_target(batch, 1), max_points=cfg.full_grid_points,
                                               occupied_share=float(getattr(cfg, "full_grid_occupied", 0.0)))
    return list(sampled.split(sizes, dim=1)), target, weight


def empty_above_labelled(model: nn.Module, logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Cross-entropy towards class 0 (empty) of ``logits`` [B, C, X, Y, Z] on the z layers above the
    highest layer labelled in any target seen so far (``model.labelled_top``, updated from ``target``
    [B, X, Y, Z] at the same scale); 0 when there is no such layer."""
    labelled = (target != ignore_index).flatten(0, 2).any(0)  # [Z]
    if bool(labelled.any()):
        top = int(torch.nonzero(labelled).max())
        if top > int(model.labelled_top):
            model.labelled_top.fill_(top)
    z0 = int(model.labelled_top) + 1
    if z0 <= 0 or z0 >= logits.shape[-1]:
        return logits.sum() * 0.0
    above = logits[..., z0:]
    return F.cross_entropy(above, torch.zeros(above.shape[:1] + above.shape[2:], dtype=torch.long, device=above.device))


def empty_unlabelled(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Cross-entropy towards class 0 (empty) of ``logits`` [B, C, X, Y, Z] at the voxels ``target``
    [B, X, Y, Z] (same scale) leaves unlabelled, summed over them and divided by the number of voxels of
    the grid (so its weight means the same on any grid and any share of unlabelled voxels); 0 when every
    voxel is labelled."""
    unl = target == ignore_index
    if not bool(unl.any()):
        return logits.sum() * 0.0
    nll = -F.log_softmax(logits.float(), dim=1)[:, 0]  # [B, X, Y, Z]
    return (nll * unl).sum() / unl.numel()


def empty_prior_losses(model: nn.Module, cfg, logits: Tensor, batch: dict[str, Any], scale: int) -> dict[str, Tensor]:
    """The two "empty where nothing is labelled" terms of a model config (``empty_above_labelled``,
    ``empty_unlabelled``; zero weights are skipped, and with both off the batch is not read) on logits
    at 1:``scale`` against the batch's target at that scale. The unlabelled term skips the layers the
    first covers."""
    out: dict[str, Tensor] = {}
    if cfg.empty_above_labelled <= 0 and cfg.empty_unlabelled <= 0:
        return out
    target = loss_target(batch, scale)
    if cfg.empty_above_labelled > 0:
        out["empty_above"] = cfg.empty_above_labelled * empty_above_labelled(model, logits, target)
    if cfg.empty_unlabelled > 0:
        top = int(model.labelled_top) if cfg.empty_above_labelled > 0 else -1
        if top >= 0:
            logits, target = logits[..., : top + 1], target[..., : top + 1]
        out["empty_unlabelled"] = cfg.empty_unlabelled * empty_unlabelled(logits, target)
    return out


def ce_class_weights(loss_cfg, class_weights: Tensor | None) -> Tensor | None:
    """The cross-entropy's class weights under a loss config: None with ``class_weighting`` off (or no
    config: the published weights as they are), else ``class_weights ** class_weight_power``."""
    if class_weights is None or loss_cfg is None:
        return class_weights
    if not loss_cfg.class_weighting:
        return None
    power = loss_cfg.class_weight_power
    return class_weights if power == 1.0 else class_weights ** power


def ssc_losses(logits: Tensor, target: Tensor, loss_cfg, class_weights: Tensor | None,
               weight: Tensor | None = None) -> dict[str, Tensor]:
    """The standard SSC losses, weighted by the run's loss config (zero weights are skipped); ``weight``:
    per-voxel importance weights of a stratified draw (``supervised_logits``; None = 1)."""
    from occ_core.losses.ssc import ce_ssc_loss, geo_scal_loss, lovasz_softmax_loss, sem_scal_loss

    out: dict[str, Tensor] = {}
    if loss_cfg.ce > 0:
        out["ce"] = loss_cfg.ce * ce_ssc_loss(logits, target, ce_class_weights(loss_cfg, class_weights), weight=weight)
    if loss_cfg.sem_scal > 0:
        out["sem_scal"] = loss_cfg.sem_scal * sem_scal_loss(logits, target, weight=weight)
    if loss_cfg.geo_scal > 0:
        out["geo_scal"] = loss_cfg.geo_scal * geo_scal_loss(logits, target, weight=weight)
    if loss_cfg.lovasz > 0:
        out["lovasz"] = loss_cfg.lovasz * lovasz_softmax_loss(logits, target, weight=weight)
    return out


class ImageEncoder(nn.Module):
    """Backbone + FPN neck: images [B, V, 3, H, W] -> list of [B, V, C, H/s, W/s] for the selected strides
    (the V cameras share the weights)."""

    def __init__(self, cfg: BackboneConfig, channels: int):
        super().__init__()
        from occ_core.models.backbone import build_backbone
        from occ_core.models.neck import FPN

        self.backbone = build_backbone(cfg.name, cfg.weights or None, out_indices=tuple(cfg.out_indices),
                                       frozen_stages=cfg.frozen_stages)
        self.neck = FPN(self.backbone.out_channels, channels)
        self.strides = list(self.backbone.strides)

    def forward(self, images: Tensor) -> list[Tensor]:
        B, V = images.shape[:2]
        feats = self.neck(self.backbone(images.flatten(0, 1)))
        return [f.view(B, V, *f.shape[1:]) for f in feats]


def query_stride(cfg: CoreConfig, spec) -> int:
    """The stride of the query grid below the dataset grid (``lifting.grid`` checked when given)."""
    lc = cfg.lifting
    if lc.grid:
        try:
            return spec.grid.divisor(lc.grid)
        except ValueError as e:
            raise OccError(f"model.lifting.grid: {e}") from None
    if lc.stride < 1:
        raise OccError(f"model.lifting.stride must be at least 1 (got {lc.stride})")
    try:
        spec.grid.scaled(lc.stride)
    except ValueError as e:
        raise OccError(f"model.lifting.stride: {e}") from None
    return int(lc.stride)


class SSCCore(OccModel):
    """Baseline SSC model on the shared core (see module docstring).

    Args:
        cfg: the method's model config.
        spec: the dataset spec (grid, classes, cameras) of the data it trains on.
        loss: the run's loss config (weights, plug-in losses); None for inference only.
    """

    def __init__(self, cfg: CoreConfig, spec, loss=None):
        super().__init__()
        from occ_core.models.decoder3d import SSCHead, UNet3d

        self.cfg = cfg
        self.spec = spec
        self.loss_cfg = loss
        self.n_classes = n_classes = spec.n_classes
        self.stride = query_stride(cfg, spec)
        if cfg.loss_scale not in spec.scales:
            raise OccError(f"model.loss_scale must be one of the stored target scales "
                           f"{', '.join(map(str, spec.scales))} (got {cfg.loss_scale})")
        C = cfg.lifting.embed_dims
        self.encoder = ImageEncoder(cfg.backbone, C)
        self.lifting = self.build_lifting(cfg)
        self.decoder = UNet3d(C, channel_mults=tuple(cfg.decoder.channel_mults), norm=cfg.decoder.norm,
                              dilations=tuple(cfg.decoder.aspp_dilations), blocks=cfg.decoder.blocks,
                              full_res_blocks=cfg.decoder.full_res_blocks)
        up = int(cfg.decoder.head_upsample)
        qgrid = spec.grid_at(self.stride)
        if up > 1:
            self.head = SSCHead(C, n_classes, out_shape=tuple(g * up for g in qgrid), mode="deconv",
                                scale_factor=up, norm=cfg.decoder.norm)
        else:
            self.head = SSCHead(C, n_classes, out_shape=None, mode="trilinear", norm=cfg.decoder.norm)
        self.register_buffer("class_weights", torch.from_numpy(spec.classes.weights()), persistent=False)
        self.register_buffer("labelled_top", torch.tensor(-1, dtype=torch.int64))
        self.depth_volume = self.build_depth_volume(cfg)

    # -- pieces subclasses override -------------------------------------------------------------
    def lifting_kwargs(self, cfg: CoreConfig) -> dict[str, Any]:
        """Arguments of :meth:`VoxelQueryLifting.from_spec` from the config."""
        lc = cfg.lifting
        return dict(num_layers=lc.num_layers, num_heads=lc.num_heads, num_levels=len(cfg.backbone.out_indices),
                    num_points=lc.num_points, dropout=lc.dropout, proposal_dilate=lc.proposal_dilate,
                    per_voxel_embed=lc.per_voxel_embed, embed_unselected=lc.embed_unselected)

    def build_lifting(self, cfg: CoreConfig) -> nn.Module:
        from occ_core.models.lifting import VoxelQueryLifting

        return VoxelQueryLifting.from_spec(self.spec, self.stride, cfg.lifting.embed_dims, **self.lifting_kwargs(cfg))

    def build_depth_volume(self, cfg: CoreConfig) -> nn.Module | None:
        """The depth-map features of ``model.lifting.depth_volume`` (None when off)."""
        S = int(cfg.lifting.depth_volume)
        if S <= 0:
            if cfg.lifting.depth_paint != "none":
                raise OccError(f"model.lifting.depth_paint={cfg.lifting.depth_paint} paints the depth volume: it "
                               "needs model.lifting.depth_volume > 0 (or set model.lifting.depth_paint=none)")
            return None
        if self.stride % S:
            raise OccError(f"model.lifting.depth_volume must divide the query stride {self.stride} (got {S})")
        if cfg.lifting.depth_trunc <= 0:
            raise OccError(f"model.lifting.depth_trunc must be positive (got {cfg.lifting.depth_trunc})")
        from occ_core.models.depth_volume import DepthVolume

        return DepthVolume(self.spec.grid.scaled(S), self.stride // S, cfg.lifting.embed_dims, cfg.lifting.depth_trunc,
                           paint=cfg.lifting.depth_paint)

    def add_depth_volume(self, vol: Tensor, batch: dict[str, Any], feats: list[Tensor] | None = None) -> Tensor:
        """The lifted volume [B, C, X, Y, Z] plus the depth-map features (unchanged when they are off);
        ``feats``: the image features (finest first, each [B, V, C, h, w]) for ``depth_paint=features``."""
        return vol if self.depth_volume is None else vol + self.depth_volume(batch, feats)

    def volume(self, batch: dict[str, Any]) -> Tensor:
        """Images -> voxel features [B, C, X, Y, Z] before the 3D decoder."""
        feats = self.encoder(batch["images"])
        return self.add_depth_volume(self.lifting(feats, batch), batch, feats)

    # -- contract -------------------------------------------------------------------------------
    def output_shape(self, scale: int) -> tuple[int, int, int]:
        return self.spec.grid_at(scale)

    def output_scale(self) -> int:
        """Scale of the logits: the loss scale in training, 1 (the dataset grid) in eval mode."""
        return self.cfg.loss_scale if self.training else 1

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        vol = self.decoder(self.volume(batch))
        logits = self.head(vol)  # at the query-volume resolution (x head_upsample)
        shape = self.output_shape(self.output_scale())
        if tuple(logits.shape[2:]) != shape:
            logits = F.interpolate(logits, size=shape, mode="trilinear", align_corners=False)
        return {"logits": logits}

    def losses(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        from occ_core.losses.plugins import plugin_losses

        (logits,), target, weight = supervised_logits(self, [outputs["logits"]], batch)
        losses = ssc_losses(logits, target, self.loss_cfg, self.class_weights, weight)
        losses.update(empty_prior_losses(self, self.cfg, outputs["logits"], batch, self.output_scale()))
        losses.update(plugin_losses(self, outputs, batch))
        return losses


def apply_tiny(cfg, lifting_stride: int = 4):
    """Shared ``tiny`` preset: trains on 2 CPU cores in minutes on the synthetic data."""
    data = dataclasses.replace(cfg.data, image_scale=0.3, target_scales=[1, 2], flip_prob=0.5, color_jitter=0.2)
    optim = dataclasses.replace(cfg.optim, lr=3e-3, weight_decay=1e-4, epochs=40, milestones=[30], batch_size=1, grad_clip=5.0,
                                schedule="cosine", warmup_steps=50)
    core = cfg.model
    core = dataclasses.replace(
        core,
        backbone=dataclasses.replace(core.backbone, name="resnet18", out_indices=[0, 1, 2]),
        lifting=dataclasses.replace(core.lifting, stride=lifting_stride, grid=[], embed_dims=32, num_layers=1, num_heads=4,
                                    num_points=4, depth_volume=2, depth_paint="features"),
        decoder=dataclasses.replace(core.decoder, channel_mults=[2, 2], blocks=1, full_res_blocks=1, head_upsample=2),
        loss_scale=2,
        supervise_full_grid=True,
        full_grid_points=65536,
        # every occupied voxel of a synthetic frame (~47k of ~430k labelled) is supervised at every step, the
        # empty ones drawn for the rest with importance weights: +0.6 mIoU on average at 830 steps (seeds 1, 2;
        # docs/results.md "Drawing the occupied voxels first")
        full_grid_occupied=0.75,
        empty_above_labelled=1.0,
        empty_unlabelled=0.5,
    )
    # rarer classes weigh more in the cross-entropy: +1.7 / +0.8 and +0.9 / +0.1 val IoU / mIoU at 830 steps
    # on the seed-2 and seed-1 quickstart data (docs/results.md)
    loss = dataclasses.replace(cfg.loss, class_weight_power=4.0)
    return dataclasses.replace(cfg, data=data, optim=optim, loss=loss, model=core, val_every=5, log_every=10)


def apply_paper(cfg):
    """Shared ``paper`` preset: the published setting (VPOcc / Symphonies scale)."""
    data = dataclasses.replace(cfg.data, image_scale=1.0, target_scales=[1], flip_prob=0.5)
    optim = dataclasses.replace(cfg.optim, lr=2e-4, weight_decay=1e-4, epochs=30, milestones=[25], gamma=0.1,
                                batch_size=1)
    core = cfg.model
    core = dataclasses.replace(
        core,
        backbone=dataclasses.replace(core.backbone, name="resnet50", out_indices=[0, 1, 2]),
        lifting=dataclasses.replace(core.lifting, stride=2, grid=[], embed_dims=128, num_layers=3, num_heads=8,
                                    num_points=9),
        decoder=dataclasses.replace(core.decoder, channel_mults=[2, 4], blocks=1, full_res_blocks=1, head_upsample=2),
        loss_scale=1,
    )
    return dataclasses.replace(cfg, data=data, optim=optim, model=core, val_every=1)

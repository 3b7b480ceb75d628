"""``b2s``: binary-to-semantic occupancy (Noguchi & Yamamoto, 2025), on the shared core.

The prediction is decomposed into two modules that share the image encoder and the 2D -> 3D lifting
(``model.lifting_kind``: the ``baseline`` deformable cross-attention or VPOcc's VPCA + zoom branch):

* **binary occupancy module**: 3D UNet + a one-channel head -> occupancy logit ``z`` per voxel;
* **semantic module**: the voxel features concatenated with the occupancy it is given (the binary
  module's probability, or in ``autolabel`` mode the ground-truth binary occupancy, as occupied and
  known fractions per query voxel) -> 3D UNet + head over the 19 semantic classes -> ``p_sem``.

Final distribution (``outputs["logits"]``, log-probabilities, so softmax gives it back)::

    p(empty) = 1 - p_occ,   p(class c) = p_occ * p_sem(c)   (c = 1..19)

so the standard evaluator, ``occ eval --run`` and ``occ predict`` work unchanged. ``predict``
thresholds ``p_occ`` at ``model.occ_threshold`` and takes the most likely semantic class where occupied
(``model.decision=argmax`` takes the argmax of the combined distribution instead).

Modes (``model.mode``):

* ``online`` (default): image -> binary + semantics. Pre-train the binary module on binary
  occupancy with ``occ pretrain-binary`` (binary cross-entropy + geometry scene-class affinity on
  [empty, occupied]), then fine-tune with ``occ train --method b2s --init RUN`` on the labelled frames
  (``model.freeze_binary=true`` keeps the binary module fixed).
* ``autolabel``: offline auto-labelling. The binary occupancy is an input (``batch["binary"]``, or
  ``target > 0`` when the batch has no ``binary``; unknown voxels stay unknown); only semantics are
  predicted, so the predicted geometry is exactly the input's: empty where the input is empty.
  ``occ predict`` on such a run also writes a confidence grid and the unknown voxels (pseudo-labels).

Losses: binary ``bce`` and ``bin_geo_scal`` (online mode, where a binary target exists), semantic
``ce`` (class-weighted, on ``p_sem`` over the voxels whose target is a class 1..19) and ``sem_scal``
(on the combined distribution), weighted by ``loss.ce`` / ``loss.sem_scal`` and the model's
``binary_bce`` / ``binary_geo_scal``.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occ_core.models.core import CoreConfig, SSCCore, apply_paper, apply_tiny, ce_class_weights
from occ_core.models.methods.vpocc import VPConfig, VPOcc
from occ_core.ops.patch_conv import PatchConv3d

MODES = ("online", "autolabel")
LIFTINGS = ("baseline", "vpocc")
EPS = 1e-6


@dataclass
class ModelConfig(CoreConfig):
    """B2S: binary occupancy module + semantic module on the shared core."""

    mode: str = "online"
    """'online': the binary module predicts occupancy from the image; 'autolabel': the ground-truth binary
    occupancy is an input and only semantics are predicted (offline auto-labelling)."""
    lifting_kind: str = "baseline"
    """2D -> 3D lifting: 'baseline' (deformable cross-attention) or 'vpocc' (VPCA + VPZoomer branch + SVF;
    needs model.lifting.num_points=9)."""
    vp: VPConfig = field(default_factory=VPConfig)
    """VP modules (lifting_kind=vpocc only)."""
    freeze_binary: bool = False
    """Freeze the binary branch (image encoder, lifting, binary decoder and head) when fine-tuning."""
    detach_occupancy: bool = True
    """Feed the semantic module the binary probability without a gradient (it conditions on it)."""
    binary_bce: float = 1.0
    """Weight of the binary cross-entropy on occupied / empty (online mode)."""
    binary_geo_scal: float = 1.0
    """Weight of the geometry scene-class affinity loss on [empty, occupied] (online mode)."""
    decision: str = "threshold"
    """predict(): 'threshold' (occupied where p_occ >= occ_threshold, then the most likely class) or
    'argmax' (argmax of the combined distribution)."""
    occ_threshold: float = 0.5
    """Occupancy threshold of decision=threshold."""


def _tiny(cfg):
    cfg = apply_tiny(cfg)
    # autolabel takes the 1:1 binary occupancy as input, so training batches carry the 1:1 target too
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, target_scales=[1, 2]))


def _paper(cfg):
    return apply_paper(cfg)


PRESETS = {"tiny": _tiny, "paper": _paper}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def binary_of_target(target: Tensor) -> Tensor:
    """Semantic target (255 = ignore) -> binary (0 empty, 1 occupied, 255 unknown), same dtype."""
    out = (target > 0).to(target.dtype)
    return torch.where(target == 255, torch.full_like(target, 255), out)


def batch_binary(batch: dict[str, Any], scale: int) -> Tensor | None:
    """The batch's binary occupancy at 1:``scale`` (``binary``/``binary_1_S``, else from the target), or None."""
    key = "binary" if scale == 1 else f"binary_1_{scale}"
    if key in batch:
        return batch[key]
    tkey = "target" if scale == 1 else f"target_1_{scale}"
    if tkey in batch:
        return binary_of_target(batch[tkey])
    return None


def log_sigmoid(x: Tensor) -> Tensor:
    """``F.logsigmoid`` as ``min(x, 0) - log1p(exp(-|x|))``, which stays finite where it is exported: the
    TorchScript ONNX exporter writes ``logsigmoid`` as ``Log(Sigmoid(x))``, and onnxruntime's Sigmoid
    loses the tail (about -16.2 for -17, 0 and so -inf from -18 on), so a confident voxel's exported
    log-probability was -inf."""
    return torch.minimum(x, torch.zeros_like(x)) - torch.log1p(torch.exp(-x.abs()))


def combine(log_occ: Tensor, log_free: Tensor, sem_logits: Tensor) -> Tensor:
    """log p_occ, log(1 - p_occ) [B, 1, ...] and semantic logits [B, C-1, ...] -> log-probabilities [B, C, ...]."""
    return torch.cat([log_free, log_occ + F.log_softmax(sem_logits.float(), dim=1)], dim=1)


def binary_losses(occ_logits: Tensor, binary: Tensor, w_bce: float = 1.0, w_geo: float = 1.0,
                  weight: Tensor | None = None) -> dict[str, Tensor]:
    """BCE and geometry scene-class affinity of occupancy logits [B, 1, ...] against binary [B, ...] (255
    ignored); ``weight`` [B, ...]: per-voxel importance weights of a stratified draw (None = 1)."""
    from occ_core.losses.ssc import _geo_scal_from_empty

    z = occ_logits[:, 0].float()
    out: dict[str, Tensor] = {}
    valid = binary != 255
    if w_bce > 0:
        if not bool(valid.any()):
            out["bce"] = z.sum() * 0.0
        elif weight is None:
            out["bce"] = w_bce * F.binary_cross_entropy_with_logits(z[valid], binary[valid].to(z.dtype))
        else:
            w = weight[valid].to(z.dtype)
            bce = F.binary_cross_entropy_with_logits(z[valid], binary[valid].to(z.dtype), reduction="none")
            out["bce"] = w_bce * (bce * w).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)
    if w_geo > 0:
        out["bin_geo_scal"] = w_geo * _geo_scal_from_empty(torch.sigmoid(-z), binary, 255, 0, weight)
    return out


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


class _B2SMixin:
    """The B2S modules on top of a shared-core class (SSCCore or VPOcc)."""

    cfg: ModelConfig

    def _build_b2s(self) -> None:
        from occ_core.models.decoder3d import SSCHead, UNet3d

        cfg = self.cfg
        C = cfg.lifting.embed_dims
        del self.decoder, self.head  # replaced by the two modules below

        def unet() -> nn.Module:
            return UNet3d(C, channel_mults=tuple(cfg.decoder.channel_mults), norm=cfg.decoder.norm,
                          dilations=tuple(cfg.decoder.aspp_dilations), blocks=cfg.decoder.blocks,
                          full_res_blocks=cfg.decoder.full_res_blocks)

        if cfg.mode == "online":
            self.binary_decoder = unet()
            self.binary_head = SSCHead(C, 1, out_shape=None, mode="trilinear", norm=cfg.decoder.norm)
        self.sem_fuse = nn.Sequential(PatchConv3d(C + 2, C, 1, bias=False), nn.BatchNorm3d(C) if cfg.decoder.norm == "bn"
                                      else nn.GroupNorm(next(g for g in (8, 4, 2, 1) if C % g == 0), C), nn.ReLU(True))
        self.sem_decoder = unet()
        self.sem_head = SSCHead(C, self.n_classes - 1, out_shape=None, mode="trilinear", norm=cfg.decoder.norm)
        if cfg.freeze_binary:
            for m in self.binary_modules():
                for p in m.parameters():
                    p.requires_grad_(False)

    def binary_modules(self) -> list[nn.Module]:
        """The binary branch: image encoder, lifting(s), binary decoder and head."""
        names = ["encoder", "lifting", "zoom_lifting", "svf", "binary_decoder", "binary_head"]
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.cfg.freeze_binary:
            for m in self.binary_modules():
                m.eval()  # frozen: BatchNorm statistics stay as pre-trained
        return self

    # -- pieces ----------------------------------------------------------------------------------
    def _shape(self) -> tuple[int, int, int]:
        return self.output_shape(self.output_scale())

    def _up(self, x: Tensor, shape: tuple[int, int, int]) -> Tensor:
        return x if tuple(x.shape[2:]) == shape else F.interpolate(x, size=shape, mode="trilinear", align_corners=False)

    def forward_binary(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Binary module only: ``{"occ_logits": [B, 1, *grid at the loss scale], "scale"}`` (pre-training)."""
        if self.cfg.mode != "online":
            raise ValueError("the binary module exists in model.mode=online only")
        z = self.binary_head(self.binary_decoder(self.volume(batch)))
        return {"occ_logits": self._up(z, self._shape()), "occ_logits_grid": z}

    def _input_occupancy(self, batch: dict[str, Any], grid: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """autolabel: (occupied fraction, known fraction) [B, 1, *grid] of the input binary occupancy."""
        b = batch_binary(batch, 1)
        if b is None:
            raise ValueError("model.mode=autolabel needs the binary occupancy in the batch ('binary', or a 'target'): "
                             "set data.binary_targets=true")
        b = b.float()[:, None]
        known = (b != 255).float()
        occ = (b == 1).float()
        k = tuple(s // g for s, g in zip(b.shape[2:], grid))
        return F.avg_pool3d(occ, k, k), F.avg_pool3d(known, k, k)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        vol = self.volume(batch)  # [B, C, X, Y, Z] at the query grid
        grid = tuple(vol.shape[2:])
        scale = self.output_scale()
        shape = self.output_shape(scale)
        out: dict[str, Tensor] = {}
        if self.cfg.mode == "online":
            z = self.binary_head(self.binary_decoder(vol))
            p = torch.sigmoid(z.detach() if self.cfg.detach_occupancy else z)
            cond = [p, torch.ones_like(p)]
            zf = self._up(z, shape).float()
            out["occ_logits"] = zf
            log_occ, log_free = log_sigmoid(zf), log_sigmoid(-zf)
        else:
            occ, known = self._input_occupancy(batch, grid)
            cond = [occ, known]
            b = batch_binary(batch, scale)
            if b is None:
                raise ValueError(f"model.mode=autolabel: the batch has no binary occupancy at 1:{scale}")
            p_occ = torch.where(b == 1, 1.0 - EPS, torch.where(b == 0, EPS, 0.5)).float()[:, None]
            log_occ, log_free = torch.log(p_occ), torch.log1p(-p_occ)
            out["input_binary"] = b
        s = self.sem_head(self.sem_decoder(self.sem_fuse(torch.cat([vol] + [c.to(vol.dtype) for c in cond], dim=1))))
        s = self._up(s, shape)
        out["sem_logits"] = s
        out["logits"] = combine(log_occ, log_free, s)
        return out

    def losses(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Binary losses (online mode) on the binary occupancy, class-weighted CE of the semantic module on the
        occupied voxels and sem_scal on the combined distribution; with ``model.supervise_full_grid`` (loss
        scale > 1) all of them at the labelled voxels of the 1:1 targets, the 1:S logits interpolated there as
        the trilinear upsampling of inference gives them; ``model.empty_above_labelled`` and
        ``model.empty_unlabelled`` as the shared core (online mode only: in autolabel mode the geometry is the input)."""
        from occ_core.losses.plugins import plugin_losses
        from occ_core.models.core import empty_prior_losses, loss_target

        scale = self.output_scale()
        full = bool(self.cfg.supervise_full_grid) and scale > 1
        losses: dict[str, Tensor] = {}
        if "occ_logits" in outputs:
            b = batch_binary(batch, 1 if full else scale)
            if b is not None:
                z = outputs["occ_logits"]
                w = None
                if full:
                    z, b, w = self._full_grid(z, b)
                losses.update(binary_losses(z, b, self.cfg.binary_bce, self.cfg.binary_geo_scal, w))
        if "sem_logits" in outputs:
            target = loss_target(batch, 1 if full else scale)
            sem, logits = outputs["sem_logits"], outputs["logits"]
            w = None
            if full:
                parts = [sem] + ([outputs["occ_logits"]] if "occ_logits" in outputs else [])
                sampled, target, w = self._full_grid(torch.cat(parts, dim=1), target)
                sem = sampled[:, :sem.shape[1]]
                if "occ_logits" in outputs:
                    zf = sampled[:, sem.shape[1]:].float()
                    log_occ, log_free = log_sigmoid(zf), log_sigmoid(-zf)
                else:  # autolabel: the input occupancy at these voxels is the target's
                    p_occ = torch.where(target == 0, EPS, torch.where(target == 255, 0.5, 1.0 - EPS)).float()[:, None]
                    log_occ, log_free = torch.log(p_occ), torch.log1p(-p_occ)
                logits = combine(log_occ, log_free, sem)
            losses.update(self._semantic_losses(sem, logits, target, w))
        if "occ_logits" in outputs:  # autolabel: the geometry is the input
            losses.update(empty_prior_losses(self, self.cfg, outputs["logits"], batch, scale))
        losses.update(plugin_losses(self, outputs, batch))
        return losses

    def _full_grid(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``sample_full_grid`` of x at target's labelled voxels under the run's draw: (logits, labels,
        importance weights or None)."""
        from occ_core.models.core import sample_full_grid

        return sample_full_grid(x, target, max_points=self.cfg.full_grid_points,
                                occupied_share=self.cfg.full_grid_occupied)

    def _semantic_losses(self, sem: Tensor, logits: Tensor, target: Tensor,
                         weight: Tensor | None = None) -> dict[str, Tensor]:
        """CE of the semantic logits [B, C-1, ...] on the occupied voxels of ``target`` and sem_scal of the
        combined log-probabilities [B, C, ...] (any trailing shape: a volume or sampled voxels); ``weight``:
        per-voxel importance weights (None = 1)."""
        from occ_core.losses.ssc import ce_ssc_loss, sem_scal_loss

        lc = self.loss_cfg
        w_ce = lc.ce if lc is not None else 1.0
        w_sem = lc.sem_scal if lc is not None else 1.0
        out: dict[str, Tensor] = {}
        if w_ce > 0:
            s = sem.float()
            t = torch.where((target > 0) & (target != 255), target - 1, torch.full_like(target, 255)).long()
            weights = ce_class_weights(lc, self.class_weights)
            weights = None if weights is None else weights[1:]
            out["ce"] = w_ce * ce_ssc_loss(s, t, weights, weight=weight)  # 0 when no voxel is occupied
        if w_sem > 0:
            out["sem_scal"] = w_sem * sem_scal_loss(logits, target, weight=weight)
        return out

    def binary_losses(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Pre-training losses of :meth:`forward_binary`'s outputs against the batch's binary occupancy."""
        scale = self.output_scale()
        full = bool(self.cfg.supervise_full_grid) and scale > 1
        b = batch_binary(batch, 1 if full else scale)
        if b is None:
            raise KeyError("batch has no binary occupancy ('binary' / 'binary_1_S' or a target)")
        z, w = outputs["occ_logits"], None
        if full:
            z, b, w = self._full_grid(z, b)
        return binary_losses(z, b, self.cfg.binary_bce, self.cfg.binary_geo_scal, w)

    # -- prediction ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_with_confidence(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """(class indices [B, X, Y, Z] int64, confidence [B, X, Y, Z] float32 in [0, 1]): the probability of
        the predicted class under the combined distribution (autolabel: 0 on unknown input voxels)."""
        out = self.forward(batch)
        logp = out["logits"]
        if self.cfg.decision == "argmax":
            conf, pred = logp.max(dim=1)
            conf = conf.exp()
        else:
            p_occ = torch.exp(logp[:, 1:]).sum(1)  # = p_occ (the semantic part sums to one)
            sem_conf, sem = torch.log_softmax(out["sem_logits"].float(), dim=1).max(dim=1)
            occupied = p_occ >= self.cfg.occ_threshold
            pred = torch.where(occupied, sem + 1, torch.zeros_like(sem))
            conf = torch.where(occupied, p_occ * sem_conf.exp(), 1.0 - p_occ)
        if "input_binary" in out:
            b = out["input_binary"]
            pred = torch.where(b == 1, pred, torch.zeros_like(pred))
            conf = torch.where(b == 255, torch.zeros_like(conf), conf)
        return pred, conf.float()

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> Tensor:
        return self.predict_with_confidence(batch)[0]


class B2S(_B2SMixin, SSCCore):
    """B2S with the baseline lifting."""

    def __init__(self, cfg: ModelConfig, spec, loss=None):
        super().__init__(cfg, spec, loss)
        self._build_b2s()


class B2SVP(_B2SMixin, VPOcc):
    """B2S with VPOcc's lifting (VPCA, VPZoomer branch, SVF)."""

    def __init__(self, cfg: ModelConfig, spec, loss=None):
        super().__init__(cfg, spec, loss)
        self._build_b2s()


def build_model(m: ModelConfig, spec, loss=None) -> SSCCore:
    from occ_core.errors import OccError

    if m.mode not in MODES:
        raise OccError(f"model.mode must be one of {', '.join(MODES)} (got {m.mode!r})")
    if m.lifting_kind not in LIFTINGS:
        raise OccError(f"model.lifting_kind must be one of {', '.join(LIFTINGS)} (got {m.lifting_kind!r})")
    if m.decision not in ("threshold", "argmax"):
        raise OccError(f"model.decision must be 'threshold' or 'argmax' (got {m.decision!r})")
    if m.lifting_kind == "vpocc":
        if m.lifting.num_points != 9:
            raise OccError(f"model.lifting_kind=vpocc samples 9 points per reference point: add --set model.lifting.num_points=9 "
                           f"(got {m.lifting.num_points})")
        return B2SVP(m, spec, loss)
    return B2S(m, spec, loss)


__all__ = ["ModelConfig", "PRESETS", "build_model", "B2S", "B2SVP", "combine", "binary_losses", "binary_of_target"]

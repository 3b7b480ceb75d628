"""The training config: method-independent parts plus the method's own ``ModelConfig``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from occ_core import __version__
from occ_core.config import apply_overrides, from_dict, load_yaml, merge, parse_override, to_yaml
from occ_core.data.loading.dataset import DataConfig
from occ_core.errors import FormatError, OccError
from occ_core.registry import get_method


@dataclass
class OptimConfig:
    """Optimiser and schedule."""

    lr: float = 2e-4
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    epochs: int = 30
    """Number of epochs."""
    max_steps: int = 0
    """Stop after this many optimiser steps, inside the last epoch if need be (0 = off: optim.epochs whole
    epochs). The 'cosine' schedule then decays over min(max_steps, optim.epochs x steps per epoch) steps:
    how ``occ quickstart`` fills its time budget with more than whole epochs."""
    milestones: list[int] = field(default_factory=lambda: [25])
    """Epochs after which the learning rate is multiplied by gamma."""
    gamma: float = 0.1
    """Learning-rate factor at each milestone (schedule 'step')."""
    schedule: str = "step"
    """Learning-rate schedule: 'step' (x gamma after each milestone epoch, as the papers) or 'cosine'
    (linear warm-up over warmup_steps, then cosine decay to min_lr_ratio x lr at the last step of
    optim.epochs; stepped every optimiser step)."""
    warmup_steps: int = 0
    """Linear warm-up steps of the 'cosine' schedule."""
    min_lr_ratio: float = 0.01
    """Final learning rate of the 'cosine' schedule, as a fraction of lr."""
    batch_size: int = 1
    """Frames per batch and process."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 = off)."""
    amp: bool = True
    """Mixed precision (bfloat16 autocast) in training on CUDA; on CPU only with cpu_amp."""
    cpu_amp: bool = False
    """With amp: bfloat16 autocast in training on CPU too (validation stays float32). It pays off only on
    CPUs that compute bfloat16 natively (AVX-512 BF16 or AMX; elsewhere it is slower): a tiny step 15-25 %
    faster on a 2-core Zen 4, for a slightly lower score at equal steps (docs/training.md), so off in
    every preset."""


@dataclass
class RenderLossConfig:
    """GaussRender plug-in loss (docs/rendering.md): the predicted and the ground-truth grid (at the
    loss scale) become Gaussians, are rendered from the same views, and the renders are compared."""

    enabled: bool = False
    """Add the rendering loss to every method's losses."""
    weight: float = 10.0
    """Overall weight of the rendering loss (10, as published)."""
    sem_weight: float = 1.0
    """Relative weight of the semantic render L1 ('render_sem')."""
    depth_weight: float = 1.0
    """Relative weight of the normalised depth render L1 ('render_depth')."""
    views: list[str] = field(default_factory=lambda: ["sensor", "bev"])
    """Views: sensor (the dataset camera from K/Tr), bev (orthographic top view), elevated (behind and
    above the car), random (random_views random cameras around the grid, new ones every step)."""
    random_views: int = 1
    """Number of random cameras when 'random' is in views."""
    image_scale: float = 0.25
    """Sensor-view render size relative to the benchmark crop (0.25: 305x92 for KITTI's 1220x370)."""
    bev_resolution: float = 0.8
    """Bird's-eye view metres per pixel (0.8: 64x64 over the 51.2 m grid)."""
    free_view_size: list[int] = field(default_factory=lambda: [160, 90])
    """Width, height of the elevated and random views."""
    camera_depth_norm: float = 50.0
    """Camera-view depths (m) are divided by this before the L1 (published: 50 m)."""
    bev_depth_norm: float = 100.0
    """Bird's-eye-view depths (m) are divided by this before the L1 (published: 100 m)."""
    scale_factor: float = 0.5
    """Standard deviation of each voxel's Gaussian in voxel sizes."""
    keep: float = 0.05
    """Predicted voxels become Gaussians when their occupancy is >= keep or the target says occupied."""
    backend: str = "auto"
    """Rasterizer backend: auto (gsplat on CUDA when installed, else torch), torch or gsplat."""


@dataclass
class LossConfig:
    """Loss weights shared by the methods."""

    ce: float = 1.0
    """Weight of the class-frequency-weighted cross-entropy."""
    sem_scal: float = 1.0
    """Weight of the semantic scene-class affinity loss (MonoScene)."""
    geo_scal: float = 1.0
    """Weight of the geometry scene-class affinity loss (MonoScene)."""
    lovasz: float = 0.0
    """Weight of the Lovász-softmax loss (an IoU surrogate; 0 = off; occ_core.losses.ssc.lovasz_softmax_loss)."""
    class_weighting: bool = True
    """Weight the cross-entropy by 1 / log(class frequency + 0.001)."""
    class_weight_power: float = 1.0
    """Raise those class weights to this power before use (1 = MonoScene's weights, as published). They
    span less than 2x from the commonest class (empty) to the rarest on SemanticKITTI's frequencies, so
    larger powers give rare classes more say in the cross-entropy (4: about 13x)."""
    render: RenderLossConfig = field(default_factory=RenderLossConfig)
    """GaussRender rendering loss (off by default)."""


@dataclass
class TrainConfig:
    """Everything a run needs; saved as config.yaml in the run folder."""

    method: str = "baseline"
    """Registered method name."""
    preset: str = "tiny"
    """Preset the config started from."""
    seed: int = 0
    """Random seed (model init, data order, augmentation)."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    n_classes: int = 0
    """Number of classes including empty; 0 = taken from the prepared data when training starts."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data loading."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights."""
    model: Any = None
    """The method's ModelConfig."""
    val_every: int = 1
    """Validate every N epochs (0 = only at the end)."""
    log_every: int = 10
    """Log training losses every N steps."""
    max_minutes: float = 0.0
    """Stop training after this many minutes (0 = no limit); a final checkpoint and validation still run."""
    fit_to_budget: bool = False
    """With max_minutes > 0 and the 'cosine' schedule: at the end of the warm-up (step 10 at the earliest) and
    of every epoch, re-fit the run's length (optim.max_steps, and optim.epochs where it needs more) to the time
    left, at the step and validation times measured in this run, so the schedule decays to its floor as the
    budget runs out instead of being cut off by it. Each new length is written to config.yaml (a resume goes on
    from it). ``occ quickstart`` turns it on."""


def default_config(method: str, preset: str = "tiny") -> TrainConfig:
    """The config of ``method`` under ``preset``."""
    mod = get_method(method).load()
    cfg = TrainConfig(method=method, preset=preset, model=mod.ModelConfig())
    if preset not in mod.PRESETS:
        raise OccError(f"method '{method}' has no preset '{preset}' (available: {', '.join(mod.PRESETS)})")
    return mod.PRESETS[preset](cfg)


def config_from_data(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Rebuild a TrainConfig from plain data (config.yaml); the method decides the model config class."""
    data = migrate_config(dict(data))
    method = data.get("method")
    if not method:
        raise OccError(f"{where}: no 'method' key")
    mod = get_method(str(method)).load()
    model = from_dict(mod.ModelConfig, data.pop("model", {}) or {}, f"{where}.model")
    cfg = from_dict(TrainConfig, {k: v for k, v in data.items()}, where)
    cfg = dataclasses.replace(cfg, model=model)
    validate_config(cfg, where)
    return cfg


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _fraction(v: Any) -> bool:
    return 0 <= v <= 1


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _backbone_names() -> list[str]:
    from occ_core.models.backbone import RESNET_SPECS

    return sorted(RESNET_SPECS)


CHECKS: list[tuple[str, Callable[[Any], bool], str | Callable[[], str]]] = [
    ("n_classes", _non_negative, "must be >= 0 (0: taken from the prepared data)"),
    ("val_every", _non_negative, "must be >= 0 (0: only at the end)"),
    ("log_every", _positive, "must be a positive integer"),
    ("max_minutes", _non_negative, "must be >= 0 (0: no limit)"),
    ("optim.lr", _positive, "must be > 0"),
    ("optim.weight_decay", _non_negative, "must be >= 0"),
    ("optim.epochs", _positive, "must be a positive integer"),
    ("optim.milestones", lambda v: all(m >= 0 for m in v), "must be epochs >= 0"),
    ("data.color_jitter", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("optim.schedule", lambda v: v in ("step", "cosine"), "must be 'step' or 'cosine'"),
    ("optim.warmup_steps", lambda v: v >= 0, "must be >= 0"),
    ("optim.max_steps", _non_negative, "must be >= 0 (0: optim.epochs whole epochs)"),
    ("optim.min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("optim.gamma", _positive, "must be > 0"),
    ("optim.batch_size", _positive, "must be a positive integer"),
    ("optim.grad_clip", _non_negative, "must be >= 0 (0: off)"),
    ("data.image_scale", _positive, "must be > 0"),
    ("data.target_scales", lambda v: all(s in (1, 2, 4, 8) for s in v), "must be scales among 1, 2, 4, 8"),
    ("data.flip_prob", _fraction, "must be in [0, 1]"),
    ("data.max_frames", _non_negative, "must be >= 0 (0: all)"),
    ("data.num_workers", _non_negative, "must be >= 0"),
    ("data.label_fraction", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("loss.ce", _non_negative, "must be >= 0"),
    ("loss.sem_scal", _non_negative, "must be >= 0"),
    ("loss.geo_scal", _non_negative, "must be >= 0"),
    ("loss.class_weight_power", _positive, "must be > 0"),
    ("loss.render.weight", _non_negative, "must be >= 0"),
    ("loss.render.image_scale", _positive, "must be > 0"),
    ("loss.render.bev_resolution", _positive, "must be > 0"),
    ("loss.render.random_views", _non_negative, "must be >= 0"),
    ("loss.render.backend", lambda v: v in ("auto", "torch", "gsplat"), "must be auto, torch or gsplat"),
    ("model.backbone.name", lambda v: v in _backbone_names(),
     lambda: f"must be one of {', '.join(_backbone_names())}"),
    ("model.loss_scale", lambda v: v in (1, 2, 4, 8),
     "must be a stored target scale: 1, 2, 4 or 8 (the data's scales are checked when the model is built)"),
    ("model.lifting.stride", _positive, "must be a positive integer"),
    ("model.lifting.embed_dims", _positive, "must be a positive integer"),
    ("model.lifting.num_layers", _non_negative, "must be >= 0"),
    ("model.lifting.num_heads", _positive, "must be a positive integer"),
    ("model.lifting.num_points", _positive, "must be a positive integer"),
    # the methods' own fields (issue 13: a value the model cannot use is refused here, before any run folder)
    ("model.lifting.proposal_dilate", _non_negative, "must be >= 0"),
    ("model.lifting.depth_paint", lambda v: v in ("none", "rgb", "features"), "must be none, rgb or features"),
    ("model.lifting.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("model.decoder.channel_mults", lambda v: len(v) == 2 and all(m >= 1 for m in v),
     "must be two positive integers (the widths of the two coarser UNet levels)"),
    ("model.decoder.blocks", _non_negative, "must be >= 0"),
    ("model.decoder.full_res_blocks", _non_negative, "must be >= 0"),
    ("model.decoder.aspp_dilations", lambda v: len(v) >= 1 and all(d >= 1 for d in v),
     "must be one or more dilations >= 1"),
    ("model.decoder.head_upsample", _positive, "must be a positive integer (1 = none)"),
    ("model.full_grid_points", _non_negative, "must be >= 0 (0: all)"),
    ("model.full_grid_occupied", _fraction, "must be in [0, 1] (0: a uniform draw)"),
    ("model.empty_above_labelled", _non_negative, "must be >= 0 (0: off)"),
    ("model.empty_unlabelled", _non_negative, "must be >= 0 (0: off)"),
    ("model.lidar.base_channels", _positive, "must be a positive integer"),
    ("model.lidar.blocks", _non_negative, "must be >= 0"),
    ("model.lidar.export_points", _positive, "must be a positive integer"),
    ("model.fusion.image_radii", lambda v: len(v) >= 1 and all(r > 0 for r in v), "must be one or more radii > 0"),
    ("model.fusion.voxel_radii", lambda v: len(v) >= 1 and all(r >= 1 for r in v), "must be one or more radii >= 1"),
    ("model.fusion.num_points", _positive, "must be a positive integer"),
    ("model.fusion.num_heads", _non_negative, "must be >= 0 (0: model.lifting.num_heads)"),
    ("model.render.photometric", _non_negative, "must be >= 0"),
    ("model.render.ssim_alpha", _fraction, "must be in [0, 1]"),
    ("model.render.depth", _non_negative, "must be >= 0"),
    ("model.render.depth_norm", _positive, "must be > 0"),
    ("model.render.semantic", _non_negative, "must be >= 0"),
    ("model.render.max_offset", _non_negative, "must be >= 0"),
    ("model.render.scale_factor", _positive, "must be > 0"),
    ("model.render.min_opacity", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("model.render.image_scale", _positive, "must be > 0"),
    ("model.render.max_gaussians", _positive, "must be a positive integer"),
    ("model.render.backend", lambda v: v in ("auto", "torch", "gsplat"), "must be auto, torch or gsplat"),
    ("model.lidar.backend", lambda v: v in ("auto", "spconv", "torch"), "must be auto, spconv or torch"),
    ("model.fusion.temperature", _positive, "must be > 0"),
    ("model.stage", lambda v: v in (1, 2), "must be 1 or 2"),
    ("model.decoder.norm", lambda v: v in ("bn", "gn", "none"), "must be bn, gn or none"),
    ("device", lambda v: v in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda"),
    ("data.lidar.free_space", lambda v: v in ("rays", "all"), "must be rays or all"),
    ("data.lidar.z_offset", lambda v: v == "auto" or _is_number(v), "must be auto or a number of metres"),
    ("data.lidar.before", _non_negative, "must be >= 0"),
    ("data.lidar.after", _non_negative, "must be >= 0"),
    ("data.lidar.max_scans", _positive, "must be a positive integer"),
    ("data.lidar.ray_stride", _positive, "must be a positive integer"),
    ("model.extractors.graphics_width", _positive, "must be a positive integer"),
    ("model.extractors.seg_embed_dims", _non_negative, "must be >= 0"),
    ("model.extractors.depth_bins", _positive, "must be a positive integer"),
    ("model.extractors.depth_max", _non_negative, "must be >= 0 (0: the diagonal of the dataset grid)"),
    ("model.extractors.depth_weight", _non_negative, "must be >= 0"),
    ("model.sam.weight", _non_negative, "must be >= 0 (0: off)"),
    ("model.sam.dilations", lambda v: len(v) >= 1 and all(d >= 1 for d in v), "must be one or more distances >= 1"),
    ("model.stage1_epochs", _non_negative, "must be >= 0 (0: optim.epochs)"),
    ("model.stage2_epochs", _non_negative, "must be >= 0 (0: optim.epochs)"),
    ("model.stage1_minutes", _non_negative, "must be >= 0 (0: max_minutes)"),
    ("model.stage2_minutes", _non_negative, "must be >= 0 (0: max_minutes)"),
    ("model.stage1_aux", _non_negative, "must be >= 0"),
    ("model.proposal_threshold", _fraction, "must be in [0, 1]"),
    ("model.max_queries", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("model.self_layers", _non_negative, "must be >= 0"),
    ("model.self_points", _positive, "must be a positive integer"),
    ("model.vp.alpha", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("model.vp.beta", _positive, "must be > 0"),
    ("model.binary_bce", _non_negative, "must be >= 0"),
    ("model.binary_geo_scal", _non_negative, "must be >= 0"),
    ("model.occ_threshold", _fraction, "must be in [0, 1]"),
]
"""Range checks of config values (key, test, what the value must be), run by :func:`build_config` and
:func:`config_from_data`; keys a method's config does not have are skipped. Types are checked earlier,
when the value is read (:mod:`occ_core.config`)."""

_MISSING = object()


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        if not dataclasses.is_dataclass(cfg) or not hasattr(cfg, part):
            return _MISSING
        cfg = getattr(cfg, part)
    return cfg


def validate_config(cfg: TrainConfig, where: str = "config") -> TrainConfig:
    """Refuse out-of-range values up front: OccError naming the key (``optim.batch_size=0: must be ...``)."""
    for key, ok, must in CHECKS:
        value = _get(cfg, key)
        if value is _MISSING or value is None:
            continue
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            text = must() if callable(must) else must
            prefix = "" if where in ("", "config") else f"{where}: "
            raise OccError(f"{prefix}{key}={value!r}: {text}")
    model = cfg.model
    prefix = "" if where in ("", "config") else f"{where}: "
    if dataclasses.is_dataclass(getattr(model, "lidar", None)) and not getattr(cfg.data, "load_points", True):
        raise OccError(f"{prefix}data.load_points=false: this method reads the LiDAR scan (model.lidar); "
                       "set data.load_points=true")
    if _get(cfg, "model.render.sequential") is True and not getattr(cfg.data, "neighbours", [None]):
        raise OccError(f"{prefix}model.render.sequential=true needs the neighbouring frames: set data.neighbours "
                       "(e.g. [-1, 1])")
    if getattr(model, "supervise_full_grid", False) and getattr(model, "loss_scale", 1) > 1 and 1 not in cfg.data.target_scales:
        prefix = "" if where in ("", "config") else f"{where}: "
        raise OccError(f"{prefix}model.supervise_full_grid=true needs 1 in data.target_scales "
                       f"(got {list(cfg.data.target_scales)}); add it or set model.supervise_full_grid=false")
    return cfg


REMOVED_KEYS = {("data", "projection_scales"): "voxel projections are computed on the device from the cameras"}
"""Keys of older config.yaml files that are dropped on reading (what replaced them)."""


def migrate_config(data: dict[str, Any]) -> dict[str, Any]:
    """Plain config data of an older occ made current: ``occ_version`` and removed keys dropped."""
    data.pop("occ_version", None)
    for (section, key) in REMOVED_KEYS:
        sub = data.get(section)
        if isinstance(sub, dict) and key in sub:
            data[section] = {k: v for k, v in sub.items() if k != key}
    return data


def build_config(method: str, preset: str = "tiny", config_file: str | Path | None = None,
                 overrides: list[str] | None = None) -> TrainConfig:
    """Preset, then the YAML file (partial configs allowed), then ``--set`` overrides."""
    cfg = default_config(method, preset)
    if config_file is not None:
        data = load_yaml(config_file)
        data.pop("occ_version", None)
        if data.get("method", method) != method:
            raise FormatError(f"config is for method '{data['method']}', not '{method}'", config_file)
        data.pop("method", None)
        model = data.pop("model", None)
        try:
            cfg = merge(cfg, data, "config")
            if model:
                cfg = dataclasses.replace(cfg, model=merge(cfg.model, model, "config.model"))
        except OccError as e:
            raise FormatError(str(e), config_file) from None
    for text in overrides or []:
        path, _ = parse_override(text)  # checks key=value before anything else
        if path[0] == "model":
            cfg = dataclasses.replace(cfg, model=apply_overrides(cfg.model, [text], prefix="model."))
        else:
            cfg = apply_overrides(cfg, [text])
    return validate_config(cfg)


def save_config(cfg: TrainConfig, path: Path) -> None:
    from occ_core.utils.atomic import write_text

    write_text(path, to_yaml(cfg, {"occ_version": __version__}))

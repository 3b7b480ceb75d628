"""Binary pre-training of B2S (``occ pretrain-binary``): the binary occupancy module alone.

Every training frame with binary occupancy is used: labelled frames give ``target > 0`` (ignored
voxels stay ignored), frames with no target give the LiDAR scans accumulated along the poses
(:mod:`occ_core.data.loading.targets`). The loss is the binary cross-entropy plus the geometry scene-class
affinity loss on [empty, occupied]; the semantic module is not run.

The run folder is a normal run folder (``config.yaml``, ``checkpoints/{last,best}.safetensors``,
``metrics.jsonl``, ``train.log``, ``tb/``, ``final_metrics.json``) plus ``label_split.json``: which
training frames keep semantic labels under ``data.label_fraction`` (the frames a later
``occ train --method b2s --init RUN --set data.label_fraction=F`` fine-tunes on) and which are
binary-only. Validation (when the validation split has frames with binary occupancy) reports the
geometry IoU, precision and recall of ``p_occ >= 0.5`` (:class:`occ_core.engine.evaluate.BinaryIoUEvaluator`);
the best checkpoint has the best IoU.

Pre-training is a stage (:data:`BINARY_PRETRAIN_STAGE`) of the one training engine,
:func:`occ_core.engine.trainer.train`, so it resumes (``occ pretrain-binary --resume RUN``), runs under
``torchrun``, uses bfloat16 autocast on CUDA and the same time-budget and best-checkpoint rules as
``occ train``. This module only defines the stage and its B2S helpers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from occ_core.engine.config import TrainConfig
from occ_core.engine.evaluate import BinaryIoUEvaluator
from occ_core.engine.trainer import Stage, StageCallback, StageContext, train
from occ_core.errors import MissingError, OccError


def binary_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with binary targets on (what pre-training needs)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, binary_targets=True))


def label_split(dataset) -> dict[str, Any]:
    """The label split of a training :class:`OccDataset` (plain data for label_split.json)."""
    from occ_core.data.loading.targets import LabelSplit

    labeled = sorted(f.name for f in dataset.frames if dataset.has_semantics(f))
    binary_only = sorted(f.name for f in dataset.frames if not dataset.has_semantics(f))
    cfg = dataset.cfg
    return LabelSplit(cfg.label_fraction, cfg.label_seed, labeled, binary_only).to_json()


def check_config(cfg: TrainConfig) -> None:
    """Raise OccError unless ``cfg`` is a method with a binary occupancy module in model.mode=online."""
    if getattr(cfg.model, "mode", None) != "online":
        raise OccError(f"binary pre-training needs a method with a binary occupancy module in model.mode=online "
                       f"(method '{cfg.method}', mode {getattr(cfg.model, 'mode', None)!r}); use --method b2s")



def configure(cfg: TrainConfig) -> TrainConfig:
    """The pre-training config: binary targets on; OccError unless the method has a binary module."""
    cfg = binary_config(cfg)
    check_config(cfg)
    return cfg


def binary_datasets(cfg: TrainConfig, root: Path):
    """Every training frame with binary occupancy; the validation frames with it (None when there are none)."""
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.data.loading.dataset import OccDataset

    prepared = PreparedDataset(root)
    try:
        train_set = OccDataset(prepared, cfg.data.train_split, cfg.data, train=True, seed=cfg.seed, labeled_only=False)
    except MissingError as e:
        raise OccError(f"no training frames with binary occupancy (a target, or LiDAR scans and poses) in split "
                       f"'{cfg.data.train_split}' of {root}: {e}") from None
    try:
        val_set = OccDataset(prepared, cfg.data.val_split, cfg.data, train=False, seed=cfg.seed, labeled_only=False)
    except MissingError:
        val_set = None
    return train_set, val_set


def binary_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters of the binary branch (:meth:`binary_modules`)."""
    if not hasattr(model, "forward_binary"):
        raise OccError(f"method of {type(model).__name__} has no binary occupancy module (use --method b2s)")
    params = [p for m in model.binary_modules() for p in m.parameters() if p.requires_grad]
    if not params:
        raise OccError("the binary module has no trainable parameter (model.freeze_binary=true?)")
    return params


class LabelSplitCallback(StageCallback):
    """Writes RUN/label_split.json at the start; adds the frame counts to the result."""

    def on_start(self, ctx: StageContext) -> None:
        n_lidar = sum(not f.labeled for f in ctx.train_set.frames)
        ctx.logger.info(f"binary pre-training: {n_lidar} of {len(ctx.train_set)} train frames have LiDAR-accumulated "
                        f"binary occupancy")
        if ctx.dist_env.is_main:
            from occ_core.utils.atomic import write_json

            write_json(ctx.run / "label_split.json", label_split(ctx.train_set))

    def on_end(self, ctx: StageContext, result: dict[str, Any]) -> None:
        result["lidar_frames"] = sum(not f.labeled for f in ctx.train_set.frames)


def _binary_evaluators(spec, cfg: TrainConfig):
    return [BinaryIoUEvaluator(threshold=0.5)]


BINARY_PRETRAIN_STAGE = Stage(
    name="binary-pretrain",
    configure=configure,
    datasets=binary_datasets,
    parameters=binary_parameters,
    forward=lambda model, batch: model.forward_binary(batch),
    losses=lambda model, outputs, batch: model.binary_losses(outputs, batch),
    infer=lambda model, batch: model.forward_binary(batch),
    evaluators=_binary_evaluators,
    best_metric="iou",
    summary=(("iou", "binary IoU"),),
    val_prefix="val_",
    callbacks=[LabelSplitCallback()],
)
"""B2S binary pre-training: ``model.forward_binary`` + ``model.binary_losses`` on the binary branch's
parameters, validated by the binary IoU, best checkpoint by IoU, ``label_split.json`` at the start."""

binary_pretrain_stage = BINARY_PRETRAIN_STAGE


def pretrain_binary(cfg: TrainConfig, run: str | Path, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Pre-train the binary module of ``cfg`` (a B2S config, model.mode=online) in the run folder ``run``:
    :func:`occ_core.engine.trainer.train` with :data:`BINARY_PRETRAIN_STAGE`.

    Returns the final metrics (``val_iou`` etc. when a validation set exists)."""
    return train(cfg, run, resume=resume, progress=progress, stage=BINARY_PRETRAIN_STAGE)

"""Binary pre-training of B2S (``occ pretrain-binary``): the binary occupancy module alone.

Every training frame with binary occupancy is used: labelled frames give ``target > 0`` (ignored
voxels stay ignored), frames with no target give the LiDAR scans accumulated along the poses
(:mod:`occ_core.data.binary`). The loss is the binary cross-entropy plus the geometry scene-class
affinity loss on [empty, occupied]; the semantic module is not run.

The run folder is a normal run folder (``config.yaml``, ``checkpoints/{last,best}.safetensors``,
``metrics.jsonl``, ``train.log``, ``tb/``, ``final_metrics.json``) plus ``label_split.json``: which
training frames keep semantic labels under ``data.label_fraction`` (the frames a later
``occ train --method b2s --init RUN --set data.label_fraction=F`` fine-tunes on) and which are
binary-only. Validation (when the validation split has frames with binary occupancy) reports the
geometry IoU, precision and recall of ``p_occ >= 0.5``; the best checkpoint has the best IoU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from occ_core.engine.config import TrainConfig, save_config
from occ_core.errors import MissingError, OccError


def binary_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with binary targets on (what pre-training needs)."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, binary_targets=True))


def label_split(dataset) -> dict[str, Any]:
    """The label split of a training :class:`OccDataset` (plain data for label_split.json)."""
    from occ_core.data.binary import LabelSplit

    labeled = sorted(f.name for f in dataset.frames if dataset.has_semantics(f))
    binary_only = sorted(f.name for f in dataset.frames if not dataset.has_semantics(f))
    cfg = dataset.cfg
    return LabelSplit(cfg.label_fraction, cfg.label_seed, labeled, binary_only).to_json()


@torch.no_grad()
def validate_binary(model, dataset, device: torch.device, threshold: float = 0.5) -> dict[str, Any]:
    """Geometry IoU / precision / recall (percent) of ``p_occ >= threshold`` against the binary targets."""
    from occ_core.data.torch_dataset import collate
    from occ_core.engine.trainer import move_to

    model.eval()
    tp = fp = fn = 0
    for i in range(len(dataset)):
        batch = move_to(collate([dataset[i]]), device)
        z = model.forward_binary(batch)["occ_logits"][:, 0]
        b = batch["binary"]
        valid = b != 255
        pred = (torch.sigmoid(z) >= threshold) & valid
        gt = (b == 1) & valid
        tp += int((pred & gt).sum())
        fp += int((pred & ~gt).sum())
        fn += int((~pred & gt).sum())
    pct = lambda a, b: 100.0 * a / b if b else 0.0  # noqa: E731
    return {"iou": pct(tp, tp + fp + fn), "precision": pct(tp, tp + fp), "recall": pct(tp, tp + fn),
            "frames": len(dataset)}


def check_config(cfg: TrainConfig) -> None:
    """Raise OccError unless ``cfg`` is a method with a binary occupancy module in model.mode=online."""
    if getattr(cfg.model, "mode", None) != "online":
        raise OccError(f"binary pre-training needs a method with a binary occupancy module in model.mode=online "
                       f"(method '{cfg.method}', mode {getattr(cfg.model, 'mode', None)!r}); use --method b2s")


def pretrain_binary(cfg: TrainConfig, run: str | Path, progress: bool = True) -> dict[str, Any]:
    """Pre-train the binary module of ``cfg`` (a B2S config, model.mode=online) in the run folder ``run``.

    Returns the final metrics (binary validation IoU etc. when a validation set exists)."""
    from occ_core.data.prepared import PreparedDataset
    from occ_core.data.torch_dataset import OccDataset, collate
    from occ_core.engine.checkpoint import save_checkpoint
    from occ_core.engine.trainer import (BEST, LAST, RunLogger, TrainingDiverged, _progress, build_model, data_root,
                                         epoch_order, move_to, resolve_device, run_spec)
    from occ_core.utils.atomic import write_json

    run = Path(run)
    cfg = binary_config(cfg)
    check_config(cfg)
    device = resolve_device(cfg.device)
    root = data_root(cfg, run)
    prepared = PreparedDataset(root)
    spec = run_spec(cfg, run)
    if cfg.n_classes <= 0:
        cfg = dataclasses.replace(cfg, n_classes=spec.n_classes)
    try:
        train_set = OccDataset(prepared, cfg.data.train_split, cfg.data, train=True, seed=cfg.seed, labeled_only=False)
    except MissingError as e:
        raise OccError(f"no training frames with binary occupancy (a target, or LiDAR scans and poses) in split "
                       f"'{cfg.data.train_split}' of {root}: {e}") from None
    try:
        val_set = OccDataset(prepared, cfg.data.val_split, cfg.data, train=False, seed=cfg.seed, labeled_only=False)
    except MissingError:
        val_set = None

    run.mkdir(parents=True, exist_ok=True)
    stored = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=os.path.relpath(root, run.resolve())))
    save_config(stored, run / "config.yaml")
    write_json(run / "label_split.json", label_split(train_set))
    logger = RunLogger(run, True)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, spec).to(device)
    if not hasattr(model, "forward_binary"):
        raise OccError(f"method '{cfg.method}' has no binary occupancy module (use --method b2s)")
    params = [p for m in model.binary_modules() for p in m.parameters() if p.requires_grad]
    if not params:
        raise OccError("the binary module has no trainable parameter (model.freeze_binary=true?)")
    n_params = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.optim.milestones), gamma=cfg.optim.gamma)
    n_lidar = sum(not f.labeled for f in train_set.frames)
    logger.info(f"binary pre-training of {cfg.method} ({cfg.preset}): {n_params:,} binary-module parameters, device {device}, "
                f"{len(train_set)} train frames ({n_lidar} with LiDAR-accumulated binary occupancy), "
                f"{len(val_set) if val_set else 0} val frames")

    t_start = time.perf_counter()
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
    step, best, out_of_time, last_val, epoch, val_seconds = 0, -1.0, False, None, -1, 0.0
    steps_per_epoch = math.ceil(len(train_set) / cfg.optim.batch_size)
    with _progress(progress) as bar:
        task = bar.add_task("pretrain", total=steps_per_epoch * cfg.optim.epochs, loss="-")
        for epoch in range(cfg.optim.epochs):
            train_set.set_epoch(epoch)
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.optim.batch_size,
                                                 sampler=epoch_order(len(train_set), cfg.seed, epoch),
                                                 num_workers=cfg.data.num_workers, collate_fn=collate)
            model.train()
            bar.update(task, description=f"pretrain epoch {epoch + 1}/{cfg.optim.epochs}")
            for batch in loader:
                batch = move_to(batch, device)
                losses = model.binary_losses(model.forward_binary(batch), batch)
                total = sum(losses.values())
                if not bool(torch.isfinite(total.detach())):
                    msg = (f"loss became non-finite at epoch {epoch + 1}, step {step + 1}; the last good checkpoint is "
                           f"kept in {run / LAST}. Lower optim.lr or check the data.")
                    logger.info(msg)
                    logger.close()
                    raise TrainingDiverged(msg)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                step += 1
                value = float(total.detach())
                bar.update(task, advance=1, loss=f"{value:.3f}")
                if step % max(cfg.log_every, 1) == 0 or step == 1:
                    logger.record("train", step, {"epoch": epoch + 1, "loss": value, "lr": optimizer.param_groups[0]["lr"],
                                                  **{k: float(v.detach()) for k, v in losses.items()}})
                if time.perf_counter() - t_start - val_seconds > budget:  # validation is not training time
                    out_of_time = True
                    break
            scheduler.step()
            validate_now = val_set is not None and (
                (cfg.val_every > 0 and (epoch + 1) % cfg.val_every == 0) or epoch + 1 == cfg.optim.epochs or out_of_time)
            if validate_now:
                t_val = time.perf_counter()
                last_val = validate_binary(model, val_set, device)
                val_seconds += time.perf_counter() - t_val
                logger.record("val", step, {"epoch": epoch + 1, **{k: v for k, v in last_val.items() if k != "frames"}})
                logger.info(f"epoch {epoch + 1}: val binary IoU {last_val['iou']:.2f}")
            improved = validate_now and last_val is not None and last_val["iou"] > best
            if improved:
                best = last_val["iou"]
            save_checkpoint(run / LAST, model, optimizer, scheduler, epoch, step,
                            {"best_iou": best, "truncated": out_of_time, "stage": "binary-pretrain"})
            if improved:
                shutil.copyfile(run / LAST, run / (BEST + ".tmp"))
                os.replace(run / (BEST + ".tmp"), run / BEST)
            if out_of_time:
                logger.info(f"time budget of {cfg.max_minutes} min reached after epoch {epoch + 1}")
                break
    result: dict[str, Any] = {
        "stage": "binary-pretrain", "epochs_completed": epoch + 1, "steps": step,
        "seconds": time.perf_counter() - t_start, "train_seconds": time.perf_counter() - t_start - val_seconds,
        "stopped_by_time": out_of_time, "parameters": n_params,
        "train_frames": len(train_set), "lidar_frames": n_lidar,
    }
    if last_val is not None:
        result.update({f"val_{k}": v for k, v in last_val.items()})
    write_json(run / "final_metrics.json", result)
    logger.close()
    return result


"""The training engine: one loop for a laptop CPU, one GPU, many GPUs and many nodes.

Run folder (``RUNS/NAME/``)::

    config.yaml                 plain data + occ version (data.root relative to the run folder)
    checkpoints/last.safetensors  written atomically after every epoch
    checkpoints/best.safetensors  best validation mIoU so far
    metrics.jsonl               one JSON object per logged train step / validation
    tb/                         TensorBoard event files
    train.log                   the log
    final_metrics.json          validation metrics at the end of training

Multi-process training is launched with ``torchrun`` (``torchrun --nproc_per_node 2 -m occ_cli.main
train ...``); the engine reads RANK / WORLD_SIZE / LOCAL_RANK, uses gloo on CPU and NCCL on CUDA,
shards each epoch's frames across processes and sums the validation confusion matrices. Only rank 0
writes files.

Determinism: the frame order of epoch ``e`` is a permutation drawn from ``(seed, e)``, flips from
``(seed, e, index)``, and torch's RNG is reseeded from ``(seed, e)`` at each epoch start, so a run
resumed from its last checkpoint ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from occ_core.data.torch_dataset import OccDataset, collate
from occ_core.engine.checkpoint import load_checkpoint, save_checkpoint
from occ_core.engine.config import TrainConfig, config_from_data, save_config
from occ_core.config import load_yaml
from occ_core.errors import MissingError, OccError
from occ_core.registry import get_method

LAST = "checkpoints/last.safetensors"
BEST = "checkpoints/best.safetensors"


class TrainingDiverged(OccError):
    """The loss became NaN or infinite."""

    exit_code = 3


# ------------------------------------------------------------------------------------------------
# Distributed helpers
# ------------------------------------------------------------------------------------------------


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @staticmethod
    def from_env() -> "DistEnv":
        return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))

    def init(self, device: torch.device) -> None:
        import torch.distributed as dist

        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def all_sum(self, array: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return array
        import torch.distributed as dist

        t = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float64 if array.dtype.kind == "f" else torch.int64)
        dist.all_reduce(t)
        return t.numpy().astype(array.dtype)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        """True on every process when any process says True."""
        if not self.enabled:
            return flag
        return bool(self.all_sum(np.array([int(flag)], np.int64))[0] > 0)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise OccError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if name != "cpu":
        raise OccError(f"unknown device '{name}' (auto, cpu, cuda)")
    return torch.device("cpu")


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return np.random.default_rng([seed, epoch, 7]).permutation(n).tolist()


# ------------------------------------------------------------------------------------------------
# Run folders
# ------------------------------------------------------------------------------------------------


def new_run_dir(out: str | Path, method: str, preset: str, name: str | None = None) -> Path:
    out = Path(out)
    if name is None:
        name = f"{method}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = out / name
    if (run / "config.yaml").exists():
        raise OccError(f"run folder already exists (use --resume {run} to continue it, or another --name)", run)
    return run


def load_run_config(run: str | Path) -> TrainConfig:
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise MissingError("not a run folder (no config.yaml)", run)
    return config_from_data(load_yaml(run / "config.yaml"), where=str(run / "config.yaml"))


def data_root(cfg: TrainConfig, run: Path) -> Path:
    root = Path(cfg.data.root)
    return root if root.is_absolute() else (run / root).resolve()


def build_model(cfg: TrainConfig, spec) -> torch.nn.Module:
    """The method's model for the dataset ``spec``: it gets its own config, the spec and the loss config."""
    if spec.n_classes != cfg.n_classes and cfg.n_classes > 0:
        raise OccError(f"n_classes={cfg.n_classes} but the prepared data has {spec.n_classes} classes "
                       f"({spec.name}); leave n_classes at 0 to take it from the data")
    return get_method(cfg.method).load().build_model(cfg.model, spec, cfg.loss)


def run_spec(cfg: TrainConfig, run: Path):
    """The dataset spec a run trains on (its prepared data's), restricted to ``data.cameras``."""
    from occ_core.data.prepared import PreparedDataset

    spec = PreparedDataset(data_root(cfg, run)).spec
    if cfg.data.cameras:
        try:
            spec = spec.with_cameras(list(cfg.data.cameras))
        except ValueError as e:
            raise OccError(f"data.cameras: {e}", run / "config.yaml") from None
    return spec


def load_model(run: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild a run's model from its config and load a checkpoint (best, else last)."""
    run = Path(run)
    cfg = load_run_config(run)
    model = build_model(cfg, run_spec(cfg, run))
    path = run / (BEST if checkpoint == "best" else LAST)
    if checkpoint == "best" and not path.is_file():
        path = run / LAST
    if checkpoint not in ("best", "last"):
        path = Path(checkpoint)
    load_checkpoint(path, model)
    model.to(device).eval()
    return model, cfg


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------


class RunLogger:
    """metrics.jsonl + TensorBoard + train.log (rank 0 only)."""

    def __init__(self, run: Path, enabled: bool):
        self.enabled = enabled
        self.log = logging.getLogger(f"occ.train.{run}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self.tb = None
        if not enabled:
            return
        run.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.handlers = [handler]
        self.metrics = open(run / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"))
        except Exception as e:  # tensorboard missing or broken: keep the jsonl log
            self.log.warning("TensorBoard disabled: %s", e)

    def info(self, msg: str) -> None:
        if self.enabled:
            self.log.info(msg)

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"type": kind, "step": step, **values}
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            if self.tb is not None:
                self.tb.close()
            for h in self.log.handlers:
                h.close()


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(model: torch.nn.Module, dataset: OccDataset, device: torch.device, dist_env: DistEnv | None = None,
             progress: bool = False, amp: bool = False) -> dict[str, Any]:
    """Benchmark metrics of ``model`` on ``dataset`` (confusion matrices summed across processes)."""
    from occ_core.metrics.ssc import SSCMetric

    dist_env = dist_env or DistEnv()
    metric = SSCMetric.for_spec(dataset.spec)
    core = model.module if hasattr(model, "module") else model
    core.eval()
    indices = list(range(len(dataset)))[dist_env.rank :: dist_env.world_size]
    it = indices
    if progress and dist_env.is_main:
        from occ_core.utils.progress import track

        it = track(indices, "validate")
    for i in it:
        batch = move_to(collate([dataset[i]]), device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            pred = core.predict(batch)
        metric.process(pred[0].cpu().numpy().astype(np.uint8), batch["target"][0].cpu().numpy())
    state = metric.state()
    state = {k: dist_env.all_sum(np.asarray(v)) for k, v in state.items()}
    metric.load_state(state)
    return metric.evaluate()


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from occ_core.utils.progress import _rate_column_class

    return Progress(
        TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(), _rate_column_class()(),
        TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled or os.environ.get("OCC_NO_PROGRESS", "") not in ("", "0"),
    )


def train(cfg: TrainConfig, run: str | Path, resume: bool = False, progress: bool = True,
          init_from: str | Path | None = None) -> dict[str, Any]:
    """Train ``cfg`` in the run folder ``run``; returns the final validation metrics (percent)."""
    run = Path(run)
    dist_env = DistEnv.from_env()
    device = resolve_device(cfg.device, dist_env.local_rank)
    dist_env.init(device)
    is_main = dist_env.is_main

    root = data_root(cfg, run)
    spec = run_spec(cfg, run)
    if cfg.n_classes <= 0:
        cfg = dataclasses.replace(cfg, n_classes=spec.n_classes)
    if is_main and not resume:
        run.mkdir(parents=True, exist_ok=True)
        stored = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=os.path.relpath(root, run.resolve())))
        save_config(stored, run / "config.yaml")
    dist_env.barrier()
    logger = RunLogger(run, is_main)

    train_set = OccDataset(root, cfg.data.train_split, cfg.data, train=True, seed=cfg.seed)
    val_set = OccDataset(train_set.data, cfg.data.val_split, cfg.data, train=False, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, spec).to(device)
    if init_from is not None:
        info = load_checkpoint(Path(init_from) / LAST if Path(init_from).is_dir() else init_from, model, strict=False)
        logger.info(f"initialised from {init_from} (epoch {info['epoch']})")
    n_params = sum(p.numel() for p in model.parameters())
    train_model: torch.nn.Module = model
    if dist_env.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.optim.milestones), gamma=cfg.optim.gamma)
    amp = cfg.optim.amp and device.type == "cuda"

    start_epoch, step, best = 0, 0, -1.0
    if resume:
        if not (run / LAST).is_file():
            raise MissingError("no checkpoint to resume from", run / LAST)
        info = load_checkpoint(run / LAST, model, optimizer, scheduler, restore_rng=True)
        start_epoch, step = info["epoch"] + 1, info["step"]
        best = float(info["extra"].get("best_miou", -1.0))
        logger.info(f"resumed from epoch {info['epoch']} (step {step})")
    logger.info(f"method {cfg.method} ({cfg.preset}), {n_params:,} parameters, device {device}, "
                f"{dist_env.world_size} process(es), {len(train_set)} train / {len(val_set)} val frames")

    t_start = time.perf_counter()
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
    out_of_time = False
    last_val: dict[str, Any] | None = None
    per_rank = math.ceil(len(train_set) / dist_env.world_size)
    steps_per_epoch = math.ceil(per_rank / cfg.optim.batch_size)

    with _progress(progress and is_main) as bar:
        task = bar.add_task("train", total=steps_per_epoch * max(cfg.optim.epochs - start_epoch, 0), loss="-")
        for epoch in range(start_epoch, cfg.optim.epochs):
            train_set.set_epoch(epoch)
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            order = epoch_order(len(train_set), cfg.seed, epoch)
            mine = order[dist_env.rank :: dist_env.world_size]
            if dist_env.enabled:  # equal step counts on every process
                mine = (mine * math.ceil(per_rank / max(len(mine), 1)))[:per_rank]
            loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.optim.batch_size, sampler=mine,
                                                 num_workers=cfg.data.num_workers, collate_fn=collate)
            model.train()
            bar.update(task, description=f"train epoch {epoch + 1}/{cfg.optim.epochs}")
            for batch in loader:
                batch = move_to(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    outputs = train_model(batch)
                    losses = model.losses(outputs, batch)
                total = sum(losses.values())
                bad = not bool(torch.isfinite(total.detach()))
                if dist_env.broadcast_flag(bad):
                    msg = (f"loss became {'NaN' if torch.isnan(total).any() else 'infinite'} at epoch {epoch + 1}, step {step + 1} "
                           f"({', '.join(f'{k}={float(v.detach()):.4g}' for k, v in losses.items())}); "
                           f"the last good checkpoint is kept in {run / LAST}. Lower optim.lr or check the data.")
                    logger.info(msg)
                    logger.close()
                    raise TrainingDiverged(msg)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                step += 1
                loss_value = float(total.detach())
                bar.update(task, advance=1, loss=f"{loss_value:.3f}")
                if step % max(cfg.log_every, 1) == 0 or step == 1:
                    logger.record("train", step, {"epoch": epoch + 1, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                                                  **{k: float(v.detach()) for k, v in losses.items()}})
                if dist_env.broadcast_flag(time.perf_counter() - t_start > budget):
                    out_of_time = True
                    break
            scheduler.step()
            validate_now = (cfg.val_every > 0 and (epoch + 1) % cfg.val_every == 0) or epoch + 1 == cfg.optim.epochs or out_of_time
            if validate_now:
                last_val = validate(train_model, val_set, device, dist_env, amp=amp)
                logger.record("val", step, {"epoch": epoch + 1, "iou": last_val["iou"], "miou": last_val["miou"],
                                            "precision": last_val["precision"], "recall": last_val["recall"]})
                logger.info(f"epoch {epoch + 1}: val IoU {last_val['iou']:.2f}  mIoU {last_val['miou']:.2f}")
            if is_main:
                improved = last_val is not None and validate_now and last_val["miou"] > best
                if improved:
                    best = last_val["miou"]
                save_checkpoint(run / LAST, model, optimizer, scheduler, epoch, step,
                                {"best_miou": best, "truncated": out_of_time})
                if improved:
                    shutil.copyfile(run / LAST, run / (BEST + ".tmp"))
                    os.replace(run / (BEST + ".tmp"), run / BEST)
            dist_env.barrier()
            if out_of_time:
                logger.info(f"time budget of {cfg.max_minutes} min reached after epoch {epoch + 1}")
                break

    if last_val is None:  # nothing left to train (e.g. resuming a finished run)
        last_val = validate(train_model, val_set, device, dist_env, amp=amp)
    result = {**last_val, "epochs_completed": epoch + 1 if cfg.optim.epochs > start_epoch else start_epoch,
              "steps": step, "seconds": time.perf_counter() - t_start, "stopped_by_time": out_of_time,
              "parameters": n_params}
    if is_main:
        from occ_core.utils.atomic import write_json

        write_json(run / "final_metrics.json", result)
    logger.close()
    return result

"""The training engine: one loop for a laptop CPU, one GPU, many GPUs and many nodes, and for every stage.

A :class:`Stage` says what a run trains (parameters), on which forward and losses, how it validates
(evaluators fed by :func:`occ_core.engine.evaluate.validate`) and which score picks the best
checkpoint; :func:`train` runs any stage with the same resume, DDP, AMP, time-budget, best-checkpoint
and NaN rules (``occ train``: :data:`SSC_STAGE`; ``occ pretrain-binary``:
:data:`occ_core.engine.pretrain.BINARY_PRETRAIN_STAGE`); :func:`train_stages` chains stages.

Run folder (``RUNS/NAME/``)::

    config.yaml                 plain data + occ version (data.root relative to the run folder)
    checkpoints/last.safetensors  written atomically after every epoch
    checkpoints/best.safetensors  best validation score so far (the stage's best_metric: mIoU, binary IoU)
    metrics.jsonl               one JSON object per logged train step / validation
    tb/                         TensorBoard event files
    train.log                   the log
    final_metrics.json          validation metrics at the end of training

Multi-process training is launched with ``torchrun`` (``torchrun --nproc_per_node 2 -m occ_cli.main
train ...``); the engine reads RANK / WORLD_SIZE / LOCAL_RANK, uses gloo on CPU and NCCL on CUDA,
shards each epoch's frames across processes and sums the evaluators' counters. Only rank 0
writes files.

Time budget (``max_minutes``): wall clock of this call from the first step, validations and checkpoints
included; the step that crosses it is the last, then a final validation and checkpoint still run. With
``fit_to_budget`` (cosine schedule) the run's length is re-fitted to the time left at the end of the warm-up
(where the cosine starts; at step 10 at the earliest) and at every epoch's end (:func:`_refit_length`), so the
schedule ends with the budget rather than being cut off by it.

Determinism: the frame order of epoch ``e`` is a permutation drawn from ``(seed, e)``, flips from
``(seed, e, index)``, and torch's, numpy's and Python's global RNGs are reseeded from ``(seed, e, batch,
rank)`` before every step (:func:`seed_step`), so no random draw depends on history (validations, a
resume). On CPU deterministic algorithms are on during training and a resumed run uses the thread count
the run was trained with, so two runs with the same seed and thread count, and a run killed and resumed,
end with identical weights and metrics. A checkpoint written when the time budget stopped an epoch
records how many batches of it were done, and a resume finishes that epoch. On CUDA deterministic
algorithms are opt-in (``deterministic=True``); see docs/training.md "Determinism".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from occ_core.data.loading.dataset import OccDataset, collate
from occ_core.engine.checkpoint import load_checkpoint, save_checkpoint
from occ_core.engine.config import TrainConfig, config_from_data, save_config
from occ_core.engine.evaluate import Evaluator, Infer, SSCEvaluator, predict_outputs, validate
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


def train_autocast(optim, device: torch.device) -> bool:
    """Whether training steps run under bfloat16 autocast on ``device``: ``optim.amp`` on CUDA, and on CPU
    only with ``optim.cpu_amp`` too (validation keeps its own CUDA-only rule)."""
    return bool(optim.amp and (device.type == "cuda" or (device.type == "cpu" and optim.cpu_amp)))


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return np.random.default_rng([seed, epoch, 7]).permutation(n).tolist()


def _derived_seed(*key: int) -> int:
    """A 63-bit seed from integers (negative ones allowed), independent for every distinct key."""
    words = [int(k) % 2**64 for k in key]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_step(seed: int, epoch: int, batch: int, rank: int = 0) -> None:
    """Reseed torch (CPU and CUDA), numpy's and Python's global RNGs from ``(seed, epoch, batch, rank)``.

    Called before every training step (``batch`` = the batch's index in its epoch) and at each epoch
    start (``batch=-1``, before the DataLoader draws its workers' base seed): every random draw of a step
    (dropout, GaussRender's random views, a method's own sampling) depends on where the step is, not on
    what ran before it (validations, a resume, another process's history)."""
    s = _derived_seed(seed, epoch, batch, rank, 0x5EED)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


@contextmanager
def determinism(device: torch.device, deterministic: bool, threads: int | None = None) -> Iterator[None]:
    """Deterministic kernels for the duration of a training call; the previous settings come back after.

    CPU: ``torch.use_deterministic_algorithms(True, warn_only=True)`` always (it makes e.g. the backward
    of advanced indexing, ``index_put_(accumulate=True)``, reproducible; a kernel without a
    deterministic version warns instead of failing). CUDA: the same plus ``cudnn.deterministic``, no
    cuDNN benchmark and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (when unset), only with ``deterministic``.
    ``threads``: intra-op thread count to use (CPU reductions are split by thread, so results depend on
    it); None keeps the current one."""
    import torch.utils.deterministic as det

    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads(),
            det.fill_uninitialized_memory)
    on = device.type != "cuda" or deterministic
    if on:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        # deterministic mode also fills every new tensor with NaN (a debugging aid for kernels that read memory
        # they did not write; none of ours does, and the determinism tests would see it): 8 % of a CPU step
        det.fill_uninitialized_memory = False
    if threads and threads != prev[4]:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        det.fill_uninitialized_memory = prev[5]
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2], prev[3]
        if torch.get_num_threads() != prev[4]:
            torch.set_num_threads(prev[4])


# ------------------------------------------------------------------------------------------------
# Run folders
# ------------------------------------------------------------------------------------------------


def new_run_dir(out: str | Path, method: str, preset: str, name: str | None = None) -> Path:
    """``OUT/NAME`` for a new run (checked, not created): ``name`` must be a plain folder name."""
    from occ_core.utils.paths import output_dir, safe_name

    out = output_dir(out, "runs folder")
    if name is None:
        name = f"{method}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = output_dir(out / safe_name(name, "run name"), "run folder")
    if (run / "config.yaml").exists():
        ckpt = run / "checkpoints"
        if ckpt.is_dir() and any(p.is_file() for p in ckpt.iterdir()):
            raise OccError(f"run folder already exists (use --resume {run} to continue it, or another --name)", run)
        # config.yaml but no checkpoint: a start that failed before its first checkpoint; reuse it.
        for stale in ("metrics.jsonl",):
            if (run / stale).is_file():
                (run / stale).unlink()
        if (run / "tb").is_dir():
            import shutil

            shutil.rmtree(run / "tb", ignore_errors=True)
        msg = f"reusing run folder {run}: an earlier start failed before its first checkpoint"
        logging.getLogger("occ.train").warning(msg)
        try:
            with open(run / "train.log", "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING {msg}\n")
        except OSError:
            pass
    return run


def stage_folders(run: str | Path) -> list[Path]:
    """The stage folders of a multi-stage run (:func:`train_stages`: ``RUN/<k>-<name>/`` with a config.yaml),
    in stage order; ``[]`` for a plain run folder (one with its own config.yaml)."""
    import re

    run = Path(run)
    if (run / "config.yaml").is_file() or not run.is_dir():
        return []
    subs = []
    for p in run.iterdir():
        m = re.match(r"(\d+)-", p.name)
        if m and p.is_dir() and (p / "config.yaml").is_file():
            subs.append((int(m.group(1)), p))
    return [p for _, p in sorted(subs)]


def resolve_run(run: str | Path) -> Path:
    """The folder that holds a run's config.yaml and checkpoints: ``run`` itself, or for a multi-stage run its
    last stage folder with a checkpoint (the first stage folder when none has one yet)."""
    subs = stage_folders(run)
    if not subs:
        return Path(run)
    done = [p for p in subs if (p / LAST).is_file()]
    return done[-1] if done else subs[0]


def load_run_config(run: str | Path) -> TrainConfig:
    """The config of a run folder; of a multi-stage run, its :func:`resolve_run` stage's, with data.root made
    relative to ``run`` (so ``data_root(cfg, run)`` holds for either)."""
    run = Path(run)
    sub = resolve_run(run)
    if not (sub / "config.yaml").is_file():
        raise MissingError("not a run folder (no config.yaml)", run)
    cfg = config_from_data(load_yaml(sub / "config.yaml"), where=str(sub / "config.yaml"))
    if sub != run:
        root = os.path.relpath(data_root(cfg, sub), run.resolve())
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=root))
    return cfg


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
    from occ_core.data.prepare.layout import PreparedDataset

    spec = PreparedDataset(data_root(cfg, run)).spec
    if cfg.data.cameras:
        try:
            spec = spec.with_cameras(list(cfg.data.cameras))
        except ValueError as e:
            raise OccError(f"data.cameras: {e}", run / "config.yaml") from None
    return spec


def check_data_fits(cfg: TrainConfig, run: str | Path, data_spec, root: str | Path) -> None:
    """OccError naming ``root`` unless prepared data of spec ``data_spec`` (``--data`` of predict, eval --run,
    render --run) fits the run's model: the grid, the class count and the cameras of the data it was trained on."""
    run = Path(run)
    mine = run_spec(cfg, run)
    theirs = data_spec
    if cfg.data.cameras:
        try:
            theirs = theirs.with_cameras(list(cfg.data.cameras))
        except ValueError as e:
            raise OccError(f"does not fit the run {run} (data.cameras: {e})", root) from None
    problems = []
    if tuple(theirs.grid.shape) != tuple(mine.grid.shape):
        problems.append(f"grid {'x'.join(map(str, theirs.grid.shape))}, the run's {'x'.join(map(str, mine.grid.shape))}")
    if theirs.n_classes != mine.n_classes:
        problems.append(f"{theirs.n_classes} classes, the run's {mine.n_classes}")
    if len(theirs.cameras) != len(mine.cameras):
        problems.append(f"{len(theirs.cameras)} camera(s), the run's {len(mine.cameras)}")
    if problems:
        raise OccError(f"{theirs.name} data does not fit the run {run}, trained on {mine.name} data: "
                       f"{'; '.join(problems)}", root)


def load_model(run: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """Rebuild a run's model from its config and load a checkpoint (best, else last)."""
    run = Path(run)
    cfg = load_run_config(run)
    from occ_core.models.backbone import quiet_random_init

    root = data_root(cfg, run)
    if not Path(root).exists():  # the model is rebuilt from the spec of the data it was trained on
        raise MissingError(f"prepared data folder of the run {run} not found (data.root in its config.yaml; the "
                           "model is rebuilt from that folder's spec)", root)
    with quiet_random_init():  # the weights come from the checkpoint next
        model = build_model(cfg, run_spec(cfg, run))
    where = resolve_run(run)  # a multi-stage run: its last trained stage
    path = where / (BEST if checkpoint == "best" else LAST)
    if checkpoint == "best" and not path.is_file():
        path = where / LAST
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

    def __init__(self, run: Path, enabled: bool, resume_step: int | None = None):
        """``resume_step``: the step of the checkpoint a resume starts from. Rows logged after it (by
        the part of an epoch that a kill lost, which the resume trains again) are dropped from
        metrics.jsonl and purged from TensorBoard, so every step is logged once."""
        self.enabled = enabled
        self.log = logging.getLogger(f"occ.train.{run}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self.tb = None
        self.dropped = 0
        if not enabled:
            return
        run.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.handlers = [handler]
        if resume_step is not None:
            self.dropped = drop_rows_after(run / "metrics.jsonl", resume_step)
        self.metrics = open(run / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"), purge_step=None if resume_step is None else resume_step + 1)
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


def drop_rows_after(path: Path, step: int) -> int:
    """Rewrite metrics.jsonl without the rows of steps after ``step`` (and a line a kill cut short);
    returns how many lines went."""
    if not path.is_file():
        return 0
    from occ_core.utils.atomic import write_text

    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        write_text(path, "".join(k + "\n" for k in kept))
    return len(lines) - len(kept)


# ------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every parameter of ``model`` that requires a gradient (the normal stage)."""
    return [p for p in model.parameters() if p.requires_grad]


def ssc_datasets(cfg: TrainConfig, root: Path) -> tuple[OccDataset, OccDataset | None]:
    """The labeled frames of the training and validation splits."""
    train_set = OccDataset(root, cfg.data.train_split, cfg.data, train=True, seed=cfg.seed)
    return train_set, OccDataset(train_set.data, cfg.data.val_split, cfg.data, train=False, seed=cfg.seed)


def _forward(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    return model(batch)


def _losses(model: torch.nn.Module, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return model.losses(outputs, batch)


def _ssc_evaluators(spec, cfg: TrainConfig) -> list[Evaluator]:
    return [SSCEvaluator.for_spec(spec)]


@dataclass
class StageContext:
    """What a stage's callbacks see (``model`` is the bare model, never the DDP wrapper)."""

    cfg: TrainConfig
    run: Path
    spec: Any
    model: torch.nn.Module
    train_set: OccDataset
    val_set: OccDataset | None
    logger: "RunLogger"
    dist_env: DistEnv
    resume: bool


class StageCallback:
    """Hooks of a stage; every process calls them (write files only when ``ctx.dist_env.is_main``)."""

    def on_start(self, ctx: StageContext) -> None:
        """After the model, datasets and logger exist, before the first step (also on resume)."""

    def on_end(self, ctx: StageContext, result: dict[str, Any]) -> None:
        """After training; may add entries to ``result`` (written as final_metrics.json after this)."""


@dataclass
class Stage:
    """One training stage: what trains, on what loss, and how it is validated.

    :func:`train` runs any stage with the same engine (resume, DDP, AMP, time budget, best checkpoint,
    NaN stop). The functions get the bare model (``forward`` is called inside the DDP wrapper, so its
    gradients are synchronised whatever method it calls). A multi-stage method is a list of stages
    (:func:`train_stages`), each stage initialised from the previous one's checkpoint."""

    name: str = "ssc"
    """Recorded in every checkpoint and in final_metrics.json; resuming checks it."""
    configure: Callable[[TrainConfig], TrainConfig] = lambda cfg: cfg
    """The config this stage trains with (e.g. binary targets on); raises OccError when the method can't."""
    datasets: Callable[[TrainConfig, Path], tuple[OccDataset, "OccDataset | None"]] = ssc_datasets
    """(training set, validation set or None) from the config and the prepared folder."""
    parameters: Callable[[torch.nn.Module], list] = trainable_parameters
    """The parameters (or AdamW parameter groups) that train; the others keep their values."""
    forward: Callable[[torch.nn.Module, dict[str, Any]], dict[str, Any]] = _forward
    """Training forward: outputs of one batch."""
    losses: Callable[[torch.nn.Module, dict[str, Any], dict[str, Any]], dict[str, torch.Tensor]] = _losses
    """Named scalar losses of the outputs (summed)."""
    infer: Infer = predict_outputs
    """Validation inference (eval mode, no gradient): the outputs the evaluators process."""
    evaluators: Callable[[Any, TrainConfig], list[Evaluator]] = _ssc_evaluators
    """The evaluators that validate (fed by one inference loop, :func:`occ_core.engine.evaluate.validate`)."""
    best_metric: str = "miou"
    """Validation score that decides checkpoints/best.safetensors (higher is better)."""
    summary: tuple[tuple[str, str], ...] = (("iou", "IoU"), ("miou", "mIoU"))
    """(score, label) pairs of the one-line validation log."""
    val_prefix: str = ""
    """Prefix of the validation scores in the returned result / final_metrics.json."""
    callbacks: list[StageCallback] = field(default_factory=list)


SSC_STAGE = Stage()
"""The normal stage: ``model(batch)`` + ``model.losses``, every trainable parameter, SSC metric, best by mIoU."""


class _StageForward(torch.nn.Module):
    """Wraps the model so that DDP hooks the stage's forward (e.g. ``forward_binary``), not only ``forward``."""

    def __init__(self, model: torch.nn.Module, stage: Stage):
        super().__init__()
        self.model = model
        self._stage_forward = stage.forward

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self._stage_forward(self.model, batch)


def total_steps(optim, steps_per_epoch: int) -> int:
    """Optimiser steps of a whole run: optim.epochs x steps_per_epoch, or optim.max_steps when that is fewer."""
    full = int(optim.epochs) * int(steps_per_epoch)
    return min(full, int(optim.max_steps)) if int(optim.max_steps) > 0 else full


def lr_scheduler(optimizer: torch.optim.Optimizer, optim, steps_per_epoch: int):
    """The run's learning-rate schedule (OptimConfig.schedule): 'step' is stepped once per epoch,
    'cosine' once per optimiser step (warm-up, then cosine decay over the run's steps, :func:`total_steps`)."""
    if optim.schedule != "cosine":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(optim.milestones), gamma=optim.gamma)
    shape = CosineShape(max(total_steps(optim, steps_per_epoch), 1), int(optim.warmup_steps), float(optim.min_lr_ratio))
    return _CosineSchedule(optimizer, shape)


class _CosineSchedule(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR over a :class:`CosineShape` whose length the run can re-fit (fit_to_budget). The length is not
    part of the state dict: the run's config records it, and a resume builds the shape from there."""

    def __init__(self, optimizer: torch.optim.Optimizer, shape: "CosineShape"):
        super().__init__(optimizer, lambda k: shape(k))
        self.shape = shape

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("shape", None)
        return state


@dataclasses.dataclass
class CosineShape:
    """Learning-rate factor of optimiser step ``k``: linear warm-up over ``warm`` steps, then cosine decay from 1
    to ``floor`` at step ``total`` (and ``floor`` after it)."""

    total: int
    warm: int
    floor: float

    def __call__(self, k: int) -> float:
        if k < self.warm:
            return (k + 1) / self.warm
        t = min(max(k - self.warm, 0) / max(self.total - self.warm, 1), 1.0)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _refit_length(cfg: TrainConfig, step: int, steps_done: int, elapsed: float, val_seconds: float, validations: int,
                  budget: float, steps_per_epoch: int, val_frames: int, validation_due: bool, into_epoch: int = 0) -> int:
    """The run's new last step (fit_to_budget), ``into_epoch`` steps into an epoch: the steps that fit in what is left of
    ``budget`` (less :data:`calibrate.RESERVE` of it) at the seconds a step took in this call so far
    (``elapsed`` less the validations, over ``steps_done``; checkpoints included) and the seconds a validation
    took (measured, or a third of a step a frame before the first one), with the validation due now and the
    ones the steps will bring. Never before ``step``: at ``step`` the run ends here."""
    from occ_core.engine.calibrate import RESERVE, fit_steps

    if steps_done <= 0:
        return total_steps(cfg.optim, steps_per_epoch)
    step_s = max(elapsed - val_seconds, 0.0) / steps_done
    val_s = val_seconds / validations if validations else val_frames * step_s / 3.0
    left = budget * (1.0 - RESERVE) - elapsed
    return step + fit_steps(left, step_s, val_s if val_frames else 0.0, steps_per_epoch, cfg.val_every,
                            pending=int(validation_due), into_epoch=into_epoch)


def _record_length(run: Path, cfg: TrainConfig) -> None:
    """Write ``cfg``'s length (optim.epochs, optim.max_steps, fit_to_budget) into the run's config.yaml."""
    stored = load_run_config(run)
    save_config(dataclasses.replace(stored, fit_to_budget=cfg.fit_to_budget, optim=dataclasses.replace(
        stored.optim, epochs=cfg.optim.epochs, max_steps=cfg.optim.max_steps)), run / "config.yaml")


def _flat_params(groups: list) -> list[torch.nn.Parameter]:
    return [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]


def _summary(stage: Stage, val: dict[str, Any]) -> str:
    return "  ".join(f"{label} {val[k]:.2f}" for k, label in stage.summary if k in val)


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


def _init_path(init_from: str | Path) -> Path:
    p = Path(init_from)
    return resolve_run(p) / LAST if p.is_dir() else p


def _resume_point(run: Path, stage: Stage) -> dict[str, Any]:
    """The last checkpoint's metadata, checked to belong to ``stage``."""
    if not (run / LAST).is_file():
        raise MissingError("no checkpoint to resume from", run / LAST)
    info = load_checkpoint(run / LAST)
    trained = info["extra"].get("stage", SSC_STAGE.name)
    if trained != stage.name:
        raise OccError(f"the run was trained by stage '{trained}', not '{stage.name}' "
                       f"({'occ pretrain-binary' if trained == 'binary-pretrain' else 'occ train'} --resume continues it)",
                       run / LAST)
    return info


@contextmanager
def _no_context() -> Iterator[None]:
    yield


@contextmanager
def _warnings_if_no_error() -> Iterator[None]:
    """Hold the warnings raised inside the block; show them when it ends without an error (a refused
    config ends with its one error line, not with a warning about a model that was never built)."""
    import warnings

    with warnings.catch_warnings(record=True) as held:
        yield
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def train(cfg: TrainConfig, run: str | Path, resume: bool = False, progress: bool = True,
          init_from: str | Path | None = None, stage: Stage = SSC_STAGE,
          deterministic: bool | None = None, announce: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train ``stage`` of ``cfg`` in the run folder ``run``; returns the final metrics (percent).

    The result holds the last validation's scores (prefixed by ``stage.val_prefix``; none when the stage
    has no validation set), ``stage``, ``epochs_completed``, ``steps``, ``seconds`` (wall clock of this
    call, validation included: the time budget's clock), ``train_seconds``, ``val_seconds``,
    ``stopped_by_time``, ``parameters`` (all), ``trainable_parameters`` (the stage's), ``train_frames``,
    ``val_frames``, ``threads``, ``deterministic``, plus what the stage's callbacks add.

    ``resume``: continue from ``RUN/checkpoints/last.safetensors`` with ``cfg`` (a changed
    ``optim.epochs`` is written to config.yaml; fewer epochs than already trained is an error), with the
    thread count the run was trained with. ``deterministic``: deterministic CUDA kernels (always on on
    CPU); None: as the resumed checkpoint recorded, else off. See :func:`determinism`. ``announce(run)`` is
    called (rank 0) once the config, the data and the model have been accepted, before the run folder is
    written: a refused run ends with its error alone (the CLI prints the run folder there)."""
    run = Path(run)
    saved = _resume_point(run, stage) if resume else None  # before anything is built or opened
    if deterministic is None:
        deterministic = bool(saved is not None and saved["extra"].get("deterministic", False))
    device = resolve_device(cfg.device, DistEnv.from_env().local_rank)
    threads = saved["extra"].get("threads") if saved is not None and device.type == "cpu" else None
    before = torch.get_num_threads()
    with determinism(device, deterministic, threads):
        return _train(cfg, run, saved, progress, init_from, stage, device, deterministic,
                      before if threads and threads != before else None, announce)


def _train(cfg: TrainConfig, run: Path, saved: dict[str, Any] | None, progress: bool, init_from, stage: Stage,
           device: torch.device, deterministic: bool, threads_were: int | None,
           announce: Callable[[Path], None] | None = None) -> dict[str, Any]:
    resume = saved is not None
    dist_env = DistEnv.from_env()
    dist_env.init(device)
    is_main = dist_env.is_main

    cfg = stage.configure(cfg)
    root = data_root(cfg, run)
    spec = run_spec(cfg, run)
    if cfg.n_classes <= 0:
        cfg = dataclasses.replace(cfg, n_classes=spec.n_classes)
    train_set, val_set = stage.datasets(cfg, root)
    per_rank = math.ceil(len(train_set) / dist_env.world_size)
    steps_per_epoch = math.ceil(per_rank / cfg.optim.batch_size)
    start_epoch, skip, step = 0, 0, 0
    if saved is not None:  # where the resume starts: after the checkpoint's epoch, or inside it (time budget)
        step = saved["step"]
        done = int(saved["extra"].get("epoch_batches", steps_per_epoch))  # older checkpoints: whole epochs
        if saved["extra"].get("truncated") and 0 < done < steps_per_epoch:
            start_epoch, skip = saved["epoch"], done
        else:
            start_epoch = saved["epoch"] + 1
        if cfg.optim.epochs < start_epoch:
            raise OccError(f"optim.epochs={cfg.optim.epochs}, but the run has already trained {start_epoch} epochs "
                           f"(ask for at least {start_epoch})", run / LAST)
        if 0 < cfg.optim.max_steps < step:
            raise OccError(f"optim.max_steps={cfg.optim.max_steps}, but the run has already trained {step} steps "
                           f"(ask for at least {step})", run / LAST)
    # the model (and --init's weights) before anything is written: a config the method refuses, or an --init
    # checkpoint that does not fit, leaves no run folder behind
    # (its warnings are shown once it is built; a resumed or --init run's weights come from a checkpoint)
    from occ_core.models.backbone import quiet_random_init

    with _warnings_if_no_error(), (quiet_random_init() if resume or init_from is not None else _no_context()):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, spec).to(device)
        init_info = load_checkpoint(_init_path(init_from), model, strict=False) if init_from is not None else None
        groups = stage.parameters(model)
        params = _flat_params(groups)
        if not params:
            raise OccError(f"stage '{stage.name}' has no trainable parameter")
    if announce is not None and is_main:
        announce(run)
    if is_main and not resume:
        run.mkdir(parents=True, exist_ok=True)
        stored = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=os.path.relpath(root, run.resolve())))
        save_config(stored, run / "config.yaml")
    length_changes: list[str] = []
    if is_main and resume and (run / "config.yaml").is_file():
        stored = load_run_config(run)
        length_changes = [f"optim.{k} changed from {getattr(stored.optim, k)} to {getattr(cfg.optim, k)}"
                          for k in ("epochs", "max_steps") if getattr(stored.optim, k) != getattr(cfg.optim, k)]
        if stored.fit_to_budget != cfg.fit_to_budget:
            length_changes.append(f"fit_to_budget changed from {stored.fit_to_budget} to {cfg.fit_to_budget}")
        if length_changes:  # --resume --epochs N: the run folder records the new length
            _record_length(run, cfg)
    dist_env.barrier()
    logger = RunLogger(run, is_main, resume_step=step if resume else None)

    if init_info is not None:
        skipped = init_info.get("skipped") or []
        logger.info(f"initialised from {init_from} (epoch {init_info['epoch'] + 1}, stage "
                    f"{init_info['extra'].get('stage', 'ssc')})"
                    + (f"; {len(skipped)} tensor(s) of another shape left as initialised, e.g. {skipped[0]}" if skipped else ""))
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in params)
    train_model: torch.nn.Module = _StageForward(model, stage)
    if dist_env.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    per_step = cfg.optim.schedule == "cosine"
    scheduler = lr_scheduler(optimizer, cfg.optim, steps_per_epoch)
    last_step = total_steps(cfg.optim, steps_per_epoch)  # optim.max_steps can end the run inside an epoch
    amp = train_autocast(cfg.optim, device)
    metric = stage.best_metric

    best = -1.0
    if saved is not None:
        load_checkpoint(run / LAST, model, optimizer, scheduler)
        best = float(saved["extra"].get("best", saved["extra"].get(f"best_{metric}", -1.0)))
        E = cfg.optim.epochs
        if start_epoch >= E:
            where = f"resumed after epoch {start_epoch} of {E} (step {step}): nothing left to train, validating only"
        elif step >= last_step:
            where = (f"resumed at step {step} in epoch {start_epoch + (0 if skip else 1)} of {E}: optim.max_steps="
                     f"{cfg.optim.max_steps} reached, nothing left to train, validating only")
        elif skip:
            by = "optim.max_steps" if saved["extra"].get("stopped_by") == "max_steps" else "the time budget"
            where = (f"resumed in epoch {start_epoch + 1} of {E} at step {step}: {by} had stopped it after "
                     f"{skip} of {steps_per_epoch} batches, continuing with batch {skip + 1}")
        else:
            where = f"resumed after epoch {start_epoch} of {E} (step {step}): continuing with epoch {start_epoch + 1}"
        logger.info(where)
        if length_changes:
            logger.info(f"{'; '.join(length_changes)} for this resume (config.yaml updated)")
        if logger.dropped:
            logger.info(f"metrics.jsonl: dropped {logger.dropped} row(s) logged after step {step} (the part of an "
                        "epoch that was lost and is trained again)")
        if threads_were is not None:
            logger.info(f"using {torch.get_num_threads()} CPU threads as the run did (this process had {threads_were}): "
                        "CPU results depend on the thread count")
    ctx = StageContext(cfg, run, spec, model, train_set, val_set, logger, dist_env, resume)
    logger.info(f"stage {stage.name}: method {cfg.method} ({cfg.preset}), {n_params:,} parameters ({n_trainable:,} trainable), "
                f"device {device}, {dist_env.world_size} process(es), {torch.get_num_threads()} thread(s), "
                f"deterministic {'on' if device.type == 'cpu' or deterministic else 'off'}, {len(train_set)} train / "
                f"{len(val_set) if val_set is not None else 0} val frames")
    for cb in stage.callbacks:
        cb.on_start(ctx)

    def run_validation() -> dict[str, Any]:
        nonlocal val_seconds
        t = time.perf_counter()
        scores = validate(model, val_set, stage.evaluators(spec, cfg), device, dist_env, infer=stage.infer, amp=amp)
        val_seconds += time.perf_counter() - t
        return scores

    # Time budget: wall clock of this call from here on, validations and checkpoints included. The
    # step that crosses it is the last; the final validation and checkpoint then still run.
    t_start = time.perf_counter()
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
    out_of_time = False
    val_seconds = 0.0
    last_val: dict[str, Any] | None = None
    epochs_done = start_epoch
    bs = cfg.optim.batch_size
    at_end = step >= last_step
    refit = cfg.fit_to_budget and per_step and math.isfinite(budget)
    steps_at_start, validations = step, 0

    def refit_length(when: str, into_epoch: int, validation_due: bool) -> None:
        """fit_to_budget: the run's length re-fitted to the time left (:func:`_refit_length`)."""
        nonlocal cfg, last_step, at_end
        seconds = dist_env.all_sum(np.array([time.perf_counter() - t_start, val_seconds])) / dist_env.world_size
        done = step - steps_at_start
        new_last = _refit_length(cfg, step, done, float(seconds[0]), float(seconds[1]), validations, budget,
                                 steps_per_epoch, len(val_set) if val_set is not None else 0, validation_due, into_epoch)
        if new_last == last_step:
            return
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(
            cfg.optim, max_steps=new_last, epochs=max(math.ceil(new_last / steps_per_epoch), epoch + 1)))
        scheduler.shape.total = max(new_last, 1)
        logger.info(f"{when}: {(float(seconds[0]) - float(seconds[1])) / max(done, 1):.3f} s a step so far; length "
                    f"re-fitted to the time left: {new_last} steps (was {last_step}), {cfg.optim.epochs} epochs")
        last_step = new_last
        at_end = step >= last_step
        bar.update(task, total=max(last_step - steps_at_start, 0))
        if is_main:
            _record_length(run, cfg)

    with _progress(progress and is_main) as bar:
        task = bar.add_task(stage.name, total=max(last_step - step, 0), loss="-")
        epoch = start_epoch
        while epoch < cfg.optim.epochs:  # the length can be re-fitted (fit_to_budget) at an epoch's end
            if at_end:
                break
            first = skip if epoch == start_epoch else 0  # batches of this epoch done before a time-budget stop
            train_set.set_epoch(epoch)
            seed_step(cfg.seed, epoch, -1, dist_env.rank)  # the DataLoader's worker seeds come from here
            order = epoch_order(len(train_set), cfg.seed, epoch)
            mine = order[dist_env.rank :: dist_env.world_size]
            if dist_env.enabled:  # equal step counts on every process
                mine = (mine * math.ceil(per_rank / max(len(mine), 1)))[:per_rank]
            loader = torch.utils.data.DataLoader(train_set, batch_size=bs, sampler=mine[first * bs:],
                                                 num_workers=cfg.data.num_workers, collate_fn=collate)
            model.train()
            bar.update(task, description=f"{stage.name} epoch {epoch + 1}/{cfg.optim.epochs}")
            batches = first
            for i, batch in enumerate(loader, start=first):
                seed_step(cfg.seed, epoch, i, dist_env.rank)
                batch = move_to(batch, device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    outputs = train_model(batch)
                    losses = stage.losses(model, outputs, batch)
                total = sum(losses.values())
                finite = bool(torch.isfinite(total.detach()))
                if dist_env.broadcast_flag(not finite):
                    kind = ("NaN" if bool(torch.isnan(total.detach())) else "infinite") if not finite else "non-finite on another process"
                    kept = (f"the last good checkpoint is kept in {run / LAST}" if (run / LAST).is_file()
                            else "no checkpoint was written (none had finished an epoch)")
                    msg = (f"loss became {kind} at epoch {epoch + 1}, step {step + 1} "
                           f"({', '.join(f'{k}={float(v.detach()):.4g}' for k, v in losses.items())}); "
                           f"{kept}. Lower optim.lr or check the data.")
                    logger.info(msg)
                    logger.close()
                    raise TrainingDiverged(msg)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if cfg.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                optimizer.step()
                if per_step:
                    scheduler.step()
                step += 1
                batches = i + 1
                loss_value = float(total.detach())
                bar.update(task, advance=1, loss=f"{loss_value:.3f}")
                if step % max(cfg.log_every, 1) == 0 or step == 1:
                    logger.record("train", step, {"epoch": epoch + 1, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                                                  **{k: float(v.detach()) for k, v in losses.items()}})
                if step >= last_step:
                    at_end = True
                    break
                if refit and step == max(cfg.optim.warmup_steps, 10) and step - steps_at_start >= 10:
                    # the cosine starts here: its length from this run's own steps (the warm-up's do not depend on it)
                    refit_length(f"end of the warm-up (step {step})", batches, False)
                    if at_end:
                        break
                if dist_env.broadcast_flag(time.perf_counter() - t_start > budget):
                    out_of_time = True
                    break
            cut = batches < steps_per_epoch  # the budget or max_steps stopped this epoch: a longer resume finishes it
            if not cut and not per_step:
                scheduler.step()
            epochs_done = epoch + 1
            if refit and not at_end and not out_of_time:
                refit_length(f"epoch {epoch + 1}", 0,
                             val_set is not None and cfg.val_every > 0 and (epoch + 1) % cfg.val_every == 0)
            validate_now = val_set is not None and (
                (cfg.val_every > 0 and (epoch + 1) % cfg.val_every == 0) or epoch + 1 == cfg.optim.epochs or at_end
                or out_of_time)
            if validate_now:
                last_val = run_validation()
                validations += 1
                logger.record("val", step, {"epoch": epoch + 1, **{k: v for k, v in last_val.items()
                                                                   if isinstance(v, (int, float)) and k != "frames"}})
                logger.info(f"epoch {epoch + 1}: val {_summary(stage, last_val)}")
            if is_main:
                improved = validate_now and last_val is not None and last_val[metric] > best
                if improved:
                    best = last_val[metric]
                save_checkpoint(run / LAST, model, optimizer, scheduler, epoch, step,
                                {"stage": stage.name, "best_metric": metric, "best": best, "truncated": cut,
                                 "stopped_by": "max_steps" if at_end else ("time" if out_of_time else "epoch"),
                                 "epoch_batches": batches, "threads": torch.get_num_threads(),
                                 "deterministic": bool(deterministic)})
                if improved:
                    shutil.copyfile(run / LAST, run / (BEST + ".tmp"))
                    os.replace(run / (BEST + ".tmp"), run / BEST)
            dist_env.barrier()
            if out_of_time:
                logger.info(f"time budget of {cfg.max_minutes} min reached after epoch {epoch + 1}"
                            + (f" (batch {batches} of {steps_per_epoch}; a resume finishes the epoch)" if cut else ""))
                break
            epoch += 1

    if last_val is None and val_set is not None:  # nothing left to train (e.g. resuming a finished run)
        last_val = run_validation()
    seconds = time.perf_counter() - t_start
    result: dict[str, Any] = {
        "stage": stage.name, **{f"{stage.val_prefix}{k}": v for k, v in (last_val or {}).items()},
        "epochs_completed": epochs_done, "steps": step, "seconds": seconds, "train_seconds": seconds - val_seconds,
        "val_seconds": val_seconds, "stopped_by_time": out_of_time, "parameters": n_params,
        "trainable_parameters": n_trainable, "train_frames": len(train_set),
        "val_frames": len(val_set) if val_set is not None else 0,
        "threads": torch.get_num_threads(), "deterministic": device.type == "cpu" or bool(deterministic),
    }
    for cb in stage.callbacks:
        cb.on_end(ctx, result)
    if is_main:
        from occ_core.utils.atomic import write_json

        write_json(run / "final_metrics.json", result)
    logger.close()
    return result


def train_stages(cfg: TrainConfig, run: str | Path, stages: list[Stage], resume: bool = False, progress: bool = True,
                 init_from: str | Path | None = None,
                 resumed: Callable[[TrainConfig], TrainConfig] | None = None,
                 deterministic: bool | None = None,
                 announce: Callable[[Path], None] | None = None) -> list[dict[str, Any]]:
    """Train ``stages`` one after the other: stage ``k`` in ``RUN/<k+1>-<name>/`` (a normal run folder),
    initialised from stage ``k-1``'s last checkpoint (the first from ``init_from``). With ``resume``, a
    stage whose folder has a checkpoint is resumed (a finished one only re-validates) and the next ones
    follow as usual; ``resumed`` (e.g. a new time budget) is applied to a resumed stage's stored config.
    ``load_run_config`` / ``load_model`` of ``RUN`` find its last trained stage (:func:`resolve_run`).
    ``deterministic`` is passed to every stage's :func:`train`, ``announce`` to the first one's (called
    with ``RUN``). Returns each stage's result."""
    run = Path(run)
    results: list[dict[str, Any]] = []
    previous = init_from
    for k, stage in enumerate(stages):
        sub = run / f"{k + 1}-{stage.name}"
        again = resume and (sub / LAST).is_file()
        said = (lambda _sub: announce(run)) if announce is not None and k == 0 else None
        if again:
            stored = load_run_config(sub)
            results.append(train(resumed(stored) if resumed else stored, sub, resume=True, progress=progress, stage=stage,
                                 deterministic=deterministic, announce=said))
        else:
            results.append(train(cfg, sub, progress=progress, init_from=previous, stage=stage,
                                 deterministic=deterministic, announce=said))
        previous = sub / LAST
    return results

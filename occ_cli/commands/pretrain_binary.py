"""`occ pretrain-binary`: pre-train the binary occupancy module of B2S on binary occupancy only."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from occ_cli.console import console, user_errors


RESUME_OPTIONS = ("--resume", "--epochs", "--max-minutes", "--deterministic")
"""The options 'occ pretrain-binary --resume' applies; every other option given with it is refused."""


@user_errors
def pretrain_binary_command(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data folder (written by 'occ prepare'); not with --resume."),
    out: Path = typer.Option(Path("runs"), "--out", help="Folder that receives the run folder."),
    method: Optional[str] = typer.Option(None, "--method", help="A method with a binary occupancy module (b2s). [default: b2s]"),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset: tiny (2 CPU cores, minutes) or paper. [default: tiny]"),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a config field, e.g. --set optim.lr=1e-4 (repeatable)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (full or partial) applied on top of the preset."),
    label_fraction: Optional[float] = typer.Option(
        None, "--label-fraction",
        help="Keep semantic labels on this fraction of the training frames (the rest are binary-only); the split "
             "is recorded in RUN/label_split.json. Shortcut for --set data.label_fraction=F."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after this many minutes (a checkpoint is still written)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Shortcut for --set optim.epochs=N; with --resume, the run's new length."),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name (default: METHOD-binary-PRESET-TIMESTAMP)."),
    resume: Optional[Path] = typer.Option(
        None, "--resume",
        help="Continue a killed or finished pre-training run folder from its last checkpoint, in place, with its "
             "config.yaml: only --epochs (written to config.yaml), --max-minutes and --deterministic may be given with it."),
    deterministic: bool = typer.Option(
        False, "--deterministic",
        help="Deterministic CUDA kernels (as in 'occ train --deterministic'); always on on CPU; with --resume, on from there."),
) -> None:
    """Pre-train the binary occupancy module on every training frame that has binary occupancy: the
    semantic target's occupied voxels (class > 0), or LiDAR scans accumulated along the poses for frames
    with no target. Loss: binary cross-entropy + geometry scene-class affinity. Then fine-tune with
    'occ train --method b2s --init RUN --set data.label_fraction=F'. Same engine as 'occ train': --resume,
    torchrun, bfloat16 on CUDA, --max-minutes counts validation."""
    import time

    from occ_core.engine.config import build_config
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.pretrain import BINARY_PRETRAIN_STAGE, check_config
    from occ_core.engine.trainer import new_run_dir, train
    from occ_core.errors import OccError

    if resume is not None:  # a resumed run keeps its config; only its length and the time budget may change
        from occ_cli.commands.train import refuse_with_resume, resumed_config
        from occ_core.engine.trainer import load_run_config

        refuse_with_resume(ctx, RESUME_OPTIONS)
        cfg = resumed_config(load_run_config(resume), epochs, max_minutes)
        check_config(cfg)
        run_dir = resume
    else:
        if data is None:
            raise OccError("--data is required (a folder written by 'occ prepare'), or --resume RUN")
        extra = list(overrides or [])
        extra.append(f"data.root={data.resolve()}")
        if label_fraction is not None:
            if not 0.0 <= label_fraction <= 1.0:
                raise OccError(f"--label-fraction must be in [0, 1] (got {label_fraction})")
            extra.append(f"data.label_fraction={label_fraction}")
        if max_minutes is not None:
            extra.append(f"max_minutes={max_minutes}")
        if epochs is not None:
            extra.append(f"optim.epochs={epochs}")
        cfg = build_config(method or "b2s", preset or "tiny", config, extra)
        check_config(cfg)
        PreparedDataset(data)  # a clear error before anything is written
        run_dir = new_run_dir(out, cfg.method, cfg.preset, name or f"{cfg.method}-binary-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    # pretrain_binary() is train() with the binary stage; called directly to pass --deterministic
    from occ_cli.commands.train import announce_run

    result = train(cfg, run_dir, resume=resume is not None, stage=BINARY_PRETRAIN_STAGE,
                   deterministic=True if deterministic else None, announce=announce_run)
    val = f": val binary IoU {result['val_iou']:.2f}" if "val_iou" in result else " (no validation frames with binary occupancy)"
    console.print(f"[green]done[/] {result['epochs_completed']} epochs, {result['steps']} steps on {result['train_frames']} frames "
                  f"({result['lidar_frames']} from LiDAR) in {result['seconds'] / 60:.1f} min"
                  f"{' (time budget reached)' if result['stopped_by_time'] else ''}{val} -> {run_dir}")
    console.print(f"next: occ train --method {cfg.method} --init {run_dir} --data DATA [--set data.label_fraction=F] "
                  "(fine-tune on the semantic labels)", highlight=False, soft_wrap=True)

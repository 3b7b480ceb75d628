"""`occ quickstart`: generate, prepare, train, evaluate on the built-in synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from occ_cli.console import console, user_errors
from occ_core.quickstart import QUICKSTART_METHOD, QUICKSTART_MINUTES  # plain constants: imports no torch


@user_errors
def quickstart_command(
    out: Path = typer.Option(Path("quickstart"), "--out", help="Folder for the data, the run and the results."),
    method: str = typer.Option(QUICKSTART_METHOD, "--method", help="Method to train (default: the one that learns best in the budget, docs/results.md)."),
    preset: str = typer.Option("tiny", "--preset", help="Preset of the method."),
    train_minutes: float = typer.Option(QUICKSTART_MINUTES, "--train-minutes", help="Training time budget in minutes (the run's length in steps is fitted to it)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Synthetic frames per sequence (default: the built-in size)."),
    sequences: Optional[str] = typer.Option(None, "--sequences", help="Comma-separated synthetic sequences; 08 is val (default: 00-05 and 08)."),
    workers: int = typer.Option(2, "--workers", help="Processes for data generation and preparation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and the training."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Config override for training (repeatable)."),
) -> None:
    """The whole pipeline in one command (12-15 minutes on 2 CPU cores): synthetic data ->
    prepare -> train the baseline tiny -> evaluate -> table beside the per-voxel prior. Rerunning reuses finished stages."""
    from occ_cli.commands.eval import print_results
    from occ_core.quickstart import quickstart

    from occ_cli.console import parse_list

    res = quickstart(out, method, preset, train_minutes, frames, parse_list(sequences), workers, seed, list(overrides or []),
                     log=lambda m: console.print(f"[bold]{m}[/]"))
    print_results(res["metrics"])
    m = res["metrics"]
    for name, r in m.get("references", {}).items():
        console.print(f"reference {name:16s} IoU {r['iou']:6.2f}  mIoU {r['miou']:6.2f}   "
                      f"(model: IoU {m['iou'] - r['iou']:+.2f}, mIoU {m['miou'] - r['miou']:+.2f})")
    st = res["metrics"]["stages"]
    console.print(f"[green]done[/] in {st['total_s'] / 60:.1f} min (generate {st['generate_s']:.0f} s, prepare "
                  f"{st['prepare_s']:.0f} s, train {st['train_s']:.0f} s, eval {st['eval_s']:.0f} s); run folder {res['run']}")

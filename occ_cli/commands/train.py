"""`occ train`: train a registered method on prepared data."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from occ_cli.console import console, user_errors


def _methods_help() -> str:
    from occ_core.registry import available_methods

    methods = available_methods()
    return "Method to train: " + "; ".join(f"{n} ({s.description})" for n, s in sorted(methods.items()))


RESUME_OPTIONS = ("--resume", "--epochs", "--max-minutes", "--deterministic")
"""The options 'occ train --resume' applies; every other option given with it is refused (refuse_with_resume)."""


@user_errors
def train_command(
    ctx: typer.Context,
    method: Optional[str] = typer.Option(None, "--method", help=_methods_help() + " [default: vpocc]", show_default=False),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data folder (written by 'occ prepare')."),
    out: Path = typer.Option(Path("runs"), "--out", help="Folder that receives the run folder."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preset: tiny (2 CPU cores, minutes) or paper (the published setting). [default: tiny]"),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a config field, e.g. --set optim.lr=1e-4 (repeatable)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (full or partial) applied on top of the preset."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after this many minutes (checkpoint and validation still run)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name (default: METHOD-PRESET-TIMESTAMP)."),
    resume: Optional[Path] = typer.Option(
        None, "--resume",
        help="Continue a killed or finished run folder from its last checkpoint, in place, with its config.yaml: only "
             "--epochs (written to config.yaml), --max-minutes and --deterministic may be given with it."),
    init: Optional[Path] = typer.Option(None, "--init", help="Initialise the weights from another run (matching parameters only)."),
    vp: Optional[Path] = typer.Option(None, "--vp", help="Folder of VPOcc-format vanishing points (seq_XX.json)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Shortcut for --set optim.epochs=N; with --resume, the run's new length."),
    deterministic: bool = typer.Option(
        False, "--deterministic",
        help="Deterministic CUDA kernels (cuDNN deterministic, no benchmark, torch deterministic algorithms, warn-only); "
             "always on on CPU. Recorded in the checkpoint, so --resume keeps it; with --resume, on from there."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config with each field's meaning, and exit."),
) -> None:
    """Train a method. The run folder holds config.yaml, checkpoints (safetensors), metrics.jsonl,
    TensorBoard logs and train.log; 'occ eval --run', 'occ predict' and 'occ export' take it. A two-stage
    method (cigocc) trains its stages in RUN/1-<stage>/, RUN/2-<stage>/ (model.stages picks them; stage 2
    starts from stage 1), and the commands that take RUN use its last trained stage.
    Multi-GPU / multi-node: launch with torchrun --nproc_per_node N -m occ_cli.main train ..."""
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import load_run_config, new_run_dir, train
    from occ_core.errors import OccError

    if resume is not None:
        refuse_with_resume(ctx, RESUME_OPTIONS)
    method, preset = method or "vpocc", preset or "tiny"
    extra = list(overrides or [])
    if data is not None:
        extra.append(f"data.root={data.resolve()}")
    if max_minutes is not None:
        extra.append(f"max_minutes={max_minutes}")
    if vp is not None:
        extra.append(f"data.vp_dir={vp.resolve()}")
    if epochs is not None:
        extra.append(f"optim.epochs={epochs}")

    if resume is not None:  # a resumed run keeps its config; only its length and the time budget may change
        cfg = resumed_config(load_run_config(resume), epochs, max_minutes)
        run_dir = resume
    else:
        cfg = build_config(method, preset, config, extra)
        if print_config:
            _print_config(cfg)
            return
        if not cfg.data.root:
            raise OccError("--data is required (a folder written by 'occ prepare')")
        run_dir = new_run_dir(out, cfg.method, cfg.preset, name)
    stages = method_stages(cfg)
    if stages is not None:  # a multi-stage method (cigocc): RUN/<k>-<stage>/, each stage from the previous one
        result = train_staged(cfg, run_dir, stages, resume is not None, init, epochs, max_minutes,
                              True if deterministic else None)
    else:
        result = train(cfg, run_dir, resume=resume is not None, init_from=init, deterministic=True if deterministic else None,
                       announce=announce_run)
    console.print(f"[green]done[/] {result['epochs_completed']} epochs, {result['steps']} steps in {result['seconds'] / 60:.1f} min"
                  f"{' (time budget reached)' if result['stopped_by_time'] else ''}: "
                  f"val IoU {result['iou']:.2f}  mIoU {result['miou']:.2f}  -> {run_dir}")
    console.print(f"next: occ eval --run {run_dir} (score a split with its best checkpoint), occ predict --run {run_dir} "
                  "--out PRED, occ render --run ..., occ export --run ...", highlight=False, soft_wrap=True)


def announce_run(run: Path) -> None:
    """The run folder, printed by the engine once config, data and model are accepted (before it is written),
    so that a refused run prints its error line alone."""
    console.print(f"[bold]run[/] {run}")


def method_stages(cfg):
    """The engine stages of a multi-stage method (its module's ``training_stages(cfg)``), or None."""
    from occ_core.registry import get_method

    fn = getattr(get_method(cfg.method).load(), "training_stages", None)
    return fn(cfg) if fn is not None else None


def train_staged(cfg, run_dir: Path, stages, resume: bool, init: Optional[Path], epochs: Optional[int],
                 max_minutes: Optional[float], deterministic: Optional[bool] = None) -> dict:
    """Train the stages with :func:`occ_core.engine.trainer.train_stages` (stage k in RUN/<k>-<name>/); a
    --resume of one stage folder continues that stage. Returns the last stage's result."""
    import dataclasses

    from occ_core.engine.checkpoint import load_checkpoint
    from occ_core.engine.trainer import LAST, data_root, stage_folders, train, train_stages

    if resume and not stage_folders(run_dir):  # --resume RUN/<k>-<name>: that stage alone
        name = load_checkpoint(run_dir / LAST)["extra"].get("stage") if (run_dir / LAST).is_file() else None
        stage = next((s for s in stages if s.name == name), stages[0])
        return train(cfg, run_dir, resume=True, stage=stage, deterministic=deterministic, announce=announce_run)
    # data.root absolute in memory: each stage stores it relative to its own folder
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(data_root(cfg, run_dir))))
    results = train_stages(cfg, run_dir, stages, resume=resume, init_from=init,
                           resumed=(lambda c: resumed_config(c, epochs, max_minutes)) if resume else None,
                           deterministic=deterministic, announce=announce_run)
    for r in results[:-1]:
        console.print(f"stage {r['stage']}: {r['epochs_completed']} epochs, val IoU {r.get('iou', float('nan')):.2f}  "
                      f"mIoU {r.get('miou', float('nan')):.2f}")
    return results[-1]


def given_options(ctx) -> list[str]:
    """The options of ``ctx``'s command that the user gave (on the command line or through an environment
    variable), as their first spelling (``--set``, ``--out``), in the command's order; defaults do not count."""
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name else None
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT") and param.opts:
            given.append(param.opts[0])
    return given


def refuse_with_resume(ctx, allowed: tuple[str, ...]) -> None:
    """One line naming every option given with --resume that it does not apply: a resumed run continues in
    its own folder with its own config.yaml, so everything but ``allowed`` (the run's length, the time budget,
    deterministic kernels) is refused rather than silently ignored. A whitelist: an option added to the
    command later is refused with --resume until it is made to apply."""
    from occ_core.errors import OccError

    bad = [opt for opt in given_options(ctx) if opt not in allowed]
    if bad:
        can = [opt for opt in allowed if opt != "--resume"]
        raise OccError(f"--resume continues a run in its own folder with its own config.yaml; {', '.join(bad)} "
                       f"cannot be combined with it (only {', '.join(can[:-1])} and {can[-1]} can; start a new run, "
                       "or use --init RUN in 'occ train' to start one from its weights)")


def resumed_config(cfg, epochs: Optional[int], max_minutes: Optional[float]):
    """The stored config of a resumed run with the new length (--epochs) and time budget (--max-minutes)."""
    import dataclasses

    from occ_core.errors import OccError

    if max_minutes is not None:
        cfg = dataclasses.replace(cfg, max_minutes=max_minutes)
    if epochs is not None:
        if epochs < 1:
            raise OccError(f"--epochs must be at least 1 (got {epochs})")
        if epochs != cfg.optim.epochs:
            console.print(f"--epochs {epochs} applied to the resumed run (config.yaml had {cfg.optim.epochs})")
        if cfg.optim.max_steps > 0:  # e.g. a quickstart run: --epochs is the new length, whole epochs
            console.print(f"--epochs {epochs}: the run's optim.max_steps={cfg.optim.max_steps} no longer ends it "
                          "(set to 0)")
        if cfg.fit_to_budget:  # the quickstart's: the length followed the time budget
            console.print(f"--epochs {epochs}: the run's length no longer follows its time budget "
                          "(fit_to_budget set to false)")
        cfg = dataclasses.replace(cfg, fit_to_budget=False,
                                  optim=dataclasses.replace(cfg.optim, epochs=epochs, max_steps=0))
    return cfg


def _print_config(cfg) -> None:
    from rich.table import Table

    from occ_core.config import describe

    table = Table(title=f"{cfg.method} ({cfg.preset})")
    table.add_column("key")
    table.add_column("value")
    table.add_column("meaning")
    for key, value, doc in describe(cfg):
        table.add_row(key, repr(value), doc)
    console.print(table)

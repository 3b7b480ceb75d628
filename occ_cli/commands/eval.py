"""`occ eval`: score predictions against a prepared dataset with its benchmark's metric (the spec's
``metric``: SemanticKITTI SSC, Occ3D mIoU + RayIoU, OpenOccupancy / SurroundOcc)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from occ_cli.console import console, user_errors

DATA_HELP = "Prepared data folder (written by 'occ prepare')."
PRED_HELP = ("Prediction folder: sequences/XX/predictions/NNNNNN.label (uint16 raw SemanticKITTI ids, the "
             "submission format) or NNNNNN.npy (class indices) for SemanticKITTI-family data; "
             "<scene>/<sample token>/labels.npz ('semantics' in the dataset's own ids) for nuScenes-family data.")
SPLIT_HELP = "Split to score: train, val, test or all (only labeled frames are scored)."
JSON_HELP = "Also write the results as JSON to this file."
FOV_HELP = "Count only voxels in the cameras' field of view (SemanticKITTI-family data)."
CAMERA_MASK_HELP = ("Occ3D: count only voxels whose mask_camera is set (the benchmark setting, default); "
                    "--no-camera-mask scores every voxel.")
RAYIOU_HELP = "Occ3D: also compute SparseOcc's RayIoU (about 0.4 s per sample on one core); --no-rayiou skips it."
MISSING_HELP = "Score frames without a prediction as all-empty instead of failing (listed as 'missing')."


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def _opt(value: float | None) -> str:
    return "-" if value is None else _fmt(value)


def print_nuscenes_results(results: dict[str, Any]) -> None:
    """Rich tables of the Occ3D / OpenOccupancy scores: per class IoU (and RayIoU), then the summary."""
    from rich.table import Table

    occ3d = results.get("metric") == "occ3d"
    where = "camera mask" if results.get("camera_mask") else "all voxels"
    title = f"{results.get('dataset')} {results['split']}: {results['frames']} samples, {results['metric']} metric"
    if occ3d:
        title += f" ({where})"
    console.print(f"[bold]{title}[/]", soft_wrap=True, highlight=False)
    ray = results.get("rayiou_per_class")
    classes = Table()
    classes.add_column("class")
    classes.add_column("IoU %", justify="right")
    thresholds = list(next(iter(ray.values())).keys()) if ray else []
    for t in thresholds:
        classes.add_column(f"RayIoU@{t} %", justify="right")
    for name, iou in results["per_class"].items():
        row = [name, _opt(iou)] + ([_opt(ray[name][t]) for t in thresholds] if ray else [])
        classes.add_row(*row)
    console.print(classes)
    summary = Table(show_header=True)
    cols = [("mIoU %", "miou"), ("IoU %", "iou"), ("precision %", "precision"), ("recall %", "recall")]
    if ray:
        cols += [("RayIoU %", "rayiou")] + [(f"@{t} %", f"rayiou_{t}") for t in thresholds]
    for col, _ in cols:
        summary.add_column(col, justify="right")
    summary.add_row(*(_fmt(results[k]) for _, k in cols), style="bold")
    console.print(summary)
    notes = []
    if occ3d:
        notes.append(f"mIoU/IoU over voxels: {where}" + ("" if results.get("camera_mask") else
                                                          " (--no-camera-mask; the benchmark uses the camera mask)"))
        if ray:
            notes.append(f"RayIoU: {results['rays']} rays with a true hit, no camera mask")
    if results.get("absent"):
        notes.append(f"not in target or prediction, left out of the mean: {', '.join(results['absent'])}")
    for note in notes:
        console.print(note, soft_wrap=True, highlight=False)
    missing = results.get("missing") or []
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        console.print(f"[yellow]{len(missing)} sample(s) had no prediction and were scored as empty:[/] {shown}")


def print_results(results: dict[str, Any]) -> None:
    """Rich tables: per-class IoU, the summary scores, and the per-distance breakdown."""
    from rich.table import Table

    if results.get("metric") in ("occ3d", "openoccupancy"):
        print_nuscenes_results(results)
        return

    title = f"{results.get('dataset', 'semantickitti')} {results['split']}: {results['frames']} frames"
    if results.get("fov_only"):
        title += " (camera field of view only)"
    console.print(f"[bold]{title}[/]", soft_wrap=True, highlight=False)
    classes = Table()
    classes.add_column("class")
    classes.add_column("IoU %", justify="right")
    for name, iou in results["per_class"].items():
        classes.add_row(name, _fmt(iou))
    console.print(classes)

    summary = Table(show_header=True)
    for col in ("IoU %", "precision %", "recall %", "mIoU %"):
        summary.add_column(col, justify="right")
    summary.add_row(*(_fmt(results[k]) for k in ("iou", "precision", "recall", "miou")), style="bold")
    console.print(summary)

    bands = results.get("per_distance") or {}
    if bands:
        console.print("[bold]by forward distance[/] (x of the voxel centre from the sensor)", soft_wrap=True)
        dist = Table()
        dist.add_column("band")
        dist.add_column("IoU %", justify="right")
        dist.add_column("mIoU %", justify="right")
        for label, s in bands.items():
            dist.add_row(label, _fmt(s["iou"]), _fmt(s["miou"]))
        console.print(dist)

    missing = results.get("missing") or []
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        console.print(f"[yellow]{len(missing)} frame(s) had no prediction and were scored as empty:[/] {shown}")


RUN_HELP = "Run folder (written by 'occ train'): predict the split with its best checkpoint and score it in one step."
CKPT_HELP = "With --run: 'best' (default; falls back to 'last'), 'last', or a checkpoint file."


@user_errors
def eval_command(
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP + " With --run: defaults to the run's data."),
    split: str = typer.Option("val", "--split", help=SPLIT_HELP),
    pred: Optional[Path] = typer.Option(None, "--pred", help=PRED_HELP),
    run: Optional[Path] = typer.Option(None, "--run", help=RUN_HELP),
    checkpoint: str = typer.Option("best", "--checkpoint", help=CKPT_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
    fov_only: bool = typer.Option(False, "--fov-only", help=FOV_HELP),
    camera_mask: bool = typer.Option(True, "--camera-mask/--no-camera-mask", help=CAMERA_MASK_HELP),
    rayiou: bool = typer.Option(True, "--rayiou/--no-rayiou", help=RAYIOU_HELP),
    allow_missing: bool = typer.Option(False, "--allow-missing", help=MISSING_HELP),
    device: str = typer.Option("auto", "--device", help="With --run: auto, cpu or cuda."),
) -> None:
    """Score predictions with the dataset's benchmark metric (percent): SemanticKITTI / KITTI-360 SSC
    (completion IoU, precision, recall, per-class IoU, mIoU, by forward distance), Occ3D-nuScenes (mIoU
    with the camera mask, geometry IoU, RayIoU at 1/2/4 m), OpenOccupancy / SurroundOcc (IoU, mIoU).

    Either --data and --pred (a prediction folder), or --run (predict and score in one step)."""
    from occ_core.errors import OccError

    if (pred is None) == (run is None):
        raise OccError("give either --pred (with --data) or --run")
    if json_out is not None:
        from occ_core.utils.paths import output_file

        output_file(json_out, "results file")  # checked before any work
    if run is not None:
        from occ_core.engine.evaluate import evaluate_run

        results = evaluate_run(run, data, split=split, fov_only=fov_only, device=device, checkpoint=checkpoint,
                               camera_mask=camera_mask, rayiou=rayiou)
    else:
        if data is None:
            raise OccError("--pred needs --data (the prepared folder)")
        from occ_core.metrics.evaluate import evaluate_predictions

        results = evaluate_predictions(data, pred, split=split, fov_only=fov_only, allow_missing=allow_missing,
                                       camera_mask=camera_mask, rayiou=rayiou)
    report(results, json_out)


def report(results: dict[str, Any], json_out: Optional[Path] = None) -> None:
    """Print the tables and write the JSON; shared with future sources of predictions (--run)."""
    from occ_core.metrics.evaluate import write_results

    print_results(results)
    if json_out is not None:
        write_results(json_out, results)
        console.print(f"[green]wrote[/] {json_out}")

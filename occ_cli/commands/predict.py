"""`occ predict`: write a run's predictions in the SemanticKITTI submission layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from occ_cli.console import console, user_errors


@user_errors
def predict_command(
    run: Path = typer.Option(..., "--run", help="Run folder (written by 'occ train')."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data folder (default: the run's data)."),
    split: str = typer.Option("val", "--split", help="Split to predict: train, val, test or all (all frames, labeled or not)."),
    out: Path = typer.Option(..., "--out", help="Output folder: sequences/XX/predictions/NNNNNN.label (uint16 raw ids); Occ3D data: <scene>/<sample token>/labels.npz (semantics, uint8 Occ3D ids)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="'best' (falls back to 'last'), 'last', or a checkpoint file."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Predict every frame of a split and write the submission layout that 'occ eval --pred' reads.
    On a B2S auto-labelling run (model.mode=autolabel) every frame with binary occupancy is labelled and
    NNNNNN.confidence.npy (uint8, 255 x class probability) and NNNNNN.invalid (unknown voxels) are written too."""
    from occ_core.utils.paths import output_dir

    output_dir(out, "predictions folder")
    from occ_core.engine.predict import predict_to_folder
    from occ_core.models.backbone import quiet_random_init

    with quiet_random_init():  # the weights come from the run's checkpoint
        summary = predict_to_folder(run, out, data=data, split=split, device=device, checkpoint=checkpoint)
    console.print(f"[green]wrote[/] {summary['frames']} {'pseudo-labels (.label + .confidence.npy + .invalid)' if summary.get('pseudo_labels') else 'predictions'} -> {out}")

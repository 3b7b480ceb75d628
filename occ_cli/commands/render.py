"""`occ render`: pictures of a frame's ground truth and prediction rendered with Gaussian splatting."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from occ_cli.console import console, parse_list, user_errors

DATA_HELP = "Prepared data folder (written by 'occ prepare'). With --run: defaults to the run's data."
FRAME_HELP = "Frame to render, as SEQ/ID (e.g. 08/000000)."
PRED_HELP = ("Prediction folder in the submission layout: sequences/XX/predictions/NNNNNN.label (uint16 raw ids) "
             "or NNNNNN.npy (class indices 0..19).")
RUN_HELP = "Run folder (written by 'occ train'): predict the frame with its checkpoint."
VIEWS_HELP = "Comma-separated views: sensor (dataset camera, with an overlay on the image), bev, orbit."


@user_errors
def render_command(
    frame: str = typer.Option(..., "--frame", help=FRAME_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for the pictures."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    pred: Optional[Path] = typer.Option(None, "--pred", help=PRED_HELP),
    run: Optional[Path] = typer.Option(None, "--run", help=RUN_HELP),
    views: str = typer.Option("sensor,bev", "--views", help=VIEWS_HELP),
    gif: bool = typer.Option(False, "--gif/--no-gif", help="Also write an orbit animation (GIF)."),
    scale: float = typer.Option(1.0, "--scale", help="Render size relative to the full image / one pixel per voxel."),
    orbit_frames: int = typer.Option(36, "--orbit-frames", help="Frames of the orbit animation."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="With --run: best, last, or a checkpoint file."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (model and renderer)."),
) -> None:
    """Render a frame's ground truth and prediction (semantic and depth images in the SemanticKITTI
    palette, side by side, with a legend): from the dataset camera (overlaid on the camera image),
    a bird's-eye view and an orbit (--gif: animated)."""
    from occ_core.errors import OccError
    from occ_core.utils.paths import output_dir

    output_dir(out, "pictures folder")
    if pred is not None and run is not None:
        raise OccError("give --pred or --run, not both")
    if scale <= 0 or scale > 4:
        raise OccError(f"--scale must be in (0, 4], got {scale}")
    if orbit_frames < 1:
        raise OccError(f"--orbit-frames must be positive, got {orbit_frames}")
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.trainer import data_root, load_run_config, resolve_device
    from occ_core.render.views import frame_pictures, load_frame_prediction, predict_frame

    if data is None:
        if run is None:
            raise OccError("give --data (the prepared folder), or --run")
        data = data_root(load_run_config(run), run)
    prepared = PreparedDataset(data)
    fr = prepared.frame(frame)
    dev = resolve_device(device)
    grid = None
    if pred is not None:
        grid = load_frame_prediction(pred, fr, prepared)
    elif run is not None:
        from occ_core.models.backbone import quiet_random_init

        with quiet_random_init():  # the weights come from the run's checkpoint
            grid = predict_frame(run, fr, prepared, device=str(dev.type), checkpoint=checkpoint)
    paths = frame_pictures(prepared, fr.name, out, grid, views=parse_list(views) or [], gif=gif, scale=scale,
                           orbit_frames=orbit_frames, device=dev)
    for p in paths:
        console.print(f"[green]wrote[/] {p}", highlight=False, soft_wrap=True)

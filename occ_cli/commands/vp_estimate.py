"""`occ vp-estimate`: a vanishing point per image_2 frame, in VPOcc's seq_XX.json format."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from occ_cli.console import console, parse_list, user_errors


@user_errors
def vp_estimate_command(
    data: Path = typer.Option(..., "--data", help="Raw dataset folder holding dataset/sequences/XX/ (the dataset/ or sequences/ folder itself is accepted)."),
    out: Path = typer.Option(..., "--out", help="Output folder for seq_XX.json (created; frames already there are skipped)."),
    method: str = typer.Option("lines", "--method", help="'lines': from the image alone (no calibration); 'pose': direction of travel from poses.txt through P2."),
    sequences: Optional[str] = typer.Option(None, "--sequences", help="Comma-separated sequences, e.g. 00,08 (default: all found)."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes (lines)."),
    force: bool = typer.Option(False, "--force/--no-force", help="Recompute frames that already have a vanishing point."),
) -> None:
    """Estimate the dominant vanishing point of every image_2 frame (VPOcc's format, full-image pixels)."""
    from occ_core.utils.paths import output_dir

    output_dir(out, "vanishing point folder")
    if workers < 1:
        from occ_core.errors import OccError

        raise OccError(f"--workers must be at least 1 (got {workers})")
    from occ_core.vp.estimate import estimate_vps

    s = estimate_vps(data, out, method=method, sequences=parse_list(sequences), workers=workers, force=force)
    notes = []
    if s.get("fallbacks"):
        notes.append(f"{s['fallbacks']} without enough lines (nearest frame's VP used)")
    if s.get("low_confidence"):
        notes.append(f"{s['low_confidence']} low-confidence (little straight edge at the VP)")
    if s.get("end_of_sequence"):
        notes.append(f"{s['end_of_sequence']} near a sequence end (previous motion)")
    if s.get("no_motion"):
        notes.append(f"{s['no_motion']} without motion (optical axis)")
    extra = f"; {', '.join(notes)}" if notes else ""
    console.print(
        f"[green]vanishing points[/] ({s['method']}) of {s['frames']} frames in sequences {', '.join(s['sequences'])}: "
        f"{s['estimated']} estimated, {s['skipped']} already done{extra}, {s['seconds']:.1f} s -> {out}",
        highlight=False, soft_wrap=True,
    )

"""`occ prepare`: convert raw datasets to the prepared layout, or generate the synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from occ_cli.console import console, parse_list, user_errors

app = typer.Typer(help="Prepare datasets: SemanticKITTI, SSCBench-KITTI360, or the built-in synthetic data.",
                  no_args_is_help=True)

ROOT_HELP = "Raw dataset folder."
OUT_HELP = "Output folder for the prepared data (created; reruns skip finished frames)."
SEQ_HELP = "Comma-separated sequences, e.g. 00,08 (default: all found)."
WORKERS_HELP = "Parallel worker processes."
FORCE_HELP = "Redo frames that are already prepared."
NUSCENES_HELP = "nuScenes root (holds v1.0-trainval/ or v1.0-mini/ and samples/)."
VERSION_HELP = "nuScenes tables: v1.0-trainval or v1.0-mini (default: whichever exists, trainval first)."
DEPTH_HELP = "Depth map per frame: lidar (the scan projected into the left image) or sgbm (OpenCV stereo matching of image_2/image_3)."
DEPTH_HELP_360 = "Depth map per frame: lidar (the scan projected into the left image) or sgbm (OpenCV stereo matching of the image_00/image_01 pair)."


def _check_out(out: Path, what: str = "prepared data folder") -> None:
    """The output-path rule, before any work (occ_core.utils.paths)."""
    from occ_core.utils.paths import output_dir

    output_dir(out, what)


def _report(summary: dict, out: Path) -> None:
    console.print(
        f"[green]prepared[/] {summary['frames']} frames ({summary['labeled']} labeled) of sequences "
        f"{', '.join(summary['sequences'])}: {summary['written']} written, {summary['skipped']} already done, "
        f"{summary['seconds']:.1f} s -> {out}"
    )


@app.command("kitti")
@user_errors
def kitti(
    root: Path = typer.Option(..., "--root", help=ROOT_HELP + " Holds dataset/sequences/XX/ (the dataset/ or sequences/ folder itself is accepted)."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    sequences: Optional[str] = typer.Option(None, "--sequences", help=SEQ_HELP),
    workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
    force: bool = typer.Option(False, "--force/--no-force", help=FORCE_HELP),
    depth: str = typer.Option("lidar", "--depth", help=DEPTH_HELP),
) -> None:
    """SemanticKITTI SSC (also the synthetic data): targets at 1:1..1:8, projections, depth, manifest."""
    _check_out(out)
    from occ_core.data.prepare.pipeline import prepare

    summary = prepare("kitti", root, out, sequences=parse_list(sequences), workers=workers, force=force, depth=depth)
    _report(summary, out)


@app.command("kitti360")
@user_errors
def kitti360(
    root: Path = typer.Option(..., "--root", help=ROOT_HELP + " Holds data_2d_raw/2013_05_28_drive_00XX_sync/."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    sequences: Optional[str] = typer.Option(None, "--sequences", help=SEQ_HELP),
    workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
    force: bool = typer.Option(False, "--force/--no-force", help=FORCE_HELP),
    depth: str = typer.Option("lidar", "--depth", help=DEPTH_HELP_360),
) -> None:
    """SSCBench-KITTI360: same outputs as 'kitti', with its 19 classes and splits."""
    _check_out(out)
    from occ_core.data.prepare.pipeline import prepare

    summary = prepare("kitti360", root, out, sequences=parse_list(sequences), workers=workers, force=force, depth=depth)
    _report(summary, out)


@app.command("synthetic")
@user_errors
def synthetic(
    out: Path = typer.Option(..., "--out", help="Folder to write the raw synthetic dataset to (SemanticKITTI layout)."),
    sequences: Optional[str] = typer.Option(None, "--sequences", help="Comma-separated sequences (default: the built-in set; 08 is val)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Voxel frames per sequence (default: the built-in size)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical files."),
    workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
    prepared: Optional[Path] = typer.Option(None, "--prepared", help="Also prepare the result into this folder ('occ prepare kitti', or 'occ prepare occ3d' with --layout nuscenes)."),
    cameras: int = typer.Option(1, "--cameras", help="Cameras per frame: 1 (the stereo pair image_2/image_3, as in KITTI) or 3 (also the side cameras image_4 and image_5, yawed 55 deg left and right)."),
    force: bool = typer.Option(False, "--force/--no-force", help="Regenerate every frame, also when the folder was generated with another --seed, --frames or --cameras (recorded in synthetic.json)."),
    layout: str = typer.Option("kitti", "--layout", help="kitti (the raw SemanticKITTI layout) or nuscenes (a nuScenes v1.0-mini dataset with six cameras, LIDAR_TOP and Occ3D gts/; --frames is then the samples per scene)."),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="--layout nuscenes: comma-separated v1.0-mini scene names (default: scene-0061,scene-0553,scene-0655 (mini_train) and scene-0103 (mini_val))."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="--layout nuscenes: camera image size WIDTHxHEIGHT (default 400x225, a quarter of nuScenes' 1600x900)."),
) -> None:
    """Generate the built-in synthetic driving dataset (raw SemanticKITTI layout, or nuScenes + Occ3D)."""
    _check_out(out, "synthetic dataset folder")
    if prepared is not None:
        _check_out(prepared, "--prepared folder")
    if layout not in ("kitti", "nuscenes"):
        from occ_core.errors import OccError

        raise OccError(f"--layout must be kitti or nuscenes (got '{layout}')")
    if layout == "nuscenes":
        from occ_core.errors import OccError

        if sequences is not None or cameras != 1:
            raise OccError("--layout nuscenes takes --scenes (v1.0-mini scene names) and always writes six cameras: "
                           "drop --sequences / --cameras")
        from occ_core.data.synthetic.nuscenes import generate_nuscenes

        summary = generate_nuscenes(out, scenes=parse_list(scenes), samples=frames, seed=seed, workers=workers,
                                    image_size=image_size, force=force)
        console.print(f"[green]generated[/] synthetic nuScenes dataset (v1.0-mini, Occ3D gts/) -> {out}  ({_fmt(summary)})")
        if prepared is not None:
            from occ_core.data.prepare.occ3d import prepare_occ3d

            _report(prepare_occ3d(out, None, prepared, workers=workers), prepared)
        return
    if scenes is not None or image_size is not None:
        from occ_core.errors import OccError

        raise OccError("--scenes and --image-size apply to --layout nuscenes only")
    from occ_core.data.synthetic import generate_dataset

    summary = generate_dataset(out, sequences=parse_list(sequences), frames=frames, seed=seed, workers=workers,
                               cameras=cameras, force=force)
    console.print(f"[green]generated[/] synthetic dataset -> {out}  ({_fmt(summary)})")
    if prepared is not None:
        from occ_core.data.prepare.pipeline import prepare

        _report(prepare("kitti", out, prepared, workers=workers), prepared)


@app.command("occ3d")
@user_errors
def occ3d(
    nuscenes: Optional[Path] = typer.Option(None, "--nuscenes", help="nuScenes root (holds v1.0-trainval/ or v1.0-mini/ and samples/); not needed with --merge."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    gts: Optional[Path] = typer.Option(None, "--gts", help="Occ3D-nuScenes ground truth: gts/<scene>/<sample token>/labels.npz (default: NUSCENES/gts)."),
    version: Optional[str] = typer.Option(None, "--version", help=VERSION_HELP),
    workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: prepare only every N-th scene from the I-th (0 <= I < N), for a job array; then run --merge once."),
    merge: bool = typer.Option(False, "--merge", help="Write the manifest from the finished shards (OUT/shards/shard_I_of_N.json); only --out is needed."),
    force: bool = typer.Option(False, "--force/--no-force", help=FORCE_HELP),
) -> None:
    """Occ3D-nuScenes: six cameras per sample, LIDAR_TOP depth, Occ3D targets (free = 0) with camera/LiDAR masks."""
    _check_out(out)
    from occ_core.data.prepare.occ3d import prepare_occ3d

    if nuscenes is None and not merge:
        from occ_core.errors import OccError

        raise OccError("--nuscenes ROOT is required (except with --merge)")
    summary = prepare_occ3d(nuscenes, gts, out, version=version, workers=workers, shard=shard, merge=merge,
                            force=force)
    if merge:
        console.print(f"[green]merged[/] {summary['frames']} frames of {len(summary['sequences'])} scenes -> "
                      f"{summary['manifest']}")
    else:
        _report(summary, out)


@app.command("openoccupancy")
@user_errors
def openoccupancy(
    nuscenes: Path = typer.Option(..., "--nuscenes", help=NUSCENES_HELP),
    occ: Path = typer.Option(..., "--occ", help="nuScenes-Occupancy ground truth: scene_<scene token>/occupancy/<LIDAR_TOP token>.npy (rows z, y, x, class)."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    version: Optional[str] = typer.Option(None, "--version", help=VERSION_HELP),
    workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
    force: bool = typer.Option(False, "--force/--no-force", help=FORCE_HELP),
) -> None:
    """OpenOccupancy (nuScenes-Occupancy): 512x512x40 LiDAR-frame grid at 0.2 m, 16 classes, noise ignored; six cameras."""
    _check_out(out)
    from occ_core.data.prepare.nuscenes_lidar import prepare_lidar_occupancy

    _report(prepare_lidar_occupancy("openoccupancy", nuscenes, occ, out, version=version, workers=workers,
                                    force=force), out)


@app.command("surroundocc")
@user_errors
def surroundocc(
    nuscenes: Path = typer.Option(..., "--nuscenes", help=NUSCENES_HELP),
    occ: Path = typer.Option(..., "--occ", help="SurroundOcc ground truth: nuscenes_occ/samples/<LIDAR_TOP file name>.npy (rows x, y, z, class); the folder or its parent."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    version: Optional[str] = typer.Option(None, "--version", help=VERSION_HELP),
    workers: int = typer.Option(1, "--workers", help=WORKERS_HELP),
    force: bool = typer.Option(False, "--force/--no-force", help=FORCE_HELP),
) -> None:
    """SurroundOcc (nuScenes): 200x200x16 LiDAR-frame grid at 0.5 m, 16 classes, class 0 ignored; six cameras."""
    _check_out(out)
    from occ_core.data.prepare.nuscenes_lidar import prepare_lidar_occupancy

    _report(prepare_lidar_occupancy("surroundocc", nuscenes, occ, out, version=version, workers=workers,
                                    force=force), out)


@app.command("masks")
@user_errors
def masks(
    data: Path = typer.Option(..., "--data", help="Prepared data folder (written by 'occ prepare'); masks go to DATA/masks/."),
    sam: Optional[Path] = typer.Option(None, "--sam", help="SAM checkpoint (the official sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth): run SAM's automatic mask generation on every camera image."),
    model: Optional[str] = typer.Option(None, "--model", help="vit_b, vit_l or vit_h: the model size the checkpoint must hold (default: whatever it holds)."),
    points_per_side: int = typer.Option(32, "--points-per-side", help="Point prompts per image side (official default 32: 1024 prompts per image)."),
    points_per_batch: int = typer.Option(64, "--points-per-batch", help="Prompts decoded at once (memory vs speed; the masks do not change)."),
    masks_dir: Optional[Path] = typer.Option(None, "--masks", help="Import masks of any external generator instead: DIR/<sequence>/<frame_id>/<camera>.png, one single-channel 8/16-bit id image per camera image, of its size (0 = no mask); optional <camera>.json with 'scores'."),
    workers: int = typer.Option(1, "--workers", help=WORKERS_HELP + " (each loads its own SAM)"),
    device: str = typer.Option("cpu", "--device", help="Torch device SAM runs on (cpu, cuda)."),
    force: bool = typer.Option(False, "--force/--no-force", help="Redo images whose masks exist, also when they were made with other options (masks/masks.json)."),
) -> None:
    """Instance masks of every camera image (SAM, or external id images) into DATA/masks/ (CIGOcc's SAM-mask input)."""
    _check_out(data, "prepared data folder")
    from occ_core.data.prepare.masks import prepare_masks

    s = prepare_masks(data, sam=sam, masks=masks_dir, model=model, points_per_side=points_per_side,
                      points_per_batch=points_per_batch, workers=workers, force=force, device=device)
    what = f"SAM {s['model']}" if s["source"] == "sam" else "imported"
    console.print(f"[green]masks[/] ({what}) of {s['images']} camera images: {s['written']} written "
                  f"({s['masks']} masks), {s['skipped']} already done, {s['seconds']:.1f} s -> {s['folder']}")


def _fmt(summary: dict) -> str:
    return ", ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items())

"""``occ prepare openoccupancy`` / ``occ prepare surroundocc``: nuScenes tables + sparse LiDAR-frame occupancy
files -> the prepared layout.

The nuScenes side is ``occ prepare occ3d``'s (:mod:`occ_core.data.prepare.occ3d`: the tables through
``nuscenes.NuScenes``, the devkit's official scene splits, per-sample camera calibration at each camera's
timestamp); the grid is the **LiDAR frame** of the sample, so every camera's grid -> camera transform is
Occ3D's ego -> camera composed with LiDAR -> ego. ``sequence`` = the scene name, ``frame_id`` = the sample
token. Per sample:

* the ground truth (:mod:`occ_core.data.formats.openoccupancy` ``scene_<scene token>/occupancy/<lidar token>.npy``
  rows [z, y, x, class]; :mod:`occ_core.data.formats.surroundocc` ``<lidar file name>.npy`` rows [x, y, z, class])
  as targets at 1:1, 1:2, 1:4, 1:8 (raw class 0 -> 255, unlisted voxels empty), plus ``ego_to_world`` and
  ``lidar_to_ego``;
* the LIDAR_TOP key-frame sweep (already in the grid frame): ``input_occ`` and a sparse depth PNG per camera.

Per scene ``geometry.npz`` holds the per-frame calibration (``frames``, ``K_<camera>`` [F, 3, 3], ``T_<camera>``
[F, 4, 4], grid -> camera); the frame records keep ``extra.prev`` / ``next`` / ``timestamp`` / ``lidar_token`` /
``scene_token``. Every input (tables, images, sweeps, ground-truth headers) is checked before the first write,
options are recorded in ``OUT/prepare.json``, frames are written atomically (the ``.npz`` last) and reruns skip
finished frames.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from occ_core import __version__
from occ_core.data.formats import occ3d
from occ_core.data.prepare.layout import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, Frame, depth_path,
                                          frame_path, geometry_path, split_of)
from occ_core.errors import FormatError, MissingError, OccError
from occ_core.utils.atomic import atomic_path, remove_temp_files, save_npz, write_json

SCALES = (1, 2, 4, 8)
DEPTH_SCALE = 256.0
DATASETS = ("openoccupancy", "surroundocc")


def _format(dataset: str):
    if dataset == "openoccupancy":
        from occ_core.data.formats import openoccupancy as fmt
    elif dataset == "surroundocc":
        from occ_core.data.formats import surroundocc as fmt
    else:
        raise OccError(f"unknown LiDAR-frame occupancy dataset '{dataset}' (known: {', '.join(DATASETS)})")
    return fmt


def gt_file(dataset: str, occ_root: Path, scene_token: str, lidar_token: str, lidar_filename: str) -> Path:
    fmt = _format(dataset)
    if dataset == "openoccupancy":
        return fmt.occ_path(occ_root, scene_token, lidar_token)
    return fmt.occ_path(occ_root, lidar_filename)


def frame_arrays(dataset: str, target: np.ndarray, points: np.ndarray, ego_to_world: np.ndarray,
                 lidar_to_ego: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of a prepared frame: targets at the scales, ``input_occ`` of the sweep (grid frame), poses."""
    from occ_core.data.prepare.occ3d import grid_frame_arrays

    fmt = _format(dataset)
    return grid_frame_arrays(target, points, ego_to_world, lidar_to_ego, fmt.GRID_SHAPE, fmt.GRID_ORIGIN, fmt.VOXEL_SIZE)


def _prepare_frame(job: dict[str, Any]) -> str:
    import cv2

    from occ_core.geometry.projection import sparse_depth_map

    fmt = _format(job["dataset"])
    target = fmt.read_occupancy(job["gt"])  # first: a malformed file fails before anything of the frame is written
    pts = occ3d.read_points(job["lidar"]).astype(np.float64)
    for K, T, size, out in job["cameras"]:
        depth = sparse_depth_map(pts[:, :3], T, K, size)
        png = np.clip(np.round(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)
        with atomic_path(out) as tmp:
            if not cv2.imwrite(os.fspath(tmp), png):
                raise OSError(f"could not write {out}")
    save_npz(job["frame_out"], **frame_arrays(job["dataset"], target, pts, job["ego_to_world"], job["lidar_to_ego"]))
    return job["name"]


def prepare_lidar_occupancy(dataset: str, nuscenes: str | Path, occ: str | Path, out: str | Path,
                            version: str | None = None, workers: int = 1, force: bool = False,
                            progress: bool = True) -> dict[str, Any]:
    """Prepare OpenOccupancy or SurroundOcc (``dataset``; see the module docstring) under ``out``. Returns a summary:
    frames, written, skipped, labeled, sequences, seconds, manifest."""
    from occ_core.data.prepare import occ3d as p3
    from occ_core.data.prepare.pipeline import OPTIONS, _check_options, _lock

    fmt = _format(dataset)
    t0 = time.perf_counter()
    if workers < 1:
        raise OccError(f"--workers must be at least 1 (got {workers})")
    root, occ_root, out = Path(nuscenes), Path(occ), Path(out)
    if not root.is_dir():
        raise MissingError("nuScenes folder not found", root)
    if not occ_root.is_dir():
        raise MissingError(f"{dataset} ground-truth folder not found", occ_root)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise OccError(f"--out must not be inside the nuScenes folder {root}")
    version = p3.find_version(root, version)
    nusc = p3.load_tables(root, version)
    splits = occ3d.splits(version)
    wanted = set(splits["train"]) | set(splits["val"])
    scenes = sorted((s for s in nusc.scene if s["name"] in wanted), key=lambda s: s["name"])
    if not scenes:
        raise MissingError(f"no train/val scene of the official {version} splits in the scene table",
                           root / version / "scene.json")
    per_scene = {s["name"]: (s, p3.scene_samples(nusc, s, occ_root, root / version)) for s in scenes}
    infos = [i for _, v in per_scene.values() for i in v]
    sizes = {cam: infos[0].sizes[cam] for cam in occ3d.CAMERAS}
    gts: dict[str, Path] = {}
    lidar_tokens: dict[str, str] = {}
    for scene, v in per_scene.values():
        for i in v:
            if i.sizes != sizes:
                raise FormatError(f"sample {i.token}: camera image sizes differ from the first sample's",
                                  root / version / "sample_data.json")
            lidar_tokens[i.token] = nusc.get("sample", i.token)["data"][occ3d.LIDAR]
            gts[i.token] = gt_file(dataset, occ_root, scene["token"], lidar_tokens[i.token], i.files[occ3d.LIDAR])
    for i in infos:  # everything checked before the first write
        for key, rel in i.files.items():
            path = root / rel
            if not path.is_file():
                raise MissingError(f"{key} file of sample {i.token} missing", path)
            if key == occ3d.LIDAR and path.stat().st_size % 20:
                raise FormatError(f"wrong file size: {path.stat().st_size} bytes is not a multiple of 20 "
                                  "(5 float32 per point)", path)
        fmt.check_occupancy(gts[i.token])
    options = {"dataset": dataset, "depth": "lidar", "cameras": list(occ3d.CAMERAS), "version": version}
    if not force:
        _check_options(out, options)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        if not force:
            _check_options(out, options)
        remove_temp_files(out)
        write_json(out / OPTIONS, options)
        jobs, records = [], []
        for scene, v in per_scene.values():
            T = {cam: [i.T[cam] @ i.lidar_to_ego for i in v] for cam in occ3d.CAMERAS}  # grid (LiDAR) -> camera
            _write_geometry(out, scene["name"], v, T, force)
            for k, i in enumerate(v):
                files = {cam: i.files[cam] for cam in occ3d.CAMERAS}
                files["lidar"] = i.files[occ3d.LIDAR]
                records.append(Frame(i.scene, i.token, split_of(i.scene, splits), True, files, None,
                                     {"prev": i.prev, "next": i.next, "timestamp": i.timestamp,
                                      "lidar_token": lidar_tokens[i.token], "scene_token": scene["token"]}))
                target = frame_path(out, i.scene, i.token)
                if target.is_file() and not force:
                    continue
                jobs.append({"dataset": dataset, "name": f"{i.scene}/{i.token}", "gt": gts[i.token],
                             "lidar": root / i.files[occ3d.LIDAR], "ego_to_world": i.ego_to_world,
                             "lidar_to_ego": i.lidar_to_ego, "frame_out": target,
                             "cameras": [(i.K[c], T[c][k], i.sizes[c], depth_path(out, i.scene, i.token, n, c))
                                         for n, c in enumerate(occ3d.CAMERAS)]})
        _run(jobs, workers, progress, f"prepare {dataset}")
        where = _write_manifest(out, dataset, version, root, sizes, splits, per_scene, records)
    finally:
        if lock is not None:
            lock.close()
    return {"frames": len(records), "written": len(jobs), "skipped": len(records) - len(jobs),
            "labeled": len(records), "sequences": sorted(per_scene), "seconds": time.perf_counter() - t0,
            "manifest": str(where)}


def _run(jobs, workers, progress, description) -> None:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from occ_core.utils.procs import pool_kwargs
    from occ_core.utils.progress import track

    if workers == 1 or len(jobs) <= 1:
        for job in (track(jobs, description) if progress else jobs):
            _prepare_frame(job)
        return
    with ProcessPoolExecutor(max_workers=workers, **pool_kwargs()) as pool:
        futures = [pool.submit(_prepare_frame, job) for job in jobs]
        done = as_completed(futures)
        for fut in (track(done, description, total=len(futures)) if progress else done):
            fut.result()


def _write_geometry(out: Path, scene: str, infos, T: dict[str, list[np.ndarray]], force: bool) -> None:
    path = geometry_path(out, scene)
    if path.is_file() and not force:
        return
    arrays: dict[str, np.ndarray] = {"frames": np.array([i.token for i in infos]),
                                     "image_size": np.array(infos[0].sizes[occ3d.CAMERAS[0]])}
    for cam in occ3d.CAMERAS:
        arrays[f"K_{cam}"] = np.stack([i.K[cam] for i in infos])
        arrays[f"T_{cam}"] = np.stack(T[cam])
    save_npz(path, compress=False, **arrays)


def _write_manifest(out: Path, dataset: str, version: str, root: Path, sizes, splits, per_scene,
                    records: list[Frame]) -> Path:
    from occ_core.data.prepare.pipeline import train_class_counts

    fmt = _format(dataset)
    train = [r for r in records if r.split == "train"]
    counts = train_class_counts(out, train, len(fmt.CLASS_NAMES)).tolist() if train else None
    used = {k: sorted(s for s in v if s in per_scene) for k, v in splits.items()}
    spec = fmt.dataset_spec({k: tuple(v) for k, v in sizes.items()}, used, counts)
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "occ_version": __version__, "dataset": dataset,
        "nuscenes_version": version, "source": os.path.relpath(root.resolve(), out.resolve()),
        "spec": spec.to_json(), "depth_scale": DEPTH_SCALE, "depth": "lidar", "scales": list(SCALES),
        "splits": used, "sequences": sorted(per_scene), "frames": [r.to_json() for r in records],
    }
    write_json(out / MANIFEST, manifest)
    return out / MANIFEST

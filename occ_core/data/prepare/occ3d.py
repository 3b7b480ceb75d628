"""``occ prepare occ3d``: nuScenes tables + Occ3D-nuScenes ground truth -> the prepared layout.

Every table is read through ``nuscenes.NuScenes``; the splits are the devkit's official scene splits
(``create_splits_scenes``: train / val, mini_train / mini_val for v1.0-mini). ``sequence`` = the scene name,
``frame_id`` = the sample token. Per sample:

* the six cameras: intrinsics (``calibrated_sensor.camera_intrinsic``) and **grid -> camera**, where the grid
  is the ego frame at the LIDAR_TOP timestamp: ``inv(cam->ego) . inv(ego(t_cam)->global) . ego(t_lidar)->global``,
  so voxel centres project exactly into each image although every camera fires at its own time;
* the Occ3D ``labels.npz``: targets at 1:1, 1:2, 1:4, 1:8 (Occ3D id i -> class i + 1, free 17 -> 0; nothing
  ignored), ``mask_camera`` and ``mask_lidar`` (bool, 1:1), ``ego_to_world`` (the ego pose at the LIDAR_TOP
  timestamp) and ``lidar_to_ego``;
* the LIDAR_TOP key-frame sweep moved into the grid: ``input_occ`` (its voxels) and a sparse depth PNG per
  camera (nearest point per pixel).

Per scene, ``geometry.npz`` holds the per-frame calibration (``frames`` [F] tokens, ``K_<camera>`` [F, 3, 3],
``T_<camera>`` [F, 4, 4]). The manifest's frame records keep ``extra.prev`` / ``extra.next`` (neighbouring
sample tokens, '' at the scene's ends) and ``extra.timestamp``.

``shard=(I, N)`` prepares every N-th scene starting at the I-th (0 <= I < N; scenes in name order), writes
``OUT/shards/shard_I_of_N.json`` instead of the manifest, and holds its own lock, so N cluster jobs can write
into one folder at once; ``merge=True`` then checks that all N shard records exist and agree and writes the
manifest (class frequencies counted over the training frames). Reruns skip finished frames (a frame's
``.npz`` is written last), the options are recorded in ``OUT/prepare.json`` before any frame is written, and
every input is checked (tables, images, sweeps, labels.npz headers) before the first write.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from occ_core import __version__
from occ_core.data.formats import occ3d
from occ_core.data.prepare.layout import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, TARGET_KEYS, Frame, depth_path,
                                          frame_path, geometry_path, split_of)
from occ_core.errors import FormatError, MissingError, OccError
from occ_core.utils.atomic import atomic_path, remove_temp_files, save_npz, write_json
from occ_core.utils.procs import pool_kwargs
from occ_core.utils.progress import track

SCALES = (1, 2, 4, 8)
SHARDS = "shards"
DEPTH_SCALE = 256.0


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def find_version(root: Path, version: str | None) -> str:
    if version is not None:
        if version not in occ3d.VERSIONS:
            raise OccError(f"--version must be one of {', '.join(occ3d.VERSIONS)} (got '{version}')")
        if not (root / version).is_dir():
            raise MissingError(f"no nuScenes tables folder '{version}'", root / version)
        return version
    for v in occ3d.VERSIONS:
        if (root / v).is_dir():
            return v
    raise MissingError(f"no nuScenes tables ({' or '.join(occ3d.VERSIONS)} folder)", root)


def load_tables(root: Path, version: str):
    """``nuscenes.NuScenes(version, dataroot=root)``; a missing or malformed table is one line naming it."""
    if not root.is_dir():
        raise MissingError("nuScenes folder not found", root)
    for name in occ3d.TABLES:
        path = root / version / f"{name}.json"
        if not path.is_file():
            raise MissingError(f"nuScenes table '{name}' missing (nuscenes.NuScenes loads {', '.join(occ3d.TABLES)})",
                               path)
    import contextlib
    import io

    from nuscenes.nuscenes import NuScenes

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return NuScenes(version=version, dataroot=str(root), verbose=False)
    except json.JSONDecodeError as e:
        bad = _first_bad_table(root / version)
        raise FormatError(f"not valid JSON ({e.msg}, line {e.lineno})", bad or root / version) from None
    except (KeyError, AssertionError, IndexError, TypeError, AttributeError, ValueError) as e:
        detail = f"missing key or token {e}" if isinstance(e, KeyError) else (str(e).splitlines()[0] if str(e) else
                                                                              type(e).__name__)
        raise FormatError(f"nuscenes.NuScenes cannot load the tables ({detail})", root / version) from None


def _first_bad_table(folder: Path) -> Path | None:
    for name in occ3d.TABLES:
        try:
            json.loads((folder / f"{name}.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return folder / f"{name}.json"
    return None


def _pose(rec: dict) -> np.ndarray:
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion

    return transform_matrix(rec["translation"], Quaternion(rec["rotation"]))


@dataclass
class SampleInfo:
    scene: str
    token: str
    prev: str
    next: str
    timestamp: int
    files: dict[str, str]
    """camera channel -> image, ``lidar`` -> sweep (relative to the nuScenes root)."""
    K: dict[str, np.ndarray] = field(default_factory=dict)
    T: dict[str, np.ndarray] = field(default_factory=dict)
    """camera -> grid (ego at the LiDAR timestamp) -> camera, 4x4."""
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    ego_to_world: np.ndarray | None = None
    lidar_to_ego: np.ndarray | None = None
    gt: Path | None = None


def scene_samples(nusc, scene: dict, gts: Path, where: Path) -> list[SampleInfo]:
    """The samples of a scene in time order with their calibration folded into the grid frame."""
    out = []
    tok = scene["first_sample_token"]
    seen = set()
    while tok:
        if tok in seen:
            raise FormatError(f"scene {scene['name']}: the sample chain loops at {tok}", where / "sample.json")
        seen.add(tok)
        try:
            s = nusc.get("sample", tok)
        except KeyError:
            raise FormatError(f"scene {scene['name']}: sample token {tok} not in the sample table",
                              where / "sample.json") from None
        data = s.get("data", {})
        missing = [c for c in (*occ3d.CAMERAS, occ3d.LIDAR) if c not in data]
        if missing:
            raise FormatError(f"sample {tok} has no key-frame sample_data of {', '.join(missing)}",
                              where / "sample_data.json")
        lsd = nusc.get("sample_data", data[occ3d.LIDAR])
        l_cs = nusc.get("calibrated_sensor", lsd["calibrated_sensor_token"])
        ego_l = _pose(nusc.get("ego_pose", lsd["ego_pose_token"]))
        info = SampleInfo(scene["name"], tok, s.get("prev", ""), s.get("next", ""), int(s["timestamp"]),
                          {occ3d.LIDAR: lsd["filename"]}, ego_to_world=ego_l, lidar_to_ego=_pose(l_cs),
                          gt=occ3d.gt_path(gts, scene["name"], tok))
        for cam in occ3d.CAMERAS:
            sd = nusc.get("sample_data", data[cam])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            K = np.asarray(cs.get("camera_intrinsic") or [], np.float64)
            if K.shape != (3, 3):
                raise FormatError(f"calibrated_sensor {cs['token']} of {cam}: camera_intrinsic is not 3x3",
                                  where / "calibrated_sensor.json")
            ego_c = _pose(nusc.get("ego_pose", sd["ego_pose_token"]))
            cam_to_ego = _pose(cs)
            info.K[cam] = K
            info.T[cam] = np.linalg.inv(cam_to_ego) @ np.linalg.inv(ego_c) @ ego_l
            info.sizes[cam] = (int(sd["width"]), int(sd["height"]))
            info.files[cam] = sd["filename"]
        out.append(info)
        tok = s.get("next", "")
    return out


def _check_inputs(root: Path, gts: Path, infos: list[SampleInfo], scene_tokens: dict[str, set[str]],
                  version: str) -> None:
    """Stat every image and sweep, read every labels.npz header, and refuse Occ3D folders of unknown samples."""
    for info in infos:
        for key, rel in info.files.items():
            path = root / rel
            if not path.is_file():
                raise MissingError(f"{key} file of sample {info.token} missing", path)
            if key == occ3d.LIDAR and path.stat().st_size % 20:
                raise FormatError(f"wrong file size: {path.stat().st_size} bytes is not a multiple of 20 "
                                  "(5 float32 per point)", path)
        occ3d.check_gt(info.gt)
    for scene, tokens in scene_tokens.items():
        folder = gts / scene
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_dir() and p.name not in tokens:
                raise FormatError(f"sample token not in the nuScenes {version} tables of scene {scene} "
                                  "(ground truth of another version?)", p / "labels.npz")


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    if isinstance(shard, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not m:
            raise OccError(f"--shard must be I/N with 0 <= I < N, such as 0/8 (got '{shard}')")
        shard = (int(m.group(1)), int(m.group(2)))
    i, n = int(shard[0]), int(shard[1])
    if n < 1 or not 0 <= i < n:
        raise OccError(f"--shard must be I/N with 0 <= I < N, such as 0/8 (got '{i}/{n}')")
    return i, n


def shard_path(out: Path, i: int, n: int) -> Path:
    return out / SHARDS / f"shard_{i}_of_{n}.json"


# ------------------------------------------------------------------------------------------------
# Per-frame work (worker processes)
# ------------------------------------------------------------------------------------------------


def grid_frame_arrays(target: np.ndarray, points_grid: np.ndarray, ego_to_world: np.ndarray, lidar_to_ego: np.ndarray,
                      grid_shape, grid_origin, voxel_size: float,
                      masks: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The arrays of a prepared nuScenes-family frame, in file order: the target at every stored scale, the
    evaluation ``masks`` (when given), the poses, and ``input_occ`` (the voxels holding a point of the sweep,
    grid frame)."""
    from occ_core.data.prepare.downsample import downsample_label

    arrays = {TARGET_KEYS[s]: (target if s == 1 else downsample_label(target, s)) for s in SCALES}
    arrays.update(masks or {})
    arrays["ego_to_world"] = np.asarray(ego_to_world, np.float64)
    arrays["lidar_to_ego"] = np.asarray(lidar_to_ego, np.float64)
    occ = np.zeros(grid_shape, bool)
    idx = np.floor((points_grid[:, :3] - np.asarray(grid_origin)) / voxel_size).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(grid_shape)), axis=1)
    occ[idx[ok, 0], idx[ok, 1], idx[ok, 2]] = True
    arrays["input_occ"] = occ
    return arrays


def frame_arrays(gt: dict[str, np.ndarray], points_grid: np.ndarray, ego_to_world: np.ndarray,
                 lidar_to_ego: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of a prepared Occ3D frame from its ground truth and sweep (grid frame)."""
    masks = {"mask_camera": gt["mask_camera"].astype(bool), "mask_lidar": gt["mask_lidar"].astype(bool)}
    return grid_frame_arrays(occ3d.REMAP_LUT[gt["semantics"]], points_grid, ego_to_world, lidar_to_ego,
                             occ3d.GRID_SHAPE, occ3d.GRID_ORIGIN, occ3d.VOXEL_SIZE, masks)


def _prepare_frame(job: dict[str, Any]) -> str:
    import cv2

    from occ_core.geometry.projection import sparse_depth_map

    pts = occ3d.read_points(job["lidar"])
    T = job["lidar_to_ego"]
    xyz = pts[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    for K, Tc, size, out in job["cameras"]:
        depth = sparse_depth_map(xyz, Tc, K, size)
        png = np.clip(np.round(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)
        with atomic_path(out) as tmp:
            if not cv2.imwrite(os.fspath(tmp), png):
                raise OSError(f"could not write {out}")
    gt = occ3d.read_gt(job["gt"])
    save_npz(job["frame_out"], **frame_arrays(gt, xyz, job["ego_to_world"], T))  # last: marks the frame done
    return job["name"]


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def _write_geometry(out: Path, scene: str, infos: list[SampleInfo], force: bool) -> None:
    path = geometry_path(out, scene)
    arrays: dict[str, np.ndarray] = {"frames": np.array([i.token for i in infos]),
                                     "image_size": np.array(infos[0].sizes[occ3d.CAMERAS[0]])}
    for cam in occ3d.CAMERAS:
        arrays[f"K_{cam}"] = np.stack([i.K[cam] for i in infos])
        arrays[f"T_{cam}"] = np.stack([i.T[cam] for i in infos])
    if path.is_file() and not force:
        from occ_core.data.prepare.layout import read_npz

        try:
            old = read_npz(path, None, "sequence geometry")
            if set(old) == set(arrays) and all(np.array_equal(old[k], v) for k, v in arrays.items()):
                return
        except FormatError:
            pass
    save_npz(path, compress=False, **arrays)


def _records(infos: list[SampleInfo], splits: dict[str, list[str]]) -> list[dict[str, Any]]:
    out = []
    for i in infos:
        files = {cam: i.files[cam] for cam in occ3d.CAMERAS}
        files["lidar"] = i.files[occ3d.LIDAR]
        out.append(Frame(i.scene, i.token, split_of(i.scene, splits), True, files, None,
                         {"prev": i.prev, "next": i.next, "timestamp": i.timestamp}).to_json())
    return out


def prepare_occ3d(nuscenes: str | Path, gts: str | Path | None, out: str | Path, version: str | None = None,
                  workers: int = 1, shard: str | tuple[int, int] | None = None, merge: bool = False,
                  force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Prepare Occ3D-nuScenes (see the module docstring). ``gts`` defaults to ``NUSCENES/gts``.
    Returns a summary: frames, written, skipped, labeled, sequences, seconds, manifest (or shard record)."""
    from occ_core.data.prepare.pipeline import OPTIONS, _check_options, _lock

    t0 = time.perf_counter()
    out = Path(out)
    if merge:
        if shard is not None:
            raise OccError("--merge assembles the shards' manifest: give it without --shard")
        return merge_shards(out, progress=progress, t0=t0)
    if workers < 1:
        raise OccError(f"--workers must be at least 1 (got {workers})")
    shard = parse_shard(shard)
    root = Path(nuscenes)
    if not root.is_dir():
        raise MissingError("nuScenes folder not found", root)
    gts = Path(gts) if gts is not None else root / "gts"
    if not gts.is_dir():
        raise MissingError("Occ3D ground-truth folder not found (gts/<scene>/<sample token>/labels.npz)", gts)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise OccError(f"--out must not be inside the nuScenes folder {root}")
    version = find_version(root, version)
    nusc = load_tables(root, version)
    splits = occ3d.splits(version)
    wanted = set(splits["train"]) | set(splits["val"])
    scenes = sorted((s for s in nusc.scene if s["name"] in wanted), key=lambda s: s["name"])
    if not scenes:
        raise MissingError(f"no train/val scene of the official {version} splits in the scene table",
                           root / version / "scene.json")
    if shard is not None:
        scenes = scenes[shard[0]::shard[1]]
    per_scene = {s["name"]: scene_samples(nusc, s, gts, root / version) for s in scenes}
    infos = [i for v in per_scene.values() for i in v]
    sizes = {cam: infos[0].sizes[cam] for cam in occ3d.CAMERAS} if infos else {}
    for i in infos:
        if i.sizes != sizes:
            raise FormatError(f"sample {i.token}: camera image sizes differ from the first sample's",
                              root / version / "sample_data.json")
    _check_inputs(root, gts, infos, {k: {i.token for i in v} for k, v in per_scene.items()}, version)
    options = {"dataset": occ3d.NAME, "depth": "lidar", "cameras": list(occ3d.CAMERAS), "version": version}
    if not force:
        _check_options(out, options)
        _check_version(out, version)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out, ".prepare.lock" if shard is None else f".prepare.shard_{shard[0]}_of_{shard[1]}.lock")
    try:
        if not force:
            _check_options(out, options)
            _check_version(out, version)
        if shard is None:
            remove_temp_files(out)
        options_path = out / OPTIONS
        if not options_path.is_file() or force:
            write_json(options_path, options)
        for name, v in per_scene.items():
            _write_geometry(out, name, v, force)
        jobs = []
        for i in infos:
            target = frame_path(out, i.scene, i.token)
            if target.is_file() and not force:
                continue
            jobs.append({"name": f"{i.scene}/{i.token}", "lidar": root / i.files[occ3d.LIDAR], "gt": i.gt,
                         "lidar_to_ego": i.lidar_to_ego, "ego_to_world": i.ego_to_world, "frame_out": target,
                         "cameras": [(i.K[c], i.T[c], i.sizes[c], depth_path(out, i.scene, i.token, k, c))
                                     for k, c in enumerate(occ3d.CAMERAS)]})
        _run(jobs, workers, progress, "prepare occ3d" + ("" if shard is None else f" shard {shard[0]}/{shard[1]}"))
        record = {"format": FORMAT_NAME, "dataset": occ3d.NAME, "version": version, "options": options,
                  "source": os.path.relpath(root.resolve(), out.resolve()), "image_sizes": sizes,
                  "splits": {k: sorted(s for s in v if s in per_scene) for k, v in splits.items()},
                  "sequences": sorted(per_scene), "frames": _records(infos, splits)}
        if shard is not None:
            record["shard"] = list(shard)
            write_json(shard_path(out, *shard), record)
            where = shard_path(out, *shard)
        else:
            where = _write_manifest(out, [record], progress)
    finally:
        if lock is not None:
            lock.close()
    return {"frames": len(infos), "written": len(jobs), "skipped": len(infos) - len(jobs), "labeled": len(infos),
            "sequences": sorted(per_scene), "seconds": time.perf_counter() - t0, "manifest": str(where)}


def _check_version(out: Path, version: str) -> None:
    from occ_core.data.prepare.pipeline import OPTIONS
    from occ_core.utils.io import read_json

    path = out / OPTIONS
    if path.is_file():
        old = read_json(path, "prepare options", expect=dict).get("version")
        if old is not None and old != version:
            raise OccError(f"prepared with --version {old}; add --force to redo it with --version {version}", path)


def _run(jobs: list[dict[str, Any]], workers: int, progress: bool, description: str) -> None:
    if workers == 1 or len(jobs) <= 1:
        for job in (track(jobs, description) if progress else jobs):
            _prepare_frame(job)
        return
    with ProcessPoolExecutor(max_workers=workers, **pool_kwargs()) as pool:
        futures = [pool.submit(_prepare_frame, job) for job in jobs]
        done = as_completed(futures)
        for fut in (track(done, description, total=len(futures)) if progress else done):
            fut.result()


def _write_manifest(out: Path, records: list[dict[str, Any]], progress: bool) -> Path:
    from occ_core.data.prepare.pipeline import train_class_counts

    first = records[0]
    frames = [f for r in records for f in r["frames"]]
    frames.sort(key=lambda f: (f["sequence"], f.get("extra", {}).get("timestamp", 0), f["id"]))
    splits: dict[str, list[str]] = {}
    for r in records:
        for k, v in r["splits"].items():
            splits.setdefault(k, [])
            splits[k] = sorted(set(splits[k]) | set(v))
    train = [Frame.from_json(f) for f in frames if f["split"] == "train"]
    counts = train_class_counts(out, train, len(occ3d.CLASS_NAMES)).tolist() if train else None
    spec = occ3d.dataset_spec({k: tuple(v) for k, v in first["image_sizes"].items()}, splits, counts)
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "occ_version": __version__, "dataset": occ3d.NAME,
        "nuscenes_version": first["version"], "source": first["source"], "spec": spec.to_json(),
        "depth_scale": DEPTH_SCALE, "depth": "lidar", "scales": list(SCALES), "splits": splits,
        "sequences": sorted({s for r in records for s in r["sequences"]}), "frames": frames,
    }
    write_json(out / MANIFEST, manifest)
    return out / MANIFEST


def merge_shards(out: Path, progress: bool = True, t0: float | None = None) -> dict[str, Any]:
    """Assemble ``OUT/manifest.json`` from the shard records ``OUT/shards/shard_I_of_N.json`` (all N of them)."""
    from occ_core.data.prepare.pipeline import _lock
    from occ_core.utils.io import read_json

    t0 = time.perf_counter() if t0 is None else t0
    folder = out / SHARDS
    files = sorted(folder.glob("shard_*_of_*.json")) if folder.is_dir() else []
    if not files:
        raise MissingError("no shard records to merge (run 'occ prepare occ3d --shard I/N' first)", folder)
    ns = {int(re.fullmatch(r"shard_\d+_of_(\d+)\.json", p.name).group(1)) for p in files
          if re.fullmatch(r"shard_\d+_of_(\d+)\.json", p.name)}
    if len(ns) != 1:
        raise FormatError(f"shard records of different shard counts ({', '.join(map(str, sorted(ns)))}): "
                          "remove the stale ones", folder)
    n = ns.pop()
    missing = [i for i in range(n) if not shard_path(out, i, n).is_file()]
    if missing:
        raise MissingError(f"{len(missing)} of {n} shards not finished (first: --shard {missing[0]}/{n})",
                           shard_path(out, missing[0], n))
    records = [read_json(shard_path(out, i, n), "shard record", expect=dict) for i in range(n)]
    for i, r in enumerate(records):
        for key in ("version", "options", "source", "image_sizes"):
            if r.get(key) != records[0].get(key):
                raise FormatError(f"shard record disagrees with shard 0 on '{key}'", shard_path(out, i, n))
        for f in r.get("frames", []):
            if not frame_path(out, f["sequence"], f["id"]).is_file():
                raise MissingError(f"prepared frame of shard {i} missing (rerun --shard {i}/{n})",
                                   frame_path(out, f["sequence"], f["id"]))
    lock = _lock(out)
    try:
        where = _write_manifest(out, records, progress)
    finally:
        if lock is not None:
            lock.close()
    frames = sum(len(r["frames"]) for r in records)
    return {"frames": frames, "written": 0, "skipped": frames, "labeled": frames,
            "sequences": sorted({s for r in records for s in r["sequences"]}), "seconds": time.perf_counter() - t0,
            "manifest": str(where)}

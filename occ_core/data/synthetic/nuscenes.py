"""Write the procedural scenes as a nuScenes-format dataset with Occ3D ground truth (``occ prepare
synthetic --layout nuscenes``); see docs/nuscenes.md.

::

    ROOT/
      v1.0-mini/{category,attribute,visibility,instance,sensor,calibrated_sensor,ego_pose,log,scene,
                 sample,sample_data,sample_annotation,map}.json      (nuscenes.NuScenes loads them unchanged)
      maps/<token>.png                                                (a blank map mask the devkit requires)
      samples/CAM_FRONT/<log>__CAM_FRONT__<timestamp>.jpg ...         six cameras per sample
      samples/LIDAR_TOP/<log>__LIDAR_TOP__<timestamp>.pcd.bin         float32 x, y, z, intensity, ring
      gts/<scene>/<sample token>/labels.npz                           Occ3D: semantics, mask_lidar, mask_camera
      synthetic.json                                                  the options (seed, scenes, samples, size)

Scenes are named after real v1.0-mini scenes (``scene-0061`` ... train, ``scene-0103``, ``scene-0916`` val)
so that the devkit's ``create_splits_scenes()`` mini_train / mini_val put them in the right split. Samples
are 2 Hz key frames (every 5th scan of the scene's 10 Hz trajectory); only key frames are written (no
intermediate sweeps), and ``sample_annotation`` / ``instance`` are empty (the Occ3D targets come from the
scene itself). Everything is derived from (seed, scene name, sample index): the same options give
byte-identical files, and a sample whose files all exist is skipped on a rerun; the tables are written last.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from occ_core.data.formats import occ3d
from occ_core.data.synthetic import surround
from occ_core.data.synthetic.generate import get_scene
from occ_core.errors import FormatError, OccError
from occ_core.utils.atomic import atomic_path, remove_temp_files, write_bytes, write_json
from occ_core.utils.procs import pool_kwargs

VERSION = "v1.0-mini"
DEFAULT_SCENES: tuple[str, ...] = ("scene-0061", "scene-0553", "scene-0655", "scene-0103")
"""Three mini_train scenes and one mini_val scene."""
DEFAULT_SAMPLES = 12
DEFAULT_IMAGE_SIZE: tuple[int, int] = (400, 225)
"""A quarter of nuScenes' 1600 x 900 (intrinsics scaled alike)."""
MAX_SAMPLES = 100
SAMPLE_STEP = 5
"""Scans between samples (2 Hz key frames of the 10 Hz trajectory)."""
RECORD = "synthetic.json"
TIME_BASE_US = 1_533_000_000_000_000
JPEG_QUALITY = 92
LAYOUT = "nuscenes"


def token(*parts) -> str:
    """A deterministic 32-hex-digit nuScenes token."""
    return hashlib.md5("/".join(str(p) for p in ("occ-synthetic",) + parts).encode()).hexdigest()


def scene_number(name: str) -> int:
    return int(name.split("-", 1)[1])


def _scene(seed: int, name: str, samples: int):
    # generate.get_scene keys the scene on its sequence number; frames = samples keeps the scene length
    return get_scene(seed, f"{scene_number(name):04d}", samples)


def scan_of(index: int) -> int:
    return SAMPLE_STEP * index


def timestamp(name: str, t: float) -> int:
    """Microseconds of trajectory time ``t`` (scans) in scene ``name``."""
    return TIME_BASE_US + scene_number(name) * 10_000_000_000 + int(round(t * 1e6 / surround.SCANS_PER_SECOND))


def camera_time(scan: int, channel: str) -> float:
    return scan + surround.CAMERA_RIG[channel]["dt"] * surround.SCANS_PER_SECOND


def log_name(name: str) -> str:
    return f"synthetic-{scene_number(name):04d}"


def sample_files(name: str, index: int) -> dict[str, str]:
    """Channel -> file (relative to ROOT) of one sample, plus ``gt`` (the labels.npz, written last)."""
    scan = scan_of(index)
    out = {}
    for ch in occ3d.CAMERAS:
        out[ch] = f"samples/{ch}/{log_name(name)}__{ch}__{timestamp(name, camera_time(scan, ch))}.jpg"
    out[occ3d.LIDAR] = f"samples/{occ3d.LIDAR}/{log_name(name)}__{occ3d.LIDAR}__{timestamp(name, scan)}.pcd.bin"
    out["gt"] = f"gts/{name}/{token(name, 'sample', index)}/labels.npz"
    return out


# --------------------------------------------------------------------------------------------
# One sample
# --------------------------------------------------------------------------------------------


def _quat(R: np.ndarray) -> list[float]:
    from pyquaternion import Quaternion

    q = Quaternion(matrix=np.asarray(R, np.float64), atol=1e-6)
    return [float(q.w), float(q.x), float(q.y), float(q.z)]


def write_sample(root: Path, seed: int, name: str, samples: int, index: int, size: tuple[int, int]) -> None:
    """Render and write the six images, the sweep and the Occ3D labels.npz (last) of one sample."""
    import cv2

    scene = _scene(seed, name, samples)
    scan = scan_of(index)
    files = sample_files(name, index)
    E = surround.ego_to_scene(scene, scan)
    Ei = np.linalg.inv(E)
    sun = surround.sun_map(scene, scan)
    cam_mask = np.zeros(occ3d.GRID_SHAPE, bool)
    for k, ch in enumerate(occ3d.CAMERAS):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, scene_number(name), scan, 4343, k]))
        t = camera_time(scan, ch)
        c2e = surround.camera_to_ego(ch)
        K = surround.intrinsics(ch, size)
        img, depth = surround.render_view(scene, surround.ego_to_scene(scene, t) @ c2e, K, sun, rng, size)
        path = root / files[ch]
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OccError("could not write the image", path)
        cam_mask |= surround.camera_mask(Ei @ surround.ego_to_scene(scene, t) @ c2e, K, depth)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, scene_number(name), scan, 4343, 99]))
    points, ri = surround.lidar_sweep(scene, scan, rng)
    write_bytes(root / files[occ3d.LIDAR], points.astype(np.float32).tobytes())
    sem = surround.semantics(scene, E)
    occ3d.write_gt(root / files["gt"], sem, surround.lidar_mask(surround.lidar_to_ego(), ri), cam_mask)


def _worker(args) -> float:
    root, seed, name, samples, index, size = args
    t0 = time.perf_counter()
    write_sample(Path(root), seed, name, samples, index, tuple(size))
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

_CATEGORIES = ("human.pedestrian.adult", "vehicle.bicycle", "vehicle.car", "vehicle.truck", "static.manmade",
               "static.vegetation", "flat.driveable_surface", "flat.sidewalk", "flat.terrain")


def tables(seed: int, scenes: list[str], samples: int, size: tuple[int, int]) -> dict[str, list[dict]]:
    """Every nuScenes table of the dataset (plain records, as the devkit's JSON files hold them)."""
    t: dict[str, list[dict]] = {k: [] for k in occ3d.TABLES}
    t["category"] = [{"token": token("category", c), "name": c, "description": f"{c} (synthetic)"} for c in _CATEGORIES]
    t["attribute"] = [{"token": token("attribute", "vehicle.parked"), "name": "vehicle.parked",
                       "description": "parked vehicle"}]
    t["visibility"] = [{"token": str(i + 1), "level": lvl, "description": f"visibility of whole object is {lvl}"}
                       for i, lvl in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))]
    channels = list(occ3d.CAMERAS) + [occ3d.LIDAR]
    t["sensor"] = [{"token": token("sensor", ch), "channel": ch, "modality": "lidar" if ch == occ3d.LIDAR else "camera"}
                   for ch in channels]
    map_token = token("map", "synthetic-city")
    t["map"] = [{"token": map_token, "log_tokens": [token("log", n) for n in scenes], "category": "semantic_prior",
                 "filename": f"maps/{map_token}.png"}]
    for name in scenes:
        scene = _scene(seed, name, samples)
        log_tok = token("log", name)
        t["log"].append({"token": log_tok, "logfile": log_name(name), "vehicle": "synthetic",
                         "date_captured": "2018-08-01", "location": "synthetic-city"})
        cs_tok = {}
        for ch in channels:
            cs_tok[ch] = token("calibrated_sensor", name, ch)
            T = surround.lidar_to_ego() if ch == occ3d.LIDAR else surround.camera_to_ego(ch)
            K = [] if ch == occ3d.LIDAR else surround.intrinsics(ch, size).tolist()
            t["calibrated_sensor"].append({"token": cs_tok[ch], "sensor_token": token("sensor", ch),
                                           "translation": T[:3, 3].tolist(), "rotation": _quat(T[:3, :3]),
                                           "camera_intrinsic": K})
        sample_tok = [token(name, "sample", i) for i in range(samples)]
        for i in range(samples):
            scan = scan_of(i)
            files = sample_files(name, i)
            t["sample"].append({"token": sample_tok[i], "timestamp": timestamp(name, scan),
                                "prev": sample_tok[i - 1] if i else "", "next": sample_tok[i + 1] if i + 1 < samples else "",
                                "scene_token": token("scene", name)})
            for ch in channels:
                tt = scan if ch == occ3d.LIDAR else camera_time(scan, ch)
                sd = token(name, "sample_data", ch, i)
                E = surround.ego_to_scene(scene, tt)
                t["ego_pose"].append({"token": sd, "timestamp": timestamp(name, tt), "rotation": _quat(E[:3, :3]),
                                      "translation": E[:3, 3].tolist()})
                cam = ch != occ3d.LIDAR
                t["sample_data"].append({
                    "token": sd, "sample_token": sample_tok[i], "ego_pose_token": sd,
                    "calibrated_sensor_token": cs_tok[ch], "timestamp": timestamp(name, tt),
                    "fileformat": "jpg" if cam else "pcd", "is_key_frame": True,
                    "height": size[1] if cam else 0, "width": size[0] if cam else 0, "filename": files[ch],
                    "prev": token(name, "sample_data", ch, i - 1) if i else "",
                    "next": token(name, "sample_data", ch, i + 1) if i + 1 < samples else "",
                })
        t["scene"].append({"token": token("scene", name), "log_token": log_tok, "nbr_samples": samples,
                           "first_sample_token": sample_tok[0], "last_sample_token": sample_tok[-1], "name": name,
                           "description": f"synthetic street (seed {seed})"})
    return t


def _write_map(path: Path) -> None:
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.zeros((16, 16), np.uint8)):
            raise OccError("could not write the map mask", path)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _check_args(scenes, samples, seed, workers, image_size) -> tuple[list[str], int, tuple[int, int]]:
    mini = set(occ3d.splits(VERSION)["train"]) | set(occ3d.splits(VERSION)["val"])
    if scenes is None:
        scenes = list(DEFAULT_SCENES)
    if isinstance(scenes, str):
        scenes = [s for s in scenes.split(",") if s.strip()]
    out: list[str] = []
    for s in scenes:
        s = str(s).strip()
        if s not in mini:
            raise OccError(f"scene '{s}' is not a v1.0-mini scene (the devkit's mini_train/mini_val split them): "
                           f"use one of {', '.join(sorted(mini))}")
        if s not in out:
            out.append(s)
    if not out:
        raise OccError("no scenes given")
    samples = DEFAULT_SAMPLES if samples is None else samples
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 2 <= samples <= MAX_SAMPLES:
        raise OccError(f"samples per scene must be an integer from 2 to {MAX_SAMPLES} (--frames), got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OccError(f"seed must be a non-negative integer (--seed), got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise OccError(f"workers must be a positive integer (--workers), got {workers!r}")
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if isinstance(size, str):
        try:
            w, h = (int(v) for v in size.lower().split("x"))
            size = (w, h)
        except ValueError:
            raise OccError(f"image size must be WIDTHxHEIGHT such as 400x225 (--image-size), got '{image_size}'") from None
    size = (int(size[0]), int(size[1]))
    if not (32 <= size[0] <= 1600 and 18 <= size[1] <= 900):
        raise OccError(f"image size must be from 32x18 to 1600x900 (--image-size), got {size[0]}x{size[1]}")
    return out, int(samples), size


def _check_record(root: Path, seed: int, samples: int, size: tuple[int, int], force: bool) -> dict | None:
    from occ_core.utils.io import read_json

    path = root / RECORD
    if not path.is_file():
        return None
    old = read_json(path, "synthetic dataset record", expect=dict)
    if force:
        return old
    if old.get("layout") != LAYOUT:
        raise OccError(f"generated with --layout {old.get('layout', 'kitti')}; use another folder or add --force", path)
    try:
        o_seed, o_samples, o_size = int(old["seed"]), int(old["samples"]), tuple(int(v) for v in old["image_size"])
    except (KeyError, TypeError, ValueError):
        raise FormatError("expected keys layout, seed, samples, image_size, scenes", path) from None
    if o_seed != seed:
        what = f"--seed {o_seed}; add --force to regenerate it with --seed {seed}"
    elif o_samples != samples:
        what = f"--frames {o_samples}; add --force to regenerate it with --frames {samples}"
    elif o_size != size:
        what = f"--image-size {o_size[0]}x{o_size[1]}; add --force to regenerate it with --image-size {size[0]}x{size[1]}"
    else:
        return old
    raise OccError(f"generated with {what}", path)


def generate_nuscenes(root, scenes=None, samples=None, seed=0, workers=1, image_size=None, progress=True,
                      force=False) -> dict:
    """Write the synthetic surround-view dataset under ``root`` (see the module docstring); return a summary."""
    scenes, samples, size = _check_args(scenes, samples, seed, workers, image_size)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OccError("output path exists and is not a folder", root)
    t0 = time.perf_counter()
    old = _check_record(root, int(seed), samples, size, force)
    root.mkdir(parents=True, exist_ok=True)
    remove_temp_files(root)
    known = [str(s) for s in old.get("scenes", [])] if old is not None and not force else []
    all_scenes = sorted(set(known) | set(scenes))
    write_json(root / RECORD, {"layout": LAYOUT, "version": VERSION, "seed": int(seed), "samples": samples,
                               "image_size": list(size), "scenes": all_scenes})
    tasks, skipped = [], 0
    for name in scenes:
        for i in range(samples):
            if not force and all((root / f).is_file() for f in sample_files(name, i).values()):
                skipped += 1
            else:
                tasks.append((str(root), int(seed), name, samples, i, size))

    def _iterate():
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield _worker(task)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn"),
                                     **pool_kwargs()) as pool:
                for f in as_completed([pool.submit(_worker, task) for task in tasks]):
                    yield f.result()

    it = _iterate()
    if progress and tasks:
        from occ_core.utils.progress import track

        it = track(it, "synthetic samples", total=len(tasks))
    seconds = [s for s in it]
    tabs = tables(int(seed), all_scenes, samples, size)
    _write_map(root / tabs["map"][0]["filename"])
    for name, records in tabs.items():
        write_json(root / VERSION / f"{name}.json", records, indent=None)
    return {
        "scenes": len(scenes),
        "samples_written": len(tasks),
        "samples_skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 2),
        "seconds_per_sample": round(float(np.mean(seconds)), 3) if seconds else 0.0,
    }


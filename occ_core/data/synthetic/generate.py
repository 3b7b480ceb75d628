"""Write synthetic sequences in the raw SemanticKITTI layout (see docs/synthetic.md)."""

from __future__ import annotations

import math
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from occ_core.data.formats import semantickitti as sk
from occ_core.data.synthetic import lidar, render, voxelize
from occ_core.data.synthetic.scene import Scene, build_scene
from occ_core.errors import OccError
from occ_core.utils.atomic import atomic_path, remove_temp_files, write_json, write_text
from occ_core.utils.procs import pool_kwargs

DEFAULT_SEQUENCES: list[str] = ["00", "01", "02", "08"]
DEFAULT_FRAMES: int = 20
SCAN_STEP = 5  # voxel frames are every 5th scan
MAX_FRAMES = 2000
RECORD = "synthetic.json"
"""``ROOT/synthetic.json``: seed, frames, sequences and cameras of the generated dataset."""

# --------------------------------------------------------------------------------------------
# Calibration (KITTI odometry sequence 00 values)
# --------------------------------------------------------------------------------------------

K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
_P_TRANS = {
    "P0": (0.0, 0.0, 0.0),
    "P1": (-386.1448, 0.0, 0.0),
    "P2": (45.38225, -0.1130887, 0.003779761),
    "P3": (-337.2877, 2.369057, 0.004915215),
}
TR = np.array([[0.0, -1.0, 0.0, -0.012], [0.0, 0.0, -1.0, -0.080], [1.0, 0.0, 0.0, -0.292], [0.0, 0.0, 0.0, 1.0]])
"""Velodyne -> cam0: the camera (x right, y down, z forward) 0.29 m ahead of and 0.08 m below the
LiDAR (x forward, y left, z up), so with the LiDAR 1.73 m above the ground cam0 is at 1.65 m."""


# Extra cameras (``cameras=3``): image_4 and image_5, yawed about the camera's vertical axis and
# mounted at image_2's camera centre (no offset), same K and image size as image_2.
CAMERA_COUNTS = (1, 3)
EXTRA_CAMERAS: dict[int, float] = {4: 55.0, 5: -55.0}
"""Camera index -> yaw in degrees; positive turns toward velodyne +y (left of the car)."""


def extra_cameras(cameras: int) -> list[int]:
    """Indices k of the extra camera folders ``image_<k>`` written for ``cameras`` cameras."""
    return [] if cameras == 1 else sorted(EXTRA_CAMERAS)


def cam2_to_camera(k: int) -> np.ndarray:
    """Pose (4x4) of extra camera k in image_2's camera frame: a rotation about the camera's
    vertical axis (camera y, pointing down) by -yaw, so that a positive yaw turns the optical axis
    toward camera -x (left), and no translation."""
    a = math.radians(EXTRA_CAMERAS[k])
    c, s = math.cos(a), math.sin(a)
    T = np.eye(4)
    T[:3, :3] = [[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]]
    return T


def extra_camera_tr(k: int) -> np.ndarray:
    """Velodyne -> extra camera k (4x4; camera x right, y down, z forward)."""
    T2 = np.eye(4)
    T2[:3, 3] = camera_centre(_projection("P2"))
    return np.linalg.inv(T2 @ cam2_to_camera(k)) @ TR


def _projection(key: str) -> np.ndarray:
    P = np.zeros((3, 4))
    P[:, :3] = K
    P[:, 3] = _P_TRANS[key]
    return P


def calibration(cameras: int = 1) -> dict[str, np.ndarray]:
    """calib.txt contents: P0..P3, Tr and, per extra camera k, P<k> = K [I | 0] and Tr_<k>."""
    calib = {key: _projection(key) for key in _P_TRANS}
    calib["Tr"] = TR[:3].copy()
    for k in extra_cameras(cameras):
        P = np.zeros((3, 4))
        P[:, :3] = K
        calib[f"P{k}"] = P
        calib[f"Tr_{k}"] = extra_camera_tr(k)[:3]
    return calib


def camera_centre(P: np.ndarray) -> np.ndarray:
    """Centre of the camera with projection P = K [I | t], in cam0 coordinates."""
    return -np.linalg.solve(P[:, :3], P[:, 3])


def cam0_to_scene(scene: Scene, scan: int) -> np.ndarray:
    return scene.velo_to_scene(scan) @ np.linalg.inv(TR)


def camera_to_scene(scene: Scene, scan: int, P: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = camera_centre(P)
    return cam0_to_scene(scene, scan) @ T


def extra_camera_to_scene(scene: Scene, scan: int, k: int) -> np.ndarray:
    """Pose (4x4) of extra camera k in the scene at ``scan``: image_2's pose, yawed."""
    return camera_to_scene(scene, scan, _projection("P2")) @ cam2_to_camera(k)


def poses(scene: Scene, n_scans: int) -> np.ndarray:
    """KITTI poses: cam0 of each scan in the cam0 frame of scan 0, [n, 4, 4]."""
    inv0 = np.linalg.inv(cam0_to_scene(scene, 0))
    return np.stack([inv0 @ cam0_to_scene(scene, k) for k in range(n_scans)])


def vanishing_point(scene: Scene, scan: int, P2: np.ndarray) -> tuple[float, float]:
    """Projection through image_2 of the road direction at the car (a point at infinity)."""
    R = cam0_to_scene(scene, scan)[:3, :3]
    d = R.T @ scene.road_direction(scan)
    p = P2[:, :3] @ d
    return float(p[0] / p[2]), float(p[1] / p[2])


# --------------------------------------------------------------------------------------------
# Scenes per process
# --------------------------------------------------------------------------------------------

_SCENES: dict[tuple[int, str, int], Scene] = {}


def _scene_scans(frames: int) -> int:
    """Scans the scene must cover: rounded up so that the scene does not depend on ``frames``
    (up to 100 frames) and resuming with another frame count gives the same files."""
    need = SCAN_STEP * (frames - 1) + 1 + max(voxelize.FUTURE_SCANS)
    return int(math.ceil(need / 500.0) * 500)


def get_scene(seed: int, sequence: str, frames: int) -> Scene:
    key = (int(seed), sequence, _scene_scans(frames))
    if key not in _SCENES:
        if len(_SCENES) >= 2:
            _SCENES.pop(next(iter(_SCENES)))
        _SCENES[key] = build_scene(seed, sequence, key[2])
    return _SCENES[key]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def frame_files(seq_dir: Path, fid: str, cameras: int = 1) -> list[Path]:
    """Every file of one voxel frame; the four voxel files come last (they are written last).

    The first six are the stereo pair, image_2's semantics and depth, the scan and its labels; then
    the extra cameras' image, semantic and depth files (``extra_camera_files``), then the instance
    masks of every camera but image_3 (``mask_files``), then the voxel files.
    """
    files = [seq_dir / "image_2" / f"{fid}.png", seq_dir / "image_3" / f"{fid}.png",
             seq_dir / "semantic_2" / f"{fid}.png", seq_dir / "depth_2" / f"{fid}.png",
             seq_dir / "velodyne" / f"{fid}.bin", seq_dir / "labels" / f"{fid}.label",
             seq_dir / "voxels" / f"{fid}.bin", seq_dir / "voxels" / f"{fid}.label",
             seq_dir / "voxels" / f"{fid}.invalid", seq_dir / "voxels" / f"{fid}.occluded"]
    extra = [p for k in extra_cameras(cameras) for p in extra_camera_files(seq_dir, fid, k)]
    return files[:6] + extra + mask_files(seq_dir, fid, cameras) + files[6:]


def mask_files(seq_dir: Path, fid: str, cameras: int = 1) -> list[Path]:
    """The instance masks of one frame: ``ROOT/masks/<sequence>/<fid>/<camera>.png`` and ``.json`` for
    image_2 and the extra cameras (the external-mask layout of occ_core.data.prepare.masks, beside
    ``dataset/``; ``occ prepare kitti`` imports it)."""
    from occ_core.data.prepare.masks import info_path, mask_path

    root = seq_dir.parents[2]  # ROOT/dataset/sequences/XX
    out = []
    for cam in ["image_2"] + [f"image_{k}" for k in extra_cameras(cameras)]:
        out += [mask_path(root, seq_dir.name, fid, cam), info_path(root, seq_dir.name, fid, cam)]
    return out


def instance_masks(scene: Scene, pid: np.ndarray, sem: np.ndarray) -> tuple[np.ndarray, list[int], list[str]]:
    """The generator's stand-in for SAM's masks of one rendered image: one mask per object instance
    (``scene.prims.inst`` > 0: the primitives of one car, person, ... together), per stuff primitive
    (a building, a trunk, a leaf blob, a pole, a fence segment), and per 4-connected region of one
    ground class; sky has none. Returns (uint16 id image, ids by decreasing area, with the areas and
    kinds ("thing", "stuff", "ground") of masks 1..K)."""
    h, w = pid.shape
    label = np.zeros((h, w), np.int64)
    obj = pid >= 0
    inst = scene.prims.inst[pid[obj]].astype(np.int64)
    label[obj] = np.where(inst > 0, inst, (1 << 20) + pid[obj])
    ground = ~obj & (sem > 0)
    for c in np.unique(sem[ground]):
        _, comp = cv2.connectedComponents((ground & (sem == c)).astype(np.uint8), connectivity=4)
        m = ground & (sem == c)
        label[m] = (int(c) << 40) + (2 << 20) + comp[m]
    values, inverse, counts = np.unique(label.ravel(), return_inverse=True, return_counts=True)
    keep = values != 0
    order = [int(i) for i in np.lexsort((values, -counts)) if keep[i]]
    lut = np.zeros(len(values), np.uint16)
    for k, i in enumerate(order[:65535]):
        lut[i] = k + 1
    order = order[:65535]
    ids = lut[inverse].reshape(h, w)
    kinds = ["ground" if values[i] >= (1 << 40) else "stuff" if values[i] >= (1 << 20) else "thing" for i in order]
    return ids, [int(counts[i]) for i in order], kinds


def _write_instance_masks(seq_dir: Path, fid: str, camera: str, scene: Scene, pid: np.ndarray,
                          sem: np.ndarray) -> None:
    from occ_core.data.prepare.masks import write_masks

    ids, areas, kinds = instance_masks(scene, pid, sem)
    write_masks(seq_dir.parents[2], seq_dir.name, fid, camera, ids, [1.0] * len(areas), areas, "synthetic",
                {"kinds": kinds})


def extra_camera_files(seq_dir: Path, fid: str, k: int) -> list[Path]:
    """image_<k>, semantic_<k> and depth_<k> of extra camera k."""
    return [seq_dir / f"image_{k}" / f"{fid}.png", seq_dir / f"semantic_{k}" / f"{fid}.png",
            seq_dir / f"depth_{k}" / f"{fid}.png"]


def _imwrite(path: Path, img: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
            raise OSError(f"could not write {path}")


def _write_depth(path: Path, dep: np.ndarray) -> None:
    _imwrite(path, np.clip(np.round(dep * 256.0), 0, 65535).astype(np.uint16))


def write_frame(seq_dir: Path, seed: int, sequence: str, frames: int, index: int, cameras: int = 1,
                extra_only: bool = False) -> None:
    """Render and write all files of voxel frame ``index`` (scan 5 * index).

    Extra cameras (``cameras=3``) draw their noise from their own random streams, so the files of
    ``cameras=1`` are the same whatever ``cameras`` is, and ``extra_only`` (used when resuming a
    ``cameras=1`` dataset with ``cameras=3``) writes just the extra cameras' files.
    """
    scene = get_scene(seed, sequence, frames)
    scan = SCAN_STEP * index
    fid = f"{scan:06d}"
    sunmap = render.sun_map(scene, scan)
    if extra_only:
        _write_extra_cameras(seq_dir, scene, seed, sequence, scan, cameras, sunmap)
        return
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(sequence), scan, 4242]))
    calib = calibration()
    files = frame_files(seq_dir, fid)
    vox = files[-4:]  # bin, label, invalid, occluded
    for path, key in ((files[0], "P2"), (files[1], "P3")):
        img, sem, dep, *pid = render.render_camera(scene, camera_to_scene(scene, scan, calib[key]), K, sunmap, rng,
                                                   primitives=key == "P2")
        _imwrite(path, img)
        if key == "P2":
            _imwrite(files[2], sem)
            _write_depth(files[3], dep)
            _write_instance_masks(seq_dir, fid, "image_2", scene, pid[0], sem)
    points, raw, inst = lidar.scan_points(scene, scan, rng)
    sk.write_scan(files[4], points)
    sk.write_point_labels(files[5], raw, inst)
    _write_extra_cameras(seq_dir, scene, seed, sequence, scan, cameras, sunmap)
    invalid, occluded = voxelize.visibility(scene, scan)
    label = voxelize.target(scene, scan)
    sk.write_voxel_bits(vox[0], voxelize.occupancy(points))
    sk.write_voxel_label(vox[1], label)
    sk.write_voxel_bits(vox[2], invalid)
    sk.write_voxel_bits(vox[3], occluded)


def _write_extra_cameras(seq_dir: Path, scene: Scene, seed: int, sequence: str, scan: int, cameras: int,
                         sunmap: render.SunMap) -> None:
    fid = f"{scan:06d}"
    for k in extra_cameras(cameras):
        rng_k = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(sequence), scan, 4242, k]))
        img, sem, dep, pid = render.render_camera(scene, extra_camera_to_scene(scene, scan, k), K, sunmap, rng_k,
                                                  primitives=True)
        img_path, sem_path, dep_path = extra_camera_files(seq_dir, fid, k)
        _imwrite(img_path, img)
        _imwrite(sem_path, sem)
        _write_depth(dep_path, dep)
        _write_instance_masks(seq_dir, fid, f"image_{k}", scene, pid, sem)


def write_sequence_files(root: Path, seq_dir: Path, seed: int, sequence: str, frames: int,
                         cameras: int = 1) -> None:
    """calib.txt, poses.txt, times.txt and the vanishing points (of image_2) of one sequence."""
    scene = get_scene(seed, sequence, frames)
    calib = calibration(cameras)
    n_scans = SCAN_STEP * (frames - 1) + 1
    sk.write_calib(seq_dir / "calib.txt", calib)
    sk.write_poses(seq_dir / "poses.txt", poses(scene, n_scans))
    write_text(seq_dir / "times.txt", "".join(f"{0.1 * k:.6e}\n" for k in range(n_scans)))
    vps = {}
    for i in range(frames):
        fid = f"{SCAN_STEP * i:06d}"
        x, y = vanishing_point(scene, SCAN_STEP * i, calib["P2"])
        vps[f"SemanticKITTI/dataset/sequences/{sequence}/image_2/{fid}.png"] = [[round(x, 4), round(y, 4)]]
    write_json(root / "vanishing_points" / f"seq_{sequence}.json", vps)


def _worker(args) -> tuple[str, int, float]:
    seq_dir, seed, sequence, frames, index, cameras, extra_only = args
    t0 = time.perf_counter()
    write_frame(Path(seq_dir), seed, sequence, frames, index, cameras, extra_only)
    return sequence, index, time.perf_counter() - t0


def _check_args(sequences, frames, seed, workers, cameras=1) -> tuple[list[str], int]:
    if sequences is None:
        sequences = list(DEFAULT_SEQUENCES)
    if isinstance(sequences, str):
        sequences = [s for s in sequences.split(",") if s.strip()]
    out = []
    for s in sequences:
        s = str(s).strip()
        if not re.fullmatch(r"\d{2}", s):
            raise OccError(f"bad sequence name '{s}': expected two digits such as 00 or 08")
        if s not in out:
            out.append(s)
    if not out:
        raise OccError("no sequences given")
    frames = DEFAULT_FRAMES if frames is None else frames
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= frames <= MAX_FRAMES:
        raise OccError(f"frames must be an integer from 1 to {MAX_FRAMES} (--frames), got {frames!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OccError(f"seed must be a non-negative integer (--seed), got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise OccError(f"workers must be a positive integer (--workers), got {workers!r}")
    if isinstance(cameras, bool) or not isinstance(cameras, (int, np.integer)) or cameras not in CAMERA_COUNTS:
        raise OccError(f"cameras must be 1 or 3 (--cameras), got {cameras!r}")
    return out, int(frames)


def _check_record(root: Path, seed: int, frames: int, cameras: int, force: bool) -> dict | None:
    """The earlier run's record; an error when its files would mix with this run's.

    Allowed without ``force``: the same options, more sequences, more frames of the same scene
    (``_scene_scans`` unchanged) and ``cameras`` 1 -> 3 (each gives the files of a fresh run).
    """
    from occ_core.utils.io import read_json

    path = root / RECORD
    if not path.is_file():
        return None
    old = read_json(path, "synthetic dataset record", expect=dict)
    if force:
        return old
    try:
        o_seed, o_frames, o_cameras = int(old["seed"]), int(old["frames"]), int(old["cameras"])
    except (KeyError, TypeError, ValueError):
        from occ_core.errors import FormatError

        raise FormatError("expected keys seed, frames, sequences, cameras", path) from None
    if o_seed != seed:
        what = f"--seed {o_seed}; add --force to regenerate it with --seed {seed}"
    elif o_frames != frames and not (frames > o_frames and _scene_scans(frames) == _scene_scans(o_frames)):
        what = f"--frames {o_frames}; add --force to regenerate it with --frames {frames}"
    elif cameras < o_cameras:
        what = f"--cameras {o_cameras}; add --force to regenerate it with --cameras {cameras}"
    else:
        return old
    raise OccError(f"generated with {what}", path)


def _remove_stale(base: Path, old: dict, sequences: list[str], frames: int, cameras: int) -> None:
    """``force``: remove files of the old record that the new options do not write again."""
    try:
        o_frames, o_cameras = int(old["frames"]), int(old["cameras"])
    except (KeyError, TypeError, ValueError):
        return
    for seq in sequences:
        seq_dir = base / seq
        for i in range(o_frames):
            fid = f"{SCAN_STEP * i:06d}"
            keep = set(frame_files(seq_dir, fid, cameras)) if i < frames else set()
            for p in frame_files(seq_dir, fid, o_cameras):
                if p not in keep and p.is_file():
                    p.unlink()


def generate_dataset(root, sequences=None, frames=None, seed=0, workers=1, progress=True, cameras=1,
                     force=False) -> dict:
    """Write ROOT/dataset/sequences/XX/... (and ROOT/vanishing_points/); return a summary dict.

    Frames whose files all exist are skipped (the generator is resumable); every file is written
    atomically, the voxel files last. The same seed gives byte-identical files.
    ``cameras=3`` adds the side cameras image_4 (yawed left) and image_5 (yawed right) with their
    semantic/depth images and calib keys P4, Tr_4, P5, Tr_5; ``cameras=1`` (the default) writes the
    stereo pair only, and its files are the same either way (a finished ``cameras=1`` frame resumed
    with ``cameras=3`` only gets the extra cameras rendered).

    The options are recorded in ``ROOT/synthetic.json`` before any frame is written; a rerun whose
    files would mix with the earlier ones (another seed, fewer frames or another scene length, fewer
    cameras) is refused unless ``force``, which regenerates every frame (and removes the old extra
    ones). Temporary files of a killed run are removed first.
    """
    sequences, frames = _check_args(sequences, frames, seed, workers, cameras)
    cameras = int(cameras)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OccError("output path exists and is not a folder", root)
    t0 = time.perf_counter()
    base = root / "dataset" / "sequences"
    old = _check_record(root, int(seed), frames, cameras, force)
    root.mkdir(parents=True, exist_ok=True)
    remove_temp_files(root)
    if force and old is not None:
        _remove_stale(base, old, sequences, frames, cameras)
    known = [str(s) for s in old.get("sequences", [])] if old is not None and not force else []
    write_json(root / RECORD, {"seed": int(seed), "frames": frames, "cameras": cameras,
                               "sequences": sorted(set(known) | set(sequences))})
    tasks = []
    skipped = 0
    for seq in sequences:
        seq_dir = base / seq
        seq_dir.mkdir(parents=True, exist_ok=True)
        write_sequence_files(root, seq_dir, seed, seq, frames, cameras)
        for i in range(frames):
            fid = f"{SCAN_STEP * i:06d}"
            if not force and all(p.is_file() for p in frame_files(seq_dir, fid, cameras)):
                skipped += 1
            else:
                # A finished cameras=1 frame only needs its extra cameras.
                extra_only = not force and cameras > 1 and all(p.is_file() for p in frame_files(seq_dir, fid))
                tasks.append((str(seq_dir), int(seed), seq, frames, i, cameras, extra_only))

    frame_seconds: list[float] = []

    def _iterate():
        if workers == 1 or len(tasks) <= 1:
            for t in tasks:
                yield _worker(t)
        else:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx,
                                     **pool_kwargs()) as pool:
                futures = [pool.submit(_worker, t) for t in tasks]
                for f in as_completed(futures):
                    yield f.result()

    it = _iterate()
    if progress and tasks:
        from occ_core.utils.progress import track

        it = track(it, "synthetic frames", total=len(tasks))
    for _, _, sec in it:
        frame_seconds.append(sec)
    seconds = time.perf_counter() - t0
    return {
        "sequences": len(sequences),
        "frames_written": len(tasks),
        "frames_skipped": skipped,
        "seconds": round(seconds, 2),
        "seconds_per_frame": round(float(np.mean(frame_seconds)), 3) if frame_seconds else 0.0,
    }

"""``occ prepare``: raw SemanticKITTI / SSCBench-KITTI360 folders to the prepared layout.

See :mod:`occ_core.data.prepare.layout` for the output layout. For each voxel frame:

* targets at 1:1, 1:2, 1:4, 1:8 (learning map, invalid -> 255, benchmark downsampling rule);
* the input occupancy (``voxels/*.bin``) and, where given, the occluded mask;
* a sparse depth map of the LiDAR scan projected into the left image (when the scan exists);
* references to the stereo pair, the scan and its point labels.

Per sequence: calibration and the projection of every voxel centre into the left image at the
four scales, with the field-of-view mask. Frames are written atomically (depth first, the frame's
``.npz`` last), so a killed run leaves no half-written frame and a rerun skips finished frames.
The manifest is rewritten at the end of every run.

Before the first write: every frame's voxel files and scans are checked by size (stat only), the
options that change the output are compared with ``OUT/prepare.json`` (written before any frame), an
exclusive lock ``OUT/.prepare.lock`` is taken, and temporary files of a killed run are removed.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from occ_core import __version__
from occ_core.data.formats import kitti360 as k360
from occ_core.data.formats import semantickitti as sk
from occ_core.data.prepare.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    TARGET_KEYS,
    Frame,
    depth_path,
    frame_path,
    geometry_path,
    read_npz,
    split_of,
)
from occ_core.errors import FormatError, MissingError, OccError
from occ_core.geometry.projection import SCALES, project_voxels, sparse_depth_map
from occ_core.utils.atomic import atomic_path, remove_temp_files, save_npz, write_json
from occ_core.utils.procs import pool_kwargs
from occ_core.utils.progress import track

OPTIONS = "prepare.json"
"""The options that change the prepared output (dataset, depth, cameras), written before any frame."""
LOCK = ".prepare.lock"

DEPTH_SCALE = 256.0
"""KITTI depth PNG convention: uint16 value = metres x 256; 0 = no measurement."""


# ------------------------------------------------------------------------------------------------
# Raw sources
# ------------------------------------------------------------------------------------------------


@dataclass
class SequenceInfo:
    """One raw sequence: calibration and its voxel frames (file paths relative to the source)."""

    name: str
    Tr: np.ndarray  # 4x4 velodyne -> cam0
    K: np.ndarray  # 3x3 intrinsics of the left image
    P2: np.ndarray  # 3x4
    P3: np.ndarray  # 3x4
    frames: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    cameras: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Camera name -> (K 3x3, grid -> camera 4x4), in the spec's camera order (the first is image_2)."""

    def __post_init__(self) -> None:
        if not self.cameras:
            self.cameras = {sk.CAMERA: (self.K, self.Tr)}


def _rel(path: Path, base: Path) -> str | None:
    return path.relative_to(base).as_posix() if path.is_file() else None


def _voxel_files(vox: Path, fid: str, base: Path) -> dict[str, str | None]:
    """The frame's voxel files (``voxels/NNNNNN.{bin,label,invalid,occluded}``) relative to ``base``."""
    return {f"voxel_{kind}": _rel(vox / f"{fid}.{kind}", base) for kind in ("bin", "label", "invalid", "occluded")}


def _voxel_ids(vox: Path) -> list[str]:
    """Ids of the voxel frames in ``vox`` (a ``.bin`` or a ``.label``); an error when there is none."""
    ids = sorted(set(sk.list_ids(vox, ".bin")) | set(sk.list_ids(vox, ".label")))
    if not ids:
        raise MissingError("no voxel frames (voxels/NNNNNN.bin)", vox)
    return ids


class SemanticKittiSource:
    """``ROOT/dataset/sequences/XX`` in the SemanticKITTI odometry layout."""

    dataset = "semantickitti"
    class_names = sk.CLASS_NAMES
    splits = sk.SPLITS
    image_size = sk.IMAGE_SIZE
    remap_lut = sk.REMAP_LUT
    clear_invalid_on_label = False
    counts_frequencies = False  # the published class frequencies are used

    @staticmethod
    def spec(cameras: list[str], frequencies=None):
        return sk.dataset_spec(tuple(cameras))

    def __init__(self, root: str | Path):
        self.base = sk.find_sequences_dir(root)  # file paths in the manifest are relative to it
        self.root = self.base.parent.parent if self.base.parent.name == "dataset" else self.base.parent

    def available(self) -> list[str]:
        return sorted(p.name for p in self.base.iterdir() if p.is_dir() and p.name.isdigit())

    def load(self, seq: str) -> SequenceInfo:
        d = self.base / seq
        calib = sk.read_calib(d / "calib.txt")
        info = SequenceInfo(seq, sk.to_homogeneous(calib["Tr"]), calib["P2"][:3, :3].copy(), calib["P2"], calib["P3"])
        info.cameras.update(extra_cameras(d, calib))
        vox = d / "voxels"
        ids = _voxel_ids(vox)
        _check_frame_lists(d, ids)
        for fid in ids:
            files = {
                "image_2": _rel(d / "image_2" / f"{fid}.png", self.base),
                "image_3": _rel(d / "image_3" / f"{fid}.png", self.base),
                **{cam: _rel(d / cam / f"{fid}.png", self.base) for cam in list(info.cameras)[1:]},
                "velodyne": _rel(d / "velodyne" / f"{fid}.bin", self.base),
                "labels": _rel(d / "labels" / f"{fid}.label", self.base),
                **_voxel_files(vox, fid, self.base),
            }
            info.frames.append((fid, files))
        return info

    def vanishing_points(self, seq: str) -> dict[str, tuple[float, float]]:
        """True VPs written beside the dataset (``ROOT/vanishing_points/seq_XX.json``), if any."""
        path = self.root / "vanishing_points" / f"seq_{seq}.json"
        if not path.is_file():
            return {}
        from occ_core.utils.io import read_json

        data = read_json(path, "vanishing point file", expect=dict)
        out = {}
        for key, value in data.items():
            try:
                out[Path(key).stem] = (float(value[0][0]), float(value[0][1]))
            except (TypeError, ValueError, IndexError):
                raise FormatError(f"entry '{key}': expected [[x, y]]", path) from None
        return out


class Kitti360Source:
    """SSCBench-KITTI360: ``ROOT/data_2d_raw/2013_05_28_drive_00XX_sync``."""

    dataset = "kitti360"
    class_names = k360.CLASS_NAMES
    splits = k360.SPLITS
    image_size = k360.IMAGE_SIZE
    remap_lut = k360.REMAP_LUT
    clear_invalid_on_label = True
    counts_frequencies = True  # SSCBench publishes none: counted over the prepared training split

    @staticmethod
    def spec(cameras: list[str], frequencies=None):
        return k360.dataset_spec(frequencies)

    def __init__(self, root: str | Path):
        self.base = k360.find_root(root)
        self.root = self.base
        self.Tr, self.K, self.calib_source = k360.read_calibration(self.base)

    def available(self) -> list[str]:
        names = [k360.sequence_name(p.name) for p in (self.base / "data_2d_raw").iterdir() if p.is_dir()]
        return sorted(n for n in names if n is not None)

    def load(self, seq: str) -> SequenceInfo:
        folder = k360.sequence_folder(seq)
        d = self.base / "data_2d_raw" / folder
        P2 = np.zeros((3, 4))
        P2[:3, :3] = self.K
        P3 = k360.read_right_projection(self.base)
        info = SequenceInfo(seq, self.Tr, self.K, P2, P2.copy() if P3 is None else P3)
        vox = d / "voxels"
        ids = _voxel_ids(vox)
        _check_voxel_files(vox, ids)
        scans = self.base / "data_3d_raw" / folder / "velodyne_points" / "data"

        def image(cam: str, fid: str) -> str | None:
            for name in (f"{fid}.png", f"{int(fid):010d}.png"):
                rel = _rel(d / cam / "data_rect" / name, self.base)
                if rel:
                    return rel
            return None

        for fid in ids:
            files = {
                "image_2": image("image_00", fid),
                "image_3": image("image_01", fid),
                "velodyne": _rel(scans / f"{int(fid):010d}.bin", self.base),
                "labels": None,
                **_voxel_files(vox, fid, self.base),
            }
            info.frames.append((fid, files))
        return info

    def vanishing_points(self, seq: str) -> dict[str, tuple[float, float]]:
        return {}


def extra_cameras(seq_dir: Path, calib: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Extra cameras of a KITTI-layout sequence (the synthetic data's ``image_4``, ``image_5``, ...):
    a folder ``image_<k>`` (k >= 4) with intrinsics ``P<k>[:, :3]`` and extrinsics ``Tr_<k>``
    (velodyne -> camera k) in calib.txt. Returns name -> (K, grid -> camera), by k."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ks = sorted(int(p.name[6:]) for p in seq_dir.glob("image_*") if p.is_dir() and p.name[6:].isdigit())
    for k in (k for k in ks if k >= 4):
        name = f"image_{k}"
        for key in (f"P{k}", f"Tr_{k}"):
            if key not in calib:
                raise FormatError(f"camera folder {name} has no calibration key '{key}'", seq_dir / "calib.txt")
        out[name] = (calib[f"P{k}"][:3, :3].copy(), sk.to_homogeneous(calib[f"Tr_{k}"]))
    return out


def _check_voxel_files(vox: Path, ids: list[str]) -> None:
    for fid in ids:
        has_label = (vox / f"{fid}.label").is_file()
        if not (vox / f"{fid}.bin").is_file():
            raise MissingError(f"input occupancy missing although {fid}.label exists", vox / f"{fid}.bin")
        if has_label and not (vox / f"{fid}.invalid").is_file():
            raise MissingError(f"invalid mask missing although {fid}.label exists", vox / f"{fid}.invalid")


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _check_frame_lists(seq_dir: Path, ids: list[str]) -> None:
    """Clear errors for frame lists that do not agree with each other."""
    _check_voxel_files(seq_dir / "voxels", ids)
    poses, times = seq_dir / "poses.txt", seq_dir / "times.txt"
    n_poses = _count_lines(poses) if poses.is_file() else None
    n_times = _count_lines(times) if times.is_file() else None
    if n_poses is not None and n_times is not None and n_poses != n_times:
        raise FormatError(f"{n_poses} poses but times.txt has {n_times} lines", poses)
    last = int(ids[-1])
    for path, n in ((poses, n_poses), (times, n_times)):
        if n is not None and n <= last:
            raise FormatError(f"{n} lines, but voxel frame {ids[-1]} needs at least {last + 1}", path)
    for fid in ids:
        scan, labels = seq_dir / "velodyne" / f"{fid}.bin", seq_dir / "labels" / f"{fid}.label"
        if scan.is_file() and labels.is_file():
            n_points, rem = divmod(scan.stat().st_size, 16)
            if rem:
                raise FormatError(f"wrong file size: {scan.stat().st_size} bytes is not a multiple of 16", scan)
            if labels.stat().st_size != 4 * n_points:
                raise FormatError(f"{labels.stat().st_size // 4} point labels for {n_points} points in {scan.name}", labels)


def check_input_sizes(infos: list[SequenceInfo], base: Path, grid_shape: tuple[int, int, int]) -> None:
    """Check the size of every frame's voxel files and scans (stat only, nothing decoded): bit-packed
    grids are n_voxels/8 bytes, voxel labels 2*n_voxels, scans a multiple of 16 bytes and point labels
    4 bytes per point. Run for all frames before anything is written."""
    n_voxels = int(np.prod(grid_shape))
    expected = {"voxel_bin": n_voxels // 8, "voxel_invalid": n_voxels // 8, "voxel_occluded": n_voxels // 8,
                "voxel_label": 2 * n_voxels}
    for info in infos:
        for _fid, files in info.frames:
            for key, size in expected.items():
                if files.get(key) is None:
                    continue
                path = base / files[key]
                actual = path.stat().st_size
                if actual != size:
                    raise FormatError(f"wrong file size: {actual} bytes, expected {size}", path)
            if files.get("velodyne") is None:
                continue
            scan = base / files["velodyne"]
            n_points, rem = divmod(scan.stat().st_size, 16)
            if rem:
                raise FormatError(f"wrong file size: {scan.stat().st_size} bytes is not a multiple of 16 "
                                  "(4 float32 per point)", scan)
            if files.get("labels") is not None:
                labels = base / files["labels"]
                if labels.stat().st_size != 4 * n_points:
                    raise FormatError(f"wrong file size: {labels.stat().st_size} bytes, expected {4 * n_points} "
                                      f"(4 per point of {scan.name})", labels)


def _lock(out: Path, name: str = LOCK):
    """An exclusive, non-blocking lock on ``OUT/.prepare.lock`` (or ``OUT/<name>``; an open file; closing it
    unlocks)."""
    path = out / name
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    f = open(path, "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise OccError("another 'occ prepare' is writing into this folder; wait for it to finish", path) from None
    return f


def _previous_options(out: Path) -> tuple[dict[str, Any] | None, Path]:
    """The options an earlier run recorded (prepare.json, else the manifest of an older version)."""
    from occ_core.utils.io import read_json

    for name in (OPTIONS, MANIFEST):
        path = out / name
        if not path.is_file():
            continue
        try:
            data = read_json(path, "prepare options" if name == OPTIONS else "manifest", expect=dict)
        except FormatError:
            if name == OPTIONS:
                raise
            return None, path  # a broken manifest is rewritten at the end
        if name == MANIFEST:
            data = {"dataset": data.get("dataset"), "depth": data.get("depth", "lidar")}
        return data, path
    return None, out / OPTIONS


def _check_options(out: Path, options: dict[str, Any]) -> None:
    """Refuse to mix outputs of different options in one folder (``--force`` redoes it)."""
    previous, path = _previous_options(out)
    if previous is None:
        return
    flags = {"dataset": "dataset", "depth": "--depth", "cameras": "cameras"}
    for key, flag in flags.items():
        old, new = previous.get(key), options[key]
        if old is None or old == new:
            continue
        show = (lambda v: ",".join(v)) if key == "cameras" else str
        raise OccError(f"prepared with {flag} {show(old)}; add --force to redo it with {flag} {show(new)}", path)


def open_source(dataset: str, root: str | Path) -> SemanticKittiSource | Kitti360Source:
    if dataset in ("kitti", "semantickitti", "synthetic"):
        return SemanticKittiSource(root)
    if dataset in ("kitti360", "sscbench-kitti360"):
        return Kitti360Source(root)
    raise OccError(f"unknown dataset '{dataset}' (known: kitti, kitti360)")


# ------------------------------------------------------------------------------------------------
# Per-frame work (runs in worker processes)
# ------------------------------------------------------------------------------------------------


def build_targets(raw: np.ndarray, invalid: np.ndarray | None, lut: np.ndarray, clear_invalid_on_label: bool) -> dict[str, np.ndarray]:
    """Targets at every scale from raw voxel ids and the invalid mask."""
    from occ_core.data.prepare.downsample import downsample_label

    if invalid is not None and clear_invalid_on_label:
        invalid = invalid & (raw == 0)
    target = lut[raw.astype(np.intp)]
    if invalid is not None:
        target[invalid] = sk.IGNORE
    return {TARGET_KEYS[s]: (target if s == 1 else downsample_label(target, s)) for s in SCALES}


SGBM_MAX_DEPTH = 80.0
"""Stereo depth beyond this many metres (disparity below ~4 px on KITTI) is dropped as unreliable."""


def stereo_depth(left_path: Path, right_path: Path, fx: float, baseline: float, image_size: tuple[int, int],
                 num_disparities: int = 128, block_size: int = 5) -> np.ndarray:
    """Depth (metres, 0 = unknown) of the left image from OpenCV semi-global block matching.

    Disparity is computed on the full images, then cropped like the benchmark loaders
    (top-left ``image_size``); depth = fx * baseline / disparity, kept for disparities of at least
    one pixel and depths up to :data:`SGBM_MAX_DEPTH`.
    """
    import cv2

    left = cv2.imread(os.fspath(left_path), cv2.IMREAD_GRAYSCALE)
    right = cv2.imread(os.fspath(right_path), cv2.IMREAD_GRAYSCALE)
    for img, path in ((left, left_path), (right, right_path)):
        if img is None:
            raise FormatError("cannot read image", path)
    if left.shape != right.shape:
        raise FormatError(f"stereo pair sizes differ ({left.shape[1]}x{left.shape[0]} vs {right.shape[1]}x{right.shape[0]})", right_path)
    sgbm = cv2.StereoSGBM_create(minDisparity=0, numDisparities=num_disparities, blockSize=block_size,
                                 P1=8 * block_size ** 2, P2=32 * block_size ** 2, disp12MaxDiff=1, uniquenessRatio=10,
                                 speckleWindowSize=100, speckleRange=2, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    disp = sgbm.compute(left, right).astype(np.float32) / 16.0
    w, h = image_size
    disp = disp[:h, :w]
    depth = np.zeros_like(disp)
    ok = disp >= 1.0
    depth[ok] = fx * baseline / disp[ok]
    depth[depth > SGBM_MAX_DEPTH] = 0.0
    return depth


def _prepare_frame(job: dict[str, Any]) -> str:
    base: Path = job["base"]
    files: dict[str, str | None] = job["files"]
    arrays: dict[str, np.ndarray] = {}
    if files["voxel_label"] is not None:
        raw = sk.read_voxel_label(base / files["voxel_label"])
        invalid = sk.read_voxel_bits(base / files["voxel_invalid"])
        arrays.update(build_targets(raw, invalid, job["lut"], job["clear_invalid_on_label"]))
    arrays["input_occ"] = sk.read_voxel_bits(base / files["voxel_bin"])
    if files["voxel_occluded"] is not None:
        arrays["occluded"] = sk.read_voxel_bits(base / files["voxel_occluded"])
    points = None
    for i, (cam, K, T, depth_out) in enumerate(job["cameras"]):
        depth = None
        if job["depth"] == "lidar" and files["velodyne"] is not None:
            if points is None:
                points = sk.read_scan(base / files["velodyne"])
            depth = sparse_depth_map(points[:, :3], T, K, job["image_size"])
        elif (job["depth"] == "sgbm" and i == 0 and files["image_2"] is not None
              and files["image_3"] is not None):  # stereo: the left camera of the pair only
            depth = stereo_depth(base / files["image_2"], base / files["image_3"], K[0, 0], job["baseline"],
                                 job["image_size"])
        if depth is not None:
            import cv2

            png = np.clip(np.round(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)
            with atomic_path(depth_out) as tmp:
                if not cv2.imwrite(os.fspath(tmp), png):
                    raise OSError(f"could not write {depth_out}")
    save_npz(job["frame_out"], **arrays)  # last: its presence marks the frame done
    return job["name"]


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def stereo_baseline(info: SequenceInfo) -> float:
    """Distance (m) between the left and right cameras from P2 and P3 (P = K [I | t])."""
    fx = info.P2[0, 0]
    return float(abs(info.P2[0, 3] - info.P3[0, 3]) / fx) if fx else 0.0


def _write_geometry(out: Path, info: SequenceInfo, image_size: tuple[int, int]) -> None:
    path = geometry_path(out, info.name)
    if path.is_file():
        return
    arrays: dict[str, np.ndarray] = {"Tr": info.Tr, "K": info.K, "P2": info.P2, "P3": info.P3,
                                     "image_size": np.array(image_size)}
    for s in SCALES:
        proj = project_voxels(info.Tr, info.K, image_size, scale=s)
        for key, value in proj.items():
            arrays[f"{key}_{s}"] = value
        for K, T in list(info.cameras.values())[1:]:  # fov: in view of any camera
            arrays[f"fov_mask_{s}"] = arrays[f"fov_mask_{s}"] | project_voxels(T, K, image_size, scale=s)["fov_mask"]
    for name, (K, T) in info.cameras.items():
        arrays[f"K_{name}"], arrays[f"T_{name}"] = K, T
    save_npz(path, compress=False, **arrays)  # ~31 MB; compressing it costs seconds per sequence


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    sequences: list[str] | None = None,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    depth: str = "lidar",
) -> dict[str, Any]:
    """Prepare a raw dataset (``"kitti"`` or ``"kitti360"``) under ``out``.

    ``depth`` chooses the depth map written per frame: ``"lidar"`` (the scan projected into the left
    image) or ``"sgbm"`` (OpenCV semi-global block matching on the stereo pair).

    Returns a summary: frames written, skipped (already done), labeled, seconds, manifest path.
    """
    if workers < 1:
        raise OccError(f"--workers must be at least 1 (got {workers})")
    if depth not in ("lidar", "sgbm"):
        raise OccError(f"--depth must be 'lidar' or 'sgbm' (got '{depth}')")
    source = open_source(dataset, root)
    out = Path(out)
    available = source.available()
    if sequences is None:
        sequences = available
        if not sequences:
            raise MissingError("no sequences found", source.base)
    else:
        sequences = [f"{int(s):02d}" if s.isdigit() else s for s in sequences]
        missing = [s for s in sequences if s not in available]
        if missing:
            raise MissingError(f"sequence(s) {', '.join(missing)} not found (available: {', '.join(available) or 'none'})", source.base)
    if out.resolve() == Path(source.base).resolve() or Path(source.base).resolve() in out.resolve().parents:
        raise OccError(f"--out must not be inside the raw data folder {source.base}")

    t0 = time.perf_counter()
    infos = [source.load(seq) for seq in sequences]  # validates everything before writing anything
    if depth == "sgbm":
        for info in infos:
            if stereo_baseline(info) <= 0:
                raise OccError(f"sequence {info.name}: stereo baseline unknown (P2 and P3 agree), cannot use --depth sgbm")
    cameras = list(infos[0].cameras)
    for info in infos[1:]:
        if list(info.cameras) != cameras:
            raise OccError(f"sequence {info.name} has cameras {', '.join(info.cameras)}, sequence {infos[0].name} "
                           f"has {', '.join(cameras)}: one prepared folder needs one camera set")
    check_input_sizes(infos, Path(source.base), tuple(source.spec(cameras).grid.shape))
    options = {"dataset": source.dataset, "depth": depth, "cameras": cameras}
    if not force:
        _check_options(out, options)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        summary = _prepare_locked(source, out, sequences, infos, options, workers, force, progress, t0)
    finally:
        if lock is not None:
            lock.close()
    from occ_core.data.prepare.masks import MASKS_DIR, import_beside

    if (Path(source.root) / MASKS_DIR).is_dir():  # instance masks beside dataset/ (the synthetic generator's)
        summary["masks"] = import_beside(out, Path(source.root) / MASKS_DIR, workers=workers, force=force,
                                         progress=progress)
    return summary


def _prepare_locked(source, out: Path, sequences: list[str], infos: list[SequenceInfo], options: dict[str, Any],
                    workers: int, force: bool, progress: bool, t0: float) -> dict[str, Any]:
    depth, cameras = options["depth"], options["cameras"]
    if not force:  # under the lock: another run may have recorded other options meanwhile
        _check_options(out, options)
    remove_temp_files(out)
    write_json(out / OPTIONS, options)
    for info in infos:
        _write_geometry(out, info, source.image_size)

    records: list[Frame] = []
    jobs: list[dict[str, Any]] = []
    for info in infos:
        vps = source.vanishing_points(info.name)
        split = split_of(info.name, source.splits)
        for fid, files in info.frames:
            records.append(Frame(info.name, fid, split, files["voxel_label"] is not None, files, vps.get(fid)))
            target = frame_path(out, info.name, fid)
            if target.is_file() and not force:
                continue
            jobs.append({
                "name": f"{info.name}/{fid}", "base": source.base, "files": files,
                "cameras": [(cam, K, T, depth_path(out, info.name, fid, i, cam))
                            for i, (cam, (K, T)) in enumerate(info.cameras.items())],
                "image_size": source.image_size, "lut": source.remap_lut,
                "clear_invalid_on_label": source.clear_invalid_on_label,
                "frame_out": target, "depth": depth,
                "baseline": stereo_baseline(info),
            })

    description = f"prepare {source.dataset}"
    if workers == 1 or len(jobs) <= 1:
        iterator = track(jobs, description) if progress else jobs
        for job in iterator:
            _prepare_frame(job)
    else:
        with ProcessPoolExecutor(max_workers=workers, **pool_kwargs()) as pool:
            futures = [pool.submit(_prepare_frame, job) for job in jobs]
            done = as_completed(futures)
            for fut in (track(done, description, total=len(futures)) if progress else done):
                fut.result()

    frequencies = None
    if source.counts_frequencies:
        frequencies = train_class_counts(out, [r for r in records if r.split == "train" and r.labeled],
                                         len(source.class_names)).tolist()
    spec = source.spec(cameras, frequencies)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "occ_version": __version__,
        "dataset": source.dataset,
        "source": os.path.relpath(Path(source.base).resolve(), out.resolve()),
        "spec": spec.to_json(),
        "depth_scale": DEPTH_SCALE,
        "depth": depth,
        "scales": list(SCALES),
        "splits": source.splits,
        "sequences": sequences,
        "frames": [r.to_json() for r in records],
    }
    # Merge with frames of other sequences prepared earlier into the same folder.
    old_path = out / MANIFEST
    if old_path.is_file():
        from occ_core.utils.io import read_json

        try:
            old = read_json(old_path, "manifest", expect=dict)
            if old.get("dataset") == source.dataset:
                keep = [f for f in old.get("frames", []) if f["sequence"] not in sequences]
                manifest["frames"] = sorted(keep + manifest["frames"], key=lambda f: (f["sequence"], f["id"]))
                manifest["sequences"] = sorted(set(old.get("sequences", [])) | set(sequences))
        except (FormatError, KeyError, TypeError):
            pass  # a broken manifest is simply rewritten
    write_json(out / MANIFEST, manifest)
    return {
        "frames": len(records),
        "written": len(jobs),
        "skipped": len(records) - len(jobs),
        "labeled": sum(r.labeled for r in records),
        "sequences": sequences,
        "seconds": time.perf_counter() - t0,
        "manifest": str(out / MANIFEST),
    }


def train_class_counts(out: Path, frames: list[Frame], n_classes: int) -> np.ndarray:
    """Voxels per class over the 1:1 targets of ``frames`` (prepared under ``out``), int64 [n_classes]."""
    from occ_core.data.spec import count_classes

    counts = np.zeros(n_classes, np.int64)
    for f in frames:
        z = read_npz(frame_path(out, f.sequence, f.id), [TARGET_KEYS[1]])
        counts += count_classes(z[TARGET_KEYS[1]], n_classes)
    return counts


def prepare_kitti(root: str | Path, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Prepare SemanticKITTI (or the synthetic data, which uses its layout); see :func:`prepare`."""
    return prepare("kitti", root, out, **kwargs)


def prepare_kitti360(root: str | Path, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Prepare SSCBench-KITTI360; see :func:`prepare`."""
    return prepare("kitti360", root, out, **kwargs)

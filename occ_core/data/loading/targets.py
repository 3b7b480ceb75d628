"""Binary occupancy targets for B2S (occupied / empty / unknown), and the label-fraction split.

A binary grid is uint8 ``[256, 256, 32]``: 0 = empty, 1 = occupied, 255 = unknown (ignored).

Two sources:

* :func:`binary_from_semantic`: a semantic target -> ``class > 0`` is occupied, 0 empty, 255 kept.
* :func:`accumulate_lidar`: LiDAR scans of the surrounding frames, transformed into the current
  frame's velodyne frame along the poses and voxelized. With ``free_space="rays"`` the voxels that
  some ray traverses (and no point hits) are empty and the rest unknown; with ``"all"`` every
  voxel without a point is empty (the dense assumption).

KITTI poses are cam0 poses (``poses.txt``, cam0 of each scan in the cam0 frame of scan 0) and
``Tr`` maps velodyne -> cam0, so a point of scan ``j`` goes to the velodyne frame of scan ``i`` by
``inv(Tr) @ inv(pose_i) @ pose_j @ Tr``. Scans that are missing (e.g. the real mini frames have
scans 0-9 only) are skipped; a frame none of whose window scans exists has no LiDAR binary target
(:class:`LidarBinarySource` returns None).

Voxelization offset: the real SemanticKITTI ``voxels/*.bin`` match the scan binned with the grid
origin only when the points are raised by 0.2 m first (measured on sequence 00: IoU 0.23 as is,
0.997 raised); the synthetic data needs no offset. :func:`estimate_z_offset` picks, per sequence,
the offset under which a frame's own scan best reproduces its input occupancy (``input_occ``).

The label-fraction split (:func:`select_labeled`) keeps semantic labels on a deterministic
fraction of the training frames (the rest keep binary occupancy only).

Target sources (the end of this module) are what :class:`occ_core.data.loading.dataset.OccDataset` asks
for a frame's target keys. Each is a small class with ``arrays(frame)`` (the stored arrays it reads from
the frame's ``.npz``: the dataset reads their union once per frame), ``available(frame)`` (whether it can
give this frame's keys; frame selection uses it) and ``__call__(frame, arrays) -> dict`` of batch tensors:

* :class:`SemanticTargets`: ``target`` / ``target_1_S`` (int64, 255 = ignore) of labeled frames;
* :class:`BinaryOccupancy`: ``binary`` / ``binary_1_S`` (B2S, int64 0/1/255), from the semantic target
  (:class:`SemanticBinary`) on labeled frames, else from LiDAR (:class:`LidarBinary`);
* :class:`LabelFraction`: ``has_semantics``, and the semantic targets of the frames whose labels
  ``data.label_fraction`` withholds set to 255.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from occ_core.data.formats.semantickitti import GRID_ORIGIN, GRID_SHAPE, IGNORE, VOXEL_SIZE

EMPTY, OCCUPIED, UNKNOWN = 0, 1, IGNORE

MOVING_RAW_MIN = 252
"""Raw SemanticKITTI ids >= this are moving objects (moving-car, ...): left out of other scans."""


@dataclass
class LidarBinaryConfig:
    """Binary occupancy from LiDAR scans accumulated along the poses (frames with no target)."""

    before: int = 10
    """Scans before the frame that are accumulated (scan ids i - before .. i)."""
    after: int = 30
    """Scans after the frame that are accumulated (scan ids i .. i + after)."""
    max_scans: int = 12
    """At most this many scans (evenly subsampled from the window; the frame's own scan always kept)."""
    free_space: str = "rays"
    """'rays': voxels traversed by a ray and hit by no point are empty, the rest unknown (255);
    'all': every voxel without a point is empty."""
    ray_stride: int = 4
    """Cast free-space rays through every N-th point only (speed)."""
    drop_moving: bool = True
    """Leave out points labelled as moving objects (raw id >= 252) in the other scans, when point labels exist."""
    z_offset: str = "auto"
    """Metres added to z before binning, or 'auto': the value in {0, 0.2} under which a frame's own scan
    best matches its input occupancy (real SemanticKITTI needs 0.2, the synthetic data 0)."""


# ------------------------------------------------------------------------------------------------
# From semantic targets
# ------------------------------------------------------------------------------------------------


def binary_from_semantic(target: np.ndarray) -> np.ndarray:
    """Semantic target (class indices, 255 = ignore) -> binary uint8 (0 empty, 1 occupied, 255 kept)."""
    t = np.asarray(target)
    out = (t > 0).astype(np.uint8)
    out[t == IGNORE] = UNKNOWN
    return out


# ------------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------------


def relative_transform(pose_i: np.ndarray, pose_j: np.ndarray, Tr: np.ndarray) -> np.ndarray:
    """4x4 transform from the velodyne frame of scan j to that of scan i (cam0 poses, Tr velo -> cam0)."""
    Tr = np.asarray(Tr, np.float64)
    return np.linalg.inv(Tr) @ np.linalg.inv(pose_i) @ pose_j @ Tr


def voxel_index(points: np.ndarray, z_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [N, 3] voxel indices, bool [N] inside the grid) of velodyne-frame points."""
    p = np.asarray(points, np.float64)[:, :3].copy()
    p[:, 2] += z_offset
    idx = np.floor((p - np.asarray(GRID_ORIGIN)) / VOXEL_SIZE).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(GRID_SHAPE)), axis=1)
    return idx, ok


def voxelize(points: np.ndarray, z_offset: float = 0.0) -> np.ndarray:
    """Bool grid of the voxels holding at least one point."""
    grid = np.zeros(GRID_SHAPE, dtype=bool)
    idx, ok = voxel_index(points, z_offset)
    idx = idx[ok]
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return grid


def _free_voxels(origin: np.ndarray, points: np.ndarray, z_offset: float, out: np.ndarray,
                 step: float = 0.5 * VOXEL_SIZE, chunk: int = 1 << 22) -> None:
    """Mark (in ``out``, bool grid) the voxels traversed by the rays origin -> point, up to one step
    before the point. Each ray is clipped to the grid's box first, so only samples inside it are made."""
    if len(points) == 0:
        return
    o = np.asarray(origin, np.float64)[:3].copy()
    o[2] += z_offset
    p = np.asarray(points, np.float64)[:, :3].copy()
    p[:, 2] += z_offset
    lo = np.asarray(GRID_ORIGIN, np.float64)
    hi = lo + np.asarray(GRID_SHAPE) * VOXEL_SIZE
    d = p - o[None]
    length = np.linalg.norm(d, axis=1)
    keep = length > step
    d, length = d[keep], length[keep]
    unit = d / length[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # slab test; t in metres along the ray
        inv = 1.0 / unit
        t_a, t_b = (lo[None] - o[None]) * inv, (hi[None] - o[None]) * inv
    t_near = np.nan_to_num(np.minimum(t_a, t_b), nan=-np.inf).max(axis=1)
    t_far = np.nan_to_num(np.maximum(t_a, t_b), nan=np.inf).min(axis=1)
    t0 = np.maximum(t_near, 0.0)
    t1 = np.minimum(t_far, length - step)
    hit = t1 > t0
    unit, t0, t1 = unit[hit], t0[hit], t1[hit]
    if len(t0) == 0:
        return
    n = np.ceil((t1 - t0) / step).astype(np.int64)
    flat_out = out.reshape(-1)
    X, Y, Z = GRID_SHAPE
    base = ((o - lo) / VOXEL_SIZE).astype(np.float32)  # the ray origin in voxel units
    u = (unit / VOXEL_SIZE).astype(np.float32)
    bounds = np.cumsum(n)
    first = 0
    while first < len(n):  # groups of rays with at most ``chunk`` samples
        last = int(np.searchsorted(bounds, (bounds[first - 1] if first else 0) + chunk, side="right"))
        last = max(last, first + 1)
        nn = n[first:last]
        r = np.repeat(np.arange(first, last), nn)
        k = np.arange(int(nn.sum())) - np.repeat(np.cumsum(nn) - nn, nn)
        t = (t0[r] + k * step).astype(np.float32)
        v = np.floor(base[None] + u[r] * t[:, None]).astype(np.int64)
        ok = (v[:, 0] >= 0) & (v[:, 0] < X) & (v[:, 1] >= 0) & (v[:, 1] < Y) & (v[:, 2] >= 0) & (v[:, 2] < Z)
        v = v[ok]
        flat_out[(v[:, 0] * Y + v[:, 1]) * Z + v[:, 2]] = True
        first = last


def accumulate_lidar(
    scans: Sequence[np.ndarray],
    transforms: Sequence[np.ndarray],
    free_space: str = "rays",
    z_offset: float = 0.0,
    ray_stride: int = 4,
) -> np.ndarray:
    """Binary grid (uint8 0/1/255) from scans (``[N, >=3]`` velodyne points of scan j) and the 4x4
    transforms scan j -> current frame (see :func:`relative_transform`)."""
    if free_space not in ("rays", "all"):
        from occ_core.errors import OccError

        raise OccError(f"free_space must be 'rays' or 'all' (got {free_space!r})")
    occupied = np.zeros(GRID_SHAPE, dtype=bool)
    free = np.zeros(GRID_SHAPE, dtype=bool)
    for pts, T in zip(scans, transforms):
        T = np.asarray(T, np.float64)
        p = np.asarray(pts, np.float64)[:, :3] @ T[:3, :3].T + T[:3, 3]
        occupied |= voxelize(p, z_offset)
        if free_space == "rays":
            _free_voxels(T[:3, 3], p[:: max(int(ray_stride), 1)], z_offset, free)
    if free_space == "all":
        return occupied.astype(np.uint8)
    out = np.full(GRID_SHAPE, UNKNOWN, dtype=np.uint8)
    out[free] = EMPTY
    out[occupied] = OCCUPIED
    return out


def window_scan_ids(frame: int, before: int, after: int, max_scans: int, available: Iterable[int]) -> list[int]:
    """Scan ids of the window around ``frame`` that exist in ``available``, at most ``max_scans``
    (evenly subsampled; the frame's own scan first when it exists)."""
    avail = set(int(a) for a in available)
    ids = [j for j in range(frame - before, frame + after + 1) if j in avail]
    if max_scans > 0 and len(ids) > max_scans:
        others = [j for j in ids if j != frame]
        n = max_scans - (1 if frame in avail else 0)
        pick = np.linspace(0, len(others) - 1, max(n, 1)).round().astype(int)
        ids = ([frame] if frame in avail else []) + sorted({others[k] for k in pick})
    elif frame in ids:
        ids.remove(frame)
        ids = [frame] + ids
    return ids


# ------------------------------------------------------------------------------------------------
# Prepared data
# ------------------------------------------------------------------------------------------------


class LidarSequence:
    """Poses, Tr and the available scans of one raw SemanticKITTI sequence."""

    def __init__(self, seq_dir: Path, Tr: np.ndarray):
        from occ_core.data.formats import semantickitti as sk

        self.dir = Path(seq_dir)
        self.Tr = np.asarray(Tr, np.float64)
        poses_path = self.dir / "poses.txt"
        self.poses = sk.read_poses(poses_path) if poses_path.is_file() else None
        velo = self.dir / "velodyne"
        self.scans = sorted(int(s) for s in sk.list_ids(velo, ".bin")) if velo.is_dir() else []
        if self.poses is not None:
            self.scans = [s for s in self.scans if s < len(self.poses)]
        self.z_offset: float | None = None

    def scan(self, j: int) -> np.ndarray:
        from occ_core.data.formats import semantickitti as sk

        return sk.read_scan(self.dir / "velodyne" / f"{j:06d}.bin")

    def moving_mask(self, j: int, n: int) -> np.ndarray | None:
        from occ_core.data.formats import semantickitti as sk

        path = self.dir / "labels" / f"{j:06d}.label"
        if not path.is_file() or path.stat().st_size != 4 * n:
            return None
        sem, _ = sk.read_point_labels(path, n)
        return sem >= MOVING_RAW_MIN


def estimate_z_offset(seq: LidarSequence, pairs: Iterable[tuple[int, np.ndarray]],
                      candidates: Sequence[float] = (0.0, 0.2)) -> float:
    """The candidate offset whose voxelized own scan best matches the input occupancy (IoU), over
    the given ``(scan id, input_occ bool grid)`` pairs (first 3 used); 0.0 when there is none."""
    scores = np.zeros(len(candidates))
    used = 0
    for j, occ in pairs:
        if j not in seq.scans:
            continue
        pts = seq.scan(j)
        for k, c in enumerate(candidates):
            v = voxelize(pts, c)
            union = int((v | occ).sum())
            scores[k] += (v & occ).sum() / union if union else 0.0
        used += 1
        if used >= 3:
            break
    return float(candidates[int(np.argmax(scores))]) if used else 0.0


class LidarBinarySource:
    """LiDAR binary targets of the frames of a prepared dataset (cached in memory, bit-packed)."""

    def __init__(self, data, cfg: LidarBinaryConfig | None = None):
        self.data = data
        self.cfg = cfg or LidarBinaryConfig()
        self._seqs: dict[str, LidarSequence | None] = {}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}

    def sequence(self, name: str) -> LidarSequence | None:
        if name not in self._seqs:
            seq = None
            if self.data.dataset == "semantickitti":
                try:
                    seq_dir = self.data.source / name
                except KeyError:
                    seq_dir = None
                if seq_dir is not None and seq_dir.is_dir():
                    seq = LidarSequence(seq_dir, self.data.geometry(name)["Tr"])
                    if seq.poses is None or not seq.scans:
                        seq = None
            self._seqs[name] = seq
        return self._seqs[name]

    def _z_offset(self, seq_name: str, seq: LidarSequence) -> float:
        if seq.z_offset is None:
            if self.cfg.z_offset != "auto":
                try:
                    seq.z_offset = float(self.cfg.z_offset)
                except ValueError:
                    from occ_core.errors import OccError

                    raise OccError(f"data.lidar.z_offset must be 'auto' or a number (got {self.cfg.z_offset!r})") from None
            else:
                def pairs():
                    for f in self.data.frames(sequences=[seq_name]):
                        if f.id.isdigit() and int(f.id) in seq.scans:
                            yield int(f.id), self.data.load_input(f)

                seq.z_offset = estimate_z_offset(seq, pairs())
        return seq.z_offset

    def scan_ids(self, frame) -> list[int]:
        seq = self.sequence(frame.sequence)
        if seq is None or not frame.id.isdigit():
            return []
        i = int(frame.id)
        if i >= len(seq.poses):
            return []
        return window_scan_ids(i, self.cfg.before, self.cfg.after, self.cfg.max_scans, seq.scans)

    def available(self, frame) -> bool:
        """Whether at least one scan of the frame's window exists (cheap: no scan is read)."""
        return bool(self.scan_ids(frame))

    def __call__(self, frame) -> np.ndarray | None:
        """Binary grid uint8 [256, 256, 32] of ``frame``, or None when no scan of its window exists."""
        if frame.name in self._cache:
            hit = self._cache[frame.name]
            if hit is None:
                return None
            occ, known = hit
            out = np.full(GRID_SHAPE, UNKNOWN, np.uint8)
            known_g = np.unpackbits(known).reshape(GRID_SHAPE).astype(bool)
            out[known_g] = np.unpackbits(occ).reshape(GRID_SHAPE)[known_g]
            return out
        ids = self.scan_ids(frame)
        if not ids:
            self._cache[frame.name] = None
            return None
        seq = self.sequence(frame.sequence)
        i = int(frame.id)
        scans, transforms = [], []
        for j in ids:
            pts = seq.scan(j)
            if self.cfg.drop_moving and j != i:
                moving = seq.moving_mask(j, len(pts))
                if moving is not None:
                    pts = pts[~moving]
            scans.append(pts)
            transforms.append(relative_transform(seq.poses[i], seq.poses[j], seq.Tr))
        grid = accumulate_lidar(scans, transforms, self.cfg.free_space, self._z_offset(frame.sequence, seq),
                                self.cfg.ray_stride)
        self._cache[frame.name] = (np.packbits(grid == OCCUPIED), np.packbits(grid != UNKNOWN))
        return grid


def downsample_binary(binary: np.ndarray, scale: int) -> np.ndarray:
    """Binary grid at 1:``scale`` with the benchmark's target downsampling rule."""
    if scale == 1:
        return binary
    from occ_core.data.prepare.downsample import downsample_label

    return downsample_label(binary, scale)


# ------------------------------------------------------------------------------------------------
# Label-fraction split
# ------------------------------------------------------------------------------------------------


def select_labeled(names: Sequence[str], fraction: float, seed: int = 0) -> list[str]:
    """The frames (by name) that keep their semantic labels: ``round(fraction * n)`` of them (at least
    one when ``fraction > 0``), drawn without replacement from the sorted names by ``seed``. The
    result depends only on (the set of names, fraction, seed) and is sorted."""
    from occ_core.errors import OccError

    if not 0.0 <= fraction <= 1.0:
        raise OccError(f"label fraction must be in [0, 1] (got {fraction})")
    names = sorted(set(names))
    if fraction >= 1.0:
        return names
    if fraction <= 0.0 or not names:
        return []
    n = min(len(names), max(1, int(round(fraction * len(names)))))
    rng = np.random.default_rng([int(seed), 20250717])
    pick = rng.choice(len(names), size=n, replace=False)
    return sorted(names[k] for k in pick)


@dataclass
class LabelSplit:
    """Which training frames keep semantics (``labeled``) and which have binary occupancy only."""

    fraction: float
    seed: int
    labeled: list[str] = field(default_factory=list)
    binary_only: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"fraction": self.fraction, "seed": self.seed, "n_labeled": len(self.labeled),
                "n_binary_only": len(self.binary_only), "labeled": self.labeled, "binary_only": self.binary_only}


# ------------------------------------------------------------------------------------------------
# Target sources (OccDataset asks each configured one for its batch keys)
# ------------------------------------------------------------------------------------------------


def scale_key(name: str, scale: int) -> str:
    """Batch key of ``name`` at 1:``scale``: ``target``, ``target_1_8``, ``binary_1_2``, ..."""
    return name if scale == 1 else f"{name}_1_{scale}"


class TargetSource:
    """Batch keys of a frame computed from its stored arrays (see the module docstring)."""

    def arrays(self, frame) -> list[str]:
        """Stored arrays (keys of the frame's ``.npz``) that :meth:`__call__` reads."""
        return []

    def available(self, frame) -> bool:
        """Whether this source can give ``frame``'s keys."""
        return True

    def __call__(self, frame, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class SemanticTargets(TargetSource):
    """``target`` / ``target_1_S`` (int64, 255 = ignore) at ``scales``, checked against the spec (shape, class
    range); labeled frames only (nothing for the others)."""

    def __init__(self, spec, scales: Sequence[int], root: Path):
        self.spec = spec
        self.scales = list(scales)
        self.root = Path(root)

    def arrays(self, frame) -> list[str]:
        return [f"target_1_{sc}" for sc in self.scales] if frame.labeled else []

    def available(self, frame) -> bool:
        return frame.labeled

    def __call__(self, frame, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        if not frame.labeled:
            return {}
        return {scale_key("target", sc): torch.from_numpy(self.checked(arrays[f"target_1_{sc}"], sc, frame))
                for sc in self.scales}

    def checked(self, target: np.ndarray, scale: int, frame) -> np.ndarray:
        """A stored target as int64, checked against the spec (shape, class range)."""
        from occ_core.data.prepare.layout import frame_path
        from occ_core.errors import OccError

        shape = self.spec.grid_at(scale)
        where = frame_path(self.root, frame.sequence, frame.id)
        if tuple(target.shape) != shape:
            raise OccError(f"target_1_{scale} has shape {tuple(target.shape)}, expected {shape} (rerun 'occ prepare')",
                           where)
        bad = (target >= self.spec.n_classes) & (target != IGNORE)
        if bad.any():
            raise OccError(f"target_1_{scale} holds class {int(target[bad].flat[0])}, outside 0..{self.spec.n_classes - 1} "
                           "and 255 (rerun 'occ prepare')", where)
        return target.astype(np.int64)


def _binary_keys(binary: dict[int, np.ndarray]) -> dict[str, torch.Tensor]:
    return {scale_key("binary", sc): torch.from_numpy(b.astype(np.int64)) for sc, b in binary.items()}


class SemanticBinary(TargetSource):
    """``binary`` / ``binary_1_S`` from the semantic target (class > 0 occupied; labeled frames)."""

    def __init__(self, scales: Sequence[int]):
        self.scales = list(scales)

    def arrays(self, frame) -> list[str]:
        return [f"target_1_{sc}" for sc in self.scales] if frame.labeled else []

    def available(self, frame) -> bool:
        return frame.labeled

    def __call__(self, frame, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return _binary_keys({sc: binary_from_semantic(arrays[f"target_1_{sc}"]) for sc in self.scales})


class LidarBinary(TargetSource):
    """``binary`` / ``binary_1_S`` from the LiDAR scans accumulated along the poses (:class:`LidarBinarySource`;
    the 1:1 grid downsampled with the benchmark rule). Reads no stored array."""

    def __init__(self, source: LidarBinarySource, scales: Sequence[int]):
        self.source = source
        self.scales = list(scales)

    def available(self, frame) -> bool:
        return self.source.available(frame)

    def __call__(self, frame, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        full = self.source(frame)
        if full is None:
            from occ_core.errors import MissingError

            raise MissingError(f"frame {frame.name} has neither a target nor LiDAR scans for binary occupancy",
                               self.source.data.root / "manifest.json")
        return _binary_keys({sc: downsample_binary(full, sc) for sc in self.scales})


class BinaryOccupancy(TargetSource):
    """B2S binary occupancy: from the semantic target on labeled frames, else from LiDAR."""

    def __init__(self, semantic: SemanticBinary, lidar: LidarBinary):
        self.semantic = semantic
        self.lidar = lidar

    @classmethod
    def build(cls, data, cfg: LidarBinaryConfig, scales: Sequence[int]) -> "BinaryOccupancy":
        """The source of a prepared dataset ``data`` (LiDAR per ``cfg``, ``data.lidar``) at ``scales``."""
        return cls(SemanticBinary(scales), LidarBinary(LidarBinarySource(data, cfg), scales))

    def arrays(self, frame) -> list[str]:
        return self.semantic.arrays(frame)

    def available(self, frame) -> bool:
        return frame.labeled or self.lidar.available(frame)

    def __call__(self, frame, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return self.semantic(frame, arrays) if frame.labeled else self.lidar(frame, arrays)


class LabelFraction(TargetSource):
    """``has_semantics`` (bool): whether the frame's semantic target is used (labeled, and kept by the
    label-fraction selection); on the other frames ``target`` / ``target_1_S`` at ``scales`` are all 255
    (binary occupancy only; the same keys, for collation)."""

    def __init__(self, semantic_frames: set[str] | None, spec, scales: Sequence[int]):
        self.semantic_frames = semantic_frames
        """Frames that keep semantics (None: every labeled frame)."""
        self.spec = spec
        self.scales = list(scales)

    @staticmethod
    def select(frames, fraction: float, seed: int = 0) -> set[str]:
        """Names of the labeled ``frames`` that keep semantics (:func:`select_labeled`)."""
        return set(select_labeled([f.name for f in frames if f.labeled], fraction, seed))

    def has_semantics(self, frame) -> bool:
        return frame.labeled and (self.semantic_frames is None or frame.name in self.semantic_frames)

    def __call__(self, frame, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        semantics = self.has_semantics(frame)
        out = {"has_semantics": torch.tensor(semantics)}
        if not semantics:
            for sc in self.scales:
                out[scale_key("target", sc)] = torch.full(self.spec.grid_at(sc), IGNORE, dtype=torch.int64)
        return out

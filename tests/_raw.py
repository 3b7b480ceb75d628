"""Helpers that write tiny raw SemanticKITTI folders (imported by tests as `_raw`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def kitti_calib() -> dict[str, np.ndarray]:
    """A KITTI-like calibration (values of odometry sequence 00)."""
    K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])

    def P(tx: float) -> np.ndarray:
        m = np.zeros((3, 4))
        m[:, :3] = K
        m[0, 3] = tx
        return m

    Tr = np.array([[0.0, -1.0, 0.0, -0.012], [0.0, 0.0, -1.0, -0.054], [1.0, 0.0, 0.0, -0.292]])
    return {"P0": P(0.0), "P1": P(-386.1448), "P2": P(45.38225), "P3": P(-337.2877), "Tr": Tr}


def write_raw_sequence(root: Path, seq: str, ids: list[int], rng: np.random.Generator,
                       labeled: bool = True, scans: bool = True) -> Path:
    """Write a small raw SemanticKITTI sequence with random voxel labels (and scans)."""
    from occ_core.data.formats import semantickitti as sk

    d = root / "dataset" / "sequences" / seq
    sk.write_calib(d / "calib.txt", kitti_calib())
    n = max(ids) + 1
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = np.arange(n) * 1.0
    sk.write_poses(d / "poses.txt", poses)
    (d / "times.txt").write_text("".join(f"{0.1 * i:.6e}\n" for i in range(n)))
    raw_ids = np.array(sorted(sk.LEARNING_MAP))
    for i in ids:
        fid = f"{i:06d}"
        occ = rng.random(sk.GRID_SHAPE) < 0.05
        sk.write_voxel_bits(d / "voxels" / f"{fid}.bin", occ)
        sk.write_voxel_bits(d / "voxels" / f"{fid}.occluded", rng.random(sk.GRID_SHAPE) < 0.3)
        if labeled:
            labels = np.where(rng.random(sk.GRID_SHAPE) < 0.2, rng.choice(raw_ids, sk.GRID_SHAPE), 0).astype(np.uint16)
            sk.write_voxel_label(d / "voxels" / f"{fid}.label", labels)
            sk.write_voxel_bits(d / "voxels" / f"{fid}.invalid", rng.random(sk.GRID_SHAPE) < 0.1)
        if scans:
            pts = np.column_stack([rng.uniform(2, 50, 2000), rng.uniform(-20, 20, 2000),
                                   rng.uniform(-1.7, 1.0, 2000), rng.uniform(0, 1, 2000)]).astype(np.float32)
            sk.write_scan(d / "velodyne" / f"{fid}.bin", pts)
            sk.write_point_labels(d / "labels" / f"{fid}.label", rng.choice(raw_ids, 2000).astype(np.uint32))
    return d


def write_raw_kitti360(root: Path, seq: str, ids: list[int], rng: np.random.Generator,
                       classes: tuple[int, ...] | None = None) -> Path:
    """Write a small raw SSCBench-KITTI360 sequence (voxels only; the loaders' fixed calibration) with random
    labels of the raw ids of ``classes`` (KITTI-360 class indices; default: all). Returns the sequence folder."""
    from occ_core.data.formats import kitti360 as k360
    from occ_core.data.formats import semantickitti as sk

    d = root / "data_2d_raw" / k360.sequence_folder(seq)
    raw_ids = np.array(sorted(k360.LEARNING_MAP_INV[c] for c in (classes or range(1, len(k360.CLASS_NAMES)))))
    for i in ids:
        fid = f"{i:06d}"
        sk.write_voxel_bits(d / "voxels" / f"{fid}.bin", rng.random(sk.GRID_SHAPE) < 0.05)
        labels = np.where(rng.random(sk.GRID_SHAPE) < 0.2, rng.choice(raw_ids, sk.GRID_SHAPE), 0).astype(np.uint16)
        sk.write_voxel_label(d / "voxels" / f"{fid}.label", labels)
        sk.write_voxel_bits(d / "voxels" / f"{fid}.invalid", rng.random(sk.GRID_SHAPE) < 0.1)
    return d

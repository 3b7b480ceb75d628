"""Binary occupancy targets: from semantics, from LiDAR accumulated along poses, and the label-fraction split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from occ_core.data.loading import targets as bn
from occ_core.data.formats.semantickitti import GRID_ORIGIN, VOXEL_SIZE
from occ_core.errors import OccError


def test_binary_from_semantic():
    t = np.array([[0, 1, 19], [255, 9, 0]], np.uint8)
    np.testing.assert_array_equal(bn.binary_from_semantic(t), [[0, 1, 1], [255, 1, 0]])


def _rot_z(a: float) -> np.ndarray:
    R = np.eye(4)
    R[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return R


def test_lidar_accumulation_puts_a_static_point_in_the_same_voxel_from_every_pose():
    """A hand-made trajectory: the car drives forward and turns; a static world point seen from every
    pose lands, after the transform into frame i, in the voxel it occupies in frame i."""
    # KITTI-like Tr (velodyne -> cam0) and cam0 poses in the world (cam0 of scan 0)
    Tr = np.array([[0.0, -1.0, 0.0, -0.01], [0.0, 0.0, -1.0, -0.05], [1.0, 0.0, 0.0, -0.3], [0, 0, 0, 1]])
    poses = []
    for k in range(6):  # velodyne poses: forward 1 m a scan, yaw 3 degrees a scan, small bumps in z
        V = _rot_z(np.deg2rad(3 * k))
        V[:3, 3] = [1.0 * k, 0.1 * k * k, 0.02 * (k % 2)]
        poses.append(Tr @ V @ np.linalg.inv(Tr))  # cam0 pose = Tr V Tr^-1
    world = np.array([20.13, 3.37, 0.55])  # a static point in the velodyne frame of scan 0 (= world velo)
    i = 2
    V_i = np.linalg.inv(Tr) @ poses[i] @ Tr
    in_i = (np.linalg.inv(V_i) @ np.append(world, 1.0))[:3]
    expected = np.floor((in_i - np.asarray(GRID_ORIGIN)) / VOXEL_SIZE).astype(int)
    scans, transforms = [], []
    for j in range(6):
        V_j = np.linalg.inv(Tr) @ poses[j] @ Tr
        in_j = (np.linalg.inv(V_j) @ np.append(world, 1.0))[:3]  # what scan j measures
        T = bn.relative_transform(poses[i], poses[j], Tr)
        back = T[:3, :3] @ in_j + T[:3, 3]
        np.testing.assert_allclose(back, in_i, atol=1e-9)
        one = bn.accumulate_lidar([in_j[None]], [T], free_space="all")
        assert one.sum() == 1 and tuple(np.argwhere(one == 1)[0]) == tuple(expected)
        scans.append(in_j[None])
        transforms.append(T)
    grid = bn.accumulate_lidar(scans, transforms, free_space="rays", ray_stride=1)
    assert (grid == 1).sum() == 1 and grid[tuple(expected)] == 1
    # rays: voxels between the sensor of frame i and the point are free, the rest unknown
    mid = np.floor((0.5 * in_i + 0.5 * np.array([0.3, 0.0, 0.0]) - np.asarray(GRID_ORIGIN)) / VOXEL_SIZE).astype(int)
    assert grid[tuple(mid)] == 0
    assert grid[0, 0, 0] == 255 and (grid == 0).sum() > 50


def test_window_scan_ids_skip_missing_scans():
    assert bn.window_scan_ids(5, 2, 3, 0, range(10)) == [5, 3, 4, 6, 7, 8]
    assert bn.window_scan_ids(25, 2, 3, 0, range(10)) == []
    ids = bn.window_scan_ids(0, 10, 30, 4, range(100))
    assert ids[0] == 0 and len(ids) == 4


def test_label_fraction_selection_is_deterministic_and_of_the_right_size():
    names = [f"00/{i:06d}" for i in range(0, 500, 5)]
    a = bn.select_labeled(names, 0.1, seed=3)
    assert len(a) == 10 and a == sorted(a) and set(a) <= set(names)
    assert bn.select_labeled(list(reversed(names)), 0.1, seed=3) == a  # order does not matter
    assert bn.select_labeled(names, 0.1, seed=4) != a
    assert len(bn.select_labeled(names[:3], 0.1)) == 1  # at least one when fraction > 0
    assert bn.select_labeled(names, 0.0) == [] and bn.select_labeled(names, 1.0) == sorted(names)
    with pytest.raises(OccError):
        bn.select_labeled(names, 1.5)


def test_dataset_withholds_semantics_and_adds_binary(synthetic_prepared: Path):
    from occ_core.data.loading.dataset import DataConfig, OccDataset

    cfg = DataConfig(image_scale=0.15, target_scales=[1, 2], label_fraction=0.5)
    only = OccDataset(synthetic_prepared, "train", cfg, train=True)
    assert len(only) == 1  # without binary targets the binary-only frames are dropped
    ds = OccDataset(synthetic_prepared, "train", dataclasses.replace(cfg, binary_targets=True), train=True)
    assert len(ds) == 2 and ds.semantic_frames == {only.frames[0].name}
    for i in range(2):
        s = ds[i]
        assert s["binary"].shape == (256, 256, 32) and s["binary_1_2"].shape == (128, 128, 16)
        assert set(np.unique(s["binary"].numpy())) <= {0, 1, 255}
        if bool(s["has_semantics"]):
            np.testing.assert_array_equal(s["binary"].numpy(), bn.binary_from_semantic(s["target"].numpy()))
        else:
            assert bool((s["target"] == 255).all()) and bool((s["target_1_2"] == 255).all())
            assert int((s["binary"] == 1).sum()) > 0
    val = OccDataset(synthetic_prepared, "val", dataclasses.replace(cfg, binary_targets=True))
    assert len(val) == 2 and all(bool(val[i]["has_semantics"]) for i in range(1))


def test_lidar_binary_on_a_raw_sequence_with_missing_scans(tmp_path: Path):
    from _raw import write_raw_sequence

    from occ_core.data.prepare.pipeline import prepare_kitti
    from occ_core.data.prepare.layout import PreparedDataset

    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    d = write_raw_sequence(root, "00", [0, 5, 10, 15], rng, labeled=False)
    for fid in ("000010", "000015"):  # no scans for these frames
        (d / "velodyne" / f"{fid}.bin").unlink()
        (d / "labels" / f"{fid}.label").unlink()
    prepare_kitti(root, tmp_path / "prep", progress=False)
    ds = PreparedDataset(tmp_path / "prep")
    src = bn.LidarBinarySource(ds, bn.LidarBinaryConfig(before=2, after=2, free_space="all", z_offset="0"))
    frames = {f.id: f for f in ds.frames()}
    g = src(frames["000005"])
    assert g is not None and g.dtype == np.uint8 and set(np.unique(g)) <= {0, 1}
    assert src(frames["000015"]) is None and not src.available(frames["000015"])
    assert src.available(frames["000000"])


def test_lidar_binary_on_real_frames(mini_root: Path, tmp_path: Path):
    """Real SemanticKITTI frames (scans 0-9 only): the z offset is found, frames without scans are skipped."""
    from occ_core.data.prepare.pipeline import prepare_kitti
    from occ_core.data.prepare.layout import PreparedDataset

    prepare_kitti(mini_root, tmp_path / "prep", progress=False, workers=2)
    ds = PreparedDataset(tmp_path / "prep")
    src = bn.LidarBinarySource(ds, bn.LidarBinaryConfig(max_scans=3, free_space="all"))
    frames = {f.id: f for f in ds.frames()}
    grid = src(frames["000000"])
    assert src.sequence("00").z_offset == pytest.approx(0.2)
    own = ds.load_input(frames["000000"])
    assert (own & (grid == 1)).sum() / own.sum() > 0.99  # the frame's own scan is in it
    assert src(frames["000040"]) is None

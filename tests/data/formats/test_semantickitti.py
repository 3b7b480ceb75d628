from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from occ_core.data.formats import semantickitti as sk
from occ_core.errors import FormatError, MissingError


def test_unpack_is_most_significant_bit_first(tmp_path: Path):
    packed = np.zeros(sk.PACKED_BYTES, dtype=np.uint8)
    packed[0] = 0b1000_0001  # voxels 0 and 7 of the flat x, y, z order
    packed[-1] = 0b0100_0000  # the second-to-last... voxel N-7
    (tmp_path / "a.bin").write_bytes(packed.tobytes())
    grid = sk.read_voxel_bits(tmp_path / "a.bin")
    assert grid.shape == (256, 256, 32)
    flat = grid.reshape(-1)
    assert set(np.flatnonzero(flat).tolist()) == {0, 7, sk.N_VOXELS - 7}
    # index 7 is (x=0, y=0, z=7): z is the fastest axis
    assert grid[0, 0, 7] and grid[0, 0, 0]


def test_bits_and_labels_roundtrip(tmp_path: Path):
    rng = np.random.default_rng(1)
    grid = rng.random(sk.GRID_SHAPE) < 0.3
    sk.write_voxel_bits(tmp_path / "g.invalid", grid)
    assert (tmp_path / "g.invalid").stat().st_size == 262_144
    np.testing.assert_array_equal(sk.read_voxel_bits(tmp_path / "g.invalid"), grid)
    raw = rng.integers(0, 260, sk.GRID_SHAPE).astype(np.uint16)
    sk.write_voxel_label(tmp_path / "g.label", raw)
    assert (tmp_path / "g.label").stat().st_size == 4_194_304
    np.testing.assert_array_equal(sk.read_voxel_label(tmp_path / "g.label"), raw)


@pytest.mark.parametrize("name,size", [("x.bin", 262_143), ("x.label", 100)])
def test_wrong_size_names_the_file(tmp_path: Path, name: str, size: int):
    path = tmp_path / name
    path.write_bytes(b"\0" * size)
    reader = sk.read_voxel_bits if name.endswith(".bin") else sk.read_voxel_label
    with pytest.raises(FormatError, match=r"x\.(bin|label): wrong file size: \d+ bytes, expected \d+"):
        reader(path)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(MissingError, match="nope.bin"):
        sk.read_voxel_bits(tmp_path / "nope.bin")


def test_remap_rules():
    raw = np.array([0, 1, 10, 11, 13, 40, 44, 48, 49, 50, 52, 60, 70, 81, 99, 252, 253, 259, 7, 300, 0x1_000A], dtype=np.uint32)
    got = sk.remap_labels(raw)
    # raw 0 stays empty; ids that map to 0 (outlier, other-structure, other-object) and unknown ids -> 255;
    # the upper 16 bits (instance) are ignored
    assert got.tolist() == [0, 255, 1, 2, 5, 9, 10, 11, 12, 13, 255, 9, 15, 19, 255, 1, 7, 5, 255, 255, 1]
    invalid = np.zeros(raw.shape, dtype=bool)
    invalid[2] = True
    assert sk.remap_labels(raw, invalid)[2] == 255


def test_every_learning_map_entry_and_inverse():
    for raw, cls in sk.LEARNING_MAP.items():
        expected = 0 if raw == 0 else (255 if cls == 0 else cls)
        assert sk.REMAP_LUT[raw] == expected
    classes = np.arange(20, dtype=np.uint8)
    raw = sk.inverse_remap(classes)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(sk.remap_labels(raw), classes)  # inverse then forward is the identity
    with pytest.raises(ValueError, match="20"):
        sk.inverse_remap(np.array([20]))


def test_class_names_match_the_benchmark():
    assert sk.CLASS_NAMES[1:] == (
        "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
        "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk",
        "terrain", "pole", "traffic-sign",
    )


def test_calib_roundtrip_and_errors(tmp_path: Path):
    from _raw import kitti_calib

    calib = kitti_calib()
    sk.write_calib(tmp_path / "calib.txt", calib)
    back = sk.read_calib(tmp_path / "calib.txt")
    for key in sk.CALIB_KEYS:
        np.testing.assert_allclose(back[key], calib[key])
    text = (tmp_path / "calib.txt").read_text().splitlines()
    (tmp_path / "no_tr.txt").write_text("\n".join(t for t in text if not t.startswith("Tr")))
    with pytest.raises(FormatError, match=r"no_tr.txt: missing calibration key 'Tr'"):
        sk.read_calib(tmp_path / "no_tr.txt")
    (tmp_path / "short.txt").write_text(text[0] + "\nP1: 1 2 3\n")
    with pytest.raises(FormatError, match=r"short.txt: line 2 \(P1\): 3 numbers, expected 12"):
        sk.read_calib(tmp_path / "short.txt")


def test_poses_times_scans_and_point_labels(tmp_path: Path):
    rng = np.random.default_rng(2)
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(3, 3))
    sk.write_poses(tmp_path / "poses.txt", poses)
    np.testing.assert_allclose(sk.read_poses(tmp_path / "poses.txt"), poses, atol=1e-8)
    (tmp_path / "times.txt").write_text("0.0\n0.1\n")
    assert sk.read_times(tmp_path / "times.txt").tolist() == [0.0, 0.1]
    pts = rng.normal(size=(10, 4)).astype(np.float32)
    sk.write_scan(tmp_path / "s.bin", pts)
    np.testing.assert_array_equal(sk.read_scan(tmp_path / "s.bin"), pts)
    sem = rng.integers(0, 260, 10).astype(np.uint32)
    inst = rng.integers(0, 100, 10).astype(np.uint32)
    sk.write_point_labels(tmp_path / "s.label", sem, inst)
    s, i = sk.read_point_labels(tmp_path / "s.label", n_points=10)
    assert s.tolist() == sem.tolist() and i.tolist() == inst.tolist()
    with pytest.raises(FormatError, match="s.label: wrong file size: 40 bytes, expected 44 for 11 points"):
        sk.read_point_labels(tmp_path / "s.label", n_points=11)
    (tmp_path / "bad.bin").write_bytes(b"\0" * 17)
    with pytest.raises(FormatError, match="bad.bin: wrong file size: 17 bytes is not a multiple of 16"):
        sk.read_scan(tmp_path / "bad.bin")
    (tmp_path / "bad_poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(FormatError, match="bad_poses.txt: line 1: 11 numbers, expected 12"):
        sk.read_poses(tmp_path / "bad_poses.txt")


def test_find_sequences_dir_accepts_three_roots(raw_kitti: Path):
    seqs = raw_kitti / "dataset" / "sequences"
    for root in (raw_kitti, raw_kitti / "dataset", seqs):
        assert sk.find_sequences_dir(root) == seqs
    with pytest.raises(MissingError):
        sk.find_sequences_dir(seqs / "00")


# ------------------------------------------------------------------ real data (skips when absent)


def test_real_voxels_and_calib(mini_root: Path):
    d = mini_root / "dataset" / "sequences" / "00"
    grid = sk.read_voxel_bits(d / "voxels" / "000000.bin")
    assert int(grid.sum()) == 11_677
    assert int(sk.read_voxel_bits(d / "voxels" / "000000.invalid").sum()) == 531_780
    assert int(sk.read_voxel_bits(d / "voxels" / "000000.occluded").sum()) == 1_416_108
    calib = sk.read_calib(d / "calib.txt")
    import pykitti.utils as pykitti_utils  # the dev extra declares pykitti
    ref = pykitti_utils.read_calib_file(str(d / "calib.txt"))
    for key in sk.CALIB_KEYS:
        np.testing.assert_array_equal(calib[key].reshape(-1), ref[key])
    poses = sk.read_poses(d / "poses.txt")
    assert poses.shape == (4541, 4, 4) and len(sk.read_times(d / "times.txt")) == 4541
    pts = sk.read_scan(d / "velodyne" / "000000.bin")
    sem, _ = sk.read_point_labels(d / "labels" / "000000.label", n_points=len(pts))
    assert set(np.unique(sem).tolist()) <= set(sk.LEARNING_MAP)

"""The built-in synthetic dataset generator (occ_core.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from occ_core.data.formats import semantickitti as sk
from occ_core.data.synthetic import DEFAULT_FRAMES, DEFAULT_SEQUENCES, generate_dataset
from occ_core.data.synthetic import generate as gen
from occ_core.errors import OccError
from occ_core.geometry.projection import transform_points

SEQ = "08"
FRAMES = 2
IDS = ["000000", "000005"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate_dataset(out, sequences=[SEQ], frames=FRAMES, seed=3, workers=1, progress=False)
    assert summary["frames_written"] == FRAMES and summary["frames_skipped"] == 0
    return out


def _seq(root: Path) -> Path:
    return root / "dataset" / "sequences" / SEQ


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_defaults():
    assert "08" in DEFAULT_SEQUENCES and len(DEFAULT_SEQUENCES) >= 2
    assert 1 <= DEFAULT_FRAMES <= 100


def test_layout_and_sizes(root):
    d = _seq(root)
    n_scans = 5 * (FRAMES - 1) + 1
    assert len(sk.read_poses(d / "poses.txt")) == n_scans
    times = sk.read_times(d / "times.txt")
    assert len(times) == n_scans and np.allclose(np.diff(times), 0.1)
    for fid in IDS:
        for cam in ("image_2", "image_3"):
            img = cv2.imread(str(d / cam / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
            assert img.shape == (376, 1241, 3) and img.dtype == np.uint8
            assert img.std() > 20  # not blank
        sem = cv2.imread(str(d / "semantic_2" / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
        assert sem.shape == (376, 1241) and sem.dtype == np.uint8 and sem.max() <= 19
        dep = cv2.imread(str(d / "depth_2" / f"{fid}.png"), cv2.IMREAD_UNCHANGED)
        assert dep.shape == (376, 1241) and dep.dtype == np.uint16
        assert np.array_equal(dep == 0, sem == 0)  # sky: no class, no depth
        pts = sk.read_scan(d / "velodyne" / f"{fid}.bin")
        assert 60_000 < len(pts) <= 64 * 1800
        sem_p, inst_p = sk.read_point_labels(d / "labels" / f"{fid}.label", len(pts))
        assert set(np.unique(sem_p)) <= set(sk.LEARNING_MAP) and 0 not in set(np.unique(sem_p))
        assert inst_p[np.isin(sem_p, [10, 18, 30])].min(initial=1) > 0  # things carry instance ids
        for ext, size in ((".bin", sk.PACKED_BYTES), (".invalid", sk.PACKED_BYTES),
                          (".occluded", sk.PACKED_BYTES), (".label", sk.LABEL_BYTES)):
            assert (d / "voxels" / f"{fid}{ext}").stat().st_size == size
    # Images exist only for voxel frames.
    assert sorted(p.stem for p in (d / "image_2").iterdir()) == IDS


def test_calibration(root):
    calib = sk.read_calib(_seq(root) / "calib.txt")
    assert calib["P2"][0, 3] == pytest.approx(45.38, abs=0.01)
    assert calib["P3"][0, 3] == pytest.approx(-337.29, abs=0.01)
    baseline = (calib["P2"][0, 3] - calib["P3"][0, 3]) / calib["P2"][0, 0]
    assert baseline == pytest.approx(0.54, abs=0.01)
    Tr = sk.to_homogeneous(calib["Tr"])
    # Velodyne forward (x) is camera z; velodyne up (z) is camera -y.
    assert np.allclose(Tr[:3, :3] @ [1, 0, 0], [0, 0, 1]) and np.allclose(Tr[:3, :3] @ [0, 0, 1], [0, -1, 0])
    poses = sk.read_poses(_seq(root) / "poses.txt")
    assert np.allclose(poses[0], np.eye(4), atol=1e-9)
    step = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert np.all((step > 0.85) & (step < 1.15))  # about 1 m per scan
    assert abs(poses[-1][1, 3]) < 0.1  # flat road: the camera keeps its height


def test_readable_by_semantickitti_readers(root):
    d = _seq(root) / "voxels"
    target = sk.read_target(d / "000000.label", d / "000000.invalid")
    assert target.shape == sk.GRID_SHAPE and target.dtype == np.uint8
    raw = sk.read_voxel_label(d / "000000.label")
    present = set(np.unique(raw).tolist())
    assert {0, 40}.issubset(present) and len(present) >= 6 and present <= set(sk.LEARNING_MAP)
    valid = target[target != 255]
    assert (valid > 0).mean() > 0.02  # a real scene, not an empty grid
    for ext in (".bin", ".invalid", ".occluded"):
        assert sk.read_voxel_bits(d / f"000000{ext}").dtype == bool


def test_scan_voxels_agree_with_target(root):
    d = _seq(root) / "voxels"
    for fid in IDS:
        occ = sk.read_voxel_bits(d / f"{fid}.bin")
        raw = sk.read_voxel_label(d / f"{fid}.label")
        assert occ.sum() > 3000
        assert (raw[occ] > 0).mean() > 0.9


def test_ground_at_the_right_layer(root):
    d = _seq(root)
    raw = sk.read_voxel_label(d / "voxels" / "000000.label")
    road = raw == 40
    assert road.sum() > 2000
    layers = np.nonzero(road)[2]
    assert (layers == 1).mean() > 0.98  # -1.73 m lies in layer 1 (-1.8 .. -1.6)
    pts = sk.read_scan(d / "velodyne" / "000000.bin")
    sem, _ = sk.read_point_labels(d / "labels" / "000000.label")
    z = pts[sem == 40, 2]
    assert np.median(z) == pytest.approx(-1.73, abs=0.02)


def test_semantic_image_matches_projected_voxels(root):
    d = _seq(root)
    calib = sk.read_calib(d / "calib.txt")
    Tr = sk.to_homogeneous(calib["Tr"])
    P2 = calib["P2"]
    sem = cv2.imread(str(d / "semantic_2" / "000000.png"), cv2.IMREAD_UNCHANGED)
    dep = cv2.imread(str(d / "depth_2" / "000000.png"), cv2.IMREAD_UNCHANGED).astype(np.float64) / 256
    raw = sk.read_voxel_label(d / "voxels" / "000000.label")
    occluded = sk.read_voxel_bits(d / "voxels" / "000000.occluded")
    idx = np.argwhere((raw > 0) & ~occluded)
    centres = np.asarray(sk.GRID_ORIGIN) + (idx + 0.5) * sk.VOXEL_SIZE
    cam = transform_points(Tr, centres)
    p = cam @ P2[:, :3].T + P2[:, 3]
    z = p[:, 2]
    u, v = np.round(p[:, 0] / z).astype(int), np.round(p[:, 1] / z).astype(int)
    ok = (z > 1) & (u >= 0) & (u < 1241) & (v >= 0) & (v < 376)
    u, v, z, cls = u[ok], v[ok], z[ok], sk.remap_labels(raw[tuple(idx[ok].T)])
    front = np.abs(dep[v, u] - z) < 0.3  # the voxel's surface is what the pixel sees
    assert front.sum() > 5000
    match = sem[v[front], u[front]] == cls[front]
    assert match.mean() > 0.85


def test_vanishing_points(root):
    data = json.loads((root / "vanishing_points" / f"seq_{SEQ}.json").read_text())
    keys = [f"SemanticKITTI/dataset/sequences/{SEQ}/image_2/{fid}.png" for fid in IDS]
    assert sorted(data) == keys
    calib = sk.read_calib(_seq(root) / "calib.txt")
    P2 = calib["P2"]
    scene = gen.get_scene(3, SEQ, FRAMES)
    for i, key in enumerate(keys):
        (x, y), = data[key]
        assert 0 <= x < 1241 and abs(y - P2[1, 2]) < 3  # flat road: on the horizon
        # Both road edges, continued along the local road tangent, converge at the VP.
        scan = 5 * i
        s0 = scan * scene.speed
        th = float(scene.road.heading(s0))
        t = np.array([np.cos(th), np.sin(th), 0.0])
        w2c = np.linalg.inv(gen.camera_to_scene(scene, scan, P2))
        lines = []
        for dd in (-scene.road.road_half, scene.road.road_half):
            ex, ey, _ = scene.road.to_xy(s0, dd)
            q = np.array([float(ex), float(ey), 0.0])
            pts = np.stack([q + 20 * t, q + 200 * t])
            c = pts @ w2c[:3, :3].T + w2c[:3, 3]
            uv = c @ gen.K.T
            uv = uv[:, :2] / uv[:, 2:]
            lines.append(np.cross(np.append(uv[0], 1), np.append(uv[1], 1)))
        vp = np.cross(lines[0], lines[1])
        vp = vp[:2] / vp[2]
        assert np.hypot(vp[0] - x, vp[1] - y) < 3.0


def test_invalid_and_occluded(root):
    d = _seq(root) / "voxels"
    invalid = sk.read_voxel_bits(d / "000000.invalid")
    occluded = sk.read_voxel_bits(d / "000000.occluded")
    raw = sk.read_voxel_label(d / "000000.label")
    assert 0.05 < invalid.mean() < 0.95
    assert not np.any(invalid & ~occluded)  # seen by this scan -> observed
    assert occluded.mean() > invalid.mean()  # later scans see more
    # Building interiors are never observed.
    bld = raw == 50
    assert invalid[bld].mean() > 0.5
    # The road ahead of the car is observed.
    assert invalid[raw == 40].mean() < 0.3


def test_deterministic_resumable_and_parallel(root, tmp_path):
    ref = _all_files(root)
    # Same seed, two workers: byte-identical files.
    summary = generate_dataset(tmp_path / "a", sequences=[SEQ], frames=FRAMES, seed=3, workers=2, progress=False)
    assert summary["frames_written"] == FRAMES
    assert _all_files(tmp_path / "a") == ref
    # Resume: nothing to do; a deleted voxel file is regenerated identically.
    (tmp_path / "a" / "dataset" / "sequences" / SEQ / "voxels" / "000005.occluded").unlink()
    summary = generate_dataset(tmp_path / "a", sequences=[SEQ], frames=FRAMES, seed=3, progress=False)
    assert summary["frames_written"] == 1 and summary["frames_skipped"] == FRAMES - 1
    assert _all_files(tmp_path / "a") == ref
    # Another seed: another scene.
    generate_dataset(tmp_path / "b", sequences=[SEQ], frames=1, seed=4, progress=False)
    other = _all_files(tmp_path / "b")
    for name in ("image_2/000000.png", "voxels/000000.label", "velodyne/000000.bin"):
        key = f"dataset/sequences/{SEQ}/{name}"
        assert other[key] != ref[key]


@pytest.mark.parametrize(
    "kwargs",
    [{"frames": 0}, {"frames": -3}, {"frames": 2.5}, {"sequences": ["8"]}, {"sequences": ["ab"]},
     {"sequences": []}, {"seed": -1}, {"workers": 0}],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(OccError) as e:
        generate_dataset(tmp_path, progress=False, **kwargs)
    assert "\n" not in str(e.value)


def test_record_refuses_mixing_and_force_regenerates(tmp_path, monkeypatch):
    """synthetic.json records the options; another seed is refused unless force; stale temp files go."""
    import json

    import occ_core.data.synthetic.generate as gen

    written: list[tuple[int, int]] = []

    def fake_frame(seq_dir, seed, sequence, frames, index, cameras=1, extra_only=False):
        written.append((seed, index))
        for p in gen.frame_files(Path(seq_dir), f"{gen.SCAN_STEP * index:06d}", cameras):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(str(seed).encode())

    monkeypatch.setattr(gen, "write_frame", fake_frame)
    monkeypatch.setattr(gen, "write_sequence_files", lambda *a, **k: None)
    out = tmp_path / "syn"
    gen.generate_dataset(out, sequences=["00"], frames=2, seed=3, progress=False)
    assert json.loads((out / "synthetic.json").read_text()) == {"seed": 3, "frames": 2, "cameras": 1,
                                                                "sequences": ["00"]}
    with pytest.raises(OccError, match=r"synthetic.json: generated with --seed 3; add --force to regenerate it "
                                       r"with --seed 4"):
        gen.generate_dataset(out, sequences=["00"], frames=2, seed=4, progress=False)
    with pytest.raises(OccError, match=r"generated with --frames 2"):
        gen.generate_dataset(out, sequences=["00"], frames=1, seed=3, progress=False)
    assert written == [(3, 0), (3, 1)]
    stale = out / "dataset" / "sequences" / "00" / "voxels" / ".000000.ab12cd34.tmp.label"
    keep = out / "dataset" / "sequences" / "00" / "voxels" / "notes.tmp"
    stale.write_bytes(b"x")
    keep.write_bytes(b"x")
    summary = gen.generate_dataset(out, sequences=["00"], frames=1, seed=4, progress=False, force=True)
    assert summary["frames_written"] == 1 and written[-1] == (4, 0)
    assert not stale.exists() and keep.exists()
    assert not (out / "dataset" / "sequences" / "00" / "voxels" / "000005.bin").exists()  # frame 1 removed
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 4

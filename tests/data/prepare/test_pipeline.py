from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from occ_core.data.formats import semantickitti as sk
from occ_core.data.prepare.pipeline import prepare_kitti
from occ_core.data.prepare.layout import PreparedDataset
from occ_core.errors import FormatError, MissingError, OccError


def _block_mode_reference(label: np.ndarray, f: int) -> np.ndarray:
    """Per-block loop of the benchmark's downsampling rule (as in MonoScene's _downsample_label)."""
    out = np.zeros([s // f for s in label.shape], dtype=np.uint8)
    for x in range(out.shape[0]):
        for y in range(out.shape[1]):
            for z in range(out.shape[2]):
                b = label[x * f:(x + 1) * f, y * f:(y + 1) * f, z * f:(z + 1) * f].reshape(-1)
                z0, z255 = int((b == 0).sum()), int((b == 255).sum())
                if z0 + z255 > 0.95 * f ** 3:
                    out[x, y, z] = 0 if z0 > z255 else 255
                else:
                    out[x, y, z] = np.argmax(np.bincount(b[(b > 0) & (b < 255)]))
    return out


def test_prepare_targets_manifest_and_splits(raw_kitti: Path, tmp_path: Path):
    out = tmp_path / "prep"
    summary = prepare_kitti(raw_kitti, out)
    assert summary["frames"] == 5 and summary["written"] == 5 and summary["labeled"] == 5
    data = PreparedDataset(out)
    assert [f.name for f in data.frames("val")] == ["08/000000", "08/000005", "08/000010"]
    assert [f.name for f in data.frames("train")] == ["00/000000", "00/000005"]
    assert data.frames("test") == []
    assert data.splits["val"] == ["08"] and "09" in data.splits["train"] and data.splits["test"][0] == "11"
    manifest = json.loads((out / "manifest.json").read_text())
    assert not os.path.isabs(manifest["source"])
    assert data.source == (raw_kitti / "dataset" / "sequences").resolve()

    frame = data.frame("08/000005")
    d = raw_kitti / "dataset" / "sequences" / "08" / "voxels"
    expected = sk.remap_labels(sk.read_voxel_label(d / "000005.label"), sk.read_voxel_bits(d / "000005.invalid"))
    np.testing.assert_array_equal(data.load_target(frame, 1), expected)
    # 1:8 equals the plain per-block loop; 1:2 and 1:4 checked on a corner to keep the test fast
    np.testing.assert_array_equal(data.load_target(frame, 8), _block_mode_reference(expected, 8))
    np.testing.assert_array_equal(data.load_target(frame, 4)[:8, :8], _block_mode_reference(expected[:32, :32], 4))
    np.testing.assert_array_equal(data.load_target(frame, 2)[:8, :8, :4], _block_mode_reference(expected[:16, :16, :8], 2))
    np.testing.assert_array_equal(data.load_input(frame), sk.read_voxel_bits(d / "000005.bin"))
    arrays = data.load_arrays(frame)
    np.testing.assert_array_equal(arrays["occluded"], sk.read_voxel_bits(d / "000005.occluded"))
    assert {k: v.shape for k, v in arrays.items() if k.startswith("target")} == {
        "target_1_1": (256, 256, 32), "target_1_2": (128, 128, 16), "target_1_4": (64, 64, 8), "target_1_8": (32, 32, 4)}

    assert frame.files["image_3"] is None and frame.files["velodyne"] == "08/velodyne/000005.bin"
    assert data.raw_path(frame, "velodyne").is_file()


def test_projection_and_depth_match_an_independent_computation(raw_kitti: Path, tmp_path: Path):
    out = tmp_path / "prep"
    prepare_kitti(raw_kitti, out, sequences=["08"])
    data = PreparedDataset(out)
    geo = data.geometry("08")
    P2 = sk.read_calib(raw_kitti / "dataset/sequences/08/calib.txt")["P2"]
    Tr = sk.to_homogeneous(sk.read_calib(raw_kitti / "dataset/sequences/08/calib.txt")["Tr"])
    rng = np.random.default_rng(3)
    for scale in (1, 2, 4, 8):
        n = (256 // scale) * (256 // scale) * (32 // scale)
        assert geo[f"projected_pix_{scale}"].shape == (n, 2)
        for flat in rng.integers(0, n, 50):
            x, y, z = np.unravel_index(flat, (256 // scale, 256 // scale, 32 // scale))
            centre = np.array([0.0, -25.6, -2.0]) + (np.array([x, y, z]) + 0.5) * 0.2 * scale
            cam = Tr @ np.append(centre, 1.0)
            uvw = P2[:3, :3] @ cam[:3]  # the loaders use P2's 3x3 part
            u, v = round(uvw[0] / uvw[2]), round(uvw[1] / uvw[2])
            assert tuple(geo[f"projected_pix_{scale}"][flat]) == (u, v)
            assert geo[f"fov_mask_{scale}"][flat] == (0 <= u < 1220 and 0 <= v < 370 and cam[2] > 0)
    frame = data.frame("08/000000")
    depth = data.load_depth(frame)
    assert depth.shape == (370, 1220)
    pts = sk.read_scan(raw_kitti / "dataset/sequences/08/velodyne/000000.bin")
    cam = pts[:, :3] @ Tr[:3, :3].T + Tr[:3, 3]
    uvw = cam @ P2[:3, :3].T
    u, v = np.round(uvw[:, 0] / uvw[:, 2]).astype(int), np.round(uvw[:, 1] / uvw[:, 2]).astype(int)
    ok = (cam[:, 2] > 0) & (u >= 0) & (u < 1220) & (v >= 0) & (v < 370)
    nearest: dict[tuple[int, int], float] = {}
    for uu, vv, zz in zip(u[ok], v[ok], cam[ok, 2]):
        nearest[(vv, uu)] = min(nearest.get((vv, uu), np.inf), zz)
    assert (depth > 0).sum() == len(nearest) > 100
    for (vv, uu), zz in list(nearest.items())[:200]:
        assert abs(depth[vv, uu] - zz) <= 1 / 256  # KITTI depth PNG quantisation


def test_rerun_is_idempotent_and_workers_agree(raw_kitti: Path, tmp_path: Path):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    prepare_kitti(raw_kitti, out1)
    stamp = {p: p.stat().st_mtime_ns for p in out1.rglob("*.npz")}
    again = prepare_kitti(raw_kitti, out1)
    assert again["written"] == 0 and again["skipped"] == 5
    assert {p: p.stat().st_mtime_ns for p in out1.rglob("*.npz")} == stamp
    prepare_kitti(raw_kitti, out2, workers=2)
    a, b = PreparedDataset(out1), PreparedDataset(out2)
    assert [f.name for f in a.frames()] == [f.name for f in b.frames()]
    for fa, fb in zip(a.frames(), b.frames()):
        xa, xb = a.load_arrays(fa), b.load_arrays(fb)
        assert xa.keys() == xb.keys()
        for k in xa:
            np.testing.assert_array_equal(xa[k], xb[k])


def test_killed_run_leaves_no_half_written_frame(raw_kitti: Path, tmp_path: Path, monkeypatch):
    import occ_core.data.prepare.pipeline as prep

    out = tmp_path / "prep"
    real = prep.save_npz
    calls = {"n": 0}

    def dying_save(path, compress=True, **arrays):
        calls["n"] += "frames" in Path(path).parts
        if calls["n"] == 3:
            # die in the middle of writing: a temporary file exists, the rename never happens
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(Path(path).with_name(".partial.tmp.npz"), "wb") as f:
                f.write(b"half")
            raise KeyboardInterrupt
        real(path, compress, **arrays)

    monkeypatch.setattr(prep, "save_npz", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prepare_kitti(raw_kitti, out)
    done = sorted(p.name for p in out.glob("sequences/*/frames/*.npz") if not p.name.startswith("."))
    assert len(done) == 2
    assert not (out / "manifest.json").exists()  # the manifest only appears at the end
    monkeypatch.setattr(prep, "save_npz", real)
    summary = prepare_kitti(raw_kitti, out)
    assert summary["written"] == 3 and summary["skipped"] == 2
    for f in PreparedDataset(out).frames():
        PreparedDataset(out).load_arrays(f)  # every frame readable


def test_prepare_errors_name_the_file(raw_kitti: Path, tmp_path: Path):
    seq = raw_kitti / "dataset" / "sequences" / "08"
    with pytest.raises(MissingError, match="sequence.s. 05 not found"):
        prepare_kitti(raw_kitti, tmp_path / "o", sequences=["05"])
    with pytest.raises(MissingError, match="folder not found"):
        prepare_kitti(tmp_path / "nowhere", tmp_path / "o")

    (seq / "voxels" / "000010.invalid").unlink()
    with pytest.raises(MissingError, match=r"000010.invalid: invalid mask missing"):
        prepare_kitti(raw_kitti, tmp_path / "o")
    sk.write_voxel_bits(seq / "voxels" / "000010.invalid", np.zeros(sk.GRID_SHAPE, bool))

    (seq / "times.txt").write_text("0.0\n")
    with pytest.raises(FormatError, match=r"poses.txt: 11 poses but times.txt has 1 lines"):
        prepare_kitti(raw_kitti, tmp_path / "o")
    (seq / "times.txt").write_text("".join(f"{0.1 * i}\n" for i in range(11)))

    (seq / "voxels" / "000005.label").write_bytes(b"\0" * 10)
    with pytest.raises(FormatError, match=r"000005.label: wrong file size: 10 bytes, expected 4194304"):
        prepare_kitti(raw_kitti, tmp_path / "o", sequences=["08"])
    assert not (tmp_path / "o" / "manifest.json").exists()

    calib = seq / "calib.txt"
    calib.write_text("\n".join(l for l in calib.read_text().splitlines() if not l.startswith("P2")))
    with pytest.raises(FormatError, match=r"calib.txt: missing calibration key 'P2'"):
        prepare_kitti(raw_kitti, tmp_path / "o2")
    with pytest.raises(OccError, match="workers"):
        prepare_kitti(raw_kitti, tmp_path / "o3", workers=0)


def test_unlabeled_frames_are_prepared(tmp_path: Path):
    from _raw import write_raw_sequence

    root = tmp_path / "raw"
    write_raw_sequence(root, "11", [0, 5], np.random.default_rng(4), labeled=False, scans=False)
    prepare_kitti(root, tmp_path / "p")
    data = PreparedDataset(tmp_path / "p")
    frames = data.frames("test")
    assert [f.labeled for f in frames] == [False, False]
    assert data.load_input(frames[0]).sum() > 0 and data.load_depth(frames[0]) is None
    with pytest.raises(MissingError, match="no target"):
        data.load_target(frames[0])


def test_real_mini_data(mini_root: Path, tmp_path: Path):
    summary = prepare_kitti(mini_root, tmp_path / "p", workers=2)
    data = PreparedDataset(tmp_path / "p")
    frames = data.frames()
    assert summary["frames"] == 10 and [f.id for f in frames][:3] == ["000000", "000005", "000010"]
    assert not any(f.labeled for f in frames)
    f0 = data.frame("00/000000")
    assert int(data.load_input(f0).sum()) == 11_677
    assert f0.files["image_2"] == "00/image_2/000000.png" and f0.files["image_3"] == "00/image_3/000000.png"
    depth = data.load_depth(f0)
    assert 10_000 < int((depth > 0).sum()) < 40_000 and 0 < depth[depth > 0].min() and depth.max() < 120
    assert data.load_depth(data.frame("00/000010")) is None  # no scan for that frame in the mini set
    # voxel centres of the input scan that are in view project onto pixels with LiDAR depth nearby
    geo = data.geometry("00")
    occ = np.flatnonzero(data.load_input(f0).reshape(-1) & geo["fov_mask_1"])
    assert len(occ) > 1000
    u, v = geo["projected_pix_1"][occ].T
    hits = 0
    for uu, vv, zz in zip(u, v, geo["pix_z_1"][occ]):
        win = depth[max(vv - 3, 0):vv + 4, max(uu - 3, 0):uu + 4]
        hits += bool(np.any(np.abs(win[win > 0] - zz) < 1.0))
    assert hits / len(occ) > 0.6


def test_stereo_depth_from_sgbm(synthetic_raw: Path, tmp_path: Path):
    """SGBM depth on the synthetic stereo pair agrees with the generator's true depth where it is valid."""
    import cv2

    from occ_core.data.prepare.pipeline import stereo_depth

    seq = synthetic_raw / "dataset" / "sequences" / "08"
    calib = sk.read_calib(seq / "calib.txt")
    baseline = (calib["P2"][0, 3] - calib["P3"][0, 3]) / calib["P2"][0, 0]
    depth = stereo_depth(seq / "image_2" / "000000.png", seq / "image_3" / "000000.png", calib["P2"][0, 0], baseline, (1220, 370))
    truth = cv2.imread(str(seq / "depth_2" / "000000.png"), cv2.IMREAD_UNCHANGED)[:370, :1220].astype(np.float32) / 256
    both = (depth > 0) & (truth > 0) & (truth < 30)
    assert both.mean() > 0.3  # SGBM finds most of the near scene
    rel = np.abs(depth[both] - truth[both]) / truth[both]
    assert np.median(rel) < 0.05

    summary = prepare_kitti(synthetic_raw, tmp_path / "p", sequences=["08"], depth="sgbm")
    data = PreparedDataset(tmp_path / "p")
    assert data.manifest["depth"] == "sgbm" and summary["written"] == 2
    stored = data.load_depth(data.frame("08/000000"))
    assert np.abs(stored - depth).max() <= 1 / 256 + 1e-6
    with pytest.raises(OccError, match="prepared with --depth sgbm; add --force"):
        prepare_kitti(synthetic_raw, tmp_path / "p", sequences=["08"], depth="lidar")

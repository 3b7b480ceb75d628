"""OpenOccupancy and SurroundOcc: the sparse files the tests write themselves beside the synthetic surround-view
nuScenes dataset prepare (`occ prepare openoccupancy` / `surroundocc`) and evaluate (`occ eval`); the readers
follow the benchmarks' loaders; malformed files are one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _surround import surround_raw
from typer.testing import CliRunner

from occ_cli.main import app
from occ_core.data.formats import openoccupancy as oo
from occ_core.data.formats import surroundocc as so
from occ_core.data.formats.labels import write_prediction
from occ_core.data.prepare.layout import PreparedDataset

runner = CliRunner()


def test_openoccupancy_reader_follows_the_loader(tmp_path):
    rows = np.array([[3, 2, 1, 4],     # z y x class: voxel (1, 2, 3) car
                     [0, 0, 5, 0],     # noise -> 255
                     [1, 1, 1, 7], [1, 1, 1, 9], [1, 1, 1, 9],  # majority: 9
                     [2, 2, 2, 5], [2, 2, 2, 3]], np.int64)     # tie: the lowest, 3
    path = tmp_path / "a.npy"
    np.save(path, rows)
    t = oo.read_occupancy(path)
    assert t.shape == oo.GRID_SHAPE and t.dtype == np.uint8
    assert t[1, 2, 3] == 4 and t[5, 0, 0] == 255 and t[1, 1, 1] == 9 and t[2, 2, 2] == 3
    assert int((t > 0).sum()) == 4
    np.save(path, np.c_[rows[:, :3], np.zeros((len(rows), 3)), rows[:, 3]])  # with velocities
    assert np.array_equal(oo.read_occupancy(path), t)


def test_surroundocc_reader_follows_the_loader(tmp_path):
    rows = np.array([[1, 2, 3, 4], [5, 0, 0, 0], [7, 7, 7, 2], [7, 7, 7, 6]], np.float64)  # x y z class
    path = tmp_path / "s.npy"
    np.save(path, rows)
    t = so.read_occupancy(path)
    assert t.shape == so.GRID_SHAPE
    assert t[1, 2, 3] == 4 and t[5, 0, 0] == 255 and t[7, 7, 7] == 6 and int((t > 0).sum()) == 3


@pytest.mark.parametrize("content, message", [
    (np.zeros((3, 5), np.int64), "rows of 4"),
    (np.array([[0, 0, 600, 1]]), "outside"),
    (np.array([[0, 0, 0, 17]]), "class 17"),
    (np.array([[0.5, 0, 0, 1]]), "whole numbers"),
])
def test_malformed_openoccupancy_files(tmp_path, content, message):
    from occ_core.errors import FormatError

    path = tmp_path / "bad.npy"
    np.save(path, content)
    with pytest.raises(FormatError, match=message) as e:
        oo.read_occupancy(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# ---- prepare + eval on the synthetic surround-view dataset -------------------------------------------------


def _samples(raw: Path):
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version="v1.0-mini", dataroot=str(raw), verbose=False)
    out = []
    for s in nusc.sample:
        scene = nusc.get("scene", s["scene_token"])
        lsd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        out.append((scene["name"], scene["token"], s["token"], lsd["token"], lsd["filename"]))
    return out


def _rows(rng, shape, n, order):
    idx = np.stack([rng.integers(0, s, n) for s in shape], 1)
    cls = rng.integers(0, 17, n)
    cls[: n // 2] = rng.integers(1, 17, n // 2)
    cols = idx[:, ::-1] if order == "zyx" else idx
    return np.c_[cols, cls].astype(np.int64)


@pytest.fixture(scope="module")
def sparse_gts(tmp_path_factory):
    raw = surround_raw(tmp_path_factory)
    base = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(0)
    samples = _samples(raw)
    for scene, scene_tok, tok, lidar_tok, lidar_file in samples:
        p = oo.occ_path(base / "openocc", scene_tok, lidar_tok)
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, _rows(rng, oo.GRID_SHAPE, 3000, "zyx"))
        p = so.occ_path(base / "surroundocc" / "samples", lidar_file)
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, _rows(rng, so.GRID_SHAPE, 3000, "xyz"))
    return raw, base, samples


@pytest.mark.parametrize("dataset, fmt, sub", [("openoccupancy", oo, "openocc"), ("surroundocc", so, "surroundocc")])
def test_prepare_and_evaluate(sparse_gts, tmp_path, dataset, fmt, sub):
    raw, base, samples = sparse_gts
    out = tmp_path / "prep"
    result = runner.invoke(app, ["prepare", dataset, "--nuscenes", str(raw), "--occ", str(base / sub),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = PreparedDataset(out)
    spec = ds.spec
    assert spec.name == dataset and spec.metric == "openoccupancy" and spec.grid.frame == "lidar"
    assert tuple(spec.grid.shape) == fmt.GRID_SHAPE and spec.classes.names == fmt.CLASS_NAMES
    assert len(ds.frames()) == len(samples) and {f.split for f in ds.frames()} == {"train", "val"}
    scene, scene_tok, tok, lidar_tok, lidar_file = samples[0]
    frame = ds.frame(f"{scene}/{tok}")
    assert frame.extra["lidar_token"] == lidar_tok and frame.extra["scene_token"] == scene_tok
    gt = oo.occ_path(base / sub, scene_tok, lidar_tok) if dataset == "openoccupancy" else \
        so.occ_path(base / sub / "samples", lidar_file)
    np.testing.assert_array_equal(ds.load_target(frame, 1), fmt.read_occupancy(gt))
    assert ds.load_target(frame, 2).shape == tuple(s // 2 for s in fmt.GRID_SHAPE)
    a = ds.load_arrays(frame, ["input_occ", "lidar_to_ego", "ego_to_world"])
    assert a["input_occ"].any()
    K, T = ds.calibration(scene, tok)[0]
    assert K.shape == (3, 3) and T.shape == (4, 4)
    # the LiDAR origin (grid frame 0) seen from CAM_FRONT is where the ego frame puts it
    from occ_core.data.prepare import occ3d as p3

    nusc = p3.load_tables(raw, "v1.0-mini")
    info = p3.scene_samples(nusc, nusc.get("scene", scene_tok), raw, raw)[0]
    np.testing.assert_allclose(T, info.T["CAM_FRONT"] @ info.lidar_to_ego, atol=1e-9)

    # evaluate: the truth itself scores 100, a noisy prediction the per-class reference
    rng = np.random.default_rng(1)
    pred_dir = tmp_path / "pred"
    tp, g, p = np.zeros(17), np.zeros(17), np.zeros(17)
    for f in ds.frames(split="val"):
        t = ds.load_target(f, 1)
        pr = np.where(rng.random(t.shape) < 0.999, np.where(t == 255, 0, t), rng.integers(0, 17, t.shape))
        pr = pr.astype(np.uint8)
        write_prediction(pred_dir, f.sequence, f.id, pr, spec)
        keep = t != 255
        for c in range(1, 17):
            tp[c] += ((t == c) & (pr == c) & keep).sum()
            g[c] += ((t == c) & keep).sum()
            p[c] += ((pr == c) & keep).sum()
    js = tmp_path / "s.json"
    result = runner.invoke(app, ["eval", "--data", str(out), "--pred", str(pred_dir), "--json", str(js)])
    assert result.exit_code == 0, result.output
    res = json.loads(js.read_text())
    assert res["metric"] == "openoccupancy" and res["dataset"] == dataset and "rayiou" not in res
    ref = 100 * tp[1:] / (g[1:] + p[1:] - tp[1:])
    assert [res["per_class"][n] for n in fmt.CLASSES] == pytest.approx(list(ref))
    assert res["miou"] == pytest.approx(ref.mean())


def test_malformed_file_stops_prepare_with_one_line(sparse_gts, tmp_path):
    raw, base, samples = sparse_gts
    import shutil

    occ = tmp_path / "so"
    shutil.copytree(base / "surroundocc", occ)
    bad = so.occ_path(occ / "samples", samples[1][4])
    np.save(bad, np.zeros((4, 3)))
    out = tmp_path / "prep"
    result = runner.invoke(app, ["prepare", "surroundocc", "--nuscenes", str(raw), "--occ", str(occ), "--out", str(out)])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and str(bad) in lines[0] and "rows of 4" in lines[0]
    assert not out.exists()  # checked before the first write
    bad.unlink()
    result = runner.invoke(app, ["prepare", "surroundocc", "--nuscenes", str(raw), "--occ", str(occ), "--out", str(out)])
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and str(bad) in lines[0] and "missing" in lines[0]

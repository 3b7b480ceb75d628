"""TACOcc (and its ``lidar`` baseline) on the six-camera synthetic surround data (Occ3D layout, LIDAR_TOP in the
ego frame) through the CLI: train -> resume -> eval --run -> predict -> render -> export (issue 11)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _surround import SMALL_SETS, cli_sets, surround_prepared
from typer.testing import CliRunner

from occ_cli.main import app

runner = CliRunner()
SMALL = SMALL_SETS + ["data.max_frames=1", "val_every=0"]


def _sets(extra=()):
    return cli_sets([*SMALL, *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return surround_prepared(tmp_path_factory)


def test_tacocc_six_cameras_and_lidar_top_end_to_end(prepared, tmp_path):
    from occ_core.data.formats import occ3d
    from occ_core.data.prepare.layout import PreparedDataset

    r = runner.invoke(app, ["train", "--method", "tacocc", "--preset", "tiny", "--data", str(prepared),
                            "--out", str(tmp_path), "--name", "t", "--epochs", "1", *_sets()])
    assert r.exit_code == 0, r.output
    run = tmp_path / "t"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("render_photo" in row or "render_depth" in row for row in rows if row.get("type") == "train"), rows
    r = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert max(row.get("epoch", 0) for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())) == 2
    r = runner.invoke(app, ["eval", "--run", str(run), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    scores = json.loads((tmp_path / "e.json").read_text())
    assert "miou" in scores and 0.0 <= scores["miou"] <= 100.0
    r = runner.invoke(app, ["predict", "--run", str(run), "--split", "val", "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    data = PreparedDataset(prepared)
    frame = data.frames("val")[0]
    sem = occ3d.read_prediction(tmp_path / "pred" / frame.sequence / frame.id / "labels.npz")
    assert sem.dtype == np.uint8 and sem.shape == occ3d.GRID_SHAPE
    r = runner.invoke(app, ["render", "--data", str(prepared), "--pred", str(tmp_path / "pred"), "--frame",
                            frame.name, "--out", str(tmp_path / "pics"), "--views", "bev"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pics" / f"{frame.sequence}_{frame.id}_bev.png").is_file()
    r = runner.invoke(app, ["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    import onnx

    names = [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input]
    assert "points_padded" in names and "points_count" in names and "images" in names

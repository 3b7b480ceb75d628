"""`occ eval` through the typer app on a tiny prepared dataset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from occ_cli.main import app
from occ_core.data.formats import semantickitti as sk

runner = CliRunner()


def _helpers():
    """The dataset builder of tests/metrics/test_evaluate.py (shares its per-session cache)."""
    path = Path(__file__).resolve().parents[1] / "metrics" / "test_evaluate.py"
    spec = importlib.util.spec_from_file_location("_occ_test_evaluate_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _helpers()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return H.build_prepared(tmp_path_factory)


def one_error_line(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_eval_prints_tables_and_writes_json(prepared: Path, tmp_path: Path):
    rng = np.random.default_rng(5)
    tgt = H.targets(prepared)
    preds = {fid: H.noisy(t, rng) for fid, t in tgt.items()}
    pred_dir = H.write_preds(tmp_path / "pred", preds, "label")
    out = tmp_path / "res" / "scores.json"
    result = runner.invoke(app, ["eval", "--data", str(prepared), "--pred", str(pred_dir), "--json", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("car", "traffic-sign", "precision", "mIoU", "17.1-34.2m", "val: 3 frames"):
        assert text in result.output
    res = json.loads(out.read_text())
    assert {"iou", "miou", "precision", "recall", "per_class", "frames", "split", "fov_only", "missing",
            "per_distance"} <= set(res)
    assert list(res["per_class"]) == list(sk.CLASS_NAMES[1:])
    assert set(res["per_distance"]["0-17.1m"]) == {"iou", "miou", "precision", "recall", "per_class"}
    ref = H.reference([(preds[f], tgt[f]) for f in H.FRAMES])
    assert res["miou"] == pytest.approx(ref["miou"]) and res["iou"] == pytest.approx(ref["iou"])
    assert f"{res['miou']:.2f}" in result.output


def test_eval_perfect_fov_only(prepared: Path, tmp_path: Path):
    tgt = H.targets(prepared)
    preds = {fid: np.where(t == 255, 0, t).astype(np.uint8) for fid, t in tgt.items()}
    pred_dir = H.write_preds(tmp_path / "pred", preds, "npy")
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", "--data", str(prepared), "--pred", str(pred_dir), "--fov-only",
                                 "--split", "val", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "field of view" in result.output
    res = json.loads(out.read_text())
    assert res["fov_only"] is True and res["iou"] == 100.0 and res["miou"] == 100.0


def test_eval_missing_prediction(prepared: Path, tmp_path: Path):
    preds = {fid: np.zeros(sk.GRID_SHAPE, np.uint8) for fid in H.FRAMES[1:]}
    pred_dir = H.write_preds(tmp_path / "pred", preds, "npy")
    args = ["eval", "--data", str(prepared), "--pred", str(pred_dir)]
    line = one_error_line(runner.invoke(app, args))
    assert "000000.label" in line and "--allow-missing" in line
    result = runner.invoke(app, args + ["--allow-missing", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "1 frame(s) had no prediction" in result.output
    assert json.loads((tmp_path / "r.json").read_text())["missing"] == ["08/000000"]


def test_eval_errors_are_one_line(prepared: Path, tmp_path: Path):
    d = tmp_path / "pred" / "sequences" / "08" / "predictions"
    d.mkdir(parents=True)
    (d / "000000.label").write_bytes(b"\0" * 10)
    line = one_error_line(runner.invoke(app, ["eval", "--data", str(prepared), "--pred", str(tmp_path / "pred"),
                                              "--allow-missing"]))
    assert "000000.label" in line and "wrong file size" in line
    line = one_error_line(runner.invoke(app, ["eval", "--data", str(tmp_path / "nope"), "--pred", str(tmp_path / "pred")]))
    assert "nope" in line
    line = one_error_line(runner.invoke(app, ["eval", "--data", str(prepared), "--pred", str(tmp_path / "pred"),
                                              "--split", "test"]))
    assert "no labeled frames" in line

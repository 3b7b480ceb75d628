"""`occ render`: pictures from a prediction folder, errors as one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from occ_cli.main import app
from occ_core.data.prepare.layout import PreparedDataset
from occ_core.data.formats.semantickitti import inverse_remap


def _pred_folder(root: Path, prepared: Path, frame_name: str, as_label: bool) -> Path:
    data = PreparedDataset(prepared)
    fr = data.frame(frame_name)
    gt = data.load_target(fr, 1)
    pred = np.roll(np.where(gt == 255, 0, gt), 2, axis=0).astype(np.uint8)
    d = root / "sequences" / fr.sequence / "predictions"
    d.mkdir(parents=True, exist_ok=True)
    if as_label:
        inverse_remap(pred).astype("<u2").tofile(d / f"{fr.id}.label")
    else:
        np.save(d / f"{fr.id}.npy", pred)
    return root


def test_render_pred_folder_writes_pictures(synthetic_prepared: Path, tmp_path: Path):
    frame = PreparedDataset(synthetic_prepared).frames("val")[0].name
    pred = _pred_folder(tmp_path / "pred", synthetic_prepared, frame, as_label=True)
    out = tmp_path / "pics"
    res = CliRunner().invoke(app, ["render", "--data", str(synthetic_prepared), "--frame", frame, "--pred", str(pred),
                                   "--out", str(out), "--views", "sensor,orbit", "--gif", "--scale", "0.15",
                                   "--orbit-frames", "2"])
    assert res.exit_code == 0, res.output
    stem = frame.replace("/", "_")
    import cv2

    for view in ("sensor", "orbit"):
        img = cv2.imread(str(out / f"{stem}_{view}.png"))
        assert img is not None and img.shape[0] > 20
    sensor = cv2.imread(str(out / f"{stem}_sensor.png"))
    assert sensor.shape[1] >= 2 * 183  # ground truth and prediction side by side
    from PIL import Image

    with Image.open(out / f"{stem}_orbit.gif") as gif:
        assert gif.n_frames == 2


def test_render_npy_prediction_and_gt_only(synthetic_prepared: Path, tmp_path: Path):
    frame = PreparedDataset(synthetic_prepared).frames("val")[0].name
    pred = _pred_folder(tmp_path / "pred", synthetic_prepared, frame, as_label=False)
    res = CliRunner().invoke(app, ["render", "--data", str(synthetic_prepared), "--frame", frame, "--pred", str(pred),
                                   "--out", str(tmp_path / "a"), "--views", "bev", "--scale", "0.5"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["render", "--data", str(synthetic_prepared), "--frame", frame,
                                   "--out", str(tmp_path / "b"), "--views", "bev", "--scale", "0.5"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / f"{frame.replace('/', '_')}_bev.png").is_file()


def test_render_errors_are_one_line(synthetic_prepared: Path, tmp_path: Path):
    runner = CliRunner()
    frame = PreparedDataset(synthetic_prepared).frames("val")[0].name
    cases = [
        (["--frame", "08/999999", "--views", "bev"], "no frame '08/999999'"),
        (["--frame", frame, "--pred", str(tmp_path / "nowhere")], "prediction folder not found"),
        (["--frame", frame, "--views", "sideways"], "unknown view 'sideways'"),
    ]
    (tmp_path / "empty" / "sequences").mkdir(parents=True)
    cases.append((["--frame", frame, "--pred", str(tmp_path / "empty")], f"no prediction for frame {frame}"))
    for args, msg in cases:
        res = runner.invoke(app, ["render", "--data", str(synthetic_prepared), "--out", str(tmp_path / "o"), *args])
        assert res.exit_code == 2, res.output
        assert msg in res.output and "Traceback" not in res.output

"""Six-camera Occ3D data end to end through the CLI: train baseline (with the GaussRender loss rendering the six
cameras and the BEV) -> eval --run -> predict (Occ3D labels.npz) -> render (six-camera mosaic + BEV); b2s and
vpocc on the same data; the prepare commands' one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _surround import SCENES, SMALL_SETS, cli_sets, surround_prepared, surround_raw
from typer.testing import CliRunner

from occ_cli.main import app

runner = CliRunner()
SMALL = SMALL_SETS


def _sets(extra=()):
    return cli_sets([*SMALL, *extra])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return surround_prepared(tmp_path_factory)


def test_baseline_six_cameras_train_eval_predict_render(prepared, tmp_path):
    from occ_core.data.formats import occ3d
    from occ_core.data.prepare.layout import PreparedDataset

    r = runner.invoke(app, ["train", "--method", "baseline", "--preset", "tiny", "--data", str(prepared),
                            "--out", str(tmp_path), "--name", "b", "--epochs", "1",
                            *_sets(["data.max_frames=1", "loss.render.enabled=true", "loss.render.image_scale=0.25",
                                    "loss.render.bev_resolution=1.6"])])
    assert r.exit_code == 0, r.output
    run = tmp_path / "b"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if "render_sem" in json.dumps(row)]
    assert train, rows  # the rendering loss ran
    assert "val IoU" in r.output  # validation (the SSC evaluator until the Occ3D metric is wired) ran
    r = runner.invoke(app, ["predict", "--run", str(run), "--split", "val", "--out", str(tmp_path / "pred")])
    assert r.exit_code == 0, r.output
    data = PreparedDataset(prepared)
    for f in data.frames("val"):
        sem = occ3d.read_prediction(tmp_path / "pred" / f.sequence / f.id / "labels.npz")
        assert sem.dtype == np.uint8 and sem.shape == occ3d.GRID_SHAPE and sem.max() <= occ3d.FREE_ID
    frame = data.frames("val")[0]
    r = runner.invoke(app, ["render", "--data", str(prepared), "--pred", str(tmp_path / "pred"), "--frame",
                            frame.name, "--out", str(tmp_path / "pics"), "--scale", "1"])
    assert r.exit_code == 0, r.output
    import cv2

    mosaic = cv2.imread(str(tmp_path / "pics" / f"{frame.sequence}_{frame.id}_sensor.png"))
    W, H = data.spec.cameras[0].image_size
    assert mosaic.shape[1] >= 2 * 3 * (W // 2) and mosaic.shape[0] >= 2 * (H // 2)  # GT | prediction, 3 x 2 each
    assert (tmp_path / "pics" / f"{frame.sequence}_{frame.id}_bev.png").is_file()


def test_b2s_and_vpocc_on_six_cameras(prepared):
    from occ_core.data.loading.dataset import OccDataset, collate
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model
    from occ_core.data.prepare.layout import PreparedDataset

    spec = PreparedDataset(prepared).spec
    for method in ("b2s", "vpocc"):
        cfg = build_config(method, "tiny", overrides=[f"data.root={prepared}", *SMALL])
        import dataclasses

        cfg = dataclasses.replace(cfg, n_classes=spec.n_classes)
        model = build_model(cfg, spec)
        ds = OccDataset(prepared, "train", cfg.data, train=True)
        batch = collate([ds[0]])
        assert batch["images"].shape[1] == 6
        out = model(batch)
        loss = sum(model.losses(out, batch).values())
        assert torch.isfinite(loss)
        loss.backward()
        if method == "vpocc":
            model.eval()
            with torch.no_grad():
                assert model.predict(batch).shape == (1, *spec.grid.shape)
            assert model.spec.camera_names == ["CAM_FRONT"]  # single-image VP modules: the front camera


def test_prepare_refusals_are_one_line(tmp_path_factory, tmp_path):
    raw = surround_raw(tmp_path_factory)
    r = runner.invoke(app, ["prepare", "synthetic", "--layout", "nuscenes", "--out", str(tmp_path / "s"),
                            "--sequences", "00"])
    assert r.exit_code == 2 and "--scenes" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["prepare", "synthetic", "--layout", "nuscenes", "--out", str(tmp_path / "s"),
                            "--scenes", "scene-9999"])
    assert r.exit_code == 2 and "not a v1.0-mini scene" in r.output
    r = runner.invoke(app, ["prepare", "occ3d", "--nuscenes", str(raw), "--out", str(tmp_path / "o"),
                            "--version", "v1.0-trainval"])
    assert r.exit_code == 2 and str(raw / "v1.0-trainval") in r.output.replace("\n", "")
    r = runner.invoke(app, ["prepare", "occ3d", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--nuscenes" in r.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()
    assert SCENES

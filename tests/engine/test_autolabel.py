"""Offline auto-labelling: pseudo-label files, scored by `occ eval --pred`, turned into a trainable dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from occ_core.data.formats import semantickitti as sk
from occ_core.engine.config import build_config

SMALL = ["data.image_scale=0.15", "model.lifting.grid=[32, 32, 4]", "model.lifting.embed_dims=16",
         "model.lifting.num_heads=2"]


@pytest.fixture(scope="module")
def autolabel_run(synthetic_prepared: Path, tmp_path_factory) -> Path:
    import warnings

    from occ_core.engine.trainer import train

    cfg = build_config("b2s", "tiny", overrides=[f"data.root={synthetic_prepared}", *SMALL, "model.mode=autolabel",
                                                  "data.label_fraction=0.5", "optim.epochs=1"])
    run = tmp_path_factory.mktemp("autolabel") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg, run, progress=False)
    assert result["iou"] == pytest.approx(100.0)  # the geometry is the input
    return run


def test_pseudo_label_files(autolabel_run: Path, synthetic_prepared: Path, tmp_path: Path):
    from occ_cli.main import app
    from occ_core.engine.autolabel import read_confidence
    from occ_core.engine.predict import predict_to_folder

    out = tmp_path / "pseudo"
    summary = predict_to_folder(autolabel_run, out, split="train", progress=False)
    assert summary["frames"] == 2 and summary["pseudo_labels"]
    folder = out / "sequences" / "00" / "predictions"
    for fid in ("000000", "000005"):
        label = folder / f"{fid}.label"
        assert label.stat().st_size == 256 * 256 * 32 * 2
        raw = np.fromfile(label, dtype="<u2")
        assert set(np.unique(raw)) <= set(sk.LEARNING_MAP_INV.values())
        conf = np.load(folder / f"{fid}.confidence.npy")
        assert conf.dtype == np.uint8 and conf.shape == (256, 256, 32)
        unknown = sk.read_voxel_bits(folder / f"{fid}.invalid")
        assert bool((conf[unknown] == 0).all()) and 0.0 <= float(read_confidence(folder / f"{fid}.confidence.npy").max()) <= 1.0
    result = CliRunner().invoke(app, ["eval", "--data", str(synthetic_prepared), "--pred", str(out), "--split", "train",
                                      "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    import json

    scores = json.loads((tmp_path / "r.json").read_text())
    assert scores["frames"] == 2 and scores["iou"] == pytest.approx(100.0)


def test_pseudo_label_dataset_is_prepared_and_trainable(autolabel_run: Path, synthetic_prepared: Path, tmp_path: Path):
    from occ_core.data.prepare.pipeline import prepare_kitti
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.data.loading.dataset import OccDataset
    from occ_core.engine.autolabel import build_pseudo_dataset
    from occ_core.engine.predict import predict_to_folder

    pseudo = tmp_path / "pseudo"
    predict_to_folder(autolabel_run, pseudo, split="train", progress=False)
    summary = build_pseudo_dataset(synthetic_prepared, pseudo, tmp_path / "raw", min_confidence=0.3,
                                   keep_labels=["00/000000"])
    assert summary["pseudo_labelled"] == 1 and summary["ground_truth"] == 3  # 00/000000 kept, val frames kept
    prepare_kitti(tmp_path / "raw", tmp_path / "prep", progress=False, workers=2)
    ds = PreparedDataset(tmp_path / "prep")
    assert all(f.labeled for f in ds.frames())
    frame = ds.frame("00/000005")
    target = ds.load_target(frame)
    pred = sk.remap_labels(np.fromfile(pseudo / "sequences" / "00" / "predictions" / "000005.label", dtype="<u2")
                           .reshape(sk.GRID_SHAPE))
    conf = np.load(pseudo / "sequences" / "00" / "predictions" / "000005.confidence.npy") / 255.0
    valid = target != 255
    np.testing.assert_array_equal(target[valid], pred[valid])
    assert not bool(valid[conf < 0.3].any())  # low-confidence voxels are ignored
    np.testing.assert_array_equal(ds.load_target(ds.frame("00/000000")),
                                  PreparedDataset(synthetic_prepared).load_target(PreparedDataset(synthetic_prepared).frame("00/000000")))
    cfg = build_config("b2s", "tiny", overrides=[f"data.root={tmp_path / 'prep'}", *SMALL])
    sample = OccDataset(ds, "train", cfg.data, train=True)[0]
    assert sample["target"].shape == (256, 256, 32)

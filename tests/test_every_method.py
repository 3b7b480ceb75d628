"""Every registered method, automatically: train two steps, resume, predict, evaluate and export,
on a single-camera and on a three-camera synthetic fixture (issue 9, item 5).

The list is the registry itself (built-ins, entry-point plug-ins and run-time registrations); a
method may only be left out through ``OPT_OUT`` with a written reason.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from occ_core.registry import available_methods

OPT_OUT: dict[str, str] = {}
"""method -> why it is not run here (none today)."""

SMALL = ["data.image_scale=0.15", "model.lifting.stride=8", "model.lifting.embed_dims=16", "model.lifting.num_heads=2",
         "optim.batch_size=1", "val_every=0", "device=cpu"]

METHODS = sorted(m for m in available_methods() if m not in OPT_OUT and not m.startswith("_"))


@pytest.fixture(scope="module", params=[1, 3], ids=["1cam", "3cam"])
def prepared(request, tmp_path_factory) -> Path:
    """A tiny synthetic dataset (train 00, val 08, two frames each) with 1 or 3 cameras, prepared."""
    from occ_core.data.prepare.pipeline import prepare_kitti
    from occ_core.data.synthetic import generate_dataset

    base = tmp_path_factory.mktemp(f"every_{request.param}cam")
    generate_dataset(base / "raw", sequences=["00", "08"], frames=2, seed=5, workers=1, progress=False,
                     cameras=request.param)
    prepare_kitti(base / "raw", base / "prepared", workers=1, progress=False)
    return base / "prepared"


def test_registry_is_walked():
    """The built-in methods are all here (the walk is not an allow-list that skips new ones)."""
    from occ_core.registry import _BUILTIN

    assert set(_BUILTIN) - set(OPT_OUT) <= set(METHODS)
    assert all(reason.strip() for reason in OPT_OUT.values())


@pytest.mark.parametrize("method", METHODS)
def test_method_end_to_end(method: str, prepared: Path, tmp_path: Path):
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.predict import predict_to_folder
    from occ_core.engine.trainer import LAST, train
    from occ_core.export.model import export_model
    from occ_core.metrics.evaluate import evaluate_predictions

    spec = PreparedDataset(prepared).spec
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone warning
        cfg = build_config(method, "tiny", overrides=[f"data.root={prepared}", "optim.epochs=1", *SMALL])
        first = train(cfg, run, progress=False)  # one epoch = the two training frames = two steps
        assert first["steps"] == 2 and np.isfinite(first["iou"])
        assert (run / LAST).is_file()
        cfg2 = build_config(method, "tiny", overrides=[f"data.root={prepared}", "optim.epochs=2", *SMALL])
        resumed = train(cfg2, run, resume=True, progress=False)
        assert resumed["steps"] == 4 and resumed["epochs_completed"] == 2
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows if r["type"] == "val"][-1] == 2

        pred = tmp_path / "pred"
        summary = predict_to_folder(run, pred, split="val", device="cpu", progress=False)
        assert summary["frames"] == 2
        labels = sorted((pred / "sequences" / "08" / "predictions").glob("*.label"))
        assert len(labels) == 2 and labels[0].stat().st_size == 2 * spec.grid.n_voxels
        scores = evaluate_predictions(prepared, pred, split="val", progress=False)
        assert scores["frames"] == 2 and 0.0 <= scores["iou"] <= 100.0
        assert set(scores["per_class"]) == set(spec.classes.names[1:])

        onnx = tmp_path / "model.onnx"
        out = export_model(run, "onnx", onnx, outputs="logits")
        assert out["argmax_agreement"] >= 0.999 and out["max_abs_diff"] <= 1e-3
        assert out["output"]["shape"] == [1, spec.n_classes, *spec.grid.shape]

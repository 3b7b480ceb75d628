"""`occ eval --pred` on nuScenes-family prepared folders: the metric picked from spec.metric, the camera mask,
RayIoU origins from the scene's poses, the labels.npz prediction layout, and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from occ_cli.main import app
from occ_core.data.formats.labels import write_prediction
from occ_core.data.prepare.layout import FORMAT_NAME, FORMAT_VERSION, frame_path
from occ_core.data.spec import CameraSpec, ClassSpec, DatasetSpec, GridSpec
from occ_core.metrics.occ3d import Occ3DMetric
from occ_core.metrics.rayiou import RayIoUMetric, scene_lidar_origins
from occ_core.utils.atomic import save_npz, write_json

runner = CliRunner()
N_RAW = 6  # raw ids 0..4 classes, 5 free (an Occ3D-like id layout, small)
GRID = GridSpec((30, 30, 8), 0.4, (-6.0, -6.0, -1.0), "ego")


def tiny_spec(metric: str = "occ3d") -> DatasetSpec:
    names = ("free", "a", "b", "c", "d", "e")
    to_raw = (5, 0, 1, 2, 3, 4)
    from_raw = tuple((r, to_raw.index(r)) for r in range(N_RAW))
    return DatasetSpec("tinyocc", GRID, ClassSpec(names, to_raw, from_raw), (CameraSpec("CAM_FRONT", (64, 36)),),
                       {"train": ["scene-0001"], "val": ["scene-0002"]}, ("camera", "lidar"), metric=metric)


def _pose(x: float, yaw: float) -> np.ndarray:
    T = np.eye(4)
    T[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    T[:3, 3] = [x, 2.0, 0.0]
    return T


LIDAR_TO_EGO = np.array([[0, 1, 0, 0.9], [-1, 0, 0, 0.0], [0, 0, 1, 0.8], [0, 0, 0, 1]], np.float64)
TOKENS = {"scene-0001": ["t0", "t1"], "scene-0002": ["v0", "v1", "v2"]}


def build(root: Path, spec: DatasetSpec, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A prepared folder with the keys of a prepared Occ3D frame (targets, masks, poses, prev/next)."""
    rng = np.random.default_rng(seed)
    frames, data = [], {}
    for scene, tokens in TOKENS.items():
        # manifest order deliberately not the time order: the chain decides
        for k in [2, 0, 1][:len(tokens)] if len(tokens) == 3 else range(len(tokens)):
            tok = tokens[k]
            target = np.where(rng.random(GRID.shape) < 0.1, rng.integers(1, 6, GRID.shape), 0).astype(np.uint8)
            target[:, :, 0] = 4
            arrays = {"target_1_1": target, "mask_camera": rng.random(GRID.shape) < 0.6,
                      "mask_lidar": rng.random(GRID.shape) < 0.5, "ego_to_world": _pose(3.0 * k, 0.1 * k),
                      "lidar_to_ego": LIDAR_TO_EGO}
            save_npz(frame_path(root, scene, tok), **arrays)
            data[f"{scene}/{tok}"] = arrays
            frames.append({"sequence": scene, "id": tok, "split": "val" if scene == "scene-0002" else "train",
                           "labeled": True, "files": {},
                           "extra": {"prev": tokens[k - 1] if k else "",
                                     "next": tokens[k + 1] if k + 1 < len(tokens) else ""}})
    write_json(root / "manifest.json", {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": ".",
                                        "spec": spec.to_json(), "frames": frames})
    return data


def noisy(target: np.ndarray, rng) -> np.ndarray:
    return np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 6, target.shape)).astype(np.uint8)


@pytest.fixture(scope="module")
def occ3d_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("occ3d") / "prepared"
    data = build(root, tiny_spec())
    rng = np.random.default_rng(1)
    preds = {name: noisy(a["target_1_1"], rng) for name, a in data.items()}
    pred_dir = root.parent / "pred"
    spec = tiny_spec()
    for name, p in preds.items():
        scene, tok = name.split("/")
        write_prediction(pred_dir, scene, tok, p, spec)
    return root, pred_dir, data, preds


def _reference(data, preds, use_mask: bool):
    spec = tiny_spec()
    m = Occ3DMetric.for_spec(spec)
    ray = RayIoUMetric.for_spec(spec)
    tokens = TOKENS["scene-0002"]
    poses = [data[f"scene-0002/{t}"]["ego_to_world"] for t in tokens]
    for i, tok in enumerate(tokens):
        a = data[f"scene-0002/{tok}"]
        m.process(preds[f"scene-0002/{tok}"], a["target_1_1"], a["mask_camera"] if use_mask else None)
        origins = scene_lidar_origins(poses, [LIDAR_TO_EGO] * 3, i, GRID)
        ray.process(preds[f"scene-0002/{tok}"], a["target_1_1"], origins)
    return m.evaluate(), ray.evaluate()


@pytest.mark.parametrize("mask", [True, False])
def test_occ3d_eval_with_and_without_camera_mask(occ3d_folder, tmp_path, mask):
    root, pred_dir, data, preds = occ3d_folder
    out = tmp_path / "scores.json"
    args = ["eval", "--data", str(root), "--pred", str(pred_dir), "--json", str(out)]
    result = runner.invoke(app, args + ([] if mask else ["--no-camera-mask"]))
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    ref, ref_ray = _reference(data, preds, mask)
    assert res["camera_mask"] is mask and res["metric"] == "occ3d" and res["frames"] == 3
    assert ("camera mask" if mask else "all voxels") in result.output
    assert res["miou"] == pytest.approx(ref["miou"]) and res["iou"] == pytest.approx(ref["iou"])
    assert res["per_class"] == pytest.approx(ref["per_class"])
    assert list(res["per_class"]) == ["a", "b", "c", "d", "e"]  # names from the spec
    for k in ("rayiou", "rayiou_1m", "rayiou_2m", "rayiou_4m"):
        assert res[k] == pytest.approx(ref_ray[k]) and 0 < res[k] < 100
    assert res["rays"] == ref_ray["rays"] > 0
    assert "RayIoU" in result.output


def test_occ3d_eval_no_rayiou_and_perfect_prediction(occ3d_folder, tmp_path):
    root, _, data, _ = occ3d_folder
    pred_dir = tmp_path / "perfect"
    for name, a in data.items():
        scene, tok = name.split("/")
        write_prediction(pred_dir, scene, tok, a["target_1_1"], tiny_spec())
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["eval", "--data", str(root), "--pred", str(pred_dir), "--json", str(out)])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["miou"] == pytest.approx(100.0) and res["rayiou"] == pytest.approx(100.0)
    result = runner.invoke(app, ["eval", "--data", str(root), "--pred", str(pred_dir), "--json", str(out),
                                 "--no-rayiou", "--split", "train"])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert "rayiou" not in res and res["frames"] == 2 and res["split"] == "train"


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_predictions_are_one_line_naming_the_file(occ3d_folder, tmp_path):
    root, pred_dir, data, preds = occ3d_folder
    bad = tmp_path / "bad"
    for name, p in preds.items():
        scene, tok = name.split("/")
        write_prediction(bad, scene, tok, p, tiny_spec())
    target = bad / "scene-0002" / "v1" / "labels.npz"
    base = ["eval", "--data", str(root), "--pred", str(bad), "--no-rayiou"]

    save_npz(target, pred=np.zeros(GRID.shape, np.uint8))
    line = one_error_line(runner.invoke(app, base))
    assert str(target) in line and "semantics" in line
    save_npz(target, semantics=np.zeros((4, 4, 4), np.uint8))
    line = one_error_line(runner.invoke(app, base))
    assert str(target) in line and "shape" in line
    save_npz(target, semantics=np.full(GRID.shape, 9, np.uint8))
    line = one_error_line(runner.invoke(app, base))
    assert str(target) in line and "id 9" in line
    target.unlink()
    line = one_error_line(runner.invoke(app, base))
    assert str(target) in line and "--allow-missing" in line
    assert runner.invoke(app, base + ["--allow-missing"]).exit_code == 0
    line = one_error_line(runner.invoke(app, base + ["--fov-only"]))
    assert "camera mask" in line


def test_no_camera_mask_is_refused_on_openoccupancy_data(tmp_path):
    root = tmp_path / "prep"
    data = build(root, tiny_spec("openoccupancy"))
    pred = tmp_path / "pred"
    for name, a in data.items():
        scene, tok = name.split("/")
        write_prediction(pred, scene, tok, a["target_1_1"], tiny_spec("openoccupancy"))
    line = one_error_line(runner.invoke(app, ["eval", "--data", str(root), "--pred", str(pred), "--no-camera-mask"]))
    assert "--no-camera-mask" in line
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["eval", "--data", str(root), "--pred", str(pred), "--json", str(out)])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["metric"] == "openoccupancy" and res["miou"] == pytest.approx(100) and "rayiou" not in res
    assert res["camera_mask"] is False


def test_run_evaluators_give_the_pred_folder_numbers(occ3d_folder):
    """What `occ eval --run` uses (benchmark_evaluators + validate) scores like `occ eval --pred`."""
    import torch

    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.evaluate import benchmark_evaluators, validate
    from occ_core.metrics.evaluate import evaluate_predictions

    root, pred_dir, data, preds = occ3d_folder
    ds = PreparedDataset(root)
    names = [f.name for f in ds.frames(split="val")]
    dataset = [{"target": torch.from_numpy(data[n]["target_1_1"].astype(np.int64)), "frame": n} for n in names]

    def infer(model, batch):
        return {"pred": torch.from_numpy(preds[batch["frame"][0]].astype(np.int64))[None]}

    scores = validate(torch.nn.Linear(1, 1), dataset, benchmark_evaluators(ds), infer=infer)
    ref = evaluate_predictions(root, pred_dir, progress=False)
    for k in ("miou", "iou", "per_class", "rayiou", "rayiou_1m", "rayiou_2m", "rayiou_4m", "rays", "frames"):
        assert scores[k] == pytest.approx(ref[k]), k

"""evaluate_predictions end to end on a tiny prepared SemanticKITTI dataset built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from occ_core.data.formats import semantickitti as sk
from occ_core.errors import FormatError, MissingError, OccError
from occ_core.data.formats.submission import load_prediction
from occ_core.metrics.evaluate import evaluate_arrays, evaluate_predictions, write_results
from occ_core.metrics.ssc import KITTI_DISTANCE_BANDS, SSCMetric

FRAMES = ["000000", "000001", "000002"]


def write_raw_kitti(root: Path, rng: np.random.Generator) -> Path:
    """Raw sequence 08 (val) with three labeled voxel frames (no images or scans needed)."""
    K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
    P = {f"P{i}": np.hstack([K, [[tx], [0.0], [0.0]]]) for i, tx in enumerate((0.0, -386.1, 45.4, -337.3))}
    Tr = np.array([[0.0, -1.0, 0.0, -0.012], [0.0, 0.0, -1.0, -0.054], [1.0, 0.0, 0.0, -0.292]])
    raw_ids = np.array(sorted(sk.LEARNING_MAP))  # includes ids that are no benchmark class (-> 255)
    d = root / "dataset" / "sequences" / "08"
    sk.write_calib(d / "calib.txt", {**P, "Tr": Tr})
    sk.write_poses(d / "poses.txt", np.tile(np.eye(4), (len(FRAMES), 1, 1)))
    (d / "times.txt").write_text("".join(f"{0.1 * i:.6e}\n" for i in range(len(FRAMES))))
    for fid in FRAMES:
        sk.write_voxel_bits(d / "voxels" / f"{fid}.bin", rng.random(sk.GRID_SHAPE) < 0.05)
        labels = np.where(rng.random(sk.GRID_SHAPE) < 0.3, rng.choice(raw_ids, sk.GRID_SHAPE), 0)
        sk.write_voxel_label(d / "voxels" / f"{fid}.label", labels.astype(np.uint16))
        sk.write_voxel_bits(d / "voxels" / f"{fid}.invalid", rng.random(sk.GRID_SHAPE) < 0.1)
    return root


def build_prepared(tmp_path_factory) -> Path:
    """The prepared dataset, built once per test session (prepare takes a few seconds) and shared
    with tests/cli/test_eval_cli.py; the content is deterministic."""
    from occ_core.data.prepare.pipeline import prepare_kitti

    base = tmp_path_factory.getbasetemp() / "occ-eval-prepared"
    out = base / "prep"
    if not (out / "manifest.json").is_file():
        raw = write_raw_kitti(base / "raw", np.random.default_rng(0))
        prepare_kitti(raw, out, progress=False)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return build_prepared(tmp_path_factory)


def targets(prepared: Path) -> dict[str, np.ndarray]:
    d = prepared / "sequences" / "08" / "frames"
    return {fid: np.load(d / f"{fid}.npz")["target_1_1"] for fid in FRAMES}


def noisy(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pred = np.where(target == 255, 0, target).astype(np.uint8)
    flip = rng.random(pred.shape) < 0.3
    pred[flip] = rng.integers(0, 20, int(flip.sum()))
    return pred


def write_preds(folder: Path, preds: dict[str, np.ndarray], fmt: str = "label", seq: str = "08") -> Path:
    d = folder / "sequences" / seq / "predictions"
    d.mkdir(parents=True, exist_ok=True)
    for fid, pred in preds.items():
        if fmt == "label":
            sk.write_voxel_label(d / f"{fid}.label", sk.inverse_remap(pred))
        else:
            np.save(d / f"{fid}.npy", pred)
    return folder


def reference(pairs, mask=None) -> dict:
    """Per-class masks over all frames (independent of SSCMetric's confusion matrix)."""
    tp = np.zeros(20)
    fp = np.zeros(20)
    fn = np.zeros(20)
    ctp = cfp = cfn = 0
    for pred, target in pairs:
        valid = target != 255
        if mask is not None:
            valid &= mask
        p, t = pred[valid], target[valid]
        for c in range(20):
            tp[c] += np.sum((p == c) & (t == c))
            fp[c] += np.sum((p == c) & (t != c))
            fn[c] += np.sum((p != c) & (t == c))
        ctp += np.sum((p > 0) & (t > 0))
        cfp += np.sum((p > 0) & (t == 0))
        cfn += np.sum((p == 0) & (t > 0))
    iou = np.where(tp + fp + fn > 0, 100 * tp / np.maximum(tp + fp + fn, 1), 0.0)

    def pct(a, b):
        return 100 * a / b if b else 0.0

    return {"iou": pct(ctp, ctp + cfp + cfn), "precision": pct(ctp, ctp + cfp), "recall": pct(ctp, ctp + cfn),
            "miou": iou[1:].mean(), "per_class": iou[1:]}


def check(got: dict, ref: dict) -> None:
    for k in ("iou", "precision", "recall", "miou"):
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k
    assert list(got["per_class"].values()) == pytest.approx(list(ref["per_class"]), abs=1e-9)


@pytest.mark.parametrize("fmt", ["label", "npy"])
def test_scores_match_reference(prepared: Path, tmp_path: Path, fmt: str):
    rng = np.random.default_rng(1)
    tgt = targets(prepared)
    preds = {fid: noisy(t, rng) for fid, t in tgt.items()}
    pred_dir = write_preds(tmp_path / "pred", preds, fmt)
    res = evaluate_predictions(prepared, pred_dir, progress=False)
    check(res, reference([(preds[f], tgt[f]) for f in FRAMES]))
    assert res["frames"] == 3 and res["split"] == "val" and res["missing"] == [] and res["fov_only"] is False
    assert list(res["per_class"]) == list(sk.CLASS_NAMES[1:])
    assert list(res["per_distance"]) == ["0-17.1m", "17.1-34.2m", "34.2-51.2m"]
    for label, (a, b) in KITTI_DISTANCE_BANDS.items():
        check(res["per_distance"][label], reference([(preds[f][a:b], tgt[f][a:b]) for f in FRAMES]))


def test_perfect_prediction_scores_100(prepared: Path, tmp_path: Path):
    tgt = targets(prepared)
    preds = {fid: np.where(t == 255, 0, t).astype(np.uint8) for fid, t in tgt.items()}
    res = evaluate_predictions(prepared, write_preds(tmp_path / "pred", preds), progress=False)
    assert res["iou"] == 100.0 and res["miou"] == 100.0
    assert res["precision"] == 100.0 and res["recall"] == 100.0


def test_fov_only(prepared: Path, tmp_path: Path):
    from occ_core.data.prepare.layout import PreparedDataset

    rng = np.random.default_rng(2)
    tgt = targets(prepared)
    preds = {fid: noisy(t, rng) for fid, t in tgt.items()}
    res = evaluate_predictions(prepared, write_preds(tmp_path / "pred", preds, "npy"), fov_only=True, progress=False)
    fov = PreparedDataset(prepared).geometry("08")["fov_mask_1"].reshape(sk.GRID_SHAPE)
    assert 0 < fov.mean() < 1
    assert res["fov_only"] is True
    check(res, reference([(preds[f], tgt[f]) for f in FRAMES], mask=fov))


def test_missing_prediction_is_an_error_naming_the_file(prepared: Path, tmp_path: Path):
    tgt = targets(prepared)
    preds = {fid: np.zeros(sk.GRID_SHAPE, np.uint8) for fid in FRAMES[:2]}
    pred_dir = write_preds(tmp_path / "pred", preds)
    with pytest.raises(MissingError, match=r"sequences/08/predictions/000002\.label: no prediction for frame 08/000002"):
        evaluate_predictions(prepared, pred_dir, progress=False)
    res = evaluate_predictions(prepared, pred_dir, allow_missing=True, progress=False)
    assert res["missing"] == ["08/000002"] and res["frames"] == 3
    # a missing frame counts as all-empty
    check(res, reference([(np.zeros(sk.GRID_SHAPE, np.uint8), tgt[f]) for f in FRAMES]))


def test_wrong_size_and_bad_values_name_the_file(prepared: Path, tmp_path: Path):
    d = tmp_path / "pred" / "sequences" / "08" / "predictions"
    d.mkdir(parents=True)
    (d / "000000.label").write_bytes(b"\0" * 1000)
    with pytest.raises(FormatError, match=r"000000\.label: wrong file size"):
        evaluate_predictions(prepared, tmp_path / "pred", allow_missing=True, progress=False)

    (d / "000000.label").unlink()
    np.save(d / "000000.npy", np.zeros((256, 256, 16), np.uint8))
    with pytest.raises(FormatError, match=r"000000\.npy: prediction shape \(256, 256, 16\)"):
        evaluate_predictions(prepared, tmp_path / "pred", allow_missing=True, progress=False)
    np.save(d / "000000.npy", np.full(sk.GRID_SHAPE, 20, np.int64))
    with pytest.raises(FormatError, match=r"000000\.npy: class index 20 outside 0\.\.19"):
        evaluate_predictions(prepared, tmp_path / "pred", allow_missing=True, progress=False)

    raw = np.zeros(sk.GRID_SHAPE, np.uint16)
    raw[0, 0, 0] = 52  # other-structure: not a benchmark class
    sk.write_voxel_label(d / "000001.label", raw)
    with pytest.raises(FormatError, match=r"000001\.label: raw label id 52 \('other-structure'\) is not a benchmark class"):
        load_prediction(d / "000001.label")


def test_split_without_labels_and_bad_folders(prepared: Path, tmp_path: Path):
    (tmp_path / "pred" / "sequences").mkdir(parents=True)
    with pytest.raises(OccError, match="split 'test' has no labeled frames"):
        evaluate_predictions(prepared, tmp_path / "pred", split="test", progress=False)
    with pytest.raises(MissingError, match="unknown split 'nope'"):
        evaluate_predictions(prepared, tmp_path / "pred", split="nope", progress=False)
    with pytest.raises(MissingError, match="prediction folder not found"):
        evaluate_predictions(prepared, tmp_path / "absent", progress=False)
    with pytest.raises(MissingError, match="no 'sequences' folder"):
        evaluate_predictions(prepared, tmp_path, progress=False)


def test_evaluate_arrays_and_json(prepared: Path, tmp_path: Path):
    rng = np.random.default_rng(3)
    tgt = targets(prepared)
    preds = {fid: noisy(t, rng) for fid, t in tgt.items()}
    in_memory = evaluate_arrays(((preds[f], tgt[f]) for f in FRAMES))
    res = evaluate_predictions(prepared, write_preds(tmp_path / "pred", preds), progress=False)
    assert {k: in_memory[k] for k in ("iou", "miou", "per_class", "per_distance")} == \
           {k: res[k] for k in ("iou", "miou", "per_class", "per_distance")}
    write_results(tmp_path / "out" / "r.json", res)
    loaded = json.loads((tmp_path / "out" / "r.json").read_text())
    assert loaded["miou"] == pytest.approx(res["miou"])
    m = SSCMetric()
    m.process(preds["000000"], tgt["000000"])
    assert evaluate_arrays([(preds["000000"], tgt["000000"])], distance_bands=None)["iou"] == m.evaluate()["iou"]


def test_corrupt_prepared_target_names_the_frame(prepared: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "prep"
    shutil.copytree(prepared, copy)
    frame = copy / "sequences" / "08" / "frames" / "000001.npz"
    with np.load(frame) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["target_1_1"][0, 0, 0] = 77
    np.savez_compressed(frame, **arrays)
    preds = {fid: np.zeros(sk.GRID_SHAPE, np.uint8) for fid in FRAMES}
    with pytest.raises(FormatError, match=r"000001\.npz: prepared target: target contains value 77"):
        evaluate_predictions(copy, write_preds(tmp_path / "pred", preds, "npy"), progress=False)

"""Evaluators (occ_core.engine.evaluate): summed states merge exactly; one inference loop feeds them all."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occ_core.engine.evaluate import BinaryIoUEvaluator, SSCEvaluator, merge_states, validate
from occ_core.metrics.ssc import SSCMetric

SHAPE = (12, 6, 4)
BANDS = {"near": (0, 4), "mid": (4, 8), "far": (8, 12)}


def _frames(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        target = rng.integers(0, 5, SHAPE)
        target[rng.random(SHAPE) < 0.1] = 255
        binary = np.where(target == 255, 255, target > 0)
        out.append({"target": torch.from_numpy(target), "binary": torch.from_numpy(binary.astype(np.int64)),
                    "pred": torch.from_numpy(rng.integers(0, 5, SHAPE)),
                    "occ_logits": torch.from_numpy(rng.normal(size=(1, *SHAPE)).astype(np.float32)),
                    "frame": f"08/{i:06d}"})
    return out


def _evaluators():
    mask = np.random.default_rng(9).random(SHAPE) < 0.8
    return [SSCEvaluator(SSCMetric(n_classes=5, distance_bands=BANDS), mask=lambda frame: mask),
            BinaryIoUEvaluator(threshold=0.5)]


def _feed(evaluator, frames):
    evaluator.reset()
    for f in frames:
        batch = {"target": f["target"][None], "binary": f["binary"][None], "frame": [f["frame"]]}
        evaluator.process(batch, {"pred": f["pred"][None], "occ_logits": f["occ_logits"][None]})


@pytest.mark.parametrize("which", [0, 1], ids=["ssc", "binary"])
def test_two_halves_merged_by_summing_equal_one_pass(which):
    frames = _frames(6)
    one, a, b = (_evaluators()[which] for _ in range(3))
    _feed(one, frames)
    _feed(a, frames[:2])
    _feed(b, frames[2:])
    merged = _evaluators()[which]
    merged.load_state(merge_states([a.state(), b.state()]))
    assert merged.evaluate() == one.evaluate()
    assert all(v.dtype == np.int64 for v in one.state().values())  # plain counters


def test_ssc_evaluator_numbers_are_ssc_metric_numbers():
    frames = _frames(3)
    mask = np.random.default_rng(9).random(SHAPE) < 0.8
    ev = _evaluators()[0]
    _feed(ev, frames)
    m = SSCMetric(n_classes=5, distance_bands=BANDS)
    for f in frames:
        m.process(f["pred"].numpy().astype(np.uint8), f["target"].numpy(), mask)
    assert ev.evaluate() == m.evaluate()


def test_binary_iou_counts():
    ev = BinaryIoUEvaluator()
    z = torch.tensor([[[5.0, 5.0, -5.0, -5.0, 5.0]]])  # occupied, occupied, empty, empty, occupied
    b = torch.tensor([[1, 0, 1, 0, 255]])  # tp, fp, fn, tn, ignored
    ev.process({"binary": b}, {"occ_logits": z})
    r = ev.evaluate()
    assert r["iou"] == pytest.approx(100 / 3) and r["precision"] == 50.0 and r["recall"] == 50.0 and r["frames"] == 1


class _Model(torch.nn.Module):
    def __init__(self, frames):
        super().__init__()
        self.by_frame = {f["frame"]: f for f in frames}
        self.calls = 0


def test_validate_runs_inference_once_per_frame_for_all_evaluators():
    frames = _frames(4)
    dataset = [{k: f[k] for k in ("target", "binary", "frame")} for f in frames]
    model = _Model(frames)

    def infer(m, batch):
        m.calls += 1
        f = m.by_frame[batch["frame"][0]]
        return {"pred": f["pred"][None], "occ_logits": f["occ_logits"][None]}

    ssc, binary = _evaluators()
    binary.prefix = "binary_"
    scores = validate(model, dataset, [ssc, binary], infer=infer)
    assert model.calls == 4  # one inference per frame, both evaluators fed from it
    ref_ssc, ref_bin = _evaluators()
    _feed(ref_ssc, frames)
    _feed(ref_bin, frames)
    assert {k: v for k, v in scores.items() if not k.startswith("binary_")} == ref_ssc.evaluate()
    assert {k[7:]: v for k, v in scores.items() if k.startswith("binary_")} == ref_bin.evaluate()
    assert scores["frames"] == 4

    with pytest.raises(ValueError, match="same keys"):  # both report iou/precision/recall without a prefix
        validate(model, dataset, _evaluators(), infer=infer)

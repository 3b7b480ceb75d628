"""Exported networks (ONNX on onnxruntime, TorchScript) are the model's own forward: they agree with
PyTorch for every registered method, on the traced frame and on another one; unsupported ops give one line."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from occ_core.engine.checkpoint import save_checkpoint
from occ_core.engine.config import build_config, save_config
from occ_core.engine.trainer import LAST, build_model
from occ_core.registry import available_methods

SMALL = ["data.image_scale=0.15", "model.lifting.stride=8", "model.lifting.embed_dims=16",
         "model.lifting.num_heads=2"]
"""Tiny preset made smaller: 183 x 56 images, a 32 x 32 x 4 query grid, 16 channels."""

_HOOKED = ("the method's export inputs go through its own hook (the LiDAR points as a padded tensor plus a count, "
           "CIGOcc without the depth input it predicts), which this test's generic reference_forward does not model; "
           "export_model's ONNX parity for it is checked in tests/test_every_method.py")
OPT_OUT: dict[str, str] = {"lidar": _HOOKED, "tacocc": _HOOKED, "cigocc": _HOOKED}
"""Registered methods the export parity test skips, with the reason (none: every method exports)."""

ARGMAX_MIN = 0.999
LOGIT_TOL = 1e-3
LABELS_MIN = 0.999
"""onnxruntime's float32 kernels differ from torch's by ~1e-6 in the logits, so a voxel whose two best
classes (or, for B2S, whose occupancy probability and the threshold) are that close may flip: the
exported labels equal ``model.predict`` on >= 99.9 % of the voxels (measured: all but 0-5 of
2,097,152). The TorchScript trace runs torch's own kernels and must agree exactly."""


def make_run(method: str, data: Path, run: Path, seed: int = 0, overrides: tuple[str, ...] = ()) -> Path:
    """A run folder holding a freshly initialised (then perturbed, so that no attention weight is
    exactly zero) small ``method`` model on the prepared data ``data``."""
    from occ_core.data.prepare.layout import PreparedDataset

    torch.manual_seed(seed)
    cfg = build_config(method, "tiny", overrides=[f"data.root={data}", *SMALL, *overrides])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone
        model = build_model(cfg, PreparedDataset(data).spec)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    run.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(Path(data).resolve(), run.resolve())
    save_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=rel)), run / "config.yaml")
    save_checkpoint(run / LAST, model)
    return run


def _check_logits(summary: dict, what: str) -> None:
    assert summary["argmax_agreement"] >= ARGMAX_MIN, (what, summary)
    assert summary["max_abs_diff"] <= LOGIT_TOL, (what, summary)


def _methods() -> list:
    return [pytest.param(m, marks=pytest.mark.skip(reason=OPT_OUT[m])) if m in OPT_OUT else m
            for m in sorted(available_methods())]


def test_every_builtin_method_is_checked():
    """The parity test walks the registry; an opt-out needs a written reason."""
    assert {"baseline", "vpocc", "b2s"} <= set(available_methods())
    assert all(reason.strip() for reason in OPT_OUT.values())


@pytest.mark.parametrize("method", _methods())
def test_export_parity(method: str, synthetic_prepared: Path, tmp_path: Path):
    """The model's own forward exported for every registered method, checked on the traced frame and
    on a second frame (no data-dependent shape is baked into the trace):

    * logits: one trace written as ONNX (run on onnxruntime) and TorchScript agrees with
      ``model(batch)["logits"]`` (argmax >= 99.9 %, max |diff| <= 1e-3; TorchScript: the same argmax);
    * labels: ``export_model(..., outputs="labels")`` (ONNX) agrees with ``model.predict`` (B2S: its
      threshold decision), and its metadata documents the inputs and the output from the spec."""
    import onnx
    import onnxruntime  # noqa: F401  (a dependency: a missing one fails, it does not skip)

    from occ_core.engine.trainer import load_model
    from occ_core.export.model import (ExportedModel, build_export_module, compare_outputs, describe, example_batch,
                                       export_model, export_onnx, export_torchscript, read_metadata, reference_forward)

    run = make_run(method, synthetic_prepared, tmp_path / method)
    model, cfg = load_model(run, "last")
    spec = model.spec
    first, second = example_batch(run, cfg), example_batch(run, cfg, index=1)
    assert first["frame"] != second["frame"] and not torch.equal(first["depth"], second["depth"])
    frames = {"traced frame": first, "second frame": second}

    # logits: one trace, two formats
    reference, names = reference_forward(model, first)
    assert names == ["images", "depth", "intrinsics", "grid_to_cam", "crop_to_image"] + (["vp"] if method == "vpocc" else [])
    _, traced, names = build_export_module(model, first, "logits", names)
    assert "aten::linalg" not in str(traced.inlined_graph)  # closed forms only (occ_core.geometry.linalg)
    inputs = [first[k] for k in names]
    meta = {"method": method, "inputs": [{"name": n, "shape": list(first[n].shape), "dtype": "x", "meaning": "m"}
                                         for n in names]}
    onnx_path = export_onnx(traced, inputs, tmp_path / "model.onnx", names, ["logits"], meta)
    ts_path = export_torchscript(traced, tmp_path / "model.pt", {**meta, "input_names": names})
    del traced
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes left nothing behind
    onnx_model = onnx.load(str(onnx_path))
    assert max(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in onnx_model.graph.input] == names
    del onnx_model
    assert read_metadata(onnx_path)["method"] == read_metadata(ts_path)["method"] == method
    refs = {"traced frame": reference, "second frame": reference_forward(model, second)[0]}
    assert reference.shape == (1, spec.n_classes, *spec.grid.shape)
    for path in (onnx_path, ts_path):
        runner = ExportedModel(path)
        assert runner.input_names == names
        for what, batch in frames.items():
            summary = compare_outputs(refs[what], runner(*[batch[k] for k in names]), "logits")
            _check_logits(summary, f"{method} {path.suffix} {what}")
            if path.suffix == ".pt":
                assert summary["argmax_agreement"] == 1.0, (what, summary)

    # labels: model.predict, through export_model (the command's path)
    labels_path = tmp_path / "labels.onnx"
    summary = export_model(run, "onnx", labels_path, checkpoint="last", outputs="labels")
    assert summary["label_agreement"] >= LABELS_MIN, summary
    predicted = reference_forward(model, second, "labels")[0]
    got = ExportedModel(labels_path)(*[second[k] for k in names])
    assert got.dtype == np.uint8 and got.shape == (1, *spec.grid.shape)
    assert compare_outputs(predicted, got, "labels")["label_agreement"] >= LABELS_MIN
    if method == "b2s":  # defect 2: the export used to take the argmax; B2S's predict thresholds p_occ
        assert not torch.equal(refs["second frame"].argmax(1), predicted)

    m = read_metadata(labels_path)
    assert m["input_names"] == names and [i["name"] for i in m["inputs"]] == names
    shapes = {i["name"]: (i["shape"], i["dtype"]) for i in m["inputs"]}
    V, (H, W) = len(spec.cameras), first["images"].shape[-2:]
    assert shapes["images"] == ([1, V, 3, H, W], "float32") and shapes["depth"] == ([1, V, 1, H, W], "float32")
    assert shapes["intrinsics"] == ([1, V, 3, 3], "float64") and shapes["grid_to_cam"] == ([1, V, 4, 4], "float64")
    assert all(i["meaning"] for i in m["inputs"])
    assert m["output"] == {**m["output"], "name": "labels", "shape": [1, *spec.grid.shape], "dtype": "uint8"}
    assert m["grid"] == list(spec.grid.shape) and m["class_names"] == list(spec.classes.names)
    assert m["n_classes"] == spec.n_classes and spec.classes.names[1] in m["output"]["meaning"]
    assert m["method"] == method and m["opset"] == 17 and m["outputs"] == "labels"
    assert "out labels" in describe(m) and "in  grid_to_cam" in describe(m)


def test_export_module_labels_is_predict():
    """``ExportModule(outputs="labels")`` returns ``model.predict`` as uint8, not the argmax."""
    from occ_core.export.model import ExportModule

    class Thresholds(torch.nn.Module):
        def forward(self, batch):
            return {"logits": batch["x"]}

        def predict(self, batch):
            return (batch["x"][:, 1] > 5).long() * 2

    x = torch.zeros(1, 3, 2, 2, 2)
    x[:, 1] = 1.0  # argmax 1 everywhere, predict 0
    x[0, 1, 0, 0, 0] = 9.0  # predict 2 here
    labels = ExportModule(Thresholds(), ["x"], "labels")(x)
    assert labels.dtype == torch.uint8 and int(labels.sum()) == 2 and labels[0, 0, 0, 0] == 2
    assert torch.equal(ExportModule(Thresholds(), ["x"], "logits")(x), x)


def test_patched_copies_are_gone():
    """The export runs the model's own forward: no patched lifting, proposal or homography copies."""
    import occ_core.export.model as em

    for name in ("dense_depth_proposal", "_dense_lifting_forward", "make_exportable", "export_patches",
                 "_solve_homography_export", "_zoom_sampling_grid_export", "inverse3x3", "homography4"):
        assert not hasattr(em, name), name


def test_closed_forms_match_linalg():
    """The closed forms the models use (occ_core.geometry.linalg) equal torch.linalg's results."""
    from occ_core.geometry.homography import solve_homography
    from occ_core.geometry.linalg import homography4, inverse3x3, inverse_rigid4x4

    K = torch.tensor([[70.0, 0, 60], [0, 70.0, 20], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    Tr = torch.tensor([[0.0, -1, 0, -0.01], [0, 0, -1, -0.05], [1, 0, 0, -0.3], [0, 0, 0, 1]],
                      dtype=torch.float64).expand(2, 4, 4)
    assert torch.allclose(inverse3x3(K), torch.linalg.inv(K), atol=1e-12)
    assert torch.allclose(inverse_rigid4x4(Tr), torch.linalg.inv(Tr), atol=1e-12)
    src = torch.tensor([[[0.0, 0], [10, 1], [11, 9], [-1, 8]]], dtype=torch.float64)
    dst = torch.tensor([[[0.0, 0], [12, 0], [12, 10], [0, 10]]], dtype=torch.float64)
    assert torch.allclose(homography4(src, dst), solve_homography(src, dst), atol=1e-10)


def test_unsupported_op_is_one_clear_error(tmp_path: Path):
    from occ_core.errors import OccError
    from occ_core.export.model import ExportError, export_onnx

    class Inverts(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x)

    with pytest.raises(ExportError, match=r"operator 'aten::linalg_inv' is not supported") as info:
        export_onnx(Inverts(), (torch.eye(3)[None],), tmp_path / "bad.onnx", ["x"], ["y"])
    assert isinstance(info.value, OccError) and "\n" not in str(info.value)
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.iterdir())


def test_unsupported_op_name_from_dynamo_style_messages():
    from occ_core.export.model import unsupported_op

    assert unsupported_op(RuntimeError("Unsupported FX nodes: {'call_function': ['aten.linalg_inv.default']}")) == "aten.linalg_inv.default"
    assert unsupported_op(RuntimeError("something else")) is None

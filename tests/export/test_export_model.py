"""Exported networks (ONNX on onnxruntime, TorchScript) agree with PyTorch; unsupported ops give one line."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import pytest
import torch

from occ_core.engine.checkpoint import save_checkpoint
from occ_core.engine.config import build_config, save_config
from occ_core.engine.trainer import LAST, build_model

SMALL = ["data.image_scale=0.15", "model.lifting.grid=[32, 32, 4]", "model.lifting.embed_dims=16",
         "data.projection_scales=[8]", "model.lifting.num_heads=2"]


def make_run(method: str, data: Path, run: Path, seed: int = 0) -> Path:
    """A run folder holding a freshly initialised (then perturbed, so that no attention weight is
    exactly zero) small ``method`` model on the prepared data ``data``."""
    torch.manual_seed(seed)
    cfg = build_config(method, "tiny", overrides=[f"data.root={data}", *SMALL])
    cfg = dataclasses.replace(cfg, n_classes=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone
        model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    run.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(Path(data).resolve(), run.resolve())
    save_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=rel)), run / "config.yaml")
    save_checkpoint(run / LAST, model)
    return run


@pytest.fixture(scope="module")
def baseline_run(synthetic_prepared: Path, tmp_path_factory) -> Path:
    return make_run("baseline", synthetic_prepared, tmp_path_factory.mktemp("export") / "baseline")


def _check(summary: dict) -> None:
    assert summary["argmax_agreement"] >= 0.999, summary
    assert summary["max_abs_diff"] <= 1e-3, summary


def test_onnx_and_torchscript_match_pytorch_baseline(baseline_run: Path, tmp_path: Path):
    """One trace written as ONNX (run on onnxruntime) and TorchScript; both agree with the PyTorch
    model on the traced frame and on another frame."""
    import onnxruntime  # noqa: F401  (a dependency: a missing one fails, it does not skip)
    import onnx

    from occ_core.data.torch_dataset import OccDataset
    from occ_core.engine.trainer import data_root, load_model
    from occ_core.export.model import (ExportedModel, build_export_module, compare_outputs, example_batch,
                                       export_onnx, export_torchscript, read_metadata, reference_forward)

    model, cfg = load_model(baseline_run, "last")
    batch = example_batch(baseline_run, cfg)
    reference, names = reference_forward(model, batch)
    assert names == ["image", "depth", "K", "Tr", "projected_pix_8", "fov_mask_8"]  # baseline reads no vp
    _, traced, names = build_export_module(model, batch, "logits", names)
    inputs = [batch[k] for k in names]
    meta = {"method": "baseline", "inputs": [{"name": n, "shape": list(batch[n].shape), "dtype": "x", "meaning": "m"}
                                             for n in names]}
    onnx_path = export_onnx(traced, inputs, tmp_path / "model.onnx", names, ["logits"], meta)
    ts_path = export_torchscript(traced, tmp_path / "model.pt", {**meta, "input_names": names})
    assert not list(tmp_path.glob(".*.tmp*"))  # atomic writes left nothing behind
    onnx_model = onnx.load(str(onnx_path))
    assert max(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in onnx_model.graph.input] == names
    assert read_metadata(onnx_path)["method"] == read_metadata(ts_path)["method"] == "baseline"

    other = torch.utils.data.default_collate(
        [OccDataset(data_root(cfg, baseline_run), cfg.data.val_split, cfg.data, labeled_only=False)[1]])
    assert other["frame"] != batch["frame"]
    with torch.no_grad():
        other_ref = model(other)["logits"]
    for path in (onnx_path, ts_path):
        runner = ExportedModel(path)
        assert runner.input_names == names
        _check(compare_outputs(reference, runner(*inputs)))
        _check(compare_outputs(other_ref, runner(*[other[k] for k in names])))


def test_export_model_vpocc_onnx(synthetic_prepared: Path, tmp_path: Path):
    """VPOcc: VPZoomer (homographies), VPCA offsets and the zoom-branch lifting export too; the
    metadata documents the inputs."""
    import onnxruntime  # noqa: F401  (a dependency: a missing one fails, it does not skip)
    from occ_core.export.model import export_model, read_metadata

    run = make_run("vpocc", synthetic_prepared, tmp_path / "vpocc")
    out = tmp_path / "vpocc.onnx"
    summary = export_model(run, "onnx", out, checkpoint="last")
    _check(summary)
    meta = read_metadata(out)
    assert [i["name"] for i in meta["inputs"]] == ["image", "depth", "K", "Tr", "vp", "projected_pix_8", "fov_mask_8"]
    assert meta["inputs"][0]["shape"] == [1, 3, 56, 183] and meta["inputs"][-1]["dtype"] == "bool"
    assert all(i["meaning"] for i in meta["inputs"])
    assert meta["output"]["shape"] == [1, 20, 256, 256, 32] and meta["method"] == "vpocc" and meta["opset"] == 17


def test_dense_proposal_and_closed_forms_match_the_model():
    from occ_core.export.model import dense_depth_proposal, homography4, inverse_rigid4x4
    from occ_core.geometry.homography import solve_homography
    from occ_core.models.lifting import DepthProposal

    g = torch.Generator().manual_seed(0)
    depth = torch.where(torch.rand(2, 1, 40, 120, generator=g) < 0.2, torch.rand(2, 1, 40, 120, generator=g) * 60, torch.zeros(()))
    K = torch.tensor([[70.0, 0, 60], [0, 70.0, 20], [0, 0, 1]]).expand(2, 3, 3)
    Tr = torch.tensor([[0.0, -1, 0, -0.01], [0, 0, -1, -0.05], [1, 0, 0, -0.3], [0, 0, 0, 1]]).expand(2, 4, 4)
    prop = DepthProposal((32, 32, 4), dilate=1)
    assert torch.equal(dense_depth_proposal(prop, depth, K, Tr), prop(depth, K, Tr))
    assert torch.allclose(inverse_rigid4x4(Tr.double()), torch.linalg.inv(Tr.double()), atol=1e-12)
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

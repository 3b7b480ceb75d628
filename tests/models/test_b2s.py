"""B2S: the decomposed model trains, its combined logits are a distribution, auto-labelling keeps the input geometry."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from occ_core.data.prepare.layout import PreparedDataset
from occ_core.data.loading.dataset import OccDataset, collate
from occ_core.engine.config import build_config
from occ_core.engine.trainer import build_model
from occ_core.data.formats import semantickitti as sk
from occ_core.errors import OccError
from occ_core.models.core import query_stride

SMALL = ["data.image_scale=0.15", "model.lifting.grid=[32, 32, 4]", "model.lifting.embed_dims=16",
         "model.lifting.num_heads=2"]


def _model(data: Path, *extra: str):
    torch.manual_seed(0)
    cfg = build_config("b2s", "tiny", overrides=[f"data.root={data}", *SMALL, *extra])
    spec = PreparedDataset(data).spec
    assert spec.n_classes == 20
    cfg = dataclasses.replace(cfg, n_classes=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init backbone warning
        model = build_model(cfg, spec)
    return model, cfg


def _batch(data: Path, cfg, train: bool = True):
    ds = OccDataset(data, "train", cfg.data, train=train)
    return collate([ds[0]])


def test_b2s_trains_two_steps_and_logits_are_a_distribution(synthetic_prepared: Path):
    model, cfg = _model(synthetic_prepared)
    batch = _batch(synthetic_prepared, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        out = model(batch)
        losses = model.losses(out, batch)
        assert set(losses) == {"bce", "bin_geo_scal", "ce", "sem_scal", "empty_above", "empty_unlabelled"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        for part in (model.encoder, model.binary_head, model.sem_head):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
        opt.step()
    probs = out["logits"].exp().sum(dim=1)
    torch.testing.assert_close(probs, torch.ones_like(probs), rtol=0, atol=1e-4)
    p_occ = torch.sigmoid(out["occ_logits"][:, 0])
    torch.testing.assert_close(out["logits"][:, 0].exp(), 1 - p_occ, rtol=0, atol=1e-5)  # p(empty) = 1 - p_occ
    model.eval()
    pred = model.predict(batch)
    assert pred.shape == (1, 256, 256, 32) and pred.dtype == torch.int64
    assert 0 <= int(pred.min()) and int(pred.max()) < 20


@pytest.mark.parametrize("mode", ["online", "autolabel"])
def test_full_grid_supervision_equals_the_losses_on_the_upsampled_volume(synthetic_prepared: Path, mode: str):
    """model.supervise_full_grid: every B2S loss at the labelled 1:1 voxels, on the 1:2 logits interpolated there,
    equals the loss on the trilinearly upsampled 1:2 outputs against the 1:1 target (values and gradients)."""
    import torch.nn.functional as F

    from occ_core.models.methods.b2s import EPS, binary_losses, binary_of_target, combine

    model, cfg = _model(synthetic_prepared, f"model.mode={mode}", "model.empty_above_labelled=0",
                        "model.empty_unlabelled=0", "model.full_grid_points=0")  # exact: every labelled voxel, no extra terms
    assert cfg.model.supervise_full_grid and cfg.model.loss_scale == 2
    model.train()
    torch.manual_seed(3)
    target = torch.randint(0, 20, (1, 12, 10, 6))  # a small fabricated 1:1 target (the losses take any grid)
    target[:, :3] = 255
    target[:, 5:8] = 0
    batch = {"target": target}
    half = tuple(s // 2 for s in target.shape[1:])
    sem = torch.randn(1, 19, *half, dtype=torch.float64, requires_grad=True)
    occ = torch.randn(1, 1, *half, dtype=torch.float64, requires_grad=True)
    outputs = {"sem_logits": sem, "logits": torch.zeros(1, 20, *half, dtype=torch.float64)}
    if mode == "online":
        outputs["occ_logits"] = occ
    got = model.losses(outputs, batch)

    up = lambda x: F.interpolate(x, size=tuple(target.shape[1:]), mode="trilinear", align_corners=False)  # noqa: E731
    sem_f = up(sem)
    if mode == "online":
        z = up(occ)
        logp = combine(F.logsigmoid(z), F.logsigmoid(-z), sem_f)
        want = binary_losses(z, binary_of_target(target), cfg.model.binary_bce, cfg.model.binary_geo_scal)
    else:
        p = torch.where(target == 0, EPS, torch.where(target == 255, 0.5, 1.0 - EPS)).double()[:, None]
        logp = combine(torch.log(p), torch.log1p(-p), sem_f)
        want = {}
    want.update(model._semantic_losses(sem_f, logp, target))
    assert set(got) == set(want) and "ce" in got and "sem_scal" in got
    params = [sem, occ] if mode == "online" else [sem]
    for k in want:
        torch.testing.assert_close(got[k].double(), want[k].double(), rtol=1e-4, atol=1e-7)  # float32 inside
        g1 = torch.autograd.grad(got[k], params, retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(want[k], params, retain_graph=True, allow_unused=True)
        for x, a, b in zip(params, g1, g2):  # None = no path = a zero gradient
            a = torch.zeros_like(x) if a is None else a
            b = torch.zeros_like(x) if b is None else b
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-8)


def test_binary_pretraining_touches_only_the_binary_module(synthetic_prepared: Path):
    model, cfg = _model(synthetic_prepared, "data.binary_targets=true")
    batch = _batch(synthetic_prepared, cfg)
    assert "binary" in batch and "binary_1_2" in batch
    losses = model.binary_losses(model.forward_binary(batch), batch)
    assert set(losses) == {"bce", "bin_geo_scal"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.sem_head.parameters())
    assert any(p.grad is not None for p in model.binary_head.parameters())


def test_freeze_binary(synthetic_prepared: Path):
    model, _ = _model(synthetic_prepared, "model.freeze_binary=true")
    assert not any(p.requires_grad for m in model.binary_modules() for p in m.parameters())
    assert all(p.requires_grad for p in model.sem_decoder.parameters())
    model.train()
    assert not model.binary_decoder.training and model.sem_decoder.training


def test_autolabel_geometry_is_the_input(synthetic_prepared: Path):
    model, cfg = _model(synthetic_prepared, "model.mode=autolabel")
    assert not hasattr(model, "binary_decoder")
    batch = _batch(synthetic_prepared, cfg, train=False)
    model.eval()
    pred, conf = model.predict_with_confidence(batch)
    other = dict(batch, images=torch.randn_like(batch["images"]))  # another image: same geometry
    pred2 = model.predict(other)
    target = batch["target"]
    assert bool((pred[target == 0] == 0).all()) and bool((pred2[target == 0] == 0).all())  # empty where input empty
    occupied = (target > 0) & (target != 255)
    assert bool((pred[occupied] > 0).all()) and bool((pred2[occupied] > 0).all())
    assert torch.equal(pred > 0, pred2 > 0)
    assert bool((conf[target == 255] == 0).all()) and float(conf.max()) <= 1.0
    model.train()
    tb = _batch(synthetic_prepared, cfg)
    out = model(tb)
    probs = out["logits"].exp().sum(dim=1)
    torch.testing.assert_close(probs, torch.ones_like(probs), rtol=0, atol=1e-4)
    losses = model.losses(out, tb)
    assert set(losses) == {"ce", "sem_scal"} and torch.isfinite(sum(losses.values()))


def test_vpocc_lifting_and_bad_settings(synthetic_prepared: Path):
    model, cfg = _model(synthetic_prepared, "model.lifting_kind=vpocc", "model.lifting.num_points=9")
    assert hasattr(model, "zoom_lifting")
    with pytest.raises(OccError, match="num_points=9"):
        _model(synthetic_prepared, "model.lifting_kind=vpocc")
    with pytest.raises(OccError, match="model.mode"):
        _model(synthetic_prepared, "model.mode=bogus")


def test_presets():
    for preset in ("tiny", "paper"):
        cfg = build_config("b2s", preset)
        assert cfg.method == "b2s" and cfg.model.mode == "online"
    paper = build_config("b2s", "paper").model
    # the paper's 128 x 128 x 16 query grid: half the dataset grid
    assert paper.lifting.stride == 2 and paper.lifting.grid == []
    assert query_stride(paper, sk.dataset_spec()) == 2 and sk.dataset_spec().grid_at(2) == (128, 128, 16)


def test_log_sigmoid_matches_torch_and_stays_finite_in_onnxruntime(tmp_path: Path):
    """B2S's occupancy log-probabilities: equal to ``F.logsigmoid`` (values and gradients) and, exported to
    ONNX and run on onnxruntime, finite and equal where ``F.logsigmoid`` exported gives -inf (its
    ``Log(Sigmoid(x))`` flushes from about x = -18 on)."""
    import onnxruntime as ort
    import torch.nn.functional as F

    from occ_core.models.methods.b2s import log_sigmoid

    x = torch.cat([torch.linspace(-100.0, 100.0, 2001), torch.tensor([0.0, -17.0, -18.0, 30.0])])
    xr = x.clone().requires_grad_(True)
    xs = x.clone().requires_grad_(True)
    torch.testing.assert_close(log_sigmoid(xr), F.logsigmoid(xs), rtol=1e-6, atol=1e-6)
    log_sigmoid(xr).sum().backward()
    F.logsigmoid(xs).sum().backward()
    torch.testing.assert_close(xr.grad, xs.grad, rtol=1e-6, atol=1e-6)

    class Ours(torch.nn.Module):
        def forward(self, v):
            return log_sigmoid(v)

    class Torch(torch.nn.Module):
        def forward(self, v):
            return F.logsigmoid(v)

    got = {}
    for name, mod in (("ours", Ours()), ("torch", Torch())):
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(mod, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
        got[name] = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0])
    assert torch.isinf(got["torch"]).any()  # the failure this guards against is real on this onnxruntime
    assert torch.isfinite(got["ours"]).all()
    torch.testing.assert_close(got["ours"], F.logsigmoid(x), rtol=1e-5, atol=1e-5)

"""GaussRender plug-in loss: zero for a perfect prediction, larger for a worse one, gradients,
flips (the sensor view does not change), and every method through ``loss.render.enabled``."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

from occ_core.data.prepare.layout import PreparedDataset
from occ_core.data.loading.dataset import OccDataset, collate, crop_to_image
from occ_core.engine.config import RenderLossConfig, build_config
from occ_core.engine.trainer import build_model
from occ_core.losses.render import _views, gaussrender_losses, render_pair_losses, rescale_K

FAST = RenderLossConfig(enabled=True, image_scale=0.1, bev_resolution=1.6, free_view_size=[48, 27])
SMALL = ["data.image_scale=0.15", "model.lifting.grid=[32, 32, 4]", "model.lifting.embed_dims=16",
         "model.lifting.num_heads=2", "loss.render.enabled=true",
         "loss.render.image_scale=0.1", "loss.render.bev_resolution=1.6"]


def _loader_cfg(root: Path, *extra: str):
    return build_config("baseline", "tiny", overrides=[f"data.root={root}", "data.image_scale=0.15",
                                                       "data.target_scales=[1, 2, 4]", *extra])


@pytest.fixture(scope="module")
def batch(synthetic_prepared: Path):
    data = OccDataset(synthetic_prepared, "train", _loader_cfg(synthetic_prepared).data, train=False)
    return collate([data[0]])


@pytest.fixture(scope="module")
def spec(synthetic_prepared: Path):
    return PreparedDataset(synthetic_prepared).spec


class _Model:
    """What the plug-in needs from a model: the dataset spec and the scale of its logits."""

    def __init__(self, spec, scale: int):
        self.spec, self.scale = spec, scale

    def output_scale(self) -> int:
        return self.scale


def _onehot_probs(target: torch.Tensor, n: int = 20) -> torch.Tensor:
    t = target.clone()
    t[t == 255] = 0
    return torch.nn.functional.one_hot(t, n).permute(0, 4, 1, 2, 3).double()


def test_zero_for_perfect_prediction_and_larger_when_shifted(batch, spec):
    target = batch["target_1_4"]
    crop = spec.cameras[0].image_size
    views = _views(dataclasses.replace(FAST, views=["sensor", "bev", "elevated"]), batch, 0, crop, spec.grid)
    probs = _onehot_probs(target)[0]
    grid = spec.grid.scaled(4)
    assert grid.voxel_size == (0.8, 0.8, 0.8)
    sem, depth = render_pair_losses(probs, target[0], views, FAST, grid)
    assert float(sem) == 0.0 and float(depth) == 0.0  # identical Gaussians, identical renders
    # through softmax: logits 30 * one-hot give p = 1 - 19 e^-30 ~ 1 - 2e-12: near zero, not exactly
    out = gaussrender_losses(_Model(spec, 4), {"logits": 30.0 * probs[None].float()}, batch, FAST)
    assert set(out) == {"render_sem", "render_depth"} and all(float(v) < 1e-5 for v in out.values())
    # a prediction shifted by 1 and by 3 voxels along x: worse and worse
    losses = []
    for shift in (1, 3):
        sp, dp = render_pair_losses(torch.roll(probs, shift, dims=1), target[0], views, FAST, grid)
        losses.append(float(sp) + float(dp))
    assert 0 < losses[0] < losses[1]


def test_gradient_reaches_logits_and_flip_leaves_the_sensor_view_unchanged(batch, spec, synthetic_prepared: Path):
    target = batch["target_1_4"]
    torch.manual_seed(0)
    logits = (torch.randn(1, 20, 64, 64, 8) + 4 * _onehot_probs(target).float()).requires_grad_()
    out = gaussrender_losses(_Model(spec, 4), {"logits": logits}, batch, FAST)
    total = sum(out.values())
    assert torch.isfinite(total) and float(total) > 0
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # flipped sample: its folded intrinsics mirror the network image, but the sensor view is rendered from the
    # crop's intrinsics (crop_to_image^-1 @ intrinsics): the same camera, the same renders, the same loss
    data = OccDataset(synthetic_prepared, "train", _loader_cfg(synthetic_prepared, "data.flip_prob=1.0", "data.color_jitter=0").data, train=True)
    assert data.flipped(0) and data.frames[0].name == batch["frame"][0]
    fbatch = collate([data[0]])
    assert float(fbatch["intrinsics"][0, 0, 0, 0]) < 0 < float(batch["intrinsics"][0, 0, 0, 0])
    torch.testing.assert_close(fbatch["images"], batch["images"].flip(-1))
    crop = spec.cameras[0].image_size
    sensor = dataclasses.replace(FAST, views=["sensor"])
    (_, c0, _), = _views(sensor, batch, 0, crop, spec.grid)
    (_, c1, _), = _views(sensor, fbatch, 0, crop, spec.grid)
    assert (c0.width, c0.height) == (c1.width, c1.height)
    torch.testing.assert_close(c1.viewmats, c0.viewmats, rtol=0, atol=1e-9)
    torch.testing.assert_close(c1.Ks, c0.Ks, rtol=0, atol=1e-6)
    probs = torch.softmax(logits.detach(), 1)[0]
    grid = spec.grid.scaled(4)
    s0, d0, r0 = render_pair_losses(probs, target[0], [("sensor", c0, FAST.camera_depth_norm)], FAST, grid,
                                    return_renders=True)
    s1, d1, r1 = render_pair_losses(probs, target[0], [("sensor", c1, FAST.camera_depth_norm)], FAST, grid,
                                    return_renders=True)
    assert torch.allclose(r0["sensor"][1], r1["sensor"][1]) and float(r0["sensor"][1].abs().sum()) > 0
    assert torch.allclose(s0, s1, atol=1e-6) and torch.allclose(d0, d1, atol=1e-6)
    out_f = gaussrender_losses(_Model(spec, 4), {"logits": logits.detach()}, fbatch, FAST)
    for k in out:
        assert torch.allclose(out_f[k], out[k].detach(), atol=1e-5)


def test_rescale_K_matches_the_loader_convention():
    K = torch.tensor([[700.0, 0, 600.0], [0, 700.0, 180.0], [0, 0, 1]], dtype=torch.float64)
    half = rescale_K(K, 0.5)  # what OccDataset builds for image_scale 0.5
    torch.testing.assert_close(half, torch.from_numpy(crop_to_image(0.5, 610, False)) @ K)
    assert torch.allclose(half, torch.tensor([[350.0, 0, 600 * 0.5 - 0.25], [0, 350.0, 180 * 0.5 - 0.25], [0, 0, 1]],
                                             dtype=torch.float64))
    assert torch.allclose(rescale_K(half, 2.0), K)


@pytest.mark.parametrize("method", ["baseline", "vpocc"])
def test_methods_get_the_render_loss(method: str, synthetic_prepared: Path):
    torch.manual_seed(0)
    cfg = build_config(method, "tiny", overrides=[f"data.root={synthetic_prepared}", *SMALL])
    spec = PreparedDataset(synthetic_prepared).spec
    cfg = dataclasses.replace(cfg, n_classes=spec.n_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, spec)
    data = OccDataset(synthetic_prepared, "train", cfg.data, train=True)
    batch = collate([data[0]])
    out = model(batch)
    out["logits"].retain_grad()
    losses = model.losses(out, batch)
    assert {"render_sem", "render_depth"} <= set(losses)
    assert all(torch.isfinite(losses[k]) and float(losses[k]) > 0 for k in ("render_sem", "render_depth"))
    (losses["render_sem"] + losses["render_depth"]).backward()
    assert out["logits"].grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_unknown_view_is_a_user_error(batch, spec):
    from occ_core.errors import OccError

    with pytest.raises(OccError, match="unknown view"):
        _views(dataclasses.replace(FAST, views=["sideways"]), batch, 0, spec.cameras[0].image_size, spec.grid)

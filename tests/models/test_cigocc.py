"""CIGOcc: the 3D deformable sampling against grid_sample, the extractors, the depth lifting and targets,
the SAM-mask affinity BCE against hand-made masks, gradients into every extractor, the two stages of the
engine (stage 2 initialised from stage 1, resume, `occ train` / `occ eval --run` on the staged run folder)."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from occ_core.errors import OccError

SMALL = ["data.image_scale=0.15", "model.lifting.stride=8", "model.lifting.embed_dims=16", "model.lifting.num_heads=2",
         "model.extractors.depth_bins=8", "optim.batch_size=1", "val_every=0", "device=cpu", "data.flip_prob=0"]


# -- ops ------------------------------------------------------------------------------------------


def test_trilinear_sample_matches_grid_sample_values_and_gradients():
    from occ_core.ops.deform_attn3d import trilinear_sample, trilinear_sample_reference

    g = torch.Generator().manual_seed(0)
    value = torch.randn(2, 3, 5, 6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    loc = (torch.rand(2, 200, 3, 3, dtype=torch.float64, generator=g) * 1.6 - 0.3).requires_grad_()  # some outside
    a, b = trilinear_sample(value, loc), trilinear_sample_reference(value, loc)
    assert torch.allclose(a, b, atol=1e-12)
    w = torch.randn(a.shape, dtype=torch.float64, generator=g)
    ga = torch.autograd.grad((a * w).sum(), [value, loc])
    gb = torch.autograd.grad((b * w).sum(), [value, loc])
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-9)
    # a voxel centre gives the voxel's value exactly
    centre = torch.tensor([[[[(2 + 0.5) / 5, (3 + 0.5) / 6, (1 + 0.5) / 4]]]], dtype=torch.float64)
    assert torch.allclose(trilinear_sample(value[:1], centre)[0, :, 0, 0], value[0, :, 2, 3, 1])


def test_deform_self_attention_chunks_do_not_change_the_result():
    from occ_core.ops.deform_attn3d import DeformSelfAttention3d

    torch.manual_seed(0)
    m = DeformSelfAttention3d(8, num_heads=2, num_points=3, chunk_size=None)
    with torch.no_grad():
        m.attention_weights.weight.normal_()
        m.sampling_offsets.weight.normal_(std=0.3)
    x = torch.randn(2, 4 * 5 * 3, 8)
    full = m(x, (4, 5, 3))
    m.chunk_size = 7
    assert full.shape == (2, 60, 8) and torch.allclose(full, m(x, (4, 5, 3)), atol=1e-6)


def test_deform_self_attention_checkpointed_chunks_give_the_same_values_and_gradients():
    """The recomputed chunks (checkpoint) and the kept ones give identical outputs and gradients."""
    from occ_core.ops.deform_attn3d import DeformSelfAttention3d

    torch.manual_seed(1)
    m = DeformSelfAttention3d(8, num_heads=2, num_points=3, chunk_size=7).double()
    with torch.no_grad():
        m.attention_weights.weight.normal_()
        m.sampling_offsets.weight.normal_(std=0.3)
    x = torch.randn(2, 4 * 5 * 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 60, 8, dtype=torch.float64)
    grads = []
    for ckpt in (False, True):
        m.checkpoint = ckpt
        out = m(x, (4, 5, 3))
        grads.append((out, *torch.autograd.grad((out * w).sum(), [x, *m.parameters()])))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12)
    assert grads[0][1].abs().sum() > 0


# -- extractors, lifting, targets -----------------------------------------------------------------


def test_edge_filters_see_a_vertical_edge():
    from occ_core.models.cig_modules import EdgeFilters

    f = EdgeFilters()
    assert not list(f.parameters())  # fixed
    rgb = torch.zeros(1, 3, 8, 8)
    rgb[..., 4:] = 1.0  # dark left, bright right
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = f((rgb - mean) / std)  # grey, gx, gy, |g|, laplacian
    assert out.shape == (1, 5, 8, 8)
    assert torch.allclose(out[0, 0, :, 0], torch.zeros(8), atol=1e-5) and torch.allclose(out[0, 0, :, 7], torch.ones(8), atol=1e-5)
    assert out[0, 1, :, 3:5].min() > 0.1 and out[0, 1, :, :2].abs().max() < 1e-5  # gx only at the edge
    assert out[0, 2].abs().max() < 1e-5  # no vertical gradient
    assert out[0, 4, :, 3].min() > 0 and out[0, 4, :, 4].max() < 0  # Laplacian changes sign across it


def test_depth_lift_puts_a_pixel_at_its_depth_voxel():
    from occ_core.models.cig_modules import DepthLift

    # grid frame = camera frame; 10 x 10 x 10 voxels of 1 m from (-5, -5, 0)
    lift = DepthLift(4, (10, 10, 10), (1.0, 1.0, 1.0), (-5.0, -5.0, 0.0), [2.5, 6.5])
    K = torch.tensor([[[[10.0, 0, 3.5], [0, 10.0, 3.5], [0, 0, 1]]]], dtype=torch.float64)  # 8 x 8 image, centre 3.5
    T = torch.eye(4, dtype=torch.float64)[None, None]
    idx = lift.voxel_index((1, 1), (8, 8), K, T)  # one map pixel: the image centre ray
    assert idx.shape == (1, 1, 1, 2)
    assert idx[0, 0, 0].tolist() == [5 * 100 + 5 * 10 + 2, 5 * 100 + 5 * 10 + 6]  # x = y = 0 -> voxel 5; z = 2.5, 6.5
    feat = torch.ones(1, 1, 4, 1, 1)
    prob = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1, 1)
    with torch.no_grad():
        lift.proj.weight.zero_()
        lift.proj.weight[:, 4] = 1.0  # read the log(1 + probability) channel
        lift.proj.bias.zero_()
    vol = lift(feat, prob, K, T, (8, 8))
    assert vol.shape == (1, 4, 10, 10, 10)
    assert math.isclose(float(vol[0, 0, 5, 5, 6].detach()), math.log(2.0), rel_tol=1e-6)
    assert float(vol[0, 0].abs().sum().detach()) == pytest.approx(math.log(2.0))


def test_depth_targets_take_the_nearest_point_of_each_cell():
    from occ_core.models.cig_modules import depth_targets

    d = torch.zeros(1, 1, 1, 4, 4)
    d[0, 0, 0, 0, 0] = 9.0
    d[0, 0, 0, 1, 1] = 3.0  # same 2 x 2 cell, nearer
    d[0, 0, 0, 3, 3] = 50.0  # beyond d_max
    t = depth_targets(d, (2, 2), 1.0, 11.0, 5)  # bins of 2 m
    assert t.tolist() == [[[1, -1], [-1, -1]]]


# -- SAM-mask affinity --------------------------------------------------------------------------


def test_mask_affinity_bce_value_on_hand_made_masks():
    from occ_core.models.cig_modules import MaskAffinity

    aff = MaskAffinity()
    masks = torch.tensor([[[1, 1, 2, 0]]])  # one row: two pixels of mask 1, one of mask 2, one unmasked
    embed = torch.tensor([[[[1.0, 1.0, 0.0, 5.0]], [[0.0, 0.0, 1.0, -3.0]]]])  # [1, 2, 1, 4]
    loss = aff(embed, masks, [1])
    # pairs at distance 1: (0,1) same mask, cos 1; (1,2) different masks, cos 0; (2,3) has an unmasked pixel
    # logit = 5 cos - 2.5: same-mask pair BCE softplus(-2.5), different-mask pair BCE softplus(-2.5)
    expected = 0.5 * (F.softplus(torch.tensor(-2.5)) + F.softplus(torch.tensor(-2.5)))
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)


def test_mask_affinity_bce_is_low_for_separating_embeddings_and_label_free():
    from occ_core.models.cig_modules import MaskAffinity, masks_at

    aff = MaskAffinity()
    masks = torch.zeros(1, 16, 16, dtype=torch.long)
    masks[:, :, :8] = 1
    masks[:, :, 8:] = 2
    masks[:, 12:, :] = 0  # unmasked rows
    small = masks_at(masks, (8, 8))
    assert small.shape == (1, 8, 8) and small[0, 0, 3] == 1 and small[0, 0, 4] == 2 and small[0, 7, 0] == 0
    good = F.one_hot(small, 3).permute(0, 3, 1, 2).float()  # embedding = the mask id
    bad = torch.ones_like(good)  # every pixel alike
    l_good, l_bad = float(aff(good, masks, [1, 2])), float(aff(bad, masks, [1, 2]))
    assert l_good < 0.1 < 1.0 < l_bad
    relabelled = torch.where(masks == 1, 7, torch.where(masks == 2, 3, masks))
    assert float(aff(good, relabelled, [1, 2])) == pytest.approx(l_good)  # only "same / different" matters
    empty = torch.zeros_like(masks)
    e = good.clone().requires_grad_()
    z = aff(e, empty, [1])
    z.backward()
    assert float(z) == 0.0 and e.grad is not None


# -- the model ----------------------------------------------------------------------------------


def _model(prepared: Path, *extra: str, stage: int = 2):
    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import build_model

    cfg = build_config("cigocc", "tiny", overrides=[f"data.root={prepared}", *SMALL, f"model.stage={stage}", *extra])
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(cfg, PreparedDataset(prepared).spec), cfg


def _batch(prepared: Path, cfg):
    from occ_core.data.loading.dataset import OccDataset, collate

    batch = collate([OccDataset(prepared, "train", cfg.data, train=True)[0]])
    B, V, _, H, W = batch["images"].shape
    masks = torch.zeros(B, V, H, W, dtype=torch.long)  # hand-made "SAM" masks: four quadrants, one unmasked strip
    masks[..., : H // 2, : W // 2], masks[..., : H // 2, W // 2:] = 1, 2
    masks[..., H // 2:, : W // 2], masks[..., H // 2:, W // 2: W - 4] = 3, 4
    batch["masks"] = masks
    return batch


def test_shapes_and_gradients_reach_every_extractor(synthetic_prepared: Path):
    model, cfg = _model(synthetic_prepared, "model.sam.weight=1.0")
    spec = model.spec
    batch = _batch(synthetic_prepared, cfg)
    model.train()
    out = model(batch)
    shape = spec.grid_at(cfg.model.loss_scale)
    assert out["logits"].shape == (1, spec.n_classes, *shape) and out["logits_stage1"].shape == out["logits"].shape
    assert out["depth_logits"].shape[:3] == (1, 1, 8)
    losses = model.losses(out, batch)
    assert {"ce", "sem_scal", "geo_scal", "stage1_ce", "depth", "sam"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name in ("encoder", "seg_head", "graphics", "depth_head", "fusion", "affinity", "lifting", "decoder", "head",
                 "refiner", "head2"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert grads and any(g is not None and float(g.abs().sum()) > 0 for g in grads), name
    # the SAM loss alone reaches the segmentation extractor and the backbone
    model.zero_grad(set_to_none=True)
    model(batch)  # fresh graph
    out = model(batch)
    model.losses(out, batch)["sam"].backward()
    assert float(model.seg_head.embed.weight.grad.abs().sum()) > 0
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.encoder.parameters())
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.graphics.parameters())
    model.eval()
    with torch.no_grad():
        pred = model.predict(batch)
    assert pred.shape == (1, *spec.grid.shape)


def test_full_grid_supervision_of_both_heads_equals_the_losses_on_the_upsampled_volume(synthetic_prepared: Path):
    """model.supervise_full_grid: the SSC losses of stage 2 and of stage 1's auxiliary head, at the labelled 1:1
    voxels of the 1:2 logits interpolated there, equal the losses on the upsampled logits (values, gradients)."""
    import torch.nn.functional as F

    from occ_core.models.core import ssc_losses

    model, cfg = _model(synthetic_prepared, "model.extractors.depth_weight=0", "model.empty_above_labelled=0",
                        "model.empty_unlabelled=0", "model.full_grid_points=0")
    assert cfg.model.supervise_full_grid and cfg.model.loss_scale == 2 and cfg.model.stage1_aux > 0
    model.train()
    torch.manual_seed(2)
    target = torch.randint(0, 20, (1, 12, 10, 6))  # a small fabricated 1:1 target (the losses take any grid)
    target[:, :3] = 255
    batch = {"target": target}
    half = tuple(s // 2 for s in target.shape[1:])
    a = torch.randn(1, 20, *half, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 20, *half, dtype=torch.float64, requires_grad=True)
    got = model.losses({"logits": a, "logits_stage1": b, "depth_logits": torch.zeros(1, 1, 1, 2, 2)}, batch)
    up = lambda x: F.interpolate(x, size=tuple(target.shape[1:]), mode="trilinear", align_corners=False)  # noqa: E731
    want = ssc_losses(up(a), target, model.loss_cfg, model.class_weights)
    want.update({f"stage1_{k}": cfg.model.stage1_aux * v
                 for k, v in ssc_losses(up(b), target, model.loss_cfg, model.class_weights).items()})
    assert set(got) == set(want) and "stage1_ce" in got
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-9)
        g1 = torch.autograd.grad(got[k], [a, b], retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(want[k], [a, b], retain_graph=True, allow_unused=True)
        for x, u, v in zip([a, b], g1, g2):
            u = torch.zeros_like(x) if u is None else u
            v = torch.zeros_like(x) if v is None else v
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-10)


def test_inference_reads_neither_depth_nor_masks(synthetic_prepared: Path):
    from occ_core.export.model import reference_forward

    model, cfg = _model(synthetic_prepared, "model.sam.weight=1.0")
    batch = _batch(synthetic_prepared, cfg)
    _, used = reference_forward(model, batch)
    assert "images" in used and "depth" not in used and "masks" not in used


def test_sam_loss_without_masks_is_one_clear_error(synthetic_prepared: Path, tmp_path: Path):
    from occ_core.models.methods.cigocc import check_masks

    model, cfg = _model(synthetic_prepared, "model.sam.weight=1.0", stage=1)
    batch = _batch(synthetic_prepared, cfg)
    del batch["masks"]
    model.train()
    with pytest.raises(OccError, match="data.load_masks"):
        model.losses(model(batch), batch)
    bare = tmp_path / "bare"  # a prepared folder without masks/ (the synthetic data now brings its own)
    shutil.copytree(synthetic_prepared, bare, ignore=shutil.ignore_patterns("masks"))
    with pytest.raises(OccError, match="occ prepare masks") as e:
        check_masks(bare)
    assert "\n" not in str(e.value)


def test_stage1_model_has_no_stage2_modules(synthetic_prepared: Path):
    m1, _ = _model(synthetic_prepared, stage=1)
    m2, _ = _model(synthetic_prepared, stage=2)
    assert not hasattr(m1, "refiner") and hasattr(m2, "refiner")
    k1, k2 = set(m1.state_dict()), set(m2.state_dict())
    assert k1 < k2 and all(k.startswith(("refiner.", "head2.")) for k in k2 - k1)


def test_two_stages_cli_init_resume_and_eval(synthetic_prepared: Path, tmp_path: Path):
    """`occ train --method cigocc`: stage 1, then stage 2 from it (stage 1 frozen here, so its weights must
    arrive unchanged); --resume of the finished run only re-validates; `occ eval --run RUN` uses stage 2."""
    from typer.testing import CliRunner

    from occ_cli.main import app
    from occ_core.engine.checkpoint import load_checkpoint
    from occ_core.engine.trainer import LAST, load_model, load_run_config, resolve_run
    from safetensors.torch import load_file

    sets = [a for s in SMALL + ["model.freeze_stage1=true"] for a in ("--set", s)]
    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = runner.invoke(app, ["train", "--method", "cigocc", "--data", str(synthetic_prepared), "--out", str(tmp_path),
                                "--name", "run", "--epochs", "1", *sets])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    s1, s2 = run / "1-cigocc-stage1", run / "2-cigocc-stage2"
    assert (s1 / LAST).is_file() and (s2 / LAST).is_file() and resolve_run(run) == s2
    assert load_checkpoint(s1 / LAST)["extra"]["stage"] == "cigocc-stage1"
    assert load_run_config(s1).model.stage == 1 and load_run_config(run).model.stage == 2
    w1, w2 = load_file(str(s1 / LAST)), load_file(str(s2 / LAST))
    shared = [k for k in w1 if k.startswith("model.") and k in w2]
    assert len(shared) > 50
    changed = [k for k in shared if not torch.equal(w1[k], w2[k])]
    assert not changed, f"stage 2 did not start from stage 1 (or changed the frozen stage 1): {changed[:5]}"
    assert any(k.startswith("model.refiner.") for k in w2) and not any(k.startswith("model.refiner.") for k in w1)
    model, cfg = load_model(run)
    assert cfg.model.stage == 2 and hasattr(model, "refiner")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = runner.invoke(app, ["train", "--resume", str(run)])
        assert again.exit_code == 0, again.output
        assert "nothing left to train" in (s2 / "train.log").read_text()
        ev = runner.invoke(app, ["eval", "--run", str(run), "--split", "val"])
    assert ev.exit_code == 0, ev.output


def test_stage1_with_sam_masks_through_the_engine(synthetic_prepared: Path, tmp_path: Path):
    """model.sam.weight > 0: the stage turns data.load_masks on and the SAM loss is logged; without masks/ the
    stage stops with one line naming 'occ prepare masks'."""
    import json
    import shutil

    from occ_core.data.prepare.layout import PreparedDataset
    from occ_core.data.prepare.masks import write_masks
    from occ_core.engine.config import build_config
    from occ_core.engine.trainer import train_stages
    from occ_core.models.methods.cigocc import training_stages

    data = synthetic_prepared.parent / f"prepared-{tmp_path.name}"  # beside it: the manifest's raw path is relative
    shutil.copytree(synthetic_prepared, data, ignore=shutil.ignore_patterns("masks"))
    cfg = build_config("cigocc", "tiny", overrides=[f"data.root={data}", "optim.epochs=1", *SMALL, "model.sam.weight=1",
                                                     "model.stages=[1]", "log_every=1"])
    with warnings.catch_warnings(), pytest.raises(OccError, match="occ prepare masks"):
        warnings.simplefilter("ignore")
        train_stages(cfg, tmp_path / "nomasks", training_stages(cfg), progress=False)
    prepared = PreparedDataset(data)
    for frame in prepared.frames():
        for cam in prepared.spec.cameras:
            W, H = cam.image_size
            ids = np.zeros((H, W), np.uint16)
            ids[:, : W // 3], ids[:, W // 3: 2 * W // 3] = 1, 2  # right third unmasked
            write_masks(data, frame.sequence, frame.id, cam.name, ids, [1.0, 1.0],
                        [int((ids == 1).sum()), int((ids == 2).sum())], "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (res,) = train_stages(cfg, tmp_path / "run", training_stages(cfg), progress=False)
    assert res["stage"] == "cigocc-stage1" and res["steps"] == 2
    rows = [json.loads(r) for r in (tmp_path / "run" / "1-cigocc-stage1" / "metrics.jsonl").read_text().splitlines()]
    sam = [r["sam"] for r in rows if r["type"] == "train"]
    assert len(sam) == 2 and all(np.isfinite(sam)) and min(sam) > 0

"""Our SAM (occ_core.sam) against the official segment-anything code (read from its source files):
parameter names and shapes of vit_b / vit_l / vit_h, and identical outputs with the same random weights."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from occ_core.sam import SAM_CONFIGS, SamConfig, build_sam
from occ_core.sam.generator import AutomaticMaskGenerator, SamPredictor
from occ_core.sam.model import config_from_state_dict

# a reduced SAM: 128 px input, 8x8 embedding, windows of 3 (padded), two global blocks
SMALL = SamConfig(encoder_embed_dim=64, encoder_depth=4, encoder_num_heads=4, encoder_global_attn_indexes=(1, 3),
                  image_size=128, patch_size=16, window_size=3, prompt_embed_dim=32, mask_in_chans=8,
                  decoder_depth=2, decoder_mlp_dim=64, decoder_num_heads=8, iou_head_hidden_dim=32)


def official_sam(official, c: SamConfig):
    """The official Sam of config ``c`` built with the package's own classes (as build_sam.py does)."""
    m = official.modeling
    emb = c.image_size // c.patch_size
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=c.encoder_depth, embed_dim=c.encoder_embed_dim, img_size=c.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=c.encoder_num_heads, patch_size=c.patch_size,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(c.encoder_global_attn_indexes),
            window_size=c.window_size, out_chans=c.prompt_embed_dim),
        prompt_encoder=m.PromptEncoder(embed_dim=c.prompt_embed_dim, image_embedding_size=(emb, emb),
                                       input_image_size=(c.image_size, c.image_size), mask_in_chans=c.mask_in_chans),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=c.decoder_depth, embedding_dim=c.prompt_embed_dim,
                                            mlp_dim=c.decoder_mlp_dim, num_heads=c.decoder_num_heads),
            transformer_dim=c.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=c.iou_head_hidden_dim),
    ).eval()


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Every parameter and buffer random (the rel-pos tables and embeddings too, which init at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("pixel_mean") or name.endswith("pixel_std"):
                continue
            t.copy_(torch.randn(t.shape, generator=g) * scale + (1.0 if name.endswith("norm1.weight") else 0.0))


@pytest.fixture(scope="module")
def pair(official):
    theirs = official_sam(official, SMALL)
    randomize(theirs)
    ours = build_sam(SMALL)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_parameter_names_and_shapes_equal_the_official_models(official, name):
    builder = getattr(official.build_sam, f"build_sam_{name}")
    with torch.device("meta"):
        theirs = builder()
        ours = build_sam(name)
    a = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert list(a) == list(b)  # same names in the same order
    assert a == b
    assert ours.name == name
    assert config_from_state_dict(theirs.state_dict()) == SAM_CONFIGS[name]
    # the official global-attention blocks are those of our config
    windows = [blk.window_size for blk in theirs.image_encoder.blocks]
    assert [i for i, w in enumerate(windows) if w == 0] == list(SAM_CONFIGS[name].encoder_global_attn_indexes)


def test_small_config_names_and_shapes(pair):
    theirs, ours = pair
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    assert config_from_state_dict(theirs.state_dict()) == SMALL


def test_identical_embeddings_masks_and_ious(pair):
    theirs, ours = pair
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (1, 3, 96, 128), generator=g).float()  # long side = the input size, padded
    with torch.no_grad():
        e1 = theirs.image_encoder(theirs.preprocess(image))
        e2 = ours.image_encoder(ours.preprocess(image))
        assert e1.shape == (1, SMALL.prompt_embed_dim, 8, 8)
        assert torch.equal(e1, e2)
        pts = torch.rand(5, 2, 2, generator=g) * 120
        lbl = torch.tensor([[1, 0], [1, 1], [0, 1], [1, -1], [1, 1]])
        boxes = torch.tensor([[10.0, 5.0, 60.0, 70.0]] * 5)
        mask_in = torch.randn(5, 1, 32, 32, generator=g)
        for prompts in ({"points": (pts, lbl), "boxes": None, "masks": None},
                        {"points": (pts, lbl), "boxes": boxes, "masks": mask_in},
                        {"points": None, "boxes": boxes, "masks": None}):
            s1, d1 = theirs.prompt_encoder(**prompts)
            s2, d2 = ours.prompt_encoder(**prompts)
            assert torch.equal(s1, s2) and torch.equal(d1, d2)
            for multi in (True, False):
                m1, i1 = theirs.mask_decoder(e1, theirs.prompt_encoder.get_dense_pe(), s1, d1, multi)
                m2, i2 = ours.mask_decoder(e2, ours.prompt_encoder.get_dense_pe(), s2, d2, multi)
                assert m1.shape == (5, 3 if multi else 1, 32, 32)
                assert torch.equal(m1, m2) and torch.equal(i1, i2)
            up1 = theirs.postprocess_masks(m1, (96, 128), (75, 100))
            up2 = ours.postprocess_masks(m2, (96, 128), (75, 100))
            assert torch.equal(up1, up2)


def test_identical_decoder_at_the_official_size(official):
    """The prompt encoder and mask decoder of the real config (256 wide, 64x64 embedding)."""
    c = SAM_CONFIGS["vit_b"]
    m = official.modeling
    emb = c.embedding_size
    pe_t = m.PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb), input_image_size=(1024, 1024),
                           mask_in_chans=16)
    dec_t = m.MaskDecoder(num_multimask_outputs=3, transformer=m.TwoWayTransformer(depth=2, embedding_dim=256,
                                                                                     mlp_dim=2048, num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    randomize(pe_t, 3, 0.05)
    randomize(dec_t, 4, 0.05)
    from occ_core.sam.decoder import MaskDecoder, PromptEncoder, TwoWayTransformer

    pe_o = PromptEncoder(256, (emb, emb), (1024, 1024), 16)
    dec_o = MaskDecoder(transformer_dim=256, transformer=TwoWayTransformer(2, 256, 8, 2048))
    pe_o.load_state_dict(pe_t.state_dict())
    dec_o.load_state_dict(dec_t.state_dict())
    g = torch.Generator().manual_seed(5)
    e = torch.randn(1, 256, emb, emb, generator=g)
    pts = torch.rand(4, 1, 2, generator=g) * 1024
    lbl = torch.ones(4, 1, dtype=torch.int)
    with torch.no_grad():
        s1, d1 = pe_t((pts, lbl), None, None)
        s2, d2 = pe_o((pts, lbl), None, None)
        m1, i1 = dec_t(e, pe_t.get_dense_pe(), s1, d1, True)
        m2, i2 = dec_o(e, pe_o.get_dense_pe(), s2, d2, True)
    assert m1.shape == (4, 3, 256, 256)
    assert torch.equal(m1, m2) and torch.equal(i1, i2)


def _records_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for r1, r2 in zip(a, b):
        assert np.array_equal(r1["segmentation"], r2["segmentation"])
        assert r1["area"] == r2["area"]
        assert [float(x) for x in r1["bbox"]] == [float(x) for x in r2["bbox"]]
        assert r1["predicted_iou"] == r2["predicted_iou"]
        assert r1["stability_score"] == r2["stability_score"]
        assert np.allclose(r1["point_coords"], r2["point_coords"])
        assert [float(x) for x in r1["crop_box"]] == [float(x) for x in r2["crop_box"]]


@pytest.fixture(scope="module")
def amg_pair(official):
    """Random weights with sharp mask logits (|logit| >> the stability offset), so masks pass the filters."""
    theirs = official_sam(official, SMALL)
    randomize(theirs, 0, 0.5)
    with torch.no_grad():
        for mlp in theirs.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[2].weight.mul_(50)
            mlp.layers[2].bias.mul_(50)
    ours = build_sam(SMALL)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("settings", [
    {},  # the official defaults (with random weights no mask passes them)
    {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.5, "box_nms_thresh": 1.0},  # many masks, tied scores
    {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.5},  # NMS at 0.7 removes most
    {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.3, "crop_n_layers": 1, "min_mask_region_area": 20},
])
def test_identical_automatic_masks(official, amg_pair, settings):
    theirs, ours = amg_pair
    rng = np.random.default_rng(0)
    # a blocky image, so that masks have structure
    image = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    kw = dict(points_per_side=5, points_per_batch=7, **settings)
    ref = official.automatic_mask_generator.SamAutomaticMaskGenerator(theirs, **kw).generate(image)
    got = AutomaticMaskGenerator(ours, **kw).generate(image)
    _records_equal(ref, got)
    if settings:
        assert len(got) > 0  # the comparison is not vacuous


def test_predictor_embedding_equals_official_resize(official, pair):
    """The PIL resize to the long side (the official predictor's torchvision-on-PIL resize) and padding."""
    theirs, ours = pair
    image = np.random.default_rng(2).integers(0, 256, (37, 101, 3)).astype(np.uint8)
    ref = official.automatic_mask_generator.SamPredictor(theirs)
    ref.set_image(image)
    got = SamPredictor(ours)
    got.set_image(image)
    assert got.input_size == ref.input_size == (47, 128)
    assert torch.equal(ref.features, got.features)

"""NMS against a direct reading of the greedy rule; checkpoint loading and its one-line errors."""

from __future__ import annotations

import pytest
import torch

from occ_core.errors import OccError
from occ_core.sam import build_sam, load_sam
from occ_core.sam.generator import nms
from occ_core.sam.model import SamConfig, model_name

TINY = SamConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                 image_size=64, window_size=2, prompt_embed_dim=32, mask_in_chans=8, decoder_depth=1,
                 decoder_mlp_dim=32, iou_head_hidden_dim=16)


def reference_nms(boxes, scores, thr):
    """Greedy NMS written out pair by pair (torchvision's CPU kernel)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # Python's sort is stable
    area = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes.tolist()]
    b = boxes.tolist()
    suppressed, keep = set(), []
    for ii, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[ii + 1:]:
            w = max(0.0, min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
            h = max(0.0, min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
            inter = w * h
            union = area[i] + area[j] - inter
            if union > 0 and inter / union > thr:
                suppressed.add(j)
    return keep


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_the_greedy_rule(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 40, (60, 2), generator=g).float()
    wh = torch.randint(1, 25, (60, 2), generator=g).float()
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.randint(0, 8, (60,), generator=g).float() / 8  # many ties
    kept = []
    for thr in (0.1, 0.3, 0.5, 0.7):
        got = nms(boxes, scores, thr).tolist()
        assert got == reference_nms(boxes, scores, thr)
        kept.append(len(got))
    assert kept[0] < kept[-1] and kept[0] < 60  # suppression happens, more at low thresholds


def test_nms_basic_cases():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 0, 0]], dtype=torch.float)
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7, 0.95]), 0.5).tolist() == [3, 0, 2]  # 1 overlaps 0 (IoU 0.68)
    assert nms(boxes, torch.tensor([0.8, 0.9, 0.7, 0.1]), 0.7).tolist() == [1, 0, 2, 3]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_load_sam_reads_a_checkpoint_and_names_its_size(tmp_path):
    sam = build_sam(TINY)
    path = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), path)
    loaded = load_sam(path)
    assert loaded.config == TINY and loaded.name == "custom" and model_name(TINY) == "custom"
    for (k, a), (k2, b) in zip(sam.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_load_sam_errors_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(OccError, match="SAM checkpoint not found") as e:
        load_sam(tmp_path / "missing.pth")
    assert str(tmp_path / "missing.pth") in str(e.value)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(OccError, match="unreadable SAM checkpoint"):
        load_sam(bad)
    sd = build_sam(TINY).state_dict()
    torch.save(sd, bad)
    with open(bad, "r+b") as f:  # truncated
        f.truncate(bad.stat().st_size // 2)
    with pytest.raises(OccError, match="unreadable SAM checkpoint"):
        load_sam(bad)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(OccError, match="not a SAM checkpoint"):
        load_sam(other)
    torch.save([1, 2], other)
    with pytest.raises(OccError, match="plain state dict"):
        load_sam(other)
    torch.save(sd, other)
    with pytest.raises(OccError, match="not vit_b") as e:  # another size than asked for
        load_sam(other, model="vit_b")
    assert "\n" not in str(e.value)
    sd.pop("mask_decoder.iou_token.weight")
    torch.save(sd, other)
    with pytest.raises(OccError, match="missing 'mask_decoder.iou_token.weight'"):
        load_sam(other)
    with pytest.raises(OccError, match="unknown SAM model"):
        load_sam(other, model="vit_x")

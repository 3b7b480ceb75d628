"""Dataset knowledge lives in the dataset modules and the prepared folder's spec (docs/design.md).

This test fails when a SemanticKITTI literal appears in ``occ_core`` or ``occ_cli`` outside the
dataset modules and the synthetic generator: the image crop (1220, 370), the grid (256 x 256 x 32
written as a shape, or grid arithmetic such as ``256 // S`` / ``32 // S``), the class count 20 as a
default, or the benchmark's class names.
"""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"occ_core/data/formats/semantickitti.py", "occ_core/data/formats/kitti360.py",
           "occ_core/data/formats/occ3d.py", "occ_core/data/formats/openoccupancy.py",
           "occ_core/data/formats/surroundocc.py"}
ALLOWED_DIRS = ("occ_core/data/synthetic/",)
CROP = {"1220", "370"}
CLASS_NAMES = {"car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
               "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk", "terrain",
               "pole", "traffic-sign"}


def literal_hits(text: str) -> list[tuple[int, str]]:
    """(line, what) of every dataset literal in Python source ``text``."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)]
    hits = []
    for i, t in enumerate(toks):
        nxt = [u.string for u in toks[i + 1:i + 5]]
        prev = toks[i - 1].string if i else ""
        if t.type == tokenize.NUMBER:
            if t.string in CROP:
                hits.append((t.start[0], f"image crop literal {t.string}"))
            elif t.string == "256" and nxt == [",", "256", ",", "32"]:
                hits.append((t.start[0], "grid shape 256, 256, 32"))
            elif t.string in ("256", "32") and (nxt[:1] == ["//"] or prev in ("//", "%")):
                hits.append((t.start[0], f"grid arithmetic with {t.string}"))
            elif t.string == "20" and prev == "=" and any("class" in u.string for u in toks[max(i - 5, 0):i]):
                hits.append((t.start[0], "class count default 20"))
        elif t.type == tokenize.STRING and t.string[1:-1] in CLASS_NAMES and t.string[:1] in "\"'":
            hits.append((t.start[0], f"class name {t.string}"))
    return hits


def test_detector_finds_each_kind():
    src = ("a = (1220, 370)\nb = (256, 256, 32)\nc = 256 // s\nd = x // 32\n"
           "def f(n_classes: int = 20): pass\ne = 'traffic-sign'\nok = np.zeros(256)\n")
    kinds = [w for _, w in literal_hits(src)]
    assert len([k for k in kinds if k.startswith("image crop")]) == 2
    assert "grid shape 256, 256, 32" in kinds
    assert sum(k.startswith("grid arithmetic") for k in kinds) == 2
    assert "class count default 20" in kinds
    assert any(k.startswith("class name") for k in kinds)
    assert all(line != 7 for line, _ in literal_hits(src))  # a uint8 value range is not dataset knowledge


def _sources() -> list[Path]:
    out = []
    for pkg in ("occ_core", "occ_cli"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if rel not in ALLOWED and not rel.startswith(ALLOWED_DIRS):
                out.append(p)
    return out


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_dataset_literals_outside_dataset_modules(path: Path):
    hits = literal_hits(path.read_text())
    assert not hits, "\n".join(f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in hits)

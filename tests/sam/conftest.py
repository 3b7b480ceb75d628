"""The official ``segment-anything`` code, loaded from its source files without its package
``__init__`` (which imports torchvision, not importable beside our torch).

The package module is a stub whose ``__path__`` is the installed folder, so ``segment_anything.modeling``
and ``segment_anything.utils.amg`` import from their files as usual. For the automatic mask
generator the two torchvision functions it imports are stubbed (``batched_nms`` with our NMS on one
category, ``resize``/``to_pil_image`` with PIL, what torchvision does for a PIL image); everything is
removed from ``sys.modules`` afterwards. Tests skip when the package is not installed (it is in the
``dev`` extra).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

_NAMES = ("segment_anything", "torchvision")


@pytest.fixture(scope="module")
def official():
    """A namespace with ``modeling``, ``amg`` (utils.amg), ``build_sam`` and ``automatic_mask_generator``
    modules of the installed package."""
    spec = importlib.util.find_spec("segment_anything")  # a top-level find_spec runs no package code
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("segment-anything is not installed (pip install -e '.[dev]')")
    folder = Path(list(spec.submodule_search_locations)[0])
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _NAMES}
    for k in saved:
        del sys.modules[k]
    pkg = types.ModuleType("segment_anything")
    pkg.__path__ = [str(folder)]
    pkg.__file__ = None
    sys.modules["segment_anything"] = pkg
    _stub_torchvision()
    try:
        ns = types.SimpleNamespace(
            folder=folder,
            modeling=importlib.import_module("segment_anything.modeling"),
            amg=importlib.import_module("segment_anything.utils.amg"),
            build_sam=importlib.import_module("segment_anything.build_sam"),
            automatic_mask_generator=importlib.import_module("segment_anything.automatic_mask_generator"),
        )
        yield ns
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in _NAMES]:
            del sys.modules[k]
        sys.modules.update(saved)


def _stub_torchvision() -> None:
    import numpy as np
    import torch
    from PIL import Image

    from occ_core.sam.generator import box_area, nms

    def batched_nms(boxes, scores, idxs, iou_threshold):
        assert torch.all(idxs == 0)  # the generator uses one category
        return nms(boxes, scores, iou_threshold)

    def to_pil_image(a):
        return Image.fromarray(np.asarray(a))

    def resize(img, size):
        return img.resize((size[1], size[0]), Image.BILINEAR)

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    boxes.batched_nms, boxes.box_area = batched_nms, box_area
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize, functional.to_pil_image = resize, to_pil_image
    tv.ops, ops.boxes, tv.transforms, transforms.functional = ops, boxes, transforms, functional
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
                        "torchvision.transforms": transforms, "torchvision.transforms.functional": functional})

"""Segment Anything (SAM) in plain torch: image encoder, prompt encoder, mask decoder and the
automatic mask generator, loading the official checkpoints (``sam_vit_b_01ec64.pth`` ...).

A port of Meta's ``segment-anything`` 1.0 (Apache-2.0; https://github.com/facebookresearch/segment-anything)
with the same module and parameter names, so the official state dicts load unchanged, and the same
operations in the same order, so outputs are identical (``tests/sam`` compares both on random
weights). The package itself cannot be imported beside our torch: its ``__init__`` imports
torchvision (for ``batched_nms`` and an image resize), which does not import here; NMS is plain torch
here (:func:`occ_core.sam.generator.nms`) and the resize is PIL's, as torchvision's is on PIL images.

* :mod:`occ_core.sam.encoder`: ``ImageEncoderViT`` (ViT-B/L/H, windowed + global attention,
  decomposed relative positions, conv neck);
* :mod:`occ_core.sam.decoder`: ``PromptEncoder``, ``TwoWayTransformer``, ``MaskDecoder``;
* :mod:`occ_core.sam.model`: ``Sam``, the ``SAM_CONFIGS`` (vit_b, vit_l, vit_h), ``build_sam``,
  ``load_sam`` (checkpoint checks: file, state dict, model size);
* :mod:`occ_core.sam.generator`: ``SamPredictor``-equivalent image embedding + point prompts and
  ``AutomaticMaskGenerator`` (official defaults), ``nms``.
"""

from occ_core.sam.model import SAM_CONFIGS, Sam, SamConfig, build_sam, load_sam

__all__ = ["SAM_CONFIGS", "Sam", "SamConfig", "build_sam", "load_sam"]

"""The built-in synthetic driving dataset, written in the raw SemanticKITTI layout.

Procedural streets along gently curving roads are ray cast into a stereo camera pair (with
per-pixel semantics and depth for image_2; optionally two side cameras image_4 and image_5 with
``cameras=3``), a 64-beam LiDAR and voxel targets, so that
``occ prepare kitti`` reads the result unchanged. See ``docs/synthetic.md``.
"""

from occ_core.data.synthetic.generate import DEFAULT_FRAMES, DEFAULT_SEQUENCES, generate_dataset

__all__ = ["DEFAULT_FRAMES", "DEFAULT_SEQUENCES", "generate_dataset"]

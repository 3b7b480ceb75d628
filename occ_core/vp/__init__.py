"""Vanishing points (VPOcc's single dominant VP per image).

- :mod:`occ_core.vp.lines`: from the image alone (line segments, voting, RANSAC + least squares);
- :mod:`occ_core.vp.pose`: the direction of travel from ``poses.txt`` projected through ``P2``;
- :mod:`occ_core.vp.io`: VPOcc's ``seq_XX.json`` files;
- :mod:`occ_core.vp.estimate`: the ``occ vp-estimate`` driver over a raw dataset.

Submodules are imported on use so that importing this package stays light (no OpenCV).
"""

from __future__ import annotations

__all__ = ["estimate", "io", "lines", "pose"]

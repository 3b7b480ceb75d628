"""Export: a trained network as ONNX / TorchScript (:mod:`occ_core.export.model`) and prediction
folders as a SemanticKITTI SSC submission zip (the format module :mod:`occ_core.data.formats.submission`).

Nothing heavy is imported here; import the submodules.
"""

from __future__ import annotations

__all__ = ["model"]

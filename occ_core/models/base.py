"""The contract every method implements (see docs/design.md)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class OccModel(nn.Module):
    """Base class of every registered method.

    Subclasses implement :meth:`forward` (returning at least ``"logits"`` of shape
    ``[B, n_classes, X, Y, Z]``) and :meth:`losses`. :meth:`predict` defaults to the argmax.
    """

    n_classes: int = 0
    """Classes including empty (set from the dataset spec by the subclass)."""

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def losses(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.forward(batch)["logits"].argmax(dim=1)

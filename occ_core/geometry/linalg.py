"""Closed-form small-matrix algebra in torch: exportable (ONNX / TorchScript trace) and batched.

These are the only implementations the models use (no ``torch.linalg`` in a forward), so the
exported network is the model's own forward.
"""

from __future__ import annotations

from torch import Tensor
import torch


def adjugate3x3(m: Tensor) -> Tensor:
    """Adjugate of ``m [..., 3, 3]`` (``inverse * det``), closed form."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    rows = [
        torch.stack([e * i - f * h, c * h - b * i, b * f - c * e], -1),
        torch.stack([f * g - d * i, a * i - c * g, c * d - a * f], -1),
        torch.stack([d * h - e * g, b * g - a * h, a * e - b * d], -1),
    ]
    return torch.stack(rows, -2)


def inverse3x3(m: Tensor) -> Tensor:
    """Inverse of ``m [..., 3, 3]`` by the adjugate."""
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return adjugate3x3(m) / det[..., None, None]


def inverse_rigid4x4(T: Tensor) -> Tensor:
    """Inverse of ``T [..., 4, 4]`` whose last row is ``0 0 0 1`` (upper-left block inverted exactly)."""
    A_inv = inverse3x3(T[..., :3, :3])
    t = -(A_inv @ T[..., :3, 3:4])
    top = torch.cat([A_inv, t], -1)
    return torch.cat([top, T[..., 3:4, :]], -2)


def _square_to_quad(q: Tensor) -> Tensor:
    """Homography ``[..., 3, 3]`` mapping the unit square (0,0),(1,0),(1,1),(0,1) to ``q [..., 4, 2]``."""
    x0, x1, x2, x3 = q[..., 0, 0], q[..., 1, 0], q[..., 2, 0], q[..., 3, 0]
    y0, y1, y2, y3 = q[..., 0, 1], q[..., 1, 1], q[..., 2, 1], q[..., 3, 1]
    sx, sy = x0 - x1 + x2 - x3, y0 - y1 + y2 - y3
    dx1, dx2, dy1, dy2 = x1 - x2, x3 - x2, y1 - y2, y3 - y2
    den = dx1 * dy2 - dx2 * dy1
    g = (sx * dy2 - dx2 * sy) / den
    h = (dx1 * sy - sx * dy1) / den
    one = torch.ones_like(g)
    rows = [
        torch.stack([x1 - x0 + g * x1, x3 - x0 + h * x3, x0], -1),
        torch.stack([y1 - y0 + g * y1, y3 - y0 + h * y3, y0], -1),
        torch.stack([g, h, one], -1),
    ]
    return torch.stack(rows, -2)


def homography4(src: Tensor, dst: Tensor) -> Tensor:
    """The homography ``H [..., 3, 3]`` (``H[2, 2] = 1``) with ``dst ~ H @ [src, 1]`` for four point
    pairs ``[..., 4, 2]``: closed form (Heckbert's square-to-quad), no linear solve; equal to the
    8x8 DLT solution up to rounding."""
    Hm = _square_to_quad(dst) @ adjugate3x3(_square_to_quad(src))
    return Hm / Hm[..., 2:3, 2:3]

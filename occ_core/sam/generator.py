"""SAM's automatic mask generation ("segment everything"): a grid of point prompts over the image,
three masks per point, filtered by predicted IoU and stability, deduplicated by box NMS.

Ported from ``segment_anything/{predictor,automatic_mask_generator,utils/amg,utils/transforms}.py``
(Apache-2.0, Meta) with the official defaults (points_per_side 32, points_per_batch 64,
pred_iou_thresh 0.88, stability_score_thresh 0.95, stability_score_offset 1.0, box_nms_thresh 0.7,
crop_n_layers 0, min_mask_region_area 0). Differences that do not change the result: masks are kept
as boolean tensors instead of run-length encodings, NMS is plain torch (:func:`nms`, the same greedy
rule as torchvision's), and the image resize is PIL's bilinear (what torchvision's ``resize`` does on a
PIL image, as the official predictor calls it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch

from occ_core.sam.model import Sam

# ------------------------------------------------------------------------------------------------
# Image transform (ResizeLongestSide)
# ------------------------------------------------------------------------------------------------


def preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
    """(h, w) of an image resized so that its long side is ``long_side_length``."""
    scale = long_side_length * 1.0 / max(oldh, oldw)
    newh, neww = oldh * scale, oldw * scale
    return int(newh + 0.5), int(neww + 0.5)


def resize_longest_side(image: np.ndarray, target_length: int) -> np.ndarray:
    """HWC uint8 image resized (PIL bilinear) to long side ``target_length``."""
    from PIL import Image

    h, w = preprocess_shape(image.shape[0], image.shape[1], target_length)
    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def apply_coords(coords: np.ndarray, original_size: tuple[int, int], target_length: int) -> np.ndarray:
    """Point coordinates (x, y) of the original image -> coordinates in the resized image."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, target_length)
    coords = np.array(coords, dtype=float, copy=True)
    coords[..., 0] = coords[..., 0] * (new_w / old_w)
    coords[..., 1] = coords[..., 1] * (new_h / old_h)
    return coords


class SamPredictor:
    """One image's embedding, then masks for point prompts (``segment_anything.SamPredictor``)."""

    def __init__(self, model: Sam) -> None:
        self.model = model
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed an HWC uint8 image (RGB, or BGR with ``image_format="BGR"``)."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be RGB or BGR, got {image_format}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        input_image = resize_longest_side(np.ascontiguousarray(image), self.model.image_encoder.img_size)
        t = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
        self.set_torch_image(t, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        self.reset_image()
        self.original_size = tuple(original_image_size)
        self.input_size = tuple(transformed_image.shape[-2:])
        self.features = self.model.image_encoder(self.model.preprocess(transformed_image))
        self.is_image_set = True

    @torch.no_grad()
    def predict_torch(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                      boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
                      multimask_output: bool = True, return_logits: bool = False):
        """Masks [B, M, H, W] at the original size (logits or booleans), IoU predictions [B, M], low-res
        logits [B, M, 256, 256] for prompts already in the resized frame."""
        if not self.is_image_set:
            raise RuntimeError("set_image first")
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou = self.model.mask_decoder(image_embeddings=self.features,
                                               image_pe=self.model.prompt_encoder.get_dense_pe(),
                                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                               multimask_output=multimask_output)
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res


# ------------------------------------------------------------------------------------------------
# Helpers (utils/amg.py)
# ------------------------------------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """[n*n, 2] points evenly spaced in [0, 1]^2 (cell centres), x fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> list[np.ndarray]:
    return [build_point_grid(int(n_per_side / (scale_per_layer ** i))) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float):
    """Crop boxes (x0, y0, x1, y1) of every layer (layer i has (2^i)^2 crops) and their layer indices."""
    crop_boxes, layer_idxs = [], []
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len, n_crops, overlap):
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w, crop_h = crop_len(im_w, n, overlap), crop_len(im_h, n, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU of the masks thresholded at ``mask_threshold +- threshold_offset`` (the official int16 /
    int32 sums)."""
    inter = (masks > (mask_threshold + threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (masks > (mask_threshold - threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (inclusive pixel indices) around boolean masks [..., H, W]; [0, 0, 0, 0] when empty."""
    if torch.numel(masks) == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    shape = masks.shape
    h, w = shape[-2:]
    masks = masks.flatten(0, -3) if len(shape) > 2 else masks.unsqueeze(0)
    in_height, _ = torch.max(masks, dim=-1)
    in_height_coords = in_height * torch.arange(h, device=in_height.device)[None, :]
    bottom_edges, _ = torch.max(in_height_coords, dim=-1)
    in_height_coords = in_height_coords + h * (~in_height)
    top_edges, _ = torch.min(in_height_coords, dim=-1)
    in_width, _ = torch.max(masks, dim=-2)
    in_width_coords = in_width * torch.arange(w, device=in_width.device)[None, :]
    right_edges, _ = torch.max(in_width_coords, dim=-1)
    in_width_coords = in_width_coords + w * (~in_width)
    left_edges, _ = torch.min(in_width_coords, dim=-1)
    empty = (right_edges < left_edges) | (bottom_edges < top_edges)
    out = torch.stack([left_edges, top_edges, right_edges, bottom_edges], dim=-1)
    out = out * (~empty).unsqueeze(-1)
    return out.reshape(*shape[:-2], 4) if len(shape) > 2 else out[0]


def is_box_near_crop_edge(boxes: torch.Tensor, crop_box: list[int], orig_box: list[int],
                          atol: float = 20.0) -> torch.Tensor:
    """Boxes within ``atol`` of a crop edge that is not an image edge."""
    crop_t = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_t = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop_t[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig_t[None, :], atol=atol, rtol=0)
    return torch.any(torch.logical_and(near_crop, ~near_image), dim=1)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0, x0, y0]], device=boxes.device)
    if len(boxes.shape) == 3:
        offset = offset.unsqueeze(1)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0]], device=points.device)
    if len(points.shape) == 3:
        offset = offset.unsqueeze(1)
    return points + offset


def uncrop_masks(masks: torch.Tensor, crop_box: list[int], orig_h: int, orig_w: int) -> torch.Tensor:
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    return torch.nn.functional.pad(masks, (x0, pad_x - x0, y0, pad_y - y0), value=0)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh``."""
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(mode)
    correct_holes = mode == "holes"
    working = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not correct_holes:
        fill = [i for i in range(n_labels) if i not in fill]
        if not fill:
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] IoU of XYXY boxes, areas ``(x1 - x0) * (y1 - y0)`` as in torchvision."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression (torchvision.ops.nms's rule): visit boxes by decreasing score
    (stable for ties), keep a box unless a kept box overlaps it with IoU > ``iou_threshold``. Returns the
    kept indices (int64) by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].float()
    iou = box_iou(b, b)
    n = len(order)
    suppressed = torch.zeros(n, dtype=torch.bool)
    over = (iou > iou_threshold).cpu()
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


# ------------------------------------------------------------------------------------------------
# Generator
# ------------------------------------------------------------------------------------------------


class _Data:
    """Per-mask arrays filtered and concatenated together (``MaskData`` without RLEs)."""

    def __init__(self, **kw: torch.Tensor) -> None:
        self.d: dict[str, torch.Tensor] = dict(kw)

    def __getitem__(self, k: str) -> torch.Tensor:
        return self.d[k]

    def __setitem__(self, k: str, v: torch.Tensor) -> None:
        self.d[k] = v

    def filter(self, keep: torch.Tensor) -> None:
        self.d = {k: v[torch.as_tensor(keep, device=v.device)] for k, v in self.d.items()}

    def cat(self, other: "_Data") -> None:
        for k, v in other.d.items():
            self.d[k] = v if k not in self.d else torch.cat([self.d[k], v], dim=0)

    def __len__(self) -> int:
        return len(next(iter(self.d.values()))) if self.d else 0


@dataclass
class GeneratorConfig:
    """Automatic mask generation settings (the official ``SamAutomaticMaskGenerator`` defaults)."""

    points_per_side: int = 32
    """Point prompts per image side (points_per_side^2 prompts)."""
    points_per_batch: int = 64
    """Prompts decoded together (memory vs speed)."""
    pred_iou_thresh: float = 0.88
    """Keep masks whose predicted IoU exceeds this."""
    stability_score_thresh: float = 0.95
    """Keep masks whose stability score is at least this."""
    stability_score_offset: float = 1.0
    """Logit offset of the stability score."""
    box_nms_thresh: float = 0.7
    """Box IoU above which NMS drops the lower-scored mask."""
    crop_n_layers: int = 0
    """Extra layers of image crops (0: the whole image only)."""
    crop_nms_thresh: float = 0.7
    """Box NMS threshold between crops."""
    crop_overlap_ratio: float = 512 / 1500
    """Crop overlap, as a fraction of the short side, in the first crop layer."""
    crop_n_points_downscale_factor: int = 1
    """Points per side divided by this per crop layer."""
    min_mask_region_area: int = 0
    """Fill holes / drop islands smaller than this many pixels (0: off)."""


class AutomaticMaskGenerator:
    """Masks of everything in an image (``segment_anything.SamAutomaticMaskGenerator``, binary-mask output)."""

    def __init__(self, model: Sam, config: GeneratorConfig | None = None, **overrides: Any) -> None:
        cfg = config or GeneratorConfig()
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise TypeError(f"unknown generator setting '{k}'")
            setattr(cfg, k, v)
        if cfg.points_per_side < 1 or cfg.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be positive")
        self.cfg = cfg
        self.point_grids = build_all_layer_point_grids(cfg.points_per_side, cfg.crop_n_layers,
                                                       cfg.crop_n_points_downscale_factor)
        self.predictor = SamPredictor(model)

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Mask records of an HWC uint8 RGB image: ``segmentation`` (bool [H, W]), ``area``, ``bbox``
        (XYWH), ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box`` (XYWH), in the
        official order (NMS order: by decreasing predicted IoU)."""
        data = self._generate_masks(image)
        if self.cfg.min_mask_region_area > 0:
            data = self._postprocess_small_regions(data, self.cfg.min_mask_region_area,
                                                   max(self.cfg.box_nms_thresh, self.cfg.crop_nms_thresh))
        out = []
        masks = data["masks"].cpu().numpy() if len(data) else np.zeros((0,) + image.shape[:2], bool)
        for i in range(len(data)):
            box = data["boxes"][i].tolist()
            crop = data["crop_boxes"][i].tolist()
            out.append({
                "segmentation": masks[i],
                "area": int(masks[i].sum()),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability_score"][i].item(),
                "crop_box": [crop[0], crop[1], crop[2] - crop[0], crop[3] - crop[1]],
            })
        return out

    def _generate_masks(self, image: np.ndarray) -> _Data:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.cfg.crop_n_layers, self.cfg.crop_overlap_ratio)
        data = _Data()
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
            data.cat(self._process_crop(image, crop_box, layer_idx, orig_size))
        if len(crop_boxes) > 1 and len(data):
            scores = 1 / box_area(data["crop_boxes"])  # prefer masks from smaller crops
            data.filter(nms(data["boxes"].float(), scores.to(data["boxes"].device), self.cfg.crop_nms_thresh))
        return data

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer_idx: int,
                      orig_size: tuple[int, ...]) -> _Data:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1, :]
        cropped_size = cropped.shape[:2]
        self.predictor.set_image(cropped)
        points_for_image = self.point_grids[layer_idx] * np.array(cropped_size)[None, ::-1]
        data = _Data()
        n = self.cfg.points_per_batch
        for b in range(0, len(points_for_image), n):
            data.cat(self._process_batch(points_for_image[b:b + n], cropped_size, crop_box, orig_size))
        self.predictor.reset_image()
        if not len(data):
            return data
        data.filter(nms(data["boxes"].float(), data["iou_preds"], self.cfg.box_nms_thresh))
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data))]).reshape(-1, 4)
        return data

    def _process_batch(self, points: np.ndarray, im_size: tuple[int, ...], crop_box: list[int],
                       orig_size: tuple[int, ...]) -> _Data:
        orig_h, orig_w = orig_size
        model = self.predictor.model
        transformed = apply_coords(points, im_size, model.image_encoder.img_size)
        in_points = torch.as_tensor(transformed, device=self.predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        masks, iou_preds, _ = self.predictor.predict_torch(in_points[:, None, :], in_labels[:, None],
                                                           multimask_output=True, return_logits=True)
        data = _Data(masks=masks.flatten(0, 1), iou_preds=iou_preds.flatten(0, 1),
                     points=torch.as_tensor(points.repeat(masks.shape[1], axis=0)))
        del masks
        if self.cfg.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.cfg.pred_iou_thresh)
        data["stability_score"] = calculate_stability_score(data["masks"], model.mask_threshold,
                                                            self.cfg.stability_score_offset)
        if self.cfg.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.cfg.stability_score_thresh)
        data["masks"] = data["masks"] > model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        data["masks"] = uncrop_masks(data["masks"], crop_box, orig_h, orig_w).cpu()
        return data

    @staticmethod
    def _postprocess_small_regions(data: _Data, min_area: int, nms_thresh: float) -> _Data:
        if not len(data):
            return data
        new_masks, scores = [], []
        for m in data["masks"].cpu().numpy():
            m, changed = remove_small_regions(m, min_area, mode="holes")
            unchanged = not changed
            m, changed = remove_small_regions(m, min_area, mode="islands")
            unchanged = unchanged and not changed
            new_masks.append(torch.as_tensor(m).unsqueeze(0))
            scores.append(float(unchanged))  # prefer masks that needed no postprocessing
        masks = torch.cat(new_masks, dim=0)
        boxes = batched_mask_to_box(masks)
        keep = nms(boxes.float(), torch.as_tensor(scores), nms_thresh)
        for i in keep.tolist():
            if scores[i] == 0.0:
                data["masks"][i] = masks[i]
                data["boxes"][i] = boxes[i].to(data["boxes"].dtype)
        data.filter(keep)
        return data

"""Box geometry of the detection study: anchors, IoU, RetinaNet target assignment, the
``(dx, dy, dw, dh)`` box coder and a batched (per-class) non-maximum suppression in torch.

Boxes are ``(x1, y1, x2, y2)`` in pixels, continuous coordinates (a box ``[0, 0, 4, 4]``
covers the 16 pixels whose centres lie inside it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Assignment",
    "assign_targets",
    "batched_nms",
    "box_iou",
    "decode_boxes",
    "encode_boxes",
    "grid_anchors",
    "nms",
]

# Largest |dw|, |dh| applied when decoding: exp() of it is a 62x size change (torchvision's and
# Detectron's ``log(1000 / 16)``); keeps an untrained head from producing inf boxes.
DELTA_CLIP = math.log(1000.0 / 16)


def grid_anchors(
    feature_size: int | tuple[int, int],
    stride: int,
    sizes: Sequence[float],
    ratios: Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Anchors of one feature map of ``feature_size`` cells (an int: square; or ``(height,
    width)``), shape ``(H * W * A, 4)``.

    One anchor per (size, ratio) pair at every cell centre ``((j + 0.5) stride,
    (i + 0.5) stride)``; ``ratio = h / w`` at constant area ``size**2``. Row order is
    ``(i, j, a)`` with ``a = ratio_index * len(sizes) + size_index``, which is the order of a
    head output ``(B, A * K, H, W)`` permuted to ``(B, H, W, A, K)`` and flattened.
    """
    fh, fw = (feature_size, feature_size) if isinstance(feature_size, int) else feature_size
    size = torch.tensor(list(sizes), dtype=torch.float64)
    ratio = torch.tensor(list(ratios), dtype=torch.float64)
    w = (size[None, :] / ratio.sqrt()[:, None]).reshape(-1)  # (A,) ratio-major
    h = (size[None, :] * ratio.sqrt()[:, None]).reshape(-1)
    shape = torch.stack([-w / 2, -h / 2, w / 2, h / 2], dim=1)  # (A, 4)
    centre_y = (torch.arange(fh, dtype=torch.float64) + 0.5) * stride
    centre_x = (torch.arange(fw, dtype=torch.float64) + 0.5) * stride
    cy, cx = torch.meshgrid(centre_y, centre_x, indexing="ij")
    shift = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
    return (shift + shape[None]).reshape(-1, 4).to(dtype)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``(N, M)`` of ``(N, 4)`` and ``(M, 4)`` boxes (0 where the union is 0)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


class Assignment(NamedTuple):
    labels: Tensor  # (..., A) int64: class in [0, C), C = background, ignore_index = ignored
    matched: Tensor  # (..., A) int64: index of the matched gt (meaningful where labels < C)
    max_iou: Tensor  # (..., A) the anchor's best IoU with any gt (0 without gts)


def assign_targets(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    *,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    ignore_index: int = -100,
) -> Assignment:
    """RetinaNet assignment (Lin et al. 2017, sec. 4): an anchor whose best IoU with a
    ground-truth box is ``>= fg_iou`` is a positive of that box's class, ``< bg_iou`` is
    background (label ``num_classes``), in between it is ignored (``ignore_index``).

    Best-anchor rule (torchvision's ``allow_low_quality_matches``, mmdetection's
    ``min_pos_iou=0``): every gt also makes positive the anchor(s) whose IoU with it is the
    gt's maximum (all tied anchors, and only if that maximum is > 0), even below ``fg_iou``.
    Such an anchor is matched to the gt for which it is a best anchor (if it is a best anchor
    for several, the one it overlaps most), so that each gt keeps at least one positive unless
    two gts share the same best anchor.

    Shapes: ``anchors (A, 4)``, ``gt_boxes (..., G, 4)``, ``gt_labels (..., G)``; a batch of
    images is padded to a common ``G`` with labels ``< 0`` (padding matches nothing). Returns
    tensors of shape ``(..., A)``.
    """
    batch_shape = gt_labels.shape[:-1]
    num_images, num_gt, num_anchors = math.prod(batch_shape), gt_labels.shape[-1], anchors.shape[0]
    gt_boxes = gt_boxes.reshape(num_images, num_gt, 4).to(anchors.dtype)
    gt_labels = gt_labels.reshape(num_images, num_gt).to(torch.long)
    if num_gt == 0:  # no gt at all: one padding entry keeps the max() defined
        gt_boxes = gt_boxes.new_zeros(num_images, 1, 4)
        gt_labels = gt_labels.new_full((num_images, 1), -1)
    real = gt_labels >= 0  # (N, G)
    iou = box_iou(anchors, gt_boxes.reshape(-1, 4)).reshape(num_anchors, num_images, -1)
    iou = torch.where(real[:, None, :], iou.permute(1, 0, 2), -1.0)  # (N, A, G)
    max_iou, matched = iou.max(dim=2)  # (N, A)
    max_iou = max_iou.clamp(min=0)
    best_of_gt = iou.max(dim=1, keepdim=True).values  # (N, 1, G)
    is_best = (iou == best_of_gt) & (best_of_gt > 0)  # (N, A, G)
    low_quality = is_best.any(dim=2)
    best_gt = torch.where(is_best, iou, -1.0).argmax(dim=2)
    matched = torch.where(low_quality, best_gt, matched)
    positive = (max_iou >= fg_iou) | low_quality
    labels = torch.where(max_iou < bg_iou, num_classes, ignore_index)
    labels = torch.where(positive, gt_labels.gather(1, matched), labels)
    shape = (*batch_shape, num_anchors)
    return Assignment(labels.reshape(shape), matched.reshape(shape), max_iou.reshape(shape))


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(
    boxes: Tensor, anchors: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """Standard R-CNN deltas ``(wx dx/wa, wy dy/ha, ww log(w/wa), wh log(h/ha))``."""
    wx, wy, ww, wh = weights
    gx, gy, gw, gh = _centre_size(boxes)
    ax, ay, aw, ah = _centre_size(anchors)
    return torch.stack(
        [
            wx * (gx - ax) / aw,
            wy * (gy - ay) / ah,
            ww * torch.log(gw / aw),
            wh * torch.log(gh / ah),
        ],
        dim=-1,
    )


def decode_boxes(
    deltas: Tensor, anchors: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """Inverse of :func:`encode_boxes` (``dw, dh`` clamped at ``log(1000/16)``)."""
    wx, wy, ww, wh = weights
    ax, ay, aw, ah = _centre_size(anchors)
    cx = ax + deltas[..., 0] / wx * aw
    cy = ay + deltas[..., 1] / wy * ah
    w = aw * torch.exp((deltas[..., 2] / ww).clamp(max=DELTA_CLIP))
    h = ah * torch.exp((deltas[..., 3] / wh).clamp(max=DELTA_CLIP))
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score (stable on ties).

    Vectorised as a fixed-point iteration on the IoU matrix of the score-sorted boxes
    (Cluster-NMS, Zheng et al. 2020, arXiv 2005.03572): ``keep[j] = not any(keep[i] and
    IoU(i, j) > t for i < j)``. Each sweep makes at least one more leading entry final, and
    the fixed point is unique, so it returns exactly the greedy result — usually in a few
    sweeps, at most ``len(boxes)``.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    sorted_boxes = boxes[order]
    overlaps = (box_iou(sorted_boxes, sorted_boxes) > iou_threshold).triu(diagonal=1)
    keep = torch.ones(order.numel(), dtype=torch.bool, device=boxes.device)
    for _ in range(order.numel()):
        new_keep = ~(overlaps & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Per-class NMS in one call: boxes of different labels are shifted apart so they never
    overlap (torchvision's coordinate trick), then :func:`nms`."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    span = (boxes.max() - boxes.min()).clamp(min=0) + 1
    shifted = boxes - boxes.min() + (labels.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold)

"""Inference, COCO evaluation and loss diagnostics of the detection study."""

from __future__ import annotations

import contextlib
import io
import pathlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import batched_nms, decode_boxes

__all__ = [
    "coco_evaluate",
    "cumulative_loss",
    "gradient_norm_histogram",
    "postprocess",
]

CUMULATIVE_GAMMAS = (0.0, 0.5, 1.0, 2.0)


def postprocess(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    level_sizes: Sequence[int],
    *,
    image_size: int | tuple[int, int],
    box_weights: Sequence[float],
    score_thresh: float,
    pre_nms_topk: int,
    nms_iou: float,
    max_detections: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Detections of one image, RetinaNet style: sigmoid scores, per level the ``pre_nms_topk``
    best (anchor, class) pairs above ``score_thresh``, decode, clip to the image, per-class
    NMS, the ``max_detections`` best. ``image_size``: an int (square) or ``(height, width)``.
    Returns ``(boxes (K, 4), scores (K,), labels (K,))``."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    limit = torch.tensor([width, height, width, height], dtype=deltas.dtype, device=deltas.device)
    num_classes = logits.shape[-1]
    boxes, scores, labels = [], [], []
    start = 0
    for size in level_sizes:
        level_scores = torch.sigmoid(logits[start : start + size]).reshape(-1)
        candidates = torch.nonzero(level_scores > score_thresh).squeeze(1)
        if candidates.numel() > pre_nms_topk:
            top = level_scores[candidates].topk(pre_nms_topk).indices
            candidates = candidates[top]
        anchor_index = candidates // num_classes + start
        level_boxes = decode_boxes(deltas[anchor_index], anchors[anchor_index], box_weights)
        boxes.append(torch.minimum(level_boxes.clamp(min=0), limit))
        scores.append(level_scores[candidates])
        labels.append(candidates % num_classes)
        start += size
    all_boxes, all_scores, all_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    keep = batched_nms(all_boxes, all_scores, all_labels, nms_iou)[:max_detections]
    return all_boxes[keep], all_scores[keep], all_labels[keep]


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


def coco_evaluate(
    annotation_file: pathlib.Path,
    results: list[dict],
    *,
    max_detections: int | None = None,
    image_ids: Sequence[int] | None = None,
    stats: int = 4,
) -> dict[str, float]:
    """COCO box AP of ``results`` (COCO result dicts) against ``annotation_file``.

    Returns the first ``stats`` of ``COCOeval.stats`` (AP, AP50, AP75, AP_small, AP_medium,
    AP_large; COCO's -1 = "no ground truth in that range" is kept). ``max_detections``
    replaces COCO's 100 detections per image (for images holding more objects than that);
    ``image_ids`` restricts the evaluation to those images. Without any detection every AP is
    0 (``loadRes`` cannot load an empty list), a size range -1 if it has no ground truth.
    pycocotools' prints are swallowed.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _quiet(COCO, str(annotation_file))
    names = STAT_NAMES[:stats]
    keep = None if image_ids is None else set(image_ids)
    if keep is not None:
        results = [r for r in results if r["image_id"] in keep]
    if not results:
        ranges = {
            "AP_small": (0, 32.0**2),
            "AP_medium": (32.0**2, 96.0**2),
            "AP_large": (96.0**2, 1e10),
        }
        annotations = [
            a for a in gt.dataset["annotations"] if keep is None or a["image_id"] in keep
        ]
        out = {}
        for name in names:
            lo, hi = ranges.get(name, (0, 1e10))
            out[name] = 0.0 if any(lo <= a["area"] < hi for a in annotations) else -1.0
        return out
    dt = _quiet(gt.loadRes, results)
    evaluator = COCOeval(gt, dt, "bbox")
    if max_detections is not None:
        evaluator.params.maxDets = [1, 10, int(max_detections)]
    if keep is not None:
        evaluator.params.imgIds = sorted(keep)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if max_detections is None:
        values = [float(s) for s in evaluator.stats[:stats]]
    else:  # summarize() reads AP at 100 detections whatever maxDets holds: read it ourselves
        values = [_precision_mean(evaluator, name) for name in names]
    return dict(zip(names, values, strict=True))


def _precision_mean(evaluator, name: str) -> float:
    """COCOeval.summarize's AP number ``name`` at the largest ``maxDets``."""
    params = evaluator.params
    precision = evaluator.eval["precision"]  # (T iou, R recall, K cats, A areas, M maxDets)
    area = {"AP_small": "small", "AP_medium": "medium", "AP_large": "large"}.get(name, "all")
    a = params.areaRngLbl.index(area)
    if name in ("AP50", "AP75"):
        t = np.where(np.isclose(params.iouThrs, 0.5 if name == "AP50" else 0.75))[0]
        values = precision[t, :, :, a, -1]
    else:
        values = precision[:, :, :, a, -1]
    values = values[values > -1]
    return float(np.mean(values)) if values.size else -1.0


def gradient_norm_histogram(logits: Tensor, labels: Tensor, bins: int = 30) -> dict:
    """Histogram of ``g = |sigmoid(x) - y|`` over the valid (anchor, class) pairs, ``bins``
    equal bins of [0, 1] (GHM paper, Fig. 1). ``labels``: index form, ``C`` = background,
    anything outside ``[0, C]`` ignored."""
    x, targets = _valid_pairs(logits, labels)
    g = (torch.sigmoid(x) - targets).abs().numpy()
    counts, edges = np.histogram(g, bins=bins, range=(0.0, 1.0))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def cumulative_loss(
    logits: Tensor,
    labels: Tensor,
    gammas: Sequence[float] = CUMULATIVE_GAMMAS,
    points: int = 101,
) -> dict:
    """Fig. 4 of the focal loss paper: for positive and negative (anchor, class) pairs
    separately, the focal loss ``(1 - p_t)^gamma BCE`` of each pair (alpha left out: a constant
    factor that the normalisation removes), sorted ascending, normalised to sum 1; the
    cumulative sum read at ``points`` equally spaced fractions of the pairs (the value at
    fraction ``f`` is the share of the total loss carried by the ``f`` easiest pairs).
    Positive pairs: ``y = 1`` (a positive anchor's own class); negative pairs: ``y = 0``
    (every class of a background anchor and the other classes of a positive one)."""
    x, targets = _valid_pairs(logits, labels)
    x = x.double()
    fraction = np.linspace(0.0, 1.0, points)
    out: dict = {"fraction": [float(f) for f in fraction], "gammas": list(gammas)}
    for name, mask in (("pos", targets == 1), ("neg", targets == 0)):
        xs, ys = x[mask], targets[mask].double()
        curves = []
        for gamma in gammas:
            bce = F.binary_cross_entropy_with_logits(xs, ys, reduction="none")
            p_t = torch.exp(-bce)
            loss = ((1 - p_t).clamp(min=0) ** gamma * bce).sort().values.numpy()
            curves.append(_cumulative(loss, fraction))
        out[name] = curves
    return out


def _cumulative(sorted_loss: np.ndarray, fraction: np.ndarray) -> list[float]:
    n = sorted_loss.size
    total = sorted_loss.sum()
    if n == 0 or total <= 0:
        return [float(f) for f in fraction]  # no pairs / no loss: the uniform diagonal
    cum = np.concatenate([[0.0], np.cumsum(sorted_loss) / total])
    return [float(c) for c in cum[np.rint(fraction * n).astype(np.int64)]]


def _valid_pairs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and 0/1 targets of every valid (anchor, class) pair, flattened."""
    num_classes = logits.shape[-1]
    logits = logits.reshape(-1, num_classes).float()
    labels = labels.reshape(-1)
    valid = (labels >= 0) & (labels <= num_classes)
    logits, labels = logits[valid], labels[valid]
    targets = torch.zeros_like(logits)
    positive = labels < num_classes
    targets[positive.nonzero().squeeze(1), labels[positive]] = 1.0
    return logits.reshape(-1), targets.reshape(-1)

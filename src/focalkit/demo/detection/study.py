"""Study 2: dense detection of small shapes on clutter, evaluated with pycocotools.

What it compares: classification losses (``bce``, ``alpha_bce``, ``focal``, ``ghmc``, ``qfl``,
``vfl``) with the box loss fixed at RetinaNet's smooth L1, and box losses (``smooth_l1``,
``giou``, ``ciou``, ``eiou``, ``focal_eiou``, ``ghmr``, ``siou``, ``wiou``, ``inner_ciou``) with
the classification loss fixed at focal loss, on the same detector, data, initialisation,
optimiser, learning-rate schedule and number of steps.

Data (:mod:`.data`): generated scenes (squares, discs, triangles of random colours, mostly
COCO-small, on backgrounds of noise, gradients, soft blobs and lines); train and test splits
from different seeds, fixed by the setting. ``seed`` picks the network's initialisation and the
batch order, and every loss gets the same seeds. The test ground truth is written as a COCO
json under ``workdir`` (content-addressed by the data's parameters, written atomically) and
evaluated with ``pycocotools.cocoeval.COCOeval(gt, dt, "bbox")`` with COCO's default area
ranges (small = area < 32**2 pixels).

Detector (:mod:`.model`): RetinaNet-style, two levels (strides 8 and 16), 9 anchors per
location (3 sizes x ratios 1:2, 1:1, 2:1), shared heads, classification bias
``fk.prior_bias(0.01)``. Targets (:mod:`.boxes`): IoU >= 0.5 positive, < 0.4 background,
in between ignored, plus every gt's best anchor(s) positive; boxes encoded as R-CNN deltas with
weights (1, 1, 1, 1) (RetinaNet's, in Detectron and torchvision).

Losses, all normalised by the number of positive anchors in the batch (RetinaNet) unless said:

* ``bce``: ``fk.sigmoid_focal_loss(alpha=None, gamma=0)``; ``alpha_bce``: ``alpha=0.75,
  gamma=0`` (the paper's best alpha for CE, Table 1a); ``focal``: ``alpha=0.25, gamma=2``.
* ``ghmc``: ``fk.GHMCLoss(bins=30, momentum=0.75)``, loss weight 1. It normalises itself (its
  weights sum to the number of valid elements, which it divides by), so no ``num_pos``, as in
  the authors' code.
* ``qfl`` / ``vfl``: IoU-aware classification, ``fk.quality_focal_loss(beta=2)`` (GFL) and
  ``fk.varifocal_loss(alpha=0.75, gamma=2)`` (VarifocalNet) on the class-index targets, each
  positive's target being the IoU of its decoded box (the predicted deltas at that anchor)
  with its ground truth, computed under no-grad every step as the GFL and VFNet heads do; the
  ignored anchors stay ignored, ``normalizer=num_pos`` (both papers). The score threshold and
  NMS at inference are the same for every loss (the sigmoid output is then the joint
  class-and-quality score these losses train).
* ``smooth_l1``: on deltas, ``beta = 1/9`` (Detectron's RetinaNet), summed over the 4
  coordinates, / num_pos.
* ``ghmr``: ``fk.GHMRLoss(mu=0.02, bins=10, momentum=0.7)`` on the positives' deltas, loss
  weight 10 (the authors' setting). Its own normaliser is ``N`` = the number of coordinates,
  ``4 num_pos``, so weight 10 is 2.5 per positive anchor and ASL1 ~ |d|: about 2.5x smooth L1's
  scale (/ num_pos, summed over coordinates), and the GHM weights average to 1. The
  normalisers are the authors' (mmdetection's ``ghm`` config: GHM-R divides by the sum of the
  box label weights, the classification loss by num_pos), so weight 10 keeps their box/cls
  balance and is kept. Checked on a validation split (test seed 3003, seed 0, default
  setting): weight 10 / 4 / 1 gave AP 0.056 / 0.127 / 0.151 against smooth L1's 0.218, so
  the weight matters but GHM-R trails smooth L1 at all three here.
* ``giou`` / ``ciou`` / ``eiou`` / ``focal_eiou`` (gamma 0.5): the predicted deltas are
  decoded to boxes and the loss applied to (decoded box, gt box) pairs, ``normalizer=num_pos``,
  loss weight 1 (``iou_loss_weight``): ``1 - GIoU`` of an anchor-quality match is 0.2..0.6 per
  positive, the same order as smooth L1's summed deltas, so no re-scaling is needed.
* ``siou`` (``fk.siou_loss``, the paper's sign, theta 4), ``inner_ciou``
  (``fk.ciou_loss(inner_ratio=0.7)``, Inner-CIoU with the common downstream ratio: positives
  are matched at IoU >= 0.5, the high-IoU regime the paper gives ratios < 1 for) and
  ``wiou`` (Wise-IoU v3 through ``fk.WIoULoss``, so its running mean of ``1 - IoU`` is state
  of the run's criterion, updated before each training step's loss): decoded boxes as above,
  ``normalizer=num_pos``, loss weight 1. Wise-IoU's momentum follows the authors' rule
  ``m = 1 - 0.05^(1 / (n t))`` (:func:`focalkit.wiou_momentum`) with ``n t`` = ``min_steps``
  (``n`` batches per epoch times ``t``, the epoch where mAP stops rising quickly, taken as
  the shortest run the plateau rule allows): their default ``n t = 890 * 34`` would leave
  the mean at its start, 1.0, for a run of a few hundred steps.

Optimisation (:mod:`.train`): AdamW (lr ``lr``, weight decay ``weight_decay``), a linear
warm-up over ``warmup_steps`` then a constant learning rate, and an exponential moving average
of the weights (``ema_decay``). Every loss trains until its validation AP stops improving
(:class:`focalkit.demo.plateau.PlateauRule`: COCO AP of the EMA weights on the validation
split every ``eval_every`` steps; stop after ``patience`` evaluations without a gain of
``min_delta``, not before ``min_steps``, at ``max_steps`` at the latest); the EMA weights of the
best validation evaluation are tested. The validation split is carved from the training
stream (scenes ``num_train .. num_train + num_val - 1`` of the training seed), never the test
set. AdamW rather than RetinaNet's SGD: it trains the tiny network in a few hundred CPU steps
and is insensitive to the loss scale, which differs by orders of magnitude between BCE (every
negative counts) and focal loss; the same optimiser is used for every loss.

Inference: sigmoid scores > 0.05, the ``pre_nms_topk`` best (anchor, class) pairs per level,
decode, per-class NMS at IoU 0.5, at most 100 detections per image.

Record (:func:`run_detection`): ``metrics`` (COCOeval stats 0-3 on the test split, of the
kept model), ``validation`` (the validation AP at every evaluation, the best one's step and
value, where and why the run stopped), ``steps`` (steps trained), ``curve`` (training losses,
each point the mean over its window of steps), ``anchors`` (measured on the train split, incl.
the best-anchor positives), ``grad_norm_hist`` (``|sigmoid(x) - y|`` of every valid
(anchor, class) pair of the test split, 30 bins), ``cumulative_loss`` (Fig. 4 of the focal
loss paper on the test split's pairs), ``examples`` (the first ``num_examples`` test scenes:
``pred`` rows ``[x1, y1, x2, y2, score, label]`` with score > ``example_score``, ``true``
rows ``[x1, y1, x2, y2, label]``, labels 0-based indices into ``CLASS_NAMES``; the image is
``render_scene(setting, "test", index)``), ``annotations`` (the test ground truth, relative
to ``workdir``) and ``time_s`` (the whole call).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..plateau import PlateauRule
from . import BOX_LOSSES, CLS_LOSSES, DEFAULT_BOX, DEFAULT_CLS
from .boxes import assign_targets, decode_boxes, encode_boxes, grid_anchors
from .data import (
    CLASS_NAMES,
    SceneSet,
    SceneSpec,
    coco_dict,
    generate_scene,
    load_scenes,
    write_coco,
)
from .evaluate import coco_evaluate, cumulative_loss, gradient_norm_histogram, postprocess
from .model import TinyRetinaNet
from .train import train_with_plateau

__all__ = [
    "BOX_LOSSES",
    "CLASS_NAMES",
    "CLS_LOSSES",
    "DEFAULT_BOX",
    "DEFAULT_CLS",
    "STRIDES",
    "DetectionSetting",
    "anchor_statistics",
    "detection_runs",
    "detection_setting",
    "render_scene",
    "run_detection",
]

STRIDES = (8, 16)  # feature levels of TinyRetinaNet (P3, P4)
IGNORE = -100
NUM_CLASSES = len(CLASS_NAMES)
_ASSIGN_CHUNK = 64  # images per assignment call (the IoU tensor is chunk x A x G)

# (alpha, gamma) of the sigmoid-focal family
_FOCAL_FAMILY = {"bce": (None, 0.0), "alpha_bce": (0.75, 0.0), "focal": (0.25, 2.0)}
_IOU_AWARE = ("qfl", "vfl")  # their positives' targets: the IoU of the decoded box


@dataclass(frozen=True)
class DetectionSetting:
    """Every size, step and learning-rate knob of the detection study."""

    preset: str
    # data
    image_size: int = 96
    num_train: int = 256
    num_val: int = 48  # carved from the training stream (scenes after the training ones)
    num_test: int = 100
    min_objects: int = 2
    max_objects: int = 4
    min_size: float = 8.0
    max_size: float = 32.0
    train_seed: int = 1001
    test_seed: int = 2002
    # anchors and assignment (sizes at level l: anchor_base[l] * scale, for each ratio h/w)
    anchor_base: tuple[float, ...] = (12.0, 24.0)
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    # model
    width: int = 16
    head_width: int = 32
    head_convs: int = 1
    # optimisation (identical for every loss) and the plateau rule on validation AP
    batch_size: int = 8
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 40
    ema_decay: float = 0.99
    eval_every: int = 100
    patience: int = 3
    min_delta: float = 0.005
    min_steps: int = 400
    max_steps: int = 3000
    # box coding and loss weights
    box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 1 / 9
    iou_loss_weight: float = 1.0
    ghmr_loss_weight: float = 10.0
    # inference
    score_thresh: float = 0.05
    pre_nms_topk: int = 300
    nms_iou: float = 0.5
    max_detections: int = 100
    num_examples: int = 4
    example_score: float = 0.3
    # CPU intra-op threads used by a run (restored afterwards); see run_detection
    cpu_threads: int = 1

    def scene_spec(self, split: str) -> SceneSpec:
        """``"train"``, ``"val"`` (the training stream's next ``num_val`` scenes) or
        ``"test"`` (another seed)."""
        counts = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        if split not in counts:
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
        return SceneSpec(
            image_size=self.image_size,
            num_images=counts[split],
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            min_size=self.min_size,
            max_size=self.max_size,
            seed=self.test_seed if split == "test" else self.train_seed,
            offset=self.num_train if split == "val" else 0,
        )

    def plateau_rule(self) -> PlateauRule:
        return PlateauRule.of(self)


_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "num_train": 64,
        "num_val": 16,
        "image_size": 64,
        "num_test": 24,
        "warmup_steps": 5,
        "eval_every": 20,
        "patience": 1,
        "min_steps": 20,
        "max_steps": 40,
    },
    "default": {},
    "full": {
        "image_size": 256,
        "min_size": 6.0,
        "max_size": 44.0,
        "lr": 2e-3,
        "num_train": 2000,
        "num_test": 500,
        "max_objects": 10,
        "width": 64,
        "head_width": 128,
        "head_convs": 2,
        "max_steps": 12000,
        "min_steps": 2000,
        "eval_every": 250,
        "patience": 4,
        "num_val": 200,
        "batch_size": 16,
        "warmup_steps": 200,
        "pre_nms_topk": 1000,
    },
}


def detection_setting(preset: str) -> DetectionSetting:
    """``"quick"`` (the test suite), ``"default"`` (the CPU demo) or ``"full"`` (a GPU)."""
    if preset not in _PRESETS:
        raise ValueError(f"preset: expected one of {sorted(_PRESETS)}, got {preset!r}")
    return DetectionSetting(preset=preset, **_PRESETS[preset])


def detection_runs() -> list[tuple[str, str]]:
    """``(cls_loss, box_loss)`` pairs: every classification loss with the default box loss,
    then every other box loss with the default classification loss (12 runs)."""
    runs = [(cls, DEFAULT_BOX) for cls in CLS_LOSSES]
    runs += [(DEFAULT_CLS, box) for box in BOX_LOSSES if box != DEFAULT_BOX]
    return runs


def render_scene(setting: DetectionSetting, split: str, index: int) -> np.ndarray:
    """Image ``index`` of a split, ``(S, S, 3)`` uint8, the same pixels the study used
    (COCO image id ``index + 1``)."""
    spec = setting.scene_spec(split)
    if not 0 <= index < spec.num_images:
        raise ValueError(f"index: expected 0 <= index < {spec.num_images}, got {index}")
    return generate_scene(spec, index)[0]


# --------------------------------------------------------------------------------------------
# anchors and targets
# --------------------------------------------------------------------------------------------


def _anchors(setting: DetectionSetting) -> tuple[Tensor, list[int]]:
    if setting.image_size % STRIDES[-1]:
        raise ValueError(
            f"image_size: expected a multiple of {STRIDES[-1]}, got {setting.image_size}"
        )
    if len(setting.anchor_base) != len(STRIDES):
        raise ValueError(
            f"anchor_base: expected {len(STRIDES)} sizes (one per level), got {setting.anchor_base}"
        )
    levels = []
    for stride, base in zip(STRIDES, setting.anchor_base, strict=True):
        sizes = [base * s for s in setting.anchor_scales]
        levels.append(
            grid_anchors(setting.image_size // stride, stride, sizes, setting.anchor_ratios)
        )
    return torch.cat(levels), [level.shape[0] for level in levels]


@dataclass(frozen=True)
class _Targets:
    labels: Tensor  # (N, A) int64
    boxes: Tensor  # (N, A, 4) matched gt box (0 where not positive)
    deltas: Tensor  # (N, A, 4) encoded matched gt box (0 where not positive)


def _targets(scenes: SceneSet, anchors: Tensor, setting: Any) -> _Targets:
    """Assignment of every image of a split, in chunks of images padded to a common ``G``."""
    return assign_boxes(scenes.boxes, scenes.labels, anchors, setting, NUM_CLASSES)


def assign_boxes(
    all_gt_boxes: Sequence[np.ndarray],
    all_gt_labels: Sequence[np.ndarray],
    anchors: Tensor,
    setting: Any,
    num_classes: int,
) -> _Targets:
    """RetinaNet targets of images with the same anchors (``setting``'s IoU thresholds and box
    weights), in chunks of images padded to a common number of boxes."""
    labels, boxes = [], []
    for start in range(0, len(all_gt_boxes), _ASSIGN_CHUNK):
        gt_boxes = all_gt_boxes[start : start + _ASSIGN_CHUNK]
        gt_labels = all_gt_labels[start : start + _ASSIGN_CHUNK]
        g = max(1, *(len(b) for b in gt_boxes))
        padded_boxes = torch.zeros(len(gt_boxes), g, 4)
        padded_labels = torch.full((len(gt_boxes), g), -1, dtype=torch.long)
        for i, (b, c) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
            padded_boxes[i, : len(b)] = torch.from_numpy(np.array(b))
            padded_labels[i, : len(c)] = torch.from_numpy(np.array(c))
        assignment = assign_targets(
            anchors,
            padded_boxes,
            padded_labels,
            num_classes,
            fg_iou=setting.fg_iou,
            bg_iou=setting.bg_iou,
            ignore_index=IGNORE,
        )
        positive = (assignment.labels >= 0) & (assignment.labels < num_classes)
        index = assignment.matched[..., None].expand(-1, -1, 4)
        matched = padded_boxes.gather(1, index)  # (n, A, 4)
        boxes.append(torch.where(positive[..., None], matched, 0.0))
        labels.append(assignment.labels)
    all_boxes = torch.cat(boxes)
    all_labels = torch.cat(labels)
    positive = (all_labels >= 0) & (all_labels < num_classes)
    deltas = torch.zeros_like(all_boxes)
    deltas[positive] = encode_boxes(
        all_boxes[positive], anchors.expand_as(all_boxes)[positive], setting.box_weights
    )
    return _Targets(all_labels, all_boxes, deltas)


def anchor_statistics(setting: DetectionSetting) -> dict:
    """Anchors per image and positive / background anchors per training image."""
    anchors, _ = _anchors(setting)
    targets = _targets(load_scenes(setting.scene_spec("train")), anchors, setting)
    return _anchor_stats(targets.labels)


def _anchor_stats(labels: Tensor, num_classes: int = NUM_CLASSES) -> dict:
    fg = float(((labels >= 0) & (labels < num_classes)).sum(dim=1).double().mean())
    bg = float((labels == num_classes).sum(dim=1).double().mean())
    return {
        "num_anchors": int(labels.shape[1]),
        "fg_per_image": fg,
        "bg_per_image": bg,
        "fg_bg_ratio": fg / max(bg, 1.0),
    }


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


def _check_losses(cls_loss: str, box_loss: str) -> None:
    if cls_loss not in CLS_LOSSES:
        raise ValueError(f"cls_loss: expected one of {CLS_LOSSES}, got {cls_loss!r}")
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss: expected one of {BOX_LOSSES}, got {box_loss!r}")


class _Criterion(nn.Module):
    """The (classification, box) loss pair of one run; GHM Modules keep their EMA here."""

    def __init__(
        self, cls_loss: str, box_loss: str, setting: Any, num_classes: int = NUM_CLASSES
    ) -> None:
        super().__init__()
        import focalkit as fk

        _check_losses(cls_loss, box_loss)
        self.cls_loss, self.box_loss, self.setting = cls_loss, box_loss, setting
        self.num_classes = num_classes
        self.ghmc = fk.GHMCLoss(bins=30, momentum=0.75) if cls_loss == "ghmc" else None
        self.ghmr = fk.GHMRLoss(mu=0.02, bins=10, momentum=0.7) if box_loss == "ghmr" else None
        # Wise-IoU v3 keeps its running mean of 1 - IoU as Module state; n t = min_steps
        momentum = fk.wiou_momentum(1, max(1, setting.min_steps))
        self.wiou = fk.WIoULoss(version=3, momentum=momentum) if box_loss == "wiou" else None

    def forward(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: _Targets
    ) -> tuple[Tensor, Tensor]:
        import focalkit as fk

        num_classes = self.num_classes
        labels = targets.labels.reshape(-1)
        flat_logits = logits.reshape(-1, num_classes)
        positive = (labels >= 0) & (labels < num_classes)
        num_pos = positive.sum()
        if self.ghmc is not None:
            loss_cls = self.ghmc(flat_logits, labels)
        elif self.cls_loss in _IOU_AWARE:
            scores = _positive_ious(deltas, anchors, targets, positive, self.setting)
            iou_aware = fk.quality_focal_loss if self.cls_loss == "qfl" else fk.varifocal_loss
            loss_cls = iou_aware(
                flat_logits, labels, scores, ignore_index=IGNORE, normalizer=num_pos
            )
        else:
            alpha, gamma = _FOCAL_FAMILY[self.cls_loss]
            loss_cls = fk.sigmoid_focal_loss(
                flat_logits,
                labels,
                alpha=alpha,
                gamma=gamma,
                ignore_index=IGNORE,
                normalizer=num_pos,
            )

        pred = deltas.reshape(-1, 4)[positive]
        setting = self.setting
        if self.box_loss == "smooth_l1":
            target = targets.deltas.reshape(-1, 4)[positive]
            total = F.smooth_l1_loss(pred, target, beta=setting.smooth_l1_beta, reduction="sum")
            loss_box = total / num_pos.clamp(min=1)
        elif self.ghmr is not None:
            target = targets.deltas.reshape(-1, 4)[positive]
            loss_box = setting.ghmr_loss_weight * self.ghmr(pred, target)
        else:
            anchor_boxes = anchors.expand(logits.shape[0], -1, -1).reshape(-1, 4)[positive]
            pred_boxes = decode_boxes(pred, anchor_boxes, setting.box_weights)
            target_boxes = targets.boxes.reshape(-1, 4)[positive]
            if self.wiou is not None:
                loss_box = self.wiou(pred_boxes, target_boxes, normalizer=num_pos)
            elif self.box_loss == "inner_ciou":
                loss_box = fk.ciou_loss(
                    pred_boxes, target_boxes, inner_ratio=0.7, normalizer=num_pos
                )
            else:
                fn = getattr(fk, f"{self.box_loss}_loss")
                loss_box = fn(pred_boxes, target_boxes, normalizer=num_pos)
            loss_box = setting.iou_loss_weight * loss_box
        return loss_cls, loss_box


@torch.no_grad()
def _positive_ious(
    deltas: Tensor, anchors: Tensor, targets: _Targets, positive: Tensor, setting: Any
) -> Tensor:
    """``(N * A,)``: at each positive anchor the IoU of its decoded box with its ground truth
    (a constant of the classification loss, as in the GFL and VFNet heads), 0 elsewhere."""
    pred = deltas.reshape(-1, 4)[positive]
    anchor_boxes = anchors.expand(deltas.shape[0], -1, -1).reshape(-1, 4)[positive]
    boxes = decode_boxes(pred.float(), anchor_boxes, setting.box_weights)
    gt = targets.boxes.reshape(-1, 4)[positive]
    lt = torch.maximum(boxes[:, :2], gt[:, :2])
    rb = torch.minimum(boxes[:, 2:], gt[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (boxes[:, 2:] - boxes[:, :2]).prod(-1) + (gt[:, 2:] - gt[:, :2]).prod(-1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), 0.0).clamp(0, 1)
    scores = torch.zeros(positive.shape, dtype=torch.float32, device=deltas.device)
    return scores.masked_scatter_(positive, iou)


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------


def _to_input(images: np.ndarray, device: torch.device) -> Tensor:
    x = torch.tensor(images, device=device).permute(0, 3, 1, 2).float()
    return ((x / 255.0 - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)


def _annotation_files(setting: DetectionSetting, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    paths = {}
    for split in ("train", "val", "test"):
        spec = setting.scene_spec(split)
        path = workdir / f"scenes-{spec.key()}" / f"{split}.json"
        if not path.exists():
            write_coco(path, coco_dict(spec, load_scenes(spec), split))
        paths[split] = path
    return paths


@torch.no_grad()
def _predict(model: nn.Module, scenes: SceneSet, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    model.eval()
    device = next(model.parameters()).device
    logits, deltas = [], []
    for start in range(0, scenes.images.shape[0], batch_size):
        out = model(_to_input(scenes.images[start : start + batch_size], device))
        logits.append(out[0].cpu())
        deltas.append(out[1].cpu())
    return torch.cat(logits), torch.cat(deltas)


def _detections(
    logits: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    level_sizes: list[int],
    setting: DetectionSetting,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    return [
        postprocess(
            logits[i],
            deltas[i],
            anchors,
            level_sizes,
            image_size=setting.image_size,
            box_weights=setting.box_weights,
            score_thresh=setting.score_thresh,
            pre_nms_topk=setting.pre_nms_topk,
            nms_iou=setting.nms_iou,
            max_detections=setting.max_detections,
        )
        for i in range(logits.shape[0])
    ]


def _coco_results(detections: list[tuple[Tensor, Tensor, Tensor]]) -> list[dict]:
    results = []
    for i, (boxes, scores, labels) in enumerate(detections):
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(score, 5),
                }
            )
    return results


def _examples(
    detections: list[tuple[Tensor, Tensor, Tensor]], scenes: SceneSet, setting: DetectionSetting
) -> list[dict]:
    examples = []
    for i in range(min(setting.num_examples, len(detections))):
        boxes, scores, labels = detections[i]
        keep = scores > setting.example_score
        pred = [
            [round(v, 2) for v in box] + [round(score, 4), label]
            for box, score, label in zip(
                boxes[keep].tolist(), scores[keep].tolist(), labels[keep].tolist(), strict=True
            )
        ]
        true = [
            [round(float(v), 2) for v in box] + [int(label)]
            for box, label in zip(scenes.boxes[i], scenes.labels[i], strict=True)
        ]
        examples.append({"split": "test", "index": i, "pred": pred, "true": true})
    return examples


def _record_setting(setting: DetectionSetting) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(setting).items()}


def run_detection(
    cls_loss: str,
    box_loss: str,
    seed: int,
    setting: DetectionSetting,
    *,
    device: str = "cpu",
    workdir: pathlib.Path,
    progress: Callable[[int, int], object] | None = None,
) -> dict:
    """Train the detector with one (classification, box) loss pair and evaluate it on the
    held-out scenes with COCOeval. Returns a JSON-serialisable record (see the module doc).

    ``progress(done, total)`` is called after every training step.

    On CPU the run uses ``setting.cpu_threads`` intra-op threads (1 by default; the previous
    count is restored): the network's convolutions are small, results are then bit-identical
    whatever the machine's core count, and on a busy 2-core machine (pytest-xdist, other
    jobs) two threads were measured 5-50x slower than one (every small op waits on a
    descheduled thread). Runs are deterministic for a given seed and thread count (on CPU
    every op used is; on an accelerator ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` is set for the run).
    """
    _check_losses(cls_loss, box_loss)
    start_time = time.perf_counter()
    workdir = pathlib.Path(workdir)
    dev = torch.device(device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(setting.cpu_threads)
    else:  # every op used here is deterministic on CPU; the flag's first call costs ~2 s
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        train = load_scenes(setting.scene_spec("train"))
        test = load_scenes(setting.scene_spec("test"))
        files = _annotation_files(setting, workdir)
        anchors, level_sizes = _anchors(setting)
        train_targets = _targets(train, anchors, setting)
        test_targets = _targets(test, anchors, setting)

        val = load_scenes(setting.scene_spec("val"))
        torch.manual_seed(seed)
        model = TinyRetinaNet(
            NUM_CLASSES,
            len(setting.anchor_scales) * len(setting.anchor_ratios),
            width=setting.width,
            head_width=setting.head_width,
            head_convs=setting.head_convs,
        )
        criterion = _Criterion(cls_loss, box_loss, setting)
        model.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]  # ~20 % faster convolutions on CPU
        criterion.to(dev)
        dev_anchors = anchors.to(dev)
        dev_targets = _Targets(
            *(t.to(dev) for t in (train_targets.labels, train_targets.boxes, train_targets.deltas))
        )
        order = torch.Generator().manual_seed(seed)
        num_images = train.images.shape[0]
        state: dict[str, Any] = {
            "permutation": torch.randperm(num_images, generator=order),
            "cursor": 0,
        }

        def loss_fn(net: nn.Module, step: int) -> tuple[Tensor, Tensor]:
            if state["cursor"] + setting.batch_size > num_images:
                state["permutation"], state["cursor"] = (
                    torch.randperm(num_images, generator=order),
                    0,
                )
            index = state["permutation"][state["cursor"] : state["cursor"] + setting.batch_size]
            state["cursor"] += setting.batch_size
            on_device = index.to(dev)
            batch = _Targets(
                dev_targets.labels[on_device],
                dev_targets.boxes[on_device],
                dev_targets.deltas[on_device],
            )
            logits, deltas = net(_to_input(train.images[index.numpy()], dev))
            return criterion(logits, deltas, dev_anchors, batch)

        def validate(net: nn.Module) -> float:
            logits, deltas = _predict(net, val)
            found = _detections(logits, deltas, anchors, level_sizes, setting)
            return coco_evaluate(files["val"], _coco_results(found))["AP"]

        result = train_with_plateau(
            model,
            loss_fn,
            validate,
            setting.plateau_rule(),
            lr=setting.lr,
            weight_decay=setting.weight_decay,
            warmup_steps=setting.warmup_steps,
            ema_decay=setting.ema_decay,
            progress=progress,
        )
        model.load_state_dict(result.best_state)

        logits, deltas = _predict(model, test)
        detections = _detections(logits, deltas, anchors, level_sizes, setting)
        metrics = coco_evaluate(files["test"], _coco_results(detections))
        record = {
            "study": "detection",
            "cls_loss": cls_loss,
            "box_loss": box_loss,
            "seed": seed,
            "setting": _record_setting(setting),
            "metrics": metrics,
            "validation": result.validation,
            "steps": result.steps,
            "curve": result.curve,
            "anchors": _anchor_stats(train_targets.labels),
            "grad_norm_hist": gradient_norm_histogram(logits, test_targets.labels),
            "cumulative_loss": cumulative_loss(logits, test_targets.labels),
            "examples": _examples(detections, test, setting),
            "annotations": files["test"].relative_to(workdir).as_posix(),
        }
    finally:
        if dev.type != "cpu":
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)
    record["time_s"] = time.perf_counter() - start_time
    return record

"""Study 3: tree crowns in real aerial photographs (NEON, from the DeepForest wheel), one
class, evaluated with pycocotools' COCOeval on the original annotations.

Data (:mod:`.neon`): the two Yellowstone tiles cut into strips by column, the left 60 % of
each for training, the next 20 % for validation (the plateau rule's yardstick), the right
20 % for the test; OSBS_029 and SOAP_061 (two other sites) as a transfer test. Images are
resampled by ``scale`` (a 2 x 2 box filter at 0.5: 20 cm per pixel) before the detector sees
them; predicted boxes are scaled back, so COCOeval compares them with the annotation files'
own numbers. Training crops (``patch`` pixels after scaling) are drawn from the training
strips (a strip chosen in proportion to its area) at random positions with a random rotation
by a multiple of 90 degrees and a random flip (aerial views have no up), from a generator
seeded by the run's seed; a crown cut by the crop's border is kept (clipped) when at least
half of its box is inside, else dropped.

Detector: the demo's :class:`~.model.TinyRetinaNet` (the same code as Study 2, one class,
anchors sized for crowns), or, with ``detector="torchvision"`` (the ``full`` preset, when
torchvision imports), torchvision's ``RetinaNet`` on a ResNet-18 FPN backbone without
pretrained weights, its losses replaced through :func:`focalkit.integrations.torchvision.
set_losses`. Losses and their settings are Study 2's (:class:`.study._Criterion`); training
is :func:`.train.train_with_plateau` with validation AP50 as the yardstick. The tiny
detector sees at inference what it saw in training: windows of ``patch`` pixels (overlapping
by a quarter), their detections merged by NMS; its GroupNorm statistics would otherwise be
taken over a whole strip instead of a crop.

Record (:func:`run_trees`): ``metrics`` (COCO AP, AP50, AP75, AP_small, AP_medium, AP_large on
the test strips; ``AP_transfer``, ``AP50_transfer`` on the other sites' images and
``AP50_OSBS``, ``AP50_SOAP`` per site), ``validation``, ``steps``, ``curve``, ``examples``
(each test and transfer image's predictions with score >= ``example_score`` and its true
boxes, in the image's pixels), ``annotations`` (the test ground truth written as COCO json,
relative to ``workdir``), ``time_s``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..plateau import PlateauRule
from . import neon
from .boxes import grid_anchors, nms
from .evaluate import coco_evaluate, postprocess
from .model import TinyRetinaNet
from .study import STRIDES, _check_losses, _Criterion, _Targets, assign_boxes
from .train import train_with_plateau

__all__ = [
    "DETECTORS",
    "TreesSetting",
    "augment",
    "random_crop",
    "run_trees",
    "trees_runs",
    "trees_setting",
]

DETECTORS = ("tiny", "torchvision")
NUM_CLASSES = 1


@dataclass(frozen=True)
class TreesSetting:
    """Every knob of the tree-crown study; ``runs`` lists its (detector, cls, box) runs."""

    preset: str
    scale: float = 0.5  # image resampling before the detector (0.5: 20 cm per pixel)
    patch: int = 128  # training crop side, pixels after scaling
    min_visible: float = 0.5  # a clipped crown is kept when this share of its box is inside
    # anchors (per level: base * scale for each ratio h/w), assignment
    anchor_base: tuple[float, ...] = (10.0, 20.0)
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    # model
    width: int = 24
    head_width: int = 48
    head_convs: int = 1
    # optimisation and the plateau rule (validation AP)
    batch_size: int = 8
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 40
    ema_decay: float = 0.99
    eval_every: int = 100
    patience: int = 3
    min_delta: float = 0.005
    min_steps: int = 1000  # GHM-C starts slowly (Study 2): no plateau read before this
    max_steps: int = 1500  # the reduced CPU budget
    # losses (as in Study 2)
    box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 1 / 9
    iou_loss_weight: float = 1.0
    ghmr_loss_weight: float = 10.0
    # inference
    score_thresh: float = 0.05
    pre_nms_topk: int = 1000
    nms_iou: float = 0.5
    max_detections: int = 500  # per image; the largest strip holds 280 crowns
    window_detections: int = 100  # per inference window (a crop holds about 20 crowns)
    example_score: float = 0.3
    cpu_threads: int = 1
    # the runs: (detector, cls_loss, box_loss)
    runs: tuple[tuple[str, str, str], ...] = (
        ("tiny", "bce", "smooth_l1"),
        ("tiny", "focal", "smooth_l1"),
        ("tiny", "ghmc", "smooth_l1"),
    )

    def plateau_rule(self) -> PlateauRule:
        return PlateauRule.of(self)


_ALL_CLS = ("bce", "alpha_bce", "focal", "ghmc", "qfl", "vfl")
_ALL_BOX = ("giou", "ciou", "eiou", "focal_eiou", "ghmr", "siou", "wiou", "inner_ciou")
_FULL_RUNS = tuple(("tiny", c, "smooth_l1") for c in _ALL_CLS) + tuple(
    ("tiny", "focal", b) for b in _ALL_BOX
)
_TV_RUNS = (
    ("torchvision", "focal", "smooth_l1"),
    ("torchvision", "bce", "smooth_l1"),
    ("torchvision", "ghmc", "smooth_l1"),
    ("torchvision", "focal", "giou"),
)

_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "patch": 96,
        "eval_every": 20,
        "patience": 1,
        "min_steps": 20,
        "max_steps": 40,
        "warmup_steps": 5,
        "runs": (("tiny", "focal", "smooth_l1"), ("tiny", "ghmc", "smooth_l1")),
    },
    "default": {},
    "full": {
        "scale": 1.0,
        "patch": 256,
        "anchor_base": (20.0, 40.0),
        "width": 32,
        "head_width": 64,
        "head_convs": 2,
        "batch_size": 8,
        "lr": 2e-3,
        "eval_every": 250,
        "patience": 4,
        "min_steps": 1000,
        "max_steps": 20000,
        "runs": _FULL_RUNS,
    },
}


def _torchvision_available() -> bool:
    from focalkit._optional import optional_import

    module, _ = optional_import("torchvision.models.detection")
    return module is not None


def trees_setting(preset: str) -> TreesSetting:
    """``"quick"`` (tests), ``"default"`` (a reduced CPU version: half resolution, three
    classification losses, at most 1000 steps) or ``"full"`` (full resolution, every loss of
    Study 2 trained to its plateau, and torchvision's RetinaNet when torchvision imports)."""
    if preset not in _PRESETS:
        raise ValueError(f"preset: expected one of {sorted(_PRESETS)}, got {preset!r}")
    setting = TreesSetting(preset=preset, **_PRESETS[preset])
    if preset == "full" and _torchvision_available():
        setting = dataclasses.replace(setting, runs=setting.runs + _TV_RUNS)
    return setting


def trees_runs(setting: TreesSetting) -> list[tuple[str, str, str]]:
    """The setting's ``(detector, cls_loss, box_loss)`` runs."""
    return [tuple(run) for run in setting.runs]  # type: ignore[misc]


def run_name(detector: str, cls_loss: str, box_loss: str) -> str:
    return f"{cls_loss}-{box_loss}" if detector == "tiny" else f"{detector}-{cls_loss}-{box_loss}"


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def scaled_image(tile: neon.Tile, scale: float) -> np.ndarray:
    """The tile resampled by ``scale`` (PIL's box filter when shrinking), uint8 (H, W, 3)."""
    if scale == 1.0:
        return tile.image
    from PIL import Image

    height, width = tile.size
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = Image.fromarray(np.ascontiguousarray(tile.image))
    return np.asarray(picture.resize(size, Image.Resampling.BOX), dtype=np.uint8)


def random_crop(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int,
    rng: np.random.Generator,
    min_visible: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` crop at a random position and the boxes in it: clipped to the
    crop, kept when at least ``min_visible`` of the box's area is inside."""
    height, width = image.shape[:2]
    y0 = int(rng.integers(0, height - size + 1))
    x0 = int(rng.integers(0, width - size + 1))
    crop = image[y0 : y0 + size, x0 : x0 + size]
    shifted = boxes - np.array([x0, y0, x0, y0], np.float32)
    clipped = np.clip(shifted, 0, size)
    area = np.prod(shifted[:, 2:] - shifted[:, :2], axis=1)
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    keep = (inside >= min_visible * np.maximum(area, 1e-9)) & (inside > 0)
    return crop, clipped[keep].astype(np.float32)


def augment(
    image: np.ndarray, boxes: np.ndarray, quarter_turns: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a square image by ``quarter_turns`` x 90 degrees counter-clockwise (``np.rot90``)
    then mirror it left-right if ``flip``; the boxes follow."""
    size = image.shape[0]
    out = boxes.copy()
    for _ in range(quarter_turns % 4):
        # (x, y) -> (y, size - x) for np.rot90 (counter-clockwise)
        x1, y1, x2, y2 = out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy(), out[:, 3].copy()
        out = np.stack([y1, size - x2, y2, size - x1], axis=1)
    image = np.rot90(image, quarter_turns % 4)
    if flip:
        image = image[:, ::-1]
        out = np.stack([size - out[:, 2], out[:, 1], size - out[:, 0], out[:, 3]], axis=1)
    return np.ascontiguousarray(image), out.astype(np.float32)


def _to_input(images: np.ndarray, device: torch.device) -> Tensor:
    x = torch.tensor(np.ascontiguousarray(images), device=device).permute(0, 3, 1, 2).float()
    return ((x / 255.0 - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)


def _anchors(setting: TreesSetting, height: int, width: int) -> tuple[Tensor, list[int]]:
    """Anchors of a (padded) input of ``height`` x ``width``, P3 then P4."""
    levels = []
    for stride, base in zip(STRIDES, setting.anchor_base, strict=True):
        sizes = [base * s for s in setting.anchor_scales]
        levels.append(
            grid_anchors((height // stride, width // stride), stride, sizes, setting.anchor_ratios)
        )
    return torch.cat(levels), [level.shape[0] for level in levels]


# --------------------------------------------------------------------------------------------
# inference and evaluation
# --------------------------------------------------------------------------------------------


def _windows(length: int, size: int) -> list[int]:
    """Start offsets of windows of ``size`` covering ``length`` with a quarter's overlap."""
    step = max(1, (3 * size) // 4)
    starts = list(range(0, max(1, length - size + 1), step))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


@torch.no_grad()
def _detect_tiny(
    model: nn.Module, image: np.ndarray, setting: TreesSetting
) -> tuple[Tensor, Tensor]:
    """Boxes (in the scaled image's pixels) and scores of one image: the detections of every
    ``patch``-pixel window (the training crops' size; the image is zero-padded to at least
    one window), shifted to the image and merged by NMS."""
    height, width = image.shape[:2]
    size = setting.patch
    padded = np.pad(image, ((0, max(0, size - height)), (0, max(0, size - width)), (0, 0)))
    corners = [
        (y, x) for y in _windows(padded.shape[0], size) for x in _windows(padded.shape[1], size)
    ]
    anchors, level_sizes = _anchors(setting, size, size)
    device = next(model.parameters()).device
    boxes, scores = [], []
    for first in range(0, len(corners), setting.batch_size):
        batch = corners[first : first + setting.batch_size]
        crops = np.stack([padded[y : y + size, x : x + size] for y, x in batch])
        logits, deltas = model(_to_input(crops, device))
        for k, (y, x) in enumerate(batch):
            found, score, _labels = postprocess(
                logits[k].cpu(),
                deltas[k].cpu(),
                anchors,
                level_sizes,
                image_size=size,
                box_weights=setting.box_weights,
                score_thresh=setting.score_thresh,
                pre_nms_topk=setting.window_detections,
                nms_iou=setting.nms_iou,
                max_detections=setting.window_detections,
            )
            boxes.append(found + torch.tensor([x, y, x, y], dtype=found.dtype))
            scores.append(score)
    all_boxes = torch.minimum(
        torch.cat(boxes), torch.tensor([width, height, width, height], dtype=torch.float32)
    )
    all_scores = torch.cat(scores)
    top = all_scores.topk(min(len(all_scores), 4 * setting.max_detections)).indices
    all_boxes, all_scores = all_boxes[top], all_scores[top]
    keep = nms(all_boxes, all_scores, setting.nms_iou)[: setting.max_detections]
    return all_boxes[keep], all_scores[keep]


def _coco_results(found: Sequence[tuple[Tensor, Tensor]], scale: float) -> list[dict]:
    results = []
    for image_id, (boxes, scores) in enumerate(found, start=1):
        for (x1, y1, x2, y2), score in zip((boxes / scale).tolist(), scores.tolist(), strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(score, 5),
                }
            )
    return results


def annotation_files(wheel: pathlib.Path, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """The validation, test and transfer ground truth as COCO json (written once,
    atomically; the file name says which split version it holds)."""
    paths = {}
    for split in ("val", "test", "transfer"):
        path = workdir / f"neon-{split}-strips.json"
        if not path.exists():
            neon.write_json(path, neon.coco_dict(neon.split_tiles(wheel, split), split))
        paths[split] = path
    return paths


# --------------------------------------------------------------------------------------------
# the torchvision detector (full preset)
# --------------------------------------------------------------------------------------------


def _torchvision_model(setting: TreesSetting, cls_loss: str, box_loss: str) -> nn.Module:
    """torchvision's RetinaNet, ResNet-18 FPN (P3-P7), no pretrained weights, one class;
    anchors 32..512 as torchvision's default scaled by ``scale``; no resizing transform."""
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from focalkit.integrations import torchvision as fk_tv

    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(256, 256),
    )
    base = [16 * setting.scale * 2 ** (i + 1) for i in range(5)]  # 32..512 at scale 1
    anchors = AnchorGenerator(
        tuple((b, b * 2 ** (1 / 3), b * 2 ** (2 / 3)) for b in base),
        ((0.5, 1.0, 2.0),) * 5,
    )
    side = setting.patch
    model = RetinaNet(
        backbone,
        num_classes=NUM_CLASSES + 1,  # torchvision's convention: label 0 is unused
        anchor_generator=anchors,
        min_size=side,
        max_size=4096,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        score_thresh=setting.score_thresh,
        nms_thresh=setting.nms_iou,
        detections_per_img=setting.max_detections,
        topk_candidates=setting.pre_nms_topk,
    )
    fk_tv.set_losses(model, classification=cls_loss, box=box_loss)
    return model


@torch.no_grad()
def _detect_torchvision(model: nn.Module, image: np.ndarray) -> tuple[Tensor, Tensor]:
    device = next(model.parameters()).device
    x = torch.tensor(np.ascontiguousarray(image), device=device).permute(2, 0, 1).float() / 255
    height, width = image.shape[:2]
    transform: Any = model.transform
    transform.min_size = (min(height, width),)
    transform.max_size = max(height, width)
    out = model([x])[0]
    return out["boxes"].cpu(), out["scores"].cpu()


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------


def _record_setting(setting: TreesSetting) -> dict:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {k: plain(v) for k, v in asdict(setting).items()}


def run_trees(
    cls_loss: str,
    box_loss: str,
    seed: int,
    setting: TreesSetting,
    *,
    detector: str = "tiny",
    device: str = "cpu",
    wheel: pathlib.Path,
    workdir: pathlib.Path,
    progress: Callable[[int, int], object] | None = None,
) -> dict:
    """Train a detector of tree crowns with one (classification, box) loss pair until its
    validation AP stops improving, and evaluate the kept model on the test images with
    COCOeval. Returns a JSON-ready record (see the module doc). One intra-op thread on CPU
    (``setting.cpu_threads``), as Study 2."""
    _check_losses(cls_loss, box_loss)
    if detector not in DETECTORS:
        raise ValueError(f"detector: expected one of {DETECTORS}, got {detector!r}")
    start_time = time.perf_counter()
    workdir = pathlib.Path(workdir)
    dev = torch.device(device)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(setting.cpu_threads)
    try:
        record = _run(cls_loss, box_loss, seed, setting, detector, dev, wheel, workdir, progress)
    finally:
        torch.set_num_threads(threads)
    record["time_s"] = time.perf_counter() - start_time
    return record


def _run(
    cls_loss: str,
    box_loss: str,
    seed: int,
    setting: TreesSetting,
    detector: str,
    dev: torch.device,
    wheel: pathlib.Path,
    workdir: pathlib.Path,
    progress: Callable[[int, int], object] | None,
) -> dict:
    files = annotation_files(wheel, workdir)
    train_tiles = neon.split_tiles(wheel, "train")
    val_tiles = neon.split_tiles(wheel, "val")
    test_tiles = neon.split_tiles(wheel, "test")
    transfer_tiles = neon.split_tiles(wheel, "transfer")
    train_images = [scaled_image(tile, setting.scale) for tile in train_tiles]
    train_boxes = [tile.boxes * np.float32(setting.scale) for tile in train_tiles]
    areas = np.array([image.shape[0] * image.shape[1] for image in train_images], np.float64)
    strip_weights = areas / areas.sum()  # a training crop's strip, in proportion to its area
    val_images = [scaled_image(tile, setting.scale) for tile in val_tiles]
    test_images = [scaled_image(tile, setting.scale) for tile in test_tiles]
    transfer_images = [scaled_image(tile, setting.scale) for tile in transfer_tiles]

    torch.manual_seed(seed)
    num_anchors = len(setting.anchor_scales) * len(setting.anchor_ratios)
    if detector == "tiny":
        model: nn.Module = TinyRetinaNet(
            NUM_CLASSES,
            num_anchors,
            width=setting.width,
            head_width=setting.head_width,
            head_convs=setting.head_convs,
        )
        model.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]
        criterion = _Criterion(cls_loss, box_loss, setting, num_classes=NUM_CLASSES).to(dev)
        anchors, _ = _anchors(setting, setting.patch, setting.patch)
        dev_anchors = anchors.to(dev)
    else:
        model = _torchvision_model(setting, cls_loss, box_loss).to(dev)
    rng = np.random.default_rng([seed, 7])

    def sample() -> tuple[np.ndarray, list[np.ndarray]]:
        images, boxes = [], []
        for _ in range(setting.batch_size):
            strip = int(rng.choice(len(train_images), p=strip_weights))
            crop, crop_boxes = random_crop(
                train_images[strip], train_boxes[strip], setting.patch, rng, setting.min_visible
            )
            crop, crop_boxes = augment(
                crop, crop_boxes, int(rng.integers(4)), bool(rng.integers(2))
            )
            images.append(crop)
            boxes.append(crop_boxes)
        return np.stack(images), boxes

    def loss_fn(net: nn.Module, step: int) -> tuple[Tensor, Tensor]:
        images, boxes = sample()
        if detector == "tiny":
            labels = [np.zeros(len(b), np.int64) for b in boxes]
            targets = assign_boxes(boxes, labels, anchors, setting, NUM_CLASSES)
            batch = _Targets(*(t.to(dev) for t in (targets.labels, targets.boxes, targets.deltas)))
            logits, deltas = net(_to_input(images, dev))
            return criterion(logits, deltas, dev_anchors, batch)
        x = [torch.tensor(im, device=dev).permute(2, 0, 1).float() / 255 for im in images]
        t = [
            {
                "boxes": torch.tensor(b, device=dev).reshape(-1, 4),
                "labels": torch.ones(len(b), dtype=torch.int64, device=dev),
            }
            for b in boxes
        ]
        transform: Any = net.transform
        transform.min_size = (setting.patch,)
        transform.max_size = setting.patch
        losses = net(x, t)
        box = sum(v for k, v in losses.items() if k != "classification")
        return losses["classification"], box

    def detect(net: nn.Module, image: np.ndarray) -> tuple[Tensor, Tensor]:
        if detector == "tiny":
            return _detect_tiny(net, image, setting)
        return _detect_torchvision(net, image)

    def validate(net: nn.Module) -> float:
        found = [detect(net, image) for image in val_images]
        results = _coco_results(found, setting.scale)
        return coco_evaluate(files["val"], results, max_detections=setting.max_detections, stats=2)[
            "AP50"
        ]

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
    model.eval()
    found = [detect(model, image) for image in test_images]
    results = _coco_results(found, setting.scale)
    metrics = coco_evaluate(files["test"], results, stats=6, max_detections=setting.max_detections)
    far = [detect(model, image) for image in transfer_images]
    far_results = _coco_results(far, setting.scale)
    transfer = coco_evaluate(files["transfer"], far_results, stats=2)
    metrics["AP_transfer"], metrics["AP50_transfer"] = transfer["AP"], transfer["AP50"]
    for image_id, tile in enumerate(transfer_tiles, start=1):
        metrics[f"AP50_{tile.site}"] = coco_evaluate(
            files["transfer"], far_results, image_ids=[image_id], stats=2
        )["AP50"]
    examples = []
    for split, tiles, detections in (
        ("test", test_tiles, found),
        ("transfer", transfer_tiles, far),
    ):
        for tile, (boxes, scores) in zip(tiles, detections, strict=True):
            keep = scores >= setting.example_score
            pred = [
                [round(v, 1) for v in box] + [round(score, 4), 0]
                for box, score in zip(
                    (boxes[keep] / setting.scale).tolist(), scores[keep].tolist(), strict=True
                )
            ]
            true = [[round(float(v), 1) for v in box] + [0] for box in tile.boxes]
            examples.append({"tile": tile.name, "split": split, "pred": pred, "true": true})
    return {
        "study": "trees",
        "detector": detector,
        "cls_loss": cls_loss,
        "box_loss": box_loss,
        "seed": seed,
        "setting": _record_setting(setting),
        "metrics": metrics,
        "validation": result.validation,
        "steps": result.steps,
        "curve": result.curve,
        "examples": examples,
        "annotations": files["test"].relative_to(workdir).as_posix(),
    }

"""Generated scenes for the detection study, and their COCO-format ground truth.

A scene is a square RGB image with a cluttered background — a random base colour, a smooth
colour gradient, soft Gaussian blobs and thin straight lines of random (often object-like)
colours, then pixel noise over everything — and a few hard-edged objects of three classes
(``square``, ``disc``, ``triangle``, random colour, side ``s`` log-uniform in
``[min_size, max_size]``, placed so two objects overlap by at most IoU 0.2). Only shape
separates the classes, and only hard edges separate objects from blobs.

Every scene is drawn from ``numpy.random.default_rng([split_seed, offset + index])``, so
:func:`render_scene` of one index needs no other scene; the train and test splits come from
different seeds, and the validation split is carved from the training stream (the scenes that
follow the training ones: same seed, ``offset = num_train``). Boxes are the tight bounds of the drawn pixels and ``area`` their pixel
count (COCO's ``area`` is the mask area, not ``w * h``).

Object sizes: COCO's ``areaRng`` is kept as it is (small: area < 32**2 pixels), and the
objects are made small in absolute pixels: with the default sizes (6..44 px on 160 px images)
about 92 % of them are COCO-small, so AP_small is measured on most of the data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
from dataclasses import asdict, dataclass

import numpy as np

from ..records import atomic_write_bytes

__all__ = [
    "CLASS_NAMES",
    "SceneSet",
    "SceneSpec",
    "generate_scene",
    "load_scenes",
    "write_coco",
]

CLASS_NAMES = ("square", "disc", "triangle")
MAX_OVERLAP_IOU = 0.2
NOISE_STD = 0.05


@dataclass(frozen=True)
class SceneSpec:
    """What determines a split's pixels and boxes (the cache and file key)."""

    image_size: int
    num_images: int
    min_objects: int
    max_objects: int
    min_size: float
    max_size: float
    seed: int
    offset: int = 0  # scene i of this split is scene offset + i of the seed's stream

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class SceneSet:
    images: np.ndarray  # (N, S, S, 3) uint8
    boxes: tuple[np.ndarray, ...]  # per image (G, 4) float32 x1 y1 x2 y2
    labels: tuple[np.ndarray, ...]  # per image (G,) int64 in [0, len(CLASS_NAMES))
    areas: tuple[np.ndarray, ...]  # per image (G,) int64 pixel counts


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _shape_mask(
    kind: int, xs: np.ndarray, ys: np.ndarray, x0: float, y0: float, s: float, flip: bool
) -> np.ndarray:
    """Pixels (centres ``xs, ys``) inside an object of class ``kind`` with box corner ``x0, y0``
    and side ``s``."""
    u, v = (xs - x0) / s, (ys - y0) / s  # unit square coordinates
    if kind == 0:  # filled square
        return (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    if kind == 1:  # disc
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    # triangle with its apex up (or down when flipped): |u - 0.5| <= v / 2
    v = 1.0 - v if flip else v
    return (v >= 0) & (v < 1) & (np.abs(u - 0.5) <= v / 2)


def generate_scene(
    spec: SceneSpec, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scene ``index`` of a split: ``(image uint8 (S, S, 3), boxes (G, 4), labels, areas)``."""
    rng = np.random.default_rng([spec.seed, spec.offset + index])
    size = spec.image_size
    centres = np.arange(size, dtype=np.float64) + 0.5
    ys, xs = np.meshgrid(centres, centres, indexing="ij")

    # background: base colour + gradient + soft blobs + thin lines
    image = np.empty((size, size, 3))
    image[:] = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.55))
    direction = rng.normal(size=2)
    ramp = (xs * direction[0] + ys * direction[1]) / (size * np.linalg.norm(direction))
    image += ramp[..., None] * rng.uniform(-0.25, 0.25, size=3)
    for _ in range(rng.integers(3, 8)):  # blobs: soft edges, object-like colours
        cx, cy = rng.uniform(0, size, size=2)
        sx, sy = rng.uniform(2.0, 9.0, size=2)
        blob = np.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))
        colour = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.0))
        alpha = (rng.uniform(0.5, 1.0) * blob)[..., None]
        image = image * (1 - alpha) + colour * alpha
    for _ in range(rng.integers(3, 9)):  # lines: 1-2 px wide, full length
        p = rng.uniform(0, size, size=2)
        angle = rng.uniform(0, np.pi)
        normal = np.array([-np.sin(angle), np.cos(angle)])
        dist = np.abs((xs - p[0]) * normal[0] + (ys - p[1]) * normal[1])
        colour = _hsv_to_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.4, 1.0))
        image[dist <= rng.uniform(0.5, 1.0)] = colour

    # objects: hard-edged shapes, placed with limited overlap
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    areas: list[float] = []
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    log_lo, log_hi = np.log(spec.min_size), np.log(spec.max_size)
    for _ in range(count):
        for _attempt in range(30):
            kind = int(rng.integers(len(CLASS_NAMES)))
            s = float(np.exp(rng.uniform(log_lo, log_hi)))
            x0, y0 = rng.uniform(1.0, size - s - 1.0, size=2)
            flip = bool(rng.integers(2))
            mask = _shape_mask(kind, xs, ys, x0, y0, s, flip)
            if mask.sum() < 4:
                continue
            rows, cols = np.nonzero(mask)
            box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
            if boxes and _max_iou(box, np.stack(boxes)) > MAX_OVERLAP_IOU:
                continue
            colour = _hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0))
            image[mask] = colour
            boxes.append(box)
            labels.append(kind)
            areas.append(int(mask.sum()))
            break
    image += rng.normal(0.0, NOISE_STD, size=image.shape)
    image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # a later object may hide a little of an earlier one (IoU <= 0.2); its box stays the full
    # (amodal) extent, as COCO's boxes do
    return (
        image,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        np.asarray(areas, np.int64),
    )


def _max_iou(box: np.ndarray, others: np.ndarray) -> float:
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    union = area + np.prod(others[:, 2:] - others[:, :2], axis=1) - inter
    return float((inter / union).max())


@functools.lru_cache(maxsize=8)
def load_scenes(spec: SceneSpec) -> SceneSet:
    """All scenes of a split (cached per process; the arrays are read-only)."""
    scenes = [generate_scene(spec, i) for i in range(spec.num_images)]
    images = np.stack([s[0] for s in scenes])
    images.setflags(write=False)
    parts = []
    for k in (1, 2, 3):
        arrays = tuple(s[k] for s in scenes)
        for a in arrays:
            a.setflags(write=False)
        parts.append(arrays)
    return SceneSet(images, *parts)


def coco_dict(spec: SceneSpec, scenes: SceneSet, split: str) -> dict:
    """COCO ground truth of a split (image ids and annotation ids start at 1)."""
    images = [
        {
            "id": i + 1,
            "file_name": f"{split}_{i:05d}.png",
            "width": spec.image_size,
            "height": spec.image_size,
        }
        for i in range(spec.num_images)
    ]
    annotations: list[dict] = []
    for i, (boxes, labels, areas) in enumerate(
        zip(scenes.boxes, scenes.labels, scenes.areas, strict=True)
    ):
        for box, label, area in zip(boxes.tolist(), labels.tolist(), areas.tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASS_NAMES)
    ]
    info = {
        "description": "focalkit generated scenes; images are not stored, they are "
        "regenerated by focalkit.demo.detection.study.render_scene(setting, split, index) "
        "for index = image id - 1",
        "scene_spec": asdict(spec),
    }
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco(path: pathlib.Path, payload: dict) -> pathlib.Path:
    """Write a JSON file atomically (:func:`focalkit.demo.records.atomic_write_bytes`: a
    temporary file in the same folder, fsync, then ``os.replace``)."""
    atomic_write_bytes(path, json.dumps(payload).encode("utf-8"))
    return path

"""Real aerial photographs with tree-crown boxes: the NEON images shipped in the DeepForest
wheel, read straight from the wheel (no install of deepforest or its dependencies).

Origin: RGB orthophotos (10 cm per pixel) of the National Ecological Observatory Network's
Airborne Observation Platform (NEON data are released under CC0 1.0), with tree-crown boxes
drawn by the DeepForest authors (Weinstein et al., *Remote Sensing* 2019; the NeonTreeEvaluation
benchmark). The files are those in ``deepforest/data/`` of the ``deepforest==2.1.0`` wheel on
the Python package index, distributed under the MIT licence (``deepforest-2.1.0.dist-info/
licenses/LICENSE``, copyright 2019 Ben Weinstein). Annotations are Pascal VOC XML, one
``<object>`` per crown with ``<bndbox>`` ``xmin ymin xmax ymax`` in pixels of the PNG.

The split (:data:`SPLITS`): the two Yellowstone (YELL) tiles, 853 crowns, are each cut into
vertical strips by column: the left 60 % of each tile to train on, the next 20 % to validate
on, the right 20 % to test on, so that every split holds both tiles and the training never
sees a test crown. A crown belongs to the strip that holds its box's centre; its box is
clipped at the strip's edge. The images of two other sites, OSBS_029 (Ordway-Swisher,
Florida) and SOAP_061 (Soaproot Saddle, California), form a fourth split, ``"transfer"``: it
measures how a detector trained in Yellowstone carries to other forests. SOAP_061's boxes are
labelled ``Alive`` or ``Dead``; every box is a tree crown here (one class, ``tree``), which is
how DeepForest itself trains.

:func:`fetch_wheel` gets the wheel with pip (``pip download --no-deps deepforest==2.1.0``, the
ordinary client, from whatever index pip is configured with), checks its SHA-256 and keeps it
in a cache folder (``FOCALKIT_DATA_DIR``, else ``~/.cache/focalkit``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..records import atomic_write_bytes

__all__ = [
    "CLASS_NAMES",
    "LICENSE_MEMBER",
    "SPLITS",
    "WHEEL_NAME",
    "WHEEL_REQUIREMENT",
    "WHEEL_SHA256",
    "DataUnavailable",
    "Tile",
    "coco_dict",
    "data_dir",
    "fetch_wheel",
    "licence_text",
    "read_tile",
    "region",
    "split_tiles",
]

WHEEL_REQUIREMENT = "deepforest==2.1.0"
WHEEL_NAME = "deepforest-2.1.0-py3-none-any.whl"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
DATA_PREFIX = "deepforest/data/"
LICENSE_MEMBER = "deepforest-2.1.0.dist-info/licenses/LICENSE"
CLASS_NAMES = ("tree",)

YELL_TILES = ("2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop")
#: split -> regions: (tile name, first and end column as fractions of the tile's width); each
#: tile is ``<name>.png`` + ``<name>.xml`` in ``deepforest/data/``
SPLITS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "train": tuple((name, 0.0, 0.6) for name in YELL_TILES),
    "val": tuple((name, 0.6, 0.8) for name in YELL_TILES),
    "test": tuple((name, 0.8, 1.0) for name in YELL_TILES),
    "transfer": (("OSBS_029", 0.0, 1.0), ("SOAP_061", 0.0, 1.0)),
}
SITES = {
    "YELL": "Yellowstone, Wyoming",
    "OSBS": "Ordway-Swisher, Florida",
    "SOAP": "Soaproot Saddle, California",
}


class DataUnavailable(RuntimeError):
    """The wheel could not be found or downloaded (the message says why)."""


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``explicit``, else ``$FOCALKIT_DATA_DIR``, else ``~/.cache/focalkit``."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("FOCALKIT_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "focalkit"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(directory: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Path of the verified wheel in the cache folder, downloading it with pip if missing.

    Raises :class:`DataUnavailable` when it is missing and ``download`` is false, when pip
    fails (no network, no index) or when the file's SHA-256 is not the pinned one."""
    folder = data_dir(directory)
    path = folder / WHEEL_NAME
    if path.is_file():
        if _sha256(path) == WHEEL_SHA256:
            return path
        path.unlink()  # a partial or foreign file: fetch it again
    if not download:
        raise DataUnavailable(f"{path} is missing (and downloading was not allowed)")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
            WHEEL_REQUIREMENT,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataUnavailable(f"`pip download {WHEEL_REQUIREMENT}` failed: {exc}") from exc
        got = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not got.is_file():
            why = (done.stderr or done.stdout).strip().splitlines()
            raise DataUnavailable(
                f"`pip download {WHEEL_REQUIREMENT}` failed"
                + (f": {why[-1]}" if why else f" (exit code {done.returncode})")
            )
        if _sha256(got) != WHEEL_SHA256:
            raise DataUnavailable(f"{WHEEL_NAME}: SHA-256 differs from the pinned {WHEEL_SHA256}")
        os.replace(got, path)
    return path


@dataclass(frozen=True)
class Tile:
    """One annotated image: pixels, boxes (xyxy, pixels of the PNG) and the source labels."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8, read-only
    boxes: np.ndarray  # (G, 4) float32 xmin ymin xmax ymax, read-only
    source_labels: tuple[str, ...]  # the XML's <name> of each box

    @property
    def site(self) -> str:
        return self.name.split("_")[1] if self.name.startswith("2019_") else self.name.split("_")[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return int(self.image.shape[0]), int(self.image.shape[1])


def parse_voc(text: bytes | str) -> tuple[np.ndarray, tuple[str, ...], tuple[int, int] | None]:
    """Boxes ``(G, 4)`` float32, labels and the ``(height, width)`` of a Pascal VOC XML."""
    root = ET.fromstring(text)
    boxes, labels = [], []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        values = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            element = box.find(key)
            if element is None or element.text is None:
                raise ValueError(f"an <object> has no <{key}>")
            values.append(float(element.text))
        boxes.append(values)
        name = obj.find("name")
        labels.append(name.text.strip() if name is not None and name.text else "")
    size = root.find("size")
    hw = None
    if size is not None:
        width, height = size.find("width"), size.find("height")
        if width is not None and height is not None and width.text and height.text:
            hw = (int(height.text), int(width.text))
    return np.asarray(boxes, np.float32).reshape(-1, 4), tuple(labels), hw


@functools.lru_cache(maxsize=8)
def read_tile(wheel: Path, name: str) -> Tile:
    """``<name>.png`` and ``<name>.xml`` of the wheel's ``deepforest/data/`` (cached per
    process). Boxes are the XML's numbers; the image size must match the XML's ``<size>``."""
    from PIL import Image

    with zipfile.ZipFile(wheel) as archive:
        xml = archive.read(f"{DATA_PREFIX}{name}.xml")
        png = archive.read(f"{DATA_PREFIX}{name}.png")
    boxes, labels, hw = parse_voc(xml)
    with Image.open(io.BytesIO(png)) as picture:
        image = np.asarray(picture.convert("RGB"), dtype=np.uint8).copy()
    if hw is not None and hw != image.shape[:2]:
        raise ValueError(f"{name}: the XML says {hw} (H, W), the PNG is {image.shape[:2]}")
    image.setflags(write=False)
    boxes.setflags(write=False)
    return Tile(name, image, boxes, labels)


def region(tile: Tile, start: float, end: float) -> Tile:
    """The columns ``[round(start W), round(end W))`` of ``tile`` and the crowns whose box centre
    lies in them, shifted to the strip and clipped at its edges. The whole tile (0, 1) is the
    tile itself; a strip is named ``<tile>[c0:c1]`` (its pixel columns)."""
    if (start, end) == (0.0, 1.0):
        return tile
    width = tile.size[1]
    c0, c1 = round(start * width), round(end * width)
    centre = (tile.boxes[:, 0] + tile.boxes[:, 2]) / 2
    keep = (centre >= c0) & (centre < c1)
    boxes = tile.boxes[keep] - np.array([c0, 0, c0, 0], np.float32)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, c1 - c0)
    image = np.ascontiguousarray(tile.image[:, c0:c1])
    image.setflags(write=False)
    boxes.setflags(write=False)
    labels = tuple(label for label, k in zip(tile.source_labels, keep.tolist(), strict=True) if k)
    return Tile(f"{tile.name}[{c0}:{c1}]", image, boxes.astype(np.float32), labels)


def split_tiles(wheel: Path, split: str) -> tuple[Tile, ...]:
    """The images of ``"train"``, ``"val"``, ``"test"`` or ``"transfer"`` (:data:`SPLITS`):
    strips of the Yellowstone tiles, whole tiles of the other sites."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {sorted(SPLITS)}, got {split!r}")
    return tuple(
        region(read_tile(Path(wheel), name), start, end) for name, start, end in SPLITS[split]
    )


def licence_text(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(LICENSE_MEMBER).decode("utf-8")


def coco_dict(tiles: tuple[Tile, ...], split: str) -> dict:
    """COCO ground truth of tiles (image ids 1.. in order; boxes in the PNG's pixels, ``area``
    the box area: the annotations have no masks)."""
    images: list[dict] = []
    annotations: list[dict] = []
    for index, tile in enumerate(tiles, start=1):
        height, width = tile.size
        images.append(
            {"id": index, "file_name": f"{tile.name}.png", "width": width, "height": height}
        )
        for x1, y1, x2, y2 in tile.boxes.tolist():
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": f"NEON tree crowns ({split}), from {WHEEL_REQUIREMENT}'s "
            f"{DATA_PREFIX} (MIT); images are read from the wheel",
            "tiles": [tile.name for tile in tiles],
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "tree", "supercategory": "plant"}],
    }


def write_json(path: Path, payload: dict) -> Path:
    import json

    atomic_write_bytes(path, json.dumps(payload).encode("utf-8"))
    return path


def provenance(wheel: Path) -> dict:
    """What the report says about the data: origin, licence, split, counts."""
    tiles = {split: split_tiles(wheel, split) for split in SPLITS}
    return {
        "wheel": WHEEL_NAME,
        "requirement": WHEEL_REQUIREMENT,
        "sha256": WHEEL_SHA256,
        "path": str(Path(wheel).resolve()),
        "licence": licence_text(wheel).strip().splitlines()[0],
        "licence_member": LICENSE_MEMBER,
        "splits": {
            split: [
                {
                    "tile": tile.name,
                    "columns": f"{start:.0%}-{end:.0%}",
                    "site": SITES.get(tile.site, tile.site),
                    "height": tile.size[0],
                    "width": tile.size[1],
                    "boxes": len(tile.boxes),
                    "labels": sorted(set(tile.source_labels)),
                }
                for tile, (_, start, end) in zip(group, SPLITS[split], strict=True)
            ]
            for split, group in tiles.items()
        },
    }

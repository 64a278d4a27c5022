"""Study 3's data: the NEON tree-crown images and boxes read from the deepforest wheel equal
the wheel's annotation files; crops and augmentations move the boxes with the pixels."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("pycocotools")

from focalkit.demo.detection import neon, trees

COUNTS = {
    "2019_YELL_2_528000_4978000_image_crop2": 574,
    "2019_YELL_2_541000_4977000_image_crop": 279,
    "OSBS_029": 61,
    "SOAP_061": 37,
}


@pytest.fixture(scope="module")
def wheel():
    try:
        return neon.fetch_wheel()
    except neon.DataUnavailable as exc:
        pytest.skip(f"the tree-crown data is not available here: {exc}")


def _xml_boxes(text: str) -> list[list[float]]:
    """The <bndbox> numbers of a VOC file, read with a regular expression (not the loader's
    parser)."""
    boxes = []
    for block in re.findall(r"<bndbox>(.*?)</bndbox>", text, flags=re.S):
        boxes.append(
            [
                float(re.search(rf"<{k}>\s*([-\d.]+)\s*</{k}>", block).group(1))
                for k in ("xmin", "ymin", "xmax", "ymax")
            ]
        )
    return boxes


def test_boxes_read_back_equal_the_annotation_files(wheel):
    """Every tile's boxes are the XML's numbers, in order; 951 boxes in all; the image has the
    XML's size; OSBS_029's CSV (the same boxes in another format) agrees."""
    total = 0
    with zipfile.ZipFile(wheel) as archive:
        for name, count in COUNTS.items():
            text = archive.read(f"deepforest/data/{name}.xml").decode()
            tile = neon.read_tile(wheel, name)
            assert tile.boxes.tolist() == _xml_boxes(text)
            assert len(tile.boxes) == count
            width = int(re.search(r"<width>(\d+)</width>", text).group(1))
            height = int(re.search(r"<height>(\d+)</height>", text).group(1))
            assert tile.image.shape == (height, width, 3) and tile.image.dtype == np.uint8
            assert (tile.boxes[:, 2:] > tile.boxes[:, :2]).all()
            total += count
        csv = archive.read("deepforest/data/OSBS_029.csv").decode().strip().splitlines()[1:]
    assert total == 951
    from_csv = sorted([float(v) for v in row.split(",")[1:5]] for row in csv)
    assert sorted(neon.read_tile(wheel, "OSBS_029").boxes.tolist()) == from_csv
    assert set(neon.read_tile(wheel, "SOAP_061").source_labels) == {"Alive", "Dead"}
    assert neon.licence_text(wheel).startswith("MIT License")


def test_splits_and_coco_ground_truth(wheel, tmp_path):
    """The split is the documented one; the COCO json written for evaluation holds the XML's
    boxes as (x, y, w, h) and loads in pycocotools."""
    from pycocotools.coco import COCO

    assert [t.name for t in neon.split_tiles(wheel, "test")] == ["OSBS_029", "SOAP_061"]
    assert [t.site for t in neon.split_tiles(wheel, "train")] == ["YELL"]
    files = trees.annotation_files(wheel, tmp_path)
    payload = json.loads(files["test"].read_text())
    tiles = neon.split_tiles(wheel, "test")
    for image_id, tile in enumerate(tiles, start=1):
        mine = [a["bbox"] for a in payload["annotations"] if a["image_id"] == image_id]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in mine]
        np.testing.assert_allclose(xyxy, tile.boxes, rtol=0, atol=1e-4)
    gt = COCO(str(files["val"]))
    assert len(gt.getAnnIds()) == 279 and gt.loadImgs(1)[0]["width"] == 1249
    provenance = neon.provenance(wheel)
    assert provenance["splits"]["val"][0]["boxes"] == 279


def test_fetch_wheel_refuses_a_wrong_file(tmp_path):
    (tmp_path / neon.WHEEL_NAME).write_bytes(b"not a wheel")
    with pytest.raises(neon.DataUnavailable, match="missing"):
        neon.fetch_wheel(tmp_path, download=False)  # the bad file was removed, not used
    assert not (tmp_path / neon.WHEEL_NAME).exists()


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_augment_moves_boxes_with_the_pixels(turns, flip):
    """A filled rectangle's pixels and its box stay together through rot90 and flip."""
    image = np.zeros((32, 32, 3), np.uint8)
    image[5:12, 20:29] = 255  # rows 5..11, columns 20..28: box (20, 5, 29, 12)
    box = np.array([[20.0, 5.0, 29.0, 12.0]], np.float32)
    out, moved = trees.augment(image, box, turns, flip)
    rows, cols = np.nonzero(out[..., 0])
    assert moved.tolist() == [[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]]


def test_random_crop_clips_and_drops_boxes():
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[10, 10, 30, 30], [60, 60, 95, 95], [0, 0, 100, 100]], np.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        crop, kept = trees.random_crop(image, boxes, 50, rng, min_visible=0.5)
        assert crop.shape == (50, 50, 3)
        assert ((kept >= 0) & (kept <= 50)).all()
        assert not (kept == [0, 0, 50, 50]).all(axis=1).any()  # the 100 x 100 box: 25 % inside

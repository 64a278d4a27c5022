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

import itertools

from focalkit.demo.detection import neon, trees

COUNTS = {
    "2019_YELL_2_528000_4978000_image_crop2": 574,
    "2019_YELL_2_541000_4977000_image_crop": 279,
    "OSBS_029": 61,
    "SOAP_061": 37,
}


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
    """The split is the documented one: the Yellowstone tiles' columns 0-60 % / 60-80 % /
    80-100 % for train / val / test, the other sites' whole images for the transfer test.
    Every crown is in exactly one strip, the one holding its box's centre (951 in all), with
    its box shifted to the strip and clipped at its edge; the COCO json written for evaluation
    holds those boxes as (x, y, w, h) and loads in pycocotools."""
    from pycocotools.coco import COCO

    assert [t.name for t in neon.split_tiles(wheel, "transfer")] == ["OSBS_029", "SOAP_061"]
    assert {t.site for s in ("train", "val", "test") for t in neon.split_tiles(wheel, s)} == {
        "YELL"
    }
    total = 0
    for name in neon.YELL_TILES:
        tile = neon.read_tile(wheel, name)
        width = tile.size[1]
        centre = (tile.boxes[:, 0] + tile.boxes[:, 2]) / 2
        columns = []
        for split, (c0, c1) in zip(
            ("train", "val", "test"),
            (
                (0, round(0.6 * width)),
                (round(0.6 * width), round(0.8 * width)),
                (round(0.8 * width), width),
            ),
            strict=True,
        ):
            (strip,) = [t for t in neon.split_tiles(wheel, split) if t.name.startswith(name)]
            assert strip.name == f"{name}[{c0}:{c1}]"
            np.testing.assert_array_equal(strip.image, tile.image[:, c0:c1])
            inside = tile.boxes[(centre >= c0) & (centre < c1)]
            expected = np.stack(
                [
                    np.clip(inside[:, 0] - c0, 0, c1 - c0),
                    inside[:, 1],
                    np.clip(inside[:, 2] - c0, 0, c1 - c0),
                    inside[:, 3],
                ],
                axis=1,
            )
            np.testing.assert_allclose(strip.boxes, expected, rtol=0, atol=1e-4)
            columns.append((c0, c1))
            total += len(strip.boxes)
        assert columns[0][0] == 0 and columns[-1][1] == width
        assert all(a[1] == b[0] for a, b in itertools.pairwise(columns))  # no gap, no overlap
    assert total == COUNTS[neon.YELL_TILES[0]] + COUNTS[neon.YELL_TILES[1]]
    files = trees.annotation_files(wheel, tmp_path)
    for split in ("val", "test", "transfer"):
        payload = json.loads(files[split].read_text())
        tiles = neon.split_tiles(wheel, split)
        for image_id, tile in enumerate(tiles, start=1):
            mine = [a["bbox"] for a in payload["annotations"] if a["image_id"] == image_id]
            xyxy = [[x, y, x + w, y + h] for x, y, w, h in mine]
            np.testing.assert_allclose(xyxy, tile.boxes, rtol=0, atol=1e-4)
        gt = COCO(str(files[split]))
        assert len(gt.getAnnIds()) == sum(len(t.boxes) for t in tiles)
    provenance = neon.provenance(wheel)
    assert [row["columns"] for row in provenance["splits"]["val"]] == ["60%-80%", "60%-80%"]
    assert sum(row["boxes"] for rows in provenance["splits"].values() for row in rows) == 951


def test_windows_cover_the_image_with_a_quarter_overlap():
    """The tiny detector's inference windows cover every pixel, start at 0, end at the edge,
    and step by three quarters of a window."""
    for length in (96, 97, 128, 230, 625, 1236):
        starts = trees._windows(length, 96)
        assert starts[0] == 0 and starts[-1] + 96 >= length
        covered = np.zeros(max(length, 96), bool)
        for s in starts:
            covered[s : s + 96] = True
        assert covered[:length].all()
        assert all(b - a <= 72 for a, b in itertools.pairwise(starts))


def test_tiled_detection_equals_the_window_detections_shifted(wheel):
    """On an image of exactly one window, the tiled inference returns the detections of that
    window (postprocess, then NMS again: a no-op on NMS output); on a larger image every
    returned box lies inside the image."""
    import torch

    setting = trees.trees_setting("quick")
    torch.manual_seed(0)
    model = trees.TinyRetinaNet(
        1, 9, width=setting.width, head_width=setting.head_width, head_convs=setting.head_convs
    ).eval()
    torch.nn.init.constant_(model.cls_out.bias, 0.0)  # every anchor scores ~0.5: many boxes
    image = neon.split_tiles(wheel, "val")[1].image[: setting.patch, : setting.patch].copy()
    boxes, scores = trees._detect_tiny(model, image, setting)
    anchors, sizes = trees._anchors(setting, setting.patch, setting.patch)
    with torch.no_grad():
        logits, deltas = model(trees._to_input(image[None], torch.device("cpu")))
    ref_boxes, ref_scores, _ = trees.postprocess(
        logits[0],
        deltas[0],
        anchors,
        sizes,
        image_size=setting.patch,
        box_weights=setting.box_weights,
        score_thresh=setting.score_thresh,
        pre_nms_topk=setting.window_detections,
        nms_iou=setting.nms_iou,
        max_detections=setting.window_detections,
    )
    assert len(scores) > 10
    torch.testing.assert_close(scores, ref_scores)
    torch.testing.assert_close(boxes, ref_boxes)
    big = neon.split_tiles(wheel, "val")[1].image[:300, :250]
    boxes, scores = trees._detect_tiny(model, np.ascontiguousarray(big), setting)
    assert len(scores) > 0
    assert (boxes[:, 2] <= 250).all() and (boxes[:, 3] <= 300).all() and (boxes >= 0).all()
    assert (scores[:-1] >= scores[1:]).all()


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

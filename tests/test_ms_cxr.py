"""prep ms-cxr: boxes carried through the image's own resize + pad/crop (checked against where a
drawn rectangle lands), and the whole command on JPGs in MIMIC-CXR-JPG's layout with a CSV in
MS-CXR's format, traps included."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tier_openclip.data_prep import cli, images
from tier_openclip.data_prep.ms_cxr import box_to_stored
from tier_openclip.evaluation.grounding import read_grounding_set, region_mask

MS_CXR_HEADER = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width",
                 "image_height", "split"]


def drawn(width: int, height: int, *boxes: tuple[int, int, int, int]) -> Image.Image:
    """A dark image with bright rectangles (x, y, w, h)."""
    array = np.full((height, width), 10, np.uint8)
    for x, y, w, h in boxes:
        array[y:y + h, x:x + w] = 245
    return Image.fromarray(array, mode="L")


def where_bright(image: Image.Image) -> np.ndarray:
    return np.asarray(image) > 127


def lands_on(bright: np.ndarray, box, slack: float) -> bool:
    """The bright pixels hold the box shrunk by ``slack`` and lie in it grown by ``slack``."""
    x0, y0, x1, y1 = box
    inner = region_mask([(x0 + slack, y0 + slack, x1 - slack, y1 - slack)], *bright.shape)
    outer = region_mask([(x0 - slack, y0 - slack, x1 + slack, y1 + slack)], *bright.shape)
    return bool(bright[inner].all() and not bright[~outer].any())


@pytest.mark.parametrize("size, width, height, box, mode, expected", [
    (100, 400, 200, (40, 20, 40, 40), "pad", (10, 30, 20, 40)),  # 1/4, padded 25 rows above
    (100, 200, 400, (40, 150, 40, 100), "crop", (20, 25, 40, 75)),  # 1/2, 50 rows cropped off the top
    (100, 200, 400, (40, 152, 40, 100), "pad", (35, 38, 45, 63)),  # 1/4, padded 25 columns left
])
def test_a_box_lands_exactly_where_the_resize_puts_its_rectangle(size, width, height, box, mode, expected):
    square = images.resize_square(images.GrayImage(drawn(width, height, box)), size, mode)
    stored = box_to_stored(box, width, height, size, mode)
    assert stored == pytest.approx(expected)
    np.testing.assert_array_equal(where_bright(square.image), region_mask([stored], size, size))


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("width, height, box", [(333, 250, (50, 60, 100, 80)), (251, 377, (120, 200, 90, 41)),
                                                (640, 512, (300, 11, 57, 200))])
def test_a_box_follows_its_rectangle_at_any_scale(mode, width, height, box):
    square = images.resize_square(images.GrayImage(drawn(width, height, box)), 64, mode)
    stored = box_to_stored(box, width, height, 64, mode)
    assert lands_on(where_bright(square.image), stored, slack=1.0)  # bicubic blurs one pixel at most
    assert not lands_on(where_bright(square.image), [v + 2 for v in stored], slack=1.0)  # a test that can fail


def test_boxes_are_clipped_to_the_image_and_to_the_crop():
    assert box_to_stored((-20, 0, 60, 40), 400, 200, 100, "pad") == pytest.approx((0, 25, 10, 35))
    assert box_to_stored((380, 180, 50, 50), 400, 200, 100, "pad") == pytest.approx((95, 70, 100, 75))
    assert box_to_stored((10, 10, 30, 30), 400, 200, 100, "crop") is None  # in the 100 columns cropped off
    assert box_to_stored((80, 10, 40, 30), 400, 200, 100, "crop") == pytest.approx((0, 5, 10, 20))


# --- the command -------------------------------------------------------------------------------------

DICOM_A = "0a1b2c3d-11111111-22222222-33333333-44444444"
DICOM_B = "1.2.840.113619.2"  # an id with dots
DICOM_C = "5e6f7a8b-55555555-66666666-77777777-88888888"
DICOM_MISSING = "9c9c9c9c-99999999-99999999-99999999-99999999"


def jpg_path(dicom_id: str) -> str:
    return f"files/p10/p10000032/s50414267/{dicom_id}.jpg"


@pytest.fixture
def ms_cxr(tmp_path) -> tuple[Path, Path]:
    """A MIMIC-CXR-JPG root with three JPGs and MS-CXR's CSV for them, with traps."""
    root = tmp_path / "mimic-cxr-jpg"
    boxes_a = [(40, 120, 60, 70), (180, 130, 50, 60), (200, 20, 70, 50), (2, 5, 20, 20)]
    for dicom_id, image in ((DICOM_A, drawn(300, 240, *boxes_a)), (DICOM_B, drawn(200, 260, (60, 100, 90, 120))),
                            (DICOM_C, drawn(120, 100, (10, 10, 30, 30)))):
        path = root / jpg_path(dicom_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=98)
    rows = [
        [DICOM_A, "Pneumonia", "bilateral lower lobe opacities", jpg_path(DICOM_A), *boxes_a[0], 300, 240, "test"],
        [DICOM_A, "Pneumonia", "bilateral lower lobe opacities", jpg_path(DICOM_A), *boxes_a[1], 300, 240, "test"],
        [DICOM_A, "Pleural Effusion", "small left effusion", jpg_path(DICOM_A), *boxes_a[2], 300, 240, "test"],
        [DICOM_A, "Pneumothorax", "apical pneumothorax", jpg_path(DICOM_A), *boxes_a[3], 300, 240, "test"],
        [DICOM_B, "Cardiomegaly", "enlarged heart", jpg_path(DICOM_B), 60, 100, 90, 120, 200, 260, "val"],
        [DICOM_C, "Edema", "edema", jpg_path(DICOM_C), 10, 10, 30, 30, 500, 500, "test"],  # CSV size is wrong
        [DICOM_MISSING, "Edema", "edema", jpg_path(DICOM_MISSING), 1, 1, 5, 5, 50, 50, "test"],
        ["escape", "Edema", "edema", "../../outside.jpg", 1, 1, 5, 5, 50, 50, "test"],
        [DICOM_A, "Edema", "edema", jpg_path(DICOM_A), 1, 1, 0, 5, 300, 240, "test"],  # w = 0
    ]
    csv_path = tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MS_CXR_HEADER)
        writer.writerows(rows)
    return csv_path, root


def prep(csv_path: Path, root: Path, out: Path, *extra: str) -> int:
    return cli.main(["ms-cxr", "--csv", str(csv_path), "--image-root", str(root), "--out", str(out),
                     "--image-size", "64", "--workers", "1", "--quiet", *extra])


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_prep_writes_a_grounding_set_whose_boxes_sit_on_the_drawn_rectangles(ms_cxr, tmp_path):
    csv_path, root = ms_cxr
    out = tmp_path / "out"
    assert prep(csv_path, root, out) == 0
    gset = read_grounding_set(out)  # the evaluator's own checks pass
    assert gset.dataset == "ms-cxr" and gset.labels == ["Cardiomegaly", "Pleural Effusion", "Pneumonia", "Pneumothorax"]
    by_phrase = {(p.image, p.phrase): p for p in gset.phrases}
    image_a, image_b = f"images/{DICOM_A}.png", read_rows(out / "sources.csv")[1]["image"]
    assert len(by_phrase[(image_a, "bilateral lower lobe opacities")].boxes) == 2  # two rows, one phrase
    assert image_b.startswith("images/1_2_840_113619_2-") and "." not in image_b[len("images/"):-len(".png")]
    assert read_rows(out / "sources.csv")[1] == {"image": image_b, "dicom_id": DICOM_B, "path": jpg_path(DICOM_B)}
    for phrase in gset.phrases:
        stored = Image.open(out / phrase.image)
        assert stored.size == (64, 64) and stored.mode == "L"
        for box in phrase.boxes:  # the rectangle drawn at the CSV's box is where the box now is
            bright = where_bright(stored.crop((0, 0, 64, 64)))
            mask = region_mask([box], 64, 64)
            assert bright[mask].mean() > 0.7, (phrase, box)
    # 300 x 240 -> 64 x 51 (scale 64/300), padded 6 rows above: the CSV's first box, exactly.
    first = by_phrase[(image_a, "bilateral lower lobe opacities")].boxes[0]
    assert first == pytest.approx((40 * 64 / 300, 120 * 51 / 240 + 6, 100 * 64 / 300, 190 * 51 / 240 + 6))
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["format"], meta["image_size"], meta["images"], meta["phrases"], meta["boxes"]) == (
        "tier-openclip-eval/1", 64, 2, 4, 5)
    assert meta["skipped"] == {"box_invalid": 1, "unsafe_path": 1}
    assert meta["failed"] == {"image_missing": 1, "size_mismatch": 1}
    assert meta["per_finding"]["Pneumonia"] == {"phrases": 1, "boxes": 2}
    reasons = {row["reason"] for row in read_rows(out / "failures.csv")}
    assert reasons == {"box_invalid", "unsafe_path", "image_missing", "size_mismatch"}
    assert not (tmp_path / "outside.jpg").exists() and sorted(p.name for p in (out / "images").iterdir()) == sorted(
        Path(i).name for i in gset.images)


def test_crop_drops_the_boxes_it_cuts_off_and_splits_select_rows(ms_cxr, tmp_path):
    csv_path, root = ms_cxr
    out = tmp_path / "crop"
    assert prep(csv_path, root, out, "--resize", "crop") == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dropped_boxes"] == {"box_outside_image": 1}  # the 2..22 px box of a 300-wide film, cropped to 240
    assert "apical pneumothorax" not in {p.phrase for p in read_grounding_set(out).phrases}
    assert any(row["kind"] == "dropped" and "apical" in row["detail"] for row in read_rows(out / "failures.csv"))
    only_val = tmp_path / "val"
    assert prep(csv_path, root, only_val, "--splits", "val") == 0
    meta = json.loads((only_val / "meta.json").read_text())
    assert (meta["labels"], meta["boxes"], meta["skipped"]["split_not_selected"]) == (["Cardiomegaly"], 1, 8)


def test_prep_refuses_a_csv_that_is_not_ms_cxrs(ms_cxr, tmp_path, capsys):
    csv_path, root = ms_cxr
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("dicom_id,path,x,y\na,b,1,2\n")
    assert prep(wrong, root, tmp_path / "out") == 2
    assert "no column(s) category_name, label_text" in capsys.readouterr().err
    assert prep(csv_path, tmp_path / "nowhere", tmp_path / "out") == 2
    assert prep(csv_path, root, root / "files" / "out") == 2  # inside the input


@pytest.mark.parametrize("name", ["boxes.csv", "meta.json", "prior_boxes.csv"])
def test_prep_refuses_a_csv_it_would_write_over(ms_cxr, tmp_path, capsys, name):
    """Issue 22, case 1: --csv OUT/boxes.csv (or a symlink to it) would be replaced by the run."""
    csv_path, root = ms_cxr
    out = tmp_path / "out"
    out.mkdir()
    inside = out / name
    inside.write_bytes(csv_path.read_bytes())
    link = tmp_path / "link.csv"
    link.symlink_to(inside)
    for given in (inside, link):
        assert prep(given, root, out) == 2
        assert capsys.readouterr().err.strip() == f"tier-openclip prep: --csv {given} is a file this command writes in --out: choose another --out"
    assert inside.read_bytes() == csv_path.read_bytes() and sorted(p.name for p in out.iterdir()) == [name]

"""Segmentation sets: SIIM's run-length code against hand-made masks (and encode∘decode), masks
carried through the image's own resize + pad/crop, the layout's reader, and `prep siim` /
`prep rsna` on small DICOMs and CSVs written here in the releases' formats, traps included."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data_prep_fixtures import PHI_MARKERS, dicom_dataset, smooth_image
from tier_openclip.data_prep import cli, images, rle
from tier_openclip.data_prep.seg_sets import (SegSetWriter, read_mask, read_seg_set, resize_mask, seeded_split,
                                              write_mask)

# --- run-length code ----------------------------------------------------------------------------


def test_decode_is_column_major_with_relative_starts():
    # width 4, height 3: pixel (x, y) has index x*3 + y. "1 2" covers indices 1, 2 = (0,1), (0,2);
    # "3 1" starts 3 AFTER that run's end (index 3): index 6 = (2, 0). Absolute starts would put
    # it at index 3 = (1, 0), row-major numbering at (1, 0) / (2, 1) instead.
    expected = np.array([[0, 0, 1, 0],
                         [1, 0, 0, 0],
                         [1, 0, 0, 0]], dtype=bool)
    assert np.array_equal(rle.rle_decode("1 2 3 1", 4, 3), expected)
    assert rle.rle_encode(expected) == "1 2 3 1"
    assert not rle.rle_decode("-1", 4, 3).any() and not rle.rle_decode(" -1 ", 4, 3).any()
    assert rle.rle_encode(np.zeros((3, 4), bool)) == "-1"
    full = rle.rle_decode("0 12", 4, 3)
    assert full.all() and rle.rle_encode(full) == "0 12"


def test_rows_of_one_image_are_united_and_broken_codes_refused():
    union = rle.union_decode(["0 1", "-1", "11 1"], 4, 3)  # (0, 0) and the last pixel (3, 2)
    assert np.argwhere(union).tolist() == [[0, 0], [2, 3]]
    for code, message in [("1 2 3", "odd number"), ("1 x", "not an integer"), ("-2 3", ">= 0"), ("1 0", "lengths >= 1"),
                          ("10 3", "past the")]:
        with pytest.raises(rle.RleError, match=message):
            rle.rle_decode(code, 4, 3)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(1, 7), st.data())
def test_encode_and_decode_are_inverse(width, height, data):
    bits = data.draw(st.lists(st.booleans(), min_size=width * height, max_size=width * height))
    mask = np.array(bits, dtype=bool).reshape(height, width)
    code = rle.rle_encode(mask)
    assert np.array_equal(rle.rle_decode(code, width, height), mask)
    assert rle.rle_encode(rle.rle_decode(code, width, height)) == code


def siim_code(mask: np.ndarray) -> str:
    """SIIM's code by its definition, pixel by pixel (independent of rle_encode)."""
    height, width = mask.shape
    values, gap, run = [], 0, 0
    for x in range(width):
        for y in range(height):
            if mask[y, x]:
                if run == 0:
                    values.append(gap)
                    gap = 0
                run += 1
            else:
                if run:
                    values.append(run)
                    run = 0
                gap += 1
    if run:
        values.append(run)
    return " ".join(map(str, values)) if values else "-1"


def test_encoder_matches_the_definition_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((rng.integers(1, 9), rng.integers(1, 9))) < 0.4
        assert rle.rle_encode(mask) == siim_code(mask)


# --- masks through the image geometry -----------------------------------------------------------


def test_masks_follow_the_images_resize_pad_and_crop():
    # 40 x 20 image, square of 20: pad scales by 1/2 to 20 x 10 at y offset 5; nearest takes
    # source pixel 2i+1, so x in [10, 30) -> columns 5..14 and y in [4, 12) -> rows 2..5 + 5.
    mask = np.zeros((20, 40), bool)
    mask[4:12, 10:30] = True
    stored = resize_mask(mask, 20, "pad")
    assert stored.shape == (20, 20)
    rows, cols = np.nonzero(stored)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (7, 10, 5, 14)
    # crop: scale 1, 40 x 20 -> columns 10..29 kept, shifted by -10 -> the mask fills x 0..19
    cropped = resize_mask(mask, 20, "crop")
    assert cropped[4:12, 0:20].all() and cropped.sum() == 8 * 20
    # the image itself lands where its mask does (a bright rectangle where the mask is)
    picture = images.GrayImage(Image.fromarray(np.where(mask, 240, 10).astype(np.uint8), mode="L"))
    for mode in ("pad", "crop"):
        square = np.asarray(images.resize_square(picture, 20, mode).image)
        stored = resize_mask(mask, 20, mode)
        assert square[stored].min() > 127 and (square[~stored] <= 127).mean() > 0.95


# --- the layout ---------------------------------------------------------------------------------


def small_set(directory: Path) -> Path:
    writer = SegSetWriter(directory, "phantom", "lesion", 16)
    for i, split in enumerate(["train", "train", "val", "test"]):
        mask = np.zeros((16, 16), bool)
        mask[i : i + 4, 2:6] = True
        writer.add(f"s{i}", (np.arange(256).reshape(16, 16) % 200).astype(np.uint8), mask, split, source_id=f"id.{i}")
    writer.close(note="x")
    return directory


def test_writer_and_reader_agree(tmp_path):
    directory = small_set(tmp_path / "set")
    meta = json.loads((directory / "meta.json").read_text())
    assert (meta["format"], meta["dataset"], meta["target"], meta["splits"], meta["note"]) == (
        "tier-openclip-seg/1", "phantom", "lesion", {"train": 2, "val": 1, "test": 1}, "x")
    seg = read_seg_set(directory)
    assert [(item.split, item.id) for item in seg.items] == [("train", "id.0"), ("train", "id.1"), ("val", "id.2"), ("test", "id.3")]
    assert read_mask(seg.path(seg.split("test")[0].mask))[3:7, 2:6].all()
    assert seg.image_sizes["images/s0.png"] == (16, 16)


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "splits.csv").write_text("image,mask,split,id\nimages/s0.png,masks/s0.png,holdout,a\n"), "not one of"),
    (lambda d: (d / "splits.csv").write_text("image,mask,split,id\n../s0.png,masks/s0.png,train,a\n"), "climbs out of its folder"),
    (lambda d: write_mask(d / "masks/s0.png", np.zeros((8, 16), bool)), "is 16x8, its image 16x16"),
    (lambda d: (d / "meta.json").write_text('{"format": "tier-openclip-eval/1"}'), "is not 'tier-openclip-seg/1'"),
    (lambda d: (d / "images/s1.png").unlink(), "does not exist"),
])
def test_reader_refuses_broken_sets_saying_what(tmp_path, change, message):
    directory = small_set(tmp_path / "set")
    change(directory)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_seg_set(directory)


def test_seeded_split_keeps_patients_together_and_is_deterministic():
    groups = [f"p{i}" for i in range(100)]
    split = seeded_split(groups, seed=3)
    assert sorted(split) == sorted(groups)
    counts = {name: sum(v == name for v in split.values()) for name in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 10, "test": 20}
    assert seeded_split(list(reversed(groups)) + groups[:5], seed=3) == split  # order and repeats do not matter
    assert seeded_split(groups, seed=4) != split


# --- prep siim ----------------------------------------------------------------------------------


def write_dicom(path: Path, rows: int, cols: int, seed: int, patient: str) -> Path:
    ds = dicom_dataset(smooth_image(rows, cols, seed, 4095), bits_stored=12, window=(2048, 4096))
    ds.PatientID = patient
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def rectangle(height: int, width: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


SIIM_IDS = ["1.2.276.0.7230010.3.1.4.8323329.1", "1.2.276.0.7230010.3.1.4.8323329.2", "1.2.276.0.7230010.3.1.4.8323329.3",
            "1.2.276.0.7230010.3.1.4.8323329.4", "1.2.276.0.7230010.3.1.4.8323329.5"]


@pytest.fixture
def siim_release(tmp_path):
    """dicom-images-train/<study>/<series>/<ImageId>.dcm (24 rows x 32 columns) and train-rle.csv
    with the real header (" EncodedPixels") and values (leading spaces, "-1")."""
    root = tmp_path / "dicom-images-train"
    a, b, c, d, missing = SIIM_IDS
    write_dicom(root / "1.2.3" / "1.2.3.4" / f"{a}.dcm", 24, 32, 0, "patient-A")
    write_dicom(root / "1.2.5" / "1.2.5.6" / f"{b}.dcm", 24, 32, 1, "patient-A")  # same patient as a
    write_dicom(root / "1.2.7" / "1.2.7.8" / f"{c}.dcm", 24, 32, 2, "patient-C")
    write_dicom(root / "1.2.9" / "1.2.9.1" / f"{d}.dcm", 24, 32, 3, "patient-D")
    first, second = rectangle(24, 32, 8, 4, 16, 12), rectangle(24, 32, 20, 10, 24, 20)
    rows = [[a, f" {siim_code(first)}"], [a, f" {siim_code(second)}"], [b, " -1"], [c, " 1 2 3"], [d, " -1"],
            [missing, " -1"]]
    csv_path = write_csv(tmp_path / "train-rle.csv", ["ImageId", " EncodedPixels"], rows)
    return csv_path, root, first | second


def test_prep_siim_decodes_masks_at_the_dicom_size_and_carries_them_with_the_image(siim_release, tmp_path, capsys):
    csv_path, root, union = siim_release
    out = tmp_path / "siim"
    code = cli.main(["siim", "--rle-csv", str(csv_path), "--image-root", str(root), "--out", str(out),
                     "--image-size", "16", "--workers", "1", "--quiet", "--split-fractions", "0.5", "0", "0.5"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["dataset"], meta["target"], meta["image_size"]) == ("siim", "pneumothorax", 16)
    assert meta["skipped"] == {"image_missing": 1, "rle_invalid": 1} and meta["failed"] == {}
    seg = read_seg_set(out)
    by_id = {item.id: item for item in seg.items}
    a, b, c, d, _ = SIIM_IDS
    assert set(by_id) == {a, b, d}
    assert by_id[a].split == by_id[b].split  # one patient, one split
    assert "." not in Path(by_id[a].image).stem  # the UID's dots made safe
    stored = read_mask(seg.path(by_id[a].mask))
    assert np.array_equal(stored, resize_mask(union, 16, "pad"))
    # 32 x 24 -> 16 x 12 at y offset 2: the rectangle x 8..15, y 4..11 lands at x 4..7, y 4..7
    assert stored[4:8, 4:8].all() and stored[:, :4].sum() == 0 and stored[:4].sum() == 0
    assert not read_mask(seg.path(by_id[b].mask)).any()
    image = np.asarray(Image.open(seg.path(by_id[a].image)))
    assert image.shape == (16, 16) and image[:2].max() == 0  # padding rows
    assert sum(meta["positives"].values()) == 1
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"patient-A" not in written and not any(marker in written for marker in PHI_MARKERS)
    failures = list(csv.DictReader(open(out / "failures.csv")))
    assert sorted(row["reason"] for row in failures) == ["image_missing", "rle_invalid"]


def test_prep_siim_takes_a_published_split(siim_release, tmp_path):
    csv_path, root, _ = siim_release
    a, b, _, d, _ = SIIM_IDS
    splits = write_csv(tmp_path / "split.csv", ["ImageId", "split"], [[a, "train"], [d, "valid"]])
    out = tmp_path / "siim"
    assert cli.main(["siim", "--rle-csv", str(csv_path), "--image-root", str(root), "--out", str(out),
                     "--image-size", "16", "--workers", "1", "--quiet", "--splits", str(splits)]) == 0
    seg = read_seg_set(out)
    assert {item.id: item.split for item in seg.items} == {a: "train", d: "val"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"]["not_in_splits"] == 1 and meta["split_source"]["kind"] == "file"


def test_prep_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "root").mkdir()
    bad = write_csv(tmp_path / "bad.csv", ["ImageId", "Mask"], [["x", "-1"]])
    assert cli.main(["siim", "--rle-csv", str(bad), "--image-root", str(tmp_path / "root"), "--out", str(tmp_path / "o")]) == 2
    assert "EncodedPixels" in capsys.readouterr().err
    good = write_csv(tmp_path / "train-rle.csv", ["ImageId", " EncodedPixels"], [["x", " -1"]])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    for out, message in [(foreign, "not empty"), (tmp_path / "root" / "out", "inside --image-root")]:
        assert cli.main(["siim", "--rle-csv", str(good), "--image-root", str(tmp_path / "root"), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "someone else's" and not (tmp_path / "root" / "out").exists()
    assert cli.main(["rsna", "--csv", str(bad), "--image-root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--split-fractions", "0.5", "0.5", "0.5"]) == 2
    assert "must sum to 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["rsna", "--csv", str(bad), "--image-root", str(tmp_path), "--out", str(tmp_path / "o"),
                  "--split-fractions", "0.5,0.5,0.5"])


# --- prep rsna ----------------------------------------------------------------------------------


def test_prep_rsna_draws_boxes_carried_through_the_resize(tmp_path, capsys):
    root = tmp_path / "stage_2_train_images"
    for i, patient in enumerate(["p-box", "p-none", "p-badbox", "p-mixed"]):
        write_dicom(root / f"{patient}.dcm", 32, 40, i, patient)
    rows = [["p-box", 4, 6, 10, 8, 1], ["p-box", 30, 20, 6, 6, 1], ["p-none", "", "", "", "", 0],
            ["p-badbox", "", "", "", "", 1], ["p-mixed", 4, 4, 4, 4, 1], ["p-mixed", "", "", "", "", 0],
            ["../escape", 1, 1, 2, 2, 1], ["p-missing", "", "", "", "", 0]]
    labels = write_csv(tmp_path / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    out = tmp_path / "rsna"
    code = cli.main(["rsna", "--csv", str(labels), "--image-root", str(root), "--out", str(out), "--image-size", "20",
                     "--workers", "1", "--quiet", "--split-fractions", "1", "0", "0"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == {"box_invalid": 1, "rows_disagree": 1, "unsafe_path": 1}
    assert meta["failed"] == {"image_missing": 1}
    seg = read_seg_set(out)
    by_id = {item.id: item for item in seg.items}
    assert set(by_id) == {"p-box", "p-none"} and {item.split for item in seg.items} == {"train"}
    # 40 x 32 -> 20 x 16 at y offset 2: box (4, 6, 10, 8) -> x 2..7, y 5..9; (30, 20, 6, 6) -> x 15..18, y 12..15
    expected = np.zeros((20, 20), bool)
    expected[5:9, 2:7] = True
    expected[12:15, 15:18] = True
    assert np.array_equal(read_mask(seg.path(by_id["p-box"].mask)), expected)
    assert not read_mask(seg.path(by_id["p-none"].mask)).any()

    cropped = tmp_path / "rsna-crop"  # crop: 40 x 32 -> 20 x 16 minus 2 columns each side
    edge = write_csv(tmp_path / "edge.csv", ["patientId", "x", "y", "width", "height", "Target"], [["p-box", 0, 4, 3, 4, 1]])
    assert cli.main(["rsna", "--csv", str(edge), "--image-root", str(root), "--out", str(cropped), "--image-size", "16",
                     "--resize", "crop", "--workers", "1", "--quiet"]) == 0
    meta = json.loads((cropped / "meta.json").read_text())
    assert meta["notes"]["box_outside_image"] == 1
    assert not read_mask(cropped / read_seg_set(cropped).items[0].mask).any()

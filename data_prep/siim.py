"""SIIM-ACR Pneumothorax Segmentation (Kaggle / SIIM, 2019) as a segmentation set.

Input as published: ``train-rle.csv`` with columns ``ImageId`` and `` EncodedPixels`` (the
header really has that leading space; columns are matched stripped), one row per
pneumothorax, and the DICOMs ``<ImageId>.dcm`` anywhere under --image-root (the release nests
them as dicom-images-train/<study>/<series>/<ImageId>.dcm).

Output: the segmentation layout of data_prep/seg_sets.py, target "pneumothorax"::

    OUT/images/<key>.png, OUT/masks/<key>.png, OUT/splits.csv (id = ImageId), OUT/meta.json,
    OUT/failures.csv

Its traps, named in one place:
- The run-length code is column-major with RELATIVE starts and "-1" for an empty image
  (data_prep/rle.py); it is decoded at the DICOM's own Rows x Columns, then the mask goes
  through the image's resize and pad/crop (nearest).
- Several rows of one ImageId are one image whose mask is their union.
- ImageIds are DICOM UIDs, full of dots: file names are ``paths.safe_key(ImageId)`` (hash
  suffix), splits.csv keeps the ImageId.
- The seeded split groups images by the DICOM's PatientID (read from the header, never
  written); --splits takes a published split instead (a CSV with ImageId and split columns).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from pathlib import Path

from . import images, rle
from .paths import safe_key
from .runner import Selection
from .seg_sets import (SegInputs, SegPrepOptions, SegResult, SegSource, dicom_patient, prepare_seg_set, resize_mask, save_pair)

DATASET, TARGET = "siim", "pneumothorax"
ID_COLUMN, RLE_COLUMN = "ImageId", "EncodedPixels"  # the file's header says " EncodedPixels"
SKIP_RLE_INVALID = "rle_invalid"
SKIP_IMAGE_MISSING = images.IMAGE_MISSING
SKIP_DUPLICATE_DICOM = "duplicate_dicom"
INPUTS = SegInputs("--rle-csv", "rle_csv", "the release's train-rle.csv", "SIIM's train-rle.csv (ImageId, EncodedPixels)",
                   (ID_COLUMN, RLE_COLUMN), "the folder holding the DICOMs (dicom-images-train)")


def find_dicoms(root: Path) -> tuple[dict[str, Path], list[str]]:
    """{file stem: path} of the .dcm files under ``root`` (sorted walk), and the stems found twice."""
    found: dict[str, Path] = {}
    twice: list[str] = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            if name.lower().endswith(".dcm"):
                stem = name[: -len(".dcm")]
                if stem in found:
                    twice.append(stem)
                else:
                    found[stem] = Path(folder) / name
    return found, twice


def select_siim(rows: list[dict[str, str]], dicoms: dict[str, Path], twice: Collection[str] = ()) -> Selection[SegSource]:
    """One source per ImageId (in CSV order) with its codes; unusable ones skipped with a reason."""
    selection: Selection[SegSource] = Selection()
    codes: dict[str, list[str]] = {}
    bad: set[str] = set()
    for row in rows:
        image_id, code = row.get(ID_COLUMN, "").strip(), row.get(RLE_COLUMN, "").strip()
        try:
            rle.parse_rle(code)
        except rle.RleError as error:
            if image_id not in bad:
                selection.tally.skip(image_id, SKIP_RLE_INVALID, str(error))
            bad.add(image_id)
            continue
        codes.setdefault(image_id, []).append(code)
    seen: set[str] = set()
    for image_id, image_codes in codes.items():
        if image_id in bad:  # one broken row makes the image's mask unknown
            continue
        if image_id in twice:
            selection.tally.skip(image_id, SKIP_DUPLICATE_DICOM, "two DICOMs under --image-root have this name")
            continue
        path = dicoms.get(image_id)
        if path is None:
            selection.tally.skip(image_id, SKIP_IMAGE_MISSING, f"no {image_id}.dcm under --image-root")
            continue
        selection.items.append(SegSource(image_id, str(path), safe_key(image_id, seen), None, tuple(image_codes)))
    return selection


def render_siim(item: SegSource, options: images.RenderOptions) -> SegResult:
    """Decode the DICOM, decode its mask at the DICOM's size, resize both, write both; runs
    under :func:`runner.guarded` (a code running past the image is ``rle_invalid``)."""
    try:
        gray = images.load_gray(item.source, options.image_size, options.max_pixels)
        width, height = gray.image.size
        mask = rle.union_decode(item.spec, width, height)
        result = save_pair(options, item.key, gray, resize_mask(mask, options.image_size, options.resize))
    except rle.RleError as error:  # runs past the end of this image
        return SegResult(False, SKIP_RLE_INVALID, str(error))
    result.group = dicom_patient(item.source)
    return result


def prepare_siim(rle_csv: Path, image_root: Path, options: SegPrepOptions, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Run ``prep siim``; returns meta.json's content."""
    # The CSV's keys are stripped by read_csv: the file's " EncodedPixels" is "EncodedPixels".
    return prepare_seg_set(INPUTS, rle_csv, image_root, options, lambda rows: select_siim(rows, *find_dicoms(image_root)),
                           render_siim, dataset=DATASET, target=TARGET, id_columns=(ID_COLUMN, "image_id", "id"),
                           progress=progress, log=log)

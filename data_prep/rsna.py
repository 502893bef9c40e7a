"""RSNA Pneumonia Detection Challenge (Kaggle / RSNA, 2018) as a segmentation set: the
opacity boxes as masks, as LoVT and GLoRIA evaluate it.

Input as published: ``stage_2_train_labels.csv`` with columns ``patientId, x, y, width,
height, Target``: one row per box (Target 1) or one row without a box (Target 0, x..height
empty), and ``stage_2_train_images/<patientId>.dcm`` (--image-root), one image per patient.

Output: the segmentation layout of data_prep/seg_sets.py, target "lung opacity"; splits.csv's
id is the patientId.

Its traps, named in one place:
- Boxes (x, y = top-left corner, width, height) are in the DICOM's pixels: each is carried
  through the same geometry that resizes the image (``ms_cxr.box_to_stored`` on
  ``images.square_geometry``), then drawn by pixel centres (``grounding.region_mask``), so no
  mask is resampled; a box the crop cuts off is counted in the notes (``box_outside_image``).
- Several rows of one patientId are one image whose mask is the union of its boxes; a patient
  with both Target 0 and Target 1 rows is skipped (``rows_disagree``).
- ``<patientId>.dcm`` must stay inside --image-root (``unsafe_path``), however the CSV was edited.
- Each patient has one image, so the seeded split by patient is a split by image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from . import images
from .eval_layout import region_mask
from .paths import UNSAFE_PATH, UnsafePathError, resolve_inside, safe_key
from .runner import Selection
from .seg_sets import SegInputs, SegPrepOptions, SegResult, SegSource, prepare_seg_set, save_pair

DATASET, TARGET = "rsna", "lung opacity"
COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
SKIP_BOX_INVALID = "box_invalid"
SKIP_ROWS_DISAGREE = "rows_disagree"
NOTE_BOX_OUTSIDE = "box_outside_image"
INPUTS = SegInputs("--csv", "labels_csv", "the release's stage_2_train_labels.csv",
                   "RSNA's stage_2_train_labels.csv (patientId,x,y,width,height,Target)", COLUMNS, "stage_2_train_images")


def _box(row: dict[str, str]) -> tuple[float, float, float, float] | None:
    """The row's box (x, y, w, h), None for Target 0; ValueError for anything else."""
    target = row.get("Target", "").strip()
    if target not in ("0", "1"):
        raise ValueError(f"Target {target!r} is not 0 or 1")
    values = [row.get(key, "").strip() for key in ("x", "y", "width", "height")]
    if target == "0":
        if any(values):
            raise ValueError(f"Target 0 with a box {values}")
        return None
    box = tuple(float(value) for value in values)
    if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"box {values} is not finite with width, height > 0")
    return box  # type: ignore[return-value]


def select_rsna(rows: list[dict[str, str]], image_root: Path) -> Selection[SegSource]:
    """One source per patientId (in CSV order) with its boxes; unusable ones skipped with a reason."""
    selection: Selection[SegSource] = Selection()
    grouped: dict[str, list] = {}
    bad: dict[str, tuple[str, str]] = {}
    for row in rows:
        patient = row.get("patientId", "").strip()
        try:
            if not patient:
                raise ValueError("empty patientId")
            box = _box(row)
        except ValueError as error:
            bad.setdefault(patient, (SKIP_BOX_INVALID, str(error)))
            continue
        grouped.setdefault(patient, []).append(box)
    for patient, boxes in grouped.items():
        if None in boxes and any(box is not None for box in boxes):
            bad.setdefault(patient, (SKIP_ROWS_DISAGREE, "rows with Target 0 and rows with Target 1"))
    seen: set[str] = set()
    for patient in dict.fromkeys([*grouped, *bad]):
        if patient in bad:
            reason, detail = bad[patient]
            selection.tally.skip(patient, reason, detail)
            continue
        try:
            source = resolve_inside(image_root, f"{patient}.dcm")
        except UnsafePathError as error:
            selection.tally.skip(patient, UNSAFE_PATH, error.detail)
            continue
        boxes = tuple(box for box in grouped[patient] if box is not None)
        selection.items.append(SegSource(patient, str(source), safe_key(patient, seen), patient, boxes))
    return selection


def render_rsna(item: SegSource, options: images.RenderOptions) -> SegResult:
    """Decode the DICOM, carry its boxes into the stored square, draw them, write both; runs
    under :func:`runner.guarded`."""
    from .ms_cxr import box_to_stored

    gray = images.load_gray(item.source, options.image_size, options.max_pixels)
    width, height = gray.image.size
    stored = [box_to_stored(box, width, height, options.image_size, options.resize) for box in item.spec]
    mask = region_mask([box for box in stored if box is not None], options.image_size, options.image_size)
    outside = [NOTE_BOX_OUTSIDE] * sum(box is None for box in stored)
    return save_pair(options, item.key, gray, mask, outside)


def prepare_rsna(labels_csv: Path, image_root: Path, options: SegPrepOptions, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Run ``prep rsna``; returns meta.json's content."""
    return prepare_seg_set(INPUTS, labels_csv, image_root, options, lambda rows: select_rsna(rows, image_root),
                           render_rsna, dataset=DATASET, target=TARGET, id_columns=("patientId", "patient_id", "id"),
                           progress=progress, log=log)

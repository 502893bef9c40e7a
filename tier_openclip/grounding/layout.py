"""The grounding set's layout (``tier-openclip-eval/1``): written and read here, and nowhere else.

    meta.json        {"format": "tier-openclip-eval/1", "dataset", "labels", "image_size", "box_format"}
    images/...       the images (paths relative to the folder, inside it)
    boxes.csv        image,finding,phrase,x0,y0,x1,y1: one row per box, in pixels of the stored
                     image, half-open; the rows of one (image, phrase) are one phrase whose region
                     is the union of its boxes
    prior_boxes.csv  optional finding,x0,y0,x1,y1: boxes of a training split (image-free prior)

A pixel (column c, row r) is inside a box when its centre (c + ½, r + ½) is.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "tier-openclip-eval/1"
BOX_FORMAT = "x0, y0, x1, y1 in pixels of the stored image, half-open"
BOXES_CSV, PRIOR_BOXES_CSV, META_JSON = "boxes.csv", "prior_boxes.csv", "meta.json"
BOX_COLUMNS = ("image", "finding", "phrase", "x0", "y0", "x1", "y1")
PRIOR_COLUMNS = ("finding", "x0", "y0", "x1", "y1")

Box = tuple[float, float, float, float]


def grounding_meta(dataset: str, labels: Sequence[str], image_size: int | None, **extra: Any) -> dict[str, Any]:
    """meta.json of a grounding set: format, dataset, labels, image_size, box_format, then ``extra``."""
    return {"format": FORMAT, "dataset": dataset, "labels": list(labels), "image_size": image_size,
            "box_format": BOX_FORMAT, **extra}


def _write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")  # a killed run never leaves half a CSV
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(temporary, path)


def write_boxes_csv(path: str | Path, rows: Iterable[Sequence]) -> None:
    """boxes.csv from (image, finding, phrase, x0, y0, x1, y1) rows."""
    _write_rows(Path(path), BOX_COLUMNS, rows)


def write_prior_boxes_csv(path: str | Path, rows: Iterable[Sequence]) -> None:
    """prior_boxes.csv from (finding, x0, y0, x1, y1) rows (boxes of a training split)."""
    _write_rows(Path(path), PRIOR_COLUMNS, rows)


@dataclass(frozen=True)
class GroundingPhrase:
    image: str  # path relative to the set's folder, as boxes.csv gives it
    finding: str
    phrase: str
    boxes: tuple[Box, ...]


@dataclass
class GroundingSet:
    directory: Path
    dataset: str | None
    labels: list[str]  # meta's labels, then findings it does not list
    phrases: list[GroundingPhrase]  # in boxes.csv order of their first row
    image_sizes: dict[str, tuple[int, int]]  # image -> (width, height)
    prior_boxes: dict[str, list[Box]] | None  # finding -> training boxes; None without prior_boxes.csv
    meta: dict[str, Any]

    @property
    def images(self) -> list[str]:
        return list(self.image_sizes)

    def path(self, image: str) -> Path:
        return self.directory / image


def _pixel_range(low: float, high: float, size: int) -> tuple[int, int]:
    """Pixels [start, stop) whose centres p + ½ lie in [low, high), clipped to [0, size)."""
    start, stop = math.ceil(low - 0.5), math.ceil(high - 0.5)
    return max(0, min(size, start)), max(0, min(size, stop))


def region_mask(boxes: Iterable[Box], height: int, width: int) -> np.ndarray:
    """(height, width) bool: the union of half-open pixel boxes (x0, y0, x1, y1), by pixel centres."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = _pixel_range(x0, x1, width)
        r0, r1 = _pixel_range(y0, y1, height)
        mask[r0:r1, c0:c1] = True
    return mask


def box_covers_pixels(box: Box, width: int, height: int) -> bool:
    """Whether a box holds the centre of at least one pixel of a width x height image."""
    c0, c1 = _pixel_range(box[0], box[2], width)
    r0, r1 = _pixel_range(box[1], box[3], height)
    return c1 > c0 and r1 > r0


def _parse_box(row: Mapping[str, str], where: str) -> Box:
    try:
        box = tuple(float(row[key]) for key in ("x0", "y0", "x1", "y1"))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: x0, y0, x1, y1 must be numbers, got {[row.get(k) for k in ('x0', 'y0', 'x1', 'y1')]}") from None
    if not all(math.isfinite(v) for v in box) or not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"{where}: box {box} is not x0 < x1, y0 < y1 (finite pixels of the stored image)")
    return box  # type: ignore[return-value]


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column(s) {', '.join(missing)}; expected {','.join(columns)}")
        return list(reader)


def _image_inside(directory: Path, image: str, where: str) -> Path:
    """The image's path: relative, posix, and inside the set's folder (checked lexically, as
    data_prep.paths does: a symlinked images/ folder is the user's choice)."""
    from tier_openclip.data_prep.paths import UnsafePathError, resolve_inside

    if "\\" in image:
        raise ValueError(f"{where}: image {image!r} must use / separators")
    try:
        return resolve_inside(directory, image)
    except UnsafePathError as exc:
        raise ValueError(f"{where}: image {exc}") from None


def read_grounding_set(data_dir: str | Path) -> GroundingSet:
    """The validated grounding set in ``data_dir`` (see the module docstring). Raises
    FileNotFoundError or ValueError saying what is wrong and where."""
    from PIL import Image

    directory = Path(data_dir)
    boxes_path, meta_path = directory / BOXES_CSV, directory / META_JSON
    for path in (meta_path, boxes_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: make a grounding set with `tier-openclip prep ms-cxr` "
                                    "(the demo's phantom test set is one too)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path} is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_path}: format {found!r} is not {FORMAT!r}")
    labels = [str(label) for label in meta.get("labels") or []]

    rows = _read_csv(boxes_path, BOX_COLUMNS)
    if not rows:
        raise ValueError(f"{boxes_path} has no boxes")
    sizes: dict[str, tuple[int, int]] = {}
    grouped: dict[tuple[str, str], tuple[str, list[Box]]] = {}
    for i, row in enumerate(rows):
        where = f"{boxes_path} row {i + 2}"
        image, finding, phrase = (str(row[key] or "").strip() for key in ("image", "finding", "phrase"))
        if not finding or not phrase:
            raise ValueError(f"{where}: finding and phrase must not be empty")
        if labels and finding not in labels:
            raise ValueError(f"{where}: finding {finding!r} is not one of meta.json's labels {labels}")
        box = _parse_box(row, where)
        if image not in sizes:
            path = _image_inside(directory, image, where)
            if not path.is_file():
                raise FileNotFoundError(f"{where}: image {image} does not exist in {directory}")
            try:
                with Image.open(path) as opened:  # reads the header only
                    sizes[image] = opened.size
            except Exception as exc:  # PIL raises several types for files that are not images
                raise ValueError(f"{where}: {image} is not an image ({type(exc).__name__}: {exc})") from None
        if not box_covers_pixels(box, *sizes[image]):
            raise ValueError(f"{where}: box {box} holds no pixel of {image} ({sizes[image][0]}x{sizes[image][1]})")
        known, boxes = grouped.setdefault((image, phrase), (finding, []))
        if known != finding:
            raise ValueError(f"{where}: phrase {phrase!r} of {image} is both {known!r} and {finding!r}")
        boxes.append(box)
    phrases = [GroundingPhrase(image, finding, phrase, tuple(boxes)) for (image, phrase), (finding, boxes) in grouped.items()]
    labels += sorted({p.finding for p in phrases} - set(labels))

    prior = None
    prior_path = directory / PRIOR_BOXES_CSV
    if prior_path.is_file():
        prior = {}
        for i, row in enumerate(_read_csv(prior_path, PRIOR_COLUMNS)):
            finding = str(row["finding"] or "").strip()
            prior.setdefault(finding, []).append(_parse_box(row, f"{prior_path} row {i + 2}"))
    dataset = meta.get("dataset")
    return GroundingSet(directory, str(dataset) if dataset else None, labels, phrases, sizes, prior, meta)

"""The evaluation-set layout ``tier-openclip-eval/1``: written and read here, and nowhere else.

Written by ``tier-openclip prep chexpert|padchest`` (zero-shot sets), ``prep ms-cxr`` (grounding
sets) and the phantom (both in one folder); read by the zero-shot evaluator and by grounding::

    meta.json        {"format": "tier-openclip-eval/1", "dataset", "labels", ...}; a grounding set
                     adds "image_size" and "box_format"; a zero-shot set "competition_labels"
                     and, for CheXpert, "split" ("valid", "test", or "mixed")
    images/...       the images (paths relative to the folder, inside it, POSIX separators)
    labels.csv       zero-shot: column image, then one column per label: 1 positive, 0 negative,
                     blank unknown
    boxes.csv        grounding: image,finding,phrase,x0,y0,x1,y1: one row per box, in pixels of
                     the stored image, half-open; the rows of one (image, phrase) are one phrase
                     whose region is the union of its boxes
    prior_boxes.csv  grounding, optional: finding,x0,y0,x1,y1[,phrase]: boxes of a training split
                     (image-free priors; with the phrase, also the located prior)

A pixel (column c, row r) is inside a box when its centre (c + ½, r + ½) is.

It lives in data_prep, the lower layer: the prep commands write it without importing the model
side, and the evaluators (tier_openclip) import it from here.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import META_JSON, write_csv_atomic, write_json_atomic
from .tables import refuse_duplicated_columns
from .chexpert import CHEXPERT_COMPETITION_LABELS, UNCERTAIN, parse_chexpert_label
from .paths import UnsafePathError, resolve_inside

FORMAT = "tier-openclip-eval/1"
BOX_FORMAT = "x0, y0, x1, y1 in pixels of the stored image, half-open"
LABELS_CSV, BOXES_CSV, PRIOR_BOXES_CSV = "labels.csv", "boxes.csv", "prior_boxes.csv"
BOX_COLUMNS = ("image", "finding", "phrase", "x0", "y0", "x1", "y1")
PRIOR_COLUMNS = ("finding", "x0", "y0", "x1", "y1")
PRIOR_PHRASE_COLUMN = "phrase"  # optional: the training phrase that named the box


# --- writing -----------------------------------------------------------------------------------


def eval_meta(dataset: str, labels: Sequence[str], **extra: Any) -> dict[str, Any]:
    """meta.json of an evaluation set: format, dataset, labels, then ``extra`` (in that order)."""
    return {"format": FORMAT, "dataset": dataset, "labels": list(labels), **extra}


def grounding_meta(dataset: str, labels: Sequence[str], image_size: int | None, **extra: Any) -> dict[str, Any]:
    """meta.json of a grounding set: format, dataset, labels, image_size, box_format, then ``extra``."""
    return eval_meta(dataset, labels, image_size=image_size, box_format=BOX_FORMAT, **extra)


def write_meta(directory: str | Path, meta: Mapping[str, Any]) -> None:
    """meta.json of the set in ``directory``."""
    write_json_atomic(Path(directory) / META_JSON, meta)


def write_labels_csv(path: str | Path, labels: Sequence[str], rows: Iterable[Sequence], *,
                     lineterminator: str = "\r\n") -> None:
    """labels.csv from (image, value per label) rows; a value None (unknown) is a blank cell.
    (The phantom's file ends its lines with \\n, prep's with the csv module's \\r\\n: both are kept
    as they were, byte for byte.)"""
    cells = ([row[0], *("" if v is None else v for v in row[1:])] for row in rows)
    write_csv_atomic(path, ["image", *labels], cells, lineterminator=lineterminator)


def write_boxes_csv(path: str | Path, rows: Iterable[Sequence]) -> None:
    """boxes.csv from (image, finding, phrase, x0, y0, x1, y1) rows."""
    write_csv_atomic(path, BOX_COLUMNS, rows)


def write_prior_boxes_csv(path: str | Path, rows: Iterable[Sequence]) -> None:
    """prior_boxes.csv from (finding, x0, y0, x1, y1) or (finding, x0, y0, x1, y1, phrase) rows
    (boxes of a training split; all rows of one file alike)."""
    rows = [list(row) for row in rows]
    with_phrase = bool(rows) and len(rows[0]) == len(PRIOR_COLUMNS) + 1
    if any(len(row) != len(PRIOR_COLUMNS) + with_phrase for row in rows):
        raise ValueError("prior_boxes.csv rows must all be (finding, x0, y0, x1, y1) or all add the phrase")
    write_csv_atomic(path, (*PRIOR_COLUMNS, PRIOR_PHRASE_COLUMN) if with_phrase else PRIOR_COLUMNS, rows)


# --- reading: shared ---------------------------------------------------------------------------


def _image_inside(directory: Path, image: str, where: str, *, posix_only: bool = False) -> Path:
    """The image's path: relative and inside the set's folder (checked lexically, as
    data_prep.paths does: a symlinked images/ folder is the user's choice)."""
    if posix_only and "\\" in image:
        raise ValueError(f"{where}: image {image!r} must use / separators")
    try:
        return resolve_inside(directory, image)
    except UnsafePathError as error:
        raise ValueError(f"{where}: image {error.detail}") from None


# --- reading: zero-shot sets (labels.csv) ------------------------------------------------------


@dataclass
class EvalSet:
    directory: Path
    dataset: str | None  # "chexpert" / "padchest" from meta.json
    labels: list[str]
    images: list[Path]
    targets: Any  # np.ndarray (N, L) float: 1, 0, NaN for unknown
    competition_labels: list[str] = field(default_factory=list)
    split: str | None = None  # meta.json's "split": CheXpert "valid" / "test" (None when unknown)


def parse_label_cell(value: str, where: str) -> float:
    """A labels.csv cell: 1.0, 0.0, or NaN for blank (unknown); an uncertain CheXpert -1 or anything
    else raises ValueError naming ``where``."""
    try:
        number = parse_chexpert_label(value)
    except ValueError:
        number = UNCERTAIN
    if number == UNCERTAIN:
        raise ValueError(f"{where}: {value.strip()!r} is not a label; expected 1, 0 or blank (unknown). "
                         "Uncertain CheXpert labels (-1) must be mapped by `tier-openclip prep`.")
    return math.nan if number is None else number


def read_meta(directory: str | Path) -> dict[str, Any]:
    """An evaluation set's meta.json ({} when it has none); ValueError when it is not the object
    `tier-openclip prep` writes."""
    path = Path(directory) / META_JSON
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); make the set again with `tier-openclip prep`") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a JSON {type(meta).__name__}, not the object `tier-openclip prep` writes")
    for key in ("labels", "competition_labels"):
        if meta.get(key) is not None and not (isinstance(meta[key], list) and all(isinstance(x, str) for x in meta[key])):
            raise ValueError(f"{path}: {key!r} must be a list of label names")
    if meta.get("dataset") is not None and not isinstance(meta["dataset"], str):
        raise ValueError(f"{path}: 'dataset' must be a name such as 'chexpert'")
    return meta


def read_format_meta(directory: Path, files: Sequence[str], format: str, make_it: str) -> dict[str, Any]:
    """The meta.json of a set in ``directory`` whose ``files`` (meta.json among them) must all be
    there, else FileNotFoundError ending with ``make_it`` (how to make the set); ValueError when
    meta.json is not JSON or its "format" is not ``format``. The grounding and segmentation sets'."""
    for path in (directory / name for name in files):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {make_it}")
    meta_path = directory / META_JSON
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path} is not JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != format:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_path}: format {found!r} is not {format!r}")
    return meta


def read_set_csv(path: Path, columns: Sequence[str], expected: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The rows of a set's CSV, which must name each of ``columns`` once (``expected``: the full
    header the error shows, default ``columns``)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        refuse_duplicated_columns(path, reader.fieldnames)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column(s) {', '.join(missing)}; expected {','.join(expected or columns)}")
        return list(reader)


def read_eval_set(directory: str | Path, labels: Sequence[str] | None = None) -> EvalSet:
    """labels.csv and meta.json of an evaluation set; ``labels`` selects columns (default: meta's labels)."""
    directory = Path(directory)
    csv_path = directory / LABELS_CSV
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: make the evaluation set with `tier-openclip prep chexpert|padchest`")
    meta = read_meta(directory)
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        refuse_duplicated_columns(csv_path, reader.fieldnames)
        columns = [c for c in reader.fieldnames or [] if c != "image"]
        if "image" not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path} has no 'image' column (columns: {reader.fieldnames})")
        rows = list(reader)
    available = list(meta.get("labels") or columns)
    if labels is None:
        selected = available
    else:
        by_name = {c.lower(): c for c in columns}
        unknown = [name for name in labels if name.lower() not in by_name]
        if unknown:
            raise ValueError(f"labels {unknown} are not columns of {csv_path}; available: {', '.join(columns)}")
        selected = [by_name[name.lower()] for name in labels]
    missing_columns = [name for name in selected if name not in columns]
    if missing_columns:
        raise ValueError(f"meta.json lists labels {missing_columns} that {csv_path} has no column for")
    targets = np.array(
        [[parse_label_cell(row[name] or "", f"{csv_path} row {i + 2}, {name}") for name in selected] for i, row in enumerate(rows)],
        dtype=np.float64,
    ).reshape(len(rows), len(selected))
    images = [_image_inside(directory, row["image"] or "", f"{csv_path} row {i + 2}") for i, row in enumerate(rows)]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {csv_path} do not exist, e.g. {missing[:3]}")
    dataset = meta.get("dataset")
    # The CheXpert competition tasks (Irvin et al., 2019), when meta.json does not list them.
    competition = list(meta.get("competition_labels") or (CHEXPERT_COMPETITION_LABELS if dataset == "chexpert" else []))
    split = meta.get("split") if isinstance(meta.get("split"), str) else None
    return EvalSet(directory, dataset, selected, images, targets, [c for c in competition if c in selected], split)


# --- reading: grounding sets (boxes.csv) -------------------------------------------------------


Box = tuple[float, float, float, float]


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
    prior_phrases: dict[str, list[str]] | None = None  # finding -> each training box's phrase, when given

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


def read_grounding_set(data_dir: str | Path) -> GroundingSet:
    """The validated grounding set in ``data_dir`` (see the module docstring). Raises
    FileNotFoundError or ValueError saying what is wrong and where."""
    from PIL import Image

    directory = Path(data_dir)
    boxes_path = directory / BOXES_CSV
    meta = read_format_meta(directory, (META_JSON, BOXES_CSV), FORMAT, "make a grounding set with `tier-openclip "
                            "prep ms-cxr` (the demo's phantom test set is one too)")
    labels = [str(label) for label in meta.get("labels") or []]

    rows = read_set_csv(boxes_path, BOX_COLUMNS)
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
            path = _image_inside(directory, image, where, posix_only=True)
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

    prior = prior_phrases = None
    prior_path = directory / PRIOR_BOXES_CSV
    if prior_path.is_file():
        prior = {}
        prior_rows = read_set_csv(prior_path, PRIOR_COLUMNS)
        prior_phrases = {} if prior_rows and PRIOR_PHRASE_COLUMN in prior_rows[0] else None
        for i, row in enumerate(prior_rows):
            finding = str(row["finding"] or "").strip()
            prior.setdefault(finding, []).append(_parse_box(row, f"{prior_path} row {i + 2}"))
            if prior_phrases is not None:
                prior_phrases.setdefault(finding, []).append(str(row[PRIOR_PHRASE_COLUMN] or "").strip())
    dataset = meta.get("dataset")
    return GroundingSet(directory, str(dataset) if dataset else None, labels, phrases, sizes, prior, meta,
                        prior_phrases)

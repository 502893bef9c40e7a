"""MS-CXR (Boecking et al., ECCV 2022; PhysioNet ``ms-cxr`` 1.1.0) as a phrase-grounding set.

Input as published: ``MS_CXR_Local_Alignment_v1.1.0.csv``, one row per box, with columns
``dicom_id, category_name, label_text, path, x, y, w, h, image_width, image_height, split``:
``path`` is relative to the MIMIC-CXR-JPG root (``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg``),
``x, y`` the box's top-left corner and ``w, h`` its size, in pixels of that ORIGINAL JPG, whose
size is ``image_width`` x ``image_height``; ``split`` is train/val/test (``--splits`` selects).

Output: the grounding layout that ``tier-openclip eval grounding`` reads (eval_layout.py owns it
and writes boxes.csv and meta.json for us)::

    OUT/images/<key>.png  8-bit grayscale, preprocessed as ``prep mimic-cxr`` does (--image-size, --resize)
    OUT/boxes.csv         image,finding,phrase,x0,y0,x1,y1: finding = category_name, phrase =
                          label_text, the box in pixels of the stored PNG (half-open, floats)
    OUT/meta.json         format, dataset "ms-cxr", labels (the categories), image_size, box_format,
                          phrases and boxes per finding, skipped/failed/dropped per reason, options
    OUT/sources.csv       image, dicom_id, path: where each PNG came from
    OUT/failures.csv      source, kind (skipped/failed/dropped), reason, detail, ..., dicom_id, ...

Its traps, named in one place:
- Boxes are in the original JPG's pixels, not the stored image's: each is clipped to the JPG,
  carried through the very geometry that resizes the image (``images.square_geometry``, which
  ``resize_square`` uses), and clipped to the stored square. A box the crop cuts off entirely
  (``--resize crop``) is dropped (``box_outside_image``), as is one that holds no pixel centre
  once shrunk (``box_too_small``); a phrase with no box left is gone.
- The JPG is decoded at full size (no reduced-size JPEG draft) and must be exactly the size the
  CSV gives (else ``size_mismatch``): the box arithmetic rests on it.
- Rows with the same (dicom_id, label_text) are one phrase with several boxes: boxes.csv keeps
  one row per box and the evaluator takes the union, so nothing is merged here.
- ``path`` must stay inside --image-root (``unsafe_path``), however the CSV was edited.
- Image names: ``images/<key>.png`` with ``key = paths.safe_key(dicom_id)``: MIMIC's ids
  (hex with dashes) are their own keys; anything else (dots, slashes) is made safe and gets a
  hash suffix. sources.csv keeps the dicom_id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import images
from .atomic import write_bytes_atomic, write_csv_atomic
from .errors import PrepError
from .paths import UNSAFE_PATH, UnsafePathError, resolve_inside, safe_key
from .runner import ItemResult, RunSettings, Selection, Tally, check_run_options, claim_out, run_image_set

COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
DATASET = "ms-cxr"
SOURCES_CSV = "sources.csv"

# Skip reasons (rows never rendered), failure reasons beyond images.py's, box drops.
SKIP_UNSAFE_PATH = UNSAFE_PATH
SKIP_BOX_INVALID = "box_invalid"  # x, y, w, h or the image size not numbers, or w, h <= 0
SKIP_ROWS_DISAGREE = "rows_disagree"  # a dicom_id whose rows give another path or image size
SKIP_SPLIT = "split_not_selected"
FAIL_SIZE_MISMATCH = "size_mismatch"
DROP_OUTSIDE = "box_outside_image"
DROP_TOO_SMALL = "box_too_small"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class MsCxrBox:
    finding: str
    phrase: str
    xywh: tuple[float, float, float, float]  # in the original JPG's pixels


@dataclass(frozen=True)
class MsCxrImage:
    dicom_id: str
    path: str  # as the CSV gives it
    source: str  # resolved inside --image-root
    image: str  # output path relative to OUT
    width: int
    height: int
    boxes: tuple[MsCxrBox, ...]


def box_to_stored(xywh: tuple[float, float, float, float], width: int, height: int, size: int, mode: str) -> Box | None:
    """A box (x, y, w, h) in pixels of a ``width`` x ``height`` image -> (x0, y0, x1, y1) in
    pixels of the ``size`` square that ``images.resize_square(..., size, mode)`` makes of it;
    None when nothing of it is left (cut off by the crop)."""
    x, y, w, h = xywh
    x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    (new_w, new_h), (offset_x, offset_y) = images.square_geometry(width, height, size, mode)
    sx, sy = new_w / width, new_h / height

    def clip(value: float) -> float:
        return min(float(size), max(0.0, value))

    box = (clip(x0 * sx + offset_x), clip(y0 * sy + offset_y), clip(x1 * sx + offset_x), clip(y1 * sy + offset_y))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _number(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not finite")
    return number


def select_ms_cxr(rows: Sequence[dict[str, str]], image_root: Path, *,
                  splits: Sequence[str] | None = None) -> Selection[MsCxrImage]:  # fmt: skip
    """One item per dicom_id (in CSV order) with its boxes; rows that cannot be used are skipped
    with a reason (module docstring)."""
    selection: Selection[MsCxrImage] = Selection()
    tally = selection.tally
    wanted = None if splits is None else {s.strip().lower() for s in splits}
    grouped: dict[str, dict] = {}
    for row in rows:
        dicom_id, path = row.get("dicom_id", ""), row.get("path", "")
        if wanted is not None and row.get("split", "").strip().lower() not in wanted:
            tally.add("skipped", path, SKIP_SPLIT, listed=False)
            continue
        try:
            xywh = tuple(_number(row[k]) for k in ("x", "y", "w", "h"))
            size = (int(_number(row["image_width"])), int(_number(row["image_height"])))
            if xywh[2] <= 0 or xywh[3] <= 0 or min(size) < 1 or not dicom_id:
                raise ValueError("w, h and the image size must be positive, dicom_id not empty")
        except (KeyError, ValueError) as error:
            tally.skip(path or dicom_id, SKIP_BOX_INVALID, str(error), dicom_id=dicom_id)
            continue
        entry = grouped.get(dicom_id)
        if entry is None:
            try:
                source = resolve_inside(image_root, path.replace("\\", "/"))
            except UnsafePathError as error:
                tally.skip(path, SKIP_UNSAFE_PATH, error.detail, dicom_id=dicom_id)
                continue
            entry = grouped[dicom_id] = {"path": path, "source": str(source), "size": size, "boxes": []}
        elif (entry["path"], entry["size"]) != (path, size):
            tally.skip(path, SKIP_ROWS_DISAGREE, f"dicom_id {dicom_id} was {entry['path']} {entry['size']} in an earlier row",
                       dicom_id=dicom_id)
            continue
        entry["boxes"].append(MsCxrBox(row.get("category_name", ""), row.get("label_text", ""), xywh))  # type: ignore[arg-type]
    seen: set[str] = set()
    for dicom_id, entry in grouped.items():
        image = f"images/{safe_key(dicom_id, seen)}.png"
        selection.items.append(MsCxrImage(dicom_id, entry["path"], entry["source"], image, *entry["size"], tuple(entry["boxes"])))
    return selection


def render_ms_cxr_image(item: MsCxrImage, options: images.RenderOptions) -> ItemResult:
    """Decode at full size, check the size, resize, write one PNG (temporary name, then
    rename); runs under :func:`runner.guarded`."""
    gray = images.load_gray(item.source, max(item.width, item.height), options.max_pixels)  # min size = no draft
    if gray.image.size != (item.width, item.height):
        return ItemResult(False, FAIL_SIZE_MISMATCH, f"{gray.image.size[0]}x{gray.image.size[1]} pixels, "
                                                     f"the CSV says {item.width}x{item.height}")
    square = images.resize_square(gray, options.image_size, options.resize)  # type: ignore[arg-type]
    write_bytes_atomic(resolve_inside(options.out, item.image), images.encode_image(square.image, "png"))
    return ItemResult(True, notes=square.notes)


@dataclass(frozen=True)
class MsCxrOptions:
    csv: Path
    image_root: Path
    out: Path
    image_size: int = 512
    resize: str = "pad"
    splits: tuple[str, ...] | None = None  # None: every row
    workers: int = 1
    sample_timeout: float = 600.0
    max_pixels: int = images.DEFAULT_MAX_PIXELS

    def as_json(self) -> dict:
        return {"csv": str(self.csv.resolve()), "image_root": str(self.image_root.resolve()), "out": str(self.out.resolve()),
                "image_size": self.image_size, "resize": self.resize, "splits": None if self.splits is None else list(self.splits),
                "workers": self.workers}


def prepare_ms_cxr(options: MsCxrOptions, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run ``prep ms-cxr`` (the prep runner with MS-CXR's reader, renderer and writers); returns
    meta.json's content."""
    from .eval_layout import BOXES_CSV, PRIOR_BOXES_CSV
    from .tables import read_csv

    if not options.csv.is_file():
        raise PrepError(f"--csv {options.csv} does not exist: pass MS_CXR_Local_Alignment_v1.1.0.csv")
    if not options.image_root.is_dir():
        raise PrepError(f"--image-root {options.image_root} is not a folder: pass the MIMIC-CXR-JPG root (the one holding files/)")
    check_run_options(resize=options.resize, workers=options.workers, image_size=options.image_size,
                      sample_timeout=options.sample_timeout, max_pixels=options.max_pixels)
    claim_out(options.out, {"--image-root": options.image_root}, {"--csv": options.csv},
              (BOXES_CSV, PRIOR_BOXES_CSV, SOURCES_CSV))
    rows = read_csv(options.csv)
    if not rows:
        raise PrepError(f"{options.csv} has no rows")
    missing = [c for c in COLUMNS if c not in rows[0]] + (["split"] if options.splits and "split" not in rows[0] else [])
    if missing:
        raise PrepError(f"{options.csv} has no column(s) {', '.join(missing)}: is it MS-CXR's MS_CXR_Local_Alignment CSV?")
    settings = RunSettings(images.RenderOptions(str(options.out), options.image_size, options.resize, options.max_pixels),
                           options.workers, options.sample_timeout, DATASET)
    return run_image_set(options.out, select_ms_cxr(rows, options.image_root, splits=options.splits),
                         render_ms_cxr_image, settings, lambda done, tally: _write_grounding_set(options, done, tally),
                         source=lambda item: item.source, written=lambda meta: meta["boxes"],
                         empty=f"no box of {options.csv} was written", progress=progress, log=log)


def _write_grounding_set(options: MsCxrOptions, done: list[tuple[MsCxrImage, ItemResult]], tally: Tally) -> dict:
    """boxes.csv (the boxes carried into the stored square; the ones lost counted as dropped)
    and sources.csv; returns meta.json's content."""
    from .eval_layout import BOXES_CSV, box_covers_pixels, grounding_meta, write_boxes_csv

    boxes: list[list] = []
    sources: list[list] = []
    for item, _ in done:
        kept = 0
        for box in item.boxes:
            stored = box_to_stored(box.xywh, item.width, item.height, options.image_size, options.resize)
            reason = DROP_OUTSIDE if stored is None else None
            if stored is not None and not box_covers_pixels(stored, options.image_size, options.image_size):
                reason = DROP_TOO_SMALL
            if reason:
                tally.add("dropped", item.source, reason, f"{box.phrase!r} box {box.xywh}", dicom_id=item.dicom_id)
                continue
            boxes.append([item.image, box.finding, box.phrase, *stored])  # type: ignore[misc]
            kept += 1
        if kept:
            sources.append([item.image, item.dicom_id, item.path])
    labels = sorted({row[1] for row in boxes})
    phrases = {(row[0], row[2]): row[1] for row in boxes}
    write_boxes_csv(options.out / BOXES_CSV, boxes)
    write_csv_atomic(options.out / SOURCES_CSV, ["image", "dicom_id", "path"], sources)
    counts = tally.counts()
    return grounding_meta(
        DATASET, labels, options.image_size,
        images=len(sources), phrases=len(phrases), boxes=len(boxes),
        per_finding={label: {"phrases": sum(1 for f in phrases.values() if f == label),
                             "boxes": sum(1 for row in boxes if row[1] == label)} for label in labels},
        skipped=counts["skipped"], failed=counts["failed"],
        dropped_boxes=dict(sorted(tally.dropped.items())), notes=counts["notes"],
        preprocessing={"image_size": options.image_size, "resize": options.resize, "format": "png"},
        options=options.as_json(),
    )  # fmt: skip

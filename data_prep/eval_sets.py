"""Zero-shot evaluation sets: CheXpert (valid or test) and PadChest (physician-labelled).

CheXpert comes in two published layouts, both read by ``prep chexpert``:

- ``valid.csv`` of CheXpert-v1.0 (200 patients, 234 radiographs; the split to tune on):
  Path (``CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg``), Sex, Age,
  Frontal/Lateral, AP/PA, then the 14 labels.
- ``test_labels.csv`` of the test set (500 patients, 668 radiographs; the split the field reports
  on), whose radiologist labels were released with CheXlocalize (Saporta et al., 2022) in its
  ``CheXpert/`` folder beside ``CheXpert/test/``: Path (``test/patient64741/study1/view1_frontal.jpg``,
  relative to that folder) then the 14 labels, no view columns (the file name says frontal or
  lateral). Confirmed from CheXlocalize's README (github.com/rajpurkarlab/cheXlocalize, commit
  2a79492e, "CheXpert/test_labels.csv: CheXpert test set ground-truth labels"; 668 CXRs of 500
  patients) and from public readers of that file, which read the header
  ``Path,No Finding,Enlarged Cardiomediastinum,...,Support Devices`` and Paths as above.
meta.json's "split" says which: the folder after the optional ``CheXpert-v1.0*`` prefix
(``valid``, ``test``), or ``mixed``.

Output: the evaluation layout (eval_layout.py owns it and writes labels.csv and meta.json for
us), the same for both::

    OUT/images/...png   8-bit grayscale PNGs, preprocessed like the training images
                        (same --image-size and --resize as `prep mimic-cxr`; PNG, lossless)
    OUT/labels.csv      column `image` (the PNG's path relative to OUT, POSIX separators),
                        then one column per label: 1 positive, 0 negative, blank unknown or
                        uncertain (the evaluator drops blank rows per label)
    OUT/meta.json       dataset, label list (= labels.csv's label columns, in order), the
                        CheXpert competition labels, counts per label, skipped/failed/notes
                        counts, preprocessing and the exact options
    OUT/failures.csv    source, kind (skipped/failed), reason, detail, ... (atomic.FAILURE_COLUMNS)

Rows of labels.csv are in the CSV's order; only images written successfully are listed.
Images are re-rendered on every run and written under a temporary name then renamed, so a
killed run never leaves a truncated PNG.

Files: every image path built from the CSV must stay inside its folder (the source inside
``--image-root``, the output inside ``OUT/images``), or the row is skipped with reason
``unsafe_path``. ``OUT/.prep-state/images.json`` lists the images this tool wrote (saved
before rendering, so a killed run's are listed too); a rerun removes the listed images it no
longer writes and nothing else, and a row whose output name is held by a file the list does
not name is skipped (``output_exists``). The run (lock, workers, failures.csv, meta.json) is
the prep runner's (runner.py).
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import images
from .atomic import temporary_path, write_bytes_atomic, write_json_atomic
from .chexpert import CHEXPERT_COMPETITION_LABELS, CHEXPERT_LABELS, POSITIVE, UNCERTAIN, parse_chexpert_label
from .errors import PrepError
from .eval_layout import LABELS_CSV, eval_meta, write_labels_csv
from .limits import DEFAULT_MAX_PIXELS
from .paths import UNSAFE_PATH, UnsafePathError, normalized_relative, resolve_inside
from .runner import ItemResult, RunSettings, Selection, Tally, check_run_options, claim_out, run_image_set
from .tables import read_csv

PADCHEST_FRONTAL = ("PA", "AP", "AP_horizontal")

# Skip reasons (rows never rendered) and failure reasons beyond images.py's.
SKIP_NOT_FRONTAL = "view_not_selected"
SKIP_LABELS_INVALID = "labels_invalid"
SKIP_NOT_PHYSICIAN = "not_physician_labelled"
SKIP_LABELS_EMPTY = "labels_empty"
SKIP_EXCLUDED = "labelled_exclude"
SKIP_UNSAFE_PATH = UNSAFE_PATH  # the CSV's image path leaves --image-root or OUT/images
SKIP_OUTPUT_EXISTS = "output_exists"  # the output name is held by a file this tool did not write
SKIP_DUPLICATE = "duplicate_image"  # a second row for the same image
IMAGES_RECORD = "images.json"  # in OUT/.prep-state: the images this tool wrote


@dataclass(frozen=True)
class EvalImage:
    source: str  # path of the input image
    image: str  # output path relative to OUT
    labels: tuple  # one value per label: 1, 0 or None (CheXpert); the label list (PadChest)


def render_eval_image(item: EvalImage, options: images.RenderOptions) -> ItemResult:
    """Decode, resize and write one PNG (temporary name, then rename); runs under
    :func:`runner.guarded`."""
    gray = images.load_gray(item.source, options.image_size, options.max_pixels)
    square = images.resize_square(gray, options.image_size, options.resize)  # type: ignore[arg-type]
    # selection checked the path; a second look is cheap
    write_bytes_atomic(resolve_inside(options.out, item.image), images.encode_image(square.image, "png"))
    return ItemResult(True, notes=square.notes)


# ---------------------------------------------------------------------------------------------
# CheXpert


def parse_chexpert_value(value: str) -> int | None:
    """A CheXpert cell as labels.csv holds it: 1 positive, 0 negative, None for uncertain (-1) and
    blank (the evaluator drops unknowns per label); anything else raises ValueError."""
    number = parse_chexpert_label(value)
    if number is None or number == UNCERTAIN:
        return None
    return 1 if number == POSITIVE else 0


def _chexpert_parts(path: str) -> tuple[str, ...]:
    """The CSV's Path, normalised, checked to stay below its folder (UnsafePathError)."""
    return normalized_relative(path.replace("\\", "/")).parts


def chexpert_output_path(path: str) -> str:
    """``CheXpert-v1.0/valid/patient1/study1/view1_frontal.jpg`` ->
    ``images/valid/patient1/study1/view1_frontal.png`` (a leading ``CheXpert-v1.0*`` folder
    is dropped; the rest of the path is kept, so names stay unique). An absolute path or one
    that climbs out of its folder raises UnsafePathError."""
    parts = _chexpert_parts(path)
    if parts and parts[0].lower().startswith("chexpert"):
        parts = parts[1:]
    if not parts:
        raise UnsafePathError(f"{path!r} names a folder, not an image")
    return str(PurePosixPath("images", *parts).with_suffix(".png"))


def chexpert_split(images: Iterable[str]) -> str | None:
    """The CheXpert split of output paths ``images/<split>/patient.../...png``: ``valid``,
    ``test`` (or any one folder name), ``mixed`` for several, None for none."""
    splits = {PurePosixPath(image).parts[1] for image in images if len(PurePosixPath(image).parts) > 2}
    return None if not splits else splits.pop() if len(splits) == 1 else "mixed"


def resolve_image(image_root: Path, path: str) -> Path:
    """``image_root / path``; when that does not exist and ``path`` starts with a
    ``CheXpert-v1.0*`` folder, ``image_root`` may be that folder itself. Either way inside
    ``image_root``, or UnsafePathError."""
    direct = resolve_inside(image_root, path.replace("\\", "/"))
    if direct.exists():
        return direct
    parts = _chexpert_parts(path)
    if len(parts) > 1 and parts[0].lower().startswith("chexpert"):
        return resolve_inside(image_root, PurePosixPath(*parts[1:]))
    return direct


def is_frontal(row: dict[str, str]) -> bool:
    """``Frontal/Lateral`` == Frontal; a CSV without that column (some test-set CSVs): the file
    name says ``frontal``."""
    if "Frontal/Lateral" in row:
        return row["Frontal/Lateral"].strip().lower() == "frontal"
    return "frontal" in PurePosixPath(row["Path"]).name.lower()


def select_chexpert(rows: Sequence[dict[str, str]], image_root: Path, *, frontal_only: bool) -> Selection[EvalImage]:
    selection: Selection[EvalImage] = Selection()
    tally = selection.tally
    for row in rows:
        source = row.get("Path", "")
        if frontal_only and not is_frontal(row):
            tally.add("skipped", source, SKIP_NOT_FRONTAL, listed=False)
            continue
        try:
            image, resolved = chexpert_output_path(source), resolve_image(image_root, source)
        except UnsafePathError as error:
            tally.skip(source, SKIP_UNSAFE_PATH, error.detail)
            continue
        try:
            labels = tuple(parse_chexpert_value(row.get(name, "")) for name in CHEXPERT_LABELS)
        except ValueError as error:
            tally.skip(source, SKIP_LABELS_INVALID, str(error))
            continue
        selection.items.append(EvalImage(str(resolved), image, labels))
    return selection


# ---------------------------------------------------------------------------------------------
# PadChest


def parse_padchest_labels(cell: str) -> list[str]:
    """PadChest's ``Labels`` cell, a Python-list-like string such as
    ``"['pleural effusion', ' cardiomegaly']"``: entries stripped and lower-cased, empty ones
    dropped, duplicates removed (first occurrence kept). Raises ValueError when the cell is not
    a list of strings (``nan`` cells, truncated lists)."""
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
        raise ValueError(f"Labels {cell[:80]!r} is not a list: {error}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"Labels {cell[:80]!r} is not a list of strings")
    return list(dict.fromkeys(v.strip().lower() for v in value if v.strip()))


def select_padchest(
    rows: Sequence[dict[str, str]], image_root: Path, *, projections: Sequence[str] | None
) -> Selection[EvalImage]:
    """Physician-labelled rows (``MethodLabel == 'Physician'``) whose ``Projection`` is
    selected (None: all). Rows labelled ``exclude`` (the annotators' mark for an unusable
    image) are skipped."""
    wanted = None if projections is None else {p.strip().upper() for p in projections}
    selection: Selection[EvalImage] = Selection()
    tally = selection.tally
    for row in rows:
        source = f"{row.get('ImageDir', '')}/{row.get('ImageID', '')}"
        if row.get("MethodLabel", "").strip().lower() != "physician":
            tally.add("skipped", source, SKIP_NOT_PHYSICIAN, listed=False)
            continue
        if wanted is not None and row.get("Projection", "").strip().upper() not in wanted:
            tally.add("skipped", source, SKIP_NOT_FRONTAL, listed=False)
            continue
        try:
            labels = parse_padchest_labels(row.get("Labels", ""))
        except ValueError as error:
            tally.skip(source, SKIP_LABELS_INVALID, str(error))
            continue
        reason = SKIP_LABELS_EMPTY if not labels else SKIP_EXCLUDED if "exclude" in labels else None
        if reason:
            tally.skip(source, reason)
            continue
        image_dir, image_id = row.get("ImageDir", "").strip(), row.get("ImageID", "").strip()
        try:
            if not image_id or "/" in image_id:
                raise UnsafePathError(f"ImageID {image_id!r} is not a file name")
            relative = normalized_relative(f"{image_dir}/{image_id}" if image_dir else image_id)
            resolved = resolve_inside(image_root, relative)
        except UnsafePathError as error:
            tally.skip(source, SKIP_UNSAFE_PATH, error.detail)
            continue
        image = str(PurePosixPath("images", relative).with_suffix(".png"))
        selection.items.append(EvalImage(str(resolved), image, tuple(labels)))
    return selection


def padchest_label_columns(label_lists: Sequence[Sequence[str]], min_positives: int) -> list[str]:
    """Every label with at least ``min_positives`` positive images, sorted."""
    counts = Counter(label for labels in label_lists for label in labels)
    return sorted(label for label, count in counts.items() if count >= min_positives)


# ---------------------------------------------------------------------------------------------
# Running and writing


@dataclass(frozen=True)
class EvalOptions:
    dataset: str  # "chexpert" or "padchest"
    csv: Path
    image_root: Path
    out: Path
    image_size: int = 512
    resize: str = "pad"
    workers: int = 1
    frontal_only: bool = True  # CheXpert
    projections: tuple[str, ...] | None = PADCHEST_FRONTAL  # PadChest
    min_positives: int = 1  # PadChest
    sample_timeout: float = 600.0
    max_pixels: int = DEFAULT_MAX_PIXELS

    def as_json(self) -> dict:
        data = {
            "csv": str(self.csv.resolve()),
            "image_root": str(self.image_root.resolve()),
            "out": str(self.out.resolve()),
            "image_size": self.image_size,
            "resize": self.resize,
            "workers": self.workers,
            "max_pixels": self.max_pixels,
        }
        if self.dataset == "chexpert":
            data["frontal_only"] = self.frontal_only
        else:
            data["projections"] = None if self.projections is None else list(self.projections)
            data["min_positives"] = self.min_positives
        return data


def _check(options: EvalOptions, required: Sequence[str], rows: list[dict[str, str]]) -> None:
    missing = [c for c in required if rows and c not in rows[0]]
    if missing:
        raise PrepError(f"{options.csv} has no column(s) {', '.join(missing)}: is it the {options.dataset} CSV as published?")
    if not rows:
        raise PrepError(f"{options.csv} has no rows")


def prepare_eval_set(options: EvalOptions, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run ``prep chexpert`` or ``prep padchest`` (the prep runner with the dataset's reader and
    this module's renderer and writers); returns meta.json's content."""
    if not options.csv.is_file():
        raise PrepError(f"--csv {options.csv} does not exist: pass the {options.dataset} labels CSV")
    if not options.image_root.is_dir():
        raise PrepError(f"--image-root {options.image_root} is not a folder: pass the folder the CSV's image paths are relative to")
    if options.min_positives < 1:
        raise PrepError("--min-positives must be at least 1")
    check_run_options(resize=options.resize, workers=options.workers, image_size=options.image_size,
                      sample_timeout=options.sample_timeout, max_pixels=options.max_pixels)
    claim_out(options.out, {"--image-root": options.image_root}, {"--csv": options.csv}, (LABELS_CSV,), both_ways=True)
    rows = read_csv(options.csv)
    if options.dataset == "chexpert":
        _check(options, ("Path", *CHEXPERT_LABELS), rows)
        selection = select_chexpert(rows, options.image_root, frontal_only=options.frontal_only)
    elif options.dataset == "padchest":
        _check(options, ("ImageID", "ImageDir", "MethodLabel", "Labels", "Projection"), rows)
        selection = select_padchest(rows, options.image_root, projections=options.projections)
    else:
        raise ValueError(f"unknown evaluation set {options.dataset!r}")
    settings = RunSettings(images.RenderOptions(str(options.out), options.image_size, options.resize, options.max_pixels),
                           options.workers, options.sample_timeout, options.dataset)
    return run_image_set(options.out, selection, render_eval_image, settings,
                         lambda done, tally: _write_eval_set(options, [item for item, _ in done], tally),
                         source=lambda item: item.source, written=lambda meta: meta["images"],
                         empty=f"no image of {options.csv} was written", progress=progress, log=log,
                         before=lambda state_dir, selection: _plan_outputs(options.out, state_dir, selection))


def _written_before(state_dir: Path) -> set[str]:
    """The images an earlier run wrote (its IMAGES_RECORD); entries outside images/ are ignored."""
    try:
        listed = json.loads((state_dir / IMAGES_RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as error:
        raise PrepError(f"{state_dir / IMAGES_RECORD} is damaged ({error}): choose a new --out") from None
    written = set()
    for entry in listed if isinstance(listed, list) else []:
        try:
            if isinstance(entry, str) and normalized_relative(entry).parts[0] == "images":
                written.add(str(normalized_relative(entry)))
        except UnsafePathError:
            continue
    return written


def _plan_outputs(out: Path, state_dir: Path, selection: Selection[EvalImage]) -> list[EvalImage]:
    """Under the lock, before rendering: the items to render (a second row for one image, and an
    output name held by a file prep did not write, are skipped), added to IMAGES_RECORD before
    any image is written, so that a killed run's images are known to be ours."""
    before = _written_before(state_dir)
    items, planned = [], set()
    for item in selection.items:
        if item.image in planned:  # two rows, one image: labels.csv would count it twice
            selection.tally.skip(item.source, SKIP_DUPLICATE, f"{item.image} is listed by an earlier row")
        elif item.image not in before and resolve_inside(out, item.image).exists():  # not ours: keep it
            selection.tally.skip(item.source, SKIP_OUTPUT_EXISTS,
                                 f"{item.image} is in --out but was not written by tier-openclip prep")
        else:
            items.append(item)
            planned.add(item.image)
    write_json_atomic(state_dir / IMAGES_RECORD, sorted(before | planned))
    return items


def _write_eval_set(options: EvalOptions, written: list[EvalImage], tally: Tally) -> dict:
    """Remove the images an earlier run wrote that this one did not, write labels.csv; returns
    meta.json's content."""
    from .shards import STATE_DIR

    state_dir = options.out / STATE_DIR
    kept = {item.image for item in written}
    for stale in sorted(_written_before(state_dir) - kept):  # listed as ours, not in this labels.csv: remove
        target = resolve_inside(options.out, stale)
        for path in (target, temporary_path(target)):
            path.unlink(missing_ok=True)
    write_json_atomic(state_dir / IMAGES_RECORD, sorted(kept))

    extra = {}
    if options.dataset == "chexpert":
        labels = list(CHEXPERT_LABELS)
        table = [[item.image, *item.labels] for item in written]
        extra["split"] = chexpert_split(item.image for item in written)
    else:
        labels = padchest_label_columns([item.labels for item in written], options.min_positives)
        table = [[item.image, *(1 if label in item.labels else 0 for label in labels)] for item in written]
    counts = {
        label: {
            "positive": sum(1 for row in table if row[1 + i] == 1),
            "negative": sum(1 for row in table if row[1 + i] == 0),
            "unknown": sum(1 for row in table if row[1 + i] is None),
        }
        for i, label in enumerate(labels)
    }
    write_labels_csv(options.out / LABELS_CSV, labels, table)
    return eval_meta(
        options.dataset, labels,
        competition_labels=list(CHEXPERT_COMPETITION_LABELS) if options.dataset == "chexpert" else [],
        **extra,
        images=len(table),
        counts=counts,
        **tally.counts(),
        preprocessing={"image_size": options.image_size, "resize": options.resize, "format": "png"},
        options=options.as_json(),
    )

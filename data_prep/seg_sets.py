"""The segmentation-set layout (``tier-openclip-seg/1``): written and read here, and nowhere else.

    meta.json    {"format": "tier-openclip-seg/1", "dataset", "target" (what the masks mark),
                  "image_size", "mask_format", "splits": {split: images}, ...}
    images/...   8-bit grayscale PNGs (paths relative to the folder, inside it)
    masks/...    one PNG per image, of the image's size, mode "L": 0 background, 255 target
                 (the reader takes every nonzero pixel as target)
    splits.csv   image,mask,split,id: one row per image; split is train, val or test; id is
                 the source's own id (SIIM ImageId, RSNA patientId, ...)

``prep siim`` and ``prep rsna`` (and the phantom) write it; ``tier-openclip eval segmentation``
reads it. Masks go through the same geometry as their images (:func:`resize_mask`: the
``images.square_geometry`` that ``images.resize_square`` uses, nearest-neighbour).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import images
from .atomic import META_JSON, write_bytes_atomic, write_csv_atomic, write_json_atomic
from .errors import PrepError
from .eval_layout import read_format_meta, read_set_csv
from .paths import UnsafePathError, resolve_inside
from .runner import ItemResult, RunSettings, Selection, Tally, check_run_options, claim_out, run_image_set

SEG_FORMAT = "tier-openclip-seg/1"
SPLITS = ("train", "val", "test")
SPLITS_CSV = "splits.csv"
SPLIT_COLUMNS = ("image", "mask", "split", "id")
MASK_FORMAT = "8-bit grayscale PNG of the image's size: 0 background, 255 target"
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test
# Split names as published split files spell them (GLoRIA's "valid", MIMIC's "validate").
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "validate": "val", "test": "test", "testing": "test"}


def seg_meta(dataset: str, target: str, image_size: int | None, **extra: Any) -> dict[str, Any]:
    """meta.json of a segmentation set: format, dataset, target, image_size, mask_format, then ``extra``."""
    return {"format": SEG_FORMAT, "dataset": dataset, "target": target, "image_size": image_size,
            "mask_format": MASK_FORMAT, **extra}


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """A bool (height, width) mask as a 0/255 PNG."""
    image = Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), mode="L")
    write_bytes_atomic(path, images.encode_image(image, "png"))


def read_mask(path: str | Path) -> np.ndarray:
    """(height, width) bool: the mask's nonzero pixels."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 0


def resize_mask(mask: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """A (height, width) mask -> the ``size`` square that ``images.resize_square(..., size, mode)``
    makes of its image: the same geometry, nearest-neighbour, padding as background."""
    height, width = mask.shape
    new_size, (offset_x, offset_y) = images.square_geometry(width, height, size, mode)
    source = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
    resized = source.resize(new_size, Image.Resampling.NEAREST) if new_size != source.size else source
    if mode == "pad":
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(resized, (offset_x, offset_y))
    else:
        canvas = resized.crop((-offset_x, -offset_y, -offset_x + size, -offset_y + size))
    return np.asarray(canvas) > 0


def write_splits_csv(path: str | Path, rows: Iterable[Sequence]) -> None:
    """splits.csv from (image, mask, split, id) rows."""
    write_csv_atomic(path, SPLIT_COLUMNS, rows)


def seeded_split(groups: Iterable[str], seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, str]:
    """{group: split}: the distinct groups (patients) shuffled with ``seed`` and cut by the
    train/val/test ``fractions``, so all images of a patient share a split. Deterministic for
    a set of groups, whatever their order."""
    if len(fractions) != 3 or min(fractions) < 0 or not abs(sum(fractions) - 1) < 1e-6:
        raise PrepError(f"split fractions must be three numbers >= 0 summing to 1 (train, val, test), got {list(fractions)}")
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    train_end = round(fractions[0] * len(unique))
    val_end = train_end + round(fractions[1] * len(unique))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[unique[index]] = "train" if rank < train_end else "val" if rank < val_end else "test"
    return split_of


def read_split_file(path: Path, id_columns: Sequence[str]) -> dict[str, str]:
    """{id: split} from a CSV with an id column (the first of ``id_columns`` it has, compared
    without case) and a ``split`` column (train/val/test, or the published files' spellings
    valid/validation/validate/training/testing)."""
    from .tables import read_csv

    rows = read_csv(path)
    header = {name.lower(): name for name in (rows[0] if rows else {})}
    id_column = next((header[c.lower()] for c in id_columns if c.lower() in header), None)
    if id_column is None or "split" not in header:
        raise PrepError(f"--splits {path}: expected an id column ({' or '.join(id_columns)}) and a split column, "
                        f"found {', '.join(header.values()) or 'no rows'}")
    split_of: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        key, value = row[id_column], row[header["split"]].lower()
        if value not in SPLIT_ALIASES:
            raise PrepError(f"--splits {path} row {number}: split {value!r} is not one of {', '.join(SPLIT_ALIASES)}")
        if split_of.setdefault(key, SPLIT_ALIASES[value]) != SPLIT_ALIASES[value]:
            raise PrepError(f"--splits {path} row {number}: {key} is in both {split_of[key]} and {SPLIT_ALIASES[value]}")
    return split_of


@dataclass
class SegSetWriter:
    """Writes a set in one process (the phantom): ``add`` per image, then ``close``."""

    directory: Path
    dataset: str
    target: str
    image_size: int | None
    rows: list[list[str]] = field(default_factory=list)

    def add(self, key: str, image: Image.Image | np.ndarray, mask: np.ndarray, split: str, source_id: str | None = None) -> None:
        """images/<key>.png and masks/<key>.png (``key``: a safe file name, e.g. paths.safe_key)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L")
        if picture.size != (mask.shape[1], mask.shape[0]):
            raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} is not the image's {picture.size[0]}x{picture.size[1]}")
        image_path, mask_path = f"images/{key}.png", f"masks/{key}.png"
        write_bytes_atomic(resolve_inside(self.directory, image_path), images.encode_image(picture.convert("L"), "png"))
        write_mask(resolve_inside(self.directory, mask_path), mask)
        self.rows.append([image_path, mask_path, split, source_id if source_id is not None else key])

    def close(self, **extra: Any) -> dict[str, Any]:
        """Write splits.csv and meta.json; returns the meta."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_splits_csv(self.directory / SPLITS_CSV, self.rows)
        meta = seg_meta(self.dataset, self.target, self.image_size, splits=split_counts(self.rows), **extra)
        write_json_atomic(self.directory / META_JSON, meta)
        return meta


@dataclass(frozen=True)
class SegItem:
    image: str  # relative to the set's folder
    mask: str
    split: str
    id: str


@dataclass
class SegSet:
    directory: Path
    dataset: str | None
    target: str | None
    items: list[SegItem]
    image_sizes: dict[str, tuple[int, int]]  # image -> (width, height)
    meta: dict[str, Any]

    def split(self, name: str) -> list[SegItem]:
        return [item for item in self.items if item.split == name]

    def path(self, relative: str) -> Path:
        return self.directory / relative


def _inside(directory: Path, relative: str, where: str) -> Path:
    if "\\" in relative:
        raise ValueError(f"{where}: {relative!r} must use / separators")
    try:
        return resolve_inside(directory, relative)
    except UnsafePathError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _size(path: Path, where: str) -> tuple[int, int]:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist")
    try:
        with Image.open(path) as opened:  # the header only
            return opened.size
    except Exception as exc:  # PIL raises several types for files that are not images
        raise ValueError(f"{where}: {path} is not an image ({type(exc).__name__}: {exc})") from None


def read_seg_set(data_dir: str | Path) -> SegSet:
    """The validated segmentation set in ``data_dir`` (module docstring). Raises
    FileNotFoundError or ValueError saying what is wrong and where."""
    directory = Path(data_dir)
    splits_path = directory / SPLITS_CSV
    meta = read_format_meta(directory, (META_JSON, SPLITS_CSV), SEG_FORMAT,
                            "make a segmentation set with `tier-openclip prep siim|rsna`")
    rows = read_set_csv(splits_path, SPLIT_COLUMNS[:3], expected=SPLIT_COLUMNS)  # id is optional
    items, sizes = [], {}
    for number, row in enumerate(rows, start=2):
        where = f"{splits_path} row {number}"
        image, mask, split = (str(row[key] or "").strip() for key in SPLIT_COLUMNS[:3])
        if split not in SPLITS:
            raise ValueError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        if image in sizes:
            raise ValueError(f"{where}: image {image} is listed twice")
        sizes[image] = _size(_inside(directory, image, where), where)
        mask_size = _size(_inside(directory, mask, where), where)
        if mask_size != sizes[image]:
            raise ValueError(f"{where}: mask {mask} is {mask_size[0]}x{mask_size[1]}, its image "
                             f"{sizes[image][0]}x{sizes[image][1]}")
        items.append(SegItem(image, mask, split, str(row.get("id") or image)))
    if not items:
        raise ValueError(f"{splits_path} lists no image")
    return SegSet(directory, meta.get("dataset"), meta.get("target"), items, sizes, meta)


def split_counts(rows: Iterable[Sequence]) -> dict[str, int]:
    """{split: images} of (image, mask, split, id) rows, every split named."""
    counts = Counter(row[2] for row in rows)
    return {split: counts.get(split, 0) for split in SPLITS}


# --- the prep runner's segmentation steps, shared by `prep siim` and `prep rsna` -----------------

SKIP_NOT_IN_SPLITS = "not_in_splits"


@dataclass(frozen=True)
class SegSource:
    """One image to render: its source id, DICOM, output key, patient (None: read from the
    DICOM header) and the dataset's own description of its mask (``spec``)."""

    id: str
    source: str
    key: str
    group: str | None
    spec: Any


@dataclass
class SegResult(ItemResult):
    group: str | None = None
    positive: bool = False


@dataclass(frozen=True)
class SegPrepOptions:
    out: Path
    image_size: int = 512
    resize: str = "pad"
    workers: int = 1
    sample_timeout: float = 600.0
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    splits: Path | None = None  # a CSV (id, split); None: seeded split by patient
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS

    def as_json(self) -> dict[str, Any]:
        return {"out": str(self.out.resolve()), "image_size": self.image_size, "resize": self.resize,
                "workers": self.workers, "splits": None if self.splits is None else str(self.splits.resolve()),
                "seed": self.seed, "fractions": list(self.fractions)}


def save_pair(options: images.RenderOptions, key: str, gray: images.GrayImage, stored_mask: np.ndarray, notes: Sequence[str] = ()) -> SegResult:
    """Resize the image like every prep image, write it and its (already stored-frame) mask."""
    square = images.resize_square(gray, options.image_size, options.resize)  # type: ignore[arg-type]
    if stored_mask.shape != (options.image_size, options.image_size):
        raise ValueError(f"mask {stored_mask.shape} is not in the {options.image_size}-pixel square")
    write_bytes_atomic(resolve_inside(options.out, f"images/{key}.png"), images.encode_image(square.image, "png"))
    write_mask(resolve_inside(options.out, f"masks/{key}.png"), stored_mask)
    return SegResult(True, notes=[*square.notes, *notes], positive=bool(stored_mask.any()))


def dicom_patient(path: str) -> str | None:
    """The DICOM's PatientID (header only), used to group images for the split and never written."""
    import pydicom

    try:
        value = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", "") or "")
    except Exception:  # the pixel decoding already succeeded: a header we cannot reread is no reason to fail
        return None
    return value.strip() or None


@dataclass(frozen=True)
class SegInputs:
    """A segmentation prep command's CSV and image folder, as its error messages and meta name them."""

    csv_flag: str  # "--rle-csv"
    csv_key: str  # meta.json's key for the CSV's path, "rle_csv"
    csv_hint: str  # what to pass, "the release's train-rle.csv"
    csv_what: str  # what the file should be, "SIIM's train-rle.csv (ImageId, EncodedPixels)"
    columns: tuple[str, ...]
    root_hint: str  # what --image-root should be


def prepare_seg_set(inputs: SegInputs, csv_path: Path, image_root: Path, options: SegPrepOptions,
                    select: Callable[[list[dict[str, str]]], Selection[SegSource]],
                    render: Callable[[SegSource, images.RenderOptions], SegResult], *, dataset: str, target: str,
                    id_columns: Sequence[str], progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``prep siim|rsna``: the prep runner with the dataset's reader (``select``) and renderer,
    and this module's split assignment and writers; returns meta.json's content."""
    from .tables import read_csv

    if not csv_path.is_file():
        raise PrepError(f"{inputs.csv_flag} {csv_path} does not exist: pass {inputs.csv_hint}")
    if not image_root.is_dir():
        raise PrepError(f"--image-root {image_root} is not a folder: pass {inputs.root_hint}")
    check_prep_options(options, {"--image-root": image_root}, {inputs.csv_flag: csv_path})
    rows = read_csv(csv_path)
    missing = [c for c in inputs.columns if c not in (rows[0] if rows else {})]
    if not rows or missing:
        raise PrepError(f"{csv_path} has no {'rows' if not rows else 'column(s) ' + ', '.join(missing)}: "
                        f"is it {inputs.csv_what}?")
    selection = select(rows)
    split_of = read_split_file(options.splits, id_columns) if options.splits is not None else None
    if split_of is not None:
        kept = []
        for item in selection.items:
            if item.id in split_of:
                kept.append(item)
            else:
                selection.tally.skip(item.source, SKIP_NOT_IN_SPLITS, f"{item.id} is not in --splits {options.splits}")
        selection.items = kept
    settings = RunSettings(images.RenderOptions(str(options.out), options.image_size, options.resize, options.max_pixels),
                           options.workers, options.sample_timeout, dataset)
    extra_meta = {inputs.csv_key: str(csv_path.resolve()), "image_root": str(image_root.resolve())}
    return run_image_set(options.out, selection, render, settings,
                         lambda done, tally: _write_seg_set(options, done, tally, split_of, dataset=dataset,
                                                            target=target, **extra_meta),
                         source=lambda item: item.source, written=lambda meta: sum(meta["splits"].values()),
                         empty="no image was written", progress=progress, log=log)


def _write_seg_set(options: SegPrepOptions, done: list[tuple[SegSource, SegResult]], tally: Tally,
                   split_of: Mapping[str, str] | None, *, dataset: str, target: str, **extra_meta: Any) -> dict[str, Any]:
    """Assign splits (from --splits by source id, else seeded by patient) and write splits.csv;
    returns meta.json's content."""
    if split_of is not None:
        assigned = {item.id: split_of[item.id] for item, _ in done}
        split_source = {"kind": "file", "file": str(options.splits)}
    else:
        group_of = {item.id: item.group or result.group or item.id for item, result in done}
        by_group = seeded_split(group_of.values(), options.seed, options.fractions)
        assigned = {image_id: by_group[group] for image_id, group in group_of.items()}
        split_source = {"kind": "seeded by patient", "seed": options.seed, "fractions": list(options.fractions),
                        "patients": len(by_group)}
    rows = [[f"images/{item.key}.png", f"masks/{item.key}.png", assigned[item.id], item.id] for item, _ in done]
    positives = Counter(assigned[item.id] for item, result in done if result.positive)
    write_splits_csv(options.out / SPLITS_CSV, rows)
    return seg_meta(
        dataset, target, options.image_size, splits=split_counts(rows),
        positives={split: positives.get(split, 0) for split in SPLITS}, split_source=split_source,
        **tally.counts(),
        preprocessing={"image_size": options.image_size, "resize": options.resize, "format": "png",
                       "mask_resize": "nearest, same geometry as the image"},
        **extra_meta, options=options.as_json(),
    )  # fmt: skip


def check_prep_options(options: SegPrepOptions, roots: Mapping[str, Path], files: Mapping[str, Path]) -> None:
    """PrepError for options the run cannot use, before anything is read: the runner's checks and
    claim on --out (``roots`` either way), and the split options."""
    if options.splits is not None and not options.splits.is_file():
        raise PrepError(f"--splits {options.splits} does not exist: pass a CSV with an id and a split column")
    fractions = options.fractions
    if len(fractions) != 3 or min(fractions) < 0 or not abs(sum(fractions) - 1) < 1e-6:
        raise PrepError(f"--split-fractions must be three numbers >= 0 summing to 1 (train,val,test), got {list(fractions)}")
    check_run_options(resize=options.resize, workers=options.workers, image_size=options.image_size,
                      sample_timeout=options.sample_timeout, max_pixels=options.max_pixels)
    claim_out(options.out, roots, {**files, "--splits": options.splits}, (SPLITS_CSV,), both_ways=True)

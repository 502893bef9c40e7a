"""MIMIC-CXR: sample selection, the rendering of one sample, and ``prep mimic-cxr``'s run.

The release as published (tree, CSVs, reports) is read by mimic_release.py; the CSVs are found
in ``--metadata-dir``, else in ``--image-root``, else in ``--mimic-root`` (``.csv.gz`` or
plain ``.csv``). The run is the prep runner's (runner.py: claim and lock --out, failures.csv)
with shards.py as its writer (resumable, byte-identical shards) and manifest.json as its meta.

Selection (pure functions of the CSV rows and the report text): a DICOM is *eligible* when its
split is requested, its ``ViewPosition`` is one of ``--views`` and its study's report has the
``--text`` section. The eligible samples of a split are ordered by SHA-256 of the dicom_id:
a fixed order that does not depend on the file system, and which spreads the images of one
patient and one study over the shards, so open_clip's shard and buffer shuffling seldom puts
two images of one report in a batch (a false negative for a contrastive loss).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import images, reports, shards
from .atomic import FAILURES_CSV, write_failures_csv, write_json_atomic
from .chexpert import CHEXPERT_LABELS
from .errors import PrepError
from .limits import DEFAULT_MAX_PIXELS
from .mimic_release import (CHEXPERT_CSV, METADATA_CSV, REPORTS_ZIP, SPLIT_CSV, SPLITS, Record, ReportStore, find_csv,
                            image_path, load_labels, load_records, require_columns, study_dir)
from .paths import UNSAFE_PATH, UnsafePathError, safe_key
from .report_files import ReportUnusable
from .runner import FAIL_UNEXPECTED, Tally, check_run_options, claim_out, locked_out
from .tables import read_csv

# The only fields a sample's json ever holds. Nothing comes from a DICOM header: the view is
# the metadata CSV's ViewPosition and the ids are the CSVs' (MIMIC's de-identified ids).
JSON_FIELDS = ("subject_id", "study_id", "dicom_id", "view", "split", "labels")

# Reasons a planned DICOM is not a sample. "Filtered" is what the options ask for; "skipped"
# is missing or unusable data found while planning (listed in failures.csv).
FILTER_VIEW = "view_not_selected"
SKIP_METADATA_MISSING = "metadata_missing"  # in the split CSV, not in the metadata CSV
SKIP_REPORT_MISSING = "report_missing"  # no sXXXXXXXX.txt in files/ nor in the zip
SKIP_SECTION_MISSING = reports.REPORT_SECTION_MISSING
SKIP_SECTION_EMPTY = reports.REPORT_SECTION_EMPTY
SKIP_DUPLICATE_ID = "duplicate_id"  # a dicom_id listed again in the split CSV: the first row is used
SKIP_UNSAFE_PATH = UNSAFE_PATH  # a dicom_id that would name a file outside its study folder
NOTE_REPORT_NOT_UTF8 = "report_not_utf8"
NOTE_LABELS_MISSING = "labels_missing"  # study absent from the CheXpert CSV: labels all null


# ---------------------------------------------------------------------------------------------
# Selection


@dataclass(frozen=True)
class SampleTask:
    """Everything a worker needs to render one sample (small and picklable)."""

    key: str  # the sample's __key__: the dicom_id, made safe and unique (paths.safe_key)
    image_path: str
    text: str
    meta_json: bytes
    subject_id: int
    study_id: int
    dicom_id: str = ""  # as the split CSV has it (kept in the json and in failures.csv)


@dataclass
class SplitSelection:
    tasks: list[SampleTask] = field(default_factory=list)
    filtered: Counter = field(default_factory=Counter)  # counted in the manifest, not listed
    tally: Tally = field(default_factory=Tally)  # skipped (listed in failures.csv), notes


def sample_json(record: Record, labels: Mapping[str, float | None]) -> bytes:
    """The sample's json: exactly :data:`JSON_FIELDS`, in that order, compact, UTF-8."""
    meta = {
        "subject_id": record.subject_id,
        "study_id": record.study_id,
        "dicom_id": record.dicom_id,
        "view": record.view,
        "split": record.split,
        "labels": {name: labels.get(name) for name in CHEXPERT_LABELS},
    }
    assert tuple(meta) == JSON_FIELDS
    return json.dumps(meta, separators=(",", ":")).encode("utf-8")


def sample_order(key: str) -> tuple[str, str]:
    """Sort key of a sample within its split (see the module docstring)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest(), key


def _skip(selection: SplitSelection, record: Record, reason: str, detail: str = "") -> None:
    selection.tally.skip(record.dicom_id, reason, detail, split=record.split, dicom_id=record.dicom_id,
                         subject_id=record.subject_id, study_id=record.study_id)


def select_samples(
    records: Iterable[Record],
    labels: Mapping[tuple[int, int], Mapping[str, float | None]],
    read_report: Callable[[int, int], bytes | None],
    image_for: Callable[[Record], str],
    *,
    splits: Iterable[str],
    views: Iterable[str] | None,
    text_mode: str,
    progress: Callable[[Iterable[Record]], Iterator[Record]] = iter,
) -> dict[str, SplitSelection]:
    """Choose the samples of each requested split, in their final order.

    ``views=None`` keeps every view. Reports are read once per study. Keys are assigned over
    all records in CSV order (whatever ``splits``), so a sample's key does not depend on the
    options; a dicom_id met a second time is skipped (``duplicate_id``), and one whose image
    path would leave its study folder is skipped (``unsafe_path``).
    """
    wanted_views = None if views is None else {v.upper() for v in views}
    selections = {split: SplitSelection() for split in splits}
    texts: dict[tuple[int, int], tuple[reports.TextChoice, bool] | ReportUnusable | None] = {}
    ids: set[str] = set()
    keys: set[str] = set()
    for record in progress(records):
        duplicate = record.dicom_id in ids
        ids.add(record.dicom_id)
        key = "" if duplicate else safe_key(record.dicom_id, keys)
        selection = selections.get(record.split)
        if selection is None:
            continue
        study = (record.subject_id, record.study_id)
        skip = functools.partial(_skip, selection, record)
        if duplicate:
            skip(SKIP_DUPLICATE_ID, f"listed again in {SPLIT_CSV}: only its first row is used")
            continue
        try:
            image = image_for(record)
        except UnsafePathError as error:
            skip(SKIP_UNSAFE_PATH, error.detail)
            continue
        if record.view is None:
            skip(SKIP_METADATA_MISSING, f"{record.dicom_id} is not in {METADATA_CSV}")
            continue
        if wanted_views is not None and record.view.upper() not in wanted_views:
            selection.filtered[FILTER_VIEW] += 1
            continue
        if study not in texts:
            try:
                raw = read_report(*study)
            except ReportUnusable as unusable:  # a folder, FIFO, device or oversized file: this row only
                texts[study] = unusable
            else:
                if raw is None:
                    texts[study] = None
                else:
                    decoded = reports.decode_report(raw)
                    texts[study] = (reports.choose_text(reports.parse_sections(decoded.text), text_mode),
                                    decoded.used_fallback)
        entry = texts[study]
        if entry is None:
            skip(SKIP_REPORT_MISSING, f"{study_dir(*study)}.txt")
            continue
        if isinstance(entry, ReportUnusable):
            skip(entry.reason, entry.detail)
            continue
        choice, fallback = entry
        if choice.text is None:
            skip(choice.reason or SKIP_SECTION_MISSING, f"--text {text_mode}")
            continue
        if fallback:
            selection.tally.notes[NOTE_REPORT_NOT_UTF8] += 1
        study_labels = labels.get(study)
        if study_labels is None:
            selection.tally.notes[NOTE_LABELS_MISSING] += 1
            study_labels = {}
        selection.tasks.append(
            SampleTask(
                key=key,
                image_path=image,
                text=choice.text,
                meta_json=sample_json(record, study_labels),
                subject_id=record.subject_id,
                study_id=record.study_id,
                dicom_id=record.dicom_id,
            )
        )
    for selection in selections.values():
        selection.tasks.sort(key=lambda task: sample_order(task.key))
    return selections


# ---------------------------------------------------------------------------------------------
# Rendering one sample (runs in the worker processes)


@dataclass(frozen=True)
class RenderOptions:
    source: str  # "dicom" or "jpg"
    image_size: int
    resize: str
    image_format: str
    jpeg_quality: int
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class SampleResult:
    key: str
    files: dict[str, bytes] | None  # extension -> bytes; None when the sample failed
    reason: str | None = None
    detail: str = ""
    notes: list[str] = field(default_factory=list)


def render_sample(task: SampleTask, options: RenderOptions) -> SampleResult:
    """Decode, window, resize and encode one sample. Never raises: a failure is a result."""
    try:
        if options.source == "dicom":
            gray = images.dicom_to_uint8(task.image_path, options.max_pixels)
        else:
            gray = images.jpeg_to_gray(task.image_path, options.image_size, options.max_pixels)
        square = images.resize_square(gray, options.image_size, options.resize)  # type: ignore[arg-type]
        encoded = images.encode_image(square.image, options.image_format, options.jpeg_quality)
    except images.ImageError as error:
        return SampleResult(task.key, None, error.reason, error.detail)
    except Exception as error:  # a bug or a case nobody foresaw: record it, keep going
        return SampleResult(task.key, None, FAIL_UNEXPECTED, f"{type(error).__name__}: {error}")
    files = {
        options.image_format: encoded,
        "json": task.meta_json,
        "txt": task.text.encode("utf-8"),
    }
    return SampleResult(task.key, files, notes=square.notes)


def tasks_fingerprint(tasks: Iterable[SampleTask], options: RenderOptions) -> str:
    """Digest of what a shard's bytes depend on: its samples' inputs and the render options."""
    digest = hashlib.sha256(json.dumps(options.__dict__, sort_keys=True).encode("utf-8"))
    for task in tasks:
        for part in (task.key, os.path.basename(task.image_path), task.text):
            digest.update(part.encode("utf-8") + b"\0")
        digest.update(task.meta_json + b"\0")
    return digest.hexdigest()



# ---------------------------------------------------------------------------------------------
# The whole command


@dataclass(frozen=True)
class MimicOptions:
    """The options of ``tier-openclip prep mimic-cxr`` (see cli.py for their meaning)."""

    mimic_root: Path
    out: Path
    image_root: Path | None = None
    metadata_dir: Path | None = None
    text: str = "impression"
    views: tuple[str, ...] | None = ("PA", "AP")
    splits: tuple[str, ...] = SPLITS
    image_size: int = 512
    resize: str = "pad"
    image_format: str = "jpg"
    jpeg_quality: int = 95
    shard_size: int = 1000
    workers: int = 1
    sample_timeout: float = 600.0
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def render(self) -> RenderOptions:
        return RenderOptions(
            source="jpg" if self.image_root is not None else "dicom",
            image_size=self.image_size,
            resize=self.resize,
            image_format=self.image_format,
            jpeg_quality=self.jpeg_quality,
            max_pixels=self.max_pixels,
        )

    def as_json(self) -> dict:
        return {
            "mimic_root": str(self.mimic_root.resolve()),
            "out": str(self.out.resolve()),
            "image_root": None if self.image_root is None else str(self.image_root.resolve()),
            "metadata_dir": None if self.metadata_dir is None else str(self.metadata_dir.resolve()),
            "text": self.text,
            "views": None if self.views is None else list(self.views),
            "splits": list(self.splits),
            "image_size": self.image_size,
            "resize": self.resize,
            "format": self.image_format,
            "jpeg_quality": self.jpeg_quality,
            "shard_size": self.shard_size,
            "workers": self.workers,
            "sample_timeout": self.sample_timeout,
            "max_pixels": self.max_pixels,
        }


def check_options(options: MimicOptions) -> None:
    """Refuse bad option values with a message that says what to do."""
    if options.text not in reports.TEXT_MODES:
        raise PrepError(f"--text {options.text!r}: choose one of {', '.join(reports.TEXT_MODES)}")
    unknown = [s for s in options.splits if s not in SPLITS]
    if unknown or not options.splits:
        raise PrepError(f"--splits: {', '.join(unknown) or '(none)'} is not a MIMIC-CXR split; use some of {','.join(SPLITS)}")
    check_run_options(resize=options.resize, workers=options.workers, image_size=options.image_size,
                      sample_timeout=options.sample_timeout, max_pixels=options.max_pixels)
    if options.shard_size < 1:
        raise PrepError("--shard-size must be at least 1")
    if not 1 <= options.jpeg_quality <= 100:
        raise PrepError("--jpeg-quality must be between 1 and 100")
    if options.image_format not in images.IMAGE_FORMATS:
        raise PrepError(f"--format: choose one of {', '.join(images.IMAGE_FORMATS)}")


@dataclass
class Inputs:
    split_csv: Path
    metadata_csv: Path
    chexpert_csv: Path | None
    reports: ReportStore


def locate_inputs(options: MimicOptions) -> Inputs:
    """Find the release files, or say exactly which is missing and what to pass instead."""
    root = options.mimic_root
    if not root.is_dir():
        raise PrepError(f"--mimic-root {root} is not a folder: point it at the MIMIC-CXR 2.0.0 release (the folder holding files/ and mimic-cxr-reports.zip)")
    if options.image_root is None:
        if not (root / "files").is_dir():
            raise PrepError(
                f"--mimic-root {root} has no files/ folder: point it at the MIMIC-CXR 2.0.0 release "
                "(files/p10/p10000032/s50414267/<dicom_id>.dcm), or pass --image-root with the MIMIC-CXR-JPG release"
            )
    elif not (options.image_root / "files").is_dir():
        raise PrepError(f"--image-root {options.image_root} has no files/ folder: point it at the MIMIC-CXR-JPG release (files/p10/p10000032/s50414267/<dicom_id>.jpg)")
    store = ReportStore(root)
    if not store.available:
        raise PrepError(f"--mimic-root {root} has neither files/ with the reports nor {REPORTS_ZIP}: the reports come from the MIMIC-CXR 2.0.0 release")
    if options.metadata_dir is not None:
        if not options.metadata_dir.is_dir():
            raise PrepError(f"--metadata-dir {options.metadata_dir} is not a folder")
        places = [options.metadata_dir]
    else:
        places = [p for p in (options.image_root, root) if p is not None]
    where = " or ".join(str(p) for p in places)
    split_csv = find_csv(places, SPLIT_CSV)
    if split_csv is None:
        raise PrepError(f"no {SPLIT_CSV}.gz in {where}: it ships with MIMIC-CXR-JPG; put it there or pass --metadata-dir")
    metadata_csv = find_csv(places, METADATA_CSV)
    if metadata_csv is None:
        raise PrepError(f"no {METADATA_CSV}.gz in {where}: it ships with MIMIC-CXR-JPG; put it there or pass --metadata-dir")
    return Inputs(split_csv, metadata_csv, find_csv(places, CHEXPERT_CSV), store)


def _fail_rendered(split: str, selection: SplitSelection, plans: list[shards.ShardPlan],
                   records: dict[str, shards.ShardRecord]) -> None:
    """Count and list (in ``selection.tally``) the samples of ``split`` whose render failed, as
    the shard records hold them (this run's or a kept shard's)."""
    tasks_by_key = {task.key: task for task in selection.tasks}
    for plan in plans:
        for key, reason, detail in records[plan.name].failures:
            task = tasks_by_key[key]
            selection.tally.fail(task.dicom_id or key, reason, detail, split=split, dicom_id=task.dicom_id or key,
                                 subject_id=task.subject_id, study_id=task.study_id)
        selection.tally.notes.update(records[plan.name].notes)


def prepare_mimic(options: MimicOptions, *, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run ``prep mimic-cxr``: select, render and shard; write sizes.json, failures.csv and
    manifest.json. Returns the manifest. Resumes a killed run in the same ``--out``."""
    from tqdm import tqdm

    check_options(options)
    inputs = locate_inputs(options)  # writes nothing; says first what is wrong with the inputs
    claim_out(options.out, {"--mimic-root": options.mimic_root, "--image-root": options.image_root,
                            "--metadata-dir": options.metadata_dir})
    split_rows = read_csv(inputs.split_csv)
    require_columns(split_rows, inputs.split_csv, ("dicom_id", "study_id", "subject_id", "split"))
    metadata_rows = read_csv(inputs.metadata_csv)
    require_columns(metadata_rows, inputs.metadata_csv, ("dicom_id", "ViewPosition"))
    labels: dict = {}
    if inputs.chexpert_csv is None:
        log(f"warning: no {CHEXPERT_CSV}.gz found: every sample's labels will be null")
    else:
        chexpert_rows = read_csv(inputs.chexpert_csv)
        require_columns(chexpert_rows, inputs.chexpert_csv, ("subject_id", "study_id", *CHEXPERT_LABELS))
        try:
            labels = load_labels(chexpert_rows)
        except ValueError as error:
            raise PrepError(f"{inputs.chexpert_csv}: {error}; is it the MIMIC-CXR-JPG file as published?") from None
    try:
        records = load_records(split_rows, metadata_rows)
    except ValueError as error:
        raise PrepError(f"{inputs.split_csv}: {error}; is it the MIMIC-CXR-JPG file as published?") from None
    if options.image_root is None:
        image_root, extension = options.mimic_root, "dcm"
    else:
        image_root, extension = options.image_root, "jpg"

    def reading(items: Iterable[Record]) -> Iterator[Record]:
        return iter(tqdm(items, desc="reports", unit="dicom", disable=not progress, dynamic_ncols=True))

    selections = select_samples(
        records,
        labels,
        inputs.reports.read,
        lambda record: str(image_path(image_root, record, extension)),
        splits=options.splits,
        views=options.views,
        text_mode=options.text,
        progress=reading,
    )
    render = options.render
    digest = functools.partial(tasks_fingerprint, options=render)
    plans = {
        split: shards.plan_shards(split, selection.tasks, options.shard_size, digest)
        for split, selection in selections.items()
    }
    with locked_out(options.out):
        shard_records = shards.write_shards(
            options.out,
            [plan for split in options.splits for plan in plans[split]],
            functools.partial(render_sample, options=render),
            workers=options.workers,
            progress=progress,
            log=log,
            sample_timeout=options.sample_timeout,
        )
        manifest = {
            "dataset": "mimic-cxr",
            "command": "tier-openclip prep mimic-cxr",
            "source": render.source,
            "options": options.as_json(),
            "versions": _versions(),
            "splits": {},
        }
        failure_rows: list[list] = []
        for split in options.splits:
            selection, split_plans = selections[split], plans[split]
            sizes = shards.write_sizes(options.out / split, split_plans, shard_records)
            _fail_rendered(split, selection, split_plans, shard_records)
            failure_rows += selection.tally.rows
            counts = selection.tally.counts()
            manifest["splits"][split] = {
                "written": sum(sizes.values()),
                "shards": len(split_plans),
                "urls": shards.shard_urls(split, len(split_plans)),
                "filtered": dict(sorted(selection.filtered.items())),
                "skipped": counts["skipped"],
                "failed": counts["failed"],
                "notes": counts["notes"],
            }
            if not split_plans:
                log(f"warning: no eligible samples in split {split!r}")
        manifest["totals"] = {
            kind: sum(sum(s[kind].values()) if isinstance(s[kind], dict) else s[kind] for s in manifest["splits"].values())
            for kind in ("written", "filtered", "skipped", "failed")
        }
        write_failures_csv(options.out / FAILURES_CSV, failure_rows)
        write_json_atomic(options.out / "manifest.json", manifest)
    return manifest



def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("tier-openclip", "pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pillow", "numpy", "webdataset"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found

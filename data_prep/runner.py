"""The one prep runner: every ``tier-openclip prep`` subcommand is this pipeline with a dataset's
small pure steps plugged in (its reader and selection, its renderer, its writers)::

    check options -> claim --out -> read + select (the dataset's) -> lock --out
        -> render over worker processes -> write the dataset's files -> failures.csv -> meta

What the runner owns, so that no command can drift from the others:

- the checks every command shares (:func:`check_run_options`) and the claim on ``--out``
  (:func:`claim_out`: not among the inputs, not an input file it writes, not a foreign folder);
- the run lock (:func:`locked_out`), taken by every command before it writes anything;
- the failures of a run and their one schema (:class:`Tally`, ``atomic.FAILURE_COLUMNS``);
- rendering one item per input image to its own files in worker processes
  (:func:`render_items`: ordered, a dead or hung worker is a ``worker_crashed`` failure, an
  unforeseen exception an ``unexpected_error``, never a crash of the run);
- the end of a run: failures.csv then meta.json (:func:`run_image_set`).

``prep mimic-cxr`` writes WebDataset shards instead of one file per image: its writer is
:func:`shards.write_shards` (resumable, byte-identical), its meta the manifest; it takes the
same claim, lock and failures schema from here.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import images
from .atomic import FAILURE_COLUMNS, FAILURES_CSV, META_JSON, write_failures_csv, write_json_atomic
from .errors import PrepError
from .limits import check_render_limits
from .paths import refuse_overlap, refuse_written_inputs

# A render failure nobody foresaw (a bug: please report it); the run goes on.
FAIL_UNEXPECTED = "unexpected_error"

Item = TypeVar("Item")


@dataclass
class Tally:
    """What a run did not write, counted per reason, with failures.csv's rows (one schema,
    ``FAILURE_COLUMNS``: source, kind, reason, detail, then MIMIC's ids where a dataset has them)."""

    skipped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    rows: list[list] = field(default_factory=list)

    def add(self, kind: str, source: str, reason: str, detail: str = "", *, listed: bool = True, split: str = "",
            dicom_id: str = "", subject_id: int | str = "", study_id: int | str = "") -> None:
        """Count ``reason`` under ``kind`` (skipped, failed, dropped) and, when ``listed``, add a
        failures.csv row (what the options filter out is counted, not listed)."""
        {"skipped": self.skipped, "failed": self.failed, "dropped": self.dropped}[kind][reason] += 1
        if listed:
            row = dict(source=source, kind=kind, reason=reason, detail=detail, split=split, dicom_id=dicom_id,
                       subject_id=subject_id, study_id=study_id)
            self.rows.append([row[column] for column in FAILURE_COLUMNS])

    def skip(self, source: str, reason: str, detail: str = "", **ids: Any) -> None:
        self.add("skipped", source, reason, detail, **ids)

    def fail(self, source: str, reason: str, detail: str = "", **ids: Any) -> None:
        self.add("failed", source, reason, detail, **ids)

    def counts(self) -> dict[str, dict[str, int]]:
        """meta.json's skipped / failed / notes, sorted by reason."""
        return {"skipped": dict(sorted(self.skipped.items())), "failed": dict(sorted(self.failed.items())),
                "notes": dict(sorted(self.notes.items()))}


@dataclass
class Selection(Generic[Item]):
    """What a dataset's selection makes of its CSV: the items to render, and the rest."""

    items: list[Item] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)


@dataclass
class ItemResult:
    """The outcome of rendering one item to its own files (in a worker process)."""

    ok: bool
    reason: str | None = None
    detail: str = ""
    notes: list[str] = field(default_factory=list)


def check_run_options(*, resize: str, workers: int, image_size: int, sample_timeout: float, max_pixels: int) -> None:
    """PrepError for the options every command shares, naming the flag."""
    if resize not in images.RESIZE_MODES:
        raise PrepError(f"--resize: choose one of {', '.join(images.RESIZE_MODES)}")
    if workers < 1:
        raise PrepError("--workers must be at least 1")
    check_render_limits(image_size, sample_timeout, max_pixels)


def claim_out(out: Path, roots: Mapping[str, Path | None], files: Mapping[str, Path | None] | None = None,
              written: Sequence[str] = (), *, both_ways: bool = False) -> None:
    """PrepError unless ``out`` may be this run's: not one of the input ``roots`` or inside one
    (``both_ways``: nor a root inside ``out``), no input file among the files the command writes
    (``written``, besides failures.csv and meta.json), and new, empty or an earlier prep run's."""
    from .shards import refuse_foreign_out

    refuse_overlap(out, roots, both_ways=both_ways)
    if files:
        refuse_written_inputs(out, files, (*written, FAILURES_CSV, META_JSON))
    refuse_foreign_out(out)


@contextlib.contextmanager
def locked_out(out: Path) -> Iterator[Path]:
    """``out`` made and locked for this run (released by the OS if the run dies); yields the
    state folder ``OUT/.prep-state``. A second run on the same ``out`` is refused."""
    from .shards import STATE_DIR, run_lock

    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out / STATE_DIR):
        yield out / STATE_DIR


def guarded(render: Callable[[Item, images.RenderOptions], ItemResult], item: Item,
            options: images.RenderOptions) -> ItemResult:
    """``render(item, options)``, its exceptions turned into named failures: the image module's
    reasons, else ``unexpected_error``. Runs in the worker processes."""
    try:
        return render(item, options)
    except images.ImageError as error:
        return ItemResult(False, error.reason, error.detail)
    except Exception as error:  # a bug or a case nobody foresaw: record it, keep going
        return ItemResult(False, FAIL_UNEXPECTED, f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class RunSettings:
    """How a one-file-per-image set is rendered: the workers' options and the pool."""

    render: images.RenderOptions
    workers: int
    sample_timeout: float
    desc: str  # the progress bar's name (the dataset)


def render_items(items: Sequence[Item], render: Callable[[Item, images.RenderOptions], ItemResult],
                 settings: RunSettings, tally: Tally, source: Callable[[Item], str], *, progress: bool
                 ) -> list[tuple[Item, ItemResult]]:  # fmt: skip
    """Render every item in ``settings.workers`` processes, in order; returns the items that
    rendered with their results, and counts the rest in ``tally`` (as ``source(item)``)."""
    from tqdm import tqdm

    from .shards import WORKER_LOST, Lost, OrderedPool

    job = functools.partial(guarded, render, options=settings.render)
    done = []
    with OrderedPool(job, items, settings.workers, settings.sample_timeout) as pool:
        bar = tqdm(pool, total=len(items), unit="img", desc=settings.desc, disable=not progress, dynamic_ncols=True)
        for item, result in zip(items, bar, strict=True):
            if isinstance(result, Lost):
                result = ItemResult(False, WORKER_LOST, result.detail)
            tally.notes.update(result.notes)
            if result.ok:
                done.append((item, result))
            else:
                tally.fail(source(item), result.reason or FAIL_UNEXPECTED, result.detail)
    return done


def run_image_set(out: Path, selection: Selection[Item], render: Callable[[Item, images.RenderOptions], ItemResult],
                  settings: RunSettings, write: Callable[[list[tuple[Item, ItemResult]], Tally], dict[str, Any]], *,
                  source: Callable[[Item], str], written: Callable[[dict[str, Any]], int], empty: str,
                  progress: bool, log: Callable[[str], None],
                  before: Callable[[Path, Selection[Item]], list[Item]] | None = None) -> dict[str, Any]:
    """The run of a one-file-per-image set, after its selection: lock ``out``; ``before`` (the
    dataset's step under the lock, e.g. recording what it will write; default: every item);
    render; ``write`` the dataset's files from the rendered items and return meta.json's
    content; write failures.csv and meta.json. Warns ``empty`` when ``written(meta)`` is 0."""
    with locked_out(out) as state_dir:
        items = before(state_dir, selection) if before is not None else selection.items
        done = render_items(items, render, settings, selection.tally, source, progress=progress)
        meta = write(done, selection.tally)
        write_failures_csv(out / FAILURES_CSV, selection.tally.rows)
        write_json_atomic(out / META_JSON, meta)
    if not written(meta):
        log(f"warning: {empty}; see {out / FAILURES_CSV}")
    return meta

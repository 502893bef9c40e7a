"""Atomic file writes: every file tier-openclip prep (and the phantom) writes goes to a temporary
name ``.NAME.tmp`` beside its target and is renamed over it, so that a killed run never leaves
half a file under the real name. One writer for bytes, text, JSON and CSV, and the failures.csv
every prep command writes."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FAILURES_CSV, META_JSON = "failures.csv", "meta.json"  # in every prep command's --out (mimic-cxr: manifest.json)
# failures.csv, one schema for every prep command: what the input names (a path, an id), kind
# (skipped, failed, dropped), reason, detail; then MIMIC's ids, blank where a dataset has none
# (prep mimic-cxr fills all four, prep ms-cxr the dicom_id).
FAILURE_COLUMNS = ("source", "kind", "reason", "detail", "split", "dicom_id", "subject_id", "study_id")


def temporary_path(path: Path) -> Path:
    """The name a file is written under before its rename (a rerun removes leftovers by it)."""
    return path.with_name(f".{path.name}.tmp")


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = False) -> None:
    """``data`` to ``path`` (parent folders made); ``fsync`` flushes it to disk before the rename,
    for the records a resumed run trusts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    with open(temporary, "wb") as handle:
        handle.write(data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


def json_bytes(data: Any) -> bytes:
    """The JSON files' one encoding: indent 1, a final newline, UTF-8."""
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON (see :func:`json_bytes`), fsynced before the rename."""
    write_bytes_atomic(path, json_bytes(data), fsync=True)


def csv_bytes(header: Sequence, rows: Iterable[Sequence], *, lineterminator: str = "\r\n",
              delimiter: str = ",") -> bytes:
    """A header and rows as the csv module writes them (its default line end, CRLF, unless told)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=lineterminator, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_csv_atomic(path: str | Path, header: Sequence, rows: Iterable[Sequence], *,
                     lineterminator: str = "\r\n", delimiter: str = ",") -> None:
    """A CSV file (see :func:`csv_bytes`)."""
    write_bytes_atomic(path, csv_bytes(header, rows, lineterminator=lineterminator, delimiter=delimiter))


def write_failures_csv(path: str | Path, rows: Iterable[Sequence]) -> None:
    """failures.csv: every skipped or failed input with its reason (rows in FAILURE_COLUMNS order)."""
    write_csv_atomic(path, FAILURE_COLUMNS, rows)

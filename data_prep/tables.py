"""Reading the input CSVs every prep command starts from (the releases' own files, as published
or re-saved by a spreadsheet program)."""

from __future__ import annotations

import codecs
import csv
import gzip
from pathlib import Path

from .errors import PrepError


def _csv_encoding(head: bytes) -> str:
    """UTF-16 or UTF-8 by the byte-order mark (spreadsheet programs write both); UTF-8 without."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig"  # drops a UTF-8 BOM, which would otherwise stick to the first column's name


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV, gzip'ed (``.gz``) or not, UTF-8 (with or without BOM) or UTF-16 (with
    BOM), as dicts of stripped strings. An empty file (no header line) is an error."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as raw:
            head = raw.read(4)
        with opener(path, "rt", encoding=_csv_encoding(head), newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
            header = reader.fieldnames
    except (OSError, EOFError, UnicodeError, csv.Error) as error:
        raise PrepError(f"cannot read {path}: {error}. Download it again from PhysioNet.") from None
    if not header:
        raise PrepError(f"{path} is empty (not even a header line): is it the file as published?")
    return rows

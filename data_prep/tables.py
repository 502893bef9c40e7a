"""Reading the input CSVs every prep command starts from (the releases' own files, as published
or re-saved by a spreadsheet program)."""

from __future__ import annotations

import codecs
import csv
import gzip
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .errors import PrepError


def refuse_duplicated_columns(path: str | Path, header: Sequence[str] | None,
                              error: type[Exception] = ValueError) -> None:  # fmt: skip
    """``error`` naming the columns when a header names one twice (names compared stripped).
    csv.DictReader keeps only the last of them, so a duplicate silently decides every row: every
    CSV reader of the project (prep's inputs, the sets it writes, analyze's boxes) calls this."""
    counts = Counter(name.strip() for name in header or () if name is not None)
    twice = [name for name, count in counts.items() if count > 1]
    if twice:
        raise error(f"{path}: column(s) {', '.join(repr(name) for name in twice)} appear more than once in the "
                    "header, so which one holds the data is ambiguous; keep one of each")


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
    refuse_duplicated_columns(path, header, PrepError)
    return rows

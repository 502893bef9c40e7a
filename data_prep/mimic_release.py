"""MIMIC-CXR's release as published: its tree, its CSVs and its reports (read-only; the
selection and the run are in mimic.py).

- MIMIC-CXR 2.0.0 (``--mimic-root``): ``files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm`` and the
  reports, ``files/pXX/pXXXXXXXX/sXXXXXXXX.txt`` or inside ``mimic-cxr-reports.zip``.
- MIMIC-CXR-JPG 2.x (``--image-root``): the same tree with ``<dicom_id>.jpg``, and the CSVs
  ``mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz``.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .chexpert import CHEXPERT_LABELS, parse_chexpert_label
from .errors import PrepError
from .paths import resolve_inside
from .report_files import read_report_file, read_report_member

SPLITS = ("train", "validate", "test")
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
REPORTS_ZIP = "mimic-cxr-reports.zip"


def find_csv(directories: Iterable[Path], stem: str) -> Path | None:
    """``stem``.gz or ``stem`` in the first directory that has one."""
    for directory in directories:
        for name in (f"{stem}.gz", stem):
            if (directory / name).is_file():
                return directory / name
    return None


def require_columns(rows: list[dict[str, str]], path: Path, columns: Iterable[str]) -> None:
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise PrepError(f"{path} has no column(s) {', '.join(missing)}: is it the MIMIC-CXR-JPG file of that name?")


@dataclass(frozen=True)
class Record:
    """One DICOM as the CSVs describe it."""

    dicom_id: str
    subject_id: int
    study_id: int
    split: str
    view: str | None  # None: absent from the metadata CSV


def load_records(split_rows: list[dict[str, str]], metadata_rows: list[dict[str, str]]) -> list[Record]:
    views = {row["dicom_id"]: row.get("ViewPosition", "") for row in metadata_rows}
    return [
        Record(row["dicom_id"], int(row["subject_id"]), int(row["study_id"]), row["split"], views.get(row["dicom_id"]))
        for row in split_rows
    ]


def load_labels(chexpert_rows: list[dict[str, str]]) -> dict[tuple[int, int], dict[str, float | None]]:
    return {
        (int(row["subject_id"]), int(row["study_id"])): {
            name: parse_chexpert_label(row.get(name, "")) for name in CHEXPERT_LABELS
        }
        for row in chexpert_rows
    }


def study_dir(subject_id: int, study_id: int) -> str:
    """``files/pXX/pXXXXXXXX/sXXXXXXXX`` (POSIX separators, relative to a release root)."""
    subject = f"{subject_id:08d}"
    return f"files/p{subject[:2]}/p{subject}/s{study_id:08d}"


def image_path(root: Path, record: Record, extension: str) -> Path:
    """``root/files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.<extension>``. The dicom_id is data: one
    that would leave its study folder (``../x``, ``/tmp/x``, a NUL byte) raises UnsafePathError."""
    return resolve_inside(root / study_dir(record.subject_id, record.study_id), f"{record.dicom_id}.{extension}")


class ReportStore:
    """Report bytes by (subject_id, study_id), from ``files/`` or ``mimic-cxr-reports.zip``.

    The tree wins when a report is in both; the zip is indexed by the ``pNNNNNNNN/sNNNNNNNN.txt``
    end of its member names, so a zip with or without a top folder works."""

    _MEMBER = re.compile(r"p(\d+)/s(\d+)\.txt$")

    def __init__(self, mimic_root: Path) -> None:
        self.files = mimic_root / "files"
        self.zip: zipfile.ZipFile | None = None
        self.members: dict[tuple[int, int], str] = {}
        zip_path = mimic_root / REPORTS_ZIP
        if zip_path.is_file():
            try:
                self.zip = zipfile.ZipFile(zip_path)
            except (OSError, zipfile.BadZipFile) as error:
                raise PrepError(f"{zip_path} is not a readable zip ({error}): download it again.") from None
            for name in self.zip.namelist():
                match = self._MEMBER.search(name)
                if match:
                    self.members[(int(match.group(1)), int(match.group(2)))] = name

    @property
    def available(self) -> bool:
        return self.files.is_dir() or bool(self.members)

    def read(self, subject_id: int, study_id: int) -> bytes | None:
        """The report's bytes, None when neither the tree nor the zip has it; ReportUnusable
        (report_files.py: bounded, regular files only) when the one found cannot be used."""
        raw = read_report_file(self.files.parent / f"{study_dir(subject_id, study_id)}.txt")
        if raw is not None:
            return raw
        name = self.members.get((subject_id, study_id))
        if name is not None and self.zip is not None:
            return read_report_member(self.zip, name)
        return None

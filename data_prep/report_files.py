"""Reading one report file, bounded: the only place prep opens a report.

A report path comes from the release's tree, where anything can stand at ``sNNNNNNNN.txt``: a
symlink to ``/dev/zero`` (endless), a FIFO (a read blocks for ever), a folder, a file of
gigabytes; and ``mimic-cxr-reports.zip`` may hold a member that inflates without end. So a report
is read only when it is a regular file (or a zip member) of at most :data:`REPORT_MAX_BYTES`, and
never more than that many bytes plus one are read; anything else is a :class:`ReportUnusable`
whose ``reason`` names the row's skip reason, and the run goes on.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

# MIMIC-CXR's reports are a few kB (the longest about 12 kB); 1 MiB is far above any real report
# and small enough that a whole run's worth of hostile ones cannot exhaust memory.
REPORT_MAX_BYTES = 1 << 20

REPORT_NOT_A_FILE = "report_not_a_file"  # a folder, FIFO, socket or device where the report should be
REPORT_TOO_LARGE = "report_too_large"  # above REPORT_MAX_BYTES (or still growing while read)
REPORT_UNREADABLE = "report_unreadable"  # an OS error reading it, or a damaged zip member


class ReportUnusable(Exception):
    """A report that exists but cannot be used; ``reason`` is one of the REPORT_* names above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def read_report_file(path: Path, cap: int = REPORT_MAX_BYTES) -> bytes | None:
    """The bytes of the report at ``path`` (symlinks followed); None when there is none
    (FileNotFoundError, NotADirectoryError); :class:`ReportUnusable` otherwise."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise ReportUnusable(REPORT_UNREADABLE, f"{path}: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ReportUnusable(REPORT_NOT_A_FILE, f"{path} is {_kind(info.st_mode)}")
    if info.st_size > cap:
        raise ReportUnusable(REPORT_TOO_LARGE, f"{path} has {info.st_size} bytes, above the {cap}-byte cap")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it does not wait
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ReportUnusable(REPORT_UNREADABLE, f"{path}: {error.strerror or error}") from None
    with open(descriptor, "rb", closefd=True) as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ReportUnusable(REPORT_NOT_A_FILE, f"{path} is {_kind(mode)}")
        try:
            raw = handle.read(cap + 1)
        except OSError as error:
            raise ReportUnusable(REPORT_UNREADABLE, f"{path}: {error.strerror or error}") from None
    if len(raw) > cap:
        raise ReportUnusable(REPORT_TOO_LARGE, f"{path} grew above the {cap}-byte cap while read")
    return raw


def read_report_member(archive: zipfile.ZipFile, name: str, cap: int = REPORT_MAX_BYTES) -> bytes:
    """The bytes of member ``name``: refused when the size its header declares is above ``cap``;
    zipfile stops inflating at the declared size (and checks the CRC), and at most ``cap + 1``
    bytes are read, so a zip bomb costs no more memory than a report."""
    info = archive.getinfo(name)
    where = f"{name} in {archive.filename}"
    if info.is_dir():
        raise ReportUnusable(REPORT_NOT_A_FILE, f"{where} is a folder")
    if info.file_size > cap:
        raise ReportUnusable(REPORT_TOO_LARGE, f"{where} inflates to {info.file_size} bytes, above the {cap}-byte cap")
    try:
        with archive.open(info) as member:
            raw = member.read(cap + 1)
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError, ValueError) as error:
        raise ReportUnusable(REPORT_UNREADABLE, f"{where}: {error}") from None
    if len(raw) > cap:
        raise ReportUnusable(REPORT_TOO_LARGE, f"{where} inflates above the {cap}-byte cap")
    return raw

"""Paths and keys built from data, made safe in one place.

A CSV cell is data, not a path the person running the command chose: an id like
``../../tmp/x`` or ``/tmp/x`` must not read or write outside the folder the path belongs to,
and a WebDataset key must not carry a dot (webdataset splits a member name at its first dot,
so the sample falls apart) or a slash (a member inside a folder, or outside the extraction
folder). Every subcommand builds such paths and keys through this module.

Paths are checked lexically (``..`` and absolute parts), not by following symlinks: datasets
often live in symlinked trees, and a symlink is something the user made, not the data.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath, PurePosixPath

from .errors import PrepError

UNSAFE_PATH = "unsafe_path"  # the named reason of a row whose path would leave its folder

KEY_MAX = 80
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_HASH_CHARS = 12


class UnsafePathError(ValueError):
    """A path built from data does not stay inside its folder; ``reason`` is UNSAFE_PATH."""

    reason = UNSAFE_PATH

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def normalized_relative(relative: str | PurePath) -> PurePosixPath:
    """``relative`` normalised lexically (``a/./b/../c`` -> ``a/c``), when it is a relative
    path that stays below its folder; otherwise :class:`UnsafePathError` (empty, absolute, NUL
    byte, or ``..`` parts that climb out)."""
    text = str(relative)
    if not text or "\0" in text:
        raise UnsafePathError(f"{text!r} is empty or holds a NUL byte")
    if PurePath(text).is_absolute() or text.startswith("/"):
        raise UnsafePathError(f"{text!r} is an absolute path")
    normal = posixpath.normpath(text)
    if normal in (".", "..") or normal.startswith("../"):
        raise UnsafePathError(f"{text!r} climbs out of its folder")
    return PurePosixPath(normal)


def resolve_inside(root: str | os.PathLike, relative: str | PurePath) -> Path:
    """``root / relative`` (absolute, normalised lexically), when ``relative`` names something
    strictly inside ``root``; otherwise :class:`UnsafePathError` naming ``root``."""
    try:
        return Path(os.path.abspath(root)) / normalized_relative(relative)
    except UnsafePathError as error:
        raise UnsafePathError(f"{error.detail}: it must name a file inside {root}") from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def safe_key(original_id: str, seen: set[str]) -> str:
    """A WebDataset key for ``original_id``, unique among ``seen`` (and added to it).

    An id made of ``[A-Za-z0-9_-]``, starting with a letter or digit and at most KEY_MAX long,
    is its own key (MIMIC-CXR's dicom_ids are). Anything else has its unsafe characters
    replaced by ``_`` and ``-`` plus 12 hex digits of the id's SHA-256 appended, so two ids
    that sanitise alike still differ; a key already taken gets a further suffix until it is new.
    """
    key = original_id
    if not (_KEY.fullmatch(key) and len(key) <= KEY_MAX and key not in seen):
        stem = _UNSAFE_KEY_CHARS.sub("_", original_id)[: KEY_MAX - _HASH_CHARS - 1].lstrip("_-")
        key = f"{stem or 'id'}-{_digest(original_id)[:_HASH_CHARS]}"
        attempt = 0
        while key in seen:  # only a repeated id or a 48-bit collision gets here
            attempt += 1
            salted = f"{original_id}\x00{attempt}"
            key = f"{stem or 'id'}-{_digest(salted)[:_HASH_CHARS]}"
    seen.add(key)
    return key


def is_safe_key(key: str) -> bool:
    """Whether ``key`` is a WebDataset key that survives webdataset's and open_clip's readers:
    ``[A-Za-z0-9_-]``, starting with a letter or digit (no dot, no slash, no ``__meta__``)."""
    return _KEY.fullmatch(key) is not None


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def overwrite_problem(outputs: Iterable[tuple[str, str | os.PathLike | None]],
                      inputs: Iterable[tuple[str, str | os.PathLike | None]], *,
                      folder_outputs: bool = False) -> str | None:  # fmt: skip
    """One line saying how a command's output would land on its inputs, or None when it would not.

    ``outputs`` and ``inputs`` are (flag, path) pairs; None paths are ignored. An output is refused
    when it resolves (symlinks followed, as the files written are real files) to an input, or lies
    inside an input folder; with ``folder_outputs`` (outputs are folders the command writes and
    removes files in) also when an input lies inside an output. Every command, prep and the
    tier_openclip commands alike, asks this one function."""
    inputs = [(flag, path, _real(path)) for flag, path in inputs if path is not None]
    for out_flag, out in outputs:
        if out is None:
            continue
        real_out = _real(out)
        for flag, given, real_in in inputs:
            if real_out == real_in:
                same = "" if Path(os.path.abspath(out)) == Path(os.path.abspath(given)) else f" (both resolve to {real_in})"
                return (f"{out_flag} {out} is {flag} {given}{same}: writing it would destroy an input; "
                        f"choose another {out_flag}")
            if real_in in real_out.parents:
                return (f"{out_flag} {out} is inside {flag} {given}: the command would write among (and could "
                        f"overwrite) its inputs; choose an {out_flag} outside it")
            if folder_outputs and real_out in real_in.parents:
                return (f"{flag} {given} is inside {out_flag} {out}: the command writes and removes files there; "
                        f"keep the inputs outside {out_flag}")
    return None


def refuse_written_inputs(out: Path, files: Mapping[str, Path | None], written: Iterable[str]) -> None:
    """PrepError when an input file (e.g. --csv) is one the command writes in ``out`` (the names
    ``written``), symlinks followed: the run would replace what it reads."""
    targets = {_real(out / name) for name in written}
    for flag, path in files.items():
        if path is not None and _real(path) in targets:
            raise PrepError(f"{flag} {path} is a file this command writes in --out: choose another --out")


def refuse_overlap(out: Path, flag_roots: Mapping[str, Path | None], *, out_flag: str = "--out",
                   both_ways: bool = False) -> None:  # fmt: skip
    """PrepError when ``out`` is one of the input roots or inside one, or (``both_ways``) a root
    is inside ``out`` (:func:`overwrite_problem`)."""
    problem = overwrite_problem([(out_flag, out)], flag_roots.items(), folder_outputs=both_ways)
    if problem:
        raise PrepError(problem)

"""The two error types a ``tier-openclip`` command reports to the person running it.

Raise them where the problem is found, worded to say what was wrong and what to do; ``commands.cli.main``
prints ``tier-openclip <command>: <message>`` (no traceback) and exits with the type's status:

- ``UsageError`` (exit 2): the command line itself is wrong, found before anything is loaded —
  an invalid or contradictory flag value, a path that does not exist or is the wrong kind (a folder
  where a file is expected, a missing output folder), a malformed repository id.
- ``CommandError`` (exit 1): the command ran and something it read or did failed — a file whose
  content cannot be used (a truncated or foreign checkpoint, a file that is not an image, a broken
  DICOM or meta.json), or the environment (the network during an upload).

Both are plain exceptions, so the Python API (``load_model``, ``export_model`` ...) raises them too
and callers may catch them; nothing here exits the interpreter.

The checks of a command line that raise them live here too, where every command (``prep``, in
data_prep, included) can use them: paths (``input_file``, ``output_file``, ``writable_folder``) and
the one form of a list flag. Lists are given as separate words after the flag (``--labels Edema
"Pleural Effusion"``), and repeating the flag adds more: ``add_list_flag``, ``list_word`` and
``listed`` are the one definition of that form.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence


class TierOpenclipError(Exception):
    """Base of the errors a command reports as one message."""

    exit_code = 1


class UsageError(TierOpenclipError):
    """The command line is wrong: exit status 2, like argparse's own errors."""

    exit_code = 2


class CommandError(TierOpenclipError):
    """The command failed on what it read or on its environment: exit status 1."""

    exit_code = 1


def error_line(message: object, command: str = "") -> str:
    """The one form every error reaches the person in: ``tier-openclip CMD: message`` (``tier-openclip:
    message`` for the training plugin, which runs inside open_clip's command)."""
    return f"tier-openclip{' ' + command if command else ''}: {message}"


def print_error(message: object, command: str = "") -> None:
    """``error_line`` on stderr."""
    print(error_line(message, command), file=sys.stderr)


# --- checks every command makes on the paths it is given ------------------------------------------


def input_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a Path, or UsageError unless it is an existing file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; expected a file")
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    return path


def output_file(path: str | os.PathLike, flag: str, example: str, make_parent: bool = False) -> Path:
    """``path`` as a Path that a file can be written to, checked before any work is done: not a
    folder, and in an existing folder (created first with ``make_parent``)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file name, e.g. {path / example}")
    parent = path.parent
    if make_parent and not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"{flag} {path}: cannot create its folder ({exc.strerror or exc})") from None
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")
    writable_folder(parent, f"{flag} {path}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: the file exists and cannot be written")
    return path


def writable_folder(folder: str | os.PathLike, what: str) -> None:
    """UsageError unless a file can be created in the existing ``folder``: found before the work
    whose results would then be lost. A trial file is made and removed, since permission bits
    do not tell (root, read-only mounts, ACLs)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tier-openclip-write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {folder} ({exc.strerror or exc}); choose a writable place") from None


def add_list_flag(parser: argparse.ArgumentParser, flag: str, metavar: str, help: str, *, words: bool = False,
                  **kwargs: Any) -> None:
    """A list flag: ``--flag A B C``; repeating the flag adds more. With ``words`` the parser itself
    refuses a value holding a comma (``list_word``), for lists of names where ``A,B`` can only be the
    old comma form; phrases and file names may hold commas and are left alone. Leave ``default``
    unset (or ``[]``: argparse would add the given values to any other) and resolve it with ``listed``."""
    if words:
        kwargs.setdefault("type", list_word)
    parser.add_argument(flag, nargs="+", action="extend", metavar=metavar, help=help, **kwargs)


def list_word(value: str) -> str:
    """One value of a ``words`` list flag (argparse ``type``), stripped. A comma is refused rather
    than matched as part of a value (which would silently select nothing)."""
    item = value.strip()
    if not item or "," in item:
        raise argparse.ArgumentTypeError(f"{value!r}: give the values as separate words (e.g. PA AP), not a "
                                         "comma-separated list")
    return item


def listed(flag: str, values: Sequence[str] | None, default: Sequence[str] = ()) -> list[str]:
    """A list flag's values in order, duplicates dropped, or ``default`` when it was not given.
    A value with a comma (a list flag the parser does not check) is the old comma-list form, which
    would name one odd value: UsageError."""
    texts = list(values or default)
    if any("," in text for text in texts):
        raise UsageError(f"{flag} {' '.join(texts)}: give the values as separate words "
                         f"(e.g. {flag} {' '.join(t for text in texts for t in text.split(',') if t)})")
    return list(dict.fromkeys(texts))

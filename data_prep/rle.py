"""SIIM-ACR pneumothorax run-length code (``train-rle.csv``'s `` EncodedPixels``), decoded and
encoded here and nowhere else.

The code's traps, as the competition's own ``mask_functions.py`` defines it:
- Pixels are numbered COLUMN-major (down the first column, then the next): index = x·height + y.
- Pairs ``start length``; each start is RELATIVE: the number of background pixels since the end
  of the previous run (the first: since pixel 0). Not the absolute starts of Kaggle's other
  competitions.
- ``-1`` is an image without pneumothorax; an image with several pneumothoraces has several
  rows in the CSV, whose masks are united (:func:`union_decode`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

EMPTY = "-1"


class RleError(ValueError):
    """A run-length code that is not one: odd number of values, negative or non-integer
    values, a zero-length run, or runs past the end of the image."""


def parse_rle(code: str) -> list[tuple[int, int]]:
    """(relative start, length) pairs of a code; [] for "-1" or an empty string."""
    text = (code or "").strip()
    if text in ("", EMPTY):
        return []
    try:
        values = [int(value) for value in text.split()]
    except ValueError:
        raise RleError(f"run-length code holds a value that is not an integer: {text[:60]!r}") from None
    if len(values) % 2:
        raise RleError(f"run-length code has an odd number of values ({len(values)}): start/length pairs expected")
    pairs = list(zip(values[0::2], values[1::2]))
    for start, length in pairs:
        if start < 0 or length < 1:
            raise RleError(f"run ({start}, {length}): starts must be >= 0 and lengths >= 1")
    return pairs


def rle_decode(code: str, width: int, height: int) -> np.ndarray:
    """(height, width) bool mask of one code (see the module docstring for the convention)."""
    flat = np.zeros(width * height, dtype=bool)  # column-major: flat[x * height + y]
    position = 0
    for start, length in parse_rle(code):
        position += start
        if position + length > flat.size:
            raise RleError(f"a run ends at pixel {position + length}, past the {width}x{height} image's {flat.size}")
        flat[position : position + length] = True
        position += length
    return flat.reshape(width, height).T


def union_decode(codes: Iterable[str], width: int, height: int) -> np.ndarray:
    """The union of the masks of several codes of one image (the CSV's rows of one ImageId)."""
    mask = np.zeros((height, width), dtype=bool)
    for code in codes:
        mask |= rle_decode(code, width, height)
    return mask


def rle_encode(mask: np.ndarray) -> str:
    """The code of a (height, width) mask: "-1" when it is empty; decode(encode(m)) == m."""
    flat = np.asarray(mask, dtype=bool).T.ravel()  # column-major
    if not flat.any():
        return EMPTY
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]]).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    relative = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{s} {e - a}" for s, a, e in zip(relative, starts, ends))

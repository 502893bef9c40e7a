"""Images read from files for a DataLoader, with unreadable files reported as one message."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Callable


class ImageFiles:
    """Map-style dataset of preprocessed images (any object with __getitem__/__len__ works for DataLoader)."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        # A file that is not an image comes back as its message (collated by stack_or_errors):
        # raised inside a DataLoader worker, its error would reach the user wrapped in a traceback.
        try:
            with Image.open(self.paths[i]) as image:
                return self.preprocess(image.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 -- UnidentifiedImageError, truncated files (OSError), ...
            return f"{self.paths[i]} is not a readable image ({type(exc).__name__}: {exc})"


def stack_or_errors(items: list):
    """The batch tensor, or the list of messages of the images that could not be read."""
    import torch

    errors = [item for item in items if isinstance(item, str)]
    return errors if errors else torch.stack(items)


def checked_batch(batch):
    """A stack_or_errors batch as its tensor; ValueError with the first unreadable image's message
    (raised here, in the main process, so the user reads one line and no worker traceback)."""
    if isinstance(batch, list):
        raise ValueError(batch[0] + (f" (and {len(batch) - 1} more in this batch)" if len(batch) > 1 else ""))
    return batch

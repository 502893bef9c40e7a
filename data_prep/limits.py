"""The resource bounds every prep subcommand shares, in one light module (the command line's
argument types and the Python API check the same numbers)."""

from __future__ import annotations

import math
import os

from .errors import PrepError

IMAGE_SIZE_MIN, IMAGE_SIZE_MAX = 16, 4096  # --image-size (a 4096-px square is 16 MP)
# --max-megapixels: the largest chest detectors (43 x 43 cm at 100 um) give about 18.5 MP.
DEFAULT_MAX_PIXELS = 30_000_000
# --sample-timeout at most 11.6 days: finite, and far below threading.TIMEOUT_MAX, which a
# longer wait (or inf) overflows.
SAMPLE_TIMEOUT_MAX = 1e6


def check_render_limits(image_size: int, sample_timeout: float, max_pixels: int) -> None:
    """PrepError naming the option when one is out of its bounds."""
    if not IMAGE_SIZE_MIN <= image_size <= IMAGE_SIZE_MAX:
        raise PrepError(f"--image-size must be between {IMAGE_SIZE_MIN} and {IMAGE_SIZE_MAX} pixels, got {image_size}")
    if not (math.isfinite(sample_timeout) and 0 < sample_timeout <= SAMPLE_TIMEOUT_MAX):
        raise PrepError(f"--sample-timeout must be a number of seconds above 0 and at most {SAMPLE_TIMEOUT_MAX:g}, "
                        f"got {sample_timeout}")  # fmt: skip
    if not max_pixels >= 1:
        raise PrepError(f"--max-megapixels must be above 0, got {max_pixels / 1e6:g}")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, else the machine's count): the default
    number of prep workers and of the demo's concurrent runs."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

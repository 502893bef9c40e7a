"""Small image helpers of the phantom (numpy + PIL only): blur, masks, resampling, boxes.

Images are float32 arrays; coordinates are pixels with pixel centres at +0.5 unless a function
says "normalised" (x to the right, y down, both in [0, 1]). Boxes are (x0, y0, x1, y1), half-open
like numpy slicing: ``image[y0:y1, x0:x1]``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

Box = tuple[int, int, int, int]


def png_bytes(pixels: np.ndarray) -> bytes:
    """A uint8 H × W image as the PNG the phantom stores (mode "L")."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


@lru_cache(maxsize=64)
def gauss_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps out to 3 sigma."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels, edges extended) by shifted sums: no BLAS, so
    it neither depends on nor fights over BLAS threads, and sums in a fixed order."""
    sigma = round(float(sigma) * 4) / 4  # quantised, so the cached kernels are reused
    if sigma <= 0:
        return image
    kernel = gauss_kernel(sigma)
    radius = len(kernel) // 2
    out = image.astype(np.float32, copy=False)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(radius, radius) if a == axis else (0, 0) for a in range(2)]
        padded = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        for i, weight in enumerate(kernel):
            acc += weight * (padded[i : i + n] if axis == 0 else padded[:, i : i + n])
        out = acc
    return out


def smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def screen(image: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Brighten towards white by ``amount`` in [0, 1], keeping the texture underneath (the
    radiographic look of added density superimposed on what was there)."""
    return 1.0 - (1.0 - image) * (1.0 - amount)


def towards_level(image: np.ndarray, level: float, amount: np.ndarray, detail_sigma: float,
                   detail: float = 0.6) -> np.ndarray:
    """Raise pixels darker than ``level`` towards it by ``amount`` (soft tissue or fluid filling
    lung: it takes the density of the heart or diaphragm, never exceeds it), keeping ``detail``
    of the fine structure finer than ``detail_sigma`` (ribs seen through it)."""
    target = level + detail * (image - blur(image, detail_sigma))
    return image + np.clip(target - image, 0.0, None) * amount


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a size x size image, in pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return x, y


def polygon_mask(points: np.ndarray, size: int, supersample: int = 2) -> np.ndarray:
    """Anti-aliased fill of a polygon given in normalised coordinates, as floats in [0, 1]."""
    from PIL import Image, ImageDraw

    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).polygon([(float(x) * big, float(y) * big) for x, y in points], fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    return mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def polyline_mask(points: np.ndarray, size: int, width: float, supersample: int = 4) -> np.ndarray:
    """Anti-aliased open polyline (normalised points, width in output pixels)."""
    from PIL import Image, ImageDraw

    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    xy = [(float(x) * big, float(y) * big) for x, y in points]
    ImageDraw.Draw(canvas).line(xy, fill=255, width=max(1, round(width * supersample)), joint="curve")
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    return mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def ellipse_mask(size: int, cx: float, cy: float, rx: float, ry: float, edge: float = 1.0) -> np.ndarray:
    """Soft-edged filled ellipse; centre and radii in pixels, edge width in pixels."""
    x, y = pixel_grid(size)
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip(0.5 - (d - 1.0) * min(rx, ry) / edge, 0.0, 1.0)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape == (size, size):
        return image.astype(np.float32, copy=True)
    return np.asarray(Image.fromarray(image.astype(np.float32)).resize((size, size), Image.LANCZOS))


def bilinear(image: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Sample image at pixel positions (sx, sy) (pixel centres at integers), edges clamped."""
    h, w = image.shape
    sx = np.clip(sx, 0, w - 1)
    sy = np.clip(sy, 0, h - 1)
    x0 = np.minimum(np.floor(sx).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(sy).astype(np.int64), h - 2)
    fx, fy = sx - x0, sy - y0
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample ``image`` so that a point p of the input lands at ``matrix @ p`` (normalised
    homogeneous coordinates)."""
    size = image.shape[0]
    inverse = np.linalg.inv(matrix)
    x, y = pixel_grid(size)
    u, v = x / size, y / size
    sx = (inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2]) * size - 0.5
    sy = (inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2]) * size - 0.5
    return bilinear(image, sx, sy)


def jitter_matrix(scale: float, rotation_deg: float, shift: tuple[float, float]) -> np.ndarray:
    """3x3 affine about the image centre, in normalised coordinates."""
    a = math.radians(rotation_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    cx = cy = 0.5
    return np.array(
        [[c, -s, cx - c * cx + s * cy + shift[0]], [s, c, cy - s * cx - c * cy + shift[1]], [0.0, 0.0, 1.0]]
    )


def any_pool(mask: np.ndarray, factor: int) -> np.ndarray:
    """Boolean mask at 1/``factor`` resolution: an output pixel is True when any of its
    ``factor`` x ``factor`` input pixels is (a drawing's footprint at the stored size, so the
    output mask's :func:`bbox` is the input mask's box, scaled outwards)."""
    h, w = mask.shape
    return np.asarray(mask, dtype=bool).reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))


def bbox(mask: np.ndarray) -> Box | None:
    """Half-open bounding box (x0, y0, x1, y1) of the True pixels, None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --------------------------------------------------------------------------------------------
# Anatomy and backgrounds

"""From a model's patch grid to the stored image: undo open_clip's validation preprocessing
(resize keeping the aspect ratio, then centre crop; its ``longest`` and ``squash`` modes too) and
interpolate bilinearly at every stored pixel centre, NaN where the model's input does not reach."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def resize_mode_of(preprocess: Any) -> str:
    """open_clip's validation resize mode ('shortest', 'longest' or 'squash') read from its
    transform; 'shortest' (open_clip's default) for anything else."""
    from tier_openclip.openclip_adapter import transform_resize_mode  # open_clip's transform classes: the adapter's

    return transform_resize_mode(preprocess)


def input_frame(input_size: tuple[int, int], image_size: tuple[int, int], resize_mode: str = "shortest"):
    """(scale_x, scale_y, offset_x, offset_y): a point u of the model's input (height, width) lies
    at u·scale + offset in the stored image (width, height)."""
    (input_h, input_w), (width, height) = input_size, image_size
    if resize_mode == "squash":
        return width / input_w, height / input_h, 0.0, 0.0
    if resize_mode not in ("shortest", "longest"):
        raise ValueError(f"unknown resize mode {resize_mode!r}")
    pick = min if resize_mode == "shortest" else max  # shortest: resize then crop; longest: resize then pad
    scale = pick(width / input_w, height / input_h)
    return scale, scale, (width - input_w * scale) / 2, (height - input_h * scale) / 2


@dataclass(frozen=True)
class AxisWeights:
    """Linear interpolation along one axis at the stored pixel centres: each pixel mixes cells
    ``low`` and ``high`` as (1 - weight, weight); ``outside``: pixels beyond the model's input."""

    low: np.ndarray
    high: np.ndarray
    weight: np.ndarray
    outside: np.ndarray


def axis_weights(cells: int, input_length: int, stored_length: int, scale: float, offset: float) -> AxisWeights:
    """Weights between cell centres; edge cells are held constant beyond their centres (as
    F.interpolate with align_corners=False does)."""
    u = ((np.arange(stored_length) + 0.5) - offset) / scale  # in input pixels
    position = np.clip(u / input_length * cells - 0.5, 0, cells - 1)  # in cells, 0 = first centre
    low = np.floor(position).astype(int)
    return AxisWeights(low, np.minimum(low + 1, cells - 1), position - low, (u < 0) | (u >= input_length))


@dataclass(frozen=True)
class MapGeometry:
    """How a model's patch grid lies over one stored image size."""

    grid: tuple[int, int]  # patch rows, columns
    input_size: tuple[int, int]  # model input (height, width)
    image_size: tuple[int, int]  # stored image (width, height)
    resize_mode: str = "shortest"

    @functools.cache  # one geometry per model and image size: computed once per evaluation
    def weights(self) -> tuple[AxisWeights, AxisWeights]:
        """(rows, columns) interpolation weights."""
        sx, sy, ox, oy = input_frame(self.input_size, self.image_size, self.resize_mode)
        rows = axis_weights(self.grid[0], self.input_size[0], self.image_size[1], sy, oy)
        columns = axis_weights(self.grid[1], self.input_size[1], self.image_size[0], sx, ox)
        return rows, columns

    def patch_centres(self) -> np.ndarray:
        """(rows·columns, 2) patch centres (x, y) in stored pixels, row-major like the tokens."""
        sx, sy, ox, oy = input_frame(self.input_size, self.image_size, self.resize_mode)
        ys = (np.arange(self.grid[0]) + 0.5) * self.input_size[0] / self.grid[0] * sy + oy
        xs = (np.arange(self.grid[1]) + 0.5) * self.input_size[1] / self.grid[1] * sx + ox
        grid_x, grid_y = np.meshgrid(xs, ys)
        return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def upsample_maps(grid_maps: np.ndarray, geometry: MapGeometry) -> np.ndarray:
    """(..., rows, cols) patch maps -> (..., height, width) maps of the stored image, NaN where
    the model's input does not reach. Separable: rows first, then columns (gathers, no BLAS,
    whose threads cost more than these small products)."""
    rows, columns = geometry.weights()
    maps = np.asarray(grid_maps, dtype=np.float64)
    by_row = maps[..., rows.low, :] * (1 - rows.weight)[:, None] + maps[..., rows.high, :] * rows.weight[:, None]
    out = by_row[..., columns.low] * (1 - columns.weight) + by_row[..., columns.high] * columns.weight
    out[..., rows.outside, :] = np.nan
    out[..., columns.outside] = np.nan
    return out


def grid_shape(num_patches: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of a patch grid over an input of (height, width)."""
    height, width = input_size
    rows = max(1, round(math.sqrt(num_patches * height / width)))
    if num_patches % rows:
        raise ValueError(f"{num_patches} patches do not tile a {height}x{width} input")
    return rows, num_patches // rows



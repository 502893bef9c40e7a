"""The geometry of a model's patch grid over a stored image, the one place every map command uses
(grounding, analyze, heatmap, the demo's figures, the phantom's image-free prior):

- where the grid lies: undo open_clip's validation preprocessing (resize keeping the aspect ratio,
  then centre crop; its ``longest`` and ``squash`` modes too): :func:`input_frame`, :class:`MapGeometry`
  and its :meth:`~MapGeometry.patch_centres`;
- upsampling: interpolate a patch map bilinearly at every stored pixel centre, NaN where the
  model's input does not reach (:func:`upsample_maps`);
- box membership, one convention: boxes (x0, y0, x1, y1) in stored pixels are half-open, a point
  (x, y) is inside when x0 ≤ x < x1 and y0 ≤ y < y1 (:func:`points_in_boxes`); a pixel (c, r) when
  its centre (c + ½, r + ½) is (``data_prep.eval_layout.region_mask``, which prep draws masks with);
  half-open so that boxes which share an edge share no point;
- the pointing game's rule (:func:`pointing_share`): 1 when the highest score lies in the region,
  0 when not; when entries tie for it, the share of them inside (the expected hit of picking one at
  random), so a flat map scores the region's share, not whatever entry comes first.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tier_openclip.data_prep.eval_layout import Box


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


def model_geometry(num_patches: int, input_size: tuple[int, int], image_size: tuple[int, int], preprocess: Any
                   ) -> MapGeometry:
    """The geometry of ``num_patches`` patch tokens of a model whose input is ``input_size``
    (height, width) over a stored image of ``image_size`` (width, height), in the resize mode of
    the model's validation transform ``preprocess``."""
    input_size = (int(input_size[0]), int(input_size[1]))
    return MapGeometry(grid_shape(num_patches, input_size), input_size, (int(image_size[0]), int(image_size[1])),
                       resize_mode_of(preprocess))


def points_in_boxes(points: np.ndarray, boxes: Iterable[Box]) -> np.ndarray:
    """(N,) bool: whether each point (x, y) of ``points`` (N, 2) lies in the union of the half-open
    boxes (x0, y0, x1, y1)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    return inside


def points_in_region(points: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seen, inside), (N,) bool each: whether each point (x, y) lies in the (height, width) image
    of ``region``, and whether the pixel it lies in belongs to the region (False where not seen)."""
    height, width = region.shape
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = np.floor(points[:, 0]).astype(int), np.floor(points[:, 1]).astype(int)
    seen = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    inside = np.zeros(len(points), dtype=bool)
    inside[seen] = region[y[seen], x[seen]]
    return seen, inside


def pointing_share(scores: np.ndarray, inside: np.ndarray) -> float:
    """The pointing game's rule over matching entries of ``scores`` and ``inside`` (bool): the
    share of the entries with the highest score that are inside (1 or 0 without ties); 0 when
    there is no entry."""
    scores, inside = np.asarray(scores).ravel(), np.asarray(inside, dtype=bool).ravel()
    if scores.size == 0:
        return 0.0
    top = scores == scores.max()
    return float((top & inside).sum() / top.sum())


def patch_pointing(scores: np.ndarray, centres: np.ndarray, boxes: Iterable[Box]) -> float:
    """The pointing game of a patch map: ``scores`` (one per patch) point at their highest patch,
    a hit when its centre (``centres`` (N, 2), e.g. :meth:`MapGeometry.patch_centres`) lies in the
    boxes; tied patches share the hit."""
    return pointing_share(scores, points_in_boxes(centres, boxes))

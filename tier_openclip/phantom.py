"""Phantom chest radiographs with known lesion locations, for the TIER demo.

Each sample is a frontal (PA) chest radiograph with 0-2 synthetic findings drawn at anatomically
named places, a report-style caption that names present and absent findings, and the pixel box
of every finding. The boxes make the pointing game possible; the label table makes zero-shot
AUC possible.

Orientation (radiological convention): the patient faces the viewer, so the patient's RIGHT is
on the image LEFT (small x) and the patient's LEFT (heart apex, gastric bubble) on the image
RIGHT (large x). Finding names use the patient's side: "left pleural effusion" is drawn at large
x. Never flip these images horizontally as augmentation: it would swap every left/right label.

Coordinates: anatomy is described in normalised image coordinates (x to the right, y down, both
in [0, 1]); finding boxes are (x0, y0, x1, y1) in pixels of the output image, half-open like
numpy slicing: ``image[y0:y1, x0:x1]`` is the box.

Findings (``FINDINGS``; at most two per image, never two whose drawings would overlap):

=========================  ==================================================================
right upper zone opacity   ill-defined consolidation, upper third of the right lung (image left)
right lower zone opacity   ill-defined consolidation, lower third of the right lung
left lower zone opacity    ill-defined consolidation, lower third of the left lung (image right)
left upper zone mass       round well-circumscribed 4-6 cm mass, upper third of the left lung
right pleural effusion     meniscus at the right costophrenic angle, hiding the hemidiaphragm
left pleural effusion      the same on the left (image right, bottom)
cardiomegaly               cardiac silhouette widened 18-42%, mostly towards the image right
right pneumothorax         apical rim of air without lung markings, visceral pleural line
=========================  ==================================================================

Each finding's zero-shot prompt is its name. At 64 px every lesion spans at least one 8x8 patch
(most span several); sizes are fractions of the image, so they scale with ``image_size``.

Backgrounds: the real computed-radiography chest study shipped in ``pydicom-data``
(``RG1_UNCI.dcm``) when that package is installed, otherwise a procedural chest. The shipped
study shows several round pulmonary masses; they are removed (low-frequency inpainting) so that
the background reads as a normal chest and every finding in a caption is one this module drew.
Every sample varies the background (small affine, brightness/contrast/gamma, noise).

Everything is a pure function of a ``numpy.random.Generator`` and a :class:`PhantomConfig`,
except :func:`write_phantom_dataset`, which writes WebDataset shards (through data_prep's shard
writer, the one ``tier-openclip prep`` uses) and a zero-shot evaluation folder.

Pipeline of one sample: :func:`plan_sample` draws everything random (findings, severities, shape
seeds, jitter, caption) -> :func:`render_sample` turns a plan into pixels and boxes. A plan with a
finding removed renders the same image without that finding, which is how the tests check that
each box holds its drawing.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from .data_prep import shards

__all__ = [
    "Anatomy",
    "Background",
    "Finding",
    "FindingSpec",
    "FINDINGS",
    "FINDINGS_BY_NAME",
    "FINDING_NAMES",
    "FIELD_OF_VIEW_CM",
    "INCOMPATIBLE",
    "NORMAL_IMPRESSIONS",
    "PhantomConfig",
    "PhantomSample",
    "PlannedFinding",
    "ReportSentence",
    "SamplePlan",
    "build_background",
    "make_sample",
    "plan_sample",
    "real_anatomy_path",
    "render_sample",
    "negative_options",
    "positive_options",
    "report_sentences",
    "sample_finding_names",
    "sample_rng",
    "split_labels",
    "write_phantom_dataset",
]

Box = tuple[int, int, int, int]
Point = tuple[float, float]

#: Width of the image in centimetres, used for severity words and sizes in captions
#: (a PA film is ~35 cm across; the shipped CR study's crop is about that wide).
FIELD_OF_VIEW_CM = 35.0
#: Resolution of the cached background before it is resized to a render size.
BASE_SIZE = 512
#: Display gamma applied to the windowed CR image so lungs read dark as on a typical PA film.
_DISPLAY_GAMMA = 2.2
_SPLIT_IDS = {"train": 0, "test": 1}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class PhantomConfig:
    """What to generate. ``PhantomConfig.preset("small")`` is the CPU demo's dataset.

    Attributes:
        image_size: output images are ``image_size`` x ``image_size`` 8-bit grayscale.
        num_train, num_test: samples per split (each >= 1).
        seed: everything (findings, shapes, jitter, captions) follows from it.
        use_real_anatomy: True = the pydicom-data CR study (error when absent), False = the
            procedural chest, None = the CR study when pydicom-data is installed.
        finding_count_probs: probabilities of 0, 1 and 2 findings in an image.
        finding_weights: relative weight of each finding name when picking (default: equal).
        negation_prob: probability that a report mentions a group of absent findings
            ("No pneumothorax."); normal studies otherwise get "No acute cardiopulmonary process.".
        max_shift, max_scale, max_rotation_deg: per-sample affine jitter of the background
            (shift and scale as fractions of the image).
        noise_std: standard deviation of the added noise on a [0, 1] intensity scale.
        render_scale: findings are drawn at ``render_scale`` times the output size and the result
            is box-averaged down (anti-aliasing).
        shard_size: samples per tar shard.
    """

    image_size: int = 64
    num_train: int = 2000
    num_test: int = 400
    seed: int = 0
    use_real_anatomy: bool | None = None
    finding_count_probs: tuple[float, float, float] = (0.3, 0.45, 0.25)
    finding_weights: Mapping[str, float] | None = None
    negation_prob: float = 0.7
    max_shift: float = 0.03
    max_scale: float = 0.04
    max_rotation_deg: float = 3.0
    noise_std: float = 0.012
    render_scale: int = 2
    shard_size: int = 500

    PRESETS: ClassVar[dict[str, dict]] = {
        # ~2400 images at 64 px: a few minutes of CPU training, ~40 positives per finding in test.
        "small": dict(image_size=64, num_train=2000, num_test=400, shard_size=500),
        # Same 64 px (TIER-tiny's input), four times the training images, 1000 test images.
        "medium": dict(image_size=64, num_train=8000, num_test=1000, shard_size=1000),
    }

    @classmethod
    def preset(cls, name: str, seed: int = 0, **overrides) -> PhantomConfig:
        """The named size ("small" for the CPU demo, "medium"), with any field overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown phantom preset {name!r}; choose from {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], "seed": seed, **overrides})

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size={self.image_size}: findings are not drawable below 32 px")
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError("num_train and num_test must be >= 1")
        if len(self.finding_count_probs) != 3 or abs(sum(self.finding_count_probs) - 1) > 1e-6:
            raise ValueError("finding_count_probs: three probabilities (0, 1, 2 findings) summing to 1")
        unknown = set(self.finding_weights or ()) - set(FINDING_NAMES)
        if unknown:
            raise ValueError(f"finding_weights names unknown findings: {sorted(unknown)}")
        if self.render_scale < 1 or self.shard_size < 1:
            raise ValueError("render_scale and shard_size must be >= 1")

    def real_anatomy(self) -> bool:
        """Whether samples use the pydicom-data CR study (resolves ``use_real_anatomy=None``)."""
        if self.use_real_anatomy is None:
            return real_anatomy_path() is not None
        return self.use_real_anatomy


# --------------------------------------------------------------------------------------------
# Small image helpers (numpy + PIL only)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _gauss_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps out to 3 sigma."""
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels, edges extended) by shifted sums: no BLAS, so
    it neither depends on nor fights over BLAS threads, and sums in a fixed order."""
    sigma = round(float(sigma) * 4) / 4  # quantised, so the cached kernels are reused
    if sigma <= 0:
        return image
    kernel = _gauss_kernel(sigma)
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


def _smoothstep(edge0: float | np.ndarray, edge1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _screen(image: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Brighten towards white by ``amount`` in [0, 1], keeping the texture underneath (the
    radiographic look of added density superimposed on what was there)."""
    return 1.0 - (1.0 - image) * (1.0 - amount)


def _towards_level(image: np.ndarray, level: float, amount: np.ndarray, detail_sigma: float,
                   detail: float = 0.6) -> np.ndarray:
    """Raise pixels darker than ``level`` towards it by ``amount`` (soft tissue or fluid filling
    lung: it takes the density of the heart or diaphragm, never exceeds it), keeping ``detail``
    of the fine structure finer than ``detail_sigma`` (ribs seen through it)."""
    target = level + detail * (image - _blur(image, detail_sigma))
    return image + np.clip(target - image, 0.0, None) * amount


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a size x size image, in pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return x, y


def _polygon_mask(points: np.ndarray, size: int, supersample: int = 2) -> np.ndarray:
    """Anti-aliased fill of a polygon given in normalised coordinates, as floats in [0, 1]."""
    from PIL import Image, ImageDraw

    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).polygon([(float(x) * big, float(y) * big) for x, y in points], fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    return mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def _polyline_mask(points: np.ndarray, size: int, width: float, supersample: int = 4) -> np.ndarray:
    """Anti-aliased open polyline (normalised points, width in output pixels)."""
    from PIL import Image, ImageDraw

    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    xy = [(float(x) * big, float(y) * big) for x, y in points]
    ImageDraw.Draw(canvas).line(xy, fill=255, width=max(1, round(width * supersample)), joint="curve")
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    return mask.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def _ellipse_mask(size: int, cx: float, cy: float, rx: float, ry: float, edge: float = 1.0) -> np.ndarray:
    """Soft-edged filled ellipse; centre and radii in pixels, edge width in pixels."""
    x, y = _pixel_grid(size)
    d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip(0.5 - (d - 1.0) * min(rx, ry) / edge, 0.0, 1.0)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape == (size, size):
        return image.astype(np.float32, copy=True)
    return np.asarray(Image.fromarray(image.astype(np.float32)).resize((size, size), Image.LANCZOS))


def _bilinear(image: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
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


def _warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample ``image`` so that a point p of the input lands at ``matrix @ p`` (normalised
    homogeneous coordinates)."""
    size = image.shape[0]
    inverse = np.linalg.inv(matrix)
    x, y = _pixel_grid(size)
    u, v = x / size, y / size
    sx = (inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2]) * size - 0.5
    sy = (inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2]) * size - 0.5
    return _bilinear(image, sx, sy)


def _jitter_matrix(scale: float, rotation_deg: float, shift: tuple[float, float]) -> np.ndarray:
    """3x3 affine about the image centre, in normalised coordinates."""
    a = math.radians(rotation_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    cx = cy = 0.5
    return np.array(
        [[c, -s, cx - c * cx + s * cy + shift[0]], [s, c, cy - s * cx - c * cy + shift[1]], [0.0, 0.0, 1.0]]
    )


def _bbox(mask: np.ndarray) -> Box | None:
    """Half-open bounding box (x0, y0, x1, y1) of the True pixels, None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --------------------------------------------------------------------------------------------
# Anatomy and backgrounds
# --------------------------------------------------------------------------------------------

ZONES = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Anatomy:
    """Geometry of one chest in normalised image coordinates (x right, y down).

    ``right_lung`` is the patient's right lung, on the image LEFT; ``left_lung`` on the image
    RIGHT. Lung zones are thirds of each lung's height (upper zone: apex to about the anterior
    2nd rib; lower zone: about the anterior 4th rib to the hemidiaphragm).
    """

    right_lung: tuple[Point, ...]
    left_lung: tuple[Point, ...]
    heart: tuple[float, float, float, float]  # cardiac silhouette ellipse: cx, cy, rx, ry
    right_hilum: Point
    left_hilum: Point

    def lung(self, side: str) -> np.ndarray:
        """(N, 2) polygon of the patient's ``side`` ("right" or "left") lung."""
        return np.asarray({"right": self.right_lung, "left": self.left_lung}[side], dtype=np.float64)

    def lung_mask(self, side: str, size: int) -> np.ndarray:
        """Anti-aliased (size, size) mask in [0, 1] of the patient's ``side`` lung."""
        return _polygon_mask(self.lung(side), size)

    def hilum(self, side: str) -> np.ndarray:
        return np.asarray({"right": self.right_hilum, "left": self.left_hilum}[side], dtype=np.float64)

    def lung_box(self, side: str) -> tuple[float, float, float, float]:
        p = self.lung(side)
        return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())

    def zone_box(self, side: str, zone: str) -> tuple[float, float, float, float]:
        """Normalised box of a lung zone ("upper", "middle", "lower") of the patient's ``side``."""
        x0, y0, x1, y1 = self.lung_box(side)
        i = ZONES.index(zone)
        h = (y1 - y0) / 3
        return x0, y0 + i * h, x1, y0 + (i + 1) * h

    def transformed(self, matrix: np.ndarray) -> Anatomy:
        """The anatomy after the normalised affine ``matrix`` (3x3)."""

        def move(points) -> tuple[Point, ...]:
            p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            q = p @ matrix[:2, :2].T + matrix[:2, 2]
            return tuple((float(x), float(y)) for x, y in q)

        scale = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
        cx, cy, rx, ry = self.heart
        (hx, hy), = move([(cx, cy)])
        return Anatomy(
            right_lung=move(self.right_lung),
            left_lung=move(self.left_lung),
            heart=(hx, hy, rx * scale, ry * scale),
            right_hilum=move([self.right_hilum])[0],
            left_hilum=move([self.left_hilum])[0],
        )


#: Lung outlines of the pydicom-data CR study (RG1_UNCI.dcm), cropped to its top square, traced
#: by eye on a 600 px rendering (lateral chest walls, apices above the clavicles, hemidiaphragm
#: domes, mediastinal and cardiac borders).
REAL_ANATOMY = Anatomy(
    right_lung=(
        (0.33, 0.09), (0.27, 0.095), (0.21, 0.12), (0.16, 0.17), (0.12, 0.24), (0.095, 0.32),
        (0.08, 0.42), (0.07, 0.52), (0.065, 0.62), (0.065, 0.72), (0.07, 0.80), (0.11, 0.79),
        (0.16, 0.77), (0.22, 0.755), (0.28, 0.755), (0.33, 0.765), (0.375, 0.77), (0.38, 0.65),
        (0.395, 0.52), (0.405, 0.40), (0.40, 0.28), (0.38, 0.15),
    ),
    left_lung=(
        (0.62, 0.09), (0.68, 0.09), (0.75, 0.11), (0.81, 0.15), (0.86, 0.22), (0.89, 0.32),
        (0.905, 0.45), (0.915, 0.58), (0.92, 0.70), (0.925, 0.80), (0.92, 0.85), (0.88, 0.83),
        (0.83, 0.805), (0.78, 0.785), (0.76, 0.76), (0.72, 0.68), (0.67, 0.58), (0.62, 0.50),
        (0.59, 0.45), (0.58, 0.38), (0.58, 0.28), (0.59, 0.18),
    ),
    heart=(0.57, 0.78, 0.20, 0.25),
    right_hilum=(0.37, 0.50),
    left_hilum=(0.61, 0.44),
)

#: Round masses visible in the shipped CR study (cx, cy, radius; normalised), inpainted away.
_REAL_MASSES = (
    (0.731, 0.395, 0.052), (0.799, 0.465, 0.052), (0.792, 0.636, 0.056),
    (0.272, 0.623, 0.072), (0.140, 0.719, 0.044), (0.188, 0.414, 0.030),
)

#: The idealised chest drawn when pydicom-data is absent.
PROCEDURAL_ANATOMY = Anatomy(
    right_lung=(
        (0.42, 0.17), (0.36, 0.115), (0.29, 0.11), (0.22, 0.15), (0.16, 0.23), (0.125, 0.34),
        (0.105, 0.47), (0.095, 0.60), (0.09, 0.70), (0.095, 0.79), (0.14, 0.775), (0.21, 0.745),
        (0.28, 0.73), (0.35, 0.74), (0.41, 0.76), (0.425, 0.64), (0.435, 0.50), (0.435, 0.34),
    ),
    left_lung=(
        (0.575, 0.19), (0.63, 0.12), (0.70, 0.11), (0.77, 0.14), (0.83, 0.22), (0.87, 0.33),
        (0.89, 0.46), (0.905, 0.59), (0.91, 0.70), (0.905, 0.81), (0.86, 0.795), (0.80, 0.775),
        (0.755, 0.765), (0.72, 0.70), (0.67, 0.61), (0.615, 0.53), (0.575, 0.46), (0.565, 0.33),
    ),
    heart=(0.56, 0.68, 0.19, 0.16),
    right_hilum=(0.38, 0.45),
    left_hilum=(0.62, 0.43),
)
_PROCEDURAL_SEED = 20240229  # fixes the procedural anatomy; sample variation comes from the plan

REFERENCE_CR = "RG1_UNCI.dcm"


@lru_cache(maxsize=1)
def real_anatomy_path() -> str | None:
    """Path of the pydicom-data chest CR study, or None when pydicom-data is not installed."""
    try:
        from pydicom.data import get_testdata_file

        return get_testdata_file(REFERENCE_CR, download=False)
    except Exception:  # pydicom missing, or its data manager failing: treat as absent
        return None


@lru_cache(maxsize=1)
def _reference_radiograph(path: str) -> np.ndarray:
    """The CR study as a BASE_SIZE float image in [0, 1], bright = dense (bone white, lungs dark)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    pixels = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
    pixels = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1e-6)
    if ds.PhotometricInterpretation == "MONOCHROME1":  # stored bright = low dose: invert to the usual display
        pixels = 1.0 - pixels
    rows, cols = pixels.shape
    side = min(rows, cols)
    x0 = (cols - side) // 2
    pixels = pixels[:side, x0 : x0 + side]  # top square: apices to below the hemidiaphragms
    lo, hi = np.percentile(pixels, [1.0, 99.5])
    pixels = np.clip((pixels - lo) / (hi - lo), 0.0, 1.0) ** _DISPLAY_GAMMA
    return _remove_masses(_resize(pixels, BASE_SIZE), _REAL_MASSES)


def _remove_masses(image: np.ndarray, masses: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Subtract each round mass's low-frequency excess over its surroundings.

    Inside a soft disc the image keeps its fine texture (ribs, vessels) but loses the mass's
    brightness, estimated as blur(image) minus a normalised-convolution fill of blur(image)
    from outside the disc.
    """
    size = image.shape[0]
    x, y = _pixel_grid(size)
    out = image.astype(np.float32, copy=True)
    for cx, cy, r in masses:
        cx, cy, r = cx * size, cy * size, r * size
        d = np.hypot(x - cx, y - cy)
        soft = np.clip((1.3 * r - d) / (0.3 * r), 0.0, 1.0)
        outside = (d >= 1.4 * r).astype(np.float32)
        low = _blur(out, 0.08 * r)
        fill = _blur(low * outside, 0.7 * r) / np.maximum(_blur(outside, 0.7 * r), 1e-6)
        out -= soft * np.maximum(low - fill, 0.0)
    return np.clip(out, 0.0, 1.0)


@lru_cache(maxsize=1)
def _procedural_radiograph() -> np.ndarray:
    """A procedural PA chest (BASE_SIZE, [0, 1], bright = dense) matching PROCEDURAL_ANATOMY."""
    from PIL import Image, ImageDraw

    n = BASE_SIZE
    rng = np.random.default_rng(_PROCEDURAL_SEED)
    anatomy = PROCEDURAL_ANATOMY
    x, y = _pixel_grid(n)
    u, v = x / n, y / n

    # Air around the patient; a boxy torso (shoulders) and the neck; denser towards the abdomen
    # and along the lateral chest wall, where the X-ray crosses more soft tissue.
    torso = (np.abs(u - 0.5) / 0.48) ** 4 + (np.abs(v - 0.64) / 0.58) ** 4
    body = np.clip((1.0 - torso) * 12, 0.0, 1.0)
    body = np.maximum(body, _ellipse_mask(n, 0.5 * n, 0.05 * n, 0.11 * n, 0.12 * n, edge=6))
    tissue = 0.52 + 0.22 * _smoothstep(0.72, 0.86, v) + 0.12 * _smoothstep(0.36, 0.48, np.abs(u - 0.5))
    image = 0.04 + body * (tissue - 0.04)

    # Lungs: dark, slightly denser at the bases, with branching vessels that taper and fade
    # from the hila to the periphery.
    vessels = Image.new("F", (n, n), 0.0)
    draw = ImageDraw.Draw(vessels)
    for side in ("right", "left"):
        hilum = anatomy.hilum(side)
        x0, y0, x1, y1 = anatomy.lung_box(side)
        for _ in range(40):
            start = hilum.copy()
            direction = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)]) - hilum
            for generation in range(4):
                step = direction * rng.uniform(0.2, 0.3)
                angle = rng.normal(0.0, 0.35)
                step = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ step
                end = start + step
                draw.line([tuple(start * n), tuple(end * n)], fill=0.07 * 0.7**generation,
                          width=max(1, round((4 - generation) * n / 512)))
                start = end
    lungs = np.zeros((n, n), np.float32)
    for side in ("right", "left"):
        lungs = np.maximum(lungs, _polygon_mask(anatomy.lung(side), n, supersample=2))
    lungs = _blur(lungs, 2.0)
    mottle = _blur(rng.standard_normal((n, n)).astype(np.float32), 3.0) * 0.15
    lung_density = 0.2 + 0.07 * _smoothstep(0.3, 0.8, v) + _blur(np.asarray(vessels), 1.5) + mottle
    image = image * (1 - lungs) + lung_density * lungs

    # Mediastinum with the aortic knob, heart, spine: the densest soft tissue on the film.
    half_width = 0.06 + 0.02 * v
    mediastinum = np.clip(0.5 - (np.abs(u - 0.5) - half_width) * n / 4, 0, 1) * _smoothstep(0.0, 0.08, v)
    image = np.maximum(image, 0.74 * mediastinum)
    image = np.maximum(image, 0.72 * _ellipse_mask(n, 0.545 * n, 0.28 * n, 0.04 * n, 0.035 * n, edge=5))
    hx, hy, hrx, hry = anatomy.heart
    heart = _ellipse_mask(n, hx * n, hy * n, hrx * n, hry * n, edge=4)
    image = np.maximum(image, (0.70 + 0.04 * _smoothstep(hy - hry, hy + hry, v)) * heart)
    spine = np.clip(0.5 - (np.abs(u - 0.5) - 0.035) * n / 3, 0, 1)
    endplates = 0.02 * _smoothstep(0.7, 1.0, np.cos(2 * np.pi * v / 0.045))
    image = image + spine * (0.06 - endplates)

    # Gastric bubble under the left hemidiaphragm (image right).
    image = image - 0.3 * _ellipse_mask(n, 0.70 * n, 0.86 * n, 0.05 * n, 0.03 * n, edge=4) * body

    # Ribs (posterior arcs leaving the spine and curving down laterally, fainter anterior arcs) and
    # clavicles.
    bones = Image.new("F", (n, n), 0.0)
    draw = ImageDraw.Draw(bones)
    t = np.linspace(0.0, 1.0, 24)
    for sign in (-1, 1):
        for k in range(10):
            y0 = 0.09 + 0.066 * k
            xs = 0.5 + sign * (0.05 + 0.42 * t)
            posterior = y0 - 0.06 * t + 0.24 * t**2  # rises from the spine, curves down laterally
            anterior = y0 + 0.13 + 0.10 * (1 - t)  # from the lateral wall down towards the sternum
            draw.line([(a * n, b * n) for a, b in zip(xs, posterior)], fill=1.0, width=round(0.02 * n), joint="curve")
            keep = t > 0.25
            draw.line([(a * n, b * n) for a, b in zip(xs[keep], anterior[keep])], fill=0.45,
                      width=round(0.016 * n), joint="curve")
        clavicle = [(0.5 + sign * 0.06, 0.16), (0.5 + sign * 0.22, 0.12), (0.5 + sign * 0.40, 0.10)]
        draw.line([(a * n, b * n) for a, b in clavicle], fill=1.5, width=round(0.025 * n), joint="curve")
    bones = _blur(np.asarray(bones), 1.5)
    image = image + (0.07 + 0.05 * lungs) * bones * body
    image = image + 0.012 * _blur(rng.standard_normal((n, n)).astype(np.float32), 1.0)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Background:
    """A chest image at render resolution (read-only floats in [0, 1], bright = dense) and its
    anatomy; ``source`` says which background it is."""

    image: np.ndarray
    anatomy: Anatomy
    source: str  # "RG1_UNCI.dcm" or "procedural"


def build_background(config: PhantomConfig) -> Background:
    """The background every sample of ``config`` starts from, at the render resolution
    (``image_size * render_scale``). Cached: call it freely; never modify what it returns."""
    size = config.image_size * config.render_scale
    if config.real_anatomy():
        path = real_anatomy_path()
        if path is None:
            raise FileNotFoundError(f"{REFERENCE_CR} not found: install pydicom-data or set use_real_anatomy=False")
        return _background(size, path)
    return _background(size, None)


@lru_cache(maxsize=4)
def _background(size: int, reference_path: str | None) -> Background:
    if reference_path is None:
        image, anatomy, source = _procedural_radiograph(), PROCEDURAL_ANATOMY, "procedural"
    else:
        image, anatomy, source = _reference_radiograph(reference_path), REAL_ANATOMY, REFERENCE_CR
    image = _resize(image, size)
    image.flags.writeable = False
    return Background(image, anatomy, source)


# --------------------------------------------------------------------------------------------
# Findings: planning (what) and drawing (where, how)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFinding:
    """A finding decided for one sample, before drawing.

    ``size`` is kind-specific: opacity radius and mass diameter (fractions of the image width),
    effusion height (fraction of the image height), cardiomegaly width factor, pneumothorax
    collapse factor (lung scaled towards its hilum). ``density`` in [0, 1]; ``seed`` drives the
    shape and position.
    """

    name: str
    severity: str | None
    size: float
    density: float
    seed: int


@dataclass(frozen=True)
class Finding:
    """A finding as drawn in a sample: ``box`` = (x0, y0, x1, y1) half-open output pixels."""

    name: str
    prompt: str
    severity: str | None
    box: Box


#: draw(image, anatomy, planned, spec, rng) -> (image, footprint), all at render resolution.
DrawFn = Callable[
    [np.ndarray, Anatomy, PlannedFinding, "FindingSpec", np.random.Generator], tuple[np.ndarray, np.ndarray]
]


@dataclass(frozen=True)
class FindingSpec:
    """One entry of the catalogue.

    ``side`` is the patient's side; ``zone`` the lung zone (None for effusion, cardiomegaly and
    pneumothorax, whose place is fixed by anatomy: costophrenic angle, cardiac silhouette, apex).
    ``draw(image, anatomy, planned, spec, rng) -> (image, footprint)`` works at render
    resolution; the footprint (>= 0.25) is the finding's extent and gives its box.
    ``severities`` maps each severity word to the (low, high) range of ``PlannedFinding.size``;
    ``density`` is the (low, high) range of ``PlannedFinding.density``.
    ``keywords``: words of which at least one names the finding in every positive sentence.
    """

    name: str
    prompt: str
    kind: str
    side: str | None
    zone: str | None
    region: str  # where it is drawn, in words (documentation and meta.json)
    draw: DrawFn
    severities: Mapping[str | None, tuple[float, float]]
    density: tuple[float, float]
    keywords: tuple[str, ...]


def _place(rng: np.random.Generator, lung: np.ndarray, zone: tuple[float, float, float, float],
           radius: float, min_cover: float) -> tuple[float, float]:
    """A lesion centre (pixels) inside ``zone`` whose disc of ``radius`` px lies mostly in the
    lung (``min_cover`` = mean lung mask over the centre and two rings of probe points)."""
    size = lung.shape[0]
    x0, y0, x1, y1 = (c * size for c in zone)
    angles = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
    ring = np.concatenate([[0.0], np.full(12, 0.5), np.full(12, 1.0)])
    dx = ring * np.cos(np.concatenate([[0.0], angles, angles + np.pi / 12])) * radius
    dy = ring * np.sin(np.concatenate([[0.0], angles, angles + np.pi / 12])) * radius
    for _ in range(200):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if _bilinear(lung, cx + dx - 0.5, cy + dy - 0.5).mean() >= min_cover:
            return float(cx), float(cy)
    # Fall back to the centroid of the lung inside the zone (always inside for sane anatomy).
    x, y = _pixel_grid(size)
    inside = (lung > 0.5) & (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    return float(x[inside].mean()), float(y[inside].mean())


def _noise_field(rng: np.random.Generator, size: int, scales: Sequence[float],
                 weights: Sequence[float]) -> np.ndarray:
    """Smooth random field with unit standard deviation: blurred white noise at several scales (px)."""
    field = np.zeros((size, size), np.float32)
    for scale, weight in zip(scales, weights):
        layer = _blur(rng.standard_normal((size, size)).astype(np.float32), scale)
        field += weight * layer / (layer.std() + 1e-6)
    return field / (field.std() + 1e-6)


def _heart_level(image: np.ndarray, anatomy: Anatomy) -> float:
    """Brightness of the cardiac silhouette beside the spine: the film's soft-tissue density."""
    size = image.shape[0]
    cx, cy, rx, ry = (c * size for c in anatomy.heart)
    x, y = _pixel_grid(size)
    beside_spine = ((_ellipse_mask(size, cx, cy, rx, ry) > 0.5) & (x > cx + 0.3 * rx) & (x < cx + 0.6 * rx)
                    & (y > cy - 0.8 * ry) & (y < cy - 0.1 * ry))
    return float(np.median(image[beside_spine]))


def _draw_opacity(image, anatomy, planned, spec, rng):
    """Ill-defined airspace opacity (consolidation): a ragged region where a smooth random field
    on a broad envelope crosses a soft threshold, so margins are irregular and fade out;
    confined to the lung. "patchy" is mottled, "dense" nearly uniform."""
    size = image.shape[0]
    lung = anatomy.lung_mask(spec.side, size)
    radius = planned.size * size
    cx, cy = _place(rng, lung, anatomy.zone_box(spec.side, spec.zone), 0.7 * radius, min_cover=0.9)
    x, y = _pixel_grid(size)
    ax, ay = radius * rng.uniform(0.8, 1.25, 2)
    envelope = np.exp(-0.5 * (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) / 0.55**2)
    field = envelope * (1.0 + 0.6 * _noise_field(rng, size, (radius / 3, radius / 7), (0.6, 0.4)))
    footprint = _smoothstep(0.1, 0.7, field) * lung
    texture = np.ones_like(field)
    if planned.severity == "patchy":
        mottle = _noise_field(rng, size, (0.012 * size,), (1.0,))
        texture = 0.45 + 0.55 * _smoothstep(-1.0, 1.0, mottle)
    level = _heart_level(image, anatomy) * rng.uniform(0.9, 1.0)  # about as dense as the heart
    return _towards_level(image, level, planned.density * footprint * texture, 0.01 * size), footprint


def _draw_mass(image, anatomy, planned, spec, rng):
    """Well-circumscribed round mass: sharp edge, soft-tissue density, thickest centrally."""
    size = image.shape[0]
    lung = anatomy.lung_mask(spec.side, size)
    radius = planned.size * size / 2
    cx, cy = _place(rng, lung, anatomy.zone_box(spec.side, spec.zone), radius, min_cover=0.97)
    x, y = _pixel_grid(size)
    r = np.hypot(x - cx, y - cy) / radius
    footprint = np.clip((1.0 - r) * radius / 0.8 + 0.5, 0.0, 1.0)  # anti-aliased disc
    thickness = np.sqrt(np.clip(1.0 - r**2, 0.0, 1.0)) ** 0.5
    amount = planned.density * footprint * np.maximum(thickness, 0.5)
    return _towards_level(image, _heart_level(image, anatomy), amount, 0.01 * size), footprint


def _draw_effusion(image, anatomy, planned, spec, rng):
    """Pleural effusion: dependent fluid filling the costophrenic angle upwards, with a meniscus
    (higher along the lateral chest wall), hazy upper margin and loss of the diaphragm outline."""
    size = image.shape[0]
    poly = anatomy.lung(spec.side)
    # The hemithorax down to a little below the traced lung base, so fluid meets the diaphragm.
    lung = _polygon_mask(poly, size)
    drop = max(1, round(0.03 * size))
    lung[drop:] = np.maximum(lung[drop:], lung[:-drop])
    x, y = _pixel_grid(size)
    lateral_x = (poly[:, 0].min() if spec.side == "right" else poly[:, 0].max()) * size
    base = poly[poly[:, 1] > poly[:, 1].max() - 0.12]  # the lung base: diaphragm dome and angle
    medial_x = (base[:, 0].max() if spec.side == "right" else base[:, 0].min()) * size
    cp_y = poly[:, 1].max() * size  # costophrenic angle: lowest point of the lung
    height = planned.size * size * rng.uniform(0.9, 1.1)
    lateralness = np.clip((x - medial_x) / (lateral_x - medial_x), 0.0, 1.0)
    # Meniscus: low medially, climbing the lateral chest wall.
    surface = cp_y - height * (0.6 + 1.4 * lateralness**1.5 + 1.5 * lateralness**8)
    fade = 0.35 * height
    footprint = _smoothstep(surface - fade, surface + fade, y) * lung
    amount = planned.density * footprint * (0.65 + 0.35 * _smoothstep(surface, cp_y, y))
    # Fluid has the density of the soft tissue under the hemidiaphragm.
    below = (y > cp_y + 0.02 * size) & (y < cp_y + 0.08 * size) & (np.abs(x - (lateral_x + medial_x) / 2)
                                                                    < 0.3 * abs(lateral_x - medial_x))
    level = float(np.median(image[below])) if below.any() else float(np.percentile(image, 90))
    return _towards_level(image, level, amount, 0.01 * size), footprint


def _draw_cardiomegaly(image, anatomy, planned, spec, rng):
    """Enlarged cardiac silhouette: the heart ellipse widened (mostly towards the patient's
    left, image right) and a little taller; the lung it now covers takes the heart's density
    (measured beside the spine), with the fine texture of what lies behind kept."""
    size = image.shape[0]
    cx, cy, rx, ry = (c * size for c in anatomy.heart)
    x, y = _pixel_grid(size)
    heart_level = _heart_level(image, anatomy)
    factor = planned.size
    new_rx, new_ry = rx * factor, ry * (1.0 + 0.3 * (factor - 1.0))
    new_cx = cx + (new_rx - rx) * rng.uniform(0.3, 0.5)
    new_cy = cy + (new_ry - ry) * 0.3
    silhouette = _ellipse_mask(size, new_cx, new_cy, new_rx, new_ry, edge=0.02 * size)
    # The silhouette is visible down to the hemidiaphragms (the lungs' lowest points).
    diaphragm = max(anatomy.lung("right")[:, 1].max(), anatomy.lung("left")[:, 1].max()) * size
    footprint = silhouette * (y <= diaphragm)
    return _towards_level(image, heart_level, planned.density * silhouette, 0.01 * size, detail=0.3), footprint


def _draw_pneumothorax(image, anatomy, planned, spec, rng):
    """Apical pneumothorax: the lung collapsed towards its hilum leaves a rim of air without
    lung markings at the apex and upper lateral wall, bounded by a thin visceral pleural line."""
    size = image.shape[0]
    poly, hilum = anatomy.lung(spec.side), anatomy.hilum(spec.side)
    collapsed = hilum + planned.size * (poly - hilum)
    lung = _polygon_mask(poly, size)
    inner = _polygon_mask(collapsed, size)
    x, y = _pixel_grid(size)
    upper = _smoothstep(hilum[1] * size + 0.06 * size, hilum[1] * size - 0.06 * size, y)
    region = np.clip(lung - inner, 0.0, 1.0) * upper
    air = _blur(image, 0.012 * size) * 0.45  # hyperlucent, vessels smoothed away
    image = image * (1 - planned.density * region) + air * planned.density * region
    # The visceral pleural line: the collapsed outline's arc lateral to and above the hilum
    # (the polygon rolled to start outside that arc, so the arc is one run of vertices).
    lateral = collapsed[:, 0] < hilum[0] - 0.02 if spec.side == "right" else collapsed[:, 0] > hilum[0] + 0.02
    on_arc = lateral & (collapsed[:, 1] < hilum[1])
    start = int(np.flatnonzero(~on_arc)[0])
    arc = np.roll(collapsed, -start, axis=0)[np.roll(on_arc, -start)]
    line = _polyline_mask(arc, size, width=max(1.0, 0.006 * size)) * upper * lung
    image = _screen(image, 0.45 * line)
    return image, np.maximum(region, line)


_OPACITY_SIZES = {"patchy": (0.10, 0.13), "dense": (0.10, 0.13)}

#: The catalogue. Sides are the PATIENT's (right = image left). Column order of every label table.
FINDINGS: tuple[FindingSpec, ...] = (
    FindingSpec("right upper zone opacity", "right upper zone opacity", "opacity", "right", "upper",
                "upper third of the right lung (image left, top)", _draw_opacity, _OPACITY_SIZES,
                (0.7, 0.9), ("opacity", "consolidation", "opacification")),
    FindingSpec("right lower zone opacity", "right lower zone opacity", "opacity", "right", "lower",
                "lower third of the right lung (image left, bottom)", _draw_opacity, _OPACITY_SIZES,
                (0.7, 0.9), ("opacity", "consolidation", "opacification")),
    FindingSpec("left lower zone opacity", "left lower zone opacity", "opacity", "left", "lower",
                "lower third of the left lung (image right, bottom), lateral to the heart", _draw_opacity,
                _OPACITY_SIZES, (0.7, 0.9), ("opacity", "consolidation", "opacification")),
    FindingSpec("left upper zone mass", "left upper zone mass", "mass", "left", "upper",
                "upper third of the left lung (image right, top)", _draw_mass, {None: (0.12, 0.16)},
                (0.9, 1.0), ("mass",)),
    FindingSpec("right pleural effusion", "right pleural effusion", "effusion", "right", None,
                "right costophrenic angle and lung base (image left, bottom)", _draw_effusion,
                {"small": (0.065, 0.085), "moderate": (0.10, 0.13)}, (0.9, 1.0), ("effusion",)),
    FindingSpec("left pleural effusion", "left pleural effusion", "effusion", "left", None,
                "left costophrenic angle and lung base (image right, bottom)", _draw_effusion,
                {"small": (0.065, 0.085), "moderate": (0.10, 0.13)}, (0.9, 1.0), ("effusion",)),
    FindingSpec("cardiomegaly", "cardiomegaly", "cardiomegaly", None, None,
                "cardiac silhouette, widened mostly towards the image right", _draw_cardiomegaly,
                {"mild": (1.18, 1.26), "moderate": (1.30, 1.42)}, (0.9, 1.0),
                ("cardiomegaly", "enlarged")),
    FindingSpec("right pneumothorax", "right pneumothorax", "pneumothorax", "right", None,
                "right apex and upper lateral chest wall (image left, top)", _draw_pneumothorax,
                {"small": (0.79, 0.84), "large": (0.68, 0.75)}, (0.85, 1.0), ("pneumothorax",)),
)
FINDING_NAMES: tuple[str, ...] = tuple(spec.name for spec in FINDINGS)
FINDINGS_BY_NAME: dict[str, FindingSpec] = {spec.name: spec for spec in FINDINGS}

#: Pairs never drawn together: their drawings would overlap, making boxes ambiguous.
INCOMPATIBLE: frozenset[frozenset[str]] = frozenset(
    frozenset(pair)
    for pair in (
        ("right upper zone opacity", "right pneumothorax"),
        ("right lower zone opacity", "right pleural effusion"),
        ("left lower zone opacity", "left pleural effusion"),
        ("left lower zone opacity", "cardiomegaly"),
    )
)


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportSentence:
    """One sentence of a caption and which findings it states present or absent."""

    text: str
    affirms: frozenset[str] = frozenset()
    denies: frozenset[str] = frozenset()


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def positive_options(planned: PlannedFinding) -> list[str]:
    """The ways a report may state this finding (one is picked per sample)."""
    spec = FINDINGS_BY_NAME[planned.name]
    side, zone, sev = spec.side, spec.zone, planned.severity
    if spec.kind == "opacity":
        options = [
            f"{_cap(sev)} opacity in the {side} {zone} zone.",
            f"{_cap(side)} {zone} zone opacity.",
            f"{_cap(sev)} airspace opacity in the {side} {zone} zone, likely consolidation.",
            f"There is {sev} consolidation in the {side} {zone} zone.",
            f"Ill-defined opacification of the {side} {zone} zone.",
        ]
    elif spec.kind == "mass":
        cm = round(planned.size * FIELD_OF_VIEW_CM * 2) / 2
        options = [
            f"{_cap(side)} {zone} zone mass.",
            f"Well-circumscribed {cm:g} cm mass in the {side} {zone} zone.",
            f"Rounded {cm:g} cm mass projecting over the {side} {zone} zone.",
            f"There is a rounded mass in the {side} {zone} zone.",
        ]
    elif spec.kind == "effusion":
        options = [
            f"{_cap(sev)} {side} pleural effusion.",
            f"There is a {sev} {side} pleural effusion.",
            f"{_cap(side)} pleural effusion.",
        ]
        if sev == "small":
            options.append(f"Small {side} pleural effusion blunting the costophrenic angle.")
        else:
            options.append(f"{_cap(sev)} {side} pleural effusion with a meniscus.")
    elif spec.kind == "cardiomegaly":
        options = [
            "Cardiomegaly.",
            f"{_cap(sev)} cardiomegaly.",
            "The heart is enlarged.",
            "Enlarged cardiac silhouette.",
            f"The cardiac silhouette is {'mildly' if sev == 'mild' else 'moderately'} enlarged.",
        ]
    elif spec.kind == "pneumothorax":
        options = [
            f"{_cap(sev)} {side} pneumothorax.",
            f"{_cap(side)} pneumothorax.",
            f"There is a {sev} {side} apical pneumothorax.",
            f"{_cap(side)} apical pneumothorax, visceral pleural line visible.",
        ]
    else:  # pragma: no cover - the catalogue only has the kinds above
        raise ValueError(spec.kind)
    return options


def _names(kind: str, side: str | None = None) -> frozenset[str]:
    return frozenset(s.name for s in FINDINGS if s.kind == kind and (side is None or s.side == side))


def negative_options(present: frozenset[str]) -> list[list[ReportSentence]]:
    """Statements about absent findings, per report section (lungs, pleura, heart): a report
    makes at most one per section, and none denies a finding in ``present``."""
    opacities, masses = _names("opacity"), _names("mass")
    effusions, pneumothoraces = _names("effusion"), _names("pneumothorax")
    parenchymal = opacities | masses
    lungs: list[ReportSentence] = []
    if not present & parenchymal:
        lungs += [
            ReportSentence("The lungs are clear.", denies=parenchymal),
            ReportSentence("Lungs are clear.", denies=parenchymal),
            ReportSentence("No focal consolidation.", denies=opacities),
            ReportSentence("No focal airspace opacity.", denies=opacities),
        ]
    else:
        for side in ("right", "left"):
            on_side = _names("opacity", side) | _names("mass", side)
            if not present & on_side:
                lungs.append(ReportSentence(f"The {side} lung is clear.", denies=on_side))
        if not present & masses:
            lungs.append(ReportSentence("No discrete pulmonary mass.", denies=masses))
        if not present & opacities:
            lungs.append(ReportSentence("No focal consolidation.", denies=opacities))

    pleura: list[ReportSentence] = []
    absent_effusions = effusions - present
    if absent_effusions == effusions and not present & pneumothoraces:
        pleura += [
            ReportSentence("No pleural effusion or pneumothorax.", denies=effusions | pneumothoraces),
            ReportSentence("No pneumothorax or pleural effusion.", denies=effusions | pneumothoraces),
            ReportSentence("No pleural effusion. No pneumothorax.", denies=effusions | pneumothoraces),
        ]
    else:
        if absent_effusions == effusions:
            pleura += [ReportSentence("No pleural effusion.", denies=effusions),
                       ReportSentence("The costophrenic angles are sharp.", denies=effusions)]
        else:
            for name in sorted(absent_effusions):
                side = FINDINGS_BY_NAME[name].side
                pleura += [ReportSentence(f"No {side} pleural effusion.", denies=frozenset({name})),
                           ReportSentence(f"The {side} costophrenic angle is sharp.", denies=frozenset({name}))]
        if not present & pneumothoraces:
            pleura.append(ReportSentence("No pneumothorax.", denies=pneumothoraces))

    heart: list[ReportSentence] = []
    if "cardiomegaly" not in present:
        heart += [
            ReportSentence("Heart size is normal.", denies=frozenset({"cardiomegaly"})),
            ReportSentence("Normal heart size.", denies=frozenset({"cardiomegaly"})),
            ReportSentence("The cardiomediastinal silhouette is normal.", denies=frozenset({"cardiomegaly"})),
            ReportSentence("The cardiac silhouette is normal in size.", denies=frozenset({"cardiomegaly"})),
        ]
    return [lungs, pleura, heart]


_SECTION_OF_KIND = {"opacity": 0, "mass": 0, "effusion": 1, "pneumothorax": 1, "cardiomegaly": 2}
NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic abnormality.",
    "Normal chest radiograph.",
)


def report_sentences(rng: np.random.Generator, findings: Sequence[PlannedFinding],
                     negation_prob: float = 0.7) -> list[ReportSentence]:
    """A report for these findings: every present finding in one positive sentence (wording and
    severity word vary), absent findings sometimes negated, sections in the usual order (lungs,
    pleura, heart) or sometimes reordered. A normal study may end in "No acute cardiopulmonary
    process." (always, when nothing else was said)."""
    present = frozenset(f.name for f in findings)
    sections: list[list[ReportSentence]] = [[], [], []]
    for planned in findings:
        text = _pick(rng, positive_options(planned))
        section = _SECTION_OF_KIND[FINDINGS_BY_NAME[planned.name].kind]
        sections[section].append(ReportSentence(text, affirms=frozenset({planned.name})))
    for section, options in zip(sections, negative_options(present)):
        if options and rng.random() < negation_prob:
            section.append(_pick(rng, options))
    order = [0, 1, 2]
    if rng.random() < 0.25:
        order = [2, 0, 1]  # heart first, as some radiologists dictate
    sentences = [s for i in order for s in sections[i]]
    if rng.random() < 0.15:
        sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    if not present and (not sentences or rng.random() < 0.75):
        sentences.append(ReportSentence(_pick(rng, NORMAL_IMPRESSIONS), denies=frozenset(FINDING_NAMES)))
    return sentences


# --------------------------------------------------------------------------------------------
# Sampling and rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplePlan:
    """Everything random about one sample; :func:`render_sample` is deterministic given it."""

    findings: tuple[PlannedFinding, ...]
    transform: tuple[float, float, float, float]  # scale, rotation (degrees), shift x, shift y
    tone: tuple[float, float, float]  # gamma, contrast, brightness
    noise_std: float
    noise_seed: int
    caption: str


@dataclass
class PhantomSample:
    """One rendered sample. ``boxes[name]`` equals the box of the finding of that name."""

    image: np.ndarray  # (image_size, image_size) uint8, bright = dense
    caption: str
    findings: list[Finding]
    boxes: dict[str, Box] = field(default_factory=dict)

    def labels(self) -> dict[str, int]:
        """1/0 per catalogue finding."""
        return {name: int(name in self.boxes) for name in FINDING_NAMES}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: samples are independent of each other, so
    any one can be regenerated (or generated in parallel) on its own."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_IDS[split], int(index)]))


def sample_finding_names(rng: np.random.Generator, config: PhantomConfig) -> tuple[str, ...]:
    """0-2 compatible findings, in catalogue order. The first draws of :func:`plan_sample`, so a
    label table can be computed without rendering (:func:`split_labels`)."""
    count = int(rng.choice(3, p=np.asarray(config.finding_count_probs, dtype=np.float64)))
    weights = np.array([(config.finding_weights or {}).get(n, 1.0) for n in FINDING_NAMES], dtype=np.float64)
    chosen: list[str] = []
    for _ in range(count):
        allowed = np.array([n not in chosen and all(frozenset({n, c}) not in INCOMPATIBLE for c in chosen)
                            for n in FINDING_NAMES])
        w = weights * allowed
        if w.sum() <= 0:
            break
        chosen.append(FINDING_NAMES[int(rng.choice(len(FINDING_NAMES), p=w / w.sum()))])
    return tuple(n for n in FINDING_NAMES if n in chosen)


def plan_sample(rng: np.random.Generator, config: PhantomConfig) -> SamplePlan:
    """Draw everything random about one sample. Independent of the background, so labels and
    captions are the same with the real and the procedural chest."""
    names = sample_finding_names(rng, config)
    findings = []
    for name in names:
        spec = FINDINGS_BY_NAME[name]
        severities = list(spec.severities)
        severity = severities[int(rng.integers(len(severities)))]
        low, high = spec.severities[severity]
        findings.append(PlannedFinding(name, severity, float(rng.uniform(low, high)),
                                       float(rng.uniform(*spec.density)), int(rng.integers(2**31))))
    transform = (
        float(1.0 + rng.uniform(-config.max_scale, config.max_scale)),
        float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)),
        float(rng.uniform(-config.max_shift, config.max_shift)),
        float(rng.uniform(-config.max_shift, config.max_shift)),
    )
    tone = (float(np.exp(rng.uniform(-0.2, 0.2))), float(rng.uniform(0.9, 1.1)), float(rng.uniform(-0.05, 0.05)))
    noise_std = float(config.noise_std * rng.uniform(0.6, 1.4))
    noise_seed = int(rng.integers(2**31))
    caption = " ".join(s.text for s in report_sentences(rng, findings, config.negation_prob))
    return SamplePlan(tuple(findings), transform, tone, noise_std, noise_seed, caption)


def render_sample(plan: SamplePlan, config: PhantomConfig, background: Background) -> PhantomSample:
    """Pixels and boxes of a plan: jittered background, findings drawn at render resolution,
    tone jitter, box-averaged down to ``config.image_size``, noise, 8-bit."""
    k, size = config.render_scale, config.image_size
    if background.image.shape != (size * k, size * k):
        raise ValueError(f"background is {background.image.shape[0]} px; this config renders at {size * k} px "
                         "(use build_background(config))")
    scale, rotation, sx, sy = plan.transform
    matrix = _jitter_matrix(scale, rotation, (sx, sy))
    image = _warp(background.image, matrix)
    anatomy = background.anatomy.transformed(matrix)
    findings: list[Finding] = []
    for planned in plan.findings:
        spec = FINDINGS_BY_NAME[planned.name]
        image, footprint = spec.draw(image, anatomy, planned, spec, np.random.default_rng(planned.seed))
        box = _bbox(footprint >= 0.25)
        if box is None:  # pragma: no cover - every drawing has an extent
            raise RuntimeError(f"{planned.name}: nothing drawn")
        x0, y0, x1, y1 = box
        box = (x0 // k, y0 // k, min(size, -(-x1 // k)), min(size, -(-y1 // k)))
        findings.append(Finding(planned.name, spec.prompt, planned.severity, box))
    gamma, contrast, brightness = plan.tone
    image = (np.clip(image, 0.0, 1.0) ** gamma - 0.5) * contrast + 0.5 + brightness
    image = image.reshape(size, k, size, k).mean(axis=(1, 3))
    image = image + np.random.default_rng(plan.noise_seed).normal(0.0, plan.noise_std, image.shape)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return PhantomSample(pixels, plan.caption, findings, {f.name: f.box for f in findings})


def make_sample(rng: np.random.Generator, config: PhantomConfig, background_cache: Background) -> PhantomSample:
    """One sample; pure given ``rng`` (``background_cache`` comes from :func:`build_background`)."""
    return render_sample(plan_sample(rng, config), config, background_cache)


def split_labels(config: PhantomConfig, split: str) -> np.ndarray:
    """(num samples, len(FINDINGS)) 0/1 table of ``split`` without rendering anything."""
    count = {"train": config.num_train, "test": config.num_test}[split]
    table = np.zeros((count, len(FINDINGS)), dtype=np.uint8)
    for i in range(count):
        names = sample_finding_names(sample_rng(config.seed, split, i), config)
        table[i] = [n in names for n in FINDING_NAMES]
    return table


# --------------------------------------------------------------------------------------------
# Writing (the only side effects)
# --------------------------------------------------------------------------------------------
#
# Shards go through data_prep's writer (data_prep/shards.py), the one `tier-openclip prep` uses:
# a shard is written under a temporary name and renamed when complete, its record (plan digest,
# keys, size, SHA-256) lands in OUT/.prep-state/, tar headers are fixed (owner, mode, mtime 0),
# and a later run into the same folder verifies finished shards and keeps the good ones.

_COUNT_FIELDS = ("num_train", "num_test", "shard_size")  # decide which samples, not their bytes


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)  # uint8 H x W: mode "L"
    return buffer.getvalue()


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode("utf-8")


@dataclass(frozen=True)
class _ShardTask:
    """One sample to render, as data_prep's shard planner and writer take it."""

    key: str  # f"{split}-{index:06d}": the sample's __key__
    config: PhantomConfig
    split: str
    index: int


@dataclass(frozen=True)
class _Rendered:
    """A rendered sample, in the shape data_prep's ``write_shards`` expects of a render result."""

    key: str
    files: dict[str, bytes]  # "png", "txt" (caption), "json" (findings, boxes, labels)
    reason: str | None = None
    detail: str = ""
    notes: tuple[str, ...] = ()


def _render_task(task: _ShardTask) -> _Rendered:
    """Render and encode one sample (top level, so worker processes can run it)."""
    config, split, index = task.config, task.split, task.index
    background = build_background(config)
    sample = make_sample(sample_rng(config.seed, split, index), config, background)
    record = {
        "key": task.key,
        "split": split,
        "index": index,
        "seed": config.seed,
        "image_size": config.image_size,
        "background": background.source,
        "findings": [{"name": f.name, "prompt": f.prompt, "severity": f.severity, "box": list(f.box)}
                     for f in sample.findings],
        "boxes": {name: list(box) for name, box in sample.boxes.items()},
        "labels": sample.labels(),
    }
    files = {"png": _png_bytes(sample.image), "txt": sample.caption.encode("utf-8"), "json": _json_bytes(record)}
    return _Rendered(task.key, files)


def _render_inputs(config: PhantomConfig, background: str) -> str:
    """What a sample's bytes depend on besides its split and index: the config (less the counts),
    the background, this module's code and the encoders' versions. Part of every shard's plan
    digest, so a rerun keeps a finished shard only when it would render it the same."""
    import PIL

    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _COUNT_FIELDS}
    if settings["finding_weights"] is not None:
        settings["finding_weights"] = dict(sorted(settings["finding_weights"].items()))
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return json.dumps({"config": settings, "background": background, "code": code, "numpy": np.__version__,
                       "pillow": PIL.__version__}, sort_keys=True)


def _plan_digest(tasks: Sequence[_ShardTask], inputs: str) -> str:
    digest = hashlib.sha256(inputs.encode("utf-8"))
    for task in tasks:
        digest.update(task.key.encode("utf-8") + b"\0")
    return digest.hexdigest()


def write_phantom_dataset(out_dir: str | Path, config: PhantomConfig, progress: bool = True,
                          workers: int | None = 1) -> dict:
    """Generate the dataset of ``config`` under ``out_dir``:

    - ``train/train-{000000..}.tar`` and ``test/test-{000000..}.tar``: WebDataset shards of
      ``config.shard_size`` samples (``png`` 8-bit grayscale, ``txt`` caption, ``json`` with
      findings, boxes in pixels, labels, split, seed), plus ``sizes.json`` (shard -> count) in
      each split folder, which open_clip reads for the sample count; written by data_prep's
      shard writer, which keeps its records in ``.prep-state/``;
    - ``test_eval/``: the test split for zero-shot evaluation: ``images/*.png``, ``labels.csv``
      (``image`` relative to test_eval, then one 1/0 column per finding), ``boxes.csv`` (image,
      finding, x0, y0, x1, y1, prompt) for the pointing game, and ``meta.json`` (labels,
      prompts, counts, box convention, orientation) in the layout of ``tier-openclip prep``'s
      evaluation sets, so ``tier-openclip eval zeroshot`` reads it as is.

    Same config -> byte-identical files, whatever ``workers`` (tar mtimes are 0, owners fixed;
    every sample has its own generator). ``workers`` > 1 renders in that many spawned processes
    (None: one per CPU, at most 4). A run into a folder that holds an earlier run keeps the
    finished shards that verify against this config (same samples, same code) and rewrites the
    rest; shards and evaluation images the config no longer plans are removed.

    Returns ``{"train_shards", "test_shards"`` (brace patterns for open_clip's ``--train-data``),
    ``"num_train", "num_test", "eval_dir", "labels", "prompts", "counts"`` (positives and
    negatives per finding in the test split), ``"background", "image_size", "seed", "out_dir"}``.
    """
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    out = Path(out_dir)
    source = build_background(config).source  # fails early when the CR study is required but absent
    summary: dict = {"out_dir": str(out), "image_size": config.image_size, "seed": config.seed,
                     "background": source, "labels": list(FINDING_NAMES),
                     "prompts": {s.name: s.prompt for s in FINDINGS}}
    counts = {"train": config.num_train, "test": config.num_test}
    digest = functools.partial(_plan_digest, inputs=_render_inputs(config, source))
    plans = {
        split: shards.plan_shards(
            split, [_ShardTask(f"{split}-{i:06d}", config, split, i) for i in range(count)], config.shard_size, digest
        )
        for split, count in counts.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    with shards.run_lock(out / shards.STATE_DIR):
        records = shards.write_shards(
            out,
            plans["train"] + plans["test"],
            _render_task,
            workers=workers if workers > 1 else 0,  # data_prep: 0 renders in this process
            progress=progress,
            log=print if progress else _quiet,
            # spawn, not fork: the caller may hold torch/OpenMP threads, which a fork can deadlock.
            context=multiprocessing.get_context("spawn"),
        )
        _check_complete(out, plans, records)
        for split, split_plans in plans.items():
            shards.write_sizes(out / split, split_plans, records)
            summary[f"{split}_shards"] = str(out / shards.shard_urls(split, len(split_plans)))
            summary[f"num_{split}"] = counts[split]
        eval_dir, label_counts = _write_eval_set(out, plans["test"], records, config, summary)
    summary.update(eval_dir=str(eval_dir), counts=label_counts)
    return summary


def _quiet(message: str) -> None:
    pass


def _check_complete(out: Path, plans: Mapping[str, Sequence[shards.ShardPlan]],
                    records: Mapping[str, shards.ShardRecord]) -> None:
    """Every planned sample must be in its shard: data_prep's writer records a sample whose
    worker died or hung as a failure and goes on, which a dataset defined by its indices cannot.
    The shards with failures are removed, so that the next run renders them again."""
    failures = []
    for plan in (plan for split_plans in plans.values() for plan in split_plans):
        record = records[plan.name]
        if record.failures:
            failures += record.failures
            (out / plan.split / plan.name).unlink(missing_ok=True)
            (out / shards.STATE_DIR / f"{Path(plan.name).stem}.json").unlink(missing_ok=True)
    if failures:
        key, reason, detail = failures[0]
        raise RuntimeError(f"{len(failures)} phantom sample(s) not rendered, e.g. {key}: {reason} ({detail})")


def _test_samples(split_dir: Path, plans: Sequence[shards.ShardPlan],
                  records: Mapping[str, shards.ShardRecord]) -> Iterator[tuple[str, bytes, dict]]:
    """(key, png bytes, json record) of every sample in the written shards, in order."""
    for plan in plans:
        with tarfile.open(split_dir / plan.name, "r:") as tar:
            members = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
        for key in records[plan.name].keys:
            yield key, members[f"{key}.png"], json.loads(members[f"{key}.json"])


def _write_eval_set(out: Path, plans: Sequence[shards.ShardPlan], records: Mapping[str, shards.ShardRecord],
                    config: PhantomConfig, summary: Mapping) -> tuple[Path, dict]:
    """``test_eval/`` from the test shards as written. Read back rather than kept from rendering:
    data_prep's writer consumes the render results itself, a rerun keeps finished shards without
    rendering them, and the boxes exist only once a sample is rendered. Reading the shards (small
    PNGs) makes the folder a copy of exactly what the test shards hold, on every run."""
    eval_dir = out / "test_eval"
    (eval_dir / "images").mkdir(parents=True, exist_ok=True)
    _clear_previous(eval_dir / "images", "test-*.png")
    label_rows: list[list] = []
    box_rows: list[list] = []
    for key, png, record in _test_samples(out / "test", plans, records):
        image = f"images/{key}.png"
        (eval_dir / image).write_bytes(png)
        label_rows.append([image, *(record["labels"][name] for name in FINDING_NAMES)])
        box_rows += [[image, f["name"], *f["box"], f["prompt"]] for f in record["findings"]]

    labels = np.array([row[1:] for row in label_rows], dtype=np.int64)
    counts = {name: {"positive": int(labels[:, j].sum()), "negative": int(len(labels) - labels[:, j].sum()),
                     "unknown": 0} for j, name in enumerate(FINDING_NAMES)}
    _write_csv(eval_dir / "labels.csv", ["image", *FINDING_NAMES], label_rows)
    _write_csv(eval_dir / "boxes.csv", ["image", "finding", "x0", "y0", "x1", "y1", "prompt"], box_rows)
    meta = {  # the layout of `tier-openclip prep`'s evaluation sets, plus prompts and geometry
        "format": "tier-openclip-eval/1",
        "dataset": "phantom",
        "labels": list(FINDING_NAMES),
        "competition_labels": [],
        "prompts": summary["prompts"],
        "counts": counts,
        "images": len(label_rows),
        "image_size": config.image_size,
        "patient_side_convention": "PA view: the patient's right is on the image left (small x)",
        "box_format": "x0, y0, x1, y1 in pixels, half-open (image[y0:y1, x0:x1])",
        "regions": {s.name: s.region for s in FINDINGS},
        "background": summary["background"],
        "seed": config.seed,
    }
    (eval_dir / "meta.json").write_bytes(_json_bytes(meta))
    return eval_dir, counts


def _clear_previous(directory: Path, pattern: str) -> None:
    for stale in directory.glob(pattern):
        stale.unlink()


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")

"""Chest anatomy and backgrounds of the phantom.

Orientation (radiological convention): the patient faces the viewer, so the patient's RIGHT is
on the image LEFT (small x) and the patient's LEFT (heart apex, gastric bubble) on the image
RIGHT (large x). Every ``side`` in this package is the patient's. Anatomy is described in
normalised image coordinates (x to the right, y down, both in [0, 1]).

Backgrounds. Every install draws the phantom on the same **procedural chest** (numpy and PIL
only, both core dependencies), so ``pip install tier-openclip`` and ``pip install
'tier-openclip[test]'`` give byte-identical data (tests/test_phantom.py checks it with pydicom
hidden). Until 2026-12 the default was the computed-radiography study ``RG1_UNCI.dcm`` whenever
the optional ``pydicom-data`` was installed, so the demo's data depended on the install (issue
20). The alternatives were weighed:

- pydicom-data as a core dependency: a 34 MB wheel (58 MB installed, 80 files) for one 7 MB
  image, and the study would still be decoded by pydicom's pixel pipeline;
- shipping a small derived image (the windowed, mass-removed background): pydicom-data's
  metadata gives the package's MIT licence but no provenance for this file (pydicom's test-file
  notes trace the RG1_* studies to DICOM WG04's compression samples and only "believe there is
  no restriction"), too thin a basis for redistributing a derivative;
- the procedural chest: no licence question, no download, and a pure function of a fixed seed.

The CR study remains an opt-in (``PhantomConfig(use_real_anatomy=True)``; an error when
pydicom-data is absent). It is decoded by data_prep's DICOM display pipeline (modality LUT, VOI
window, MONOCHROME1 inversion: the same function ``tier-openclip prep`` uses), then windowed for
display. It shows several round pulmonary masses; they are removed (low-frequency inpainting) so
that the background reads as a normal chest and every finding in a caption is one this package
drew.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from . import raster

Point = tuple[float, float]

#: Resolution of the cached background before it is resized to a render size.
BASE_SIZE = 512
#: Display gamma applied to the windowed CR image so lungs read dark as on a typical PA film.
_DISPLAY_GAMMA = 2.2


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
        return raster.polygon_mask(self.lung(side), size)

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

#: The idealised chest every install draws on (the default background).
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

    from ..data_prep.images import display_values

    ds = pydicom.dcmread(path)
    # data_prep's display step (modality LUT, VOI window, MONOCHROME1 inverted to white bone),
    # kept in floats: the 8-bit rounding of dicom_to_uint8 would band the display gamma below.
    pixels = display_values(ds.pixel_array, ds, notes=[]).astype(np.float32)
    rows, cols = pixels.shape
    side = min(rows, cols)
    x0 = (cols - side) // 2
    pixels = pixels[:side, x0 : x0 + side]  # top square: apices to below the hemidiaphragms
    lo, hi = np.percentile(pixels, [1.0, 99.5])
    pixels = np.clip((pixels - lo) / (hi - lo), 0.0, 1.0) ** _DISPLAY_GAMMA
    return _remove_masses(raster.resize(pixels, BASE_SIZE), _REAL_MASSES)


def _remove_masses(image: np.ndarray, masses: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """Subtract each round mass's low-frequency excess over its surroundings.

    Inside a soft disc the image keeps its fine texture (ribs, vessels) but loses the mass's
    brightness, estimated as blur(image) minus a normalised-convolution fill of blur(image)
    from outside the disc.
    """
    size = image.shape[0]
    x, y = raster.pixel_grid(size)
    out = image.astype(np.float32, copy=True)
    for cx, cy, r in masses:
        cx, cy, r = cx * size, cy * size, r * size
        d = np.hypot(x - cx, y - cy)
        soft = np.clip((1.3 * r - d) / (0.3 * r), 0.0, 1.0)
        outside = (d >= 1.4 * r).astype(np.float32)
        low = raster.blur(out, 0.08 * r)
        fill = raster.blur(low * outside, 0.7 * r) / np.maximum(raster.blur(outside, 0.7 * r), 1e-6)
        out -= soft * np.maximum(low - fill, 0.0)
    return np.clip(out, 0.0, 1.0)


@lru_cache(maxsize=1)
def _procedural_radiograph() -> np.ndarray:
    """A procedural PA chest (BASE_SIZE, [0, 1], bright = dense) matching PROCEDURAL_ANATOMY."""
    from PIL import Image, ImageDraw

    n = BASE_SIZE
    rng = np.random.default_rng(_PROCEDURAL_SEED)
    anatomy = PROCEDURAL_ANATOMY
    x, y = raster.pixel_grid(n)
    u, v = x / n, y / n

    # Air around the patient; a boxy torso (shoulders) and the neck; denser towards the abdomen
    # and along the lateral chest wall, where the X-ray crosses more soft tissue.
    torso = (np.abs(u - 0.5) / 0.48) ** 4 + (np.abs(v - 0.64) / 0.58) ** 4
    body = np.clip((1.0 - torso) * 12, 0.0, 1.0)
    body = np.maximum(body, raster.ellipse_mask(n, 0.5 * n, 0.05 * n, 0.11 * n, 0.12 * n, edge=6))
    tissue = 0.52 + 0.22 * raster.smoothstep(0.72, 0.86, v) + 0.12 * raster.smoothstep(0.36, 0.48, np.abs(u - 0.5))
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
        lungs = np.maximum(lungs, raster.polygon_mask(anatomy.lung(side), n, supersample=2))
    lungs = raster.blur(lungs, 2.0)
    mottle = raster.blur(rng.standard_normal((n, n)).astype(np.float32), 3.0) * 0.15
    lung_density = 0.2 + 0.07 * raster.smoothstep(0.3, 0.8, v) + raster.blur(np.asarray(vessels), 1.5) + mottle
    image = image * (1 - lungs) + lung_density * lungs

    # Mediastinum with the aortic knob, heart, spine: the densest soft tissue on the film.
    half_width = 0.06 + 0.02 * v
    mediastinum = np.clip(0.5 - (np.abs(u - 0.5) - half_width) * n / 4, 0, 1) * raster.smoothstep(0.0, 0.08, v)
    image = np.maximum(image, 0.74 * mediastinum)
    image = np.maximum(image, 0.72 * raster.ellipse_mask(n, 0.545 * n, 0.28 * n, 0.04 * n, 0.035 * n, edge=5))
    hx, hy, hrx, hry = anatomy.heart
    heart = raster.ellipse_mask(n, hx * n, hy * n, hrx * n, hry * n, edge=4)
    image = np.maximum(image, (0.70 + 0.04 * raster.smoothstep(hy - hry, hy + hry, v)) * heart)
    spine = np.clip(0.5 - (np.abs(u - 0.5) - 0.035) * n / 3, 0, 1)
    endplates = 0.02 * raster.smoothstep(0.7, 1.0, np.cos(2 * np.pi * v / 0.045))
    image = image + spine * (0.06 - endplates)

    # Gastric bubble under the left hemidiaphragm (image right).
    image = image - 0.3 * raster.ellipse_mask(n, 0.70 * n, 0.86 * n, 0.05 * n, 0.03 * n, edge=4) * body

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
    bones = raster.blur(np.asarray(bones), 1.5)
    image = image + (0.07 + 0.05 * lungs) * bones * body
    image = image + 0.012 * raster.blur(rng.standard_normal((n, n)).astype(np.float32), 1.0)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Background:
    """A chest image at render resolution (read-only floats in [0, 1], bright = dense) and its
    anatomy; ``source`` says which background it is."""

    image: np.ndarray
    anatomy: Anatomy
    source: str  # "RG1_UNCI.dcm" or "procedural"


class RenderSize(Protocol):
    """What :func:`build_background` needs of a config (PhantomConfig has it)."""

    image_size: int
    render_scale: int

    def real_anatomy(self) -> bool: ...


def build_background(config: RenderSize) -> Background:
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
    image = raster.resize(image, size)
    image.flags.writeable = False
    return Background(image, anatomy, source)


# --------------------------------------------------------------------------------------------
# Findings: planning (what) and drawing (where, how)

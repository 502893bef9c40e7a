"""The phantom's findings: categories, where each may sit, and how each is drawn.

Categories (``FINDINGS``, the column order of every label table) are location-free, like the
labels of CheXpert or MS-CXR; where a finding sits is part of its :class:`Site` and is said by
the caption ("right lower zone opacity", "small left pleural effusion"):

==================  ==============================================================================
opacity             faint ill-defined consolidation (radius 7.5-9.5% of the image) at a random
                    place in one lung zone (either lung, upper/middle/lower third)
bulla               round 5-6 cm air space without lung markings, hairline wall, at a random
                    place in one lung zone, cut by the pleura where it reaches it
pleural effusion    meniscus at either costophrenic angle, fading that hemidiaphragm's outline
cardiomegaly        cardiac silhouette widened 6-18%, mostly towards the image right
pneumothorax        apical rim of air without lung markings at either apex, visceral pleural line
==================  ==============================================================================

In the grounding layout (``PhantomConfig.grounding``) opacity and bulla sit anywhere in either
lung (``GROUNDING_SITES``: zone None), or in its upper zone beside an enlarged heart
(:func:`grounding_placements`), and captions do not say where.

Sizes and densities were set on 2026-12-05 from CLIP pre-trainings on the grounding layout
(benchmarks/results/phantom-tuning-2026-12-05/): before, opacity, bulla and cardiomegaly sat at
zero-shot AUC >= 0.99 and the effusion was barely visible on the procedural chest. Once a lung
lesion could share an image with an enlarged heart, the effusion (smaller and fainter) and the
enlarged heart (narrower) were made subtler: at the earlier sizes their AUCs sat at 0.95-0.97
(benchmarks/results/phantom-layout-2026-12-05/; a fainter effusion alone did not move its AUC,
a smaller one did).

Random positions inside each region make the place of a finding something a model must find in
the image: pointing at the training boxes' most often covered patch, without looking, is the
image-free prior baseline (:func:`tier_openclip.phantom.prior_pointing_baseline`). At 64 px every
lesion spans at least one 8x8 patch (most span several); sizes are fractions of the image, so
they scale with the image size.

Drawing works at render resolution; a drawing's footprint (>= 0.25) is the finding's extent and
gives its mask at the stored size (``PhantomSample.masks``, the phantom's segmentation target) and
the mask's box.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import raster
from .anatomy import ZONES, Anatomy
from .raster import Box

SIDES = ("right", "left")  # the patient's
LUNG_LESIONS = ("opacity", "bulla")
#: Width of the image in centimetres, used for sizes in captions (a PA film is ~35 cm across; the
#: shipped CR study's crop is about that wide).
FIELD_OF_VIEW_CM = 35.0


class Site(NamedTuple):
    """Where a finding of category ``name`` sits: ``side`` (patient's; None for cardiomegaly) and
    lung ``zone`` (opacity and bulla only)."""

    name: str
    side: str | None = None
    zone: str | None = None


@dataclass(frozen=True)
class PlannedFinding:
    """A finding decided for one sample, before drawing.

    ``size`` is category-specific: opacity radius and bulla diameter (fractions of the image width),
    effusion height (fraction of the image height), cardiomegaly width factor, pneumothorax
    collapse factor (lung scaled towards its hilum). ``density`` in [0, 1]; ``seed`` drives the
    shape and the position inside the site; ``phrase`` is how the caption names it.
    """

    name: str
    side: str | None
    zone: str | None
    severity: str | None
    size: float
    density: float
    seed: int
    phrase: str

    @property
    def site(self) -> Site:
        return Site(self.name, self.side, self.zone)


@dataclass(frozen=True)
class Finding:
    """A finding as drawn in a sample: ``box`` = (x0, y0, x1, y1) half-open output pixels."""

    name: str
    phrase: str
    side: str | None
    zone: str | None
    severity: str | None
    box: Box


#: draw(image, anatomy, planned, rng) -> (image, footprint), all at render resolution.
DrawFn = Callable[[np.ndarray, Anatomy, PlannedFinding, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class FindingSpec:
    """One category. ``sites`` lists where it may be drawn; ``region`` says it in words;
    ``severities`` maps each severity word to the (low, high) range of ``PlannedFinding.size``;
    ``density`` is the (low, high) range of ``PlannedFinding.density``."""

    name: str
    region: str
    sites: tuple[Site, ...]
    draw: DrawFn
    severities: Mapping[str | None, tuple[float, float]]
    density: tuple[float, float]


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _place(rng: np.random.Generator, lung: np.ndarray, zone: tuple[float, float, float, float],
           radius: float, min_cover: float) -> tuple[float, float]:
    """A lesion centre (pixels), uniform over the places inside ``zone`` whose disc of ``radius``
    px lies mostly in the lung (``min_cover`` = mean lung mask over the centre and two rings of
    probe points): rejection sampling."""
    size = lung.shape[0]
    x0, y0, x1, y1 = (c * size for c in zone)
    angles = np.linspace(0.0, 2 * np.pi, 12, endpoint=False)
    ring = np.concatenate([[0.0], np.full(12, 0.5), np.full(12, 1.0)])
    dx = ring * np.cos(np.concatenate([[0.0], angles, angles + np.pi / 12])) * radius
    dy = ring * np.sin(np.concatenate([[0.0], angles, angles + np.pi / 12])) * radius
    for _ in range(200):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if raster.bilinear(lung, cx + dx - 0.5, cy + dy - 0.5).mean() >= min_cover:
            return float(cx), float(cy)
    # Fall back to the centroid of the lung inside the zone (always inside for sane anatomy).
    x, y = raster.pixel_grid(size)
    inside = (lung > 0.5) & (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    return float(x[inside].mean()), float(y[inside].mean())


#: A lung lesion's centre is uniform over the places whose disc lies at least this much inside the
#: lung (the rest is cut by the pleura): lesions reach the lung's edges, as real ones do, and the
#: image-free prior, which points at the most often covered patch, points lower (measured:
#: benchmarks/results/phantom-tuning-2026-12-05/).
LESION_MIN_COVER = 0.6


def _region(anatomy: Anatomy, planned: PlannedFinding) -> tuple[float, float, float, float]:
    """Where a lung lesion's centre is drawn from: its zone, or (zone None: the grounding layout)
    the whole lung of its side."""
    if planned.zone is None:
        return anatomy.lung_box(planned.side)
    return anatomy.zone_box(planned.side, planned.zone)


def _noise_field(rng: np.random.Generator, size: int, scales: Sequence[float],
                 weights: Sequence[float]) -> np.ndarray:
    """Smooth random field with unit standard deviation: blurred white noise at several scales (px)."""
    field = np.zeros((size, size), np.float32)
    for scale, weight in zip(scales, weights):
        layer = raster.blur(rng.standard_normal((size, size)).astype(np.float32), scale)
        field += weight * layer / (layer.std() + 1e-6)
    return field / (field.std() + 1e-6)


def _heart_level(image: np.ndarray, anatomy: Anatomy) -> float:
    """Brightness of the cardiac silhouette beside the spine: the film's soft-tissue density."""
    size = image.shape[0]
    cx, cy, rx, ry = (c * size for c in anatomy.heart)
    x, y = raster.pixel_grid(size)
    beside_spine = ((raster.ellipse_mask(size, cx, cy, rx, ry) > 0.5) & (x > cx + 0.3 * rx) & (x < cx + 0.6 * rx)
                    & (y > cy - 0.8 * ry) & (y < cy - 0.1 * ry))
    return float(np.median(image[beside_spine]))


def _draw_opacity(image, anatomy, planned, rng):
    """Ill-defined airspace opacity (consolidation): a ragged region where a smooth random field
    on a broad envelope crosses a soft threshold, so margins are irregular and fade out;
    confined to the lung. "patchy" is mottled, "dense" nearly uniform."""
    size = image.shape[0]
    lung = anatomy.lung_mask(planned.side, size)
    radius = planned.size * size
    cx, cy = _place(rng, lung, _region(anatomy, planned), 0.8 * radius, min_cover=LESION_MIN_COVER)
    x, y = raster.pixel_grid(size)
    ax, ay = radius * rng.uniform(0.9, 1.15, 2)
    envelope = np.exp(-0.5 * (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) / 0.55**2)
    field = envelope * (1.0 + 0.6 * _noise_field(rng, size, (radius / 3, radius / 7), (0.6, 0.4)))
    footprint = raster.smoothstep(0.1, 0.7, field) * lung
    texture = np.ones_like(field)
    if planned.severity == "patchy":
        mottle = _noise_field(rng, size, (0.012 * size,), (1.0,))
        texture = 0.45 + 0.55 * raster.smoothstep(-1.0, 1.0, mottle)
    level = _heart_level(image, anatomy) * rng.uniform(0.9, 1.0)  # about as dense as the heart
    return raster.towards_level(image, level, planned.density * footprint * texture, 0.01 * size), footprint


def _draw_bulla(image, anatomy, planned, rng):
    """Bulla: a round air space in the lung, darker than the aerated lung around it and without
    its vessel markings, bounded by a hairline wall. The lung's one finding of lower density
    than normal: a linear read of the pixels can tell it from an opacity wherever both sit."""
    size = image.shape[0]
    lung = anatomy.lung_mask(planned.side, size)
    radius = planned.size * size / 2
    cx, cy = _place(rng, lung, _region(anatomy, planned), radius, min_cover=LESION_MIN_COVER)
    x, y = raster.pixel_grid(size)
    r = np.hypot(x - cx, y - cy) / radius
    # An anti-aliased disc, cut by the pleura where it reaches it (a subpleural bulla).
    footprint = np.clip((1.0 - r) * radius / 0.8 + 0.5, 0.0, 1.0) * lung
    air = raster.blur(image, 0.015 * size) * 0.18  # hyperlucent, vessels smoothed away
    image = image * (1 - planned.density * footprint) + air * planned.density * footprint
    wall = np.clip(1.0 - np.abs(r - 1.0) * radius / max(1.0, 0.005 * size), 0.0, 1.0) * lung
    return raster.screen(image, 0.3 * wall), footprint


def _draw_effusion(image, anatomy, planned, rng):
    """Pleural effusion: dependent fluid filling the costophrenic angle upwards, with a meniscus
    (higher along the lateral chest wall), hazy upper margin and loss of the diaphragm outline."""
    size, side = image.shape[0], planned.side
    poly = anatomy.lung(side)
    # The hemithorax down to a little below the traced lung base, so fluid meets the diaphragm.
    lung = raster.polygon_mask(poly, size)
    drop = max(1, round(0.03 * size))
    lung[drop:] = np.maximum(lung[drop:], lung[:-drop])
    x, y = raster.pixel_grid(size)
    lateral_x = (poly[:, 0].min() if side == "right" else poly[:, 0].max()) * size
    base = poly[poly[:, 1] > poly[:, 1].max() - 0.12]  # the lung base: diaphragm dome and angle
    medial_x = (base[:, 0].max() if side == "right" else base[:, 0].min()) * size
    cp_y = poly[:, 1].max() * size  # costophrenic angle: lowest point of the lung
    height = planned.size * size * rng.uniform(0.9, 1.1)
    lateralness = np.clip((x - medial_x) / (lateral_x - medial_x), 0.0, 1.0)
    # Meniscus: low medially, climbing the lateral chest wall.
    surface = cp_y - height * (0.6 + 1.4 * lateralness**1.5 + 1.5 * lateralness**8)
    fade = 0.35 * height
    footprint = raster.smoothstep(surface - fade, surface + fade, y) * lung
    amount = planned.density * footprint * (0.65 + 0.35 * raster.smoothstep(surface, cp_y, y))
    # Fluid has the density of the soft tissue under the hemidiaphragm.
    below = (y > cp_y + 0.02 * size) & (y < cp_y + 0.08 * size) & (np.abs(x - (lateral_x + medial_x) / 2)
                                                                    < 0.3 * abs(lateral_x - medial_x))
    level = float(np.median(image[below])) if below.any() else float(np.percentile(image, 90))
    return raster.towards_level(image, level, amount, 0.01 * size), footprint


def _draw_cardiomegaly(image, anatomy, planned, rng):
    """Enlarged cardiac silhouette: the heart ellipse widened (mostly towards the patient's
    left, image right) and a little taller; the lung it now covers takes the heart's density
    (measured beside the spine), with the fine texture of what lies behind kept."""
    size = image.shape[0]
    cx, cy, rx, ry = (c * size for c in anatomy.heart)
    x, y = raster.pixel_grid(size)
    heart_level = _heart_level(image, anatomy)
    factor = planned.size
    new_rx, new_ry = rx * factor, ry * (1.0 + 0.3 * (factor - 1.0))
    new_cx = cx + (new_rx - rx) * rng.uniform(0.3, 0.5)
    new_cy = cy + (new_ry - ry) * 0.3
    silhouette = raster.ellipse_mask(size, new_cx, new_cy, new_rx, new_ry, edge=0.02 * size)
    # The silhouette is visible down to the hemidiaphragms (the lungs' lowest points).
    diaphragm = max(anatomy.lung("right")[:, 1].max(), anatomy.lung("left")[:, 1].max()) * size
    footprint = silhouette * (y <= diaphragm)
    return raster.towards_level(image, heart_level, planned.density * silhouette, 0.01 * size, detail=0.3), footprint


def _draw_pneumothorax(image, anatomy, planned, rng):
    """Apical pneumothorax: the lung collapsed towards its hilum leaves a rim of air without
    lung markings at the apex and upper lateral wall, bounded by a thin visceral pleural line."""
    size, side = image.shape[0], planned.side
    poly, hilum = anatomy.lung(side), anatomy.hilum(side)
    collapsed = hilum + planned.size * (poly - hilum)
    lung = raster.polygon_mask(poly, size)
    inner = raster.polygon_mask(collapsed, size)
    x, y = raster.pixel_grid(size)
    upper = raster.smoothstep(hilum[1] * size + 0.06 * size, hilum[1] * size - 0.06 * size, y)
    region = np.clip(lung - inner, 0.0, 1.0) * upper
    air = raster.blur(image, 0.012 * size) * 0.45  # hyperlucent, vessels smoothed away
    image = image * (1 - planned.density * region) + air * planned.density * region
    # The visceral pleural line: the collapsed outline's arc lateral to and above the hilum
    # (the polygon rolled to start outside that arc, so the arc is one run of vertices).
    lateral = collapsed[:, 0] < hilum[0] - 0.02 if side == "right" else collapsed[:, 0] > hilum[0] + 0.02
    on_arc = lateral & (collapsed[:, 1] < hilum[1])
    start = int(np.flatnonzero(~on_arc)[0])
    arc = np.roll(collapsed, -start, axis=0)[np.roll(on_arc, -start)]
    line = raster.polyline_mask(arc, size, width=max(1.0, 0.006 * size)) * upper * lung
    image = raster.screen(image, 0.45 * line)
    return image, np.maximum(region, line)


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------

_LUNG_SITES = lambda name: tuple(Site(name, side, zone) for side in SIDES for zone in ZONES)  # noqa: E731

FINDINGS: tuple[FindingSpec, ...] = (
    FindingSpec("opacity", "anywhere in either lung field, inside the lung zone the caption names",
                _LUNG_SITES("opacity"), _draw_opacity, {"patchy": (0.075, 0.095), "dense": (0.075, 0.095)},
                (0.7, 0.9)),
    FindingSpec("bulla", "anywhere in either lung field, inside the lung zone the caption names",
                _LUNG_SITES("bulla"), _draw_bulla, {None: (0.14, 0.17)}, (0.8, 1.0)),
    FindingSpec("pleural effusion", "either costophrenic angle and lung base (the side the caption names)",
                tuple(Site("pleural effusion", side) for side in SIDES), _draw_effusion,
                {"small": (0.06, 0.08), "moderate": (0.085, 0.11)}, (0.6, 0.8)),
    FindingSpec("cardiomegaly", "cardiac silhouette, widened mostly towards the image right",
                (Site("cardiomegaly"),), _draw_cardiomegaly, {"mild": (1.06, 1.11), "moderate": (1.12, 1.18)},
                (0.9, 1.0)),
    FindingSpec("pneumothorax", "either apex and upper lateral chest wall (the side the caption names)",
                tuple(Site("pneumothorax", side) for side in SIDES), _draw_pneumothorax,
                {"small": (0.79, 0.86), "large": (0.71, 0.78)}, (0.55, 0.75)),
)
FINDING_NAMES: tuple[str, ...] = tuple(spec.name for spec in FINDINGS)
FINDINGS_BY_NAME: dict[str, FindingSpec] = {spec.name: spec for spec in FINDINGS}
SITES: tuple[Site, ...] = tuple(site for spec in FINDINGS for site in spec.sites)
#: The sites of the grounding layout (``PhantomConfig.grounding``): a lung lesion anywhere in
#: either lung (zone None) or, only where that could meet another finding's box, in its lung's
#: upper zone (:func:`grounding_placements`); the other categories where they always are.
GROUNDING_SITES: dict[str, tuple[Site, ...]] = {
    spec.name: (tuple(Site(spec.name, side) for side in SIDES) + tuple(Site(spec.name, side, "upper") for side in SIDES)
                if spec.name in LUNG_LESIONS else spec.sites)
    for spec in FINDINGS
}


def sites_of(name: str, grounding: bool = False) -> tuple[Site, ...]:
    """Where a finding of category ``name`` may be drawn (in a zone, or with ``grounding``
    anywhere in a lung or, as a fallback, in its upper zone)."""
    return GROUNDING_SITES[name] if grounding else FINDINGS_BY_NAME[name].sites


def _zoned_lesions(sites: Sequence[Site]) -> int:
    return sum(site.name in LUNG_LESIONS and site.zone is not None for site in sites)


@functools.lru_cache(maxsize=None)
def grounding_placements(names: tuple[str, ...]) -> tuple[tuple[Site, ...], ...]:
    """Every way the categories ``names`` may share an image in the grounding layout: the
    pairwise compatible choices of their ``GROUNDING_SITES`` that keep the most lung lesions free
    to sit anywhere in their lung; () when they cannot share one.

    A lung lesion beside an enlarged heart (which covers the medial lower lung on both sides) sits
    in its lung's upper zone, out of the heart's box, instead of never sharing an image with it:
    when the two never met, "no lung lesion" predicted cardiomegaly and the zero-shot AUCs measured
    that co-occurrence as much as the findings
    (benchmarks/results/phantom-negation-2026-12-05/README.md, third section)."""
    options = [sites for sites in itertools.product(*(GROUNDING_SITES[name] for name in names))
               if all(compatible(a, b) for a, b in itertools.combinations(sites, 2))]
    fewest = min(map(_zoned_lesions, options), default=0)
    return tuple(sites for sites in options if _zoned_lesions(sites) == fewest)


def compatible(a: Site, b: Site) -> bool:
    """Whether two findings may share an image: one per category (labels are per category), and
    never two whose drawings could reach into each other's boxes, which would make the boxes
    ambiguous (checked for every pair by tests/test_phantom.py)."""
    if a.name == b.name:
        return False
    names = {a.name, b.name}
    if names == {"pleural effusion", "pneumothorax"}:  # the meniscus climbs to the rim's height
        return a.side != b.side
    if names == {"pleural effusion", "cardiomegaly"}:  # the enlarged heart's box spans both bases
        return False
    for lesion, other in ((a, b), (b, a)):
        if lesion.name not in LUNG_LESIONS:
            continue
        if lesion.zone is None or (other.name in LUNG_LESIONS and other.zone is None):
            # Anywhere in its lung (the grounding layout): only the other lung is safe, and never
            # beside an enlarged heart, which covers the medial lower lung on both sides (there
            # grounding_placements takes the upper-zone site instead).
            return other.name != "cardiomegaly" and lesion.side != other.side
        zone = ZONES.index(lesion.zone)
        if other.name in LUNG_LESIONS:  # a lesion may reach into the neighbouring zone
            return lesion.side != other.side or abs(zone - ZONES.index(other.zone)) >= 2
        if other.name == "pleural effusion":  # the meniscus climbs the lateral wall to mid-lung
            return lesion.side != other.side or lesion.zone == "upper"
        if other.name == "pneumothorax":  # its box spans the lung from the apex to the hilum
            return lesion.side != other.side
        if other.name == "cardiomegaly":  # the enlarged heart covers the medial lower two thirds
            return lesion.zone == "upper"
    return True

"""What to generate (:class:`PhantomConfig`), one sample's plan and its rendering, and the
image-free prior baseline of the pointing game.

Everything here is a pure function of a ``numpy.random.Generator`` and a config. Pipeline of one
sample: :func:`plan_sample` draws everything random (findings and their sites, severities, shape
seeds, jitter, caption) -> :func:`render_sample` turns a plan into pixels, masks and boxes. A plan with a
finding removed renders the same image without that finding, which is how the tests check that
each box holds its drawing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from . import anatomy, raster, reports
from .anatomy import Background
from .findings import (FINDING_NAMES, FINDINGS_BY_NAME, Finding, PlannedFinding, Site, compatible, grounding_placements,
                       sites_of)
from .raster import Box

_SPLIT_IDS = {"train": 0, "test": 1}
#: A drawing's footprint (in [0, 1], at render resolution) at or above this level is the finding's
#: extent: its mask and, through the mask, its box.
FOOTPRINT_LEVEL = 0.25
#: Relative frequency of each category: the lung lesions, whose place varies most, are the
#: commonest, so that the image-free prior baseline of the pointing game stays low (cardiomegaly
#: always sits where the heart is; an effusion or a pneumothorax at one of two places). Measured
#: on the small preset (train boxes -> test boxes): 0.32 at the 8x8 patch grid, 0.33 per pixel.
DEFAULT_FINDING_WEIGHTS: dict[str, float] = {
    "opacity": 4.0, "bulla": 4.0, "pleural effusion": 1.1, "cardiomegaly": 1.1, "pneumothorax": 1.1,
}
#: Categories whose place never varies (the enlarged heart is where the heart is: its image-free
#: prior points at 1.0), left out of every grounding summary (meta.json's "summary_excludes",
#: :func:`prior_pointing`'s ``exclude``); still scored and reported per finding.
SUMMARY_EXCLUDES: tuple[str, ...] = ("cardiomegaly",)
#: What ``PhantomConfig.preset(..., grounding=True)`` sets besides ``grounding``: one or two
#: different findings in every image (each phrase has a competitor lesion), lung lesions commonest
#: so that the image-free prior points low (measured: benchmarks/results/phantom-tuning-*/).
GROUNDING_DEFAULTS: dict[str, object] = {
    "finding_count_probs": (0.0, 0.4, 0.6),
    # Effusion and pneumothorax sit at one of two places (their prior points at ~0.4): rare enough
    # that the summary's prior stays low, common enough for ~35 test positives of each at 400
    # images; cardiomegaly, which may join a lung lesion, as rare (measured on the small preset:
    # prior 0.142 per pixel; test positives 289/254/33/36/38).
    "finding_weights": {"opacity": 4.0, "bulla": 4.0, "pleural effusion": 0.35, "cardiomegaly": 0.5,
                        "pneumothorax": 0.35},
    # Patient positioning varies more: every finding's place varies with it.
    "max_shift": 0.05, "max_scale": 0.05, "max_rotation_deg": 4.0,
    # Captions name the present findings only. With "No {term}." sentences for absent ones (at 0.6,
    # or even 0.15), the tiny text tower sat at the chance loss ln 32 for 3-8 of the pre-training's
    # epochs and a start's zero-shot AUCs swung by up to 0.5 with its seed; without them the loss
    # left chance within 2 epochs (benchmarks/results/phantom-negation-2026-12-05/).
    "negation_prob": 0.0,
}


@dataclass
class PhantomConfig:
    """What to generate. ``PhantomConfig.preset("small")`` is the CPU demo's dataset.

    Attributes:
        image_size: output images are ``image_size`` x ``image_size`` 8-bit grayscale.
        num_train, num_test: samples per split (each >= 1).
        seed: everything (findings, shapes, jitter, captions) follows from it.
        grounding: the grounding layout (use ``PhantomConfig.preset(name, grounding=True)``,
            which also sets ``GROUNDING_DEFAULTS``): captions and grounded phrases name each
            finding by its bare term, with no word that says where; opacity and bulla anywhere
            in either lung (side drawn uniformly, centre uniform over the places inside that
            lung; beside an enlarged heart, inside that lung's upper zone); only the image can
            tell a phrase's map where to point.
        use_real_anatomy: False (default) = the procedural chest, on every install; True = the
            pydicom-data CR study (an opt-in: error when pydicom-data is absent). See
            ``anatomy``'s docstring for why the default is the procedural one.
        finding_count_probs: probabilities of 0, 1 and 2 findings in an image.
        finding_weights: relative weight of each category when picking (default:
            ``DEFAULT_FINDING_WEIGHTS``; categories left out get 0).
        negation_prob: probability that a report negates an absent category ("No pneumothorax.").
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
    grounding: bool = False
    use_real_anatomy: bool = False
    finding_count_probs: tuple[float, float, float] = (0.2, 0.4, 0.4)
    finding_weights: Mapping[str, float] | None = None
    negation_prob: float = 0.6
    max_shift: float = 0.03
    max_scale: float = 0.04
    max_rotation_deg: float = 3.0
    noise_std: float = 0.012
    render_scale: int = 2
    shard_size: int = 500

    PRESETS: ClassVar[dict[str, dict]] = {
        # ~2400 images at 64 px: a few minutes of CPU training, >= 30 positives per category in test.
        "small": dict(image_size=64, num_train=2000, num_test=400, shard_size=500),
        # Same 64 px (TIER-tiny's input), four times the training images, 1000 test images.
        "medium": dict(image_size=64, num_train=8000, num_test=1000, shard_size=1000),
    }

    @classmethod
    def preset(cls, name: str, seed: int = 0, grounding: bool = False, **overrides) -> PhantomConfig:
        """The named size ("small" for the CPU demo, "medium"), with any field overridden;
        ``grounding=True``: the grounding layout (``GROUNDING_DEFAULTS`` below the overrides)."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown phantom preset {name!r}; choose from {sorted(cls.PRESETS)}")
        layout = {**GROUNDING_DEFAULTS, "grounding": True} if grounding else {}
        return cls(**{**cls.PRESETS[name], **layout, "seed": seed, **overrides})

    def __post_init__(self) -> None:
        if self.use_real_anatomy is None:
            raise ValueError("use_real_anatomy=None (the CR study when installed) is gone: the data must not depend "
                             "on an optional package; pass False (procedural, the default) or True")
        if self.image_size < 32:
            raise ValueError(f"image_size={self.image_size}: findings are not drawable below 32 px")
        if self.num_train < 1 or self.num_test < 1:
            raise ValueError("num_train and num_test must be >= 1")
        if len(self.finding_count_probs) != 3 or abs(sum(self.finding_count_probs) - 1) > 1e-6:
            raise ValueError("finding_count_probs: three probabilities (0, 1, 2 findings) summing to 1")
        unknown = set(self.finding_weights or ()) - set(FINDING_NAMES)
        if unknown:
            raise ValueError(f"finding_weights names unknown findings: {sorted(unknown)}; "
                             f"the categories are {', '.join(FINDING_NAMES)}")
        if not 0.0 <= self.negation_prob <= 1.0:
            raise ValueError("negation_prob must be in [0, 1]")
        if self.render_scale < 1 or self.shard_size < 1:
            raise ValueError("render_scale and shard_size must be >= 1")

    def weights(self) -> dict[str, float]:
        """Category -> relative weight (``finding_weights`` or the default)."""
        given = DEFAULT_FINDING_WEIGHTS if self.finding_weights is None else self.finding_weights
        return {name: float(given.get(name, 0.0)) for name in FINDING_NAMES}

    def real_anatomy(self) -> bool:
        """Whether samples use the pydicom-data CR study (only when asked for)."""
        return bool(self.use_real_anatomy)


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
    """One rendered sample. ``masks[name]`` is the pixel footprint of the finding of category
    ``name`` at the stored size ((image_size, image_size) bool: the output pixels with any render
    sub-pixel at footprint >= ``FOOTPRINT_LEVEL``); ``boxes[name]`` is that mask's bounding box."""

    image: np.ndarray  # (image_size, image_size) uint8, bright = dense
    caption: str
    findings: list[Finding]
    boxes: dict[str, Box] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def labels(self) -> dict[str, int]:
        """1/0 per category."""
        return {name: int(name in self.boxes) for name in FINDING_NAMES}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: samples are independent of each other, so
    any one can be regenerated (or generated in parallel) on its own."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_IDS[split], int(index)]))


def sample_sites(rng: np.random.Generator, config: PhantomConfig) -> tuple[Site, ...]:
    """0-2 compatible findings' sites, in category order. The first draws of :func:`plan_sample`,
    so a label table can be computed without rendering (:func:`split_labels`).

    The count, then per finding a category (by weight, among those that can join the ones
    chosen). Zoned layout: each category's site as it is chosen (uniformly among its sites
    compatible with the ones before). Grounding layout: the categories first, then one of their
    :func:`~tier_openclip.phantom.findings.grounding_placements` (uniformly), so a pair's
    frequency does not depend on which of the two was drawn first."""
    count = int(rng.choice(3, p=np.asarray(config.finding_count_probs, dtype=np.float64)))
    weights = config.weights()
    if config.grounding:
        names: list[str] = []
        for _ in range(count):
            joinable = [bool(grounding_placements(_in_order(names + [name]))) for name in FINDING_NAMES]
            name = _draw_category(rng, weights, joinable)
            if name is None:
                break
            names.append(name)
        placements = grounding_placements(_in_order(names))
        return placements[int(rng.integers(len(placements)))]
    chosen: list[Site] = []
    for _ in range(count):
        open_sites = {name: [s for s in sites_of(name) if all(compatible(s, c) for c in chosen)]
                      for name in FINDING_NAMES}
        name = _draw_category(rng, weights, [bool(open_sites[name]) for name in FINDING_NAMES])
        if name is None:
            break
        sites = open_sites[name]
        chosen.append(sites[int(rng.integers(len(sites)))])
    return tuple(sorted(chosen, key=lambda s: FINDING_NAMES.index(s.name)))


def _in_order(names: list[str]) -> tuple[str, ...]:
    return tuple(sorted(names, key=FINDING_NAMES.index))


def _draw_category(rng: np.random.Generator, weights: Mapping[str, float], allowed: list[bool]) -> str | None:
    """A category by weight among the allowed ones; None when none is."""
    w = np.array([weights[name] * ok for name, ok in zip(FINDING_NAMES, allowed)], dtype=np.float64)
    if w.sum() <= 0:
        return None
    return FINDING_NAMES[int(rng.choice(len(FINDING_NAMES), p=w / w.sum()))]


def sample_finding_names(rng: np.random.Generator, config: PhantomConfig) -> tuple[str, ...]:
    """The categories of :func:`sample_sites` (same draws)."""
    return tuple(site.name for site in sample_sites(rng, config))


def plan_sample(rng: np.random.Generator, config: PhantomConfig) -> SamplePlan:
    """Draw everything random about one sample. Independent of the background, so labels and
    captions are the same with the real and the procedural chest."""
    findings = []
    for site in sample_sites(rng, config):
        spec = FINDINGS_BY_NAME[site.name]
        severities = list(spec.severities)
        severity = severities[int(rng.integers(len(severities)))]
        low, high = spec.severities[severity]
        unnamed = PlannedFinding(site.name, site.side, site.zone, severity, float(rng.uniform(low, high)),
                                 float(rng.uniform(*spec.density)), int(rng.integers(2**31)), phrase="")
        findings.append(dataclasses.replace(unnamed, phrase=reports.pick_phrase(rng, unnamed, config.grounding)))
    transform = (
        float(1.0 + rng.uniform(-config.max_scale, config.max_scale)),
        float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)),
        float(rng.uniform(-config.max_shift, config.max_shift)),
        float(rng.uniform(-config.max_shift, config.max_shift)),
    )
    tone = (float(np.exp(rng.uniform(-0.2, 0.2))), float(rng.uniform(0.9, 1.1)), float(rng.uniform(-0.05, 0.05)))
    noise_std = float(config.noise_std * rng.uniform(0.6, 1.4))
    noise_seed = int(rng.integers(2**31))
    caption = " ".join(s.text for s in reports.report_sentences(rng, findings, config.negation_prob,
                                                                bare=config.grounding))
    return SamplePlan(tuple(findings), transform, tone, noise_std, noise_seed, caption)


def render_sample(plan: SamplePlan, config: PhantomConfig, background: Background) -> PhantomSample:
    """Pixels, masks and boxes of a plan: jittered background, findings drawn at render resolution,
    tone jitter, box-averaged down to ``config.image_size``, noise, 8-bit."""
    k, size = config.render_scale, config.image_size
    if background.image.shape != (size * k, size * k):
        raise ValueError(f"background is {background.image.shape[0]} px; this config renders at {size * k} px "
                         "(use build_background(config))")
    scale, rotation, sx, sy = plan.transform
    matrix = raster.jitter_matrix(scale, rotation, (sx, sy))
    image = raster.warp(background.image, matrix)
    chest = background.anatomy.transformed(matrix)
    findings: list[Finding] = []
    masks: dict[str, np.ndarray] = {}
    for planned in plan.findings:
        draw = FINDINGS_BY_NAME[planned.name].draw
        image, footprint = draw(image, chest, planned, np.random.default_rng(planned.seed))
        masks[planned.name] = raster.any_pool(footprint >= FOOTPRINT_LEVEL, k)
        box = raster.bbox(masks[planned.name])  # = the render-resolution box, scaled outwards
        if box is None:  # pragma: no cover - every drawing has an extent
            raise RuntimeError(f"{planned.name}: nothing drawn")
        findings.append(Finding(planned.name, planned.phrase, planned.side, planned.zone, planned.severity, box))
    gamma, contrast, brightness = plan.tone
    image = (np.clip(image, 0.0, 1.0) ** gamma - 0.5) * contrast + 0.5 + brightness
    image = image.reshape(size, k, size, k).mean(axis=(1, 3))
    image = image + np.random.default_rng(plan.noise_seed).normal(0.0, plan.noise_std, image.shape)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return PhantomSample(pixels, plan.caption, findings, {f.name: f.box for f in findings}, masks)


def make_sample(rng: np.random.Generator, config: PhantomConfig, background_cache: Background) -> PhantomSample:
    """One sample; pure given ``rng`` (``background_cache`` comes from :func:`build_background`)."""
    return render_sample(plan_sample(rng, config), config, background_cache)


def split_labels(config: PhantomConfig, split: str) -> np.ndarray:
    """(num samples, len(FINDINGS)) 0/1 table of ``split`` without rendering anything."""
    count = {"train": config.num_train, "test": config.num_test}[split]
    table = np.zeros((count, len(FINDING_NAMES)), dtype=np.uint8)
    for i in range(count):
        names = sample_finding_names(sample_rng(config.seed, split, i), config)
        table[i] = [n in names for n in FINDING_NAMES]
    return table


# --------------------------------------------------------------------------------------------
# The image-free prior baseline of the pointing game
# --------------------------------------------------------------------------------------------


def prior_pointing(train: Iterable[tuple[str, Box]], test: Iterable[tuple[str, Box]], image_size: int,
                   grid: int = 8, exclude: Iterable[str] = ()) -> dict:
    """Pointing game of a model that never looks at the image: for each category, point at the
    patch (of a ``grid`` x ``grid`` grid over the image: TIER-tiny's 8x8 over 64 px) whose centre
    the most ``train`` boxes of that category contain; a ``test`` box is hit when it contains
    that patch's centre (half-open boxes, as everywhere here). When patches tie, the share of
    them that the box contains (the expected hit of picking one at random), as
    tier_openclip.evaluation.grounding scores tied maxima. A category without training boxes has no prior:
    its test boxes count as misses. ``grid=image_size`` points at pixels instead of patches.

    Returns {"overall": hit rate over the test boxes of every category not in ``exclude``,
    "per_finding": {category: hit rate} (all categories), "boxes": number of test boxes in
    "overall", "grid": grid, "excluded": the categories left out of "overall"}; "overall" is None
    without such test boxes.
    """
    from ..evaluation.grounding.geometry import MapGeometry, patch_pointing, points_in_boxes  # here: generating needs none of it

    exclude = sorted(set(exclude))
    square = (image_size, image_size)
    centres = MapGeometry((grid, grid), square, square).patch_centres()  # the model sees the whole image
    coverage: dict[str, np.ndarray] = {}  # per category: how many train boxes hold each patch centre
    for name, box in train:
        coverage[name] = coverage.get(name, 0) + points_in_boxes(centres, [box]).astype(np.int64)
    hits: dict[str, list[float]] = {}
    for name, box in test:  # pointing at the most covered patch(es)
        hits.setdefault(name, []).append(patch_pointing(coverage[name], centres, [box]) if name in coverage else 0.0)
    every = [h for name, values in hits.items() if name not in exclude for h in values]
    return {
        "overall": float(np.mean(every)) if every else None,
        "per_finding": {name: float(np.mean(hits[name])) for name in sorted(hits, key=_category_order)},
        "boxes": len(every),
        "grid": grid,
        "excluded": exclude,
    }


def _category_order(name: str) -> tuple[int, str]:
    return (FINDING_NAMES.index(name) if name in FINDING_NAMES else len(FINDING_NAMES), name)


def split_boxes(config: PhantomConfig, split: str, count: int | None = None) -> list[tuple[str, Box]]:
    """(category, box) of every finding of the first ``count`` samples of ``split`` (default:
    all of them), rendered (a box is known once its finding is drawn)."""
    count = {"train": config.num_train, "test": config.num_test}[split] if count is None else count
    background = anatomy.build_background(config)
    return [(f.name, f.box) for i in range(count)
            for f in make_sample(sample_rng(config.seed, split, i), config, background).findings]


def prior_pointing_baseline(config: PhantomConfig, num_train: int | None = None, num_test: int | None = None,
                            grid: int = 8, exclude: Iterable[str] = ()) -> dict:
    """:func:`prior_pointing` of ``config``'s train boxes on its test boxes (optionally of the
    first ``num_train`` / ``num_test`` samples only), without writing anything. The grounding
    summary's figure is ``exclude=SUMMARY_EXCLUDES``."""
    return prior_pointing(split_boxes(config, "train", num_train), split_boxes(config, "test", num_test),
                          config.image_size, grid, exclude)

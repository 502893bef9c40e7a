"""Grounding metrics: pure functions of a map (NaN where the model saw nothing) and a region
mask, numpy in, numbers out, and the bootstrap of their means. Definitions in the package docstring."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tier_openclip.data_prep.eval_layout import Box, region_mask
from tier_openclip.evaluation.grounding.geometry import pointing_share

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
CNR_EPS = 1e-8
METRICS = ("cnr", "pointing_game", "miou")


def cnr(saliency: np.ndarray, region: np.ndarray, eps: float = CNR_EPS) -> float:
    """|μ_in − μ_out| / √(σ²_in + σ²_out + eps) over the map's non-NaN pixels; 0 if a side is empty."""
    valid = ~np.isnan(saliency)
    inside, outside = saliency[region & valid], saliency[~region & valid]
    if inside.size == 0 or outside.size == 0:
        return 0.0
    return float(abs(inside.mean() - outside.mean()) / math.sqrt(inside.var() + outside.var() + eps))


def pointing_game(saliency: np.ndarray, region: np.ndarray) -> float:
    """1 when the maximum is in the region; with ties, the share of the maximal pixels inside."""
    valid = ~np.isnan(saliency)
    return pointing_share(saliency[valid], region[valid])


def miou(saliency: np.ndarray, region: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> float:
    """Mean over thresholds t of IoU({normalised map ≥ t}, region), on the non-NaN pixels."""
    valid = ~np.isnan(saliency)
    if not valid.any():
        return 0.0
    low, high = np.nanmin(saliency), np.nanmax(saliency)
    if not high > low:  # a flat map predicts no region
        return 0.0
    normalised = (saliency - low) / (high - low)
    target = region & valid
    in_target = np.count_nonzero(target)
    ious = []
    for threshold in thresholds:
        predicted = normalised >= threshold  # False where NaN
        both = np.count_nonzero(predicted & target)
        union = np.count_nonzero(predicted) + in_target - both
        ious.append(both / union if union else 0.0)
    return float(np.mean(ious))


def grounding_metrics(saliency: np.ndarray, region: np.ndarray | Sequence[Box]) -> dict[str, float]:
    """CNR, pointing game and mIoU of one map; ``region`` is a bool mask or boxes (x0, y0, x1, y1)."""
    saliency = np.asarray(saliency, dtype=np.float64)
    if not isinstance(region, np.ndarray) or region.dtype != bool:
        region = region_mask(region, *saliency.shape)
    if region.shape != saliency.shape:
        raise ValueError(f"region {region.shape} and map {saliency.shape} differ in shape")
    return {"cnr": cnr(saliency, region), "pointing_game": pointing_game(saliency, region), "miou": miou(saliency, region)}


def bootstrap_means(values: np.ndarray, resamples: int, seed: int, confidence: float = 0.95) -> list[list[float] | None]:
    """Percentile intervals of the column means of ``values`` (phrases, metrics) over resamples
    of the phrases with replacement (seeded); None per column without resamples."""
    from tier_openclip.evaluation.bootstrap import resample_counts

    n = values.shape[0]
    if resamples <= 0 or n == 0:
        return [None] * values.shape[1]
    means = np.concatenate([counts @ values / n for counts in resample_counts(n, resamples, seed)])
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    return [[float(lo), float(hi)] for lo, hi in zip(low, high)]


def exclusive_regions(own: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(own only, other only): the pixels of exactly one of two regions (an overlap names neither)."""
    return own & ~other, other & ~own


def own_lesion(saliency: np.ndarray, own: np.ndarray, other: np.ndarray) -> float | None:
    """Whether a phrase's map points at its own finding rather than the image's other finding.

    Over the valid (non-NaN) pixels that lie in exactly one of the two regions (``own`` XOR
    ``other``: pixels in both name neither finding), 1 when the map's maximum lies in ``own``,
    0 when it lies in ``other``; when pixels tie for that maximum, the share of them in ``own``
    (the pointing game's rule). None when either exclusive part has no valid pixel (the two
    regions cannot be told apart). Where the map points elsewhere in the image does not matter:
    this asks only which of the two lesions the phrase prefers."""
    saliency = np.asarray(saliency, dtype=np.float64)
    valid = ~np.isnan(saliency)
    mine, theirs = (part & valid for part in exclusive_regions(own, other))
    if not mine.any() or not theirs.any():
        return None
    either = mine | theirs
    return pointing_share(saliency[either], mine[either])


def own_lesion_chance(own: np.ndarray, other: np.ndarray, valid: np.ndarray | None = None) -> float | None:
    """:func:`own_lesion` of a map whose maximum is a uniformly random pixel of the two regions'
    exclusive parts: the own part's share of their pixels (None where :func:`own_lesion` is)."""
    mine, theirs = exclusive_regions(own, other)
    if valid is not None:
        mine, theirs = mine & valid, theirs & valid
    if not mine.any() or not theirs.any():
        return None
    return float(mine.sum() / (mine.sum() + theirs.sum()))

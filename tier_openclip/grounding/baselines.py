"""The baselines every grounding figure is shown beside: the random patch (chance) and the
image-free prior (where the finding usually is), scored by the same metric functions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tier_openclip.data_prep.eval_layout import Box, GroundingSet, region_mask
from tier_openclip.grounding.maps import MapGeometry, upsample_maps
from tier_openclip.grounding.metrics import grounding_metrics

PRIOR_SOURCES = {"train": "train boxes", "loo": "leave-one-out"}


def chance_pointing(region: np.ndarray, geometry: MapGeometry) -> float:
    """Expected pointing of a uniformly random patch: the share of the patch centres (inside the
    stored image) whose pixel lies in the region."""
    height, width = region.shape
    centres = geometry.patch_centres()
    x, y = np.floor(centres[:, 0]).astype(int), np.floor(centres[:, 1]).astype(int)
    seen = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return float(region[y[seen], x[seen]].mean()) if seen.any() else 0.0


class PriorMaps:
    """The image-free prior: the mean box-indicator map of a finding, from training boxes or
    leave-one-image-out over the set. Boxes are scaled from their image's size to the size of the
    image they are drawn on (nothing to scale when, as usual, all images have one size); training
    boxes are in meta.json's ``image_size`` square, else in the size of the set's images."""

    def __init__(self, grounding_set: GroundingSet):
        self.sizes = grounding_set.image_sizes
        self.reason: str | None = None
        self.missing: list[str] = []
        self.boxes: dict[str, list[tuple[Box, tuple[int, int]]]] = {}  # finding -> (box, its frame)
        self.own: dict[tuple[str, str], list[tuple[Box, tuple[int, int]]]] = {}  # leave-one-image-out
        self.cache: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
        if grounding_set.prior_boxes is not None:
            self.source = PRIOR_SOURCES["train"]
            size = grounding_set.meta.get("image_size")
            frames = {(size, size)} if isinstance(size, int) and size > 0 else set(self.sizes.values())
            if len(frames) != 1:
                self.reason = "prior_boxes.csv needs meta.json's image_size when the images differ in size"
                return
            (frame,) = frames
            self.boxes = {f: [(box, frame) for box in boxes] for f, boxes in grounding_set.prior_boxes.items()}
            self.missing = sorted({p.finding for p in grounding_set.phrases} - set(self.boxes))
        else:
            self.source = PRIOR_SOURCES["loo"]
            for phrase in grounding_set.phrases:
                framed = [(box, self.sizes[phrase.image]) for box in phrase.boxes]
                self.boxes.setdefault(phrase.finding, []).extend(framed)
                self.own.setdefault((phrase.finding, phrase.image), []).extend(framed)

    @staticmethod
    def _sum(boxes: Sequence[tuple[Box, tuple[int, int]]], size: tuple[int, int]) -> np.ndarray:
        width, height = size
        total = np.zeros((height, width))
        for box, (frame_w, frame_h) in boxes:
            if (frame_w, frame_h) != size:
                sx, sy = width / frame_w, height / frame_h
                box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            total += region_mask([box], height, width)
        return total

    def map(self, finding: str, image: str) -> np.ndarray:
        """The prior map for a phrase of ``finding`` on ``image`` (zeros when no box is left)."""
        size = self.sizes[image]
        key = (finding, size)
        if key not in self.cache:
            self.cache[key] = self._sum(self.boxes.get(finding, []), size)
        own = self.own.get((finding, image), [])
        count = len(self.boxes.get(finding, [])) - len(own)
        if count <= 0:
            return np.zeros(self.cache[key].shape)
        return (self.cache[key] - self._sum(own, size)) / count


def random_map_metrics(region: np.ndarray, geometry: MapGeometry, draws: int, rng: np.random.Generator) -> dict[str, float]:
    """Mean CNR and mIoU of ``draws`` maps of i.i.d. uniform patch values, upsampled like a model's."""
    maps = upsample_maps(rng.random((draws, *geometry.grid)), geometry)
    values = [grounding_metrics(m, region) for m in maps]
    return {"cnr": float(np.mean([v["cnr"] for v in values])), "miou": float(np.mean([v["miou"] for v in values]))}


def random_map_metrics(region: np.ndarray, geometry: MapGeometry, draws: int, rng: np.random.Generator) -> dict[str, float]:
    """Mean CNR and mIoU of ``draws`` maps of i.i.d. uniform patch values, upsampled like a model's."""
    maps = upsample_maps(rng.random((draws, *geometry.grid)), geometry)
    values = [grounding_metrics(m, region) for m in maps]
    return {"cnr": float(np.mean([v["cnr"] for v in values])), "miou": float(np.mean([v["miou"] for v in values]))}

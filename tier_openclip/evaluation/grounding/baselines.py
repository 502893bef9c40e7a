"""The baselines every grounding figure is shown beside: the random patch (chance), the
image-free prior (where the finding usually is) and the located prior (where a finding named with
these location words usually is), scored by the same metric functions."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from tier_openclip.data_prep.eval_layout import Box, GroundingSet, region_mask
from tier_openclip.evaluation.grounding.geometry import MapGeometry, points_in_region, upsample_maps
from tier_openclip.evaluation.grounding.metrics import grounding_metrics

PRIOR_SOURCES = {"train": "train boxes", "loo": "leave-one-out"}


def chance_pointing(region: np.ndarray, geometry: MapGeometry) -> float:
    """Expected pointing of a uniformly random patch: the share of the patch centres (inside the
    stored image) whose pixel lies in the region."""
    seen, inside = points_in_region(geometry.patch_centres(), region)
    return float(inside[seen].mean()) if seen.any() else 0.0


#: Words that say where in the chest a phrase is (the phantom's and MS-CXR's vocabulary). The
#: located prior groups a finding's boxes by which of these their phrase contains.
LOCATION_WORDS = frozenset({
    "left", "right", "bilateral", "upper", "middle", "mid", "lower", "apical", "apex", "apices", "basal",
    "basilar", "base", "bases", "retrocardiac", "perihilar", "hilar", "lateral", "medial", "lingula", "lingular",
})


def location_words(phrase: str) -> tuple[str, ...]:
    """The phrase's words from LOCATION_WORDS, sorted: "Small left pleural effusion" -> ("left",)."""
    return tuple(sorted(set(re.findall(r"[a-z]+", phrase.lower())) & LOCATION_WORDS))


Framed = tuple[Box, tuple[int, int]]  # a box and the (width, height) of the image it is in


class PriorMaps:
    """An image-free prior: the mean box-indicator map of a finding, from training boxes or
    leave-one-image-out over the set. Boxes are scaled from their image's size to the size of the
    image they are drawn on (nothing to scale when, as usual, all images have one size); training
    boxes are in meta.json's ``image_size`` square, else in the size of the set's images.

    ``located``: the best guess that reads the phrase but not the image. The mean map of the boxes
    of the same finding whose phrase names the same location words ("left", "upper", "apical"...),
    so that "left apical pneumothorax" points at the left apex without looking; a phrase without
    location words, or whose words no other box shares, gets the finding's map. Needs the
    training boxes' phrases (prior_boxes.csv's phrase column) or the set itself (leave-one-out)."""

    def __init__(self, grounding_set: GroundingSet, located: bool = False):
        self.sizes = grounding_set.image_sizes
        self.located = located
        self.reason: str | None = None
        self.missing: list[str] = []
        self.boxes: dict[tuple, list[Framed]] = {}  # (finding,) or (finding, location words) -> boxes
        self.own: dict[tuple, list[Framed]] = {}  # (group, image) -> that image's boxes (leave-one-out)
        self.cache: dict[tuple, np.ndarray] = {}
        if grounding_set.prior_boxes is not None:
            self.source = PRIOR_SOURCES["train"]
            size = grounding_set.meta.get("image_size")
            frames = {(size, size)} if isinstance(size, int) and size > 0 else set(self.sizes.values())
            if len(frames) != 1:
                self.reason = "prior_boxes.csv needs meta.json's image_size when the images differ in size"
                return
            if located and grounding_set.prior_phrases is None:
                self.reason = "prior_boxes.csv has no phrase column"
                return
            (frame,) = frames
            for finding, boxes in grounding_set.prior_boxes.items():
                phrases = (grounding_set.prior_phrases or {}).get(finding, [""] * len(boxes))
                for box, phrase in zip(boxes, phrases):
                    for group in self._groups(finding, phrase):
                        self.boxes.setdefault(group, []).append((box, frame))
            self.missing = sorted({p.finding for p in grounding_set.phrases} - set(grounding_set.prior_boxes))
        else:
            self.source = PRIOR_SOURCES["loo"]
            for phrase in grounding_set.phrases:
                framed = [(box, self.sizes[phrase.image]) for box in phrase.boxes]
                for group in self._groups(phrase.finding, phrase.phrase):
                    self.boxes.setdefault(group, []).extend(framed)
                    self.own.setdefault((group, phrase.image), []).extend(framed)

    def _groups(self, finding: str, phrase: str) -> list[tuple]:
        """The groups a box counts in: its finding's, and (located) its finding and location words'."""
        return [(finding,), (finding, location_words(phrase))] if self.located else [(finding,)]

    @staticmethod
    def _sum(boxes: Sequence[Framed], size: tuple[int, int]) -> np.ndarray:
        width, height = size
        total = np.zeros((height, width))
        for box, (frame_w, frame_h) in boxes:
            if (frame_w, frame_h) != size:
                sx, sy = width / frame_w, height / frame_h
                box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            total += region_mask([box], height, width)
        return total

    def _group_map(self, group: tuple, image: str) -> np.ndarray | None:
        """The mean map of the group's boxes on ``image`` without that image's own; None if none is left."""
        size = self.sizes[image]
        own = self.own.get((group, image), [])
        count = len(self.boxes.get(group, [])) - len(own)
        if count <= 0:
            return None
        if (group, size) not in self.cache:
            self.cache[(group, size)] = self._sum(self.boxes[group], size)
        return (self.cache[(group, size)] - self._sum(own, size)) / count

    def map(self, finding: str, image: str, phrase: str = "") -> np.ndarray:
        """The prior map for a phrase of ``finding`` on ``image`` (zeros when no box is left);
        ``phrase`` is read only by the located prior."""
        if self.located and location_words(phrase):
            located = self._group_map((finding, location_words(phrase)), image)
            if located is not None:
                return located
        found = self._group_map((finding,), image)
        width, height = self.sizes[image]
        return found if found is not None else np.zeros((height, width))


def random_map_metrics(region: np.ndarray, geometry: MapGeometry, draws: int, rng: np.random.Generator) -> dict[str, float]:
    """Mean CNR and mIoU of ``draws`` maps of i.i.d. uniform patch values, upsampled like a model's."""
    maps = upsample_maps(rng.random((draws, *geometry.grid)), geometry)
    values = [grounding_metrics(m, region) for m in maps]
    return {"cnr": float(np.mean([v["cnr"] for v in values])), "miou": float(np.mean([v["miou"] for v in values]))}

"""The own-lesion test: in an image with two different findings, does each phrase's map point at
its own finding rather than the other one? A phrase without location words ("pneumothorax") can
pass it only by reading the image; a model that lights up "whatever is abnormal" fails it, though
its pointing game may be high.

Definition (the phantom's grounding layout has one or two different findings per image):
an image *competes* when its phrases name exactly two different findings, one phrase each; each
of those phrases has the other finding's region as its *competitor*. A phrase's own-lesion score
is :func:`tier_openclip.evaluation.grounding.metrics.own_lesion` of its map, its own region and its
competitor's region: 1 when the map's maximum over the pixels of exactly one of the two regions
lies in its own, 0 when in the competitor's, the share in its own when pixels tie; undefined
(None) when either exclusive part is empty. The own-lesion rate is the mean over the defined
phrases of the competing images whose finding is not excluded from the summary (a competitor may
be of an excluded finding). Baselines, the same function on the same regions: chance (the map's
maximum a uniformly random pixel of the two parts: the own part's pixel share), the image-free
prior's map (the finding's mean box map: it knows where each kind of finding usually sits) and
the located prior's (the same on phrases without location words).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tier_openclip.evaluation.grounding.metrics import bootstrap_means

OWN_LESION = "own_lesion"


def competitors(findings: Sequence[str]) -> list[int | None]:
    """For the phrases of one image (their findings, in order), each phrase's competitor (the
    index of the other phrase) when the image competes (two phrases of two different findings),
    else None for every phrase."""
    if len(findings) == 2 and findings[0] != findings[1]:
        return [1, 0]
    return [None] * len(findings)


def own_lesion_summary(rows: Sequence[Mapping[str, Any]], baselines: Sequence[str], bootstrap: int, seed: int,
                       confidence: float = 0.95, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The own-lesion rate of per-phrase ``rows`` (each with "finding", "own_lesion" and, per name
    in ``baselines``, a dict holding that baseline's "own_lesion"): {"value", "ci", "phrases",
    "per_finding": {finding: {"value", "phrases"}}, "baselines": {name: value}, "excluded":
    [...]}; "value" and the baselines are None when no phrase is defined."""
    scored = [row for row in rows if row.get(OWN_LESION) is not None and row["finding"] not in exclude]
    values = np.array([[row[OWN_LESION]] for row in scored], dtype=np.float64).reshape(len(scored), 1)
    per_finding: dict[str, dict[str, Any]] = {}
    for row in scored:
        per_finding.setdefault(row["finding"], []).append(row[OWN_LESION])
    return {
        "value": float(values.mean()) if scored else None,
        "ci": bootstrap_means(values, bootstrap, seed, confidence)[0] if scored else None,
        "phrases": len(scored),
        "per_finding": {name: {"value": float(np.mean(v)), "phrases": len(v)} for name, v in per_finding.items()},
        "baselines": {name: (float(np.mean([row[name][OWN_LESION] for row in scored]))
                             if scored and all(row.get(name, {}).get(OWN_LESION) is not None for row in scored)
                             else None)
                      for name in baselines},
        "excluded": sorted(set(exclude)),
    }

"""ROC AUC with bootstrap confidence intervals: arrays in, numbers out (no model, no files).

A percentile bootstrap that resamples images (jointly for all labels, so the interval of a mean
AUC is one of a mean over the same images); each resample's AUC is the Mann–Whitney statistic,
computed in bulk. ``resample_counts`` is the one resampler of the project's evaluators
(zero-shot, grounding, segmentation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger("tier_openclip")

# Below this many images (for an AUC: of its smaller class, positives or negatives, which its
# variance depends on), a percentile interval is reported with a warning. Two reasons, both
# arithmetic: a resample misses a class of k images with probability (1 - k/n)^n ≈ e^-k (5% at
# k = 3, 0.7% at 5, 0.005% at 10), and such resamples are skipped, so the interval is taken over a
# biased subset; and n images have only C(2n-1, n) distinct resamples (10 for n = 3, 126 for 5,
# 92378 for 10), so at a handful of images the "interval" is a few repeated values, e.g.
# 0.839 (0.839–1.000) on 3 images. At 10 both effects are negligible.
MIN_IMAGES_FOR_INTERVAL = 10


def few_images_warning(what: str, count: int, of: str = "images") -> str | None:
    """One line saying an interval rests on too few images (below MIN_IMAGES_FOR_INTERVAL), or None."""
    if count >= MIN_IMAGES_FOR_INTERVAL:
        return None
    return (f"{what}: the bootstrap interval rests on {count} {of}, fewer than {MIN_IMAGES_FOR_INTERVAL}; "
            "it is not a reliable confidence interval: evaluate on more images")


def quantile_interval(values, confidence: float) -> list[float] | None:
    import numpy as np

    if len(values) == 0:
        return None
    low, high = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)]


def auc_report(
    scores,
    targets,
    labels: Sequence[str],
    groups: Mapping[str, Sequence[str]] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_positives: int = 1,
) -> dict[str, Any]:
    """Per-label ROC AUC with bootstrap CIs, and mean AUCs over groups of labels.

    scores, targets: (N, L) arrays; targets are 1, 0 or NaN (unknown: that image is dropped for
    that label). groups: name -> labels (default {"all": labels}); a group's mean is over its
    labels that were not skipped. Bootstrap resamples images with replacement (seeded); a resample
    in which a label has one class is skipped for that label and for the means including it.

    Returns {"labels": {label: {"auc", "ci", "positives", "negatives", "resamples"}},
    "skipped": {label: {"reason", "positives", "negatives"}},
    "means": {group: {"labels", "mean_auc", "ci", "resamples"}}}; "ci" is [low, high], or None
    without bootstrap.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if scores.shape != targets.shape or scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (images, {len(labels)} labels)")
    known = ~np.isnan(targets)
    per_label: dict[str, dict] = {}
    skipped: dict[str, dict] = {}
    evaluated: list[int] = []
    for j, label in enumerate(labels):
        y = targets[known[:, j], j]
        positives, negatives = int((y == 1).sum()), int((y == 0).sum())
        reason = None
        if positives == 0:
            reason = "no positives"
        elif negatives == 0:
            reason = "no negatives"
        elif positives < min_positives:
            reason = f"fewer than {min_positives} positives ({positives})"
        if reason:
            skipped[label] = {"reason": reason, "positives": positives, "negatives": negatives}
            continue
        evaluated.append(j)
        auc = float(roc_auc_score(y, scores[known[:, j], j]))
        per_label[label] = {"auc": auc, "ci": None, "positives": positives, "negatives": negatives, "resamples": 0}

    if bootstrap > 0:
        few = [f"{labels[j]} ({min(per_label[labels[j]]['positives'], per_label[labels[j]]['negatives'])})"
               for j in evaluated
               if min(per_label[labels[j]]["positives"], per_label[labels[j]]["negatives"]) < MIN_IMAGES_FOR_INTERVAL]
        if few:
            logger.warning(few_images_warning("AUC of " + ", ".join(few), min(
                min(v["positives"], v["negatives"]) for v in per_label.values()), of="images of a label's smaller class"))
    boot = bootstrap_aucs(scores, targets, evaluated, bootstrap, seed)  # (B, L), NaN where skipped
    for j in evaluated:
        valid = boot[:, j][~np.isnan(boot[:, j])]
        per_label[labels[j]]["ci"] = quantile_interval(valid, confidence)
        per_label[labels[j]]["resamples"] = int(valid.size)

    means: dict[str, dict] = {}
    for group, members in (groups or {"all": list(labels)}).items():
        columns = [labels.index(m) for m in members if m in per_label]
        if not columns:
            continue
        boot_means = boot[:, columns].mean(axis=1)  # NaN when any member skipped that resample
        boot_means = boot_means[~np.isnan(boot_means)]
        means[group] = {
            "labels": [labels[j] for j in columns],
            "mean_auc": float(np.mean([per_label[labels[j]]["auc"] for j in columns])),
            "ci": quantile_interval(boot_means, confidence),
            "resamples": int(boot_means.size),
        }
    return {"labels": per_label, "skipped": skipped, "means": means}


def resample_counts(num_images: int, resamples: int, seed: int = 0, chunk: int = 100):
    """Bootstrap resamples of the images, in chunks: (≤chunk, num_images) arrays counting how
    often each image was drawn (num_images draws with replacement per resample)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for first in range(0, resamples, chunk):
        rows = min(chunk, resamples - first)
        draws = rng.integers(0, num_images, size=(rows, num_images))
        offsets = np.arange(rows)[:, None] * num_images  # one bincount for all rows
        yield np.bincount((draws + offsets).ravel(), minlength=rows * num_images).reshape(rows, num_images)


def weighted_aucs(counts, scores, targets):
    """ROC AUC of each resample given as image counts (B, M): the Mann–Whitney statistic with ties
    counted ½, i.e. roc_auc_score on the resampled images, without sklearn's per-call overhead
    (1000 resamples × 14 labels). NaN where a resample has a single class."""
    import numpy as np

    order = np.argsort(scores, kind="stable")
    scores, targets, counts = scores[order], targets[order], counts[:, order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # groups of tied scores
    pos = np.add.reduceat(counts * (targets == 1), starts, axis=1).astype(np.float64)
    neg = np.add.reduceat(counts * (targets == 0), starts, axis=1).astype(np.float64)
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def bootstrap_aucs(scores, targets, columns: Sequence[int], resamples: int, seed: int = 0):
    """(resamples, L) AUCs on images resampled with replacement, jointly for all labels;
    NaN for labels not in ``columns`` and where a resample has one class of that label."""
    import numpy as np

    n, num_labels = targets.shape
    out = np.full((resamples, num_labels), np.nan)
    row = 0
    for counts in resample_counts(n, resamples, seed):
        for j in columns:
            known = ~np.isnan(targets[:, j])
            out[row : row + len(counts), j] = weighted_aucs(counts[:, known], scores[known, j], targets[known, j])
        row += len(counts)
    return out

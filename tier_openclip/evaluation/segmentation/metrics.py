"""Segmentation metrics as pure functions of per-image [TP, FP, FN, TN] counts, their summary over
seeds with bootstrap intervals over test images, and the image-free prior baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it runs: building the command line must stay light
    import torch


METRICS = ("dice", "iou", "miou")


def _bool_tensor(values: Any) -> torch.Tensor:
    import torch

    if isinstance(values, np.ndarray):
        values = np.array(values, dtype=bool)  # a copy: broadcast views are read-only
    return torch.as_tensor(values).bool()


def confusion_counts(predicted: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                     valid: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """(N, 4) int64 per-image [TP, FP, FN, TN] of bool (N, H, W) predictions and targets,
    counting only ``valid`` pixels."""
    import torch

    predicted, target = _bool_tensor(predicted), _bool_tensor(target)
    keep = torch.ones_like(target) if valid is None else _bool_tensor(valid)
    dims = tuple(range(1, target.dim()))
    counts = [(predicted & target & keep).sum(dims), (predicted & ~target & keep).sum(dims),
              (~predicted & target & keep).sum(dims), (~predicted & ~target & keep).sum(dims)]
    return torch.stack(counts, dim=-1).cpu().numpy().astype(np.int64)


def metrics_from_counts(totals: np.ndarray) -> dict[str, np.ndarray]:
    """Dice, IoU (target) and mIoU (target and background) of summed [TP, FP, FN, TN] (..., 4);
    0/0 = 1 (nothing to find and nothing predicted)."""
    tp, fp, fn, tn = (np.asarray(totals, dtype=np.float64)[..., k] for k in range(4))

    def ratio(numerator, denominator):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 1.0)

    iou = ratio(tp, tp + fp + fn)
    return {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": iou, "miou": (iou + ratio(tn, tn + fn + fp)) / 2}


def summarise_seeds(per_seed_counts: Sequence[np.ndarray], bootstrap: int, seed: int,
                    confidence: float = 0.95) -> dict[str, dict[str, Any]]:
    """{metric: {"value", "sd", "ci", "per_seed"}} of per-image counts (one (N, 4) array per seed):
    value = mean over seeds of the metric on all test images; ci = percentile bootstrap over test
    images (the same resamples for every seed) of that mean; sd over seeds (None for one seed)."""
    from tier_openclip.evaluation.bootstrap import few_images_warning, logger, resample_counts

    if bootstrap > 0 and (warning := few_images_warning("segmentation", per_seed_counts[0].shape[0], of="test images")):
        logger.warning(warning)
    per_seed = [metrics_from_counts(counts.sum(axis=0)) for counts in per_seed_counts]
    out: dict[str, dict[str, Any]] = {}
    draws: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    n = per_seed_counts[0].shape[0]
    if bootstrap > 0 and n > 0:
        for weights in resample_counts(n, bootstrap, seed):
            resampled = [metrics_from_counts(weights @ counts) for counts in per_seed_counts]
            for m in METRICS:
                draws[m].append(np.mean([r[m] for r in resampled], axis=0))
    low, high = (1 - confidence) / 2, (1 + confidence) / 2
    for m in METRICS:
        values = [float(r[m]) for r in per_seed]
        ci = None
        if draws[m]:
            lo, hi = np.quantile(np.concatenate(draws[m]), [low, high])
            ci = [float(lo), float(hi)]
        out[m] = {"value": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                  "ci": ci, "per_seed": values}
    return out


# --- baselines ----------------------------------------------------------------------------------


def prior_mask(train_masks: np.ndarray | torch.Tensor) -> tuple[np.ndarray, float]:
    """The training masks' mean map thresholded where its Dice on those masks is highest, and
    the threshold. Predicting the k most frequent pixels gives TP = N·C_k (C_k: the sum of their
    mean values), predicted = N·k, target = N·S, so Dice_k = 2·C_k / (k + S); only the ends of
    groups of tied values are thresholds. An all-background mean map predicts nothing."""
    import torch

    mean = torch.as_tensor(train_masks).float().mean(dim=0).cpu().numpy().astype(np.float64)
    values = np.sort(mean.ravel())[::-1]
    total = values.sum()
    if total <= 0:
        return np.zeros_like(mean, dtype=bool), 1.0
    cumulative = np.cumsum(values)
    ends = np.flatnonzero(np.r_[values[1:] != values[:-1], True])  # last index of each tie group
    dice = 2 * cumulative[ends] / (ends + 1 + total)
    threshold = float(values[ends[int(np.argmax(dice))]])
    return mean >= threshold if threshold > 0 else np.zeros_like(mean, dtype=bool), threshold

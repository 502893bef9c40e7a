"""The linear probe: a 1×1 convolution on frozen patch features, trained and evaluated on arrays
(``probe_evaluate``), with the empty and prior baselines beside it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from tier_openclip.evaluation.segmentation.metrics import confusion_counts, prior_mask, summarise_seeds

if TYPE_CHECKING:  # torch is imported where it runs: building the command line must stay light
    import torch


LOSSES = ("bce+dice", "bce", "dice")
DEFAULT_SMALL_FRACTION_SEEDS = 3


@dataclass(frozen=True)
class ProbeConfig:
    """How the linear head is trained."""

    epochs: int = 50
    lr: float = 3e-2  # LoVT's for its linear segmentation heads
    batch_size: int = 16
    loss: str = "bce+dice"

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1 or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")


@dataclass
class LinearProbe:
    """Per-channel standardisation (``mean``, ``std``: (1, E, 1, 1)), then a 1×1 convolution
    (``weight`` (1, E, 1, 1), ``bias`` (1,)) to one logit per patch, upsampled bilinearly to ``size``."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        import torch.nn.functional as F

        logits = F.conv2d((features - self.mean) / self.std, self.weight, self.bias)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[:, 0]


def _loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, kind: str) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    weight = torch.ones_like(target) if valid is None else valid.float()
    total = torch.zeros((), device=logits.device)
    if "bce" in kind:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        total = total + (bce * weight).sum() / weight.sum().clamp_min(1)
    if "dice" in kind and bool((target * weight).sum() > 0):  # no Dice term without target
        probability = torch.sigmoid(logits) * weight
        overlap = (probability * target).sum()
        total = total + 1 - 2 * overlap / ((probability + target * weight).sum()).clamp_min(1e-7)
    return total


def train_probe(features: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None, *, seed: int = 0,
                config: ProbeConfig = ProbeConfig(), device: str = "cpu", progress: Callable[[], None] | None = None
                ) -> tuple[LinearProbe, float]:
    """A linear head trained on (N, E, rows, cols) features to (N, H, W) bool masks; returns it
    and the last epoch's mean loss."""
    import torch

    config.check()
    features = torch.as_tensor(features).float()
    masks = torch.as_tensor(masks).bool()
    size = tuple(masks.shape[-2:])
    mean = features.mean(dim=(0, 2, 3))
    std = features.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6)  # a constant channel: no division by 0
    weight = None if valid is None else torch.as_tensor(valid).bool()
    share = float(masks[weight].float().mean()) if weight is not None else float(masks.float().mean())
    share = min(max(share, 1e-4), 1 - 1e-4)
    head = LinearProbe(mean.reshape(1, -1, 1, 1).to(device), std.reshape(1, -1, 1, 1).to(device),
                       torch.zeros((1, mean.numel(), 1, 1), device=device, requires_grad=True),
                       torch.full((1,), math.log(share / (1 - share)), device=device, requires_grad=True))
    optimiser = torch.optim.Adam([head.weight, head.bias], lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    last = float("nan")
    with torch.enable_grad():
        for _ in range(config.epochs):
            order = torch.randperm(features.shape[0], generator=generator)
            losses = []
            for first in range(0, len(order), config.batch_size):
                batch = order[first : first + config.batch_size]
                logits = head(features[batch].to(device), size)
                loss = _loss(logits, masks[batch].to(device).float(),
                             None if weight is None else weight[batch].to(device), config.loss)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
            last = float(np.mean(losses))
            if progress is not None:
                progress()
    head.weight.requires_grad_(False)
    head.bias.requires_grad_(False)
    return head, last


def predict(head: LinearProbe, features: torch.Tensor, size: tuple[int, int], *, device: str = "cpu",
            batch_size: int = 64) -> torch.Tensor:
    """(N, H, W) bool: logit > 0."""
    import torch

    out = []
    with torch.no_grad():
        for first in range(0, features.shape[0], batch_size):
            out.append((head(torch.as_tensor(features[first : first + batch_size]).float().to(device), size) > 0).cpu())
    return torch.cat(out) if out else torch.zeros((0, *size), dtype=torch.bool)


def train_subset(num_train: int, label_fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(label_fraction · num_train) (at least 1) training images, drawn with ``seed``."""
    count = max(1, min(num_train, round(label_fraction * num_train)))
    return np.sort(np.random.default_rng(seed).choice(num_train, size=count, replace=False))


def default_seeds(label_fraction: float) -> int:
    return DEFAULT_SMALL_FRACTION_SEEDS if label_fraction < 1 else 1


def probe_evaluate(train_features: torch.Tensor, train_masks: torch.Tensor, test_features: torch.Tensor,
                   test_masks: torch.Tensor, *, train_valid: torch.Tensor | None = None,
                   test_valid: torch.Tensor | None = None, label_fraction: float = 1.0, seeds: int | None = None,
                   seed: int = 0, config: ProbeConfig = ProbeConfig(), bootstrap: int = 1000, confidence: float = 0.95,
                   device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """The evaluation on arrays: features (N, E, rows, cols), bool masks (N, H, W) in one frame.
    Returns {"probe", "baselines": {"empty", "prior"}, "runs", settings} (module docstring)."""
    import torch
    from tqdm import tqdm

    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    seeds = default_seeds(label_fraction) if seeds is None else seeds
    if seeds < 1:
        raise ValueError("seeds must be >= 1")
    if len(train_features) == 0 or len(test_features) == 0:
        raise ValueError(f"need training and test images, got {len(train_features)} and {len(test_features)}")
    config.check()
    train_masks, test_masks = torch.as_tensor(train_masks).bool(), torch.as_tensor(test_masks).bool()
    size = tuple(test_masks.shape[-2:])
    probe_counts, prior_counts, runs = [], [], []
    bar = tqdm(total=seeds * config.epochs, unit="epoch", desc="linear probe", disable=not progress, dynamic_ncols=True)
    for run_seed in range(seed, seed + seeds):
        subset = torch.as_tensor(train_subset(len(train_features), label_fraction, run_seed))
        whole = len(subset) == len(train_features)  # no copy of the feature cache at fraction 1

        def pick(values):
            return None if values is None else torch.as_tensor(values) if whole else torch.as_tensor(values)[subset]

        head, loss = train_probe(pick(train_features), pick(train_masks), pick(train_valid), seed=run_seed, config=config,
                                 device=device, progress=lambda: bar.update(1))
        probe_counts.append(confusion_counts(predict(head, test_features, size, device=device), test_masks, test_valid))
        prior, threshold = prior_mask(train_masks[subset])
        prior_counts.append(confusion_counts(torch.as_tensor(prior).expand_as(test_masks), test_masks, test_valid))
        runs.append({"seed": run_seed, "train_images": len(subset),
                     "train_positive_images": int(train_masks[subset].flatten(1).any(dim=1).sum()),
                     "final_loss": loss, "prior_threshold": threshold})
    bar.close()
    empty = confusion_counts(torch.zeros_like(test_masks), test_masks, test_valid)
    return {
        "label_fraction": label_fraction,
        "seeds": seeds,
        "num_train_images": len(train_features),
        "num_test_images": len(test_features),
        "test_positive_images": int(test_masks.flatten(1).any(dim=1).sum()),
        "probe": summarise_seeds(probe_counts, bootstrap, seed, confidence),
        "baselines": {"empty": summarise_seeds([empty], bootstrap, seed, confidence),
                      "prior": summarise_seeds(prior_counts, bootstrap, seed, confidence)},
        "runs": runs,
        "probe_config": asdict(config),
        "bootstrap": bootstrap,
        "confidence": confidence,
        "seed": seed,
        "mask_size": list(size),
        "feature_dim": int(train_features.shape[1]),
        "grid": list(train_features.shape[-2:]),
    }

"""Localized downstream evaluation: a linear segmentation probe on the frozen image tower, as
LoVT (Müller et al. 2022) evaluates local representations on SIIM pneumothorax and RSNA opacity.

Protocol, on a segmentation set (data_prep/seg_sets.py: ``prep siim``, ``prep rsna``, the phantom):
- Features: the image tower's projected patch embeddings (``features.token_features``'s
  ``image_tokens``, L2-normalised, the space TIER and the local losses act on) on the patch grid,
  computed ONCE per image with the model frozen (eval mode, no gradients) and kept in memory,
  so training the head costs no forward pass of the model.
- Head: a 1×1 convolution (one logit per patch) whose logits are upsampled bilinearly to the
  mask (F.interpolate, align_corners=False), as LoVT's linear segmentation head. Its inputs are
  standardised per channel with the training features' mean and std: an affine map the 1×1
  convolution could absorb, so the head stays linear; it only conditions the optimisation.
  Weights start at zero and the bias at the logit of the training masks' pixel share.
- Training: ``loss`` = BCE, soft Dice (batch-level; no Dice term on a batch without target) or
  their sum (default), Adam, a fixed number of epochs, on a random ``label_fraction`` of the
  training split (at least one image) drawn per seed; several seeds (default 3) for fractions
  below 1. The val split is not used: no early stopping, no tuning on the test split.
- Frame: metrics are computed at the model's input resolution. Each mask is sampled
  (nearest, at pixel centres) through the same resize and centre crop as its image
  (``grounding.maps.input_frame``); input pixels outside the stored image ('longest' padding)
  are left out of loss and metrics.
- Metrics, on the test split, as LoVT reports them: Dice = 2TP / (2TP + FP + FN) over all test
  pixels together (micro, target class); IoU = TP / (TP + FP + FN) (target class, micro); mIoU
  = the mean of the target and background IoUs. A prediction of nothing where there is nothing
  scores 1 (0/0). Prediction: logit > 0.
- Intervals: percentile bootstrap over test images (seeded), of the mean over seeds; "sd" is
  the standard deviation over seeds (None with one seed).
- Baselines beside the probe, always, from the same metric functions on the same pixels:
  ``empty`` predicts background everywhere (Dice 0 whenever the test split has a target); the
  image-free ``prior`` is the training subset's mean mask, thresholded at the level that
  maximises its Dice on those training masks (exactly, by sorting its pixels). A probe that
  does not beat the prior has learned nothing about the image.

One results schema serves ``tier-openclip eval segmentation`` (JSON + markdown) and
``segmentation_evaluate`` (Python); ``probe_evaluate`` is the same evaluation on arrays.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tier_openclip.cli_common import add_model_flags

if TYPE_CHECKING:  # torch is imported where it runs: building the command line must stay light
    import torch

LOSSES = ("bce+dice", "bce", "dice")
METRICS = ("dice", "iou", "miou")
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


# --- metrics: pure functions of counts ---------------------------------------------------------


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
    from tier_openclip.bootstrap import resample_counts

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


# --- the probe ----------------------------------------------------------------------------------


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


# --- a model's features and the masks in its input frame ------------------------------------------


def extract_features(model: Any, preprocess: Callable, paths: Sequence[Path], *, device: str = "cpu",
                     batch_size: int = 32, num_workers: int = 0, progress: bool = False,
                     desc: str = "features") -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, E, rows, cols) float32 CPU patch embeddings of the frozen tower, and the input (height, width)."""
    import torch
    from tqdm import tqdm

    from tier_openclip import openclip_adapter as adapter
    from tier_openclip.image_files import ImageFiles, stack_or_errors
    from tier_openclip.features import token_features
    from tier_openclip.grounding import grid_shape

    model = adapter.unwrap_model(model)
    dtype = next(model.visual.parameters()).dtype
    loader = torch.utils.data.DataLoader(ImageFiles(paths, preprocess), batch_size=batch_size, num_workers=num_workers,
                                         shuffle=False, collate_fn=stack_or_errors)
    chunks, input_size = [], None
    with torch.inference_mode():
        for batch in tqdm(loader, total=len(loader), unit="batch", desc=desc, disable=not progress, dynamic_ncols=True):
            if isinstance(batch, list):
                raise ValueError(batch[0] + (f" (and {len(batch) - 1} more in this batch)" if len(batch) > 1 else ""))
            tokens = token_features(model, images=batch.to(device=device, dtype=dtype))["image_tokens"].float()
            input_size = tuple(batch.shape[-2:])
            rows, cols = grid_shape(tokens.shape[1], input_size)
            chunks.append(tokens.reshape(len(batch), rows, cols, -1).permute(0, 3, 1, 2).cpu())
    return torch.cat(chunks).contiguous(), input_size  # type: ignore[return-value]


def masks_in_input_frame(mask_paths: Sequence[Path], image_sizes: Sequence[tuple[int, int]], input_size: tuple[int, int],
                         resize_mode: str = "shortest") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, H, W) bool masks sampled (nearest, at input pixel centres) through open_clip's
    validation resize + crop, and the pixels the stored image covers (None when all of them)."""
    import torch

    from tier_openclip.data_prep.seg_sets import read_mask
    from tier_openclip.grounding import input_frame

    height, width = input_size
    samplers: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    masks, valids = [], []
    for path, (image_w, image_h) in zip(mask_paths, image_sizes):
        if (image_w, image_h) not in samplers:
            sx, sy, ox, oy = input_frame(input_size, (image_w, image_h), resize_mode)
            xs = np.floor((np.arange(width) + 0.5) * sx + ox).astype(int)
            ys = np.floor((np.arange(height) + 0.5) * sy + oy).astype(int)
            inside = ((ys >= 0) & (ys < image_h))[:, None] & ((xs >= 0) & (xs < image_w))[None, :]
            samplers[(image_w, image_h)] = (np.clip(ys, 0, image_h - 1), np.clip(xs, 0, image_w - 1), inside)
        ys, xs, inside = samplers[(image_w, image_h)]
        masks.append(read_mask(path)[ys[:, None], xs[None, :]] & inside)
        valids.append(inside)
    stacked = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.bool)
    valid = torch.from_numpy(np.stack(valids)) if valids else None
    return stacked, (None if valid is None or bool(valid.all()) else valid)


def segmentation_evaluate(model: Any, preprocess: Callable, data_dir: str | Path, *, label_fraction: float = 1.0,
                          seeds: int | None = None, device: str = "cpu", seed: int = 0,
                          config: ProbeConfig = ProbeConfig(), bootstrap: int = 1000, confidence: float = 0.95,
                          batch_size: int = 32, num_workers: int = 0, progress: bool = False) -> dict[str, Any]:
    """Linear-probe Dice, IoU and mIoU of ``model``'s frozen patch embeddings on a segmentation
    set's test split, trained on ``label_fraction`` of its train split, with the empty and prior
    baselines (module docstring). Returns the results schema."""
    from tier_openclip import openclip_adapter as adapter
    from tier_openclip.data_prep.seg_sets import read_seg_set
    from tier_openclip.grounding import resize_mode_of

    seg = read_seg_set(data_dir)
    train, test = seg.split("train"), seg.split("test")
    if not train or not test:
        raise ValueError(f"{seg.directory}: the probe needs train and test images; splits.csv has "
                         f"{len(train)} train and {len(test)} test")
    inner = adapter.unwrap_model(model)
    was_training = inner.training
    inner.eval()  # frozen: no dropout, no batch-norm updates, no gradients (inference mode)
    try:
        resize_mode = resize_mode_of(preprocess)
        arrays = {}
        for name, items in (("train", train), ("test", test)):
            features, input_size = extract_features(inner, preprocess, [seg.path(i.image) for i in items], device=device,
                                                    batch_size=batch_size, num_workers=num_workers, progress=progress,
                                                    desc=f"features ({name})")
            masks, valid = masks_in_input_frame([seg.path(i.mask) for i in items], [seg.image_sizes[i.image] for i in items],
                                                input_size, resize_mode)
            arrays[name] = (features, masks, valid)
    finally:
        inner.train(was_training)
    results = probe_evaluate(arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1],
                             train_valid=arrays["train"][2], test_valid=arrays["test"][2], label_fraction=label_fraction,
                             seeds=seeds, seed=seed, config=config, bootstrap=bootstrap, confidence=confidence,
                             device=device, progress=progress)
    return {"dataset": seg.dataset, "target": seg.target, "data_dir": str(seg.directory), **results,
            "input_size": list(input_size), "resize_mode": resize_mode,
            "frame": "model input: masks sampled nearest through the image's resize and crop"}


# --- reporting ----------------------------------------------------------------------------------


def _cell(entry: dict[str, Any]) -> str:
    text = f"{entry['value']:.3f}"
    if entry.get("sd") is not None:
        text += f" ± {entry['sd']:.3f}"
    if entry.get("ci"):
        text += f" ({entry['ci'][0]:.3f}–{entry['ci'][1]:.3f})"
    return text


def segmentation_markdown(results: dict[str, Any]) -> str:
    """Markdown table of segmentation_evaluate's (or probe_evaluate's) results, baselines beside the probe."""
    percent = round(100 * results.get("confidence", 0.95))
    name = results.get("dataset") or "segmentation set"
    target = f" ({results['target']})" if results.get("target") else ""
    seeds = results["seeds"]
    lines = [f"### Linear-probe segmentation, {name}{target}", "",
             f"{results['num_test_images']} test images ({results['test_positive_images']} with target); head trained on "
             f"{results['label_fraction']:g} of {results['num_train_images']} training images, {seeds} seed(s) "
             f"({results['probe_config']['loss']}, {results['probe_config']['epochs']} epochs). "
             f"Mean{' ± sd over seeds' if seeds > 1 else ''} ({percent}% bootstrap interval over test images).", "",
             "| | Dice | IoU | mIoU |", "|:--|--:|--:|--:|"]
    rows = [("Linear probe (frozen encoder)", results["probe"]),
            ("Prior (mean training mask, thresholded)", results["baselines"]["prior"]),
            ("Empty head (all background)", results["baselines"]["empty"])]
    for label, entry in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(entry[m]) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


# --- command line -------------------------------------------------------------------------------


def add_segmentation_parser(tasks: Any) -> None:
    """`tier-openclip eval segmentation ...` (``tasks``: the eval subcommand's subparsers)."""
    parser = tasks.add_parser(
        "segmentation",
        help="Linear-probe segmentation (SIIM, RSNA layout): Dice, IoU, mIoU of a head on frozen patch embeddings.",
        description="Localized downstream evaluation as LoVT does it: freeze the image tower, train a linear head "
                    "(1x1 convolution on the projected patch embeddings, bilinear upsampling) on a fraction of the "
                    "train split, report Dice, IoU and mIoU on the test split with bootstrap intervals over test "
                    "images, mean ± sd over seeds, beside the empty-head and image-free prior baselines. Prints "
                    "markdown; --out also writes JSON and the table next to it (results.md).",
    )
    add_model_flags(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="Segmentation set: `tier-openclip prep siim|rsna` output (splits.csv + images/ + masks/).")
    parser.add_argument("--label-fraction", type=float, default=1.0, metavar="F",
                        help="Share of the train split the head sees (LoVT: 0.01, 0.1, 1.0; default 1.0).")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help=f"Training subsets and runs (default {DEFAULT_SMALL_FRACTION_SEEDS} below fraction 1, else 1).")
    parser.add_argument("--out", default=None, metavar="FILE.json",
                        help="Write results JSON here, and the markdown table next to it (same name, .md).")
    parser.add_argument("--loss", choices=LOSSES, default=ProbeConfig.loss, help="Head loss (default bce+dice).")
    parser.add_argument("--epochs", type=int, default=ProbeConfig.epochs, help=f"Head epochs (default {ProbeConfig.epochs}).")
    parser.add_argument("--lr", type=float, default=ProbeConfig.lr, help=f"Adam learning rate (default {ProbeConfig.lr:g}).")
    parser.add_argument("--probe-batch-size", type=int, default=ProbeConfig.batch_size,
                        help=f"Images per head step (default {ProbeConfig.batch_size}).")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="Bootstrap resamples of the test images (default 1000; 0: no intervals).")
    parser.add_argument("--seed", type=int, default=0, help="First seed (runs use seed, seed+1, ...) and the bootstrap's.")
    parser.add_argument("--batch-size", type=int, default=32, help="Images per forward pass of the model (default 32).")
    parser.add_argument("--workers", type=int, default=2, help="Image loading processes (default 2).")
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")
    parser.set_defaults(func=run_segmentation)


def run_segmentation(args: argparse.Namespace) -> int:
    from tier_openclip.cli_common import model_inputs, results_file, run_evaluation
    from tier_openclip.data_prep.seg_sets import read_seg_set
    from tier_openclip.errors import CommandError, UsageError
    from tier_openclip.models import check_pretrained

    config = ProbeConfig(epochs=args.epochs, lr=args.lr, batch_size=args.probe_batch_size, loss=args.loss)
    if not 0 < args.label_fraction <= 1:
        raise UsageError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    if (args.seeds is not None and args.seeds < 1) or args.bootstrap < 0 or args.batch_size < 1 or args.workers < 0:
        raise UsageError("--seeds and --batch-size must be >= 1, --bootstrap and --workers >= 0")
    try:
        config.check()
    except ValueError as exc:
        raise UsageError(f"--epochs, --probe-batch-size, --lr: {exc}") from None
    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data} is not a folder: pass a segmentation set from `tier-openclip prep siim|rsna`")
    out = results_file(args.out, [("--data", args.data), *model_inputs(args)])
    check_pretrained(args.model, args.pretrained, weights_required=True)  # before reading a large set
    try:
        read_seg_set(args.data)  # before loading a large model
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None

    def evaluate(loaded, device: str) -> dict:
        return segmentation_evaluate(loaded.model, loaded.preprocess, args.data, label_fraction=args.label_fraction,
                                     seeds=args.seeds, device=device, seed=args.seed, config=config,
                                     bootstrap=args.bootstrap, batch_size=args.batch_size, num_workers=args.workers,
                                     progress=not args.quiet)

    return run_evaluation(args, evaluate, segmentation_markdown, out)

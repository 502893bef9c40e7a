"""Zero-shot chest X-ray classification AUC, by the CheXzero protocol (Tiu et al., 2022).

For each label, the image embedding is compared with a positive and a negative prompt embedding
(each the renormalised mean of its normalised prompt ensemble, see tier_openclip/prompts.py);
the score is ``softmax(logit_scale · [sim_pos, sim_neg])[0]``. Per label: ROC AUC (scikit-learn's
roc_auc_score) over the images whose label is known, with a percentile bootstrap confidence
interval that resamples images (jointly for all labels, so the CI of the mean AUC is one of a mean
over the same images; each resample's AUC is the same statistic, computed in bulk);
resamples where a label has a single class are skipped for that label (and for the means that
include it). Labels with no positives, no negatives or fewer than ``min_positives`` positives are
reported as skipped and left out of the means.

Evaluation sets come from ``tier-openclip prep chexpert|padchest``: a folder with ``labels.csv``
(column ``image``, a path relative to the folder, then one column per label: 1, 0, or blank for
unknown) and ``meta.json`` ({"dataset", "labels", "competition_labels", "counts"}).

Used three ways: ``tier-openclip eval zeroshot`` (JSON + markdown table), ``zeroshot_evaluate``
(Python), and ``zeroshot_during_training`` (called by the training plugin after each epoch).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tier_openclip import openclip_adapter as adapter
from tier_openclip.prompts import PromptsArg, PromptSet, resolve_prompts

DATASETS = ("chexpert", "padchest")
# PadChest has many rare labels: an AUC over a handful of positives is noise.
DEFAULT_MIN_POSITIVES = {"chexpert": 1, "padchest": 10}
GROUP_TITLES = {"competition": "CheXpert competition labels", "all": "all labels"}
logger = logging.getLogger("tier_openclip")


# --- evaluation sets ----------------------------------------------------------------------------


@dataclass
class EvalSet:
    directory: Path
    dataset: str | None  # "chexpert" / "padchest" from meta.json
    labels: list[str]
    images: list[Path]
    targets: Any  # np.ndarray (N, L) float: 1, 0, NaN for unknown
    competition_labels: list[str] = field(default_factory=list)


def _parse_target(value: str, where: str) -> float:
    value = value.strip()
    if value == "":
        return math.nan
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number not in (0.0, 1.0):
        raise ValueError(f"{where}: {value!r} is not a label; expected 1, 0 or blank (unknown). "
                         "Uncertain CheXpert labels (-1) must be mapped by `tier-openclip prep`.")
    return number


def read_meta(directory: str | Path) -> dict[str, Any]:
    """An evaluation set's meta.json ({} when it has none); ValueError when it is not the object
    `tier-openclip prep` writes."""
    path = Path(directory) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); make the set again with `tier-openclip prep`") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a JSON {type(meta).__name__}, not the object `tier-openclip prep` writes")
    for key in ("labels", "competition_labels"):
        if meta.get(key) is not None and not (isinstance(meta[key], list) and all(isinstance(x, str) for x in meta[key])):
            raise ValueError(f"{path}: {key!r} must be a list of label names")
    if meta.get("dataset") is not None and not isinstance(meta["dataset"], str):
        raise ValueError(f"{path}: 'dataset' must be a name such as 'chexpert'")
    return meta


def _image_inside(directory: Path, relative: str, where: str) -> Path:
    """An image path of labels.csv, which must name a file inside the set's folder."""
    from tier_openclip.data_prep.paths import UnsafePathError, resolve_inside

    try:
        return resolve_inside(directory, relative)
    except UnsafePathError as error:
        raise ValueError(f"{where}: image {error.detail}") from None


def read_eval_set(directory: str | Path, labels: Sequence[str] | None = None) -> EvalSet:
    """labels.csv and meta.json of an evaluation set; ``labels`` selects columns (default: meta's labels)."""
    import numpy as np

    directory = Path(directory)
    csv_path, meta_path = directory / "labels.csv", directory / "meta.json"
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} not found: make the evaluation set with `tier-openclip prep chexpert|padchest`")
    meta = read_meta(directory)
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c != "image"]
        if "image" not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path} has no 'image' column (columns: {reader.fieldnames})")
        rows = list(reader)
    available = list(meta.get("labels") or columns)
    if labels is None:
        selected = available
    else:
        by_name = {c.lower(): c for c in columns}
        unknown = [name for name in labels if name.lower() not in by_name]
        if unknown:
            raise ValueError(f"labels {unknown} are not columns of {csv_path}; available: {', '.join(columns)}")
        selected = [by_name[name.lower()] for name in labels]
    missing_columns = [name for name in selected if name not in columns]
    if missing_columns:
        raise ValueError(f"meta.json lists labels {missing_columns} that {csv_path} has no column for")
    targets = np.array(
        [[_parse_target(row[name] or "", f"{csv_path} row {i + 2}, {name}") for name in selected] for i, row in enumerate(rows)],
        dtype=np.float64,
    ).reshape(len(rows), len(selected))
    images = [_image_inside(directory, row["image"] or "", f"{csv_path} row {i + 2}") for i, row in enumerate(rows)]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {csv_path} do not exist, e.g. {missing[:3]}")
    dataset = meta.get("dataset")
    # The CheXpert competition tasks (Irvin et al., 2019), when meta.json does not list them.
    from tier_openclip.data_prep.eval_sets import CHEXPERT_COMPETITION_LABELS

    competition = list(meta.get("competition_labels") or (CHEXPERT_COMPETITION_LABELS if dataset == "chexpert" else []))
    return EvalSet(directory, dataset, selected, images, targets, [c for c in competition if c in selected])


# --- AUC and bootstrap intervals (pure) ---------------------------------------------------------


def _quantiles(values, confidence: float) -> list[float] | None:
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

    boot = bootstrap_aucs(scores, targets, evaluated, bootstrap, seed)  # (B, L), NaN where skipped
    for j in evaluated:
        valid = boot[:, j][~np.isnan(boot[:, j])]
        per_label[labels[j]]["ci"] = _quantiles(valid, confidence)
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
            "ci": _quantiles(boot_means, confidence),
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


# --- model scoring ------------------------------------------------------------------------------


class _ImageFiles:
    """Map-style dataset of preprocessed images (any object with __getitem__/__len__ works for DataLoader)."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        # A file that is not an image comes back as its message (collated by _stack_or_errors):
        # raised inside a DataLoader worker, its error would reach the user wrapped in a traceback.
        try:
            with Image.open(self.paths[i]) as image:
                return self.preprocess(image.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 -- UnidentifiedImageError, truncated files (OSError), ...
            return f"{self.paths[i]} is not a readable image ({type(exc).__name__}: {exc})"


def _stack_or_errors(items: list):
    """The batch tensor, or the list of messages of the images that could not be read."""
    import torch

    errors = [item for item in items if isinstance(item, str)]
    return errors if errors else torch.stack(items)


def prompt_embeddings(model: Any, tokenizer: Callable, prompt_sets: Mapping[str, PromptSet], device: str):
    """(L, 2, E) normalised [positive, negative] ensemble embeddings: the mean of the normalised
    prompt embeddings, renormalised (CheXzero)."""
    import torch
    import torch.nn.functional as F

    classes = []
    for entry in prompt_sets.values():
        pair = []
        for kind in ("positive", "negative"):
            features = model.encode_text(tokenizer(entry[kind]).to(device), normalize=True).float()
            pair.append(F.normalize(features.mean(dim=0), dim=-1))
        classes.append(torch.stack(pair))
    return torch.stack(classes)


def zeroshot_scores(
    model: Any,
    preprocess: Callable,
    tokenizer: Callable,
    images: Sequence[Path],
    prompt_sets: Mapping[str, PromptSet],
    batch_size: int = 64,
    device: str = "cpu",
    num_workers: int = 0,
):
    """(N, L) numpy scores softmax(logit_scale · [sim_pos, sim_neg])[0] for each image and label."""
    import torch

    model = adapter.unwrap_model(model)
    dtype = next(model.visual.parameters()).dtype  # fp16/bf16 models take images in their dtype
    loader = torch.utils.data.DataLoader(_ImageFiles(images, preprocess), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False, collate_fn=_stack_or_errors)
    with torch.inference_mode():
        classes = prompt_embeddings(model, tokenizer, prompt_sets, device)
        logit_scale = model.logit_scale.exp().float()
        scores = []
        for batch in loader:
            if isinstance(batch, list):
                raise ValueError(batch[0] + (f" (and {len(batch) - 1} more in this batch)" if len(batch) > 1 else ""))
            features = model.encode_image(batch.to(device=device, dtype=dtype), normalize=True).float()
            logits = logit_scale * torch.einsum("ne,lke->nlk", features, classes)
            scores.append(logits.softmax(dim=-1)[..., 0].cpu())
    return torch.cat(scores).numpy() if scores else torch.empty(0, len(prompt_sets)).numpy()


def zeroshot_evaluate(
    model: Any,
    preprocess: Callable,
    tokenizer: Callable,
    data_dir: str | Path,
    labels: Sequence[str] | None = None,
    prompts: PromptsArg = None,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    min_positives: int | None = None,
    confidence: float = 0.95,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Zero-shot AUCs of ``model`` on an evaluation set folder (see the module docstring).

    prompts: a prompt file path or a {label: {"positive": [...], "negative": [...]}} mapping
    (default "{label}" vs "no {label}"). min_positives: default 10 for PadChest, 1 otherwise.
    Returns auc_report's dict plus "dataset", "data_dir", "num_images", the settings, and each
    evaluated label's prompts; means are "all" (every evaluated label) and, for CheXpert,
    "competition" (the 5 competition labels).
    """
    eval_set = read_eval_set(data_dir, labels)
    if min_positives is None:
        min_positives = DEFAULT_MIN_POSITIVES.get(eval_set.dataset or "", 1)
    prompt_sets = resolve_prompts(eval_set.labels, prompts)
    scores = zeroshot_scores(model, preprocess, tokenizer, eval_set.images, prompt_sets, batch_size, device, num_workers)
    groups = {"all": eval_set.labels}
    if eval_set.competition_labels:
        groups = {"competition": eval_set.competition_labels, **groups}
    report = auc_report(scores, eval_set.targets, eval_set.labels, groups, bootstrap, seed, confidence, min_positives)
    for label, entry in report["labels"].items():
        entry["prompts"] = prompt_sets[label]
    return {
        "dataset": eval_set.dataset,
        "data_dir": str(eval_set.directory),
        "num_images": len(eval_set.images),
        "bootstrap": bootstrap,
        "seed": seed,
        "confidence": confidence,
        "min_positives": min_positives,
        **report,
    }


# --- reporting ----------------------------------------------------------------------------------


def _ci_text(ci: list[float] | None) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "–"


def results_markdown(results: Mapping[str, Any]) -> str:
    """A markdown table of zeroshot_evaluate's results: one row per label, then the means."""
    percent = round(100 * results.get("confidence", 0.95))
    title = f"Zero-shot AUC, {results.get('dataset') or 'evaluation set'} ({results['num_images']} images)"
    lines = [f"### {title}", ""]
    if results.get("bootstrap"):
        lines += [f"{percent}% CIs from {results['bootstrap']} bootstrap resamples of the images (seed {results['seed']}).", ""]
    lines += [f"| Label | AUC | {percent}% CI | Positives | Negatives |", "|:--|--:|:-:|--:|--:|"]
    for label, entry in results["labels"].items():
        lines.append(f"| {label} | {entry['auc']:.3f} | {_ci_text(entry['ci'])} | {entry['positives']} | {entry['negatives']} |")
    for group, entry in results["means"].items():
        name = f"Mean, {GROUP_TITLES.get(group, group)} ({len(entry['labels'])})"
        lines.append(f"| **{name}** | **{entry['mean_auc']:.3f}** | {_ci_text(entry['ci'])} | | |")
    if results.get("skipped"):
        skipped = ", ".join(f"{label} ({entry['reason']})" for label, entry in results["skipped"].items())
        lines += ["", f"Skipped: {skipped}."]
    return "\n".join(lines) + "\n"


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def training_metrics(results: Mapping[str, Any], dataset: str) -> dict[str, float]:
    """Flat metric names as logged during training: '<dataset>-zeroshot-mean-auc' (all evaluated
    labels), '<dataset>-zeroshot-mean-auc-competition' (CheXpert), '<dataset>-zeroshot-auc-<label>'."""
    metrics = {}
    for group, entry in results["means"].items():
        suffix = "" if group == "all" else f"-{group}"
        metrics[f"{dataset}-zeroshot-mean-auc{suffix}"] = entry["mean_auc"]
    for label, entry in results["labels"].items():
        metrics[f"{dataset}-zeroshot-auc-{_slug(label)}"] = entry["auc"]
    return metrics


# --- during training ----------------------------------------------------------------------------


def zeroshot_during_training(model: Any, completed_epoch: int, args: Any, tb_writer: Any = None) -> dict[str, float]:
    """Zero-shot AUCs on --tier-zeroshot-chexpert / --tier-zeroshot-padchest after an epoch.

    Runs on rank 0 every --zeroshot-frequency epochs and after the last one (never when the
    frequency is 0), without bootstrap. Logs like open_clip's own evaluation: the log, a JSON line
    in checkpoints/results.jsonl, TensorBoard and wandb under "val/". Returns the metrics.
    """
    frequency = getattr(args, "zeroshot_frequency", 0)
    if getattr(args, "rank", 0) != 0 or not frequency:
        return {}
    if completed_epoch % frequency and completed_epoch != getattr(args, "epochs", None):
        return {}
    sets = [(name, getattr(args, f"tier_zeroshot_{name}", None)) for name in DATASETS]
    sets = [(name, directory) for name, directory in sets if directory]
    if not sets:
        return {}

    inner = adapter.unwrap_model(model)
    was_training = inner.training
    metrics: dict[str, float] = {}
    try:
        tokenizer = adapter.symbol("get_tokenizer")(args.model)
        preprocess_cfg = adapter.symbol("PreprocessCfg")(**adapter.symbol("get_model_preprocess_cfg")(inner))
        preprocess = adapter.symbol("image_transform_v2")(preprocess_cfg, is_train=False)
        inner.eval()
        for dataset, directory in sets:
            # The folders were checked at start-up (check_training_set); whatever still fails here
            # (a file changed since, memory) is logged: it must not cost the run its checkpoint.
            try:
                results = zeroshot_evaluate(
                    inner, preprocess, tokenizer, directory, bootstrap=0, batch_size=getattr(args, "batch_size", 64),
                    device=str(getattr(args, "device", "cpu")), num_workers=getattr(args, "workers", 0),
                )
                if results["dataset"] not in (None, dataset):
                    raise ValueError(f"{directory} holds a {results['dataset']} set (meta.json)")
            except Exception as exc:  # noqa: BLE001
                logging.error(f"Zero-shot evaluation on --tier-zeroshot-{dataset} {directory} failed after epoch "
                              f"{completed_epoch}; training goes on: {type(exc).__name__}: {exc}")
                continue
            metrics.update(training_metrics(results, dataset))
    except Exception as exc:  # noqa: BLE001 -- building the tokenizer or transform
        logging.error(f"Zero-shot evaluation failed after epoch {completed_epoch}; training goes on: "
                      f"{type(exc).__name__}: {exc}")
    finally:
        inner.train(was_training)
    if not metrics:
        return {}

    log_validation_metrics("Zero-shot", metrics, completed_epoch, args, tb_writer)
    return metrics


def log_validation_metrics(kind: str, metrics: Mapping[str, float], completed_epoch: int, args: Any,
                           tb_writer: Any = None) -> None:
    """Log in-training evaluation figures as open_clip logs its own: the log, a JSON line in
    checkpoints/results.jsonl, TensorBoard and wandb under "val/"."""
    logging.info(f"{kind} Epoch: {completed_epoch} " + "\t".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    if getattr(args, "save_logs", True) and getattr(args, "checkpoint_path", None):
        with open(os.path.join(args.checkpoint_path, "results.jsonl"), "a+") as f:
            f.write(json.dumps({"epoch": completed_epoch, **metrics}) + "\n")
    if tb_writer is not None:
        for name, value in metrics.items():
            tb_writer.add_scalar(f"val/{name}", value, completed_epoch)
    if getattr(args, "wandb", False):
        import wandb

        wandb.log({**{f"val/{name}": value for name, value in metrics.items()}, "epoch": completed_epoch})


def check_training_set(dataset: str, directory: str | None) -> str | None:
    """Why --tier-zeroshot-<dataset> DIR cannot be evaluated (read at start-up, before any training), or None."""
    if not directory:
        return None
    try:
        eval_set = read_eval_set(directory)
    except (OSError, ValueError) as exc:
        return f"--tier-zeroshot-{dataset} {directory}: {exc}"
    if eval_set.dataset not in (None, dataset):
        return (f"--tier-zeroshot-{dataset} {directory} holds a {eval_set.dataset} set (meta.json); "
                f"pass it as --tier-zeroshot-{eval_set.dataset}")
    return None


# --- command line -------------------------------------------------------------------------------


def add_eval_parser(subparsers: Any) -> None:
    """`tier-openclip eval zeroshot ...`, `tier-openclip eval grounding ...` (tier_openclip/grounding.py)
    and `tier-openclip eval segmentation ...` (tier_openclip/segmentation.py)"""
    from tier_openclip.grounding import add_grounding_parser
    from tier_openclip.segmentation import add_segmentation_parser

    parser = subparsers.add_parser("eval", help="Evaluate a model (zero-shot classification, phrase grounding, "
                                                "linear-probe segmentation).",
                                   description="Evaluate a trained model.")
    tasks = parser.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    zs = tasks.add_parser(
        "zeroshot",
        help="Zero-shot AUC per label on CheXpert or PadChest (CheXzero protocol), with bootstrap CIs.",
        description="Zero-shot classification by the CheXzero protocol: per label, softmax over the image's "
                    "similarity to a positive and a negative prompt ('{label}' vs 'no {label}' by default), "
                    "ROC AUC per label with bootstrap confidence intervals, and mean AUC (CheXpert: over the "
                    "5 competition labels and over all labels). Prints a markdown table; --out also writes "
                    "JSON and the table next to it (results.md).",
    )
    zs.add_argument("--model", required=True,
                    help="open_clip model name (e.g. TIER-tiny), or hf-hub:ORG/NAME / local-dir:PATH.")
    zs.add_argument("--pretrained", default=None,
                    help="Weights: a training checkpoint (epoch_N.pt), .safetensors/.bin file or open_clip tag "
                         "(not needed with hf-hub:/local-dir: models).")
    zs.add_argument("--dataset", required=True, choices=DATASETS,
                    help="Which evaluation set --data holds (checked against its meta.json).")
    zs.add_argument("--data", required=True, metavar="DIR",
                    help="Evaluation set from `tier-openclip prep chexpert|padchest` (labels.csv + meta.json).")
    zs.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                    help="Evaluate only these labels (quote names with spaces). Default: all labels of the set.")
    zs.add_argument("--prompts", default=None, metavar="FILE",
                    help='JSON prompt file {label: {"positive": [...], "negative": [...]}}; each list is an '
                         "ensemble. Labels it does not name use '{label}' vs 'no {label}'.")
    zs.add_argument("--out", default=None, metavar="FILE.json",
                    help="Write results JSON here, and the markdown table next to it (same name, .md).")
    zs.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                    help="Bootstrap resamples for the confidence intervals (default 1000; 0: no intervals).")
    zs.add_argument("--confidence", type=float, default=0.95, help="Confidence level of the intervals (default 0.95).")
    zs.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap resampling (default 0).")
    zs.add_argument("--min-positives", type=int, default=None, metavar="N",
                    help="Skip labels with fewer positive images. Default: 10 for PadChest, 1 for CheXpert.")
    zs.add_argument("--batch-size", type=int, default=64, help="Images per forward pass (default 64).")
    zs.add_argument("--workers", type=int, default=2, help="Image loading processes (default 2).")
    zs.add_argument("--device", default=None, help="torch device. Default: cuda if available, else cpu.")
    zs.set_defaults(func=run_zeroshot)
    add_grounding_parser(tasks)
    add_segmentation_parser(tasks)


def run_zeroshot(args: argparse.Namespace) -> int:
    import torch

    from tier_openclip.errors import CommandError, UsageError, input_file, output_file
    from tier_openclip.models import check_pretrained, load_model

    # Everything the command line alone can show wrong is checked before the model loads.
    if args.bootstrap < 0 or not 0 < args.confidence < 1 or args.batch_size < 1 or args.workers < 0:
        raise UsageError("--bootstrap must be >= 0, --confidence in (0, 1), --batch-size >= 1 and --workers >= 0")
    data = Path(args.data)
    if not data.is_dir():
        raise UsageError(f"--data {data}: no such folder")
    if not (data / "labels.csv").is_file():
        raise UsageError(f"--data {data} is not an evaluation set (no labels.csv): make one with "
                         "`tier-openclip prep chexpert|padchest`")
    if args.prompts:
        input_file(args.prompts, "--prompts")
    out = output_file(args.out, "--out", example="results.json", make_parent=True) if args.out else None
    if out is not None and out.with_suffix(".md") == out:
        raise UsageError(f"--out {out}: the table goes next to the JSON as {out.name}; name the JSON e.g. "
                         f"{out.with_suffix('.json').name}")
    check_pretrained(args.model, args.pretrained)
    try:
        eval_set = read_eval_set(data)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if eval_set.dataset and eval_set.dataset != args.dataset:
        raise UsageError(f"--data {data} holds a {eval_set.dataset} set, not {args.dataset}; pass --dataset {eval_set.dataset}")
    known = {label.lower() for label in eval_set.labels}
    unknown = [label for label in args.labels or () if label.lower() not in known]
    if unknown:
        raise UsageError(f"--labels {unknown} are not labels of {data}; it has: {', '.join(eval_set.labels)}")
    try:
        resolve_prompts(eval_set.labels, args.prompts)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--prompts {args.prompts}: {exc}") from None

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(args.model, args.pretrained, device=device)
    try:
        results = zeroshot_evaluate(
            loaded.model, loaded.preprocess, loaded.tokenizer, data, labels=args.labels, prompts=args.prompts,
            bootstrap=args.bootstrap, seed=args.seed, batch_size=args.batch_size, device=device,
            min_positives=args.min_positives, confidence=args.confidence, num_workers=args.workers,
        )
    except (OSError, ValueError) as exc:  # an image that cannot be read, a file changed meanwhile
        raise CommandError(str(exc)) from None
    results = {"model": args.model, "pretrained": args.pretrained, "prompts_file": args.prompts, **results}
    results["dataset"] = results["dataset"] or args.dataset
    table = results_markdown(results)
    print(table, end="")
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
        out.with_suffix(".md").write_text(table)
        print(f"\nWrote {out} and {out.with_suffix('.md')}")
    return 0

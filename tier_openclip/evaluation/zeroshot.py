"""Zero-shot chest X-ray classification AUC, by the CheXzero protocol (Tiu et al., 2022).

For each label, the image embedding is compared with a positive and a negative prompt embedding
(each the renormalised mean of its normalised prompt ensemble, see tier_openclip/evaluation/prompts.py).
CheXzero scores ``softmax(logit_scale · [sim_pos, sim_neg])[0]`` = ``sigmoid(logit_scale · (sim_pos −
sim_neg))``, a monotone function of ``sim_pos − sim_neg``; we score with that difference itself, in
float64 (``zeroshot_scores``), so the AUC is CheXzero's computed exactly. (The softmax in float32
rounds to exactly 1.0 once the difference exceeds ~0.166 at logit scale 100, and the ties it
makes lower the AUC: benchmarks/zeroshot_saturation.py measures by how much.) ``zeroshot_probability`` gives CheXzero's probability from
the scores, in float64, where one is wanted. Per label: ROC AUC (scikit-learn's
roc_auc_score) over the images whose label is known, with a percentile bootstrap confidence
interval that resamples images (jointly for all labels, so the CI of the mean AUC is one of a mean
over the same images; each resample's AUC is the same statistic, computed in bulk);
resamples where a label has a single class are skipped for that label (and for the means that
include it). Labels with no positives, no negatives or fewer than ``min_positives`` positives are
reported as skipped and left out of the means.

Evaluation sets come from ``tier-openclip prep chexpert|padchest``: a folder with ``labels.csv``
(column ``image``, a path relative to the folder, then one column per label: 1, 0, or blank for
unknown) and ``meta.json`` ({"dataset", "labels", "competition_labels", "counts"}); the layout's
one reader and writer is ``data_prep/eval_layout.py``.

Used three ways: ``tier-openclip eval zeroshot`` (JSON + markdown table; tier_openclip/commands/eval_cli.py),
``zeroshot_evaluate`` (Python), and ``zeroshot_during_training`` (called by the training plugin
after each epoch). The AUCs and their intervals are tier_openclip/evaluation/bootstrap.py's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from tier_openclip import openclip_adapter as adapter
from tier_openclip.evaluation.authors_protocol import AUTHORS_CHEXPERT_LABELS, PADCHEST_FINDINGS
from tier_openclip.evaluation.bootstrap import auc_report
# The evaluation sets' layout (labels.csv, meta.json) is written and read by data_prep.eval_layout.
from tier_openclip.data_prep.eval_layout import read_eval_set
from tier_openclip.evaluation.image_files import ImageFiles, checked_batch, stack_or_errors
from tier_openclip.evaluation.prompts import PromptsArg, PromptSet, resolve_prompts
from tier_openclip.evaluation.validation_log import eval_transforms, log_validation_metrics

DATASETS = ("chexpert", "padchest")
# PadChest has many rare labels: an AUC over a handful of positives is noise.
DEFAULT_MIN_POSITIVES = {"chexpert": 1, "padchest": 10}
GROUP_TITLES = {"competition": "CheXpert competition labels", "tier57": "the TIER paper's PadChest findings",
                "all": "all labels"}


# --- model scoring ------------------------------------------------------------------------------


def prompt_embeddings(model: Any, tokenizer: Callable, prompt_sets: Mapping[str, PromptSet], device: str):
    """(L, 2, E) normalised [positive, negative] ensemble embeddings: the mean of the normalised
    prompt embeddings, renormalised (CheXzero). An empty negative list gives a zero vector: the
    label is scored by its positive prompt alone."""
    import torch
    import torch.nn.functional as F

    classes = []
    for entry in prompt_sets.values():
        pair = []
        for kind in ("positive", "negative"):
            if not entry[kind]:
                pair.append(pair[0].new_zeros(pair[0].shape))
                continue
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
    """(N, L) float64 numpy scores sim_pos − sim_neg for each image and label: a monotone transform
    of CheXzero's softmax(logit_scale · [sim_pos, sim_neg])[0], so the AUCs are the same, without
    the float32 softmax's saturation (see the module docstring); sim_pos alone for a label without
    negative prompts."""
    import torch

    model = adapter.unwrap_model(model)
    dtype = next(model.visual.parameters()).dtype  # fp16/bf16 models take images in their dtype
    loader = torch.utils.data.DataLoader(ImageFiles(images, preprocess), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False, collate_fn=stack_or_errors)
    with torch.inference_mode():
        # float64 on the CPU (some accelerators have no float64): an (N, E) matrix per batch, cheap.
        classes = prompt_embeddings(model, tokenizer, prompt_sets, device).cpu().double()
        scores = []
        for batch in loader:
            batch = checked_batch(batch)
            features = model.encode_image(batch.to(device=device, dtype=dtype), normalize=True).cpu().double()
            similarities = torch.einsum("ne,lke->nlk", features, classes)
            scores.append(similarities[..., 0] - similarities[..., 1])
    return torch.cat(scores).numpy() if scores else torch.empty(0, len(prompt_sets), dtype=torch.float64).numpy()


def zeroshot_probability(scores: Any, logit_scale: float) -> Any:
    """CheXzero's probability softmax(logit_scale · [sim_pos, sim_neg])[0] from zeroshot_scores'
    differences: sigmoid(logit_scale · difference), in float64 (well-defined for any score). Only
    for labels with negative prompts: a positive-only score is a cosine, not a difference."""
    import numpy as np

    # sigmoid(x) = (1 + tanh(x / 2)) / 2: no overflow for any x (exp(-x) would overflow below -709).
    return 0.5 * (1.0 + np.tanh(0.5 * float(logit_scale) * np.asarray(scores, dtype=np.float64)))


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

    prompts: a named prompt set ("authors"), a prompt file path or a {label: {"positive": [...],
    "negative": [...]}} mapping (default "{label}" vs "no {label}"). min_positives: default 10 for
    PadChest, 1 otherwise. Returns auc_report's dict plus "dataset", "split" (meta.json's, e.g.
    CheXpert "valid" or "test"), "data_dir", "num_images", the settings, and each evaluated
    label's prompts; means are "all" (every evaluated label), for CheXpert "competition" (the 5
    competition labels) and for PadChest "tier57" (those of the TIER paper's 57 findings evaluated).
    """
    eval_set = read_eval_set(data_dir, labels)
    if min_positives is None:
        min_positives = DEFAULT_MIN_POSITIVES.get(eval_set.dataset or "", 1)
    prompt_sets = resolve_prompts(eval_set.labels, prompts, eval_set.dataset)
    scores = zeroshot_scores(model, preprocess, tokenizer, eval_set.images, prompt_sets, batch_size, device, num_workers)
    groups = {"all": eval_set.labels}
    if eval_set.competition_labels:
        groups = {"competition": eval_set.competition_labels, **groups}
    if eval_set.dataset == "padchest":
        # PadChest labels are lower-cased by `prep padchest`; the authors spell "COPD signs".
        paper = {finding.lower() for finding in PADCHEST_FINDINGS}
        tier57 = [label for label in eval_set.labels if label.lower() in paper]
        if tier57:
            groups = {"tier57": tier57, **groups}
    report = auc_report(scores, eval_set.targets, eval_set.labels, groups, bootstrap, seed, confidence, min_positives)
    for label, entry in report["labels"].items():
        entry["prompts"] = prompt_sets[label]
    return {
        "dataset": eval_set.dataset,
        "split": eval_set.split,
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
    split = f" {results['split']}" if results.get("split") else ""  # CheXpert: valid (tune) or test (report)
    title = f"Zero-shot AUC, {results.get('dataset') or 'evaluation set'}{split} ({results['num_images']} images)"
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


def _auc_cell(value: float | None, note: str = "") -> str:
    return "–" if value is None else f"{value:.3f}{note}"


def _paper_row(name: str, results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """One model's cells and its footnotes, from its CheXpert and/or PadChest results."""
    by_dataset: dict[str, Mapping[str, Any]] = {}
    for result in results:
        dataset = result.get("dataset")
        if dataset not in DATASETS:
            raise ValueError(f"row {name!r}: results of dataset {dataset!r}; the paper's table takes chexpert and padchest")
        if dataset in by_dataset:
            raise ValueError(f"row {name!r}: two {dataset} results; give one CheXpert and one PadChest file per row")
        by_dataset[dataset] = result
    cells, notes = [], []
    chexpert = by_dataset.get("chexpert")
    labels = chexpert["labels"] if chexpert else {}
    cells += [_auc_cell(labels[label]["auc"]) if label in labels else "–" for label in AUTHORS_CHEXPERT_LABELS]
    mean = (chexpert or {}).get("means", {}).get("competition")
    count = len(mean["labels"]) if mean else 0
    cells.append(_auc_cell(mean["mean_auc"] if mean else None, "" if count in (0, 5) else f" ({count} of 5)"))
    if chexpert:
        notes.append(f"CheXpert {chexpert.get('split') or 'split unknown'}, {chexpert['num_images']} images")
    padchest = by_dataset.get("padchest")
    mean = (padchest or {}).get("means", {}).get("tier57")
    count = len(mean["labels"]) if mean else 0
    cells.append(_auc_cell(mean["mean_auc"] if mean else None, "" if count in (0, 57) else f" ({count} of 57)"))
    if padchest:
        notes.append(f"PadChest {padchest['num_images']} images, min. {padchest.get('min_positives')} positives")
    prompts = {r.get("prompts_set") or r.get("prompts_file") or "CheXzero's default" for r in by_dataset.values()}
    notes.append("prompts: " + ", ".join(sorted(prompts)))
    return cells, notes


def paper_table_markdown(rows: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> str:
    """The TIER paper's zero-shot table from ``tier-openclip eval zeroshot`` results (the same JSON):
    one row per (model name, [its CheXpert results, its PadChest results]); columns the 5 CheXpert
    labels in the authors' order, their mean, and the mean over the paper's 57 PadChest findings
    (the "tier57" mean; "k of 57" when fewer were evaluated), then a chance row. ValueError when a
    row's results are not one CheXpert and/or one PadChest evaluation."""
    header = ["Model", *AUTHORS_CHEXPERT_LABELS, "CheXpert mean (5)", "PadChest mean (57)"]
    lines = ["### Zero-shot AUC (the TIER paper's layout)", "", "| " + " | ".join(header) + " |",
             "|:--|" + "--:|" * (len(header) - 1)]
    footnotes = []
    for name, results in rows:
        cells, notes = _paper_row(name, results)
        lines.append("| " + " | ".join([name, *cells]) + " |")
        footnotes.append(f"- {name}: {'; '.join(notes)}.")
    # An image-free score (a constant, or any score that ignores the image) ranks no positive
    # above a negative on average: AUC 0.5 for every label and so for every mean.
    lines.append("| Chance (any image-free score) | " + " | ".join(["0.500"] * (len(header) - 1)) + " |")
    return "\n".join([*lines, "", *footnotes]) + "\n"


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
    """Zero-shot AUCs on --tier-zeroshot-chexpert / --tier-zeroshot-padchest after an epoch, with
    --tier-zeroshot-prompts (a prompt file or a named set; default CheXzero's prompts).

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
        tokenizer, preprocess = eval_transforms(inner, args.model)
        inner.eval()
        for dataset, directory in sets:
            # The folders were checked at start-up (check_training_set); whatever still fails here
            # (a file changed since, memory) is logged: it must not cost the run its checkpoint.
            try:
                results = zeroshot_evaluate(
                    inner, preprocess, tokenizer, directory, prompts=getattr(args, "tier_zeroshot_prompts", None),
                    bootstrap=0, batch_size=getattr(args, "batch_size", 64),
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


def check_training_set(dataset: str, directory: str | None, prompts: PromptsArg = None) -> str | None:
    """Why --tier-zeroshot-<dataset> DIR cannot be evaluated with --tier-zeroshot-prompts ``prompts``
    (read at start-up, before any training), or None."""
    if not directory:
        return None
    try:
        eval_set = read_eval_set(directory)
    except (OSError, ValueError) as exc:
        return f"--tier-zeroshot-{dataset} {directory}: {exc}"
    if eval_set.dataset not in (None, dataset):
        return (f"--tier-zeroshot-{dataset} {directory} holds a {eval_set.dataset} set (meta.json); "
                f"pass it as --tier-zeroshot-{eval_set.dataset}")
    try:
        resolve_prompts(eval_set.labels, prompts, eval_set.dataset or dataset)
    except (OSError, ValueError) as exc:
        return f"--tier-zeroshot-prompts {prompts}: {exc}"
    return None

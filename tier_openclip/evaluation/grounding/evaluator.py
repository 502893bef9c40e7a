"""Grounding of a model: its phrase maps on a grounding set, the results schema (JSON), its
markdown, the training hook (``--tier-grounding DIR``) and ``tier-openclip eval grounding``."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tier_openclip.cli_common import add_model_flags, add_run_flags
from tier_openclip.data_prep.eval_layout import read_grounding_set, region_mask
from tier_openclip.evaluation.grounding.baselines import (PRIOR_SOURCES, PriorMaps, chance_pointing, location_words,
                                                          random_map_metrics)
from tier_openclip.evaluation.grounding.competition import OWN_LESION, competitors, own_lesion_summary
from tier_openclip.evaluation.grounding.geometry import MapGeometry, grid_shape, resize_mode_of, upsample_maps
from tier_openclip.evaluation.grounding.metrics import (CNR_EPS, METRICS, THRESHOLDS, bootstrap_means, grounding_metrics,
                                                        own_lesion, own_lesion_chance)
from tier_openclip.evaluation.image_files import ImageFiles, checked_batch, stack_or_errors

PHRASE_MODES = ("tokens", "pooled", "cam")
# Maps whose patches are not L2-normalised: "cam" keeps each patch's length, its weight in the mean.
_RAW_PATCH_MODES = ("cam",)


def summarise(per_phrase: Sequence[Mapping[str, Any]], labels: Sequence[str], bootstrap: int, seed: int,
              confidence: float = 0.95, exclude: Sequence[str] = ()) -> tuple[dict, dict]:
    """("overall", "per_finding") entries: each metric's mean over phrases and its bootstrap CI;
    "overall" leaves out the phrases of the findings in ``exclude``."""

    def entry(rows: Sequence[Mapping[str, Any]], group_seed: int) -> dict:
        values = np.array([[row[m] for m in METRICS] for row in rows], dtype=np.float64).reshape(len(rows), len(METRICS))
        cis = bootstrap_means(values, bootstrap, group_seed, confidence)
        out: dict[str, Any] = {m: {"value": float(values[:, j].mean()), "ci": cis[j]} for j, m in enumerate(METRICS)}
        out["phrases"] = len(rows)
        return out

    per_finding = {}
    for i, finding in enumerate(labels):
        rows = [row for row in per_phrase if row["finding"] == finding]
        if rows:
            per_finding[finding] = entry(rows, seed + 1 + i)
    return entry([row for row in per_phrase if row["finding"] not in exclude], seed), per_finding


def _baseline(per_phrase: Sequence[Mapping[str, Any]], key: str, labels: Sequence[str],
              exclude: Sequence[str] = ()) -> dict[str, Any]:
    def means(rows):
        return {m: float(np.mean([row[key][m] for row in rows])) if rows else None for m in METRICS}

    by_finding = {f: means([r for r in per_phrase if r["finding"] == f]) for f in labels
                  if any(r["finding"] == f for r in per_phrase)}
    return {**means([r for r in per_phrase if r["finding"] not in exclude]), "per_finding": by_finding}


def _by_location_words(rows: Sequence[Mapping[str, Any]], priors: Sequence[str], bootstrap: int, seed: int,
                       confidence: float) -> dict[str, Any]:
    """The overall numbers and baselines of the phrases that name a location ("with") and of those
    that do not ("without"): on the second kind the located prior is the finding's prior, and only
    the image can tell a model where to point."""
    out = {}
    for kind, named in (("with", True), ("without", False)):
        subset = [row for row in rows if bool(location_words(row["phrase"])) == named]
        if subset:
            overall, _ = summarise(subset, [], bootstrap, seed, confidence)
            overall["baselines"] = {name: {m: float(np.mean([row[name][m] for row in subset])) for m in METRICS}
                                    for name in ("random", *priors) if all(name in row for row in subset)}
            out[kind] = overall
    return out


def phrase_embeddings(model: Any, tokenizer: Callable, texts: Sequence[str], phrase_mode: str, device: str,
                      batch_size: int = 64) -> list:
    """Per text: its valid token embeddings (T, E) ('tokens') or pooled embedding (1, E) ('pooled', 'cam')."""
    from tier_openclip.features import token_features

    out = []
    for first in range(0, len(texts), batch_size):
        features = token_features(model, texts=tokenizer(list(texts[first : first + batch_size])).to(device))
        for n in range(features["text_features"].shape[0]):
            if phrase_mode != "tokens":
                out.append(features["text_features"][n : n + 1].float())
            else:
                valid = features["text_mask"][n]
                if not bool(valid.any()):
                    raise ValueError(f"phrase {texts[first + n]!r} has no valid token")
                out.append(features["text_tokens"][n][valid].float())
    return out


def phrase_maps(patches: Any, embeddings: Sequence[Any], geometry: MapGeometry) -> np.ndarray:
    """(phrases, height, width) maps on the stored image: per phrase, the mean over its embeddings
    (:func:`phrase_embeddings`: its valid tokens, or its one pooled embedding) of their dot
    products with each patch of ``patches`` (P, E: unit length for cosine maps, raw for CAM),
    laid on the patch grid and upsampled (``geometry.upsample_maps``)."""
    import torch

    grid_maps = torch.stack([(patches @ embedding.T).mean(dim=1) for embedding in embeddings])
    return upsample_maps(grid_maps.reshape(len(embeddings), *geometry.grid).cpu().double().numpy(), geometry)


def grounding_evaluate(
    model: Any,
    preprocess: Callable,
    tokenizer: Callable,
    data_dir: str | Path,
    *,
    device: str = "cpu",
    phrase_mode: str = "tokens",
    bootstrap: int = 200,
    seed: int = 0,
    progress: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    random_draws: int = 4,
    confidence: float = 0.95,
    exclude_findings: Sequence[str] | None = None,
) -> dict[str, Any]:
    """CNR, pointing game and mIoU of ``model``'s phrase maps on a grounding set, with bootstrap
    CIs and the random-patch and image-free prior baselines (tier_openclip.evaluation.grounding's docstring),
    and the own-lesion rate (tier_openclip.evaluation.grounding.competition). Returns the results schema:
    dataset, phrase_mode, num_phrases, num_images, overall, per_finding, by_location_words,
    baselines, own_lesion, summary_excludes, the settings, and "phrases" (each phrase's own
    numbers, with its "own_lesion" and "competitor", for paired comparisons).

    ``exclude_findings``: findings scored per finding but left out of "overall",
    "by_location_words", the baselines' overall values and "own_lesion" (None: meta.json's
    "summary_excludes", which the phantom sets to the finding whose place never varies)."""
    import torch
    from tqdm import tqdm

    from tier_openclip import openclip_adapter as adapter
    from tier_openclip.features import token_features

    if phrase_mode not in PHRASE_MODES:
        raise ValueError(f"phrase_mode must be one of {PHRASE_MODES}, got {phrase_mode!r}")
    gset = read_grounding_set(data_dir)
    exclude = sorted(gset.meta.get("summary_excludes", []) if exclude_findings is None else exclude_findings)
    model = adapter.unwrap_model(model)
    dtype = next(model.visual.parameters()).dtype
    resize_mode = resize_mode_of(preprocess)
    texts = sorted({p.phrase for p in gset.phrases})
    by_image: dict[str, list[int]] = {}
    for index, phrase in enumerate(gset.phrases):
        by_image.setdefault(phrase.image, []).append(index)
    images = list(by_image)
    priors = {"prior": PriorMaps(gset), "located_prior": PriorMaps(gset, located=True)}
    rng = np.random.default_rng(seed)
    per_phrase: list[dict[str, Any] | None] = [None] * len(gset.phrases)
    geometry = None

    loader = torch.utils.data.DataLoader(ImageFiles([gset.path(i) for i in images], preprocess), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False, collate_fn=stack_or_errors)
    with torch.inference_mode():
        embedded = dict(zip(texts, phrase_embeddings(model, tokenizer, texts, phrase_mode, device)))
        bar = tqdm(total=len(images), unit="img", desc="grounding", disable=not progress, dynamic_ncols=True)
        first = 0  # the batch's first image (the loader keeps the set's order)
        for batch in loader:
            pixels = checked_batch(batch)
            indices = range(first, first + len(pixels))
            first += len(pixels)
            patches = token_features(model, images=pixels.to(device=device, dtype=dtype),
                                     normalize=phrase_mode not in _RAW_PATCH_MODES)["image_tokens"].float()
            input_size = tuple(pixels.shape[-2:])
            grid = grid_shape(patches.shape[1], input_size)
            for n, image_index in enumerate(indices):
                image = images[image_index]
                geometry = MapGeometry(grid, input_size, gset.image_sizes[image], resize_mode)
                phrase_indices = by_image[image]
                maps = phrase_maps(patches[n], [embedded[gset.phrases[k].phrase] for k in phrase_indices], geometry)
                regions = [region_mask(gset.phrases[k].boxes, *maps.shape[1:]) for k in phrase_indices]
                rivals = competitors([gset.phrases[k].finding for k in phrase_indices])
                for k, saliency, region, rival in zip(phrase_indices, maps, regions, rivals):
                    phrase = gset.phrases[k]
                    other = None if rival is None else regions[rival]
                    rival_finding = None if rival is None else gset.phrases[phrase_indices[rival]].finding
                    row: dict[str, Any] = {"image": phrase.image, "finding": phrase.finding, "phrase": phrase.phrase,
                                           "boxes": len(phrase.boxes), **grounding_metrics(saliency, region),
                                           "competitor": rival_finding,
                                           OWN_LESION: None if other is None else own_lesion(saliency, region, other)}
                    row["random"] = {"pointing_game": chance_pointing(region, geometry),
                                     **random_map_metrics(region, geometry, random_draws, rng),
                                     OWN_LESION: None if other is None else own_lesion_chance(region, other,
                                                                                              ~np.isnan(saliency))}
                    for name, prior in priors.items():
                        if not prior.reason:
                            prior_map = prior.map(phrase.finding, phrase.image, phrase.phrase)
                            row[name] = grounding_metrics(prior_map, region)
                            seen = np.where(np.isnan(saliency), np.nan, prior_map)  # the pixels the model scored
                            row[name][OWN_LESION] = None if other is None else own_lesion(seen, region, other)
                    per_phrase[k] = row
            bar.update(len(indices))
        bar.close()

    rows = [row for row in per_phrase if row is not None]
    overall, per_finding = summarise(rows, gset.labels, bootstrap, seed, confidence, exclude)
    prior_entries = {}
    for name, prior in priors.items():
        entry: dict[str, Any] = {"source": prior.source}
        if prior.reason:
            entry.update({m: None for m in METRICS}, reason=prior.reason)
        else:
            entry.update(_baseline(rows, name, gset.labels, exclude))
            if prior.missing:
                entry["missing_findings"] = prior.missing  # no training box: a flat (zero) map
        prior_entries[name] = entry
    return {
        "dataset": gset.dataset,
        "data_dir": str(gset.directory),
        "phrase_mode": phrase_mode,
        "num_phrases": len(rows),
        "num_images": len(images),
        "num_boxes": sum(row["boxes"] for row in rows),
        "overall": overall,
        "per_finding": per_finding,
        "by_location_words": _by_location_words([row for row in rows if row["finding"] not in exclude], list(priors),
                                                bootstrap, seed, confidence),
        "baselines": {"random": {**_baseline(rows, "random", gset.labels, exclude), "draws": random_draws},
                      **prior_entries},
        OWN_LESION: own_lesion_summary(rows, ["random", *(n for n, p in priors.items() if not p.reason)], bootstrap,
                                       seed, confidence, exclude),
        "summary_excludes": exclude,
        "bootstrap": bootstrap,
        "seed": seed,
        "confidence": confidence,
        "thresholds": list(THRESHOLDS),
        "cnr_eps": CNR_EPS,
        "grid": list(geometry.grid) if geometry else None,
        "input_size": list(geometry.input_size) if geometry else None,
        "resize_mode": resize_mode,
        "phrases": [{k: v for k, v in row.items() if k not in ("random", *priors)} for row in rows],
    }


# --- reporting ----------------------------------------------------------------------------------


def _value(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    ci = entry.get("ci")
    return f"{entry['value']:.3f} ({ci[0]:.3f}–{ci[1]:.3f})" if ci else f"{entry['value']:.3f}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def grounding_markdown(results: Mapping[str, Any]) -> str:
    """Markdown tables of grounding_evaluate's results: per finding and overall, then the baselines."""
    percent = round(100 * results.get("confidence", 0.95))
    title = (f"Phrase grounding, {results.get('dataset') or 'grounding set'} ({results['num_phrases']} phrases, "
             f"{results['num_images']} images; {results['phrase_mode']} maps)")
    lines = [f"### {title}", ""]
    if results.get("bootstrap"):
        lines += [f"Values ({percent}% CI from {results['bootstrap']} bootstrap resamples of the phrases, "
                  f"seed {results['seed']}).", ""]
    baselines = results["baselines"]
    random, prior = baselines["random"], baselines["prior"]
    located = baselines.get("located_prior", {"source": prior["source"], "reason": "not computed"})
    lines += ["| Finding | Phrases | CNR | Pointing game | mIoU | Prior pointing | Located-prior pointing | "
              "Chance pointing |", "|:--|--:|--:|--:|--:|--:|--:|--:|"]
    rows = [(name, entry, name) for name, entry in results["per_finding"].items()]
    rows.append(("**Overall**", results["overall"], None))
    for name, entry, finding in rows:
        prior_values, located_values, random_values = (
            (base.get("per_finding", {}).get(finding, {}) if finding else base) for base in (prior, located, random))
        lines.append(f"| {name} | {entry['phrases']} | {_value(entry['cnr'])} | {_value(entry['pointing_game'])} | "
                     f"{_value(entry['miou'])} | {_number(prior_values.get('pointing_game'))} | "
                     f"{_number(located_values.get('pointing_game'))} | {_number(random_values.get('pointing_game'))} |")
    source = "training boxes" if prior["source"] == PRIOR_SOURCES["train"] else "leave-one-image-out over this set"
    lines += ["", "Baselines, the same metrics on the same regions:", "",
              "| Baseline | CNR | Pointing game | mIoU |", "|:--|--:|--:|--:|",
              f"| Image-free prior (mean box map of the finding, {source}) | {_number(prior.get('cnr'))} | "
              f"{_number(prior.get('pointing_game'))} | {_number(prior.get('miou'))} |",
              f"| Located prior (mean box map of the finding's boxes named with the phrase's location words, {source}) | "
              f"{_number(located.get('cnr'))} | {_number(located.get('pointing_game'))} | {_number(located.get('miou'))} |",
              f"| Random patch (chance; CNR and mIoU of {random.get('draws', '?')} random maps per phrase) | "
              f"{_number(random['cnr'])} | {_number(random['pointing_game'])} | {_number(random['miou'])} |"]
    if prior.get("reason"):
        lines += ["", f"No prior baseline: {prior['reason']}."]
    if located.get("reason") and not prior.get("reason"):
        lines += ["", f"No located prior: {located['reason']}."]
    split = results.get("by_location_words", {})
    if split:
        lines += ["", "Phrases with and without location words (without them only the image says where):", "",
                  "| Phrases | Count | Pointing game | CNR | Prior pointing | Located-prior pointing | Chance pointing |",
                  "|:--|--:|--:|--:|--:|--:|--:|"]
        for kind, entry in split.items():
            base = entry["baselines"]
            lines.append(f"| {kind} location words | {entry['phrases']} | {_value(entry['pointing_game'])} | "
                         f"{_value(entry['cnr'])} | "
                         + " | ".join(_number(base.get(name, {}).get("pointing_game"))
                                      for name in ("prior", "located_prior", "random")) + " |")
    own = results.get(OWN_LESION) or {}
    if own.get("value") is not None:
        base = own["baselines"]
        lines += ["", f"Own lesion (phrases of images with two different findings: the map's maximum over the two "
                      f"findings' regions lies in its own): {_value(own)} over {own['phrases']} phrases; image-free prior "
                      f"{_number(base.get('prior'))}, located prior {_number(base.get('located_prior'))}, chance "
                      f"{_number(base.get('random'))}."]
    if results.get("summary_excludes"):
        lines += ["", f"Left out of the overall figures (scored per finding only): {', '.join(results['summary_excludes'])}."]
    if prior.get("missing_findings"):
        lines += ["", f"No training boxes for: {', '.join(prior['missing_findings'])} (flat prior map)."]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def training_metrics(results: Mapping[str, Any], dataset: str) -> dict[str, float]:
    """Flat names as logged during training: '<dataset>-grounding-<metric>' (overall),
    '<dataset>-grounding-<metric>-<finding>', the baselines' '<dataset>-grounding-prior-<metric>',
    '<dataset>-grounding-located-prior-<metric>' and '<dataset>-grounding-random-<metric>', and
    '<dataset>-grounding-own-lesion' when some image has two different findings."""
    metrics = {f"{dataset}-grounding-{_slug(m)}": results["overall"][m]["value"] for m in METRICS}
    for finding, entry in results["per_finding"].items():
        metrics.update({f"{dataset}-grounding-{_slug(m)}-{_slug(finding)}": entry[m]["value"] for m in METRICS})
    for name, baseline in results["baselines"].items():
        metrics.update({f"{dataset}-grounding-{_slug(name)}-{_slug(m)}": baseline[m] for m in METRICS
                        if baseline.get(m) is not None})
    own = results.get(OWN_LESION) or {}
    if own.get("value") is not None:
        metrics[f"{dataset}-grounding-own-lesion"] = own["value"]
    return metrics


# --- during training ----------------------------------------------------------------------------


def grounding_during_training(model: Any, completed_epoch: int, args: Any, tb_writer: Any = None) -> dict[str, float]:
    """Grounding metrics on --tier-grounding DIR after an epoch, as evaluate.zeroshot_during_training
    does for zero-shot AUC: rank 0, every --zeroshot-frequency epochs and after the last, no
    bootstrap; the log, checkpoints/results.jsonl, TensorBoard and wandb under "val/".
    A failing evaluation is logged and returns {}: it must not cost the run its checkpoint."""
    from tier_openclip import openclip_adapter as adapter
    from tier_openclip.evaluation.validation_log import eval_transforms, log_validation_metrics

    frequency = getattr(args, "zeroshot_frequency", 0)
    directory = getattr(args, "tier_grounding", None)
    if getattr(args, "rank", 0) != 0 or not frequency or not directory:
        return {}
    if completed_epoch % frequency and completed_epoch != getattr(args, "epochs", None):
        return {}
    inner = adapter.unwrap_model(model)
    was_training = inner.training
    try:
        tokenizer, preprocess = eval_transforms(inner, args.model)
        inner.eval()
        results = grounding_evaluate(inner, preprocess, tokenizer, directory, device=str(getattr(args, "device", "cpu")),
                                     bootstrap=0, batch_size=getattr(args, "batch_size", 32),
                                     num_workers=getattr(args, "workers", 0))
        metrics = training_metrics(results, results["dataset"] or "grounding")
        log_validation_metrics("Grounding", metrics, completed_epoch, args, tb_writer)
        return metrics
    except Exception as exc:  # an evaluation error must not end a training run
        logging.error(f"Grounding evaluation on --tier-grounding {directory} failed after epoch {completed_epoch}: "
                      f"{type(exc).__name__}: {exc}", exc_info=True)
        return {}
    finally:
        inner.train(was_training)


def check_training_dir(directory: str | None) -> str | None:
    """Why --tier-grounding DIR cannot be evaluated (read at start-up, before any training), or None."""
    if not directory:
        return None
    try:
        read_grounding_set(directory)
    except (FileNotFoundError, ValueError) as exc:
        return f"--tier-grounding {directory}: {exc}"
    return None


# --- command line -------------------------------------------------------------------------------


def add_grounding_parser(tasks: Any) -> None:
    """`tier-openclip eval grounding ...` (``tasks``: the eval subcommand's subparsers)."""
    parser = tasks.add_parser(
        "grounding",
        help="Phrase grounding (MS-CXR layout): CNR, pointing game and mIoU per finding, with baselines.",
        description="Phrase grounding as BioViL evaluates it on MS-CXR: for each (image, phrase) of a grounding "
                    "set, the phrase's similarity map over the image patches, upsampled to the stored image; "
                    "CNR, pointing game and mIoU (thresholds 0.1-0.5 of the min-max normalised map) per finding "
                    "and overall, with bootstrap CIs over phrases, beside the random-patch chance and the "
                    "image-free prior (the finding's mean training box map). Prints markdown; --out also writes "
                    "JSON and the table next to it (results.md).",
    )
    add_model_flags(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="Grounding set: `tier-openclip prep ms-cxr` output (boxes.csv + images/ + meta.json).")
    parser.add_argument("--out", default=None, metavar="FILE.json",
                        help="Write results JSON here, and the markdown table next to it (same name, .md).")
    parser.add_argument("--phrase-mode", choices=PHRASE_MODES, default="tokens",
                        help="tokens: mean over the phrase's valid tokens of token-patch similarity (default); "
                             "pooled: similarity of the pooled phrase embedding; cam: the pooled phrase embedding "
                             "against the patch embeddings before normalisation (for a mean-pooled image tower, "
                             "each patch's share of the image-phrase similarity).")
    add_run_flags(parser, resampled="the phrases", seeded="the bootstrap and the random maps")
    parser.set_defaults(func=run_grounding)


def run_grounding(args: argparse.Namespace) -> int:
    from tier_openclip.cli_common import check_evaluation_inputs, check_run_flags, run_evaluation

    check_run_flags(args)
    out = check_evaluation_inputs(args, read_grounding_set, "a grounding set from `tier-openclip prep ms-cxr`")

    def evaluate(loaded, device: str) -> dict:
        return grounding_evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, args.data, device=device,
                                  phrase_mode=args.phrase_mode, bootstrap=args.bootstrap, seed=args.seed,
                                  progress=not args.quiet, batch_size=args.batch_size, num_workers=args.workers)

    return run_evaluation(args, evaluate, grounding_markdown, out)

"""report.md and sweep.md from the demo's JSON, and its figures (sweep plot, heatmaps)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from tier_openclip.demo.collapse import COLLAPSE_LINE
from tier_openclip.demo.design import MODEL
from tier_openclip.demo.report_sections import (environment_lines, interval, manipulation_lines, precondition_lines,
                                                rules_lines)
from tier_openclip.demo.summary import GROUNDING_METRICS, METRICS, NOISE_RULE, PROBE_METRICS


def _grounding_metric(metric: str) -> str | None:
    """The model-free baselines' key of a grounding row (every phrase map shares them), else None."""
    name = metric.removesuffix("_pooled").removesuffix("_cam")
    return name if name in GROUNDING_METRICS else None


def _cell(entry: Mapping) -> str:
    return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def _difference(entry: Mapping) -> str:
    return f"{entry['mean']:+.3f} ± {entry['sd']:.3f}"


def _baseline(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _arm_text(arm: Mapping) -> str:
    if "target_ratio" in arm:
        return (f"**{arm['name']}** (`--loss tier --tier-scale {arm['tier_scale']}`, λ both directions chosen per start "
                f"so that TIER's gradient norm is {arm['target_ratio']:g} of CLIP's on the start checkpoint: "
                + ", ".join(f"{v:g}" for v in arm["tier_lambda_per_start"]) + ")")
    return f"**{arm['name']}** (`{' '.join(arm['flags'])}`)"


def _pretrain_loss(pre: Mapping) -> str:
    """Which loss pre-trained the starts (demo.json from before --pretrain-loss: CLIP)."""
    return "CLIP + FILIP's token-wise term" if pre.get("loss") == "filip" else "CLIP"


def _setup_lines(result: Mapping) -> list[str]:
    setup, data = result["setup"], result["data"]
    pre, fine = setup["pretrain"], setup["finetune"]
    return [
        f"{MODEL} on {data['num_train']} phantom radiographs ({setup['size']} preset), evaluated on "
        f"{data['num_test']} held-out images with known boxes. {_pretrain_loss(pre)} pre-trained {setup['starts']} times, each its own "
        f"seed ({pre['epochs']} epochs = {pre['steps']} steps at batch {setup['batch_size']}, lr {pre['lr']:g}, "
        f"{pre['warmup']} warm-up steps): the starts. Every arm fine-tuned once from every start ({fine['epochs']} "
        f"epochs = {fine['steps']} steps, lr {fine['lr']:g}, fresh optimiser, the start's seed); all arms of a start "
        "see the same batches in the same order, so a difference within a start is the loss alone and the spread "
        "over starts is the whole pipeline's.",
        "",
        "Arms: " + "; ".join(_arm_text(arm) for arm in setup["arms"]) + ".",
    ]


def _wall_line(result: Mapping) -> str:
    env = result.get("environment") or result["machine"]
    return (f"Wall time {result['timings']['total_seconds'] / 60:.1f} min on {env['cpu']} ({env['cores']} cores).")


def _collapse_reading(entry: Mapping) -> str:
    """'collapsed' / 'not collapsed' by the mean over starts (and "on some starts" when they disagree)."""
    values = entry["values"]
    flags = {value >= COLLAPSE_LINE for value in values if value == value}  # NaN: no reading
    if not flags:
        return "–"
    if len(flags) == 2:
        return f"{entry['mean']:.3f}, collapsed on some starts"
    return f"{entry['mean']:.3f}, {'collapsed' if flags == {True} else 'not collapsed'}"


def format_report(result: Mapping) -> str:
    """report.md of a demo run (run_demo's result)."""
    arms = list(result["summary"])
    base = result["baselines"]
    prior, located, random = base.get("prior", {}), base.get("located_prior", {}), base.get("random", {})
    lines = ["# tier-openclip demo: phantom chest X-rays", "", *_setup_lines(result), "", _wall_line(result), "",
             *environment_lines(result), *rules_lines(), *precondition_lines(result), *manipulation_lines(result),
             "## Each arm (mean ± sd over starts)", "",
             "| metric | starts (pre-trained) | " + " | ".join(arms) + " | image-free prior | located prior | random patch |",
             "| --- | --- | " + " | ".join("---" for _ in arms) + " | --- | --- | --- |"]
    seg = base["segmentation"]
    for metric, label in METRICS.items():
        cells = [_cell(result["summary"][arm][metric]) for arm in arms]
        grounding = _grounding_metric(metric)
        prior_cell = (_baseline(prior.get(grounding)) if grounding
                      else _baseline(seg["prior"][metric]) if metric in PROBE_METRICS else "–")
        located_cell, random_cell = ((_baseline(b.get(grounding)) if grounding else "–") for b in (located, random))
        if metric in ("pointing_game_cam_unlocated", "pointing_game_unlocated"):  # the baselines on the same phrases
            prior_cell, located_cell, random_cell = (_baseline(base.get("unlocated", {}).get(name))
                                                     for name in ("prior", "located_prior", "random"))
        if metric in ("own_lesion", "own_lesion_cam"):
            prior_cell, located_cell, random_cell = (_baseline(base.get("own_lesion", {}).get(name))
                                                     for name in ("prior", "located_prior", "random"))
        lines.append(f"| {label} | {_cell(result['start_summary'][metric])} | " + " | ".join(cells)
                     + f" | {prior_cell} | {located_cell} | {random_cell} |")
    max_entropy = result["start"]["max_entropy_token_to_patch"]
    probe = seg["probe_config"]
    lines += [
        "",
        f"Grounding (tier_openclip.evaluation.grounding) on the {result['grounding_phrases']} phrases of the test set, with "
        "three phrase maps: token maps (the mean of the phrase's token→patch cosine similarities, the maps TIER "
        "regularises), pooled-phrase maps (the cosine of the phrase's own embedding with every patch; BioViL's "
        "way on MS-CXR) and CAM maps (the phrase's embedding against the patch embeddings before their "
        "normalisation: this tower's image feature is the mean of its patch embeddings, so the CAM is each "
        "patch's share of the image–phrase score that CLIP's loss trains). The image-free prior points where "
        "the finding's training boxes usually are "
        f"({prior.get('source', '?')}); the located prior reads the phrase but not the image: it points where "
        "that finding's training boxes named with the same location words (\"left\", \"upper\", \"apical\"...) "
        "usually are, the finding's prior for a phrase without them. The random patch is chance. "
        + (f"Left out of the grounding summaries (their image-free prior is already right): "
           f"{', '.join(base['summary_excludes'])}. " if base.get("summary_excludes") else "")
        + "Own lesion: on images with two different findings, whether a phrase's map peaks on its own finding "
        "rather than on the other one (pixels in exactly one of the two regions); its random-patch column is "
        "chance, the own region's share. "
        "Entropies at scale 1 over "
        f"{result['start']['patches']} patches (at most ln {result['start']['patches']} = {max_entropy:.3f}); "
        "lower means sparser token→patch maps.",
        "",
        f"Linear probe (tier_openclip.evaluation.segmentation: frozen image tower, a 1×1 convolution on the projected patch "
        f"embeddings, upsampled bilinearly) segmenting {seg['target']}: trained on {seg['train_images']} train "
        f"images (label fraction 1.0, one probe seed, {probe['epochs']} epochs at lr {probe['lr']:g}, batch "
        f"{probe['batch_size']}, {probe['loss']}), Dice and mIoU over the pixels of the {seg['test_images']} test "
        f"images ({seg['test_positive_images']} with {seg['target']}). Baselines: the empty head (nothing "
        f"predicted) has Dice {seg['empty']['probe_dice']:.3f}, mIoU {seg['empty']['probe_miou']:.3f}; the "
        "image-free prior column is the training masks' mean mask at its best threshold. A probe at the prior "
        "has learned nothing from the image.",
        "",
        "Collapse (issue #13): the mean cosine between two distinct patch embeddings of one test image, and "
        "between two valid text tokens or two sentences of one caption; near 1 = every local embedding is one "
        f"vector. Reading of the patch cosine, collapsed at ≥ {COLLAPSE_LINE:g}: "
        + "; ".join(f"{arm} {_collapse_reading(result['summary'][arm]['cos_patches'])}" for arm in arms) + ".",
        "",
    ]
    for arm, differences in result["differences"].items():
        lines += [f"## Paired differences: {arm} − clip, start by start", "",
                  "| metric | mean ± sd | 95% t-interval | per start | reading |", "| --- | --- | --- | --- | --- |"]
        for metric, label in METRICS.items():
            entry = differences[metric]
            per_start = ", ".join(f"{v:+.3f}" for v in entry["values"])
            lines.append(f"| {label} | {_difference(entry)} | {interval(entry)} | {per_start} | {entry['verdict']} |")
        lines += [""]
    lines += [f"Rule: {NOISE_RULE}.", "", "## Zero-shot AUC per finding (mean ± sd over starts)", "",
              "| finding | " + " | ".join(arms) + " |", "| --- | " + " | ".join("---" for _ in arms) + " |"]
    for finding in result["per_finding_auc"][arms[0]]:
        cells = [_cell(result["per_finding_auc"][arm][finding]) if finding in result["per_finding_auc"][arm] else "–"
                 for arm in arms]
        lines.append(f"| {finding} | " + " | ".join(cells) + " |")
    lines += ["", "## Pointing game per finding, CAM maps (mean ± sd over starts)", "",
              "| finding | " + " | ".join(arms) + " | image-free prior | located prior | random patch |",
              "| --- | " + " | ".join("---" for _ in arms) + " | --- | --- | --- |"]
    for finding in result["per_finding_pointing_cam"][arms[0]]:
        cells = [_cell(result["per_finding_pointing_cam"][arm][finding]) for arm in arms]
        baselines = base["per_finding"].get(finding, {})
        lines.append(f"| {finding} | " + " | ".join(cells) + " | "
                     + " | ".join(_baseline(baselines.get(name)) for name in ("prior", "located_prior", "random")) + " |")
    timings = result["timings"]
    lines += ["", "## Time", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings["stages"].items()]
    if timings.get("mean_step_seconds"):
        lines += ["", "Mean seconds per training step: " + ", ".join(
            f"{name} {value:.3f}" for name, value in timings["mean_step_seconds"].items()) +
            f"; start-up and checkpoint overhead per run {timings['mean_overhead_seconds']:.1f} s"
            + (f"; evaluation {timings['mean_eval_seconds']:.1f} s per fine-tuned checkpoint."
               if timings.get("mean_eval_seconds") else ".")]
    lines += ["", "![sparsity curves](sparsity.png)", ""]
    lines += [f"![heatmaps]({path})" for path in result.get("heatmaps", [])]
    return "\n".join(lines) + "\n"


def format_sweep(result: Mapping) -> str:
    """sweep.md of a sweep run (run_sweep's result)."""
    lines = ["# tier-openclip demo --sweep: TIER's λ × scale against the clip control", "", *_setup_lines(result), "",
             _wall_line(result), "", *environment_lines(result), *rules_lines(), *precondition_lines(result),
             *manipulation_lines(result),
             "## Paired differences", "",
             "Paired differences tier − clip (mean ± sd over starts, 95% t-interval, the reading by the noise rule). "
             "The clip control: " + ", ".join(f"{METRICS[m]} {_cell(result['control'][m])}"
                                               for m in ("auc", "cnr", "pointing_game", "pointing_game_cam")) + ".", "",
             "| λ | scale | " + " | ".join(METRICS[m] for m in SWEEP_COLUMNS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in SWEEP_COLUMNS) + " |"]
    for row in result["grid"]:
        cells = [f"{_difference(row['differences'][m])} {interval(row['differences'][m])} ({row['differences'][m]['verdict']})"
                 for m in SWEEP_COLUMNS]
        lines.append(f"| {row['lambda']:g} | {row['scale']} | " + " | ".join(cells) + " |")
    lines += ["", f"Rule: {NOISE_RULE}.", "", "![sweep](sweep.png)", ""]
    return "\n".join(lines) + "\n"


SWEEP_COLUMNS = ("auc", "cnr", "pointing_game", "pointing_game_unlocated", "pointing_game_cam",
                 "entropy_token_to_patch")


def plot_sweep(result: Mapping, out_path: Path) -> None:
    """One panel per metric: the paired difference against λ, one line per scale, ± sd bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(METRICS[m], lambda row, m=m: row["differences"][m]) for m in SWEEP_COLUMNS]
    # the manipulation check's measure, at each arm's own training scale (the entropy column above is at 1)
    panels.append(("top-1 mass at the training scale", lambda row: row["manipulation"]["top1_mass"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4))
    scales = list(dict.fromkeys(row["scale"] for row in result["grid"]))
    for ax, (title, entry_of) in zip(axes, panels):
        for index, scale in enumerate(scales):
            rows = sorted((r for r in result["grid"] if r["scale"] == scale), key=lambda r: r["lambda"])
            lambdas = [r["lambda"] * (1 + 0.06 * (index - 1)) for r in rows]  # side by side, not on top
            ax.errorbar(lambdas, [entry_of(r)["mean"] for r in rows], yerr=[entry_of(r)["sd"] for r in rows],
                        marker="o", capsize=3, label=f"scale {scale}")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set(title=f"Δ {title}", xlabel="TIER λ (both directions)")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("tier − clip (paired by start)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def draw_heatmaps(checkpoints: Mapping[str, str], grounding_dir: str, out_dir: Path, count: int) -> list[str]:
    """For the first ``count`` test images with findings: each grounded phrase's token map and CAM
    map (as the grounding evaluator scores them, upsampled to the stored image) with its box, two
    rows per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from matplotlib.patches import Rectangle
    from PIL import Image

    from tier_openclip.evaluation.grounding import model_geometry, phrase_embeddings, phrase_maps, read_grounding_set
    from tier_openclip.features import token_features
    from tier_openclip.models import load_model

    gset = read_grounding_set(grounding_dir)
    by_image: dict[str, list] = {}
    for phrase in gset.phrases:
        by_image.setdefault(phrase.image, []).append(phrase)
    chosen: Sequence = list(by_image.items())[:count]
    models = {name: load_model(MODEL, path) for name, path in checkpoints.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (image_name, phrases) in enumerate(chosen):
        with Image.open(gset.directory / image_name) as opened:
            image = opened.convert("RGB")
        gray = np.asarray(image.convert("L"))
        fig, axes = plt.subplots(2 * len(models), len(phrases) + 1,
                                 figsize=(2.4 * (len(phrases) + 1), 2.4 * 2 * len(models)), squeeze=False)
        rows = iter(axes)
        for name, loaded in models.items():
            with torch.inference_mode():
                pixels = loaded.preprocess(image).unsqueeze(0)
                features = token_features(loaded.model, images=pixels, normalize=False)
                raw = features["image_tokens"][0].float()
                geometry = model_geometry(raw.shape[0], tuple(pixels.shape[-2:]), gset.image_sizes[image_name],
                                          loaded.preprocess)
                texts = [p.phrase for p in phrases]
                tokens = phrase_embeddings(loaded.model, loaded.tokenizer, texts, "tokens", "cpu")
                pooled = phrase_embeddings(loaded.model, loaded.tokenizer, texts, "cam", "cpu")
                # The evaluator's maps: cosine maps from unit patches, the CAM from the raw ones.
                token_maps = phrase_maps(torch.nn.functional.normalize(raw, dim=-1), tokens, geometry)
                cam_maps = phrase_maps(raw, pooled, geometry)
            for kind, maps in (("token maps", token_maps), ("CAM maps", cam_maps)):
                row_axes = next(rows)
                row_axes[0].imshow(gray, cmap="gray")
                row_axes[0].set_title(f"{name}: {kind}", fontsize=9)
                for ax, phrase, saliency in zip(row_axes[1:], phrases, maps):
                    ax.imshow(gray, cmap="gray")
                    ax.imshow(saliency, cmap="jet", alpha=0.45)
                    for x0, y0, x1, y1 in phrase.boxes:
                        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                                               linewidth=1.2))
                    ax.set_title(phrase.phrase, fontsize=7)
        for ax in axes.flat:
            ax.axis("off")
        fig.tight_layout()
        name = f"heatmap-{index}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(f"heatmaps/{name}")
    return written

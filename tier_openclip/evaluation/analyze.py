"""Sparsity and localisation of token↔patch similarities: the TIER paper's analyses.

``tier-openclip analyze`` reports, over image–report pairs read from WebDataset shards:
- mean token→patch and patch→token entropy (TIER's own term, scale 1, padding masked);
- rank-ordered similarity curves: each valid token's cosine similarities to the patches of its
  own image, sorted in decreasing order, mean ± sd over tokens — raw, and normalised per token
  to [0, 1] by min–max, so curves of models with different similarity ranges can be compared;
- top-k similarity mass: the share of a token's attention over patches (softmax at the model's
  own logit scale, the scale its zero-shot scores use) held by its k most similar patches;
- the pointing game, when a CSV of boxes is given: a phrase scores a hit when the patch most
  similar to the phrase's embedding has its centre inside the phrase's box (boxes half-open,
  x0 <= x < x1 and y0 <= y < y1, in the image file's pixels; patches that tie share the hit).
Two checkpoints (``--pretrained`` and ``--baseline``) are drawn on the same plots.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tier_openclip.cli_common import add_model_flags, device_of, model_inputs, refuse_overwriting_inputs
from tier_openclip.errors import CommandError, UsageError, input_file, writable_folder

TOP_K_FRACTIONS = (0.01, 0.05, 0.1, 0.25)


@dataclass
class SimilarityStats:
    """Running statistics of a model's token↔patch similarities over many pairs."""

    num_patches: int
    entropy_text: list[float] = field(default_factory=list)
    entropy_image: list[float] = field(default_factory=list)
    sorted_raw: list[np.ndarray] = field(default_factory=list)  # (tokens, P) per pair
    sorted_normalised: list[np.ndarray] = field(default_factory=list)
    top_k_mass: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def summary(self) -> dict:
        raw = np.concatenate(self.sorted_raw)
        normalised = np.concatenate(self.sorted_normalised)
        return {
            "pairs": len(self.entropy_text),
            "tokens": int(raw.shape[0]),
            "patches": self.num_patches,
            "entropy_token_to_patch": float(np.mean(self.entropy_text)),
            "entropy_patch_to_token": float(np.mean(self.entropy_image)),
            "max_entropy_token_to_patch": math.log(self.num_patches),
            "top_k_mass": {str(k): float(np.concatenate(v).mean()) for k, v in sorted(self.top_k_mass.items())},
            "rank_curve_raw": {"mean": raw.mean(0).tolist(), "sd": raw.std(0).tolist()},
            "rank_curve_normalised": {"mean": normalised.mean(0).tolist(), "sd": normalised.std(0).tolist()},
        }


def top_k_values(num_patches: int, fractions: Sequence[float] = TOP_K_FRACTIONS) -> list[int]:
    return sorted({max(1, round(f * num_patches)) for f in fractions})


def accumulate_similarity_stats(model, batches: Iterable[tuple], device: str = "cpu", stats: SimilarityStats | None = None) -> SimilarityStats:
    """Add the statistics of (images, token ids) batches to ``stats`` (a new one if None)."""
    import torch

    from tier_openclip.entropy import token_patch_entropy
    from tier_openclip.features import token_features

    with torch.no_grad():
        logit_scale = model.logit_scale.exp().item()
        for images, texts in batches:
            out = token_features(model, images.to(device), texts.to(device))
            text_tokens, image_tokens, mask = out["text_tokens"].float(), out["image_tokens"].float(), out["text_mask"]
            if stats is None:
                stats = SimilarityStats(num_patches=image_tokens.shape[1])
            h_text, h_image = token_patch_entropy(text_tokens, image_tokens, mask, impl="torch")
            stats.entropy_text += h_text.tolist()
            stats.entropy_image += h_image.tolist()
            sims = torch.einsum("ntd,npd->ntp", text_tokens, image_tokens)
            for n in range(sims.shape[0]):
                rows = sims[n][mask[n]]  # valid tokens × patches
                if rows.numel() == 0:
                    continue
                ranked = rows.sort(dim=1, descending=True).values
                spread = (ranked[:, :1] - ranked[:, -1:]).clamp(min=1e-12)
                stats.sorted_raw.append(ranked.cpu().numpy())
                stats.sorted_normalised.append(((ranked - ranked[:, -1:]) / spread).cpu().numpy())
                attention = torch.softmax(logit_scale * ranked, dim=1)
                for k in top_k_values(stats.num_patches):
                    stats.top_k_mass.setdefault(k, []).append(attention[:, :k].sum(1).cpu().numpy())
    if stats is None:
        raise ValueError("no image–report pairs to analyse")
    return stats


@dataclass
class BoxRow:
    image: Path
    phrase: str
    box: tuple[float, float, float, float]


def read_boxes(path: Path) -> list[BoxRow]:
    """Rows of image, phrase (or finding + prompt), x0, y0, x1, y1; images relative to the CSV.

    CommandError naming the row when a column is missing or a coordinate is not a number."""
    from tier_openclip.data_prep.tables import refuse_duplicated_columns

    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        refuse_duplicated_columns(path, reader.fieldnames, CommandError)
        for number, row in enumerate(reader, start=2):
            phrase = row.get("prompt") or row.get("phrase") or row.get("finding")
            if not phrase or not row.get("image"):
                raise CommandError(f"{path} row {number}: each row needs an 'image' and a 'phrase' (or "
                                   "'prompt'/'finding') column")
            try:
                box = tuple(float(row[key]) for key in ("x0", "y0", "x1", "y1"))
            except (KeyError, TypeError, ValueError):
                raise CommandError(f"{path} row {number}: x0, y0, x1, y1 must be numbers (pixels of the image)") from None
            rows.append(BoxRow(path.parent / row["image"], phrase, box))  # type: ignore[arg-type]
    return rows


def pointing_game(loaded, rows: Sequence[BoxRow], device: str = "cpu") -> dict:
    """Share of phrases whose most similar patch (to the phrase embedding) has its centre in their
    box, through the model's resize and crop (tier_openclip.evaluation.grounding.geometry)."""
    import torch
    from PIL import Image

    from tier_openclip.evaluation.grounding.geometry import model_geometry, patch_pointing
    from tier_openclip.features import token_features

    hits: dict[str, list[float]] = {}
    phrases = sorted({row.phrase for row in rows})
    with torch.no_grad():
        phrase_features = token_features(loaded.model, texts=loaded.tokenizer(phrases).to(device))["text_features"]
        phrase_index = {phrase: i for i, phrase in enumerate(phrases)}
        by_image: dict[Path, list[BoxRow]] = {}
        for row in rows:
            by_image.setdefault(row.image, []).append(row)
        for image_path, image_rows in by_image.items():
            with Image.open(image_path) as opened:
                image = opened.convert("RGB")
            pixels = loaded.preprocess(image).unsqueeze(0).to(device)
            patches = token_features(loaded.model, images=pixels)["image_tokens"][0]
            centres = model_geometry(patches.shape[0], tuple(pixels.shape[-2:]), image.size,
                                     loaded.preprocess).patch_centres()
            for row in image_rows:
                scores = (patches @ phrase_features[phrase_index[row.phrase]]).float().cpu().numpy()
                hits.setdefault(row.phrase, []).append(patch_pointing(scores, centres, [row.box]))
    every = [hit for phrase_hits in hits.values() for hit in phrase_hits]
    return {
        "accuracy": float(np.mean(every)),
        "boxes": len(every),
        "per_phrase": {phrase: {"accuracy": float(np.mean(h)), "boxes": len(h)} for phrase, h in sorted(hits.items())},
    }


def _shard_files(pattern: str, limit: int = 100_000) -> list[str]:
    """The shard paths of a --data pattern as webdataset expands it ('::' lists, {a..b} ranges),
    at most ``limit`` of them (only compared with the output names)."""
    from itertools import islice

    from braceexpand import braceexpand

    return [path for part in pattern.split("::") for path in islice(braceexpand(part), limit)]


def shard_batches(shards: str, preprocess, tokenizer, num_samples: int, batch_size: int = 32):
    """(images, token ids) batches from WebDataset shards (jpg/png + txt), in shard order."""
    import torch
    import webdataset as wds

    dataset = wds.WebDataset(shards, shardshuffle=False).decode("pilrgb").to_tuple("jpg;png;jpeg", "txt")
    images, texts, seen = [], [], 0
    for image, text in dataset:
        images.append(preprocess(image))
        texts.append(text)
        seen += 1
        if len(images) == batch_size or seen == num_samples:
            yield torch.stack(images), tokenizer(texts)
            images, texts = [], []
        if seen == num_samples:
            return
    if images:
        yield torch.stack(images), tokenizer(texts)


def plot_rank_curves(summaries: dict[str, dict], out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, summary in summaries.items():
        for ax, key in zip(axes, ("rank_curve_raw", "rank_curve_normalised")):
            mean, sd = np.array(summary[key]["mean"]), np.array(summary[key]["sd"])
            ranks = np.arange(1, len(mean) + 1)
            ax.plot(ranks, mean, label=label)
            ax.fill_between(ranks, mean - sd, mean + sd, alpha=0.2)
    axes[0].set(title="Token→patch similarity, sorted", xlabel="patch rank", ylabel="cosine similarity")
    axes[1].set(title="Normalised per token (min–max)", xlabel="patch rank", ylabel="normalised similarity")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def analyze(args: argparse.Namespace) -> int:
    from tier_openclip.models import check_pretrained, load_model

    checkpoints = {"model": args.pretrained}
    if args.baseline:
        if args.label == args.baseline_label:
            raise UsageError(f"--label and --baseline-label are both {args.label!r}: the two checkpoints need "
                             "different names in analysis.json and the plots")
        checkpoints = {args.label: args.pretrained, args.baseline_label: args.baseline}
    if args.num_samples < 1 or args.batch_size < 1:
        raise UsageError(f"--num-samples and --batch-size must be >= 1 (got {args.num_samples} and {args.batch_size})")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for analysis.json and rank_curves.png")
    inputs = [*model_inputs(args), ("--baseline", args.baseline), ("--boxes", args.boxes),
              *(("--data", shard) for shard in _shard_files(args.data))]
    refuse_overwriting_inputs([("--out", out_dir / "analysis.json"), ("--out", out_dir / "rank_curves.png")], inputs)
    boxes = read_boxes(input_file(args.boxes, "--boxes")) if args.boxes else None
    for pretrained in checkpoints.values():
        check_pretrained(args.model, pretrained)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out_dir}: cannot create it ({exc.strerror or exc})") from None
    writable_folder(out_dir, f"--out {out_dir}")
    device = device_of(args)
    results: dict[str, dict] = {}
    for label, pretrained in checkpoints.items():
        loaded = load_model(args.model, pretrained, device=device)
        try:
            batches = shard_batches(args.data, loaded.preprocess, loaded.tokenizer, args.num_samples, args.batch_size)
            results[label] = accumulate_similarity_stats(loaded.model, batches, device=device).summary()
        except (OSError, ValueError) as exc:  # missing or broken shards, samples without image or text
            raise CommandError(f"--data {args.data}: {exc}") from None
        if boxes is not None:
            try:
                results[label]["pointing_game"] = pointing_game(loaded, boxes, device=device)
            except (OSError, ValueError) as exc:  # a box's image missing or unreadable
                raise CommandError(f"--boxes {args.boxes}: {exc}") from None
    plot_rank_curves(results, out_dir / "rank_curves.png")
    (out_dir / "analysis.json").write_text(json.dumps(results, indent=2))
    for label, summary in results.items():
        line = (f"{label}: H(token→patch) {summary['entropy_token_to_patch']:.3f} "
                f"H(patch→token) {summary['entropy_patch_to_token']:.3f} over {summary['pairs']} pairs")
        if "pointing_game" in summary:
            line += f", pointing game {summary['pointing_game']['accuracy']:.3f}"
        print(line)
    print(f"wrote {out_dir / 'analysis.json'} and {out_dir / 'rank_curves.png'}")
    return 0


def add_analyze_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="Entropy, rank-ordered similarity curves, top-k mass and pointing game of a checkpoint.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(parser, pretrained_required=True)
    parser.add_argument("--baseline", default=None, help="A second checkpoint of the same model to compare with.")
    parser.add_argument("--label", default="tier", help="Name of --pretrained in plots and JSON (with --baseline).")
    parser.add_argument("--baseline-label", default="baseline", help="Name of --baseline in plots and JSON.")
    parser.add_argument("--data", required=True, help="WebDataset shards, e.g. 'test/test-{000000..000003}.tar'.")
    parser.add_argument("--num-samples", type=int, default=1000, help="Pairs to analyse (default: 1000).")
    parser.add_argument("--boxes", default=None,
                        help="CSV with image,phrase,x0,y0,x1,y1 (image relative to the CSV, boxes in its "
                             "pixels, half-open: x0 <= x < x1) for the pointing game.")
    parser.add_argument("--batch-size", type=int, default=32, help="Pairs per forward pass (default: 32).")
    parser.add_argument("--out", required=True, help="Folder for analysis.json and rank_curves.png.")
    parser.set_defaults(func=analyze)

"""``tier-openclip demo``: what TIER does, on a laptop CPU, with known lesion locations.

1. Writes a phantom chest X-ray dataset (tier_openclip/phantom.py): chest backgrounds, findings
   drawn at named places with known boxes, report-style captions; train and test tars.
2. Trains TIER-tiny through the real ``python -m open_clip_train.main`` loop once per loss and
   seed: clip, tier, local-uniformity and tier + uniformity by default.
3. Evaluates each run with the project's evaluator and analyzer: zero-shot AUC per finding,
   token→patch entropy, top-k similarity mass, pointing game.
4. Writes report.md (mean ± sd over seeds), demo.json, the sparsity curves and heatmaps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

MODEL = "TIER-tiny"
# name -> open_clip_train.main flags; TIER's λ and the uniformity weight are set from the CLI.
LOSSES = {
    "clip": ["--loss", "clip"],
    "tier": ["--loss", "tier"],
    "local-uniformity": ["--loss", "local-uniformity"],
    "tier+uniformity": ["--loss", "tier"],
}
SIZES = {  # --size -> (epochs, batch size)
    "small": (3, 64),
    "medium": (6, 64),
}


@dataclass
class DemoOptions:
    out: Path
    size: str = "small"
    seeds: int = 3
    losses: Sequence[str] = tuple(LOSSES)
    tier_lambda: float = 0.1
    uniform_weight: float = 0.1
    bootstrap: int = 200
    heatmap_images: int = 3
    progress: bool = True
    epochs: int | None = None  # None: the size's
    phantom_overrides: dict = field(default_factory=dict)  # PhantomConfig fields, e.g. num_train


def schedule(options: DemoOptions) -> tuple[int, int]:
    """(epochs, batch size) of each training run."""
    epochs, batch_size = SIZES[options.size]
    return options.epochs or epochs, batch_size


def training_command(options: DemoOptions, data: dict, loss: str, seed: int, logs: Path) -> list[str]:
    epochs, batch_size = schedule(options)
    # The start-up hook adds --loss to open_clip_train.main; without it, the explicit entry point.
    module = "tier_openclip.train" if os.environ.get("TIER_OPENCLIP_DISABLE") else "open_clip_train.main"
    command = [
        sys.executable, "-m", module, "--model", MODEL, "--train-data", data["train_shards"],
        "--dataset-type", "webdataset", "--train-num-samples", str(data["num_train"]),
        "--batch-size", str(batch_size), "--epochs", str(epochs), "--lr", "1e-3", "--wd", "0.1",
        "--warmup", "20", "--seed", str(seed), f"--logs={logs}", "--name", f"{loss}-seed{seed}",
        # fp32 and no loader workers: on a small CPU, bf16 autocast and a worker process competing
        # with the training process for the same cores each make a step several times slower.
        "--precision", "fp32", "--workers", "0", "--log-every-n-steps", "1", "--report-to", "",
        *LOSSES[loss],
    ]
    if loss in ("tier", "tier+uniformity"):
        command += ["--tier-lambda-text", str(options.tier_lambda), "--tier-lambda-image", str(options.tier_lambda)]
    if loss in ("tier+uniformity", "local-uniformity"):
        command += ["--lu-uniform-weight", str(options.uniform_weight)]
    return command


STEP_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)")


def run_training(command: list[str], run_dir: Path, progress) -> Path:
    """Run one training, streaming its log into the progress bar; returns the final checkpoint."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{run_dir.name}.stdout.log"
    with open(log_path, "w") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        for line in process.stdout:
            log.write(line)
            if progress is not None and STEP_LINE.search(line):
                progress.update(1)
    if process.returncode != 0:
        raise RuntimeError(f"training failed ({' '.join(command[:4])} ...); see {log_path}")
    checkpoints = sorted((run_dir / "checkpoints").glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    if not checkpoints:
        raise RuntimeError(f"training wrote no checkpoint; see {log_path}")
    return checkpoints[-1]


def evaluate_run(checkpoint: Path, data: dict, options: DemoOptions) -> dict:
    """Zero-shot AUC, similarity statistics and pointing game of one trained checkpoint."""
    from tier_openclip.analyze import accumulate_similarity_stats, pointing_game, read_boxes, shard_batches
    from tier_openclip.evaluate import zeroshot_evaluate
    from tier_openclip.models import load_model

    loaded = load_model(MODEL, str(checkpoint))
    # The finding names are their prompts ("left pleural effusion" vs "no left pleural effusion").
    zeroshot = zeroshot_evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, data["eval_dir"],
                                 bootstrap=options.bootstrap, seed=0)
    batches = shard_batches(data["test_shards"], loaded.preprocess, loaded.tokenizer, data["num_test"])
    similarity = accumulate_similarity_stats(loaded.model, batches).summary()
    pointing = pointing_game(loaded, read_boxes(Path(data["eval_dir"]) / "boxes.csv"))
    return {"checkpoint": str(checkpoint), "zeroshot": zeroshot, "similarity": similarity, "pointing_game": pointing}


def metric_rows(run: dict) -> dict[str, float]:
    """The headline numbers of one run, as the report's table shows them."""
    similarity = run["similarity"]
    top_k = similarity["top_k_mass"]
    k_five = sorted(top_k, key=int)[1] if len(top_k) > 1 else sorted(top_k, key=int)[0]
    return {
        "mean zero-shot AUC": run["zeroshot"]["means"]["all"]["mean_auc"],
        "H token→patch": similarity["entropy_token_to_patch"],
        "H patch→token": similarity["entropy_patch_to_token"],
        f"top-{k_five} patch mass": top_k[k_five],
        "pointing game": run["pointing_game"]["accuracy"],
    }


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, float]]]:
    """loss -> metric -> {mean, sd, values} over seeds."""
    summary = {}
    for loss, seed_runs in runs.items():
        rows = [metric_rows(run) for run in seed_runs]
        summary[loss] = {
            metric: {"mean": float(np.mean([r[metric] for r in rows])), "sd": float(np.std([r[metric] for r in rows], ddof=1)) if len(rows) > 1 else 0.0,
                     "values": [r[metric] for r in rows]}
            for metric in rows[0]
        }
    return summary


def per_finding_auc(runs: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float]]]:
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for loss, seed_runs in runs.items():
        for label in seed_runs[0]["zeroshot"]["labels"]:
            values = [run["zeroshot"]["labels"][label]["auc"] for run in seed_runs if label in run["zeroshot"]["labels"]]
            if values:
                table.setdefault(label, {})[loss] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
    return table


def format_report(summary: dict, findings: dict, options: DemoOptions, data: dict, seconds: float) -> str:
    losses = list(summary)
    metrics = list(next(iter(summary.values())))
    lines = [
        "# tier-openclip demo: phantom chest X-rays",
        "",
        f"TIER-tiny trained on {data['num_train']} phantom radiographs ({options.size} preset, "
        f"{schedule(options)[0]} epochs) once per loss and seed ({options.seeds} seeds), evaluated on "
        f"{data['num_test']} held-out images with known lesion boxes. Mean ± sd over seeds. "
        f"TIER λ = {options.tier_lambda} (both directions); uniformity weight {options.uniform_weight}. "
        f"Wall time {seconds / 60:.1f} min.",
        "",
        "| metric | " + " | ".join(losses) + " |",
        "| --- | " + " | ".join("---" for _ in losses) + " |",
    ]
    for metric in metrics:
        cells = [f"{summary[loss][metric]['mean']:.3f} ± {summary[loss][metric]['sd']:.3f}" for loss in losses]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Lower entropy and higher top-k mass mean sparser token→patch maps; the pointing game counts a "
        "hit when the patch most similar to a finding's prompt lies inside its box.",
        "",
        "## Zero-shot AUC per finding",
        "",
        "| finding | " + " | ".join(losses) + " |",
        "| --- | " + " | ".join("---" for _ in losses) + " |",
    ]
    for finding, by_loss in sorted(findings.items()):
        cells = [f"{by_loss[loss][0]:.3f} ± {by_loss[loss][1]:.3f}" if loss in by_loss else "–" for loss in losses]
        lines.append(f"| {finding} | " + " | ".join(cells) + " |")
    lines += ["", "![sparsity curves](sparsity.png)", ""]
    lines += [f"![heatmaps]({path})" for path in data.get("heatmaps", [])]
    return "\n".join(lines) + "\n"


def draw_demo_heatmaps(checkpoints: dict[str, Path], data: dict, out_dir: Path, count: int) -> list[str]:
    """For a few test images with findings: each finding's prompt map, one row per loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    from tier_openclip.analyze import read_boxes
    from tier_openclip.heatmap import similarity_maps
    from tier_openclip.models import load_model

    rows_by_image: dict[Path, list] = {}
    for row in read_boxes(Path(data["eval_dir"]) / "boxes.csv"):
        rows_by_image.setdefault(row.image, []).append(row)
    chosen = list(rows_by_image.items())[:count]
    models = {loss: load_model(MODEL, str(checkpoint)) for loss, checkpoint in checkpoints.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (image_path, boxes) in enumerate(chosen):
        image = Image.open(image_path).convert("RGB")
        prompts = [row.phrase for row in boxes]
        fig, axes = plt.subplots(len(models), len(prompts) + 1, figsize=(2.6 * (len(prompts) + 1), 2.6 * len(models)),
                                 squeeze=False)
        for row_axes, (loss, loaded) in zip(axes, models.items()):
            shown, maps = similarity_maps(loaded, image, prompts=prompts)
            row_axes[0].imshow(shown.mean(axis=2), cmap="gray")
            row_axes[0].set_title(f"{loss}", fontsize=9)
            scale = shown.shape[0] / image.size[1]
            for ax, similarity, box in zip(row_axes[1:], maps, boxes):
                ax.imshow(shown.mean(axis=2), cmap="gray")
                ax.imshow(similarity.values, cmap="jet", alpha=0.45)
                x0, y0, x1, y1 = (v * scale for v in box.box)
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.2))
                ax.set_title(similarity.label, fontsize=8)
        for ax in axes.flat:
            ax.axis("off")
        fig.tight_layout()
        name = f"heatmap-{index}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(f"heatmaps/{name}")
    return written


def run_demo(options: DemoOptions) -> dict:
    """The whole demo; returns what demo.json holds."""
    from tqdm import tqdm

    from tier_openclip.analyze import plot_rank_curves
    from tier_openclip.phantom import PhantomConfig, write_phantom_dataset

    started = time.time()
    unknown = [loss for loss in options.losses if loss not in LOSSES]
    if unknown:
        raise SystemExit(f"tier-openclip demo: unknown loss {unknown[0]!r}; choose from {', '.join(LOSSES)}")
    options.out.mkdir(parents=True, exist_ok=True)
    config = PhantomConfig.preset(options.size, seed=0, **options.phantom_overrides)
    data = write_phantom_dataset(options.out / "data", config, progress=options.progress)

    epochs, batch_size = schedule(options)
    steps = len(options.losses) * options.seeds * epochs * (data["num_train"] // batch_size)
    runs: dict[str, list[dict]] = {loss: [] for loss in options.losses}
    first_checkpoints: dict[str, Path] = {}
    with tqdm(total=steps, desc="training", unit="step", disable=not options.progress) as progress:
        for seed in range(options.seeds):
            for loss in options.losses:
                progress.set_postfix_str(f"{loss}, seed {seed}")
                logs = options.out / "runs"
                checkpoint = run_training(training_command(options, data, loss, seed, logs), logs / f"{loss}-seed{seed}", progress)
                runs[loss].append(evaluate_run(checkpoint, data, options))
                first_checkpoints.setdefault(loss, checkpoint)

    summary = summarise(runs)
    plot_rank_curves({loss: seed_runs[0]["similarity"] for loss, seed_runs in runs.items()}, options.out / "sparsity.png")
    data["heatmaps"] = draw_demo_heatmaps(first_checkpoints, data, options.out / "heatmaps", options.heatmap_images)
    seconds = time.time() - started
    report = format_report(summary, per_finding_auc(runs), options, data, seconds)
    (options.out / "report.md").write_text(report)
    result = {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        "data": {k: v for k, v in data.items() if k != "heatmaps"},
        "summary": summary,
        "per_finding_auc": per_finding_auc(runs),
        "runs": runs,
        "wall_seconds": seconds,
        "machine": machine_description(),
    }
    (options.out / "demo.json").write_text(json.dumps(result, indent=2, default=list))
    return result


def machine_description() -> dict:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def demo(args: argparse.Namespace) -> int:
    options = DemoOptions(
        out=Path(args.out), size=args.size, seeds=args.seeds, losses=args.losses.split(","),
        tier_lambda=args.tier_lambda, uniform_weight=args.uniform_weight, bootstrap=args.bootstrap,
    )
    result = run_demo(options)
    print((options.out / "report.md").read_text())
    print(f"wrote {options.out / 'report.md'}, {options.out / 'demo.json'}, sparsity.png and heatmaps/ "
          f"in {result['wall_seconds'] / 60:.1f} min")
    return 0


def add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="Train clip vs tier on phantom chest X-rays on the CPU and report what changes.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="tier-demo", help="Output folder (default: ./tier-demo).")
    parser.add_argument("--size", choices=list(SIZES), default="small",
                        help="small: ~10 min on 2 cores (default); medium: more data and epochs.")
    parser.add_argument("--seeds", type=int, default=3, help="Training seeds per loss (default: 3).")
    parser.add_argument("--losses", default=",".join(LOSSES),
                        help=f"Comma-separated subset of {', '.join(LOSSES)} (default: all).")
    parser.add_argument("--tier-lambda", type=float, default=0.1, help="TIER λ, both directions (default: 0.1).")
    parser.add_argument("--uniform-weight", type=float, default=0.1,
                        help="Weight of the within-sample uniformity prior (default: 0.1).")
    parser.add_argument("--bootstrap", type=int, default=200, help="Bootstrap resamples for AUC intervals.")
    parser.set_defaults(func=demo)

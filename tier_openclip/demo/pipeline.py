"""The demo from end to end: phantom data, one CLIP pre-training, paired fine-tunes, evaluation,
report. ``run_demo`` (the default arms) and ``run_sweep`` (TIER's λ × scale) share every step;
in one output folder they share the data, the pre-training and the clip controls too."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Sequence

from tier_openclip.demo import report, summary
from tier_openclip.demo.design import Arm, DemoOptions, steps_per_epoch, sweep_arms, training_command
from tier_openclip.demo.runs import SEG_TRAIN_IMAGES, evaluate_checkpoint, run_training, write_training_csv
from tier_openclip.errors import UsageError

PRETRAIN_SEED = 0


def machine_description() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def check_options(options: DemoOptions, arms: Sequence[Arm]) -> None:
    options.preset()
    if options.seeds < 1:
        raise UsageError(f"--seeds {options.seeds}: at least 1 (3 or more to tell an effect from noise)")
    if "clip" not in [arm.name for arm in arms]:
        raise UsageError("--losses must include clip: every other arm is compared with it, seed by seed")
    if len({arm.slug for arm in arms}) != len(arms):
        raise UsageError("--losses names an arm twice")


def prepare_data(options: DemoOptions, progress: bool) -> tuple[dict, float]:
    from tier_openclip.phantom import PhantomConfig, write_phantom_dataset

    started = time.time()
    preset = options.preset()
    config = PhantomConfig.preset(preset.phantom, seed=0, **{**dict(preset.phantom_overrides), **options.phantom_overrides})
    workers = options.render_workers if options.render_workers is not None else min(4, os.cpu_count() or 1)
    data = write_phantom_dataset(options.out / "data", config, progress=progress, workers=workers,
                                 seg_max_train=SEG_TRAIN_IMAGES)
    data["train_csv"] = str(write_training_csv(data, options.out / "data" / "train_csv"))
    return data, time.time() - started


def train_and_evaluate(options: DemoOptions, arms: Sequence[Arm]) -> dict:
    """Everything both commands need: data, the start checkpoint, every (arm, seed) run, evaluated."""
    from tqdm import tqdm

    check_options(options, arms)
    started = time.time()
    options.out.mkdir(parents=True, exist_ok=True)
    data, data_seconds = prepare_data(options, options.progress)
    preset, pre, fine = options.preset(), options.stage("pretrain"), options.stage("finetune")
    per_epoch = steps_per_epoch(data["num_train"], preset.batch_size)
    if per_epoch < 1:
        raise UsageError(f"{data['num_train']} training images make no batch of {preset.batch_size}")
    logs = options.out / "runs"
    total = per_epoch * (pre.epochs + fine.epochs * len(arms) * options.seeds)
    timings: dict[str, dict] = {}
    eval_seconds = 0.0
    with tqdm(total=total, desc="training", unit="step", disable=not options.progress, dynamic_ncols=True) as bar:
        bar.set_postfix_str("pre-training clip")
        start = run_training(training_command(data, preset.batch_size, pre, PRETRAIN_SEED, logs, "pretrain",
                                              ["--loss", "clip"]), logs / "pretrain", pre.epochs,
                             per_epoch * pre.epochs, [Path(data["train_csv"])], bar)
        timings["pretrain"] = start
        start_eval = evaluate_checkpoint(Path(start["checkpoint"]), data, options.bootstrap)
        eval_seconds += start_eval["eval_seconds"]
        results: dict[str, list[dict]] = {arm.name: [] for arm in arms}
        for seed in range(options.seeds):
            for arm in arms:
                bar.set_postfix_str(f"{arm.name}, seed {seed}")
                name = f"{arm.slug}-seed{seed}"
                command = training_command(data, preset.batch_size, fine, seed, logs, name, arm.flags(),
                                           start=Path(start["checkpoint"]))
                run = run_training(command, logs / name, fine.epochs, per_epoch * fine.epochs,
                                   [Path(data["train_csv"]), Path(start["checkpoint"])], bar)
                timings[name] = run
                evaluated = evaluate_checkpoint(Path(run["checkpoint"]), data, options.bootstrap)
                eval_seconds += evaluated["eval_seconds"]
                results[arm.name].append({"seed": seed, "start": start["checkpoint"], **evaluated})
    rows = {name: [summary.metric_values(r) for r in runs] for name, runs in results.items()}
    trained = [t for t in timings.values() if not t["reused"]]
    stages = {"phantom data + training CSV": data_seconds,
              "training (all runs)": sum(t["wall_seconds"] for t in trained),
              "evaluation (all runs)": eval_seconds}
    return {
        "setup": {"size": options.size, "seeds": options.seeds, "batch_size": preset.batch_size,
                  "pretrain": {**vars(pre), "steps": per_epoch * pre.epochs, "seed": PRETRAIN_SEED},
                  "finetune": {**vars(fine), "steps": per_epoch * fine.epochs},
                  "arms": [{"name": a.name, "slug": a.slug, "flags": a.flags()} for a in arms]},
        "data": {k: v for k, v in data.items() if k != "prompts"},
        "start": {"checkpoint": start["checkpoint"], "metrics": summary.metric_values(start_eval),
                  "patches": start_eval["similarity"]["patches"],
                  "max_entropy_token_to_patch": start_eval["similarity"]["max_entropy_token_to_patch"]},
        "baselines": {**summary.baselines(start_eval), "per_finding": _per_finding_baselines(start_eval),
                      "segmentation": summary.segmentation_baselines(start_eval)},
        "grounding_phrases": start_eval["grounding"]["num_phrases"],
        "summary": {name: summary.arm_summary(r) for name, r in rows.items()},
        "rows": rows,
        "results": results,
        "start_result": start_eval,
        "timings": {"stages": stages, "runs": timings, "started": started,
                    "mean_step_seconds": _mean_step_seconds(timings),
                    "mean_overhead_seconds": _mean([t["overhead_seconds"] for t in trained])},
        "machine": machine_description(),
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _mean_step_seconds(timings: dict[str, dict]) -> dict[str, float]:
    """Seconds per step by kind of run (pretrain, and each arm's slug), from runs trained now."""
    by_kind: dict[str, list[float]] = {}
    for name, timing in timings.items():
        if not timing["reused"] and timing["mean_step_seconds"]:
            by_kind.setdefault(name.rsplit("-seed", 1)[0], []).append(timing["mean_step_seconds"])
    return {kind: sum(v) / len(v) for kind, v in by_kind.items()}


def _per_finding_baselines(result: dict) -> dict:
    base = result["grounding"]["baselines"]
    findings = result["grounding"]["per_finding"]
    return {f: {name: base[name].get("per_finding", {}).get(f, {}).get("pointing_game") if name in base else None
                for name in ("prior", "located_prior", "random")}
            for f in findings}


def _finish(trained: dict, out: Path, stem: str) -> None:
    trained["timings"].pop("started")
    (out / f"{stem}.json").write_text(json.dumps(trained, indent=1, default=str))


def run_demo(options: DemoOptions) -> dict:
    """The default demo: report.md, demo.json, sparsity.png and heatmaps/ in options.out."""
    from tier_openclip.analyze import plot_rank_curves

    arms = options.arms()
    result = train_and_evaluate(options, arms)
    control = result["rows"]["clip"]
    result["differences"] = {name: summary.paired_differences(rows, control)
                             for name, rows in result["rows"].items() if name != "clip"}
    result["per_finding_auc"] = {name: summary.per_finding_auc(runs) for name, runs in result["results"].items()}
    result["per_finding_pointing_cam"] = {name: summary.per_finding_grounding(runs, "pointing_game", "grounding_cam")
                                          for name, runs in result["results"].items()}
    started = time.time()
    plot_rank_curves({"start": result["start_result"]["similarity"],
                      **{name: runs[0]["similarity"] for name, runs in result["results"].items()}},
                     options.out / "sparsity.png")
    checkpoints = {"start": result["start"]["checkpoint"],
                   **{name: runs[0]["checkpoint"] for name, runs in result["results"].items()}}
    result["heatmaps"] = report.draw_heatmaps(checkpoints, result["data"]["grounding_dir"], options.out / "heatmaps",
                                              options.heatmap_images)
    result["timings"]["stages"]["plots and heatmaps"] = time.time() - started
    result["timings"]["total_seconds"] = time.time() - result["timings"]["started"]
    (options.out / "report.md").write_text(report.format_report(result))
    _finish(result, options.out, "demo")
    return result


def run_sweep(options: DemoOptions, lambdas: Sequence[float], scales: Sequence[str]) -> dict:
    """TIER at every λ × scale against the clip control: sweep.md, sweep.json, sweep.png."""
    arms = sweep_arms(lambdas, scales)
    result = train_and_evaluate(options, arms)
    control = result["rows"]["clip"]
    result["control"] = result["summary"]["clip"]
    result["grid"] = [{"arm": arm.name, "lambda": arm.tier_lambda, "scale": arm.tier_scale,
                       "differences": summary.paired_differences(result["rows"][arm.name], control),
                       "summary": result["summary"][arm.name]} for arm in arms if arm.name != "clip"]
    started = time.time()
    report.plot_sweep(result, options.out / "sweep.png")
    result["timings"]["stages"]["plot"] = time.time() - started
    result["timings"]["total_seconds"] = time.time() - result["timings"]["started"]
    (options.out / "sweep.md").write_text(report.format_sweep(result))
    _finish(result, options.out, "sweep")
    return result

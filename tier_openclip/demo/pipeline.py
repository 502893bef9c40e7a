"""The demo from end to end: phantom data, N CLIP pre-trainings (the starts), every arm
fine-tuned from every start, evaluation, report. ``run_demo`` (the default arms) and ``run_sweep``
(TIER's λ × scale) share every step; in one output folder they share the data, the pre-trainings
and the clip controls too. Trainings and evaluations run in one-thread child processes, several at
once (runs.run_concurrently), with the code-path pins of environment.PINS (``DemoOptions.pin``)."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path
from typing import Sequence

from tier_openclip.demo import environment, report, summary
from tier_openclip.demo.design import (Arm, DemoOptions, pretrain_flags, run_name, steps_per_epoch, sweep_arms,
                                       training_command)
from tier_openclip.demo.manipulation import calibrated_lambda
from tier_openclip.demo.runs import (SEG_TRAIN_IMAGES, evaluate_in_workers, ratio_key, run_concurrently,
                                     run_training, write_training_csv)
from tier_openclip.errors import UsageError

#: the token→patch map statistics the manipulation check pairs (diagnostics.token_map_stats keys)
MAP_METRICS = ("top1_mass", "topk_mass", "entropy_token_patch")


def check_options(options: DemoOptions, arms: Sequence[Arm]) -> None:
    options.preset()
    if options.starts < 1:
        raise UsageError(f"--starts {options.starts}: at least 1 (3 or more for an interval over starts)")
    if "clip" not in [arm.name for arm in arms]:
        raise UsageError("--losses must include clip: every other arm is compared with it, start by start")
    if len({arm.slug for arm in arms}) != len(arms):
        raise UsageError("--losses names an arm twice")
    if not options.calibrated_ratio > 0:
        raise UsageError(f"--calibrated-ratio {options.calibrated_ratio}: a positive share, e.g. 0.1")


def prepare_data(options: DemoOptions, progress: bool) -> tuple[dict, float]:
    from tier_openclip.phantom import PhantomConfig, write_phantom_dataset

    started = time.time()
    preset = options.preset()
    config = PhantomConfig.preset(preset.phantom, seed=0, grounding=options.grounding,
                                  **{**dict(preset.phantom_overrides), **options.phantom_overrides})
    workers = options.render_workers if options.render_workers is not None else min(4, os.cpu_count() or 1)
    data = write_phantom_dataset(options.out / "data", config, progress=progress, workers=workers,
                                 seg_max_train=SEG_TRAIN_IMAGES)
    data["train_csv"] = str(write_training_csv(data, options.out / "data" / "train_csv"))
    return data, time.time() - started


def _tier_scales(arms: Sequence[Arm]) -> list[str]:
    return list(dict.fromkeys(arm.tier_scale for arm in arms if arm.is_tier))


def train_and_evaluate(options: DemoOptions, arms: Sequence[Arm]) -> dict:
    """Everything both commands need: data, the starts, every (arm, start) run, evaluated, and the
    manipulation check's measurements."""
    from tqdm import tqdm

    check_options(options, arms)
    started = time.time()
    package = environment.package_version()  # the code that runs, whatever is committed meanwhile
    options.out.mkdir(parents=True, exist_ok=True)
    data, data_seconds = prepare_data(options, options.progress)
    clock = time.time()
    fingerprint = environment.data_fingerprint(data)
    fingerprint_seconds = time.time() - clock
    pins = environment.PINS if options.pin else None
    preset, pre, fine = options.preset(), options.stage("pretrain"), options.stage("finetune")
    per_epoch = steps_per_epoch(data["num_train"], preset.batch_size)
    if per_epoch < 1:
        raise UsageError(f"{data['num_train']} training images make no batch of {preset.batch_size}")
    logs = options.out / "runs"
    train_csv = Path(data["train_csv"])
    scales = _tier_scales(arms)
    total = per_epoch * options.starts * (pre.epochs + fine.epochs * len(arms))
    timings: dict[str, dict] = {}
    stages: dict[str, float] = {"phantom data + training CSV": data_seconds, "data fingerprint": fingerprint_seconds}
    with tqdm(total=total, desc="training", unit="step", disable=not options.progress, dynamic_ncols=True) as bar:
        clock = time.time()
        progress = _LockedProgress(bar)
        bar.set_postfix_str(f"pre-training {options.starts} starts")
        names = [run_name("pretrain", seed, options.pretrain_loss) for seed in range(options.starts)]
        flags = pretrain_flags(options.pretrain_loss)
        done = run_concurrently([
            lambda seed=seed, name=name: run_training(
                training_command(data, preset.batch_size, pre, seed, logs, name, flags),
                logs / name, pre.epochs, per_epoch * pre.epochs, [train_csv], progress, pins)
            for seed, name in enumerate(names)])
        timings.update(zip(names, done))
        stages["pre-training"] = time.time() - clock
        # The starts: evaluation, their maps at every TIER arm's scale, TIER's gradient ratio at λ 1
        # per scale (the ratio is proportional to λ: diagnostics.lambda_for_ratio).
        clock = time.time()
        checkpoints = [run["checkpoint"] for run in done]
        ratio_specs = [{"scale": scale, "lambda": 1.0} for scale in scales]
        evaluated = evaluate_in_workers([{"checkpoint": c, "map_scales": scales, "ratios": ratio_specs} for c in checkpoints],
                                        data, options.bootstrap, pins, logs)
        stages["evaluation of the starts"] = time.time() - clock
        starts = []
        for seed, (checkpoint, item) in enumerate(zip(checkpoints, evaluated["results"])):
            evaluation = item["evaluation"]
            starts.append({"seed": seed, "checkpoint": checkpoint, "evaluation": evaluation, "maps": item["maps"],
                           "ratios_at_lambda_1": {s: item["ratios"][ratio_key(s, 1.0)]["ratio"] for s in scales},
                           "metrics": summary.metric_values(evaluation),
                           "precondition": summary.precondition(evaluation)})
        runs_by_start = [{arm.name: _resolve(arm, start) for arm in arms} for start in starts]
        clock = time.time()
        bar.set_postfix_str(f"fine-tuning {len(arms)} arms x {options.starts} starts")
        finetunes = [(arm, seed, run_name(arm.slug, seed, options.pretrain_loss))
                     for seed in range(options.starts) for arm in arms]
        jobs = []
        for arm, seed, name in finetunes:
            start = Path(starts[seed]["checkpoint"])
            command = training_command(data, preset.batch_size, fine, seed, logs, name,
                                       runs_by_start[seed][arm.name].flags(), start=start)
            jobs.append(lambda command=command, name=name, inputs=[train_csv, start]: run_training(
                command, logs / name, fine.epochs, per_epoch * fine.epochs, inputs, progress, pins))
        finetuned = run_concurrently(jobs)
        timings.update((name, run) for (_, _, name), run in zip(finetunes, finetuned))
        stages["fine-tuning"] = time.time() - clock
    clock = time.time()
    finished = evaluate_in_workers([{"checkpoint": run["checkpoint"], "map_scales": scales, "ratios": []}
                                    for run in finetuned], data, options.bootstrap, pins, logs)
    stages["evaluation of the fine-tunes"] = time.time() - clock
    results: dict[str, list[dict]] = {arm.name: [] for arm in arms}
    for (arm, seed, _), item in zip(finetunes, finished["results"]):
        resolved = runs_by_start[seed][arm.name]
        results[arm.name].append({"start": seed, "start_checkpoint": starts[seed]["checkpoint"],
                                  "tier_lambda": resolved.tier_lambda, "maps": item["maps"], **item["evaluation"]})
    rows = {name: [summary.metric_values(r) for r in runs] for name, runs in results.items()}
    first = starts[0]["evaluation"]
    trained = [t for t in timings.values() if not t["reused"]]
    return {
        "setup": {"size": options.size, "starts": options.starts, "batch_size": preset.batch_size,
                  "pretrain": {**vars(pre), "steps": per_epoch * pre.epochs, "seeds": list(range(options.starts)),
                               "loss": options.pretrain_loss, "flags": pretrain_flags(options.pretrain_loss)},
                  "finetune": {**vars(fine), "steps": per_epoch * fine.epochs},
                  "arms": [_arm_setup(arm, [runs_by_start[s][arm.name] for s in range(options.starts)]) for arm in arms]},
        "data": {k: v for k, v in data.items() if k != "prompts"},
        "data_fingerprint": fingerprint,
        "environment": environment.environment(pins, evaluated["process"], package),
        "starts": [{k: v for k, v in start.items() if k != "evaluation"} for start in starts],
        "start": {"patches": first["similarity"]["patches"],
                  "max_entropy_token_to_patch": first["similarity"]["max_entropy_token_to_patch"]},
        "start_summary": summary.arm_summary([start["metrics"] for start in starts]),
        "preconditions_held": all(start["precondition"]["held"] for start in starts),
        "baselines": {**summary.baselines(first), "per_finding": _per_finding_baselines(first),
                      "segmentation": summary.segmentation_baselines(first)},
        "grounding_phrases": first["grounding"]["num_phrases"],
        "summary": {name: summary.arm_summary(r) for name, r in rows.items()},
        "rows": rows,
        "manipulation": _manipulation(arms, results, starts),
        "results": results,
        "start_results": [start["evaluation"] for start in starts],
        "timings": {"stages": stages, "runs": timings, "started": started,
                    "mean_step_seconds": _mean_step_seconds(timings),
                    "mean_overhead_seconds": _mean([t["overhead_seconds"] for t in trained]),
                    "mean_eval_seconds": _mean([r["eval_seconds"] for runs in results.values() for r in runs])},
    }


class _LockedProgress:
    """The progress bar as the concurrent trainings update it: one update at a time."""

    def __init__(self, bar) -> None:
        self._bar, self._lock = bar, threading.Lock()

    def update(self, steps: int) -> None:
        with self._lock:
            self._bar.update(steps)


def _resolve(arm: Arm, start: dict) -> Arm:
    """The arm as it trains from this start: a calibrated arm gets the λ its start's ratio asks for."""
    if arm.target_ratio is None:
        return arm
    measured = {"ratio": start["ratios_at_lambda_1"][arm.tier_scale], "lambda": 1.0}
    return dataclasses.replace(arm, tier_lambda=calibrated_lambda(arm.target_ratio, measured))


def _arm_setup(arm: Arm, per_start: Sequence[Arm]) -> dict:
    entry = {"name": arm.name, "slug": arm.slug, "flags": per_start[0].flags(), "tier_scale": arm.tier_scale,
             "tier_lambda": arm.tier_lambda}
    if arm.target_ratio is not None:
        entry.update(target_ratio=arm.target_ratio, tier_lambda_per_start=[a.tier_lambda for a in per_start],
                     flags_per_start=[a.flags() for a in per_start])
    return entry


def _manipulation(arms: Sequence[Arm], results: dict[str, list[dict]], starts: Sequence[dict]) -> dict:
    """Per TIER arm, at its training scale: the token→patch map statistics of the start, the clip
    control and the arm, start by start, their paired differences (arm − clip), and TIER's
    gradient ratio on each start at the arm's λ (the λ-1 ratio times λ)."""
    out = {}
    for arm in arms:
        if not arm.is_tier:
            continue
        scale = arm.tier_scale

        def stats(entries: Sequence[dict]) -> list[dict]:
            return [{m: entry["maps"][scale][m] for m in MAP_METRICS} for entry in entries]

        arm_rows, clip_rows = stats(results[arm.name]), stats(results["clip"])
        out[arm.name] = {
            "scale": scale,
            "scale_values": [start["maps"][scale]["scale_value"] for start in starts],
            "max_top1_mass": [start["maps"][scale]["max_top1_mass"] for start in starts],
            "uniform": {"top1_mass": starts[0]["maps"][scale]["uniform_top1_mass"],
                        "topk_mass": starts[0]["maps"][scale]["uniform_topk_mass"],
                        "entropy_token_patch": starts[0]["maps"][scale]["max_entropy_token_patch"],
                        "top_k": starts[0]["maps"][scale]["top_k"]},
            "lambda_per_start": [run["tier_lambda"] for run in results[arm.name]],
            "ratio_on_start": [start["ratios_at_lambda_1"][scale] * run["tier_lambda"]
                               for start, run in zip(starts, results[arm.name])],
            "start": stats(starts), "clip": clip_rows, "arm": arm_rows,
            "differences": summary.paired_differences(arm_rows, clip_rows),
        }
    return out


def _decisions(result: dict) -> dict:
    return {name: summary.decide(check["differences"]["top1_mass"], result["differences"][name]["pointing_game"],
                                 result["preconditions_held"])
            for name, check in result["manipulation"].items()}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _mean_step_seconds(timings: dict[str, dict]) -> dict[str, float]:
    """Seconds per step by kind of run (pretrain, and each arm's slug), from runs trained now."""
    by_kind: dict[str, list[float]] = {}
    for name, timing in timings.items():
        if not timing["reused"] and timing["mean_step_seconds"]:
            by_kind.setdefault(name.rsplit("-start", 1)[0], []).append(timing["mean_step_seconds"])
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
    from tier_openclip.evaluation.analyze import plot_rank_curves

    arms = options.arms()
    result = train_and_evaluate(options, arms)
    control = result["rows"]["clip"]
    result["differences"] = {name: summary.paired_differences(rows, control)
                             for name, rows in result["rows"].items() if name != "clip"}
    result["decisions"] = _decisions(result)
    result["per_finding_auc"] = {name: summary.per_finding_auc(runs) for name, runs in result["results"].items()}
    result["per_finding_pointing_cam"] = {name: summary.per_finding_grounding(runs, "pointing_game", "grounding_cam")
                                          for name, runs in result["results"].items()}
    started = time.time()
    plot_rank_curves({"start 0": result["start_results"][0]["similarity"],
                      **{name: runs[0]["similarity"] for name, runs in result["results"].items()}},
                     options.out / "sparsity.png")
    checkpoints = {"start 0": result["starts"][0]["checkpoint"],
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
    result["differences"] = {arm.name: summary.paired_differences(result["rows"][arm.name], control)
                             for arm in arms if arm.name != "clip"}
    result["decisions"] = _decisions(result)
    result["grid"] = [{"arm": arm.name, "lambda": arm.tier_lambda, "scale": arm.tier_scale,
                       "differences": result["differences"][arm.name], "summary": result["summary"][arm.name],
                       "manipulation": result["manipulation"][arm.name]["differences"],
                       "decision": result["decisions"][arm.name]} for arm in arms if arm.name != "clip"]
    started = time.time()
    report.plot_sweep(result, options.out / "sweep.png")
    result["timings"]["stages"]["plot"] = time.time() - started
    result["timings"]["total_seconds"] = time.time() - result["timings"]["started"]
    (options.out / "sweep.md").write_text(report.format_sweep(result))
    _finish(result, options.out, "sweep")
    return result

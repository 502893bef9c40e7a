"""`tier-openclip demo`: the pure summary functions on hand-made numbers (t-interval against
scipy.stats, the decision rule, the precondition), the data fingerprint and environment record,
the paired design of the training commands, and (slow) a reduced demo end to end, run twice."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tier_openclip.demo import DemoOptions, run_demo, run_sweep, sweep_arms
from tier_openclip.demo.design import SIZES, Stage, make_arm, training_command
from tier_openclip.demo.summary import (arm_summary, decide, paired_differences, precondition, spread, t_interval,
                                        t_quantile, verdict)
from tier_openclip.errors import CommandError, UsageError
from tier_openclip.openclip_adapter import parse_step_times

# --- pure summaries ---------------------------------------------------------------------------


def test_spread_is_mean_and_sample_sd():
    entry = spread([1.0, 2.0, 4.0])
    assert entry["mean"] == pytest.approx(7 / 3)
    assert entry["sd"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert spread([0.5]) == {"mean": 0.5, "sd": 0.0, "values": [0.5]}


def test_paired_differences_are_arm_minus_control_start_by_start():
    control = [{"auc": 0.80, "cnr": 1.0}, {"auc": 0.70, "cnr": 2.0}, {"auc": 0.90, "cnr": 0.5}]
    arm = [{"auc": 0.85, "cnr": 0.0}, {"auc": 0.76, "cnr": 2.5}, {"auc": 0.94, "cnr": 0.4}]
    out = paired_differences(arm, control)
    assert out["auc"]["values"] == pytest.approx([0.05, 0.06, 0.04])
    assert out["auc"]["mean"] == pytest.approx(0.05) and out["auc"]["sd"] == pytest.approx(0.01)
    assert out["auc"]["n"] == 3
    # t(0.975, 2) = 4.303: 0.05 ± 4.303 * 0.01 / √3 = [0.0252, 0.0748], above 0
    assert out["auc"]["ci"] == pytest.approx([0.05 - 4.3027 * 0.01 / math.sqrt(3), 0.05 + 4.3027 * 0.01 / math.sqrt(3)],
                                             abs=1e-4)
    assert out["auc"]["verdict"] == "higher"
    assert out["cnr"]["values"] == pytest.approx([-1.0, 0.5, -0.1])
    assert out["cnr"]["verdict"] == "within noise"  # the interval covers 0
    # The unpaired means would hide the pairing: arm_summary gives each arm's own spread.
    assert arm_summary(arm)["auc"]["mean"] == pytest.approx((0.85 + 0.76 + 0.94) / 3)


def test_t_interval_matches_scipy():
    from scipy import stats

    for df in (1, 2, 3, 4, 9, 29):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-7)
    assert t_quantile(0.9, 5) == pytest.approx(stats.t.ppf(0.9, 5), rel=1e-7)
    for values in ([0.02, 0.03, 0.04], [0.1, -0.3, 0.05, 0.2], [1.0, 3.0]):
        mean, sem = float(np.mean(values)), float(stats.sem(values))
        expected = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
        assert t_interval(values) == pytest.approx(list(expected), rel=1e-7)
    assert t_interval([0.5]) is None
    with pytest.raises(ValueError, match="0.5 < p < 1"):
        t_quantile(0.3, 2)


def test_verdict_rule():
    assert verdict([-0.05, -0.04, -0.06]) == "lower"  # [-0.075, -0.025]
    # same signs, but the interval covers 0: 0.0297 ± 4.303 * 0.0285 / √3
    assert verdict([0.001, 0.03, 0.058]) == "within noise"
    assert verdict([0.02, 0.03, 0.04]) == "higher"  # 0.03 ± 0.0248
    assert verdict([0.1]) == "within noise"  # one start tells nothing
    assert verdict([0.0, 0.0, 0.0]) == "within noise"  # an interval of one point at 0 covers it


def _difference(values):
    return paired_differences([{"m": v} for v in values], [{"m": 0.0} for _ in values])["m"]


def test_decision_rule_on_hand_made_numbers():
    moved, still = _difference([0.30, 0.25, 0.35]), _difference([0.02, 0.01, 0.03])
    small_rise = _difference([0.06, 0.08, 0.05])  # above 0, but by less than the rule's 0.1
    assert decide(still, _difference([0.2, 0.2, 0.21]), True) == {"reading": "inert", "rule": "inert",
                                                                   "manipulation_passed": False}
    assert decide(small_rise, _difference([0.2, 0.2, 0.21]), True)["reading"] == "inert"
    assert decide(_difference([0.5, -0.1, 0.4]), _difference([0.2, 0.2, 0.21]), True)["reading"] == "inert"  # one start still
    assert decide(_difference([0.5, 0.09, 0.4]), _difference([0.2, 0.2, 0.21]), True)["reading"] == "inert"  # one below 0.1
    # every start moved by ≥ 0.1, though the t-interval at n = 3 covers 0 ([-0.24, +1.10]): the maps moved
    assert decide(_difference([0.33, 0.23, 0.74]), _difference([0.07, 0.06, 0.08]), True)["reading"] == "supported"
    assert decide(moved, _difference([0.07, 0.06, 0.08]), True)["reading"] == "supported"
    assert decide(moved, _difference([0.04, 0.05, 0.03]), True)["reading"] == "inconclusive"  # mean below +0.05
    assert decide(moved, _difference([0.07, -0.02, 0.12]), True)["reading"] == "inconclusive"  # CI covers 0
    assert decide(moved, _difference([-0.10, -0.12, -0.09]), True)["reading"] == "falsified"  # upper bound < +0.02
    # mean 0, sd 0.01, half-width 0.0248: the upper bound +0.0248 is not below +0.02
    assert decide(moved, _difference([0.0, 0.01, -0.01]), True)["rule"] == "inconclusive"
    assert decide(moved, _difference([-0.01, 0.0, -0.005]), True)["rule"] == "falsified"  # [-0.0174, +0.0074]
    blocked = decide(moved, _difference([0.07, 0.06, 0.08]), False)
    assert blocked == {"reading": "not tested", "rule": "supported", "manipulation_passed": True}


def test_precondition_compares_token_maps_with_the_prior_on_phrases_without_location_words():
    def start(pointing, prior):
        return {"grounding": {"by_location_words": {"without": {
            "pointing_game": {"value": pointing}, "phrases": 40, "baselines": {"prior": {"pointing_game": prior}}}}}}

    assert precondition(start(0.30, 0.12)) == {"pointing": 0.30, "prior": 0.12, "phrases": 40, "held": True}
    assert precondition(start(0.10, 0.12))["held"] is False
    assert precondition(start(0.12, 0.12))["held"] is False  # a tie is not beating the prior
    assert precondition({"grounding": {"by_location_words": {}}})["held"] is None  # no such phrases: not tested


def test_unpaired_rows_are_refused():
    with pytest.raises(ValueError, match="pairs need one of each per start"):
        paired_differences([{"auc": 1.0}], [{"auc": 1.0}, {"auc": 0.5}])


def test_step_times_are_read_from_open_clip_log_lines():
    log = ("2026-12-01,20:41:15 | INFO | Train Epoch: 0 [  64/2000 (3%)] Data (t): 0.096 Batch (t): 0.354, 180.7/s\n"
           "noise\n"
           "2026-12-01,20:41:16 | INFO | Train Epoch: 1 [ 128/2000 (6%)] Data (t): 0.068 Batch (t): 0.292, 219.3/s\n")
    assert parse_step_times(log) == [0.354, 0.292]


def _fake_training(tmp_path, step_line):
    """A 'training' command that logs one step line and writes the final checkpoint."""
    run_dir = tmp_path / "runs" / "clip"
    script = (f"import pathlib; print({step_line!r}); p = pathlib.Path({str(run_dir / 'checkpoints')!r}); "
              "p.mkdir(parents=True); (p / 'epoch_1.pt').write_bytes(b'')")
    return [sys.executable, "-c", script], run_dir


def test_a_training_logging_steps_in_an_unknown_form_stops_the_demo_with_one_message(tmp_path):
    from tier_openclip.demo.runs import run_training

    line = "2026-12-05,09:20:29 | INFO | Train Epoch: 0 [  32/2000 (2%)] Data (t): 0.024 Batch (t): 0.133, 240.2/s"
    command, run_dir = _fake_training(tmp_path, line)
    result = run_training(command, run_dir, epochs=1, steps=1, inputs=[])
    assert result["steps"] == 1 and result["step_seconds"] == pytest.approx(0.133)
    command, run_dir = _fake_training(tmp_path / "changed", line.replace("Batch (t)", "Step (t)"))
    with pytest.raises(CommandError, match="training clip: open_clip .* logs its training steps in a form"):
        run_training(command, run_dir, epochs=1, steps=1, inputs=[])


def test_children_run_on_one_thread_with_the_pins_and_a_run_made_on_other_threads_is_not_reused(tmp_path, monkeypatch):
    from tier_openclip.demo import runs
    from tier_openclip.demo.environment import PINS, child_environ

    env = child_environ(PINS)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" and all(env[k] == v for k, v in PINS.items())
    assert {k: child_environ(None).get(k) for k in PINS} == {k: os.environ.get(k) for k in PINS}
    line = "2026-12-05,09:20:29 | INFO | Train Epoch: 0 [  32/2000 (2%)] Data (t): 0.024 Batch (t): 0.133, 240.2/s"
    command, run_dir = _fake_training(tmp_path, line)
    assert not runs.run_training(command, run_dir, epochs=1, steps=1, inputs=[])["reused"]
    assert runs.run_training(command, run_dir, epochs=1, steps=1, inputs=[])["reused"]
    monkeypatch.setattr(runs, "CHILD_THREADS", {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"})
    assert not runs.run_training(command, run_dir, epochs=1, steps=1, inputs=[])["reused"]


def test_concurrent_jobs_keep_their_order_stay_within_twice_the_cores_and_a_failure_is_raised(monkeypatch):
    import threading

    from tier_openclip.demo import runs

    monkeypatch.setattr(runs, "usable_cpus", lambda: 2)
    assert [runs.concurrency(n) for n in (0, 1, 3, 4, 9)] == [1, 1, 3, 4, 4]
    together = threading.Barrier(4, timeout=30)  # broken (and the test failed) unless 4 jobs run at once
    lock, running, peak = threading.Lock(), [0], [0]

    def job(value):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        together.wait()
        with lock:
            running[0] -= 1
        return value * 10

    assert runs.run_concurrently([lambda v=v: job(v) for v in range(8)]) == [v * 10 for v in range(8)]
    assert peak[0] == 4

    def failing(value):
        if value == 5:
            raise CommandError("run 5 failed")
        return value

    with pytest.raises(CommandError, match="run 5 failed"):
        runs.run_concurrently([lambda v=v: failing(v) for v in range(9)])


def test_evaluations_split_over_workers_come_back_in_the_items_order(monkeypatch, tmp_path):
    from tier_openclip.demo import runs

    monkeypatch.setattr(runs, "usable_cpus", lambda: 2)
    calls = []

    def fake_worker(items, data, bootstrap, pins, work_dir):
        calls.append([item["checkpoint"] for item in items])
        return {"process": {"torch_threads": 1}, "results": [{"evaluation": item["checkpoint"]} for item in items]}

    monkeypatch.setattr(runs, "evaluate_in_worker", fake_worker)
    items = [{"checkpoint": f"c{i}"} for i in range(9)]
    done = runs.evaluate_in_workers(items, {}, 0, None, tmp_path)
    assert [r["evaluation"] for r in done["results"]] == [f"c{i}" for i in range(9)]
    assert len(calls) == 4 and sorted(c for part in calls for c in part) == sorted(f"c{i}" for i in range(9))
    assert done["process"] == {"torch_threads": 1}


# --- the paired design ------------------------------------------------------------------------


DATA = {"train_csv": "/d/train.csv", "num_train": 256}


def _flag(command, name):
    return command[command.index(name) + 1]


def test_every_arm_of_a_seed_starts_from_one_checkpoint_and_sees_the_same_data(tmp_path):
    start = tmp_path / "pretrain" / "checkpoints" / "epoch_3.pt"
    stage = Stage(2, 1e-3, 10)
    arms = [make_arm(name, 0.1, "logit", 0.1) for name in ("clip", "tier", "tier+uniformity")]
    commands = {arm.slug: training_command(DATA, 32, stage, 7, tmp_path, f"{arm.slug}-seed7", arm.flags(), start=start)
                for arm in arms}
    strip = {"--loss", "--tier-lambda-text", "--tier-lambda-image", "--tier-scale", "--lu-uniform-weight", "--name"}
    shared = []
    for command in commands.values():
        assert _flag(command, "--pretrained") == str(start)
        assert _flag(command, "--seed") == "7"
        assert _flag(command, "--dataset-type") == "csv"  # open_clip's WebDataset shuffle ignores --seed
        kept, skip = [], False
        for arg in command:
            if skip:
                skip = False
            elif arg in strip:
                skip = True
            else:
                kept.append(arg)
        shared.append(kept)
    assert shared[0] == shared[1] == shared[2]  # everything but the loss and the run name is the same
    assert _flag(commands["clip"], "--loss") == "clip" and "--tier-scale" not in commands["clip"]
    tier = commands["tier-l0.1-slogit"]
    assert (_flag(tier, "--loss"), _flag(tier, "--tier-lambda-text"), _flag(tier, "--tier-scale")) == ("tier", "0.1", "logit")
    assert _flag(commands["tier+uniformity-l0.1-slogit-u0.1"], "--lu-uniform-weight") == "0.1"
    pretrain = training_command(DATA, 32, stage, 0, tmp_path, "pretrain", ["--loss", "clip"])
    assert "--pretrained" not in pretrain


def test_sweep_grid_is_lambda_by_scale_plus_the_control():
    arms = sweep_arms((0.01, 0.1, 0.5), ("1", "10", "logit"))
    assert arms[0].loss == "clip" and len(arms) == 10
    assert {(a.tier_lambda, a.tier_scale) for a in arms[1:]} == {(l, s) for l in (0.01, 0.1, 0.5) for s in ("1", "10", "logit")}
    assert len({a.slug for a in arms}) == 10


def test_unknown_loss_and_missing_control_are_refused(tmp_path):
    with pytest.raises(UsageError, match="unknown loss 'entropy'"):
        run_demo(DemoOptions(out=tmp_path, losses=("entropy",)))
    with pytest.raises(UsageError, match="must include clip"):
        run_demo(DemoOptions(out=tmp_path, losses=("tier",)))
    assert not (tmp_path / "data").exists()  # refused before any work


# --- the data fingerprint and the environment record -------------------------------------------


def _tiny_data(folder: Path) -> dict:
    from tier_openclip import phantom
    from tier_openclip.demo.runs import write_training_csv

    config = phantom.PhantomConfig.preset("small", grounding=True, num_train=12, num_test=8, shard_size=8)
    data = phantom.write_phantom_dataset(folder, config, progress=False, seg_max_train=6)
    data["train_csv"] = str(write_training_csv(data, folder / "train_csv"))
    return data


def test_fingerprint_names_the_data_not_where_or_when_they_were_written(tmp_path):
    from tier_openclip.demo.environment import data_fingerprint

    first, second = _tiny_data(tmp_path / "a" / "data"), _tiny_data(tmp_path / "b" / "data")
    print_a, print_b = data_fingerprint(first), data_fingerprint(second)
    assert print_a == print_b and len(print_a["sha256"]) == 64  # same data in another folder, written later
    # The same bytes written by other code (the segmentation set records a digest of it): same data.
    seg_meta = Path(second["seg_dir"]) / "meta.json"
    meta = json.loads(seg_meta.read_text())
    seg_meta.write_text(json.dumps({**meta, "inputs_digest": "0" * 64}))
    assert data_fingerprint(second) == print_a
    # One caption changed: the training part and the whole change, the test part does not.
    table = Path(second["train_csv"])
    lines = table.read_text().splitlines()
    lines[1] = lines[1] + " extra"
    table.write_text("\n".join(lines) + "\n")
    changed = data_fingerprint(second)
    assert changed["train"] != print_a["train"] and changed["test"] == print_a["test"]
    assert changed["sha256"] != print_a["sha256"]
    # One test label changed: the test part changes.
    labels = Path(first["eval_dir"]) / "labels.csv"
    labels.write_text(labels.read_text().replace(",1", ",0", 1))
    assert data_fingerprint(first)["test"] != print_a["test"]
    # A training image's bytes changed, its name and caption kept.
    image = Path(table.read_text().splitlines()[2].split("\t")[0])
    image.write_bytes(image.read_bytes()[:-1] + bytes([image.read_bytes()[-1] ^ 1]))
    assert data_fingerprint(second)["train"] != changed["train"]


def test_cpu_description_reads_model_and_vector_extensions():
    from tier_openclip.demo.environment import cpu_description

    cpuinfo = ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse4_1 sse4_2 avx avx2 fma avx512f avx512bw\n\n"
               "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert cpu_description(cpuinfo) == {"model": "AMD EPYC 9R14",
                                        "vector_extensions": ["sse4_1", "sse4_2", "avx", "avx2", "fma", "avx512f",
                                                              "avx512bw"]}


def test_comparison_needs_the_same_data_and_environment():
    from tier_openclip.demo.environment import PINS, comparison, environment

    env = environment(PINS)
    assert env["pins"] == PINS and env["torch_threads"] >= 1 and env["cpu"]
    run = {"data_fingerprint": {"sha256": "a" * 64}, "environment": env}
    assert comparison(run, run)["reading"].startswith("comparable")
    other_cpu = {**run, "environment": {**env, "cpu": "Intel Xeon", "vector_extensions": ["avx2"]}}
    reading = comparison(run, other_cpu)
    assert reading["same_data"] and set(reading["environment_differences"]) == {"cpu", "vector_extensions"}
    assert reading["reading"].startswith("same data, different environment")
    other_data = {**run, "data_fingerprint": {"sha256": "b" * 64}}
    assert comparison(run, other_data)["reading"].startswith("not comparable")
    assert not comparison({}, {})["same_data"]  # no fingerprints: nothing says the data agree


# --- end to end (slow) ------------------------------------------------------------------------

TINY = dict(starts=2, bootstrap=5, heatmap_images=1, progress=False, pretrain_epochs=1, finetune_epochs=1,
            render_workers=0, phantom_overrides={"num_train": 96, "num_test": 48, "shard_size": 48})


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _goals_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_goals.py"
    spec = importlib.util.spec_from_file_location("demo_goals", path)
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)
    return goals


@pytest.mark.slow
def test_reduced_demo_twice_gives_the_same_numbers_and_the_sweep_reuses_it(tmp_path):
    arms = ("clip", "tier-calibrated")
    out, again = tmp_path / "demo", tmp_path / "again"
    result = run_demo(DemoOptions(out=out, losses=arms, **TINY))

    runs = out / "runs"
    for seed in (0, 1):
        start = runs / f"pretrain-filip-start{seed}" / "checkpoints" / "epoch_1.pt"
        assert f"seed: {seed}\n" in (runs / f"pretrain-filip-start{seed}" / "params.txt").read_text()
        for arm in ("clip", "tier-calibrated-r0.1-s10"):
            params = (runs / f"{arm}-filip-start{seed}" / "params.txt").read_text()
            assert f"pretrained: {start}\n" in params and f"seed: {seed}\n" in params
    # The starts differ (each its own seed); fine-tuning moved the weights, differently per loss.
    start0, start1 = _state(runs / "pretrain-filip-start0/checkpoints/epoch_1.pt"), _state(runs / "pretrain-filip-start1/checkpoints/epoch_1.pt")
    clip0, tier0 = _state(runs / "clip-filip-start0/checkpoints/epoch_1.pt"), _state(runs / "tier-calibrated-r0.1-s10-filip-start0/checkpoints/epoch_1.pt")
    for key in ("visual.trunk.stem.conv.weight", "visual.head.proj.weight"):  # TIER-tiny-ResNet's first and last
        assert not torch.equal(start0[key], start1[key])
        assert not torch.equal(clip0[key], start0[key]) and not torch.equal(clip0[key], tier0[key])
    lambdas = result["setup"]["arms"][1]["tier_lambda_per_start"]
    assert all(lam > 0 for lam in lambdas) and f"tier_lambda_text: {lambdas[0]:g}" in (
        runs / "tier-calibrated-r0.1-s10-filip-start0" / "params.txt").read_text()
    assert result["manipulation"]["tier-calibrated"]["ratio_on_start"] == pytest.approx([0.1, 0.1], rel=0.05)

    saved = json.loads((out / "demo.json").read_text())
    difference = saved["differences"]["tier-calibrated"]["auc"]
    assert difference["values"] == pytest.approx([saved["rows"]["tier-calibrated"][s]["auc"] - saved["rows"]["clip"][s]["auc"]
                                                  for s in (0, 1)])
    assert len(difference["ci"]) == 2 and saved["environment"]["cpu_capability"] == "AVX2"
    assert saved["data"]["background"] == "procedural" and saved["data"]["grounding"] is True
    assert saved["baselines"]["summary_excludes"] == ["cardiomegaly"]
    assert set(saved["decisions"]) == {"tier-calibrated"} and len(saved["starts"]) == 2
    report = (out / "report.md").read_text()
    assert "## Paired differences: tier-calibrated − clip, start by start" in report
    assert saved["data_fingerprint"]["sha256"] in report and Image.open(out / "sparsity.png").size[0] > 500

    # The same demo again, every run retrained and re-evaluated in another folder: the same numbers.
    run_demo(DemoOptions(out=again, losses=arms, **TINY))
    goals = _goals_module()
    same, lines = goals.compare(saved, json.loads((again / "demo.json").read_text()))
    assert same, "\n".join(lines)

    # The sweep in the first folder reuses the data, the starts and the clip controls.
    reused = {path: path.stat().st_mtime_ns for path in (runs / "pretrain-filip-start0/checkpoints/epoch_1.pt",
                                                         runs / "clip-filip-start1/checkpoints/epoch_1.pt")}
    sweep = run_sweep(DemoOptions(out=out, **TINY), lambdas=(0.5,), scales=("logit",))
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in reused.items())
    assert sweep["timings"]["runs"]["pretrain-filip-start0"]["reused"] and sweep["timings"]["runs"]["clip-filip-start1"]["reused"]
    saved = json.loads((out / "sweep.json").read_text())
    (row,) = saved["grid"]
    assert (row["lambda"], row["scale"]) == (0.5, "logit") and row["decision"]["reading"] in (
        "not tested", "inert", "supported", "falsified", "inconclusive")
    assert row["differences"]["cnr"]["values"] == pytest.approx(
        [saved["rows"][row["arm"]][s]["cnr"] - saved["rows"]["clip"][s]["cnr"] for s in (0, 1)])
    assert "| 0.5 | logit |" in (out / "sweep.md").read_text() and Image.open(out / "sweep.png").size[0] > 500


def _goal_result(**changes) -> dict:
    starts = [{"seed": s, "precondition": {"pointing": 0.3, "prior": 0.12, "held": True, "phrases": 40},
               "metrics": {"auc": 0.8}} for s in range(3)]
    result = {"timings": {"total_seconds": 540.0}, "starts": starts,
              "baselines": {"prior": {"pointing_game": 0.12}},
              "per_finding_auc": {"clip": {"opacity": spread([0.8, 0.82, 0.81]), "pneumothorax": spread([0.71, 0.75, 0.72])}},
              "data_fingerprint": {"sha256": "f" * 64},
              "environment": {"package": {"version": "0.1.0", "commit": None}, "torch": "2.14", "numpy": "2.4",
                              "open_clip": "3.3", "cpu": "AMD EPYC", "vector_extensions": ["avx2"], "torch_threads": 2,
                              "pins": {}},
              "summary": {"clip": {}}}
    result.update(changes)
    return result


def test_goals_script_reads_a_demo_json():
    goals = _goals_module()
    assert [met for _, met, _ in goals.check_goals(_goal_result(), "… " + "f" * 64 + " AMD EPYC …")] == [True] * 6
    result = _goal_result(timings={"total_seconds": 601.0}, starts=_goal_result()["starts"][:2],
                          baselines={"prior": {"pointing_game": 0.33}},
                          per_finding_auc={"clip": {"opacity": spread([0.99, 0.99, 0.98]), "x": spread([0.8] * 3)}},
                          data_fingerprint={})
    result["starts"][1] = {**result["starts"][1], "precondition": {"pointing": 0.1, "prior": 0.12, "held": False}}
    assert [met for _, met, _ in goals.check_goals(result)] == [False] * 6
    # a report without the fingerprint fails the last goal alone
    assert [met for _, met, _ in goals.check_goals(_goal_result(), "no names here")] == [True] * 5 + [False]
    result = _goal_result(summary={"clip": {}, "local-uniformity": {"cos_patches": spread([0.95, 0.97, 0.99])}})
    assert [met for _, met, _ in goals.check_goals(result)] == [True] * 6 + [False]


def test_goals_compare_says_whether_runs_are_comparable_before_the_numbers():
    goals = _goals_module()
    first = {**_goal_result(), "starts": [{"seed": 0, "metrics": {"auc": 0.8}, "precondition": {}}],
             "rows": {"clip": [{"auc": 0.81, "cnr": math.nan}]}}
    same, lines = goals.compare(first, json.loads(json.dumps(first)))
    assert same and lines[0].startswith("comparability: comparable") and "0 differ" in lines[1]
    second = json.loads(json.dumps(first))
    second["rows"]["clip"][0]["auc"] = 0.8100001
    same, lines = goals.compare(first, second)
    assert not same and "1 differ" in lines[1] and "clip (start 0)/auc: 0.81 | 0.8100001" in lines[2]
    other = {**second, "data_fingerprint": {"sha256": "e" * 64}}
    same, lines = goals.compare(first, other)
    assert not same and lines == ["comparability: not comparable: different data (or a record without a fingerprint); "
                                  "the numbers measure different inputs"]


# --- the linear probe and the collapse measure in every checkpoint's evaluation ---------------


def test_local_cosines_are_the_mean_within_sample_cosines(monkeypatch):
    """Patches that are one vector read 1, orthogonal ones 0; only valid tokens count; one
    sentence per caption has no pair."""
    import open_clip

    from tier_openclip import features
    from tier_openclip.demo.collapse import collapsed, local_cosines

    tokenizer = open_clip.get_tokenizer("TIER-tiny")
    texts = tokenizer(["clear lungs. no effusion.", "clear lungs."])
    eye = torch.eye(4)
    patches = torch.stack([torch.ones(4, 4), eye])  # sample 0 collapsed, sample 1 orthogonal: mean 0.5
    text_tokens = torch.zeros(2, texts.shape[1], 4)
    text_tokens[:, :, 0] = 1.0  # every token one vector ...
    text_tokens[0, 2, :] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # ... but one, which is valid
    text_tokens[1, -1, :] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # and one padding token, masked
    mask = texts != 0

    def fake(model, images=None, text=None):
        return {"image_tokens": patches, "text_tokens": text_tokens, "text_mask": mask}

    monkeypatch.setattr(features, "token_features", fake)
    out = local_cosines(None, tokenizer, [(torch.zeros(2, 3, 8, 8), texts)])
    assert out["patches"] == pytest.approx(0.5)
    n0 = int(mask[0].sum())  # valid tokens of caption 0, one of them orthogonal to the rest
    other_pairs = (n0 - 1) * (n0 - 2)  # ordered pairs of the parallel tokens
    assert out["tokens"] == pytest.approx((other_pairs / (n0 * (n0 - 1)) + 1.0) / 2)
    assert 0.0 < out["sentences"] < 1.0  # caption 0's two sentences (caption 1 has one: left out)
    assert collapsed(1.0) is True and collapsed(0.5) is False and collapsed(None) is None


def _probe_result(informative: bool, seed: int) -> dict:
    """A real probe_evaluate result on small synthetic patch features: they carry the mask's
    patch (informative) or only noise."""
    from tier_openclip.evaluation.segmentation import ProbeConfig, probe_evaluate

    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(24, 16, 16, dtype=torch.bool)
    for i in range(24):
        row, col = divmod(i % 16, 4)
        masks[i, row * 4 : row * 4 + 4, col * 4 : col * 4 + 4] = i % 3 != 0
    patch = masks[:, ::4, ::4].float().unsqueeze(1)
    feats = torch.randn(24, 3, 4, 4, generator=generator)
    if informative:
        feats[:, :1] = 4 * patch - 2 + 0.1 * feats[:, :1]
    result = probe_evaluate(feats[:16], masks[:16], feats[16:], masks[16:], config=ProbeConfig(epochs=30, lr=0.1),
                            bootstrap=5)
    return {"dataset": "phantom", "target": "opacity", **result}


def _fake_evaluation(checkpoint: Path, data: dict, bootstrap: int) -> dict:
    """evaluate_checkpoint's result schema with per-run numbers (zero-shot and grounding made up
    here; the segmentation part is a real probe_evaluate)."""
    name = checkpoint.parent.parent.name
    seed = int(name.rsplit("start", 1)[1])
    local = name.startswith("local-uniformity")
    value = {"value": 0.5 + 0.01 * seed}
    return {
        "checkpoint": str(checkpoint),
        "zeroshot": {"means": {"all": {"mean_auc": 0.7 + 0.01 * seed}}, "labels": {"opacity": {"auc": 0.7}}},
        "grounding": {"overall": {"cnr": value, "pointing_game": value, "miou": value}, "num_phrases": 3,
                      "per_finding": {"opacity": {"pointing_game": value}},
                      "by_location_words": {"without": {"pointing_game": {"value": 0.45 + 0.01 * seed}, "phrases": 3,
                                                        "baselines": {
                          "prior": {"pointing_game": 0.35}, "located_prior": {"pointing_game": 0.35},
                          "random": {"pointing_game": 0.1}}}},
                      "baselines": {"prior": {"cnr": 0.1, "pointing_game": 0.3, "miou": 0.1, "source": "train boxes",
                                              "per_finding": {"opacity": {"pointing_game": 0.3}}},
                                    "located_prior": {"cnr": 0.2, "pointing_game": 0.4, "miou": 0.15, "source": "train boxes",
                                                      "per_finding": {"opacity": {"pointing_game": 0.4}}},
                                    "random": {"cnr": 0.0, "pointing_game": 0.1, "miou": 0.05}}},
        "grounding_pooled": {"overall": {"cnr": value, "pointing_game": {"value": 0.6 + 0.01 * seed}, "miou": value}},
        "grounding_cam": {"overall": {"cnr": value, "pointing_game": {"value": 0.2 + 0.01 * seed}, "miou": value},
                          "per_finding": {"opacity": {"pointing_game": {"value": 0.2 + 0.01 * seed}}},
                          "by_location_words": {"without": {"pointing_game": {"value": 0.7 + 0.01 * seed}}}},
        "segmentation": _probe_result(informative=not local, seed=seed),
        "similarity": {"entropy_token_to_patch": 3.0, "entropy_patch_to_token": 2.0, "patches": 64,
                       "max_entropy_token_to_patch": math.log(64)},
        "local_cosine": {"patches": 0.97 if local else 0.5 + 0.01 * seed, "tokens": 0.6, "sentences": 0.4},
        "eval_seconds": 0.0,
    }


def _fake_maps(checkpoint: str, scales) -> dict:
    """map_stats' schema: TIER arms' maps sharper than the rest by 0.3 top-1 mass."""
    name = Path(checkpoint).parent.parent.name
    top1 = 0.5 if name.startswith("tier") else 0.2
    return {scale: {"top1_mass": top1, "topk_mass": top1 + 0.2, "entropy_token_patch": 3.0 - top1,
                    "max_entropy_token_patch": math.log(64), "uniform_top1_mass": 1 / 64, "uniform_topk_mass": 5 / 64,
                    "top_k": 5.0, "scale_value": float(scale), "max_top1_mass": 0.9} for scale in scales}


def _fake_pipeline(tmp_path, monkeypatch) -> None:
    """The demo's pipeline with its data, trainings and (worker) evaluations faked; every start's
    TIER/CLIP gradient ratio at λ 1 is 0.02 (so a calibrated λ for 10% is 5)."""
    from tier_openclip.demo import environment, pipeline, runs
    from tier_openclip.demo.runs import ratio_key
    from tier_openclip.evaluation import analyze

    monkeypatch.setattr(pipeline, "prepare_data", lambda options, progress: (
        {"num_train": 64, "num_test": 8, "train_csv": str(tmp_path / "train.csv"), "grounding_dir": "g", "prompts": {},
         "background": "RG1_UNCI.dcm"}, 0.0))
    monkeypatch.setattr(environment, "data_fingerprint", lambda data: {"train": "a" * 64, "test": "b" * 64,
                                                                      "sha256": "c" * 64})
    seen = []

    def fake_training(command, run_dir, epochs, steps, inputs, progress=None, pins=None):
        seen.append((run_dir.name, command, pins))
        checkpoint = run_dir / "checkpoints" / f"epoch_{epochs}.pt"
        return {"checkpoint": str(checkpoint), "reused": False, "wall_seconds": 1.0, "steps": steps,
                "step_seconds": 1.0, "mean_step_seconds": 0.1, "overhead_seconds": 0.0}

    def fake_worker(items, data, bootstrap, pins, work_dir):
        return {"process": {"torch_threads": 2, "cpu_capability": "AVX2"},
                "results": [{"evaluation": _fake_evaluation(Path(item["checkpoint"]), data, bootstrap),
                             "maps": _fake_maps(item["checkpoint"], item["map_scales"]),
                             "ratios": {ratio_key(r["scale"], r["lambda"]): {"ratio": 0.02 * r["lambda"]}
                                        for r in item["ratios"]}} for item in items]}

    monkeypatch.setattr(pipeline, "run_training", fake_training)
    monkeypatch.setattr(runs, "evaluate_in_worker", fake_worker)
    monkeypatch.setattr(analyze, "plot_rank_curves", lambda summaries, path: None)
    monkeypatch.setattr(pipeline.report, "draw_heatmaps", lambda *args: [])
    return seen


def test_calibrated_arm_trains_at_its_start_lambda_and_gets_a_reading(tmp_path, monkeypatch):
    """tier-calibrated's λ comes from its start's measured ratio (0.02 at λ 1 -> 5 for 10%); every
    TIER arm gets the manipulation check at its own scale and a reading by the decision rule,
    written in the report after the rules; the environment and fingerprint are recorded."""
    seen = _fake_pipeline(tmp_path, monkeypatch)
    out = tmp_path / "demo"
    run_demo(DemoOptions(out=out, starts=3, progress=False))  # the default arms
    names = [name for name, _, _ in seen]
    # the starts train concurrently, so in any order, and all before any fine-tune
    assert sorted(names[:3]) == ["pretrain-filip-start0", "pretrain-filip-start1", "pretrain-filip-start2"]
    assert all(_flag(command, "--loss") == "filip" for _, command, _ in seen[:3])  # the default pre-training (issue 20)
    assert len(names) == 3 + 3 * 3 and all(pins == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
                                                    "ONEDNN_MAX_CPU_ISA": "AVX2"} for _, _, pins in seen)
    calibrated = {name: command for name, command, _ in seen if name.startswith("tier-calibrated")}
    assert set(calibrated) == {f"tier-calibrated-r0.1-s10-filip-start{s}" for s in range(3)}
    for name, command in calibrated.items():
        assert _flag(command, "--tier-lambda-text") == "5" and _flag(command, "--tier-scale") == "10"
        assert _flag(command, "--seed") == name[-1] and _flag(command, "--pretrained").endswith(
            f"pretrain-filip-start{name[-1]}/checkpoints/epoch_{SIZES['small'].pretrain.epochs}.pt")
    saved = json.loads((out / "demo.json").read_text())
    check = saved["manipulation"]["tier-calibrated"]
    assert check["scale"] == "10" and check["lambda_per_start"] == [5.0] * 3
    assert check["ratio_on_start"] == pytest.approx([0.1] * 3)
    assert saved["manipulation"]["tier-paper"]["ratio_on_start"] == pytest.approx([0.002] * 3)  # 0.02 × λ 0.1
    assert check["differences"]["top1_mass"]["mean"] == pytest.approx(0.3)
    # maps moved by 0.3, token-map pointing the same as clip's on every start: falsified
    assert saved["decisions"]["tier-calibrated"] == {"reading": "falsified", "rule": "falsified",
                                                     "manipulation_passed": True}
    assert saved["preconditions_held"] and saved["starts"][1]["precondition"]["pointing"] == pytest.approx(0.46)
    assert saved["environment"]["pins"]["MKL_CBWR"] == "AVX2" and saved["environment"]["cpu_capability"] == "AVX2"
    report = (out / "report.md").read_text()
    assert report.index("## Rules (fixed before the numbers)") < report.index("## Did TIER act?") < report.index(
        "## Each arm")
    assert "c" * 64 in report and "RG1_UNCI.dcm" in report and "ONEDNN_MAX_CPU_ISA=AVX2" in report
    row = next(line for line in report.splitlines() if line.startswith("| tier-calibrated | 10 |"))
    assert "| 5, 5, 5 |" in row and "+0.300 ± 0.000 [+0.300, +0.300]" in row and "**falsified**" in row


def test_report_and_json_carry_probe_dice_and_collapse_for_every_arm(tmp_path, monkeypatch):
    """The demo with its trainings and model evaluations faked (the probe's numbers are real
    probe_evaluate results): every arm's probe Dice, mIoU and local cosines reach demo.json and
    report.md, with the empty-head and prior baselines and the paired differences vs clip."""
    _fake_pipeline(tmp_path, monkeypatch)
    out = tmp_path / "demo"
    run_demo(DemoOptions(out=out, losses=("clip", "local-uniformity"), starts=2, progress=False))

    saved = json.loads((out / "demo.json").read_text())
    for arm in ("clip", "local-uniformity"):
        for seed, row in enumerate(saved["rows"][arm]):  # seed: the start
            probe = saved["results"][arm][seed]["segmentation"]["probe"]
            assert row["probe_dice"] == probe["dice"]["value"] and row["probe_miou"] == probe["miou"]["value"]
        assert len(saved["summary"][arm]["probe_dice"]["values"]) == 2
    clip = saved["summary"]["clip"]["probe_dice"]["mean"]
    local = saved["summary"]["local-uniformity"]["probe_dice"]["mean"]
    assert clip > 0.8 > local  # the informative features segment; the noise does not
    difference = saved["differences"]["local-uniformity"]["probe_dice"]
    assert difference["values"] == pytest.approx([saved["rows"]["local-uniformity"][s]["probe_dice"]
                                                  - saved["rows"]["clip"][s]["probe_dice"] for s in (0, 1)])
    assert saved["differences"]["local-uniformity"]["cos_patches"]["verdict"] == "higher"
    seg = saved["baselines"]["segmentation"]
    assert seg["empty"]["probe_dice"] == 0.0 and 0.0 < seg["prior"]["probe_dice"] < clip
    assert seg["target"] == "opacity" and seg["test_images"] == 8

    report = (out / "report.md").read_text()
    table = report.split("## Each arm")[1].split("## Paired")[0]
    dice_row = next(line for line in table.splitlines() if line.startswith("| linear-probe Dice |"))
    cells = [c.strip() for c in dice_row.strip("|").split("|")]
    assert cells[2] == f"{clip:.3f} ± {saved['summary']['clip']['probe_dice']['sd']:.3f}"
    assert cells[3].startswith(f"{local:.3f} ± ") and cells[4] == f"{seg['prior']['probe_dice']:.3f}"
    assert "| within-sample cosine: patches |" in table and "| linear-probe mIoU |" in table
    assert f"empty head (nothing predicted) has Dice {seg['empty']['probe_dice']:.3f}" in report
    pooled_row = next(line for line in table.splitlines() if line.startswith("| pointing game (pooled-phrase maps) |"))
    assert [c.strip() for c in pooled_row.strip("|").split("|")][2:] == ["0.605 ± 0.007", "0.605 ± 0.007", "0.300", "0.400", "0.100"]
    cam_row = next(line for line in table.splitlines() if line.startswith("| pointing game (CAM maps) |"))
    assert [c.strip() for c in cam_row.strip("|").split("|")][2:] == ["0.205 ± 0.007", "0.205 ± 0.007", "0.300", "0.400", "0.100"]
    unlocated_row = next(line for line in table.splitlines() if line.startswith(
        "| pointing game (CAM maps), phrases without location words |"))
    assert [c.strip() for c in unlocated_row.strip("|").split("|")][2:] == ["0.705 ± 0.007", "0.705 ± 0.007", "0.350",
                                                                            "0.350", "0.100"]
    per_finding = report.split("## Pointing game per finding, CAM maps")[1]
    assert "| opacity | 0.205 ± 0.007 | 0.205 ± 0.007 | 0.300 | 0.400 | – |" in per_finding
    assert "clip 0.505, not collapsed" in report and "local-uniformity 0.970, collapsed" in report
    paired = report.split("## Paired differences: local-uniformity − clip")[1]
    assert "| linear-probe Dice | " in paired.split("Rule:")[0]


def test_every_checkpoint_evaluation_has_the_probe_and_the_collapse_measure(tmp_path):
    """evaluate_checkpoint on a tiny phantom with a random TIER-tiny: the linear probe on the
    phantom's opacity set and the local cosines are in its (cached) result."""
    from tier_openclip import phantom
    from tier_openclip.demo.runs import SEG_PROBE, evaluate_checkpoint
    from tier_openclip.models import load_model

    config = phantom.PhantomConfig(num_train=12, num_test=8, shard_size=8)
    data = phantom.write_phantom_dataset(tmp_path / "data", config, progress=False, seg_max_train=6)
    torch.manual_seed(0)
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch_1.pt"
    checkpoint.parent.mkdir(parents=True)
    from tier_openclip.demo.design import MODEL

    torch.save({"epoch": 1, "state_dict": load_model(MODEL).model.state_dict()}, checkpoint)
    result = evaluate_checkpoint(checkpoint, data, bootstrap=5)
    seg = result["segmentation"]
    assert (seg["target"], seg["num_train_images"], seg["num_test_images"], seg["seeds"]) == ("opacity", 6, 8, 1)
    assert seg["label_fraction"] == 1.0 and seg["probe_config"]["epochs"] == SEG_PROBE.epochs
    assert 0.0 <= seg["probe"]["dice"]["value"] <= 1.0 and seg["baselines"]["empty"]["dice"]["value"] == 0.0
    cosines = result["local_cosine"]
    assert set(cosines) == {"patches", "tokens", "sentences"} and all(-1.0 <= v <= 1.0 for v in cosines.values())
    cached = json.loads((tmp_path / "run" / "demo-eval.json").read_text())["result"]
    assert cached["segmentation"]["probe"] == seg["probe"] and cached["local_cosine"] == cosines


def test_list_flags_take_words_and_refuse_the_comma_form(tmp_path, capsys, monkeypatch):
    """`--losses clip tier` as every command gives lists; `clip,tier` would name one unknown arm."""
    from tier_openclip.commands import cli
    from tier_openclip.demo import pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "run_demo", lambda options: seen.setdefault("losses", list(options.losses)) and 1 / 0)
    assert cli.main(["demo", "--out", str(tmp_path / "d"), "--losses", "clip,tier"]) == 2
    assert "separate words" in capsys.readouterr().err and not seen
    with pytest.raises(ZeroDivisionError):  # parsed: the (stubbed) demo ran with both arms
        cli.main(["demo", "--out", str(tmp_path / "d"), "--losses", "clip", "tier", "--losses", "clip"])
    assert seen["losses"] == ["clip", "tier"]

"""`tier-openclip demo`: the pure summary functions on hand-made numbers, the paired design of the
training commands, and (slow) a reduced demo end to end."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from PIL import Image

from tier_openclip.demo import DemoOptions, run_demo, run_sweep, sweep_arms
from tier_openclip.demo.design import Stage, make_arm, training_command
from tier_openclip.demo.runs import parse_step_times
from tier_openclip.demo.summary import arm_summary, paired_differences, spread, verdict
from tier_openclip.errors import UsageError

# --- pure summaries ---------------------------------------------------------------------------


def test_spread_is_mean_and_sample_sd():
    entry = spread([1.0, 2.0, 4.0])
    assert entry["mean"] == pytest.approx(7 / 3)
    assert entry["sd"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert spread([0.5]) == {"mean": 0.5, "sd": 0.0, "values": [0.5]}


def test_paired_differences_are_arm_minus_control_seed_by_seed():
    control = [{"auc": 0.80, "cnr": 1.0}, {"auc": 0.70, "cnr": 2.0}, {"auc": 0.90, "cnr": 0.5}]
    arm = [{"auc": 0.82, "cnr": 0.0}, {"auc": 0.73, "cnr": 2.5}, {"auc": 0.91, "cnr": 0.4}]
    out = paired_differences(arm, control)
    assert out["auc"]["values"] == pytest.approx([0.02, 0.03, 0.01])
    assert out["auc"]["mean"] == pytest.approx(0.02) and out["auc"]["sd"] == pytest.approx(0.01)
    assert out["auc"]["n"] == 3
    # mean 0.02 >= 2 * 0.01 / sqrt(3) = 0.0115 and all positive: an effect
    assert out["auc"]["verdict"] == "higher"
    assert out["cnr"]["values"] == pytest.approx([-1.0, 0.5, -0.1])
    assert out["cnr"]["verdict"] == "within noise"  # signs disagree
    # The unpaired means would hide the pairing: arm_summary gives each arm's own spread.
    assert arm_summary(arm)["auc"]["mean"] == pytest.approx((0.82 + 0.73 + 0.91) / 3)


def test_verdict_rule():
    assert verdict([-0.05, -0.04, -0.06]) == "lower"
    # same signs, but the mean is below 2·sd/√n: 0.03 < 2 * 0.0265 / 1.732 = 0.0306
    assert verdict([0.001, 0.03, 0.058]) == "within noise"
    assert verdict([0.02, 0.03, 0.04]) == "higher"  # 0.03 >= 2 * 0.01 / 1.732 = 0.0115
    assert verdict([0.1]) == "within noise"  # one seed tells nothing
    assert verdict([0.0, 0.1, 0.1]) == "within noise"  # a zero difference is no sign


def test_unpaired_rows_are_refused():
    with pytest.raises(ValueError, match="pairs need one of each per seed"):
        paired_differences([{"auc": 1.0}], [{"auc": 1.0}, {"auc": 0.5}])


def test_step_times_are_read_from_open_clip_log_lines():
    log = ("2026-12-01,20:41:15 | INFO | Train Epoch: 0 [  64/2000 (3%)] Data (t): 0.096 Batch (t): 0.354, 180.7/s\n"
           "noise\n"
           "2026-12-01,20:41:16 | INFO | Train Epoch: 1 [ 128/2000 (6%)] Data (t): 0.068 Batch (t): 0.292, 219.3/s\n")
    assert parse_step_times(log) == [0.354, 0.292]


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


# --- end to end (slow) ------------------------------------------------------------------------

TINY = dict(seeds=2, bootstrap=5, heatmap_images=1, progress=False, pretrain_epochs=1, finetune_epochs=1,
            render_workers=0, phantom_overrides={"num_train": 96, "num_test": 48, "shard_size": 48})


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_reduced_demo_pairs_its_arms_and_reports_their_differences(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(DemoOptions(out=out, losses=("clip", "tier"), **TINY))

    runs = out / "runs"
    start = runs / "pretrain" / "checkpoints" / "epoch_1.pt"
    assert start.is_file()
    for arm in ("clip", "tier-l0.1-s1"):
        for seed in (0, 1):
            params = (runs / f"{arm}-seed{seed}" / "params.txt").read_text()
            assert f"pretrained: {start}\n" in params and f"seed: {seed}\n" in params
    assert "loss: tier\n" in (runs / "tier-l0.1-s1-seed0" / "params.txt").read_text()
    # Fine-tuning moved the weights away from the shared start, differently per loss.
    start_state = _state(start)
    clip0, tier0 = _state(runs / "clip-seed0" / "checkpoints" / "epoch_1.pt"), _state(runs / "tier-l0.1-s1-seed0" / "checkpoints" / "epoch_1.pt")
    key = "visual.conv1.weight"
    assert not torch.equal(clip0[key], start_state[key]) and not torch.equal(clip0[key], tier0[key])

    saved = json.loads((out / "demo.json").read_text())
    assert set(saved["summary"]) == {"clip", "tier"}
    rows = saved["rows"]
    difference = saved["differences"]["tier"]["auc"]
    assert difference["values"] == pytest.approx([rows["tier"][s]["auc"] - rows["clip"][s]["auc"] for s in (0, 1)])
    for metric in ("auc", "cnr", "pointing_game", "miou", "entropy_token_to_patch", "entropy_patch_to_token"):
        assert len(saved["summary"]["tier"][metric]["values"]) == 2
    prior = saved["baselines"]["prior"]
    assert 0 <= prior["pointing_game"] <= 1 and prior["source"] == "train boxes"
    assert result["timings"]["total_seconds"] > 0

    report = (out / "report.md").read_text()
    assert "## Paired differences: tier − clip, seed by seed" in report and "Rule: a paired difference" in report
    assert "| zero-shot AUC (mean over findings) |" in report and "image-free prior" in report
    assert Image.open(out / "sparsity.png").size[0] > 500
    assert (out / "heatmaps" / "heatmap-0.png").is_file() and "heatmaps/heatmap-0.png" in report

    # The sweep in the same folder reuses the data, the pre-training and the clip controls.
    reused = {path: path.stat().st_mtime_ns for path in (start, runs / "clip-seed0" / "checkpoints" / "epoch_1.pt")}
    sweep = run_sweep(DemoOptions(out=out, **TINY), lambdas=(0.5,), scales=("logit",))
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in reused.items())
    assert sweep["timings"]["runs"]["pretrain"]["reused"] and sweep["timings"]["runs"]["clip-seed1"]["reused"]
    assert "tier_scale: logit\n" in (runs / "tier-l0.5-slogit-seed0" / "params.txt").read_text()
    saved = json.loads((out / "sweep.json").read_text())
    (row,) = saved["grid"]
    assert (row["lambda"], row["scale"]) == (0.5, "logit")
    assert row["differences"]["cnr"]["values"] == pytest.approx(
        [saved["rows"][row["arm"]][s]["cnr"] - saved["rows"]["clip"][s]["cnr"] for s in (0, 1)])
    assert "| 0.5 | logit |" in (out / "sweep.md").read_text() and Image.open(out / "sweep.png").size[0] > 500


def test_goals_script_reads_a_demo_json(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_goals.py"
    spec = importlib.util.spec_from_file_location("demo_goals", path)
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)
    result = {"timings": {"total_seconds": 540.0}, "baselines": {"prior": {"pointing_game": 0.30}},
              "summary": {"clip": {"auc": spread([0.82, 0.80, 0.81]), "pointing_game": spread([0.25, 0.35, 0.33])}}}
    assert [met for _, met, _ in goals.check_goals(result)] == [True, True, True]  # 0.31 > 0.30
    result["summary"]["clip"]["auc"] = spread([0.82, 0.70, 0.81])
    result["timings"]["total_seconds"] = 601.0
    assert [met for _, met, _ in goals.check_goals(result)] == [False, False, True]


@pytest.mark.slow
def test_same_seed_and_start_give_the_same_run(tmp_path):
    """The pairing rests on this: one command, run twice, trains the same weights (same batches,
    same order, same augmentation). open_clip's WebDataset loader would fail it."""
    out = tmp_path / "demo"
    run_demo(DemoOptions(out=out, losses=("clip",), **{**TINY, "seeds": 1}))
    runs = out / "runs"
    command = json.loads((runs / "clip-seed0" / "demo-command.json").read_text())["command"]
    first = _state(runs / "clip-seed0" / "checkpoints" / "epoch_1.pt")
    import subprocess

    again = [sys.executable, *[f"--logs={tmp_path / 'again'}" if arg.startswith("--logs=") else arg for arg in command]]
    subprocess.run(again, check=True, capture_output=True)
    second = _state(tmp_path / "again" / "clip-seed0" / "checkpoints" / "epoch_1.pt")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

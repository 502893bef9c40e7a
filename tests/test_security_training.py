"""Issue 11, "Training": every mistake in the plugin's flags stops the run at start-up with one
message (exit status 2), and an evaluation that fails mid-run does not cost the epoch.

Parse-time checks go through open_clip_train's real parse_args as the plugin wraps it; the
mid-run failure through the plugin's train_one_epoch wrapper around a stand-in for open_clip's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import refused
import torch
import torch.nn.functional as F
from PIL import Image

from tier_openclip.training import plugin
from tier_openclip.training.plugin_args import MAX_TIER_SCALE

LABELS = ["Cardiomegaly", "Edema"]


@pytest.fixture(scope="module")
def params():
    plugin.activate(strict=True)
    import open_clip_train.params

    return open_clip_train.params


def write_set(directory: Path, dataset: str = "chexpert", images: int = 4) -> Path:
    """A small evaluation set in the layout `tier-openclip prep` writes."""
    (directory / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["image," + ",".join(LABELS)]
    for i in range(images):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(directory / "images" / f"{i}.png")
        lines.append(f"images/{i}.png,{i % 2},{(i // 2) % 2}")
    (directory / "labels.csv").write_text("\n".join(lines) + "\n")
    (directory / "meta.json").write_text(json.dumps({"dataset": dataset, "labels": LABELS}))
    return directory


# --- abbreviations (§6) ----------------------------------------------------------------------------


def test_open_clip_alone_would_read_an_abbreviated_loss_as_its_dist_impl(params):
    """Why abbreviations are refused: open_clip's parser prefix-matches --los to --loss-dist-impl."""
    stock = params.parse_args.__tier_openclip_wrapped__(["--los", "tier"])
    assert stock.loss_dist_impl == "tier" and not hasattr(stock, "loss")


@pytest.mark.parametrize("argv, message", [
    (["--los", "tier"], "tier-openclip: --los is short for --loss: write the flag in full (open_clip's parser would "
                        "read it as its --loss-dist-impl and train plain CLIP)\n"),
    (["--los=tier"], "tier-openclip: --los is short for --loss: write the flag in full (open_clip's parser would "
                     "read it as its --loss-dist-impl and train plain CLIP)\n"),
    (["--loss", "tier", "--tier-lam", "0.5"],
     "tier-openclip: --tier-lam is short for --tier-lambda-text or --tier-lambda-image: write the flag in full "
     "(open_clip's parser would take it for one of its own flags or reject it)\n"),
    (["--loss", "tier", "--tier-lambda-t", "0.5"],
     "tier-openclip: --tier-lambda-t is short for --tier-lambda-text: write the flag in full "
     "(open_clip's parser would take it for one of its own flags or reject it)\n"),
    (["--loss", "local-uniformity", "--lu-temp", "0.5"],
     "tier-openclip: --lu-temp is short for --lu-temperature: write the flag in full "
     "(open_clip's parser would take it for one of its own flags or reject it)\n"),
])
def test_abbreviated_plugin_flags_stop_the_run(params, capsys, argv, message):
    assert refused(params, argv, capsys) == message


def test_full_flags_and_open_clips_own_abbreviations_still_parse(params):
    args = params.parse_args(["--model", "TIER-tiny", "--loss", "tier", "--lu-t", "3", "--lu-uniform-weight", "0.5",
                              "--loss-dist", "gather"])
    assert (args.loss, args.lu_t, args.lu_uniform_weight, args.loss_dist_impl) == ("tier", 3.0, 0.5, "gather")


# --- flags the chosen loss would ignore (§6) -------------------------------------------------------


@pytest.mark.parametrize("argv, flag, allowed, loss", [
    (["--loss", "clip", "--tier-lambda-text", "0.5"], "--tier-lambda-text", "tier", "clip"),
    (["--tier-scale", "2"], "--tier-scale", "tier", "clip"),  # --loss left at its default
    (["--loss", "local-uniformity", "--tier-lambda-image", "0.2"], "--tier-lambda-image", "tier", "local-uniformity"),
    (["--loss", "local-uniformity", "--tier-impl", "torch"], "--tier-impl", "tier", "local-uniformity"),
    (["--lu-uniform-weight", "1"], "--lu-uniform-weight", "tier or local-uniformity", "clip"),
    (["--siglip", "--tier-token-mask", "all"], "--tier-token-mask", "tier or local-uniformity", "clip"),
    (["--loss", "local-uniformity", "--tier-diagnostics-every", "5"], "--tier-diagnostics-every", "tier",
     "local-uniformity"),
])
def test_loss_flags_without_their_loss_stop_the_run(params, capsys, argv, flag, allowed, loss):
    first = allowed.split(" or ")[0]
    assert refused(params, argv, capsys) == (
        f"tier-openclip: {flag} acts only with --loss {allowed}, and this run has --loss {loss}, which would "
        f"ignore it: add --loss {first}, or drop {flag}\n")


def test_local_term_settings_without_their_weight_stop_the_run(params, capsys):
    assert refused(params, ["--loss", "tier", "--lu-temperature", "0.2"], capsys) == (
        "tier-openclip: --lu-temperature sets a term whose weight --lu-align-weight is 0 in this run, so it would be "
        "ignored: give --lu-align-weight a positive weight, or drop --lu-temperature\n")


def test_flags_that_act_with_the_chosen_loss_parse(params, tmp_path):
    both = params.parse_args(["--loss", "tier", "--lu-uniform-weight", "0.2", "--lu-t", "1", "--tier-token-mask", "all"])
    assert (both.lu_uniform_weight, both.lu_t, both.tier_token_mask) == (0.2, 1.0, "all")
    lu = params.parse_args(["--loss", "local-uniformity", "--tier-token-mask", "all", "--lu-temperature", "0.05"])
    assert (lu.tier_token_mask, lu.lu_temperature) == ("all", 0.05)
    assert params.parse_args(["--loss", "tier", "--tier-diagnostics-every", "50"]).tier_diagnostics_every == 50
    assert params.parse_args(["--loss", "tier"]).tier_diagnostics_every == 0  # off by default
    auto = params.parse_args(["--loss", "tier", "--tier-lambda-text", "auto", "--tier-target-ratio", "0.2"])
    assert (auto.tier_lambda_text, auto.tier_lambda_image, auto.tier_target_ratio) == ("auto", 0.1, 0.2)
    clip = params.parse_args(["--tier-zeroshot-chexpert", str(write_set(tmp_path / "set"))])  # evaluation: any loss
    assert clip.loss == "clip" and clip.tier_zeroshot_chexpert == str(tmp_path / "set")


# --- numbers (§7) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--tier-lambda-text", "-0.1"], "--tier-lambda-text -0.1: must be a finite number >= 0"),
    (["--tier-lambda-image", "nan"], "--tier-lambda-image nan: must be a finite number >= 0"),
    (["--tier-lambda-text", "inf"], "--tier-lambda-text inf: must be a finite number >= 0"),
    (["--lu-uniform-weight", "-1"], "--lu-uniform-weight -1.0: must be a finite number >= 0"),
    (["--lu-align-weight", "1", "--lu-temperature", "0"], "--lu-temperature 0.0: must be a finite number > 0"),
    (["--lu-align-weight", "1", "--lu-temperature", "nan"], "--lu-temperature nan: must be a finite number > 0"),
    (["--lu-uniform-weight", "1", "--lu-t", "-2"], "--lu-t -2.0: must be a finite number > 0"),
    (["--tier-scale", "1e6"], "--tier-scale 1e+06 is above 100: with cosine similarities in [-1, 1] the softmaxes "
                              "saturate and the entropies underflow to exactly 0, which switches TIER off. Use at "
                              "most 100 (open_clip's cap on its own logit scale), or 'logit'"),
    (["--tier-scale", "100.5"], "--tier-scale 100.5 is above 100"),
    (["--tier-diagnostics-every", "-1"], "--tier-diagnostics-every -1: must be a finite number >= 0"),
    (["--tier-lambda-text", "auto", "--tier-target-ratio", "0"], "--tier-target-ratio 0.0: must be a finite number > 0"),
    (["--tier-target-ratio", "0.2"], "--tier-target-ratio sets the λ of --tier-lambda-text/--tier-lambda-image auto, "
                                     "and neither is auto in this run"),
])
def test_bad_numbers_stop_the_run(params, capsys, argv, message):
    err = refused(params, ["--loss", "tier", *argv], capsys)
    assert err.startswith(f"tier-openclip: {message}") and err.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_non_positive_or_non_finite_scale_stops_the_run(params, capsys, value):
    err = refused(params, ["--loss", "tier", "--tier-scale", value], capsys)
    assert f"argument --tier-scale: expected a positive number or 'logit', got '{value}'" in err
    assert "Traceback" not in err


def test_a_lambda_that_is_neither_a_number_nor_auto_stops_the_run(params, capsys):
    err = refused(params, ["--loss", "tier", "--tier-lambda-image", "many"], capsys)
    assert "argument --tier-lambda-image: expected a number or 'auto', got 'many'" in err and "Traceback" not in err


def test_scales_up_to_the_bound_and_logit_parse(params):
    for value, expected in (("100", 100.0), ("0.5", 0.5), ("logit", "logit")):
        assert params.parse_args(["--loss", "tier", "--tier-scale", value]).tier_scale == expected


def test_the_scale_bound_is_where_tier_entropies_stop_vanishing():
    """The measurement behind MAX_TIER_SCALE: 1e6 (the issue's case) zeroes every entropy, the bound does not."""
    from tier_openclip.kernels.reference import token_patch_entropy_reference

    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(8, 32, 512, generator=generator), dim=-1)
    image = F.normalize(torch.randn(8, 196, 512, generator=generator), dim=-1)
    at_bound = token_patch_entropy_reference(text, image, None, MAX_TIER_SCALE)
    saturated = token_patch_entropy_reference(text, image, None, 1e6)
    assert all(bool((h > 0.1).all()) for h in at_bound)
    # Saturated softmaxes leave only float dust, whose size depends on the CPU's kernels (0 on
    # one VM, 2e-5 on another): "vanishing" is five orders below the bound's 0.1.
    assert all(bool((h < 1e-4).all()) for h in saturated)


# --- evaluation folders at start-up (§5) -----------------------------------------------------------


def test_a_missing_evaluation_folder_stops_the_run_before_training(params, capsys, tmp_path):
    missing = tmp_path / "no-such-set"
    assert refused(params, ["--loss", "tier", "--tier-zeroshot-chexpert", str(missing)], capsys) == (
        f"tier-openclip: --tier-zeroshot-chexpert {missing}: {missing / 'labels.csv'} not found: make the "
        "evaluation set with `tier-openclip prep chexpert|padchest`\n")


def test_a_set_of_the_other_dataset_stops_the_run(params, capsys, tmp_path):
    chexpert = write_set(tmp_path / "chexpert")
    assert refused(params, ["--tier-zeroshot-padchest", str(chexpert)], capsys) == (
        f"tier-openclip: --tier-zeroshot-padchest {chexpert} holds a chexpert set (meta.json); pass it as "
        "--tier-zeroshot-chexpert\n")


def test_a_set_with_missing_images_or_broken_meta_stops_the_run(params, capsys, tmp_path):
    broken = write_set(tmp_path / "set")
    (broken / "images" / "2.png").unlink()
    err = refused(params, ["--tier-zeroshot-chexpert", str(broken)], capsys)
    assert err.startswith(f"tier-openclip: --tier-zeroshot-chexpert {broken}: 1 images listed in ")
    (broken / "meta.json").write_text("{not json")
    err = refused(params, ["--tier-zeroshot-chexpert", str(broken)], capsys)
    assert err.startswith(f"tier-openclip: --tier-zeroshot-chexpert {broken}: {broken / 'meta.json'} is not valid JSON")


def test_zeroshot_prompts_are_checked_at_start_up(params, capsys, tmp_path):
    assert refused(params, ["--tier-zeroshot-prompts", "authors"], capsys) == (
        "tier-openclip: --tier-zeroshot-prompts acts only with --tier-zeroshot-chexpert or --tier-zeroshot-padchest: "
        "add one, or drop it\n")
    chexpert, missing = write_set(tmp_path / "chexpert"), tmp_path / "prompts.json"
    err = refused(params, ["--tier-zeroshot-chexpert", str(chexpert), "--zeroshot-frequency", "1",
                           "--tier-zeroshot-prompts", str(missing)], capsys)
    assert err == f"tier-openclip: --tier-zeroshot-prompts {missing}: prompt file {missing} does not exist\n"


def test_every_problem_folder_is_named_in_one_message(params, capsys, tmp_path):
    err = refused(params, ["--tier-zeroshot-chexpert", str(tmp_path / "a"), "--tier-zeroshot-padchest",
                           str(tmp_path / "b")], capsys)
    assert err.count("\n") == 1 and "--tier-zeroshot-chexpert" in err and "--tier-zeroshot-padchest" in err


def test_a_grounding_folder_is_checked_at_start_up(params, capsys, tmp_path):
    if "--tier-grounding" not in plugin.plugin_args.option_strings(plugin.build_plugin_parser()):
        pytest.skip("no --tier-grounding flag in this checkout")
    err = refused(params, ["--tier-grounding", str(tmp_path / "none")], capsys)
    assert err.startswith(f"tier-openclip: --tier-grounding {tmp_path / 'none'}: ")


def test_evaluation_folders_never_evaluated_stop_the_run(params, capsys, tmp_path):
    assert refused(params, ["--tier-zeroshot-chexpert", str(write_set(tmp_path / "set")), "--zeroshot-frequency", "0"],
                   capsys) == (
        "tier-openclip: --tier-zeroshot-chexpert is never evaluated with --zeroshot-frequency 0: give a frequency in "
        "epochs (e.g. --zeroshot-frequency 1), or drop --tier-zeroshot-chexpert\n")


# --- a failing evaluation mid-run (§5) -------------------------------------------------------------


@pytest.fixture
def epoch(tmp_path):
    """The plugin's train_one_epoch around a stand-in for open_clip's, and the args of a run."""
    from tier_openclip.models import load_model

    calls = []

    def open_clip_train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        calls.append(epoch)
        return {"trained": epoch}

    wrapped = plugin.wrap_train_one_epoch(open_clip_train_one_epoch)
    torch.manual_seed(0)
    model = load_model("TIER-tiny").model.train()
    (tmp_path / "checkpoints").mkdir()
    args = SimpleNamespace(rank=0, zeroshot_frequency=1, epochs=2, model="TIER-tiny", device="cpu", batch_size=4,
                           workers=0, save_logs=True, checkpoint_path=str(tmp_path / "checkpoints"), wandb=False,
                           tier_zeroshot_chexpert=str(write_set(tmp_path / "set")), tier_zeroshot_padchest=None,
                           tier_grounding=None)

    def run(epoch_index: int = 0):
        return wrapped(model, {}, object(), epoch_index, None, None, None, None, args, tb_writer=None)

    return SimpleNamespace(run=run, calls=calls, model=model, args=args, set=Path(args.tier_zeroshot_chexpert),
                           results=tmp_path / "checkpoints" / "results.jsonl")


def test_the_evaluation_runs_after_the_epoch_when_the_set_is_good(epoch):
    assert epoch.run(0) == {"trained": 0}
    line = json.loads(epoch.results.read_text())
    assert line["epoch"] == 1 and 0 <= line["chexpert-zeroshot-mean-auc"] <= 1


@pytest.mark.parametrize("damage", ["image-replaced-by-text", "image-deleted", "labels-csv-deleted"])
def test_an_evaluation_failing_mid_run_is_logged_and_the_epoch_returns(epoch, caplog, damage):
    # The set was fine at start-up; it breaks during the epoch.
    if damage == "image-replaced-by-text":
        (epoch.set / "images" / "1.png").write_text("not an image")
    elif damage == "image-deleted":
        (epoch.set / "images" / "1.png").unlink()
    else:
        (epoch.set / "labels.csv").unlink()
    with caplog.at_level(logging.ERROR):
        result = epoch.run(0)
    assert result == {"trained": 0} and epoch.calls == [0]  # open_clip goes on to save its checkpoint
    assert epoch.model.training  # and trains on in train mode
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith(f"Zero-shot evaluation on --tier-zeroshot-chexpert {epoch.set} failed after epoch 1; "
                                "training goes on: ")
    assert not epoch.results.exists()  # no metrics were invented


# --- the hook switched off (§6) ---------------------------------------------------------------------


def run_python(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


def test_open_clip_main_stops_on_an_abbreviation_before_writing_anything(tmp_path):
    result = run_python(["-m", "open_clip_train.main", "--los", "tier", "--model", "TIER-tiny", "--train-data",
                         str(tmp_path / "none.tar"), f"--logs={tmp_path / 'logs'}"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "tier-openclip: --los is short for --loss: write the flag in full (open_clip's parser would read it as its "
        "--loss-dist-impl and train plain CLIP)")
    assert "Traceback" not in result.stderr and not (tmp_path / "logs").exists()


def test_with_the_hook_disabled_plugin_flags_stop_and_name_the_explicit_entry(tmp_path):
    # One interpreter with the hook off: open_clip_train.main's parse_args, a stock run, then the
    # explicit entry (python -m tier_openclip.train activates the plugin the same way).
    code = ("import open_clip_train.params as p\n"
            "try:\n"
            "    p.parse_args(['--loss', 'tier', '--model', 'TIER-tiny'])\n"
            "except SystemExit as stop:\n"
            "    print('exit', stop.code)\n"
            "print(p.parse_args(['--loss-dist-impl', 'gather']).loss_dist_impl)\n"
            "from tier_openclip.training import plugin\n"
            "plugin.activate(strict=True)\n"
            "print(p.parse_args(['--loss', 'tier', '--tier-lambda-text', '0.3']).tier_lambda_text)\n")
    result = run_python(["-c", code], tmp_path, TIER_OPENCLIP_DISABLE="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["exit", "2", "gather", "0.3"]
    assert result.stderr == (
        "tier-openclip: --loss is a tier-openclip flag, but the plugin is disabled (TIER_OPENCLIP_DISABLE=1), and "
        "open_clip alone would train plain CLIP. Run the same command as `python -m tier_openclip.train ARGS` "
        "(torchrun: -m tier_openclip.train), which loads the plugin explicitly.\n")


# --- issue 22, case 8: checkpoints given to training, each problem one line ----------------------------


class _RunsCode:
    """Unpickling this would run a shell command; torch's weights-only loader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def training_checkpoints(tmp_path_factory):
    import open_clip

    from helpers import register_config, tower_configs

    root = tmp_path_factory.mktemp("training-checkpoints")
    marker = root / "code-ran"
    torch.save({"epoch": 1, "state_dict": {"x": _RunsCode(marker)}}, root / "malicious.pt")
    torch.manual_seed(0)
    tiny = open_clip.create_model("TIER-tiny")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, root / "tiny.pt")
    other = register_config(root / "configs", "training-other-vit", tower_configs()["vit"])
    torch.save({"epoch": 1, "state_dict": open_clip.create_model(other).state_dict()}, root / "other.pt")
    return SimpleNamespace(root=root, marker=marker)


def stopped(params, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        params.parse_args(["--model", "TIER-tiny", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return stop.value.code, err.strip()


@pytest.mark.parametrize("flag", ["--resume", "--pretrained"])
def test_a_malicious_pickle_given_to_training_is_one_line_and_runs_nothing(params, capsys, training_checkpoints, flag):
    path = training_checkpoints.root / "malicious.pt"
    assert stopped(params, [flag, str(path)], capsys) == (
        1, f"tier-openclip: {flag} {path} is not a readable checkpoint: torch's weights-only loader refused its "
           "contents (not tensors saved with torch.save)")
    assert not training_checkpoints.marker.exists()


def test_resuming_from_another_models_checkpoint_is_one_line(params, capsys, training_checkpoints):
    path = training_checkpoints.root / "other.pt"
    code, err = stopped(params, ["--resume", str(path)], capsys)
    assert code == 1 and err.startswith(f"tier-openclip: --resume {path} does not fit --model TIER-tiny: ")
    assert err.endswith("Resume with the --model (and --force-* flags) the checkpoint was trained with, or start a new "
                        "--name")
    assert "of other shapes (" in err or "missing (" in err


def test_the_models_own_checkpoint_resumes(params, training_checkpoints):
    path = str(training_checkpoints.root / "tiny.pt")
    assert params.parse_args(["--model", "TIER-tiny", "--resume", path, "--pretrained", path]).resume == path


# --- issue 22, case 7: a resume with other loss settings is said, and each epoch's settings kept --------


def test_a_resume_with_other_loss_settings_warns_once_and_every_epoch_is_recorded(epoch, tmp_path, caplog):
    from tier_openclip.training import loss_history

    epoch.args.__dict__.update(logs=str(tmp_path), name="run", loss="tier", tier_lambda_text=0.1, tier_lambda_image=0.1,
                               tier_scale=1.0, tier_token_mask="valid", tier_zeroshot_chexpert=None)
    (tmp_path / "run").mkdir()
    with caplog.at_level(logging.WARNING):
        epoch.run(0), epoch.run(1)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        epoch.args.loss, epoch.args.tier_lambda_text = "clip", 0.5  # `--resume latest --loss clip ...`
        epoch.run(2), epoch.run(3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["tier-openclip: epoch 3 trains with other loss settings than epoch 2 (--loss tier -> clip, "
                        "--tier-lambda-text 0.1 -> 0.5); both are kept in loss_history.json for the model card"]
    history = loss_history.read_history(tmp_path / "run")
    assert [(e["epoch"], e["loss"], e["tier_lambda_text"]) for e in history] == [
        (1, "tier", 0.1), (2, "tier", 0.1), (3, "clip", 0.5), (4, "clip", 0.5)]
    assert [(a, b, s["loss"]) for a, b, s in loss_history.segments(history, up_to=3)] == [(1, 2, "tier"), (3, 3, "clip")]
    epoch.run(1)  # epoch 2 trained again (a resume from epoch_1.pt): the later entries are gone
    assert [e["epoch"] for e in loss_history.read_history(tmp_path / "run")] == [1, 2]


def test_the_model_card_tells_each_epochs_loss_settings(tmp_path, capsys):
    import open_clip

    from tier_openclip.commands.cli import main
    from tier_openclip.training import loss_history

    run_dir = tmp_path / "logs" / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    state = open_clip.create_model("TIER-tiny").state_dict()
    torch.save({"epoch": 3, "state_dict": state}, run_dir / "checkpoints" / "epoch_3.pt")
    # params.txt is the last invocation's (say a third one, --loss tier at λ 0.9, killed before its epoch)
    (run_dir / "params.txt").write_text("loss: tier\ntier_lambda_text: 0.9\nmodel: TIER-tiny\nepochs: 4\n")
    settings = {"loss": "tier", "tier_lambda_text": 0.1, "tier_lambda_image": 0.2, "tier_scale": 1.0,
                "tier_token_mask": "valid", "lu_align_weight": 0.0, "lu_uniform_weight": 0.0}
    for number in (1, 2):
        loss_history.record_epoch(run_dir, number, settings)
    for number in (3, 4):
        loss_history.record_epoch(run_dir, number, {**settings, "loss": "clip"})
    out = tmp_path / "export"
    assert main(["push", "--checkpoint", str(run_dir / "checkpoints" / "epoch_3.pt"), "--model", "TIER-tiny",
                 "--repo-id", "tier-lab/tier-test", "--local-dir", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "### Loss settings by epoch" in card
    assert "| 1-2 | tier | 0.1 | 0.2 | 1.0 | valid | 0.0 | 0.0 |" in card
    assert "| 3 | clip | 0.1 | 0.2 | 1.0 | valid | 0.0 | 0.0 |" in card and "| 4 |" not in card  # epoch_3.pt's
    assert "| Loss | open_clip's contrastive loss only (no TIER regularisation) |" in card  # epoch 3's, not params.txt's
    assert "0.9" not in card


def test_resume_latest_of_another_models_run_is_one_line(params, capsys, training_checkpoints, tmp_path):
    import shutil

    checkpoints = tmp_path / "logs" / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(training_checkpoints.root / "tiny.pt", checkpoints / "epoch_2.pt")
    shutil.copy(training_checkpoints.root / "other.pt", checkpoints / "epoch_10.pt")  # the newest, naturally sorted
    argv = ["--resume", "latest", "--logs", str(tmp_path / "logs"), "--name", "run"]
    code, err = stopped(params, argv, capsys)
    assert code == 1 and err.startswith(f"tier-openclip: --resume {checkpoints / 'epoch_10.pt'} does not fit --model "
                                        "TIER-tiny: ")
    (checkpoints / "epoch_10.pt").unlink()
    assert params.parse_args(["--model", "TIER-tiny", *argv]).resume == "latest"  # main.py resolves it, as before

"""Issue 11, "Every command": each bad input ends in one line on stderr, ``tier-openclip <command>:
<message>``, no traceback, exit status 2 for a usage error and 1 for a failure (tier_openclip/errors.py).

Every case runs the real command through ``cli.main`` on TIER-tiny (a few MB, CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import register_config, tower_configs, write_shards
from tier_openclip import hub
from tier_openclip.commands.cli import main

REPO = "tier-lab/tier-test"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good TIER-tiny checkpoint, the four kinds of bad one, an image, an evaluation set and shards."""
    import open_clip

    from tier_openclip.models import register_model_configs

    register_model_configs()
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    model = open_clip.create_model("TIER-tiny")
    good = root / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, good)
    data = good.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "text.pt").write_text("epoch 1\nweights: see the other file\n")
    other = register_config(root / "configs", "security-other-vit", tower_configs()["vit"])
    torch.save({"epoch": 1, "state_dict": open_clip.create_model(other).state_dict()}, root / "other-model.pt")

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((80, 96)) * 255).astype(np.uint8)).save(root / "cxr.png")
    (root / "report.png").write_text("Small left pleural effusion.\n")  # not an image, whatever its name
    (root / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 4)
    (root / "folder").mkdir()

    eval_set = root / "set"
    (eval_set / "images").mkdir(parents=True)
    lines = ["image,Edema,Cardiomegaly"]
    for i in range(4):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(eval_set / "images" / f"{i}.png")
        lines.append(f"images/{i}.png,{i % 2},{(i // 2) % 2}")
    (eval_set / "labels.csv").write_text("\n".join(lines) + "\n")
    (eval_set / "meta.json").write_text(json.dumps({"dataset": "chexpert", "labels": ["Edema", "Cardiomegaly"]}))
    shards = write_shards(root / "shards", num_shards=1, per_shard=4, size=64)
    return type("Files", (), {"root": root, "good": good, "set": eval_set, "shards": shards})


def run(capsys, *argv) -> tuple[int, str]:
    """Exit status and stderr of `tier-openclip ARGV`; stderr must be one line without a traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("WARNING:")]  # open_clip's own logging
    assert "Traceback" not in err and len(lines) <= 1, err
    return code, lines[0] if lines else ""


BAD_CHECKPOINTS = {
    "truncated.pt": "is not a readable checkpoint: its zip archive is incomplete (a truncated or partly copied file?)",
    "random.pt": "is not a readable checkpoint: torch's weights-only loader refused its contents (not tensors saved "
                 "with torch.save)",
    "text.pt": "is not a readable checkpoint: not a torch.save or safetensors file (",
    "other-model.pt": "does not fit model 'TIER-tiny': ",
}


def command_with_checkpoint(files, command: str, checkpoint: Path, out: Path) -> list:
    if command == "eval zeroshot":
        return ["eval", "zeroshot", "--model", "TIER-tiny", "--pretrained", checkpoint, "--dataset", "chexpert",
                "--data", files.set, "--workers", "0", "--bootstrap", "0"]
    if command == "heatmap":
        return ["heatmap", "--model", "TIER-tiny", "--pretrained", checkpoint, "--image", files.root / "cxr.png",
                "--prompt", "pleural effusion", "--out", out / "map.png"]
    if command == "analyze":
        return ["analyze", "--model", "TIER-tiny", "--pretrained", checkpoint, "--data", files.shards,
                "--num-samples", "4", "--out", out / "analysis"]
    return ["push", "--checkpoint", checkpoint, "--model", "TIER-tiny", "--repo-id", REPO, "--local-dir", out / "export"]


# --- checkpoints (eval, push, heatmap, analyze) --------------------------------------------------------


@pytest.mark.parametrize("command", ["eval zeroshot", "heatmap", "analyze", "push"])
@pytest.mark.parametrize("name", sorted(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_one_failure_message(files, tmp_path, capsys, command, name):
    checkpoint = files.root / name
    code, err = run(capsys, *command_with_checkpoint(files, command, checkpoint, tmp_path))
    assert code == 1
    assert err.startswith(f"tier-openclip {command}: {checkpoint} {BAD_CHECKPOINTS[name]}")
    assert not (tmp_path / "map.png").exists() and not (tmp_path / "export").exists()


@pytest.mark.parametrize("command", ["eval zeroshot", "heatmap", "analyze", "push"])
def test_a_missing_checkpoint_is_a_usage_error(files, tmp_path, capsys, command):
    missing = files.root / "epoch_9.pt"
    code, err = run(capsys, *command_with_checkpoint(files, command, missing, tmp_path))
    assert code == 2
    flag = "--checkpoint" if command == "push" else "--pretrained"
    assert err.startswith(f"tier-openclip {command}: {flag} {missing}: no such file")


def test_the_good_checkpoint_works_for_every_command(files, tmp_path, capsys):
    for command in ("eval zeroshot", "heatmap", "analyze", "push"):
        code, err = run(capsys, *command_with_checkpoint(files, command, files.good, tmp_path))
        assert (code, err) == (0, ""), command


# --- heatmap -----------------------------------------------------------------------------------------


def heatmap(files, tmp_path, **flags) -> list:
    argv = ["heatmap", "--model", "TIER-tiny", "--pretrained", files.good]
    defaults = {"image": files.root / "cxr.png", "out": tmp_path / "map.png"}
    for key, value in {**defaults, **flags}.items():
        if value is not None:
            argv += [f"--{key}", *(value if isinstance(value, list) else [value])]
    return argv


def test_heatmap_of_a_file_that_is_not_an_image(files, tmp_path, capsys):
    image = files.root / "report.png"
    assert run(capsys, *heatmap(files, tmp_path, image=image, prompt="x")) == (
        1, f"tier-openclip heatmap: --image {image} is not an image PIL can read (.png, .jpg, or a .dcm): cannot "
           f"identify image file '{image}'")


def test_heatmap_of_a_broken_dicom(files, tmp_path, capsys):
    image = files.root / "broken.dcm"
    code, err = run(capsys, *heatmap(files, tmp_path, image=image, prompt="x"))
    assert code == 1 and err.startswith(f"tier-openclip heatmap: --image {image}: not a usable DICOM radiograph (")


@pytest.mark.parametrize("image, message", [
    ("missing.png", "--image {path}: no such file"),
    ("folder", "--image {path} is a folder; expected a file"),
])
def test_heatmap_of_a_missing_image(files, tmp_path, capsys, image, message):
    path = files.root / image
    assert run(capsys, *heatmap(files, tmp_path, image=path, prompt="x")) == (
        2, "tier-openclip heatmap: " + message.format(path=path))


def test_heatmap_tokens_that_are_not_in_the_text(files, tmp_path, capsys):
    assert run(capsys, *heatmap(files, tmp_path, text="left pleural effusion", tokens=["left", "right"])) == (
        2, "tier-openclip heatmap: --tokens right: not among the tokens of --text, which the tokenizer splits into: "
           "left ple ural ef fusion")
    assert run(capsys, *heatmap(files, tmp_path, tokens=["left"], prompt="x")) == (
        2, "tier-openclip heatmap: --tokens picks tokens of --text; give --text too")
    assert not (tmp_path / "map.png").exists()


def test_heatmap_output_folder_missing_or_out_a_folder(files, tmp_path, capsys):
    out = tmp_path / "no-such-folder" / "map.png"
    assert run(capsys, *heatmap(files, tmp_path, out=out, prompt="x")) == (
        2, f"tier-openclip heatmap: --out {out}: folder {out.parent} does not exist")
    assert run(capsys, *heatmap(files, tmp_path, out=tmp_path, prompt="x")) == (
        2, f"tier-openclip heatmap: --out {tmp_path} is a folder; give a file name, e.g. {tmp_path / 'map.png'}")
    code, err = run(capsys, *heatmap(files, tmp_path, out=tmp_path / "map.xyz", prompt="x"))
    assert code == 2 and err.startswith(f"tier-openclip heatmap: --out {tmp_path / 'map.xyz'}: cannot draw a figure as .xyz")


# --- eval zeroshot -------------------------------------------------------------------------------------


def evaluation(files, data: Path, *extra) -> list:
    return ["eval", "zeroshot", "--model", "TIER-tiny", "--pretrained", files.good, "--dataset", "chexpert",
            "--data", data, "--bootstrap", "0", *extra]


def copy_set(files, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(files.set, tmp_path / "set"))


@pytest.mark.parametrize("content, message", [
    ("{not json", "{meta} is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                  "(char 1)); make the set again with `tier-openclip prep`"),
    ("[1, 2]", "{meta} holds a JSON list, not the object `tier-openclip prep` writes"),
    ('{"labels": "Edema"}', "{meta}: 'labels' must be a list of label names"),
])
def test_an_invalid_meta_json(files, tmp_path, capsys, content, message):
    data = copy_set(files, tmp_path)
    (data / "meta.json").write_text(content)
    assert run(capsys, *evaluation(files, data, "--workers", "0")) == (
        1, "tier-openclip eval zeroshot: " + message.format(meta=data / "meta.json"))


@pytest.mark.parametrize("workers", ["0", "1"])  # 1: the error is raised inside a DataLoader worker
def test_a_file_of_the_set_that_is_not_an_image(files, tmp_path, capsys, workers):
    data = copy_set(files, tmp_path)
    bad = data / "images" / "2.png"
    bad.write_text("not an image")
    assert run(capsys, *evaluation(files, data, "--workers", workers)) == (
        1, f"tier-openclip eval zeroshot: {bad} is not a readable image (UnidentifiedImageError: cannot identify "
           f"image file '{bad}')")


def test_out_that_is_a_folder_is_refused_before_the_evaluation_runs(files, tmp_path, capsys, monkeypatch):
    from tier_openclip.commands import eval_cli

    def must_not_run(*args, **kwargs):
        raise AssertionError("evaluated although --out cannot be written")

    monkeypatch.setattr(eval_cli, "zeroshot_evaluate", must_not_run)
    assert run(capsys, *evaluation(files, files.set, "--workers", "0", "--out", tmp_path)) == (
        2, f"tier-openclip eval zeroshot: --out {tmp_path} is a folder; give a file name, e.g. "
           f"{tmp_path / 'results.json'}")


def test_eval_folder_and_label_mistakes_are_usage_errors(files, tmp_path, capsys):
    assert run(capsys, *evaluation(files, tmp_path / "none")) == (
        2, f"tier-openclip eval zeroshot: --data {tmp_path / 'none'}: no such folder")
    assert run(capsys, *evaluation(files, tmp_path)) == (
        2, f"tier-openclip eval zeroshot: --data {tmp_path} is not an evaluation set (no labels.csv): make one with "
           "`tier-openclip prep chexpert|padchest`")
    assert run(capsys, *evaluation(files, files.set, "--labels", "Edema", "Fracture")) == (
        2, f"tier-openclip eval zeroshot: --labels ['Fracture'] are not labels of {files.set}; it has: Edema, Cardiomegaly")


# --- push ----------------------------------------------------------------------------------------------


def push(files, *extra) -> list:
    return ["push", "--checkpoint", files.good, "--model", "TIER-tiny", *extra]


@pytest.mark.parametrize("repo_id, detail", [
    ("tier-lab/tier..test", "Cannot have -- or .. in repo_id: 'tier-lab/tier..test'."),
    ("tier lab/test", "Repo id must use alphanumeric chars"),
    ("a/b/c", "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"),
])
def test_an_invalid_repo_id_is_refused_before_the_export(files, tmp_path, capsys, monkeypatch, repo_id, detail):
    monkeypatch.setattr(hub, "export_model", lambda *a, **k: pytest.fail("exported with an invalid --repo-id"))
    code, err = run(capsys, *push(files, "--repo-id", repo_id, "--local-dir", tmp_path / "export"))
    assert code == 2
    assert err.startswith(f"tier-openclip push: --repo-id {repo_id!r} is not a Hugging Face repository id: {detail}")
    assert not (tmp_path / "export").exists()


def test_a_network_failure_on_upload_is_one_failure_message(files, capsys, monkeypatch):
    import huggingface_hub

    token = "hf_SecretTokenNeverShown0123456789"

    class UnreachableHub:
        def __init__(self, token=None):
            pass

        def create_repo(self, **kwargs):
            raise ConnectionError("[Errno -3] Temporary failure in name resolution")  # what the HTTP client raises

    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(huggingface_hub, "HfApi", UnreachableHub)
    code, err = run(capsys, *push(files, "--repo-id", REPO))
    assert code == 1
    assert err == (f"tier-openclip push: uploading to https://huggingface.co/{REPO} failed (ConnectionError: [Errno -3] "
                   "Temporary failure in name resolution); nothing was published unless the Hub says otherwise. Check "
                   "the network and run the same command again, or write the folder with --local-dir and upload it "
                   "later with `hf upload`")
    assert token not in err


def exported(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_replaces_exactly_what_an_earlier_export_wrote(files, tmp_path, capsys):
    out = tmp_path / "export"
    assert run(capsys, *push(files, "--repo-id", REPO, "--local-dir", out))[0] == 0
    # An earlier export that also wrote a tokenizer file, e.g. of another model: stale now.
    (out / "tokenizer.json").write_text("{}")
    record = json.loads((out / hub.EXPORT_RECORD).read_text())
    (out / hub.EXPORT_RECORD).write_text(json.dumps({**record, "files": [*record["files"], "tokenizer.json"]}))
    assert run(capsys, *push(files, "--repo-id", REPO, "--local-dir", out, "--overwrite"))[0] == 0
    assert sorted(exported(out)) == [hub.EXPORT_RECORD, "README.md", "open_clip_config.json", "open_clip_model.safetensors"]
    assert not list(tmp_path.glob(".export.tier-openclip-push-*"))  # the staging folder is gone


@pytest.mark.parametrize("earlier_export", [False, True])
def test_overwrite_refuses_a_folder_holding_files_push_did_not_write(files, tmp_path, capsys, earlier_export):
    out = tmp_path / "export"
    if earlier_export:
        assert run(capsys, *push(files, "--repo-id", REPO, "--local-dir", out))[0] == 0
    else:
        out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = exported(out)
    why = "an earlier export did not write" if earlier_export else "tier-openclip push did not write"
    assert run(capsys, *push(files, "--repo-id", REPO, "--local-dir", out, "--overwrite")) == (
        2, f"tier-openclip push: --local-dir {out} holds files {why} (notes.txt); --overwrite only replaces an "
           "earlier export, so that nothing unrelated is published: choose an empty folder")
    assert exported(out) == before  # nothing touched


def test_a_failed_export_leaves_the_earlier_one_as_it_was(files, tmp_path, capsys):
    out = tmp_path / "export"
    assert run(capsys, *push(files, "--repo-id", REPO, "--local-dir", out))[0] == 0
    before = exported(out)
    broken = ["push", "--checkpoint", files.root / "other-model.pt", "--model", "TIER-tiny", "--repo-id", REPO,
              "--local-dir", out, "--overwrite"]
    assert run(capsys, *broken)[0] == 1
    assert exported(out) == before
    assert not list(tmp_path.glob(".export.tier-openclip-push-*"))


# --- analyze -------------------------------------------------------------------------------------------


def test_analyze_label_equal_to_baseline_label(files, tmp_path, capsys):
    assert run(capsys, "analyze", "--model", "TIER-tiny", "--pretrained", files.good, "--baseline", files.good,
               "--label", "same", "--baseline-label", "same", "--data", files.shards, "--out", tmp_path / "a") == (
        2, "tier-openclip analyze: --label and --baseline-label are both 'same': the two checkpoints need different "
           "names in analysis.json and the plots")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("count", ["0", "-3"])
def test_analyze_num_samples_below_one(files, tmp_path, capsys, count):
    assert run(capsys, "analyze", "--model", "TIER-tiny", "--pretrained", files.good, "--num-samples", count,
               "--data", files.shards, "--out", tmp_path / "a") == (
        2, f"tier-openclip analyze: --num-samples and --batch-size must be >= 1 (got {count} and 32)")


def test_analyze_of_missing_shards(files, tmp_path, capsys):
    pattern = str(tmp_path / "none-{000000..000001}.tar")
    code, err = run(capsys, "analyze", "--model", "TIER-tiny", "--pretrained", files.good, "--data", pattern,
                    "--out", tmp_path / "a")
    assert code == 1 and err.startswith(f"tier-openclip analyze: --data {pattern}: ")


# --- issue 22, case 1: no command writes over its inputs; an unwritable --out is found first -------------


def _must_not_run(*args, **kwargs):
    raise AssertionError("the command worked although its output lands on an input")


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: every refusal below comes before any work."""
    from tier_openclip import models

    monkeypatch.setattr(models, "load_model", _must_not_run)


def overwrite_cases(files, tmp_path) -> dict[str, tuple[list, Path, str]]:
    """case -> (argv, the input that must stay as it was, the start of the expected message)."""
    import shutil

    checkpoint = Path(shutil.copy(files.good, tmp_path / "ck.pt"))
    data = copy_set(files, tmp_path)
    image = Path(shutil.copy(files.root / "cxr.png", tmp_path / "src.png"))
    link = tmp_path / "link.json"
    link.symlink_to(checkpoint)
    as_table = Path(shutil.copy(files.good, tmp_path / "weights.md"))  # --out weights.json writes weights.md
    in_analysis = tmp_path / "runs"
    in_analysis.mkdir()
    named_like_output = Path(shutil.copy(files.good, in_analysis / "analysis.json"))
    zeroshot = ["eval", "zeroshot", "--model", "TIER-tiny", "--dataset", "chexpert", "--data", data, "--workers", "0"]
    return {
        "eval zeroshot --out CHECKPOINT": ([*zeroshot, "--pretrained", checkpoint, "--out", checkpoint], checkpoint,
                                           f"--out {checkpoint} is --pretrained {checkpoint}: writing it would destroy an input"),
        "eval zeroshot --out DATA/labels.csv": ([*zeroshot, "--pretrained", checkpoint, "--out", data / "labels.csv"],
                                                data / "labels.csv", f"--out {data / 'labels.csv'} is inside --data {data}"),
        "eval zeroshot --out DATA/meta.json": ([*zeroshot, "--pretrained", checkpoint, "--out", data / "meta.json"],
                                               data / "meta.json", f"--out {data / 'meta.json'} is inside --data {data}"),
        "eval zeroshot --out LINK-TO-CHECKPOINT": ([*zeroshot, "--pretrained", checkpoint, "--out", link], checkpoint,
                                                   f"--out {link} is --pretrained {checkpoint} (both resolve to {checkpoint})"),
        "eval zeroshot table onto CHECKPOINT": ([*zeroshot, "--pretrained", as_table, "--out", tmp_path / "weights.json"],
                                                as_table, f"--out (its table) {as_table} is --pretrained {as_table}"),
        "eval grounding --out DATA/x.json": (["eval", "grounding", "--model", "TIER-tiny", "--pretrained", checkpoint,
                                              "--data", data, "--out", data / "x.json"], data / "labels.csv",
                                             f"--out {data / 'x.json'} is inside --data {data}"),
        "eval segmentation --out DATA/x.json": (["eval", "segmentation", "--model", "TIER-tiny", "--pretrained",
                                                 checkpoint, "--data", data, "--out", data / "x.json"], data / "labels.csv",
                                                f"--out {data / 'x.json'} is inside --data {data}"),
        "heatmap --out IMAGE": (["heatmap", "--model", "TIER-tiny", "--pretrained", checkpoint, "--image", image,
                                 "--prompt", "effusion", "--out", image], image,
                                f"--out {image} is --image {image}: writing it would destroy an input"),
        "analyze --out FOLDER-OF-CHECKPOINT": (["analyze", "--model", "TIER-tiny", "--pretrained", named_like_output,
                                                "--data", files.shards, "--out", in_analysis], named_like_output,
                                               f"--out {named_like_output} is --pretrained {named_like_output}"),
        "push --local-dir FOLDER-OF-CHECKPOINT": (["push", "--checkpoint", checkpoint, "--model", "TIER-tiny", "--repo-id",
                                                   REPO, "--local-dir", tmp_path, "--overwrite"], checkpoint,
                                                  f"--checkpoint {checkpoint} is inside --local-dir {tmp_path}"),
    }


CASES = ["eval zeroshot --out CHECKPOINT", "eval zeroshot --out DATA/labels.csv", "eval zeroshot --out DATA/meta.json",
         "eval zeroshot --out LINK-TO-CHECKPOINT", "eval zeroshot table onto CHECKPOINT", "eval grounding --out DATA/x.json",
         "eval segmentation --out DATA/x.json", "heatmap --out IMAGE", "analyze --out FOLDER-OF-CHECKPOINT",
         "push --local-dir FOLDER-OF-CHECKPOINT"]


@pytest.mark.parametrize("case", CASES)
def test_an_output_that_lands_on_an_input_is_refused_and_the_input_kept(files, tmp_path, capsys, no_model, case):
    argv, kept, message = overwrite_cases(files, tmp_path)[case]
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    command = " ".join(argv[:2]) if argv[0] == "eval" else argv[0]
    code, err = run(capsys, *argv)
    assert (code, err.split(": writing")[0] if "(both" in message else err[: len(f"tier-openclip {command}: {message}")]) == (
        2, f"tier-openclip {command}: {message}"), err
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    assert after == before and kept in before  # byte for byte, and nothing added


@pytest.mark.parametrize("command", ["eval zeroshot", "heatmap", "analyze", "demo"])
def test_an_unwritable_out_is_refused_before_any_work(files, tmp_path, capsys, no_model, monkeypatch, command):
    from tier_openclip.demo import pipeline

    monkeypatch.setattr(pipeline, "run_demo", _must_not_run)
    unwritable = Path("/sys")  # read-only for every user, root included (chmod does not stop root)
    argv = {"eval zeroshot": evaluation(files, files.set, "--out", unwritable / "results.json"),
            "heatmap": heatmap(files, tmp_path, out=unwritable / "map.png", prompt="effusion"),
            "analyze": ["analyze", "--model", "TIER-tiny", "--pretrained", files.good, "--data", files.shards,
                        "--out", unwritable],
            "demo": ["demo", "--out", unwritable]}[command]
    code, err = run(capsys, *argv)
    assert code == 2 and f"cannot write in {unwritable} (Permission denied)" in err, err


# --- issue 22, case 4: no silent random weights, no absurd model built -------------------------------


@pytest.fixture(scope="module")
def export_folder(files, tmp_path_factory):
    """A local-dir: model folder written by push, and the safetensors of another architecture."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("export") / "model"
    assert main(["push", "--checkpoint", str(files.good), "--model", "TIER-tiny", "--repo-id", REPO,
                 "--local-dir", str(folder)]) == 0
    other = torch.load(files.root / "other-model.pt", weights_only=True)["state_dict"]
    foreign = folder.parent / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(foreign))
    return type("Exported", (), {"folder": folder, "foreign": foreign})


def damaged_folder(export_folder, tmp_path, damage: str) -> Path:
    import shutil

    folder = Path(shutil.copytree(export_folder.folder, tmp_path / "model"))
    weights, config_path = folder / "open_clip_model.safetensors", folder / "open_clip_config.json"
    config = json.loads(config_path.read_text())
    if damage == "no weights":
        weights.unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "foreign weights":
        shutil.copy(export_folder.foreign, weights)
    elif damage == "broken config":
        config_path.write_text(config_path.read_text()[:40])
    else:
        cfg = config["model_cfg"]
        if damage == "unknown timm model":
            cfg["vision_cfg"] = {"timm_model_name": "resnet_that_does_not_exist", "image_size": 64}
        elif damage == "embed_dim 1e7":
            cfg["embed_dim"] = 1e7
        elif damage == "embed_dim 10000000":
            cfg["embed_dim"] = 10_000_000
        elif damage == "10,000 layers":
            cfg["text_cfg"]["layers"] = 10_000
        elif damage == "huge but in bounds":
            cfg["text_cfg"].update(width=16_384, layers=200, heads=128)
        config_path.write_text(json.dumps(config))
    return folder


DAMAGES = {
    "no weights": "{folder} has no weights file (open_clip_model.safetensors, open_clip_pytorch_model.bin, ...): "
                  "open_clip would build the model with random weights; copy the weights in",
    "truncated weights": "{folder}/open_clip_model.safetensors is not a readable checkpoint: ",
    "foreign weights": "{folder}/open_clip_model.safetensors does not fit model 'local-dir:{folder}': ",
    "broken config": "{folder}/open_clip_config.json is not valid JSON (",
    "unknown timm model": "{folder}/open_clip_config.json: model_cfg.vision_cfg.timm_model_name "
                          "'resnet_that_does_not_exist' is not a model timm ",
    "embed_dim 1e7": "{folder}/open_clip_config.json: model_cfg.embed_dim is 10000000.0: expected a whole number from "
                     "1 to 16,384; is the config damaged?",
    "embed_dim 10000000": "{folder}/open_clip_config.json: model_cfg.embed_dim is 10000000: expected a whole number "
                          "from 1 to 16,384; is the config damaged?",
    "10,000 layers": "{folder}/open_clip_config.json: model_cfg.text_cfg.layers is 10000: expected a whole number from "
                     "1 to 256; is the config damaged?",
    "huge but in bounds": "{folder}/open_clip_config.json: model_cfg describes a model of about 6.45e+11 parameters, "
                          "above the 2e+10 this tool builds; is the config damaged?",
}


def with_model(files, command: str, model: str, out: Path) -> list:
    argv = command_with_checkpoint(files, command, files.good, out)
    at = argv.index("--pretrained")
    argv[at - 1:at + 2] = [model]  # "--model", "TIER-tiny", "--pretrained", CK -> "--model", MODEL
    return argv


@pytest.mark.parametrize("command, damage", [  # push exports --checkpoint's weights, not the folder's
    (command, damage) for command in ("eval zeroshot", "heatmap", "analyze", "push") for damage in sorted(DAMAGES)
    if (command, damage) != ("push", "foreign weights")])
def test_a_local_dir_model_without_usable_weights_or_config_is_one_failure(files, export_folder, tmp_path, capsys,
                                                                           monkeypatch, command, damage):
    import open_clip

    folder = damaged_folder(export_folder, tmp_path, damage)
    if damage != "foreign weights":  # everything else is refused before open_clip builds anything
        monkeypatch.setattr(open_clip, "create_model_and_transforms", _must_not_run)
    if command == "push":
        argv = command_with_checkpoint(files, command, files.good, tmp_path)
        argv[argv.index("--model") + 1] = f"local-dir:{folder}"
    else:
        argv = with_model(files, command, f"local-dir:{folder}", tmp_path)
    if command == "analyze":
        argv[argv.index("--model"):argv.index("--model")] = ["--pretrained", files.good]  # analyze requires it
    code, err = run(capsys, *argv)
    assert code == 1 and err.startswith(f"tier-openclip {command}: " + DAMAGES[damage].format(folder=folder)), err
    assert not (tmp_path / "map.png").exists() and not (tmp_path / "analysis" / "analysis.json").exists()
    assert not (tmp_path / "export").exists()


def test_the_exported_folder_itself_loads(files, export_folder, tmp_path, capsys):
    assert run(capsys, *with_model(files, "eval zeroshot", f"local-dir:{export_folder.folder}", tmp_path)) == (0, "")


@pytest.mark.parametrize("command", ["eval zeroshot", "heatmap", "eval grounding", "eval segmentation"])
def test_a_named_model_without_pretrained_is_refused_in_commands_that_report_results(files, tmp_path, capsys,
                                                                                     no_model, command):
    argv = {"eval grounding": ["eval", "grounding", "--model", "TIER-tiny", "--data", files.set],
            "eval segmentation": ["eval", "segmentation", "--model", "TIER-tiny", "--data", files.set],
            }.get(command) or with_model(files, command, "TIER-tiny", tmp_path)
    assert run(capsys, *argv) == (
        2, f"tier-openclip {command}: --model TIER-tiny without --pretrained has random weights, and its results would "
           "mean nothing: pass --pretrained (a checkpoint such as epoch_N.pt, or an open_clip pretrained tag)")


# --- issue 22, case 8: one line for the remaining mistakes ---------------------------------------------


@pytest.mark.parametrize("content, message", [
    ('{"mean_auc": 0.5}', "is not a results JSON of `tier-openclip eval zeroshot --out` (no 'num_images' entry)"),
    ("[1, 2]", "holds a JSON list, not the object `tier-openclip eval zeroshot --out` writes"),
    ('{"num_images": 4, "labels": [1, 2], "means": {}}',
     "is not a results JSON of `tier-openclip eval zeroshot --out` (AttributeError: 'list' object has no attribute 'items')"),
])
def test_push_refuses_results_of_another_shape_in_one_line(files, tmp_path, capsys, content, message):
    results = tmp_path / "results.json"
    results.write_text(content)
    out = tmp_path / "export"
    assert run(capsys, *push(files, "--repo-id", REPO, "--local-dir", out, "--results", results)) == (
        1, f"tier-openclip push: --results {results} {message}")
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--tier-scale", "1000"], ["--sweep", "--sweep-scales", "1", "1000"]])
def test_demo_refuses_a_tier_scale_training_would_refuse(tmp_path, capsys, monkeypatch, flags):
    from tier_openclip.demo import pipeline
    from tier_openclip.errors import UsageError
    from tier_openclip.training.plugin_args import check_tier_scale

    monkeypatch.setattr(pipeline, "run_demo", _must_not_run)
    monkeypatch.setattr(pipeline, "run_sweep", _must_not_run)
    with pytest.raises(UsageError) as training:  # the plugin's own check, as training runs it
        check_tier_scale(1000.0)
    assert run(capsys, "demo", "--out", tmp_path / "demo", *flags) == (2, f"tier-openclip demo: {training.value}")

"""`tier-openclip push`: the exported folder loads in plain open_clip (local-dir: and hf-hub: from a
local hub cache, offline) with the checkpoint's exact embeddings; the model card; the upload goes
through huggingface_hub without the token ever being printed or written."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import register_config, tower_configs
from tier_openclip import hub
from tier_openclip.errors import CommandError, UsageError

REPO = "tier-lab/tier-test"
TEXTS = ["pleural effusion", "no pleural effusion", "mild cardiomegaly with small left effusion"]
EMBED = textwrap.dedent("""
    import json, sys, torch
    from PIL import Image

    def embed(model, preprocess, tokenizer, image_path, texts):
        tokens = tokenizer(texts)
        image = preprocess(Image.open(image_path).convert("RGB")).unsqueeze(0)
        with torch.no_grad():
            return {"tokens": tokens, "pixels": image, "image": model.encode_image(image),
                    "text": model.encode_text(tokens), "logit_scale": model.logit_scale.detach().clone()}
""")
exec(EMBED)  # the same code embeds in this process and in the offline hf-hub subprocess


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tier-openclip")
    hub.add_push_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def save_train_checkpoint(model: torch.nn.Module, run_dir: Path, epoch: int = 2, params: dict | None = None) -> Path:
    """logs/NAME/checkpoints/epoch_N.pt as open_clip_train saves it from DDP, and params.txt next to it."""
    (run_dir / "checkpoints").mkdir(parents=True)
    path = run_dir / "checkpoints" / f"epoch_{epoch}.pt"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": epoch, "name": run_dir.name, "state_dict": state, "optimizer": {"state": {}}}, path)
    if params is not None:
        (run_dir / "params.txt").write_text("".join(f"{k}: {v}\n" for k, v in sorted(params.items())))
    return path


def build(name: str, **kwargs):
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
    with torch.no_grad():  # trained weights differ from any initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "xray.png"
    Image.fromarray((np.random.default_rng(0).random((80, 70)) * 255).astype(np.uint8)).save(path)
    return path


def assert_same(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def hub_cache(tmp_path: Path, folder: Path, repo_id: str = REPO) -> Path:
    """A Hugging Face hub cache holding ``folder`` as the main revision of ``repo_id``."""
    cache = tmp_path / "hub-cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache


def load_from_hub_offline(tmp_path: Path, folder: Path, image: Path) -> dict:
    """Plain open_clip in a fresh process (no tier_openclip import) loads hf-hub:REPO offline."""
    out = tmp_path / "hub-embeddings.pt"
    script = EMBED + textwrap.dedent(f"""
        import open_clip
        model, preprocess = open_clip.create_model_from_pretrained("hf-hub:{REPO}")
        tokenizer = open_clip.get_tokenizer("hf-hub:{REPO}")
        torch.save(embed(model.eval(), preprocess, tokenizer, sys.argv[1], json.loads(sys.argv[2])), sys.argv[3])
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache(tmp_path, folder)), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script, str(image), json.dumps(TEXTS), str(out)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out, weights_only=True)


def test_clip_text_model_round_trips_through_local_dir_and_hf_hub(tmp_path, xray, capsys):
    import open_clip

    from tier_openclip.models import register_model_configs

    register_model_configs()
    model, preprocess, tokenizer = build("TIER-tiny")
    expected = embed(model, preprocess, tokenizer, xray, TEXTS)
    params = {"model": "TIER-tiny", "loss": "tier", "tier_lambda_text": 0.25, "tier_lambda_image": 0.5,
              "tier_token_mask": "all", "tier_scale": 1.0, "siglip": False, "pretrained": "", "epochs": 4}
    checkpoint = save_train_checkpoint(model, tmp_path / "logs" / "run", params=params)
    out = tmp_path / "export"
    assert run_cli(["push", "--checkpoint", str(checkpoint), "--model", "TIER-tiny", "--repo-id", REPO,
                    "--local-dir", str(out)]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [".cache", "README.md", "open_clip_config.json",
                                                     "open_clip_model.safetensors"]
    record = json.loads((out / hub.EXPORT_RECORD).read_text())  # where huggingface_hub never uploads from
    assert record["files"] == ["README.md", "open_clip_config.json", "open_clip_model.safetensors"]
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"] == open_clip.get_model_config("TIER-tiny")
    assert set(config["preprocess_cfg"]) >= {"mean", "std"}

    local, _, local_preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert_same(embed(local.eval(), local_preprocess, open_clip.get_tokenizer(f"local-dir:{out}"), xray, TEXTS), expected)
    assert_same(load_from_hub_offline(tmp_path, out, xray), expected)

    card = (out / "README.md").read_text()
    assert "library_name: open_clip" in card and "# tier-test" in card
    assert "| TIER λ_text (token→patch entropy weight) | 0.25 |" in card
    assert "| TIER λ_image (patch→token entropy weight) | 0.5 |" in card
    assert "| TIER token mask | all (every position" in card and "| Checkpoint | epoch 2 of 4 |" in card
    assert "MIMIC-CXR" in card and "No training data" in card
    assert f'open_clip.create_model_from_pretrained("hf-hub:{REPO}")' in card
    assert "No evaluation results were supplied" in card


def test_hf_text_tower_round_trips_with_its_tokenizer_files(tmp_path, xray, tiny_bert_dir):
    import open_clip

    name = register_config(tmp_path / "configs", "hubtest-hf-bert", tower_configs(tiny_bert_dir)["hf-bert"])
    model, preprocess, tokenizer = build(name)
    expected = embed(model, preprocess, tokenizer, xray, TEXTS)
    checkpoint = save_train_checkpoint(model, tmp_path / "logs" / "run")  # no params.txt
    out = tmp_path / "export"
    assert run_cli(["push", "--checkpoint", str(checkpoint), "--model", name, "--repo-id", REPO, "--local-dir", str(out),
                    "--lambda-text", "0.1", "--lambda-image", "0.2", "--token-mask", "valid"]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"open_clip_config.json", "open_clip_model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json",
            "config.json"} <= files
    assert "local_files_only" not in (out / "tokenizer_config.json").read_text()
    config = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    assert config["text_cfg"]["hf_tokenizer_name"] == REPO  # hf-hub: reads the tokenizer from the repo itself
    assert config["text_cfg"]["hf_model_name"] == str(tiny_bert_dir)

    local, _, local_preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert_same(embed(local.eval(), local_preprocess, open_clip.get_tokenizer(f"local-dir:{out}"), xray, TEXTS), expected)
    assert_same(load_from_hub_offline(tmp_path, out, xray), expected)
    card = (out / "README.md").read_text()
    assert "| TIER λ_text (token→patch entropy weight) | 0.1 |" in card and "| TIER token mask | valid" in card
    assert f"read from `{tiny_bert_dir}`" in card


def test_run_settings_that_change_the_model_are_carried_into_the_config(tmp_path, xray, tiny_bert_dir):
    import open_clip

    name = register_config(tmp_path / "configs", "hubtest-vit", tower_configs()["vit"])
    # As open_clip_train builds a --siglip --force-image-size 48 --image-mean ... run.
    model, preprocess, tokenizer = build(name, force_image_size=48, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25),
                                         init_logit_scale=math.log(10), init_logit_bias=-10)
    expected = embed(model, preprocess, tokenizer, xray, TEXTS)
    params = {"model": name, "loss": "clip", "siglip": True, "force_image_size": 48, "image_mean": (0.5, 0.5, 0.5),
              "image_std": (0.25, 0.25, 0.25), "force_quick_gelu": False, "image_interpolation": None}
    checkpoint = save_train_checkpoint(model, tmp_path / "logs" / "run", params=params)
    out = tmp_path / "export"
    assert run_cli(["push", "--checkpoint", str(checkpoint), "--model", name, "--repo-id", REPO, "--local-dir", str(out)]) == 0
    local, _, local_preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    assert local.logit_bias is not None
    got = embed(local.eval(), local_preprocess, open_clip.get_tokenizer(f"local-dir:{out}"), xray, TEXTS)
    assert_same(got, expected)
    assert torch.equal(local.logit_bias, model.logit_bias)
    card = (out / "README.md").read_text()
    assert "open_clip's contrastive loss only (no TIER regularisation)" in card and "λ_text" not in card


def test_card_holds_the_evaluation_tables(tmp_path):
    from tier_openclip.evaluation.zeroshot import results_markdown

    results = {"dataset": "chexpert", "num_images": 500, "bootstrap": 1000, "seed": 0, "confidence": 0.95,
               "labels": {"Edema": {"auc": 0.875, "ci": [0.8, 0.9], "positives": 40, "negatives": 400}},
               "skipped": {}, "means": {"all": {"labels": ["Edema"], "mean_auc": 0.875, "ci": [0.8, 0.9]}}}
    card = hub.model_card(REPO, "TIER-tiny", 3, hub.TierSettings("tier", 0.1, 0.1, "valid"), results=[results], license="mit")
    assert results_markdown(results).strip() in card and "| Edema | 0.875 | 0.800–0.900 | 40 | 400 |" in card
    assert "license: mit" in card


def test_params_txt_values_are_parsed_as_open_clip_train_wrote_them(tmp_path):
    path = tmp_path / "params.txt"
    path.write_text("batch_size: 8\nimage_mean: None\nloss: tier\nmodel: local-dir:/x/y\nsiglip: False\n"
                    "tier_lambda_text: 0.1\nforce_image_size: [48, 48]\nname: 2026_01_01-run\n")
    assert hub.read_params(path) == {"batch_size": 8, "image_mean": None, "loss": "tier", "model": "local-dir:/x/y",
                                     "siglip": False, "tier_lambda_text": 0.1, "force_image_size": [48, 48],
                                     "name": "2026_01_01-run"}
    settings = hub.TierSettings.from_sources(hub.read_params(path), lambda_image=0.3)
    assert (settings.loss, settings.lambda_text, settings.lambda_image, settings.token_mask) == ("tier", 0.1, 0.3, None)


class FakeHfApi:
    """Records what would be sent to the Hub; keeps a copy of every uploaded file's bytes."""

    instances: list["FakeHfApi"] = []

    def __init__(self, token=None):
        self.token, self.calls, self.uploaded = token, [], {}
        FakeHfApi.instances.append(self)

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def test_upload_uses_the_env_token_without_printing_or_writing_it(tmp_path, monkeypatch, capfd, caplog):
    import huggingface_hub

    from tier_openclip.models import register_model_configs

    register_model_configs()
    token = "hf_SecretTokenNeverShown0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.instances.clear()
    model, _, _ = build("TIER-tiny")
    checkpoint = save_train_checkpoint(model, tmp_path / "logs" / "run", params={"loss": "tier", "tier_lambda_text": 0.1})
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"dataset": "chexpert", "num_images": 3, "bootstrap": 0, "seed": 0, "labels": {},
                                   "skipped": {}, "means": {}}))
    assert run_cli(["push", "--checkpoint", str(checkpoint), "--model", "TIER-tiny", "--repo-id", REPO, "--private",
                    "--results", str(results)]) == 0
    api = FakeHfApi.instances[-1]
    assert api.token == token  # the token was used ...
    assert api.calls[0] == ("create_repo", {"repo_id": REPO, "repo_type": "model", "private": True, "exist_ok": True})
    assert api.calls[1][1]["repo_id"] == REPO
    assert set(api.uploaded) == {"README.md", "open_clip_config.json", "open_clip_model.safetensors"}
    printed = capfd.readouterr()
    assert f"https://huggingface.co/{REPO}" in printed.out
    written = [*api.uploaded.values(), *(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())]
    for text in (printed.out, printed.err, caplog.text):  # ... and went nowhere else
        assert token not in text
    assert not any(token.encode() in blob for blob in written)


def test_upload_without_a_token_says_how_to_log_in(tmp_path, monkeypatch):
    import huggingface_hub

    from tier_openclip.models import register_model_configs

    register_model_configs()
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.instances.clear()
    model, _, _ = build("TIER-tiny")
    checkpoint = save_train_checkpoint(model, tmp_path / "run")
    with pytest.raises(UsageError, match="set HF_TOKEN or run `hf auth login`"):
        run_cli(["push", "--checkpoint", str(checkpoint), "--model", "TIER-tiny", "--repo-id", REPO])
    assert FakeHfApi.instances == []  # refused before any export or upload


def test_errors_say_what_was_wrong(tmp_path, capsys):
    from tier_openclip.models import register_model_configs

    register_model_configs()
    with pytest.raises(UsageError, match="must be ORG/NAME"):
        run_cli(["push", "--checkpoint", "x.pt", "--model", "TIER-tiny", "--repo-id", "just-a-name"])
    with pytest.raises(UsageError, match="no such file"):
        run_cli(["push", "--checkpoint", str(tmp_path / "missing.pt"), "--model", "TIER-tiny", "--repo-id", REPO,
                 "--local-dir", str(tmp_path / "out")])
    model, _, _ = build("TIER-tiny")
    checkpoint = save_train_checkpoint(model, tmp_path / "run", params={"model": "TIER-tiny"})
    name = register_config(tmp_path / "configs", "hubtest-other", tower_configs()["vit"])
    with pytest.raises(CommandError, match="does not fit model 'hubtest-other' \\(params.txt says the run trained 'TIER-tiny'\\)"):
        run_cli(["push", "--checkpoint", str(checkpoint), "--model", name, "--repo-id", REPO, "--local-dir", str(tmp_path / "o")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.bin").write_bytes(b"")
    with pytest.raises(UsageError, match="not empty; choose a new folder or pass --overwrite"):
        run_cli(["push", "--checkpoint", str(checkpoint), "--model", "TIER-tiny", "--repo-id", REPO,
                 "--local-dir", str(tmp_path / "full")])
    with pytest.raises(SystemExit):
        run_cli(["push", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--checkpoint", "--model", "--repo-id", "--private", "--local-dir", "--results", "--lambda-text",
                 "--lambda-image", "--token-mask"):
        assert flag in help_text


def test_push_does_not_say_the_weights_it_exports_are_random(tmp_path, caplog):
    import logging

    from tier_openclip.models import register_model_configs
    from tier_openclip.openclip_adapter import NO_WEIGHTS_MESSAGE

    register_model_configs()
    model, _, _ = build("TIER-tiny")
    checkpoint = save_train_checkpoint(model, tmp_path / "logs" / "run", params={"model": "TIER-tiny", "loss": "clip"})
    caplog.clear()  # build() itself made a random model
    with caplog.at_level(logging.INFO):
        hub.export_model(checkpoint, "TIER-tiny", tmp_path / "export", REPO)
    assert NO_WEIGHTS_MESSAGE not in caplog.text and (tmp_path / "export" / "open_clip_model.safetensors").is_file()

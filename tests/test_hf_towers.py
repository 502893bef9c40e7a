"""A model whose parts live on the Hugging Face Hub, offline or out of reach: one line naming the
repo to pre-download and HF_HUB_OFFLINE, exit status 1, before anything is built."""

from __future__ import annotations

import pytest

from tier_openclip.commands.cli import main
from tier_openclip.errors import CommandError
from tier_openclip.models import hf_towers

REPO = "microsoft/BiomedVLP-CXR-BERT-specialized"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """Offline, with a Hugging Face cache that holds nothing."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def cache_repo(cache, repo: str, filename: str = "config.json") -> None:
    """The layout huggingface_hub's cache keeps one downloaded file in."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_text("{}")


def test_offline_and_not_cached_names_the_repo_before_building(empty_cache, monkeypatch):
    from tier_openclip import openclip_adapter
    from tier_openclip.models import load_model

    real_symbol = openclip_adapter.symbol

    def no_build(name):
        assert name != "create_model_and_transforms", "built the model before saying the tower is missing"
        return real_symbol(name)

    monkeypatch.setattr(openclip_adapter, "symbol", no_build)
    with pytest.raises(CommandError) as error:
        load_model("TIER-BioViL")
    message = str(error.value)
    assert REPO in message and "HF_HUB_OFFLINE" in message and f"hf download {REPO}" in message
    assert "\n" not in message


def test_cached_repos_pass_and_local_folders_are_not_repos(empty_cache, tmp_path):
    hf_towers.check_cached("TIER-tiny")  # no hub parts
    assert hf_towers.hub_repos("TIER-BioViL") == {REPO: "config.json"}
    cache_repo(empty_cache, REPO)
    hf_towers.check_cached("TIER-BioViL")
    assert hf_towers.hub_repos("hf-hub:ORG/NAME") == {"ORG/NAME": "open_clip_config.json"}
    with pytest.raises(CommandError, match="ORG/NAME"):
        hf_towers.check_cached("hf-hub:ORG/NAME")


def test_command_line_exit_1_one_line(empty_cache, tmp_path, capsys):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (32, 32)).save(image)
    weights = tmp_path / "epoch_1.pt"  # never read: the tower is refused before the model is built
    weights.write_bytes(b"not read")
    code = main(["heatmap", "--model", "TIER-BiomedCLIP-ViT-B-16", "--pretrained", str(weights), "--image",
                 str(image), "--text", "effusion", "--out", str(tmp_path / "map.png")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract" in err and "HF_HUB_OFFLINE" in err


def test_training_stops_before_building(empty_cache, capsys):
    from open_clip_train import params

    from tier_openclip.training.plugin import activate

    activate()
    with pytest.raises(SystemExit) as stop:
        params.parse_args(["--model", "TIER-BioViL", "--train-data", "x.tar", "--loss", "tier"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert REPO in err and "HF_HUB_OFFLINE" in err and len(err.strip().splitlines()) == 1


def test_online_failure_is_the_same_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CommandError, match=f"{REPO} is needed and it could not be downloaded"):
        with hf_towers.reporting_unreachable("TIER-BioViL"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")


def test_convert_from_an_uncached_repo_offline(empty_cache, tmp_path, capsys):
    image = tmp_path / "biovil_image_resnet50_proj_size_128.pt"
    image.write_bytes(b"not read before the repo is found")
    code = main(["convert", "biovil", "--image-checkpoint", str(image), "--text-model", REPO, "--out",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and REPO in err and "HF_HUB_OFFLINE" in err, err
    assert not (tmp_path / "out").exists()

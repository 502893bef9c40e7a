"""`tier-openclip convert biovil` and the TIER-BioViL architecture, against hi-ml's own BioViL classes
(hi-ml-multimodal, random weights saved in the published layouts; tests/biovil_fixtures.py)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from biovil_fixtures import TEXT_LAYERS, make_biovil_image, make_cxr_bert_specialized
from tier_openclip.commands.cli import main
from tier_openclip.errors import CommandError, UsageError

TEXTS = ["left pleural effusion", "no acute cardiopulmonary process", "mild cardiomegaly with small effusion"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("biovil-sources")
    image_path, image_model = make_biovil_image(root / "image")
    text_dir, text_model = make_cxr_bert_specialized(root / "cxr-bert-specialized")
    return image_path, image_model, text_dir, text_model


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    image_path, _, text_dir, _ = sources
    out = tmp_path_factory.mktemp("converted") / "biovil"
    assert main(["convert", "biovil", "--image-checkpoint", str(image_path), "--text-model", str(text_dir),
                 "--out", str(out)]) == 0
    return out


def test_converted_folder_gives_hi_ml_embeddings(sources, converted):
    """Plain open_clip loads the folder offline; its global and patch image embeddings and its
    [CLS] and per-token text projections are hi-ml's (per-token: the authors' use of the head)."""
    import open_clip

    from tier_openclip.features import token_features

    _, image_model, _, text_model = sources
    assert sorted(p.name for p in converted.iterdir()) == [
        "config.json", "open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{converted}", output_dict=True)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{converted}")
    model.eval()
    torch.manual_seed(2)
    images, ids = torch.randn(2, 3, 64, 64), tokenizer(TEXTS)
    with torch.no_grad():
        ours = token_features(model, images, ids, normalize=False)
        image = image_model(images)
        text = text_model(input_ids=ids, attention_mask=(ids != 0).long(), output_cls_projected_embedding=True,
                          return_dict=True)
        hi_ml_tokens = text_model.cls_projection_head(text.last_hidden_state)
        assert torch.allclose(model.encode_image(images), image.projected_global_embedding, atol=1e-5, rtol=0)
        assert torch.allclose(model.encode_text(ids), text.cls_projected_embedding, atol=1e-5, rtol=0)
    assert ours["image_tokens"].shape == (2, 4, 128)  # 64 px / 32 = 2×2 cells
    torch.testing.assert_close(ours["image_features"], image.projected_global_embedding, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["image_tokens"], image.projected_patch_embeddings.flatten(2).transpose(1, 2),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["text_features"], text.cls_projected_embedding, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["text_tokens"], hi_ml_tokens, atol=1e-5, rtol=0)
    assert ours["text_mask"].sum().item() == (ids != 0).sum().item()


def test_converted_folder_loads_in_the_commands(converted):
    from tier_openclip.models import load_model

    loaded = load_model(f"local-dir:{converted}")
    assert loaded.tokenizer(["effusion"]).shape == (1, 128)
    assert json.loads((converted / "config.json").read_text())["model_type"] == "cxr-bert"
    assert "auto_map" not in json.loads((converted / "config.json").read_text())  # no remote code named


def test_authors_freezing_is_the_documented_flag_combination(converted):
    """BERT's embeddings and its first 8 of 12 layers, LayerNorms included (MedCLIP.__init__), and
    nothing else: open_clip's --lock-text --lock-text-unlocked-layers 4 --lock-text-freeze-layer-norm."""
    import open_clip
    from open_clip_train.params import parse_args

    args = parse_args(["--lock-text", "--lock-text-unlocked-layers", "4", "--lock-text-freeze-layer-norm"])
    model = open_clip.create_model(f"local-dir:{converted}")
    model.lock_text_tower(unlocked_layers=args.lock_text_unlocked_layers,
                          freeze_layer_norm=args.lock_text_freeze_layer_norm)
    assert args.lock_text and TEXT_LAYERS == 12
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    authors = re.compile(r"text\.transformer\.bert\.(embeddings\.|encoder\.layer\.[0-7]\.)")
    assert frozen == {name for name, _ in model.named_parameters() if authors.match(name)}
    assert any(".layer.7." in name for name in frozen) and not any(".layer.8." in name for name in frozen)
    assert any("LayerNorm" in name for name in frozen)


def test_every_source_key_is_mapped_or_refused_by_name(sources, tmp_path):
    from tier_openclip.models.convert import convert_biovil

    image_path, _, text_dir, _ = sources
    state = torch.load(image_path, weights_only=True)
    extra = dict(state, **{"backbone_to_vit.weight": torch.zeros(1)})  # a BioViL-T key
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CommandError, match=r"backbone_to_vit\.weight"):
        convert_biovil(tmp_path / "extra.pt", str(text_dir), tmp_path / "out1")
    lacking = {k: v for k, v in state.items() if k != "projector.model.1.running_var"}
    torch.save(lacking, tmp_path / "lacking.pt")
    with pytest.raises(CommandError, match=r"visual\.trunk\.projector\.model\.1\.running_var"):
        convert_biovil(tmp_path / "lacking.pt", str(text_dir), tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # nothing half-written left


def test_general_cxr_bert_is_refused(sources, tmp_path, tiny_bert_dir):
    from tier_openclip.models.convert import convert_biovil

    with pytest.raises(CommandError, match="not CXR-BERT-specialized"):
        convert_biovil(sources[0], str(tiny_bert_dir), tmp_path / "out")


def test_never_writes_over_files_or_inputs(sources, tmp_path, capsys):
    image_path, _, text_dir, _ = sources
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    for out in (taken, text_dir, text_dir / "sub", image_path):
        code = main(["convert", "biovil", "--image-checkpoint", str(image_path), "--text-model", str(text_dir),
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert (taken / "notes.txt").read_text() == "mine"
    assert not (text_dir / "sub").exists()


def test_shipped_config_is_the_converted_architecture(converted):
    from importlib.resources import files

    shipped = json.loads((files("tier_openclip") / "model_configs" / "TIER-BioViL.json").read_text())
    folder = json.loads((converted / "open_clip_config.json").read_text())["model_cfg"]
    for cfg in (shipped, folder):
        cfg["text_cfg"].pop("hf_model_name"), cfg["text_cfg"].pop("hf_tokenizer_name")
    assert shipped == folder


def test_shipped_config_reads_cxr_bert_specialized_without_remote_code(sources, converted, tmp_path):
    """`--model TIER-BioViL` with no checkpoint: the text tower's weights are the published repo's
    (here its layout at toy size, remote-code pointers included), loaded by the local cxr-bert type;
    with `--pretrained` the converted weights: hi-ml's image model too."""
    import open_clip
    from importlib.resources import files

    from helpers import register_config

    _, _, text_dir, text_model = sources
    config = json.loads((files("tier_openclip") / "model_configs" / "TIER-BioViL.json").read_text())
    config["text_cfg"]["hf_model_name"] = config["text_cfg"]["hf_tokenizer_name"] = str(text_dir)
    name = register_config(tmp_path, "offline-TIER-BioViL", config)
    model = open_clip.create_model(name).eval()
    ids = open_clip.get_tokenizer(name)(TEXTS)
    with torch.no_grad():
        expected = text_model.get_projected_text_embeddings(ids, (ids != 0).long(), normalize_embeddings=False)
        torch.testing.assert_close(model.encode_text(ids), expected, atol=1e-5, rtol=0)
    from tier_openclip.models import load_model

    loaded = load_model(name, str(converted / "open_clip_model.safetensors"))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(images), sources[1](images).projected_global_embedding,
                                   atol=1e-5, rtol=0)

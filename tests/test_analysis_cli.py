"""The analysis commands (heatmap, analyze) and the tier-openclip command line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import write_shards
from tier_openclip.commands.cli import SUBCOMMANDS, build_parser, main
from tier_openclip.evaluation.analyze import accumulate_similarity_stats, top_k_values


def _tiny_checkpoint(directory, seed: int) -> str:
    """A TIER-tiny training checkpoint in open_clip_train's format ("module." prefix included)."""
    import open_clip

    from tier_openclip.models import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("TIER-tiny")
    path = directory / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "t", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), seed=0)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory.mktemp("other"), seed=1)


def test_every_subcommand_has_a_complete_help(capsys):
    parser = build_parser()
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: tier-openclip " + name in capsys.readouterr().out


def test_cli_runs_as_an_installed_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tier_openclip", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and all(name in result.stdout for name in SUBCOMMANDS)


def test_similarity_stats_are_consistent(tower_models):
    from tier_openclip import token_patch_entropy
    from tier_openclip.features import token_features

    model, tokenizer, size = tower_models["vit"]
    images, texts = torch.randn(4, 3, *size), tokenizer(["left pleural effusion", "no pneumothorax", "clear lungs", "edema"])
    stats = accumulate_similarity_stats(model, [(images, texts)]).summary()
    out = token_features(model, images, texts)
    h_text, h_image = token_patch_entropy(out["text_tokens"], out["image_tokens"], out["text_mask"], impl="torch")
    assert stats["entropy_token_to_patch"] == pytest.approx(h_text.mean().item(), rel=1e-5)
    assert stats["entropy_patch_to_token"] == pytest.approx(h_image.mean().item(), rel=1e-5)
    assert stats["tokens"] == int(out["text_mask"].sum())
    curve = np.array(stats["rank_curve_raw"]["mean"])
    assert len(curve) == 16 and np.all(np.diff(curve) <= 1e-7)
    normalised = stats["rank_curve_normalised"]["mean"]
    assert normalised[0] == pytest.approx(1.0) and normalised[-1] == pytest.approx(0.0)
    masses = [stats["top_k_mass"][str(k)] for k in top_k_values(16)]
    assert all(0 < m <= 1 for m in masses) and masses == sorted(masses)


# draw_heatmaps: panels of 3.2 × 3.4 inches at 120 dpi, up to 4 a row
PANEL_PIXELS = (384, 408)


def test_heatmap_command_draws_token_and_prompt_panels(tmp_path, checkpoint, capsys):
    from PIL import Image

    image = tmp_path / "cxr.png"
    Image.fromarray((np.random.default_rng(0).random((80, 96)) * 255).astype(np.uint8)).save(image)
    out = tmp_path / "map.png"
    assert main(["heatmap", "--model", "TIER-tiny", "--pretrained", checkpoint, "--image", str(image),
                 "--text", "small left pleural effusion", "--tokens", "left", "--prompt", "cardiomegaly",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out} (2 panels)\n"  # the token 'left' and the prompt
    with Image.open(out) as figure:
        assert figure.size == (2 * PANEL_PIXELS[0], PANEL_PIXELS[1])


def test_heatmap_maps_are_the_token_patch_similarities(tmp_path, checkpoint):
    import torch.nn.functional as F
    from PIL import Image

    from tier_openclip.evaluation.grounding import grid_shape
    from tier_openclip.evaluation.heatmap import similarity_maps
    from tier_openclip.features import token_features
    from tier_openclip.models import load_model

    loaded = load_model("TIER-tiny", checkpoint)
    image = Image.fromarray((np.random.default_rng(1).random((80, 96, 3)) * 255).astype(np.uint8))
    pixels, maps = similarity_maps(loaded, image, "left effusion", tokens=["left"], prompts=["cardiomegaly"])
    assert [m.label for m in maps] == ["left", "cardiomegaly"]
    batch = loaded.preprocess(image).unsqueeze(0)
    assert pixels.shape == (*batch.shape[-2:], 3) and pixels.dtype == np.uint8
    with torch.no_grad():
        patches = token_features(loaded.model, images=batch)["image_tokens"][0]
        ids = loaded.tokenizer(["left effusion"])
        token = token_features(loaded.model, texts=ids)["text_tokens"][0, 1]  # position 1: 'left'
        prompt = token_features(loaded.model, texts=loaded.tokenizer(["cardiomegaly"]))["text_features"][0]
    rows, cols = grid_shape(patches.shape[0], tuple(batch.shape[-2:]))
    for similarity, feature in zip(maps, (token, prompt)):
        expected = F.interpolate((patches @ feature).reshape(1, 1, rows, cols), size=batch.shape[-2:],
                                 mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(similarity.values, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(maps[0].values, maps[1].values)


def test_heatmap_reads_a_real_dicom(tmp_path, checkpoint):
    from pydicom.data import get_testdata_file

    from tier_openclip.evaluation.heatmap import load_image

    image = load_image(get_testdata_file("RG1_UNCI.dcm"))
    assert image.size == (1841, 1955) and image.mode == "RGB"
    from tier_openclip.data_prep.images import dicom_to_uint8

    prepared = np.asarray(dicom_to_uint8(get_testdata_file("RG1_UNCI.dcm")).image)  # what prep trains on
    assert np.array_equal(np.asarray(image), np.repeat(prepared[..., None], 3, axis=2))
    assert prepared.std() > 10  # a radiograph, not a blank page
    out = tmp_path / "dicom-map.png"
    assert main(["heatmap", "--model", "TIER-tiny", "--pretrained", checkpoint, "--image",
                 get_testdata_file("RG1_UNCI.dcm"), "--prompt", "pleural effusion", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as figure:
        assert figure.size == PANEL_PIXELS  # one panel: the one prompt


def test_heatmap_errors_say_what_to_do(tmp_path, checkpoint, capsys):
    assert main(["heatmap", "--model", "TIER-tiny", "--image", str(tmp_path / "missing.png"), "--prompt", "x",
                 "--out", str(tmp_path / "o.png")]) == 2
    assert capsys.readouterr().err == f"tier-openclip heatmap: --image {tmp_path / 'missing.png'}: no such file\n"
    assert main(["heatmap", "--model", "TIER-tiny", "--image", "x.png", "--out", str(tmp_path / "o.png")]) == 2
    assert "give --text" in capsys.readouterr().err


def test_analyze_command_with_baseline_and_boxes(tmp_path, checkpoint, other_checkpoint):
    shards = write_shards(tmp_path / "shards", num_shards=1, per_shard=12, size=64)
    from PIL import Image

    (tmp_path / "images").mkdir()
    with open(tmp_path / "boxes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "phrase", "x0", "y0", "x1", "y1"])
        for i in range(3):
            Image.fromarray(np.full((64, 64), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
            writer.writerow([f"images/{i}.png", "left pleural effusion", 0, 0, 63, 63])  # the whole image: always a hit
            writer.writerow([f"images/{i}.png", "cardiomegaly", -10, -10, -5, -5])  # outside: never a hit
    out = tmp_path / "analysis"
    assert main(["analyze", "--model", "TIER-tiny", "--pretrained", checkpoint, "--baseline", other_checkpoint,
                 "--data", shards, "--num-samples", "10", "--boxes", str(tmp_path / "boxes.csv"),
                 "--out", str(out)]) == 0
    results = json.loads((out / "analysis.json").read_text())
    assert set(results) == {"tier", "baseline"}
    assert results["tier"]["pairs"] == 10
    # each checkpoint's figures are its own: what the library computes for it on the same pairs
    from tier_openclip.evaluation.analyze import shard_batches
    from tier_openclip.models import load_model

    for label, path in (("tier", checkpoint), ("baseline", other_checkpoint)):
        loaded = load_model("TIER-tiny", path)
        expected = accumulate_similarity_stats(loaded.model, shard_batches(shards, loaded.preprocess, loaded.tokenizer,
                                                                           10, 32)).summary()
        for key in ("entropy_token_to_patch", "entropy_patch_to_token"):
            assert results[label][key] == pytest.approx(expected[key], rel=1e-6)
    assert results["tier"]["entropy_token_to_patch"] != pytest.approx(results["baseline"]["entropy_token_to_patch"])
    pointing = results["tier"]["pointing_game"]
    assert pointing["per_phrase"]["left pleural effusion"]["accuracy"] == 1.0
    assert pointing["per_phrase"]["cardiomegaly"]["accuracy"] == 0.0
    assert pointing["accuracy"] == 0.5 and pointing["boxes"] == 6
    assert (out / "rank_curves.png").is_file()


def test_heatmap_panels_are_words_and_cover_the_whole_stored_image(tmp_path, checkpoint):
    from PIL import Image

    from tier_openclip.evaluation.heatmap import over_stored_image, similarity_maps
    from tier_openclip.models import load_model

    loaded = load_model("TIER-tiny", checkpoint)
    image = Image.fromarray((np.random.default_rng(2).random((80, 96, 3)) * 255).astype(np.uint8))
    pixels, maps = similarity_maps(loaded, image, "left pleural effusion")
    assert [m.label for m in maps] == ["left", "pleural", "effusion"]  # CLIP BPE: left | ple ural | ef fusion
    _, pieces = similarity_maps(loaded, image, "pleural", tokens=["ple"])  # a piece names its word
    assert [m.label for m in pieces] == ["pleural"]
    with torch.no_grad():  # the word's map is its pieces' mean (ids: start, ple, ural, end)
        from tier_openclip.features import token_features

        ids = loaded.tokenizer(["pleural"])
        tokens = token_features(loaded.model, texts=ids)["text_tokens"][0, 1:3]
        patches = token_features(loaded.model, images=loaded.preprocess(image).unsqueeze(0))["image_tokens"][0]
    np.testing.assert_allclose(pieces[0].grid.ravel(), (patches @ tokens.mean(dim=0)).numpy(), rtol=1e-5, atol=1e-6)

    shown, framed = over_stored_image(image, maps, loaded.preprocess, pixels.shape[:2])
    assert shown.shape == (80, 96, 3) and framed[0].values.shape == (80, 96)
    # open_clip resizes the shorter side to 64 and crops the centre: 8 stored columns each side are not seen
    assert np.isnan(framed[0].values[:, :8]).all() and np.isnan(framed[0].values[:, -8:]).all()
    assert np.isfinite(framed[0].values[:, 8:-8]).all()
    big = Image.new("RGB", (3000, 2400))
    shown, framed = over_stored_image(big, maps[:1], loaded.preprocess, pixels.shape[:2])
    assert shown.shape == (819, 1024, 3) and framed[0].values.shape == (819, 1024)

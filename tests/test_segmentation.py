"""Linear-probe segmentation: metrics against sklearn, the prior against brute force, the probe
on arrays whose patch embeddings carry the mask exactly (Dice ≈ 1) or nothing (Dice ≈ the empty
head), masks in the model's input frame, and the command through TIER-tiny with the API's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_training_checkpoint
from PIL import Image

from tier_openclip.data_prep.seg_sets import SegSetWriter
from tier_openclip.evaluation import segmentation as seg
from tier_openclip.evaluation.bootstrap import resample_counts


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a shared 2-core machine a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# --- metrics and baselines ----------------------------------------------------------------------


def test_metrics_equal_sklearns_on_pooled_pixels():
    from sklearn.metrics import f1_score, jaccard_score

    rng = np.random.default_rng(0)
    predicted, target = rng.random((5, 6, 7)) < 0.3, rng.random((5, 6, 7)) < 0.4
    counts = seg.confusion_counts(predicted, target)
    assert counts.shape == (5, 4) and counts.sum() == predicted.size
    metrics = seg.metrics_from_counts(counts.sum(axis=0))
    assert metrics["dice"] == pytest.approx(f1_score(target.ravel(), predicted.ravel()))
    assert metrics["iou"] == pytest.approx(jaccard_score(target.ravel(), predicted.ravel()))
    assert metrics["miou"] == pytest.approx(jaccard_score(target.ravel(), predicted.ravel(), average="macro"))
    valid = rng.random((5, 6, 7)) < 0.5
    masked = seg.metrics_from_counts(seg.confusion_counts(predicted, target, valid).sum(axis=0))
    assert masked["dice"] == pytest.approx(f1_score(target[valid], predicted[valid]))
    nothing = seg.metrics_from_counts(np.array([0, 0, 0, 10]))  # nothing to find, nothing predicted
    assert (nothing["dice"], nothing["iou"], nothing["miou"]) == (1.0, 1.0, 1.0)


def test_prior_is_the_mean_mask_at_its_best_training_threshold():
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 10, 10), bool)
    for mask in masks:
        y, x = rng.integers(0, 5, size=2)
        mask[y : y + 5, x : x + 5] = True
    prior, threshold = seg.prior_mask(masks)
    mean = masks.mean(axis=0)

    def train_dice(predicted):
        return seg.metrics_from_counts(seg.confusion_counts(np.broadcast_to(predicted, masks.shape), masks).sum(0))["dice"]

    best = max(np.unique(mean[mean > 0]), key=lambda t: train_dice(mean >= t))
    assert threshold == pytest.approx(best) and np.array_equal(prior, mean >= best)
    assert train_dice(prior) >= max(train_dice(mean >= t) for t in np.unique(mean))
    empty, _ = seg.prior_mask(np.zeros((3, 4, 4), bool))
    assert not empty.any()


def test_seed_summary_is_the_mean_over_seeds_with_a_bootstrap_over_images():
    rng = np.random.default_rng(2)
    per_seed = [rng.integers(0, 20, size=(15, 4)) for _ in range(3)]
    summary = seg.summarise_seeds(per_seed, bootstrap=40, seed=5)
    dice = [seg.metrics_from_counts(c.sum(0))["dice"] for c in per_seed]
    assert summary["dice"]["value"] == pytest.approx(np.mean(dice))
    assert summary["dice"]["sd"] == pytest.approx(np.std(dice, ddof=1))
    draws = [np.mean([seg.metrics_from_counts(w @ c)["dice"] for c in per_seed], axis=0)
             for w in resample_counts(15, 40, 5)]
    assert summary["dice"]["ci"] == pytest.approx(list(np.quantile(np.concatenate(draws), [0.025, 0.975])))
    single = seg.summarise_seeds(per_seed[:1], bootstrap=0, seed=5)
    assert single["iou"]["sd"] is None and single["iou"]["ci"] is None


# --- the probe on arrays ------------------------------------------------------------------------


def synthetic(n: int, seed: int, informative: bool, grid: int = 8, scale: int = 4, dim: int = 6):
    """Masks made of whole patches (rectangles of 2-4 patches a side, a third of the images
    empty) at ``scale`` pixels a patch; features: channel 0 = the patch's mask value (when
    ``informative``) and noise everywhere else."""
    rng = np.random.default_rng(seed)
    patches = np.zeros((n, grid, grid), bool)
    for i in range(n):
        if i % 3:
            h, w = rng.integers(2, 5, size=2)
            y, x = rng.integers(0, grid - h + 1), rng.integers(0, grid - w + 1)
            patches[i, y : y + h, x : x + w] = True
    features = rng.normal(size=(n, dim, grid, grid)).astype(np.float32)
    if informative:
        features[:, 0] = patches
    masks = patches.repeat(scale, axis=1).repeat(scale, axis=2)
    return torch.from_numpy(features), torch.from_numpy(masks)


def test_a_probe_on_embeddings_that_carry_the_mask_finds_it():
    train_features, train_masks = synthetic(48, 0, informative=True)
    test_features, test_masks = synthetic(24, 1, informative=True)
    results = seg.probe_evaluate(train_features, train_masks, test_features, test_masks, bootstrap=50)
    probe, prior, empty = results["probe"], results["baselines"]["prior"], results["baselines"]["empty"]
    assert probe["dice"]["value"] > 0.93 and probe["iou"]["value"] > 0.87
    assert empty["dice"]["value"] == 0.0 and prior["dice"]["value"] < 0.5
    assert probe["dice"]["ci"][0] > prior["dice"]["value"]
    assert (results["seeds"], results["runs"][0]["train_images"], results["grid"]) == (1, 48, [8, 8])


def test_a_probe_on_embeddings_that_carry_nothing_scores_like_the_empty_head():
    train_features, train_masks = synthetic(48, 0, informative=False)
    test_features, test_masks = synthetic(24, 1, informative=False)
    bce = seg.probe_evaluate(train_features, train_masks, test_features, test_masks, bootstrap=0,
                             config=seg.ProbeConfig(loss="bce"))
    assert bce["probe"]["dice"]["value"] == pytest.approx(bce["baselines"]["empty"]["dice"]["value"], abs=0.05)
    default = seg.probe_evaluate(train_features, train_masks, test_features, test_masks, bootstrap=0)
    assert default["probe"]["dice"]["value"] == pytest.approx(default["baselines"]["empty"]["dice"]["value"], abs=0.05)
    assert default["baselines"]["prior"]["dice"]["value"] > 0.1  # the image-free prior does better than nothing


def test_small_label_fractions_run_several_seeds_on_different_subsets():
    train_features, train_masks = synthetic(40, 0, informative=True)
    test_features, test_masks = synthetic(12, 1, informative=True)
    results = seg.probe_evaluate(train_features, train_masks, test_features, test_masks, label_fraction=0.1,
                                 seed=7, bootstrap=20, config=seg.ProbeConfig(epochs=3))
    assert results["seeds"] == 3 and [run["seed"] for run in results["runs"]] == [7, 8, 9]
    assert [run["train_images"] for run in results["runs"]] == [4, 4, 4]
    subsets = {tuple(seg.train_subset(40, 0.1, s)) for s in (7, 8, 9)}
    assert len(subsets) == 3
    assert len(results["probe"]["dice"]["per_seed"]) == 3 and results["probe"]["dice"]["sd"] is not None
    again = seg.probe_evaluate(train_features, train_masks, test_features, test_masks, label_fraction=0.1,
                               seed=7, bootstrap=20, config=seg.ProbeConfig(epochs=3))
    assert again["probe"] == results["probe"]  # seeded: the same numbers twice
    with pytest.raises(ValueError, match="label_fraction"):
        seg.probe_evaluate(train_features, train_masks, test_features, test_masks, label_fraction=0)


# --- masks in the model's input frame -----------------------------------------------------------


def test_masks_are_sampled_through_the_images_resize_and_centre_crop(tmp_path):
    from open_clip.transform import image_transform

    from tier_openclip.data_prep.seg_sets import write_mask

    mask = np.zeros((32, 48), bool)  # a wide image: open_clip resizes the short side, crops the long one
    mask[4:12, 20:36] = True
    write_mask(tmp_path / "m.png", mask)
    sampled, valid = seg.masks_in_input_frame([tmp_path / "m.png"], [(48, 32)], (16, 16))
    # scale 2, x offset 8: input pixel i takes stored pixel 2i + 1 (+ 8 across)
    expected = mask[1::2][:16][:, 9::2][:, :16]
    assert valid is None and np.array_equal(sampled[0].numpy(), expected)
    # the image through open_clip's own preprocessing is bright exactly there
    picture = Image.fromarray(np.where(mask, 250, 5).astype(np.uint8)).convert("RGB")
    pixels = image_transform(16, is_train=False, mean=(0, 0, 0), std=(1, 1, 1))(picture)[0].numpy()
    assert pixels[expected].min() > 0.5 and (pixels[~expected] < 0.5).mean() > 0.9
    padded, inside = seg.masks_in_input_frame([tmp_path / "m.png"], [(48, 32)], (16, 16), "longest")
    assert inside is not None and not inside[0, :2].any() and inside[0, 3:13].all()  # rows of padding


# --- through a model and the command line -------------------------------------------------------


@pytest.fixture(scope="module")
def bright_seg_set(tmp_path_factory) -> Path:
    """64 x 64 images with a bright square where the mask is (some without), train and test."""
    directory = tmp_path_factory.mktemp("seg") / "set"
    writer = SegSetWriter(directory, "phantom", "lesion", 64)
    rng = np.random.default_rng(0)
    for i in range(14):
        mask = np.zeros((64, 64), bool)
        if i % 3:
            y, x = rng.integers(0, 40, size=2)
            mask[y : y + 24, x : x + 24] = True
        image = np.where(mask, 230, 30).astype(np.uint8)
        writer.add(f"img{i:02d}", image, mask, "test" if i >= 10 else "train", source_id=f"s.{i}")
    writer.close()
    return directory


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from tier_openclip.models import load_model

    torch.manual_seed(0)
    return save_training_checkpoint(load_model("TIER-tiny").model, tmp_path_factory.mktemp("ckpt") / "epoch_1.pt")


def test_evaluate_uses_the_frozen_towers_patch_embeddings(bright_seg_set):
    from tier_openclip.features import token_features
    from tier_openclip.models import load_model

    torch.manual_seed(0)
    tiny = load_model("TIER-tiny")
    tiny.model.train()
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    results = seg.segmentation_evaluate(tiny.model, tiny.preprocess, bright_seg_set, bootstrap=0,
                                        config=seg.ProbeConfig(epochs=2))
    assert tiny.model.training and all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())
    assert (results["dataset"], results["target"], results["num_train_images"], results["num_test_images"]) == (
        "phantom", "lesion", 10, 4)
    assert (results["grid"], results["input_size"], results["feature_dim"]) == ([8, 8], [64, 64], 64)
    features, _ = seg.extract_features(tiny.model, tiny.preprocess, [bright_seg_set / "images/img00.png"])
    with torch.no_grad():
        tiny.model.eval()
        image = tiny.preprocess(Image.open(bright_seg_set / "images/img00.png").convert("RGB"))[None]
        tokens = token_features(tiny.model, images=image)["image_tokens"][0]
    assert torch.allclose(features[0], tokens.T.reshape(64, 8, 8), atol=1e-6)


def test_cli_writes_json_and_markdown_with_the_apis_numbers(bright_seg_set, tiny_checkpoint, tmp_path, capsys):
    from tier_openclip.commands.cli import main
    from tier_openclip.models import load_model

    out = tmp_path / "eval" / "results.json"
    code = main(["eval", "segmentation", "--model", "TIER-tiny", "--pretrained", str(tiny_checkpoint), "--data",
                 str(bright_seg_set), "--out", str(out), "--label-fraction", "0.5", "--seeds", "2", "--epochs", "3",
                 "--bootstrap", "30", "--seed", "4", "--workers", "0", "--device", "cpu", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads(out.read_text())
    table = out.with_suffix(".md").read_text()
    assert table in printed and table == seg.segmentation_markdown(results)
    assert "| Linear probe (frozen encoder) |" in table and "| Empty head (all background) | 0.000" in table
    assert (results["model"], results["label_fraction"], results["seeds"]) == ("TIER-tiny", 0.5, 2)
    assert [run["train_images"] for run in results["runs"]] == [5, 5]
    loaded = load_model("TIER-tiny", str(tiny_checkpoint))
    api = seg.segmentation_evaluate(loaded.model, loaded.preprocess, bright_seg_set, label_fraction=0.5, seeds=2,
                                    seed=4, bootstrap=30, config=seg.ProbeConfig(epochs=3))
    for key in ("probe", "baselines", "runs"):
        assert results[key] == json.loads(json.dumps(api[key]))


def test_cli_errors_are_one_line_with_the_right_status(tmp_path, capsys):
    from tier_openclip.commands.cli import main

    # a missing folder and a broken set: tests/test_cli_common.py (grounding and segmentation alike)
    assert main(["eval", "segmentation", "--model", "TIER-tiny", "--data", str(tmp_path), "--label-fraction", "0"]) == 2
    assert "--label-fraction" in capsys.readouterr().err


def test_a_segmentation_interval_on_a_handful_of_test_images_is_warned_about(caplog):
    import logging

    counts = np.array([[5, 1, 1, 9], [4, 0, 2, 10], [6, 2, 0, 8]], dtype=np.int64)  # 3 test images
    with caplog.at_level(logging.WARNING, logger="tier_openclip"):
        seg.summarise_seeds([counts], bootstrap=20, seed=0)
    assert "segmentation: the bootstrap interval rests on 3 test images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tier_openclip"):
        seg.summarise_seeds([np.tile(counts, (4, 1))], bootstrap=20, seed=0)  # 12 images
    assert "bootstrap interval" not in caplog.text

"""Phrase grounding: the metrics against loop-by-loop definitions on hand-made maps, the set
reader's checks, the baselines, a model whose maps are known, the CLI and the training hook. The
map geometry (patch centres, upsampling, boxes, the pointing game's rule) is tested in
test_grounding_geometry.py."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import Recorder, save_training_checkpoint
from PIL import Image

from helpers import interpolate, loop_region
from tier_openclip.evaluation import grounding
from tier_openclip.evaluation.grounding import (
    CNR_EPS, PriorMaps, grounding_meta, grounding_metrics, read_grounding_set, region_mask, write_boxes_csv,
    write_prior_boxes_csv,
)

# --- loop-by-loop definitions (the specification) ------------------------------------------------


def pixels(saliency, region):
    """(value, inside) for every pixel the map covers (not NaN)."""
    height, width = saliency.shape
    return [(saliency[r, c], bool(region[r, c])) for r in range(height) for c in range(width)
            if not math.isnan(saliency[r, c])]


def loop_cnr(saliency, region):
    inside = [v for v, i in pixels(saliency, region) if i]
    outside = [v for v, i in pixels(saliency, region) if not i]
    if not inside or not outside:
        return 0.0
    mu_in, mu_out = sum(inside) / len(inside), sum(outside) / len(outside)
    var_in = sum((v - mu_in) ** 2 for v in inside) / len(inside)
    var_out = sum((v - mu_out) ** 2 for v in outside) / len(outside)
    return abs(mu_in - mu_out) / math.sqrt(var_in + var_out + CNR_EPS)


def loop_pointing(saliency, region):
    covered = pixels(saliency, region)
    top = max(v for v, _ in covered)
    hits = [i for v, i in covered if v == top]
    return sum(hits) / len(hits)


def loop_miou(saliency, region):
    covered = pixels(saliency, region)
    low, high = min(v for v, _ in covered), max(v for v, _ in covered)
    if high == low:
        return 0.0
    ious = []
    for t in (0.1, 0.2, 0.3, 0.4, 0.5):
        predicted = [(v - low) / (high - low) >= t for v, _ in covered]
        both = sum(p and i for p, (_, i) in zip(predicted, covered))
        either = sum(p or i for p, (_, i) in zip(predicted, covered))
        ious.append(both / either)
    return sum(ious) / len(ious)


# --- metrics ---------------------------------------------------------------------------------------


def test_a_map_that_is_the_box_scores_perfectly_and_its_negative_not_at_all():
    region = region_mask([(2, 3, 6, 7)], 10, 12)
    ideal = region.astype(float)
    assert grounding_metrics(ideal, region) == {
        "cnr": pytest.approx(1 / math.sqrt(CNR_EPS)), "pointing_game": 1.0, "miou": 1.0}
    assert grounding_metrics(ideal, region)["cnr"] == pytest.approx(1e4)  # |1 - 0| / √ε, ε = 1e-8
    negative = grounding_metrics(1 - ideal, region)
    assert negative == {"cnr": pytest.approx(1e4), "pointing_game": 0.0, "miou": 0.0}  # CNR has no sign
    scaled = grounding_metrics(0.3 * ideal - 5, region)  # affine maps: same pointing and mIoU
    assert (scaled["pointing_game"], scaled["miou"]) == (1.0, 1.0)


def test_metrics_equal_their_loop_definitions_on_random_maps_and_boxes():
    rng = np.random.default_rng(0)
    for trial in range(25):
        height, width = rng.integers(4, 11, size=2)
        boxes = []
        for _ in range(rng.integers(1, 3)):
            x0, y0 = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
            boxes.append((x0, y0, x0 + rng.uniform(0.6, 5), y0 + rng.uniform(0.6, 5)))
        region = region_mask(boxes, height, width)
        np.testing.assert_array_equal(region, loop_region(boxes, height, width))
        saliency = rng.normal(size=(height, width))
        if trial % 3 == 0:
            saliency = np.round(saliency)  # many ties
        if trial % 4 == 1:
            saliency[rng.random((height, width)) < 0.3] = np.nan  # pixels the model never saw
        if not region.any() or region.all() or np.isnan(saliency).all():
            continue
        got = grounding_metrics(saliency, region)
        assert got["cnr"] == pytest.approx(loop_cnr(saliency, region), rel=1e-9, abs=1e-12)
        assert got["pointing_game"] == pytest.approx(loop_pointing(saliency, region))
        assert got["miou"] == pytest.approx(loop_miou(saliency, region))
        assert grounding_metrics(saliency, boxes) == got  # boxes or mask


def test_ties_flat_maps_and_one_sided_regions():
    region = np.zeros((4, 4), bool)
    region[:2, :2] = True  # a quarter of the image
    two_maxima = np.zeros((4, 4))
    two_maxima[0, 0] = two_maxima[3, 3] = 1.0
    assert grounding.pointing_game(two_maxima, region) == 0.5
    flat = np.full((4, 4), 0.7)
    assert grounding_metrics(flat, region) == {"cnr": pytest.approx(0.0, abs=1e-9), "pointing_game": 0.25, "miou": 0.0}
    assert grounding.cnr(np.arange(16.0).reshape(4, 4), np.ones((4, 4), bool)) == 0.0  # nothing outside
    assert grounding.miou(np.arange(16.0).reshape(4, 4), region, thresholds=(0.0,)) == 0.25  # all predicted


# --- grounding sets --------------------------------------------------------------------------------


def make_set(directory: Path, images: dict[str, np.ndarray], rows: list[tuple], labels=("opacity", "effusion"),
             prior: list[tuple] | None = None, dataset="test") -> Path:
    (directory / "images").mkdir(parents=True, exist_ok=True)
    for name, array in images.items():
        Image.fromarray(array).save(directory / name)
    write_boxes_csv(directory / "boxes.csv", rows)
    if prior is not None:
        write_prior_boxes_csv(directory / "prior_boxes.csv", prior)
    (directory / "meta.json").write_text(json.dumps(grounding_meta(dataset, list(labels), None)))
    return directory


def dark(width=64, height=64):
    return np.zeros((height, width), np.uint8)


def test_reader_groups_boxes_into_phrases_and_reads_sizes(tmp_path):
    rows = [("images/a.png", "opacity", "left opacity", 1, 2, 10, 12),
            ("images/b.png", "effusion", "small effusion", 0, 40, 30, 64),
            ("images/a.png", "opacity", "left opacity", 30, 30, 40, 40)]
    gset = read_grounding_set(make_set(tmp_path, {"images/a.png": dark(), "images/b.png": dark(96, 64)}, rows))
    assert [(p.image, p.finding, p.phrase, len(p.boxes)) for p in gset.phrases] == [
        ("images/a.png", "opacity", "left opacity", 2), ("images/b.png", "effusion", "small effusion", 1)]
    assert gset.image_sizes == {"images/a.png": (64, 64), "images/b.png": (96, 64)}
    assert gset.phrases[0].boxes[1] == (30.0, 30.0, 40.0, 40.0) and gset.prior_boxes is None
    assert (gset.dataset, gset.labels) == ("test", ["opacity", "effusion"])


@pytest.mark.parametrize("row, message", [
    (("../x.png", "opacity", "p", 0, 0, 5, 5), r"row 2: image '\.\./x\.png'"),  # wording: data_prep.paths
    (("/etc/x.png", "opacity", "p", 0, 0, 5, 5), r"row 2: image '/etc/x\.png'"),
    (("images/none.png", "opacity", "p", 0, 0, 5, 5), "does not exist"),
    (("images/a.png", "opacity", "p", 5, 0, 5, 5), "not x0 < x1"),
    (("images/a.png", "opacity", "p", 0, 0, "nan", 5), "not x0 < x1"),
    (("images/a.png", "opacity", "p", 0, 0, "five", 5), "must be numbers"),
    (("images/a.png", "opacity", "p", 70, 70, 80, 80), "holds no pixel"),
    (("images/a.png", "edema", "p", 0, 0, 5, 5), "not one of meta.json's labels"),
    (("images/a.png", "opacity", "", 0, 0, 5, 5), "must not be empty"),
])
def test_reader_refuses_bad_rows_saying_which(tmp_path, row, message):
    make_set(tmp_path, {"images/a.png": dark()}, [row])
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_grounding_set(tmp_path)


def test_reader_refuses_bad_sets(tmp_path):
    with pytest.raises(FileNotFoundError, match="prep ms-cxr"):
        read_grounding_set(tmp_path)
    make_set(tmp_path, {"images/a.png": dark()}, [("images/a.png", "opacity", "p", 0, 0, 5, 5),
                                                   ("images/a.png", "effusion", "p", 0, 0, 5, 5)])
    with pytest.raises(ValueError, match="row 3: phrase 'p' of images/a.png is both 'opacity' and 'effusion'"):
        read_grounding_set(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "x"}))
    with pytest.raises(ValueError, match="format None is not 'tier-openclip-eval/1'"):
        read_grounding_set(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps(grounding_meta("x", [], 64)))
    (tmp_path / "boxes.csv").write_text("image,phrase,x0,y0,x1,y1\n")
    with pytest.raises(ValueError, match="no column.*finding"):
        read_grounding_set(tmp_path)


def test_prior_is_the_mean_box_map_of_training_boxes_or_of_the_other_images(tmp_path):
    rows = [("images/a.png", "opacity", "o", 0, 0, 4, 4), ("images/b.png", "opacity", "o", 2, 2, 6, 6),
            ("images/c.png", "opacity", "o", 4, 0, 8, 8), ("images/c.png", "effusion", "e", 0, 6, 8, 8)]
    images = {name: dark(8, 8) for name in ("images/a.png", "images/b.png", "images/c.png")}
    loo = PriorMaps(read_grounding_set(make_set(tmp_path / "loo", images, rows)))
    box = lambda *b: region_mask([b], 8, 8).astype(float)  # noqa: E731
    assert loo.source == "leave-one-out" and loo.reason is None
    np.testing.assert_array_equal(loo.map("opacity", "images/a.png"), (box(2, 2, 6, 6) + box(4, 0, 8, 8)) / 2)
    np.testing.assert_array_equal(loo.map("opacity", "images/c.png"), (box(0, 0, 4, 4) + box(2, 2, 6, 6)) / 2)
    np.testing.assert_array_equal(loo.map("effusion", "images/c.png"), np.zeros((8, 8)))  # no other image
    prior = [("opacity", 0, 0, 8, 4), ("opacity", 0, 0, 8, 2)]
    train = PriorMaps(read_grounding_set(make_set(tmp_path / "train", images, rows, prior=prior)))
    assert train.source == "train boxes" and train.missing == ["effusion"]
    np.testing.assert_array_equal(train.map("opacity", "images/a.png"), (box(0, 0, 8, 4) + box(0, 0, 8, 2)) / 2)
    # Images of other sizes: each box is scaled from its image to the one it is drawn on.
    mixed_images = {**images, "images/c.png": dark(16, 8)}
    mixed = PriorMaps(read_grounding_set(make_set(tmp_path / "mixed", mixed_images, rows)))
    wide = lambda x0, y0, x1, y1: region_mask([(2 * x0, y0, 2 * x1, y1)], 8, 16).astype(float)  # noqa: E731
    np.testing.assert_array_equal(mixed.map("opacity", "images/c.png"), (wide(0, 0, 4, 4) + wide(2, 2, 6, 6)) / 2)
    np.testing.assert_array_equal(mixed.map("opacity", "images/a.png"), (box(2, 2, 6, 6) + box(2, 0, 4, 8)) / 2)
    no_frame = PriorMaps(read_grounding_set(make_set(tmp_path / "mixed-train", mixed_images, rows, prior=prior)))
    assert no_frame.reason == "prior_boxes.csv needs meta.json's image_size when the images differ in size"


def test_location_words_are_the_phrases_words_that_say_where():
    from tier_openclip.evaluation.grounding.baselines import location_words

    assert location_words("Small LEFT pleural effusion") == ("left",)
    assert location_words("opacity in the right upper zone") == ("right", "upper")
    assert location_words("5.5 cm bulla in the left middle zone") == ("left", "middle")
    assert location_words("cardiomegaly") == () and location_words("leftover lefts") == ()


def test_located_prior_reads_the_phrases_location_words_and_falls_back_to_the_finding(tmp_path):
    """The located prior: the mean map of the same finding's boxes named with the same location
    words (other images only, or training boxes with their phrases); without location words, or
    with words no other box has, the finding's prior."""
    rows = [("images/a.png", "effusion", "left pleural effusion", 0, 4, 4, 8),
            ("images/b.png", "effusion", "small left pleural effusion", 0, 5, 3, 8),
            ("images/c.png", "effusion", "right pleural effusion", 4, 4, 8, 8),
            ("images/d.png", "effusion", "pleural effusion", 4, 6, 8, 8),
            ("images/d.png", "opacity", "bilateral opacity", 0, 0, 8, 2)]
    images = {f"images/{n}.png": dark(8, 8) for n in "abcd"}
    box = lambda *b: region_mask([b], 8, 8).astype(float)  # noqa: E731
    gset = read_grounding_set(make_set(tmp_path / "loo", images, rows))
    located, plain = PriorMaps(gset, located=True), PriorMaps(gset)
    np.testing.assert_array_equal(located.map("effusion", "images/a.png", "left pleural effusion"), box(0, 5, 3, 8))
    everything_else = (box(0, 5, 3, 8) + box(4, 4, 8, 8) + box(4, 6, 8, 8)) / 3
    np.testing.assert_array_equal(plain.map("effusion", "images/a.png", "left pleural effusion"), everything_else)
    # no location words: the finding's prior; "right" on c only: nothing left but the finding's
    np.testing.assert_array_equal(located.map("effusion", "images/a.png", "pleural effusion"), everything_else)
    np.testing.assert_array_equal(located.map("effusion", "images/c.png", "right pleural effusion"),
                                  (box(0, 4, 4, 8) + box(0, 5, 3, 8) + box(4, 6, 8, 8)) / 3)
    np.testing.assert_array_equal(located.map("opacity", "images/d.png", "bilateral opacity"), np.zeros((8, 8)))
    # training boxes with their phrases
    prior = [("effusion", 0, 4, 4, 8, "left pleural effusion"), ("effusion", 4, 4, 8, 8, "Right pleural effusion"),
             ("effusion", 4, 5, 8, 8, "moderate right pleural effusion")]
    trained = read_grounding_set(make_set(tmp_path / "train", images, rows, prior=prior))
    assert trained.prior_phrases == {"effusion": ["left pleural effusion", "Right pleural effusion",
                                                  "moderate right pleural effusion"]}
    located = PriorMaps(trained, located=True)
    np.testing.assert_array_equal(located.map("effusion", "images/a.png", "right pleural effusion"),
                                  (box(4, 4, 8, 8) + box(4, 5, 8, 8)) / 2)
    np.testing.assert_array_equal(located.map("effusion", "images/a.png", "pleural effusion"),
                                  (box(0, 4, 4, 8) + box(4, 4, 8, 8) + box(4, 5, 8, 8)) / 3)
    unnamed = read_grounding_set(make_set(tmp_path / "unnamed", images, rows, prior=[p[:5] for p in prior]))
    assert PriorMaps(unnamed, located=True).reason == "prior_boxes.csv has no phrase column"
    assert PriorMaps(unnamed).reason is None and unnamed.prior_phrases is None


def test_bootstrap_intervals_are_seeded_percentiles_of_resampled_means():
    values = np.array([[0.0], [1.0]])
    assert grounding.bootstrap_means(values, 2000, seed=0) == [[0.0, 1.0]]  # means 0, ½, 1 w.p. ¼, ½, ¼
    rng = np.random.default_rng(3)
    values = rng.random((30, 3))
    first, again, other = (grounding.bootstrap_means(values, 300, seed=s) for s in (5, 5, 6))
    assert first == again and first != other
    for (low, high), mean in zip(first, values.mean(axis=0)):
        assert low < mean < high
    assert grounding.bootstrap_means(values, 0, seed=0) == [None, None, None]


# --- a model whose maps are known -------------------------------------------------------------------


class BrightnessModel(torch.nn.Module):
    """Its patch tokens say how bright the patch is and every phrase token says "bright":
    the map of any phrase is the patch brightness (through a monotone function)."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Linear(1, 1)


def brightness_features(model, images=None, texts=None, normalize=True):
    out = dict.fromkeys(("image_features", "image_tokens", "text_features", "text_tokens", "text_mask"))
    if images is not None:
        brightness = F.avg_pool2d(images.mean(dim=1, keepdim=True), 8).flatten(1)  # (N, 64) on an 8x8 grid
        out["image_tokens"] = F.normalize(torch.stack([brightness, torch.ones_like(brightness)], dim=-1), dim=-1)
    if texts is not None:
        n = texts.shape[0]
        out["text_tokens"] = torch.tensor([1.0, 0.0]).expand(n, 3, 2)
        out["text_mask"] = torch.tensor([True, True, False]).expand(n, 3)
        out["text_features"] = torch.tensor([1.0, 0.0]).expand(n, 2)
    return out


def bright(width, height, *boxes):
    array = np.full((height, width), 20, np.uint8)
    for x0, y0, x1, y1 in boxes:
        array[y0:y1, x0:x1] = 230
    return array


@pytest.fixture
def bright_set(tmp_path) -> Path:
    """Bright rectangles where the boxes say, on 64x64 images and a 96x64 one (centre-cropped)."""
    boxes = {"images/0.png": (8, 8, 24, 24), "images/1.png": (40, 8, 56, 24), "images/2.png": (8, 40, 24, 56),
             "images/3.png": (40, 40, 56, 56), "images/4.png": (24, 24, 40, 40)}
    images = {name: bright(64, 64, box) for name, box in boxes.items()}
    images["images/wide.png"] = bright(96, 64, (56, 8, 72, 24))
    boxes["images/wide.png"] = (56, 8, 72, 24)
    rows = [(name, "opacity" if i % 2 else "effusion", f"{'left ' if i < 2 else ''}phrase {i}", *box)
            for i, (name, box) in enumerate(boxes.items())]
    return make_set(tmp_path / "bright", images, rows)


def test_a_model_that_sees_the_findings_points_at_them_and_beats_the_baselines(bright_set, monkeypatch):
    from open_clip.transform import image_transform

    monkeypatch.setattr("tier_openclip.features.token_features", brightness_features)
    preprocess = image_transform(64, is_train=False)
    results = grounding.grounding_evaluate(BrightnessModel(), preprocess, lambda texts: torch.zeros(len(texts), 3),
                                           bright_set, bootstrap=50, random_draws=4)
    assert (results["num_phrases"], results["num_images"], results["grid"]) == (6, 6, [8, 8])
    assert results["overall"]["pointing_game"]["value"] == 1.0
    assert results["overall"]["miou"]["value"] > 0.5
    assert results["overall"]["cnr"]["value"] > 2.0
    random, prior, located = (results["baselines"][name] for name in ("random", "prior", "located_prior"))
    assert prior["source"] == located["source"] == "leave-one-out" and "reason" not in prior
    for metric in ("cnr", "pointing_game", "miou"):
        assert results["overall"][metric]["value"] > max(random[metric], prior[metric], located[metric])
    assert random["pointing_game"] == pytest.approx(4 / 64)  # a 16-px box holds 2x2 of the 64 patch centres
    assert set(results["per_finding"]) == {"opacity", "effusion"} and results["per_finding"]["opacity"]["phrases"] == 3
    assert [p["pointing_game"] for p in results["phrases"]] == [1.0] * 6
    table = grounding.grounding_markdown(results)
    assert "| **Overall** | 6 | " in table and "leave-one-image-out" in table and "Random patch" in table
    assert "| Located prior (mean box map of the finding's boxes named with the phrase's location words" in table
    split = results["by_location_words"]
    named = [p for p in results["phrases"] if grounding.location_words(p["phrase"])]
    assert split["with"]["phrases"] == len(named) and split["with"]["phrases"] + split["without"]["phrases"] == 6
    assert split["with"]["pointing_game"]["value"] == 1.0 and set(split["without"]["baselines"]) == {
        "random", "prior", "located_prior"}
    assert "| without location words |" in table


def test_maps_of_a_real_model_are_its_token_patch_similarities_upsampled(tmp_path):
    """TIER-tiny: each phrase's numbers equal the metrics of maps built by hand from
    token_features, with F.interpolate (and the crop of a wide image) done separately."""
    from tier_openclip.features import token_features
    from tier_openclip.models import load_model

    torch.manual_seed(0)
    tiny = load_model("TIER-tiny")
    rng = np.random.default_rng(2)
    images = {"images/a.png": (rng.random((64, 64)) * 255).astype(np.uint8),
              "images/wide.png": (rng.random((64, 96)) * 255).astype(np.uint8)}
    rows = [("images/a.png", "opacity", "right upper zone opacity", 4, 4, 30, 28),
            ("images/a.png", "effusion", "small left pleural effusion", 30, 40, 64, 64),
            ("images/wide.png", "opacity", "right upper zone opacity", 20, 10, 60, 40)]
    directory = make_set(tmp_path / "real", images, rows)
    for mode in ("tokens", "pooled", "cam"):
        results = grounding.grounding_evaluate(tiny.model, tiny.preprocess, tiny.tokenizer, directory,
                                               phrase_mode=mode, bootstrap=0, random_draws=2)
        assert results["phrase_mode"] == mode and results["overall"]["cnr"]["ci"] is None
        with torch.no_grad():
            for row, got in zip(rows, results["phrases"]):
                image = Image.open(directory / row[0]).convert("RGB")
                pixels = tiny.preprocess(image)[None]
                patches = token_features(tiny.model, images=pixels)["image_tokens"][0]
                text = token_features(tiny.model, texts=tiny.tokenizer([row[2]]))
                if mode == "tokens":
                    sims = (patches @ text["text_tokens"][0][text["text_mask"][0]].T).mean(dim=1)
                elif mode == "pooled":
                    sims = patches @ text["text_features"][0]
                else:  # the patches before their normalisation
                    raw = token_features(tiny.model, images=pixels, normalize=False)["image_tokens"][0]
                    sims = raw @ text["text_features"][0]
                grid = interpolate(sims.reshape(8, 8).double().numpy(), (64, 64))
                expected = np.full((image.height, image.width), np.nan)
                left = (image.width - 64) // 2
                expected[:, left:left + 64] = grid
                region = loop_region([row[3:]], image.height, image.width)
                assert got["cnr"] == pytest.approx(loop_cnr(expected, region), rel=1e-4)
                assert got["pointing_game"] == loop_pointing(expected, region)
                assert got["miou"] == pytest.approx(loop_miou(expected, region), abs=1e-6)
    assert results["per_finding"]["opacity"]["phrases"] == 2
    assert results["overall"]["miou"]["value"] == pytest.approx(np.mean([p["miou"] for p in results["phrases"]]))


@pytest.mark.parametrize("name", ["TIER-tiny", "TIER-tiny-ResNet"])
def test_cam_maps_are_the_parts_of_the_image_phrase_similarity_of_a_mean_pooled_tower(name):
    """For a tower whose image feature is the mean of its projected patches, the mean of a phrase's
    CAM over the patches, divided by the unnormalised image feature's length, is the image–phrase
    cosine that CLIP's loss and zero-shot scores use."""
    from tier_openclip.features import token_features
    from tier_openclip.models import load_model

    torch.manual_seed(0)
    loaded = load_model(name)
    pixels = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        raw = token_features(loaded.model, images=pixels, normalize=False)
        unit = token_features(loaded.model, images=pixels)
        text = token_features(loaded.model, texts=loaded.tokenizer(["left pleural effusion", "cardiomegaly"]))
    cams = raw["image_tokens"] @ text["text_features"].T  # (images, patches, phrases)
    score = cams.mean(dim=1) / raw["image_features"].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(score, unit["image_features"] @ text["text_features"].T, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cams, unit["image_tokens"] @ text["text_features"].T)  # not the cosine map


# --- command line and training -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from tier_openclip.models import load_model

    torch.manual_seed(0)
    return save_training_checkpoint(load_model("TIER-tiny").model, tmp_path_factory.mktemp("ckpt") / "epoch_1.pt")


def test_cli_writes_json_and_markdown_with_the_apis_numbers(bright_set, tiny_checkpoint, tmp_path, capsys):
    from tier_openclip.commands.cli import main
    from tier_openclip.models import load_model

    out = tmp_path / "eval" / "results.json"
    code = main(["eval", "grounding", "--model", "TIER-tiny", "--pretrained", str(tiny_checkpoint), "--data",
                 str(bright_set), "--out", str(out), "--bootstrap", "30", "--seed", "4", "--workers", "0",
                 "--device", "cpu", "--quiet", "--phrase-mode", "pooled"])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads(out.read_text())
    table = out.with_suffix(".md").read_text()
    assert table in printed and table == grounding.grounding_markdown(results)
    assert (results["model"], results["pretrained"], results["bootstrap"], results["phrase_mode"]) == (
        "TIER-tiny", str(tiny_checkpoint), 30, "pooled")
    loaded = load_model("TIER-tiny", str(tiny_checkpoint))
    api = grounding.grounding_evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, bright_set,
                                       phrase_mode="pooled", bootstrap=30, seed=4)
    for key in ("overall", "per_finding", "baselines", "phrases"):
        assert results[key] == json.loads(json.dumps(api[key]))


def hook_args(tmp_path: Path, directory: Path, **overrides) -> SimpleNamespace:
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    args = dict(rank=0, zeroshot_frequency=2, epochs=3, model="TIER-tiny", device="cpu", batch_size=8, workers=0,
                save_logs=True, checkpoint_path=str(tmp_path / "checkpoints"), wandb=False, tier_grounding=str(directory))
    return SimpleNamespace(**{**args, **overrides})


def test_training_hook_runs_on_schedule_and_logs_like_open_clip(bright_set, tmp_path, monkeypatch):
    from tier_openclip.models import load_model

    wandb = Recorder()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    torch.manual_seed(0)
    tiny = load_model("TIER-tiny")
    model, tb = tiny.model.train(), Recorder()
    args = hook_args(tmp_path, bright_set, wandb=True)
    assert grounding.grounding_during_training(model, 1, args, tb) == {}  # 1 % 2
    metrics = grounding.grounding_during_training(model, 2, args, tb)
    assert model.training  # put back in train mode
    assert grounding.grounding_during_training(model, 3, args, None)  # the last epoch always
    expected = grounding.grounding_evaluate(model.eval(), tiny.preprocess, tiny.tokenizer, bright_set, bootstrap=0)
    assert metrics == grounding.training_metrics(expected, "test")
    assert metrics["test-grounding-pointing-game"] == expected["overall"]["pointing_game"]["value"]
    assert metrics["test-grounding-cnr-opacity"] == expected["per_finding"]["opacity"]["cnr"]["value"]
    assert metrics["test-grounding-prior-miou"] == expected["baselines"]["prior"]["miou"]
    lines = [json.loads(line) for line in (tmp_path / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [2, 3] and lines[0] == {"epoch": 2, **metrics}
    assert ("val/test-grounding-miou", metrics["test-grounding-miou"], 2) in tb.calls and len(tb.calls) == len(metrics)
    assert wandb.calls[0] == {**{f"val/{k}": v for k, v in metrics.items()}, "epoch": 2}
    for overrides in ({"rank": 1}, {"zeroshot_frequency": 0}, {"tier_grounding": None}):
        assert grounding.grounding_during_training(model, 2, hook_args(tmp_path, bright_set, **overrides)) == {}


def test_a_failing_evaluation_is_logged_and_does_not_stop_training(bright_set, tmp_path, caplog):
    from tier_openclip.models import load_model

    model = load_model("TIER-tiny").model.train()
    (bright_set / "images" / "3.png").unlink()  # vanished mid-run
    with caplog.at_level("ERROR"):
        assert grounding.grounding_during_training(model, 2, hook_args(tmp_path, bright_set)) == {}
    assert "Grounding evaluation on --tier-grounding" in caplog.text and "3.png does not exist" in caplog.text
    assert model.training and not (tmp_path / "checkpoints" / "results.jsonl").exists()
    assert "does not exist" in grounding.check_training_dir(str(bright_set))  # refused at start-up
    assert grounding.check_training_dir(None) is None


def test_plugin_flag_reaches_the_hook_after_each_epoch(bright_set, monkeypatch):
    from tier_openclip.training import plugin

    parsed, _ = plugin.build_plugin_parser().parse_known_args(["--tier-grounding", str(bright_set)])
    assert parsed.tier_grounding == str(bright_set)
    calls = []
    monkeypatch.setattr(grounding, "grounding_during_training", lambda *a: calls.append(a[1]) or {})
    wrapped = plugin.wrap_train_one_epoch(lambda *a, **k: "trained")
    args = SimpleNamespace(tier_grounding=str(bright_set))
    assert wrapped("model", {}, None, 4, None, None, None, None, args) == "trained"
    assert calls == [5]
    assert grounding.check_training_dir(str(bright_set)) is None


def test_an_image_the_loader_cannot_read_is_one_message(bright_set, monkeypatch):
    from open_clip.transform import image_transform

    from tier_openclip.evaluation.image_files import ImageFiles

    monkeypatch.setattr("tier_openclip.features.token_features", brightness_features)
    real = ImageFiles.__getitem__
    bad = bright_set / "images" / "3.png"

    def broken_on_loading(self, i):  # readable when the set was read, broken by the time it is loaded
        if self.paths[i] == bad:
            bad.write_text("not an image")
        return real(self, i)

    monkeypatch.setattr(ImageFiles, "__getitem__", broken_on_loading)
    with pytest.raises(ValueError, match=r"3\.png is not a readable image \(UnidentifiedImageError"):
        grounding.grounding_evaluate(BrightnessModel(), image_transform(64, is_train=False),
                                     lambda texts: torch.zeros(len(texts), 3), bright_set, bootstrap=0, random_draws=1)

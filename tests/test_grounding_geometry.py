"""The patch-grid geometry (tier_openclip.evaluation.grounding.geometry) against its specifications: patch
centres worked out by hand in every resize mode, the upsampling against F.interpolate and
open_clip's transforms, box membership and the pointing game's rule against loops; then each
command that draws or scores a patch map through it (analyze, heatmap, the demo's figures, the
phantom's image-free prior)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import interpolate, loop_region
from tier_openclip import phantom
from tier_openclip.evaluation import grounding
from tier_openclip.evaluation.grounding import (
    MapGeometry, chance_pointing, grid_shape, patch_pointing, phrase_maps, pointing_share, points_in_boxes,
    region_mask, upsample_maps,
)

# --- where the grid lies ---------------------------------------------------------------------------


def shortest_side_centres(grid, input_size, image_size):
    """Patch centres, one by one, under open_clip's default transform (resize the shorter side to
    the input, crop the centre): the formula analyze.py had for itself."""
    (rows, cols), (input_h, input_w), (width, height) = grid, input_size, image_size
    scale = min(width / input_w, height / input_h)
    offset_x, offset_y = (width - input_w * scale) / 2, (height - input_h * scale) / 2
    return np.array([[(c + 0.5) * input_w / cols * scale + offset_x, (r + 0.5) * input_h / rows * scale + offset_y]
                     for r in range(rows) for c in range(cols)])


def test_patch_centres_undo_resize_and_centre_crop():
    # a 128×64 (w×h) image shown to a 32×32 model: scaled by 2, 32 px cropped off each side
    centres = MapGeometry((2, 2), (32, 32), (128, 64)).patch_centres()
    np.testing.assert_allclose(centres, [[48, 16], [80, 16], [48, 48], [80, 48]])
    # the grid of a square input (analyze and heatmap had their own square_grid for it)
    assert grid_shape(49, (224, 224)) == (7, 7)
    with pytest.raises(ValueError, match="do not tile"):
        grid_shape(50, (224, 224))


def test_patch_centres_in_every_resize_mode_and_the_chance_of_a_random_patch():
    for image_size in ((64, 64), (96, 64), (50, 130)):
        geometry = MapGeometry((8, 8), (64, 64), image_size)
        np.testing.assert_allclose(geometry.patch_centres(), shortest_side_centres((8, 8), (64, 64), image_size))
    # 'squash' stretches each axis: a 128×32 image under a 32×32 input, x by 4 and y by 1
    squash = MapGeometry((2, 2), (32, 32), (128, 32), "squash").patch_centres()
    np.testing.assert_allclose(squash, [[32, 8], [96, 8], [32, 24], [96, 24]])
    # 'longest' pads: a 64×32 image fills a 32×32 input at half size, centred, 16 rows of padding
    longest = MapGeometry((2, 2), (32, 32), (64, 32), "longest").patch_centres()
    np.testing.assert_allclose(longest, [[16, 0], [48, 0], [16, 32], [48, 32]])
    region = np.zeros((64, 64), bool)
    region[:, :32] = True
    assert chance_pointing(region, MapGeometry((8, 8), (64, 64), (64, 64))) == 0.5
    region[:, 28:32] = False  # patch centres at 4, 12, 20, 28: the fourth column of patches leaves
    assert chance_pointing(region, MapGeometry((8, 8), (64, 64), (64, 64))) == 3 / 8


def test_resize_mode_is_read_from_open_clips_transform():
    from open_clip.transform import image_transform

    for mode in ("shortest", "longest", "squash"):
        assert grounding.resize_mode_of(image_transform(64, is_train=False, resize_mode=mode)) == mode
    assert grounding.resize_mode_of(lambda image: image) == "shortest"
    assert grounding.grid_shape(64, (64, 64)) == (8, 8) and grounding.grid_shape(32, (32, 64)) == (4, 8)
    with pytest.raises(ValueError, match="do not tile"):
        grounding.grid_shape(63, (64, 64))
    geometry = grounding.model_geometry(32, (32, 64), (128, 64), image_transform(64, is_train=False, resize_mode="squash"))
    assert geometry == MapGeometry((4, 8), (32, 64), (128, 64), "squash")


# --- upsampling ------------------------------------------------------------------------------------


def test_upsampling_is_bilinear_interpolation_and_undoes_the_centre_crop():
    grid = np.random.default_rng(1).normal(size=(8, 8))
    same = upsample_maps(grid, MapGeometry((8, 8), (64, 64), (64, 64)))
    np.testing.assert_allclose(same, interpolate(grid, (64, 64)), atol=1e-12)
    double = upsample_maps(grid, MapGeometry((8, 8), (64, 64), (128, 128)))
    np.testing.assert_allclose(double, interpolate(grid, (128, 128)), atol=1e-12)
    # A 96 x 64 image: resized by 1 and centre-cropped to columns 16..80; the rest the model never saw.
    wide = upsample_maps(grid, MapGeometry((8, 8), (64, 64), (96, 64)))
    np.testing.assert_allclose(wide[:, 16:80], interpolate(grid, (64, 64)), atol=1e-12)
    assert np.isnan(wide[:, :16]).all() and np.isnan(wide[:, 80:]).all()
    # 'squash' stretches each axis; 'longest' pads, so the stored image is a window of the input.
    squash = upsample_maps(grid, MapGeometry((8, 8), (64, 64), (96, 32), "squash"))
    np.testing.assert_allclose(squash, interpolate(grid, (32, 96)), atol=1e-12)
    longest = upsample_maps(grid, MapGeometry((8, 8), (64, 64), (64, 32), "longest"))
    np.testing.assert_allclose(longest, interpolate(grid, (64, 64))[16:48], atol=1e-12)
    batch = upsample_maps(np.stack([grid, -grid]), MapGeometry((8, 8), (64, 64), (96, 64)))
    np.testing.assert_allclose(batch[1], -wide, atol=1e-12)


def test_phrase_maps_are_the_mean_dot_product_of_each_phrase_upsampled():
    """What the evaluator scores and the demo draws: per phrase, the mean over its embeddings of
    their dot products with each patch, on the stored image."""
    rng = np.random.default_rng(3)
    patches = torch.tensor(rng.normal(size=(16, 5)))
    embeddings = [torch.tensor(rng.normal(size=(n, 5))) for n in (3, 1, 2)]
    geometry = MapGeometry((4, 4), (32, 32), (48, 32))  # 8 stored columns cropped off each side
    maps = phrase_maps(patches, embeddings, geometry)
    assert maps.shape == (3, 32, 48)
    for got, embedding in zip(maps, embeddings):
        grid = np.array([[np.mean([float(patches[4 * r + c] @ e) for e in embedding]) for c in range(4)]
                         for r in range(4)])
        np.testing.assert_allclose(got[:, 8:40], interpolate(grid, (32, 32)), atol=1e-12)
        assert np.isnan(got[:, :8]).all() and np.isnan(got[:, 40:]).all()


# --- box membership and the pointing game ----------------------------------------------------------


def test_region_pixels_are_those_whose_centres_lie_in_a_half_open_box():
    mask = region_mask([(1.5, 0, 3.5, 1.49)], 3, 5)
    assert mask.tolist() == [[False, True, True, False, False], [False] * 5, [False] * 5]
    assert region_mask([(10, 10, 20, 20)], 8, 8).sum() == 0  # outside: clipped
    assert region_mask([(2, 2, 5, 4), (4, 3, 7, 6)], 8, 8).sum() == 6 + 9 - 1  # union, overlap once
    assert not grounding.box_covers_pixels((1.6, 0, 2.4, 3), 8, 8) and grounding.box_covers_pixels((1.4, 0, 2, 3), 8, 8)


def test_points_are_in_half_open_boxes_the_way_pixels_are_in_regions():
    box = (2, 3, 6, 7)
    points = [(2, 3), (5.99, 6.99), (6, 5), (4, 7), (1.99, 5), (4, 2.99)]
    assert points_in_boxes(points, [box]).tolist() == [True, True, False, False, False, False]
    assert points_in_boxes(points, []).tolist() == [False] * 6
    assert points_in_boxes([(6, 5)], [box, (6, 0, 8, 8)]).tolist() == [True]  # union: the edge is the next box's
    rng = np.random.default_rng(4)
    for _ in range(20):  # a pixel's membership is its centre's: region_mask and points_in_boxes agree
        height, width = rng.integers(3, 12, size=2)
        boxes = []
        for _ in range(rng.integers(1, 3)):
            x0, y0 = rng.uniform(-1, width), rng.uniform(-1, height)
            boxes.append((x0, y0, x0 + rng.uniform(0.3, 6), y0 + rng.uniform(0.3, 6)))
        rows, cols = np.mgrid[0:height, 0:width]
        centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
        expected = loop_region(boxes, height, width)
        np.testing.assert_array_equal(points_in_boxes(centres, boxes).reshape(height, width), expected)
        np.testing.assert_array_equal(region_mask(boxes, height, width), expected)


def test_the_pointing_rule_shares_a_hit_between_tied_maxima():
    assert pointing_share([0.1, 0.9, 0.3], [False, True, False]) == 1.0
    assert pointing_share([0.1, 0.9, 0.3], [True, False, True]) == 0.0
    assert pointing_share([1, 1, 0, 1], [True, False, True, False]) == pytest.approx(1 / 3)
    assert pointing_share([], []) == 0.0
    rng = np.random.default_rng(5)
    for _ in range(20):
        scores, inside = np.round(rng.normal(size=12)), rng.random(12) < 0.4
        top = [i for i, s in enumerate(scores) if s == max(scores)]
        assert pointing_share(scores, inside) == pytest.approx(sum(inside[i] for i in top) / len(top))
    centres = MapGeometry((2, 2), (32, 32), (32, 32)).patch_centres()  # (8, 8), (24, 8), (8, 24), (24, 24)
    assert patch_pointing([0, 5, 0, 5], centres, [(16, 0, 32, 16)]) == 0.5  # two top patches, one inside
    assert patch_pointing([0, 5, 0, 0], centres, [(0, 0, 24, 16)]) == 0.0  # its centre on the right edge: out


def test_prior_pointing_on_hand_made_boxes():
    train = [("a", (0, 0, 16, 16)), ("a", (8, 8, 24, 24)), ("b", (48, 48, 64, 64))]
    # grid 8 over 64 px: patch centres at 4, 12, ...; the 4 centres of (8..16)^2 are covered twice.
    test = [("a", (8, 8, 16, 16)), ("a", (0, 0, 12, 12)), ("a", (32, 32, 40, 40)), ("b", (56, 56, 64, 64)),
            ("c", (0, 0, 64, 64))]
    result = phantom.prior_pointing(train, test, image_size=64)
    # a's most covered patch is the one centred at (12, 12): hit, miss (12 is outside 0..12), miss;
    # b's four patches tie: the box (56..64)^2 holds one of them; c has no prior: a miss.
    assert result["per_finding"] == {"a": pytest.approx(1 / 3), "b": 0.25, "c": 0.0}
    assert result["overall"] == pytest.approx((1 + 0 + 0 + 0.25 + 0) / 5)
    assert result["boxes"] == 5 and result["grid"] == 8


# --- the commands that draw or score patch maps ----------------------------------------------------

# Each phrase's embedding is the one-hot of one patch of a 4x4 grid: its most similar patch.
BEST_PATCH = {"a": 0, "b": 5, "c": 15}


def one_hot_features(model, images=None, texts=None, normalize=True):
    """token_features of a model whose patch p is the p-th unit vector and whose phrase ids are
    the one-hot of their BEST_PATCH (the tokenizer below gives that patch's index)."""
    out = {}
    if images is not None:
        out["image_tokens"] = torch.eye(16).expand(images.shape[0], 16, 16)
    if texts is not None:
        out["text_features"] = torch.nn.functional.one_hot(texts, 16).float()
    return out


@pytest.mark.parametrize("mode, centres", [
    # a 64×32 image under a 32×32 input, patches 8 px: centres of patches 0, 5 and 15
    ("shortest", {"a": (20, 4), "b": (28, 12), "c": (44, 28)}),  # scale 1, 16 columns cropped each side
    ("longest", {"a": (8, -8), "b": (24, 8), "c": (56, 40)}),  # scale 2, 16 input rows of padding each side
    ("squash", {"a": (8, 4), "b": (24, 12), "c": (56, 28)}),  # x by 2, y by 1
])
def test_analyze_points_through_every_resize_mode_with_half_open_boxes(tmp_path, monkeypatch, mode, centres):
    """analyze's pointing game: the centre of the phrase's most similar patch, through the model's
    own resize mode (it knew only 'shortest'), in half-open boxes (it had closed ones)."""
    from open_clip.transform import image_transform

    from tier_openclip.evaluation.analyze import BoxRow, pointing_game

    monkeypatch.setattr("tier_openclip.features.token_features", one_hot_features)
    Image.new("RGB", (64, 32)).save(tmp_path / "x.png")
    loaded = SimpleNamespace(model=None, preprocess=image_transform(32, is_train=False, resize_mode=mode),
                             tokenizer=lambda phrases: torch.tensor([BEST_PATCH[p] for p in phrases]))
    boxes = [("a", (0, 0, 20, 10)), ("a", (20, 4, 21, 5)), ("b", (0, 0, 64, 12)), ("c", (40, 20, 64, 32))]
    result = pointing_game(loaded, [BoxRow(tmp_path / "x.png", phrase, box) for phrase, box in boxes])
    hits = {}
    for phrase, (x0, y0, x1, y1) in boxes:
        x, y = centres[phrase]
        hits.setdefault(phrase, []).append(float(x0 <= x < x1 and y0 <= y < y1))
    assert {p: v["accuracy"] for p, v in result["per_phrase"].items()} == {p: np.mean(h) for p, h in hits.items()}
    assert result["accuracy"] == np.mean([h for v in hits.values() for h in v]) and result["boxes"] == 4
    if mode == "shortest":  # a box whose right or bottom edge holds the centre misses; its left or top edge hits
        assert {p: v["accuracy"] for p, v in result["per_phrase"].items()} == {"a": 0.5, "b": 0.0, "c": 1.0}


def test_heatmap_draws_a_model_whose_input_is_not_square(monkeypatch):
    """A 32×64 input makes a 4×8 grid (heatmap refused every grid but a square one)."""
    from open_clip.transform import image_transform

    from tier_openclip.evaluation.heatmap import over_stored_image, similarity_maps

    grid = np.random.default_rng(6).normal(size=(4, 8))

    def features(model, images=None, texts=None, normalize=True):
        if images is not None:
            return {"image_tokens": torch.tensor(grid, dtype=torch.float32).reshape(1, 32, 1)}
        return {"text_features": torch.ones(texts.shape[0], 1)}

    monkeypatch.setattr("tier_openclip.features.token_features", features)
    preprocess = image_transform((32, 64), is_train=False)
    loaded = SimpleNamespace(model=None, preprocess=preprocess, tokenizer=lambda texts: torch.zeros(len(texts), 1))
    image = Image.new("RGB", (64, 32))
    pixels, maps = similarity_maps(loaded, image, prompts=["opacity"])
    assert pixels.shape == (32, 64, 3) and maps[0].grid.shape == (4, 8)
    np.testing.assert_allclose(maps[0].values, interpolate(grid, (32, 64)), rtol=1e-6, atol=1e-6)
    _, framed = over_stored_image(image, maps, preprocess, pixels.shape[:2])
    np.testing.assert_allclose(framed[0].values, maps[0].values, rtol=1e-6, atol=1e-6)  # stored = input here

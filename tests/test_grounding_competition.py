"""The own-lesion rate: the metric against a loop-by-loop definition on hand-made maps, its
chance, who competes with whom, and the evaluator's summary (with findings left out of it)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_grounding import BrightnessModel, bright, brightness_features, loop_region, make_set

from tier_openclip.evaluation import grounding
from tier_openclip.evaluation.grounding import competitors, own_lesion, own_lesion_chance, own_lesion_summary


def loop_own_lesion(saliency, own, other):
    """The specification: over the pixels (not NaN) in exactly one of the two regions, the share
    of those holding the maximum that are in ``own``; None if either region has no such pixel."""
    best, hits, ties = -math.inf, 0, 0
    mine = theirs = False
    height, width = saliency.shape
    for r in range(height):
        for c in range(width):
            value, a, b = saliency[r, c], bool(own[r, c]), bool(other[r, c])
            if math.isnan(value) or a == b:  # unseen, in neither region, or in both
                continue
            mine, theirs = mine or a, theirs or b
            if value > best:
                best, hits, ties = value, int(a), 1
            elif value == best:
                hits, ties = hits + int(a), ties + 1
    return hits / ties if mine and theirs else None


def loop_chance(own, other):
    mine = sum(bool(a) and not bool(b) for a, b in zip(own.ravel(), other.ravel()))
    theirs = sum(bool(b) and not bool(a) for a, b in zip(own.ravel(), other.ravel()))
    return mine / (mine + theirs) if mine and theirs else None


def test_own_lesion_equals_its_loop_definition_on_hand_made_maps():
    rng = np.random.default_rng(0)
    checked = defined = 0
    for trial in range(300):
        height, width = int(rng.integers(4, 12)), int(rng.integers(4, 12))
        # Few distinct values, so maxima tie; NaN patches where "the model saw nothing".
        saliency = rng.integers(0, 4 if trial % 2 else 50, (height, width)).astype(np.float64)
        saliency[rng.random((height, width)) < 0.15] = np.nan
        regions = []
        for _ in range(2):
            x0, x1 = sorted(rng.integers(0, width + 1, 2))
            y0, y1 = sorted(rng.integers(0, height + 1, 2))
            regions.append(loop_region([(x0, y0, x1 + 1, y1 + 1)], height, width))
        own, other = regions
        expected = loop_own_lesion(saliency, own, other)
        got = own_lesion(saliency, own, other)
        assert (got is None) == (expected is None), trial
        if expected is not None:
            assert got == pytest.approx(expected, abs=1e-12), trial
            defined += 1
        assert own_lesion_chance(own, other) == (None if loop_chance(own, other) is None
                                                 else pytest.approx(loop_chance(own, other)))
        checked += 1
    assert defined > 100 and checked == 300


def test_own_lesion_on_readable_cases():
    own = np.zeros((8, 8), bool)
    other = np.zeros((8, 8), bool)
    own[1:3, 1:3] = True
    other[5:7, 5:7] = True
    saliency = np.zeros((8, 8))
    saliency[0, 7] = 9.0  # the map's peak is elsewhere: irrelevant here
    saliency[1, 1], saliency[6, 6] = 2.0, 1.0
    assert own_lesion(saliency, own, other) == 1.0 and own_lesion(saliency, other, own) == 0.0
    saliency[6, 6] = 2.0  # one pixel each at the maximum: a tie
    assert own_lesion(saliency, own, other) == 0.5
    assert own_lesion(saliency, own, own) is None  # two identical regions cannot be told apart
    overlap = own.copy()
    overlap[1, 1] = False
    overlap[5:7, 5:7] = True  # shares no exclusive pixel with own once own's pixels are removed
    assert own_lesion(saliency, own, overlap | own) is None
    assert own_lesion_chance(own, other) == 0.5 and own_lesion_chance(own, other, valid=~own) is None


def test_competitors_are_the_other_finding_of_a_two_finding_image():
    assert competitors(["opacity", "bulla"]) == [1, 0]
    assert competitors(["opacity"]) == [None]
    assert competitors(["opacity", "opacity"]) == [None, None]  # the same finding twice: no rival
    assert competitors(["a", "b", "c"]) == [None, None, None]


def test_summary_means_defined_phrases_and_leaves_excluded_findings_out():
    rows = [{"finding": "a", "own_lesion": 1.0, "random": {"own_lesion": 0.5}, "prior": {"own_lesion": 0.0}},
            {"finding": "b", "own_lesion": 0.0, "random": {"own_lesion": 0.25}, "prior": {"own_lesion": 1.0}},
            {"finding": "c", "own_lesion": 1.0, "random": {"own_lesion": 0.5}, "prior": {"own_lesion": 1.0}},
            {"finding": "a", "own_lesion": None, "random": {"own_lesion": None}, "prior": {"own_lesion": None}}]
    summary = own_lesion_summary(rows, ["random", "prior"], bootstrap=50, seed=0, exclude=["c"])
    assert (summary["value"], summary["phrases"], summary["excluded"]) == (0.5, 2, ["c"])
    assert summary["baselines"] == {"random": 0.375, "prior": 0.5}
    assert summary["per_finding"] == {"a": {"value": 1.0, "phrases": 1}, "b": {"value": 0.0, "phrases": 1}}
    assert 0.0 <= summary["ci"][0] <= 0.5 <= summary["ci"][1] <= 1.0
    empty = own_lesion_summary(rows[3:], ["random"], bootstrap=50, seed=0)
    assert (empty["value"], empty["ci"], empty["phrases"], empty["baselines"]) == (None, None, 0, {"random": None})


@pytest.fixture
def pair_set(tmp_path):
    """Two images with two different findings each (one lesion brighter than the other), one
    image with one finding; "effusion" is left out of the summary by meta.json."""
    images = {"images/pair0.png": bright(64, 64, (8, 8, 24, 24)), "images/pair1.png": bright(64, 64, (40, 40, 56, 56)),
              "images/single.png": bright(64, 64, (24, 24, 40, 40))}
    images["images/pair0.png"][40:56, 40:56] = 120  # the effusion, dimmer than the opacity
    images["images/pair1.png"][8:24, 8:24] = 120  # here the opacity is the dimmer one
    rows = [("images/pair0.png", "opacity", "opacity", 8, 8, 24, 24),
            ("images/pair0.png", "effusion", "effusion", 40, 40, 56, 56),
            ("images/pair1.png", "opacity", "opacity", 8, 8, 24, 24),
            ("images/pair1.png", "effusion", "effusion", 40, 40, 56, 56),
            ("images/single.png", "opacity", "opacity", 24, 24, 40, 40)]
    directory = make_set(tmp_path / "pairs", images, rows)
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_text(json.dumps({**meta, "summary_excludes": ["effusion"]}))
    return directory


def test_a_map_of_anything_abnormal_scores_by_brightness_not_by_phrase(pair_set, monkeypatch):
    """The brightness model gives every phrase the same map: in each pair both phrases point at
    the brighter lesion, so the opacity phrase wins in pair0 and loses in pair1."""
    from open_clip.transform import image_transform

    monkeypatch.setattr("tier_openclip.features.token_features", brightness_features)
    run = lambda **kw: grounding.grounding_evaluate(  # noqa: E731
        BrightnessModel(), image_transform(64, is_train=False), lambda texts: torch.zeros(len(texts), 3), pair_set,
        bootstrap=20, random_draws=2, **kw)
    results = run()
    by_image = {(p["image"], p["finding"]): p for p in results["phrases"]}
    assert by_image[("images/pair0.png", "opacity")]["own_lesion"] == 1.0
    assert by_image[("images/pair0.png", "effusion")]["own_lesion"] == 0.0
    assert by_image[("images/pair1.png", "opacity")]["own_lesion"] == 0.0
    assert by_image[("images/pair0.png", "opacity")]["competitor"] == "effusion"
    assert by_image[("images/single.png", "opacity")]["own_lesion"] is None
    own = results["own_lesion"]
    assert (own["value"], own["phrases"], own["excluded"]) == (0.5, 2, ["effusion"])  # opacity phrases only
    assert own["baselines"]["random"] == pytest.approx(0.5)  # two equal boxes
    assert set(own["baselines"]) == {"random", "prior", "located_prior"}
    # effusion is scored per finding but left out of the overall figures.
    assert results["summary_excludes"] == ["effusion"] and results["overall"]["phrases"] == 3
    assert set(results["per_finding"]) == {"opacity", "effusion"}
    assert results["overall"]["pointing_game"]["value"] == pytest.approx(
        np.mean([p["pointing_game"] for p in results["phrases"] if p["finding"] == "opacity"]))
    assert "Own lesion" in grounding.grounding_markdown(results)
    assert grounding.training_metrics(results, "t")["t-grounding-own-lesion"] == 0.5
    everything = run(exclude_findings=[])
    assert everything["overall"]["phrases"] == 5 and everything["own_lesion"]["phrases"] == 4
    assert everything["own_lesion"]["value"] == 0.5

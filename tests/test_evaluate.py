"""Zero-shot evaluation: AUCs and bootstrap CIs against hand-computed cases, prompts, the scoring
pipeline on a model whose answers are known, the CLI, and the per-epoch hook in training."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

import tier_openclip
from helpers import Recorder, save_training_checkpoint, write_shards
from tier_openclip.commands import eval_cli
from tier_openclip.evaluation import zeroshot as evaluate
from tier_openclip.evaluation.bootstrap import auc_report, bootstrap_aucs, resample_counts, weighted_aucs
from tier_openclip.evaluation.prompts import default_prompts, load_prompt_file, resolve_prompts

NAN = math.nan
CHEXPERT_LABELS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]
COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def write_eval_set(directory: Path, labels: list[str], targets, pixels: list[np.ndarray], dataset="chexpert") -> Path:
    """An evaluation set in the format `tier-openclip prep` writes: images, labels.csv, meta.json."""
    directory.mkdir(parents=True)
    (directory / "images").mkdir()
    lines = ["image," + ",".join(f'"{label}"' for label in labels)]
    for i, (row, image) in enumerate(zip(targets, pixels)):
        Image.fromarray(image).save(directory / "images" / f"{i:03d}.png")
        lines.append(f"images/{i:03d}.png," + ",".join("" if math.isnan(v) else str(int(v)) for v in row))
    (directory / "labels.csv").write_text("\n".join(lines) + "\n")
    meta = {"dataset": dataset, "labels": labels, "counts": {}}
    if dataset == "chexpert":
        meta["competition_labels"] = COMPETITION
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


@pytest.fixture(scope="module")
def chexpert_set(tmp_path_factory) -> Path:
    """24 noise images with all 14 CheXpert labels; Fracture has no positives, some labels are blank."""
    rng = np.random.default_rng(1)
    targets = (rng.random((24, len(CHEXPERT_LABELS))) < 0.4).astype(float)
    targets[rng.random(targets.shape) < 0.15] = NAN
    targets[:, CHEXPERT_LABELS.index("Fracture")] = 0
    targets[:4, :] = [1, 0] * 7  # both classes for every other label
    targets[4:8, :] = [0, 1] * 7
    targets[:8, CHEXPERT_LABELS.index("Fracture")] = 0
    pixels = [(rng.random((64, 64)) * 255).astype(np.uint8) for _ in range(24)]
    return write_eval_set(tmp_path_factory.mktemp("sets") / "chexpert", CHEXPERT_LABELS, targets, pixels)


@pytest.fixture(scope="module")
def tiny():
    """TIER-tiny with fixed random weights, and a training checkpoint of them (as open_clip_train saves it)."""
    from tier_openclip.models import load_model

    torch.manual_seed(0)
    return load_model("TIER-tiny")


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny, tmp_path_factory) -> Path:
    return save_training_checkpoint(tiny.model, tmp_path_factory.mktemp("ckpt") / "epoch_3.pt", epoch=3)


# --- AUC and bootstrap ---------------------------------------------------------------------------


def test_auc_of_a_hand_computed_case():
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered correctly.
    report = auc_report([[0.1], [0.4], [0.35], [0.8]], [[0], [0], [1], [1]], ["A"], bootstrap=0)
    assert report["labels"]["A"] == {"auc": 0.75, "ci": None, "positives": 2, "negatives": 2, "resamples": 0}
    assert report["means"]["all"]["mean_auc"] == 0.75
    ties = auc_report([[0.5], [0.5], [0.5]], [[0], [1], [1]], ["A"], bootstrap=0)
    assert ties["labels"]["A"]["auc"] == 0.5


def test_unknown_labels_are_dropped_per_label():
    scores = [[0.9, 0.1], [0.8, 0.2], [0.2, 0.3], [0.1, 0.4]]
    # B is known for two images only (AUC 0); read as either class, its blanks would give 1/3.
    targets = [[1, NAN], [0, 1], [1, 0], [0, NAN]]
    report = auc_report(scores, targets, ["A", "B"], bootstrap=0)
    assert report["labels"]["A"]["auc"] == 0.75
    assert report["labels"]["B"] == {"auc": 0.0, "ci": None, "positives": 1, "negatives": 1, "resamples": 0}
    assert report["means"]["all"]["mean_auc"] == 0.375


def test_labels_without_both_classes_are_skipped_not_nan_in_the_means():
    scores = np.array([[0.1, 0.5, 0.2, 0.3], [0.4, 0.6, 0.9, 0.1], [0.35, 0.7, 0.8, 0.2], [0.8, 0.1, 0.1, 0.9]])
    targets = [[0, 0, 1, 0], [0, 0, 1, 1], [1, 0, 1, NAN], [1, 0, 1, 0]]
    report = auc_report(scores, targets, ["A", "none", "all", "few"], groups={"g": ["A", "none"], "all": ["A", "none", "all", "few"]},
                        bootstrap=50, min_positives=2)
    assert report["skipped"] == {
        "none": {"reason": "no positives", "positives": 0, "negatives": 4},
        "all": {"reason": "no negatives", "positives": 4, "negatives": 0},
        "few": {"reason": "fewer than 2 positives (1)", "positives": 1, "negatives": 2},
    }
    assert list(report["labels"]) == ["A"]
    assert report["means"]["g"]["labels"] == ["A"] and report["means"]["g"]["mean_auc"] == 0.75
    assert report["means"]["all"]["mean_auc"] == 0.75


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"must both be \(images, 2 labels\)"):
        auc_report([[0.1, 0.2]], [[1]], ["A", "B"])


def test_each_resample_auc_is_roc_auc_score_on_the_resampled_images():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=30) / 4  # many ties
    targets = (rng.random(30) < 0.3).astype(float)
    counts = next(resample_counts(30, 40, seed=3))
    assert counts.shape == (40, 30) and (counts.sum(axis=1) == 30).all()
    fast = weighted_aucs(counts, scores, targets)
    for row, auc in zip(counts, fast):
        drawn = np.repeat(np.arange(30), row)  # the resampled images, duplicates included
        if len(set(targets[drawn])) < 2:
            assert np.isnan(auc)
        else:
            assert auc == pytest.approx(roc_auc_score(targets[drawn], scores[drawn]), abs=1e-12)


def test_bootstrap_distribution_matches_exact_enumeration_of_resamples():
    # 3 images: a negative (0.5) between two positives (0.9, 0.1); all 27 equally likely resamples
    # are enumerated by hand, skipping those with one class.
    scores, targets = np.array([[0.5], [0.9], [0.1]]), np.array([[0.0], [1.0], [1.0]])
    exact = []
    for drawn in itertools.product(range(3), repeat=3):
        y, s = targets[list(drawn), 0], scores[list(drawn), 0]
        if len(set(y)) == 2:
            exact.append(roc_auc_score(y, s))
    aucs = bootstrap_aucs(scores, targets, [0], resamples=20000, seed=0)[:, 0]
    valid = aucs[~np.isnan(aucs)]
    assert len(exact) == 18
    assert valid.size / aucs.size == pytest.approx(18 / 27, abs=0.01)
    assert valid.mean() == pytest.approx(np.mean(exact), abs=0.01)
    assert set(np.unique(valid)) <= set(np.unique(exact))


def test_bootstrap_resamples_images_jointly_and_is_seeded():
    rng = np.random.default_rng(0)
    scores = rng.random((40, 1)).repeat(3, axis=1)
    targets = (rng.random((40, 1)) < 0.5).astype(float).repeat(3, axis=1)
    targets[:, 2] = 1 - targets[:, 2]
    report = auc_report(scores, targets, ["A", "B", "C"], bootstrap=300, seed=7)
    a, b, c = (report["labels"][k] for k in "ABC")
    assert a["ci"] == b["ci"]  # same images in each resample
    assert c["ci"] == pytest.approx([1 - a["ci"][1], 1 - a["ci"][0]])
    assert a["ci"][0] < a["auc"] < a["ci"][1]
    assert auc_report(scores, targets, ["A", "B", "C"], bootstrap=300, seed=7) == report
    assert auc_report(scores, targets, ["A", "B", "C"], bootstrap=300, seed=8)["labels"]["A"]["ci"] != a["ci"]
    # Per-label CI: the 2.5% and 97.5% quantiles of that label's valid resample AUCs.
    boot = bootstrap_aucs(scores, targets, [0, 1, 2], 300, seed=7)
    assert a["ci"] == pytest.approx(np.quantile(boot[:, 0], [0.025, 0.975]).tolist())
    assert report["means"]["all"]["mean_auc"] == pytest.approx((2 * a["auc"] + c["auc"]) / 3)


def test_mean_ci_skips_resamples_in_which_any_member_has_one_class():
    rng = np.random.default_rng(0)
    scores, targets = rng.random((12, 2)), np.zeros((12, 2))
    targets[:6, 0] = 1
    targets[0, 1] = 1  # rare: about a third of resamples miss its only positive
    report = auc_report(scores, targets, ["A", "rare"], bootstrap=500, seed=0)
    boot = bootstrap_aucs(scores, targets, [0, 1], 500, seed=0)
    both = ~np.isnan(boot).any(axis=1)
    assert report["labels"]["rare"]["resamples"] == int((~np.isnan(boot[:, 1])).sum()) < 400
    assert report["means"]["all"]["resamples"] == int(both.sum())
    expected = np.quantile(boot[both].mean(axis=1), [0.025, 0.975])
    assert report["means"]["all"]["ci"] == pytest.approx(expected.tolist())


# --- prompts -------------------------------------------------------------------------------------


def test_default_prompts_follow_chexzero_without_double_negation():
    assert default_prompts("Pleural Effusion") == {"positive": ["pleural effusion"], "negative": ["no pleural effusion"]}
    assert default_prompts("No Finding") == {"positive": ["no finding"], "negative": ["finding"]}
    assert default_prompts("normal") == {"positive": ["normal"], "negative": ["abnormal"]}
    assert default_prompts("COPD  signs") == {"positive": ["copd signs"], "negative": ["no copd signs"]}


def test_prompt_file_overrides_named_labels_case_insensitively(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({
        "pleural effusion": {"positive": ["effusion", "fluid"], "negative": ["no effusion"]},
        "Pneumothorax": {"positive": ["pneumothorax"], "negative": ["no pneumothorax"]},  # not evaluated
    }))
    resolved = resolve_prompts(["Pleural Effusion", "Edema"], path)
    assert resolved == {
        "Pleural Effusion": {"positive": ["effusion", "fluid"], "negative": ["no effusion"]},
        "Edema": {"positive": ["edema"], "negative": ["no edema"]},
    }


@pytest.mark.parametrize("content, message", [
    ('{"Edema": {"positive": ["edema"]}}', "exactly the keys"),
    ('{"Edema": {"positive": [], "negative": ["no edema"]}}', "positive must name at least one prompt"),
    ('{"Edema": {"positive": "edema", "negative": ["no edema"]}}', "must be a list of non-empty strings"),
    ('{"Edema": {"positive": ["edema"], "negative": [" "]}}', "must be a list of non-empty strings"),
    ('["edema"]', "expected a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_bad_prompt_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_prompt_file(path)


def test_prompt_ensemble_is_the_renormalised_mean_of_normalised_embeddings(tiny):
    prompts = {"Edema": {"positive": ["edema", "pulmonary edema", "fluid overload"], "negative": ["no edema"]}}
    got = evaluate.prompt_embeddings(tiny.model, tiny.tokenizer, prompts, "cpu")
    with torch.no_grad():
        each = F.normalize(tiny.model.encode_text(tiny.tokenizer(prompts["Edema"]["positive"])), dim=-1)
        single = F.normalize(tiny.model.encode_text(tiny.tokenizer(["no edema"])), dim=-1)[0]
    assert got.shape == (1, 2, 64)
    torch.testing.assert_close(got[0, 0], F.normalize(each.mean(0), dim=-1))
    torch.testing.assert_close(got[0, 1], single)


def test_a_label_without_negative_prompts_is_scored_by_its_positive_prompt_alone(tiny, tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"Edema": {"positive": ["edema ."], "negative": []}}))
    prompts = load_prompt_file(path)
    assert prompts == {"Edema": {"positive": ["edema ."], "negative": []}}
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 40), 60 * i, dtype=np.uint8)).save(images[-1])
    scores = evaluate.zeroshot_scores(tiny.model, tiny.preprocess, tiny.tokenizer, images, prompts)
    with torch.no_grad():
        text = F.normalize(tiny.model.encode_text(tiny.tokenizer(["edema ."])), dim=-1)[0].double()
        pixels = torch.stack([tiny.preprocess(Image.open(p)) for p in images])
        image = F.normalize(tiny.model.encode_image(pixels), dim=-1).double()
    np.testing.assert_allclose(scores[:, 0], (image @ text).numpy(), rtol=1e-6, atol=1e-9)


# --- scoring pipeline ----------------------------------------------------------------------------


class BrightnessCLIP(torch.nn.Module):
    """Knows one thing: brighter images are "positive". Image feature (b, 1-b) for mean brightness
    b; a prompt starting with "no " embeds to (0, 1), any other to (1, 0)."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Linear(1, 1)  # gives the input dtype
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(2.0)))

    def encode_image(self, images, normalize=False):
        b = images.mean(dim=(1, 2, 3))
        features = torch.stack([b, 1 - b], dim=1)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens, normalize=False):
        negated = tokens[:, 0].float()
        features = torch.stack([1 - negated, negated], dim=1)
        return F.normalize(features, dim=-1) if normalize else features


def negation_tokenizer(texts):
    return torch.tensor([[int(t.startswith("no "))] for t in texts])


@pytest.fixture(scope="module")
def brightness_set(tmp_path_factory) -> Path:
    brightness = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    targets = [
        # Edema: bright = positive; Cardiomegaly: dark = positive; Atelectasis: positives 0.2, 0.4, 0.5
        # vs negatives 0.1, 0.3 (5 of 6 pairs ordered), the brightest image unknown; Fracture: none.
        [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [1, 0, NAN, 0],
    ]
    pixels = [np.full((8, 8), round(b * 255), dtype=np.uint8) for b in brightness]
    return write_eval_set(tmp_path_factory.mktemp("sets") / "bright", ["Edema", "Cardiomegaly", "Atelectasis", "Fracture"],
                          targets, pixels, dataset="padchest")


def test_scores_are_the_similarity_differences_per_label(brightness_set):
    from torchvision.transforms import ToTensor

    eval_set = evaluate.read_eval_set(brightness_set)
    prompts = resolve_prompts(eval_set.labels)
    scores = evaluate.zeroshot_scores(BrightnessCLIP(), ToTensor(), negation_tokenizer, eval_set.images, prompts, batch_size=4)
    b = torch.tensor([round(v * 255) / 255 for v in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)], dtype=torch.float64)
    image = F.normalize(torch.stack([b, 1 - b], dim=1), dim=-1)
    expected = image[:, 0] - image[:, 1]  # text (1, 0) vs (0, 1)
    assert scores.shape == (6, 4) and scores.dtype == np.float64
    for j in range(4):
        np.testing.assert_allclose(scores[:, j], expected.numpy(), atol=1e-6)  # float32 image embeddings
    # CheXzero's probability, from the scores: softmax(logit_scale · [sim_pos, sim_neg])[0]
    np.testing.assert_allclose(evaluate.zeroshot_probability(scores[:, 0], 2.0),
                               torch.softmax(2.0 * image, dim=1)[:, 0].numpy(), atol=1e-6)
    with np.errstate(all="raise"):  # no overflow, no NaN, whatever the score
        assert evaluate.zeroshot_probability([-1e6, 0.0, 1e6], 100.0).tolist() == [0.0, 0.5, 1.0]


def test_auc_equals_chexzeros_formula_in_float64_where_float32_softmax_saturates(tmp_path):
    """At logit scale 100, float32 softmax rounds to exactly 1.0 once sim_pos - sim_neg > ~0.166:
    the old scores tied there. The differences must give CheXzero's AUC computed exactly."""
    from torchvision.transforms import ToTensor

    levels = np.arange(80, 160, 2)  # 40 brightnesses 0.31-0.62: differences -0.52 to +0.33
    rng = np.random.default_rng(4)
    targets = (rng.random(len(levels)) < 0.25 + 0.5 * (levels - 80) / 80).astype(float)[:, None]
    pixels = [np.full((4, 4), level, dtype=np.uint8) for level in levels]
    data = write_eval_set(tmp_path / "saturating", ["Edema"], targets, pixels, dataset="padchest")
    model = BrightnessCLIP()
    model.logit_scale.data.fill_(math.log(100.0))
    eval_set = evaluate.read_eval_set(data)
    scores = evaluate.zeroshot_scores(model, ToTensor(), negation_tokenizer, eval_set.images,
                                      resolve_prompts(["Edema"]), batch_size=7)[:, 0]

    b = levels / 255.0
    image = np.stack([b, 1 - b], axis=1) / np.hypot(b, 1 - b)[:, None]  # float64 embeddings
    logits = 100.0 * image  # · [(1, 0), (0, 1)]: sim_pos, sim_neg
    chexzero = np.exp(logits[:, 0] - logits.max(1)) / np.exp(logits - logits.max(1, keepdims=True)).sum(1)
    assert len(np.unique(chexzero)) == len(levels)  # the float64 reference resolves every image
    old = torch.softmax(100.0 * torch.tensor(image, dtype=torch.float32), dim=1)[:, 0].numpy()
    assert (old == 1.0).sum() >= 5  # the float32 softmax saturates: the case the old scores got wrong
    assert roc_auc_score(targets[:, 0], old) != roc_auc_score(targets[:, 0], chexzero)

    assert len(np.unique(scores)) == len(levels)  # no ties
    results = evaluate.zeroshot_evaluate(model, ToTensor(), negation_tokenizer, data, bootstrap=0, min_positives=1)
    assert results["labels"]["Edema"]["auc"] == pytest.approx(roc_auc_score(targets[:, 0], chexzero), abs=1e-12)


def test_zeroshot_evaluate_gives_the_hand_computed_aucs(brightness_set, tmp_path):
    from torchvision.transforms import ToTensor

    results = evaluate.zeroshot_evaluate(BrightnessCLIP(), ToTensor(), negation_tokenizer, brightness_set,
                                         bootstrap=100, min_positives=1)
    aucs = {label: entry["auc"] for label, entry in results["labels"].items()}
    assert aucs == {"Edema": 1.0, "Cardiomegaly": 0.0, "Atelectasis": pytest.approx(5 / 6)}
    assert results["skipped"] == {"Fracture": {"reason": "no positives", "positives": 0, "negatives": 6}}
    assert results["means"]["all"]["mean_auc"] == pytest.approx((1 + 0 + 5 / 6) / 3)
    assert "competition" not in results["means"]  # PadChest: one mean
    assert results["labels"]["Edema"]["prompts"] == {"positive": ["edema"], "negative": ["no edema"]}
    assert (results["dataset"], results["num_images"], results["min_positives"]) == ("padchest", 6, 1)
    # A prompt file that swaps Cardiomegaly's prompts flips its AUC; PadChest's default minimum of
    # 10 positives skips every label of this small set.
    swapped = {"cardiomegaly": {"positive": ["no cardiomegaly"], "negative": ["cardiomegaly"]}}
    flipped = evaluate.zeroshot_evaluate(BrightnessCLIP(), ToTensor(), negation_tokenizer, brightness_set,
                                         labels=["Cardiomegaly"], prompts=swapped, bootstrap=0, min_positives=1)
    assert flipped["labels"]["Cardiomegaly"]["auc"] == 1.0 and list(flipped["labels"]) == ["Cardiomegaly"]
    default_min = evaluate.zeroshot_evaluate(BrightnessCLIP(), ToTensor(), negation_tokenizer, brightness_set, bootstrap=0)
    assert default_min["min_positives"] == 10 and not default_min["labels"] and not default_min["means"]


def test_eval_set_errors_say_what_is_wrong(tmp_path, brightness_set):
    with pytest.raises(FileNotFoundError, match="tier-openclip prep"):
        evaluate.read_eval_set(tmp_path)
    with pytest.raises(ValueError, match="not columns"):
        evaluate.read_eval_set(brightness_set, labels=["Edema", "Pneumonia"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_text("image,Edema\nx.png,-1\n")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(bad / "x.png")
    with pytest.raises(ValueError, match=r"row 2, Edema: '-1' is not a label"):
        evaluate.read_eval_set(bad)
    (bad / "labels.csv").write_text("image,Edema\nmissing.png,1\n")
    with pytest.raises(FileNotFoundError, match="1 images listed"):
        evaluate.read_eval_set(bad)


def test_chexpert_means_over_competition_and_all_labels(tiny, chexpert_set):
    results = evaluate.zeroshot_evaluate(tiny.model, tiny.preprocess, tiny.tokenizer, chexpert_set, bootstrap=50, batch_size=10)
    eval_set = evaluate.read_eval_set(chexpert_set)
    with torch.no_grad():
        images = torch.stack([tiny.preprocess(Image.open(p).convert("RGB")) for p in eval_set.images])
        image_features = F.normalize(tiny.model.encode_image(images), dim=-1)
    assert set(results["skipped"]) == {"Fracture"}
    assert results["means"]["competition"]["labels"] == COMPETITION
    assert len(results["means"]["all"]["labels"]) == 13
    for label, entry in results["labels"].items():
        classes = evaluate.prompt_embeddings(tiny.model, tiny.tokenizer, {label: default_prompts(label)}, "cpu")[0]
        score = torch.softmax(tiny.model.logit_scale.exp() * image_features @ classes.T, dim=1)[:, 0].detach()  # CheXzero
        j = eval_set.labels.index(label)
        known = ~np.isnan(eval_set.targets[:, j])
        assert entry["auc"] == pytest.approx(roc_auc_score(eval_set.targets[known, j], score.numpy()[known]), abs=1e-6)
        assert entry["ci"][0] <= entry["ci"][1]
    assert results["means"]["competition"]["mean_auc"] == pytest.approx(np.mean([results["labels"][k]["auc"] for k in COMPETITION]))
    assert results["labels"]["No Finding"]["prompts"] == {"positive": ["no finding"], "negative": ["finding"]}
    table = evaluate.results_markdown(results)
    assert "| Pleural Effusion |" in table and "Mean, CheXpert competition labels (5)" in table
    assert "Mean, all labels (13)" in table and "Skipped: Fracture (no positives)." in table


# --- command line --------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tier-openclip")
    eval_cli.add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prints_the_table_and_writes_json_and_markdown(tiny, tiny_checkpoint, chexpert_set, tmp_path, capsys):
    out = tmp_path / "eval" / "results.json"
    code = run_cli(["eval", "zeroshot", "--model", "TIER-tiny", "--pretrained", str(tiny_checkpoint), "--dataset", "chexpert",
                    "--data", str(chexpert_set), "--out", str(out), "--bootstrap", "40", "--seed", "3",
                    "--workers", "0", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    results = json.loads(out.read_text())
    table = (tmp_path / "eval" / "results.md").read_text()
    assert table in printed and "| Atelectasis |" in table
    assert (results["model"], results["pretrained"], results["bootstrap"], results["seed"]) == ("TIER-tiny", str(tiny_checkpoint), 40, 3)
    api = evaluate.zeroshot_evaluate(tiny.model, tiny.preprocess, tiny.tokenizer, chexpert_set, bootstrap=40, seed=3)
    for label, entry in api["labels"].items():
        assert results["labels"][label]["auc"] == pytest.approx(entry["auc"])
        assert results["labels"][label]["ci"] == pytest.approx(entry["ci"])
    assert results["means"]["competition"]["ci"] == pytest.approx(api["means"]["competition"]["ci"])


def test_cli_help_and_wrong_dataset(chexpert_set, capsys, tmp_path):
    with pytest.raises(SystemExit):
        run_cli(["eval", "zeroshot", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--model", "--pretrained", "--dataset", "--data", "--labels", "--prompts", "--out", "--bootstrap",
                 "--min-positives"):
        assert flag in help_text
    from tier_openclip.errors import UsageError

    with pytest.raises(UsageError, match="holds a chexpert set, not padchest; pass --dataset chexpert"):
        (tmp_path / "epoch_1.pt").write_bytes(b"")  # only named: the set's dataset is checked first
        run_cli(["eval", "zeroshot", "--model", "TIER-tiny", "--pretrained", str(tmp_path / "epoch_1.pt"),
                 "--dataset", "padchest", "--data", str(chexpert_set)])


# --- during training -----------------------------------------------------------------------------


class DDPLike(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


def training_args(tmp_path: Path, chexpert_set: Path, **overrides) -> SimpleNamespace:
    (tmp_path / "checkpoints").mkdir(exist_ok=True)
    args = dict(rank=0, zeroshot_frequency=2, epochs=3, model="TIER-tiny", device="cpu", batch_size=8, workers=0,
                save_logs=True, checkpoint_path=str(tmp_path / "checkpoints"), wandb=False,
                tier_zeroshot_chexpert=str(chexpert_set), tier_zeroshot_padchest=None)
    return SimpleNamespace(**{**args, **overrides})


def test_during_training_runs_on_schedule_and_logs_like_open_clip(tiny, chexpert_set, tmp_path, monkeypatch):
    wandb = Recorder()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    model, tb = tiny.model.train(), Recorder()
    modes = []
    hook = model.visual.register_forward_pre_hook(lambda module, inputs: modes.append(model.training))
    args = training_args(tmp_path, chexpert_set, wandb=True)
    try:
        assert evaluate.zeroshot_during_training(DDPLike(model), 1, args, tb) == {}  # 1 % 2 != 0
        metrics = evaluate.zeroshot_during_training(DDPLike(model), 2, args, tb)
        assert evaluate.zeroshot_during_training(model, 3, args, None)  # the last epoch always
    finally:
        hook.remove()
    assert modes and not any(modes) and model.training  # eval mode inside, train mode after
    expected = evaluate.zeroshot_evaluate(model.eval(), tiny.preprocess, tiny.tokenizer, chexpert_set, bootstrap=0)
    assert metrics["chexpert-zeroshot-mean-auc"] == pytest.approx(expected["means"]["all"]["mean_auc"])
    assert metrics["chexpert-zeroshot-mean-auc-competition"] == pytest.approx(expected["means"]["competition"]["mean_auc"])
    assert metrics["chexpert-zeroshot-auc-pleural-effusion"] == pytest.approx(expected["labels"]["Pleural Effusion"]["auc"])
    assert "chexpert-zeroshot-auc-fracture" not in metrics
    lines = [json.loads(line) for line in (tmp_path / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [2, 3] and lines[0] == {"epoch": 2, **metrics}
    assert ("val/chexpert-zeroshot-mean-auc", metrics["chexpert-zeroshot-mean-auc"], 2) in tb.calls
    assert len(tb.calls) == len(metrics)  # epoch 3 had no writer
    assert wandb.calls[0] == {**{f"val/{k}": v for k, v in metrics.items()}, "epoch": 2}


@pytest.mark.parametrize("overrides", [{"rank": 1}, {"zeroshot_frequency": 0}])
def test_during_training_skips_other_ranks_and_frequency_zero(tiny, chexpert_set, tmp_path, overrides):
    args = training_args(tmp_path, chexpert_set, **overrides)
    assert evaluate.zeroshot_during_training(tiny.model, 3, args, None) == {}
    assert not (tmp_path / "checkpoints" / "results.jsonl").exists()


@pytest.mark.slow
def test_training_run_logs_zeroshot_auc_each_epoch(tmp_path, chexpert_set):
    shards = write_shards(tmp_path / "shards", num_shards=2, per_shard=16, size=64)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    package_root = Path(tier_openclip.__file__).parent.parent
    if "site-packages" not in str(package_root):  # the subprocess runs the code under test
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "open_clip_train.main", "--loss", "tier", "--model", "TIER-tiny", "--train-data", shards,
        "--dataset-type", "webdataset", "--train-num-samples", "32", "--batch-size", "8", "--epochs", "1",
        "--workers", "1", "--lr", "1e-3", "--warmup", "1", "--seed", "0", f"--logs={tmp_path / 'logs'}",
        "--name", "zs", "--report-to", "tensorboard", "--tier-zeroshot-chexpert", str(chexpert_set),
        "--zeroshot-frequency", "1",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "logs" / "zs"
    lines = [json.loads(line) for line in (run / "checkpoints" / "results.jsonl").read_text().splitlines()]
    zeroshot = [line for line in lines if "chexpert-zeroshot-mean-auc" in line]
    assert len(zeroshot) == 1 and zeroshot[0]["epoch"] == 1
    assert 0 <= zeroshot[0]["chexpert-zeroshot-mean-auc-competition"] <= 1
    assert "chexpert-zeroshot-auc-atelectasis" in zeroshot[0]
    assert "Zero-shot Epoch: 1" in (run / "out.log").read_text()


def test_an_interval_on_a_handful_of_images_is_warned_about(caplog):
    import logging

    import numpy as np

    from tier_openclip.evaluation.bootstrap import MIN_IMAGES_FOR_INTERVAL, auc_report

    rng = np.random.default_rng(0)
    few = np.array([[1.0, 0], [0, 1], [1, 0], [0, 1], [0, 0]])  # label a: 2 positives; label b: 2 positives
    with caplog.at_level(logging.WARNING, logger="tier_openclip"):
        auc_report(rng.random(few.shape), few, ["a", "b"], bootstrap=50)
    lines = [r.getMessage() for r in caplog.records if "bootstrap interval" in r.getMessage()]
    assert len(lines) == 1 and "AUC of a (2), b (2)" in lines[0] and f"fewer than {MIN_IMAGES_FOR_INTERVAL}" in lines[0]
    caplog.clear()
    many = (np.arange(40)[:, None] % 2 == np.array([0, 1])).astype(float)  # 20 of each class per label
    with caplog.at_level(logging.WARNING, logger="tier_openclip"):
        auc_report(rng.random(many.shape), many, ["a", "b"], bootstrap=50)
        auc_report(rng.random(few.shape), few, ["a", "b"], bootstrap=0)  # no interval, nothing to warn about
    assert "bootstrap interval" not in caplog.text

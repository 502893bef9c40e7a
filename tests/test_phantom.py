"""The phantom chest X-ray benchmark: determinism, label balance, boxes that hold their drawings
at random places, a low image-free prior, captions in the phrase bank's words, the grounding
layout, open_clip's WebDataset pipeline, and both backgrounds."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tier_openclip import phantom
from tier_openclip.data_prep import shards
from tier_openclip.phantom import FINDING_NAMES, FINDINGS, FINDINGS_BY_NAME, SITES, PhantomConfig, PlannedFinding

HAS_REAL = phantom.real_anatomy_path() is not None
needs_real = pytest.mark.skipif(not HAS_REAL, reason="pydicom-data not installed")
BACKGROUNDS = [pytest.param(True, id="real", marks=needs_real), pytest.param(False, id="procedural")]
LUNG = ("opacity", "bulla")
LATERAL = ("pleural effusion", "pneumothorax")


def tiny(seed: int = 0, **overrides) -> PhantomConfig:
    return PhantomConfig(**{"num_train": 10, "num_test": 8, "shard_size": 4, "seed": seed, **overrides})


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def shard_records(split_dir: Path) -> list[dict]:
    records = []
    for path in sorted(split_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            records += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return records


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantom") / "seed0"
    return out, phantom.write_phantom_dataset(out, tiny(), progress=False)


# ------------------------------------------------------------------ files and determinism


def test_layout_and_metadata(written):
    out, summary = written
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "sizes.json", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert json.loads((out / "train" / "sizes.json").read_text()) == {
        "train-000000.tar": 4, "train-000001.tar": 4, "train-000002.tar": 2}
    assert json.loads((out / "test" / "sizes.json").read_text()) == {"test-000000.tar": 4, "test-000001.tar": 4}
    assert summary["train_shards"] == str(out / "train" / "train-{000000..000002}.tar")
    assert summary["test_shards"] == str(out / "test" / "test-{000000..000001}.tar")
    assert (summary["num_train"], summary["num_test"]) == (10, 8)
    assert summary["eval_dir"] == summary["grounding_dir"] == str(out / "test_eval")
    assert summary["labels"] == list(FINDING_NAMES) and summary["prompts"] == phantom.prompt_set()

    with tarfile.open(out / "test" / "test-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:3]] == ["test-000000.json", "test-000000.png", "test-000000.txt"]
        assert {m.mtime for m in members} == {0}  # reproducible archives
        record = json.loads(tar.extractfile("test-000000.json").read())
        png = tar.extractfile("test-000000.png").read()
        caption = tar.extractfile("test-000000.txt").read().decode()
    assert record["split"] == "test" and record["seed"] == 0 and record["index"] == 0
    assert record["boxes"] == {f["name"]: f["box"] for f in record["findings"]}
    assert all(f["phrase"].lower() in caption.lower() for f in record["findings"])
    assert (out / "test_eval" / "images" / "test-000000.png").read_bytes() == png

    meta = json.loads((out / "test_eval" / "meta.json").read_text())
    assert meta["format"] == "tier-openclip-eval/1" and meta["dataset"] == "phantom"
    assert meta["labels"] == list(FINDING_NAMES) and meta["image_size"] == 64
    assert meta["box_format"] == "x0, y0, x1, y1 in pixels of the stored image, half-open"
    assert meta["prompts"] == phantom.prompt_set()
    assert json.loads((out / "test_eval" / "prompts.json").read_text()) == phantom.prompt_set()
    from tier_openclip.evaluation.zeroshot import read_eval_set  # the zero-shot evaluator reads it as is

    eval_set = read_eval_set(out / "test_eval")
    assert eval_set.labels == list(FINDING_NAMES) and len(eval_set.images) == 8
    rows = read_csv(out / "test_eval" / "labels.csv")
    assert len(rows) == 8 and list(rows[0]) == ["image", *FINDING_NAMES]
    assert all((out / "test_eval" / r["image"]).is_file() for r in rows)
    for name in FINDING_NAMES:
        positives = sum(int(r[name]) for r in rows)
        assert meta["counts"][name] == summary["counts"][name] == {
            "positive": positives, "negative": 8 - positives, "unknown": 0}

    # boxes.csv: one row per test finding, its phrase as the caption says it.
    test_records = {f"images/{r['key']}.png": r for r in shard_records(out / "test")}
    boxes = read_csv(out / "test_eval" / "boxes.csv")
    assert list(boxes[0]) == ["image", "finding", "phrase", "x0", "y0", "x1", "y1"]
    assert [(b["image"], b["finding"], b["phrase"], *map(int, (b["x0"], b["y0"], b["x1"], b["y1"]))) for b in boxes] == [
        (image, f["name"], f["phrase"], *f["box"]) for image, r in test_records.items() for f in r["findings"]]
    for b in boxes:
        assert next(r for r in rows if r["image"] == b["image"])[b["finding"]] == "1"
    # prior_boxes.csv: every finding of the TRAIN split.
    train = [(f["name"], tuple(f["box"])) for r in shard_records(out / "train") for f in r["findings"]]
    prior = read_csv(out / "test_eval" / "prior_boxes.csv")
    assert [(p["finding"], tuple(int(p[k]) for k in ("x0", "y0", "x1", "y1"))) for p in prior] == train
    test = [(b["finding"], tuple(int(b[k]) for k in ("x0", "y0", "x1", "y1"))) for b in boxes]
    assert summary["prior_pointing_game"] == phantom.prior_pointing(train, test, 64, exclude=["cardiomegaly"])
    assert meta["summary_excludes"] == ["cardiomegaly"] and meta["grounding_layout"] is False
    assert summary["background"] == meta["background"] == "procedural" and summary["grounding"] is False

    from tier_openclip.evaluation.grounding import read_grounding_set  # and so does the grounding evaluator

    grounding = read_grounding_set(out / "test_eval")
    assert [(p.finding, p.phrase) for p in grounding.phrases] == [(b["finding"], b["phrase"]) for b in boxes]
    assert sum(len(v) for v in grounding.prior_boxes.values()) == len(train)


def test_same_config_same_bytes_other_seed_other_bytes(written, tmp_path):
    out, _ = written
    again = tmp_path / "again"
    phantom.write_phantom_dataset(again, tiny(), progress=False)
    assert files(again) == files(out)

    parallel = tmp_path / "parallel"  # worker processes change nothing
    phantom.write_phantom_dataset(parallel, tiny(), progress=False, workers=2)
    assert files(parallel) == files(out)

    other = tmp_path / "other"
    phantom.write_phantom_dataset(other, tiny(seed=1), progress=False)
    a, b = files(out), files(other)
    assert a.keys() == b.keys()
    assert a["train/train-000000.tar"] != b["train/train-000000.tar"]
    assert a["test_eval/labels.csv"] != b["test_eval/labels.csv"]


def test_rewriting_a_smaller_dataset_leaves_no_stale_shards(tmp_path):
    phantom.write_phantom_dataset(tmp_path, tiny(num_train=9, num_test=6), progress=False)
    phantom.write_phantom_dataset(tmp_path, tiny(num_train=3, num_test=2), progress=False)
    assert sorted(p.name for p in (tmp_path / "train").glob("*.tar")) == ["train-000000.tar"]
    assert len(list((tmp_path / "test_eval" / "images").iterdir())) == 2
    train = [(f["name"], f["box"]) for r in shard_records(tmp_path / "train") for f in r["findings"]]
    assert len(read_csv(tmp_path / "test_eval" / "prior_boxes.csv")) == len(train)  # of the 3 samples now planned


def test_shards_come_from_data_preps_writer_and_a_rerun_keeps_them(written, tmp_path):
    out, summary = written
    for split, total in (("train", 10), ("test", 8)):
        for index in range(-(-total // 4)):
            name = shards.shard_name(split, index)
            with tarfile.open(out / split / name) as tar:
                headers = {(m.uname, m.gname, m.mode, m.mtime) for m in tar.getmembers()}
            assert headers == {(shards.TAR_USER, shards.TAR_GROUP, shards.TAR_MODE, shards.TAR_MTIME)}
            record = shards.ShardRecord.load(out / shards.STATE_DIR / f"{split}-{index:06d}.json")
            assert record is not None and record.sha256 == shards.file_sha256(out / split / name)
            assert record.keys == [f"{split}-{i:06d}" for i in range(4 * index, min(4 * index + 4, total))]
            assert record.failures == [] and record.extensions == ["json", "png", "txt"]

    rerun = tmp_path / "rerun"  # a copy, so the shared fixture stays as written
    shutil.copytree(out, rerun)
    before = files(rerun)
    stats = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in rerun.glob("*/*.tar")}
    (rerun / "test_eval" / "images" / "test-000005.png").unlink()  # test_eval is rebuilt from the shards
    (rerun / "test_eval" / "labels.csv").write_text("damaged")
    (rerun / "test_eval" / "prior_boxes.csv").write_text("damaged")  # and so are the train boxes
    (rerun / "test_eval" / "images" / "test-000099.png").write_bytes(b"stale")
    again = phantom.write_phantom_dataset(rerun, tiny(), progress=False)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in rerun.glob("*/*.tar")} == stats  # kept as they were
    assert files(rerun) == before
    assert again["test_shards"] == str(rerun / "test" / "test-{000000..000001}.tar")
    assert (again["counts"], again["num_train"], again["num_test"]) == (summary["counts"], 10, 8)
    assert again["prior_pointing_game"] == summary["prior_pointing_game"]


def test_opacity_masks_are_a_segmentation_set_of_the_same_samples(written, tmp_path):
    from tier_openclip.data_prep.seg_sets import read_mask, read_seg_set

    out, summary = written
    assert summary["seg_dir"] == str(out / "seg_opacity") and summary["seg_target"] == "opacity"
    seg = read_seg_set(out / "seg_opacity")  # the segmentation evaluator's reader accepts it
    assert (seg.dataset, seg.target, seg.meta["image_size"]) == ("phantom", "opacity", 64)
    assert seg.meta["splits"] == {"train": 10, "val": 0, "test": 8}
    records = {r["key"]: r for split in ("train", "test") for r in shard_records(out / split)}
    assert [(item.id, item.split) for item in seg.items] == [(key, r["split"]) for key, r in records.items()]
    config, background = tiny(), phantom.build_background(tiny())
    for item in seg.items:
        record = records[item.id]
        image, mask = np.asarray(Image.open(seg.path(item.image))), read_mask(seg.path(item.mask))
        if item.split == "test":  # test_eval holds the test shards' PNGs as they are
            assert np.array_equal(image, np.asarray(Image.open(out / "test_eval" / "images" / f"{item.id}.png")))
        sample = phantom.make_sample(phantom.sample_rng(0, item.split, record["index"]), config, background)
        assert np.array_equal(image, sample.image)  # the shards' sample, pixel for pixel
        if record["labels"]["opacity"]:
            assert np.array_equal(mask, sample.masks["opacity"])
            assert phantom.raster.bbox(mask) == tuple(record["boxes"]["opacity"])
        else:
            assert not mask.any()
    assert seg.meta["positive_images"] == sum(r["labels"]["opacity"] for r in records.values()) > 0

    # A rerun keeps the set; other samples (a smaller train split for it) rebuild it.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    stamp = (copy / "seg_opacity" / "meta.json").stat().st_mtime_ns
    phantom.write_phantom_dataset(copy, tiny(), progress=False)
    assert (copy / "seg_opacity" / "meta.json").stat().st_mtime_ns == stamp
    phantom.write_phantom_dataset(copy, tiny(), progress=False, seg_max_train=3)
    smaller = read_seg_set(copy / "seg_opacity")
    assert smaller.meta["splits"] == {"train": 3, "val": 0, "test": 8}
    assert len(list((copy / "seg_opacity" / "images").iterdir())) == 11  # no stale images


# ------------------------------------------------------------------ labels and sampling


def test_small_preset_has_enough_positives_and_negatives_of_every_category():
    config = PhantomConfig.preset("small")
    assert (config.image_size, config.num_train, config.num_test) == (64, 2000, 400)
    labels = phantom.split_labels(config, "test")
    assert labels.shape == (400, len(FINDINGS))
    positives = labels.sum(0)
    assert positives.min() >= 25 and (400 - positives).min() >= 200, dict(zip(FINDING_NAMES, positives))
    assert set(labels.sum(1)) == {0, 1, 2}


def test_sites_are_compatible_and_cover_every_place():
    config = PhantomConfig()
    seen = set()
    for i in range(3000):
        sites = phantom.sample_sites(phantom.sample_rng(0, "train", i), config)
        assert len(sites) <= 2 and len({s.name for s in sites}) == len(sites)
        assert list(sites) == sorted(sites, key=lambda s: FINDING_NAMES.index(s.name))
        assert all(phantom.compatible(a, b) for a, b in itertools.combinations(sites, 2))
        seen |= set(sites)
    assert seen == set(SITES)  # every lung zone of both lungs, both bases, both apices, the heart
    assert len(SITES) == 6 + 6 + 2 + 1 + 2


def test_label_dry_run_matches_rendered_samples():
    config = tiny(image_size=32)
    background = phantom.build_background(config)
    table = phantom.split_labels(config, "train")
    for i in range(config.num_train):
        sample = phantom.make_sample(phantom.sample_rng(config.seed, "train", i), config, background)
        assert list(sample.labels().values()) == list(table[i])


def test_presets_and_validation():
    medium = PhantomConfig.preset("medium", seed=3, num_test=10)
    assert (medium.image_size, medium.num_train, medium.seed, medium.num_test) == (64, 8000, 3, 10)
    with pytest.raises(ValueError, match="unknown phantom preset"):
        PhantomConfig.preset("huge")
    with pytest.raises(ValueError):
        PhantomConfig(finding_count_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="pneumonia"):
        PhantomConfig(finding_weights={"pneumonia": 1.0})
    with pytest.raises(ValueError):
        PhantomConfig(negation_prob=1.5)
    only = PhantomConfig(finding_weights={"cardiomegaly": 1.0})  # left-out categories weigh 0
    names = {phantom.sample_finding_names(phantom.sample_rng(0, "train", i), only) for i in range(50)}
    assert names == {(), ("cardiomegaly",)}


# ------------------------------------------------------------------ drawings and boxes


def planned(site, index: int) -> PlannedFinding:
    spec = FINDINGS_BY_NAME[site.name]
    severity = list(spec.severities)[index % len(spec.severities)]
    low, high = spec.severities[severity]
    unnamed = PlannedFinding(*site, severity, (low + high) / 2, sum(spec.density) / 2, seed=100 + index, phrase="")
    return dataclasses.replace(unnamed, phrase=phantom.phrase_options(unnamed)[0])


def render(config, background, plan, *findings):
    return phantom.render_sample(dataclasses.replace(plan, findings=tuple(findings)), config, background)


@pytest.mark.parametrize("real", BACKGROUNDS)
@pytest.mark.parametrize("size", [64, 128])
def test_each_box_holds_its_drawing(real, size):
    """Render a plan with and without one finding: the pixels that change are the box's."""
    config = PhantomConfig(image_size=size, use_real_anatomy=real)
    background = phantom.build_background(config)
    for site in SITES:
        for i in range(2):
            plan = phantom.plan_sample(phantom.sample_rng(7, "train", i), config)
            finding = planned(site, i)
            with_it, without = render(config, background, plan, finding), render(config, background, plan)
            x0, y0, x1, y1 = box = with_it.boxes[site.name]
            assert with_it.findings[0].phrase == finding.phrase and with_it.findings[0].side == site.side
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, (site, box)
            # Every lesion spans most of an 8x8 patch at 64 px, also where the pleura cuts it; sizes scale.
            assert min(x1 - x0, y1 - y0) >= 6 * size / 64, (site, box)
            diff = np.abs(with_it.image.astype(int) - without.image.astype(int))
            inside = np.zeros_like(diff, dtype=bool)
            inside[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
            # Visibly drawn there: the faintest finding (opacity, tuned down from AUC 0.99) still
            # changes its box by ~5% of the 8-bit range, four times the noise (0.012 * 255).
            assert np.percentile(diff[y0:y1, x0:x1], 90) >= 12, (site, box)
            assert diff[inside].sum() >= 0.9 * diff.sum(), (site, box)  # and (almost) only there


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One pixel of 8-neighbourhood dilation."""
    padded = np.pad(mask, 1)
    return np.any([padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


@pytest.mark.parametrize("real", BACKGROUNDS)
def test_each_mask_is_its_drawings_footprint(real):
    """Render a plan with and without one finding: the mask is where the pixels changed (the
    drawn lesion's footprint, not its box), and the box is the mask's bounding box."""
    config = PhantomConfig(image_size=64, use_real_anatomy=real)
    background = phantom.build_background(config)
    for site in SITES:
        for i in range(2):
            plan = phantom.plan_sample(phantom.sample_rng(7, "train", i), config)
            # At full density: the footprint does not depend on it, and every pixel it covers then
            # changes by more than the 8-bit rounding (the faint opacity's lowest densities do not).
            full = dataclasses.replace(planned(site, i), density=1.0)
            with_it, without = render(config, background, plan, full), render(config, background, plan)
            mask = with_it.masks[site.name]
            assert mask.dtype == bool and mask.shape == (64, 64) and set(with_it.masks) == {site.name}
            x0, y0, x1, y1 = with_it.boxes[site.name]
            assert phantom.raster.bbox(mask) == (x0, y0, x1, y1), site
            diff = np.abs(with_it.image.astype(int) - without.image.astype(int))
            near = _dilate(mask)
            # Not outside: (almost) everything the drawing changed is within a pixel of the mask,
            # and what changed beyond it changed little (the fading margin under the 0.25 level).
            assert diff[near].sum() >= 0.95 * diff.sum(), site
            assert diff[mask].mean() >= 10 * diff[~near].mean(), site
            if site.name != "cardiomegaly":  # the enlarged silhouette holds the normal heart, unchanged
                # Inside: drawn nearly everywhere (a small opacity leaves its any-pooled rim and the
                # ribs brighter than its level unchanged).
                assert np.mean(diff[mask] > 0) >= (0.6 if site.name == "opacity" else 0.7), site
                assert np.median(diff[mask]) >= 8, site
            if site.name in LUNG:  # round lesions: the footprint is well inside its box
                # (a 9-px disc pixelised by any-pooling fills ~86% of its box, a circle pi/4)
                assert mask.sum() <= 0.9 * (x1 - x0) * (y1 - y0), site
    assert render(config, background, plan).masks == {}


def test_findings_that_may_share_an_image_do_not_overlap():
    """For every compatible pair of sites: each finding's drawing stays out of the other's box."""
    config = PhantomConfig(image_size=64)
    background = phantom.build_background(config)
    plan = phantom.plan_sample(phantom.sample_rng(3, "train", 0), config)
    empty = render(config, background, plan).image.astype(int)
    pairs = [(a, b) for a, b in itertools.combinations(SITES, 2) if phantom.compatible(a, b)]
    assert len(pairs) > 40
    for i, (a, b) in enumerate(pairs):
        alone = {s: render(config, background, plan, planned(s, i)) for s in (a, b)}
        for s, other in ((a, b), (b, a)):
            diff = np.abs(alone[s].image.astype(int) - empty)
            ox0, oy0, ox1, oy1 = alone[other].boxes[other.name]
            assert diff[oy0:oy1, ox0:ox1].sum() <= 0.1 * diff.sum(), (s, other)
    assert not phantom.compatible(phantom.Site("opacity", "right", "lower"), phantom.Site("pleural effusion", "right"))
    assert not phantom.compatible(phantom.Site("bulla", "left", "upper"), phantom.Site("opacity", "left", "middle"))


def test_lesions_sit_on_their_side_and_in_their_zone_at_random_places():
    """Radiological convention (the patient's left is drawn at large x), lung zones from top to
    bottom, and positions that vary from sample to sample within a site."""
    config = PhantomConfig(image_size=64)
    background = phantom.build_background(config)
    centres: dict = {}
    for site in SITES:
        for i in range(12):
            plan = phantom.plan_sample(phantom.sample_rng(1, "train", i), config)
            x0, y0, x1, y1 = render(config, background, plan, planned(site, i)).boxes[site.name]
            centres.setdefault(site, []).append(((x0 + x1) / 2, (y0 + y1) / 2))
    for site, points in centres.items():
        x = np.array(points)[:, 0]
        if site.side == "left":
            assert x.min() > 32, site
        elif site.side == "right":
            assert x.max() < 32, site
    for name, side in itertools.product(LUNG, phantom.SIDES):
        ys = [np.array(centres[phantom.Site(name, side, zone)])[:, 1] for zone in phantom.ZONES]
        assert ys[0].mean() + 4 < ys[1].mean() < ys[2].mean() - 4, (name, side)
        for zone in phantom.ZONES:
            spread = np.array(centres[phantom.Site(name, side, zone)]).std(axis=0)
            assert spread.max() >= 1.5, (name, side, zone, spread)  # not one fixed place


def test_image_free_prior_baseline_is_low_on_the_default_config():
    """The pointing game of "point where the finding usually is", from train boxes onto test
    boxes of the default (small) config: at most 0.35 at TIER-tiny's 8x8 patch grid and at the
    pixel level, where tier_openclip.evaluation.grounding computes its prior (fewer samples than the preset
    to stay fast; the full preset measures 0.32 / 0.33)."""
    config = PhantomConfig.preset("small")
    train, test = phantom.split_boxes(config, "train", 400), phantom.split_boxes(config, "test", 200)
    patches = phantom.prior_pointing(train, test, config.image_size)
    pixels = phantom.prior_pointing(train, test, config.image_size, grid=config.image_size)
    assert patches["overall"] <= 0.35 and pixels["overall"] <= 0.35, (patches, pixels)
    assert patches["per_finding"]["cardiomegaly"] == 1.0  # the one category with a fixed place
    assert max(patches["per_finding"][name] for name in LUNG) <= 0.3, patches
    assert max(patches["per_finding"][name] for name in LATERAL) <= 0.65, patches  # one of two sides
    # The Python entry point: the first samples of each split, in order.
    first = [int(phantom.split_labels(config, split)[:n].sum()) for split, n in (("train", 40), ("test", 20))]
    assert phantom.prior_pointing_baseline(config, 40, 20) == phantom.prior_pointing(
        train[: first[0]], test[: first[1]], config.image_size)


def test_make_sample_is_pure_given_the_generator():
    config = PhantomConfig(image_size=64)
    background = phantom.build_background(config)
    a = phantom.make_sample(phantom.sample_rng(0, "test", 5), config, background)
    b = phantom.make_sample(phantom.sample_rng(0, "test", 5), config, background)
    c = phantom.make_sample(phantom.sample_rng(0, "test", 6), config, background)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.boxes == b.boxes
    assert not np.array_equal(a.image, c.image)


# ------------------------------------------------------------------ phrase bank and captions

TERMS = {"opacity": "opacity", "bulla": "bulla", "pleural effusion": "pleural effusion",
         "cardiomegaly": "cardiomegaly", "pneumothorax": "pneumothorax"}
# Independent restatement of what each negative sentence rules out (category, side or None).
DENIALS = [
    (r"^(there is )?no (opacity|bulla|pleural effusion|cardiomegaly|pneumothorax)( is seen)?\.$", None),
    (r"^no focal consolidation\.$", "opacity"),
    (r"^the costophrenic angles are sharp\.$", "pleural effusion"),
    (r"^heart size is normal\.$", "cardiomegaly"),
]
SIDE_DENIAL = re.compile(r"^no (right|left) (pleural effusion|pneumothorax)\.$")
NORMAL = re.compile(r"^(no acute cardiopulmonary (process|abnormality)|normal chest radiograph)\.$")


def sentences(caption: str) -> list[str]:
    return [s.strip().lower() for s in re.split(r"(?<=\.)\s+", caption) if s.strip()]


def test_prompts_are_the_phrase_banks_and_the_evaluators_defaults():
    from tier_openclip.evaluation.prompts import resolve_prompts, validate_prompts

    prompts = phantom.prompt_set()
    assert validate_prompts(prompts) == prompts == resolve_prompts(FINDING_NAMES)  # "{x}" vs "no {x}"
    assert {name: p["positive"] for name, p in prompts.items()} == {n: [t] for n, t in TERMS.items()}
    for site in SITES:
        spec = FINDINGS_BY_NAME[site.name]
        for severity, size in itertools.product(spec.severities, np.linspace(*next(iter(spec.severities.values())), 5)):
            finding = PlannedFinding(*site, severity, float(size), 1.0, 0, "")
            options = phantom.phrase_options(finding)
            assert options[0] == TERMS[site.name]  # the bare term, as the prompt says it
            assert len(options) > 1
            for phrase in options[1:]:  # the located phrases say where
                assert phrase == phrase.lower() and TERMS[site.name] in phrase, phrase
                assert all(word in phrase.split() for word in (site.side, site.zone) if word), (site, phrase)
                if site.name in LUNG:
                    assert f"{site.zone} zone" in phrase


def test_captions_name_every_present_finding_where_it_is_and_deny_only_absent_ones():
    config = PhantomConfig(image_size=64)
    normal_captions = set()
    for i in range(1500):
        plan = phantom.plan_sample(phantom.sample_rng(0, "train", i), config)
        present = {f.name: f for f in plan.findings}
        said = sentences(plan.caption)
        assert said and plan.caption.endswith(".")
        for f in plan.findings:  # its phrase, in one sentence that is not a negation
            assert sum(f.phrase in s and not s.startswith(("no ", "there is no")) for s in said) == 1, plan.caption
            assert f.phrase in phantom.phrase_options(f)
        for s in said:
            if any(f.phrase in s for f in plan.findings) and not s.startswith(("no ", "there is no")):
                continue
            if NORMAL.match(s):
                assert not present, plan.caption
                continue
            side_denial = SIDE_DENIAL.match(s)
            if side_denial:  # the other side of a present lateralised finding
                side, name = side_denial.groups()
                assert name in present and present[name].side != side, plan.caption
                continue
            matches = [(m, name) for pattern, name in DENIALS if (m := re.match(pattern, s))]
            assert len(matches) == 1, f"unrecognised sentence {s!r} in {plan.caption!r}"
            m, name = matches[0]
            name = name or m.group(2)
            assert name not in present, plan.caption
        if not present:
            normal_captions.add(plan.caption)
    assert len(normal_captions) >= 20  # wording varies


def test_captions_speak_the_prompts_language():
    """The CheXzero test ("{x}" vs "no {x}") asks what the captions taught: every positive
    caption has the term, about half of the captions without the finding say "no {term}", and
    none with it does."""
    config = PhantomConfig()
    with_it = {name: [] for name in FINDING_NAMES}
    without = {name: [] for name in FINDING_NAMES}
    for i in range(2000):
        plan = phantom.plan_sample(phantom.sample_rng(0, "train", i), config)
        present = {f.name for f in plan.findings}
        text = plan.caption.lower()
        for name, term in TERMS.items():
            (with_it if name in present else without)[name].append((term in text, f"no {term}" in text))
    for name in FINDING_NAMES:
        assert all(has for has, _ in with_it[name]) and not any(neg for _, neg in with_it[name]), name
        negated = np.mean([neg for _, neg in without[name]])
        assert 0.35 <= negated <= 0.65, (name, negated)


def test_report_structure_affirms_each_finding_once():
    rng = np.random.default_rng(0)
    for _ in range(500):
        sites = phantom.sample_sites(rng, PhantomConfig())
        findings = [planned(site, int(rng.integers(4))) for site in sites]
        report = phantom.report_sentences(rng, findings)
        assert sorted(n for s in report for n in s.affirms) == sorted(s.name for s in sites)
        assert not set().union(*(s.denies for s in report)) & {s.name for s in sites}


def test_no_caption_is_truncated_by_a_64_token_context():
    """Worst case over every compatible pair of sites, severity and wording: the longest positive
    sentences (with the other side's negation) plus the longest negation of each absent category
    fit TIER-tiny's context (64 minus start/end)."""
    from open_clip.tokenizer import SimpleTokenizer

    encode = SimpleTokenizer().encode
    longest = lambda texts: max(len(encode(t)) for t in texts)  # noqa: E731
    bulla = FINDINGS_BY_NAME["bulla"]
    sizes = np.linspace(*bulla.severities[None], 50)  # every centimetre value a caption can state
    positive = {}  # site -> its longest positive sentence(s), over every severity, size and wording
    for site in SITES:
        spec = FINDINGS_BY_NAME[site.name]
        variants = [PlannedFinding(*site, sev, size, 1.0, 0, "") for sev in spec.severities
                    for size in (sizes if site.name == "bulla" else [sum(spec.severities[sev]) / 2])]
        phrases = {p for v in variants for p in phantom.phrase_options(v)}
        positive[site] = max(longest(phantom.positive_sentences(site.name, p)) for p in phrases)
        if site.name in LATERAL:
            positive[site] += len(encode(phantom.other_side_sentence(site.name, site.side)))
    negative = {name: longest(phantom.negative_sentences(name)) for name in FINDING_NAMES}
    sets = [sites for k in range(3) for sites in itertools.combinations(SITES, k)
            if all(phantom.compatible(a, b) for a, b in itertools.combinations(sites, 2))]
    worst = 0
    for sites in sets:
        total = sum(positive[site] for site in sites)
        total += sum(negative[n] for n in FINDING_NAMES if n not in {s.name for s in sites})
        if not sites:
            total += longest(phantom.NORMAL_IMPRESSIONS)
        worst = max(worst, total)
    assert worst <= 62, worst


# ------------------------------------------------------------------ open_clip


def test_shards_load_through_open_clips_webdataset_pipeline(written):
    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset

    from tier_openclip.models import register_model_configs

    out, summary = written
    register_model_configs()
    _, preprocess_train, _ = open_clip.create_model_and_transforms("TIER-tiny")
    tokenizer = open_clip.get_tokenizer("TIER-tiny")
    args = argparse.Namespace(
        train_data=summary["train_shards"], val_data=None, train_num_samples=None, batch_size=4, workers=0,
        seed=0, world_size=1, rank=0, dataset_resampled=False, train_data_upsampling_factors=None,
    )
    data = get_wds_dataset(args, preprocess_train, is_train=True, epoch=0, tokenizer=tokenizer)
    assert data.dataloader.num_samples == 12  # 10 from sizes.json, rounded up to whole batches
    batches = list(data.dataloader)
    assert len(batches) == data.dataloader.num_batches == 3
    images, texts = batches[0]
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert texts.shape == (4, 64) and texts.dtype == torch.long
    assert (texts[:, 0] == tokenizer.sot_token_id).all()


# ------------------------------------------------------------------ backgrounds


def lung_and_mediastinum(background: phantom.Background) -> tuple[float, float]:
    image, anatomy = background.image, background.anatomy
    size = image.shape[0]
    lungs = np.maximum(anatomy.lung_mask("right", size), anatomy.lung_mask("left", size)) > 0.9
    x0 = anatomy.lung_box("right")[2] * size
    x1 = anatomy.lung_box("left")[0] * size
    y0, y1 = (anatomy.lung_box("right")[1] + 0.1) * size, anatomy.heart[1] * size - anatomy.heart[3] * size
    mediastinum = image[int(y0) : int(y1), int(x0) + 2 : int(x1) - 2]
    return float(image[lungs].mean()), float(mediastinum.mean())


@needs_real
def test_real_anatomy_is_displayed_the_right_way_round():
    """MONOCHROME1 inverted to the usual display (by data_prep's DICOM pipeline): aerated lungs
    dark, mediastinum bright."""
    background = phantom.build_background(PhantomConfig(use_real_anatomy=True))
    assert background.source == "RG1_UNCI.dcm"
    lungs, mediastinum = lung_and_mediastinum(background)
    assert lungs < 0.4 < 0.6 < mediastinum
    assert PhantomConfig().real_anatomy() is False  # an opt-in: the default is the same everywhere


def test_procedural_background_and_the_opt_in_without_pydicom_data(monkeypatch):
    monkeypatch.setattr(phantom.anatomy, "real_anatomy_path", lambda: None)
    config = PhantomConfig(image_size=64)  # the default, installed or not
    background = phantom.build_background(config)
    assert background.source == "procedural"
    lungs, mediastinum = lung_and_mediastinum(background)
    assert lungs < 0.4 < 0.6 < mediastinum
    sample = phantom.make_sample(phantom.sample_rng(0, "train", 1), config, background)
    assert sample.image.shape == (64, 64) and 20 < sample.image.mean() < 200
    with pytest.raises(FileNotFoundError, match="pydicom-data"):
        phantom.build_background(PhantomConfig(use_real_anatomy=True))

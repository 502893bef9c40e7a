"""The phantom chest X-ray dataset: determinism, label balance, boxes that hold their drawings,
honest captions, open_clip's WebDataset pipeline, and both backgrounds."""

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

from tier_openclip import phantom
from tier_openclip.data_prep import shards
from tier_openclip.phantom import FINDINGS, FINDING_NAMES, PhantomConfig, PlannedFinding

HAS_REAL = phantom.real_anatomy_path() is not None
needs_real = pytest.mark.skipif(not HAS_REAL, reason="pydicom-data not installed")
BACKGROUNDS = [pytest.param(True, id="real", marks=needs_real), pytest.param(False, id="procedural")]


def tiny(seed: int = 0, **overrides) -> PhantomConfig:
    return PhantomConfig(**{"num_train": 10, "num_test": 8, "shard_size": 4, "seed": seed, **overrides})


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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
    assert (summary["num_train"], summary["num_test"], summary["eval_dir"]) == (10, 8, str(out / "test_eval"))

    with tarfile.open(out / "test" / "test-000000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:3]] == ["test-000000.json", "test-000000.png", "test-000000.txt"]
        assert {m.mtime for m in members} == {0}  # reproducible archives
        record = json.loads(tar.extractfile("test-000000.json").read())
        png = tar.extractfile("test-000000.png").read()
    assert record["split"] == "test" and record["seed"] == 0 and record["index"] == 0
    assert record["boxes"] == {f["name"]: f["box"] for f in record["findings"]}
    assert (out / "test_eval" / "images" / "test-000000.png").read_bytes() == png

    meta = json.loads((out / "test_eval" / "meta.json").read_text())
    assert meta["dataset"] == "phantom" and meta["labels"] == list(FINDING_NAMES)
    assert meta["prompts"] == {s.name: s.prompt for s in FINDINGS}
    from tier_openclip.evaluate import read_eval_set  # the zero-shot evaluator reads it as is

    eval_set = read_eval_set(out / "test_eval")
    assert eval_set.labels == list(FINDING_NAMES) and len(eval_set.images) == 8
    with open(out / "test_eval" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and list(rows[0]) == ["image", *FINDING_NAMES]
    assert all((out / "test_eval" / r["image"]).is_file() for r in rows)
    for name in FINDING_NAMES:
        positives = sum(int(r[name]) for r in rows)
        assert meta["counts"][name] == {"positive": positives, "negative": 8 - positives, "unknown": 0}
    with open(out / "test_eval" / "boxes.csv", newline="") as f:
        boxes = list(csv.DictReader(f))
    assert len(boxes) == sum(int(r[n]) for r in rows for n in FINDING_NAMES)
    for b in boxes:
        row = next(r for r in rows if r["image"] == b["image"])
        assert row[b["finding"]] == "1" and b["prompt"] == phantom.FINDINGS_BY_NAME[b["finding"]].prompt


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
    (rerun / "test_eval" / "images" / "test-000099.png").write_bytes(b"stale")
    again = phantom.write_phantom_dataset(rerun, tiny(), progress=False)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in rerun.glob("*/*.tar")} == stats  # kept as they were
    assert files(rerun) == before
    assert again["test_shards"] == str(rerun / "test" / "test-{000000..000001}.tar")
    assert (again["counts"], again["num_train"], again["num_test"]) == (summary["counts"], 10, 8)


# ------------------------------------------------------------------ labels and sampling


def test_small_preset_has_enough_positives_and_negatives_of_every_finding():
    config = PhantomConfig.preset("small")
    assert (config.image_size, config.num_train, config.num_test) == (64, 2000, 400)
    labels = phantom.split_labels(config, "test")
    assert labels.shape == (400, len(FINDINGS))
    positives = labels.sum(0)
    assert positives.min() >= 25 and (400 - positives).min() >= 300, dict(zip(FINDING_NAMES, positives))
    counts = labels.sum(1)
    assert set(counts) == {0, 1, 2}
    for pair in phantom.INCOMPATIBLE:
        columns = [FINDING_NAMES.index(n) for n in pair]
        assert not labels[:, columns].all(1).any()


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
    with pytest.raises(ValueError):
        PhantomConfig(finding_weights={"pneumonia": 1.0})
    only = PhantomConfig(finding_weights={n: float(n == "cardiomegaly") for n in FINDING_NAMES})
    names = {phantom.sample_finding_names(phantom.sample_rng(0, "train", i), only) for i in range(50)}
    assert names == {(), ("cardiomegaly",)}


# ------------------------------------------------------------------ drawings and boxes


def planned(spec, index: int) -> PlannedFinding:
    severity = list(spec.severities)[index % len(spec.severities)]
    low, high = spec.severities[severity]
    return PlannedFinding(spec.name, severity, (low + high) / 2, sum(spec.density) / 2, seed=100 + index)


@pytest.mark.parametrize("real", BACKGROUNDS)
@pytest.mark.parametrize("size", [64, 128])
def test_each_box_holds_its_drawing(real, size):
    """Render a plan with and without one finding: the pixels that change are the box's."""
    config = PhantomConfig(image_size=size, use_real_anatomy=real)
    background = phantom.build_background(config)
    for spec in FINDINGS:
        for i in range(3):
            plan = phantom.plan_sample(phantom.sample_rng(7, "train", i), config)
            with_it = phantom.render_sample(dataclasses.replace(plan, findings=(planned(spec, i),)), config, background)
            without = phantom.render_sample(dataclasses.replace(plan, findings=()), config, background)
            x0, y0, x1, y1 = box = with_it.boxes[spec.name]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, (spec.name, box)
            # Every lesion spans at least one 8x8 ViT patch's worth of pixels at 64 px; sizes scale.
            assert min(x1 - x0, y1 - y0) >= 8 * size / 64, (spec.name, box)
            diff = np.abs(with_it.image.astype(int) - without.image.astype(int))
            inside = np.zeros_like(diff, dtype=bool)
            inside[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
            assert np.percentile(diff[y0:y1, x0:x1], 90) >= 20, (spec.name, box)  # visibly drawn there
            assert diff[inside].sum() >= 0.9 * diff.sum(), (spec.name, box)  # and (almost) only there


def test_left_is_on_the_image_right():
    """Radiological convention: the patient's left side is drawn at large x."""
    config = PhantomConfig(image_size=64)
    background = phantom.build_background(config)
    plan = phantom.plan_sample(phantom.sample_rng(0, "train", 0), config)
    for spec in FINDINGS:
        sample = phantom.render_sample(dataclasses.replace(plan, findings=(planned(spec, 0),)), config, background)
        x0, _, x1, _ = sample.boxes[spec.name]
        centre = (x0 + x1) / 2
        if spec.side == "left":
            assert centre > 32, spec.name
        elif spec.side == "right":
            assert centre < 32, spec.name


def test_make_sample_is_pure_given_the_generator():
    config = PhantomConfig(image_size=64)
    background = phantom.build_background(config)
    a = phantom.make_sample(phantom.sample_rng(0, "test", 5), config, background)
    b = phantom.make_sample(phantom.sample_rng(0, "test", 5), config, background)
    c = phantom.make_sample(phantom.sample_rng(0, "test", 6), config, background)
    assert a.image.dtype == np.uint8 and a.image.shape == (64, 64)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.boxes == b.boxes
    assert not np.array_equal(a.image, c.image)


# ------------------------------------------------------------------ captions

# Independent restatement of what each negative phrase rules out.
OPACITIES = {n for n in FINDING_NAMES if "opacity" in n}
PARENCHYMA = OPACITIES | {"left upper zone mass"}
EFFUSIONS = {"right pleural effusion", "left pleural effusion"}
DENIALS = {
    r"no acute|normal chest radiograph": set(FINDING_NAMES),
    r"lungs are clear": PARENCHYMA,
    r"right lung is clear": {n for n in PARENCHYMA if n.startswith("right")},
    r"left lung is clear": {n for n in PARENCHYMA if n.startswith("left")},
    r"no focal (consolidation|airspace opacity)": OPACITIES,
    r"no discrete pulmonary mass": {"left upper zone mass"},
    r"^no pleural effusion|costophrenic angles are sharp|or pleural effusion": EFFUSIONS,
    r"no right pleural effusion|right costophrenic angle is sharp": {"right pleural effusion"},
    r"no left pleural effusion|left costophrenic angle is sharp": {"left pleural effusion"},
    r"no pneumothorax|or pneumothorax": {"right pneumothorax"},
    r"heart size|silhouette is normal": {"cardiomegaly"},
}


def sentences(caption: str) -> list[str]:
    return [s.strip().lower() for s in re.split(r"(?<=\.)\s+", caption) if s.strip()]


def test_captions_name_every_present_finding_and_deny_only_absent_ones():
    config = PhantomConfig(image_size=64)
    normal_captions = set()
    for i in range(1500):
        plan = phantom.plan_sample(phantom.sample_rng(0, "train", i), config)
        present = {f.name for f in plan.findings}
        said = sentences(plan.caption)
        assert said and plan.caption.endswith(".")
        for name in present:
            spec = phantom.FINDINGS_BY_NAME[name]
            assert any(
                (spec.side is None or spec.side in s) and (spec.zone is None or spec.zone in s)
                and any(k in s for k in spec.keywords) and not s.startswith("no ")
                for s in said
            ), (name, plan.caption)
        for s in said:
            if s.startswith("no ") or re.search(r"normal|clear|sharp", s):
                denied = set().union(*(names for pattern, names in DENIALS.items() if re.search(pattern, s)))
                assert denied, f"unrecognised negative sentence {s!r}: add it to DENIALS"
                assert not denied & present, (plan.caption, present)
        if not present:
            normal_captions.add(plan.caption)
    assert len(normal_captions) >= 20  # wording varies


def test_report_structure_affirms_each_finding_once():
    rng = np.random.default_rng(0)
    for _ in range(500):
        names = phantom.sample_finding_names(rng, PhantomConfig())
        findings = [planned(phantom.FINDINGS_BY_NAME[n], int(rng.integers(4))) for n in names]
        report = phantom.report_sentences(rng, findings)
        affirmed = [n for s in report for n in s.affirms]
        assert sorted(affirmed) == sorted(names)
        assert not set().union(*(s.denies for s in report)) & set(names)


def test_no_caption_is_truncated_by_a_64_token_context():
    """Worst case over every finding set, severity and wording: the longest positive sentences
    plus the longest negative of each section fit TIER-tiny's context (64 minus start/end)."""
    from open_clip.tokenizer import SimpleTokenizer

    encode = SimpleTokenizer().encode
    longest = lambda texts: max(len(encode(t)) for t in texts)  # noqa: E731
    mass = phantom.FINDINGS_BY_NAME["left upper zone mass"]
    sizes = np.linspace(*mass.severities[None], 50)  # every centimetre value a caption can state
    sets = [names for k in range(3) for names in itertools.combinations(FINDING_NAMES, k)
            if frozenset(names) not in phantom.INCOMPATIBLE]
    worst = 0
    for names in sets:
        total = 0
        for name in names:
            spec = phantom.FINDINGS_BY_NAME[name]
            variants = [PlannedFinding(name, sev, size, 1.0, 0) for sev in spec.severities
                        for size in (sizes if spec.kind == "mass" else [sum(spec.severities[sev]) / 2])]
            total += max(longest(phantom.positive_options(v)) for v in variants)
        negatives = phantom.negative_options(frozenset(names))
        total += sum(longest(s.text for s in options) for options in negatives if options)
        if not names:
            total += longest(phantom.NORMAL_IMPRESSIONS)
        worst = max(worst, total)
    assert worst <= 62, worst


# ------------------------------------------------------------------ open_clip


def test_shards_load_through_open_clips_webdataset_pipeline(written):
    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset

    from tier_openclip.plugin import register_model_configs

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
    """MONOCHROME1 inverted to the usual display: aerated lungs dark, mediastinum bright."""
    background = phantom.build_background(PhantomConfig(use_real_anatomy=True))
    assert background.source == "RG1_UNCI.dcm"
    lungs, mediastinum = lung_and_mediastinum(background)
    assert lungs < 0.4 < 0.6 < mediastinum
    assert PhantomConfig().real_anatomy() is True  # default uses it when installed


def test_procedural_fallback(monkeypatch):
    monkeypatch.setattr(phantom, "real_anatomy_path", lambda: None)
    config = PhantomConfig(image_size=64)  # use_real_anatomy=None: falls back when absent
    background = phantom.build_background(config)
    assert background.source == "procedural"
    lungs, mediastinum = lung_and_mediastinum(background)
    assert lungs < 0.4 < 0.6 < mediastinum
    sample = phantom.make_sample(phantom.sample_rng(0, "train", 1), config, background)
    assert sample.image.shape == (64, 64) and 20 < sample.image.mean() < 200
    with pytest.raises(FileNotFoundError, match="pydicom-data"):
        phantom.build_background(PhantomConfig(use_real_anatomy=True))

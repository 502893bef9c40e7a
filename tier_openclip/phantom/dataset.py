"""Writing the phantom dataset: WebDataset shards and the test split as a grounding set.

Shards go through data_prep's writer (data_prep/shards.py), the one ``tier-openclip prep`` uses:
a shard is written under a temporary name and renamed when complete, its record (plan digest,
keys, size, SHA-256) lands in OUT/.prep-state/, tar headers are fixed (owner, mode, mtime 0),
and a later run into the same folder verifies finished shards and keeps the good ones.

The test split is then copied out of its shards into ``test_eval/``, a folder in the project's
evaluation layout that is both a zero-shot set (labels.csv, as ``tier-openclip eval zeroshot``
reads) and a grounding set (boxes.csv, prior_boxes.csv, as ``tier-openclip eval grounding``
reads; data_prep/eval_layout.py writes it). Every sample's json records its findings' boxes, so the
train split's boxes (prior_boxes.csv) are read back from the shards too, on every run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data_prep import shards
from ..data_prep.atomic import json_bytes, write_bytes_atomic, write_json_atomic
from .anatomy import build_background
from .findings import FINDING_NAMES, FINDINGS
from .reports import prompt_set
from .sampling import SUMMARY_EXCLUDES, PhantomConfig, make_sample, prior_pointing, sample_rng
from .raster import png_bytes
from .segset import SEG_TARGET, seg_dir_name, write_seg_set

EVAL_DIR = "test_eval"
_COUNT_FIELDS = ("num_train", "num_test", "shard_size")  # decide which samples, not their bytes


@dataclass(frozen=True)
class _ShardTask:
    """One sample to render, as data_prep's shard planner and writer take it."""

    key: str  # f"{split}-{index:06d}": the sample's __key__
    config: PhantomConfig
    split: str
    index: int


@dataclass(frozen=True)
class _Rendered:
    """A rendered sample, in the shape data_prep's ``write_shards`` expects of a render result."""

    key: str
    files: dict[str, bytes]  # "png", "txt" (caption), "json" (findings, boxes, labels)
    reason: str | None = None
    detail: str = ""
    notes: tuple[str, ...] = ()


def _render_task(task: _ShardTask) -> _Rendered:
    """Render and encode one sample (top level, so worker processes can run it)."""
    config, split, index = task.config, task.split, task.index
    background = build_background(config)
    sample = make_sample(sample_rng(config.seed, split, index), config, background)
    record = {
        "key": task.key,
        "split": split,
        "index": index,
        "seed": config.seed,
        "image_size": config.image_size,
        "background": background.source,
        "findings": [{"name": f.name, "phrase": f.phrase, "side": f.side, "zone": f.zone, "severity": f.severity,
                      "box": list(f.box)} for f in sample.findings],
        "boxes": {name: list(box) for name, box in sample.boxes.items()},
        "labels": sample.labels(),
    }
    files = {"png": png_bytes(sample.image), "txt": sample.caption.encode("utf-8"), "json": json_bytes(record)}
    return _Rendered(task.key, files)


def _code_digest() -> str:
    """SHA-256 over this package's source files: a shard of other code is rendered again."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode("utf-8") + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _render_inputs(config: PhantomConfig, background: str) -> str:
    """What a sample's bytes depend on besides its split and index: the config (less the counts),
    the background, this package's code and the encoders' versions. Part of every shard's plan
    digest, so a rerun keeps a finished shard only when it would render it the same."""
    import PIL

    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _COUNT_FIELDS}
    if settings["finding_weights"] is not None:
        settings["finding_weights"] = dict(sorted(settings["finding_weights"].items()))
    return json.dumps({"config": settings, "background": background, "code": _code_digest(), "numpy": np.__version__,
                       "pillow": PIL.__version__}, sort_keys=True)


def _plan_digest(tasks: Sequence[_ShardTask], inputs: str) -> str:
    digest = hashlib.sha256(inputs.encode("utf-8"))
    for task in tasks:
        digest.update(task.key.encode("utf-8") + b"\0")
    return digest.hexdigest()


def write_phantom_dataset(out_dir: str | Path, config: PhantomConfig, progress: bool = True,
                          workers: int | None = 1, seg_max_train: int | None = None) -> dict:
    """Generate the dataset of ``config`` under ``out_dir``:

    - ``train/train-{000000..}.tar`` and ``test/test-{000000..}.tar``: WebDataset shards of
      ``config.shard_size`` samples (``png`` 8-bit grayscale, ``txt`` caption, ``json`` with
      findings (category, phrase, side, zone, severity, box in pixels), boxes, labels, split,
      seed), plus ``sizes.json`` (shard -> count) in each split folder, which open_clip reads
      for the sample count; written by data_prep's shard writer (records in ``.prep-state/``);
    - ``test_eval/``: the test split as an evaluation set for both zero-shot AUC and phrase
      grounding (the evaluation layout, data_prep/eval_layout.py): ``images/*.png``; ``labels.csv`` (``image``
      relative to test_eval, then one 1/0 column per category); ``boxes.csv`` (image, finding,
      phrase, x0, y0, x1, y1: the caption's own phrase for each finding and its box);
      ``prior_boxes.csv`` (finding, x0, y0, x1, y1 of every TRAIN finding, for the image-free
      prior baseline); ``prompts.json`` (the zero-shot prompts, a prompt file for
      ``tier-openclip eval zeroshot --prompts``); ``meta.json`` (labels, prompts, counts,
      image_size, box_format, orientation, ``grounding_layout``, ``summary_excludes``: the findings
      the grounding evaluator leaves out of its overall figures).
    - ``seg_opacity/``: the opacity masks as a segmentation set (layout ``tier-openclip-seg/1``,
      data_prep/seg_sets.py; phantom/segset.py): the first ``seg_max_train`` train samples (None:
      all) as its train split, the test split as its test split, each image with the pixel
      footprint of its opacity (empty without one), for ``tier-openclip eval segmentation``.

    Same config -> byte-identical files, whatever ``workers`` (tar mtimes are 0, owners fixed;
    every sample has its own generator). ``workers`` > 1 renders in that many spawned processes
    (None: one per CPU, at most 4). A run into a folder that holds an earlier run keeps the
    finished shards that verify against this config (same samples, same code) and rewrites the
    rest; shards and evaluation images the config no longer plans are removed.

    Returns ``{"train_shards", "test_shards"`` (brace patterns for open_clip's ``--train-data``),
    ``"num_train", "num_test", "eval_dir"`` (test_eval), ``"grounding_dir"`` (the same folder:
    ``tier_openclip.evaluation.grounding``'s input), ``"labels"`` (the categories), ``"prompts"``
    ({label: {"positive": [...], "negative": [...]}}, the format of tier_openclip.evaluation.prompts),
    ``"counts"`` (positives and negatives per category in the test split),
    ``"prior_pointing_game"`` (:func:`prior_pointing` of the train boxes on the test boxes, at
    the 8x8 patch grid; its "overall" without ``SUMMARY_EXCLUDES``), ``"grounding"`` (the
    layout), ``"seg_dir"`` (seg_opacity), ``"seg_target"``, ``"background", "image_size",
    "seed", "out_dir"}``.
    """
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    out = Path(out_dir)
    source = build_background(config).source  # fails early when the CR study is required but absent
    summary: dict = {"out_dir": str(out), "image_size": config.image_size, "seed": config.seed,
                     "background": source, "grounding": config.grounding, "labels": list(FINDING_NAMES), "prompts": prompt_set(negations=config.negation_prob > 0)}
    counts = {"train": config.num_train, "test": config.num_test}
    digest = functools.partial(_plan_digest, inputs=_render_inputs(config, source))
    plans = {
        split: shards.plan_shards(
            split, [_ShardTask(f"{split}-{i:06d}", config, split, i) for i in range(count)], config.shard_size, digest
        )
        for split, count in counts.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    with shards.run_lock(out / shards.STATE_DIR):
        records = shards.write_shards(
            out,
            plans["train"] + plans["test"],
            _render_task,
            workers=workers if workers > 1 else 0,  # data_prep: 0 renders in this process
            progress=progress,
            log=print if progress else _quiet,
            # spawn, not fork: the caller may hold torch/OpenMP threads, which a fork can deadlock.
            context=multiprocessing.get_context("spawn"),
        )
        _check_complete(out, plans, records)
        for split, split_plans in plans.items():
            shards.write_sizes(out / split, split_plans, records)
            summary[f"{split}_shards"] = str(out / shards.shard_urls(split, len(split_plans)))
            summary[f"num_{split}"] = counts[split]
        train_boxes = [(f["name"], tuple(f["box"]), f["phrase"])
                       for _, _, record in _samples(out / "train", plans["train"], records, with_images=False)
                       for f in record["findings"]]
        eval_dir, label_counts, test_boxes = _write_eval_set(out, plans["test"], records, config, summary, train_boxes)
        seg_rows = itertools.chain(
            (("train", *sample) for sample in itertools.islice(_samples(out / "train", plans["train"], records),
                                                                seg_max_train)),
            (("test", *sample) for sample in _samples(out / "test", plans["test"], records)))
        seg_dir = write_seg_set(out / seg_dir_name(SEG_TARGET), config, seg_rows, _render_inputs(config, source),
                                background=source)
        summary.update(seg_dir=str(seg_dir), seg_target=SEG_TARGET)
    summary.update(eval_dir=str(eval_dir), grounding_dir=str(eval_dir), counts=label_counts,
                   prior_pointing_game=prior_pointing([(name, box) for name, box, _ in train_boxes], test_boxes,
                                                      config.image_size, exclude=SUMMARY_EXCLUDES))
    return summary


def _quiet(message: str) -> None:
    pass


def _check_complete(out: Path, plans: Mapping[str, Sequence[shards.ShardPlan]],
                    records: Mapping[str, shards.ShardRecord]) -> None:
    """Every planned sample must be in its shard: data_prep's writer records a sample whose
    worker died or hung as a failure and goes on, which a dataset defined by its indices cannot.
    The shards with failures are removed, so that the next run renders them again."""
    failures = []
    for plan in (plan for split_plans in plans.values() for plan in split_plans):
        record = records[plan.name]
        if record.failures:
            failures += record.failures
            (out / plan.split / plan.name).unlink(missing_ok=True)
            (out / shards.STATE_DIR / f"{Path(plan.name).stem}.json").unlink(missing_ok=True)
    if failures:
        key, reason, detail = failures[0]
        raise RuntimeError(f"{len(failures)} phantom sample(s) not rendered, e.g. {key}: {reason} ({detail})")


def _samples(split_dir: Path, plans: Sequence[shards.ShardPlan], records: Mapping[str, shards.ShardRecord],
             with_images: bool = True) -> Iterator[tuple[str, bytes | None, dict]]:
    """(key, png bytes or None, json record) of every sample in the written shards, in order."""
    wanted = (".json", ".png") if with_images else (".json",)
    for plan in plans:
        with tarfile.open(split_dir / plan.name, "r:") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(wanted)}
        for key in records[plan.name].keys:
            yield key, members.get(f"{key}.png"), json.loads(members[f"{key}.json"])


def _write_eval_set(out: Path, plans: Sequence[shards.ShardPlan], records: Mapping[str, shards.ShardRecord],
                    config: PhantomConfig, summary: Mapping, train_boxes: Sequence[tuple[str, tuple, str]]
                    ) -> tuple[Path, dict, list[tuple[str, tuple]]]:
    """``test_eval/`` from the test shards as written. Read back rather than kept from rendering:
    data_prep's writer consumes the render results itself, a rerun keeps finished shards without
    rendering them, and the boxes exist only once a sample is rendered. Reading the shards (small
    PNGs) makes the folder a copy of exactly what the test shards hold, on every run."""
    from ..data_prep.eval_layout import (BOXES_CSV, LABELS_CSV, PRIOR_BOXES_CSV, grounding_meta, write_boxes_csv,
                                         write_labels_csv, write_meta, write_prior_boxes_csv)

    eval_dir = out / EVAL_DIR
    (eval_dir / "images").mkdir(parents=True, exist_ok=True)
    for stale in (eval_dir / "images").glob("test-*.png"):
        stale.unlink()
    label_rows: list[list] = []
    box_rows: list[list] = []
    test_boxes: list[tuple[str, tuple]] = []
    for key, png, record in _samples(out / "test", plans, records):
        image = f"images/{key}.png"
        write_bytes_atomic(eval_dir / image, png)
        label_rows.append([image, *(record["labels"][name] for name in FINDING_NAMES)])
        box_rows += [[image, f["name"], f["phrase"], *f["box"]] for f in record["findings"]]
        test_boxes += [(f["name"], tuple(f["box"])) for f in record["findings"]]

    labels = np.array([row[1:] for row in label_rows], dtype=np.int64)
    counts = {name: {"positive": int(labels[:, j].sum()), "negative": int(len(labels) - labels[:, j].sum()),
                     "unknown": 0} for j, name in enumerate(FINDING_NAMES)}
    write_labels_csv(eval_dir / LABELS_CSV, FINDING_NAMES, label_rows, lineterminator="\n")
    write_boxes_csv(eval_dir / BOXES_CSV, box_rows)
    write_prior_boxes_csv(eval_dir / PRIOR_BOXES_CSV, [[name, *box, phrase] for name, box, phrase in train_boxes])
    write_json_atomic(eval_dir / "prompts.json", summary["prompts"])
    meta = grounding_meta(
        "phantom", FINDING_NAMES, config.image_size,
        competition_labels=[],
        prompts=summary["prompts"],
        counts=counts,
        images=len(label_rows),
        patient_side_convention="PA view: the patient's right is on the image left (small x)",
        regions={s.name: s.region for s in FINDINGS},
        prior_boxes="the findings of the train split, same pixel frame",
        background=summary["background"],
        seed=config.seed,
        grounding_layout=config.grounding,
        summary_excludes=list(SUMMARY_EXCLUDES),
    )
    write_meta(eval_dir, meta)
    return eval_dir, counts, test_boxes

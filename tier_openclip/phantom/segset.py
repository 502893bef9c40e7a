"""The phantom's lesion masks as a segmentation set (``tier-openclip-seg/1``, data_prep/seg_sets.py).

One binary target per set, as SIIM (pneumothorax) and RSNA (opacity): ``SEG_TARGET`` = opacity,
the phantom's analogue of RSNA's lung opacity and its commonest finding with a random place in
either lung. Rows are the same samples the shards hold: the first ``max_train`` of the train split
(all of them by default) as ``train``, the whole test split as ``test``; images are the shards'
PNGs as written, masks are the finding's pixel footprint at the stored size
(``PhantomSample.masks``; empty for an image without it). The probe of
``tier_openclip.evaluation.segmentation`` trains on train and reports on test.

Masks exist only while a sample is rendered, and data_prep's shard writer keeps finished shards
without rendering them, so the samples with the target are rendered again here (a sample is a
pure function of its seed, split and index; the rendered PNG must equal the shard's, or this
fails). The set is rebuilt only when its inputs changed: meta.json records their digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..data_prep.seg_sets import META_JSON, SegSetWriter, read_seg_set
from .anatomy import build_background
from .findings import FINDING_NAMES
from .raster import png_bytes
from .sampling import PhantomConfig, make_sample, sample_rng

SEG_TARGET = "opacity"


def seg_dir_name(target: str) -> str:
    """``seg_<target>`` with spaces as underscores (``seg_opacity``)."""
    return "seg_" + target.replace(" ", "_")


def _digest(inputs: str, target: str, rows: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256(json.dumps({"inputs": inputs, "target": target}, sort_keys=True).encode("utf-8"))
    for split, key in rows:
        digest.update(f"{split}/{key}\0".encode("utf-8"))
    return digest.hexdigest()


def _current(directory: Path, digest: str) -> bool:
    """Whether ``directory`` holds a complete set made from the same inputs (meta.json is written last)."""
    try:
        meta = json.loads((directory / META_JSON).read_text(encoding="utf-8"))
        if meta.get("inputs_digest") != digest:
            return False
        read_seg_set(directory)  # every file there and valid
        return True
    except (OSError, ValueError):
        return False


def write_seg_set(directory: Path, config: PhantomConfig, samples: Iterable[tuple[str, str, bytes, dict]],
                  inputs: str, target: str = SEG_TARGET, background: str = "") -> Path:
    """Write (or keep) the segmentation set of ``target`` from ``samples``: (split, key, png bytes,
    json record) of the written shards, in order. ``inputs`` is what the samples' bytes depend on
    besides their split and index (dataset._render_inputs). Returns ``directory``."""
    from PIL import Image


    if target not in FINDING_NAMES:
        raise ValueError(f"segmentation target {target!r} is not a phantom finding ({', '.join(FINDING_NAMES)})")
    samples = list(samples)
    digest = _digest(inputs, target, ((split, key) for split, key, _, _ in samples))
    if _current(directory, digest):
        return directory
    if directory.exists():
        shutil.rmtree(directory)  # stale: a set of other samples or code
    writer = SegSetWriter(directory, "phantom", target, config.image_size)
    shape = (config.image_size, config.image_size)
    rendered = 0
    for split, key, png, record in samples:
        mask = np.zeros(shape, dtype=bool)
        if record["labels"][target]:
            sample = make_sample(sample_rng(config.seed, split, record["index"]), config, build_background(config))
            if png_bytes(sample.image) != png:  # the digest covers code and config: this is a bug
                raise RuntimeError(f"{key}: rendering it again gave other pixels than its shard holds")
            mask = sample.masks[target]
            rendered += 1
        writer.add(key, Image.open(io.BytesIO(png)), mask, split, key)
    writer.close(inputs_digest=digest, seed=config.seed, background=background, positive_images=rendered,
                 source="the phantom's shards (train and test splits); masks: the finding's footprint, "
                        "PhantomSample.masks")
    return directory

"""Can the phantom benchmark tell? Its sanity checks, measured (not a timed test).

    python benchmarks/phantom_check.py [--size small] [--out DIR]

For one preset (default: the demo's "small") it writes the dataset into ``--out`` (a temporary
folder by default), timing the writer, then measures:

- the image-free prior baseline of the pointing game (train boxes -> test boxes) at TIER-tiny's
  8x8 patch grid and per pixel (as tier_openclip.evaluation.grounding computes its prior); the issue's
  goal is <= 0.35;
- learnability: per category, a logistic regression (scikit-learn, L2, C=0.003) on the raw
  64-px training pixels (each pixel standardised over the training set), ROC AUC on the test
  split; and the same on per-image standardised pixels, which removes the global tone jitter.
  Every lesion sits at a random place, so a linear read of the pixels is a lower bound on what
  a model with shared patch weights can learn; the goal is > 0.85 for every category.

Prints the numbers and writes them to ``benchmarks/results/phantom-<preset>-<cpu-slug>-<n>cpu.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_prep import cpu_model  # the CPU name as every benchmark result records it

RESULTS = Path(__file__).parent / "results"


def train_arrays(data: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    """Pixels (N, H*W) in [0, 1], 0/1 labels (N, L) and findings of the train shards."""
    from PIL import Image

    pixels, targets, boxes = [], [], []
    for shard in sorted((data / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in sorted({name.split(".", 1)[0] for name in members}):
            pixels.append(np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])), np.float32).ravel() / 255)
            record = json.loads(members[f"{key}.json"])
            targets.append([record["labels"][name] for name in labels])
            boxes += [(f["name"], tuple(f["box"])) for f in record["findings"]]
    return np.array(pixels), np.array(targets), boxes


def test_arrays(eval_dir: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray, list]:
    from PIL import Image

    with open(eval_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pixels = np.array([np.asarray(Image.open(eval_dir / r["image"]), np.float32).ravel() / 255 for r in rows])
    targets = np.array([[int(r[name]) for name in labels] for r in rows])
    with open(eval_dir / "boxes.csv", newline="") as f:
        boxes = [(r["finding"], tuple(int(float(r[k])) for k in ("x0", "y0", "x1", "y1"))) for r in csv.DictReader(f)]
    return pixels, targets, boxes


def linear_aucs(train_x, train_y, test_x, test_y, labels, c: float = 0.003) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    mean, std = train_x.mean(0), train_x.std(0) + 1e-3
    a, b = (train_x - mean) / std, (test_x - mean) / std
    return {name: round(float(roc_auc_score(test_y[:, j], LogisticRegression(C=c, max_iter=3000)
                                            .fit(a, train_y[:, j]).decision_function(b))), 3)
            for j, name in enumerate(labels)}


def per_image(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)


def main(argv: list[str] | None = None) -> int:
    from tier_openclip import phantom

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(phantom.PhantomConfig.PRESETS))
    parser.add_argument("--out", type=Path, default=None, help="dataset folder (default: a temporary one)")
    args = parser.parse_args(argv)

    config = phantom.PhantomConfig.preset(args.size)
    with tempfile.TemporaryDirectory() as temporary:
        data = args.out or Path(temporary) / "phantom"
        start = time.perf_counter()
        summary = phantom.write_phantom_dataset(data, config, progress=False)
        write_seconds = time.perf_counter() - start
        labels = summary["labels"]
        train_x, train_y, train_boxes = train_arrays(data, labels)
        test_x, test_y, test_boxes = test_arrays(Path(summary["eval_dir"]), labels)
    result = {
        "preset": args.size,
        "machine": {"cpu_model": cpu_model(), "usable_cpus": len(os.sched_getaffinity(0))},
        "write_seconds": round(write_seconds, 1),
        "counts": summary["counts"],
        "prior_pointing_game": {
            "patches_8x8": phantom.prior_pointing(train_boxes, test_boxes, config.image_size),
            "pixels": phantom.prior_pointing(train_boxes, test_boxes, config.image_size, grid=config.image_size),
        },
        "linear_auc": {"raw": linear_aucs(train_x, train_y, test_x, test_y, labels),
                       "per_image_standardised": linear_aucs(per_image(train_x), train_y, per_image(test_x), test_y,
                                                             labels)},
    }
    print(json.dumps(result, indent=1))
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-") or "cpu"
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"phantom-{args.size}-{slug}-{result['machine']['usable_cpus']}cpu.json"
    target.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One tuning measurement: the grounding preset (small) with the findings' size/density ranges
overridden, CLIP pre-trained as the demo does (TIER-tiny-ResNet, 16 epochs, lr 2e-3, 100 warm-up
steps, batch 32), then zero-shot AUC per finding, the image-free prior's pointing and the
grounding evaluator's own-lesion rate (CAM and token maps).

    python tune.py OUT_DIR NAME EPOCHS ['{"opacity": {"severities": {"patchy": [0.06, 0.08], ...}, "density": [..]}}']

Environment: TUNE_SEED (pre-training --seed, default 0), TUNE_CONFIG (JSON of PhantomConfig
overrides, e.g. '{"negation_prob": 0.3}').

EPOCHS: pre-training epochs (the demo's small preset: 16; fewer to fit a shared CPU, with the
same lr, warm-up and cosine schedule over the shorter run).

Prints one JSON line (also written to OUT_DIR/NAME.json). Renders in this process (workers=1)
so that the overrides apply; the overrides are applied to FINDINGS_BY_NAME, which plan and draw read.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import tier_openclip.phantom.findings as F

out, name, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
for finding, fields in overrides.items():
    fields = {k: ({(None if s == "null" else s): tuple(r) for s, r in v.items()} if k == "severities" else tuple(v))
              for k, v in fields.items()}
    F.FINDINGS_BY_NAME[finding] = dataclasses.replace(F.FINDINGS_BY_NAME[finding], **fields)

import torch  # noqa: E402

from tier_openclip.demo import design  # noqa: E402
from tier_openclip.demo.runs import write_training_csv  # noqa: E402
from tier_openclip.phantom import PhantomConfig, write_phantom_dataset  # noqa: E402
from tier_openclip.phantom.sampling import SUMMARY_EXCLUDES, prior_pointing  # noqa: E402

started = time.time()
config_overrides = json.loads(os.environ.get("TUNE_CONFIG", "{}"))
pretrain_seed = int(os.environ.get("TUNE_SEED", "0"))
config = PhantomConfig.preset("small", seed=0, grounding=True, **config_overrides)
data = write_phantom_dataset(out / name / "data", config, progress=False, workers=1)
data["train_csv"] = str(write_training_csv(data, out / name / "data" / "train_csv"))
data_s = time.time() - started
logs = out / name / "runs"
logs.mkdir(parents=True, exist_ok=True)
stage = design.Stage(epochs, design.SIZES["small"].pretrain.lr, design.SIZES["small"].pretrain.warmup)
command = design.training_command(data, 32, stage, pretrain_seed, logs, "pretrain", ["--loss", "clip"])
checkpoint = logs / "pretrain" / "checkpoints" / f"epoch_{stage.epochs}.pt"
started = time.time()
if not checkpoint.exists():
    with open(out / name / "pretrain.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
train_s = time.time() - started

torch.set_num_threads(2)
from tier_openclip.evaluation.grounding import grounding_evaluate  # noqa: E402
from tier_openclip.evaluation.zeroshot import zeroshot_evaluate  # noqa: E402
from tier_openclip.models import load_model  # noqa: E402

loaded = load_model(design.MODEL, str(checkpoint))
zs = zeroshot_evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, data["eval_dir"], bootstrap=200, seed=0)
result = {"name": name, "epochs": epochs, "steps": stage.epochs * (data["num_train"] // 32), "overrides": overrides,
          "config_overrides": config_overrides, "pretrain_seed": pretrain_seed,
          "data_s": round(data_s), "train_s": round(train_s),
          "counts": data["counts"], "prior_pointing_8x8": data["prior_pointing_game"],
          "auc": {k: round(v["auc"], 3) for k, v in zs["labels"].items()},
          "auc_ci": {k: v.get("ci") for k, v in zs["labels"].items()}}
for mode in ("cam", "tokens"):
    g = grounding_evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, data["grounding_dir"], phrase_mode=mode,
                           bootstrap=200, seed=0)
    result[f"grounding_{mode}"] = {
        "pointing": round(g["overall"]["pointing_game"]["value"], 3),
        "pointing_per_finding": {f: round(v["pointing_game"]["value"], 3) for f, v in g["per_finding"].items()},
        "prior_pointing": g["baselines"]["prior"]["pointing_game"],
        "random_pointing": g["baselines"]["random"]["pointing_game"],
        "own_lesion": {k: g["own_lesion"][k] for k in ("value", "ci", "phrases", "per_finding", "baselines")},
        "summary_excludes": g["summary_excludes"],
    }
(out / name).mkdir(parents=True, exist_ok=True)
(out / f"{name}.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result))

"""`python -m open_clip_train.main --loss tier` end to end, on CPU, in the environment under test.

CI runs these in the fresh virtual environment it makes, with the project installed non-editable
as the README says; the first test checks that this is so. Each run trains a tiny model for a few
steps on WebDataset tars the test writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tower_configs, write_shards

pytestmark = pytest.mark.slow
LOSS_LINE = re.compile(r"Train Epoch: (\d+) .*? Loss: ([0-9.]+)")


def model_dir(tmp_path: Path, kind: str, bert_dir: Path | None = None) -> str:
    """A `local-dir:` model (open_clip_config.json, no weights), usable with or without the plugin."""
    directory = tmp_path / f"model-{kind}"
    directory.mkdir()
    if bert_dir is not None:  # open_clip reads a local-dir model's HF tokenizer from that folder
        for tokenizer_file in bert_dir.glob("*"):
            if "tokenizer" in tokenizer_file.name or tokenizer_file.name in ("vocab.txt", "special_tokens_map.json"):
                shutil.copy(tokenizer_file, directory)
    config = {"model_cfg": tower_configs(bert_dir)[kind], "preprocess_cfg": {}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{directory}"


def train(tmp_path: Path, model: str, shards: str, *extra: str, name: str = "run", env: dict | None = None,
          module: str = "open_clip_train.main", dataset_type: str = "webdataset") -> Path:
    command = [
        sys.executable, "-m", module, "--model", model, "--train-data", shards, "--dataset-type", dataset_type,
        "--train-num-samples", "32", "--batch-size", "8", "--epochs", "1", "--workers", "1", "--lr", "1e-3",
        "--warmup", "1", "--seed", "0", "--log-every-n-steps", "1", f"--logs={tmp_path / 'logs'}", "--name", name,
        "--report-to", "tensorboard", *extra,
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "logs" / name
    assert "Traceback" not in (run_dir / "out.log").read_text()
    return run_dir


def losses(run_dir: Path) -> list[str]:
    return LOSS_LINE.findall((run_dir / "out.log").read_text())


@pytest.fixture
def data(tmp_path):
    return write_shards(tmp_path / "shards", num_shards=2, per_shard=16, size=32)


def test_the_project_under_test_is_a_non_editable_install(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import tier_openclip, tier_openclip.kernels, tier_openclip.data_prep; "
                               "print(tier_openclip.__file__); print(tier_openclip.kernels.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    package_file, kernels_file = result.stdout.split()
    assert "site-packages" in package_file and "site-packages" in kernels_file
    if os.environ.get("CI"):
        from importlib.metadata import distribution

        direct_url = distribution("tier-openclip").read_text("direct_url.json") or "{}"
        assert not json.loads(direct_url).get("dir_info", {}).get("editable", False)


def test_tier_trains_logs_checkpoints_and_resumes(tmp_path, data):
    model = model_dir(tmp_path, "vit")
    run = train(tmp_path, model, data, "--loss", "tier", "--tier-lambda-text", "0.1", "--tier-lambda-image", "0.1")
    log = (run / "out.log").read_text()
    assert "Tier_text_loss" in log and "Tier_image_loss" in log and "Contrastive_loss" in log
    assert re.search(r"tier_text_entropy: [0-9.]+ tier_image_entropy: [0-9.]+", log)
    params = (run / "params.txt").read_text()
    assert "loss: tier" in params and "tier_lambda_text: 0.1" in params and "tier_token_mask: valid" in params
    assert (run / "checkpoints" / "epoch_1.pt").is_file()
    assert list((run / "tensorboard").iterdir())

    resumed = train(tmp_path, model, data, "--loss", "tier", "--epochs", "2", "--resume", "latest")
    log = (resumed / "out.log").read_text()
    assert "resuming checkpoint" in log and "epoch 1" in log
    assert (run / "checkpoints" / "epoch_2.pt").is_file()
    assert [epoch for epoch, _ in losses(resumed)].count("1") == 4


def test_tier_with_gradient_accumulation(tmp_path, data):
    run = train(tmp_path, model_dir(tmp_path, "vit"), data, "--loss", "tier", "--accum-freq", "2")
    assert len(losses(run)) == 2  # 4 micro-batches, 2 optimizer steps
    assert "Tier_image_loss" in (run / "out.log").read_text()


def test_tier_with_a_local_hugging_face_text_tower(tmp_path, data, tiny_bert_dir):
    run = train(tmp_path, model_dir(tmp_path, "hf-bert", tiny_bert_dir), data, "--loss", "tier")
    assert "Tier_text_loss" in (run / "out.log").read_text()
    assert (run / "checkpoints" / "epoch_1.pt").is_file()


def test_local_uniformity_trains(tmp_path, data):
    run = train(tmp_path, model_dir(tmp_path, "vit"), data, "--loss", "local-uniformity")
    log = (run / "out.log").read_text()
    assert "Local_align_loss" in log and "Local_uniform_loss" in log and "Tier_text_loss" not in log


def write_csv_dataset(directory: Path, rows: int = 32) -> str:
    """open_clip's CSV dataset: unlike its WebDataset pipeline (whose sample shuffle seeds from
    pid and time), it gives the same batches for the same --seed, so losses can be compared."""
    import numpy as np
    from PIL import Image

    from helpers import REPORT_WORDS

    directory.mkdir()
    rng = np.random.default_rng(0)
    lines = ["filepath\ttitle"]
    for i in range(rows):
        path = directory / f"{i}.png"
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(path)
        lines.append(f"{path}\t{' '.join(rng.choice(REPORT_WORDS, size=6))}")
    (directory / "train.csv").write_text("\n".join(lines) + "\n")
    return str(directory / "train.csv")


def test_without_loss_flag_the_run_is_stock_open_clip(tmp_path):
    model, csv = model_dir(tmp_path, "vit"), write_csv_dataset(tmp_path / "csv")
    stock = losses(train(tmp_path, model, csv, name="stock", env={"TIER_OPENCLIP_DISABLE": "1"}, dataset_type="csv"))
    plugged = losses(train(tmp_path, model, csv, name="plugged", dataset_type="csv"))
    explicit = losses(train(tmp_path, model, csv, "--loss", "clip", name="explicit", dataset_type="csv"))
    assert len(stock) == 4 and len(set(stock)) == 4
    assert stock == plugged == explicit


def test_explicit_entry_point_takes_the_same_flags_without_the_hook(tmp_path, data):
    run = train(tmp_path, model_dir(tmp_path, "vit"), data, "--loss", "tier", name="explicit-entry",
                env={"TIER_OPENCLIP_DISABLE": "1"}, module="tier_openclip.train")
    assert "Tier_text_loss" in (run / "out.log").read_text()


def test_tier_diagnostics_are_logged_and_leave_training_bit_identical(tmp_path):
    import torch

    model, csv = model_dir(tmp_path, "vit"), write_csv_dataset(tmp_path / "csv")
    common = ("--loss", "tier", "--save-frequency", "1")
    off = train(tmp_path, model, csv, *common, name="off", dataset_type="csv")
    on = train(tmp_path, model, csv, *common, "--tier-diagnostics-every", "2", name="on", dataset_type="csv")

    log = (on / "out.log").read_text()
    steps = re.findall(r"tier-openclip diagnostics step (\d+): diag_entropy_token_patch: [0-9.e-]+ .*"
                       r"diag_top1_mass: [0-9.e-]+ .*diag_tier_grad_ratio: [0-9.e-]+", log)
    assert steps == ["0", "2", "3"]  # 4 steps: every 2nd and the epoch's last
    lines = [json.loads(line) for line in (on / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 3] and all(line["diag_tier_grad_ratio"] > 0 for line in lines)
    assert "diagnostics step" not in (off / "out.log").read_text()

    weights = [torch.load(run / "checkpoints" / "epoch_1.pt", map_location="cpu")["state_dict"] for run in (off, on)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert losses(off) == losses(on)


def test_auto_lambda_hits_its_target_ratio_and_a_resume_keeps_it(tmp_path, data):
    model = model_dir(tmp_path, "vit")
    auto = ("--loss", "tier", "--tier-lambda-text", "auto", "--tier-lambda-image", "auto", "--tier-target-ratio", "0.2",
            "--tier-diagnostics-every", "1")
    run = train(tmp_path, model, data, *auto)
    log = (run / "out.log").read_text()
    chosen = re.findall(r"--tier-lambda-text and --tier-lambda-image auto: λ = ([0-9.e+-]+) \(TIER/contrastive "
                        r"gradient ratio [0-9.e-]+ at λ 1 on the first batch, target 0.2\), fixed", log)
    assert len(chosen) == 1
    # The diagnostics of that same first step measure the chosen λ: the target, up to float32 rounding.
    first = json.loads((run / "checkpoints" / "results.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and abs(first["diag_tier_grad_ratio"] - 0.2) < 1e-4
    recorded = re.findall(r"tier_lambda_(text|image)_auto: ([0-9.e+-]+)", (run / "params.txt").read_text())
    assert [d for d, _ in recorded] == ["text", "image"]
    assert all(abs(float(value) / float(chosen[0]) - 1) < 1e-5 for _, value in recorded)

    resumed = train(tmp_path, model, data, *auto, "--epochs", "2", "--resume", "latest")
    log = (resumed / "out.log").read_text()
    assert re.search(rf"auto: λ = {re.escape(chosen[0])}, as chosen at the start of the resumed run", log)
    assert log.count("on the first batch") == 1  # the first run's line only: no new measurement


def test_converted_biovil_trains_with_the_authors_freezing(tmp_path, data):
    """`--model local-dir:` a `tier-openclip convert biovil` folder trains with --loss tier; the
    authors' freezing flags leave BERT's embeddings and first 8 layers exactly as converted."""
    import torch
    from safetensors.torch import load_file

    from biovil_fixtures import make_biovil_image, make_cxr_bert_specialized
    from tier_openclip.commands.cli import main as cli_main

    image, _ = make_biovil_image(tmp_path / "biovil")
    text_dir, _ = make_cxr_bert_specialized(tmp_path / "cxr-bert")
    out = tmp_path / "converted"
    assert cli_main(["convert", "biovil", "--image-checkpoint", str(image), "--text-model", str(text_dir),
                     "--out", str(out)]) == 0
    # fp32: under --precision amp on CPU, open_clip's GradScaler skipped all 4 steps of this run while
    # lowering its scale (the logit scale stayed 14.286), so nothing would show training
    run = train(tmp_path, f"local-dir:{out}", data, "--loss", "tier", "--force-image-size", "64",
                "--lock-text", "--lock-text-unlocked-layers", "4", "--lock-text-freeze-layer-norm", "--precision", "fp32")
    assert "Tier_text_loss" in (run / "out.log").read_text()
    before = load_file(out / "open_clip_model.safetensors")
    after = torch.load(run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)["state_dict"]
    after = {k.removeprefix("module."): v for k, v in after.items()}
    for name, value in before.items():
        frozen = re.match(r"text\.transformer\.bert\.(embeddings\.|encoder\.layer\.[0-7]\.)", name)
        if frozen:
            assert torch.equal(after[name], value), name
    assert not torch.equal(after["text.transformer.bert.encoder.layer.11.output.dense.weight"],
                           before["text.transformer.bert.encoder.layer.11.output.dense.weight"])
    assert not torch.equal(after["visual.trunk.projector.model.3.weight"], before["visual.trunk.projector.model.3.weight"])

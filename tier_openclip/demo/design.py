"""What the demo trains: presets, arms, and the open_clip_train.main command of every run.

The paper's setting: CLIP is trained once (the shared "pretrained" start), then every compared
loss fine-tunes from that checkpoint (``--pretrained START``: the same weights, a fresh optimiser
and schedule), once per seed. For a seed s every arm gets ``--seed s`` and reads the same
training CSV, so all arms of a seed see the same batches in the same order with the same
augmentation; the difference between two arms of one seed is the loss alone.

Why a CSV and not the WebDataset shards: open_clip's WebDataset pipeline shuffles samples with a
generator seeded from the process id and the clock, so two runs with the same ``--seed`` see
different batches. Its CSV loader shuffles with torch's generator, which ``--seed`` seeds.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tier_openclip.errors import UsageError
from tier_openclip.plugin_args import check_tier_scale

# A CNN, not TIER-tiny's ViT: a cell sees only its neighbourhood, so plain CLIP's maps localise at all
# (model_configs/README.md has the measurement).
MODEL = "TIER-tiny-ResNet"


@dataclass(frozen=True)
class Stage:
    """One kind of training run: epochs, peak learning rate and warm-up steps (cosine decay)."""

    epochs: int
    lr: float
    warmup: int


@dataclass(frozen=True)
class Preset:
    """A --size: the phantom preset (and overrides), the batch size, pre-training and fine-tuning."""

    phantom: str
    batch_size: int
    pretrain: Stage
    finetune: Stage
    phantom_overrides: tuple[tuple[str, object], ...] = ()


# Chosen from measurements on the 2-core dev VM (benchmarks/README.md, "The demo's schedule"):
# at batch 32 CLIP's zero-shot AUC rises for ~1000 steps at lr 2e-3 and then levels off, and
# a lr of 5e-3 left the loss at chance. Fine-tuning is short: it starts from a trained model.
SIZES: dict[str, Preset] = {
    "small": Preset("small", 32, pretrain=Stage(16, 2e-3, 100), finetune=Stage(2, 1e-3, 10)),
    "medium": Preset("medium", 64, pretrain=Stage(20, 2e-3, 200), finetune=Stage(2, 1e-3, 20)),
    "large": Preset("medium", 64, pretrain=Stage(20, 2e-3, 400), finetune=Stage(2, 1e-3, 40),
                    phantom_overrides=(("num_train", 20000),)),
}


@dataclass(frozen=True)
class Arm:
    """One compared loss of the fine-tuning stage."""

    name: str  # as reports show it
    loss: str  # open_clip_train.main --loss
    tier_lambda: float | None = None  # both directions; None: not a TIER arm
    tier_scale: str | None = None  # "1", "10", "logit"
    uniform_weight: float | None = None

    @property
    def slug(self) -> str:
        """The run folder's name (a file name: no '=', no spaces)."""
        if self.loss == "clip":
            return "clip"
        parts = [self.loss if self.uniform_weight is None or self.tier_lambda is None else "tier+uniformity"]
        if self.tier_lambda is not None:
            parts += [f"l{self.tier_lambda:g}", f"s{self.tier_scale}"]
        if self.uniform_weight is not None:
            parts.append(f"u{self.uniform_weight:g}")
        return "-".join(parts)

    def flags(self) -> list[str]:
        flags = ["--loss", self.loss]
        if self.tier_lambda is not None:
            flags += ["--tier-lambda-text", f"{self.tier_lambda:g}", "--tier-lambda-image", f"{self.tier_lambda:g}",
                      "--tier-scale", str(self.tier_scale)]
        if self.uniform_weight is not None:
            flags += ["--lu-uniform-weight", f"{self.uniform_weight:g}"]
        return flags


ARM_NAMES = ("clip", "tier", "local-uniformity", "tier+uniformity")
DEFAULT_ARMS = ("clip", "tier")
SWEEP_LAMBDAS = (0.01, 0.1, 0.5)
SWEEP_SCALES = ("1", "10", "logit")


def make_arm(name: str, tier_lambda: float, tier_scale: str, uniform_weight: float) -> Arm:
    """The arm a --losses name stands for, with the demo's TIER and uniformity settings."""
    if name == "clip":
        return Arm("clip", "clip")
    if name == "tier":
        return Arm("tier", "tier", tier_lambda, tier_scale)
    if name == "local-uniformity":
        return Arm("local-uniformity", "local-uniformity", uniform_weight=uniform_weight)
    if name == "tier+uniformity":
        return Arm("tier+uniformity", "tier", tier_lambda, tier_scale, uniform_weight)
    raise UsageError(f"unknown loss {name!r}; choose from {', '.join(ARM_NAMES)}")


def sweep_arms(lambdas: Sequence[float] = SWEEP_LAMBDAS, scales: Sequence[str] = SWEEP_SCALES) -> list[Arm]:
    """The clip control, then TIER at every λ × scale."""
    return [Arm("clip", "clip")] + [Arm(f"tier λ={lam:g} scale={scale}", "tier", lam, scale)
                                    for lam in lambdas for scale in scales]


def check_scale(text: str) -> str:
    """A --tier-scale value as the training flag takes it: a positive number or 'logit'."""
    if text == "logit":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"--tier-scale {text}: expected a positive number or 'logit'")
    check_tier_scale(value)  # training's own bound: refused here, not inside the training subprocess
    return f"{value:g}"


@dataclass
class DemoOptions:
    out: Path
    size: str = "small"
    seeds: int = 3
    losses: Sequence[str] = DEFAULT_ARMS
    tier_lambda: float = 0.1
    tier_scale: str = "1"
    uniform_weight: float = 1.0  # the plugin's default; 0.1 × t=2 is on the collapse side (README)
    bootstrap: int = 200
    heatmap_images: int = 3
    progress: bool = True
    render_workers: int | None = None  # phantom rendering processes (None: one per core, at most 4)
    pretrain_epochs: int | None = None  # None: the size's
    finetune_epochs: int | None = None
    phantom_overrides: dict = field(default_factory=dict)  # PhantomConfig fields, e.g. num_train

    def preset(self) -> Preset:
        if self.size not in SIZES:
            raise UsageError(f"unknown --size {self.size!r}; choose from {', '.join(SIZES)}")
        return SIZES[self.size]

    def stage(self, kind: str) -> Stage:
        """The pre-training or fine-tuning stage, with the epoch overrides applied."""
        stage: Stage = getattr(self.preset(), kind)
        epochs = self.pretrain_epochs if kind == "pretrain" else self.finetune_epochs
        return Stage(epochs or stage.epochs, stage.lr, stage.warmup)

    def arms(self) -> list[Arm]:
        return [make_arm(name, self.tier_lambda, self.tier_scale, self.uniform_weight) for name in self.losses]


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """open_clip's CSV loader drops the last partial batch."""
    return num_train // batch_size


def training_command(data: dict, batch_size: int, stage: Stage, seed: int, logs: Path, name: str,
                     loss_flags: Sequence[str], start: Path | None = None) -> list[str]:
    """``python -m open_clip_train.main ...`` for one run; ``start``: fine-tune from that checkpoint."""
    # The start-up hook adds --loss to open_clip_train.main; without it, the explicit entry point.
    module = "tier_openclip.train" if os.environ.get("TIER_OPENCLIP_DISABLE") else "open_clip_train.main"
    command = [
        sys.executable, "-m", module, "--model", MODEL,
        "--train-data", str(data["train_csv"]), "--dataset-type", "csv", "--csv-separator", "\t",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--train-num-samples", str(data["num_train"]),
        "--batch-size", str(batch_size), "--epochs", str(stage.epochs), "--lr", f"{stage.lr:g}", "--wd", "0.1",
        "--warmup", str(stage.warmup), "--seed", str(seed), f"--logs={logs}", "--name", name,
        # fp32 and no loader workers: on a small CPU, bf16 autocast and a worker process competing
        # with the training process for the same cores each make a step several times slower.
        "--precision", "fp32", "--workers", "0", "--log-every-n-steps", "1", "--report-to", "",
        "--save-frequency", "0",  # only the last epoch's checkpoint (40 MB each with the optimiser)
    ]
    if start is not None:
        command += ["--pretrained", str(start)]
    return command + list(loss_flags)

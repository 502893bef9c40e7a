"""What the demo trains: presets, arms, and the open_clip_train.main command of every run.

The paper's setting, repeated over N starts: CLIP is pre-trained N times (start s with ``--seed
s``), then every compared loss fine-tunes from each start's checkpoint (``--pretrained START``: the
same weights, a fresh optimiser and schedule) with ``--seed s`` and the same training CSV, so all
arms of a start see the same batches in the same order with the same augmentation: the difference
between two arms of one start is the loss alone, and the spread over starts is the pipeline's
whole noise (pre-training included), not only the fine-tuning's.

Why the starts are pre-trained with FILIP's token-wise term (``--pretrain-loss filip``, the
default; tier_openclip/filip.py): TIER sharpens the token→patch maps, so it can only be judged
on starts whose token maps already ground (the precondition). CLIP's pooled loss alone did not
get there: on the small preset, start 0's token maps pointed at 0.123 against the image-free
prior's 0.147 (precondition failed), while the same start pre-trained with CLIP + FILIP pointed at
0.373 (held), with mean zero-shot AUC 0.629 against CLIP's 0.539 and own-lesion rate 0.941
against 0.664 (benchmarks/results/filip-trial-2026-12-05, one start on the shared 2-core AMD EPYC
VM; per-finding AUC fell for cardiomegaly and pneumothorax, and CAM pointing fell on three
findings, so read it per finding). The FILIP term is pre-training only: every fine-tuning arm
still trains with its own loss. ``--pretrain-loss clip`` keeps plain CLIP starts (and their
old run names).

Why a CSV and not the WebDataset shards: open_clip's WebDataset pipeline shuffles samples with a
generator seeded from the process id and the clock, so two runs with the same ``--seed`` see
different batches. Its CSV loader shuffles with torch's generator, which ``--seed`` seeds.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tier_openclip import openclip_adapter as adapter
from tier_openclip.errors import UsageError
from tier_openclip.training.plugin_args import check_tier_scale

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
# The small preset pre-trains 16 epochs (992 steps). With one two-thread training at a time 16 took
# the default demo 10.4 minutes on the 2-core AMD EPYC VM and 14 were used; one-thread runs side by
# side (runs.run_concurrently) pre-train three starts of 16 epochs in about 245 s, and 16 epochs
# left fewer findings' zero-shot AUCs outside 0.70-0.95 than 14 (benchmarks/README.md, "Three starts").
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
    tier_lambda: float | None = None  # both directions; None: not a TIER arm (or not yet calibrated)
    tier_scale: str | None = None  # "1", "10", "logit"; set for every TIER arm
    uniform_weight: float | None = None
    # A calibrated arm: λ is chosen per start so that TIER's gradient norm is this share of CLIP's
    # on the start checkpoint (pipeline.calibrate); tier_lambda is then that start's λ.
    target_ratio: float | None = None

    @property
    def is_tier(self) -> bool:
        return self.tier_scale is not None

    @property
    def slug(self) -> str:
        """The run folder's name (a file name: no '=', no spaces); a calibrated arm's is the same
        for every start, whatever λ its start gets."""
        if self.loss == "clip":
            return "clip"
        if self.target_ratio is not None:
            return f"tier-calibrated-r{self.target_ratio:g}-s{self.tier_scale}"
        parts = [self.loss if self.uniform_weight is None or self.tier_lambda is None else "tier+uniformity"]
        if self.tier_lambda is not None:
            parts += [f"l{self.tier_lambda:g}", f"s{self.tier_scale}"]
        if self.uniform_weight is not None:
            parts.append(f"u{self.uniform_weight:g}")
        return "-".join(parts)

    def flags(self) -> list[str]:
        if self.is_tier and self.tier_lambda is None:
            raise ValueError(f"arm {self.name}: λ not calibrated yet")
        flags = ["--loss", self.loss]
        if self.tier_lambda is not None:
            flags += ["--tier-lambda-text", f"{self.tier_lambda:g}", "--tier-lambda-image", f"{self.tier_lambda:g}",
                      "--tier-scale", str(self.tier_scale)]
        if self.uniform_weight is not None:
            flags += ["--lu-uniform-weight", f"{self.uniform_weight:g}"]
        return flags


ARM_NAMES = ("clip", "tier-paper", "tier-calibrated", "tier", "local-uniformity", "tier+uniformity")
DEFAULT_ARMS = ("clip", "tier-paper", "tier-calibrated")
SWEEP_LAMBDAS = (0.01, 0.1, 0.5)
SWEEP_SCALES = ("1", "10", "logit")
PAPER_LAMBDA, PAPER_SCALE = 0.1, "1"
# The calibrated arm: TIER's gradient at about 10% of CLIP's (issue 20 §4), at scale 10. Why not
# scale 1: one patch at cosine +1 and 63 at −1 give a top-1 mass of only 0.105 there
# (manipulation.max_top1_mass), so a map cannot sharpen by the decision rule's 0.1; at 10 it can
# reach 1, and the sweep's scale-10 arms did sparsify (top-1 mass 0.20 → 0.68–0.79).
CALIBRATED_RATIO, CALIBRATED_SCALE = 0.1, "10"


def make_arm(name: str, tier_lambda: float, tier_scale: str, uniform_weight: float,
             calibrated_ratio: float = CALIBRATED_RATIO, calibrated_scale: str = CALIBRATED_SCALE) -> Arm:
    """The arm a --losses name stands for, with the demo's TIER and uniformity settings
    (``tier``: --tier-lambda and --tier-scale; ``tier-paper``: λ 0.1, scale 1)."""
    if name == "clip":
        return Arm("clip", "clip")
    if name == "tier-paper":
        return Arm("tier-paper", "tier", PAPER_LAMBDA, PAPER_SCALE)
    if name == "tier-calibrated":
        return Arm("tier-calibrated", "tier", None, calibrated_scale, target_ratio=calibrated_ratio)
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
    """A --tier-scale value as the training flag takes it ('logit' or a number), checked by training's
    own rule (plugin_args.check_tier_scale), so the demo refuses here what the training subprocess
    would refuse later."""
    if text == "logit":
        return text
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--tier-scale {text}: expected a positive number or 'logit'") from None
    check_tier_scale(value)
    return f"{value:g}"


PRETRAIN_LOSSES: tuple[str, ...] = ("clip", "filip")
DEFAULT_PRETRAIN_LOSS = "filip"  # the module docstring says why


def pretrain_flags(loss: str) -> list[str]:
    """The pre-training's loss flags: CLIP's loss, or CLIP's plus FILIP's token-wise term (tier_openclip/filip.py)
    at the plugin's defaults (weight 1, temperature 0.07)."""
    if loss not in PRETRAIN_LOSSES:
        raise UsageError(f"--pretrain-loss {loss}: choose from {', '.join(PRETRAIN_LOSSES)}")
    return ["--loss", "clip"] if loss == "clip" else ["--loss", "filip", "--filip-weight", "1",
                                                      "--filip-temperature", "0.07"]


def run_name(kind: str, seed: int, pretrain_loss: str) -> str:
    """A run's folder name: ``pretrain`` or an arm's slug, and the start. Every run of a FILIP start
    says so, so a rerun into the same --out never reuses a CLIP start's run for it (nor the reverse);
    CLIP starts keep their old names, so existing demo folders stay reusable."""
    tag = "" if pretrain_loss == "clip" else f"{pretrain_loss}-"
    return f"{kind}-{tag}start{seed}"


@dataclass
class DemoOptions:
    out: Path
    size: str = "small"
    starts: int = 3  # pre-trainings, each its own seed; every arm fine-tunes once from each
    pretrain_loss: str = DEFAULT_PRETRAIN_LOSS  # PRETRAIN_LOSSES
    losses: Sequence[str] = DEFAULT_ARMS
    tier_lambda: float = 0.1
    tier_scale: str = "1"
    uniform_weight: float = 1.0  # the plugin's default; 0.1 × t=2 is on the collapse side (README)
    calibrated_ratio: float = CALIBRATED_RATIO
    calibrated_scale: str = CALIBRATED_SCALE
    pin: bool = True  # environment.PINS in the training and evaluation processes
    # The phantom's grounding layout (PhantomConfig.preset(..., grounding=True)): bare finding terms,
    # lung findings anywhere in the lungs, one or two different findings per image, so that only the
    # image says where (image-free prior pointing ≤ 0.15) and the own-lesion rate is defined.
    grounding: bool = True
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
        return [make_arm(name, self.tier_lambda, self.tier_scale, self.uniform_weight, self.calibrated_ratio,
                         self.calibrated_scale) for name in self.losses]


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
        "--train-data", str(data["train_csv"]), *adapter.csv_dataset_flags(), "--train-num-samples", str(data["num_train"]),
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

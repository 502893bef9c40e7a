"""``--tier-lambda-text auto`` / ``--tier-lambda-image auto``: λ chosen so that TIER's gradient is
``--tier-target-ratio`` times the contrastive loss's, measured once on the first batch.

The terms set to auto share one λ, chosen so that their gradient together (on the trainable
parameters, the same measure as ``--tier-diagnostics-every``) has norm R × the contrastive
gradient's; TIER's gradient is exactly linear in λ at fixed weights (diagnostics.lambda_for_ratio),
so one measurement at λ = 1 gives it. The λ is then fixed for the run, logged in one line, written
to the run's params.txt and to checkpoints/tier_auto_lambda.json, which a resumed run reads back
instead of measuring again on a model that has already trained.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

import torch
from torch import Tensor

from tier_openclip.training.diagnostics import gradient_ratio_of_terms, lambda_for_ratio

AUTO = "auto"
RECORD = "tier_auto_lambda.json"
logger = logging.getLogger("tier_openclip")


def auto_directions(args: argparse.Namespace) -> tuple[str, ...]:
    """Which of 'text', 'image' have --tier-lambda-* auto."""
    return tuple(d for d in ("text", "image") if getattr(args, f"tier_lambda_{d}", None) == AUTO)


def _record_paths(args: argparse.Namespace) -> list[str]:
    """Where a chosen λ is looked for: beside the checkpoint resumed from, then this run's checkpoints."""
    paths = []
    if isinstance(getattr(args, "resume", None), str) and os.path.isfile(args.resume):
        paths.append(os.path.join(os.path.dirname(args.resume), RECORD))
    if getattr(args, "checkpoint_path", None):
        paths.append(os.path.join(args.checkpoint_path, RECORD))
    return paths


def recorded_lambda(args: argparse.Namespace) -> float | None:
    """The λ an earlier (resumed) run of this training chose, or None."""
    for path in _record_paths(args):
        if os.path.isfile(path):
            with open(path) as f:
                return float(json.load(f)["lambda"])
    return None


class AutoLambda:
    """The loss's ``lambda_calibration``: on its first call sets the auto λ and removes itself.

    ``params``: the trainable parameters (set by the plugin once the model is known).
    """

    def __init__(self, args: argparse.Namespace, directions: tuple[str, ...], target: float):
        self.args = args
        self.directions = directions
        self.target = target
        self.params: list[Tensor] = []

    def __call__(self, loss: Any, contrastive: Tensor, h_text: Tensor, h_image: Tensor) -> None:
        zero = contrastive.new_zeros(())
        terms = {"contrastive_loss": contrastive,
                 "tier_text_loss": h_text if "text" in self.directions else zero,
                 "tier_image_loss": h_image if "image" in self.directions else zero}
        ratio = torch.tensor(gradient_ratio_of_terms(terms, self.params)["tier_grad_ratio"], dtype=torch.float64,
                             device=contrastive.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(ratio)  # every rank must train with the same λ: the ranks' mean
            ratio /= torch.distributed.get_world_size()
        chosen = lambda_for_ratio(self.target, float(ratio), 1.0)
        set_lambda(loss, self.directions, chosen)
        flags = " and ".join(f"--tier-lambda-{d}" for d in self.directions)
        logger.info("tier-openclip: %s auto: λ = %.6g (TIER/contrastive gradient ratio %.6g at λ 1 on the first "
                    "batch, target %g), fixed for the rest of the run", flags, chosen, float(ratio), self.target)
        if getattr(self.args, "rank", 0) == 0:
            self._record(chosen, float(ratio))

    def _record(self, chosen: float, ratio: float) -> None:
        if not getattr(self.args, "checkpoint_path", None):
            return  # --save-logs off / no --logs: nothing to resume from either
        os.makedirs(self.args.checkpoint_path, exist_ok=True)
        with open(os.path.join(self.args.checkpoint_path, RECORD), "w") as f:
            json.dump({"lambda": chosen, "directions": list(self.directions), "ratio_at_lambda_1": ratio,
                       "target_ratio": self.target}, f)
        params_file = os.path.join(os.path.dirname(self.args.checkpoint_path), "params.txt")
        if os.path.isfile(params_file):
            with open(params_file, "a") as f:
                for d in self.directions:
                    f.write(f"tier_lambda_{d}_auto: {chosen}\n")


def set_lambda(loss: Any, directions: tuple[str, ...], value: float) -> None:
    for d in directions:
        setattr(loss, f"lambda_{d}", value)
    loss.lambda_calibration = None

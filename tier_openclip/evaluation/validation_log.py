"""What the evaluators share during training: the model's own validation transform, and logging
of their figures as open_clip logs its own evaluation (the log, checkpoints/results.jsonl,
TensorBoard and wandb under "val/"); the training diagnostics append to the same results file."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Callable

from tier_openclip import openclip_adapter as adapter


def eval_transforms(model: Any, model_name: str) -> tuple[Callable, Callable]:
    """(tokenizer, validation image transform) of a model in training, as open_clip_train builds
    them: from the model's own preprocess config, not from a new model."""
    tokenizer = adapter.symbol("get_tokenizer")(model_name)
    preprocess_cfg = adapter.symbol("PreprocessCfg")(**adapter.symbol("get_model_preprocess_cfg")(model))
    return tokenizer, adapter.symbol("image_transform_v2")(preprocess_cfg, is_train=False)


def log_validation_metrics(kind: str, metrics: Mapping[str, float], completed_epoch: int, args: Any,
                           tb_writer: Any = None) -> None:
    """Log in-training evaluation figures as open_clip logs its own: the log, a JSON line in
    checkpoints/results.jsonl, TensorBoard and wandb under "val/"."""
    logging.info(f"{kind} Epoch: {completed_epoch} " + "\t".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    append_results({"epoch": completed_epoch, **metrics}, args)
    if tb_writer is not None:
        for name, value in metrics.items():
            tb_writer.add_scalar(f"val/{name}", value, completed_epoch)
    if getattr(args, "wandb", False):
        import wandb

        wandb.log({**{f"val/{name}": value for name, value in metrics.items()}, "epoch": completed_epoch})


def append_results(record: Mapping[str, Any], args: Any) -> None:
    """One JSON line in checkpoints/results.jsonl, where open_clip writes its own evaluation
    (only when the run saves logs)."""
    path = adapter.results_jsonl_path(args)
    if path is not None:
        with open(path, "a+") as f:
            f.write(json.dumps(dict(record)) + "\n")

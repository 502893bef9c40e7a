"""Checks of a model folder before anything is built from it: an ``open_clip_config.json`` that is
broken or absurd, and a folder without (readable) weights, each end in one message instead of a
traceback, an attempt to allocate terabytes, or a silently random model.

open_clip builds whatever a config says and, for ``local-dir:`` folders without a weights file,
only logs a warning and returns random weights. ``check_local_dir`` runs before open_clip sees the
folder (tier_openclip.models calls it for every ``local-dir:`` model, so eval, heatmap, analyze,
push and the Python API all check the same way).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tier_openclip import openclip_adapter as adapter
from tier_openclip.errors import CommandError

CONFIG_NAME = "open_clip_config.json"
CONFIG_MAX_BYTES = 1 << 20  # real configs are ~1 kB; a larger file is not a config

# The largest value each size field may have. Far above every open_clip model (ViT-bigG-14: 48
# layers, width 1664, embed_dim 1280; RN101's deepest stage 23 blocks) and far below what would
# exhaust memory or take hours to build: "10,000 layers" or "embed_dim 1e7" are refused here.
SIZE_LIMITS = {
    "embed_dim": 16_384,
    "width": 16_384,
    "head_width": 16_384,
    "heads": 1_024,
    "layers": 256,  # per tower, or per stage of a ResNet
    "image_size": 4_096,
    "patch_size": 4_096,
    "context_length": 8_192,
    "vocab_size": 1_000_000,
    "mlp_ratio": 64,
}
# An estimate of the parameter count (12·width² per transformer layer at mlp_ratio 4, 17·w² per
# ResNet bottleneck at stage width w, plus the embeddings): 20 billion float32 parameters are
# 80 GB, more than any single GPU holds and 8x the largest open_clip model.
MAX_PARAMETERS = 20e9


def _number(value: Any, where: str, limit: float, integer: bool = True) -> float:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    if not ok or not 0 < value <= limit:
        kind = "a whole number" if integer else "a number"
        raise CommandError(f"{where} is {value!r}: expected {kind} from 1 to {limit:,}; is the config damaged?")
    return float(value)


def _tower_parameters(tower: dict, where: str, embed_dim: float) -> float:
    """Checks the tower's size fields against SIZE_LIMITS and returns its estimated parameter count."""
    sizes: dict[str, Any] = {}
    for field, limit in SIZE_LIMITS.items():
        value = tower.get(field)
        if value is None or field == "embed_dim":
            continue
        if field in ("layers", "image_size") and isinstance(value, (list, tuple)):
            if not 1 <= len(value) <= 8:
                raise CommandError(f"{where}.{field} is a list of {len(value)}: expected 1 to 8 numbers")
            sizes[field] = [_number(v, f"{where}.{field}", limit) for v in value]
        else:
            sizes[field] = _number(value, f"{where}.{field}", limit, integer=field != "mlp_ratio")
    timm_name = tower.get("timm_model_name")
    if timm_name is not None:
        import timm

        if not isinstance(timm_name, str) or not timm.is_model(timm_name):
            raise CommandError(f"{where}.timm_model_name {timm_name!r} is not a model timm {timm.__version__} knows")
    width, layers = sizes.get("width", 0.0), sizes.get("layers", 0.0)
    mlp = sizes.get("mlp_ratio", 4.0)
    if isinstance(layers, list):  # ResNet stages: bottlenecks at width, 2·width, 4·width, 8·width
        body = sum(17 * (width * 2 ** i) ** 2 * n for i, n in enumerate(layers))
    else:
        body = layers * (4 + 2 * mlp) * width ** 2
    image = sizes.get("image_size", 0.0)
    image = max(image) if isinstance(image, list) else image
    patches = (image / sizes["patch_size"]) ** 2 if sizes.get("patch_size") else 0.0
    tokens = sizes.get("vocab_size", 0.0) + sizes.get("context_length", 0.0) + patches
    return body + tokens * width + width * embed_dim


def check_model_config(config: Any, where: str) -> None:
    """CommandError unless ``config`` (an open_clip ``model_cfg``) has sizes within SIZE_LIMITS,
    an estimated parameter count within MAX_PARAMETERS, and timm trunks that timm knows."""
    if not isinstance(config, dict):
        raise CommandError(f"{where} is a JSON {type(config).__name__}, not the object open_clip's model_cfg is")
    embed_dim = _number(config.get("embed_dim"), f"{where}.embed_dim", SIZE_LIMITS["embed_dim"])
    total = 0.0
    for name in ("vision_cfg", "text_cfg"):
        tower = config.get(name, {})
        if not isinstance(tower, dict):
            raise CommandError(f"{where}.{name} is a JSON {type(tower).__name__}, not an object")
        total += _tower_parameters(tower, f"{where}.{name}", embed_dim)
    if total > MAX_PARAMETERS:
        raise CommandError(f"{where} describes a model of about {total:.3g} parameters, above the {MAX_PARAMETERS:.3g} "
                           "this tool builds; is the config damaged?")


def check_local_dir(folder: str | os.PathLike) -> Path:
    """For ``local-dir:FOLDER``: its config is readable, bounded and sane, and it has a weights file.
    Returns the file open_clip would load (tier_openclip.models then reads it as a checkpoint); CommandError
    otherwise (open_clip alone would build a random model, or fail with a traceback)."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CommandError(f"{folder} has no {CONFIG_NAME}: not an open_clip model folder (write one with "
                           "`tier-openclip push --local-dir`)")
    if config_path.stat().st_size > CONFIG_MAX_BYTES:
        raise CommandError(f"{config_path} is {config_path.stat().st_size} bytes; an open_clip config is a few kB")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CommandError(f"{config_path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise CommandError(f"{config_path} has no 'model_cfg' object: not a config open_clip's save_for_hf writes")
    check_model_config(config["model_cfg"], f"{config_path}: model_cfg")
    weights = adapter.symbol("find_checkpoint_in_dir")(folder)
    if weights is None:
        raise CommandError(f"{folder} has no weights file (open_clip_model.safetensors, open_clip_pytorch_model.bin, "
                           "...): open_clip would build the model with random weights; copy the weights in")
    return Path(weights)

"""Every open_clip symbol tier-openclip touches, named in one place.

An open_clip upgrade is a change to this file: ``check_open_clip`` compares the installed
version and internals with what the plugin was written against (3.x) and fails with one clear
message otherwise.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

SUPPORTED_MAJOR = 3
INSTALL_HINT = "pip install 'open_clip_torch>=3.0,<4'"


class OpenClipIncompatible(RuntimeError):
    """The installed open_clip is not one whose internals the plugin knows."""


def _version(module: ModuleType) -> str:
    return getattr(module, "__version__", "unknown")


def open_clip_version() -> str:
    import open_clip

    return _version(open_clip)


# --- open_clip (the library) ---------------------------------------------------------------

# Every open_clip symbol this project uses: name -> "module:attribute".
SYMBOLS = {
    "create_loss": "open_clip:create_loss",  # wrapped: `--loss tier` / `--loss local-uniformity`
    "create_model_and_transforms": "open_clip:create_model_and_transforms",
    "create_model": "open_clip:create_model",
    "get_tokenizer": "open_clip:get_tokenizer",
    "add_model_config": "open_clip:add_model_config",  # registers tier_openclip/model_configs
    "list_models": "open_clip:list_models",
    "push_to_hf_hub": "open_clip:push_to_hf_hub",
    "get_model_config": "open_clip:get_model_config",  # hub export: the config a checkpoint was trained with
    "get_pretrained_cfg": "open_clip:get_pretrained_cfg",  # hub export: a pretrained tag's preprocessing
    "load_checkpoint": "open_clip:load_checkpoint",
    "save_for_hf": "open_clip.push_to_hf_hub:save_for_hf",  # writes exactly what hf-hub:/local-dir: load
    "get_model_preprocess_cfg": "open_clip:get_model_preprocess_cfg",
    "PreprocessCfg": "open_clip.transform:PreprocessCfg",
    "image_transform_v2": "open_clip.transform:image_transform_v2",  # zero-shot eval's val transform
    "ClipLoss": "open_clip.loss:ClipLoss",
    "SigLipLoss": "open_clip.loss:SigLipLoss",
    "CLIP": "open_clip.model:CLIP",
    "CustomTextCLIP": "open_clip.model:CustomTextCLIP",
    "VisionTransformer": "open_clip.transformer:VisionTransformer",
    "TextTransformer": "open_clip.transformer:TextTransformer",
    "text_global_pool": "open_clip.transformer:text_global_pool",
    "ModifiedResNet": "open_clip.modified_resnet:ModifiedResNet",
    "TimmModel": "open_clip.timm_model:TimmModel",
    "HFTextEncoder": "open_clip.hf_model:HFTextEncoder",
}
# Private methods of the towers that token features are built from (tier_openclip/features.py).
TOWER_INTERNALS = {
    "VisionTransformer": ("_embeds", "_pool"),
    "TextTransformer": ("_embeds",),
    "ModifiedResNet": ("stem",),
}
# Functions of open_clip_train the plugin wraps (main.py imports them by name, so they are
# replaced in their modules before main.py runs).
TRAIN_NAMES = {
    "open_clip_train.params": ("parse_args",),
    "open_clip_train.train": ("train_one_epoch", "evaluate"),
}


def symbol(name: str) -> Any:
    """The open_clip object SYMBOLS names, or OpenClipIncompatible saying what is missing."""
    module_name, attr = SYMBOLS[name].split(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise OpenClipIncompatible(
            f"open_clip {open_clip_version()} has no {module_name}.{attr} ({exc}); tier-openclip "
            f"supports open_clip {SUPPORTED_MAJOR}.x. Install it with: {INSTALL_HINT}"
        ) from exc


def check_open_clip() -> None:
    """Raise OpenClipIncompatible unless open_clip is 3.x with the internals the plugin uses."""
    import open_clip

    version = _version(open_clip)
    if not hasattr(open_clip, "create_loss") and hasattr(open_clip, "create_task"):
        raise OpenClipIncompatible(
            f"open_clip {version} replaces create_loss with create_task (open_clip 4.x); "
            f"tier-openclip supports open_clip {SUPPORTED_MAJOR}.x. Install it with: {INSTALL_HINT}"
        )
    if version.split(".")[0] != str(SUPPORTED_MAJOR):
        raise OpenClipIncompatible(
            f"found open_clip {version}, but tier-openclip supports open_clip {SUPPORTED_MAJOR}.x. "
            f"Install a supported version with: {INSTALL_HINT}"
        )
    for name in SYMBOLS:
        if name != "HFTextEncoder":  # needs transformers only when an HF tower is used
            symbol(name)
    for cls_name, methods in TOWER_INTERNALS.items():
        absent = [m for m in methods if not hasattr(symbol(cls_name), m)]
        if absent:
            raise OpenClipIncompatible(
                f"open_clip {version}: {cls_name} lacks {', '.join(absent)}, which tier-openclip "
                f"uses to read token features. Install a supported version with: {INSTALL_HINT}"
            )


def check_open_clip_train() -> dict[str, ModuleType]:
    """Import the open_clip_train modules the plugin wraps, checking they have what it needs."""
    check_open_clip()
    modules = {}
    for module_name, attrs in TRAIN_NAMES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise OpenClipIncompatible(
                f"cannot import {module_name} ({exc}); the training plugin needs open_clip's "
                f"training package. Install it with: {INSTALL_HINT}"
            ) from exc
        absent = [a for a in attrs if not hasattr(module, a)]
        if absent:
            raise OpenClipIncompatible(
                f"{module_name} ({open_clip_version()}) lacks {', '.join(absent)}; "
                f"tier-openclip supports open_clip {SUPPORTED_MAJOR}.x: {INSTALL_HINT}"
            )
        modules[module_name] = module
    return modules


@dataclass
class ContrastiveArgs:
    """The distribution arguments open_clip's losses take."""

    local_loss: bool = False
    gather_with_grad: bool = False
    cache_labels: bool = False
    rank: int = 0
    world_size: int = 1
    use_horovod: bool = False
    dist_impl: str | None = None


def make_contrastive_loss(siglip: bool, dist: ContrastiveArgs):
    """open_clip's own ClipLoss or SigLipLoss, distributed through open_clip's gather."""
    if siglip:
        if dist.use_horovod:
            raise ValueError("open_clip's SigLipLoss does not support Horovod; drop --horovod or --siglip.")
        return symbol("SigLipLoss")(
            cache_labels=dist.cache_labels, rank=dist.rank, world_size=dist.world_size, dist_impl=dist.dist_impl
        )
    return symbol("ClipLoss")(
        local_loss=dist.local_loss,
        gather_with_grad=dist.gather_with_grad,
        cache_labels=dist.cache_labels,
        rank=dist.rank,
        world_size=dist.world_size,
        use_horovod=dist.use_horovod,
    )


def contrastive_args_from(args: Any) -> ContrastiveArgs:
    """Distribution settings from open_clip_train's parsed args (as its create_loss reads them)."""
    return ContrastiveArgs(
        local_loss=args.local_loss,
        gather_with_grad=args.gather_with_grad,
        cache_labels=True,  # as open_clip's create_loss does
        rank=args.rank,
        world_size=args.world_size,
        use_horovod=args.horovod,
        dist_impl=getattr(args, "loss_dist_impl", None),
    )


def is_coca_or_distill(args: Any) -> str | None:
    """Why open_clip's create_loss would not build a plain contrastive loss for these args."""
    if getattr(args, "distill", False):
        return "distillation (--distill-model)"
    if "coca" in args.model.lower():
        return "CoCa models"
    return None


def unwrap_model(model: Any) -> Any:
    """The CLIP module under torch.compile and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "module"):  # DDP
            model = model.module
        else:
            return model


def decode_tokens(tokenizer: Any, token_ids: list[int]) -> list[str]:
    """One readable string per token id, for open_clip's CLIP BPE tokenizer and its HF wrapper."""
    hf_tokenizer = getattr(tokenizer, "tokenizer", None)  # open_clip.tokenizer.HFTokenizer
    if hf_tokenizer is not None and hasattr(hf_tokenizer, "convert_ids_to_tokens"):
        return list(hf_tokenizer.convert_ids_to_tokens(token_ids))
    decoder = getattr(tokenizer, "decoder", None)  # open_clip.tokenizer.SimpleTokenizer
    if decoder is None:
        raise TypeError(f"cannot decode tokens of {type(tokenizer).__name__}")
    return [decoder.get(i, "").replace("</w>", "") for i in token_ids]

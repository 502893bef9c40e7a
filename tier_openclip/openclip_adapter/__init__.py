"""The open_clip coupling, named in one place.

What is named here: every open_clip function and class tier-openclip calls or tests against
(``SYMBOLS``), the functions it replaces (``PATCHED``, installed with ``replace``), the tower
internals it reads to build token features (``TOWER_INTERNALS``: private methods, checked on the
classes; ``TOWER_ATTRIBUTES``: attributes of a built tower, checked with ``check_tower`` on the
model a feature extraction sees), the config overrides open_clip's create_model applies
(``apply_create_overrides``) and how its validation transform resizes (``transform_resize_mode``);
in runs.py, open_clip_train's behaviour: its step count, the CSV training table it reads, the files
a run writes (params.txt, checkpoints, results.jsonl), its logging and its step log lines. An
open_clip upgrade is a change to this folder, shown by tests/test_openclip_adapter.py:
``check_open_clip`` compares the installed version and internals with what the plugin was written
against (3.x) and fails with one clear message otherwise.

Symbols are looked up by name, on first use, rather than imported at the top: importing this
module stays free of torch and open_clip (the command line's --help and the start-up hook load
it), and a mismatched open_clip becomes that one message instead of an ImportError.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

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
    "get_tokenizer": "open_clip:get_tokenizer",
    "add_model_config": "open_clip:add_model_config",  # registers tier_openclip/model_configs
    "list_models": "open_clip:list_models",
    "get_model_config": "open_clip:get_model_config",  # hub export: the config a checkpoint was trained with
    "get_pretrained_cfg": "open_clip:get_pretrained_cfg",  # hub export: a pretrained tag's preprocessing
    "load_checkpoint": "open_clip:load_checkpoint",
    "find_checkpoint_in_dir": "open_clip.factory:_find_checkpoint_in_dir",  # which weights local-dir: loads
    "save_for_hf": "open_clip.push_to_hf_hub:save_for_hf",  # writes exactly what hf-hub:/local-dir: load
    "get_model_preprocess_cfg": "open_clip:get_model_preprocess_cfg",
    "PreprocessCfg": "open_clip.transform:PreprocessCfg",
    "image_transform_v2": "open_clip.transform:image_transform_v2",  # zero-shot eval's val transform
    "ClipLoss": "open_clip.loss:ClipLoss",
    "SigLipLoss": "open_clip.loss:SigLipLoss",
    "CLIP": "open_clip.model:CLIP",
    "VisionTransformer": "open_clip.transformer:VisionTransformer",
    "TextTransformer": "open_clip.transformer:TextTransformer",
    "text_global_pool": "open_clip.transformer:text_global_pool",
    "ModifiedResNet": "open_clip.modified_resnet:ModifiedResNet",
    "TimmModel": "open_clip.timm_model:TimmModel",
    "HFTextEncoder": "open_clip.hf_model:HFTextEncoder",  # defined even without transformers installed
    "hf_arch_dict": "open_clip.hf_configs:arch_dict",  # HF model types HFTextEncoder knows; we add cxr-bert
}
# Private methods of the towers that token features are built from (tier_openclip/features.py).
TOWER_INTERNALS = {
    "VisionTransformer": ("_embeds", "_pool"),
    "TextTransformer": ("_embeds",),
    "ModifiedResNet": ("stem",),
}
# Attributes of built towers that features.py reads. Most are set in __init__, so they are
# checked on the tower itself (check_tower), the first time features.py reads one.
TOWER_ATTRIBUTES = {
    "VisionTransformer": ("attn_pool", "pool_type", "transformer", "final_ln_after_pool", "ln_post", "proj"),
    "ModifiedResNet": ("layer1", "layer2", "layer3", "layer4", "attnpool"),
    "TimmModel": ("trunk", "head"),
    "CLIP": ("transformer", "token_embedding", "positional_embedding", "ln_final", "attn_mask", "text_pool_type",
             "text_projection"),
    "TextTransformer": ("transformer", "cls_emb", "ln_final", "pool_type", "pad_id", "attn_mask", "text_projection"),
    "HFTextEncoder": ("config", "transformer", "pooler", "proj"),
}
# Functions the plugin replaces, by module. open_clip_train/main.py imports them by name, so they
# are replaced in their modules before main.py runs.
PATCHED = {
    "open_clip": ("create_loss",),
    "open_clip_train.params": ("parse_args",),
    "open_clip_train.train": ("train_one_epoch",),
}
TRAIN_NAMES = {name: attrs for name, attrs in PATCHED.items() if name.startswith("open_clip_train.")}


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
    found = train_one_epoch_params(modules["open_clip_train.train"].train_one_epoch)
    if found != TRAIN_ONE_EPOCH_PARAMS:
        raise OpenClipIncompatible(
            f"open_clip_train {open_clip_version()}: train_one_epoch takes ({', '.join(found)}), not the "
            f"({', '.join(TRAIN_ONE_EPOCH_PARAMS)}) tier-openclip wraps; install a supported version: {INSTALL_HINT}"
        )
    return modules


def train_one_epoch_params(function: Callable) -> tuple[str, ...]:
    """The parameter names of open_clip_train's train_one_epoch (through the plugin's wrapper)."""
    import inspect

    return tuple(inspect.signature(function).parameters)


def check_tower(tower: Any, cls_name: str) -> Any:
    """``tower`` itself, after checking it has the attributes TOWER_ATTRIBUTES lists for its class."""
    absent = [a for a in TOWER_ATTRIBUTES[cls_name] if not hasattr(tower, a)]
    if absent:
        raise OpenClipIncompatible(
            f"open_clip {open_clip_version()}: {cls_name} lacks {', '.join(absent)}, which tier-openclip reads "
            f"to build token features. Install a supported version with: {INSTALL_HINT}"
        )
    return tower


def replace(module_name: str, name: str, wrap: Callable[[Callable], Callable]) -> None:
    """Replace ``module_name.name`` (one PATCHED lists) by ``wrap(original)``."""
    if name not in PATCHED.get(module_name, ()):
        raise KeyError(f"{module_name}.{name} is not in openclip_adapter.PATCHED")
    module = importlib.import_module(module_name)
    setattr(module, name, wrap(getattr(module, name)))


def add_hf_architecture(model_type: str, like: str, **config_names: str) -> None:
    """Teach open_clip's HFTextEncoder a transformers model type, as a copy of ``like``'s entry in
    ``open_clip.hf_configs.arch_dict`` with some ``config_names`` replaced (``pooler`` sets the
    default pooler). It reads ``width`` to size its projection and ``layer_attr`` /
    ``token_embeddings_attr`` for ``--lock-text-unlocked-layers``."""
    arch_dict = symbol("hf_arch_dict")
    entry = copy.deepcopy(arch_dict[like])
    pooler = config_names.pop("pooler", None)
    entry["config_names"].update(config_names)
    if pooler:
        entry["pooler"] = pooler
    arch_dict[model_type] = entry


def fill_hf_lock_names(model_type: str, layer_attr: str, token_embeddings_attr: str) -> None:
    """Add the names ``HFTextEncoder.lock`` reads for ``--lock-text-unlocked-layers`` where
    open_clip's arch_dict entry lacks them (3.3's ``bert`` does: a KeyError 'layer_attr'
    otherwise); names already there are kept."""
    names = symbol("hf_arch_dict")[model_type]["config_names"]
    names.setdefault("layer_attr", layer_attr)
    names.setdefault("token_embeddings_attr", token_embeddings_attr)


def apply_create_overrides(config: dict, kwargs: Mapping[str, Any]) -> dict:
    """The model config after the overrides open_clip 3.x's create_model applies for these
    create_model_and_transforms arguments (force_*, init_logit_*), so that a model saved with
    the result is built again without them. Mirrors open_clip/factory.py's create_model."""
    config = copy.deepcopy(config)
    if kwargs.get("force_quick_gelu"):
        config["quick_gelu"] = True
    if kwargs.get("force_custom_text"):
        config["custom_text"] = True
    if kwargs.get("force_image_size") is not None:
        config["vision_cfg"]["image_size"] = kwargs["force_image_size"]
    if kwargs.get("force_context_length") is not None:
        config["text_cfg"]["context_length"] = kwargs["force_context_length"]
    for key in ("init_logit_scale", "init_logit_bias"):
        if key in kwargs:
            config[key] = kwargs[key]
    return config


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


# --- the towers' private methods token features are built from (TOWER_INTERNALS) -----------------


def vit_patch_tokens(visual: Any, images: Any) -> tuple[Any, Any]:
    """(pooled, patch tokens) of open_clip's VisionTransformer before ln_post/proj: its forward up
    to the pool, through the private _embeds (patchify, class token, positions, ln_pre) and _pool."""
    x = visual.transformer(visual._embeds(images))
    return visual._pool(x)


def text_transformer_embeds(tower: Any, text: Any) -> tuple[Any, Any]:
    """(token embeddings with positions, attention mask) of open_clip's TextTransformer: its private _embeds."""
    return tower._embeds(text)


def word_groups(tokenizer: Any, token_ids: list[int]) -> list[tuple[str, list[int]]]:
    """The words of a run of token ids: (word, indices into ``token_ids`` of its pieces). open_clip's
    CLIP BPE ends a word's last piece with "</w>"; Hugging Face WordPiece marks a continuation "##",
    SentencePiece/byte-level BPE a word's start "▁"/"Ġ"."""
    hf_tokenizer = getattr(tokenizer, "tokenizer", None)
    groups: list[tuple[str, list[int]]] = []
    if hf_tokenizer is not None and hasattr(hf_tokenizer, "convert_ids_to_tokens"):
        pieces = list(hf_tokenizer.convert_ids_to_tokens(token_ids))
        markers = any(p[:1] in ("▁", "Ġ") for p in pieces)
        for index, piece in enumerate(pieces):
            starts = not piece.startswith("##") and (not markers or piece[:1] in ("▁", "Ġ"))
            text = piece[2:] if piece.startswith("##") else piece.lstrip("▁Ġ")
            if starts or not groups:
                groups.append((text, [index]))
            else:
                groups[-1] = (groups[-1][0] + text, groups[-1][1] + [index])
        return groups
    decoder = getattr(tokenizer, "decoder", None)  # open_clip.tokenizer.SimpleTokenizer
    if decoder is None:
        raise TypeError(f"cannot decode tokens of {type(tokenizer).__name__}")
    open_word = False
    for index, token_id in enumerate(token_ids):
        piece = decoder.get(token_id, "")
        text = piece.replace("</w>", "")
        if open_word:
            groups[-1] = (groups[-1][0] + text, groups[-1][1] + [index])
        else:
            groups.append((text, [index]))
        open_word = not piece.endswith("</w>")
    return groups


# --- open_clip's image transform: how its validation preprocess resizes -------------------------
# open_clip.transform.image_transform (is_train=False) builds, per resize mode: 'longest' a
# ResizeKeepRatio with longest=1 (then CenterCropOrPad), 'squash' a torchvision Resize to (h, w),
# 'shortest' (its default) a Resize to one int (then CenterCrop).
KEEP_RATIO_TRANSFORM = "ResizeKeepRatio"


def transform_resize_mode(preprocess: Any) -> str:
    """open_clip's validation resize mode ('shortest', 'longest' or 'squash') read from its
    transform; 'shortest' (open_clip's default) for anything else."""
    for step in getattr(preprocess, "transforms", []) or []:
        name = type(step).__name__
        if name == KEEP_RATIO_TRANSFORM and getattr(step, "longest", 0):
            return "longest"
        if name == "Resize" and isinstance(getattr(step, "size", None), (list, tuple)) and len(step.size) == 2:
            return "squash"
    return "shortest"


# The training run's behaviour (kept in runs.py for size; every name is the adapter's).
from tier_openclip.openclip_adapter.runs import (  # noqa: E402,F401 -- re-exported; after symbol(), which runs.py calls
    CHECKPOINT_EPOCH_KEY, CHECKPOINT_WEIGHTS_KEY, CREATE_ARGS, NO_WEIGHTS_MESSAGE, PARAMS_TXT, RESULTS_JSONL,
    TAG_PREPROCESS, TORCH_INTERNAL_LOGGERS, TRAIN_CSV_CAPTION_KEY, TRAIN_CSV_IMAGE_KEY, TRAIN_CSV_SEPARATOR,
    TRAIN_LOG_MARK, TRAIN_ONE_EPOCH_PARAMS, TRAIN_STEP_LINE, _DropNoWeightsMessage, checkpoint_epoch,
    checkpoint_weights, create_args_from_params, create_bare_model, csv_dataset_flags, is_train_step_line,
    params_txt_line, params_txt_next_to, parse_step_times, quiet_torch_internals, read_params_txt, results_jsonl_path,
    resume_weights, steps_per_epoch, total_steps, train_batches)

"""Loading a trained model for the project's commands (eval, heatmap, analyze, push, demo)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from tier_openclip import openclip_adapter as adapter


@dataclass
class LoadedModel:
    model: Any  # open_clip CLIP / CustomTextCLIP, in eval mode
    preprocess: Callable  # open_clip's validation transform (PIL image -> tensor)
    tokenizer: Callable  # list[str] -> LongTensor (N, context_length)
    name: str
    pretrained: str | None


def load_model(model_name: str, pretrained: str | None = None, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """An open_clip model by name (ours are registered), with weights from a training checkpoint
    (``epoch_N.pt``), a ``.safetensors``/``.bin`` file, an open_clip pretrained tag, or the
    ``hf-hub:``/``local-dir:`` schemas as model_name."""
    from tier_openclip.plugin import register_model_configs

    register_model_configs()  # no-op when the start-up hook already did it
    schema_given = model_name.startswith(("hf-hub:", "local-dir:"))
    if pretrained and not schema_given and os.sep in pretrained and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"--pretrained {pretrained}: no such file (expected a checkpoint such as epoch_N.pt)")
    if not schema_given and model_name not in adapter.symbol("list_models")():
        raise ValueError(
            f"unknown model {model_name!r}; see open_clip.list_models() (ours start with 'TIER-'), "
            "or pass hf-hub:ORG/NAME or local-dir:PATH"
        )
    model, _, preprocess = adapter.symbol("create_model_and_transforms")(
        model_name, pretrained=pretrained or None, device=device, precision=precision, output_dict=True
    )
    model.eval()
    tokenizer = adapter.symbol("get_tokenizer")(model_name)
    return LoadedModel(model, preprocess, tokenizer, model_name, pretrained)

"""The run's settings for `push`: its params.txt (read through the adapter, which owns open_clip's
format), the TIER settings the model card states, and the model config that rebuilds the model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tier_openclip import openclip_adapter as adapter
from tier_openclip.errors import UsageError

CREATE_ARGS = adapter.CREATE_ARGS
TAG_PREPROCESS = adapter.TAG_PREPROCESS


def read_params(path: str | Path) -> dict[str, Any]:
    """open_clip_train's params.txt ("name: value" per line, values as Python printed them)."""
    return adapter.read_params_txt(path)


def params_next_to(checkpoint: str | Path) -> Path | None:
    """logs/NAME/params.txt for logs/NAME/checkpoints/epoch_N.pt, if it exists."""
    return adapter.params_txt_next_to(checkpoint)


@dataclass
class TierSettings:
    """The loss settings the model card reports; None where unknown."""

    loss: str | None = None
    lambda_text: float | None = None
    lambda_image: float | None = None
    token_mask: str | None = None
    scale: float | None = None
    lu_align_weight: float | None = None
    lu_uniform_weight: float | None = None

    @classmethod
    def from_sources(cls, params: Mapping[str, Any], lambda_text: float | None = None,
                     lambda_image: float | None = None, token_mask: str | None = None) -> "TierSettings":
        """params.txt values, overridden by the ones given on the command line."""
        flags_given = any(v is not None for v in (lambda_text, lambda_image, token_mask))
        return cls(
            loss=params.get("loss") or ("tier" if flags_given else None),
            lambda_text=lambda_text if lambda_text is not None else params.get("tier_lambda_text"),
            lambda_image=lambda_image if lambda_image is not None else params.get("tier_lambda_image"),
            token_mask=token_mask or params.get("tier_token_mask"),
            scale=params.get("tier_scale"),
            lu_align_weight=params.get("lu_align_weight"),
            lu_uniform_weight=params.get("lu_uniform_weight"),
        )



def creation_args(model_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """create_model_and_transforms arguments that rebuild the model as the run built it."""
    return adapter.create_args_from_params(model_name, params)


def hub_model_config(model_name: str, kwargs: Mapping[str, Any], repo_id: str, hf_tokenizer: bool) -> dict:
    """The model_cfg that makes open_clip build the model create_model built with ``kwargs``."""
    base = adapter.symbol("get_model_config")(model_name)
    if not base:
        raise UsageError(f"no open_clip config for model {model_name!r}; pass the --model the run was trained with")
    config = adapter.apply_create_overrides(base, kwargs)
    if hf_tokenizer:  # hf-hub: loads the tokenizer named here; point it at the files we upload
        config["text_cfg"]["hf_tokenizer_name"] = repo_id
    return config



"""Models whose parts live on the Hugging Face Hub (an HF text tower, an hf-hub: model): which repos
a model needs, and one line saying which to pre-download when they cannot be reached.

Offline (``HF_HUB_OFFLINE=1``) is checked before anything is built, against the local cache, so
a missing tower fails at once instead of after transformers' retries and a long traceback.
Online, a download that fails is reported the same way.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tier_openclip import openclip_adapter as adapter
from tier_openclip.errors import CommandError

PRECACHE_HINT = "on a machine with internet (same HF_HOME) run `hf download {repo}` (older huggingface_hub: " \
                "`huggingface-cli download {repo}`)"


def hub_offline() -> bool:
    """huggingface_hub's own reading of HF_HUB_OFFLINE (set at its import), or the variable now."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.upper() in {"1", "ON", "YES", "TRUE"}


def _is_repo_id(name: str) -> bool:
    return bool(name) and not os.path.exists(name) and not os.path.isabs(name) and name.count("/") == 1


def model_config(model_name: str) -> dict | None:
    """The open_clip model config a name refers to (registered, or local-dir:'s JSON); None for hf-hub:."""
    if model_name.startswith("hf-hub:"):
        return None
    if model_name.startswith("local-dir:"):
        path = Path(model_name[len("local-dir:"):]) / "open_clip_config.json"
        try:
            return json.loads(path.read_text()).get("model_cfg")
        except (OSError, ValueError):
            return None  # open_clip reports a broken folder itself
    return adapter.symbol("get_model_config")(model_name)


def hub_repos(model_name: str) -> dict[str, str]:
    """repo id -> the file whose presence in the cache shows the repo was downloaded."""
    if model_name.startswith("hf-hub:"):
        return {model_name[len("hf-hub:"):]: "open_clip_config.json"}
    text_cfg = (model_config(model_name) or {}).get("text_cfg", {})
    repos = {}
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text_cfg.get(key) or ""
        if key == "hf_tokenizer_name" and model_name.startswith("local-dir:"):
            continue  # open_clip reads a local-dir model's tokenizer from the folder itself
        if _is_repo_id(name):
            repos[name] = "config.json"
    return repos


def not_cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return not isinstance(try_to_load_from_cache(repo, filename), str)


def unreachable(repo: str, offline: bool) -> CommandError:
    why = ("HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache" if offline
           else "it could not be downloaded from the Hugging Face Hub")
    return CommandError(f"{repo} is needed and {why}: {PRECACHE_HINT.format(repo=repo)}, then run again")


def check_cached(model_name: str) -> None:
    """CommandError naming the first hub repo the model needs that offline mode cannot reach."""
    if not hub_offline():
        return
    for repo, filename in hub_repos(model_name).items():
        if not_cached(repo, filename):
            raise unreachable(repo, offline=True)


@contextmanager
def reporting_unreachable(model_name: str) -> Iterator[None]:
    """Turn a failed download of one of the model's hub repos into the one-line message."""
    repos = hub_repos(model_name)
    try:
        yield
    except (OSError, RuntimeError) as exc:  # transformers: OSError; open_clip's hf-hub: RuntimeError
        missing = [repo for repo, filename in repos.items() if not_cached(repo, filename)]
        if not missing:
            raise
        raise unreachable(missing[0], offline=hub_offline()) from None

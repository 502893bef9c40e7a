"""`push`'s export: a training checkpoint written by open_clip's own save_for_hf, as the folder
``hf-hub:`` and ``local-dir:`` load, and the bookkeeping that lets --overwrite replace only an
earlier export."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tier_openclip import openclip_adapter as adapter
from tier_openclip.errors import UsageError, input_file
from tier_openclip.hub.params import creation_args, hub_model_config
from tier_openclip.models import load_weights, read_checkpoint, register_model_configs

logger = logging.getLogger("tier_openclip")


class _NoTokenizerFiles:
    """open_clip's CLIP tokenizer is built from the BPE vocabulary bundled with open_clip: no files."""

    def save_pretrained(self, directory: str) -> None:
        pass


def _clean_tokenizer_config(path: Path) -> None:
    """Drop the load-time flags transformers 5 saves with a tokenizer ("is_local",
    "local_files_only"): they describe the exporting machine, not the tokenizer."""
    if path.is_file():
        data = json.loads(path.read_text())
        if {"is_local", "local_files_only"} & set(data):
            for key in ("is_local", "local_files_only"):
                data.pop(key, None)
            path.write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class Export:
    directory: Path
    model_config: dict
    epoch: int | None


def export_model(checkpoint: str | Path, model_name: str, out_dir: str | Path, repo_id: str,
                 params: Mapping[str, Any] | None = None) -> Export:
    """Write the open_clip hub folder (config, safetensors weights, tokenizer files) for a checkpoint.

    UsageError for a missing checkpoint or an unknown model, CommandError for a checkpoint that
    cannot be read or does not fit the model."""
    register_model_configs()
    checkpoint, out_dir = input_file(checkpoint, "--checkpoint"), Path(out_dir)
    saved = read_checkpoint(checkpoint)  # a truncated or foreign file fails before the model is built
    kwargs = creation_args(model_name, params or {})
    # Weights come from the checkpoint: build the bare architecture (no base weight downloads).
    model, _, _ = adapter.create_bare_model(model_name, output_dict=True, **kwargs)
    trained = (params or {}).get("model")
    hint = f" (params.txt says the run trained {trained!r})" if trained and trained != model_name else ""
    load_weights(model, checkpoint, model_name, hint, checked=True)
    tokenizer = adapter.symbol("get_tokenizer")(model_name, context_length=kwargs.get("force_context_length"))
    hf_tokenizer = hasattr(tokenizer, "save_pretrained")
    config = hub_model_config(model_name, kwargs, repo_id, hf_tokenizer)
    hf_model = config["text_cfg"].get("hf_model_name")
    if hf_model and os.path.isdir(hf_model):
        logger.warning("text_cfg.hf_model_name is the local folder %s: loading this model elsewhere needs that "
                       "folder (its config.json); train from a Hub model name to publish a self-contained model", hf_model)
    adapter.symbol("save_for_hf")(model.eval(), tokenizer if hf_tokenizer else _NoTokenizerFiles(), config, str(out_dir),
                                  safe_serialization=True)
    if hf_tokenizer:
        _clean_tokenizer_config(out_dir / "tokenizer_config.json")
        hf_config = getattr(getattr(model, "text", None), "config", None)
        if hf_config is not None:  # transformers >= 5's AutoTokenizer reads the model's config.json first
            hf_config.save_pretrained(out_dir)
    epoch = adapter.checkpoint_epoch(saved)
    return Export(out_dir, config, epoch)


# --- the export folder ---------------------------------------------------------------------------

# What an export wrote, kept in the folder where huggingface_hub keeps local metadata: neither
# HfApi.upload_folder nor `hf upload` ever uploads .cache/huggingface/.
EXPORT_RECORD = ".cache/huggingface/tier-openclip-push.json"


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _recorded_files(folder: Path) -> set[str] | None:
    try:
        record = json.loads((folder / EXPORT_RECORD).read_text())
        return {str(name) for name in record["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_export_folder(out_dir: Path, overwrite: bool) -> list[str]:
    """The files of an earlier export to replace in ``out_dir``; UsageError when it holds anything
    tier-openclip push did not write (or anything at all, without --overwrite)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--local-dir {out_dir} is a file; give a folder")
    present = _files_under(out_dir) - {EXPORT_RECORD} if out_dir.is_dir() else set()
    if not present:
        return []
    if not overwrite:
        raise UsageError(f"--local-dir {out_dir} is not empty; choose a new folder or pass --overwrite")
    written = _recorded_files(out_dir)
    foreign = sorted(present - (written or set()))
    if foreign:
        why = "an earlier export did not write" if written is not None else "tier-openclip push did not write"
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UsageError(f"--local-dir {out_dir} holds files {why} ({shown}); --overwrite only replaces an "
                         "earlier export, so that nothing unrelated is published: choose an empty folder")
    return sorted(present)


def install_export(staged: Path, out_dir: Path, old_files: Sequence[str]) -> list[str]:
    """Replace an earlier export's files in ``out_dir`` by the staged folder's, and record them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in old_files:  # only names check_export_folder found recorded and present
        (out_dir / name).unlink(missing_ok=True)
    files = sorted(_files_under(staged))
    for name in files:
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / name, target)
    record = out_dir / EXPORT_RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"written_by": "tier-openclip push", "files": files}, indent=2) + "\n")
    return files

"""BioViL's published weights as an open_clip model folder (the command, `tier-openclip convert biovil`,
is tier_openclip/commands/convert.py).

Sources, in the layouts Microsoft publishes (no ``trust_remote_code``; tensors only):
- the image checkpoint ``biovil_image_resnet50_proj_size_128.pt`` (hi-ml's ``ImageModel``
  state dict: ``encoder.encoder.*`` torchvision ResNet-50, ``projector.model.*``);
- CXR-BERT-specialized (``microsoft/BiomedVLP-CXR-BERT-specialized`` or a local copy): config.json
  with model type ``cxr-bert``, weights ``bert.*`` / ``cls.predictions.*`` / ``cls_projection_head.*``,
  the WordPiece vocabulary.

Every source key is mapped (``IMAGE_MAP``, ``TEXT_MAP``), dropped by name with the reason
(``DROPPED``), or refused; every weight of the model comes from a source, except ``logit_scale``
(the authors' initial value). The folder is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from tier_openclip.errors import CommandError, UsageError, input_file

# source prefix -> open_clip prefix
IMAGE_MAP = {"encoder.encoder.": "visual.trunk.", "projector.model.": "visual.trunk.projector.model."}
TEXT_MAP = {"bert.embeddings.": "text.transformer.bert.embeddings.", "bert.encoder.": "text.transformer.bert.encoder.",
            "cls_projection_head.": "text.transformer.cls_projection_head."}
# source prefix (or exact key) -> why it is not part of the model
DROPPED = {
    "encoder.encoder.fc.": "torchvision's ImageNet classifier; hi-ml's ResNet forward stops at layer4",
    "cls.predictions.": "CXR-BERT's masked-language-model head; no embedding the authors use passes through it",
    "bert.pooler.": "BERT's pooler; CXR-BERT projects [CLS] of the last layer with cls_projection_head instead",
    "bert.embeddings.position_ids": "a constant buffer transformers rebuilds",
}
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # MedCLIP.__init__ in the authors' CLIP_Embedding.py
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the authors' Normalize
TEXT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
BIOVIL_REPO = "microsoft/BiomedVLP-CXR-BERT-specialized"


def map_keys(state: Mapping[str, Any], mapping: Mapping[str, str], source: str) -> dict[str, Any]:
    """``state`` renamed by ``mapping``'s prefixes; DROPPED keys left out; anything else refused."""
    mapped, refused = {}, []
    for key, value in state.items():
        if any(key.startswith(prefix) for prefix in DROPPED):
            continue
        prefix = next((p for p in mapping if key.startswith(p)), None)
        if prefix is None:
            refused.append(key)
        else:
            mapped[mapping[prefix] + key[len(prefix):]] = value
    if refused:
        shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        raise CommandError(f"{source} has weights BioViL's model does not have: {shown} (a BioViL-T or "
                           "fine-tuned checkpoint?); expected only " + ", ".join(f"{p}*" for p in mapping))
    return mapped


def _state_dict(path: Path) -> dict:
    from tier_openclip.models import read_checkpoint

    saved = read_checkpoint(path)
    return dict(saved.get("state_dict", saved))


def text_model_folder(text_model: str) -> Path:
    """A local copy of CXR-BERT-specialized: the folder itself, or the repo's files from the hub cache."""
    if os.path.isdir(text_model):
        return Path(text_model)
    if os.path.exists(text_model) or text_model.count("/") != 1:
        raise UsageError(f"--text-model {text_model}: neither a folder nor a Hugging Face repo id such as {BIOVIL_REPO}")
    from huggingface_hub import snapshot_download

    from tier_openclip.models import hf_towers

    if hf_towers.hub_offline() and hf_towers.not_cached(text_model, "config.json"):
        raise hf_towers.unreachable(text_model, offline=True)
    try:
        return Path(snapshot_download(text_model, allow_patterns=["config.json", *TEXT_WEIGHTS, *TOKENIZER_FILES]))
    except Exception:  # noqa: BLE001 -- huggingface_hub raises many types for an unreachable or private repo
        raise hf_towers.unreachable(text_model, offline=hf_towers.hub_offline()) from None


def read_text_model(folder: Path) -> tuple[Any, dict]:
    """(CXRBertConfig, state dict) of a CXR-BERT-specialized folder, or CommandError saying why not."""
    from tier_openclip.models.cxr_bert_config import MODEL_TYPE, CXRBertConfig

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"--text-model {folder}: no readable config.json ({exc})") from None
    if config.get("model_type") != MODEL_TYPE or "projection_size" not in config:
        raise CommandError(f"--text-model {folder} is model type {config.get('model_type')!r}, not CXR-BERT-specialized "
                           f"({MODEL_TYPE!r} with a projection_size): the general CXR-BERT has no projection head "
                           f"(use {BIOVIL_REPO})")
    weights = next((folder / name for name in TEXT_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise CommandError(f"--text-model {folder} has none of {', '.join(TEXT_WEIGHTS)} (sharded weights are not "
                           "supported)")
    if not (folder / "vocab.txt").is_file():
        raise CommandError(f"--text-model {folder} has no vocab.txt (CXR-BERT's WordPiece vocabulary)")
    config = {k: v for k, v in config.items() if k not in ("auto_map", "architectures", "model_type")}
    return CXRBertConfig(**config), _state_dict(weights)


def model_config(out_dir: Path, text_config: Any) -> dict:
    """open_clip_config.json for the folder; the text tower's config.json is the folder's own."""
    return {
        "model_cfg": {
            "embed_dim": text_config.projection_size,
            "vision_cfg": {"timm_model_name": "tier_biovil_resnet50", "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": "none", "image_size": 224},
            "text_cfg": {"hf_model_name": str(out_dir.resolve()), "hf_tokenizer_name": str(out_dir.resolve()),
                         "hf_proj_type": None, "hf_pooler_type": "cls_last_hidden_state_pooler",
                         "context_length": 128,
                         # the published tokenizer_config.json names a remote-code class; it is BERT's WordPiece
                         "tokenizer_kwargs": {"tokenizer_type": "bert"}},
        },
        "preprocess_cfg": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear",
                           "resize_mode": "shortest"},
    }


def _check_out(out: Path, inputs: list[Path]) -> None:
    out_real = out.resolve()
    for source in inputs:
        src = source.resolve()
        if out_real == src or src.is_relative_to(out_real) or out_real.is_relative_to(src):
            raise UsageError(f"--out {out} overlaps the input {source}; write the model to a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder; give a new folder (nothing is overwritten)")
    if not out_real.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out_real.parent} does not exist")


def convert_biovil(image_checkpoint: str | os.PathLike, text_model: str, out: str | os.PathLike) -> Path:
    """Write BioViL (image checkpoint + CXR-BERT-specialized) as an open_clip folder at ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertTokenizerFast

    from tier_openclip import openclip_adapter as adapter
    from tier_openclip.models import register_model_configs
    from tier_openclip.models.biovil import text_config_dict

    image_path, out = input_file(image_checkpoint, "--image-checkpoint"), Path(out)
    inputs = [image_path] + ([Path(text_model)] if os.path.exists(text_model) else [])
    _check_out(out, inputs)
    folder = text_model_folder(text_model)
    _check_out(out, inputs + [folder])
    text_config, text_state = read_text_model(folder)
    state = {**map_keys(_state_dict(image_path), IMAGE_MAP, f"--image-checkpoint {image_path}"),
             **map_keys(text_state, TEXT_MAP, f"--text-model {folder}")}
    state["logit_scale"] = torch.tensor(INIT_LOGIT_SCALE)
    register_model_configs()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.resolve().parent))
    try:
        (tmp / "config.json").write_text(json.dumps(text_config_dict(text_config), indent=2) + "\n")
        config = model_config(tmp, text_config)
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
        with _quiet_root_logger():  # open_clip warns the folder has no weights yet: they are loaded next
            model = adapter.symbol("create_model_and_transforms")(f"local-dir:{tmp}", pretrained_text=False)[0]
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:  # nothing may stay at its random initialisation
            raise CommandError(f"the sources lack weights the model needs: {', '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CommandError(f"the sources do not fit BioViL's shapes: {str(exc).splitlines()[-1].strip()}") from None
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "open_clip_model.safetensors")
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
        tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"),
                                      do_lower_case=tokenizer_config.get("do_lower_case", True),
                                      model_max_length=config["model_cfg"]["text_cfg"]["context_length"])
        tokenizer.save_pretrained(tmp)
        config = model_config(out, text_config)  # the final place
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}

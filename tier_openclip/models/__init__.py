"""The project's models: registering its configs with open_clip (tier_openclip/model_configs, and
the timm trunks they name), and loading a trained model for the commands (eval, heatmap, analyze,
push, demo). The start-up hook, the training plugin and the commands all register through here.

A checkpoint file is checked in two steps, so each failure gets its own message: ``read_checkpoint``
(can the file be read at all: not truncated, not random bytes or text, only tensors — torch's
weights-only loader) and ``load_weights`` (does it fit the architecture: open_clip's strict load).

The towers our configs name live beside this file: ``biovil`` (BioViL's ResNet-50 trunk and
CXR-BERT-specialized as a transformers type; ``cxr_bert`` and ``cxr_bert_config`` its text model),
``timm_towers`` (the demo's small CNN), ``hf_towers`` (which Hugging Face repos a model needs);
``folder_checks`` checks a ``local-dir:`` folder before open_clip builds from it, and ``convert``
writes BioViL's published weights as such a folder.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

from tier_openclip import openclip_adapter as adapter
from tier_openclip.errors import CommandError, UsageError


@dataclass
class LoadedModel:
    model: Any  # open_clip CLIP / CustomTextCLIP, in eval mode
    preprocess: Callable  # open_clip's validation transform (PIL image -> tensor)
    tokenizer: Callable  # list[str] -> LongTensor (N, context_length)
    name: str
    pretrained: str | None


def _why_unreadable(exc: BaseException) -> str:
    text = str(exc).strip()
    if "central directory" in text or "PytorchStreamReader" in text:
        return "its zip archive is incomplete (a truncated or partly copied file?)"
    if "Weights only load failed" in text:
        return "torch's weights-only loader refused its contents (not tensors saved with torch.save)"
    detail = text.splitlines()[0].split(". ")[0][:200] if text else ""
    return f"not a torch.save or safetensors file ({type(exc).__name__}{': ' + detail if detail else ''})"


def read_checkpoint(path: str | os.PathLike) -> Any:
    """What the checkpoint file holds (a training checkpoint's dict or a bare state dict), with
    tensors memory-mapped where the format allows; CommandError when it cannot be a checkpoint."""
    import torch

    path = str(path)
    if os.path.getsize(path) == 0:
        raise CommandError(f"{path} is empty; expected a checkpoint such as epoch_N.pt")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            saved = load_file(path, device="cpu")
        else:  # only the zip format can be memory-mapped; older files and garbage are read plainly
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 -- torch and safetensors raise many types for a bad file
        raise CommandError(f"{path} is not a readable checkpoint: {_why_unreadable(exc)}") from None
    state = adapter.checkpoint_weights(saved)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CommandError(f"{path} holds no model weights (expected a state_dict of tensors, as "
                           "open_clip_train's epoch_N.pt has)")
    return saved


# What open_clip's strict load raises for weights of another architecture (missing or unexpected
# keys, shape mismatches, its position-embedding resizers' asserts).
_MISFIT = (RuntimeError, AssertionError, KeyError, ValueError, IndexError)


def _misfit(checkpoint: Any, model_name: str, hint: str, exc: BaseException) -> CommandError:
    detail = str(exc).strip()[:500] or type(exc).__name__
    return CommandError(f"{checkpoint} does not fit model {model_name!r}{hint}: {detail}; pass the --model the run "
                        "was trained with")


def load_weights(model: Any, checkpoint: str | os.PathLike, model_name: str, hint: str = "", checked: bool = False) -> None:
    """Load a checkpoint into ``model`` strictly (open_clip's load_checkpoint), or CommandError saying
    that the file cannot be read or which model it does not fit. ``checked``: the caller has
    already read it with read_checkpoint."""
    if not checked:
        read_checkpoint(checkpoint)
    try:
        adapter.symbol("load_checkpoint")(model, str(checkpoint), strict=True)
    except _MISFIT as exc:
        raise _misfit(checkpoint, model_name, hint, exc) from None


def register_model_configs() -> None:
    """Make tier_openclip/model_configs visible to open_clip.list_models() and create_model().

    The start-up hook calls this when a program imports open_clip; commands call it again before
    they look a model up, in case the hook is off. open_clip's add_model_config rescans its whole
    registry on every call: cheap for the few configs there are.
    """
    from importlib.resources import files

    from tier_openclip.models import biovil, timm_towers  # noqa: F401 -- register the timm trunks our configs name

    biovil.register()  # CXR-BERT-specialized as a local transformers type (no trust_remote_code)
    adapter.symbol("add_model_config")(str(files("tier_openclip") / "model_configs"))


def check_pretrained(model_name: str, pretrained: str | None, weights_required: bool = False) -> None:
    """UsageError unless --model names a known model and --pretrained an existing file or a tag;
    CommandError for a local-dir: folder whose config or weights cannot be used (folder_checks.py).
    ``weights_required`` (commands that report results): a named architecture without --pretrained
    is refused, since its weights would be random."""
    from tier_openclip.models.folder_checks import check_local_dir

    register_model_configs()
    if model_name.startswith("local-dir:"):
        if not os.path.isdir(model_name[len("local-dir:"):]):
            raise UsageError(f"--model {model_name}: no such folder")
        # truncated, random bytes, a pickle: one message before anything is built
        read_checkpoint(check_local_dir(model_name[len("local-dir:"):]))
        return
    if model_name.startswith("hf-hub:"):
        return
    if model_name not in adapter.symbol("list_models")():
        raise UsageError(
            f"unknown model {model_name!r}; see open_clip.list_models() (ours start with 'TIER-'), "
            "or pass hf-hub:ORG/NAME or local-dir:PATH"
        )
    if not pretrained and weights_required:
        raise UsageError(f"--model {model_name} without --pretrained has random weights, and its results would mean "
                         "nothing: pass --pretrained (a checkpoint such as epoch_N.pt, or an open_clip pretrained tag)")
    if not pretrained or os.path.isfile(pretrained):
        return
    if os.path.isdir(pretrained):
        raise UsageError(f"--pretrained {pretrained} is a folder; expected a checkpoint file such as epoch_N.pt")
    if os.sep in pretrained or not adapter.symbol("get_pretrained_cfg")(model_name, pretrained):
        raise UsageError(f"--pretrained {pretrained}: no such file (expected a checkpoint such as epoch_N.pt), "
                         f"and not an open_clip pretrained tag of {model_name}")


def load_model(model_name: str, pretrained: str | None = None, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """An open_clip model by name (ours are registered), with weights from a training checkpoint
    (``epoch_N.pt``), a ``.safetensors``/``.bin`` file, an open_clip pretrained tag, or the
    ``hf-hub:``/``local-dir:`` schemas as model_name."""
    from tier_openclip.models import hf_towers

    check_pretrained(model_name, pretrained)
    hf_towers.check_cached(model_name)  # offline: name the tower to pre-download before any retry
    create = adapter.symbol("create_model_and_transforms")
    from_file = bool(pretrained) and os.path.isfile(pretrained) and not model_name.startswith(("hf-hub:", "local-dir:"))
    if model_name.startswith("local-dir:"):  # weights checked readable above; another model's fail strictly here
        from tier_openclip.models.folder_checks import check_local_dir

        weights = check_local_dir(model_name[len("local-dir:"):])
        try:
            model, _, preprocess = create(model_name, device=device, precision=precision, output_dict=True)
        except _MISFIT as exc:
            raise _misfit(weights, model_name, "", exc) from None
    elif from_file:  # readable first (before building a possibly large model); then open_clip's strict load
        read_checkpoint(pretrained)
    with hf_towers.reporting_unreachable(model_name):
        if from_file:
            try:
                model, _, preprocess = create(model_name, pretrained=pretrained, device=device, precision=precision,
                                              output_dict=True)
            except _MISFIT as exc:
                raise _misfit(pretrained, model_name, "", exc) from None
        else:
            model, _, preprocess = create(model_name, pretrained=pretrained or None, device=device,
                                          precision=precision, output_dict=True)
        tokenizer = adapter.symbol("get_tokenizer")(model_name)
    model.eval()
    return LoadedModel(model, preprocess, tokenizer, model_name, pretrained)

"""Start-up checks of the checkpoints a training run reads: ``--pretrained`` and ``--resume``.

open_clip_train loads them after building the model, with torch's weights-only loader (so a pickle
carrying code is refused, but as a traceback) and, for ``--resume``, a strict ``load_state_dict``
(another model's checkpoint is a traceback of missing and unexpected keys). Here both are checked
when the command line is parsed (tier_openclip/training/plugin.py), each problem as one line: the file is
read as models.read_checkpoint reads every checkpoint, and a --resume checkpoint's keys and shapes
are compared with the model --model builds, built on the meta device (no memory, a fraction of a
second). ``--resume latest`` is looked up as open_clip_train.main will look it up (the run's
``epoch_latest.pt`` with --save-most-recent, else its newest ``*.pt``; not with --remote-sync).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from typing import Any

from tier_openclip import openclip_adapter as adapter
from tier_openclip.errors import CommandError
from tier_openclip.models import read_checkpoint


def _expected_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]] | None:
    """Key -> shape of the model this run builds, or None when it cannot be built without weights
    or network (a Hub text tower not in the cache): open_clip's own load then has the last word."""
    import torch

    try:
        with torch.device("meta"):
            model, _, _ = adapter.symbol("create_model_and_transforms")(
                args.model, device="meta", load_weights=False, pretrained_text=False, pretrained_image=False,
                output_dict=True, **adapter.create_args_from_params(args.model, vars(args)))
    except Exception:  # noqa: BLE001 -- any failure to build here only skips this check
        return None
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def check_resume_fits(path: str, saved: Any, args: argparse.Namespace) -> None:
    """CommandError when the --resume checkpoint's weights are not those of --model (as main.py
    loads them: the state_dict of a training checkpoint, 'module.' dropped when not distributed)."""
    state = adapter.resume_weights(saved)
    if not getattr(args, "distributed", False):
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    expected = _expected_shapes(args)
    if expected is None:
        return
    found = {key: tuple(value.shape) for key, value in state.items()}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights of the model missing ({_shown(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} it has no place for ({_shown(unexpected)})")
    if shapes:
        key = shapes[0]
        parts.append(f"{len(shapes)} of other shapes ({key}: {list(found[key])} here, {list(expected[key])} in the model)")
    raise CommandError(f"--resume {path} does not fit --model {args.model}: {'; '.join(parts)}. Resume with the "
                       "--model (and --force-* flags) the checkpoint was trained with, or start a new --name")


def latest_checkpoint(args: argparse.Namespace) -> str | None:
    """The file ``--resume latest`` will load, found as open_clip_train.main finds it; None when
    there is none yet, or it lies on a remote (--remote-sync)."""
    if getattr(args, "remote_sync", None) or not getattr(args, "name", None) or not getattr(args, "logs", None):
        return None
    folder = os.path.join(args.logs, args.name, "checkpoints")
    if getattr(args, "save_most_recent", False):
        latest = os.path.join(folder, "epoch_latest.pt")
        return latest if os.path.isfile(latest) else None
    found = glob.glob(os.path.join(folder, "**", "*.pt"), recursive=True)  # main.py's natural order
    return max(found, key=lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p)],
               default=None)


def check_start_checkpoints(args: argparse.Namespace) -> None:
    """CommandError (one line) for a --pretrained or --resume file that is not a readable
    checkpoint of tensors, or a --resume checkpoint of another model."""
    for flag in ("--pretrained", "--resume"):
        path = getattr(args, flag[2:], None)
        if flag == "--resume" and path == "latest":
            path = latest_checkpoint(args)
        if not isinstance(path, str) or not os.path.isfile(path):
            continue  # an open_clip tag, a remote path, 'latest': open_clip resolves those
        try:
            saved = read_checkpoint(path)
        except CommandError as error:
            raise CommandError(f"{flag} {error}") from None
        if flag == "--resume":
            check_resume_fits(path, saved, args)

"""What loss each epoch of a run was trained with: ``logs/NAME/loss_history.json``.

open_clip_train's params.txt describes only the last invocation, so a run resumed with another
``--loss`` or other TIER flags would be published (``tier-openclip push``) as if every epoch had
used the last settings. The training plugin records the loss settings of every epoch here (rank 0,
before the epoch runs), warns in one line when they differ from the previous epoch's, and the
model card reads this file. This module writes and reads the format; nothing else does.

The file is a JSON list of ``{"epoch": N, "loss": ..., "tier_lambda_text": ..., ...}``, one entry
per epoch (1-based, as epoch_N.pt), in order; an epoch trained again (a resume from an earlier
checkpoint) replaces its entry and drops the later ones.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

HISTORY_NAME = "loss_history.json"
# The flags that define the loss (tier_openclip/training/plugin.py adds them to open_clip_train's parser).
LOSS_SETTINGS = ("loss", "tier_lambda_text", "tier_lambda_image", "tier_scale", "tier_token_mask",
                 "lu_align_weight", "lu_uniform_weight", "lu_temperature", "lu_t", "lu_text_units",
                 "filip_weight", "filip_temperature")
logger = logging.getLogger("tier_openclip")


def settings_of(args: Any) -> dict[str, Any]:
    """The loss settings of a parsed training command line (a Namespace or a params.txt dict)."""
    get = args.get if isinstance(args, Mapping) else lambda name: getattr(args, name, None)
    return {name: get(name) for name in LOSS_SETTINGS}


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``run_dir/loss_history.json``; [] when there is none or it is not a list of
    entries (the card then falls back to params.txt)."""
    path = Path(run_dir) / HISTORY_NAME
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("epoch"), int)]


def _changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    return [f"--{name.replace('_', '-')} {before.get(name)} -> {now.get(name)}"
            for name in LOSS_SETTINGS if before.get(name) != now.get(name)]


def record_epoch(run_dir: str | os.PathLike, epoch: int, args: Any) -> None:
    """Record that 1-based ``epoch`` trains with ``args``' loss settings; one warning line when the
    previous epoch's settings differ (a resume with other loss flags)."""
    now = settings_of(args)
    entries = [e for e in read_history(run_dir) if e["epoch"] < epoch]
    previous = entries[-1] if entries else None
    if previous is not None:
        changed = _changes(previous, now)
        if changed:
            logger.warning("tier-openclip: epoch %d trains with other loss settings than epoch %d (%s); both are "
                           "kept in %s for the model card", epoch, previous["epoch"], ", ".join(changed), HISTORY_NAME)
    entries.append({"epoch": epoch, **now})
    path = Path(run_dir) / HISTORY_NAME
    temporary = path.with_name(f".{HISTORY_NAME}.partial")
    temporary.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def segments(entries: list[dict[str, Any]], up_to: int | None = None) -> list[tuple[int, int, dict[str, Any]]]:
    """(first epoch, last epoch, settings) for each run of epochs with equal settings, up to epoch
    ``up_to`` (the exported checkpoint's) when given."""
    found: list[tuple[int, int, dict[str, Any]]] = []
    for entry in entries:
        if up_to is not None and entry["epoch"] > up_to:
            break
        settings = {name: entry.get(name) for name in LOSS_SETTINGS}
        if found and found[-1][2] == settings:
            found[-1] = (found[-1][0], entry["epoch"], settings)
        else:
            found.append((entry["epoch"], entry["epoch"], settings))
    return found


def card_rows(segments: list[tuple[int, int, dict[str, Any]]] | tuple = ()) -> list[str]:
    """Markdown lines for the model card: the loss settings by epoch, when a resume changed them."""
    if len(segments) < 2:
        return []
    names = ("loss", "tier_lambda_text", "tier_lambda_image", "tier_scale", "tier_token_mask", "lu_align_weight",
             "lu_uniform_weight")
    rows = ["### Loss settings by epoch", "", f"The run was resumed with other loss settings; each epoch's are "
            f"recorded in its {HISTORY_NAME}.", "", "| Epochs | " + " | ".join(f"`{n}`" for n in names) + " |",
            "|:--|" + "--:|" * len(names)]
    for first, last, settings in segments:
        epochs = str(first) if first == last else f"{first}-{last}"
        rows.append(f"| {epochs} | " + " | ".join("not recorded" if settings.get(n) is None else f"{settings[n]}"
                                                  for n in names) + " |")
    return [*rows, ""]

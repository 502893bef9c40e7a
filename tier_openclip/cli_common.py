"""What the model commands (eval zeroshot|grounding|segmentation, heatmap, analyze, push) share
on the command line: the model flags, the run flags and the run of an evaluation. The one way to
give a list (``add_list_flag``, ``listed``) is tier_openclip.errors', which ``prep`` uses too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from tier_openclip.errors import CommandError, UsageError, output_file

Named = Iterable[tuple[str, "str | Path | None"]]  # (flag, path) pairs, as the person gave them

MODEL_HELP = "open_clip model name (e.g. TIER-tiny; ours start with TIER-), or hf-hub:ORG/NAME / local-dir:PATH."
PRETRAINED_HELP = ("Weights: a training checkpoint (epoch_N.pt), a .safetensors/.bin file or an open_clip pretrained "
                   "tag (not needed with hf-hub:/local-dir: models).")


def default_device() -> str:
    """cuda when torch sees a GPU, else cpu (torch is imported only when a command runs)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_model_flags(parser: argparse.ArgumentParser, pretrained_required: bool = False, device: bool = True,
                    model_help: str = MODEL_HELP, pretrained_help: str = PRETRAINED_HELP) -> None:
    """--model, --pretrained and --device (default: cuda if available, else cpu)."""
    parser.add_argument("--model", required=True, help=model_help)
    if pretrained_help:
        parser.add_argument("--pretrained", required=pretrained_required, default=None, help=pretrained_help)
    if device:
        parser.add_argument("--device", default=None, help="torch device. Default: cuda if available, else cpu.")


def add_run_flags(parser: argparse.ArgumentParser, *, resampled: str, seeded: str, batch_size: int = 32,
                  quiet: bool = True) -> None:
    """--bootstrap, --seed, --batch-size, --workers and (with ``quiet``) --quiet: how an ``eval``
    command runs, one help text and default each. ``resampled`` and ``seeded`` say what the
    command's bootstrap resamples and what its seed drives; ``batch_size`` keeps each command's
    documented default (zeroshot 64, grounding and segmentation 32). ``check_run_flags`` checks them."""
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help=f"Bootstrap resamples of {resampled} for the confidence intervals (default 1000; "
                             "0: no intervals).")
    parser.add_argument("--seed", type=int, default=0, help=f"Seed of {seeded} (default 0).")
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"Images per forward pass of the model (default {batch_size}).")
    parser.add_argument("--workers", type=int, default=2, help="Image loading processes (default 2; 0: in this process).")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="No progress bar.")


def check_run_flags(args: argparse.Namespace) -> None:
    """UsageError (before any model is loaded) naming the first of add_run_flags' numbers out of range."""
    for flag, value, least in (("--bootstrap", args.bootstrap, 0), ("--batch-size", args.batch_size, 1),
                               ("--workers", args.workers, 0)):
        if value < least:
            raise UsageError(f"{flag} {value}: must be >= {least}")


def device_of(args: argparse.Namespace) -> str:
    return args.device or default_device()


def refuse_overwriting_inputs(outputs: Named, inputs: Named, folder_outputs: bool = False) -> None:
    """UsageError (exit 2) when an output resolves (symlinks followed) to an input or lies inside an
    input folder (with ``folder_outputs``, also an input inside an output folder). Every command
    calls it before any work; the rule itself is data_prep/paths.py's, which prep uses too."""
    from tier_openclip.data_prep.paths import overwrite_problem

    problem = overwrite_problem(outputs, inputs, folder_outputs=folder_outputs)
    if problem:
        raise UsageError(problem)


def model_inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The files and folders --model/--pretrained read: a checkpoint path, a local-dir: folder."""
    model = getattr(args, "model", "") or ""
    named = [("--model", model[len("local-dir:"):])] if model.startswith("local-dir:") else []
    pretrained = getattr(args, "pretrained", None)
    if pretrained and Path(pretrained).exists():  # not an open_clip tag such as 'openai'
        named.append(("--pretrained", pretrained))
    return named


def results_file(path: str | None, inputs: Named = ()) -> Path | None:
    """--out FILE.json, checked before any work: writable, not one of ``inputs`` (nor FILE.md, the
    markdown table that goes next to it) and not inside an input folder."""
    if not path:
        return None
    out = output_file(path, "--out", example="results.json", make_parent=True)
    if out.with_suffix(".md") == out:
        raise UsageError(f"--out {out}: the table goes next to the JSON as {out.name}; name the JSON e.g. "
                         f"{out.with_suffix('.json').name}")
    refuse_overwriting_inputs([("--out", out), ("--out (its table)", out.with_suffix(".md"))], inputs)
    output_file(out.with_suffix(".md"), "--out (its table)", example="results.md")
    return out


def check_evaluation_inputs(args: argparse.Namespace, read_set: Callable[[str], Any], made_by: str) -> Path | None:
    """What an eval command checks before it loads a model, cheapest first: --data is a folder (else
    UsageError: pass ``made_by``, the set and the command that makes it), --out can be written and is
    none of the inputs, the weights are named, then ``read_set(--data)`` takes the set (a broken set
    is a CommandError in seconds, not after a large model loaded). Returns --out (results_file)."""
    from tier_openclip.models import check_pretrained

    if not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data} is not a folder: pass {made_by}")
    out = results_file(args.out, [("--data", args.data), *model_inputs(args)])
    check_pretrained(args.model, args.pretrained, weights_required=True)  # before reading a large set
    try:
        read_set(args.data)  # before loading a large model
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    return out


def run_evaluation(args: argparse.Namespace, evaluate: Callable[[Any, str], dict], markdown: Callable[[Mapping], str],
                   out: Path | None, settings: Mapping[str, Any] | None = None) -> int:
    """Load --model/--pretrained on --device, run ``evaluate(loaded, device)``, print its markdown
    table and, with --out, write the results JSON and the table next to it (FILE.md).

    The results start with the model, the checkpoint and ``settings``; an unreadable image or a
    file changed meanwhile (OSError, ValueError) is a CommandError."""
    from tier_openclip.models import check_pretrained, load_model

    check_pretrained(args.model, args.pretrained, weights_required=True)
    device = device_of(args)
    loaded = load_model(args.model, args.pretrained, device=device)
    try:
        results = evaluate(loaded, device)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    results = {"model": args.model, "pretrained": args.pretrained, **(settings or {}), **results}
    table = markdown(results)
    print(table, end="")
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
        out.with_suffix(".md").write_text(table)
        print(f"\nWrote {out} and {out.with_suffix('.md')}")
    return 0

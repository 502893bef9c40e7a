"""`tier-openclip push`'s command line: check everything the arguments alone can show wrong, then
export (and upload)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tier_openclip.cli_common import add_model_flags, refuse_overwriting_inputs
from tier_openclip.errors import CommandError, UsageError, add_list_flag, input_file
from tier_openclip.hub.card import TOKEN_MASK_MEANING, model_card
from tier_openclip.hub.export import check_export_folder, export_model, install_export
from tier_openclip.hub.params import TierSettings, params_next_to, read_params
from tier_openclip.hub.upload import hub_token, upload
from tier_openclip.models import check_pretrained

logger = logging.getLogger("tier_openclip")


def add_push_parser(subparsers: Any) -> None:
    """`tier-openclip push ...`"""
    parser = subparsers.add_parser(
        "push",
        help="Export a training checkpoint as an open_clip model (+ model card) and upload it to the Hugging Face Hub.",
        description="Export a training checkpoint (epoch_N.pt) in the layout open_clip loads with "
                    "create_model_from_pretrained('hf-hub:ORG/NAME') — open_clip_config.json, "
                    "open_clip_model.safetensors, tokenizer files for Hugging Face text towers — plus a model "
                    "card (README.md) with the TIER settings, training data statement, evaluation table and "
                    "loading snippet, then upload it. Settings are read from the run's params.txt "
                    "(checkpoints/../params.txt) when present. The token comes from HF_TOKEN or "
                    "`hf auth login` and is never printed or written.",
    )
    parser.add_argument("--checkpoint", required=True, help="Training checkpoint: logs/NAME/checkpoints/epoch_N.pt.")
    add_model_flags(parser, device=False, pretrained_help="",
                    model_help="open_clip model the run trained (its --model, e.g. TIER-tiny).")
    parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="Hugging Face Hub model repository.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--local-dir", default=None, metavar="DIR",
                        help="Write the folder here and stop (no upload); load it with open_clip as local-dir:DIR.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an earlier export in --local-dir: the files it wrote are removed first; a "
                             "folder holding anything else is refused.")
    add_list_flag(parser, "--results", "FILE.json", default=[],
                  help="Results of `tier-openclip eval zeroshot --out` for the model card, one file per set.")
    parser.add_argument("--lambda-text", type=float, default=None,
                        help="TIER λ_text for the card. Default: tier_lambda_text from params.txt.")
    parser.add_argument("--lambda-image", type=float, default=None,
                        help="TIER λ_image for the card. Default: tier_lambda_image from params.txt.")
    parser.add_argument("--token-mask", choices=sorted(TOKEN_MASK_MEANING), default=None,
                        help="TIER token mask mode for the card. Default: tier_token_mask from params.txt.")
    parser.add_argument("--params", default=None, metavar="FILE",
                        help="The run's params.txt, if not at checkpoints/../params.txt.")
    parser.add_argument("--license", default=None,
                        help="License identifier for the card's metadata (e.g. mit); omitted by default.")
    parser.add_argument("--commit-message", default="Add TIER open_clip model", help="Commit message of the upload (default: 'Add TIER open_clip model').")
    parser.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    # Everything the command line alone can show wrong is checked before the export starts.
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(args.repo_id)
    except HFValidationError as exc:
        raise UsageError(f"--repo-id {args.repo_id!r} is not a Hugging Face repository id: {exc}") from None
    if args.repo_id.count("/") != 1:
        raise UsageError(f"--repo-id {args.repo_id!r} must be ORG/NAME (the config names the repo so that hf-hub: "
                         "loading finds its tokenizer)")
    input_file(args.checkpoint, "--checkpoint")
    check_pretrained(args.model, None)
    params_path = Path(args.params) if args.params else params_next_to(args.checkpoint)
    if args.params:
        input_file(params_path, "--params")
    results_paths = [input_file(path, "--results") for path in args.results]
    refuse_overwriting_inputs([("--local-dir", args.local_dir)],
                              [("--checkpoint", args.checkpoint), ("--params", params_path),
                               *(("--results", path) for path in results_paths)], folder_outputs=True)
    old_files = check_export_folder(Path(args.local_dir), args.overwrite) if args.local_dir else []
    if not args.local_dir:
        hub_token()
    try:
        params = read_params(params_path) if params_path else {}
    except (OSError, ValueError) as exc:
        raise CommandError(f"--params {params_path}: {exc}") from None
    if params_path:
        print(f"Run settings from {params_path}")
    results = []
    for path in results_paths:
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise CommandError(f"--results {path}: not a results JSON of `tier-openclip eval zeroshot --out` ({exc})") from None
        _check_results_shape(path, results[-1])
    if not args.local_dir:
        with tempfile.TemporaryDirectory(prefix="tier-openclip-push-") as tmp:
            _export(args, params, results, Path(tmp))
            url = upload(tmp, args.repo_id, private=args.private, commit_message=args.commit_message)
        print(f"Uploaded to https://huggingface.co/{args.repo_id} ({url})")
        return 0
    out_dir = Path(args.local_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Export beside the folder first: a failed export leaves an earlier one as it was.
    staged = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tier-openclip-push-", dir=out_dir.parent))
    try:
        _export(args, params, results, staged)
        files = install_export(staged, out_dir, old_files)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    print(f"Wrote {out_dir}: {', '.join(files)}")
    print(f"Load it with open_clip.create_model_from_pretrained('local-dir:{out_dir}'); upload it with "
          f"`tier-openclip push` without --local-dir, or `hf upload {args.repo_id} {out_dir}`.")
    return 0


def _check_results_shape(path: Path, result: Any) -> None:
    """CommandError unless ``result`` is what the card's table is drawn from: the table is drawn
    now, by the function that reads the results format (evaluate.results_markdown), so another
    shape ({"mean_auc": 0.5}, [1, 2]) fails here in one line, before the export."""
    from tier_openclip.evaluation.zeroshot import results_markdown

    if not isinstance(result, dict):
        found = type(result).__name__
        raise CommandError(f"--results {path} holds a JSON {found}, not the object `tier-openclip eval zeroshot --out` writes")
    try:
        results_markdown(result)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        what = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise CommandError(f"--results {path} is not a results JSON of `tier-openclip eval zeroshot --out` ({what})") from None


def _export(args: argparse.Namespace, params: dict, results: list, out_dir: Path) -> None:
    from tier_openclip.training import loss_history

    exported = export_model(args.checkpoint, args.model, out_dir, args.repo_id, params)
    run_dir = Path(args.checkpoint).resolve().parent.parent  # logs/NAME for logs/NAME/checkpoints/epoch_N.pt
    segments = loss_history.segments(loss_history.read_history(run_dir), up_to=exported.epoch)
    if segments:  # the exported epoch's own settings; params.txt has only the last invocation's
        params = {**params, **segments[-1][2]}
    settings = TierSettings.from_sources(params, args.lambda_text, args.lambda_image, args.token_mask)
    if settings.loss in ("tier", None) and None in (settings.lambda_text, settings.lambda_image, settings.token_mask):
        logger.warning("TIER settings not fully known (no params.txt next to the checkpoint's run?): pass "
                       "--lambda-text, --lambda-image and --token-mask for the model card")
    card = model_card(args.repo_id, args.model, exported.epoch, settings, params, results, exported.model_config,
                      args.license, segments)
    (out_dir / "README.md").write_text(card, encoding="utf-8")

"""`tier-openclip push`: a training checkpoint as an open_clip model on the Hugging Face Hub.

The folder is written by open_clip's own ``save_for_hf``, so it holds exactly what
``open_clip.create_model_from_pretrained("hf-hub:ORG/NAME")`` and ``"local-dir:DIR"`` load:
``open_clip_config.json`` (model_cfg + preprocess_cfg), ``open_clip_model.safetensors`` (the
weights file both loaders look for first; no duplicate ``.bin``), and, for Hugging Face text
towers, the tokenizer files (the config's ``hf_tokenizer_name`` then points at the repo itself,
so ``get_tokenizer("hf-hub:ORG/NAME")`` reads them) and the text model's ``config.json``, which
transformers 5's AutoTokenizer reads before the tokenizer files. A model card (README.md) states the TIER
settings, the training data and the evaluation results, and shows how to load the model.

The model is rebuilt as the run built it: settings that change the architecture or preprocessing
(``--siglip``, ``--force-*``, ``--image-mean`` ..., a pretrained tag's normalisation) are read from
the run's params.txt (``logs/NAME/params.txt``, next to ``checkpoints/``) and written into the
config; the weights are then loaded strictly, so a checkpoint that does not fit the model fails here,
not for the people who download it.

The upload token comes from huggingface_hub (``HF_TOKEN`` or ``hf auth login``); it is never
printed or written.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tier_openclip import openclip_adapter as adapter
from tier_openclip.cli_common import add_list_flag, add_model_flags, refuse_overwriting_inputs
from tier_openclip.errors import CommandError, UsageError, input_file
from tier_openclip.models import check_pretrained, load_weights, read_checkpoint, register_model_configs

logger = logging.getLogger("tier_openclip")
TOKEN_MASK_MEANING = {"valid": "padding tokens ignored", "all": "every position, as the authors' code does"}
# params.txt names -> create_model_and_transforms arguments (what open_clip_train/main.py passes).
CREATE_ARGS = ("force_quick_gelu", "force_custom_text", "force_image_size", "force_context_length",
               "image_mean", "image_std", "image_interpolation", "image_resize_mode")
TAG_PREPROCESS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                  "resize_mode": "image_resize_mode"}


# --- the run's settings -------------------------------------------------------------------------


def read_params(path: str | Path) -> dict[str, Any]:
    """open_clip_train's params.txt ("name: value" per line, values as Python printed them)."""
    params: dict[str, Any] = {}
    for line in Path(path).read_text().splitlines():
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        try:
            params[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name.strip()] = value  # plain strings (model names, paths, "tier") are not quoted
    return params


def params_next_to(checkpoint: str | Path) -> Path | None:
    """logs/NAME/params.txt for logs/NAME/checkpoints/epoch_N.pt, if it exists."""
    path = Path(checkpoint).resolve().parent.parent / "params.txt"
    return path if path.is_file() else None


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
    kwargs = {name: params[name] for name in CREATE_ARGS if params.get(name) not in (None, False)}
    tag = params.get("pretrained")
    if isinstance(tag, str) and tag and not os.path.isfile(tag):  # an open_clip tag: its normalisation
        tag_cfg = adapter.symbol("get_pretrained_cfg")(model_name, tag) or {}
        for key, arg in TAG_PREPROCESS.items():
            if key in tag_cfg and arg not in kwargs:
                kwargs[arg] = tag_cfg[key]
    if params.get("siglip"):  # as open_clip_train/main.py: SigLIP models carry a logit bias
        kwargs.update(init_logit_scale=math.log(10), init_logit_bias=-10)
    return kwargs


def hub_model_config(model_name: str, kwargs: Mapping[str, Any], repo_id: str, hf_tokenizer: bool) -> dict:
    """The model_cfg that makes open_clip build the model create_model built with ``kwargs``."""
    base = adapter.symbol("get_model_config")(model_name)
    if not base:
        raise UsageError(f"no open_clip config for model {model_name!r}; pass the --model the run was trained with")
    config = adapter.apply_create_overrides(base, kwargs)
    if hf_tokenizer:  # hf-hub: loads the tokenizer named here; point it at the files we upload
        config["text_cfg"]["hf_tokenizer_name"] = repo_id
    return config


# --- export -------------------------------------------------------------------------------------


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
    model, _, _ = adapter.symbol("create_model_and_transforms")(
        model_name, load_weights=False, pretrained_text=False, pretrained_image=False, output_dict=True, **kwargs
    )
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
    epoch = saved.get("epoch") if isinstance(saved.get("epoch"), int) else None
    return Export(out_dir, config, epoch)


# --- model card ---------------------------------------------------------------------------------


def _number(value: Any) -> str:
    return "not recorded" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _training_rows(model_name: str, epoch: int | None, settings: TierSettings, params: Mapping[str, Any]) -> list[str]:
    rows = [("open_clip architecture", f"`{model_name}`")]
    if params.get("pretrained"):
        rows.append(("Initialised from", f"`{params['pretrained']}`"))
    if epoch is not None:
        rows.append(("Checkpoint", f"epoch {epoch}" + (f" of {params['epochs']}" if params.get("epochs") else "")))
    if settings.loss == "clip":
        rows.append(("Loss", "open_clip's contrastive loss only (no TIER regularisation)"))
    else:
        rows.append(("Loss", {"tier": "CLIP contrastive + TIER entropy regularisation",
                              "local-uniformity": "CLIP contrastive + local alignment and uniformity",
                              "filip": "CLIP contrastive + FILIP token-wise contrastive term"}.get(
                                  settings.loss or "", settings.loss or "not recorded")))
    if settings.loss in ("tier", None):
        mask = settings.token_mask
        rows += [
            ("TIER λ_text (token→patch entropy weight)", _number(settings.lambda_text)),
            ("TIER λ_image (patch→token entropy weight)", _number(settings.lambda_image)),
            ("TIER token mask", f"{mask} ({TOKEN_MASK_MEANING[mask]})" if mask in TOKEN_MASK_MEANING else _number(mask)),
        ]
        if settings.scale is not None:
            rows.append(("TIER similarity scale", _number(settings.scale)))
    if settings.lu_align_weight or settings.lu_uniform_weight:
        rows += [("Local alignment weight", _number(settings.lu_align_weight)),
                 ("Local uniformity weight", _number(settings.lu_uniform_weight))]
    for name, title in (("batch_size", "Batch size per device"), ("world_size", "Devices"), ("lr", "Learning rate"),
                        ("siglip", "SigLIP loss"), ("precision", "Precision")):
        if params.get(name) not in (None, False):
            rows.append((title, _number(params[name])))
    return ["| Setting | Value |", "|:--|:--|", *(f"| {k} | {v} |" for k, v in rows)]


def model_card(repo_id: str, model_name: str, epoch: int | None, settings: TierSettings,
               params: Mapping[str, Any] | None = None, results: Sequence[Mapping[str, Any]] = (),
               model_config: Mapping[str, Any] | None = None, license: str | None = None,
               loss_segments: Sequence[tuple[int, int, Mapping[str, Any]]] = ()) -> str:
    """README.md for the Hub: what the model is, how it was trained, its results and how to load it.
    ``loss_segments`` (loss_history.segments): the settings by epoch, shown when they changed."""
    from tier_openclip import loss_history
    from tier_openclip.evaluate import results_markdown

    params = params or {}
    front = ["---", "library_name: open_clip", "pipeline_tag: zero-shot-image-classification"]
    if license:
        front.append(f"license: {license}")
    front += ["tags:", *(f"- {t}" for t in ("clip", "open_clip", "tier", "chest-x-ray", "radiology", "medical")), "---"]
    hf_model = (model_config or {}).get("text_cfg", {}).get("hf_model_name")
    lines = [
        *front, "", f"# {repo_id.split('/')[-1]}", "",
        "A CLIP-style model of chest radiographs and radiology reports, trained with "
        "[open_clip](https://github.com/mlfoundations/open_clip) and the TIER loss (\"TIER: Text-Image Entropy "
        "Regularization for CLIP-style models\", Palepu & Beam: the contrastive loss plus penalties on the entropy of each report token's "
        "similarities over image patches and of each patch's over tokens, which sharpen local "
        "alignment), using the tier-openclip plugin.", "",
        "## Training", "", *_training_rows(model_name, epoch, settings, params), "", *loss_history.card_rows(loss_segments),
        "### Training data", "",
        "Trained on image–report pairs of [MIMIC-CXR](https://physionet.org/content/mimic-cxr/) "
        "(Johnson et al., 2019), used under the PhysioNet Credentialed Health Data Use Agreement. "
        "No training data — no images, reports or patient information — is included in or was "
        "uploaded with this repository; it holds the model weights and configuration only.", "",
        "## Evaluation", "",
    ]
    if results:
        lines.append("Zero-shot classification by the CheXzero protocol (per label, a positive and a negative "
                     "prompt; scored by the difference of their similarities, which orders images as CheXzero's "
                     "softmax does), ROC AUC with bootstrap confidence intervals, computed with "
                     "`tier-openclip eval zeroshot`.")
        for result in results:
            lines += ["", results_markdown(result).rstrip()]
    else:
        lines.append("No evaluation results were supplied with this upload.")
    lines += [
        "", "## Usage", "", "```python", "import open_clip", "import torch", "from PIL import Image", "",
        f'model, preprocess = open_clip.create_model_from_pretrained("hf-hub:{repo_id}")',
        f'tokenizer = open_clip.get_tokenizer("hf-hub:{repo_id}")', "model.eval()", "",
        'image = preprocess(Image.open("chest_xray.png").convert("RGB")).unsqueeze(0)',
        'text = tokenizer(["pleural effusion", "no pleural effusion"])',
        "with torch.no_grad():",
        "    image_features = model.encode_image(image, normalize=True)",
        "    text_features = model.encode_text(text, normalize=True)",
        "    similarity = (image_features @ text_features.T)[0].double()",
        "# CheXzero's softmax over the two prompts, as a sigmoid of the scaled difference in float64",
        "# (a float32 softmax rounds to exactly 1.0 once the difference passes ~0.17 at scale 100)",
        "probability = torch.sigmoid(model.logit_scale.exp().double() * (similarity[0] - similarity[1]))",
        'print("P(pleural effusion) =", probability.item())', "```", "",
    ]
    if hf_model:
        lines += [f"The text tower's architecture is read from `{hf_model}` (its config.json) when the model loads.", ""]
    lines += [
        f"Zero-shot evaluation: `tier-openclip eval zeroshot --model hf-hub:{repo_id} --dataset chexpert --data DIR`.", "",
        "## Intended use and limitations", "",
        "For research on vision–language models of chest radiographs. It is not a medical device and has not "
        "been validated for clinical use; do not use it for diagnosis or patient care. MIMIC-CXR comes from "
        "one hospital system in the USA, so the model reflects that population, its scanners and its reporting style.",
        "",
    ]
    return "\n".join(lines)


# --- upload -------------------------------------------------------------------------------------


def hub_token() -> str:
    """The token huggingface_hub finds (HF_TOKEN or `hf auth login`), or UsageError saying how to log in."""
    import huggingface_hub

    token = huggingface_hub.get_token()
    if not token:
        raise UsageError("no Hugging Face token found; set HF_TOKEN or run `hf auth login` "
                         "(or use --local-dir to only write the folder)")
    return token


def upload(folder: str | Path, repo_id: str, private: bool = False, commit_message: str = "Add model") -> str:
    """Create the repo if needed and upload the folder; returns the commit URL. The token comes from
    huggingface_hub (HF_TOKEN or `hf auth login`) and stays in memory. CommandError when the Hub
    cannot be reached or refuses the upload."""
    import huggingface_hub

    api = huggingface_hub.HfApi(token=hub_token())
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message=commit_message)
    except Exception as exc:  # noqa: BLE001 -- httpx/requests network errors, HfHubHTTPError, ...
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CommandError(f"uploading to https://huggingface.co/{repo_id} failed ({type(exc).__name__}"
                           f"{': ' + detail if detail else ''}); nothing was published unless the Hub says "
                           "otherwise. Check the network and run the same command again, or write the folder with "
                           "--local-dir and upload it later with `hf upload`") from None
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"


# --- the export folder --------------------------------------------------------------------------

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


# --- command line -------------------------------------------------------------------------------


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
    from tier_openclip.evaluate import results_markdown

    if not isinstance(result, dict):
        found = type(result).__name__
        raise CommandError(f"--results {path} holds a JSON {found}, not the object `tier-openclip eval zeroshot --out` writes")
    try:
        results_markdown(result)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        what = f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise CommandError(f"--results {path} is not a results JSON of `tier-openclip eval zeroshot --out` ({what})") from None


def _export(args: argparse.Namespace, params: dict, results: list, out_dir: Path) -> None:
    from tier_openclip import loss_history

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

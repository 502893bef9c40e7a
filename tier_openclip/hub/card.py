"""`push`'s model card (README.md on the Hub): what the model is, how it was trained, its results
and how to load it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tier_openclip.hub.params import TierSettings

TOKEN_MASK_MEANING = {"valid": "padding tokens ignored", "all": "every position, as the authors' code does"}


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
    from tier_openclip.evaluation.zeroshot import results_markdown
    from tier_openclip.training import loss_history

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

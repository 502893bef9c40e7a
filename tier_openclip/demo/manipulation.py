"""The demo's manipulation check: did a TIER arm's token→patch maps move, and how hard does TIER
pull against CLIP on the start checkpoint? Thin wrappers over tier_openclip.training.diagnostics for a
checkpoint and the demo's data.

- ``map_stats``: the token→patch softmax's entropy, top-1 and top-k mass at a given scale (a TIER
  arm's training scale) over the test pairs, in eval mode.
- ``gradient_ratio``: ‖∇ TIER‖ / ‖∇ CLIP‖ on the trainable parameters over the first training
  batches, in train mode (what the optimiser sees); ``calibrated_lambda``: the λ that makes it a
  target, rounded to two significant digits so the last bits of the measurement (which differ by
  CPU) do not change the training command.
- ``max_top1_mass``: the most the top-1 mass can be at a scale, one patch at cosine +1 and every
  other at −1: 1/(1 + (P − 1)·e^(−2·scale)); at the paper's scale 1 over 64 patches 0.105, so a
  rise of 0.1 is out of reach there.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

TOP_K = 5  # of 64 patches: the mass of the 5 most similar, beside 5/64 for a flat map
RATIO_BATCHES = 4


def resolve_scale(model: Any, scale: str) -> float:
    """A --tier-scale value as a number: 'logit' is the model's own logit scale (exp)."""
    return float(model.logit_scale.exp().item()) if scale == "logit" else float(scale)


def map_stats(model: Any, batches: Iterable[tuple], scales: Sequence[str], top_k: int = TOP_K) -> dict[str, dict]:
    """scale -> tier_openclip.training.diagnostics.token_map_stats over all ``batches`` (images, texts) at once."""
    import torch

    from tier_openclip.features import token_features
    from tier_openclip.training.diagnostics import token_map_stats

    model.eval()
    texts, images, masks = [], [], []
    with torch.no_grad():
        for image_batch, text_batch in batches:
            out = token_features(model, image_batch, text_batch)
            texts.append(out["text_tokens"].float())
            images.append(out["image_tokens"].float())
            masks.append(out["text_mask"].bool())
    text_tokens, image_tokens, mask = torch.cat(texts), torch.cat(images), torch.cat(masks)
    out = {}
    for scale in scales:
        value = resolve_scale(model, scale)
        stats = token_map_stats(text_tokens, image_tokens, mask, scale=value, top_k=top_k)
        out[scale] = {**stats, "scale_value": value,
                      "max_top1_mass": max_top1_mass(value, image_tokens.shape[1])}
    return out


def gradient_ratio(model: Any, batches: Iterable[tuple], scale: str, tier_lambda: float = 1.0,
                   max_batches: int = RATIO_BATCHES) -> dict:
    """The mean over the first ``max_batches`` batches of TIER's (λ both directions, ``scale``)
    gradient norm over CLIP's on the trainable parameters; {"ratio", "ratios", "lambda", "scale"}."""
    from tier_openclip.loss import TierLoss
    from tier_openclip.training.diagnostics import manipulation_check

    loss = TierLoss(lambda_text=tier_lambda, lambda_image=tier_lambda,
                    scale="logit" if scale == "logit" else float(scale), impl="torch")
    model.train()  # batch statistics in the trunk's normalisation, as in training
    ratios = []
    for index, (images, texts) in enumerate(batches):
        if index == max_batches:
            break
        ratios.append(manipulation_check(model, loss, images, texts)["tier_grad_ratio"])
    model.eval()
    if not ratios:
        raise ValueError("gradient_ratio needs at least one batch")
    return {"ratio": sum(ratios) / len(ratios), "ratios": ratios, "lambda": tier_lambda, "scale": scale}


def calibrated_lambda(target: float, measured: dict) -> float:
    """λ giving ``target`` ratio (diagnostics.lambda_for_ratio), to two significant digits."""
    from tier_openclip.training.diagnostics import lambda_for_ratio

    value = lambda_for_ratio(target, measured["ratio"], measured["lambda"])
    return float(f"{value:.2g}")


def max_top1_mass(scale: float, patches: int) -> float:
    """The largest top-1 mass a token→patch softmax can have at ``scale`` over unit vectors."""
    return 1.0 / (1.0 + (patches - 1) * math.exp(-2.0 * scale))

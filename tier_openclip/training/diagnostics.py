"""Is TIER acting? Two measurements of one batch, as pure functions on tensors.

- ``token_map_stats``: how sharp the token→patch maps are at the scale TIER trains at (entropies,
  top-1 and top-k softmax mass) beside what a flat map gives (ln P, 1/P, k/P), so a reader sees
  how much room the maps have to move.
- ``gradient_norm_ratio`` / ``gradient_ratio_of_terms``: ‖∇ TIER's terms‖ / ‖∇ contrastive term‖
  with respect to given tensors, e.g. the trainable parameters. At the paper's setting (λ 0.1,
  scale 1) it is a fraction of a percent (0.03% for the demo's model at initialisation,
  benchmarks/results/diagnostics-amd-epyc-2cpu.json): TIER then barely moves the model, and a
  null result says nothing about the hypothesis.

Where to measure the ratio: on the parameters (what the optimizer sees), or on a tensor that both
the pooled features and the tokens are computed from. Not on the model's ``image_tokens`` /
``text_tokens`` outputs: tier_openclip.features computes the pooled features beside the tokens,
not from them, so the contrastive gradient there is exactly 0 (``gradient_ratio_of_terms`` says so
with a ValueError rather than returning infinity).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from tier_openclip.entropy import token_patch_entropy
from tier_openclip.features import enable_token_outputs
from tier_openclip.loss import ContrastiveTokenLoss

TIER_TERMS = ("tier_text_loss", "tier_image_loss")
CONTRASTIVE_TERM = "contrastive_loss"  # the key open_clip's ClipLoss and SigLipLoss return


def token_map_stats(
    text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None = None,
    scale: float | Tensor = 1.0, top_k: int = 5,
) -> dict[str, float]:
    """Sharpness of TIER's softmaxes at ``scale`` (the training scale), averaged as TIER averages:
    over the valid tokens (or all patches) of a pair, then over pairs that have a valid token.

    Inputs are TIER's: (N, T, D) and (N, P, D) L2-normalised tokens, (N, T) bool mask (None: all
    valid). Keys: entropy_token_patch, entropy_patch_token (nats), max_entropy_token_patch (ln P),
    max_entropy_patch_token (mean over pairs of ln(valid tokens)), top1_mass and topk_mass of the
    token→patch softmax, uniform_top1_mass (1/P) and uniform_topk_mass (k/P) of a flat map, top_k (k).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    num_pairs, num_tokens, _ = text_tokens.shape
    num_patches = image_tokens.shape[1]
    mask = torch.ones(num_pairs, num_tokens, dtype=torch.bool, device=text_tokens.device) if text_mask is None \
        else text_mask.bool()
    with torch.no_grad():
        # The reference implementation is TIER's definition; the Triton kernel is held to it.
        h_text, h_image = token_patch_entropy(text_tokens, image_tokens, mask, scale, impl="torch")
        dtype = torch.promote_types(text_tokens.dtype, torch.float32)
        with torch.autocast(text_tokens.device.type, enabled=False):  # the training loop may run under AMP
            scores = scale * torch.einsum("ntd,npd->ntp", text_tokens.to(dtype), image_tokens.to(dtype))
        probs = torch.softmax(scores, dim=2)  # token→patch, (N, T, P)
        k = min(top_k, num_patches)
        top = probs.topk(k, dim=2).values  # sorted, largest first
        num_valid = mask.sum(dim=1)
        has_token = num_valid > 0
        if not bool(has_token.any()):
            raise ValueError("token_map_stats needs at least one valid text token; text_mask is all False")

        def pair_then_batch_mean(per_token: Tensor) -> float:
            per_pair = (per_token * mask).sum(dim=1) / num_valid.clamp(min=1)
            return float(per_pair[has_token].mean())

        return {
            "entropy_token_patch": float(h_text[has_token].mean()),
            "entropy_patch_token": float(h_image[has_token].mean()),
            "max_entropy_token_patch": math.log(num_patches),
            "max_entropy_patch_token": float(num_valid[has_token].to(dtype).log().mean()),
            "top1_mass": pair_then_batch_mean(top[..., 0]),
            "topk_mass": pair_then_batch_mean(top.sum(dim=2)),
            "uniform_top1_mass": 1.0 / num_patches,
            "uniform_topk_mass": k / num_patches,
            "top_k": float(k),
        }


def _grad_norm(term: Tensor, wrt: Sequence[Tensor], loss_scale: float) -> tuple[float, list[Tensor | None]]:
    """‖∂term/∂wrt‖ over all of ``wrt`` together, and the gradients (None where term does not reach)."""
    if not term.requires_grad:
        return 0.0, [None] * len(wrt)
    # retain_graph: training's own backward still needs this graph. autograd.grad returns the
    # gradients without touching any .grad, so the training step is unchanged.
    grads = list(torch.autograd.grad(term * loss_scale, wrt, retain_graph=True, allow_unused=True))
    return _norm(grads, loss_scale), grads


def _norm(grads: Sequence[Tensor | None], loss_scale: float) -> float:
    squares = [g.detach().double().square().sum() for g in grads if g is not None]
    return float(torch.stack(squares).sum().sqrt()) / loss_scale if squares else 0.0


def gradient_ratio_of_terms(losses: Mapping[str, Tensor], wrt: Sequence[Tensor],
                            loss_scale: float = 1.0) -> dict[str, float]:
    """Gradient norms of TIER's and the contrastive terms of a TierLoss output dict, and their ratios.

    ``losses``: ``TierLoss(..., output_dict=True)``'s dict, its graph still attached; ``wrt``: the
    tensors to differentiate with respect to (a list of parameters, or intermediate tensors).
    Returns grad_norm_contrastive, grad_norm_tier (of tier_text_loss + tier_image_loss),
    grad_norm_tier_text, grad_norm_tier_image, and tier_grad_ratio, tier_grad_ratio_text,
    tier_grad_ratio_image (each TIER norm over the contrastive norm). ``loss_scale``: multiplies the
    terms before differentiating and divides the norms after, as a GradScaler does, so that a small
    term's gradient does not underflow in float16 (pass the scaler's get_scale()).
    """
    missing = [name for name in (*TIER_TERMS, CONTRASTIVE_TERM) if name not in losses]
    if missing:
        raise ValueError(f"the loss dict has no {', '.join(missing)}: pass the output of TierLoss(..., output_dict=True)")
    wrt = list(wrt)
    contrastive, _ = _grad_norm(losses[CONTRASTIVE_TERM], wrt, loss_scale)
    if contrastive == 0.0:
        raise ValueError("the contrastive loss has a zero gradient on these tensors (it does not reach them, e.g. the "
                         "model's token outputs): measure on the parameters instead")
    text, text_grads = _grad_norm(losses[TIER_TERMS[0]], wrt, loss_scale)
    image, image_grads = _grad_norm(losses[TIER_TERMS[1]], wrt, loss_scale)
    # The gradient of a sum is the sum of the gradients: no third pass through the graph.
    both = [a if b is None else b if a is None else a + b for a, b in zip(text_grads, image_grads)]
    tier = _norm(both, loss_scale)
    return {
        "grad_norm_contrastive": contrastive,
        "grad_norm_tier": tier,
        "grad_norm_tier_text": text,
        "grad_norm_tier_image": image,
        "tier_grad_ratio": tier / contrastive,
        "tier_grad_ratio_text": text / contrastive,
        "tier_grad_ratio_image": image / contrastive,
    }


def tier_call(loss: ContrastiveTokenLoss, model_out: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict]:
    """``loss(**model_out, output_dict=True)`` and TIER's inputs as TIER saw them (text_tokens,
    image_tokens, text_mask, scale: windowed by --tier-token-mask all, the detached logit scale).

    The loss's own hooks (and a pending --tier-lambda-* auto calibration) are paused for the call,
    so a training logger attached to it counts nothing and no λ is set from this batch.
    """
    if not getattr(loss, "with_tier", False):
        raise ValueError(f"the TIER diagnostics need a TierLoss (--loss tier), got {type(loss).__name__}")
    seen: list[dict] = []
    hooks = loss.metrics_hook, loss.diagnostics_hook, loss.lambda_calibration
    loss.metrics_hook, loss.lambda_calibration = None, None
    loss.diagnostics_hook = lambda _losses, tier_inputs: seen.append(tier_inputs)
    try:
        losses = loss(**model_out, output_dict=True)
    finally:
        loss.metrics_hook, loss.diagnostics_hook, loss.lambda_calibration = hooks
    return losses, seen[0]


def gradient_norm_ratio(loss: ContrastiveTokenLoss, model_out: Mapping[str, Tensor],
                        wrt: Sequence[Tensor]) -> dict[str, float]:
    """``gradient_ratio_of_terms`` of ``loss(**model_out, output_dict=True)``: ``loss`` a TierLoss,
    ``model_out`` the forward's dict with token outputs (tier_openclip.features.enable_token_outputs)."""
    return gradient_ratio_of_terms(tier_call(loss, model_out)[0], wrt)


def manipulation_check(model: nn.Module, loss: ContrastiveTokenLoss, images: Tensor, texts: Tensor,
                       top_k: int = 5) -> dict[str, float]:
    """The whole check on one batch: one forward with token outputs, then ``token_map_stats`` at the
    loss's training scale and the gradient ratio on the model's trainable parameters.

    The model's mode (train/eval) is left as the caller set it; no .grad is written. Returns both
    dicts merged (their keys do not overlap).
    """
    enable_token_outputs(model)
    losses, tier_inputs = tier_call(loss, model(images, texts))
    stats = token_map_stats(**tier_inputs, top_k=top_k)
    params = [p for p in model.parameters() if p.requires_grad]
    return {**stats, **gradient_ratio_of_terms(losses, params)}


def lambda_for_ratio(target: float, measured_ratio: float, lambda_used: float) -> float:
    """The λ that gives ``target`` gradient ratio, from a ratio measured with ``lambda_used``.

    Why linear: TierLoss's TIER terms are λ_text·H_text + λ_image·H_image, and the entropies H do not
    depend on λ; so at fixed parameters and batch TIER's gradient is λ·∇H (with λ_text = λ_image = λ)
    while the contrastive gradient does not depend on λ at all. The ratio is therefore exactly
    proportional to λ: ratio(λ') = ratio(λ)·λ'/λ. With λ_text ≠ λ_image this holds per direction
    (use tier_grad_ratio_text / _image). It holds at the measured point only: training moves the
    parameters, and the ratio with them.
    """
    for name, value in (("target", target), ("measured_ratio", measured_ratio), ("lambda_used", lambda_used)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return lambda_used * target / measured_ratio

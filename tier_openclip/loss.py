"""TIER as an open_clip loss: contrastive loss + λ_text·H(token→patch) + λ_image·H(patch→token).

``ContrastiveTokenLoss`` is open_clip's contrastive loss plus token-level terms (``extra_terms``,
e.g. local alignment and uniformity: ``--loss local-uniformity``); ``TierLoss`` is that plus TIER's
entropies (``--loss tier``). Each is called like open_clip's ``ClipLoss`` — ``loss(**model_out, output_dict=True)`` —
on a model whose forward also returns ``image_tokens``, ``text_tokens``, ``text_mask`` and the
token ids ``text_ids`` (``tier_openclip.features.enable_token_outputs``). The returned dict holds
loss terms only, because open_clip's training loop sums every value; raw entropies go to
``metrics_hook``. ``diagnostics_hook`` sees the loss terms and TIER's inputs (tier_openclip.training.diagnostics).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from tier_openclip.entropy import Impl, token_patch_entropy
from tier_openclip.openclip_adapter import ContrastiveArgs, make_contrastive_loss

TokenMask = Literal["valid", "all"]
TOKEN_MASKS: tuple[str, ...] = ("valid", "all")
Scale = float | Literal["logit"]
MetricsHook = Callable[[dict[str, Tensor]], None]
# (the loss terms, graph attached; TIER's inputs as TIER saw them: text_tokens, image_tokens, text_mask, scale)
DiagnosticsHook = Callable[[dict[str, Tensor], dict[str, "Tensor | float | None"]], None]


def check_scale(scale: Scale) -> Scale:
    """``scale`` if it is a positive finite number or 'logit', else ValueError."""
    if scale == "logit":
        return scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number or 'logit', got {scale!r}")
    return float(scale)


def authors_token_window(text_mask: Tensor) -> int:
    """Length of the batch as the authors' tokenizer pads it (``padding='longest'``).

    Positions up to the last valid token of the longest caption (its end token included); the
    shorter captions' padding inside that window stays in, as in the authors' ``attn_penalty``.
    """
    positions = torch.arange(1, text_mask.shape[1] + 1, device=text_mask.device)
    return int((text_mask.bool() * positions).amax()) if text_mask.numel() else 0


class TokenTerms(nn.Module):
    """Interface of extra per-pair token losses (see tier_openclip.local_uniformity)."""

    def forward(
        self, text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None, text_ids: Tensor | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:  # (weighted loss terms, raw metrics)
        # text_ids: the captions' token ids (N, T), for terms that need them (report sentences)
        raise NotImplementedError


class ContrastiveTokenLoss(nn.Module):
    """Contrastive loss (open_clip's ClipLoss or SigLipLoss) plus token-level terms: ``extra_terms``
    and, in TierLoss, TIER's entropy penalty.

    Args:
        lambda_text: weight of the mean token→patch entropy.
        lambda_image: weight of the mean patch→token entropy.
        scale: similarity scale inside the entropies: a positive number (the paper: 1, raw cosine
            similarity; anything else departs from it) or 'logit', the model's own learned logit
            scale, detached so that the TIER terms never move it.
        impl: entropy implementation, 'auto' | 'torch' | 'triton'.
        token_mask: 'valid' uses the tower's valid tokens (``text_mask``: no padding, no constant
            start token of causal towers); 'all' reproduces the authors' code, which pads each
            batch to its longest caption and keeps every position up to there: start/[CLS], end/[SEP]
            and the shorter captions' padding (see ``authors_token_window``).
        extra_terms: more token losses added to the same dict (e.g. local alignment/uniformity).
        siglip: use open_clip's SigLipLoss as the contrastive part.
        local_loss, gather_with_grad, cache_labels, rank, world_size, use_horovod, dist_impl:
            passed to open_clip's contrastive loss, as in ``ClipLoss``.
        lambda_text, lambda_image, scale and impl are TIER's: only TierLoss uses them.
    """

    with_tier = False  # whether forward adds TIER's entropies (TierLoss)

    def __init__(
        self,
        lambda_text: float = 0.1,
        lambda_image: float = 0.1,
        scale: Scale = 1.0,
        impl: Impl = "auto",
        token_mask: TokenMask = "valid",
        extra_terms: TokenTerms | None = None,
        siglip: bool = False,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        use_horovod: bool = False,
        dist_impl: str | None = None,
    ):
        super().__init__()
        if token_mask not in TOKEN_MASKS:
            raise ValueError(f"token_mask must be one of {TOKEN_MASKS}, got {token_mask!r}")
        self.lambda_text = lambda_text
        self.lambda_image = lambda_image
        self.scale = check_scale(scale)
        self.impl = impl
        self.token_mask = token_mask
        self.extra_terms = extra_terms
        self.contrastive = make_contrastive_loss(
            siglip,
            ContrastiveArgs(local_loss, gather_with_grad, cache_labels, rank, world_size, use_horovod, dist_impl),
        )
        self.metrics_hook: MetricsHook | None = None
        self.diagnostics_hook: DiagnosticsHook | None = None
        # (loss, contrastive term, mean h_text, mean h_image) -> None; sets lambda_* (tier_openclip.training.auto_lambda)
        self.lambda_calibration: Callable[..., None] | None = None

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor | None = None,
        image_tokens: Tensor | None = None,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        text_ids: Tensor | None = None,
        output_dict: bool = False,
    ) -> dict[str, Tensor] | Tensor:
        if image_tokens is None or text_tokens is None:
            raise ValueError(
                f"{type(self).__name__} needs image_tokens and text_tokens from the model; switch them on with "
                "tier_openclip.enable_token_outputs(model) (the plugin does this for --loss tier)"
            )
        if logit_bias is None:
            losses = dict(self.contrastive(image_features, text_features, logit_scale, output_dict=True))
        else:
            losses = dict(self.contrastive(image_features, text_features, logit_scale, logit_bias, output_dict=True))

        # TIER only compares each image with its own report, and both are on this rank:
        # unlike the contrastive part, it needs no gather across ranks.
        mask = text_mask
        if self.token_mask == "all":
            mask = None  # every position of the authors' padded batch
            if text_mask is not None:
                window = authors_token_window(text_mask)
                text_tokens = text_tokens[:, :window]
                text_ids = None if text_ids is None else text_ids[:, :window]
        # open_clip hands the loss exp(logit_scale); detached, TIER borrows it without training it.
        scale = logit_scale.detach() if self.scale == "logit" else self.scale
        metrics: dict[str, Tensor] = {}
        if self.with_tier:
            h_text, h_image = token_patch_entropy(text_tokens, image_tokens, mask, scale, self.impl)
            if self.lambda_calibration is not None:  # --tier-lambda-* auto: sets the λ once, from this batch
                self.lambda_calibration(self, losses["contrastive_loss"], h_text.mean(), h_image.mean())
            losses["tier_text_loss"] = self.lambda_text * h_text.mean()
            losses["tier_image_loss"] = self.lambda_image * h_image.mean()
            metrics["tier_text_entropy"] = h_text.detach().mean()
            metrics["tier_image_entropy"] = h_image.detach().mean()
        if self.extra_terms is not None:
            extra_losses, extra_metrics = self.extra_terms(text_tokens, image_tokens, mask, text_ids)
            losses.update(extra_losses)
            metrics.update(extra_metrics)

        if self.with_tier and self.diagnostics_hook is not None:
            tier_inputs = {"text_tokens": text_tokens, "image_tokens": image_tokens, "text_mask": mask, "scale": scale}
            self.diagnostics_hook(losses, tier_inputs)
        if self.metrics_hook is not None:
            self.metrics_hook(metrics)
        return losses if output_dict else sum(losses.values())


class TierLoss(ContrastiveTokenLoss):
    """Contrastive loss plus TIER's entropy penalty (and any ``extra_terms``): the arguments are
    ContrastiveTokenLoss's."""

    with_tier = True

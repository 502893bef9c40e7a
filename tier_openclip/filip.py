"""FILIP-style late-interaction contrastive term (Yao et al. 2021, arXiv 2111.07783), ``--loss filip``.

Why: TIER acts on token→patch maps, and CLIP's pooled contrastive loss never asks a token to
match a patch, so on the demo's phantom a CLIP start's token maps pointed no better than an
image-free prior (issue 20) and TIER would sharpen maps that never grounded. FILIP's term makes the
caption–image score itself a function of token–patch cosines, so the batch's negatives push each
token toward its own lesion's patches. Here it is used for pre-training only.

For the batch's N captions i and N images j, with cos(t, p) the cosine of token t and patch p:

    s_ij = ½·( mean_{t valid in i} max_{p in j} cos(t, p)  +  mean_{p in j} max_{t valid in i} cos(t, p) )

and the term is ``weight · ½·(CE(s/τ, diagonal) + CE(sᵀ/τ, diagonal))``. Padding tokens (and
the causal towers' constant start token, which ``text_mask`` already leaves out) never count in
either max or mean.

τ is a fixed flag (``--filip-temperature``, default 0.07, CLIP's initial temperature), not the
model's learned logit scale: the ``TokenTerms`` interface does not see the scale, and a fixed τ
keeps this term from pulling on the scale the pooled loss learns.

Distributed training: the term uses only this rank's batch (no gather across ranks), like
open_clip's ``--local-loss``; with one process, as in the demo, that is the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tier_openclip.loss import TokenTerms


def token_wise_similarity(text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None) -> Tensor:
    """s (N captions, N images): FILIP's token-wise similarity, both directions averaged.

    ``text_tokens`` (N, T, D), ``image_tokens`` (N, P, D), ``text_mask`` (N, T) of valid tokens or
    None (all valid). A caption with no valid token scores 0 with every image.
    """
    n, t, _ = text_tokens.shape
    mask = torch.ones(n, t, dtype=torch.bool, device=text_tokens.device) if text_mask is None else text_mask.bool()
    # Only positions some caption uses: the context's padding tail (most of a 64-token context for a
    # 20-token report) never counts, so cutting it changes no number and saves most of the
    # (captions, images, tokens, patches) cosines (demo pre-training step measured in benchmarks/README.md).
    used = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
    text_tokens, mask = text_tokens[:, :used], mask[:, :used]
    text = F.normalize(text_tokens.float(), dim=-1)
    image = F.normalize(image_tokens.float(), dim=-1)
    cos = torch.einsum("itd,jpd->ijtp", text, image)  # (captions, images, tokens, patches)
    valid = mask[:, None, :, None]  # over a caption's tokens
    count = mask.sum(1).clamp(min=1)[:, None]
    text_to_image = cos.amax(dim=3).masked_fill(~mask[:, None, :], 0.0).sum(2) / count
    # Padding tokens get -inf before the max over tokens; a caption without tokens is zeroed below.
    image_to_text = cos.masked_fill(~valid, float("-inf")).amax(dim=2)  # (captions, images, patches)
    image_to_text = torch.where(mask.any(1)[:, None, None], image_to_text, 0.0).mean(2)
    return (text_to_image + image_to_text) / 2


class FilipTerms(TokenTerms):
    """The FILIP term for the ``extra_terms`` of ContrastiveTokenLoss.

    Args:
        weight: weight of the term against the pooled contrastive loss (1: equal).
        temperature: τ of the token-wise logits s/τ (fixed; see the module docstring).
    """

    def __init__(self, weight: float = 1.0, temperature: float = 0.07):
        super().__init__()
        if not weight >= 0 or not temperature > 0:
            raise ValueError(f"weight must be >= 0 and temperature > 0, got {weight} and {temperature}")
        self.weight = weight
        self.temperature = temperature

    def forward(
        self, text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None, text_ids: Tensor | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        # float32 throughout: under amp a 1/τ of 14 on float16 cosines loses the logits' small differences.
        with torch.autocast(text_tokens.device.type, enabled=False):
            similarity = token_wise_similarity(text_tokens, image_tokens, text_mask)
            logits = similarity / self.temperature
            labels = torch.arange(logits.shape[0], device=logits.device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        with torch.no_grad():
            n = similarity.shape[0]
            off_diagonal = ~torch.eye(n, dtype=torch.bool, device=similarity.device)
            metrics = {
                "filip_ce": loss.detach(),
                "filip_similarity_pair": similarity.diagonal().mean(),
                "filip_similarity_other": similarity[off_diagonal].mean() if n > 1 else similarity.new_tensor(float("nan")),
                "filip_accuracy": (logits.argmax(1) == labels).float().mean(),
            }
        return {"filip_loss": self.weight * loss}, metrics

"""Local alignment and within-sample uniformity (Müller, Kaissis & Rueckert, arXiv 2211.07254).

The paper splits a local contrastive loss into an alignment part and a uniformity part and
replaces the intra-sample negatives by a uniformity prior on each sample's local embeddings.
Its code is not public; this is our reading of its text (the README says which parts are which):

- Local alignment: each valid text token's counterpart is the softmax(·/τ)-weighted mix of the
  same pair's patch embeddings, and each patch's counterpart the mix of the pair's valid token
  embeddings; the loss is the squared distance between a local embedding and its (L2-normalised)
  counterpart, ‖z − ĉ‖² = 2 − 2·cos(z, c), averaged per pair over tokens and over patches.
  No negatives. Gradients flow through both the embedding and its counterpart.
- Uniformity prior: per sample, log mean_{i≠j} exp(−t‖z_i − z_j‖²) over its patch embeddings and,
  separately, over its valid token embeddings (Wang & Isola 2020's uniformity, taken within one
  sample). A set with fewer than two members contributes 0.

All embeddings are expected L2-normalised (the model's token outputs are).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tier_openclip.loss import TokenTerms


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _masked_mean(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def local_alignment(
    text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-pair alignment of tokens to their patch mixes and of patches to their token mixes, (N,) each."""
    n, t, _ = text_tokens.shape
    mask = torch.ones(n, t, dtype=torch.bool, device=text_tokens.device) if text_mask is None else text_mask.bool()
    has_token = mask.any(dim=1)
    text_tokens, image_tokens = _at_least_float32(text_tokens), _at_least_float32(image_tokens)
    scores = torch.einsum("ntd,npd->ntp", text_tokens, image_tokens) / temperature

    patch_mix = torch.softmax(scores, dim=2) @ image_tokens  # (N, T, D): each token's counterpart
    token_to_patches = (text_tokens - F.normalize(patch_mix, dim=-1)).pow(2).sum(-1)
    align_text = _masked_mean(token_to_patches, mask, dim=1)

    # Softmax over valid tokens only; a pair without any is computed on all and zeroed.
    token_valid = (mask | ~has_token[:, None])[:, :, None]
    weights = torch.softmax(scores.masked_fill(~token_valid, float("-inf")), dim=1)  # (N, T, P)
    token_mix = weights.transpose(1, 2) @ text_tokens  # (N, P, D): each patch's counterpart
    patch_to_tokens = (image_tokens - F.normalize(token_mix, dim=-1)).pow(2).sum(-1)
    align_image = torch.where(has_token, patch_to_tokens.mean(dim=1), 0.0)
    return align_text, align_image


def within_sample_uniformity(embeddings: Tensor, mask: Tensor | None, t: float) -> Tensor:
    """log mean_{i≠j} exp(−t‖z_i − z_j‖²) over each sample's valid members, (N,); 0 if fewer than two."""
    n, m, _ = embeddings.shape
    mask = torch.ones(n, m, dtype=torch.bool, device=embeddings.device) if mask is None else mask.bool()
    z = _at_least_float32(embeddings)
    sq_norm = z.pow(2).sum(-1)
    sq_dist = (sq_norm[:, :, None] + sq_norm[:, None, :] - 2 * z @ z.transpose(1, 2)).clamp(min=0)  # (N, M, M)
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=z.device)
    pair_valid = mask.unsqueeze(2) & mask.unsqueeze(1) & off_diagonal
    num_pairs = pair_valid.sum(dim=(1, 2))
    enough = num_pairs > 0
    # Fill invalid pairs with a finite value so a sample with < 2 members stays NaN-free; it is zeroed below.
    potential = (-t * sq_dist).masked_fill(~pair_valid, -math.inf)
    potential = torch.where(enough[:, None, None], potential, 0.0)
    log_mean = torch.logsumexp(potential.flatten(1), dim=1) - num_pairs.clamp(min=1).to(z.dtype).log()
    return torch.where(enough, log_mean, 0.0)


class LocalUniformityTerms(TokenTerms):
    """Weighted local alignment and uniformity terms for TierLoss's ``extra_terms``."""

    def __init__(self, align_weight: float = 1.0, uniform_weight: float = 1.0, temperature: float = 0.1, t: float = 2.0):
        super().__init__()
        if temperature <= 0 or t <= 0:
            raise ValueError(f"temperature and t must be positive, got {temperature} and {t}")
        self.align_weight = align_weight
        self.uniform_weight = uniform_weight
        self.temperature = temperature
        self.t = t

    def forward(
        self, text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        losses: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        if self.align_weight:
            align_text, align_image = local_alignment(text_tokens, image_tokens, text_mask, self.temperature)
            align = (align_text.mean() + align_image.mean()) / 2
            losses["local_align_loss"] = self.align_weight * align
            metrics["local_align_text"] = align_text.detach().mean()
            metrics["local_align_image"] = align_image.detach().mean()
        if self.uniform_weight:
            uniform_patches = within_sample_uniformity(image_tokens, None, self.t)
            uniform_tokens = within_sample_uniformity(text_tokens, text_mask, self.t)
            uniform = (uniform_patches.mean() + uniform_tokens.mean()) / 2
            losses["local_uniform_loss"] = self.uniform_weight * uniform
            metrics["local_uniform_patches"] = uniform_patches.detach().mean()
            metrics["local_uniform_tokens"] = uniform_tokens.detach().mean()
        return losses, metrics

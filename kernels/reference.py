"""TIER's entropy term in plain PyTorch: the definition the Triton kernel is held to.

For pair n with text tokens T_n (T×D), image patches P_n (P×D) and S_n = scale · T_n P_nᵀ:

    h_text[n]  = mean over valid tokens t of  H(softmax_p S_n[t, p])
    h_image[n] = mean over patches p      of  H(softmax_t S_n[t, p]), t over valid tokens only

with H(softmax(s)) = logsumexp(s) − Σ softmax(s)·s. A pair with no valid token gives 0 and a
zero gradient. Everything is computed in (at least) float32 whatever the input dtype or autocast state.
"""

from __future__ import annotations

import torch
from torch import Tensor


def softmax_entropy(scores: Tensor, dim: int, valid: Tensor | None = None) -> Tensor:
    """Entropy of softmax(scores) along ``dim``, counting only entries where ``valid``.

    Every slice along ``dim`` must hold at least one valid entry.
    """
    if valid is None:
        log_partition = torch.logsumexp(scores, dim)
        return log_partition - (torch.softmax(scores, dim) * scores).sum(dim)
    scores = scores.masked_fill(~valid, float("-inf"))
    log_partition = torch.logsumexp(scores, dim)
    probs = torch.softmax(scores, dim)
    # Masked entries have probability 0; zero their scores so 0·(−inf) never makes a NaN.
    return log_partition - (probs * scores.masked_fill(~valid, 0.0)).sum(dim)


def token_patch_entropy_reference(
    text_tokens: Tensor,
    image_tokens: Tensor,
    text_mask: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-pair mean entropies (h_text, h_image), each of shape (N,), float32 (float64 for float64 inputs).

    text_tokens: (N, T, D); image_tokens: (N, P, D); text_mask: (N, T) bool, True = valid token
    (None: every token is valid).
    """
    num_pairs, num_tokens, _ = text_tokens.shape
    if text_mask is None:
        text_mask = torch.ones(num_pairs, num_tokens, dtype=torch.bool, device=text_tokens.device)
    text_mask = text_mask.bool()
    # At least float32 whatever the inputs or autocast say (float64 stays float64, for gradcheck).
    dtype = torch.promote_types(torch.promote_types(text_tokens.dtype, image_tokens.dtype), torch.float32)
    with torch.autocast(text_tokens.device.type, enabled=False):
        scores = scale * torch.einsum("ntd,npd->ntp", text_tokens.to(dtype), image_tokens.to(dtype))

    has_token = text_mask.any(dim=1)  # (N,)
    # A pair without valid tokens is computed as if all were valid (finite, no NaN) and then zeroed.
    token_valid = (text_mask | ~has_token[:, None])[:, :, None]  # (N, T, 1)
    num_valid = text_mask.sum(dim=1).clamp(min=1)

    per_token = softmax_entropy(scores, dim=2)  # (N, T)
    h_text = (per_token * text_mask).sum(dim=1) / num_valid

    per_patch = softmax_entropy(scores, dim=1, valid=token_valid)  # (N, P)
    h_image = torch.where(has_token, per_patch.mean(dim=1), 0.0)
    return h_text, h_image

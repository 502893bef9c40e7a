"""Local alignment and within-sample uniformity (Müller, Kaissis & Rueckert, arXiv 2211.07254).

The paper splits a local contrastive loss into an alignment part and a uniformity part and
replaces the intra-sample negatives by a uniformity prior on each sample's local embeddings.
Its code is not public; this is our reading of its text (the README says which parts are which):

- Local text units: each report sentence (tier_openclip.sentences) is one local text embedding,
  the mean of its tokens' normalised embeddings, renormalised; ``text_units='tokens'`` keeps the
  tower's valid tokens instead.
- Local alignment: each text unit's counterpart is the softmax(·/τ)-weighted mix of the same
  pair's patch embeddings, and each patch's counterpart the mix of the pair's text units; the
  loss is the squared distance between a local embedding and its (L2-normalised) counterpart,
  ‖z − ĉ‖² = 2 − 2·cos(z, c), averaged per pair over text units and over patches. No negatives.
  Gradients flow through both the embedding and its counterpart.
- Uniformity prior: per sample, log mean_{i≠j} exp(−t‖z_i − z_j‖²) over its patch embeddings and,
  separately, over its text units (Wang & Isola 2020's uniformity, taken within one sample). A
  set with fewer than two members contributes 0.

Collapse. "Every patch and text unit of a pair is one vector" makes the alignment 0, so the
uniformity prior alone keeps it away. Near that point (z_i = μ + δ_i, variance v = mean‖δ_i‖²)
the alignment (two directions averaged) grows as v/2 per modality and the uniformity term
(patches and text averaged) falls as t·M/(M−1)·v for a set of M members (the attention's
sharpening enters only at order v²/τ), so collapse is a stable solution when
``uniform_weight·t·M/(M−1) < align_weight/2`` and an unstable one for every M when
``uniform_weight·t ≥ align_weight/2`` (``collapse_is_stable``). The collapse measure (mean
within-sample pairwise cosine) is logged every step.

All embeddings are expected L2-normalised (the model's token outputs are).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tier_openclip.loss import TokenTerms
from tier_openclip.sentences import SentenceVocab, sentence_ids

TextUnits = Literal["sentences", "tokens"]
TEXT_UNITS: tuple[str, ...] = ("sentences", "tokens")


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _full_precision(x: Tensor) -> torch.autocast:
    # Under --precision amp, F.normalize's eps (1e-12) is 0 in float16 and a zero row becomes 0/0 = NaN.
    return torch.autocast(x.device.type, enabled=False)


def _masked_mean(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def local_alignment(
    text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-pair alignment of text units to their patch mixes and of patches to their text-unit mixes, (N,) each.

    ``text_tokens`` are the local text embeddings: tokens, or pooled sentences (``pool_sentences``).
    """
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


def pool_sentences(text_tokens: Tensor, sentences: Tensor) -> tuple[Tensor, Tensor]:
    """One embedding per sentence: the mean of its tokens' normalised embeddings, renormalised.

    ``sentences`` (N, T) gives each position's sentence number (-1: in none, as
    ``tier_openclip.sentences.sentence_ids`` returns). Returns (N, S, D) and the (N, S) mask of
    the sentences a caption has, S the most any caption of the batch has (at least 1); the rows of
    missing sentences are zero.
    """
    count = max(int(sentences.max()) + 1, 1) if sentences.numel() else 1
    with _full_precision(text_tokens):
        tokens = F.normalize(_at_least_float32(text_tokens), dim=-1)
        # one_hot of (number + 1) puts "in none" into column 0, which is dropped.
        membership = F.one_hot(sentences.long() + 1, count + 1)[..., 1:].to(tokens.dtype)  # (N, T, S)
        pooled = F.normalize(membership.transpose(1, 2) @ tokens, dim=-1)  # zero rows stay zero
    return pooled, membership.sum(dim=1) > 0


def mean_pairwise_cosine(embeddings: Tensor, mask: Tensor | None) -> Tensor:
    """The collapse measure: mean over samples of the mean cosine between two distinct valid members.

    Samples with fewer than two members are left out; NaN if no sample has two.
    """
    n, m, _ = embeddings.shape
    mask = torch.ones(n, m, dtype=torch.bool, device=embeddings.device) if mask is None else mask.bool()
    pair_valid = mask.unsqueeze(2) & mask.unsqueeze(1) & ~torch.eye(m, dtype=torch.bool, device=embeddings.device)
    num_pairs = pair_valid.sum(dim=(1, 2))
    with _full_precision(embeddings):
        z = F.normalize(_at_least_float32(embeddings), dim=-1)
        cosines = (z @ z.transpose(1, 2)).masked_fill(~pair_valid, 0.0)  # a missing sentence's row is 0
    per_sample = cosines.sum(dim=(1, 2)) / num_pairs.clamp(min=1)
    enough = num_pairs > 0
    return per_sample[enough].mean() if enough.any() else z.new_tensor(math.nan)


def collapse_is_stable(align_weight: float, uniform_weight: float, t: float) -> bool:
    """Whether "every local embedding of a pair is one vector" can be a stable solution.

    True when ``uniform_weight·t < align_weight/2`` (the module docstring derives it): then
    collapse is stable for large enough sets of patches or text units. False means it is
    unstable for sets of every size.
    """
    return align_weight > 0 and uniform_weight * t < align_weight / 2


class LocalUniformityTerms(TokenTerms):
    """Weighted local alignment and uniformity terms for the ``extra_terms`` of ContrastiveTokenLoss / TierLoss.

    Args:
        align_weight, uniform_weight: weights of the two terms.
        temperature: τ of the alignment's cross-modal attention.
        t: t of the Gaussian-potential uniformity.
        text_units: 'sentences' (each report sentence pooled, the paper's local text unit) or
            'tokens' (the tower's valid tokens).
        sentence_vocab: the tokenizer's sentence-boundary ids (``tier_openclip.sentences.sentence_vocab``);
            needed for 'sentences', which then also needs the token ids (``text_ids``) in forward.
    """

    def __init__(
        self,
        align_weight: float = 1.0,
        uniform_weight: float = 1.0,
        temperature: float = 0.1,
        t: float = 2.0,
        text_units: TextUnits = "sentences",
        sentence_vocab: SentenceVocab | None = None,
    ):
        super().__init__()
        if temperature <= 0 or t <= 0:
            raise ValueError(f"temperature and t must be positive, got {temperature} and {t}")
        if text_units not in TEXT_UNITS:
            raise ValueError(f"text_units must be one of {TEXT_UNITS}, got {text_units!r}")
        if text_units == "sentences" and sentence_vocab is None:
            raise ValueError("text_units='sentences' needs "
                             "sentence_vocab=tier_openclip.sentences.sentence_vocab(tokenizer)")
        self.align_weight = align_weight
        self.uniform_weight = uniform_weight
        self.temperature = temperature
        self.t = t
        self.text_units = text_units
        self.sentence_vocab = sentence_vocab

    def local_text(
        self, text_tokens: Tensor, text_mask: Tensor | None, text_ids: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The local text embeddings and their mask: sentences pooled, or the tokens as they are."""
        if self.text_units == "tokens":
            return _at_least_float32(text_tokens), text_mask
        if text_ids is None:
            raise ValueError("text_units='sentences' needs the token ids (text_ids) beside the token embeddings; "
                             "tier_openclip.enable_token_outputs(model) makes the model return them")
        return pool_sentences(text_tokens, sentence_ids(text_ids, self.sentence_vocab, text_mask))

    def forward(
        self, text_tokens: Tensor, image_tokens: Tensor, text_mask: Tensor | None, text_ids: Tensor | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        with _full_precision(text_tokens):  # zero rows (missing sentences) and a 1/τ softmax: float32
            return self._terms(*self.local_text(text_tokens, text_mask, text_ids), _at_least_float32(image_tokens))

    def _terms(
        self, text: Tensor, mask: Tensor | None, image_tokens: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        losses: dict[str, Tensor] = {}
        # Both terms are computed and logged whatever their weights: a term at weight 0 still shows
        # what the others do to it (a local-uniformity run's collapse drives its uniformity to 0).
        align_text, align_image = local_alignment(text, image_tokens, mask, self.temperature)
        if self.align_weight:
            losses["local_align_loss"] = self.align_weight * (align_text.mean() + align_image.mean()) / 2
        uniform_image = within_sample_uniformity(image_tokens, None, self.t)
        uniform_text = within_sample_uniformity(text, mask, self.t)
        if self.uniform_weight:
            losses["local_uniform_loss"] = self.uniform_weight * (uniform_image.mean() + uniform_text.mean()) / 2
        with torch.no_grad():
            units = text.new_tensor(float(text.shape[1])) if mask is None else mask.sum(1).float().mean()
            metrics = {
                "local_align_text": align_text.detach().mean(),
                "local_align_image": align_image.detach().mean(),
                "local_uniform_image": uniform_image.detach().mean(),
                "local_uniform_text": uniform_text.detach().mean(),
                "local_cos_image": mean_pairwise_cosine(image_tokens, None),
                "local_cos_text": mean_pairwise_cosine(text, mask),
                "local_text_units": units,
            }
        return losses, metrics

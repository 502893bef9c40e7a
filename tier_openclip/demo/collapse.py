"""The collapse measure of issue #13 for any checkpoint: the mean within-sample pairwise cosine
of its local embeddings, as the local-uniformity loss logs it during training
(``local_uniformity.mean_pairwise_cosine``), here on the held-out test pairs.

Three sets of local embeddings per pair: the image's patch embeddings, the caption's valid text
tokens, and its sentences (each sentence's tokens pooled, ``local_uniformity.pool_sentences``:
the local-uniformity loss's default text units). A value near 1 means every member of the set is
one vector (collapse); issue #13's line for "not collapsed" is a patch cosine below 0.9
(``COLLAPSE_LINE``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

COLLAPSE_LINE = 0.9
MEASURES = ("patches", "tokens", "sentences")


def local_cosines(model: Any, tokenizer: Any, batches: Iterable[tuple], device: str = "cpu") -> dict[str, float | None]:
    """{"patches", "tokens", "sentences"}: the mean over test pairs of the mean cosine between two
    distinct members (pairs with fewer than two members left out; None if no pair has two)."""
    import torch

    from tier_openclip.features import token_features
    from tier_openclip.local_uniformity import mean_pairwise_cosine, pool_sentences
    from tier_openclip.sentences import sentence_ids, sentence_vocab

    vocab = sentence_vocab(tokenizer)
    sums = dict.fromkeys(MEASURES, 0.0)
    counts = dict.fromkeys(MEASURES, 0)
    with torch.no_grad():
        for images, texts in batches:
            texts = texts.to(device)
            out = token_features(model, images.to(device), texts)
            mask = out["text_mask"].bool()
            sentences, sentence_mask = pool_sentences(out["text_tokens"].float(), sentence_ids(texts, vocab, mask))
            image_tokens = out["image_tokens"].float()
            sets = {"patches": (image_tokens, torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=device)),
                    "tokens": (out["text_tokens"].float(), mask),
                    "sentences": (sentences, sentence_mask)}
            for name, (embeddings, members) in sets.items():
                eligible = int((members.sum(dim=1) >= 2).sum())  # mean_pairwise_cosine's samples
                if eligible:
                    sums[name] += float(mean_pairwise_cosine(embeddings, members)) * eligible
                    counts[name] += eligible
    return {name: (sums[name] / counts[name] if counts[name] else None) for name in MEASURES}


def collapsed(patch_cosine: float | None) -> bool | None:
    """Issue #13's reading: collapsed when the mean within-sample patch cosine is >= 0.9."""
    if patch_cosine is None or math.isnan(patch_cosine):
        return None
    return patch_cosine >= COLLAPSE_LINE

"""TIER as the authors' code computes it (apalepu13/TIER_Regularized_CLIP, Modeling/utils.py).

Their ``attn_penalty`` takes, per batch, the raw cosine similarities of L2-normalised word and
patch embeddings, c (N, T, P), with T the batch's longest report (``padding='longest'``), and
returns  mean_{n,t} Σ_p −(q+ε)·log(q+ε)  and  mean_{n,p} Σ_t −(q+ε)·log(q+ε),  q the softmaxes
over patches and over tokens, ε = 1e-7. ``authors_attn_penalty`` below writes it the same way.
"""

from __future__ import annotations

import pytest
import torch

from tier_openclip import TierLoss, token_patch_entropy
from tier_openclip.features import token_features
from tier_openclip.loss import authors_token_window

CAPTIONS = ["small left pleural effusion .", "no pneumothorax", "heart size normal , mild cardiomegaly", "clear lungs"]


def authors_attn_penalty(word_embs, patch_embs):
    """(entropy_text, entropy_im) as in attn_penalty, for one image per report (lam = 1, 1)."""
    word_embs = word_embs / word_embs.norm(dim=2, keepdim=True)
    patch_embs = patch_embs / patch_embs.norm(dim=2, keepdim=True)
    c = torch.bmm(word_embs, patch_embs.permute(0, 2, 1))  # N T P
    entropy = torch.softmax(c, dim=2) + 1e-7
    entropy_text = torch.mean(torch.sum(-entropy * torch.log(entropy), dim=2), dim=(1, 0))
    entropy_im = torch.softmax(c.permute(0, 2, 1), dim=2) + 1e-7
    entropy_im = torch.mean(torch.sum(-entropy_im * torch.log(entropy_im), dim=2), dim=(1, 0))
    return entropy_text, entropy_im


def model_batch(tower_models, kind):
    model, tokenizer, size = tower_models[kind]
    torch.manual_seed(3)
    with torch.no_grad():
        out = token_features(model, torch.randn(len(CAPTIONS), 3, *size), tokenizer(CAPTIONS))
    out["logit_scale"] = model.logit_scale.exp().detach()
    return out, tokenizer


@pytest.mark.parametrize("kind", ["hf-bert", "vit"])
def test_token_mask_all_equals_the_authors_attn_penalty(tower_models, kind):
    out, _ = model_batch(tower_models, kind)
    ours = TierLoss(1.0, 1.0, token_mask="all")(**out, output_dict=True)
    window = authors_token_window(out["text_mask"])
    assert window < out["text_tokens"].shape[1]  # open_clip padded further: the cut matters
    want_text, want_image = authors_attn_penalty(out["text_tokens"][:, :window], out["image_tokens"])
    torch.testing.assert_close(ours["tier_text_loss"], want_text, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours["tier_image_loss"], want_image, rtol=0, atol=1e-4)
    # Every position of open_clip's full context (what 'all' meant before) is far from it.
    full_text, full_image = token_patch_entropy(out["text_tokens"], out["image_tokens"], None, impl="torch")
    assert abs(full_image.mean() - want_image) > 1e-2


def test_the_window_is_what_padding_longest_gives(tower_models, tiny_bert_dir):
    """The authors tokenise with padding='longest': their T is our window, [CLS] to the longest [SEP]."""
    from transformers import AutoTokenizer

    out, tokenizer = model_batch(tower_models, "hf-bert")
    authors = AutoTokenizer.from_pretrained(str(tiny_bert_dir))(
        CAPTIONS, add_special_tokens=True, truncation=True, padding="longest", max_length=128, return_tensors="pt"
    ).input_ids
    ours = tokenizer(CAPTIONS)
    window = authors_token_window(out["text_mask"])
    assert window == authors.shape[1]
    assert torch.equal(ours[:, :window], authors)


def test_token_mask_all_keeps_the_clip_start_token_that_valid_drops(tower_models):
    out, tokenizer = model_batch(tower_models, "vit")
    ids = tokenizer(CAPTIONS)
    assert not out["text_mask"][:, 0].any()
    assert authors_token_window(out["text_mask"]) == int(ids.argmax(dim=-1).max()) + 1  # up to the last end token
    ours = TierLoss(1.0, 1.0, token_mask="all")(**out, output_dict=True)
    window = authors_token_window(out["text_mask"])
    without_start = token_patch_entropy(out["text_tokens"][:, 1:window], out["image_tokens"], None, impl="torch")
    assert abs(ours["tier_image_loss"] - without_start[1].mean()) > 1e-3


def test_tier_scale_flag():
    import argparse

    from tier_openclip.training.plugin import build_plugin_parser

    parser = build_plugin_parser()
    assert parser.parse_args(["--tier-scale", "logit"]).tier_scale == "logit"
    assert parser.parse_args(["--tier-scale", "10"]).tier_scale == 10.0
    assert parser.parse_args([]).tier_scale == 1.0
    parser.exit_on_error = False  # raise the error argparse would print (exit 2) instead
    for bad in ("0", "-2", "nan", "exp"):
        with pytest.raises(argparse.ArgumentError, match="positive number or 'logit'"):
            parser.parse_args(["--tier-scale", bad])
    help_text = next(a.help for a in parser._actions if "--tier-scale" in a.option_strings)
    assert "departs from the paper" in help_text and "detached" in help_text

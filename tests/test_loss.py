"""TierLoss against open_clip's own ClipLoss / SigLipLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from tier_openclip import TierLoss, token_patch_entropy


def model_outputs(n=6, t=5, p=7, d=8, seed=0, with_bias=False):
    g = torch.Generator().manual_seed(seed)
    out = {
        "image_features": F.normalize(torch.randn(n, d, generator=g), dim=-1),
        "text_features": F.normalize(torch.randn(n, d, generator=g), dim=-1),
        "logit_scale": torch.tensor(14.3),
        "image_tokens": F.normalize(torch.randn(n, p, d, generator=g), dim=-1),
        "text_tokens": F.normalize(torch.randn(n, t, d, generator=g), dim=-1),
        "text_mask": torch.arange(t)[None, :] < torch.randint(1, t + 1, (n, 1), generator=g),
    }
    if with_bias:
        out["logit_bias"] = torch.tensor(-10.0)
    return out


def test_lambda_zero_equals_open_clip_clip_loss_exactly():
    out = model_outputs()
    stock = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"], output_dict=True)
    ours = TierLoss(lambda_text=0.0, lambda_image=0.0)(**out, output_dict=True)
    assert ours["contrastive_loss"].item() == stock["contrastive_loss"].item()
    assert sum(ours.values()).item() == stock["contrastive_loss"].item()


def test_positive_lambdas_add_exactly_the_two_weighted_terms():
    out = model_outputs()
    h_text, h_image = token_patch_entropy(out["text_tokens"], out["image_tokens"], out["text_mask"], impl="torch")
    ours = TierLoss(lambda_text=0.3, lambda_image=0.05)(**out, output_dict=True)
    clip = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    assert set(ours) == {"contrastive_loss", "tier_text_loss", "tier_image_loss"}
    torch.testing.assert_close(ours["tier_text_loss"], 0.3 * h_text.mean(), rtol=0, atol=0)
    torch.testing.assert_close(ours["tier_image_loss"], 0.05 * h_image.mean(), rtol=0, atol=0)
    torch.testing.assert_close(TierLoss(0.3, 0.05)(**out), clip + 0.3 * h_text.mean() + 0.05 * h_image.mean())


def test_token_mask_all_reproduces_the_authors_unmasked_entropies():
    out = model_outputs()
    h_text, h_image = token_patch_entropy(out["text_tokens"], out["image_tokens"], None, impl="torch")
    ours = TierLoss(1.0, 1.0, token_mask="all")(**out, output_dict=True)
    torch.testing.assert_close(ours["tier_text_loss"], h_text.mean())
    torch.testing.assert_close(ours["tier_image_loss"], h_image.mean())
    masked = TierLoss(1.0, 1.0)(**out, output_dict=True)
    assert masked["tier_image_loss"] != ours["tier_image_loss"]


def test_siglip_contrastive_part():
    out = model_outputs(with_bias=True)
    stock = SigLipLoss()(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
    ours = TierLoss(0.0, 0.0, siglip=True)(**out, output_dict=True)
    assert ours["contrastive_loss"].item() == stock.item()


def test_raw_entropies_go_to_the_metrics_hook_not_the_total():
    seen = []
    loss = TierLoss(0.0, 0.0)
    loss.metrics_hook = seen.append
    out = model_outputs()
    losses = loss(**out, output_dict=True)
    assert seen and set(seen[0]) == {"tier_text_entropy", "tier_image_entropy"}
    assert seen[0]["tier_text_entropy"] > 0 and not seen[0]["tier_text_entropy"].requires_grad
    assert sum(losses.values()).item() == losses["contrastive_loss"].item()


def test_gradients_flow_to_tokens():
    out = model_outputs()
    for key in ("image_tokens", "text_tokens"):
        out[key].requires_grad_()
    TierLoss(0.5, 0.5)(**out).backward()
    assert out["image_tokens"].grad.abs().sum() > 0 and out["text_tokens"].grad.abs().sum() > 0


def test_missing_tokens_say_how_to_get_them():
    out = model_outputs()
    del out["image_tokens"]
    with pytest.raises(ValueError, match="enable_token_outputs"):
        TierLoss()(**out)
    with pytest.raises(ValueError, match="token_mask"):
        TierLoss(token_mask="none")

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


def test_token_mask_all_keeps_every_position_up_to_the_longest_caption():
    out = model_outputs(t=9)
    out["text_mask"] = torch.arange(9)[None, :] < torch.tensor([[2], [5], [1], [4], [5], [3]])  # longest: 5
    h_text, h_image = token_patch_entropy(out["text_tokens"][:, :5], out["image_tokens"], None, impl="torch")
    ours = TierLoss(1.0, 1.0, token_mask="all")(**out, output_dict=True)
    torch.testing.assert_close(ours["tier_text_loss"], h_text.mean(), rtol=0, atol=0)
    torch.testing.assert_close(ours["tier_image_loss"], h_image.mean(), rtol=0, atol=0)
    masked = TierLoss(1.0, 1.0)(**out, output_dict=True)
    assert masked["tier_image_loss"] != ours["tier_image_loss"]


def test_token_mask_all_without_a_mask_uses_every_position():
    out = model_outputs()
    out["text_mask"] = None
    h_text, h_image = token_patch_entropy(out["text_tokens"], out["image_tokens"], None, impl="torch")
    ours = TierLoss(1.0, 1.0, token_mask="all")(**out, output_dict=True)
    torch.testing.assert_close(ours["tier_text_loss"], h_text.mean(), rtol=0, atol=0)
    torch.testing.assert_close(ours["tier_image_loss"], h_image.mean(), rtol=0, atol=0)


def test_scale_logit_is_the_models_logit_scale_and_trains_nothing_through_tier():
    out = model_outputs()
    out["logit_scale"] = torch.tensor(14.3, requires_grad=True)  # already exp()'d, as open_clip passes it
    out["text_tokens"].requires_grad_()
    borrowed = TierLoss(0.3, 0.2, scale="logit")(**out, output_dict=True)
    fixed = TierLoss(0.3, 0.2, scale=14.3)(**out, output_dict=True)
    unit = TierLoss(0.3, 0.2)(**out, output_dict=True)
    for key in ("tier_text_loss", "tier_image_loss"):
        torch.testing.assert_close(borrowed[key], fixed[key], rtol=0, atol=0)
        assert not torch.isclose(borrowed[key], unit[key])  # the scale really is applied
    tier = borrowed["tier_text_loss"] + borrowed["tier_image_loss"]
    assert torch.autograd.grad(tier, out["logit_scale"], allow_unused=True, retain_graph=True)[0] is None
    assert torch.autograd.grad(tier, out["text_tokens"])[0].abs().sum() > 0
    (grad,) = torch.autograd.grad(borrowed["contrastive_loss"], out["logit_scale"])
    assert grad != 0  # the contrastive part still trains it


def test_scale_must_be_positive_or_logit():
    for bad in (0.0, -1.0, float("nan"), float("inf"), "exp", True):
        with pytest.raises(ValueError, match="positive number or 'logit'"):
            TierLoss(scale=bad)
    assert TierLoss(scale=2).scale == 2.0 and TierLoss(scale="logit").scale == "logit"


def test_triton_path_gets_the_logit_scale_as_a_python_float(monkeypatch):
    import sys
    import types

    from tier_openclip import entropy
    from tier_openclip.kernels.reference import token_patch_entropy_reference

    seen = []

    def fake_triton(text_tokens, image_tokens, text_mask, scale):
        seen.append(scale)
        return token_patch_entropy_reference(text_tokens, image_tokens, text_mask, scale)

    fake = types.ModuleType("tier_openclip.kernels.tier_entropy")
    fake.token_patch_entropy_triton = fake_triton
    monkeypatch.setitem(sys.modules, "tier_openclip.kernels.tier_entropy", fake)
    monkeypatch.setattr(entropy, "resolve_impl", lambda impl, tensor: "triton")
    out = model_outputs()
    ours = TierLoss(1.0, 1.0, scale="logit", impl="triton")(**out, output_dict=True)
    assert seen == [pytest.approx(14.3)] and type(seen[0]) is float
    torch.testing.assert_close(ours["tier_text_loss"], TierLoss(1.0, 1.0, scale=14.3)(**out, output_dict=True)["tier_text_loss"])


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

"""Local alignment and within-sample uniformity against dense loop-by-loop definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tier_openclip import TierLoss
from tier_openclip.local_uniformity import LocalUniformityTerms, local_alignment, within_sample_uniformity


def case(n=3, t=5, p=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(n, t, d, generator=g, dtype=torch.float64), dim=-1)
    image = F.normalize(torch.randn(n, p, d, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.rand(n, t, generator=g) < 0.6
    mask[:, 0] = True
    return text, image, mask


def alignment_by_loops(text, image, mask, tau):
    out_text, out_image = [], []
    for n in range(text.shape[0]):
        valid = [t for t in range(text.shape[1]) if mask[n, t]]
        token_terms = []
        for t in valid:
            weights = torch.softmax(torch.stack([text[n, t] @ image[n, p] / tau for p in range(image.shape[1])]), 0)
            mix = sum(w * image[n, p] for p, w in enumerate(weights))
            token_terms.append(((text[n, t] - mix / mix.norm()) ** 2).sum())
        patch_terms = []
        for p in range(image.shape[1]):
            weights = torch.softmax(torch.stack([image[n, p] @ text[n, t] / tau for t in valid]), 0)
            mix = sum(w * text[n, t] for w, t in zip(weights, valid))
            patch_terms.append(((image[n, p] - mix / mix.norm()) ** 2).sum())
        out_text.append(torch.stack(token_terms).mean())
        out_image.append(torch.stack(patch_terms).mean())
    return torch.stack(out_text), torch.stack(out_image)


def uniformity_by_loops(z, mask, t):
    out = []
    for n in range(z.shape[0]):
        members = [i for i in range(z.shape[1]) if mask is None or mask[n, i]]
        pairs = [(i, j) for i in members for j in members if i != j]
        if not pairs:
            out.append(z.new_zeros(()))
            continue
        potentials = torch.stack([torch.exp(-t * ((z[n, i] - z[n, j]) ** 2).sum()) for i, j in pairs])
        out.append(torch.log(potentials.mean()))
    return torch.stack(out)


def test_alignment_values_and_gradients_match_the_definition():
    text, image, mask = case()
    a = (text.clone().requires_grad_(), image.clone().requires_grad_())
    b = (text.clone().requires_grad_(), image.clone().requires_grad_())
    ours = local_alignment(*a, mask, temperature=0.3)
    expected = alignment_by_loops(*b, mask, tau=0.3)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want)
    (ours[0].sum() + 2 * ours[1].sum()).backward()
    (expected[0].sum() + 2 * expected[1].sum()).backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize("masked", [False, True])
def test_uniformity_values_and_gradients_match_the_definition(masked):
    text, _, mask = case()
    mask = mask if masked else None
    a, b = text.clone().requires_grad_(), text.clone().requires_grad_()
    ours = within_sample_uniformity(a, mask, t=2.0)
    expected = uniformity_by_loops(b, mask, t=2.0)
    torch.testing.assert_close(ours, expected)
    ours.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_uniformity_is_invariant_to_permuting_patches():
    _, image, _ = case()
    permuted = image[:, torch.randperm(image.shape[1])]
    torch.testing.assert_close(within_sample_uniformity(image, None, 2.0), within_sample_uniformity(permuted, None, 2.0))


def test_identical_embeddings_give_the_maximum_and_spread_ones_less():
    same = F.normalize(torch.ones(2, 4, 3, dtype=torch.float64), dim=-1)
    assert torch.all(within_sample_uniformity(same, None, 2.0) == 0)  # log mean exp(0)
    _, image, _ = case()
    assert torch.all(within_sample_uniformity(image, None, 2.0) < 0)
    # four points at the corners of a regular tetrahedron are as spread as four points can be
    tetra = F.normalize(torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64), dim=-1)
    assert within_sample_uniformity(tetra[None], None, 2.0).item() == pytest.approx(-2.0 * 8 / 3)
    assert within_sample_uniformity(tetra[None], None, 2.0) < within_sample_uniformity(image[:1, :4, :3], None, 2.0)


def test_masked_tokens_are_ignored():
    text, image, mask = case()
    scrambled = torch.where(mask[..., None], text, F.normalize(torch.randn_like(text), dim=-1))
    for f in (lambda x: local_alignment(x, image, mask, 0.2), lambda x: (within_sample_uniformity(x, mask, 2.0),)):
        for got, want in zip(f(scrambled), f(text)):
            torch.testing.assert_close(got, want)


def test_samples_without_enough_tokens_give_zero_and_finite_gradients():
    text, image, mask = case()
    mask[0] = False
    mask[1] = False
    mask[1, 2] = True  # one token: no pair for uniformity
    text.requires_grad_()
    image.requires_grad_()
    align_text, align_image = local_alignment(text, image, mask, 0.2)
    uniform = within_sample_uniformity(text, mask, 2.0)
    assert align_text[0] == 0 and align_image[0] == 0 and uniform[0] == 0 and uniform[1] == 0
    (align_text.sum() + align_image.sum() + uniform.sum()).backward()
    assert torch.isfinite(text.grad).all() and torch.isfinite(image.grad).all()
    assert torch.all(text.grad[0] == 0) and torch.all(image.grad[0] == 0)


def test_terms_compose_with_tier_and_are_all_logged():
    text, image, mask = case(n=4, d=8)
    features = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    outputs = dict(image_features=features, text_features=features.flip(0), logit_scale=torch.tensor(10.0),
                   image_tokens=image, text_tokens=text, text_mask=mask)
    terms = LocalUniformityTerms(align_weight=0.5, uniform_weight=0.25, temperature=0.2, t=2.0)
    seen = []
    loss = TierLoss(0.1, 0.1, extra_terms=terms)
    loss.metrics_hook = seen.append
    losses = loss(**outputs, output_dict=True)
    assert set(losses) == {"contrastive_loss", "tier_text_loss", "tier_image_loss", "local_align_loss", "local_uniform_loss"}
    align_text, align_image = local_alignment(text, image, mask, 0.2)
    torch.testing.assert_close(losses["local_align_loss"], 0.5 * (align_text.mean() + align_image.mean()) / 2)
    uniform = (within_sample_uniformity(image, None, 2.0).mean() + within_sample_uniformity(text, mask, 2.0).mean()) / 2
    torch.testing.assert_close(losses["local_uniform_loss"], 0.25 * uniform)
    assert {"local_align_text", "local_uniform_patches", "tier_text_entropy"} <= set(seen[0])
    only_lu = TierLoss(extra_terms=terms, include_tier=False)(**outputs, output_dict=True)
    assert "tier_text_loss" not in only_lu and math.isfinite(only_lu["local_align_loss"].item())
    with pytest.raises(ValueError, match="positive"):
        LocalUniformityTerms(temperature=0.0)

"""token_patch_entropy (torch reference) against an independent per-pair float64 implementation."""

from __future__ import annotations

import math

import pytest
import torch

from tier_openclip import token_patch_entropy


def entropy_by_loops(text, image, mask, scale):
    """TIER's definition written the slow way: one pair, one token, one patch at a time."""
    h_text, h_image = [], []
    for n in range(text.shape[0]):
        valid = [t for t in range(text.shape[1]) if mask is None or bool(mask[n, t])]
        if not valid:
            h_text.append(text.new_zeros(()))
            h_image.append(text.new_zeros(()))
            continue
        sims = scale * text[n].double() @ image[n].double().T  # (T, P)
        rows = []
        for t in valid:
            p = torch.softmax(sims[t], dim=0)
            rows.append(-(p * torch.log(p)).sum())
        cols = []
        for j in range(image.shape[1]):
            p = torch.softmax(sims[valid, j], dim=0)
            cols.append(-(p * torch.log(p)).sum())
        h_text.append(torch.stack(rows).mean())
        h_image.append(torch.stack(cols).mean())
    return torch.stack(h_text), torch.stack(h_image)


def random_case(n, t, p, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(n, t, d, generator=g, dtype=dtype), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(n, p, d, generator=g, dtype=dtype), dim=-1)
    mask = torch.rand(n, t, generator=g) < 0.7
    mask[:, 0] = True
    return text, image, mask


@pytest.mark.parametrize("shape", [(3, 5, 7, 4), (2, 1, 6, 3), (2, 4, 1, 3), (1, 1, 1, 2)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 7.5])
@pytest.mark.parametrize("masked", [False, True])
def test_values_and_gradients_match_the_definition(shape, scale, masked):
    text, image, mask = random_case(*shape)
    mask = mask if masked else None
    text_a, image_a = text.clone().requires_grad_(), image.clone().requires_grad_()
    text_b, image_b = text.clone().requires_grad_(), image.clone().requires_grad_()

    ours = token_patch_entropy(text_a, image_a, mask, scale=scale, impl="torch")
    expected = entropy_by_loops(text_b, image_b, mask, scale)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)

    weights = torch.tensor([0.3, -1.7])
    (weights[0] * ours[0].sum() + weights[1] * ours[1].sum()).backward()
    (weights[0] * expected[0].sum() + weights[1] * expected[1].sum()).double().backward()
    torch.testing.assert_close(text_a.grad, text_b.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(image_a.grad, image_b.grad, rtol=1e-4, atol=1e-6)


def test_single_patch_or_single_token_has_zero_entropy_in_that_direction():
    text, image, _ = random_case(2, 4, 1, 3)
    h_text, h_image = token_patch_entropy(text, image, impl="torch")
    assert torch.all(h_text == 0)  # softmax over one patch is certain
    assert torch.all(h_image > 0)
    text, image, _ = random_case(2, 1, 5, 3)
    h_text, h_image = token_patch_entropy(text, image, impl="torch")
    assert torch.all(h_image == 0) and torch.all(h_text > 0)


def test_uniform_similarities_give_log_of_the_set_size():
    text = torch.zeros(1, 3, 4)
    image = torch.randn(1, 5, 4)
    h_text, h_image = token_patch_entropy(text, image, impl="torch")
    assert h_text.item() == pytest.approx(math.log(5))
    assert h_image.item() == pytest.approx(math.log(3))


def test_pair_without_valid_tokens_gives_zero_and_zero_gradient():
    text, image, mask = random_case(3, 4, 5, 6)
    mask[1] = False
    text.requires_grad_()
    image.requires_grad_()
    h_text, h_image = token_patch_entropy(text, image, mask, impl="torch")
    assert h_text[1] == 0 and h_image[1] == 0
    (h_text.sum() + h_image.sum()).backward()
    assert torch.isfinite(text.grad).all() and torch.isfinite(image.grad).all()
    assert torch.all(text.grad[1] == 0) and torch.all(image.grad[1] == 0)
    assert text.grad[0].abs().sum() > 0


def test_masked_tokens_do_not_change_the_result():
    text, image, mask = random_case(2, 6, 5, 4)
    h_masked = token_patch_entropy(text, image, mask, impl="torch")
    scrambled = torch.where(mask[..., None], text, torch.randn_like(text) * 100)
    h_scrambled = token_patch_entropy(scrambled, image, mask, impl="torch")
    for a, b in zip(h_masked, h_scrambled):
        torch.testing.assert_close(a, b)


def test_gradcheck_float64():
    text, image, mask = random_case(2, 3, 4, 5)
    mask[1, 1:] = False
    text.requires_grad_()
    image.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t, i: token_patch_entropy(t, i, mask, scale=2.0, impl="torch"), (text, image), eps=1e-6, atol=1e-5
    )


def test_float32_accumulation_under_autocast_and_low_precision_inputs():
    text, image, mask = random_case(2, 5, 6, 8, dtype=torch.float32)
    exact = token_patch_entropy(text, image, mask, impl="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = token_patch_entropy(text.bfloat16(), image.bfloat16(), mask, impl="torch")
    for a, b in zip(exact, low):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_bad_inputs_are_reported():
    text, image, mask = random_case(2, 3, 4, 5)
    with pytest.raises(ValueError, match="agree on N and D"):
        token_patch_entropy(text, image[:, :, :4])
    with pytest.raises(ValueError, match="text_mask must be"):
        token_patch_entropy(text, image, mask[:, :2])
    with pytest.raises(ValueError, match="impl must be one of"):
        token_patch_entropy(text, image, impl="cuda")


def test_triton_on_cpu_without_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    text, image, _ = random_case(1, 2, 3, 4)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        token_patch_entropy(text, image, impl="triton")
    # auto falls back to the reference on CPU
    token_patch_entropy(text, image, impl="auto")

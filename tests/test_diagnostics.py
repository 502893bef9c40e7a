"""tier_openclip.training.diagnostics against loop-by-loop definitions and autograd run another way."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tier_openclip import TierLoss
from tier_openclip.training.diagnostics import (
    gradient_norm_ratio, gradient_ratio_of_terms, lambda_for_ratio, manipulation_check, token_map_stats,
)


def loop_stats(text, image, mask, scale, k):
    """The definition, one token and one patch at a time in Python floats."""
    pairs = []
    for n in range(text.shape[0]):
        valid = [t for t in range(text.shape[1]) if mask[n, t]]
        sims = [[scale * sum(float(a) * float(b) for a, b in zip(text[n, t], image[n, p]))
                 for p in range(image.shape[1])] for t in range(text.shape[1])]
        rows = []
        for t in valid:
            exps = [math.exp(s) for s in sims[t]]
            probs = sorted((e / sum(exps) for e in exps), reverse=True)
            rows.append((-sum(q * math.log(q) for q in probs), probs[0], sum(probs[:k])))
        cols = []
        for p in range(image.shape[1]):
            exps = [math.exp(sims[t][p]) for t in valid]
            cols.append(-sum(e / sum(exps) * math.log(e / sum(exps)) for e in exps))
        pairs.append([sum(r[i] for r in rows) / len(rows) for i in range(3)] + [sum(cols) / len(cols), len(valid)])
    mean = lambda i: sum(pair[i] for pair in pairs) / len(pairs)  # noqa: E731
    return {"entropy_token_patch": mean(0), "top1_mass": mean(1), "topk_mass": mean(2), "entropy_patch_token": mean(3),
            "max_entropy_patch_token": sum(math.log(pair[4]) for pair in pairs) / len(pairs)}


def tokens(n=3, t=4, p=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(n, t, d, generator=g, dtype=torch.float64), dim=-1)
    image = F.normalize(torch.randn(n, p, d, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True], [False, True, True, False]])
    return text, image, mask


@pytest.mark.parametrize("scale", [1.0, 7.0])
def test_token_map_stats_equal_the_loop_definition(scale):
    text, image, mask = tokens()
    stats = token_map_stats(text, image, mask, scale, top_k=2)
    expected = loop_stats(text, image, mask, scale, k=2)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-12), key
    assert stats["max_entropy_token_patch"] == math.log(5)
    assert (stats["uniform_top1_mass"], stats["uniform_topk_mass"], stats["top_k"]) == (1 / 5, 2 / 5, 2.0)


def test_padding_tokens_change_nothing():
    text, image, mask = tokens()
    noisy = text.clone()
    noisy[~mask] = F.normalize(torch.randn(int((~mask).sum()), 3, dtype=torch.float64), dim=-1) * 5
    assert token_map_stats(noisy, image, mask, 3.0) == token_map_stats(text, image, mask, 3.0)
    assert token_map_stats(text, image, None, 3.0) != token_map_stats(text, image, mask, 3.0)


def test_a_flat_map_sits_at_the_maximum_and_top_k_is_capped_by_the_patches():
    text, image, mask = tokens()
    stats = token_map_stats(text, torch.ones_like(image) / 3 ** 0.5, mask, 1.0, top_k=9)
    assert stats["entropy_token_patch"] == pytest.approx(stats["max_entropy_token_patch"], abs=1e-12)
    assert stats["top1_mass"] == pytest.approx(stats["uniform_top1_mass"], abs=1e-12)
    assert stats["top_k"] == 5.0 and stats["topk_mass"] == pytest.approx(1.0)


def test_a_pair_without_valid_tokens_is_left_out_and_an_empty_batch_refused():
    text, image, mask = tokens()
    mask[0] = False
    assert token_map_stats(text, image, mask)["top1_mass"] == pytest.approx(token_map_stats(text[1:], image[1:], mask[1:])["top1_mass"])
    with pytest.raises(ValueError, match="at least one valid text token"):
        token_map_stats(text, image, torch.zeros_like(mask))


class Towers(torch.nn.Module):
    """Pooled features and tokens computed from one shared weight, as a real model's towers are."""

    def __init__(self, d_in=5, d=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(d_in, d, generator=g, dtype=torch.float64))
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))
        self.x_text = torch.randn(6, 4, d_in, generator=g, dtype=torch.float64)
        self.x_image = torch.randn(6, 7, d_in, generator=g, dtype=torch.float64)
        self.mask = torch.arange(4)[None, :] < torch.tensor([[1], [4], [2], [3], [4], [2]])

    def forward(self):
        text, image = self.x_text @ self.weight, self.x_image @ self.weight
        return {"text_features": F.normalize(text.mean(1), dim=-1), "image_features": F.normalize(image.mean(1), dim=-1),
                "text_tokens": F.normalize(text, dim=-1), "image_tokens": F.normalize(image, dim=-1),
                "text_mask": self.mask, "logit_scale": self.logit_scale.exp()}


def separate_backward_norms(model, loss):
    """Each term's gradient norm from its own forward and .backward() into the leaves' .grad."""
    norms = {}
    for names in (["contrastive_loss"], ["tier_text_loss"], ["tier_image_loss"], ["tier_text_loss", "tier_image_loss"]):
        model.zero_grad(set_to_none=True)
        losses = loss(**model(), output_dict=True)
        sum(losses[name] for name in names).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norms["+".join(names)] = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    model.zero_grad(set_to_none=True)
    return norms


@pytest.mark.parametrize("token_mask", ["valid", "all"])
def test_gradient_ratio_equals_separate_backward_passes(token_mask):
    model, loss = Towers(), TierLoss(0.1, 0.4, scale=3.0, impl="torch", token_mask=token_mask)
    ratio = gradient_norm_ratio(loss, model(), list(model.parameters()))
    norms = separate_backward_norms(model, loss)
    contrastive = norms["contrastive_loss"]
    assert ratio["grad_norm_contrastive"] == pytest.approx(contrastive, rel=1e-12)
    assert ratio["tier_grad_ratio_text"] == pytest.approx(norms["tier_text_loss"] / contrastive, rel=1e-12)
    assert ratio["tier_grad_ratio_image"] == pytest.approx(norms["tier_image_loss"] / contrastive, rel=1e-12)
    assert ratio["tier_grad_ratio"] == pytest.approx(norms["tier_text_loss+tier_image_loss"] / contrastive, rel=1e-12)
    assert 0 < ratio["tier_grad_ratio"] < ratio["tier_grad_ratio_text"] + ratio["tier_grad_ratio_image"]


def test_a_loss_scale_changes_no_figure():
    model, loss = Towers(), TierLoss(0.1, 0.1, impl="torch")
    losses = loss(**model(), output_dict=True)
    plain = gradient_ratio_of_terms(losses, list(model.parameters()))
    scaled = gradient_ratio_of_terms(losses, list(model.parameters()), loss_scale=2.0 ** 16)
    assert scaled == pytest.approx(plain, rel=1e-12)


def test_the_ratio_writes_no_grad_and_leaves_the_graph_for_training():
    model, loss = Towers(), TierLoss(0.1, 0.1, impl="torch")
    losses = loss(**model(), output_dict=True)
    gradient_ratio_of_terms(losses, list(model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    sum(losses.values()).backward()  # still possible: the graph was retained
    assert model.weight.grad is not None


def test_the_ratio_is_linear_in_lambda_and_lambda_for_ratio_hits_the_target():
    model = Towers()
    params = list(model.parameters())
    base = gradient_norm_ratio(TierLoss(0.1, 0.1, impl="torch"), model(), params)["tier_grad_ratio"]
    tripled = gradient_norm_ratio(TierLoss(0.3, 0.3, impl="torch"), model(), params)["tier_grad_ratio"]
    assert tripled == pytest.approx(3 * base, rel=1e-12)
    lam = lambda_for_ratio(0.1, base, 0.1)
    assert gradient_norm_ratio(TierLoss(lam, lam, impl="torch"), model(), params)["tier_grad_ratio"] == pytest.approx(0.1, rel=1e-12)
    with pytest.raises(ValueError, match="measured_ratio must be a positive finite number"):
        lambda_for_ratio(0.1, 0.0, 0.1)


def test_token_outputs_are_refused_where_the_contrastive_loss_does_not_reach():
    model, loss = Towers(), TierLoss(impl="torch")
    out = model()
    losses = loss(**out, output_dict=True)
    with pytest.raises(ValueError, match="zero gradient on these tensors .* measure on the parameters"):
        gradient_ratio_of_terms(losses, [out["text_tokens"], out["image_tokens"]])
    with pytest.raises(ValueError, match="no tier_text_loss, tier_image_loss"):
        gradient_ratio_of_terms({"contrastive_loss": losses["contrastive_loss"]}, [model.weight])


def test_manipulation_check_on_an_open_clip_model_matches_its_parts():
    import open_clip

    from tier_openclip.features import token_features
    from tier_openclip.models import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("TIER-tiny", output_dict=True)
    images = torch.randn(4, 3, 64, 64)
    texts = open_clip.get_tokenizer("TIER-tiny")(["left effusion", "no pneumothorax", "cardiomegaly", "clear lungs"])
    loss = TierLoss(0.1, 0.1, scale="logit", impl="torch")
    hook_calls = []
    loss.metrics_hook = hook_calls.append
    loss.lambda_calibration = lambda *args: hook_calls.append(args)  # a pending auto λ: not set from this batch
    check = manipulation_check(model, loss, images, texts, top_k=3)

    assert hook_calls == [] and all(p.grad is None for p in model.parameters())
    assert loss.metrics_hook is not None and loss.lambda_calibration is not None  # restored
    loss.metrics_hook = loss.lambda_calibration = None
    out = token_features(model, images, texts)
    scale = model.logit_scale.exp().detach()
    assert check["top1_mass"] == pytest.approx(
        token_map_stats(out["text_tokens"], out["image_tokens"], out["text_mask"], scale, 3)["top1_mass"], rel=1e-6)
    out["logit_scale"] = model.logit_scale.exp()
    ratio = gradient_norm_ratio(loss, out, [p for p in model.parameters() if p.requires_grad])
    assert check["tier_grad_ratio"] == pytest.approx(ratio["tier_grad_ratio"], rel=1e-5)
    assert check["max_entropy_token_patch"] == math.log(64)


@pytest.mark.parametrize("directions", [("text", "image"), ("text",)])
def test_auto_lambda_hits_the_target_ratio_once_and_records_it(tmp_path, directions):
    import argparse
    import json

    from tier_openclip.training.auto_lambda import RECORD, AutoLambda, recorded_lambda

    (tmp_path / "params.txt").write_text("loss: tier\n")
    args = argparse.Namespace(rank=0, checkpoint_path=str(tmp_path / "checkpoints"), resume=None)
    model, loss = Towers(), TierLoss(0.0, 0.25, impl="torch")
    if "image" in directions:
        loss.lambda_image = 0.0
    loss.lambda_calibration = AutoLambda(args, directions, target=0.2)
    loss.lambda_calibration.params = list(model.parameters())
    loss(**model(), output_dict=True)

    assert loss.lambda_calibration is None and loss.lambda_text > 0
    ratio = gradient_norm_ratio(loss, model(), list(model.parameters()))
    key = "tier_grad_ratio" if len(directions) == 2 else "tier_grad_ratio_text"
    assert ratio[key] == pytest.approx(0.2, rel=1e-12)
    assert loss.lambda_image == (loss.lambda_text if "image" in directions else 0.25)
    record = json.loads((tmp_path / "checkpoints" / RECORD).read_text())
    assert record["lambda"] == loss.lambda_text and recorded_lambda(args) == loss.lambda_text
    assert f"tier_lambda_text_auto: {loss.lambda_text}\n" in (tmp_path / "params.txt").read_text()
    assert all(p.grad is None for p in model.parameters())

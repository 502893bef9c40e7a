"""Local alignment and within-sample uniformity against dense loop-by-loop definitions."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from tier_openclip import ContrastiveTokenLoss, TierLoss
from tier_openclip.local_uniformity import (
    LocalUniformityTerms,
    collapse_is_stable,
    local_alignment,
    mean_pairwise_cosine,
    pool_sentences,
    within_sample_uniformity,
)
from tier_openclip.sentences import SentenceVocab


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
    terms = LocalUniformityTerms(align_weight=0.5, uniform_weight=0.25, temperature=0.2, t=2.0, text_units="tokens")
    seen = []
    loss = TierLoss(0.1, 0.1, extra_terms=terms)
    loss.metrics_hook = seen.append
    losses = loss(**outputs, output_dict=True)
    assert set(losses) == {"contrastive_loss", "tier_text_loss", "tier_image_loss", "local_align_loss", "local_uniform_loss"}
    align_text, align_image = local_alignment(text, image, mask, 0.2)
    torch.testing.assert_close(losses["local_align_loss"], 0.5 * (align_text.mean() + align_image.mean()) / 2)
    uniform = (within_sample_uniformity(image, None, 2.0).mean() + within_sample_uniformity(text, mask, 2.0).mean()) / 2
    torch.testing.assert_close(losses["local_uniform_loss"], 0.25 * uniform)
    assert {"local_align_text", "local_uniform_image", "local_cos_image", "local_cos_text", "tier_text_entropy"} <= set(seen[0])
    only_lu = ContrastiveTokenLoss(extra_terms=terms)(**outputs, output_dict=True)
    assert "tier_text_loss" not in only_lu and math.isfinite(only_lu["local_align_loss"].item())
    with pytest.raises(ValueError, match="positive"):
        LocalUniformityTerms(temperature=0.0, text_units="tokens")
    with pytest.raises(ValueError, match="needs sentence_vocab"):
        LocalUniformityTerms()


# ---- report sentences as the local text units ----------------------------------------------------


def pooling_by_loops(tokens, sentences):
    n, t, d = tokens.shape
    count = max(int(sentences.max()) + 1, 1)
    rows, mask = [], torch.zeros(n, count, dtype=torch.bool)
    for i in range(n):
        row = []
        for k in range(count):
            members = [tokens[i, j] / tokens[i, j].norm() for j in range(t) if sentences[i, j] == k]
            if members:
                total = sum(members)
                row.append(total / total.norm())
                mask[i, k] = True
            else:
                row.append(tokens.new_zeros(d))
        rows.append(torch.stack(row))
    return torch.stack(rows), mask


def test_sentence_pooling_matches_the_loop_definition():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 9, 4, generator=g, dtype=torch.float64)  # not normalised: pooling normalises first
    sentences = torch.tensor([[-1, 0, 0, 0, 1, 1, 2, -1, -1],
                              [-1, 0, 0, 0, 0, 0, 0, 0, -1],
                              [-1, -1, -1, -1, -1, -1, -1, -1, -1]])  # no sentence at all
    a, b = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    pooled, mask = pool_sentences(a, sentences)
    expected, expected_mask = pooling_by_loops(b, sentences)
    assert pooled.shape == (3, 3, 4) and torch.equal(mask, expected_mask)
    torch.testing.assert_close(pooled, expected)
    weights = torch.randn(pooled.shape, generator=g, dtype=torch.float64)
    (pooled * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


# token ids of a toy vocabulary: 1 '.', 2 start, 3 end, 4.. words
TOY = SentenceVocab(terminators=frozenset({1}), points=frozenset({1}), digits=frozenset(), structural=frozenset({2, 3}),
                    stops=frozenset({3}))


def test_sentence_units_feed_both_terms():
    text, image, _ = case(n=2, t=8, p=6, d=4)
    ids = torch.tensor([[2, 5, 6, 1, 7, 1, 3, 0],   # two sentences
                        [2, 5, 5, 5, 3, 0, 0, 0]])  # one, without a period
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 0] = False  # the causal start token, as CLIP towers mark it
    terms = LocalUniformityTerms(1.0, 1.0, temperature=0.2, text_units="sentences", sentence_vocab=TOY)
    losses, metrics = terms(text, image, mask, ids)
    sentences = torch.tensor([[-1, 0, 0, 0, 1, 1, -1, -1], [-1, 0, 0, 0, -1, -1, -1, -1]])
    pooled, units = pooling_by_loops(text, sentences)
    align_text, align_image = alignment_by_loops(pooled, image, units, tau=0.2)
    torch.testing.assert_close(losses["local_align_loss"], (align_text.mean() + align_image.mean()) / 2)
    uniform = (uniformity_by_loops(image, None, 2.0).mean() + uniformity_by_loops(pooled, units, 2.0).mean()) / 2
    torch.testing.assert_close(losses["local_uniform_loss"], uniform)
    assert metrics["local_text_units"].item() == 1.5
    with pytest.raises(ValueError, match="needs the token ids"):
        terms(text, image, mask)


def test_captions_without_a_sentence_stay_finite_under_amp():
    """open_clip's default --precision amp runs the loss under float16 autocast, where F.normalize's
    eps is 0: a missing sentence's zero row must not turn into 0/0."""
    text, image, _ = case(n=2, t=8, p=6, d=4)
    text, image = text.float().requires_grad_(), image.float().requires_grad_()
    ids = torch.tensor([[2, 5, 6, 1, 7, 1, 3, 0], [2, 1, 3, 0, 0, 0, 0, 0]])  # the second has no sentence
    terms = LocalUniformityTerms(1.0, 1.0, text_units="sentences", sentence_vocab=TOY)
    with torch.autocast("cpu", dtype=torch.float16):
        losses, metrics = terms(text.half(), image.half(), None, ids)
    assert all(torch.isfinite(v) for v in [*losses.values(), *metrics.values()])
    sum(losses.values()).backward()
    assert torch.isfinite(text.grad).all() and torch.isfinite(image.grad).all()


def cosine_by_loops(z, mask):
    values = []
    for n in range(z.shape[0]):
        members = [i for i in range(z.shape[1]) if mask is None or mask[n, i]]
        pairs = [(i, j) for i in members for j in members if i != j]
        if pairs:
            values.append(sum(F.cosine_similarity(z[n, i], z[n, j], dim=0) for i, j in pairs) / len(pairs))
    return torch.stack(values).mean() if values else torch.tensor(math.nan)


def test_collapse_measure_matches_the_loop_definition():
    text, image, mask = case()
    mask[2] = False
    mask[2, 1] = True  # one member: left out
    torch.testing.assert_close(mean_pairwise_cosine(text, mask), cosine_by_loops(text, mask))
    torch.testing.assert_close(mean_pairwise_cosine(image, None), cosine_by_loops(image, None))
    same = F.normalize(torch.ones(2, 5, 3, dtype=torch.float64), dim=-1)
    assert mean_pairwise_cosine(same, None).item() == pytest.approx(1.0)
    assert math.isnan(mean_pairwise_cosine(text, torch.zeros_like(mask)).item())


def optimise_near_collapse(align_weight: float, uniform_weight: float, steps: int = 150) -> dict[str, float]:
    """Free patch and text-unit embeddings of two pairs, started at one vector plus 2% noise (mean cosine
    ≈ 0.99), optimised with the local terms alone; the collapse measures at the end."""
    g = torch.Generator().manual_seed(0)
    centre = F.normalize(torch.randn(2, 1, 16, generator=g, dtype=torch.float64), dim=-1)
    text = (centre + 0.02 * torch.randn(2, 5, 16, generator=g, dtype=torch.float64)).requires_grad_()
    image = (centre + 0.02 * torch.randn(2, 16, 16, generator=g, dtype=torch.float64)).requires_grad_()
    terms = LocalUniformityTerms(align_weight, uniform_weight, text_units="tokens")  # the other defaults
    optimizer = torch.optim.Adam([text, image], lr=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small only lose time to threads on a shared machine (20× here)
    try:
        for _ in range(steps):
            losses, _ = terms(F.normalize(text, dim=-1), F.normalize(image, dim=-1), None)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        with torch.no_grad():
            _, metrics = terms(F.normalize(text, dim=-1), F.normalize(image, dim=-1), None)
    finally:
        torch.set_num_threads(threads)
    return {name: float(value) for name, value in metrics.items()}


def test_the_defaults_leave_collapse_and_the_old_weights_stay_in_it():
    """Collapse is stable iff uniform_weight·t < align_weight/2: the demo's first run (uniformity 0.1,
    t 2) sits inside, the defaults (1, t 2) outside."""
    start = optimise_near_collapse(1.0, 1.0, steps=0)
    assert start["local_cos_image"] > 0.99 and start["local_cos_text"] > 0.99
    assert collapse_is_stable(1.0, 0.1, 2.0) and not collapse_is_stable(1.0, 1.0, 2.0)
    old = optimise_near_collapse(1.0, 0.1)
    assert old["local_cos_image"] > 0.99 and old["local_cos_text"] > 0.99 and old["local_uniform_image"] > -0.01
    new = optimise_near_collapse(1.0, 1.0)
    assert new["local_cos_image"] < 0.9 and new["local_cos_text"] < 0.9
    assert new["local_align_text"] < 0.5  # spread and still aligned: unrelated unit vectors are at ≈ 2


# ---- the wiring: model outputs, TierLoss, plugin flags ----------------------------------------------


def test_a_model_delivers_the_ids_and_the_loss_pools_its_report_sentences(tmp_path):
    import open_clip
    from helpers import register_config, tower_configs

    from tier_openclip.features import enable_token_outputs
    from tier_openclip.sentences import sentence_vocab

    name = register_config(tmp_path, "lu-vit", tower_configs()["vit"])
    torch.manual_seed(0)
    model = enable_token_outputs(open_clip.create_model(name, output_dict=True))
    tokenizer = open_clip.get_tokenizer(name)
    texts = tokenizer(["Small left pleural effusion. No pneumothorax. Heart size is normal.", "There is a 3.5 cm bulla."])
    out = model(torch.rand(2, 3, 32, 32), texts)
    assert torch.equal(out["text_ids"], texts)
    terms = LocalUniformityTerms(text_units="sentences", sentence_vocab=sentence_vocab(tokenizer))
    for token_mask in ("valid", "all"):  # 'all' cuts the ids to the authors' window with the tokens
        seen = []
        loss = ContrastiveTokenLoss(extra_terms=terms, token_mask=token_mask)
        loss.metrics_hook = seen.append
        losses = loss(**out, output_dict=True)
        assert seen[0]["local_text_units"].item() == 2.0  # three sentences and one
    sum(losses.values()).backward()
    assert model.text_projection.grad.abs().sum() > 0 and model.visual.proj.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def params():
    from tier_openclip.training import plugin

    plugin.activate(strict=True)
    import open_clip_train.params

    return open_clip_train.params


def plugin_loss(params, *flags):
    from tier_openclip.training.plugin import build_loss

    args = params.parse_args(["--model", "TIER-tiny", *flags])
    args.distill, args.rank, args.world_size, args.horovod, args.device = False, 0, 1, False, "cpu"
    return build_loss(args)


def test_plugin_pools_sentences_by_default_and_warns_where_collapse_is_stable(params, caplog, capsys):
    from tier_openclip.openclip_adapter import symbol

    period = symbol("get_tokenizer")("TIER-tiny").encoder[".</w>"]
    with caplog.at_level(logging.WARNING, logger="tier_openclip"):
        lu = plugin_loss(params, "--loss", "local-uniformity")
        assert lu.extra_terms.text_units == "sentences" and period in lu.extra_terms.sentence_vocab.terminators
        assert "stable solution" not in caplog.text  # the defaults
        tokens = plugin_loss(params, "--loss", "local-uniformity", "--lu-text-units", "tokens")
        assert tokens.extra_terms.text_units == "tokens" and tokens.extra_terms.sentence_vocab is None
        plugin_loss(params, "--loss", "local-uniformity", "--lu-uniform-weight", "0.1")
    assert "stable solution" in caplog.text and "--lu-uniform-weight at least 0.25" in caplog.text
    with pytest.raises(SystemExit) as stop:
        params.parse_args(["--loss", "tier", "--lu-text-units", "tokens"])  # both local weights 0 with --loss tier
    assert stop.value.code == 2 and "--lu-text-units chooses the text units" in capsys.readouterr().err

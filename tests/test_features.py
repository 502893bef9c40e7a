"""Token/patch features of every tower kind agree with open_clip's own pooled features."""

from __future__ import annotations

import pytest
import torch

from tier_openclip.features import enable_token_outputs, token_features, token_outputs_enabled

TINY_SWIN = "tier_test_swin"  # registered with timm below: Swin-T's code, shrunk to 32 px and 2 stages


@pytest.fixture(scope="module")
def swin_model(tmp_path_factory):
    import open_clip
    import timm
    from timm.models import is_model, register_model

    from helpers import TINY_TEXT, register_config

    if not is_model(TINY_SWIN):
        def tier_test_swin(pretrained=False, **kwargs):
            return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
                                     embed_dim=16, depths=(1, 1), num_heads=(1, 2), **kwargs)

        register_model(tier_test_swin)
    config = {"embed_dim": 24, "text_cfg": TINY_TEXT,
              "vision_cfg": {"timm_model_name": TINY_SWIN, "timm_model_pretrained": False, "timm_pool": "avg",
                             "timm_proj": "linear", "image_size": 32}}
    name = register_config(tmp_path_factory.mktemp("swin-config"), "test-timm-swin", config)
    torch.manual_seed(0)
    model = open_clip.create_model(name, output_dict=True).eval()
    return model, torch.randn(2, 3, 32, 32)


KINDS = ["vit", "vit-avgpool-custom-text", "resnet", "timm-vit", "timm-cnn", "hf-bert"]
EXPECTED_PATCHES = {"vit": 16, "vit-avgpool-custom-text": 16, "resnet": 4, "timm-vit": 100, "timm-cnn": 25, "hf-bert": 16}
TEXTS = ["small left pleural effusion .", "no pneumothorax", "heart size normal , mild cardiomegaly"]


def batch(model_entry):
    model, tokenizer, image_size = model_entry
    torch.manual_seed(1)
    images = torch.randn(len(TEXTS), 3, *image_size)
    return model, images, tokenizer(TEXTS)


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_features_equal_open_clip_and_tokens_have_the_right_shape(tower_models, kind):
    model, images, texts = batch(tower_models[kind])
    with torch.no_grad():
        out = token_features(model, images, texts)
        torch.testing.assert_close(out["image_features"], model.encode_image(images, normalize=True))
        torch.testing.assert_close(out["text_features"], model.encode_text(texts, normalize=True))
    n, embed_dim = out["image_features"].shape
    assert out["image_tokens"].shape == (n, EXPECTED_PATCHES[kind], embed_dim)
    assert out["text_tokens"].shape == (n, texts.shape[1], embed_dim)
    assert out["text_mask"].dtype == torch.bool and out["text_mask"].shape == texts.shape
    norms = out["image_tokens"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("kind", ["vit", "vit-avgpool-custom-text"])
def test_clip_text_mask_runs_from_after_start_up_to_and_including_end_of_text(tower_models, kind):
    model, images, texts = batch(tower_models[kind])
    mask = token_features(model, None, texts)["text_mask"]
    eot = texts.argmax(dim=-1)  # CLIP's end-of-text id is the largest
    for row in range(len(TEXTS)):
        assert not mask[row, 0]
        assert mask[row, 1 : eot[row] + 1].all() and not mask[row, eot[row] + 1 :].any()


@pytest.mark.parametrize("kind", ["vit", "vit-avgpool-custom-text"])
def test_causal_start_token_is_the_same_for_every_caption(tower_models, kind):
    """Why the mask leaves position 0 out: under the causal mask it cannot see the caption."""
    model, images, texts = batch(tower_models[kind])
    with torch.no_grad():
        tokens = token_features(model, None, texts)["text_tokens"]
    torch.testing.assert_close(tokens[:, 0], tokens[:1, 0].expand_as(tokens[:, 0]))
    assert not torch.allclose(tokens[0, 1], tokens[1, 1])  # the first word already differs


def test_clip_text_mask_keeps_position_zero_without_a_causal_mask():
    from tier_openclip.features import clip_text_mask

    texts = torch.tensor([[49406, 320, 49407, 0], [49406, 49407, 0, 0]])
    assert clip_text_mask(texts, "argmax", None, causal=False).tolist() == [[True, True, True, False],
                                                                            [True, True, False, False]]
    assert clip_text_mask(texts, "argmax", None).tolist() == [[False, True, True, False], [False, True, False, False]]


def test_hf_text_mask_is_the_attention_mask(tower_models):
    model, images, texts = batch(tower_models["hf-bert"])
    mask = token_features(model, None, texts)["text_mask"]
    assert torch.equal(mask, texts != 0)
    assert mask[:, 0].all()  # [CLS] counts as a token
    assert (texts[mask] != 1).all()  # no [UNK]: the tokenizer knows the report words


def test_swin_tokens_are_each_channels_last_cell_through_the_head(swin_model):
    """Swin's trunk is channels-last (output_fmt 'NHWC'): its head must get cells channels-last too."""
    model, images = swin_model
    trunk, head = model.visual.trunk, model.visual.head
    assert trunk.output_fmt == "NHWC"
    with torch.no_grad():
        out = token_features(model, images, normalize=False)
        grid = trunk.forward_features(images)  # (N, H, W, C)
        torch.testing.assert_close(out["image_features"], model.encode_image(images))
    n, h, w, c = grid.shape
    assert out["image_tokens"].shape == (n, h * w, out["image_features"].shape[1])
    # Linear head and average pool: the pooled feature is the mean of the cell tokens.
    torch.testing.assert_close(out["image_tokens"].mean(dim=1), out["image_features"])
    with torch.no_grad():
        cell = head(trunk.forward_head(grid[:, 2:3, 1:2, :]))  # row 2, column 1
    torch.testing.assert_close(out["image_tokens"][:, 2 * w + 1], cell)


def test_vit_avg_pool_feature_is_the_mean_of_its_patch_tokens(tower_models):
    """pool_type 'avg' (TIER-tiny): the contrastive loss sees exactly the patch tokens TIER reads."""
    model, images, _ = batch(tower_models["vit"])
    visual = model.visual
    visual.pool_type = "avg"
    try:
        with torch.no_grad():
            out = token_features(model, images, normalize=False)
            stock = model.encode_image(images)
    finally:
        visual.pool_type = "tok"
    torch.testing.assert_close(out["image_features"], stock)
    torch.testing.assert_close(out["image_tokens"].mean(dim=1), stock)
    assert out["image_tokens"].shape[1] == EXPECTED_PATCHES["vit"]


def test_vit_patch_token_is_the_projected_patch(tower_models):
    """Independent check of the ViT path: open_clip's own output_tokens, projected by hand."""
    model, images, texts = batch(tower_models["vit"])
    visual = model.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(images)
    finally:
        visual.output_tokens = False
    expected = torch.nn.functional.normalize(tokens @ visual.proj, dim=-1)
    torch.testing.assert_close(token_features(model, images)["image_tokens"], expected)


def test_resnet_cell_tokens_follow_the_attention_pool_value_path(tower_models):
    model, images, _ = batch(tower_models["resnet"])
    pool = model.visual.attnpool
    captured = {}
    handle = pool.register_forward_hook(lambda mod, inp, out: captured.setdefault("map", inp[0]))
    with torch.no_grad():
        tokens = token_features(model, images, normalize=False)["image_tokens"]
    handle.remove()
    cell = captured["map"][:, :, 1, 0] + pool.positional_embedding[1 + 2]  # row 1, column 0 of a 2×2 map
    torch.testing.assert_close(tokens[:, 2], pool.c_proj(pool.v_proj(cell)))


@pytest.mark.parametrize("kind", ["vit", "hf-bert"])
def test_enable_token_outputs_keeps_the_stock_outputs_and_state_dict(tower_models, kind):
    model, images, texts = batch(tower_models[kind])
    keys_before = list(model.state_dict())
    with torch.no_grad():
        stock = model(images, texts)
        enable_token_outputs(model)
        enable_token_outputs(model)  # idempotent
        ours = model(images, texts)
    try:
        assert token_outputs_enabled(model)
        for key, value in stock.items():
            torch.testing.assert_close(ours[key], value)
        assert {"image_tokens", "text_tokens", "text_mask"} <= set(ours)
        assert list(model.state_dict()) == keys_before
    finally:
        del model.forward  # back to the class's forward for the other tests
    assert not token_outputs_enabled(model)


def test_unsupported_towers_are_named(tower_models):
    model, images, texts = batch(tower_models["vit"])
    with pytest.raises(TypeError, match="no patch tokens for image tower Identity"):
        from tier_openclip.features import encode_image_tokens

        encode_image_tokens(torch.nn.Identity(), images)

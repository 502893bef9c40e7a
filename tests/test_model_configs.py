"""The medical model configs shipped with the package: registered, buildable offline, right shapes."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
import torch

from helpers import register_config
from tier_openclip.features import token_features

SHIPPED = {  # name -> (patches, shared dim, context length)
    "TIER-BioViL": (49, 128, 128),
    "TIER-BioViL-RN50-CXR-BERT": (49, 128, 128),
    "TIER-BiomedCLIP-ViT-B-16": (196, 512, 256),
    "TIER-CheXzero-ViT-B-32": (49, 512, 77),
    "TIER-tiny": (64, 64, 64),
    "TIER-tiny-ResNet": (64, 64, 64),
}
# Is the global image feature the mean of the patch tokens TIER reads (model_configs/README.md)?
# Only then does the contrastive loss train exactly those patch embeddings.
POOLED_IS_MEAN_OF_PATCHES = {
    "TIER-BioViL": True,  # mean of the projected cells (BioViL's projected_global_embedding)
    "TIER-BioViL-RN50-CXR-BERT": False,  # MLP(mean of cells), not mean of MLP(cell)
    "TIER-BiomedCLIP-ViT-B-16": False,  # class token
    "TIER-CheXzero-ViT-B-32": False,  # class token (OpenAI ViT-B/32 shapes)
    "TIER-tiny": True,  # pool_type avg
    "TIER-tiny-ResNet": True,  # timm avg pool, then a linear projection
}


@pytest.fixture(scope="module")
def tiny_cxr_bert_dir(tmp_path_factory):
    """CXR-BERT-specialized's layout (model type cxr-bert, remote-code pointers) at toy size."""
    from biovil_fixtures import make_cxr_bert_specialized

    return make_cxr_bert_specialized(tmp_path_factory.mktemp("cxr-bert"))[0]


def shipped_config(name: str) -> dict:
    return json.loads((files("tier_openclip") / "model_configs" / f"{name}.json").read_text())


def test_configs_are_registered_with_open_clip():
    import open_clip

    from tier_openclip.models import register_model_configs

    register_model_configs()
    assert set(SHIPPED) <= set(open_clip.list_models())


@pytest.mark.parametrize("name", SHIPPED)
def test_config_builds_offline_with_the_documented_shapes(name, tmp_path, tiny_bert_dir, tiny_cxr_bert_dir):
    import open_clip

    config = shipped_config(name)
    text_cfg = config["text_cfg"]
    if "hf_model_name" in text_cfg:  # same architecture, a tiny local BERT instead of the hub's
        local = tiny_cxr_bert_dir if text_cfg["hf_model_name"].endswith("-specialized") else tiny_bert_dir
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(local)
    offline_name = register_config(tmp_path, f"offline-{name}", config)
    model = open_clip.create_model(offline_name, output_dict=True).eval()
    tokenizer = open_clip.get_tokenizer(offline_name)
    size = config["vision_cfg"]["image_size"]
    torch.manual_seed(0)
    with torch.no_grad():  # image_features is encode_image's output (tests/test_features.py)
        out = token_features(model, torch.randn(1, 3, size, size), tokenizer(["left pleural effusion"]), normalize=False)
    patches, dim, context = SHIPPED[name]
    assert out["image_tokens"].shape == (1, patches, dim)
    assert out["text_tokens"].shape == (1, context, dim)
    assert text_cfg["context_length"] == context
    mean_of_patches = out["image_tokens"].mean(dim=1)
    assert torch.allclose(mean_of_patches, out["image_features"], rtol=1e-4, atol=1e-5) == POOLED_IS_MEAN_OF_PATCHES[name]


def test_chexzero_config_takes_openai_vit_b_32_weights():
    import open_clip

    from tier_openclip.models import register_model_configs

    register_model_configs()
    ours = open_clip.create_model("TIER-CheXzero-ViT-B-32").state_dict()
    openai_shaped = open_clip.create_model("ViT-B-32-quickgelu").state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in openai_shaped.items()}
    assert shipped_config("TIER-CheXzero-ViT-B-32")["quick_gelu"] is True


def test_tiny_resnet_cells_see_only_their_receptive_field():
    """The demo model (model_configs/README.md): a patch token depends only on the input pixels
    within 8·i ± 43 of its cell i (two stages of two basic blocks after a /2 stem)."""
    import open_clip

    from tier_openclip.models import register_model_configs

    register_model_configs()
    model = open_clip.create_model("TIER-tiny-ResNet", output_dict=True).eval()
    torch.manual_seed(0)
    for parameter in model.visual.parameters():  # residual branches start at zero (timm): wake them
        torch.nn.init.normal_(parameter, 0.0, 0.2)
    images = torch.randn(1, 3, 64, 64)
    far, near = images.clone(), images.clone()
    far[..., 44:, :] += 5.0  # cell (0, 0) sees rows and columns -43..43
    far[..., :, 44:] += 5.0
    near[..., 43:, :] += 5.0
    with torch.no_grad():
        base, moved_far, moved_near = (token_features(model, x, normalize=False)["image_tokens"][0, 0]
                                       for x in (images, far, near))
    assert torch.equal(base, moved_far)
    assert not torch.allclose(base, moved_near)


def test_bert_towers_lock_layer_by_layer(tmp_path, tiny_bert_dir):
    """open_clip 3.3's arch entry for BERT lacks the names --lock-text-unlocked-layers reads; the
    plugin adds them (tier_openclip.openclip_adapter.fill_hf_lock_names)."""
    import open_clip

    config = shipped_config("TIER-BioViL-RN50-CXR-BERT")
    config["text_cfg"]["hf_model_name"] = config["text_cfg"]["hf_tokenizer_name"] = str(tiny_bert_dir)
    config["vision_cfg"]["timm_model_name"] = "resnet18"  # the text tower is what is tested
    model = open_clip.create_model(register_config(tmp_path, "offline-lock", config))
    model.lock_text_tower(unlocked_layers=1, freeze_layer_norm=True)  # tiny BERT: embeddings + 1 layer
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if name.startswith("text.transformer.embeddings.")}

"""The paper's other starting points load as released: CheXzero's checkpoint (a bare state dict of
OpenAI's CLIP ViT-B/32) into TIER-CheXzero-ViT-B-32, checked against OpenAI's forward
(tests/openai_clip_layout.py) on a random checkpoint of the same structure; BiomedCLIP's Hub repo
(open_clip format) from the local Hugging Face cache, offline, as hf-hub: and as weights for
TIER-BiomedCLIP-ViT-B-16."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from openai_clip_layout import OpenAICLIP


def test_chexzero_release_layout_loads_and_computes_the_same(tmp_path):
    from tier_openclip.features import token_features
    from tier_openclip.models import load_model

    torch.manual_seed(0)
    reference = OpenAICLIP().eval()
    for norm in reference.modules():  # away from the identity, so a mis-mapped LayerNorm shows
        if isinstance(norm, torch.nn.LayerNorm):
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.normal_(0, 0.1)
    checkpoint = tmp_path / "best_64_5e-05_original_22000_0.864.pt"  # the name of CheXzero's released file
    torch.save(reference.state_dict(), checkpoint)
    loaded = load_model("TIER-CheXzero-ViT-B-32", str(checkpoint))
    images = torch.randn(2, 3, 224, 224)
    ids = loaded.tokenizer(["no pleural effusion", "enlarged cardiac silhouette"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(images), reference.encode_image(images),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loaded.model.encode_text(ids), reference.encode_text(ids), atol=1e-5, rtol=1e-4)
        tokens = token_features(loaded.model, images, ids, normalize=False)
    assert tokens["image_tokens"].shape == (2, 49, 512) and tokens["text_tokens"].shape == (2, 77, 512)


BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
# BiomedCLIP's open_clip_config.json as its Hub repo serves it
BIOMEDCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def cache_files(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Files as huggingface_hub's cache keeps a downloaded repo (refs/main -> snapshots/REV/)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)


def test_biomedclip_hub_format_loads_offline_from_the_cache(tmp_path, tiny_bert_dir, monkeypatch):
    """BiomedCLIP's ViT-B/16 at full size with a tiny BERT in place of BiomedBERT (its shape comes
    from its own config.json); the weights a random model of that structure saved as
    open_clip_pytorch_model.bin."""
    import open_clip
    from huggingface_hub import constants

    from helpers import register_config
    from tier_openclip.features import token_features
    from tier_openclip.models import load_model

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache_files(cache, BIOMEDBERT, {p.name: p for p in tiny_bert_dir.iterdir() if p.is_file()})
    local = json.loads(json.dumps(BIOMEDCLIP_CONFIG["model_cfg"]))
    local["text_cfg"]["hf_model_name"] = local["text_cfg"]["hf_tokenizer_name"] = str(tiny_bert_dir)
    torch.manual_seed(0)
    reference = open_clip.create_model(register_config(tmp_path / "cfg", "biomedclip-shaped", local)).eval()
    (tmp_path / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP_CONFIG))
    torch.save(reference.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    cache_files(cache, BIOMEDCLIP, {name: tmp_path / name for name in ("open_clip_config.json",
                                                                         "open_clip_pytorch_model.bin")})

    images = torch.randn(1, 3, 224, 224)
    hub = load_model(f"hf-hub:{BIOMEDCLIP}")
    ours = load_model("TIER-BiomedCLIP-ViT-B-16", str(tmp_path / "open_clip_pytorch_model.bin"))
    ids = hub.tokenizer(["small left pleural effusion"])
    assert torch.equal(ids, ours.tokenizer(["small left pleural effusion"]))
    with torch.no_grad():
        expected = reference.encode_image(images), reference.encode_text(ids)
        for loaded in (hub, ours):
            torch.testing.assert_close(loaded.model.encode_image(images), expected[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(loaded.model.encode_text(ids), expected[1], atol=1e-5, rtol=0)
        tokens = token_features(hub.model, images, ids)
    assert tokens["image_tokens"].shape == (1, 196, 512) and tokens["text_tokens"].shape == (1, 256, 512)

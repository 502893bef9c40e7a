"""The paper's other starting points load as released: CheXzero's checkpoint (a bare state dict of
OpenAI's CLIP ViT-B/32) into TIER-CheXzero-ViT-B-32, checked against OpenAI's forward
(tests/openai_clip_layout.py) on a random checkpoint of the same structure."""

from __future__ import annotations

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

"""BioViL's published layouts, made with hi-ml's own classes (hi-ml-multimodal, Microsoft's BioViL
package) and random weights: the image checkpoint as ``biovil_image_resnet50_proj_size_128.pt``
and a tiny CXR-BERT-specialized folder as the Hub serves it (config.json of type ``cxr-bert`` with
its ``auto_map`` to remote code, pytorch_model.bin with ``bert.*``, ``cls.predictions.*`` and
``cls_projection_head.*``, vocab.txt, a tokenizer_config.json naming ``CXRBertTokenizer``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers import REPORT_WORDS

IMAGE_FILE = "biovil_image_resnet50_proj_size_128.pt"
TEXT_LAYERS = 12  # CXR-BERT's depth, so the authors' "first 8 of 12" freezing is tested as such


def _randomise_batch_norm(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Running statistics and affine weights away from their initial values, so eval-mode
    BatchNorm is not the identity and a mis-mapped BatchNorm key shows in the outputs."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


def make_biovil_image(directory: Path) -> tuple[Path, torch.nn.Module]:
    """(checkpoint path, hi-ml ImageModel in eval mode) with random weights."""
    from health_multimodal.image.model.model import ImageModel  # hi-ml-multimodal's BioViL image model

    torch.manual_seed(0)
    model = ImageModel(img_encoder_type="resnet50", joint_feature_size=128)
    _randomise_batch_norm(model, torch.Generator().manual_seed(1))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / IMAGE_FILE
    torch.save(model.state_dict(), path)
    return path, model.eval()


def make_cxr_bert_specialized(directory: Path) -> tuple[Path, torch.nn.Module]:
    """(folder, hi-ml CXRBertModel in eval mode): a tiny CXR-BERT-specialized in the Hub's layout."""
    from health_multimodal.text.model.configuration_cxrbert import CXRBertConfig
    from health_multimodal.text.model.modelling_cxrbert import CXRBertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(REPORT_WORDS))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": True, "model_max_length": 512, "tokenizer_class": "CXRBertTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_cxrbert.CXRBertTokenizer", None]}}))
    config = CXRBertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=TEXT_LAYERS, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=512, pad_token_id=0, projection_size=128)
    torch.manual_seed(0)
    model = CXRBertModel(config)
    state = model.state_dict()
    state["bert.embeddings.position_ids"] = torch.arange(512)[None]  # older checkpoints (the Hub's) hold this buffer
    torch.save(state, directory / "pytorch_model.bin")
    saved = config.to_dict()
    saved.update(architectures=["CXRBertModel"], auto_map={"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                                                             "AutoModel": "modeling_cxrbert.CXRBertModel"})
    (directory / "config.json").write_text(json.dumps(saved))
    return directory, model.eval()

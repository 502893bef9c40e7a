"""BioViL's image and text towers as the TIER authors use them, buildable by open_clip by name.

The TIER paper fine-tunes BioViL (Boecking et al., ECCV 2022). Read from hi-ml
(microsoft/hi-ml, hi-ml-multimodal/src/health_multimodal: image/model/model.py, modules.py,
encoder.py, resnet.py; text/model/modelling_cxrbert.py) and the authors' code
(apalepu13/TIER_Regularized_CLIP ce1e171, Modeling/CLIP_Embedding.py, Vision_Model.py,
modules.py, modeling_cxrbert.py):

- Image (timm ``tier_biovil_resnet50``): torchvision's ResNet-50 up to layer4 (timm's resnet50
  has the same module names and arithmetic), then per cell BioViL's projector ``projector.model``
  = 1×1 conv 2048→128 (no bias), BatchNorm2d, ReLU, 1×1 conv 128→128 (bias). Patch tokens are the
  projected cells; the global feature is their mean (``projected_global_embedding``).
- Text (transformers model type ``cxr-bert``, registered here and modelled in
  ``tier_openclip.models.cxr_bert``, so that neither the converter nor open_clip needs
  ``trust_remote_code``): CXR-BERT-specialized's BERT (``bert.*``, no pooler) and
  its ``cls_projection_head`` 768→128 → GELU → LayerNorm → 128→128. hi-ml applies the head to
  [CLS] only; the authors (``MedCLIP.get_text_embeddings``) also apply it to every token for TIER's
  word embeddings. We follow the authors: the model's ``last_hidden_state`` is the head applied to
  every token, so open_clip's ``cls_last_hidden_state_pooler`` gives the projected [CLS] (the
  global text feature) and features.py's tokens are the per-token projections, with open_clip's
  own ``proj`` the identity (the arch entry's width is ``projection_size``). BERT's MLM head
  (``cls.predictions``) is not built: neither the authors' loss nor hi-ml's embeddings use it.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, register_model
from timm.models.resnet import Bottleneck, ResNet
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel

from tier_openclip import openclip_adapter as adapter
from tier_openclip.models.cxr_bert_config import MODEL_TYPE, PROJECTION_SIZE, CXRBertConfig


class BioViLProjector(nn.Module):
    """hi-ml's ``MLP(use_1x1_convs=True)``: the same modules under the same names (``model.0`` …)."""

    def __init__(self, input_dim: int = 2048, output_dim: int = PROJECTION_SIZE, hidden_dim: int = PROJECTION_SIZE):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(input_dim, hidden_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, output_dim, kernel_size=1, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class BioViLResNet(ResNet):
    """ResNet-50 cells through BioViL's projector; pooled = mean of the projected cells.

    ``forward_tokens`` gives both from one pass (features.py uses it), so BatchNorm's running
    statistics are updated once per step, as in the authors' training.
    """

    def __init__(self, projection_dim: int = PROJECTION_SIZE, **kwargs):
        super().__init__(block=Bottleneck, layers=(3, 4, 6, 3), **kwargs)
        self.projector = BioViLProjector(self.num_features, projection_dim, projection_dim)
        self.num_features = self.head_hidden_size = projection_dim

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.projector(x).mean(dim=(2, 3))

    def forward_tokens(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(global feature (N, E), patch tokens (N, H·W, E)), neither normalised."""
        cells = self.projector(self.forward_features(images))  # (N, E, H, W)
        return cells.mean(dim=(2, 3)), cells.flatten(2).transpose(1, 2)


@register_model
def tier_biovil_resnet50(pretrained: bool = False, **kwargs) -> BioViLResNet:
    """BioViL's image model (weights come from ``tier-openclip convert biovil``)."""
    if pretrained:
        raise ValueError("tier_biovil_resnet50 has no timm weights; convert BioViL's with `tier-openclip convert biovil`")
    kwargs["pretrained_cfg"] = {"input_size": (3, 224, 224), "pool_size": (7, 7), "num_classes": 0,
                                "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    return build_model_with_cfg(BioViLResNet, "tier_biovil_resnet50", pretrained=False, **kwargs)


class CXRBertModel:
    """Stands for ``tier_openclip.models.cxr_bert.CXRBertProjected`` in transformers' AutoModel registry,
    so that transformers' BERT modelling code is imported only when a cxr-bert tower is built, not
    whenever open_clip is (the start-up hook registers this)."""

    config_class = CXRBertConfig

    @classmethod
    def _from_config(cls, config: CXRBertConfig, **kwargs):
        from tier_openclip.models.cxr_bert import CXRBertProjected

        return CXRBertProjected._from_config(config, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        from tier_openclip.models.cxr_bert import CXRBertProjected

        return CXRBertProjected.from_pretrained(*args, **kwargs)


_registered = False


def register() -> None:
    """Make ``cxr-bert`` a local transformers type and an open_clip HF architecture, and let
    open_clip lock BERT towers layer by layer (idempotent).

    Importing this module already registers the timm trunk.
    """
    global _registered
    if _registered:
        return
    AutoConfig.register(MODEL_TYPE, CXRBertConfig, exist_ok=True)
    AutoModel.register(CXRBertConfig, CXRBertModel, exist_ok=True)
    # BERT towers (TIER-BioViL-RN50-CXR-BERT, TIER-BiomedCLIP-ViT-B-16) get --lock-text-unlocked-layers too
    adapter.fill_hf_lock_names("bert", layer_attr="layer", token_embeddings_attr="embeddings")
    adapter.add_hf_architecture(MODEL_TYPE, like="bert", width="projection_size", layer_attr="layer",
                                token_embeddings_attr="embeddings", pooler="cls_last_hidden_state_pooler")
    _registered = True


def text_config_dict(config: CXRBertConfig) -> dict:
    """The text model's config.json as ``save_pretrained`` writes it, without remote-code pointers."""
    data = config.to_dict()
    data.pop("auto_map", None)
    data["architectures"] = ["CXRBertProjected"]
    return data


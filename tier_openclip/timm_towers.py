"""Small convolutional image towers registered with timm, for the demo's TIER-tiny-ResNet model.

Why a CNN: a convolution's output cell sees only its receptive field, so the mean-pooled CLIP
loss can raise a finding's similarity only through the cells that cover it, and the patch map
can localise (as BioViL's and the TIER authors' ResNet-50 maps do). The tiny ViT's global attention
lets every token carry any finding, and its maps did not localise (model_configs/README.md).
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, register_model
from timm.models.byobnet import ByobNet, ByoBlockCfg, ByoModelCfg

# Stem /2 (one 3×3 convolution), then two basic residual blocks at /4 and /8: an 8×8 grid at 64 px
# whose cells each see at most 39×39 input pixels, 64 channels.
TINY_RESNET = ByoModelCfg(
    blocks=(
        ByoBlockCfg(type="basic", d=1, c=32, s=2),
        ByoBlockCfg(type="basic", d=1, c=64, s=2),
    ),
    stem_chs=16,
    stem_type="3x3",
    stem_pool="",
)


@register_model
def tier_tiny_resnet(pretrained: bool = False, **kwargs) -> ByobNet:
    """The demo's image trunk (no pretrained weights exist)."""
    if pretrained:
        raise ValueError("tier_tiny_resnet has no pretrained weights")
    kwargs["pretrained_cfg"] = {"input_size": (3, 64, 64), "pool_size": (8, 8), "num_classes": 0}
    return build_model_with_cfg(ByobNet, "tier_tiny_resnet", pretrained=False, model_cfg=TINY_RESNET, **kwargs)

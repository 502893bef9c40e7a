"""Small convolutional image towers registered with timm, for the demo's TIER-tiny-ResNet model.

Why a CNN: a convolution's output cell depends mostly on the pixels near it (its effective
receptive field is much smaller than its nominal one), so the mean-pooled CLIP loss raises a
finding's similarity mostly through the cells over it, and the patch map can localise (as
BioViL's and the TIER authors' ResNet-50 maps do). The tiny ViT's global attention lets every
token carry any finding, and its maps did not localise (model_configs/README.md).
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, register_model
from timm.models.byobnet import ByobNet, ByoBlockCfg, ByoModelCfg

# Stem /2 (one 3×3 convolution), then two stages of two basic residual blocks at /4 and /8: an
# 8×8 grid at 64 px, 64 channels; a cell's nominal receptive field is 87×87 px (cell i: pixels
# 8·i ± 43). One block per stage (39×39 px) learned the phantom less well: its CLIP loss ended
# higher and its CAM maps pointed at 0.47 against 0.68 (benchmarks/results/model-choice-amd-epyc-2cpu/).
TINY_RESNET = ByoModelCfg(
    blocks=(
        ByoBlockCfg(type="basic", d=2, c=32, s=2),
        ByoBlockCfg(type="basic", d=2, c=64, s=2),
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

"""TIER's entropy term: the plain torch reference (the definition) and the fused Triton op.

Installed as ``tier_openclip.kernels``; importing this package never imports triton.
"""

from .reference import token_patch_entropy_reference

__all__ = ["token_patch_entropy_reference"]

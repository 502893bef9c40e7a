"""tier-openclip: TIER and local-uniformity losses for medical CLIP models, as an open_clip plugin.

Importing this package is cheap (no torch, no open_clip): the start-up hook imports it in
every interpreter of the environment. Public names load on first use.
"""

from __future__ import annotations

import importlib
import os

__version__ = "0.1.0"

# In a source checkout kernels/ and data_prep/ sit beside this folder; the wheel maps them
# inside it (pyproject's force-include). Let the same import names work in both.
_checkout_root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if not os.path.isdir(os.path.join(os.path.dirname(__file__), "kernels")) and os.path.isfile(
    os.path.join(_checkout_root, "kernels", "reference.py")
):
    __path__.append(_checkout_root)  # type: ignore[name-defined]  # noqa: F821

_LAZY = {
    "token_patch_entropy": "tier_openclip.entropy",
    "TierLoss": "tier_openclip.loss",
    "ContrastiveTokenLoss": "tier_openclip.loss",
    "LocalUniformityTerms": "tier_openclip.local_uniformity",
    "token_features": "tier_openclip.features",
    "enable_token_outputs": "tier_openclip.features",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tier_openclip' has no attribute {name!r}")

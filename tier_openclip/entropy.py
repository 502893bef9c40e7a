"""``token_patch_entropy``: TIER's per-pair entropies, dispatched to the torch reference or Triton."""

from __future__ import annotations

import os
from typing import Literal

from torch import Tensor

from tier_openclip.kernels.reference import token_patch_entropy_reference

Impl = Literal["auto", "torch", "triton"]
IMPLS: tuple[str, ...] = ("auto", "torch", "triton")


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_usable(tensor: Tensor) -> bool:
    if not (tensor.is_cuda or triton_interpreter_enabled()):
        return False
    try:
        # The kernels read triton.knobs, new in triton 3.4 (pyproject's minimum): an older triton
        # would import here and then fail inside the kernel module.
        from triton import knobs  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_impl(impl: str, tensor: Tensor) -> str:
    """The implementation ``impl`` means for inputs like ``tensor``: 'torch' or 'triton'."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if tensor.is_cuda and _triton_usable(tensor) else "torch"
    if impl == "triton" and not _triton_usable(tensor):
        raise RuntimeError(
            "impl='triton' needs CUDA tensors and the triton package (the inputs are on "
            f"{tensor.device}). Use impl='torch' or 'auto' on this machine, or set "
            "TRITON_INTERPRET=1 to run the kernel in Triton's (slow) CPU interpreter."
        )
    return impl


def token_patch_entropy(
    text_tokens: Tensor,
    image_tokens: Tensor,
    text_mask: Tensor | None = None,
    scale: float | Tensor = 1.0,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """Mean token→patch and patch→token softmax entropies of each matching pair.

    Args:
        text_tokens: (N, T, D) text-token embeddings (TIER uses them L2-normalised).
        image_tokens: (N, P, D) image-patch embeddings of the same N pairs.
        text_mask: (N, T) bool, True for tokens that take part; None means all do.
        scale: multiplies the similarities before both softmaxes (TIER: 1, raw cosine); a 0-d
            tensor (e.g. a detached logit scale) is used as is by the torch reference and read
            once as a Python float by the Triton kernel.
        impl: 'torch' (reference), 'triton' (fused kernel) or 'auto' (Triton on CUDA).

    Returns:
        (h_text, h_image), float32 tensors of shape (N,); a pair with no valid token gives 0.
    """
    if text_tokens.ndim != 3 or image_tokens.ndim != 3:
        raise ValueError(
            "text_tokens and image_tokens must be (N, T, D) and (N, P, D); got shapes "
            f"{tuple(text_tokens.shape)} and {tuple(image_tokens.shape)}"
        )
    if text_tokens.shape[0] != image_tokens.shape[0] or text_tokens.shape[2] != image_tokens.shape[2]:
        raise ValueError(
            "text_tokens and image_tokens must agree on N and D; got "
            f"{tuple(text_tokens.shape)} and {tuple(image_tokens.shape)}"
        )
    if text_mask is not None and tuple(text_mask.shape) != tuple(text_tokens.shape[:2]):
        raise ValueError(f"text_mask must be (N, T) = {tuple(text_tokens.shape[:2])}, got {tuple(text_mask.shape)}")

    if resolve_impl(impl, text_tokens) == "triton":
        from tier_openclip.kernels.tier_entropy import token_patch_entropy_triton

        return token_patch_entropy_triton(text_tokens, image_tokens, text_mask, float(scale))
    return token_patch_entropy_reference(text_tokens, image_tokens, text_mask, scale)

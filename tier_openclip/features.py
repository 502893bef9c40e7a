"""Projected text-token and image-patch embeddings from every tower kind open_clip builds.

One pass through each tower gives both the pooled feature (exactly what open_clip's own
``encode_image`` / ``encode_text`` return) and the per-token embeddings in the same shared
space, so a model whose forward is switched with ``enable_token_outputs`` trains exactly like
the stock model apart from the extra outputs.

How each tower's tokens reach the shared space:
- VisionTransformer: the patch tokens after ``ln_post`` (class token dropped) through ``proj``.
- ModifiedResNet (CLIP RN50 etc.): each cell of the last feature map, plus its positional
  embedding, through the attention pool's value and output projections (``c_proj ∘ v_proj``),
  as in MaskCLIP (Zhou et al., ECCV 2022): the map the attention pool applies to whatever it
  attends to, so a cell's token is what the pooled feature would be if all attention went there.
- timm towers: ``forward_features`` without prefix tokens, each token through the trunk's head
  (norm, classifier) and the adapter's projection; CNN maps go through ``forward_head`` cell by
  cell as 1×1 maps, where global pooling is the identity. Channels-last trunks (Swin, any
  ``output_fmt == 'NHWC'``) get their 1×1 cells channels-last too, as their head expects.
  A trunk with ``forward_tokens`` (BioViL's: projected cells, pooled = their mean) gives both
  from one pass, so its BatchNorm statistics see each step once.
- CLIP text transformer (``CLIP``'s inline tower or ``TextTransformer``): every position after
  ``ln_final`` through ``text_projection``; valid tokens run from position 1 up to and including
  end-of-text. Under the causal mask position 0 attends only to itself, so its output depends on
  the start-of-text token alone and is the same for every caption: it carries no content and is
  left out. (A tower built with ``no_causal_mask`` keeps it.) ``--tier-token-mask all`` still
  uses it, as the authors' code uses BERT's [CLS].
- Hugging Face text towers: ``last_hidden_state`` through the tower's ``proj``; valid tokens are
  those of the attention mask (padding excluded; [CLS] and [SEP] kept). CXR-BERT-specialized
  (tier_openclip.models.cxr_bert) returns its ``cls_projection_head`` on every token as
  ``last_hidden_state``, with ``proj`` the identity, as the TIER authors project words.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tier_openclip.openclip_adapter import check_tower, symbol, text_transformer_embeds, unwrap_model, vit_patch_tokens

TOKEN_KEYS = ("image_tokens", "text_tokens", "text_mask")


def _project(x: Tensor, projection: nn.Module | Tensor | None) -> Tensor:
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        return projection(x)
    return x @ projection


def _vit_tokens(visual: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    if visual.attn_pool is not None:
        raise NotImplementedError(
            "VisionTransformer towers with an attentional pooler (CoCa-style) output pooled queries, "
            "not image patches; TIER needs a patch grid. Use a ViT with pool_type 'tok' or 'avg'."
        )
    if visual.pool_type == "none":
        raise NotImplementedError("VisionTransformer with pool_type 'none' has no pooled feature to train.")
    pooled, tokens = vit_patch_tokens(visual, images)
    if visual.final_ln_after_pool:  # open_clip normalises only the pooled token then
        tokens = visual.ln_post(tokens)
    return _project(pooled, visual.proj), _project(tokens, visual.proj)


def _resnet_tokens(visual: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    x = visual.stem(images)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    pooled = pool(x)
    cells = x.flatten(2).transpose(1, 2)  # (N, H·W, C)
    cells = cells + pool.positional_embedding[1:].to(cells.dtype)
    return pooled, pool.c_proj(pool.v_proj(cells))


def _timm_tokens(visual: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    trunk = visual.trunk
    forward_tokens = getattr(trunk, "forward_tokens", None)
    if forward_tokens is not None:  # a trunk that pools its own projected cells (tier_openclip.models.biovil)
        pooled, tokens = forward_tokens(images)
        return visual.head(pooled), visual.head(tokens)
    features = trunk.forward_features(images)
    pooled = visual.head(trunk.forward_head(features))
    if features.ndim == 4:
        # Every cell as its own 1×1 map, in the layout the trunk's head pools (Swin: channels-last).
        channels_last = getattr(trunk, "output_fmt", "NCHW") == "NHWC"
        grid = features if channels_last else features.permute(0, 2, 3, 1)  # (N, H, W, C)
        n, h, w, c = grid.shape
        cells = grid.reshape(n * h * w, 1, 1, c)
        if not channels_last:
            cells = cells.permute(0, 3, 1, 2)
        tokens = visual.head(trunk.forward_head(cells)).reshape(n, h * w, -1)
        return pooled, tokens
    if getattr(trunk, "attn_pool", None) is not None:
        raise NotImplementedError(
            f"timm model {type(trunk).__name__} pools with attention ('map'); its per-token head is "
            "undefined. Use global_pool 'avg' or 'token'."
        )
    tokens = features[:, getattr(trunk, "num_prefix_tokens", 0) :]
    for name in ("fc_norm", "head_drop", "head"):
        layer = getattr(trunk, name, None)
        if layer is not None:
            tokens = layer(tokens)
    return pooled, visual.head(tokens)


def encode_image_tokens(visual: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(pooled (N, E), patch tokens (N, P, E)), both projected and not normalised."""
    for cls_name, tokens_of in (("VisionTransformer", _vit_tokens), ("ModifiedResNet", _resnet_tokens),
                                ("TimmModel", _timm_tokens)):
        if isinstance(visual, symbol(cls_name)):
            return tokens_of(check_tower(visual, cls_name), images)
    raise TypeError(
        f"no patch tokens for image tower {type(visual).__name__}; supported: open_clip "
        "VisionTransformer, ModifiedResNet and timm towers"
    )


def clip_text_mask(
    text: Tensor, pool_type: str, eos_id: int | None, pad_id: int = 0, causal: bool = True
) -> Tensor:
    """True for tokens up to and including end-of-text (as open_clip's pooling finds it).

    With ``causal`` (open_clip's default text tower) position 0 is False: it sees only the
    start-of-text token, so its output is one constant vector shared by every caption.
    """
    positions = torch.arange(text.shape[1], device=text.device)
    if pool_type == "argmax":  # CLIP's end-of-text token has the largest id
        mask = positions[None, :] <= text.argmax(dim=-1)[:, None]
    elif pool_type == "eos" and eos_id is not None:
        mask = positions[None, :] <= (text == eos_id).int().argmax(dim=-1)[:, None]
    else:
        mask = text != pad_id
    if causal:
        mask = mask & (positions[None, :] > 0)
    return mask


def _clip_text_tokens(model: nn.Module, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CLIP keeps its text tower inline (token_embedding, transformer, … on the model itself)."""
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    eos_id = getattr(model, "text_eos_id", None)
    pooled = symbol("text_global_pool")(x, text, model.text_pool_type, eos_token_id=eos_id)
    mask = clip_text_mask(text, model.text_pool_type, eos_id, causal=model.attn_mask is not None)
    return _project(pooled, model.text_projection), _project(x, model.text_projection), mask


def _text_transformer_tokens(tower: nn.Module, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    x, attn_mask = text_transformer_embeds(tower, text)
    x = tower.transformer(x, attn_mask=attn_mask)
    eos_id = getattr(tower, "eos_id", None)
    if tower.cls_emb is not None:  # CoCa-style appended class token: it is the pooled feature
        pooled, tokens = tower.ln_final(x[:, -1]), tower.ln_final(x[:, :-1])
    else:
        tokens = tower.ln_final(x)
        pooled = symbol("text_global_pool")(tokens, text, tower.pool_type, eos_token_id=eos_id)
    mask = clip_text_mask(text, tower.pool_type, eos_id, pad_id=tower.pad_id, causal=tower.attn_mask is not None)
    return _project(pooled, tower.text_projection), _project(tokens, tower.text_projection), mask


def _hf_text_tokens(tower: nn.Module, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    attn_mask = (text != tower.config.pad_token_id).long()
    out = tower.transformer(input_ids=text, attention_mask=attn_mask)
    pooled = tower.pooler(out, attn_mask)
    return tower.proj(pooled), tower.proj(out.last_hidden_state), attn_mask.bool()


def encode_text_tokens(model: nn.Module, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(pooled (N, E), token embeddings (N, T, E), valid-token mask (N, T) bool)."""
    if isinstance(model, symbol("CLIP")):
        return _clip_text_tokens(check_tower(model, "CLIP"), text)
    tower = getattr(model, "text", None)
    if isinstance(tower, symbol("TextTransformer")):
        return _text_transformer_tokens(check_tower(tower, "TextTransformer"), text)
    if isinstance(tower, symbol("HFTextEncoder")):
        return _hf_text_tokens(check_tower(tower, "HFTextEncoder"), text)
    raise TypeError(
        f"no text tokens for {type(model).__name__} with text tower {type(tower).__name__}; supported: "
        "open_clip CLIP, CustomTextCLIP with TextTransformer or HFTextEncoder"
    )


def token_features(
    model: nn.Module, images: Tensor | None = None, texts: Tensor | None = None, normalize: bool = True
) -> dict[str, Tensor | None]:
    """Pooled features and token embeddings in one pass through each tower.

    Returns ``image_features`` (N, E), ``image_tokens`` (N, P, E), ``text_features`` (N, E),
    ``text_tokens`` (N, T, E) and ``text_mask`` (N, T) bool; entries of a missing input are None.
    With ``normalize`` every feature and token is L2-normalised, as the training loss sees them.
    """
    model = unwrap_model(model)
    out: dict[str, Tensor | None] = dict.fromkeys(("image_features", "image_tokens", "text_features", *TOKEN_KEYS[1:]))
    norm = (lambda x: F.normalize(x, dim=-1)) if normalize else (lambda x: x)
    if images is not None:
        pooled, tokens = encode_image_tokens(model.visual, images)
        out["image_features"], out["image_tokens"] = norm(pooled), norm(tokens)
    if texts is not None:
        pooled, tokens, mask = encode_text_tokens(model, texts)
        out["text_features"], out["text_tokens"], out["text_mask"] = norm(pooled), norm(tokens), mask
    return out


def _forward_with_tokens(self: nn.Module, image: Tensor | None = None, text: Tensor | None = None) -> dict:
    out: dict[str, Any] = token_features(self, image, text)
    if text is not None:  # the loss finds report sentences from the ids (tier_openclip.sentences)
        out["text_ids"] = text
    out["logit_scale"] = self.logit_scale.exp()
    if self.logit_bias is not None:
        out["logit_bias"] = self.logit_bias
    return out


def enable_token_outputs(model: nn.Module) -> nn.Module:
    """Make ``model(images, texts)`` also return image_tokens, text_tokens, text_mask and text_ids.

    The forward is replaced on this instance only: parameters, state_dict and checkpoints are
    unchanged, and the outputs stay batch-first so ``--accum-freq`` can concatenate them.
    """
    inner = unwrap_model(model)
    if not getattr(inner, "output_dict", False):
        raise ValueError("token outputs need a model built with output_dict=True (as open_clip_train builds it)")
    if not isinstance(getattr(inner, "forward", None), types.MethodType) or inner.forward.__func__ is not _forward_with_tokens:
        inner.forward = types.MethodType(_forward_with_tokens, inner)
    return model


def token_outputs_enabled(model: nn.Module) -> bool:
    forward = getattr(unwrap_model(model), "forward", None)
    return getattr(forward, "__func__", None) is _forward_with_tokens

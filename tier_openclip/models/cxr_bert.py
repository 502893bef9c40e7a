"""CXR-BERT-specialized as the TIER authors use it (see tier_openclip.models.biovil, which registers it):
BERT without its pooler, and ``cls_projection_head`` applied to every token.

Imported only when a cxr-bert text tower is built: transformers' BERT modelling code is not
needed to import open_clip.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from tier_openclip.models.cxr_bert_config import CXRBertConfig


class CXRBertProjectionHead(nn.Module):
    """hi-ml's ``BertProjectionHead`` (same names, exact GELU, LayerNorm eps 1e-12)."""

    def __init__(self, config: CXRBertConfig):
        super().__init__()
        self.dense_to_hidden = nn.Linear(config.hidden_size, config.projection_size)
        self.LayerNorm = nn.LayerNorm(config.projection_size, eps=1e-12)
        self.dense_to_output = nn.Linear(config.projection_size, config.projection_size)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(hidden_states))))


class CXRBertProjected(BertPreTrainedModel):
    """CXR-BERT-specialized whose ``last_hidden_state`` is ``cls_projection_head`` on every token.

    Parameter names are those of the published checkpoint (``bert.*``, ``cls_projection_head.*``).
    ``embeddings`` and ``encoder`` point into ``bert`` so that open_clip's ``HFTextEncoder.lock``
    finds BERT's embeddings and layers (``--lock-text-unlocked-layers``).
    """

    config_class = CXRBertConfig

    def __init__(self, config: CXRBertConfig, add_pooling_layer: bool = False):
        super().__init__(config)
        if add_pooling_layer:  # open_clip asks for it only with hf_pooler_type cls_pooler
            raise ValueError("CXR-BERT has no BERT pooler; use hf_pooler_type cls_last_hidden_state_pooler")
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls_projection_head = CXRBertProjectionHead(config)
        self.post_init()

    @property
    def embeddings(self) -> nn.Module:
        return self.bert.embeddings

    @property
    def encoder(self) -> nn.Module:
        return self.bert.encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs) -> BaseModelOutput:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return BaseModelOutput(last_hidden_state=self.cls_projection_head(hidden))

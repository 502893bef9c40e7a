"""CXR-BERT-specialized's configuration (hi-ml's ``CXRBertConfig``), apart from its modelling
(tier_openclip/models/cxr_bert.py) so that registering the type imports no BERT modelling code."""

from __future__ import annotations

from transformers import BertConfig

MODEL_TYPE = "cxr-bert"  # CXR-BERT-specialized's config.json names this type
PROJECTION_SIZE = 128


class CXRBertConfig(BertConfig):
    """hi-ml's ``CXRBertConfig``: BERT's configuration plus the projection size."""

    model_type = MODEL_TYPE

    def __init__(self, projection_size: int = PROJECTION_SIZE, **kwargs):
        super().__init__(**kwargs)
        self.projection_size = projection_size

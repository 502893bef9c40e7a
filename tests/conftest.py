"""Shared fixtures (helpers in tests/helpers.py). Nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_tiny_bert, register_config, tower_configs, write_shards

# Offline and quiet: HF towers load from a BERT the tests save themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tower_models(tmp_path_factory, tiny_bert_dir):
    """name -> (model, tokenizer, image_size), built once per session."""
    import open_clip
    import torch

    config_dir = tmp_path_factory.mktemp("model-configs")
    models = {}
    for kind, config in tower_configs(tiny_bert_dir).items():
        name = register_config(config_dir, f"test-{kind}", config)
        torch.manual_seed(0)
        model = open_clip.create_model(name, output_dict=True).eval()
        size = model.visual.image_size
        models[kind] = (model, open_clip.get_tokenizer(name), (size, size) if isinstance(size, int) else tuple(size))
    return models


@pytest.fixture
def shards(tmp_path) -> str:
    return write_shards(tmp_path / "shards")



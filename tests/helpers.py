"""Test helpers: tiny open_clip configs of every tower kind, a tiny local BERT, WebDataset tars.

Nothing here touches the network: HF towers load from a BERT saved to a folder.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np

TINY_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_VIT = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8}

REPORT_WORDS = (
    "small large left right pleural effusion no pneumothorax heart size normal mild cardiomegaly "
    "opacity lower upper zone lung base consolidation edema atelectasis nodule clear lungs . ,"
).split()


def tower_configs(bert_dir: Path | None = None) -> dict[str, dict]:
    """open_clip model configs, one per tower kind the features module supports."""
    configs = {
        "vit": {"embed_dim": 24, "vision_cfg": TINY_VIT, "text_cfg": TINY_TEXT},
        "vit-avgpool-custom-text": {
            "embed_dim": 24,
            "custom_text": True,
            "vision_cfg": {**TINY_VIT, "pool_type": "avg", "final_ln_after_pool": True},
            "text_cfg": {**TINY_TEXT, "pool_type": "argmax", "proj_type": "linear"},
        },
        "resnet": {
            "embed_dim": 24,
            "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64, "patch_size": None},
            "text_cfg": TINY_TEXT,
        },
        "timm-vit": {
            "embed_dim": 24,
            "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": "linear", "image_size": 160},
            "text_cfg": TINY_TEXT,
        },
        "timm-cnn": {
            "embed_dim": 24,
            "vision_cfg": {"timm_model_name": "test_convnext", "timm_model_pretrained": False, "timm_pool": "avg",
                           "timm_proj": "linear", "image_size": 160},
            "text_cfg": TINY_TEXT,
        },
    }
    if bert_dir is not None:
        configs["hf-bert"] = {
            "embed_dim": 24,
            "vision_cfg": TINY_VIT,
            "text_cfg": {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir),
                         "hf_proj_type": "linear", "hf_pooler_type": "cls_pooler", "context_length": 32},
        }
    return configs


def register_config(directory: Path, name: str, config: dict) -> str:
    """Write an open_clip model config JSON and register it; returns the model name."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


def make_tiny_bert(directory: Path) -> Path:
    """A 1-layer BERT and its WordPiece tokenizer, saved the way the Hub serves them."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(REPORT_WORDS))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    word_pieces = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    tokenizer = BertTokenizerFast(tokenizer_object=word_pieces._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    tokenizer.save_pretrained(directory)
    import torch

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=0)
    BertModel(config).save_pretrained(directory)
    return directory


def random_report(rng: random.Random) -> str:
    return " ".join(rng.choice(REPORT_WORDS) for _ in range(rng.randint(3, 12)))


def write_shards(directory: Path, num_shards: int = 2, per_shard: int = 16, size: int = 32, seed: int = 0) -> str:
    """WebDataset tars (png + txt) with sizes.json, as open_clip reads them; returns the brace pattern."""
    import webdataset as wds
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    sizes = {}
    for shard in range(num_shards):
        name = f"train-{shard:06d}.tar"
        with wds.TarWriter(str(directory / name)) as sink:
            for i in range(per_shard):
                pixels = (np_rng.random((size, size)) * 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                sink.write({"__key__": f"{shard:03d}_{i:05d}", "png": buffer.getvalue(), "txt": random_report(rng)})
        sizes[name] = per_shard
    (directory / "sizes.json").write_text(json.dumps(sizes))
    return str(directory / f"train-{{000000..{num_shards - 1:06d}}}.tar")


def startup_hook_source() -> Path:
    """The start-up hook's source as it runs here: the checkout's tier_openclip/_startup.py, or, in a
    wheel install (which ships it as the top-level module _tier_openclip_startup), that module's file."""
    import importlib.util

    import tier_openclip

    checkout = Path(tier_openclip.__file__).with_name("_startup.py")
    if checkout.is_file():
        return checkout
    spec = importlib.util.find_spec("_tier_openclip_startup")  # finds the file; runs nothing
    if spec is None or spec.origin is None:
        raise FileNotFoundError("neither tier_openclip/_startup.py nor an installed _tier_openclip_startup")
    return Path(spec.origin)


def refused(params, argv: list[str], capsys) -> str:
    """The one line open_clip_train's parse_args (``params``, the plugin active) stops with, exit
    status 2; fails if the arguments were accepted."""
    import pytest

    with pytest.raises(SystemExit) as stop:
        params.parse_args(["--model", "TIER-tiny", *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    return err


def loop_region(boxes, height: int, width: int) -> np.ndarray:
    """A pixel is in a box when its centre (c + ½, r + ½) is, boxes half-open (the specification
    of region masks, pixel by pixel)."""
    return np.array([[any(x0 <= c + 0.5 < x1 and y0 <= r + 0.5 < y1 for x0, y0, x1, y1 in boxes)
                      for c in range(width)] for r in range(height)])


def interpolate(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch's bilinear upsampling (align_corners=False) of a 2-D grid to ``size`` (height, width):
    the specification of the maps' upsampling."""
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.tensor(grid)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def save_training_checkpoint(model, path: Path, epoch: int = 1) -> Path:
    """``model``'s weights as open_clip_train saves a training checkpoint from DDP: under
    "state_dict" with the "module." prefix, beside the epoch, the run's name and the optimizer."""
    import torch

    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": epoch, "name": "run", "state_dict": state, "optimizer": {}}, path)
    return path


class Recorder:
    """A stand-in TensorBoard writer (add_scalar) and W&B run (log) that keeps every call."""

    def __init__(self):
        self.calls = []

    def add_scalar(self, *args):
        self.calls.append(args)

    def log(self, data):
        self.calls.append(data)

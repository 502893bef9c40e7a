"""`tier-openclip convert biovil`: the command line of tier_openclip.models.convert, which writes
BioViL's published weights as an open_clip model folder."""

from __future__ import annotations

import argparse
from typing import Any

from tier_openclip.models.convert import BIOVIL_REPO, convert_biovil


def run_convert_biovil(args: argparse.Namespace) -> int:
    out = convert_biovil(args.image_checkpoint, args.text_model, args.out).resolve()
    print(f"Wrote {out}: load it with open_clip.create_model_and_transforms('local-dir:{out}') or train with "
          f"--model local-dir:{out} (text_cfg.hf_model_name names this folder: move it and edit that path)")
    return 0


def add_convert_parser(subparsers: Any) -> None:
    """`tier-openclip convert biovil ...`"""
    parser = subparsers.add_parser("convert", help="Convert published weights into an open_clip model folder.",
                                   description="Convert published medical CLIP weights into an open_clip model folder.")
    kinds = parser.add_subparsers(dest="convert_kind", metavar="KIND", required=True)
    biovil = kinds.add_parser(
        "biovil", help="BioViL (image ResNet-50 + CXR-BERT-specialized) as the TIER authors fine-tune it.",
        description="Write BioViL as an open_clip model folder (open_clip_config.json, open_clip_model.safetensors, "
                    "the text model's config.json, tokenizer files) that loads offline with "
                    "open_clip.create_model_and_transforms('local-dir:OUT') and trains with --model local-dir:OUT "
                    "(the plugin registers the architecture; no trust_remote_code). Every source key is mapped or "
                    "refused by name. The authors' freezing (BERT embeddings and its first 8 of 12 layers) is "
                    "`--lock-text --lock-text-unlocked-layers 4 --lock-text-freeze-layer-norm`.")
    biovil.add_argument("--image-checkpoint", required=True, metavar="FILE",
                        help="hi-ml's biovil_image_resnet50_proj_size_128.pt (in the CXR-BERT-specialized repo).")
    biovil.add_argument("--text-model", required=True, metavar="DIR_OR_REPO",
                        help=f"CXR-BERT-specialized: a local copy of the repo or its id ({BIOVIL_REPO}; offline it "
                             "must be in the Hugging Face cache).")
    biovil.add_argument("--out", required=True, metavar="DIR", help="New (or empty) folder to write.")
    biovil.set_defaults(func=run_convert_biovil)

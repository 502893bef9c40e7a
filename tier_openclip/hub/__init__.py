"""`tier-openclip push`: a training checkpoint as an open_clip model on the Hugging Face Hub.

The folder is written by open_clip's own ``save_for_hf``, so it holds exactly what
``open_clip.create_model_from_pretrained("hf-hub:ORG/NAME")`` and ``"local-dir:DIR"`` load:
``open_clip_config.json`` (model_cfg + preprocess_cfg), ``open_clip_model.safetensors`` (the
weights file both loaders look for first; no duplicate ``.bin``), and, for Hugging Face text
towers, the tokenizer files (the config's ``hf_tokenizer_name`` then points at the repo itself,
so ``get_tokenizer("hf-hub:ORG/NAME")`` reads them) and the text model's ``config.json``, which
transformers 5's AutoTokenizer reads before the tokenizer files. A model card (README.md) states the TIER
settings, the training data and the evaluation results, and shows how to load the model.

The model is rebuilt as the run built it: settings that change the architecture or preprocessing
(``--siglip``, ``--force-*``, ``--image-mean`` ..., a pretrained tag's normalisation) are read from
the run's params.txt (``logs/NAME/params.txt``, next to ``checkpoints/``) and written into the
config; the weights are then loaded strictly, so a checkpoint that does not fit the model fails here,
not for the people who download it.

The upload token comes from huggingface_hub (``HF_TOKEN`` or ``hf auth login``); it is never
printed or written.

Modules: ``params`` (the run's settings), ``export`` (the open_clip folder), ``card`` (the model
card), ``upload`` (the Hub), ``cli`` (the command). Their public names are importable from here.
"""

from tier_openclip.hub.card import TOKEN_MASK_MEANING, model_card
from tier_openclip.hub.cli import add_push_parser, run_push
from tier_openclip.hub.export import EXPORT_RECORD, Export, check_export_folder, export_model, install_export
from tier_openclip.hub.params import (CREATE_ARGS, TAG_PREPROCESS, TierSettings, creation_args, hub_model_config,
                                      params_next_to, read_params)
from tier_openclip.hub.upload import hub_token, upload

__all__ = ["CREATE_ARGS", "EXPORT_RECORD", "TAG_PREPROCESS", "TOKEN_MASK_MEANING", "Export", "TierSettings",
           "add_push_parser", "check_export_folder", "creation_args", "export_model", "hub_model_config", "hub_token",
           "install_export", "model_card", "params_next_to", "read_params", "run_push", "upload"]

"""The ``tier-openclip`` command: one subcommand per job, each with a complete --help.

Each subcommand lives in its own module, whose function below adds its parser (with
``set_defaults(func=...)``) and which keeps torch/open_clip imports inside the function it runs,
so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tier_openclip import __version__

# subcommand -> "module:function(subparsers)"
SUBCOMMANDS = {
    "prep": "tier_openclip.data_prep.cli:add_prep_parser",
    "eval": "tier_openclip.evaluate:add_eval_parser",
    "heatmap": "tier_openclip.heatmap:add_heatmap_parser",
    "analyze": "tier_openclip.analyze:add_analyze_parser",
    "push": "tier_openclip.hub:add_push_parser",
    "demo": "tier_openclip.demo:add_demo_parser",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tier-openclip",
        description="TIER for medical CLIP models on open_clip: data preparation, evaluation, "
        "heatmaps, analysis, Hugging Face Hub export and a CPU demo. Training itself is "
        "`python -m open_clip_train.main --loss tier ...`.",
    )
    parser.add_argument("--version", action="version", version=f"tier-openclip {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for target in SUBCOMMANDS.values():
        module_name, function = target.split(":")
        getattr(importlib.import_module(module_name), function)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

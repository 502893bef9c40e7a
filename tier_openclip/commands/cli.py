"""The ``tier-openclip`` command: one subcommand per job, each with a complete --help.

Each subcommand lives in its own module, whose function below adds its parser (with
``set_defaults(func=...)``) and which keeps torch/open_clip imports inside the function it runs,
so ``--help`` stays fast.

Errors reach the user as one line, ``tier-openclip <command>: <message>``, never a traceback:
subcommands raise ``tier_openclip.errors.UsageError`` (exit status 2: the command line is wrong)
or ``CommandError`` (exit status 1: what the command read or did failed), and ``main`` prints them.
"""

from __future__ import annotations

import argparse
import sys

from tier_openclip import __version__
from tier_openclip.commands.convert import add_convert_parser
from tier_openclip.commands.eval_cli import add_eval_parser
from tier_openclip.data_prep.cli import add_prep_parser
from tier_openclip.demo import add_demo_parser
from tier_openclip.errors import TierOpenclipError, print_error
from tier_openclip.evaluation.analyze import add_analyze_parser
from tier_openclip.evaluation.heatmap import add_heatmap_parser
from tier_openclip.hub import add_push_parser

# subcommand -> the function that adds its parser (with set_defaults(func=...)), in --help order
SUBCOMMANDS = {
    "prep": add_prep_parser,
    "eval": add_eval_parser,
    "heatmap": add_heatmap_parser,
    "analyze": add_analyze_parser,
    "push": add_push_parser,
    "convert": add_convert_parser,
    "demo": add_demo_parser,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tier-openclip",
        description="TIER for medical CLIP models on open_clip: data preparation, evaluation, "
        "heatmaps, analysis, Hugging Face Hub export, weight conversion and a CPU demo. Training itself is "
        "`python -m open_clip_train.main --loss tier ...`.",
    )
    parser.add_argument("--version", action="version", version=f"tier-openclip {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in SUBCOMMANDS.values():
        add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "eval_task", None))))
    try:
        return int(args.func(args) or 0)
    except TierOpenclipError as exc:
        print_error(exc, command)
        return exc.exit_code
    except OSError as exc:  # disk full, permissions, a vanished mount: the environment, not a bug
        print_error(exc, command)
        return 1
    except KeyboardInterrupt:
        print_error("interrupted", command)
        return 130


if __name__ == "__main__":
    sys.exit(main())

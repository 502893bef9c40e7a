"""`tier-openclip eval segmentation`'s command line."""

from __future__ import annotations

import argparse
from typing import Any

from tier_openclip.cli_common import add_model_flags, add_run_flags
from tier_openclip.evaluation.segmentation.inputs import segmentation_evaluate
from tier_openclip.evaluation.segmentation.probe import DEFAULT_SMALL_FRACTION_SEEDS, LOSSES, ProbeConfig
from tier_openclip.evaluation.segmentation.report import segmentation_markdown


def add_segmentation_parser(tasks: Any) -> None:
    """`tier-openclip eval segmentation ...` (``tasks``: the eval subcommand's subparsers)."""
    parser = tasks.add_parser(
        "segmentation",
        help="Linear-probe segmentation (SIIM, RSNA layout): Dice, IoU, mIoU of a head on frozen patch embeddings.",
        description="Localized downstream evaluation as LoVT does it: freeze the image tower, train a linear head "
                    "(1x1 convolution on the projected patch embeddings, bilinear upsampling) on a fraction of the "
                    "train split, report Dice, IoU and mIoU on the test split with bootstrap intervals over test "
                    "images, mean ± sd over seeds, beside the empty-head and image-free prior baselines. Prints "
                    "markdown; --out also writes JSON and the table next to it (results.md).",
    )
    add_model_flags(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="Segmentation set: `tier-openclip prep siim|rsna` output (splits.csv + images/ + masks/).")
    parser.add_argument("--label-fraction", type=float, default=1.0, metavar="F",
                        help="Share of the train split the head sees (LoVT: 0.01, 0.1, 1.0; default 1.0).")
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help=f"Training subsets and runs (default {DEFAULT_SMALL_FRACTION_SEEDS} below fraction 1, else 1).")
    parser.add_argument("--out", default=None, metavar="FILE.json",
                        help="Write results JSON here, and the markdown table next to it (same name, .md).")
    parser.add_argument("--loss", choices=LOSSES, default=ProbeConfig.loss, help="Head loss (default bce+dice).")
    parser.add_argument("--epochs", type=int, default=ProbeConfig.epochs, help=f"Head epochs (default {ProbeConfig.epochs}).")
    parser.add_argument("--lr", type=float, default=ProbeConfig.lr, help=f"Adam learning rate (default {ProbeConfig.lr:g}).")
    parser.add_argument("--probe-batch-size", type=int, default=ProbeConfig.batch_size,
                        help=f"Images per head step (default {ProbeConfig.batch_size}).")
    add_run_flags(parser, resampled="the test images", seeded="the bootstrap and the first run (runs use seed, seed+1, ...)")
    parser.set_defaults(func=run_segmentation)


def run_segmentation(args: argparse.Namespace) -> int:
    from tier_openclip.cli_common import check_evaluation_inputs, check_run_flags, run_evaluation
    from tier_openclip.data_prep.seg_sets import read_seg_set
    from tier_openclip.errors import UsageError

    config = ProbeConfig(epochs=args.epochs, lr=args.lr, batch_size=args.probe_batch_size, loss=args.loss)
    if not 0 < args.label_fraction <= 1:
        raise UsageError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    check_run_flags(args)
    if args.seeds is not None and args.seeds < 1:
        raise UsageError(f"--seeds {args.seeds}: must be >= 1")
    try:
        config.check()
    except ValueError as exc:
        raise UsageError(f"--epochs, --probe-batch-size, --lr: {exc}") from None
    out = check_evaluation_inputs(args, read_seg_set, "a segmentation set from `tier-openclip prep siim|rsna`")

    def evaluate(loaded, device: str) -> dict:
        return segmentation_evaluate(loaded.model, loaded.preprocess, args.data, label_fraction=args.label_fraction,
                                     seeds=args.seeds, device=device, seed=args.seed, config=config,
                                     bootstrap=args.bootstrap, batch_size=args.batch_size, num_workers=args.workers,
                                     progress=not args.quiet)

    return run_evaluation(args, evaluate, segmentation_markdown, out)

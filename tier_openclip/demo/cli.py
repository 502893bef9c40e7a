"""``tier-openclip demo`` and ``tier-openclip demo --sweep``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tier_openclip.demo.design import (ARM_NAMES, CALIBRATED_RATIO, CALIBRATED_SCALE, DEFAULT_ARMS,
                                       DEFAULT_PRETRAIN_LOSS, PRETRAIN_LOSSES, SIZES, SWEEP_LAMBDAS, SWEEP_SCALES,
                                       DemoOptions, check_scale)
from tier_openclip.errors import UsageError, add_list_flag, listed, writable_folder


def _positive_floats(texts: list[str]) -> list[float]:
    try:
        values = [float(v) for v in texts]
    except ValueError:
        values = []
    if not values or not all(v > 0 for v in values):
        raise UsageError(f"--sweep-lambdas {' '.join(texts)}: expected positive numbers, e.g. 0.01 0.1 0.5")
    return values


def demo(args: argparse.Namespace) -> int:
    from tier_openclip.demo.pipeline import run_demo, run_sweep

    losses = listed("--losses", args.losses, DEFAULT_ARMS)
    if args.seeds is not None:
        raise UsageError(f"--seeds {args.seeds}: the demo now repeats the whole pipeline; give --starts N "
                         "(N pre-trainings, every arm fine-tuned from each)")
    options = DemoOptions(
        out=Path(args.out), size=args.size, starts=args.starts, pretrain_loss=args.pretrain_loss, losses=losses, tier_lambda=args.tier_lambda,
        tier_scale=check_scale(args.tier_scale), uniform_weight=args.uniform_weight, bootstrap=args.bootstrap,
        pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
        calibrated_ratio=args.calibrated_ratio, calibrated_scale=check_scale(args.calibrated_scale), pin=not args.no_pin,
    )
    for flag, value in (("--pretrain-epochs", args.pretrain_epochs), ("--finetune-epochs", args.finetune_epochs)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: at least 1")
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap {args.bootstrap}: 0 (no intervals) or more")
    if options.out.exists() and not options.out.is_dir():
        raise UsageError(f"--out {options.out} is a file; give a folder")
    try:  # an unwritable --out is found now, not after an hour of training
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {options.out}: cannot create it ({exc.strerror or exc})") from None
    writable_folder(options.out, f"--out {options.out}")
    if args.sweep:
        lambdas = _positive_floats(listed("--sweep-lambdas", args.sweep_lambdas, [f"{v:g}" for v in SWEEP_LAMBDAS]))
        scales = [check_scale(s) for s in listed("--sweep-scales", args.sweep_scales, SWEEP_SCALES)]
        result = run_sweep(options, lambdas, scales)
        text, files = (options.out / "sweep.md").read_text(), "sweep.md, sweep.json and sweep.png"
    else:
        result = run_demo(options)
        text, files = (options.out / "report.md").read_text(), "report.md, demo.json, sparsity.png and heatmaps/"
    print(text)
    print(f"wrote {files} in {options.out} ({result['timings']['total_seconds'] / 60:.1f} min)")
    return 0


def add_demo_parser(subparsers) -> None:
    from tier_openclip.demo import __doc__ as description

    parser = subparsers.add_parser(
        "demo",
        help="Pre-train CLIP on phantom chest X-rays on the CPU, fine-tune with clip and tier, report what changes.",
        description=description.split("\n\nModules:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="tier-demo",
                        help="Output folder (default: ./tier-demo). Rerunning into it reuses the finished data, "
                             "trainings and evaluations; the demo and --sweep share its pre-training.")
    parser.add_argument("--size", choices=list(SIZES), default="small",
                        help="small: about 10 minutes on 2 CPU cores (default); medium and large: more data and "
                             "steps, for more time.")
    parser.add_argument("--starts", type=int, default=3,
                        help="Pre-trainings, each its own seed; every arm is fine-tuned once from each and compared "
                             "with clip within it (default: 3).")
    parser.add_argument("--pretrain-loss", choices=PRETRAIN_LOSSES, default=DEFAULT_PRETRAIN_LOSS,
                        help="Loss of the pre-trainings: clip, or filip (CLIP's loss plus FILIP's token-wise "
                             "contrastive term, which asks tokens to match patches; tier_openclip/filip.py). "
                             f"The fine-tuning arms are unchanged (default: {DEFAULT_PRETRAIN_LOSS}).")
    parser.add_argument("--seeds", type=int, default=None, help=argparse.SUPPRESS)  # replaced by --starts
    add_list_flag(parser, "--losses", "ARM",
                  f"Arms from {', '.join(ARM_NAMES)}; clip is the control and is required "
                  f"(default: {' '.join(DEFAULT_ARMS)}). tier-paper: λ 0.1, scale 1; tier-calibrated: see "
                  "--calibrated-ratio; tier: --tier-lambda and --tier-scale.")
    parser.add_argument("--tier-lambda", type=float, default=0.1, help="The tier arm's λ, both directions (default: 0.1).")
    parser.add_argument("--tier-scale", default="1",
                        help="The tier arm's similarity scale: a positive number or 'logit' (default: 1, the paper's).")
    parser.add_argument("--calibrated-ratio", type=float, default=CALIBRATED_RATIO,
                        help="tier-calibrated: λ is chosen per start so that TIER's gradient norm is this share of "
                             f"CLIP's on the start checkpoint (default: {CALIBRATED_RATIO:g}).")
    parser.add_argument("--calibrated-scale", default=CALIBRATED_SCALE,
                        help=f"tier-calibrated's similarity scale (default: {CALIBRATED_SCALE}; at 1 a map over 64 "
                             "patches cannot reach a top-1 mass above 0.105).")
    parser.add_argument("--no-pin", action="store_true",
                        help="Let torch, MKL and oneDNN pick their code paths by CPU (default: pinned to AVX2 in "
                             "the training and evaluation processes, recorded in demo.json).")
    parser.add_argument("--uniform-weight", type=float, default=1.0,
                        help="Weight of the within-sample uniformity prior in local-uniformity and "
                             "tier+uniformity (default: 1, the plugin's --lu-uniform-weight).")
    parser.add_argument("--bootstrap", type=int, default=200, help="Bootstrap resamples for the intervals (default: 200).")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="Override the size's pre-training epochs.")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="Override the size's fine-tuning epochs.")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--sweep", action="store_true",
                       help="Instead of the arms above: TIER at every λ × scale against the clip control, same "
                            "design (starts, pairing, manipulation check; sweep.md, sweep.json, sweep.png).")
    add_list_flag(sweep, "--sweep-lambdas", "λ",
                  f"λ values of the sweep (default: {' '.join(f'{v:g}' for v in SWEEP_LAMBDAS)}).")
    add_list_flag(sweep, "--sweep-scales", "SCALE",
                  f"Scales of the sweep, numbers or 'logit' (default: {' '.join(SWEEP_SCALES)}).")
    parser.set_defaults(func=demo)

"""``tier-openclip prep``: MIMIC-CXR shards for training, CheXpert and PadChest for evaluation.

:func:`add_prep_parser` adds the ``prep`` subcommand (with ``mimic-cxr``, ``chexpert`` and
``padchest``) to the main command's subparsers; :func:`main` runs it alone
(``python -m tier_openclip.data_prep``). Heavy imports happen inside the functions that run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import PrepError
from .reports import TEXT_MODES

MIMIC_SPLITS = ("train", "validate", "test")


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _csv_list(value: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each optional argument's help ends with its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        default = ",".join(action.default) if isinstance(action.default, tuple) else str(action.default)
        return f"{text} (default: {default.replace('%', '%%')})"


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("images")
    group.add_argument("--image-size", type=_positive, default=512, metavar="PIXELS",
                       help="side of the square output images")
    group.add_argument("--resize", choices=("pad", "crop"), default="pad",
                       help="pad: long side to --image-size, short side padded with black (CheXzero; "
                       "keeps the whole film); crop: short side to --image-size, long side centre-cropped (BioViL)")
    group.add_argument("--workers", type=_positive, default=_default_workers(), metavar="N",
                       help="worker processes; the default is the number of CPUs this process may use, here")
    group.add_argument("--sample-timeout", type=float, default=600.0, metavar="SECONDS",
                       help="a sample whose worker gives no result for this long (a worker killed by a crash in "
                       "a native decoder, or hung) fails with reason worker_crashed and the run goes on")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


MIMIC_DESCRIPTION = """\
Turn MIMIC-CXR into WebDataset shards for open_clip:
OUT/<split>/<split>-000000.tar ... with, per sample, __key__ = dicom_id, an 8-bit grayscale
image (jpg or png), txt = the chosen report section, json = subject_id, study_id, dicom_id,
view, split and the 14 CheXpert labels (1.0/0.0/-1.0/null); OUT/<split>/sizes.json for
open_clip; OUT/manifest.json (options, counts written/filtered/skipped/failed per reason);
OUT/failures.csv (every skipped or failed DICOM with its reason).

DICOMs are windowed with their modality and VOI LUTs (min-max when none is declared),
MONOCHROME1 is inverted, then resized keeping the aspect ratio (bicubic, antialiased).
With --image-root the MIMIC-CXR-JPG images are used instead and no DICOM is decoded.
No DICOM header element is ever copied into the shards.

The run is deterministic (same inputs and options: byte-identical shards, whatever
--workers) and resumable: run the same command again after an interruption; finished shards
are verified and kept, the rest is written."""

MIMIC_EPILOG = """\
examples:
  tier-openclip prep mimic-cxr --mimic-root /data/mimic-cxr/2.0.0 --out /data/mimic-shards \\
      --metadata-dir /data/mimic-cxr-jpg/2.1.0
  tier-openclip prep mimic-cxr --mimic-root /data/mimic-cxr/2.0.0 \\
      --image-root /data/mimic-cxr-jpg/2.1.0 --out /data/mimic-shards --text findings+impression
then train with
  python -m open_clip_train.main --loss tier \\
      --train-data '/data/mimic-shards/train/train-{000000..000NNN}.tar' --dataset-type webdataset ...
(manifest.json's splits.<split>.urls gives the exact pattern, relative to --out)"""


EVAL_FORMAT = """\
Output, read by the zero-shot evaluator:
  OUT/images/...png  8-bit grayscale PNGs, preprocessed like the training images
  OUT/labels.csv     column image (path relative to OUT), then one column per label:
                     1 positive, 0 negative, blank unknown/uncertain (dropped per label)
  OUT/meta.json      dataset, labels (in column order), competition labels, counts per
                     label, skipped/failed counts per reason, preprocessing, options
  OUT/failures.csv   every skipped or failed image with its reason"""

CHEXPERT_DESCRIPTION = f"""\
CheXpert (valid.csv, or the test-set CSV) as a zero-shot evaluation set: the 14 labels
(1.0 -> 1, 0.0 -> 0, -1.0 uncertain and blank -> blank); meta.json also names the 5
competition labels (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion).
Frontal images only (Frontal/Lateral column) unless --all-views.

{EVAL_FORMAT}"""

PADCHEST_DESCRIPTION = f"""\
PadChest's physician-labelled images (MethodLabel == Physician) as a zero-shot evaluation
set. Labels come from the Labels column (a Python-list-like string), stripped and
lower-cased; one 1/0 column per label found ('normal' included). Images labelled 'exclude'
are skipped. The 16-bit PNGs are scaled min-max to 8 bits, then resized like the training
images; they are written as OUT/images/<ImageDir>/<ImageID>.

{EVAL_FORMAT}"""


def add_prep_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prep`` and its subcommands to ``subparsers`` (from ``add_subparsers``)."""
    prep = subparsers.add_parser("prep", help=PREP_HELP, description=PREP_DESCRIPTION)
    populate_prep_parser(prep)


PREP_HELP = "prepare data: MIMIC-CXR training shards, CheXpert and PadChest evaluation sets"
PREP_DESCRIPTION = (
    "Prepare data: MIMIC-CXR as WebDataset shards for open_clip training; CheXpert and PadChest as "
    "evaluation sets for the zero-shot evaluator (labels.csv + images/ + meta.json)."
)


def populate_prep_parser(prep: argparse.ArgumentParser) -> None:
    """Add the ``mimic-cxr``, ``chexpert`` and ``padchest`` subcommands to ``prep``."""
    commands = prep.add_subparsers(dest="prep_command", metavar="DATASET", required=True)

    mimic = commands.add_parser("mimic-cxr", help="MIMIC-CXR (DICOM or JPG release) -> WebDataset shards",
                                description=MIMIC_DESCRIPTION, epilog=MIMIC_EPILOG, formatter_class=_Formatter)
    mimic.add_argument("--mimic-root", type=Path, required=True, metavar="DIR",
                       help="MIMIC-CXR 2.0.0 release: files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.dcm and the reports "
                       "(files/.../sXXXXXXXX.txt or mimic-cxr-reports.zip)")
    mimic.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created; a rerun resumes)")
    mimic.add_argument("--image-root", type=Path, metavar="DIR",
                       help="MIMIC-CXR-JPG release: use its JPEGs instead of decoding DICOMs")
    mimic.add_argument("--metadata-dir", type=Path, metavar="DIR",
                       help="folder with mimic-cxr-2.0.0-{split,metadata,chexpert}.csv.gz "
                       "(default: --image-root if given, then --mimic-root)")
    mimic.add_argument("--text", choices=TEXT_MODES, default="impression",
                       help="report text to train on; impression-or-findings falls back to the findings when a "
                       "report has no impression. Studies without it are skipped (reason in failures.csv)")
    mimic.add_argument("--views", type=_csv_list, default=("PA", "AP"), metavar="LIST",
                       help="ViewPosition values to keep, comma-separated (metadata CSV), or 'all'")
    mimic.add_argument("--splits", type=_csv_list, default=MIMIC_SPLITS, metavar="LIST",
                       help="splits to write, comma-separated, of " + ",".join(MIMIC_SPLITS))
    mimic.add_argument("--format", dest="image_format", choices=("jpg", "png"), default="jpg",
                       help="image encoding in the shards")
    mimic.add_argument("--jpeg-quality", type=_positive, default=95, metavar="Q", help="JPEG quality (1-100)")
    mimic.add_argument("--shard-size", type=_positive, default=1000, metavar="N",
                       help="planned samples per shard (a shard holds fewer when some fail)")
    _add_image_options(mimic)
    mimic.set_defaults(func=run_mimic)

    chexpert = commands.add_parser(
        "chexpert", help="CheXpert valid/test CSV + images -> evaluation set", formatter_class=_Formatter,
        description=CHEXPERT_DESCRIPTION,
    )
    chexpert.add_argument("--csv", type=Path, required=True, metavar="FILE",
                          help="CheXpert CSV (columns Path, Sex, Age, Frontal/Lateral, AP/PA, the 14 labels)")
    chexpert.add_argument("--image-root", type=Path, required=True, metavar="DIR",
                          help="folder the CSV's Path column is relative to (the one holding CheXpert-v1.0/, "
                          "or CheXpert-v1.0/ itself)")
    chexpert.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    chexpert.add_argument("--all-views", action="store_true", help="keep lateral images too")
    _add_image_options(chexpert)
    chexpert.set_defaults(func=run_chexpert)

    padchest = commands.add_parser(
        "padchest", help="PadChest CSV + 16-bit PNGs -> evaluation set", formatter_class=_Formatter,
        description=PADCHEST_DESCRIPTION,
    )
    padchest.add_argument("--csv", type=Path, required=True, metavar="FILE",
                          help="PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv(.gz) as published")
    padchest.add_argument("--image-root", type=Path, required=True, metavar="DIR",
                          help="folder holding the ImageDir subfolders (0, 1, ... 54)")
    padchest.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    padchest.add_argument("--projections", type=_csv_list, default=("PA", "AP", "AP_horizontal"), metavar="LIST",
                          help="Projection values to keep, comma-separated, or 'all' (L is lateral)")
    padchest.add_argument("--min-positives", type=_positive, default=1, metavar="N",
                          help="label columns only for labels with at least N positive images")
    _add_image_options(padchest)
    padchest.set_defaults(func=run_padchest)


def _all_or(values: tuple[str, ...]) -> tuple[str, ...] | None:
    return None if any(v.lower() == "all" for v in values) else values


def _report_errors(function):
    def run(args: argparse.Namespace) -> int:
        try:
            return function(args)
        except PrepError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: run the same command again to resume", file=sys.stderr)
            return 130
        except OSError as error:  # disk full, permissions, a vanished mount: not a bug of ours
            print(f"error: {error}. Fix it and run the same command again: finished work is kept.", file=sys.stderr)
            return 1

    run.__name__ = function.__name__
    run.__doc__ = function.__doc__
    return run


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@_report_errors
def run_mimic(args: argparse.Namespace) -> int:
    """``prep mimic-cxr``."""
    from .mimic import MimicOptions, prepare_mimic

    options = MimicOptions(
        mimic_root=args.mimic_root, out=args.out, image_root=args.image_root, metadata_dir=args.metadata_dir,
        text=args.text, views=_all_or(args.views), splits=tuple(args.splits), image_size=args.image_size,
        resize=args.resize, image_format=args.image_format, jpeg_quality=args.jpeg_quality,
        shard_size=args.shard_size, workers=args.workers, sample_timeout=args.sample_timeout,
    )  # fmt: skip
    manifest = prepare_mimic(options, progress=not args.quiet, log=_log)
    for split, info in manifest["splits"].items():
        problems = sum(info["skipped"].values()) + sum(info["failed"].values())
        _log(f"{split}: {info['written']} samples in {info['shards']} shard(s) ({info['urls'] or 'none'}); "
             f"{sum(info['filtered'].values())} filtered, {problems} skipped or failed")  # fmt: skip
    _log(f"manifest: {args.out / 'manifest.json'}; failures: {args.out / 'failures.csv'}")
    return 0


def _eval(args: argparse.Namespace, dataset: str) -> int:
    from .eval_sets import EvalOptions, prepare_eval_set

    options = EvalOptions(
        dataset=dataset, csv=args.csv, image_root=args.image_root, out=args.out, image_size=args.image_size,
        resize=args.resize, workers=args.workers, frontal_only=not getattr(args, "all_views", False),
        projections=_all_or(getattr(args, "projections", ("all",))), min_positives=getattr(args, "min_positives", 1),
        sample_timeout=args.sample_timeout,
    )  # fmt: skip
    meta = prepare_eval_set(options, progress=not args.quiet, log=_log)
    _log(f"{dataset}: {meta['images']} images, {len(meta['labels'])} labels -> {args.out / 'labels.csv'}; "
         f"skipped {sum(meta['skipped'].values())}, failed {sum(meta['failed'].values())}")  # fmt: skip
    return 0


@_report_errors
def run_chexpert(args: argparse.Namespace) -> int:
    """``prep chexpert``."""
    return _eval(args, "chexpert")


@_report_errors
def run_padchest(args: argparse.Namespace) -> int:
    """``prep padchest``."""
    return _eval(args, "padchest")


def build_parser() -> argparse.ArgumentParser:
    """The ``prep`` command as a program of its own (``python -m tier_openclip.data_prep``)."""
    parser = argparse.ArgumentParser(prog="python -m tier_openclip.data_prep", description=PREP_DESCRIPTION)
    populate_prep_parser(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m tier_openclip.data_prep mimic-cxr ...`` (= ``tier-openclip prep mimic-cxr
    ...``); returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)

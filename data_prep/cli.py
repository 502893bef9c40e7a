"""``tier-openclip prep``: MIMIC-CXR shards for training, CheXpert and PadChest for evaluation,
MS-CXR for phrase grounding, SIIM and RSNA for segmentation.

:func:`add_prep_parser` adds the ``prep`` subcommand (with ``mimic-cxr``, ``chexpert``,
``padchest``, ``ms-cxr``, ``siim`` and ``rsna``) to the main command's subparsers; :func:`main` runs it alone
(``python -m tier_openclip.data_prep``). Heavy imports happen inside the functions that run.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tier_openclip.errors import add_list_flag, listed, print_error

from .errors import PrepError
from .limits import DEFAULT_MAX_PIXELS, IMAGE_SIZE_MAX, IMAGE_SIZE_MIN, SAMPLE_TIMEOUT_MAX, usable_cpus
from .reports import TEXT_MODES

MIMIC_SPLITS = ("train", "validate", "test")
# the list flags' defaults (lists are words after the flag, as in every tier-openclip command: tier_openclip.errors)
MIMIC_VIEWS = ("PA", "AP")
PADCHEST_PROJECTIONS = ("PA", "AP", "AP_horizontal")
MS_CXR_SPLITS = ("all",)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _image_size(value: str) -> int:
    number = int(value)
    if not IMAGE_SIZE_MIN <= number <= IMAGE_SIZE_MAX:
        raise argparse.ArgumentTypeError(f"must be between {IMAGE_SIZE_MIN} and {IMAGE_SIZE_MAX}, got {number}")
    return number


def _seconds(value: str) -> float:
    number = float(value)  # "inf" and "nan" parse: refused below (a wait of inf overflows)
    if not (math.isfinite(number) and 0 < number <= SAMPLE_TIMEOUT_MAX):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 and at most {SAMPLE_TIMEOUT_MAX:g}, got {value}")
    return number


def _megapixels(value: str) -> int:
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of megapixels, got {value}")
    return max(1, round(number * 1e6))


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; each optional argument's help ends with its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "(default" in text:
            return text
        default = ",".join(action.default) if isinstance(action.default, tuple) else str(action.default)
        return f"{text} (default: {default.replace('%', '%%')})"


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("images")
    group.add_argument("--image-size", type=_image_size, default=512, metavar="PIXELS",
                       help=f"side of the square output images, {IMAGE_SIZE_MIN} to {IMAGE_SIZE_MAX}")
    group.add_argument("--resize", choices=("pad", "crop"), default="pad",
                       help="pad: long side to --image-size, short side padded with black (CheXzero; "
                       "keeps the whole film); crop: short side to --image-size, long side centre-cropped (BioViL)")
    group.add_argument("--workers", type=_positive, default=usable_cpus(), metavar="N",
                       help="worker processes; the default is the number of CPUs this process may use, here")
    group.add_argument("--sample-timeout", type=_seconds, default=600.0, metavar="SECONDS",
                       help="a sample whose worker gives no result for this long (a worker killed by a crash in "
                       "a native decoder, or hung) fails with reason worker_crashed and the run goes on")
    group.add_argument("--max-megapixels", dest="max_pixels", type=_megapixels, default=DEFAULT_MAX_PIXELS, metavar="MP",
                       help="an image whose header declares more than this many megapixels (rows x columns x frames "
                       f"x samples per pixel) fails with reason image_too_large before it is decoded "
                       f"(default: {DEFAULT_MAX_PIXELS / 1e6:g})")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


MIMIC_DESCRIPTION = """\
Turn MIMIC-CXR into WebDataset shards for open_clip:
OUT/<split>/<split>-000000.tar ... with, per sample, __key__ = dicom_id (made safe: see
data_prep/README.md), an 8-bit grayscale
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
CheXpert (valid.csv, or the test set's test_labels.csv released with CheXlocalize) as a
zero-shot evaluation set: the 14 labels (1.0 -> 1, 0.0 -> 0, -1.0 uncertain and blank ->
blank); meta.json also names the 5 competition labels (Atelectasis, Cardiomegaly,
Consolidation, Edema, Pleural Effusion) and the split (valid, test). Tune on valid, report on
test. Frontal images only (Frontal/Lateral column, or the file name where the CSV has none)
unless --all-views.

{EVAL_FORMAT}"""

PADCHEST_DESCRIPTION = f"""\
PadChest's physician-labelled images (MethodLabel == Physician) as a zero-shot evaluation
set. Labels come from the Labels column (a Python-list-like string), stripped and
lower-cased; one 1/0 column per label found ('normal' included). Images labelled 'exclude'
are skipped. The 16-bit PNGs are scaled min-max to 8 bits, then resized like the training
images; they are written as OUT/images/<ImageDir>/<ImageID>.

{EVAL_FORMAT}"""

MS_CXR_DESCRIPTION = """\
MS-CXR (MS_CXR_Local_Alignment_v1.1.0.csv: phrase-box pairs on MIMIC-CXR-JPG images) as a
phrase-grounding set for `tier-openclip eval grounding`. Images are resized like the
training images; every box (x, y, w, h in the original JPG's pixels) is carried through the
same resize and pad/crop. Rows with the same image and label_text are one phrase with
several boxes.

Output:
  OUT/images/<dicom_id>.png  8-bit grayscale PNGs (ids made safe: see data_prep/ms_cxr.py)
  OUT/boxes.csv      image,finding,phrase,x0,y0,x1,y1: finding = category_name, phrase =
                     label_text, the box in pixels of the PNG (half-open)
  OUT/meta.json      format, dataset, labels, image_size, box_format, phrases and boxes
                     per finding, skipped/failed/dropped counts per reason, options
  OUT/sources.csv    image, dicom_id, path of each PNG
  OUT/failures.csv   every skipped or failed row, and every dropped box, with its reason"""


def add_prep_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prep`` and its subcommands to ``subparsers`` (from ``add_subparsers``)."""
    prep = subparsers.add_parser("prep", help=PREP_HELP, description=PREP_DESCRIPTION)
    populate_prep_parser(prep)


PREP_HELP = ("prepare data: MIMIC-CXR training shards, CheXpert and PadChest evaluation sets, MS-CXR grounding set, "
             "SIIM and RSNA segmentation sets")
PREP_DESCRIPTION = (
    "Prepare data: MIMIC-CXR as WebDataset shards for open_clip training; CheXpert and PadChest as "
    "evaluation sets for the zero-shot evaluator (labels.csv + images/ + meta.json); MS-CXR as a "
    "phrase-grounding set (boxes.csv + images/ + meta.json); SIIM-ACR pneumothorax and RSNA pneumonia as "
    "segmentation sets (images/ + masks/ + splits.csv + meta.json)."
)


def populate_prep_parser(prep: argparse.ArgumentParser) -> None:
    """Add the ``mimic-cxr``, ``chexpert``, ``padchest``, ``ms-cxr``, ``siim`` and ``rsna`` subcommands to ``prep``."""
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
    add_list_flag(mimic, "--views", "VALUE", f"ViewPosition values to keep (metadata CSV), or 'all' (default: {' '.join(MIMIC_VIEWS)})",
                  words=True)
    add_list_flag(mimic, "--splits", "VALUE", f"splits to write, of {' '.join(MIMIC_SPLITS)} (default: {' '.join(MIMIC_SPLITS)})",
                  words=True)
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
                          help="CheXpert CSV: valid.csv (columns Path, Sex, Age, Frontal/Lateral, AP/PA, the 14 "
                          "labels) or the test set's test_labels.csv (Path, the 14 labels; released with "
                          "CheXlocalize)")
    chexpert.add_argument("--image-root", type=Path, required=True, metavar="DIR",
                          help="folder the CSV's Path column is relative to (the one holding CheXpert-v1.0/, "
                          "or CheXpert-v1.0/ itself; for test_labels.csv, CheXlocalize's CheXpert/ folder)")
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
    add_list_flag(padchest, "--projections", "VALUE",
                  f"Projection values to keep, or 'all' (L is lateral) (default: {' '.join(PADCHEST_PROJECTIONS)})", words=True)
    padchest.add_argument("--min-positives", type=_positive, default=1, metavar="N",
                          help="label columns only for labels with at least N positive images")
    _add_image_options(padchest)
    padchest.set_defaults(func=run_padchest)

    ms_cxr = commands.add_parser(
        "ms-cxr", help="MS-CXR phrase-box CSV + MIMIC-CXR-JPG -> grounding set", formatter_class=_Formatter,
        description=MS_CXR_DESCRIPTION,
    )
    ms_cxr.add_argument("--csv", type=Path, required=True, metavar="FILE",
                        help="MS_CXR_Local_Alignment_v1.1.0.csv as published (PhysioNet ms-cxr)")
    ms_cxr.add_argument("--image-root", type=Path, required=True, metavar="DIR",
                        help="MIMIC-CXR-JPG root: the folder the CSV's path column (files/pXX/...) is relative to")
    ms_cxr.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    add_list_flag(ms_cxr, "--splits", "VALUE", "values of the CSV's split column to keep (train val test), or 'all' "
                  f"(default: {' '.join(MS_CXR_SPLITS)})", words=True)
    _add_image_options(ms_cxr)
    ms_cxr.set_defaults(func=run_ms_cxr)

    siim = commands.add_parser(
        "siim", help="SIIM-ACR pneumothorax DICOMs + train-rle.csv -> segmentation set", formatter_class=_Formatter,
        description=SIIM_DESCRIPTION,
    )
    siim.add_argument("--rle-csv", type=Path, required=True, metavar="FILE",
                      help="train-rle.csv as published (ImageId, EncodedPixels)")
    siim.add_argument("--image-root", type=Path, required=True, metavar="DIR",
                      help="folder holding the <ImageId>.dcm files, at any depth (dicom-images-train)")
    _add_segmentation_options(siim, "ImageId")
    siim.set_defaults(func=run_siim)

    rsna = commands.add_parser(
        "rsna", help="RSNA pneumonia DICOMs + stage_2_train_labels.csv -> segmentation set (boxes as masks)",
        formatter_class=_Formatter, description=RSNA_DESCRIPTION,
    )
    rsna.add_argument("--csv", type=Path, required=True, metavar="FILE",
                      help="stage_2_train_labels.csv as published (patientId,x,y,width,height,Target)")
    rsna.add_argument("--image-root", type=Path, required=True, metavar="DIR",
                      help="stage_2_train_images: the folder holding <patientId>.dcm")
    _add_segmentation_options(rsna, "patientId")
    rsna.set_defaults(func=run_rsna)


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (three of them: train val test), got {value!r}") from None
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"expected a share >= 0, got {value!r}")
    return number


def _check_fractions(fractions: tuple[float, ...]) -> tuple[float, float, float]:
    if abs(sum(fractions) - 1) > 1e-6:
        raise PrepError(f"--split-fractions {' '.join(f'{f:g}' for f in fractions)}: the three shares must sum to 1")
    return fractions  # type: ignore[return-value]


def _add_segmentation_options(parser: argparse.ArgumentParser, id_column: str) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    group = parser.add_argument_group("splits")
    group.add_argument("--splits", type=Path, default=None, metavar="FILE",
                       help=f"a published split: CSV with columns {id_column} and split (train/val/test; valid, "
                       "validation, validate also read); images it does not list are skipped. Default: a seeded "
                       "split by patient")
    group.add_argument("--seed", type=int, default=0, help="seed of the split by patient")
    group.add_argument("--split-fractions", type=_fraction, nargs=3, default=(0.7, 0.1, 0.2),
                       metavar=("TRAIN", "VAL", "TEST"),
                       help="shares of the patients in train, val and test, summing to 1 (default: 0.7 0.1 0.2)")
    _add_image_options(parser)


SEG_FORMAT_TEXT = """\
Output, read by `tier-openclip eval segmentation` (layout: data_prep/seg_sets.py):
  OUT/images/<key>.png  8-bit grayscale PNGs, preprocessed like the training images
  OUT/masks/<key>.png   the target mask, same size: 0 background, 255 target; carried through
                        the image's resize and pad/crop
  OUT/splits.csv        image,mask,split,id (train/val/test; id = the dataset's own id)
  OUT/meta.json         format, dataset, target, image_size, images and positives per split,
                        how the split was made, skipped/failed counts per reason, options
  OUT/failures.csv      every skipped or failed image with its reason
Splits: --splits FILE (a published split), else a seeded split by patient (--seed,
--split-fractions), so no patient is in two splits."""

SIIM_DESCRIPTION = f"""\
SIIM-ACR Pneumothorax (train-rle.csv + DICOMs) as a segmentation set. The run-length code is
column-major with relative starts and "-1" for no pneumothorax (data_prep/rle.py); rows of
one ImageId are united. DICOMs are windowed as for MIMIC-CXR; the seeded split groups images
by the DICOM's PatientID (never written).

{SEG_FORMAT_TEXT}"""

RSNA_DESCRIPTION = f"""\
RSNA Pneumonia Detection (stage_2_train_labels.csv + DICOMs) as a segmentation set: each
patient's opacity boxes (x, y, width, height in the DICOM's pixels) carried through the
image's resize and pad/crop and drawn as its mask; Target 0 patients have an empty mask.

{SEG_FORMAT_TEXT}"""


def _all_or(values: list[str]) -> tuple[str, ...] | None:
    return None if any(v.lower() == "all" for v in values) else tuple(values)


def _report_errors(function):
    """Errors reach the person in every command's one form, ``tier-openclip prep: message``
    (tier_openclip.errors.print_error), here rather than in cli.main, so that ``python -m
    tier_openclip.data_prep`` and the resume hints read the same."""
    def run(args: argparse.Namespace) -> int:
        try:
            return function(args)
        except PrepError as error:
            print_error(error, "prep")
            return 2
        except KeyboardInterrupt:
            print_error("interrupted: run the same command again to resume", "prep")
            return 130
        except OSError as error:  # disk full, permissions, a vanished mount: not a bug of ours
            print_error(f"{error}. Fix it and run the same command again: finished work is kept.", "prep")
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
        text=args.text, views=_all_or(listed("--views", args.views, MIMIC_VIEWS)),
        splits=tuple(listed("--splits", args.splits, MIMIC_SPLITS)), image_size=args.image_size,
        resize=args.resize, image_format=args.image_format, jpeg_quality=args.jpeg_quality,
        shard_size=args.shard_size, workers=args.workers, sample_timeout=args.sample_timeout,
        max_pixels=args.max_pixels,
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
        projections=_all_or(listed("--projections", args.projections, PADCHEST_PROJECTIONS) if dataset == "padchest" else ("all",)), min_positives=getattr(args, "min_positives", 1),
        sample_timeout=args.sample_timeout, max_pixels=args.max_pixels,
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


@_report_errors
def run_ms_cxr(args: argparse.Namespace) -> int:
    """``prep ms-cxr``."""
    from .ms_cxr import MsCxrOptions, prepare_ms_cxr

    options = MsCxrOptions(
        csv=args.csv, image_root=args.image_root, out=args.out, image_size=args.image_size, resize=args.resize,
        splits=_all_or(listed("--splits", args.splits, MS_CXR_SPLITS)), workers=args.workers, sample_timeout=args.sample_timeout,
        max_pixels=args.max_pixels,
    )  # fmt: skip
    meta = prepare_ms_cxr(options, progress=not args.quiet, log=_log)
    _log(f"ms-cxr: {meta['phrases']} phrases, {meta['boxes']} boxes on {meta['images']} images, "
         f"{len(meta['labels'])} findings -> {args.out / 'boxes.csv'}; skipped {sum(meta['skipped'].values())} rows, "
         f"failed {sum(meta['failed'].values())} images, dropped {sum(meta['dropped_boxes'].values())} boxes")
    return 0


def _segmentation(args: argparse.Namespace, prepare, csv_path: Path) -> int:
    from .seg_sets import SegPrepOptions

    options = SegPrepOptions(
        out=args.out, image_size=args.image_size, resize=args.resize, workers=args.workers,
        sample_timeout=args.sample_timeout, max_pixels=args.max_pixels, splits=args.splits, seed=args.seed,
        fractions=_check_fractions(tuple(args.split_fractions)),
    )  # fmt: skip
    meta = prepare(csv_path, args.image_root, options, progress=not args.quiet, log=_log)
    splits = ", ".join(f"{split} {n} ({meta['positives'][split]} with {meta['target']})" for split, n in meta["splits"].items())
    _log(f"{meta['dataset']}: {splits} -> {args.out / 'splits.csv'}; skipped {sum(meta['skipped'].values())}, "
         f"failed {sum(meta['failed'].values())}")
    return 0


@_report_errors
def run_siim(args: argparse.Namespace) -> int:
    """``prep siim``."""
    from .siim import prepare_siim

    return _segmentation(args, prepare_siim, args.rle_csv)


@_report_errors
def run_rsna(args: argparse.Namespace) -> int:
    """``prep rsna``."""
    from .rsna import prepare_rsna

    return _segmentation(args, prepare_rsna, args.csv)


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

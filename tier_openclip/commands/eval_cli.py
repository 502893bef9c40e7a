"""`tier-openclip eval zeroshot|paper-table|grounding|segmentation`: the eval command, its
zero-shot task, and the paper-layout table made from zero-shot results.

The grounding and segmentation tasks add their own parsers (tier_openclip/evaluation/grounding/evaluator.py,
tier_openclip/evaluation/segmentation/cli.py); all three evaluations run through cli_common.run_evaluation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tier_openclip.cli_common import (add_model_flags, add_run_flags, check_run_flags, model_inputs,
                                      refuse_overwriting_inputs, results_file, run_evaluation)
from tier_openclip.errors import CommandError, UsageError, add_list_flag, input_file, output_file
from tier_openclip.evaluation.grounding.evaluator import add_grounding_parser
from tier_openclip.evaluation.prompts import is_named_prompt_set, resolve_prompts
from tier_openclip.evaluation.segmentation import add_segmentation_parser
from tier_openclip.evaluation.zeroshot import (DATASETS, paper_table_markdown, read_eval_set, results_markdown,
                                               zeroshot_evaluate)
from tier_openclip.models import check_pretrained


def add_eval_parser(subparsers: Any) -> None:
    """`tier-openclip eval zeroshot ...`, `tier-openclip eval grounding ...` and `tier-openclip eval segmentation ...`"""
    parser = subparsers.add_parser("eval", help="Evaluate a model (zero-shot classification, phrase grounding, "
                                                "linear-probe segmentation).",
                                   description="Evaluate a trained model.")
    tasks = parser.add_subparsers(dest="eval_task", metavar="TASK", required=True)
    zs = tasks.add_parser(
        "zeroshot",
        help="Zero-shot AUC per label on CheXpert or PadChest (CheXzero protocol), with bootstrap CIs.",
        description="Zero-shot classification by the CheXzero protocol: per label, the image's similarity "
                    "to a positive minus that to a negative prompt ('{label}' vs 'no {label}' by default; "
                    "the order of CheXzero's softmax over the two, computed exactly), ROC AUC per label with bootstrap confidence intervals, and mean AUC (CheXpert: over the "
                    "5 competition labels and over all labels). Prints a markdown table; --out also writes "
                    "JSON and the table next to it (results.md).",
    )
    add_model_flags(zs)
    zs.add_argument("--dataset", required=True, choices=DATASETS,
                    help="Which evaluation set --data holds (checked against its meta.json).")
    zs.add_argument("--data", required=True, metavar="DIR",
                    help="Evaluation set from `tier-openclip prep chexpert|padchest` (labels.csv + meta.json).")
    add_list_flag(zs, "--labels", "LABEL", default=None,
                  help="Evaluate only these labels (quote names with spaces). Default: all labels of the set.")
    zs.add_argument("--prompts", default=None, metavar="FILE|authors",
                    help='JSON prompt file {label: {"positive": [...], "negative": [...]}}; each list is an '
                         "ensemble; an empty negative list scores by the positive prompts alone. Labels it "
                         "does not name use '{label}' vs 'no {label}' (CheXzero's, the "
                         "default). 'authors': the TIER authors' protocol (CheXpert's 5 labels with their "
                         "sentence sets, PadChest's 57 findings; tier_openclip/evaluation/authors_protocol.py).")
    zs.add_argument("--out", default=None, metavar="FILE.json",
                    help="Write results JSON here, and the markdown table next to it (same name, .md).")
    zs.add_argument("--confidence", type=float, default=0.95, help="Confidence level of the intervals (default 0.95).")
    zs.add_argument("--min-positives", type=int, default=None, metavar="N",
                    help="Skip labels with fewer positive images. Default: 10 for PadChest, 1 for CheXpert.")
    add_run_flags(zs, resampled="the images", seeded="the bootstrap resampling", batch_size=64, quiet=False)  # it draws no progress bar
    zs.set_defaults(func=run_zeroshot)
    table = tasks.add_parser(
        "paper-table",
        help="The TIER paper's zero-shot table (CheXpert's 5 AUCs + mean, PadChest's 57-finding mean) "
             "from `eval zeroshot --out` results.",
        description="One row per model from the JSON files `tier-openclip eval zeroshot --out` wrote: "
                    "the 5 CheXpert labels (authors' order), their mean, the mean over the TIER paper's 57 "
                    "PadChest findings, and a chance row. Prints the markdown table; --out writes it.",
    )
    table.add_argument("--row", nargs="+", action="append", required=True, metavar=("NAME", "RESULTS.json"),
                       help="A row: its name, then its CheXpert and/or PadChest results JSON (either order). "
                            "Repeat for more rows.")
    table.add_argument("--out", default=None, metavar="FILE.md", help="Also write the table here.")
    table.set_defaults(func=run_paper_table)
    add_grounding_parser(tasks)
    add_segmentation_parser(tasks)


def run_zeroshot(args: argparse.Namespace) -> int:
    # Everything the command line alone can show wrong is checked before the model loads.
    check_run_flags(args)
    if not 0 < args.confidence < 1:
        raise UsageError(f"--confidence {args.confidence}: must be in (0, 1), e.g. 0.95")
    data = Path(args.data)
    if not data.is_dir():
        raise UsageError(f"--data {data}: no such folder")
    if not (data / "labels.csv").is_file():
        raise UsageError(f"--data {data} is not an evaluation set (no labels.csv): make one with "
                         "`tier-openclip prep chexpert|padchest`")
    if args.prompts and not is_named_prompt_set(args.prompts):
        input_file(args.prompts, "--prompts")
    out = results_file(args.out, [("--data", data), ("--prompts", args.prompts), *model_inputs(args)])
    check_pretrained(args.model, args.pretrained, weights_required=True)
    try:
        eval_set = read_eval_set(data)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if eval_set.dataset and eval_set.dataset != args.dataset:
        raise UsageError(f"--data {data} holds a {eval_set.dataset} set, not {args.dataset}; pass --dataset {eval_set.dataset}")
    known = {label.lower() for label in eval_set.labels}
    unknown = [label for label in args.labels or () if label.lower() not in known]
    if unknown:
        raise UsageError(f"--labels {unknown} are not labels of {data}; it has: {', '.join(eval_set.labels)}")
    try:  # resolved once here (a named set by --dataset where meta.json names none), passed on resolved
        prompts = resolve_prompts(eval_set.labels, args.prompts, eval_set.dataset or args.dataset)
    except (OSError, ValueError) as exc:
        raise CommandError(f"--prompts {args.prompts}: {exc}") from None

    def evaluate(loaded, device: str) -> dict:
        results = zeroshot_evaluate(
            loaded.model, loaded.preprocess, loaded.tokenizer, data, labels=args.labels, prompts=prompts,
            bootstrap=args.bootstrap, seed=args.seed, batch_size=args.batch_size, device=device,
            min_positives=args.min_positives, confidence=args.confidence, num_workers=args.workers,
        )
        return {**results, "dataset": results["dataset"] or args.dataset}

    settings = {"prompts_set" if is_named_prompt_set(args.prompts) else "prompts_file": args.prompts}
    return run_evaluation(args, evaluate, results_markdown, out, settings=settings)


def run_paper_table(args: argparse.Namespace) -> int:
    out = output_file(args.out, "--out", example="table.md") if args.out else None
    if out is not None:  # the table must never replace one of the results files it reads
        refuse_overwriting_inputs([("--out", out)], [("--row", name) for row in args.row for name in row[1:]])
    rows = []
    for row in args.row:
        if not 2 <= len(row) <= 3:
            raise UsageError(f"--row {' '.join(row)}: give a name and one or two results files "
                             "(CheXpert and/or PadChest), e.g. --row TIER chexpert.json padchest.json")
        results = []
        for name in row[1:]:
            path = input_file(name, "--row")
            try:
                result = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CommandError(f"--row {path} is not JSON ({exc}); pass the file `eval zeroshot --out` wrote") from None
            if not isinstance(result, dict) or not {"labels", "means", "num_images"} <= set(result):
                raise CommandError(f"--row {path} is not `tier-openclip eval zeroshot` results (no labels, means, "
                                   "num_images); pass the JSON its --out wrote")
            results.append(result)
        rows.append((row[0], results))
    try:
        markdown = paper_table_markdown(rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise CommandError(f"--row: {exc}") from None
    print(markdown, end="")
    if out is not None:
        out.write_text(markdown, encoding="utf-8")
        print(f"\nWrote {out}")
    return 0

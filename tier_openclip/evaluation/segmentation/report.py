"""Markdown of the segmentation results, baselines beside the probe."""

from __future__ import annotations

from typing import Any

from tier_openclip.evaluation.segmentation.metrics import METRICS


def _cell(entry: dict[str, Any]) -> str:
    text = f"{entry['value']:.3f}"
    if entry.get("sd") is not None:
        text += f" ± {entry['sd']:.3f}"
    if entry.get("ci"):
        text += f" ({entry['ci'][0]:.3f}–{entry['ci'][1]:.3f})"
    return text


def segmentation_markdown(results: dict[str, Any]) -> str:
    """Markdown table of segmentation_evaluate's (or probe_evaluate's) results, baselines beside the probe."""
    percent = round(100 * results.get("confidence", 0.95))
    name = results.get("dataset") or "segmentation set"
    target = f" ({results['target']})" if results.get("target") else ""
    seeds = results["seeds"]
    lines = [f"### Linear-probe segmentation, {name}{target}", "",
             f"{results['num_test_images']} test images ({results['test_positive_images']} with target); head trained on "
             f"{results['label_fraction']:g} of {results['num_train_images']} training images, {seeds} seed(s) "
             f"({results['probe_config']['loss']}, {results['probe_config']['epochs']} epochs). "
             f"Mean{' ± sd over seeds' if seeds > 1 else ''} ({percent}% bootstrap interval over test images).", "",
             "| | Dice | IoU | mIoU |", "|:--|--:|--:|--:|"]
    rows = [("Linear probe (frozen encoder)", results["probe"]),
            ("Prior (mean training mask, thresholded)", results["baselines"]["prior"]),
            ("Empty head (all background)", results["baselines"]["empty"])]
    for label, entry in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(entry[m]) for m in METRICS) + " |")
    return "\n".join(lines) + "\n"

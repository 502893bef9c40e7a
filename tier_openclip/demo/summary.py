"""The demo's numbers, as pure functions of its evaluation results: per-arm means and TIER's
effect as paired differences (arm − clip control, seed by seed).

The noise rule (stated in every report, ``NOISE_RULE``): a paired difference over n seeds is an
effect only when every seed's difference has the same sign and |mean| ≥ 2·sd/√n (sd over seeds,
n − 1 in the denominator; 2·sd/√n is about the half-width of a 95% interval of the mean).
Otherwise it is "within noise". With one seed nothing can be told from noise.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

# metric -> its label in reports
METRICS: dict[str, str] = {
    "auc": "zero-shot AUC (mean over findings)",
    "cnr": "grounding CNR (token maps)",
    "pointing_game": "pointing game (token maps)",
    "miou": "grounding mIoU (token maps)",
    "cnr_pooled": "grounding CNR (pooled-phrase maps)",
    "pointing_game_pooled": "pointing game (pooled-phrase maps)",
    "miou_pooled": "grounding mIoU (pooled-phrase maps)",
    "cnr_cam": "grounding CNR (CAM maps)",
    "pointing_game_cam": "pointing game (CAM maps)",
    "miou_cam": "grounding mIoU (CAM maps)",
    "pointing_game_cam_unlocated": "pointing game (CAM maps), phrases without location words",
    "entropy_token_to_patch": "H token→patch",
    "entropy_patch_to_token": "H patch→token",
    "probe_dice": "linear-probe Dice",
    "probe_miou": "linear-probe mIoU",
    "cos_patches": "within-sample cosine: patches",
    "cos_tokens": "within-sample cosine: text tokens",
    "cos_sentences": "within-sample cosine: sentences",
}
#: the grounding metrics, each reported for every phrase map (the same model-free baselines)
GROUNDING_METRICS = ("cnr", "pointing_game", "miou")
#: metric -> the segmentation evaluator's metric of the linear probe (and of its baselines)
PROBE_METRICS = {"probe_dice": "dice", "probe_miou": "miou"}
NOISE_RULE = ("a paired difference counts as an effect only when every seed's difference has the same sign and "
              "|mean| ≥ 2·sd/√n (sd over the n seeds); otherwise it is within noise")


def metric_values(result: Mapping) -> dict[str, float]:
    """The headline numbers of one evaluated checkpoint (runs.evaluate_checkpoint's result)."""
    grounding = result["grounding"]["overall"]
    similarity = result["similarity"]
    cosines = result["local_cosine"]
    return {
        "auc": float(result["zeroshot"]["means"]["all"]["mean_auc"]),
        "cnr": float(grounding["cnr"]["value"]),
        "pointing_game": float(grounding["pointing_game"]["value"]),
        "miou": float(grounding["miou"]["value"]),
        **{f"{metric}_{maps}": float(result[f"grounding_{maps}"]["overall"][metric]["value"])
           for maps in ("pooled", "cam") for metric in GROUNDING_METRICS},
        "pointing_game_cam_unlocated": _unlocated(result["grounding_cam"]).get("pointing_game", {}).get("value", math.nan),
        "entropy_token_to_patch": float(similarity["entropy_token_to_patch"]),
        "entropy_patch_to_token": float(similarity["entropy_patch_to_token"]),
        **{metric: float(result["segmentation"]["probe"][name]["value"]) for metric, name in PROBE_METRICS.items()},
        # None (no pair with two members) as NaN, so every row has every metric
        **{f"cos_{unit}": math.nan if cosines[unit] is None else float(cosines[unit]) for unit in ("patches", "tokens",
                                                                                                   "sentences")},
    }


def _unlocated(grounding: Mapping) -> Mapping:
    """The numbers of the phrases without location words (grounding's by_location_words), or {}."""
    return grounding.get("by_location_words", {}).get("without", {})


def spread(values: Sequence[float]) -> dict:
    """{mean, sd (n − 1; 0 for one value), values}."""
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values}


def arm_summary(rows: Sequence[Mapping[str, float]]) -> dict[str, dict]:
    """metric -> spread over the seeds' rows (each a metric_values dict)."""
    return {metric: spread([row[metric] for row in rows]) for metric in rows[0]}


def verdict(differences: Sequence[float]) -> str:
    """'higher', 'lower' (the arm than the control) or 'within noise', by the noise rule above."""
    n = len(differences)
    if n < 2:
        return "within noise"
    values = np.asarray(differences, dtype=float)
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    same_sign = bool(np.all(values > 0) or np.all(values < 0))
    if not same_sign or abs(mean) < 2 * sd / math.sqrt(n):
        return "within noise"
    return "higher" if mean > 0 else "lower"


def paired_differences(arm_rows: Sequence[Mapping[str, float]], control_rows: Sequence[Mapping[str, float]]) -> dict:
    """metric -> {mean, sd, values (arm − control per seed), n, verdict}; rows aligned by seed."""
    if len(arm_rows) != len(control_rows):
        raise ValueError(f"{len(arm_rows)} arm runs but {len(control_rows)} control runs: pairs need one of each per seed")
    out = {}
    for metric in control_rows[0]:
        differences = [arm[metric] - control[metric] for arm, control in zip(arm_rows, control_rows)]
        out[metric] = {**spread(differences), "n": len(differences), "verdict": verdict(differences)}
    return out


def per_finding_auc(results: Sequence[Mapping]) -> dict[str, dict]:
    """finding -> spread of its zero-shot AUC over the seeds' results (findings with an AUC in all)."""
    labels = results[0]["zeroshot"]["labels"]
    table = {}
    for label in labels:
        values = [r["zeroshot"]["labels"].get(label, {}).get("auc") for r in results]
        if all(v is not None for v in values):
            table[label] = spread(values)
    return table


def per_finding_grounding(results: Sequence[Mapping], metric: str, maps: str = "grounding") -> dict[str, dict]:
    """finding -> spread of one grounding metric over the seeds' results; ``maps``: the result's key
    of the phrase maps ("grounding": token maps, "grounding_pooled", "grounding_cam")."""
    table = {}
    for finding in results[0][maps]["per_finding"]:
        values = [r[maps]["per_finding"].get(finding, {}).get(metric, {}).get("value") for r in results]
        if all(v is not None for v in values):
            table[finding] = spread(values)
    return table


def segmentation_baselines(result: Mapping) -> dict:
    """The linear probe's model-free baselines on the segmentation set (the same for every run):
    the empty head and the image-free prior mask, as {name: {probe metric: value}}, with the set."""
    seg = result["segmentation"]
    out: dict = {name: {metric: float(seg["baselines"][name][key]["value"]) for metric, key in PROBE_METRICS.items()}
                 for name in ("empty", "prior")}
    out.update(target=seg["target"], train_images=seg["num_train_images"], test_images=seg["num_test_images"],
               test_positive_images=seg["test_positive_images"], probe_config=seg["probe_config"])
    return out


def baselines(result: Mapping) -> dict:
    """The grounding baselines (model-free, the same for every run on one set): random and prior."""
    out = {}
    for name, entry in result["grounding"]["baselines"].items():
        out[name] = {m: entry.get(m) for m in ("cnr", "pointing_game", "miou")}
        if "source" in entry:
            out[name]["source"] = entry["source"]
    # the same baselines on the phrases without location words only (their own row in reports)
    out["unlocated"] = {name: entry.get("pointing_game")
                        for name, entry in _unlocated(result["grounding"]).get("baselines", {}).items()}
    return out

"""The demo's numbers, as pure functions of its evaluation results: per-arm means over the
pre-training starts and each arm's effect as paired differences (arm − clip control, start by
start: every arm of a start fine-tunes from the same checkpoint with the same batches).

The noise rule (stated in every report, ``NOISE_RULE``): over n starts, a paired difference has a
mean, an sd (n − 1 in the denominator) and a 95% t-interval, mean ± t(0.975, n − 1)·sd/√n; an
interval that covers 0 is "within noise", otherwise the arm is "higher" or "lower" than the
control. With one start there is no interval and nothing can be told from noise.

The decision rule (``DECISION_RULE``, written into the report before the numbers) reads a TIER
arm's manipulation check (did its token→patch maps sharpen at the training scale?) and its
token-map pointing; ``PRECONDITION`` says when a start's maps are worth sharpening at all.
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
    "pointing_game_unlocated": "pointing game (token maps), phrases without location words",
    "own_lesion": "own lesion (token maps), images with two different findings",
    "cnr_pooled": "grounding CNR (pooled-phrase maps)",
    "pointing_game_pooled": "pointing game (pooled-phrase maps)",
    "miou_pooled": "grounding mIoU (pooled-phrase maps)",
    "cnr_cam": "grounding CNR (CAM maps)",
    "pointing_game_cam": "pointing game (CAM maps)",
    "miou_cam": "grounding mIoU (CAM maps)",
    "pointing_game_cam_unlocated": "pointing game (CAM maps), phrases without location words",
    "own_lesion_cam": "own lesion (CAM maps), images with two different findings",
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
NOISE_RULE = ("a paired difference (arm − clip, each start's fine-tunes from that start's checkpoint) is given as "
              "mean ± sd over the n starts with its 95% t-interval, mean ± t(0.975, n − 1)·sd/√n; an interval that "
              "covers 0 is within noise, otherwise the arm is higher or lower than the control; one start gives "
              "no interval and is within noise")
CONFIDENCE = 0.95
#: the decision rule's thresholds (issue 20 §5)
MIN_TOP1_RISE, MIN_POINTING_RISE, MAX_POINTING_NULL = 0.1, 0.05, 0.02
DECISION_RULE = (
    f"for a TIER arm against clip, paired within each start: **inert** if its maps did not move, i.e. the "
    f"manipulation check fails: the top-1 mass of the token→patch softmax at the arm's training scale rose by less "
    f"than {MIN_TOP1_RISE:g} in at least one start; otherwise **supported** if token-map "
    f"pointing rose by ≥ {MIN_POINTING_RISE:+g} with its t-interval above 0, **falsified** if the interval's upper "
    f"bound is below {MAX_POINTING_NULL:+g}, and **inconclusive** in between. The rule is read only where the "
    f"precondition held on every start; otherwise the reading is \"not tested\"")
PRECONDITION = ("before TIER is compared, each start's token maps (the maps TIER acts on) must point better than the "
                "image-free prior on the phrases without location words (in the grounding layout: every phrase), "
                "i.e. the start's token-map pointing game on them is above the prior's on the same phrases")


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
        "pointing_game_unlocated": _unlocated(result["grounding"]).get("pointing_game", {}).get("value", math.nan),
        **{f"{metric}_{maps}": float(result[f"grounding_{maps}"]["overall"][metric]["value"])
           for maps in ("pooled", "cam") for metric in GROUNDING_METRICS},
        "pointing_game_cam_unlocated": _unlocated(result["grounding_cam"]).get("pointing_game", {}).get("value", math.nan),
        "own_lesion": _own_lesion(result["grounding"]),
        "own_lesion_cam": _own_lesion(result["grounding_cam"]),
        "entropy_token_to_patch": float(similarity["entropy_token_to_patch"]),
        "entropy_patch_to_token": float(similarity["entropy_patch_to_token"]),
        **{metric: float(result["segmentation"]["probe"][name]["value"]) for metric, name in PROBE_METRICS.items()},
        # None (no pair with two members) as NaN, so every row has every metric
        **{f"cos_{unit}": math.nan if cosines[unit] is None else float(cosines[unit]) for unit in ("patches", "tokens",
                                                                                                   "sentences")},
    }


def _own_lesion(grounding: Mapping) -> float:
    """The own-lesion rate (grounding's "own_lesion"; NaN where no image has two different findings)."""
    value = grounding.get("own_lesion", {}).get("value")
    return math.nan if value is None else float(value)


def _unlocated(grounding: Mapping) -> Mapping:
    """The numbers of the phrases without location words (grounding's by_location_words), or {}."""
    return grounding.get("by_location_words", {}).get("without", {})


def spread(values: Sequence[float]) -> dict:
    """{mean, sd (n − 1; 0 for one value), values}."""
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": values}


def arm_summary(rows: Sequence[Mapping[str, float]]) -> dict[str, dict]:
    """metric -> spread over the starts' rows (each a metric_values dict)."""
    return {metric: spread([row[metric] for row in rows]) for metric in rows[0]}


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``df`` degrees of freedom: bisection on the CDF,
    which is 1/2 plus the density's integral from 0 (Simpson's rule on 4096 intervals)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 4097)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid**2 / df))
        weights = np.ones(4097)
        weights[1:-1:2], weights[2:-1:2] = 4, 2
        return 0.5 + float(density @ weights) * x / (3 * 4096)

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> list[float] | None:
    """[low, high]: mean ± t((1 + confidence)/2, n − 1)·sd/√n over ``values``; None for fewer than two."""
    n = len(values)
    if n < 2:
        return None
    array = np.asarray(values, dtype=float)
    mean, sd = float(array.mean()), float(array.std(ddof=1))
    half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return [mean - half, mean + half]


def verdict(differences: Sequence[float]) -> str:
    """'higher', 'lower' (the arm than the control) or 'within noise', by the noise rule above."""
    interval = t_interval(differences)
    if interval is None or interval[0] <= 0 <= interval[1]:
        return "within noise"
    return "higher" if interval[0] > 0 else "lower"


def paired_differences(arm_rows: Sequence[Mapping[str, float]], control_rows: Sequence[Mapping[str, float]]) -> dict:
    """metric -> {mean, sd, values (arm − control per start), n, ci (95% t-interval or None),
    verdict}; rows aligned by start (metrics missing from either side are left out)."""
    if len(arm_rows) != len(control_rows):
        raise ValueError(f"{len(arm_rows)} arm runs but {len(control_rows)} control runs: pairs need one of each per start")
    out = {}
    for metric in control_rows[0]:
        if not all(metric in row for row in arm_rows):
            continue
        differences = [arm[metric] - control[metric] for arm, control in zip(arm_rows, control_rows)]
        out[metric] = {**spread(differences), "n": len(differences), "ci": t_interval(differences),
                       "verdict": verdict(differences)}
    return out


def manipulation_passed(top1: Mapping) -> bool:
    """The manipulation check on a paired difference of top-1 mass (paired_differences' entry):
    the maps moved by at least MIN_TOP1_RISE in every start.

    Why every start and not a t-interval above 0 (the rule of the 2026-12-05 demo, changed before
    the next run): the check asks whether the arm did something in each comparison, not how large
    an effect is in a population of starts; at n = 3 the interval's t(0.975, 2) = 4.30 called the
    calibrated arm inert although its top-1 mass rose by 0.23-0.74 in every start."""
    return bool(top1["values"]) and min(top1["values"]) >= MIN_TOP1_RISE


def decide(top1: Mapping, pointing: Mapping, precondition_held: bool) -> dict:
    """The decision rule on a TIER arm's paired differences of top-1 mass (at its training scale)
    and token-map pointing: {"reading", "rule" (the rule's reading ignoring the precondition),
    "manipulation_passed"}."""
    moved = manipulation_passed(top1)
    ci = pointing["ci"]
    if not moved:
        rule = "inert"
    elif pointing["mean"] >= MIN_POINTING_RISE and ci is not None and ci[0] > 0:
        rule = "supported"
    elif ci is not None and ci[1] < MAX_POINTING_NULL:
        rule = "falsified"
    else:
        rule = "inconclusive"
    return {"reading": rule if precondition_held else "not tested", "rule": rule, "manipulation_passed": moved}


def precondition(start_result: Mapping) -> dict:
    """PRECONDITION on one start's evaluation: {"pointing" (token maps on the phrases without
    location words), "prior" (the image-free prior's on them), "phrases", "held" (None: no such
    phrases)}."""
    without = _unlocated(start_result["grounding"])
    pointing = without.get("pointing_game", {}).get("value")
    prior = without.get("baselines", {}).get("prior", {}).get("pointing_game")
    held = None if pointing is None or prior is None else bool(pointing > prior)
    return {"pointing": pointing, "prior": prior, "phrases": without.get("phrases"), "held": held}


def per_finding_auc(results: Sequence[Mapping]) -> dict[str, dict]:
    """finding -> spread of its zero-shot AUC over the starts' results (findings with an AUC in all)."""
    labels = results[0]["zeroshot"]["labels"]
    table = {}
    for label in labels:
        values = [r["zeroshot"]["labels"].get(label, {}).get("auc") for r in results]
        if all(v is not None for v in values):
            table[label] = spread(values)
    return table


def per_finding_grounding(results: Sequence[Mapping], metric: str, maps: str = "grounding") -> dict[str, dict]:
    """finding -> spread of one grounding metric over the starts' results; ``maps``: the result's key
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
    out["unlocated_phrases"] = _unlocated(result["grounding"]).get("phrases")
    # the own-lesion rate's model-free baselines (chance: the own region's share of the two)
    own = result["grounding"].get("own_lesion", {})
    out["own_lesion"] = {**own.get("baselines", {}), "phrases": own.get("phrases")}
    out["summary_excludes"] = result["grounding"].get("summary_excludes", [])
    return out

"""Check a `tier-openclip demo` run against the demo's goals (issue 10 §3).

    python benchmarks/demo_goals.py tier-demo/demo.json

Goals, for the default `tier-openclip demo` on a 2-core CPU:
- total wall time <= 10 minutes;
- CLIP's mean zero-shot AUC (the clip arm, mean over seeds) >= 0.80;
- CLIP's pointing game (mean over seeds) above the image-free prior baseline's, with CAM maps
  (the phrase's embedding against the unnormalised patch embeddings: the demo's tower averages
  them into its image feature, so the CAM is each patch's share of the score CLIP's loss trains).
  Until 2026-12-02 this goal read the pooled-phrase cosine maps, which weigh every patch alike
  whatever its length; they stay in the report (README);
- the same pointing game above the located prior's (the best guess from the phrase's location
  words without the image: "left apical pneumothorax" -> the left apex), so that a model cannot
  pass by reading the phrase alone;
- the same pointing game on the phrases without location words above those phrases' image-free
  prior: there only the image says where;
- with a local-uniformity arm (issue 13): its patch embeddings not collapsed (mean within-sample
  cosine below 0.9).
Prints one line per goal and exits 0 when all are met, 1 otherwise (2 for an unreadable file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAX_WALL_SECONDS = 600.0
MIN_CLIP_AUC = 0.80
MAX_PATCH_COSINE = 0.9  # tier_openclip.demo.collapse.COLLAPSE_LINE


def check_goals(result: dict) -> list[tuple[str, bool, str]]:
    """(goal, met, measured) for each goal, from a demo.json's content."""
    wall = result["timings"]["total_seconds"]
    clip = result["summary"]["clip"]
    auc, pointing = clip["auc"]["mean"], clip["pointing_game_cam"]["mean"]
    prior = result["baselines"]["prior"]["pointing_game"]
    located = result["baselines"].get("located_prior", {}).get("pointing_game")
    unlocated = clip.get("pointing_game_cam_unlocated", {}).get("mean", float("nan"))
    unlocated_prior = result["baselines"].get("unlocated", {}).get("prior")
    goals = [
        (f"wall time <= {MAX_WALL_SECONDS / 60:.0f} min", wall <= MAX_WALL_SECONDS, f"{wall / 60:.1f} min"),
        (f"clip mean zero-shot AUC >= {MIN_CLIP_AUC:.2f}", auc >= MIN_CLIP_AUC,
         f"{auc:.3f} ± {clip['auc']['sd']:.3f} over {len(clip['auc']['values'])} seeds"),
        ("clip pointing game (CAM maps) > image-free prior", prior is not None and pointing > prior,
         f"{pointing:.3f} vs prior {prior if prior is None else round(prior, 3)}"),
        ("clip pointing game (CAM maps) > located prior (reads the phrase's location words, not the image)",
         located is not None and pointing > located,
         f"{pointing:.3f} vs located prior {located if located is None else round(located, 3)}"),
        ("clip pointing game (CAM maps) on phrases without location words > their image-free prior",
         unlocated_prior is not None and unlocated == unlocated and unlocated > unlocated_prior,
         f"{unlocated:.3f} vs prior {unlocated_prior if unlocated_prior is None else round(unlocated_prior, 3)}"),
    ]
    if "local-uniformity" in result["summary"]:
        cosine = result["summary"]["local-uniformity"]["cos_patches"]["mean"]
        goals.append((f"local-uniformity patch cosine < {MAX_PATCH_COSINE:g} (not collapsed)",
                      cosine < MAX_PATCH_COSINE, f"{cosine:.3f}"))
    return goals


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        result = json.loads(Path(argv[0]).read_text())
        goals = check_goals(result)
    except (OSError, ValueError, KeyError) as exc:
        print(f"demo_goals: {argv[0]}: not a readable demo.json ({exc})", file=sys.stderr)
        return 2
    setup = result.get("setup", {})
    print(f"{argv[0]}: --size {setup.get('size')}, {setup.get('seeds')} seeds, on {result['machine']['cpu']} "
          f"({result['machine']['cores']} cores)")
    for goal, met, measured in goals:
        print(f"  {'PASS' if met else 'FAIL'}  {goal}: {measured}")
    return 0 if all(met for _, met, _ in goals) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

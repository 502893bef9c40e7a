"""Tabulates the FILIP trial: the pre-trained start of each `tier-openclip demo --pretrain-loss L` run.

    python summarise.py NAME CLIP_DEMO_OUT FILIP_DEMO_OUT "machine, load" > NAME.md

Reads each run's start evaluation (runs/<pretrain run>/demo-eval.json, the demo's own evaluation,
tier_openclip/demo/runs.py) and writes NAME.json beside this script and a markdown table to stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tier_openclip.demo.design import run_name
from tier_openclip.demo.summary import baselines, metric_values, per_finding_auc, per_finding_grounding, precondition

HEADLINE = ("pointing_game_unlocated", "pointing_game", "pointing_game_cam", "pointing_game_cam_unlocated",
            "own_lesion", "own_lesion_cam", "auc", "cnr", "entropy_token_to_patch")


def start_of(out: Path, loss: str) -> dict:
    result = json.loads((out / "runs" / run_name("pretrain", 0, loss) / "demo-eval.json").read_text())["result"]
    demo = json.loads((out / "demo.json").read_text())
    return {
        "setup": demo["setup"]["pretrain"],
        "precondition": precondition(result),
        "metrics": {k: metric_values(result)[k] for k in HEADLINE},
        "per_finding_auc": {f: v["mean"] for f, v in per_finding_auc([result]).items()},
        "per_finding_pointing_tokens": {f: v["mean"] for f, v in per_finding_grounding([result], "pointing_game").items()},
        "per_finding_pointing_cam": {f: v["mean"] for f, v in
                                     per_finding_grounding([result], "pointing_game", "grounding_cam").items()},
        "per_finding_pointing_prior": {f: entry.get("pointing_game") for f, entry in
                                       result["grounding"]["baselines"]["prior"].get("per_finding", {}).items()},
        "baselines": baselines(result),
        "environment": demo["environment"].get("cpu"),
        "seconds": demo["timings"]["total_seconds"],
    }


def main() -> None:
    name, clip_out, filip_out, machine = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    starts = {"clip": start_of(clip_out, "clip"), "filip": start_of(filip_out, "filip")}
    record = {"machine": machine, "commands": {loss: f"tier-openclip demo --starts 1 --pretrain-loss {loss} ..."
                                               for loss in starts}, "starts": starts}
    (Path(__file__).parent / f"{name}.json").write_text(json.dumps(record, indent=1))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print("| start 0, pre-trained with | " + " | ".join(HEADLINE) + " | precondition (prior) |")
    print("|:--|" + "--:|" * (len(HEADLINE) + 1))
    for loss, s in starts.items():
        p = s["precondition"]
        print(f"| {loss} | " + " | ".join(fmt(s["metrics"][k]) for k in HEADLINE)
              + f" | {'held' if p['held'] else 'failed'} ({fmt(p['prior'])}) |")
    print()
    findings = list(starts["clip"]["per_finding_auc"])
    print("| finding | AUC clip | AUC filip | token pointing clip | token pointing filip | CAM pointing clip | "
          "CAM pointing filip | image-free prior pointing |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for f in findings:
        row = [starts[l][k].get(f) for k in ("per_finding_auc", "per_finding_pointing_tokens", "per_finding_pointing_cam")
               for l in ("clip", "filip")]
        row.append(starts["clip"]["per_finding_pointing_prior"].get(f))
        print(f"| {f} | " + " | ".join(fmt(v) for v in row) + " |")


if __name__ == "__main__":
    main()

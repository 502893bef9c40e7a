"""The demo's evaluation process: ``python -m tier_openclip.demo.worker JOB.json OUT.json``.

Evaluation runs in its own process, like training, so that the code-path pins
(environment.PINS) are set before torch, MKL and oneDNN choose a path; the demo's own process has
already imported torch. JOB.json: {"data", "bootstrap", "items": [{"checkpoint", "map_scales",
"ratios": [{"scale", "lambda"}]}]}. OUT.json: {"process": environment.process_view(),
"results": [{"evaluation", "maps", "ratios"}]} in the items' order. Every part is cached beside its
checkpoint (runs.py), so a rerun reads it back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_job(job: dict) -> dict:
    from tier_openclip.demo.environment import process_view
    from tier_openclip.demo.runs import checkpoint_diagnostics, evaluate_checkpoint

    data, bootstrap = job["data"], job["bootstrap"]
    results = []
    for item in job["items"]:
        checkpoint = Path(item["checkpoint"])
        results.append({"evaluation": evaluate_checkpoint(checkpoint, data, bootstrap),
                        **checkpoint_diagnostics(checkpoint, data, item["map_scales"], item.get("ratios", []))})
    return {"process": process_view(), "results": results}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tier_openclip.demo.worker JOB.json OUT.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run_job(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

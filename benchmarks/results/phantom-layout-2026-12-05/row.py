"""python row.py DEMO_DIR RUN CHANGE: one line of clip-only-checks.jsonl from a clip-only demo
folder (``tier-openclip demo --losses clip``): the clip arm's zero-shot AUC per finding (mean over
starts and per start), each start's token-map pointing, the image-free prior, the data fingerprint."""
import json
import sys
from pathlib import Path

folder, run, change = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
demo = json.loads((folder / "demo.json").read_text())
auc = demo["per_finding_auc"]["clip"]
checks = [start["precondition"] for start in demo["starts"]]
print(json.dumps({
    "run": run, "command": "tier-openclip demo --losses clip", "layout_change": change,
    "data_sha256": demo["data_fingerprint"]["sha256"],
    "commit": demo["environment"]["package"].get("commit"), "cpu": demo["environment"]["cpu"],
    "test_positives": {k: v["positive"] for k, v in demo["data"]["counts"].items()},
    "clip_auc": {k: {"mean": round(v["mean"], 3), "per_start": [round(x, 3) for x in v["values"]]} for k, v in auc.items()},
    "start_token_pointing": [round(c["pointing"], 3) for c in checks],
    "prior": round(checks[0]["prior"], 3), "precondition_held": demo["preconditions_held"],
}))

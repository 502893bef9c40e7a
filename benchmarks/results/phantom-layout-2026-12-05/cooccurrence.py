"""python cooccurrence.py DEMO_DIR...: how often each finding's test positives and negatives hold
a lung lesion (opacity or bulla, other than the finding itself), from the demo's
data/test_eval/labels.csv. A large gap means "lung lesion or not" predicts the finding, and a
zero-shot AUC measures that co-occurrence as well as the finding."""
import csv
import json
import sys
from pathlib import Path

LESIONS = ("opacity", "bulla")

for folder in sys.argv[1:]:
    with open(Path(folder) / "data" / "test_eval" / "labels.csv", newline="") as handle:
        rows = [{k: int(v) for k, v in row.items() if k != "image"} for row in csv.DictReader(handle)]
    result = {}
    for finding in rows[0]:
        def lesion(row):
            return any(row[name] for name in LESIONS if name != finding)
        positives = [lesion(r) for r in rows if r[finding]]
        negatives = [lesion(r) for r in rows if not r[finding]]
        result[finding] = {"positives": len(positives),
                           "lesion_share_positives": round(sum(positives) / max(1, len(positives)), 3),
                           "lesion_share_negatives": round(sum(negatives) / max(1, len(negatives)), 3)}
    print(json.dumps({"run": Path(folder).name, "test_images": len(rows), "findings": result}))

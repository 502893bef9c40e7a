"""Write the phantom's small grounding preset (PhantomConfig.preset("small", grounding=True) with
JSON config overrides) and the demo's training CSV: FINDING_OVERRIDES='{"bulla": {"density": [0.7, 0.9]}}' python make_data.py OUT '{"negation_prob": 0.15}'"""
import dataclasses, json, os, sys
from pathlib import Path
import tier_openclip.phantom.findings as F
for finding, fields in json.loads(os.environ.get("FINDING_OVERRIDES", "{}")).items():
    fields = {k: ({(None if s == "null" else s): tuple(r) for s, r in v.items()} if k == "severities" else tuple(v))
              for k, v in fields.items()}
    F.FINDINGS_BY_NAME[finding] = dataclasses.replace(F.FINDINGS_BY_NAME[finding], **fields)
from tier_openclip.phantom import PhantomConfig, write_phantom_dataset
from tier_openclip.demo.runs import write_training_csv
out = Path(sys.argv[1]); over = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
for k in ("finding_count_probs",):
    if k in over: over[k] = tuple(over[k])
config = PhantomConfig.preset("small", seed=0, grounding=True, **over)
data = write_phantom_dataset(out / "data", config, progress=False, workers=1)
data["train_csv"] = str(write_training_csv(data, out / "data" / "train_csv"))
(out / "data.json").write_text(json.dumps({k: v for k, v in data.items() if isinstance(v, (str, int, float, list, dict))}, default=str))
print(data["prior_pointing_game"], data["counts"])

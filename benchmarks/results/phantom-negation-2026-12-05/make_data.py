"""Write the phantom's small grounding preset (PhantomConfig.preset("small", grounding=True) with
JSON overrides) and the demo's training CSV: python make_data.py OUT '{"negation_prob": 0.15}'"""
import json, sys
from pathlib import Path
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

"""exp: fine-tune from START with loss flags, evaluate tokens/pooled grounding + zero-shot."""
import sys, subprocess, json, time
from pathlib import Path
model, start, name, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
extra = sys.argv[5:]
import tier_openclip.demo.design as d
d.MODEL = model
data = {"train_csv": "/work/demo-final/data/train_csv/train.csv", "num_train": 2000}
logs = Path("/work/exp/runs")
cmd = d.training_command(data, 32, d.Stage(epochs, 1e-3, 10), 0, logs, name, extra, start=Path(start))
if not (logs / name / "checkpoints" / f"epoch_{epochs}.pt").exists():
    subprocess.run(cmd, check=True, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT)
import torch; torch.set_num_threads(2)
from tier_openclip.evaluation.grounding import grounding_evaluate
from tier_openclip.evaluation.zeroshot import zeroshot_evaluate
from tier_openclip.models import load_model
L = load_model(model, str(logs / name / "checkpoints" / f"epoch_{epochs}.pt"))
z = zeroshot_evaluate(L.model, L.preprocess, L.tokenizer, "/work/demo-final/data/test_eval", bootstrap=20, seed=0)
out = {"auc": round(z["means"]["all"]["mean_auc"], 3), "per": {k: round(v["auc"], 2) for k, v in z["labels"].items()}}
for mode in ("tokens", "pooled"):
    r = grounding_evaluate(L.model, L.preprocess, L.tokenizer, "/work/demo-final/data/test_eval", phrase_mode=mode, bootstrap=20, seed=0)
    out[mode] = {k: round(v["value"], 3) for k, v in r["overall"].items() if isinstance(v, dict) and "value" in v}
    out[mode + "_pg"] = {f: round(v["pointing_game"]["value"], 2) for f, v in r["per_finding"].items()}
from tier_openclip.demo.collapse import local_cosines
from tier_openclip.evaluation.analyze import shard_batches
batches = list(shard_batches("/work/demo-final/data/test/test-000000.tar", L.preprocess, L.tokenizer, 400))
out["cos"] = {k: (round(v, 3) if v is not None else None) for k, v in local_cosines(L.model, L.tokenizer, batches).items()}
print(name, json.dumps(out))

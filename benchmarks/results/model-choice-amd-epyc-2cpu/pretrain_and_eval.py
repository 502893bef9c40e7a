"""exp: pretrain MODEL on demo-final data, then zero-shot + grounding (tokens, pooled)."""
import sys, subprocess, json, time, os
from pathlib import Path
model, name, epochs, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
extra = sys.argv[5:]
import tier_openclip.demo.design as d
d.MODEL = model
data = {"train_csv": "/work/demo-final/data/train_csv/train.csv", "num_train": 2000}
logs = Path("/work/exp/runs"); logs.mkdir(exist_ok=True)
cmd = d.training_command(data, 32, d.Stage(epochs, lr, 100), 0, logs, name, ["--loss", "clip"] + extra)
t = time.time()
if not (logs / name / "checkpoints" / f"epoch_{epochs}.pt").exists():
    subprocess.run(cmd, check=True, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT)
print("train s", round(time.time() - t))
import torch; torch.set_num_threads(2)
from tier_openclip.evaluation.grounding import grounding_evaluate
from tier_openclip.evaluation.zeroshot import zeroshot_evaluate
from tier_openclip.models import load_model
ck = str(logs / name / "checkpoints" / f"epoch_{epochs}.pt")
L = load_model(model, ck)
z = zeroshot_evaluate(L.model, L.preprocess, L.tokenizer, "/work/demo-final/data/test_eval", bootstrap=20, seed=0)
print("zeroshot", json.dumps({k: v for k, v in z.items() if k in ("mean_auc",)}), str(z)[:600])
for mode in ("tokens", "pooled"):
    r = grounding_evaluate(L.model, L.preprocess, L.tokenizer, "/work/demo-final/data/test_eval", phrase_mode=mode, bootstrap=20, seed=0)
    o = r["overall"]
    print(mode, {k: (round(v["value"], 3) if isinstance(v, dict) and "value" in v else v) for k, v in o.items()})
    print("  per finding pg", {f: round(v["pointing_game"]["value"], 2) for f, v in r["per_finding"].items()})
print("mean auc", z["means"], {k: round(v["auc"], 3) for k, v in z["labels"].items()})
print("prior", {f: round(v["pointing_game"], 2) for f, v in r["baselines"]["prior"]["per_finding"].items()}, r["baselines"]["prior"]["pointing_game"])

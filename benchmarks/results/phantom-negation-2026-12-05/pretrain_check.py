"""One pre-training check: pre-train a demo start (the demo's own training command: TIER-tiny-ResNet,
batch 32, cosine schedule, the pinned code paths) on a phantom folder written by make_data.py,
then measure per-finding zero-shot AUC under three prompt protocols and grounding (token maps and
CAM: pointing game and own-lesion rate, beside the image-free prior's pointing).

    EXP_DATA=DIR/data EXP_OUT=OUT python pretrain_check.py NAME SEED EPOCHS LR WARMUP {clip,filip} [flags...]

Writes OUT/runs/NAME (open_clip's run folder) and OUT/NAME.json. Protocols: "product" = the
phantom's own prompts.json (what the demo evaluates with), "pos-neg" = CheXzero's "{term}" vs
"no {term}", "dot" = "{term}." vs "No {term}.", "pos-only" = cosine with "{term}." alone.
"""
import json, os, re, subprocess, sys, time
from pathlib import Path
from tier_openclip.demo import design
name, seed, epochs, lr, warmup, loss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
extra = sys.argv[7:]
DATA = Path(os.environ["EXP_DATA"])
OUT = Path(os.environ.get("EXP_OUT", "."))
data = json.loads((DATA.parent / "data.json").read_text()) if (DATA.parent / "data.json").exists() else None
if data is None:
    data = {"train_csv": str(DATA / "train_csv" / "train.csv"), "num_train": 2000}
    import glob; data["train_csv"] = glob.glob(str(DATA / "train_csv" / "*.csv"))[0]
logs = OUT / "runs"; logs.mkdir(parents=True, exist_ok=True)
stage = design.Stage(epochs, lr, warmup)
cmd = design.training_command(data, 32, stage, seed, logs, name, design.pretrain_flags(loss) + extra)
ck = logs / name / "checkpoints" / f"epoch_{epochs}.pt"
t = time.time()
if not ck.exists():
    env = {**os.environ}
    from tier_openclip.demo import environment
    env.update(environment.PINS)
    with open(logs / f"{name}.log", "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
train_s = time.time() - t
text = (logs / name / "out.log").read_text()
losses = [float(x) for x in re.findall(r"Contrastive_loss: ([0-9.]+) \(", text)]
step_t = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
import numpy as np, torch
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
from tier_openclip.evaluation.grounding import grounding_evaluate
from tier_openclip.evaluation.zeroshot import zeroshot_evaluate
from tier_openclip.models import load_model
m = load_model(design.MODEL, str(ck))
ev = DATA / "test_eval"
res = {"name": name, "seed": seed, "epochs": epochs, "lr": lr, "loss": loss, "extra": extra, "train_s": round(train_s),
       "median_step_s": float(np.median(step_t)) if step_t else None,
       "loss_by_epoch": [round(float(np.mean(losses[i:i + 62])), 3) for i in range(0, len(losses), 62)]}
labels = json.loads((ev / "prompts.json").read_text()) if (ev / "prompts.json").exists() else None
for kind, pr in (("product", str(ev / "prompts.json")), ("pos-neg", None), ("dot", {l: {"positive": [l + "."], "negative": [f"No {l}."]} for l in labels})):
    zs = zeroshot_evaluate(m.model, m.preprocess, m.tokenizer, ev, prompts=pr, bootstrap=0, seed=0)
    res[f"auc_{kind}"] = {k: round(v["auc"], 3) for k, v in zs["labels"].items()}
from tier_openclip.data_prep.eval_layout import read_eval_set
from sklearn.metrics import roc_auc_score
from PIL import Image
es = read_eval_set(ev)
with torch.no_grad():
    fi = torch.cat([m.model.encode_image(torch.stack([m.preprocess(Image.open(p)) for p in es.images[i:i+100]]), normalize=True) for i in range(0, len(es.images), 100)])
    ft = m.model.encode_text(m.tokenizer([l + "." for l in es.labels]), normalize=True)
sims = (fi @ ft.T).numpy()
res["auc_pos-only"] = {l: round(roc_auc_score(es.targets[:, i], sims[:, i]), 3) for i, l in enumerate(es.labels)}
for mode in ("tokens", "cam"):
    g = grounding_evaluate(m.model, m.preprocess, m.tokenizer, ev, phrase_mode=mode, bootstrap=0, seed=0)
    res[f"pointing_{mode}"] = round(g["overall"]["pointing_game"]["value"], 3)
    res[f"own_{mode}"] = round(g["own_lesion"]["value"], 3)
res["prior"] = g["baselines"]["prior"]["pointing_game"]
(OUT / f"{name}.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res))

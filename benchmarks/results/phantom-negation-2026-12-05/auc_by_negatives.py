"""Per finding: zero-shot AUC against the negatives that hold a lung lesion (opacity or bulla) and
against those that do not. python auc_by_negatives.py DEMO_DATA_DIR CHECKPOINT... >> auc-by-negatives-*.jsonl"""
import json, sys, numpy as np, torch, pandas as pd
from PIL import Image
from pathlib import Path
from sklearn.metrics import roc_auc_score
from tier_openclip.models import load_model
from tier_openclip.demo import design
torch.set_num_threads(2)
data = Path(sys.argv[1]) / "test_eval"
lab = pd.read_csv(data / "labels.csv"); names = list(lab.columns[1:]); Y = lab[names].values
pr = json.loads((data / "prompts.json").read_text())
for ck in sys.argv[2:]:
    m = load_model(design.MODEL, ck)
    with torch.no_grad():
        fi = torch.cat([m.model.encode_image(torch.stack([m.preprocess(Image.open(data / p)) for p in lab.image[i:i+100]]), normalize=True) for i in range(0, len(lab), 100)])
        S = np.stack([(fi @ (lambda t: t / t.norm())(m.model.encode_text(m.tokenizer(pr[n]["positive"]), normalize=True).mean(0))).numpy() for n in names], 1)
    lesion = (Y[:, 0] + Y[:, 1]) > 0
    out = {}
    for i, n in enumerate(names):
        pos = Y[:, i] == 1
        row = {}
        for tag, neg in (("neg with lung lesion", ~pos & lesion), ("neg without lung lesion", ~pos & ~lesion)):
            if neg.sum() >= 5:
                row[tag] = [int(neg.sum()), round(roc_auc_score(np.r_[np.ones(pos.sum()), np.zeros(neg.sum())], np.r_[S[pos, i], S[neg, i]]), 3)]
        out[n] = row
    print(json.dumps({"checkpoint": ck.split("/runs/")[-1], "auc_by_negatives": out}))

"""Linear probe (logistic regression, C=10) on a checkpoint's frozen image embeddings: trained on the
phantom's training images (labels read from their captions' positive sentences), AUC on the test
set. python linear_probe.py DATA_DIR CHECKPOINT... (one JSON line per checkpoint)."""
import json, sys, glob, numpy as np, torch, pandas as pd
from pathlib import Path
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from tier_openclip.models import load_model
from tier_openclip.data_prep.eval_layout import read_eval_set
torch.set_num_threads(2)
data = Path(sys.argv[1])
ev = read_eval_set(data / "test_eval")
# train labels from captions: a finding is present if a positive sentence names it (affirm) -> use meta? parse caption
df = pd.read_csv(glob.glob(str(data / "train_csv/*.csv"))[0], sep="\t")
import re
def present(cap, l):
    sents = [s.strip().lower() for s in cap.split('.') if s.strip()]
    return any(l in s and not (s.startswith('no ') or 'there is no' in s) for s in sents)
ytr = np.array([[present(c, l) for l in ev.labels] for c in df.title], dtype=float)
def feats(m, paths):
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), 128):
            x = torch.stack([m.preprocess(Image.open(p)) for p in paths[i:i+128]])
            out.append(m.model.encode_image(x, normalize=True))
    return torch.cat(out).numpy()
for c in sys.argv[2:]:
    m = load_model("TIER-tiny-ResNet", c); m.model.eval()
    Xtr = feats(m, list(df.filepath)); Xte = feats(m, ev.images)
    aucs = []
    for i, l in enumerate(ev.labels):
        clf = LogisticRegression(C=10, max_iter=2000).fit(Xtr, ytr[:, i])
        aucs.append(round(roc_auc_score(ev.targets[:, i], clf.decision_function(Xte)), 3))
    print(json.dumps({"checkpoint": Path(c).parts[-3], "labels": ev.labels, "probe_auc": aucs}), flush=True)

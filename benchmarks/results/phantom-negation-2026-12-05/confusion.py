"""Which findings' images a finding's zero-shot score mistakes for its own, on one checkpoint.

python confusion.py CHECKPOINT DATA_DIR [LABEL] >> confusion.jsonl

For each finding: the positive-only zero-shot AUC (the demo's protocol: cosine with the mean of the
prompt file's positive sentences) over all images, and against each other finding's images that
lack it ("vs"), one JSON line per checkpoint. DATA_DIR is a demo's data/ folder (test_eval/ in it).
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from tier_openclip.demo import design
from tier_openclip.models import load_model

torch.set_num_threads(1)
checkpoint, data = sys.argv[1], Path(sys.argv[2]) / "test_eval"
model = load_model(design.MODEL, checkpoint)
labels = pd.read_csv(data / "labels.csv")
names = list(labels.columns[1:])
prompts = json.loads((data / "prompts.json").read_text())
with torch.no_grad():
    images = torch.cat([model.model.encode_image(torch.stack([model.preprocess(Image.open(data / p))
                                                               for p in labels.image[i:i + 100]]), normalize=True)
                        for i in range(0, len(labels), 100)])
    scores = []
    for name in names:
        text = model.model.encode_text(model.tokenizer(prompts[name]["positive"]), normalize=True).mean(0)
        scores.append((images @ (text / text.norm())).numpy())
scores, targets = np.stack(scores, 1), labels[names].values
result = {"checkpoint": sys.argv[3] if len(sys.argv) > 3 else checkpoint, "prevalence": dict(zip(names, targets.mean(0).round(3).tolist())),
          "auc": {}, "vs": {}}
for i, name in enumerate(names):
    positive = targets[:, i] == 1
    result["auc"][name] = round(float(roc_auc_score(targets[:, i], scores[:, i])), 3)
    result["vs"][name] = {}
    for j, other in enumerate(names):
        negative = ~positive & (targets[:, j] == 1)
        if j != i and negative.any():
            y = np.r_[np.ones(positive.sum()), np.zeros(negative.sum())]
            result["vs"][name][other] = round(float(roc_auc_score(y, np.r_[scores[positive, i], scores[negative, i]])), 3)
print(json.dumps(result))

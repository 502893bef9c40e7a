"""Per-finding AUC of existing checkpoints under several zero-shot prompt protocols: python protocols_on_committed_starts.py EVAL_DIR CHECKPOINT... (one JSON line per checkpoint)."""
import json, sys
from pathlib import Path
import numpy as np, torch
from sklearn.metrics import roc_auc_score
from tier_openclip.data_prep.eval_layout import read_eval_set
from tier_openclip.evaluation.zeroshot import zeroshot_scores
from tier_openclip.models import load_model
torch.set_num_threads(2)
data = Path(sys.argv[1]); ckpts = sys.argv[2:]
ev = read_eval_set(data)
labels = ev.labels
def prompts(kind):
    if kind == "pos-neg": return {l: {"positive": [l], "negative": [f"no {l}"]} for l in labels}
    if kind == "pos-normal": return {l: {"positive": [l], "negative": ["Normal chest radiograph."]} for l in labels}
    if kind == "ens":
        from tier_openclip.phantom.reports import positive_sentences, NEGATIVE_SENTENCES
        return {l: {"positive": positive_sentences(l, l), "negative": [t.format(t=l) for t in NEGATIVE_SENTENCES]} for l in labels}
    if kind == "there":
        from tier_openclip.phantom.reports import positive_sentences
        return {l: {"positive": positive_sentences(l, l)[1:2], "negative": [f"There is no {l}."]} for l in labels}
    if kind == "dot":
        return {l: {"positive": [l + "."], "negative": [f"No {l}."]} for l in labels}
    if kind == "posS-negS": return {l: {"positive": [f"There is {'an ' if l[0] in 'aeiou' else 'a '}{l}." if l!='cardiomegaly' else 'Cardiomegaly.'], "negative": [f"No {l}."]} for l in labels}
for c in ckpts:
    m = load_model("TIER-tiny-ResNet", c)
    row = {}
    for kind in ("pos-neg", "dot", "there", "ens", "pos-normal"):
        s = zeroshot_scores(m.model, m.preprocess, m.tokenizer, ev.images, prompts(kind))
        row[kind] = [round(roc_auc_score(ev.targets[:, i], s[:, i]), 3) for i in range(len(labels))]
    print(json.dumps({"checkpoint": Path(c).parts[-3], "labels": labels, "auc": row}), flush=True)

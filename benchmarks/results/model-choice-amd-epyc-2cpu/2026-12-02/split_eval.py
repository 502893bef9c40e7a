import sys, numpy as np, torch
torch.set_num_threads(2)
from tier_openclip.evaluation.grounding import grounding_evaluate
from tier_openclip.evaluation.grounding.baselines import location_words
from tier_openclip.models import load_model
L = load_model("TIER-tiny-ResNet", sys.argv[1])
for mode in ("cam", "pooled", "tokens"):
    r = grounding_evaluate(L.model, L.preprocess, L.tokenizer, sys.argv[2], phrase_mode=mode, bootstrap=0)
    rows = r["phrases"]
    for kind, sel in (("named", lambda p: bool(location_words(p["phrase"]))), ("unnamed", lambda p: not location_words(p["phrase"]))):
        rs = [p for p in rows if sel(p)]
        by = {}
        for p in rs: by.setdefault(p["finding"], []).append(p["pointing_game"])
        print(mode, kind, len(rs), "pg", round(np.mean([p["pointing_game"] for p in rs]), 3), "cnr", round(np.mean([p["cnr"] for p in rs]), 3),
              {f: (len(v), round(np.mean(v), 2)) for f, v in by.items()})

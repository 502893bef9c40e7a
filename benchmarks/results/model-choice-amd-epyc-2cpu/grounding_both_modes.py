import sys, json, torch
torch.set_num_threads(2)
from tier_openclip.evaluation.grounding import grounding_evaluate
from tier_openclip.models import load_model
ck = sys.argv[1]; gdir = sys.argv[2]
loaded = load_model("TIER-tiny", ck)
for mode in sys.argv[3:]:
    r = grounding_evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, gdir, phrase_mode=mode, bootstrap=20, seed=0)
    o = r["overall"]
    print(mode, {k: (round(v["value"],3) if isinstance(v, dict) and "value" in v else v) for k, v in o.items()})
    print(" baselines", json.dumps(r.get("baselines", {}))[:600])

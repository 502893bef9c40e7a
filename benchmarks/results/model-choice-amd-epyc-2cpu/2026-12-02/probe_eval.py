"""exp: one checkpoint; zero-shot with several prompt sets; grounding with tokens/pooled/contribution maps."""
import sys, json
import torch; torch.set_num_threads(2)
import tier_openclip.features as F
from tier_openclip.evaluation.grounding import grounding_evaluate
from tier_openclip.evaluation.zeroshot import zeroshot_evaluate
from tier_openclip.models import load_model
from tier_openclip.phantom.reports import PHRASES, prompt_set
model, ck, data = sys.argv[1], sys.argv[2], sys.argv[3]
L = load_model(model, ck)
sides = ["left", "right"]
def ens():
    out = {}
    for name, p in PHRASES.items():
        t = p.term
        if name in ("pleural effusion", "pneumothorax"):
            pos = [f"{s} {t}." for s in sides]
        elif name == "cardiomegaly":
            pos = ["cardiomegaly."]
        else:
            pos = [f"there is an {t}." if t[0] in "aeiou" else f"there is a {t}."]
        out[name] = {"positive": pos, "negative": [f"no {t}."]}
    return out
sets = {"default": prompt_set(), "period": {k: {"positive": [v["positive"][0] + "."], "negative": [v["negative"][0] + "."]} for k, v in prompt_set().items()}, "caption-form": ens()}
for name, ps in sets.items():
    z = zeroshot_evaluate(L.model, L.preprocess, L.tokenizer, data + "/test_eval", prompts=ps, bootstrap=10, seed=0)
    print("zs", name, round(z["means"]["all"]["auc"] if isinstance(z["means"]["all"], dict) else z["means"]["all"], 3) if False else "", name, json.dumps(z["means"])[:200], {k: round(v["auc"], 3) for k, v in z["labels"].items()}, flush=True)
orig = F.token_features
def contrib(model, images=None, texts=None, normalize=True):
    if images is not None and texts is None:
        return orig(model, images=images, normalize=False)
    return orig(model, images=images, texts=texts, normalize=normalize)
for mode in ["tokens", "pooled", "contribution"]:
    F.token_features = contrib if mode == "contribution" else orig
    r = grounding_evaluate(L.model, L.preprocess, L.tokenizer, data + "/test_eval", phrase_mode="pooled" if mode == "contribution" else mode, bootstrap=10, seed=0)
    o = r["overall"]
    print(mode, {k: (round(v["value"], 3) if isinstance(v, dict) and "value" in v else v) for k, v in o.items()},
          "pg/finding", {f: round(v["pointing_game"]["value"], 2) for f, v in r["per_finding"].items()}, flush=True)
print("prior", {f: round(v["pointing_game"], 2) for f, v in r["baselines"]["prior"]["per_finding"].items()}, r["baselines"]["prior"]["pointing_game"])

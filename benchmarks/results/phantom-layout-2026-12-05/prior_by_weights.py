"""python prior_by_weights.py '{"pleural effusion": 0.45, ...}' ...: for each set of category
weights (over GROUNDING_DEFAULTS'), the small grounding preset's test positives per finding and its
image-free prior pointing game per pixel (the grounding evaluator's, cardiomegaly left out), one
JSON line each. Rendering only, no training: the weights were chosen with it."""
import json
import sys

import tier_openclip.phantom as phantom

for argument in sys.argv[1:]:
    weights = {**phantom.GROUNDING_DEFAULTS["finding_weights"], **json.loads(argument)}
    config = phantom.PhantomConfig.preset("small", grounding=True, finding_weights=weights)
    positives = phantom.split_labels(config, "test").sum(axis=0)
    prior = phantom.prior_pointing_baseline(config, grid=config.image_size, exclude=phantom.SUMMARY_EXCLUDES)
    print(json.dumps({"weights": weights, "test_positives": dict(zip(phantom.FINDING_NAMES, positives.tolist())),
                      "prior_per_pixel": round(prior["overall"], 3),
                      "per_finding": {k: round(v, 3) for k, v in prior["per_finding"].items()}}), flush=True)

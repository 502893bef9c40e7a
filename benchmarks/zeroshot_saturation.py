"""How much the old float32 softmax score lowered zero-shot AUCs, on synthetic embeddings.

The old score was softmax(logit_scale · [sim_pos, sim_neg])[0] in float32, which rounds to 1.0 once
sim_pos − sim_neg passes ~0.166 at logit scale 100; tied images lower the AUC. The score now is
sim_pos − sim_neg (tier_openclip.evaluation.zeroshot.zeroshot_scores), whose AUC is CheXzero's computed exactly.

Synthetic CLIP-like embeddings (128-d, unit norm): per label a positive and a negative prompt
embedding; each image embedding leans towards the positive prompt when the label is present, by a
signal strength (weak, medium, strong). Reports, per strength: the largest |AUC(old) − AUC(exact)|
over labels, the share of images whose old score is exactly 1.0, and the AUC's baseline (chance,
any image-free score: 0.5).

    python benchmarks/zeroshot_saturation.py benchmarks/results/zeroshot-saturation-<machine>.json
"""

from __future__ import annotations

import json
import platform
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from tier_openclip.evaluation.bootstrap import auc_report

SEED, IMAGES, LABELS, DIM, SCALE = 0, 2000, 14, 128, 100.0
STRENGTHS = {"weak": 0.1, "medium": 0.3, "strong": 0.6}


def measure(strength: float, rng: np.random.Generator) -> dict:
    prompts = rng.standard_normal((LABELS, 2, DIM))
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    targets = (rng.random((IMAGES, LABELS)) < 0.3).astype(float)
    base = rng.standard_normal((IMAGES, DIM))
    base /= np.linalg.norm(base, axis=-1, keepdims=True)
    worst, saturated, exact_aucs, old_aucs = 0.0, 0.0, [], []
    for j in range(LABELS):
        direction = prompts[j, 0] - prompts[j, 1]
        lean = strength * (2 * targets[:, j] - 1)[:, None] * direction + rng.normal(0, strength, (IMAGES, 1)) * direction
        images = base + lean
        images /= np.linalg.norm(images, axis=-1, keepdims=True)
        sims = images @ prompts[j].T  # float64: (N, 2)
        exact = sims[:, 0] - sims[:, 1]
        old = torch.softmax(SCALE * torch.tensor(sims, dtype=torch.float32), dim=1)[:, 0].numpy()
        new = auc_report(exact[:, None], targets[:, j : j + 1], ["x"], bootstrap=0)["labels"]["x"]["auc"]
        assert abs(new - roc_auc_score(targets[:, j], exact)) < 1e-12
        exact_aucs.append(new)
        old_aucs.append(roc_auc_score(targets[:, j], old))
        worst = max(worst, abs(old_aucs[-1] - new))
        saturated = max(saturated, float(np.mean(old == 1.0)))
    return {"mean_auc_exact": float(np.mean(exact_aucs)), "mean_auc_old_float32_softmax": float(np.mean(old_aucs)),
            "max_abs_auc_difference": worst, "max_share_of_images_scored_exactly_1": saturated,
            "chance_auc": 0.5}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        return f"{names[0]}, {len(names)} CPUs" if names else platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def main(out: str) -> None:
    rng = np.random.default_rng(SEED)
    results = {name: measure(strength, rng) for name, strength in STRENGTHS.items()}
    record = {
        "what": __doc__.splitlines()[0],
        "machine": f"{cpu_name()}, {platform.system()} (not a timing: any machine gives these figures up to float rounding)",
        "settings": {"seed": SEED, "images": IMAGES, "labels": LABELS, "dim": DIM, "logit_scale": SCALE,
                     "strengths": STRENGTHS},
        "results": results,
    }
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/zeroshot_saturation.py OUT.json")
    main(sys.argv[1])

"""What --tier-diagnostics-every costs on the demo's model, and what the check reads at initialisation.

Times one training step of TIER-tiny-ResNet (the CPU demo's model) at the demo's batch size, with
and without the diagnostics on that step (token-map stats + the TIER/contrastive gradient ratio on
the trainable parameters: three extra backward passes), as the median of --reps steps each. Also
runs ``manipulation_check`` on one batch of the *randomly initialised* model at λ 0.1 with scale 1
and 10: figures of an untrained model, to show the reading, not the demo's start.
Writes JSON (benchmarks/results/diagnostics-<cpu>-<n>cpu.json unless --out says otherwise).

    python benchmarks/bench_diagnostics.py --reps 10
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's code, not an installed copy

WORDS = "small large left right pleural effusion pneumothorax nodule opacity cardiomegaly edema".split()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import open_clip
    import torch

    from tier_openclip.features import enable_token_outputs
    from tier_openclip.loss import TierLoss
    from tier_openclip.models import register_model_configs
    from tier_openclip.training.diagnostics import (gradient_ratio_of_terms, lambda_for_ratio, manipulation_check,
                                                    tier_call)
    from tier_openclip.training.diagnostics import token_map_stats

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("TIER-tiny-ResNet", output_dict=True)
    enable_token_outputs(model)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, size, size, generator=generator)
    captions = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (4,), generator=generator))
                for _ in range(args.batch_size)]
    texts = open_clip.get_tokenizer("TIER-tiny-ResNet")(captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = TierLoss(0.1, 0.1, scale=1.0, impl="torch")

    def step(diagnose: bool) -> float:
        start = time.perf_counter()
        losses, tier_inputs = tier_call(loss, model(images, texts))
        if diagnose:
            token_map_stats(**tier_inputs)
            gradient_ratio_of_terms(losses, params)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        return time.perf_counter() - start

    step(False)  # warm-up
    times = {"plain": [], "diagnosed": []}
    for _ in range(args.reps):  # interleaved, so drift in a shared CPU's load hits both alike
        times["plain"].append(step(False))
        times["diagnosed"].append(step(True))
    medians = {k: statistics.median(v) for k, v in times.items()}

    torch.manual_seed(0)
    fresh = open_clip.create_model("TIER-tiny-ResNet", output_dict=True)
    checks = {}
    for scale in (1.0, 10.0):
        check = manipulation_check(fresh, TierLoss(0.1, 0.1, scale=scale, impl="torch"), images, texts)
        check["lambda_for_ratio_0.1"] = lambda_for_ratio(0.1, check["tier_grad_ratio"], 0.1)
        checks[f"scale_{scale:g}"] = check

    result = {
        "what": "TIER-tiny-ResNet training step with and without --tier-diagnostics-every on that step; "
                "manipulation_check of the randomly initialised model (not the demo's start), lambda 0.1",
        "machine": {"cpu": cpu_name(), "logical_cpus": torch.get_num_threads(), "torch": torch.__version__,
                    "note": "shared with other jobs while measured"},
        "batch_size": args.batch_size, "image_size": size, "reps": args.reps,
        "step_seconds_median": medians,
        "diagnosed_step_over_plain": medians["diagnosed"] / medians["plain"],
        "manipulation_check_at_init": checks,
    }
    slug = "-".join(cpu_name().lower().split()[:2])
    out = args.out or REPO / "benchmarks" / "results" / f"diagnostics-{slug}-{torch.get_num_threads()}cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

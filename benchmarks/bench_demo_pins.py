"""What pinning torch's, MKL's and oneDNN's code paths costs the demo, and whether runs stay exact.

    python benchmarks/bench_demo_pins.py --out /tmp/pins --json benchmarks/results/demo-pins-<machine>.json

Runs the demo's pre-training command (the small phantom, ``--reps`` × 1 epoch = 62 steps each)
with and without ``tier_openclip.demo.environment.PINS``, interleaved (pinned, unpinned, unpinned,
pinned, ...) so that a busy neighbour slows both alike, and reports per condition the min and
median of the mean step time and of the wall time, whether the repeats of one condition trained
bit-identical weights, and whether pinned and unpinned weights are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path


def _weights_sha(checkpoint: Path) -> str:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    from tier_openclip.demo.design import DemoOptions, Stage, steps_per_epoch, training_command
    from tier_openclip.demo.environment import PINS, environment
    from tier_openclip.demo.pipeline import prepare_data
    from tier_openclip.demo.runs import run_training

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Scratch folder (phantom data and runs).")
    parser.add_argument("--json", help="Where to write the results (default: print only).")
    parser.add_argument("--reps", type=int, default=3, help="Runs per condition (default 3).")
    args = parser.parse_args(argv)
    out = Path(args.out)
    options = DemoOptions(out=out, progress=False)
    data, _ = prepare_data(options, progress=False)
    preset = options.preset()
    stage = Stage(1, preset.pretrain.lr, preset.pretrain.warmup)
    runs: dict[str, list[dict]] = {"pinned": [], "unpinned": []}
    for rep in range(args.reps):
        order = ("pinned", "unpinned") if rep % 2 == 0 else ("unpinned", "pinned")
        for condition in order:
            name = f"{condition}-{rep}"
            command = training_command(data, preset.batch_size, stage, 0, out / "runs", name, ["--loss", "clip"])
            started = time.time()
            timing = run_training(command, out / "runs" / name, 1, steps_per_epoch(data["num_train"], preset.batch_size),
                                  [], pins=PINS if condition == "pinned" else None)
            runs[condition].append({"wall_seconds": time.time() - started, "mean_step_seconds": timing["mean_step_seconds"],
                                    "weights_sha256": _weights_sha(Path(timing["checkpoint"]))})
            print(name, f"{runs[condition][-1]['mean_step_seconds']:.4f} s/step", file=sys.stderr)
    summary = {}
    for condition, rows in runs.items():
        steps, walls = [r["mean_step_seconds"] for r in rows], [r["wall_seconds"] for r in rows]
        summary[condition] = {"step_seconds_min": min(steps), "step_seconds_median": statistics.median(steps),
                              "wall_seconds_min": min(walls), "wall_seconds_median": statistics.median(walls),
                              "repeats_bit_identical": len({r["weights_sha256"] for r in rows}) == 1}
    result = {"what": "the demo's pre-training command, 1 epoch (62 steps at batch 32), pinned vs unpinned, interleaved",
              "pins": PINS, "environment": environment(None), "runs": runs, "summary": summary,
              "pinned_equals_unpinned": runs["pinned"][0]["weights_sha256"] == runs["unpinned"][0]["weights_sha256"]}
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(json.dumps({"summary": summary, "pinned_equals_unpinned": result["pinned_equals_unpinned"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

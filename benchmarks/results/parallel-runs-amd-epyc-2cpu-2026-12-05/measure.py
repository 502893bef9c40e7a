"""Steps per second of the demo's pre-training: one training on torch's default threads (the
core count) against one one-thread training per core, side by side.

python measure.py DATA_JSON OUT_DIR SECONDS ROUNDS > result.json

DATA_JSON: a demo's data record with "train_csv" and "num_train" (e.g. written by
benchmarks/results/phantom-negation-2026-12-05/make_data.py). Each training is the demo's
pre-training command (FILIP, small preset, seed = its index) with the code-path pins, stopped after
SECONDS; its mean open_clip 'Batch (t)' after the first 20 steps is the step time. The two set-ups
alternate ROUNDS times (timings on a shared VM drift); min and median over rounds are reported.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tier_openclip.demo import design, environment


def launch(data, out, name, seed, threads):
    env = {**os.environ, **environment.PINS}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    else:
        env.pop("OMP_NUM_THREADS", None), env.pop("MKL_NUM_THREADS", None)
    command = design.training_command(data, 32, design.SIZES["small"].pretrain, seed, out, name,
                                      design.pretrain_flags("filip"))
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def step_seconds(out, name):
    times = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", (out / name / "out.log").read_text())][20:]
    return {"steps": len(times), "mean_step_seconds": round(sum(times) / len(times), 4)}


def main(data_json, out_dir, seconds, rounds):
    data, out = json.loads(Path(data_json).read_text()), Path(out_dir)
    cores = len(os.sched_getaffinity(0))
    alone, side_by_side = [], []
    for round_ in range(rounds):
        one = launch(data, out, f"default-threads-{round_}", 0, None)
        time.sleep(seconds), one.kill(), one.wait()
        alone.append(step_seconds(out, f"default-threads-{round_}")["mean_step_seconds"])
        side = [launch(data, out, f"one-thread-{round_}-{i}", i, 1) for i in range(cores)]
        time.sleep(seconds)
        for process in side:
            process.kill(), process.wait()
        # cores one-thread trainings side by side: seconds per step of the machine as a whole
        side_by_side.append(round(statistics.mean(step_seconds(out, f"one-thread-{round_}-{i}")["mean_step_seconds"]
                                                  for i in range(cores)) / cores, 4))
    result = {"cores": cores, "seconds_per_round": seconds, "rounds": rounds,
              "one training on the default threads: s per step": {"per round": alone, "min": min(alone),
                                                                  "median": statistics.median(alone)},
              "one one-thread training per core: machine s per step": {"per round": side_by_side, "min": min(side_by_side),
                                                                       "median": statistics.median(side_by_side)},
              "steps per second, one-thread per core / default (medians)":
                  round(statistics.median(alone) / statistics.median(side_by_side), 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))

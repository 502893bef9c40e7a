"""The pre-training's loss curve at another learning rate or warm-up:
python plateau_check.py NAME SEED LR WARMUP [extra training flags...]

A 14-epoch FILIP pre-training (the demo's command, batch 32, pinned code paths) on the data that
make_data.py wrote (EXP_DATA_JSON, default d-v11/data.json) into plat/NAME; the mean contrastive
loss per epoch was read from plat/NAME/out.log (plateau-lr-warmup.jsonl). The six runs of
2026-12-05 ran side by side, one thread each (OMP_NUM_THREADS=1).
"""
import json, os, subprocess, sys
from pathlib import Path
from tier_openclip.demo import design, environment
name, seed, lr, warmup = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
data = json.loads(Path(os.environ.get("EXP_DATA_JSON", "d-v11/data.json")).read_text())
logs = Path("plat"); logs.mkdir(exist_ok=True)
cmd = design.training_command(data, 32, design.Stage(14, lr, warmup), seed, logs, name, design.pretrain_flags("filip") + sys.argv[5:])
subprocess.run(cmd, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT, env={**os.environ, **environment.PINS})

"""exp: pretrain on demo-s3 data with CLIP loss; args: name epochs [extra flags]."""
import sys, subprocess, time
from pathlib import Path
import tier_openclip.demo.design as d
name, epochs = sys.argv[1], int(sys.argv[2]); extra = sys.argv[3:]
data = {"train_csv": sys.argv[3] + "/train_csv/train.csv", "num_train": 2000}; extra = sys.argv[4:]
logs = Path("/work/exp/runs"); logs.mkdir(exist_ok=True)
cmd = d.training_command(data, 32, d.Stage(epochs, 2e-3, 100), 0, logs, name, ["--loss", "clip"] + extra)
t = time.time()
subprocess.run(cmd, check=True, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT)
print(name, "train s", round(time.time() - t), flush=True)

while pgrep -f run2.sh >/dev/null; do sleep 5; done
cd /work/exp/barebase && PYTHONPATH=/work/exp/barebase python /work/exp/pretrain_on.py barebase 16 /work/exp/demo-bare/data
PYTHONPATH=/work/exp/barebase python /work/exp/linprobe.py TIER-tiny-ResNet /work/exp/runs/barebase/checkpoints/epoch_16.pt /work/exp/demo-bare/data
PYTHONPATH=/work/exp/barebase python /work/exp/probe_eval.py TIER-tiny-ResNet /work/exp/runs/barebase/checkpoints/epoch_16.pt /work/exp/demo-bare/data

while pgrep -f run_variants.sh >/dev/null; do sleep 5; done
cd /work/exp/bare && PYTHONPATH=/work/exp/bare python -m tier_openclip demo --out /work/exp/demo-bare --seeds 1 > /work/exp/demo-bare.log 2>&1
PYTHONPATH=/work/exp/bare python /work/exp/linprobe.py TIER-tiny-ResNet /work/exp/demo-bare/runs/pretrain/checkpoints/epoch_16.pt /work/exp/demo-bare/data
PYTHONPATH=/work/exp/bare python /work/exp/probe_eval.py TIER-tiny-ResNet /work/exp/demo-bare/runs/pretrain/checkpoints/epoch_16.pt /work/exp/demo-bare/data
cd /work/exp/deeptext && PYTHONPATH=/work/exp/deeptext python /work/exp/pretrain.py deeptext 16
PYTHONPATH=/work/exp/deeptext python /work/exp/linprobe.py TIER-tiny-ResNet /work/exp/runs/deeptext/checkpoints/epoch_16.pt /work/demo-s3/data
PYTHONPATH=/work/exp/deeptext python /work/exp/probe_eval.py TIER-tiny-ResNet /work/exp/runs/deeptext/checkpoints/epoch_16.pt /work/demo-s3/data

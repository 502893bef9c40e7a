set -x
for v in wide deep; do
  (cd /work/exp/$v && PYTHONPATH=/work/exp/$v python /work/exp/pretrain.py $v 16 && PYTHONPATH=/work/exp/$v python /work/exp/linprobe.py TIER-tiny-ResNet /work/exp/runs/$v/checkpoints/epoch_16.pt /work/demo-s3/data; PYTHONPATH=/work/exp/$v python /work/exp/probe_eval.py TIER-tiny-ResNet /work/exp/runs/$v/checkpoints/epoch_16.pt /work/demo-s3/data)
done
python /work/exp/pretrain.py base32 32 && python /work/exp/linprobe.py TIER-tiny-ResNet /work/exp/runs/base32/checkpoints/epoch_32.pt /work/demo-s3/data; python /work/exp/probe_eval.py TIER-tiny-ResNet /work/exp/runs/base32/checkpoints/epoch_32.pt /work/demo-s3/data

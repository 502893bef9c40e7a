"""``tier-openclip demo``: does TIER do what it claims, on a laptop CPU, with known lesion locations?

1. Writes a phantom chest X-ray dataset (tier_openclip.phantom) in its grounding layout: the
   procedural background on every install, bare finding terms, lung findings anywhere in the
   lungs, one or two different findings per image, a test set with their boxes.
2. Pre-trains TIER-tiny-ResNet --starts times (default 3, each its own seed) with CLIP's loss plus
   FILIP's token-wise term (--pretrain-loss filip, the default; clip: CLIP's alone), through the
   real ``python -m open_clip_train.main`` loop: the starts.
3. Fine-tunes every arm from every start (default: clip, the control; tier-paper, λ 0.1 at scale 1;
   tier-calibrated, scale 10 with λ chosen so that TIER's gradient is 10% of CLIP's on the start);
   all arms of a start see the same batches in the same order.
4. Evaluates every checkpoint in a separate process: zero-shot AUC per finding, phrase grounding
   (CNR, pointing game, mIoU, own-lesion rate, beside the image-free prior and chance), a linear
   probe, entropies, and for TIER arms the manipulation check at the training scale.
5. Writes report.md and demo.json: the data's fingerprint and the environment, the rules (noise,
   precondition, decision) before the numbers, each start's precondition, each TIER arm's
   manipulation check and reading, each arm's mean ± sd over starts and its paired differences
   with clip (95% t-intervals over starts); sparsity curves and heatmaps. ``--sweep`` does the same
   for TIER's λ × scale grid (sweep.md, sweep.json, sweep.png).

Training and evaluation processes run with torch's, MKL's and oneDNN's code paths pinned to AVX2
(``--no-pin`` lifts it), so that runs can be compared bit for bit
(``python benchmarks/demo_goals.py --compare A/demo.json B/demo.json``).

Modules: ``design`` (presets, arms, training commands), ``runs`` (running and caching trainings and
evaluations), ``worker`` (the evaluation process), ``manipulation`` (map statistics and gradient
ratio of a checkpoint), ``environment`` (fingerprint, environment record, pins), ``summary`` (pure:
means, paired differences, t-intervals, the rules), ``report`` and ``report_sections`` (markdown and
figures), ``pipeline`` (the two commands), ``cli``.
"""

from tier_openclip.demo.cli import add_demo_parser
from tier_openclip.demo.design import SIZES, Arm, DemoOptions, make_arm, sweep_arms, training_command
from tier_openclip.demo.pipeline import run_demo, run_sweep

__all__ = ["SIZES", "Arm", "DemoOptions", "add_demo_parser", "make_arm", "run_demo", "run_sweep", "sweep_arms",
           "training_command"]

"""``tier-openclip demo``: what TIER does, on a laptop CPU, with known lesion locations.

1. Writes a phantom chest X-ray dataset (tier_openclip.phantom): findings at random places inside
   their regions, report-style captions that say where, a test set in the grounding layout.
2. Pre-trains TIER-tiny with CLIP's loss once, through the real ``python -m open_clip_train.main``
   loop: the shared start, as in the paper, where TIER fine-tunes a pre-trained CLIP model.
3. Fine-tunes from that checkpoint with each compared loss (default: clip, the control, and
   tier), once per seed; for one seed every arm sees the same batches in the same order.
4. Evaluates every checkpoint with the project's own evaluators: zero-shot AUC per finding,
   phrase grounding (CNR, pointing game, mIoU, beside the image-free prior and chance), and the
   token→patch / patch→token entropies.
5. Writes report.md and demo.json: each arm's mean ± sd over seeds and TIER's effect as paired
   differences (tier − clip, seed by seed) with the rule that calls an effect "within noise";
   sparsity curves and heatmaps. ``--sweep`` does the same for TIER's λ × scale grid
   (sweep.md, sweep.json, sweep.png).

Modules: ``design`` (presets, arms, training commands), ``runs`` (running and caching trainings and
evaluations), ``summary`` (pure: means, paired differences, the noise rule), ``report`` (markdown
and figures), ``pipeline`` (the two commands), ``cli``.
"""

from tier_openclip.demo.cli import add_demo_parser
from tier_openclip.demo.design import SIZES, Arm, DemoOptions, make_arm, sweep_arms, training_command
from tier_openclip.demo.pipeline import run_demo, run_sweep

__all__ = ["SIZES", "Arm", "DemoOptions", "add_demo_parser", "make_arm", "run_demo", "run_sweep", "sweep_arms",
           "training_command"]
